//! What the emitted executable runs: the ABI shared with generated code, the thread
//! pool for generated parallel loops, the plan and the graph walk over it, the payload
//! appended to the executable, `.npy` I/O, the executable's command line (with
//! `embed` for encoder models), the tokenizer and sampler, and the engine that runs many
//! requests over a paged KV cache (`engine`), on the CPU or, for a `--target cuda`
//! build, on the GPU (`cuda`). Never depends on the compiler crates.

pub mod abi;
pub mod bench;
pub mod cpu;
pub mod cuda;
pub mod embed;
pub mod engine;
pub mod eval;
pub mod exe;
pub mod exec;
pub mod generate;
pub mod npy;
pub mod payload;
pub mod plan;
pub mod pool;
pub mod sampler;
pub mod server;
pub mod tokenizer;

pub use tokenizer::{ChatMessage, StreamDecoder, Tokenizer, TokenizerError, VocabSpec};
