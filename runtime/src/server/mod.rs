//! `./OUT serve`: the OpenAI-compatible HTTP server of the emitted executable, on
//! axum + tokio, in front of the engine (continuous batching over the paged KV
//! cache). Endpoints: `/v1/completions`, `/v1/chat/completions` (streaming with
//! server-sent events), `/v1/models`, `/v1/embeddings` (executables of encoder models,
//! which serve it instead of the completion routes), `/health`, `/metrics` (vLLM's
//! metric names), `/tokenize`, `/detokenize`, `/tokenizer_info`.
//!
//! - [`validate`]: the typed, checked request (every bad field is a 400 naming it).
//! - [`complete`]: choices on the engine, text decoding, stop strings, SSE.
//! - [`stop`]: stop strings matched across streamed pieces.
//! - [`metrics`]: Prometheus text.
//! - [`error`]: the OpenAI error envelope.
//!
//! The server binds loopback by default; an API key (`--api-key` or `LLMC_API_KEY`)
//! guards everything but `/health` and CORS preflights, compared in constant time.
//! SIGTERM or Ctrl-C stops accepting connections, lets running requests finish, then
//! stops the engine.

pub mod complete;
pub mod embeddings;
pub mod error;
pub mod metrics;
pub mod stop;
pub mod validate;

use crate::abi::KernelFn;
use crate::engine::step::CompiledStep;
use crate::engine::{EngineConfig, EngineHandle};
use crate::plan::Plan;
use crate::Tokenizer;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// `serve`'s settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeOptions {
    /// Address to bind (`--host`, loopback by default).
    pub host: String,
    /// Port (`--port`; 0 picks a free one).
    pub port: u16,
    /// Required bearer key (`--api-key`, or env `LLMC_API_KEY`).
    pub api_key: Option<String>,
    /// `Access-Control-Allow-Origin` to answer with (`--cors-origin`).
    pub cors_origin: Option<String>,
    /// Largest request body (`--max-body-bytes`).
    pub max_body_bytes: usize,
    /// The model id clients name (`--model-name`; default: the model's own name).
    pub model_name: Option<String>,
    /// Most requests waiting before 429 (`--max-waiting`; default: the engine's).
    pub max_waiting: Option<usize>,
    /// Reuse the KV of identical prompt prefixes (`--no-prefix-cache` turns it off).
    pub prefix_cache: bool,
    /// Interval of `: ping` comments on quiet streams.
    pub ping: Duration,
    /// Worker threads of the HTTP runtime.
    pub http_threads: usize,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            cors_origin: None,
            max_body_bytes: 4 << 20,
            model_name: None,
            max_waiting: None,
            prefix_cache: true,
            ping: Duration::from_secs(2),
            http_threads: 2,
        }
    }
}

/// `serve`'s usage text (`--kv-cache-mb`, `--max-seqs` and `--max-batch-tokens` are
/// the engine flags every engine-backed command takes, see `exe::take_engine_flags`).
pub const USAGE: &str = "serve [--host 127.0.0.1] [--port 8080] [--api-key KEY] [--max-seqs N]
        [--max-batch-tokens N] [--kv-cache-mb N | --max-context N] [--max-waiting N] [--no-prefix-cache]
        [--cors-origin ORIGIN] [--max-body-bytes N] [--model-name NAME] [--threads N]";

impl ServeOptions {
    /// Parses `serve`'s own arguments (the API key also from `LLMC_API_KEY`). Returns
    /// the options and `--threads` (the kernel thread count), if given.
    pub fn parse(args: &[String]) -> Result<(ServeOptions, Option<usize>), String> {
        let mut o = ServeOptions {
            api_key: std::env::var("LLMC_API_KEY").ok().filter(|k| !k.is_empty()),
            ..ServeOptions::default()
        };
        let mut threads = None;
        let mut it = args.iter();
        fn val<'a>(flag: &str, v: Option<&'a String>) -> Result<&'a String, String> {
            v.ok_or_else(|| format!("{flag} needs a value"))
        }
        fn num<T>(flag: &str, v: Option<&String>, min: T) -> Result<T, String>
        where
            T: std::str::FromStr + PartialOrd + std::fmt::Display,
        {
            let v = val(flag, v)?;
            let x: T = v
                .parse()
                .map_err(|_| format!("{flag} {v}: not a valid number"))?;
            if x < min {
                return Err(format!("{flag} {v}: must be at least {min}"));
            }
            Ok(x)
        }
        while let Some(a) = it.next() {
            match a.as_str() {
                "--host" => o.host = val(a, it.next())?.clone(),
                "--port" => o.port = num(a, it.next(), 0)?,
                "--api-key" => {
                    o.api_key = Some(val(a, it.next())?.clone()).filter(|k| !k.is_empty())
                }
                "--cors-origin" => o.cors_origin = Some(val(a, it.next())?.clone()),
                "--max-body-bytes" => o.max_body_bytes = num(a, it.next(), 1024)?,
                "--model-name" => o.model_name = Some(val(a, it.next())?.clone()),
                "--max-waiting" => o.max_waiting = Some(num(a, it.next(), 1)?),
                "--no-prefix-cache" => o.prefix_cache = false,
                "--threads" => threads = Some(num(a, it.next(), 1)?),
                other => return Err(format!("unknown argument `{other}`\nusage: {USAGE}")),
            }
        }
        Ok((o, threads))
    }
}

/// What a server runs requests on.
pub enum Backend {
    /// A language model on the engine: completions and chat.
    Llm(EngineHandle),
    /// A sentence-embedding model: `/v1/embeddings`.
    Embed(Arc<embeddings::Embedder>),
}

/// What every handler shares.
pub struct AppState {
    backend: Backend,
    tok: Arc<Tokenizer>,
    model: String,
    created: u64,
    api_key: Option<String>,
    cors_origin: Option<HeaderValue>,
    max_body: usize,
    metrics: metrics::Metrics,
    ping: Duration,
}

impl AppState {
    /// The engine, or the 400 an embedding model's server answers completions with.
    fn engine(&self) -> Result<&EngineHandle, ApiError> {
        match &self.backend {
            Backend::Llm(e) => Ok(e),
            Backend::Embed(_) => Err(ApiError::status(
                StatusCode::BAD_REQUEST,
                format!(
                    "`{}` is a sentence-embedding model: it serves /v1/embeddings, not \
                     completions",
                    self.model
                ),
            )
            .code("model_not_supported")),
        }
    }

    /// Cancels an engine request (nothing on an embedding server).
    fn cancel(&self, id: crate::engine::RequestId) {
        if let Backend::Llm(e) = &self.backend {
            e.cancel(id);
        }
    }

    /// The longest sequence a request may have, in tokens.
    fn context_length(&self) -> usize {
        match &self.backend {
            Backend::Llm(e) => e.facts().context_length,
            Backend::Embed(m) => m.context_length,
        }
    }
}

/// Byte strings equal, in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Auth, CORS and error counting around every route.
async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS;
    let mut resp = if preflight {
        if st.cors_origin.is_some() {
            let mut r = StatusCode::NO_CONTENT.into_response();
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            r
        } else {
            ApiError::status(
                StatusCode::NOT_FOUND,
                "CORS is not enabled (start with --cors-origin)",
            )
            .into_response()
        }
    } else if req.uri().path() != "/health" && !authorized(&st, req.headers()) {
        let mut r = ApiError::status(
            StatusCode::UNAUTHORIZED,
            "a valid API key is required: send `Authorization: Bearer KEY`",
        )
        .code("invalid_api_key")
        .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    } else {
        next.run(req).await
    };
    if let Some(o) = &st.cors_origin {
        resp.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
    }
    if resp.status().as_u16() >= 400 {
        st.metrics.http_error(resp.status().as_u16());
    }
    resp
}

fn authorized(st: &AppState, h: &HeaderMap) -> bool {
    let Some(key) = &st.api_key else {
        return true;
    };
    let given = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()));
    given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes()))
}

/// Reads a JSON object body within `--max-body-bytes` (413 beyond it).
pub(crate) async fn read_json(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Map<String, Value>, ApiError> {
    let too_big = |n: Option<u64>| {
        ApiError::status(
            StatusCode::PAYLOAD_TOO_LARGE,
            match n {
                Some(n) => format!(
                    "the request body has {n} bytes; the limit is {} (--max-body-bytes)",
                    st.max_body
                ),
                None => format!(
                    "the request body exceeds {} bytes (--max-body-bytes)",
                    st.max_body
                ),
            },
        )
        .code("body_too_large")
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > st.max_body as u64) {
        return Err(too_big(Some(n)));
    }
    let bytes = axum::body::to_bytes(body, st.max_body).await.map_err(|e| {
        let limit = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .any(|e| e.to_string().contains("length limit"));
        if limit {
            too_big(None)
        } else {
            ApiError::status(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            )
        }
    })?;
    validate::parse_object(&bytes)
}

fn json_response(v: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn model_card(st: &AppState) -> Value {
    json!({
        "id": st.model, "object": "model", "created": st.created, "owned_by": "llmc",
        "root": st.model, "parent": null,
        "max_model_len": st.context_length(),
    })
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    json_response(json!({"object": "list", "data": [model_card(&st)]}))
}

async fn model(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == st.model {
        json_response(model_card(&st))
    } else {
        ApiError::status(
            StatusCode::NOT_FOUND,
            format!(
                "the model `{id}` does not exist; this server serves `{}`",
                st.model
            ),
        )
        .code("model_not_found")
        .into_response()
    }
}

async fn health() -> Response {
    json_response(json!({"status": "ok"}))
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let stats = match &st.backend {
        Backend::Llm(e) => e.stats(),
        Backend::Embed(_) => crate::engine::Stats::default(),
    };
    let text = st.metrics.render(&stats, &st.model);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn tokenize(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let run = async {
        let m = read_json(&st, &headers, body).await?;
        let add_special = match m.get("add_special_tokens") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::field(
                    "add_special_tokens",
                    "`add_special_tokens` must be a boolean",
                ))
            }
        };
        let ids = if let Some(msgs) = m.get("messages").filter(|v| !v.is_null()) {
            let mut o = Map::new();
            o.insert("messages".into(), msgs.clone());
            let req = validate::chat(&o)?;
            let text = st
                .tok
                .apply_chat_template(&req.messages, true)
                .map_err(|e| ApiError::field("messages", e.to_string()))?;
            st.tok.encode(&text, false)
        } else {
            match m.get("prompt") {
                Some(Value::String(s)) => st.tok.encode(s, add_special),
                _ => {
                    return Err(ApiError::field(
                        "prompt",
                        "`prompt` (a string) or `messages` is required",
                    ))
                }
            }
        }
        .map_err(|e| ApiError::field("prompt", e.to_string()))?;
        Ok(json_response(json!({
            "count": ids.len(), "max_model_len": st.context_length(), "tokens": ids,
        })))
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

async fn detokenize(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let run = async {
        let m = read_json(&st, &headers, body).await?;
        let ids: Vec<u32> = match m.get("tokens") {
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_u64()
                        .filter(|&x| x <= u32::MAX as u64)
                        .map(|x| x as u32)
                        .ok_or_else(|| {
                            ApiError::field(
                                "tokens",
                                format!("`tokens` item {i} must be a token id"),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(ApiError::field(
                    "tokens",
                    "`tokens` (a list of token ids) is required",
                ))
            }
        };
        let text = st
            .tok
            .decode(&ids)
            .map_err(|e| ApiError::field("tokens", e.to_string()))?;
        Ok(json_response(json!({"prompt": text})))
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

async fn tokenizer_info(State(st): State<Arc<AppState>>) -> Response {
    let t = &st.tok;
    let name = |id: Option<u32>| id.and_then(|i| t.id_to_token(i));
    json_response(json!({
        "vocab_size": t.vocab_size(),
        "bos_token": name(t.bos_id()), "bos_token_id": t.bos_id(),
        "eos_token": name(t.eos_ids().first().copied()), "eos_token_ids": t.eos_ids(),
        "chat_template": t.chat_template(),
        "model_max_length": st.context_length(),
    }))
}

async fn not_found(req: Request) -> Response {
    ApiError::status(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
    .code("not_found")
    .into_response()
}

/// The router over a state.
fn router(st: Arc<AppState>) -> Router {
    let method_not_allowed = || async {
        ApiError::status(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route",
        )
        .into_response()
    };
    Router::new()
        .route("/v1/completions", post(complete::completions))
        .route("/v1/chat/completions", post(complete::chat))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/tokenizer_info", get(tokenizer_info))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(st.clone(), guard))
        .with_state(st)
}

/// A server running on its own thread (for tests and embedding); [`serve`] is the
/// command's blocking form.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Running {
    /// Drains (running requests finish) and stops the server; the engine keeps running.
    pub fn stop(mut self) -> Result<(), String> {
        self.halt()
    }

    fn halt(&mut self) -> Result<(), String> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| "the server thread panicked".to_string())?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

fn state(
    backend: Backend,
    tokenizer: Tokenizer,
    opts: &ServeOptions,
    default_name: &str,
) -> Result<Arc<AppState>, String> {
    let cors_origin = opts
        .cors_origin
        .as_deref()
        .map(|o| {
            HeaderValue::from_str(o)
                .map_err(|_| format!("--cors-origin {o:?}: not a valid header value"))
        })
        .transpose()?;
    Ok(Arc::new(AppState {
        backend,
        tok: Arc::new(tokenizer),
        model: opts
            .model_name
            .clone()
            .unwrap_or_else(|| default_name.to_string()),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        api_key: opts.api_key.clone(),
        cors_origin,
        max_body: opts.max_body_bytes,
        metrics: metrics::Metrics::default(),
        ping: opts.ping,
    }))
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("llmc-http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the HTTP runtime: {e}"))
}

async fn bind(opts: &ServeOptions) -> Result<tokio::net::TcpListener, String> {
    let addr = format!("{}:{}", opts.host, opts.port);
    tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (--host/--port): {e}"))
}

/// Starts a server of a language model on a thread of its own; returns once it
/// listens.
pub fn start(
    engine: EngineHandle,
    tokenizer: Tokenizer,
    opts: ServeOptions,
    model_name: &str,
) -> Result<Running, String> {
    start_backend(Backend::Llm(engine), tokenizer, opts, model_name)
}

/// Starts a server on a thread of its own; returns once it listens.
pub fn start_backend(
    backend: Backend,
    tokenizer: Tokenizer,
    opts: ServeOptions,
    model_name: &str,
) -> Result<Running, String> {
    let st = state(backend, tokenizer, &opts, model_name)?;
    let (atx, arx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    let (stx, srx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("llmc-server".into())
        .spawn(move || {
            let rt = runtime(opts.http_threads)?;
            rt.block_on(async move {
                let l = match bind(&opts).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = atx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let _ = atx.send(l.local_addr().map_err(|e| e.to_string()));
                axum::serve(l, router(st))
                    .with_graceful_shutdown(async move {
                        let _ = srx.await;
                    })
                    .await
                    .map_err(|e| format!("the server failed: {e}"))
            })
        })
        .map_err(|e| format!("cannot start the server thread: {e}"))?;
    let addr = arx
        .recv()
        .map_err(|_| "the server thread stopped before listening".to_string())??;
    Ok(Running {
        addr,
        stop: Some(stx),
        thread: Some(thread),
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("serve: shutting down: finishing running requests");
}

/// Serves until SIGTERM or Ctrl-C, then drains running requests and stops the engine.
pub fn serve(
    backend: Backend,
    tokenizer: Tokenizer,
    opts: ServeOptions,
    model_name: &str,
) -> Result<(), String> {
    let engine = match &backend {
        Backend::Llm(e) => Some(e.clone()),
        Backend::Embed(_) => None,
    };
    let st = state(backend, tokenizer, &opts, model_name)?;
    let rt = runtime(opts.http_threads)?;
    let res = rt.block_on(async {
        let l = bind(&opts).await?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        let key = if st.api_key.is_some() {
            "API key required"
        } else {
            "no API key"
        };
        match &st.backend {
            Backend::Llm(e) => {
                let f = e.facts();
                eprintln!(
                    "serve: model `{}` on http://{addr}/v1 ({key}; KV cache {} tokens in {} blocks of {}, {:.0} MiB; context {})",
                    st.model,
                    f.kv_capacity_tokens(),
                    f.kv_blocks,
                    f.block_size,
                    (f.kv_blocks * f.block_size * f.kv_bytes_per_token) as f64
                        / (1u64 << 20) as f64,
                    f.context_length,
                );
            }
            Backend::Embed(m) => eprintln!(
                "serve: embedding model `{}` on http://{addr}/v1 ({key}; /v1/embeddings, {} tokens per input)",
                st.model, m.context_length
            ),
        }
        axum::serve(l, router(st))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|e| format!("the server failed: {e}"))
    });
    if let Some(e) = engine {
        e.shutdown();
    }
    eprintln!("serve: stopped");
    res
}

/// `./OUT serve ARGS`: starts the engine on the executable's serving-form model and
/// serves it until SIGTERM/Ctrl-C. `engine` holds `--kv-cache-mb` and the engine
/// limits (`exe::take_engine_flags` took them from `args`); `None` when the plan has
/// no serving form.
pub fn run_command(
    args: &[String],
    plan: Plan,
    data: &'static [u8],
    kernels: Vec<(String, KernelFn)>,
    engine: Option<(usize, EngineConfig)>,
) -> Result<(), String> {
    let (opts, threads) = ServeOptions::parse(args)?;
    if let Some(n) = threads {
        crate::pool::set_num_threads(n);
    }
    let name = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "llmc".into());
    if let Some(enc) = plan.encoder.clone() {
        let tok = crate::embed::tokenizer(&enc)?;
        let embedder = embeddings::Embedder::start(plan, data, kernels, enc)?;
        return serve(Backend::Embed(Arc::new(embedder)), tok, opts, &name);
    }
    let llm = plan.llm.clone().ok_or(
        "serve needs a language model or a sentence-embedding model; this executable holds \
         a plain graph: use `run --input NAME=FILE.npy`",
    )?;
    let (mb, mut cfg) = engine
        .ok_or("this executable was built without the serving form (rebuild it with this llmc)")?;
    if let Some(w) = opts.max_waiting {
        cfg.max_waiting = w;
    }
    cfg.prefix_cache &= opts.prefix_cache;
    let tok = crate::generate::tokenizer(&llm)?;
    let engine = CompiledStep::start_engine(plan, data, kernels, mb, cfg)?;
    serve(Backend::Llm(engine), tok, opts, &name)
}
