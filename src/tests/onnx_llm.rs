//! An ONNX decoder export is an LLM: Optimum's export of SmolLM2-135M-Instruct
//! (`optimum-cli export onnx --task text-generation-with-past`, made by
//! `scripts/onnx-exports --optimum` into `$LLMC_ONNX_EXPORTS/smollm2-optimum/`, which
//! needs torch and so is outside CI) builds with `llmc build model.onnx -O3` into an
//! executable whose greedy `generate` prints the same text as the build of the HF
//! folder it was exported from. Skips, saying so, when either model is absent.

mod common;

use common::{llmc, model, stderr, stdout};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `$LLMC_ONNX_EXPORTS/CASE/model.onnx`, or `None` (having said why).
fn export(case: &str, how: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LLMC_ONNX_EXPORTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/onnx-exports"));
    let p = dir.join(case).join("model.onnx");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "skipped: {} not found, run {how} (needs torch; outside CI)",
            p.display()
        );
        None
    }
}

/// Builds `model` at -O3 (with `extra` flags) into `exe` and returns its greedy text
/// for `prompt`.
fn build_and_generate(
    model: &Path,
    extra: &[&str],
    exe: &Path,
    prompt: &str,
    tokens: &str,
) -> String {
    let mut args = vec![
        "build",
        model.to_str().unwrap(),
        "-O3",
        "-o",
        exe.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = llmc(&args);
    assert!(
        o.status.success(),
        "build {}: {}",
        model.display(),
        stderr(&o)
    );
    let o = Command::new(exe)
        .args([
            "generate",
            "--prompt",
            prompt,
            "--max-tokens",
            tokens,
            "--temperature",
            "0",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

#[test]
fn optimum_export_generates_the_hf_builds_greedy_text() {
    let Some(onnx) = export("smollm2-optimum", "scripts/onnx-exports --optimum") else {
        return;
    };
    let Some(hf) = model("SmolLM2-135M-Instruct-hf") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prompt = "The capital of France is";
    let from_onnx = build_and_generate(&onnx, &[], &dir.path().join("smollm-onnx"), prompt, "16");
    let from_hf = build_and_generate(&hf, &[], &dir.path().join("smollm-hf"), prompt, "16");
    assert!(!from_hf.trim().is_empty(), "the HF build generated nothing");
    assert_eq!(from_onnx, from_hf);
    // The chat template and end-of-turn id come from the files Optimum wrote beside
    // the model: a chat answer stops at <|im_end|>, with the HF build's text.
    let chat = |exe: &str| {
        let o = Command::new(dir.path().join(exe))
            .args([
                "generate",
                "--chat",
                "--prompt",
                "What is the capital of France?",
                "--max-tokens",
                "40",
                "--temperature",
                "0",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        (stdout(&o), stderr(&o))
    };
    let (onnx_chat, onnx_log) = chat("smollm-onnx");
    let (hf_chat, _) = chat("smollm-hf");
    assert_eq!(onnx_chat, hf_chat);
    assert!(onnx_log.contains("end of sequence"), "stderr: {onnx_log}");
}

/// `torch.onnx.export` with Optimum's names (scripts/onnx-exports' `smollm2-past`,
/// transformers 5, eager attention, no tokenizer files beside it): `--tokenizer`
/// names the HF folder, and the greedy text is the HF build's.
#[test]
fn torch_export_with_past_and_a_tokenizer_folder_generates_the_hf_builds_text() {
    let Some(onnx) = export("smollm2-past", "scripts/onnx-exports") else {
        return;
    };
    let Some(hf) = model("SmolLM2-135M-Instruct-hf") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prompt = "The capital of France is";
    let tok = ["--tokenizer", hf.to_str().unwrap()];
    let from_onnx = build_and_generate(&onnx, &tok, &dir.path().join("past"), prompt, "16");
    let from_hf = build_and_generate(&hf, &[], &dir.path().join("hf"), prompt, "16");
    assert_eq!(from_onnx, from_hf);
}
