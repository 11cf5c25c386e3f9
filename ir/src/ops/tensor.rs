//! tensor ops (placeholder bodies, being written).

use crate::interp::EvalCtx;
use crate::{Attrs, Tensor, TensorType};

/// Reference semantics.
pub fn eval_concat(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_constant(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_expand(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_gather(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_gather_elements(
    _: &[&Tensor],
    _: &Attrs,
    _: &mut EvalCtx,
) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_pad(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_reshape(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_slice(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_split(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_squeeze(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_tile(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_transpose(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_trilu(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_unsqueeze(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Shape rule.
pub fn infer_concat(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_constant(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_expand(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_gather(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_gather_elements(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_pad(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_reshape(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_slice(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_split(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_squeeze(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_tile(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_transpose(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_unsqueeze(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}
