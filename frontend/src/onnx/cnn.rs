//! Convolutions and pools: `Conv`, `ConvTranspose`, `ConvInteger`, `MaxPool`,
//! `AveragePool`, `LpPool`, the global pools, `Resize` and `Upsample`. `auto_pad` and `ConvTranspose`'s
//! `output_shape` are resolved here into explicit pads (which needs constant spatial
//! dims); `LpPool` and the global pools are written with other ops.

use super::import::{NodeCtx, V};
use super::registry::Registry;
use llmc_ir::{attrs, Attr, Attrs, DType, Op};

type R = Result<Vec<V>, String>;

/// Adds this family's converters.
pub fn register(r: &mut Registry) {
    r.add("Conv", conv);
    r.add("ConvInteger", conv_integer);
    r.add("ConvTranspose", conv_transpose);
    r.add("MaxPool", max_pool);
    r.add("AveragePool", avg_pool);
    r.add("LpPool", lp_pool);
    r.add("GlobalAveragePool", |cx| global(cx, Op::ReduceMean));
    r.add("GlobalMaxPool", |cx| global(cx, Op::ReduceMax));
    r.add("GlobalLpPool", global_lp);
    r.add("Resize", resize);
    r.add("Upsample", upsample);
}

/// Constant spatial dims of `x` ([N, C, spatial...]).
fn spatial(cx: &NodeCtx, x: V) -> Result<Vec<i64>, String> {
    let s = cx.shape(x);
    if s.rank() < 3 {
        return Err(format!("input X must be [N, C, spatial...], got {s}"));
    }
    s.0[2..]
        .iter()
        .map(|d| {
            d.as_const()
                .ok_or_else(|| format!("input X {s}: spatial dims must be constant"))
        })
        .collect()
}

fn ints_or(cx: &NodeCtx, name: &str, n: usize, default: i64) -> Result<Vec<i64>, String> {
    let v = cx.attr_ints(name)?.unwrap_or_else(|| vec![default; n]);
    if v.len() != n {
        return Err(format!("attribute `{name}` {v:?} must hold {n} values"));
    }
    Ok(v)
}

/// Explicit pads of a forward window op from `pads`/`auto_pad`.
fn forward_pads(
    cx: &NodeCtx,
    inp: &[i64],
    kernel: &[i64],
    strides: &[i64],
    dil: &[i64],
) -> Result<Vec<i64>, String> {
    let n = inp.len();
    match cx.attr_s("auto_pad")?.as_deref().unwrap_or("NOTSET") {
        "NOTSET" => ints_or(cx, "pads", 2 * n, 0),
        "VALID" => Ok(vec![0; 2 * n]),
        mode @ ("SAME_UPPER" | "SAME_LOWER") => {
            let mut pads = vec![0; 2 * n];
            for d in 0..n {
                let out = (inp[d] + strides[d] - 1) / strides[d];
                let eff = (kernel[d] - 1) * dil[d] + 1;
                let total = ((out - 1) * strides[d] + eff - inp[d]).max(0);
                let small = total / 2;
                let (b, e) = if mode == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                pads[d] = b;
                pads[n + d] = e;
            }
            Ok(pads)
        }
        other => Err(format!("attribute `auto_pad` = {other:?} is unknown")),
    }
}

/// The window attributes of a conv with this kernel (for other families' convs).
pub fn conv_window(cx: &NodeCtx, x: V, kernel: &[i64]) -> Result<Attrs, String> {
    window_attrs(cx, x, kernel)
}

/// The window attributes every forward op shares.
fn window_attrs(cx: &NodeCtx, x: V, kernel: &[i64]) -> Result<Attrs, String> {
    let inp = spatial(cx, x)?;
    let n = inp.len();
    if kernel.len() != n {
        return Err(format!(
            "kernel {kernel:?} must have one value per spatial dim ({n})"
        ));
    }
    let strides = ints_or(cx, "strides", n, 1)?;
    let dil = ints_or(cx, "dilations", n, 1)?;
    let pads = forward_pads(cx, &inp, kernel, &strides, &dil)?;
    Ok(attrs([
        ("strides", Attr::Ints(strides)),
        ("dilations", Attr::Ints(dil)),
        ("pads", Attr::Ints(pads)),
    ]))
}

fn conv(cx: &mut NodeCtx) -> R {
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    let b = cx.opt_input(2)?;
    let ws = cx.static_shape(w, "input W")?;
    let kernel = match cx.attr_ints("kernel_shape")? {
        Some(k) => k,
        None => ws.iter().skip(2).map(|&v| v as i64).collect(),
    };
    let mut a = window_attrs(cx, x, &kernel)?;
    a.insert("group".into(), Attr::Int(cx.attr_i("group", 1)?));
    let mut ins = vec![x, w];
    ins.extend(b);
    Ok(vec![cx.op(Op::Conv, &ins, a)?])
}

/// (x - x_zero_point) conv (w - w_zero_point), exactly, in i32.
fn conv_integer(cx: &mut NodeCtx) -> R {
    let mut ops = Vec::new();
    for (i, zi) in [(0, 2), (1, 3)] {
        let v = cx.input(i)?;
        let v = cx.cast(v, DType::F64)?;
        let v = match cx.opt_input(zi)? {
            Some(z) => {
                let z = cx.cast(z, DType::F64)?;
                // A per-output-channel zero point of W ([M]) applies along axis 0.
                let z = if i == 1 && cx.rank(z) == 1 {
                    let mut dims = vec![cx.shape(z).0[0].clone()];
                    dims.extend(std::iter::repeat_n(llmc_ir::Dim::c(1), cx.rank(v) - 1));
                    super::tensor::reshape_to(cx, z, dims)?
                } else {
                    z
                };
                cx.bin(Op::Sub, v, z)?
            }
            None => v,
        };
        ops.push(v);
    }
    let ws = cx.static_shape(ops[1], "input w")?;
    let kernel: Vec<i64> = ws.iter().skip(2).map(|&v| v as i64).collect();
    let mut a = window_attrs(cx, ops[0], &kernel)?;
    a.insert("group".into(), Attr::Int(cx.attr_i("group", 1)?));
    let y = cx.op(Op::Conv, &ops, a)?;
    Ok(vec![cx.cast(y, DType::I32)?])
}

fn conv_transpose(cx: &mut NodeCtx) -> R {
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    let b = cx.opt_input(2)?;
    let inp = spatial(cx, x)?;
    let n = inp.len();
    let ws = cx.static_shape(w, "input W")?;
    let kernel: Vec<i64> = ws.iter().skip(2).map(|&v| v as i64).collect();
    if kernel.len() != n {
        return Err(format!("W {ws:?} does not fit X's {n} spatial dims"));
    }
    let strides = ints_or(cx, "strides", n, 1)?;
    let dil = ints_or(cx, "dilations", n, 1)?;
    let mut opad = ints_or(cx, "output_padding", n, 0)?;
    let auto = cx.attr_s("auto_pad")?.unwrap_or_else(|| "NOTSET".into());
    let out_shape = cx.attr_ints("output_shape")?;
    let same = auto == "SAME_UPPER" || auto == "SAME_LOWER";
    let pads = if out_shape.is_some() || same {
        let target = match out_shape {
            Some(s) => {
                let s = if s.len() == n + 2 { s[2..].to_vec() } else { s };
                if s.len() != n {
                    return Err(format!(
                        "attribute `output_shape` {s:?} must hold {n} values"
                    ));
                }
                s
            }
            None => (0..n).map(|d| inp[d] * strides[d]).collect(),
        };
        let mut pads = vec![0; 2 * n];
        for d in 0..n {
            let full = strides[d] * (inp[d] - 1) + opad[d] + (kernel[d] - 1) * dil[d] + 1;
            let total = full - target[d];
            let half = total.div_euclid(2);
            let (pb, pe) = match auto.as_str() {
                "SAME_UPPER" => (half, total - half),
                "SAME_LOWER" => (total - half, half),
                // An explicit output_shape places the output at the start.
                _ => (0, total),
            };
            if pb < 0 {
                return Err(format!(
                    "output_shape {target:?} needs negative begin padding"
                ));
            }
            // A negative end pad extends the output: that is output padding.
            if pe < 0 {
                opad[d] -= pe;
            }
            pads[d] = pb;
            pads[n + d] = pe.max(0);
        }
        pads
    } else {
        match auto.as_str() {
            "VALID" => vec![0; 2 * n],
            _ => ints_or(cx, "pads", 2 * n, 0)?,
        }
    };
    let a = attrs([
        ("strides", Attr::Ints(strides)),
        ("dilations", Attr::Ints(dil)),
        ("pads", Attr::Ints(pads)),
        ("output_padding", Attr::Ints(opad)),
        ("group", Attr::Int(cx.attr_i("group", 1)?)),
    ]);
    let mut ins = vec![x, w];
    ins.extend(b);
    Ok(vec![cx.op(Op::ConvTranspose, &ins, a)?])
}

/// The attributes of a pool op (kernel, window, ceil_mode).
fn pool_attrs(cx: &NodeCtx, x: V) -> Result<Attrs, String> {
    let kernel = cx
        .attr_ints("kernel_shape")?
        .ok_or("missing attribute `kernel_shape`")?;
    let mut a = window_attrs(cx, x, &kernel)?;
    a.insert("kernel".into(), Attr::Ints(kernel));
    a.insert(
        "ceil_mode".into(),
        Attr::Bool(cx.attr_i("ceil_mode", 0)? != 0),
    );
    Ok(a)
}

fn max_pool(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    if cx.wants_output(1) {
        return Err("output 1 (Indices) is not supported".into());
    }
    let a = pool_attrs(cx, x)?;
    Ok(vec![cx.op(Op::MaxPool, &[x], a)?])
}

fn avg_pool(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let mut a = pool_attrs(cx, x)?;
    a.insert(
        "count_include_pad".into(),
        Attr::Bool(cx.attr_i("count_include_pad", 0)? != 0),
    );
    Ok(vec![cx.op(Op::AvgPool, &[x], a)?])
}

/// |x|^p
fn abs_pow(cx: &mut NodeCtx, x: V, p: i64) -> Result<V, String> {
    let a = cx.un(Op::Abs, x)?;
    match p {
        1 => Ok(a),
        2 => cx.bin(Op::Mul, a, a),
        _ => {
            let e = cx.scalar_like(x, p as f64);
            cx.bin(Op::Pow, a, e)
        }
    }
}

/// y^(1/p)
fn root(cx: &mut NodeCtx, y: V, p: i64) -> Result<V, String> {
    match p {
        1 => Ok(y),
        2 => cx.un(Op::Sqrt, y),
        _ => {
            let e = cx.scalar_like(y, 1.0 / p as f64);
            cx.bin(Op::Pow, y, e)
        }
    }
}

/// (sum over the window of |x|^p)^(1/p): a padding-inclusive mean times the window size
/// (padding adds zeros to the sum).
fn lp_pool(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let p = cx.attr_i("p", 2)?;
    if p <= 0 {
        return Err(format!("attribute `p` = {p} must be positive"));
    }
    let mut a = pool_attrs(cx, x)?;
    if a.get("ceil_mode") == Some(&Attr::Bool(true)) {
        return Err("ceil_mode is not supported (partial windows)".into());
    }
    a.insert("count_include_pad".into(), Attr::Bool(true));
    let k: i64 = match a.get("kernel") {
        Some(Attr::Ints(k)) => k.iter().product(),
        _ => 1,
    };
    let xp = abs_pow(cx, x, p)?;
    let m = cx.op(Op::AvgPool, &[xp], a)?;
    let kk = cx.scalar_like(x, k as f64);
    let s = cx.bin(Op::Mul, m, kk)?;
    Ok(vec![root(cx, s, p)?])
}

fn spatial_axes(cx: &NodeCtx, x: V) -> Result<Vec<i64>, String> {
    let r = cx.rank(x) as i64;
    if r < 3 {
        return Err(format!(
            "input X must be [N, C, spatial...], got {}",
            cx.ty(x)
        ));
    }
    Ok((2..r).collect())
}

fn global(cx: &mut NodeCtx, op: Op) -> R {
    let x = cx.input(0)?;
    let axes = spatial_axes(cx, x)?;
    Ok(vec![cx.op(
        op,
        &[x],
        attrs([("axes", Attr::Ints(axes)), ("keepdims", Attr::Bool(true))]),
    )?])
}

fn global_lp(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let p = cx.attr_i("p", 2)?;
    let axes = spatial_axes(cx, x)?;
    let xp = abs_pow(cx, x, p)?;
    let s = cx.op(
        Op::ReduceSum,
        &[xp],
        attrs([("axes", Attr::Ints(axes)), ("keepdims", Attr::Bool(true))]),
    )?;
    Ok(vec![root(cx, s, p)?])
}

/// A constant float list input (absent or empty = None).
fn opt_floats(cx: &mut NodeCtx, i: usize, what: &str) -> Result<Option<Vec<f64>>, String> {
    if !cx.has_input(i) {
        return Ok(None);
    }
    let t = cx.const_input(i, what)?;
    Ok((t.numel() > 0).then(|| t.to_f64()))
}

/// `Resize`: sizes or scales (on all axes or `axes`), `keep_aspect_ratio_policy` and
/// the roi resolved here into the IR op's full-rank `sizes`, `scales` and `roi`.
fn resize(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let shape = cx.shape(x).clone();
    let r = shape.rank();
    let (roi_in, scales_in, sizes_in) = if cx.opset < 11 {
        (None, opt_floats(cx, 1, "scales")?, None)
    } else {
        let sizes = if cx.has_input(3) {
            let t = cx.const_input(3, "sizes")?;
            (t.numel() > 0).then(|| t.to_i64())
        } else {
            None
        };
        (
            opt_floats(cx, 1, "roi")?,
            opt_floats(cx, 2, "scales")?,
            sizes,
        )
    };
    let axes: Vec<usize> = match cx.attr_ints("axes")? {
        Some(a) => a
            .iter()
            .map(|&v| super::tensor::norm_axis(v, r, "attribute `axes`"))
            .collect::<Result<_, _>>()?,
        None => (0..r).collect(),
    };
    let dim = |d: usize| -> Result<i64, String> {
        shape.0[d]
            .as_const()
            .ok_or_else(|| format!("resized dim {d} ({}) must be constant", shape.0[d]))
    };
    let mut scales = vec![1.0f64; r];
    let mut sizes: Vec<llmc_ir::Dim> = shape.0.clone();
    match (sizes_in, scales_in) {
        (Some(sz), _) => {
            if sz.len() != axes.len() {
                return Err(format!(
                    "input sizes {sz:?} must hold one value per axis of {axes:?}"
                ));
            }
            for (k, &d) in axes.iter().enumerate() {
                scales[d] = sz[k] as f64 / dim(d)? as f64;
                sizes[d] = llmc_ir::Dim::c(sz[k]);
            }
            let policy = cx
                .attr_s("keep_aspect_ratio_policy")?
                .unwrap_or_else(|| "stretch".into());
            if policy != "stretch" {
                let it = axes.iter().map(|&d| scales[d]);
                let s = match policy.as_str() {
                    "not_larger" => it.fold(f64::INFINITY, f64::min),
                    "not_smaller" => it.fold(f64::NEG_INFINITY, f64::max),
                    other => {
                        return Err(format!(
                            "attribute `keep_aspect_ratio_policy` = {other:?} is unknown"
                        ))
                    }
                };
                for &d in &axes {
                    scales[d] = s;
                    sizes[d] = llmc_ir::Dim::c((s * dim(d)? as f64 + 0.5) as i64);
                }
            }
        }
        (None, Some(sc)) => {
            if sc.len() != axes.len() {
                return Err(format!(
                    "input scales {sc:?} must hold one value per axis of {axes:?}"
                ));
            }
            for (k, &d) in axes.iter().enumerate() {
                scales[d] = sc[k];
                if sc[k] != 1.0 || shape.0[d].is_const() {
                    sizes[d] = llmc_ir::Dim::c((sc[k] * dim(d)? as f64) as i64);
                }
            }
        }
        (None, None) => return Err("needs input scales or sizes".into()),
    }
    let mut a = attrs([
        ("sizes", Attr::Shape(llmc_ir::Shape(sizes))),
        ("scales", Attr::Floats(scales)),
    ]);
    if let Some(roi) = roi_in {
        if roi.len() != 2 * axes.len() {
            return Err(format!(
                "input roi {roi:?} must hold two values per axis of {axes:?}"
            ));
        }
        let mut full = vec![0.0; r];
        full.extend(vec![1.0; r]);
        for (k, &d) in axes.iter().enumerate() {
            full[d] = roi[k];
            full[r + d] = roi[axes.len() + k];
        }
        a.insert("roi".into(), Attr::Floats(full));
    }
    let mode = cx.attr_s("mode")?.unwrap_or_else(|| "nearest".into());
    a.insert("mode".into(), Attr::Str(mode));
    if cx.opset < 11 {
        a.insert(
            "coordinate_transformation_mode".into(),
            Attr::Str("asymmetric".into()),
        );
        a.insert("nearest_mode".into(), Attr::Str("floor".into()));
    } else {
        for name in ["coordinate_transformation_mode", "nearest_mode"] {
            if let Some(v) = cx.attr_s(name)? {
                a.insert(name.into(), Attr::Str(v));
            }
        }
        for name in ["cubic_coeff_a", "extrapolation_value"] {
            if let Some(v) = cx.attr_opt_f(name)? {
                a.insert(name.into(), Attr::Float(v));
            }
        }
        for name in ["exclude_outside", "antialias"] {
            a.insert(name.into(), Attr::Bool(cx.attr_i(name, 0)? != 0));
        }
    }
    if !a.contains_key("roi")
        && a.get("coordinate_transformation_mode") == Some(&Attr::Str("tf_crop_and_resize".into()))
    {
        return Err("tf_crop_and_resize needs input roi".into());
    }
    Ok(vec![cx.op(Op::Resize, &[x], a)?])
}

/// `Upsample` (before opset 10): a resize with asymmetric coordinates, nearest = floor.
fn upsample(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let scales = match cx.attr_floats("scales")? {
        Some(s) => s,
        None => opt_floats(cx, 1, "scales")?.ok_or("needs scales")?,
    };
    let shape = cx.static_shape(x, "input X")?;
    if scales.len() != shape.len() {
        return Err(format!(
            "scales {scales:?} must hold one value per dim of X {shape:?}"
        ));
    }
    let sizes: Vec<i64> = shape
        .iter()
        .zip(&scales)
        .map(|(&d, &s)| (d as f64 * s) as i64)
        .collect();
    let mode = cx.attr_s("mode")?.unwrap_or_else(|| "nearest".into());
    let a = attrs([
        ("sizes", Attr::Shape(llmc_ir::Shape::of(&sizes))),
        ("scales", Attr::Floats(scales)),
        ("mode", Attr::Str(mode)),
        (
            "coordinate_transformation_mode",
            Attr::Str("asymmetric".into()),
        ),
        ("nearest_mode", Attr::Str("floor".into())),
    ]);
    Ok(vec![cx.op(Op::Resize, &[x], a)?])
}
