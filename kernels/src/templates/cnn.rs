//! Convolution and pooling, channels-first over any number of spatial dims: `conv`
//! (grouped, strided, dilated, padded), `conv_transpose` (written as a gather: each
//! output element sums the input positions whose kernel footprint covers it),
//! `max_pool` and `avg_pool` (`ceil_mode`, `count_include_pad`). Spatial dims are
//! constant (the batch may be symbolic); window positions in the padding are skipped
//! with a guard, never read. Plain loop nests, parallel over batch × channels.

use super::{
    attr_bool, attr_ints, compute_ty, fconst, load_elem, operand, result, setup, strides,
    to_storage, work_estimate, worth_threads, TResult,
};
use crate::builder::KernelBuilder;
use crate::loopir::{BinOp, Expr, Kernel, LoopTag, UnOp};
use llmc_ir::{Dim, Node, Op, TensorType};

/// Window geometry per spatial dim.
struct Window {
    strides: Vec<i64>,
    dilations: Vec<i64>,
    pad_begin: Vec<i64>,
    pad_end: Vec<i64>,
}

fn window(node: &Node, n: usize) -> TResult<Window> {
    let list = |name: &str, default: i64, len: usize| -> TResult<Vec<i64>> {
        let v = attr_ints(node, name)?
            .map(|v| v.to_vec())
            .unwrap_or(vec![default; len]);
        if v.len() != len {
            return Err(format!("attribute `{name}` {v:?} needs {len} values"));
        }
        Ok(v)
    };
    let pads = list("pads", 0, 2 * n)?;
    Ok(Window {
        strides: list("strides", 1, n)?,
        dilations: list("dilations", 1, n)?,
        pad_begin: pads[..n].to_vec(),
        pad_end: pads[n..].to_vec(),
    })
}

/// Constant dims (spatial dims must be).
fn consts(dims: &[Dim], what: &str) -> TResult<Vec<i64>> {
    dims.iter()
        .map(|d| {
            d.as_const()
                .ok_or_else(|| format!("{what}: spatial dims must be constant"))
        })
        .collect()
}

/// Calls `body` with every coordinate of the constant extents `ext` (nested loops).
fn nest(
    kb: &mut KernelBuilder,
    ext: &[i64],
    c: &mut Vec<Expr>,
    body: &mut dyn FnMut(&mut KernelBuilder, &[Expr]),
) {
    if c.len() == ext.len() {
        return body(kb, c);
    }
    let n = ext[c.len()];
    kb.for_("s", 0, n, LoopTag::Serial, |kb, i| {
        c.push(i);
        nest(kb, ext, c, body);
        c.pop();
    });
}

/// `conv` and `conv_transpose`.
pub(crate) fn conv(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    let w = operand(ins, 1, "w")?;
    let out = result(outs, 0)?;
    let transpose = node.op == Op::ConvTranspose;
    let group = super::attr_int(node, "group")?.unwrap_or(1).max(1);
    let xsp = consts(&x.shape.0[2..], "operand x")?;
    let ksp = consts(&w.shape.0[2..], "operand w")?;
    let osp = consts(&out.shape.0[2..], "the result")?;
    let c = x.shape.0[1]
        .as_const()
        .ok_or("channels of x must be constant")?;
    let m = out.shape.0[1]
        .as_const()
        .ok_or("channels of the result must be constant")?;
    let win = window(node, ksp.len())?;
    let t = compute_ty(out.dtype)?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let (xs, ws, os) = (
        strides(&x.shape.0),
        strides(&w.shape.0),
        strides(&out.shape.0),
    );
    let nsp = ksp.len();
    let (cg, mg) = (c / group, m / group);
    let batch = kb.dim(&out.shape.0[0]);
    let parallel = worth_threads(work_estimate(&out.shape.0) * ksp.iter().product::<i64>() * cg);
    let tag = if parallel {
        LoopTag::Parallel
    } else {
        LoopTag::Serial
    };
    let bm = kb.let_("bm", batch * m);
    let bias = ib.get(2).copied().zip(ins.get(2).map(|t| t.dtype));
    kb.for_("bm", 0, bm, tag, |kb, q| {
        let b = kb.let_("b", q.clone() / m);
        let om = kb.let_("om", q % m);
        let g = kb.let_("g", om.clone() / mg);
        let mut oc = Vec::new();
        nest(kb, &osp, &mut oc, &mut |kb, o| {
            let init = match bias {
                Some((bb, bd)) => load_elem(kb, bb, bd, om.clone()).cast(t),
                None => fconst(0.0, t),
            };
            let acc = kb.let_mut("acc", init);
            kb.for_("ci", 0, cg, LoopTag::Serial, |kb, ci| {
                let xc = kb.let_("xc", g.clone() * cg + ci.clone());
                let mut kc = Vec::new();
                nest(kb, &ksp, &mut kc, &mut |kb, kk| {
                    // The input position each spatial dim reads, and whether it exists.
                    let mut ok = Expr::bool(true);
                    let mut xi = Expr::i(0);
                    for d in 0..nsp {
                        let (s, dil, pb) = (win.strides[d], win.dilations[d], win.pad_begin[d]);
                        let p = if transpose {
                            // o = i * s + k * dil - pb  =>  i = (o + pb - k * dil) / s.
                            let num = kb.let_("num", o[d].clone() + pb - kk[d].clone() * dil);
                            ok = ok.and(num.clone().ge(Expr::i(0))).and(
                                Expr::bin(BinOp::Rem, num.clone(), Expr::i(s)).eq_(Expr::i(0)),
                            );
                            num / s
                        } else {
                            o[d].clone() * s + kk[d].clone() * dil - pb
                        };
                        let p = kb.let_("p", p);
                        ok = ok
                            .and(p.clone().ge(Expr::i(0)))
                            .and(p.clone().lt(Expr::i(xsp[d])));
                        let st = kb.dim(&xs[2 + d]);
                        xi = xi + p * st;
                    }
                    let ok = kb.let_("ok", ok);
                    let (xs0, xs1) = (kb.dim(&xs[0]), kb.dim(&xs[1]));
                    let xi = b.clone() * xs0 + xc.clone() * xs1 + xi;
                    // Weights: conv w[M, C/g, k..]; conv_transpose w[C, M/g, k..].
                    let mut wi = if transpose {
                        let (s0, s1) = (kb.dim(&ws[0]), kb.dim(&ws[1]));
                        xc.clone() * s0 + (om.clone() - g.clone() * mg) * s1
                    } else {
                        let (s0, s1) = (kb.dim(&ws[0]), kb.dim(&ws[1]));
                        om.clone() * s0 + ci.clone() * s1
                    };
                    for d in 0..nsp {
                        let st = kb.dim(&ws[2 + d]);
                        wi = wi + kk[d].clone() * st;
                    }
                    kb.if_(ok, |kb| {
                        let xv = load_elem(kb, ib[0], x.dtype, xi.clone());
                        let wv = load_elem(kb, ib[1], w.dtype, wi.clone());
                        kb.assign(
                            acc,
                            Expr::bin(
                                BinOp::Add,
                                Expr::Var(acc),
                                Expr::bin(BinOp::Mul, xv, wv.cast(t)),
                            ),
                        );
                    });
                });
            });
            let (os0, os1) = (kb.dim(&os[0]), kb.dim(&os[1]));
            let mut oi = b.clone() * os0 + om.clone() * os1;
            for d in 0..nsp {
                let st = kb.dim(&os[2 + d]);
                oi = oi + o[d].clone() * st;
            }
            let v = to_storage(kb, ob[0], Expr::Var(acc));
            kb.store(ob[0], oi, v);
        });
    });
    kb.finish()
}

/// `max_pool` and `avg_pool`.
pub(crate) fn pool(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    let out = result(outs, 0)?;
    let kernel = attr_ints(node, "kernel")?
        .ok_or("missing attribute `kernel`")?
        .to_vec();
    let win = window(node, kernel.len())?;
    let max = node.op == Op::MaxPool;
    let include = attr_bool(node, "count_include_pad", false)?;
    let xsp = consts(&x.shape.0[2..], "operand x")?;
    let osp = consts(&out.shape.0[2..], "the result")?;
    let t = compute_ty(x.dtype)?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let (xs, os) = (strides(&x.shape.0), strides(&out.shape.0));
    let nsp = kernel.len();
    let bc = kb.numel(&x.shape.0[..2]);
    let parallel = worth_threads(work_estimate(&out.shape.0) * kernel.iter().product::<i64>());
    let tag = if parallel {
        LoopTag::Parallel
    } else {
        LoopTag::Serial
    };
    let plane_in: i64 = xsp.iter().product();
    let plane_out: i64 = osp.iter().product();
    kb.for_("bc", 0, bc, tag, |kb, q| {
        let mut oc = Vec::new();
        nest(kb, &osp, &mut oc, &mut |kb, o| {
            let init = match (max, t.is_float()) {
                (true, true) => fconst(f64::NEG_INFINITY, t),
                (true, false) => Expr::Int(super::elementwise::int_range(t).0, t),
                _ => fconst(0.0, t),
            };
            let acc = kb.let_mut("acc", init);
            let count = kb.let_mut("count", Expr::i(0));
            let mut kc = Vec::new();
            nest(kb, &kernel, &mut kc, &mut |kb, kk| {
                let mut real = Expr::bool(true);
                let mut in_window = Expr::bool(true);
                let mut xi = q.clone() * plane_in;
                for d in 0..nsp {
                    let p = o[d].clone() * win.strides[d] + kk[d].clone() * win.dilations[d]
                        - win.pad_begin[d];
                    let p = kb.let_("p", p);
                    // Past the end padding (a ceil-mode overhang) is not in the window.
                    in_window = in_window.and(p.clone().lt(Expr::i(xsp[d] + win.pad_end[d])));
                    real = real
                        .and(p.clone().ge(Expr::i(0)))
                        .and(p.clone().lt(Expr::i(xsp[d])));
                    let st = kb.dim(&xs[2 + d]);
                    xi = xi + p * st;
                }
                let in_window = kb.let_("in_window", in_window);
                let real = kb.let_("real", real);
                kb.if_(in_window.clone().and(real.clone()), |kb| {
                    let v = kb.let_("v", load_elem(kb, ib[0], x.dtype, xi.clone()));
                    let a = Expr::Var(acc);
                    let nv = if max && t.is_float() {
                        Expr::select(
                            Expr::un(UnOp::IsNan, v.clone()).or(v.clone().gt(a.clone())),
                            v,
                            a,
                        )
                    } else if max {
                        a.max(v)
                    } else {
                        Expr::bin(BinOp::Add, a, v)
                    };
                    kb.assign(acc, nv);
                    kb.assign(count, Expr::Var(count) + 1);
                });
                if include {
                    // Padding positions inside the window count as zeros.
                    let pad = in_window.clone().and(Expr::un(UnOp::Not, real));
                    kb.if_(pad, |kb| kb.assign(count, Expr::Var(count) + 1));
                }
            });
            let mut oi = q.clone() * plane_out;
            for d in 0..nsp {
                let st = kb.dim(&os[2 + d]);
                oi = oi + o[d].clone() * st;
            }
            let v = if max {
                Expr::Var(acc)
            } else {
                // An empty window gives NaN, as 0/0.
                Expr::bin(BinOp::Div, Expr::Var(acc), Expr::Var(count).cast(t))
            };
            let v = to_storage(kb, ob[0], v);
            kb.store(ob[0], oi, v);
        });
    });
    kb.finish()
}
