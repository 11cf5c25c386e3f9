//! The LLVM door: every use of inkwell is in this folder. `compile` lowers a list of
//! loop-IR kernels into one LLVM module (plus the kernel table the runtime looks up),
//! runs the `-O` pipeline (`default<On>`) for the chosen target machine (the host CPU
//! and its features by default, or a named CPU such as `x86-64-v3`), and emits what
//! was asked: LLVM IR text before and after optimisation, assembly, an object file.
//! `compile_ptx` lowers GPU-form kernels for `nvptx64-nvidia-cuda` and emits PTX text
//! per CUDA architecture; the differences between the targets are in `target`.

mod intrinsics;
mod lower;
mod target;

use inkwell::context::Context;
use inkwell::module::Linkage;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::values::BasicValue;
use inkwell::OptimizationLevel;
use intrinsics::Intrinsics;
use llmc_kernels::Kernel;
use llmc_runtime::abi::{KERNEL_TABLES_SYMBOL, KERNEL_TABLE_SYMBOL};

/// A code generation error.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// A kernel uses something this backend cannot emit.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// LLVM refused something (a bug in the lowering, reported rather than hidden).
    #[error("LLVM: {0}")]
    Llvm(String),
    /// The target or CPU is unknown.
    #[error("target: {0}")]
    Target(String),
}

/// Options of the CPU code generator.
#[derive(Clone, Debug)]
pub struct CpuOptions {
    /// 0..=3, as `-O`.
    pub opt_level: u8,
    /// `native` (the host CPU and its features) or an LLVM CPU name (`x86-64-v3`).
    pub cpu: String,
    /// Extra target features (`+avx2,-fma`); with `native` they are added to the
    /// host's.
    pub features: String,
    /// Target triple; the host's when `None`.
    pub triple: Option<String>,
    /// One of a portable build's variants: `(index, count)`. Its kernels' symbols
    /// and its table carry the tag `v{index}` (`llmc_kernel_table_v0`); variant 0
    /// also exports the list of all `count` tables. `None`: one variant, the table is
    /// `llmc_kernel_table` (see `llmc_runtime::abi`).
    pub variant: Option<(u32, u32)>,
}

impl Default for CpuOptions {
    fn default() -> CpuOptions {
        CpuOptions {
            opt_level: 2,
            cpu: "native".into(),
            features: String::new(),
            triple: None,
            variant: None,
        }
    }
}

/// What `compile` can produce.
#[derive(Clone, Copy, Debug, Default)]
pub struct Want {
    /// LLVM IR text before and after optimisation.
    pub llvm_ir: bool,
    /// Assembly text.
    pub asm: bool,
    /// An object file.
    pub object: bool,
}

/// What `compile` produced.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// LLVM IR before the pass pipeline (when asked).
    pub preopt_ll: Option<String>,
    /// LLVM IR after it (when asked).
    pub postopt_ll: Option<String>,
    /// Assembly (when asked).
    pub asm: Option<String>,
    /// The object file (when asked).
    pub object: Option<Vec<u8>>,
    /// The target machine's description, for `info`.
    pub target: String,
    /// What the code needs from the CPU it runs on (x86-64 targets).
    pub cpu: Option<llmc_runtime::plan::CpuRequirement>,
}

fn target_machine(opts: &CpuOptions) -> Result<TargetMachine, CodegenError> {
    Target::initialize_all(&InitializationConfig::default());
    let triple = match &opts.triple {
        Some(t) => TargetTriple::create(t),
        None => TargetMachine::get_default_triple(),
    };
    let target = Target::from_triple(&triple)
        .map_err(|e| CodegenError::Target(format!("{}: {e}", triple.as_str().to_string_lossy())))?;
    let (cpu, mut features) = if opts.cpu == "native" {
        (
            TargetMachine::get_host_cpu_name().to_string(),
            TargetMachine::get_host_cpu_features().to_string(),
        )
    } else {
        (opts.cpu.clone(), String::new())
    };
    if !opts.features.is_empty() {
        if !features.is_empty() {
            features.push(',');
        }
        features.push_str(&opts.features);
    }
    let level = match opts.opt_level {
        0 => OptimizationLevel::None,
        1 => OptimizationLevel::Less,
        2 => OptimizationLevel::Default,
        _ => OptimizationLevel::Aggressive,
    };
    // LLVM accepts unknown CPU names with a warning on stderr; check the name first.
    let triple_text = triple.as_str().to_string_lossy().to_string();
    if opts.cpu != "native" && !cpu_known(&triple_text, &cpu) {
        return Err(CodegenError::Target(format!(
            "unknown CPU `{cpu}` for {triple_text}"
        )));
    }
    let tm = target
        .create_target_machine(
            &triple,
            &cpu,
            &features,
            level,
            RelocMode::PIC,
            CodeModel::Default,
        )
        .ok_or_else(|| {
            CodegenError::Target(format!("cannot create a target machine for CPU `{cpu}`"))
        })?;
    Ok(tm)
}

/// True when the target machine's CPU has AVX2 and FMA (its explicit features, or a
/// named x86 CPU that implies them; every AVX2 CPU has FMA); a `-avx2` or `-fma`
/// feature turns it off.
fn has_avx2(tm: &TargetMachine) -> bool {
    has_all(tm, &["avx2", "fma"])
}

/// Whether the code for `tm` may use every feature in `names`.
fn has_all(tm: &TargetMachine, names: &[&str]) -> bool {
    required_features(tm).is_some_and(|f| names.iter().all(|n| f.iter().any(|x| x == n)))
}

/// The extensions the code for `tm` may use (x86-64 only; `None` elsewhere), for the
/// executable's start-up check.
fn required_features(tm: &TargetMachine) -> Option<Vec<String>> {
    let triple = tm.get_triple().as_str().to_string_lossy().to_string();
    if !triple.starts_with("x86_64") {
        return None;
    }
    let features = tm.get_feature_string().to_string_lossy().to_string();
    let cpu = tm.get_cpu().to_string_lossy().to_string();
    Some(crate::cpu::required_features(&cpu, &features))
}

/// True when `cpu` is a CPU the target knows (x86 names checked against the feature
/// table in [`crate::cpu`], which the start-up check needs; other targets are trusted).
fn cpu_known(triple: &str, cpu: &str) -> bool {
    if triple.starts_with("x86_64") || triple.starts_with("i686") {
        return crate::cpu::named_cpu_features(cpu).is_some();
    }
    true
}

/// Routes LLVM's diagnostics for `cx` through [`diagnostic`]: remarks and warnings
/// (a vectorization width a loop cannot take: `loop not vectorized: ...`) are not the
/// user's business and used to reach stderr; errors are still printed.
fn quiet_diagnostics(cx: &Context) {
    // SAFETY: installs a handler with no context pointer on a live context.
    unsafe {
        inkwell::llvm_sys::core::LLVMContextSetDiagnosticHandler(
            cx.raw(),
            Some(diagnostic),
            std::ptr::null_mut(),
        )
    }
}

/// LLVM's diagnostic callback: prints errors, drops the rest.
extern "C" fn diagnostic(
    info: inkwell::llvm_sys::prelude::LLVMDiagnosticInfoRef,
    _: *mut std::ffi::c_void,
) {
    use inkwell::llvm_sys::core::{
        LLVMDisposeMessage, LLVMGetDiagInfoDescription, LLVMGetDiagInfoSeverity,
    };
    use inkwell::llvm_sys::LLVMDiagnosticSeverity;
    // SAFETY: LLVM passes a valid diagnostic for the duration of the call; the
    // description is an LLVM-allocated string, freed here.
    unsafe {
        if LLVMGetDiagInfoSeverity(info) == LLVMDiagnosticSeverity::LLVMDSError {
            let d = LLVMGetDiagInfoDescription(info);
            if !d.is_null() {
                eprintln!("LLVM: {}", std::ffi::CStr::from_ptr(d).to_string_lossy());
                LLVMDisposeMessage(d);
            }
        }
    }
}

/// The host's triple, CPU and features, for messages.
pub fn host_description() -> String {
    Target::initialize_native(&InitializationConfig::default()).ok();
    format!(
        "{} {}",
        TargetMachine::get_default_triple()
            .as_str()
            .to_string_lossy(),
        TargetMachine::get_host_cpu_name()
    )
}

/// Lowers `kernels` into one module named `name`, optimises it, emits what is wanted.
/// The module exports `llmc_kernel_table` listing the kernels in order.
pub fn compile(
    name: &str,
    kernels: &[Kernel],
    opts: &CpuOptions,
    want: Want,
) -> Result<Compiled, CodegenError> {
    let tm = target_machine(opts)?;
    let cx = Context::create();
    quiet_diagnostics(&cx);
    let module = cx.create_module(name);
    module.set_triple(&tm.get_triple());
    module.set_data_layout(&tm.get_target_data().get_data_layout());
    let it = Intrinsics::new(&cx);
    let avx512 = has_all(&tm, &["avx512f", "avx512bw", "avx512vl"]);
    let target = target::Target::Cpu {
        avx2: has_avx2(&tm),
        avx512,
        vnni: avx512 && has_all(&tm, &["avx512vnni"]),
    };
    let mut entries = Vec::new();
    for (i, k) in kernels.iter().enumerate() {
        let base = match opts.variant {
            Some((v, _)) => format!("llmc_v{v}_k{i}_{}", k.name),
            None => format!("llmc_k{i}_{}", k.name),
        };
        let f = lower::Lowering::new(&it, &module, k, base, target).lower()?;
        entries.push((k.name.clone(), f));
    }
    // The table: { i64 count, ptr entries }, entries = [{ ptr name, ptr fn }].
    let entry_ty = cx.struct_type(&[it.ptr.into(), it.ptr.into()], false);
    let mut vals = Vec::new();
    for (i, (kname, f)) in entries.iter().enumerate() {
        let s = cx.const_string(kname.as_bytes(), true);
        let g = module.add_global(s.get_type(), None, &format!("llmc.kname.{i}"));
        g.set_initializer(&s);
        g.set_constant(true);
        g.set_linkage(Linkage::Private);
        vals.push(entry_ty.const_named_struct(&[
            g.as_pointer_value().into(),
            f.as_global_value().as_pointer_value().into(),
        ]));
    }
    let arr = entry_ty.const_array(&vals);
    let g_entries = module.add_global(arr.get_type(), None, "llmc.kernel_entries");
    g_entries.set_initializer(&arr);
    g_entries.set_constant(true);
    g_entries.set_linkage(Linkage::Private);
    let table_ty = cx.struct_type(&[it.i64.into(), it.ptr.into()], false);
    let table = table_ty.const_named_struct(&[
        it.i64
            .const_int(kernels.len() as u64, false)
            .as_basic_value_enum(),
        g_entries.as_pointer_value().into(),
    ]);
    let table_name = |v: Option<u32>| match v {
        Some(v) => format!("{KERNEL_TABLE_SYMBOL}_v{v}"),
        None => KERNEL_TABLE_SYMBOL.to_string(),
    };
    let g_table = module.add_global(table_ty, None, &table_name(opts.variant.map(|v| v.0)));
    g_table.set_initializer(&table);
    g_table.set_constant(true);
    g_table.set_linkage(Linkage::External);
    // The list of the variants' tables: { i64 count, ptr tables }, from the one
    // variant or variant 0 (the others' tables are declared here, defined in their
    // objects).
    let listed: Option<Vec<_>> = match opts.variant {
        None => Some(vec![g_table]),
        Some((0, n)) => Some(
            std::iter::once(g_table)
                .chain((1..n).map(|v| {
                    let g = module.add_global(table_ty, None, &table_name(Some(v)));
                    g.set_linkage(Linkage::External);
                    g
                }))
                .collect(),
        ),
        Some(_) => None,
    };
    if let Some(listed) = listed {
        let ptrs: Vec<_> = listed.iter().map(|g| g.as_pointer_value()).collect();
        let arr = it.ptr.const_array(&ptrs);
        let g_arr = module.add_global(arr.get_type(), None, "llmc.kernel_tables");
        g_arr.set_initializer(&arr);
        g_arr.set_constant(true);
        g_arr.set_linkage(Linkage::Private);
        let tables = table_ty.const_named_struct(&[
            it.i64
                .const_int(listed.len() as u64, false)
                .as_basic_value_enum(),
            g_arr.as_pointer_value().into(),
        ]);
        let g = module.add_global(table_ty, None, KERNEL_TABLES_SYMBOL);
        g.set_initializer(&tables);
        g.set_constant(true);
        g.set_linkage(Linkage::External);
    }
    module
        .verify()
        .map_err(|e| CodegenError::Llvm(format!("the lowered module does not verify: {e}")))?;
    let mut out = Compiled {
        target: {
            let extra = tm
                .get_feature_string()
                .to_string_lossy()
                .split(',')
                .filter(|f| f.starts_with('+'))
                .count();
            let mut t = format!(
                "{} cpu={}",
                tm.get_triple().as_str().to_string_lossy(),
                tm.get_cpu().to_string_lossy()
            );
            if extra > 0 {
                t.push_str(&format!(" (+{extra} features)"));
            }
            t
        },
        cpu: required_features(&tm).map(|features| llmc_runtime::plan::CpuRequirement {
            built_for: tm.get_cpu().to_string_lossy().to_string(),
            features,
        }),
        ..Compiled::default()
    };
    if want.llvm_ir {
        out.preopt_ll = Some(module.print_to_string().to_string());
    }
    let level = opts.opt_level.min(3);
    module
        .run_passes(
            &format!("default<O{level}>"),
            &tm,
            PassBuilderOptions::create(),
        )
        .map_err(|e| CodegenError::Llvm(format!("the pass pipeline failed: {e}")))?;
    if want.llvm_ir {
        out.postopt_ll = Some(module.print_to_string().to_string());
    }
    if want.asm {
        let b = tm
            .write_to_memory_buffer(&module, FileType::Assembly)
            .map_err(|e| CodegenError::Llvm(e.to_string()))?;
        out.asm = Some(String::from_utf8_lossy(b.as_slice()).into_owned());
    }
    if want.object {
        let b = tm
            .write_to_memory_buffer(&module, FileType::Object)
            .map_err(|e| CodegenError::Llvm(e.to_string()))?;
        out.object = Some(b.as_slice().to_vec());
    }
    Ok(out)
}

/// Options of the NVPTX code generator.
#[derive(Clone, Debug)]
pub struct PtxOptions {
    /// 0..=3, as `-O`.
    pub opt_level: u8,
    /// The CUDA architecture (`sm_80`, `sm_90`, ...).
    pub arch: String,
}

/// What `compile_ptx` produced for one architecture.
#[derive(Clone, Debug, Default)]
pub struct Ptx {
    /// The architecture.
    pub arch: String,
    /// The PTX module text.
    pub text: String,
    /// The entry name of each kernel, in table order (`llmc_k{i}_{name}`).
    pub entries: Vec<String>,
    /// LLVM IR before the pass pipeline (when asked).
    pub preopt_ll: Option<String>,
    /// LLVM IR after it (when asked).
    pub postopt_ll: Option<String>,
}

/// The CUDA architectures `--cuda-arch` accepts.
pub const CUDA_ARCHS: &[&str] = &["sm_70", "sm_75", "sm_80", "sm_86", "sm_89", "sm_90"];

/// The PTX entry name of kernel `i`.
pub fn ptx_entry(i: usize, k: &Kernel) -> String {
    format!("llmc_k{i}_{}", k.name)
}

/// Lowers GPU-form kernels into one PTX module for `opts.arch`.
pub fn compile_ptx(
    name: &str,
    kernels: &[Kernel],
    opts: &PtxOptions,
    llvm_ir: bool,
) -> Result<Ptx, CodegenError> {
    if !CUDA_ARCHS.contains(&opts.arch.as_str()) {
        return Err(CodegenError::Target(format!(
            "unknown CUDA architecture `{}` (known: {})",
            opts.arch,
            CUDA_ARCHS.join(", ")
        )));
    }
    Target::initialize_all(&InitializationConfig::default());
    let triple = TargetTriple::create("nvptx64-nvidia-cuda");
    let target = Target::from_triple(&triple)
        .map_err(|e| CodegenError::Target(format!("nvptx64-nvidia-cuda: {e}")))?;
    let level = match opts.opt_level {
        0 => OptimizationLevel::None,
        1 => OptimizationLevel::Less,
        2 => OptimizationLevel::Default,
        _ => OptimizationLevel::Aggressive,
    };
    let tm = target
        .create_target_machine(
            &triple,
            &opts.arch,
            "",
            level,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| {
            CodegenError::Target(format!("cannot create an NVPTX target for {}", opts.arch))
        })?;
    let cx = Context::create();
    quiet_diagnostics(&cx);
    let module = cx.create_module(name);
    module.set_triple(&triple);
    module.set_data_layout(&tm.get_target_data().get_data_layout());
    let it = Intrinsics::new(&cx);
    let mut entries = Vec::new();
    for (i, k) in kernels.iter().enumerate() {
        let base = ptx_entry(i, k);
        lower::Lowering::new(&it, &module, k, base.clone(), target::Target::Nvptx).lower()?;
        entries.push(base);
    }
    module
        .verify()
        .map_err(|e| CodegenError::Llvm(format!("the lowered module does not verify: {e}")))?;
    let mut out = Ptx {
        arch: opts.arch.clone(),
        entries,
        ..Ptx::default()
    };
    if llvm_ir {
        out.preopt_ll = Some(module.print_to_string().to_string());
    }
    module
        .run_passes(
            &format!("default<O{}>", opts.opt_level.min(3)),
            &tm,
            PassBuilderOptions::create(),
        )
        .map_err(|e| CodegenError::Llvm(format!("the pass pipeline failed: {e}")))?;
    if llvm_ir {
        out.postopt_ll = Some(module.print_to_string().to_string());
    }
    let b = tm
        .write_to_memory_buffer(&module, FileType::Assembly)
        .map_err(|e| CodegenError::Llvm(e.to_string()))?;
    out.text = String::from_utf8_lossy(b.as_slice()).into_owned();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmc_kernels::{Expr, KernelBuilder, LoopTag, Role, Ty};

    /// A vectorize loop of exactly one vector's constant trips (a 16-slot KV block's
    /// scores at 16 lanes) is kept whole for LLVM's vectorizer: fully unrolled first,
    /// it became scalar code that the SLP pass only partly rebuilt (`paged_attention`'s
    /// block maximum went element by element, a `maxnum` and a NaN test each).
    #[test]
    fn one_vector_loops_reach_the_vectorizer_whole() {
        let mut kb = KernelBuilder::new("one_vector");
        let a = kb.param("a", Ty::F32, Role::In);
        let y = kb.param("y", Ty::F32, Role::Out);
        kb.for_("i", 0, 16, LoopTag::Vectorize(16), |kb, i| {
            let v = Expr::load(a, i.clone()).max(Expr::f(0.5, Ty::F32));
            kb.store(y, i, v);
        });
        let k = kb.finish().expect("kernel");
        let opts = CpuOptions {
            opt_level: 3,
            cpu: "x86-64-v4".into(),
            triple: Some("x86_64-unknown-linux-gnu".into()),
            ..CpuOptions::default()
        };
        let want = Want {
            llvm_ir: true,
            ..Want::default()
        };
        let out = compile("one_vector", &[k], &opts, want).expect("compiles");
        let pre = out.preopt_ll.expect("preopt IR");
        assert!(pre.contains("llvm.loop.unroll.disable"), "{pre}");
        let post = out.postopt_ll.expect("postopt IR");
        assert!(post.contains("@llvm.maxnum.v16f32("), "{post}");
        assert!(!post.contains("@llvm.maxnum.f32("), "{post}");
    }
}
