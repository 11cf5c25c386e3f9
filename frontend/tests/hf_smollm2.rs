//! SmolLM2-135M-Instruct as a Hugging Face folder (the GGUF converted to f32
//! safetensors by `scripts/reference/smollm2_to_hf.py`) through the HF frontend, the
//! decoder builder and the reference interpreter, against transformers' greedy
//! generation recorded by `scripts/reference/smollm2_reference.py`
//! (tests/fixtures/smollm2/greedy.json). The folder is
//! `$LLMC_MODELS/SmolLM2-135M-Instruct-hf`; the test skips when it is absent.

use anyhow::{Context, Result};
use llmc_ir::interp::Interpreter;
use llmc_ir::verify::verify;
use llmc_ir::{DType, Tensor};
use llmc_runtime::Tokenizer;
use std::path::PathBuf;
use std::time::Instant;

mod common;

/// Tokens that must match transformers' greedy continuation exactly.
const MIN_MATCH: usize = 16;

fn ints(v: &serde_json::Value, key: &str) -> Result<Vec<i64>> {
    v[key]
        .as_array()
        .with_context(|| format!("greedy.json: no list `{key}`"))?
        .iter()
        .map(|x| x.as_i64().context("an integer"))
        .collect()
}

fn row(v: &[i64]) -> Tensor {
    Tensor::from_i64(DType::I64, vec![1, v.len()], v.to_vec())
}

fn argmax(v: &[f64]) -> i64 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as i64
}

#[test]
fn smollm2_hf_greedy_matches_transformers() -> Result<()> {
    let Some(dir) = common::model_file("SmolLM2-135M-Instruct-hf") else {
        return Ok(());
    };
    let fx_path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/smollm2/greedy.json");
    let fx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&fx_path)?)?;
    let prompt = fx["prompt"].as_str().context("prompt")?;
    let want_prompt = ints(&fx, "prompt_ids")?;
    let want_gen = ints(&fx, "generated_ids")?;
    let top_ids = ints(&fx, "prefill_top_ids")?;
    let top_logits: Vec<f64> = fx["prefill_top_logits"]
        .as_array()
        .context("prefill_top_logits")?
        .iter()
        .map(|x| x.as_f64().context("a number"))
        .collect::<Result<_>>()?;

    let t0 = Instant::now();
    let module = llmc_frontend::hf::load(&dir)?;
    eprintln!("loaded {} in {:?}", dir.display(), t0.elapsed());
    assert_eq!(module.info.architecture, "llama");
    verify(&module).map_err(|e| anyhow::anyhow!("imported module does not verify:\n{e}"))?;
    assert_eq!(module.info.eos_tokens, vec![2]);
    assert!(module.info.chat_template.is_some());

    let tok = Tokenizer::from_json_bytes(&std::fs::read(dir.join("tokenizer.json"))?)?;
    let ids: Vec<i64> = tok
        .encode(prompt, true)?
        .into_iter()
        .map(i64::from)
        .collect();
    assert_eq!(ids, want_prompt, "prompt ids");

    let mut interp = Interpreter::new(&module);
    let t1 = Instant::now();
    let pos: Vec<i64> = (0..ids.len() as i64).collect();
    let out = interp.run(&[row(&ids), row(&pos)])?;
    let prefill = t1.elapsed();
    let logits = out[0].to_f64();
    assert_eq!(out[0].shape, vec![1, 49152]);
    // The prefill's last-position logits agree with transformers' (both f32 weights;
    // the interpreter accumulates in f64).
    let mut worst = 0.0f64;
    for (&id, &want) in top_ids.iter().zip(&top_logits) {
        worst = worst.max((logits[id as usize] - want).abs());
    }
    eprintln!(
        "prefill of {} tokens: {prefill:?}; top-20 logits max |diff| {worst:.2e}",
        ids.len()
    );
    assert!(worst < 2e-3, "prefill logits differ by {worst}");

    let mut gen = vec![argmax(&logits)];
    let t2 = Instant::now();
    while gen.len() < want_gen.len() {
        let p = (ids.len() + gen.len() - 1) as i64;
        let last = gen[gen.len() - 1];
        let out = interp.run(&[row(&[last]), row(&[p])])?;
        gen.push(argmax(&out[0].to_f64()));
    }
    let decode = t2.elapsed();
    let matched = gen
        .iter()
        .zip(&want_gen)
        .take_while(|(a, b)| a == b)
        .count();
    let text = tok.decode(&gen.iter().map(|&i| i as u32).collect::<Vec<_>>())?;
    eprintln!(
        "decode of {} tokens: {decode:?} ({:.2} s/token); {matched}/{} match transformers; text {text:?}",
        gen.len() - 1,
        decode.as_secs_f64() / (gen.len() - 1) as f64,
        want_gen.len()
    );
    assert!(
        matched >= MIN_MATCH,
        "only {matched} tokens match: got {gen:?}, transformers {want_gen:?}"
    );
    Ok(())
}
