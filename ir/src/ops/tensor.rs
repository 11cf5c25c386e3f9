//! Layout and indexing ops: constant, reshape, transpose, concat, split, slice, gather,
//! gather_elements, expand, squeeze, unsqueeze, tile, trilu, pad. ONNX semantics. Shape
//! rules work on symbolic dims (a KV-cache concat gives `past + seq`, a head reshape
//! `batch*seq`); the reference semantics move elements by flat index and never change
//! values, so every dtype (float, integer, bool) goes through the same code.

use super::util::{
    arg, around, axes_in, axis_in, checked_numel, eval_shape, for_each_coord, need_int, opt_float,
    opt_int, opt_ints, overflow, pick, pick_or, req_int, req_ints, req_shape, targ, R, T,
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

// ----- dims -----

/// Shape rule of `dims`: an i64 vector with one element per dim of `value`.
pub fn infer_dims(_: &[&TensorType], a: &Attrs) -> T {
    let v = req_shape(a, "value")?;
    Ok(vec![TensorType::new(
        DType::I64,
        Shape::of(&[v.rank() as i64]),
    )])
}

/// Reference semantics of `dims`: the dims evaluated with this run's symbol values.
pub fn eval_dims(_: &[&Tensor], a: &Attrs, ctx: &mut EvalCtx) -> R {
    let v = req_shape(a, "value")?;
    let vals =
        v.0.iter()
            .map(|d| ctx.dim(d))
            .collect::<Result<Vec<i64>, String>>()?;
    Ok(vec![Tensor::from_i64(DType::I64, vec![vals.len()], vals)])
}

// ----- reshape -----

/// Shape rule of `reshape`: element counts must agree as polynomials.
pub fn infer_reshape(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    let shape = req_shape(a, "shape")?;
    if let Some(d) = shape.0.iter().find(|d| d.as_const().is_some_and(|v| v < 0)) {
        return Err(format!("attribute `shape` {shape} has negative dim {d}"));
    }
    let (from, to) = match (x.shape.checked_numel(), shape.checked_numel()) {
        (Some(f), Some(t)) => (f, t),
        _ => return Err(overflow("element counts of x and `shape`")),
    };
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
        total = total
            .checked_add(&t.shape.0[axis])
            .ok_or_else(|| overflow("concatenated axis"))?;
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

/// The pieces of `split` and their total.
fn split_sizes(a: &Attrs) -> Result<(Vec<usize>, usize), String> {
    let sizes = req_ints(a, "sizes")?;
    if sizes.is_empty() {
        return Err("attribute `sizes` is empty: split needs at least one piece".into());
    }
    let mut total = 0i64;
    for &s in sizes {
        if s < 0 {
            return Err(format!(
                "attribute `sizes` {sizes:?} has a negative size {s}"
            ));
        }
        total = total
            .checked_add(s)
            .ok_or_else(|| format!("attribute `sizes` {sizes:?} overflows"))?;
    }
    Ok((sizes.iter().map(|&s| s as usize).collect(), total as usize))
}

/// Shape rule of `split`: one result per entry of `sizes`, which must add up to the dim.
pub fn infer_split(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    let axis = axis_in(req_int(a, "axis")?, x.shape.rank(), "axis")?;
    let (sizes, total) = split_sizes(a)?;
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
    let (sizes, total) = split_sizes(a)?;
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
    // A negative dim never reaches here from a verified module; treat it as empty
    // rather than letting `clamp` panic on an inverted range.
    let (d, step) = ((d.max(0)) as i128, step as i128);
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
            d.checked_sub(&Dim::c(start))
                .ok_or_else(|| overflow("attribute `starts`"))?
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
        .map(|(d, &r)| {
            i64::try_from(r)
                .ok()
                .and_then(|r| d.checked_mul(&Dim::c(r)))
                .ok_or_else(|| overflow("attribute `repeats`"))
        })
        .collect::<Result<_, _>>()?;
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
        let nd = dim
            .checked_add(&Dim::c(p[d]))
            .and_then(|v| v.checked_add(&Dim::c(p[d + r])))
            .ok_or_else(|| overflow("attribute `pads`"))?;
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

#[cfg(test)]
mod tests {
    use crate::interp::{EvalCtx, Interpreter};
    use crate::module::WeightData;
    use crate::ops::util::testing::*;
    use crate::{attrs, Attr, DType, Dim, Module, Op, Shape};
    use std::sync::Arc;

    fn sym_shape(dims: &[&str]) -> Attr {
        Attr::Shape(Shape(dims.iter().map(|d| dim(d)).collect()))
    }

    fn slice_attrs(starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> crate::Attrs {
        attrs([
            ("starts", Attr::Ints(starts.to_vec())),
            ("ends", Attr::Ints(ends.to_vec())),
            ("axes", Attr::Ints(axes.to_vec())),
            ("steps", Attr::Ints(steps.to_vec())),
        ])
    }

    #[test]
    fn slice_with_negative_steps() {
        let x = ti(&[10], &(0..10).collect::<Vec<_>>());
        let s = |st, en, sp| ev1(Op::Slice, &[&x], slice_attrs(&[st], &[en], &[0], &[sp])).to_i64();
        assert_eq!(s(-2, -9, -3), vec![8, 5, 2]);
        assert_eq!(s(-1, i64::MIN, -1), (0..10).rev().collect::<Vec<_>>());
        assert_eq!(s(100, 5, -2), vec![9, 7]);
        assert_eq!(s(3, 7, -1), Vec::<i64>::new());
        assert_eq!(s(i64::MAX, i64::MIN, i64::MIN), vec![9]);
        assert_eq!(s(1, i64::MAX, 4), vec![1, 5, 9]);
        // Two axes at once on a [3, 4] matrix: rows reversed, every other column.
        let m = ti(&[3, 4], &(0..12).collect::<Vec<_>>());
        let out = ev1(
            Op::Slice,
            &[&m],
            slice_attrs(&[-1, 0], &[-100, 100], &[0, -1], &[-1, 2]),
        );
        assert_eq!(out.shape, vec![3, 2]);
        assert_eq!(out.to_i64(), vec![8, 10, 4, 6, 0, 2]);
        let e = ev(Op::Slice, &[&x], slice_attrs(&[0], &[1], &[0], &[0])).unwrap_err();
        assert!(e.contains("zero step"), "{e}");
    }

    #[test]
    fn symbolic_slice_inference() {
        let x = tt(DType::F32, &["batch", "seq", "64"]);
        let r = |st: i64, en: i64| {
            inf(Op::Slice, &[&x], slice_attrs(&[st], &[en], &[1], &[1])).map(|t| t[0].to_string())
        };
        assert_eq!(r(1, i64::MAX).unwrap(), "f32[batch, seq - 1, 64]");
        assert_eq!(r(-1, i64::MAX).unwrap(), "f32[batch, 1, 64]");
        assert_eq!(r(2, 5).unwrap(), "f32[batch, 3, 64]");
        assert_eq!(r(-3, -1).unwrap(), "f32[batch, 2, 64]");
        let e = r(-2, 4).unwrap_err();
        assert!(e.contains("symbolic dim seq"), "{e}");
        let e = inf(Op::Slice, &[&x], slice_attrs(&[0], &[i64::MAX], &[1], &[2])).unwrap_err();
        assert!(e.contains("with step 2"), "{e}");
        // A constant dim uses the exact ONNX rule.
        let t = inf(
            Op::Slice,
            &[&x],
            slice_attrs(&[-1], &[i64::MIN], &[2], &[-3]),
        )
        .unwrap();
        assert_eq!(t[0].to_string(), "f32[batch, seq, 22]");
    }

    #[test]
    fn symbolic_reshape_and_concat_inference() {
        let x = tt(DType::F32, &["batch", "seq", "576"]);
        let r = |dims: &[&str]| {
            inf(Op::Reshape, &[&x], attrs([("shape", sym_shape(dims))])).map(|t| t[0].to_string())
        };
        assert_eq!(
            r(&["batch", "seq", "9", "64"]).unwrap(),
            "f32[batch, seq, 9, 64]"
        );
        // A product dim: the polynomial batch*seq*576 equals 576*(batch*seq).
        let flat = Shape(vec![Dim::sym("batch").mul(&Dim::sym("seq")), Dim::c(576)]);
        let t = inf(Op::Reshape, &[&x], attrs([("shape", Attr::Shape(flat))])).unwrap();
        assert_eq!(t[0].to_string(), "f32[batch*seq, 576]");
        let e = r(&["batch", "seq", "9", "60"]).unwrap_err();
        assert!(e.contains("540*batch*seq elements"), "{e}");
        let e = r(&["seq", "576"]).unwrap_err();
        assert!(e.contains("cannot reshape"), "{e}");

        let past = tt(DType::F32, &["1", "3", "past", "64"]);
        let new = tt(DType::F32, &["1", "3", "seq", "64"]);
        let t = inf(Op::Concat, &[&past, &new], attrs([("axis", Attr::Int(-2))])).unwrap();
        assert_eq!(t[0].to_string(), "f32[1, 3, past + seq, 64]");
        let e = inf(Op::Concat, &[&past, &new], attrs([("axis", Attr::Int(1))])).unwrap_err();
        assert!(e.contains("dim 2 differs"), "{e}");
    }

    #[test]
    fn reshape_eval_uses_bound_symbols() {
        let x = tf(&[2, 3, 4], &(0..24).map(|v| v as f64).collect::<Vec<_>>());
        let mut ctx = EvalCtx::default();
        ctx.syms.insert("seq".into(), 3);
        let shape = Shape(vec![Dim::sym("seq"), Dim::c(8)]);
        let a = attrs([("shape", Attr::Shape(shape))]);
        let out = Op::Reshape.eval(&[&x], &a, &mut ctx).unwrap();
        assert_eq!(out[0].shape, vec![3, 8]);
        ctx.syms.insert("seq".into(), 4);
        let e = Op::Reshape.eval(&[&x], &a, &mut ctx).unwrap_err();
        assert!(e.contains("24 elements"), "{e}");
        let e = Op::Reshape
            .eval(&[&x], &a, &mut EvalCtx::default())
            .unwrap_err();
        assert!(e.contains("no value"), "{e}");
    }

    #[test]
    fn gather_wraps_negative_and_names_bad_indices() {
        let t = tf(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let ids = ti(&[2], &[-1, 0]);
        let out = ev1(Op::Gather, &[&t, &ids], attrs([]));
        assert_eq!(out.shape, vec![2, 2]);
        assert_eq!(out.to_f64(), vec![5.0, 6.0, 1.0, 2.0]);
        let bad = ti(&[2], &[0, 3]);
        let e = ev(Op::Gather, &[&t, &bad], attrs([])).unwrap_err();
        assert!(
            e.contains("index 3 is out of range for axis 0 of size 3"),
            "{e}"
        );
        let e = ev(Op::Gather, &[&t, &ti(&[1], &[-4])], attrs([])).unwrap_err();
        assert!(e.contains("index -4"), "{e}");
        let e = inf(
            Op::Gather,
            &[&tt(DType::F32, &["3", "2"]), &tt(DType::F32, &["2"])],
            attrs([]),
        )
        .unwrap_err();
        assert!(e.contains("indices must be an integer tensor"), "{e}");
    }

    #[test]
    fn gather_from_a_quantized_table() {
        // Q8_0 table [2, 32]: row r holds d_r * q with q = i - 16.
        let q: [i8; 32] = std::array::from_fn(|i| i as i8 - 16);
        let mut bytes = q8_0_block(0.5, &q);
        bytes.extend(q8_0_block(-2.0, &q));
        let mut m = Module::new("emb");
        let ids = m.graph.add_input("ids", tt(DType::I64, &["batch", "seq"]));
        let w = m.add_weight(
            "emb",
            DType::Q8_0,
            Shape::of(&[2, 32]),
            WeightData::Owned(Arc::new(bytes)),
        );
        let y = m.add1(Op::Gather, &[w, ids], attrs([])).unwrap();
        assert_eq!(m.graph.ty(y).to_string(), "f32[batch, seq, 32]");
        m.graph.outputs.push(y);
        let out = Interpreter::new(&m).run(&[ti(&[1, 2], &[1, 0])]).unwrap();
        assert_eq!(out[0].dtype, DType::F32);
        let mut want: Vec<f64> = (0..32).map(|i| -2.0 * (i as f64 - 16.0)).collect();
        want.extend((0..32).map(|i| 0.5 * (i as f64 - 16.0)));
        assert_eq!(out[0].to_f64(), want);
    }

    #[test]
    fn layout_ops() {
        let x = ti(&[2, 3], &[0, 1, 2, 3, 4, 5]);
        let tr = ev1(
            Op::Transpose,
            &[&x],
            attrs([("perm", Attr::Ints(vec![1, 0]))]),
        );
        assert_eq!(tr.to_i64(), vec![0, 3, 1, 4, 2, 5]);
        let e = ev(
            Op::Transpose,
            &[&x],
            attrs([("perm", Attr::Ints(vec![0, 0]))]),
        )
        .unwrap_err();
        assert!(e.contains("not a permutation"), "{e}");
        // expand both ways: [2, 1, 3] with [4, 1] -> [2, 4, 3]
        let x3 = x.clone().reshaped(vec![2, 1, 3]);
        let ex = ev1(
            Op::Expand,
            &[&x3],
            attrs([("shape", sym_shape(&["4", "1"]))]),
        );
        assert_eq!(ex.shape, vec![2, 4, 3]);
        assert_eq!(&ex.to_i64()[..6], &[0, 1, 2, 0, 1, 2]);
        let u = inf(
            Op::Unsqueeze,
            &[&tt(DType::F32, &["seq", "4"])],
            attrs([("axes", Attr::Ints(vec![-1, 0]))]),
        )
        .unwrap();
        assert_eq!(u[0].to_string(), "f32[1, seq, 4, 1]");
        let e = inf(
            Op::Squeeze,
            &[&tt(DType::F32, &["1", "seq"])],
            attrs([("axes", Attr::Ints(vec![1]))]),
        )
        .unwrap_err();
        assert!(e.contains("whose dim is seq, not 1"), "{e}");
        let parts = ev(
            Op::Split,
            &[&x],
            attrs([("axis", Attr::Int(-1)), ("sizes", Attr::Ints(vec![2, 1]))]),
        )
        .unwrap();
        assert_eq!(parts[0].to_i64(), vec![0, 1, 3, 4]);
        assert_eq!(parts[1].to_i64(), vec![2, 5]);
        let e = inf(
            Op::Split,
            &[&tt(DType::F32, &["2", "3"])],
            attrs([("axis", Attr::Int(1)), ("sizes", Attr::Ints(vec![2, 2]))]),
        )
        .unwrap_err();
        assert!(e.contains("adds up to 4"), "{e}");
        let tl = ev1(
            Op::Tile,
            &[&ti(&[2], &[7, 8])],
            attrs([("repeats", Attr::Ints(vec![3]))]),
        );
        assert_eq!(tl.to_i64(), vec![7, 8, 7, 8, 7, 8]);
        let tri = ev1(
            Op::Trilu,
            &[&ti(&[2, 2], &[1, 2, 3, 4])],
            attrs([("upper", Attr::Bool(true))]),
        );
        assert_eq!(tri.to_i64(), vec![1, 2, 0, 4]);
        // pad: crop one at the start of axis 1, add two 9s at its end.
        let p = ev1(
            Op::Pad,
            &[&x],
            attrs([
                ("pads", Attr::Ints(vec![0, -1, 0, 2])),
                ("value", Attr::Float(9.0)),
            ]),
        );
        assert_eq!(p.shape, vec![2, 4]);
        assert_eq!(p.to_i64(), vec![1, 2, 9, 9, 4, 5, 9, 9]);
        let e = inf(
            Op::Pad,
            &[&tt(DType::F32, &["2"])],
            attrs([("pads", Attr::Ints(vec![-2, -1]))]),
        )
        .unwrap_err();
        assert!(e.contains("below zero"), "{e}");
        let t = inf(
            Op::Pad,
            &[&tt(DType::F32, &["seq"])],
            attrs([("pads", Attr::Ints(vec![-1, 0]))]),
        )
        .unwrap();
        assert_eq!(t[0].to_string(), "f32[seq - 1]");
    }

    #[test]
    fn bad_operands_are_errors_not_panics() {
        let x = tf(&[2], &[1.0, 2.0]);
        let e = ev(Op::Concat, &[], attrs([("axis", Attr::Int(0))])).unwrap_err();
        assert!(e.contains("at least 1 operand"), "{e}");
        let e = ev(Op::Gather, &[&x], attrs([])).unwrap_err();
        assert!(e.contains("takes 2 operand"), "{e}");
        let e = ev(Op::Transpose, &[&x], attrs([])).unwrap_err();
        assert!(e.contains("missing attribute `perm`"), "{e}");
        let e = ev(Op::Tile, &[&x], attrs([("repeats", Attr::Int(2))])).unwrap_err();
        assert!(e.contains("`repeats` must be a list of integers"), "{e}");
        let e = ev(
            Op::GatherElements,
            &[&x, &ti(&[1, 1], &[0])],
            attrs([("axis", Attr::Int(0))]),
        )
        .unwrap_err();
        assert!(e.contains("same rank"), "{e}");
    }
}
