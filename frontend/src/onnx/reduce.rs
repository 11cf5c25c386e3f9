//! Reductions (`ReduceSum` ... `ReduceLogSumExp`), `ArgMax`/`ArgMin`, the softmax
//! family (`Softmax`, `LogSoftmax`, `Hardmax`) and `CumSum`. The axes moved from an
//! attribute to an input (opset 13 for `ReduceSum`, 18 for the others); before opset
//! 13 the softmax family works on the input flattened to 2-D at `axis`.

use super::import::{NodeCtx, V};
use super::registry::Registry;
use llmc_ir::tensor::Tensor;
use llmc_ir::{attrs, Attr, Attrs, DType, Dim, Op, Shape};

type R = Result<Vec<V>, String>;

/// Adds this family's converters.
pub fn register(r: &mut Registry) {
    r.add("ReduceSum", |cx| reduce(cx, 13, Kind::Plain(Op::ReduceSum)));
    r.add("ReduceMean", |cx| {
        reduce(cx, 18, Kind::Plain(Op::ReduceMean))
    });
    r.add("ReduceMax", |cx| reduce(cx, 18, Kind::Plain(Op::ReduceMax)));
    r.add("ReduceMin", |cx| reduce(cx, 18, Kind::Plain(Op::ReduceMin)));
    r.add("ReduceProd", |cx| {
        reduce(cx, 18, Kind::Plain(Op::ReduceProd))
    });
    r.add("ReduceL1", |cx| reduce(cx, 18, Kind::L1));
    r.add("ReduceL2", |cx| reduce(cx, 18, Kind::L2));
    r.add("ReduceSumSquare", |cx| reduce(cx, 18, Kind::SumSquare));
    r.add("ReduceLogSum", |cx| reduce(cx, 18, Kind::LogSum));
    r.add("ReduceLogSumExp", |cx| reduce(cx, 18, Kind::LogSumExp));
    r.add("ArgMax", |cx| arg(cx, Op::ArgMax));
    r.add("ArgMin", |cx| arg(cx, Op::ArgMin));
    r.add("Softmax", |cx| softmax(cx, Op::Softmax));
    r.add("LogSoftmax", |cx| softmax(cx, Op::LogSoftmax));
    r.add("Hardmax", hardmax);
    r.add("CumSum", |cx| cumulative(cx, Op::CumSum));
    r.add("CumProd", |cx| cumulative(cx, Op::CumProd));
    r.add("TopK", top_k);
}

fn top_k(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let k = if cx.opset < 10 {
        cx.attr_opt_i("k")?.ok_or("missing attribute `k`")?
    } else {
        let k = cx.const_ints(1, "K")?;
        *k.first().ok_or("input 1 (K) is empty")?
    };
    let a = attrs([
        ("k", Attr::Int(k)),
        ("axis", Attr::Int(cx.attr_i("axis", -1)?)),
        ("largest", Attr::Bool(cx.attr_i("largest", 1)? != 0)),
        ("sorted", Attr::Bool(cx.attr_i("sorted", 1)? != 0)),
    ]);
    cx.op_n(Op::TopK, &[x], a)
}

#[derive(Clone, Copy)]
enum Kind {
    Plain(Op),
    L1,
    L2,
    SumSquare,
    LogSum,
    LogSumExp,
}

/// The reduction's axes (`None` = every axis), or `Err` when the node is an identity
/// (`noop_with_empty_axes` with no axes).
fn axes(cx: &mut NodeCtx, input_since: i64) -> Result<Result<Option<Vec<i64>>, ()>, String> {
    let axes = if cx.opset >= input_since {
        cx.opt_const_ints(1, "axes")?
    } else {
        cx.attr_ints("axes")?
    };
    let noop = cx.attr_i("noop_with_empty_axes", 0)? != 0;
    Ok(match axes {
        Some(a) if !a.is_empty() => Ok(Some(a)),
        _ if noop => Err(()),
        _ => Ok(None),
    })
}

fn reduce_op(
    cx: &mut NodeCtx,
    op: Op,
    x: V,
    axes: &Option<Vec<i64>>,
    keep: bool,
) -> Result<V, String> {
    let mut a = attrs([("keepdims", Attr::Bool(keep))]);
    if let Some(ax) = axes {
        a.insert("axes".into(), Attr::Ints(ax.clone()));
    }
    // Bool max/min: any / all, counted in i64 (defined on empty sets too).
    if cx.dtype(x) == DType::Bool {
        let all = op == Op::ReduceMin;
        let x = if all { cx.un(Op::Not, x)? } else { x };
        let xi = cx.cast(x, DType::I64)?;
        let n = cx.op(Op::ReduceSum, &[xi], a)?;
        let zero = cx.scalar(DType::I64, 0.0);
        let any = cx.bin(Op::Greater, n, zero)?;
        return if all { cx.un(Op::Not, any) } else { Ok(any) };
    }
    cx.op(op, &[x], a)
}

fn reduce(cx: &mut NodeCtx, input_since: i64, kind: Kind) -> R {
    let x = cx.input(0)?;
    let keep = cx.attr_i("keepdims", 1)? != 0;
    let axes = match axes(cx, input_since)? {
        Ok(a) => a,
        Err(()) => {
            // Identity, except the element-wise part of the composite reductions.
            let y = match kind {
                Kind::Plain(_) => x,
                Kind::L1 => cx.un(Op::Abs, x)?,
                Kind::L2 => {
                    let sq = cx.bin(Op::Mul, x, x)?;
                    cx.un(Op::Sqrt, sq)?
                }
                Kind::SumSquare => cx.bin(Op::Mul, x, x)?,
                Kind::LogSum => cx.un(Op::Log, x)?,
                Kind::LogSumExp => x,
            };
            return Ok(vec![y]);
        }
    };
    let y = match kind {
        Kind::Plain(op) => reduce_op(cx, op, x, &axes, keep)?,
        Kind::L1 => {
            let a = cx.un(Op::Abs, x)?;
            reduce_op(cx, Op::ReduceSum, a, &axes, keep)?
        }
        Kind::L2 => {
            let sq = cx.bin(Op::Mul, x, x)?;
            let s = reduce_op(cx, Op::ReduceSum, sq, &axes, keep)?;
            sqrt_any(cx, s)?
        }
        Kind::SumSquare => {
            let sq = cx.bin(Op::Mul, x, x)?;
            reduce_op(cx, Op::ReduceSum, sq, &axes, keep)?
        }
        Kind::LogSum => {
            let s = reduce_op(cx, Op::ReduceSum, x, &axes, keep)?;
            cx.un(Op::Log, s)?
        }
        Kind::LogSumExp => {
            let e = cx.un(Op::Exp, x)?;
            let s = reduce_op(cx, Op::ReduceSum, e, &axes, keep)?;
            cx.un(Op::Log, s)?
        }
    };
    Ok(vec![y])
}

/// sqrt of a float, or of an integer through f64 and back (truncating).
fn sqrt_any(cx: &mut NodeCtx, x: V) -> Result<V, String> {
    let d = cx.dtype(x);
    if d.is_float() {
        return cx.un(Op::Sqrt, x);
    }
    let f = cx.cast(x, DType::F64)?;
    let s = cx.un(Op::Sqrt, f)?;
    cx.cast(s, d)
}

fn arg(cx: &mut NodeCtx, op: Op) -> R {
    let x = cx.input(0)?;
    let axis = cx.attr_i("axis", 0)?;
    let keep = cx.attr_i("keepdims", 1)? != 0;
    let last = cx.attr_i("select_last_index", 0)? != 0;
    let a = attrs([("axis", Attr::Int(axis)), ("keepdims", Attr::Bool(keep))]);
    if !last {
        return Ok(vec![cx.op(op, &[x], a)?]);
    }
    // Last index of the extremum = n - 1 - first index in the reversed axis.
    let rank = cx.rank(x) as i64;
    let ax = if axis < 0 { axis + rank } else { axis };
    let n = cx
        .shape(x)
        .0
        .get(ax as usize)
        .and_then(Dim::as_const)
        .ok_or_else(|| format!("select_last_index needs a constant dim at axis {axis}"))?;
    let rev = cx.op(
        Op::Slice,
        &[x],
        attrs([
            ("starts", Attr::Ints(vec![-1])),
            ("ends", Attr::Ints(vec![i64::MIN])),
            ("axes", Attr::Ints(vec![ax])),
            ("steps", Attr::Ints(vec![-1])),
        ]),
    )?;
    let i = cx.op(op, &[rev], a)?;
    let top = cx.scalar(DType::I64, (n - 1) as f64);
    Ok(vec![cx.bin(Op::Sub, top, i)?])
}

/// Applies `f` along `axis`; before opset 13 over the input flattened to 2-D at
/// `axis` (i.e. jointly over every axis from `axis` on).
fn along_axis(
    cx: &mut NodeCtx,
    x: V,
    f: &mut dyn FnMut(&mut NodeCtx, V, i64) -> Result<V, String>,
) -> Result<V, String> {
    let rank = cx.rank(x) as i64;
    let default = if cx.opset >= 13 { -1 } else { 1 };
    let axis = cx.attr_i("axis", default)?;
    let ax = if axis < 0 { axis + rank } else { axis };
    if !(0..rank.max(1)).contains(&ax) {
        return Err(format!(
            "attribute `axis` = {axis} is out of range for rank {rank}"
        ));
    }
    if cx.opset >= 13 || ax == rank - 1 || rank == 0 {
        return f(cx, x, axis);
    }
    let shape = cx.shape(x).clone();
    let mut flat: Vec<Dim> = shape.0[..ax as usize].to_vec();
    flat.push(Shape(shape.0[ax as usize..].to_vec()).numel());
    let r = cx.op(
        Op::Reshape,
        &[x],
        attrs([("shape", Attr::Shape(Shape(flat)))]),
    )?;
    let y = f(cx, r, -1)?;
    cx.op(Op::Reshape, &[y], attrs([("shape", Attr::Shape(shape))]))
}

fn softmax(cx: &mut NodeCtx, op: Op) -> R {
    let x = cx.input(0)?;
    let y = along_axis(cx, x, &mut |cx, v, axis| {
        cx.op(op, &[v], attrs([("axis", Attr::Int(axis))]))
    })?;
    Ok(vec![y])
}

/// One-hot of the (first) maximum along the axis.
fn hardmax(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let y = along_axis(cx, x, &mut |cx, v, axis| {
        let rank = cx.rank(v);
        let ax = if axis < 0 { axis + rank as i64 } else { axis } as usize;
        let n = cx
            .shape(v)
            .0
            .get(ax)
            .and_then(Dim::as_const)
            .ok_or("Hardmax needs a constant dim along its axis")?;
        let am = cx.op(
            Op::ArgMax,
            &[v],
            attrs([
                ("axis", Attr::Int(ax as i64)),
                ("keepdims", Attr::Bool(true)),
            ]),
        )?;
        let mut shape = vec![1usize; rank];
        shape[ax] = n as usize;
        let iota = cx.constant(Tensor::from_i64(DType::I64, shape, (0..n).collect()));
        let eq = cx.bin(Op::Equal, iota, am)?;
        let d = cx.dtype(v);
        cx.cast(eq, d)
    })?;
    Ok(vec![y])
}

fn cumulative(cx: &mut NodeCtx, op: Op) -> R {
    let x = cx.input(0)?;
    let axis = cx.const_ints(1, "axis")?;
    let [axis] = axis[..] else {
        return Err(format!("input 1 (axis) must hold one value, got {axis:?}"));
    };
    let exclusive = cx.attr_i("exclusive", 0)? != 0;
    let reverse = cx.attr_i("reverse", 0)? != 0;
    let a: Attrs = attrs([
        ("axis", Attr::Int(axis)),
        ("exclusive", Attr::Bool(exclusive)),
        ("reverse", Attr::Bool(reverse)),
    ]);
    Ok(vec![cx.op(op, &[x], a)?])
}
