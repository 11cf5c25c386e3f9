//! Running a module through the compiled path: build the executable in a temporary
//! folder, write each run's inputs as `.npy`, invoke `./exe run ... --then ...` (one
//! process, so the KV cache carries from run to run), read the outputs back. This is
//! what `llmc exec --engine cpu` and the codegen file tests use.

use crate::plan::elem_type;
use crate::{build_executable, BuildError, BuildOptions};
use llmc_ir::{Module, Tensor};
use llmc_runtime::exec::HostTensor;
use llmc_runtime::npy;
use std::path::Path;
use std::process::Command;

/// A tensor as the runtime carries it.
pub fn host_tensor(t: &Tensor) -> HostTensor {
    HostTensor {
        dtype: elem_type(t.dtype),
        shape: t.shape.clone(),
        data: llmc_kernels::interp::tensor_bytes(t),
    }
}

/// A runtime tensor as an IR tensor.
pub fn ir_tensor(h: &HostTensor) -> Result<Tensor, String> {
    use llmc_runtime::plan::ElemType as E;
    let d = match h.dtype {
        E::F32 => llmc_ir::DType::F32,
        E::F16 => llmc_ir::DType::F16,
        E::Bf16 => llmc_ir::DType::BF16,
        E::F64 => llmc_ir::DType::F64,
        E::I64 => llmc_ir::DType::I64,
        E::I32 => llmc_ir::DType::I32,
        E::I16 => llmc_ir::DType::I16,
        E::I8 => llmc_ir::DType::I8,
        E::U8 => llmc_ir::DType::U8,
        E::U16 => llmc_ir::DType::U16,
        E::U32 => llmc_ir::DType::U32,
        E::Bool => llmc_ir::DType::Bool,
        E::Block { .. } => return Err("a block-quantized tensor cannot be read back".into()),
    };
    llmc_kernels::interp::bytes_tensor(d, &h.shape, &h.data)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BuildError + '_ {
    move |e| BuildError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// Builds `m` and runs it once per entry of `runs` (each the graph inputs in order),
/// returning each run's outputs in graph-output order.
pub fn run_compiled(
    m: &Module,
    opts: &BuildOptions,
    runs: &[Vec<Tensor>],
) -> Result<Vec<Vec<Tensor>>, BuildError> {
    let work = tempfile::tempdir().map_err(io(Path::new("(temp dir)")))?;
    let exe = work.path().join("model");
    build_executable(m, opts, &exe)?;
    run_executable(m, &exe, work.path(), runs)
}

/// Runs an executable built from `m` (see [`run_compiled`]), using `work` for files.
pub fn run_executable(
    m: &Module,
    exe: &Path,
    work: &Path,
    runs: &[Vec<Tensor>],
) -> Result<Vec<Vec<Tensor>>, BuildError> {
    let host: Vec<Vec<HostTensor>> = runs
        .iter()
        .map(|r| r.iter().map(host_tensor).collect())
        .collect();
    run_executable_host(m, exe, work, &host)?
        .into_iter()
        .enumerate()
        .map(|(r, outs)| {
            outs.iter()
                .map(|h| {
                    ir_tensor(h).map_err(|e| BuildError::Io {
                        path: work.join(format!("run{r}/out")).display().to_string(),
                        msg: e,
                    })
                })
                .collect()
        })
        .collect()
}

/// [`run_executable`] with the runtime's tensors (bytes as the executable reads and
/// writes them) both ways: no conversion of large outputs to IR tensors.
pub fn run_executable_host(
    m: &Module,
    exe: &Path,
    work: &Path,
    runs: &[Vec<HostTensor>],
) -> Result<Vec<Vec<HostTensor>>, BuildError> {
    let names = crate::plan::plain_names(m);
    let g = &m.graph;
    let vname = |v: llmc_ir::ValueId| names.get(v.0 as usize).cloned().unwrap_or_default();
    let mut cmd = Command::new(exe);
    cmd.arg("run");
    for (r, inputs) in runs.iter().enumerate() {
        if r > 0 {
            cmd.arg("--then");
        }
        let dir = work.join(format!("run{r}"));
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        for (k, (&v, t)) in g.inputs.iter().zip(inputs).enumerate() {
            let p = dir.join(format!("in.{k}.npy"));
            let bytes = npy::write(t).map_err(|e| BuildError::Input {
                name: vname(v),
                msg: e,
            })?;
            std::fs::write(&p, bytes).map_err(io(&p))?;
            cmd.arg("--input")
                .arg(format!("{}={}", vname(v), p.display()));
        }
        cmd.arg("--output-dir").arg(dir.join("out"));
    }
    let res = cmd.output().map_err(io(exe))?;
    if !res.status.success() {
        return Err(BuildError::Io {
            path: exe.display().to_string(),
            msg: format!(
                "the executable failed ({}): {}",
                res.status,
                String::from_utf8_lossy(&res.stderr).trim()
            ),
        });
    }
    let mut all = Vec::new();
    for r in 0..runs.len() {
        let mut outs = Vec::new();
        for &v in &g.outputs {
            let file = llmc_runtime::exe::output_file_name(&vname(v));
            let p = work.join(format!("run{r}/out/{file}"));
            let bytes = std::fs::read(&p).map_err(io(&p))?;
            outs.push(npy::read(&bytes).map_err(|e| BuildError::Io {
                path: p.display().to_string(),
                msg: e,
            })?);
        }
        all.push(outs);
    }
    Ok(all)
}
