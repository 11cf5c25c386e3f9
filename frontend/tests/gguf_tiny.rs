//! Tiny random GGUFs of every architecture the GGUF builder imports (llama, mistral,
//! qwen2, qwen3, phi3, gemma, gemma2, gemma3, gpt2), laid out as llama.cpp's converter
//! writes them and stored in every ggml type llmc decodes, against transformers'
//! logits on the same weights (tests/fixtures/gguf-tiny, made by
//! scripts/reference/tiny_gguf.py). Each model runs through the reference interpreter:
//! a prefill of 8 tokens, then 4 decode steps, every step's logits compared.

use llmc_ir::interp::Interpreter;
use llmc_ir::{DType, Tensor};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf-tiny")
}

fn check(arch: &str) {
    let dir = fixtures();
    let text = std::fs::read_to_string(dir.join(format!("{arch}.json"))).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<i64> = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let want: Vec<Vec<f64>> = r["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();
    let m = llmc_frontend::gguf::load(&dir.join(format!("{arch}.gguf")))
        .unwrap_or_else(|e| panic!("{arch}: {e}"));
    llmc_ir::verify::verify(&m).unwrap_or_else(|e| panic!("{arch}: {e:?}"));
    assert_eq!(m.info.architecture, arch);
    let mut interp = Interpreter::new(&m);
    let t = |v: Vec<i64>| Tensor::from_i64(DType::I64, vec![1, v.len()], v);
    let prefill = 8;
    let mut start = 0;
    let mut worst = 0.0f64;
    while start < ids.len() {
        let end = if start == 0 { prefill } else { start + 1 };
        let out = interp
            .run(&[
                t(ids[start..end].to_vec()),
                t((start as i64..end as i64).collect()),
            ])
            .unwrap_or_else(|e| panic!("{arch} at position {start}: {e}"));
        let got = out[0].to_f64();
        let w = &want[end - 1];
        assert_eq!(got.len(), w.len(), "{arch}: vocabulary size");
        let scale = w.iter().fold(1.0f64, |a, b| a.max(b.abs()));
        for (i, (g, w)) in got.iter().zip(w).enumerate() {
            let err = (g - w).abs() / scale;
            worst = worst.max(err);
            assert!(
                err <= 1e-4,
                "{arch} position {}: logit {i}: llmc {g}, transformers {w}",
                end - 1
            );
        }
        start = end;
    }
    eprintln!("{arch}: max |llmc - transformers| / max |logit| = {worst:.2e}");
}

#[test]
fn llama() {
    check("llama");
}

#[test]
fn mistral_sliding_window() {
    check("mistral");
}

#[test]
fn qwen2_biases() {
    check("qwen2");
}

#[test]
fn qwen3_qk_norm() {
    check("qwen3");
}

#[test]
fn phi3_fused_qkv_and_gate_up() {
    check("phi3");
}

#[test]
fn gemma() {
    check("gemma");
}

#[test]
fn gemma2_softcaps_and_sandwich_norms() {
    check("gemma2");
}

#[test]
fn gemma3_local_and_global_layers() {
    check("gemma3");
}

#[test]
fn gpt2_learned_positions_fused_qkv() {
    check("gpt2");
}
