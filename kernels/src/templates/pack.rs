//! Weight layouts kernels ask for at build time. A weight's bytes are fixed when the
//! model is compiled, so a template may request them in the order its loops read
//! best; the planner rewrites the weight once into the data section. The layout and
//! the kernel that reads it are defined side by side: this module and `linalg`.
//!
//! `Rows8` (GGUF Q8_0, Q4_0, Q4_1): groups of 8 consecutive rows, and in each group
//! block by block: the 8 rows' f16 scales, the 8 rows' f16 minimums (Q4_1 only), then
//! the quant bytes interleaved by row (`[byte][row]`). One contiguous 8-byte load
//! then gives one byte position of 8 output rows, so SIMD lanes are output rows and
//! the dot products need no horizontal reductions. The size is unchanged.

use llmc_ir::DType;

/// A requested layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pack {
    /// 8 rows interleaved per block (see the module docs).
    Rows8,
    /// Float weights (f32, f16, bf16) `[n, k]` as panels of [`PANEL`] rows, each
    /// panel column-major: element `(j, p)` at `(j / PANEL · k + p) · PANEL + j mod
    /// PANEL`. One contiguous load then gives one `k` position of a panel's rows, so
    /// SIMD lanes are output columns of an outer-product GEMM (`FTile`). `n` must be a
    /// multiple of [`PANEL`]; the size is unchanged.
    Panels32,
}

/// Weight rows per [`Pack::Panels32`] panel.
pub const PANEL: usize = 32;

/// A packing request of a kernel: operand `operand` must be laid out as `pack`.
#[derive(Clone, Debug, PartialEq)]
pub struct OperandPack {
    /// Operand index (a weight).
    pub operand: usize,
    /// Layout.
    pub pack: Pack,
}

/// (scale bytes, quant bytes, has minimums) of a block format the packer knows.
fn parts(d: DType) -> Option<(usize, bool)> {
    match d {
        DType::Q8_0 => Some((32, false)),
        DType::Q4_0 => Some((16, false)),
        DType::Q4_1 => Some((16, true)),
        _ => None,
    }
}

/// Rewrites the bytes of a weight `[rows, k]` of dtype `d` into `pack`.
pub fn pack(pack: Pack, d: DType, rows: usize, k: usize, bytes: &[u8]) -> Result<Vec<u8>, String> {
    match pack {
        Pack::Rows8 => {
            let (qn, has_min) =
                parts(d).ok_or_else(|| format!("{d} cannot be packed by 8 rows"))?;
            let (bl, bb) = (d.block_len(), d.block_bytes());
            if !rows.is_multiple_of(8) || !k.is_multiple_of(bl) {
                return Err(format!(
                    "[{rows}, {k}] {d} is not whole groups of 8 rows and blocks"
                ));
            }
            let blocks = k / bl;
            if bytes.len() != rows * blocks * bb {
                return Err(format!("{} bytes for [{rows}, {k}] {d}", bytes.len()));
            }
            let mut out = Vec::with_capacity(bytes.len());
            let qs_at = if has_min { 4 } else { 2 };
            for g in 0..rows / 8 {
                for b in 0..blocks {
                    let block = |r: usize| {
                        let at = ((g * 8 + r) * blocks + b) * bb;
                        &bytes[at..at + bb]
                    };
                    for r in 0..8 {
                        out.extend_from_slice(&block(r)[0..2]);
                    }
                    if has_min {
                        for r in 0..8 {
                            out.extend_from_slice(&block(r)[2..4]);
                        }
                    }
                    for e in 0..qn {
                        for r in 0..8 {
                            out.push(block(r)[qs_at + e]);
                        }
                    }
                }
            }
            Ok(out)
        }
        Pack::Panels32 => {
            let es = match d {
                DType::F32 => 4,
                DType::F16 | DType::BF16 => 2,
                _ => return Err(format!("{d} cannot be packed in panels")),
            };
            if !rows.is_multiple_of(PANEL) || bytes.len() != rows * k * es {
                return Err(format!(
                    "[{rows}, {k}] {d} ({} bytes) is not whole panels of {PANEL} rows",
                    bytes.len()
                ));
            }
            let mut out = vec![0u8; bytes.len()];
            for j in 0..rows {
                for p in 0..k {
                    let to = ((j / PANEL * k + p) * PANEL + j % PANEL) * es;
                    let from = (j * k + p) * es;
                    out[to..to + es].copy_from_slice(&bytes[from..from + es]);
                }
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows8_interleaves_scales_mins_and_bytes() {
        // Q4_1, 8 rows of one block: row r's block = [d=r,r][m=10+r,10+r][bytes 100+r*16+e].
        let mut bytes = Vec::new();
        for r in 0..8u8 {
            bytes.extend([r, r, 10 + r, 10 + r]);
            bytes.extend((0..16).map(|e| 100 + r * 16 + e));
        }
        let p = pack(Pack::Rows8, DType::Q4_1, 8, 32, &bytes).unwrap();
        assert_eq!(p.len(), bytes.len());
        assert_eq!(&p[0..4], &[0, 0, 1, 1]);
        assert_eq!(&p[16..20], &[10, 10, 11, 11]);
        // Byte e of row r at 32 + e * 8 + r.
        assert_eq!(p[32 + 3 * 8 + 5], 100 + 5 * 16 + 3);
        assert!(pack(Pack::Rows8, DType::Q4_1, 4, 32, &bytes[..80]).is_err());
        assert!(pack(Pack::Rows8, DType::F32, 8, 32, &bytes).is_err());
    }

    #[test]
    fn panels32_put_a_panels_rows_side_by_side() {
        // f16 [64, 3]: element (j, p) holds j * 3 + p.
        let (n, k) = (64usize, 3usize);
        let bytes: Vec<u8> = (0..n * k).flat_map(|v| (v as u16).to_le_bytes()).collect();
        let p = pack(Pack::Panels32, DType::F16, n, k, &bytes).unwrap();
        let at = |i: usize| u16::from_le_bytes([p[2 * i], p[2 * i + 1]]) as usize;
        // Panel 1, position p = 2, lane 5: row 37.
        assert_eq!(at((k + 2) * 32 + 5), 37 * 3 + 2);
        assert_eq!(at(0), 0);
        assert!(pack(Pack::Panels32, DType::F16, 48, k, &bytes[..48 * k * 2]).is_err());
        assert!(pack(Pack::Panels32, DType::Q8_0, 64, 32, &bytes).is_err());
    }
}
