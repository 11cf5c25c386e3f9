//! An ONNX decoder export is an LLM: Optimum's export of SmolLM2-135M-Instruct
//! (`optimum-cli export onnx --task text-generation-with-past`, made by
//! `scripts/onnx-exports --optimum` into `$LLMC_ONNX_EXPORTS/smollm2-optimum/`, which
//! needs torch and so is outside CI) builds with `llmc build model.onnx -O3` into an
//! executable whose greedy `generate` prints the same text as the build of the HF
//! folder it was exported from, and whose `serve` answers a completion with that text.
//! The same for its export without past key/values (`smollm2-optimum-nopast`), whose
//! cached step the build derives. Skips, saying so, when either model is absent.

mod common;

use common::{assert_serves, llmc, model, stderr, stdout, Server};
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
    generate(exe, prompt, tokens)
}

/// The greedy text of the built executable `exe` for `prompt`.
fn generate(exe: &Path, prompt: &str, tokens: &str) -> String {
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

/// Optimum's SmolLM2 export and the HF folder it was made from, or `None` (having said
/// which is missing).
fn optimum_and_hf() -> Option<(PathBuf, PathBuf)> {
    let onnx = export("smollm2-optimum", "scripts/onnx-exports --optimum")?;
    Some((onnx, model("SmolLM2-135M-Instruct-hf")?))
}

#[test]
fn optimum_export_generates_the_hf_builds_greedy_text() {
    let Some((onnx, hf)) = optimum_and_hf() else {
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
    // `serve`: a greedy completion over HTTP is the same text as `generate`.
    assert_serves(&dir.path().join("smollm-onnx"), &from_onnx);
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

/// `--quantize` reaches an export's `MatMul` weights (transposed into linears first):
/// Optimum's export quantized to q4_1 with its separate embedding table in q8_0 (the
/// HF folder ties it to the head, which the default mix puts in q8_0) gives the
/// quantized HF build's greedy text, token for token.
#[test]
fn quantized_optimum_export_generates_the_quantized_hf_builds_text() {
    let Some((onnx, hf)) = optimum_and_hf() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prompt = "The capital of France is";
    let q = ["--quantize", "q4_1,embed=q8_0"];
    let from_onnx = build_and_generate(&onnx, &q, &dir.path().join("onnx-q4_1"), prompt, "24");
    let q = ["--quantize", "q4_1"];
    let from_hf = build_and_generate(&hf, &q, &dir.path().join("hf-q4_1"), prompt, "24");
    assert!(!from_hf.trim().is_empty(), "the HF build generated nothing");
    assert_eq!(from_onnx, from_hf);
}

/// Optimum's export without past key/values (`optimum-cli export onnx --task
/// text-generation`, scripts/onnx-exports' `smollm2-optimum-nopast`): the build derives
/// the KV-cached step from the full-sequence graph (a `kv_append` before each fused
/// attention), so greedy `generate` is the HF build's text and `serve` answers a
/// completion with it.
#[test]
fn optimum_export_without_past_decodes_incrementally_and_serves() {
    let Some(onnx) = export("smollm2-optimum-nopast", "scripts/onnx-exports --optimum") else {
        return;
    };
    let Some(hf) = model("SmolLM2-135M-Instruct-hf") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prompt = "The capital of France is";
    let exe = dir.path().join("nopast");
    let from_onnx = build_and_generate(&onnx, &[], &exe, prompt, "16");
    let from_hf = build_and_generate(&hf, &[], &dir.path().join("hf"), prompt, "16");
    assert!(!from_hf.trim().is_empty(), "the HF build generated nothing");
    assert_eq!(from_onnx, from_hf);
    assert_serves(&exe, &from_onnx);
}

/// `torch.onnx.export(dynamo=True)` of SmolLM2 (the default exporter since torch 2.9),
/// at its default opset and at opset 23 (the native `Attention`, `RotaryEmbedding`
/// and `RMSNormalization` ops), and without a `position_ids` input (`-nopos`: the model
/// computes its positions), with and without past key/values
/// (`scripts/reference/tiny_onnx.py --real`, the tokenizer files beside each): every
/// attention becomes paged attention, nothing is left unfused, the serving executable
/// generates the HF build's greedy text and serves it.
#[test]
fn dynamo_exports_generate_the_hf_builds_greedy_text() {
    let Some(hf) = model("SmolLM2-135M-Instruct-hf") else {
        return;
    };
    let how = "scripts/onnx-exports --tiny --real";
    let cases = [
        "smollm2-dynamo",
        "smollm2-dynamo-past",
        "smollm2-dynamo-opset23",
        "smollm2-dynamo-opset23-past",
        "smollm2-dynamo-nopos",
        "smollm2-dynamo-nopos-past",
    ];
    let found: Vec<(&str, PathBuf)> = cases
        .iter()
        .filter_map(|c| Some((*c, export(c, how)?)))
        .collect();
    if found.is_empty() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prompt = "The capital of France is";
    let from_hf = build_and_generate(&hf, &[], &dir.path().join("hf"), prompt, "16");
    assert!(!from_hf.trim().is_empty(), "the HF build generated nothing");
    for (case, onnx) in found {
        let exe = dir.path().join(case);
        let o = llmc(&[
            "build",
            onnx.to_str().unwrap(),
            "-O3",
            "--explain-fusion",
            "-o",
            exe.to_str().unwrap(),
        ]);
        let err = stderr(&o);
        assert!(o.status.success(), "{case}: {err}");
        assert!(
            err.contains("explain-fusion: 0 candidate(s) left unfused; fused ops: 0 flash_attention, 30 paged_attention, 61 rms_norm"),
            "{case}: {err}"
        );
        assert_eq!(generate(&exe, prompt, "16"), from_hf, "{case}");
    }
    let exe = dir.path().join("smollm2-dynamo-opset23-past");
    if exe.is_file() {
        assert_serves(&exe, &from_hf);
    }
}

/// An encoder export (`torch.onnx.export` of all-MiniLM-L6-v2, scripts/onnx-exports'
/// `minilm`: input_ids, attention_mask, token_type_ids -> last_hidden_state) with
/// `--tokenizer` naming the sentence-transformers folder becomes an embedding model:
/// `embed` gives the HF folder build's vectors (mean pooling, normalized, read from
/// the folder) within 1e-5, and `serve` answers `/v1/embeddings`.
#[test]
fn encoder_export_embeds_as_the_hf_folder_build() {
    let Some(onnx) = export("minilm", "scripts/onnx-exports") else {
        return;
    };
    let Some(hf) = model("all-MiniLM-L6-v2") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("onnx"), dir.path().join("hf"));
    let o = llmc(&[
        "build",
        onnx.to_str().unwrap(),
        "-O3",
        "--tokenizer",
        hf.to_str().unwrap(),
        "-o",
        a.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("mean pooling, normalized"),
        "{}",
        stderr(&o)
    );
    let o = llmc(&[
        "build",
        hf.to_str().unwrap(),
        "-O3",
        "-o",
        b.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let embed = |exe: &Path| -> Vec<f64> {
        let o = Command::new(exe)
            .args(["embed", "--text", "The capital of France is Paris."])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str(stdout(&o).trim()).expect("a JSON vector")
    };
    let (x, y) = (embed(&a), embed(&b));
    assert_eq!(x.len(), 384);
    let worst = x
        .iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-5, "max |onnx - hf| = {worst}");
    let server = Server::start(&a);
    let reply = server.post(
        "/v1/embeddings",
        r#"{"input": "The capital of France is Paris."}"#,
    );
    let v = reply["data"][0]["embedding"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(v.len(), 384, "{reply}");
}

/// Optimum's export (with past key/values, and without: the cache derived) builds for
/// CUDA at -O3 without a GPU: the serving form's kernels, paged attention among them,
/// in one executable whose `info` lists them for sm_80 and sm_90.
#[test]
fn optimum_exports_build_for_cuda() {
    for case in ["smollm2-optimum", "smollm2-optimum-nopast"] {
        let Some(onnx) = export(case, "scripts/onnx-exports --optimum") else {
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("smollm-cuda");
        let o = llmc(&[
            "build",
            onnx.to_str().unwrap(),
            "-O3",
            "--target",
            "cuda",
            "--cuda-arch",
            "sm_80,sm_90",
            "-o",
            exe.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{case}: {}", stderr(&o));
        let info = Command::new(&exe).arg("info").output().unwrap();
        let text = stdout(&info);
        assert!(
            text.contains("target: cuda; PTX for sm_80, sm_90")
                && text.contains("sm_90 llmc_k")
                && text.contains("paged_attention"),
            "{case}: {text}"
        );
    }
}
