//! SmolLM2-135M (Q4_1 GGUF) built for CUDA without a GPU: the -O3 graph's kernels get
//! GPU schedules (the hot ones — linear, rms_norm, rope, flash_attention — from GPU
//! templates, none left on one thread), become one PTX module per architecture with
//! an entry per kernel and no library calls, and — when `ptxas` is installed (the
//! `nvidia-cuda-nvcc-cu12` wheel; `LLMC_PTXAS`) — every kernel assembles for sm_80
//! and sm_90 with no spills; the registers ptxas reports are printed; and — when
//! `nvdisasm` is installed too (the `nvidia-cuda-nvdisasm` wheel; `LLMC_NVDISASM`) —
//! the cubins' SASS has tensor-core products (tf32 `HMMA`) and 128-bit loads in every
//! linear and no local-memory access in any kernel.
//! Needs the model under `$LLMC_MODELS` (default `.cache/models`); skips without it.

use llmc_kernels::templates::gpu::GpuSchedule;
use std::path::PathBuf;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn model(name: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("LLMC_MODELS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models"),
    };
    let p = dir.join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipped: model not found at {}, run scripts/fetch-models (or set LLMC_MODELS)",
            p.display()
        );
        None
    }
}

#[test]
fn smollm2_cuda_kernels_assemble_for_sm80_and_sm90() -> anyhow::Result<()> {
    let Some(path) = model(SMOLLM2) else {
        return Ok(());
    };
    let mut m = llmc_frontend::load(&path)?;
    llmc_passes::optimize(&mut m, 3)?;
    let archs = vec!["sm_80".to_string(), "sm_90".to_string()];
    let b = llmc_backend::compile_cuda(
        &m,
        &llmc_backend::CudaOptions {
            opt_level: 3,
            archs: archs.clone(),
            dump_dir: None,
        },
    )?;
    let kernels = &b.planned.kernels;
    assert!(kernels.len() > 5, "{} kernels", kernels.len());
    for (k, s) in kernels.iter().zip(&b.planned.gpu_schedules) {
        eprintln!("{:<40} {s:?}", k.name);
        assert_ne!(
            *s,
            GpuSchedule::OneThread,
            "{} runs on one thread\n{k}",
            k.name
        );
        let hot = ["linear", "rms_norm", "rope", "flash_attention"];
        if hot.iter().any(|h| k.name.starts_with(h)) {
            assert_eq!(*s, GpuSchedule::Template, "{} has no GPU template", k.name);
        }
    }
    for p in &b.ptx {
        for e in &p.entries {
            assert!(
                p.text.contains(&format!(".entry {e}(")),
                "{}: no entry {e}",
                p.arch
            );
        }
        assert!(
            !p.text.contains(".extern .func"),
            "{}: the PTX calls an external function",
            p.arch
        );
    }
    let Some(tool) = llmc_backend::ptxas::find() else {
        eprintln!("ptxas not found: the PTX was not assembled (pip install nvidia-cuda-nvcc-cu12)");
        return Ok(());
    };
    let nvdisasm = llmc_backend::ptxas::find_nvdisasm();
    if nvdisasm.is_none() {
        eprintln!(
            "nvdisasm not found: the SASS was not checked (pip install nvidia-cuda-nvdisasm)"
        );
    }
    for p in &b.ptx {
        let (reports, cubin) = llmc_backend::ptxas::assemble(&tool, &p.text, &p.arch)?;
        assert!(!cubin.is_empty());
        if let Some(nd) = &nvdisasm {
            // What the GPU runs: every linear multiplies 64+-row steps on tensor cores
            // (tf32 HMMA), and no kernel touches local memory (spills, stack arrays).
            let sass = llmc_backend::ptxas::disassemble(nd, &cubin).map_err(anyhow::Error::msg)?;
            assert_eq!(
                sass.len(),
                kernels.len(),
                "{}: kernels disassembled",
                p.arch
            );
            for (name, text) in &sass {
                let count = |op: &str| {
                    text.lines()
                        .filter(|l| l.split_whitespace().any(|w| w.starts_with(op)))
                        .count()
                };
                let hmma = text
                    .lines()
                    .filter(|l| l.contains("HMMA") && l.contains("TF32"))
                    .count();
                eprintln!(
                    "{} {name:<44} SASS: {hmma} tf32 HMMA, {} LDG ({} of 128 bits), {} LDS, {} local",
                    p.arch,
                    count("LDG"),
                    count("LDG.E.128"),
                    count("LDS"),
                    count("LDL") + count("STL")
                );
                if name.contains("_linear_") {
                    assert!(
                        hmma >= 16,
                        "{}: {name} has {hmma} tf32 HMMA\n{text}",
                        p.arch
                    );
                    // The activations move 16 bytes a load.
                    assert!(
                        count("LDG.E.128") > 0,
                        "{}: {name} has no 128-bit loads\n{text}",
                        p.arch
                    );
                }
                assert_eq!(
                    count("LDL") + count("STL"),
                    0,
                    "{}: {name} uses local memory",
                    p.arch
                );
            }
        }
        assert_eq!(
            reports.len(),
            kernels.len(),
            "{}: kernels assembled",
            p.arch
        );
        for r in &reports {
            eprintln!(
                "{} {:<44} {:>3} registers {:>5} B shared {:>4} B stack, spills {}/{} B",
                r.arch, r.name, r.registers, r.shared, r.stack, r.spill_stores, r.spill_loads
            );
            assert_eq!(
                r.spill_stores + r.spill_loads,
                0,
                "{}: {} spills registers",
                r.arch,
                r.name
            );
        }
    }
    Ok(())
}
