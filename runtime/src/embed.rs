//! `embed` in the emitted executable: sentence embeddings from an encoder model
//! (all-MiniLM-L6-v2 and other sentence-transformers folders). Each `--text` is
//! tokenized with the embedded tokenizer (special tokens added), run alone (batch 1,
//! mask all ones, positions `0..n`), and its pooled embedding is printed as one JSON
//! array per line on stdout, in the order the texts were given; or, with
//! `--output FILE.npy`, all of them are written as one f32 array `[texts, dim]`.
//!
//! ```text
//! ./OUT embed --text TEXT [--text TEXT]... [--file FILE] [--output FILE.npy]
//! ```
//!
//! `--file FILE` adds each non-empty line of FILE as a text (what `llmc eval
//! --embeddings` runs, once per model, to compare their embeddings).

use crate::exec::{HostTensor, Model};
use crate::plan::{ElemType, EncoderInfo};
use crate::Tokenizer;
use std::io::Write;
use std::path::PathBuf;

/// Usage of the `embed` command (one line of the executable's usage).
pub const USAGE: &str = "  embed --text TEXT [--text TEXT]... [--file FILE] [--output FILE.npy]  \
sentence embeddings (JSON array per text; --file: one text per line)";

/// What to embed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EmbedOptions {
    /// The texts, in order.
    pub texts: Vec<String>,
    /// Write one `.npy` `[texts, dim]` here instead of JSON on stdout.
    pub output: Option<PathBuf>,
}

/// Parses `embed`'s arguments.
pub fn parse(args: &[String]) -> Result<EmbedOptions, String> {
    let mut o = EmbedOptions::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--text" | "-t" => o
                .texts
                .push(it.next().ok_or("--text needs a value")?.clone()),
            "--file" | "-f" => {
                let path = it
                    .next()
                    .ok_or("--file needs a file name (one text per line)")?;
                let text =
                    std::fs::read_to_string(path).map_err(|e| format!("--file {path}: {e}"))?;
                let before = o.texts.len();
                o.texts.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                );
                if o.texts.len() == before {
                    return Err(format!("--file {path}: no non-empty lines"));
                }
            }
            "--output" | "-o" => {
                o.output = Some(PathBuf::from(
                    it.next().ok_or("--output needs a file name (FILE.npy)")?,
                ))
            }
            other => {
                return Err(format!(
                    "embed: unknown argument `{other}`\nusage:\n{USAGE}"
                ))
            }
        }
    }
    if o.texts.is_empty() {
        return Err(format!(
            "embed needs at least one --text TEXT\nusage:\n{USAGE}"
        ));
    }
    Ok(o)
}

/// The tokenizer described by `enc`.
pub fn tokenizer(enc: &EncoderInfo) -> Result<Tokenizer, String> {
    Tokenizer::from_json_bytes(enc.tokenizer_json.as_bytes())
        .map_err(|e| format!("the embedded tokenizer: {e}"))
}

fn i64_tensor(v: Vec<i64>) -> HostTensor {
    HostTensor {
        dtype: ElemType::I64,
        shape: vec![1, v.len()],
        data: v.into_iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// The embedding of each text (one model call per text).
pub fn embed_texts(
    model: &mut Model,
    enc: &EncoderInfo,
    tok: &Tokenizer,
    texts: &[String],
) -> Result<Vec<Vec<f32>>, String> {
    let mut out = Vec::with_capacity(texts.len());
    for (k, text) in texts.iter().enumerate() {
        let which = || {
            // The text's start only: a long text would drown the message.
            let head: String = text.chars().take(40).collect();
            let more = if head.len() < text.len() { "..." } else { "" };
            format!("--text #{} ({head:?}{more})", k + 1)
        };
        let ids = tok
            .encode(text, true)
            .map_err(|e| format!("{}: {e}", which()))?;
        out.push(embed_ids(model, enc, &ids).map_err(|e| format!("{}: {e}", which()))?);
    }
    Ok(out)
}

/// The embedding of one tokenized text (special tokens already in `ids`), run alone:
/// batch 1, mask all ones, positions `0..n`.
pub fn embed_ids(model: &mut Model, enc: &EncoderInfo, ids: &[u32]) -> Result<Vec<f32>, String> {
    let n_inputs = model.plan().inputs.len();
    if ids.is_empty() {
        return Err("the text encodes to no tokens".into());
    }
    if let Some(ctx) = enc.context_length {
        if ids.len() as i64 > ctx {
            return Err(format!(
                "{} tokens exceed the model's limit of {ctx}",
                ids.len()
            ));
        }
    }
    let n = ids.len();
    let mut inputs = vec![i64_tensor(Vec::new()); n_inputs];
    let mut set = |slot: Option<u32>, v: Vec<i64>| -> Result<(), String> {
        if let Some(s) = slot {
            *inputs
                .get_mut(s as usize)
                .ok_or_else(|| format!("the plan names graph input {s} of {n_inputs}"))? =
                i64_tensor(v);
        }
        Ok(())
    };
    set(Some(enc.ids_input), ids.iter().map(|&t| t as i64).collect())?;
    set(enc.mask_input, vec![1; n])?;
    set(enc.pos_input, (0..n as i64).collect())?;
    let outs = model.run(&inputs).map_err(|e| e.to_string())?;
    let t = outs
        .get(enc.embedding_output as usize)
        .ok_or("the model returned no embedding")?;
    if t.dtype != ElemType::F32 {
        return Err(format!("the embedding is {}, expected f32", t.dtype.name()));
    }
    Ok(t.data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// One JSON array (shortest round-trip decimal for each f32).
pub fn to_json(v: &[f32]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|x| {
            if x.is_finite() {
                format!("{x:?}")
            } else {
                // JSON has no NaN or infinity.
                "null".to_string()
            }
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// Runs `embed`: JSON lines on stdout, or one `.npy` file.
pub fn embed(model: &mut Model, opts: &EmbedOptions) -> Result<(), String> {
    let enc = model.plan().encoder.clone().ok_or_else(|| {
        if model.plan().llm.is_some() {
            "embed needs a sentence-embedding (encoder) model; this executable holds a \
             language model: use `generate --prompt TEXT`"
                .to_string()
        } else {
            "embed needs a sentence-embedding (encoder) model with a tokenizer; this \
             executable holds a plain graph: use `run --input NAME=FILE.npy`"
                .to_string()
        }
    })?;
    let tok = tokenizer(&enc)?;
    let t0 = std::time::Instant::now();
    let vecs = embed_texts(model, &enc, &tok, &opts.texts)?;
    let secs = t0.elapsed().as_secs_f64();
    let dim = vecs.first().map_or(0, Vec::len);
    match &opts.output {
        Some(path) => {
            if let Some(v) = vecs.iter().find(|v| v.len() != dim) {
                return Err(format!(
                    "embeddings differ in size ({dim} and {}); cannot write one array",
                    v.len()
                ));
            }
            let t = HostTensor {
                dtype: ElemType::F32,
                shape: vec![vecs.len(), dim],
                data: vecs
                    .iter()
                    .flatten()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            };
            let bytes = crate::npy::write(&t).map_err(|e| format!("--output: {e}"))?;
            std::fs::write(path, bytes)
                .map_err(|e| format!("--output: cannot write {}: {e}", path.display()))?;
            eprintln!(
                "embed: wrote {} embedding(s) of {dim} to {}",
                vecs.len(),
                path.display()
            );
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for v in &vecs {
                writeln!(out, "{}", to_json(v)).map_err(|e| format!("writing stdout: {e}"))?;
            }
            out.flush().map_err(|e| format!("writing stdout: {e}"))?;
        }
    }
    eprintln!("embed: {} text(s), dim {dim}, {:.3} s", vecs.len(), secs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn parses_texts_in_order_and_output() {
        let o = parse(&args(&["--text", "a b", "-t", "c", "--output", "e.npy"])).unwrap();
        assert_eq!(o.texts, vec!["a b".to_string(), "c".to_string()]);
        assert_eq!(o.output, Some(PathBuf::from("e.npy")));
        assert!(parse(&[]).unwrap_err().contains("at least one --text"));
        assert!(parse(&args(&["--text"]))
            .unwrap_err()
            .contains("needs a value"));
        let f = std::env::temp_dir().join(format!("llmc-embed-lines-{}.txt", std::process::id()));
        std::fs::write(&f, "one\n\n  two  \n").unwrap();
        let o = parse(&args(&["-t", "zero", "--file", f.to_str().unwrap()])).unwrap();
        assert_eq!(o.texts, vec!["zero", "one", "two"]);
        std::fs::write(&f, "\n \n").unwrap();
        assert!(parse(&args(&["--file", f.to_str().unwrap()]))
            .unwrap_err()
            .contains("no non-empty lines"));
        std::fs::remove_file(&f).unwrap();
        assert!(parse(&args(&["--file", "/nonexistent/x"]))
            .unwrap_err()
            .contains("/nonexistent/x"));
        assert!(parse(&args(&["--texts", "x"]))
            .unwrap_err()
            .contains("unknown argument `--texts`"));
    }

    #[test]
    fn json_round_trips_each_f32() {
        let v = [0.1f32, -2.5e-8, 3.0, f32::NAN];
        let s = to_json(&v);
        let back: Vec<Option<f32>> = serde_json::from_str(&s).unwrap();
        assert_eq!(back, vec![Some(0.1), Some(-2.5e-8), Some(3.0), None]);
    }
}
