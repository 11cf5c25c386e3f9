//! `--accuracy-budget PCT`: the fastest per-layer choice of weight formats whose
//! measured perplexity stays within PCT of the unquantized model's.
//!
//! The choice is, layer by layer, between the `--quantize` format (the fast one, with
//! its `awq`/`gptq` options) and one upgrade format from a ladder of more bits per
//! weight ([`UPGRADES`]: q4_1, q5_0, q8_0). Layers are ranked by what the quantize
//! pass measured on the calibration statistics: the sum of their linears' relative
//! output errors in the fast format (`Calibration::errors`). For each upgrade format,
//! the smallest number `n` of top-ranked layers in it that keeps the perplexity within
//! budget is found by bisection, each candidate compiled and *measured*: the
//! perplexity over the calibration text (windows of 512, llama-perplexity's protocol),
//! never the evaluation text. Each quantization is computed once; a candidate takes
//! each layer's weights (and the norms AWQ scaled for them) from one or the other, so a
//! probe costs a compile and a perplexity run. Decode reads every weight once per
//! token, so the cost model is the weight bytes: the choice with the fewest wins, and
//! a later rung is only probed at layer counts whose bytes would beat the best so far.
//!
//! The table of probes is printed, and the chosen spec (`FORMAT,...,layerN=q8_0,...`,
//! which `--quantize` also accepts) is what the build then quantizes with.

use crate::Reduce;
use anyhow::{bail, Context, Result};
use llmc_ir::{DType, Module, ValueDef};
use llmc_passes::quant::{layer_of, QuantSpec};
use llmc_passes::PassContext;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Window length of the perplexity probes.
const CTX: usize = 512;

/// The formats a layer may be upgraded to, the fewest bits per weight first: q4_1
/// (5.0), q5_0 (5.5), q8_0 (8.5). Only those with more bits than `--quantize`'s are
/// tried.
const UPGRADES: [DType; 3] = [DType::Q4_1, DType::Q5_0, DType::Q8_0];

/// The weights of layer set `upgraded` taken from `b`, the rest as in `a` (both the
/// same graph quantized two ways).
fn mix(a: &Module, b: &Module, upgraded: &BTreeSet<usize>) -> Result<Module> {
    let mut m = a.clone();
    for (i, w) in b.weights.iter().enumerate() {
        if !layer_of(&w.name).is_some_and(|l| upgraded.contains(&l)) {
            continue;
        }
        let same = m
            .weights
            .get(i)
            .is_some_and(|x| x.name == w.name && x.shape == w.shape);
        if !same {
            bail!("weight @{}: the two quantizations differ in layout", w.name);
        }
        m.weights[i] = w.clone();
        let wid = llmc_ir::WeightId(i as u32);
        if let Some(v) = m
            .graph
            .values
            .iter()
            .position(|v| v.def == ValueDef::Weight(wid))
        {
            m.graph.values[v].ty.dtype = w.dtype;
        }
    }
    Ok(m)
}

/// Weight bytes of a module (MiB).
fn weight_mib(m: &Module) -> f64 {
    m.weights
        .iter()
        .filter_map(|w| {
            let n = w.shape.as_consts()?.iter().product::<i64>() as u64;
            w.dtype.storage_bytes(n)
        })
        .sum::<u64>() as f64
        / (1024.0 * 1024.0)
}

/// Compiles `m` (already reduced) and returns its perplexity on `text`.
fn perplexity(m: &Module, text: &Path, chunks: usize, dir: &Path) -> Result<f64> {
    let mut x = m.clone();
    crate::optimize(
        &mut x,
        3,
        None,
        &Reduce::default(),
        &llmc_passes::Instrument::default(),
    )?;
    let llm = crate::llm_info(&x)?.context("--accuracy-budget needs a language model")?;
    let opts = llmc_backend::BuildOptions {
        cpu: llmc_backend::CpuOptions {
            opt_level: 3,
            ..Default::default()
        },
        dump_dir: None,
        llm: Some(llm),
    };
    let exe = dir.join("probe");
    llmc_backend::build_executable(&x, &opts, &exe).context("compiling a probe")?;
    let out = Command::new(&exe)
        .arg("perplexity")
        .arg("--file")
        .arg(text)
        .arg("--ctx")
        .arg(CTX.to_string())
        .arg("--chunks")
        .arg(chunks.to_string())
        .output()
        .context("running a probe")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "a probe's perplexity run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
        .lines()
        .filter_map(|l| l.split_once("PPL = "))
        .filter_map(|(_, r)| r.split_whitespace().next()?.parse::<f64>().ok())
        .next_back()
        .context("a probe printed no perplexity")
}

/// Chooses the per-layer formats for `reduce.quantize` within `pct` (a fraction) of
/// the unquantized perplexity on `text` (the calibration text, `tokens` of it), and
/// returns the spec to build with and a one-line account of the choice and every
/// probe (what `./OUT info` records).
pub fn choose(
    m: &Module,
    reduce: &Reduce,
    pct: f64,
    text: &Path,
    tokens: usize,
) -> Result<(QuantSpec, String)> {
    let t0 = Instant::now();
    let spec = reduce
        .quantize
        .clone()
        .context("--accuracy-budget chooses formats per layer: give --quantize FORMAT (the fastest it may use)")?;
    let cal = reduce
        .calibration
        .clone()
        .context("--accuracy-budget measures perplexity: give --calibration FILE")?;
    let bits = |d: DType| d.block_bytes() as f64 * 8.0 / d.block_len() as f64;
    // The formats a layer may be upgraded to, the fewest bits first.
    let ladder: Vec<DType> = UPGRADES
        .into_iter()
        .filter(|&u| bits(u) > bits(spec.format))
        .collect();
    if ladder.is_empty() || !spec.layers.is_empty() {
        bail!(
            "--accuracy-budget chooses per layer between --quantize FORMAT and the larger of \
             q4_1, q5_0, q8_0: give a format smaller than q8_0 and no layerN= entries (got {spec})"
        );
    }
    let chunks = (tokens / CTX).max(2);
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    // The unquantized model (pruned first when asked), every position's logits.
    let mut base = m.clone();
    let _ = crate::eval::every_position(&mut base)?;
    if let Some(p) = &reduce.prune {
        let ctx = PassContext {
            prune: Some(p.clone()),
            calibration: Some(cal.clone()),
            ..Default::default()
        };
        llmc_passes::prune::run(&mut base, &ctx)?;
    }
    let quantized = |s: &QuantSpec| -> Result<Module> {
        let mut q = base.clone();
        let ctx = PassContext {
            quantize: Some(s.clone()),
            calibration: Some(cal.clone()),
            ..Default::default()
        };
        llmc_passes::quant::run(&mut q, &ctx)?;
        Ok(q)
    };
    let fast = quantized(&spec)?;
    let errors = cal.errors();
    // Layers by measured sensitivity, most sensitive first.
    let mut score: BTreeMap<usize, f64> = BTreeMap::new();
    for w in &fast.weights {
        if let (Some(l), Some(e)) = (layer_of(&w.name), errors.get(&w.name)) {
            *score.entry(l).or_default() += e;
        }
    }
    if score.is_empty() {
        bail!(
            "--accuracy-budget: no layer's linears were measured (names without a layer number?)"
        );
    }
    let mut ranked: Vec<(usize, f64)> = score.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top = |n: usize| -> BTreeSet<usize> { ranked.iter().take(n).map(|r| r.0).collect() };

    let reference = perplexity(&base, text, chunks, dir.path())?;
    let limit = reference * (1.0 + pct);
    eprintln!(
        "llmc: --accuracy-budget {:.3}%: unquantized PPL {reference:.4} on {} windows of {} \
         ({} tokens), limit {limit:.4}; {} layers ranked by measured output error in {}; \
         upgrades tried: {}",
        pct * 100.0,
        chunks,
        text.display(),
        chunks * CTX,
        ranked.len(),
        spec.format,
        ladder
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("  upgrade | layers | weights MiB | PPL | vs unquantized");
    // Every probe: (upgrade, layers, weight MiB, perplexity).
    let mut probes: Vec<(DType, usize, f64, f64)> = Vec::new();
    let mut probe = |slow: &Module, u: DType, n: usize| -> Result<bool> {
        let mixed = mix(&fast, slow, &top(n))?;
        let p = perplexity(&mixed, text, chunks, dir.path())?;
        let mib = weight_mib(&mixed);
        eprintln!(
            "  {:>7} | {n:>6} | {mib:>11.1} | {p:.4} | {:+.2}%",
            u.name(),
            (p / reference - 1.0) * 100.0
        );
        probes.push((u, n, mib, p));
        Ok(p <= limit)
    };
    let all = ranked.len();
    // The best choice so far: (upgrade format, layers upgraded, weight MiB). Fewer bytes
    // is faster (decode reads every weight once per token), so a later rung, with more
    // bits per weight, is only tried at layer counts whose bytes would beat it.
    let mut best: Option<(DType, usize, f64)> = None;
    if probe(&fast, spec.format, 0)? {
        best = Some((spec.format, 0, weight_mib(&fast)));
    }
    for &u in &ladder {
        if best.is_some_and(|b| b.1 == 0) {
            break;
        }
        let mut slow_spec = spec.clone();
        slow_spec.format = u;
        let slow = quantized(&slow_spec)?;
        let mib = |n: usize| mix(&fast, &slow, &top(n)).map(|m| weight_mib(&m));
        let mut most = all;
        if let Some((_, _, b)) = best {
            while most > 0 && mib(most)? >= b {
                most -= 1;
            }
        }
        if most > 0 && probe(&slow, u, most)? {
            let (mut lo, mut hi) = (0, most);
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if probe(&slow, u, mid)? {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            best = Some((u, hi, mib(hi)?));
        }
    }
    let (upgrade, chosen) = match best {
        Some((u, n, _)) => (u, n),
        None => {
            eprintln!(
                "llmc: --accuracy-budget: even every layer in q8_0 exceeds the budget; using that"
            );
            (DType::Q8_0, all)
        }
    };
    let mut out = spec.clone();
    for l in top(chosen) {
        out.layers.insert(l, upgrade);
    }
    eprintln!(
        "llmc: --accuracy-budget: {chosen} of {all} layers in {upgrade} ({} probes, {:.1} s): \
         --quantize {out}",
        probes.len(),
        t0.elapsed().as_secs_f64()
    );
    let tried: Vec<String> = probes
        .iter()
        .map(|(u, n, mib, p)| {
            format!(
                "{n} {u} {mib:.1} MiB {:+.2}%",
                (p / reference - 1.0) * 100.0
            )
        })
        .collect();
    let note = format!(
        "{:.3}% of PPL {reference:.4} on {} tokens of {}: {chosen} of {all} layers in \
         {upgrade}; probes (layers upgraded, format, weights, PPL change): {}",
        pct * 100.0,
        chunks * CTX,
        text.file_name().map_or_else(
            || text.display().to_string(),
            |f| f.to_string_lossy().into_owned()
        ),
        tried.join(", ")
    );
    Ok((out, note))
}
