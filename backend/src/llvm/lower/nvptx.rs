//! The NVPTX side of the target seam ([`super::super::target`]): the PTX kernel entry,
//! grid and block loops as special registers, barriers, warp shuffles, shared arrays
//! in address space 3, and the math functions PTX has no library for. Everything
//! else a GPU kernel contains is lowered by the shared code in `lower.rs`.

use super::super::target::{PTX_KERNEL_CC, SHARED_ADDRESS_SPACE};
use super::{llvm_err, Frame, Lowering, R};
use inkwell::module::Linkage;
use inkwell::types::BasicType;
use inkwell::values::{BasicValue, BasicValueEnum, FloatValue, FunctionValue, IntValue};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};
use llmc_kernels::gpu::Alignment;
use llmc_kernels::{BufId, Expr, LoopTag, Mma, Stmt, Ty, UnOp, VarId};

impl<'ctx> Lowering<'ctx, '_> {
    /// The alignment a raw (byte-offset) load may assume. On the GPU, buffers start at
    /// least 64-byte aligned (device allocations are 256-byte aligned and the data
    /// section places every piece at a multiple of 64), so a load is aligned to what
    /// its offset is known to be a multiple of (up to its size); on the CPU it is 1.
    pub(super) fn raw_align(&mut self, off: &Expr, ty: Ty) -> u32 {
        if !self.target.is_gpu() {
            return 1;
        }
        self.alignment().raw_bytes(off, ty.bytes() as u64) as u32
    }

    /// The kernel's [`Alignment`] facts, computed once.
    fn alignment(&mut self) -> &Alignment {
        self.align_facts
            .get_or_insert_with(|| Alignment::of(self.k))
    }

    /// The alignment an element access `buf[index]` may assume on the GPU
    /// ([`Alignment::elem_bytes`]: up to 16 bytes, so adjacent accesses become 64- and
    /// 128-bit loads and stores; LLVM's load/store vectorizer needs the alignment).
    /// `None` on the CPU and for local arrays (default alignment).
    pub(super) fn elem_align(&mut self, buf: BufId, index: &Expr) -> Option<u32> {
        let b = self.k.buf(buf);
        if !self.target.is_gpu() || b.role == llmc_kernels::Role::Local {
            return None;
        }
        let bytes = b.ty.bytes() as u64;
        Some(self.alignment().elem_bytes(index, bytes) as u32)
    }

    /// The kernel as a PTX entry: `void NAME(ptr bufs.., i64 dims..)`, calling
    /// convention 71, external.
    pub(super) fn lower_ptx_kernel(&mut self) -> R<FunctionValue<'ctx>> {
        if !llmc_kernels::gpu::is_gpu(self.k) {
            return Err(self.err("not in the GPU form (no grid and block loops)"));
        }
        let name = self.base.clone();
        let body = self.k.body.clone();
        let f = self.emit_fn(&name, &[], &[], None, &body, true)?;
        f.set_linkage(Linkage::External);
        f.set_call_conventions(PTX_KERNEL_CC);
        Ok(f)
    }

    /// A special register (`ctaid.x`, `tid.y`, ...) as an i64.
    fn sreg(&self, f: &Frame<'ctx>, name: &str) -> R<IntValue<'ctx>> {
        let it = self.it;
        let full = format!("llvm.nvvm.read.ptx.sreg.{name}");
        let fun = self.intr(&full, &[])?;
        let v = self.call(f, fun, &[])?.into_int_value();
        f.b.build_int_z_extend(v, it.i64, name).map_err(llvm_err)
    }

    /// A grid or block loop: this block's (thread's) iteration `lo + id * step`, run
    /// when it is below `hi` (the launch has exactly the trip count, so it always is
    /// for block loops; grid loops are guarded the same way for safety).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gpu_loop(
        &mut self,
        f: &mut Frame<'ctx>,
        var: VarId,
        lo: &Expr,
        hi: &Expr,
        step: i64,
        tag: LoopTag,
        body: &[Stmt],
    ) -> R<()> {
        if !self.target.is_gpu() {
            return Err(self.err("GPU loop tags cannot run on the CPU backend"));
        }
        let axis = |a: u8| ["x", "y", "z"].get(a as usize).copied();
        let reg = match tag {
            LoopTag::GpuGrid(a) => axis(a).map(|x| format!("ctaid.{x}")),
            LoopTag::GpuBlock(a) => axis(a).map(|x| format!("tid.{x}")),
            _ => None,
        }
        .ok_or_else(|| self.err(format!("{tag:?} loops have no NVPTX lowering")))?;
        let it = self.it;
        let id = self.sreg(f, &reg)?;
        let lo = self.expr(f, lo)?.0.into_int_value();
        let hi = self.expr(f, hi)?.0.into_int_value();
        let b = &f.b;
        let off = b
            .build_int_mul(id, it.i64.const_int(step as u64, true), "")
            .map_err(llvm_err)?;
        let v = b.build_int_add(lo, off, "").map_err(llvm_err)?;
        let slot = self.var_slot(f, var)?;
        f.b.build_store(slot, v).map_err(llvm_err)?;
        let inside =
            f.b.build_int_compare(IntPredicate::SLT, v, hi, "")
                .map_err(llvm_err)?;
        let cx = it.cx;
        let run = cx.append_basic_block(f.func, "gpu.body");
        let done = cx.append_basic_block(f.func, "gpu.done");
        f.b.build_conditional_branch(inside, run, done)
            .map_err(llvm_err)?;
        f.b.position_at_end(run);
        self.emit_block(f, body)?;
        f.b.build_unconditional_branch(done).map_err(llvm_err)?;
        f.b.position_at_end(done);
        Ok(())
    }

    /// `bar.sync 0`.
    pub(super) fn barrier(&mut self, f: &mut Frame<'ctx>) -> R<()> {
        if !self.target.is_gpu() {
            return Err(self.err("barriers exist only on GPU targets"));
        }
        let fun = self.intr("llvm.nvvm.barrier0", &[])?;
        f.b.build_call(fun, &[], "").map_err(llvm_err)?;
        Ok(())
    }

    /// `var = value` of lane `lane ^ xor` (`shfl.sync.bfly`, all lanes).
    pub(super) fn shuffle_xor(
        &mut self,
        f: &mut Frame<'ctx>,
        var: VarId,
        value: &Expr,
        xor: u32,
    ) -> R<()> {
        if !self.target.is_gpu() {
            return Err(self.err("warp shuffles exist only on GPU targets"));
        }
        let it = self.it;
        let (v, t) = self.expr(f, value)?;
        let name = match t {
            Ty::F32 => "llvm.nvvm.shfl.sync.bfly.f32",
            Ty::I32 | Ty::U32 => "llvm.nvvm.shfl.sync.bfly.i32",
            other => return Err(self.err(format!("a shuffle of {other}"))),
        };
        let fun = self.intr(name, &[])?;
        let i32c = |v: u64| it.i32.const_int(v, false);
        let r = self.call(
            f,
            fun,
            &[
                i32c(0xFFFF_FFFF).into(),
                v.into(),
                i32c(xor as u64).into(),
                i32c(0x1F).into(),
            ],
        )?;
        let slot = self.var_slot(f, var)?;
        f.b.build_store(slot, r).map_err(llvm_err)?;
        Ok(())
    }

    /// One warp's tensor-core product (`mma.sync.aligned.m16n8k8.row.col.f32.tf32`):
    /// A's and B's f32 operands rounded to tf32 (`cvt.rna.tf32.f32`), C's as they are;
    /// D's four elements into this lane's variables.
    pub(super) fn mma(&mut self, f: &mut Frame<'ctx>, m: &Mma) -> R<()> {
        if !self.target.is_gpu() {
            return Err(self.err("tensor-core products (mma) exist only on GPU targets"));
        }
        let cvt = self.intr("llvm.nvvm.f2tf32.rna", &[])?;
        let fun = self.intr("llvm.nvvm.mma.m16n8k8.row.col.tf32", &[])?;
        let mut args: Vec<inkwell::values::BasicMetadataValueEnum> = Vec::with_capacity(10);
        for (i, e) in m.operands().enumerate() {
            let (v, _) = self.expr(f, e)?;
            args.push(if i < 6 {
                self.call(f, cvt, &[v.into()])?.into()
            } else {
                v.into()
            });
        }
        let r = self.call(f, fun, &args)?.into_struct_value();
        for (i, var) in m.d.iter().enumerate() {
            let v = f.b.build_extract_value(r, i as u32, "").map_err(llvm_err)?;
            let slot = self.var_slot(f, *var)?;
            f.b.build_store(slot, v).map_err(llvm_err)?;
        }
        Ok(())
    }

    /// A block's shared array: a global in address space 3, used through a generic
    /// pointer (LLVM infers the `ld.shared`/`st.shared`).
    pub(super) fn shared_array(&mut self, f: &mut Frame<'ctx>, buf: BufId, len: i64) -> R<()> {
        let it = self.it;
        let b = self.k.buf(buf);
        let t = it.mem_ty(b.ty);
        let arr = t.array_type(len.max(1) as u32);
        if !self.target.is_gpu() {
            let p = f.allocas.build_alloca(arr, &b.name).map_err(llvm_err)?;
            f.bufs.insert(buf, p);
            return Ok(());
        }
        let g = self.module.add_global(
            arr,
            Some(AddressSpace::from(SHARED_ADDRESS_SPACE)),
            &format!("{}.{}", self.base, b.name),
        );
        g.set_linkage(Linkage::Internal);
        g.set_initializer(&arr.get_undef());
        g.set_alignment(16);
        let p = g.as_pointer_value().const_address_space_cast(it.ptr);
        f.bufs.insert(buf, p);
        Ok(())
    }

    /// Math PTX has no library call for: `Some(value)` when handled here, an error
    /// naming the op when the GPU cannot do it yet, `None` for the shared lowering
    /// (intrinsics PTX has instructions for, and f32 `exp`).
    pub(super) fn gpu_math(
        &self,
        f: &Frame<'ctx>,
        op: UnOp,
        x: FloatValue<'ctx>,
        t: Ty,
    ) -> R<Option<BasicValueEnum<'ctx>>> {
        let it = self.it;
        let b = &f.b;
        let widen = |x: FloatValue<'ctx>| -> R<FloatValue<'ctx>> {
            Ok(match t {
                Ty::F64 => x,
                _ => b.build_float_ext(x, it.f64, "").map_err(llvm_err)?,
            })
        };
        let narrow = |r: FloatValue<'ctx>| -> R<BasicValueEnum<'ctx>> {
            Ok(match t {
                Ty::F64 => r.into(),
                _ => b
                    .build_float_trunc(r, it.ty(t).into_float_type(), "")
                    .map_err(llvm_err)?
                    .into(),
            })
        };
        Ok(Some(match (op, t) {
            (UnOp::Sin, _) => narrow(self.sincos_f64(f, widen(x)?, false)?)?,
            (UnOp::Cos, _) => narrow(self.sincos_f64(f, widen(x)?, true)?)?,
            (UnOp::Tanh, Ty::F32) => self.tanh_f32(f, x)?.into(),
            (UnOp::Exp | UnOp::Log | UnOp::Tanh | UnOp::Atan | UnOp::Erf, _)
                if t != Ty::F32 || op != UnOp::Exp =>
            {
                return Err(self.err(format!("{op:?} of {t} has no NVPTX lowering yet")))
            }
            _ => return Ok(None),
        }))
    }

    /// sin or cos of an f64 (Cephes `sin.c`/`cos.c`): `y = round-to-odd octant of
    /// |x| · 4/π`, `z = |x| - y·π/4` in three parts (exact products), then the sine
    /// or cosine polynomial by octant, branch-free.
    #[allow(clippy::excessive_precision)] // Cephes' constants as published
    fn sincos_f64(&self, f: &Frame<'ctx>, x: FloatValue<'ctx>, cos: bool) -> R<FloatValue<'ctx>> {
        let it = self.it;
        let b = &f.b;
        let c = |v: f64| it.f64.const_float(v);
        let ci = |v: u64| it.i64.const_int(v, false);
        let mul = |a, v| b.build_float_mul(a, v, "").map_err(llvm_err);
        let add = |a, v| b.build_float_add(a, v, "").map_err(llvm_err);
        let sub = |a, v| b.build_float_sub(a, v, "").map_err(llvm_err);
        let fabs = self.intr("llvm.fabs", &[it.f64.into()])?;
        let floor = self.intr("llvm.floor", &[it.f64.into()])?;
        let ax = self.call(f, fabs, &[x.into()])?.into_float_value();
        let y = mul(ax, c(1.273_239_544_735_162_7))?;
        let y = self.call(f, floor, &[y.into()])?.into_float_value();
        let sat = self.intr("llvm.fptosi.sat", &[it.i64.into(), it.f64.into()])?;
        let j = self.call(f, sat, &[y.into()])?.into_int_value();
        let odd = b.build_and(j, ci(1), "").map_err(llvm_err)?;
        let j = b.build_int_add(j, odd, "").map_err(llvm_err)?;
        let oddf = b
            .build_signed_int_to_float(odd, it.f64, "")
            .map_err(llvm_err)?;
        let y = add(y, oddf)?;
        let j = b.build_and(j, ci(7), "").map_err(llvm_err)?;
        let flip = b
            .build_int_compare(IntPredicate::UGT, j, ci(3), "")
            .map_err(llvm_err)?;
        let jm4 = b.build_int_sub(j, ci(4), "").map_err(llvm_err)?;
        let j = b
            .build_select(flip, jm4, j, "")
            .map_err(llvm_err)?
            .into_int_value();
        let z = sub(ax, mul(y, c(7.853_981_256_484_985_351_56e-1))?)?;
        let z = sub(z, mul(y, c(3.774_894_707_930_798_176_68e-8))?)?;
        let z = sub(z, mul(y, c(2.695_151_429_079_059_526_45e-15))?)?;
        let zz = mul(z, z)?;
        let polevl = |coef: &[f64]| -> R<FloatValue<'ctx>> {
            let mut p = c(coef[0]);
            for &k in &coef[1..] {
                p = add(mul(p, zz)?, c(k))?;
            }
            Ok(p)
        };
        let sin_p = polevl(&[
            1.589_623_015_765_465_680_60e-10,
            -2.505_074_776_285_780_728_66e-8,
            2.755_731_362_138_572_452_13e-6,
            -1.984_126_982_958_953_859_96e-4,
            8.333_333_333_322_118_588_78e-3,
            -1.666_666_666_666_663_072_95e-1,
        ])?;
        let cos_p = polevl(&[
            -1.135_853_652_138_768_173_00e-11,
            2.087_570_084_197_473_167_78e-9,
            -2.755_731_417_929_673_881_12e-7,
            2.480_158_728_885_170_453_48e-5,
            -1.388_888_888_887_305_641_16e-3,
            4.166_666_666_666_659_292_18e-2,
        ])?;
        // z + z·zz·P_sin(zz) and 1 - zz/2 + zz²·P_cos(zz).
        let s = add(z, mul(mul(z, zz)?, sin_p)?)?;
        let cc = add(sub(c(1.0), mul(zz, c(0.5))?)?, mul(mul(zz, zz)?, cos_p)?)?;
        let eq = |v: u64| {
            b.build_int_compare(IntPredicate::EQ, j, ci(v), "")
                .map_err(llvm_err)
        };
        let mid = b.build_or(eq(1)?, eq(2)?, "").map_err(llvm_err)?;
        let (pick, neg) = if cos {
            let gt1 = b
                .build_int_compare(IntPredicate::UGT, j, ci(1), "")
                .map_err(llvm_err)?;
            (
                b.build_select(mid, s, cc, "").map_err(llvm_err)?,
                b.build_xor(flip, gt1, "").map_err(llvm_err)?,
            )
        } else {
            let negx = b
                .build_float_compare(FloatPredicate::OLT, x, c(0.0), "")
                .map_err(llvm_err)?;
            (
                b.build_select(mid, cc, s, "").map_err(llvm_err)?,
                b.build_xor(flip, negx, "").map_err(llvm_err)?,
            )
        };
        let pick = pick.into_float_value();
        let negated = b.build_float_neg(pick, "").map_err(llvm_err)?;
        Ok(b.build_select(neg, negated, pick, "")
            .map_err(llvm_err)?
            .into_float_value())
    }

    /// tanh of an f32 (Cephes `tanhf`): an odd polynomial below 0.625, else
    /// `1 - 2 / (e^{2|x|} + 1)` with the sign of x.
    fn tanh_f32(&self, f: &Frame<'ctx>, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        let it = self.it;
        let b = &f.b;
        let c = |v: f64| it.f32.const_float(v);
        let mul = |a, v| b.build_float_mul(a, v, "").map_err(llvm_err);
        let add = |a, v| b.build_float_add(a, v, "").map_err(llvm_err);
        let fabs = self.intr("llvm.fabs", &[it.f32.into()])?;
        let ax = self.call(f, fabs, &[x.into()])?.into_float_value();
        let e = self.exp_f32(f, mul(ax, c(2.0))?)?;
        let big = b
            .build_float_sub(
                c(1.0),
                b.build_float_div(c(2.0), add(e, c(1.0))?, "")
                    .map_err(llvm_err)?,
                "",
            )
            .map_err(llvm_err)?;
        let copysign = self.intr("llvm.copysign", &[it.f32.into()])?;
        let big = self
            .call(f, copysign, &[big.into(), x.into()])?
            .into_float_value();
        let z = mul(x, x)?;
        let mut p = c(-5.704_988_727_45e-3);
        for k in [
            2.063_908_879_54e-2,
            -5.373_971_555_31e-2,
            1.333_144_220_36e-1,
            -3.333_328_194_22e-1,
        ] {
            p = add(mul(p, z)?, c(k))?;
        }
        let small = add(mul(mul(p, z)?, x)?, x)?;
        let is_big = b
            .build_float_compare(FloatPredicate::OGE, ax, c(0.625), "")
            .map_err(llvm_err)?;
        let r = b.build_select(is_big, big, small, "").map_err(llvm_err)?;
        let _ = r.as_basic_value_enum();
        Ok(r.into_float_value())
    }
}
