//! The tiny GGUFs of every architecture the GGUF builder imports
//! (tests/fixtures/gguf-tiny: llama.cpp's tensor layout, a different ggml type in
//! nearly every matrix, Q2_K and Q3_K among them) compiled for the CPU after the -O3
//! pipeline, as `llmc build -O3` compiles them, and run as one process: a prefill of 8
//! tokens, then 4 decode steps over the KV cache the executable keeps. Every step's
//! logits must be transformers' on the same weights (the fixtures' JSON) within the
//! int16 activation quantization of the integer kernels: 2e-3 of the largest logit.
//! frontend/tests/gguf_tiny.rs checks the same files through the reference
//! interpreter (1e-4); this checks the kernels and the plan on real graphs.

use llmc_ir::{DType, Tensor};
use std::path::PathBuf;

/// Worst logit error allowed, as a share of the step's largest |logit|.
const TOL: f64 = 2e-3;

fn check(arch: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/gguf-tiny");
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
            let row = row.as_array().unwrap();
            row.iter().map(|v| v.as_f64().unwrap()).collect()
        })
        .collect();
    let mut m = llmc_frontend::gguf::load(&dir.join(format!("{arch}.gguf")))
        .unwrap_or_else(|e| panic!("{arch}: {e}"));
    llmc_passes::optimize(&mut m, 3).unwrap_or_else(|e| panic!("{arch}: -O3: {e}"));
    let formats: std::collections::BTreeSet<String> = m
        .weights
        .iter()
        .filter(|w| w.dtype.is_quantized())
        .map(|w| w.dtype.to_string())
        .collect();
    let t = |v: Vec<i64>| Tensor::from_i64(DType::I64, vec![1, v.len()], v);
    // The prefill, then one token at a time.
    let mut steps = vec![(0, 8)];
    while steps.last().unwrap().1 < ids.len() {
        let s = steps.last().unwrap().1;
        steps.push((s, s + 1));
    }
    let runs: Vec<Vec<Tensor>> = steps
        .iter()
        .map(|&(a, b)| vec![t(ids[a..b].to_vec()), t((a as i64..b as i64).collect())])
        .collect();
    let opts = llmc_backend::BuildOptions::default();
    let outs = llmc_backend::run::run_compiled(&m, &opts, &runs)
        .unwrap_or_else(|e| panic!("{arch}: compiled run: {e}"));
    let mut worst = 0f64;
    for (&(_, end), out) in steps.iter().zip(&outs) {
        let got = out[0].to_f64();
        let w = &want[end - 1];
        // A prefill's output may hold every row's logits: the last row is compared.
        let got = &got[got.len() - w.len()..];
        let scale = w.iter().fold(1.0f64, |a, b| a.max(b.abs()));
        for (i, (g, w)) in got.iter().zip(w).enumerate() {
            let err = (g - w).abs() / scale;
            worst = worst.max(err);
            assert!(
                err <= TOL,
                "{arch} position {}: logit {i}: compiled {g}, transformers {w}",
                end - 1
            );
        }
    }
    eprintln!(
        "{arch} ({}): max |compiled - transformers| / max |logit| = {worst:.2e}",
        formats.into_iter().collect::<Vec<_>>().join(", ")
    );
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
