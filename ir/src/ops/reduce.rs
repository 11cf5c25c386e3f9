//! reduce ops (placeholder bodies, being written).

use crate::interp::EvalCtx;
use crate::{Attrs, Tensor, TensorType};

/// Reference semantics.
pub fn eval_argmax(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_argmin(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_cumsum(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_log_softmax(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_reduce_max(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_reduce_mean(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_reduce_min(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_reduce_prod(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_reduce_sum(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_softmax(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Shape rule.
pub fn infer_arg(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_reduce(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}
