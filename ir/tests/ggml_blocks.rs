//! Every ggml type llmc decodes, checked against gguf-py: random blocks and gguf-py's
//! `gguf.quants.dequantize` of them (tests/fixtures/ggml-blocks, made by
//! scripts/reference/ggml_blocks.py) must decode here to the same f32 values, bit for bit.

use llmc_ir::quant::dequantize;
use llmc_ir::DType;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ggml-blocks")
}

fn check(dtype: DType) {
    let dir = fixtures();
    let name = dtype.name();
    let blocks = std::fs::read(dir.join(format!("{name}.blocks")))
        .unwrap_or_else(|e| panic!("{name}.blocks: {e}"));
    let want: Vec<f32> = std::fs::read(dir.join(format!("{name}.f32")))
        .unwrap_or_else(|e| panic!("{name}.f32: {e}"))
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let got = dequantize(dtype, &blocks, want.len()).unwrap();
    assert_eq!(got.len(), want.len());
    let mut diffs = 0;
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        if (g as f32).to_bits() != w.to_bits() {
            if diffs < 5 {
                eprintln!("{name} element {i}: llmc {g} gguf-py {w}");
            }
            diffs += 1;
        }
    }
    assert_eq!(diffs, 0, "{name}: {diffs} of {} values differ", want.len());
}

#[test]
fn f16_matches_gguf_py() {
    check(DType::F16);
}

#[test]
fn bf16_matches_gguf_py() {
    check(DType::BF16);
}

#[test]
fn q4_0_matches_gguf_py() {
    check(DType::Q4_0);
}

#[test]
fn q4_1_matches_gguf_py() {
    check(DType::Q4_1);
}

#[test]
fn q5_0_matches_gguf_py() {
    check(DType::Q5_0);
}

#[test]
fn q5_1_matches_gguf_py() {
    check(DType::Q5_1);
}

#[test]
fn q8_0_matches_gguf_py() {
    check(DType::Q8_0);
}

#[test]
fn q2_k_matches_gguf_py() {
    check(DType::Q2K);
}

#[test]
fn q3_k_matches_gguf_py() {
    check(DType::Q3K);
}

#[test]
fn q4_k_matches_gguf_py() {
    check(DType::Q4K);
}

#[test]
fn q5_k_matches_gguf_py() {
    check(DType::Q5K);
}

#[test]
fn q6_k_matches_gguf_py() {
    check(DType::Q6K);
}

#[test]
fn iq4_nl_matches_gguf_py() {
    check(DType::IQ4NL);
}

#[test]
fn iq4_xs_matches_gguf_py() {
    check(DType::IQ4XS);
}
