//! Transformer blocks ONNX has as single ops: `Attention` (opset 23: 3-D or 4-D
//! inputs, GQA, boolean or additive masks, causal masking aligned to the end of the KV
//! cache, past key/value concatenation, softcap, the optional QK output) and
//! `RotaryEmbedding`. Both are written with primitive IR ops following the ONNX
//! reference step by step (the scale applied to Q alone where the reference puts
//! sqrt(scale) on Q and on K; fully masked rows give zeros), so results agree with it
//! to rounding; the attention passes recognise the pattern later.

use super::import::{NodeCtx, V};
use super::registry::Registry;
use super::tensor::{reshape_to, transpose_by};
use llmc_ir::tensor::{round_to, Tensor};
use llmc_ir::{attrs, Attr, Attrs, DType, Dim, Op, Shape};

type R = Result<Vec<V>, String>;

/// Adds this family's converters.
pub fn register(r: &mut Registry) {
    r.add("Attention", attention);
    r.add("RotaryEmbedding", rotary_embedding);
}

/// [B, S, H*D] -> [B, H, S, D].
fn split_heads(cx: &mut NodeCtx, x: V, heads: i64, what: &str) -> Result<V, String> {
    let s = cx.shape(x).0.clone();
    if s.len() != 3 {
        return Err(format!("{what} must have rank 3, got {}", cx.ty(x)));
    }
    let hidden = s[2]
        .as_const()
        .ok_or_else(|| format!("{what}: hidden size {} must be constant", s[2]))?;
    if heads <= 0 || hidden % heads != 0 {
        return Err(format!(
            "{what}: hidden size {hidden} does not split into {heads} heads"
        ));
    }
    let r = reshape_to(
        cx,
        x,
        vec![
            s[0].clone(),
            s[1].clone(),
            Dim::c(heads),
            Dim::c(hidden / heads),
        ],
    )?;
    transpose_by(cx, r, vec![0, 2, 1, 3])
}

fn const_dim(cx: &NodeCtx, v: V, axis: usize, what: &str) -> Result<i64, String> {
    let d = cx
        .shape(v)
        .0
        .get(axis)
        .ok_or_else(|| format!("{what}: {} has no axis {axis}", cx.ty(v)))?;
    d.as_const()
        .ok_or_else(|| format!("{what} must be a constant dim, got {d}"))
}

/// A [q, kv] constant: 0 where `allowed(i, j)`, -inf elsewhere.
fn bias_table(dt: DType, q: i64, kv: i64, allowed: impl Fn(i64, i64) -> bool) -> Tensor {
    let mut v = Vec::with_capacity((q * kv) as usize);
    for i in 0..q {
        for j in 0..kv {
            v.push(if allowed(i, j) {
                0.0
            } else {
                f64::NEG_INFINITY
            });
        }
    }
    Tensor::from_f64(dt, vec![q as usize, kv as usize], v)
}

/// where(cond, 0, -inf) in `dt`.
fn bias_of(cx: &mut NodeCtx, cond: V, dt: DType) -> Result<V, String> {
    let zero = cx.scalar(dt, 0.0);
    let ninf = cx.scalar(dt, f64::NEG_INFINITY);
    cx.op(Op::Where, &[cond, zero, ninf], Attrs::new())
}

/// A per-batch frontier mask [B, 1, q, kv]: `j - i <= off[b] + hi` and, for a window,
/// `i - j <= lo - off[b]`... expressed as d = i + off[b] - j with bounds on d.
fn frontier(
    cx: &mut NodeCtx,
    off: V,
    q: i64,
    kv: i64,
    lo: Option<i64>,
    hi: Option<i64>,
) -> Result<V, String> {
    let i = cx.constant(Tensor::from_i64(
        DType::I64,
        vec![q as usize, 1],
        (0..q).collect(),
    ));
    let j = cx.constant(Tensor::from_i64(
        DType::I64,
        vec![1, kv as usize],
        (0..kv).collect(),
    ));
    let b = cx.shape(off).numel();
    let o = reshape_to(cx, off, vec![b, Dim::c(1), Dim::c(1), Dim::c(1)])?;
    let o = cx.cast(o, DType::I64)?;
    let io = cx.bin(Op::Add, i, o)?;
    let d = cx.bin(Op::Sub, io, j)?; // i + off - j
    let mut allowed: Option<V> = None;
    // causal: j <= i + off  <=> d >= 0 ; window: d <= left and -d <= right.
    if let Some(h) = hi {
        let c = cx.scalar(DType::I64, -h as f64);
        allowed = Some(cx.bin(Op::GreaterEqual, d, c)?);
    }
    if let Some(l) = lo {
        let c = cx.scalar(DType::I64, l as f64);
        let a = cx.bin(Op::LessEqual, d, c)?;
        allowed = Some(match allowed {
            Some(x) => cx.bin(Op::And, x, a)?,
            None => a,
        });
    }
    allowed.ok_or_else(|| "empty frontier".to_string())
}

fn attention(cx: &mut NodeCtx) -> R {
    let (q0, k0, v0) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let mask = cx.opt_input(3)?;
    let past_k = cx.opt_input(4)?;
    let past_v = cx.opt_input(5)?;
    let nonpad = cx.opt_input(6)?;
    if past_k.is_some() != past_v.is_some() {
        return Err("past_key and past_value must be given together".into());
    }
    if nonpad.is_some() && past_k.is_some() {
        return Err("nonpad_kv_seqlen cannot be combined with past_key/past_value".into());
    }
    let dt = cx.dtype(q0);
    cx.need_float(q0, "input Q")?;
    let rank = cx.rank(q0);
    let (q, k, v) = match rank {
        3 => {
            let qh = cx
                .attr_opt_i("q_num_heads")?
                .ok_or("3-D inputs need attribute `q_num_heads`")?;
            let kvh = cx
                .attr_opt_i("kv_num_heads")?
                .ok_or("3-D inputs need attribute `kv_num_heads`")?;
            (
                split_heads(cx, q0, qh, "Q")?,
                split_heads(cx, k0, kvh, "K")?,
                split_heads(cx, v0, kvh, "V")?,
            )
        }
        4 => (q0, k0, v0),
        r => return Err(format!("inputs must have rank 3 or 4, got {r}")),
    };
    for (x, what) in [(q, "Q"), (k, "K"), (v, "V")]
        .into_iter()
        .chain(past_k.map(|p| (p, "past_key")))
        .chain(past_v.map(|p| (p, "past_value")))
    {
        if cx.rank(x) != 4 {
            return Err(format!(
                "{what} must be [batch, heads, seq, head_size], got {}",
                cx.ty(x)
            ));
        }
    }
    let head = const_dim(cx, q, 3, "the head size of Q")?;
    let scale = match cx.attr_opt_f("scale")? {
        Some(s) => s,
        None => 1.0 / (head as f64).sqrt(),
    };
    let (k, v) = match (past_k, past_v) {
        (Some(pk), Some(pv)) => {
            let a = attrs([("axis", Attr::Int(2))]);
            (
                cx.op(Op::Concat, &[pk, k], a.clone())?,
                cx.op(Op::Concat, &[pv, v], a)?,
            )
        }
        _ => (k, v),
    };
    let (present_k, present_v) = (k, v);
    // The query and key lengths must be constants only where a mask is built here
    // (causal, windows, nonpad_kv_seqlen, a short attn_mask padded); an export's own
    // mask over symbolic lengths is used as it is.
    let qlen = |cx: &NodeCtx| const_dim(cx, q, 2, "the query length");
    let kvlen = |cx: &NodeCtx| const_dim(cx, k, 2, "the key length");
    let causal = cx.attr_i("is_causal", 0)? != 0;
    let left = cx.attr_i("left_window_size", -1)?;
    let right = cx.attr_i("right_window_size", -1)?;
    let windowed = left >= 0 || right >= 0;

    // The additive bias, [q, kv] or broadcastable to [B, H, q, kv]; None = zeros.
    let mut mask = mask;
    if let Some(m) = mask {
        let mdim = cx.shape(m).0.last().cloned();
        let same = mdim.as_ref() == cx.shape(k).0.get(2);
        let mlen = mdim
            .as_ref()
            .and_then(Dim::as_const)
            .ok_or("attn_mask needs a constant last dim or the key length");
        if !same && mlen? < kvlen(cx)? {
            let (mlen, kvlen) = (mlen?, kvlen(cx)?);
            let mr = cx.rank(m);
            let mut pads = vec![0i64; 2 * mr];
            pads[2 * mr - 1] = kvlen - mlen;
            let fill = if cx.dtype(m) == DType::Bool {
                0.0
            } else {
                f64::NEG_INFINITY
            };
            mask = Some(cx.op(
                Op::Pad,
                &[m],
                attrs([("pads", Attr::Ints(pads)), ("value", Attr::Float(fill))]),
            )?);
        }
    }
    let mask_bias = match mask {
        Some(m) if cx.dtype(m) == DType::Bool => Some(bias_of(cx, m, dt)?),
        Some(m) => Some(m),
        None => None,
    };
    let offset = |cx: &NodeCtx| -> Result<i64, String> {
        Ok(past_k
            .map(|pk| const_dim(cx, pk, 2, "the past length"))
            .transpose()?
            .unwrap_or(0))
    };
    let mut bias = mask_bias;
    if windowed && bias.is_none() {
        let (qlen, kvlen) = (qlen(cx)?, kvlen(cx)?);
        bias = Some(cx.constant(Tensor::zeros(dt, vec![qlen as usize, kvlen as usize])));
    }
    let add = |cx: &mut NodeCtx, b: Option<V>, t: V| -> Result<Option<V>, String> {
        Ok(Some(match b {
            Some(b) => cx.bin(Op::Add, b, t)?,
            None => t,
        }))
    };
    if causal {
        let (qlen, kvlen, offset) = (qlen(cx)?, kvlen(cx)?, offset(cx)?);
        bias = match (nonpad, past_k) {
            (Some(np), None) => {
                let ql = cx.scalar(cx.dtype(np), qlen as f64);
                let off = cx.bin(Op::Sub, np, ql)?;
                let allowed = frontier(cx, off, qlen, kvlen, None, Some(0))?;
                let t = bias_of(cx, allowed, dt)?;
                add(cx, bias, t)?
            }
            _ => {
                let t = cx.constant(bias_table(dt, qlen, kvlen, |i, j| j <= i + offset));
                add(cx, bias, t)?
            }
        };
    }
    if windowed {
        let (qlen, kvlen, offset) = (qlen(cx)?, kvlen(cx)?, offset(cx)?);
        let lo = (left >= 0).then_some(left);
        let hi = (right >= 0).then_some(right);
        bias = match (nonpad, past_k) {
            (Some(np), None) => {
                let ql = cx.scalar(cx.dtype(np), qlen as f64);
                let off = cx.bin(Op::Sub, np, ql)?;
                let allowed = frontier(cx, off, qlen, kvlen, lo, hi)?;
                let t = bias_of(cx, allowed, dt)?;
                add(cx, bias, t)?
            }
            _ => {
                let t = cx.constant(bias_table(dt, qlen, kvlen, |i, j| {
                    let d = i + offset - j;
                    lo.is_none_or(|l| d <= l) && hi.is_none_or(|h| -d <= h)
                }));
                add(cx, bias, t)?
            }
        };
    }
    if let Some(np) = nonpad {
        let kvlen = kvlen(cx)?;
        let j = cx.constant(Tensor::from_i64(
            DType::I64,
            vec![1, kvlen as usize],
            (0..kvlen).collect(),
        ));
        let b = cx.shape(np).numel();
        let n = reshape_to(cx, np, vec![b.clone(), Dim::c(1)])?;
        let n = cx.cast(n, DType::I64)?;
        let keep = cx.bin(Op::Less, j, n)?;
        let keep = reshape_to(cx, keep, vec![b, Dim::c(1), Dim::c(1), Dim::c(kvlen)])?;
        let t = bias_of(cx, keep, dt)?;
        bias = add(cx, bias, t)?;
    }

    // GQA: repeat each KV head (interleaved: h0, h0, h1, h1, ...).
    let qh = const_dim(cx, q, 1, "the head count of Q")?;
    let kh = const_dim(cx, k, 1, "the head count of K")?;
    let (k, v) = if qh != kh && kh > 0 && qh % kh == 0 {
        let rep = |cx: &mut NodeCtx, x: V| -> Result<V, String> {
            let sh = cx.shape(x).0.clone();
            let u = cx.op(Op::Unsqueeze, &[x], attrs([("axes", Attr::Ints(vec![2]))]))?;
            let target = Shape(vec![
                sh[0].clone(),
                sh[1].clone(),
                Dim::c(qh / kh),
                sh[2].clone(),
                sh[3].clone(),
            ]);
            let e = cx.op(Op::Expand, &[u], attrs([("shape", Attr::Shape(target))]))?;
            reshape_to(
                cx,
                e,
                vec![sh[0].clone(), Dim::c(qh), sh[2].clone(), sh[3].clone()],
            )
        };
        (rep(cx, k)?, rep(cx, v)?)
    } else {
        (k, v)
    };

    // The whole scale on Q (the reference splits √scale over Q and K: the same to
    // rounding), so K reaches the matmul as the cache holds it, repeated for GQA.
    let s2 = cx.scalar(dt, round_to(dt, scale));
    let qs = cx.bin(Op::Mul, q, s2)?;
    let kt = transpose_by(cx, k, vec![0, 1, 3, 2])?;
    let mut qk = cx.bin(Op::MatMul, qs, kt)?;
    if let Some(cap) = cx.attr_opt_f("softcap")? {
        if cap > 0.0 {
            let c = cx.scalar(dt, cap);
            let d = cx.bin(Op::Div, qk, c)?;
            let t = cx.un(Op::Tanh, d)?;
            qk = cx.bin(Op::Mul, t, c)?;
        }
    }
    let qk_biased = match bias {
        Some(b) => cx.bin(Op::Add, qk, b)?,
        None => qk,
    };
    let mode = cx.attr_i("qk_matmul_output_mode", 0)?;
    let mut scores = qk_biased;
    if let Some(p) = cx.attr_opt_i("softmax_precision")? {
        let pd = super::data::dtype_of(p as i32)
            .map_err(|m| format!("attribute `softmax_precision`: {m}"))?;
        scores = cx.cast(scores, pd)?;
    }
    let mut probs = cx.op(Op::Softmax, &[scores], attrs([("axis", Attr::Int(-1))]))?;
    if bias.is_some() {
        // Rows whose bias is -inf everywhere attend to nothing: zeros, not NaN. Written
        // as sdpa's guard `where(isnan(p), 0, p)` (the softmax of such a row is NaN),
        // which the attention rules look through: flash_attention gives such rows zeros.
        let same = cx.bin(Op::Equal, probs, probs)?;
        let nan = cx.un(Op::Not, same)?;
        let z = cx.scalar_like(probs, 0.0);
        probs = cx.op(Op::Where, &[nan, z, probs], Attrs::new())?;
    }
    let qk_out = match mode {
        0 | 1 => qk,
        2 => qk_biased,
        3 => probs,
        m => {
            return Err(format!(
                "attribute `qk_matmul_output_mode` = {m} is unknown"
            ))
        }
    };
    let qk_out = cx.cast(qk_out, dt)?;
    let probs = cx.cast(probs, dt)?;
    let mut y = cx.bin(Op::MatMul, probs, v)?;
    if rank == 3 {
        let t = transpose_by(cx, y, vec![0, 2, 1, 3])?;
        let sh = cx.shape(t).0.clone();
        let hidden = sh[2].mul(&sh[3]);
        y = reshape_to(cx, t, vec![sh[0].clone(), sh[1].clone(), hidden])?;
    }
    Ok(vec![y, present_k, present_v, qk_out])
}

fn rotary_embedding(cx: &mut NodeCtx) -> R {
    let x0 = cx.input(0)?;
    let (cos0, sin0) = (cx.input(1)?, cx.input(2)?);
    let pos = cx.opt_input(3)?;
    let interleaved = cx.attr_i("interleaved", 0)? != 0;
    let rank = cx.rank(x0);
    let orig = cx.shape(x0).clone();
    // To [B, S, H, D].
    let x = match rank {
        4 => transpose_by(cx, x0, vec![0, 2, 1, 3])?,
        3 => {
            let nh = cx.attr_i("num_heads", 0)?;
            let hidden = orig.0[2].as_const().ok_or("hidden size must be constant")?;
            if nh <= 0 || hidden % nh != 0 {
                return Err(format!(
                    "3-D input needs `num_heads` dividing the hidden size {hidden}"
                ));
            }
            reshape_to(
                cx,
                x0,
                vec![
                    orig.0[0].clone(),
                    orig.0[1].clone(),
                    Dim::c(nh),
                    Dim::c(hidden / nh),
                ],
            )?
        }
        r => return Err(format!("input must have rank 3 or 4, got {r}")),
    };
    let head = const_dim(cx, x, 3, "the head size")?;
    let rd = match cx.attr_i("rotary_embedding_dim", 0)? {
        0 => head,
        d => d,
    };
    if rd <= 0 || rd % 2 != 0 || rd > head {
        return Err(format!(
            "rotary_embedding_dim {rd} must be even and at most the head size {head}"
        ));
    }
    let sl = |cx: &mut NodeCtx, v: V, s: i64, e: i64, st: i64| {
        cx.op(
            Op::Slice,
            &[v],
            attrs([
                ("starts", Attr::Ints(vec![s])),
                ("ends", Attr::Ints(vec![e])),
                ("axes", Attr::Ints(vec![3])),
                ("steps", Attr::Ints(vec![st])),
            ]),
        )
    };
    if rank == 4 && !interleaved && rd == head && pos.is_none() {
        // The common case (dynamo's opset-23 export of a Llama-style model) in
        // transformers' own spelling, which the rope rule fuses:
        // x·cos(concat(f, f)) + rotate_half(x)·sin(concat(f, f)) over [B, H, S, D].
        // The same products and sums as the reference's halves.
        let both = |cx: &mut NodeCtx, v: V| -> Result<V, String> {
            let c = cx.op(Op::Concat, &[v, v], attrs([("axis", Attr::Int(-1))]))?;
            cx.op(Op::Unsqueeze, &[c], attrs([("axes", Attr::Ints(vec![1]))]))
        };
        let (cos, sin) = (both(cx, cos0)?, both(cx, sin0)?);
        let x1 = sl(cx, x0, 0, rd / 2, 1)?;
        let x2 = sl(cx, x0, rd / 2, rd, 1)?;
        let n2 = cx.un(Op::Neg, x2)?;
        let rot = cx.op(Op::Concat, &[n2, x1], attrs([("axis", Attr::Int(3))]))?;
        let xc = cx.bin(Op::Mul, x0, cos)?;
        let rs = cx.bin(Op::Mul, rot, sin)?;
        return Ok(vec![cx.bin(Op::Add, xc, rs)?]);
    }
    let xr = sl(cx, x, 0, rd, 1)?;
    let (cos, sin) = match pos {
        Some(p) => {
            let a = attrs([("axis", Attr::Int(0))]);
            (
                cx.op(Op::Gather, &[cos0, p], a.clone())?,
                cx.op(Op::Gather, &[sin0, p], a)?,
            )
        }
        None => (cos0, sin0),
    };
    let un =
        |cx: &mut NodeCtx, v: V| cx.op(Op::Unsqueeze, &[v], attrs([("axes", Attr::Ints(vec![2]))]));
    let (cos, sin) = (un(cx, cos)?, un(cx, sin)?);
    let (x1, x2) = if interleaved {
        (sl(cx, xr, 0, rd, 2)?, sl(cx, xr, 1, rd, 2)?)
    } else {
        (sl(cx, xr, 0, rd / 2, 1)?, sl(cx, xr, rd / 2, rd, 1)?)
    };
    let c1 = cx.bin(Op::Mul, cos, x1)?;
    let s2 = cx.bin(Op::Mul, sin, x2)?;
    let real = cx.bin(Op::Sub, c1, s2)?;
    let s1 = cx.bin(Op::Mul, sin, x1)?;
    let c2 = cx.bin(Op::Mul, cos, x2)?;
    let imag = cx.bin(Op::Add, s1, c2)?;
    let rot = if interleaved {
        let ax = attrs([("axes", Attr::Ints(vec![4]))]);
        let r = cx.op(Op::Unsqueeze, &[real], ax.clone())?;
        let i = cx.op(Op::Unsqueeze, &[imag], ax)?;
        let c = cx.op(Op::Concat, &[r, i], attrs([("axis", Attr::Int(4))]))?;
        let xs = cx.shape(xr).0.clone();
        reshape_to(cx, c, xs)?
    } else {
        cx.op(Op::Concat, &[real, imag], attrs([("axis", Attr::Int(3))]))?
    };
    let out = if rd < head {
        let rest = sl(cx, x, rd, head, 1)?;
        cx.op(Op::Concat, &[rot, rest], attrs([("axis", Attr::Int(3))]))?
    } else {
        rot
    };
    let y = if rank == 3 {
        reshape_to(cx, out, orig.0)?
    } else {
        transpose_by(cx, out, vec![0, 2, 1, 3])?
    };
    Ok(vec![y])
}
