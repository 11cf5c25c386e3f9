//! Kernels of the serving form's paged KV cache: `paged_kv_write` scatters the step's
//! new keys and values into their pool slots (in place: the results are the pool
//! buffers), and `paged_attention` walks each row's block table one block at a time
//! with an online softmax, in splits of [`SPLIT_TOKENS`] keys whose states merge in
//! order (split-K): with few (row, kv head) pairs the splits of every pair run in
//! parallel, so a few rows over a long context use every thread; with many (a prefill
//! chunk, a large batch) each row is one task, its kv heads in order (on a GPU mapping
//! each pair is one task). The query heads of one GQA group are handled together, so
//! each K/V block is read from memory once for the whole group.
//! A row's arithmetic depends only on its own sequence (never on the other rows of
//! the step: both forms run the same per-pair arithmetic): batch invariance.

use super::{
    attr_float, attr_int, compute_ty, exp, fconst, gpu_mapping, load_elem, operand, recip_or_zero,
    result, setup, to_storage, work_estimate, TResult, PARALLEL_MIN,
};
use crate::builder::KernelBuilder;
use crate::loopir::{BinOp, BufId, Expr, Kernel, LoopTag, Ty, UnOp, VarId};
use llmc_ir::{DType, Dim, Node, TensorType};

/// Keys per split of a sequence's context: each (row, kv head) pair's softmax state
/// is computed split by split and the splits merged in order, so a few rows over a long
/// context spread over every thread (split-K), and the arithmetic is the same whether
/// the splits run one after another or in parallel.
const SPLIT_TOKENS: i64 = 256;

/// Keys of a block whose score sums one pass of the row tiles' element loop keeps (in
/// registers: 4 vectors of 16 lanes are 8 AVX2 registers).
const SCORE_KEYS: i64 = 4;

/// Elements (or keys x slices x heads, up to its square) the decode form unrolls in
/// one vector loop: SmolLM2's 64-wide heads whole, a 256-wide head in runs.
const UNROLL_ELEMS: i64 = 16;

/// Members (row, query head) of a row tile whose value accumulators one pass over a
/// block's keys keeps (in registers: 4 of a 16-element slice are 8 AVX2 registers).
const PV_MEMBERS: i64 = 4;

/// Bytes of split states one parallel wave may hold (twice: the running states and
/// the wave's; stack of the calling thread).
const SPLIT_SCRATCH: i64 = 128 * 1024;

/// Vector width of the loops over a key's or value's elements and over a block's keys:
/// a 64-wide head is four 16-lane vectors (one AVX-512 register, two AVX2 ones), so a
/// key costs a quarter of the loop trips and adds of 8 lanes did.
const ROW_LANES: u32 = 16;

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

/// Row `r`'s sequence (`row_seq[r]`) and the key range `[lo, hi)` it attends to: keys
/// `0..=pos[r]`, or the last `window` of them. The CPU and GPU kernels share it.
pub(crate) fn row_keys(
    kb: &mut crate::builder::KernelBuilder,
    (pos, row_seq): (crate::loopir::BufId, crate::loopir::BufId),
    r: &Expr,
    window: i64,
) -> (Expr, Expr, Expr) {
    let sq = kb.let_("sq", load_i64(row_seq, r.clone()));
    let p = kb.let_("p", load_i64(pos, r.clone()));
    let lo = if window > 0 {
        (p.clone() - (window - 1)).max(Expr::i(0))
    } else {
        Expr::i(0)
    };
    let lo = kb.let_("lo", lo);
    let hi = kb.let_("hi", p + 1);
    (sq, lo, hi)
}

/// `paged_kv_write(k, v, k_pool, v_pool, slots) -> (k_pool, v_pool)`: the results are
/// the pool buffers themselves (the plan aliases them), so only the new rows are
/// written.
pub(crate) fn kv_write(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let dim_major = attr_int(node, "k_dim_major")? == Some(1);
    let tok = attr_int(node, "token_major")? == Some(1);
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
    let s = k
        .shape
        .0
        .get(if tok { 1 } else { 2 })
        .cloned()
        .unwrap_or(Dim::c(0));
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let se = kb.dim(&s);
    if gpu_mapping() && kp.dtype != DType::Q8Kv && outs[1].dtype != DType::Q8Kv {
        // One GPU thread per (row, head, column) of the new keys and values.
        let dm = dk.max(dv);
        let n = kb.let_("n", se.clone() * (kvh * dm));
        kb.for_("i", 0, n, LoopTag::Parallel, |kb, i| {
            let r = kb.let_("r", i.clone() / (kvh * dm));
            let h = kb.let_("h", (i.clone() / dm) % kvh);
            let c = kb.let_("c", i % dm);
            let slot = kb.let_("slot", load_i64(ib[4], r.clone()));
            let blk = kb.let_("blk", slot.clone() / bs);
            let off = kb.let_("off", slot % bs);
            for (x, xt, out, d) in [(ib[0], k, ob[0], dk), (ib[1], v, ob[1], dv)] {
                let put = |kb: &mut crate::builder::KernelBuilder| {
                    let src = row_at(tok, h.clone(), r.clone(), kvh, &se, d) + c.clone();
                    let slice = blk.clone() * kvh + h.clone();
                    let dst = if dim_major && x == ib[0] {
                        (slice * d + c.clone()) * bs + off.clone()
                    } else {
                        (slice * bs + off.clone()) * d + c.clone()
                    };
                    let val = load_elem(kb, x, xt.dtype, src);
                    let val = to_storage(kb, out, val);
                    kb.store(out, dst, val);
                };
                if d == dm {
                    put(kb)
                } else {
                    kb.if_(c.clone().lt(Expr::i(d)), put)
                }
            }
        });
        return kb.finish();
    }
    let v8 = LoopTag::Vectorize(8);
    // Rows write their own slots: a step of many rows (32 decode rows, a prefill
    // chunk) splits them over the pool (serial, the write was 2.4% of a 32-stream step
    // on one thread while the other waited).
    let tag = if work_estimate(&[s.clone(), Dim::c(kvh * (dk + dv))]) >= PARALLEL_MIN {
        LoopTag::Parallel
    } else {
        LoopTag::Serial
    };
    kb.for_("r", 0, se.clone(), tag, |kb, r| {
        let slot = kb.let_("slot", load_i64(ib[4], r.clone()));
        let blk = kb.let_("blk", slot.clone() / bs);
        let off = kb.let_("off", slot % bs);
        for (x, xt, out, d, pt) in [
            (ib[0], k, ob[0], dk, kp.dtype),
            (ib[1], v, ob[1], dv, outs[1].dtype),
        ] {
            kb.for_("h", 0, kvh, LoopTag::Serial, |kb, h| {
                let src = kb.let_("src", row_at(tok, h.clone(), r.clone(), kvh, &se, d));
                if dim_major && x == ib[0] {
                    // Element c of the key goes to column `off` of the slice's row c.
                    let at = kb.let_("at", ((blk.clone() * kvh + h) * d) * bs + off.clone());
                    kb.for_("c", 0, d, LoopTag::Serial, |kb, c| {
                        let val = load_elem(kb, x, xt.dtype, src.clone() + c.clone());
                        let val = to_storage(kb, out, val);
                        kb.store(out, at.clone() + c * bs, val);
                    });
                    return;
                }
                let dst = kb.let_("dst", ((blk.clone() * kvh + h) * bs + off.clone()) * d);
                if pt == DType::Q8Kv {
                    write_q8_kv(kb, (x, xt.dtype), src, out, dst, d);
                    return;
                }
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

/// `paged_qkv_write(qkv[1, s, (hq + 2 kvh)·d], k_pool, v_pool, slots[s], pos[1, s]) ->
/// (k_pool, v_pool, q[1, s, hq, d])`: the split, both RoPEs and the KV write of a
/// step's merged projection in one kernel. Each element's arithmetic is the unfused
/// ops': the same trig table (f32 on the CPU, positions below
/// [`super::nn::ROPE_TABLE_POSITIONS`]) or angles, the same rotation
/// ([`super::nn::rotate_pair_to`]), one rounding into the pool. The CPU runs a row per
/// task (heads, then pairs a vector at a time); a GPU mapping runs a thread per (row,
/// head, pair). Also returns the build-time table (CPU) or frequencies (GPU).
pub(crate) fn qkv_write(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<(Kernel, Vec<llmc_ir::Tensor>)> {
    let dim_major = attr_int(node, "k_dim_major")? == Some(1);
    let hq = attr_int(node, "heads")?.ok_or("missing attribute `heads`")?;
    let qkv = operand(ins, 0, "qkv")?;
    let kp = operand(ins, 1, "k_pool")?;
    let pos = operand(ins, 4, "pos")?;
    result(outs, 2)?;
    let [_, kvh, bs, d] = &kp.shape.0[..] else {
        return Err(format!("operand k_pool must have rank 4, got {}", kp.shape));
    };
    let (kvh, bs, d) = (
        const_dim(kvh, "the pool's kv heads")?,
        const_dim(bs, "the block size")?,
        const_dim(d, "the head dim")?,
    );
    if d % 2 != 0 {
        return Err(format!("the head dim {d} must be even"));
    }
    let super::nn::RopeAttrs {
        theta,
        neox,
        scale,
        dims,
    } = super::nn::rope_attrs(node, d)?;
    let half = dims / 2;
    let width = (hq + 2 * kvh) * d;
    let s = qkv.shape.0.get(1).cloned().unwrap_or(Dim::c(0));
    let t = compute_ty(qkv.dtype)?;
    let gpu = gpu_mapping();
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let se = kb.dim(&s);
    let mut consts = Vec::new();
    let table = if t == Ty::F32 && !gpu {
        consts.push(super::nn::rope_trig_table(theta, dims, scale));
        Some(kb.param("trig", Ty::F32, crate::loopir::Role::In))
    } else {
        None
    };
    let q8 = (kp.dtype == DType::Q8Kv, outs[1].dtype == DType::Q8Kv);
    let freq = if gpu {
        let f: Vec<f64> = (0..half)
            .map(|k| theta.powf((k * -2) as f64 / dims as f64))
            .collect();
        consts.push(llmc_ir::Tensor::from_f64(
            DType::F64,
            vec![half as usize],
            f,
        ));
        Some(kb.param("freq", Ty::F64, crate::loopir::Role::In))
    } else {
        None
    };
    let x = (ib[0], qkv.dtype);
    // Element c of head `hh` of row r: in qkv, in the queries, in the pools.
    let src = |r: &Expr, hh: Expr, c: Expr| r.clone() * width + hh * d + c;
    let qdst = |r: &Expr, h: Expr, c: Expr| (r.clone() * hq + h) * d + c;
    let kdst = |blk: &Expr, off: &Expr, h: Expr, c: Expr| {
        let slice = blk.clone() * kvh + h;
        if dim_major {
            (slice * d + c) * bs + off.clone()
        } else {
            (slice * bs + off.clone()) * d + c
        }
    };
    let vdst = |blk: &Expr, off: &Expr, h: Expr, c: Expr| {
        ((blk.clone() * kvh + h) * bs + off.clone()) * d + c
    };
    let pair = |k: &Expr| {
        if neox {
            (k.clone(), k.clone() + half)
        } else {
            (k.clone() * 2, k.clone() * 2 + 1)
        }
    };
    let copy = |kb: &mut KernelBuilder, from: Expr, out: BufId, to: Expr| {
        let v = load_elem(kb, x.0, x.1, from);
        let v = to_storage(kb, out, v);
        kb.store(out, to, v);
    };
    let slot_of = |kb: &mut KernelBuilder, r: &Expr| {
        let slot = kb.let_("slot", load_i64(ib[3], r.clone()));
        let blk = kb.let_("blk", slot.clone() / bs);
        let off = kb.let_("off", slot % bs);
        (blk, off)
    };
    if let (Some(ftab), (false, false)) = (freq, q8) {
        // One GPU thread per (row, head, pair): query and key heads rotate their pair
        // (or copy two pass-through channels), value heads copy two channels.
        let d2 = d / 2;
        let heads = hq + 2 * kvh;
        let n = kb.let_("n", se * (heads * d2));
        kb.for_("i", 0, n, LoopTag::Parallel, |kb, i| {
            let r = kb.let_("r", i.clone() / (heads * d2));
            let h = kb.let_("h", (i.clone() / d2) % heads);
            let c = kb.let_("c", i % d2);
            let (blk, off) = slot_of(kb, &r);
            let (r2, h2, c2) = (r.clone(), h.clone(), c.clone());
            let (blk2, off2) = (blk.clone(), off.clone());
            kb.if_else(
                h.clone().lt(Expr::i(hq + kvh)),
                |kb| {
                    let (r, h, c) = (r2, h2, c2);
                    let (blk, off) = (blk2, off2);
                    let (r3, h3, c3) = (r.clone(), h.clone(), c.clone());
                    let (blk3, off3) = (blk.clone(), off.clone());
                    kb.if_else(
                        c.clone().lt(Expr::i(half)),
                        |kb| {
                            let pv = load_elem(kb, ib[4], pos.dtype, r.clone());
                            let p = kb
                                .let_("p", b(BinOp::Div, pv.cast(Ty::F64), fconst(scale, Ty::F64)));
                            let ang = b(BinOp::Mul, p, Expr::load(ftab, c.clone()));
                            let (sin, cos) = super::nn::rope_sin_cos(kb, ang, t);
                            let (ia, ibx) = pair(&c);
                            let at = (
                                src(&r, h.clone(), ia.clone()),
                                src(&r, h.clone(), ibx.clone()),
                            );
                            let (h1, ia1, ib1, at1) =
                                (h.clone(), ia.clone(), ibx.clone(), at.clone());
                            kb.if_else(
                                h.clone().lt(Expr::i(hq)),
                                |kb| {
                                    let dst = (qdst(&r, h1.clone(), ia1), qdst(&r, h1, ib1));
                                    super::nn::rotate_pair_to(kb, x, at1, ob[2], dst, (&sin, &cos));
                                },
                                |kb| {
                                    let hk = h - hq;
                                    let dst = (
                                        kdst(&blk, &off, hk.clone(), ia),
                                        kdst(&blk, &off, hk, ibx),
                                    );
                                    super::nn::rotate_pair_to(kb, x, at, ob[0], dst, (&sin, &cos));
                                },
                            );
                        },
                        |kb| {
                            // The pass-through channels dims + 2 (c - half) and the next.
                            let (r, h, c) = (r3, h3, c3);
                            let e = kb.let_("e", (c - half) * 2 + dims);
                            for e in [e.clone(), e + 1] {
                                let from = src(&r, h.clone(), e.clone());
                                let (r1, h1, e1, f1) =
                                    (r.clone(), h.clone(), e.clone(), from.clone());
                                let (blk, off) = (blk3.clone(), off3.clone());
                                let h2 = h.clone();
                                kb.if_else(
                                    h.clone().lt(Expr::i(hq)),
                                    |kb| copy(kb, f1, ob[2], qdst(&r1, h1, e1)),
                                    |kb| copy(kb, from, ob[0], kdst(&blk, &off, h2 - hq, e)),
                                );
                            }
                        },
                    );
                },
                |kb| {
                    let hv = h - (hq + kvh);
                    for e in [c.clone() * 2, c * 2 + 1] {
                        let from = src(&r, hv.clone() + (hq + kvh), e.clone());
                        copy(kb, from, ob[1], vdst(&blk, &off, hv.clone(), e));
                    }
                },
            );
        });
        return Ok((kb.finish()?, consts));
    }
    let tag = if work_estimate(&[s.clone(), Dim::c(width)]) >= PARALLEL_MIN {
        LoopTag::Parallel
    } else {
        LoopTag::Serial
    };
    kb.for_("r", 0, se, tag, |kb, r| {
        let (blk, off) = slot_of(kb, &r);
        // A q8_kv key pool takes each rotated head whole (its blocks' scales): the
        // row's keys go to a local first, in qkv's compute type as `rope` stores them.
        let krow = q8.0.then(|| kb.local("krow", t, kvh * d));
        let kout = krow.unwrap_or(ob[0]);
        let kdst = |blk: &Expr, off: &Expr, h: Expr, c: Expr| match krow {
            Some(_) => h * d + c,
            None => kdst(blk, off, h, c),
        };
        let pv = kb.let_("pv", load_elem(kb, ib[4], pos.dtype, r.clone()));
        let p = kb.let_(
            "p",
            b(BinOp::Div, pv.clone().cast(Ty::F64), fconst(scale, Ty::F64)),
        );
        // Head h's rotated pair at (ia, ib): a query head (h < hq) into the queries,
        // a key head into the key pool.
        let rot = |kb: &mut KernelBuilder,
                   h: i64,
                   hh: Expr,
                   (ia, ibx): (Expr, Expr),
                   trig: (&Expr, &Expr)| {
            let at = (
                src(&r, hh.clone(), ia.clone()),
                src(&r, hh.clone(), ibx.clone()),
            );
            if h < hq {
                let dst = (qdst(&r, hh.clone(), ia), qdst(&r, hh, ibx));
                super::nn::rotate_pair_to(kb, x, at, ob[2], dst, trig);
            } else {
                let hk = hh - hq;
                let dst = (kdst(&blk, &off, hk.clone(), ia), kdst(&blk, &off, hk, ibx));
                super::nn::rotate_pair_to(kb, x, at, kout, dst, trig);
            }
        };
        // The query heads, then the key heads (qkv's heads 0..hq and hq..hq + kvh).
        let groups = [(0, hq), (hq, hq + kvh)];
        let computed = |kb: &mut KernelBuilder, k: &Expr| {
            let f = match freq {
                Some(ftab) => Expr::load(ftab, k.clone()),
                None => super::nn::rope_inv_freq(theta, dims, k.clone()),
            };
            super::nn::rope_sin_cos(kb, b(BinOp::Mul, p.clone(), f), t)
        };
        let every_pair =
            |kb: &mut KernelBuilder,
             tag: LoopTag,
             trig: &dyn Fn(&mut KernelBuilder, &Expr) -> (Expr, Expr)| {
                for (h0, h1) in groups {
                    kb.for_("h", h0, h1, LoopTag::Serial, |kb, hh| {
                        kb.for_("k", 0, half, tag, |kb, k| {
                            let (sin, cos) = trig(kb, &k);
                            rot(kb, h0, hh.clone(), pair(&k), (&sin, &cos));
                        });
                    });
                }
            };
        match table {
            Some(tb) => {
                let pi = kb.let_("pi", pv.cast(Ty::I64));
                let inside = pi
                    .clone()
                    .ge(Expr::i(0))
                    .and(pi.clone().lt(Expr::i(super::nn::ROPE_TABLE_POSITIONS)));
                let trig = |kb: &mut KernelBuilder, k: &Expr| {
                    super::nn::rope_table_trig(kb, tb, &pi, half, k)
                };
                // Neox halves, cosines and sines are each contiguous: the pairs go a
                // vector at a time (the same arithmetic per pair).
                let tag = if neox {
                    LoopTag::Vectorize(16)
                } else {
                    LoopTag::Serial
                };
                kb.if_else(
                    inside,
                    |kb| every_pair(kb, tag, &trig),
                    |kb| every_pair(kb, LoopTag::Serial, &computed),
                );
            }
            None => every_pair(kb, LoopTag::Serial, &computed),
        }
        if dims < d {
            for (h0, h1) in groups {
                kb.for_("h", h0, h1, LoopTag::Serial, |kb, hh| {
                    kb.for_("c", dims, d, LoopTag::Serial, |kb, c| {
                        let from = src(&r, hh.clone(), c.clone());
                        if h0 == 0 {
                            copy(kb, from, ob[2], qdst(&r, hh.clone(), c));
                        } else {
                            copy(kb, from, kout, kdst(&blk, &off, hh.clone() - hq, c));
                        }
                    });
                });
            }
        }
        if let Some(kr) = krow {
            kb.for_("h", 0, kvh, LoopTag::Serial, |kb, h| {
                let dst = kb.let_("dst", vdst(&blk, &off, h.clone(), Expr::i(0)));
                let ty = if t == Ty::F32 { DType::F32 } else { DType::F64 };
                write_q8_kv(kb, (kr, ty), h * d, ob[0], dst, d);
            });
        }
        kb.for_("h", 0, kvh, LoopTag::Serial, |kb, h| {
            if q8.1 {
                let from = kb.let_("from", src(&r, h.clone() + (hq + kvh), Expr::i(0)));
                let dst = kb.let_("dst", vdst(&blk, &off, h, Expr::i(0)));
                write_q8_kv(kb, x, from, ob[1], dst, d);
                return;
            }
            kb.for_("c", 0, d, LoopTag::Vectorize(8), |kb, c| {
                let from = src(&r, h.clone() + (hq + kvh), c.clone());
                copy(kb, from, ob[1], vdst(&blk, &off, h.clone(), c));
            });
        });
    });
    Ok((kb.finish()?, consts))
}

/// Writes the `d` values at element `src` of `x` into a `q8_kv` pool at element `dst`
/// (a multiple of 64): per block of 64 the scale `max|x| / 127` (f32) and the codes
/// `roundeven(x / scale)`, as [`llmc_ir::quant::q8_kv_encode`] defines them.
fn write_q8_kv(
    kb: &mut crate::builder::KernelBuilder,
    (x, xt): (crate::loopir::BufId, DType),
    src: Expr,
    out: crate::loopir::BufId,
    dst: Expr,
    d: i64,
) {
    let f = Ty::F32;
    kb.for_("cb", 0, d / 64, LoopTag::Serial, |kb, cb| {
        let at = kb.let_("at", src.clone() + cb.clone() * 64);
        let amax = kb.let_mut("amax", fconst(0.0, f));
        kb.for_("c", 0, 64, LoopTag::Vectorize(8), |kb, c| {
            let val = load_elem(kb, x, xt, at.clone() + c).cast(f);
            kb.assign(amax, Expr::Var(amax).max(Expr::un(UnOp::Abs, val)));
        });
        let dd = kb.let_("d", b(BinOp::Div, Expr::Var(amax), fconst(127.0, f)));
        let id = kb.let_(
            "id",
            Expr::select(
                dd.clone().ne_(fconst(0.0, f)),
                b(BinOp::Div, fconst(1.0, f), dd.clone()),
                fconst(0.0, f),
            ),
        );
        let byte = kb.let_("byte", (dst.clone() / 64 + cb) * 68);
        kb.store_raw(out, byte.clone(), dd);
        kb.for_("c", 0, 64, LoopTag::Vectorize(8), |kb, c| {
            let val = load_elem(kb, x, xt, at.clone() + c.clone()).cast(f);
            let code = Expr::un(UnOp::Round, b(BinOp::Mul, val, id.clone())).cast(Ty::I8);
            kb.store_raw(out, byte.clone() + 4 + c, code);
        });
    });
}

/// Runs `body(c, value, scale)` over the `d` elements of the pool row at element
/// `row`, vectorized, with `before(scale)` ahead of each run and `after(scale)` behind:
/// a float pool's elements as loaded, in one run with scale 1; a `q8_kv` pool's codes
/// (as f32), one run per block of 64 with its scale (loaded once), which the caller
/// applies once per block rather than per element.
fn row_runs(
    kb: &mut crate::builder::KernelBuilder,
    (pool, dt): (crate::loopir::BufId, DType),
    row: Expr,
    d: i64,
    mut before: impl FnMut(&mut crate::builder::KernelBuilder, &Expr),
    mut body: impl FnMut(&mut crate::builder::KernelBuilder, Expr, Expr),
    mut after: impl FnMut(&mut crate::builder::KernelBuilder, &Expr),
) {
    let wide = LoopTag::Vectorize(ROW_LANES);
    if dt != DType::Q8Kv {
        let one = fconst(1.0, Ty::F32);
        before(kb, &one);
        kb.for_("c", 0, d, wide, |kb, c| {
            let x = load_elem(kb, pool, dt, row.clone() + c.clone());
            body(kb, c, x);
        });
        after(kb, &one);
        return;
    }
    kb.for_("cb", 0, d / 64, LoopTag::Serial, |kb, cb| {
        let at = kb.let_("at", (row.clone() / 64 + cb.clone()) * 68);
        let sc = kb.let_("sc", Expr::LoadRaw(pool, Box::new(at.clone()), Ty::F32));
        before(kb, &sc);
        kb.for_("c", 0, 64, wide, |kb, c| {
            let code = Expr::LoadRaw(pool, Box::new(at.clone() + 4 + c.clone()), Ty::I8);
            body(kb, cb.clone() * 64 + c, code.cast(Ty::F32));
        });
        after(kb, &sc);
    });
}

/// Combines the `n` values (a power of two) at `src` pairwise by halves into
/// `dst[0]`: element `i` with element `i + n/2`, then the halves of those, a vector of
/// the level's width per level (LLVM keeps a loop of exactly one vector's trips
/// whole: see the lowering). A fixed order: the same values whether the elements come
/// from one vector (a row's keys) or from a lane of several (the row tiles).
fn halves(
    kb: &mut KernelBuilder,
    (src, so): (BufId, i64),
    (dst, d_o): (BufId, i64),
    n: i64,
    op: impl Fn(Expr, Expr) -> Expr,
) {
    let mut w = n / 2;
    let mut from = (src, so);
    while w >= 1 {
        let (src, o) = from;
        let lvl = if w > 1 {
            LoopTag::Vectorize(w as u32)
        } else {
            LoopTag::Serial
        };
        kb.for_("i", 0, w, lvl, |kb, i| {
            let lo = Expr::load(src, i.clone() + o);
            let hi = Expr::load(src, i.clone() + (o + w));
            kb.store(dst, i + d_o, op(lo, hi));
        });
        from = (dst, d_o);
        w /= 2;
    }
}

/// A key's score from its sets' sums: added in a fixed tree (pairs, then pairs of
/// those), scaled, then soft-capped. The row form and the row tiles both take it, so a
/// query head's score is the same expression in either.
fn score(mut sums: Vec<Expr>, scale: f64, cap: Option<f64>, t: Ty) -> Expr {
    while sums.len() > 1 {
        sums = sums
            .chunks(2)
            .filter_map(|p| p.iter().cloned().reduce(|x, y| b(BinOp::Add, x, y)))
            .collect();
    }
    let mut sc = b(
        BinOp::Mul,
        sums.pop().unwrap_or(fconst(0.0, t)),
        fconst(scale, t),
    );
    if let Some(cap) = cap {
        let x = b(BinOp::Div, sc, fconst(cap, t));
        sc = b(BinOp::Mul, fconst(cap, t), Expr::un(UnOp::Tanh, x));
    }
    sc
}

/// `vals` (a power of two of them) combined pairwise by halves, as [`halves`] does in
/// memory: element `i` with element `i + n/2`, then the halves of those.
fn tree_of_halves(mut vals: Vec<Expr>, op: impl Fn(Expr, Expr) -> Expr) -> Expr {
    while vals.len() > 1 {
        let w = vals.len() / 2;
        vals = (0..w)
            .map(|i| op(vals[i].clone(), vals[i + w].clone()))
            .collect();
    }
    vals.pop().unwrap_or(Expr::i(0))
}

/// `paged_attention`'s operands and attributes, as both its CPU and GPU kernels read
/// them.
pub(crate) struct PagedArgs<'a> {
    pub q: &'a TensorType,
    pub kp: &'a TensorType,
    pub vp: &'a TensorType,
    pub bt: &'a TensorType,
    pub scale: f64,
    /// 0: no window.
    pub window: i64,
    pub cap: Option<f64>,
    /// The key pool holds each block's keys transposed ([`llmc_ir::ops`]'s
    /// `k_dim_major`).
    pub k_dim_major: bool,
    /// q and the result are `[1, s, h, d]` (`token_major`), else `[1, h, s, d]`.
    pub token_major: bool,
}

/// Element index of the first element of head `hh`, row `r` of a rows' tensor with `h`
/// heads, `s` rows and head dim `d`: `[1, h, s, d]`, or `[1, s, h, d]` token-major
/// (the op's `token_major`).
pub(crate) fn row_at(token_major: bool, hh: Expr, r: Expr, h: i64, s: &Expr, d: i64) -> Expr {
    if token_major {
        (r * h + hh) * d
    } else {
        (hh * s.clone() + r) * d
    }
}

/// Reads [`PagedArgs`] of `paged_attention(q, k_pool, v_pool, pos, row_seq,
/// block_tables)`.
pub(crate) fn paged_args<'a>(
    node: &Node,
    ins: &[&'a TensorType],
    outs: &[&TensorType],
) -> TResult<PagedArgs<'a>> {
    let q = operand(ins, 0, "q")?;
    let kp = operand(ins, 1, "k_pool")?;
    let vp = operand(ins, 2, "v_pool")?;
    let bt = operand(ins, 5, "block_tables")?;
    result(outs, 0)?;
    Ok(PagedArgs {
        q,
        kp,
        vp,
        bt,
        scale: attr_float(node, "scale")?.ok_or("missing attribute `scale`")?,
        window: attr_int(node, "window")?.unwrap_or(0),
        cap: attr_float(node, "softcap")?,
        k_dim_major: attr_int(node, "k_dim_major")? == Some(1),
        token_major: attr_int(node, "token_major")? == Some(1),
    })
}

/// `paged_attention(q, k_pool, v_pool, pos, row_seq, block_tables)`.
pub(crate) fn attention(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let PagedArgs {
        q,
        kp,
        vp,
        bt,
        scale,
        window,
        cap,
        k_dim_major,
        token_major: tok,
    } = paged_args(node, ins, outs)?;
    let (h, s, dk) = match (&q.shape.0[..], tok) {
        ([_, h, s, dk], false) | ([_, s, h, dk], true) => (h, s, dk),
        _ => return Err(format!("operand q must have rank 4, got {}", q.shape)),
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
    let pow2 = bs >= 2 && bs & (bs - 1) == 0;
    // Independent sums per query head and key (over a quarter of the elements each), so
    // the multiply-adds are not one chain dk long.
    let sets = if dk % 4 == 0 { 4 } else { 1 };
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
    let wide = LoopTag::Vectorize(ROW_LANES);
    let ninf = || fconst(f64::NEG_INFINITY, t);
    // Keys are taken in splits of SPLIT_TOKENS (whole blocks) at fixed positions of
    // the sequence; a (row, kv head) pair's state per query head of its group is
    // (m, l, acc[dv]) at `state(g)`: m at 0..group, l at group..2 group, acc after.
    let split_blocks = (SPLIT_TOKENS + bs - 1) / bs;
    let split = split_blocks * bs;
    let slen = group * (dv + 2);
    let m_at = |o: &Expr, g: i64| o.clone() + g;
    let l_at = |o: &Expr, g: i64| o.clone() + (group + g);
    let acc_at = |o: &Expr, g: i64, c: Expr| o.clone() + (2 * group + g * dv) + c;
    // The pair's facts: its row's sequence, the key range [lo, hi) it attends to, and
    // the splits that range meets.
    let pair = |kb: &mut crate::builder::KernelBuilder, rk: Expr| {
        let r = kb.let_("r", rk.clone() / kvh);
        let kv = kb.let_("kv", rk % kvh);
        let (sq, lo, hi) = row_keys(kb, (ib[3], ib[4]), &r, window);
        let s0 = kb.let_("s0", lo.clone() / split);
        let s1 = kb.let_("s1", (hi.clone() - 1) / split + 1);
        (r, kv, sq, lo, hi, s0, s1)
    };
    // One block of keys, slots [js, je) of the block at `base` of the pools, for the
    // query heads of a group whose rows start at `qrows` in q: their states are `ms`,
    // `ls` and the accumulators at `acc_at(o, g, ·)` of `buf`. `fetch` = (last, nbase):
    // whether to prefetch the next block (at `nbase`) beside this one.
    let block = |kb: &mut KernelBuilder,
                 qrows: &[Expr],
                 (ms, ls): (&[VarId], &[VarId]),
                 (buf, o): (BufId, &Expr),
                 (base, js, je): (&Expr, &Expr, &Expr),
                 fetch: Option<(&Expr, &Expr)>| {
        let scores = kb.local("scores", t, group * bs);
        let nbase = fetch.map_or_else(|| base.clone(), |f| f.1.clone());
        let fetch_row = |kb: &mut crate::builder::KernelBuilder,
                         (pool, dt, d): (crate::loopir::BufId, DType, i64),
                         jj: &Expr| {
            // (elements of the buffer per 64-byte line, per token row); a q8_kv
            // pool is a byte buffer of blocks.
            let (per_line, row) = if dt == DType::Q8Kv {
                (64, d / 64 * 68)
            } else {
                (
                    (64 / dt.storage_bytes(1).unwrap_or(4).max(1) as i64).max(1),
                    d,
                )
            };
            let lines = (row + per_line - 1) / per_line;
            let at = (nbase.clone() + jj.clone()) * row;
            for l in 0..lines {
                kb.prefetch(pool, at.clone() + l * per_line);
            }
        };
        let bms: Vec<_> = (0..group).map(|_| kb.let_mut("bm", ninf())).collect();
        // Two copies of each key and value loop, with and without the
        // prefetches: a test per key cost a long prefill 15%.
        let key_loop = |kb: &mut crate::builder::KernelBuilder, fetch: bool| {
            kb.for_("jj", js.clone(), je.clone(), LoopTag::Serial, |kb, jj| {
                if fetch {
                    fetch_row(kb, (ib[1], kp.dtype, dk), &jj);
                }
                let krow = kb.let_("krow", (base.clone() + jj.clone()) * dk);
                let dots: Vec<_> = (0..group)
                    .map(|_| kb.let_mut("dot", fconst(0.0, t)))
                    .collect();
                if kp.dtype == DType::Q8Kv {
                    // q · (scale codes) = scale (q · codes), per block.
                    let parts: Vec<_> = (0..group)
                        .map(|_| kb.let_mut("part", fconst(0.0, t)))
                        .collect();
                    row_runs(
                        kb,
                        (ib[1], kp.dtype),
                        krow,
                        dk,
                        |kb, _| {
                            for p in &parts {
                                kb.assign(*p, fconst(0.0, t));
                            }
                        },
                        |kb, c, kx| {
                            let kx = kb.let_("kx", kx);
                            for (p, qrow) in parts.iter().zip(qrows) {
                                let qv = load_elem(kb, ib[0], q.dtype, qrow.clone() + c.clone());
                                let v = b(BinOp::Add, Expr::Var(*p), b(BinOp::Mul, qv, kx.clone()));
                                kb.assign(*p, v);
                            }
                        },
                        |kb, sc| {
                            for (p, dot) in parts.iter().zip(&dots) {
                                let v = b(BinOp::Mul, sc.clone(), Expr::Var(*p));
                                kb.assign(*dot, b(BinOp::Add, Expr::Var(*dot), v));
                            }
                        },
                    );
                } else {
                    kb.for_("c", 0, dk, wide, |kb, c| {
                        let kx = load_elem(kb, ib[1], kp.dtype, krow.clone() + c.clone());
                        let kx = kb.let_("kx", kx);
                        for (dot, qrow) in dots.iter().zip(qrows) {
                            let qv = load_elem(kb, ib[0], q.dtype, qrow.clone() + c.clone());
                            let v = b(BinOp::Add, Expr::Var(*dot), b(BinOp::Mul, qv, kx.clone()));
                            kb.assign(*dot, v);
                        }
                    });
                }
                for (g, (dot, bm)) in dots.iter().zip(&bms).enumerate() {
                    let mut sc = b(BinOp::Mul, Expr::Var(*dot), fconst(scale, t));
                    if let Some(cap) = cap {
                        let x = b(BinOp::Div, sc, fconst(cap, t));
                        sc = b(BinOp::Mul, fconst(cap, t), Expr::un(UnOp::Tanh, x));
                    }
                    let sc = kb.let_("sc", sc);
                    kb.store(scores, jj.clone() + g as i64 * bs, sc.clone());
                    kb.assign(*bm, Expr::Var(*bm).max(sc));
                }
            });
        };
        // A transposed key slice (`k_dim_major`): element c of the block's keys is
        // one run, so the scores of all of them take a vector multiply-add per
        // element and query head (keys in lanes), with no horizontal sum per key.
        // Slots of the block outside [js, je) are scored too and never read.
        let tree = pow2;
        let parts = kb.local("parts", t, group * bs * sets);
        let key_columns = |kb: &mut crate::builder::KernelBuilder, fetch: bool| {
            let kbase = kb.let_("kbase", base.clone() * dk);
            let per_line = (64 / kp.dtype.storage_bytes(1).unwrap_or(4).max(1) as i64).max(1);
            // Set `u` sums elements `u · dk / sets + c`: `sets` independent sums per
            // query head, so the multiply-adds are not one chain dk long. The sets
            // run one after another (all at once, their sums were 24 AVX2
            // registers, spilled at every element).
            let span = dk / sets;
            for u in 0..sets {
                if fetch {
                    // The next block's slice, a line per element row (modulo the
                    // slice, so the fetches stay within it).
                    kb.for_("c", 0, span, LoopTag::Serial, |kb, c| {
                        let cu = c + u * span;
                        kb.prefetch(ib[1], nbase.clone() * dk + (cu * per_line) % (bs * dk));
                    });
                }
                // The block's keys in lanes, the set's elements one after another
                // (unrolled), the group's sums as variables: registers, where sums
                // kept in `parts` across an element loop were stored at every
                // element. Each sum's chain is the same element order.
                // Wide heads (span above UNROLL_ELEMS) go in runs of UNROLL_ELEMS
                // elements, the sums through `parts` between runs: a whole
                // 256-wide head unrolled made Gemma 3's build 5x slower.
                let run = if span > UNROLL_ELEMS && span % UNROLL_ELEMS == 0 {
                    UNROLL_ELEMS
                } else {
                    span
                };
                let elems = |kb: &mut KernelBuilder, c0: Expr, first: bool| {
                    kb.for_("jj", 0, bs, wide, |kb, jj| {
                        let sums: Vec<_> = (0..group)
                            .map(|g| {
                                let at = jj.clone() + (u * group + g) * bs;
                                let init = if first {
                                    fconst(0.0, t)
                                } else {
                                    Expr::load(parts, at)
                                };
                                kb.let_mut("dot", init)
                            })
                            .collect();
                        for c in 0..run {
                            let cu = kb.let_("cu", c0.clone() + (c + u * span));
                            let kx = load_elem(
                                kb,
                                ib[1],
                                kp.dtype,
                                kbase.clone() + cu.clone() * bs + jj.clone(),
                            );
                            let kx = kb.let_("kx", kx);
                            for (dot, qrow) in sums.iter().zip(qrows) {
                                let qc = load_elem(kb, ib[0], q.dtype, qrow.clone() + cu.clone());
                                let v =
                                    b(BinOp::Add, Expr::Var(*dot), b(BinOp::Mul, qc, kx.clone()));
                                kb.assign(*dot, v);
                            }
                        }
                        for (g, dot) in sums.iter().enumerate() {
                            kb.store(
                                parts,
                                jj.clone() + (u * group + g as i64) * bs,
                                Expr::Var(*dot),
                            );
                        }
                    });
                };
                if run < span {
                    kb.for_("z", 0, group * bs, wide, |kb, z| {
                        kb.store(parts, z + u * group * bs, fconst(0.0, t))
                    });
                    kb.for_("cr", 0, span / run, LoopTag::Serial, |kb, cr| {
                        elems(kb, cr * run, false)
                    });
                } else {
                    elems(kb, Expr::i(0), true);
                }
            }
            for (g, bm) in bms.iter().enumerate() {
                let g = g as i64;
                kb.for_("jj", 0, bs, wide, |kb, jj| {
                    let at = jj.clone() + g * bs;
                    let sums = (0..sets)
                        .map(|u| Expr::load(parts, at.clone() + u * group * bs))
                        .collect();
                    let mut sc = score(sums, scale, cap, t);
                    if tree {
                        // Slots outside [js, je) take no part in the maximum.
                        let inside = jj.clone().ge(js.clone()).and(jj.clone().lt(je.clone()));
                        sc = Expr::select(inside, sc, ninf());
                    }
                    kb.store(scores, at, sc);
                });
                if tree {
                    // The block's maximum as a tree of vector maxima (halves of the
                    // block, then halves of those) in `parts`: a scalar chain of
                    // `bs` maxima was the block's longest latency.
                    halves(kb, (scores, g * bs), (parts, g * bs), bs, Expr::max);
                    let top = Expr::load(parts, Expr::i(g * bs));
                    kb.assign(*bm, Expr::Var(*bm).max(top));
                } else {
                    kb.for_("jj", js.clone(), je.clone(), LoopTag::Serial, |kb, jj| {
                        let sc = Expr::load(scores, jj + g * bs);
                        kb.assign(*bm, Expr::Var(*bm).max(sc));
                    });
                }
            }
        };
        match (fetch, k_dim_major) {
            (Some((last, _)), true) => kb.if_else(
                last.clone(),
                |kb| key_columns(kb, true),
                |kb| key_columns(kb, false),
            ),
            (Some((last, _)), false) => kb.if_else(
                last.clone(),
                |kb| key_loop(kb, true),
                |kb| key_loop(kb, false),
            ),
            (None, true) => key_columns(kb, false),
            (None, false) => key_loop(kb, false),
        }
        // Per query head: the running maximum, the rescale of its sum and
        // accumulator, and the block's probabilities (vectorized over its keys).
        let mns: Vec<Expr> = (0..group)
            .map(|g| {
                let (m, l, bm) = (ms[g as usize], ls[g as usize], bms[g as usize]);
                let mn = kb.let_("mn", Expr::Var(m).max(Expr::Var(bm)));
                // The rescale only when the maximum grew: otherwise its factor is
                // exp(0) = 1 and it changes nothing (in a long prefill most blocks
                // leave the maximum where it was, and the scalar exp per query
                // head and block was a tenth of the kernel).
                kb.if_(mn.clone().ne_(Expr::Var(m)), |kb| {
                    let corr = kb.let_("corr", exp(b(BinOp::Sub, Expr::Var(m), mn.clone())));
                    kb.assign(l, b(BinOp::Mul, Expr::Var(l), corr.clone()));
                    kb.for_("c", 0, dv, wide, |kb, c| {
                        let at = acc_at(o, g, c);
                        let a = b(BinOp::Mul, Expr::load(buf, at.clone()), corr.clone());
                        kb.store(buf, at, a);
                    });
                });
                if tree {
                    // Every slot's probability (0 outside [js, je)), then their sum
                    // as a fixed tree of halves: the same order whether the keys sit
                    // in lanes (here) or the query heads do (the row tiles).
                    kb.for_("jj", 0, bs, wide, |kb, jj| {
                        let at = jj.clone() + g * bs;
                        let inside = jj.clone().ge(js.clone()).and(jj.lt(je.clone()));
                        let pr = exp(b(BinOp::Sub, Expr::load(scores, at.clone()), mn.clone()));
                        kb.store(scores, at, Expr::select(inside, pr, fconst(0.0, t)));
                    });
                    halves(kb, (scores, g * bs), (parts, g * bs), bs, |x, y| {
                        b(BinOp::Add, x, y)
                    });
                    let top = Expr::load(parts, Expr::i(g * bs));
                    kb.assign(l, b(BinOp::Add, Expr::Var(l), top));
                } else {
                    kb.for_("jj", js.clone(), je.clone(), wide, |kb, jj| {
                        let at = jj + g * bs;
                        let pr = kb.let_(
                            "pr",
                            exp(b(BinOp::Sub, Expr::load(scores, at.clone()), mn.clone())),
                        );
                        kb.store(scores, at, pr.clone());
                        kb.assign(l, b(BinOp::Add, Expr::Var(l), pr));
                    });
                }
                mn
            })
            .collect();
        // The values: each value row read once for the whole group.
        let lanes = ROW_LANES as i64;
        let value_loop = |kb: &mut crate::builder::KernelBuilder, fetch: bool| {
            if vp.dtype != DType::Q8Kv && dv % lanes == 0 && dv > lanes && dv <= 4 * lanes {
                // A vector of elements at a time over the block's keys, so the
                // group's accumulators of that slice stay in registers (the whole
                // row's, 24 AVX2 registers at dv 64 and a group of 3, were spilled
                // at every key). A whole block unrolls its keys inside the vector
                // loop with the accumulators as variables; a partial one loops over
                // its keys per slice. Each element's chain over the keys is the
                // same as a key at a time.
                let whole = js.clone().eq_(Expr::i(0)).and(je.clone().eq_(Expr::i(bs)));
                let unrolled = |kb: &mut KernelBuilder| {
                    if fetch {
                        kb.for_("jj", 0, bs, LoopTag::Serial, |kb, jj| {
                            fetch_row(kb, (ib[2], vp.dtype, dv), &jj);
                        });
                    }
                    for ch in 0..dv / lanes {
                        kb.for_("c", ch * lanes, (ch + 1) * lanes, wide, |kb, c| {
                            let accs: Vec<_> = (0..group)
                                .map(|g| {
                                    kb.let_mut("acc", Expr::load(buf, acc_at(o, g, c.clone())))
                                })
                                .collect();
                            for jj in 0..bs {
                                let vv = load_elem(
                                    kb,
                                    ib[2],
                                    vp.dtype,
                                    (base.clone() + jj) * dv + c.clone(),
                                );
                                let vv = kb.let_("vv", vv);
                                for (g, acc) in accs.iter().enumerate() {
                                    let pr = Expr::load(scores, Expr::i(jj + g as i64 * bs));
                                    let ps = b(BinOp::Mul, pr, fconst(1.0, t));
                                    let v = b(
                                        BinOp::Add,
                                        Expr::Var(*acc),
                                        b(BinOp::Mul, ps, vv.clone()),
                                    );
                                    kb.assign(*acc, v);
                                }
                            }
                            for (g, acc) in accs.iter().enumerate() {
                                kb.store(buf, acc_at(o, g as i64, c.clone()), Expr::Var(*acc));
                            }
                        });
                    }
                };
                let chunked = |kb: &mut KernelBuilder| {
                    for ch in 0..dv / lanes {
                        kb.for_("jj", js.clone(), je.clone(), LoopTag::Serial, |kb, jj| {
                            if fetch && ch == 0 {
                                fetch_row(kb, (ib[2], vp.dtype, dv), &jj);
                            }
                            let pss: Vec<Expr> = (0..group)
                                .map(|g| {
                                    let pr = Expr::load(scores, jj.clone() + g * bs);
                                    kb.let_("ps", b(BinOp::Mul, pr, fconst(1.0, t)))
                                })
                                .collect();
                            let vrow = kb.let_("vrow", (base.clone() + jj) * dv);
                            kb.for_("c", ch * lanes, (ch + 1) * lanes, wide, |kb, c| {
                                let vv = load_elem(kb, ib[2], vp.dtype, vrow.clone() + c.clone());
                                let vv = kb.let_("vv", vv);
                                for (g, ps) in pss.iter().enumerate() {
                                    let at = acc_at(o, g as i64, c.clone());
                                    let a = Expr::load(buf, at.clone());
                                    let v = b(BinOp::Add, a, b(BinOp::Mul, ps.clone(), vv.clone()));
                                    kb.store(buf, at, v);
                                }
                            });
                        });
                    }
                };
                if (dv / lanes) * bs * group <= UNROLL_ELEMS * UNROLL_ELEMS {
                    kb.if_else(whole, unrolled, chunked);
                } else {
                    // Wide heads: a whole block's keys unrolled for every slice of
                    // the row would be too much code (Gemma 3's 256); per slice.
                    chunked(kb);
                }
                return;
            }
            kb.for_("jj", js.clone(), je.clone(), LoopTag::Serial, |kb, jj| {
                let prs: Vec<Expr> = (0..group)
                    .map(|g| kb.let_("pr", Expr::load(scores, jj.clone() + g * bs)))
                    .collect();
                if fetch {
                    fetch_row(kb, (ib[2], vp.dtype, dv), &jj);
                }
                let vrow = kb.let_("vrow", (base.clone() + jj) * dv);
                // p (scale codes) = (p scale) codes, per block.
                let pss: Vec<_> = (0..group)
                    .map(|_| kb.let_mut("ps", fconst(0.0, t)))
                    .collect();
                row_runs(
                    kb,
                    (ib[2], vp.dtype),
                    vrow,
                    dv,
                    |kb, sc| {
                        for (ps, pr) in pss.iter().zip(&prs) {
                            kb.assign(*ps, b(BinOp::Mul, pr.clone(), sc.clone()));
                        }
                    },
                    |kb, c, vv| {
                        let vv = kb.let_("vv", vv);
                        for (g, ps) in pss.iter().enumerate() {
                            let at = acc_at(o, g as i64, c.clone());
                            let a = Expr::load(buf, at.clone());
                            let v = b(BinOp::Add, a, b(BinOp::Mul, Expr::Var(*ps), vv.clone()));
                            kb.store(buf, at, v);
                        }
                    },
                    |_, _| {},
                );
            });
        };
        match fetch {
            Some((last, _)) => kb.if_else(
                last.clone(),
                |kb| value_loop(kb, true),
                |kb| value_loop(kb, false),
            ),
            None => value_loop(kb, false),
        }
        for (g, mn) in mns.into_iter().enumerate() {
            kb.assign(ms[g], mn);
        }
    };
    // One split's online softmax over keys [a, b) of the pair, block by block, into
    // the state at `o` of `buf`.
    #[allow(clippy::too_many_arguments)]
    let attend = |kb: &mut crate::builder::KernelBuilder,
                  (r, kv, sq): (&Expr, &Expr, &Expr),
                  a: Expr,
                  b_: Expr,
                  buf: crate::loopir::BufId,
                  o: &Expr| {
        kb.for_("c", 0, group * dv, v8, |kb, c| {
            kb.store(buf, o.clone() + 2 * group + c, fconst(0.0, t))
        });
        let ms: Vec<_> = (0..group)
            .map(|g| kb.let_mut(&format!("m{g}"), ninf()))
            .collect();
        let ls: Vec<_> = (0..group)
            .map(|g| kb.let_mut(&format!("l{g}"), fconst(0.0, t)))
            .collect();
        let first = kb.let_("first", (a.clone() / bs) * bs);
        kb.for_step("j0", first, b_.clone(), bs, LoopTag::Serial, |kb, j0| {
            let entry = kb.let_("entry", sq.clone() * we.clone() + j0.clone() / bs);
            let blk = kb.let_("blk", load_i64(ib[5], entry.clone()));
            let js = kb.let_("js", a.clone().max(j0.clone()) - j0.clone());
            let je = kb.let_("je", b_.clone().min(j0.clone() + bs) - j0.clone());
            let base = kb.let_("base", (blk * kvh + kv.clone()) * bs);
            // The next block of the split (this one at the last) on its way to the
            // cache while this one is computed: a block is a scattered 2 KiB that
            // the hardware prefetchers find late.
            let nentry = kb.let_(
                "nentry",
                Expr::select(
                    (j0.clone() + bs).lt(b_.clone()),
                    entry.clone() + 1,
                    entry.clone(),
                ),
            );
            let nblk = kb.let_("nblk", load_i64(ib[5], nentry));
            let nbase = kb.let_("nbase", (nblk * kvh + kv.clone()) * bs);
            // Only for a sequence's last row of the step (every decode row): a prefill
            // chunk's other rows read blocks the cache already holds. Row `jj` of the
            // next block is fetched beside row `jj` of this one (in the key and the
            // value loop), so the prefetches spread over the block instead of
            // queueing at its start (a burst of 64 lines stalled on the fill buffers:
            // a third of the kernel's samples at 32 streams).
            let rn = kb.let_("rn", (r.clone() + 1).min(se.clone() - 1));
            let last = (r.clone() + 1)
                .ge(se.clone())
                .or(load_i64(ib[4], rn).ne_(sq.clone()));
            let last = kb.let_("last", last);
            // Scores of every query head of the group: each key row is read (and
            // widened) once for the whole group.
            let qrows: Vec<Expr> = (0..group)
                .map(|g| {
                    kb.let_(
                        "qrow",
                        row_at(tok, kv.clone() * group + g, r.clone(), h, &se, dk),
                    )
                })
                .collect();
            block(
                kb,
                &qrows,
                (&ms, &ls),
                (buf, o),
                (&base, &js, &je),
                Some((&last, &nbase)),
            );
        });
        for g in 0..group {
            kb.store(buf, m_at(o, g), Expr::Var(ms[g as usize]));
            kb.store(buf, l_at(o, g), Expr::Var(ls[g as usize]));
        }
    };
    // The keys of split `sp` within [lo, hi).
    let split_range = |kb: &mut crate::builder::KernelBuilder, sp: &Expr, lo: &Expr, hi: &Expr| {
        let a = kb.let_("a", lo.clone().max(sp.clone() * split));
        let b_ = kb.let_("b", hi.clone().min((sp.clone() + 1) * split));
        (a, b_)
    };
    let init = |kb: &mut crate::builder::KernelBuilder, buf: crate::loopir::BufId, o: &Expr| {
        for g in 0..group {
            kb.store(buf, m_at(o, g), ninf());
            kb.store(buf, l_at(o, g), fconst(0.0, t));
        }
        kb.for_("c", 0, group * dv, v8, |kb, c| {
            kb.store(buf, o.clone() + 2 * group + c, fconst(0.0, t))
        });
    };
    // The running state at `o` of `run` takes a split's state at `po` of `part` (in
    // split order: the same arithmetic whichever way the splits were computed).
    let merge = |kb: &mut crate::builder::KernelBuilder,
                 run: crate::loopir::BufId,
                 o: &Expr,
                 part: crate::loopir::BufId,
                 po: &Expr| {
        for g in 0..group {
            let mr = kb.let_("mr", Expr::load(run, m_at(o, g)));
            let mp = kb.let_("mp", Expr::load(part, m_at(po, g)));
            let mn = kb.let_("mn", mr.clone().max(mp.clone()));
            let cr = kb.let_(
                "cr",
                Expr::select(
                    mr.clone().eq_(ninf()),
                    fconst(0.0, t),
                    exp(b(BinOp::Sub, mr, mn.clone())),
                ),
            );
            let cp = kb.let_("cp", exp(b(BinOp::Sub, mp, mn.clone())));
            let l = b(
                BinOp::Add,
                b(BinOp::Mul, Expr::load(run, l_at(o, g)), cr.clone()),
                b(BinOp::Mul, Expr::load(part, l_at(po, g)), cp.clone()),
            );
            kb.store(run, l_at(o, g), l);
            kb.store(run, m_at(o, g), mn);
            kb.for_("c", 0, dv, v8, |kb, c| {
                let at = acc_at(o, g, c.clone());
                let v = b(
                    BinOp::Add,
                    b(BinOp::Mul, Expr::load(run, at.clone()), cr.clone()),
                    b(BinOp::Mul, Expr::load(part, acc_at(po, g, c)), cp.clone()),
                );
                kb.store(run, at, v);
            });
        }
    };
    // The output rows of a pair from its final state.
    let finish = |kb: &mut crate::builder::KernelBuilder,
                  (r, kv): (&Expr, &Expr),
                  run: crate::loopir::BufId,
                  o: &Expr| {
        for g in 0..group {
            let l = kb.let_("lsum", Expr::load(run, l_at(o, g)));
            let inv = kb.let_("inv", recip_or_zero(l, t));
            let orow = kb.let_(
                "orow",
                row_at(tok, kv.clone() * group + g, r.clone(), h, &se, dv),
            );
            kb.for_("c", 0, dv, v8, |kb, c| {
                let y = b(
                    BinOp::Mul,
                    Expr::load(run, acc_at(o, g, c.clone())),
                    inv.clone(),
                );
                let y = to_storage(kb, ob[0], y);
                kb.store(ob[0], orow.clone() + c, y);
            });
        }
    };
    // One (row, kv head) pair, `rk` = row * kvh + head, as a task's work: its splits
    // in order, merged into the running state, then its output rows.
    let one_pair = |kb: &mut crate::builder::KernelBuilder, rk: Expr| {
        let (r, kv, sq, lo, hi, s0, s1) = pair(kb, rk);
        let run = kb.local("run", t, slen);
        let part = kb.local("part", t, slen);
        let zero = Expr::i(0);
        // The first split straight into the running state: merging a state into the
        // initial one (m = -inf, l = 0, acc = 0) gives it back unchanged (factors 0 and
        // exp(0) = 1), so only the later splits take the merge.
        let (a, b_) = split_range(kb, &s0, &lo, &hi);
        attend(kb, (&r, &kv, &sq), a, b_, run, &zero);
        kb.for_("sp", s0 + 1, s1, LoopTag::Serial, |kb, sp| {
            let (a, b_) = split_range(kb, &sp, &lo, &hi);
            attend(kb, (&r, &kv, &sq), a, b_, part, &zero);
            merge(kb, run, &zero, part, &zero);
        });
        finish(kb, (&r, &kv), run, &zero);
    };
    // Many pairs on a GPU mapping: one task per pair. The pairs go last first: in a
    // prefill chunk the later rows attend to more keys, and the pool's guided claims
    // (large first, small last) then end on the light ones.
    if gpu_mapping() {
        kb.for_("rk", 0, n.clone(), tag, |kb, rk| {
            let rk = kb.let_("rk_rev", n.clone() - 1 - rk);
            one_pair(kb, rk);
        });
        return kb.finish();
    }
    // Row tiles (CPU; float pools with each block's keys by dimension, a block a power
    // of two): a task takes `rt` rows of one sequence (a prefill chunk's) and, per
    // block, scores its keys for all their query heads at once with the heads in
    // vector lanes (a key element is one broadcast against a vector of queries), then
    // takes the block's maxima, probabilities and their sums down the keys with whole
    // vectors instead of per head. Each head's arithmetic is the row form's, value for
    // value (the same chains over the same elements, the same trees of halves), so a
    // row gives the same bits in a tile as alone (batch invariance, a preempted
    // sequence's recompute). A block whose rows do not all see the same slots (a
    // chunk's last keys, a window's first) goes row by row through the row form's
    // block.
    let lanes = ROW_LANES as i64;
    let rt = if k_dim_major
        && pow2
        && vp.dtype != DType::Q8Kv
        && dv % lanes == 0
        && group * 2 <= lanes
    {
        lanes / group
    } else {
        1
    };
    let members = rt * group;
    let tile_pair = |kb: &mut KernelBuilder, r0: &Expr, sq: &Expr, kv: &Expr| {
        let qt = kb.local("qt", t, dk * lanes);
        let sacc = kb.local("sacc", t, sets * bs * lanes);
        let tsc = kb.local("tsc", t, bs * lanes);
        let kf = kb.local("kf", t, dk * bs);
        // Per member in lanes during a split: the running maximum and sum, and the
        // block's rescale factor (1 where the maximum stayed).
        let tm = kb.local("tm", t, lanes);
        let tl = kb.local("tl", t, lanes);
        let tcorr = kb.local("tcorr", t, lanes);
        let spans = kb.local("spans", Ty::I64, 2 * rt);
        let run = kb.local("trun", t, rt * slen);
        let part = kb.local("tpart", t, rt * slen);
        // The tile's queries transposed: element c of member mi (row mi / group, head
        // mi % group of the kv head's group) at qt[c lanes + mi]; the lanes past the
        // members hold 0.
        kb.for_("z", 0, dk * lanes, wide, |kb, z| {
            kb.store(qt, z, fconst(0.0, t))
        });
        kb.for_("c", 0, dk, LoopTag::Serial, |kb, c| {
            for mi in 0..members {
                let (ri, g) = (mi / group, mi % group);
                let at =
                    row_at(tok, kv.clone() * group + g, r0.clone() + ri, h, &se, dk) + c.clone();
                let qv = load_elem(kb, ib[0], q.dtype, at);
                kb.store(qt, c.clone() * lanes + mi, qv);
            }
        });
        // Each row's keys [lo, hi) and the splits they meet.
        let facts: Vec<(Expr, Expr, Expr, Expr)> = (0..rt)
            .map(|ri| {
                let r = kb.let_("r", r0.clone() + ri);
                let (_, lo, hi) = row_keys(kb, (ib[3], ib[4]), &r, window);
                let s0 = kb.let_("s0", lo.clone() / split);
                let s1 = kb.let_("s1", (hi.clone() - 1) / split + 1);
                (lo, hi, s0, s1)
            })
            .collect();
        let smin = facts.iter().map(|f| f.2.clone()).reduce(Expr::min);
        let smax = facts.iter().map(|f| f.3.clone()).reduce(Expr::max);
        let hmax = facts.iter().map(|f| f.1.clone()).reduce(Expr::max);
        let (Some(smin), Some(smax), Some(hmax)) = (smin, smax, hmax) else {
            return;
        };
        let hmax = kb.let_("hmax", hmax);
        kb.for_("sp", smin, smax, LoopTag::Serial, |kb, sp| {
            // Row ri's keys in this split, [a, b): empty where the split is not its.
            let ab: Vec<(Expr, Expr)> = facts
                .iter()
                .map(|(lo, hi, s0, s1)| {
                    let own = sp.clone().ge(s0.clone()).and(sp.clone().lt(s1.clone()));
                    let own = kb.let_("own", own);
                    let (a, b_) = split_range(kb, &sp, lo, hi);
                    let a = kb.let_("ta", Expr::select(own.clone(), a, Expr::i(0)));
                    let b_ = kb.let_("tb", Expr::select(own, b_, Expr::i(0)));
                    (a, b_)
                })
                .collect();
            for ri in 0..rt {
                init(kb, part, &Expr::i(ri * slen));
            }
            kb.for_("ln", 0, lanes, wide, |kb, ln| {
                kb.store(tm, ln.clone(), ninf());
                kb.store(tl, ln, fconst(0.0, t));
            });
            let none = Expr::i(i64::MAX / 4);
            let amin = ab
                .iter()
                .map(|(a, b_)| Expr::select(a.clone().lt(b_.clone()), a.clone(), none.clone()))
                .reduce(Expr::min)
                .unwrap_or(none.clone());
            let bmax = ab
                .iter()
                .map(|(_, b_)| b_.clone())
                .reduce(Expr::max)
                .unwrap_or(Expr::i(0));
            let first = kb.let_("first", (amin / bs) * bs);
            kb.for_step("j0", first, bmax, bs, LoopTag::Serial, |kb, j0| {
                let entry = kb.let_("entry", sq.clone() * we.clone() + j0.clone() / bs);
                let blk = kb.let_("blk", load_i64(ib[5], entry.clone()));
                let base = kb.let_("base", (blk * kvh + kv.clone()) * bs);
                // The tile's next block (this one at its last), asked for while this
                // one is computed: blocks are scattered 2 KiB runs that the hardware
                // prefetchers find late.
                let nentry = Expr::select(
                    (j0.clone() + bs).lt(hmax.clone()),
                    entry.clone() + 1,
                    entry.clone(),
                );
                let nblk = kb.let_("nblk", load_i64(ib[5], nentry));
                let nbase = kb.let_("nbase", (nblk * kvh + kv.clone()) * bs);
                let mut same: Option<Expr> = None;
                let mut js0 = (Expr::i(0), Expr::i(0));
                for (ri, (a, b_)) in ab.iter().enumerate() {
                    let js = kb.let_("js", a.clone().max(j0.clone()) - j0.clone());
                    let je = kb.let_("je", b_.clone().min(j0.clone() + bs) - j0.clone());
                    kb.store(spans, Expr::i(2 * ri as i64), js.clone());
                    kb.store(spans, Expr::i(2 * ri as i64 + 1), je.clone());
                    same = Some(match same {
                        None => {
                            js0 = (js.clone(), je.clone());
                            je.gt(js)
                        }
                        Some(s) => s.and(js.eq_(js0.0.clone())).and(je.eq_(js0.1.clone())),
                    });
                }
                let (js, je) = js0;
                let same = same.unwrap_or(Expr::i(0).gt(Expr::i(0)));
                let same = kb.let_("same", same);
                kb.if_else(
                    same,
                    |kb| {
                        let inside =
                            |j: i64| Expr::i(j).ge(js.clone()).and(Expr::i(j).lt(je.clone()));
                        // The block's keys widened to f32 once (exactly), so each
                        // key element below is one broadcast load into the FMA (an
                        // f16 element each was a load, a convert and a broadcast).
                        let kbase = kb.let_("kbase", base.clone() * dk);
                        kb.for_("z", 0, dk * bs, wide, |kb, z| {
                            let kx = load_elem(kb, ib[1], kp.dtype, kbase.clone() + z.clone());
                            kb.store(kf, z, kx)
                        });
                        // Per set, every slot's sum for every member: the set's chain
                        // over its elements in order, as the row form's.
                        let span = dk / sets;
                        kb.for_("u", 0, sets, LoopTag::Serial, |kb, u| {
                            let uo = kb.let_("uo", u.clone() * (bs * lanes));
                            // Element c of the set into every slot's sum: the first
                            // onto 0 (as the row form's zeroed sums), without a load.
                            // A few keys at a time: their sums stay in registers
                            // across the elements (a whole block's, 16 vectors of
                            // 16 lanes, were 32 AVX2 registers: spilled at every
                            // element). Each sum's chain is the same.
                            let step =
                                |kb: &mut KernelBuilder,
                                 c: Expr,
                                 first: bool,
                                 keys: std::ops::Range<i64>| {
                                    let cu = kb.let_("cu", c + u.clone() * span);
                                    let col = kb.let_("col", cu.clone() * bs);
                                    kb.for_("ln", 0, lanes, wide, |kb, ln| {
                                        let qv = kb.let_(
                                            "qv",
                                            Expr::load(qt, cu.clone() * lanes + ln.clone()),
                                        );
                                        for j in keys.clone() {
                                            let kx = kb.let_("kx", Expr::load(kf, col.clone() + j));
                                            let at = uo.clone() + j * lanes + ln.clone();
                                            let old = if first {
                                                fconst(0.0, t)
                                            } else {
                                                Expr::load(sacc, at.clone())
                                            };
                                            let v =
                                                b(BinOp::Add, old, b(BinOp::Mul, qv.clone(), kx));
                                            kb.store(sacc, at, v);
                                        }
                                    });
                                };
                            for k0 in (0..bs).step_by(SCORE_KEYS as usize) {
                                let keys = k0..(k0 + SCORE_KEYS).min(bs);
                                step(kb, Expr::i(0), true, keys.clone());
                                kb.for_("c", 1, span, LoopTag::Serial, |kb, c| {
                                    step(kb, c, false, keys.clone())
                                });
                            }
                        });
                        // The scores (the sets' sums in the row form's tree, scaled,
                        // capped, slots outside [js, je) at -inf) and each member's
                        // block maximum.
                        kb.for_("ln", 0, lanes, wide, |kb, ln| {
                            let mut scs = Vec::new();
                            for j in 0..bs {
                                let sums = (0..sets)
                                    .map(|u| Expr::load(sacc, ln.clone() + (u * bs + j) * lanes))
                                    .collect();
                                let sc = score(sums, scale, cap, t);
                                let sc = kb.let_("sc", Expr::select(inside(j), sc, ninf()));
                                kb.store(tsc, ln.clone() + j * lanes, sc.clone());
                                scs.push(sc);
                            }
                            // The row form's: the new maximum, and when it grew the
                            // factor exp(m - mn) on the sum (the same exp, whether
                            // in lanes or alone: its steps carry no fast-math flags).
                            let bm = tree_of_halves(scs, Expr::max);
                            let m = kb.let_("m", Expr::load(tm, ln.clone()));
                            let mn = kb.let_("mn", m.clone().max(bm));
                            let grew = kb.let_("grew", mn.clone().ne_(m.clone()));
                            let corr = kb.let_("corr", exp(b(BinOp::Sub, m, mn.clone())));
                            let l = Expr::load(tl, ln.clone());
                            let l = Expr::select(
                                grew.clone(),
                                b(BinOp::Mul, l.clone(), corr.clone()),
                                l,
                            );
                            kb.store(tl, ln.clone(), l);
                            kb.store(tcorr, ln.clone(), Expr::select(grew, corr, fconst(1.0, t)));
                            kb.store(tm, ln, mn);
                        });
                        // Each member's accumulator rescaled when its maximum grew (a
                        // factor of exactly 1 would change nothing).
                        for mi in 0..members {
                            let (ri, g) = (mi / group, mi % group);
                            let o = Expr::i(ri * slen);
                            let corr = kb.let_("corr", Expr::load(tcorr, Expr::i(mi)));
                            kb.if_(corr.clone().ne_(fconst(1.0, t)), |kb| {
                                kb.for_("c", 0, dv, wide, |kb, c| {
                                    let at = acc_at(&o, g, c);
                                    let a =
                                        b(BinOp::Mul, Expr::load(part, at.clone()), corr.clone());
                                    kb.store(part, at, a);
                                });
                            });
                        }
                        // The probabilities and their sum per member.
                        kb.for_("ln", 0, lanes, wide, |kb, ln| {
                            let mn = kb.let_("mnv", Expr::load(tm, ln.clone()));
                            let mut ps = Vec::new();
                            for j in 0..bs {
                                let at = ln.clone() + j * lanes;
                                let pr =
                                    exp(b(BinOp::Sub, Expr::load(tsc, at.clone()), mn.clone()));
                                let p = kb.let_("p", Expr::select(inside(j), pr, fconst(0.0, t)));
                                kb.store(tsc, at, p.clone());
                                ps.push(p);
                            }
                            let sum = tree_of_halves(ps, |x, y| b(BinOp::Add, x, y));
                            let l = Expr::load(tl, ln.clone());
                            kb.store(tl, ln, b(BinOp::Add, l, sum));
                        });
                        // The values, a vector of each value row at a time: every
                        // member's accumulator takes the slots in order, as the row
                        // form's.
                        // A few members at a time: their accumulators of the
                        // slice stay in registers across the keys (all 15 members'
                        // were 30 AVX2 registers, spilled at every key). Each
                        // accumulator's chain over the keys is the same.
                        kb.for_("ch", 0, dv / lanes, LoopTag::Serial, |kb, ch| {
                            for m0 in (0..members).step_by(PV_MEMBERS as usize) {
                                let mem = m0..(m0 + PV_MEMBERS).min(members);
                                kb.for_("jj", js.clone(), je.clone(), LoopTag::Serial, |kb, jj| {
                                    if m0 == 0 {
                                        // A line of the next block's keys and one of its
                                        // values per trip, spread over the block's trips.
                                        let trip = kb.let_("trip", ch.clone() * bs + jj.clone());
                                        for (pool, dt, d) in
                                            [(ib[1], kp.dtype, dk), (ib[2], vp.dtype, dv)]
                                        {
                                            let per_line = (64
                                                / dt.storage_bytes(1).unwrap_or(4).max(1) as i64)
                                                .max(1);
                                            let lines = (d * bs + per_line - 1) / per_line;
                                            let at = nbase.clone() * d
                                                + (trip.clone() % lines) * per_line;
                                            kb.prefetch(pool, at);
                                        }
                                    }
                                    let vrow = kb.let_(
                                        "vrow",
                                        (base.clone() + jj.clone()) * dv + ch.clone() * lanes,
                                    );
                                    let pss: Vec<(i64, Expr)> = mem
                                        .clone()
                                        .map(|mi| {
                                            let pr = kb.let_(
                                                "pr",
                                                Expr::load(tsc, jj.clone() * lanes + mi),
                                            );
                                            (
                                                mi,
                                                kb.let_(
                                                    "ps",
                                                    b(BinOp::Mul, pr, fconst(1.0, Ty::F32)),
                                                ),
                                            )
                                        })
                                        .collect();
                                    kb.for_("c", 0, lanes, wide, |kb, c| {
                                        let vv = load_elem(
                                            kb,
                                            ib[2],
                                            vp.dtype,
                                            vrow.clone() + c.clone(),
                                        );
                                        let vv = kb.let_("vv", vv);
                                        for (mi, ps) in &pss {
                                            let (ri, g) = (mi / group, mi % group);
                                            let at = acc_at(
                                                &Expr::i(ri * slen),
                                                g,
                                                ch.clone() * lanes + c.clone(),
                                            );
                                            let v = b(
                                                BinOp::Add,
                                                Expr::load(part, at.clone()),
                                                b(BinOp::Mul, ps.clone(), vv.clone()),
                                            );
                                            kb.store(part, at, v);
                                        }
                                    });
                                });
                            }
                        });
                    },
                    |kb| {
                        // Row by row through the row form's block.
                        kb.for_("ri", 0, rt, LoopTag::Serial, |kb, ri| {
                            let js = kb.let_("js", Expr::load(spans, ri.clone() * 2));
                            let je = kb.let_("je", Expr::load(spans, ri.clone() * 2 + 1));
                            kb.if_(je.clone().gt(js.clone()), |kb| {
                                let o = kb.let_("o", ri.clone() * slen);
                                let qrows: Vec<Expr> = (0..group)
                                    .map(|g| {
                                        let at = row_at(
                                            tok,
                                            kv.clone() * group + g,
                                            r0.clone() + ri.clone(),
                                            h,
                                            &se,
                                            dk,
                                        );
                                        kb.let_("qrow", at)
                                    })
                                    .collect();
                                let mi = kb.let_("mi", ri.clone() * group);
                                let ms: Vec<VarId> = (0..group)
                                    .map(|g| kb.let_mut("m", Expr::load(tm, mi.clone() + g)))
                                    .collect();
                                let ls: Vec<VarId> = (0..group)
                                    .map(|g| kb.let_mut("l", Expr::load(tl, mi.clone() + g)))
                                    .collect();
                                block(kb, &qrows, (&ms, &ls), (part, &o), (&base, &js, &je), None);
                                for g in 0..group {
                                    kb.store(tm, mi.clone() + g, Expr::Var(ms[g as usize]));
                                    kb.store(tl, mi.clone() + g, Expr::Var(ls[g as usize]));
                                }
                            });
                        });
                    },
                );
            });
            for mi in 0..members {
                let o = Expr::i(mi / group * slen);
                let g = mi % group;
                kb.store(part, m_at(&o, g), Expr::load(tm, Expr::i(mi)));
                kb.store(part, l_at(&o, g), Expr::load(tl, Expr::i(mi)));
            }
            // Each row's split state into its running state, as the row form's: the
            // first split as it is, the later ones merged in order.
            for (ri, (_, _, s0, s1)) in facts.iter().enumerate() {
                let o = Expr::i(ri as i64 * slen);
                kb.if_else(
                    sp.clone().eq_(s0.clone()),
                    |kb| {
                        kb.for_("z", 0, slen, v8, |kb, z| {
                            let at = o.clone() + z;
                            kb.store(run, at.clone(), Expr::load(part, at))
                        })
                    },
                    |kb| {
                        let later = sp.clone().gt(s0.clone()).and(sp.clone().lt(s1.clone()));
                        kb.if_(later, |kb| merge(kb, run, &o, part, &o));
                    },
                );
            }
        });
        for ri in 0..rt {
            let r = kb.let_("r", r0.clone() + ri);
            finish(kb, (&r, kv), run, &Expr::i(ri * slen));
        }
    };
    // On the CPU a task takes a row (last first, as above) and its kv heads in order:
    // the heads' slices of a block sit side by side in the pool, so one task reads
    // each block's keys and values as one run instead of a task per head reading its
    // slice at another time (SmolLM2 Q4_1, alternated: attention's time in 32-stream
    // decode 2394 / 2373 -> 2296 / 2234 ms, in a 2,048-token prefill 2616 / 2312 ->
    // 2305 / 2216 ms).
    let per_row = |kb: &mut crate::builder::KernelBuilder| {
        if rt == 1 {
            kb.for_("rr", 0, se.clone(), tag, |kb, rr| {
                let r_rev = kb.let_("r_rev", se.clone() - 1 - rr);
                kb.for_("kvi", 0, kvh, LoopTag::Serial, |kb, kvi| {
                    let rk = kb.let_("rk", r_rev.clone() * kvh + kvi);
                    one_pair(kb, rk);
                });
            });
            return;
        }
        // Tiles of `rt` rows, last first; a tile whose rows are not all of one
        // sequence (decode rows, a chunk's edge) takes them one by one.
        let nt = kb.let_("nt", (se.clone() + (rt - 1)) / rt);
        kb.for_("tt", 0, nt.clone(), tag, |kb, tt| {
            let r0 = kb.let_("r0", (nt.clone() - 1 - tt) * rt);
            let sq = kb.let_("sq", load_i64(ib[4], r0.clone()));
            let mut one = (r0.clone() + rt).le(se.clone());
            for ri in 1..rt {
                let r = (r0.clone() + ri).min(se.clone() - 1);
                one = one.and(load_i64(ib[4], r).eq_(sq.clone()));
            }
            let one = kb.let_("one_seq", one);
            kb.if_else(
                one,
                |kb| {
                    kb.for_("kvi", 0, kvh, LoopTag::Serial, |kb, kvi| {
                        tile_pair(kb, &r0, &sq, &kvi);
                    });
                },
                |kb| {
                    let rows = kb.let_("rows", (se.clone() - r0.clone()).min(Expr::i(rt)));
                    kb.for_("ri", 0, rows.clone(), LoopTag::Serial, |kb, ri| {
                        let r = kb.let_("r_rev", r0.clone() + rows.clone() - 1 - ri);
                        kb.for_("kvi", 0, kvh, LoopTag::Serial, |kb, kvi| {
                            let rk = kb.let_("rk", r.clone() * kvh + kvi);
                            one_pair(kb, rk);
                        });
                    });
                },
            );
        });
    };
    // Few pairs (a few decode rows): pairs CAP at a time, each chunk's splits in
    // parallel waves of `wave` splits per pair (as many as the scratch holds: a few
    // rows over a long context spread over every thread), merged in split order after
    // each wave, then the chunk's outputs.
    // One copy of each piece of arithmetic, whatever the number of rows: a row's
    // result does not depend on the step's other rows.
    let cap = (SPLIT_SCRATCH / (slen * 4)).clamp(8, 256);
    let waves = |kb: &mut crate::builder::KernelBuilder| {
        let run = kb.local("run", t, cap * slen);
        let part = kb.local("part", t, cap * slen);
        let nsplits = kb.let_("nsplits", (we.clone() * bs + (split - 1)) / split);
        kb.for_step("p0", 0, n.clone(), cap, LoopTag::Serial, |kb, p0| {
            let np = kb.let_("np", (n.clone() - p0.clone()).min(Expr::i(cap)));
            // The splits the step's pairs reach (not the table's width): the
            // parallel loop then has about as many trips as there are splits to
            // run, so the pool's guided claims split the work evenly (with the
            // width's, most trips were empty and a claim could hold a pair's
            // every split).
            let reach = kb.let_mut("reach", Expr::i(1));
            kb.for_("i", 0, np.clone(), LoopTag::Serial, |kb, i| {
                let (_, _, _, _, _, _, s1) = pair(kb, p0.clone() + i);
                kb.assign(reach, Expr::Var(reach).max(s1));
            });
            let reach = kb.let_("reached", Expr::Var(reach).min(nsplits.clone()));
            let wave = kb.let_("wave", (Expr::i(cap) / np.clone()).min(reach.clone()));
            let waves = kb.let_("waves", (reach.clone() + wave.clone() - 1) / wave.clone());
            kb.for_("i", 0, np.clone(), LoopTag::Serial, |kb, i| {
                let o = kb.let_("o", i * slen);
                init(kb, run, &o);
            });
            kb.for_("wi", 0, waves, LoopTag::Serial, |kb, wi| {
                let w0 = kb.let_("w0", wi * wave.clone());
                kb.for_(
                    "u",
                    0,
                    np.clone() * wave.clone(),
                    LoopTag::Parallel,
                    |kb, u| {
                        let i = kb.let_("i", u.clone() / wave.clone());
                        let (r, kv, sq, lo, hi, s0, s1) = pair(kb, p0.clone() + i);
                        let sp = kb.let_("sp", w0.clone() + u.clone() % wave.clone());
                        kb.if_(sp.clone().ge(s0).and(sp.clone().lt(s1)), |kb| {
                            let (a, b_) = split_range(kb, &sp, &lo, &hi);
                            let po = kb.let_("po", u.clone() * slen);
                            attend(kb, (&r, &kv, &sq), a, b_, part, &po);
                        });
                    },
                );
                kb.for_("i", 0, np.clone(), LoopTag::Serial, |kb, i| {
                    let (_, _, _, _, _, s0, s1) = pair(kb, p0.clone() + i.clone());
                    let o = kb.let_("o", i.clone() * slen);
                    let from = kb.let_("from", s0.max(w0.clone()));
                    let to = kb.let_("to", s1.min(w0.clone() + wave.clone()));
                    kb.for_("sp", from, to, LoopTag::Serial, |kb, sp| {
                        let po = kb.let_("po", (i.clone() * wave.clone() + sp - w0.clone()) * slen);
                        merge(kb, run, &o, part, &po);
                    });
                });
            });
            kb.for_("i", 0, np.clone(), LoopTag::Parallel, |kb, i| {
                let rk = kb.let_("rk", p0.clone() + i.clone());
                let r = kb.let_("r", rk.clone() / kvh);
                let kv = kb.let_("kv", rk % kvh);
                let o = kb.let_("o", i * slen);
                finish(kb, (&r, &kv), run, &o);
            });
        });
    };
    // Many pairs (a prefill chunk, a large batch): a task per row, no waves. The two
    // forms do the same arithmetic per pair (its splits' states merged in split
    // order), so which one a step takes changes no bits.
    if matches!(tag, LoopTag::Parallel) {
        kb.if_else(n.clone().ge(Expr::i(MANY_PAIRS)), per_row, waves);
    } else {
        waves(&mut kb);
    }
    kb.finish()
}

/// From this many (row, kv head) pairs in a step on, `paged_attention` runs a task per
/// row (the splits of each of its pairs in order) instead of parallel waves of splits
/// with the merges between them on the calling thread (SmolLM2 Q4_1, 2 threads: pp128 1332 /
/// 1321 -> 1376 / 1401 tok/s, a 2,048-token prefill's attention 4% faster, 32-stream
/// decode unchanged).
const MANY_PAIRS: i64 = 48;
