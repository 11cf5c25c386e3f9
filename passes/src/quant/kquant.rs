//! The K-quant quantizers llama-quantize's `Q4_K_M`-style files are made of: Q4_K
//! (super-blocks of 256: eight blocks of 32 with 6-bit scales and minimums, 4-bit
//! codes, 4.5 bits per weight) and Q6_K (sixteen blocks of 16 with 8-bit scales, 6-bit
//! codes, 6.5625 bits). Written as llama.cpp's reference quantizer writes them
//! (`ggml-quants.c`: `quantize_row_q4_K_ref` with `make_qkx2_quants`'s search of 21
//! scales per block, `quantize_row_q6_K_ref` with `make_qx_quants`' search of 19), in
//! its f32 arithmetic and order, so the bytes compare with llama.cpp's; the inverse is
//! `llmc_ir::quant_k::dequantize_k`, which the kernels read.

/// Elements per K-quant super-block.
pub const QK_K: usize = 256;

/// Below this a group is all zero (`GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// `nearest_int`: round to nearest, ties to even, by the reference's float trick.
fn nearest_int(v: f32) -> i32 {
    let val = v + 12_582_912.0;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

fn f16(v: f32) -> half::f16 {
    half::f16::from_f32(v)
}

/// `make_qkx2_quants(n, nmax, x, weights, L, &min, Laux, rmin, rdelta, nstep, false)`:
/// the scale and (negated) minimum of an asymmetric block by a weighted least-squares
/// search over `nstep + 1` grids; the codes go to `l`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.iter_mut().for_each(|c| *c = 0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let (w, q) = (weights[i], q as f32);
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// One Q4_K super-block (`quantize_row_q4_K_ref`): 144 bytes.
pub fn block_q4_k(x: &[f32], out: &mut Vec<u8>) {
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..QK_K / 32 {
        let xb = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for v in xb {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: Vec<f32> = xb.iter().map(|v| av_x + v.abs()).collect();
        let (s, m) = make_qkx2_quants(15, xb, &weights, &mut l[32 * j..32 * j + 32], -1.0, 0.1, 20);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut sc = [0u8; 12];
    for j in 0..QK_K / 32 {
        // `uint8_t ls = nearest_int(...)`: the int truncated to a byte, then capped.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16(max_scale / 63.0);
    let dmin = f16(max_min / 63.0);
    for j in 0..QK_K / 32 {
        let (s, m) = llmc_ir::quant_k::scale_min_k4(j, &sc);
        let dd = d.to_f32() * s as f32;
        if dd == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dd).clamp(0, 15) as u8;
        }
    }
    out.extend(d.to_le_bytes());
    out.extend(dmin.to_le_bytes());
    out.extend(sc);
    for j in (0..QK_K).step_by(64) {
        out.extend((0..32).map(|i| l[j + i] | (l[j + i + 32] << 4)));
    }
}

/// `make_qx_quants(n, nmax, x, L, 1, NULL)`: a symmetric block's scale by a search of
/// 19 grids weighted by `x²`; codes `l + nmax` go to `out`.
fn make_qx_quants(nmax: i32, x: &[f32], out: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        out.iter_mut().for_each(|c| *c = 0);
        return 0.0;
    }
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (i, &v) in x.iter().enumerate() {
        let l = code(iscale, v);
        out[i] = (l + nmax) as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = code(iscale, v);
            let w = v * v;
            sumlx += w * v * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                out[i] = (code(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// One Q6_K super-block (`quantize_row_q6_K_ref`): 210 bytes.
pub fn block_q6_k(x: &[f32], out: &mut Vec<u8>) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..QK_K / 16 {
        let s = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        scales[ib] = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        out.extend(std::iter::repeat_n(0u8, 210));
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16(1.0 / iscale);
    let sc: Vec<i8> = scales
        .iter()
        .map(|&s| nearest_int(iscale * s).min(127) as i8)
        .collect();
    for j in 0..QK_K / 16 {
        let dd = d.to_f32() * sc[j] as f32;
        if dd == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / dd).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for (h, j) in (0..QK_K).step_by(128).enumerate() {
        for i in 0..32 {
            let q = |o: usize| l[j + i + o] as u8;
            ql[64 * h + i] = (q(0) & 0xF) | ((q(64) & 0xF) << 4);
            ql[64 * h + i + 32] = (q(32) & 0xF) | ((q(96) & 0xF) << 4);
            qh[32 * h + i] =
                (q(0) >> 4) | ((q(32) >> 4) << 2) | ((q(64) >> 4) << 4) | ((q(96) >> 4) << 6);
        }
    }
    out.extend(ql);
    out.extend(qh);
    out.extend(sc.iter().map(|&s| s as u8));
    out.extend(d.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmc_ir::DType;

    /// 64 super-blocks of LCG values in [-1, 1] with the edge cases: an all-zero
    /// block, an all-positive one (minimum above 0), outliers, half-zero sub-blocks,
    /// and small scales.
    fn input() -> Vec<f32> {
        let mut s: u64 = 12345;
        (0..64 * QK_K)
            .map(|i| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let v = ((s >> 33) % 2001) as i32 - 1000;
                let blk = i / QK_K;
                let mut f = v as f32 / 997.0;
                if blk == 1 {
                    f = 0.0;
                }
                if blk == 2 {
                    f = f.abs() + 0.25;
                }
                if blk == 3 && i % 61 == 0 {
                    f *= 40.0;
                }
                if blk == 4 && i % 32 < 16 {
                    f = 0.0;
                }
                if blk >= 5 {
                    f *= (1 + blk % 9) as f32 / 64.0;
                }
                f
            })
            .collect()
    }

    fn fnv(b: &[u8]) -> u64 {
        b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &c| {
            (h ^ c as u64).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// The bytes of llama.cpp's `quantize_row_q4_K_ref` / `quantize_row_q6_K_ref`
    /// (llama-cpp-python 0.3.36's `ggml-quants.c`, compiled with gcc -O2, no FMA
    /// contraction) on [`input`], by their FNV-1a hash: llmc writes the same bytes.
    #[test]
    fn k_quants_write_llama_cpps_bytes() {
        let x = input();
        assert_eq!(
            x[0].to_bits(),
            0xbeac_8cb6,
            "the generator matches the C harness"
        );
        for (d, bytes, hash) in [
            (DType::Q4K, 9216, 0x8d8f_6209_d1c7_2291u64),
            (DType::Q6K, 13440, 0x4467_6bf7_1dcd_cb15),
        ] {
            let mut out = Vec::new();
            crate::quant::gguf::quantize_into(d, &x, &mut out).unwrap();
            assert_eq!(out.len(), bytes, "{d}");
            assert_eq!(fnv(&out), hash, "{d}: bytes differ from llama.cpp's");
        }
    }

    /// Dequantized, each value is within a few of its block's steps (Q4_K: 15 levels
    /// per block of 32; Q6_K: 63 per 16), and the all-zero block stays zero. Super-block
    /// 3 is left out: its outliers' blocks set the 6-bit scale grid, which leaves the
    /// other blocks few steps (llama.cpp's bytes, the test above, do the same).
    #[test]
    fn k_quants_round_trip_within_their_steps() {
        let x = input();
        for (d, levels) in [(DType::Q4K, 15.0f32), (DType::Q6K, 63.0)] {
            let mut out = Vec::new();
            crate::quant::gguf::quantize_into(d, &x, &mut out).unwrap();
            let back = llmc_ir::quant::dequantize(d, &out, x.len()).unwrap();
            for (blk, (xs, ys)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
                if blk / 8 == 3 {
                    continue;
                }
                let (lo, hi) = xs
                    .iter()
                    .fold((0f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
                let step = (hi - lo) / levels;
                for (a, b) in xs.iter().zip(ys) {
                    assert!(
                        (*a as f64 - b).abs() <= 2.0 * step as f64 + 1e-6,
                        "{d} block {blk}: {a} -> {b} (step {step})"
                    );
                }
            }
            assert!(back[QK_K..2 * QK_K].iter().all(|v| *v == 0.0), "{d}");
        }
    }
}
