//! Request validation apart from inference (in the manner of TGI's `validation.rs`):
//! the JSON body of `/v1/completions` or `/v1/chat/completions` is checked field by
//! field into a typed request before the engine sees anything. Unknown fields and
//! `null` values are tolerated (clients send both); a present field of the wrong type
//! or out of range is a 400 naming the field.

use super::error::ApiError;
use crate::sampler::SamplerConfig;
use crate::ChatMessage;
use serde_json::{Map, Value};

/// Most stop strings per request.
pub const MAX_STOP: usize = 32;
/// Longest stop string, bytes.
pub const MAX_STOP_BYTES: usize = 512;
/// Most choices per prompt (`n`).
pub const MAX_N: usize = 16;
/// Most alternatives per position (`logprobs` / `top_logprobs`).
pub const MAX_LOGPROBS: usize = 20;
/// Most prompts in one completion request.
pub const MAX_PROMPTS: usize = 64;

/// One prompt: text to tokenize, or token ids used as given (no BOS added).
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// Token ids.
    Ids(Vec<u32>),
}

/// Generation settings shared by completions and chat.
#[derive(Clone, Debug, PartialEq)]
pub struct GenParams {
    /// `max_tokens` / `max_completion_tokens` (None: the endpoint's default).
    pub max_tokens: Option<usize>,
    /// Sampling settings; `seed` is `seed` when given.
    pub sampling: SamplerConfig,
    /// Whether `seed` was given (otherwise one is drawn per request).
    pub seeded: bool,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Stop token ids (vLLM's `stop_token_ids`).
    pub stop_token_ids: Vec<u32>,
    /// Choices per prompt.
    pub n: usize,
    /// Stream with server-sent events.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// Log-probabilities with this many alternatives.
    pub logprobs: Option<usize>,
    /// Completions: return the prompt (and its logprobs) before the generated text.
    pub echo: bool,
    /// Keep generating past end-of-sequence.
    pub ignore_eos: bool,
    /// Drop special tokens from the text (default true).
    pub skip_special_tokens: bool,
}

/// A checked `/v1/completions` request.
#[derive(Clone, Debug, PartialEq)]
pub struct CompletionRequest {
    /// `model`, when given.
    pub model: Option<String>,
    /// One choice group per prompt.
    pub prompts: Vec<Prompt>,
    /// Settings.
    pub params: GenParams,
}

/// A checked `/v1/chat/completions` request.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    /// `model`, when given.
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Settings.
    pub params: GenParams,
}

/// Parses a body as a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::status(
            axum::http::StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {e}"),
        )
        .code("invalid_json")
    })?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::status(
            axum::http::StatusCode::BAD_REQUEST,
            format!(
                "the request body must be a JSON object, not {}",
                type_name(&other)
            ),
        )
        .code("invalid_json")),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A field, `None` when absent or `null`.
fn get<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    m.get(k).filter(|v| !v.is_null())
}

fn wrong(k: &str, want: &str, v: &Value) -> ApiError {
    ApiError::field(k, format!("`{k}` must be {want}, got {}", type_name(v)))
}

fn opt_bool(m: &Map<String, Value>, k: &str) -> Result<Option<bool>, ApiError> {
    get(m, k)
        .map(|v| v.as_bool().ok_or_else(|| wrong(k, "a boolean", v)))
        .transpose()
}

fn opt_str(m: &Map<String, Value>, k: &str) -> Result<Option<String>, ApiError> {
    get(m, k)
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| wrong(k, "a string", v))
        })
        .transpose()
}

fn opt_f32(m: &Map<String, Value>, k: &str, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
    let Some(v) = get(m, k) else {
        return Ok(None);
    };
    let x = v.as_f64().ok_or_else(|| wrong(k, "a number", v))?;
    if !(lo..=hi).contains(&x) {
        return Err(ApiError::field(
            k,
            format!("`{k}` is {x}; it must be between {lo} and {hi}"),
        ));
    }
    Ok(Some(x as f32))
}

/// An integer field in `lo..=hi`.
fn opt_int(m: &Map<String, Value>, k: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
    let Some(v) = get(m, k) else {
        return Ok(None);
    };
    let x = match v {
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i,
            (None, Some(_)) => i64::MAX,
            _ => {
                return Err(ApiError::field(
                    k,
                    format!("`{k}` must be an integer, got {n}"),
                ))
            }
        },
        other => return Err(wrong(k, "an integer", other)),
    };
    if x < lo || x > hi {
        return Err(ApiError::field(
            k,
            format!("`{k}` is {x}; it must be between {lo} and {hi}"),
        ));
    }
    Ok(Some(x))
}

/// `items` as token ids; an item that is not one is a 400 naming field `k`.
pub(crate) fn token_ids(k: &str, items: &[Value]) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64()
                .filter(|&x| x <= u32::MAX as u64)
                .map(|x| x as u32)
                .ok_or_else(|| {
                    ApiError::field(
                        k,
                        format!(
                            "`{k}` item {i} must be a token id (a non-negative integer), got {v}"
                        ),
                    )
                })
        })
        .collect()
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of lists.
fn prompts(m: &Map<String, Value>) -> Result<Vec<Prompt>, ApiError> {
    const K: &str = "prompt";
    let v = get(m, K).ok_or_else(|| ApiError::field(K, "`prompt` is required"))?;
    let out = match v {
        Value::String(s) => vec![Prompt::Text(s.clone())],
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::field(K, "`prompt` is an empty list"))
        }
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_str()
                        .map(|s| Prompt::Text(s.to_string()))
                        .ok_or_else(|| {
                            ApiError::field(
                                K,
                                format!("`prompt` item {i} must be a string like the first"),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
            Value::Number(_) => vec![Prompt::Ids(token_ids(K, items)?)],
            Value::Array(_) => items
                .iter()
                .enumerate()
                .map(|(i, x)| match x {
                    Value::Array(ids) => Ok(Prompt::Ids(token_ids(K, ids)?)),
                    other => Err(ApiError::field(
                        K,
                        format!(
                            "`prompt` item {i} must be a list of token ids, got {}",
                            type_name(other)
                        ),
                    )),
                })
                .collect::<Result<_, _>>()?,
            other => {
                return Err(ApiError::field(
                    K,
                    format!(
                        "`prompt` must be a string, a list of strings, a list of token ids or a \
                         list of such lists; its first item is {}",
                        type_name(other)
                    ),
                ))
            }
        },
        other => return Err(wrong(K, "a string or a list", other)),
    };
    if out.len() > MAX_PROMPTS {
        return Err(ApiError::field(
            K,
            format!(
                "`prompt` holds {} prompts; at most {MAX_PROMPTS} per request",
                out.len()
            ),
        ));
    }
    if let Some(i) = out
        .iter()
        .position(|p| matches!(p, Prompt::Ids(ids) if ids.is_empty()))
    {
        return Err(ApiError::field(
            K,
            format!("`prompt` {i} is an empty list of token ids"),
        ));
    }
    Ok(out)
}

fn stops(m: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    const K: &str = "stop";
    let list = match get(m, K) {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.len() > MAX_STOP {
                return Err(ApiError::field(
                    K,
                    format!(
                        "`stop` holds {} strings; at most {MAX_STOP} are allowed",
                        items.len()
                    ),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_str().map(str::to_string).ok_or_else(|| {
                        ApiError::field(
                            K,
                            format!("`stop` item {i} must be a string, got {}", type_name(x)),
                        )
                    })
                })
                .collect::<Result<_, _>>()?
        }
        Some(other) => return Err(wrong(K, "a string or a list of strings", other)),
    };
    if let Some(s) = list.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::field(
            K,
            format!(
                "a `stop` string has {} bytes; at most {MAX_STOP_BYTES}",
                s.len()
            ),
        ));
    }
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

/// The settings common to both endpoints; `chat` selects the chat meaning of
/// `logprobs` (a boolean, with `top_logprobs`).
fn params(m: &Map<String, Value>, chat: bool) -> Result<GenParams, ApiError> {
    let big = i64::from(u32::MAX);
    let max_tokens = match opt_int(m, "max_completion_tokens", 0, big)? {
        Some(x) => Some(x),
        None => opt_int(m, "max_tokens", 0, big)?,
    };
    let mut s = SamplerConfig {
        temperature: 1.0,
        ..SamplerConfig::default()
    };
    if let Some(t) = opt_f32(m, "temperature", 0.0, 100.0)? {
        s.temperature = t;
    }
    if let Some(p) = opt_f32(m, "top_p", 0.0, 1.0)? {
        if p <= 0.0 {
            return Err(ApiError::field(
                "top_p",
                "`top_p` is 0; it must be above 0 and at most 1",
            ));
        }
        s.top_p = p;
    }
    if let Some(k) = opt_int(m, "top_k", -1, big)? {
        s.top_k = k.max(0) as usize;
    }
    if let Some(p) = opt_f32(m, "min_p", 0.0, 1.0)? {
        s.min_p = p;
    }
    if let Some(p) = opt_f32(m, "presence_penalty", -2.0, 2.0)? {
        s.presence_penalty = p;
    }
    if let Some(p) = opt_f32(m, "frequency_penalty", -2.0, 2.0)? {
        s.frequency_penalty = p;
    }
    if let Some(p) = opt_f32(m, "repetition_penalty", 0.0, 100.0)? {
        if p <= 0.0 {
            return Err(ApiError::field(
                "repetition_penalty",
                "`repetition_penalty` is 0; it must be above 0",
            ));
        }
        s.repetition_penalty = p;
    }
    let seed = opt_int(m, "seed", i64::MIN, i64::MAX)?;
    if let Some(x) = seed {
        s.seed = x as u64;
    }
    let n = opt_int(m, "n", 1, MAX_N as i64)?.unwrap_or(1) as usize;
    if let Some(b) = opt_int(m, "best_of", 1, MAX_N as i64)? {
        if b as usize != n {
            return Err(ApiError::field(
                "best_of",
                "`best_of` other than `n` is not supported",
            ));
        }
    }
    let stream = opt_bool(m, "stream")?.unwrap_or(false);
    let include_usage = match get(m, "stream_options") {
        None => false,
        Some(Value::Object(o)) => opt_bool(o, "include_usage")
            .map_err(|e| ApiError::field("stream_options.include_usage", e.message))?
            .unwrap_or(false),
        Some(other) => return Err(wrong("stream_options", "an object", other)),
    };
    let logprobs = if chat {
        let on = opt_bool(m, "logprobs")?.unwrap_or(false);
        let top = opt_int(m, "top_logprobs", 0, MAX_LOGPROBS as i64)?;
        if top.is_some() && !on {
            return Err(ApiError::field(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
        on.then(|| top.unwrap_or(0) as usize)
    } else {
        match get(m, "logprobs") {
            // `logprobs: true` from clients that mix up the two APIs: one alternative.
            Some(Value::Bool(b)) => b.then_some(1),
            _ => opt_int(m, "logprobs", 0, MAX_LOGPROBS as i64)?.map(|k| k as usize),
        }
    };
    let echo = if chat {
        false
    } else {
        opt_bool(m, "echo")?.unwrap_or(false)
    };
    let stop_token_ids = match get(m, "stop_token_ids") {
        None => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_STOP => token_ids("stop_token_ids", items)?,
        Some(Value::Array(_)) => {
            return Err(ApiError::field(
                "stop_token_ids",
                format!("`stop_token_ids`: at most {MAX_STOP} ids"),
            ))
        }
        Some(other) => return Err(wrong("stop_token_ids", "a list of token ids", other)),
    };
    match get(m, "logit_bias") {
        None => {}
        Some(Value::Object(o)) if o.is_empty() => {}
        Some(_) => {
            return Err(ApiError::field(
                "logit_bias",
                "`logit_bias` is not supported",
            ))
        }
    }
    if let Some(s) = opt_str(m, "suffix")? {
        if !s.is_empty() {
            return Err(ApiError::field("suffix", "`suffix` is not supported"));
        }
    }
    opt_str(m, "user")?;
    Ok(GenParams {
        max_tokens: max_tokens.map(|x| x as usize),
        sampling: s,
        seeded: seed.is_some(),
        stop: stops(m)?,
        stop_token_ids,
        n,
        stream,
        include_usage,
        logprobs,
        echo,
        ignore_eos: opt_bool(m, "ignore_eos")?.unwrap_or(false),
        skip_special_tokens: opt_bool(m, "skip_special_tokens")?.unwrap_or(true),
    })
}

/// Checks a `/v1/completions` body.
pub fn completion(m: &Map<String, Value>) -> Result<CompletionRequest, ApiError> {
    let params = params(m, false)?;
    let prompts = prompts(m)?;
    if prompts.len() * params.n > MAX_PROMPTS * 4 {
        return Err(ApiError::field(
            "n",
            format!(
                "{} prompts × n = {} choices; at most {} per request",
                prompts.len(),
                prompts.len() * params.n,
                MAX_PROMPTS * 4
            ),
        ));
    }
    Ok(CompletionRequest {
        model: opt_str(m, "model")?,
        prompts,
        params,
    })
}

fn message(i: usize, v: &Value) -> Result<ChatMessage, ApiError> {
    let k = format!("messages[{i}]");
    let o = v.as_object().ok_or_else(|| {
        ApiError::field(&k, format!("`{k}` must be an object, got {}", type_name(v)))
    })?;
    let role = match get(o, "role") {
        Some(Value::String(r)) if !r.is_empty() => r.clone(),
        Some(other) => {
            return Err(ApiError::field(
                &format!("{k}.role"),
                format!("`{k}.role` must be a non-empty string, got {other}"),
            ))
        }
        None => {
            return Err(ApiError::field(
                &format!("{k}.role"),
                format!("`{k}.role` is required"),
            ))
        }
    };
    let content = match get(o, "content") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let pk = format!("{k}.content[{j}]");
                let po = p
                    .as_object()
                    .ok_or_else(|| ApiError::field(&pk, format!("`{pk}` must be an object")))?;
                match get(po, "type").and_then(Value::as_str) {
                    Some("text") => match get(po, "text") {
                        Some(Value::String(t)) => text.push_str(t),
                        _ => {
                            return Err(ApiError::field(
                                &pk,
                                format!("`{pk}.text` must be a string"),
                            ))
                        }
                    },
                    Some(t) => {
                        return Err(ApiError::field(
                            &pk,
                            format!("`{pk}` has type `{t}`; only `text` parts are supported"),
                        ))
                    }
                    None => return Err(ApiError::field(&pk, format!("`{pk}.type` is required"))),
                }
            }
            text
        }
        Some(other) => {
            return Err(ApiError::field(
                &format!("{k}.content"),
                format!(
                    "`{k}.content` must be a string or a list of parts, got {}",
                    type_name(other)
                ),
            ))
        }
    };
    Ok(ChatMessage { role, content })
}

/// Checks a `/v1/chat/completions` body.
pub fn chat(m: &Map<String, Value>) -> Result<ChatRequest, ApiError> {
    let params = params(m, true)?;
    let messages = match get(m, "messages") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, v)| message(i, v))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => {
            return Err(ApiError::field("messages", "`messages` is an empty list"))
        }
        Some(other) => return Err(wrong("messages", "a list of messages", other)),
        None => return Err(ApiError::field("messages", "`messages` is required")),
    };
    Ok(ChatRequest {
        model: opt_str(m, "model")?,
        messages,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn prompt_forms() {
        let p = |v: Value| completion(&obj(json!({"prompt": v}))).map(|r| r.prompts);
        assert_eq!(p(json!("hi")).unwrap(), vec![Prompt::Text("hi".into())]);
        assert_eq!(p(json!(["a", "b"])).unwrap().len(), 2);
        assert_eq!(
            p(json!([1, 2, 3])).unwrap(),
            vec![Prompt::Ids(vec![1, 2, 3])]
        );
        assert_eq!(p(json!([[1], [2, 3]])).unwrap().len(), 2);
        assert_eq!(p(json!([])).unwrap_err().param.as_deref(), Some("prompt"));
        assert!(p(json!([-1])).unwrap_err().message.contains("item 0"));
        assert!(p(json!(["a", 1])).unwrap_err().message.contains("item 1"));
        assert!(p(json!(5)).is_err());
    }

    #[test]
    fn nulls_and_unknown_fields_are_tolerated() {
        let r = completion(&obj(json!({
            "prompt": "x", "max_tokens": null, "temperature": null, "stop": null,
            "frobnicate": {"a": 1}, "stream_options": null, "user": "u"
        })))
        .unwrap();
        assert_eq!(r.params.max_tokens, None);
        assert_eq!(r.params.sampling.temperature, 1.0);
    }

    #[test]
    fn bad_fields_are_named() {
        let e = |v: Value| completion(&obj(v)).unwrap_err();
        assert_eq!(
            e(json!({"prompt": "x", "max_tokens": -1})).param.as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            e(json!({"prompt": "x", "max_tokens": "5"}))
                .param
                .as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            e(json!({"prompt": "x", "max_tokens": 1.5}))
                .param
                .as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            e(json!({"prompt": "x", "max_tokens": 1e30}))
                .param
                .as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            e(json!({"prompt": "x", "temperature": -0.5}))
                .param
                .as_deref(),
            Some("temperature")
        );
        assert_eq!(
            e(json!({"prompt": "x", "n": 0})).param.as_deref(),
            Some("n")
        );
        assert_eq!(
            e(json!({"prompt": "x", "stream": "yes"})).param.as_deref(),
            Some("stream")
        );
        let many: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
        let err = e(json!({"prompt": "x", "stop": many}));
        assert_eq!(err.param.as_deref(), Some("stop"));
        assert!(err.message.contains("10000"), "{}", err.message);
        assert_eq!(e(json!({"max_tokens": 3})).param.as_deref(), Some("prompt"));
    }

    #[test]
    fn chat_messages() {
        let r = chat(&obj(json!({"messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null}
        ], "logprobs": true, "top_logprobs": 3})))
        .unwrap();
        assert_eq!(r.messages[1].content, "ab");
        assert_eq!(r.params.logprobs, Some(3));
        let e = chat(&obj(json!({"messages": [{"content": "x"}]}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = chat(&obj(json!({"messages": [], "top_logprobs": 2}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
    }
}
