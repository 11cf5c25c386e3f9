//! What the emitted executable runs: tokenizer, sampler, KV cache, thread pool, the
//! executable's CLI and server. Never depends on the compiler crates.

pub mod sampler;
pub mod tokenizer;

pub use tokenizer::{ChatMessage, StreamDecoder, Tokenizer, TokenizerError, VocabSpec};
