//! Neural-network building blocks that passes and frontends produce: rms_norm,
//! layer_norm, rope, attention (with GQA, causal masking and an additive mask) and
//! kv_append (the stateful KV-cache op). The reference semantics are written as the
//! papers and llama.cpp/Hugging Face define them, in f64, so kernels and fused rewrites
//! have one oracle.

use super::tensor::concat_tensors;
use super::util::{
    arg, dot, floats, need_float, need_int, opt_bool, opt_float, opt_int, opt_str, req_float,
    req_int, targ, R, T,
};
use crate::interp::EvalCtx;
use crate::tensor::{broadcast_shapes, Data};
use crate::{Attrs, Dim, Shape, Tensor, TensorType};

// ----- rms_norm / layer_norm -----

/// Shape rule of `rms_norm` and `layer_norm`: x float, w (and b) `[d]` with d the last
/// dim of x and x's dtype; result = x's type.
pub fn infer_norm(i: &[&TensorType], a: &Attrs) -> T {
    let x = targ(i, 0, "x")?;
    targ(i, 1, "w")?;
    need_float(x, "operand x")?;
    req_float(a, "eps")?;
    let dtype = x.dtype.compute_type();
    let Some(d) = x.shape.0.last() else {
        return Err("operand x must have rank >= 1, got a scalar".into());
    };
    for (k, (t, name)) in i.iter().zip(["x", "w", "b"]).enumerate().skip(1) {
        if t.dtype.compute_type() != dtype {
            return Err(format!(
                "operand {k} ({name}) is {}, x is {}",
                t.dtype, x.dtype
            ));
        }
        if t.shape.0[..] != [d.clone()] {
            return Err(format!(
                "operand {k} ({name}) must be [{d}] (the last dim of x {}), got {}",
                x.shape, t.shape
            ));
        }
    }
    Ok(vec![TensorType::new(dtype, x.shape.clone())])
}

/// A norm's checked runtime operands: x, w, optional b, and d (the last dim of x).
type NormArgs<'a> = (&'a [f64], &'a [f64], Option<&'a [f64]>, usize);

/// Checks a norm's runtime operands.
fn norm_operands<'a>(i: &[&'a Tensor]) -> Result<NormArgs<'a>, String> {
    let xt = arg(i, 0, "x")?;
    let x = floats(xt, "operand x")?;
    let Some(&d) = xt.shape.last() else {
        return Err("operand x must have rank >= 1, got a scalar".into());
    };
    let mut ps = Vec::new();
    for (k, name) in [(1, "w"), (2, "b")] {
        let Some(t) = i.get(k) else { continue };
        if t.shape[..] != [d] {
            return Err(format!(
                "operand {k} ({name}) must be [{d}] (the last dim of x {:?}), got {:?}",
                xt.shape, t.shape
            ));
        }
        ps.push(floats(t, name)?);
    }
    let w = *ps.first().ok_or("missing operand 1 (w)")?;
    Ok((x, w, ps.get(1).copied(), d))
}

/// Reference semantics of `rms_norm`: y = x / sqrt(mean(x^2) + eps) * w.
pub fn eval_rms_norm(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let (x, w, _, d) = norm_operands(i)?;
    let eps = req_float(a, "eps")?;
    let mut out = vec![0.0; x.len()];
    if d > 0 {
        for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let ms = xr.iter().map(|v| v * v).sum::<f64>() / d as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            for ((o, &xv), &wv) in or.iter_mut().zip(xr).zip(w) {
                *o = xv * inv * wv;
            }
        }
    }
    Ok(vec![Tensor::from_f64(i[0].dtype, i[0].shape.clone(), out)])
}

/// Reference semantics of `layer_norm`: (x - mean) / sqrt(var + eps) * w + b, with the
/// population variance over the last axis.
pub fn eval_layer_norm(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let (x, w, b, d) = norm_operands(i)?;
    let eps = req_float(a, "eps")?;
    let mut out = vec![0.0; x.len()];
    if d > 0 {
        for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let mean = xr.iter().sum::<f64>() / d as f64;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + eps).sqrt();
            for (j, (o, &xv)) in or.iter_mut().zip(xr).enumerate() {
                *o = (xv - mean) * inv * w[j] + b.map_or(0.0, |b| b[j]);
            }
        }
    }
    Ok(vec![Tensor::from_f64(i[0].dtype, i[0].shape.clone(), out)])
}

// ----- rope -----

#[derive(Clone, Copy, PartialEq)]
pub(super) enum RopeStyle {
    Neox,
    Interleaved,
}

/// (theta, style, scale) from the attributes, validated.
pub(super) fn rope_attrs(a: &Attrs) -> Result<(f64, RopeStyle, f64), String> {
    let theta = req_float(a, "theta")?;
    if !(theta > 0.0 && theta.is_finite()) {
        return Err(format!(
            "attribute `theta` = {theta:?} must be a positive number"
        ));
    }
    let style = match opt_str(a, "style")?.unwrap_or("neox") {
        "neox" => RopeStyle::Neox,
        "interleaved" => RopeStyle::Interleaved,
        other => {
            return Err(format!(
                "attribute `style` = {other:?} is unknown (expected \"neox\" or \"interleaved\")"
            ))
        }
    };
    let scale = opt_float(a, "scale")?.unwrap_or(1.0);
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(format!(
            "attribute `scale` = {scale:?} must be a positive number"
        ));
    }
    Ok((theta, style, scale))
}

/// The rotated channel count: `dims` (default d), even, in 2..=d.
pub(super) fn rope_dims(a: &Attrs, d: Option<i64>) -> Result<Option<i64>, String> {
    let dims = opt_int(a, "dims")?.or(d);
    if let Some(r) = dims {
        if r <= 0 || r % 2 != 0 || d.is_some_and(|d| r > d) {
            let dd = d.map_or("d".to_string(), |v| v.to_string());
            return Err(format!(
                "attribute `dims` = {r} must be even and in 2..={dd} (the head dim)"
            ));
        }
    }
    Ok(dims)
}

/// Shape rule of `rope`: x[b, h, s, d] float, pos[b or 1, s] integer; result = x's type.
pub fn infer_rope(i: &[&TensorType], a: &Attrs) -> T {
    let (x, pos) = (targ(i, 0, "x")?, targ(i, 1, "pos")?);
    need_float(x, "operand x")?;
    need_int(pos, "operand pos")?;
    rope_attrs(a)?;
    let [b, _, s, d] = &x.shape.0[..] else {
        return Err(format!("operand x must be [b, h, s, d], got {}", x.shape));
    };
    let [pb, ps] = &pos.shape.0[..] else {
        return Err(format!("operand pos must be [b, s], got {}", pos.shape));
    };
    if (pb != b && *pb != Dim::c(1)) || ps != s {
        return Err(format!(
            "operand pos {} does not match x {}: expected [{b}, {s}]",
            pos.shape, x.shape
        ));
    }
    match d.as_const() {
        Some(dv) => {
            rope_dims(a, Some(dv))?;
        }
        None => {
            if opt_int(a, "dims")?.is_none() {
                return Err(format!(
                    "head dim {d} of x is symbolic: attribute `dims` must be given"
                ));
            }
            rope_dims(a, None)?;
        }
    }
    Ok(vec![TensorType::new(
        x.dtype.compute_type(),
        x.shape.clone(),
    )])
}

/// Reference semantics of `rope`: for i < dims/2, angle = (pos / scale) *
/// theta^(-2i/dims); pairs (x[i], x[i + dims/2]) ("neox") or (x[2i], x[2i+1])
/// ("interleaved") rotate by the angle; channels >= dims pass through.
pub fn eval_rope(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let (xt, pt) = (arg(i, 0, "x")?, arg(i, 1, "pos")?);
    let x = floats(xt, "operand x")?;
    let Data::I(pos) = &pt.data else {
        return Err(format!(
            "operand pos must be an integer tensor, got {}",
            pt.dtype
        ));
    };
    let (theta, style, scale) = rope_attrs(a)?;
    let [b, h, s, d] = xt.shape[..] else {
        return Err(format!(
            "operand x must be [b, h, s, d], got {:?}",
            xt.shape
        ));
    };
    let pb = match pt.shape[..] {
        [pb, ps] if (pb == b || pb == 1) && ps == s => pb,
        _ => {
            return Err(format!(
                "operand pos {:?} does not match x {:?}: expected [{b}, {s}]",
                pt.shape, xt.shape
            ))
        }
    };
    let dims = rope_dims(a, Some(d as i64))?.unwrap_or(0) as usize;
    let half = dims / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|k| theta.powf(-2.0 * k as f64 / dims as f64))
        .collect();
    let mut out = x.to_vec();
    for bi in 0..b {
        for hi in 0..h {
            for si in 0..s {
                let p = pos[(if pb == 1 { 0 } else { bi }) * s + si] as f64 / scale;
                let base = ((bi * h + hi) * s + si) * d;
                let row = &x[base..base + d];
                let orow = &mut out[base..base + d];
                for (k, &f) in inv_freq.iter().enumerate() {
                    let (sin, cos) = (p * f).sin_cos();
                    let (ia, ib) = match style {
                        RopeStyle::Neox => (k, k + half),
                        RopeStyle::Interleaved => (2 * k, 2 * k + 1),
                    };
                    let (va, vb) = (row[ia], row[ib]);
                    orow[ia] = va * cos - vb * sin;
                    orow[ib] = va * sin + vb * cos;
                }
            }
        }
    }
    Ok(vec![Tensor::from_f64(xt.dtype, xt.shape.clone(), out)])
}

// ----- attention -----

/// Shape rule of `attention`: q[b, h, s, dk], k[b, kvh, t, dk], v[b, kvh, t, dv],
/// optional float mask broadcastable to [b, h, s, t]; result [b, h, s, dv].
pub fn infer_attention(i: &[&TensorType], a: &Attrs) -> T {
    let (q, k, v) = (targ(i, 0, "q")?, targ(i, 1, "k")?, targ(i, 2, "v")?);
    req_float(a, "scale")?;
    opt_bool(a, "causal", false)?;
    window_softcap(a)?;
    need_float(q, "operand q")?;
    let dtype = q.dtype.compute_type();
    for (t, name) in [(k, "k"), (v, "v")] {
        if t.dtype.compute_type() != dtype {
            return Err(format!("operand {name} is {}, q is {}", t.dtype, q.dtype));
        }
    }
    let [b, h, s, dk] = &q.shape.0[..] else {
        return Err(format!("operand q must be [b, h, s, dk], got {}", q.shape));
    };
    let [kb, kvh, t, kdk] = &k.shape.0[..] else {
        return Err(format!(
            "operand k must be [b, kvh, t, dk], got {}",
            k.shape
        ));
    };
    let [vb, vkvh, vt, dv] = &v.shape.0[..] else {
        return Err(format!(
            "operand v must be [b, kvh, t, dv], got {}",
            v.shape
        ));
    };
    if kb != b || kdk != dk {
        return Err(format!(
            "operand k {} does not match q {}: expected [{b}, kvh, t, {dk}]",
            k.shape, q.shape
        ));
    }
    if vb != b || vkvh != kvh || vt != t {
        return Err(format!(
            "operand v {} does not match k {}: expected [{b}, {kvh}, {t}, dv]",
            v.shape, k.shape
        ));
    }
    if h != kvh {
        match (h.as_const(), kvh.as_const()) {
            (Some(hv), Some(kv)) if kv > 0 && hv % kv == 0 => {}
            _ => {
                return Err(format!(
                    "q's head count {h} is not a multiple of k's {kvh} (grouped-query attention needs h % kvh == 0)"
                ))
            }
        }
    }
    if let Some(m) = i.get(3) {
        if !m.dtype.is_float() {
            return Err(format!(
                "operand mask must be an additive float mask, got {}",
                m.dtype
            ));
        }
        let scores = Shape(vec![b.clone(), h.clone(), s.clone(), t.clone()]);
        if m.shape.rank() > 4 || m.shape.broadcast(&scores).as_ref() != Some(&scores) {
            return Err(format!(
                "operand mask {} does not broadcast to the scores {scores}",
                m.shape
            ));
        }
    }
    Ok(vec![TensorType::new(
        dtype,
        Shape(vec![b.clone(), h.clone(), s.clone(), dv.clone()]),
    )])
}

/// The optional `window` (an int >= 0; 0 = none) and `softcap` (a float > 0) of
/// `attention` and `flash_attention`.
pub fn window_softcap(a: &Attrs) -> Result<(Option<i64>, Option<f64>), String> {
    let window = match a.get("window") {
        None | Some(crate::Attr::Int(0)) => None,
        Some(crate::Attr::Int(w)) if *w > 0 => Some(*w),
        Some(other) => {
            return Err(format!(
                "attribute `window` must be an int >= 0, got {other:?}"
            ))
        }
    };
    let softcap = match a.get("softcap") {
        None => None,
        Some(crate::Attr::Float(c)) if *c > 0.0 && c.is_finite() => Some(*c),
        Some(other) => {
            return Err(format!(
                "attribute `softcap` must be a finite float > 0, got {other:?}"
            ))
        }
    };
    Ok((window, softcap))
}

/// Reference semantics of `attention`: softmax(q kᵀ scale + mask) v per head; query
/// head j reads kv head j / (h / kvh); query i sits at position p = i + t - s (the last
/// query aligned with the last key); causal lets it see key j iff j <= p, a `window` w
/// hides the keys j <= p - w; `softcap` c makes a score c·tanh(score / c) before the
/// mask is added; a row with no visible key gives zeros.
pub fn eval_attention(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let (qt, kt, vt) = (arg(i, 0, "q")?, arg(i, 1, "k")?, arg(i, 2, "v")?);
    let (q, k, v) = (
        floats(qt, "operand q")?,
        floats(kt, "operand k")?,
        floats(vt, "operand v")?,
    );
    let scale = req_float(a, "scale")?;
    let causal = opt_bool(a, "causal", false)?;
    let (window, softcap) = window_softcap(a)?;
    let cap = |x: f64| softcap.map_or(x, |c| c * (x / c).tanh());
    // Keys past the causal bound: dropped, or scored q·k·scale + fill (flash_attention's
    // `causal_fill`, the value a where-mask put there).
    let fill = match a.get("causal_fill") {
        None => None,
        Some(crate::Attr::Float(f)) => Some(*f),
        Some(other) => {
            return Err(format!(
                "attribute `causal_fill` must be a float, got {other:?}"
            ))
        }
    };
    let [b, h, s, dk] = qt.shape[..] else {
        return Err(format!(
            "operand q must be [b, h, s, dk], got {:?}",
            qt.shape
        ));
    };
    let [kb, kvh, t, kdk] = kt.shape[..] else {
        return Err(format!(
            "operand k must be [b, kvh, t, dk], got {:?}",
            kt.shape
        ));
    };
    let [vb, vkvh, vtt, dv] = vt.shape[..] else {
        return Err(format!(
            "operand v must be [b, kvh, t, dv], got {:?}",
            vt.shape
        ));
    };
    if kb != b || kdk != dk {
        return Err(format!(
            "operand k {:?} does not match q {:?}: expected [{b}, kvh, t, {dk}]",
            kt.shape, qt.shape
        ));
    }
    if vb != b || vkvh != kvh || vtt != t {
        return Err(format!(
            "operand v {:?} does not match k {:?}: expected [{b}, {kvh}, {t}, dv]",
            vt.shape, kt.shape
        ));
    }
    if kvh == 0 || h % kvh != 0 {
        return Err(format!(
            "q's head count {h} is not a multiple of k's {kvh} (grouped-query attention needs h % kvh == 0)"
        ));
    }
    let group = h / kvh;
    // Mask strides over [b, h, s, t], 0 where the mask broadcasts.
    let mask = match i.get(3) {
        None => None,
        Some(mt) => {
            let m = floats(mt, "operand mask")?;
            let full = [b, h, s, t];
            if mt.shape.len() > 4 || broadcast_shapes(&mt.shape, &full).as_deref() != Some(&full) {
                return Err(format!(
                    "operand mask {:?} does not broadcast to the scores {full:?}",
                    mt.shape
                ));
            }
            let mut ms = [0usize; 4];
            let off = 4 - mt.shape.len();
            let st = mt.strides();
            for (d, &n) in mt.shape.iter().enumerate() {
                if n != 1 {
                    ms[off + d] = st[d];
                }
            }
            Some((m, ms))
        }
    };
    let mut out = vec![0.0; b * h * s * dv];
    let mut sc = vec![0.0f64; t];
    for bi in 0..b {
        for hi in 0..h {
            let kv = hi / group;
            let kbase = (bi * kvh + kv) * t;
            for si in 0..s {
                let qrow = &q[((bi * h + hi) * s + si) * dk..][..dk];
                for (j, scj) in sc.iter_mut().enumerate() {
                    let p = si as i64 + t as i64 - s as i64;
                    let visible = !causal || (j as i64) <= p;
                    let in_window = window.is_none_or(|w| (j as i64) > p - w);
                    let krow = &k[(kbase + j) * dk..][..dk];
                    *scj = if !in_window {
                        f64::NEG_INFINITY
                    } else if visible {
                        let qk = dot(qrow, krow);
                        let add = mask.map_or(0.0, |(m, ms)| {
                            m[bi * ms[0] + hi * ms[1] + si * ms[2] + j * ms[3]]
                        });
                        cap(qk * scale) + add
                    } else if let Some(f) = fill {
                        cap(dot(qrow, krow) * scale) + f
                    } else {
                        f64::NEG_INFINITY
                    };
                }
                let mx = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let orow = &mut out[((bi * h + hi) * s + si) * dv..][..dv];
                if mx == f64::NEG_INFINITY {
                    continue; // nothing visible: zeros
                }
                let mut total = 0.0;
                for scj in sc.iter_mut() {
                    *scj = (*scj - mx).exp();
                    total += *scj;
                }
                for (j, &p) in sc.iter().enumerate() {
                    let w = p / total;
                    let vrow = &v[(kbase + j) * dv..][..dv];
                    for (o, &vv) in orow.iter_mut().zip(vrow) {
                        *o += w * vv;
                    }
                }
            }
        }
    }
    Ok(vec![Tensor::from_f64(qt.dtype, vec![b, h, s, dv], out)])
}

// ----- kv_append -----

/// Shape rule of `kv_append`: k[b, kvh, seq, d], v[b, kvh, seq, dv] -> the whole cache,
/// [b, kvh, past + seq, d] and [b, kvh, past + seq, dv].
pub fn infer_kv_append(i: &[&TensorType], a: &Attrs) -> T {
    let (k, v) = (targ(i, 0, "k")?, targ(i, 1, "v")?);
    let layer = req_int(a, "layer")?;
    if layer < 0 {
        return Err(format!("attribute `layer` = {layer} must be >= 0"));
    }
    need_float(k, "operand k")?;
    if v.dtype != k.dtype {
        return Err(format!("operand v is {}, k is {}", v.dtype, k.dtype));
    }
    let [b, kvh, seq, _] = &k.shape.0[..] else {
        return Err(format!(
            "operand k must be [b, kvh, seq, d], got {}",
            k.shape
        ));
    };
    match &v.shape.0[..] {
        [vb, vh, vs, _] if vb == b && vh == kvh && vs == seq => {}
        _ => {
            return Err(format!(
                "operand v {} does not match k {}: expected [{b}, {kvh}, {seq}, dv]",
                v.shape, k.shape
            ))
        }
    }
    let total = Dim::sym("past")
        .checked_add(seq)
        .ok_or_else(|| super::util::overflow("past + seq"))?;
    Ok([k, v]
        .iter()
        .map(|t| {
            let mut dims = t.shape.0.clone();
            dims[2] = total.clone();
            TensorType::new(t.dtype.compute_type(), Shape(dims))
        })
        .collect())
}

/// Reference semantics of `kv_append`: appends to layer `layer`'s cache along axis 2
/// (creating it on first use) and returns the whole cache for that layer.
pub fn eval_kv_append(i: &[&Tensor], a: &Attrs, ctx: &mut EvalCtx) -> R {
    let (k, v) = (arg(i, 0, "k")?, arg(i, 1, "v")?);
    let layer = req_int(a, "layer")?;
    floats(k, "operand k")?;
    floats(v, "operand v")?;
    match (&k.shape[..], &v.shape[..]) {
        ([b, h, s, _], [vb, vh, vs, _]) if b == vb && h == vh && s == vs => {}
        _ => {
            return Err(format!(
                "operands k {:?} and v {:?} must be [b, kvh, seq, d] with equal b, kvh, seq",
                k.shape, v.shape
            ))
        }
    }
    let entry = match ctx.kv.layers.get(&layer) {
        None => (k.clone(), v.clone()),
        Some((ck, cv)) => {
            for (new, old, name) in [(k, ck, "k"), (v, cv, "v")] {
                let agree = new.dtype == old.dtype
                    && new.shape[0] == old.shape[0]
                    && new.shape[1] == old.shape[1]
                    && new.shape[3] == old.shape[3];
                if !agree {
                    return Err(format!(
                        "operand {name} {}{:?} does not match layer {layer}'s cache {}{:?} (b, kvh and d must agree)",
                        new.dtype, new.shape, old.dtype, old.shape
                    ));
                }
            }
            (concat_tensors(&[ck, k], 2)?, concat_tensors(&[cv, v], 2)?)
        }
    };
    let out = vec![entry.0.clone(), entry.1.clone()];
    ctx.kv.layers.insert(layer, entry);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::interp::{EvalCtx, Interpreter};
    use crate::ops::util::testing::*;
    use crate::{attrs, Attr, DType, Module, Op};

    #[test]
    fn gqa_attention_with_a_causal_offset() {
        // h = 4 query heads over kvh = 2 kv heads; s = 2 queries, t = 3 keys, so query i
        // sees keys j <= i + 1. dk = dv = 1 and scale 1 make every weight hand-checkable:
        // with k = [0, ln 3, ln 4] and q = 1 the scores are [0, ln 3, ln 4].
        let (l3, l4) = (3f64.ln(), 4f64.ln());
        // Heads 0, 1 read kv head 0; heads 2, 3 read kv head 1. Head 1 and 3 use q = 2,
        // which squares the exponentials: weights 1 : 9 (: 16).
        let q = tf(&[1, 4, 2, 1], &[1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]);
        let k = tf(&[1, 2, 3, 1], &[0.0, l3, l4, 0.0, l3, l4]);
        let v = tf(&[1, 2, 3, 1], &[1.0, 10.0, 100.0, -1.0, -10.0, -100.0]);
        let a = attrs([("scale", Attr::Float(1.0)), ("causal", Attr::Bool(true))]);
        let out = ev1(Op::Attention, &[&q, &k, &v], a);
        assert_eq!(out.shape, vec![1, 4, 2, 1]);
        let h0 = [(1.0 + 3.0 * 10.0) / 4.0, (1.0 + 30.0 + 400.0) / 8.0];
        let h1 = [(1.0 + 9.0 * 10.0) / 10.0, (1.0 + 90.0 + 1600.0) / 26.0];
        let want = [h0[0], h0[1], h1[0], h1[1], -h0[0], -h0[1], -h1[0], -h1[1]];
        close(&out.to_f64(), &want, 1e-6);
    }

    #[test]
    fn attention_mask_and_fully_masked_rows() {
        // More queries than keys: query 0 of 3 against 2 keys sees none (j <= 0 - 1).
        let q = tf(&[1, 1, 3, 1], &[1.0, 1.0, 1.0]);
        let k = tf(&[1, 1, 2, 1], &[0.0, 0.0]);
        let v = tf(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let a = attrs([("scale", Attr::Float(1.0)), ("causal", Attr::Bool(true))]);
        let out = ev1(Op::Attention, &[&q, &k, &v], a);
        close(&out.to_f64(), &[0.0, 0.0, 1.0, 2.0, 2.0, 3.0], 1e-12);
        // An additive [s, t] mask broadcast over batch and heads; -inf hides a key, and a
        // row of -inf gives zeros.
        let m = tf(
            &[3, 2],
            &[
                0.0,
                f64::NEG_INFINITY,
                f64::NEG_INFINITY,
                f64::NEG_INFINITY,
                0.0,
                0.0,
            ],
        );
        let a = attrs([("scale", Attr::Float(1.0))]);
        let out = ev1(Op::Attention, &[&q, &k, &v, &m], a.clone());
        close(&out.to_f64(), &[1.0, 2.0, 0.0, 0.0, 2.0, 3.0], 1e-12);
        let bad = tf(&[3, 3], &[0.0; 9]);
        let e = ev(Op::Attention, &[&q, &k, &v, &bad], a).unwrap_err();
        assert!(e.contains("does not broadcast to the scores"), "{e}");
    }

    #[test]
    fn attention_type_rule() {
        let q = tt(DType::F32, &["batch", "9", "seq", "64"]);
        let mut kt = tt(DType::F32, &["batch", "3", "past", "64"]);
        kt.shape.0[2] = dim("past").add(&dim("seq"));
        let a = attrs([("scale", Attr::Float(0.125)), ("causal", Attr::Bool(true))]);
        let t = inf(Op::Attention, &[&q, &kt, &kt], a.clone()).unwrap();
        assert_eq!(t[0].to_string(), "f32[batch, 9, seq, 64]");
        let k4 = tt(DType::F32, &["batch", "4", "t", "64"]);
        let e = inf(Op::Attention, &[&q, &k4, &k4], a.clone()).unwrap_err();
        assert!(e.contains("not a multiple"), "{e}");
        let v = tt(DType::F32, &["batch", "3", "t2", "64"]);
        let e = inf(Op::Attention, &[&q, &kt, &v], a).unwrap_err();
        assert!(e.contains("operand v"), "{e}");
    }

    #[test]
    fn kv_append_accumulates_over_two_runs() {
        let mut m = Module::new("kv");
        let k = m
            .graph
            .add_input("k", tt(DType::F32, &["1", "2", "seq", "2"]));
        let v = m
            .graph
            .add_input("v", tt(DType::F32, &["1", "2", "seq", "2"]));
        let outs = m
            .add_node(Op::KvAppend, &[k, v], attrs([("layer", Attr::Int(0))]))
            .unwrap();
        assert_eq!(m.graph.ty(outs[0]).to_string(), "f32[1, 2, past + seq, 2]");
        m.graph.outputs.extend(&outs);
        let mut it = Interpreter::new(&m);
        // Run 1: seq = 2. k[0, h, s, c] = 100h + 10s + c; v = -k.
        let k1: Vec<f64> = (0..8)
            .map(|i| (100 * (i / 4) + 10 * (i / 2 % 2) + i % 2) as f64)
            .collect();
        let v1: Vec<f64> = k1.iter().map(|x| -x).collect();
        let r1 = it
            .run(&[tf(&[1, 2, 2, 2], &k1), tf(&[1, 2, 2, 2], &v1)])
            .unwrap();
        assert_eq!(r1[0].shape, vec![1, 2, 2, 2]);
        assert_eq!(r1[0].to_f64(), k1);
        assert_eq!(it.kv.len(), 2);
        // Run 2: seq = 1, appended after position 1 of each head.
        let k2 = [7.0, 8.0, 9.0, 10.0];
        let v2 = [-7.0, -8.0, -9.0, -10.0];
        let r2 = it
            .run(&[tf(&[1, 2, 1, 2], &k2), tf(&[1, 2, 1, 2], &v2)])
            .unwrap();
        assert_eq!(r2[0].shape, vec![1, 2, 3, 2]);
        let want_k = [
            0.0, 1.0, 10.0, 11.0, 7.0, 8.0, 100.0, 101.0, 110.0, 111.0, 9.0, 10.0,
        ];
        assert_eq!(r2[0].to_f64(), want_k);
        assert_eq!(
            r2[1].to_f64(),
            want_k.iter().map(|x| -x).collect::<Vec<_>>()
        );
        assert_eq!(it.kv.len(), 3);
        // A new sequence starts empty.
        it.reset();
        let r3 = it
            .run(&[tf(&[1, 2, 1, 2], &k2), tf(&[1, 2, 1, 2], &v2)])
            .unwrap();
        assert_eq!(r3[0].shape, vec![1, 2, 1, 2]);
    }

    #[test]
    fn kv_append_rejects_a_cache_of_another_shape() {
        let mut ctx = EvalCtx::default();
        let a = attrs([("layer", Attr::Int(3))]);
        let x = tf(&[1, 2, 1, 2], &[0.0; 4]);
        Op::KvAppend.eval(&[&x, &x], &a, &mut ctx).unwrap();
        let y = tf(&[1, 2, 1, 4], &[0.0; 8]);
        let e = Op::KvAppend.eval(&[&y, &y], &a, &mut ctx).unwrap_err();
        assert!(e.contains("layer 3's cache"), "{e}");
    }

    #[test]
    fn rope_rotates_pairs() {
        // d = 4, theta = 100: inv_freq = [1, 100^-0.5 = 0.1]. pos = 3 and scale 2 give
        // angles [1.5, 0.15].
        let x = tf(&[1, 1, 1, 4], &[1.0, 2.0, 3.0, 4.0]);
        let pos = ti(&[1, 1], &[3]);
        let rot = |a: f64, b: f64, t: f64| (a * t.cos() - b * t.sin(), a * t.sin() + b * t.cos());
        let base = [("theta", Attr::Float(100.0)), ("scale", Attr::Float(2.0))];
        let run = |extra: Vec<(&str, Attr)>| {
            let mut a = attrs(base.clone());
            a.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
            ev1(Op::Rope, &[&x, &pos], a).to_f64()
        };
        // neox: pairs (0, 2) and (1, 3).
        let (a0, a2) = rot(1.0, 3.0, 1.5);
        let (a1, a3) = rot(2.0, 4.0, 0.15);
        close(&run(vec![]), &[a0, a1, a2, a3], 1e-6);
        // interleaved: pairs (0, 1) and (2, 3).
        let (b0, b1) = rot(1.0, 2.0, 1.5);
        let (b2, b3) = rot(3.0, 4.0, 0.15);
        close(
            &run(vec![("style", Attr::Str("interleaved".into()))]),
            &[b0, b1, b2, b3],
            1e-6,
        );
        // dims = 2: only the first pair rotates, with inv_freq [1]; channels 2, 3 pass.
        let (c0, c1) = rot(1.0, 2.0, 1.5);
        close(
            &run(vec![("dims", Attr::Int(2))]),
            &[c0, c1, 3.0, 4.0],
            1e-6,
        );
        let e = ev(
            Op::Rope,
            &[&x, &pos],
            attrs([
                ("theta", Attr::Float(1e4)),
                ("style", Attr::Str("gptj".into())),
            ]),
        )
        .unwrap_err();
        assert!(e.contains("`style` = \"gptj\" is unknown"), "{e}");
        let e = inf(
            Op::Rope,
            &[
                &tt(DType::F32, &["1", "9", "seq", "64"]),
                &tt(DType::I64, &["1", "seq"]),
            ],
            attrs([("theta", Attr::Float(1e4)), ("dims", Attr::Int(63))]),
        )
        .unwrap_err();
        assert!(e.contains("`dims` = 63"), "{e}");
    }

    #[test]
    fn norms() {
        let x = tf(&[1, 2], &[3.0, 4.0]);
        let w = tf(&[2], &[1.0, 2.0]);
        let a = attrs([("eps", Attr::Float(0.0))]);
        let r = 12.5f64.sqrt();
        close(
            &ev1(Op::RmsNorm, &[&x, &w], a.clone()).to_f64(),
            &[3.0 / r, 8.0 / r],
            1e-6,
        );
        let x = tf(&[3], &[1.0, 2.0, 3.0]);
        let w = tf(&[3], &[1.0, 1.0, 1.0]);
        let b = tf(&[3], &[0.0, 0.0, 1.0]);
        let sd = (2.0f64 / 3.0).sqrt();
        close(
            &ev1(Op::LayerNorm, &[&x, &w, &b], a.clone()).to_f64(),
            &[-1.0 / sd, 0.0, 1.0 / sd + 1.0],
            1e-6,
        );
        let e = ev(Op::RmsNorm, &[&x, &tf(&[2], &[1.0, 1.0])], a).unwrap_err();
        assert!(e.contains("must be [3]"), "{e}");
        let e = inf(
            Op::RmsNorm,
            &[&tt(DType::F32, &["seq", "576"]), &tt(DType::F16, &["576"])],
            attrs([("eps", Attr::Float(1e-5))]),
        )
        .unwrap_err();
        assert!(e.contains("operand 1 (w) is f16"), "{e}");
    }
}
