//! Decoding of stored weight bytes to numbers: plain floats (f32/f16/bf16/f64,
//! little-endian) and GGUF block formats, dequantized exactly as llama.cpp defines
//! the blocks (`ggml-quants.c`, `dequantize_row_*`). The interpreter, the tests and
//! the quantized kernels' oracles all decode through here.

use crate::DType;

fn f16_at(b: &[u8], i: usize) -> f64 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f64()
}

/// The 16 levels of IQ4_NL and IQ4_XS (`kvalues_iq4nl` in ggml-common.h).
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Decodes `numel` elements of `dtype` from `bytes` (length already checked by the
/// caller; a short buffer is an error, never a panic).
pub fn dequantize(dtype: DType, bytes: &[u8], numel: usize) -> Result<Vec<f64>, String> {
    let need = dtype
        .storage_bytes(numel as u64)
        .ok_or_else(|| format!("{numel} elements are not whole {dtype} blocks"))?;
    if (bytes.len() as u64) < need {
        return Err(format!(
            "{} bytes, {dtype} x {numel} needs {need}",
            bytes.len()
        ));
    }
    let bb = dtype.block_bytes();
    let mut out = Vec::with_capacity(numel);
    let blocks = bytes[..need as usize].chunks_exact(bb);
    match dtype {
        DType::F32 => {
            out.extend(blocks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64))
        }
        DType::F64 => out.extend(
            blocks.map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
        ),
        DType::F16 => out.extend(blocks.map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())),
        DType::BF16 => out.extend(blocks.map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())),
        DType::Q8_0 => {
            for b in blocks {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f64));
            }
        }
        DType::Q8Kv => {
            for b in blocks {
                let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64;
                out.extend(b[4..68].iter().map(|&q| d * (q as i8) as f64));
            }
        }
        DType::Q4_0 => {
            // Low nibbles are elements 0..16, high nibbles 16..32; value = (q - 8) * d.
            for b in blocks {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| d * ((q & 0xF) as f64 - 8.0)));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as f64 - 8.0)));
            }
        }
        DType::Q4_1 => {
            // value = q * d + m, same nibble order as Q4_0.
            for b in blocks {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| d * (q & 0xF) as f64 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f64 + m));
            }
        }
        DType::Q5_0 | DType::Q5_1 => {
            // Element j < 16: low nibble of byte j plus bit j of `qh` as bit 4; element
            // j + 16: high nibble plus bit j + 16. Q5_0: (q - 16) * d; Q5_1: q * d + m.
            // (Q5_0 as llama.cpp writes it, (q - 16) * d, so a zero keeps d's sign.)
            let q51 = dtype == DType::Q5_1;
            for b in blocks {
                let d = f16_at(b, 0);
                let (m, rest) = if q51 {
                    (f16_at(b, 2), &b[4..])
                } else {
                    (0.0, &b[2..])
                };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let qs = &rest[4..20];
                let q = |j: usize, v: u8| (v as u32 | (((qh >> j) & 1) << 4)) as f64;
                let val = |j: usize, v: u8| {
                    if q51 {
                        d * q(j, v) + m
                    } else {
                        (q(j, v) - 16.0) * d
                    }
                };
                out.extend(qs.iter().enumerate().map(|(j, &v)| val(j, v & 0xF)));
                out.extend(qs.iter().enumerate().map(|(j, &v)| val(j + 16, v >> 4)));
            }
        }
        DType::IQ4NL => {
            // Nibbles index the fixed table; low nibbles first, as in Q4_0.
            for b in blocks {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(
                    qs.iter()
                        .map(|&q| d * KVALUES_IQ4NL[(q & 0xF) as usize] as f64),
                );
                out.extend(
                    qs.iter()
                        .map(|&q| d * KVALUES_IQ4NL[(q >> 4) as usize] as f64),
                );
            }
        }
        DType::Q4_0G64 | DType::Q4_1G64 | DType::Q4_0G128 | DType::Q4_1G128 => {
            // Q4_0 / Q4_1 nibble blocks of 32 sharing the group's `d` (and `m`).
            let (sym, hdr) = match dtype {
                DType::Q4_0G64 | DType::Q4_0G128 => (true, 2),
                _ => (false, 4),
            };
            for b in blocks {
                let d = f16_at(b, 0);
                let m = if sym { -8.0 * d } else { f16_at(b, 2) };
                for qs in b[hdr..].chunks_exact(16) {
                    let val = |q: u8| {
                        if sym {
                            d * (q as f64 - 8.0)
                        } else {
                            d * q as f64 + m
                        }
                    };
                    out.extend(qs.iter().map(|&q| val(q & 0xF)));
                    out.extend(qs.iter().map(|&q| val(q >> 4)));
                }
            }
        }
        DType::Q8_0S24 | DType::Q8_0S832 => {
            // The kept codes in element order, placed by the mask.
            for b in blocks {
                let d = f16_at(b, 0);
                let mask = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let mut kept = b[6..].iter();
                for e in 0..32 {
                    out.push(if (mask >> e) & 1 == 1 {
                        d * (*kept.next().unwrap_or(&0) as i8) as f64
                    } else {
                        0.0
                    });
                }
            }
        }
        DType::Q4K | DType::Q5K | DType::Q6K | DType::Q2K | DType::Q3K | DType::IQ4XS => {
            crate::quant_k::dequantize_k(dtype, &bytes[..need as usize], &mut out)?;
        }
        other => return Err(format!("{other} is not a float or block format")),
    }
    Ok(out)
}

/// Encodes `x` (a multiple of 64 values, taken as f32) in `q8_kv` blocks the way a
/// kernel writing an int8 KV pool does: per block of 64 `d = max|x| / 127` (f32,
/// stored as is), codes `roundeven(x * (1 / d))` (0 when `d` is 0).
pub fn q8_kv_encode(x: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 64 * 68);
    for blk in x.chunks(64) {
        let amax = blk.iter().fold(0f32, |m, &v| m.max((v as f32).abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(d.to_le_bytes());
        out.extend(
            blk.iter()
                .map(|&v| ((v as f32) * id).round_ties_even().clamp(-128.0, 127.0) as i8 as u8),
        );
    }
    out
}

/// `x` written through [`q8_kv_encode`] and read back (`d * code`, in f32).
pub fn q8_kv_round_trip(x: &[f64]) -> Vec<f64> {
    let bytes = q8_kv_encode(x);
    dequantize(DType::Q8Kv, &bytes, x.len()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    //! Hand-built blocks checked against llama.cpp's `dequantize_row_q4_0/q4_1/q8_0`:
    //! element j < 16 from the low nibble of byte j, element j + 16 from its high nibble.
    use super::*;

    fn f16b(v: f64) -> [u8; 2] {
        half::f16::from_f64(v).to_le_bytes()
    }

    #[test]
    fn q4_0_low_nibbles_first_then_high() {
        let mut b = f16b(0.5).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = dequantize(DType::Q4_0, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(v[j], 0.5 * (j as f64 - 8.0), "element {j}");
            assert_eq!(
                v[j + 16],
                0.5 * ((15 - j) as f64 - 8.0),
                "element {}",
                j + 16
            );
        }
    }

    #[test]
    fn q4_1_scale_and_min() {
        let mut b = f16b(0.25).to_vec();
        b.extend(f16b(-1.0));
        b.extend((0..16u8).map(|j| (j % 16) | (((j * 3) % 16) << 4)));
        let v = dequantize(DType::Q4_1, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(v[j], 0.25 * j as f64 - 1.0);
            assert_eq!(v[j + 16], 0.25 * ((j * 3) % 16) as f64 - 1.0);
        }
    }

    #[test]
    fn q8_0_signed_bytes() {
        let mut b = f16b(-2.0).to_vec();
        let qs: Vec<i8> = (0..32).map(|j| (j as i8 - 16) * 7).collect();
        b.extend(qs.iter().map(|&q| q as u8));
        // Two blocks: the second repeats the first with scale 1.
        b.extend(f16b(1.0));
        b.extend(qs.iter().map(|&q| q as u8));
        let v = dequantize(DType::Q8_0, &b, 64).unwrap();
        for j in 0..32 {
            assert_eq!(v[j], -2.0 * qs[j] as f64);
            assert_eq!(v[32 + j], qs[j] as f64);
        }
    }

    #[test]
    fn short_buffer_is_an_error() {
        let err = dequantize(DType::Q4_1, &[0u8; 19], 32).unwrap_err();
        assert!(err.contains("needs 20"), "{err}");
        assert!(dequantize(DType::Q4_0, &[0u8; 18], 31).is_err());
    }
}
