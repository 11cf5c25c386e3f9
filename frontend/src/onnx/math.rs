//! Elementwise math: arithmetic (with ONNX's variadic `Sum`/`Mean`/`Max`/`Min`),
//! unary functions, `Cast`/`CastLike`, `Clip`, and the activation functions, which map
//! to one IR op when the table has it and to a few elementwise ops otherwise.

use super::import::{NodeCtx, V};
use super::registry::Registry;
use llmc_ir::{attrs, Attr, Attrs, DType, Op};

type R = Result<Vec<V>, String>;

/// Adds this family's converters.
pub fn register(r: &mut Registry) {
    r.add("Abs", |cx| cx.unary(Op::Abs));
    r.add("Neg", |cx| cx.unary(Op::Neg));
    r.add("Exp", |cx| cx.unary(Op::Exp));
    r.add("Log", |cx| cx.unary(Op::Log));
    r.add("Sqrt", |cx| cx.unary(Op::Sqrt));
    r.add("Reciprocal", |cx| cx.unary(Op::Reciprocal));
    r.add("Tanh", |cx| cx.unary(Op::Tanh));
    r.add("Sigmoid", |cx| cx.unary(Op::Sigmoid));
    r.add("Relu", |cx| cx.unary(Op::Relu));
    r.add("Erf", |cx| cx.unary(Op::Erf));
    r.add("Sin", |cx| cx.unary(Op::Sin));
    r.add("Cos", |cx| cx.unary(Op::Cos));
    r.add("Floor", |cx| cx.unary(Op::Floor));
    r.add("Ceil", |cx| cx.unary(Op::Ceil));
    r.add("Round", |cx| cx.unary(Op::Round));
    r.add("Sign", |cx| cx.unary(Op::Sign));
    r.add("Add", |cx| cx.binary(Op::Add));
    r.add("Sub", |cx| cx.binary(Op::Sub));
    r.add("Mul", |cx| cx.binary(Op::Mul));
    r.add("Div", |cx| cx.binary(Op::Div));
    r.add("Pow", pow);
    r.add("Mod", modulo);
    r.add("Max", |cx| variadic(cx, Op::Max));
    r.add("Min", |cx| variadic(cx, Op::Min));
    r.add("Sum", |cx| variadic(cx, Op::Add));
    r.add("Mean", mean);
    r.add("Cast", cast);
    r.add("CastLike", cast_like);
    r.add("Clip", clip);
    r.add("Gelu", gelu);
    r.add("LeakyRelu", leaky_relu);
    r.add("PRelu", prelu);
    r.add("Elu", elu);
    r.add("Selu", selu);
    r.add("Celu", celu);
    r.add("HardSigmoid", hard_sigmoid);
    r.add("HardSwish", hard_swish);
    r.add("ThresholdedRelu", thresholded_relu);
    r.add("Softplus", softplus);
    r.add("Softsign", softsign);
    r.add("Mish", mish);
    r.add("Swish", swish);
    r.add("Shrink", shrink);
    r.add("Tan", tan);
    r.add("Sinh", |cx| sinh_cosh(cx, Op::Sub));
    r.add("Cosh", |cx| sinh_cosh(cx, Op::Add));
    r.add("Asinh", asinh);
    r.add("Acosh", acosh);
    r.add("Atanh", atanh);
    r.add("Atan", |cx| cx.unary(Op::Atan));
    r.add("Asin", |cx| {
        let x = cx.input(0)?;
        Ok(vec![asin_of(cx, x)?])
    });
    r.add("Acos", acos);
    r.add("BitwiseAnd", |cx| cx.binary(Op::BitwiseAnd));
    r.add("BitwiseOr", |cx| cx.binary(Op::BitwiseOr));
    r.add("BitwiseXor", |cx| cx.binary(Op::BitwiseXor));
    r.add("BitwiseNot", |cx| cx.unary(Op::BitwiseNot));
    r.add("BitShift", bit_shift);
    r.add("SwiGLU", swiglu);
}

/// asin(x) = atan(x / sqrt(1 - x^2)) (x = +-1 divides by zero: atan(+-inf)).
fn asin_of(cx: &mut NodeCtx, x: V) -> Result<V, String> {
    let one = cx.scalar_like(x, 1.0);
    let xx = cx.bin(Op::Mul, x, x)?;
    let d = cx.bin(Op::Sub, one, xx)?;
    let r = cx.un(Op::Sqrt, d)?;
    let q = cx.bin(Op::Div, x, r)?;
    cx.un(Op::Atan, q)
}

/// acos(x) = pi/2 - asin(x)
fn acos(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let a = asin_of(cx, x)?;
    let h = cx.scalar_like(x, std::f64::consts::FRAC_PI_2);
    Ok(vec![cx.bin(Op::Sub, h, a)?])
}

fn bit_shift(cx: &mut NodeCtx) -> R {
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    let dir = cx
        .attr_s("direction")?
        .ok_or("missing attribute `direction`")?;
    let dir = dir.to_ascii_lowercase();
    Ok(vec![cx.op(
        Op::BitShift,
        &[a, b],
        attrs([("direction", Attr::Str(dir))]),
    )?])
}

/// SwiGLU(a, b) = a * sigmoid(alpha * a) * b
fn swiglu(cx: &mut NodeCtx) -> R {
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    let alpha = cx.attr_f("alpha", 1.0)?;
    let s = if alpha == 1.0 {
        cx.un(Op::Sigmoid, a)?
    } else {
        let k = cx.scalar_like(a, alpha);
        let ka = cx.bin(Op::Mul, a, k)?;
        cx.un(Op::Sigmoid, ka)?
    };
    let g = cx.bin(Op::Mul, a, s)?;
    Ok(vec![cx.bin(Op::Mul, g, b)?])
}

/// `Pow`: ONNX lets the exponent have another type than the base; the result has the
/// base's type.
fn pow(cx: &mut NodeCtx) -> R {
    let (x, y) = (cx.input(0)?, cx.input(1)?);
    let (dx, dy) = (cx.dtype(x), cx.dtype(y));
    if dx == dy {
        return Ok(vec![cx.bin(Op::Pow, x, y)?]);
    }
    if dx.is_float() {
        let y = cx.cast(y, dx)?;
        return Ok(vec![cx.bin(Op::Pow, x, y)?]);
    }
    // Integer base, float exponent: compute in the exponent's type, cast back.
    let xf = cx.cast(x, dy)?;
    let p = cx.bin(Op::Pow, xf, y)?;
    Ok(vec![cx.cast(p, dx)?])
}

fn modulo(cx: &mut NodeCtx) -> R {
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    let fmod = cx.attr_i("fmod", 0)? != 0;
    Ok(vec![cx.op(
        Op::Mod,
        &[a, b],
        attrs([("fmod", Attr::Bool(fmod))]),
    )?])
}

/// `Max`, `Min`, `Sum`: a chain of broadcasting binary ops over every input.
fn variadic(cx: &mut NodeCtx, op: Op) -> R {
    let ins = cx.inputs()?;
    let (&first, rest) = ins.split_first().ok_or("needs at least one input")?;
    let mut acc = first;
    for &v in rest {
        acc = cx.bin(op, acc, v)?;
    }
    Ok(vec![acc])
}

fn mean(cx: &mut NodeCtx) -> R {
    let n = cx.inputs()?.len();
    let s = variadic(cx, Op::Add)?[0];
    let c = cx.scalar_like(s, n as f64);
    Ok(vec![cx.bin(Op::Div, s, c)?])
}

fn cast(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let to = cx.attr_opt_i("to")?.ok_or("missing attribute `to`")?;
    let to = super::data::dtype_of(to as i32).map_err(|m| format!("attribute `to`: {m}"))?;
    Ok(vec![cx.cast(x, to)?])
}

fn cast_like(cx: &mut NodeCtx) -> R {
    let (x, like) = (cx.input(0)?, cx.input(1)?);
    let to = cx.dtype(like);
    Ok(vec![cx.cast(x, to)?])
}

/// `Clip`: bounds are attributes before opset 11 and optional inputs after; known
/// bounds become the `clip` op's attributes, computed ones max/min ops.
fn clip(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let mut a = Attrs::new();
    let mut out = x;
    if cx.opset < 11 {
        if let Some(lo) = cx.attr_opt_f("min")? {
            a.insert("min".into(), Attr::Float(lo));
        }
        if let Some(hi) = cx.attr_opt_f("max")? {
            a.insert("max".into(), Attr::Float(hi));
        }
        return Ok(vec![cx.op(Op::Clip, &[x], a)?]);
    }
    let mut dynamic = Vec::new();
    for (i, name) in [(1, "min"), (2, "max")] {
        let Some(b) = cx.opt_input(i)? else { continue };
        match cx.konst(b)? {
            Some(t) if t.numel() == 1 => {
                a.insert(name.into(), Attr::Float(t.to_f64()[0]));
            }
            _ => dynamic.push((name, b)),
        }
    }
    if !a.is_empty() {
        out = cx.op(Op::Clip, &[out], a)?;
    }
    for (name, b) in dynamic {
        let op = if name == "min" { Op::Max } else { Op::Min };
        out = cx.bin(op, out, b)?;
    }
    Ok(vec![out])
}

fn gelu(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let approx = cx.attr_s("approximate")?.unwrap_or_else(|| "none".into());
    Ok(vec![cx.op(
        Op::Gelu,
        &[x],
        attrs([("approximate", Attr::Str(approx))]),
    )?])
}

/// x < 0 ? neg : pos (elementwise, broadcasting).
fn where_neg(cx: &mut NodeCtx, x: V, neg: V, pos: V) -> Result<V, String> {
    let zero = cx.scalar_like(x, 0.0);
    let c = cx.bin(Op::Less, x, zero)?;
    cx.op(Op::Where, &[c, neg, pos], Attrs::new())
}

fn leaky_relu(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let alpha = cx.attr_f("alpha", 0.01)?;
    let a = cx.scalar_like(x, alpha);
    let ax = cx.bin(Op::Mul, x, a)?;
    Ok(vec![where_neg(cx, x, ax, x)?])
}

fn prelu(cx: &mut NodeCtx) -> R {
    let (x, slope) = (cx.input(0)?, cx.input(1)?);
    let sx = cx.bin(Op::Mul, x, slope)?;
    Ok(vec![where_neg(cx, x, sx, x)?])
}

/// alpha * (exp(x) - 1)
fn expm1_scaled(cx: &mut NodeCtx, x: V, alpha: f64) -> Result<V, String> {
    let e = cx.un(Op::Exp, x)?;
    let one = cx.scalar_like(x, 1.0);
    let em1 = cx.bin(Op::Sub, e, one)?;
    let a = cx.scalar_like(x, alpha);
    cx.bin(Op::Mul, em1, a)
}

fn elu(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let alpha = cx.attr_f("alpha", 1.0)?;
    let neg = expm1_scaled(cx, x, alpha)?;
    Ok(vec![where_neg(cx, x, neg, x)?])
}

fn selu(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let alpha = cx.attr_f("alpha", 1.673_263_192_176_818_8)?;
    let gamma = cx.attr_f("gamma", 1.050_701_022_148_132_3)?;
    let neg = expm1_scaled(cx, x, alpha)?;
    let zero = cx.scalar_like(x, 0.0);
    let c = cx.bin(Op::LessEqual, x, zero)?;
    let y = cx.op(Op::Where, &[c, neg, x], Attrs::new())?;
    let g = cx.scalar_like(x, gamma);
    Ok(vec![cx.bin(Op::Mul, y, g)?])
}

/// max(0, x) + min(0, alpha * (exp(x / alpha) - 1))
fn celu(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let alpha = cx.attr_f("alpha", 1.0)?;
    let a = cx.scalar_like(x, alpha);
    let xa = cx.bin(Op::Div, x, a)?;
    let neg = expm1_scaled(cx, xa, alpha)?;
    let zero = cx.scalar_like(x, 0.0);
    let p = cx.bin(Op::Max, x, zero)?;
    let n = cx.bin(Op::Min, neg, zero)?;
    Ok(vec![cx.bin(Op::Add, p, n)?])
}

/// clip(alpha * x + beta, 0, 1)
fn hard_sigmoid_of(cx: &mut NodeCtx, x: V, alpha: f64, beta: f64) -> Result<V, String> {
    let a = cx.scalar_like(x, alpha);
    let b = cx.scalar_like(x, beta);
    let ax = cx.bin(Op::Mul, x, a)?;
    let y = cx.bin(Op::Add, ax, b)?;
    cx.op(
        Op::Clip,
        &[y],
        attrs([("min", Attr::Float(0.0)), ("max", Attr::Float(1.0))]),
    )
}

fn hard_sigmoid(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let alpha = cx.attr_f("alpha", 0.2)?;
    let beta = cx.attr_f("beta", 0.5)?;
    Ok(vec![hard_sigmoid_of(cx, x, alpha, beta)?])
}

fn hard_swish(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let h = hard_sigmoid_of(cx, x, 1.0 / 6.0, 0.5)?;
    Ok(vec![cx.bin(Op::Mul, x, h)?])
}

fn thresholded_relu(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let alpha = cx.attr_f("alpha", 1.0)?;
    let a = cx.scalar_like(x, alpha);
    let zero = cx.scalar_like(x, 0.0);
    let c = cx.bin(Op::Greater, x, a)?;
    Ok(vec![cx.op(Op::Where, &[c, x, zero], Attrs::new())?])
}

/// log(exp(x) + 1)
fn softplus_of(cx: &mut NodeCtx, x: V) -> Result<V, String> {
    let e = cx.un(Op::Exp, x)?;
    let one = cx.scalar_like(x, 1.0);
    let s = cx.bin(Op::Add, e, one)?;
    cx.un(Op::Log, s)
}

fn softplus(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    Ok(vec![softplus_of(cx, x)?])
}

fn softsign(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let a = cx.un(Op::Abs, x)?;
    let one = cx.scalar_like(x, 1.0);
    let d = cx.bin(Op::Add, a, one)?;
    Ok(vec![cx.bin(Op::Div, x, d)?])
}

fn mish(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let sp = softplus_of(cx, x)?;
    let t = cx.un(Op::Tanh, sp)?;
    Ok(vec![cx.bin(Op::Mul, x, t)?])
}

fn swish(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let alpha = cx.attr_f("alpha", 1.0)?;
    if alpha == 1.0 {
        return Ok(vec![cx.un(Op::Silu, x)?]);
    }
    let a = cx.scalar_like(x, alpha);
    let ax = cx.bin(Op::Mul, x, a)?;
    let s = cx.un(Op::Sigmoid, ax)?;
    Ok(vec![cx.bin(Op::Mul, x, s)?])
}

/// x < -lambd ? x + bias : (x > lambd ? x - bias : 0)
fn shrink(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let bias = cx.attr_f("bias", 0.0)?;
    let lambd = cx.attr_f("lambd", 0.5)?;
    let b = cx.scalar_like(x, bias);
    let lo = cx.scalar_like(x, -lambd);
    let hi = cx.scalar_like(x, lambd);
    let zero = cx.scalar_like(x, 0.0);
    let xp = cx.bin(Op::Add, x, b)?;
    let xm = cx.bin(Op::Sub, x, b)?;
    let c_hi = cx.bin(Op::Greater, x, hi)?;
    let upper = cx.op(Op::Where, &[c_hi, xm, zero], Attrs::new())?;
    let c_lo = cx.bin(Op::Less, x, lo)?;
    Ok(vec![cx.op(Op::Where, &[c_lo, xp, upper], Attrs::new())?])
}

fn tan(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let s = cx.un(Op::Sin, x)?;
    let c = cx.un(Op::Cos, x)?;
    Ok(vec![cx.bin(Op::Div, s, c)?])
}

/// (exp(x) -/+ exp(-x)) / 2
fn sinh_cosh(cx: &mut NodeCtx, op: Op) -> R {
    let x = cx.input(0)?;
    let e = cx.un(Op::Exp, x)?;
    let nx = cx.un(Op::Neg, x)?;
    let en = cx.un(Op::Exp, nx)?;
    let s = cx.bin(op, e, en)?;
    let two = cx.scalar_like(x, 2.0);
    Ok(vec![cx.bin(Op::Div, s, two)?])
}

/// log(x + sqrt(x * x + sign)) for asinh (sign 1) and acosh (sign -1).
fn log_sqrt(cx: &mut NodeCtx, sign: f64) -> R {
    let x = cx.input(0)?;
    let xx = cx.bin(Op::Mul, x, x)?;
    let s = cx.scalar_like(x, sign);
    let r = cx.bin(Op::Add, xx, s)?;
    let q = cx.un(Op::Sqrt, r)?;
    let t = cx.bin(Op::Add, x, q)?;
    Ok(vec![cx.un(Op::Log, t)?])
}

fn asinh(cx: &mut NodeCtx) -> R {
    log_sqrt(cx, 1.0)
}

fn acosh(cx: &mut NodeCtx) -> R {
    log_sqrt(cx, -1.0)
}

/// log((1 + x) / (1 - x)) / 2
fn atanh(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let one = cx.scalar_like(x, 1.0);
    let p = cx.bin(Op::Add, one, x)?;
    let m = cx.bin(Op::Sub, one, x)?;
    let q = cx.bin(Op::Div, p, m)?;
    let l = cx.un(Op::Log, q)?;
    let half = cx.scalar_like(x, 0.5);
    Ok(vec![cx.bin(Op::Mul, l, half)?])
}

/// Helper for other families: `dtype` must be a float type.
pub fn float_only(d: DType, what: &str) -> Result<(), String> {
    if d.is_float() {
        Ok(())
    } else {
        Err(format!("{what} must be a float tensor, got {d}"))
    }
}
