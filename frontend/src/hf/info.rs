//! What the runtime needs from the tokenizer and generation files of a Hugging Face
//! folder: where `tokenizer.json` is, the BOS and EOS token ids, and the chat
//! template. Special tokens in `tokenizer_config.json` are strings (or
//! `{"content": ...}` objects); their ids come from `tokenizer.json`.

use super::json::JsonFile;
use super::{format_err, io_err};
use crate::FrontendError;
use llmc_ir::{ModelInfo, TokenizerSource};
use serde_json::Value;
use std::path::Path;

/// The id of token `text` in a parsed `tokenizer.json`: an added token, else a
/// vocabulary entry (BPE/WordPiece map, or Unigram list of `[piece, score]`).
fn token_id(tok: &Value, text: &str) -> Option<i64> {
    if let Some(added) = tok.get("added_tokens").and_then(|a| a.as_array()) {
        for t in added {
            if t.get("content").and_then(|c| c.as_str()) == Some(text) {
                return t.get("id").and_then(|i| i.as_i64());
            }
        }
    }
    let vocab = tok.get("model")?.get("vocab")?;
    match vocab {
        Value::Object(m) => m.get(text).and_then(|i| i.as_i64()),
        Value::Array(a) => a
            .iter()
            .position(|p| p.get(0).and_then(|s| s.as_str()) == Some(text))
            .map(|i| i as i64),
        _ => None,
    }
}

/// A special-token entry of `tokenizer_config.json`: a string or `{"content": s}`.
fn special(cfg: &JsonFile, key: &str) -> Option<String> {
    match cfg.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The chat template: `chat_template.jinja`, or `tokenizer_config.json`'s
/// `chat_template` (a string, or a list of named templates of which `default` is used).
fn chat_template(dir: &Path, tc: Option<&JsonFile>) -> Result<Option<String>, FrontendError> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| io_err(&jinja, e));
    }
    let Some(tc) = tc else { return Ok(None) };
    match tc.get("chat_template") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let named = |n: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(|x| x.as_str()) == Some(n))
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
            };
            Ok(named("default"))
        }
        Some(v) => Err(format_err(
            &tc.path,
            format!("key `chat_template` must be a string or a list, got {v}"),
        )),
    }
}

/// Reads the tokenizer and generation files of `dir` into a [`ModelInfo`] (the
/// builder fills the architecture and context length). `config` is the parsed
/// `config.json`, whose token ids are the last fallback.
pub fn model_info(dir: &Path, config: &JsonFile) -> Result<ModelInfo, FrontendError> {
    let mut info = ModelInfo::default();
    let tok_path = dir.join("tokenizer.json");
    let tok: Option<Value> = if tok_path.is_file() {
        let t = JsonFile::read(&tok_path)?;
        info.tokenizer = TokenizerSource::HfJson(tok_path.clone());
        Some(t.value)
    } else {
        None
    };
    let tc = JsonFile::read_optional(&dir.join("tokenizer_config.json"))?;
    let gen = JsonFile::read_optional(&dir.join("generation_config.json"))?;
    let resolve = |key: &str| -> Result<Option<i64>, FrontendError> {
        let (Some(tc), Some(tok)) = (tc.as_ref(), tok.as_ref()) else {
            return Ok(None);
        };
        match special(tc, key) {
            None => Ok(None),
            Some(text) => token_id(tok, &text).map(Some).ok_or_else(|| {
                format_err(
                    &tc.path,
                    format!(
                        "key `{key}` = `{text}` is not a token of {}",
                        tok_path.display()
                    ),
                )
            }),
        }
    };

    // BOS: generation_config, then config.json, then the tokenizer's bos_token.
    info.bos_token = match gen
        .as_ref()
        .map(|g| g.opt_int("bos_token_id"))
        .transpose()?
    {
        Some(Some(id)) => Some(id),
        _ => match config.opt_int("bos_token_id")? {
            Some(id) => Some(id),
            None => resolve("bos_token")?,
        },
    };
    // EOS: generation_config's list (what `generate` stops on), else config.json's;
    // the tokenizer's eos_token (the end of a chat turn) is added when missing.
    let mut eos = match &gen {
        Some(g) => g.int_or_ints("eos_token_id")?,
        None => Vec::new(),
    };
    if eos.is_empty() {
        eos = config.int_or_ints("eos_token_id")?;
    }
    if let Some(id) = resolve("eos_token")? {
        if !eos.contains(&id) {
            eos.push(id);
        }
    }
    info.eos_tokens = eos;
    info.chat_template = chat_template(dir, tc.as_ref())?;
    if let Some(tc) = &tc {
        if let Some(b) = tc.opt_bool("add_bos_token")? {
            info.extra.insert("add_bos_token".into(), b.to_string());
        }
    }
    Ok(info)
}
