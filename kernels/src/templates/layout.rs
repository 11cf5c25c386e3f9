//! Layout and indexing ops: each output element is one input element (or a fill
//! value), so every template here is a loop nest over the output computing where to
//! read. Affine maps (transpose, slice, expand) go through dim merging so contiguous
//! runs become one vectorized loop; concat and split copy contiguous row blocks;
//! gather reads its index once per row. Indices read from data (gather) are wrapped
//! when negative and clamped into range, so a bad index can never read outside the
//! table (the reference interpreter reports it as an error instead).

use super::pack::{tile16_packs, OperandPack, Pack};
use super::{
    attr_bool, attr_float, attr_int, attr_ints, axis, broadcast_strides, chunked, compute_ty,
    dequant_tile16, fconst, gpu_mapping, load_elem, loop_nest, merge_dims, offset, operand, result,
    setup, strides, to_storage, work_estimate, worth_threads, TResult,
};
use crate::builder::KernelBuilder;
use crate::loopir::{BufId, Expr, Kernel, LoopTag, QTile, Ty};
use llmc_ir::{DType, Dim, Node, Op, TensorType};

/// Dispatches the layout ops.
pub(crate) fn layout(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    match node.op {
        Op::Transpose => transpose(node, ins, outs, name),
        Op::Expand => expand(ins, outs, name),
        Op::Slice => slice(node, ins, outs, name),
        Op::Tile => tile(ins, outs, name),
        Op::Trilu => trilu(node, ins, outs, name),
        Op::Pad => pad(node, ins, outs, name),
        Op::Gather => gather(node, ins, outs, name).map(|(k, _)| k),
        Op::GatherElements => gather_elements(node, ins, outs, name),
        Op::Concat => concat(node, ins, outs, name),
        Op::Split => split(node, ins, outs, name),
        other => Err(format!("`{other}` is not a layout op")),
    }
}

/// Copies operand 0 to result 0 element by element (dequantizing block formats).
pub(crate) fn copy(
    _node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let n = x.shape.numel();
    let big = worth_threads(work_estimate(std::slice::from_ref(&n)));
    let ne = kb.dim(&n);
    let mut body = |kb: &mut KernelBuilder, i: Expr| {
        let v = load_elem(kb, ib[0], x.dtype, i.clone());
        let v = to_storage(kb, ob[0], v);
        kb.store(ob[0], i, v);
    };
    if big {
        chunked(&mut kb, ne, true, &mut body);
    } else {
        kb.for_("i", 0, ne, LoopTag::Vectorize(8), |kb, i| body(kb, i));
    }
    kb.finish()
}

/// An affine gather: out[c] = x[base + Σ c_d * st_d], dims merged where contiguous.
fn affine(
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
    base: impl FnOnce(&mut KernelBuilder) -> Expr,
    in_strides: Vec<Dim>,
) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    let out = result(outs, 0)?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let base = base(&mut kb);
    let base = kb.let_("base", base);
    let (ext, st) = merge_dims(&out.shape.0, &[in_strides, strides(&out.shape.0)]);
    loop_nest(&mut kb, &ext, true, &mut |kb, c| {
        let i = base.clone() + offset(kb, c, &st[0]);
        let v = load_elem(kb, ib[0], x.dtype, i);
        let o = offset(kb, c, &st[1]);
        let v = to_storage(kb, ob[0], v);
        kb.store(ob[0], o, v);
    });
    kb.finish()
}

fn transpose(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    let perm = attr_ints(node, "perm")?.ok_or("missing attribute `perm`")?;
    let xs = strides(&x.shape.0);
    let st = perm
        .iter()
        .map(|&p| {
            usize::try_from(p)
                .ok()
                .and_then(|p| xs.get(p).cloned())
                .ok_or_else(|| format!("attribute `perm` {perm:?} is not a permutation"))
        })
        .collect::<TResult<Vec<Dim>>>()?;
    affine(ins, outs, name, |_| Expr::i(0), st)
}

fn expand(ins: &[&TensorType], outs: &[&TensorType], name: &str) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    let out = result(outs, 0)?;
    let st = broadcast_strides(&out.shape.0, &x.shape.0);
    affine(ins, outs, name, |_| Expr::i(0), st)
}

/// Bounds beyond this are treated as infinite (exporters write i64::MAX/MIN).
const HUGE: i64 = 1 << 62;

fn slice(node: &Node, ins: &[&TensorType], outs: &[&TensorType], name: &str) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    let rank = x.shape.rank();
    let starts = attr_ints(node, "starts")?.ok_or("missing attribute `starts`")?;
    let ends = attr_ints(node, "ends")?.ok_or("missing attribute `ends`")?;
    if starts.len() != ends.len() {
        return Err("attributes `starts` and `ends` differ in length".into());
    }
    let axes: Vec<usize> = match attr_ints(node, "axes")? {
        Some(a) => a
            .iter()
            .map(|&v| axis(v, rank, "axes"))
            .collect::<TResult<_>>()?,
        None => (0..starts.len()).collect(),
    };
    let steps: Vec<i64> = match attr_ints(node, "steps")? {
        Some(s) => s.to_vec(),
        None => vec![1; starts.len()],
    };
    if axes.len() != starts.len() || steps.len() != starts.len() || steps.contains(&0) {
        return Err("attributes `axes`/`steps` do not match `starts` (or a step is 0)".into());
    }
    let xs = strides(&x.shape.0);
    let mut st = xs.clone();
    let mut firsts: Vec<(usize, i64, i64)> = Vec::new();
    for k in 0..starts.len() {
        let d = axes[k];
        st[d] = xs[d].mul(&Dim::c(steps[k]));
        firsts.push((d, starts[k], steps[k]));
    }
    let shape = x.shape.0.clone();
    affine(
        ins,
        outs,
        name,
        move |kb| {
            let mut base = Expr::i(0);
            for (d, start, step) in firsts {
                let n = kb.dim(&shape[d]);
                // ONNX: a negative start counts from the end; then clamp into
                // [0, n] (step > 0) or [0, n - 1] (step < 0).
                let adj = if start <= -HUGE {
                    Expr::i(0)
                } else if start >= HUGE {
                    n.clone()
                } else if start < 0 {
                    n.clone() + start
                } else {
                    Expr::i(start)
                };
                let hi = if step > 0 { n.clone() } else { n.clone() - 1 };
                let first = adj.max(Expr::i(0)).min(hi);
                let s = kb.dim(&xs[d]);
                base = base + first * s;
            }
            base
        },
        st,
    )
}

/// A loop nest over every output coordinate (no merging), innermost vectorized.
fn each_coord(
    kb: &mut KernelBuilder,
    shape: &[Dim],
    body: &mut dyn FnMut(&mut KernelBuilder, &[Expr]),
) {
    let parallel = worth_threads(work_estimate(shape));
    super::loop_nest_par(kb, shape, parallel, true, body);
}

fn tile(ins: &[&TensorType], outs: &[&TensorType], name: &str) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    let out = result(outs, 0)?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let xs = strides(&x.shape.0);
    let os = strides(&out.shape.0);
    let dims = x.shape.0.clone();
    each_coord(&mut kb, &out.shape.0, &mut |kb, c| {
        let mut i = Expr::i(0);
        for (d, cd) in c.iter().enumerate() {
            let n = kb.dim(&dims[d]);
            let s = kb.dim(&xs[d]);
            i = i + (cd.clone() % n) * s;
        }
        let v = load_elem(kb, ib[0], x.dtype, i);
        let o = offset(kb, c, &os);
        let v = to_storage(kb, ob[0], v);
        kb.store(ob[0], o, v);
    });
    kb.finish()
}

/// The zero of a compute type.
fn zero(t: Ty) -> Expr {
    if t.is_float() {
        fconst(0.0, t)
    } else {
        Expr::Int(0, t)
    }
}

fn trilu(node: &Node, ins: &[&TensorType], outs: &[&TensorType], name: &str) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    let rank = x.shape.rank();
    if rank < 2 {
        return Err("operand x must have rank >= 2".into());
    }
    let upper = attr_bool(node, "upper", true)?;
    let k = attr_int(node, "k")?.unwrap_or(0);
    let t = compute_ty(x.dtype)?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let xs = strides(&x.shape.0);
    each_coord(&mut kb, &x.shape.0, &mut |kb, c| {
        let i = offset(kb, c, &xs);
        let diff = c[rank - 1].clone() - c[rank - 2].clone();
        let keep = if upper {
            diff.ge(Expr::i(k))
        } else {
            diff.le(Expr::i(k))
        };
        let v = load_elem(kb, ib[0], x.dtype, i.clone());
        let v = Expr::select(keep, v, zero(t));
        let v = to_storage(kb, ob[0], v);
        kb.store(ob[0], i, v);
    });
    kb.finish()
}

fn pad(node: &Node, ins: &[&TensorType], outs: &[&TensorType], name: &str) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    let out = result(outs, 0)?;
    let r = x.shape.rank();
    let pads = attr_ints(node, "pads")?.ok_or("missing attribute `pads`")?;
    if pads.len() != 2 * r {
        return Err(format!("attribute `pads` needs {} entries", 2 * r));
    }
    let value = attr_float(node, "value")?.unwrap_or(0.0);
    let t = compute_ty(x.dtype)?;
    let fill = if t.is_float() {
        fconst(value, t)
    } else if t == Ty::Bool {
        Expr::Int((value != 0.0) as i64, t)
    } else {
        Expr::Int(value as i64, t)
    };
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let xs = strides(&x.shape.0);
    let os = strides(&out.shape.0);
    let dims = x.shape.0.clone();
    each_coord(&mut kb, &out.shape.0, &mut |kb, c| {
        let mut inside = Expr::bool(true);
        let mut i = Expr::i(0);
        for d in 0..r {
            let s = c[d].clone() - pads[d];
            let n = kb.dim(&dims[d]);
            inside = inside.and(s.clone().ge(Expr::i(0))).and(s.clone().lt(n));
            let st = kb.dim(&xs[d]);
            i = i + s * st;
        }
        let o = offset(kb, c, &os);
        let o = kb.let_("o", o);
        let inside = kb.let_("inside", inside);
        let fill = to_storage(kb, ob[0], fill.clone());
        kb.if_else(
            inside,
            |kb| {
                let v = load_elem(kb, ib[0], x.dtype, i.clone());
                let v = to_storage(kb, ob[0], v);
                kb.store(ob[0], o.clone(), v);
            },
            |kb| kb.store(ob[0], o.clone(), fill.clone()),
        );
    });
    kb.finish()
}

/// An index read from data: negative wraps by `n`, then clamped into [0, n - 1].
fn safe_index(kb: &mut KernelBuilder, buf: BufId, at: Expr, n: Expr) -> Expr {
    let raw = Expr::load(buf, at).cast(Ty::I64);
    let raw = kb.let_("ix", raw);
    let wrapped = Expr::select(raw.clone().lt(Expr::i(0)), raw.clone() + n.clone(), raw);
    kb.let_("row", wrapped.max(Expr::i(0)).min(n - 1))
}

/// Gather; a Q8_0/Q4_0/Q4_1/Q5/Q6_K table `[n, k]` gathered by rows is read in the
/// [`Pack::Tile16`] layout on the CPU, the layout the quantized linear asks for, so a
/// tied embedding (the same weight as the output head) is stored once.
pub(crate) fn gather(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<(Kernel, Vec<OperandPack>)> {
    let table = operand(ins, 0, "table")?;
    let ids = operand(ins, 1, "indices")?;
    let ax = axis(
        attr_int(node, "axis")?.unwrap_or(0),
        table.shape.rank(),
        "axis",
    )?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let outer: Vec<Dim> = table.shape.0[..ax].to_vec();
    let inner: Vec<Dim> = table.shape.0[ax + 1..].to_vec();
    let outer_n = kb.numel(&outer);
    let inner_n = kb.numel(&inner);
    let nidx = kb.numel(&ids.shape.0);
    let n = kb.dim(&table.shape.0[ax]);
    let outer_d = outer.iter().fold(Dim::c(1), |a, d| a.mul(d));
    let inner_d = inner.iter().fold(Dim::c(1), |a, d| a.mul(d));
    let all: Vec<Dim> = vec![outer_d, ids.shape.numel(), inner_d];
    let parallel = worth_threads(work_estimate(&all));
    let tag0 = if parallel {
        LoopTag::Parallel
    } else {
        LoopTag::Serial
    };
    let dims = table.shape.as_consts().unwrap_or_default();
    if let (&[rows, k], 0, false) = (&dims[..], ax, gpu_mapping()) {
        let bl = table.dtype.block_len() as i64;
        let gathers = bl == 32 || table.dtype == DType::Q6K;
        if tile16_packs(table.dtype, rows as usize, k as usize) && gathers {
            let lanes = QTile::LANES as i64;
            let group_bytes = lanes * table.dtype.block_bytes() as i64;
            let blocks = k / bl;
            kb.for_("q", 0, nidx.clone(), tag0, |kb, q| {
                let row = safe_index(kb, ib[1], q.clone(), n.clone());
                let g = kb.let_("g", row.clone() / lanes * blocks);
                let c = kb.let_("c", row % lanes);
                let dst = kb.let_("dst", q * k);
                kb.for_("b", 0, blocks, LoopTag::Serial, |kb, b| {
                    let at = kb.let_("at", (g.clone() + b.clone()) * group_bytes);
                    kb.for_("j", 0, bl, LoopTag::Vectorize(8), |kb, j| {
                        let v =
                            dequant_tile16(ib[0], table.dtype, at.clone(), c.clone(), j.clone());
                        let v = to_storage(kb, ob[0], v);
                        kb.store(ob[0], dst.clone() + b.clone() * bl + j, v);
                    });
                });
            });
            let pack = OperandPack {
                operand: 0,
                pack: Pack::Tile16,
            };
            return Ok((kb.finish()?, vec![pack]));
        }
    }
    kb.for_("o", 0, outer_n, tag0, |kb, o| {
        kb.for_("q", 0, nidx.clone(), LoopTag::Serial, |kb, q| {
            let row = safe_index(kb, ib[1], q.clone(), n.clone());
            let src = kb.let_("src", (o.clone() * n.clone() + row) * inner_n.clone());
            let dst = kb.let_("dst", (o.clone() * nidx.clone() + q) * inner_n.clone());
            kb.for_("i", 0, inner_n.clone(), LoopTag::Vectorize(8), |kb, i| {
                let v = load_elem(kb, ib[0], table.dtype, src.clone() + i.clone());
                let v = to_storage(kb, ob[0], v);
                kb.store(ob[0], dst.clone() + i, v);
            });
        });
    });
    Ok((kb.finish()?, Vec::new()))
}

fn gather_elements(
    node: &Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<Kernel> {
    let x = operand(ins, 0, "data")?;
    let ids = operand(ins, 1, "indices")?;
    let rank = x.shape.rank();
    if ids.shape.rank() != rank {
        return Err("indices and data must have the same rank".into());
    }
    let ax = axis(
        attr_int(node, "axis")?.ok_or("missing attribute `axis`")?,
        rank,
        "axis",
    )?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let xs = strides(&x.shape.0);
    let is = strides(&ids.shape.0);
    let n_ax = x.shape.0[ax].clone();
    each_coord(&mut kb, &ids.shape.0, &mut |kb, c| {
        let at = offset(kb, c, &is);
        let at = kb.let_("at", at);
        let n = kb.dim(&n_ax);
        let row = safe_index(kb, ib[1], at.clone(), n);
        let mut i = Expr::i(0);
        for d in 0..rank {
            let s = kb.dim(&xs[d]);
            let cd = if d == ax { row.clone() } else { c[d].clone() };
            i = i + cd * s;
        }
        let v = load_elem(kb, ib[0], x.dtype, i);
        let v = to_storage(kb, ob[0], v);
        kb.store(ob[0], at, v);
    });
    kb.finish()
}

/// (outer, axis extent, inner) of a shape around `ax`, as dims.
fn around(shape: &[Dim], ax: usize) -> (Dim, Dim, Dim) {
    let outer = shape[..ax].iter().fold(Dim::c(1), |a, d| a.mul(d));
    let inner = shape[ax + 1..].iter().fold(Dim::c(1), |a, d| a.mul(d));
    (outer, shape[ax].clone(), inner)
}

/// Copies `rows` blocks of `len` elements: dst[o * dst_row + dst_off + m] =
/// src[o * src_row + src_off + m].
#[allow(clippy::too_many_arguments)]
fn block_copy(
    kb: &mut KernelBuilder,
    rows: &Dim,
    len: &Dim,
    src: (BufId, DType, Expr, Expr),
    dst: (BufId, Expr, Expr),
) {
    let (sb, sd, s_row, s_off) = src;
    let (db, d_row, d_off) = dst;
    let parallel = worth_threads(work_estimate(&[rows.clone(), len.clone()]));
    let tag = if parallel {
        LoopTag::Parallel
    } else {
        LoopTag::Serial
    };
    let rn = kb.dim(rows);
    let ln = kb.dim(len);
    kb.for_("o", 0, rn, tag, |kb, o| {
        let s0 = kb.let_("s0", o.clone() * s_row.clone() + s_off.clone());
        let d0 = kb.let_("d0", o * d_row.clone() + d_off.clone());
        kb.for_("m", 0, ln, LoopTag::Vectorize(8), |kb, m| {
            let v = load_elem(kb, sb, sd, s0.clone() + m.clone());
            let v = to_storage(kb, db, v);
            kb.store(db, d0.clone() + m, v);
        });
    });
}

fn concat(node: &Node, ins: &[&TensorType], outs: &[&TensorType], name: &str) -> TResult<Kernel> {
    let out = result(outs, 0)?;
    let ax = axis(
        attr_int(node, "axis")?.ok_or("missing attribute `axis`")?,
        out.shape.rank(),
        "axis",
    )?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let (outer, total, inner) = around(&out.shape.0, ax);
    let d_row = kb.dim(&total.mul(&inner));
    let mut off = Dim::c(0);
    for (k, t) in ins.iter().enumerate() {
        let len = t.shape.0[ax].mul(&inner);
        let s_row = kb.dim(&len);
        let d_off = kb.dim(&off.mul(&inner));
        block_copy(
            &mut kb,
            &outer,
            &len,
            (ib[k], t.dtype, s_row, Expr::i(0)),
            (ob[0], d_row.clone(), d_off),
        );
        off = off.add(&t.shape.0[ax]);
    }
    kb.finish()
}

fn split(node: &Node, ins: &[&TensorType], outs: &[&TensorType], name: &str) -> TResult<Kernel> {
    let x = operand(ins, 0, "x")?;
    let ax = axis(
        attr_int(node, "axis")?.ok_or("missing attribute `axis`")?,
        x.shape.rank(),
        "axis",
    )?;
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let (outer, total, inner) = around(&x.shape.0, ax);
    let s_row = kb.dim(&total.mul(&inner));
    if gpu_mapping() {
        // One GPU thread per element of x: it finds its piece by offset along the row.
        let rn = kb.dim(&outer);
        let n = kb.let_("n", rn * s_row.clone());
        kb.for_("i", 0, n, LoopTag::Parallel, |kb, i| {
            let o = kb.let_("o", i.clone() / s_row.clone());
            let m = kb.let_("m", i.clone() % s_row.clone());
            let v = kb.let_("v", load_elem(kb, ib[0], x.dtype, i));
            let mut off = Dim::c(0);
            for (k, t) in outs.iter().enumerate() {
                let len = t.shape.0[ax].mul(&inner);
                let lo = kb.dim(&off.mul(&inner));
                let ln = kb.dim(&len);
                let inside = m
                    .clone()
                    .ge(lo.clone())
                    .and(m.clone().lt(lo.clone() + ln.clone()));
                kb.if_(inside, |kb| {
                    let y = to_storage(kb, ob[k], v.clone());
                    kb.store(ob[k], o.clone() * ln + (m.clone() - lo), y);
                });
                off = off.add(&t.shape.0[ax]);
            }
        });
        return kb.finish();
    }
    let mut off = Dim::c(0);
    for (k, t) in outs.iter().enumerate() {
        let len = t.shape.0[ax].mul(&inner);
        let d_row = kb.dim(&len);
        let s_off = kb.dim(&off.mul(&inner));
        block_copy(
            &mut kb,
            &outer,
            &len,
            (ib[0], x.dtype, s_row.clone(), s_off),
            (ob[k], d_row, Expr::i(0)),
        );
        off = off.add(&t.shape.0[ax]);
    }
    kb.finish()
}
