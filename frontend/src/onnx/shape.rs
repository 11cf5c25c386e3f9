//! Ops whose results are known at import: `Constant`, `Shape`, `Size`,
//! `ConstantOfShape`, `Range`, `EyeLike`, `OneHot`'s table, plus the pass-through ops
//! (`Identity`, inference-mode `Dropout`). `Shape` of a value with symbolic dims yields dims, which
//! `Reshape`/`Expand`/`ConstantOfShape` turn into symbolic shape attributes.

use super::import::{NodeCtx, V};
use super::registry::Registry;
use llmc_ir::tensor::Tensor;
use llmc_ir::{attrs, Attr, Attrs, DType, Op, Shape};

type R = Result<Vec<V>, String>;

/// Adds this family's converters.
pub fn register(r: &mut Registry) {
    r.add("Constant", constant);
    r.add("Identity", |cx| Ok(vec![cx.input(0)?]));
    r.add("Dropout", dropout);
    r.add("Shape", shape);
    r.add("Size", size);
    r.add("ConstantOfShape", constant_of_shape);
    r.add("Range", range);
    r.add("EyeLike", eye_like);
    r.add("OneHot", one_hot);
}

fn constant(cx: &mut NodeCtx) -> R {
    if let Some(t) = cx.attr_tensor("value")? {
        return Ok(vec![cx.constant(t)]);
    }
    if let Some(f) = cx.attr_opt_f("value_float")? {
        return Ok(vec![cx.constant(Tensor::from_f64(
            DType::F32,
            vec![],
            vec![f],
        ))]);
    }
    if let Some(v) = cx.attr_floats("value_floats")? {
        return Ok(vec![cx.constant(Tensor::from_f64(
            DType::F32,
            vec![v.len()],
            v,
        ))]);
    }
    if let Some(i) = cx.attr_opt_i("value_int")? {
        return Ok(vec![cx.constant(Tensor::from_i64(
            DType::I64,
            vec![],
            vec![i],
        ))]);
    }
    if let Some(v) = cx.attr_ints("value_ints")? {
        return Ok(vec![cx.constant(Tensor::from_i64(
            DType::I64,
            vec![v.len()],
            v,
        ))]);
    }
    for a in ["value_string", "value_strings"] {
        if cx.attr(a).is_some() {
            return Err(format!("attribute `{a}`: string tensors are not supported"));
        }
    }
    if cx.attr("sparse_value").is_some() {
        return Err("attribute `sparse_value`: sparse tensors are not supported".into());
    }
    Err("has none of the value attributes".into())
}

fn dropout(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let training = if cx.opset >= 12 && cx.has_input(2) {
        let t = cx.const_input(2, "training_mode")?;
        t.to_i64().first().copied().unwrap_or(0) != 0
    } else {
        false
    };
    let ratio = if cx.opset >= 12 && cx.has_input(1) {
        let t = cx.const_input(1, "ratio")?;
        t.to_f64().first().copied().unwrap_or(0.5)
    } else {
        cx.attr_f("ratio", 0.5)?
    };
    if training && ratio != 0.0 {
        return Err(format!(
            "training mode with ratio {ratio} drops random elements; only inference is supported"
        ));
    }
    let mut outs = vec![x];
    if cx.wants_output(1) {
        let t = cx.scalar(DType::Bool, 1.0);
        let shape = cx.shape(x).clone();
        outs.push(cx.op(Op::Expand, &[t], attrs([("shape", Attr::Shape(shape))]))?);
    }
    Ok(outs)
}

fn shape(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let dims = cx.shape(x).0.clone();
    let r = dims.len() as i64;
    let clampi = |v: i64| -> usize { (if v < 0 { v + r } else { v }).clamp(0, r) as usize };
    let start = clampi(cx.attr_i("start", 0)?);
    let end = clampi(cx.attr_i("end", r)?);
    let d = if start < end {
        dims[start..end].to_vec()
    } else {
        vec![]
    };
    Ok(vec![cx.dims_value(d, false)])
}

fn size(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let n = cx.shape(x).numel();
    Ok(vec![cx.dims_value(vec![n], true)])
}

fn constant_of_shape(cx: &mut NodeCtx) -> R {
    let dims = cx.shape_input(0, "shape")?;
    let value = match cx.attr_tensor("value")? {
        Some(t) if t.numel() == 1 => t.reshaped(vec![]),
        Some(t) => {
            return Err(format!(
                "attribute `value` must hold one element, got {:?}",
                t.shape
            ))
        }
        None => Tensor::from_f64(DType::F32, vec![], vec![0.0]),
    };
    let s = cx.constant(value);
    Ok(vec![cx.op(
        Op::Expand,
        &[s],
        attrs([("shape", Attr::Shape(Shape(dims)))]),
    )?])
}

fn scalar_input(cx: &mut NodeCtx, i: usize, what: &str) -> Result<(DType, f64), String> {
    let t = cx.const_input(i, what)?;
    let v = *t
        .to_f64()
        .first()
        .ok_or_else(|| format!("input {i} ({what}) is empty"))?;
    Ok((t.dtype, v))
}

fn range(cx: &mut NodeCtx) -> R {
    let start_known = cx.konst(cx.input(0)?)?.is_some();
    let limit_known = cx.konst(cx.input(1)?)?.is_some();
    if !start_known || !limit_known {
        return symbolic_range(cx);
    }
    let (dt, start) = scalar_input(cx, 0, "start")?;
    let (_, limit) = scalar_input(cx, 1, "limit")?;
    let (_, delta) = scalar_input(cx, 2, "delta")?;
    if delta == 0.0 {
        return Err("input 2 (delta) is zero".into());
    }
    let n = ((limit - start) / delta).ceil().max(0.0);
    if n > (1u64 << 20) as f64 {
        // Too large to fold (and a lying model must not make the importer allocate
        // gigabytes): integer ranges with a unit step run as a running count.
        if dt.is_int() && (delta == 1.0 || delta == -1.0) && n <= (1u64 << 40) as f64 {
            return symbolic_range(cx);
        }
        return Err(format!(
            "range of {n} elements is too large to compute at import"
        ));
    }
    let n = n as usize;
    let t = if dt.is_float() {
        // Accumulate in the input type, as the ONNX function body does.
        let mut v = Vec::with_capacity(n);
        let mut acc = start;
        for _ in 0..n {
            v.push(acc);
            acc = llmc_ir::tensor::round_to(dt, acc + delta);
        }
        Tensor::from_f64(dt, vec![n], v)
    } else {
        let (s, d) = (start as i64, delta as i64);
        Tensor::from_i64(dt, vec![n], (0..n as i64).map(|i| s + i * d).collect())
    };
    Ok(vec![cx.constant(t)])
}

/// `Range(start, limit, delta)` whose start or limit is computed from symbolic dims
/// (a position range from the past length `past..past + seq`, or `0..seq`), with an
/// integer start and a delta of 1 or -1: start + delta * (exclusive running count of
/// ones over `n = (limit - start) / delta` elements). A symbolic start is read at run
/// time (a `dims` op).
fn symbolic_range(cx: &mut NodeCtx) -> R {
    let (_, delta) = scalar_input(cx, 2, "delta")?;
    let start_v = cx.input(0)?;
    let dt = cx.dtype(start_v);
    if cx.rank(start_v) != 0 {
        return Err(format!(
            "input 0 (start) must be a scalar, got {}",
            cx.ty(start_v)
        ));
    }
    if !dt.is_int() || (delta != 1.0 && delta != -1.0) {
        return Err(format!(
            "a range with a bound computed from symbolic dims needs an integer start and a delta of 1 or -1 (got {dt} start, delta {delta})"
        ));
    }
    let start = cx.shape_input(0, "start")?;
    let limit = cx.shape_input(1, "limit")?;
    let ([start], [limit]) = (&start[..], &limit[..]) else {
        return Err("inputs 0 and 1 (start, limit) must hold one value each".into());
    };
    let span = limit.checked_sub(start).ok_or("range length overflows")?;
    let n = if delta > 0.0 {
        span
    } else {
        span.checked_mul(&llmc_ir::Dim::c(-1))
            .ok_or("range length overflows")?
    };
    let one = cx.scalar(dt, 1.0);
    let ones = cx.op(
        Op::Expand,
        &[one],
        attrs([("shape", Attr::Shape(Shape(vec![n])))]),
    )?;
    let count = cx.op(
        Op::CumSum,
        &[ones],
        attrs([("axis", Attr::Int(0)), ("exclusive", Attr::Bool(true))]),
    )?;
    let d = cx.scalar(dt, delta);
    let scaled = cx.bin(Op::Mul, count, d)?;
    let s = match start.as_const() {
        Some(c) => cx.scalar(dt, c as f64),
        None => start_v,
    };
    Ok(vec![cx.bin(Op::Add, scaled, s)?])
}

fn eye_like(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let s = cx.static_shape(x, "input")?;
    let [r, c] = s[..] else {
        return Err(format!("input must have rank 2, got {s:?}"));
    };
    let dtype = match cx.attr_opt_i("dtype")? {
        Some(code) => super::data::dtype_of(code as i32)?,
        None => cx.dtype(x),
    };
    let k = cx.attr_i("k", 0)?;
    let mut v = vec![0.0; r * c];
    for i in 0..r as i64 {
        let j = i + k;
        if (0..c as i64).contains(&j) {
            v[(i * c as i64 + j) as usize] = 1.0;
        }
    }
    let t = if dtype.is_float() {
        Tensor::from_f64(dtype, vec![r, c], v)
    } else {
        Tensor::from_i64(dtype, vec![r, c], v.iter().map(|&x| x as i64).collect())
    };
    Ok(vec![cx.constant(t)])
}

/// where(indices (wrapped) == iota along `axis`, on, off).
fn one_hot(cx: &mut NodeCtx) -> R {
    let idx = cx.input(0)?;
    let (_, depth) = scalar_input(cx, 1, "depth")?;
    let values = cx.input(2)?;
    let depth = depth as i64;
    if depth <= 0 {
        return Err(format!("input 1 (depth) must be positive, got {depth}"));
    }
    let rank = cx.rank(idx) + 1;
    let axis = cx.attr_i("axis", -1)?;
    let ax = super::tensor::norm_axis(axis, rank, "attribute `axis`")?;
    let idx = cx.cast(idx, DType::I64)?;
    // Negative indices count from the end.
    let zero = cx.scalar(DType::I64, 0.0);
    let dv = cx.scalar(DType::I64, depth as f64);
    let neg = cx.bin(Op::Less, idx, zero)?;
    let wrapped = cx.bin(Op::Add, idx, dv)?;
    let idx = cx.op(Op::Where, &[neg, wrapped, idx], Attrs::new())?;
    let u = cx.op(
        Op::Unsqueeze,
        &[idx],
        attrs([("axes", Attr::Ints(vec![ax as i64]))]),
    )?;
    let mut shape = vec![1usize; rank];
    shape[ax] = depth as usize;
    let iota = cx.constant(Tensor::from_i64(DType::I64, shape, (0..depth).collect()));
    let hit = cx.bin(Op::Equal, u, iota)?;
    let off = slice1(cx, values, 0)?;
    let on = slice1(cx, values, 1)?;
    Ok(vec![cx.op(Op::Where, &[hit, on, off], Attrs::new())?])
}

/// Element `i` of a rank-1 value, as a scalar.
fn slice1(cx: &mut NodeCtx, v: V, i: i64) -> Result<V, String> {
    let idx = cx.scalar(DType::I64, i as f64);
    cx.op(Op::Gather, &[v, idx], attrs([("axis", Attr::Int(0))]))
}
