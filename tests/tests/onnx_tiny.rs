//! Tiny random-weight models of ten architectures (GPT-2, Llama with GQA, Qwen2,
//! Mistral, Phi-3, Gemma, Gemma 2, Gemma 3, BERT, DistilBERT) exported to ONNX the ways
//! users export them — TorchScript with eager or sdpa attention, dynamo at its default
//! opset and at opset 23, decoders with and without past key/values — held to
//! onnxruntime's outputs, and checked to become LLMs.
//!
//! `scripts/onnx-exports --tiny` (torch; outside CI) writes the cases to
//! `.cache/onnx-tiny/<arch>-<style>[-past]/` (`$LLMC_ONNX_TINY` overrides): the model,
//! its sample inputs, onnxruntime's outputs and `case.json`. Three of them are
//! committed under `tests/fixtures/onnx-tiny/` (opset-23 Llama with a cache, dynamo's
//! sliding-window Mistral without one, TorchScript-eager Gemma 2 with soft-capping), so
//! CI runs those without torch. Per case it runs these trials:
//!
//! - `<case>::interp`: the import in the reference interpreter vs onnxruntime;
//! - `<case>::cpu`: compiled for the CPU (kernels, LLVM, the runtime) vs onnxruntime;
//! - `<case>::fused`: after `-O3`, every attention block is one `flash_attention`
//!   (`case.json`'s `layers`), `--explain-fusion` leaves nothing, and the optimized
//!   program still matches onnxruntime in the interpreter;
//! - `<case>::llm` (decoders): `llmc build`'s road — the decoder contract, `-O3` (with
//!   nothing left by `--explain-fusion`), the KV-cached step derived when the export
//!   has no past, then the prompt fed in two steps through the cache gives
//!   onnxruntime's last-position logits, and the serving form has one
//!   `paged_attention` per layer;
//! - `<case>::export` when the exporter itself failed (the reason, from `case.json`).
//!
//! Which trials must pass is the allow-list `tests/onnx/tiny.txt` (one regex per line
//! against `<case>::<trial>`); the rest are reported as ignored, so the matrix stays
//! visible: `-- --include-ignored` runs them all. Tolerance: `1e-4 + 1e-4 * |ort|`
//! (tiny models: two layers, values of order one; both sides compute in f32 and sum in
//! different orders).

mod common;

use common::{compare_outputs, diff, inputs_for, read_npy};
use libtest_mimic::{Arguments, Failed, Trial};
use llmc_frontend::onnx;
use llmc_ir::interp::Interpreter;
use llmc_ir::{DType, Module, Op, Tensor};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const ATOL: f64 = 1e-4;
const RTOL: f64 = 1e-4;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let cache = std::env::var_os("LLMC_ONNX_TINY")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/onnx-tiny"));
    // The committed subset first; the full set, when made, adds the rest (and its own
    // copy of the subset replaces the committed one).
    let mut found: std::collections::BTreeMap<String, PathBuf> = Default::default();
    for dir in [root.join("tests/fixtures/onnx-tiny"), cache.clone()] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if e.path().join("case.json").is_file() {
                found.insert(e.file_name().to_string_lossy().into_owned(), e.path());
            }
        }
    }
    if !cache.is_dir() {
        println!(
            "onnx tiny exports: {} not found, only the committed subset runs \
             (scripts/onnx-exports --tiny makes the rest; needs torch, outside CI)",
            cache.display()
        );
    }
    let manifest = root.join("tests/onnx/tiny.txt");
    let allow: Vec<regex::Regex> = match std::fs::read_to_string(&manifest) {
        Ok(text) => text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .filter_map(|l| regex::Regex::new(&format!("^(?:{l})$")).ok())
            .collect(),
        Err(e) => {
            eprintln!("onnx tiny exports: {}: {e}", manifest.display());
            return ExitCode::FAILURE;
        }
    };
    let mut trials = Vec::new();
    for (name, dir) in found {
        let info: serde_json::Value = match std::fs::read_to_string(dir.join("case.json"))
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        {
            Ok(v) => v,
            Err(e) => {
                eprintln!("{}: {e}", dir.join("case.json").display());
                return ExitCode::FAILURE;
            }
        };
        let mut add = |trial: &str, f: Box<dyn FnOnce() -> Result<(), Failed> + Send>| {
            let full = format!("{name}::{trial}");
            let listed = allow.iter().any(|r| r.is_match(&full));
            trials.push(Trial::test(full, f).with_ignored_flag(!listed));
        };
        if let Some(err) = info.get("error").and_then(|e| e.as_str()) {
            let err = err.to_string();
            add(
                "export",
                Box::new(move || Err(format!("the exporter failed: {err}").into())),
            );
            continue;
        }
        let layers = info.get("layers").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        let decoder = info.get("kind").and_then(|v| v.as_str()) == Some("decoder");
        let d = dir.clone();
        add("interp", Box::new(move || check_interp(&d)));
        let d = dir.clone();
        add("cpu", Box::new(move || check_cpu(&d)));
        let d = dir.clone();
        add("fused", Box::new(move || check_fused(&d, layers)));
        if decoder {
            let d = dir.clone();
            add("llm", Box::new(move || check_llm(&d, layers)));
        }
    }
    let c = libtest_mimic::run(&args, trials);
    println!(
        "onnx tiny exports: {} passed, {} failed, {} not in tests/onnx/tiny.txt",
        c.num_passed, c.num_failed, c.num_ignored
    );
    c.exit_code()
}

fn load(dir: &Path) -> Result<Module, Failed> {
    onnx::load(&dir.join("model.onnx")).map_err(|e| format!("import: {e}").into())
}

/// The recorded input sets of a case: the export's sample and `sample2/` (other sizes:
/// the import must not be specialised to the first).
fn samples(dir: &Path) -> Vec<PathBuf> {
    [dir.to_path_buf(), dir.join("sample2")]
        .into_iter()
        .filter(|d| d.join("ort").is_dir())
        .collect()
}

/// Runs `m` in the interpreter on every sample and compares with onnxruntime.
fn interp_matches(m: &Module, dir: &Path, what: &str) -> Result<(), Failed> {
    for s in samples(dir) {
        let outs = Interpreter::new(m)
            .run(&inputs_for(m, &s))
            .map_err(|e| format!("{}: interpreter{what}: {e}", s.display()))?;
        let sum = compare_outputs(m, &s, &outs, ATOL, RTOL)
            .map_err(|e| format!("{}{what}:\n{e}", s.display()))?;
        println!("{}{what}: {sum}", s.display());
    }
    Ok(())
}

fn check_interp(dir: &Path) -> Result<(), Failed> {
    interp_matches(&load(dir)?, dir, "")
}

fn check_cpu(dir: &Path) -> Result<(), Failed> {
    let m = load(dir)?;
    let samples = samples(dir);
    let runs: Vec<Vec<Tensor>> = samples.iter().map(|s| inputs_for(&m, s)).collect();
    let opts = llmc_backend::BuildOptions::default();
    let outs = llmc_backend::run::run_compiled(&m, &opts, &runs)
        .map_err(|e| format!("compiled run: {e}"))?;
    for (s, outs) in samples.iter().zip(&outs) {
        let sum = compare_outputs(&m, s, outs, ATOL, RTOL)
            .map_err(|e| format!("{}:\n{e}", s.display()))?;
        println!("{} [cpu]: {sum}", s.display());
    }
    Ok(())
}

/// The `-O3` pipeline over `m`.
fn o3(m: &mut Module) -> Result<(), Failed> {
    llmc_passes::optimize(m, 3).map_err(|e| format!("-O3: {e}"))?;
    Ok(())
}

fn count(m: &Module, op: Op) -> usize {
    m.graph.nodes.iter().filter(|n| n.op == op).count()
}

/// Every attention block fused, nothing left by `--explain-fusion`.
fn fused_attention(m: &Module, layers: usize) -> Result<(), Failed> {
    let flash = count(m, Op::FlashAttention);
    let left = llmc_passes::egraph::explain(&llmc_passes::fuse_elementwise::unfuse(m));
    if flash != layers || !left.is_empty() {
        let why: Vec<String> = left.iter().map(|e| e.to_string()).collect();
        return Err(format!(
            "{flash} flash_attention for {layers} attention blocks; explain-fusion:\n{}",
            why.join("\n")
        )
        .into());
    }
    Ok(())
}

fn check_fused(dir: &Path, layers: usize) -> Result<(), Failed> {
    let mut m = load(dir)?;
    o3(&mut m)?;
    interp_matches(&m, dir, " after -O3")?;
    fused_attention(&m, layers)
}

/// `llmc build`'s road for a decoder export, checked on the recorded sample: the prompt
/// (for a `-past` case, the cached tokens of `prefix_ids.npy` and then the new ones) fed
/// in two steps through the KV cache gives onnxruntime's last-position logits.
fn check_llm(dir: &Path, layers: usize) -> Result<(), Failed> {
    use onnx::decoder;
    let m = load(dir)?;
    let io = decoder::recognise(&m).ok_or("not recognised as a decoder export")?;
    let mut d = decoder::lower(&m, &io).map_err(|e| format!("decoder lowering: {e}"))?;
    o3(&mut d)?;
    if count(&d, Op::KvAppend) == 0 {
        d = llmc_passes::kv_derive::derive(&d).map_err(|e| format!("deriving the cache: {e}"))?;
    }
    let left = llmc_passes::egraph::explain(&llmc_passes::fuse_elementwise::unfuse(&d));
    if !left.is_empty() {
        let why: Vec<String> = left.iter().map(|e| e.to_string()).collect();
        return Err(format!("the LLM form leaves fusions undone:\n{}", why.join("\n")).into());
    }
    for s in samples(dir) {
        llm_sample(&d, &s)?;
    }
    let s = llmc_passes::serving::lower(&d, DType::F32, true)
        .map_err(|e| format!("serving form: {e}"))?;
    let paged = count(&s, Op::PagedAttention);
    if paged != layers {
        return Err(format!("serving form: {paged} paged_attention for {layers} layers").into());
    }
    Ok(())
}

/// The decoder form `d` on one recorded sample: the prompt in two steps through the
/// cache gives onnxruntime's last-position logits.
fn llm_sample(d: &Module, dir: &Path) -> Result<(), Failed> {
    let new = read_npy(&dir.join("inputs/input_ids.npy")).to_i64();
    let prefix = dir.join("prefix_ids.npy");
    let mut ids = if prefix.is_file() {
        read_npy(&prefix).to_i64()
    } else {
        Vec::new()
    };
    ids.extend(new);
    let cut = ids.len().div_ceil(2);
    let row = |v: &[i64]| Tensor::from_i64(DType::I64, vec![1, v.len()], v.to_vec());
    let mut it = Interpreter::new(d);
    let pos: Vec<i64> = (0..ids.len() as i64).collect();
    it.run(&[row(&ids[..cut]), row(&pos[..cut])])
        .map_err(|e| format!("prompt step: {e}"))?;
    let got = it
        .run(&[row(&ids[cut..]), row(&pos[cut..])])
        .map_err(|e| format!("second step: {e}"))?;
    let logits = read_npy(&dir.join("ort/logits.npy"));
    let vocab = *logits.shape.last().ok_or("logits rank 0")?;
    let all = logits.to_f64();
    let last: Vec<f32> = all[all.len() - vocab..].iter().map(|&x| x as f32).collect();
    let want = Tensor::f32(vec![1, vocab], last);
    let got = got.first().ok_or("no logits")?;
    if got.shape != want.shape {
        return Err(format!("logits {:?}, want {:?}", got.shape, want.shape).into());
    }
    let e = diff(got, &want, ATOL, RTOL);
    if e.over > 0 {
        return Err(format!(
            "{}: last-position logits: {} of {vocab} out of tolerance, max abs {:.3e}",
            dir.display(),
            e.over,
            e.max_abs
        )
        .into());
    }
    println!(
        "{} llm: {} + {} tokens through the cache, last logits max abs {:.3e}",
        dir.display(),
        cut,
        ids.len() - cut,
        e.max_abs
    );
    Ok(())
}
