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
use crate::loopir::{BinOp, Expr, Kernel, LoopTag, Ty, UnOp};
use llmc_ir::{DType, Dim, Node, TensorType};

/// Keys per split of a sequence's context: each (row, kv head) pair's softmax state
/// is computed split by split and the splits merged in order, so a few rows over a long
/// context spread over every thread (split-K), and the arithmetic is the same whether
/// the splits run one after another or in parallel.
const SPLIT_TOKENS: i64 = 256;

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
                    let src = (h.clone() * se.clone() + r.clone()) * d + c.clone();
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
                let src = kb.let_("src", (h.clone() * se.clone() + r.clone()) * d);
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
    } = paged_args(node, ins, outs)?;
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
    // One split's online softmax over keys [a, b) of the pair, block by block, into
    // the state at `o` of `buf`.
    #[allow(clippy::too_many_arguments)]
    let attend = |kb: &mut crate::builder::KernelBuilder,
                  (r, kv, sq): (&Expr, &Expr, &Expr),
                  a: Expr,
                  b_: Expr,
                  buf: crate::loopir::BufId,
                  o: &Expr| {
        let scores = kb.local("scores", t, group * bs);
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
            // Scores of every query head of the group: each key row is read (and
            // widened) once for the whole group.
            let qrows: Vec<Expr> = (0..group)
                .map(|g| {
                    kb.let_(
                        "qrow",
                        ((kv.clone() * group + g) * se.clone() + r.clone()) * dk,
                    )
                })
                .collect();
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
                                for (p, qrow) in parts.iter().zip(&qrows) {
                                    let qv =
                                        load_elem(kb, ib[0], q.dtype, qrow.clone() + c.clone());
                                    let v =
                                        b(BinOp::Add, Expr::Var(*p), b(BinOp::Mul, qv, kx.clone()));
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
                            for (dot, qrow) in dots.iter().zip(&qrows) {
                                let qv = load_elem(kb, ib[0], q.dtype, qrow.clone() + c.clone());
                                let v =
                                    b(BinOp::Add, Expr::Var(*dot), b(BinOp::Mul, qv, kx.clone()));
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
            let sets = if dk % 4 == 0 { 4 } else { 1 };
            let tree = bs >= 2 && bs & (bs - 1) == 0;
            let parts = kb.local("parts", t, group * bs * sets);
            let key_columns = |kb: &mut crate::builder::KernelBuilder, fetch: bool| {
                let kbase = kb.let_("kbase", base.clone() * dk);
                kb.for_("z", 0, group * bs * sets, wide, |kb, z| {
                    kb.store(parts, z, fconst(0.0, t))
                });
                let per_line = (64 / kp.dtype.storage_bytes(1).unwrap_or(4).max(1) as i64).max(1);
                // Set `u` sums elements `u · dk / sets + c`: `sets` independent sums per
                // query head, so the multiply-adds are not one chain dk long.
                let span = dk / sets;
                kb.for_("c", 0, span, LoopTag::Serial, |kb, c| {
                    for u in 0..sets {
                        let cu = kb.let_("cu", c.clone() + u * span);
                        if fetch {
                            // The next block's slice, a line per element row (modulo
                            // the slice, so the fetches stay within it).
                            let at = nbase.clone() * dk + (cu.clone() * per_line) % (bs * dk);
                            kb.prefetch(ib[1], at);
                        }
                        let col = kb.let_("col", kbase.clone() + cu.clone() * bs);
                        let qs: Vec<Expr> = qrows
                            .iter()
                            .map(|qrow| {
                                let qv = load_elem(kb, ib[0], q.dtype, qrow.clone() + cu.clone());
                                kb.let_("qc", qv)
                            })
                            .collect();
                        kb.for_("jj", 0, bs, wide, |kb, jj| {
                            let kx = load_elem(kb, ib[1], kp.dtype, col.clone() + jj.clone());
                            let kx = kb.let_("kx", kx);
                            for (g, qc) in qs.iter().enumerate() {
                                let at = jj.clone() + (u * group + g as i64) * bs;
                                let v = b(
                                    BinOp::Add,
                                    Expr::load(parts, at.clone()),
                                    b(BinOp::Mul, qc.clone(), kx.clone()),
                                );
                                kb.store(parts, at, v);
                            }
                        });
                    }
                });
                for (g, bm) in bms.iter().enumerate() {
                    let g = g as i64;
                    kb.for_("jj", 0, bs, wide, |kb, jj| {
                        let at = jj.clone() + g * bs;
                        // The sets' sums added in a fixed tree.
                        let mut sums: Vec<Expr> = (0..sets)
                            .map(|u| Expr::load(parts, at.clone() + u * group * bs))
                            .collect();
                        while sums.len() > 1 {
                            sums = sums
                                .chunks(2)
                                .map(|p| b(BinOp::Add, p[0].clone(), p[1].clone()))
                                .collect();
                        }
                        let mut sc = b(BinOp::Mul, sums.remove(0), fconst(scale, t));
                        if let Some(cap) = cap {
                            let x = b(BinOp::Div, sc, fconst(cap, t));
                            sc = b(BinOp::Mul, fconst(cap, t), Expr::un(UnOp::Tanh, x));
                        }
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
                        let mut w = bs / 2;
                        let mut from = (scores, g * bs);
                        while w >= 1 {
                            let (src, o) = from;
                            // One vector of the level's width (LLVM keeps a loop of
                            // exactly one vector's trips whole: see the lowering).
                            let lvl = if w > 1 {
                                LoopTag::Vectorize(w as u32)
                            } else {
                                LoopTag::Serial
                            };
                            kb.for_("i", 0, w, lvl, |kb, i| {
                                let lo = Expr::load(src, i.clone() + o);
                                let hi = Expr::load(src, i.clone() + (o + w));
                                kb.store(parts, i + g * bs, lo.max(hi));
                            });
                            from = (parts, g * bs);
                            w /= 2;
                        }
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
            if k_dim_major {
                kb.if_else(
                    last.clone(),
                    |kb| key_columns(kb, true),
                    |kb| key_columns(kb, false),
                );
            } else {
                kb.if_else(
                    last.clone(),
                    |kb| key_loop(kb, true),
                    |kb| key_loop(kb, false),
                );
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
                    kb.for_("jj", js.clone(), je.clone(), wide, |kb, jj| {
                        let at = jj + g * bs;
                        let pr = kb.let_(
                            "pr",
                            exp(b(BinOp::Sub, Expr::load(scores, at.clone()), mn.clone())),
                        );
                        kb.store(scores, at, pr.clone());
                        kb.assign(l, b(BinOp::Add, Expr::Var(l), pr));
                    });
                    mn
                })
                .collect();
            // The values: each value row read once for the whole group.
            let value_loop = |kb: &mut crate::builder::KernelBuilder, fetch: bool| {
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
            kb.if_else(last, |kb| value_loop(kb, true), |kb| value_loop(kb, false));
            for (g, mn) in mns.into_iter().enumerate() {
                kb.assign(ms[g], mn);
            }
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
                ((kv.clone() * group + g) * se.clone() + r.clone()) * dv,
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
    // On the CPU a task takes a row (last first, as above) and its kv heads in order:
    // the heads' slices of a block sit side by side in the pool, so one task reads
    // each block's keys and values as one run instead of a task per head reading its
    // slice at another time (SmolLM2 Q4_1, alternated: attention's time in 32-stream
    // decode 2394 / 2373 -> 2296 / 2234 ms, in a 2,048-token prefill 2616 / 2312 ->
    // 2305 / 2216 ms).
    let per_row = |kb: &mut crate::builder::KernelBuilder| {
        kb.for_("rr", 0, se.clone(), tag, |kb, rr| {
            let r_rev = kb.let_("r_rev", se.clone() - 1 - rr);
            kb.for_("kvi", 0, kvh, LoopTag::Serial, |kb, kvi| {
                let rk = kb.let_("rk", r_rev.clone() * kvh + kvi);
                one_pair(kb, rk);
            });
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
            let wave = kb.let_("wave", Expr::i(cap) / np.clone());
            let waves = kb.let_("waves", (nsplits.clone() + wave.clone() - 1) / wave.clone());
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
