//! Kernels of the serving form's paged KV cache: `paged_kv_write` scatters the step's
//! new keys and values into their pool slots (in place: the results are the pool
//! buffers), and `paged_attention` walks each row's block table one block at a time
//! with an online softmax. The attention loop runs over (row, kv head) pairs in
//! parallel; the query heads of one GQA group are handled together, so each K/V block
//! is read from memory once for the whole group. A row's reduction order depends only
//! on its own sequence (never on the other rows of the step): batch invariance.

use super::{
    attr_float, attr_int, compute_ty, exp, fconst, load_elem, operand, result, setup, to_storage,
    work_estimate, TResult, PARALLEL_MIN,
};
use crate::loopir::{BinOp, Expr, Kernel, LoopTag, Ty, UnOp};
use llmc_ir::{Dim, Node, TensorType};

fn b(op: BinOp, x: Expr, y: Expr) -> Expr {
    Expr::bin(op, x, y)
}

fn const_dim(d: &Dim, what: &str) -> TResult<i64> {
    d.as_const()
        .ok_or_else(|| format!("{what} must be a constant dim, got {d}"))
}

/// An integer element of an i32/i64 buffer as i64.
fn load_i64(buf: crate::loopir::BufId, index: Expr) -> Expr {
    Expr::load(buf, index).cast(Ty::I64)
}

/// `paged_kv_write(k, v, k_pool, v_pool, slots) -> (k_pool, v_pool)`: the results are
/// the pool buffers themselves (the plan aliases them), so only the new rows are
/// written.
pub(crate) fn kv_write(ins: &[&TensorType], outs: &[&TensorType], name: &str) -> TResult<Kernel> {
    let k = operand(ins, 0, "k")?;
    let v = operand(ins, 1, "v")?;
    let kp = operand(ins, 2, "k_pool")?;
    result(outs, 1)?;
    let [_, kvh, bs, dk] = &kp.shape.0[..] else {
        return Err(format!("operand k_pool must have rank 4, got {}", kp.shape));
    };
    let (kvh, bs, dk) = (
        const_dim(kvh, "the pool's kv heads")?,
        const_dim(bs, "the block size")?,
        const_dim(dk, "the key head dim")?,
    );
    let dv = const_dim(
        ins.get(3)
            .and_then(|t| t.shape.0.get(3))
            .unwrap_or(&Dim::c(0)),
        "the value head dim",
    )?;
    let s = k.shape.0.get(2).cloned().unwrap_or(Dim::c(0));
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let se = kb.dim(&s);
    let v8 = LoopTag::Vectorize(8);
    kb.for_("r", 0, se.clone(), LoopTag::Serial, |kb, r| {
        let slot = kb.let_("slot", load_i64(ib[4], r.clone()));
        let blk = kb.let_("blk", slot.clone() / bs);
        let off = kb.let_("off", slot % bs);
        for (x, xt, out, d) in [(ib[0], k, ob[0], dk), (ib[1], v, ob[1], dv)] {
            kb.for_("h", 0, kvh, LoopTag::Serial, |kb, h| {
                let src = kb.let_("src", (h.clone() * se.clone() + r.clone()) * d);
                let dst = kb.let_("dst", ((blk.clone() * kvh + h) * bs + off.clone()) * d);
                kb.for_("c", 0, d, v8, |kb, c| {
                    let val = load_elem(kb, x, xt.dtype, src.clone() + c.clone());
                    let val = to_storage(kb, out, val);
                    kb.store(out, dst.clone() + c, val);
                });
            });
        }
    });
    kb.finish()
}

/// `paged_attention(q, k_pool, v_pool, pos, row_seq, block_tables)`.
pub(crate) fn attention(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let q = operand(ins, 0, "q")?;
    let kp = operand(ins, 1, "k_pool")?;
    let vp = operand(ins, 2, "v_pool")?;
    let bt = operand(ins, 5, "block_tables")?;
    result(outs, 0)?;
    let scale = attr_float(node, "scale")?.ok_or("missing attribute `scale`")?;
    let window = attr_int(node, "window")?.unwrap_or(0);
    let cap = attr_float(node, "softcap")?;
    let [_, h, s, dk] = &q.shape.0[..] else {
        return Err(format!("operand q must be [1, h, s, dk], got {}", q.shape));
    };
    let [_, kvh, bs, _] = &kp.shape.0[..] else {
        return Err(format!("operand k_pool must have rank 4, got {}", kp.shape));
    };
    let h = const_dim(h, "the query head count")?;
    let kvh = const_dim(kvh, "the pool's kv heads")?;
    let bs = const_dim(bs, "the block size")?;
    let dk = const_dim(dk, "the key head dim")?;
    let dv = const_dim(
        vp.shape.0.get(3).unwrap_or(&Dim::c(0)),
        "the value head dim",
    )?;
    if kvh <= 0 || h % kvh != 0 {
        return Err(format!(
            "{h} query heads are not a multiple of {kvh} kv heads"
        ));
    }
    let group = h / kvh;
    let t = compute_ty(q.dtype)?;
    let width = bt.shape.0.get(1).cloned().unwrap_or(Dim::c(0));
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let se = kb.dim(s);
    let we = kb.dim(&width);
    let n = kb.let_("n", se.clone() * kvh);
    // Decode steps have few rows; the key loop dominates, so any step with more than
    // a handful of rows or long contexts is worth the pool.
    let tag = if work_estimate(&[s.clone(), Dim::c(kvh * 64 * dk)]) >= PARALLEL_MIN {
        LoopTag::Parallel
    } else {
        LoopTag::Serial
    };
    let v8 = LoopTag::Vectorize(8);
    let ninf = || fconst(f64::NEG_INFINITY, t);
    kb.for_("rk", 0, n, tag, |kb, rk| {
        let r = kb.let_("r", rk.clone() / kvh);
        let kv = kb.let_("kv", rk % kvh);
        let sq = kb.let_("sq", load_i64(ib[4], r.clone()));
        let p = kb.let_("p", load_i64(ib[3], r.clone()));
        let lo = if window > 0 {
            (p.clone() - (window - 1)).max(Expr::i(0))
        } else {
            Expr::i(0)
        };
        let lo = kb.let_("lo", lo);
        let hi = kb.let_("hi", p + 1);
        let acc = kb.local("acc", t, group * dv);
        let scores = kb.local("scores", t, group * bs);
        kb.for_("c", 0, group * dv, v8, |kb, c| {
            kb.store(acc, c, fconst(0.0, t))
        });
        let ms: Vec<_> = (0..group)
            .map(|g| kb.let_mut(&format!("m{g}"), ninf()))
            .collect();
        let ls: Vec<_> = (0..group)
            .map(|g| kb.let_mut(&format!("l{g}"), fconst(0.0, t)))
            .collect();
        let first = kb.let_("first", (lo.clone() / bs) * bs);
        kb.for_step("j0", first, hi.clone(), bs, LoopTag::Serial, |kb, j0| {
            let entry = kb.let_("entry", sq.clone() * we.clone() + j0.clone() / bs);
            let blk = kb.let_("blk", load_i64(ib[5], entry));
            let js = kb.let_("js", lo.clone().max(j0.clone()) - j0.clone());
            let je = kb.let_("je", hi.clone().min(j0.clone() + bs) - j0.clone());
            let base = kb.let_("base", (blk * kvh + kv.clone()) * bs);
            for g in 0..group {
                let qrow = kb.let_(
                    "qrow",
                    ((kv.clone() * group + g) * se.clone() + r.clone()) * dk,
                );
                let bm = kb.let_mut("bm", ninf());
                kb.for_("jj", js.clone(), je.clone(), LoopTag::Serial, |kb, jj| {
                    let krow = kb.let_("krow", (base.clone() + jj.clone()) * dk);
                    let dot = kb.let_mut("dot", fconst(0.0, t));
                    kb.for_("c", 0, dk, v8, |kb, c| {
                        let qv = load_elem(kb, ib[0], q.dtype, qrow.clone() + c.clone());
                        let kx = load_elem(kb, ib[1], kp.dtype, krow.clone() + c);
                        kb.assign(dot, b(BinOp::Add, Expr::Var(dot), b(BinOp::Mul, qv, kx)));
                    });
                    let mut sc = b(BinOp::Mul, Expr::Var(dot), fconst(scale, t));
                    if let Some(cap) = cap {
                        let x = b(BinOp::Div, sc, fconst(cap, t));
                        sc = b(BinOp::Mul, fconst(cap, t), Expr::un(UnOp::Tanh, x));
                    }
                    let sc = kb.let_("sc", sc);
                    kb.store(scores, jj.clone() + g * bs, sc.clone());
                    kb.assign(bm, Expr::Var(bm).max(sc));
                });
                let (m, l) = (ms[g as usize], ls[g as usize]);
                let mn = kb.let_("mn", Expr::Var(m).max(Expr::Var(bm)));
                let corr = kb.let_("corr", exp(b(BinOp::Sub, Expr::Var(m), mn.clone())));
                kb.assign(l, b(BinOp::Mul, Expr::Var(l), corr.clone()));
                kb.for_("c", 0, dv, v8, |kb, c| {
                    let at = c.clone() + g * dv;
                    let a = b(BinOp::Mul, Expr::load(acc, at.clone()), corr.clone());
                    kb.store(acc, at, a);
                });
                kb.for_("jj", js.clone(), je.clone(), LoopTag::Serial, |kb, jj| {
                    let pr = kb.let_(
                        "pr",
                        exp(b(
                            BinOp::Sub,
                            Expr::load(scores, jj.clone() + g * bs),
                            mn.clone(),
                        )),
                    );
                    kb.assign(l, b(BinOp::Add, Expr::Var(l), pr.clone()));
                    let vrow = kb.let_("vrow", (base.clone() + jj) * dv);
                    kb.for_("c", 0, dv, v8, |kb, c| {
                        let vv = load_elem(kb, ib[2], vp.dtype, vrow.clone() + c.clone());
                        let at = c + g * dv;
                        let a = Expr::load(acc, at.clone());
                        kb.store(acc, at, b(BinOp::Add, a, b(BinOp::Mul, pr.clone(), vv)));
                    });
                });
                kb.assign(m, mn);
            }
        });
        for g in 0..group {
            let l = ls[g as usize];
            let inv = kb.let_(
                "inv",
                Expr::select(
                    Expr::Var(l).ne_(fconst(0.0, t)),
                    b(BinOp::Div, fconst(1.0, t), Expr::Var(l)),
                    fconst(0.0, t),
                ),
            );
            let orow = kb.let_(
                "orow",
                ((kv.clone() * group + g) * se.clone() + r.clone()) * dv,
            );
            kb.for_("c", 0, dv, v8, |kb, c| {
                let y = b(BinOp::Mul, Expr::load(acc, c.clone() + g * dv), inv.clone());
                let y = to_storage(kb, ob[0], y);
                kb.store(ob[0], orow.clone() + c, y);
            });
        }
    });
    kb.finish()
}
