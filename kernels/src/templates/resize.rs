//! `resize`: separable interpolation along each resized axis, with every tap computed
//! at build time. Resizing one axis is an affine map of that axis (weights per output
//! position, plus the extrapolation value where tf_crop_and_resize leaves the input),
//! fixed once the static sizes, scales and modes are known; the template measures it
//! by running the reference `resize` on the basis vectors of a one-axis probe, so
//! every mode (nearest, linear, cubic, antialias, exclude_outside, each coordinate
//! transform) has exactly the reference's taps. The kernel reads the tap tables
//! (indices, weights, offsets: build-time constants passed after the results) and
//! evaluates the nested per-axis sums in f64, as the reference does, rounding once
//! (integers round to even and saturate).

use super::{
    attr_float, load_elem, loop_nest, operand, result, setup, strides, to_storage, TResult,
};
use crate::builder::KernelBuilder;
use crate::loopir::{BinOp, BufId, Expr, Kernel, Role, Ty, UnOp};
use llmc_ir::interp::Interpreter;
use llmc_ir::{Attr, Attrs, DType, Dim, Module, Op, Shape, Tensor, TensorType};

/// The taps of one resized axis: per output position `t` (input index, weight) pairs
/// and an offset.
struct Taps {
    axis: usize,
    taps: usize,
    idx: Vec<i64>,
    w: Vec<f64>,
    b: Vec<f64>,
}

/// Runs the reference resize on a 1-D probe of `len` elements with `attrs`.
fn probe(attrs: &Attrs, v: Vec<f64>) -> TResult<Vec<f64>> {
    let mut m = Module::new("probe");
    let len = v.len();
    let x = m
        .graph
        .add_input("v", TensorType::new(DType::F64, Shape::of(&[len as i64])));
    let y = m
        .add1(Op::Resize, &[x], attrs.clone())
        .map_err(|e| e.to_string())?;
    m.graph.outputs.push(y);
    let out = Interpreter::new(&m)
        .run(&[Tensor::from_f64(DType::F64, vec![len], v)])
        .map_err(|e| format!("measuring the taps: {e}"))?;
    Ok(out.first().map(Tensor::to_f64).unwrap_or_default())
}

/// The taps of resizing axis `d` from `len` to `out` elements.
fn measure(attrs: &Attrs, rank: usize, d: usize, len: usize, out: usize) -> TResult<Taps> {
    let mut a = attrs.clone();
    a.insert("sizes".into(), Attr::Shape(Shape::of(&[out as i64])));
    if let Some(Attr::Floats(s)) = attrs.get("scales") {
        a.insert(
            "scales".into(),
            Attr::Floats(vec![s.get(d).copied().unwrap_or(1.0)]),
        );
    }
    if let Some(Attr::Floats(r)) = attrs.get("roi") {
        let (r0, r1) = (
            r.get(d).copied().unwrap_or(0.0),
            r.get(rank + d).copied().unwrap_or(1.0),
        );
        a.insert("roi".into(), Attr::Floats(vec![r0, r1]));
    }
    let b = probe(&a, vec![0.0; len])?;
    let mut cols = Vec::with_capacity(len);
    for j in 0..len {
        let mut e = vec![0.0; len];
        e[j] = 1.0;
        let y = probe(&a, e)?;
        cols.push(y.iter().zip(&b).map(|(y, b)| y - b).collect::<Vec<f64>>());
    }
    // Per output position, the inputs with nonzero weight.
    let rows: Vec<Vec<(i64, f64)>> = (0..out)
        .map(|o| {
            (0..len)
                .filter(|&j| cols[j][o] != 0.0)
                .map(|j| (j as i64, cols[j][o]))
                .collect()
        })
        .collect();
    let taps = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut idx = Vec::with_capacity(out * taps);
    let mut w = Vec::with_capacity(out * taps);
    for r in &rows {
        for t in 0..taps {
            let (j, c) = r.get(t).copied().unwrap_or((0, 0.0));
            idx.push(j);
            w.push(c);
        }
    }
    Ok(Taps {
        axis: d,
        taps,
        idx,
        w,
        b,
    })
}

/// `resize(x)`: the kernel and its tap tables.
pub(crate) fn resize(
    node: &llmc_ir::Node,
    ins: &[&TensorType],
    outs: &[&TensorType],
    name: &str,
) -> TResult<(Kernel, Vec<Tensor>)> {
    let x = operand(ins, 0, "x")?;
    let out = result(outs, 0)?;
    let rank = x.shape.rank();
    let scales: Vec<f64> = match node.attrs.get("scales") {
        Some(Attr::Floats(s)) => s.clone(),
        _ => vec![1.0; rank],
    };
    let roi = match node.attrs.get("roi") {
        Some(Attr::Floats(r)) => Some(r.clone()),
        _ => None,
    };
    let _ = attr_float(node, "extrapolation_value")?;
    let mut axes = Vec::new();
    for d in 0..rank {
        let (i, o) = (&x.shape.0[d], &out.shape.0[d]);
        let roi_default = roi.as_ref().is_none_or(|r| {
            (r.get(d).copied().unwrap_or(0.0)).abs() < 1e-9
                && (r.get(rank + d).copied().unwrap_or(1.0) - 1.0).abs() < 1e-9
        });
        let scale1 = (scales.get(d).copied().unwrap_or(1.0) - 1.0).abs() <= 1e-9;
        if scale1 && i == o && roi_default {
            continue;
        }
        let (Some(len), Some(n)) = (i.as_const(), o.as_const()) else {
            return Err(format!("axis {d}: a resized axis must have constant dims"));
        };
        if len == 0 {
            return Err(format!("cannot resize the empty axis {d}"));
        }
        axes.push(measure(&node.attrs, rank, d, len as usize, n as usize)?);
    }
    let (mut kb, ib, ob) = setup(name, ins, outs)?;
    let mut tables: Vec<(BufId, BufId, BufId)> = Vec::new();
    let mut consts = Vec::new();
    for (k, t) in axes.iter().enumerate() {
        let n = t.b.len();
        let idx = kb.param(&format!("idx{k}"), Ty::I64, Role::In);
        let w = kb.param(&format!("w{k}"), Ty::F64, Role::In);
        let b = kb.param(&format!("b{k}"), Ty::F64, Role::In);
        tables.push((idx, w, b));
        consts.push(Tensor::from_i64(
            DType::I64,
            vec![n * t.taps],
            t.idx.clone(),
        ));
        consts.push(Tensor::from_f64(DType::F64, vec![n * t.taps], t.w.clone()));
        consts.push(Tensor::from_f64(DType::F64, vec![n], t.b.clone()));
    }
    let xs = strides(&x.shape.0);
    let os = strides(&out.shape.0);
    let dt = x.dtype;
    loop_nest(&mut kb, &out.shape.0, false, &mut |kb, c| {
        let v = nested(kb, &axes, &tables, axes.len(), c.to_vec(), &xs, ib[0], dt);
        let v = kb.let_("v", v);
        let v = if dt.is_float() {
            v
        } else {
            let (lo, hi) = super::elementwise::int_range(Ty::of(dt).unwrap_or(Ty::I64));
            Expr::un(UnOp::Round, v)
                .max(Expr::f(lo as f64, Ty::F64))
                .min(Expr::f(hi as f64, Ty::F64))
        };
        let o = super::offset(kb, c, &os);
        let v = to_storage(kb, ob[0], v);
        kb.store(ob[0], o, v);
    });
    Ok((kb.finish()?, consts))
}

/// The value after resizing the first `level` resized axes, at input coordinates
/// `c` (coordinates of later axes are output positions already mapped).
#[allow(clippy::too_many_arguments)]
fn nested(
    kb: &mut KernelBuilder,
    axes: &[Taps],
    tables: &[(BufId, BufId, BufId)],
    level: usize,
    c: Vec<Expr>,
    xs: &[Dim],
    x: BufId,
    dt: DType,
) -> Expr {
    if level == 0 {
        let at = super::offset(kb, &c, xs);
        return load_elem(kb, x, dt, at).cast(Ty::F64);
    }
    let t = &axes[level - 1];
    let (idx, w, b) = tables[level - 1];
    let o = c[t.axis].clone();
    let mut sum = Expr::load(b, o.clone());
    for k in 0..t.taps {
        let at = o.clone() * t.taps as i64 + k as i64;
        let j = kb.let_("j", Expr::load(idx, at.clone()));
        let mut cc = c.clone();
        cc[t.axis] = j;
        let inner = nested(kb, axes, tables, level - 1, cc, xs, x, dt);
        sum = Expr::bin(
            BinOp::Add,
            sum,
            Expr::bin(BinOp::Mul, Expr::load(w, at), inner),
        );
    }
    sum
}
