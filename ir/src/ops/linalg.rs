//! Matrix products: `matmul` (numpy semantics: 1-D operands promoted, batch dims
//! broadcast) and `linear` (x · wᵀ + b with w stored `[n, k]`, possibly block-quantized).
//! The reference loops run over contiguous f64 rows so the interpreter can run a small
//! LLM end to end in reasonable time; they accumulate in f64.

use super::util::{arg, checked_numel, floats, targ, R, T};
use crate::interp::EvalCtx;
use crate::tensor::{broadcast_index, broadcast_shapes, Data};
use crate::{Attrs, DType, Shape, Tensor, TensorType};

/// Shape rule of `matmul`.
pub fn infer_matmul(i: &[&TensorType], _: &Attrs) -> T {
    let (a, b) = (targ(i, 0, "a")?, targ(i, 1, "b")?);
    let (da, db) = (a.dtype.compute_type(), b.dtype.compute_type());
    if da != db {
        return Err(format!("operand dtypes differ: a is {da}, b is {db}"));
    }
    if da == DType::Bool {
        return Err("operands must be numeric, got bool".into());
    }
    let (ra, rb) = (a.shape.rank(), b.shape.rank());
    if ra == 0 || rb == 0 {
        return Err(format!(
            "operands must have rank >= 1, got a: {} and b: {}",
            a.shape, b.shape
        ));
    }
    let ka = &a.shape.0[ra - 1];
    let kb = &b.shape.0[if rb == 1 { 0 } else { rb - 2 }];
    if ka != kb {
        return Err(format!(
            "contraction dims differ: a {} has k = {ka}, b {} has k = {kb}",
            a.shape, b.shape
        ));
    }
    let ba = Shape(a.shape.0[..ra.saturating_sub(2)].to_vec());
    let bb = Shape(b.shape.0[..rb.saturating_sub(2)].to_vec());
    let mut dims = ba
        .broadcast(&bb)
        .ok_or_else(|| format!("batch dims {ba} of a and {bb} of b do not broadcast"))?
        .0;
    if ra >= 2 {
        dims.push(a.shape.0[ra - 2].clone());
    }
    if rb >= 2 {
        dims.push(b.shape.0[rb - 1].clone());
    }
    Ok(vec![TensorType::new(da, Shape(dims))])
}

/// Reference semantics of `matmul`.
pub fn eval_matmul(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R {
    let (a, b) = (arg(i, 0, "a")?, arg(i, 1, "b")?);
    let (ra, rb) = (a.shape.len(), b.shape.len());
    if ra == 0 || rb == 0 {
        return Err(format!(
            "operands must have rank >= 1, got a: {:?} and b: {:?}",
            a.shape, b.shape
        ));
    }
    // Promote 1-D operands to matrices; the promoted dims are dropped at the end.
    let (m, k) = if ra == 1 {
        (1, a.shape[0])
    } else {
        (a.shape[ra - 2], a.shape[ra - 1])
    };
    let (kb, n) = if rb == 1 {
        (b.shape[0], 1)
    } else {
        (b.shape[rb - 2], b.shape[rb - 1])
    };
    if k != kb {
        return Err(format!(
            "contraction dims differ: a {:?} has k = {k}, b {:?} has k = {kb}",
            a.shape, b.shape
        ));
    }
    let ba = &a.shape[..ra.saturating_sub(2)];
    let bb = &b.shape[..rb.saturating_sub(2)];
    let batch = broadcast_shapes(ba, bb)
        .ok_or_else(|| format!("batch dims {ba:?} of a and {bb:?} of b do not broadcast"))?;
    let nb = checked_numel(&batch)?;
    let mut out_shape = batch.clone();
    if ra >= 2 {
        out_shape.push(m);
    }
    if rb >= 2 {
        out_shape.push(n);
    }
    checked_numel(&out_shape)?;
    match (&a.data, &b.data) {
        (Data::F(x), Data::F(y)) => {
            let mut out = vec![0.0f64; nb * m * n];
            for bi in 0..nb {
                let xa = &x[broadcast_index(bi, &batch, ba) * m * k..][..m * k];
                let yb = &y[broadcast_index(bi, &batch, bb) * k * n..][..k * n];
                let o = &mut out[bi * m * n..][..m * n];
                for r in 0..m {
                    let orow = &mut o[r * n..][..n];
                    for (p, &xv) in xa[r * k..][..k].iter().enumerate() {
                        for (ov, &yv) in orow.iter_mut().zip(&yb[p * n..][..n]) {
                            *ov += xv * yv;
                        }
                    }
                }
            }
            Ok(vec![Tensor::from_f64(a.dtype, out_shape, out)])
        }
        (Data::I(x), Data::I(y)) => {
            let mut out = vec![0i64; nb * m * n];
            for bi in 0..nb {
                let xa = &x[broadcast_index(bi, &batch, ba) * m * k..][..m * k];
                let yb = &y[broadcast_index(bi, &batch, bb) * k * n..][..k * n];
                let o = &mut out[bi * m * n..][..m * n];
                for r in 0..m {
                    let orow = &mut o[r * n..][..n];
                    for (p, &xv) in xa[r * k..][..k].iter().enumerate() {
                        for (ov, &yv) in orow.iter_mut().zip(&yb[p * n..][..n]) {
                            *ov = ov.wrapping_add(xv.wrapping_mul(yv));
                        }
                    }
                }
            }
            Ok(vec![Tensor::from_i64(a.dtype, out_shape, out)])
        }
        _ => Err(format!(
            "operand dtypes differ: a is {}, b is {}",
            a.dtype, b.dtype
        )),
    }
}

/// Shape rule of `linear`: x[..., k] · w[n, k]ᵀ (+ b[n]) -> x's dtype, [..., n].
pub fn infer_linear(i: &[&TensorType], _: &Attrs) -> T {
    let (x, w) = (targ(i, 0, "x")?, targ(i, 1, "w")?);
    if !x.dtype.is_float() {
        return Err(format!("operand x must be a float tensor, got {}", x.dtype));
    }
    if w.dtype.compute_type() != x.dtype {
        return Err(format!(
            "weight w ({}, computes as {}) does not match x's dtype {}",
            w.dtype,
            w.dtype.compute_type(),
            x.dtype
        ));
    }
    let r = x.shape.rank();
    if r == 0 {
        return Err("operand x must have rank >= 1, got a scalar".into());
    }
    let [n, k] = &w.shape.0[..] else {
        return Err(format!("weight w must be [n, k], got shape {}", w.shape));
    };
    if &x.shape.0[r - 1] != k {
        return Err(format!(
            "last dim of x {} is {}, weight w {} expects k = {k}",
            x.shape,
            x.shape.0[r - 1],
            w.shape
        ));
    }
    if let Some(b) = i.get(2) {
        if b.dtype.compute_type() != x.dtype {
            return Err(format!(
                "bias b is {}, expected x's dtype {}",
                b.dtype, x.dtype
            ));
        }
        if b.shape.0[..] != [n.clone()] {
            return Err(format!("bias b must be [{n}], got shape {}", b.shape));
        }
    }
    let mut dims = x.shape.0[..r - 1].to_vec();
    dims.push(n.clone());
    Ok(vec![TensorType::new(x.dtype, Shape(dims))])
}

/// Reference semantics of `linear` (w arrives dequantized when it is a block format).
pub fn eval_linear(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R {
    let (xt, wt) = (arg(i, 0, "x")?, arg(i, 1, "w")?);
    let x = floats(xt, "operand x")?;
    let w = floats(wt, "weight w")?;
    let [n, k] = wt.shape[..] else {
        return Err(format!("weight w must be [n, k], got shape {:?}", wt.shape));
    };
    let Some((&kx, lead)) = xt.shape.split_last() else {
        return Err("operand x must have rank >= 1, got a scalar".into());
    };
    if kx != k {
        return Err(format!(
            "last dim of x {:?} is {kx}, weight w {:?} expects k = {k}",
            xt.shape, wt.shape
        ));
    }
    let bias = match i.get(2) {
        Some(bt) => {
            let b = floats(bt, "bias b")?;
            if bt.shape[..] != [n] {
                return Err(format!("bias b must be [{n}], got shape {:?}", bt.shape));
            }
            Some(b)
        }
        None => None,
    };
    let rows: usize = lead.iter().product();
    let mut out_shape = lead.to_vec();
    out_shape.push(n);
    let mut out = vec![0.0f64; checked_numel(&out_shape)?];
    for r in 0..rows {
        let xr = &x[r * k..][..k];
        let orow = &mut out[r * n..][..n];
        for (j, o) in orow.iter_mut().enumerate() {
            let wr = &w[j * k..][..k];
            let mut s = 0.0f64;
            for (a, b) in xr.iter().zip(wr) {
                s += a * b;
            }
            *o = s + bias.map_or(0.0, |b| b[j]);
        }
    }
    Ok(vec![Tensor::from_f64(xt.dtype, out_shape, out)])
}
