//! End-to-end tests of the engine in emitted executables (serving form, paged KV
//! cache, continuous batching), through `generate` with several `--prompt`s, which
//! prints one JSON line per prompt:
//!
//! - batch invariance: 16 different prompts run together give, for each, exactly the
//!   greedy tokens that prompt gives alone, and bit for bit the same logprobs (GGUF
//!   Q4_1 and the HF f32 folder);
//! - the prefix cache: a second request with the same 256-token prefix reuses the
//!   first one's blocks and gives identical output;
//! - exhaustion: a KV pool far smaller than the work (2 MiB) makes the engine preempt
//!   and recompute, and every prompt still gets its alone-text;
//! - an int8 KV cache (`--kv-cache-dtype int8`) holds 1.88x the tokens of f16 in the
//!   same memory, stays batch invariant and generates SmolLM2's greedy reference text;
//! - `bench --concurrency` prints every number the engine's benchmark promises.
//!
//! Models come from `scripts/fetch-models`; without them the tests print "skipped".

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn build(model: &Path, out_name: &str) -> PathBuf {
    build_with(model, out_name, &[])
}

fn build_with(model: &Path, out_name: &str, extra: &[&str]) -> PathBuf {
    build_logged(model, out_name, extra).0
}

/// [`build_with`], also returning what `llmc build` printed on stderr.
fn build_logged(model: &Path, out_name: &str, extra: &[&str]) -> (PathBuf, String) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("engine-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(out_name);
    let mut args = vec![
        "build",
        model.to_str().unwrap(),
        "-O3",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = llmc(&args);
    let log = stderr(&o);
    assert!(o.status.success(), "{out_name}: {log}");
    (out, log)
}

fn gguf_exe() -> Option<&'static Path> {
    static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();
    EXE.get_or_init(|| model("SmolLM2-135M-Instruct.Q4_1.gguf").map(|m| build(&m, "smollm")))
        .as_deref()
}

fn hf_exe() -> Option<&'static Path> {
    static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();
    EXE.get_or_init(|| model("SmolLM2-135M-Instruct-hf").map(|m| build(&m, "smollm-hf")))
        .as_deref()
}

/// The perplexity `exe` reports through the engine on the first 4 windows of 128 tokens
/// of GPL-3 (prompt log-probabilities).
fn ppl(exe: &Path) -> f64 {
    let o = std::process::Command::new(exe)
        .args(["perplexity", "--file", "/usr/share/common-licenses/GPL-3"])
        .args(["--ctx", "128", "--chunks", "4"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    out.lines()
        .find_map(|l| l.strip_prefix("Final estimate: PPL = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no estimate in {out}"))
}

/// 16 prompts of different lengths and topics.
const PROMPTS: [&str; 16] = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colors are",
    "In 1969, astronauts",
    "A good recipe for pancakes needs",
    "The quick brown fox",
    "Water boils at",
    "My favourite programming language is Rust because",
    "SELECT name FROM users WHERE",
    "The largest planet in our solar system",
    "To be or not to be,",
    "Photosynthesis is the process by which plants",
    "1, 2, 3, 5, 8, 13,",
    "Dear hiring manager, I am writing to",
    "The mitochondria is",
];

/// One JSON line per prompt, in prompt order: (ids with the bits of each token's
/// logprob, cached tokens).
/// Per prompt: (token id, logprob bits) of each generated token, and cached tokens.
type Results = Vec<(Vec<(u64, u32)>, u64)>;

fn generate(exe: &Path, prompts: &[&str], extra: &[&str]) -> (Results, String) {
    let mut args: Vec<String> = vec!["generate".into()];
    for p in prompts {
        args.push("--prompt".into());
        args.push((*p).into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let o = std::process::Command::new(exe)
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out: Results = stdout(&o)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let ids = v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap());
            let lps = v["logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| (x.as_f64().unwrap() as f32).to_bits());
            (ids.zip(lps).collect(), v["cached_tokens"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(out.len(), prompts.len(), "{}", stdout(&o));
    (out, stderr(&o))
}

/// Each prompt alone: run one at a time (every step holds one sequence only).
fn alone(exe: &Path, prompts: &[&str], n: &str) -> Vec<Vec<(u64, u32)>> {
    let (out, _) = generate(exe, prompts, &["--one-at-a-time", "--max-tokens", n]);
    out.into_iter().map(|(ids, _)| ids).collect()
}

fn check_invariance(exe: &Path) {
    let want = alone(exe, &PROMPTS, "24");
    let (got, log) = generate(exe, &PROMPTS, &["--max-tokens", "24"]);
    for (i, ((g, _), w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g, w,
            "prompt {i} ({:?}) differs when batched; {log}",
            PROMPTS[i]
        );
        assert!(!w.is_empty());
    }
}

#[test]
fn sixteen_prompts_together_give_their_alone_tokens_gguf() {
    let Some(exe) = gguf_exe() else { return };
    check_invariance(exe);
}

#[test]
fn sixteen_prompts_together_give_their_alone_tokens_hf() {
    let Some(exe) = hf_exe() else { return };
    check_invariance(exe);
}

#[test]
fn a_shared_256_token_prefix_is_reused_and_changes_nothing() {
    let Some(exe) = gguf_exe() else { return };
    let prefix: String = (0..60).map(|i| format!("item {i}, ")).collect();
    let a = format!("{prefix}and the last item is");
    let b = a.clone();
    let (out, log) = generate(exe, &[&a, &b], &["--one-at-a-time", "--max-tokens", "16"]);
    let (ids_a, cached_a) = &out[0];
    let (ids_b, cached_b) = &out[1];
    assert_eq!(*cached_a, 0, "{log}");
    assert!(
        *cached_b >= 256,
        "the second request reused {cached_b} tokens; {log}"
    );
    assert_eq!(ids_a, ids_b, "{log}");
    assert!(log.contains("prefix cache"), "{log}");
}

/// `./OUT bench --concurrency N --shared-prefix K --repeat 2`: every number the engine
/// issue asks for, one `key: value` per line, from the best of two real runs; the linears' FLOP per decoded
/// token (the compute roofline's divisor) is SmolLM2's 2 x 134,479,872 weights (30
/// layers of q, k, v, o, gate, up, down and the tied 49,152 x 576 head), and the
/// shared 32-token prefix is served from the first sequence's blocks. `--bandwidth`
/// adds the roofline, from the executable's own weights read back.
#[test]
fn bench_at_concurrency_reports_throughput_latency_blocks_and_prefix_hits() {
    let Some(exe) = gguf_exe() else { return };
    let o = std::process::Command::new(exe)
        .args([
            "bench",
            "--threads",
            "2",
            "--prompt-tokens",
            "48",
            "--gen-tokens",
            "8",
            "--repeat",
            "2",
            "--concurrency",
            "4",
            "--shared-prefix",
            "32",
            "--bandwidth",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let kv: std::collections::HashMap<&str, &str> =
        out.lines().filter_map(|l| l.split_once(": ")).collect();
    let num = |k: &str| -> f64 {
        kv.get(k)
            .unwrap_or_else(|| panic!("no `{k}` line in:\n{out}"))
            .parse()
            .unwrap_or_else(|e| panic!("`{k}`: {e}\n{out}"))
    };
    assert_eq!(num("linear FLOP per decoded token"), 268_959_744.0, "{out}");
    assert_eq!(num("concurrency"), 4.0, "{out}");
    for k in [
        "decode tok/s",
        "aggregate decode tok/s",
        "steady decode tok/s",
        "TTFT p50 ms",
        "TPOT p50 ms",
    ] {
        assert!(num(k) > 0.0, "{k}: {out}");
    }
    // The concurrent run is repeated as the single stream is: the best run reported.
    let runs: Vec<f64> = kv["aggregate decode tok/s of each run"]
        .split(" / ")
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(runs.len(), 2, "{out}");
    assert_eq!(
        runs.iter().cloned().fold(0.0, f64::max),
        num("aggregate decode tok/s"),
        "{out}"
    );
    assert!(num("TTFT p99 ms") >= num("TTFT p50 ms"), "{out}");
    assert!(num("TPOT p99 ms") >= num("TPOT p50 ms"), "{out}");
    // 4 sequences of 48 + 8 tokens in blocks of 16, the first two shared: at most 4 x 4
    // blocks, at least the 2 shared plus 2 of each sequence's own.
    let blocks = num("kv blocks used");
    assert!((10.0..=16.0).contains(&blocks), "{out}");
    // The later three sequences find the 2 full prefix blocks the first one filled.
    assert!(num("prefix hit rate") > 0.0, "{out}");
    assert_eq!(num("preemptions"), 0.0, "{out}");
    // The roofline's bandwidth: the executable's own mapped weights (the pages decode
    // reads) where they exceed the caches, else a buffer.
    assert!(num("read bandwidth GB/s") > 0.0, "{out}");
    assert!(num("decode / roofline") > 0.0, "{out}");
    let of = kv["read bandwidth of"];
    assert!(
        of.starts_with("the weights (") && of.ends_with(" MB, mapped)") || of == "a 512 MB buffer",
        "{out}"
    );
}

#[test]
fn a_tiny_kv_pool_preempts_and_every_prompt_still_gets_its_text() {
    let Some(exe) = gguf_exe() else { return };
    let want = alone(exe, &PROMPTS, "20");
    // 2 MiB hold 5 blocks (80 tokens) of SmolLM2's f16 KV: far less than 16 prompts.
    let (got, log) = generate(exe, &PROMPTS, &["--max-tokens", "20", "--kv-cache-mb", "2"]);
    for (i, ((g, _), w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "prompt {i} differs under preemption; {log}");
    }
    let pre: u64 = log
        .split(", ")
        .find_map(|s| s.strip_suffix(" preemptions").and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    assert!(pre > 0, "expected preemptions: {log}");
}

#[test]
fn max_context_caps_each_sequence_and_sizes_the_pool() {
    let Some(exe) = gguf_exe() else { return };
    // `--max-context 64` alone: a pool of 64 tokens (4 blocks of 16) shared by both
    // prompts, and no sequence longer than 64 tokens.
    let (out, log) = generate(
        exe,
        &PROMPTS[..2],
        &["--max-context", "64", "--max-tokens", "200"],
    );
    for (ids, _) in &out {
        assert!(
            !ids.is_empty() && ids.len() < 64,
            "{} tokens; {log}",
            ids.len()
        );
    }
    assert!(log.contains(" of 4"), "expected a 4-block pool: {log}");
    // A prompt longer than the context is refused with both numbers.
    let long: String = (0..80).map(|i| format!("word{i} ")).collect();
    let o = std::process::Command::new(exe)
        .args(["generate", "--prompt", &long, "--max-context", "64"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("64"), "{}", stderr(&o));
}

/// `--kv-cache-dtype int8` (`q8_kv` pools: 64 int8 codes and an f32 scale per head
/// vector): 68 bytes where f16 takes 128, so the same `--kv-cache-mb` holds 1.88x the
/// tokens; batched rows still get their alone-tokens bit for bit, and the greedy text
/// is SmolLM2's reference (the f16 cache's).
#[test]
fn an_int8_kv_cache_holds_more_tokens_stays_invariant_and_generates_the_reference() {
    let Some(m) = model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let Some(f16) = gguf_exe() else { return };
    let exe = build_with(&m, "smollm-int8", &["--kv-cache-dtype", "int8"]);
    let info = |exe: &Path| {
        let o = std::process::Command::new(exe)
            .arg("info")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let line = |text: &str| -> String {
        text.lines()
            .find(|l| l.starts_with("kv cache:"))
            .unwrap_or_else(|| panic!("no kv cache line in {text}"))
            .to_string()
    };
    let (a, b) = (line(&info(f16)), line(&info(&exe)));
    assert!(
        a.contains("kv cache: f16;") && a.contains("23040 bytes per token"),
        "{a}"
    );
    assert!(
        b.contains("kv cache: blocks of 64 in 68 bytes;") && b.contains("12240 bytes per token"),
        "{b}"
    );
    check_invariance(&exe);
    let reference = fixture("smollm2/greedy.json");
    let prompt = reference["prompt"].as_str().unwrap();
    let want = reference["generated_text"].as_str().unwrap();
    let want = want.split("<|im_end|>").next().unwrap();
    let o = std::process::Command::new(&exe)
        .args(["generate", "--prompt", prompt, "--max-tokens", "32"])
        .args(["--temperature", "0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.strip_suffix('\n').unwrap_or(&out), want);
    // Perplexity through the engine (prompt log-probabilities): the int8 cache costs
    // little against the f16 one on the same windows.
    if Path::new("/usr/share/common-licenses/GPL-3").exists() {
        let (a, b) = (ppl(f16), ppl(&exe));
        assert!(a > 1.0 && a < 100.0, "f16 cache: PPL {a}");
        assert!(
            (b / a - 1.0).abs() < 0.02,
            "int8 cache: PPL {b}, f16 cache: {a}"
        );
    }
}

/// `--act-quant int8` (the quantized linears on int8 activation blocks, llama.cpp's
/// precision): the IR tags every block-quantized linear, batched rows still get their
/// alone-tokens bit for bit, the greedy answer to "The capital of France is" still
/// says Paris, and the perplexity through the engine stays within 3% of the int16
/// build's on the same four windows of 128 (measured on all of GPL-3 at ctx 512:
/// 18.3748 against 18.3000; llama-perplexity 18.39). Four short windows are a small
/// sample on which int8 rounding amplifies any change: attention's sums taken 16
/// lanes wide instead of 8 moved this number from 23.71 to 23.35 and the whole
/// text's by 0.1%.
#[test]
fn int8_activations_stay_invariant_and_close_to_int16() {
    let Some(m) = model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let Some(i16) = gguf_exe() else { return };
    let (exe, log) = build_logged(&m, "smollm-a8", &["--act-quant", "int8", "--time-passes"]);
    assert!(
        log.contains("int8 activations on 121 block-quantized linear(s)"),
        "{log}"
    );
    check_invariance(&exe);
    let o = std::process::Command::new(&exe)
        .args(["generate", "--prompt", "The capital of France is"])
        .args(["--max-tokens", "8", "--temperature", "0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Paris"), "{}", stdout(&o));
    if Path::new("/usr/share/common-licenses/GPL-3").exists() {
        let (a, b) = (ppl(i16), ppl(&exe));
        assert!(a > 1.0 && a < 100.0, "int16: PPL {a}");
        assert!(
            (b / a - 1.0).abs() < 0.03,
            "int8 activations: PPL {b}, int16: {a}"
        );
    }
}

/// Pruned and quantized builds are executables like the others: SmolLM2 (HF f32) with
/// 16:32 SparseGPT sparsity stored compressed (`q8_0_2of4`), and with 12.5% of its
/// MLP channels removed and refitted under GPTQ-rounded q4_0 (smaller shapes). Each
/// generates, gives its batched rows their alone tokens, serves a greedy completion
/// with `generate`'s text, and measures a perplexity through the engine within its
/// stated error: above the f32 build's and below 3x it (docs/quant.md: +60% and +13%
/// on all of GPL-3; a broken kernel gives thousands).
#[test]
fn pruned_and_quantized_builds_generate_serve_and_stay_invariant_sparse() {
    reduced_build(
        "smollm-sparse",
        &["--prune", "sparse=16:32", "--quantize", "q8_0"],
        "1024",
        "stored compressed (q8_0_2of4)",
    );
}

/// The channel-pruned build of the test above. (The two were one test; apart, the
/// harness runs them on both cores.) The refit needs the whole licence (from 1024
/// tokens it overfits: PPL 79 here).
#[test]
fn pruned_and_quantized_builds_generate_serve_and_stay_invariant_ffn_q4() {
    reduced_build(
        "smollm-ffn-q4",
        &["--prune", "ffn=12.5%", "--quantize", "q4_0,gptq"],
        "4096",
        "1536 -> 1344",
    );
}

/// Builds SmolLM2 reduced by `flags` (calibrated on `tokens` tokens; `--time-passes`
/// must say `says`) as `name` and runs the checks above on it.
fn reduced_build(name: &str, flags: &[&str], tokens: &str, says: &str) {
    let Some(m) = model("SmolLM2-135M-Instruct-hf") else {
        return;
    };
    let cal = Path::new("/usr/share/common-licenses/Apache-2.0");
    if !cal.exists() {
        eprintln!("skipped: {} not found", cal.display());
        return;
    }
    let Some(f32_exe) = hf_exe() else { return };
    let cal = cal.to_str().unwrap();
    let base = ppl(f32_exe);
    let mut extra = flags.to_vec();
    extra.extend(["--calibration", cal, "--calibration-tokens", tokens]);
    extra.push("--time-passes");
    let (exe, log) = build_logged(&m, name, &extra);
    assert!(log.contains(says), "{name}: {log}");
    check_invariance(&exe);
    let o = std::process::Command::new(&exe)
        .args(["generate", "--prompt", "The capital of France is"])
        .args(["--max-tokens", "16", "--temperature", "0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    let text = stdout(&o);
    assert!(!text.trim().is_empty(), "{name} generated nothing");
    assert_serves(&exe, &text);
    // `./OUT info` records what the weights were reduced by.
    let o = std::process::Command::new(&exe)
        .arg("info")
        .output()
        .unwrap();
    let info = stdout(&o);
    assert!(
        info.contains(&format!("\nprune: {}", flags[1])),
        "{name}: {info}"
    );
    let format = flags[3].split(',').next().unwrap_or_default();
    assert!(
        info.contains(&format!("\nquantize: {format},")),
        "{name}: {info}"
    );
    let p = ppl(&exe);
    eprintln!("{name}: PPL {p:.3} (f32 {base:.3}) on 4 windows of 128");
    assert!(p > base && p < 3.0 * base, "{name}: PPL {p}, f32 {base}");
}
