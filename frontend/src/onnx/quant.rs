//! Linear quantization: `QuantizeLinear`, `DequantizeLinear` (per-tensor, per-axis and
//! blocked scales), `DynamicQuantizeLinear`, `QLinearMatMul` and `QLinearConv`, written
//! with casts, rounding (half to even) and clipping the way the ONNX reference computes
//! them. Integer targets only (int8/uint8/int16/uint16/int32).

use super::import::{NodeCtx, V};
use super::registry::Registry;
use super::tensor::{norm_axis, reshape_to};
use llmc_ir::{attrs, Attr, Attrs, DType, Dim, Op, Shape};

type R = Result<Vec<V>, String>;

/// Adds this family's converters.
pub fn register(r: &mut Registry) {
    r.add("QuantizeLinear", quantize);
    r.add("DequantizeLinear", dequantize);
    r.add("DynamicQuantizeLinear", dynamic_quantize);
    r.add("QLinearMatMul", qlinear_matmul);
    r.add("QLinearConv", qlinear_conv);
}

/// The integer range of a quantized type.
fn range_of(d: DType) -> Result<(f64, f64), String> {
    Ok(match d {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        DType::U16 => (0.0, 65535.0),
        DType::I16 => (-32768.0, 32767.0),
        DType::I32 => (i32::MIN as f64, i32::MAX as f64),
        DType::U32 => (0.0, u32::MAX as f64),
        other => {
            return Err(format!(
                "quantized type {other} is not supported (int8/uint8/int16/uint16/int32)"
            ))
        }
    })
}

/// Makes a scale or zero point broadcast against `x`: a scalar (or 1-element) stays a
/// scalar; a 1-D one lies along `axis`; a blocked one is repeated `block` times along
/// `axis` and cut to x's length.
fn fit(cx: &mut NodeCtx, p: V, x: V, axis: i64, block: i64) -> Result<V, String> {
    let r = cx.rank(x);
    if cx.shape(p).numel().as_const() == Some(1) {
        return reshape_to(cx, p, vec![]);
    }
    let ax = norm_axis(axis, r, "attribute `axis`")?;
    if block <= 0 {
        if cx.rank(p) != 1 {
            return Err(format!("a per-axis scale must be 1-D, got {}", cx.ty(p)));
        }
        let mut dims = vec![Dim::c(1); r];
        dims[ax] = cx.shape(p).0[0].clone();
        return reshape_to(cx, p, dims);
    }
    let ps = cx.static_shape(p, "blocked scale")?;
    let xs = cx.static_shape(x, "input x")?;
    if ps.len() != r {
        return Err(format!("a blocked scale must have x's rank, got {ps:?}"));
    }
    let u = cx.op(
        Op::Unsqueeze,
        &[p],
        attrs([("axes", Attr::Ints(vec![ax as i64 + 1]))]),
    )?;
    let mut e: Vec<i64> = ps.iter().map(|&v| v as i64).collect();
    e.insert(ax + 1, block);
    let u = cx.op(
        Op::Expand,
        &[u],
        attrs([("shape", Attr::Shape(Shape::of(&e)))]),
    )?;
    let mut m: Vec<Dim> = ps.iter().map(|&v| Dim::c(v as i64)).collect();
    m[ax] = Dim::c(ps[ax] as i64 * block);
    let u = reshape_to(cx, u, m)?;
    cx.op(
        Op::Slice,
        &[u],
        attrs([
            ("starts", Attr::Ints(vec![0])),
            ("ends", Attr::Ints(vec![xs[ax] as i64])),
            ("axes", Attr::Ints(vec![ax as i64])),
        ]),
    )
}

/// clip(v, lo, hi) then cast.
fn saturate(cx: &mut NodeCtx, v: V, to: DType) -> Result<V, String> {
    let (lo, hi) = range_of(to)?;
    let c = cx.op(
        Op::Clip,
        &[v],
        attrs([("min", Attr::Float(lo)), ("max", Attr::Float(hi))]),
    )?;
    cx.cast(c, to)
}

fn quantize(cx: &mut NodeCtx) -> R {
    let (x, s) = (cx.input(0)?, cx.input(1)?);
    let zp = cx.opt_input(2)?;
    let axis = cx.attr_i("axis", 1)?;
    let block = cx.attr_i("block_size", 0)?;
    let to = match zp {
        Some(z) => cx.dtype(z),
        None => match cx.attr_opt_i("output_dtype")? {
            Some(c) if c != 0 => super::data::dtype_of(c as i32)?,
            _ => DType::U8,
        },
    };
    range_of(to)?;
    let s = fit(cx, s, x, axis, block)?;
    let dt = cx.dtype(x);
    let s = cx.cast(s, dt)?;
    let q = cx.bin(Op::Div, x, s)?;
    let q = cx.un(Op::Round, q)?;
    let q = cx.cast(q, DType::F64)?;
    let q = match zp {
        Some(z) => {
            let z = fit(cx, z, x, axis, block)?;
            let z = cx.cast(z, DType::F64)?;
            cx.bin(Op::Add, q, z)?
        }
        None => q,
    };
    Ok(vec![saturate(cx, q, to)?])
}

fn dequantize(cx: &mut NodeCtx) -> R {
    let (x, s) = (cx.input(0)?, cx.input(1)?);
    let zp = cx.opt_input(2)?;
    let axis = cx.attr_i("axis", 1)?;
    let block = cx.attr_i("block_size", 0)?;
    range_of(cx.dtype(x))?;
    let out = match cx.attr_opt_i("output_dtype")? {
        Some(c) if c != 0 => super::data::dtype_of(c as i32)?,
        _ => cx.dtype(s),
    };
    let xf = cx.cast(x, DType::F32)?;
    let d = match zp {
        Some(z) => {
            let z = fit(cx, z, x, axis, block)?;
            let z = cx.cast(z, DType::F32)?;
            cx.bin(Op::Sub, xf, z)?
        }
        None => xf,
    };
    let s = fit(cx, s, x, axis, block)?;
    let s = cx.cast(s, DType::F32)?;
    let y = cx.bin(Op::Mul, d, s)?;
    Ok(vec![cx.cast(y, out)?])
}

/// y = saturate(round(x / scale) + zp) with scale and zp from x's range (including 0).
fn dynamic_quantize(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let all = || attrs([("keepdims", Attr::Bool(false))]);
    let zero = cx.scalar(DType::F32, 0.0);
    let mx = cx.op(Op::ReduceMax, &[x], all())?;
    let mn = cx.op(Op::ReduceMin, &[x], all())?;
    let mx = cx.bin(Op::Max, mx, zero)?;
    let mn = cx.bin(Op::Min, mn, zero)?;
    let span = cx.bin(Op::Sub, mx, mn)?;
    // An all-zero range scales by 1.
    let is0 = cx.bin(Op::Equal, span, zero)?;
    let one = cx.scalar(DType::F32, 1.0);
    let span = cx.op(Op::Where, &[is0, one, span], Attrs::new())?;
    let k = cx.scalar(DType::F32, 255.0);
    let scale = cx.bin(Op::Div, span, k)?;
    let mns = cx.bin(Op::Div, mn, scale)?;
    let zp = cx.bin(Op::Sub, zero, mns)?;
    let zp = cx.op(
        Op::Clip,
        &[zp],
        attrs([("min", Attr::Float(0.0)), ("max", Attr::Float(255.0))]),
    )?;
    let zp = cx.un(Op::Round, zp)?;
    let q = cx.bin(Op::Div, x, scale)?;
    let q = cx.un(Op::Round, q)?;
    let q = cx.bin(Op::Add, q, zp)?;
    let y = saturate(cx, q, DType::U8)?;
    let zpu = cx.cast(zp, DType::U8)?;
    Ok(vec![y, scale, zpu])
}

/// (a - a_zp) integer op (b - b_zp), rescaled by a_scale * b_scale / y_scale, plus y_zp.
fn requantize(
    cx: &mut NodeCtx,
    acc: V,
    a_scale: V,
    b_scale: V,
    y_scale: V,
    y_zp: Option<V>,
    out: DType,
) -> Result<V, String> {
    // The factor is computed in the scales' type (f32), the rest in f64.
    let f = cx.bin(Op::Mul, a_scale, b_scale)?;
    let f = cx.bin(Op::Div, f, y_scale)?;
    let f = cx.cast(f, DType::F64)?;
    let c = cx.cast(acc, DType::F64)?;
    let mut d = cx.bin(Op::Mul, c, f)?;
    if let Some(z) = y_zp {
        let z = cx.cast(z, DType::F64)?;
        d = cx.bin(Op::Add, d, z)?;
    }
    let d = cx.un(Op::Round, d)?;
    saturate(cx, d, out)
}

/// x - zp in i32 (zp optional).
fn centered(cx: &mut NodeCtx, x: V, zp: Option<V>, per_row: bool) -> Result<V, String> {
    let xi = cx.cast(x, DType::I32)?;
    let Some(z) = zp else { return Ok(xi) };
    let z = cx.cast(z, DType::I32)?;
    let z = if per_row && cx.rank(z) == 1 && cx.shape(z).0[0].as_const() != Some(1) {
        let n = cx.shape(z).0[0].clone();
        reshape_to(cx, z, vec![n, Dim::c(1)])?
    } else {
        z
    };
    cx.bin(Op::Sub, xi, z)
}

fn row_param(cx: &mut NodeCtx, p: V) -> Result<V, String> {
    if cx.rank(p) == 1 && cx.shape(p).0[0].as_const() != Some(1) {
        let n = cx.shape(p).0[0].clone();
        reshape_to(cx, p, vec![n, Dim::c(1)])
    } else {
        Ok(p)
    }
}

fn qlinear_matmul(cx: &mut NodeCtx) -> R {
    let [a, a_s, a_z, b, b_s, b_z, y_s] = [0, 1, 2, 3, 4, 5, 6].map(|i| cx.input(i));
    let (a, a_s, a_z, b, b_s, b_z, y_s) = (a?, a_s?, a_z?, b?, b_s?, b_z?, y_s?);
    let y_z = cx.opt_input(7)?;
    let out = match y_z {
        Some(z) => cx.dtype(z),
        None => cx.dtype(a),
    };
    let ac = centered(cx, a, Some(a_z), true)?;
    let bc = centered(cx, b, Some(b_z), false)?;
    let acc = cx.bin(Op::MatMul, ac, bc)?;
    let a_s = row_param(cx, a_s)?;
    let y_s = row_param(cx, y_s)?;
    let y_z = match y_z {
        Some(z) => Some(row_param(cx, z)?),
        None => None,
    };
    Ok(vec![requantize(cx, acc, a_s, b_s, y_s, y_z, out)?])
}

fn qlinear_conv(cx: &mut NodeCtx) -> R {
    let [x, x_s, x_z, w, w_s, w_z, y_s] = [0, 1, 2, 3, 4, 5, 6].map(|i| cx.input(i));
    let (x, x_s, x_z, w, w_s, w_z, y_s) = (x?, x_s?, x_z?, w?, w_s?, w_z?, y_s?);
    let y_z = cx.opt_input(7)?;
    let bias = cx.opt_input(8)?;
    let out = match y_z {
        Some(z) => cx.dtype(z),
        None => cx.dtype(x),
    };
    // Integer conv done exactly in f64.
    let xc = centered(cx, x, Some(x_z), false)?;
    let wi = cx.cast(w, DType::I32)?;
    let wz = cx.cast(w_z, DType::I32)?;
    let wz = if cx.rank(wz) == 1 && cx.shape(wz).0[0].as_const() != Some(1) {
        let mut dims = vec![cx.shape(wz).0[0].clone()];
        dims.extend(std::iter::repeat_n(Dim::c(1), cx.rank(w) - 1));
        reshape_to(cx, wz, dims)?
    } else {
        wz
    };
    let wc = cx.bin(Op::Sub, wi, wz)?;
    let xf = cx.cast(xc, DType::F64)?;
    let wf = cx.cast(wc, DType::F64)?;
    let ws = cx.static_shape(w, "input w")?;
    let kernel: Vec<i64> = ws.iter().skip(2).map(|&v| v as i64).collect();
    let mut a = super::cnn::conv_window(cx, x, &kernel)?;
    a.insert("group".into(), Attr::Int(cx.attr_i("group", 1)?));
    let mut ins = vec![xf, wf];
    if let Some(b) = bias {
        ins.push(cx.cast(b, DType::F64)?);
    }
    let acc = cx.op(Op::Conv, &ins, a)?;
    // A per-output-channel w_scale lies along axis 1 of the output.
    let w_s = if cx.rank(w_s) == 1 && cx.shape(w_s).0[0].as_const() != Some(1) {
        let mut dims = vec![cx.shape(w_s).0[0].clone()];
        dims.extend(std::iter::repeat_n(Dim::c(1), cx.rank(w) - 2));
        reshape_to(cx, w_s, dims)?
    } else {
        w_s
    };
    Ok(vec![requantize(cx, acc, x_s, w_s, y_s, y_z, out)?])
}
