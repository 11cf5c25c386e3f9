//! Every `tests/filetests/run/*.llmc` through the compiled CPU path (loop IR, LLVM,
//! link, the runtime), at -O0 and -O3, checked with the file's own `; expect:`
//! tolerances. One test per file and level: `cargo test -p llmc-tests --test codegen`
//! (filter with a substring: `-- O3/softmax`). Ops listed in `tests/codegen-pending.txt`
//! have no CPU kernel yet and run as ignored (`-- --ignored` runs them anyway).

use libtest_mimic::{Arguments, Failed, Trial};
use llmc_backend::run::run_compiled;
use llmc_backend::BuildOptions;
use llmc_tests::runfile;
use std::path::{Path, PathBuf};

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("filetests/run");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|x| x == "llmc"));
    files.sort();
    let pending = pending_ops();
    let mut trials = Vec::new();
    for level in [0u8, 3] {
        for f in &files {
            let stem = f
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let path = f.clone();
            let ignored = pending.contains(&stem);
            trials.push(
                Trial::test(format!("O{level}/{stem}"), move || run_file(&path, level))
                    .with_ignored_flag(ignored),
            );
        }
    }
    libtest_mimic::run(&args, trials).exit_code()
}

/// Op names listed in `tests/codegen-pending.txt` (no CPU kernel template yet).
fn pending_ops() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("codegen-pending.txt");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn run_file(path: &Path, level: u8) -> Result<(), Failed> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Failed::from(format!("{name}: {e}")))?;
    let (m, runs) = runfile::read(&text, &name).map_err(Failed::from)?;
    let mut opts = BuildOptions::default();
    opts.cpu.opt_level = level;
    let inputs: Vec<_> = runs.iter().map(|r| r.inputs.clone()).collect();
    let got = run_compiled(&m, &opts, &inputs).map_err(|e| Failed::from(e.to_string()))?;
    let mut problems = Vec::new();
    for (run, outs) in runs.iter().zip(&got) {
        for e in &run.expects {
            let Some(g) = outs.get(e.output) else {
                problems.push(format!("{name}:{}: no output {}", e.line, e.name));
                continue;
            };
            if let Err(msg) = runfile::compare(g, &e.want, e.atol, e.rtol) {
                problems.push(format!("{name}:{}: {}: {msg}", e.line, e.name));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failed::from(problems.join("\n")))
    }
}
