//! The emitted executable's command line (its `main` is a thin shim in `runtime/exe`
//! that passes in the kernel table). Commands:
//!
//! ```text
//! ./OUT generate --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K] [--top-p P]
//!                [--repetition-penalty R] [--seed S] [--chat]
//! ./OUT embed --text TEXT [--text TEXT]... [--output FILE.npy]
//! ./OUT run [--input NAME=FILE.npy]... [--output-dir DIR] [--then [--input ...]... [--output-dir DIR]]...
//! ./OUT perplexity --file TEXT [--ctx 512] [--chunks N] [--dump-logits FILE] [--kl-base FILE]
//! ./OUT serve [--host 127.0.0.1] [--port 8080] [--api-key KEY] [--max-seqs N] ...
//! ./OUT info
//! ./OUT bench [--prompt-tokens N] [--gen-tokens N] [--threads N] [--repeat R] [--bandwidth]
//! ```
//!
//! `run` executes the graph once per group (groups are separated by `--then`; the KV
//! cache carries over from one group to the next) and writes `DIR/NAME.npy` per graph
//! output. `generate` streams text from a language model (greedy at `--temperature 0`,
//! the default). `embed` prints sentence embeddings from an encoder model (see
//! [`crate::embed`]). `perplexity` measures a language model on a text file as
//! llama.cpp's `llama-perplexity` does (see [`crate::eval`]). `bench` times prefill
//! and decode (see [`crate::bench`]). `serve` runs the OpenAI-compatible HTTP server
//! on the engine (see [`crate::server`]).

use crate::abi::KernelTable;
use crate::exec::{HostTensor, Model};
use crate::plan::Plan;
use crate::{npy, payload};
use std::io::Write;
use std::path::PathBuf;

const USAGE: &str = "usage:
  generate --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K] [--top-p P]
           [--repetition-penalty R] [--seed S] [--chat]            generate text
           [--prompt TEXT]... [--one-at-a-time]    several prompts at once: JSON lines
           [--kv-cache-mb N | --max-context N] [--max-seqs N] [--max-batch-tokens N]
                                                  engine limits
  embed --text TEXT [--text TEXT]... [--output FILE.npy]          sentence embeddings
  run [--input NAME=FILE.npy]... [--output-dir DIR] [--then ...]   run the graph
  perplexity --file TEXT [--ctx 512] [--chunks N] [--dump-logits FILE] [--kl-base FILE]
                                          perplexity (llama-perplexity protocol), KL divergence
  serve [--host H] [--port P] [--api-key KEY] [--max-seqs N] [--max-batch-tokens N]
        [--kv-cache-mb N | --max-context N] [--cors-origin O] [--max-body-bytes N]
        [--model-name NAME]
        [--threads N]                          OpenAI-compatible HTTP server
  info                                                             describe the model
  bench [--prompt-tokens N] [--gen-tokens N] [--threads N] [--repeat R] [--bandwidth]
        [--concurrency N] [--shared-prefix K] [engine limits]
                                          prefill/decode tok/s, time to first token,
                                          aggregate tok/s, TTFT/TPOT percentiles";

fn parse_generate(args: &[String]) -> Result<crate::generate::GenerateOptions, String> {
    let mut o = crate::generate::GenerateOptions {
        prompt: String::new(),
        chat: false,
        max_tokens: 128,
        sampler: crate::sampler::SamplerConfig::default(),
        more_prompts: Vec::new(),
        one_at_a_time: false,
    };
    let mut prompt = None;
    let mut it = args.iter();
    fn num<T: std::str::FromStr>(flag: &str, v: Option<&String>) -> Result<T, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse()
            .map_err(|_| format!("{flag} {v}: not a valid number"))
    }
    while let Some(a) = it.next() {
        match a.as_str() {
            "--prompt" | "-p" => {
                let t = it.next().ok_or("--prompt needs text")?.clone();
                if prompt.is_none() {
                    prompt = Some(t);
                } else {
                    o.more_prompts.push(t);
                }
            }
            "--one-at-a-time" => o.one_at_a_time = true,
            "--max-tokens" | "-n" => o.max_tokens = num(a, it.next())?,
            "--temperature" => o.sampler.temperature = num(a, it.next())?,
            "--top-k" => o.sampler.top_k = num(a, it.next())?,
            "--top-p" => o.sampler.top_p = num(a, it.next())?,
            "--repetition-penalty" => o.sampler.repetition_penalty = num(a, it.next())?,
            "--seed" => o.sampler.seed = num(a, it.next())?,
            "--chat" => o.chat = true,
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    o.prompt = prompt.ok_or_else(|| format!("generate needs --prompt TEXT\n{USAGE}"))?;
    // Out-of-range settings are named by their flag, before the model loads.
    o.sampler.validate().map_err(|e| match &e {
        crate::sampler::SamplerError::Setting { name, .. } => {
            format!("--{}: {e}", name.replace('_', "-"))
        }
        _ => e.to_string(),
    })?;
    Ok(o)
}

/// One `run` group.
#[derive(Debug, Default, PartialEq)]
struct Group {
    inputs: Vec<(String, PathBuf)>,
    out_dir: Option<PathBuf>,
}

fn parse_run(args: &[String]) -> Result<Vec<Group>, String> {
    let mut groups = vec![Group::default()];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let g = groups.last_mut().ok_or("no group")?;
        match a.as_str() {
            "--input" | "-i" => {
                let v = it.next().ok_or("--input needs NAME=FILE.npy")?;
                let (n, f) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--input {v}: expected NAME=FILE.npy"))?;
                g.inputs
                    .push((n.trim_start_matches('%').to_string(), PathBuf::from(f)));
            }
            "--output-dir" | "-o" => {
                let v = it.next().ok_or("--output-dir needs a folder")?;
                g.out_dir = Some(PathBuf::from(v));
            }
            "--then" => groups.push(Group::default()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(groups)
}

fn run_groups(model: &mut Model, groups: &[Group]) -> Result<(), String> {
    for (gi, g) in groups.iter().enumerate() {
        let plan = model.plan();
        let mut inputs: Vec<Option<HostTensor>> = vec![None; plan.inputs.len()];
        for (name, path) in &g.inputs {
            let k = plan
                .inputs
                .iter()
                .position(|i| &i.name == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = plan.inputs.iter().map(|i| i.name.as_str()).collect();
                    format!(
                        "the graph has no input `{name}` (inputs: {})",
                        names.join(", ")
                    )
                })?;
            let bytes =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let t = npy::read(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            inputs[k] = Some(t);
        }
        let inputs: Vec<HostTensor> = inputs
            .into_iter()
            .enumerate()
            .map(|(k, t)| {
                t.ok_or_else(|| {
                    format!(
                        "input `{}` is not given (--input {}=FILE.npy)",
                        plan.inputs[k].name, plan.inputs[k].name
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let names: Vec<String> = plan.outputs.iter().map(|o| o.name.clone()).collect();
        let t0 = std::time::Instant::now();
        let outs = model.run(&inputs).map_err(|e| e.to_string())?;
        let secs = t0.elapsed().as_secs_f64();
        let dir = g.out_dir.clone().unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for (name, t) in names.iter().zip(&outs) {
            let p = dir.join(output_file_name(name));
            let b = npy::write(t).map_err(|e| format!("output `{name}`: {e}"))?;
            std::fs::write(&p, b).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        }
        eprintln!(
            "run {}: {:.3} ms, wrote {} output(s) to {}",
            gi + 1,
            secs * 1e3,
            outs.len(),
            dir.display()
        );
    }
    Ok(())
}

/// The file `run` writes an output to: `NAME.npy`, with characters other than
/// `[A-Za-z0-9_.-]` replaced by `_` (and a leading `.` too, so no name escapes the
/// folder or hides).
pub fn output_file_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with('.') || s.is_empty() {
        s.insert(0, '_');
    }
    s + ".npy"
}

/// Byte sizes of the executable's parts.
struct Sizes {
    /// Code and the runtime (everything before the payload).
    code: usize,
    /// The plan (JSON).
    plan: usize,
    /// The data section (weights and constants).
    data: usize,
    /// The whole file.
    file: usize,
}

fn mib(n: usize) -> String {
    format!("{n} bytes ({:.1} MiB)", n as f64 / (1024.0 * 1024.0))
}

fn info(plan: &Plan, sizes: &Sizes, variant: &Result<usize, String>) {
    println!("model: {}", plan.name);
    for (k, v) in &plan.info {
        println!("{k}: {v}");
    }
    let show = |io: &crate::plan::IoDecl| {
        let d: Vec<String> = io.shape.iter().map(|p| p.show(&plan.symbols)).collect();
        format!("%{}: {}[{}]", io.name, io.dtype.name(), d.join(", "))
    };
    for i in &plan.inputs {
        println!("input {}", show(i));
    }
    for o in &plan.outputs {
        println!("output {}", show(o));
    }
    if let Some(llm) = &plan.llm {
        println!(
            "language model: context {}, bos {:?}, eos {:?}, chat template: {}",
            llm.context_length
                .map_or("unknown".to_string(), |c| c.to_string()),
            llm.bos,
            llm.eos,
            if llm.chat_template.is_some() {
                "yes"
            } else {
                "no"
            }
        );
    }
    if let Some(s) = plan.llm.as_ref().and_then(|l| l.serving.as_ref()) {
        let ty = match s.kv_dtype {
            crate::plan::ElemType::Block {
                block_len,
                block_bytes,
            } => format!("blocks of {block_len} in {block_bytes} bytes"),
            t => t.name().to_string(),
        };
        println!(
            "kv cache: {ty}; {} layers x {} kv heads x {} dims, {}-token blocks, {} bytes per token",
            s.layers.len(),
            s.kv_heads,
            s.head_dim,
            s.block_size,
            crate::engine::step::CompiledStep::bytes_per_token(s)
        );
    }
    if let Some(req) = &plan.cpu {
        println!(
            "cpu features: {} (built for {})",
            if req.features.is_empty() {
                "baseline x86-64".to_string()
            } else {
                req.features.join(", ")
            },
            req.built_for
        );
        let lacking = crate::cpu::missing(&req.features);
        if lacking.is_empty() {
            println!("cpu check: this CPU has them all");
        } else {
            println!("cpu check: this CPU lacks {}", lacking.join(", "));
        }
    }
    for (i, v) in plan.cpu_variants.iter().enumerate() {
        let lacking = crate::cpu::missing(&v.features);
        println!(
            "cpu variant {i}: {} ({}){}",
            v.built_for,
            if v.features.is_empty() {
                "baseline x86-64".to_string()
            } else {
                v.features.join(", ")
            },
            if variant.as_ref().ok() == Some(&i) {
                " -- chosen".to_string()
            } else if lacking.is_empty() {
                String::new()
            } else {
                format!(" -- this CPU lacks {}", lacking.join(", "))
            }
        );
    }
    if let Err(e) = variant {
        println!("cpu variant: none runs here: {e}");
    }
    if let Some(g) = &plan.gpu {
        let archs: Vec<&str> = g.modules.iter().map(|m| m.arch.as_str()).collect();
        println!("target: cuda; PTX for {}", archs.join(", "));
        let cubins: Vec<&str> = g
            .modules
            .iter()
            .filter(|m| m.cubin_base64.is_some())
            .map(|m| m.arch.as_str())
            .collect();
        if !cubins.is_empty() {
            println!("cubins (ptxas at build time) for {}", cubins.join(", "));
        }
        for m in &g.modules {
            for ((e, l), r) in m
                .entries
                .iter()
                .zip(&g.launches)
                .zip(m.ptxas.iter().map(Some).chain(std::iter::repeat(None)))
            {
                let regs = r.map_or("ptxas: not run".to_string(), |(regs, shared, spill)| {
                    format!("{regs} registers, {shared} B shared, {spill} B spilled")
                });
                println!(
                    "  {} {e}: {}x{}x{} threads; {regs}",
                    m.arch, l.block[0], l.block[1], l.block[2]
                );
            }
        }
        for line in crate::cuda::decode_estimate(plan) {
            println!("decode estimate, one sequence, {line}");
        }
        if crate::cuda::driver_present() {
            match crate::cuda::Device::open() {
                Ok(d) => println!(
                    "gpu: {} (compute capability {}.{}, {} SMs, {}); runs {}",
                    d.name,
                    d.capability / 10,
                    d.capability % 10,
                    d.sms,
                    mib(d.memory),
                    match g.modules.iter().rfind(|m| m.cubin_runs_on(d.capability)) {
                        Some(m) => format!("the {} cubin", m.arch),
                        None => "PTX compiled by the driver".to_string(),
                    }
                ),
                Err(e) => println!("gpu: none usable: {e}"),
            }
        } else {
            println!("gpu: {}", crate::cuda::NO_DRIVER);
        }
    }
    println!("kernels: {}", plan.kernels.len());
    println!("steps: {}", plan.steps.len());
    println!(
        "kind: {}",
        if plan.llm.is_some() {
            "language model (generate)"
        } else if plan.encoder.is_some() {
            "sentence embedding model (embed)"
        } else {
            "graph (run)"
        }
    );
    println!("size: {}", mib(sizes.file));
    println!("code: {}", mib(sizes.code));
    println!("plan: {}", mib(sizes.plan));
    println!("data: {}", mib(sizes.data));
    println!("threads: {}", crate::pool::num_threads());
    let _ = std::io::stdout().flush();
}

/// The executable's entry: returns the process exit code.
pub fn main(args: Vec<String>, tables: &[&KernelTable]) -> i32 {
    match real_main(args, tables) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// The engine settings every engine-backed command takes (`--kv-cache-mb`,
/// `--max-context`, `--max-seqs`, `--max-batch-tokens`), removed from `args`. The MiB
/// are 0 when `--kv-cache-mb` is not given (the engine then sizes the pool from
/// `--max-context`, or takes its default).
pub fn take_engine_flags(
    args: &mut Vec<String>,
) -> Result<(usize, crate::engine::EngineConfig), String> {
    let mut cfg = crate::engine::EngineConfig::default();
    let mut mb = 0usize;
    let mut rest = Vec::new();
    let mut it = std::mem::take(args).into_iter();
    let num = |flag: &str, v: Option<String>| -> Result<usize, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{flag} {v}: expected a positive whole number")),
        }
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--kv-cache-mb" => mb = num(&a, it.next())?,
            "--max-context" => cfg.max_context = Some(num(&a, it.next())?),
            "--max-seqs" => cfg.max_seqs = num(&a, it.next())?,
            "--max-batch-tokens" => cfg.max_batch_tokens = num(&a, it.next())?,
            _ => rest.push(a),
        }
    }
    *args = rest;
    Ok((mb, cfg))
}

fn real_main(args: Vec<String>, tables: &[&KernelTable]) -> Result<(), String> {
    let map = payload::map_self()?;
    // The engine thread borrows the weights for the life of the process.
    let map: &'static memmap2::Mmap = Box::leak(Box::new(map));
    let (plan_bytes, data) = payload::locate(map)?;
    let sizes = Sizes {
        code: (plan_bytes.as_ptr() as usize).saturating_sub(map.as_ptr() as usize),
        plan: plan_bytes.len(),
        data: data.len(),
        file: map.len(),
    };
    let mut plan = Plan::from_json(plan_bytes)?;
    // A portable build: the variant this CPU runs (or why none does), whose
    // requirement the start-up check below then applies.
    let variant = if plan.cpu_variants.is_empty() {
        Ok(0)
    } else {
        crate::cpu::choose(&plan.cpu_variants)
    };
    if let Ok(i) = variant {
        if let Some(v) = plan.cpu_variants.get(i) {
            plan.cpu = Some(v.clone());
        }
    }
    let table = *variant
        .as_ref()
        .ok()
        .and_then(|&i| tables.get(i))
        .or(tables.last())
        .ok_or("this executable holds no kernel table")?;
    // SAFETY: the table is one the generated object exports.
    let kernels = unsafe { table.kernels() };
    let cmd = args.get(1).map(String::as_str).unwrap_or("help");
    let mut rest_v: Vec<String> = args.get(2..).unwrap_or(&[]).to_vec();
    let serving = plan.llm.as_ref().is_some_and(|l| l.serving.is_some());
    let engine_flags = if serving && matches!(cmd, "generate" | "bench" | "serve" | "perplexity") {
        Some(take_engine_flags(&mut rest_v)?)
    } else {
        None
    };
    let rest = &rest_v[..];
    // `./OUT bench --help`: the usage (only as the first argument, so `--prompt -h` is
    // still a prompt).
    if rest.first().is_some_and(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    // Before any kernel runs: the CPU must have what the code was built for. `info`
    // and `help` still work (they run no kernel), so users can see what was built.
    if !matches!(cmd, "info" | "help" | "--help" | "-h") {
        if plan.gpu.is_some() {
            if !crate::cuda::driver_present() {
                return Err(crate::cuda::NO_DRIVER.into());
            }
            if engine_flags.is_none() {
                return Err(format!(
                    "`{cmd}` does not run on the GPU yet: a --target cuda executable runs language models' generate, bench, perplexity and serve"
                ));
            }
        }
        variant.clone()?;
        if let Some(req) = &plan.cpu {
            crate::cpu::check(req)?;
        }
    }
    match cmd {
        "run" => {
            let groups = parse_run(rest)?;
            let mut model = Model::new(plan, data, &kernels).map_err(|e| e.to_string())?;
            run_groups(&mut model, &groups)
        }
        "generate" => {
            let opts = parse_generate(rest)?;
            if plan.llm.is_none() {
                return Err(if plan.encoder.is_some() {
                    "generate needs a language model; this executable holds a sentence-embedding \
                     (encoder) model: use `embed --text TEXT`"
                        .to_string()
                } else {
                    "generate needs a language model with a tokenizer; this executable holds \
                     a plain graph: use `run --input NAME=FILE.npy`"
                        .to_string()
                });
            }
            if let Some((mb, cfg)) = engine_flags {
                let llm = plan.llm.clone().ok_or("no language model")?;
                let engine =
                    crate::engine::step::CompiledStep::start_engine(plan, data, kernels, mb, cfg)?;
                let r = if opts.more_prompts.is_empty() {
                    crate::generate::generate_engine(&engine, &llm, &opts).map(|_| ())
                } else {
                    crate::generate::generate_many(&engine, &llm, &opts)
                };
                engine.shutdown();
                return r;
            }
            let mut model = Model::new(plan, data, &kernels).map_err(|e| e.to_string())?;
            crate::generate::generate(&mut model, &opts).map(|_| ())
        }
        "bench" => {
            let (mut opts, threads) = crate::bench::parse(rest)?;
            opts.gpu = plan.gpu.is_some();
            if let Some(n) = threads {
                crate::pool::set_num_threads(n);
            }
            if let Some(req) = &plan.cpu {
                println!("kernels built for: {}", req.built_for);
            }
            if let Some((mb, cfg)) = engine_flags {
                let bytes = (
                    crate::bench::weight_bytes_per_token(&plan),
                    crate::bench::linear_flops_per_token(&plan),
                );
                let engine =
                    crate::engine::step::CompiledStep::start_engine(plan, data, kernels, mb, cfg)?;
                let r = crate::bench::run_engine(&engine, &opts, bytes);
                engine.shutdown();
                return r;
            }
            let mut model = Model::new(plan, data, &kernels).map_err(|e| e.to_string())?;
            crate::bench::run(&mut model, &opts)
        }
        "embed" => {
            let opts = crate::embed::parse(rest)?;
            let mut model = Model::new(plan, data, &kernels).map_err(|e| e.to_string())?;
            crate::embed::embed(&mut model, &opts)
        }
        "perplexity" => {
            let opts = crate::eval::parse(rest)?;
            if plan.llm.is_none() {
                return Err("perplexity needs a language model with a tokenizer".into());
            }
            if let Some((mb, cfg)) = engine_flags {
                let llm = plan.llm.clone().ok_or("no language model")?;
                let engine =
                    crate::engine::step::CompiledStep::start_engine(plan, data, kernels, mb, cfg)?;
                let r = crate::eval::perplexity_engine(&engine, &llm, &opts).map(|_| ());
                engine.shutdown();
                return r;
            }
            let mut model = Model::new(plan, data, &kernels).map_err(|e| e.to_string())?;
            crate::eval::perplexity(&mut model, &opts).map(|_| ())
        }
        "serve" => crate::server::run_command(rest, plan, data, kernels, engine_flags),
        "info" => {
            info(&plan, &sizes, &variant);
            Ok(())
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n{USAGE}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_groups_split_on_then() {
        let a: Vec<String> = "--input x=a.npy -o out1 --then --input x=b.npy"
            .split(' ')
            .map(String::from)
            .collect();
        let g = parse_run(&a).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].inputs, vec![("x".to_string(), PathBuf::from("a.npy"))]);
        assert_eq!(g[0].out_dir, Some(PathBuf::from("out1")));
        assert_eq!(g[1].out_dir, None);
        assert!(parse_run(&["--input".into(), "x".into()])
            .unwrap_err()
            .contains("NAME=FILE"));
        assert!(parse_run(&["--bogus".into()])
            .unwrap_err()
            .contains("unknown argument"));
    }
}
