//! End-to-end tests of the `llmc` binary: its command-line contract (scripts and CI rely
//! on it), its outputs, and that user mistakes give one clear `error:` line and exit
//! code 1, never a panic.

use std::process::{Command, Output};

fn llmc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmc"))
        .args(args)
        .output()
        .expect("the llmc binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A user error: exit code 1, one `error:` message mentioning every `needle`, no panic.
fn assert_user_error(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {e}");
    assert!(e.starts_with("error: "), "stderr: {e}");
    assert!(!e.contains("panicked"), "stderr: {e}");
    for n in needles {
        assert!(e.contains(n), "stderr lacks `{n}`: {e}");
    }
}

#[test]
fn help_lists_the_commands() {
    let o = llmc(&["--help"]);
    assert!(o.status.success());
    let h = stdout(&o);
    for cmd in ["build", "inspect", "exec", "run"] {
        assert!(
            h.lines().any(|l| l.trim_start().starts_with(cmd)),
            "--help lacks `{cmd}`:\n{h}"
        );
    }
}

#[test]
fn build_parses_the_contract_flags_then_says_not_yet() {
    let o = llmc(&[
        "build",
        "model.onnx",
        "--target",
        "cuda",
        "--cuda-arch",
        "sm_80",
        "-O3",
        "-o",
        "smollm",
        "--emit",
        "llmc-ir,llvm-ir,ptx,exe",
        "--dump-dir",
        "dumps",
        "--print-ir-after-all",
        "--print-ir-after=fuse-elementwise",
        "--passes=a,b",
        "--time-passes",
    ]);
    assert_user_error(&o, &["llmc build: code generation is not available yet"]);
    // A flag outside the contract is a usage error (clap's exit code 2), not a panic.
    let o = llmc(&["build", "m.onnx", "-O7"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!stderr(&o).contains("panicked"));
    let o = llmc(&["build", "m.onnx", "--emit", "wat"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn missing_model_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model.gguf");
    let m = missing.to_str().unwrap();
    assert_user_error(&llmc(&["inspect", m]), &["no-such-model.gguf"]);
    assert_user_error(
        &llmc(&["exec", m, "--input", "x=x.npy"]),
        &["no-such-model.gguf"],
    );
    assert_user_error(
        &llmc(&["run", m, "--prompt", "hi"]),
        &["no-such-model.gguf"],
    );
}

#[test]
fn onnx_and_cpu_engine_say_not_yet() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("m.onnx");
    std::fs::write(&onnx, b"\x08\x07").unwrap();
    let p = onnx.to_str().unwrap();
    assert_user_error(
        &llmc(&["inspect", p, "--emit", "summary"]),
        &["m.onnx", "ONNX import is not available yet"],
    );
    assert_user_error(
        &llmc(&["exec", p, "--engine", "cpu"]),
        &["the CPU backend is not available yet"],
    );
    assert_user_error(
        &llmc(&["run", p, "--prompt", "x", "--engine", "cpu"]),
        &["the CPU backend is not available yet"],
    );
}

#[test]
fn unknown_model_kind_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("weights.bin");
    std::fs::write(&f, b"hello").unwrap();
    assert_user_error(
        &llmc(&["inspect", f.to_str().unwrap()]),
        &["weights.bin", "not a model llmc recognises"],
    );
}
