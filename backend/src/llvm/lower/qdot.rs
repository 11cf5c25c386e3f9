//! Lowering of the loop IR's block-quantized dot product ([`QDot`]), the quantized
//! linear's inner loop. With AVX2, a block is two `vpmaddwd` (the 32 weight quants
//! widened to i16 once per weight row, times the int16 activations, pairs summed to
//! eight i32 lanes), converted and multiplied by the two block scales into a vector
//! accumulator per activation row: no horizontal reduction until the row is done.
//! Other x86-64 CPUs use SSE2's 8-lane `pmaddwd` (four per block); other targets get
//! portable vector IR (widen, multiply, reduce) that LLVM legalises.

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
            let x4 = b
                .build_int_mul(xb, it.i64.const_int(4, false), "")
                .map_err(llvm_err)?;
            let xd = self
                .qdot_load(f, it.f32.into(), xdp, x4)?
                .into_float_value();
            let b = &f.b;
            let scale = b.build_float_mul(d, xd, "scale").map_err(llvm_err)?;
            if self.target.avx2() {
                let p_lo = self
                    .x86(f, "llvm.x86.avx2.pmadd.wd", &[w_lo, x_lo])?
                    .into_vector_value();
                let p_hi = self
                    .x86(f, "llvm.x86.avx2.pmadd.wd", &[w_hi, x_hi])?
                    .into_vector_value();
                let b = &f.b;
                let p32 = b.build_int_add(p_lo, p_hi, "").map_err(llvm_err)?;
                self.accumulate_v8(f, p32, scale, vacc[i])?;
            } else if self.x86_64() {
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

    /// The AVX2 form of `q`: two blocks per loop iteration into two accumulator sets
    /// (so the FMA chains of consecutive blocks overlap), the 4-bit quants widened
    /// to i16 straight from memory and split with one `and` and one shift, and
    /// Q4_1's scale and minimum converted as one f16 pair: `(d, m) · (xd, xs)` gives
    /// the block's scale product and minimum term in one multiply, the minimum
    /// terms summed in lane 1 of a 2-lane accumulator.
    fn qdot_avx2(&mut self, f: &mut Frame<'ctx>, q: &QDot) -> R<()> {
        let it = self.it;
        let w_off = self.expr(f, &q.w_off)?.0.into_int_value();
        let mut x_blk = Vec::new();
        for e in &q.x_blk {
            x_blk.push(self.expr(f, e)?.0.into_int_value());
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
        let rows = q.accs.len();
        let v8f = it.f32.vec_type(8);
        let v2f = it.f32.vec_type(2);
        // Accumulator sets (even and odd blocks): per row an <8 x float> for the
        // quant sums and a <2 x float> whose lane 1 sums the minimum terms. Only set 0
        // takes blocks (set 1 stays zero): a row's sum must not depend on how many
        // rows share the QDot (batch invariance: a sequence's logits are the same
        // alone and among others), and with several rows a second set would not fit
        // the 16 vector registers (prefill measured 15% slower).
        let mut sets = Vec::new();
        for _ in 0..2 {
            let mut set = Vec::new();
            for _ in 0..rows {
                let v = f.allocas.build_alloca(v8f, "qacc").map_err(llvm_err)?;
                f.b.build_store(v, v8f.const_zero()).map_err(llvm_err)?;
                let m = f.allocas.build_alloca(v2f, "qmacc").map_err(llvm_err)?;
                f.b.build_store(m, v2f.const_zero()).map_err(llvm_err)?;
                set.push((v, m));
            }
            sets.push(set);
        }
        let pairs = q.blocks / 2;
        let lp = self.counted_loop(f, "qdot", "qpair", pairs as u64)?;
        let pair = lp.index;
        let b = &f.b;
        let blk0 = b
            .build_int_mul(pair, it.i64.const_int(2, false), "blk")
            .map_err(llvm_err)?;
        // The weight stream is read once: ask for it QDOT_PREFETCH bytes ahead (a
        // prefetch never faults, past the end included).
        let ahead =
            f.b.build_int_mul(
                blk0,
                it.i64.const_int(q.fmt.block_bytes() as u64, false),
                "",
            )
            .map_err(llvm_err)?;
        let ahead = f.b.build_int_add(ahead, w_off, "").map_err(llvm_err)?;
        let ahead =
            f.b.build_int_add(ahead, it.i64.const_int(QDOT_PREFETCH, false), "")
                .map_err(llvm_err)?;
        // SAFETY: only an address for the prefetch hint; never dereferenced.
        let pp = unsafe { f.b.build_gep(it.i8, bufs.w, &[ahead], "") }.map_err(llvm_err)?;
        let pf = it
            .intrinsic(self.module, "llvm.prefetch", &[it.ptr.into()])
            .ok_or_else(|| llvm_err("llvm.prefetch"))?;
        let i32c = |v: u64| it.i32.const_int(v, false).into();
        f.b.build_call(pf, &[pp.into(), i32c(0), i32c(3), i32c(1)], "")
            .map_err(llvm_err)?;
        for u in 0..sets.len() {
            let set = &sets[0];
            let blk =
                f.b.build_int_add(blk0, it.i64.const_int(u as u64, false), "")
                    .map_err(llvm_err)?;
            self.qdot_avx2_block(f, q, &bufs, w_off, &x_blk, blk, set)?;
        }
        self.close_loop(f, &lp)?;
        if q.blocks % 2 == 1 {
            let last = it.i64.const_int((q.blocks - 1) as u64, true);
            self.qdot_avx2_block(f, q, &bufs, w_off, &x_blk, last, &sets[0])?;
        }
        // acc += Σ lanes of both sets + lane 1 of both minimum sums.
        for (i, a) in q.accs.iter().enumerate() {
            let b = &f.b;
            let load_v = |p: PointerValue<'ctx>, t: BasicTypeEnum<'ctx>| {
                b.build_load(t, p, "")
                    .map_err(llvm_err)
                    .map(|v| v.into_vector_value())
            };
            let v = b
                .build_float_add(
                    load_v(sets[0][i].0, v8f.into())?,
                    load_v(sets[1][i].0, v8f.into())?,
                    "",
                )
                .map_err(llvm_err)?;
            let mut tot = self.hsum8(b, v)?;
            if q.fmt != QFmt::Q8_0 {
                let m = b
                    .build_float_add(
                        load_v(sets[0][i].1, v2f.into())?,
                        load_v(sets[1][i].1, v2f.into())?,
                        "",
                    )
                    .map_err(llvm_err)?;
                let m1 = b
                    .build_extract_element(m, it.i32.const_int(1, false), "")
                    .map_err(llvm_err)?
                    .into_float_value();
                tot = b.build_float_add(tot, m1, "").map_err(llvm_err)?;
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

    /// One block `blk` of [`Self::qdot_avx2`] into the accumulator set `set`.
    #[allow(clippy::too_many_arguments)]
    fn qdot_avx2_block(
        &self,
        f: &Frame<'ctx>,
        q: &QDot,
        bufs: &QBufs<'ctx>,
        w_off: IntValue<'ctx>,
        x_blk: &[IntValue<'ctx>],
        blk: IntValue<'ctx>,
        set: &[(PointerValue<'ctx>, PointerValue<'ctx>)],
    ) -> R<()> {
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
        // The 32 quants as two halves of 16 i16 in activation order.
        let (w_lo, w_hi) = match q.fmt {
            QFmt::Q8_0 => {
                let lo = self.qdot_load(f, v16b.into(), bufs.w, qs)?;
                let q16 = f.b.build_int_add(qs, c64(16), "").map_err(llvm_err)?;
                let hi = self.qdot_load(f, v16b.into(), bufs.w, q16)?;
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
                let raw = self
                    .qdot_load(f, v16b.into(), bufs.w, qs)?
                    .into_vector_value();
                let b = &f.b;
                let w = b.build_int_z_extend(raw, v16w, "").map_err(llvm_err)?;
                (
                    b.build_and(w, splat16(15), "lo").map_err(llvm_err)?,
                    b.build_right_shift(w, splat16(4), false, "hi")
                        .map_err(llvm_err)?,
                )
            }
        };
        // The weight block's scale (lane 0) and minimum (lane 1; Q8_0 has none).
        let dm = match q.fmt {
            QFmt::Q4_1 => {
                let h = self
                    .qdot_load(f, it.f16.vec_type(2).into(), bufs.w, wb)?
                    .into_vector_value();
                f.b.build_float_ext(h, v2f, "dm").map_err(llvm_err)?
            }
            QFmt::Q4_0 | QFmt::Q8_0 => {
                let h = self
                    .qdot_load(f, it.f16.into(), bufs.w, wb)?
                    .into_float_value();
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
        for (i, xblk) in x_blk.iter().enumerate() {
            let b = &f.b;
            let xb = b.build_int_add(*xblk, blk, "xb").map_err(llvm_err)?;
            let x64 = b.build_int_mul(xb, c64(64), "").map_err(llvm_err)?;
            let x64h = b.build_int_add(x64, c64(32), "").map_err(llvm_err)?;
            let x4 = b.build_int_mul(xb, c64(4), "").map_err(llvm_err)?;
            let x_lo = self
                .qdot_load(f, v16w.into(), bufs.xq, x64)?
                .into_vector_value();
            let x_hi = self
                .qdot_load(f, v16w.into(), bufs.xq, x64h)?
                .into_vector_value();
            let xd = self.qdot_load(f, it.f32.into(), bufs.xd, x4)?;
            let scale = if q.fmt == QFmt::Q8_0 {
                let d =
                    f.b.build_extract_element(dm, it.i32.const_zero(), "")
                        .map_err(llvm_err)?
                        .into_float_value();
                f.b.build_float_mul(d, xd.into_float_value(), "scale")
                    .map_err(llvm_err)?
            } else {
                // (d · xd, m · xs) in one multiply.
                let xs = self.qdot_load(f, it.f32.into(), bufs.xs, x4)?;
                let b = &f.b;
                let v = b
                    .build_insert_element(v2f.get_undef(), xd, it.i32.const_zero(), "")
                    .map_err(llvm_err)?;
                let v = b
                    .build_insert_element(v, xs, it.i32.const_int(1, false), "xds")
                    .map_err(llvm_err)?;
                let prod = b.build_float_mul(dm, v, "").map_err(llvm_err)?;
                let cur = b
                    .build_load(v2f, set[i].1, "")
                    .map_err(llvm_err)?
                    .into_vector_value();
                let s = b.build_float_add(cur, prod, "").map_err(llvm_err)?;
                b.build_store(set[i].1, s).map_err(llvm_err)?;
                b.build_extract_element(prod, it.i32.const_zero(), "scale")
                    .map_err(llvm_err)?
                    .into_float_value()
            };
            let p_lo = self
                .x86(f, "llvm.x86.avx2.pmadd.wd", &[w_lo, x_lo])?
                .into_vector_value();
            let p_hi = self
                .x86(f, "llvm.x86.avx2.pmadd.wd", &[w_hi, x_hi])?
                .into_vector_value();
            let p32 = f.b.build_int_add(p_lo, p_hi, "").map_err(llvm_err)?;
            self.accumulate_v8(f, p32, scale, set[i].0)?;
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
