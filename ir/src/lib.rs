//! llmc's IR: element types, symbolic shapes, the op table, the module (graph +
//! weights + model info), its text format, the verifier, shape inference and the
//! reference interpreter. Every other crate of the compiler builds on this one.

#![warn(missing_docs)]

pub mod attr;
pub mod dot;
pub mod dtype;
pub mod interp;
pub mod module;
pub mod ops;
pub mod quant;
pub mod quant_k;
pub mod shape;
pub mod tensor;
pub mod text;
pub mod verify;

pub use attr::{Attr, AttrKind, Attrs, AttrsExt};
pub use dtype::DType;
pub use module::{
    attrs, Graph, ModelInfo, Module, Node, NodeId, TokenizerSource, Value, ValueDef, ValueId,
    Weight, WeightData, WeightId,
};
pub use ops::{InferError, Op, OpDef};
pub use shape::{Dim, Shape, TensorType};
pub use tensor::Tensor;
