//! ONNX import: a `ModelProto` (read with the `onnx-protobuf` crate, whose schema
//! stops at IR version 10; newer fields arrive as unknown fields and are ignored)
//! becomes an `llmc_ir::Module`.
//!
//! - [`data`]: `TensorProto` decoding (raw, typed fields, memory-mapped external data).
//! - [`import`]: the graph walk, constant and shape folding, and the [`NodeCtx`]
//!   converters work through.
//! - [`registry`]: (domain, op type) to converter.
//! - [`decoder`]: a decoder export, with a KV cache or without (Optimum's layouts), rewritten into
//!   the decoder contract GGUF/HF models are built into, for `llmc build`.
//! - One module per op family, each with a `register` function: [`math`], [`logic`],
//!   [`reduce`], [`tensor`], [`shape`], [`linalg`], [`nn`], [`attention`], [`loss`], [`cnn`], [`quant`], [`control`].

pub mod attention;
pub mod cnn;
pub mod control;
pub mod data;
pub mod decoder;
pub mod encoder;
pub mod import;
pub mod linalg;
pub mod logic;
pub mod loss;
pub mod math;
pub mod nn;
pub mod quant;
pub mod reduce;
pub mod registry;
pub mod shape;
pub mod tensor;

pub use import::{ImportOptions, NodeCtx, MAX_OPSET, MIN_OPSET, V};
pub use registry::Registry;

use crate::FrontendError;
use llmc_ir::{Module, Tensor};
use onnx_protobuf::ModelProto;
use protobuf::Message;
use std::path::Path;

/// Parses ONNX model bytes; `file` names them in messages.
pub fn parse_model(bytes: &[u8], file: &str) -> Result<ModelProto, FrontendError> {
    if bytes.is_empty() {
        return Err(FrontendError::Format {
            file: file.to_string(),
            msg: "the file is empty, not an ONNX model".into(),
        });
    }
    ModelProto::parse_from_bytes(bytes).map_err(|e| FrontendError::Format {
        file: file.to_string(),
        msg: format!("not a valid ONNX model (protobuf decoding failed: {e})"),
    })
}

/// Loads an ONNX model file as a module. External data files are looked up next to
/// the model and memory-mapped.
pub fn load(path: &Path) -> Result<Module, FrontendError> {
    load_with(path, ImportOptions::default())
}

/// [`load`] with options (graph inputs bound to constants).
pub fn load_with(path: &Path, options: ImportOptions) -> Result<Module, FrontendError> {
    let io = |source| FrontendError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: read-only mapping of a model file we assume is not rewritten while read.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let name = path.display().to_string();
    let model = parse_model(&map, &name)?;
    let dir = path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    });
    import::import(model, &name, dir, Registry::standard(), options)
}

/// Imports model bytes held in memory (external data is an error: there is no folder).
pub fn load_bytes(bytes: &[u8], name: &str) -> Result<Module, FrontendError> {
    let model = parse_model(bytes, name)?;
    import::import(
        model,
        name,
        None,
        Registry::standard(),
        ImportOptions::default(),
    )
}

/// Imports an already parsed model; `base_dir` is where external data lives.
pub fn import_model(
    model: ModelProto,
    name: &str,
    base_dir: Option<&Path>,
) -> Result<Module, FrontendError> {
    import::import(
        model,
        name,
        base_dir,
        Registry::standard(),
        ImportOptions::default(),
    )
}

/// Reads a serialized `TensorProto` file (the `.pb` files of ONNX test data): its
/// name and its elements.
pub fn read_tensor(path: &Path) -> Result<(String, Tensor), FrontendError> {
    let bytes = std::fs::read(path).map_err(|source| FrontendError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    data::tensor_from_bytes(&bytes, path.parent()).map_err(|msg| FrontendError::Format {
        file: path.display().to_string(),
        msg,
    })
}
