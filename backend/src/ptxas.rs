//! NVIDIA's PTX assembler as a checker: when `ptxas` is installed (the
//! `nvidia-cuda-nvcc-cu12` PyPI wheel has it; `LLMC_PTXAS` names it explicitly), every
//! emitted PTX module is assembled for each CUDA architecture with
//! `-v --warn-on-spills`, and what it reports per kernel (registers, shared memory,
//! stack, spill bytes) is parsed, so a build without a GPU still proves its PTX
//! assembles and shows what it costs. llmc does not need ptxas to build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What ptxas reported for one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelReport {
    /// The entry name.
    pub name: String,
    /// The architecture it was assembled for.
    pub arch: String,
    /// Registers per thread.
    pub registers: u32,
    /// Shared memory bytes per block.
    pub shared: u64,
    /// Stack frame bytes per thread.
    pub stack: u64,
    /// Spill store bytes.
    pub spill_stores: u64,
    /// Spill load bytes.
    pub spill_loads: u64,
}

/// A ptxas failure: the command and what it said.
#[derive(Debug, thiserror::Error)]
#[error("ptxas ({arch}): {msg}")]
pub struct PtxasError {
    /// The architecture.
    pub arch: String,
    /// Its diagnostics.
    pub msg: String,
}

/// The ptxas to use: `$LLMC_PTXAS`, then `ptxas` on `PATH`, then the wheel's copy
/// in the active virtual environment or in this source tree's `.venv`.
pub fn find() -> Option<PathBuf> {
    find_tool("ptxas", "LLMC_PTXAS", &["nvidia/cuda_nvcc/bin/ptxas"])
}

/// The nvdisasm to use (the `nvidia-cuda-nvdisasm` wheel has it): `$LLMC_NVDISASM`,
/// then `nvdisasm` on `PATH`, then the wheel's copy as for [`find`].
pub fn find_nvdisasm() -> Option<PathBuf> {
    find_tool(
        "nvdisasm",
        "LLMC_NVDISASM",
        &[
            "nvidia/cu13/bin/nvdisasm",
            "nvidia/cuda_nvdisasm/bin/nvdisasm",
        ],
    )
}

fn find_tool(tool: &str, var: &str, in_wheel: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(tool);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let mut venvs: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        venvs.push(PathBuf::from(v));
    }
    venvs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    for v in venvs {
        let Ok(libs) = std::fs::read_dir(v.join("lib")) else {
            continue;
        };
        for py in libs.flatten() {
            for w in in_wheel {
                let p = py.path().join("site-packages").join(w);
                if p.is_file() {
                    return Some(p);
                }
            }
        }
    }
    None
}

/// The SASS of every kernel of `cubin`, by `nvdisasm`: (entry name, its instructions
/// as nvdisasm prints them), in the cubin's order.
pub fn disassemble(nvdisasm: &Path, cubin: &[u8]) -> Result<Vec<(String, String)>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let input = dir.path().join("module.cubin");
    std::fs::write(&input, cubin).map_err(|e| format!("{}: {e}", input.display()))?;
    let out = Command::new(nvdisasm)
        .arg(&input)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvdisasm.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            nvdisasm.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut kernels: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        // `.section NAME,...` starts a section (not `.sectionflags`, `.sectioninfo`).
        if let Some(rest) = t
            .strip_prefix(".section")
            .filter(|r| r.starts_with([' ', '\t']))
        {
            let sec = rest.trim_start().split(',').next().unwrap_or("");
            let name = sec.strip_prefix(".text.").unwrap_or("");
            kernels.push((name.to_string(), String::new()));
            continue;
        }
        if let Some((_, body)) = kernels.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    kernels.retain(|(n, _)| !n.is_empty());
    Ok(kernels)
}

/// Assembles `ptx` for `arch` with `ptxas -v --warn-on-spills`; returns the per-kernel
/// reports and the cubin.
pub fn assemble(
    ptxas: &Path,
    ptx: &str,
    arch: &str,
) -> Result<(Vec<KernelReport>, Vec<u8>), PtxasError> {
    let err = |msg: String| PtxasError {
        arch: arch.to_string(),
        msg,
    };
    let dir = tempfile::tempdir().map_err(|e| err(format!("temporary folder: {e}")))?;
    let input = dir.path().join("module.ptx");
    let output = dir.path().join("module.cubin");
    std::fs::write(&input, ptx).map_err(|e| err(format!("{}: {e}", input.display())))?;
    let out = Command::new(ptxas)
        .arg("-v")
        .arg("--warn-on-spills")
        .arg(format!("-arch={arch}"))
        .arg("-o")
        .arg(&output)
        .arg(&input)
        .output()
        .map_err(|e| err(format!("cannot run {}: {e}", ptxas.display())))?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(err(format!("failed ({}):\n{text}", out.status)));
    }
    let cubin = std::fs::read(&output).map_err(|e| err(format!("{}: {e}", output.display())))?;
    Ok((parse(&text, arch), cubin))
}

/// The number before `unit` in `line` (`"12 registers"` → 12).
fn number_before(line: &str, unit: &str) -> Option<u64> {
    let at = line.find(unit)?;
    line[..at]
        .split(|c: char| !c.is_ascii_digit())
        .rfind(|s| !s.is_empty())?
        .parse()
        .ok()
}

/// Parses `ptxas -v` output into a report per entry function.
pub fn parse(text: &str, arch: &str) -> Vec<KernelReport> {
    let mut out: Vec<KernelReport> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(KernelReport {
                name,
                arch: arch.to_string(),
                ..KernelReport::default()
            });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            cur.stack = number_before(line, "bytes stack frame").unwrap_or(0);
            cur.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            cur.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used ") && line.contains("registers") {
            cur.registers = number_before(line, "registers").unwrap_or(0) as u32;
            cur.shared = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_verbose_output() {
        let text = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'llmc_k0_rms_norm_0' for 'sm_90'\n\
ptxas info    : Function properties for llmc_k0_rms_norm_0\n\
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
ptxas info    : Used 24 registers, used 1 barriers, 32 bytes smem, 392 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'llmc_k1_add_1' for 'sm_90'\n\
ptxas info    : Function properties for llmc_k1_add_1\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 10 registers, 380 bytes cmem[0]\n";
        let r = parse(text, "sm_90");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].name, "llmc_k0_rms_norm_0");
        assert_eq!(
            (
                r[0].registers,
                r[0].shared,
                r[0].stack,
                r[0].spill_stores,
                r[0].spill_loads
            ),
            (24, 32, 16, 8, 4)
        );
        assert_eq!((r[1].registers, r[1].shared, r[1].spill_stores), (10, 0, 0));
    }
}
