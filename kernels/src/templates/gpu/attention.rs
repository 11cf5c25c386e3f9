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
use crate::loopir::{BinOp, BufId, Expr, LoopTag, Ty, UnOp};
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

/// Warps per block of the paged attention: they split a row's key chunks (split-K
/// inside the block) and merge their softmax states at the end.
const PAGED_WARPS: i64 = 8;

/// The f32 maximum of `v` over the 32 lanes of the warp, in every lane.
fn warp_max(kb: &mut KernelBuilder, v: Expr) -> Expr {
    let acc = kb.let_mut("wm", v);
    for m in [16, 8, 4, 2, 1] {
        let o = kb.let_mut("wo", Expr::f(0.0, Ty::F32));
        kb.shuffle_xor(o, Expr::Var(acc), m);
        kb.assign(acc, Expr::Var(acc).max(Expr::Var(o)));
    }
    Expr::Var(acc)
}

/// `paged_attention(q, k_pool, v_pool, pos, row_seq, block_tables)` on the GPU: a
/// block of [`PAGED_WARPS`] warps per (row, query head). The row's keys are taken in
/// chunks of 32, chunk `i` to warp `i % PAGED_WARPS` (split-K inside the block), a key
/// per lane: each lane walks the block table to its key, takes the dot product with
/// q (staged in shared memory), the chunk's maximum and sum go through shuffle
/// butterflies (the online softmax per chunk, not per key), the probabilities go to
/// shared memory, and then the lanes own head-dim columns and add the chunk's value
/// rows, read coalesced. At the end the warps' (max, sum, accumulator) states merge
/// through shared memory. An int8 (`q8_kv`) pool is read through [`pool_elem`]: each
/// element its block's f32 scale times its code. `None` (the generic mapping of the
/// CPU kernel) for non-f32 compute or transposed key pools (`k_dim_major`, a CPU
/// layout).
pub(crate) fn paged(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Option<Lowered>> {
    use llmc_ir::DType;
    let crate::templates::paged::PagedArgs {
        q,
        kp,
        vp,
        bt,
        scale,
        window,
        cap,
        k_dim_major,
        token_major: tok,
    } = crate::templates::paged::paged_args(node, ins, outs)?;
    let t = compute_ty(q.dtype)?;
    if t != Ty::F32 || k_dim_major {
        return Ok(None);
    }
    if (kp.dtype == DType::Q8Kv || vp.dtype == DType::Q8Kv)
        && [&kp.shape.0[3], &vp.shape.0[3]]
            .iter()
            .any(|d| d.as_const().is_none_or(|d| d % 64 != 0))
    {
        return Ok(None);
    }
    let (hd, sd, dkd) = match (&q.shape.0[..], tok) {
        ([_, hd, sd, dkd], false) | ([_, sd, hd, dkd], true) => (hd, sd, dkd),
        _ => return Err(format!("operand q must have rank 4, got {}", q.shape)),
    };
    let [_, kvhd, bsd, _] = &kp.shape.0[..] else {
        return Err(format!("operand k_pool must have rank 4, got {}", kp.shape));
    };
    let (Some(h), Some(kvh), Some(bs), Some(dk), Some(dv)) = (
        hd.as_const(),
        kvhd.as_const(),
        bsd.as_const(),
        dkd.as_const(),
        vp.shape.0.get(3).and_then(|d| d.as_const()),
    ) else {
        return Ok(None);
    };
    if kvh <= 0 || h % kvh != 0 || bs <= 0 {
        return Ok(None);
    }
    let group = h / kvh;
    let width = bt.shape.0.get(1).cloned().unwrap_or(llmc_ir::Dim::c(0));
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let se = kb.dim(sd);
    let we = kb.dim(&width);
    let nwarps = kb.let_("nw", se.clone() * h);
    let nv = (dv + 31) / 32;
    let ninf = || fconst(f64::NEG_INFINITY, t);
    let load_i = |buf, at: Expr| Expr::load(buf, at).cast(Ty::I64);
    let wn = PAGED_WARPS;
    kb.for_("wq", 0, nwarps, LoopTag::GpuGrid(0), |kb, wq| {
        let qs = kb.shared("qs", t, dk);
        let sp = kb.shared("sp", t, 32 * wn);
        let shm = kb.shared("shm", t, wn);
        let shl = kb.shared("shl", t, wn);
        let sha = kb.shared("sha", t, wn * dv);
        kb.for_("tid", 0, 32 * wn, LoopTag::GpuBlock(0), |kb, tid| {
            let lane = kb.let_("lane", tid.clone() % 32);
            let w = kb.let_("w", tid.clone() / 32);
            let r = kb.let_("r", wq.clone() % se.clone());
            let hq = kb.let_("hq", wq.clone() / se.clone());
            let kv = kb.let_("kv", hq.clone() / group);
            let (sq, lo, hi) = crate::templates::paged::row_keys(kb, (ib[3], ib[4]), &r, window);
            let qrow = kb.let_(
                "qrow",
                crate::templates::paged::row_at(tok, hq.clone(), r.clone(), h, &se, dk),
            );
            kb.for_step("c", tid.clone(), dk, 32 * wn, LoopTag::Serial, |kb, c| {
                let x = load_elem(kb, ib[0], q.dtype, qrow.clone() + c.clone());
                kb.store(qs, c, x);
            });
            kb.barrier();
            // The pool row of key `j` of this row's sequence.
            let key_row = |kb: &mut KernelBuilder, j: Expr, d: i64| {
                let blk = kb.let_(
                    "blk",
                    load_i(ib[5], sq.clone() * we.clone() + j.clone() / bs),
                );
                kb.let_("krow", ((blk * kvh + kv.clone()) * bs + j % bs) * d)
            };
            let acc = kb.local("acc", t, nv);
            for i in 0..nv {
                kb.store(acc, Expr::i(i), fconst(0.0, t));
            }
            let m = kb.let_mut("m", ninf());
            let l = kb.let_mut("l", fconst(0.0, t));
            // Rounds of `wn` chunks of 32 keys, chunk `round * wn + w` to warp `w`:
            // every warp runs every round (barriers stay block-uniform), a chunk past
            // the end holds no key.
            let span = 32 * wn;
            let rounds = kb.let_("rounds", (hi.clone() - lo.clone() + (span - 1)) / span);
            kb.for_("rd", 0, rounds, LoopTag::Serial, |kb, rd| {
                let j0 = kb.let_("j0", lo.clone() + (rd * wn + w.clone()) * 32);
                let j = kb.let_("j", j0.clone() + lane.clone());
                let sc = kb.let_mut("sc", ninf());
                kb.if_(j.clone().lt(hi.clone()), |kb| {
                    let krow = key_row(kb, j.clone(), dk);
                    let dot = kb.let_mut("dot", fconst(0.0, t));
                    kb.for_("c", 0, dk, LoopTag::Serial, |kb, c| {
                        let kx = pool_elem(kb, ib[1], kp.dtype, krow.clone() + c.clone());
                        let pr = b(BinOp::Mul, Expr::load(qs, c), kx);
                        kb.assign(dot, b(BinOp::Add, Expr::Var(dot), pr));
                    });
                    let mut s = b(BinOp::Mul, Expr::Var(dot), fconst(scale, t));
                    if let Some(cap) = cap {
                        let x = b(BinOp::Div, s, fconst(cap, t));
                        s = b(BinOp::Mul, fconst(cap, t), Expr::un(UnOp::Tanh, x));
                    }
                    kb.assign(sc, s);
                });
                let cm = warp_max(kb, Expr::Var(sc));
                // A warp that has seen no key yet keeps m = -inf: its exponents are
                // taken against 0 (its sum and accumulator are 0 anyway).
                let mn = kb.let_("mn", Expr::Var(m).max(cm));
                let mz = kb.let_(
                    "mz",
                    Expr::select(mn.clone().eq_(ninf()), fconst(0.0, t), mn.clone()),
                );
                let corr = kb.let_(
                    "corr",
                    Expr::un(UnOp::Exp, b(BinOp::Sub, Expr::Var(m), mz.clone())),
                );
                let pr = kb.let_(
                    "pr",
                    Expr::select(
                        j.clone().lt(hi.clone()),
                        Expr::un(UnOp::Exp, b(BinOp::Sub, Expr::Var(sc), mz)),
                        fconst(0.0, t),
                    ),
                );
                let ps = super::warp_sum(kb, pr.clone());
                kb.assign(
                    l,
                    b(BinOp::Add, b(BinOp::Mul, Expr::Var(l), corr.clone()), ps),
                );
                kb.store(sp, tid.clone(), pr);
                kb.barrier();
                for i in 0..nv {
                    let a = b(BinOp::Mul, Expr::load(acc, Expr::i(i)), corr.clone());
                    kb.store(acc, Expr::i(i), a);
                }
                let nk = kb.let_("nk", (hi.clone() - j0.clone()).min(Expr::i(32)));
                kb.for_("jj", 0, nk, LoopTag::Serial, |kb, jj| {
                    let prj = kb.let_("prj", Expr::load(sp, w.clone() * 32 + jj.clone()));
                    let vrow = key_row(kb, j0.clone() + jj, dv);
                    for i in 0..nv {
                        let col = lane.clone() + 32 * i;
                        let add = |kb: &mut KernelBuilder| {
                            let vx = pool_elem(kb, ib[2], vp.dtype, vrow.clone() + col.clone());
                            let a = b(
                                BinOp::Add,
                                Expr::load(acc, Expr::i(i)),
                                b(BinOp::Mul, prj.clone(), vx),
                            );
                            kb.store(acc, Expr::i(i), a);
                        };
                        if dv % 32 == 0 {
                            add(kb)
                        } else {
                            kb.if_(col.clone().lt(Expr::i(dv)), add)
                        }
                    }
                });
                kb.barrier();
                kb.assign(m, mn);
            });
            // Merge the warps' states: (m, l, acc) through shared memory, then warp 0
            // rescales each to the largest m and writes the row.
            kb.if_(lane.clone().eq_(Expr::i(0)), |kb| {
                kb.store(shm, w.clone(), Expr::Var(m));
                kb.store(shl, w.clone(), Expr::Var(l));
            });
            for i in 0..nv {
                let col = lane.clone() + 32 * i;
                let put = |kb: &mut KernelBuilder| {
                    kb.store(
                        sha,
                        w.clone() * dv + col.clone(),
                        Expr::load(acc, Expr::i(i)),
                    );
                };
                if dv % 32 == 0 {
                    put(kb)
                } else {
                    kb.if_(col.clone().lt(Expr::i(dv)), put)
                }
            }
            kb.barrier();
            kb.if_(w.clone().eq_(Expr::i(0)), |kb| {
                let mut mx = Expr::load(shm, Expr::i(0));
                for x in 1..wn {
                    mx = mx.max(Expr::load(shm, Expr::i(x)));
                }
                let mx = kb.let_("mx", mx);
                let mx = kb.let_(
                    "mxz",
                    Expr::select(mx.clone().eq_(ninf()), fconst(0.0, t), mx),
                );
                let f: Vec<Expr> = (0..wn)
                    .map(|x| {
                        kb.let_(
                            "f",
                            Expr::un(
                                UnOp::Exp,
                                b(BinOp::Sub, Expr::load(shm, Expr::i(x)), mx.clone()),
                            ),
                        )
                    })
                    .collect();
                let mut lt = fconst(0.0, t);
                for (x, fx) in f.iter().enumerate() {
                    lt = b(
                        BinOp::Add,
                        lt,
                        b(BinOp::Mul, Expr::load(shl, Expr::i(x as i64)), fx.clone()),
                    );
                }
                let lt = kb.let_("lt", lt);
                let inv = kb.let_(
                    "inv",
                    Expr::select(
                        lt.clone().ne_(fconst(0.0, t)),
                        b(BinOp::Div, fconst(1.0, t), lt),
                        fconst(0.0, t),
                    ),
                );
                let orow = kb.let_(
                    "orow",
                    crate::templates::paged::row_at(tok, hq, r, h, &se, dv),
                );
                for i in 0..nv {
                    let col = lane.clone() + 32 * i;
                    let put = |kb: &mut KernelBuilder| {
                        let mut y = fconst(0.0, t);
                        for (x, fx) in f.iter().enumerate() {
                            let a = Expr::load(sha, col.clone() + x as i64 * dv);
                            y = b(BinOp::Add, y, b(BinOp::Mul, a, fx.clone()));
                        }
                        let y = b(BinOp::Mul, y, inv.clone());
                        let y = to_storage(kb, ob[0], y);
                        kb.store(ob[0], orow.clone() + col.clone(), y);
                    };
                    if dv % 32 == 0 {
                        put(kb)
                    } else {
                        kb.if_(col.clone().lt(Expr::i(dv)), put)
                    }
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

/// Element `index` of a KV pool as f32: a `q8_kv` pool is a byte buffer of blocks of 64
/// (an f32 scale, then 64 i8 codes; a head dim is whole blocks), any other dtype is
/// read by [`load_elem`].
fn pool_elem(kb: &KernelBuilder, buf: BufId, dtype: llmc_ir::DType, index: Expr) -> Expr {
    if dtype != llmc_ir::DType::Q8Kv {
        return load_elem(kb, buf, dtype, index);
    }
    let at = index.clone() / 64 * 68;
    let sc = Expr::LoadRaw(buf, Box::new(at.clone()), Ty::F32);
    let code = Expr::LoadRaw(buf, Box::new(at + 4 + index % 64), Ty::I8);
    b(BinOp::Mul, sc, code.cast(Ty::F32))
}
