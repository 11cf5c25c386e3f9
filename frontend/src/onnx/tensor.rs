//! Layout and indexing ops: `Reshape`, `Flatten`, `Transpose`, `Concat`, `Split`,
//! `Slice`, `Gather`, `GatherElements`, `Expand`, `Squeeze`, `Unsqueeze`, `Tile`,
//! `Trilu`, `Pad`, `DepthToSpace`, `SpaceToDepth`. Shape-like operands (a `Reshape`'s
//! shape, `Slice` bounds, axes, pads, repeats) must be known at import; they moved from
//! attributes to inputs over the opsets (Slice at 10, Pad at 11, Squeeze/Unsqueeze/Split
//! at 13, Pad axes at 18), and each converter reads whichever its opset uses.

use super::import::{NodeCtx, V};
use super::registry::Registry;
use llmc_ir::{attrs, Attr, Dim, Op, Shape};

type R = Result<Vec<V>, String>;

/// Adds this family's converters.
pub fn register(r: &mut Registry) {
    r.add("Reshape", reshape);
    r.add("Flatten", flatten);
    r.add("Transpose", transpose);
    r.add("Concat", concat);
    r.add("Split", split);
    r.add("Slice", slice);
    r.add("Gather", gather);
    r.add("GatherElements", gather_elements);
    r.add("Expand", expand);
    r.add("Squeeze", squeeze);
    r.add("Unsqueeze", unsqueeze);
    r.add("Tile", tile);
    r.add("Trilu", trilu);
    r.add("Pad", pad);
    r.add("DepthToSpace", depth_to_space);
    r.add("SpaceToDepth", space_to_depth);
    r.add("ScatterElements", scatter_elements);
    r.add("Scatter", scatter_elements);
    r.add("ScatterND", scatter_nd);
    r.add("GatherND", gather_nd);
    r.add("CenterCropPad", center_crop_pad);
    r.add("Compress", compress);
    r.add("TensorScatter", tensor_scatter);
    r.add("ReverseSequence", reverse_sequence);
}

/// Reverses the first `sequence_lens[b]` steps along `time_axis` of each batch entry:
/// a gather_elements with an index table built from the (import-time) lengths.
fn reverse_sequence(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let lens = cx.const_ints(1, "sequence_lens")?;
    let shape = cx.static_shape(x, "input")?;
    let r = shape.len();
    let ta = norm_axis(cx.attr_i("time_axis", 0)?, r, "attribute `time_axis`")?;
    let ba = norm_axis(cx.attr_i("batch_axis", 1)?, r, "attribute `batch_axis`")?;
    if ta == ba || lens.len() != shape[ba] {
        return Err(format!(
            "sequence_lens {lens:?} must hold one length per batch entry ({})",
            shape[ba]
        ));
    }
    let (t_n, b_n) = (shape[ta], shape[ba]);
    // idx[t][b] (in the order the axes appear in x).
    let mut idx = Vec::with_capacity(t_n * b_n);
    let mut tshape = vec![1usize; r];
    tshape[ta] = t_n;
    tshape[ba] = b_n;
    let time_first = ta < ba;
    for i in 0..(t_n * b_n) {
        let (t, b) = if time_first {
            (i / b_n, i % b_n)
        } else {
            (i % t_n, i / t_n)
        };
        let len = (lens[b].max(0) as usize).min(t_n);
        idx.push(if t < len {
            (len - 1 - t) as i64
        } else {
            t as i64
        });
    }
    let table = cx.constant(llmc_ir::Tensor::from_i64(llmc_ir::DType::I64, tshape, idx));
    let full = Shape::of(&shape.iter().map(|&v| v as i64).collect::<Vec<_>>());
    let table = cx.op(Op::Expand, &[table], attrs([("shape", Attr::Shape(full))]))?;
    Ok(vec![cx.op(
        Op::GatherElements,
        &[x, table],
        attrs([("axis", Attr::Int(ta as i64))]),
    )?])
}

fn scatter_elements(cx: &mut NodeCtx) -> R {
    let (d, i, u) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let red = cx.attr_s("reduction")?.unwrap_or_else(|| "none".into());
    let a = attrs([
        ("axis", Attr::Int(cx.attr_i("axis", 0)?)),
        ("reduction", Attr::Str(red)),
    ]);
    Ok(vec![cx.op(Op::ScatterElements, &[d, i, u], a)?])
}

fn scatter_nd(cx: &mut NodeCtx) -> R {
    let (d, i, u) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let red = cx.attr_s("reduction")?.unwrap_or_else(|| "none".into());
    Ok(vec![cx.op(
        Op::ScatterNd,
        &[d, i, u],
        attrs([("reduction", Attr::Str(red))]),
    )?])
}

fn gather_nd(cx: &mut NodeCtx) -> R {
    let (d, i) = (cx.input(0)?, cx.input(1)?);
    let b = cx.attr_i("batch_dims", 0)?;
    Ok(vec![cx.op(
        Op::GatherNd,
        &[d, i],
        attrs([("batch_dims", Attr::Int(b))]),
    )?])
}

/// Crops (centred, the extra element at the end) or zero-pads each axis to `shape`.
fn center_crop_pad(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let target = cx.const_ints(1, "shape")?;
    let dims = cx.static_shape(x, "input")?;
    let r = dims.len();
    let axes: Vec<usize> = match cx.attr_ints("axes")? {
        Some(a) => a
            .iter()
            .map(|&v| norm_axis(v, r, "attribute `axes`"))
            .collect::<Result<_, _>>()?,
        None => (0..r).collect(),
    };
    if target.len() != axes.len() {
        return Err(format!(
            "input 1 (shape) {target:?} must hold one value per axis of {axes:?}"
        ));
    }
    let (mut starts, mut ends, mut sl_axes) = (vec![], vec![], vec![]);
    let mut pads = vec![0i64; 2 * r];
    for (&ax, &want) in axes.iter().zip(&target) {
        let have = dims[ax] as i64;
        if want < have {
            let b = (have - want) / 2;
            starts.push(b);
            ends.push(b + want);
            sl_axes.push(ax as i64);
        } else if want > have {
            let b = (want - have) / 2;
            pads[ax] = b;
            pads[r + ax] = want - have - b;
        }
    }
    let mut y = x;
    if !sl_axes.is_empty() {
        y = cx.op(
            Op::Slice,
            &[y],
            attrs([
                ("starts", Attr::Ints(starts)),
                ("ends", Attr::Ints(ends)),
                ("axes", Attr::Ints(sl_axes)),
            ]),
        )?;
    }
    if pads.iter().any(|&p| p != 0) {
        y = cx.op(
            Op::Pad,
            &[y],
            attrs([("pads", Attr::Ints(pads)), ("value", Attr::Float(0.0))]),
        )?;
    }
    Ok(vec![y])
}

/// The elements (or slices along `axis`) where a condition known at import holds.
fn compress(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let cond = cx.const_input(1, "condition")?.to_i64();
    let (x, axis) = match cx.attr_opt_i("axis")? {
        Some(a) => (x, norm_axis(a, cx.rank(x), "attribute `axis`")?),
        None => {
            let n = cx.shape(x).numel();
            (reshape_to(cx, x, vec![n])?, 0)
        }
    };
    let len = cx.shape(x).0[axis]
        .as_const()
        .ok_or("the compressed axis must be constant")?;
    let picks: Vec<i64> = (0..len)
        .filter(|&i| cond.get(i as usize).is_some_and(|&c| c != 0))
        .collect();
    let idx = cx.constant(llmc_ir::Tensor::from_i64(
        llmc_ir::DType::I64,
        vec![picks.len()],
        picks,
    ));
    Ok(vec![cx.op(
        Op::Gather,
        &[x, idx],
        attrs([("axis", Attr::Int(axis as i64))]),
    )?])
}

/// `TensorScatter`: writes `update` into the cache at `write_indices[b] + s` along
/// `axis` (wrapping in circular mode), as a scatter_elements.
fn tensor_scatter(cx: &mut NodeCtx) -> R {
    let (past, upd) = (cx.input(0)?, cx.input(1)?);
    let r = cx.rank(past);
    let axis = norm_axis(cx.attr_i("axis", -2)?, r, "attribute `axis`")?;
    let mode = cx.attr_s("mode")?.unwrap_or_else(|| "linear".into());
    let us = cx.static_shape(upd, "input update")?;
    let ps = cx.static_shape(past, "input past_cache")?;
    if axis == 0 {
        return Err("axis 0 is the batch axis".into());
    }
    let mut iota_shape = vec![1usize; r];
    iota_shape[axis] = us[axis];
    let iota = cx.constant(llmc_ir::Tensor::from_i64(
        llmc_ir::DType::I64,
        iota_shape,
        (0..us[axis] as i64).collect(),
    ));
    let mut idx = iota;
    if let Some(w) = cx.opt_input(2)? {
        let w = cx.cast(w, llmc_ir::DType::I64)?;
        let mut wd = vec![Dim::c(us[0] as i64)];
        wd.extend(std::iter::repeat_n(Dim::c(1), r - 1));
        let w = reshape_to(cx, w, wd)?;
        idx = cx.bin(Op::Add, idx, w)?;
    }
    if mode == "circular" {
        let m = cx.scalar(llmc_ir::DType::I64, ps[axis] as f64);
        idx = cx.op(Op::Mod, &[idx, m], attrs([("fmod", Attr::Bool(false))]))?;
    } else if mode != "linear" {
        return Err(format!("attribute `mode` = {mode:?} is unknown"));
    }
    let full = Shape::of(&us.iter().map(|&v| v as i64).collect::<Vec<_>>());
    let idx = cx.op(Op::Expand, &[idx], attrs([("shape", Attr::Shape(full))]))?;
    Ok(vec![cx.op(
        Op::ScatterElements,
        &[past, idx, upd],
        attrs([("axis", Attr::Int(axis as i64))]),
    )?])
}

/// Reshapes `x` to `dims` (an IR reshape; no-op when the shape is already that).
pub fn reshape_to(cx: &mut NodeCtx, x: V, dims: Vec<Dim>) -> Result<V, String> {
    if cx.shape(x).0 == dims {
        return Ok(x);
    }
    cx.op(
        Op::Reshape,
        &[x],
        attrs([("shape", Attr::Shape(Shape(dims)))]),
    )
}

/// Transposes `x` by `perm`.
pub fn transpose_by(cx: &mut NodeCtx, x: V, perm: Vec<i64>) -> Result<V, String> {
    if perm.iter().enumerate().all(|(i, &p)| p == i as i64) {
        return Ok(x);
    }
    cx.op(Op::Transpose, &[x], attrs([("perm", Attr::Ints(perm))]))
}

/// Resolves an ONNX axis against `rank`.
pub fn norm_axis(axis: i64, rank: usize, what: &str) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(format!("{what} = {axis} is out of range for rank {rank}"))
    }
}

/// The target of an ONNX `Reshape`: `0` copies the input dim (unless `allowzero`),
/// `-1` is inferred from the element count.
pub fn reshape_target(
    in_shape: &Shape,
    target: &[Dim],
    allowzero: bool,
) -> Result<Vec<Dim>, String> {
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, d) in target.iter().enumerate() {
        match d.as_const() {
            Some(0) if !allowzero => out.push(in_shape.0.get(i).cloned().ok_or_else(|| {
                format!(
                    "shape {target:?} copies dim {i} (0), but the input {in_shape} has rank {}",
                    in_shape.rank()
                )
            })?),
            Some(-1) => {
                if infer.replace(i).is_some() {
                    return Err(format!("shape {target:?} has more than one -1"));
                }
                out.push(Dim::c(1));
            }
            Some(v) if v < -1 => return Err(format!("shape {target:?} has invalid dim {v}")),
            _ => out.push(d.clone()),
        }
    }
    if let Some(i) = infer {
        let known = Shape(out.clone()).numel();
        let total = in_shape.numel();
        out[i] = total.div_exact(&known).ok_or_else(|| {
            format!(
                "cannot infer the -1 of shape {} from input {in_shape}: {total} is not a multiple of {known}",
                Shape(target.to_vec())
            )
        })?;
    }
    Ok(out)
}

fn reshape(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let target: Vec<Dim> = if cx.opset < 5 {
        let s = cx.attr_ints("shape")?.ok_or("missing attribute `shape`")?;
        s.into_iter().map(Dim::c).collect()
    } else {
        cx.shape_input(1, "shape")?
    };
    let allowzero = cx.attr_i("allowzero", 0)? != 0;
    let dims = reshape_target(&cx.shape(x).clone(), &target, allowzero)?;
    Ok(vec![reshape_to(cx, x, dims)?])
}

fn flatten(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let rank = cx.rank(x);
    let axis = cx.attr_i("axis", 1)?;
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if !(0..=rank as i64).contains(&a) {
        return Err(format!(
            "attribute `axis` = {axis} is out of range for rank {rank}"
        ));
    }
    let s = cx.shape(x).clone();
    let (l, r) = s.0.split_at(a as usize);
    let dims = vec![Shape(l.to_vec()).numel(), Shape(r.to_vec()).numel()];
    Ok(vec![reshape_to(cx, x, dims)?])
}

fn transpose(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let rank = cx.rank(x) as i64;
    let perm = cx
        .attr_ints("perm")?
        .unwrap_or_else(|| (0..rank).rev().collect());
    Ok(vec![cx.op(
        Op::Transpose,
        &[x],
        attrs([("perm", Attr::Ints(perm))]),
    )?])
}

fn concat(cx: &mut NodeCtx) -> R {
    let ins = cx.inputs()?;
    let axis = cx.attr_opt_i("axis")?.ok_or("missing attribute `axis`")?;
    Ok(vec![cx.op(
        Op::Concat,
        &ins,
        attrs([("axis", Attr::Int(axis))]),
    )?])
}

fn split(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let rank = cx.rank(x);
    let axis = cx.attr_i("axis", 0)?;
    let ax = norm_axis(axis, rank, "attribute `axis`")?;
    let sizes = if cx.opset < 13 {
        cx.attr_ints("split")?
    } else {
        cx.opt_const_ints(1, "split")?
    };
    let sizes = match sizes {
        Some(s) if !s.is_empty() => s,
        _ => {
            let n = cx.shape(x).0[ax].as_const().ok_or_else(|| {
                format!(
                    "splitting symbolic dim {} needs explicit sizes",
                    cx.shape(x).0[ax]
                )
            })?;
            let parts = match cx.attr_opt_i("num_outputs")? {
                Some(k) if cx.opset >= 18 => k,
                _ => cx.n_outputs() as i64,
            };
            if parts <= 0 {
                return Err(format!("cannot split into {parts} parts"));
            }
            if cx.opset >= 18 && cx.attr_opt_i("num_outputs")?.is_some() {
                // Chunks of ceil(n / parts), the last one smaller.
                let chunk = (n + parts - 1) / parts;
                let mut s = Vec::new();
                let mut left = n;
                while left > 0 && (s.len() as i64) < parts {
                    s.push(chunk.min(left));
                    left -= chunk.min(left);
                }
                s
            } else {
                if n % parts != 0 {
                    return Err(format!(
                        "dim {n} does not split evenly into {parts} outputs"
                    ));
                }
                vec![n / parts; parts as usize]
            }
        }
    };
    cx.op_n(
        Op::Split,
        &[x],
        attrs([("axis", Attr::Int(ax as i64)), ("sizes", Attr::Ints(sizes))]),
    )
}

fn slice(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let (starts, ends, axes, steps) = if cx.opset < 10 {
        (
            cx.attr_ints("starts")?
                .ok_or("missing attribute `starts`")?,
            cx.attr_ints("ends")?.ok_or("missing attribute `ends`")?,
            cx.attr_ints("axes")?,
            None,
        )
    } else {
        let (s, e) = (cx.input(1)?, cx.input(2)?);
        if cx.konst(s)?.is_none() || cx.konst(e)?.is_none() {
            return symbolic_slice(cx, x);
        }
        (
            cx.const_ints(1, "starts")?,
            cx.const_ints(2, "ends")?,
            cx.opt_const_ints(3, "axes")?,
            cx.opt_const_ints(4, "steps")?,
        )
    };
    let mut a = attrs([("starts", Attr::Ints(starts)), ("ends", Attr::Ints(ends))]);
    if let Some(ax) = axes {
        a.insert("axes".into(), Attr::Ints(ax));
    }
    if let Some(st) = steps {
        a.insert("steps".into(), Attr::Ints(st));
    }
    Ok(vec![cx.op(Op::Slice, &[x], a)?])
}

/// Whether a symbolic bound reads as negative (every term's coefficient is): `-seq`
/// counts from the end, as a constant negative bound does.
fn looks_negative(d: &Dim) -> bool {
    d.terms().count() > 0 && d.terms().all(|(_, c)| c < 0)
}

/// `Slice` whose starts or ends are computed from symbolic dims (exporters slice
/// position buffers to the sequence length, masks to the past length, ...). Axes with
/// constant bounds go to one `slice`; each axis with a symbolic bound (step 1 only)
/// becomes a `gather` of the indices `start + 0..(end - start)`. Symbolic bounds are
/// taken as in range (an out-of-range index fails at run time in `gather`, it is not
/// clamped); a bound whose terms are all negative counts from the end.
fn symbolic_slice(cx: &mut NodeCtx, x: V) -> R {
    let starts = cx.shape_input(1, "starts")?;
    let ends = cx.shape_input(2, "ends")?;
    if starts.len() != ends.len() {
        return Err(format!(
            "starts has {} values, ends has {}",
            starts.len(),
            ends.len()
        ));
    }
    let n = starts.len();
    let axes = cx
        .opt_const_ints(3, "axes")?
        .unwrap_or_else(|| (0..n as i64).collect());
    let steps = cx.opt_const_ints(4, "steps")?.unwrap_or_else(|| vec![1; n]);
    if axes.len() != n || steps.len() != n {
        return Err(format!(
            "starts, ends, axes and steps disagree in length ({n}, {n}, {}, {})",
            axes.len(),
            steps.len()
        ));
    }
    let shape = cx.shape(x).clone();
    let rank = shape.rank();
    let (mut cs, mut ce, mut ca, mut cst) = (vec![], vec![], vec![], vec![]);
    let mut cur = x;
    for k in 0..n {
        let axis = llmc_ir::shape::norm_axis(axes[k], rank)
            .ok_or_else(|| format!("axis {} is out of range for rank {rank}", axes[k]))?;
        let (s, e) = (&starts[k], &ends[k]);
        if let (Some(s), Some(e)) = (s.as_const(), e.as_const()) {
            cs.push(s);
            ce.push(e);
            ca.push(axis as i64);
            cst.push(steps[k]);
            continue;
        }
        if steps[k] != 1 {
            return Err(format!(
                "a slice with symbolic bounds ({s}..{e}) needs step 1 on axis {axis}, got {}",
                steps[k]
            ));
        }
        let dim = &shape.0[axis];
        let from_end = |b: &Dim| -> Result<Dim, String> {
            match b.as_const() {
                // Past the end (INT64_MAX and the like) is the end.
                Some(c) if c >= i64::from(i32::MAX) => Ok(dim.clone()),
                Some(c) if c < 0 => dim
                    .checked_add(&Dim::c(c))
                    .ok_or_else(|| "slice bound overflows".to_string()),
                Some(c) => Ok(match dim.as_const() {
                    Some(d) => Dim::c(c.min(d)),
                    None => Dim::c(c),
                }),
                None if looks_negative(b) => dim
                    .checked_add(b)
                    .ok_or_else(|| "slice bound overflows".to_string()),
                None => Ok(b.clone()),
            }
        };
        let (s, e) = (from_end(s)?, from_end(e)?);
        if s.as_const() == Some(0) && &e == dim {
            continue;
        }
        let len = e
            .checked_sub(&s)
            .ok_or_else(|| "slice length overflows".to_string())?;
        let one = cx.scalar(llmc_ir::DType::I64, 1.0);
        let ones = cx.op(
            Op::Expand,
            &[one],
            attrs([("shape", Attr::Shape(Shape(vec![len])))]),
        )?;
        let mut idx = cx.op(
            Op::CumSum,
            &[ones],
            attrs([("axis", Attr::Int(0)), ("exclusive", Attr::Bool(true))]),
        )?;
        if s.as_const() != Some(0) {
            let sv = cx.dims_value(vec![s], true);
            idx = cx.bin(Op::Add, idx, sv)?;
        }
        cur = cx.op(
            Op::Gather,
            &[cur, idx],
            attrs([("axis", Attr::Int(axis as i64))]),
        )?;
    }
    if !cs.is_empty() {
        let a = attrs([
            ("starts", Attr::Ints(cs)),
            ("ends", Attr::Ints(ce)),
            ("axes", Attr::Ints(ca)),
            ("steps", Attr::Ints(cst)),
        ]);
        cur = cx.op(Op::Slice, &[cur], a)?;
    }
    Ok(vec![cur])
}

fn gather(cx: &mut NodeCtx) -> R {
    let (x, i) = (cx.input(0)?, cx.input(1)?);
    let axis = cx.attr_i("axis", 0)?;
    Ok(vec![cx.op(
        Op::Gather,
        &[x, i],
        attrs([("axis", Attr::Int(axis))]),
    )?])
}

fn gather_elements(cx: &mut NodeCtx) -> R {
    let (x, i) = (cx.input(0)?, cx.input(1)?);
    let axis = cx.attr_i("axis", 0)?;
    Ok(vec![cx.op(
        Op::GatherElements,
        &[x, i],
        attrs([("axis", Attr::Int(axis))]),
    )?])
}

fn expand(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let shape = cx.shape_input(1, "shape")?;
    Ok(vec![cx.op(
        Op::Expand,
        &[x],
        attrs([("shape", Attr::Shape(Shape(shape)))]),
    )?])
}

/// Axes of a `Squeeze`/`Unsqueeze`: attribute before opset 13, input after.
fn axes_of(cx: &mut NodeCtx) -> Result<Option<Vec<i64>>, String> {
    if cx.opset < 13 {
        cx.attr_ints("axes")
    } else {
        cx.opt_const_ints(1, "axes")
    }
}

fn squeeze(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let axes = match axes_of(cx)? {
        Some(a) => a,
        None => cx
            .shape(x)
            .0
            .iter()
            .enumerate()
            .filter(|(_, d)| d.as_const() == Some(1))
            .map(|(i, _)| i as i64)
            .collect(),
    };
    Ok(vec![cx.op(
        Op::Squeeze,
        &[x],
        attrs([("axes", Attr::Ints(axes))]),
    )?])
}

fn unsqueeze(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let axes = axes_of(cx)?.ok_or("missing axes")?;
    Ok(vec![cx.op(
        Op::Unsqueeze,
        &[x],
        attrs([("axes", Attr::Ints(axes))]),
    )?])
}

fn tile(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let reps = cx.const_ints(1, "repeats")?;
    Ok(vec![cx.op(
        Op::Tile,
        &[x],
        attrs([("repeats", Attr::Ints(reps))]),
    )?])
}

fn trilu(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let upper = cx.attr_i("upper", 1)? != 0;
    let k = match cx.opt_const_ints(1, "k")? {
        Some(v) => *v.first().ok_or("input 1 (k) is empty")?,
        None => 0,
    };
    Ok(vec![cx.op(
        Op::Trilu,
        &[x],
        attrs([("upper", Attr::Bool(upper)), ("k", Attr::Int(k))]),
    )?])
}

fn pad(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let rank = cx.rank(x);
    let mode = cx.attr_s("mode")?.unwrap_or_else(|| "constant".into());
    let (pads, value) = if cx.opset < 11 {
        let p = cx
            .attr_ints("pads")?
            .or(cx.attr_ints("paddings")?)
            .ok_or("missing attribute `pads`")?;
        (p, cx.attr_f("value", 0.0)?)
    } else {
        let p = cx.const_ints(1, "pads")?;
        let v = if cx.has_input(2) {
            let t = cx.const_input(2, "constant_value")?;
            t.to_f64().first().copied().unwrap_or(0.0)
        } else {
            0.0
        };
        (p, v)
    };
    let axes = if cx.opset >= 18 {
        cx.opt_const_ints(3, "axes")?
    } else {
        None
    };
    let pads = match axes {
        None => pads,
        Some(axes) => {
            if pads.len() != 2 * axes.len() {
                return Err(format!(
                    "pads {pads:?} must hold two values per axis of {axes:?}"
                ));
            }
            let mut full = vec![0i64; 2 * rank];
            for (k, &a) in axes.iter().enumerate() {
                let ax = norm_axis(a, rank, "axes")?;
                full[ax] = pads[k];
                full[rank + ax] = pads[axes.len() + k];
            }
            full
        }
    };
    if mode != "constant" {
        return super::nn::pad_mode(cx, x, &pads, &mode).map(|v| vec![v]);
    }
    Ok(vec![cx.op(
        Op::Pad,
        &[x],
        attrs([("pads", Attr::Ints(pads)), ("value", Attr::Float(value))]),
    )?])
}

/// Static dims of a rank-4 NCHW input.
fn nchw(cx: &NodeCtx, x: V) -> Result<[i64; 4], String> {
    let s = cx.static_shape(x, "input")?;
    match s[..] {
        [n, c, h, w] => Ok([n as i64, c as i64, h as i64, w as i64]),
        _ => Err(format!("input must have rank 4, got {:?}", s)),
    }
}

fn depth_to_space(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let b = cx
        .attr_opt_i("blocksize")?
        .ok_or("missing attribute `blocksize`")?;
    let [n, c, h, w] = nchw(cx, x)?;
    if b <= 0 || c % (b * b) != 0 {
        return Err(format!(
            "channels {c} are not a multiple of blocksize^2 ({b}^2)"
        ));
    }
    let mode = cx.attr_s("mode")?.unwrap_or_else(|| "DCR".into());
    let (dims, perm) = match mode.as_str() {
        "DCR" => (vec![n, b, b, c / (b * b), h, w], vec![0, 3, 4, 1, 5, 2]),
        "CRD" => (vec![n, c / (b * b), b, b, h, w], vec![0, 1, 4, 2, 5, 3]),
        other => return Err(format!("attribute `mode` = {other:?} is unknown")),
    };
    let r = reshape_to(cx, x, dims.into_iter().map(Dim::c).collect())?;
    let t = transpose_by(cx, r, perm)?;
    let out = [n, c / (b * b), h * b, w * b].map(Dim::c).to_vec();
    Ok(vec![reshape_to(cx, t, out)?])
}

fn space_to_depth(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let b = cx
        .attr_opt_i("blocksize")?
        .ok_or("missing attribute `blocksize`")?;
    let [n, c, h, w] = nchw(cx, x)?;
    if b <= 0 || h % b != 0 || w % b != 0 {
        return Err(format!(
            "spatial dims {h}x{w} are not multiples of blocksize {b}"
        ));
    }
    let perm = match cx.attr_s("mode")?.as_deref().unwrap_or("DCR") {
        "DCR" => vec![0, 3, 5, 1, 2, 4],
        "CRD" => vec![0, 1, 3, 5, 2, 4],
        other => return Err(format!("attribute `mode` = {other:?} is unknown")),
    };
    let r = reshape_to(cx, x, [n, c, h / b, b, w / b, b].map(Dim::c).to_vec())?;
    let t = transpose_by(cx, r, perm)?;
    let out = [n, c * b * b, h / b, w / b].map(Dim::c).to_vec();
    Ok(vec![reshape_to(cx, t, out)?])
}
