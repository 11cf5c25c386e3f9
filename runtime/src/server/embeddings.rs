//! `POST /v1/embeddings` on an executable built from a sentence-embedding (encoder)
//! model, as OpenAI's API and vLLM's `--task embed` answer it: `input` is a string, a
//! list of strings, a list of token ids or a list of token-id lists (ids taken as
//! given, no special tokens added); `encoding_format` `float` (JSON numbers) or
//! `base64` (the little-endian f32 bytes, which the `openai` Python client asks for by
//! default); `dimensions` only as the model's own width. The answer is
//! `{object: "list", data: [{object: "embedding", index, embedding}], model, usage}`.
//!
//! The encoder runs on [`Embedder`]: one compiled model behind a mutex, each input run
//! alone (batch 1, as `./OUT embed` runs it, so both give the same numbers) on the
//! blocking pool, never on the HTTP threads.

use super::error::ApiError;
use super::validate::token_ids;
use super::{read_json, AppState, Backend};
use crate::abi::KernelFn;
use crate::exec::Model;
use crate::plan::{EncoderInfo, Plan};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// Runs one tokenized input to its embedding.
pub type EmbedFn = dyn Fn(&[u32]) -> Result<Vec<f32>, String> + Send + Sync;

/// An encoder model the server embeds with.
pub struct Embedder {
    run: Box<EmbedFn>,
    /// The most tokens one input may have.
    pub context_length: usize,
}

impl Embedder {
    /// An embedder over any function (tests use a toy one).
    pub fn new(context_length: usize, run: Box<EmbedFn>) -> Embedder {
        Embedder {
            run,
            context_length,
        }
    }

    /// The executable's compiled encoder.
    pub fn start(
        plan: Plan,
        data: &'static [u8],
        kernels: Vec<(String, KernelFn)>,
        enc: EncoderInfo,
    ) -> Result<Embedder, String> {
        let context = enc.context_length.unwrap_or(i64::MAX).clamp(1, 1 << 40) as usize;
        let model = Model::new(plan, data, &kernels).map_err(|e| e.to_string())?;
        let model = Mutex::new(model);
        Ok(Embedder::new(
            context,
            Box::new(move |ids: &[u32]| {
                let mut m = model
                    .lock()
                    .map_err(|_| "the model failed in an earlier request".to_string())?;
                crate::embed::embed_ids(&mut m, &enc, ids)
            }),
        ))
    }

    /// The embedding of one input.
    pub fn embed(&self, ids: &[u32]) -> Result<Vec<f32>, String> {
        (self.run)(ids)
    }
}

/// Standard base64 (RFC 4648, with padding).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(A[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One input of `input`.
enum Input {
    Text(String),
    Ids(Vec<u32>),
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::field("input", msg)
}

/// `input` as a list of inputs.
fn inputs(v: Option<&Value>) -> Result<Vec<Input>, ApiError> {
    let items = match v {
        None | Some(Value::Null) => return Err(bad("`input` is required")),
        Some(Value::String(s)) => return Ok(vec![Input::Text(s.clone())]),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(bad(
                "`input` must be a string, a list of strings, a list of token ids or a \
                 list of token-id lists",
            ))
        }
    };
    if items.is_empty() {
        return Err(bad("`input` is an empty list"));
    }
    if items.iter().all(Value::is_number) {
        return Ok(vec![Input::Ids(token_ids("input", items)?)]);
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(Input::Text(s.clone())),
            Value::Array(ids) => Ok(Input::Ids(token_ids(&format!("input[{i}]"), ids)?)),
            _ => Err(bad(format!(
                "`input[{i}]` must be a string or a list of token ids"
            ))),
        })
        .collect()
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let run = async {
        let emb = match &st.backend {
            Backend::Embed(e) => e.clone(),
            Backend::Llm(_) => {
                return Err(ApiError::status(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "`{}` is a language model: /v1/embeddings needs an executable built \
                         from an encoder (sentence-embedding) model",
                        st.model
                    ),
                )
                .code("model_not_supported"))
            }
        };
        let m = read_json(&st, &headers, body).await?;
        let model = match m.get("model") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(ApiError::field("model", "`model` must be a string")),
        };
        super::complete::check_model(&st, &model)?;
        let base64_out = match m.get("encoding_format") {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) if s == "float" => false,
            Some(Value::String(s)) if s == "base64" => true,
            Some(_) => {
                return Err(ApiError::field(
                    "encoding_format",
                    "`encoding_format` must be \"float\" or \"base64\"",
                ))
            }
        };
        let dimensions = match m.get("dimensions") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().filter(|&d| d > 0).ok_or_else(|| {
                ApiError::field("dimensions", "`dimensions` must be a positive integer")
            })?),
        };
        let mut all = Vec::new();
        for (i, input) in inputs(m.get("input"))?.into_iter().enumerate() {
            let ids = match input {
                Input::Text(t) => st
                    .tok
                    .encode(&t, true)
                    .map_err(|e| bad(format!("`input[{i}]`: {e}")))?,
                Input::Ids(ids) => ids,
            };
            if ids.is_empty() {
                return Err(bad(format!("`input[{i}]` has no tokens")));
            }
            if ids.len() > emb.context_length {
                return Err(bad(format!(
                    "`input[{i}]` has {} tokens; this model takes at most {}",
                    ids.len(),
                    emb.context_length
                )));
            }
            if let Some(bad_id) = ids.iter().find(|&&t| t as usize >= st.tok.vocab_size()) {
                return Err(bad(format!(
                    "`input[{i}]`: token id {bad_id} is outside the vocabulary of {}",
                    st.tok.vocab_size()
                )));
            }
            all.push(ids);
        }
        let prompt_tokens: usize = all.iter().map(Vec::len).sum();
        let e2 = emb.clone();
        let vecs = tokio::task::spawn_blocking(move || {
            all.iter()
                .map(|ids| e2.embed(ids))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        if let (Some(d), Some(v)) = (dimensions, vecs.first()) {
            if d as usize != v.len() {
                return Err(ApiError::field(
                    "dimensions",
                    format!(
                        "this model's embeddings have {} dimensions; `dimensions` {d} is not \
                         supported",
                        v.len()
                    ),
                ));
            }
        }
        let data: Vec<Value> = vecs
            .iter()
            .enumerate()
            .map(|(index, v)| {
                let embedding = if base64_out {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::String(base64(&bytes))
                } else {
                    json!(v
                        .iter()
                        .map(|&x| if x.is_finite() { json!(x) } else { Value::Null })
                        .collect::<Vec<_>>())
                };
                json!({"object": "embedding", "index": index, "embedding": embedding})
            })
            .collect();
        Ok(super::json_response(json!({
            "object": "list",
            "data": data,
            "model": st.model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        })))
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
