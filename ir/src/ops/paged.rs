//! The serving form's two attention ops: `paged_kv_write` puts the new tokens' keys
//! and values into a paged KV pool, and `paged_attention` lets each query row attend
//! to its own sequence's keys through that sequence's block table. Together they
//! replace `kv_append` + attention when a decoder is lowered to one step over a flat
//! batch of token rows from many sequences (the engine's step function).
//!
//! A pool is `[blocks, kv_heads, block_size, d]`: key `j` of a sequence whose block
//! table is `tab` lives at `pool[tab[j / block_size], head, j % block_size, :]`. The
//! step's rows are the `s` axis of `[1, heads, s, d]`; row `r` belongs to sequence
//! `row_seq[r]` (a row of `block_tables`) and sits at position `pos[0, r]`, so it sees
//! keys `0..=pos` of its sequence (causal), or only the last `window` of them.
//!
//! With `token_major = 1` (on either op) the rows' own tensors are token-major: the
//! new keys and values of `paged_kv_write` are `[1, s, kv_heads, d]` and the query and
//! result of `paged_attention` are `[1, s, heads, d]`, the layout the linears before
//! and after them produce, so the serving form needs no transposes around attention.
//!
//! With `k_dim_major = 1` (on both ops; float pools only) the key pool keeps the same
//! declared shape but each block's head slice `[block_size, d]` is stored transposed,
//! dimension-major: key `j`'s element `c` at `((blk · kv_heads + head) · d + c) ·
//! block_size + j % block_size`. It is storage the runtime owns and only these two ops
//! read, so the layout is theirs to choose: a CPU kernel then scores a block's keys a
//! vector at a time (keys in lanes) instead of one horizontal sum per key.

use super::util::{arg, floats, need_float, opt_float, opt_int, req_float, req_int, targ, R, T};
use crate::interp::EvalCtx;
use crate::{Attrs, DType, Dim, Shape, Tensor, TensorType};

fn one(d: &Dim) -> bool {
    d.as_const() == Some(1)
}

/// Checks a pool type `[n, kvh, bs, d]` (a float type, or `q8_kv` with `d` a multiple
/// of 64: each token's head vector in int8 blocks with their own scale) and returns
/// its dims.
fn pool_dims<'a>(p: &'a TensorType, name: &str) -> Result<[&'a Dim; 4], String> {
    if p.dtype.is_quantized() && p.dtype != DType::Q8Kv {
        return Err(format!(
            "{name} is {}: a quantized pool must be q8_kv",
            p.dtype
        ));
    }
    need_float(p, name)?;
    match &p.shape.0[..] {
        [_, _, _, d] if p.dtype == DType::Q8Kv && d.as_const().is_none_or(|d| d % 64 != 0) => {
            Err(format!(
                "{name} is q8_kv with head dim {d}: a q8_kv pool needs a constant multiple of 64"
            ))
        }
        [n, h, b, d] => Ok([n, h, b, d]),
        _ => Err(format!(
            "{name} must be a pool [blocks, kv_heads, block_size, d], got {}",
            p.shape
        )),
    }
}

/// The `k_dim_major` attribute (0 when absent), checked against the key pool's type.
fn k_dim_major(a: &Attrs, kp: &TensorType) -> Result<bool, String> {
    match opt_int(a, "k_dim_major")?.unwrap_or(0) {
        0 => Ok(false),
        1 if kp.dtype == DType::Q8Kv => {
            Err("attribute `k_dim_major` needs a float k_pool, got q8_kv".into())
        }
        1 => Ok(true),
        x => Err(format!("attribute `k_dim_major` must be 0 or 1, got {x}")),
    }
}

/// The `token_major` attribute (0 when absent).
fn token_major(a: &Attrs) -> Result<bool, String> {
    match opt_int(a, "token_major")?.unwrap_or(0) {
        0 => Ok(false),
        1 => Ok(true),
        x => Err(format!("attribute `token_major` must be 0 or 1, got {x}")),
    }
}

/// Element index of element `c` of head `hh` of row `r` in a rows' tensor of `h`
/// heads, `s` rows and head dim `d`: `[1, h, s, d]`, or `[1, s, h, d]` token-major.
pub fn row_index(
    token_major: bool,
    (hh, r, c): (usize, usize, usize),
    h: usize,
    s: usize,
    d: usize,
) -> usize {
    if token_major {
        (r * h + hh) * d + c
    } else {
        (hh * s + r) * d + c
    }
}

/// Element index of key element `c` at `(blk, head, off)` of a key pool `[_, h, bs,
/// d]`, row-major or (`dim_major`) with each block's head slice transposed.
fn k_index(
    dim_major: bool,
    (blk, head, off, c): (usize, usize, usize, usize),
    h: usize,
    bs: usize,
    d: usize,
) -> usize {
    let slice = blk * h + head;
    if dim_major {
        (slice * d + c) * bs + off
    } else {
        (slice * bs + off) * d + c
    }
}

fn need_int_vec<'a>(t: &'a TensorType, name: &str, rank: usize) -> Result<&'a [Dim], String> {
    if !matches!(t.dtype, DType::I64 | DType::I32) {
        return Err(format!("{name} must be i32 or i64, got {}", t.dtype));
    }
    if t.shape.rank() != rank {
        return Err(format!("{name} must have rank {rank}, got {}", t.shape));
    }
    Ok(&t.shape.0)
}

/// Shape rule of `paged_kv_write(k[1, kvh, s, d], v[1, kvh, s, dv], k_pool, v_pool,
/// slots[s])` (k and v `[1, s, kvh, d]` with `token_major`): results are the pools'
/// types.
pub fn infer_paged_kv_write(i: &[&TensorType], a: &Attrs) -> T {
    let (k, v) = (targ(i, 0, "k")?, targ(i, 1, "v")?);
    let (kp, vp) = (targ(i, 2, "k_pool")?, targ(i, 3, "v_pool")?);
    k_dim_major(a, kp)?;
    let tm = token_major(a)?;
    let slots = targ(i, 4, "slots")?;
    let [kn, kh, kbs, kd] = pool_dims(kp, "operand k_pool")?;
    let [vn, vh, vbs, vd] = pool_dims(vp, "operand v_pool")?;
    if (kn, kh, kbs) != (vn, vh, vbs) {
        return Err(format!(
            "operand v_pool {} does not match k_pool {} in blocks, heads or block size",
            vp.shape, kp.shape
        ));
    }
    for (t, name, d) in [(k, "k", kd), (v, "v", vd)] {
        need_float(t, &format!("operand {name}"))?;
        match (&t.shape.0[..], tm) {
            ([b, h, _, dd], false) if one(b) && h == kh && dd == d => {}
            ([b, _, h, dd], true) if one(b) && h == kh && dd == d => {}
            (_, false) => {
                return Err(format!(
                    "operand {name} must be [1, {kh}, s, {d}] to match its pool, got {}",
                    t.shape
                ))
            }
            (_, true) => {
                return Err(format!(
                "operand {name} must be [1, s, {kh}, {d}] (token_major) to match its pool, got {}",
                t.shape
            ))
            }
        }
    }
    let sax = if tm { 1 } else { 2 };
    let s = &k.shape.0[sax];
    let sl = need_int_vec(slots, "operand slots", 1)?;
    if &sl[0] != s || v.shape.0[sax] != *s {
        return Err(format!(
            "operands k {}, v {} and slots {} must agree on the row count",
            k.shape, v.shape, slots.shape
        ));
    }
    Ok(vec![kp.clone(), vp.clone()])
}

/// Reference semantics of `paged_kv_write`: the pools with row `r`'s keys and values
/// written at slot `slots[r]` (block `slot / block_size`, offset `slot % block_size`);
/// into a `q8_kv` pool (held dequantized) each written head vector is rounded through
/// its blocks of 64 ([`crate::quant::q8_kv_round_trip`]); with `k_dim_major` the keys
/// go in transposed (see the module doc).
pub fn eval_paged_kv_write(i: &[&Tensor], a: &Attrs, ctx: &mut EvalCtx) -> R {
    let dim_major = opt_int(a, "k_dim_major")?.unwrap_or(0) == 1;
    let tm = token_major(a)?;
    let (k, v) = (arg(i, 0, "k")?, arg(i, 1, "v")?);
    let (kp, vp) = (arg(i, 2, "k_pool")?, arg(i, 3, "v_pool")?);
    let slots = arg(i, 4, "slots")?.to_i64();
    let mut out = Vec::with_capacity(2);
    for (j, (x, p, name)) in [(k, kp, "k"), (v, vp, "v")].into_iter().enumerate() {
        let q8 = ctx.result_dtypes.get(j) == Some(&DType::Q8Kv);
        let [n, h, bs, d] = p.shape[..] else {
            return Err(format!("operand {name}_pool must have rank 4"));
        };
        let s = x.shape.get(if tm { 1 } else { 2 }).copied().unwrap_or(0);
        let xs = floats(x, &format!("operand {name}"))?;
        let mut pool = floats(p, &format!("operand {name}_pool"))?.to_vec();
        for (r, &slot) in slots.iter().enumerate().take(s) {
            if slot < 0 || slot as usize >= n * bs {
                return Err(format!(
                    "row {r}: slot {slot} is outside the pool of {n} blocks x {bs}"
                ));
            }
            let (blk, off) = (slot as usize / bs, slot as usize % bs);
            for hh in 0..h {
                let src = &xs[row_index(tm, (hh, r, 0), h, s, d)..][..d];
                if dim_major && j == 0 {
                    for (c, &x) in src.iter().enumerate() {
                        pool[k_index(true, (blk, hh, off, c), h, bs, d)] = x;
                    }
                    continue;
                }
                let dst = &mut pool[((blk * h + hh) * bs + off) * d..][..d];
                if q8 {
                    dst.copy_from_slice(&crate::quant::q8_kv_round_trip(src));
                } else {
                    dst.copy_from_slice(src);
                }
            }
        }
        out.push(Tensor::from_f64(p.dtype, p.shape.clone(), pool));
    }
    Ok(out)
}

/// The query head count of `paged_qkv_write` (attribute `heads`), checked.
fn qkv_heads(a: &Attrs) -> Result<usize, String> {
    match req_int(a, "heads")? {
        h if h > 0 => Ok(h as usize),
        h => Err(format!("attribute `heads` must be > 0, got {h}")),
    }
}

/// Shape rule of `paged_qkv_write(qkv[1, s, (heads + 2 kvh)·d], k_pool, v_pool,
/// slots[s], pos[1, s])`: the pools' types, then the rotated queries `[1, s, heads, d]`
/// in qkv's compute type.
pub fn infer_paged_qkv_write(i: &[&TensorType], a: &Attrs) -> T {
    let qkv = targ(i, 0, "qkv")?;
    let (kp, vp) = (targ(i, 1, "k_pool")?, targ(i, 2, "v_pool")?);
    let (slots, pos) = (targ(i, 3, "slots")?, targ(i, 4, "pos")?);
    need_float(qkv, "operand qkv")?;
    k_dim_major(a, kp)?;
    super::nn::rope_attrs(a)?;
    let heads = qkv_heads(a)?;
    let [kn, kh, kbs, kd] = pool_dims(kp, "operand k_pool")?;
    let [vn, vh, vbs, vd] = pool_dims(vp, "operand v_pool")?;
    if (kn, kh, kbs, kd) != (vn, vh, vbs, vd) {
        return Err(format!(
            "operand v_pool {} does not match k_pool {} (blocks, heads, block size and head dim must agree)",
            vp.shape, kp.shape
        ));
    }
    let (Some(kvh), Some(d)) = (kh.as_const(), kd.as_const()) else {
        return Err(format!(
            "the pools' kv heads and head dim must be constant, got {}",
            kp.shape
        ));
    };
    super::nn::rope_dims(a, Some(d))?;
    let width = (heads as i64 + 2 * kvh) * d;
    let s = match &qkv.shape.0[..] {
        [b, s, w] if one(b) && w.as_const() == Some(width) => s,
        _ => {
            return Err(format!(
                "operand qkv must be [1, s, {width}] ({heads} query heads and 2 x {kvh} kv heads of {d}), got {}",
                qkv.shape
            ))
        }
    };
    let sl = need_int_vec(slots, "operand slots", 1)?;
    if &sl[0] != s {
        return Err(format!("operand slots must be [{s}], got {}", slots.shape));
    }
    let pd = need_int_vec(pos, "operand pos", 2)?;
    if !one(&pd[0]) || &pd[1] != s {
        return Err(format!("operand pos must be [1, {s}], got {}", pos.shape));
    }
    let q = Shape(vec![Dim::c(1), s.clone(), Dim::c(heads as i64), Dim::c(d)]);
    Ok(vec![
        kp.clone(),
        vp.clone(),
        TensorType::new(qkv.dtype.compute_type(), q),
    ])
}

/// Reference semantics of `paged_qkv_write`, as the ops it stands for: `split` of
/// qkv's last axis into the query, key and value heads; `rope` of the queries and of
/// the keys (each row's heads at the row's position); `paged_kv_write` (token-major)
/// of the rotated keys and the values.
pub fn eval_paged_qkv_write(i: &[&Tensor], a: &Attrs, ctx: &mut EvalCtx) -> R {
    let qkv = arg(i, 0, "qkv")?;
    let (kp, vp) = (arg(i, 1, "k_pool")?, arg(i, 2, "v_pool")?);
    let (slots, pos) = (arg(i, 3, "slots")?, arg(i, 4, "pos")?);
    let heads = qkv_heads(a)?;
    let [_, kvh, _, d] = kp.shape[..] else {
        return Err("operand k_pool must have rank 4".into());
    };
    let (s, w) = match qkv.shape[..] {
        [_, s, w] if w == (heads + 2 * kvh) * d => (s, w),
        _ => {
            return Err(format!(
                "operand qkv {:?} does not match the pools",
                qkv.shape
            ))
        }
    };
    let x = floats(qkv, "operand qkv")?;
    // Heads `h0..h0 + n` of every row, as `shape`.
    let part = |h0: usize, n: usize, shape: Vec<usize>| {
        let mut v = Vec::with_capacity(s * n * d);
        for r in 0..s {
            v.extend_from_slice(&x[r * w + h0 * d..][..n * d]);
        }
        Tensor::from_f64(qkv.dtype, shape, v)
    };
    let pcol = Tensor::from_i64(pos.dtype, vec![s, 1], pos.to_i64());
    let rope = |t: Tensor, n: usize, ctx: &mut EvalCtx| -> Result<Tensor, String> {
        let r = super::nn::eval_rope(&[&t, &pcol], a, ctx)?.remove(0);
        Ok(Tensor::from_f64(r.dtype, vec![1, s, n, d], r.to_f64()))
    };
    let q = rope(part(0, heads, vec![s, heads, 1, d]), heads, ctx)?;
    let k = rope(part(heads, kvh, vec![s, kvh, 1, d]), kvh, ctx)?;
    let v = part(heads + kvh, kvh, vec![1, s, kvh, d]);
    let mut wa = Attrs::new();
    wa.insert("token_major".into(), crate::Attr::Int(1));
    if let Some(dm) = opt_int(a, "k_dim_major")? {
        wa.insert("k_dim_major".into(), crate::Attr::Int(dm));
    }
    let mut out = eval_paged_kv_write(&[&k, &v, kp, vp, slots], &wa, ctx)?;
    out.push(q);
    Ok(out)
}

/// Shape rule of `paged_attention(q[1, h, s, dk], k_pool, v_pool, pos[1, s],
/// row_seq[s], block_tables[S, W])` -> `[1, h, s, dv]` in q's compute type (q
/// `[1, s, h, dk]` and the result `[1, s, h, dv]` with `token_major`).
pub fn infer_paged_attention(i: &[&TensorType], a: &Attrs) -> T {
    let q = targ(i, 0, "q")?;
    let (kp, vp) = (targ(i, 1, "k_pool")?, targ(i, 2, "v_pool")?);
    let (pos, rs, bt) = (
        targ(i, 3, "pos")?,
        targ(i, 4, "row_seq")?,
        targ(i, 5, "block_tables")?,
    );
    req_float(a, "scale")?;
    if let Some(w) = opt_int(a, "window")? {
        if w < 0 {
            return Err(format!("attribute `window` must be >= 0, got {w}"));
        }
    }
    if let Some(c) = opt_float(a, "softcap")? {
        if !(c > 0.0 && c.is_finite()) {
            return Err(format!("attribute `softcap` must be > 0, got {c}"));
        }
    }
    need_float(q, "operand q")?;
    k_dim_major(a, kp)?;
    let tm = token_major(a)?;
    let want = if tm {
        "[1, s, h, dk] (token_major)"
    } else {
        "[1, h, s, dk]"
    };
    let (b, h, s, dk) = match (&q.shape.0[..], tm) {
        ([b, h, s, dk], false) | ([b, s, h, dk], true) if one(b) => (b, h, s, dk),
        _ => return Err(format!("operand q must be {want}, got {}", q.shape)),
    };
    let [kn, kh, kbs, kd] = pool_dims(kp, "operand k_pool")?;
    let [vn, vh, vbs, vd] = pool_dims(vp, "operand v_pool")?;
    if (kn, kh, kbs) != (vn, vh, vbs) {
        return Err(format!(
            "operand v_pool {} does not match k_pool {}",
            vp.shape, kp.shape
        ));
    }
    if kd != dk {
        return Err(format!(
            "operand k_pool {} has head dim {kd}, q has {dk}",
            kp.shape
        ));
    }
    match (h.as_const(), kh.as_const()) {
        (Some(hv), Some(kv)) if kv > 0 && hv % kv == 0 => {}
        _ => {
            return Err(format!(
                "q's head count {h} must be a constant multiple of the pool's {kh}"
            ))
        }
    }
    let pd = need_int_vec(pos, "operand pos", 2)?;
    if !one(&pd[0]) || &pd[1] != s {
        return Err(format!("operand pos must be [1, {s}], got {}", pos.shape));
    }
    let rd = need_int_vec(rs, "operand row_seq", 1)?;
    if &rd[0] != s {
        return Err(format!("operand row_seq must be [{s}], got {}", rs.shape));
    }
    need_int_vec(bt, "operand block_tables", 2)?;
    let out = if tm {
        vec![b.clone(), s.clone(), h.clone(), vd.clone()]
    } else {
        vec![b.clone(), h.clone(), s.clone(), vd.clone()]
    };
    Ok(vec![TensorType::new(q.dtype.compute_type(), Shape(out))])
}

/// Reference semantics of `paged_attention`: for row `r` of sequence `row_seq[r]` at
/// position `p = pos[0, r]`, softmax over keys `lo..=p` (`lo = p - window + 1` with a
/// window, else 0) of `q·k · scale` (then `softcap · tanh(x / softcap)` when set),
/// times the values; query head `j` reads kv head `j / (h / kvh)`; with `k_dim_major`
/// the keys are read transposed (see the module doc).
pub fn eval_paged_attention(i: &[&Tensor], a: &Attrs, _: &mut EvalCtx) -> R {
    let dim_major = opt_int(a, "k_dim_major")?.unwrap_or(0) == 1;
    let tm = token_major(a)?;
    let qt = arg(i, 0, "q")?;
    let (kt, vt) = (arg(i, 1, "k_pool")?, arg(i, 2, "v_pool")?);
    let pos = arg(i, 3, "pos")?.to_i64();
    let rs = arg(i, 4, "row_seq")?.to_i64();
    let btt = arg(i, 5, "block_tables")?;
    let bt = btt.to_i64();
    let scale = req_float(a, "scale")?;
    let window = opt_int(a, "window")?.unwrap_or(0);
    let cap = opt_float(a, "softcap")?;
    let (q, k, v) = (
        floats(qt, "operand q")?,
        floats(kt, "operand k_pool")?,
        floats(vt, "operand v_pool")?,
    );
    let (h, s, dk) = match (&qt.shape[..], tm) {
        (&[_, h, s, dk], false) | (&[_, s, h, dk], true) => (h, s, dk),
        _ => return Err("operand q must have rank 4".into()),
    };
    let [n, kvh, bs, _] = kt.shape[..] else {
        return Err("operand k_pool must have rank 4".into());
    };
    let dv = vt.shape.get(3).copied().unwrap_or(0);
    let (nseq, width) = match btt.shape[..] {
        [a, b] => (a, b),
        _ => return Err("operand block_tables must have rank 2".into()),
    };
    if kvh == 0 || h % kvh != 0 {
        return Err(format!(
            "{h} query heads are not a multiple of {kvh} kv heads"
        ));
    }
    let group = h / kvh;
    let mut out = vec![0.0; h * s * dv];
    for r in 0..s {
        let sq = rs[r];
        if sq < 0 || sq as usize >= nseq {
            return Err(format!(
                "row {r}: sequence {sq} is outside the {nseq} block tables"
            ));
        }
        let p = pos[r];
        if p < 0 || (p as usize) >= width * bs {
            return Err(format!(
                "row {r}: position {p} is outside its block table of {width} blocks x {bs}"
            ));
        }
        let lo = if window > 0 {
            (p - window + 1).max(0)
        } else {
            0
        } as usize;
        let hi = p as usize;
        for hh in 0..h {
            let kv = hh / group;
            let qrow = &q[row_index(tm, (hh, r, 0), h, s, dk)..][..dk];
            let mut sc = Vec::with_capacity(hi + 1 - lo);
            let mut rows = Vec::with_capacity(hi + 1 - lo);
            for j in lo..=hi {
                let blk = bt[sq as usize * width + j / bs];
                if blk < 0 || blk as usize >= n {
                    return Err(format!(
                        "row {r}: block table entry {} is block {blk}, the pool has {n}",
                        j / bs
                    ));
                }
                let at = (blk as usize * kvh + kv) * bs + j % bs;
                let (b, o) = (blk as usize, j % bs);
                let krow: Vec<f64> = (0..dk)
                    .map(|c| k[k_index(dim_major, (b, kv, o, c), kvh, bs, dk)])
                    .collect();
                let mut x = super::util::dot(qrow, &krow) * scale;
                if let Some(c) = cap {
                    x = c * (x / c).tanh();
                }
                sc.push(x);
                rows.push(at);
            }
            let mx = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
            let orow = &mut out[row_index(tm, (hh, r, 0), h, s, dv)..][..dv];
            for (x, at) in sc.iter().zip(rows) {
                let w = (x - mx).exp() / total;
                for (o, vv) in orow.iter_mut().zip(&v[at * dv..][..dv]) {
                    *o += w * vv;
                }
            }
        }
    }
    let shape = if tm {
        vec![1, s, h, dv]
    } else {
        vec![1, h, s, dv]
    };
    Ok(vec![Tensor::from_f64(qt.dtype.compute_type(), shape, out)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{attrs, Attr, Module, Op};

    fn f32t(shape: Vec<usize>, f: impl Fn(usize) -> f64) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_f64(DType::F32, shape, (0..n).map(f).collect())
    }

    /// Writing three sequences' keys into scattered blocks, then attending through the
    /// block tables, gives what dense causal attention over each sequence alone gives.
    #[test]
    fn paged_attention_equals_dense_attention_per_sequence() {
        // Both key layouts: the attention reads what the write wrote.
        for dim_major in [0, 1] {
            paged_attention_equals_dense(dim_major);
        }
    }

    fn paged_attention_equals_dense(dim_major: i64) {
        let (h, kvh, d, bs, nblk) = (4usize, 2usize, 8usize, 4usize, 12usize);
        let lens = [5usize, 9, 3];
        // Block tables: scattered, distinct blocks.
        let tables: Vec<Vec<i64>> = vec![vec![7, 2], vec![0, 11, 5], vec![9]];
        let width = 3;
        let total: usize = lens.iter().sum();
        let val = |x: usize| ((x * 37 % 101) as f64 - 50.0) / 40.0;
        let k = f32t(vec![1, kvh, total, d], val);
        let v = f32t(vec![1, kvh, total, d], |x| val(x + 13));
        let q = f32t(vec![1, h, total, d], |x| val(x + 29));
        let mut slots = Vec::new();
        let mut row_seq = Vec::new();
        let mut pos = Vec::new();
        for (si, &n) in lens.iter().enumerate() {
            for p in 0..n {
                slots.push(tables[si][p / bs] * bs as i64 + (p % bs) as i64);
                row_seq.push(si as i64);
                pos.push(p as i64);
            }
        }
        let mut bt = vec![0i64; lens.len() * width];
        for (si, t) in tables.iter().enumerate() {
            bt[si * width..si * width + t.len()].copy_from_slice(t);
        }
        let pool = Tensor::zeros(DType::F32, vec![nblk, kvh, bs, d]);
        let mut ctx = EvalCtx::default();
        let slots_t = Tensor::from_i64(DType::I64, vec![total], slots);
        let w = Op::PagedKvWrite
            .eval(
                &[&k, &v, &pool, &pool, &slots_t],
                &attrs([("k_dim_major", Attr::Int(dim_major))]),
                &mut ctx,
            )
            .unwrap();
        if dim_major == 1 {
            // Key 1 of sequence 0 (block 7, offset 1), head 0, element 2: transposed.
            let want = k.to_f64()[d + 2];
            assert_eq!(w[0].to_f64()[((7 * kvh) * d + 2) * bs + 1], want);
        }
        let a = attrs([
            ("scale", Attr::Float(0.3)),
            ("k_dim_major", Attr::Int(dim_major)),
        ]);
        let pos_t = Tensor::from_i64(DType::I64, vec![1, total], pos);
        let rs_t = Tensor::from_i64(DType::I32, vec![total], row_seq);
        let bt_t = Tensor::from_i64(DType::I32, vec![lens.len(), width], bt);
        let got = Op::PagedAttention
            .eval(&[&q, &w[0], &w[1], &pos_t, &rs_t, &bt_t], &a, &mut ctx)
            .unwrap();
        // Dense causal attention per sequence.
        let mut start = 0;
        for &n in &lens {
            let cut = |t: &Tensor, heads: usize| {
                let x = t.to_f64();
                let mut o = Vec::new();
                for hh in 0..heads {
                    o.extend_from_slice(&x[(hh * total + start) * d..(hh * total + start + n) * d]);
                }
                Tensor::from_f64(DType::F32, vec![1, heads, n, d], o)
            };
            let want = Op::Attention
                .eval(
                    &[&cut(&q, h), &cut(&k, kvh), &cut(&v, kvh)],
                    &attrs([("scale", Attr::Float(0.3)), ("causal", Attr::Bool(true))]),
                    &mut ctx,
                )
                .unwrap();
            let want = want[0].to_f64();
            let g = cut(&got[0], h).to_f64();
            for (x, y) in g.iter().zip(&want) {
                assert!((x - y).abs() < 1e-6, "{x} vs {y}");
            }
            start += n;
        }
    }

    /// `[1, a, b, d]` -> `[1, b, a, d]`.
    fn swap12(t: &Tensor) -> Tensor {
        let [_, a, b, d] = t.shape[..] else {
            panic!("rank 4")
        };
        let x = t.to_f64();
        let mut o = vec![0.0; x.len()];
        for i in 0..a {
            for j in 0..b {
                o[(j * a + i) * d..][..d].copy_from_slice(&x[(i * b + j) * d..][..d]);
            }
        }
        Tensor::from_f64(t.dtype, vec![1, b, a, d], o)
    }

    /// With `token_major` the write takes keys and values `[1, s, kvh, d]` and the
    /// attention q and result `[1, s, h, d]`: the same pools and the same numbers as
    /// the heads-major form, transposed.
    #[test]
    fn token_major_is_the_heads_major_form_transposed() {
        let (h, kvh, d, bs, nblk) = (6usize, 2usize, 8usize, 4usize, 8usize);
        let total = 7usize;
        let val = |x: usize| ((x * 53 % 97) as f64 - 48.0) / 30.0;
        let k = f32t(vec![1, kvh, total, d], val);
        let v = f32t(vec![1, kvh, total, d], |x| val(x + 5));
        let q = f32t(vec![1, h, total, d], |x| val(x + 11));
        // Two sequences: rows 0..4 of one (blocks 5, 1), rows 4..7 of the other (block 3).
        let slots: Vec<i64> = vec![20, 21, 22, 23, 12, 13, 14];
        let pos: Vec<i64> = vec![0, 1, 2, 3, 0, 1, 2];
        let row_seq: Vec<i64> = vec![0, 0, 0, 0, 1, 1, 1];
        let bt: Vec<i64> = vec![5, 1, 3, 0];
        let pool = Tensor::zeros(DType::F32, vec![nblk, kvh, bs, d]);
        let slots_t = Tensor::from_i64(DType::I64, vec![total], slots);
        let pos_t = Tensor::from_i64(DType::I64, vec![1, total], pos);
        let rs_t = Tensor::from_i64(DType::I32, vec![total], row_seq);
        let bt_t = Tensor::from_i64(DType::I32, vec![2, 2], bt);
        let mut ctx = EvalCtx::default();
        for dim_major in [0, 1] {
            let run = |tm: i64, k: &Tensor, v: &Tensor, q: &Tensor, ctx: &mut EvalCtx| {
                let lay = [
                    ("k_dim_major", Attr::Int(dim_major)),
                    ("token_major", Attr::Int(tm)),
                ];
                let w = Op::PagedKvWrite
                    .eval(&[k, v, &pool, &pool, &slots_t], &attrs(lay.clone()), ctx)
                    .unwrap();
                let mut a = attrs(lay);
                a.insert("scale".into(), Attr::Float(0.4));
                let o = Op::PagedAttention
                    .eval(&[q, &w[0], &w[1], &pos_t, &rs_t, &bt_t], &a, ctx)
                    .unwrap();
                (w, o.into_iter().next().unwrap())
            };
            let (w0, o0) = run(0, &k, &v, &q, &mut ctx);
            let (w1, o1) = run(1, &swap12(&k), &swap12(&v), &swap12(&q), &mut ctx);
            assert_eq!(w0[0].to_f64(), w1[0].to_f64());
            assert_eq!(w0[1].to_f64(), w1[1].to_f64());
            assert_eq!(o1.shape, vec![1, total, h, d]);
            assert_eq!(swap12(&o0).to_f64(), o1.to_f64());
        }
    }

    #[test]
    fn shape_rules_name_the_bad_operand() {
        let mut m = Module::new("t");
        let g = &mut m.graph;
        let f = |s: &[i64]| TensorType::new(DType::F32, Shape::of(s));
        let i64t = |s: &[i64]| TensorType::new(DType::I64, Shape::of(s));
        let k = g.add_input("k", f(&[1, 2, 3, 8]));
        let pool = g.add_input("p", f(&[10, 2, 16, 8]));
        let bad_pool = g.add_input("bp", f(&[10, 3, 16, 8]));
        let slots = g.add_input("s", i64t(&[3]));
        assert!(m
            .add_node(Op::PagedKvWrite, &[k, k, pool, pool, slots], attrs([]))
            .is_ok());
        let e = m
            .add_node(
                Op::PagedKvWrite,
                &[k, k, bad_pool, bad_pool, slots],
                attrs([]),
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("operand k must be [1, 3, s, 8]"),
            "{e}"
        );
        // Transposed keys are a float pool's layout only, and the attribute a flag.
        let q8 = |s: &[i64]| TensorType::new(DType::Q8Kv, Shape::of(s));
        let k64 = m.graph.add_input("k64", f(&[1, 2, 3, 64]));
        let q8_pool = m.graph.add_input("q8p", q8(&[10, 2, 16, 64]));
        for (kk, p, flag, want) in [
            (k64, q8_pool, 1, "needs a float k_pool"),
            (k, pool, 2, "must be 0 or 1, got 2"),
        ] {
            let e = m
                .add_node(
                    Op::PagedKvWrite,
                    &[kk, kk, p, p, slots],
                    attrs([("k_dim_major", Attr::Int(flag))]),
                )
                .unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
    }
}
