//! Helpers the op families share: attribute readers that say which attribute is wrong,
//! operand checks that name the operand, axis normalisation, checked element counts,
//! coordinate iteration and element picking for layout ops. Keeping them here lets each
//! op's rule and semantics read as a few lines of its own logic.

use crate::attr::Attr;
use crate::interp::EvalCtx;
use crate::shape::norm_axis;
use crate::tensor::Data;
use crate::{Attrs, DType, Shape, Tensor, TensorType};

/// Result of an eval function.
pub(crate) type R = Result<Vec<Tensor>, String>;
/// Result of an infer function.
pub(crate) type T = Result<Vec<TensorType>, String>;

fn kind_err(name: &str, want: &str, got: &Attr) -> String {
    format!("attribute `{name}` must be {want}, got {got:?}")
}

/// Optional bool attribute with a default.
pub(crate) fn opt_bool(a: &Attrs, name: &str, default: bool) -> Result<bool, String> {
    match a.get(name) {
        None => Ok(default),
        Some(Attr::Bool(b)) => Ok(*b),
        Some(Attr::Int(v)) if *v == 0 || *v == 1 => Ok(*v == 1),
        Some(other) => Err(kind_err(name, "a bool", other)),
    }
}

/// Optional int attribute.
pub(crate) fn opt_int(a: &Attrs, name: &str) -> Result<Option<i64>, String> {
    match a.get(name) {
        None => Ok(None),
        Some(Attr::Int(v)) => Ok(Some(*v)),
        Some(other) => Err(kind_err(name, "an integer", other)),
    }
}

/// Required int attribute.
pub(crate) fn req_int(a: &Attrs, name: &str) -> Result<i64, String> {
    opt_int(a, name)?.ok_or_else(|| format!("missing attribute `{name}`"))
}

/// Optional float attribute (an integer literal is accepted).
pub(crate) fn opt_float(a: &Attrs, name: &str) -> Result<Option<f64>, String> {
    match a.get(name) {
        None => Ok(None),
        Some(Attr::Float(v)) => Ok(Some(*v)),
        Some(Attr::Int(v)) => Ok(Some(*v as f64)),
        Some(other) => Err(kind_err(name, "a float", other)),
    }
}

/// Required float attribute.
pub(crate) fn req_float(a: &Attrs, name: &str) -> Result<f64, String> {
    opt_float(a, name)?.ok_or_else(|| format!("missing attribute `{name}`"))
}

/// Optional string attribute.
pub(crate) fn opt_str<'a>(a: &'a Attrs, name: &str) -> Result<Option<&'a str>, String> {
    match a.get(name) {
        None => Ok(None),
        Some(Attr::Str(s)) => Ok(Some(s)),
        Some(other) => Err(kind_err(name, "a string", other)),
    }
}

/// Optional integer-list attribute.
pub(crate) fn opt_ints<'a>(a: &'a Attrs, name: &str) -> Result<Option<&'a [i64]>, String> {
    match a.get(name) {
        None => Ok(None),
        Some(Attr::Ints(v)) => Ok(Some(v)),
        // `[]` may have been read as an empty list of another kind.
        Some(Attr::Floats(v)) if v.is_empty() => Ok(Some(&[])),
        Some(other) => Err(kind_err(name, "a list of integers", other)),
    }
}

/// Optional float-list attribute.
pub(crate) fn opt_floats<'a>(a: &'a Attrs, name: &str) -> Result<Option<&'a [f64]>, String> {
    match a.get(name) {
        None => Ok(None),
        Some(Attr::Floats(v)) => Ok(Some(v)),
        Some(Attr::Ints(v)) if v.is_empty() => Ok(Some(&[])),
        Some(other) => Err(kind_err(name, "a list of floats", other)),
    }
}

/// Required integer-list attribute.
pub(crate) fn req_ints<'a>(a: &'a Attrs, name: &str) -> Result<&'a [i64], String> {
    opt_ints(a, name)?.ok_or_else(|| format!("missing attribute `{name}`"))
}

/// Required shape attribute.
pub(crate) fn req_shape<'a>(a: &'a Attrs, name: &str) -> Result<&'a Shape, String> {
    match a.get(name) {
        None => Err(format!("missing attribute `{name}`")),
        Some(Attr::Shape(s)) => Ok(s),
        Some(other) => Err(kind_err(name, "a shape", other)),
    }
}

/// The error of dim arithmetic that overflows i64 coefficients.
pub(crate) fn overflow(what: &str) -> String {
    format!("{what}: dim arithmetic overflows")
}

/// Resolves a possibly negative axis, or says which attribute is out of range.
pub(crate) fn axis_in(axis: i64, rank: usize, what: &str) -> Result<usize, String> {
    norm_axis(axis, rank).ok_or_else(|| format!("{what} = {axis} is out of range for rank {rank}"))
}

/// Resolves a list of axes (negative allowed), rejecting duplicates.
pub(crate) fn axes_in(axes: &[i64], rank: usize, what: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(axes.len());
    for &ax in axes {
        let a = axis_in(ax, rank, what)?;
        if out.contains(&a) {
            return Err(format!("{what} {axes:?} names axis {a} twice"));
        }
        out.push(a);
    }
    Ok(out)
}

/// Checks that a static operand type is a float type (block formats count as f32).
pub(crate) fn need_float(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype.compute_type().is_float() {
        Ok(())
    } else {
        Err(format!("{what} must be a float tensor, got {}", t.dtype))
    }
}

/// Checks that a static operand type is an integer type.
pub(crate) fn need_int(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype.is_int() {
        Ok(())
    } else {
        Err(format!("{what} must be an integer tensor, got {}", t.dtype))
    }
}

/// Checks that a static operand type is numeric (not bool).
pub(crate) fn need_numeric(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype == DType::Bool {
        Err(format!("{what} must be numeric, got bool"))
    } else {
        Ok(())
    }
}

/// A float operand's elements.
pub(crate) fn floats<'a>(t: &'a Tensor, what: &str) -> Result<&'a [f64], String> {
    match &t.data {
        Data::F(v) if t.dtype.is_float() => Ok(v),
        _ => Err(format!("{what} must be a float tensor, got {}", t.dtype)),
    }
}

/// An operand, or an error naming the missing one (the interpreter checks arity, but
/// eval functions may be called directly).
pub(crate) fn arg<'a>(i: &[&'a Tensor], k: usize, what: &str) -> Result<&'a Tensor, String> {
    i.get(k)
        .copied()
        .ok_or_else(|| format!("missing operand {k} ({what})"))
}

/// A static operand type, or an error naming the missing one.
pub(crate) fn targ<'a>(
    i: &[&'a TensorType],
    k: usize,
    what: &str,
) -> Result<&'a TensorType, String> {
    i.get(k)
        .copied()
        .ok_or_else(|| format!("missing operand {k} ({what})"))
}

/// Element count of a shape, or an error when it overflows.
pub(crate) fn checked_numel(shape: &[usize]) -> Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= (1usize << 40))
        .ok_or_else(|| format!("shape {shape:?} has too many elements"))
}

/// Evaluates a static shape with the run's symbol values; dims must be non-negative.
pub(crate) fn eval_shape(s: &Shape, ctx: &EvalCtx, what: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(s.rank());
    for d in &s.0 {
        let v = ctx.dim(d)?;
        if v < 0 {
            return Err(format!("{what} {s} has negative dim {d} = {v}"));
        }
        out.push(v as usize);
    }
    checked_numel(&out)?;
    Ok(out)
}

/// (product of dims before `axis`, dim at `axis`, product of dims after `axis`).
pub(crate) fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// Calls `f` with every coordinate of `shape`, in row-major order.
pub(crate) fn for_each_coord(shape: &[usize], mut f: impl FnMut(&[usize])) {
    if shape.contains(&0) {
        return;
    }
    let mut c = vec![0usize; shape.len()];
    loop {
        f(&c);
        let mut d = shape.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            c[d] += 1;
            if c[d] < shape[d] {
                break;
            }
            c[d] = 0;
        }
    }
}

/// A tensor of `shape` whose elements are `t`'s at flat indices `idx` (same dtype).
pub(crate) fn pick(t: &Tensor, shape: Vec<usize>, idx: &[usize]) -> Tensor {
    let data = match &t.data {
        Data::F(v) => Data::F(idx.iter().map(|&j| v[j]).collect()),
        Data::I(v) => Data::I(idx.iter().map(|&j| v[j]).collect()),
    };
    Tensor {
        dtype: t.dtype,
        shape,
        data,
    }
}

/// Like [`pick`], with `None` meaning the fill value (converted to the dtype).
pub(crate) fn pick_or(t: &Tensor, shape: Vec<usize>, idx: &[Option<usize>], fill: f64) -> Tensor {
    match &t.data {
        Data::F(v) => {
            let fill = crate::tensor::round_to(t.dtype, fill);
            Tensor {
                dtype: t.dtype,
                shape,
                data: Data::F(idx.iter().map(|j| j.map_or(fill, |j| v[j])).collect()),
            }
        }
        Data::I(v) => {
            let fill = if t.dtype == DType::Bool {
                (fill != 0.0) as i64
            } else {
                crate::tensor::wrap_int(t.dtype, fill as i64)
            };
            Tensor {
                dtype: t.dtype,
                shape,
                data: Data::I(idx.iter().map(|j| j.map_or(fill, |j| v[j])).collect()),
            }
        }
    }
}

/// Dot product in f64 with four running sums (independent chains let the compiler
/// overlap the multiply-adds; the reference interpreter's matmuls spend their time here).
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut s = [0.0f64; 4];
    let (ac, bc) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        s[0] += x[0] * y[0];
        s[1] += x[1] * y[1];
        s[2] += x[2] * y[2];
        s[3] += x[3] * y[3];
    }
    let mut tail = 0.0;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    (s[0] + s[1]) + (s[2] + s[3]) + tail
}

/// Helpers for the op families' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::interp::EvalCtx;
    use crate::{Attrs, DType, Dim, Op, Shape, Tensor, TensorType};

    /// Runs an op's reference semantics with an empty context.
    pub fn ev(op: Op, ins: &[&Tensor], attrs: Attrs) -> Result<Vec<Tensor>, String> {
        op.eval(ins, &attrs, &mut EvalCtx::default())
    }

    /// Runs an op's reference semantics and returns its single result.
    pub fn ev1(op: Op, ins: &[&Tensor], attrs: Attrs) -> Tensor {
        match ev(op, ins, attrs) {
            Ok(mut v) if v.len() == 1 => v.remove(0),
            other => panic!("{op}: expected one result, got {other:?}"),
        }
    }

    /// Runs an op's shape rule; the error text is the rule's message.
    pub fn inf(op: Op, ins: &[&TensorType], attrs: Attrs) -> Result<Vec<TensorType>, String> {
        op.infer(ins, &attrs).map_err(|e| e.msg)
    }

    /// A dim from a constant or a symbol name.
    pub fn dim(s: &str) -> Dim {
        s.parse::<i64>().map(Dim::c).unwrap_or_else(|_| Dim::sym(s))
    }

    /// A type from a dtype and dims written as strings (`"seq"`, `"4"`).
    pub fn tt(dtype: DType, dims: &[&str]) -> TensorType {
        TensorType::new(dtype, Shape(dims.iter().map(|d| dim(d)).collect()))
    }

    /// An f32 tensor.
    pub fn tf(shape: &[usize], v: &[f64]) -> Tensor {
        Tensor::from_f64(DType::F32, shape.to_vec(), v.to_vec())
    }

    /// An i64 tensor.
    pub fn ti(shape: &[usize], v: &[i64]) -> Tensor {
        Tensor::from_i64(DType::I64, shape.to_vec(), v.to_vec())
    }

    /// Asserts two float slices agree within `tol` (absolute + relative).
    pub fn close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "element {i}: got {g}, want {w}\n got {got:?}\nwant {want:?}"
            );
        }
    }

    /// One GGUF Q8_0 block: f16 scale `d`, then 32 signed bytes.
    pub fn q8_0_block(d: f32, q: &[i8; 32]) -> Vec<u8> {
        let mut b = half::f16::from_f32(d).to_le_bytes().to_vec();
        b.extend(q.iter().map(|&v| v as u8));
        b
    }
}
