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
use llmc_kernels::{QDot, QFmt};

/// How far ahead (bytes) the AVX2 `QDot` prefetches the weight row.
const QDOT_PREFETCH: u64 = 4096;

/// The buffers a [`QDot`] reads.
struct QBufs<'ctx> {
    w: PointerValue<'ctx>,
    xq: PointerValue<'ctx>,
    xd: PointerValue<'ctx>,
    xs: PointerValue<'ctx>,
}

/// A loop `for index in 0..trips` whose body the caller emits between
/// [`Lowering::counted_loop`] and [`Lowering::close_loop`].
struct CountedLoop<'ctx> {
    ctr: PointerValue<'ctx>,
    index: IntValue<'ctx>,
    head: inkwell::basic_block::BasicBlock<'ctx>,
    exit: inkwell::basic_block::BasicBlock<'ctx>,
}

impl<'ctx> Lowering<'ctx, '_> {
    /// Opens a counted loop: counter slot, head test, builder left in the body.
    fn counted_loop(
        &self,
        f: &Frame<'ctx>,
        what: &str,
        var: &str,
        trips: u64,
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
            .build_int_compare(IntPredicate::SLT, index, it.i64.const_int(trips, true), "")
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
    fn close_loop(&self, f: &Frame<'ctx>, lp: &CountedLoop<'ctx>) -> R<()> {
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

    fn splat_f32(&self, f: &Frame<'ctx>, x: FloatValue<'ctx>, n: u32) -> R<VectorValue<'ctx>> {
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
        if self.target.avx2() {
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
        let rows = q.accs.len();
        let v8f = it.f32.vec_type(8);
        let v16b = it.i8.vec_type(16);
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
        let lp = self.counted_loop(f, "qdot", "qblk", q.blocks as u64)?;
        let blk = lp.index;
        let b = &f.b;
        let bb = it.i64.const_int(q.fmt.block_bytes() as u64, true);
        let wb = b.build_int_mul(blk, bb, "").map_err(llvm_err)?;
        let wb = b.build_int_add(w_off, wb, "wb").map_err(llvm_err)?;
        let at = |k: i64| {
            f.b.build_int_add(wb, it.i64.const_int(k as u64, true), "")
                .map_err(llvm_err)
        };
        let d = self.qdot_load(f, it.f16.into(), wp, wb)?.into_float_value();
        let d = b.build_float_ext(d, it.f32, "d").map_err(llvm_err)?;
        let m = match q.fmt {
            QFmt::Q8_0 => None,
            QFmt::Q4_0 => Some(
                b.build_float_mul(d, it.f32.const_float(-8.0), "m")
                    .map_err(llvm_err)?,
            ),
            QFmt::Q4_1 => {
                let m = self
                    .qdot_load(f, it.f16.into(), wp, at(2)?)?
                    .into_float_value();
                Some(b.build_float_ext(m, it.f32, "m").map_err(llvm_err)?)
            }
        };
        // The block's 32 weight quants, in activation order, as two halves of 16.
        let qs = at(q.fmt.qs_offset())?;
        let v16w = it.i16.vec_type(16);
        let unsigned_w = q.fmt != QFmt::Q8_0;
        let (w_lo, w_hi) = match q.fmt {
            QFmt::Q8_0 => {
                let lo = self.qdot_load(f, v16b.into(), wp, qs)?.into_vector_value();
                let q16 =
                    f.b.build_int_add(qs, it.i64.const_int(16, false), "")
                        .map_err(llvm_err)?;
                let hi = self.qdot_load(f, v16b.into(), wp, q16)?.into_vector_value();
                (lo, hi)
            }
            QFmt::Q4_0 | QFmt::Q4_1 => {
                let raw = self.qdot_load(f, v16b.into(), wp, qs)?.into_vector_value();
                let c15 =
                    inkwell::types::VectorType::const_vector(&[it.i8.const_int(15, false); 16]);
                let c4 = inkwell::types::VectorType::const_vector(&[it.i8.const_int(4, false); 16]);
                let lo = b.build_and(raw, c15, "lo").map_err(llvm_err)?;
                let hi = b
                    .build_right_shift(raw, c4, false, "hi")
                    .map_err(llvm_err)?;
                (lo, hi)
            }
        };
        let widen = |v: VectorValue<'ctx>| -> R<VectorValue<'ctx>> {
            if unsigned_w {
                f.b.build_int_z_extend(v, v16w, "").map_err(llvm_err)
            } else {
                f.b.build_int_s_extend(v, v16w, "").map_err(llvm_err)
            }
        };
        let (w_lo, w_hi) = (widen(w_lo)?, widen(w_hi)?);
        for i in 0..rows {
            let b = &f.b;
            let xb = b.build_int_add(x_blk[i], blk, "xb").map_err(llvm_err)?;
            let x64 = b
                .build_int_mul(xb, it.i64.const_int(64, false), "")
                .map_err(llvm_err)?;
            let x_lo = self
                .qdot_load(f, v16w.into(), xqp, x64)?
                .into_vector_value();
            let b = &f.b;
            let x64h = b
                .build_int_add(x64, it.i64.const_int(32, false), "")
                .map_err(llvm_err)?;
            let x_hi = self
                .qdot_load(f, v16w.into(), xqp, x64h)?
                .into_vector_value();
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
            if self.x86_64() {
                // SSE2 (every x86-64): four 8-lane `pmaddwd`, concatenated to the
                // AVX2 path's eight i32 lanes.
                let mut parts = Vec::new();
                for (wv, xv) in [(w_lo, x_lo), (w_hi, x_hi)] {
                    let mut halves = Vec::new();
                    for h in 0..2u64 {
                        let idx: Vec<IntValue> =
                            (0..8).map(|i| it.i32.const_int(h * 8 + i, false)).collect();
                        let mask = inkwell::types::VectorType::const_vector(&idx);
                        let b = &f.b;
                        let wh = b
                            .build_shuffle_vector(wv, wv.get_type().get_undef(), mask, "")
                            .map_err(llvm_err)?;
                        let xh = b
                            .build_shuffle_vector(xv, xv.get_type().get_undef(), mask, "")
                            .map_err(llvm_err)?;
                        halves.push(
                            self.x86(f, "llvm.x86.sse2.pmadd.wd", &[wh, xh])?
                                .into_vector_value(),
                        );
                    }
                    parts.push(halves);
                }
                let b = &f.b;
                let lo = b
                    .build_int_add(parts[0][0], parts[1][0], "")
                    .map_err(llvm_err)?;
                let hi = b
                    .build_int_add(parts[0][1], parts[1][1], "")
                    .map_err(llvm_err)?;
                let idx: Vec<IntValue> = (0..8).map(|i| it.i32.const_int(i, false)).collect();
                let mask = inkwell::types::VectorType::const_vector(&idx);
                let p32 = b.build_shuffle_vector(lo, hi, mask, "").map_err(llvm_err)?;
                self.accumulate_v8(f, p32, scale, vacc[i])?;
            } else {
                let w32 = it.i32.vec_type(16);
                let red = it
                    .intrinsic(self.module, "llvm.vector.reduce.add", &[w32.into()])
                    .ok_or_else(|| llvm_err("llvm.vector.reduce.add"))?;
                let mut sum = it.i32.const_zero();
                for (wv, xv) in [(w_lo, x_lo), (w_hi, x_hi)] {
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
                    sum = b.build_int_add(sum, part, "").map_err(llvm_err)?;
                }
                let sf = b
                    .build_signed_int_to_float(sum, it.f32, "")
                    .map_err(llvm_err)?;
                self.accumulate_f32(f, scale, sf, sacc[i])?;
            }
            if let Some(m) = m {
                let xs = self
                    .qdot_load(f, it.f32.into(), xsp, x4)?
                    .into_float_value();
                self.accumulate_f32(f, m, xs, sacc[i])?;
            }
        }
        self.close_loop(f, &lp)?;
        // acc += Σ lanes + the scalar terms.
        for (i, a) in q.accs.iter().enumerate() {
            let b = &f.b;
            let v = b
                .build_load(v8f, vacc[i], "")
                .map_err(llvm_err)?
                .into_vector_value();
            let sum = self.hsum8(b, v)?;
            let s = b
                .build_load(it.f32, sacc[i], "")
                .map_err(llvm_err)?
                .into_float_value();
            let tot = b.build_float_add(sum, s, "").map_err(llvm_err)?;
            let slot = self.var_slot(f, *a)?;
            let b = &f.b;
            let cur = b
                .build_load(it.f32, slot, "")
                .map_err(llvm_err)?
                .into_float_value();
            let nv = b.build_float_add(cur, tot, "").map_err(llvm_err)?;
            b.build_store(slot, nv).map_err(llvm_err)?;
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
        let lp = self.counted_loop(f, "qdot", "qpair", (q.blocks / 2) as u64)?;
        let b = &f.b;
        let blk0 = b
            .build_int_mul(lp.index, it.i64.const_int(2, false), "blk")
            .map_err(llvm_err)?;
        // The weight stream is read once: ask for it QDOT_PREFETCH bytes ahead (a
        // prefetch never faults, past the end included).
        let ahead = b
            .build_int_mul(
                blk0,
                it.i64.const_int(q.fmt.block_bytes() as u64, false),
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
        self.qdot_avx2_pair(f, q, &bufs, w_off, &rows, blk0, false, &accs)?;
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
            if q.fmt != QFmt::Q8_0 {
                let m = chains(accs[set].1)?;
                tot = b.build_float_add(tot, m, "").map_err(llvm_err)?;
            }
            let slot = self.var_slot(f, *a)?;
            let b = &f.b;
            let cur = b
                .build_load(it.f32, slot, "")
                .map_err(llvm_err)?
                .into_float_value();
            let nv = b.build_float_add(cur, tot, "").map_err(llvm_err)?;
            b.build_store(slot, nv).map_err(llvm_err)?;
        }
        Ok(())
    }

    /// The weight block `blk` of [`Self::qdot_avx2`]: its 32 quants as two halves of
    /// 16 i16 in activation order, and `[d, m]` (Q4_0's `m` is `-8 d`; Q8_0's 0).
    fn qdot_avx2_weights(
        &self,
        f: &Frame<'ctx>,
        q: &QDot,
        w: PointerValue<'ctx>,
        w_off: IntValue<'ctx>,
        blk: IntValue<'ctx>,
    ) -> R<(VectorValue<'ctx>, VectorValue<'ctx>, VectorValue<'ctx>)> {
        let it = self.it;
        let b = &f.b;
        let c64 = |k: i64| it.i64.const_int(k as u64, true);
        let wb = b
            .build_int_mul(blk, c64(q.fmt.block_bytes()), "")
            .map_err(llvm_err)?;
        let wb = b.build_int_add(w_off, wb, "wb").map_err(llvm_err)?;
        let qs = b
            .build_int_add(wb, c64(q.fmt.qs_offset()), "qs")
            .map_err(llvm_err)?;
        let v16b = it.i8.vec_type(16);
        let v16w = it.i16.vec_type(16);
        let v2f = it.f32.vec_type(2);
        let splat16 =
            |k: u64| inkwell::types::VectorType::const_vector(&[it.i16.const_int(k, false); 16]);
        let (lo, hi) = match q.fmt {
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
            QFmt::Q4_0 | QFmt::Q4_1 => {
                // Byte i holds quant i (low nibble) and quant i + 16 (high nibble).
                let raw = self.qdot_load(f, v16b.into(), w, qs)?.into_vector_value();
                let b = &f.b;
                let w = b.build_int_z_extend(raw, v16w, "").map_err(llvm_err)?;
                (
                    b.build_and(w, splat16(15), "lo").map_err(llvm_err)?,
                    b.build_right_shift(w, splat16(4), false, "hi")
                        .map_err(llvm_err)?,
                )
            }
        };
        let dm = match q.fmt {
            QFmt::Q4_1 => {
                let h = self
                    .qdot_load(f, it.f16.vec_type(2).into(), w, wb)?
                    .into_vector_value();
                f.b.build_float_ext(h, v2f, "dm").map_err(llvm_err)?
            }
            QFmt::Q4_0 | QFmt::Q8_0 => {
                let h = self.qdot_load(f, it.f16.into(), w, wb)?.into_float_value();
                let b = &f.b;
                let d = b.build_float_ext(h, it.f32, "d").map_err(llvm_err)?;
                let m = if q.fmt == QFmt::Q4_0 {
                    b.build_float_mul(d, it.f32.const_float(-8.0), "m")
                        .map_err(llvm_err)?
                } else {
                    it.f32.const_zero()
                };
                let v = b
                    .build_insert_element(v2f.get_undef(), d, it.i32.const_zero(), "")
                    .map_err(llvm_err)?;
                b.build_insert_element(v, m, it.i32.const_int(1, false), "dm")
                    .map_err(llvm_err)?
            }
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
        let v16w = it.i16.vec_type(16);
        let (wa_lo, wa_hi, dm_a) = self.qdot_avx2_weights(f, q, bufs.w, w_off, blk)?;
        let (wb, dm_b) = if trailing {
            (None, v2f.const_zero())
        } else {
            let nb = f.b.build_int_add(blk, c64(1), "").map_err(llvm_err)?;
            let (lo, hi, dm) = self.qdot_avx2_weights(f, q, bufs.w, w_off, nb)?;
            (Some((lo, hi)), dm)
        };
        // The integer block sums' 8-lane partials of one row (zero for the absent
        // partner).
        let partial = |xblk: IntValue<'ctx>, second: bool| -> R<VectorValue<'ctx>> {
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
            let x64 = b.build_int_mul(xb, c64(64), "").map_err(llvm_err)?;
            let x64h = b.build_int_add(x64, c64(32), "").map_err(llvm_err)?;
            let x_lo = self
                .qdot_load(f, v16w.into(), bufs.xq, x64)?
                .into_vector_value();
            let x_hi = self
                .qdot_load(f, v16w.into(), bufs.xq, x64h)?
                .into_vector_value();
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
        let has_min = q.fmt != QFmt::Q8_0;
        let quads = rows.len() / QDot::QUAD;
        if quads > 0 {
            let dw8 = self.shuffle(f, dm_a, dm_b, &[0, 0, 0, 0, 2, 2, 2, 2])?;
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
                    if trailing {
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
        let dw2 = self.shuffle(f, dm_a, dm_b, &[0, 2])?;
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
                let bv = if trailing {
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
    fn x86_64(&self) -> bool {
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
