//! Tiny random models of every decoder architecture the HF frontend reads, saved by
//! transformers' `save_pretrained` (tests/fixtures/hf-tiny/, made by
//! `scripts/reference/tiny_decoders.py`), loaded through `hf::load` and run by the
//! reference interpreter: prefill and greedy decode logits must match transformers'.
//! Covers GQA, bf16 weights, linear RoPE scaling, untied heads, Qwen2's q/k/v biases,
//! and GPT-2's Conv1D layout with learned positions.

use anyhow::{Context, Result};
use llmc_ir::interp::Interpreter;
use llmc_ir::verify::verify;
use llmc_ir::{DType, Tensor};
use std::path::PathBuf;

fn floats(v: &serde_json::Value) -> Result<Vec<f64>> {
    v.as_array()
        .context("a list")?
        .iter()
        .map(|x| x.as_f64().context("a number"))
        .collect()
}

fn row(v: &[i64]) -> Tensor {
    Tensor::from_i64(DType::I64, vec![1, v.len()], v.to_vec())
}

/// Largest |got - want| relative to the logits' scale.
fn max_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / scale)
        .fold(0.0, f64::max)
}

fn check(case: &str, want_arch: &str) -> Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/hf-tiny")
        .join(case);
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json"))?)?;
    let module = llmc_frontend::hf::load(&dir)?;
    assert_eq!(module.info.architecture, want_arch);
    verify(&module).map_err(|e| anyhow::anyhow!("{case}: module does not verify:\n{e}"))?;
    let prompt: Vec<i64> = exp["prompt_ids"]
        .as_array()
        .context("prompt_ids")?
        .iter()
        .map(|x| x.as_i64().context("id"))
        .collect::<Result<_>>()?;
    let mut interp = Interpreter::new(&module);
    let pos: Vec<i64> = (0..prompt.len() as i64).collect();
    let out = interp.run(&[row(&prompt), row(&pos)])?;
    let mut worst = max_err(&out[0].to_f64(), &floats(&exp["prefill_logits"])?);
    let steps = exp["decode"].as_array().context("decode")?;
    for (p, step) in (prompt.len() as i64..).zip(steps) {
        let id = step["id"].as_i64().context("id")?;
        let out = interp.run(&[row(&[id]), row(&[p])])?;
        worst = worst.max(max_err(&out[0].to_f64(), &floats(&step["logits"])?));
    }
    eprintln!("{case}: max relative logit error {worst:.2e}");
    assert!(
        worst < 1e-4,
        "{case}: logits differ from transformers by {worst:.2e}"
    );
    Ok(())
}

#[test]
fn llama_gqa_bf16() -> Result<()> {
    check("llama_gqa_bf16", "llama")
}

#[test]
fn llama_rope_linear_untied() -> Result<()> {
    check("llama_rope_linear", "llama")
}

#[test]
fn mistral() -> Result<()> {
    check("mistral", "mistral")
}

#[test]
fn qwen2_qkv_bias() -> Result<()> {
    check("qwen2", "qwen2")
}

#[test]
fn gpt2_conv1d_learned_positions() -> Result<()> {
    check("gpt2", "gpt2")
}

fn ints2(v: &serde_json::Value) -> Result<(Vec<i64>, Vec<usize>)> {
    let rows = v.as_array().context("a list of rows")?;
    let mut flat = Vec::new();
    for r in rows {
        for x in r.as_array().context("a row")? {
            flat.push(x.as_i64().context("an integer")?);
        }
    }
    let shape = vec![rows.len(), flat.len() / rows.len().max(1)];
    Ok((flat, shape))
}

fn check_encoder(case: &str, pooling: &str, normalize: &str) -> Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/hf-tiny")
        .join(case);
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json"))?)?;
    let module = llmc_frontend::hf::load(&dir)?;
    verify(&module).map_err(|e| anyhow::anyhow!("{case}: module does not verify:\n{e}"))?;
    assert_eq!(module.info.architecture, "bert");
    assert_eq!(module.info.extra["pooling"], pooling);
    assert_eq!(module.info.extra["normalize"], normalize);
    let (ids, shape) = ints2(&exp["ids"])?;
    let (mask, _) = ints2(&exp["mask"])?;
    let pos: Vec<i64> = (0..ids.len()).map(|i| (i % shape[1]) as i64).collect();
    let t = |v: Vec<i64>| Tensor::from_i64(DType::I64, shape.clone(), v);
    let out = Interpreter::new(&module).run(&[t(ids), t(mask), t(pos)])?;
    let (want, wshape) = {
        let rows = exp["embeddings"].as_array().context("embeddings")?;
        let mut flat = Vec::new();
        for r in rows {
            flat.extend(floats(r)?);
        }
        let n = flat.len() / rows.len();
        (flat, vec![rows.len(), n])
    };
    assert_eq!(out[0].shape, wshape);
    let err = max_err(&out[0].to_f64(), &want);
    eprintln!("{case}: max relative embedding error {err:.2e}");
    assert!(
        err < 1e-4,
        "{case}: embeddings differ from transformers by {err:.2e}"
    );
    Ok(())
}

#[test]
fn bert_masked_lm_checkpoint_mean_pooling() -> Result<()> {
    check_encoder("bert_mlm_mean", "mean", "false")
}

#[test]
fn bert_f16_cls_pooling_normalized() -> Result<()> {
    check_encoder("bert_f16_cls", "cls", "true")
}
