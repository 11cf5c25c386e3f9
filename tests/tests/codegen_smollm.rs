//! SmolLM2-135M (Q4_1 GGUF, 30 layers) through the compiled CPU path: a prefill of
//! five tokens and one decode step (the KV cache carried inside the executable) give
//! the reference interpreter's logits within a tolerance (0.2% of the largest logit;
//! quantized linears use int16 activations), and the same next token.
//! Needs the model under `$LLMC_MODELS` (default `.cache/models`); skips with a
//! message when it is absent.

use llmc_backend::run::run_compiled;
use llmc_backend::BuildOptions;
use llmc_ir::interp::Interpreter;
use llmc_ir::{DType, Tensor};
use std::path::PathBuf;
use std::time::Instant;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn model(name: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("LLMC_MODELS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models"),
    };
    let p = dir.join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipped: model not found at {}, run scripts/fetch-models (or set LLMC_MODELS)",
            p.display()
        );
        None
    }
}

fn ids(v: &[i64]) -> Tensor {
    Tensor::from_i64(DType::I64, vec![1, v.len()], v.to_vec())
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[test]
fn smollm2_compiled_matches_the_reference() -> anyhow::Result<()> {
    let Some(path) = model(SMOLLM2) else {
        return Ok(());
    };
    let m = llmc_frontend::gguf::load(&path)?;
    // Prefill "1 2 3 4 5"-style token ids, then decode one more.
    let prompt = [1i64, 9690, 198, 2683, 359];
    let runs = vec![
        vec![ids(&prompt), ids(&[0, 1, 2, 3, 4])],
        vec![ids(&[28]), ids(&[5])],
    ];
    let t0 = Instant::now();
    let mut interp = Interpreter::new(&m);
    let want: Vec<Vec<Tensor>> = runs
        .iter()
        .map(|r| interp.run(r))
        .collect::<Result<_, _>>()?;
    let t1 = Instant::now();
    let mut opts = BuildOptions::default();
    opts.cpu.opt_level = 3;
    let got = run_compiled(&m, &opts, &runs)?;
    let t2 = Instant::now();
    eprintln!(
        "reference: {:?}; compiled build + run: {:?}",
        t1 - t0,
        t2 - t1
    );
    for (r, (g, w)) in got.iter().zip(&want).enumerate() {
        let (g, w) = (g[0].to_f64(), w[0].to_f64());
        assert_eq!(g.len(), w.len());
        let scale = w.iter().fold(0.0f64, |a, &x| a.max(x.abs()));
        let err = g
            .iter()
            .zip(&w)
            .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
        eprintln!("run {r}: max |logit| {scale:.3}, max error {err:.2e}");
        // Quantized linears quantize their activations to int16 per block of 32
        // (scale amax / 32767): measured max error 0.02% of the largest logit (4.9e-3
        // of 23.8); allowed 0.2%. (int8 activations measured 2.6% and changed the
        // greedy text; see docs/codegen.md.)
        assert!(
            err <= 2e-3 * scale,
            "run {r}: logits differ by {err} (scale {scale})"
        );
        assert_eq!(argmax(&g), argmax(&w), "run {r}: next token differs");
    }
    Ok(())
}
