//! linalg ops (placeholder bodies, being written).

use crate::interp::EvalCtx;
use crate::{Attrs, Tensor, TensorType};

/// Reference semantics.
pub fn eval_linear(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_matmul(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Shape rule.
pub fn infer_linear(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_matmul(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}
