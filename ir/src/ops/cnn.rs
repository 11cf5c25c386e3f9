//! Convolution and pooling over any number of spatial dims, channels-first
//! (`[N, C, D1, D2, ...]`): conv, conv_transpose, max_pool, avg_pool. ONNX semantics
//! with explicit pads (`pads` = [begin_1.., end_1..]); the frontend resolves `auto_pad`
//! and `output_shape` into pads. Shape rules need constant spatial dims (the batch may
//! be symbolic). The reference loops accumulate in f64.

use super::util::{
    arg, checked_numel, floats, for_each_coord, need_float, need_numeric, opt_bool, opt_int,
    opt_ints, req_ints, targ, R, T,
};
use crate::interp::EvalCtx;
use crate::tensor::{strides, Data};
use crate::{Attrs, Dim, Shape, Tensor, TensorType};

/// The sliding-window geometry shared by every op of the family.
struct Window {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    pad_begin: Vec<usize>,
    pad_end: Vec<usize>,
}

impl Window {
    fn eff(&self, d: usize) -> usize {
        (self.kernel[d] - 1) * self.dilations[d] + 1
    }
}

/// Window sizes, strides, dilations and pads above this are rejected (they only arise
/// from corrupt attributes, and keep the window arithmetic far from overflow).
const MAX_WINDOW: i64 = 1 << 24;

/// A list attribute of `n` positive values (default all `default`).
fn positive(a: &Attrs, name: &str, n: usize, default: i64) -> Result<Vec<usize>, String> {
    let v = opt_ints(a, name)?
        .map(|v| v.to_vec())
        .unwrap_or(vec![default; n]);
    if v.len() != n || v.iter().any(|&x| x <= 0 || x > MAX_WINDOW) {
        return Err(format!(
            "attribute `{name}` {v:?} must hold {n} positive values (one per spatial dim)"
        ));
    }
    Ok(v.into_iter().map(|x| x as usize).collect())
}

fn window(a: &Attrs, kernel: Vec<i64>) -> Result<Window, String> {
    let n = kernel.len();
    if kernel.iter().any(|&k| k <= 0 || k > MAX_WINDOW) {
        return Err(format!("kernel {kernel:?} must be positive"));
    }
    let pads = opt_ints(a, "pads")?
        .map(|v| v.to_vec())
        .unwrap_or(vec![0; 2 * n]);
    if pads.len() != 2 * n || pads.iter().any(|&p| !(0..=MAX_WINDOW).contains(&p)) {
        return Err(format!(
            "attribute `pads` {pads:?} must hold {} non-negative values (begins, then ends)",
            2 * n
        ));
    }
    Ok(Window {
        kernel: kernel.into_iter().map(|k| k as usize).collect(),
        strides: positive(a, "strides", n, 1)?,
        dilations: positive(a, "dilations", n, 1)?,
        pad_begin: pads[..n].iter().map(|&p| p as usize).collect(),
        pad_end: pads[n..].iter().map(|&p| p as usize).collect(),
    })
}

/// Constant spatial dims of an operand type.
fn spatial(t: &TensorType, what: &str) -> Result<Vec<usize>, String> {
    if t.shape.rank() < 3 {
        return Err(format!(
            "{what} must be [N, C, spatial...] (rank >= 3), got {}",
            t.shape
        ));
    }
    t.shape.0[2..]
        .iter()
        .map(|d| {
            d.as_const()
                .filter(|&v| v >= 0)
                .map(|v| v as usize)
                .ok_or_else(|| format!("{what} {}: spatial dims must be constant", t.shape))
        })
        .collect()
}

/// Output lengths of a forward window (conv, pools).
fn out_dims(inp: &[usize], w: &Window, ceil: bool) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(inp.len());
    for (d, &len) in inp.iter().enumerate() {
        let padded = len + w.pad_begin[d] + w.pad_end[d];
        let eff = w.eff(d);
        if padded < eff {
            return Err(format!(
                "spatial dim {d}: padded size {padded} is smaller than the window {eff}"
            ));
        }
        let s = w.strides[d];
        let mut o = if ceil {
            (padded - eff).div_ceil(s) + 1
        } else {
            (padded - eff) / s + 1
        };
        // The last window must start inside the input or its begin padding.
        if ceil && (o - 1) * s >= len + w.pad_begin[d] {
            o -= 1;
        }
        out.push(o);
    }
    Ok(out)
}

fn kernel_of(a: &Attrs) -> Result<Vec<i64>, String> {
    Ok(req_ints(a, "kernel")?.to_vec())
}

fn group_of(a: &Attrs) -> Result<usize, String> {
    match opt_int(a, "group")?.unwrap_or(1) {
        g if g > 0 => Ok(g as usize),
        g => Err(format!("attribute `group` = {g} must be positive")),
    }
}

fn dims_of(n: &Dim, c: usize, sp: &[usize]) -> Shape {
    let mut d = vec![n.clone(), Dim::c(c as i64)];
    d.extend(sp.iter().map(|&v| Dim::c(v as i64)));
    Shape(d)
}

/// Checks x, w (and b) of a conv-like op; returns (C, M, kernel dims of w).
fn check_weights(
    i: &[&TensorType],
    transpose: bool,
    group: usize,
) -> Result<(usize, usize, Vec<i64>), String> {
    let (x, w) = (targ(i, 0, "x")?, targ(i, 1, "w")?);
    need_float(x, "operand x")?;
    if w.dtype.compute_type() != x.dtype {
        return Err(format!("operand w is {}, x is {}", w.dtype, x.dtype));
    }
    if x.shape.rank() < 3 || w.shape.rank() != x.shape.rank() {
        return Err(format!(
            "operand w {} must have the rank of x {} (>= 3)",
            w.shape, x.shape
        ));
    }
    let wd = w
        .shape
        .as_consts()
        .ok_or_else(|| format!("operand w {} must have a constant shape", w.shape))?;
    let c = x.shape.0[1]
        .as_const()
        .ok_or_else(|| format!("x {}: the channel dim must be constant", x.shape))?
        as usize;
    if !c.is_multiple_of(group) {
        return Err(format!(
            "{c} input channels do not split into {group} groups"
        ));
    }
    let m = if transpose {
        if wd[0] as usize != c {
            return Err(format!("w {} must be [C = {c}, M / group, ...]", w.shape));
        }
        wd[1] as usize * group
    } else {
        if wd[1] as usize * group != c {
            return Err(format!(
                "w {} must be [M, C / group = {}, ...]",
                w.shape,
                c / group
            ));
        }
        if !(wd[0] as usize).is_multiple_of(group) {
            return Err(format!(
                "{} output channels do not split into {group} groups",
                wd[0]
            ));
        }
        wd[0] as usize
    };
    if let Some(b) = i.get(2) {
        if b.dtype.compute_type() != x.dtype || b.shape.0[..] != [Dim::c(m as i64)] {
            return Err(format!("bias b must be {}[{m}], got {b}", x.dtype));
        }
    }
    Ok((c, m, wd[2..].to_vec()))
}

// ----- conv -----

/// x and w of a conv must both be [_, _, spatial...] of the same rank.
fn conv_ranks(x: &Tensor, w: &Tensor) -> Result<(), String> {
    if x.shape.len() < 3 || w.shape.len() != x.shape.len() {
        return Err(format!(
            "x {:?} and w {:?} must have the same rank >= 3",
            x.shape, w.shape
        ));
    }
    Ok(())
}

/// Shape rule of `conv`: x[N, C, ...], w[M, C/group, k...], b[M] -> [N, M, out...].
pub fn infer_conv(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    let group = group_of(a)?;
    let (_, m, k) = check_weights(i, false, group)?;
    let w = window(a, k)?;
    let out = out_dims(&spatial(x, "operand x")?, &w, false)?;
    Ok(vec![TensorType::new(
        x.dtype,
        dims_of(&x.shape.0[0], m, &out),
    )])
}

/// Reference semantics of `conv`.
pub fn eval_conv(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let (xt, wt) = (arg(i, 0, "x")?, arg(i, 1, "w")?);
    let (x, wv) = (floats(xt, "operand x")?, floats(wt, "operand w")?);
    let group = group_of(a)?;
    conv_ranks(xt, wt)?;
    let (n, c, sp) = (xt.shape[0], xt.shape[1], &xt.shape[2..]);
    let m = wt.shape[0];
    let cg = wt.shape[1];
    if cg * group != c || m % group != 0 {
        return Err(format!(
            "x {:?} and w {:?} do not fit group {group}",
            xt.shape, wt.shape
        ));
    }
    let k: Vec<i64> = wt.shape[2..].iter().map(|&v| v as i64).collect();
    let w = window(a, k)?;
    let out = out_dims(sp, &w, false)?;
    let mut oshape = vec![n, m];
    oshape.extend(&out);
    let mut y = vec![0.0; checked_numel(&oshape)?];
    let bias = match i.get(2) {
        Some(b) if b.shape[..] == [m] => Some(floats(b, "bias b")?),
        Some(b) => return Err(format!("bias b must be [{m}], got {:?}", b.shape)),
        None => None,
    };
    let (xs, ws) = (strides(&xt.shape), strides(&wt.shape));
    let mg = m / group;
    let kshape = &wt.shape[2..];
    let mut flat = 0;
    for_each_coord(&oshape, |oc| {
        let (b, oc_m, o) = (oc[0], oc[1], &oc[2..]);
        let g = oc_m / mg;
        let mut acc = bias.map_or(0.0, |bv| bv[oc_m]);
        for ci in 0..cg {
            let xc = g * cg + ci;
            for_each_coord(kshape, |kc| {
                let mut xi = b * xs[0] + xc * xs[1];
                for d in 0..kc.len() {
                    let p = (o[d] * w.strides[d] + kc[d] * w.dilations[d]) as i64
                        - w.pad_begin[d] as i64;
                    if p < 0 || p >= sp[d] as i64 {
                        return;
                    }
                    xi += p as usize * xs[2 + d];
                }
                let mut wi = oc_m * ws[0] + ci * ws[1];
                for d in 0..kc.len() {
                    wi += kc[d] * ws[2 + d];
                }
                acc += x[xi] * wv[wi];
            });
        }
        y[flat] = acc;
        flat += 1;
    });
    Ok(vec![Tensor::from_f64(xt.dtype, oshape, y)])
}

// ----- conv_transpose -----

fn out_padding(a: &Attrs, n: usize) -> Result<Vec<usize>, String> {
    let v = opt_ints(a, "output_padding")?
        .map(|v| v.to_vec())
        .unwrap_or(vec![0; n]);
    if v.len() != n || v.iter().any(|&p| !(0..=MAX_WINDOW).contains(&p)) {
        return Err(format!(
            "attribute `output_padding` {v:?} must hold {n} non-negative values"
        ));
    }
    Ok(v.into_iter().map(|p| p as usize).collect())
}

/// Output lengths of a transposed conv: s*(in-1) + output_padding + eff - pads.
fn transpose_dims(inp: &[usize], w: &Window, op: &[usize]) -> Result<Vec<usize>, String> {
    (0..inp.len())
        .map(|d| {
            let full = w.strides[d] * inp[d].saturating_sub(1) + op[d] + w.eff(d);
            full.checked_sub(w.pad_begin[d] + w.pad_end[d])
                .filter(|&v| v > 0)
                .ok_or_else(|| format!("spatial dim {d}: pads remove the whole output ({full})"))
        })
        .collect()
}

/// Shape rule of `conv_transpose`: x[N, C, ...], w[C, M/group, k...], b[M].
pub fn infer_conv_transpose(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    let group = group_of(a)?;
    let (_, m, k) = check_weights(i, true, group)?;
    let n = k.len();
    let w = window(a, k)?;
    let out = transpose_dims(&spatial(x, "operand x")?, &w, &out_padding(a, n)?)?;
    Ok(vec![TensorType::new(
        x.dtype,
        dims_of(&x.shape.0[0], m, &out),
    )])
}

/// Reference semantics of `conv_transpose`: every input element scatters its kernel
/// footprint into the output.
pub fn eval_conv_transpose(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let (xt, wt) = (arg(i, 0, "x")?, arg(i, 1, "w")?);
    let (x, wv) = (floats(xt, "operand x")?, floats(wt, "operand w")?);
    let group = group_of(a)?;
    conv_ranks(xt, wt)?;
    let (n, c, sp) = (xt.shape[0], xt.shape[1], &xt.shape[2..]);
    if wt.shape[0] != c || c % group != 0 {
        return Err(format!(
            "x {:?} and w {:?} do not fit group {group}",
            xt.shape, wt.shape
        ));
    }
    let mg = wt.shape[1];
    let m = mg * group;
    let cg = c / group;
    let k: Vec<i64> = wt.shape[2..].iter().map(|&v| v as i64).collect();
    let nsp = k.len();
    let w = window(a, k)?;
    let out = transpose_dims(sp, &w, &out_padding(a, nsp)?)?;
    let mut oshape = vec![n, m];
    oshape.extend(&out);
    let mut y = vec![0.0; checked_numel(&oshape)?];
    let (ws, ys) = (strides(&wt.shape), strides(&oshape));
    let kshape = &wt.shape[2..];
    let mut flat = 0;
    for_each_coord(&xt.shape, |xc| {
        let v = x[flat];
        flat += 1;
        let (b, ci, ipos) = (xc[0], xc[1], &xc[2..]);
        let g = ci / cg;
        for mo in 0..mg {
            let oc_m = g * mg + mo;
            for_each_coord(kshape, |kc| {
                let mut yi = b * ys[0] + oc_m * ys[1];
                for d in 0..nsp {
                    let p = (ipos[d] * w.strides[d] + kc[d] * w.dilations[d]) as i64
                        - w.pad_begin[d] as i64;
                    if p < 0 || p >= out[d] as i64 {
                        return;
                    }
                    yi += p as usize * ys[2 + d];
                }
                let mut wi = ci * ws[0] + mo * ws[1];
                for d in 0..nsp {
                    wi += kc[d] * ws[2 + d];
                }
                y[yi] += v * wv[wi];
            });
        }
    });
    if let Some(bt) = i.get(2) {
        if bt.shape[..] != [m] {
            return Err(format!("bias b must be [{m}], got {:?}", bt.shape));
        }
        let bv = floats(bt, "bias b")?;
        let per: usize = out.iter().product();
        for (j, yv) in y.iter_mut().enumerate() {
            *yv += bv[(j / per) % m];
        }
    }
    Ok(vec![Tensor::from_f64(xt.dtype, oshape, y)])
}

// ----- pools -----

fn infer_pool(i: &[&TensorType], a: &Attrs, float_only: bool) -> T {
    let x = targ(i, 0, "x")?;
    if float_only {
        need_float(x, "operand x")?;
    } else {
        need_numeric(x, "operand x")?;
    }
    let w = window(a, kernel_of(a)?)?;
    let sp = spatial(x, "operand x")?;
    if w.kernel.len() != sp.len() {
        return Err(format!(
            "attribute `kernel` {:?} must have one value per spatial dim of x {}",
            w.kernel, x.shape
        ));
    }
    let out = out_dims(&sp, &w, opt_bool(a, "ceil_mode", false)?)?;
    let c = x.shape.0[1].clone();
    let mut d = vec![x.shape.0[0].clone(), c];
    d.extend(out.iter().map(|&v| Dim::c(v as i64)));
    Ok(vec![TensorType::new(x.dtype.compute_type(), Shape(d))])
}

/// Shape rule of `max_pool`.
pub fn infer_max_pool(i: &[&TensorType], a: &Attrs) -> T {
    infer_pool(i, a, false)
}

/// Shape rule of `avg_pool`.
pub fn infer_avg_pool(i: &[&TensorType], a: &Attrs) -> T {
    infer_pool(i, a, true)
}

/// Runs `f(out_index, real input indices, window positions inside the padding)` for
/// every output position of a pool.
fn pool_windows(
    x: &Tensor,
    a: &Attrs,
    mut f: impl FnMut(usize, &[usize], usize),
) -> Result<Vec<usize>, String> {
    let w = window(a, kernel_of(a)?)?;
    if x.shape.len() < 3 || w.kernel.len() != x.shape.len() - 2 {
        return Err(format!(
            "kernel {:?} does not fit x {:?}",
            w.kernel, x.shape
        ));
    }
    let sp = &x.shape[2..];
    let out = out_dims(sp, &w, opt_bool(a, "ceil_mode", false)?)?;
    let mut oshape = x.shape[..2].to_vec();
    oshape.extend(&out);
    checked_numel(&oshape)?;
    let xs = strides(&x.shape);
    let mut flat = 0;
    let mut idx = Vec::new();
    for_each_coord(&oshape, |oc| {
        idx.clear();
        let mut in_pad = 0;
        let base = oc[0] * xs[0] + oc[1] * xs[1];
        for_each_coord(&w.kernel, |kc| {
            let mut xi = base;
            let mut real = true;
            for d in 0..kc.len() {
                let p = (oc[2 + d] * w.strides[d] + kc[d] * w.dilations[d]) as i64
                    - w.pad_begin[d] as i64;
                if p >= (sp[d] + w.pad_end[d]) as i64 {
                    return; // past the end padding (a ceil-mode overhang): not in the window
                }
                if p < 0 || p >= sp[d] as i64 {
                    real = false;
                } else {
                    xi += p as usize * xs[2 + d];
                }
            }
            if real {
                idx.push(xi);
            } else {
                in_pad += 1;
            }
        });
        f(flat, &idx, in_pad);
        flat += 1;
    });
    Ok(oshape)
}

/// Reference semantics of `max_pool` (padding never wins; NaN propagates).
pub fn eval_max_pool(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let x = arg(i, 0, "x")?;
    let mut fo = Vec::new();
    let mut io = Vec::new();
    let shape = match &x.data {
        Data::F(v) => pool_windows(x, a, |_, idx, _| {
            let mut m = f64::NEG_INFINITY;
            for &j in idx {
                if v[j].is_nan() || v[j] > m {
                    m = v[j];
                }
            }
            fo.push(m);
        })?,
        Data::I(v) => pool_windows(x, a, |_, idx, _| {
            io.push(idx.iter().map(|&j| v[j]).max().unwrap_or(i64::MIN));
        })?,
    };
    Ok(vec![if x.dtype.is_float() {
        Tensor::from_f64(x.dtype, shape, fo)
    } else {
        Tensor::from_i64(x.dtype, shape, io)
    }])
}

/// Reference semantics of `avg_pool`: the mean of the window's input elements, counting
/// padding positions as zeros when `count_include_pad`.
pub fn eval_avg_pool(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let x = arg(i, 0, "x")?;
    let v = floats(x, "operand x")?;
    let include = opt_bool(a, "count_include_pad", false)?;
    let mut out = Vec::new();
    let shape = pool_windows(x, a, |_, idx, pad| {
        let s: f64 = idx.iter().map(|&j| v[j]).sum();
        let n = idx.len() + if include { pad } else { 0 };
        out.push(if n == 0 { f64::NAN } else { s / n as f64 });
    })?;
    Ok(vec![Tensor::from_f64(x.dtype, shape, out)])
}

// ----- resize -----

/// The interpolation settings of a `resize`.
struct ResizeSpec<'a> {
    sizes: Vec<usize>,
    scales: Vec<f64>,
    roi: Option<Vec<f64>>,
    mode: &'a str,
    coord: &'a str,
    nearest: &'a str,
    cubic_a: f64,
    exclude_outside: bool,
    extrapolation: f64,
    antialias: bool,
}

/// The settings; `sizes` are the output dims, evaluated by the caller.
fn resize_spec(a: &Attrs, sizes: Vec<usize>) -> Result<ResizeSpec<'_>, String> {
    let rank = sizes.len();
    let scales = super::util::opt_floats(a, "scales")?
        .map(|v| v.to_vec())
        .unwrap_or_else(|| vec![1.0; rank]);
    if scales.len() != rank || scales.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
        return Err(format!(
            "attribute `scales` {scales:?} must hold {rank} positive values"
        ));
    }
    let roi = super::util::opt_floats(a, "roi")?.map(|v| v.to_vec());
    if roi.as_ref().is_some_and(|r| r.len() != 2 * rank) {
        return Err(format!(
            "attribute `roi` must hold {} values (starts, then ends)",
            2 * rank
        ));
    }
    let s = |name: &str, default: &'static str| -> Result<&str, String> {
        Ok(super::util::opt_str(a, name)?.unwrap_or(default))
    };
    let spec = ResizeSpec {
        sizes,
        scales,
        roi,
        mode: s("mode", "nearest")?,
        coord: s("coordinate_transformation_mode", "half_pixel")?,
        nearest: s("nearest_mode", "round_prefer_floor")?,
        cubic_a: super::util::opt_float(a, "cubic_coeff_a")?.unwrap_or(-0.75),
        exclude_outside: opt_bool(a, "exclude_outside", false)?,
        extrapolation: super::util::opt_float(a, "extrapolation_value")?.unwrap_or(0.0),
        antialias: opt_bool(a, "antialias", false)?,
    };
    if !matches!(spec.mode, "nearest" | "linear" | "cubic") {
        return Err(format!("attribute `mode` = {:?} is unknown", spec.mode));
    }
    if !matches!(
        spec.coord,
        "half_pixel"
            | "half_pixel_symmetric"
            | "pytorch_half_pixel"
            | "align_corners"
            | "asymmetric"
            | "tf_crop_and_resize"
    ) {
        return Err(format!(
            "attribute `coordinate_transformation_mode` = {:?} is unknown",
            spec.coord
        ));
    }
    if !matches!(
        spec.nearest,
        "round_prefer_floor" | "round_prefer_ceil" | "floor" | "ceil"
    ) {
        return Err(format!(
            "attribute `nearest_mode` = {:?} is unknown",
            spec.nearest
        ));
    }
    if spec.coord == "tf_crop_and_resize" && spec.roi.is_none() {
        return Err("coordinate_transformation_mode tf_crop_and_resize needs `roi`".into());
    }
    Ok(spec)
}

/// Shape rule of `resize`: the output dims are `sizes` (a symbolic dim may only pass
/// through unchanged, with scale 1).
pub fn infer_resize(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    need_numeric(x, "operand x")?;
    let sizes = super::util::req_shape(a, "sizes")?;
    if sizes.rank() != x.shape.rank() {
        return Err(format!(
            "attribute `sizes` {sizes} must have one dim per dim of x {}",
            x.shape
        ));
    }
    // Validate the other attributes with placeholder sizes.
    let spec = resize_spec(a, vec![1; sizes.rank()])?;
    for (d, (have, want)) in x.shape.0.iter().zip(&sizes.0).enumerate() {
        match want.as_const() {
            Some(v) if v < 0 => {
                return Err(format!("attribute `sizes` {sizes} has negative dim {want}"))
            }
            Some(_) => {}
            None if want == have && spec.scales[d] == 1.0 => {}
            None => {
                return Err(format!(
                    "dim {d}: symbolic dim {want} must pass through unchanged (scale 1)"
                ))
            }
        }
    }
    Ok(vec![TensorType::new(x.dtype.compute_type(), sizes.clone())])
}

/// Interpolation weights for fractional offset `ratio` in (0, 1].
fn resize_coeffs(spec: &ResizeSpec, ratio: f64, scale: f64) -> Vec<f64> {
    let a = spec.cubic_a;
    match (spec.mode, spec.antialias) {
        ("nearest", _) => {
            if ratio.fract() == 0.0 {
                return vec![0.0, 1.0];
            }
            let up = match spec.nearest {
                "round_prefer_floor" => ratio > 0.5,
                "round_prefer_ceil" => ratio >= 0.5,
                "floor" => false,
                _ => true,
            };
            if up {
                vec![0.0, 1.0]
            } else {
                vec![1.0, 0.0]
            }
        }
        ("linear", false) => vec![1.0 - ratio, ratio],
        ("linear", true) => {
            let s = scale.min(1.0);
            let start = (-1.0 / s).floor() as i64 + 1;
            let foot = 2 - 2 * start;
            let c: Vec<f64> = (start..start + foot)
                .map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0))
                .collect();
            let sum: f64 = c.iter().sum();
            c.into_iter().map(|v| v / sum).collect()
        }
        (_, false) => {
            let r1 = ratio + 1.0;
            let q = 1.0 - ratio;
            let q1 = q + 1.0;
            vec![
                ((a * r1 - 5.0 * a) * r1 + 8.0 * a) * r1 - 4.0 * a,
                ((a + 2.0) * ratio - (a + 3.0)) * ratio * ratio + 1.0,
                ((a + 2.0) * q - (a + 3.0)) * q * q + 1.0,
                ((a * q1 - 5.0 * a) * q1 + 8.0 * a) * q1 - 4.0 * a,
            ]
        }
        (_, true) => {
            let s = scale.min(1.0);
            let k = |x: f64| {
                let x = x.abs();
                let (x2, x3) = (x * x, x * x * x);
                if x <= 1.0 {
                    (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
                } else if x < 2.0 {
                    a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
                } else {
                    0.0
                }
            };
            let start = (-2.0 / s).floor() as i64 + 1;
            let end = 2 - start;
            let c: Vec<f64> = (start..end).map(|i| k(s * (i as f64 - ratio))).collect();
            let sum: f64 = c.iter().sum();
            c.into_iter().map(|v| v / sum).collect()
        }
    }
}

/// Resizes `data` (of `shape`) along `axis` to `out` elements.
fn resize_axis(
    data: &[f64],
    shape: &[usize],
    axis: usize,
    out: usize,
    spec: &ResizeSpec,
) -> (Vec<f64>, Vec<usize>) {
    let inw = shape[axis];
    let scale = spec.scales[axis];
    let outw = scale * inw as f64;
    let roi = spec.roi.as_ref().map(|r| (r[axis], r[shape.len() + axis]));
    // Per output position: (taps as (input index, weight), extrapolated?).
    let mut taps: Vec<(Vec<(usize, f64)>, bool)> = Vec::with_capacity(out);
    for y in 0..out {
        let yf = y as f64;
        let mut extrapolated = false;
        let x = match spec.coord {
            "align_corners" => {
                if outw == 1.0 {
                    0.0
                } else {
                    yf * (inw as f64 - 1.0) / (outw - 1.0)
                }
            }
            "asymmetric" => yf / scale,
            "tf_crop_and_resize" => {
                let (r0, r1) = roi.unwrap_or((0.0, 1.0));
                let x = if outw == 1.0 {
                    (r1 - r0) * (inw as f64 - 1.0) / 2.0
                } else {
                    yf * (r1 - r0) * (inw as f64 - 1.0) / (outw - 1.0)
                } + r0 * (inw as f64 - 1.0);
                extrapolated = x < 0.0 || x > inw as f64 - 1.0;
                x
            }
            "pytorch_half_pixel" => {
                if outw == 1.0 {
                    -0.5
                } else {
                    (yf + 0.5) / scale - 0.5
                }
            }
            "half_pixel_symmetric" => {
                let adjustment = out as f64 / outw;
                let center = inw as f64 / 2.0;
                center * (1.0 - adjustment) + (yf + 0.5) / scale - 0.5
            }
            _ => (yf + 0.5) / scale - 0.5,
        };
        let xi = x.floor();
        let ratio = if x == xi { 1.0 } else { x - xi };
        let mut coeffs = resize_coeffs(spec, ratio, scale);
        let n = coeffs.len() as i64;
        let pad = (n + 1) / 2;
        let xp = x + pad as f64;
        let p = xp.floor() as i64;
        let frac = xp - p as f64;
        let off = if n % 2 == 0 {
            if frac == 0.0 {
                -(n / 2)
            } else {
                -(n / 2) + 1
            }
        } else {
            let base = -((n - 1) / 2);
            if frac <= 0.5 {
                base
            } else {
                base + 1
            }
        };
        let start = p + off - pad;
        if spec.exclude_outside {
            for (k, c) in coeffs.iter_mut().enumerate() {
                let idx = start + k as i64;
                if idx < 0 || idx >= inw as i64 {
                    *c = 0.0;
                }
            }
            let s: f64 = coeffs.iter().sum();
            let s = if s == 0.0 { 1.0 } else { s };
            coeffs.iter_mut().for_each(|c| *c /= s);
        }
        let t = coeffs
            .iter()
            .enumerate()
            .map(|(k, &c)| ((start + k as i64).clamp(0, inw as i64 - 1) as usize, c))
            .collect();
        taps.push((t, extrapolated));
    }
    let mut oshape = shape.to_vec();
    oshape[axis] = out;
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut res = vec![0.0; outer * out * inner];
    for o in 0..outer {
        for (y, (t, ext)) in taps.iter().enumerate() {
            for i in 0..inner {
                let v = if *ext {
                    spec.extrapolation
                } else {
                    t.iter()
                        .map(|&(j, c)| c * data[(o * inw + j) * inner + i])
                        .sum()
                };
                res[(o * out + y) * inner + i] = v;
            }
        }
    }
    (res, oshape)
}

/// Reference semantics of `resize`: separable 1-D interpolation along each resized
/// axis, in f64, as the ONNX reference computes it; integers round and saturate.
pub fn eval_resize(i: &[&Tensor], a: &Attrs, ctx: &mut EvalCtx) -> R {
    let x = arg(i, 0, "x")?;
    if x.dtype == crate::DType::Bool {
        return Err("operand x must be numeric, got bool".into());
    }
    let rank = x.shape.len();
    let sizes = super::util::eval_shape(
        super::util::req_shape(a, "sizes")?,
        ctx,
        "attribute `sizes`",
    )?;
    if sizes.len() != rank {
        return Err(format!(
            "attribute `sizes` {sizes:?} does not match x {:?}",
            x.shape
        ));
    }
    let spec = resize_spec(a, sizes)?;
    let mut data = x.to_f64();
    let mut shape = x.shape.clone();
    for axis in 0..rank {
        let out = spec.sizes[axis];
        let roi_default = spec
            .roi
            .as_ref()
            .is_none_or(|r| (r[axis] - 0.0).abs() < 1e-9 && (r[rank + axis] - 1.0).abs() < 1e-9);
        if (spec.scales[axis] - 1.0).abs() <= 1e-9 && out == shape[axis] && roi_default {
            continue;
        }
        if shape[axis] == 0 {
            return Err(format!("cannot resize the empty axis {axis}"));
        }
        (data, shape) = resize_axis(&data, &shape, axis, out, &spec);
    }
    Ok(vec![if x.dtype.is_float() {
        Tensor::from_f64(x.dtype, shape, data)
    } else {
        let (lo, hi) = int_range(x.dtype);
        let v = data
            .into_iter()
            .map(|v| v.round_ties_even().clamp(lo, hi) as i64)
            .collect();
        Tensor::from_i64(x.dtype, shape, v)
    }])
}

fn int_range(d: crate::DType) -> (f64, f64) {
    use crate::DType as D;
    match d {
        D::U8 => (0.0, 255.0),
        D::I8 => (-128.0, 127.0),
        D::I16 => (i16::MIN as f64, i16::MAX as f64),
        D::U16 => (0.0, u16::MAX as f64),
        D::U32 => (0.0, u32::MAX as f64),
        D::I32 => (i32::MIN as f64, i32::MAX as f64),
        _ => (i64::MIN as f64, i64::MAX as f64),
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::util::testing::*;
    use crate::{attrs, Attr, DType, Op};

    #[test]
    fn conv_shapes_and_errors() {
        let x = tt(DType::F32, &["batch", "4", "5", "5"]);
        let w = tt(DType::F32, &["6", "2", "3", "3"]);
        let a = attrs([
            ("group", Attr::Int(2)),
            ("strides", Attr::Ints(vec![2, 2])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
        ]);
        assert_eq!(
            inf(Op::Conv, &[&x, &w], a).unwrap()[0].to_string(),
            "f32[batch, 6, 3, 3]"
        );
        let e = inf(Op::Conv, &[&x, &w], attrs([])).unwrap_err();
        assert!(e.contains("C / group"), "{e}");
        let e = inf(
            Op::Conv,
            &[&x, &w],
            attrs([("group", Attr::Int(2)), ("pads", Attr::Ints(vec![1]))]),
        )
        .unwrap_err();
        assert!(e.contains("`pads`"), "{e}");
    }

    #[test]
    fn pool_ceil_mode_drops_windows_starting_in_the_end_padding() {
        let x = tt(DType::F32, &["1", "1", "5"]);
        let a = attrs([
            ("kernel", Attr::Ints(vec![2])),
            ("strides", Attr::Ints(vec![2])),
            ("ceil_mode", Attr::Bool(true)),
        ]);
        assert_eq!(
            inf(Op::MaxPool, &[&x], a.clone()).unwrap()[0].to_string(),
            "f32[1, 1, 3]"
        );
        let t = tf(&[1, 1, 5], &[1.0, 5.0, 2.0, 4.0, 3.0]);
        assert_eq!(
            ev1(Op::MaxPool, &[&t], a.clone()).to_f64(),
            vec![5.0, 4.0, 3.0]
        );
        assert_eq!(ev1(Op::AvgPool, &[&t], a).to_f64(), vec![3.0, 3.0, 3.0]);
    }
}
