//! Every `tests/filetests/run/*.llmc` through the compiled CPU path (loop IR, LLVM,
//! link, the runtime), at -O0 and -O3, checked with the file's own `; expect:`
//! tolerances. One test per file and level: `cargo test -p llmc-tests --test codegen`
//! (filter with a substring: `-- O3/softmax`).
//!
//! A file using an op that has no kernel template yet (the op table can grow ahead of
//! the kernels) is listed as ignored, and the ops are named once on stderr; it starts
//! running as soon as its templates land.

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
    let mut trials = Vec::new();
    let missing: Vec<Vec<String>> = files.iter().map(|f| ops_without_templates(f)).collect();
    let mut all: Vec<&String> = missing.iter().flatten().collect();
    all.sort();
    all.dedup();
    if !all.is_empty() {
        let names: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        eprintln!(
            "codegen: no kernel template yet for {}; files using them are ignored",
            names.join(", ")
        );
    }
    for level in [0u8, 3] {
        for (f, miss) in files.iter().zip(&missing) {
            let stem = f
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let path = f.clone();
            let trial = Trial::test(format!("O{level}/{stem}"), move || run_file(&path, level));
            trials.push(trial.with_ignored_flag(!miss.is_empty()));
        }
    }
    libtest_mimic::run(&args, trials).exit_code()
}

/// The ops of a file's module whose nodes no kernel template lowers yet ("not
/// implemented" answers only: any other lowering error still fails the test).
fn ops_without_templates(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return vec![];
    };
    let Ok((m, _)) = runfile::read(&text, &path.display().to_string()) else {
        return vec![];
    };
    let g = &m.graph;
    let mut out = Vec::new();
    for node in &g.nodes {
        let ins: Vec<_> = node.inputs.iter().map(|&v| g.ty(v)).collect();
        let outs: Vec<_> = node.outputs.iter().map(|&v| g.ty(v)).collect();
        if let Err(e) = llmc_kernels::lower(node, &ins, &outs, "probe") {
            let unimplemented = e.msg.contains("no kernel template")
                || e.msg.contains("has no elementwise meaning");
            if unimplemented && !out.contains(&e.op) {
                out.push(e.op);
            }
        }
    }
    out
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
