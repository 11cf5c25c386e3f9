//! The frontend's error type. Every message names the file and the key, tensor or
//! field that is wrong, because the input is a user's model file.

use std::path::PathBuf;

/// An import error.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// The file could not be opened or mapped.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file's structure is invalid (bad magic, truncated, offsets outside it, ...).
    #[error("{file}: {msg}")]
    Format {
        /// The file.
        file: String,
        /// What is wrong, and where.
        msg: String,
    },
    /// A metadata key is missing.
    #[error("{file}: missing metadata key `{key}`")]
    MissingKey {
        /// The file.
        file: String,
        /// The key.
        key: String,
    },
    /// A metadata value has the wrong type or an unusable value.
    #[error("{file}: metadata key `{key}`: {msg}")]
    BadValue {
        /// The file.
        file: String,
        /// The key.
        key: String,
        /// What is wrong.
        msg: String,
    },
    /// A tensor the model needs is absent.
    #[error("{file}: missing tensor `{name}`")]
    MissingTensor {
        /// The file (or folder) the tensors come from.
        file: String,
        /// The tensor's name.
        name: String,
    },
    /// A tensor is present but unusable (shape, dtype, bytes).
    #[error("{file}: tensor `{name}`: {msg}")]
    BadTensor {
        /// The file.
        file: String,
        /// The tensor's name.
        name: String,
        /// What is wrong.
        msg: String,
    },
    /// The model's architecture is not one this frontend imports.
    #[error("{file}: unknown architecture `{arch}` (supported: {supported})")]
    UnknownArchitecture {
        /// The file.
        file: String,
        /// The architecture the file names.
        arch: String,
        /// What is supported.
        supported: String,
    },
    /// The model uses a feature llmc does not support yet.
    #[error("{file}: unsupported: {msg}")]
    Unsupported {
        /// The file.
        file: String,
        /// What is unsupported.
        msg: String,
    },
    /// Building the graph failed (a shape rule rejected a node).
    #[error("{file}: building the graph at {at}: {source}")]
    Build {
        /// The file.
        file: String,
        /// Where in the model (e.g. `layer 3 attention`).
        at: String,
        /// The shape-rule error.
        source: llmc_ir::InferError,
    },
    /// An ONNX node could not be imported.
    #[error("{0}")]
    OnnxNode(Box<OnnxNodeError>),
    /// The tokenizer could not be built.
    #[error("{file}: tokenizer: {source}")]
    Tokenizer {
        /// The file.
        file: String,
        /// The tokenizer error.
        source: llmc_runtime::TokenizerError,
    },
    /// The path is not a model llmc recognises.
    #[error("{}: {msg}", path.display())]
    UnknownKind {
        /// The path.
        path: PathBuf,
        /// What was expected.
        msg: String,
    },
    /// The kind of model is recognised but its importer is not available yet.
    #[error("{}: {what} is not available yet", path.display())]
    NotAvailable {
        /// The path.
        path: PathBuf,
        /// The missing importer.
        what: &'static str,
    },
    /// An llmc text file does not parse (the message is `FILE:LINE:COL: ...`).
    #[error(transparent)]
    Text(#[from] llmc_ir::text::ParseError),
}

/// Where an ONNX node is and what is wrong with it (boxed in [`FrontendError`] to keep
/// the error small).
#[derive(Debug, thiserror::Error)]
#[error("{file}: node {index} `{name}` ({op}, domain {domain}, opset {opset}): {msg}")]
pub struct OnnxNodeError {
    /// The model file.
    pub file: String,
    /// The node's position in the graph (`3`, or `5/then/2` inside a subgraph).
    pub index: String,
    /// The node's name (may be empty).
    pub name: String,
    /// The op type.
    pub op: String,
    /// The op's domain (`ai.onnx` for the default one).
    pub domain: String,
    /// The opset version of that domain the model imports (0 when none).
    pub opset: i64,
    /// What is wrong.
    pub msg: String,
}
