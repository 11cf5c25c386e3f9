//! Helpers shared by the CLI and executable end-to-end tests: running `llmc`, reading
//! its output, asserting one-line user errors, finding models and fixtures.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn llmc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmc"))
        .args(args)
        .output()
        .expect("the llmc binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A user error: exit code 1, one `error:` message mentioning every `needle`, no panic.
pub fn assert_user_error(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {e}");
    assert!(e.starts_with("error: "), "stderr: {e}");
    assert!(!e.contains("panicked"), "stderr: {e}");
    for n in needles {
        assert!(e.contains(n), "stderr lacks `{n}`: {e}");
    }
}

pub fn model(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LLMC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/models"));
    let p = dir.join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipped: model not found at {}, run scripts/fetch-models",
            p.display()
        );
        None
    }
}

pub fn fixture(rel: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// `tests/fixtures/onnx/mlp.onnx`: y = relu(x W + b), W[i][j] = (i - j) / 4,
/// b[j] = 1/2 - j/4.
pub fn mlp_reference(x: &[f32], rows: usize) -> Vec<f32> {
    let mut y = Vec::new();
    for r in 0..rows {
        for j in 0..3 {
            let mut acc = 0.5 - j as f64 / 4.0;
            for i in 0..4 {
                acc += x[r * 4 + i] as f64 * (i as f64 - j as f64) / 4.0;
            }
            y.push(acc.max(0.0) as f32);
        }
    }
    y
}
