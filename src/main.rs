//! The `llmc` command-line driver: parses the command line (the contract in
//! `docs/` / DESIGN.md that scripts and tests rely on), calls into the compiler crates,
//! and turns every failure into one `error: ...` line and exit code 1.

mod budget;
mod calibrate;
mod cuda;
mod eval;
mod generate;
mod npy;
mod summary;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use llmc_ir::interp::Interpreter;
use llmc_ir::{Module, Tensor};
use llmc_runtime::sampler::SamplerConfig;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "llmc",
    version,
    about = "An ahead-of-time compiler for neural networks, LLMs first",
    long_about = "An ahead-of-time compiler for neural networks, LLMs first.\n\n\
                  MODEL is a .gguf file, a Hugging Face folder (config.json + \
                  safetensors), a .onnx file, or llmc IR text (.llmc)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compile a model into a standalone executable.
    Build(BuildArgs),
    /// Print a model as IR text, Graphviz DOT, or a summary.
    Inspect(InspectArgs),
    /// Run a model's graph on .npy inputs; writes OUTPUT_NAME.npy per graph output.
    Exec(ExecArgs),
    /// Generate text with a language model, without keeping a binary.
    Run(RunArgs),
    /// Measure a language model's perplexity over a text file (llama-perplexity's
    /// protocol) through the compiled CPU path, optionally quantized and compared with
    /// another model (KL divergence, top-1 agreement).
    Eval(eval::EvalArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    Cpu,
    Cuda,
}

/// `--act-quant`: the run-time activation blocks of block-quantized linears.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ActQuant {
    /// int16 blocks of 32 (exact to f32 noise; VNNI's `vpdpwssd`).
    Int16,
    /// int8 blocks of 32 (llama.cpp's Q8 activations; VNNI's `vpdpbusd`, twice the
    /// products per instruction).
    Int8,
    /// int8 blocks of 32 with static scales: each block's range is measured once on
    /// `--calibration FILE` (its largest |x| there) instead of at run time, and
    /// values beyond it saturate.
    #[value(name = "int8-static")]
    Int8Static,
    /// int16 blocks of 32 with static scales (calibrated ranges, as int8-static).
    #[value(name = "int16-static")]
    Int16Static,
}

impl ActQuant {
    /// The bits the `act-quant` pass gives the linears.
    pub fn bits(self) -> u8 {
        match self {
            ActQuant::Int16 | ActQuant::Int16Static => 16,
            ActQuant::Int8 | ActQuant::Int8Static => 8,
        }
    }

    /// Whether the scales are calibrated (`int8-static`, `int16-static`) rather than
    /// measured per row.
    pub fn is_static(self) -> bool {
        matches!(self, ActQuant::Int8Static | ActQuant::Int16Static)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KvDtype {
    F16,
    F32,
    /// int8 codes with one f32 scale per 64 elements of each token's head vector
    /// (`q8_kv`): 0.53x the bytes of f16.
    #[value(name = "int8", alias = "q8_kv")]
    Int8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BuildEmit {
    #[value(name = "llmc-ir")]
    LlmcIr,
    #[value(name = "llvm-ir")]
    LlvmIr,
    Asm,
    Obj,
    Ptx,
    Dot,
    Exe,
}

#[derive(Args)]
struct BuildArgs {
    /// The model to compile.
    model: PathBuf,
    /// Output file.
    #[arg(short = 'o', value_name = "OUT")]
    output: Option<PathBuf>,
    /// Code generation target.
    #[arg(long, value_enum, default_value = "cpu")]
    target: Target,
    /// CPU to compile for: native, a named CPU (x86-64-v3, znver4, ...), or portable
    /// (AVX-512, AVX2 and SSE4.2 variants, the best one chosen at start).
    #[arg(long, default_value = "native")]
    cpu: String,
    /// CUDA architecture (sm_80, sm_90).
    #[arg(long, value_name = "ARCH")]
    cuda_arch: Option<String>,
    /// Optimization level, -O0 to -O3.
    #[arg(short = 'O', value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u8).range(0..=3))]
    opt_level: u8,
    /// What to emit (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "exe")]
    emit: Vec<BuildEmit>,
    /// Write every dump (IR after each pass, .ll, .ptx) into DIR.
    #[arg(long, value_name = "DIR")]
    dump_dir: Option<PathBuf>,
    /// Print the IR after every pass.
    #[arg(long)]
    print_ir_after_all: bool,
    /// Print the IR after the named pass (repeatable).
    #[arg(long, value_name = "PASS")]
    print_ir_after: Vec<String>,
    /// Print the IR before the named pass (repeatable).
    #[arg(long, value_name = "PASS")]
    print_ir_before: Vec<String>,
    /// Print the IR after every pass that changed it.
    #[arg(long)]
    print_ir_after_change: bool,
    /// Run this pass pipeline instead of the -O level's (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "PASSES")]
    passes: Option<Vec<String>>,
    /// Report the time each pass takes.
    #[arg(long)]
    time_passes: bool,
    /// Run the verifier after every pass.
    #[arg(long)]
    verify_each: bool,
    /// After the passes, report every attention, norm or GEMM-epilogue candidate left
    /// unfused, with the nearest pattern and what blocked it.
    #[arg(long)]
    explain_fusion: bool,
    /// Report activation buffers and peak activation bytes before/after buffer reuse.
    #[arg(long)]
    report_memory: bool,
    /// Element type of the serving engine's paged KV cache (decoder LLMs).
    #[arg(long, value_enum, default_value = "f16")]
    kv_cache_dtype: KvDtype,
    /// Keep a decoder LLM in its one-sequence form (dense KV cache per layer) instead
    /// of lowering it to the engine's serving form (for comparisons).
    #[arg(long)]
    no_serving: bool,
    /// Quantize the weight matrices:
    /// FORMAT[,head=F|keep][,embed=F|keep][,awq|smooth[=A]][,gptq][,damp=F][,layerN=F|layerA-B=F]
    /// with FORMAT q8_0, q4_0, q4_1, q5_0, q5_1 (llama-quantize's mix: the output
    /// matrix in q8_0), llmc's int4 groups of 64 or 128 (q4_0_g64, q4_0_g128
    /// symmetric; q4_1_g64, q4_1_g128 with a minimum), int8 (per output channel,
    /// symmetric, in q8_0 blocks sharing each row's scale), or f16, bf16; awq, gptq and
    /// smooth (SmoothQuant's migration of activation outliers into the weights, α
    /// searched or A) need --calibration FILE.
    #[arg(long, value_name = "FORMAT", value_parser = parse_quantize)]
    quantize: Option<llmc_passes::quant::QuantSpec>,
    /// Remove structure: ffn=PCT drops that share of every MLP's hidden channels,
    /// heads=PCT that share of every attention block's query heads (the same number
    /// per kv head); both ranked, and the following projection refitted, on
    /// --calibration statistics when given. sparse=PCT or sparse=N:M (2:4) zeroes
    /// that share of each linear's rows (Wanda's |w|·‖x‖ with --calibration).
    #[arg(long, value_name = "SPEC", value_parser = parse_prune)]
    prune: Option<llmc_passes::prune::PruneSpec>,
    /// What block-quantized linears quantize their activations to at run time (per
    /// block of 32 per row): int16 (default, exact to f32 noise), int8 (llama.cpp's
    /// precision, faster batched and prefill GEMMs with AVX-512 VNNI), or int8-static /
    /// int16-static (each block's scale calibrated on --calibration FILE).
    #[arg(long, value_enum, value_name = "BITS")]
    act_quant: Option<ActQuant>,
    #[command(flatten)]
    calibration: CalibrationArgs,
    /// Where an ONNX decoder export's tokenizer files are (tokenizer.json,
    /// tokenizer_config.json, generation_config.json, config.json); default: the
    /// model's folder.
    #[arg(long, value_name = "DIR")]
    tokenizer: Option<PathBuf>,
}

/// `--calibration FILE [--calibration-tokens N]` (build and eval).
#[derive(Args, Clone, Debug)]
pub struct CalibrationArgs {
    /// A text to run the unquantized model on: `--quantize FORMAT,gptq` chooses each
    /// linear's codes to reproduce its outputs on it (GPTQ).
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,
    /// How many tokens of the calibration text to use.
    #[arg(long, value_name = "N", default_value_t = 2048)]
    calibration_tokens: usize,
    /// Choose per layer between --quantize FORMAT and a larger format (q4_1, q5_0 or
    /// q8_0): the fewest weight bytes whose measured perplexity on the calibration text
    /// stays within PCT (`1%`, or `0.01`) of the unquantized model's.
    #[arg(long, value_name = "PCT", value_parser = parse_budget)]
    accuracy_budget: Option<f64>,
}

/// `--accuracy-budget 1%` or `0.01`.
fn parse_budget(s: &str) -> Result<f64, String> {
    let v = match s.trim().strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => s.trim().parse::<f64>(),
    }
    .map_err(|_| format!("`{s}`: expected a percentage (1%) or a fraction (0.01)"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("`{s}`: the budget must be a non-negative share"));
    }
    Ok(v)
}

/// What the model is reduced by before the optimizer: `--prune`, `--quantize`, and
/// the calibration statistics they measure against (`--calibration FILE`, run on the
/// module as it is before the passes).
#[derive(Default)]
pub struct Reduce {
    quantize: Option<llmc_passes::quant::QuantSpec>,
    prune: Option<llmc_passes::prune::PruneSpec>,
    calibration: Option<std::sync::Arc<llmc_passes::quant::Calibration>>,
    /// `--act-quant`: bits of the quantized linears' run-time activation blocks.
    act_bits: Option<u8>,
    /// `--act-quant int8-static`: the blocks' scales come from the calibration.
    act_static: bool,
    /// What `--accuracy-budget` chose and measured (recorded in `./OUT info`).
    budget: Option<String>,
}

impl Reduce {
    fn new(
        m: &Module,
        quantize: Option<llmc_passes::quant::QuantSpec>,
        prune: Option<llmc_passes::prune::PruneSpec>,
        act: Option<ActQuant>,
        c: &CalibrationArgs,
    ) -> Result<Reduce> {
        let act_static = act.is_some_and(ActQuant::is_static);
        let gptq = quantize.as_ref().is_some_and(|q| q.calibrated()) || c.accuracy_budget.is_some();
        let calibration = match (&c.calibration, gptq || prune.is_some() || act_static) {
            (Some(file), true) => Some(std::sync::Arc::new(calibrate::calibrate(
                m,
                file,
                c.calibration_tokens,
            )?)),
            (None, _) if c.accuracy_budget.is_some() => {
                bail!("--accuracy-budget measures perplexity on a text: give --calibration FILE")
            }
            (None, _) if act_static => bail!(
                "--act-quant {}-static sets each activation block's scale from a text the \
                 model is run on: give --calibration FILE",
                if act.map(ActQuant::bits) == Some(8) {
                    "int8"
                } else {
                    "int16"
                }
            ),
            (None, _) if gptq => bail!(
                "--quantize {}: gptq and awq choose codes against calibration statistics; give \
                 --calibration FILE (a text the model is run on)",
                quantize.as_ref().map(|q| q.to_string()).unwrap_or_default()
            ),
            (Some(file), false) => bail!(
                "--calibration {}: only --quantize FORMAT,gptq|awq|smooth, --accuracy-budget, \
                 --prune and --act-quant int8-static|int16-static use calibration",
                file.display()
            ),
            (None, _) => None,
        };
        let mut reduce = Reduce {
            quantize,
            prune,
            calibration,
            act_bits: act.map(ActQuant::bits),
            act_static,
            budget: None,
        };
        if let (Some(pct), Some(file)) = (c.accuracy_budget, &c.calibration) {
            let (spec, note) = budget::choose(m, &reduce, pct, file, c.calibration_tokens)?;
            reduce.quantize = Some(spec);
            reduce.budget = Some(note);
        }
        Ok(reduce)
    }
}

/// `--prune ffn=PCT[,heads=PCT][,sparse=PCT|N:M]`.
fn parse_prune(s: &str) -> Result<llmc_passes::prune::PruneSpec, String> {
    llmc_passes::prune::PruneSpec::parse(s)
}

/// `--quantize FORMAT[,head=F][,embed=F]`.
fn parse_quantize(s: &str) -> Result<llmc_passes::quant::QuantSpec, String> {
    llmc_passes::quant::QuantSpec::parse(s)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum InspectEmit {
    #[value(name = "llmc-ir")]
    LlmcIr,
    Dot,
    Summary,
}

#[derive(Args)]
struct InspectArgs {
    /// The model to inspect.
    model: PathBuf,
    /// What to print.
    #[arg(long, value_enum, default_value = "llmc-ir")]
    emit: InspectEmit,
    /// Run the -O level's pass pipeline first (default: the model as imported).
    #[arg(short = 'O', value_name = "N",
          value_parser = clap::value_parser!(u8).range(0..=3))]
    opt_level: Option<u8>,
    /// Quantize first, as `llmc build --quantize` does (rounded to nearest: the
    /// calibrated options need `llmc build`): the summary then counts the bytes per
    /// format the build would store.
    #[arg(long, value_name = "FORMAT", value_parser = parse_quantize)]
    quantize: Option<llmc_passes::quant::QuantSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Engine {
    /// The reference interpreter.
    Interp,
    /// Compiled CPU code.
    Cpu,
}

#[derive(Args)]
struct ExecArgs {
    /// The model to run.
    model: PathBuf,
    /// A graph input: NAME=FILE.npy (repeat for each input).
    #[arg(long = "input", value_name = "NAME=FILE.npy", value_parser = parse_input)]
    inputs: Vec<(String, PathBuf)>,
    /// Where to write the OUTPUT_NAME.npy files.
    #[arg(long, value_name = "DIR", default_value = ".")]
    output_dir: PathBuf,
    /// What runs the graph.
    #[arg(long, value_enum, default_value = "interp")]
    engine: Engine,
    /// Optimization level: the pass pipeline (both engines) and code generation.
    #[arg(short = 'O', value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u8).range(0..=3))]
    opt_level: u8,
}

#[derive(Args)]
struct RunArgs {
    /// The language model.
    model: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Stop after this many new tokens.
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, value_name = "T", default_value_t = 0.0)]
    temperature: f32,
    /// Sample among the K most likely tokens only (0: all).
    #[arg(long, value_name = "K", default_value_t = 0)]
    top_k: usize,
    /// Sample among the most likely tokens holding probability mass P (1: all).
    #[arg(long, value_name = "P", default_value_t = 1.0)]
    top_p: f32,
    /// Penalize tokens already seen (1: off).
    #[arg(long, value_name = "R", default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Random seed.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Apply the model's chat template to the prompt (as one user message).
    #[arg(long)]
    chat: bool,
    /// What runs the model.
    #[arg(long, value_enum, default_value = "interp")]
    engine: Engine,
    /// Optimization level: the pass pipeline (both engines) and code generation.
    #[arg(short = 'O', value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u8).range(0..=3))]
    opt_level: u8,
}

fn parse_input(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => Ok((
            name.trim_start_matches('%').to_string(),
            PathBuf::from(file),
        )),
        _ => Err(format!("expected NAME=FILE.npy, got `{s}`")),
    }
}

/// Loads and verifies a model.
fn load(path: &Path) -> Result<Module> {
    let m = llmc_frontend::load(path).with_context(|| format!("loading {}", path.display()))?;
    llmc_ir::verify::verify(&m)
        .with_context(|| format!("{}: the module is invalid", path.display()))?;
    Ok(m)
}

/// An ONNX encoder export (`input_ids` [+ `attention_mask`, `token_type_ids`] -> token
/// vectors) with a `tokenizer.json` beside it (or in `tokenizer`) becomes the embedding
/// contract the HF builder emits, its sentence-transformers head read from the same
/// folder. `None` for every other model, and (with a note) for an encoder export
/// without a tokenizer: it stays a plain graph.
fn onnx_encoder(path: &Path, m: &Module, tokenizer: Option<&Path>) -> Result<Option<Module>> {
    use llmc_frontend::onnx::{decoder, encoder};
    let Some(io) = encoder::recognise(m) else {
        return Ok(None);
    };
    let dir = match tokenizer {
        Some(d) => d.to_path_buf(),
        None => match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    let info = decoder::decoder_info(&dir)
        .with_context(|| format!("reading the tokenizer files in {}", dir.display()))?;
    if info.tokenizer == llmc_ir::TokenizerSource::None {
        eprintln!(
            "note: {} is an encoder export, but {} has no tokenizer.json (--tokenizer DIR names \
             another folder): the executable runs the graph only",
            path.display(),
            dir.display()
        );
        return Ok(None);
    }
    let (pooling, normalize) = encoder::head_of(&dir).with_context(|| {
        format!(
            "reading the sentence-transformers head in {}",
            dir.display()
        )
    })?;
    let mut out = encoder::lower(m, &io, pooling, normalize)
        .map_err(|e| anyhow::anyhow!("{}: encoder export: {e}", path.display()))?;
    llmc_ir::verify::verify(&out)
        .with_context(|| format!("{}: the encoder form is invalid", path.display()))?;
    out.info = info;
    out.info
        .extra
        .insert("pooling".into(), pooling.name().into());
    out.info
        .extra
        .insert("normalize".into(), normalize.to_string());
    eprintln!(
        "note: {}: an encoder export: embeddings with {} pooling{} (`embed`, /v1/embeddings)",
        path.display(),
        pooling.name(),
        if normalize { ", normalized" } else { "" }
    );
    Ok(Some(out))
}

/// An ONNX decoder export with a KV cache (Optimum's layout: `input_ids`,
/// `past_key_values.N.*` -> `logits`, `present.N.*`) rewritten into the decoder
/// contract GGUF/HF models are built into, with its tokenizer facts read from
/// `tokenizer` or the files beside the model. `None` for every other model.
fn onnx_decoder(path: &Path, m: &Module, tokenizer: Option<&Path>) -> Result<Option<Module>> {
    use llmc_frontend::onnx::decoder;
    let is_onnx = matches!(
        llmc_frontend::detect(path),
        Ok((llmc_frontend::ModelKind::Onnx, _))
    );
    if !is_onnx {
        if let Some(t) = tokenizer {
            bail!(
                "--tokenizer {}: only ONNX models take their tokenizer from a folder",
                t.display()
            );
        }
        return Ok(None);
    }
    let Some(io) = decoder::recognise(m) else {
        return Ok(None);
    };
    let mut out = decoder::lower(m, &io)
        .map_err(|e| anyhow::anyhow!("{}: decoder export: {e}", path.display()))?;
    llmc_ir::verify::verify(&out)
        .with_context(|| format!("{}: the decoder form is invalid", path.display()))?;
    let dir = match tokenizer {
        Some(d) => d.to_path_buf(),
        None => match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    out.info = decoder::decoder_info(&dir)
        .with_context(|| format!("reading the tokenizer files in {}", dir.display()))?;
    if out.info.tokenizer == llmc_ir::TokenizerSource::None {
        eprintln!(
            "note: {} is a decoder export, but {} has no tokenizer.json (--tokenizer DIR names \
             another folder): the executable runs the graph only",
            path.display(),
            dir.display()
        );
    }
    Ok(Some(out))
}

/// Runs the optimizer: the `-O` level's pipeline, or `--passes` when given, with the
/// dump and timing instrumentation of `inst` (dumps go to stderr).
/// With `quantize`, the `quantize` pass runs first (unless `--passes` places it).
fn optimize(
    m: &mut Module,
    level: u8,
    passes: Option<&[String]>,
    reduce: &Reduce,
    inst: &llmc_passes::Instrument,
) -> Result<llmc_passes::PassReport> {
    let mut pipeline = match passes {
        Some(names) => llmc_passes::parse_pipeline(names)?,
        None => llmc_passes::pipeline_for_level(level),
    };
    if reduce.quantize.is_some() && !pipeline.iter().any(|p| p.name == "quantize") {
        pipeline.splice(0..0, llmc_passes::find_pass("quantize"));
    }
    if reduce.prune.is_some() && !pipeline.iter().any(|p| p.name == "prune") {
        pipeline.splice(0..0, llmc_passes::find_pass("prune"));
    }
    if reduce.act_bits.is_some() && !pipeline.iter().any(|p| p.name == "act-quant") {
        pipeline.extend(llmc_passes::find_pass("act-quant"));
    }
    let ctx = llmc_passes::PassContext {
        opt_level: level,
        quantize: reduce.quantize.clone(),
        prune: reduce.prune.clone(),
        calibration: reduce.calibration.clone(),
        act_bits: reduce.act_bits,
        act_static: reduce.act_static,
        ..Default::default()
    };
    let mut err = std::io::stderr().lock();
    let report = llmc_passes::run_passes(m, &pipeline, &ctx, inst, &mut err)
        .context("optimizing the module")?;
    Ok(report)
}

/// `OUT` with its extension replaced (`smollm` -> `smollm.ll`).
fn sibling(out: &Path, ext: &str) -> PathBuf {
    out.with_extension(ext)
}

/// What `generate` in an emitted executable needs: the tokenizer (as tokenizer.json
/// text), special ids, chat template and the decoder's inputs and output. `None` for
/// models without a tokenizer or that are not decoders (encoders embed, not generate).
fn llm_info(m: &Module) -> Result<Option<llmc_runtime::plan::LlmInfo>> {
    if m.info.tokenizer == llmc_ir::TokenizerSource::None {
        return Ok(None);
    }
    let Ok(io) = generate::find_io(m) else {
        return Ok(None);
    };
    let tok = generate::load_tokenizer(&m.info).context("loading the tokenizer")?;
    Ok(Some(llmc_runtime::plan::LlmInfo {
        tokenizer_json: tok.to_json().context("serialising the tokenizer")?,
        bos: tok.bos_id(),
        eos: tok.eos_ids().to_vec(),
        chat_template: tok.chat_template().map(str::to_string),
        context_length: m.info.context_length,
        ids_input: io.ids as u32,
        pos_input: io.pos as u32,
        logits_output: io.logits as u32,
        serving: None,
    }))
}

/// The serving form's contract, read off its named inputs (see
/// `llmc_passes::serving::names`).
fn serving_info(m: &Module) -> Result<llmc_runtime::plan::ServingInfo> {
    use llmc_passes::serving::names;
    let g = &m.graph;
    let input = |name: &str| -> Result<u32> {
        g.inputs
            .iter()
            .position(|&v| g.value(v).name == name)
            .map(|i| i as u32)
            .with_context(|| format!("the serving form has no input %{name}"))
    };
    let mut layers = Vec::new();
    for l in 0.. {
        let (Ok(k), Ok(v)) = (input(&names::k_pool(l)), input(&names::v_pool(l))) else {
            break;
        };
        layers.push(llmc_runtime::plan::ServingLayer {
            k_pool_input: k,
            v_pool_input: v,
        });
    }
    let first = layers.first().context("the serving form has no KV pools")?;
    let pool = g.ty(g.inputs[first.k_pool_input as usize]);
    let dim = |i: usize| -> Result<usize> {
        pool.shape
            .0
            .get(i)
            .and_then(|d| d.as_const())
            .map(|d| d as usize)
            .with_context(|| format!("pool dim {i} of {} is not constant", pool.shape))
    };
    let logits = g
        .outputs
        .iter()
        .position(|&v| g.value(v).name == names::LOGITS)
        .unwrap_or(0);
    let picks = g
        .outputs
        .iter()
        .position(|&v| g.value(v).name == names::PICKS)
        .map(|p| p as u32);
    let vocab = g
        .outputs
        .get(logits)
        .and_then(|&v| g.ty(v).shape.0.last().and_then(|d| d.as_const()))
        .context("the logits' vocabulary dim is not constant")? as usize;
    Ok(llmc_runtime::plan::ServingInfo {
        block_size: dim(2)?,
        kv_dtype: llmc_backend::plan::elem_type(pool.dtype),
        kv_heads: dim(1)?,
        head_dim: dim(3)?,
        vocab,
        ids_input: input(names::IDS)?,
        pos_input: input(names::POS)?,
        slots_input: input(names::SLOTS)?,
        row_seq_input: input(names::ROW_SEQ)?,
        block_tables_input: input(names::BLOCK_TABLES)?,
        logit_rows_input: input(names::LOGIT_ROWS)?,
        logits_output: logits as u32,
        picks_output: picks,
        layers,
    })
}

/// What `embed` in an emitted executable needs: the tokenizer and the encoder's inputs
/// (`%ids`, optional `%mask` and `%pos`, nothing else) and its f32 `[batch, dim]`
/// output (`%embedding`, or the only output). `None` for models without a tokenizer
/// and for graphs of another shape.
fn encoder_info(m: &Module) -> Result<Option<llmc_runtime::plan::EncoderInfo>> {
    if m.info.tokenizer == llmc_ir::TokenizerSource::None || generate::find_io(m).is_ok() {
        return Ok(None);
    }
    let g = &m.graph;
    let (mut ids, mut mask, mut pos) = (None, None, None);
    for (k, &v) in g.inputs.iter().enumerate() {
        let val = g.value(v);
        if val.ty.dtype != llmc_ir::DType::I64 || val.ty.shape.rank() != 2 {
            return Ok(None);
        }
        let slot = match val.name.as_str() {
            "ids" => &mut ids,
            "mask" => &mut mask,
            "pos" => &mut pos,
            _ => return Ok(None),
        };
        *slot = Some(k as u32);
    }
    let Some(ids_input) = ids else {
        return Ok(None);
    };
    let is_embedding = |v: &llmc_ir::ValueId| {
        let t = &g.value(*v).ty;
        t.dtype == llmc_ir::DType::F32 && t.shape.rank() == 2
    };
    let out = g
        .outputs
        .iter()
        .position(|v| g.value(*v).name == "embedding")
        .or(if g.outputs.len() == 1 { Some(0) } else { None });
    let Some(out) = out.filter(|&k| g.outputs.get(k).is_some_and(is_embedding)) else {
        return Ok(None);
    };
    let tok = generate::load_tokenizer(&m.info).context("loading the tokenizer")?;
    Ok(Some(llmc_runtime::plan::EncoderInfo {
        tokenizer_json: tok.to_json().context("serialising the tokenizer")?,
        context_length: m.info.context_length,
        ids_input,
        mask_input: mask,
        pos_input: pos,
        embedding_output: out as u32,
    }))
}

fn build(a: &BuildArgs) -> Result<()> {
    if a.target != Target::Cuda && (a.cuda_arch.is_some() || a.emit.contains(&BuildEmit::Ptx)) {
        bail!("--cuda-arch and --emit ptx need --target cuda");
    }
    let t0 = Instant::now();
    let mut m = load(&a.model)?;
    let onnx_llm = match onnx_decoder(&a.model, &m, a.tokenizer.as_deref())? {
        Some(d) => {
            m = d;
            true
        }
        None => {
            if let Some(e) = onnx_encoder(&a.model, &m, a.tokenizer.as_deref())? {
                m = e;
            }
            false
        }
    };
    let inst = llmc_passes::Instrument {
        verify_each: a.verify_each,
        print_before: a.print_ir_before.clone(),
        print_after: a.print_ir_after.clone(),
        print_after_all: a.print_ir_after_all,
        print_after_change: a.print_ir_after_change,
        dump_dir: a.dump_dir.clone(),
    };
    // Parameters of the model as imported (folding may add weights it derives).
    let params: i64 = m
        .weights
        .iter()
        .filter_map(|w| w.shape.checked_numel().and_then(|d| d.as_const()))
        .sum();
    let reduce = Reduce::new(
        &m,
        a.quantize.clone(),
        a.prune.clone(),
        a.act_quant,
        &a.calibration,
    )?;
    let report = optimize(&mut m, a.opt_level, a.passes.as_deref(), &reduce, &inst)?;
    if a.time_passes {
        eprint!("{report}");
    }
    // An ONNX decoder exported without its KV cache: the cached step is derived from
    // the attention -O3 fused (K/V appended to the cache before each attention).
    if onnx_llm && !m.graph.nodes.iter().any(|n| n.op == llmc_ir::Op::KvAppend) {
        m = llmc_passes::kv_derive::derive(&m).map_err(|e| {
            anyhow::anyhow!(
                "{}: a decoder export without past_key_values: deriving its KV-cached step: {e}",
                a.model.display()
            )
        })?;
        llmc_ir::verify::verify(&m).with_context(|| {
            format!(
                "{}: the derived KV-cached step is invalid",
                a.model.display()
            )
        })?;
    }
    // A decoder LLM becomes the engine's step function (its tokenizer facts are read
    // from the one-sequence form first).
    let mut llm = if a.emit.contains(&BuildEmit::Exe) {
        llm_info(&m)?
    } else {
        None
    };
    let is_decoder = m.graph.nodes.iter().any(|n| n.op == llmc_ir::Op::KvAppend)
        && generate::find_io(&m).is_ok();
    // An ONNX export's attention becomes one op only through -O3's rules; below that
    // the serving form cannot be made, and the one-sequence form is built instead.
    let serving = is_decoder && !a.no_serving && (a.opt_level >= 3 || !onnx_llm);
    if is_decoder && !a.no_serving && !serving {
        eprintln!(
            "note: {}: the engine's serving form needs -O3 for ONNX exports (attention fused into \
             one op); building the one-sequence form (`generate` works, `serve` needs -O3)",
            a.model.display()
        );
    }
    if serving {
        let kv = match a.kv_cache_dtype {
            KvDtype::F16 => llmc_ir::DType::F16,
            KvDtype::F32 => llmc_ir::DType::F32,
            KvDtype::Int8 => llmc_ir::DType::Q8Kv,
        };
        let t = Instant::now();
        m = llmc_passes::serving::lower(&m, kv, a.target != Target::Cuda)
            .map_err(|e| anyhow::anyhow!("lowering to the serving form: {e}"))?;
        // On a GPU the greedy picks are computed beside the logits, so a step whose
        // sampled rows are all greedy copies back ids, not logits (docs/cuda.md).
        if a.target == Target::Cuda {
            llmc_passes::serving::add_picks(&mut m)
                .map_err(|e| anyhow::anyhow!("the serving form's greedy picks: {e}"))?;
        }
        if a.time_passes {
            eprintln!(
                "serving form: {:.1} ms, {} nodes, kv cache {}",
                t.elapsed().as_secs_f64() * 1e3,
                m.graph.nodes.len(),
                kv
            );
        }
        if let Some(l) = llm.as_mut() {
            l.serving = Some(serving_info(&m)?);
        }
    }
    if a.explain_fusion {
        // Candidates are read on the program as the rules left it: fused elementwise
        // loops are expanded back into their ops first.
        let left = llmc_passes::egraph::explain(&llmc_passes::fuse_elementwise::unfuse(&m));
        for e in &left {
            eprintln!("explain-fusion: {e}");
        }
        let count = |op: llmc_ir::Op| m.graph.nodes.iter().filter(|n| n.op == op).count();
        eprintln!(
            "explain-fusion: {} candidate(s) left unfused; fused ops: {} flash_attention, {} paged_attention, {} rms_norm, {} layer_norm, {} linear, {} linear_act, {} glu, {} rope, {} fused_elementwise",
            left.len(),
            count(llmc_ir::Op::FlashAttention),
            count(llmc_ir::Op::PagedAttention),
            count(llmc_ir::Op::RmsNorm),
            count(llmc_ir::Op::LayerNorm),
            count(llmc_ir::Op::Linear),
            count(llmc_ir::Op::LinearAct),
            count(llmc_ir::Op::Glu),
            count(llmc_ir::Op::Rope),
            count(llmc_ir::Op::FusedElementwise),
        );
    }
    let out = match &a.output {
        Some(o) => o.clone(),
        None => PathBuf::from(
            a.model
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into()),
        ),
    };
    let opts = llmc_backend::BuildOptions {
        cpu: llmc_backend::CpuOptions {
            opt_level: a.opt_level,
            cpu: a.cpu.clone(),
            ..Default::default()
        },
        dump_dir: a.dump_dir.clone(),
        llm,
    };
    let has = |e: BuildEmit| a.emit.contains(&e);
    if has(BuildEmit::LlmcIr) {
        let p = sibling(&out, "llmc");
        std::fs::write(&p, llmc_ir::text::print(&m))
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    if has(BuildEmit::Dot) {
        let p = sibling(&out, "dot");
        std::fs::write(&p, llmc_ir::dot::to_dot(&m))
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    if a.target == Target::Cuda {
        return cuda::build(a, &m, &out, t0, opts.llm);
    }
    let want = llmc_backend::Want {
        llvm_ir: has(BuildEmit::LlvmIr),
        asm: has(BuildEmit::Asm),
        object: has(BuildEmit::Obj) || has(BuildEmit::Exe),
    };
    if !(want.llvm_ir || want.asm || want.object) && a.dump_dir.is_none() {
        return Ok(());
    }
    let mut b = llmc_backend::compile_cpu(&m, &opts, want)
        .with_context(|| format!("compiling {}", a.model.display()))?;
    if has(BuildEmit::Exe) {
        b.planned.plan.encoder = encoder_info(&m)?;
    }
    let source = a.model.file_name().map_or_else(
        || a.model.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    b.planned.plan.info.extend([
        ("source".to_string(), source),
        (
            "architecture".to_string(),
            if m.info.architecture.is_empty() {
                "(plain graph)".to_string()
            } else {
                m.info.architecture.clone()
            },
        ),
        ("parameters".to_string(), params.to_string()),
    ]);
    let wrote = |ext: &str, bytes: Option<&[u8]>| -> Result<()> {
        if let Some(bytes) = bytes {
            let p = sibling(&out, ext);
            std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
            eprintln!("wrote {}", p.display());
        }
        Ok(())
    };
    if has(BuildEmit::LlvmIr) {
        wrote("ll", b.compiled.postopt_ll.as_deref().map(str::as_bytes))?;
    }
    if has(BuildEmit::Asm) {
        wrote("s", b.compiled.asm.as_deref().map(str::as_bytes))?;
    }
    if has(BuildEmit::Obj) {
        wrote("o", b.compiled.object.as_deref())?;
    }
    if a.time_passes || a.report_memory {
        eprint!("{}", b.planned.memory);
    }
    let mem = &b.planned.memory;
    let peak: Vec<String> = mem
        .bytes
        .iter()
        .map(|(bind, _, _, after)| format!("{bind}: {after} B"))
        .collect();
    let info = &mut b.planned.plan.info;
    let names = report.pass_names();
    info.push((
        "passes".into(),
        if names.is_empty() {
            "none".into()
        } else {
            names
        },
    ));
    // What the weights were reduced by: the spec a rebuild takes, and a budget's choice.
    if let Some(q) = &reduce.quantize {
        info.push(("quantize".into(), q.to_string()));
    }
    if let Some(p) = &reduce.prune {
        info.push(("prune".into(), p.to_string()));
    }
    if let Some(bits) = reduce.act_bits {
        let kind = if reduce.act_static { "-static" } else { "" };
        info.push(("act_quant".into(), format!("int{bits}{kind}")));
    }
    if let Some(n) = &reduce.budget {
        info.push(("accuracy_budget".into(), n.clone()));
    }
    info.push((
        "activation_buffers".into(),
        format!("{} (from {})", mem.buffers_after, mem.buffers_before),
    ));
    info.push(("peak_activation_bytes".into(), peak.join(", ")));
    if has(BuildEmit::Exe) {
        llmc_backend::link_build(&b, &out).with_context(|| format!("linking {}", out.display()))?;
        let size = std::fs::metadata(&out).map(|md| md.len()).unwrap_or(0);
        eprintln!(
            "llmc build: wrote {} ({} kernels, {:.1} MB) in {:.2} s",
            out.display(),
            b.planned.kernels.len(),
            size as f64 / 1e6,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn inspect(a: &InspectArgs) -> Result<()> {
    let mut m = load(&a.model)?;
    if let Some(q) = a.quantize.as_ref().filter(|q| q.calibrated()) {
        bail!("--quantize {q}: gptq, awq and smooth need calibration; use `llmc build` or `llmc eval`");
    }
    if a.opt_level.is_some() || a.quantize.is_some() {
        let reduce = Reduce {
            quantize: a.quantize.clone(),
            ..Reduce::default()
        };
        optimize(
            &mut m,
            a.opt_level.unwrap_or(0),
            None,
            &reduce,
            &llmc_passes::Instrument::default(),
        )?;
    }
    let text = match a.emit {
        InspectEmit::LlmcIr => llmc_ir::text::print(&m),
        InspectEmit::Dot => llmc_ir::dot::to_dot(&m),
        InspectEmit::Summary => summary::summary(&m),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn exec(a: &ExecArgs) -> Result<()> {
    let mut m = load(&a.model)?;
    optimize(
        &mut m,
        a.opt_level,
        None,
        &Reduce::default(),
        &llmc_passes::Instrument::default(),
    )?;
    let g = &m.graph;

    let mut given = BTreeMap::<&str, &Path>::new();
    for (name, file) in &a.inputs {
        if given.insert(name, file).is_some() {
            bail!("--input {name}: given more than once");
        }
    }
    let signature = || {
        g.inputs
            .iter()
            .map(|&v| format!("{}: {}", g.value(v).name, g.value(v).ty))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let missing: Vec<&str> = g
        .inputs
        .iter()
        .map(|&v| g.value(v).name.as_str())
        .filter(|n| !given.contains_key(n))
        .collect();
    let extra: Vec<&str> = given
        .keys()
        .copied()
        .filter(|n| !g.inputs.iter().any(|&v| g.value(v).name == *n))
        .collect();
    if !extra.is_empty() {
        bail!(
            "unknown input(s) {}: the graph takes ({})",
            extra.join(", "),
            signature()
        );
    }
    if !missing.is_empty() {
        bail!(
            "missing input(s) {}: the graph takes ({}); give each as --input NAME=FILE.npy",
            missing.join(", "),
            signature()
        );
    }

    let mut inputs: Vec<Tensor> = Vec::with_capacity(g.inputs.len());
    for &v in &g.inputs {
        let val = g.value(v);
        let file = given
            .get(val.name.as_str())
            .with_context(|| format!("input {} has no file", val.name))?;
        let t = npy::read(file).with_context(|| format!("input {}", val.name))?;
        if t.dtype != val.ty.dtype {
            bail!(
                "input {}: {} holds {} data, the graph input is {}",
                val.name,
                file.display(),
                t.dtype,
                val.ty
            );
        }
        inputs.push(t);
    }

    let t0 = Instant::now();
    let outs = match a.engine {
        Engine::Interp => Interpreter::new(&m).run(&inputs).with_context(|| {
            format!(
                "running {} with the reference interpreter",
                a.model.display()
            )
        })?,
        Engine::Cpu => {
            let opts = llmc_backend::BuildOptions {
                cpu: llmc_backend::CpuOptions {
                    opt_level: a.opt_level,
                    ..Default::default()
                },
                dump_dir: None,
                llm: None,
            };
            let mut outs = llmc_backend::run::run_compiled(&m, &opts, &[inputs])
                .with_context(|| format!("running {} compiled for the CPU", a.model.display()))?;
            outs.pop().context("the compiled run returned nothing")?
        }
    };
    eprintln!("llmc exec: ran in {:.3} s", t0.elapsed().as_secs_f64());

    std::fs::create_dir_all(&a.output_dir)
        .with_context(|| format!("cannot create --output-dir {}", a.output_dir.display()))?;
    for (&v, t) in g.outputs.iter().zip(&outs) {
        let name = &g.value(v).name;
        let path = a.output_dir.join(format!("{name}.npy"));
        npy::write(&path, t).with_context(|| format!("output {name}"))?;
        eprintln!("wrote {} ({}{:?})", path.display(), t.dtype, t.shape);
    }
    Ok(())
}

fn run(a: &RunArgs) -> Result<()> {
    let t0 = Instant::now();
    let mut m = load(&a.model)?;
    if let Some(d) = onnx_decoder(&a.model, &m, None)? {
        m = d;
    }
    optimize(
        &mut m,
        a.opt_level,
        None,
        &Reduce::default(),
        &llmc_passes::Instrument::default(),
    )?;
    if a.engine == Engine::Cpu {
        return run_compiled(a, &m);
    }
    let load_secs = t0.elapsed().as_secs_f64();
    let opts = generate::GenerateOptions {
        prompt: a.prompt.clone(),
        chat: a.chat,
        max_tokens: a.max_tokens,
        sampler: SamplerConfig {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            repetition_penalty: a.repetition_penalty,
            seed: a.seed,
            ..Default::default()
        },
    };
    generate::run(&m, &opts, load_secs).with_context(|| format!("llmc run {}", a.model.display()))
}

/// `llmc run --engine cpu`: builds the executable in a temporary folder and runs its
/// `generate` command with the same settings (its text goes straight to stdout).
fn run_compiled(a: &RunArgs, m: &Module) -> Result<()> {
    generate::find_io(m)?;
    let llm = llm_info(m)?.context("llmc run needs a language model with a tokenizer")?;
    SamplerConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
        ..Default::default()
    }
    .validate()?;
    let t0 = Instant::now();
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let exe = dir.path().join("model");
    let opts = llmc_backend::BuildOptions {
        cpu: llmc_backend::CpuOptions {
            opt_level: a.opt_level,
            ..Default::default()
        },
        dump_dir: None,
        llm: Some(llm),
    };
    llmc_backend::build_executable(m, &opts, &exe)
        .with_context(|| format!("compiling {}", a.model.display()))?;
    eprintln!(
        "llmc run: compiled {} in {:.2} s; engine cpu",
        a.model.display(),
        t0.elapsed().as_secs_f64()
    );
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("generate")
        .arg("--prompt")
        .arg(&a.prompt)
        .arg("--max-tokens")
        .arg(a.max_tokens.to_string())
        .arg("--temperature")
        .arg(a.temperature.to_string())
        .arg("--top-k")
        .arg(a.top_k.to_string())
        .arg("--top-p")
        .arg(a.top_p.to_string())
        .arg("--repetition-penalty")
        .arg(a.repetition_penalty.to_string())
        .arg("--seed")
        .arg(a.seed.to_string());
    if a.chat {
        cmd.arg("--chat");
    }
    let status = cmd
        .status()
        .with_context(|| format!("running {}", exe.display()))?;
    if !status.success() {
        bail!("the compiled model failed ({status})");
    }
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::Build(a) => build(a),
        Cmd::Inspect(a) => inspect(a),
        Cmd::Exec(a) => exec(a),
        Cmd::Run(a) => run(a),
        Cmd::Eval(a) => eval::eval(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `llmc inspect M | head`: the reader left; that is not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
