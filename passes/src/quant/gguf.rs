//! The GGUF block quantizers (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1; the K-quants Q4_K and Q6_K
//! in `kquant`), written to give the bytes
//! llama.cpp's reference quantizer gives (`ggml-quants.c`, `quantize_row_q8_0_ref`,
//! `quantize_row_q4_0_ref`, `quantize_row_q4_1_ref`, `quantize_row_q5_0_ref`,
//! `quantize_row_q5_1_ref`; gguf-py's `gguf.quants` mirrors them in numpy), so a model quantized by llmc can be compared with llama.cpp's byte
//! for byte. Every step is the reference's f32 arithmetic in the reference's order
//! (no fused multiply-add, scales rounded to f16 only when stored); the inverse is
//! `llmc_ir::quant::dequantize`.
//!
//! llmc's own int4 groups of 64 and 128 (`q4_0_g64`, `q4_1_g64`, `q4_0_g128`,
//! `q4_1_g128`) take Q4_0's and Q4_1's rule over the whole group: one scale (and
//! minimum) per group, then the group's 32-element sub-blocks' nibbles as Q4_0 stores
//! a block's.

use llmc_ir::DType;

/// Elements per block of the GGUF formats here (a group format's sub-block).
pub const BLOCK: usize = 32;

/// The most elements one block (or group) of a format here holds.
pub const MAX_GROUP: usize = 128;

/// The formats this module writes.
pub const WRITTEN: [DType; 11] = [
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q4_0G64,
    DType::Q4_1G64,
    DType::Q4_0G128,
    DType::Q4_1G128,
    DType::Q8_0S24,
    DType::Q8_0S832,
];

/// The GGUF format whose rule and nibbles a group format uses (itself for the others).
pub fn base_format(dtype: DType) -> DType {
    match dtype {
        DType::Q4_0G64 | DType::Q4_0G128 => DType::Q4_0,
        DType::Q4_1G64 | DType::Q4_1G128 => DType::Q4_1,
        DType::Q8_0S24 | DType::Q8_0S832 => DType::Q8_0,
        d => d,
    }
}

/// The K-quant super-block formats `quantize_into` also writes (`kquant`): rounded to
/// nearest as llama-quantize rounds them; GPTQ/AWQ's per-block codes are for
/// [`WRITTEN`].
pub const K_WRITTEN: [DType; 2] = [DType::Q4K, DType::Q6K];

/// Whether this module writes `dtype`.
pub fn supported(dtype: DType) -> bool {
    WRITTEN.contains(&dtype) || K_WRITTEN.contains(&dtype)
}

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// `1/d`, or 0 for a block of zeros (the reference's `d ? 1.0f/d : 0.0f`).
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// The element of largest magnitude (the first one on a tie), as the reference's
/// symmetric quantizers pick it (`max`, signed).
fn signed_extreme(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// `(min, max)` as the reference's asymmetric quantizers compute them.
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// One Q8_0 block: `d = amax / 127`, `q = roundf(x / d)` (half away from zero).
fn block_q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x
        .iter()
        .fold(0.0f32, |a, &v| if v.abs() > a { v.abs() } else { a });
    let d = amax / 127.0;
    let id = inverse(d);
    out.extend(f16_bytes(d));
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// One half-sparse Q8_0 block (`q8_0_2of4`): Q8_0's scale over the block, then the
/// mask of kept elements ([`mask_half`]: the nonzero ones of a block with at most 16,
/// as 2:4 and 16:32 pruning leave it) and their codes in element order.
fn block_q8_0_s24(x: &[f32], out: &mut Vec<u8>) {
    block_q8_0_sparse(x, BLOCK / 2, out);
}

/// One three-quarters-sparse Q8_0 block (`q8_0_8of32`): as [`block_q8_0_s24`] with at
/// most 8 kept ([`mask_keep`]).
fn block_q8_0_s832(x: &[f32], out: &mut Vec<u8>) {
    block_q8_0_sparse(x, BLOCK / 4, out);
}

fn block_q8_0_sparse(x: &[f32], keep: usize, out: &mut Vec<u8>) {
    let mut dense = Vec::with_capacity(34);
    block_q8_0(x, &mut dense);
    let mask = mask_keep(x, keep);
    out.extend_from_slice(&dense[..2]);
    out.extend(mask.to_le_bytes());
    push_kept(mask, &dense[2..], keep, out);
}

/// The codes of the elements `mask` keeps (at most `keep`), in element order, then
/// zeros to `keep`: a `q8_0_2of4` block is always 22 bytes, a `q8_0_8of32` one 14.
fn push_kept(mask: u32, codes: &[u8], keep: usize, out: &mut Vec<u8>) {
    let n = mask.count_ones() as usize;
    out.extend(
        (0..BLOCK)
            .filter(|e| (mask >> e) & 1 == 1)
            .map(|e| codes[e])
            .take(keep),
    );
    out.extend(std::iter::repeat_n(0u8, keep.saturating_sub(n)));
}

/// The mask of the two largest magnitudes in every aligned four of the 32 values `x`
/// (bit `e`: element `e`; ties keep the earlier element).
pub fn mask_2of4(x: &[f32]) -> u32 {
    let mut mask = 0u32;
    for g in 0..8 {
        let mut idx = [4 * g, 4 * g + 1, 4 * g + 2, 4 * g + 3];
        idx.sort_by(|&a, &b| x[b].abs().total_cmp(&x[a].abs()).then(a.cmp(&b)));
        mask |= (1 << idx[0]) | (1 << idx[1]);
    }
    mask
}

/// Whether every aligned four of `x` (a whole number of them) has at most two nonzero
/// values: a 2:4-pruned matrix.
pub fn is_2of4(x: &[f32]) -> bool {
    x.chunks_exact(4)
        .all(|g| g.iter().filter(|v| **v != 0.0).count() <= 2)
}

/// Whether every aligned block of 32 of `x` (a whole number of them) has at most 16
/// nonzero values (2:4 and 16:32 pruning leave it so): what `q8_0_2of4` stores
/// without loss of pattern.
pub fn is_half_sparse(x: &[f32]) -> bool {
    is_sparse_to(x, BLOCK / 2)
}

/// Whether every aligned block of 32 of `x` (a whole number of them) has at most
/// `keep` nonzero values.
pub fn is_sparse_to(x: &[f32], keep: usize) -> bool {
    x.chunks_exact(BLOCK)
        .all(|g| g.iter().filter(|v| **v != 0.0).count() <= keep)
}

/// The sparse Q8_0 format that stores a matrix `x` without loss of pattern, the
/// smallest first: `q8_0_8of32` when every block of 32 keeps at most 8 (`--prune
/// sparse=24:32`), `q8_0_2of4` at most 16 (2:4, 16:32), else none.
pub fn sparse_q8_0(x: &[f32]) -> Option<DType> {
    [DType::Q8_0S832, DType::Q8_0S24]
        .into_iter()
        .find(|d| d.sparse_keep().is_some_and(|keep| is_sparse_to(x, keep)))
}

/// The kept elements of a half-sparse block of 32 values: the nonzero ones when at
/// most 16 are, else the two largest magnitudes of every aligned four ([`mask_2of4`]).
pub fn mask_half(x: &[f32]) -> u32 {
    mask_keep(x, BLOCK / 2)
}

/// The kept elements of a block of 32 values with room for `keep`: the nonzero ones
/// when at most `keep` are, else for 16 the two largest magnitudes of every aligned
/// four ([`mask_2of4`]), for fewer the `keep` largest magnitudes (ties keep the
/// earlier element).
pub fn mask_keep(x: &[f32], keep: usize) -> u32 {
    let nz = (0..BLOCK).fold(0u32, |m, e| m | ((x[e] != 0.0) as u32) << e);
    if nz.count_ones() as usize <= keep {
        nz
    } else if keep == BLOCK / 2 {
        mask_2of4(x)
    } else {
        let mut idx: Vec<usize> = (0..BLOCK).collect();
        idx.sort_by(|&a, &b| x[b].abs().total_cmp(&x[a].abs()).then(a.cmp(&b)));
        idx[..keep].iter().fold(0u32, |m, &e| m | 1 << e)
    }
}

/// One Q4_0 block: `d = max / -8` where `max` is the element of largest magnitude
/// (the first one on a tie), nibble `min(15, trunc(x / d + 8.5))`; low nibbles hold
/// elements 0..16, high nibbles 16..32.
/// A group of 64 or 128 takes the rule over all its values and stores its
/// sub-blocks' nibbles one after the other.
fn block_q4_0(x: &[f32], out: &mut Vec<u8>) {
    let max = signed_extreme(x);
    let d = max / -8.0;
    let id = inverse(d);
    out.extend(f16_bytes(d));
    let nib = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    push_q4_nibbles(x, nib, out);
}

/// The nibbles of `x` (whole blocks of 32) block after block, each as Q4_0 stores
/// them: elements 0..16 low, 16..32 high.
fn push_q4_nibbles(x: &[f32], nib: impl Fn(f32) -> u8, out: &mut Vec<u8>) {
    let half = BLOCK / 2;
    for b in x.chunks_exact(BLOCK) {
        out.extend((0..half).map(|j| nib(b[j]) | (nib(b[half + j]) << 4)));
    }
}

/// One Q4_1 block: `d = (max - min) / 15`, `m = min`, nibble
/// `min(15, trunc((x - min) / d + 0.5))`, same nibble order as Q4_0.
fn block_q4_1(x: &[f32], out: &mut Vec<u8>) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    out.extend(f16_bytes(d));
    out.extend(f16_bytes(min));
    let nib = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
    push_q4_nibbles(x, nib, out);
}

/// The 32 five-bit codes `q` as Q5 blocks store them after the scale(s): `qh` (bit `j`:
/// code `j`'s fifth bit, little-endian u32), then the low nibbles as Q4's (elements
/// 0..16 low, 16..32 high).
fn push_q5_codes(q: &[u8], out: &mut Vec<u8>) {
    let qh = q
        .iter()
        .enumerate()
        .fold(0u32, |h, (j, &c)| h | (((c as u32 >> 4) & 1) << j));
    out.extend(qh.to_le_bytes());
    let half = BLOCK / 2;
    out.extend((0..half).map(|j| (q[j] & 15) | ((q[half + j] & 15) << 4)));
}

/// One Q5_0 block: `d = max / -16` (`max` the element of largest magnitude, the first
/// on a tie), code `min(31, trunc(x / d + 16.5))`.
fn block_q5_0(x: &[f32], out: &mut Vec<u8>) {
    let max = signed_extreme(x);
    let d = max / -16.0;
    let id = inverse(d);
    out.extend(f16_bytes(d));
    let q: Vec<u8> = x
        .iter()
        .map(|&v| ((v * id + 16.5) as i8).min(31) as u8)
        .collect();
    push_q5_codes(&q, out);
}

/// One Q5_1 block: `d = (max - min) / 31`, `m = min`, code `trunc((x - min) / d + 0.5)`.
fn block_q5_1(x: &[f32], out: &mut Vec<u8>) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    out.extend(f16_bytes(d));
    out.extend(f16_bytes(min));
    let q: Vec<u8> = x.iter().map(|&v| ((v - min) * id + 0.5) as u8).collect();
    push_q5_codes(&q, out);
}

/// Appends the blocks of `x` (a whole number of `dtype`'s blocks, all finite) in
/// `dtype` to `out`. The caller checks both conditions; here a bad length or format
/// is an error, never a panic.
pub fn quantize_into(dtype: DType, x: &[f32], out: &mut Vec<u8>) -> Result<(), String> {
    let block: fn(&[f32], &mut Vec<u8>) = match base_format(dtype) {
        DType::Q4K => super::kquant::block_q4_k,
        DType::Q6K => super::kquant::block_q6_k,
        DType::Q8_0 if dtype == DType::Q8_0S24 => block_q8_0_s24,
        DType::Q8_0 if dtype == DType::Q8_0S832 => block_q8_0_s832,
        DType::Q8_0 => block_q8_0,
        DType::Q4_0 => block_q4_0,
        DType::Q4_1 => block_q4_1,
        DType::Q5_0 => block_q5_0,
        DType::Q5_1 => block_q5_1,
        other => {
            return Err(format!(
                "llmc cannot quantize to {other} (q8_0, q4_0, q4_1, q5_0, q5_1, \
                 q4_0_g64, q4_1_g64, q4_0_g128, q4_1_g128, q8_0_2of4, q8_0_8of32, q4_k, q6_k)"
            ))
        }
    };
    let bl = dtype.block_len();
    if !x.len().is_multiple_of(bl) {
        return Err(format!("{} elements are not whole blocks of {bl}", x.len()));
    }
    out.reserve(x.len() / bl * dtype.block_bytes());
    for b in x.chunks_exact(bl) {
        block(b, out);
    }
    Ok(())
}

/// A block's stored scale `d` and offset `m` (both as f16 gives them back), so that a
/// caller choosing each element's code itself (GPTQ's error-compensating rounding,
/// `super::gptq`) writes blocks the kernels read like any other: code `c` stands for
/// `(c - 8)·d` in Q4_0, `(c - 16)·d` in Q5_0, `c·d + m` in Q4_1 and Q5_1, `c·d`
/// (signed) in Q8_0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockScale {
    pub d: f32,
    pub m: f32,
}

fn f16_round(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

impl BlockScale {
    /// The reference quantizer's scale for the 32 values `x` (as [`quantize`] picks it),
    /// rounded to f16 as stored.
    /// A group format takes its base format's rule over the whole group.
    pub fn of(dtype: DType, x: &[f32]) -> BlockScale {
        Self::rule(base_format(dtype), x)
    }

    /// The reference rule of a GGUF format over the values `x`.
    fn rule(dtype: DType, x: &[f32]) -> BlockScale {
        match dtype {
            DType::Q4_1 | DType::Q5_1 => {
                let (min, max) = min_max(x);
                let steps = if dtype == DType::Q5_1 { 31.0 } else { 15.0 };
                BlockScale {
                    d: f16_round((max - min) / steps),
                    m: f16_round(min),
                }
            }
            DType::Q4_0 | DType::Q5_0 => {
                let max = signed_extreme(x);
                let half = if dtype == DType::Q5_0 { -16.0 } else { -8.0 };
                BlockScale {
                    d: f16_round(max / half),
                    m: 0.0,
                }
            }
            _ => {
                let amax = x.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
                BlockScale {
                    d: f16_round(amax / 127.0),
                    m: 0.0,
                }
            }
        }
    }

    /// The code nearest to `v` on this block's grid (clamped to the format's range)
    /// and the value it stands for.
    pub fn code(&self, dtype: DType, v: f32) -> (u8, f32) {
        let dtype = base_format(dtype);
        if self.d == 0.0 {
            let c = match dtype {
                DType::Q4_0 => 8,
                DType::Q5_0 => 16,
                _ => 0,
            };
            return (c, self.m);
        }
        match dtype {
            DType::Q4_1 | DType::Q5_1 => {
                let top = if dtype == DType::Q5_1 { 31.0 } else { 15.0 };
                let c = ((v - self.m) / self.d).round().clamp(0.0, top);
                (c as u8, c * self.d + self.m)
            }
            DType::Q4_0 | DType::Q5_0 => {
                let half = if dtype == DType::Q5_0 { 16.0 } else { 8.0 };
                let c = (v / self.d).round().clamp(-half, half - 1.0);
                ((c + half) as u8, c * self.d)
            }
            _ => {
                let c = (v / self.d).round().clamp(-127.0, 127.0);
                (c as i8 as u8, c * self.d)
            }
        }
    }

    /// Appends the block of `codes` (`dtype`'s block length of them, from
    /// [`BlockScale::code`]) in `dtype`.
    pub fn encode(&self, dtype: DType, codes: &[u8], out: &mut Vec<u8>) {
        out.extend(f16_bytes(self.d));
        let half = BLOCK / 2;
        if let Some(keep) = dtype.sparse_keep() {
            // The nonzero codes (else the largest by magnitude, [`mask_keep`]).
            let mags: Vec<f32> = codes[..BLOCK].iter().map(|&c| c as i8 as f32).collect();
            let mask = mask_keep(&mags, keep);
            out.extend(mask.to_le_bytes());
            push_kept(mask, codes, keep, out);
            return;
        }
        match base_format(dtype) {
            DType::Q4_0 | DType::Q4_1 => {
                if base_format(dtype) == DType::Q4_1 {
                    out.extend(f16_bytes(self.m));
                }
                for c in codes[..dtype.block_len()].chunks_exact(BLOCK) {
                    out.extend((0..half).map(|j| (c[j] & 15) | ((c[half + j] & 15) << 4)));
                }
            }
            DType::Q5_0 | DType::Q5_1 => {
                if dtype == DType::Q5_1 {
                    out.extend(f16_bytes(self.m));
                }
                push_q5_codes(&codes[..BLOCK], out);
            }
            _ => out.extend_from_slice(&codes[..BLOCK]),
        }
    }
}

/// int8 per output channel (`--quantize int8`, symmetric): each row of `k` values gets
/// one scale `d = amax(row) / 127` and codes `roundf(x / d)`, stored as Q8_0 blocks
/// that all carry the row's `d` (so every Q8_0 kernel reads them; 2 bytes per 32 more
/// than bare int8 codes and a scale per row).
pub fn quantize_q8_rows(x: &[f32], k: usize) -> Result<Vec<u8>, String> {
    if k == 0 || !k.is_multiple_of(32) || !x.len().is_multiple_of(k) {
        return Err(format!(
            "{} values in rows of {k}: int8 per channel needs rows of whole blocks of 32",
            x.len()
        ));
    }
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for row in x.chunks_exact(k) {
        let amax = row
            .iter()
            .fold(0.0f32, |a, &v| if v.abs() > a { v.abs() } else { a });
        let d = amax / 127.0;
        let id = inverse(d);
        for blk in row.chunks_exact(32) {
            out.extend(f16_bytes(d));
            out.extend(blk.iter().map(|&v| (v * id).round() as i8 as u8));
        }
    }
    Ok(out)
}

/// The blocks of `x` in `dtype` (see [`quantize_into`]).
pub fn quantize(dtype: DType, x: &[f32]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    quantize_into(dtype, x, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! Hand-checked blocks and the round trip through `llmc_ir::quant::dequantize`;
    //! the byte-for-byte comparison with gguf-py on real weights is
    //! `passes/tests/quant_gguf.rs`.
    use super::*;
    use llmc_ir::quant::dequantize;

    fn ramp(scale: f32) -> Vec<f32> {
        (0..32).map(|i| (i as f32 - 13.0) * scale).collect()
    }

    #[test]
    fn int8_per_channel_rows_share_one_scale() {
        // Row 0: amax 2.54 (d = 0.02) in its second block; row 1: all zero.
        let mut x = vec![0.01f32; 64];
        x[40] = -2.54;
        x.extend([0.0f32; 64]);
        let q = quantize_q8_rows(&x, 64).unwrap();
        assert_eq!(q.len(), 4 * 34);
        let v = dequantize(DType::Q8_0, &q, 128).unwrap();
        let d = half::f16::from_f32(0.02).to_f64();
        for b in 0..2 {
            assert_eq!(
                &q[b * 34..b * 34 + 2],
                &half::f16::from_f32(0.02).to_le_bytes()
            );
        }
        assert_eq!(v[40], -127.0 * d);
        // 0.01 / 0.02 = 0.5 rounds away from zero: one step.
        assert_eq!(v[0], d);
        assert!(v[64..].iter().all(|&z| z == 0.0));
        assert!(quantize_q8_rows(&x, 48).is_err());
    }

    #[test]
    fn q8_0_scale_is_amax_over_127_and_rounds_half_away() {
        let mut x = vec![0.0f32; 32];
        x[0] = -127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.49;
        let b = quantize(DType::Q8_0, &x).unwrap();
        assert_eq!(b.len(), 34);
        assert_eq!(half::f16::from_le_bytes([b[0], b[1]]).to_f32(), 1.0);
        assert_eq!(b[2] as i8, -127);
        assert_eq!(b[3] as i8, 3);
        assert_eq!(b[4] as i8, -3);
        assert_eq!(b[5] as i8, 0);
    }

    #[test]
    fn q4_0_takes_the_signed_extreme_and_clamps_at_15() {
        // The largest magnitude is positive: d is negative, and x = max maps to 0.
        let x = ramp(0.5);
        let b = quantize(DType::Q4_0, &x).unwrap();
        let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        assert_eq!(d, 9.0 / -8.0);
        // Element 31 (= max) -> 8.5 - 8 = 0.5 -> 0; element 0 (-6.5) -> trunc(6.5/1.125 + 8.5).
        assert_eq!(b[2 + 15] >> 4, 0);
        assert_eq!(b[2] & 0xF, ((-6.5f32 * (1.0 / d) + 8.5) as u8).min(15));
        let v = dequantize(DType::Q4_0, &b, 32).unwrap();
        for (a, q) in x.iter().zip(&v) {
            assert!(
                (*a as f64 - q).abs() <= d.abs() as f64 * 0.5 + 1e-6,
                "{a} vs {q}"
            );
        }
    }

    #[test]
    fn q4_1_round_trip_within_half_a_step() {
        let x = ramp(0.37);
        let b = quantize(DType::Q4_1, &x).unwrap();
        assert_eq!(b.len(), 20);
        let d = half::f16::from_le_bytes([b[0], b[1]]).to_f64();
        let v = dequantize(DType::Q4_1, &b, 32).unwrap();
        for (a, q) in x.iter().zip(&v) {
            assert!((*a as f64 - q).abs() <= d * 0.5 + 1e-3, "{a} vs {q}");
        }
    }

    #[test]
    fn group_formats_take_one_scale_per_group_and_q4_nibbles_per_block() {
        // Two groups of 128: a ramp, then a ramp 10x larger with one outlier.
        let mut x: Vec<f32> = (0..256)
            .map(|i| (i % 128) as f32 * if i < 128 { 0.01 } else { -0.1 } - 0.3)
            .collect();
        x[200] = 40.0;
        for dt in [
            DType::Q4_0G64,
            DType::Q4_1G64,
            DType::Q4_0G128,
            DType::Q4_1G128,
        ] {
            let g = dt.block_len();
            let b = quantize(dt, &x).unwrap();
            assert_eq!(b.len(), 256 / g * dt.block_bytes(), "{dt}");
            let v = dequantize(dt, &b, 256).unwrap();
            for (grp, (xs, vs)) in x.chunks(g).zip(v.chunks(g)).enumerate() {
                let at = grp * dt.block_bytes();
                let d = half::f16::from_le_bytes([b[at], b[at + 1]]).to_f64();
                // The grid's ends: codes 0 and 15.
                let (lo, hi) = if base_format(dt) == DType::Q4_1 {
                    let m = half::f16::from_le_bytes([b[at + 2], b[at + 3]]).to_f64();
                    (m, m + 15.0 * d)
                } else {
                    ((-8.0 * d).min(7.0 * d), (-8.0 * d).max(7.0 * d))
                };
                for (a, q) in xs.iter().zip(vs) {
                    // Within half a step, unless clipped to the grid's end.
                    let a = (*a as f64).clamp(lo, hi);
                    assert!((a - q).abs() <= d.abs() * 0.5 + 1e-3, "{dt}: {a} vs {q}");
                }
                // The base format's rule over the whole group: the same scale, and
                // codes from it (nearest, where the reference truncates) within one.
                let base = base_format(dt);
                let sc = BlockScale::of(dt, xs);
                assert_eq!(sc, BlockScale::of(base, xs));
                assert_eq!(
                    half::f16::from_f32(sc.d).to_le_bytes(),
                    [b[at], b[at + 1]],
                    "{dt}"
                );
                let mut again = Vec::new();
                let codes: Vec<u8> = xs.iter().map(|&v| sc.code(dt, v).0).collect();
                sc.encode(dt, &codes, &mut again);
                let nib = |v: &[u8]| -> Vec<i32> {
                    v.iter()
                        .flat_map(|&x| [(x & 15) as i32, (x >> 4) as i32])
                        .collect()
                };
                let hdr = if base == DType::Q4_1 { 4 } else { 2 };
                let (ours, theirs) = (nib(&again[hdr..]), nib(&b[at + hdr..at + dt.block_bytes()]));
                assert!(
                    ours.iter().zip(&theirs).all(|(a, b)| (a - b).abs() <= 1),
                    "{dt} group {grp}"
                );
            }
        }
        // A group format over a length that is not whole groups is an error.
        assert!(quantize(DType::Q4_0G128, &x[..192]).is_err());
    }

    #[test]
    fn q8_0_2of4_keeps_two_of_four_compressed() {
        // A 2:4-pruned block: elements 4g + 1 and 4g + 3 kept.
        let x: Vec<f32> = (0..32)
            .map(|e| {
                if e % 2 == 1 {
                    (e as f32 - 16.0) * 0.1
                } else {
                    0.0
                }
            })
            .collect();
        assert!(is_2of4(&x));
        let b = quantize(DType::Q8_0S24, &x).unwrap();
        assert_eq!(b.len(), 22);
        assert_eq!(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), 0xaaaa_aaaa);
        // The same values as Q8_0 of the block.
        let dense = dequantize(DType::Q8_0, &quantize(DType::Q8_0, &x).unwrap(), 32).unwrap();
        assert_eq!(dequantize(DType::Q8_0S24, &b, 32).unwrap(), dense);
        // A dense block keeps the two largest magnitudes of each four.
        let y: Vec<f32> = (0..32).map(|e| [1.0, -3.0, 2.0, 0.5][e % 4]).collect();
        assert!(!is_2of4(&y));
        let v = dequantize(DType::Q8_0S24, &quantize(DType::Q8_0S24, &y).unwrap(), 32).unwrap();
        assert_eq!(v[0], 0.0);
        assert!(v[1] < -2.9 && v[2] > 1.9 && v[3] == 0.0);
        // 16 of 32 kept anywhere (16:32): the nonzero ones, in element order.
        let z: Vec<f32> = (0..32)
            .map(|e| if e < 16 { 0.0 } else { e as f32 })
            .collect();
        assert!(is_half_sparse(&z) && !is_2of4(&z));
        let b = quantize(DType::Q8_0S24, &z).unwrap();
        assert_eq!(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), 0xffff_0000);
        let dense = dequantize(DType::Q8_0, &quantize(DType::Q8_0, &z).unwrap(), 32).unwrap();
        assert_eq!(dequantize(DType::Q8_0S24, &b, 32).unwrap(), dense);
        // Fewer kept (a four with one nonzero): still 22 bytes, zeros after the codes.
        let mut w = vec![0.0f32; 32];
        w[5] = 1.0;
        let b = quantize(DType::Q8_0S24, &w).unwrap();
        assert_eq!(b.len(), 22);
        assert_eq!(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), 1 << 5);
        assert_eq!(b[6], 127);
        assert!(b[7..].iter().all(|&c| c == 0));
    }

    #[test]
    fn q8_0_8of32_keeps_at_most_eight_compressed() {
        // At most eight nonzeros anywhere (24:32 pruning): the nonzero ones, in
        // element order, 14 bytes.
        let x: Vec<f32> = (0..32)
            .map(|e| if e % 5 == 2 { e as f32 - 15.5 } else { 0.0 })
            .collect();
        let mask = (0..32).filter(|e| e % 5 == 2).fold(0u32, |m, e| m | 1 << e);
        assert_eq!(mask.count_ones(), 6);
        assert_eq!(sparse_q8_0(&x), Some(DType::Q8_0S832));
        let b = quantize(DType::Q8_0S832, &x).unwrap();
        assert_eq!(b.len(), 14);
        assert_eq!(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), mask);
        assert!(b[12..].iter().all(|&c| c == 0), "the codes' tail is zero");
        let dense = dequantize(DType::Q8_0, &quantize(DType::Q8_0, &x).unwrap(), 32).unwrap();
        assert_eq!(dequantize(DType::Q8_0S832, &b, 32).unwrap(), dense);
        // Sixteen kept: half-sparse, not three quarters; 17: neither.
        let h: Vec<f32> = (0..32).map(|e| if e >= 16 { 1.0 } else { 0.0 }).collect();
        assert_eq!(sparse_q8_0(&h), Some(DType::Q8_0S24));
        let mut g = h.clone();
        g[0] = 1.0;
        assert_eq!(sparse_q8_0(&g), None);
        // A dense block keeps its eight largest magnitudes.
        let y: Vec<f32> = (0..32).map(|e| e as f32 - 10.0).collect();
        let v = dequantize(DType::Q8_0S832, &quantize(DType::Q8_0S832, &y).unwrap(), 32).unwrap();
        let kept: Vec<usize> = (0..32).filter(|&e| v[e] != 0.0).collect();
        assert_eq!(kept, (24..32).collect::<Vec<_>>());
    }

    #[test]
    fn q5_round_trips_within_half_a_step_and_uses_the_fifth_bit() {
        for dt in [DType::Q5_0, DType::Q5_1] {
            let x = ramp(0.37);
            let b = quantize(dt, &x).unwrap();
            assert_eq!(b.len(), dt.block_bytes());
            let d = half::f16::from_le_bytes([b[0], b[1]]).to_f64().abs();
            let v = dequantize(dt, &b, 32).unwrap();
            for (a, q) in x.iter().zip(&v) {
                assert!((*a as f64 - q).abs() <= d * 0.5 + 1e-3, "{dt}: {a} vs {q}");
            }
            // 32 levels over the ramp: some codes are >= 16.
            let qh_at = if dt == DType::Q5_0 { 2 } else { 4 };
            assert_ne!(&b[qh_at..qh_at + 4], &[0, 0, 0, 0], "{dt}");
        }
    }

    #[test]
    fn chosen_codes_encode_into_blocks_that_dequantize_to_their_values() {
        for dt in WRITTEN {
            // One block (a group: the ramp at falling scales); 2:4 keeps two of four.
            let x: Vec<f32> = (0..dt.block_len())
                .map(|i| ramp(0.21)[i % 32] / (1 + i / 32) as f32)
                .enumerate()
                .map(|(i, v)| {
                    if (dt == DType::Q8_0S24 && i % 4 >= 2) || (dt == DType::Q8_0S832 && i % 4 >= 1)
                    {
                        0.0
                    } else {
                        v
                    }
                })
                .collect();
            let s = BlockScale::of(dt, &x);
            let (codes, vals): (Vec<u8>, Vec<f32>) = x.iter().map(|&v| s.code(dt, v)).unzip();
            let mut b = Vec::new();
            s.encode(dt, &codes, &mut b);
            assert_eq!(b.len(), dt.block_bytes());
            let back = dequantize(dt, &b, dt.block_len()).unwrap();
            for (v, q) in vals.iter().zip(&back) {
                assert!((*v as f64 - q).abs() < 1e-5, "{dt}: {v} vs {q}");
            }
            // Nearest on the grid: within half a step (a clamped value may be further).
            for (a, v) in x.iter().zip(&vals) {
                assert!((a - v).abs() <= s.d.abs() * 0.5 + 1e-3, "{dt}: {a} vs {v}");
            }
        }
    }

    #[test]
    fn zero_blocks_and_bad_input() {
        for dt in WRITTEN {
            let n = 2 * dt.block_len();
            let b = quantize(dt, &vec![0.0; n]).unwrap();
            assert_eq!(b.len(), 2 * dt.block_bytes());
            assert!(dequantize(dt, &b, n).unwrap().iter().all(|&v| v == 0.0));
            assert!(quantize(dt, &[0.0; 31])
                .unwrap_err()
                .contains("whole blocks"));
        }
        let e = quantize(DType::F16, &[0.0; 32]).unwrap_err();
        assert!(e.contains("cannot quantize to f16"), "{e}");
    }
}
