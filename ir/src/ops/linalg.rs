//! Matrix products: `matmul` (numpy semantics: 1-D operands promoted, batch dims
//! broadcast) and `linear` (x · wᵀ + b with w stored `[n, k]`, possibly block-quantized).
//! The reference loops run over contiguous f64 rows so the interpreter can run a small
//! LLM end to end in reasonable time; they accumulate in f64.

use super::util::{arg, checked_numel, dot, floats, targ, R, T};
use crate::interp::EvalCtx;
use crate::tensor::{broadcast_index, broadcast_shapes, Data};
use crate::{Attrs, DType, Shape, Tensor, TensorType};

/// Shape rule of `matmul`.
pub fn infer_matmul(i: &[&TensorType], _: &Attrs) -> T {
    let (a, b) = (targ(i, 0, "a")?, targ(i, 1, "b")?);
    let (da, db) = (a.dtype.compute_type(), b.dtype.compute_type());
    if da != db {
        return Err(format!("operand dtypes differ: a is {da}, b is {db}"));
    }
    if da == DType::Bool {
        return Err("operands must be numeric, got bool".into());
    }
    let (ra, rb) = (a.shape.rank(), b.shape.rank());
    if ra == 0 || rb == 0 {
        return Err(format!(
            "operands must have rank >= 1, got a: {} and b: {}",
            a.shape, b.shape
        ));
    }
    let ka = &a.shape.0[ra - 1];
    let kb = &b.shape.0[if rb == 1 { 0 } else { rb - 2 }];
    if ka != kb {
        return Err(format!(
            "contraction dims differ: a {} has k = {ka}, b {} has k = {kb}",
            a.shape, b.shape
        ));
    }
    let ba = Shape(a.shape.0[..ra.saturating_sub(2)].to_vec());
    let bb = Shape(b.shape.0[..rb.saturating_sub(2)].to_vec());
    let mut dims = ba
        .broadcast(&bb)
        .ok_or_else(|| format!("batch dims {ba} of a and {bb} of b do not broadcast"))?
        .0;
    if ra >= 2 {
        dims.push(a.shape.0[ra - 2].clone());
    }
    if rb >= 2 {
        dims.push(b.shape.0[rb - 1].clone());
    }
    Ok(vec![TensorType::new(da, Shape(dims))])
}

/// Reference semantics of `matmul`.
pub fn eval_matmul(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R {
    let (a, b) = (arg(i, 0, "a")?, arg(i, 1, "b")?);
    let (ra, rb) = (a.shape.len(), b.shape.len());
    if ra == 0 || rb == 0 {
        return Err(format!(
            "operands must have rank >= 1, got a: {:?} and b: {:?}",
            a.shape, b.shape
        ));
    }
    // Promote 1-D operands to matrices; the promoted dims are dropped at the end.
    let (m, k) = if ra == 1 {
        (1, a.shape[0])
    } else {
        (a.shape[ra - 2], a.shape[ra - 1])
    };
    let (kb, n) = if rb == 1 {
        (b.shape[0], 1)
    } else {
        (b.shape[rb - 2], b.shape[rb - 1])
    };
    if k != kb {
        return Err(format!(
            "contraction dims differ: a {:?} has k = {k}, b {:?} has k = {kb}",
            a.shape, b.shape
        ));
    }
    let ba = &a.shape[..ra.saturating_sub(2)];
    let bb = &b.shape[..rb.saturating_sub(2)];
    let batch = broadcast_shapes(ba, bb)
        .ok_or_else(|| format!("batch dims {ba:?} of a and {bb:?} of b do not broadcast"))?;
    let nb = checked_numel(&batch)?;
    let mut out_shape = batch.clone();
    if ra >= 2 {
        out_shape.push(m);
    }
    if rb >= 2 {
        out_shape.push(n);
    }
    checked_numel(&out_shape)?;
    match (&a.data, &b.data) {
        (Data::F(x), Data::F(y)) => {
            let mut out = vec![0.0f64; nb * m * n];
            for bi in 0..nb {
                let xa = &x[broadcast_index(bi, &batch, ba) * m * k..][..m * k];
                let yb = &y[broadcast_index(bi, &batch, bb) * k * n..][..k * n];
                let o = &mut out[bi * m * n..][..m * n];
                for r in 0..m {
                    let orow = &mut o[r * n..][..n];
                    for (p, &xv) in xa[r * k..][..k].iter().enumerate() {
                        for (ov, &yv) in orow.iter_mut().zip(&yb[p * n..][..n]) {
                            *ov += xv * yv;
                        }
                    }
                }
            }
            Ok(vec![Tensor::from_f64(a.dtype, out_shape, out)])
        }
        (Data::I(x), Data::I(y)) => {
            let mut out = vec![0i64; nb * m * n];
            for bi in 0..nb {
                let xa = &x[broadcast_index(bi, &batch, ba) * m * k..][..m * k];
                let yb = &y[broadcast_index(bi, &batch, bb) * k * n..][..k * n];
                let o = &mut out[bi * m * n..][..m * n];
                for r in 0..m {
                    let orow = &mut o[r * n..][..n];
                    for (p, &xv) in xa[r * k..][..k].iter().enumerate() {
                        for (ov, &yv) in orow.iter_mut().zip(&yb[p * n..][..n]) {
                            *ov = ov.wrapping_add(xv.wrapping_mul(yv));
                        }
                    }
                }
            }
            Ok(vec![Tensor::from_i64(a.dtype, out_shape, out)])
        }
        _ => Err(format!(
            "operand dtypes differ: a is {}, b is {}",
            a.dtype, b.dtype
        )),
    }
}

/// Shape rule of `linear`: x[..., k] · w[n, k]ᵀ (+ b[n]) -> x's dtype, [..., n]. The
/// weight computes as x's dtype (a block format computes as f32), or is stored
/// narrower than f32 activations (f16/bf16 weight-only precision: each element is
/// widened to f32 as it is read, so the weight streams at half the bytes).
pub fn infer_linear(i: &[&TensorType], a: &Attrs) -> T {
    let (i, norm) = split_norm(i, a)?;
    let (i, res) = split_residual(i, a)?;
    if let Some((nw, eps)) = norm {
        if glu_in_act(a)?.is_some() {
            return Err("attributes `norm_eps` and `glu_in` do not go together".into());
        }
        // x is read as rms_norm(x, nw) {eps}, which has x's type.
        let x = targ(i, 0, "x")?;
        let na = crate::attrs([("eps", crate::Attr::Float(eps))]);
        let xn = super::nn::infer_norm(&[x, nw], &na)
            .map_err(|e| format!("attribute `norm_eps`: {e}"))?;
        if xn[0] != *x {
            return Err(format!(
                "attribute `norm_eps`: x {x} must be in its compute type, as rms_norm's result"
            ));
        }
    }
    let mut out = match glu_in_act(a)? {
        None => infer_linear_plain(i, a)?,
        Some(act) => {
            // x is [.., 2k]: the linear reads act(x[.., :k]) · x[.., k:].
            let x = targ(i, 0, "x")?;
            let mut ga = Attrs::new();
            ga.insert("act".into(), crate::Attr::Str(act.into()));
            let xg = super::fused_gemm::infer_glu(&[x], &ga)
                .map_err(|e| format!("attribute `glu_in`: {e}"))?;
            let mut rest: Vec<&TensorType> = i.to_vec();
            rest[0] = &xg[0];
            infer_linear_plain(&rest, a)?
        }
    };
    if let Some(act) = glu_act(a)? {
        if res.is_some() {
            return Err("attributes `glu` and `residual` do not go together".into());
        }
        let mut ga = Attrs::new();
        ga.insert("act".into(), crate::Attr::Str(act.into()));
        out = super::fused_gemm::infer_glu(&[&out[0]], &ga)
            .map_err(|e| format!("attribute `glu`: {e}"))?;
    }
    if let (Some(r), Some(y)) = (res, out.first()) {
        if *r != y {
            return Err(format!(
                "residual r is {r}, expected the result's type {y} (attribute `residual`)"
            ));
        }
    }
    Ok(out)
}

/// The `glu` attribute of `linear`: the activation of a GLU applied to the result's
/// halves, `y = act(z[.., :n/2]) · z[.., n/2:]` for `z = x · wᵀ + b` (the gate/up
/// projection with its `glu` in the store).
pub fn glu_act(a: &Attrs) -> Result<Option<&str>, String> {
    act_attr(a, "glu")
}

/// The `glu_in` attribute of `linear`: its operand x is `[.., 2k]` and the linear
/// reads the GLU of its halves, `act(x[.., :k]) · x[.., k:]` (the down projection
/// with the MLP's glu in its activation read).
pub fn glu_in_act(a: &Attrs) -> Result<Option<&str>, String> {
    act_attr(a, "glu_in")
}

/// An optional attribute naming a known activation.
fn act_attr<'a>(a: &'a Attrs, key: &str) -> Result<Option<&'a str>, String> {
    match a.get(key) {
        None => Ok(None),
        Some(crate::Attr::Str(s)) => {
            super::fused_gemm::Act::from_name(s)
                .ok_or_else(|| format!("attribute `{key}`: unknown activation {s:?}"))?;
            Ok(Some(s.as_str()))
        }
        Some(v) => Err(format!(
            "attribute `{key}` must be an activation name, got {v:?}"
        )),
    }
}

/// A `linear`'s norm weight operand and its epsilon ([`split_norm`]).
pub type NormOperand<'a, X> = (&'a X, f64);

/// The `norm_eps` attribute: with `norm_eps = e` the last operand is the weight `nw`
/// (`[k]`) of an RMS norm the linear reads x through, `rms_norm(x, nw) {eps = e}` (the
/// norm before a projection, in the projection's activation read). Returns the
/// operands without it, and it with the epsilon.
pub fn split_norm<'a, X>(
    i: &'a [X],
    a: &Attrs,
) -> Result<(&'a [X], Option<NormOperand<'a, X>>), String> {
    match a.get("norm_eps") {
        None => Ok((i, None)),
        Some(crate::Attr::Float(e)) if i.len() >= 3 && *e >= 0.0 => {
            let (nw, rest) = i.split_last().ok_or("no operands")?;
            Ok((rest, Some((nw, *e))))
        }
        Some(crate::Attr::Float(e)) if *e >= 0.0 => {
            Err("attribute `norm_eps` needs the norm's weight operand after x and w".into())
        }
        Some(v) => Err(format!(
            "attribute `norm_eps` must be a float >= 0, got {v:?}"
        )),
    }
}

/// The `residual` attribute: with `residual = 1` the last operand is a residual `r`
/// of the result's type, added after the bias (and `linear_act`'s activation) as
/// the store's last step: `y = act(x · wᵀ + b) + r`. Returns the operands without it.
pub fn split_residual<'a, X>(i: &'a [X], a: &Attrs) -> Result<(&'a [X], Option<&'a X>), String> {
    match a.get("residual") {
        None | Some(crate::Attr::Int(0)) => Ok((i, None)),
        Some(crate::Attr::Int(1)) if i.len() >= 3 => {
            let (r, rest) = i.split_last().ok_or("no operands")?;
            Ok((rest, Some(r)))
        }
        Some(crate::Attr::Int(1)) => {
            Err("attribute `residual` needs a residual operand after x and w".into())
        }
        Some(v) => Err(format!("attribute `residual` must be 0 or 1, got {v:?}")),
    }
}

/// `y + r` elementwise (same shapes), in y's dtype: the residual step of `linear` and
/// `linear_act`, after `y` was rounded to its dtype.
pub fn add_residual(y: &Tensor, r: &Tensor) -> Result<Tensor, String> {
    if y.shape != r.shape {
        return Err(format!(
            "residual r {:?} does not match the result {:?}",
            r.shape, y.shape
        ));
    }
    let (yv, rv) = (y.to_f64(), floats(r, "residual r")?);
    let out = yv.iter().zip(rv).map(|(a, b)| a + b).collect();
    Ok(Tensor::from_f64(y.dtype, y.shape.clone(), out))
}

fn infer_linear_plain(i: &[&TensorType], a: &Attrs) -> T {
    let (x, w) = (targ(i, 0, "x")?, targ(i, 1, "w")?);
    match a.get("act_bits") {
        None | Some(crate::Attr::Int(8 | 16)) => {}
        Some(v) => return Err(format!("act_bits must be 8 or 16, got {v:?}")),
    }
    if !x.dtype.is_float() {
        return Err(format!("operand x must be a float tensor, got {}", x.dtype));
    }
    let narrow = x.dtype == DType::F32 && matches!(w.dtype, DType::F16 | DType::BF16);
    if w.dtype.compute_type() != x.dtype && !narrow {
        return Err(format!(
            "weight w ({}, computes as {}) does not match x's dtype {}",
            w.dtype,
            w.dtype.compute_type(),
            x.dtype
        ));
    }
    let r = x.shape.rank();
    if r == 0 {
        return Err("operand x must have rank >= 1, got a scalar".into());
    }
    let [n, k] = &w.shape.0[..] else {
        return Err(format!("weight w must be [n, k], got shape {}", w.shape));
    };
    if &x.shape.0[r - 1] != k {
        return Err(format!(
            "last dim of x {} is {}, weight w {} expects k = {k}",
            x.shape,
            x.shape.0[r - 1],
            w.shape
        ));
    }
    if let Some(amax) = a.get("act_amax") {
        let crate::Attr::Floats(v) = amax else {
            return Err(format!("act_amax must be a list of floats, got {amax:?}"));
        };
        if !w.dtype.is_quantized() {
            return Err(
                "act_amax (static activation scales) needs a block-quantized weight".into(),
            );
        }
        if k.as_const() != Some(v.len() as i64 * 32) {
            return Err(format!(
                "act_amax has {} values; k = {k} needs one per block of 32",
                v.len()
            ));
        }
        if let Some(bad) = v.iter().find(|x| !x.is_finite() || **x < 0.0) {
            return Err(format!("act_amax holds {bad}: expected finite ranges >= 0"));
        }
    }
    if let Some(b) = i.get(2) {
        if b.dtype.compute_type() != x.dtype {
            return Err(format!(
                "bias b is {}, expected x's dtype {}",
                b.dtype, x.dtype
            ));
        }
        if b.shape.0[..] != [n.clone()] {
            return Err(format!("bias b must be [{n}], got shape {}", b.shape));
        }
    }
    let mut dims = x.shape.0[..r - 1].to_vec();
    dims.push(n.clone());
    Ok(vec![TensorType::new(x.dtype, Shape(dims))])
}

/// Reference semantics of `linear` (w arrives dequantized when it is a block format),
/// plus the residual with `residual = 1`.
pub fn eval_linear(i: &[&Tensor], a: &Attrs, ctx: &mut EvalCtx) -> R {
    let (i, norm) = split_norm(i, a)?;
    let (i, res) = split_residual(i, a)?;
    let xn;
    let mut rest: Vec<&Tensor> = i.to_vec();
    if let (Some((nw, eps)), Some(x)) = (norm, i.first()) {
        let na = crate::attrs([("eps", crate::Attr::Float(eps))]);
        xn = super::nn::eval_rms_norm(&[*x, *nw], &na, ctx)?;
        rest[0] = &xn[0];
    }
    let i = &rest[..];
    let mut y = match (glu_in_act(a)?, i.first()) {
        (Some(act), Some(x)) => {
            let mut ga = Attrs::new();
            ga.insert("act".into(), crate::Attr::Str(act.into()));
            let xg = super::fused_gemm::eval_glu(&[*x], &ga, ctx)?;
            let mut rest: Vec<&Tensor> = i.to_vec();
            rest[0] = &xg[0];
            eval_linear_plain(&rest, a, ctx)?
        }
        _ => eval_linear_plain(i, a, ctx)?,
    };
    if let (Some(act), Some(z)) = (glu_act(a)?, y.first()) {
        let mut ga = Attrs::new();
        ga.insert("act".into(), crate::Attr::Str(act.into()));
        y = super::fused_gemm::eval_glu(&[z], &ga, ctx)?;
    }
    match (res, y.first()) {
        (Some(r), Some(y)) => Ok(vec![add_residual(y, r)?]),
        _ => Ok(y),
    }
}

/// `linear` without the residual: x · wᵀ + b.
pub fn eval_linear_plain(i: &[&Tensor], _: &Attrs, _: &mut EvalCtx) -> R {
    let (xt, wt) = (arg(i, 0, "x")?, arg(i, 1, "w")?);
    let x = floats(xt, "operand x")?;
    let w = floats(wt, "weight w")?;
    let [n, k] = wt.shape[..] else {
        return Err(format!("weight w must be [n, k], got shape {:?}", wt.shape));
    };
    let Some((&kx, lead)) = xt.shape.split_last() else {
        return Err("operand x must have rank >= 1, got a scalar".into());
    };
    if kx != k {
        return Err(format!(
            "last dim of x {:?} is {kx}, weight w {:?} expects k = {k}",
            xt.shape, wt.shape
        ));
    }
    let bias = match i.get(2) {
        Some(bt) => {
            let b = floats(bt, "bias b")?;
            if bt.shape[..] != [n] {
                return Err(format!("bias b must be [{n}], got shape {:?}", bt.shape));
            }
            Some(b)
        }
        None => None,
    };
    let rows: usize = lead.iter().product();
    let mut out_shape = lead.to_vec();
    out_shape.push(n);
    let mut out = vec![0.0f64; checked_numel(&out_shape)?];
    // Weight rows outermost: the weight (the big operand) streams through once, the
    // activation rows stay in cache.
    for j in 0..n {
        let wr = &w[j * k..][..k];
        let bj = bias.map_or(0.0, |b| b[j]);
        for r in 0..rows {
            out[r * n + j] = dot(&x[r * k..][..k], wr) + bj;
        }
    }
    Ok(vec![Tensor::from_f64(xt.dtype, out_shape, out)])
}

#[cfg(test)]
mod tests {
    use crate::interp::Interpreter;
    use crate::module::WeightData;
    use crate::ops::util::testing::*;
    use crate::{attrs, DType, Module, Op, Shape};
    use std::sync::Arc;

    #[test]
    fn matmul_promotes_vectors_and_broadcasts_batches() {
        let f = |d: &[&str]| tt(DType::F32, d);
        let r = |a, b| inf(Op::MatMul, &[&f(a), &f(b)], attrs([])).map(|t| t[0].to_string());
        assert_eq!(r(&["4"], &["2", "4", "5"]).unwrap(), "f32[2, 5]");
        assert_eq!(r(&["2", "3", "4"], &["4"]).unwrap(), "f32[2, 3]");
        assert_eq!(r(&["4"], &["4"]).unwrap(), "f32[]");
        assert_eq!(
            r(&["batch", "1", "seq", "64"], &["9", "64", "t"]).unwrap(),
            "f32[batch, 9, seq, t]"
        );
        let e = r(&["2", "3"], &["4", "5"]).unwrap_err();
        assert!(e.contains("contraction dims differ"), "{e}");
        let e = r(&["2", "2", "3"], &["3", "3", "5"]).unwrap_err();
        assert!(e.contains("do not broadcast"), "{e}");
    }

    #[test]
    fn matmul_values() {
        let a = tf(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let b = tf(&[2, 2], &[5.0, 6.0, 7.0, 8.0]);
        assert_eq!(
            ev1(Op::MatMul, &[&a, &b], attrs([])).to_f64(),
            vec![19.0, 22.0, 43.0, 50.0]
        );
        // A batch of two left matrices against one right matrix.
        let a2 = tf(&[2, 1, 2], &[1.0, 0.0, 0.0, 1.0]);
        let out = ev1(Op::MatMul, &[&a2, &b], attrs([]));
        assert_eq!(out.shape, vec![2, 1, 2]);
        assert_eq!(out.to_f64(), vec![5.0, 6.0, 7.0, 8.0]);
    }

    #[test]
    fn linear_reads_a_quantized_weight() {
        // w[2, 32] as Q8_0: row 0 = 0.5 * (i - 16), row 1 = 0.25 * (-1)^i.
        let q0: [i8; 32] = std::array::from_fn(|i| i as i8 - 16);
        let q1: [i8; 32] = std::array::from_fn(|i| if i % 2 == 0 { 1 } else { -1 });
        let mut bytes = q8_0_block(0.5, &q0);
        bytes.extend(q8_0_block(0.25, &q1));
        let mut m = Module::new("lin");
        let x = m.graph.add_input("x", tt(DType::F32, &["seq", "32"]));
        let w = m.add_weight(
            "w",
            DType::Q8_0,
            Shape::of(&[2, 32]),
            WeightData::Owned(Arc::new(bytes)),
        );
        let y = m.add1(Op::Linear, &[x, w], attrs([])).unwrap();
        assert_eq!(m.graph.ty(y).to_string(), "f32[seq, 2]");
        m.graph.outputs.push(y);
        let xv: Vec<f64> = (0..64).map(|i| (i % 7) as f64 - 3.0).collect();
        let out = Interpreter::new(&m).run(&[tf(&[2, 32], &xv)]).unwrap();
        let mut want = vec![];
        for r in 0..2 {
            let row = &xv[r * 32..][..32];
            want.push(
                (0..32)
                    .map(|i| row[i] * 0.5 * (i as f64 - 16.0))
                    .sum::<f64>(),
            );
            let alt = |i: usize| [0.25, -0.25][i % 2];
            want.push((0..32).map(|i| row[i] * alt(i)).sum::<f64>());
        }
        assert_eq!(out[0].shape, vec![2, 2]);
        close(&out[0].to_f64(), &want, 1e-6);
    }

    #[test]
    fn linear_type_rule() {
        let x = tt(DType::F32, &["batch", "seq", "576"]);
        let wq = tt(DType::Q4_1, &["49152", "576"]);
        let t = inf(Op::Linear, &[&x, &wq], attrs([])).unwrap();
        assert_eq!(t[0].to_string(), "f32[batch, seq, 49152]");
        let x16 = tt(DType::F16, &["2", "576"]);
        let e = inf(Op::Linear, &[&x16, &wq], attrs([])).unwrap_err();
        assert!(e.contains("does not match x's dtype f16"), "{e}");
        let b = tt(DType::F32, &["7"]);
        let e = inf(Op::Linear, &[&x, &wq, &b], attrs([])).unwrap_err();
        assert!(e.contains("bias b must be [49152]"), "{e}");
        let e = inf(Op::Linear, &[&tt(DType::F32, &["2", "5"]), &wq], attrs([])).unwrap_err();
        assert!(e.contains("expects k = 576"), "{e}");
        // f16/bf16 weights under f32 activations (weight-only precision); not the
        // other way round.
        for d in [DType::F16, DType::BF16] {
            let w = tt(d, &["8", "576"]);
            let t = inf(Op::Linear, &[&x, &w], attrs([])).unwrap();
            assert_eq!(t[0].to_string(), "f32[batch, seq, 8]");
        }
        let w32 = tt(DType::F32, &["8", "576"]);
        assert!(inf(Op::Linear, &[&x16, &w32], attrs([])).is_err());
    }

    #[test]
    fn linear_with_bias() {
        let x = tf(&[1, 2], &[1.0, 2.0]);
        let w = tf(&[3, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let b = tf(&[3], &[0.5, -0.5, 10.0]);
        assert_eq!(
            ev1(Op::Linear, &[&x, &w, &b], attrs([])).to_f64(),
            vec![1.5, 1.5, 13.0]
        );
    }
}
