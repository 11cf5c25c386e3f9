//! Lowering of [`FTile`], the float linear's outer-product tile: a panel of 32 weight
//! rows packed side by side (`Pack::Panels32`), so one vector load gives one position
//! of 16 (AVX-512) or 8 output columns, and each activation row contributes a
//! broadcast scalar times that vector (`vfmadd231ps zmm, zmm, m32{1to16}`). Every lane
//! is its own in-order chain of FMAs, the arithmetic [`FTile`] defines, so no
//! horizontal sums and the same bits on every ISA. Rows go in passes that fit the
//! registers: 12 rows of two 16-lane accumulators with AVX-512 (24 of the 32 vector
//! registers; 14 rows measured slower, 8 rows 2.5-10% slower in SmolLM2's f32 prefill),
//! else 2 rows of four 8-lane ones.

use super::{llvm_err, Frame, Lowering, R};
use inkwell::types::VectorType;
use inkwell::values::{BasicValue, BasicValueEnum, IntValue, PointerValue, VectorValue};
use llmc_kernels::{FTile, Ty};

/// AVX2 tiles of more rows than this run half-panel passes of
/// [`AVX2_HALF_PANEL_ROWS`] rows; up to it, whole-panel passes of 2 rows (a decode
/// row's one pass keeps four chains).
const AVX2_FULL_PANEL_ROWS: usize = 2;

/// Rows of an AVX2 half-panel pass: 6 rows of two 8-lane accumulators, 12 of the 16
/// registers (BLIS's 6 x 16).
const AVX2_HALF_PANEL_ROWS: usize = 6;

/// How far ahead (bytes) an [`FTile`] prefetches its panel.
const FTILE_PREFETCH: u64 = 4096;
impl<'ctx> Lowering<'ctx, '_> {
    /// Emits `t` at the builder's position.
    pub(super) fn ftile(&mut self, f: &mut Frame<'ctx>, t: &FTile) -> R<()> {
        let w_off = self.expr(f, &t.w_off)?.0.into_int_value();
        let k = self.expr(f, &t.k)?.0.into_int_value();
        let out_off = self.expr(f, &t.out_off)?.0.into_int_value();
        let w_stride = self.expr(f, &t.w_stride)?.0.into_int_value();
        let mut rows = Vec::new();
        for e in &t.x_rows {
            rows.push(self.expr(f, e)?.0.into_int_value());
        }
        let (lanes, per_pass) = if self.target.avx512() {
            (16u32, FTile::ROWS)
        } else {
            (8, 2)
        };
        let (w, x, out) = (
            self.tile_buf(f, t.w)?,
            self.tile_buf(f, t.x)?,
            self.tile_buf(f, t.out)?,
        );
        let pf = match &t.prefetch {
            Some((a, b)) => Some((
                self.expr(f, a)?.0.into_int_value(),
                self.expr(f, b)?.0.into_int_value(),
            )),
            None => None,
        };
        let idx: Vec<usize> = (0..rows.len()).collect();
        let ends = [w_off, w_stride, k, out_off];
        let nv = FTile::LANES as u32 / lanes;
        if !self.target.avx512() && rows.len() > AVX2_FULL_PANEL_ROWS {
            // AVX2 with several rows: half the panel at a time for up to 6 rows (12
            // accumulators), both row passes of a half before the other half, so a
            // half (24 KiB at k = 384) is read from L2 once and then from L1 (the
            // whole panel per pass of 2 rows is read from L2 by every pass).
            let mut first = true;
            for half in [0..nv / 2, nv / 2..nv] {
                for chunk in idx.chunks(AVX2_HALF_PANEL_ROWS) {
                    let pf = if first { pf } else { None };
                    first = false;
                    let cols = half.clone();
                    self.ftile_pass(f, t, (w, x, out), ends, &rows, chunk, lanes, cols, pf)?;
                }
            }
            return Ok(());
        }
        for (i, chunk) in idx.chunks(per_pass).enumerate() {
            // The next panel's slice is asked for once, by the first pass.
            let pf = if i == 0 { pf } else { None };
            self.ftile_pass(f, t, (w, x, out), ends, &rows, chunk, lanes, 0..nv, pf)?;
        }
        Ok(())
    }

    /// Element `i` (of type `ty`) of `base`, `ty` a scalar or vector type.
    fn ft_gep(
        &self,
        f: &Frame<'ctx>,
        elem: Ty,
        base: PointerValue<'ctx>,
        i: IntValue<'ctx>,
    ) -> R<PointerValue<'ctx>> {
        // SAFETY: indices come from the kernel; the loop-IR interpreter checks the same
        // accesses against the buffer sizes in tests.
        unsafe { f.b.build_gep(self.it.mem_ty(elem), base, &[i], "") }.map_err(llvm_err)
    }

    /// Rows `which` of an [`FTile`] against all 32 columns of the panel.
    #[allow(clippy::too_many_arguments)]
    fn ftile_pass(
        &self,
        f: &Frame<'ctx>,
        t: &FTile,
        (w, x, out): (PointerValue<'ctx>, PointerValue<'ctx>, PointerValue<'ctx>),
        [w_off, w_stride, k, out_off]: [IntValue<'ctx>; 4],
        rows: &[IntValue<'ctx>],
        which: &[usize],
        lanes: u32,
        cols: std::ops::Range<u32>,
        next: Option<(IntValue<'ctx>, IntValue<'ctx>)>,
    ) -> R<()> {
        let it = self.it;
        let e = llvm_err;
        let vf = it.f32.vec_type(lanes);
        let nv = cols.len() as u32;
        let c64 = |k: u64| it.i64.const_int(k, false);
        // The accumulators: per row, `nv` vectors of `lanes` columns.
        let mut accs = Vec::new();
        for _ in which {
            let mut row = Vec::new();
            for _ in 0..nv {
                let a = f.allocas.build_alloca(vf, "ftacc").map_err(e)?;
                f.b.build_store(a, vf.const_zero()).map_err(e)?;
                row.push(a);
            }
            accs.push(row);
        }
        let fma = it
            .intrinsic(self.module, "llvm.fma", &[vf.into()])
            .ok_or_else(|| llvm_err("llvm.fma"))?;
        let lp = self.counted_loop_to(f, "ftile", "ftp", k)?;
        let b = &f.b;
        let base = b.build_int_mul(lp.index, w_stride, "").map_err(e)?;
        let base = b.build_int_add(base, w_off, "").map_err(e)?;
        // A 16-bit panel is streamed once: each position's line is asked for
        // FTILE_PREFETCH bytes ahead (a prefetch never faults, past the end too).
        // Measured on the Xeon: F16 decode +14%, pp128 +5%; f32 panels (two lines a
        // position) decoded 10% slower with it, so they go without.
        let es = t.w_ty.bytes() as u64;
        let lines = if es == 2 { 1 } else { 0 };
        let pf = it
            .intrinsic(self.module, "llvm.prefetch", &[it.ptr.into()])
            .ok_or_else(|| llvm_err("llvm.prefetch"))?;
        let i32c = |v: u64| it.i32.const_int(v, false).into();
        for line in 0..lines {
            let at = f.b.build_int_mul(base, c64(es), "").map_err(e)?;
            let at =
                f.b.build_int_add(at, c64(FTILE_PREFETCH + 64 * line), "")
                    .map_err(e)?;
            // SAFETY: only an address for the prefetch hint; never dereferenced.
            let pp = unsafe { f.b.build_gep(it.i8, w, &[at], "") }.map_err(e)?;
            f.b.build_call(pf, &[pp.into(), i32c(0), i32c(3), i32c(1)], "")
                .map_err(e)?;
        }
        if let Some((start, step)) = next {
            let b = &f.b;
            let at = b.build_int_mul(lp.index, step, "").map_err(e)?;
            let at = b.build_int_add(start, at, "").map_err(e)?;
            let pp = self.ft_gep(f, t.w_ty, w, at)?;
            // Towards L2 (locality 2): the panel is read by the next item's tiles.
            f.b.build_call(pf, &[pp.into(), i32c(0), i32c(2), i32c(1)], "")
                .map_err(e)?;
        }
        let mut wv: Vec<VectorValue<'ctx>> = Vec::new();
        for v in cols.clone() {
            let at =
                f.b.build_int_add(base, c64((v * lanes) as u64), "")
                    .map_err(e)?;
            let p = self.ft_gep(f, t.w_ty, w, at)?;
            let mt = match t.w_ty {
                Ty::F16 => it.f16.vec_type(lanes),
                Ty::BF16 => it.i16.vec_type(lanes),
                _ => vf,
            };
            let ld = f.b.build_load(mt, p, "").map_err(e)?;
            if let Some(i) = ld.as_instruction_value() {
                i.set_alignment(1).map_err(llvm_err)?;
            }
            let ld = ld.into_vector_value();
            let b = &f.b;
            wv.push(match t.w_ty {
                Ty::F32 => ld,
                Ty::F16 => b.build_float_ext(ld, vf, "").map_err(e)?,
                // bf16: the upper half of an f32.
                _ => {
                    let vi = it.i32.vec_type(lanes);
                    let z = b.build_int_z_extend(ld, vi, "").map_err(e)?;
                    let sh = VectorType::const_vector(&vec![
                        it.i32.const_int(16, false);
                        lanes as usize
                    ]);
                    let z = b.build_left_shift(z, sh, "").map_err(e)?;
                    b.build_bit_cast(z, vf, "").map_err(e)?.into_vector_value()
                }
            });
        }
        for (r, &i) in which.iter().enumerate() {
            let b = &f.b;
            let at = if t.x_stride == 1 {
                lp.index
            } else {
                b.build_int_mul(lp.index, c64(t.x_stride as u64), "")
                    .map_err(e)?
            };
            let at = b.build_int_add(rows[i], at, "").map_err(e)?;
            let p = self.ft_gep(f, Ty::F32, x, at)?;
            let xs = b.build_load(it.f32, p, "").map_err(e)?.into_float_value();
            let xv = self.splat_f32(f, xs, lanes)?;
            let b = &f.b;
            for (a, wvv) in accs[r].iter().zip(&wv) {
                let cur = b.build_load(vf, *a, "").map_err(e)?;
                let args: [inkwell::values::BasicMetadataValueEnum; 3] =
                    [xv.into(), (*wvv).into(), cur.into()];
                let nx = b
                    .build_call(fma, &args, "")
                    .map_err(e)?
                    .try_as_basic_value()
                    .basic()
                    .ok_or_else(|| llvm_err("llvm.fma returned nothing"))?;
                b.build_store(*a, nx).map_err(e)?;
            }
        }
        self.close_loop(f, &lp)?;
        for (r, &i) in which.iter().enumerate() {
            for (v, a) in cols.clone().zip(&accs[r]) {
                let b = &f.b;
                let val: BasicValueEnum = b.build_load(vf, *a, "").map_err(e)?;
                let at = c64((i * FTile::LANES) as u64 + (v as u64) * lanes as u64);
                let at = f.b.build_int_add(out_off, at, "").map_err(e)?;
                let p = self.ft_gep(f, Ty::F32, out, at)?;
                let st = f.b.build_store(p, val).map_err(e)?;
                st.set_alignment(4).map_err(llvm_err)?;
                // Volatile, so the tile (a small local) stays memory: promoted to
                // registers, each pass's results stayed live across the next
                // passes' loops and pushed their accumulators to the stack (a
                // store and a reload per accumulator every 4 steps, the FMA chains
                // through store-to-load forwarding).
                st.set_volatile(true).map_err(llvm_err)?;
            }
        }
        Ok(())
    }
}
