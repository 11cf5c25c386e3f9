//! Layout and indexing ops: constant, reshape, transpose, concat, split, slice, gather,
//! gather_elements, expand, squeeze, unsqueeze, tile, trilu, pad. ONNX semantics. Shape
//! rules work on symbolic dims (a KV-cache concat gives `past + seq`, a head reshape
//! `batch*seq`); the reference semantics move elements by flat index and never change
//! values, so every dtype (float, integer, bool) goes through the same code.

use super::util::{
    arg, around, axes_in, axis_in, checked_numel, eval_shape, for_each_coord, need_int, opt_float,
    opt_int, opt_ints, pick, pick_or, req_int, req_ints, req_shape, targ, R, T,
};
use crate::attr::Attr;
use crate::interp::EvalCtx;
use crate::tensor::{broadcast_index, broadcast_shapes, strides, Data};
use crate::{Attrs, DType, Dim, Shape, Tensor, TensorType};

// ----- constant -----

/// Shape rule of `constant`: the type of its `value`.
pub fn infer_constant(_: &[&TensorType], a: &Attrs) -> T {
    let t = match a.get("value") {
        Some(Attr::Tensor(t)) => t,
        Some(other) => return Err(format!("attribute `value` must be a tensor, got {other:?}")),
        None => return Err("missing attribute `value`".into()),
    };
    let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Ok(vec![TensorType::new(t.dtype, Shape::of(&dims))])
}

/// Reference semantics of `constant`.
pub fn eval_constant(_: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    match a.get("value") {
        Some(Attr::Tensor(t)) => Ok(vec![t.clone()]),
        Some(other) => Err(format!("attribute `value` must be a tensor, got {other:?}")),
        None => Err("missing attribute `value`".into()),
    }
}

// ----- reshape -----

/// Shape rule of `reshape`: element counts must agree as polynomials.
pub fn infer_reshape(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    let shape = req_shape(a, "shape")?;
    if let Some(d) = shape.0.iter().find(|d| d.as_const().is_some_and(|v| v < 0)) {
        return Err(format!("attribute `shape` {shape} has negative dim {d}"));
    }
    let (from, to) = (x.shape.numel(), shape.numel());
    if from != to {
        return Err(format!(
            "cannot reshape x {} ({from} elements) to `shape` {shape} ({to} elements)",
            x.shape
        ));
    }
    Ok(vec![TensorType::new(x.dtype.compute_type(), shape.clone())])
}

/// Reference semantics of `reshape` (symbolic dims take this run's values).
pub fn eval_reshape(i: &[&Tensor], a: &Attrs, ctx: &mut EvalCtx) -> R {
    let x = arg(i, 0, "x")?;
    let shape = eval_shape(req_shape(a, "shape")?, ctx, "attribute `shape`")?;
    let n: usize = shape.iter().product();
    if n != x.numel() {
        return Err(format!(
            "cannot reshape x {:?} ({} elements) to {shape:?} ({n} elements)",
            x.shape,
            x.numel()
        ));
    }
    Ok(vec![x.clone().reshaped(shape)])
}

// ----- transpose -----

fn perm_of(a: &Attrs, rank: usize) -> Result<Vec<usize>, String> {
    let p = req_ints(a, "perm")?;
    let mut seen = vec![false; rank];
    let mut out = Vec::with_capacity(rank);
    for &v in p {
        match usize::try_from(v).ok().filter(|&u| u < rank) {
            Some(u) if !seen[u] => {
                seen[u] = true;
                out.push(u);
            }
            _ => break,
        }
    }
    if out.len() != rank || p.len() != rank {
        return Err(format!(
            "attribute `perm` {p:?} is not a permutation of 0..{rank}"
        ));
    }
    Ok(out)
}

/// Shape rule of `transpose`: output dim i = input dim perm[i].
pub fn infer_transpose(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    let perm = perm_of(a, x.shape.rank())?;
    let dims = perm.iter().map(|&p| x.shape.0[p].clone()).collect();
    Ok(vec![TensorType::new(x.dtype.compute_type(), Shape(dims))])
}

/// Reference semantics of `transpose`.
pub fn eval_transpose(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let x = arg(i, 0, "x")?;
    let perm = perm_of(a, x.shape.len())?;
    let st = x.strides();
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let pst: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    let mut idx = Vec::with_capacity(x.numel());
    for_each_coord(&shape, |c| {
        idx.push(c.iter().zip(&pst).map(|(c, s)| c * s).sum());
    });
    Ok(vec![pick(x, shape, &idx)])
}

// ----- concat / split -----

/// Shape rule of `concat`: other dims equal, the axis dims added.
pub fn infer_concat(i: &[&TensorType], a: &Attrs) -> T {
    let first = targ(i, 0, "first operand")?;
    let rank = first.shape.rank();
    let axis = axis_in(req_int(a, "axis")?, rank, "axis")?;
    let dtype = first.dtype.compute_type();
    let mut total = Dim::c(0);
    for (k, t) in i.iter().enumerate() {
        if t.dtype.compute_type() != dtype {
            return Err(format!(
                "operand {k} is {}, operand 0 is {}",
                t.dtype, first.dtype
            ));
        }
        if t.shape.rank() != rank {
            return Err(format!(
                "operand {k} has shape {}, operand 0 has rank {rank} {}",
                t.shape, first.shape
            ));
        }
        for d in 0..rank {
            if d != axis && t.shape.0[d] != first.shape.0[d] {
                return Err(format!(
                    "operand {k} has shape {}, operand 0 has {}: dim {d} differs",
                    t.shape, first.shape
                ));
            }
        }
        total = total.add(&t.shape.0[axis]);
    }
    let mut dims = first.shape.0.clone();
    dims[axis] = total;
    Ok(vec![TensorType::new(dtype, Shape(dims))])
}

/// Concatenates concrete tensors along `axis` (shared with `kv_append`).
pub(crate) fn concat_tensors(ts: &[&Tensor], axis: usize) -> Result<Tensor, String> {
    let first = ts.first().ok_or("concat of no operands")?;
    let rank = first.shape.len();
    if axis >= rank {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    for (k, t) in ts.iter().enumerate() {
        let same_rest =
            t.shape.len() == rank && (0..rank).all(|d| d == axis || t.shape[d] == first.shape[d]);
        if !same_rest {
            return Err(format!(
                "operand {k} has shape {:?}, operand 0 has {:?}: only dim {axis} may differ",
                t.shape, first.shape
            ));
        }
        if std::mem::discriminant(&t.data) != std::mem::discriminant(&first.data) {
            return Err(format!(
                "operand {k} is {}, operand 0 is {}",
                t.dtype, first.dtype
            ));
        }
    }
    let mut shape = first.shape.clone();
    shape[axis] = ts.iter().map(|t| t.shape[axis]).sum();
    checked_numel(&shape)?;
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let data = match &first.data {
        Data::F(_) => {
            let mut v = Vec::with_capacity(shape.iter().product());
            for o in 0..outer {
                for t in ts {
                    if let Data::F(src) = &t.data {
                        let chunk = t.shape[axis] * inner;
                        v.extend_from_slice(&src[o * chunk..][..chunk]);
                    }
                }
            }
            Data::F(v)
        }
        Data::I(_) => {
            let mut v = Vec::with_capacity(shape.iter().product());
            for o in 0..outer {
                for t in ts {
                    if let Data::I(src) = &t.data {
                        let chunk = t.shape[axis] * inner;
                        v.extend_from_slice(&src[o * chunk..][..chunk]);
                    }
                }
            }
            Data::I(v)
        }
    };
    Ok(Tensor {
        dtype: first.dtype,
        shape,
        data,
    })
}

/// Reference semantics of `concat`.
pub fn eval_concat(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let first = arg(i, 0, "first operand")?;
    let axis = axis_in(req_int(a, "axis")?, first.shape.len(), "axis")?;
    Ok(vec![concat_tensors(i, axis)?])
}

fn split_sizes(a: &Attrs) -> Result<Vec<usize>, String> {
    let sizes = req_ints(a, "sizes")?;
    if sizes.is_empty() {
        return Err("attribute `sizes` is empty: split needs at least one piece".into());
    }
    sizes
        .iter()
        .map(|&s| {
            usize::try_from(s)
                .map_err(|_| format!("attribute `sizes` {sizes:?} has a negative size {s}"))
        })
        .collect()
}

/// Shape rule of `split`: one result per entry of `sizes`, which must add up to the dim.
pub fn infer_split(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    let axis = axis_in(req_int(a, "axis")?, x.shape.rank(), "axis")?;
    let sizes = split_sizes(a)?;
    let total: usize = sizes.iter().sum();
    let d = &x.shape.0[axis];
    if *d != Dim::c(total as i64) {
        return Err(format!(
            "attribute `sizes` {sizes:?} adds up to {total}, but x {} has {d} on axis {axis}",
            x.shape
        ));
    }
    Ok(sizes
        .iter()
        .map(|&s| {
            let mut dims = x.shape.0.clone();
            dims[axis] = Dim::c(s as i64);
            TensorType::new(x.dtype.compute_type(), Shape(dims))
        })
        .collect())
}

/// Reference semantics of `split`.
pub fn eval_split(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let x = arg(i, 0, "x")?;
    let axis = axis_in(req_int(a, "axis")?, x.shape.len(), "axis")?;
    let sizes = split_sizes(a)?;
    let total: usize = sizes.iter().sum();
    let (outer, n, inner) = around(&x.shape, axis);
    if total != n {
        return Err(format!(
            "attribute `sizes` {sizes:?} adds up to {total}, but x {:?} has {n} on axis {axis}",
            x.shape
        ));
    }
    let mut outs = Vec::with_capacity(sizes.len());
    let mut start = 0;
    for &s in &sizes {
        let mut idx = Vec::with_capacity(outer * s * inner);
        for o in 0..outer {
            let base = (o * n + start) * inner;
            idx.extend(base..base + s * inner);
        }
        let mut shape = x.shape.clone();
        shape[axis] = s;
        outs.push(pick(x, shape, &idx));
        start += s;
    }
    Ok(outs)
}

// ----- slice -----

/// Ends at or beyond this mean "to the end of the axis" (exporters write i64::MAX).
const TO_END: i64 = i64::MAX / 2;

/// The slice parameters per listed axis: (axis, start, end, step).
fn slice_params(a: &Attrs, rank: usize) -> Result<Vec<(usize, i64, i64, i64)>, String> {
    let starts = req_ints(a, "starts")?;
    let ends = req_ints(a, "ends")?;
    if starts.len() != ends.len() {
        return Err(format!(
            "attributes `starts` {starts:?} and `ends` {ends:?} differ in length"
        ));
    }
    let axes: Vec<usize> = match opt_ints(a, "axes")? {
        Some(ax) => {
            if ax.len() != starts.len() {
                return Err(format!(
                    "attribute `axes` {ax:?} has {} entries, `starts` has {}",
                    ax.len(),
                    starts.len()
                ));
            }
            axes_in(ax, rank, "axes")?
        }
        None => {
            if starts.len() > rank {
                return Err(format!(
                    "attribute `starts` has {} entries, more than x's rank {rank}",
                    starts.len()
                ));
            }
            (0..starts.len()).collect()
        }
    };
    let steps: Vec<i64> = match opt_ints(a, "steps")? {
        Some(s) => {
            if s.len() != starts.len() {
                return Err(format!(
                    "attribute `steps` {s:?} has {} entries, `starts` has {}",
                    s.len(),
                    starts.len()
                ));
            }
            if s.contains(&0) {
                return Err(format!("attribute `steps` {s:?} has a zero step"));
            }
            s.to_vec()
        }
        None => vec![1; starts.len()],
    };
    Ok((0..starts.len())
        .map(|k| (axes[k], starts[k], ends[k], steps[k]))
        .collect())
}

/// ONNX Slice on a concrete dim: (first index, count). Computed in i128 so extreme
/// attribute values (i64::MIN steps, i64::MAX ends) cannot overflow.
fn slice_dim(d: i64, start: i64, end: i64, step: i64) -> (i64, i64) {
    let (d, step) = (d as i128, step as i128);
    let adj = |v: i64| if v < 0 { v as i128 + d } else { v as i128 };
    let (s, e) = (adj(start), adj(end));
    let (first, n) = if step > 0 {
        let s = s.clamp(0, d);
        let e = e.clamp(0, d);
        (s, if e > s { (e - s + step - 1) / step } else { 0 })
    } else if d == 0 {
        (0, 0)
    } else {
        let s = s.clamp(0, d - 1);
        let e = e.clamp(-1, d - 1);
        (
            s,
            if s > e {
                (s - e - step - 1) / (-step)
            } else {
                0
            },
        )
    };
    (first as i64, n as i64)
}

/// Shape rule of `slice` (symbolic dims: the cases whose length is a dim expression).
pub fn infer_slice(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    let mut dims = x.shape.0.clone();
    for (axis, start, end, step) in slice_params(a, x.shape.rank())? {
        let d = &dims[axis];
        dims[axis] = if let Some(dv) = d.as_const() {
            Dim::c(slice_dim(dv, start, end, step).1)
        } else if step != 1 {
            return Err(format!(
                "cannot slice symbolic dim {d} (axis {axis}) with step {step}"
            ));
        } else if start >= 0 && end >= TO_END {
            d.sub(&Dim::c(start))
        } else if start < 0 && end >= TO_END {
            Dim::c(start.saturating_neg())
        } else if start <= end && (start >= 0 || end < 0) {
            Dim::c(end - start)
        } else {
            return Err(format!(
                "cannot compute the length of slice [{start}:{end}] of symbolic dim {d} (axis {axis})"
            ));
        };
    }
    Ok(vec![TensorType::new(x.dtype.compute_type(), Shape(dims))])
}

/// Reference semantics of `slice` (ONNX clamping, negative indices and steps).
pub fn eval_slice(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let x = arg(i, 0, "x")?;
    let rank = x.shape.len();
    let mut first = vec![0i64; rank];
    let mut step = vec![1i64; rank];
    let mut shape = x.shape.clone();
    for (axis, s, e, st) in slice_params(a, rank)? {
        let (f, n) = slice_dim(x.shape[axis] as i64, s, e, st);
        first[axis] = f;
        step[axis] = st;
        shape[axis] = n as usize;
    }
    let xs = x.strides();
    let mut idx = Vec::with_capacity(shape.iter().product());
    for_each_coord(&shape, |c| {
        let mut j = 0i64;
        for d in 0..rank {
            j += (first[d] + c[d] as i64 * step[d]) * xs[d] as i64;
        }
        idx.push(j as usize);
    });
    Ok(vec![pick(x, shape, &idx)])
}

// ----- gather -----

/// Shape rule of `gather`: table[:axis] + indices + table[axis+1:]; a quantized table
/// gives f32 rows.
pub fn infer_gather(i: &[&TensorType], a: &Attrs) -> T {
    let (t, ix) = (targ(i, 0, "table")?, targ(i, 1, "indices")?);
    need_int(ix, "operand indices")?;
    let axis = axis_in(opt_int(a, "axis")?.unwrap_or(0), t.shape.rank(), "axis")?;
    let mut dims = t.shape.0[..axis].to_vec();
    dims.extend(ix.shape.0.iter().cloned());
    dims.extend(t.shape.0[axis + 1..].iter().cloned());
    Ok(vec![TensorType::new(t.dtype.compute_type(), Shape(dims))])
}

/// Resolves an index (negative wraps) against an axis of `n`, or names it.
fn resolve_index(v: i64, n: usize, axis: usize) -> Result<usize, String> {
    let r = if v < 0 { v + n as i64 } else { v };
    if r < 0 || r >= n as i64 {
        return Err(format!(
            "index {v} is out of range for axis {axis} of size {n}"
        ));
    }
    Ok(r as usize)
}

/// Reference semantics of `gather`.
pub fn eval_gather(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let (t, ix) = (arg(i, 0, "table")?, arg(i, 1, "indices")?);
    let Data::I(ids) = &ix.data else {
        return Err(format!(
            "operand indices must be an integer tensor, got {}",
            ix.dtype
        ));
    };
    let axis = axis_in(opt_int(a, "axis")?.unwrap_or(0), t.shape.len(), "axis")?;
    let (outer, n, inner) = around(&t.shape, axis);
    let rows: Vec<usize> = ids
        .iter()
        .map(|&v| resolve_index(v, n, axis))
        .collect::<Result<_, _>>()?;
    let mut shape = t.shape[..axis].to_vec();
    shape.extend_from_slice(&ix.shape);
    shape.extend_from_slice(&t.shape[axis + 1..]);
    let mut idx = Vec::with_capacity(checked_numel(&shape)?);
    for o in 0..outer {
        for &r in &rows {
            let base = (o * n + r) * inner;
            idx.extend(base..base + inner);
        }
    }
    Ok(vec![pick(t, shape, &idx)])
}

/// Shape rule of `gather_elements`: the indices' shape, the data's dtype.
pub fn infer_gather_elements(i: &[&TensorType], a: &Attrs) -> T {
    let (x, ix) = (targ(i, 0, "data")?, targ(i, 1, "indices")?);
    need_int(ix, "operand indices")?;
    if x.shape.rank() != ix.shape.rank() {
        return Err(format!(
            "indices {} and data {} must have the same rank",
            ix.shape, x.shape
        ));
    }
    axis_in(req_int(a, "axis")?, x.shape.rank(), "axis")?;
    Ok(vec![TensorType::new(
        x.dtype.compute_type(),
        ix.shape.clone(),
    )])
}

/// Reference semantics of `gather_elements`.
pub fn eval_gather_elements(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let (x, ix) = (arg(i, 0, "data")?, arg(i, 1, "indices")?);
    let Data::I(ids) = &ix.data else {
        return Err(format!(
            "operand indices must be an integer tensor, got {}",
            ix.dtype
        ));
    };
    let rank = x.shape.len();
    if ix.shape.len() != rank {
        return Err(format!(
            "indices {:?} and data {:?} must have the same rank",
            ix.shape, x.shape
        ));
    }
    let axis = axis_in(req_int(a, "axis")?, rank, "axis")?;
    if let Some(d) = (0..rank).find(|&d| d != axis && ix.shape[d] > x.shape[d]) {
        return Err(format!(
            "indices {:?} exceed data {:?} on dim {d}",
            ix.shape, x.shape
        ));
    }
    let xs = x.strides();
    let mut idx = Vec::with_capacity(ix.numel());
    let mut flat = 0usize;
    let mut err = None;
    for_each_coord(&ix.shape, |c| {
        let mut j = 0usize;
        for d in 0..rank {
            let cd = if d == axis {
                match resolve_index(ids[flat], x.shape[axis], axis) {
                    Ok(v) => v,
                    Err(e) => {
                        err.get_or_insert(e);
                        0
                    }
                }
            } else {
                c[d]
            };
            j += cd * xs[d];
        }
        flat += 1;
        idx.push(j);
    });
    if let Some(e) = err {
        return Err(e);
    }
    Ok(vec![pick(x, ix.shape.clone(), &idx)])
}

// ----- expand / squeeze / unsqueeze / tile -----

/// Shape rule of `expand`: numpy broadcast of x's shape and `shape` (both ways).
pub fn infer_expand(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    let shape = req_shape(a, "shape")?;
    let out = x.shape.broadcast(shape).ok_or_else(|| {
        format!(
            "x {} does not broadcast with attribute `shape` {shape}",
            x.shape
        )
    })?;
    Ok(vec![TensorType::new(x.dtype.compute_type(), out)])
}

/// Reference semantics of `expand`.
pub fn eval_expand(i: &[&Tensor], a: &Attrs, ctx: &mut EvalCtx) -> R {
    let x = arg(i, 0, "x")?;
    let target = eval_shape(req_shape(a, "shape")?, ctx, "attribute `shape`")?;
    let shape = broadcast_shapes(&x.shape, &target).ok_or_else(|| {
        format!(
            "x {:?} does not broadcast with attribute `shape` {target:?}",
            x.shape
        )
    })?;
    let n = checked_numel(&shape)?;
    let idx: Vec<usize> = (0..n)
        .map(|k| broadcast_index(k, &shape, &x.shape))
        .collect();
    Ok(vec![pick(x, shape, &idx)])
}

/// Axes `squeeze` removes: the listed ones, or every constant 1 when the list is empty.
fn squeeze_axes(a: &Attrs, dims: &[Dim]) -> Result<Vec<usize>, String> {
    let axes = req_ints(a, "axes")?;
    if axes.is_empty() {
        return Ok((0..dims.len()).filter(|&d| dims[d] == Dim::c(1)).collect());
    }
    let out = axes_in(axes, dims.len(), "axes")?;
    for &d in &out {
        if dims[d] != Dim::c(1) {
            return Err(format!(
                "attribute `axes` names axis {d}, whose dim is {}, not 1",
                dims[d]
            ));
        }
    }
    Ok(out)
}

/// Shape rule of `squeeze`.
pub fn infer_squeeze(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    let axes = squeeze_axes(a, &x.shape.0)?;
    let dims = (0..x.shape.rank())
        .filter(|d| !axes.contains(d))
        .map(|d| x.shape.0[d].clone())
        .collect();
    Ok(vec![TensorType::new(x.dtype.compute_type(), Shape(dims))])
}

/// Reference semantics of `squeeze`.
pub fn eval_squeeze(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let x = arg(i, 0, "x")?;
    let dims: Vec<Dim> = x.shape.iter().map(|&d| Dim::c(d as i64)).collect();
    let axes = squeeze_axes(a, &dims)?;
    let shape = (0..x.shape.len())
        .filter(|d| !axes.contains(d))
        .map(|d| x.shape[d])
        .collect();
    Ok(vec![x.clone().reshaped(shape)])
}

/// Output dims of `unsqueeze`: a 1 at each listed output position.
fn unsqueeze_dims<D: Clone>(a: &Attrs, dims: &[D], one: D) -> Result<Vec<D>, String> {
    let axes = req_ints(a, "axes")?;
    let out_rank = dims.len() + axes.len();
    let at = axes_in(axes, out_rank, "axes")?;
    let mut src = dims.iter();
    Ok((0..out_rank)
        .map(|d| {
            if at.contains(&d) {
                one.clone()
            } else {
                src.next().cloned().unwrap_or_else(|| one.clone())
            }
        })
        .collect())
}

/// Shape rule of `unsqueeze` (opset 13: `axes` are positions in the output).
pub fn infer_unsqueeze(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    let dims = unsqueeze_dims(a, &x.shape.0, Dim::c(1))?;
    Ok(vec![TensorType::new(x.dtype.compute_type(), Shape(dims))])
}

/// Reference semantics of `unsqueeze`.
pub fn eval_unsqueeze(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let x = arg(i, 0, "x")?;
    let shape = unsqueeze_dims(a, &x.shape, 1usize)?;
    Ok(vec![x.clone().reshaped(shape)])
}

fn repeats_of(a: &Attrs, rank: usize) -> Result<Vec<usize>, String> {
    let r = req_ints(a, "repeats")?;
    if r.len() != rank {
        return Err(format!(
            "attribute `repeats` {r:?} has {} entries, x has rank {rank}",
            r.len()
        ));
    }
    r.iter()
        .map(|&v| {
            usize::try_from(v)
                .map_err(|_| format!("attribute `repeats` {r:?} has a negative count {v}"))
        })
        .collect()
}

/// Shape rule of `tile`: each dim times its repeat count.
pub fn infer_tile(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    let reps = repeats_of(a, x.shape.rank())?;
    let dims = x
        .shape
        .0
        .iter()
        .zip(&reps)
        .map(|(d, &r)| d.mul(&Dim::c(r as i64)))
        .collect();
    Ok(vec![TensorType::new(x.dtype.compute_type(), Shape(dims))])
}

/// Reference semantics of `tile`.
pub fn eval_tile(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let x = arg(i, 0, "x")?;
    let reps = repeats_of(a, x.shape.len())?;
    let shape: Vec<usize> = x
        .shape
        .iter()
        .zip(&reps)
        .map(|(&d, &r)| d.checked_mul(r).ok_or("tiled shape overflows"))
        .collect::<Result<_, _>>()?;
    let xs = x.strides();
    let mut idx = Vec::with_capacity(checked_numel(&shape)?);
    for_each_coord(&shape, |c| {
        idx.push((0..c.len()).map(|d| (c[d] % x.shape[d]) * xs[d]).sum());
    });
    Ok(vec![pick(x, shape, &idx)])
}

// ----- trilu / pad -----

/// Shape rule of `trilu`: same type, rank >= 2.
pub fn infer_trilu(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    if x.shape.rank() < 2 {
        return Err(format!(
            "operand x must have rank >= 2, got shape {}",
            x.shape
        ));
    }
    super::util::opt_bool(a, "upper", true)?;
    opt_int(a, "k")?;
    Ok(vec![TensorType::new(
        x.dtype.compute_type(),
        x.shape.clone(),
    )])
}

/// Reference semantics of `trilu`: keep j >= i + k (upper) or j <= i + k (lower) on the
/// last two axes, zero elsewhere.
pub fn eval_trilu(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let x = arg(i, 0, "x")?;
    let rank = x.shape.len();
    if rank < 2 {
        return Err(format!(
            "operand x must have rank >= 2, got shape {:?}",
            x.shape
        ));
    }
    let upper = match a.get("upper") {
        Some(Attr::Bool(b)) => *b,
        Some(other) => return Err(format!("attribute `upper` must be a bool, got {other:?}")),
        None => return Err("missing attribute `upper`".into()),
    };
    let k = opt_int(a, "k")?.unwrap_or(0);
    let (rows, cols) = (x.shape[rank - 2], x.shape[rank - 1]);
    let n = x.numel();
    let idx: Vec<Option<usize>> = (0..n)
        .map(|f| {
            let (r, c) = ((f / cols.max(1)) % rows.max(1), f % cols.max(1));
            let diff = c as i64 - r as i64;
            let keep = if upper { diff >= k } else { diff <= k };
            keep.then_some(f)
        })
        .collect();
    Ok(vec![pick_or(x, x.shape.clone(), &idx, 0.0)])
}

fn pads_of(a: &Attrs, rank: usize) -> Result<&[i64], String> {
    let p = req_ints(a, "pads")?;
    if p.len() != 2 * rank {
        return Err(format!(
            "attribute `pads` {p:?} has {} entries, x of rank {rank} needs {}",
            p.len(),
            2 * rank
        ));
    }
    Ok(p)
}

/// Shape rule of `pad`: dim + begin + end per axis.
pub fn infer_pad(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    let r = x.shape.rank();
    let p = pads_of(a, r)?;
    opt_float(a, "value")?;
    let mut dims = Vec::with_capacity(r);
    for (d, dim) in x.shape.0.iter().enumerate() {
        let nd = dim.add(&Dim::c(p[d])).add(&Dim::c(p[d + r]));
        if nd.as_const().is_some_and(|v| v < 0) {
            return Err(format!(
                "attribute `pads` {p:?} crops axis {d} (dim {dim}) below zero"
            ));
        }
        dims.push(nd);
    }
    Ok(vec![TensorType::new(x.dtype.compute_type(), Shape(dims))])
}

/// Reference semantics of `pad` (constant mode; negative pads crop).
pub fn eval_pad(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let x = arg(i, 0, "x")?;
    let r = x.shape.len();
    let p = pads_of(a, r)?;
    let value = opt_float(a, "value")?.unwrap_or(0.0);
    let mut shape = Vec::with_capacity(r);
    for d in 0..r {
        let nd = (x.shape[d] as i64)
            .checked_add(p[d])
            .and_then(|v| v.checked_add(p[d + r]))
            .filter(|&v| v >= 0)
            .ok_or_else(|| {
                format!(
                    "attribute `pads` {p:?} crops axis {d} (dim {}) below zero",
                    x.shape[d]
                )
            })?;
        shape.push(nd as usize);
    }
    let xs = strides(&x.shape);
    let mut idx = Vec::with_capacity(checked_numel(&shape)?);
    for_each_coord(&shape, |c| {
        let mut j = 0usize;
        let mut inside = true;
        for d in 0..r {
            let s = c[d] as i64 - p[d];
            if s < 0 || s >= x.shape[d] as i64 {
                inside = false;
                break;
            }
            j += s as usize * xs[d];
        }
        idx.push(inside.then_some(j));
    });
    if x.dtype == DType::Bool && value != 0.0 && value != 1.0 {
        return Err(format!("attribute `value` {value} is not a bool (0 or 1)"));
    }
    Ok(vec![pick_or(x, shape, &idx, value)])
}
