//! Loop IR to LLVM IR. Each kernel becomes an internal function over its buffers
//! (`noalias` pointers: results never alias operands) and dims, wrapped by the ABI
//! entry `void(ptr bufs, ptr dims)` that unpacks the arrays. Variables live in entry
//! block allocas (SROA/mem2reg promote them from -O1 on). A parallel loop is outlined:
//! its body becomes a function over the same buffers, dims and captured variables
//! plus its iteration range, reached through a trampoline `void(ptr ctx, i64 start,
//! i64 end)` that `llmc_parallel_for` calls; inside it, nested parallel loops run
//! serially. Float adds and multiplies carry `contract` (FMAs may form); in
//! vectorize-tagged loops also `reassoc`, so LLVM may vectorize their reductions.

use super::intrinsics::Intrinsics;
use super::target::Target;
use super::CodegenError;
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::basic_block::BasicBlock;
use inkwell::builder::Builder;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicMetadataTypeEnum, BasicType, BasicTypeEnum};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValue, BasicValueEnum, FloatValue, FunctionValue, IntValue,
    PointerValue,
};
use inkwell::{FloatPredicate, IntPredicate};
use llmc_kernels::loopir::{visit_expr, visit_stmts_exprs};
use llmc_kernels::{BinOp, BufId, Expr, Kernel, LoopTag, Role, Stmt, Ty, UnOp, VarId};
use llmc_runtime::abi::PARALLEL_FOR_SYMBOL;
use std::collections::{BTreeSet, HashMap};

mod ftile;
mod nvptx;
mod qdot;

type R<T> = Result<T, CodegenError>;

fn llvm_err(e: impl std::fmt::Display) -> CodegenError {
    CodegenError::Llvm(e.to_string())
}

/// What one LLVM function being emitted knows.
struct Frame<'ctx> {
    func: FunctionValue<'ctx>,
    b: Builder<'ctx>,
    /// Positioned before the entry block's terminator: where allocas go.
    allocas: Builder<'ctx>,
    bufs: HashMap<BufId, PointerValue<'ctx>>,
    dims: Vec<IntValue<'ctx>>,
    vars: HashMap<VarId, PointerValue<'ctx>>,
    /// Inside a vectorize-tagged loop.
    fast: bool,
    /// Inside an outlined parallel body: parallel loops run serially.
    serial_only: bool,
}

/// Lowers the kernels of one module.
pub(crate) struct Lowering<'ctx, 'm> {
    pub it: &'m Intrinsics<'ctx>,
    pub module: &'m Module<'ctx>,
    k: &'m Kernel,
    base: String,
    outlined: usize,
    /// What the code is for (the seam: [`super::target`]).
    target: Target,
    /// Values known per variable, for the alignment of raw loads on the GPU.
    align_facts: Option<llmc_kernels::gpu::Alignment>,
}

impl<'ctx, 'm> Lowering<'ctx, 'm> {
    pub fn new(
        it: &'m Intrinsics<'ctx>,
        module: &'m Module<'ctx>,
        k: &'m Kernel,
        base: String,
        target: Target,
    ) -> Lowering<'ctx, 'm> {
        Lowering {
            it,
            module,
            k,
            base,
            outlined: 0,
            target,
            align_facts: None,
        }
    }

    fn err(&self, msg: impl Into<String>) -> CodegenError {
        CodegenError::Unsupported(format!("kernel {}: {}", self.k.name, msg.into()))
    }

    /// Emits the kernel; returns its ABI entry `void(ptr bufs, ptr dims)`.
    pub fn lower(&mut self) -> R<FunctionValue<'ctx>> {
        if self.target.is_gpu() {
            return self.lower_ptx_kernel();
        }
        let params: Vec<BufId> = self.k.params().map(|(id, _)| id).collect();
        let body_fn = self.emit_fn(
            &format!("{}.impl", self.base),
            &[],
            &[],
            None,
            &self.k.body.clone(),
            false,
        )?;
        // The ABI entry: unpack the arrays and call the body.
        let it = self.it;
        let fty = it
            .cx
            .void_type()
            .fn_type(&[it.ptr.into(), it.ptr.into()], false);
        let f = self
            .module
            .add_function(&self.base, fty, Some(Linkage::Internal));
        let b = it.cx.create_builder();
        let entry = it.cx.append_basic_block(f, "entry");
        b.position_at_end(entry);
        let bufs_arg = f
            .get_nth_param(0)
            .ok_or_else(|| llvm_err("no param"))?
            .into_pointer_value();
        let dims_arg = f
            .get_nth_param(1)
            .ok_or_else(|| llvm_err("no param"))?
            .into_pointer_value();
        let mut args: Vec<BasicMetadataValueEnum> = Vec::new();
        for (i, _) in params.iter().enumerate() {
            // SAFETY: index within the caller's buffer array (ABI contract).
            let p = unsafe {
                b.build_in_bounds_gep(it.ptr, bufs_arg, &[it.i64.const_int(i as u64, false)], "")
            }
            .map_err(llvm_err)?;
            let v = b
                .build_load(it.ptr, p, &format!("buf{i}"))
                .map_err(llvm_err)?;
            args.push(v.into());
        }
        for i in 0..self.k.dims.len() {
            // SAFETY: index within the caller's dims array (ABI contract).
            let p = unsafe {
                b.build_in_bounds_gep(it.i64, dims_arg, &[it.i64.const_int(i as u64, false)], "")
            }
            .map_err(llvm_err)?;
            let v = b
                .build_load(it.i64, p, &format!("dim{i}"))
                .map_err(llvm_err)?;
            args.push(v.into());
        }
        b.build_call(body_fn, &args, "").map_err(llvm_err)?;
        b.build_return(None).map_err(llvm_err)?;
        Ok(f)
    }

    /// Emits `void name(ptr noalias bufs.., i64 dims.., captured.. [, i64 lo, i64 start,
    /// i64 end])` whose body runs `body` (inside `for var in start..end` with
    /// `var = lo + it * step` when `range` is given).
    fn emit_fn(
        &mut self,
        name: &str,
        captured: &[VarId],
        locals: &[BufId],
        range: Option<(VarId, i64)>,
        body: &[Stmt],
        serial_only: bool,
    ) -> R<FunctionValue<'ctx>> {
        let it = self.it;
        let params: Vec<BufId> = self.k.params().map(|(id, _)| id).collect();
        let mut tys: Vec<BasicMetadataTypeEnum> = Vec::new();
        tys.extend(params.iter().map(|_| BasicMetadataTypeEnum::from(it.ptr)));
        tys.extend((0..self.k.dims.len()).map(|_| BasicMetadataTypeEnum::from(it.i64)));
        for v in captured {
            tys.push(it.ty(self.k.var(*v).ty).into());
        }
        tys.extend(locals.iter().map(|_| BasicMetadataTypeEnum::from(it.ptr)));
        if range.is_some() {
            tys.extend([BasicMetadataTypeEnum::from(it.i64); 3]);
        }
        let fty = it.cx.void_type().fn_type(&tys, false);
        let func = self.module.add_function(name, fty, Some(Linkage::Internal));
        let noalias = it
            .cx
            .create_enum_attribute(Attribute::get_named_enum_kind_id("noalias"), 0);
        for i in 0..params.len() {
            func.add_attribute(AttributeLoc::Param(i as u32), noalias);
        }
        let entry = it.cx.append_basic_block(func, "entry");
        let start = it.cx.append_basic_block(func, "start");
        let b = it.cx.create_builder();
        b.position_at_end(entry);
        let br = b.build_unconditional_branch(start).map_err(llvm_err)?;
        let allocas = it.cx.create_builder();
        allocas.position_before(&br);
        b.position_at_end(start);
        let mut f = Frame {
            func,
            b,
            allocas,
            bufs: HashMap::new(),
            dims: Vec::new(),
            vars: HashMap::new(),
            fast: false,
            serial_only,
        };
        let mut pi = 0u32;
        let mut next = |f: &Frame<'ctx>| {
            let v = f.func.get_nth_param(pi);
            pi += 1;
            v.ok_or_else(|| llvm_err("missing parameter"))
        };
        for (i, id) in params.iter().enumerate() {
            let p = next(&f)?.into_pointer_value();
            p.set_name(&format!("b{i}"));
            f.bufs.insert(*id, p);
        }
        for i in 0..self.k.dims.len() {
            let d = next(&f)?.into_int_value();
            d.set_name(&format!("d{i}"));
            f.dims.push(d);
        }
        for v in captured {
            let val = next(&f)?;
            let slot = self.var_slot(&mut f, *v)?;
            f.b.build_store(slot, val).map_err(llvm_err)?;
        }
        for l in locals {
            let p = next(&f)?.into_pointer_value();
            f.bufs.insert(*l, p);
        }
        if let Some((var, step)) = range {
            let lo = next(&f)?.into_int_value();
            let s = next(&f)?.into_int_value();
            let e = next(&f)?.into_int_value();
            let itv = self.var_slot_ty(&mut f, "it", it.i64.into())?;
            f.b.build_store(itv, s).map_err(llvm_err)?;
            let (header, bodyb, exit) = self.blocks(&f, "par");
            f.b.build_unconditional_branch(header).map_err(llvm_err)?;
            f.b.position_at_end(header);
            let i =
                f.b.build_load(it.i64, itv, "it")
                    .map_err(llvm_err)?
                    .into_int_value();
            let c =
                f.b.build_int_compare(IntPredicate::SLT, i, e, "")
                    .map_err(llvm_err)?;
            f.b.build_conditional_branch(c, bodyb, exit)
                .map_err(llvm_err)?;
            f.b.position_at_end(bodyb);
            let scaled =
                f.b.build_int_mul(i, it.i64.const_int(step as u64, true), "")
                    .map_err(llvm_err)?;
            let val = f.b.build_int_add(lo, scaled, "").map_err(llvm_err)?;
            let slot = self.var_slot(&mut f, var)?;
            f.b.build_store(slot, val).map_err(llvm_err)?;
            self.emit_block(&mut f, body)?;
            let i =
                f.b.build_load(it.i64, itv, "it")
                    .map_err(llvm_err)?
                    .into_int_value();
            let n =
                f.b.build_int_add(i, it.i64.const_int(1, false), "")
                    .map_err(llvm_err)?;
            f.b.build_store(itv, n).map_err(llvm_err)?;
            f.b.build_unconditional_branch(header).map_err(llvm_err)?;
            f.b.position_at_end(exit);
        } else {
            self.emit_block(&mut f, body)?;
        }
        f.b.build_return(None).map_err(llvm_err)?;
        Ok(func)
    }

    fn blocks(
        &self,
        f: &Frame<'ctx>,
        what: &str,
    ) -> (BasicBlock<'ctx>, BasicBlock<'ctx>, BasicBlock<'ctx>) {
        let cx = self.it.cx;
        (
            cx.append_basic_block(f.func, &format!("{what}.head")),
            cx.append_basic_block(f.func, &format!("{what}.body")),
            cx.append_basic_block(f.func, &format!("{what}.exit")),
        )
    }

    fn var_slot_ty(
        &self,
        f: &mut Frame<'ctx>,
        name: &str,
        t: BasicTypeEnum<'ctx>,
    ) -> R<PointerValue<'ctx>> {
        f.allocas.build_alloca(t, name).map_err(llvm_err)
    }

    fn var_slot(&self, f: &mut Frame<'ctx>, v: VarId) -> R<PointerValue<'ctx>> {
        if let Some(p) = f.vars.get(&v) {
            return Ok(*p);
        }
        let d = self.k.var(v);
        let p = f
            .allocas
            .build_alloca(self.it.ty(d.ty), &d.name)
            .map_err(llvm_err)?;
        f.vars.insert(v, p);
        Ok(p)
    }

    fn emit_block(&mut self, f: &mut Frame<'ctx>, stmts: &[Stmt]) -> R<()> {
        for s in stmts {
            self.emit_stmt(f, s)?;
        }
        Ok(())
    }

    fn emit_stmt(&mut self, f: &mut Frame<'ctx>, s: &Stmt) -> R<()> {
        let it = self.it;
        match s {
            Stmt::Let { var, value } | Stmt::Assign { var, value } => {
                let (v, _) = self.expr(f, value)?;
                let slot = self.var_slot(f, *var)?;
                f.b.build_store(slot, v).map_err(llvm_err)?;
            }
            Stmt::Store { buf, index, value } => {
                let align = self.elem_align(*buf, index);
                let (v, t) = self.expr(f, value)?;
                let idx = self.expr(f, index)?.0.into_int_value();
                let p = self.elem_ptr(f, *buf, idx)?;
                let v = if t == Ty::Bool {
                    f.b.build_int_z_extend(v.into_int_value(), it.i8, "")
                        .map_err(llvm_err)?
                        .as_basic_value_enum()
                } else {
                    v
                };
                let st = f.b.build_store(p, v).map_err(llvm_err)?;
                if let Some(a) = align {
                    let _ = st.set_alignment(a);
                }
            }
            Stmt::StoreRaw { buf, offset, value } => {
                let (v, t) = self.expr(f, value)?;
                let (p, align) = self.raw_ptr(f, *buf, offset, t)?;
                let st = f.b.build_store(p, v).map_err(llvm_err)?;
                let _ = st.set_alignment(align);
            }
            Stmt::If { cond, then, els } => {
                let c = self.expr(f, cond)?.0.into_int_value();
                let cx = it.cx;
                let tb = cx.append_basic_block(f.func, "then");
                let eb = cx.append_basic_block(f.func, "else");
                let mb = cx.append_basic_block(f.func, "endif");
                f.b.build_conditional_branch(c, tb, eb).map_err(llvm_err)?;
                f.b.position_at_end(tb);
                self.emit_block(f, then)?;
                f.b.build_unconditional_branch(mb).map_err(llvm_err)?;
                f.b.position_at_end(eb);
                self.emit_block(f, els)?;
                f.b.build_unconditional_branch(mb).map_err(llvm_err)?;
                f.b.position_at_end(mb);
            }
            Stmt::Alloc { buf, len } if self.k.buf(*buf).role == Role::Shared => {
                self.shared_array(f, *buf, *len)?
            }
            Stmt::Alloc { buf, len } => {
                let t = it.mem_ty(self.k.buf(*buf).ty);
                let arr = t.array_type((*len).max(1) as u32);
                let p = f
                    .allocas
                    .build_alloca(arr, &self.k.buf(*buf).name)
                    .map_err(llvm_err)?;
                if !self.target.is_gpu() {
                    // A local array is written and read back in whole vectors (an
                    // activation block quantized in the next loop): at its type's
                    // alignment a 64-byte store straddles two cache lines, and the
                    // load after it cannot take its data from the store queue (Zen 4:
                    // the down projection's prologue stalled ~300 cycles a block).
                    if let Some(i) = p.as_instruction() {
                        let _ = i.set_alignment(64);
                    }
                }
                f.bufs.insert(*buf, p);
            }
            Stmt::Barrier => self.barrier(f)?,
            Stmt::Prefetch { buf, index } => self.prefetch(f, *buf, index)?,
            Stmt::ShuffleXor { var, value, xor } => self.shuffle_xor(f, *var, value, *xor)?,
            Stmt::Mma(m) => self.mma(f, m)?,
            Stmt::QDot(q) => self.qdot(f, q)?,
            Stmt::QUnpack(_) | Stmt::QTile(_) | Stmt::FTile(_) if self.target.is_gpu() => {
                return Err(self.err("the tile form of a quantized linear is CPU-only"))
            }
            Stmt::QUnpack(u) => self.qunpack(f, u)?,
            Stmt::QTile(t) => self.qtile(f, t)?,
            Stmt::FTile(t) => self.ftile(f, t)?,
            Stmt::For {
                var,
                lo,
                hi,
                step,
                tag,
                body,
            } => match tag {
                LoopTag::GpuGrid(_) | LoopTag::GpuBlock(_) | LoopTag::GpuWarp => {
                    self.gpu_loop(f, *var, lo, hi, *step, *tag, body)?
                }
                LoopTag::Parallel if !f.serial_only => {
                    self.parallel(f, *var, lo, hi, *step, body)?
                }
                _ => {
                    // Exactly one vector's worth of constant trips (a 16-slot KV block
                    // at 16 lanes): LLVM's full unroll runs before its vectorizer and
                    // left scalar code to the SLP pass (in `paged_attention`, the block
                    // scores' sums, masks and maximum went element by element).
                    let one_vector = match (tag, lo, hi) {
                        (LoopTag::Vectorize(w), Expr::Int(a, _), Expr::Int(b, _)) => {
                            b - a == *w as i64 * *step
                        }
                        _ => false,
                    };
                    let lo = self.expr(f, lo)?.0.into_int_value();
                    let hi = self.expr(f, hi)?.0.into_int_value();
                    let slot = self.var_slot(f, *var)?;
                    f.b.build_store(slot, lo).map_err(llvm_err)?;
                    let (header, bodyb, exit) = self.blocks(f, "loop");
                    let latch = it.cx.append_basic_block(f.func, "loop.latch");
                    f.b.build_unconditional_branch(header).map_err(llvm_err)?;
                    f.b.position_at_end(header);
                    let i =
                        f.b.build_load(it.i64, slot, "")
                            .map_err(llvm_err)?
                            .into_int_value();
                    let c =
                        f.b.build_int_compare(IntPredicate::SLT, i, hi, "")
                            .map_err(llvm_err)?;
                    f.b.build_conditional_branch(c, bodyb, exit)
                        .map_err(llvm_err)?;
                    f.b.position_at_end(bodyb);
                    let was_fast = f.fast;
                    f.fast = was_fast || matches!(tag, LoopTag::Vectorize(_));
                    self.emit_block(f, body)?;
                    f.fast = was_fast;
                    f.b.build_unconditional_branch(latch).map_err(llvm_err)?;
                    f.b.position_at_end(latch);
                    let i =
                        f.b.build_load(it.i64, slot, "")
                            .map_err(llvm_err)?
                            .into_int_value();
                    let n =
                        f.b.build_int_add(i, it.i64.const_int(*step as u64, true), "")
                            .map_err(llvm_err)?;
                    f.b.build_store(slot, n).map_err(llvm_err)?;
                    let back = f.b.build_unconditional_branch(header).map_err(llvm_err)?;
                    if let (LoopTag::Vectorize(w), false) = (tag, self.target.is_gpu()) {
                        self.vectorize_width(back, *w, one_vector || reduces_outward(body))?;
                    }
                    f.b.position_at_end(exit);
                }
            },
        }
        Ok(())
    }

    /// Asks LLVM's loop vectorizer for `width` lanes on the loop whose back edge is
    /// `back` (`!llvm.loop !{self, !{"llvm.loop.vectorize.width", i32 width}}`): the
    /// template's width, where the cost model would pick a narrower one.
    ///
    /// With `no_unroll` (a reduction into a variable of the enclosing scope, a dot
    /// product, or a loop of exactly one vector's constant trips) the loop also gets
    /// `llvm.loop.unroll.disable`: a short constant trip
    /// count (MiniLM's 32-wide q·k) was otherwise fully unrolled into scalar FMAs before
    /// the vectorizer saw it. Loops that only store keep LLVM's unrolling (disabling it
    /// on every vectorize loop cost ~20% on an f16 build's elementwise kernels).
    fn vectorize_width(
        &self,
        back: inkwell::values::InstructionValue<'ctx>,
        width: u32,
        no_unroll: bool,
    ) -> R<()> {
        use inkwell::llvm_sys::core::{
            LLVMConstInt, LLVMGetMDKindIDInContext, LLVMMDNodeInContext2, LLVMMDStringInContext2,
            LLVMMetadataAsValue, LLVMSetMetadata, LLVMValueAsMetadata,
        };
        use inkwell::llvm_sys::debuginfo::{LLVMMetadataReplaceAllUsesWith, LLVMTemporaryMDNode};
        use inkwell::types::AsTypeRef;
        use inkwell::values::AsValueRef;
        let cx = self.it.cx.raw();
        let name = "llvm.loop.vectorize.width";
        let kind = "llvm.loop";
        // SAFETY: plain LLVM C API calls on this module's context; the temporary node is
        // replaced (and freed) before the loop ID is attached.
        unsafe {
            let s = LLVMMDStringInContext2(cx, name.as_ptr().cast(), name.len());
            let w = LLVMValueAsMetadata(LLVMConstInt(self.it.i32.as_type_ref(), width as u64, 0));
            let mut opt = [s, w];
            let opt = LLVMMDNodeInContext2(cx, opt.as_mut_ptr(), 2);
            let temp = LLVMTemporaryMDNode(cx, std::ptr::null_mut(), 0);
            let mut ops = vec![temp, opt];
            if no_unroll {
                let u = "llvm.loop.unroll.disable";
                let mut un = [LLVMMDStringInContext2(cx, u.as_ptr().cast(), u.len())];
                ops.push(LLVMMDNodeInContext2(cx, un.as_mut_ptr(), 1));
            }
            let id = LLVMMDNodeInContext2(cx, ops.as_mut_ptr(), ops.len());
            LLVMMetadataReplaceAllUsesWith(temp, id);
            let k = LLVMGetMDKindIDInContext(cx, kind.as_ptr().cast(), kind.len() as u32);
            LLVMSetMetadata(back.as_value_ref(), k, LLVMMetadataAsValue(cx, id));
        }
        Ok(())
    }

    /// Outlines a parallel loop and calls `llmc_parallel_for` on it.
    fn parallel(
        &mut self,
        f: &mut Frame<'ctx>,
        var: VarId,
        lo: &Expr,
        hi: &Expr,
        step: i64,
        body: &[Stmt],
    ) -> R<()> {
        let it = self.it;
        // Variables the body reads but does not define travel in the context; the
        // body may not assign them (iterations would race).
        let mut used = BTreeSet::new();
        let mut defined = BTreeSet::new();
        let mut assigned = BTreeSet::new();
        let mut locals_used = BTreeSet::new();
        let mut locals_alloc = BTreeSet::new();
        scan(
            body,
            &mut used,
            &mut defined,
            &mut assigned,
            &mut locals_used,
            &mut locals_alloc,
        );
        defined.insert(var);
        let captured: Vec<VarId> = used.difference(&defined).copied().collect();
        if let Some(v) = assigned.difference(&defined).next() {
            return Err(self.err(format!(
                "parallel loop assigns %{}, defined outside it",
                self.k.var(*v).name
            )));
        }
        // Locals allocated outside and used inside travel as pointers (the caller's
        // frame outlives the parallel call).
        let mut outer_locals = Vec::new();
        for b in locals_used.difference(&locals_alloc) {
            match self.k.buf(*b).role {
                Role::Local => outer_locals.push(*b),
                Role::Shared => {
                    return Err(self.err(format!(
                        "parallel loop uses shared %{} allocated outside it",
                        self.k.buf(*b).name
                    )))
                }
                _ => {}
            }
        }
        let lo = self.expr(f, lo)?.0.into_int_value();
        let hi = self.expr(f, hi)?.0.into_int_value();
        let n_out = self.outlined;
        self.outlined += 1;
        let body_name = format!("{}.par{n_out}", self.base);
        let body_fn = self.emit_fn(
            &body_name,
            &captured,
            &outer_locals,
            Some((var, step)),
            body,
            true,
        )?;
        // The context: buffer pointers, dims, captured values, lo.
        let params: Vec<BufId> = self.k.params().map(|(id, _)| id).collect();
        let mut fields: Vec<BasicTypeEnum> = Vec::new();
        fields.extend(params.iter().map(|_| BasicTypeEnum::from(it.ptr)));
        fields.extend((0..self.k.dims.len()).map(|_| BasicTypeEnum::from(it.i64)));
        for v in &captured {
            fields.push(it.ty(self.k.var(*v).ty));
        }
        fields.extend(outer_locals.iter().map(|_| BasicTypeEnum::from(it.ptr)));
        fields.push(it.i64.into());
        let st = it.cx.struct_type(&fields, false);
        // Trampoline: void(ptr ctx, i64 start, i64 end).
        let tty = it
            .cx
            .void_type()
            .fn_type(&[it.ptr.into(), it.i64.into(), it.i64.into()], false);
        let tramp =
            self.module
                .add_function(&format!("{body_name}.entry"), tty, Some(Linkage::Internal));
        {
            let tb = it.cx.create_builder();
            let e = it.cx.append_basic_block(tramp, "entry");
            tb.position_at_end(e);
            let ctx = tramp
                .get_nth_param(0)
                .ok_or_else(|| llvm_err("param"))?
                .into_pointer_value();
            let mut args: Vec<BasicMetadataValueEnum> = Vec::new();
            for (i, ft) in fields.iter().enumerate() {
                let p = tb
                    .build_struct_gep(st, ctx, i as u32, "")
                    .map_err(llvm_err)?;
                let v = tb.build_load(*ft, p, "").map_err(llvm_err)?;
                args.push(v.into());
            }
            for k in 1..3 {
                args.push(
                    tramp
                        .get_nth_param(k)
                        .ok_or_else(|| llvm_err("param"))?
                        .into(),
                );
            }
            tb.build_call(body_fn, &args, "").map_err(llvm_err)?;
            tb.build_return(None).map_err(llvm_err)?;
        }
        // Fill the context and hand the loop to the runtime.
        let ctx = f.allocas.build_alloca(st, "ctx").map_err(llvm_err)?;
        let mut vals: Vec<BasicValueEnum> = Vec::new();
        for id in &params {
            let p = *f.bufs.get(id).ok_or_else(|| llvm_err("unmapped buffer"))?;
            vals.push(p.into());
        }
        vals.extend(f.dims.iter().map(|d| BasicValueEnum::from(*d)));
        for v in &captured {
            let slot = self.var_slot(f, *v)?;
            let t = it.ty(self.k.var(*v).ty);
            vals.push(f.b.build_load(t, slot, "").map_err(llvm_err)?);
        }
        for l in &outer_locals {
            let p = *f.bufs.get(l).ok_or_else(|| llvm_err("unmapped local"))?;
            vals.push(p.into());
        }
        vals.push(lo.into());
        for (i, v) in vals.into_iter().enumerate() {
            let p =
                f.b.build_struct_gep(st, ctx, i as u32, "")
                    .map_err(llvm_err)?;
            f.b.build_store(p, v).map_err(llvm_err)?;
        }
        // n = hi > lo ? (hi - lo + step - 1) / step : 0
        let b = &f.b;
        let diff = b.build_int_sub(hi, lo, "").map_err(llvm_err)?;
        let adj = b
            .build_int_add(diff, it.i64.const_int((step - 1) as u64, true), "")
            .map_err(llvm_err)?;
        let q = b
            .build_int_signed_div(adj, it.i64.const_int(step as u64, true), "")
            .map_err(llvm_err)?;
        let pos = b
            .build_int_compare(IntPredicate::SGT, hi, lo, "")
            .map_err(llvm_err)?;
        let n = b
            .build_select(pos, q, it.i64.const_zero(), "n")
            .map_err(llvm_err)?;
        let pf = it.external(
            self.module,
            PARALLEL_FOR_SYMBOL,
            None,
            &[it.ptr.into(), it.ptr.into(), it.i64.into()],
        );
        let fnptr = tramp.as_global_value().as_pointer_value();
        // A loop whose whole work is small runs inline: n · cost < PAR_MIN_WORK, with
        // the cost per iteration computed here from the dims when it depends on them.
        let Some(cost) = cost_expr(body, &defined) else {
            b.build_call(pf, &[fnptr.into(), ctx.into(), n.into()], "")
                .map_err(llvm_err)?;
            return Ok(());
        };
        let cost = self.expr(f, &cost)?.0.into_int_value();
        let b = &f.b;
        let work = b
            .build_int_mul(n.into_int_value(), cost, "work")
            .map_err(llvm_err)?;
        let limit = it.i64.const_int(PAR_MIN_WORK, false);
        let small = b
            .build_int_compare(IntPredicate::SLT, work, limit, "small")
            .map_err(llvm_err)?;
        let (inline_b, pool_b, done) = (
            it.cx.append_basic_block(f.func, "par.inline"),
            it.cx.append_basic_block(f.func, "par.pool"),
            it.cx.append_basic_block(f.func, "par.done"),
        );
        b.build_conditional_branch(small, inline_b, pool_b)
            .map_err(llvm_err)?;
        b.position_at_end(inline_b);
        b.build_call(
            tramp,
            &[ctx.into(), it.i64.const_zero().into(), n.into()],
            "",
        )
        .map_err(llvm_err)?;
        b.build_unconditional_branch(done).map_err(llvm_err)?;
        b.position_at_end(pool_b);
        b.build_call(pf, &[fnptr.into(), ctx.into(), n.into()], "")
            .map_err(llvm_err)?;
        b.build_unconditional_branch(done).map_err(llvm_err)?;
        b.position_at_end(done);
        Ok(())
    }

    fn elem_ptr(&self, f: &Frame<'ctx>, buf: BufId, idx: IntValue<'ctx>) -> R<PointerValue<'ctx>> {
        let base = *f.bufs.get(&buf).ok_or_else(|| {
            self.err(format!(
                "buffer %{} is not available here",
                self.k.buf(buf).name
            ))
        })?;
        let t = self.it.mem_ty(self.k.buf(buf).ty);
        // SAFETY: the index is in bounds by construction of the kernel (the loop-IR
        // interpreter checks the same kernels' accesses in tests).
        unsafe { f.b.build_gep(t, base, &[idx], "") }.map_err(llvm_err)
    }

    /// [`Stmt::Prefetch`]: `llvm.prefetch` (read, keep in all levels) of the element's
    /// address on CPU targets; nothing on the GPU.
    fn prefetch(&mut self, f: &mut Frame<'ctx>, buf: BufId, index: &Expr) -> R<()> {
        if self.target.is_gpu() {
            return Ok(());
        }
        let it = self.it;
        let idx = self.expr(f, index)?.0.into_int_value();
        let p = self.elem_ptr(f, buf, idx)?;
        let pf = it
            .intrinsic(self.module, "llvm.prefetch", &[it.ptr.into()])
            .ok_or_else(|| llvm_err("llvm.prefetch"))?;
        let i32c = |v: u64| it.i32.const_int(v, false).into();
        f.b.build_call(pf, &[p.into(), i32c(0), i32c(3), i32c(1)], "")
            .map_err(llvm_err)?;
        Ok(())
    }

    /// Float add/sub/mul may contract into FMAs everywhere; inside vectorize-tagged
    /// loops they may also be reassociated (so reductions vectorize).
    fn fast(&self, f: &Frame<'ctx>, v: FloatValue<'ctx>) {
        use inkwell::values::FastMathFlags as F;
        if let Some(i) = v.as_instruction_value() {
            let flags = if f.fast {
                F::AllowReassoc | F::AllowContract
            } else {
                F::AllowContract
            };
            let _ = i.set_fast_math_flags(flags);
        }
    }

    fn call(
        &self,
        f: &Frame<'ctx>,
        func: FunctionValue<'ctx>,
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> R<BasicValueEnum<'ctx>> {
        let c = f.b.build_call(func, args, "").map_err(llvm_err)?;
        c.try_as_basic_value()
            .basic()
            .ok_or_else(|| llvm_err("call returned nothing"))
    }

    fn intr(&self, name: &str, tys: &[BasicTypeEnum<'ctx>]) -> R<FunctionValue<'ctx>> {
        self.it
            .intrinsic(self.module, name, tys)
            .ok_or_else(|| llvm_err(format!("no intrinsic {name}")))
    }

    /// Emits an expression; returns its value and loop-IR type.
    fn expr(&mut self, f: &mut Frame<'ctx>, e: &Expr) -> R<(BasicValueEnum<'ctx>, Ty)> {
        let it = self.it;
        let t = self.k.ty_of(e).map_err(|m| self.err(m))?;
        let v: BasicValueEnum = match e {
            Expr::Int(v, t) => match t {
                Ty::Bool => it.i1.const_int((*v != 0) as u64, false).into(),
                _ => it.ty(*t).into_int_type().const_int(*v as u64, true).into(),
            },
            Expr::Float(v, t) => match t {
                Ty::BF16 => it
                    .i16
                    .const_int(half::bf16::from_f64(*v).to_bits() as u64, false)
                    .into(),
                _ => it.ty(*t).into_float_type().const_float(*v).into(),
            },
            Expr::Var(v) => {
                let slot = self.var_slot(f, *v)?;
                f.b.build_load(it.ty(t), slot, &self.k.var(*v).name)
                    .map_err(llvm_err)?
            }
            Expr::Dim(i) => (*f
                .dims
                .get(*i as usize)
                .ok_or_else(|| self.err(format!("dim {i} missing")))?)
            .into(),
            Expr::Load(b, i) => {
                let align = self.elem_align(*b, i);
                let idx = self.expr(f, i)?.0.into_int_value();
                let p = self.elem_ptr(f, *b, idx)?;
                let v = f.b.build_load(it.mem_ty(t), p, "").map_err(llvm_err)?;
                if let (Some(a), Some(i)) = (align, v.as_instruction_value()) {
                    let _ = i.set_alignment(a);
                }
                self.load_value(f, v, t)?
            }
            Expr::LoadRaw(b, off_e, ty) => {
                let (p, align) = self.raw_ptr(f, *b, off_e, *ty)?;
                let v = f.b.build_load(it.mem_ty(*ty), p, "").map_err(llvm_err)?;
                if let Some(i) = v.as_instruction_value() {
                    let _ = i.set_alignment(align);
                }
                self.load_value(f, v, *ty)?
            }
            Expr::Un(op, x) => {
                let (xv, xt) = self.expr(f, x)?;
                self.unary(f, *op, xv, xt)?
            }
            Expr::Bin(op, a, b) => {
                let (av, at) = self.expr(f, a)?;
                let (bv, _) = self.expr(f, b)?;
                self.binary(f, *op, av, bv, at)?
            }
            Expr::Select(c, a, b) => {
                let c = self.expr(f, c)?.0.into_int_value();
                let (av, _) = self.expr(f, a)?;
                let (bv, _) = self.expr(f, b)?;
                f.b.build_select(c, av, bv, "").map_err(llvm_err)?
            }
            Expr::Cast(to, x) => {
                let (xv, from) = self.expr(f, x)?;
                self.cast(f, xv, from, *to)?
            }
        };
        Ok((v, t))
    }

    /// The address of byte `off_e` of `buf` for a raw load or store of a `ty`, and the
    /// alignment the offset is known to have.
    fn raw_ptr(
        &mut self,
        f: &mut Frame<'ctx>,
        buf: BufId,
        off_e: &Expr,
        ty: Ty,
    ) -> R<(PointerValue<'ctx>, u32)> {
        let align = self.raw_align(off_e, ty);
        let off = self.expr(f, off_e)?.0.into_int_value();
        let base = *f
            .bufs
            .get(&buf)
            .ok_or_else(|| self.err("buffer not available"))?;
        // SAFETY: byte offset within the buffer (checked by the interpreter).
        let p = unsafe { f.b.build_gep(self.it.i8, base, &[off], "") }.map_err(llvm_err)?;
        Ok((p, align))
    }

    fn load_value(
        &self,
        f: &Frame<'ctx>,
        v: BasicValueEnum<'ctx>,
        t: Ty,
    ) -> R<BasicValueEnum<'ctx>> {
        Ok(if t == Ty::Bool {
            f.b.build_int_compare(
                IntPredicate::NE,
                v.into_int_value(),
                self.it.i8.const_zero(),
                "",
            )
            .map_err(llvm_err)?
            .into()
        } else {
            v
        })
    }

    fn unary(
        &self,
        f: &Frame<'ctx>,
        op: UnOp,
        x: BasicValueEnum<'ctx>,
        t: Ty,
    ) -> R<BasicValueEnum<'ctx>> {
        let it = self.it;
        let b = &f.b;
        if t == Ty::BF16 {
            return Err(self.err("bf16 arithmetic (convert to f32 first)"));
        }
        if !t.is_float() {
            let x = x.into_int_value();
            let ty = x.get_type();
            return Ok(match op {
                UnOp::Neg => b
                    .build_int_sub(ty.const_zero(), x, "")
                    .map_err(llvm_err)?
                    .into(),
                UnOp::Abs => {
                    let neg = b.build_int_sub(ty.const_zero(), x, "").map_err(llvm_err)?;
                    let lt = b
                        .build_int_compare(IntPredicate::SLT, x, ty.const_zero(), "")
                        .map_err(llvm_err)?;
                    if t.is_unsigned() {
                        x.into()
                    } else {
                        b.build_select(lt, neg, x, "").map_err(llvm_err)?
                    }
                }
                UnOp::Not => b.build_not(x, "").map_err(llvm_err)?.into(),
                other => return Err(self.err(format!("{other:?} of {t}"))),
            });
        }
        let x = x.into_float_value();
        if op == UnOp::Erf && t == Ty::F32 {
            return Ok(self.erf_f32(f, x)?.into());
        }
        if self.target.is_gpu() {
            if let Some(v) = self.gpu_math(f, op, x, t)? {
                return Ok(v);
            }
        }
        let fty: BasicTypeEnum = x.get_type().into();
        let intr1 = |name: &str| -> R<BasicValueEnum<'ctx>> {
            let fun = self.intr(name, &[fty])?;
            self.call(f, fun, &[x.into()])
        };
        let libm = |f32name: &str, f64name: &str| -> R<BasicValueEnum<'ctx>> {
            // libm has f32 and f64 entries; f16 goes through f32.
            let (xx, back) = match t {
                Ty::F16 => (b.build_float_ext(x, it.f32, "").map_err(llvm_err)?, true),
                _ => (x, false),
            };
            let (name, ft): (&str, BasicTypeEnum) = if t == Ty::F64 {
                (f64name, it.f64.into())
            } else {
                (f32name, it.f32.into())
            };
            let fun = it.external(self.module, name, Some(ft), &[ft.into()]);
            let r = self.call(f, fun, &[xx.into()])?.into_float_value();
            Ok(if back {
                b.build_float_trunc(r, it.f16, "").map_err(llvm_err)?.into()
            } else {
                r.into()
            })
        };
        let r: BasicValueEnum = match op {
            UnOp::Neg => b.build_float_neg(x, "").map_err(llvm_err)?.into(),
            UnOp::Abs => intr1("llvm.fabs")?,
            UnOp::Exp if t == Ty::F32 => self.exp_f32(f, x)?.into(),
            UnOp::Exp => intr1("llvm.exp")?,
            UnOp::Log => intr1("llvm.log")?,
            UnOp::Sqrt => intr1("llvm.sqrt")?,
            UnOp::Sin => intr1("llvm.sin")?,
            UnOp::Cos => intr1("llvm.cos")?,
            UnOp::Floor => intr1("llvm.floor")?,
            UnOp::Ceil => intr1("llvm.ceil")?,
            UnOp::Round => intr1("llvm.roundeven")?,
            UnOp::Tanh => libm("tanhf", "tanh")?,
            UnOp::Atan => libm("atanf", "atan")?,
            UnOp::Erf => libm("erff", "erf")?,
            UnOp::IsNan => b
                .build_float_compare(FloatPredicate::UNO, x, x, "")
                .map_err(llvm_err)?
                .into(),
            UnOp::Not => return Err(self.err("not of a float")),
        };
        Ok(r)
    }

    /// `erf` of an f32 without a libm call, so loops over it (GELU epilogues)
    /// vectorize, and on the GPU, which has no libm: `x · P(x²) / Q(x²)` with x
    /// clamped to ±3.7439 (erf is ±1 in f32 beyond it), the rational approximation
    /// XLA uses for f32; within 3.1e-7 of erf over ±6 (checked in f32 against libm's
    /// double erf on 200,001 points). NaN stays NaN.
    #[allow(clippy::excessive_precision)] // the coefficients as published
    fn erf_f32(&self, f: &Frame<'ctx>, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        let it = self.it;
        let b = &f.b;
        let c = |v: f64| it.f32.const_float(v);
        let lim = 3.743_921_162_776_799_4;
        let sel = |p, a: FloatValue<'ctx>, v: FloatValue<'ctx>| -> R<FloatValue<'ctx>> {
            Ok(b.build_select(p, a, v, "")
                .map_err(llvm_err)?
                .into_float_value())
        };
        let gt = b
            .build_float_compare(FloatPredicate::OGT, x, c(lim), "")
            .map_err(llvm_err)?;
        let xc = sel(gt, c(lim), x)?;
        let lt = b
            .build_float_compare(FloatPredicate::OLT, xc, c(-lim), "")
            .map_err(llvm_err)?;
        let xc = sel(lt, c(-lim), xc)?;
        let x2 = b.build_float_mul(xc, xc, "").map_err(llvm_err)?;
        let horner = |coefs: &[f64]| -> R<FloatValue<'ctx>> {
            let mut p = c(coefs[0]);
            for &k in &coefs[1..] {
                let m = b.build_float_mul(p, x2, "").map_err(llvm_err)?;
                p = b.build_float_add(m, c(k), "").map_err(llvm_err)?;
            }
            Ok(p)
        };
        let num = horner(&[
            0.000_229_050_658_613_506_46,
            0.003_408_291_010_710_950_6,
            0.050_955_695_062_380_861,
            0.185_208_322_399_761_45,
            1.128_379_143_519_084,
        ])?;
        let den = horner(&[
            -1.179_160_295_436_169_7e-7,
            0.000_023_547_966_471_313_185,
            0.001_017_962_527_891_488_5,
            0.014_070_470_171_167_667,
            0.110_985_051_782_853_62,
            0.497_469_251_100_675_38,
            1.0,
        ])?;
        let xp = b.build_float_mul(xc, num, "").map_err(llvm_err)?;
        b.build_float_div(xp, den, "").map_err(llvm_err)
    }

    /// `exp` of an f32 without a libm call, so loops over it vectorize: Cody–Waite
    /// reduction `x = n ln2 + r` and Cephes' degree-7 polynomial for `e^r`
    /// (within 2 ulp of the correctly rounded result; the kernel tests hold it to
    /// the f64 reference), scaled by `2^n` as two powers of two so that results
    /// down to the subnormals come out right; NaN stays NaN, overflow gives +inf.
    fn exp_f32(&self, f: &Frame<'ctx>, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        let it = self.it;
        let b = &f.b;
        let c = |v: f64| it.f32.const_float(v);
        let lt = |a: FloatValue<'ctx>, v: f64| {
            b.build_float_compare(FloatPredicate::OLT, a, c(v), "")
                .map_err(llvm_err)
        };
        let gt = |a: FloatValue<'ctx>, v: f64| {
            b.build_float_compare(FloatPredicate::OGT, a, c(v), "")
                .map_err(llvm_err)
        };
        let sel = |p, a: FloatValue<'ctx>, v: FloatValue<'ctx>| -> R<FloatValue<'ctx>> {
            Ok(b.build_select(p, a, v, "")
                .map_err(llvm_err)?
                .into_float_value())
        };
        let mul = |a, v| b.build_float_mul(a, v, "").map_err(llvm_err);
        let add = |a, v| b.build_float_add(a, v, "").map_err(llvm_err);
        // Clamped so that n stays within ±150 (NaN passes both compares).
        let xc = sel(gt(x, 89.0)?, c(89.0), x)?;
        let xc = sel(lt(xc, -104.0)?, c(-104.0), xc)?;
        let round = self.intr("llvm.roundeven", &[it.f32.into()])?;
        let t = mul(xc, c(std::f64::consts::LOG2_E))?;
        let n = self.call(f, round, &[t.into()])?.into_float_value();
        // ln 2 = C1 + C2 with C1 exact in 9 bits, so n · C1 is exact.
        let r = b
            .build_float_sub(xc, mul(n, c(0.693_359_375))?, "")
            .map_err(llvm_err)?;
        let r = b
            .build_float_sub(r, mul(n, c(-2.121_944_400_546_905_8e-4))?, "")
            .map_err(llvm_err)?;
        let mut p = c(1.987_569_150_0e-4);
        for k in [
            1.398_199_950_7e-3,
            8.333_451_907_3e-3,
            4.166_579_589_4e-2,
            1.666_666_545_9e-1,
            5.000_000_120_1e-1,
        ] {
            p = add(mul(p, r)?, c(k))?;
        }
        let r2 = mul(r, r)?;
        let p = add(add(mul(p, r2)?, r)?, c(1.0))?;
        // 2^n = 2^n1 · 2^n2 with n1 = n >> 1: both exponents stay normal.
        let ni = b
            .build_float_to_signed_int(n, it.i32, "")
            .map_err(llvm_err)?;
        let n1 = b
            .build_right_shift(ni, it.i32.const_int(1, false), true, "")
            .map_err(llvm_err)?;
        let n2 = b.build_int_sub(ni, n1, "").map_err(llvm_err)?;
        let pow2 = |e| -> R<FloatValue<'ctx>> {
            let biased = b
                .build_int_add(e, it.i32.const_int(127, false), "")
                .map_err(llvm_err)?;
            let bits = b
                .build_left_shift(biased, it.i32.const_int(23, false), "")
                .map_err(llvm_err)?;
            Ok(b.build_bit_cast(bits, it.f32, "")
                .map_err(llvm_err)?
                .into_float_value())
        };
        let res = mul(mul(p, pow2(n1)?)?, pow2(n2)?)?;
        let nan = b
            .build_float_compare(FloatPredicate::UNO, x, x, "")
            .map_err(llvm_err)?;
        sel(nan, x, res)
    }

    fn binary(
        &self,
        f: &Frame<'ctx>,
        op: BinOp,
        a: BasicValueEnum<'ctx>,
        bv: BasicValueEnum<'ctx>,
        t: Ty,
    ) -> R<BasicValueEnum<'ctx>> {
        let it = self.it;
        let b = &f.b;
        if t == Ty::BF16 {
            return Err(self.err("bf16 arithmetic (convert to f32 first)"));
        }
        if t.is_float() {
            let (x, y) = (a.into_float_value(), bv.into_float_value());
            let fty: BasicTypeEnum = x.get_type().into();
            let pred = |p| -> R<BasicValueEnum<'ctx>> {
                Ok(b.build_float_compare(p, x, y, "").map_err(llvm_err)?.into())
            };
            let r: BasicValueEnum = match op {
                BinOp::Add => {
                    let v = b.build_float_add(x, y, "").map_err(llvm_err)?;
                    self.fast(f, v);
                    v.into()
                }
                BinOp::Sub => {
                    let v = b.build_float_sub(x, y, "").map_err(llvm_err)?;
                    self.fast(f, v);
                    v.into()
                }
                BinOp::Mul => {
                    let v = b.build_float_mul(x, y, "").map_err(llvm_err)?;
                    self.fast(f, v);
                    v.into()
                }
                BinOp::Div => b.build_float_div(x, y, "").map_err(llvm_err)?.into(),
                BinOp::Rem => b.build_float_rem(x, y, "").map_err(llvm_err)?.into(),
                BinOp::Pow if self.target.is_gpu() => {
                    return Err(self.err("a float power has no NVPTX lowering yet"))
                }
                BinOp::Pow => {
                    let fun = self.intr("llvm.pow", &[fty])?;
                    self.call(f, fun, &[x.into(), y.into()])?
                }
                BinOp::Max => {
                    let fun = self.intr("llvm.maxnum", &[fty])?;
                    self.call(f, fun, &[x.into(), y.into()])?
                }
                BinOp::Min => {
                    let fun = self.intr("llvm.minnum", &[fty])?;
                    self.call(f, fun, &[x.into(), y.into()])?
                }
                BinOp::Eq => pred(FloatPredicate::OEQ)?,
                BinOp::Ne => pred(FloatPredicate::UNE)?,
                BinOp::Lt => pred(FloatPredicate::OLT)?,
                BinOp::Le => pred(FloatPredicate::OLE)?,
                BinOp::Gt => pred(FloatPredicate::OGT)?,
                BinOp::Ge => pred(FloatPredicate::OGE)?,
                other => return Err(self.err(format!("{other:?} of floats"))),
            };
            return Ok(r);
        }
        let (x, y) = (a.into_int_value(), bv.into_int_value());
        let ty = x.get_type();
        let unsigned = t.is_unsigned();
        let cmp = |p: IntPredicate| -> R<BasicValueEnum<'ctx>> {
            Ok(b.build_int_compare(p, x, y, "").map_err(llvm_err)?.into())
        };
        let (lt, le, gt, ge) = if unsigned {
            (
                IntPredicate::ULT,
                IntPredicate::ULE,
                IntPredicate::UGT,
                IntPredicate::UGE,
            )
        } else {
            (
                IntPredicate::SLT,
                IntPredicate::SLE,
                IntPredicate::SGT,
                IntPredicate::SGE,
            )
        };
        let r: BasicValueEnum = match op {
            BinOp::Add => b.build_int_add(x, y, "").map_err(llvm_err)?.into(),
            BinOp::Sub => b.build_int_sub(x, y, "").map_err(llvm_err)?.into(),
            BinOp::Mul => b.build_int_mul(x, y, "").map_err(llvm_err)?.into(),
            BinOp::Div | BinOp::Rem => {
                // x / 0 = 0 and x % 0 = 0; x / -1 = -x (wrapping) and x % -1 = 0, so
                // the instruction never traps.
                let zero = ty.const_zero();
                let one = ty.const_int(1, false);
                let is0 = b
                    .build_int_compare(IntPredicate::EQ, y, zero, "")
                    .map_err(llvm_err)?;
                let ism1 = if unsigned {
                    it.i1.const_zero()
                } else {
                    b.build_int_compare(IntPredicate::EQ, y, ty.const_all_ones(), "")
                        .map_err(llvm_err)?
                };
                let bad = b.build_or(is0, ism1, "").map_err(llvm_err)?;
                let safe = b
                    .build_select(bad, one, y, "")
                    .map_err(llvm_err)?
                    .into_int_value();
                let q = match (op, unsigned) {
                    (BinOp::Div, true) => b.build_int_unsigned_div(x, safe, ""),
                    (BinOp::Div, false) => b.build_int_signed_div(x, safe, ""),
                    (_, true) => b.build_int_unsigned_rem(x, safe, ""),
                    (_, false) => b.build_int_signed_rem(x, safe, ""),
                }
                .map_err(llvm_err)?;
                let special = if op == BinOp::Div {
                    b.build_int_sub(zero, x, "").map_err(llvm_err)?
                } else {
                    zero
                };
                let q = b.build_select(ism1, special, q, "").map_err(llvm_err)?;
                b.build_select(is0, zero.into(), q, "").map_err(llvm_err)?
            }
            BinOp::Pow => {
                let f64v = |v: IntValue<'ctx>| b.build_int_cast_sign_flag(v, it.i64, !unsigned, "");
                let (x64, y64) = (f64v(x).map_err(llvm_err)?, f64v(y).map_err(llvm_err)?);
                let fun = self.ipow()?;
                let r = self
                    .call(f, fun, &[x64.into(), y64.into()])?
                    .into_int_value();
                b.build_int_truncate_or_bit_cast(r, ty, "")
                    .map_err(llvm_err)?
                    .into()
            }
            BinOp::Max | BinOp::Min => {
                let p = if op == BinOp::Max { gt } else { lt };
                let c = b.build_int_compare(p, x, y, "").map_err(llvm_err)?;
                b.build_select(c, x, y, "").map_err(llvm_err)?
            }
            BinOp::Eq => cmp(IntPredicate::EQ)?,
            BinOp::Ne => cmp(IntPredicate::NE)?,
            BinOp::Lt => cmp(lt)?,
            BinOp::Le => cmp(le)?,
            BinOp::Gt => cmp(gt)?,
            BinOp::Ge => cmp(ge)?,
            BinOp::And => b.build_and(x, y, "").map_err(llvm_err)?.into(),
            BinOp::Or => b.build_or(x, y, "").map_err(llvm_err)?.into(),
            BinOp::Xor => b.build_xor(x, y, "").map_err(llvm_err)?.into(),
            BinOp::Shl => b.build_left_shift(x, y, "").map_err(llvm_err)?.into(),
            BinOp::Shr => b
                .build_right_shift(x, y, !unsigned, "")
                .map_err(llvm_err)?
                .into(),
        };
        Ok(r)
    }

    /// `i64 llmc.ipow(i64 x, i64 y)` with the loop IR's rules, defined once.
    fn ipow(&self) -> R<FunctionValue<'ctx>> {
        let it = self.it;
        if let Some(f) = self.module.get_function("llmc.ipow") {
            return Ok(f);
        }
        let i64t = it.i64;
        let fty = i64t.fn_type(&[i64t.into(), i64t.into()], false);
        let f = self
            .module
            .add_function("llmc.ipow", fty, Some(Linkage::Internal));
        let b = it.cx.create_builder();
        let entry = it.cx.append_basic_block(f, "entry");
        let negb = it.cx.append_basic_block(f, "neg");
        let loopb = it.cx.append_basic_block(f, "loop");
        let done = it.cx.append_basic_block(f, "done");
        let x = f
            .get_nth_param(0)
            .ok_or_else(|| llvm_err("param"))?
            .into_int_value();
        let y = f
            .get_nth_param(1)
            .ok_or_else(|| llvm_err("param"))?
            .into_int_value();
        b.position_at_end(entry);
        let c = |v: u64| i64t.const_int(v, true);
        let isneg = b
            .build_int_compare(IntPredicate::SLT, y, c(0), "")
            .map_err(llvm_err)?;
        b.build_conditional_branch(isneg, negb, loopb)
            .map_err(llvm_err)?;
        // y < 0: 1 -> 1, -1 -> ±1 by parity, anything else -> 0.
        b.position_at_end(negb);
        let is1 = b
            .build_int_compare(IntPredicate::EQ, x, c(1), "")
            .map_err(llvm_err)?;
        let ism1 = b
            .build_int_compare(IntPredicate::EQ, x, c(u64::MAX), "")
            .map_err(llvm_err)?;
        let odd = b.build_and(y, c(1), "").map_err(llvm_err)?;
        let odd = b
            .build_int_compare(IntPredicate::NE, odd, c(0), "")
            .map_err(llvm_err)?;
        let m1 = b
            .build_select(odd, c(u64::MAX), c(1), "")
            .map_err(llvm_err)?;
        let r = b
            .build_select(ism1, m1, c(0).into(), "")
            .map_err(llvm_err)?;
        let r = b.build_select(is1, c(1).into(), r, "").map_err(llvm_err)?;
        b.build_return(Some(&r)).map_err(llvm_err)?;
        // Square and multiply, exponent clamped to u32::MAX as the reference does.
        b.position_at_end(loopb);
        let res = b.build_alloca(i64t, "res").map_err(llvm_err)?;
        let base = b.build_alloca(i64t, "base").map_err(llvm_err)?;
        let ex = b.build_alloca(i64t, "e").map_err(llvm_err)?;
        b.build_store(res, c(1)).map_err(llvm_err)?;
        b.build_store(base, x).map_err(llvm_err)?;
        let big = b
            .build_int_compare(IntPredicate::SGT, y, c(u32::MAX as u64), "")
            .map_err(llvm_err)?;
        let ey = b
            .build_select(big, c(u32::MAX as u64), y, "")
            .map_err(llvm_err)?;
        b.build_store(ex, ey).map_err(llvm_err)?;
        let head = it.cx.append_basic_block(f, "head");
        let body = it.cx.append_basic_block(f, "body");
        b.build_unconditional_branch(head).map_err(llvm_err)?;
        b.position_at_end(head);
        let e = b
            .build_load(i64t, ex, "")
            .map_err(llvm_err)?
            .into_int_value();
        let more = b
            .build_int_compare(IntPredicate::SGT, e, c(0), "")
            .map_err(llvm_err)?;
        b.build_conditional_branch(more, body, done)
            .map_err(llvm_err)?;
        b.position_at_end(body);
        let bit = b.build_and(e, c(1), "").map_err(llvm_err)?;
        let bit = b
            .build_int_compare(IntPredicate::NE, bit, c(0), "")
            .map_err(llvm_err)?;
        let rv = b
            .build_load(i64t, res, "")
            .map_err(llvm_err)?
            .into_int_value();
        let bv = b
            .build_load(i64t, base, "")
            .map_err(llvm_err)?
            .into_int_value();
        let prod = b.build_int_mul(rv, bv, "").map_err(llvm_err)?;
        let nr = b.build_select(bit, prod, rv, "").map_err(llvm_err)?;
        b.build_store(res, nr).map_err(llvm_err)?;
        let sq = b.build_int_mul(bv, bv, "").map_err(llvm_err)?;
        b.build_store(base, sq).map_err(llvm_err)?;
        let ne = b.build_right_shift(e, c(1), false, "").map_err(llvm_err)?;
        b.build_store(ex, ne).map_err(llvm_err)?;
        b.build_unconditional_branch(head).map_err(llvm_err)?;
        b.position_at_end(done);
        let r = b.build_load(i64t, res, "").map_err(llvm_err)?;
        b.build_return(Some(&r)).map_err(llvm_err)?;
        Ok(f)
    }

    /// Conversions with the loop IR's rules (saturating float -> int through i64, then
    /// wrapping; anything -> bool is != 0; bf16 through f32 bits).
    fn cast(
        &self,
        f: &Frame<'ctx>,
        x: BasicValueEnum<'ctx>,
        from: Ty,
        to: Ty,
    ) -> R<BasicValueEnum<'ctx>> {
        let it = self.it;
        let b = &f.b;
        if from == to {
            return Ok(x);
        }
        if from == Ty::BF16 {
            let bits = b
                .build_int_z_extend(x.into_int_value(), it.i32, "")
                .map_err(llvm_err)?;
            let sh = b
                .build_left_shift(bits, it.i32.const_int(16, false), "")
                .map_err(llvm_err)?;
            let f32v = b.build_bit_cast(sh, it.f32, "").map_err(llvm_err)?;
            return self.cast(f, f32v, Ty::F32, to);
        }
        if to == Ty::BF16 {
            let v = self.cast(f, x, from, Ty::F32)?.into_float_value();
            let bits = b
                .build_bit_cast(v, it.i32, "")
                .map_err(llvm_err)?
                .into_int_value();
            let c32 = |v: u64| it.i32.const_int(v, false);
            let hi = b
                .build_right_shift(bits, c32(16), false, "")
                .map_err(llvm_err)?;
            let lsb = b.build_and(hi, c32(1), "").map_err(llvm_err)?;
            let bias = b.build_int_add(lsb, c32(0x7FFF), "").map_err(llvm_err)?;
            let rounded = b.build_int_add(bits, bias, "").map_err(llvm_err)?;
            let rounded = b
                .build_right_shift(rounded, c32(16), false, "")
                .map_err(llvm_err)?;
            let quiet = b.build_or(hi, c32(0x40), "").map_err(llvm_err)?;
            let nan = b
                .build_float_compare(FloatPredicate::UNO, v, v, "")
                .map_err(llvm_err)?;
            let r = b
                .build_select(nan, quiet, rounded, "")
                .map_err(llvm_err)?
                .into_int_value();
            return Ok(b
                .build_int_truncate(r, it.i16, "")
                .map_err(llvm_err)?
                .into());
        }
        if to == Ty::Bool {
            return Ok(if from.is_float() {
                let v = x.into_float_value();
                b.build_float_compare(FloatPredicate::UNE, v, v.get_type().const_zero(), "")
                    .map_err(llvm_err)?
                    .into()
            } else {
                let v = x.into_int_value();
                b.build_int_compare(IntPredicate::NE, v, v.get_type().const_zero(), "")
                    .map_err(llvm_err)?
                    .into()
            });
        }
        let signed_src = !from.is_unsigned();
        match (from.is_float(), to.is_float()) {
            (true, true) => {
                let v = x.into_float_value();
                let tt = it.ty(to).into_float_type();
                let wider = to.bytes() > from.bytes();
                Ok(if wider {
                    b.build_float_ext(v, tt, "").map_err(llvm_err)?.into()
                } else {
                    b.build_float_trunc(v, tt, "").map_err(llvm_err)?.into()
                })
            }
            (false, true) => {
                let v = x.into_int_value();
                let tt = it.ty(to).into_float_type();
                Ok(if signed_src {
                    b.build_signed_int_to_float(v, tt, "")
                        .map_err(llvm_err)?
                        .into()
                } else {
                    b.build_unsigned_int_to_float(v, tt, "")
                        .map_err(llvm_err)?
                        .into()
                })
            }
            (true, false) => {
                let mut v = x.into_float_value();
                if from == Ty::F16 {
                    v = b.build_float_ext(v, it.f32, "").map_err(llvm_err)?;
                }
                let tt = it.ty(to).into_int_type();
                if to.sat_i32() {
                    // Saturating to i32 spelled out (a conversion, two range checks and
                    // the NaN check), which vectorizes; LLVM 19 scalarizes a vector
                    // `llvm.fptosi.sat` on x86 (it was half the activation quantization).
                    let e = llvm_err;
                    let ft = v.get_type();
                    let cmp = |p, k: f64| b.build_float_compare(p, v, ft.const_float(k), "");
                    let big = cmp(FloatPredicate::OGE, 2147483648.0).map_err(e)?;
                    let small = cmp(FloatPredicate::OLT, -2147483648.0).map_err(e)?;
                    let nan = b
                        .build_float_compare(FloatPredicate::UNO, v, v, "")
                        .map_err(e)?;
                    let r = b.build_float_to_signed_int(v, it.i32, "").map_err(e)?;
                    let i32c = |k: i64| it.i32.const_int(k as u64, true);
                    let r = b
                        .build_select(big, i32c(i32::MAX as i64), r, "")
                        .map_err(e)?;
                    let r = b.build_select(small, i32c(i32::MIN as i64), r.into_int_value(), "");
                    let r = r.map_err(e)?.into_int_value();
                    let r = b.build_select(nan, i32c(0), r, "").map_err(e)?;
                    return Ok(b
                        .build_int_truncate_or_bit_cast(r.into_int_value(), tt, "")
                        .map_err(e)?
                        .into());
                }
                let sat = self.intr("llvm.fptosi.sat", &[it.i64.into(), v.get_type().into()])?;
                let r = self.call(f, sat, &[v.into()])?.into_int_value();
                Ok(b.build_int_truncate_or_bit_cast(r, tt, "")
                    .map_err(llvm_err)?
                    .into())
            }
            (false, false) => {
                let v = x.into_int_value();
                let tt = it.ty(to).into_int_type();
                Ok(if to.bytes() > from.bytes() || (from == Ty::Bool) {
                    b.build_int_cast_sign_flag(v, tt, signed_src, "")
                        .map_err(llvm_err)?
                        .into()
                } else {
                    b.build_int_truncate_or_bit_cast(v, tt, "")
                        .map_err(llvm_err)?
                        .into()
                })
            }
        }
    }
}

/// Collects the variables a block uses, defines and assigns, and the buffers it
/// touches and allocates.
fn scan(
    body: &[Stmt],
    used: &mut BTreeSet<VarId>,
    defined: &mut BTreeSet<VarId>,
    assigned: &mut BTreeSet<VarId>,
    bufs: &mut BTreeSet<BufId>,
    allocs: &mut BTreeSet<BufId>,
) {
    visit_stmts_exprs(body, &mut |e| {
        visit_expr(e, &mut |x| match x {
            Expr::Var(v) => {
                used.insert(*v);
            }
            Expr::Load(b, _) | Expr::LoadRaw(b, _, _) => {
                bufs.insert(*b);
            }
            _ => {}
        })
    });
    fn walk(
        body: &[Stmt],
        defined: &mut BTreeSet<VarId>,
        assigned: &mut BTreeSet<VarId>,
        bufs: &mut BTreeSet<BufId>,
        allocs: &mut BTreeSet<BufId>,
    ) {
        for s in body {
            match s {
                Stmt::For { var, body, .. } => {
                    defined.insert(*var);
                    walk(body, defined, assigned, bufs, allocs);
                }
                Stmt::Let { var, .. } => {
                    defined.insert(*var);
                }
                Stmt::Assign { var, .. } => {
                    assigned.insert(*var);
                }
                Stmt::Store { buf, .. } | Stmt::StoreRaw { buf, .. } => {
                    bufs.insert(*buf);
                }
                Stmt::If { then, els, .. } => {
                    walk(then, defined, assigned, bufs, allocs);
                    walk(els, defined, assigned, bufs, allocs);
                }
                Stmt::Alloc { buf, .. } => {
                    allocs.insert(*buf);
                }
                Stmt::Barrier => {}
                Stmt::Prefetch { buf, .. } => {
                    bufs.insert(*buf);
                }
                Stmt::ShuffleXor { var, .. } => {
                    assigned.insert(*var);
                }
                Stmt::Mma(m) => {
                    assigned.extend(m.d.iter().copied());
                }
                Stmt::QDot(q) => {
                    for a in &q.accs {
                        assigned.insert(*a);
                    }
                    bufs.extend([q.w, q.xq, q.xd, q.xs]);
                }
                Stmt::QUnpack(u) => {
                    bufs.extend([u.w, u.tile, u.scales]);
                }
                Stmt::FTile(t) => {
                    bufs.extend([t.w, t.x, t.out]);
                }
                Stmt::QTile(t) => {
                    for a in &t.accs {
                        assigned.insert(*a);
                    }
                    bufs.extend([t.w, t.tile, t.scales, t.xq, t.xd, t.xs]);
                }
            }
        }
    }
    walk(body, defined, assigned, bufs, allocs);
}

/// Statement executions under which a parallel loop runs inline on the calling thread
/// rather than through the pool: a pool round trip (publish, wake, join) costs a few
/// microseconds, more than a decode step's small kernels (rope, transposes, norms of
/// one row) take in all. Measured on the Xeon: see `docs/codegen.md`.
const PAR_MIN_WORK: u64 = 8192;

/// Statement executions of one iteration of a loop body, as an index expression of
/// the dims and of values defined before the loop, when every inner loop's bounds are
/// such (`None` when one depends on the body's own values or loads, or when the body
/// holds a tile or a block dot product: such a loop is always worth the pool).
fn cost_expr(body: &[Stmt], inner: &BTreeSet<VarId>) -> Option<Expr> {
    let outer_only = |e: &Expr| {
        let mut ok = true;
        visit_expr(e, &mut |x| match x {
            Expr::Var(v) if inner.contains(v) => ok = false,
            Expr::Load(..) | Expr::LoadRaw(..) => ok = false,
            _ => {}
        });
        ok
    };
    let mut total = Expr::i(0);
    for s in body {
        let c = match s {
            Stmt::For {
                lo, hi, step, body, ..
            } => {
                if !outer_only(lo) || !outer_only(hi) {
                    return None;
                }
                let span = Expr::bin(BinOp::Sub, hi.clone(), lo.clone());
                let trips = Expr::bin(
                    BinOp::Div,
                    Expr::bin(BinOp::Add, span, Expr::i(step - 1)),
                    Expr::i(*step),
                );
                let trips = trips.max(Expr::i(0));
                Expr::bin(BinOp::Mul, trips, cost_expr(body, inner)?)
            }
            Stmt::If { then, els, .. } => Expr::bin(
                BinOp::Add,
                cost_expr(then, inner)?.max(cost_expr(els, inner)?),
                Expr::i(1),
            ),
            Stmt::QDot(_) | Stmt::QTile(_) | Stmt::QUnpack(_) | Stmt::FTile(_) => return None,
            _ => Expr::i(1),
        };
        total = Expr::bin(BinOp::Add, total, c);
    }
    Some(total)
}

/// Whether a loop body assigns a variable it does not define (a reduction carried out
/// of the loop, e.g. a dot product's accumulator).
fn reduces_outward(body: &[Stmt]) -> bool {
    let mut defined = Vec::new();
    let mut assigned = Vec::new();
    fn walk(b: &[Stmt], defined: &mut Vec<VarId>, assigned: &mut Vec<VarId>) {
        for s in b {
            match s {
                Stmt::Let { var, .. } => defined.push(*var),
                Stmt::Assign { var, .. } => assigned.push(*var),
                Stmt::For { var, body, .. } => {
                    defined.push(*var);
                    walk(body, defined, assigned);
                }
                Stmt::If { then, els, .. } => {
                    walk(then, defined, assigned);
                    walk(els, defined, assigned);
                }
                _ => {}
            }
        }
    }
    walk(body, &mut defined, &mut assigned);
    assigned.iter().any(|a| !defined.contains(a))
}
