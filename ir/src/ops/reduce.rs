//! Reductions over axes (sum, mean, max, min, prod), argmax/argmin, and the ops that
//! normalise or accumulate along one axis (softmax, log_softmax, cumsum). ONNX
//! semantics: `axes` absent or empty means every axis, `keepdims` defaults to true.
//! Floats accumulate in f64, integers in i64 (wrapping, then wrapped to the dtype).

use super::util::{
    arg, around, axes_in, axis_in, floats, for_each_coord, need_float, need_numeric, opt_bool,
    opt_ints, req_int, targ, R, T,
};
use crate::interp::EvalCtx;
use crate::tensor::Data;
use crate::{Attrs, DType, Dim, Shape, Tensor, TensorType};

/// The reduced axes: `axes` absent or empty means all of them.
fn reduce_axes(a: &Attrs, rank: usize) -> Result<Vec<usize>, String> {
    match opt_ints(a, "axes")? {
        None | Some([]) => Ok((0..rank).collect()),
        Some(ax) => axes_in(ax, rank, "axes"),
    }
}

/// Shape rule of `reduce_*`: reduced axes become 1 (keepdims) or disappear.
pub fn infer_reduce(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    need_numeric(x, "operand x")?;
    let axes = reduce_axes(a, x.shape.rank())?;
    let keep = opt_bool(a, "keepdims", true)?;
    let mut dims = Vec::new();
    for (d, dim) in x.shape.0.iter().enumerate() {
        if !axes.contains(&d) {
            dims.push(dim.clone());
        } else if keep {
            dims.push(Dim::c(1));
        }
    }
    Ok(vec![TensorType::new(x.dtype.compute_type(), Shape(dims))])
}

#[derive(Clone, Copy, PartialEq)]
enum Red {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
}

fn reduce(i: &[&Tensor], a: &Attrs, kind: Red) -> R {
    let x = arg(i, 0, "x")?;
    if x.dtype == DType::Bool {
        return Err("operand x must be numeric, got bool".into());
    }
    let rank = x.shape.len();
    let axes = reduce_axes(a, rank)?;
    let keep = opt_bool(a, "keepdims", true)?;
    // Output in keepdims form; reduced axes have output stride 0.
    let kshape: Vec<usize> = (0..rank)
        .map(|d| if axes.contains(&d) { 1 } else { x.shape[d] })
        .collect();
    let kstrides = crate::tensor::strides(&kshape);
    let ostride: Vec<usize> = (0..rank)
        .map(|d| if axes.contains(&d) { 0 } else { kstrides[d] })
        .collect();
    let out_n: usize = kshape.iter().product();
    let count: usize = axes.iter().map(|&d| x.shape[d]).product();
    let out_shape: Vec<usize> = if keep {
        kshape.clone()
    } else {
        (0..rank)
            .filter(|d| !axes.contains(d))
            .map(|d| x.shape[d])
            .collect()
    };
    let mut flat = 0usize;
    let out_index = |c: &[usize]| c.iter().zip(&ostride).map(|(c, s)| c * s).sum::<usize>();
    match &x.data {
        Data::F(v) => {
            let init = match kind {
                Red::Sum | Red::Mean => 0.0,
                Red::Prod => 1.0,
                Red::Max => f64::NEG_INFINITY,
                Red::Min => f64::INFINITY,
            };
            let mut acc = vec![init; out_n];
            for_each_coord(&x.shape, |c| {
                let o = &mut acc[out_index(c)];
                let e = v[flat];
                flat += 1;
                match kind {
                    Red::Sum | Red::Mean => *o += e,
                    Red::Prod => *o *= e,
                    // NaN propagates, as numpy's max/min do.
                    Red::Max => {
                        if e.is_nan() || e > *o {
                            *o = e
                        }
                    }
                    Red::Min => {
                        if e.is_nan() || e < *o {
                            *o = e
                        }
                    }
                }
            });
            if kind == Red::Mean {
                for o in &mut acc {
                    *o /= count as f64;
                }
            }
            Ok(vec![Tensor::from_f64(x.dtype, out_shape, acc)])
        }
        Data::I(v) => {
            if count == 0 && matches!(kind, Red::Max | Red::Min | Red::Mean) {
                return Err(format!(
                    "reduces over an empty axis of shape {:?} (integer result undefined)",
                    x.shape
                ));
            }
            let init = match kind {
                Red::Sum | Red::Mean => 0,
                Red::Prod => 1,
                Red::Max => i64::MIN,
                Red::Min => i64::MAX,
            };
            let mut acc = vec![init; out_n];
            for_each_coord(&x.shape, |c| {
                let o = &mut acc[out_index(c)];
                let e = v[flat];
                flat += 1;
                *o = match kind {
                    Red::Sum | Red::Mean => o.wrapping_add(e),
                    Red::Prod => o.wrapping_mul(e),
                    Red::Max => (*o).max(e),
                    Red::Min => (*o).min(e),
                };
            });
            if kind == Red::Mean {
                for o in &mut acc {
                    *o = o.wrapping_div(count as i64);
                }
            }
            Ok(vec![Tensor::from_i64(x.dtype, out_shape, acc)])
        }
    }
}

/// Reference semantics of `reduce_sum`.
pub fn eval_reduce_sum(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    reduce(i, a, Red::Sum)
}

/// Reference semantics of `reduce_mean`.
pub fn eval_reduce_mean(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    reduce(i, a, Red::Mean)
}

/// Reference semantics of `reduce_max`.
pub fn eval_reduce_max(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    reduce(i, a, Red::Max)
}

/// Reference semantics of `reduce_min`.
pub fn eval_reduce_min(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    reduce(i, a, Red::Min)
}

/// Reference semantics of `reduce_prod`.
pub fn eval_reduce_prod(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    reduce(i, a, Red::Prod)
}

/// Shape rule of `argmax`/`argmin`: i64 indices, `axis` kept as 1 or removed.
pub fn infer_arg(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    let axis = axis_in(req_int(a, "axis")?, x.shape.rank(), "axis")?;
    let keep = opt_bool(a, "keepdims", true)?;
    let mut dims = x.shape.0.clone();
    if keep {
        dims[axis] = Dim::c(1);
    } else {
        dims.remove(axis);
    }
    Ok(vec![TensorType::new(DType::I64, Shape(dims))])
}

fn arg_extreme(i: &[&Tensor], a: &Attrs, max: bool) -> R {
    let x = arg(i, 0, "x")?;
    let axis = axis_in(req_int(a, "axis")?, x.shape.len(), "axis")?;
    let keep = opt_bool(a, "keepdims", true)?;
    let (outer, n, inner) = around(&x.shape, axis);
    if n == 0 {
        return Err(format!(
            "axis {axis} of x (shape {:?}) is empty: no index to return",
            x.shape
        ));
    }
    // `better(cand, best)`: does element `cand` replace the current `best`? Ties keep
    // the first; NaN counts as the extreme (numpy's argmax/argmin return the first NaN).
    let better = |cand: usize, best: usize| -> bool {
        match &x.data {
            Data::F(v) => {
                let (c, b) = (v[cand], v[best]);
                if b.is_nan() {
                    false
                } else if c.is_nan() {
                    true
                } else if max {
                    c > b
                } else {
                    c < b
                }
            }
            Data::I(v) => {
                if max {
                    v[cand] > v[best]
                } else {
                    v[cand] < v[best]
                }
            }
        }
    };
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for k in 0..inner {
            let base = o * n * inner + k;
            let mut best = 0usize;
            for j in 1..n {
                if better(base + j * inner, base + best * inner) {
                    best = j;
                }
            }
            out.push(best as i64);
        }
    }
    let mut shape = x.shape.clone();
    if keep {
        shape[axis] = 1;
    } else {
        shape.remove(axis);
    }
    Ok(vec![Tensor::from_i64(DType::I64, shape, out)])
}

/// Reference semantics of `argmax`.
pub fn eval_argmax(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    arg_extreme(i, a, true)
}

/// Reference semantics of `argmin`.
pub fn eval_argmin(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    arg_extreme(i, a, false)
}

/// Shape rule of `softmax`/`log_softmax`: float operand, `axis` in range, same type.
pub fn infer_softmax(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    need_float(x, "operand x")?;
    axis_in(req_int(a, "axis")?, x.shape.rank(), "axis")?;
    Ok(vec![TensorType::new(
        x.dtype.compute_type(),
        x.shape.clone(),
    )])
}

fn softmax(i: &[&Tensor], a: &Attrs, log: bool) -> R {
    let x = arg(i, 0, "x")?;
    let v = floats(x, "operand x")?;
    let axis = axis_in(req_int(a, "axis")?, x.shape.len(), "axis")?;
    let (outer, n, inner) = around(&x.shape, axis);
    let mut out = vec![0.0; v.len()];
    for o in 0..outer {
        for k in 0..inner {
            let at = |j: usize| o * n * inner + j * inner + k;
            let m = (0..n).map(|j| v[at(j)]).fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = (0..n).map(|j| (v[at(j)] - m).exp()).sum();
            for j in 0..n {
                out[at(j)] = if log {
                    v[at(j)] - m - s.ln()
                } else {
                    (v[at(j)] - m).exp() / s
                };
            }
        }
    }
    Ok(vec![Tensor::from_f64(x.dtype, x.shape.clone(), out)])
}

/// Reference semantics of `softmax` (max subtracted first, so large inputs are safe).
pub fn eval_softmax(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    softmax(i, a, false)
}

/// Reference semantics of `log_softmax`.
pub fn eval_log_softmax(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    softmax(i, a, true)
}

/// Shape rule of `cumsum`: numeric operand, `axis` in range, same type.
pub fn infer_cumsum(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    need_numeric(x, "operand x")?;
    axis_in(req_int(a, "axis")?, x.shape.rank(), "axis")?;
    opt_bool(a, "exclusive", false)?;
    opt_bool(a, "reverse", false)?;
    Ok(vec![TensorType::new(
        x.dtype.compute_type(),
        x.shape.clone(),
    )])
}

/// Reference semantics of `cumsum` (ONNX CumSum with `exclusive` and `reverse`).
pub fn eval_cumsum(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    running(i, a, false)
}

/// Reference semantics of `cumprod` (ONNX CumProd with `exclusive` and `reverse`).
pub fn eval_cumprod(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    running(i, a, true)
}

/// A running sum or product along `axis`.
fn running(i: &[&Tensor], a: &Attrs, prod: bool) -> R {
    let x = arg(i, 0, "x")?;
    if x.dtype == DType::Bool {
        return Err("operand x must be numeric, got bool".into());
    }
    let axis = axis_in(req_int(a, "axis")?, x.shape.len(), "axis")?;
    let exclusive = opt_bool(a, "exclusive", false)?;
    let reverse = opt_bool(a, "reverse", false)?;
    let (outer, n, inner) = around(&x.shape, axis);
    // Visiting order along the axis.
    let order: Vec<usize> = if reverse {
        (0..n).rev().collect()
    } else {
        (0..n).collect()
    };
    match &x.data {
        Data::F(v) => {
            let mut out = vec![0.0; v.len()];
            for o in 0..outer {
                for k in 0..inner {
                    let mut acc = if prod { 1.0 } else { 0.0 };
                    let step = |acc: f64, e: f64| if prod { acc * e } else { acc + e };
                    for &j in &order {
                        let p = o * n * inner + j * inner + k;
                        if exclusive {
                            out[p] = acc;
                            acc = step(acc, v[p]);
                        } else {
                            acc = step(acc, v[p]);
                            out[p] = acc;
                        }
                    }
                }
            }
            Ok(vec![Tensor::from_f64(x.dtype, x.shape.clone(), out)])
        }
        Data::I(v) => {
            let mut out = vec![0i64; v.len()];
            for o in 0..outer {
                for k in 0..inner {
                    let mut acc = prod as i64;
                    let step = |acc: i64, e: i64| {
                        if prod {
                            acc.wrapping_mul(e)
                        } else {
                            acc.wrapping_add(e)
                        }
                    };
                    for &j in &order {
                        let p = o * n * inner + j * inner + k;
                        if exclusive {
                            out[p] = acc;
                            acc = step(acc, v[p]);
                        } else {
                            acc = step(acc, v[p]);
                            out[p] = acc;
                        }
                    }
                }
            }
            Ok(vec![Tensor::from_i64(x.dtype, x.shape.clone(), out)])
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::util::testing::*;
    use crate::{attrs, Attr, DType, Op};

    #[test]
    fn reduce_defaults_keep_dims_and_take_all_axes() {
        let x = tf(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let all = ev1(Op::ReduceSum, &[&x], attrs([]));
        assert_eq!(all.shape, vec![1, 1]);
        assert_eq!(all.to_f64(), vec![21.0]);
        let last = ev1(
            Op::ReduceMean,
            &[&x],
            attrs([("axes", Attr::Ints(vec![-1]))]),
        );
        assert_eq!(last.shape, vec![2, 1]);
        assert_eq!(last.to_f64(), vec![2.0, 5.0]);
        let dropped = ev1(
            Op::ReduceMax,
            &[&x],
            attrs([
                ("axes", Attr::Ints(vec![0])),
                ("keepdims", Attr::Bool(false)),
            ]),
        );
        assert_eq!(dropped.shape, vec![3]);
        assert_eq!(dropped.to_f64(), vec![4.0, 5.0, 6.0]);
        let t = inf(
            Op::ReduceProd,
            &[&tt(DType::F32, &["batch", "seq", "4"])],
            attrs([("axes", Attr::Ints(vec![-2]))]),
        )
        .unwrap();
        assert_eq!(t[0].to_string(), "f32[batch, 1, 4]");
    }

    #[test]
    fn reduce_axis_errors_name_the_attribute() {
        let x = tt(DType::F32, &["2", "3"]);
        let e = inf(Op::ReduceSum, &[&x], attrs([("axes", Attr::Ints(vec![2]))])).unwrap_err();
        assert!(e.contains("axes = 2 is out of range for rank 2"), "{e}");
        let e = inf(
            Op::ReduceSum,
            &[&x],
            attrs([("axes", Attr::Ints(vec![1, -1]))]),
        )
        .unwrap_err();
        assert!(e.contains("names axis 1 twice"), "{e}");
    }

    #[test]
    fn max_propagates_nan_and_int_mean_truncates() {
        let x = tf(&[3], &[1.0, f64::NAN, 2.0]);
        assert!(ev1(Op::ReduceMax, &[&x], attrs([])).to_f64()[0].is_nan());
        let n = ti(&[3], &[-7, 0, 0]);
        assert_eq!(ev1(Op::ReduceMean, &[&n], attrs([])).to_i64(), vec![-2]);
    }

    #[test]
    fn argmax_takes_the_first_of_ties() {
        let x = tf(&[2, 4], &[1.0, 3.0, 3.0, 0.0, 5.0, 5.0, 5.0, 5.0]);
        let a = attrs([("axis", Attr::Int(1))]);
        let mx = ev1(Op::ArgMax, &[&x], a.clone());
        assert_eq!(mx.dtype, DType::I64);
        assert_eq!(mx.shape, vec![2, 1]);
        assert_eq!(mx.to_i64(), vec![1, 0]);
        assert_eq!(ev1(Op::ArgMin, &[&x], a).to_i64(), vec![3, 0]);
        let t = inf(
            Op::ArgMax,
            &[&tt(DType::F32, &["seq", "49152"])],
            attrs([("axis", Attr::Int(-1)), ("keepdims", Attr::Bool(false))]),
        )
        .unwrap();
        assert_eq!(t[0].to_string(), "i64[seq]");
    }

    #[test]
    fn softmax_is_stable_for_large_inputs() {
        // exp(1000) overflows f64; the max-subtracted form gives 1/(1+e^-1), e^-1/(1+e^-1).
        let x = tf(&[1, 2], &[1001.0, 1000.0]);
        let a = attrs([("axis", Attr::Int(-1))]);
        let p = 1.0 / (1.0 + (-1.0f64).exp());
        close(
            &ev1(Op::Softmax, &[&x], a.clone()).to_f64(),
            &[p, 1.0 - p],
            1e-7,
        );
        close(
            &ev1(Op::LogSoftmax, &[&x], a).to_f64(),
            &[p.ln(), (1.0 - p).ln()],
            1e-7,
        );
        let e = inf(
            Op::Softmax,
            &[&tt(DType::I64, &["3"])],
            attrs([("axis", Attr::Int(0))]),
        )
        .unwrap_err();
        assert!(e.contains("must be a float tensor"), "{e}");
    }

    #[test]
    fn cumsum_exclusive_and_reverse() {
        let x = tf(&[4], &[1.0, 2.0, 3.0, 4.0]);
        let run = |ex: bool, rev: bool| {
            ev1(
                Op::CumSum,
                &[&x],
                attrs([
                    ("axis", Attr::Int(0)),
                    ("exclusive", Attr::Bool(ex)),
                    ("reverse", Attr::Bool(rev)),
                ]),
            )
            .to_f64()
        };
        assert_eq!(run(false, false), vec![1.0, 3.0, 6.0, 10.0]);
        assert_eq!(run(true, false), vec![0.0, 1.0, 3.0, 6.0]);
        assert_eq!(run(false, true), vec![10.0, 9.0, 7.0, 4.0]);
        assert_eq!(run(true, true), vec![9.0, 7.0, 4.0, 0.0]);
    }
}
