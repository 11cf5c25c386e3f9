//! The link step: the generated object + the runtime static library (embedded in
//! this crate at build time) -> an executable, through the system C compiler driver
//! (`cc`, or `$CC`), then the plan and data section appended as the payload the
//! runtime finds at start.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A link error.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No C compiler driver.
    #[error(
        "`{0}` was not found: linking needs a C toolchain (install gcc or clang, or set CC to one)"
    )]
    NoCompiler(String),
    /// The linker failed.
    #[error("linking {out} failed:\n{msg}")]
    Failed {
        /// The output path.
        out: String,
        /// What the linker said.
        msg: String,
    },
    /// A file could not be written.
    #[error("{path}: {msg}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        msg: String,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LinkError + '_ {
    move |e| LinkError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// The runtime library written once per build of llmc to the temp folder (once per
/// process: concurrent links in one process share the first writer's result).
fn runtime_lib() -> Result<PathBuf, LinkError> {
    static LIB: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    LIB.get_or_init(|| write_runtime_lib().map_err(|e| e.to_string()))
        .clone()
        .map_err(|msg| LinkError::Io {
            path: "(runtime library)".into(),
            msg,
        })
}

fn write_runtime_lib() -> Result<PathBuf, LinkError> {
    let dir = std::env::temp_dir().join("llmc");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join(format!("libllmc_rt-{}.a", env!("LLMC_RT_HASH")));
    let ok = std::fs::metadata(&path).is_ok_and(|m| m.len() == crate::RUNTIME_LIB.len() as u64);
    if !ok {
        // Write under a unique name, then rename: concurrent links never see a
        // partial file.
        let tmp = dir.join(format!(
            "libllmc_rt-{}.{}.tmp",
            env!("LLMC_RT_HASH"),
            std::process::id()
        ));
        std::fs::write(&tmp, crate::RUNTIME_LIB).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        prune_stale(&dir, &path);
    }
    Ok(path)
}

/// Removes runtime archives other llmc builds left in `dir` more than an hour ago (a
/// link takes seconds, so none is still in use); errors are ignored.
fn prune_stale(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("libllmc_rt-") && name.ends_with(".a");
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 3600);
        if ours && old && p != keep {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// The system libraries a Rust static library needs on this platform.
fn system_libs() -> &'static [&'static str] {
    if cfg!(target_os = "macos") {
        &["-lSystem", "-lc", "-lm"]
    } else {
        &[
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ]
    }
}

/// Links `objects` (one per CPU variant) with the runtime into `out`, then appends
/// the payload.
pub fn link_executable(
    objects: &[&[u8]],
    plan: &[u8],
    data: &[&[u8]],
    out: &Path,
) -> Result<(), LinkError> {
    let work = tempfile::tempdir().map_err(io(Path::new("(temp dir)")))?;
    let lib = runtime_lib()?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let mut cmd = Command::new(&cc);
    cmd.arg("-o").arg(out);
    for (i, object) in objects.iter().enumerate() {
        let obj = work.path().join(format!("kernels{i}.o"));
        std::fs::write(&obj, object).map_err(io(&obj))?;
        cmd.arg(&obj);
    }
    cmd.arg(&lib);
    if !cfg!(target_os = "macos") {
        cmd.arg("-Wl,--gc-sections");
    }
    cmd.args(system_libs());
    let res = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            LinkError::NoCompiler(cc.clone())
        } else {
            LinkError::Failed {
                out: out.display().to_string(),
                msg: e.to_string(),
            }
        }
    })?;
    if !res.status.success() {
        return Err(LinkError::Failed {
            out: out.display().to_string(),
            msg: String::from_utf8_lossy(&res.stderr).into_owned(),
        });
    }
    llmc_runtime::payload::append(out, plan, data).map_err(io(out))
}
