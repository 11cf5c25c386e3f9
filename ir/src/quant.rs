//! Decoding of stored weight bytes to numbers: plain floats (f32/f16/bf16/f64,
//! little-endian) and GGUF block formats, dequantized exactly as llama.cpp defines
//! the blocks (`ggml-quants.c`, `dequantize_row_*`). The interpreter, the tests and
//! the quantized kernels' oracles all decode through here.

use crate::DType;

fn f16_at(b: &[u8], i: usize) -> f64 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f64()
}

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
        DType::Q4K | DType::Q5K | DType::Q6K => {
            crate::quant_k::dequantize_k(dtype, &bytes[..need as usize], &mut out)?;
        }
        other => return Err(format!("{other} is not a float or block format")),
    }
    Ok(out)
}
