//! `rms_norm` / `layer_norm` and `rope` on the GPU. A norm runs a block per row:
//! the threads stride over the row, the sums go through [`super::block_sum`] (warp
//! shuffles, then shared memory across warps, behind a barrier), then every thread
//! writes its elements. `rope` runs a thread per (token, rotated pair): the angle
//! `pos · theta^(-2k/dims)` is computed once (the frequencies come from a table made
//! at build time, so no `pow` runs on the device; sin and cos in f64 as the
//! reference) and applied to every head.

use super::super::{attr_float, compute_ty, fconst, load_elem, operand, result, setup, to_storage};
use super::block_sum;
use crate::builder::KernelBuilder;
use crate::loopir::{BinOp, Expr, LoopTag, Role, Ty, UnOp};
use crate::templates::{Lowered, TResult};
use llmc_ir::{DType, Dim, Node, Op, Tensor, TensorType};

fn b(op: BinOp, x: Expr, y: Expr) -> Expr {
    Expr::bin(op, x, y)
}

/// The GPU norm kernel (`None` for non-f32 compute or a symbolic row length).
pub(crate) fn norm(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Option<Lowered>> {
    let x = operand(ins, 0, "x")?;
    let w = operand(ins, 1, "w")?;
    result(outs, 0)?;
    let eps = attr_float(node, "eps")?.ok_or("missing attribute `eps`")?;
    let rms = node.op == Op::RmsNorm;
    let Some((d, lead)) = x.shape.0.split_last() else {
        return Err("operand x must have rank >= 1".into());
    };
    let t = compute_ty(x.dtype)?;
    let Some(dn) = d.as_const() else {
        return Ok(None);
    };
    if t != Ty::F32 {
        return Ok(None);
    }
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let rows = kb.numel(lead);
    let rows = kb.let_("rows", rows);
    let bias = ib.get(2).copied().zip(ins.get(2).map(|t| t.dtype));
    let warps = ((dn + 31) / 32).clamp(1, 4);
    let nt = warps * 32;
    kb.for_("r", 0, rows, LoopTag::GpuGrid(0), |kb, r| {
        let sh1 = kb.shared("sh1", t, warps);
        let sh2 = kb.shared("sh2", t, warps);
        kb.for_("tid", 0, nt, LoopTag::GpuBlock(0), |kb, tid| {
            let base = kb.let_("base", r * dn);
            let at = |j: Expr| base.clone() + j;
            let strided = |kb: &mut KernelBuilder, f: &mut dyn FnMut(&mut KernelBuilder, Expr)| {
                kb.for_step("j", tid.clone(), dn, nt, LoopTag::Serial, |kb, j| f(kb, j));
            };
            let (mean, inv) = if rms {
                let ss = kb.let_mut("ss", fconst(0.0, t));
                strided(kb, &mut |kb, j| {
                    let v = kb.let_("v", load_elem(kb, ib[0], x.dtype, at(j)));
                    kb.assign(
                        ss,
                        b(BinOp::Add, Expr::Var(ss), b(BinOp::Mul, v.clone(), v)),
                    );
                });
                let tot = block_sum(kb, Expr::Var(ss), &tid, warps, sh1);
                let ms = b(BinOp::Div, tot, fconst(dn as f64, t));
                let inv = b(
                    BinOp::Div,
                    fconst(1.0, t),
                    Expr::un(UnOp::Sqrt, b(BinOp::Add, ms, fconst(eps, t))),
                );
                (None, kb.let_("inv", inv))
            } else {
                let s = kb.let_mut("s", fconst(0.0, t));
                strided(kb, &mut |kb, j| {
                    let v = load_elem(kb, ib[0], x.dtype, at(j));
                    kb.assign(s, b(BinOp::Add, Expr::Var(s), v));
                });
                let tot = block_sum(kb, Expr::Var(s), &tid, warps, sh1);
                let mean = kb.let_("mean", b(BinOp::Div, tot, fconst(dn as f64, t)));
                let var = kb.let_mut("var", fconst(0.0, t));
                strided(kb, &mut |kb, j| {
                    let v = load_elem(kb, ib[0], x.dtype, at(j));
                    let c = kb.let_("c", b(BinOp::Sub, v, mean.clone()));
                    kb.assign(
                        var,
                        b(BinOp::Add, Expr::Var(var), b(BinOp::Mul, c.clone(), c)),
                    );
                });
                let tot = block_sum(kb, Expr::Var(var), &tid, warps, sh2);
                let vr = b(BinOp::Div, tot, fconst(dn as f64, t));
                let inv = b(
                    BinOp::Div,
                    fconst(1.0, t),
                    Expr::un(UnOp::Sqrt, b(BinOp::Add, vr, fconst(eps, t))),
                );
                (Some(mean), kb.let_("inv", inv))
            };
            strided(kb, &mut |kb, j| {
                let mut v = load_elem(kb, ib[0], x.dtype, at(j.clone()));
                if let Some(m) = &mean {
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
    });
    Ok(Some(Lowered::Kernel {
        kernel: kb.finish()?,
        packs: Vec::new(),
        consts: Vec::new(),
        in_place: Vec::new(),
    }))
}

/// The GPU rope kernel: `rope(x[b, h, s, d], pos[b or 1, s])` with the frequency table
/// as a constant operand after the result.
pub(crate) fn rope(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Option<Lowered>> {
    let x = operand(ins, 0, "x")?;
    let pos = operand(ins, 1, "pos")?;
    result(outs, 0)?;
    let [bd, hd, sd, dd] = &x.shape.0[..] else {
        return Err(format!("operand x must be [b, h, s, d], got {}", x.shape));
    };
    let d = dd
        .as_const()
        .ok_or_else(|| format!("head dim {dd} must be constant"))?;
    let super::super::nn::RopeAttrs {
        theta,
        neox,
        scale,
        dims,
    } = super::super::nn::rope_attrs(node, d)?;
    let half = dims / 2;
    let t = compute_ty(x.dtype)?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    // theta^(-2k/dims), computed here exactly as the CPU kernel computes it.
    let freqs: Vec<f64> = (0..half)
        .map(|k| theta.powf((k * -2) as f64 / dims as f64))
        .collect();
    let ftab = kb.param("freq", Ty::F64, Role::In);
    let (be, he, se) = (kb.dim(bd), kb.dim(hd), kb.dim(sd));
    let pos_batch1 = pos.shape.0.first() == Some(&Dim::c(1));
    let n = kb.let_("n", be * se.clone() * half);
    kb.for_("qk", 0, n, LoopTag::Parallel, |kb, qk| {
        let q = kb.let_("q", qk.clone() / half);
        let k = kb.let_("k", qk % half);
        let bi = kb.let_("bi", q.clone() / se.clone());
        let si = kb.let_("si", q % se.clone());
        let prow = if pos_batch1 { Expr::i(0) } else { bi.clone() };
        let p = load_elem(kb, ib[1], pos.dtype, prow * se.clone() + si.clone());
        let p = kb.let_("p", b(BinOp::Div, p.cast(Ty::F64), fconst(scale, Ty::F64)));
        let ang = b(BinOp::Mul, p, Expr::load(ftab, k.clone()));
        let (sin, cos) = super::super::nn::rope_sin_cos(kb, ang, t);
        let (ia, ibx) = if neox {
            (k.clone(), k.clone() + half)
        } else {
            (k.clone() * 2, k.clone() * 2 + 1)
        };
        let row = |kb: &mut KernelBuilder, hi: Expr| -> Expr {
            kb.let_(
                "row",
                ((bi.clone() * he.clone() + hi) * se.clone() + si.clone()) * d,
            )
        };
        kb.for_("h", 0, he.clone(), LoopTag::Serial, |kb, hi| {
            let r = row(kb, hi);
            let at = (r.clone() + ia.clone(), r + ibx.clone());
            super::super::nn::rotate_pair(kb, (ib[0], x.dtype), ob[0], at, (&sin, &cos));
        });
        if dims < d {
            // The pass-through tail, by the pair-0 thread of each token.
            kb.if_(k.clone().eq_(Expr::i(0)), |kb| {
                kb.for_("h", 0, he.clone(), LoopTag::Serial, |kb, hi| {
                    let r = row(kb, hi);
                    kb.for_("c", dims, d, LoopTag::Serial, |kb, c| {
                        let v = load_elem(kb, ib[0], x.dtype, r.clone() + c.clone());
                        let v = to_storage(kb, ob[0], v);
                        kb.store(ob[0], r.clone() + c, v);
                    });
                });
            });
        }
    });
    let (kernel, _) = crate::gpu::map_parallel(kb.finish()?);
    Ok(Some(Lowered::Kernel {
        kernel,
        packs: Vec::new(),
        consts: vec![Tensor::from_f64(DType::F64, vec![half as usize], freqs)],
        in_place: Vec::new(),
    }))
}
