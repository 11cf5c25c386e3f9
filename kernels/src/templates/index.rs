//! Data-dependent indexing: `dims` (a shape's values at run time), `gather_nd`,
//! `scatter_elements` / `scatter_nd` (a copy of the data, then the updates applied in
//! index order, serially, so duplicate indices resolve as the reference's do), and
//! `top_k` (k selection passes over the axis in the reference's total order: larger
//! first — or smaller — with NaN as +inf and ties to the lower index). Indices read
//! from data wrap when negative and are clamped into range, so a bad index never
//! reads or writes outside a buffer.

use super::{
    attr_bool, attr_int, attr_str, axis, compute_ty, fconst, load_elem, loop_nest, operand, result,
    setup, strides, to_storage, TResult,
};
use crate::builder::KernelBuilder;
use crate::loopir::{BinOp, BufId, Expr, Kernel, LoopTag, Ty, UnOp};
use llmc_ir::{Dim, Node, Op, TensorType};

/// `dims`: the dims of the `value` shape, evaluated with this run's symbols.
pub(crate) fn dims(node: &Node, outs: &[&TensorType], name: &str) -> TResult<Kernel> {
    let shape = match node.attrs.get("value") {
        Some(llmc_ir::Attr::Shape(s)) => s.clone(),
        _ => return Err("missing attribute `value` (a shape)".into()),
    };
    let (mut kb, _, ob) = setup(name, &[], outs)?;
    for (i, d) in shape.0.iter().enumerate() {
        let v = kb.dim(d);
        kb.store(ob[0], Expr::i(i as i64), v);
    }
    kb.finish()
}

/// An index read from data: negative wraps by `n`, then clamped into [0, n - 1].
fn safe(kb: &mut KernelBuilder, buf: BufId, at: Expr, n: Expr) -> Expr {
    let raw = kb.let_("ix", Expr::load(buf, at).cast(Ty::I64));
    let wrapped = Expr::select(raw.clone().lt(Expr::i(0)), raw.clone() + n.clone(), raw);
    kb.let_("at", wrapped.max(Expr::i(0)).min(n - 1))
}

/// The last dim of the indices: the tuple length.
fn tuple_len(ix: &TensorType) -> TResult<i64> {
    ix.shape
        .0
        .last()
        .and_then(Dim::as_const)
        .filter(|&k| k >= 1)
        .ok_or_else(|| format!("operand indices {} needs a constant last dim", ix.shape))
}

/// The flat offset in `data` (dims `dims`, from dim `first`) of the index tuple at
/// `ix[tuple * k ..]`.
fn tuple_offset(
    kb: &mut KernelBuilder,
    ixb: BufId,
    tuple: &Expr,
    k: i64,
    dims: &[Dim],
    first: usize,
) -> Expr {
    let st = strides(dims);
    let mut off = Expr::i(0);
    for j in 0..k as usize {
        let n = kb.dim(&dims[first + j]);
        let v = safe(kb, ixb, tuple.clone() * k + j as i64, n);
        let s = kb.dim(&st[first + j]);
        off = off + v * s;
    }
    kb.let_("off", off)
}

/// `gather_nd(data, indices)` with `batch_dims`.
pub(crate) fn gather_nd(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let d = operand(ins, 0, "data")?;
    let ix = operand(ins, 1, "indices")?;
    result(outs, 0)?;
    let b = attr_int(node, "batch_dims")?.unwrap_or(0).max(0) as usize;
    let k = tuple_len(ix)?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let nb = kb.numel(&d.shape.0[..b]);
    let inner = &d.shape.0[b..];
    let per_batch = kb.numel(inner);
    let slice = kb.numel(&d.shape.0[b + k as usize..]);
    let tuples = kb.numel(&ix.shape.0[b..ix.shape.rank() - 1]);
    kb.for_("bi", 0, nb, LoopTag::Serial, |kb, bi| {
        kb.for_("t", 0, tuples.clone(), LoopTag::Serial, |kb, t| {
            let tuple = kb.let_("tuple", bi.clone() * tuples.clone() + t);
            let off = tuple_offset(kb, ib[1], &tuple, k, inner, 0);
            let src = kb.let_("src", bi.clone() * per_batch.clone() + off);
            let dst = kb.let_("dst", tuple * slice.clone());
            kb.for_("e", 0, slice.clone(), LoopTag::Vectorize(8), |kb, e| {
                let v = load_elem(kb, ib[0], d.dtype, src.clone() + e.clone());
                let v = to_storage(kb, ob[0], v);
                kb.store(ob[0], dst.clone() + e, v);
            });
        });
    });
    kb.finish()
}

/// `scatter_elements` and `scatter_nd` (reductions none, add, mul, max, min).
pub(crate) fn scatter(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let d = operand(ins, 0, "data")?;
    let ix = operand(ins, 1, "indices")?;
    let u = operand(ins, 2, "updates")?;
    result(outs, 0)?;
    let red = attr_str(node, "reduction")?.unwrap_or("none").to_string();
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    // The result starts as a copy of the data.
    loop_nest(
        &mut kb,
        std::slice::from_ref(&d.shape.numel()),
        true,
        &mut |kb, c| {
            let v = load_elem(kb, ib[0], d.dtype, c[0].clone());
            let v = to_storage(kb, ob[0], v);
            kb.store(ob[0], c[0].clone(), v);
        },
    );
    let apply = |kb: &mut KernelBuilder, at: Expr, upd: Expr| -> Result<(), String> {
        let cur = load_elem(kb, ob[0], d.dtype.compute_type(), at.clone());
        let v = match red.as_str() {
            "none" => upd,
            "add" => Expr::bin(BinOp::Add, cur, upd),
            "mul" => Expr::bin(BinOp::Mul, cur, upd),
            "max" => Expr::bin(BinOp::Max, cur, upd),
            "min" => Expr::bin(BinOp::Min, cur, upd),
            other => return Err(format!("attribute `reduction` = {other:?} is unknown")),
        };
        let v = to_storage(kb, ob[0], v);
        kb.store(ob[0], at, v);
        Ok(())
    };
    let mut failure = None;
    if node.op == Op::ScatterElements {
        let rank = d.shape.rank();
        let ax = axis(attr_int(node, "axis")?.unwrap_or(0), rank, "axis")?;
        let ds = strides(&d.shape.0);
        let is = strides(&ix.shape.0);
        let ext: Vec<Expr> = ix.shape.0.iter().map(|x| kb.dim(x)).collect();
        // Serial: later updates of one position win (or accumulate) in index order.
        fn nest(
            kb: &mut KernelBuilder,
            ext: &[Expr],
            c: &mut Vec<Expr>,
            body: &mut dyn FnMut(&mut KernelBuilder, &[Expr]),
        ) {
            if c.len() == ext.len() {
                return body(kb, c);
            }
            let n = ext[c.len()].clone();
            kb.for_("i", 0, n, LoopTag::Serial, |kb, i| {
                c.push(i);
                nest(kb, ext, c, body);
                c.pop();
            });
        }
        let mut c = Vec::new();
        nest(&mut kb, &ext, &mut c, &mut |kb, c| {
            let q = super::offset(kb, c, &is);
            let q = kb.let_("q", q);
            let n = kb.dim(&d.shape.0[ax]);
            let row = safe(kb, ib[1], q.clone(), n);
            let mut p = Expr::i(0);
            for (k, ck) in c.iter().enumerate() {
                let s = kb.dim(&ds[k]);
                let pos = if k == ax { row.clone() } else { ck.clone() };
                p = p + pos * s;
            }
            let upd = load_elem(kb, ib[2], u.dtype, q);
            if let Err(e) = apply(kb, p, upd) {
                failure = Some(e);
            }
        });
    } else {
        let k = tuple_len(ix)?;
        let tuples = kb.numel(&ix.shape.0[..ix.shape.rank() - 1]);
        let slice = kb.numel(&d.shape.0[k as usize..]);
        kb.for_("n", 0, tuples, LoopTag::Serial, |kb, n| {
            let off = tuple_offset(kb, ib[1], &n, k, &d.shape.0, 0);
            kb.for_("e", 0, slice.clone(), LoopTag::Serial, |kb, e| {
                let upd = load_elem(kb, ib[2], u.dtype, n.clone() * slice.clone() + e.clone());
                if let Err(er) = apply(kb, off.clone() + e, upd) {
                    failure = Some(er);
                }
            });
        });
    }
    if let Some(e) = failure {
        return Err(e);
    }
    kb.finish()
}

/// `top_k(x)`: values and i64 indices of the k first elements along `axis`.
pub(crate) fn top_k(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    result(outs, 1)?;
    let ax = axis(
        attr_int(node, "axis")?.unwrap_or(-1),
        x.shape.rank(),
        "axis",
    )?;
    let k = attr_int(node, "k")?.ok_or("missing attribute `k`")?;
    let largest = attr_bool(node, "largest", true)?;
    let t = compute_ty(x.dtype)?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let outer = kb.numel(&x.shape.0[..ax]);
    let n = kb.dim(&x.shape.0[ax]);
    let inner = kb.numel(&x.shape.0[ax + 1..]);
    // The sort key: NaN counts as +inf.
    let key = |v: Expr| -> Expr {
        if t.is_float() {
            Expr::select(
                Expr::un(UnOp::IsNan, v.clone()),
                fconst(f64::INFINITY, t),
                v,
            )
        } else {
            v
        }
    };
    // Does (ka, ia) come before (kb, ib) in the output order?
    let before = |ka: Expr, ia: Expr, kb_: Expr, ib_: Expr| -> Expr {
        let strictly = if largest {
            ka.clone().gt(kb_.clone())
        } else {
            ka.clone().lt(kb_.clone())
        };
        strictly.or(ka.eq_(kb_).and(ia.lt(ib_)))
    };
    let init = if t.is_float() {
        fconst(0.0, t)
    } else {
        Expr::Int(0, t)
    };
    kb.for_("o", 0, outer, LoopTag::Serial, |kb, o| {
        kb.for_("c", 0, inner.clone(), LoopTag::Serial, |kb, c| {
            let base = kb.let_("base", o.clone() * n.clone() * inner.clone() + c.clone());
            let at = |p: Expr| base.clone() + p * inner.clone();
            // The previous pick (none before the first: index -1).
            let pk = kb.let_mut("pk", init.clone());
            let pi = kb.let_mut("pi", Expr::i(-1));
            kb.for_("j", 0, k, LoopTag::Serial, |kb, j| {
                let bk = kb.let_mut("bk", init.clone());
                let bi = kb.let_mut("bi", Expr::i(-1));
                kb.for_("p", 0, n.clone(), LoopTag::Serial, |kb, p| {
                    let v = load_elem(kb, ib[0], x.dtype, at(p.clone()));
                    let kv = kb.let_("kv", key(v));
                    let after_prev = Expr::Var(pi).lt(Expr::i(0)).or(before(
                        Expr::Var(pk),
                        Expr::Var(pi),
                        kv.clone(),
                        p.clone(),
                    ));
                    let better = Expr::Var(bi).lt(Expr::i(0)).or(before(
                        kv.clone(),
                        p.clone(),
                        Expr::Var(bk),
                        Expr::Var(bi),
                    ));
                    let take = kb.let_("take", after_prev.and(better));
                    kb.assign(bk, Expr::select(take.clone(), kv, Expr::Var(bk)));
                    kb.assign(bi, Expr::select(take, p, Expr::Var(bi)));
                });
                let dst = o.clone() * k * inner.clone() + j * inner.clone() + c.clone();
                let dst = kb.let_("dst", dst);
                // k never exceeds the axis, so a pick exists; guard reads anyway.
                kb.if_(Expr::Var(bi).ge(Expr::i(0)), |kb| {
                    let v = load_elem(kb, ib[0], x.dtype, at(Expr::Var(bi)));
                    let v = to_storage(kb, ob[0], v);
                    kb.store(ob[0], dst.clone(), v);
                    kb.store(ob[1], dst.clone(), Expr::Var(bi));
                });
                kb.assign(pk, Expr::Var(bk));
                kb.assign(pi, Expr::Var(bi));
            });
        });
    });
    kb.finish()
}
