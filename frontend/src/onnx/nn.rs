//! Normalisations (`LayerNormalization`, `RMSNormalization`, `BatchNormalization`,
//! `InstanceNormalization`, `GroupNormalization`, `MeanVarianceNormalization`,
//! `LpNormalization`) and the non-constant `Pad` modes. A norm over the last axis with
//! 1-D scale/bias maps to the IR's `layer_norm`/`rms_norm`; other forms (another axis,
//! extra outputs, per-channel parameters) are written with reductions and elementwise
//! ops.

use super::import::{NodeCtx, V};
use super::registry::Registry;
use super::tensor::{norm_axis, reshape_to};
use llmc_ir::{attrs, Attr, Attrs, DType, Dim, Op};

type R = Result<Vec<V>, String>;

/// Adds this family's converters.
pub fn register(r: &mut Registry) {
    r.add("LayerNormalization", layer_norm);
    r.add("RMSNormalization", rms_norm);
    r.add("BatchNormalization", batch_norm);
    r.add("InstanceNormalization", instance_norm);
    r.add("GroupNormalization", group_norm);
    r.add("MeanVarianceNormalization", mvn);
    r.add("LpNormalization", lp_norm);
    r.add("LRN", lrn);
}

/// x / (bias + alpha / size * (sum of x^2 over the neighbouring channels))^beta; the
/// window sum is `size` shifted slices of the zero-padded squares.
fn lrn(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let size = cx.attr_opt_i("size")?.ok_or("missing attribute `size`")?;
    let alpha = cx.attr_f("alpha", 1e-4)?;
    let beta = cx.attr_f("beta", 0.75)?;
    let bias = cx.attr_f("bias", 1.0)?;
    let r = cx.rank(x);
    let c = cx
        .shape(x)
        .0
        .get(1)
        .and_then(Dim::as_const)
        .ok_or("the channel dim must be constant")?;
    if size <= 0 || r < 3 {
        return Err(format!(
            "size {size} and rank {r} do not make a channel window"
        ));
    }
    let (lo, hi) = ((size - 1) / 2, size - 1 - (size - 1) / 2);
    let sq = cx.bin(Op::Mul, x, x)?;
    let mut pads = vec![0i64; 2 * r];
    pads[1] = lo;
    pads[r + 1] = hi;
    let padded = cx.op(
        Op::Pad,
        &[sq],
        attrs([("pads", Attr::Ints(pads)), ("value", Attr::Float(0.0))]),
    )?;
    let mut sum: Option<V> = None;
    for k in 0..size {
        let s = cx.op(
            Op::Slice,
            &[padded],
            attrs([
                ("starts", Attr::Ints(vec![k])),
                ("ends", Attr::Ints(vec![k + c])),
                ("axes", Attr::Ints(vec![1])),
            ]),
        )?;
        sum = Some(match sum {
            Some(a) => cx.bin(Op::Add, a, s)?,
            None => s,
        });
    }
    let sum = sum.ok_or("empty window")?;
    let k = cx.scalar_like(x, alpha / size as f64);
    let b = cx.scalar_like(x, bias);
    let e = cx.scalar_like(x, beta);
    let t = cx.bin(Op::Mul, sum, k)?;
    let t = cx.bin(Op::Add, t, b)?;
    let d = cx.bin(Op::Pow, t, e)?;
    Ok(vec![cx.bin(Op::Div, x, d)?])
}

fn mean_over(cx: &mut NodeCtx, x: V, axes: &[i64]) -> Result<V, String> {
    cx.op(
        Op::ReduceMean,
        &[x],
        attrs([
            ("axes", Attr::Ints(axes.to_vec())),
            ("keepdims", Attr::Bool(true)),
        ]),
    )
}

/// The compute type of a norm: `stash_type` (default float) for float16/bfloat16 input.
fn stash(cx: &NodeCtx, x: V) -> Result<DType, String> {
    let code = cx.attr_i("stash_type", 1)?;
    let d =
        super::data::dtype_of(code as i32).map_err(|m| format!("attribute `stash_type`: {m}"))?;
    Ok(if cx.dtype(x) == DType::F64 {
        DType::F64
    } else {
        d
    })
}

fn layer_norm(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let scale = cx.input(1)?;
    let bias = cx.opt_input(2)?;
    cx.need_float(x, "input X")?;
    let rank = cx.rank(x);
    let axis = norm_axis(cx.attr_i("axis", -1)?, rank, "attribute `axis`")?;
    let eps = cx.attr_f("epsilon", 1e-5)?;
    let dt = cx.dtype(x);
    let last = cx.shape(x).0.last().cloned();
    let simple = axis + 1 == rank
        && !cx.wants_output(1)
        && !cx.wants_output(2)
        && cx.rank(scale) == 1
        && Some(&cx.shape(scale).0[0]) == last.as_ref()
        && bias.is_none_or(|b| cx.rank(b) == 1 && cx.shape(b) == cx.shape(scale))
        && cx.dtype(scale) == dt;
    if simple {
        let mut ins = vec![x, scale];
        ins.extend(bias);
        return Ok(vec![cx.op(
            Op::LayerNorm,
            &ins,
            attrs([("eps", Attr::Float(eps))]),
        )?]);
    }
    let st = stash(cx, x)?;
    let axes: Vec<i64> = (axis as i64..rank as i64).collect();
    let xs = cx.cast(x, st)?;
    let mean = mean_over(cx, xs, &axes)?;
    let d = cx.bin(Op::Sub, xs, mean)?;
    let d2 = cx.bin(Op::Mul, d, d)?;
    let var = mean_over(cx, d2, &axes)?;
    let e = cx.scalar(st, eps);
    let ve = cx.bin(Op::Add, var, e)?;
    let inv = cx.un(Op::Rsqrt, ve)?;
    let n = cx.bin(Op::Mul, d, inv)?;
    let n = cx.cast(n, dt)?;
    let mut y = cx.bin(Op::Mul, n, scale)?;
    if let Some(b) = bias {
        y = cx.bin(Op::Add, y, b)?;
    }
    Ok(vec![y, mean, inv])
}

fn rms_norm(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let scale = cx.input(1)?;
    cx.need_float(x, "input X")?;
    let rank = cx.rank(x);
    let axis = norm_axis(cx.attr_i("axis", -1)?, rank, "attribute `axis`")?;
    let eps = cx.attr_f("epsilon", 1e-5)?;
    let dt = cx.dtype(x);
    let last = cx.shape(x).0.last().cloned();
    if axis + 1 == rank
        && cx.rank(scale) == 1
        && Some(&cx.shape(scale).0[0]) == last.as_ref()
        && cx.dtype(scale) == dt
    {
        return Ok(vec![cx.op(
            Op::RmsNorm,
            &[x, scale],
            attrs([("eps", Attr::Float(eps))]),
        )?]);
    }
    let st = stash(cx, x)?;
    let axes: Vec<i64> = (axis as i64..rank as i64).collect();
    let xs = cx.cast(x, st)?;
    let x2 = cx.bin(Op::Mul, xs, xs)?;
    let ms = mean_over(cx, x2, &axes)?;
    let e = cx.scalar(st, eps);
    let me = cx.bin(Op::Add, ms, e)?;
    let inv = cx.un(Op::Rsqrt, me)?;
    let n = cx.bin(Op::Mul, xs, inv)?;
    let n = cx.cast(n, dt)?;
    Ok(vec![cx.bin(Op::Mul, n, scale)?])
}

/// Reshapes a per-channel `[C]` parameter to broadcast over axis 1 of a rank-`rank`
/// input: `[C, 1, ...]`.
fn per_channel(cx: &mut NodeCtx, p: V, rank: usize) -> Result<V, String> {
    if cx.rank(p) != 1 {
        return Err(format!(
            "per-channel parameter must be 1-D, got {}",
            cx.ty(p)
        ));
    }
    let mut dims = vec![cx.shape(p).0[0].clone()];
    dims.extend(std::iter::repeat_n(Dim::c(1), rank.saturating_sub(2)));
    reshape_to(cx, p, dims)
}

/// (x - mean) / sqrt(var + eps) * scale + bias, parameters per channel.
fn normalize(
    cx: &mut NodeCtx,
    x: V,
    mean: V,
    var: V,
    eps: f64,
    scale: V,
    bias: V,
) -> Result<V, String> {
    let d = cx.bin(Op::Sub, x, mean)?;
    let e = cx.scalar_like(var, eps);
    let ve = cx.bin(Op::Add, var, e)?;
    let s = cx.un(Op::Sqrt, ve)?;
    let n = cx.bin(Op::Div, d, s)?;
    let y = cx.bin(Op::Mul, n, scale)?;
    cx.bin(Op::Add, y, bias)
}

fn batch_norm(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let rank = cx.rank(x);
    let eps = cx.attr_f("epsilon", 1e-5)?;
    let [s, b, m, v] = [1, 2, 3, 4].map(|i| cx.input(i));
    let (s, b, m, v) = (s?, b?, m?, v?);
    let (s, b) = (per_channel(cx, s, rank)?, per_channel(cx, b, rank)?);
    let training = cx.attr_i("training_mode", 0)? != 0;
    if !training {
        let (m, v) = (per_channel(cx, m, rank)?, per_channel(cx, v, rank)?);
        return Ok(vec![normalize(cx, x, m, v, eps, s, b)?]);
    }
    // Training mode: normalise with the batch statistics, update the running ones.
    let momentum = cx.attr_f("momentum", 0.9)?;
    let axes: Vec<i64> = (0..rank as i64).filter(|&a| a != 1).collect();
    let bm = mean_over(cx, x, &axes)?;
    let d = cx.bin(Op::Sub, x, bm)?;
    let d2 = cx.bin(Op::Mul, d, d)?;
    let bv = mean_over(cx, d2, &axes)?;
    let y = normalize(cx, x, bm, bv, eps, s, b)?;
    let c = cx.shape(m).clone();
    let bm1 = reshape_to(cx, bm, c.0.clone())?;
    let bv1 = reshape_to(cx, bv, c.0)?;
    let mo = cx.scalar_like(m, momentum);
    let mo1 = cx.scalar_like(m, 1.0 - momentum);
    let mut run = Vec::new();
    for (old, cur) in [(m, bm1), (v, bv1)] {
        let a = cx.bin(Op::Mul, old, mo)?;
        let bb = cx.bin(Op::Mul, cur, mo1)?;
        run.push(cx.bin(Op::Add, a, bb)?);
    }
    Ok(vec![y, run[0], run[1]])
}

fn instance_norm(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let rank = cx.rank(x);
    let eps = cx.attr_f("epsilon", 1e-5)?;
    let (s, b) = (cx.input(1)?, cx.input(2)?);
    let (s, b) = (per_channel(cx, s, rank)?, per_channel(cx, b, rank)?);
    let axes: Vec<i64> = (2..rank as i64).collect();
    let m = mean_over(cx, x, &axes)?;
    let d = cx.bin(Op::Sub, x, m)?;
    let d2 = cx.bin(Op::Mul, d, d)?;
    let v = mean_over(cx, d2, &axes)?;
    Ok(vec![normalize(cx, x, m, v, eps, s, b)?])
}

fn group_norm(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let (scale, bias) = (cx.input(1)?, cx.input(2)?);
    let eps = cx.attr_f("epsilon", 1e-5)?;
    let g = cx
        .attr_opt_i("num_groups")?
        .ok_or("missing attribute `num_groups`")?;
    let shape = cx.shape(x).clone();
    let rank = shape.rank();
    if rank < 2 {
        return Err(format!("input X must have rank >= 2, got {shape}"));
    }
    let c = shape.0[1]
        .as_const()
        .ok_or("the channel dim must be constant")?;
    if g <= 0 || c % g != 0 {
        return Err(format!("{c} channels do not split into {g} groups"));
    }
    let st = stash(cx, x)?;
    let dt = cx.dtype(x);
    let xs = cx.cast(x, st)?;
    // [N, G, C/G * spatial...] normalised over its last axis.
    let rest = llmc_ir::Shape(shape.0[1..].to_vec()).numel();
    let per = rest
        .div_exact(&Dim::c(g))
        .ok_or("group size does not divide the channel dims")?;
    let r = reshape_to(cx, xs, vec![shape.0[0].clone(), Dim::c(g), per])?;
    let m = mean_over(cx, r, &[2])?;
    let d = cx.bin(Op::Sub, r, m)?;
    let d2 = cx.bin(Op::Mul, d, d)?;
    let v = mean_over(cx, d2, &[2])?;
    let e = cx.scalar(st, eps);
    let ve = cx.bin(Op::Add, v, e)?;
    let inv = cx.un(Op::Rsqrt, ve)?;
    let n = cx.bin(Op::Mul, d, inv)?;
    let n = reshape_to(cx, n, shape.0.clone())?;
    let n = cx.cast(n, dt)?;
    // Opset 18 has per-group parameters ([G]); 21 per-channel ([C]).
    let (scale, bias) = if cx.shape(scale).0.first().and_then(Dim::as_const) == Some(g) && g != c {
        let rep = |cx: &mut NodeCtx, p: V| -> Result<V, String> {
            let u = reshape_to(cx, p, vec![Dim::c(g), Dim::c(1)])?;
            let e = cx.op(
                Op::Expand,
                &[u],
                attrs([("shape", Attr::Shape(llmc_ir::Shape::of(&[g, c / g])))]),
            )?;
            reshape_to(cx, e, vec![Dim::c(c)])
        };
        (rep(cx, scale)?, rep(cx, bias)?)
    } else {
        (scale, bias)
    };
    let (s, b) = (per_channel(cx, scale, rank)?, per_channel(cx, bias, rank)?);
    let y = cx.bin(Op::Mul, n, s)?;
    Ok(vec![cx.bin(Op::Add, y, b)?])
}

/// (x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9), as the ONNX function body.
fn mvn(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let axes = cx.attr_ints("axes")?.unwrap_or_else(|| vec![0, 2, 3]);
    let m = mean_over(cx, x, &axes)?;
    let x2 = cx.bin(Op::Mul, x, x)?;
    let m2 = mean_over(cx, x2, &axes)?;
    let mm = cx.bin(Op::Mul, m, m)?;
    let var = cx.bin(Op::Sub, m2, mm)?;
    let sd = cx.un(Op::Sqrt, var)?;
    let e = cx.scalar_like(x, 1e-9);
    let den = cx.bin(Op::Add, sd, e)?;
    let d = cx.bin(Op::Sub, x, m)?;
    Ok(vec![cx.bin(Op::Div, d, den)?])
}

fn lp_norm(cx: &mut NodeCtx) -> R {
    let x = cx.input(0)?;
    let axis = cx.attr_i("axis", -1)?;
    let p = cx.attr_i("p", 2)?;
    let a = attrs([
        ("axes", Attr::Ints(vec![axis])),
        ("keepdims", Attr::Bool(true)),
    ]);
    let norm = match p {
        1 => {
            let ab = cx.un(Op::Abs, x)?;
            cx.op(Op::ReduceSum, &[ab], a)?
        }
        2 => {
            let sq = cx.bin(Op::Mul, x, x)?;
            let s = cx.op(Op::ReduceSum, &[sq], a)?;
            cx.un(Op::Sqrt, s)?
        }
        other => return Err(format!("attribute `p` = {other} must be 1 or 2")),
    };
    let zero = cx.scalar_like(x, 0.0);
    let is0 = cx.bin(Op::Equal, norm, zero)?;
    let q = cx.bin(Op::Div, x, norm)?;
    Ok(vec![cx.op(Op::Where, &[is0, zero, q], Attrs::new())?])
}

/// `Pad` in `reflect`, `edge` or `wrap` mode, built from slices and concats (negative
/// pads crop first).
pub fn pad_mode(cx: &mut NodeCtx, x: V, pads: &[i64], mode: &str) -> Result<V, String> {
    let rank = cx.rank(x);
    if pads.len() != 2 * rank {
        return Err(format!(
            "pads {pads:?} must hold 2 values per axis of rank {rank}"
        ));
    }
    let sl = |cx: &mut NodeCtx, v: V, ax: usize, s: i64, e: i64, st: i64| {
        cx.op(
            Op::Slice,
            &[v],
            attrs([
                ("starts", Attr::Ints(vec![s])),
                ("ends", Attr::Ints(vec![e])),
                ("axes", Attr::Ints(vec![ax as i64])),
                ("steps", Attr::Ints(vec![st])),
            ]),
        )
    };
    let mut cur = x;
    for ax in 0..rank {
        let (b, e) = (pads[ax], pads[rank + ax]);
        if b < 0 || e < 0 {
            let end = if e < 0 { e } else { i64::MAX };
            cur = sl(cx, cur, ax, (-b).max(0), end, 1)?;
        }
        let (b, e) = (b.max(0), e.max(0));
        if b == 0 && e == 0 {
            continue;
        }
        let n = cx.shape(cur).0[ax]
            .as_const()
            .ok_or_else(|| format!("{mode} padding needs a constant dim at axis {ax}"))?;
        let mut parts = Vec::new();
        match mode {
            "edge" => {
                if b > 0 {
                    let f = sl(cx, cur, ax, 0, 1, 1)?;
                    parts.push(repeat(cx, f, ax, b)?);
                }
                parts.push(cur);
                if e > 0 {
                    let l = sl(cx, cur, ax, n - 1, n, 1)?;
                    parts.push(repeat(cx, l, ax, e)?);
                }
            }
            "reflect" => {
                if b >= n || e >= n {
                    return Err(format!(
                        "reflect pads ({b}, {e}) must be smaller than dim {n}"
                    ));
                }
                if b > 0 {
                    parts.push(sl(cx, cur, ax, b, 0, -1)?);
                }
                parts.push(cur);
                if e > 0 {
                    parts.push(sl(cx, cur, ax, n - 2, n - 2 - e, -1)?);
                }
            }
            "wrap" => {
                if b > n || e > n {
                    return Err(format!("wrap pads ({b}, {e}) must not exceed dim {n}"));
                }
                if b > 0 {
                    parts.push(sl(cx, cur, ax, n - b, n, 1)?);
                }
                parts.push(cur);
                if e > 0 {
                    parts.push(sl(cx, cur, ax, 0, e, 1)?);
                }
            }
            other => return Err(format!("attribute `mode` = {other:?} is unknown")),
        }
        cur = cx.op(Op::Concat, &parts, attrs([("axis", Attr::Int(ax as i64))]))?;
    }
    Ok(cur)
}

/// Repeats a size-1 axis `k` times.
fn repeat(cx: &mut NodeCtx, v: V, ax: usize, k: i64) -> Result<V, String> {
    let mut reps = vec![1i64; cx.rank(v)];
    reps[ax] = k;
    cx.op(Op::Tile, &[v], attrs([("repeats", Attr::Ints(reps))]))
}
