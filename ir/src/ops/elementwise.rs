//! Elementwise ops: unary math, binary arithmetic and comparisons with numpy
//! broadcasting, `where`, `cast`. Floats compute in f64 and round to the result dtype.

use super::util::{arg, need_float, need_numeric, opt_float, opt_str, targ};
use crate::attr::AttrsExt;
use crate::interp::EvalCtx;
use crate::tensor::{broadcast_index, broadcast_shapes, Data};
use crate::{Attrs, DType, Tensor, TensorType};

type R = Result<Vec<Tensor>, String>;

/// Result type = operand type (block formats compute as f32).
pub fn infer_unary(i: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    let x = targ(i, 0, "x")?;
    Ok(vec![TensorType::new(
        x.dtype.compute_type(),
        x.shape.clone(),
    )])
}

/// Unary math defined on floats only (exp, log, tanh, ...).
pub fn infer_float_unary(i: &[&TensorType], a: &Attrs) -> Result<Vec<TensorType>, String> {
    need_float(targ(i, 0, "x")?, "operand x")?;
    infer_unary(i, a)
}

/// Unary ops defined on floats and integers (neg, abs, relu, sign, clip).
pub fn infer_numeric_unary(i: &[&TensorType], a: &Attrs) -> Result<Vec<TensorType>, String> {
    need_numeric(targ(i, 0, "x")?, "operand x")?;
    if let (Some(lo), Some(hi)) = (opt_float(a, "min")?, opt_float(a, "max")?) {
        if lo.is_nan() || hi.is_nan() {
            return Err(format!(
                "clip bounds min = {lo:?}, max = {hi:?} must not be NaN"
            ));
        }
    }
    infer_unary(i, a)
}

/// `not`: bool in, bool out.
pub fn infer_bool_unary(i: &[&TensorType], a: &Attrs) -> Result<Vec<TensorType>, String> {
    let x = targ(i, 0, "x")?;
    if x.dtype != DType::Bool {
        return Err(format!("operand x must be bool, got {}", x.dtype));
    }
    infer_unary(i, a)
}

/// `gelu`: float operand and a known `approximate`.
pub fn infer_gelu(i: &[&TensorType], a: &Attrs) -> Result<Vec<TensorType>, String> {
    gelu_mode(a)?;
    infer_float_unary(i, a)
}

/// Result type = operand shape with dtype `to`.
pub fn infer_cast(i: &[&TensorType], a: &Attrs) -> Result<Vec<TensorType>, String> {
    let x = targ(i, 0, "x")?;
    let to = cast_target(a)?;
    Ok(vec![TensorType::new(to, x.shape.clone())])
}

fn cast_target(a: &Attrs) -> Result<DType, String> {
    let to = a.dtype("to").ok_or("missing attribute `to` (a dtype)")?;
    if to.is_quantized() {
        return Err(format!(
            "attribute `to` = {to}: cannot cast to a block format"
        ));
    }
    Ok(to)
}

fn broadcast_all(i: &[&TensorType]) -> Result<crate::Shape, String> {
    let mut s = i[0].shape.clone();
    for t in &i[1..] {
        s = s.broadcast(&t.shape).ok_or_else(|| {
            let all: Vec<String> = i.iter().map(|t| t.shape.to_string()).collect();
            format!("operand shapes {} do not broadcast", all.join(", "))
        })?;
    }
    Ok(s)
}

/// The common dtype of two operands (block formats count as f32).
fn same_dtype(i: &[&TensorType]) -> Result<DType, String> {
    let (a, b) = (targ(i, 0, "a")?, targ(i, 1, "b")?);
    let (da, db) = (a.dtype.compute_type(), b.dtype.compute_type());
    if da != db {
        return Err(format!("operand dtypes differ: a is {da}, b is {db}"));
    }
    Ok(da)
}

/// Arithmetic: numeric operands of one dtype, broadcast shape.
pub fn infer_binary(i: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    let d = same_dtype(i)?;
    if d == DType::Bool {
        return Err("operands must be numeric, got bool".into());
    }
    Ok(vec![TensorType::new(d, broadcast_all(i)?)])
}

/// Logical and/or/xor: bool operands, broadcast shape.
pub fn infer_logical(i: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    let d = same_dtype(i)?;
    if d != DType::Bool {
        return Err(format!("operands must be bool, got {d}"));
    }
    Ok(vec![TensorType::new(d, broadcast_all(i)?)])
}

/// Broadcast shape, bool result.
pub fn infer_compare(i: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    same_dtype(i)?;
    Ok(vec![TensorType::new(DType::Bool, broadcast_all(i)?)])
}

/// where(cond: bool, a, b).
pub fn infer_where(i: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    let c = targ(i, 0, "cond")?;
    if c.dtype != DType::Bool {
        return Err(format!("operand cond must be bool, got {}", c.dtype));
    }
    let d = same_dtype(&i[1..])?;
    Ok(vec![TensorType::new(d, broadcast_all(i)?)])
}

fn first<'a>(i: &[&'a Tensor]) -> Result<&'a Tensor, String> {
    arg(i, 0, "x")
}

fn unary_f(x: &Tensor, f: impl Fn(f64) -> f64) -> R {
    if !x.dtype.is_float() {
        return Err(format!("expects a float operand, got {}", x.dtype));
    }
    let v = x.to_f64().into_iter().map(f).collect();
    Ok(vec![Tensor::from_f64(x.dtype, x.shape.clone(), v)])
}

/// Unary op valid on floats and signed integers.
fn unary_num(x: &Tensor, f: impl Fn(f64) -> f64, g: impl Fn(i64) -> i64) -> R {
    match &x.data {
        Data::F(v) => Ok(vec![Tensor::from_f64(
            x.dtype,
            x.shape.clone(),
            v.iter().map(|&a| f(a)).collect(),
        )]),
        Data::I(v) => Ok(vec![Tensor::from_i64(
            x.dtype,
            x.shape.clone(),
            v.iter().map(|&a| g(a)).collect(),
        )]),
    }
}

macro_rules! unary_float {
    ($($name:ident => $f:expr;)*) => {$(
        #[doc = concat!("Reference semantics of `", stringify!($name), "`.")]
        pub fn $name(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R { unary_f(first(i)?, $f) }
    )*};
}

/// erf with ~1e-15 accuracy (Abramowitz-Stegun is too coarse for an oracle): uses the
/// series for small |x| and a continued fraction of erfc for large |x|.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    let r = if ax < 2.5 {
        // Maclaurin series: 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))
        let mut sum = 0.0;
        let mut term = ax;
        let x2 = ax * ax;
        let mut n = 0.0;
        loop {
            let t = term / (2.0 * n + 1.0);
            sum += t;
            if t.abs() < 1e-17 * sum.abs() {
                break;
            }
            n += 1.0;
            term *= -x2 / n;
            if n > 200.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else if ax > 6.0 {
        1.0
    } else {
        // erfc continued fraction (Lentz), accurate for x >= 2.5
        let x2 = ax * ax;
        let mut f = ax;
        let mut c = ax;
        let mut d = 0.0;
        for k in 1..300 {
            let a = k as f64 / 2.0;
            d = ax + a * d;
            d = if d == 0.0 { 1e-300 } else { 1.0 / d };
            c = ax + a / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        1.0 - (-x2).exp() / (f * std::f64::consts::PI.sqrt())
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

unary_float! {
    eval_exp => f64::exp;
    eval_log => f64::ln;
    eval_sqrt => f64::sqrt;
    eval_rsqrt => |x: f64| 1.0 / x.sqrt();
    eval_reciprocal => |x: f64| 1.0 / x;
    eval_tanh => f64::tanh;
    eval_sigmoid => sigmoid;
    eval_silu => |x: f64| x * sigmoid(x);
    eval_erf => erf;
    eval_sin => f64::sin;
    eval_cos => f64::cos;
    eval_floor => f64::floor;
    eval_ceil => f64::ceil;
    eval_round => f64::round_ties_even;
    eval_atan => f64::atan;
}

/// Reference semantics of `neg`.
pub fn eval_neg(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R {
    unary_num(first(i)?, |x| -x, |x| x.wrapping_neg())
}

/// Reference semantics of `abs`.
pub fn eval_abs(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R {
    unary_num(first(i)?, f64::abs, i64::wrapping_abs)
}

/// Reference semantics of `relu`.
pub fn eval_relu(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R {
    unary_num(first(i)?, |x| if x > 0.0 { x } else { 0.0 }, |x| x.max(0))
}

/// Reference semantics of `sign`.
pub fn eval_sign(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R {
    unary_num(
        first(i)?,
        |x| {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                x
            }
        },
        i64::signum,
    )
}

/// `approximate`: false for the erf form (default "none"), true for "tanh".
fn gelu_mode(a: &Attrs) -> Result<bool, String> {
    match opt_str(a, "approximate")?.unwrap_or("none") {
        "none" => Ok(false),
        "tanh" => Ok(true),
        other => Err(format!(
            "attribute `approximate` = {other:?} is unknown (expected \"none\" or \"tanh\")"
        )),
    }
}

/// Reference semantics of `gelu`.
pub fn eval_gelu(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let x = first(i)?;
    if gelu_mode(a)? {
        unary_f(x, |x| {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        })
    } else {
        unary_f(x, |x| 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)))
    }
}

/// Reference semantics of `not`.
pub fn eval_not(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R {
    let x = first(i)?;
    if x.dtype != DType::Bool {
        return Err(format!("expects bool, got {}", x.dtype));
    }
    Ok(vec![Tensor::from_i64(
        DType::Bool,
        x.shape.clone(),
        x.to_i64().iter().map(|&v| (v == 0) as i64).collect(),
    )])
}

/// Reference semantics of `clip`: min(max(x, min), max) as ONNX defines it (so
/// min > max gives max everywhere); NaN passes through.
pub fn eval_clip(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let lo = opt_float(a, "min")?.unwrap_or(f64::NEG_INFINITY);
    let hi = opt_float(a, "max")?.unwrap_or(f64::INFINITY);
    let f = |x: f64| {
        let y = if x < lo { lo } else { x };
        if y > hi {
            hi
        } else {
            y
        }
    };
    // Integer bounds: the integers within [lo, hi] are [ceil(lo), floor(hi)].
    let (ilo, ihi) = (lo.ceil(), hi.floor());
    let g = |x: i64| {
        let y = if (x as f64) < ilo { ilo as i64 } else { x };
        if (y as f64) > ihi {
            ihi as i64
        } else {
            y
        }
    };
    unary_num(first(i)?, f, g)
}

/// Reference semantics of `cast`.
pub fn eval_cast(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let to = cast_target(a)?;
    Ok(vec![first(i)?.cast(to)])
}

/// Applies a binary function with broadcasting; `out` picks the result dtype.
fn binary(
    a: &Tensor,
    b: &Tensor,
    out: DType,
    f: impl Fn(f64, f64) -> f64,
    g: impl Fn(i64, i64) -> Result<i64, String>,
) -> R {
    let shape = broadcast_shapes(&a.shape, &b.shape)
        .ok_or_else(|| format!("shapes {:?} and {:?} do not broadcast", a.shape, b.shape))?;
    let n: usize = shape.iter().product();
    let ai = |k| broadcast_index(k, &shape, &a.shape);
    let bi = |k| broadcast_index(k, &shape, &b.shape);
    match (&a.data, &b.data) {
        (Data::F(x), Data::F(y)) => {
            let v = (0..n).map(|k| f(x[ai(k)], y[bi(k)])).collect();
            Ok(vec![if out.is_float() {
                Tensor::from_f64(out, shape, v)
            } else {
                Tensor::from_i64(out, shape, v.into_iter().map(|x: f64| x as i64).collect())
            }])
        }
        (Data::I(x), Data::I(y)) => {
            let v = (0..n)
                .map(|k| g(x[ai(k)], y[bi(k)]))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(vec![Tensor::from_i64(out, shape, v)])
        }
        _ => Err(format!(
            "operand dtypes differ: {} and {}",
            a.dtype, b.dtype
        )),
    }
}

/// Integer division truncating toward zero; division by zero is an error, and
/// i64::MIN / -1 wraps as two's complement does.
fn int_div(x: i64, y: i64) -> Result<i64, String> {
    if y == 0 {
        return Err(format!("integer division by zero ({x} / 0)"));
    }
    Ok(x.wrapping_div(y))
}

/// Integer power; a negative exponent gives the truncated value of 1 / x^|y|.
fn int_pow(x: i64, y: i64) -> Result<i64, String> {
    if y >= 0 {
        return Ok(x.wrapping_pow(y.min(u32::MAX as i64) as u32));
    }
    match x {
        0 => Err(format!("integer 0 raised to negative power {y}")),
        1 => Ok(1),
        -1 => Ok(if y % 2 == 0 { 1 } else { -1 }),
        _ => Ok(0),
    }
}

macro_rules! binary_arith {
    ($($name:ident => $f:expr, $g:expr;)*) => {$(
        #[doc = concat!("Reference semantics of `", stringify!($name), "`.")]
        pub fn $name(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R {
            let (a, b) = (arg(i, 0, "a")?, arg(i, 1, "b")?);
            binary(a, b, a.dtype, $f, $g)
        }
    )*};
}

macro_rules! binary_cmp {
    ($($name:ident => $op:tt;)*) => {$(
        #[doc = concat!("Reference semantics of `", stringify!($name), "`.")]
        pub fn $name(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R {
            binary(arg(i, 0, "a")?, arg(i, 1, "b")?, DType::Bool, |x, y| (x $op y) as i64 as f64, |x, y| Ok((x $op y) as i64))
        }
    )*};
}

binary_arith! {
    eval_add => |x, y| x + y, |x, y| Ok(x.wrapping_add(y));
    eval_sub => |x, y| x - y, |x, y| Ok(x.wrapping_sub(y));
    eval_mul => |x, y| x * y, |x, y| Ok(x.wrapping_mul(y));
    eval_div => |x, y| x / y, int_div;
    eval_pow => f64::powf, int_pow;
    eval_max => f64::max, |x: i64, y: i64| Ok(x.max(y));
    eval_min => f64::min, |x: i64, y: i64| Ok(x.min(y));
    eval_and => |x, y| ((x != 0.0) && (y != 0.0)) as i64 as f64, |x, y| Ok(((x != 0) && (y != 0)) as i64);
    eval_or => |x, y| ((x != 0.0) || (y != 0.0)) as i64 as f64, |x, y| Ok(((x != 0) || (y != 0)) as i64);
    eval_xor => |x, y| ((x != 0.0) != (y != 0.0)) as i64 as f64, |x, y| Ok(((x != 0) != (y != 0)) as i64);
}

binary_cmp! {
    eval_equal => ==;
    eval_less => <;
    eval_less_equal => <=;
    eval_greater => >;
    eval_greater_equal => >=;
}

/// Reference semantics of `mod`: with `fmod` the remainder of truncated division
/// (sign of the dividend), otherwise of floored division (sign of the divisor).
/// Integer division by zero is an error; float division by zero gives NaN.
pub fn eval_mod(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let (x, y) = (arg(i, 0, "a")?, arg(i, 1, "b")?);
    let fmod = super::util::opt_bool(a, "fmod", false)?;
    let f = |p: f64, q: f64| {
        let r = p % q;
        if !fmod && r != 0.0 && (r < 0.0) != (q < 0.0) {
            r + q
        } else {
            r
        }
    };
    let g = |p: i64, q: i64| {
        if q == 0 {
            return Err(format!("integer modulo by zero ({p} mod 0)"));
        }
        let r = p.wrapping_rem(q);
        Ok(if !fmod && r != 0 && (r < 0) != (q < 0) {
            r + q
        } else {
            r
        })
    };
    binary(x, y, x.dtype, f, g)
}

// ----- bitwise ops (integers, two's complement, wrapped to the dtype) -----

/// Shape rule of the binary bitwise ops: integer operands of one dtype, broadcast.
pub fn infer_bitwise(i: &[&TensorType], _: &Attrs) -> Result<Vec<TensorType>, String> {
    let d = same_dtype(i)?;
    if !d.is_int() {
        return Err(format!("operands must be integers, got {d}"));
    }
    Ok(vec![TensorType::new(d, broadcast_all(i)?)])
}

/// Shape rule of `bitwise_not`.
pub fn infer_bitwise_not(i: &[&TensorType], a: &Attrs) -> Result<Vec<TensorType>, String> {
    let x = targ(i, 0, "x")?;
    if !x.dtype.is_int() {
        return Err(format!(
            "operand x must be an integer tensor, got {}",
            x.dtype
        ));
    }
    infer_unary(i, a)
}

fn int_binary(i: &[&Tensor], g: impl Fn(i64, i64) -> i64) -> R {
    let (a, b) = (arg(i, 0, "a")?, arg(i, 1, "b")?);
    if !a.dtype.is_int() || a.dtype != b.dtype {
        return Err(format!(
            "operands must be integers of one dtype, got {} and {}",
            a.dtype, b.dtype
        ));
    }
    binary(a, b, a.dtype, |_, _| 0.0, |x, y| Ok(g(x, y)))
}

/// Reference semantics of `bitwise_and`.
pub fn eval_bitwise_and(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R {
    int_binary(i, |x, y| x & y)
}

/// Reference semantics of `bitwise_or`.
pub fn eval_bitwise_or(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R {
    int_binary(i, |x, y| x | y)
}

/// Reference semantics of `bitwise_xor`.
pub fn eval_bitwise_xor(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R {
    int_binary(i, |x, y| x ^ y)
}

/// Reference semantics of `bitwise_not`.
pub fn eval_bitwise_not(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R {
    let x = first(i)?;
    if !x.dtype.is_int() {
        return Err(format!(
            "operand x must be an integer tensor, got {}",
            x.dtype
        ));
    }
    let v = x.to_i64().into_iter().map(|v| !v).collect();
    Ok(vec![Tensor::from_i64(x.dtype, x.shape.clone(), v)])
}

/// `left` from the `direction` attribute ("left" or "right").
fn shift_left(a: &Attrs) -> Result<bool, String> {
    match opt_str(a, "direction")? {
        Some("left") => Ok(true),
        Some("right") => Ok(false),
        other => Err(format!(
            "attribute `direction` = {other:?} must be \"left\" or \"right\""
        )),
    }
}

/// Shape rule of `bit_shift`.
pub fn infer_bit_shift(i: &[&TensorType], a: &Attrs) -> Result<Vec<TensorType>, String> {
    shift_left(a)?;
    infer_bitwise(i, a)
}

/// Reference semantics of `bit_shift`: a shift by a negative amount or by the type's
/// width or more shifts everything out (0, or -1 for a right shift of a negative value);
/// a right shift of a signed value is arithmetic.
pub fn eval_bit_shift(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let left = shift_left(a)?;
    let width = arg(i, 0, "a")?.dtype.block_bytes() as i64 * 8;
    int_binary(i, |x, s| {
        if !(0..width).contains(&s) {
            return if !left && x < 0 { -1 } else { 0 };
        }
        if left {
            x.wrapping_shl(s as u32)
        } else {
            x >> s
        }
    })
}

/// Reference semantics of `where`.
pub fn eval_where(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R {
    let (c, a, b) = (arg(i, 0, "cond")?, arg(i, 1, "a")?, arg(i, 2, "b")?);
    let s = broadcast_shapes(&c.shape, &a.shape)
        .and_then(|s| broadcast_shapes(&s, &b.shape))
        .ok_or_else(|| {
            format!(
                "operand shapes {:?}, {:?}, {:?} do not broadcast",
                c.shape, a.shape, b.shape
            )
        })?;
    let n: usize = s.iter().product();
    let pick = |k: usize| {
        let take_a = c.get_i64(broadcast_index(k, &s, &c.shape)) != 0;
        if take_a {
            (true, broadcast_index(k, &s, &a.shape))
        } else {
            (false, broadcast_index(k, &s, &b.shape))
        }
    };
    Ok(vec![match (&a.data, &b.data) {
        (Data::F(x), Data::F(y)) => Tensor::from_f64(
            a.dtype,
            s.clone(),
            (0..n)
                .map(|k| match pick(k) {
                    (true, j) => x[j],
                    (false, j) => y[j],
                })
                .collect(),
        ),
        (Data::I(x), Data::I(y)) => Tensor::from_i64(
            a.dtype,
            s.clone(),
            (0..n)
                .map(|k| match pick(k) {
                    (true, j) => x[j],
                    (false, j) => y[j],
                })
                .collect(),
        ),
        _ => return Err(format!("branch dtypes differ: {} and {}", a.dtype, b.dtype)),
    }])
}

#[cfg(test)]
mod tests {
    use super::erf;
    use crate::ops::util::testing::*;
    use crate::{attrs, Attr, DType, Op};

    #[test]
    fn erf_matches_known_values() {
        // Values from tables of erf (to 15 digits) and Python's math.erf, covering both
        // the series (|x| < 2.5) and the continued fraction (2.5 <= |x| <= 6).
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520499877813047),
            (1.0, 0.842700792949715),
            (1.5, 0.9661051464753108),
            (2.0, 0.995322265018953),
            (2.4, 0.999311486103355),
            (2.5, 0.999593047982555),
            (2.6, 0.9997639655834707),
            (3.0, 0.999977909503001),
            (3.5, 0.9999992569016276),
            (4.5, 0.9999999998033839),
            (5.5, 0.9999999999999927),
            (-1.0, -0.842700792949715),
        ] {
            assert!(
                (erf(x) - want).abs() < 1e-13,
                "erf({x}) = {} want {want}",
                erf(x)
            );
        }
    }

    #[test]
    fn type_rules_check_dtype_classes() {
        let f = tt(DType::F32, &["batch", "3"]);
        let i = tt(DType::I64, &["3"]);
        let b = tt(DType::Bool, &["3"]);
        let e = inf(Op::Exp, &[&i], attrs([])).unwrap_err();
        assert!(e.contains("must be a float tensor, got i64"), "{e}");
        assert_eq!(
            inf(Op::Neg, &[&i], attrs([])).unwrap()[0].to_string(),
            "i64[3]"
        );
        let e = inf(Op::Neg, &[&b], attrs([])).unwrap_err();
        assert!(e.contains("numeric"), "{e}");
        let e = inf(Op::Not, &[&i], attrs([])).unwrap_err();
        assert!(e.contains("must be bool"), "{e}");
        let e = inf(Op::And, &[&i, &i], attrs([])).unwrap_err();
        assert!(e.contains("must be bool"), "{e}");
        let e = inf(Op::Add, &[&f, &i], attrs([])).unwrap_err();
        assert!(e.contains("dtypes differ: a is f32, b is i64"), "{e}");
        let e = inf(
            Op::Gelu,
            &[&f],
            attrs([("approximate", Attr::Str("fast".into()))]),
        )
        .unwrap_err();
        assert!(e.contains("`approximate` = \"fast\""), "{e}");
        // A block-quantized operand computes as f32.
        let q = tt(DType::Q8_0, &["3"]);
        assert_eq!(
            inf(Op::Mul, &[&f, &q], attrs([])).unwrap()[0].to_string(),
            "f32[batch, 3]"
        );
        let e = inf(Op::Cast, &[&f], attrs([("to", Attr::Type(DType::Q4_0))])).unwrap_err();
        assert!(e.contains("block format"), "{e}");
    }

    #[test]
    fn clip_follows_onnx_when_min_exceeds_max() {
        let x = tf(&[3], &[-5.0, 0.0, 5.0]);
        let a = attrs([("min", Attr::Float(2.0)), ("max", Attr::Float(1.0))]);
        assert_eq!(ev1(Op::Clip, &[&x], a).to_f64(), vec![1.0, 1.0, 1.0]);
        let nan = tf(&[1], &[f64::NAN]);
        let a = attrs([("min", Attr::Float(0.0))]);
        assert!(ev1(Op::Clip, &[&nan], a).to_f64()[0].is_nan());
        let n = ti(&[3], &[-5, 1, 5]);
        let a = attrs([("min", Attr::Float(-0.5)), ("max", Attr::Float(2.5))]);
        assert_eq!(ev1(Op::Clip, &[&n], a).to_i64(), vec![0, 1, 2]);
    }

    #[test]
    fn integer_division_and_power_edges() {
        let div = |a: i64, b: i64| ev(Op::Div, &[&ti(&[1], &[a]), &ti(&[1], &[b])], attrs([]));
        assert_eq!(div(-7, 2).unwrap()[0].to_i64(), vec![-3]);
        assert_eq!(div(i64::MIN, -1).unwrap()[0].to_i64(), vec![i64::MIN]);
        let e = div(3, 0).unwrap_err();
        assert!(e.contains("division by zero"), "{e}");
        let pow = |a: i64, b: i64| {
            ev1(Op::Pow, &[&ti(&[1], &[a]), &ti(&[1], &[b])], attrs([])).to_i64()[0]
        };
        assert_eq!(pow(-2, 3), -8);
        assert_eq!(pow(2, -1), 0);
        assert_eq!(pow(-1, -3), -1);
        assert_eq!(pow(1, -4), 1);
    }

    #[test]
    fn wrong_operand_count_is_an_error() {
        let e = ev(Op::Add, &[&tf(&[1], &[1.0])], attrs([])).unwrap_err();
        assert!(e.contains("takes 2 operand(s), got 1"), "{e}");
    }
}
