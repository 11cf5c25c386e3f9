//! The engine: how a compiled LLM runs many requests at once. One engine thread owns
//! the model's step function and the paged KV pool; callers talk to it through an
//! [`EngineHandle`] (submit a request and receive its events through a sink, cancel,
//! read stats). Each step the scheduler picks a flat batch of tokens from many
//! sequences (decode rows and chunked-prefill rows under a token budget), the step
//! function runs them, and the engine samples, streams and finishes requests.
//!
//! - [`blocks`]: the block manager (free list, reference counts, copy-on-write, prefix
//!   cache by hash chains of full blocks, LRU eviction of unreferenced cached blocks).
//! - [`scheduler`]: continuous batching with chunked prefill and preemption by
//!   recompute.
//! - [`step`]: the compiled serving-form step function bound to the KV pool.
//!
//! The server, `generate` and `bench` use only this module's API; it never depends on
//! the compiler crates.

pub mod blocks;
pub mod scheduler;
pub mod step;

mod core;

pub use self::core::{Engine, EngineHandle};
use crate::sampler::SamplerConfig;
use std::time::Duration;

/// A request's id, unique within one engine.
pub type RequestId = u64;

/// What to generate for one prompt.
#[derive(Clone, Debug)]
pub struct Request {
    /// Prompt token ids (the caller adds BOS and applies chat templates).
    pub prompt: Vec<u32>,
    /// Sampling settings (seeded per request; greedy at temperature 0).
    pub sampling: SamplerConfig,
    /// Stop after this many generated tokens (0: only prompt logprobs are computed).
    pub max_tokens: usize,
    /// Token ids that end generation besides the model's end-of-sequence ids.
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past the model's end-of-sequence ids.
    pub ignore_eos: bool,
    /// Log-probabilities of each sampled token, with this many top alternatives.
    pub logprobs: Option<usize>,
    /// Log-probabilities of each prompt token (given the tokens before it), with this
    /// many top alternatives. Such a request does not use the prefix cache.
    pub prompt_logprobs: Option<usize>,
    /// Larger runs first among waiting requests; equal priorities are first come,
    /// first served.
    pub priority: i32,
}

impl Request {
    /// A greedy request for `max_tokens` tokens after `prompt`.
    pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Request {
        Request {
            prompt,
            sampling: SamplerConfig::default(),
            max_tokens,
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            prompt_logprobs: None,
            priority: 0,
        }
    }
}

/// One token's log-probability and the most likely alternatives at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub token: u32,
    /// Its log-probability (log-softmax of the raw logits, before sampling filters).
    pub logprob: f32,
    /// The top alternatives, most likely first (ties to the lower id).
    pub top: Vec<(u32, f32)>,
}

/// Why a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// An end-of-sequence or stop token was sampled (it is not emitted as a token).
    Stop,
    /// `max_tokens` tokens were generated.
    Length,
    /// The sequence reached the model's context length.
    ContextLength,
    /// Cancelled by the caller (or its sink went away).
    Cancelled,
    /// The engine failed (see the preceding [`Event::Error`]).
    Error,
}

impl FinishReason {
    /// The OpenAI-style name: `stop`, `length`, `cancelled`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length | FinishReason::ContextLength => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
        }
    }
}

/// Timings of a finished request.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// From submission to first being scheduled.
    pub queued: Duration,
    /// From submission to the first generated token (None when none was generated).
    pub first_token: Option<Duration>,
    /// From submission to the end.
    pub total: Duration,
}

/// What a request's sink receives, in order: optionally `PromptLogprobs` once, then
/// `Token`s, then exactly one `Finished` (after an `Error` when the engine failed).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Log-probabilities of the prompt tokens; the first entry is `None` (no context).
    PromptLogprobs(Vec<Option<TokenLogprob>>),
    /// A generated token.
    Token {
        /// The token id.
        id: u32,
        /// Its log-probability, when the request asked for logprobs.
        logprob: Option<TokenLogprob>,
    },
    /// The engine failed on this request; `Finished { reason: Error }` follows.
    Error(String),
    /// The request ended.
    Finished {
        /// Why.
        reason: FinishReason,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens.
        generated_tokens: usize,
        /// Prompt tokens whose KV came from the prefix cache.
        cached_tokens: usize,
        /// Timings.
        timings: Timings,
    },
}

/// Receives a request's events on the engine thread; returns `false` when nobody
/// listens any more, which cancels the request. It must not block.
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// Why a request was refused at submission.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// The prompt is empty.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// A prompt token id is outside the vocabulary.
    #[error("prompt token {index} is id {id}, outside the vocabulary of {vocab}")]
    BadToken {
        /// Position in the prompt.
        index: usize,
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// Prompt plus `max_tokens` exceed the model's context.
    #[error(
        "the prompt has {prompt} tokens and max_tokens is {max_tokens}: {} exceeds the \
         context length {context}", prompt + max_tokens
    )]
    TooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Requested new tokens.
        max_tokens: usize,
        /// The model's context length.
        context: usize,
    },
    /// The prompt alone needs more KV blocks than the whole pool holds.
    #[error(
        "the request needs {needed} tokens of KV cache, the pool holds {capacity} \
         (raise --kv-cache-mb)"
    )]
    ExceedsCache {
        /// Tokens needed.
        needed: usize,
        /// Tokens the pool holds.
        capacity: usize,
    },
    /// A sampling setting is out of range.
    #[error("{0}")]
    Sampling(String),
    /// Too many requests are waiting.
    #[error("the queue is full ({waiting} requests waiting); retry later")]
    QueueFull {
        /// Waiting requests.
        waiting: usize,
    },
    /// The engine is shutting down or has stopped.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// The engine's limits, chosen at start.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// Most sequences in one step (`--max-seqs`).
    pub max_seqs: usize,
    /// Most tokens in one step (`--max-batch-tokens`): decode rows plus prefill chunks.
    pub max_batch_tokens: usize,
    /// KV blocks in the pool (per layer); see [`EngineConfig::blocks_for_mb`].
    pub kv_blocks: usize,
    /// Most requests waiting before submissions are refused with `QueueFull`.
    pub max_waiting: usize,
    /// Reuse the KV blocks of identical prompt prefixes.
    pub prefix_cache: bool,
    /// The longest sequence (prompt + generated tokens) one request may have
    /// (`--max-context`); the model's context length when `None` or larger.
    pub max_context: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            max_seqs: 64,
            max_batch_tokens: 512,
            kv_blocks: 1024,
            max_waiting: 1024,
            prefix_cache: true,
            max_context: None,
        }
    }
}

/// A snapshot of the engine's counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Sequences being stepped.
    pub running: usize,
    /// Requests waiting to start (or to resume after preemption).
    pub waiting: usize,
    /// KV blocks in the pool.
    pub kv_blocks_total: usize,
    /// KV blocks held by sequences.
    pub kv_blocks_used: usize,
    /// Unreferenced blocks kept for the prefix cache (evictable).
    pub kv_blocks_cached: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Full prompt blocks looked up in the prefix cache.
    pub prefix_queries: u64,
    /// Of those, found.
    pub prefix_hits: u64,
    /// Sequences preempted (their KV freed, to be recomputed).
    pub preemptions: u64,
    /// Prompt tokens of finished or running requests.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub generation_tokens: u64,
    /// Finished requests by reason ([`FinishReason::as_str`] of each, counted apart for
    /// `ContextLength`).
    pub finished: Vec<(FinishReason, u64)>,
    /// Steps run.
    pub steps: u64,
    /// Tokens run through the step function (prefill and decode rows).
    pub step_tokens: u64,
}

/// Facts about the model the engine serves, fixed at start.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFacts {
    /// Vocabulary size (logits per row).
    pub vocab: usize,
    /// Context length (positions).
    pub context_length: usize,
    /// End-of-sequence ids.
    pub eos: Vec<u32>,
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV blocks in the pool.
    pub kv_blocks: usize,
    /// Bytes of KV cache per token (all layers, keys and values).
    pub kv_bytes_per_token: usize,
}

impl ModelFacts {
    /// Tokens the KV pool holds.
    pub fn kv_capacity_tokens(&self) -> usize {
        self.kv_blocks * self.block_size
    }
}
