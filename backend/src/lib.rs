//! Code generation for the CPU and the link step: a module becomes loop-IR kernels
//! and a plan (`plan`), the kernels become an object through LLVM (`llvm`, the only
//! place inkwell is used), and the object, the runtime static library, the plan and
//! the weights become one executable (`link`). For CUDA, the kernels get GPU
//! schedules and become PTX per architecture (`compile_cuda`), checked by `ptxas`
//! when it is installed.

pub mod cpu;
pub mod link;
pub mod llvm;
pub mod plan;
pub mod ptxas;
pub mod run;

use llmc_ir::Module;
use std::path::{Path, PathBuf};

pub use link::LinkError;
pub use llvm::{CodegenError, Compiled, CpuOptions, Ptx, PtxOptions, Want};
pub use plan::{plan_module, plan_module_for, MemoryReport, Planned};

/// The runtime static library, embedded at build time.
pub static RUNTIME_LIB: &[u8] = include_bytes!(env!("LLMC_RT_LIB"));

/// A build error, naming the node, weight, input or file involved.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A node has no kernel (yet) or its kernel cannot be built.
    #[error("node {node} ({op}): {msg}")]
    Node {
        /// The node's first result (`%name`).
        node: String,
        /// The op.
        op: String,
        /// Why.
        msg: String,
    },
    /// A weight cannot be used.
    #[error("weight @{name}: {msg}")]
    Weight {
        /// Weight name.
        name: String,
        /// Why.
        msg: String,
    },
    /// A graph input or output cannot be used.
    #[error("value %{name}: {msg}")]
    Input {
        /// Value name.
        name: String,
        /// Why.
        msg: String,
    },
    /// LLVM code generation failed.
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    /// Linking failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A dump or output file could not be written.
    #[error("{path}: {msg}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        msg: String,
    },
}

/// Options of a CPU build.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Code generator options (`-O`, `--cpu`).
    pub cpu: CpuOptions,
    /// Where to write `kernels.loopir`, `NAME.preopt.ll`, `NAME.postopt.ll`,
    /// `plan.json` (`--dump-dir`).
    pub dump_dir: Option<PathBuf>,
    /// Tokenizer and decoder facts for `generate` (language models).
    pub llm: Option<llmc_runtime::plan::LlmInfo>,
}

/// A compiled module: its kernels and plan, and what LLVM produced.
pub struct CpuBuild<'m> {
    /// Kernels, plan and data section.
    pub planned: Planned<'m>,
    /// LLVM's output (a portable build's first, most capable variant).
    pub compiled: Compiled,
    /// A portable build's other variants' output (their objects), in variant order.
    pub other_variants: Vec<Compiled>,
}

/// The variants `--cpu portable` embeds, most capable first: AVX-512 (F, BW, CD, DQ,
/// VL), AVX2 + FMA (the AVX2 `QDot` and 8-lane kernels), and SSE4.2 so the executable
/// runs on any x86-64 server of the last fifteen years.
pub const PORTABLE_CPUS: [&str; 3] = ["x86-64-v4", "x86-64-v3", "x86-64-v2"];

impl CpuBuild<'_> {
    /// Every kernel's loop IR, in table order.
    pub fn loop_ir(&self) -> String {
        self.planned
            .kernels
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    std::fs::write(path, bytes).map_err(|e| BuildError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    })
}

/// Lowers and compiles `m` for the CPU. `want` says what LLVM should emit (LLVM IR
/// text is always produced when a dump folder is given).
pub fn compile_cpu<'m>(
    m: &'m Module,
    opts: &BuildOptions,
    mut want: Want,
) -> Result<CpuBuild<'m>, BuildError> {
    let mut planned = plan_module(m)?;
    if opts.dump_dir.is_some() {
        want.llvm_ir = true;
    }
    let name = if m.name.is_empty() { "module" } else { &m.name };
    let portable = opts.cpu.cpu == "portable";
    let variants: Vec<CpuOptions> = if portable {
        let host = llvm::host_description();
        if opts
            .cpu
            .triple
            .as_deref()
            .is_some_and(|t| !t.starts_with("x86_64"))
            || (opts.cpu.triple.is_none() && !host.starts_with("x86_64"))
        {
            return Err(BuildError::Codegen(CodegenError::Target(format!(
                "--cpu portable embeds x86-64 variants ({}); this target is {host}",
                PORTABLE_CPUS.join(", ")
            ))));
        }
        let n = PORTABLE_CPUS.len() as u32;
        PORTABLE_CPUS
            .iter()
            .enumerate()
            .map(|(i, cpu)| CpuOptions {
                cpu: cpu.to_string(),
                variant: Some((i as u32, n)),
                ..opts.cpu.clone()
            })
            .collect()
    } else {
        vec![opts.cpu.clone()]
    };
    // Assembly and LLVM IR (dumps, `--emit`) are the first variant's.
    let mut outs = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        let w = if i == 0 {
            want
        } else {
            Want {
                object: want.object,
                ..Want::default()
            }
        };
        outs.push(llvm::compile(name, &planned.kernels, v, w)?);
    }
    let compiled = outs.remove(0);
    let other_variants = outs;
    planned.plan.info = vec![
        ("target".into(), compiled.target.clone()),
        ("opt_level".into(), opts.cpu.opt_level.to_string()),
        (
            "compiler".into(),
            format!("llmc {}", env!("CARGO_PKG_VERSION")),
        ),
    ];
    planned.plan.llm = opts.llm.clone();
    planned.plan.cpu = compiled.cpu.clone();
    if portable {
        planned.plan.cpu_variants = std::iter::once(&compiled)
            .chain(&other_variants)
            .filter_map(|c| c.cpu.clone())
            .collect();
        planned.plan.cpu = planned.plan.cpu_variants.last().cloned();
        planned.plan.info[0].1 = format!(
            "portable: {}",
            std::iter::once(&compiled)
                .chain(&other_variants)
                .map(|c| c.target.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let build = CpuBuild {
        planned,
        compiled,
        other_variants,
    };
    if let Some(dir) = &opts.dump_dir {
        std::fs::create_dir_all(dir).map_err(|e| BuildError::Io {
            path: dir.display().to_string(),
            msg: e.to_string(),
        })?;
        write(&dir.join("kernels.loopir"), build.loop_ir().as_bytes())?;
        write(
            &dir.join("plan.json"),
            build.planned.plan.to_json().as_bytes(),
        )?;
        if let Some(ll) = &build.compiled.preopt_ll {
            write(&dir.join(format!("{name}.preopt.ll")), ll.as_bytes())?;
        }
        if let Some(ll) = &build.compiled.postopt_ll {
            write(&dir.join(format!("{name}.postopt.ll")), ll.as_bytes())?;
        }
    }
    Ok(build)
}

/// Compiles `m` and links the executable `out`.
pub fn build_executable(m: &Module, opts: &BuildOptions, out: &Path) -> Result<(), BuildError> {
    let want = Want {
        object: true,
        ..Want::default()
    };
    let build = compile_cpu(m, opts, want)?;
    link_build(&build, out)
}

/// Links a compiled module (its object must have been asked for) into `out`.
pub fn link_build(build: &CpuBuild, out: &Path) -> Result<(), BuildError> {
    let objects = std::iter::once(&build.compiled)
        .chain(&build.other_variants)
        .map(|c| {
            c.object
                .as_deref()
                .ok_or_else(|| BuildError::Codegen(CodegenError::Llvm("no object produced".into())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pieces: Vec<&[u8]> = build.planned.data.iter().map(|p| p.bytes()).collect();
    link::link_executable(
        &objects,
        build.planned.plan.to_json().as_bytes(),
        &pieces,
        out,
    )?;
    Ok(())
}

/// Options of a CUDA build.
#[derive(Clone, Debug)]
pub struct CudaOptions {
    /// `-O` level.
    pub opt_level: u8,
    /// The architectures to emit PTX for (`sm_80`, `sm_90`).
    pub archs: Vec<String>,
    /// Where to write `kernels.loopir`, `NAME.ARCH.ptx` and the `.ll` files.
    pub dump_dir: Option<PathBuf>,
}

/// A module compiled for CUDA: GPU-scheduled kernels and PTX per architecture.
pub struct CudaBuild<'m> {
    /// Kernels (in the GPU form), plan and data section.
    pub planned: Planned<'m>,
    /// One PTX module per architecture, in `archs` order.
    pub ptx: Vec<Ptx>,
}

impl CudaBuild<'_> {
    /// Every kernel's loop IR, in table order.
    pub fn loop_ir(&self) -> String {
        self.planned
            .kernels
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Lowers `m` with the GPU schedules and emits PTX for every architecture asked.
pub fn compile_cuda<'m>(m: &'m Module, opts: &CudaOptions) -> Result<CudaBuild<'m>, BuildError> {
    let planned = plan_module_for(m, true)?;
    let name = if m.name.is_empty() { "module" } else { &m.name };
    let mut ptx = Vec::new();
    for arch in &opts.archs {
        let p = llvm::compile_ptx(
            name,
            &planned.kernels,
            &PtxOptions {
                opt_level: opts.opt_level,
                arch: arch.clone(),
            },
            opts.dump_dir.is_some(),
        )?;
        ptx.push(p);
    }
    let build = CudaBuild { planned, ptx };
    if let Some(dir) = &opts.dump_dir {
        std::fs::create_dir_all(dir).map_err(|e| BuildError::Io {
            path: dir.display().to_string(),
            msg: e.to_string(),
        })?;
        write(&dir.join("kernels.loopir"), build.loop_ir().as_bytes())?;
        for p in &build.ptx {
            write(
                &dir.join(format!("{name}.{}.ptx", p.arch)),
                p.text.as_bytes(),
            )?;
            if let Some(ll) = &p.preopt_ll {
                write(
                    &dir.join(format!("{name}.{}.preopt.ll", p.arch)),
                    ll.as_bytes(),
                )?;
            }
            if let Some(ll) = &p.postopt_ll {
                write(
                    &dir.join(format!("{name}.{}.postopt.ll", p.arch)),
                    ll.as_bytes(),
                )?;
            }
        }
    }
    Ok(build)
}

/// A launch's grid expression as the runtime reads it.
fn dim_expr(e: &llmc_kernels::Expr) -> Result<llmc_runtime::plan::DimExpr, String> {
    use llmc_kernels::{BinOp, Expr};
    use llmc_runtime::plan::{DimExpr, DimOp};
    Ok(match e {
        Expr::Int(v, _) => DimExpr::Int(*v),
        Expr::Dim(i) => DimExpr::Dim(*i),
        Expr::Bin(op, a, b) => {
            let op = match op {
                BinOp::Add => DimOp::Add,
                BinOp::Sub => DimOp::Sub,
                BinOp::Mul => DimOp::Mul,
                BinOp::Div => DimOp::Div,
                BinOp::Rem => DimOp::Rem,
                BinOp::Max => DimOp::Max,
                BinOp::Min => DimOp::Min,
                other => return Err(format!("{other:?} in a launch bound")),
            };
            DimExpr::Bin(op, Box::new(dim_expr(a)?), Box::new(dim_expr(b)?))
        }
        other => return Err(format!("{other:?} in a launch bound")),
    })
}

/// What a CUDA executable carries for the GPU: every architecture's PTX and entry
/// names, each kernel's launch, and, where ptxas ran, its report per kernel and the
/// cubin (`assembled`, one per architecture in `build.ptx` order, or none).
pub fn gpu_plan(
    build: &CudaBuild,
    assembled: &[(Vec<ptxas::KernelReport>, Vec<u8>)],
) -> Result<llmc_runtime::plan::GpuPlan, BuildError> {
    let mut launches = Vec::with_capacity(build.planned.kernels.len());
    for k in &build.planned.kernels {
        let fail = |msg: String| BuildError::Node {
            node: k.name.clone(),
            op: "gpu launch".into(),
            msg,
        };
        let l = llmc_kernels::gpu::schedule(k).map_err(fail)?;
        let grid = [
            dim_expr(&l.grid[0]).map_err(fail)?,
            dim_expr(&l.grid[1]).map_err(fail)?,
            dim_expr(&l.grid[2]).map_err(fail)?,
        ];
        let small = |v: i64, what: &str| {
            u32::try_from(v).map_err(|_| fail(format!("{what} {v} is out of range")))
        };
        launches.push(llmc_runtime::plan::GpuLaunch {
            grid,
            block: [
                small(l.block[0], "block.x")?,
                small(l.block[1], "block.y")?,
                small(l.block[2], "block.z")?,
            ],
            shared_bytes: small(l.shared_bytes, "shared bytes")?,
        });
    }
    let mut modules: Vec<llmc_runtime::plan::GpuModule> = build
        .ptx
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let rep = assembled.get(i).map_or(&[][..], |(r, _)| &r[..]);
            let cubin = assembled
                .get(i)
                .filter(|(_, c)| !c.is_empty())
                .map(|(_, c)| llmc_runtime::plan::base64_encode(c));
            let ptxas = if rep.is_empty() {
                Vec::new()
            } else {
                p.entries
                    .iter()
                    .map(|e| {
                        rep.iter().find(|r| &r.name == e).map_or((0, 0, 0), |r| {
                            (
                                r.registers,
                                r.shared as u32,
                                (r.spill_stores + r.spill_loads) as u32,
                            )
                        })
                    })
                    .collect()
            };
            llmc_runtime::plan::GpuModule {
                arch: p.arch.clone(),
                ptx: p.text.clone(),
                entries: p.entries.clone(),
                ptxas,
                cubin_base64: cubin,
            }
        })
        .collect();
    modules.sort_by_key(|m| m.capability());
    Ok(llmc_runtime::plan::GpuPlan { modules, launches })
}

/// Links a CUDA build whose plan carries its [`gpu_plan`] into the executable `out`:
/// a host object with no CPU kernel (an empty kernel table), the runtime, the plan
/// and the weights.
pub fn link_cuda_executable(build: &CudaBuild, out: &Path) -> Result<(), BuildError> {
    if build.planned.plan.gpu.is_none() {
        return Err(BuildError::Codegen(CodegenError::Llvm(
            "a CUDA executable needs its GPU plan".into(),
        )));
    }
    let host = llvm::compile(
        "host",
        &[],
        &CpuOptions {
            cpu: "generic".into(),
            ..CpuOptions::default()
        },
        Want {
            object: true,
            ..Want::default()
        },
    )?;
    let object = host
        .object
        .as_deref()
        .ok_or_else(|| BuildError::Codegen(CodegenError::Llvm("no object produced".into())))?;
    let pieces: Vec<&[u8]> = build.planned.data.iter().map(|p| p.bytes()).collect();
    link::link_executable(
        &[object],
        build.planned.plan.to_json().as_bytes(),
        &pieces,
        out,
    )?;
    Ok(())
}
