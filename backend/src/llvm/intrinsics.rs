//! Every LLVM type, intrinsic and library function the lowering uses, declared once
//! per module (the `Intrinsics` struct wasmer's LLVM backend keeps): the lowering asks
//! for `exp` on f32 and gets the one declaration, never a string typed twice.

use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::{
    BasicMetadataTypeEnum, BasicType, BasicTypeEnum, FloatType, IntType, PointerType,
};
use inkwell::values::FunctionValue;
use inkwell::AddressSpace;
use llmc_kernels::Ty;
use std::cell::RefCell;
use std::collections::HashMap;

/// Types and callees of one LLVM module.
pub(crate) struct Intrinsics<'ctx> {
    pub cx: &'ctx Context,
    pub i1: IntType<'ctx>,
    pub i8: IntType<'ctx>,
    pub i16: IntType<'ctx>,
    pub i32: IntType<'ctx>,
    pub i64: IntType<'ctx>,
    pub f16: FloatType<'ctx>,
    pub f32: FloatType<'ctx>,
    pub f64: FloatType<'ctx>,
    pub ptr: PointerType<'ctx>,
    cache: RefCell<HashMap<String, FunctionValue<'ctx>>>,
}

impl<'ctx> Intrinsics<'ctx> {
    pub fn new(cx: &'ctx Context) -> Intrinsics<'ctx> {
        Intrinsics {
            cx,
            i1: cx.bool_type(),
            i8: cx.i8_type(),
            i16: cx.i16_type(),
            i32: cx.i32_type(),
            i64: cx.i64_type(),
            f16: cx.f16_type(),
            f32: cx.f32_type(),
            f64: cx.f64_type(),
            ptr: cx.ptr_type(AddressSpace::default()),
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// The LLVM type of a loop-IR scalar. bf16 values are carried as their i16 bits
    /// (they only exist at loads and stores; arithmetic is in f32).
    pub fn ty(&self, t: Ty) -> BasicTypeEnum<'ctx> {
        match t {
            Ty::Bool => self.i1.into(),
            Ty::I8 | Ty::U8 => self.i8.into(),
            Ty::I16 | Ty::BF16 => self.i16.into(),
            Ty::I32 => self.i32.into(),
            Ty::I64 => self.i64.into(),
            Ty::F16 => self.f16.into(),
            Ty::F32 => self.f32.into(),
            Ty::F64 => self.f64.into(),
        }
    }

    /// The in-memory type (bool is a byte).
    pub fn mem_ty(&self, t: Ty) -> BasicTypeEnum<'ctx> {
        match t {
            Ty::Bool => self.i8.into(),
            t => self.ty(t),
        }
    }

    /// An overloaded LLVM intrinsic (`llvm.exp` on `[f32]`).
    pub fn intrinsic(
        &self,
        module: &Module<'ctx>,
        name: &str,
        tys: &[BasicTypeEnum<'ctx>],
    ) -> Option<FunctionValue<'ctx>> {
        let key = format!("{name}{tys:?}");
        if let Some(f) = self.cache.borrow().get(&key) {
            return Some(*f);
        }
        let f = Intrinsic::find(name)?.get_declaration(module, tys)?;
        self.cache.borrow_mut().insert(key, f);
        Some(f)
    }

    /// A C library function `ret name(args)` (libm's `tanhf`, `erff`, ...), or the
    /// runtime's `llmc_parallel_for`.
    pub fn external(
        &self,
        module: &Module<'ctx>,
        name: &str,
        ret: Option<BasicTypeEnum<'ctx>>,
        args: &[BasicMetadataTypeEnum<'ctx>],
    ) -> FunctionValue<'ctx> {
        if let Some(f) = module.get_function(name) {
            return f;
        }
        let fty = match ret {
            Some(r) => r.fn_type(args, false),
            None => self.cx.void_type().fn_type(args, false),
        };
        module.add_function(name, fty, Some(Linkage::External))
    }
}
