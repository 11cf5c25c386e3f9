//! GGUF K-quant super-blocks (Q2_K..Q6_K) and IQ4_XS, decoded as llama.cpp's
//! `dequantize_row_*` define them. A super-block holds 256 values in sub-blocks (8 of
//! 32 for Q4_K/Q5_K/IQ4_XS, 16 of 16 for Q2_K/Q3_K/Q6_K) whose scales are themselves
//! quantized against one or two f16 super-scales.
//!
//! Layouts (little-endian, bytes in order):
//! - Q2_K (84 B): `scales: [u8; 16] (scale | min << 4), qs: [u8; 64], d: f16, dmin: f16`.
//! - Q3_K (110 B): `hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12] (16 x 6 bits), d: f16`.
//! - IQ4_XS (136 B): `d: f16, scales_h: u16, scales_l: [u8; 4], qs: [u8; 128]`.
//! - Q4_K (144 B): `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`.
//! - Q5_K (176 B): `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`.
//! - Q6_K (210 B): `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`.
//!
//! Every product here is exact in f64 and at most one rounding separates it from the
//! f32 llama.cpp computes, so values rounded to f32 afterwards agree bit for bit.

use crate::DType;

fn f16_at(b: &[u8], i: usize) -> f64 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f64()
}

/// The 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes of a
/// Q4_K/Q5_K super-block. Sub-blocks 0..4 keep both in the low 6 bits of bytes
/// `j` and `j + 4`; sub-blocks 4..8 keep their low 4 bits in the nibbles of byte
/// `j + 4` and their top 2 bits in the top bits of bytes `j - 4` (scale) and `j` (min).
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Decodes one Q4_K or Q5_K super-block. `qh` is `None` for Q4_K. Within each group
/// of 64 values, the first 32 come from the low nibbles of 32 bytes of `qs`, the next 32
/// from the high nibbles, with sub-blocks `2g` and `2g + 1`; Q5_K adds a fifth bit from
/// `qh[l]`, bit `2g` for the first half and `2g + 1` for the second.
fn decode_q45k(block: &[u8], qh: Option<&[u8]>, qs: &[u8], out: &mut Vec<f64>) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let scales = &block[4..16];
    for g in 0..4 {
        let q = &qs[32 * g..32 * g + 32];
        for half in 0..2 {
            let (sc, m) = scale_min_k4(2 * g + half, scales);
            let (d1, m1) = (d * sc as f64, dmin * m as f64);
            let bit = 1u8 << (2 * g + half);
            for l in 0..32 {
                let low = if half == 0 { q[l] & 0xF } else { q[l] >> 4 };
                let high = match qh {
                    Some(h) if h[l] & bit != 0 => 16,
                    _ => 0,
                };
                out.push(d1 * (low + high) as f64 - m1);
            }
        }
    }
}

/// Decodes one Q6_K super-block: two halves of 128 values; in each, value `l + 32*k`
/// (k = 0..4, l = 0..32) takes 4 low bits from `ql` (byte `l` or `l + 32`, low or high
/// nibble) and 2 high bits from `qh[l]` (bits `2k..2k+2`), minus 32, times `d` and the
/// signed scale of its 16-value sub-block.
fn decode_q6k(block: &[u8], out: &mut Vec<f64>) {
    let d = f16_at(block, 208);
    for h in 0..2 {
        let ql = &block[64 * h..64 * h + 64];
        let qh = &block[128 + 32 * h..128 + 32 * h + 32];
        let sc = &block[192 + 8 * h..192 + 8 * h + 8];
        let base = out.len();
        out.resize(base + 128, 0.0);
        for l in 0..32 {
            let is = l / 16;
            let lows = [ql[l] & 0xF, ql[l + 32] & 0xF, ql[l] >> 4, ql[l + 32] >> 4];
            for (k, &low) in lows.iter().enumerate() {
                let q = (low | (((qh[l] >> (2 * k)) & 3) << 4)) as i32 - 32;
                let s = sc[is + 2 * k] as i8 as f64;
                out[base + l + 32 * k] = d * s * q as f64;
            }
        }
    }
}

/// Decodes one Q2_K super-block: two halves of 128 values; in each, 4 shifts (0, 2,
/// 4, 6) of the same 32 bytes give 4 runs of 32 values, each run two sub-blocks of 16
/// with their own 4-bit scale and min.
fn decode_q2k(block: &[u8], out: &mut Vec<f64>) {
    let scales = &block[0..16];
    let d = f16_at(block, 80);
    let dmin = f16_at(block, 82);
    let mut is = 0;
    for h in 0..2 {
        let q = &block[16 + 32 * h..16 + 32 * h + 32];
        for shift in [0, 2, 4, 6] {
            for half in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * (sc & 0xF) as f64, dmin * (sc >> 4) as f64);
                for &b in &q[16 * half..16 * half + 16] {
                    out.push(dl * ((b >> shift) & 3) as f64 - ml);
                }
            }
        }
    }
}

/// The 16 signed 6-bit scales of a Q3_K super-block from its 12 packed bytes: low
/// nibbles in bytes 0..8 (scales 0..8 low, 8..16 high nibble), top 2 bits in bytes
/// 8..12 (two bits per scale, shifted by 2 per group of 4), minus 32.
pub fn q3k_scales(packed: &[u8]) -> [i32; 16] {
    let mut s = [0i32; 16];
    for (j, v) in s.iter_mut().enumerate() {
        let low = if j < 8 {
            packed[j] & 0xF
        } else {
            packed[j - 8] >> 4
        };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        *v = (low | (high << 4)) as i32 - 32;
    }
    s
}

/// Decodes one Q3_K super-block: Q2_K's layout of 2-bit quants, plus a high bit per
/// value from `hmask` (bit `k` of byte `l` for run `k`); a clear high bit subtracts 4.
fn decode_q3k(block: &[u8], out: &mut Vec<f64>) {
    let hm = &block[0..32];
    let scales = q3k_scales(&block[96..108]);
    let d = f16_at(block, 108);
    let mut is = 0;
    let mut bit = 0;
    for h in 0..2 {
        let q = &block[32 + 32 * h..32 + 32 * h + 32];
        for shift in [0, 2, 4, 6] {
            for half in 0..2 {
                let dl = d * scales[is] as f64;
                is += 1;
                for l in 16 * half..16 * half + 16 {
                    let low = ((q[l] >> shift) & 3) as i32;
                    let sub = if hm[l] & (1 << bit) != 0 { 0 } else { 4 };
                    out.push(dl * (low - sub) as f64);
                }
            }
            bit += 1;
        }
    }
}

/// Decodes one IQ4_XS super-block: 8 sub-blocks of 32, each with a 6-bit scale (low 4
/// bits in `scales_l`, top 2 in `scales_h`, minus 32) and IQ4_NL's table.
fn decode_iq4xs(block: &[u8], out: &mut Vec<f64>) {
    let d = f16_at(block, 0);
    let scales_h = u16::from_le_bytes([block[2], block[3]]);
    let scales_l = &block[4..8];
    for ib in 0..8 {
        let low = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
        let high = ((scales_h >> (2 * ib)) & 3) as u8;
        let dl = d * ((low | (high << 4)) as i32 - 32) as f64;
        let qs = &block[8 + 16 * ib..8 + 16 * ib + 16];
        let kv = |i: u8| crate::quant::KVALUES_IQ4NL[i as usize] as f64;
        out.extend(qs.iter().map(|&q| dl * kv(q & 0xF)));
        out.extend(qs.iter().map(|&q| dl * kv(q >> 4)));
    }
}

/// Appends the decoded values of whole super-blocks of `dtype` in `bytes` to `out`.
/// `bytes` must be a whole number of super-blocks.
pub fn dequantize_k(dtype: DType, bytes: &[u8], out: &mut Vec<f64>) -> Result<(), String> {
    let bb = dtype.block_bytes();
    if !matches!(
        dtype,
        DType::Q4K | DType::Q5K | DType::Q6K | DType::Q2K | DType::Q3K | DType::IQ4XS
    ) {
        return Err(format!("{dtype} is not a K-quant format"));
    }
    if !bytes.len().is_multiple_of(bb) {
        return Err(format!(
            "{} bytes are not whole {dtype} super-blocks of {bb} bytes",
            bytes.len()
        ));
    }
    out.reserve(bytes.len() / bb * 256);
    for block in bytes.chunks_exact(bb) {
        match dtype {
            DType::Q4K => decode_q45k(block, None, &block[16..144], out),
            DType::Q5K => decode_q45k(block, Some(&block[16..48]), &block[48..176], out),
            DType::Q2K => decode_q2k(block, out),
            DType::Q3K => decode_q3k(block, out),
            DType::IQ4XS => decode_iq4xs(block, out),
            _ => decode_q6k(block, out),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(v: f64) -> [u8; 2] {
        half::f16::from_f64(v).to_le_bytes()
    }

    /// Packs 8 (scale, min) pairs of 6 bits the way llama.cpp's quantizer does
    /// (`quantize_row_q4_K_ref`): the inverse of `scale_min_k4`, written independently.
    fn pack_scales(sm: &[(u8, u8); 8]) -> [u8; 12] {
        let mut q = [0u8; 12];
        for (j, &(s, m)) in sm.iter().enumerate() {
            if j < 4 {
                q[j] = s;
                q[j + 4] = m;
            } else {
                q[j + 4] = (s & 0xF) | ((m & 0xF) << 4);
                q[j - 4] |= (s >> 4) << 6;
                q[j] |= (m >> 4) << 6;
            }
        }
        q
    }

    /// Test quants: value index `i` (0..256) gets a pattern covering every level.
    fn quant(i: usize, levels: usize) -> usize {
        (i * 7 + i / 13) % levels
    }

    #[test]
    fn scale_packing_round_trips_all_6_bit_values() {
        for base in 0..64u8 {
            let mut sm = [(0u8, 0u8); 8];
            for (j, p) in sm.iter_mut().enumerate() {
                *p = ((base + j as u8 * 9) % 64, (base * 3 + j as u8 * 5) % 64);
            }
            let q = pack_scales(&sm);
            for (j, &p) in sm.iter().enumerate() {
                assert_eq!(scale_min_k4(j, &q), p, "sub-block {j}");
            }
        }
    }

    #[test]
    fn q4_k_decodes_hand_built_block() {
        let d = 0.5;
        let dmin = 0.25;
        let sm: [(u8, u8); 8] = [
            (1, 0),
            (2, 3),
            (63, 1),
            (10, 63),
            (33, 7),
            (5, 40),
            (17, 2),
            (48, 22),
        ];
        // Element e of the super-block lives in sub-block e / 32; quant values by index.
        let want_q: Vec<usize> = (0..256).map(|i| quant(i, 16)).collect();
        let mut qs = [0u8; 128];
        for (e, &q) in want_q.iter().enumerate() {
            let (g, half, l) = (e / 64, (e / 32) % 2, e % 32);
            qs[32 * g + l] |= (q as u8) << (4 * half);
        }
        let mut block = Vec::new();
        block.extend(f16b(d));
        block.extend(f16b(dmin));
        block.extend(pack_scales(&sm));
        block.extend(qs);
        assert_eq!(block.len(), DType::Q4K.block_bytes());
        let mut out = Vec::new();
        dequantize_k(DType::Q4K, &block, &mut out).unwrap();
        assert_eq!(out.len(), 256);
        for (e, &v) in out.iter().enumerate() {
            let (s, m) = sm[e / 32];
            let want = d * s as f64 * want_q[e] as f64 - dmin * m as f64;
            assert_eq!(v, want, "element {e}");
        }
    }

    #[test]
    fn q5_k_decodes_hand_built_block() {
        let d = 0.125;
        let dmin = 1.5;
        let sm: [(u8, u8); 8] = [
            (3, 1),
            (62, 0),
            (7, 63),
            (0, 9),
            (40, 33),
            (21, 12),
            (63, 63),
            (1, 48),
        ];
        let want_q: Vec<usize> = (0..256).map(|i| quant(i, 32)).collect();
        let mut qs = [0u8; 128];
        let mut qh = [0u8; 32];
        for (e, &q) in want_q.iter().enumerate() {
            let (g, half, l) = (e / 64, (e / 32) % 2, e % 32);
            qs[32 * g + l] |= ((q & 0xF) as u8) << (4 * half);
            if q >= 16 {
                qh[l] |= 1 << (2 * g + half);
            }
        }
        let mut block = Vec::new();
        block.extend(f16b(d));
        block.extend(f16b(dmin));
        block.extend(pack_scales(&sm));
        block.extend(qh);
        block.extend(qs);
        assert_eq!(block.len(), DType::Q5K.block_bytes());
        let mut out = Vec::new();
        dequantize_k(DType::Q5K, &block, &mut out).unwrap();
        for (e, &v) in out.iter().enumerate() {
            let (s, m) = sm[e / 32];
            let want = d * s as f64 * want_q[e] as f64 - dmin * m as f64;
            assert_eq!(v, want, "element {e}");
        }
    }

    #[test]
    fn q6_k_decodes_hand_built_block() {
        let d = -0.0625;
        let scales: [i8; 16] = [
            1, -2, 3, 127, -128, 0, 5, -7, 64, -64, 9, 11, -13, 15, 100, -100,
        ];
        // Signed quants in -32..32 by element.
        let want_q: Vec<i32> = (0..256).map(|i| quant(i, 64) as i32 - 32).collect();
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for (e, &q) in want_q.iter().enumerate() {
            let u = (q + 32) as u8;
            // Half h of 128 values; inside, k = which 32-run, l = position in the run.
            let (h, k, l) = (e / 128, (e % 128) / 32, e % 32);
            let byte = 64 * h + l + if k % 2 == 1 { 32 } else { 0 };
            ql[byte] |= (u & 0xF) << if k >= 2 { 4 } else { 0 };
            qh[32 * h + l] |= (u >> 4) << (2 * k);
        }
        let mut block = Vec::new();
        block.extend(ql);
        block.extend(qh);
        block.extend(scales.iter().map(|&s| s as u8));
        block.extend(f16b(d));
        assert_eq!(block.len(), DType::Q6K.block_bytes());
        let mut out = Vec::new();
        dequantize_k(DType::Q6K, &block, &mut out).unwrap();
        for (e, &v) in out.iter().enumerate() {
            // Sub-blocks of 16 consecutive values, in order.
            let want = d * scales[e / 16] as f64 * want_q[e] as f64;
            assert_eq!(v, want, "element {e}");
        }
    }

    #[test]
    fn partial_super_block_is_an_error() {
        let mut out = Vec::new();
        let err = dequantize_k(DType::Q4K, &[0u8; 100], &mut out).unwrap_err();
        assert!(err.contains("100 bytes"), "{err}");
        assert!(dequantize_k(DType::Q4_0, &[0u8; 18], &mut out).is_err());
    }

    #[test]
    fn two_super_blocks_decode_in_order() {
        // Block 1: all quants 0, so values are -dmin*m; block 2: d=1, scales 1, quants q.
        let mut b = Vec::new();
        b.extend(f16b(1.0));
        b.extend(f16b(2.0));
        b.extend(pack_scales(&[(0, 1); 8]));
        b.extend([0u8; 128]);
        b.extend(f16b(1.0));
        b.extend(f16b(0.0));
        b.extend(pack_scales(&[(1, 0); 8]));
        b.extend([0x21u8; 128]);
        let mut out = Vec::new();
        dequantize_k(DType::Q4K, &b, &mut out).unwrap();
        assert_eq!(out.len(), 512);
        assert!(out[..256].iter().all(|&v| v == -2.0));
        // Low nibble 1 for the first 32 of each 64, high nibble 2 for the next 32.
        for (e, &v) in out[256..].iter().enumerate() {
            assert_eq!(v, if (e / 32) % 2 == 0 { 1.0 } else { 2.0 }, "element {e}");
        }
    }
}
