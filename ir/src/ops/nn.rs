//! nn ops (placeholder bodies, being written).

use crate::interp::EvalCtx;
use crate::{Attrs, Tensor, TensorType};

/// Reference semantics.
pub fn eval_attention(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_kv_append(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_layer_norm(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_rms_norm(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Reference semantics.
pub fn eval_rope(_: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> Result<Vec<Tensor>, String> {
    Err("semantics not written yet".into())
}

/// Shape rule.
pub fn infer_attention(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_kv_append(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_norm(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}

/// Shape rule.
pub fn infer_rope(_: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    Err("shape rule not written yet".into())
}
