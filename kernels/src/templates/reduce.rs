//! Reductions: `reduce_*` over any set of axes (an outer nest over the kept dims, an
//! inner nest over the reduced dims into an accumulator), argmax/argmin, and the ops
//! that work along one axis — softmax, log_softmax (max, sum of exponentials, write)
//! and cumsum. Float accumulators are in the compute type (f32 for f32 data); the
//! innermost reduced loop is vectorized, so sums may be reassociated.

use super::{
    attr_bool, attr_int, attr_ints, axis, compute_ty, exp, fconst, load_elem, loop_nest_par,
    merge_dims, offset, operand, result, setup, strides, to_storage, work_estimate, worth_threads,
    TResult,
};
use crate::builder::KernelBuilder;
use crate::loopir::{BinOp, Expr, Kernel, LoopTag, UnOp};
use llmc_ir::{Dim, Node, Op, TensorType};

/// `reduce_sum|mean|max|min|prod`.
pub(crate) fn reduce(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    result(outs, 0)?;
    let rank = x.shape.rank();
    let axes: Vec<usize> = match attr_ints(node, "axes")? {
        None | Some([]) => (0..rank).collect(),
        Some(a) => a
            .iter()
            .map(|&v| axis(v, rank, "axes"))
            .collect::<TResult<_>>()?,
    };
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let t = compute_ty(x.dtype)?;
    let xs = strides(&x.shape.0);
    // Kept dims: extents, input strides and output strides (contiguous over kept dims).
    let kept: Vec<usize> = (0..rank).filter(|d| !axes.contains(d)).collect();
    let kept_ext: Vec<Dim> = kept.iter().map(|&d| x.shape.0[d].clone()).collect();
    let kept_in: Vec<Dim> = kept.iter().map(|&d| xs[d].clone()).collect();
    let (oext, ost) = merge_dims(&kept_ext, &[kept_in, strides(&kept_ext)]);
    let mut red: Vec<usize> = axes.clone();
    red.sort();
    let red_ext: Vec<Dim> = red.iter().map(|&d| x.shape.0[d].clone()).collect();
    let red_in: Vec<Dim> = red.iter().map(|&d| xs[d].clone()).collect();
    let (rext, rst) = merge_dims(&red_ext, &[red_in]);
    let count = kb.numel(&red_ext);
    let op = node.op;
    let parallel = worth_threads(work_estimate(&x.shape.0)) && !oext.is_empty();
    loop_nest_par(&mut kb, &oext, parallel, false, &mut |kb, oc| {
        let base = offset(kb, oc, &ost[0]);
        let init = match (op, t.is_float()) {
            (Op::ReduceSum | Op::ReduceMean, true) => fconst(0.0, t),
            (Op::ReduceProd, true) => fconst(1.0, t),
            (Op::ReduceMax, true) => fconst(f64::NEG_INFINITY, t),
            (Op::ReduceMin, true) => fconst(f64::INFINITY, t),
            (Op::ReduceSum | Op::ReduceMean, false) => Expr::Int(0, t),
            (Op::ReduceProd, false) => Expr::Int(1, t),
            (Op::ReduceMax, false) => Expr::Int(super::elementwise::int_range(t).0, t),
            _ => Expr::Int(super::elementwise::int_range(t).1, t),
        };
        let acc = kb.let_mut("acc", init);
        let mut rc = Vec::new();
        red_nest(kb, &rext, &mut rc, &mut |kb, rc| {
            let idx = base.clone() + offset(kb, rc, &rst[0]);
            let e = kb.let_("e", load_elem(kb, ib[0], x.dtype, idx));
            let a = Expr::Var(acc);
            let v = match op {
                Op::ReduceSum | Op::ReduceMean => Expr::bin(BinOp::Add, a, e),
                Op::ReduceProd => Expr::bin(BinOp::Mul, a, e),
                Op::ReduceMax if t.is_float() => Expr::select(
                    Expr::un(UnOp::IsNan, e.clone()).or(e.clone().gt(a.clone())),
                    e,
                    a,
                ),
                Op::ReduceMin if t.is_float() => Expr::select(
                    Expr::un(UnOp::IsNan, e.clone()).or(e.clone().lt(a.clone())),
                    e,
                    a,
                ),
                Op::ReduceMax => a.max(e),
                _ => a.min(e),
            };
            kb.assign(acc, v);
        });
        let mut v = Expr::Var(acc);
        if op == Op::ReduceMean {
            v = Expr::bin(BinOp::Div, v, count.clone().cast(t));
        }
        let o = offset(kb, oc, &ost[1]);
        let v = to_storage(kb, ob[0], v);
        kb.store(ob[0], o, v);
    });
    kb.finish()
}

/// A nest over reduced dims; the innermost loop is vectorized.
fn red_nest(
    kb: &mut KernelBuilder,
    ext: &[Dim],
    coords: &mut Vec<Expr>,
    body: &mut dyn FnMut(&mut KernelBuilder, &[Expr]),
) {
    let d = coords.len();
    if d == ext.len() {
        body(kb, coords);
        return;
    }
    let n = kb.dim(&ext[d]);
    let tag = if d + 1 == ext.len() {
        LoopTag::Vectorize(8)
    } else {
        LoopTag::Serial
    };
    kb.for_("r", 0, n, tag, |kb, r| {
        coords.push(r);
        red_nest(kb, ext, coords, body);
        coords.pop();
    });
}

/// (outer, n, inner) extents around `axis`.
fn around(shape: &[Dim], axis: usize) -> (Vec<Dim>, Dim, Vec<Dim>) {
    (
        shape[..axis].to_vec(),
        shape[axis].clone(),
        shape[axis + 1..].to_vec(),
    )
}

/// The coordinates an axis op's body works at.
struct At {
    /// Index of the outer block.
    o: Expr,
    /// Index within the inner block.
    k: Expr,
    /// Flat index of element 0 along the axis.
    base: Expr,
    /// Extent of the axis.
    n: Expr,
    /// Stride of the axis (the inner block's size).
    stride: Expr,
}

/// Loops over (outer, inner) of an axis op.
fn axis_loops(
    kb: &mut KernelBuilder,
    shape: &[Dim],
    ax: usize,
    body: &mut dyn FnMut(&mut KernelBuilder, At),
) {
    let (outer, n, inner) = around(shape, ax);
    let outer_n = outer.iter().fold(Dim::c(1), |a, d| a.mul(d));
    let inner_n = inner.iter().fold(Dim::c(1), |a, d| a.mul(d));
    let parallel = worth_threads(work_estimate(shape));
    let ne = kb.dim(&n);
    let ie = kb.dim(&inner_n);
    // A constant-1 extent becomes a `let` of 0, so both coordinates always exist.
    loop_nest_par(kb, &[outer_n, inner_n], parallel, false, &mut |kb, c| {
        let (o, k) = match c {
            [o, k] => (o.clone(), k.clone()),
            _ => (Expr::i(0), Expr::i(0)),
        };
        let base = o.clone() * ne.clone() * ie.clone() + k.clone();
        body(
            kb,
            At {
                o,
                k,
                base,
                n: ne.clone(),
                stride: ie.clone(),
            },
        );
    });
}

/// `argmax` / `argmin` along `axis` (first index on ties, NaN counts as the extreme).
pub(crate) fn arg_extreme(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    result(outs, 0)?;
    let ax = axis(
        attr_int(node, "axis")?.ok_or("missing attribute `axis`")?,
        x.shape.rank(),
        "axis",
    )?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let t = compute_ty(x.dtype)?;
    let max = node.op == Op::ArgMax;
    axis_loops(&mut kb, &x.shape.0, ax, &mut |kb, at| {
        let At {
            o,
            k,
            base,
            n,
            stride,
        } = at;
        let o_idx = o * stride.clone() + k;
        kb.if_(n.clone().gt(Expr::i(0)), |kb| {
            let best = kb.let_mut("best", load_elem(kb, ib[0], x.dtype, base.clone()));
            let bi = kb.let_mut("bi", Expr::i(0));
            kb.for_("j", 1, n.clone(), LoopTag::Serial, |kb, j| {
                let e = kb.let_(
                    "e",
                    load_elem(
                        kb,
                        ib[0],
                        x.dtype,
                        base.clone() + j.clone() * stride.clone(),
                    ),
                );
                let b = Expr::Var(best);
                let better = if t.is_float() {
                    let cmp = if max {
                        e.clone().gt(b.clone())
                    } else {
                        e.clone().lt(b.clone())
                    };
                    // Not when best is NaN; yes when e is NaN; else the comparison.
                    Expr::un(UnOp::Not, Expr::un(UnOp::IsNan, b.clone()))
                        .and(Expr::un(UnOp::IsNan, e.clone()).or(cmp))
                } else if max {
                    e.clone().gt(b.clone())
                } else {
                    e.clone().lt(b.clone())
                };
                let better = kb.let_("better", better);
                kb.assign(best, Expr::select(better.clone(), e, b));
                kb.assign(bi, Expr::select(better, j, Expr::Var(bi)));
            });
            kb.store(ob[0], o_idx.clone(), Expr::Var(bi));
        });
    });
    kb.finish()
}

/// `softmax` / `log_softmax` along `axis`: max, then the sum of exponentials, then
/// the normalised values.
pub(crate) fn softmax(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    result(outs, 0)?;
    let ax = axis(
        attr_int(node, "axis")?.ok_or("missing attribute `axis`")?,
        x.shape.rank(),
        "axis",
    )?;
    let log = node.op == Op::LogSoftmax;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let t = compute_ty(x.dtype)?;
    let vec_tag = |stride: &Expr| {
        if stride.as_i64() == Some(1) {
            LoopTag::Vectorize(8)
        } else {
            LoopTag::Serial
        }
    };
    axis_loops(&mut kb, &x.shape.0, ax, &mut |kb, a| {
        let (base, n, stride) = (a.base, a.n, a.stride);
        let tag = vec_tag(&stride);
        let at = |j: Expr| base.clone() + j * stride.clone();
        let m = kb.let_mut("m", fconst(f64::NEG_INFINITY, t));
        kb.for_("j", 0, n.clone(), tag, |kb, j| {
            let e = load_elem(kb, ib[0], x.dtype, at(j));
            kb.assign(m, Expr::Var(m).max(e));
        });
        let s = kb.let_mut("s", fconst(0.0, t));
        kb.for_("j", 0, n.clone(), tag, |kb, j| {
            let e = load_elem(kb, ib[0], x.dtype, at(j));
            let d = Expr::bin(BinOp::Sub, e, Expr::Var(m));
            kb.assign(s, Expr::bin(BinOp::Add, Expr::Var(s), exp(d)));
        });
        let fin = if log {
            kb.let_("logs", Expr::un(UnOp::Log, Expr::Var(s)))
        } else {
            kb.let_("inv", Expr::bin(BinOp::Div, fconst(1.0, t), Expr::Var(s)))
        };
        kb.for_("j", 0, n.clone(), tag, |kb, j| {
            let e = load_elem(kb, ib[0], x.dtype, at(j.clone()));
            let d = Expr::bin(BinOp::Sub, e, Expr::Var(m));
            let v = if log {
                Expr::bin(BinOp::Sub, d, fin.clone())
            } else {
                Expr::bin(BinOp::Mul, exp(d), fin.clone())
            };
            let v = to_storage(kb, ob[0], v);
            kb.store(ob[0], at(j), v);
        });
    });
    kb.finish()
}

/// `cumsum` / `cumprod` along `axis` (ONNX `exclusive` and `reverse`).
pub(crate) fn cumsum(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    result(outs, 0)?;
    let ax = axis(
        attr_int(node, "axis")?.ok_or("missing attribute `axis`")?,
        x.shape.rank(),
        "axis",
    )?;
    let exclusive = attr_bool(node, "exclusive", false)?;
    let reverse = attr_bool(node, "reverse", false)?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let t = compute_ty(x.dtype)?;
    axis_loops(&mut kb, &x.shape.0, ax, &mut |kb, a| {
        let (base, n, stride) = (a.base, a.n, a.stride);
        let prod = node.op == Op::CumProd;
        let unit = match (t.is_float(), prod) {
            (true, false) => fconst(0.0, t),
            (true, true) => fconst(1.0, t),
            (false, false) => Expr::Int(0, t),
            (false, true) => Expr::Int(1, t),
        };
        let acc = kb.let_mut("acc", unit);
        kb.for_("j", 0, n.clone(), LoopTag::Serial, |kb, j| {
            let jj = if reverse { n.clone() - 1 - j } else { j };
            let p = kb.let_("p", base.clone() + jj * stride.clone());
            let e = load_elem(kb, ib[0], x.dtype, p.clone());
            let next = Expr::bin(
                if prod { BinOp::Mul } else { BinOp::Add },
                Expr::Var(acc),
                e,
            );
            if exclusive {
                let v = to_storage(kb, ob[0], Expr::Var(acc));
                kb.store(ob[0], p, v);
                kb.assign(acc, next);
            } else {
                kb.assign(acc, next);
                let v = to_storage(kb, ob[0], Expr::Var(acc));
                kb.store(ob[0], p, v);
            }
        });
    });
    kb.finish()
}
