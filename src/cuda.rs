//! `llmc build --target cuda`: the GPU-scheduled kernels as PTX per CUDA architecture
//! (`--cuda-arch sm_80,sm_90`, default sm_80), checked by `ptxas -v --warn-on-spills`
//! when it is installed (each kernel's registers, shared memory and spills reported),
//! written by `--emit ptx`, and linked with the runtime, the plan (which carries the
//! PTX and every kernel's launch) and the weights into one executable that runs on
//! NVIDIA GPUs (`--emit exe`, the default).

use super::{sibling, BuildArgs, BuildEmit};
use anyhow::{bail, Context, Result};
use llmc_backend::ptxas;
use llmc_ir::Module;
use llmc_kernels::templates::gpu::GpuSchedule;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

/// The architectures of `--cuda-arch` (comma-separated), sm_80 by default.
fn archs(a: &BuildArgs) -> Result<Vec<String>> {
    let list: Vec<String> = match &a.cuda_arch {
        Some(s) => s
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
        None => vec!["sm_80".to_string()],
    };
    for x in &list {
        if !llmc_backend::llvm::CUDA_ARCHS.contains(&x.as_str()) {
            bail!(
                "--cuda-arch {x}: unknown CUDA architecture (known: {})",
                llmc_backend::llvm::CUDA_ARCHS.join(", ")
            );
        }
    }
    if list.is_empty() {
        bail!("--cuda-arch: no architecture given");
    }
    Ok(list)
}

/// Builds `m` (already optimized) for CUDA; `out` names the outputs.
pub(crate) fn build(
    a: &BuildArgs,
    m: &Module,
    out: &Path,
    t0: Instant,
    llm: Option<llmc_runtime::plan::LlmInfo>,
) -> Result<()> {
    let archs = archs(a)?;
    for e in &a.emit {
        match e {
            BuildEmit::Obj | BuildEmit::Asm => bail!(
                "llmc build --target cuda: --emit {} is a CPU output; use --emit ptx or llvm-ir",
                if *e == BuildEmit::Obj { "obj" } else { "asm" }
            ),
            _ => {}
        }
    }
    let has = |e: BuildEmit| a.emit.contains(&e);
    if a.act_quant.is_some() {
        eprintln!(
            "note: --act-quant applies to the CPU kernels; the CUDA linears keep f32 activations (dequantized weights in registers)"
        );
    }
    if has(BuildEmit::Exe) && llm.as_ref().and_then(|l| l.serving.as_ref()).is_none() {
        bail!(
            "llmc build --target cuda: {} is not a decoder LLM in the serving form; the CUDA executable runs language models only (use --emit ptx for the kernels)",
            a.model.display()
        );
    }
    if !(has(BuildEmit::Ptx) || has(BuildEmit::LlvmIr) || has(BuildEmit::Exe))
        && a.dump_dir.is_none()
    {
        return Ok(());
    }
    let opts = llmc_backend::CudaOptions {
        opt_level: a.opt_level,
        archs: archs.clone(),
        dump_dir: a.dump_dir.clone(),
    };
    let mut opts_ll = opts.clone();
    if has(BuildEmit::LlvmIr) && opts_ll.dump_dir.is_none() {
        // The .ll text comes with a dump folder; a private one serves here.
        opts_ll.dump_dir =
            Some(std::env::temp_dir().join(format!("llmc-ll-{}", std::process::id())));
    }
    let mut b = llmc_backend::compile_cuda(m, &opts_ll)
        .with_context(|| format!("compiling {} for CUDA", a.model.display()))?;
    if opts_ll.dump_dir != opts.dump_dir {
        if let Some(d) = &opts_ll.dump_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    let kernels = &b.planned.kernels;
    let count = |s: GpuSchedule| b.planned.gpu_schedules.iter().filter(|&&x| x == s).count();
    let one: Vec<&str> = kernels
        .iter()
        .zip(&b.planned.gpu_schedules)
        .filter(|(_, &s)| s == GpuSchedule::OneThread)
        .map(|(k, _)| k.name.as_str())
        .collect();
    eprintln!(
        "llmc build: {} GPU kernels: {} from GPU templates, {} spread over threads, {} in one block, {} on one thread{}",
        kernels.len(),
        count(GpuSchedule::Template),
        count(GpuSchedule::Threads),
        count(GpuSchedule::BlockStride),
        one.len(),
        if one.is_empty() {
            String::new()
        } else {
            format!(" ({})", one.join(", "))
        }
    );
    for p in &b.ptx {
        let path = if archs.len() == 1 {
            sibling(out, "ptx")
        } else {
            sibling(out, &format!("{}.ptx", p.arch))
        };
        if has(BuildEmit::Ptx) {
            std::fs::write(&path, &p.text)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        if has(BuildEmit::LlvmIr) {
            let ll = if archs.len() == 1 {
                sibling(out, "ll")
            } else {
                sibling(out, &format!("{}.ll", p.arch))
            };
            if let Some(text) = &p.postopt_ll {
                std::fs::write(&ll, text).with_context(|| format!("writing {}", ll.display()))?;
                eprintln!("wrote {}", ll.display());
            }
        }
    }
    let mut assembled: Vec<(Vec<ptxas::KernelReport>, Vec<u8>)> = Vec::new();
    match ptxas::find() {
        None => eprintln!(
            "llmc build: ptxas not found (set LLMC_PTXAS or pip install nvidia-cuda-nvcc-cu12): the PTX was not assembled"
        ),
        Some(tool) => {
            let mut table = String::new();
            for p in &b.ptx {
                let (reports, cubin) = ptxas::assemble(&tool, &p.text, &p.arch)?;
                if let Some(dir) = &a.dump_dir {
                    // Beside the .ptx, for `nvdisasm` (what the GPU will run).
                    let stem = if m.name.is_empty() { "module" } else { &m.name };
                    let path = dir.join(format!("{stem}.{}.cubin", p.arch));
                    std::fs::write(&path, &cubin)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                assembled.push((reports.clone(), cubin));
                let max = reports.iter().max_by_key(|r| r.registers);
                let spilled: Vec<&ptxas::KernelReport> = reports
                    .iter()
                    .filter(|r| r.spill_stores + r.spill_loads > 0)
                    .collect();
                eprintln!(
                    "ptxas {}: {} kernels assembled; registers max {}{}; shared memory max {} B; {}",
                    p.arch,
                    reports.len(),
                    max.map_or(0, |r| r.registers),
                    max.map_or(String::new(), |r| format!(" ({})", r.name)),
                    reports.iter().map(|r| r.shared).max().unwrap_or(0),
                    if spilled.is_empty() {
                        "no spills".to_string()
                    } else {
                        format!(
                            "spills in {}",
                            spilled
                                .iter()
                                .map(|r| format!("{} ({} B)", r.name, r.spill_stores + r.spill_loads))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                );
                for r in &reports {
                    let _ = writeln!(
                        table,
                        "{} {} registers={} shared={} stack={} spill_stores={} spill_loads={}",
                        r.arch, r.name, r.registers, r.shared, r.stack, r.spill_stores, r.spill_loads
                    );
                }
            }
            if has(BuildEmit::Ptx) {
                let path = sibling(out, "ptxas.txt");
                std::fs::write(&path, &table)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    if has(BuildEmit::Exe) {
        let gpu = llmc_backend::gpu_plan(&b, &assembled)
            .with_context(|| format!("planning the GPU launches of {}", a.model.display()))?;
        let plan = &mut b.planned.plan;
        plan.gpu = Some(gpu);
        plan.llm = llm;
        plan.info = vec![
            ("target".into(), format!("cuda ({})", archs.join(", "))),
            ("opt_level".into(), a.opt_level.to_string()),
            (
                "compiler".into(),
                format!("llmc {}", env!("CARGO_PKG_VERSION")),
            ),
        ];
        for line in llmc_runtime::cuda::decode_estimate(&b.planned.plan) {
            eprintln!("llmc build: decode estimate, one sequence, {line}");
        }
        llmc_backend::link_cuda_executable(&b, out)
            .with_context(|| format!("linking {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    eprintln!(
        "llmc build: CUDA build of {} in {:.2} s",
        a.model.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The GPU linears read the tensor-core threshold from a symbol the CUDA runtime
    /// binds: both sides must spell it the same way.
    #[test]
    fn the_runtime_binds_the_symbol_the_kernels_read() {
        assert_eq!(
            llmc_kernels::templates::gpu::MMA_ROWS_SYMBOL,
            llmc_runtime::cuda::MMA_ROWS_SYMBOL
        );
    }
}
