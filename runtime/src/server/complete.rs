//! `/v1/completions` and `/v1/chat/completions` on the engine: a checked request
//! becomes one engine request per choice (prompts × `n`), whose events flow through an
//! unbounded channel to the HTTP task; there token ids become text (the runtime's
//! `StreamDecoder`, so no UTF-8 character is ever split), stop strings are matched
//! across tokens, and the answer is assembled whole or streamed as server-sent events.
//! Dropping the HTTP side (a client that goes away while queued, in prefill or while
//! streaming) cancels every engine request of the call at once.

use super::error::ApiError;
use super::metrics::Finished;
use super::stop::StopMatcher;
use super::validate::{self, GenParams, Prompt};
use super::{read_json, AppState};
use crate::engine::{Event, FinishReason, Request, RequestId, SubmitError, TokenLogprob};
use crate::StreamDecoder;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Default `max_tokens` of `/v1/completions` (OpenAI's).
const COMPLETION_DEFAULT_MAX_TOKENS: usize = 16;

/// Which endpoint a call came through.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

/// One choice of a call: an engine request and what its events have produced.
struct Choice {
    index: usize,
    id: RequestId,
    prompt: Arc<Vec<u32>>,
    /// The prompt's text, returned first when `echo` is on (taken when sent).
    echo: Option<String>,
    decoder: StreamDecoder,
    stop: StopMatcher,
    /// Set before cancelling the engine request when a stop string matched, so the
    /// sink records the finish as `stop`.
    stopped_here: Arc<AtomicBool>,
    text: String,
    generated: usize,
    /// Generated tokens' logprobs not yet sent with text.
    lp_pending: Vec<TokenLogprob>,
    prompt_lp: Option<Vec<Option<TokenLogprob>>>,
    /// Characters of text sent so far (`text_offset`).
    offset: usize,
    finish: Option<&'static str>,
    /// The engine's `Finished` arrived.
    ended: bool,
    sent_role: bool,
}

/// What one event produced for the client.
struct Piece {
    choice: usize,
    text: String,
    lps: Vec<TokenLogprob>,
    finish: Option<&'static str>,
}

/// Cancels the call's engine requests when the call is dropped unfinished.
struct CancelGuard {
    state: Arc<AppState>,
    ids: Vec<RequestId>,
    complete: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.complete {
            for &id in &self.ids {
                self.state.cancel(id);
            }
        }
    }
}

/// A submitted call.
struct Run {
    state: Arc<AppState>,
    kind: Kind,
    id: String,
    logprobs: Option<usize>,
    choices: Vec<Choice>,
    rx: UnboundedReceiver<(usize, Event)>,
    guard: CancelGuard,
    prompt_tokens: usize,
    error: Option<String>,
}

fn finish_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::ContextLength => "length",
        FinishReason::Cancelled => "abort",
        FinishReason::Error => "error",
    }
}

/// The status and envelope of a refused submission.
pub fn submit_error(e: &SubmitError) -> ApiError {
    let msg = e.to_string();
    match e {
        SubmitError::EmptyPrompt | SubmitError::BadToken { .. } => ApiError::field("prompt", msg),
        SubmitError::TooLong { .. } => {
            ApiError::field("max_tokens", msg).code("context_length_exceeded")
        }
        SubmitError::ExceedsCache { .. } => {
            ApiError::field("max_tokens", msg).code("kv_cache_exceeded")
        }
        SubmitError::Sampling(_) => ApiError::status(StatusCode::BAD_REQUEST, msg),
        SubmitError::QueueFull { .. } => ApiError::status(StatusCode::TOO_MANY_REQUESTS, msg)
            .code("queue_full")
            .retry_after(1),
        SubmitError::ShuttingDown => ApiError::status(StatusCode::SERVICE_UNAVAILABLE, msg)
            .code("shutting_down")
            .retry_after(5),
    }
}

/// A seed for requests that give none: distinct per request, never repeating.
fn fresh_seed() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = base ^ NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    // splitmix64 finaliser
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) fn check_model(state: &AppState, model: &Option<String>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != &state.model => Err(ApiError::status(
            StatusCode::NOT_FOUND,
            format!(
                "the model `{m}` does not exist; this server serves `{}`",
                state.model
            ),
        )
        .code("model_not_found")),
        _ => Ok(()),
    }
}

impl Run {
    /// Validates every choice's engine request, then submits them all (cancelling
    /// those already submitted when a later one is refused).
    fn start(
        state: Arc<AppState>,
        kind: Kind,
        prompts: Vec<(Arc<Vec<u32>>, Option<String>)>,
        p: &GenParams,
        default_max: Option<usize>,
    ) -> Result<Run, ApiError> {
        let facts = state.engine()?.facts().clone();
        let limit = facts.context_length.min(facts.kv_capacity_tokens());
        let mut reqs = Vec::new();
        for (pi, (ids, _)) in prompts.iter().enumerate() {
            let max_tokens = p
                .max_tokens
                .or(default_max)
                .unwrap_or_else(|| limit.saturating_sub(ids.len()).max(1));
            let base_seed = if p.seeded {
                p.sampling.seed
            } else {
                fresh_seed()
            };
            for j in 0..p.n {
                let mut sampling = p.sampling.clone();
                sampling.seed = base_seed.wrapping_add(j as u64);
                let req = Request {
                    prompt: ids.as_ref().clone(),
                    sampling,
                    max_tokens,
                    stop_token_ids: p.stop_token_ids.clone(),
                    ignore_eos: p.ignore_eos,
                    logprobs: p.logprobs,
                    // Prompt logprobs once per prompt (such a request skips the prefix
                    // cache; the other choices share the prompt's blocks).
                    prompt_logprobs: if p.echo && j == 0 { p.logprobs } else { None },
                    priority: 0,
                };
                state.engine()?.validate(&req).map_err(|e| {
                    let mut err = submit_error(&e);
                    if prompts.len() > 1 {
                        err.message = format!("prompt {pi}: {}", err.message);
                    }
                    err
                })?;
                reqs.push((pi, req));
            }
        }
        let (tx, rx) = unbounded_channel::<(usize, Event)>();
        let mut guard = CancelGuard {
            state: state.clone(),
            ids: Vec::new(),
            complete: false,
        };
        let mut choices = Vec::new();
        for (index, (pi, req)) in reqs.into_iter().enumerate() {
            let stopped_here = Arc::new(AtomicBool::new(false));
            let sink = {
                let tx = tx.clone();
                let st = state.clone();
                let flag = stopped_here.clone();
                let mut last: Option<Instant> = None;
                Box::new(move |ev: Event| {
                    match &ev {
                        Event::Token { .. } => {
                            let now = Instant::now();
                            if let Some(l) = last {
                                st.metrics.inter_token(now - l);
                            }
                            last = Some(now);
                        }
                        Event::Finished {
                            reason, timings, ..
                        } => {
                            let reason = if flag.load(Ordering::SeqCst) {
                                "stop"
                            } else {
                                finish_name(*reason)
                            };
                            st.metrics.finished(Finished {
                                reason,
                                ttft: timings.first_token,
                                e2e: timings.total,
                                queued: timings.queued,
                            });
                        }
                        _ => {}
                    }
                    tx.send((index, ev)).is_ok()
                })
            };
            let id = state
                .engine()?
                .submit(req, sink)
                .map_err(|e| submit_error(&e))?;
            guard.ids.push(id);
            let (ids, text) = &prompts[pi];
            choices.push(Choice {
                index,
                id,
                prompt: ids.clone(),
                echo: if p.echo { text.clone() } else { None },
                decoder: state.tok.stream(p.skip_special_tokens),
                stop: StopMatcher::new(p.stop.clone()),
                stopped_here,
                text: String::new(),
                generated: 0,
                lp_pending: Vec::new(),
                prompt_lp: None,
                offset: 0,
                finish: None,
                ended: false,
                sent_role: false,
            });
        }
        let prefix = match kind {
            Kind::Completion => "cmpl",
            Kind::Chat => "chatcmpl",
        };
        Ok(Run {
            state,
            kind,
            id: format!("{prefix}-{:016x}", fresh_seed()),
            logprobs: p.logprobs,
            choices,
            rx,
            guard,
            prompt_tokens: prompts.iter().map(|(ids, _)| ids.len()).sum(),
            error: None,
        })
    }

    fn all_ended(&self) -> bool {
        self.choices.iter().all(|c| c.ended)
    }

    /// Waits for the next event; returns what it produced for the client (None when
    /// every choice has ended).
    async fn next(&mut self) -> Option<Option<Piece>> {
        if self.all_ended() {
            self.guard.complete = true;
            return None;
        }
        let Some((i, ev)) = self.rx.recv().await else {
            // The engine dropped every sink without finishing: it stopped.
            for c in self.choices.iter_mut().filter(|c| !c.ended) {
                c.ended = true;
                if c.finish.is_none() {
                    c.finish = Some("error");
                }
            }
            self.error
                .get_or_insert_with(|| "the engine stopped before the request finished".into());
            return Some(None);
        };
        let state = self.state.clone();
        let tok = &state.tok;
        let Some(c) = self.choices.get_mut(i) else {
            return Some(None);
        };
        match ev {
            Event::PromptLogprobs(v) => {
                c.prompt_lp = Some(v);
                Some(None)
            }
            Event::Token { id, logprob } => {
                if c.finish.is_some() {
                    return Some(None);
                }
                c.generated += 1;
                if let Some(lp) = logprob {
                    c.lp_pending.push(lp);
                }
                let piece = match c.decoder.push(tok, id) {
                    Ok(p) => p.unwrap_or_default(),
                    Err(e) => {
                        self.error = Some(format!("decoding token {id}: {e}"));
                        c.finish = Some("error");
                        state.cancel(c.id);
                        return Some(Some(c.piece(String::new())));
                    }
                };
                let (text, stopped) = c.stop.push(&piece);
                if stopped {
                    c.finish = Some("stop");
                    c.stopped_here.store(true, Ordering::SeqCst);
                    state.cancel(c.id);
                }
                Some(Some(c.piece(text)))
            }
            Event::Error(msg) => {
                self.error = Some(msg);
                if c.finish.is_none() {
                    c.finish = Some("error");
                }
                Some(None)
            }
            Event::Finished { reason, .. } => {
                c.ended = true;
                if c.finish.is_some() {
                    return Some(None);
                }
                let mut text = String::new();
                if let Ok(Some(rest)) = c.decoder.flush(tok) {
                    let (t, stopped) = c.stop.push(&rest);
                    text.push_str(&t);
                    if stopped {
                        c.finish = Some("stop");
                    }
                }
                text.push_str(&c.stop.finish());
                c.finish.get_or_insert(finish_name(reason));
                Some(Some(c.piece(text)))
            }
        }
    }

    /// Runs the call to its end (non-streaming).
    async fn collect(&mut self) {
        while let Some(p) = self.next().await {
            if let Some(p) = p {
                let c = &mut self.choices[p.choice];
                c.text.push_str(&p.text);
                c.lp_pending.splice(0..0, p.lps);
            }
        }
    }

    fn usage(&self) -> Value {
        let completion: usize = self.choices.iter().map(|c| c.generated).sum();
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }

    /// The whole answer (non-streaming).
    fn body(&mut self) -> Value {
        let tok = self.state.tok.clone();
        let mut choices = Vec::new();
        for c in self.choices.iter_mut() {
            let plp = c.prompt_lp.take();
            let lps = std::mem::take(&mut c.lp_pending);
            let logprobs = logprobs_value(self.kind, self.logprobs, &tok, c, plp.as_deref(), &lps);
            let text = match c.echo.take() {
                Some(e) => e + &c.text,
                None => c.text.clone(),
            };
            choices.push(match self.kind {
                Kind::Completion => json!({
                    "index": c.index, "text": text, "logprobs": logprobs,
                    "finish_reason": c.finish,
                }),
                Kind::Chat => json!({
                    "index": c.index,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": logprobs, "finish_reason": c.finish,
                }),
            });
        }
        json!({
            "id": self.id,
            "object": match self.kind { Kind::Completion => "text_completion", Kind::Chat => "chat.completion" },
            "created": now_secs(),
            "model": self.state.model,
            "choices": choices,
            "usage": self.usage(),
        })
    }

    /// One streamed chunk for a piece (None when it carries nothing yet).
    fn chunk(&mut self, p: Piece) -> Option<Value> {
        let tok = self.state.tok.clone();
        let (kind, k) = (self.kind, self.logprobs);
        let c = self.choices.get_mut(p.choice)?;
        let echo = c.echo.take();
        let plp = if echo.is_some() {
            c.prompt_lp.take()
        } else {
            None
        };
        let text = match &echo {
            Some(e) => format!("{e}{}", p.text),
            None => p.text,
        };
        if text.is_empty() && p.finish.is_none() && echo.is_none() {
            // Held back (a partial character or stop string): its logprobs go with the
            // next chunk.
            c.lp_pending.splice(0..0, p.lps);
            return None;
        }
        let mut lps = std::mem::take(&mut c.lp_pending);
        lps.extend(p.lps);
        let logprobs = logprobs_value(kind, k, &tok, c, plp.as_deref(), &lps);
        Some(match kind {
            Kind::Completion => json!({
                "id": self.id, "object": "text_completion", "created": now_secs(),
                "model": self.state.model,
                "choices": [{"index": c.index, "text": text, "logprobs": logprobs, "finish_reason": p.finish}],
            }),
            Kind::Chat => {
                let mut delta = Map::new();
                if !c.sent_role {
                    delta.insert("role".into(), json!("assistant"));
                    c.sent_role = true;
                }
                if !text.is_empty() || p.finish.is_none() {
                    delta.insert("content".into(), json!(text));
                }
                json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": now_secs(),
                    "model": self.state.model,
                    "choices": [{"index": c.index, "delta": delta, "logprobs": logprobs, "finish_reason": p.finish}],
                })
            }
        })
    }

    /// The usage chunk that ends a stream with `include_usage`.
    fn usage_chunk(&self) -> Value {
        json!({
            "id": self.id,
            "object": match self.kind { Kind::Completion => "text_completion", Kind::Chat => "chat.completion.chunk" },
            "created": now_secs(), "model": self.state.model,
            "choices": [], "usage": self.usage(),
        })
    }
}

impl Choice {
    fn piece(&mut self, text: String) -> Piece {
        Piece {
            choice: self.index,
            text,
            lps: std::mem::take(&mut self.lp_pending),
            finish: self.finish,
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A log-probability as JSON (the f32 widened exactly, so equal f32s print equal).
fn num(x: f32) -> Value {
    serde_json::Number::from_f64(f64::from(x)).map_or(Value::Null, Value::Number)
}

/// A token's text as `tokens` and `top_logprobs` keys show it.
fn token_text(tok: &crate::Tokenizer, id: u32) -> String {
    tok.decode_opts(&[id], false).unwrap_or_default()
}

/// `{token text: logprob}` of the `k` best, plus the token itself (as vLLM does), so
/// that the max of the map equals the token's logprob exactly when it was the argmax.
fn top_map(tok: &crate::Tokenizer, l: &TokenLogprob, k: usize) -> Value {
    let mut m = Map::new();
    let mut add = |id: u32, x: f32| {
        let key = token_text(tok, id);
        let keep = match m.get(&key).and_then(Value::as_f64) {
            Some(old) => f64::from(x) > old,
            None => true,
        };
        if keep {
            m.insert(key, num(x));
        }
    };
    for &(id, x) in l.top.iter().take(k) {
        add(id, x);
    }
    add(l.token, l.logprob);
    Value::Object(m)
}

/// The `logprobs` object of a choice's text: OpenAI's legacy form for completions
/// (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`, the prompt's first when
/// echoed), the chat form (`content: [{token, logprob, bytes, top_logprobs}]`).
fn logprobs_value(
    kind: Kind,
    k: Option<usize>,
    tok: &crate::Tokenizer,
    c: &mut Choice,
    prompt_lp: Option<&[Option<TokenLogprob>]>,
    lps: &[TokenLogprob],
) -> Value {
    let Some(k) = k else {
        return Value::Null;
    };
    match kind {
        Kind::Completion => {
            let mut tokens = Vec::new();
            let mut token_lp = Vec::new();
            let mut top = Vec::new();
            let mut offsets = Vec::new();
            let mut push = |id: u32, lp: Option<&TokenLogprob>, offset: &mut usize| {
                let s = token_text(tok, id);
                offsets.push(*offset);
                *offset += s.chars().count();
                tokens.push(Value::String(s));
                token_lp.push(lp.map_or(Value::Null, |l| num(l.logprob)));
                top.push(lp.map_or(Value::Null, |l| top_map(tok, l, k)));
            };
            if let Some(plp) = prompt_lp {
                for (i, &id) in c.prompt.iter().enumerate() {
                    push(id, plp.get(i).and_then(Option::as_ref), &mut c.offset);
                }
            }
            for l in lps {
                push(l.token, Some(l), &mut c.offset);
            }
            json!({"tokens": tokens, "token_logprobs": token_lp, "top_logprobs": top, "text_offset": offsets})
        }
        Kind::Chat => {
            let content: Vec<Value> = lps
                .iter()
                .map(|l| {
                    let s = token_text(tok, l.token);
                    let alts: Vec<Value> = l
                        .top
                        .iter()
                        .take(k)
                        .map(|&(id, x)| {
                            let t = token_text(tok, id);
                            json!({"token": t, "logprob": num(x), "bytes": t.as_bytes()})
                        })
                        .collect();
                    json!({"token": s, "logprob": num(l.logprob), "bytes": s.as_bytes(), "top_logprobs": alts})
                })
                .collect();
            json!({"content": content})
        }
    }
}

/// Answers a started call: whole, or as server-sent events.
async fn answer(mut run: Run, stream: bool, include_usage: bool) -> Response {
    if !stream {
        run.collect().await;
        if let Some(e) = run.error.take() {
            return ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e).into_response();
        }
        return (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            run.body().to_string(),
        )
            .into_response();
    }
    let ping = run.state.ping;
    let mut st = Streaming {
        run,
        out: VecDeque::new(),
        done: false,
        include_usage,
    };
    // Hold the response head until the first chunk exists (or the ping interval has
    // passed: then `: ping` comments keep the connection alive through a long
    // prefill). While the head is held, a client that goes away drops this future
    // and with it the engine requests; and an error before any text still gets a
    // proper status.
    let _ = tokio::time::timeout(ping, async {
        while st.out.is_empty() && !st.done {
            st.advance().await;
        }
    })
    .await;
    if st.done && st.out.len() == 2 {
        // Only the error event and `[DONE]`: answer with a status instead.
        if let Some(e) = st.run.error.take() {
            return ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e).into_response();
        }
    }
    let events = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.out.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(e), st));
            }
            if st.done {
                return None;
            }
            st.advance().await;
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(ping).text("ping"))
        .into_response()
}

/// A streamed call: events not yet sent.
struct Streaming {
    run: Run,
    out: VecDeque<SseEvent>,
    done: bool,
    include_usage: bool,
}

impl Streaming {
    /// Waits for the next engine event and queues what it produced.
    async fn advance(&mut self) {
        match self.run.next().await {
            Some(Some(p)) => {
                if let Some(v) = self.run.chunk(p) {
                    self.out.push_back(SseEvent::default().data(v.to_string()));
                }
            }
            Some(None) => {}
            None => {
                if let Some(e) = &self.run.error {
                    let err = ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e.clone());
                    self.out
                        .push_back(SseEvent::default().data(err.body().to_string()));
                } else if self.include_usage {
                    self.out
                        .push_back(SseEvent::default().data(self.run.usage_chunk().to_string()));
                }
                self.out.push_back(SseEvent::default().data("[DONE]"));
                self.done = true;
            }
        }
    }
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match completions_inner(state, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn completions_inner(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let m = read_json(&state, &headers, body).await?;
    let req = validate::completion(&m)?;
    check_model(&state, &req.model)?;
    let mut prompts = Vec::new();
    for (i, p) in req.prompts.iter().enumerate() {
        let param = if req.prompts.len() > 1 {
            format!("prompt[{i}]")
        } else {
            "prompt".into()
        };
        let (ids, text) = match p {
            Prompt::Text(t) => (
                state
                    .tok
                    .encode(t, true)
                    .map_err(|e| ApiError::field(&param, e.to_string()))?,
                t.clone(),
            ),
            Prompt::Ids(ids) => {
                let text = state
                    .tok
                    .decode_opts(ids, false)
                    .map_err(|e| ApiError::field(&param, format!("`{param}`: {e}")))?;
                (ids.clone(), text)
            }
        };
        if ids.is_empty() {
            return Err(ApiError::field(
                &param,
                format!("`{param}` encodes to no tokens"),
            ));
        }
        prompts.push((Arc::new(ids), Some(text)));
    }
    let p = req.params;
    let run = Run::start(
        state,
        Kind::Completion,
        prompts,
        &p,
        Some(COMPLETION_DEFAULT_MAX_TOKENS),
    )?;
    Ok(answer(run, p.stream, p.include_usage).await)
}

/// `POST /v1/chat/completions`.
pub async fn chat(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    match chat_inner(state, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_inner(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let m = read_json(&state, &headers, body).await?;
    let req = validate::chat(&m)?;
    check_model(&state, &req.model)?;
    let text = state
        .tok
        .apply_chat_template(&req.messages, true)
        .map_err(|e| ApiError::field("messages", e.to_string()))?;
    let ids = state
        .tok
        .encode(&text, false)
        .map_err(|e| ApiError::field("messages", e.to_string()))?;
    if ids.is_empty() {
        return Err(ApiError::field(
            "messages",
            "the conversation encodes to no tokens",
        ));
    }
    let p = req.params;
    let run = Run::start(state, Kind::Chat, vec![(Arc::new(ids), None)], &p, None)?;
    Ok(answer(run, p.stream, p.include_usage).await)
}
