//! Neural-network building blocks: rms_norm and layer_norm (one pass of sums per row,
//! then the scaled row), rope (angles in f64 as the reference computes them, computed
//! once per position and applied to every head), and attention as one streaming pass
//! over the keys with an online softmax (running max, running sum, a local
//! accumulator row), so no score buffer of the symbolic key length is needed and a
//! KV-cache buffer is read exactly once per query.

use super::{
    attr_bool, attr_float, attr_int, attr_str, broadcast_strides, compute_ty, exp, fconst,
    load_elem, operand, recip_or_zero, result, setup, to_storage, work_estimate, worth_threads,
    TResult,
};
use crate::builder::KernelBuilder;
use crate::loopir::{BinOp, Expr, FTile, Kernel, LoopTag, Ty, UnOp};
use llmc_ir::{Dim, Node, Op, TensorType};

fn b(op: BinOp, x: Expr, y: Expr) -> Expr {
    Expr::bin(op, x, y)
}

/// RMS norm's `1 / sqrt(mean(x²) + eps)` of the `d` elements of `x` from element
/// `base`, in `t`, as `rms_norm`'s kernel computes it (an 8-lane sum of squares): a
/// linear reading its x through the norm (`norm_eps`) gets the same value.
pub(crate) fn rms_inv(
    kb: &mut KernelBuilder,
    (x, xd): (crate::loopir::BufId, llmc_ir::DType),
    base: Expr,
    d: &Expr,
    eps: f64,
    t: Ty,
) -> Expr {
    let ss = kb.let_mut("ss", fconst(0.0, t));
    kb.for_("j", 0, d.clone(), LoopTag::Vectorize(8), |kb, j| {
        let v = load_elem(kb, x, xd, base + j);
        let v = kb.let_("v", v);
        kb.assign(
            ss,
            b(BinOp::Add, Expr::Var(ss), b(BinOp::Mul, v.clone(), v)),
        );
    });
    let ms = b(BinOp::Div, Expr::Var(ss), d.clone().cast(t));
    let inv = b(
        BinOp::Div,
        fconst(1.0, t),
        Expr::un(UnOp::Sqrt, b(BinOp::Add, ms, fconst(eps, t))),
    );
    kb.let_("inv", inv)
}

/// `rms_norm(x, w)` and `layer_norm(x, w[, b])` over the last axis.
pub(crate) fn norm(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    let w = operand(ins, 1, "w")?;
    result(outs, 0)?;
    let eps = attr_float(node, "eps")?.ok_or("missing attribute `eps`")?;
    let rms = node.op == Op::RmsNorm;
    let Some((d, lead)) = x.shape.0.split_last() else {
        return Err("operand x must have rank >= 1".into());
    };
    let t = compute_ty(x.dtype)?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let rows = kb.numel(lead);
    let de = kb.dim(d);
    let bias = ib.get(2).copied().zip(ins.get(2).map(|t| t.dtype));
    let parallel = worth_threads(work_estimate(&x.shape.0));
    let tag = if parallel {
        LoopTag::Parallel
    } else {
        LoopTag::Serial
    };
    let v8 = LoopTag::Vectorize(8);
    let dn = de.clone().cast(t);
    kb.for_("r", 0, rows, tag, |kb, r| {
        let base = kb.let_("base", r * de.clone());
        let at = |j: Expr| base.clone() + j;
        let (shift, inv) = if rms {
            let inv = rms_inv(kb, (ib[0], x.dtype), base.clone(), &de, eps, t);
            (None, inv)
        } else {
            let s = kb.let_mut("s", fconst(0.0, t));
            kb.for_("j", 0, de.clone(), v8, |kb, j| {
                let v = load_elem(kb, ib[0], x.dtype, at(j));
                kb.assign(s, b(BinOp::Add, Expr::Var(s), v));
            });
            let mean = kb.let_("mean", b(BinOp::Div, Expr::Var(s), dn.clone()));
            let var = kb.let_mut("var", fconst(0.0, t));
            kb.for_("j", 0, de.clone(), v8, |kb, j| {
                let v = load_elem(kb, ib[0], x.dtype, at(j));
                let c = kb.let_("c", b(BinOp::Sub, v, mean.clone()));
                kb.assign(
                    var,
                    b(BinOp::Add, Expr::Var(var), b(BinOp::Mul, c.clone(), c)),
                );
            });
            let vr = b(BinOp::Div, Expr::Var(var), dn.clone());
            let inv = b(
                BinOp::Div,
                fconst(1.0, t),
                Expr::un(UnOp::Sqrt, b(BinOp::Add, vr, fconst(eps, t))),
            );
            (Some(mean), kb.let_("inv", inv))
        };
        kb.for_("j", 0, de.clone(), v8, |kb, j| {
            let mut v = load_elem(kb, ib[0], x.dtype, at(j.clone()));
            if let Some(m) = &shift {
                v = b(BinOp::Sub, v, m.clone());
            }
            let wv = load_elem(kb, ib[1], w.dtype, j.clone());
            let mut y = b(BinOp::Mul, b(BinOp::Mul, v, inv.clone()), wv);
            if let Some((bb, bd)) = bias {
                y = b(BinOp::Add, y, load_elem(kb, bb, bd, j.clone()));
            }
            let y = to_storage(kb, ob[0], y);
            kb.store(ob[0], at(j), y);
        });
    });
    kb.finish()
}

/// Rope's rotation of one pair: elements `a` and `b` of `x` (dtype `xd`) become
/// `a cos - b sin` and `a sin + b cos` at the same places of `out` (the CPU and GPU
/// templates both rotate through this).
pub(crate) fn rotate_pair(
    kb: &mut KernelBuilder,
    x: (crate::loopir::BufId, llmc_ir::DType),
    out: crate::loopir::BufId,
    at: (Expr, Expr),
    trig: (&Expr, &Expr),
) {
    rotate_pair_to(kb, x, at.clone(), out, at, trig)
}

/// [`rotate_pair`] from elements `src` of `x` to elements `dst` of `out` (the fused
/// `paged_qkv_write` reads a merged row and writes the query rows and the key pool).
pub(crate) fn rotate_pair_to(
    kb: &mut KernelBuilder,
    (x, xd): (crate::loopir::BufId, llmc_ir::DType),
    (a, bi): (Expr, Expr),
    out: crate::loopir::BufId,
    (da, db): (Expr, Expr),
    (sin, cos): (&Expr, &Expr),
) {
    let va = kb.let_("va", load_elem(kb, x, xd, a));
    let vb = kb.let_("vb", load_elem(kb, x, xd, bi));
    let oa = b(
        BinOp::Sub,
        b(BinOp::Mul, va.clone(), cos.clone()),
        b(BinOp::Mul, vb.clone(), sin.clone()),
    );
    let ob = b(
        BinOp::Add,
        b(BinOp::Mul, va, sin.clone()),
        b(BinOp::Mul, vb, cos.clone()),
    );
    let oa = to_storage(kb, out, oa);
    let ob = to_storage(kb, out, ob);
    kb.store(out, da, oa);
    kb.store(out, db, ob);
}

/// Positions whose rope angles an f32 `rope` takes from a build-time table of cos/sin
/// (`[positions, 2, dims / 2]` f32: a position's cosines, then its sines; the same
/// values the kernel would compute); later positions compute them.
pub(crate) const ROPE_TABLE_POSITIONS: i64 = 4096;

/// The build-time cos/sin table of an f32 rope: `[ROPE_TABLE_POSITIONS, 2, dims /
/// 2]`, each position's cosines then its sines (the values the kernel would compute).
pub(crate) fn rope_trig_table(theta: f64, dims: i64, scale: f64) -> llmc_ir::Tensor {
    let half = dims / 2;
    let mut v = Vec::with_capacity((ROPE_TABLE_POSITIONS * half * 2) as usize);
    for p in 0..ROPE_TABLE_POSITIONS {
        let pf = p as f64 / scale;
        let angle = |k: i64| pf * theta.powf((k * -2) as f64 / dims as f64);
        v.extend((0..half).map(|k| f64::from(angle(k).cos() as f32)));
        v.extend((0..half).map(|k| f64::from(angle(k).sin() as f32)));
    }
    let shape = vec![ROPE_TABLE_POSITIONS as usize, 2, half as usize];
    llmc_ir::Tensor::from_f64(llmc_ir::DType::F32, shape, v)
}

/// `theta^(-2k / dims)` in f64, as the reference computes it (the CPU kernels of
/// `rope` and `paged_qkv_write` past the trig table).
pub(crate) fn rope_inv_freq(theta: f64, dims: i64, k: Expr) -> Expr {
    let ex = b(
        BinOp::Div,
        (k * -2).cast(Ty::F64),
        fconst(dims as f64, Ty::F64),
    );
    b(BinOp::Pow, fconst(theta, Ty::F64), ex)
}

/// `(sin, cos)` of an f64 angle, each rounded to `t`: how every rope kernel that does
/// not read the table computes them.
pub(crate) fn rope_sin_cos(kb: &mut KernelBuilder, ang: Expr, t: Ty) -> (Expr, Expr) {
    let ang = kb.let_("ang", ang);
    let sin = kb.let_("sin", Expr::un(UnOp::Sin, ang.clone()).cast(t));
    let cos = kb.let_("cos", Expr::un(UnOp::Cos, ang).cast(t));
    (sin, cos)
}

/// `(sin, cos)` of pair `k` at table position `pi` from the build-time table `tb`
/// ([`rope_trig_table`]'s layout, `half` pairs a position).
pub(crate) fn rope_table_trig(
    kb: &mut KernelBuilder,
    tb: crate::loopir::BufId,
    pi: &Expr,
    half: i64,
    k: &Expr,
) -> (Expr, Expr) {
    let at = kb.let_("at", pi.clone() * (2 * half) + k.clone());
    let cos = kb.let_("cos", Expr::load(tb, at.clone()));
    let sin = kb.let_("sin", Expr::load(tb, at + half));
    (sin, cos)
}

/// A rope's attributes, checked against its head dim `d`: `theta`, neox pairs
/// (halves; else interleaved), the position `scale` and the rotated `dims`. `rope` on
/// the CPU and the GPU and `paged_qkv_write` read them through this.
pub(crate) struct RopeAttrs {
    pub(crate) theta: f64,
    pub(crate) neox: bool,
    pub(crate) scale: f64,
    pub(crate) dims: i64,
}

pub(crate) fn rope_attrs(node: &Node, d: i64) -> TResult<RopeAttrs> {
    let theta = attr_float(node, "theta")?.ok_or("missing attribute `theta`")?;
    let neox = match attr_str(node, "style")?.unwrap_or("neox") {
        "neox" => true,
        "interleaved" => false,
        other => return Err(format!("attribute `style` = {other:?} is unknown")),
    };
    let scale = attr_float(node, "scale")?.unwrap_or(1.0);
    let dims = attr_int(node, "dims")?.unwrap_or(d);
    if dims <= 0 || dims % 2 != 0 || dims > d {
        return Err(format!(
            "attribute `dims` = {dims} must be even and in 2..={d}"
        ));
    }
    Ok(RopeAttrs {
        theta,
        neox,
        scale,
        dims,
    })
}

/// `rope(x[b, h, s, d], pos[b or 1, s])`, and the build-time cos/sin table an f32 one
/// reads for positions below [`ROPE_TABLE_POSITIONS`] (three f64 libm calls per pair
/// and position otherwise: a serving step's ropes cost more than its adds and norms).
pub(crate) fn rope(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<(Kernel, Vec<llmc_ir::Tensor>)> {
    let x = operand(ins, 0, "x")?;
    let pos = operand(ins, 1, "pos")?;
    result(outs, 0)?;
    let [bd, hd, sd, dd] = &x.shape.0[..] else {
        return Err(format!("operand x must be [b, h, s, d], got {}", x.shape));
    };
    let d = dd
        .as_const()
        .ok_or_else(|| format!("head dim {dd} must be constant"))?;
    let RopeAttrs {
        theta,
        neox,
        scale,
        dims,
    } = rope_attrs(node, d)?;
    let half = dims / 2;
    let t = compute_ty(x.dtype)?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let mut consts = Vec::new();
    let table = if t == Ty::F32 && !super::gpu_mapping() {
        consts.push(rope_trig_table(theta, dims, scale));
        Some(kb.param("trig", Ty::F32, crate::loopir::Role::In))
    } else {
        None
    };
    let (be, he, se) = (kb.dim(bd), kb.dim(hd), kb.dim(sd));
    let pos_batch1 = pos.shape.0.first() == Some(&Dim::c(1));
    let n = kb.let_("n", be * se.clone());
    let parallel = worth_threads(work_estimate(&x.shape.0));
    let tag = if parallel {
        LoopTag::Parallel
    } else {
        LoopTag::Serial
    };
    kb.for_("q", 0, n, tag, |kb, q| {
        let bi = kb.let_("bi", q.clone() / se.clone());
        let si = kb.let_("si", q % se.clone());
        let prow = if pos_batch1 { Expr::i(0) } else { bi.clone() };
        let pv = load_elem(kb, ib[1], pos.dtype, prow * se.clone() + si.clone());
        let pv = kb.let_("pv", pv);
        let p = kb.let_(
            "p",
            b(BinOp::Div, pv.clone().cast(Ty::F64), fconst(scale, Ty::F64)),
        );
        let row = |kb: &mut KernelBuilder, hi: Expr| -> Expr {
            kb.let_(
                "row",
                ((bi.clone() * he.clone() + hi) * se.clone() + si.clone()) * d,
            )
        };
        // Every head's pairs k rotated by (cos, sin) of the row's angle k.
        let rotate =
            |kb: &mut KernelBuilder, trig: &dyn Fn(&mut KernelBuilder, &Expr) -> (Expr, Expr)| {
                kb.for_("k", 0, half, LoopTag::Serial, |kb, k| {
                    let (sin, cos) = trig(kb, &k);
                    let (ia, ibx) = if neox {
                        (k.clone(), k.clone() + half)
                    } else {
                        (k.clone() * 2, k.clone() * 2 + 1)
                    };
                    kb.for_("h", 0, he.clone(), LoopTag::Serial, |kb, hi| {
                        let r = row(kb, hi);
                        let at = (r.clone() + ia.clone(), r + ibx.clone());
                        rotate_pair(kb, (ib[0], x.dtype), ob[0], at, (&sin, &cos));
                    });
                });
            };
        let computed = |kb: &mut KernelBuilder, k: &Expr| {
            let f = rope_inv_freq(theta, dims, k.clone());
            rope_sin_cos(kb, b(BinOp::Mul, p.clone(), f), t)
        };
        match table {
            Some(tb) => {
                let pi = kb.let_("pi", pv.cast(Ty::I64));
                let inside = pi
                    .clone()
                    .ge(Expr::i(0))
                    .and(pi.clone().lt(Expr::i(ROPE_TABLE_POSITIONS)));
                let trig = |kb: &mut KernelBuilder, k: &Expr| rope_table_trig(kb, tb, &pi, half, k);
                kb.if_else(
                    inside,
                    |kb| {
                        if neox {
                            // Heads outer, pairs inner: the halves, the cosines and
                            // the sines are each contiguous, so the pairs go a vector
                            // at a time (the same arithmetic per pair).
                            kb.for_("h", 0, he.clone(), LoopTag::Serial, |kb, hi| {
                                let r = row(kb, hi);
                                kb.for_("k", 0, half, LoopTag::Vectorize(16), |kb, k| {
                                    let (sin, cos) = trig(kb, &k);
                                    let at = (r.clone() + k.clone(), r.clone() + k + half);
                                    rotate_pair(kb, (ib[0], x.dtype), ob[0], at, (&sin, &cos));
                                });
                            });
                        } else {
                            rotate(kb, &trig)
                        }
                    },
                    |kb| rotate(kb, &computed),
                );
            }
            None => rotate(kb, &computed),
        }
        if dims < d {
            kb.for_("h", 0, he.clone(), LoopTag::Serial, |kb, hi| {
                let r = row(kb, hi);
                kb.for_("c", dims, d, LoopTag::Vectorize(8), |kb, c| {
                    let v = load_elem(kb, ib[0], x.dtype, r.clone() + c.clone());
                    let v = to_storage(kb, ob[0], v);
                    kb.store(ob[0], r.clone() + c, v);
                });
            });
        }
    });
    Ok((kb.finish()?, consts))
}

/// The end of an online-softmax query row: output row `qi` = `acc / l` (0 where the
/// softmax sum `l` is 0, i.e. every key was masked out).
fn store_normalized(
    kb: &mut KernelBuilder,
    acc: crate::loopir::BufId,
    l: crate::loopir::VarId,
    t: Ty,
    qi: Expr,
    dv: i64,
    out: crate::loopir::BufId,
) {
    let inv = kb.let_("inv", recip_or_zero(Expr::Var(l), t));
    let orow = kb.let_("orow", qi * dv);
    kb.for_("c", 0, dv, LoopTag::Vectorize(8), |kb, c| {
        let y = b(BinOp::Mul, Expr::load(acc, c.clone()), inv.clone());
        let y = to_storage(kb, out, y);
        kb.store(out, orow.clone() + c, y);
    });
}

/// What `attention` and `flash_attention` share: the operand dims (GQA group from
/// constant head counts), the compute type, the kernel builder with its buffers, the
/// dims as index expressions, and the additive mask's buffer and broadcast strides.
struct AttnSetup {
    dims: [Dim; 5],
    dv: i64,
    group: i64,
    t: Ty,
    kb: KernelBuilder,
    ib: Vec<crate::loopir::BufId>,
    ob: Vec<crate::loopir::BufId>,
    exprs: [Expr; 6],
    mask: Option<(crate::loopir::BufId, llmc_ir::DType, Vec<Dim>)>,
}

fn attention_setup(
    q: &TensorType,
    k: &TensorType,
    v: &TensorType,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<AttnSetup> {
    let [bd, hd, sd, dkd] = &q.shape.0[..] else {
        return Err(format!("operand q must be [b, h, s, dk], got {}", q.shape));
    };
    let [_, kvhd, td, _] = &k.shape.0[..] else {
        return Err(format!(
            "operand k must be [b, kvh, t, dk], got {}",
            k.shape
        ));
    };
    let dvd = v
        .shape
        .0
        .get(3)
        .ok_or_else(|| format!("operand v must be [b, kvh, t, dv], got {}", v.shape))?;
    let dv = dvd
        .as_const()
        .ok_or_else(|| format!("value dim {dvd} must be constant"))?;
    let (h, kvh) = match (hd.as_const(), kvhd.as_const()) {
        (Some(h), Some(kvh)) if kvh > 0 && h % kvh == 0 => (h, kvh),
        _ if hd == kvhd => (1, 1),
        _ => {
            return Err(format!(
                "head counts {hd} and {kvhd} must be constant for GQA"
            ))
        }
    };
    let group = h / kvh;
    let t = compute_ty(q.dtype)?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let (be, he, se, dke, te) = (kb.dim(bd), kb.dim(hd), kb.dim(sd), kb.dim(dkd), kb.dim(td));
    let kvhe = kb.dim(kvhd);
    let mask = match ins.get(3) {
        Some(m) => {
            let full = [bd.clone(), hd.clone(), sd.clone(), td.clone()];
            let st = broadcast_strides(&full, &m.shape.0);
            Some((ib[3], m.dtype, st))
        }
        None => None,
    };
    Ok(AttnSetup {
        dims: [bd.clone(), hd.clone(), sd.clone(), dkd.clone(), td.clone()],
        dv,
        group,
        t,
        kb,
        ib,
        ob,
        exprs: [be, he, se, dke, te, kvhe],
        mask,
    })
}

/// The first key a query row `si` sees: 0, or with a `window` w the first key past
/// `p - w` (p = si + t - s, the row's position with the last query on the last key).
fn key_start(kb: &mut KernelBuilder, window: Option<i64>, si: &Expr, te: &Expr, se: &Expr) -> Expr {
    match window {
        None => Expr::from(0),
        Some(w) => kb.let_(
            "tstart",
            (si.clone() + te.clone() - se.clone() + 1 - w).max(Expr::from(0)),
        ),
    }
}

/// `softcap` c: a score becomes c·tanh(score / c).
fn soft_cap(sc: Expr, softcap: Option<f64>, t: crate::loopir::Ty) -> Expr {
    match softcap {
        None => sc,
        Some(c) => b(
            BinOp::Mul,
            fconst(c, t),
            Expr::un(UnOp::Tanh, b(BinOp::Mul, sc, fconst(1.0 / c, t))),
        ),
    }
}

/// `attention(q, k, v[, mask])` with GQA, causal masking, an additive mask, a sliding
/// `window` (the key loop starts at the window) and `softcap`.
pub(crate) fn attention(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let q = operand(ins, 0, "q")?;
    let k = operand(ins, 1, "k")?;
    let v = operand(ins, 2, "v")?;
    result(outs, 0)?;
    let scale = attr_float(node, "scale")?.ok_or("missing attribute `scale`")?;
    let causal = attr_bool(node, "causal", false)?;
    let (window, softcap) = llmc_ir::ops::nn::window_softcap(&node.attrs)?;
    let AttnSetup {
        dims: [bd, hd, sd, dkd, td],
        dv,
        group,
        t,
        mut kb,
        ib,
        ob,
        exprs: [be, he, se, dke, te, kvhe],
        mask,
    } = attention_setup(q, k, v, ins, outs, name)?;
    let (bd, hd, sd, dkd, td) = (&bd, &hd, &sd, &dkd, &td);
    let n = kb.let_("n", be * he.clone() * se.clone());
    let scores = [bd.clone(), hd.clone(), sd.clone(), td.clone(), dkd.clone()];
    let tag = if worth_threads(work_estimate(&scores)) {
        LoopTag::Parallel
    } else {
        LoopTag::Serial
    };
    let v8 = LoopTag::Vectorize(8);
    kb.for_("qi", 0, n, tag, |kb, qi| {
        let si = kb.let_("si", qi.clone() % se.clone());
        let bh = kb.let_("bh", qi.clone() / se.clone());
        let hi = kb.let_("hi", bh.clone() % he.clone());
        let bi = kb.let_("bi", bh / he.clone());
        let kvi = kb.let_("kvi", hi.clone() / group);
        let qrow = kb.let_("qrow", qi.clone() * dke.clone());
        let kvbase = kb.let_("kvbase", (bi.clone() * kvhe.clone() + kvi) * te.clone());
        let acc = kb.local("acc", t, dv);
        kb.for_("c", 0, dv, v8, |kb, c| kb.store(acc, c, fconst(0.0, t)));
        let m = kb.let_mut("m", fconst(f64::NEG_INFINITY, t));
        let l = kb.let_mut("l", fconst(0.0, t));
        let tend = if causal {
            (si.clone() + te.clone() - se.clone() + 1).min(te.clone())
        } else {
            te.clone()
        };
        let tend = kb.let_("tend", tend);
        let tstart = key_start(kb, window, &si, &te, &se);
        kb.for_("j", tstart, tend, LoopTag::Serial, |kb, j| {
            let krow = kb.let_("krow", (kvbase.clone() + j.clone()) * dke.clone());
            let dot = kb.let_mut("dot", fconst(0.0, t));
            kb.for_("c", 0, dke.clone(), v8, |kb, c| {
                let qv = load_elem(kb, ib[0], q.dtype, qrow.clone() + c.clone());
                let kv = load_elem(kb, ib[1], k.dtype, krow.clone() + c);
                kb.assign(dot, b(BinOp::Add, Expr::Var(dot), b(BinOp::Mul, qv, kv)));
            });
            let mut sc = soft_cap(b(BinOp::Mul, Expr::Var(dot), fconst(scale, t)), softcap, t);
            if let Some((mb, md, st)) = &mask {
                let coords = [bi.clone(), hi.clone(), si.clone(), j.clone()];
                let at = super::offset(kb, &coords, st);
                sc = b(BinOp::Add, sc, load_elem(kb, *mb, *md, at));
            }
            let sc = kb.let_("sc", sc);
            // A score of -inf (a masked key) contributes nothing.
            kb.if_(sc.clone().ne_(fconst(f64::NEG_INFINITY, t)), |kb| {
                let mn = kb.let_("mn", Expr::Var(m).max(sc.clone()));
                let corr = kb.let_("corr", exp(b(BinOp::Sub, Expr::Var(m), mn.clone())));
                let p = kb.let_("p", exp(b(BinOp::Sub, sc.clone(), mn.clone())));
                kb.assign(
                    l,
                    b(
                        BinOp::Add,
                        b(BinOp::Mul, Expr::Var(l), corr.clone()),
                        p.clone(),
                    ),
                );
                let vrow = kb.let_("vrow", (kvbase.clone() + j.clone()) * dv);
                kb.for_("c", 0, dv, v8, |kb, c| {
                    let vv = load_elem(kb, ib[2], v.dtype, vrow.clone() + c.clone());
                    let a = Expr::load(acc, c.clone());
                    let nv = b(
                        BinOp::Add,
                        b(BinOp::Mul, a, corr.clone()),
                        b(BinOp::Mul, p.clone(), vv),
                    );
                    kb.store(acc, c, nv);
                });
                kb.assign(m, mn);
            });
        });
        store_normalized(&mut *kb, acc, l, t, qi, dv, ob[0]);
    });
    kb.finish()
}

/// `flash_attention(q, k, v[, mask])`: `attention`'s meaning, computed FlashAttention
/// style. Parallel over (batch, head); for each query row the keys are walked in tiles
/// of `block_k`: a tile's scores go to a local `[block_k]` row (never the `[s, t]`
/// score matrix), the running max moves once per tile, the accumulator and running sum
/// are rescaled by `exp(m_old - m_new)`, then the tile's `exp(score - m)` weights
/// accumulate `v`. GQA reads kv head `h / (h / kvh)`; causal bounds the key loop (the
/// last query aligned with the last key); an additive mask is added to the scores.
pub(crate) fn flash_attention(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let q = operand(ins, 0, "q")?;
    let k = operand(ins, 1, "k")?;
    let v = operand(ins, 2, "v")?;
    result(outs, 0)?;
    let scale = attr_float(node, "scale")?.ok_or("missing attribute `scale`")?;
    let causal = attr_bool(node, "causal", false)?;
    let fill = attr_float(node, "causal_fill")?.filter(|_| causal);
    let (window, softcap) = llmc_ir::ops::nn::window_softcap(&node.attrs)?;
    let f32s = [q, k, v].iter().all(|t| t.dtype == llmc_ir::DType::F32);
    if f32s && fill.is_none() && !super::gpu_mapping() {
        let how = Softmax {
            scale,
            causal,
            window,
            softcap,
        };
        return flash_attention_tiles(ins, outs, name, how);
    }
    let block_k = attr_int(node, "block_k")?.unwrap_or(64);
    if !(1..=4096).contains(&block_k) {
        return Err(format!(
            "attribute `block_k` must be in 1..=4096, got {block_k}"
        ));
    }
    let AttnSetup {
        dims: [bd, hd, sd, dkd, td],
        dv,
        group,
        t,
        mut kb,
        ib,
        ob,
        exprs: [be, he, se, dke, te, kvhe],
        mask,
    } = attention_setup(q, k, v, ins, outs, name)?;
    let (bd, hd, sd, dkd, td) = (&bd, &hd, &sd, &dkd, &td);
    let nbh = kb.let_("nbh", be * he.clone());
    let work = [bd.clone(), hd.clone(), sd.clone(), td.clone(), dkd.clone()];
    let tag = if worth_threads(work_estimate(&work)) {
        LoopTag::Parallel
    } else {
        LoopTag::Serial
    };
    let v8 = LoopTag::Vectorize(8);
    let ninf = || fconst(f64::NEG_INFINITY, t);
    kb.for_("bh", 0, nbh, tag, |kb, bh| {
        let hi = kb.let_("hi", bh.clone() % he.clone());
        let bi = kb.let_("bi", bh.clone() / he.clone());
        let kvi = kb.let_("kvi", hi.clone() / group);
        let kvbase = kb.let_("kvbase", (bi.clone() * kvhe.clone() + kvi) * te.clone());
        let acc = kb.local("acc", t, dv);
        let scores = kb.local("scores", t, block_k);
        kb.for_("si", 0, se.clone(), LoopTag::Serial, |kb, si| {
            let qi = kb.let_("qi", bh.clone() * se.clone() + si.clone());
            let qrow = kb.let_("qrow", qi.clone() * dke.clone());
            // q·k_j · scale for key j (both passes over the keys read it the same way).
            let qk = |kb: &mut KernelBuilder, j: Expr| {
                let krow = kb.let_("krow", (kvbase.clone() + j) * dke.clone());
                let dot = kb.let_mut("dot", fconst(0.0, t));
                kb.for_("c", 0, dke.clone(), v8, |kb, c| {
                    let qv = load_elem(kb, ib[0], q.dtype, qrow.clone() + c.clone());
                    let kv = load_elem(kb, ib[1], k.dtype, krow.clone() + c);
                    kb.assign(dot, b(BinOp::Add, Expr::Var(dot), b(BinOp::Mul, qv, kv)));
                });
                soft_cap(b(BinOp::Mul, Expr::Var(dot), fconst(scale, t)), softcap, t)
            };
            kb.for_("c", 0, dv, v8, |kb, c| kb.store(acc, c, fconst(0.0, t)));
            let m = kb.let_mut("m", ninf());
            let l = kb.let_mut("l", fconst(0.0, t));
            let tend = if causal {
                (si.clone() + te.clone() - se.clone() + 1)
                    .min(te.clone())
                    .max(Expr::i(0))
            } else {
                te.clone()
            };
            let tend = kb.let_("tend", tend);
            let tstart = key_start(kb, window, &si, &te, &se);
            kb.for_step(
                "j0",
                tstart,
                tend.clone(),
                block_k,
                LoopTag::Serial,
                |kb, j0| {
                    let jn = kb.let_("jn", (tend.clone() - j0.clone()).min(Expr::from(block_k)));
                    // Scores of this tile, and their max.
                    let bm = kb.let_mut("bm", ninf());
                    kb.for_("jj", 0, jn.clone(), LoopTag::Serial, |kb, jj| {
                        let j = kb.let_("j", j0.clone() + jj.clone());
                        let mut sc = qk(kb, j.clone());
                        if let Some((mb, md, st)) = &mask {
                            let coords = [bi.clone(), hi.clone(), si.clone(), j.clone()];
                            let at = super::offset(kb, &coords, st);
                            sc = b(BinOp::Add, sc, load_elem(kb, *mb, *md, at));
                        }
                        let sc = kb.let_("sc", sc);
                        kb.store(scores, jj, sc.clone());
                        kb.assign(bm, Expr::Var(bm).max(sc));
                    });
                    // A tile of masked keys only (-inf) contributes nothing.
                    kb.if_(Expr::Var(bm).ne_(ninf()), |kb| {
                        let mn = kb.let_("mn", Expr::Var(m).max(Expr::Var(bm)));
                        let corr = kb.let_("corr", exp(b(BinOp::Sub, Expr::Var(m), mn.clone())));
                        kb.assign(l, b(BinOp::Mul, Expr::Var(l), corr.clone()));
                        kb.for_("c", 0, dv, v8, |kb, c| {
                            let a = b(BinOp::Mul, Expr::load(acc, c.clone()), corr.clone());
                            kb.store(acc, c, a);
                        });
                        kb.for_("jj", 0, jn.clone(), LoopTag::Serial, |kb, jj| {
                            let p = kb.let_(
                                "p",
                                exp(b(BinOp::Sub, Expr::load(scores, jj.clone()), mn.clone())),
                            );
                            kb.assign(l, b(BinOp::Add, Expr::Var(l), p.clone()));
                            let vrow =
                                kb.let_("vrow", (kvbase.clone() + j0.clone() + jj.clone()) * dv);
                            kb.for_("c", 0, dv, v8, |kb, c| {
                                let vv = load_elem(kb, ib[2], v.dtype, vrow.clone() + c.clone());
                                let a = Expr::load(acc, c.clone());
                                kb.store(acc, c, b(BinOp::Add, a, b(BinOp::Mul, p.clone(), vv)));
                            });
                        });
                        kb.assign(m, mn);
                    });
                },
            );
            if let Some(fill) = fill {
                // `causal_fill`: the keys past the bound score q·k·scale + fill. They only
                // count when the visible keys are masked too (the row max is itself a
                // masked score, below fill / 2; fill <= -1e9 for masks the optimizer
                // recognises): a fully padded row then spreads over every key, as the
                // unfused where-mask did. Otherwise exp(fill - max) underflows to 0.
                kb.if_(Expr::Var(m).le(fconst(fill * 0.5, t)), |kb| {
                    kb.for_("j", tend.clone(), te.clone(), LoopTag::Serial, |kb, j| {
                        let sc = qk(kb, j.clone());
                        let sc = kb.let_("sc", b(BinOp::Add, sc, fconst(fill, t)));
                        let mn = kb.let_("mn", Expr::Var(m).max(sc.clone()));
                        let corr = kb.let_("corr", exp(b(BinOp::Sub, Expr::Var(m), mn.clone())));
                        let p = kb.let_("p", exp(b(BinOp::Sub, sc, mn.clone())));
                        kb.assign(
                            l,
                            b(
                                BinOp::Add,
                                b(BinOp::Mul, Expr::Var(l), corr.clone()),
                                p.clone(),
                            ),
                        );
                        let vrow = kb.let_("vrow", (kvbase.clone() + j.clone()) * dv);
                        kb.for_("c", 0, dv, v8, |kb, c| {
                            let vv = load_elem(kb, ib[2], v.dtype, vrow.clone() + c.clone());
                            let a = b(BinOp::Mul, Expr::load(acc, c.clone()), corr.clone());
                            kb.store(acc, c, b(BinOp::Add, a, b(BinOp::Mul, p.clone(), vv)));
                        });
                        kb.assign(m, mn);
                    });
                });
            }
            store_normalized(&mut *kb, acc, l, t, qi, dv, ob[0]);
        });
    });
    kb.finish()
}

/// What the tile form of `flash_attention` applies to a score: the scale, causal and
/// sliding-window bounds, soft-capping.
struct Softmax {
    scale: f64,
    causal: bool,
    window: Option<i64>,
    softcap: Option<f64>,
}

/// Query rows per tile of [`flash_attention_tiles`] (the [`FTile`] lanes).
const Q_TILE: i64 = FTile::LANES as i64;
/// Keys per tile of [`flash_attention_tiles`] (a multiple of [`ATT_ROWS`]).
const K_TILE: i64 = 64;
/// Key rows (scores) and value columns (p·v) per [`FTile`] of the attention tiles.
const ATT_ROWS: i64 = 8;

/// `flash_attention` on f32 operands as outer products, queries in vector lanes.
///
/// In parallel over (batch, head, tile of 32 query rows): the tile's rows are
/// transposed once into a local panel `qt[c][i]` (zeros past the last row). Per tile of
/// 64 keys, [`FTile`]s of 8 key rows against that panel give the scores `s[j][i]` with
/// the 32 queries in lanes: no horizontal sum per key. The online softmax then runs
/// down the key rows with whole vectors (the running max, its correction and the
/// running sum are per lane), the probabilities overwrite the scores, and [`FTile`]s
/// of 8 value columns (`x_stride` = the value width) against them give `p·v` with the
/// queries in lanes again; the accumulator is rescaled and added once per tile. The
/// normalized rows are stored at the end (0 where every key was masked out).
fn flash_attention_tiles(
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
    how: Softmax,
) -> TResult<Kernel> {
    let (q, k, v) = (ins[0], ins[1], ins[2]);
    let AttnSetup {
        dims: [bd, hd, sd, dkd, td],
        dv,
        group,
        t,
        mut kb,
        ib,
        ob,
        exprs: [be, he, se, _, te, kvhe],
        mask,
    } = attention_setup(q, k, v, ins, outs, name)?;
    let dk = dkd
        .as_const()
        .ok_or_else(|| format!("key dim {dkd} must be constant"))?;
    let work = [bd.clone(), hd.clone(), sd.clone(), td.clone(), dkd.clone()];
    let tag = if worth_threads(work_estimate(&work)) {
        LoopTag::Parallel
    } else {
        LoopTag::Serial
    };
    let ninf = || fconst(f64::NEG_INFINITY, t);
    let vec = LoopTag::Vectorize(16);
    let nqt = kb.let_("nqt", (se.clone() + (Q_TILE - 1)) / Q_TILE);
    let items = kb.let_("items", be * he.clone() * nqt.clone());
    kb.for_("item", 0, items, tag, |kb, item| {
        let bh = kb.let_("bh", item.clone() / nqt.clone());
        let i0 = kb.let_("i0", item % nqt.clone() * Q_TILE);
        let nq = kb.let_("nq", (se.clone() - i0.clone()).min(Expr::i(Q_TILE)));
        let hi = kb.let_("hi", bh.clone() % he.clone());
        let bi = kb.let_("bi", bh.clone() / he.clone());
        let kvi = kb.let_("kvi", hi.clone() / group);
        let kvbase = kb.let_("kvbase", (bi.clone() * kvhe.clone() + kvi) * te.clone());
        let qt = kb.local("qt", Ty::F32, dk * Q_TILE);
        let sc = kb.local("sc", Ty::F32, K_TILE * Q_TILE);
        let acc = kb.local("acc", Ty::F32, dv * Q_TILE);
        let pv = kb.local("pv", Ty::F32, dv * Q_TILE);
        let m = kb.local("m", Ty::F32, Q_TILE);
        let l = kb.local("l", Ty::F32, Q_TILE);
        let corr = kb.local("corr", Ty::F32, Q_TILE);
        // The query panel (rows past the last one read the last row, then become 0).
        kb.for_("c", 0, dk, LoopTag::Serial, |kb, c| {
            kb.for_("ii", 0, Q_TILE, vec, |kb, ii| {
                let row = (bh.clone() * se.clone() + i0.clone() + ii.clone().min(nq.clone() - 1))
                    * dk
                    + c.clone();
                let x = Expr::select(
                    ii.clone().lt(nq.clone()),
                    Expr::load(ib[0], row),
                    fconst(0.0, t),
                );
                kb.store(qt, c.clone() * Q_TILE + ii, x);
            });
        });
        kb.for_("x", 0, dv * Q_TILE, vec, |kb, x| {
            kb.store(acc, x, fconst(0.0, t))
        });
        kb.for_("ii", 0, Q_TILE, vec, |kb, ii| {
            kb.store(m, ii.clone(), ninf());
            kb.store(l, ii, fconst(0.0, t));
        });
        // The keys any row of the tile sees: row i sees [start(i), end(i)), with the
        // last query aligned with the last key.
        let last = i0.clone() + nq.clone() - 1;
        let kend = if how.causal {
            (last + te.clone() - se.clone() + 1)
                .min(te.clone())
                .max(Expr::i(0))
        } else {
            te.clone()
        };
        let kend = kb.let_("kend", kend);
        let kstart = key_start(kb, how.window, &i0, &te, &se);
        kb.for_step(
            "j0",
            kstart,
            kend.clone(),
            K_TILE,
            LoopTag::Serial,
            |kb, j0| {
                let jn = kb.let_("jn", (kend.clone() - j0.clone()).min(Expr::i(K_TILE)));
                // Scores, 8 keys per FTile (the rows past jn repeat the last key).
                let rows = ATT_ROWS;
                kb.for_step("r0", 0, jn.clone(), rows, LoopTag::Serial, |kb, r0| {
                    let x_rows = (0..rows)
                        .map(|r| {
                            (kvbase.clone() + j0.clone() + (r0.clone() + r).min(jn.clone() - 1))
                                * dk
                        })
                        .collect();
                    kb.ftile(FTile {
                        w: qt,
                        w_ty: Ty::F32,
                        w_off: Expr::i(0),
                        w_stride: Expr::i(FTile::LANES as i64),
                        k: Expr::i(dk),
                        x: ib[1],
                        x_rows,
                        x_stride: 1,
                        out: sc,
                        out_off: r0 * Q_TILE,
                        prefetch: None,
                    });
                });
                // Scale, cap, mask and bound the scores; the tile's max per query in `corr`.
                kb.for_("ii", 0, Q_TILE, vec, |kb, ii| kb.store(corr, ii, ninf()));
                kb.for_("r", 0, jn.clone(), LoopTag::Serial, |kb, r| {
                    let j = kb.let_("j", j0.clone() + r.clone());
                    kb.for_("ii", 0, Q_TILE, vec, |kb, ii| {
                        let at = r.clone() * Q_TILE + ii.clone();
                        let si = i0.clone() + ii.clone();
                        let raw = b(BinOp::Mul, Expr::load(sc, at.clone()), fconst(how.scale, t));
                        let mut x = soft_cap(raw, how.softcap, t);
                        if let Some((mb, md, st)) = &mask {
                            let srow = si.clone().min(se.clone() - 1);
                            let coords = [bi.clone(), hi.clone(), srow, j.clone()];
                            let off = super::offset(kb, &coords, st);
                            x = b(BinOp::Add, x, load_elem(kb, *mb, *md, off));
                        }
                        let p = si + te.clone() - se.clone();
                        let mut seen = None;
                        if how.causal {
                            seen = Some(j.clone().le(p.clone()));
                        }
                        if let Some(w) = how.window {
                            let after = j.clone().gt(p - w);
                            seen = Some(match seen {
                                Some(c) => c.and(after),
                                None => after,
                            });
                        }
                        if let Some(c) = seen {
                            x = Expr::select(c, x, ninf());
                        }
                        let x = kb.let_("x", x);
                        kb.store(sc, at, x.clone());
                        kb.store(corr, ii.clone(), Expr::load(corr, ii).max(x));
                    });
                });
                // New max, correction of what came before (1 while every key so far is
                // masked: exp(-inf - -inf) would be NaN).
                kb.for_("ii", 0, Q_TILE, vec, |kb, ii| {
                    let mo = kb.let_("mo", Expr::load(m, ii.clone()));
                    let mn = kb.let_("mn", mo.clone().max(Expr::load(corr, ii.clone())));
                    let c = Expr::select(
                        mn.clone().ne_(ninf()),
                        exp(b(BinOp::Sub, mo, mn.clone())),
                        fconst(1.0, t),
                    );
                    let c = kb.let_("c", c);
                    kb.store(corr, ii.clone(), c.clone());
                    kb.store(m, ii.clone(), mn);
                    kb.store(l, ii.clone(), b(BinOp::Mul, Expr::load(l, ii), c));
                });
                // Probabilities over the scores, summed in key order.
                kb.for_("r", 0, jn.clone(), LoopTag::Serial, |kb, r| {
                    kb.for_("ii", 0, Q_TILE, vec, |kb, ii| {
                        let at = r.clone() * Q_TILE + ii.clone();
                        let mi = kb.let_("mi", Expr::load(m, ii.clone()));
                        let p = Expr::select(
                            mi.clone().ne_(ninf()),
                            exp(b(BinOp::Sub, Expr::load(sc, at.clone()), mi)),
                            fconst(0.0, t),
                        );
                        let p = kb.let_("p", p);
                        kb.store(sc, at, p.clone());
                        kb.store(l, ii.clone(), b(BinOp::Add, Expr::load(l, ii), p));
                    });
                });
                // p·v, 8 value columns per FTile, then acc = acc · corr + p·v.
                let vrow = kb.let_("vrow", (kvbase.clone() + j0.clone()) * dv);
                for d0 in (0..dv).step_by(ATT_ROWS as usize) {
                    let nd = (dv - d0).min(rows);
                    kb.ftile(FTile {
                        w: sc,
                        w_ty: Ty::F32,
                        w_off: Expr::i(0),
                        w_stride: Expr::i(FTile::LANES as i64),
                        k: jn.clone(),
                        x: ib[2],
                        x_rows: (0..nd).map(|d| vrow.clone() + (d0 + d)).collect(),
                        x_stride: dv,
                        out: pv,
                        out_off: Expr::i(d0 * Q_TILE),
                        prefetch: None,
                    });
                }
                kb.for_("d", 0, dv, LoopTag::Serial, |kb, d| {
                    kb.for_("ii", 0, Q_TILE, vec, |kb, ii| {
                        let at = d.clone() * Q_TILE + ii.clone();
                        let a = b(
                            BinOp::Mul,
                            Expr::load(acc, at.clone()),
                            Expr::load(corr, ii),
                        );
                        kb.store(acc, at.clone(), b(BinOp::Add, a, Expr::load(pv, at)));
                    });
                });
            },
        );
        // out row i = acc[.][i] / l[i] (0 where l is 0: every key masked).
        kb.for_("ii", 0, nq.clone(), LoopTag::Serial, |kb, ii| {
            let li = kb.let_("li", Expr::load(l, ii.clone()));
            let inv = kb.let_("inv", recip_or_zero(li, t));
            let orow = kb.let_(
                "orow",
                (bh.clone() * se.clone() + i0.clone() + ii.clone()) * dv,
            );
            kb.for_("d", 0, dv, LoopTag::Vectorize(8), |kb, d| {
                let y = b(
                    BinOp::Mul,
                    Expr::load(acc, d.clone() * Q_TILE + ii.clone()),
                    inv.clone(),
                );
                kb.store(ob[0], orow.clone() + d, y);
            });
        });
    });
    kb.finish()
}
