//! The frontend's error type. Every importer reports a bad model the same way: the file
//! it was reading and what in it is wrong (key, tensor, node), so the variants stay
//! generic and each importer writes the specifics into the message.

use std::path::Path;

/// An error while importing a model.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// The model file cannot be read.
    #[error("{file}: {source}")]
    Io {
        /// The file (or folder) being read.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The model is malformed or inconsistent.
    #[error("{file}: {msg}")]
    Invalid {
        /// The file the fault is in.
        file: String,
        /// What is wrong, naming the key, tensor or node.
        msg: String,
    },
    /// The model is well formed but uses something llmc does not support.
    #[error("{file}: unsupported: {msg}")]
    Unsupported {
        /// The file that asks for it.
        file: String,
        /// What is unsupported, naming the key, tensor or node.
        msg: String,
    },
    /// Building the graph failed (a shape rule rejected a node).
    #[error("{file}: building the graph: {source}")]
    Graph {
        /// The model being built.
        file: String,
        /// The rejected node.
        source: llmc_ir::InferError,
    },
}

impl FrontendError {
    /// An [`FrontendError::Invalid`] for `file`.
    pub fn invalid(file: impl AsRef<Path>, msg: impl Into<String>) -> FrontendError {
        FrontendError::Invalid {
            file: file.as_ref().display().to_string(),
            msg: msg.into(),
        }
    }

    /// An [`FrontendError::Unsupported`] for `file`.
    pub fn unsupported(file: impl AsRef<Path>, msg: impl Into<String>) -> FrontendError {
        FrontendError::Unsupported {
            file: file.as_ref().display().to_string(),
            msg: msg.into(),
        }
    }

    /// An [`FrontendError::Io`] for `file`.
    pub fn io(file: impl AsRef<Path>, source: std::io::Error) -> FrontendError {
        FrontendError::Io {
            file: file.as_ref().display().to_string(),
            source,
        }
    }
}
