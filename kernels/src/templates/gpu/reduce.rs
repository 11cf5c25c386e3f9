//! `argmax` / `argmin` over the last axis on the GPU: a block per row. The CPU
//! template's generic mapping runs a thread per row, one serial scan of the whole row
//! (49,152 logits for SmolLM2: the serving form's greedy picks, docs/cuda.md). Here the
//! block's threads stride over the row, each keeping its best (value, index), and the
//! pairs meet through warp shuffles, then shared memory across warps.
//!
//! The order is the reference's (`eval_argmax`): NaN counts as the extreme, and among
//! equal values (or NaNs) the lowest index wins. A pair is better than another when its
//! value is (NaN beats any number), or when the values tie and its index is lower. That
//! is a total order on (value, index), so the reduction tree's shape cannot change the
//! result, and every lane of a butterfly ends with the same pair.

use super::super::{attr_int, axis, compute_ty, load_elem, operand, result, setup};
use crate::builder::KernelBuilder;
use crate::loopir::{Expr, LoopTag, Ty, UnOp, VarId};
use crate::templates::{Lowered, TResult};
use llmc_ir::{Node, Op, TensorType};

/// Threads per row block.
const THREADS: i64 = 1024;

/// Elements each thread loads before it compares any of them: a thread's loads are
/// then in flight together, not one per compare (a block per row is all a decode step
/// has: 32 KB in flight instead of 4 KB).
const UNROLL: i64 = 8;

/// Whether `(e, ei)` beats `(b, bi)`: for `max`, NaN above every number, then the
/// larger value; ties (equal values, or both NaN) to the lower index.
fn better(e: &Expr, ei: &Expr, b: &Expr, bi: &Expr, max: bool) -> Expr {
    let nan = |x: &Expr| Expr::un(UnOp::IsNan, x.clone());
    let cmp = if max {
        e.clone().gt(b.clone())
    } else {
        e.clone().lt(b.clone())
    };
    let strictly = Expr::un(UnOp::Not, nan(b)).and(nan(e).or(cmp));
    let tie = (nan(e).and(nan(b))).or(e.clone().eq_(b.clone()));
    strictly.or(tie.and(ei.clone().lt(bi.clone())))
}

/// Replaces `(v, i)` by the better of it and `(e, ei)`.
fn keep_better(kb: &mut KernelBuilder, v: VarId, i: VarId, e: Expr, ei: Expr, max: bool) {
    let take = kb.let_("take", better(&e, &ei, &Expr::Var(v), &Expr::Var(i), max));
    kb.assign(v, Expr::select(take.clone(), e, Expr::Var(v)));
    kb.assign(i, Expr::select(take, ei, Expr::Var(i)));
}

/// The GPU kernel of `argmax`/`argmin` (`None`, for the generic mapping, unless the
/// axis is the last, its length a constant below 2^31 and the values float).
pub(crate) fn arg_extreme(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Option<Lowered>> {
    let x = operand(ins, 0, "x")?;
    result(outs, 0)?;
    let rank = x.shape.rank();
    let ax = axis(
        attr_int(node, "axis")?.ok_or("missing attribute `axis`")?,
        rank,
        "axis",
    )?;
    let Some((d, lead)) = x.shape.0.split_last() else {
        return Ok(None);
    };
    let t = compute_ty(x.dtype)?;
    let Some(n) = d.as_const() else {
        return Ok(None);
    };
    if ax + 1 != rank || !t.is_float() || n <= 0 || n >= i32::MAX as i64 {
        return Ok(None);
    }
    let max = node.op == Op::ArgMax;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let rows = kb.numel(lead);
    let rows = kb.let_("rows", rows);
    let warps = THREADS / 32;
    // A thread with no element keeps the worst pair: the other extreme, an index past
    // every real one (a real element equal to it wins the tie).
    let worst = if max {
        f64::NEG_INFINITY
    } else {
        f64::INFINITY
    };
    let none = Expr::Int(i32::MAX as i64, Ty::I32);
    kb.for_("r", 0, rows, LoopTag::GpuGrid(0), |kb, r| {
        let shv = kb.shared("shv", t, warps);
        let shi = kb.shared("shi", Ty::I32, warps);
        kb.for_("tid", 0, THREADS, LoopTag::GpuBlock(0), |kb, tid| {
            let base = kb.let_("base", r.clone() * n);
            let v = kb.let_mut("bv", Expr::f(worst, t));
            let i = kb.let_mut("bi", none.clone());
            // Whole chunks of UNROLL x THREADS elements, then the rest one at a time;
            // each thread meets its elements in increasing index order.
            let chunk = THREADS * UNROLL;
            let full = n / chunk;
            if full > 0 {
                kb.for_("c", 0, full, LoopTag::Serial, |kb, c| {
                    let j0 = kb.let_("j0", c * chunk + tid.clone());
                    let es: Vec<Expr> = (0..UNROLL)
                        .map(|u| {
                            let at = base.clone() + j0.clone() + u * THREADS;
                            kb.let_("e", load_elem(kb, ib[0], x.dtype, at))
                        })
                        .collect();
                    for (u, e) in es.into_iter().enumerate() {
                        let j = j0.clone() + (u as i64) * THREADS;
                        keep_better(kb, v, i, e, j.cast(Ty::I32), max);
                    }
                });
            }
            kb.for_step(
                "j",
                tid.clone() + full * chunk,
                n,
                THREADS,
                LoopTag::Serial,
                |kb, j| {
                    let e = kb.let_("e", load_elem(kb, ib[0], x.dtype, base.clone() + j.clone()));
                    keep_better(kb, v, i, e, j.cast(Ty::I32), max);
                },
            );
            for m in [16, 8, 4, 2, 1] {
                let ov = kb.let_mut("ov", Expr::f(0.0, t));
                let oi = kb.let_mut("oi", Expr::Int(0, Ty::I32));
                kb.shuffle_xor(ov, Expr::Var(v), m);
                kb.shuffle_xor(oi, Expr::Var(i), m);
                keep_better(kb, v, i, Expr::Var(ov), Expr::Var(oi), max);
            }
            kb.if_((tid.clone() % 32).eq_(Expr::i(0)), |kb| {
                kb.store(shv, tid.clone() / 32, Expr::Var(v));
                kb.store(shi, tid.clone() / 32, Expr::Var(i));
            });
            kb.barrier();
            kb.if_(tid.clone().eq_(Expr::i(0)), |kb| {
                for w in 1..warps {
                    let e = Expr::load(shv, Expr::i(w));
                    let ei = Expr::load(shi, Expr::i(w));
                    keep_better(kb, v, i, e, ei, max);
                }
                kb.store(ob[0], r.clone(), Expr::Var(i).cast(Ty::I64));
            });
        });
    });
    Ok(Some(Lowered::Kernel {
        kernel: kb.finish()?,
        packs: Vec::new(),
        consts: Vec::new(),
        in_place: Vec::new(),
    }))
}
