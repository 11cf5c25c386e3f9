//! `llmc eval MODEL --perplexity FILE`: what a model (optionally quantized) scores on
//! a text, through the compiled CPU path. The model is compiled into a temporary
//! executable whose `perplexity` command measures with llama.cpp's `llama-perplexity`
//! protocol (`runtime/src/eval.rs`); its per-window running perplexity and final
//! `PPL = X +/- Y` go straight to stdout. With `--compare-to MODEL2` the second model
//! (unquantized: it is the reference) runs first and stores its distributions, then
//! MODEL reports its KL divergence from them and how often both rank the same token
//! first.
//!
//! The decoder graphs return the last position's logits (what generation needs);
//! for evaluation the module is first rewritten to return every position's (the
//! final norm and output projection applied to the whole sequence instead of its
//! last row), so a window is one call instead of one per scored token.

use crate::{llm_info, load, optimize};
use anyhow::{bail, Context, Result};
use clap::Args;
use llmc_ir::{AttrsExt, Module, Op, ValueDef, ValueId};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(Args)]
pub struct EvalArgs {
    /// The language model.
    model: PathBuf,
    /// The text to measure the perplexity on.
    #[arg(long, value_name = "FILE")]
    perplexity: PathBuf,
    /// Window length in tokens (llama-perplexity's -c).
    #[arg(long, value_name = "N", default_value_t = 512)]
    ctx: usize,
    /// Score only the first N windows (llama-perplexity's --chunks).
    #[arg(long, value_name = "N")]
    chunks: Option<usize>,
    /// Quantize MODEL first: FORMAT[,head=F|keep][,embed=F|keep] (see `llmc build`).
    #[arg(long, value_name = "FORMAT", value_parser = crate::parse_quantize)]
    quantize: Option<llmc_passes::quant::QuantSpec>,
    /// The reference: report the KL divergence of MODEL's token distributions from
    /// this model's, and their top-1 agreement.
    #[arg(long, value_name = "MODEL2")]
    compare_to: Option<PathBuf>,
    /// Prune MODEL first: ffn=PCT (see `llmc build`).
    #[arg(long, value_name = "SPEC", value_parser = crate::parse_prune)]
    prune: Option<llmc_passes::prune::PruneSpec>,
    #[command(flatten)]
    calibration: crate::CalibrationArgs,
    /// Optimization level.
    #[arg(short = 'O', value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u8).range(0..=3))]
    opt_level: u8,
    /// Report the time each pass takes (and what `quantize` did).
    #[arg(long)]
    time_passes: bool,
}

/// Rewrites the decoder's tail `slice(x)[last] -> reshape -> (norm, linear, cast)* ->
/// logits` to apply the same ops to all of `x`, so the graph returns
/// `[batch, seq, vocab]`. Returns false (the module unchanged) when the tail has
/// another shape.
pub(crate) fn every_position(m: &mut Module) -> Result<bool> {
    let io = crate::generate::find_io(m)?;
    let g = &m.graph;
    let out = g.outputs[io.logits];
    // Walk back from the logits to the slice, collecting the per-row ops.
    let mut tail = Vec::new();
    let mut v = out;
    let x = loop {
        let ValueDef::Node(n, 0) = g.value(v).def else {
            return Ok(false);
        };
        let node = g.node(n);
        match node.op {
            Op::Linear | Op::RmsNorm | Op::LayerNorm | Op::Cast => tail.push(n),
            Op::Reshape => {}
            Op::Slice => {
                let last = node.attrs.ints("axes") == Some(&[1][..])
                    && node.attrs.ints("starts") == Some(&[-1][..]);
                if !last || tail.len() > 8 {
                    return Ok(false);
                }
                break node.inputs[0];
            }
            _ => return Ok(false),
        }
        if tail.len() > 8 {
            return Ok(false);
        }
        v = node.inputs[0];
    };
    if g.ty(x).shape.rank() != 3 || !tail.iter().any(|&n| g.node(n).op == Op::Linear) {
        return Ok(false);
    }
    let name = g.value(out).name.clone();
    let mut cur: ValueId = x;
    for &n in tail.iter().rev() {
        let node = m.graph.node(n).clone();
        let mut ins = node.inputs.clone();
        ins[0] = cur;
        cur = m
            .add1(node.op, &ins, node.attrs.clone())
            .with_context(|| format!("re-applying {} to every position", node.op.name()))?;
    }
    m.graph.values[out.0 as usize].name = format!("{name}.last");
    m.graph.values[cur.0 as usize].name = name;
    m.graph.outputs[io.logits] = cur;
    llmc_passes::dce::run(m, &llmc_passes::PassContext::default())?;
    Ok(true)
}

/// Loads, optimizes (quantizing as asked) and compiles `path` into `exe`.
fn compile(a: &EvalArgs, path: &Path, reduce: bool, exe: &Path) -> Result<()> {
    let t0 = Instant::now();
    let mut m: Module = load(path)?;
    if !every_position(&mut m)? {
        eprintln!(
            "llmc eval: {}: the graph returns only the last position's logits; \
             scoring one token per call",
            path.display()
        );
    }
    let reduce = match reduce {
        true => crate::Reduce::new(&m, a.quantize.clone(), a.prune.clone(), &a.calibration)?,
        false => crate::Reduce::default(),
    };
    let report = optimize(
        &mut m,
        a.opt_level,
        None,
        &reduce,
        &llmc_passes::Instrument::default(),
    )?;
    if a.time_passes {
        eprint!("{report}");
    }
    for pass in ["prune", "quantize"] {
        if let Some(note) = report
            .rows
            .iter()
            .find(|r| r.pass == pass)
            .and_then(|r| r.note.as_ref())
        {
            eprintln!("llmc eval: {pass} {note}");
        }
    }
    let llm = llm_info(&m)?.context("llmc eval needs a language model with a tokenizer")?;
    let opts = llmc_backend::BuildOptions {
        cpu: llmc_backend::CpuOptions {
            opt_level: a.opt_level,
            ..Default::default()
        },
        dump_dir: None,
        llm: Some(llm),
    };
    llmc_backend::build_executable(&m, &opts, exe)
        .with_context(|| format!("compiling {}", path.display()))?;
    eprintln!(
        "llmc eval: compiled {} in {:.1} s",
        path.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `exe perplexity` with the window settings and `extra` arguments.
fn measure(a: &EvalArgs, exe: &Path, extra: &[&std::ffi::OsStr]) -> Result<()> {
    let mut cmd = Command::new(exe);
    cmd.arg("perplexity")
        .arg("--file")
        .arg(&a.perplexity)
        .arg("--ctx")
        .arg(a.ctx.to_string());
    if let Some(n) = a.chunks {
        cmd.arg("--chunks").arg(n.to_string());
    }
    cmd.args(extra);
    let status = cmd
        .status()
        .with_context(|| format!("running {}", exe.display()))?;
    if !status.success() {
        bail!("the compiled model's perplexity run failed ({status})");
    }
    Ok(())
}

/// The reductions asked for, as flags (for the headings).
fn label(a: &EvalArgs) -> String {
    let mut s = String::new();
    if let Some(p) = &a.prune {
        s += &format!(" --prune {p}");
    }
    if let Some(q) = &a.quantize {
        s += &format!(" --quantize {q}");
    }
    s
}

pub fn eval(a: &EvalArgs) -> Result<()> {
    // Named before anything is compiled: a missing text is a quick error.
    std::fs::metadata(&a.perplexity)
        .with_context(|| format!("--perplexity {}", a.perplexity.display()))?;
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let exe = dir.path().join("model");
    compile(a, &a.model, true, &exe)?;
    let Some(reference) = &a.compare_to else {
        println!("== {}{} ==", a.model.display(), label(a));
        return measure(a, &exe, &[]);
    };
    let ref_exe = dir.path().join("reference");
    compile(a, reference, false, &ref_exe)?;
    let base = dir.path().join("reference.logits");
    println!("== reference {} ==", reference.display());
    measure(a, &ref_exe, &["--dump-logits".as_ref(), base.as_os_str()])?;
    println!(
        "== {}{} against the reference ==",
        a.model.display(),
        label(a)
    );
    measure(a, &exe, &["--kl-base".as_ref(), base.as_os_str()])
}
