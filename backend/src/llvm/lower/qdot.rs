//! Lowering of the loop IR's block-quantized dot product ([`QDot`]), the quantized
//! linear's inner loop. With AVX2 (and FMA), a block is two `vpmaddwd` per row (the
//! 32 weight quants widened to i16 once per weight block, times the int16
//! activations), a quad of rows' partial sums reduced by shuffles to one vector of
//! block sums, and two 8-lane FMAs per quad and block pair: [`QDot`]'s fixed
//! arithmetic, bit for bit. Other x86-64 CPUs use SSE2's 8-lane `pmaddwd` (four per
//! block); other targets get portable vector IR (widen, multiply, reduce) that LLVM
//! legalises; both keep lane-wise partial sums (same sums, other rounding).

use super::{llvm_err, Frame, Lowering, R};
use inkwell::types::BasicTypeEnum;
use inkwell::values::{
    BasicValue, BasicValueEnum, FloatValue, IntValue, PointerValue, VectorValue,
};
use inkwell::IntPredicate;
use llmc_kernels::{QDot, QFmt, VarId};

mod tile;

/// How far ahead (bytes) the AVX2 `QDot` prefetches the weight row.
const QDOT_PREFETCH: u64 = 4096;

/// The buffers a [`QDot`] reads.
struct QBufs<'ctx> {
    w: PointerValue<'ctx>,
    xq: PointerValue<'ctx>,
    /// `xq` holds int8 quants (else int16).
    xq8: bool,
    xd: PointerValue<'ctx>,
    xs: PointerValue<'ctx>,
}

/// A loop `for index in 0..trips` whose body the caller emits between
/// [`Lowering::counted_loop`] and [`Lowering::close_loop`].
pub(super) struct CountedLoop<'ctx> {
    ctr: PointerValue<'ctx>,
    pub(super) index: IntValue<'ctx>,
    head: inkwell::basic_block::BasicBlock<'ctx>,
    exit: inkwell::basic_block::BasicBlock<'ctx>,
}

/// What every block of [`QDot`]'s generic form reads: the row's weight offset, the
/// buffers, each activation row's first block and scale slot, and each row's vector
/// and scalar accumulators.
struct GenericDot<'ctx> {
    w_off: IntValue<'ctx>,
    wp: PointerValue<'ctx>,
    xqp: PointerValue<'ctx>,
    xdp: PointerValue<'ctx>,
    xsp: PointerValue<'ctx>,
    xq8: bool,
    x_blk: Vec<IntValue<'ctx>>,
    x_sc: Vec<IntValue<'ctx>>,
    vacc: Vec<PointerValue<'ctx>>,
    sacc: Vec<PointerValue<'ctx>>,
}

/// A Q2_K super-block's values that its eight blocks share ([`QFmt::Q2K`]).
struct Q2kSuper<'ctx> {
    d: FloatValue<'ctx>,
    neg_dmin: FloatValue<'ctx>,
    /// Quant bytes 0..16, 16..32, 32..48, 48..64, zero-extended.
    qs: [VectorValue<'ctx>; 4],
    /// The 16 scales (low nibbles) and minimums (high nibbles).
    sc: VectorValue<'ctx>,
    mn: VectorValue<'ctx>,
}

impl<'ctx> Lowering<'ctx, '_> {
    /// Opens a counted loop: counter slot, head test, builder left in the body.
    pub(super) fn counted_loop(
        &self,
        f: &Frame<'ctx>,
        what: &str,
        var: &str,
        trips: u64,
    ) -> R<CountedLoop<'ctx>> {
        self.counted_loop_to(f, what, var, self.it.i64.const_int(trips, true))
    }

    /// [`Self::counted_loop`] with a trip count known only at run time.
    pub(super) fn counted_loop_to(
        &self,
        f: &Frame<'ctx>,
        what: &str,
        var: &str,
        trips: IntValue<'ctx>,
    ) -> R<CountedLoop<'ctx>> {
        let it = self.it;
        let ctr = f.allocas.build_alloca(it.i64, var).map_err(llvm_err)?;
        f.b.build_store(ctr, it.i64.const_zero())
            .map_err(llvm_err)?;
        let (head, body, exit) = self.blocks(f, what);
        let b = &f.b;
        b.build_unconditional_branch(head).map_err(llvm_err)?;
        b.position_at_end(head);
        let index = b
            .build_load(it.i64, ctr, var)
            .map_err(llvm_err)?
            .into_int_value();
        let more = b
            .build_int_compare(IntPredicate::SLT, index, trips, "")
            .map_err(llvm_err)?;
        b.build_conditional_branch(more, body, exit)
            .map_err(llvm_err)?;
        b.position_at_end(body);
        Ok(CountedLoop {
            ctr,
            index,
            head,
            exit,
        })
    }

    /// Closes a [`CountedLoop`]: increments the counter, branches back, continues at
    /// the exit.
    pub(super) fn close_loop(&self, f: &Frame<'ctx>, lp: &CountedLoop<'ctx>) -> R<()> {
        let b = &f.b;
        let next = b
            .build_int_add(lp.index, self.it.i64.const_int(1, false), "")
            .map_err(llvm_err)?;
        b.build_store(lp.ctr, next).map_err(llvm_err)?;
        b.build_unconditional_branch(lp.head).map_err(llvm_err)?;
        b.position_at_end(lp.exit);
        Ok(())
    }

    /// Σ of the 8 f32 lanes of `v`, added pairwise so the shuffles stay short.
    fn hsum8(
        &self,
        b: &inkwell::builder::Builder<'ctx>,
        v: VectorValue<'ctx>,
    ) -> R<FloatValue<'ctx>> {
        let mut lanes = Vec::with_capacity(8);
        for l in 0..8 {
            lanes.push(
                b.build_extract_element(v, self.it.i32.const_int(l, false), "")
                    .map_err(llvm_err)?
                    .into_float_value(),
            );
        }
        while lanes.len() > 1 {
            let mut nx = Vec::with_capacity(lanes.len().div_ceil(2));
            for p in lanes.chunks(2) {
                nx.push(match p {
                    [x, y] => b.build_float_add(*x, *y, "").map_err(llvm_err)?,
                    _ => p[0],
                });
            }
            lanes = nx;
        }
        Ok(lanes[0])
    }

    /// Whether activation-quant buffer `id` holds int8 quants (else int16).
    pub(super) fn xq8(&self, id: llmc_kernels::BufId) -> bool {
        self.k.buf(id).ty == llmc_kernels::Ty::I8
    }

    /// Elements `16 half .. 16 half + 16` of activation block `xb` of `xq` as
    /// `<16 x i16>` (int8 quants sign-extended).
    fn xq_load16(
        &self,
        f: &Frame<'ctx>,
        xq: PointerValue<'ctx>,
        xq8: bool,
        xb: IntValue<'ctx>,
        half: i64,
    ) -> R<VectorValue<'ctx>> {
        let it = self.it;
        let c64 = |k: i64| it.i64.const_int(k as u64, true);
        let es = if xq8 { 1 } else { 2 };
        let b = &f.b;
        let at = b.build_int_mul(xb, c64(32 * es), "").map_err(llvm_err)?;
        let at = b
            .build_int_add(at, c64(16 * half * es), "")
            .map_err(llvm_err)?;
        let v16w = it.i16.vec_type(16);
        if !xq8 {
            return Ok(self.qdot_load(f, v16w.into(), xq, at)?.into_vector_value());
        }
        let raw = self
            .qdot_load(f, it.i8.vec_type(16).into(), xq, at)?
            .into_vector_value();
        f.b.build_int_s_extend(raw, v16w, "xq").map_err(llvm_err)
    }

    fn qdot_load(
        &self,
        f: &Frame<'ctx>,
        ty: BasicTypeEnum<'ctx>,
        base: PointerValue<'ctx>,
        off: IntValue<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        let it = self.it;
        // SAFETY: offsets come from the kernel, whose accesses the loop-IR interpreter
        // checks against the same buffer sizes in tests.
        let p = unsafe { f.b.build_gep(it.i8, base, &[off], "") }.map_err(llvm_err)?;
        let v = f.b.build_load(ty, p, "").map_err(llvm_err)?;
        if let Some(i) = v.as_instruction_value() {
            i.set_alignment(1).map_err(llvm_err)?;
        }
        Ok(v)
    }

    /// The 32 quants of a `q8_0_2of4` block ([`QFmt::Q8_0S24`]) whose header is at
    /// `wb` and codes at `qs`, as two `<16 x i8>` halves: the codes expanded by the mask
    /// ([`Self::expand_bytes`]), zeros where it is clear; the second half's codes start
    /// after the first half's `popcount(mask & 0xffff)`.
    fn s24_halves(
        &self,
        f: &Frame<'ctx>,
        w: PointerValue<'ctx>,
        wb: IntValue<'ctx>,
        qs: IntValue<'ctx>,
    ) -> R<(VectorValue<'ctx>, VectorValue<'ctx>)> {
        let it = self.it;
        let e = llvm_err;
        let at =
            f.b.build_int_add(wb, it.i64.const_int(2, false), "")
                .map_err(e)?;
        let mask = self.qdot_load(f, it.i32.into(), w, at)?.into_int_value();
        let lo_bits =
            f.b.build_and(mask, it.i32.const_int(0xffff, false), "")
                .map_err(e)?;
        let n_lo = self.popcount_i64(f, lo_bits)?;
        let hi_at = f.b.build_int_add(qs, n_lo, "").map_err(e)?;
        let hi_bits =
            f.b.build_right_shift(mask, it.i32.const_int(16, false), false, "")
                .map_err(e)?;
        let bits16 = |v: IntValue<'ctx>| f.b.build_int_truncate(v, it.i16, "").map_err(e);
        Ok((
            self.expand_bytes(f, w, qs, bits16(mask)?)?,
            self.expand_bytes(f, w, hi_at, bits16(hi_bits)?)?,
        ))
    }

    /// As many bytes as `bits` has bits (16 or 32), from byte `at` of `w` by the mask
    /// `bits`: set lanes take consecutive bytes, the others 0
    /// (`llvm.masked.expandload`: one `vpexpandb` with AVX-512 VBMI2, element by element
    /// elsewhere).
    pub(super) fn expand_bytes(
        &self,
        f: &Frame<'ctx>,
        w: PointerValue<'ctx>,
        at: IntValue<'ctx>,
        bits: IntValue<'ctx>,
    ) -> R<VectorValue<'ctx>> {
        let it = self.it;
        let e = llvm_err;
        let n = bits.get_type().get_bit_width();
        let vb = it.i8.vec_type(n);
        let expand = it
            .intrinsic(self.module, "llvm.masked.expandload", &[vb.into()])
            .ok_or_else(|| llvm_err("llvm.masked.expandload"))?;
        let b = &f.b;
        let mv = b.build_bit_cast(bits, it.i1.vec_type(n), "").map_err(e)?;
        // SAFETY: the caller's bytes lie inside the weight; the mask says how many are
        // read.
        let p = unsafe { b.build_gep(it.i8, w, &[at], "") }.map_err(e)?;
        Ok(
            b.build_call(expand, &[p.into(), mv.into(), vb.const_zero().into()], "")
                .map_err(e)?
                .try_as_basic_value()
                .basic()
                .ok_or_else(|| llvm_err("expandload"))?
                .into_vector_value(),
        )
    }

    /// The number of set bits of the i32 `v`, as an i64.
    pub(super) fn popcount_i64(&self, f: &Frame<'ctx>, v: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let it = self.it;
        let ctpop = it
            .intrinsic(self.module, "llvm.ctpop", &[it.i32.into()])
            .ok_or_else(|| llvm_err("llvm.ctpop"))?;
        let c =
            f.b.build_call(ctpop, &[v.into()], "")
                .map_err(llvm_err)?
                .try_as_basic_value()
                .basic()
                .ok_or_else(|| llvm_err("ctpop"))?
                .into_int_value();
        f.b.build_int_z_extend(c, it.i64, "").map_err(llvm_err)
    }

    /// Byte offsets of block `blk` of the row at `w_off` in a format with one scale per
    /// block or per group ([`QFmt::grouped`]): where its scale (and minimum) are, and
    /// where its quants start. A group format's block is sub-block `blk mod n` of group
    /// `blk / n` (16 bytes of nibbles each).
    pub(super) fn block_at(
        &self,
        f: &Frame<'ctx>,
        fmt: QFmt,
        w_off: IntValue<'ctx>,
        blk: IntValue<'ctx>,
    ) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
        let it = self.it;
        let b = &f.b;
        let e = llvm_err;
        let c64 = |k: i64| it.i64.const_int(k as u64, true);
        let n = fmt.sub_blocks();
        let (grp, sub) = if fmt.grouped() {
            let sh = n.trailing_zeros() as i64;
            (
                b.build_right_shift(blk, c64(sh), false, "grp").map_err(e)?,
                Some(b.build_and(blk, c64(n - 1), "sub").map_err(e)?),
            )
        } else {
            (blk, None)
        };
        let wb = b
            .build_int_mul(grp, c64(fmt.block_bytes()), "")
            .map_err(e)?;
        let wb = b.build_int_add(w_off, wb, "wb").map_err(e)?;
        let mut qs = b.build_int_add(wb, c64(fmt.qs_offset()), "qs").map_err(e)?;
        if let Some(j) = sub {
            let j16 = b.build_int_mul(j, c64(16), "").map_err(e)?;
            qs = b.build_int_add(qs, j16, "qs").map_err(e)?;
        }
        Ok((wb, qs))
    }

    /// Q4_K or Q5_K (`fmt`) block `blk` of the row at `w_off` ([`QFmt::Q4K`]): its
    /// scale `D · sc_j`, minimum `-(Dmin · mn_j)`, the byte offset of the 32 bytes
    /// holding its quants, `j mod 2` (high nibbles when 1), and for Q5_K the fifth
    /// bits' values (`16` or `0`) as two `<16 x i8>`. The 6-bit scale and minimum come
    /// from [`QFmt::Q4K`]'s branch-free decode.
    #[allow(clippy::type_complexity)]
    fn q4k_block(
        &self,
        f: &Frame<'ctx>,
        fmt: QFmt,
        w: PointerValue<'ctx>,
        w_off: IntValue<'ctx>,
        blk: IntValue<'ctx>,
    ) -> R<(
        FloatValue<'ctx>,
        FloatValue<'ctx>,
        IntValue<'ctx>,
        IntValue<'ctx>,
        Option<(VectorValue<'ctx>, VectorValue<'ctx>)>,
    )> {
        let it = self.it;
        let b = &f.b;
        let c64 = |k: u64| it.i64.const_int(k, false);
        let c8 = |k: u64| it.i8.const_int(k, false);
        let e = llvm_err;
        let sb = b.build_right_shift(blk, c64(3), false, "sb").map_err(e)?;
        let j = b.build_and(blk, c64(7), "j").map_err(e)?;
        let sbo = b
            .build_int_mul(sb, c64(fmt.block_bytes() as u64), "")
            .map_err(e)?;
        let sbo = b.build_int_add(w_off, sbo, "sbo").map_err(e)?;
        let ld8 = |off: IntValue<'ctx>| -> R<IntValue<'ctx>> {
            let at = f.b.build_int_add(sbo, off, "").map_err(e)?;
            Ok(self.qdot_load(f, it.i8.into(), w, at)?.into_int_value())
        };
        let j3 = b.build_and(j, c64(3), "").map_err(e)?;
        let b0 = ld8(b.build_int_add(j3, c64(4), "").map_err(e)?)?;
        let b = &f.b;
        let b1 = ld8(b.build_int_add(j, c64(8), "").map_err(e)?)?;
        let b = &f.b;
        let b2 = ld8(b.build_int_add(j, c64(4), "").map_err(e)?)?;
        let (sc, mn) = self.scale_min_k4(f, j, (b0, b1, b2), c8)?;
        let big_d = self.qdot_load(f, it.f16.into(), w, sbo)?.into_float_value();
        let b = &f.b;
        let big_d = b.build_float_ext(big_d, it.f32, "").map_err(e)?;
        let at2 = b.build_int_add(sbo, c64(2), "").map_err(e)?;
        let dmin = self.qdot_load(f, it.f16.into(), w, at2)?.into_float_value();
        let b = &f.b;
        let dmin = b.build_float_ext(dmin, it.f32, "").map_err(e)?;
        let scf = b.build_unsigned_int_to_float(sc, it.f32, "").map_err(e)?;
        let mnf = b.build_unsigned_int_to_float(mn, it.f32, "").map_err(e)?;
        let d = b.build_float_mul(big_d, scf, "d").map_err(e)?;
        let m = b.build_float_mul(dmin, mnf, "").map_err(e)?;
        let m = b.build_float_neg(m, "m").map_err(e)?;
        let g = b.build_right_shift(j, c64(1), false, "").map_err(e)?;
        let g = b.build_int_mul(g, c64(32), "").map_err(e)?;
        let qs = b
            .build_int_add(sbo, c64(fmt.qs_offset() as u64), "")
            .map_err(e)?;
        let qs = b.build_int_add(qs, g, "qs").map_err(e)?;
        let odd = b.build_and(j, c64(1), "odd").map_err(e)?;
        if fmt != QFmt::Q5K {
            return Ok((d, m, qs, odd, None));
        }
        // ((qh[e] >> j) & 1) << 4 for the 32 elements, qh at byte 16.
        let v16b = it.i8.vec_type(16);
        let shv = self.splat16(f, j, it.i8)?;
        let cst = |k: u64| inkwell::types::VectorType::const_vector(&[c8(k); 16]);
        let mut bits = Vec::new();
        for h in 0..2u64 {
            let at = f.b.build_int_add(sbo, c64(16 + 16 * h), "").map_err(e)?;
            let v = self.qdot_load(f, v16b.into(), w, at)?.into_vector_value();
            let b = &f.b;
            let v = b.build_right_shift(v, shv, false, "").map_err(e)?;
            let v = b.build_and(v, cst(1), "").map_err(e)?;
            bits.push(b.build_left_shift(v, cst(4), "q5h").map_err(e)?);
        }
        Ok((d, m, qs, odd, Some((bits[0], bits[1]))))
    }

    /// The 6-bit scale and minimum of sub-block `j` (i64) of a Q4_K/Q5_K super-block
    /// from its scale bytes `j mod 4`, `j + 4` and `j` (`bytes`: i8 scalars, or
    /// vectors of them lane by lane; `c8` makes the matching constant), branch-free
    /// (`llmc_ir::quant_k::scale_min_k4`).
    pub(super) fn scale_min_k4<T>(
        &self,
        f: &Frame<'ctx>,
        j: IntValue<'ctx>,
        (b0, b1, b2): (T, T, T),
        c8: impl Fn(u64) -> T,
    ) -> R<(T, T)>
    where
        T: inkwell::values::IntMathValue<'ctx>
            + BasicValue<'ctx>
            + TryFrom<BasicValueEnum<'ctx>>
            + Copy,
    {
        let e = llvm_err;
        let b = &f.b;
        let top = |v: T| -> R<T> {
            let t = b.build_right_shift(v, c8(6), false, "").map_err(e)?;
            b.build_left_shift(t, c8(4), "").map_err(e)
        };
        let four = self.it.i64.const_int(4, false);
        let low = b
            .build_int_compare(IntPredicate::ULT, j, four, "low")
            .map_err(e)?;
        let sc_lo = b.build_and(b0, c8(63), "").map_err(e)?;
        let t = b.build_and(b1, c8(15), "").map_err(e)?;
        let sc_hi = b.build_or(t, top(b0)?, "").map_err(e)?;
        let mn_lo = b.build_and(b1, c8(63), "").map_err(e)?;
        let t = b.build_right_shift(b1, c8(4), false, "").map_err(e)?;
        let mn_hi = b.build_or(t, top(b2)?, "").map_err(e)?;
        let pick = |lo: T, hi: T, name: &str| -> R<T> {
            let v = b.build_select(low, lo, hi, name).map_err(e)?;
            T::try_from(v).map_err(|_| llvm_err("scale_min_k4: select type"))
        };
        Ok((pick(sc_lo, sc_hi, "sc")?, pick(mn_lo, mn_hi, "mn")?))
    }

    /// IQ4_NL's levels for nibbles (`<n x i8>`, 0..15, `n` a multiple of 16): with AVX2
    /// one `pshufb` of the table per 16 (SSSE3), 32 (AVX2) or 64 (AVX-512 BW) bytes,
    /// else a tree of selects on the nibbles' bits.
    pub(super) fn iq4_lookup(
        &self,
        f: &Frame<'ctx>,
        nib: VectorValue<'ctx>,
    ) -> R<VectorValue<'ctx>> {
        let it = self.it;
        let e = llvm_err;
        let kv = llmc_ir::quant::KVALUES_IQ4NL;
        let n = nib.get_type().get_size();
        let splat = |v: i8| {
            inkwell::types::VectorType::const_vector(&vec![
                it.i8.const_int(v as u8 as u64, false);
                n as usize
            ])
        };
        if self.target.avx2() {
            // The table in every 128-bit lane (pshufb looks up within its lane).
            let table = inkwell::types::VectorType::const_vector(
                &(0..n as usize)
                    .map(|i| it.i8.const_int(kv[i % 16] as u8 as u64, false))
                    .collect::<Vec<_>>(),
            );
            let name = match n {
                16 => Some("llvm.x86.ssse3.pshuf.b.128"),
                32 => Some("llvm.x86.avx2.pshuf.b"),
                64 if self.target.avx512() => Some("llvm.x86.avx512.pshuf.b.512"),
                _ => None,
            };
            if let Some(name) = name {
                return Ok(self.x86(f, name, &[table, nib])?.into_vector_value());
            }
        }
        // Level l's vectors, halved by one bit per round (bit 0 first).
        let mut level: Vec<VectorValue<'ctx>> = kv.iter().map(|&v| splat(v)).collect();
        for bit in 0..4u32 {
            let mask = splat(1 << bit);
            let t = f.b.build_and(nib, mask, "").map_err(e)?;
            let set =
                f.b.build_int_compare(IntPredicate::NE, t, it.i8.vec_type(n).const_zero(), "")
                    .map_err(e)?;
            let mut next = Vec::with_capacity(level.len() / 2);
            for p in level.chunks(2) {
                next.push(
                    f.b.build_select(set, p[1], p[0], "")
                        .map_err(e)?
                        .into_vector_value(),
                );
            }
            level = next;
        }
        Ok(level[0])
    }

    /// IQ4_XS block `blk` of the row at `w_off` ([`QFmt::IQ4XS`]): `D · (ls - 32)` and
    /// the byte offset of its 16 bytes of nibbles.
    fn iq4xs_block(
        &self,
        f: &Frame<'ctx>,
        w: PointerValue<'ctx>,
        w_off: IntValue<'ctx>,
        blk: IntValue<'ctx>,
    ) -> R<(FloatValue<'ctx>, IntValue<'ctx>)> {
        let it = self.it;
        let e = llvm_err;
        let c64 = |k: u64| it.i64.const_int(k, false);
        let b = &f.b;
        let sb = b.build_right_shift(blk, c64(3), false, "sb").map_err(e)?;
        let j = b.build_and(blk, c64(7), "j").map_err(e)?;
        let sbo = b
            .build_int_mul(sb, c64(QFmt::IQ4XS.block_bytes() as u64), "")
            .map_err(e)?;
        let sbo = b.build_int_add(w_off, sbo, "sbo").map_err(e)?;
        let at = b.build_int_add(sbo, c64(2), "").map_err(e)?;
        let sh = self.qdot_load(f, it.i16.into(), w, at)?.into_int_value();
        let b = &f.b;
        let sh = b.build_int_z_extend(sh, it.i64, "").map_err(e)?;
        let j2 = b.build_int_mul(j, c64(2), "").map_err(e)?;
        let sh = b.build_right_shift(sh, j2, false, "").map_err(e)?;
        let sh = b.build_and(sh, c64(3), "").map_err(e)?;
        let sh = b.build_left_shift(sh, c64(4), "").map_err(e)?;
        let jh = b.build_right_shift(j, c64(1), false, "").map_err(e)?;
        let at = b.build_int_add(sbo, c64(4), "").map_err(e)?;
        let at = b.build_int_add(at, jh, "").map_err(e)?;
        let sl = self.qdot_load(f, it.i8.into(), w, at)?.into_int_value();
        let b = &f.b;
        let sl = b.build_int_z_extend(sl, it.i64, "").map_err(e)?;
        let j1 = b.build_and(j, c64(1), "").map_err(e)?;
        let j4 = b.build_int_mul(j1, c64(4), "").map_err(e)?;
        let sl = b.build_right_shift(sl, j4, false, "").map_err(e)?;
        let sl = b.build_and(sl, c64(15), "").map_err(e)?;
        let ls = b.build_or(sl, sh, "").map_err(e)?;
        let ls = b.build_int_sub(ls, c64(32), "").map_err(e)?;
        let ls = b.build_signed_int_to_float(ls, it.f32, "").map_err(e)?;
        let big_d = self.qdot_load(f, it.f16.into(), w, sbo)?.into_float_value();
        let b = &f.b;
        let big_d = b.build_float_ext(big_d, it.f32, "").map_err(e)?;
        let d = b.build_float_mul(big_d, ls, "d").map_err(e)?;
        let qs = b.build_int_add(sbo, c64(8), "").map_err(e)?;
        let j16 = b.build_int_mul(j, c64(16), "").map_err(e)?;
        let qs = b.build_int_add(qs, j16, "qs").map_err(e)?;
        Ok((d, qs))
    }

    /// The two `<16 x i8>` halves of an IQ4 block's levels from its 16 bytes at `qs`.
    fn iq4_halves(
        &self,
        f: &Frame<'ctx>,
        w: PointerValue<'ctx>,
        qs: IntValue<'ctx>,
    ) -> R<(VectorValue<'ctx>, VectorValue<'ctx>)> {
        let it = self.it;
        let v16b = it.i8.vec_type(16);
        let raw = self.qdot_load(f, v16b.into(), w, qs)?.into_vector_value();
        let c = |k: u64| inkwell::types::VectorType::const_vector(&[it.i8.const_int(k, false); 16]);
        let lo = f.b.build_and(raw, c(15), "").map_err(llvm_err)?;
        let hi =
            f.b.build_right_shift(raw, c(4), false, "")
                .map_err(llvm_err)?;
        Ok((self.iq4_lookup(f, lo)?, self.iq4_lookup(f, hi)?))
    }

    /// Q3_K block `blk` of the row at `w_off` ([`QFmt::Q3K`]): its halves' scales
    /// `D · s` and its 32 signed quants (-4..3) as two `<16 x i8>`.
    fn q3k_block(
        &self,
        f: &Frame<'ctx>,
        w: PointerValue<'ctx>,
        w_off: IntValue<'ctx>,
        blk: IntValue<'ctx>,
    ) -> R<(
        FloatValue<'ctx>,
        FloatValue<'ctx>,
        VectorValue<'ctx>,
        VectorValue<'ctx>,
    )> {
        let it = self.it;
        let e = llvm_err;
        let c64 = |k: u64| it.i64.const_int(k, false);
        let add = |x: IntValue<'ctx>, y: IntValue<'ctx>| f.b.build_int_add(x, y, "").map_err(e);
        let mul = |x: IntValue<'ctx>, k: u64| f.b.build_int_mul(x, c64(k), "").map_err(e);
        let shr =
            |x: IntValue<'ctx>, k: u64| f.b.build_right_shift(x, c64(k), false, "").map_err(e);
        let and = |x: IntValue<'ctx>, k: u64| f.b.build_and(x, c64(k), "").map_err(e);
        let sb = shr(blk, 3)?;
        let sbo = add(w_off, mul(sb, QFmt::Q3K.block_bytes() as u64)?)?;
        let t = and(blk, 7)?;
        let (h, k) = (shr(t, 2)?, and(t, 3)?);
        let v16b = it.i8.vec_type(16);
        let splat = |x: IntValue<'ctx>| self.splat16(f, x, it.i8);
        let cst =
            |k: u64| inkwell::types::VectorType::const_vector(&[it.i8.const_int(k, false); 16]);
        let sh_q = splat(mul(k, 2)?)?;
        let sh_h = splat(add(mul(h, 4)?, k)?)?;
        let qbase = add(add(sbo, c64(32))?, mul(h, 32)?)?;
        let mut halves = Vec::new();
        for half in 0..2u64 {
            let q = self
                .qdot_load(f, v16b.into(), w, add(qbase, c64(16 * half))?)?
                .into_vector_value();
            let hm = self
                .qdot_load(f, v16b.into(), w, add(sbo, c64(16 * half))?)?
                .into_vector_value();
            let b = &f.b;
            let q = b.build_right_shift(q, sh_q, false, "").map_err(e)?;
            let q = b.build_and(q, cst(3), "").map_err(e)?;
            let hb = b.build_right_shift(hm, sh_h, false, "").map_err(e)?;
            let hb = b.build_and(hb, cst(1), "").map_err(e)?;
            let hb = b.build_left_shift(hb, cst(2), "").map_err(e)?;
            let v = b.build_or(q, hb, "").map_err(e)?;
            halves.push(b.build_int_sub(v, cst(4), "q3").map_err(e)?);
        }
        let big_d = self
            .qdot_load(f, it.f16.into(), w, add(sbo, c64(108))?)?
            .into_float_value();
        let big_d = f.b.build_float_ext(big_d, it.f32, "").map_err(e)?;
        let ld8 = |at: IntValue<'ctx>| -> R<IntValue<'ctx>> {
            let v = self.qdot_load(f, it.i8.into(), w, at)?.into_int_value();
            f.b.build_int_z_extend(v, it.i64, "").map_err(e)
        };
        let mut d = Vec::new();
        for p in 0..2u64 {
            // s = 2 t + p: low nibble of byte s mod 8 (high for s >= 8), top bits from
            // byte 8 + s mod 4 at 2 (s / 4).
            let s = add(mul(t, 2)?, c64(p))?;
            let lo = ld8(add(add(sbo, c64(96))?, and(s, 7)?)?)?;
            let lo =
                f.b.build_right_shift(lo, mul(shr(s, 3)?, 4)?, false, "")
                    .map_err(e)?;
            let lo = and(lo, 15)?;
            let hi = ld8(add(add(sbo, c64(104))?, and(s, 3)?)?)?;
            let hi =
                f.b.build_right_shift(hi, mul(shr(s, 2)?, 2)?, false, "")
                    .map_err(e)?;
            let hi = and(hi, 3)?;
            let sc =
                f.b.build_or(lo, f.b.build_left_shift(hi, c64(4), "").map_err(e)?, "")
                    .map_err(e)?;
            let sc = f.b.build_int_sub(sc, c64(32), "").map_err(e)?;
            let sc = f.b.build_signed_int_to_float(sc, it.f32, "").map_err(e)?;
            d.push(f.b.build_float_mul(big_d, sc, "d3").map_err(e)?);
        }
        Ok((d[0], d[1], halves[0], halves[1]))
    }

    /// Q2_K super-block `sbi` of the row at `w_off` ([`QFmt::Q2K`]), loaded once for
    /// its eight blocks ([`Self::q2k_unit`]): `D`, `-Dmin`, its 64 quant bytes as four
    /// `<16 x i16>`, and its 16 scales and minimums as two `<16 x i16>`.
    fn q2k_super(
        &self,
        f: &Frame<'ctx>,
        w: PointerValue<'ctx>,
        w_off: IntValue<'ctx>,
        sbi: IntValue<'ctx>,
    ) -> R<Q2kSuper<'ctx>> {
        let it = self.it;
        let e = llvm_err;
        let c64 = |k: u64| it.i64.const_int(k, false);
        let b = &f.b;
        let at = b
            .build_int_mul(sbi, c64(QFmt::Q2K.block_bytes() as u64), "")
            .map_err(e)?;
        let sbo = b.build_int_add(w_off, at, "q2sb").map_err(e)?;
        let v16b = it.i8.vec_type(16);
        let v16w = it.i16.vec_type(16);
        let bytes = |off: u64| -> R<VectorValue<'ctx>> {
            let at = f.b.build_int_add(sbo, c64(off), "").map_err(e)?;
            let v = self.qdot_load(f, v16b.into(), w, at)?.into_vector_value();
            f.b.build_int_z_extend(v, v16w, "").map_err(e)
        };
        let qs = [bytes(16)?, bytes(32)?, bytes(48)?, bytes(64)?];
        let s = bytes(0)?;
        let cst =
            |k: u64| inkwell::types::VectorType::const_vector(&[it.i16.const_int(k, false); 16]);
        let sc = f.b.build_and(s, cst(15), "q2sc").map_err(e)?;
        let mn = f.b.build_right_shift(s, cst(4), false, "q2mn").map_err(e)?;
        let f16_at = |off: u64| -> R<FloatValue<'ctx>> {
            let at = f.b.build_int_add(sbo, c64(off), "").map_err(e)?;
            let v = self.qdot_load(f, it.f16.into(), w, at)?.into_float_value();
            f.b.build_float_ext(v, it.f32, "").map_err(e)
        };
        let d = f16_at(80)?;
        let neg_dmin = f.b.build_float_neg(f16_at(82)?, "ndmin").map_err(e)?;
        Ok(Q2kSuper {
            d,
            neg_dmin,
            qs,
            sc,
            mn,
        })
    }

    /// Block `t` (0..8) of a Q2_K super-block: its 32 quants times their half's scale
    /// (`sc q`, 0..45) as two `<16 x i16>`. `t` is a constant, so are the shifts and
    /// the scales' lanes.
    fn q2k_unit(&self, f: &Frame<'ctx>, sup: &Q2kSuper<'ctx>, t: u64) -> R<[VectorValue<'ctx>; 2]> {
        let it = self.it;
        let e = llvm_err;
        let cst =
            |k: u64| inkwell::types::VectorType::const_vector(&[it.i16.const_int(k, false); 16]);
        let (h, k) = (t / 4, t % 4);
        let mut out = Vec::new();
        for p in 0..2u64 {
            let q = sup.qs[(2 * h + p) as usize];
            let q = f.b.build_right_shift(q, cst(2 * k), false, "").map_err(e)?;
            let q = f.b.build_and(q, cst(3), "q2").map_err(e)?;
            let mask =
                inkwell::types::VectorType::const_vector(&[it.i32.const_int(2 * t + p, false); 16]);
            let sc =
                f.b.build_shuffle_vector(sup.sc, sup.sc.get_type().get_undef(), mask, "")
                    .map_err(e)?;
            out.push(f.b.build_int_mul(q, sc, "q2s").map_err(e)?);
        }
        Ok([out[0], out[1]])
    }

    /// Super-block `sbi`'s minimum terms for every row ([`QFmt::Q2K`]): each half's
    /// `mn · -Dmin` (exact) times its activation sum from `xs` (a row's 16 adjacent),
    /// two 8-lane products into the row's vector accumulator.
    fn q2k_mins(
        &self,
        f: &Frame<'ctx>,
        g: &GenericDot<'ctx>,
        sup: &Q2kSuper<'ctx>,
        sbi: IntValue<'ctx>,
    ) -> R<()> {
        let it = self.it;
        let e = llvm_err;
        let v8f = it.f32.vec_type(8);
        let v16f = it.f32.vec_type(16);
        let b = &f.b;
        let mn = b.build_unsigned_int_to_float(sup.mn, v16f, "").map_err(e)?;
        let nd = self.splat_f32(f, sup.neg_dmin, 16)?;
        let m = f.b.build_float_mul(mn, nd, "q2m").map_err(e)?;
        let half = |lo: u64| -> R<VectorValue<'ctx>> {
            let idx: Vec<IntValue> = (lo..lo + 8).map(|l| it.i32.const_int(l, false)).collect();
            let mask = inkwell::types::VectorType::const_vector(&idx);
            f.b.build_shuffle_vector(m, v16f.get_undef(), mask, "")
                .map_err(e)
        };
        let (m_lo, m_hi) = (half(0)?, half(8)?);
        let c = |k: u64| it.i64.const_int(k, false);
        let first = f.b.build_int_mul(sbi, c(8), "").map_err(e)?;
        for (&xb, &acc) in g.x_blk.iter().zip(&g.vacc) {
            let b = &f.b;
            let at = b.build_int_add(xb, first, "").map_err(e)?;
            // Two floats a block: byte 8 (x_blk + 8 sbi).
            let at = b.build_int_mul(at, c(8), "").map_err(e)?;
            for (k, mv) in [(0u64, m_lo), (32, m_hi)] {
                let off = f.b.build_int_add(at, c(k), "").map_err(e)?;
                let t = self
                    .qdot_load(f, v8f.into(), g.xsp, off)?
                    .into_vector_value();
                let b = &f.b;
                let prod = b.build_float_mul(mv, t, "").map_err(e)?;
                self.contract(prod);
                let cur = b.build_load(v8f, acc, "").map_err(e)?.into_vector_value();
                let sum = b.build_float_add(cur, prod, "").map_err(e)?;
                self.contract(sum);
                b.build_store(acc, sum).map_err(e)?;
            }
        }
        Ok(())
    }

    /// Q6_K block `blk` of the row at `w_off` ([`QFmt::Q6K`]): its halves' scales
    /// `D · sc` and its 32 signed quants `q - 32` as two `<16 x i8>`.
    fn q6k_block(
        &self,
        f: &Frame<'ctx>,
        w: PointerValue<'ctx>,
        w_off: IntValue<'ctx>,
        blk: IntValue<'ctx>,
    ) -> R<(
        FloatValue<'ctx>,
        FloatValue<'ctx>,
        VectorValue<'ctx>,
        VectorValue<'ctx>,
    )> {
        let (d0, d1, v) = self.q6k_quants(f, w, w_off, blk, false)?;
        Ok((d0, d1, v[0], v[1]))
    }

    /// Q6_K block `blk`'s two half-scales and quants: two `<16 x i8>` halves of
    /// `q - 32`, or with `wide` one `<32 x i8>` of `q` (0..63) for `vpmaddubsw`.
    fn q6k_quants(
        &self,
        f: &Frame<'ctx>,
        w: PointerValue<'ctx>,
        w_off: IntValue<'ctx>,
        blk: IntValue<'ctx>,
        wide: bool,
    ) -> R<(FloatValue<'ctx>, FloatValue<'ctx>, Vec<VectorValue<'ctx>>)> {
        let it = self.it;
        let e = llvm_err;
        let c64 = |k: u64| it.i64.const_int(k, false);
        let b = &f.b;
        let sb = b.build_right_shift(blk, c64(3), false, "sb").map_err(e)?;
        let sbo = b
            .build_int_mul(sb, c64(QFmt::Q6K.block_bytes() as u64), "")
            .map_err(e)?;
        let sbo = b.build_int_add(w_off, sbo, "sbo").map_err(e)?;
        let j = b.build_and(blk, c64(7), "j").map_err(e)?;
        let h = b.build_right_shift(j, c64(2), false, "h").map_err(e)?;
        let c = b.build_and(j, c64(3), "c").map_err(e)?;
        let add = |x: IntValue<'ctx>, y: IntValue<'ctx>| f.b.build_int_add(x, y, "").map_err(e);
        let mul = |x: IntValue<'ctx>, k: u64| f.b.build_int_mul(x, c64(k), "").map_err(e);
        let c1 = b.build_and(c, c64(1), "").map_err(e)?;
        let c2 = b.build_right_shift(c, c64(1), false, "").map_err(e)?;
        // ql at 64 h + 32 (c mod 2), shifted by 4 ⌊c / 2⌋; qh at 128 + 32 h, by 2 c.
        let ql = add(add(sbo, mul(h, 64)?)?, mul(c1, 32)?)?;
        let qh = add(add(sbo, c64(128))?, mul(h, 32)?)?;
        let n: u32 = if wide { 32 } else { 16 };
        let vnb = it.i8.vec_type(n);
        let splat = |x: IntValue<'ctx>| -> R<VectorValue<'ctx>> {
            let v = self.splat16(f, x, it.i8)?;
            if !wide {
                return Ok(v);
            }
            let idx: Vec<_> = (0..32).map(|i| it.i32.const_int(i % 16, false)).collect();
            f.b.build_shuffle_vector(v, v, inkwell::types::VectorType::const_vector(&idx), "")
                .map_err(e)
        };
        let cst = |k: u64| {
            inkwell::types::VectorType::const_vector(&vec![it.i8.const_int(k, false); n as usize])
        };
        let sh_l = splat(mul(c2, 4)?)?;
        let sh_h = splat(mul(c, 2)?)?;
        let mut halves = Vec::new();
        for half in 0..(32 / n as u64) {
            let at = add(ql, c64(16 * half))?;
            let lo = self.qdot_load(f, vnb.into(), w, at)?.into_vector_value();
            let at = add(qh, c64(16 * half))?;
            let hi = self.qdot_load(f, vnb.into(), w, at)?.into_vector_value();
            let b = &f.b;
            let lo = b.build_right_shift(lo, sh_l, false, "").map_err(e)?;
            let lo = b.build_and(lo, cst(15), "").map_err(e)?;
            let hi = b.build_right_shift(hi, sh_h, false, "").map_err(e)?;
            let hi = b.build_and(hi, cst(3), "").map_err(e)?;
            let hi = b.build_left_shift(hi, cst(4), "").map_err(e)?;
            let v = b.build_or(lo, hi, "").map_err(e)?;
            halves.push(if wide {
                v
            } else {
                b.build_int_sub(v, cst(32), "q6").map_err(e)?
            });
        }
        let at = add(sbo, c64(208))?;
        let big_d = self.qdot_load(f, it.f16.into(), w, at)?.into_float_value();
        let big_d = f.b.build_float_ext(big_d, it.f32, "").map_err(e)?;
        let sc0 = add(add(add(sbo, c64(192))?, mul(h, 8)?)?, mul(c, 2)?)?;
        let mut d = Vec::new();
        for k in 0..2 {
            let at = add(sc0, c64(k))?;
            let s = self.qdot_load(f, it.i8.into(), w, at)?.into_int_value();
            let s = f.b.build_signed_int_to_float(s, it.f32, "").map_err(e)?;
            d.push(f.b.build_float_mul(big_d, s, "d6").map_err(e)?);
        }
        Ok((d[0], d[1], halves))
    }

    /// The fifth bits of a Q5 block at byte `wb` as two `<16 x i1>` (elements 0..16
    /// and 16..32): `qh`'s bit `e` set.
    fn q5_bits(
        &self,
        f: &Frame<'ctx>,
        fmt: QFmt,
        w: PointerValue<'ctx>,
        wb: IntValue<'ctx>,
    ) -> R<Option<(VectorValue<'ctx>, VectorValue<'ctx>)>> {
        let Some(off) = fmt.qh_offset() else {
            return Ok(None);
        };
        let it = self.it;
        let e = llvm_err;
        let at =
            f.b.build_int_add(wb, it.i64.const_int(off as u64, false), "")
                .map_err(e)?;
        let qh = self.qdot_load(f, it.i32.into(), w, at)?.into_int_value();
        // Per half: qh's 16 bits broadcast to 16 lanes, lane e testing bit e.
        let v16w = it.i16.vec_type(16);
        let masks = inkwell::types::VectorType::const_vector(
            &(0..16)
                .map(|i| it.i16.const_int(1 << i, false))
                .collect::<Vec<_>>(),
        );
        let zeros = inkwell::types::VectorType::const_vector(&[it.i32.const_zero(); 16]);
        let mut out = Vec::new();
        for sh in [0u64, 16] {
            let b = &f.b;
            let v = b
                .build_right_shift(qh, it.i32.const_int(sh, false), false, "")
                .map_err(e)?;
            let v = b.build_int_truncate(v, it.i16, "").map_err(e)?;
            let v = b
                .build_insert_element(v16w.get_undef(), v, it.i32.const_zero(), "")
                .map_err(e)?;
            let v = b
                .build_shuffle_vector(v, v16w.get_undef(), zeros, "")
                .map_err(e)?;
            let v = b.build_and(v, masks, "").map_err(e)?;
            out.push(
                b.build_int_compare(IntPredicate::NE, v, v16w.const_zero(), "qh")
                    .map_err(e)?,
            );
        }
        Ok(Some((out[0], out[1])))
    }

    /// `v | (bits ? 16 : 0)` lane-wise (`v`'s lanes i8 or i16).
    fn or_fifth_bit(
        &self,
        f: &Frame<'ctx>,
        v: VectorValue<'ctx>,
        bits: VectorValue<'ctx>,
    ) -> R<VectorValue<'ctx>> {
        let vt = v.get_type();
        let et = vt.get_element_type().into_int_type();
        let n = vt.get_size() as usize;
        let sixteen = inkwell::types::VectorType::const_vector(&vec![et.const_int(16, false); n]);
        let b = &f.b;
        let h = b
            .build_select(bits, sixteen, vt.const_zero(), "")
            .map_err(llvm_err)?
            .into_vector_value();
        b.build_or(v, h, "").map_err(llvm_err)
    }

    /// `x` (an i64 or narrower integer) truncated to `elem` and broadcast to 16 lanes.
    fn splat16(
        &self,
        f: &Frame<'ctx>,
        x: IntValue<'ctx>,
        elem: inkwell::types::IntType<'ctx>,
    ) -> R<VectorValue<'ctx>> {
        let vt = elem.vec_type(16);
        let x = f.b.build_int_truncate(x, elem, "").map_err(llvm_err)?;
        let v =
            f.b.build_insert_element(vt.get_undef(), x, self.it.i32.const_zero(), "")
                .map_err(llvm_err)?;
        let zeros = inkwell::types::VectorType::const_vector(&[self.it.i32.const_zero(); 16]);
        f.b.build_shuffle_vector(v, vt.get_undef(), zeros, "")
            .map_err(llvm_err)
    }

    pub(super) fn splat_f32(
        &self,
        f: &Frame<'ctx>,
        x: FloatValue<'ctx>,
        n: u32,
    ) -> R<VectorValue<'ctx>> {
        let it = self.it;
        let vt = it.f32.vec_type(n);
        let v =
            f.b.build_insert_element(vt.get_undef(), x, it.i32.const_zero(), "")
                .map_err(llvm_err)?;
        let zeros =
            inkwell::types::VectorType::const_vector(&vec![it.i32.const_zero(); n as usize]);
        f.b.build_shuffle_vector(v, vt.get_undef(), zeros, "")
            .map_err(llvm_err)
    }

    fn contract(&self, v: impl BasicValue<'ctx>) {
        use inkwell::values::FastMathFlags as F;
        if let Some(i) = v.as_instruction_value() {
            let _ = i.set_fast_math_flags(F::AllowContract);
        }
    }

    /// `*acc += float(p32) * scale` on eight lanes (the accumulator stays in memory
    /// as a local; LLVM keeps it in a register).
    fn accumulate_v8(
        &self,
        f: &Frame<'ctx>,
        p32: VectorValue<'ctx>,
        scale: FloatValue<'ctx>,
        acc: PointerValue<'ctx>,
    ) -> R<()> {
        let v8f = self.it.f32.vec_type(8);
        let fv =
            f.b.build_signed_int_to_float(p32, v8f, "")
                .map_err(llvm_err)?;
        let sv = self.splat_f32(f, scale, 8)?;
        let prod = f.b.build_float_mul(fv, sv, "").map_err(llvm_err)?;
        self.contract(prod);
        let cur =
            f.b.build_load(v8f, acc, "")
                .map_err(llvm_err)?
                .into_vector_value();
        let s = f.b.build_float_add(cur, prod, "").map_err(llvm_err)?;
        self.contract(s);
        f.b.build_store(acc, s).map_err(llvm_err)?;
        Ok(())
    }

    /// `*acc += a * b` on one f32 (contractible into an FMA).
    fn accumulate_f32(
        &self,
        f: &Frame<'ctx>,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
        acc: PointerValue<'ctx>,
    ) -> R<()> {
        let t = f.b.build_float_mul(a, b, "").map_err(llvm_err)?;
        self.contract(t);
        let cur =
            f.b.build_load(self.it.f32, acc, "")
                .map_err(llvm_err)?
                .into_float_value();
        let s = f.b.build_float_add(cur, t, "").map_err(llvm_err)?;
        self.contract(s);
        f.b.build_store(acc, s).map_err(llvm_err)?;
        Ok(())
    }

    /// Emits `q` at the builder's position.
    pub(super) fn qdot(&mut self, f: &mut Frame<'ctx>, q: &QDot) -> R<()> {
        // (Q2_K's halves' minimums take this form on every target.)
        if self.target.avx2() && !q.fmt.split_mins() {
            return self.qdot_avx2(f, q);
        }
        let it = self.it;
        let w_off = self.expr(f, &q.w_off)?.0.into_int_value();
        let mut x_blk = Vec::new();
        for e in &q.x_blk {
            x_blk.push(self.expr(f, e)?.0.into_int_value());
        }
        let mut x_sc = Vec::new();
        for e in &q.x_sc {
            x_sc.push(self.expr(f, e)?.0.into_int_value());
        }
        let b = &f.b;
        let bufp = |id| {
            f.bufs.get(&id).copied().ok_or_else(|| {
                self.err(format!(
                    "qdot: buffer %{} is not available here",
                    self.k.buf(id).name
                ))
            })
        };
        let (wp, xqp, xdp, xsp) = (bufp(q.w)?, bufp(q.xq)?, bufp(q.xd)?, bufp(q.xs)?);
        let xq8 = self.xq8(q.xq);
        let rows = q.accs.len();
        let v8f = it.f32.vec_type(8);
        // Accumulators: a vector (AVX2) or a scalar per row, and a scalar for the
        // minimum terms.
        let mut vacc = Vec::new();
        let mut sacc = Vec::new();
        for _ in 0..rows {
            let v = f.allocas.build_alloca(v8f, "qacc").map_err(llvm_err)?;
            b.build_store(v, v8f.const_zero()).map_err(llvm_err)?;
            vacc.push(v);
            let s = f.allocas.build_alloca(it.f32, "qmacc").map_err(llvm_err)?;
            b.build_store(s, it.f32.const_zero()).map_err(llvm_err)?;
            sacc.push(s);
        }
        let g = GenericDot {
            w_off,
            wp,
            xqp,
            xdp,
            xsp,
            xq8,
            x_blk,
            x_sc,
            vacc,
            sacc,
        };
        // Q2_K: a super-block's eight blocks per iteration, so that each block's
        // position in it (shifts, scale bytes) is a constant and D, Dmin and the
        // quant bytes load once.
        let unroll = if q.fmt.split_mins() { 8 } else { 1 };
        let lp = self.counted_loop(f, "qdot", "qblk", (q.blocks / unroll) as u64)?;
        let mut q2s = None;
        for t in 0..unroll as u64 {
            let blk = if unroll == 1 {
                lp.index
            } else {
                let b = &f.b;
                let at = b
                    .build_int_nuw_mul(lp.index, it.i64.const_int(unroll as u64, false), "")
                    .map_err(llvm_err)?;
                b.build_int_nuw_add(at, it.i64.const_int(t, false), "blk")
                    .map_err(llvm_err)?
            };
            let q2 = if q.fmt.split_mins() {
                if t == 0 {
                    let sup = self.q2k_super(f, wp, w_off, lp.index)?;
                    self.q2k_mins(f, &g, &sup, lp.index)?;
                    q2s = Some(sup);
                }
                let sup = q2s
                    .as_ref()
                    .ok_or_else(|| llvm_err("qdot: no Q2_K super-block"))?;
                Some((sup, t))
            } else {
                None
            };
            self.qdot_block(f, q, &g, blk, q2)?;
        }
        self.close_loop(f, &lp)?;
        // acc += Σ lanes + the scalar terms.
        for (i, a) in q.accs.iter().enumerate() {
            let b = &f.b;
            let v = b
                .build_load(v8f, g.vacc[i], "")
                .map_err(llvm_err)?
                .into_vector_value();
            let sum = self.hsum8(b, v)?;
            let s = b
                .build_load(it.f32, g.sacc[i], "")
                .map_err(llvm_err)?
                .into_float_value();
            let tot = b.build_float_add(sum, s, "").map_err(llvm_err)?;
            self.add_to_var(f, *a, tot)?;
        }
        Ok(())
    }

    /// `*var += v` for an f32 accumulator variable (a dot statement's result).
    fn add_to_var(&self, f: &mut Frame<'ctx>, var: VarId, v: FloatValue<'ctx>) -> R<()> {
        let slot = self.var_slot(f, var)?;
        let b = &f.b;
        let cur = b
            .build_load(self.it.f32, slot, "")
            .map_err(llvm_err)?
            .into_float_value();
        let nv = b.build_float_add(cur, v, "").map_err(llvm_err)?;
        b.build_store(slot, nv).map_err(llvm_err)?;
        Ok(())
    }

    /// Block `blk` of [`Self::qdot`]'s generic form: its weights decoded (Q2_K's from
    /// its super-block `q2`'s values and its position there), then every row's
    /// products into that row's accumulators.
    fn qdot_block(
        &self,
        f: &Frame<'ctx>,
        q: &QDot,
        g: &GenericDot<'ctx>,
        blk: IntValue<'ctx>,
        q2: Option<(&Q2kSuper<'ctx>, u64)>,
    ) -> R<()> {
        let it = self.it;
        let (w_off, wp, xqp, xdp, xsp, xq8) = (g.w_off, g.wp, g.xqp, g.xdp, g.xsp, g.xq8);
        let (x_blk, x_sc, vacc, sacc) = (&g.x_blk, &g.x_sc, &g.vacc, &g.sacc);
        let rows = q.accs.len();
        let v16b = it.i8.vec_type(16);
        let v16w = it.i16.vec_type(16);
        let unsigned_w = !q.fmt.signed();
        // Q6_K's second half-scale (the first is `d`). (Q2_K's minimums are the
        // super-block's, [`Self::q2k_mins`].)
        let mut d_hi = None;
        let (d, m, w_lo, w_hi) = if let Some((sup, t)) = q2 {
            let [lo, hi] = self.q2k_unit(f, sup, t)?;
            (sup.d, None, lo, hi)
        } else if q.fmt.iq4() {
            let (d, qs) = if q.fmt == QFmt::IQ4XS {
                self.iq4xs_block(f, wp, w_off, blk)?
            } else {
                let bb = it.i64.const_int(q.fmt.block_bytes() as u64, true);
                let wb = f.b.build_int_mul(blk, bb, "").map_err(llvm_err)?;
                let wb = f.b.build_int_add(w_off, wb, "wb").map_err(llvm_err)?;
                let d = self.qdot_load(f, it.f16.into(), wp, wb)?.into_float_value();
                let d = f.b.build_float_ext(d, it.f32, "d").map_err(llvm_err)?;
                let qs =
                    f.b.build_int_add(wb, it.i64.const_int(2, false), "")
                        .map_err(llvm_err)?;
                (d, qs)
            };
            let (lo, hi) = self.iq4_halves(f, wp, qs)?;
            (d, None, lo, hi)
        } else if q.fmt.split_scales() {
            let (d0, d1, lo, hi) = if q.fmt == QFmt::Q3K {
                self.q3k_block(f, wp, w_off, blk)?
            } else {
                self.q6k_block(f, wp, w_off, blk)?
            };
            d_hi = Some(d1);
            (d0, None, lo, hi)
        } else if q.fmt.k_scales() {
            // Both halves of the 32 bytes, shifted right by 4 · (j mod 2), low nibble.
            let (d, m, qs, odd, fifth) = self.q4k_block(f, q.fmt, wp, w_off, blk)?;
            let b = &f.b;
            let sh = b
                .build_int_mul(odd, it.i64.const_int(4, false), "")
                .map_err(llvm_err)?;
            let shv = self.splat16(f, sh, it.i8)?;
            let c15 = inkwell::types::VectorType::const_vector(&[it.i8.const_int(15, false); 16]);
            let mut halves = Vec::new();
            for h in 0..2u64 {
                let at =
                    f.b.build_int_add(qs, it.i64.const_int(16 * h, false), "")
                        .map_err(llvm_err)?;
                let raw = self.qdot_load(f, v16b.into(), wp, at)?.into_vector_value();
                let b = &f.b;
                let v = b.build_right_shift(raw, shv, false, "").map_err(llvm_err)?;
                let v = b.build_and(v, c15, "").map_err(llvm_err)?;
                halves.push(match fifth {
                    Some(bits) => {
                        let hb = if h == 0 { bits.0 } else { bits.1 };
                        b.build_or(v, hb, "").map_err(llvm_err)?
                    }
                    None => v,
                });
            }
            (d, Some(m), halves[0], halves[1])
        } else {
            let (wb, qs) = self.block_at(f, q.fmt, w_off, blk)?;
            let at = |k: i64| {
                f.b.build_int_add(wb, it.i64.const_int(k as u64, true), "")
                    .map_err(llvm_err)
            };
            let d = self.qdot_load(f, it.f16.into(), wp, wb)?.into_float_value();
            let d = f.b.build_float_ext(d, it.f32, "d").map_err(llvm_err)?;
            let m = if q.fmt.stored_min() {
                let m = self
                    .qdot_load(f, it.f16.into(), wp, at(2)?)?
                    .into_float_value();
                Some(f.b.build_float_ext(m, it.f32, "m").map_err(llvm_err)?)
            } else if let Some(k) = q.fmt.offset_min() {
                Some(
                    f.b.build_float_mul(d, it.f32.const_float(k as f64), "m")
                        .map_err(llvm_err)?,
                )
            } else {
                None
            };
            // The block's 32 weight quants, in activation order, as two halves of 16.
            let (lo, hi) = match q.fmt {
                QFmt::Q8_0S24 | QFmt::Q8_0S832 => self.s24_halves(f, wp, wb, qs)?,
                QFmt::Q8_0 => {
                    let lo = self.qdot_load(f, v16b.into(), wp, qs)?.into_vector_value();
                    let q16 =
                        f.b.build_int_add(qs, it.i64.const_int(16, false), "")
                            .map_err(llvm_err)?;
                    let hi = self.qdot_load(f, v16b.into(), wp, q16)?.into_vector_value();
                    (lo, hi)
                }
                _ => {
                    let raw = self.qdot_load(f, v16b.into(), wp, qs)?.into_vector_value();
                    let c15 =
                        inkwell::types::VectorType::const_vector(&[it.i8.const_int(15, false); 16]);
                    let c4 =
                        inkwell::types::VectorType::const_vector(&[it.i8.const_int(4, false); 16]);
                    let b = &f.b;
                    let lo = b.build_and(raw, c15, "lo").map_err(llvm_err)?;
                    let hi = b
                        .build_right_shift(raw, c4, false, "hi")
                        .map_err(llvm_err)?;
                    match self.q5_bits(f, q.fmt, wp, wb)? {
                        Some((bl, bh)) => {
                            (self.or_fifth_bit(f, lo, bl)?, self.or_fifth_bit(f, hi, bh)?)
                        }
                        None => (lo, hi),
                    }
                }
            };
            (d, m, lo, hi)
        };
        let widen = |v: VectorValue<'ctx>| -> R<VectorValue<'ctx>> {
            if v.get_type() == v16w {
                // (Q2_K's quants come decoded to i16.)
                Ok(v)
            } else if unsigned_w {
                f.b.build_int_z_extend(v, v16w, "").map_err(llvm_err)
            } else {
                f.b.build_int_s_extend(v, v16w, "").map_err(llvm_err)
            }
        };
        let (w_lo, w_hi) = (widen(w_lo)?, widen(w_hi)?);
        for i in 0..rows {
            let b = &f.b;
            let xb = b.build_int_add(x_blk[i], blk, "xb").map_err(llvm_err)?;
            let x_lo = self.xq_load16(f, xqp, xq8, xb, 0)?;
            let x_hi = self.xq_load16(f, xqp, xq8, xb, 1)?;
            let b = &f.b;
            let sb = b
                .build_int_mul(
                    blk,
                    it.i64.const_int(QDot::scale_offset(1) as u64, false),
                    "",
                )
                .map_err(llvm_err)?;
            let sb = b.build_int_add(x_sc[i], sb, "").map_err(llvm_err)?;
            let x4 = b
                .build_int_mul(sb, it.i64.const_int(4, false), "")
                .map_err(llvm_err)?;
            let xd = self
                .qdot_load(f, it.f32.into(), xdp, x4)?
                .into_float_value();
            let b = &f.b;
            let scale = b.build_float_mul(d, xd, "scale").map_err(llvm_err)?;
            let scale_hi = match d_hi {
                Some(d1) => Some(b.build_float_mul(d1, xd, "scale").map_err(llvm_err)?),
                None => None,
            };
            // Groups of (weights, activations) pairs whose products share a scale:
            // the block (one group), or Q6_K's and Q3_K's halves (one each).
            let groups = match scale_hi {
                Some(scale_hi) => {
                    vec![(vec![(w_lo, x_lo)], scale), (vec![(w_hi, x_hi)], scale_hi)]
                }
                None => vec![(vec![(w_lo, x_lo), (w_hi, x_hi)], scale)],
            };
            for (pairs, sc) in groups {
                if self.x86_64() && self.target.avx2() {
                    // (Q2_K on AVX2: one 16-lane `vpmaddwd` per pair.)
                    let mut p32: Option<VectorValue<'ctx>> = None;
                    for (wv, xv) in pairs {
                        let p = self
                            .x86(f, "llvm.x86.avx2.pmadd.wd", &[wv, xv])?
                            .into_vector_value();
                        p32 = Some(match p32 {
                            Some(a) => f.b.build_int_add(a, p, "").map_err(llvm_err)?,
                            None => p,
                        });
                    }
                    let p32 = p32.ok_or_else(|| llvm_err("qdot: an empty group"))?;
                    self.accumulate_v8(f, p32, sc, vacc[i])?;
                } else if self.x86_64() {
                    // SSE2 (every x86-64): 8-lane `pmaddwd`s, the pairs' summed, the two
                    // halves concatenated to the AVX2 path's eight i32 lanes.
                    let mut halves: Vec<Option<VectorValue<'ctx>>> = vec![None, None];
                    for (wv, xv) in pairs {
                        for (h, acc) in halves.iter_mut().enumerate() {
                            let idx: Vec<IntValue> = (0..8)
                                .map(|l| it.i32.const_int(h as u64 * 8 + l, false))
                                .collect();
                            let mask = inkwell::types::VectorType::const_vector(&idx);
                            let b = &f.b;
                            let wh = b
                                .build_shuffle_vector(wv, wv.get_type().get_undef(), mask, "")
                                .map_err(llvm_err)?;
                            let xh = b
                                .build_shuffle_vector(xv, xv.get_type().get_undef(), mask, "")
                                .map_err(llvm_err)?;
                            let p = self
                                .x86(f, "llvm.x86.sse2.pmadd.wd", &[wh, xh])?
                                .into_vector_value();
                            *acc = Some(match acc.take() {
                                Some(a) => f.b.build_int_add(a, p, "").map_err(llvm_err)?,
                                None => p,
                            });
                        }
                    }
                    let (Some(lo), Some(hi)) = (halves[0], halves[1]) else {
                        return Err(llvm_err("qdot: an empty group"));
                    };
                    let idx: Vec<IntValue> = (0..8).map(|l| it.i32.const_int(l, false)).collect();
                    let mask = inkwell::types::VectorType::const_vector(&idx);
                    let p32 =
                        f.b.build_shuffle_vector(lo, hi, mask, "")
                            .map_err(llvm_err)?;
                    self.accumulate_v8(f, p32, sc, vacc[i])?;
                } else {
                    let w32 = it.i32.vec_type(16);
                    let red = it
                        .intrinsic(self.module, "llvm.vector.reduce.add", &[w32.into()])
                        .ok_or_else(|| llvm_err("llvm.vector.reduce.add"))?;
                    let mut sum: Option<IntValue<'ctx>> = None;
                    for (wv, xv) in pairs {
                        let b = &f.b;
                        let ww = b.build_int_s_extend(wv, w32, "").map_err(llvm_err)?;
                        let xw = b.build_int_s_extend(xv, w32, "").map_err(llvm_err)?;
                        let prod = b.build_int_mul(ww, xw, "").map_err(llvm_err)?;
                        let part = b
                            .build_call(red, &[prod.into()], "")
                            .map_err(llvm_err)?
                            .try_as_basic_value()
                            .basic()
                            .ok_or_else(|| llvm_err("reduce"))?
                            .into_int_value();
                        sum = Some(match sum {
                            Some(a) => b.build_int_add(a, part, "").map_err(llvm_err)?,
                            None => part,
                        });
                    }
                    let sum = sum.ok_or_else(|| llvm_err("qdot: an empty group"))?;
                    let sf =
                        f.b.build_signed_int_to_float(sum, it.f32, "")
                            .map_err(llvm_err)?;
                    self.accumulate_f32(f, sc, sf, sacc[i])?;
                }
            }
            if let Some(m) = m {
                let xs = self
                    .qdot_load(f, it.f32.into(), xsp, x4)?
                    .into_float_value();
                self.accumulate_f32(f, m, xs, sacc[i])?;
            }
        }
        Ok(())
    }

    /// The AVX2 form of `q`, two blocks per loop iteration. Each block's quants are
    /// decoded once (widened to i16, the nibbles split with one `and` and one
    /// shift) and multiplied into every row with two `vpmaddwd`. A quad of rows
    /// reduces its eight 8-lane partial sums with shuffles to one vector of the
    /// quad's block sums (lanes `[row 0..3 of the even block | row 0..3 of the odd
    /// one]`), converts them once, and takes one 8-lane FMA with the scales (one
    /// load, the layout [`QDot`] fixes) and one for the minimum terms; a single row
    /// does the same on two lanes. The float arithmetic is [`QDot`]'s, so a row's sum
    /// is the same in a quad or alone.
    fn qdot_avx2(&mut self, f: &mut Frame<'ctx>, q: &QDot) -> R<()> {
        let it = self.it;
        let w_off = self.expr(f, &q.w_off)?.0.into_int_value();
        let mut rows = Vec::new();
        for (xb, sc) in q.x_blk.iter().zip(&q.x_sc) {
            let xb = self.expr(f, xb)?.0.into_int_value();
            let sc = self.expr(f, sc)?.0.into_int_value();
            rows.push((xb, sc));
        }
        let bufp = |id| {
            f.bufs.get(&id).copied().ok_or_else(|| {
                self.err(format!(
                    "qdot: buffer %{} is not available here",
                    self.k.buf(id).name
                ))
            })
        };
        let bufs = QBufs {
            w: bufp(q.w)?,
            xq: bufp(q.xq)?,
            xq8: self.xq8(q.xq),
            xd: bufp(q.xd)?,
            xs: bufp(q.xs)?,
        };
        let quads = rows.len() / QDot::QUAD;
        // Per quad an <8 x float> block-sum chain and one for the minimum terms; per
        // single row the same on two lanes ([even, odd] block chains).
        let mut accs = Vec::new();
        for i in 0..quads + rows.len() % QDot::QUAD {
            let vt = it.f32.vec_type(if i < quads { 8 } else { 2 });
            let zeroed = |name| -> R<PointerValue<'ctx>> {
                let a = f.allocas.build_alloca(vt, name).map_err(llvm_err)?;
                f.b.build_store(a, vt.const_zero()).map_err(llvm_err)?;
                Ok(a)
            };
            accs.push((zeroed("qacc")?, zeroed("qmacc")?));
        }
        // Q4_K: one iteration per super-block, its four block pairs unrolled, so each
        // pair's sub-block index is a constant and its scale decode folds.
        // Q6_K's pairs are a block's two halves: eight per super-block.
        let (per, trips) = if q.fmt.sub_blocks() == 8 {
            (8, q.blocks / 8)
        } else {
            (2, q.blocks / 2)
        };
        let step = if q.fmt.split_scales() { 1 } else { 2 };
        let lp = self.counted_loop(f, "qdot", "qpair", trips as u64)?;
        let b = &f.b;
        let blk0 = b
            .build_int_mul(lp.index, it.i64.const_int(per as u64, false), "blk")
            .map_err(llvm_err)?;
        // The weight stream is read once: ask for it QDOT_PREFETCH bytes ahead (a
        // prefetch never faults, past the end included).
        let ahead = b
            .build_int_mul(
                lp.index,
                it.i64.const_int(q.fmt.row_bytes(per) as u64, false),
                "",
            )
            .map_err(llvm_err)?;
        let ahead = b.build_int_add(ahead, w_off, "").map_err(llvm_err)?;
        let ahead = b
            .build_int_add(ahead, it.i64.const_int(QDOT_PREFETCH, false), "")
            .map_err(llvm_err)?;
        // SAFETY: only an address for the prefetch hint; never dereferenced.
        let pp = unsafe { b.build_gep(it.i8, bufs.w, &[ahead], "") }.map_err(llvm_err)?;
        let pf = it
            .intrinsic(self.module, "llvm.prefetch", &[it.ptr.into()])
            .ok_or_else(|| llvm_err("llvm.prefetch"))?;
        let i32c = |v: u64| it.i32.const_int(v, false).into();
        b.build_call(pf, &[pp.into(), i32c(0), i32c(3), i32c(1)], "")
            .map_err(llvm_err)?;
        for p in (0..per).step_by(step) {
            let blk =
                f.b.build_int_add(blk0, it.i64.const_int(p as u64, false), "")
                    .map_err(llvm_err)?;
            self.qdot_avx2_pair(f, q, &bufs, w_off, &rows, blk, false, &accs)?;
        }
        self.close_loop(f, &lp)?;
        if q.blocks % 2 == 1 {
            let last = it.i64.const_int((q.blocks - 1) as u64, true);
            self.qdot_avx2_pair(f, q, &bufs, w_off, &rows, last, true, &accs)?;
        }
        // acc += (E + O) + (ME + MO) per row.
        let v8f = it.f32.vec_type(8);
        let v2f = it.f32.vec_type(2);
        for (i, a) in q.accs.iter().enumerate() {
            let b = &f.b;
            let (set, lanes, lane) = if i < quads * QDot::QUAD {
                (i / QDot::QUAD, 8u64, (i % QDot::QUAD) as u64)
            } else {
                (quads + i - quads * QDot::QUAD, 2, 0)
            };
            let vt = if lanes == 8 { v8f } else { v2f };
            let half = lanes / 2;
            let chains = |p: PointerValue<'ctx>| -> R<FloatValue<'ctx>> {
                let v = b
                    .build_load(vt, p, "")
                    .map_err(llvm_err)?
                    .into_vector_value();
                let e = b
                    .build_extract_element(v, it.i32.const_int(lane, false), "")
                    .map_err(llvm_err)?
                    .into_float_value();
                let o = b
                    .build_extract_element(v, it.i32.const_int(lane + half, false), "")
                    .map_err(llvm_err)?
                    .into_float_value();
                b.build_float_add(e, o, "").map_err(llvm_err)
            };
            let mut tot = chains(accs[set].0)?;
            if q.fmt.has_min() {
                let m = chains(accs[set].1)?;
                tot = b.build_float_add(tot, m, "").map_err(llvm_err)?;
            }
            self.add_to_var(f, *a, tot)?;
        }
        Ok(())
    }

    /// The weight block `blk` of [`Self::qdot_avx2`] (`odd`: whether `blk` is odd):
    /// its 32 quants as two halves of 16 i16 in activation order, and `[d, m]` (Q4_0's
    /// `m` is `-8 d`; Q8_0's 0).
    fn qdot_avx2_weights(
        &self,
        f: &Frame<'ctx>,
        fmt: QFmt,
        w: PointerValue<'ctx>,
        w_off: IntValue<'ctx>,
        blk: IntValue<'ctx>,
        odd: bool,
    ) -> R<(VectorValue<'ctx>, VectorValue<'ctx>, VectorValue<'ctx>)> {
        let it = self.it;
        let c64 = |k: i64| it.i64.const_int(k as u64, true);
        let v16b = it.i8.vec_type(16);
        let v16w = it.i16.vec_type(16);
        let v2f = it.f32.vec_type(2);
        let splat16 =
            |k: u64| inkwell::types::VectorType::const_vector(&[it.i16.const_int(k, false); 16]);
        if fmt.iq4() {
            let (d, qs) = if fmt == QFmt::IQ4XS {
                self.iq4xs_block(f, w, w_off, blk)?
            } else {
                let b = &f.b;
                let wb = b
                    .build_int_mul(blk, c64(fmt.block_bytes()), "")
                    .map_err(llvm_err)?;
                let wb = b.build_int_add(w_off, wb, "wb").map_err(llvm_err)?;
                let d = self.qdot_load(f, it.f16.into(), w, wb)?.into_float_value();
                let d = f.b.build_float_ext(d, it.f32, "d").map_err(llvm_err)?;
                (d, f.b.build_int_add(wb, c64(2), "").map_err(llvm_err)?)
            };
            let (lo, hi) = self.iq4_halves(f, w, qs)?;
            let b = &f.b;
            let lo = b.build_int_s_extend(lo, v16w, "").map_err(llvm_err)?;
            let hi = b.build_int_s_extend(hi, v16w, "").map_err(llvm_err)?;
            let v = b
                .build_insert_element(v2f.get_undef(), d, it.i32.const_zero(), "")
                .map_err(llvm_err)?;
            let dm = b
                .build_insert_element(v, it.f32.const_zero(), it.i32.const_int(1, false), "dm")
                .map_err(llvm_err)?;
            return Ok((lo, hi, dm));
        }
        if fmt.split_scales() {
            let (d0, d1, lo, hi) = if fmt == QFmt::Q3K {
                self.q3k_block(f, w, w_off, blk)?
            } else {
                self.q6k_block(f, w, w_off, blk)?
            };
            let b = &f.b;
            let lo = b.build_int_s_extend(lo, v16w, "").map_err(llvm_err)?;
            let hi = b.build_int_s_extend(hi, v16w, "").map_err(llvm_err)?;
            let v = b
                .build_insert_element(v2f.get_undef(), d0, it.i32.const_zero(), "")
                .map_err(llvm_err)?;
            let dm = b
                .build_insert_element(v, d1, it.i32.const_int(1, false), "dm")
                .map_err(llvm_err)?;
            return Ok((lo, hi, dm));
        }
        if fmt.k_scales() {
            // A block pair shares its 32 quant bytes: low nibbles for the even block,
            // high for the odd one.
            let (d, m, qs, _, fifth) = self.q4k_block(f, fmt, w, w_off, blk)?;
            let mut halves = Vec::new();
            for h in 0..2 {
                let at = f.b.build_int_add(qs, c64(16 * h), "").map_err(llvm_err)?;
                let raw = self.qdot_load(f, v16b.into(), w, at)?.into_vector_value();
                let b = &f.b;
                let v = b.build_int_z_extend(raw, v16w, "").map_err(llvm_err)?;
                let v = if odd {
                    b.build_right_shift(v, splat16(4), false, "hi")
                        .map_err(llvm_err)?
                } else {
                    b.build_and(v, splat16(15), "lo").map_err(llvm_err)?
                };
                halves.push(match fifth {
                    Some(bits) => {
                        let hb = if h == 0 { bits.0 } else { bits.1 };
                        let hb = b.build_int_z_extend(hb, v16w, "").map_err(llvm_err)?;
                        b.build_or(v, hb, "").map_err(llvm_err)?
                    }
                    None => v,
                });
            }
            let b = &f.b;
            let v = b
                .build_insert_element(v2f.get_undef(), d, it.i32.const_zero(), "")
                .map_err(llvm_err)?;
            let dm = b
                .build_insert_element(v, m, it.i32.const_int(1, false), "dm")
                .map_err(llvm_err)?;
            return Ok((halves[0], halves[1], dm));
        }
        let (wb, qs) = self.block_at(f, fmt, w_off, blk)?;
        let (lo, hi) = match fmt {
            QFmt::Q8_0S24 | QFmt::Q8_0S832 => {
                let (lo, hi) = self.s24_halves(f, w, wb, qs)?;
                let b = &f.b;
                (
                    b.build_int_s_extend(lo, v16w, "").map_err(llvm_err)?,
                    b.build_int_s_extend(hi, v16w, "").map_err(llvm_err)?,
                )
            }
            QFmt::Q8_0 => {
                let lo = self.qdot_load(f, v16b.into(), w, qs)?;
                let q16 = f.b.build_int_add(qs, c64(16), "").map_err(llvm_err)?;
                let hi = self.qdot_load(f, v16b.into(), w, q16)?;
                let b = &f.b;
                (
                    b.build_int_s_extend(lo.into_vector_value(), v16w, "")
                        .map_err(llvm_err)?,
                    b.build_int_s_extend(hi.into_vector_value(), v16w, "")
                        .map_err(llvm_err)?,
                )
            }
            _ => {
                // Byte i holds quant i (low nibble) and quant i + 16 (high nibble).
                let raw = self.qdot_load(f, v16b.into(), w, qs)?.into_vector_value();
                let b = &f.b;
                let v = b.build_int_z_extend(raw, v16w, "").map_err(llvm_err)?;
                let lo = b.build_and(v, splat16(15), "lo").map_err(llvm_err)?;
                let hi = b
                    .build_right_shift(v, splat16(4), false, "hi")
                    .map_err(llvm_err)?;
                match self.q5_bits(f, fmt, w, wb)? {
                    Some((bl, bh)) => {
                        (self.or_fifth_bit(f, lo, bl)?, self.or_fifth_bit(f, hi, bh)?)
                    }
                    None => (lo, hi),
                }
            }
        };
        let dm = if fmt.stored_min() {
            let h = self
                .qdot_load(f, it.f16.vec_type(2).into(), w, wb)?
                .into_vector_value();
            f.b.build_float_ext(h, v2f, "dm").map_err(llvm_err)?
        } else {
            let h = self.qdot_load(f, it.f16.into(), w, wb)?.into_float_value();
            let b = &f.b;
            let d = b.build_float_ext(h, it.f32, "d").map_err(llvm_err)?;
            let m = match fmt.offset_min() {
                Some(k) => b
                    .build_float_mul(d, it.f32.const_float(k as f64), "m")
                    .map_err(llvm_err)?,
                None => it.f32.const_zero(),
            };
            let v = b
                .build_insert_element(v2f.get_undef(), d, it.i32.const_zero(), "")
                .map_err(llvm_err)?;
            b.build_insert_element(v, m, it.i32.const_int(1, false), "dm")
                .map_err(llvm_err)?
        };
        Ok((lo, hi, dm))
    }

    /// `shufflevector a, b, mask`.
    fn shuffle(
        &self,
        f: &Frame<'ctx>,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
        mask: &[u64],
    ) -> R<VectorValue<'ctx>> {
        let m: Vec<_> = mask
            .iter()
            .map(|&i| self.it.i32.const_int(i, false))
            .collect();
        f.b.build_shuffle_vector(a, b, inkwell::types::VectorType::const_vector(&m), "")
            .map_err(llvm_err)
    }

    /// `fma(a, b, *acc)` into `*acc` (lane-wise, fused: [`QDot`]'s arithmetic).
    fn fma_into(
        &self,
        f: &Frame<'ctx>,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
        acc: PointerValue<'ctx>,
    ) -> R<()> {
        let vt = a.get_type();
        let fma = self
            .it
            .intrinsic(self.module, "llvm.fma", &[vt.into()])
            .ok_or_else(|| llvm_err("llvm.fma"))?;
        let cur = f.b.build_load(vt, acc, "").map_err(llvm_err)?;
        let r =
            f.b.build_call(fma, &[a.into(), b.into(), cur.into()], "")
                .map_err(llvm_err)?
                .try_as_basic_value()
                .basic()
                .ok_or_else(|| llvm_err("llvm.fma returned nothing"))?;
        f.b.build_store(acc, r).map_err(llvm_err)?;
        Ok(())
    }

    /// Blocks `blk` and `blk + 1` (only `blk` when `trailing`: its partner is zero)
    /// of [`Self::qdot_avx2`] into every row's chains.
    #[allow(clippy::too_many_arguments)]
    fn qdot_avx2_pair(
        &self,
        f: &Frame<'ctx>,
        q: &QDot,
        bufs: &QBufs<'ctx>,
        w_off: IntValue<'ctx>,
        rows: &[(IntValue<'ctx>, IntValue<'ctx>)],
        blk: IntValue<'ctx>,
        trailing: bool,
        accs: &[(PointerValue<'ctx>, PointerValue<'ctx>)],
    ) -> R<()> {
        let it = self.it;
        let c64 = |k: i64| it.i64.const_int(k as u64, true);
        let v8i = it.i32.vec_type(8);
        let v4f = it.f32.vec_type(4);
        let v8f = it.f32.vec_type(8);
        let v2f = it.f32.vec_type(2);
        // Q6_K on int8 activations: the block's 32 quants as bytes (q, 0..63) for
        // `vpmaddubsw`, whose sums less 32 Σx per half are the same integers as the
        // i16 pairs' (every product and pair sum stays below 2^15).
        let q6b = q.fmt == QFmt::Q6K && bufs.xq8;
        let (wa_lo, wa_hi, dm_a, q6) = if q6b {
            let (d0, d1, v) = self.q6k_quants(f, bufs.w, w_off, blk, true)?;
            let b = &f.b;
            let dm = b
                .build_insert_element(v2f.get_undef(), d0, it.i32.const_zero(), "")
                .map_err(llvm_err)?;
            let dm = b
                .build_insert_element(dm, d1, it.i32.const_int(1, false), "dm")
                .map_err(llvm_err)?;
            let z = it.i16.vec_type(16).const_zero();
            (z, z, dm, Some(v[0]))
        } else {
            let (lo, hi, dm) = self.qdot_avx2_weights(f, q.fmt, bufs.w, w_off, blk, false)?;
            (lo, hi, dm, None)
        };
        // Q6_K: the "pair" is the block's two halves, [d_lo, d_hi] in `dm_a`.
        let split = q.fmt.split_scales();
        let (wb, dm_b) = if split {
            (None, dm_a)
        } else if trailing {
            (None, v2f.const_zero())
        } else {
            let nb = f.b.build_int_add(blk, c64(1), "").map_err(llvm_err)?;
            let (lo, hi, dm) = self.qdot_avx2_weights(f, q.fmt, bufs.w, w_off, nb, true)?;
            (Some((lo, hi)), dm)
        };
        // The integer block sums' 8-lane partials of one row (zero for the absent
        // partner).
        let partial = |xblk: IntValue<'ctx>, second: bool| -> R<VectorValue<'ctx>> {
            if let Some(q6) = q6 {
                // Lanes 0..3 sum the first half's products, 4..7 the second's.
                let b = &f.b;
                let xb = b.build_int_add(xblk, blk, "xb").map_err(llvm_err)?;
                let at = b.build_int_mul(xb, c64(32), "").map_err(llvm_err)?;
                let v32b = it.i8.vec_type(32);
                let x = self
                    .qdot_load(f, v32b.into(), bufs.xq, at)?
                    .into_vector_value();
                let ones =
                    inkwell::types::VectorType::const_vector(&[it.i16.const_int(1, false); 16]);
                let dot = |w: VectorValue<'ctx>| -> R<VectorValue<'ctx>> {
                    let p = self
                        .x86(f, "llvm.x86.avx2.pmadd.ub.sw", &[w, x])?
                        .into_vector_value();
                    Ok(self
                        .x86(f, "llvm.x86.avx2.pmadd.wd", &[p, ones])?
                        .into_vector_value())
                };
                let sum = dot(q6)?;
                let k32 =
                    inkwell::types::VectorType::const_vector(&[it.i8.const_int(32, false); 32]);
                let off = dot(k32)?;
                let d = f.b.build_int_sub(sum, off, "").map_err(llvm_err)?;
                let keep: [u64; 8] = if second {
                    [8, 8, 8, 8, 4, 5, 6, 7]
                } else {
                    [0, 1, 2, 3, 8, 8, 8, 8]
                };
                return self.shuffle(f, d, v8i.const_zero(), &keep);
            }
            if split {
                let xb = f.b.build_int_add(xblk, blk, "xb").map_err(llvm_err)?;
                let w = if second { wa_hi } else { wa_lo };
                let x = self.xq_load16(f, bufs.xq, bufs.xq8, xb, second as i64)?;
                return Ok(self
                    .x86(f, "llvm.x86.avx2.pmadd.wd", &[w, x])?
                    .into_vector_value());
            }
            let (lo, hi) = match (second, wb) {
                (false, _) => (wa_lo, wa_hi),
                (true, Some(w)) => w,
                (true, None) => return Ok(v8i.const_zero()),
            };
            let b = &f.b;
            let xb = b.build_int_add(xblk, blk, "xb").map_err(llvm_err)?;
            let xb = if second {
                b.build_int_add(xb, c64(1), "").map_err(llvm_err)?
            } else {
                xb
            };
            let x_lo = self.xq_load16(f, bufs.xq, bufs.xq8, xb, 0)?;
            let x_hi = self.xq_load16(f, bufs.xq, bufs.xq8, xb, 1)?;
            let p_lo = self
                .x86(f, "llvm.x86.avx2.pmadd.wd", &[lo, x_lo])?
                .into_vector_value();
            let p_hi = self
                .x86(f, "llvm.x86.avx2.pmadd.wd", &[hi, x_hi])?
                .into_vector_value();
            f.b.build_int_add(p_lo, p_hi, "").map_err(llvm_err)
        };
        let add = |x: VectorValue<'ctx>, y: VectorValue<'ctx>| {
            f.b.build_int_add(x, y, "").map_err(llvm_err)
        };
        // Sums of two rows' partials, interleaved: [x02 y02 x13 y13 | x46 y46 x57 y57].
        let zip2 = |x: VectorValue<'ctx>, y: VectorValue<'ctx>| -> R<VectorValue<'ctx>> {
            let lo = self.shuffle(f, x, y, &[0, 8, 1, 9, 4, 12, 5, 13])?;
            let hi = self.shuffle(f, x, y, &[2, 10, 3, 11, 6, 14, 7, 15])?;
            add(lo, hi)
        };
        // The scales' byte offset of row slot `sc`'s block `blk`.
        let scale_at = |sc: IntValue<'ctx>| -> R<IntValue<'ctx>> {
            let b = &f.b;
            let s = b
                .build_int_mul(blk, c64(QDot::scale_offset(1)), "")
                .map_err(llvm_err)?;
            let s = b.build_int_add(sc, s, "").map_err(llvm_err)?;
            b.build_int_mul(s, c64(4), "").map_err(llvm_err)
        };
        let has_min = q.fmt.has_min();
        let quads = rows.len() / QDot::QUAD;
        if quads > 0 {
            let dw8 = if split {
                self.shuffle(f, dm_a, dm_a, &[0, 0, 0, 0, 1, 1, 1, 1])?
            } else {
                self.shuffle(f, dm_a, dm_b, &[0, 0, 0, 0, 2, 2, 2, 2])?
            };
            let m8 = self.shuffle(f, dm_a, dm_b, &[1, 1, 1, 1, 3, 3, 3, 3])?;
            for (g, quad) in rows.chunks_exact(QDot::QUAD).enumerate() {
                // Per block: the quad's four block sums, [r0 r1 r2 r3] in each half's
                // lanes 0..3 as partial sums over its lanes.
                let mut halves = Vec::new();
                for second in [false, true] {
                    let p: Vec<VectorValue<'ctx>> = quad
                        .iter()
                        .map(|(xb, _)| partial(*xb, second))
                        .collect::<R<_>>()?;
                    let s01 = zip2(p[0], p[1])?;
                    let s23 = zip2(p[2], p[3])?;
                    let lo = self.shuffle(f, s01, s23, &[0, 1, 8, 9, 4, 5, 12, 13])?;
                    let hi = self.shuffle(f, s01, s23, &[2, 3, 10, 11, 6, 7, 14, 15])?;
                    halves.push(add(lo, hi)?);
                }
                // [r0..r3 of blk | r0..r3 of blk + 1].
                let lo = self.shuffle(f, halves[0], halves[1], &[0, 1, 2, 3, 8, 9, 10, 11])?;
                let hi = self.shuffle(f, halves[0], halves[1], &[4, 5, 6, 7, 12, 13, 14, 15])?;
                let sums = add(lo, hi)?;
                let sums =
                    f.b.build_signed_int_to_float(sums, v8f, "")
                        .map_err(llvm_err)?;
                let at = scale_at(quad[0].1)?;
                let load8 = |buf: PointerValue<'ctx>| -> R<VectorValue<'ctx>> {
                    if split {
                        // Both halves take the block's scales.
                        let v = self.qdot_load(f, v4f.into(), buf, at)?.into_vector_value();
                        self.shuffle(f, v, v, &[0, 1, 2, 3, 0, 1, 2, 3])
                    } else if trailing {
                        let v = self.qdot_load(f, v4f.into(), buf, at)?.into_vector_value();
                        self.shuffle(f, v, v4f.const_zero(), &[0, 1, 2, 3, 4, 5, 6, 7])
                    } else {
                        Ok(self.qdot_load(f, v8f.into(), buf, at)?.into_vector_value())
                    }
                };
                let xd = load8(bufs.xd)?;
                let scale = f.b.build_float_mul(dw8, xd, "scale").map_err(llvm_err)?;
                self.fma_into(f, sums, scale, accs[g].0)?;
                if has_min {
                    let xs = load8(bufs.xs)?;
                    self.fma_into(f, m8, xs, accs[g].1)?;
                }
            }
        }
        let dw2 = if split {
            dm_a
        } else {
            self.shuffle(f, dm_a, dm_b, &[0, 2])?
        };
        let m2 = self.shuffle(f, dm_a, dm_b, &[1, 3])?;
        for (i, (xb, sc)) in rows[quads * QDot::QUAD..].iter().enumerate() {
            let s = zip2(partial(*xb, false)?, partial(*xb, true)?)?;
            let lo = self.shuffle(f, s, s, &[0, 1, 2, 3])?;
            let hi = self.shuffle(f, s, s, &[4, 5, 6, 7])?;
            let s = add(lo, hi)?;
            let s = add(
                self.shuffle(f, s, s, &[0, 1])?,
                self.shuffle(f, s, s, &[2, 3])?,
            )?;
            let sums =
                f.b.build_signed_int_to_float(s, v2f, "")
                    .map_err(llvm_err)?;
            let at = scale_at(*sc)?;
            let load2 = |buf: PointerValue<'ctx>| -> R<VectorValue<'ctx>> {
                let a = self
                    .qdot_load(f, it.f32.into(), buf, at)?
                    .into_float_value();
                let bv = if split {
                    a
                } else if trailing {
                    it.f32.const_zero()
                } else {
                    let at4 = f.b.build_int_add(at, c64(16), "").map_err(llvm_err)?;
                    self.qdot_load(f, it.f32.into(), buf, at4)?
                        .into_float_value()
                };
                let v =
                    f.b.build_insert_element(v2f.get_undef(), a, it.i32.const_zero(), "")
                        .map_err(llvm_err)?;
                f.b.build_insert_element(v, bv, it.i32.const_int(1, false), "")
                    .map_err(llvm_err)
            };
            let xd = load2(bufs.xd)?;
            let scale = f.b.build_float_mul(dw2, xd, "scale").map_err(llvm_err)?;
            let set = accs[quads + i];
            self.fma_into(f, sums, scale, set.0)?;
            if has_min {
                let xs = load2(bufs.xs)?;
                self.fma_into(f, m2, xs, set.1)?;
            }
        }
        Ok(())
    }

    /// The module targets x86-64 (SSE2 at least).
    pub(super) fn x86_64(&self) -> bool {
        self.module
            .get_triple()
            .as_str()
            .to_string_lossy()
            .starts_with("x86_64")
    }

    /// Calls a non-overloaded x86 intrinsic on vectors.
    fn x86(
        &self,
        f: &Frame<'ctx>,
        name: &str,
        args: &[VectorValue<'ctx>],
    ) -> R<BasicValueEnum<'ctx>> {
        let func = self
            .it
            .intrinsic(self.module, name, &[])
            .ok_or_else(|| llvm_err(format!("intrinsic {name} is unknown to LLVM")))?;
        let args: Vec<_> = args.iter().map(|a| (*a).into()).collect();
        f.b.build_call(func, &args, "")
            .map_err(llvm_err)?
            .try_as_basic_value()
            .basic()
            .ok_or_else(|| llvm_err(format!("{name} returned nothing")))
    }
}
