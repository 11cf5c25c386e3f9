//! Model importers: each reads a model file format and builds an `llmc_ir::Module`.

pub mod error;
pub mod gguf;
pub mod llm;
pub mod onnx;

pub use error::FrontendError;
