//! Lowering of the tile form of the quantized linear ([`QUnpack`], [`QTile`]): 16
//! weight rows decoded once into vectors whose lanes are the weight rows, so a block
//! sum is one multiply-add per pair of quants per activation row, with no horizontal
//! reduction (the [`QDot`] form reduces a quad's partial sums with shuffles per block
//! pair). With AVX-512 (F/BW/VL) a tile row is one 512-bit vector and VNNI's
//! `vpdpwssd` takes the activation pair as a broadcast memory operand; elsewhere the
//! same sums run on 8 lanes (`vpmaddwd` with AVX2, portable vector IR otherwise). With
//! int8 activations (`act_bits = 8`) a packed weight's tile holds bytes instead, four
//! quants per lane, for u8·s8 products (`vpdpbusd`, or `vpmaddubsw` without VNNI; see
//! [`Lowering::byte_tile`]). The float arithmetic is [`QDot`]'s, bit for bit, so a
//! row's result does not depend on which form computed it.

use super::super::{llvm_err, Frame, Lowering, R};
use inkwell::types::{BasicTypeEnum, IntType, VectorType};
use inkwell::values::{BasicValue, IntValue, PointerValue, VectorValue};
use llmc_kernels::{QDot, QTile, QUnpack};

/// Byte offsets of the quants and of the fifth bits' masks in a `Tile16` block
/// group of `fmt`.
fn tile16_offsets(fmt: llmc_kernels::QFmt) -> R<(i64, i64)> {
    use llmc_kernels::QFmt;
    if !fmt.tile16()
        || matches!(
            fmt,
            QFmt::Q4K | QFmt::Q5K | QFmt::Q6K | QFmt::Q3K | QFmt::Q2K | QFmt::IQ4XS
        )
    {
        return Err(llvm_err(format!("{fmt:?} has no block-wise Tile16 layout")));
    }
    let (qs, masks) = llmc_kernels::templates::pack::tile16_offsets(fmt.dtype());
    Ok((qs as i64, masks as i64))
}

/// Where a [`QTile`] reads besides its tile: the packed weight and its row offset
/// (direct), and the chains' state local and this statement's offset in it (slices).
#[derive(Clone, Copy)]
struct TileSrc<'ctx> {
    wsrc: Option<(PointerValue<'ctx>, IntValue<'ctx>)>,
    state: Option<(PointerValue<'ctx>, IntValue<'ctx>)>,
}

/// The byte shuffle from two `n`-byte vectors of pair-ordered bytes (row `c`'s two
/// quants at bytes `2c`, `2c + 1` of each) to a quad vector: byte `4c + k` takes the
/// first vector's byte `2c + k` (k < 2), else the second's byte `2c + k - 2` (at
/// `n + ...` in the shuffle's second operand).
fn quad_interleave(n: u64) -> Vec<u64> {
    (0..2 * n)
        .map(|i| {
            let (c, k) = (i / 4, i % 4);
            if k < 2 {
                2 * c + k
            } else {
                n + 2 * c + k - 2
            }
        })
        .collect()
}

/// Weight rows per tile.
const LANES: u32 = QTile::LANES as u32;

/// A block decoded straight from a packed weight: its pair (or quad) vectors, scales
/// and minimums (Q2_K: the first half's), and Q2_K's second half's minimum and the
/// halves' 4-bit scales (i32 lanes; see [`Lowering::q2k_direct`]).
type Decoded<'ctx> = (
    Vec<VectorValue<'ctx>>,
    VectorValue<'ctx>,
    Option<VectorValue<'ctx>>,
    Option<[VectorValue<'ctx>; 3]>,
);

/// Bytes of one block's quants in a tile (16 pairs of 16 rows' two i16).
const BLOCK_TILE_BYTES: i64 = 32 * QTile::LANES as i64 * 2;

/// Bytes of one block's scales and minimums in a tile.
const BLOCK_SCALE_BYTES: i64 = 2 * QTile::LANES as i64 * 4;

/// Bytes of one block's quants in a byte tile (8 quads of 16 rows' four u8).
const BLOCK_BYTE_TILE_BYTES: i64 = 32 * QTile::LANES as i64;

impl<'ctx> Lowering<'ctx, '_> {
    /// Whether a packed tile of `fmt` read with int8 activations (`act8`) is laid out
    /// as bytes for `vpdpbusd` (AVX-512 VNNI; unsigned quants, which its u8 operand
    /// takes as they are): vector `p` of block `b` at byte `(8 b + p) · 64` holds in
    /// lane `c` row `c`'s quants `4p .. 4p + 4`, one u8 each.
    fn byte_tile(&self, fmt: llmc_kernels::QFmt, packed: bool, act8: bool) -> bool {
        let vnni = self.target.avx512() && self.target.vnni();
        // Without VNNI the products are vpmaddubsw's, whose i16 pair sums saturate
        // above 32767: only quants up to 31 (the 4- and 5-bit formats) stay exact.
        // (Packed Q8_0 on int8 activations holds q + 128, up to 255: VNNI only.)
        // (Q2_K's two minimums a block take the pair tile.)
        let fits =
            (fmt.has_min() && !fmt.split_mins()) || (fmt == llmc_kernels::QFmt::Q8_0 && vnni);
        act8 && packed && fits && self.target.avx2()
    }

    /// The 16 pair vectors of a block (`<32 x i16>`: lane `c` holds row `c`'s quants
    /// `2p, 2p + 1`, each below 256) as the 8 quad vectors of a byte tile.
    fn pairs_to_quads(
        &self,
        f: &Frame<'ctx>,
        pairs: &[VectorValue<'ctx>],
    ) -> R<Vec<VectorValue<'ctx>>> {
        let it = self.it;
        // 2 lanes elements per pair vector (16 or 8 lanes).
        let n = pairs.first().map_or(32, |p| p.get_type().get_size()) as u64;
        let vb = it.i8.vec_type(n as u32);
        let narrow = pairs
            .iter()
            .map(|p| f.b.build_int_truncate(*p, vb, "").map_err(llvm_err))
            .collect::<R<Vec<_>>>()?;
        let mask = quad_interleave(n);
        (0..pairs.len() / 2)
            .map(|q| self.shuffle(f, narrow[2 * q], narrow[2 * q + 1], &mask))
            .collect()
    }

    /// `acc + Σ quads`: lane `l` adds the four products of `w`'s u8 and `x`'s s8 bytes
    /// (16 or 8 i32 lanes), exactly: `vpdpbusd` with AVX-512 VNNI, else `vpmaddubsw`
    /// (exact while `w`'s bytes stay below 129: [`Self::byte_tile`]) and `vpmaddwd`
    /// by ones.
    fn quad_dot(
        &self,
        f: &Frame<'ctx>,
        acc: VectorValue<'ctx>,
        w: VectorValue<'ctx>,
        x: VectorValue<'ctx>,
    ) -> R<VectorValue<'ctx>> {
        let lanes = acc.get_type().get_size();
        if !(self.target.avx512() && self.target.vnni()) {
            let it = self.it;
            let e = llvm_err;
            let (ubs, wd) = if lanes == 16 {
                (
                    "llvm.x86.avx512.pmaddubs.w.512",
                    "llvm.x86.avx512.pmaddw.d.512",
                )
            } else {
                ("llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd")
            };
            let vb = it.i8.vec_type(4 * lanes);
            let b = &f.b;
            let wb = b.build_bit_cast(w, vb, "").map_err(e)?.into_vector_value();
            let xb = b.build_bit_cast(x, vb, "").map_err(e)?.into_vector_value();
            let pairs = self.x86(f, ubs, &[wb, xb])?.into_vector_value();
            let ones =
                VectorType::const_vector(&vec![it.i16.const_int(1, false); 2 * lanes as usize]);
            let quads = self.x86(f, wd, &[pairs, ones])?.into_vector_value();
            return f.b.build_int_add(acc, quads, "").map_err(e);
        }
        self.vnni(f, "llvm.x86.avx512.vpdpbusd.512", [acc, w, x])
    }

    /// A VNNI dot-product intrinsic `name(acc, a, b)`, each operand bit-cast to the
    /// type LLVM declares for it.
    fn vnni(
        &self,
        f: &Frame<'ctx>,
        name: &str,
        ops: [VectorValue<'ctx>; 3],
    ) -> R<VectorValue<'ctx>> {
        let func = self
            .it
            .intrinsic(self.module, name, &[])
            .ok_or_else(|| llvm_err(name))?;
        let params = func.get_type().get_param_types();
        let b = &f.b;
        let mut args = Vec::new();
        for (v, ty) in ops.into_iter().zip(params) {
            let ty: BasicTypeEnum = ty
                .try_into()
                .map_err(|_| llvm_err(format!("{name} operand")))?;
            args.push(b.build_bit_cast(v, ty, "").map_err(llvm_err)?.into());
        }
        b.build_call(func, &args, "")
            .map_err(llvm_err)?
            .try_as_basic_value()
            .basic()
            .map(|v| v.into_vector_value())
            .ok_or_else(|| llvm_err(format!("{name} returned nothing")))
    }

    /// The buffer pointer of `id`, or an error naming it.
    pub(in super::super) fn tile_buf(
        &self,
        f: &Frame<'ctx>,
        id: llmc_kernels::BufId,
    ) -> R<PointerValue<'ctx>> {
        f.bufs.get(&id).copied().ok_or_else(|| {
            self.err(format!(
                "buffer %{} is not available here",
                self.k.buf(id).name
            ))
        })
    }

    /// Stores `v` at byte `off` of `base` (unaligned).
    fn tile_store(
        &self,
        f: &Frame<'ctx>,
        base: PointerValue<'ctx>,
        off: IntValue<'ctx>,
        v: impl BasicValue<'ctx>,
    ) -> R<()> {
        // SAFETY: offsets stay inside the tile locals, sized by QTile::tile_len /
        // scales_len for the statement's block count (the loop-IR interpreter checks
        // the same indices in tests).
        let p = unsafe { f.b.build_gep(self.it.i8, base, &[off], "") }.map_err(llvm_err)?;
        let st = f.b.build_store(p, v).map_err(llvm_err)?;
        st.set_alignment(4).map_err(llvm_err)?;
        Ok(())
    }

    /// `i64` constant.
    fn tc(&self, k: i64) -> IntValue<'ctx> {
        self.it.i64.const_int(k as u64, true)
    }

    /// Emits [`QUnpack`]: per block, the 16 rows' quants as in [`Self::qdot_avx2`]
    /// (widened to i16), transposed so that lane `c` of vector `p` holds row `c`'s pair
    /// `p`, and the rows' scales and minimums as two f32 vectors.
    pub(in super::super) fn qunpack(&mut self, f: &mut Frame<'ctx>, u: &QUnpack) -> R<()> {
        if u.packed {
            return self.qunpack_packed(f, u);
        }
        if !self.target.avx2() {
            // Its QTile reads the weights as stored (see Self::qtile).
            return Ok(());
        }
        let w_off = self.expr(f, &u.w_off)?.0.into_int_value();
        let w = self.tile_buf(f, u.w)?;
        let tile = self.tile_buf(f, u.tile)?;
        let scales = self.tile_buf(f, u.scales)?;
        // K-quant super-blocks: eight blocks per trip, so each sub-block index is a
        // constant and its scale decode folds.
        let per = if u.fmt.sub_blocks() == 8 { 8 } else { 2 };
        let trips = u.blocks / per;
        let lp = self.counted_loop(f, "qunpack", "qub", trips as u64)?;
        let blk0 =
            f.b.build_int_mul(lp.index, self.tc(per), "blk")
                .map_err(llvm_err)?;
        for p in 0..per {
            let tblk = f.b.build_int_add(blk0, self.tc(p), "").map_err(llvm_err)?;
            let blk =
                f.b.build_int_add(tblk, self.tc(u.first_block), "")
                    .map_err(llvm_err)?;
            self.unpack_block(f, u, (w, tile, scales), w_off, (blk, tblk), p % 2 == 1)?;
        }
        self.close_loop(f, &lp)?;
        for b in trips * per..u.blocks {
            let blk = (self.tc(u.first_block + b), self.tc(b));
            self.unpack_block(f, u, (w, tile, scales), w_off, blk, b % 2 == 1)?;
        }
        Ok(())
    }

    /// A packed [`QUnpack`] (the `Tile16` layout, any target): per block, the 16
    /// scales (and minimums) widened to f32, and per 32-byte chunk of quants one
    /// widening load: Q8_0's sign-extended pair vector, or a 4-bit chunk's two (the
    /// low nibbles' and the high nibbles').
    fn qunpack_packed(&mut self, f: &mut Frame<'ctx>, u: &QUnpack) -> R<()> {
        let it = self.it;
        let e = llvm_err;
        let w_off = self.expr(f, &u.w_off)?.0.into_int_value();
        let w = self.tile_buf(f, u.w)?;
        let tile = self.tile_buf(f, u.tile)?;
        let scales = self.tile_buf(f, u.scales)?;
        let q8 = u.fmt == llmc_kernels::QFmt::Q8_0;
        let v16f = it.f32.vec_type(LANES);
        let v32b = it.i8.vec_type(32);
        let v32w = it.i16.vec_type(32);
        let splat = |k: u64| VectorType::const_vector(&[it.i16.const_int(k, false); 32]);
        let lp = self.counted_loop(f, "qunpack", "qub", u.blocks as u64)?;
        let blk = lp.index;
        let wblk =
            f.b.build_int_add(blk, self.tc(u.first_block), "")
                .map_err(e)?;
        let (d, m, qs, masks) = self.packed_head(f, u.fmt, (w, w_off), wblk, 0, LANES, true)?;
        let s24 = u.fmt.sparse();
        let offset8 = q8 && u.act8;
        let m = match m {
            Some(m) => m,
            None if offset8 => self.offset8_min(f, d, LANES)?,
            None => v16f.const_zero(),
        };
        let sb =
            f.b.build_int_mul(blk, self.tc(BLOCK_SCALE_BYTES), "")
                .map_err(e)?;
        self.tile_store(f, scales, sb, d)?;
        let mb = f.b.build_int_add(sb, self.tc(64), "").map_err(e)?;
        self.tile_store(f, scales, mb, m)?;
        let bytes = self.byte_tile(u.fmt, true, u.act8);
        let tb =
            f.b.build_int_mul(
                blk,
                self.tc(if bytes {
                    BLOCK_BYTE_TILE_BYTES
                } else {
                    BLOCK_TILE_BYTES
                }),
                "",
            )
            .map_err(e)?;
        // A byte tile of plain nibbles or bytes goes straight to its quads, and so does
        // a Q5 one without AVX-512 (its fifth bits set on the bytes).
        let q5_bytes = bytes && u.fmt.tile_fifth() && !self.target.avx512();
        let direct_quads = bytes && !s24 && (!u.fmt.tile_fifth() || q5_bytes);
        let q6 = u.fmt == llmc_kernels::QFmt::Q6K;
        let q3 = u.fmt == llmc_kernels::QFmt::Q3K;
        let chunks = if s24 || direct_quads || q6 || q3 {
            0
        } else if q8 {
            16
        } else {
            8
        };
        let mut pairs = if s24 {
            self.s24_pairs(f, w, masks, 0, LANES)?
        } else if q6 {
            self.q6k_pairs(f, w, qs, masks, LANES)?
        } else if q3 {
            self.q3k_pairs(f, w, qs, masks, 0, LANES)?
        } else {
            vec![v32w.const_zero(); 16]
        };
        for c in 0..chunks {
            let at = f.b.build_int_add(qs, self.tc(32 * c), "").map_err(e)?;
            let raw = self.qdot_load(f, v32b.into(), w, at)?.into_vector_value();
            let b = &f.b;
            if q8 {
                let v = b.build_int_s_extend(raw, v32w, "").map_err(e)?;
                pairs[c as usize] = if offset8 {
                    b.build_int_add(v, splat(128), "u8").map_err(e)?
                } else {
                    v
                };
                continue;
            }
            let (lo, hi) = self.nibble_pairs(f, u.fmt, raw, v32w)?;
            pairs[c as usize] = self.tile16_fifth(f, u.fmt, w, masks, c, 0, LANES, lo)?;
            pairs[c as usize + 8] = self.tile16_fifth(f, u.fmt, w, masks, c + 8, 0, LANES, hi)?;
        }
        if bytes {
            let quads = if q5_bytes {
                self.q5_chunk_quads(f, w, qs, masks, 0, LANES)?
            } else if direct_quads {
                self.chunk_quads(f, u.fmt, w, qs, LANES)?
            } else {
                self.pairs_to_quads(f, &pairs)?
            };
            for (q, v) in quads.into_iter().enumerate() {
                let out =
                    f.b.build_int_add(tb, self.tc(64 * q as i64), "")
                        .map_err(e)?;
                self.tile_store(f, tile, out, v)?;
            }
        } else {
            for (p, v) in pairs.into_iter().enumerate() {
                let out =
                    f.b.build_int_add(tb, self.tc(64 * p as i64), "")
                        .map_err(e)?;
                self.tile_store(f, tile, out, v)?;
            }
        }
        self.close_loop(f, &lp)?;
        Ok(())
    }

    /// The rows' block `blk` of [`Self::qunpack`]'s 16 rows into tile block `tblk`.
    fn unpack_block(
        &self,
        f: &Frame<'ctx>,
        u: &QUnpack,
        (w, tile, scales): (PointerValue<'ctx>, PointerValue<'ctx>, PointerValue<'ctx>),
        w_off: IntValue<'ctx>,
        (blk, tblk): (IntValue<'ctx>, IntValue<'ctx>),
        odd: bool,
    ) -> R<()> {
        let it = self.it;
        let e = llvm_err;
        let v16f = it.f32.vec_type(LANES);
        let v16i = it.i32.vec_type(LANES);
        let mut rows: Vec<VectorValue<'ctx>> = Vec::with_capacity(16);
        let mut ds = v16f.get_undef();
        let mut ms = v16f.get_undef();
        for c in 0..LANES {
            let off =
                f.b.build_int_add(w_off, self.tc(c as i64 * u.row_bytes), "")
                    .map_err(e)?;
            let (lo, hi, dm) = self.qdot_avx2_weights(f, u.fmt, w, off, blk, odd)?;
            let all = self.shuffle(f, lo, hi, &(0..32).collect::<Vec<u64>>())?;
            let b = &f.b;
            rows.push(
                b.build_bit_cast(all, v16i, "")
                    .map_err(e)?
                    .into_vector_value(),
            );
            let lane = it.i32.const_int(c as u64, false);
            let d = b
                .build_extract_element(dm, it.i32.const_zero(), "")
                .map_err(e)?;
            let m = b
                .build_extract_element(dm, it.i32.const_int(1, false), "")
                .map_err(e)?;
            ds = b.build_insert_element(ds, d, lane, "").map_err(e)?;
            ms = b.build_insert_element(ms, m, lane, "").map_err(e)?;
        }
        // A 16 x 16 transpose of 32-bit pairs: swap the off-diagonal h-blocks of every
        // 2h x 2h block, h = 8, 4, 2, 1.
        for h in [8u64, 4, 2, 1] {
            for i in 0..16usize {
                if i as u64 & h != 0 {
                    continue;
                }
                let j = i + h as usize;
                let (a, b) = (rows[i], rows[j]);
                let lo: Vec<u64> = (0..16)
                    .map(|l| if l & h == 0 { l } else { 16 + l - h })
                    .collect();
                let hi: Vec<u64> = (0..16)
                    .map(|l| if l & h == 0 { l + h } else { 16 + l })
                    .collect();
                rows[i] = self.shuffle(f, a, b, &lo)?;
                rows[j] = self.shuffle(f, a, b, &hi)?;
            }
        }
        let base =
            f.b.build_int_mul(tblk, self.tc(BLOCK_TILE_BYTES), "")
                .map_err(e)?;
        for (p, v) in rows.iter().enumerate() {
            let at =
                f.b.build_int_add(base, self.tc(p as i64 * 64), "")
                    .map_err(e)?;
            self.tile_store(f, tile, at, *v)?;
        }
        let sb =
            f.b.build_int_mul(tblk, self.tc(BLOCK_SCALE_BYTES), "")
                .map_err(e)?;
        self.tile_store(f, scales, sb, ds)?;
        let mb = f.b.build_int_add(sb, self.tc(64), "").map_err(e)?;
        self.tile_store(f, scales, mb, ms)?;
        Ok(())
    }

    /// Emits [`QTile`]: 16 lanes at once with AVX-512 (every row in one pass), else 8
    /// lanes and two rows per pass (AVX2's 16 registers).
    pub(in super::super) fn qtile(&mut self, f: &mut Frame<'ctx>, t: &QTile) -> R<()> {
        let last = t.first_block + t.blocks == t.row_blocks;
        if !self.target.avx2() && !t.packed {
            // The portable QDot keeps lane-wise partial sums (other rounding than
            // QTile's): one QDot per weight row keeps a row's result independent of
            // its batch there too (the whole row, in the last slice's statement).
            if !last {
                return Ok(());
            }
            for c in 0..QTile::LANES {
                let q = QDot {
                    fmt: t.fmt,
                    w: t.w,
                    w_off: t.w_off.clone() + (c as i64 * t.row_bytes),
                    blocks: t.row_blocks,
                    xq: t.xq,
                    xd: t.xd,
                    xs: t.xs,
                    x_blk: t.x_blk.clone(),
                    x_sc: t.x_sc.clone(),
                    accs: (0..t.x_blk.len())
                        .map(|i| t.accs[i * QTile::LANES + c])
                        .collect(),
                };
                self.qdot(f, &q)?;
            }
            return Ok(());
        }
        let mut rows = Vec::new();
        for (xb, sc) in t.x_blk.iter().zip(&t.x_sc) {
            let xb = self.expr(f, xb)?.0.into_int_value();
            let sc = self.expr(f, sc)?.0.into_int_value();
            rows.push((xb, sc));
        }
        // (8 lanes with VNNI's 256-bit vpdpwssd measured 0.86x the 16 on the Xeon.)
        let (lanes, per_pass) = if self.target.avx512() {
            (16, QDot::QUAD)
        } else {
            (8, 2)
        };
        // (Below AVX2 only packed weights come here: `pair_dot`'s portable form.)
        let wsrc = if t.direct {
            let w_off = self.expr(f, &t.w_off)?.0.into_int_value();
            Some((self.tile_buf(f, t.w)?, w_off))
        } else {
            None
        };
        let state = match &t.state {
            Some((st, off)) => {
                let off = self.expr(f, off)?.0.into_int_value();
                Some((self.tile_buf(f, *st)?, off))
            }
            None => None,
        };
        let src = TileSrc { wsrc, state };
        let halves: Vec<u32> = (0..LANES).step_by(lanes as usize).collect();
        if halves.len() > 1 && self.grouped_direct(t) && rows.len() == 1 {
            // Decode (one row against the packed weight): every lane group in one
            // pass over the blocks. Two passes of 8 lanes read each block's chunks
            // twice: the first pass waited on memory with half the arithmetic and
            // the second ran from L1 with the memory idle (25 against 36 GB/s over
            // two Zen 3 cores for the same instructions in one pass).
            return self.qtile_pass(f, t, src, &rows, &[0], &halves, lanes);
        }
        for &c0 in &halves {
            let idx: Vec<usize> = (0..rows.len()).collect();
            for chunk in idx.chunks(per_pass) {
                self.qtile_pass(f, t, src, &rows, chunk, &[c0], lanes)?;
            }
        }
        Ok(())
    }

    /// Weight rows `c0..c0 + lanes` of the tile, for each `c0` of `c0s`, against
    /// activation rows `which`, in one loop over the blocks.
    #[allow(clippy::too_many_arguments)]
    fn qtile_pass(
        &mut self,
        f: &mut Frame<'ctx>,
        t: &QTile,
        src: TileSrc<'ctx>,
        rows: &[(IntValue<'ctx>, IntValue<'ctx>)],
        which: &[usize],
        c0s: &[u32],
        lanes: u32,
    ) -> R<()> {
        let it = self.it;
        let e = llvm_err;
        let vf = it.f32.vec_type(lanes);
        let bufs = [t.tile, t.scales, t.xq, t.xd, t.xs]
            .iter()
            .map(|b| self.tile_buf(f, *b))
            .collect::<R<Vec<_>>>()?;
        let wsrc = src.wsrc;
        let last = t.first_block + t.blocks == t.row_blocks;
        // Element offset in the state of chain `h` of statement row `i`, lanes c0...
        let state_at = |f: &Frame<'ctx>, i: usize, h: usize, c0: u32| -> R<PointerValue<'ctx>> {
            let (st, off) = src
                .state
                .ok_or_else(|| llvm_err("qtile slice without a state"))?;
            let k = self.tc(((4 * i + h) * LANES as usize + c0 as usize) as i64);
            let at = f.b.build_int_add(off, k, "").map_err(e)?;
            let at = f.b.build_int_mul(at, self.tc(4), "").map_err(e)?;
            // SAFETY: the state local holds every statement row's chains (checked
            // against the same layout by the loop-IR interpreter in tests).
            unsafe { f.b.build_gep(it.i8, st, &[at], "") }.map_err(e)
        };
        // Per row: the even and odd block chains and the same for the minimum terms,
        // from zero or where the previous slice left them.
        // chains[g][r]: lane group c0s[g], statement row which[r].
        let mut chains = Vec::new();
        for &c0 in c0s {
            let mut group = Vec::new();
            for &i in which {
                let mut four = [None; 4];
                for (h, c) in four.iter_mut().enumerate() {
                    let a = f.allocas.build_alloca(vf, "qtacc").map_err(e)?;
                    let v = if t.first_block > 0 {
                        let p = state_at(f, i, h, c0)?;
                        let v = f.b.build_load(vf, p, "").map_err(e)?;
                        if let Some(ins) = v.as_instruction_value() {
                            ins.set_alignment(4).map_err(llvm_err)?;
                        }
                        v
                    } else {
                        vf.const_zero().into()
                    };
                    f.b.build_store(a, v).map_err(e)?;
                    *c = Some(a);
                }
                group.push(four.map(|c| c.expect("set above")));
            }
            chains.push(group);
        }
        let sel: Vec<_> = which.iter().map(|&i| rows[i]).collect();
        let trips = t.blocks / 2;
        let lp = self.counted_loop(f, "qtile", "qtb", trips as u64)?;
        let blk0 = f.b.build_int_mul(lp.index, self.tc(2), "").map_err(e)?;
        let mut pair = Vec::new();
        for h in 0..2 {
            let tblk = f.b.build_int_add(blk0, self.tc(h), "").map_err(e)?;
            let blk =
                f.b.build_int_add(tblk, self.tc(t.first_block), "")
                    .map_err(e)?;
            pair.push((blk, tblk, h as usize));
        }
        if c0s.len() == 1 {
            self.qtile_block(f, t, wsrc, &bufs, &sel, &pair, c0s[0], lanes, &chains[0])?;
        } else {
            // A block at a time, its lane groups side by side (the pair of blocks
            // at once with two groups kept 26 vectors live: spills).
            let src = wsrc.ok_or_else(|| llvm_err("grouped qtile pass without a packed weight"))?;
            let group_chains: Vec<_> = chains.iter().map(|g| g[0]).collect();
            for &one in &pair {
                self.qtile_block_groups(f, t, src, &bufs, sel[0], one, c0s, lanes, &group_chains)?;
            }
        }
        self.close_loop(f, &lp)?;
        if t.blocks % 2 == 1 {
            let at = (self.tc(t.row_blocks - 1), self.tc(t.blocks - 1), 0);
            for (g, &c0) in c0s.iter().enumerate() {
                self.qtile_block(f, t, wsrc, &bufs, &sel, &[at], c0, lanes, &chains[g])?;
                // The odd chains take the trailing block's zero partner, as in QDot.
                for ch in &chains[g] {
                    for slot in [ch[1], ch[3]] {
                        self.fma_into(f, vf.const_zero(), vf.const_zero(), slot)?;
                    }
                }
            }
        }
        for (g, &c0) in c0s.iter().enumerate() {
            self.qtile_finish(f, t, which, c0, lanes, &chains[g], last, &state_at)?;
        }
        Ok(())
    }

    /// The end of a [`Self::qtile_pass`] for lane group `c0`: the chains stored for the
    /// next slice, or (the last slice) added into the statement's accumulators.
    #[allow(clippy::too_many_arguments)]
    fn qtile_finish(
        &self,
        f: &mut Frame<'ctx>,
        t: &QTile,
        which: &[usize],
        c0: u32,
        lanes: u32,
        chains: &[[PointerValue<'ctx>; 4]],
        last: bool,
        state_at: &dyn Fn(&Frame<'ctx>, usize, usize, u32) -> R<PointerValue<'ctx>>,
    ) -> R<()> {
        let it = self.it;
        let e = llvm_err;
        let vf = it.f32.vec_type(lanes);
        if !last {
            // The chains wait for the next slice.
            for (r, &i) in which.iter().enumerate() {
                for (h, &slot) in chains[r].iter().enumerate() {
                    let v = f.b.build_load(vf, slot, "").map_err(e)?;
                    let p = state_at(f, i, h, c0)?;
                    let st = f.b.build_store(p, v).map_err(e)?;
                    st.set_alignment(4).map_err(llvm_err)?;
                }
            }
            return Ok(());
        }
        // acc += (E + O) + (ME + MO) per row and lane.
        for (r, &i) in which.iter().enumerate() {
            let ld = |p: PointerValue<'ctx>| -> R<VectorValue<'ctx>> {
                Ok(f.b.build_load(vf, p, "").map_err(e)?.into_vector_value())
            };
            let ch = chains[r];
            let mut tot = f.b.build_float_add(ld(ch[0])?, ld(ch[1])?, "").map_err(e)?;
            if t.has_min {
                let m = f.b.build_float_add(ld(ch[2])?, ld(ch[3])?, "").map_err(e)?;
                tot = f.b.build_float_add(tot, m, "").map_err(e)?;
            }
            for l in 0..lanes {
                let acc = t.accs[i * QTile::LANES + (c0 + l) as usize];
                let slot = self.var_slot(f, acc)?;
                let b = &f.b;
                let v = b
                    .build_extract_element(tot, it.i32.const_int(l as u64, false), "")
                    .map_err(e)?
                    .into_float_value();
                let cur = b
                    .build_load(it.f32, slot, "")
                    .map_err(e)?
                    .into_float_value();
                let nv = b.build_float_add(cur, v, "").map_err(e)?;
                b.build_store(slot, nv).map_err(e)?;
            }
        }
        Ok(())
    }

    /// Blocks `blk` (tile block `tblk`) of a [`Self::qtile_pass`], each into chain `h`
    /// (0 even, 1 odd) of every row. A byte tile's blocks run side by side, their
    /// products interleaved quad by quad, so that the two blocks' `vpdpbusd` chains
    /// overlap (each row's sum is still one chain per block; the order of a chain's
    /// adds does not change); a pair tile's blocks run one after the other.
    #[allow(clippy::too_many_arguments)]
    fn qtile_block(
        &self,
        f: &Frame<'ctx>,
        t: &QTile,
        wsrc: Option<(PointerValue<'ctx>, IntValue<'ctx>)>,
        bufs: &[PointerValue<'ctx>],
        rows: &[(IntValue<'ctx>, IntValue<'ctx>)],
        blocks: &[(IntValue<'ctx>, IntValue<'ctx>, usize)],
        c0: u32,
        lanes: u32,
        chains: &[[PointerValue<'ctx>; 4]],
    ) -> R<()> {
        let it = self.it;
        let e = llvm_err;
        let (tile, scales, xq, xd, xs) = (bufs[0], bufs[1], bufs[2], bufs[3], bufs[4]);
        let vi = it.i32.vec_type(lanes);
        let vw = it.i16.vec_type(2 * lanes);
        let vf = it.f32.vec_type(lanes);
        let xq8 = self.xq8(t.xq);
        let es = if xq8 { 1 } else { 2 };
        let bytes = self.byte_tile(t.fmt, t.packed, xq8);
        // Per block: each row's byte offset of the block in xq (int16 or int8 quants),
        // the block decoded from the packed weight (direct tiles), its sums.
        let mut xbss = Vec::new();
        let mut directs = Vec::new();
        for &(blk, _, _) in blocks {
            let b = &f.b;
            let xbs = rows
                .iter()
                .map(|(xb, _)| {
                    let v = b.build_int_add(*xb, blk, "").map_err(e)?;
                    b.build_int_mul(v, self.tc(32 * es), "").map_err(e)
                })
                .collect::<R<Vec<_>>>()?;
            xbss.push(xbs);
            directs.push(match wsrc {
                Some(src) if bytes => Some(self.direct_block_bytes(f, t, src, blk, c0, lanes)?),
                Some(src) => Some(self.direct_block(f, t, src, blk, c0, lanes)?),
                None => None,
            });
        }
        let mut sums: Vec<Vec<VectorValue<'ctx>>> = blocks
            .iter()
            .map(|_| rows.iter().map(|_| vi.const_zero()).collect())
            .collect();
        if bytes {
            // u8 weight quads against s8 activation quads (4 bytes broadcast).
            let tbs = blocks
                .iter()
                .map(|&(_, tblk, _)| {
                    let tb =
                        f.b.build_int_mul(tblk, self.tc(BLOCK_BYTE_TILE_BYTES), "")
                            .map_err(e)?;
                    f.b.build_int_add(tb, self.tc(4 * c0 as i64), "").map_err(e)
                })
                .collect::<R<Vec<_>>>()?;
            for p in 0..8i64 {
                for (j, tb) in tbs.iter().enumerate() {
                    let wv = match &directs[j] {
                        Some((q, ..)) => q[p as usize],
                        None => {
                            let at = f.b.build_int_add(*tb, self.tc(p * 64), "").map_err(e)?;
                            self.qdot_load(f, vi.into(), tile, at)?.into_vector_value()
                        }
                    };
                    for (s, xb) in sums[j].iter_mut().zip(&xbss[j]) {
                        let at = f.b.build_int_add(*xb, self.tc(p * 4), "").map_err(e)?;
                        let quad = self.qdot_load(f, it.i32.into(), xq, at)?.into_int_value();
                        let x = self.splat_i32(f, quad, lanes)?;
                        *s = self.quad_dot(f, *s, wv, x)?;
                    }
                }
            }
        }
        for (j, &(blk, tblk, h)) in blocks.iter().enumerate() {
            let xbs = &xbss[j];
            let direct = &directs[j];
            // A pair tile: i16 weight pairs against i16 activation pairs. int8 ones are
            // widened a block at a time into a stack slot per row, from which each pair is
            // broadcast as the int16 ones are from `xq` (a 2-byte load, a sign
            // extension and a register broadcast per pair measured 1.8x slower
            // prefill, a permute per pair from the widened register 1.4x).
            let wide = if xq8 && !bytes {
                let v32b = it.i8.vec_type(32);
                let v32w = it.i16.vec_type(32);
                xbs.iter()
                    .map(|xb| {
                        let raw = self.qdot_load(f, v32b.into(), xq, *xb)?.into_vector_value();
                        let w16 = f.b.build_int_s_extend(raw, v32w, "").map_err(e)?;
                        let slot = f.allocas.build_alloca(v32w, "xq16").map_err(e)?;
                        let st = f.b.build_store(slot, w16).map_err(e)?;
                        st.set_volatile(true).map_err(llvm_err)?;
                        Ok(slot)
                    })
                    .collect::<R<Vec<_>>>()?
            } else {
                Vec::new()
            };
            // Q6_K, Q3_K, Q2_K: the first half's sums (pairs 0..8) apart from the
            // second's (Q2_K's then times their 4-bit scales, in integers).
            let split = t.fmt.split_scales();
            let mut lows = Vec::new();
            // One activation row with VNNI: the odd pairs in a second sum, added at the
            // end (exact), so that a block is two `vpdpwssd` chains of 8, not one of 16
            // (each waits on the last one's latency; decode has no other rows to
            // interleave).
            let two = rows.len() == 1 && !split && self.target.vnni();
            let mut odd = vec![vi.const_zero(); rows.len()];
            for p in (0..16i64).filter(|_| !bytes) {
                if split && p == 8 {
                    lows = std::mem::replace(&mut sums[j], vec![vi.const_zero(); rows.len()]);
                }
                let wv = match direct {
                    Some((wvs, ..)) => wvs[p as usize],
                    None => {
                        let b = &f.b;
                        let at = b.build_int_mul(tblk, self.tc(BLOCK_TILE_BYTES), "");
                        let at =
                            b.build_int_add(at.map_err(e)?, self.tc(c0 as i64 * 4 + p * 64), "");
                        self.qdot_load(f, vw.into(), tile, at.map_err(e)?)?
                            .into_vector_value()
                    }
                };
                for (r, (s, xb)) in sums[j].iter_mut().zip(xbs).enumerate() {
                    let x = if xq8 {
                        // SAFETY: pair p of the 64-byte slot written above.
                        let at = unsafe { f.b.build_gep(it.i8, wide[r], &[self.tc(4 * p)], "") }
                            .map_err(e)?;
                        let pair = f.b.build_load(it.i32, at, "").map_err(e)?;
                        if let Some(i) = pair.as_instruction_value() {
                            i.set_volatile(true).map_err(llvm_err)?;
                            i.set_alignment(4).map_err(llvm_err)?;
                        }
                        self.splat_i32(f, pair.into_int_value(), lanes)?
                    } else {
                        let at = f.b.build_int_add(*xb, self.tc(p * 4), "").map_err(e)?;
                        let pair = self.qdot_load(f, it.i32.into(), xq, at)?.into_int_value();
                        self.splat_i32(f, pair, lanes)?
                    };
                    let s = if two && p % 2 == 1 { &mut odd[r] } else { s };
                    *s = self.pair_dot(f, *s, wv, x, lanes)?;
                }
            }
            if two {
                sums[j][0] = f.b.build_int_add(sums[j][0], odd[0], "").map_err(e)?;
            }
            let sb =
                f.b.build_int_mul(tblk, self.tc(BLOCK_SCALE_BYTES), "")
                    .map_err(e)?;
            let sb =
                f.b.build_int_add(sb, self.tc(c0 as i64 * 4), "")
                    .map_err(e)?;
            let (d, m) = if let Some((_, d, m, _)) = direct {
                (*d, m.filter(|_| t.has_min || split))
            } else {
                self.tile_scales(f, t, scales, sb, vf)?
            };
            // Q2_K's second half's minimum (its first is `m`) and the halves' scales.
            let q2 = direct.as_ref().and_then(|d| d.3);
            for (r, ((s, (_, sc)), ch)) in sums[j].iter().zip(rows).zip(chains).enumerate() {
                let b = &f.b;
                let at = b
                    .build_int_mul(blk, self.tc(QDot::scale_offset(1)), "")
                    .map_err(e)?;
                let at = b.build_int_add(*sc, at, "").map_err(e)?;
                let at = b.build_int_mul(at, self.tc(4), "").map_err(e)?;
                let xdv = self.qdot_load(f, it.f32.into(), xd, at)?.into_float_value();
                let xdv = self.splat_f32(f, xdv, lanes)?;
                let scale = f.b.build_float_mul(d, xdv, "scale").map_err(e)?;
                let sf = f.b.build_signed_int_to_float(*s, vf, "").map_err(e)?;
                if let (true, Some(m_lo), Some([m_hi, sc_lo, sc_hi])) = (t.fmt.split_mins(), m, q2)
                {
                    // QDot's Q2_K: the integer `Σ sc q x` (the halves' sums times their
                    // scales) with `D xd` into chain h, then each half's minimum
                    // against its half sum `xs[2 (xb + blk) + p]` into minimum chain
                    // 2 + h.
                    let lo = lows.get(r).copied().unwrap_or(vi.const_zero());
                    let b = &f.b;
                    let lo = b.build_int_mul(lo, sc_lo, "").map_err(e)?;
                    let hi = b.build_int_mul(*s, sc_hi, "").map_err(e)?;
                    let a = b.build_int_add(lo, hi, "").map_err(e)?;
                    let sf = b.build_signed_int_to_float(a, vf, "").map_err(e)?;
                    self.fma_into(f, sf, scale, ch[h])?;
                    for (p, mv) in [m_lo, m_hi].into_iter().enumerate() {
                        let b = &f.b;
                        let at = b.build_int_add(rows[r].0, blk, "").map_err(e)?;
                        let at = b.build_int_mul(at, self.tc(2), "").map_err(e)?;
                        let at = b.build_int_add(at, self.tc(p as i64), "").map_err(e)?;
                        let at = b.build_int_mul(at, self.tc(4), "").map_err(e)?;
                        let xsv = self.qdot_load(f, it.f32.into(), xs, at)?.into_float_value();
                        let xsv = self.splat_f32(f, xsv, lanes)?;
                        self.fma_into(f, mv, xsv, ch[2 + h])?;
                    }
                    continue;
                }
                if split {
                    // QDot's Q6_K: the first half with d_lo into E, the second with
                    // d_hi (the minimum's slot) into O.
                    let dh = m.ok_or_else(|| llvm_err("q6_k tile without d_hi"))?;
                    let lo = lows.get(r).copied().unwrap_or(vi.const_zero());
                    let lo = f.b.build_signed_int_to_float(lo, vf, "").map_err(e)?;
                    self.fma_into(f, lo, scale, ch[0])?;
                    let scale = f.b.build_float_mul(dh, xdv, "scale").map_err(e)?;
                    self.fma_into(f, sf, scale, ch[1])?;
                    continue;
                }
                self.chain_block(f, sf, scale, m, (xs, at), lanes, ch, h)?;
            }
        }
        Ok(())
    }

    /// One block's terms into a row's chains: `sf · scale` into chain `h`, and with a
    /// minimum `m`, `m · xs[at]` into minimum chain `2 + h` ([`QDot`]'s arithmetic).
    #[allow(clippy::too_many_arguments)]
    fn chain_block(
        &self,
        f: &Frame<'ctx>,
        sf: VectorValue<'ctx>,
        scale: VectorValue<'ctx>,
        m: Option<VectorValue<'ctx>>,
        (xs, at): (PointerValue<'ctx>, IntValue<'ctx>),
        lanes: u32,
        ch: &[PointerValue<'ctx>; 4],
        h: usize,
    ) -> R<()> {
        self.fma_into(f, sf, scale, ch[h])?;
        if let Some(m) = m {
            let xsv = self
                .qdot_load(f, self.it.f32.into(), xs, at)?
                .into_float_value();
            let xsv = self.splat_f32(f, xsv, lanes)?;
            self.fma_into(f, m, xsv, ch[2 + h])?;
        }
        Ok(())
    }

    /// Whether a direct [`QTile`]'s lane groups can share one pass over the blocks
    /// ([`Self::qtile_block_groups`]): int16 pair tiles of the formats whose chunks
    /// decode with one widening load, a mask and a shift (Q8_0, Q4_0, Q4_1, Q4_K,
    /// IQ4). The fifth bits of Q5_0/Q5_1 and Q6_K's split scales keep more vectors
    /// live per group: both groups at once measured 20% slower there (Q4_K_M's Q5_0
    /// gate/up), so they keep a pass per group.
    fn grouped_direct(&self, t: &QTile) -> bool {
        let xq8 = self.xq8(t.xq);
        t.direct
            && !xq8
            && !self.byte_tile(t.fmt, t.packed, xq8)
            && !t.fmt.split_scales()
            && !t.fmt.sparse()
            && !t.fmt.tile_fifth()
    }

    /// One block of a direct [`QTile`] for one activation row, every lane group of
    /// `c0s` at once: each activation pair is broadcast once and multiplied into
    /// every group's sum before the next (per group and lane the same integer sums
    /// and the same chain FMAs as [`Self::qtile_block`], so the same bits).
    #[allow(clippy::too_many_arguments)]
    fn qtile_block_groups(
        &self,
        f: &Frame<'ctx>,
        t: &QTile,
        src: (PointerValue<'ctx>, IntValue<'ctx>),
        bufs: &[PointerValue<'ctx>],
        (xb, sc): (IntValue<'ctx>, IntValue<'ctx>),
        (blk, _, h): (IntValue<'ctx>, IntValue<'ctx>, usize),
        c0s: &[u32],
        lanes: u32,
        chains: &[[PointerValue<'ctx>; 4]],
    ) -> R<()> {
        let it = self.it;
        let e = llvm_err;
        let (xq, xd, xs) = (bufs[2], bufs[3], bufs[4]);
        let vi = it.i32.vec_type(lanes);
        let vf = it.f32.vec_type(lanes);
        let decoded = c0s
            .iter()
            .map(|&c0| self.direct_block(f, t, src, blk, c0, lanes))
            .collect::<R<Vec<_>>>()?;
        let xrow = f.b.build_int_add(xb, blk, "").map_err(e)?;
        let xrow = f.b.build_int_mul(xrow, self.tc(64), "").map_err(e)?;
        let mut sums = vec![vi.const_zero(); c0s.len()];
        // Pairs p and p + 8 come from one chunk (its low and high nibbles): taken
        // together, no chunk's high half waits eight pairs in a register (the
        // integer sums are exact in any order).
        for p in (0..8i64).flat_map(|p| [p, p + 8]) {
            let at = f.b.build_int_add(xrow, self.tc(p * 4), "").map_err(e)?;
            let pair = self.qdot_load(f, it.i32.into(), xq, at)?.into_int_value();
            let x = self.splat_i32(f, pair, lanes)?;
            for (s, (wvs, ..)) in sums.iter_mut().zip(&decoded) {
                *s = self.pair_dot(f, *s, wvs[p as usize], x, lanes)?;
            }
        }
        let b = &f.b;
        let at = b
            .build_int_mul(blk, self.tc(QDot::scale_offset(1)), "")
            .map_err(e)?;
        let at = b.build_int_add(sc, at, "").map_err(e)?;
        let at = b.build_int_mul(at, self.tc(4), "").map_err(e)?;
        let xdv = self.qdot_load(f, it.f32.into(), xd, at)?.into_float_value();
        let xdv = self.splat_f32(f, xdv, lanes)?;
        for ((s, (_, d, m, _)), ch) in sums.iter().zip(&decoded).zip(chains) {
            let m = m.filter(|_| t.has_min);
            let scale = f.b.build_float_mul(*d, xdv, "scale").map_err(e)?;
            let sf = f.b.build_signed_int_to_float(*s, vf, "").map_err(e)?;
            self.chain_block(f, sf, scale, m, (xs, at), lanes, ch, h)?;
        }
        Ok(())
    }

    /// The tile's scales (and minimums when `t.has_min`) of the block at byte `sb` of
    /// the scales local, lanes `c0..c0 + lanes` (`sb` includes `c0`).
    fn tile_scales(
        &self,
        f: &Frame<'ctx>,
        t: &QTile,
        scales: PointerValue<'ctx>,
        sb: IntValue<'ctx>,
        vf: VectorType<'ctx>,
    ) -> R<(VectorValue<'ctx>, Option<VectorValue<'ctx>>)> {
        let d = self
            .qdot_load(f, vf.into(), scales, sb)?
            .into_vector_value();
        if !t.has_min && !t.fmt.split_scales() {
            return Ok((d, None));
        }
        let at = f.b.build_int_add(sb, self.tc(64), "").map_err(llvm_err)?;
        let m = self
            .qdot_load(f, vf.into(), scales, at)?
            .into_vector_value();
        Ok((d, Some(m)))
    }

    /// A direct [`QTile`]'s block `blk`, lanes (weight rows) `c0..c0 + lanes`, decoded
    /// from the packed weight (`Tile16`): the 16 pair vectors (`2 lanes` i16 each),
    /// the scales and the minimums (Q8_0: none). The block group's cache lines are
    /// prefetched `QDOT_PREFETCH` bytes ahead on the first lanes' pass.
    fn direct_block(
        &self,
        f: &Frame<'ctx>,
        t: &QTile,
        (w, w_off): (PointerValue<'ctx>, IntValue<'ctx>),
        blk: IntValue<'ctx>,
        c0: u32,
        lanes: u32,
    ) -> R<Decoded<'ctx>> {
        if t.fmt.split_mins() {
            return self.q2k_direct(f, (w, w_off), blk, c0, lanes);
        }
        let it = self.it;
        let e = llvm_err;
        let (d, m, qs, masks) = self.packed_head(f, t.fmt, (w, w_off), blk, c0, lanes, c0 == 0)?;
        let vb = it.i8.vec_type(2 * lanes);
        let vw = it.i16.vec_type(2 * lanes);
        let splat = |k: u64| {
            VectorType::const_vector(&vec![it.i16.const_int(k, false); 2 * lanes as usize])
        };
        let mut out = vec![vw.const_zero(); 16];
        if t.fmt.sparse() {
            return Ok((self.s24_pairs(f, w, masks, c0, lanes)?, d, m, None));
        }
        if t.fmt == llmc_kernels::QFmt::Q6K {
            return Ok((self.q6k_pairs(f, w, qs, masks, lanes)?, d, m, None));
        }
        if t.fmt == llmc_kernels::QFmt::Q3K {
            return Ok((self.q3k_pairs(f, w, qs, masks, c0, lanes)?, d, m, None));
        }
        if t.fmt == llmc_kernels::QFmt::Q8_0 {
            // With a minimum (int8 activations): q + 128 and -128 d.
            for (p, o) in out.iter_mut().enumerate() {
                let at =
                    f.b.build_int_add(qs, self.tc(32 * p as i64), "")
                        .map_err(e)?;
                let raw = self.qdot_load(f, vb.into(), w, at)?.into_vector_value();
                *o = f.b.build_int_s_extend(raw, vw, "").map_err(e)?;
                if t.has_min {
                    *o = f.b.build_int_add(*o, splat(128), "u8").map_err(e)?;
                }
            }
            if t.has_min {
                return Ok((out, d, Some(self.offset8_min(f, d, lanes)?), None));
            }
        } else {
            for p in 0..8 {
                let at =
                    f.b.build_int_add(qs, self.tc(32 * p as i64), "")
                        .map_err(e)?;
                let raw = self.qdot_load(f, vb.into(), w, at)?.into_vector_value();
                let (lo, hi) = self.nibble_pairs(f, t.fmt, raw, vw)?;
                out[p] = self.tile16_fifth(f, t.fmt, w, masks, p as i64, c0, lanes, lo)?;
                out[p + 8] = self.tile16_fifth(f, t.fmt, w, masks, p as i64 + 8, c0, lanes, hi)?;
            }
        }
        Ok((out, d, m, None))
    }

    /// The 16 pair vectors (`2 lanes` i16: lane `2c + j` holds row `c0 + c`'s quant
    /// `2p + j`, less 32) of a Q6_K `Tile16` block whose low nibbles start at byte `qs`
    /// of `w` and high bits at `hs` (both lane `c0`'s; `templates::pack`'s
    /// `tile16_q6k_high`): per 32-byte chunk of nibbles two widening loads' worth of
    /// pairs, per chunk of high bits four pairs' bits moved to 16 and 32 by a shift
    /// and a mask each.
    fn q6k_pairs(
        &self,
        f: &Frame<'ctx>,
        w: PointerValue<'ctx>,
        qs: IntValue<'ctx>,
        hs: IntValue<'ctx>,
        lanes: u32,
    ) -> R<Vec<VectorValue<'ctx>>> {
        let it = self.it;
        let e = llvm_err;
        let vb = it.i8.vec_type(2 * lanes);
        let vw = it.i16.vec_type(2 * lanes);
        let splat = |k: u64| {
            VectorType::const_vector(&vec![it.i16.const_int(k, false); 2 * lanes as usize])
        };
        let load = |base: IntValue<'ctx>, c: i64| -> R<VectorValue<'ctx>> {
            let at = f.b.build_int_add(base, self.tc(32 * c), "").map_err(e)?;
            let raw = self.qdot_load(f, vb.into(), w, at)?.into_vector_value();
            f.b.build_int_z_extend(raw, vw, "").map_err(e)
        };
        let mut out = vec![vw.const_zero(); 16];
        for p in 0..8 {
            let v = load(qs, p as i64)?;
            let b = &f.b;
            out[p] = b.build_and(v, splat(15), "lo").map_err(e)?;
            out[p + 8] = b.build_right_shift(v, splat(4), false, "hi").map_err(e)?;
        }
        for k in 0..4 {
            let v = load(hs, k as i64)?;
            for sh in 0..4usize {
                let p = k + 4 * sh;
                // Bits 2 sh, 2 sh + 1 to bits 4, 5.
                let b = &f.b;
                let moved = if 2 * sh <= 4 {
                    b.build_left_shift(v, splat(4 - 2 * sh as u64), "")
                } else {
                    b.build_right_shift(v, splat(2), false, "")
                }
                .map_err(e)?;
                let high = b.build_and(moved, splat(0x30), "").map_err(e)?;
                let q = b.build_or(out[p], high, "q6").map_err(e)?;
                out[p] = b.build_int_sub(q, splat(32), "").map_err(e)?;
            }
        }
        Ok(out)
    }

    /// A direct [`QTile`]'s Q2_K block `blk`, lanes (weight rows) `c0..c0 + lanes`,
    /// decoded from the packed weight (`templates::pack`'s `tile16_q2k_scale`): the 16
    /// pair vectors of the 2-bit quants, `D`, the halves' minimums `mn · -Dmin`, and
    /// their 4-bit scales as i32 lanes. The tile multiplies each half's integer sum by
    /// its scale (`Σ sc q x = sc Σ q x`, exact, two multiplies a block instead of one a
    /// pair vector). The block group's lines are prefetched `QDOT_PREFETCH` bytes
    /// ahead on the first lanes' pass.
    fn q2k_direct(
        &self,
        f: &Frame<'ctx>,
        (w, w_off): (PointerValue<'ctx>, IntValue<'ctx>),
        blk: IntValue<'ctx>,
        c0: u32,
        lanes: u32,
    ) -> R<Decoded<'ctx>> {
        use llmc_kernels::templates::pack::{TILE16_Q2K_BLOCK, TILE16_Q2K_QUANTS};
        let it = self.it;
        let e = llvm_err;
        let big = LANES as i64;
        let group = big * llmc_kernels::QFmt::Q2K.block_bytes();
        let b = &f.b;
        let sb = b
            .build_right_shift(blk, self.tc(3), false, "sb")
            .map_err(e)?;
        let j = b.build_and(blk, self.tc(7), "j").map_err(e)?;
        let g = b.build_int_mul(sb, self.tc(group), "").map_err(e)?;
        let g = b.build_int_add(w_off, g, "g").map_err(e)?;
        let q = b
            .build_int_mul(j, self.tc(TILE16_Q2K_BLOCK as i64), "")
            .map_err(e)?;
        let q = b
            .build_int_add(q, self.tc(TILE16_Q2K_QUANTS as i64), "")
            .map_err(e)?;
        let qs = b.build_int_add(g, q, "").map_err(e)?;
        if c0 == 0 {
            // An eighth of the group a block, so the window covers its head too.
            let pf = it
                .intrinsic(self.module, "llvm.prefetch", &[it.ptr.into()])
                .ok_or_else(|| llvm_err("llvm.prefetch"))?;
            let i32c = |v: u64| it.i32.const_int(v, false).into();
            for line in 0..(group / 8 + 63) / 64 {
                let ahead = self.tc(super::QDOT_PREFETCH as i64 + 64 * line);
                let ahead = f.b.build_int_add(qs, ahead, "").map_err(e)?;
                // SAFETY: only an address for the prefetch hint; never dereferenced.
                let pp = unsafe { f.b.build_gep(it.i8, w, &[ahead], "") }.map_err(e)?;
                f.b.build_call(pf, &[pp.into(), i32c(0), i32c(3), i32c(1)], "")
                    .map_err(e)?;
            }
        }
        let qs =
            f.b.build_int_add(qs, self.tc(2 * c0 as i64), "qs")
                .map_err(e)?;
        let vh = it.f16.vec_type(lanes);
        let vf = it.f32.vec_type(lanes);
        let half = |at: i64| -> R<VectorValue<'ctx>> {
            let at =
                f.b.build_int_add(g, self.tc(at + 2 * c0 as i64), "")
                    .map_err(e)?;
            let h = self.qdot_load(f, vh.into(), w, at)?.into_vector_value();
            f.b.build_float_ext(h, vf, "").map_err(e)
        };
        let d = half(0)?;
        let dmin = half(2 * big)?;
        let ndmin = f.b.build_float_neg(dmin, "").map_err(e)?;
        let vb = it.i8.vec_type(lanes);
        let c8 =
            |k: u64| VectorType::const_vector(&vec![it.i8.const_int(k, false); lanes as usize]);
        // Each half's byte (scale | minimum << 4): run 2 j + h of the 16 rows' bytes.
        let mut scs = Vec::new();
        let mut mins = Vec::new();
        for h in 0..2 {
            let b = &f.b;
            let s = b.build_int_mul(j, self.tc(2 * big), "").map_err(e)?;
            let s = b
                .build_int_add(s, self.tc(4 * big + h * big + c0 as i64), "")
                .map_err(e)?;
            let at = b.build_int_add(g, s, "").map_err(e)?;
            let byte = self.qdot_load(f, vb.into(), w, at)?.into_vector_value();
            let b = &f.b;
            let sc = b.build_and(byte, c8(15), "").map_err(e)?;
            let mn = b.build_right_shift(byte, c8(4), false, "").map_err(e)?;
            let mn = b.build_unsigned_int_to_float(mn, vf, "").map_err(e)?;
            mins.push(b.build_float_mul(mn, ndmin, "m").map_err(e)?);
            scs.push(
                b.build_int_z_extend(sc, it.i32.vec_type(lanes), "sc")
                    .map_err(e)?,
            );
        }
        let out = self.crumb_pairs(f, w, qs, lanes)?;
        Ok((out, d, Some(mins[0]), Some([mins[1], scs[0], scs[1]])))
    }

    /// The 16 pair vectors (`2 lanes` i16, 0..3) of 2-bit quants kept in four 32-byte
    /// chunks from byte `qs` of `w` (lane `c0`'s; Q3_K's low bits, Q2_K's quants):
    /// pair `p` from chunk `p mod 4` at shift `2 ⌊p / 4⌋`, one widening load a chunk
    /// and a shift and an `and` a pair.
    fn crumb_pairs(
        &self,
        f: &Frame<'ctx>,
        w: PointerValue<'ctx>,
        qs: IntValue<'ctx>,
        lanes: u32,
    ) -> R<Vec<VectorValue<'ctx>>> {
        let it = self.it;
        let e = llvm_err;
        let vb = it.i8.vec_type(2 * lanes);
        let vw = it.i16.vec_type(2 * lanes);
        let splat = |k: u64| {
            VectorType::const_vector(&vec![it.i16.const_int(k, false); 2 * lanes as usize])
        };
        let mut out = vec![vw.const_zero(); 16];
        for k in 0..4usize {
            let at =
                f.b.build_int_add(qs, self.tc(32 * k as i64), "")
                    .map_err(e)?;
            let raw = self.qdot_load(f, vb.into(), w, at)?.into_vector_value();
            let v = f.b.build_int_z_extend(raw, vw, "").map_err(e)?;
            for sh in 0..4usize {
                let b = &f.b;
                let moved = if sh == 0 {
                    v
                } else {
                    b.build_right_shift(v, splat(2 * sh as u64), false, "")
                        .map_err(e)?
                };
                out[k + 4 * sh] = b.build_and(moved, splat(3), "crumb").map_err(e)?;
            }
        }
        Ok(out)
    }

    /// The 16 pair vectors (`2 lanes` i16: lane `2c + j` holds row `c0 + c`'s quant
    /// `2p + j`, `lo + 4 h - 4`) of a Q3_K `Tile16` block whose low bits start at byte
    /// `qs` of `w` (lane `c0`'s; `templates::pack`'s `tile16_q3k_low`) and high bits'
    /// masks at `masks`: per 32-byte chunk of low bits four pairs' bits by a shift and a
    /// mask each, then each pair's high bits or-ed in as 4.
    fn q3k_pairs(
        &self,
        f: &Frame<'ctx>,
        w: PointerValue<'ctx>,
        qs: IntValue<'ctx>,
        masks: IntValue<'ctx>,
        c0: u32,
        lanes: u32,
    ) -> R<Vec<VectorValue<'ctx>>> {
        let it = self.it;
        let splat = |k: u64| {
            VectorType::const_vector(&vec![it.i16.const_int(k, false); 2 * lanes as usize])
        };
        let mut out = self.crumb_pairs(f, w, qs, lanes)?;
        for (p, v) in out.iter_mut().enumerate() {
            let q = self.or_mask_bits(f, w, masks, p as i64, c0, lanes, *v, 4)?;
            *v = f.b.build_int_sub(q, splat(4), "q3").map_err(llvm_err)?;
        }
        Ok(out)
    }

    /// The 16 pair vectors (`2 lanes` i16: lane `2c + j` holds row `c0 + c`'s quant
    /// `2p + j`) of a `q8_0_2of4` block packed as `templates::pack::tile16_s24`, whose
    /// pair masks are at byte `masks` of `w` and codes 64 bytes after them: per pair,
    /// the lanes' bits of its mask and one expanding load of its codes from where the
    /// earlier pairs' and lanes' end.
    fn s24_pairs(
        &self,
        f: &Frame<'ctx>,
        w: PointerValue<'ctx>,
        masks: IntValue<'ctx>,
        c0: u32,
        lanes: u32,
    ) -> R<Vec<VectorValue<'ctx>>> {
        let it = self.it;
        let e = llvm_err;
        let vw = it.i16.vec_type(2 * lanes);
        let narrow = match 2 * lanes {
            32 => it.i32,
            16 => it.i16,
            _ => return Err(llvm_err(format!("q8_0_2of4 tile of {lanes} lanes"))),
        };
        let codes = f.b.build_int_add(masks, self.tc(64), "codes").map_err(e)?;
        let c32 = |v: u64| it.i32.const_int(v, false);
        // Codes of the pairs before this one (the sum of their masks' popcounts).
        let mut before = self.tc(0);
        let mut out = Vec::with_capacity(16);
        for p in 0..16i64 {
            let at = f.b.build_int_add(masks, self.tc(4 * p), "").map_err(e)?;
            let mp = self.qdot_load(f, it.i32.into(), w, at)?.into_int_value();
            // Codes before this pair vector's first lane: the earlier pairs' and the
            // lanes below c0.
            let mut start = before;
            let n_here = self.popcount_i64(f, mp)?;
            before = f.b.build_int_add(before, n_here, "").map_err(e)?;
            if c0 > 0 {
                let below =
                    f.b.build_and(mp, c32((1u64 << (2 * c0)) - 1), "")
                        .map_err(e)?;
                let nb = self.popcount_i64(f, below)?;
                start = f.b.build_int_add(start, nb, "").map_err(e)?;
            }
            let b = &f.b;
            let bits = b
                .build_right_shift(mp, c32(2 * c0 as u64), false, "")
                .map_err(e)?;
            let bits = b
                .build_int_truncate_or_bit_cast(bits, narrow, "")
                .map_err(e)?;
            let at = b.build_int_add(codes, start, "").map_err(e)?;
            // The packer checked that every row keeps at most 16 of 32, so the codes
            // lie inside the packed weight.
            let v = self.expand_bytes(f, w, at, bits)?;
            out.push(f.b.build_int_s_extend(v, vw, "").map_err(e)?);
        }
        Ok(out)
    }

    /// [`Self::direct_block`] for a byte tile: the block's 8 quad vectors (`4 lanes`
    /// u8 each), its scales and minimums. Q4_0/Q4_1/Q4_K nibbles and Q8_0 bytes go
    /// straight from two 32-byte chunks (pairs `2p`, `2p + 1`) to a quad by one word
    /// interleave; Q5's fifth bits take the pair vectors' way.
    fn direct_block_bytes(
        &self,
        f: &Frame<'ctx>,
        t: &QTile,
        (w, w_off): (PointerValue<'ctx>, IntValue<'ctx>),
        blk: IntValue<'ctx>,
        c0: u32,
        lanes: u32,
    ) -> R<Decoded<'ctx>> {
        use llmc_kernels::QFmt;
        if t.fmt.tile_fifth() {
            if !self.target.avx512() {
                let (d, m, qs, masks) =
                    self.packed_head(f, t.fmt, (w, w_off), blk, c0, lanes, c0 == 0)?;
                return Ok((self.q5_chunk_quads(f, w, qs, masks, c0, lanes)?, d, m, None));
            }
            let (pairs, d, m, _) = self.direct_block(f, t, (w, w_off), blk, c0, lanes)?;
            return Ok((self.pairs_to_quads(f, &pairs)?, d, m, None));
        }
        let (d, m, qs, _) = self.packed_head(f, t.fmt, (w, w_off), blk, c0, lanes, c0 == 0)?;
        let q8 = t.fmt == QFmt::Q8_0;
        let m = if q8 {
            Some(self.offset8_min(f, d, lanes)?)
        } else {
            m
        };
        let quads = self.chunk_quads(f, t.fmt, w, qs, lanes)?;
        Ok((quads, d, m, None))
    }

    /// A byte tile block's 8 quad vectors (`4 lanes` u8 each) from the quants of a
    /// `Tile16` block at byte `qs` of `w` (Q4_0/Q4_1/Q4_K nibbles, Q8_0 bytes as
    /// `q + 128`): chunks `2p` and `2p + 1` (a word per lane each) interleave word by
    /// word into quad `p`. With 16 lanes the two chunks are one 64-byte load and the
    /// interleave a one-source permute (two 32-byte loads and a two-source shuffle
    /// took two lane inserts and a `vpermt2w` per quad in the unpack).
    fn chunk_quads(
        &self,
        f: &Frame<'ctx>,
        fmt: llmc_kernels::QFmt,
        w: PointerValue<'ctx>,
        qs: IntValue<'ctx>,
        lanes: u32,
    ) -> R<Vec<VectorValue<'ctx>>> {
        let it = self.it;
        let e = llvm_err;
        let q8 = fmt == llmc_kernels::QFmt::Q8_0;
        let l = lanes as u64;
        let vw = it.i16.vec_type(lanes);
        let vq = it.i8.vec_type(4 * lanes);
        let splat =
            |k: u64| VectorType::const_vector(&vec![it.i8.const_int(k, false); 4 * lanes as usize]);
        // Word 2c of the quad: row c's word of the first chunk; 2c + 1: the second's.
        let mask: Vec<u64> = (0..l).flat_map(|c| [c, l + c]).collect();
        let chunk_words = |c: i64| -> R<VectorValue<'ctx>> {
            let at = f.b.build_int_add(qs, self.tc(32 * c), "").map_err(e)?;
            Ok(self.qdot_load(f, vw.into(), w, at)?.into_vector_value())
        };
        let mut quads = vec![vq.const_zero(); 8];
        for p in 0..if q8 { 8 } else { 4 } {
            let v = if lanes == 16 {
                let at = f.b.build_int_add(qs, self.tc(64 * p), "").map_err(e)?;
                let both = self
                    .qdot_load(f, it.i16.vec_type(2 * lanes).into(), w, at)?
                    .into_vector_value();
                let undef = both.get_type().get_undef();
                self.shuffle(f, both, undef, &mask)?
            } else {
                let (a, b) = (chunk_words(2 * p)?, chunk_words(2 * p + 1)?);
                self.shuffle(f, a, b, &mask)?
            };
            let v =
                f.b.build_bit_cast(v, vq, "")
                    .map_err(e)?
                    .into_vector_value();
            let bl = &f.b;
            if q8 {
                // q + 128: the sign bit flipped.
                quads[p as usize] = bl.build_xor(v, splat(0x80), "u8").map_err(e)?;
                continue;
            }
            quads[p as usize] = bl.build_and(v, splat(15), "lo").map_err(e)?;
            let hi = bl.build_right_shift(v, splat(4), false, "").map_err(e)?;
            quads[p as usize + 4] = bl.build_and(hi, splat(15), "hi").map_err(e)?;
        }
        Ok(quads)
    }

    /// A Q5_0/Q5_1 byte tile block's 8 quad vectors (`4 lanes` u8 each), from the
    /// `Tile16` quants at byte `qs` of `w` and the fifth bits' masks at `masks`,
    /// without the i16 pair vectors: chunks `2p` and `2p + 1` word-interleaved as in
    /// [`Self::chunk_quads`], their nibbles, then the fifth bits of the four pairs
    /// they hold (`2p`, `2p + 1` in the low nibbles, `2p + 8`, `2p + 9` in the high
    /// ones) set as 16 on the bytes: the masks of two pairs (after the shift by
    /// `2 c0`) make one `4 lanes`-bit mask, spread to bytes by a byte shuffle and a
    /// compare (as llama.cpp's `bytes_from_bits_32`).
    fn q5_chunk_quads(
        &self,
        f: &Frame<'ctx>,
        w: PointerValue<'ctx>,
        qs: IntValue<'ctx>,
        masks: IntValue<'ctx>,
        c0: u32,
        lanes: u32,
    ) -> R<Vec<VectorValue<'ctx>>> {
        let it = self.it;
        let e = llvm_err;
        let n = 2 * lanes as u64;
        let vc = it.i8.vec_type(n as u32);
        let vq = it.i8.vec_type(2 * n as u32);
        let (mt, half) = match lanes {
            8 => (it.i32, 16u64),
            16 => (it.i64, 32u64),
            _ => return Err(llvm_err(format!("q5 byte quads of {lanes} lanes"))),
        };
        let words = 2 * n / (half / 4);
        let vm = mt.vec_type(words as u32);
        let cst = |v: Vec<u64>| {
            VectorType::const_vector(
                &v.iter()
                    .map(|&k| it.i8.const_int(k, false))
                    .collect::<Vec<_>>(),
            )
        };
        let splat = |k: u64| cst(vec![k; 2 * n as usize]);
        // Quad byte i = 4c + k holds quant k of row c: bit 2c + k mod 2 of the first
        // pair's mask (k < 2) or the second's, which sit in the mask's low and high
        // halves. Each byte takes its mask byte from its own 128-bit lane of the
        // broadcast mask (a byte shuffle within lanes), then tests its bit.
        let pick: Vec<u64> = (0..2 * n)
            .map(|i| {
                let (c, k) = (i / 4, i % 4);
                16 * (i / 16) + if k < 2 { 0 } else { half / 8 } + c / 4
            })
            .collect();
        let bit = cst((0..2 * n)
            .map(|i| 1 << ((2 * (i / 4) + i % 2) % 8))
            .collect());
        // The pair's bits of the lanes from c0 (16 per 8 lanes).
        let pair_bits = |p: i64| -> R<IntValue<'ctx>> {
            let at = f.b.build_int_add(masks, self.tc(4 * p), "").map_err(e)?;
            let v = self.qdot_load(f, it.i32.into(), w, at)?.into_int_value();
            let b = &f.b;
            let v = b
                .build_right_shift(v, it.i32.const_int(2 * c0 as u64, false), false, "")
                .map_err(e)?;
            if half == 32 {
                return b.build_int_z_extend(v, mt, "").map_err(e);
            }
            let v = b.build_int_truncate(v, it.i16, "").map_err(e)?;
            b.build_int_z_extend(v, mt, "").map_err(e)
        };
        // The broadcast mask of pairs `p`, `p + 1` (and, with 8 lanes, `p + 8`,
        // `p + 9` in its upper half) as bytes.
        let wide = lanes == 8;
        let bmask = |p: i64| -> R<VectorValue<'ctx>> {
            let (mt, vm, parts): (IntType<'ctx>, VectorType<'ctx>, &[i64]) = if wide {
                (it.i64, it.i64.vec_type(4), &[0, 1, 8, 9])
            } else {
                (mt, vm, &[0, 1])
            };
            let mut m = mt.const_zero();
            for (j, &o) in parts.iter().enumerate() {
                let v = pair_bits(p + o)?;
                let b = &f.b;
                let v = b.build_int_z_extend_or_bit_cast(v, mt, "").map_err(e)?;
                let v = b
                    .build_left_shift(v, mt.const_int(half * j as u64, false), "")
                    .map_err(e)?;
                m = b.build_or(m, v, "").map_err(e)?;
            }
            let b = &f.b;
            let mv = b
                .build_insert_element(vm.get_undef(), m, it.i32.const_zero(), "")
                .map_err(e)?;
            let zeros =
                VectorType::const_vector(&vec![it.i32.const_zero(); vm.get_size() as usize]);
            let mv = b
                .build_shuffle_vector(mv, vm.get_undef(), zeros, "")
                .map_err(e)?;
            Ok(b.build_bit_cast(mv, vq, "").map_err(e)?.into_vector_value())
        };
        // `x | 16` where the quad byte's fifth bit is set, from the mask's bytes `at..`.
        let fifth =
            |x: VectorValue<'ctx>, mb: VectorValue<'ctx>, at: u64| -> R<VectorValue<'ctx>> {
                let mb = if wide {
                    // One in-lane byte shuffle (the mask is in every 8 bytes).
                    let idx = cst(pick.iter().map(|&i| (i % 16) + at).collect());
                    self.x86(f, "llvm.x86.avx2.pshuf.b", &[mb, idx])?
                        .into_vector_value()
                } else {
                    self.shuffle(f, mb, vq.get_undef(), &pick)?
                };
                let b = &f.b;
                let t = b.build_and(mb, bit, "").map_err(e)?;
                let set = b
                    .build_int_compare(inkwell::IntPredicate::EQ, t, bit, "")
                    .map_err(e)?;
                let add = b.build_int_s_extend(set, vq, "").map_err(e)?;
                let add = b.build_and(add, splat(16), "").map_err(e)?;
                b.build_or(x, add, "q5").map_err(e)
            };
        let inter = quad_interleave(n);
        let mut quads = vec![vq.const_zero(); 8];
        for p in 0..4i64 {
            let chunk = |c: i64| -> R<VectorValue<'ctx>> {
                let at = f.b.build_int_add(qs, self.tc(32 * c), "").map_err(e)?;
                Ok(self.qdot_load(f, vc.into(), w, at)?.into_vector_value())
            };
            let (a, b2) = (chunk(2 * p)?, chunk(2 * p + 1)?);
            let v = self.shuffle(f, a, b2, &inter)?;
            let b = &f.b;
            let lo = b.build_and(v, splat(15), "lo").map_err(e)?;
            let hi = b.build_right_shift(v, splat(4), false, "").map_err(e)?;
            let hi = b.build_and(hi, splat(15), "hi").map_err(e)?;
            if wide {
                let mb = bmask(2 * p)?;
                quads[p as usize] = fifth(lo, mb, 0)?;
                quads[p as usize + 4] = fifth(hi, mb, 4)?;
            } else {
                quads[p as usize] = fifth(lo, bmask(2 * p)?, 0)?;
                quads[p as usize + 4] = fifth(hi, bmask(2 * p + 8)?, 0)?;
            }
        }
        Ok(quads)
    }

    /// The head of the rows' block `blk` in a `Tile16` weight (`w` from byte `w_off`),
    /// lanes (weight rows) `c0..c0 + lanes`: the scales `d` and minimums `m` as f32
    /// ([`QDot`]'s: stored, `-8 d`, `-16 d`, Q4_K's `D · sc` and `-(Dmin · mn)`; none
    /// for Q8_0), the byte offset of the block's quants (lane `c0`'s) and of its fifth
    /// bits' masks. With `prefetch`, the block's bytes are asked for `QDOT_PREFETCH`
    /// ahead.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn packed_head(
        &self,
        f: &Frame<'ctx>,
        fmt: llmc_kernels::QFmt,
        (w, w_off): (PointerValue<'ctx>, IntValue<'ctx>),
        blk: IntValue<'ctx>,
        c0: u32,
        lanes: u32,
        prefetch: bool,
    ) -> R<(
        VectorValue<'ctx>,
        Option<VectorValue<'ctx>>,
        IntValue<'ctx>,
        IntValue<'ctx>,
    )> {
        let it = self.it;
        let e = llvm_err;
        let vh = it.f16.vec_type(lanes);
        let vf = it.f32.vec_type(lanes);
        let big = LANES as i64;
        // Q5_K: Q4_K's head and scales, each block's fifth bits' masks before its quants.
        let k5 = fmt == llmc_kernels::QFmt::Q5K;
        let k4 = fmt == llmc_kernels::QFmt::Q4K || k5;
        let q6 = fmt == llmc_kernels::QFmt::Q6K;
        let q3 = fmt == llmc_kernels::QFmt::Q3K;
        let xs = fmt == llmc_kernels::QFmt::IQ4XS;
        // The group holding the block (Q4_K, Q6_K, Q3_K, IQ4_XS: its super-block's) and
        // the block's quants within it.
        let b = &f.b;
        let (g, qoff, per_block) = if q6 || q3 || k4 || xs {
            use llmc_kernels::templates::pack::{
                TILE16_IQ4XS_QUANTS, TILE16_Q3K_BLOCK, TILE16_Q3K_QUANTS, TILE16_Q5K_BLOCK,
                TILE16_Q6K_BLOCK, TILE16_Q6K_QUANTS,
            };
            // Block j of its super-block's group: Q6_K's 384 bytes each from byte 288,
            // Q3_K's 192 (masks, then low bits) from byte 224, Q4_K's 256 from byte
            // 256, Q5_K's 320 (masks, then quants) from byte 256, IQ4_XS's 256 from
            // byte 128.
            let (first, stride) = if q6 {
                (TILE16_Q6K_QUANTS as i64, TILE16_Q6K_BLOCK as i64)
            } else if q3 {
                (TILE16_Q3K_QUANTS as i64 + 64, TILE16_Q3K_BLOCK as i64)
            } else if k5 {
                (256 + 64, TILE16_Q5K_BLOCK as i64)
            } else if xs {
                (TILE16_IQ4XS_QUANTS as i64, 32 * big / 2)
            } else {
                (256, 32 * big / 2)
            };
            let sb = b
                .build_right_shift(blk, self.tc(3), false, "sb")
                .map_err(e)?;
            let j = b.build_and(blk, self.tc(7), "j").map_err(e)?;
            let g = b
                .build_int_mul(sb, self.tc(big * fmt.block_bytes()), "")
                .map_err(e)?;
            let q = b.build_int_mul(j, self.tc(stride), "").map_err(e)?;
            let q = b.build_int_add(q, self.tc(first), "").map_err(e)?;
            (
                g,
                q,
                if q6 || q3 || k5 {
                    stride
                } else {
                    big * fmt.block_bytes() / 8
                },
            )
        } else if fmt.grouped() {
            // Block j of its group: the group's 16 scales (and minimums), then its
            // blocks' quants, 16 · 16 bytes each.
            let n = fmt.sub_blocks();
            let grp = b
                .build_right_shift(blk, self.tc(n.trailing_zeros() as i64), false, "grp")
                .map_err(e)?;
            let j = b.build_and(blk, self.tc(n - 1), "j").map_err(e)?;
            let g = b
                .build_int_mul(grp, self.tc(big * fmt.block_bytes()), "")
                .map_err(e)?;
            let q = b.build_int_mul(j, self.tc(16 * big), "").map_err(e)?;
            let q = b
                .build_int_add(q, self.tc(tile16_offsets(fmt)?.0), "")
                .map_err(e)?;
            (g, q, big * fmt.block_bytes() / n)
        } else {
            let g = b
                .build_int_mul(blk, self.tc(big * fmt.block_bytes()), "")
                .map_err(e)?;
            (g, self.tc(tile16_offsets(fmt)?.0), big * fmt.block_bytes())
        };
        let g = f.b.build_int_add(w_off, g, "g").map_err(e)?;
        let qs = f.b.build_int_add(g, qoff, "").map_err(e)?;
        if prefetch {
            let pf = it
                .intrinsic(self.module, "llvm.prefetch", &[it.ptr.into()])
                .ok_or_else(|| llvm_err("llvm.prefetch"))?;
            let i32c = |v: u64| it.i32.const_int(v, false).into();
            for line in 0..(per_block + 63) / 64 {
                let ahead = self.tc(super::QDOT_PREFETCH as i64 + 64 * line);
                let ahead = f.b.build_int_add(qs, ahead, "").map_err(e)?;
                // SAFETY: only an address for the prefetch hint; never dereferenced.
                let pp = unsafe { f.b.build_gep(it.i8, w, &[ahead], "") }.map_err(e)?;
                f.b.build_call(pf, &[pp.into(), i32c(0), i32c(3), i32c(1)], "")
                    .map_err(e)?;
            }
        }
        let qs =
            f.b.build_int_add(qs, self.tc(2 * c0 as i64), "qs")
                .map_err(e)?;
        let half = |at: i64| -> R<VectorValue<'ctx>> {
            let at =
                f.b.build_int_add(g, self.tc(at + 2 * c0 as i64), "")
                    .map_err(e)?;
            let h = self.qdot_load(f, vh.into(), w, at)?.into_vector_value();
            f.b.build_float_ext(h, vf, "").map_err(e)
        };
        let d = half(0)?;
        if xs {
            // Block j's 6-bit scale `ls` (`QFmt::IQ4XS`) lane-wise: bits 2 j, 2 j + 1 of
            // the rows' `scales_h`, the j mod 2 nibble of their `scales_l` byte j / 2.
            use llmc_kernels::templates::pack::tile16_iq4xs_scale;
            let b = &f.b;
            let j = b.build_and(blk, self.tc(7), "j").map_err(e)?;
            let vs = it.i16.vec_type(lanes);
            let at = b
                .build_int_add(g, self.tc(2 * big + 2 * c0 as i64), "")
                .map_err(e)?;
            let sh = self.qdot_load(f, vs.into(), w, at)?.into_vector_value();
            let b = &f.b;
            // A scalar shift amount (i64) as a vector of `ty`.
            let shift =
                |by: IntValue<'ctx>, ty: inkwell::types::IntType<'ctx>| -> R<VectorValue<'ctx>> {
                    let by = f.b.build_int_truncate(by, ty, "").map_err(e)?;
                    self.splat_i32(f, by, lanes)
                };
            let j2 = b.build_int_mul(j, self.tc(2), "").map_err(e)?;
            let sh =
                f.b.build_right_shift(sh, shift(j2, it.i16)?, false, "")
                    .map_err(e)?;
            let c16 = |k: u64| {
                VectorType::const_vector(&vec![it.i16.const_int(k, false); lanes as usize])
            };
            let sh = f.b.build_and(sh, c16(3), "").map_err(e)?;
            let sh = f.b.build_left_shift(sh, c16(4), "sh").map_err(e)?;
            let jh = f.b.build_right_shift(j, self.tc(1), false, "").map_err(e)?;
            let run = f.b.build_int_mul(jh, self.tc(big), "").map_err(e)?;
            let at =
                f.b.build_int_add(run, self.tc(tile16_iq4xs_scale(0, c0 as usize) as i64), "")
                    .map_err(e)?;
            let at = f.b.build_int_add(g, at, "").map_err(e)?;
            let sl = self
                .qdot_load(f, it.i8.vec_type(lanes).into(), w, at)?
                .into_vector_value();
            let j1 = f.b.build_and(j, self.tc(1), "").map_err(e)?;
            let j4 = f.b.build_int_mul(j1, self.tc(4), "").map_err(e)?;
            let sl =
                f.b.build_right_shift(sl, shift(j4, it.i8)?, false, "")
                    .map_err(e)?;
            let c8 =
                |k: u64| VectorType::const_vector(&vec![it.i8.const_int(k, false); lanes as usize]);
            let sl = f.b.build_and(sl, c8(15), "").map_err(e)?;
            let sl = f.b.build_int_z_extend(sl, vs, "").map_err(e)?;
            let ls = f.b.build_or(sl, sh, "ls").map_err(e)?;
            let ls = f.b.build_int_sub(ls, c16(32), "").map_err(e)?;
            let ls = f.b.build_signed_int_to_float(ls, vf, "").map_err(e)?;
            let d = f.b.build_float_mul(d, ls, "d").map_err(e)?;
            return Ok((d, None, qs, g));
        }
        if q6 {
            // d_lo and d_hi: D times the i8 scales of sub-blocks 2 j and 2 j + 1,
            // each stored as a run of the 16 rows' bytes.
            let j = f.b.build_and(blk, self.tc(7), "j").map_err(e)?;
            let vb = it.i8.vec_type(lanes);
            let mut ds = Vec::new();
            for h in 0..2 {
                let b = &f.b;
                let s = b.build_int_mul(j, self.tc(2 * big), "").map_err(e)?;
                let s = b
                    .build_int_add(s, self.tc(2 * big + h * big + c0 as i64), "")
                    .map_err(e)?;
                let at = b.build_int_add(g, s, "").map_err(e)?;
                let sc = self.qdot_load(f, vb.into(), w, at)?.into_vector_value();
                let b = &f.b;
                let sc = b.build_signed_int_to_float(sc, vf, "").map_err(e)?;
                ds.push(b.build_float_mul(d, sc, "d").map_err(e)?);
            }
            // The high bits follow the block's 256 bytes of nibbles.
            let hs = f.b.build_int_add(qs, self.tc(16 * big), "hs").map_err(e)?;
            return Ok((ds[0], Some(ds[1]), qs, hs));
        }
        if q3 {
            // d_lo and d_hi: D times the 6-bit scales of sub-blocks s = 2 j and
            // 2 j + 1 less 32 (`llmc_ir::quant_k::q3k_scales`), lane-wise from the 12
            // scale bytes stored as 12 runs of the 16 rows' bytes: the low four bits
            // from byte s mod 8 at shift 4 ⌊s / 8⌋ = 4 ⌊j / 4⌋, the high two from byte
            // 8 + s mod 4 = 8 + 2 (j mod 2) + h at shift 2 ⌊s / 4⌋ = 2 ⌊j / 2⌋.
            let b = &f.b;
            let j = b.build_and(blk, self.tc(7), "j").map_err(e)?;
            let vb = it.i8.vec_type(lanes);
            let ld = |t: IntValue<'ctx>| -> R<VectorValue<'ctx>> {
                let at = f.b.build_int_mul(t, self.tc(big), "").map_err(e)?;
                let at =
                    f.b.build_int_add(at, self.tc(2 * big + c0 as i64), "")
                        .map_err(e)?;
                let at = f.b.build_int_add(g, at, "").map_err(e)?;
                Ok(self.qdot_load(f, vb.into(), w, at)?.into_vector_value())
            };
            let c8 =
                |k: u64| VectorType::const_vector(&vec![it.i8.const_int(k, false); lanes as usize]);
            let shift = |by: IntValue<'ctx>| -> R<VectorValue<'ctx>> {
                let by = f.b.build_int_truncate(by, it.i8, "").map_err(e)?;
                self.splat_i32(f, by, lanes)
            };
            let b = &f.b;
            let j2 = b.build_int_mul(j, self.tc(2), "").map_err(e)?;
            let lo_sh = b.build_right_shift(j, self.tc(2), false, "").map_err(e)?;
            let lo_sh = b.build_int_mul(lo_sh, self.tc(4), "").map_err(e)?;
            let hi_sh = b.build_right_shift(j, self.tc(1), false, "").map_err(e)?;
            let hi_sh = b.build_int_mul(hi_sh, self.tc(2), "").map_err(e)?;
            let j1 = b.build_and(j, self.tc(1), "").map_err(e)?;
            let hi_run = b.build_int_mul(j1, self.tc(2), "").map_err(e)?;
            let hi_run = b.build_int_add(hi_run, self.tc(8), "").map_err(e)?;
            let (lo_sh, hi_sh) = (shift(lo_sh)?, shift(hi_sh)?);
            let mut ds = Vec::new();
            for h in 0..2 {
                let b = &f.b;
                let lo_run = b.build_int_add(j2, self.tc(h), "").map_err(e)?;
                let lo_run = b.build_and(lo_run, self.tc(7), "").map_err(e)?;
                let run = b.build_int_add(hi_run, self.tc(h), "").map_err(e)?;
                let lo = ld(lo_run)?;
                let hi = ld(run)?;
                let b = &f.b;
                let lo = b.build_right_shift(lo, lo_sh, false, "").map_err(e)?;
                let lo = b.build_and(lo, c8(15), "").map_err(e)?;
                let hi = b.build_right_shift(hi, hi_sh, false, "").map_err(e)?;
                let hi = b.build_and(hi, c8(3), "").map_err(e)?;
                let hi = b.build_left_shift(hi, c8(4), "").map_err(e)?;
                let sc = b.build_or(lo, hi, "").map_err(e)?;
                let sc = b.build_int_sub(sc, c8(32), "sc").map_err(e)?;
                let sc = b.build_signed_int_to_float(sc, vf, "").map_err(e)?;
                ds.push(b.build_float_mul(d, sc, "d").map_err(e)?);
            }
            // The block's masks, the 64 bytes before its low bits.
            let masks =
                f.b.build_int_sub(qs, self.tc(64 + 2 * c0 as i64), "qh")
                    .map_err(e)?;
            return Ok((ds[0], Some(ds[1]), qs, masks));
        }
        if k4 {
            // The 6-bit scale and minimum of sub-block j (QFmt::Q4K's branch-free
            // decode), lane-wise from the 12 scale bytes stored as 12 vectors of the
            // 16 rows' bytes.
            let b = &f.b;
            let j = b.build_and(blk, self.tc(7), "j").map_err(e)?;
            let vb = it.i8.vec_type(lanes);
            let ld = |t: IntValue<'ctx>| -> R<VectorValue<'ctx>> {
                let at = f.b.build_int_mul(t, self.tc(big), "").map_err(e)?;
                let at =
                    f.b.build_int_add(at, self.tc(64 + c0 as i64), "")
                        .map_err(e)?;
                let at = f.b.build_int_add(g, at, "").map_err(e)?;
                Ok(self.qdot_load(f, vb.into(), w, at)?.into_vector_value())
            };
            // Scale bytes j mod 4, j + 4 and j.
            let j3 = f.b.build_and(j, self.tc(3), "").map_err(e)?;
            let b0 = ld(j3)?;
            let b1 = ld(f.b.build_int_add(j, self.tc(4), "").map_err(e)?)?;
            let b2 = ld(j)?;
            let c8 =
                |k: u64| VectorType::const_vector(&vec![it.i8.const_int(k, false); lanes as usize]);
            let (sc, mn) = self.scale_min_k4(f, j, (b0, b1, b2), c8)?;
            let b = &f.b;
            let sc = b.build_unsigned_int_to_float(sc, vf, "").map_err(e)?;
            let mn = b.build_unsigned_int_to_float(mn, vf, "").map_err(e)?;
            let dmin = half(2 * big)?;
            let b = &f.b;
            let d = b.build_float_mul(d, sc, "d").map_err(e)?;
            let m = b.build_float_mul(dmin, mn, "").map_err(e)?;
            let m = b.build_float_neg(m, "m").map_err(e)?;
            // (Q5_K: the block's masks, the 64 bytes before its quants.)
            let masks = b
                .build_int_sub(qs, self.tc(64 + 2 * c0 as i64), "qh")
                .map_err(e)?;
            return Ok((d, Some(m), qs, masks));
        }
        let m = if fmt.stored_min() {
            Some(half(2 * big)?)
        } else if let Some(k) = fmt.offset_min() {
            let k = self.splat_f32(f, it.f32.const_float(k as f64), lanes)?;
            Some(f.b.build_float_mul(d, k, "m").map_err(e)?)
        } else {
            None
        };
        let masks =
            f.b.build_int_add(g, self.tc(tile16_offsets(fmt)?.1), "qh")
                .map_err(e)?;
        Ok((d, m, qs, masks))
    }

    /// A 4-bit `Tile16` chunk's two pair vectors (`vw`, i16) from its raw bytes `raw`:
    /// the low nibbles' and the high nibbles', or for IQ4_NL the table's signed levels
    /// for them (looked up on the bytes, then sign-extended).
    fn nibble_pairs(
        &self,
        f: &Frame<'ctx>,
        fmt: llmc_kernels::QFmt,
        raw: VectorValue<'ctx>,
        vw: VectorType<'ctx>,
    ) -> R<(VectorValue<'ctx>, VectorValue<'ctx>)> {
        let it = self.it;
        let e = llvm_err;
        let n = vw.get_size() as usize;
        let b = &f.b;
        if fmt.iq4() {
            let c8 = |k: u64| VectorType::const_vector(&vec![it.i8.const_int(k, false); n]);
            let lo = b.build_and(raw, c8(15), "lo").map_err(e)?;
            let hi = b.build_right_shift(raw, c8(4), false, "hi").map_err(e)?;
            let lo = self.iq4_lookup(f, lo)?;
            let hi = self.iq4_lookup(f, hi)?;
            let b = &f.b;
            return Ok((
                b.build_int_s_extend(lo, vw, "").map_err(e)?,
                b.build_int_s_extend(hi, vw, "").map_err(e)?,
            ));
        }
        let c16 = |k: u64| VectorType::const_vector(&vec![it.i16.const_int(k, false); n]);
        let v = b.build_int_z_extend(raw, vw, "").map_err(e)?;
        let lo = b.build_and(v, c16(15), "lo").map_err(e)?;
        let hi = b.build_right_shift(v, c16(4), false, "hi").map_err(e)?;
        Ok((lo, hi))
    }

    /// Q5_0/Q5_1 (`fmt`): tile vector `v` of pair `p` (lanes of weight rows
    /// `c0..c0 + lanes`) with the fifth bits of the `Tile16` mask of pair `p` (the u32
    /// at byte `masks + 4 p` of `w`) or-ed in as 16; other formats: `v`.
    #[allow(clippy::too_many_arguments)]
    fn tile16_fifth(
        &self,
        f: &Frame<'ctx>,
        fmt: llmc_kernels::QFmt,
        w: PointerValue<'ctx>,
        masks: IntValue<'ctx>,
        p: i64,
        c0: u32,
        lanes: u32,
        v: VectorValue<'ctx>,
    ) -> R<VectorValue<'ctx>> {
        if !fmt.tile_fifth() {
            return Ok(v);
        }
        self.or_mask_bits(f, w, masks, p, c0, lanes, v, 16)
    }

    /// Tile vector `v` of pair `p` (lanes of weight rows `c0..c0 + lanes`) with
    /// `worth` or-ed into each lane whose bit is set in the `Tile16` mask of pair `p`
    /// (the u32 at byte `masks + 4 p` of `w`; `templates::pack::tile16_fifth`): Q5's
    /// fifth bits (16), Q3_K's high bits (4).
    #[allow(clippy::too_many_arguments)]
    fn or_mask_bits(
        &self,
        f: &Frame<'ctx>,
        w: PointerValue<'ctx>,
        masks: IntValue<'ctx>,
        p: i64,
        c0: u32,
        lanes: u32,
        v: VectorValue<'ctx>,
        worth: u64,
    ) -> R<VectorValue<'ctx>> {
        let it = self.it;
        let e = llvm_err;
        let at = f.b.build_int_add(masks, self.tc(4 * p), "").map_err(e)?;
        let bits = self.qdot_load(f, it.i32.into(), w, at)?.into_int_value();
        let b = &f.b;
        let bits = b
            .build_right_shift(bits, it.i32.const_int(2 * c0 as u64, false), false, "")
            .map_err(e)?;
        let n = 2 * lanes;
        let bits = b
            .build_int_truncate_or_bit_cast(bits, if n == 32 { it.i32 } else { it.i16 }, "")
            .map_err(e)?;
        if n == 16 {
            // Without mask registers the lane test is spelled out: each lane keeps its
            // own bit of the broadcast (from a bit-cast mask LLVM widened each lane
            // through a compare, a shift and an and), then AVX2 turns it into 16 with
            // a sign, and the portable form with a compare and an and.
            let vt = it.i16.vec_type(16);
            let one = b
                .build_insert_element(vt.get_undef(), bits, it.i32.const_zero(), "")
                .map_err(e)?;
            let zeros = VectorType::const_vector(&[it.i32.const_zero(); 16]);
            let all = b
                .build_shuffle_vector(one, vt.get_undef(), zeros, "")
                .map_err(e)?;
            let lane_bits: Vec<_> = (0..16).map(|i| it.i16.const_int(1 << i, false)).collect();
            let lane_bits = VectorType::const_vector(&lane_bits);
            let x = b.build_and(all, lane_bits, "").map_err(e)?;
            if self.target.avx2() {
                // `vpsignw`: `worth` where the lane's bit is set (x > 0), 0 where it is
                // not; lane 15's bit is the sign, so its constant is -worth.
                // Broadcast, and, sign, or: four instructions.
                let mut c = vec![it.i16.const_int(worth, false); 16];
                c[15] = it.i16.const_int((-(worth as i16)) as u16 as u64, false);
                let add = self.x86(
                    f,
                    "llvm.x86.avx2.psign.w",
                    &[VectorType::const_vector(&c), x],
                )?;
                return b.build_or(v, add.into_vector_value(), "q5").map_err(e);
            }
            let set = b
                .build_int_compare(inkwell::IntPredicate::EQ, x, lane_bits, "")
                .map_err(e)?;
            let wide = b.build_int_s_extend(set, vt, "").map_err(e)?;
            let worth = VectorType::const_vector(&[it.i16.const_int(worth, false); 16]);
            let add = b.build_and(wide, worth, "").map_err(e)?;
            return b.build_or(v, add, "q5").map_err(e);
        }
        let mask = b
            .build_bit_cast(bits, it.i1.vec_type(n), "")
            .map_err(e)?
            .into_vector_value();
        let vw = it.i16.vec_type(n);
        let worth = VectorType::const_vector(&vec![it.i16.const_int(worth, false); n as usize]);
        let add = b
            .build_select(mask, worth, vw.const_zero(), "")
            .map_err(e)?
            .into_vector_value();
        b.build_or(v, add, "q5").map_err(e)
    }

    /// `-128 d`: the minimum of Q8_0 quants read as `q + 128` (`n` lanes).
    fn offset8_min(&self, f: &Frame<'ctx>, d: VectorValue<'ctx>, n: u32) -> R<VectorValue<'ctx>> {
        let k = self.splat_f32(f, self.it.f32.const_float(-128.0), n)?;
        f.b.build_float_mul(d, k, "m").map_err(llvm_err)
    }

    /// An integer (i32, or any width) broadcast to `n` lanes.
    fn splat_i32(&self, f: &Frame<'ctx>, x: IntValue<'ctx>, n: u32) -> R<VectorValue<'ctx>> {
        let it = self.it;
        let vt = x.get_type().vec_type(n);
        let zeros = VectorType::const_vector(&vec![it.i32.const_zero(); n as usize]);
        let b = &f.b;
        let v = b
            .build_insert_element(vt.get_undef(), x, it.i32.const_zero(), "")
            .map_err(llvm_err)?;
        b.build_shuffle_vector(v, vt.get_undef(), zeros, "")
            .map_err(llvm_err)
    }

    /// `acc + Σ pairs`: lane `l` of the i32 result adds `w[2l] x[2l] + w[2l+1] x[2l+1]`
    /// (i16 lanes of `w` and of `x`, given as `lanes` i32), exactly.
    fn pair_dot(
        &self,
        f: &Frame<'ctx>,
        acc: VectorValue<'ctx>,
        w: VectorValue<'ctx>,
        x: VectorValue<'ctx>,
        lanes: u32,
    ) -> R<VectorValue<'ctx>> {
        let it = self.it;
        let e = llvm_err;
        let vw = it.i16.vec_type(2 * lanes);
        let b = &f.b;
        let x16 = b.build_bit_cast(x, vw, "").map_err(e)?.into_vector_value();
        if self.target.vnni() {
            let name = if lanes == 16 {
                "llvm.x86.avx512.vpdpwssd.512"
            } else {
                "llvm.x86.avx512.vpdpwssd.256"
            };
            return self.vnni(f, name, [acc, w, x16]);
        }
        let prod = if lanes == 16 && self.target.avx512() {
            self.x86(f, "llvm.x86.avx512.pmaddw.d.512", &[w, x16])?
                .into_vector_value()
        } else if lanes == 8 && self.target.avx2() {
            self.x86(f, "llvm.x86.avx2.pmadd.wd", &[w, x16])?
                .into_vector_value()
        } else if lanes == 8 && self.x86_64() {
            // SSE2's pmaddwd on each half (the portable form below has no pmulld
            // before SSE4.1 and measured 2.5x slower prefill).
            let lo: Vec<u64> = (0..8).collect();
            let hi: Vec<u64> = (8..16).collect();
            let mut halves = Vec::new();
            for m in [&lo, &hi] {
                let wh = self.shuffle(f, w, w, m)?;
                let xh = self.shuffle(f, x16, x16, m)?;
                halves.push(
                    self.x86(f, "llvm.x86.sse2.pmadd.wd", &[wh, xh])?
                        .into_vector_value(),
                );
            }
            self.shuffle(f, halves[0], halves[1], &(0..8).collect::<Vec<u64>>())?
        } else {
            let vi2 = it.i32.vec_type(2 * lanes);
            let ws = b.build_int_s_extend(w, vi2, "").map_err(e)?;
            let xs = b.build_int_s_extend(x16, vi2, "").map_err(e)?;
            let p = b.build_int_mul(ws, xs, "").map_err(e)?;
            let ev: Vec<u64> = (0..lanes as u64).map(|l| 2 * l).collect();
            let od: Vec<u64> = (0..lanes as u64).map(|l| 2 * l + 1).collect();
            let a = self.shuffle(f, p, p, &ev)?;
            let c = self.shuffle(f, p, p, &od)?;
            f.b.build_int_add(a, c, "").map_err(e)?
        };
        f.b.build_int_add(acc, prod, "").map_err(e)
    }
}
