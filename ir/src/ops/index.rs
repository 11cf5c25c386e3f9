//! Indexed reads and writes and selection: scatter_elements, scatter_nd, gather_nd
//! (ONNX semantics, negative indices count from the end, out-of-range ones are errors)
//! and top_k (the k largest or smallest along an axis, ties to the lower index). KV
//! cache updates in exported decoders are written with these.

use super::util::{
    arg, axis_in, checked_numel, need_int, need_numeric, opt_bool, opt_int, opt_str, req_int, targ,
    R, T,
};
use crate::interp::EvalCtx;
use crate::tensor::{strides, Data};
use crate::{Attrs, DType, Dim, Shape, Tensor, TensorType};

/// How a scatter combines an update with the element it lands on.
#[derive(Clone, Copy)]
enum Reduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

fn reduction(a: &Attrs) -> Result<Reduction, String> {
    Ok(match opt_str(a, "reduction")?.unwrap_or("none") {
        "none" => Reduction::None,
        "add" => Reduction::Add,
        "mul" => Reduction::Mul,
        "max" => Reduction::Max,
        "min" => Reduction::Min,
        other => {
            return Err(format!(
                "attribute `reduction` = {other:?} is unknown (none, add, mul, max, min)"
            ))
        }
    })
}

/// Applies one update at flat position `p` of `out` (same storage kind as `upd`).
fn apply(out: &mut Data, p: usize, upd: &Data, q: usize, r: Reduction) {
    match (out, upd) {
        (Data::F(o), Data::F(u)) => {
            let (x, y) = (o[p], u[q]);
            o[p] = match r {
                Reduction::None => y,
                Reduction::Add => x + y,
                Reduction::Mul => x * y,
                Reduction::Max => x.max(y),
                Reduction::Min => x.min(y),
            };
        }
        (Data::I(o), Data::I(u)) => {
            let (x, y) = (o[p], u[q]);
            o[p] = match r {
                Reduction::None => y,
                Reduction::Add => x.wrapping_add(y),
                Reduction::Mul => x.wrapping_mul(y),
                Reduction::Max => x.max(y),
                Reduction::Min => x.min(y),
            };
        }
        _ => {}
    }
}

/// Re-rounds/wraps a tensor's storage to its dtype after in-place updates.
fn finish(dtype: DType, shape: Vec<usize>, data: Data) -> Tensor {
    match data {
        Data::F(v) => Tensor::from_f64(dtype, shape, v),
        Data::I(v) => Tensor::from_i64(dtype, shape, v),
    }
}

fn resolve(v: i64, n: usize, what: &str) -> Result<usize, String> {
    let r = if v < 0 { v + n as i64 } else { v };
    if r < 0 || r >= n as i64 {
        return Err(format!("{what} {v} is out of range for a dim of {n}"));
    }
    Ok(r as usize)
}

fn same_data_type(d: &TensorType, u: &TensorType) -> Result<(), String> {
    if d.dtype.compute_type() != u.dtype.compute_type() {
        return Err(format!(
            "operand updates is {}, data is {}",
            u.dtype, d.dtype
        ));
    }
    Ok(())
}

// ----- scatter_elements -----

/// Shape rule of `scatter_elements`: indices and updates share a shape of data's rank.
pub fn infer_scatter_elements(i: &[&TensorType], a: &Attrs) -> T {
    let (d, ix, u) = (
        targ(i, 0, "data")?,
        targ(i, 1, "indices")?,
        targ(i, 2, "updates")?,
    );
    need_int(ix, "operand indices")?;
    same_data_type(d, u)?;
    reduction(a)?;
    axis_in(opt_int(a, "axis")?.unwrap_or(0), d.shape.rank(), "axis")?;
    if ix.shape != u.shape || ix.shape.rank() != d.shape.rank() {
        return Err(format!(
            "indices {} and updates {} must have one shape, of data {}'s rank",
            ix.shape, u.shape, d.shape
        ));
    }
    Ok(vec![TensorType::new(
        d.dtype.compute_type(),
        d.shape.clone(),
    )])
}

/// Reference semantics of `scatter_elements`.
pub fn eval_scatter_elements(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let (d, ix, u) = (
        arg(i, 0, "data")?,
        arg(i, 1, "indices")?,
        arg(i, 2, "updates")?,
    );
    let r = reduction(a)?;
    let rank = d.shape.len();
    let axis = axis_in(opt_int(a, "axis")?.unwrap_or(0), rank, "axis")?;
    if ix.shape != u.shape || ix.shape.len() != rank || d.dtype != u.dtype {
        return Err(format!(
            "indices {:?} / updates {:?} do not fit data {:?}",
            ix.shape, u.shape, d.shape
        ));
    }
    if ix.shape.iter().zip(&d.shape).any(|(a, b)| a > b) {
        return Err(format!(
            "indices {:?} are larger than data {:?}",
            ix.shape, d.shape
        ));
    }
    let idx = ix.to_i64();
    let ds = strides(&d.shape);
    let mut out = d.data.clone();
    let mut q = 0;
    let mut err = None;
    super::util::for_each_coord(&ix.shape, |c| {
        if err.is_some() {
            return;
        }
        let mut p = 0;
        for (k, &ck) in c.iter().enumerate() {
            let pos = if k == axis {
                match resolve(idx[q], d.shape[axis], "index") {
                    Ok(v) => v,
                    Err(e) => {
                        err = Some(e);
                        return;
                    }
                }
            } else {
                ck
            };
            p += pos * ds[k];
        }
        apply(&mut out, p, &u.data, q, r);
        q += 1;
    });
    if let Some(e) = err {
        return Err(e);
    }
    Ok(vec![finish(d.dtype, d.shape.clone(), out)])
}

// ----- scatter_nd / gather_nd -----

/// The last dim of indices (the index tuple length), constant and at most `rank`.
fn tuple_len(ix: &TensorType, rank: usize) -> Result<usize, String> {
    let k = ix
        .shape
        .0
        .last()
        .and_then(Dim::as_const)
        .ok_or_else(|| format!("operand indices {} needs a constant last dim", ix.shape))?;
    if k < 1 || k as usize > rank {
        return Err(format!(
            "index tuples of length {k} do not fit data of rank {rank}"
        ));
    }
    Ok(k as usize)
}

/// Shape rule of `scatter_nd`: updates = indices[:-1] + data[k:].
pub fn infer_scatter_nd(i: &[&TensorType], a: &Attrs) -> T {
    let (d, ix, u) = (
        targ(i, 0, "data")?,
        targ(i, 1, "indices")?,
        targ(i, 2, "updates")?,
    );
    need_int(ix, "operand indices")?;
    same_data_type(d, u)?;
    reduction(a)?;
    let k = tuple_len(ix, d.shape.rank())?;
    let mut want = ix.shape.0[..ix.shape.rank() - 1].to_vec();
    want.extend(d.shape.0[k..].iter().cloned());
    if u.shape.0 != want {
        return Err(format!(
            "operand updates {} must be {} (indices[:-1] + data[{k}:])",
            u.shape,
            Shape(want)
        ));
    }
    Ok(vec![TensorType::new(
        d.dtype.compute_type(),
        d.shape.clone(),
    )])
}

/// Flat offsets into `data` of each index tuple of `indices` ([..., k]).
fn nd_offsets(data: &[usize], ix: &Tensor, k: usize) -> Result<Vec<usize>, String> {
    let ds = strides(data);
    ix.to_i64()
        .chunks(k.max(1))
        .map(|t| {
            t.iter().enumerate().try_fold(0usize, |acc, (j, &v)| {
                Ok(acc + resolve(v, data[j], "index")? * ds[j])
            })
        })
        .collect()
}

/// Reference semantics of `scatter_nd`.
pub fn eval_scatter_nd(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let (d, ix, u) = (
        arg(i, 0, "data")?,
        arg(i, 1, "indices")?,
        arg(i, 2, "updates")?,
    );
    let r = reduction(a)?;
    let k = *ix
        .shape
        .last()
        .ok_or("operand indices must have rank >= 1")?;
    if k < 1 || k > d.shape.len() || d.dtype != u.dtype {
        return Err(format!(
            "indices {:?} do not fit data {:?}",
            ix.shape, d.shape
        ));
    }
    let slice: usize = d.shape[k..].iter().product();
    let offs = nd_offsets(&d.shape, ix, k)?;
    if u.numel() != offs.len() * slice {
        return Err(format!(
            "updates {:?} do not match indices {:?} and data {:?}",
            u.shape, ix.shape, d.shape
        ));
    }
    let mut out = d.data.clone();
    for (n, &o) in offs.iter().enumerate() {
        for e in 0..slice {
            apply(&mut out, o + e, &u.data, n * slice + e, r);
        }
    }
    Ok(vec![finish(d.dtype, d.shape.clone(), out)])
}

fn batch_dims(a: &Attrs, ix: usize, data: usize) -> Result<usize, String> {
    let b = opt_int(a, "batch_dims")?.unwrap_or(0);
    if b < 0 || b as usize >= ix.min(data) {
        return Err(format!(
            "attribute `batch_dims` = {b} must be below both ranks ({ix}, {data})"
        ));
    }
    Ok(b as usize)
}

/// Shape rule of `gather_nd`: data[:b] + indices[b:-1] + data[b+k:].
pub fn infer_gather_nd(i: &[&TensorType], a: &Attrs) -> T {
    let (d, ix) = (targ(i, 0, "data")?, targ(i, 1, "indices")?);
    need_int(ix, "operand indices")?;
    let b = batch_dims(a, ix.shape.rank(), d.shape.rank())?;
    let k = tuple_len(ix, d.shape.rank() - b)?;
    if d.shape.0[..b] != ix.shape.0[..b] {
        return Err(format!(
            "the first {b} dims of data {} and indices {} differ",
            d.shape, ix.shape
        ));
    }
    let mut dims = d.shape.0[..b].to_vec();
    dims.extend(ix.shape.0[b..ix.shape.rank() - 1].iter().cloned());
    dims.extend(d.shape.0[b + k..].iter().cloned());
    Ok(vec![TensorType::new(d.dtype.compute_type(), Shape(dims))])
}

/// Reference semantics of `gather_nd`.
pub fn eval_gather_nd(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let (d, ix) = (arg(i, 0, "data")?, arg(i, 1, "indices")?);
    if !ix.dtype.is_int() {
        return Err(format!(
            "operand indices must be integers, got {}",
            ix.dtype
        ));
    }
    let b = batch_dims(a, ix.shape.len(), d.shape.len())?;
    let k = *ix
        .shape
        .last()
        .ok_or("operand indices must have rank >= 1")?;
    if k < 1 || b + k > d.shape.len() || d.shape[..b] != ix.shape[..b] {
        return Err(format!(
            "indices {:?} do not fit data {:?} with batch_dims {b}",
            ix.shape, d.shape
        ));
    }
    let nb: usize = d.shape[..b].iter().product();
    let inner = &d.shape[b..];
    let per_batch: usize = inner.iter().product();
    let slice: usize = d.shape[b + k..].iter().product();
    let tuples = ix.numel() / k.max(1);
    let tuples_per_batch = tuples / nb.max(1);
    let ix_rows = ix.to_i64();
    let mut picks = Vec::with_capacity(tuples * slice);
    for t in 0..tuples {
        let batch = t / tuples_per_batch.max(1);
        let row = Tensor::from_i64(DType::I64, vec![k], ix_rows[t * k..(t + 1) * k].to_vec());
        let off = nd_offsets(inner, &row, k)?[0];
        let base = batch * per_batch + off;
        picks.extend(base..base + slice);
    }
    let mut shape = d.shape[..b].to_vec();
    shape.extend(&ix.shape[b..ix.shape.len() - 1]);
    shape.extend(&d.shape[b + k..]);
    checked_numel(&shape)?;
    Ok(vec![super::util::pick(d, shape, &picks)])
}

// ----- top_k -----

/// Shape rule of `top_k`: values and i64 indices with `k` elements along `axis`.
pub fn infer_top_k(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    need_numeric(x, "operand x")?;
    let axis = axis_in(opt_int(a, "axis")?.unwrap_or(-1), x.shape.rank(), "axis")?;
    let k = req_int(a, "k")?;
    opt_bool(a, "largest", true)?;
    opt_bool(a, "sorted", true)?;
    if k < 0 {
        return Err(format!("attribute `k` = {k} must be non-negative"));
    }
    if let Some(n) = x.shape.0[axis].as_const() {
        if k > n {
            return Err(format!("attribute `k` = {k} exceeds the axis length {n}"));
        }
    }
    let mut dims = x.shape.0.clone();
    dims[axis] = Dim::c(k);
    Ok(vec![
        TensorType::new(x.dtype.compute_type(), Shape(dims.clone())),
        TensorType::new(DType::I64, Shape(dims)),
    ])
}

/// Reference semantics of `top_k`: sorted by value (descending when `largest`), ties to
/// the lower index; NaN counts as the largest value.
pub fn eval_top_k(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let x = arg(i, 0, "x")?;
    if x.dtype == DType::Bool {
        return Err("operand x must be numeric, got bool".into());
    }
    let axis = axis_in(opt_int(a, "axis")?.unwrap_or(-1), x.shape.len(), "axis")?;
    let k = req_int(a, "k")?;
    let largest = opt_bool(a, "largest", true)?;
    let (outer, n, inner) = super::util::around(&x.shape, axis);
    if k < 0 || k as usize > n {
        return Err(format!("k = {k} does not fit the axis length {n}"));
    }
    let k = k as usize;
    let vals = x.to_f64();
    let key = |v: f64| if v.is_nan() { f64::INFINITY } else { v };
    let mut picks = Vec::with_capacity(outer * k * inner);
    let mut idx = Vec::with_capacity(outer * k * inner);
    let mut out_pos = vec![0usize; outer * k * inner];
    for o in 0..outer {
        for c in 0..inner {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&p, &q| {
                let (vp, vq) = (
                    key(vals[(o * n + p) * inner + c]),
                    key(vals[(o * n + q) * inner + c]),
                );
                let ord = if largest {
                    vq.total_cmp(&vp)
                } else {
                    vp.total_cmp(&vq)
                };
                ord.then(p.cmp(&q))
            });
            for (j, &p) in order.iter().take(k).enumerate() {
                out_pos[(o * k + j) * inner + c] = (o * n + p) * inner + c;
            }
        }
    }
    for &src in &out_pos {
        picks.push(src);
        idx.push(((src / inner.max(1)) % n.max(1)) as i64);
    }
    let mut shape = x.shape.clone();
    shape[axis] = k;
    Ok(vec![
        super::util::pick(x, shape.clone(), &picks),
        Tensor::from_i64(DType::I64, shape, idx),
    ])
}
