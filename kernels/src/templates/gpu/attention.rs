//! `flash_attention` / `attention` on the GPU: a warp per query row, [`WARPS`] rows
//! per block. Lane `l` owns head-dim columns `l, l + 32, ...` of q (kept in
//! registers) and of the output accumulator; for each key the lanes' partial q·k go
//! through a shuffle butterfly (every lane gets the same score), then the online
//! softmax (running max `m`, running sum `l`, the accumulator rescaled by
//! `exp(m_old - m_new)`) is updated per key, so no score row is stored. GQA, causal
//! bounds, an additive mask and `causal_fill` mean what they mean on the CPU.

use super::super::{
    attr_bool, attr_float, broadcast_strides, compute_ty, fconst, load_elem, offset, operand,
    result, setup, to_storage,
};
use super::warp_sum;
use crate::builder::KernelBuilder;
use crate::loopir::{BinOp, Expr, LoopTag, Ty, UnOp};
use crate::templates::{Lowered, TResult};
use llmc_ir::{Node, Op, TensorType};

/// Query rows (warps) per block.
const WARPS: i64 = 4;

fn b(op: BinOp, x: Expr, y: Expr) -> Expr {
    Expr::bin(op, x, y)
}

/// The GPU attention kernel (`None` for non-f32 compute or symbolic head dims).
pub(crate) fn attention(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Option<Lowered>> {
    let q = operand(ins, 0, "q")?;
    let k = operand(ins, 1, "k")?;
    let v = operand(ins, 2, "v")?;
    result(outs, 0)?;
    let scale = attr_float(node, "scale")?.ok_or("missing attribute `scale`")?;
    let causal = attr_bool(node, "causal", false)?;
    let fill = if node.op == Op::FlashAttention {
        attr_float(node, "causal_fill")?.filter(|_| causal)
    } else {
        None
    };
    let t = compute_ty(q.dtype)?;
    if t != Ty::F32 {
        return Ok(None);
    }
    let [bd, hd, sd, dkd] = &q.shape.0[..] else {
        return Err(format!("operand q must be [b, h, s, dk], got {}", q.shape));
    };
    let [_, kvhd, td, _] = &k.shape.0[..] else {
        return Err(format!(
            "operand k must be [b, kvh, t, dk], got {}",
            k.shape
        ));
    };
    let (Some(dk), Some(dv)) = (dkd.as_const(), v.shape.0.get(3).and_then(|d| d.as_const())) else {
        return Ok(None);
    };
    let group = match (hd.as_const(), kvhd.as_const()) {
        (Some(h), Some(kvh)) if kvh > 0 && h % kvh == 0 => h / kvh,
        _ if hd == kvhd => 1,
        _ => return Ok(None),
    };
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let (be, he, se, te, kvhe) = (kb.dim(bd), kb.dim(hd), kb.dim(sd), kb.dim(td), kb.dim(kvhd));
    let mask = match ins.get(3) {
        Some(m) => {
            let full = [bd.clone(), hd.clone(), sd.clone(), td.clone()];
            Some((ib[3], m.dtype, broadcast_strides(&full, &m.shape.0)))
        }
        None => None,
    };
    let nd = (dk + 31) / 32;
    let nv = (dv + 31) / 32;
    let nq = kb.let_("nq", be * he.clone() * se.clone());
    let blocks = kb.let_("nqb", (nq.clone() + (WARPS - 1)) / WARPS);
    let ninf = || fconst(f64::NEG_INFINITY, t);
    kb.for_("qb", 0, blocks, LoopTag::GpuGrid(0), |kb, qb| {
        kb.for_("tid", 0, WARPS * 32, LoopTag::GpuBlock(0), |kb, tid| {
            let lane = kb.let_("lane", tid.clone() % 32);
            let qi = kb.let_("qi", qb * WARPS + tid / 32);
            kb.if_(qi.clone().lt(nq.clone()), |kb| {
                let si = kb.let_("si", qi.clone() % se.clone());
                let bh = kb.let_("bh", qi.clone() / se.clone());
                let hi = kb.let_("hi", bh.clone() % he.clone());
                let bi = kb.let_("bi", bh / he.clone());
                let kvi = kb.let_("kvi", hi.clone() / group);
                let kvbase = kb.let_("kvbase", (bi.clone() * kvhe.clone() + kvi) * te.clone());
                // This lane's columns: lane + 32 i, for i < n while < dim.
                let col = |i: i64| lane.clone() + 32 * i;
                let guarded =
                    |kb: &mut KernelBuilder,
                     dim: i64,
                     i: i64,
                     f: &mut dyn FnMut(&mut KernelBuilder)| {
                        if dim % 32 == 0 {
                            f(kb)
                        } else {
                            kb.if_(col(i).lt(Expr::i(dim)), |kb| f(kb))
                        }
                    };
                let qv = kb.local("qv", t, nd);
                let acc = kb.local("acc", t, nv);
                for i in 0..nd {
                    kb.store(qv, Expr::i(i), fconst(0.0, t));
                    guarded(kb, dk, i, &mut |kb| {
                        let x = load_elem(kb, ib[0], q.dtype, qi.clone() * dk + col(i));
                        kb.store(qv, Expr::i(i), x);
                    });
                }
                for i in 0..nv {
                    kb.store(acc, Expr::i(i), fconst(0.0, t));
                }
                let m = kb.let_mut("m", ninf());
                let l = kb.let_mut("l", fconst(0.0, t));
                // One key: score (plus `extra`), then the online-softmax update.
                let key = |kb: &mut KernelBuilder, j: Expr, extra: Option<f64>| {
                    let krow = kb.let_("krow", (kvbase.clone() + j.clone()) * dk);
                    let part = kb.let_mut("part", fconst(0.0, t));
                    for i in 0..nd {
                        guarded(kb, dk, i, &mut |kb| {
                            let kv = load_elem(kb, ib[1], k.dtype, krow.clone() + col(i));
                            let p = b(BinOp::Mul, Expr::load(qv, Expr::i(i)), kv);
                            kb.assign(part, b(BinOp::Add, Expr::Var(part), p));
                        });
                    }
                    let dot = warp_sum(kb, Expr::Var(part));
                    let mut sc = b(BinOp::Mul, dot, fconst(scale, t));
                    match extra {
                        Some(f) => sc = b(BinOp::Add, sc, fconst(f, t)),
                        None => {
                            if let Some((mb, md, st)) = &mask {
                                let coords = [bi.clone(), hi.clone(), si.clone(), j.clone()];
                                let at = offset(kb, &coords, st);
                                sc = b(BinOp::Add, sc, load_elem(kb, *mb, *md, at));
                            }
                        }
                    }
                    let sc = kb.let_("sc", sc);
                    // Warp-uniform (every lane has the same score).
                    kb.if_(sc.clone().ne_(ninf()), |kb| {
                        let mn = kb.let_("mn", Expr::Var(m).max(sc.clone()));
                        let corr = kb.let_(
                            "corr",
                            Expr::un(UnOp::Exp, b(BinOp::Sub, Expr::Var(m), mn.clone())),
                        );
                        let p = kb.let_(
                            "p",
                            Expr::un(UnOp::Exp, b(BinOp::Sub, sc.clone(), mn.clone())),
                        );
                        kb.assign(
                            l,
                            b(
                                BinOp::Add,
                                b(BinOp::Mul, Expr::Var(l), corr.clone()),
                                p.clone(),
                            ),
                        );
                        let vrow = kb.let_("vrow", (kvbase.clone() + j.clone()) * dv);
                        for i in 0..nv {
                            guarded(kb, dv, i, &mut |kb| {
                                let vv = load_elem(kb, ib[2], v.dtype, vrow.clone() + col(i));
                                let a = b(BinOp::Mul, Expr::load(acc, Expr::i(i)), corr.clone());
                                kb.store(
                                    acc,
                                    Expr::i(i),
                                    b(BinOp::Add, a, b(BinOp::Mul, p.clone(), vv)),
                                );
                            });
                        }
                        kb.assign(m, mn);
                    });
                };
                // (At least 0: with more queries than keys the first see none.)
                let tend = if causal {
                    (si.clone() + te.clone() - se.clone() + 1)
                        .min(te.clone())
                        .max(Expr::i(0))
                } else {
                    te.clone()
                };
                let tend = kb.let_("tend", tend);
                kb.for_("j", 0, tend.clone(), LoopTag::Serial, |kb, j| {
                    key(kb, j, None)
                });
                if let Some(fill) = fill {
                    // As the CPU kernel: keys past the causal bound count only when every
                    // visible key was masked (the max is itself a masked score).
                    kb.if_(Expr::Var(m).le(fconst(fill * 0.5, t)), |kb| {
                        kb.for_("j", tend.clone(), te.clone(), LoopTag::Serial, |kb, j| {
                            key(kb, j, Some(fill))
                        });
                    });
                }
                let inv = kb.let_(
                    "inv",
                    Expr::select(
                        Expr::Var(l).ne_(fconst(0.0, t)),
                        b(BinOp::Div, fconst(1.0, t), Expr::Var(l)),
                        fconst(0.0, t),
                    ),
                );
                for i in 0..nv {
                    guarded(kb, dv, i, &mut |kb| {
                        let y = b(BinOp::Mul, Expr::load(acc, Expr::i(i)), inv.clone());
                        let y = to_storage(kb, ob[0], y);
                        kb.store(ob[0], qi.clone() * dv + col(i), y);
                    });
                }
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
