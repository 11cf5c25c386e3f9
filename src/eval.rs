//! `llmc eval MODEL --perplexity FILE`: what a model (optionally quantized) scores on
//! a text, through the compiled CPU path. The model is compiled into a temporary
//! executable whose `perplexity` command measures with llama.cpp's `llama-perplexity`
//! protocol (`runtime/src/eval.rs`); its per-window running perplexity and final
//! `PPL = X +/- Y` go straight to stdout. With `--compare-to MODEL2` the second model
//! (unquantized: it is the reference) runs first and stores its distributions, then
//! MODEL reports its KL divergence from them and how often both rank the same token
//! first.
//!
//! `llmc eval ENCODER --embeddings FILE [--quantize F] [--compare-to MODEL2]`: for
//! sentence-embedding models, the cosine similarity of each line's embedding to the
//! reference's (MODEL2, or MODEL itself unreduced), mean and minimum, and how long each
//! executable took to embed the lines (batch 1, one call per line).
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
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "embeddings",
        conflicts_with = "embeddings"
    )]
    perplexity: Option<PathBuf>,
    /// An encoder: embed each non-empty line of FILE and report the cosine to the
    /// reference's embeddings (--compare-to, default MODEL without --quantize/--prune).
    #[arg(long, value_name = "FILE")]
    embeddings: Option<PathBuf>,
    /// Window length in tokens (llama-perplexity's -c).
    #[arg(long, value_name = "N", default_value_t = 512)]
    ctx: usize,
    /// Score only the first N windows (llama-perplexity's --chunks).
    #[arg(long, value_name = "N")]
    chunks: Option<usize>,
    /// Quantize MODEL first: FORMAT[,head=F|keep][,embed=F|keep][,awq][,gptq] (see
    /// `llmc build`).
    #[arg(long, value_name = "FORMAT", value_parser = crate::parse_quantize)]
    quantize: Option<llmc_passes::quant::QuantSpec>,
    /// The reference: report the KL divergence of MODEL's token distributions from
    /// this model's, and their top-1 agreement.
    #[arg(long, value_name = "MODEL2")]
    compare_to: Option<PathBuf>,
    /// Prune MODEL first: ffn=PCT[,heads=PCT][,sparse=PCT|N:M] (see `llmc build`).
    #[arg(long, value_name = "SPEC", value_parser = crate::parse_prune)]
    prune: Option<llmc_passes::prune::PruneSpec>,
    /// Run MODEL's block-quantized linears on int8 or int16 activation blocks (see
    /// `llmc build`).
    #[arg(long, value_enum, value_name = "BITS")]
    act_quant: Option<crate::ActQuant>,
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
    if a.embeddings.is_some() {
        // An encoder: as built.
    } else if !every_position(&mut m)? {
        eprintln!(
            "llmc eval: {}: the graph returns only the last position's logits; \
             scoring one token per call",
            path.display()
        );
    }
    let reduce = match reduce {
        true => crate::Reduce::new(
            &m,
            a.quantize.clone(),
            a.prune.clone(),
            a.act_quant,
            &a.calibration,
        )?,
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
    for pass in ["prune", "quantize", "act-quant"] {
        if let Some(note) = report
            .rows
            .iter()
            .find(|r| r.pass == pass)
            .and_then(|r| r.note.as_ref())
        {
            eprintln!("llmc eval: {pass} {note}");
        }
    }
    let llm = if a.embeddings.is_some() {
        None
    } else {
        Some(llm_info(&m)?.context("llmc eval needs a language model with a tokenizer")?)
    };
    let opts = llmc_backend::BuildOptions {
        cpu: llmc_backend::CpuOptions {
            opt_level: a.opt_level,
            ..Default::default()
        },
        dump_dir: None,
        llm,
    };
    if a.embeddings.is_some() {
        // An encoder: `embed` needs its tokenizer and inputs in the plan.
        let want = llmc_backend::Want {
            object: true,
            ..Default::default()
        };
        let mut b = llmc_backend::compile_cpu(&m, &opts, want)
            .with_context(|| format!("compiling {}", path.display()))?;
        b.planned.plan.encoder = crate::encoder_info(&m)?;
        if b.planned.plan.encoder.is_none() {
            bail!(
                "--embeddings needs a sentence-embedding (encoder) model with a tokenizer; {} is not one",
                path.display()
            );
        }
        llmc_backend::link_build(&b, exe).with_context(|| format!("linking {}", path.display()))?;
    } else {
        llmc_backend::build_executable(&m, &opts, exe)
            .with_context(|| format!("compiling {}", path.display()))?;
    }
    eprintln!(
        "llmc eval: compiled {} in {:.1} s",
        path.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `exe perplexity` with the window settings and `extra` arguments.
fn measure(a: &EvalArgs, exe: &Path, extra: &[&std::ffi::OsStr]) -> Result<()> {
    let text = a.perplexity.as_ref().context("--perplexity FILE")?;
    let mut cmd = Command::new(exe);
    cmd.arg("perplexity")
        .arg("--file")
        .arg(text)
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

/// Runs `exe embed --file FILE --output OUT.npy`; returns the embeddings (rows) and
/// the seconds the executable reported.
fn embed(exe: &Path, file: &Path, out: &Path) -> Result<(Vec<Vec<f32>>, f64)> {
    let o = Command::new(exe)
        .arg("embed")
        .arg("--file")
        .arg(file)
        .arg("--output")
        .arg(out)
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    let err = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        bail!("the compiled model's embed run failed: {err}");
    }
    let secs = err
        .lines()
        .filter_map(|l| l.strip_prefix("embed: "))
        .filter_map(|l| {
            l.rsplit(", ")
                .next()?
                .strip_suffix(" s")?
                .parse::<f64>()
                .ok()
        })
        .next_back()
        .unwrap_or(f64::NAN);
    let t = crate::npy::read(out)?;
    let (rows, dim) = match t.shape[..] {
        [r, d] => (r, d),
        _ => bail!("embed wrote an array of shape {:?}", t.shape),
    };
    let v: Vec<f32> = t.to_f64().into_iter().map(|x| x as f32).collect();
    Ok((
        (0..rows)
            .map(|r| v[r * dim..(r + 1) * dim].to_vec())
            .collect(),
        secs,
    ))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(f64::MIN_POSITIVE)
}

/// `--embeddings FILE`: the cosine of each line's embedding to the reference's.
fn eval_embeddings(a: &EvalArgs, file: &Path, dir: &Path) -> Result<()> {
    let exe = dir.join("model");
    compile(a, &a.model, true, &exe)?;
    let reference = a.compare_to.as_deref().unwrap_or(&a.model);
    let ref_exe = dir.join("reference");
    compile(a, reference, false, &ref_exe)?;
    let (base, t_ref) = embed(&ref_exe, file, &dir.join("reference.npy"))?;
    let (got, t_model) = embed(&exe, file, &dir.join("model.npy"))?;
    if base.len() != got.len() {
        bail!(
            "the two models embedded {} and {} lines",
            base.len(),
            got.len()
        );
    }
    let cos: Vec<f64> = base.iter().zip(&got).map(|(x, y)| cosine(x, y)).collect();
    let n = cos.len().max(1) as f64;
    let mean = cos.iter().sum::<f64>() / n;
    let (worst, at) =
        cos.iter().enumerate().fold(
            (f64::MAX, 0),
            |(w, i), (j, &c)| if c < w { (c, j) } else { (w, i) },
        );
    println!(
        "== {}{} against {} ==",
        a.model.display(),
        label(a),
        reference.display()
    );
    println!("lines: {}", cos.len());
    println!("cosine mean: {mean:.6}");
    println!("cosine min: {worst:.6} (line {})", at + 1);
    println!(
        "embed seconds: model {t_model:.3}, reference {t_ref:.3} ({:.2}x)",
        t_ref / t_model
    );
    Ok(())
}

pub fn eval(a: &EvalArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    if let Some(file) = &a.embeddings {
        std::fs::metadata(file).with_context(|| format!("--embeddings {}", file.display()))?;
        return eval_embeddings(a, file, dir.path());
    }
    let text = a.perplexity.as_ref().context("--perplexity FILE")?;
    // Named before anything is compiled: a missing text is a quick error.
    std::fs::metadata(text).with_context(|| format!("--perplexity {}", text.display()))?;
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
