//! The generic elementwise template: any op with the `ELEMENTWISE` flag, its operands
//! broadcast numpy-style through per-operand strides (0 on broadcast dims), dims that
//! every operand walks contiguously merged into one loop. Each op's scalar meaning is
//! one arm of [`scalar`], written in the operands' compute type (f16/bf16 compute in
//! f32 and round once on store, as the reference rounds once from f64).

use super::{
    attr_float, broadcast_strides, compute_ty, fconst, load_elem, loop_nest, merge_dims, offset,
    setup, strides, to_storage, TResult,
};
use crate::loopir::{BinOp, Expr, LoopTag, Ty, UnOp};
use llmc_ir::ops::fused_gemm::Act;
use llmc_ir::{Node, Op, TensorType};

/// The kernel of an elementwise node.
pub(crate) fn elementwise(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<crate::loopir::Kernel> {
    let out = super::result(outs, 0)?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let shape = &out.shape.0;
    let mut all: Vec<Vec<llmc_ir::Dim>> = ins
        .iter()
        .map(|t| broadcast_strides(shape, &t.shape.0))
        .collect();
    all.push(strides(shape));
    let (ext, st) = merge_dims(shape, &all);
    let arg_tys: Vec<Ty> = ins
        .iter()
        .map(|t| compute_ty(t.dtype))
        .collect::<TResult<_>>()?;
    let out_ct = compute_ty(out.dtype)?;
    let vectorize = true;
    let mut failure = None;
    loop_nest(&mut kb, &ext, vectorize, &mut |kb, coords| {
        let mut args = Vec::new();
        for (k, t) in ins.iter().enumerate() {
            let off = offset(kb, coords, &st[k]);
            args.push(load_elem(kb, ib[k], t.dtype, off));
        }
        let v = if node.op == Op::FusedElementwise {
            fused(kb, node, &args, &arg_tys, ins)
        } else {
            scalar(node, &args, &arg_tys, out_ct)
        };
        match v {
            Ok(v) => {
                let o = offset(kb, coords, &st[ins.len()]);
                let v = to_storage(kb, ob[0], v);
                kb.store(ob[0], o, v);
            }
            Err(e) => failure = Some(e),
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    kb.finish()
}

/// The scalar meaning of a `fused_elementwise` node: its expression built bottom-up from
/// each op's own [`scalar`] arm, every intermediate bound to a variable once (an
/// operand read twice, as silu reads x, is not recomputed), all in one loop body.
fn fused(
    kb: &mut crate::builder::KernelBuilder,
    node: &Node,
    args: &[Expr],
    tys: &[Ty],
    ins: &[&TensorType],
) -> TResult<Expr> {
    use llmc_ir::ops::fused::{expr_of, FusedExpr};
    fn build(
        kb: &mut crate::builder::KernelBuilder,
        e: &FusedExpr,
        args: &[Expr],
        tys: &[Ty],
        ins: &[&TensorType],
    ) -> TResult<(Expr, Ty)> {
        match e {
            FusedExpr::Arg(k) => match (args.get(*k), tys.get(*k)) {
                (Some(a), Some(t)) => Ok((a.clone(), *t)),
                _ => Err(format!("expr reads ${k}, which does not exist")),
            },
            FusedExpr::Apply(op, kids) => {
                let mut xs = Vec::with_capacity(kids.len());
                let mut ts = Vec::with_capacity(kids.len());
                for k in kids {
                    let (x, t) = build(kb, k, args, tys, ins)?;
                    xs.push(x);
                    ts.push(t);
                }
                let out = compute_ty(e.infer(ins)?.dtype)?;
                let sub = Node {
                    op: *op,
                    inputs: Vec::new(),
                    outputs: Vec::new(),
                    attrs: llmc_ir::Attrs::new(),
                };
                let v = scalar(&sub, &xs, &ts, out)?;
                Ok((kb.let_(op.name(), v), out))
            }
        }
    }
    let e = expr_of(&node.attrs)?;
    build(kb, &e, args, tys, ins).map(|(v, _)| v)
}

fn un(op: UnOp, x: Expr) -> Expr {
    Expr::un(op, x)
}

fn b(op: BinOp, x: Expr, y: Expr) -> Expr {
    Expr::bin(op, x, y)
}

/// The scalar meaning of an elementwise op on compute-type operands; the result is in
/// the result's compute type `out`.
pub(crate) fn scalar(node: &Node, a: &[Expr], tys: &[Ty], out: Ty) -> TResult<Expr> {
    let x = || a.first().cloned().ok_or("missing operand 0".to_string());
    let y = || a.get(1).cloned().ok_or("missing operand 1".to_string());
    let t = tys.first().copied().unwrap_or(out);
    let one = || fconst(1.0, t);
    let zero = || {
        if t.is_float() {
            fconst(0.0, t)
        } else {
            Expr::Int(0, t)
        }
    };
    Ok(match node.op {
        Op::Neg => un(UnOp::Neg, x()?),
        Op::Abs => un(UnOp::Abs, x()?),
        Op::Exp => super::exp(x()?),
        Op::Log => un(UnOp::Log, x()?),
        Op::Sqrt => un(UnOp::Sqrt, x()?),
        Op::Rsqrt => b(BinOp::Div, one(), un(UnOp::Sqrt, x()?)),
        Op::Reciprocal => b(BinOp::Div, one(), x()?),
        Op::Tanh => un(UnOp::Tanh, x()?),
        Op::Sigmoid => sigmoid(x()?, t),
        Op::Silu => b(BinOp::Mul, x()?, sigmoid(x()?, t)),
        Op::Gelu => {
            let x = x()?;
            let half_x = b(BinOp::Mul, fconst(0.5, t), x.clone());
            let inner = if super::attr_str(node, "approximate")? == Some("tanh") {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                let cube = b(BinOp::Mul, b(BinOp::Mul, x.clone(), x.clone()), x.clone());
                let arg = b(
                    BinOp::Mul,
                    fconst(c, t),
                    b(BinOp::Add, x, b(BinOp::Mul, fconst(0.044715, t), cube)),
                );
                un(UnOp::Tanh, arg)
            } else {
                // x · (1/√2): a multiply where a division costs ~5× (the linear's
                // GELU epilogue runs once per output).
                un(
                    UnOp::Erf,
                    b(BinOp::Mul, x, fconst(std::f64::consts::FRAC_1_SQRT_2, t)),
                )
            };
            b(BinOp::Mul, half_x, b(BinOp::Add, one(), inner))
        }
        Op::Erf => un(UnOp::Erf, x()?),
        Op::Sin => un(UnOp::Sin, x()?),
        Op::Cos => un(UnOp::Cos, x()?),
        Op::Floor => un(UnOp::Floor, x()?),
        Op::Ceil => un(UnOp::Ceil, x()?),
        Op::Round => un(UnOp::Round, x()?),
        Op::Relu => {
            let x = x()?;
            Expr::select(x.clone().gt(zero()), x, zero())
        }
        Op::Sign => {
            let x = x()?;
            let (p, n) = if t.is_float() {
                (fconst(1.0, t), fconst(-1.0, t))
            } else {
                (Expr::Int(1, t), Expr::Int(-1, t))
            };
            // Float zero and NaN pass through (sign(-0.0) = -0.0, sign(NaN) = NaN).
            Expr::select(
                x.clone().gt(zero()),
                p,
                Expr::select(
                    x.clone().lt(zero()),
                    n,
                    if t.is_float() { x } else { zero() },
                ),
            )
        }
        Op::Not => un(UnOp::Not, x()?),
        Op::Clip => clip(node, x()?, t)?,
        Op::Cast => x()?.cast(out),
        Op::Add => b(BinOp::Add, x()?, y()?),
        Op::Sub => b(BinOp::Sub, x()?, y()?),
        Op::Mul => b(BinOp::Mul, x()?, y()?),
        Op::Div => b(BinOp::Div, x()?, y()?),
        Op::Pow => b(BinOp::Pow, x()?, y()?),
        Op::Max => b(BinOp::Max, x()?, y()?),
        Op::Min => b(BinOp::Min, x()?, y()?),
        Op::Equal => b(BinOp::Eq, x()?, y()?),
        Op::Less => b(BinOp::Lt, x()?, y()?),
        Op::LessEqual => b(BinOp::Le, x()?, y()?),
        Op::Greater => b(BinOp::Gt, x()?, y()?),
        Op::GreaterEqual => b(BinOp::Ge, x()?, y()?),
        Op::And => b(BinOp::And, x()?, y()?),
        Op::Or => b(BinOp::Or, x()?, y()?),
        Op::Xor => b(BinOp::Xor, x()?, y()?),
        Op::Atan => un(UnOp::Atan, x()?),
        Op::Mod => {
            // fmod keeps the dividend's sign; the default (Python) mod takes the
            // divisor's: r + y when r is nonzero and the signs differ.
            let (x, y) = (x()?, y()?);
            let r = b(BinOp::Rem, x, y.clone());
            if super::attr_bool(node, "fmod", false)? {
                r
            } else {
                let zero = zero();
                let differ = b(
                    BinOp::Ne,
                    r.clone().lt(zero.clone()),
                    y.clone().lt(zero.clone()),
                );
                let fix = r.clone().ne_(zero).and(differ);
                Expr::select(fix, b(BinOp::Add, r.clone(), y), r)
            }
        }
        Op::BitwiseAnd => b(BinOp::And, x()?, y()?),
        Op::BitwiseOr => b(BinOp::Or, x()?, y()?),
        Op::BitwiseXor => b(BinOp::Xor, x()?, y()?),
        Op::BitwiseNot => un(UnOp::Not, x()?),
        Op::BitShift => {
            let left = match super::attr_str(node, "direction")? {
                Some("left") => true,
                Some("right") => false,
                other => {
                    return Err(format!(
                        "attribute `direction` = {other:?} must be \"left\" or \"right\""
                    ))
                }
            };
            let (x, s) = (x()?, y()?);
            let width = (t.bytes() * 8) as i64;
            // A shift by a negative amount or the width or more shifts everything out.
            let inside = s
                .clone()
                .ge(Expr::Int(0, t))
                .and(s.clone().lt(Expr::Int(width, t)));
            let safe = Expr::select(inside.clone(), s, Expr::Int(0, t));
            let shifted = b(if left { BinOp::Shl } else { BinOp::Shr }, x.clone(), safe);
            let out_of_range = if left || t.is_unsigned() {
                zero()
            } else {
                Expr::select(x.lt(zero()), Expr::Int(-1, t), zero())
            };
            Expr::select(inside, shifted, out_of_range)
        }
        Op::Where => {
            let c = x()?;
            let (p, q) = (
                y()?,
                a.get(2).cloned().ok_or("missing operand 2".to_string())?,
            );
            Expr::select(c, p, q)
        }
        other => return Err(format!("`{other}` has no elementwise meaning")),
    })
}

/// The scalar meaning of a fused op's activation (`act` of `linear_act` and `glu`):
/// the arm of [`scalar`] for the unfused op it stands for. `x` should be a variable
/// (it may be read more than once).
pub(crate) fn activation(act: Act, x: Expr, t: Ty) -> Expr {
    let (op, attrs) = act.op();
    let node = Node {
        op,
        inputs: Vec::new(),
        outputs: Vec::new(),
        attrs,
    };
    // Every `Act` names a unary float op `scalar` has an arm for.
    scalar(&node, std::slice::from_ref(&x), &[t], t).unwrap_or(x)
}

/// `glu`: act(gate) · up over rows of the result's last dim `n`; the gate and up
/// values are at columns `j` and `n + j` of one operand's rows of `2n`, or at `j`
/// of two operands' rows.
pub(crate) fn glu(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<crate::loopir::Kernel> {
    let act = Act::of_attrs(&node.attrs)?;
    let out = super::result(outs, 0)?;
    let g = super::operand(ins, 0, "gate")?;
    let r = out.shape.rank();
    let n = r
        .checked_sub(1)
        .and_then(|l| out.shape.0.get(l))
        .and_then(|d| d.as_const())
        .ok_or_else(|| format!("result {} must have a constant last dim", out.shape))?;
    let t = compute_ty(out.dtype)?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let rows = kb.numel(&out.shape.0[..r - 1]);
    let rows = kb.let_("rows", rows);
    let two = ins.len() == 2;
    let (gd, ud) = (g.dtype, ins.get(1).map_or(g.dtype, |u| u.dtype));
    let row_in = if two { n } else { 2 * n };
    // Rows in parallel on a CPU (a prefill or a batched step has many; one row runs
    // inline); the GPU mapping strides a row's elements over a block's threads.
    let tag = if !super::gpu_mapping() && super::worth_threads(super::work_estimate(&out.shape.0)) {
        LoopTag::Parallel
    } else {
        LoopTag::Serial
    };
    let elem = |kb: &mut crate::builder::KernelBuilder, base: Expr, obase: Expr, j: Expr| {
        let gv = load_elem(kb, ib[0], gd, base.clone() + j.clone());
        let gv = kb.let_("g", gv.cast(t));
        let uv = if two {
            load_elem(kb, ib[1], ud, base.clone() + j.clone())
        } else {
            load_elem(kb, ib[0], gd, base + j.clone() + n)
        };
        let v = b(BinOp::Mul, activation(act, gv, t), uv.cast(t));
        let v = to_storage(kb, ob[0], v);
        kb.store(ob[0], obase + j, v);
    };
    if super::gpu_mapping() {
        // One GPU thread per output element.
        kb.for_("i", 0, rows * n, LoopTag::Parallel, |kb, i| {
            let row = kb.let_("row", i.clone() / n);
            let j = kb.let_("j", i % n);
            elem(kb, row.clone() * row_in, row * n, j);
        });
        return kb.finish();
    }
    kb.for_("r", 0, rows, tag, |kb, row| {
        let base = kb.let_("base", row.clone() * row_in);
        let obase = kb.let_("obase", row * n);
        kb.for_("j", 0, n, LoopTag::Vectorize(16), |kb, j| {
            let gv = load_elem(kb, ib[0], gd, base.clone() + j.clone());
            let gv = kb.let_("g", gv.cast(t));
            let uv = if two {
                load_elem(kb, ib[1], ud, base.clone() + j.clone())
            } else {
                load_elem(kb, ib[0], gd, base.clone() + j.clone() + n)
            };
            let v = b(BinOp::Mul, activation(act, gv, t), uv.cast(t));
            let v = to_storage(kb, ob[0], v);
            kb.store(ob[0], obase.clone() + j, v);
        });
    });
    kb.finish()
}

/// 1 / (1 + e^-x).
fn sigmoid(x: Expr, t: Ty) -> Expr {
    b(
        BinOp::Div,
        fconst(1.0, t),
        b(BinOp::Add, fconst(1.0, t), super::exp(un(UnOp::Neg, x))),
    )
}

/// ONNX Clip: min(max(x, lo), hi) with NaN passing through; integer bounds are the
/// integers inside [lo, hi] (saturated to the type's range).
fn clip(node: &Node, x: Expr, t: Ty) -> TResult<Expr> {
    let lo = attr_float(node, "min")?;
    let hi = attr_float(node, "max")?;
    let bound = |v: f64, up: bool| -> Expr {
        if t.is_float() {
            fconst(v, t)
        } else {
            let r = if up { v.ceil() } else { v.floor() };
            let (min, max) = int_range(t);
            Expr::Int((r.max(min as f64).min(max as f64)) as i64, t)
        }
    };
    let mut y = x;
    if let Some(lo) = lo {
        let l = bound(lo, true);
        y = Expr::select(y.clone().lt(l.clone()), l, y);
    }
    if let Some(hi) = hi {
        let h = bound(hi, false);
        y = Expr::select(y.clone().gt(h.clone()), h, y);
    }
    Ok(y)
}

/// The value range of an integer type.
pub(crate) fn int_range(t: Ty) -> (i64, i64) {
    match t {
        Ty::I8 => (i8::MIN as i64, i8::MAX as i64),
        Ty::U8 => (0, 255),
        Ty::U16 => (0, u16::MAX as i64),
        Ty::U32 => (0, u32::MAX as i64),
        Ty::I16 => (i16::MIN as i64, i16::MAX as i64),
        Ty::I32 => (i32::MIN as i64, i32::MAX as i64),
        Ty::Bool => (0, 1),
        _ => (i64::MIN, i64::MAX),
    }
}
