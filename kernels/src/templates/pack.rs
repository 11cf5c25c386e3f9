//! Weight layouts kernels ask for at build time. A weight's bytes are fixed when the
//! model is compiled, so a template may request them in the order its loops read
//! best; the planner rewrites the weight once into the data section. The layout and
//! the kernel that reads it are defined side by side: this module and `linalg`.
//!
//! `Tile16` (GGUF Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, llmc's int4 groups): groups of [`QTile::LANES`]
//! consecutive rows, and in each group block by block: the 16 rows' f16 scales, the
//! 16 rows' f16 minimums (Q4_1, Q5_1), the fifth bits (Q5_0, Q5_1: per pair of quants
//! one u32 whose bit `i` belongs to lane `i` of the tile vector; see [`tile16_fifth`]),
//! then the quants in the order of the tile a `QUnpack` fills (pairs of quants with
//! the rows in lanes; see [`tile16_quant`]). The int4 groups (`q4_0_g64` and the
//! like) pack per group: the 16 rows' scales (and minimums), then the group's blocks'
//! quants one block after the other, as Q4_0's. Unpacking is then a widening load, a mask
//! and a shift per pair of tile vectors (and a masked or for the fifth bits), with no
//! transpose. Q4_K packs per super-block: the 16 rows' D and Dmin, their 12 packed
//! scale bytes as 12 runs of 16 (see [`tile16_q4k_scale`]), then its eight blocks'
//! quants as Q4_0's. Q6_K packs per super-block too: the 16 rows' D, their 16 i8
//! sub-block scales as 16 runs of 16 (see [`tile16_q6k_scale`]), then per block of 32
//! the low nibbles as Q4_0's quants and the high two bits in four 32-byte chunks (see
//! [`tile16_q6k_high`]). IQ4_XS packs per super-block as Q4_K does: the 16 rows' D, their
//! `scales_h`, their 4 `scales_l` bytes as 4 runs of 16 (see [`tile16_iq4xs_scale`]),
//! then its eight blocks' nibbles as Q4_0's. Q3_K packs per super-block: the 16 rows'
//! D, their 12 packed scale bytes as 12 runs of 16 (see [`tile16_q3k_scale`]), then per
//! block of 32 the high bits as Q5_0's masks ([`tile16_fifth`]) and the low two bits in
//! four 32-byte chunks as Q6_K's high bits (see [`tile16_q3k_low`]). Q2_K packs per
//! super-block: the 16 rows' D and Dmin, their 16 scale-and-minimum bytes as 16 runs of
//! 16 (see [`tile16_q2k_scale`]), then per block of 32 the quants in Q3_K's order for its
//! low bits (see [`tile16_q2k_quant`]). The size is unchanged.

use crate::QTile;
use llmc_ir::DType;

/// A requested layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pack {
    /// Blocks of 16 rows in the tile order of `QUnpack` (see the module docs).
    Tile16,
    /// Float weights (f32, f16, bf16) `[n, k]` as panels of [`PANEL`] rows, each
    /// panel column-major: element `(j, p)` at `(j / PANEL · k + p) · PANEL + j mod
    /// PANEL`. One contiguous load then gives one `k` position of a panel's rows, so
    /// SIMD lanes are output columns of an outer-product GEMM (`FTile`). `n` must be a
    /// multiple of [`PANEL`]; the size is unchanged.
    Panels32,
    /// [`Pack::Panels32`] for a `linear` with `glu` (`[n, k]`, gate rows then up
    /// rows): panel `p` holds gate rows `16p..16p + 16` in lanes 0..16 and up rows
    /// `n / 2 + 16p..` in lanes 16..32, so one tile has both halves of 16 output
    /// columns. `n / 2` must be a multiple of 16; the size is unchanged.
    Panels32Glu,
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

/// (quant bytes, has minimums, has fifth bits) of a block format [`Pack::Tile16`]
/// knows.
fn parts(d: DType) -> Option<(usize, bool, bool)> {
    match d {
        DType::Q8_0 => Some((32, false, false)),
        DType::Q4_0 => Some((16, false, false)),
        // Q4_0's bytes; the nibbles index the levels' table.
        DType::IQ4NL => Some((16, false, false)),
        DType::Q4_1 => Some((16, true, false)),
        DType::Q5_0 => Some((16, false, true)),
        DType::Q5_1 => Some((16, true, true)),
        // Per block of 32 of the group (the group's scale and minimum once).
        DType::Q4_0G64 | DType::Q4_0G128 => Some((16, false, false)),
        DType::Q4_1G64 | DType::Q4_1G128 => Some((16, true, false)),
        _ => None,
    }
}

/// Byte offset of the quants in a [`Pack::Tile16`] group's block (after the scales,
/// minimums and fifth bits), and of the fifth bits' masks.
pub fn tile16_offsets(d: DType) -> (usize, usize) {
    let lanes = QTile::LANES;
    let (_, has_min, _) = parts(d).unwrap_or((0, false, false));
    let masks = 2 * lanes * if has_min { 2 } else { 1 };
    // Q5's fifth bits, or q8_0_2of4's pair masks ([`tile16_s24`]).
    let fifth = if matches!(d, DType::Q5_0 | DType::Q5_1) || d.sparse_keep().is_some() {
        64
    } else {
        0
    };
    (masks + fifth, masks)
}

/// Where [`Pack::Tile16`] keeps the fifth bit of quant `e` of row `c` (Q5_0, Q5_1):
/// the index of its u32 mask (the pair, `e / 2`) and the bit (its tile lane).
pub fn tile16_fifth(c: usize, e: usize) -> (usize, u32) {
    (e / 2, (2 * c + e % 2) as u32)
}

/// Whether [`Pack::Tile16`] can lay out a `[rows, k]` weight of dtype `d`.
pub fn tile16_packs(d: DType, rows: usize, k: usize) -> bool {
    (parts(d).is_some()
        || matches!(
            d,
            DType::Q4K | DType::Q5K | DType::Q6K | DType::Q3K | DType::Q2K | DType::IQ4XS
        )
        || d.sparse_keep().is_some())
        && rows.is_multiple_of(QTile::LANES)
        && k.is_multiple_of(d.block_len())
}

/// `q8_0_2of4` (and `q8_0_8of32`) in [`Pack::Tile16`], per block of 16 rows: their 16
/// scales (32 bytes), then per pair of quants `p` (elements `2p`, `2p + 1`) a u32 mask
/// whose bit `2c + j` says whether row `c` keeps element `2p + j` (64 bytes), then the
/// kept codes (256 bytes; 128 for `q8_0_8of32`) pair by pair, in each pair row by row:
/// the codes of a pair vector in lane order, so one expanding load by its mask gives
/// the vector: pair `p`'s codes start after the earlier pairs', at the sum of their
/// masks' popcounts. Rows keep at most 16 of 32 (two of every four with 2:4; 8 in
/// `q8_0_8of32`), so the codes fit; the tail of a tile whose rows keep fewer is zero.
pub fn tile16_s24(d: DType, rows: usize, k: usize, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let lanes = QTile::LANES;
    let blocks = k / 32;
    let (keep, bb) = match d.sparse_keep() {
        Some(keep) => (keep, d.block_bytes()),
        None => return Err(format!("{d} is not a sparse format")),
    };
    if !tile16_packs(d, rows, k) || bytes.len() != rows * blocks * bb {
        return Err(format!(
            "[{rows}, {k}] {d} ({} bytes) is not whole groups of {lanes} rows",
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(bytes.len());
    for g in 0..rows / lanes {
        for b in 0..blocks {
            let block = |r: usize| {
                let at = ((g * lanes + r) * blocks + b) * bb;
                &bytes[at..at + bb]
            };
            let masks: Vec<u32> = (0..lanes)
                .map(|r| {
                    let blk = block(r);
                    u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]])
                })
                .collect();
            for (r, m) in masks.iter().enumerate() {
                if m.count_ones() as usize > keep {
                    return Err(format!(
                        "{d} row {}: block {b} keeps {} of 32 (at most {keep})",
                        g * lanes + r,
                        m.count_ones()
                    ));
                }
            }
            let codes_at = out.len() + 2 * lanes + 64;
            for r in 0..lanes {
                out.extend_from_slice(&block(r)[0..2]);
            }
            for p in 0..16 {
                let mp =
                    (0..lanes).fold(0u32, |acc, c| acc | ((masks[c] >> (2 * p)) & 3) << (2 * c));
                out.extend(mp.to_le_bytes());
            }
            // Each row's codes in element order, taken pair by pair.
            let mut next = [6usize; QTile::LANES];
            for p in 0..16 {
                for (c, n) in next.iter_mut().enumerate() {
                    for j in 0..2 {
                        if (masks[c] >> (2 * p + j)) & 1 == 1 {
                            out.push(block(c)[*n]);
                            *n += 1;
                        }
                    }
                }
            }
            // Rows keeping fewer than `keep` leave the codes' tail zero.
            out.resize(codes_at + keep * lanes, 0);
        }
    }
    Ok(out)
}

/// Byte offset of scale byte `t` (0..12) of row `c` in a Q4_K [`Pack::Tile16`]
/// super-block group: 16 D, 16 Dmin (f16), then the 12 packed 6-bit scale bytes as 12
/// runs of the 16 rows' bytes, then the eight blocks' quants (256 bytes each, in
/// [`tile16_quant`]'s order) from byte 256.
pub fn tile16_q4k_scale(t: usize, c: usize) -> usize {
    64 + QTile::LANES * t + c
}

/// Byte offset of sub-block scale `s` (0..16: block `j`'s halves are `2 j`, `2 j + 1`)
/// of row `c` in a Q6_K [`Pack::Tile16`] super-block group: 16 D (f16), then the 16
/// i8 scales as 16 runs of the 16 rows' bytes, then the eight blocks of 32 from
/// [`TILE16_Q6K_QUANTS`], [`TILE16_Q6K_BLOCK`] bytes each: 256 bytes of low nibbles in
/// [`tile16_quant`]'s order, then 128 bytes of high bits ([`tile16_q6k_high`]).
pub fn tile16_q6k_scale(s: usize, c: usize) -> usize {
    2 * QTile::LANES + QTile::LANES * s + c
}

/// Byte offset of scale byte `t` (0..4 of `scales_l`) of row `c` in an IQ4_XS
/// [`Pack::Tile16`] super-block group: 16 D (f16), 16 `scales_h` (u16), then the 4
/// `scales_l` bytes as 4 runs of the 16 rows' bytes, then the eight blocks' nibbles
/// (256 bytes each, in [`tile16_quant`]'s order) from [`TILE16_IQ4XS_QUANTS`].
pub fn tile16_iq4xs_scale(t: usize, c: usize) -> usize {
    4 * QTile::LANES + QTile::LANES * t + c
}

/// Byte offset of block 0's quants in an IQ4_XS [`Pack::Tile16`] super-block group.
pub const TILE16_IQ4XS_QUANTS: usize = 8 * QTile::LANES;

/// Bytes of one block of 32 in a Q5_K [`Pack::Tile16`] super-block group (after Q4_K's
/// 256 bytes of D, Dmin and scale runs): the fifth bits' 16 masks (as Q5_0's,
/// [`tile16_fifth`]), then 256 bytes of nibbles in [`tile16_quant`]'s order.
pub const TILE16_Q5K_BLOCK: usize = 20 * QTile::LANES;

/// Byte offset of block 0's quants in a Q6_K [`Pack::Tile16`] super-block group.
pub const TILE16_Q6K_QUANTS: usize = 2 * QTile::LANES + 16 * QTile::LANES;

/// Bytes of one block of 32 in a Q6_K [`Pack::Tile16`] super-block group.
pub const TILE16_Q6K_BLOCK: usize = 24 * QTile::LANES;

/// Where a Q6_K [`Pack::Tile16`] block keeps the high two bits of quant `e` (0..32) of
/// row `c`: the byte offset from the block's start and the shift. Pair vector
/// `p = e / 2` (lane `2 c + e mod 2`) takes its bits from chunk `p mod 4` at shift
/// `2 ⌊p / 4⌋`, so one 32-byte load gives four pair vectors' high bits; the low
/// nibbles sit where [`tile16_quant`] puts Q4_0's.
pub fn tile16_q6k_high(c: usize, e: usize) -> (usize, u32) {
    let (at, shift) = tile16_crumb(c, e);
    (16 * QTile::LANES + at, shift)
}

/// Where four 32-byte chunks of 2-bit fields keep quant `e` (0..32) of row `c`: the
/// byte offset from the first chunk and the shift. Pair vector `p = e / 2` (lane
/// `2 c + e mod 2`) takes its bits from chunk `p mod 4` at shift `2 ⌊p / 4⌋` (Q6_K's
/// high bits, Q3_K's low bits, Q2_K's quants).
fn tile16_crumb(c: usize, e: usize) -> (usize, u32) {
    let (p, lane) = (e / 2, 2 * c + e % 2);
    (32 * (p % 4) + lane, 2 * (p / 4) as u32)
}

/// Byte offset of scale byte `t` (0..12, as stored: `llmc_ir::quant_k::q3k_scales`
/// decodes them) of row `c` in a Q3_K [`Pack::Tile16`] super-block group: 16 D (f16),
/// then the 12 bytes as 12 runs of the 16 rows' bytes, then the eight blocks of 32 from
/// [`TILE16_Q3K_QUANTS`], [`TILE16_Q3K_BLOCK`] bytes each: the high bits' 16 masks (as
/// Q5_0's fifth bits, [`tile16_fifth`]), then 128 bytes of low bits
/// ([`tile16_q3k_low`]).
pub fn tile16_q3k_scale(t: usize, c: usize) -> usize {
    2 * QTile::LANES + QTile::LANES * t + c
}

/// Byte offset of block 0 in a Q3_K [`Pack::Tile16`] super-block group.
pub const TILE16_Q3K_QUANTS: usize = 2 * QTile::LANES + 12 * QTile::LANES;

/// Bytes of one block of 32 in a Q3_K [`Pack::Tile16`] super-block group.
pub const TILE16_Q3K_BLOCK: usize = 12 * QTile::LANES;

/// Where a Q3_K [`Pack::Tile16`] block keeps the low two bits of quant `e` (0..32) of
/// row `c`: the byte offset from the block's start (after its 64 bytes of masks) and
/// the shift, in Q6_K's order for its high bits ([`tile16_q6k_high`]): pair vector
/// `p = e / 2` takes its bits from chunk `p mod 4` at shift `2 ⌊p / 4⌋`.
pub fn tile16_q3k_low(c: usize, e: usize) -> (usize, u32) {
    let (at, shift) = tile16_crumb(c, e);
    (4 * QTile::LANES + at, shift)
}

/// Byte offset of byte `s` (0..16: block `j`'s halves are `2 j`, `2 j + 1`; the scale
/// in the low nibble, the minimum in the high one) of row `c` in a Q2_K [`Pack::Tile16`]
/// super-block group: 16 D and 16 Dmin (f16), then the 16 bytes as 16 runs of the 16
/// rows' bytes, then the eight blocks of 32 from [`TILE16_Q2K_QUANTS`],
/// [`TILE16_Q2K_BLOCK`] bytes each ([`tile16_q2k_quant`]).
pub fn tile16_q2k_scale(s: usize, c: usize) -> usize {
    4 * QTile::LANES + QTile::LANES * s + c
}

/// Byte offset of block 0 in a Q2_K [`Pack::Tile16`] super-block group.
pub const TILE16_Q2K_QUANTS: usize = 4 * QTile::LANES + 16 * QTile::LANES;

/// Bytes of one block of 32 in a Q2_K [`Pack::Tile16`] super-block group.
pub const TILE16_Q2K_BLOCK: usize = 8 * QTile::LANES;

/// Where a Q2_K [`Pack::Tile16`] block keeps quant `e` (0..32) of row `c`: the byte
/// offset from the block's start and the shift, in the order of Q3_K's low bits
/// ([`tile16_q3k_low`]).
pub fn tile16_q2k_quant(c: usize, e: usize) -> (usize, u32) {
    tile16_crumb(c, e)
}

/// Where [`Pack::Tile16`] keeps quant `e` (0..32, activation order) of row `c` (0..16)
/// of a block: its byte offset from the start of the block's quants (after the
/// scales and minimums) and whether it is the high nibble (4-bit formats). For 4-bit
/// quants, 32-byte chunk `P` (0..8) holds tile vectors `P` (low nibbles) and `P + 8`
/// (high nibbles); byte `i` of a chunk is lane `i` of the vector's 32 i16: row
/// `i / 2`, quant `2 p + i mod 2` of pair `p`. Q8_0 has one chunk per pair.
pub fn tile16_quant(d: DType, c: usize, e: usize) -> (usize, bool) {
    let (p, lane) = (e / 2, 2 * c + e % 2);
    if d == DType::Q8_0 {
        (32 * p + lane, false)
    } else {
        (32 * (p % 8) + lane, p >= 8)
    }
}

/// A K-quant weight (`[rows, k]` of super-blocks of 256) in [`Pack::Tile16`]: per
/// group of 16 rows and super-block, a zeroed group of 16 super-blocks' bytes that
/// `place(group, r, block)` fills with row `r`'s super-block `block` (its D, scales and
/// quants where the format's layout puts them).
fn super_groups(
    d: DType,
    rows: usize,
    k: usize,
    bytes: &[u8],
    place: impl Fn(&mut [u8], usize, &[u8]),
) -> Result<Vec<u8>, String> {
    let lanes = QTile::LANES;
    let bb = d.block_bytes();
    if !tile16_packs(d, rows, k) || bytes.len() != rows * k / 256 * bb {
        return Err(format!(
            "[{rows}, {k}] {d} ({} bytes) is not whole groups of {lanes} rows",
            bytes.len()
        ));
    }
    let sbs = k / 256;
    let mut out = vec![0u8; bytes.len()];
    for (gi, group) in out.chunks_exact_mut(lanes * bb).enumerate() {
        let (g, sb) = (gi / sbs, gi % sbs);
        for r in 0..lanes {
            let at = ((g * lanes + r) * sbs + sb) * bb;
            place(group, r, &bytes[at..at + bb]);
        }
    }
    Ok(out)
}

/// Row `r`'s Q4_K / Q5_K super-block head (`D`, `Dmin`, the 12 scale bytes) into its
/// [`Pack::Tile16`] group `out` ([`tile16_q4k_scale`]).
fn k4_head(out: &mut [u8], r: usize, blk: &[u8]) {
    out[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
    out[32 + 2 * r..34 + 2 * r].copy_from_slice(&blk[2..4]);
    for t in 0..12 {
        out[tile16_q4k_scale(t, r)] = blk[4 + t];
    }
}

/// Rewrites the bytes of a weight `[rows, k]` of dtype `d` into `pack`.
pub fn pack(pack: Pack, d: DType, rows: usize, k: usize, bytes: &[u8]) -> Result<Vec<u8>, String> {
    match pack {
        Pack::Tile16 if d.sparse_keep().is_some() => tile16_s24(d, rows, k, bytes),
        Pack::Tile16 if d == DType::Q6K => super_groups(d, rows, k, bytes, |out, r, blk| {
            out[2 * r..2 * r + 2].copy_from_slice(&blk[208..210]);
            for s in 0..16 {
                out[tile16_q6k_scale(s, r)] = blk[192 + s];
            }
            // Block j (half h, quarter c): QFmt::Q6K's decode.
            for j in 0..8 {
                let (h, c) = (j / 4, j % 4);
                let b0 = TILE16_Q6K_QUANTS + TILE16_Q6K_BLOCK * j;
                for e in 0..32 {
                    let lo = (blk[64 * h + 32 * (c % 2) + e] >> (4 * (c / 2))) & 15;
                    let hi = (blk[128 + 32 * h + e] >> (2 * c)) & 3;
                    let (at, high) = tile16_quant(DType::Q4_0, r, e);
                    out[b0 + at] |= if high { lo << 4 } else { lo };
                    let (at, shift) = tile16_q6k_high(r, e);
                    out[b0 + at] |= hi << shift;
                }
            }
        }),
        Pack::Tile16 if d == DType::Q3K => super_groups(d, rows, k, bytes, |out, r, blk| {
            out[2 * r..2 * r + 2].copy_from_slice(&blk[108..110]);
            for t in 0..12 {
                out[tile16_q3k_scale(t, r)] = blk[96 + t];
            }
            // Block j (half h, shift 2 k): QFmt::Q3K's decode; the high bit is bit
            // 4 h + k of hmask[e].
            for j in 0..8 {
                let (h, kk) = (j / 4, j % 4);
                let b0 = TILE16_Q3K_QUANTS + TILE16_Q3K_BLOCK * j;
                for e in 0..32 {
                    let lo = (blk[32 + 32 * h + e] >> (2 * kk)) & 3;
                    let (at, shift) = tile16_q3k_low(r, e);
                    out[b0 + at] |= lo << shift;
                    if (blk[e] >> (4 * h + kk)) & 1 == 1 {
                        let (word, bit) = tile16_fifth(r, e);
                        out[b0 + 4 * word + bit as usize / 8] |= 1 << (bit % 8);
                    }
                }
            }
        }),
        Pack::Tile16 if d == DType::Q2K => super_groups(d, rows, k, bytes, |out, r, blk| {
            out[2 * r..2 * r + 2].copy_from_slice(&blk[80..82]);
            out[32 + 2 * r..34 + 2 * r].copy_from_slice(&blk[82..84]);
            for s in 0..16 {
                out[tile16_q2k_scale(s, r)] = blk[s];
            }
            // Block j (half h, shift 2 k): QFmt::Q2K's decode.
            for j in 0..8 {
                let (h, kk) = (j / 4, j % 4);
                let b0 = TILE16_Q2K_QUANTS + TILE16_Q2K_BLOCK * j;
                for e in 0..32 {
                    let q = (blk[16 + 32 * h + e] >> (2 * kk)) & 3;
                    let (at, shift) = tile16_q2k_quant(r, e);
                    out[b0 + at] |= q << shift;
                }
            }
        }),
        Pack::Tile16 if d == DType::IQ4XS => super_groups(d, rows, k, bytes, |out, r, blk| {
            out[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
            out[32 + 2 * r..34 + 2 * r].copy_from_slice(&blk[2..4]);
            for t in 0..4 {
                out[tile16_iq4xs_scale(t, r)] = blk[4 + t];
            }
            // Block j's quant e: byte 8 + 16 j + e mod 16, the high nibble from e = 16.
            for j in 0..8 {
                for e in 0..32 {
                    let q = (blk[8 + 16 * j + e % 16] >> (4 * (e / 16))) & 15;
                    let (at, high) = tile16_quant(DType::Q4_0, r, e);
                    out[TILE16_IQ4XS_QUANTS + 256 * j + at] |= if high { q << 4 } else { q };
                }
            }
        }),
        Pack::Tile16 if d == DType::Q5K => super_groups(d, rows, k, bytes, |out, r, blk| {
            k4_head(out, r, blk);
            // Block j's quant e: byte 32 (j / 2) + e of qs (from 48), nibble j mod 2;
            // its fifth bit, bit j of qh[e] (from 16).
            for j in 0..8 {
                let m0 = 256 + TILE16_Q5K_BLOCK * j;
                for e in 0..32 {
                    let q = (blk[48 + 32 * (j / 2) + e] >> (4 * (j % 2))) & 15;
                    let (at, high) = tile16_quant(DType::Q4_0, r, e);
                    out[m0 + 64 + at] |= if high { q << 4 } else { q };
                    if (blk[16 + e] >> j) & 1 == 1 {
                        let (word, bit) = tile16_fifth(r, e);
                        out[m0 + 4 * word + bit as usize / 8] |= 1 << (bit % 8);
                    }
                }
            }
        }),
        Pack::Tile16 if d == DType::Q4K => super_groups(d, rows, k, bytes, |out, r, blk| {
            k4_head(out, r, blk);
            // Block j's quant e: byte 32 (j / 2) + e of qs, nibble j mod 2.
            for j in 0..8 {
                for e in 0..32 {
                    let q = (blk[16 + 32 * (j / 2) + e] >> (4 * (j % 2))) & 15;
                    let (at, high) = tile16_quant(DType::Q4_0, r, e);
                    out[256 + 256 * j + at] |= if high { q << 4 } else { q };
                }
            }
        }),
        Pack::Tile16 => {
            let (qn, has_min, fifth) =
                parts(d).ok_or_else(|| format!("{d} cannot be packed in tiles of 16 rows"))?;
            let (bl, bb) = (d.block_len(), d.block_bytes());
            let lanes = QTile::LANES;
            if !tile16_packs(d, rows, k) {
                return Err(format!(
                    "[{rows}, {k}] {d} is not whole groups of {lanes} rows and blocks"
                ));
            }
            let blocks = k / bl;
            if bytes.len() != rows * blocks * bb {
                return Err(format!("{} bytes for [{rows}, {k}] {d}", bytes.len()));
            }
            let mut out = Vec::with_capacity(bytes.len());
            let qs_at = match d {
                DType::Q5_0 => 6,
                DType::Q5_1 => 8,
                DType::Q4_1 | DType::Q4_1G64 | DType::Q4_1G128 => 4,
                _ => 2,
            };
            // Blocks of 32 in a block of the format (a group's, for the int4 groups):
            // their quants follow one another after the group's scales.
            let subs = bl / 32;
            for g in 0..rows / lanes {
                for b in 0..blocks {
                    let block = |r: usize| {
                        let at = ((g * lanes + r) * blocks + b) * bb;
                        &bytes[at..at + bb]
                    };
                    for r in 0..lanes {
                        out.extend_from_slice(&block(r)[0..2]);
                    }
                    if has_min {
                        for r in 0..lanes {
                            out.extend_from_slice(&block(r)[2..4]);
                        }
                    }
                    let m0 = out.len();
                    if fifth {
                        out.resize(m0 + 64, 0);
                    }
                    let q0 = out.len();
                    out.resize(q0 + subs * lanes * qn, 0);
                    for (r, j) in (0..lanes).flat_map(|r| (0..subs).map(move |j| (r, j))) {
                        let blk = block(r);
                        let qs = &blk[qs_at + qn * j..];
                        let q0 = q0 + j * lanes * qn;
                        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                        let qh = if has_min {
                            u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]])
                        } else {
                            qh
                        };
                        for e in 0..32 {
                            let q = if d == DType::Q8_0 {
                                qs[e]
                            } else {
                                (qs[e % 16] >> (4 * (e / 16))) & 15
                            };
                            let (at, high) = tile16_quant(d, r, e);
                            out[q0 + at] |= if high { q << 4 } else { q };
                            if fifth && (qh >> e) & 1 == 1 {
                                let (word, bit) = tile16_fifth(r, e);
                                out[m0 + 4 * word + bit as usize / 8] |= 1 << (bit % 8);
                            }
                        }
                    }
                }
            }
            Ok(out)
        }
        Pack::Panels32 | Pack::Panels32Glu => {
            let glu = pack == Pack::Panels32Glu;
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
            let half = rows / 2;
            if glu && !half.is_multiple_of(PANEL / 2) {
                return Err(format!(
                    "[{rows}, {k}] {d}: the halves of a glu weight must be whole 16-row runs"
                ));
            }
            // Row j's panel and lane.
            let place = |j: usize| {
                if !glu {
                    (j / PANEL, j % PANEL)
                } else if j < half {
                    (j / (PANEL / 2), j % (PANEL / 2))
                } else {
                    (
                        (j - half) / (PANEL / 2),
                        PANEL / 2 + (j - half) % (PANEL / 2),
                    )
                }
            };
            let mut out = vec![0u8; bytes.len()];
            for j in 0..rows {
                let (panel, lane) = place(j);
                for p in 0..k {
                    let to = ((panel * k + p) * PANEL + lane) * es;
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

    /// Packs 32 rows of two super-blocks of `d` (arbitrary bytes from `seed`), checks
    /// the size, then calls `check(raw, group, c, r)` with each row's raw super-block,
    /// its packed group and its lane; fewer rows than a group must be refused.
    fn each_packed_super_block(d: DType, seed: u64, check: impl Fn(&[u8], &[u8], usize, usize)) {
        let (rows, k, bb) = (32usize, 512usize, d.block_bytes());
        let mut x = seed;
        let bytes: Vec<u8> = (0..rows * k / 256 * bb)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let p = pack(Pack::Tile16, d, rows, k, &bytes).unwrap();
        assert_eq!(p.len(), bytes.len());
        let lanes = QTile::LANES;
        for r in 0..rows {
            for sb in 0..k / 256 {
                let raw = &bytes[(r * k / 256 + sb) * bb..][..bb];
                let g = &p[((r / lanes) * (k / 256) + sb) * lanes * bb..][..lanes * bb];
                check(raw, g, r % lanes, r);
            }
        }
        assert!(pack(Pack::Tile16, d, 8, 256, &bytes[..8 * bb]).is_err());
    }

    #[test]
    fn tile16_q6k_keeps_every_quant_scale_and_d() {
        // Every quant, sub-block scale and D found where the layout's functions say.
        each_packed_super_block(DType::Q6K, 0x2545_f491_4f6c_dd1d, |raw, g, c, r| {
            assert_eq!(&g[2 * c..2 * c + 2], &raw[208..210]);
            for s in 0..16 {
                assert_eq!(g[tile16_q6k_scale(s, c)], raw[192 + s]);
            }
            for j in 0..8 {
                let (h, q) = (j / 4, j % 4);
                let blk = &g[TILE16_Q6K_QUANTS + TILE16_Q6K_BLOCK * j..];
                for e in 0..32 {
                    let lo = (raw[64 * h + 32 * (q % 2) + e] >> (4 * (q / 2))) & 15;
                    let hi = (raw[128 + 32 * h + e] >> (2 * q)) & 3;
                    let (at, high) = tile16_quant(DType::Q4_0, c, e);
                    let nib = if high { blk[at] >> 4 } else { blk[at] & 15 };
                    let (at, shift) = tile16_q6k_high(c, e);
                    assert_eq!((nib, (blk[at] >> shift) & 3), (lo, hi), "row {r} e {e}");
                }
            }
        });
    }

    #[test]
    fn tile16_q3k_keeps_every_quant_high_bit_scale_and_d() {
        // Every quant's low bits and high bit, the 12 scale bytes and D found where the
        // layout's functions say.
        each_packed_super_block(DType::Q3K, 0x9e37_79b9_7f4a_7c15, |raw, g, c, r| {
            assert_eq!(&g[2 * c..2 * c + 2], &raw[108..110]);
            for t in 0..12 {
                assert_eq!(g[tile16_q3k_scale(t, c)], raw[96 + t]);
            }
            for j in 0..8 {
                let (h, q) = (j / 4, j % 4);
                let blk = &g[TILE16_Q3K_QUANTS + TILE16_Q3K_BLOCK * j..];
                for e in 0..32 {
                    let lo = (raw[32 + 32 * h + e] >> (2 * q)) & 3;
                    let hi = (raw[e] >> (4 * h + q)) & 1;
                    let (at, shift) = tile16_q3k_low(c, e);
                    let (word, bit) = tile16_fifth(c, e);
                    let mask = u32::from_le_bytes(blk[4 * word..4 * word + 4].try_into().unwrap());
                    let got = ((blk[at] >> shift) & 3, (mask >> bit) as u8 & 1);
                    assert_eq!(got, (lo, hi), "row {r} e {e}");
                }
            }
        });
    }

    #[test]
    fn tile16_q2k_keeps_every_quant_scale_minimum_d_and_dmin() {
        each_packed_super_block(DType::Q2K, 0x853c_49e6_748f_ea9b, |raw, g, c, r| {
            assert_eq!(&g[2 * c..2 * c + 2], &raw[80..82]);
            assert_eq!(&g[32 + 2 * c..34 + 2 * c], &raw[82..84]);
            for s in 0..16 {
                assert_eq!(g[tile16_q2k_scale(s, c)], raw[s]);
            }
            for j in 0..8 {
                let (h, q) = (j / 4, j % 4);
                let blk = &g[TILE16_Q2K_QUANTS + TILE16_Q2K_BLOCK * j..];
                for e in 0..32 {
                    let want = (raw[16 + 32 * h + e] >> (2 * q)) & 3;
                    let (at, shift) = tile16_q2k_quant(c, e);
                    assert_eq!((blk[at] >> shift) & 3, want, "row {r} e {e}");
                }
            }
        });
    }

    #[test]
    fn tile16_puts_pairs_of_sixteen_rows_side_by_side() {
        // Q4_1, 16 rows of one block: row r's block = [d=r,r][m=50+r,50+r][quant e of
        // row r = (r + e) mod 16].
        let mut bytes = Vec::new();
        for r in 0..16u8 {
            bytes.extend([r, r, 50 + r, 50 + r]);
            bytes.extend((0..16).map(|i| ((r + i) % 16) | (((r + i + 16) % 16) << 4)));
        }
        let p = pack(Pack::Tile16, DType::Q4_1, 16, 32, &bytes).unwrap();
        assert_eq!(p.len(), bytes.len());
        assert_eq!(&p[0..4], &[0, 0, 1, 1]);
        assert_eq!(&p[32..36], &[50, 50, 51, 51]);
        // Pair p = 9 (quants 18, 19) of row 5: chunk 1, lanes 10 and 11, high nibbles.
        assert_eq!(p[64 + 32 + 10] >> 4, (5 + 18) % 16);
        assert_eq!(p[64 + 32 + 11] >> 4, (5 + 19) % 16);
        // Pair 1 (quants 2, 3) of row 5: the same bytes' low nibbles.
        assert_eq!(p[64 + 32 + 10] & 15, 5 + 2);
        // Q8_0: pair p of row c at 32 p + 2 c.
        let q8: Vec<u8> = (0..16u8)
            .flat_map(|r| [1u8, 0].into_iter().chain((0..32).map(move |e| r * 32 + e)))
            .collect();
        let p = pack(Pack::Tile16, DType::Q8_0, 16, 32, &q8).unwrap();
        assert_eq!(p[32 + 32 * 3 + 2 * 7 + 1], 7 * 32 + 7);
        // Q5_0: quant e of row r has its fifth bit set when e is odd; row r's nibbles
        // are r.
        let q5: Vec<u8> = (0..16u8)
            .flat_map(|r| {
                [2u8, 0, 0xaa, 0xaa, 0xaa, 0xaa]
                    .into_iter()
                    .chain(std::iter::repeat_n(r | (r << 4), 16))
            })
            .collect();
        let p = pack(Pack::Tile16, DType::Q5_0, 16, 32, &q5).unwrap();
        assert_eq!(p.len(), q5.len());
        assert_eq!(tile16_offsets(DType::Q5_0), (96, 32));
        // Pair 3's mask: lanes 2c + 1 (the odd quants) set.
        let mask = u32::from_le_bytes([p[32 + 12], p[33 + 12], p[34 + 12], p[35 + 12]]);
        assert_eq!(mask, 0xaaaa_aaaa);
        assert_eq!(p[96 + 32 + 2 * 6] & 15, 6);
        // IQ4_NL: Q4_0's bytes (the nibbles index its levels), packed the same.
        let q4: Vec<u8> = (0..16u8)
            .flat_map(|r| [r, 0].into_iter().chain((0..16).map(move |i| r ^ (i * 17))))
            .collect();
        assert_eq!(
            pack(Pack::Tile16, DType::IQ4NL, 16, 32, &q4).unwrap(),
            pack(Pack::Tile16, DType::Q4_0, 16, 32, &q4).unwrap()
        );
        // IQ4_XS, 16 rows of one super-block: row r's D = [r, 0], scales_h = [r, 1],
        // scales_l = [r, 2r, 3r, 4r], quant e of block j = (r + j + e) mod 16.
        let xs: Vec<u8> = (0..16u8)
            .flat_map(|r| {
                let head = [r, 0, r, 1, r, 2 * r, 3 * r, 4 * r];
                let qs = (0..8u8).flat_map(move |j| {
                    (0..16u8).map(move |i| ((r + j + i) % 16) | (((r + j + i + 16) % 16) << 4))
                });
                head.into_iter().chain(qs)
            })
            .collect();
        let p = pack(Pack::Tile16, DType::IQ4XS, 16, 256, &xs).unwrap();
        assert_eq!(p.len(), xs.len());
        assert_eq!(&p[2 * 5..2 * 5 + 2], &[5, 0]);
        assert_eq!(&p[32 + 2 * 5..32 + 2 * 5 + 2], &[5, 1]);
        assert_eq!(p[tile16_iq4xs_scale(3, 5)], 20);
        // Block 2, quant 19 of row 5: pair 9, chunk 1, lane 11, high nibble.
        let (at, high) = tile16_quant(DType::Q4_0, 5, 19);
        assert!(high);
        assert_eq!(
            p[TILE16_IQ4XS_QUANTS + 256 * 2 + at] >> 4,
            (5 + 2 + 19) % 16
        );
        assert!(pack(Pack::Tile16, DType::Q4_1, 8, 32, &bytes[..160]).is_err());
        assert!(pack(Pack::Tile16, DType::F32, 16, 32, &bytes).is_err());
    }

    #[test]
    fn tile16_s24_puts_a_pairs_kept_codes_in_lane_order() {
        // 16 rows of one block keeping elements 0 and 1 of every four; row r's codes
        // are 16 r + i.
        let mut bytes = Vec::new();
        for r in 0..16u8 {
            bytes.extend([r, 0]);
            bytes.extend(0x3333_3333u32.to_le_bytes());
            bytes.extend((0..16).map(|i| 16 * r + i));
        }
        let p = pack(Pack::Tile16, DType::Q8_0S24, 16, 32, &bytes).unwrap();
        assert_eq!(p.len(), bytes.len());
        assert_eq!(&p[0..4], &[0, 0, 1, 0]);
        let mask = |q: usize| {
            u32::from_le_bytes([p[32 + 4 * q], p[33 + 4 * q], p[34 + 4 * q], p[35 + 4 * q]])
        };
        // Pair 0 (elements 0, 1): every lane kept; pair 1 (elements 2, 3): none.
        assert_eq!((mask(0), mask(1)), (u32::MAX, 0));
        // Pair 0's codes: row c's first two; pair 2's from byte 32: row c's next two.
        assert_eq!(&p[96 + 10..96 + 12], &[16 * 5, 16 * 5 + 1]);
        assert_eq!(&p[96 + 32 + 10..96 + 32 + 12], &[16 * 5 + 2, 16 * 5 + 3]);
        // A row keeping three of a four is refused.
        bytes[2] = 0x37;
        assert!(pack(Pack::Tile16, DType::Q8_0S24, 16, 32, &bytes).is_err());
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
