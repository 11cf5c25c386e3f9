//! The executable's `bench` command: how fast this build runs its language model on
//! this machine. It times a prefill of `--prompt-tokens` synthetic ids (time to first
//! token is that call plus the first greedy pick), then `--gen-tokens` single-token
//! decode steps, best of `--repeat` runs, and reports the bytes of weights one decode
//! step reads (from the plan). `--bandwidth` also measures the machine's memory read
//! bandwidth with a STREAM-like read kernel on the same threads, and prints the
//! bandwidth roofline (bandwidth ÷ bytes per token) and the ratio to it. Tokenizer and
//! sampling costs are left out: this measures the compiled graph.

use crate::exec::{HostTensor, Model};
use crate::plan::{ElemType, Plan, Source, StepKind};
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchOptions {
    /// Prompt length of the prefill.
    pub prompt_tokens: usize,
    /// Decode steps after it.
    pub gen_tokens: usize,
    /// Runs; the best is reported.
    pub repeat: usize,
    /// Also measure the memory read bandwidth.
    pub bandwidth: bool,
    /// The model runs on the GPU (a `--target cuda` build): `--bandwidth` measures
    /// device memory.
    pub gpu: bool,
    /// Sequences run at once (serving-form executables: through the engine).
    pub concurrency: usize,
    /// Leading prompt tokens the concurrent sequences share (prefix cache).
    pub shared_prefix: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            prompt_tokens: 128,
            gen_tokens: 64,
            repeat: 3,
            bandwidth: false,
            gpu: false,
            concurrency: 1,
            shared_prefix: 0,
        }
    }
}

/// Parses `bench` arguments; `--threads N` is returned apart (the pool reads it).
pub fn parse(args: &[String]) -> Result<(BenchOptions, Option<usize>), String> {
    let mut o = BenchOptions::default();
    let mut threads = None;
    let mut it = args.iter();
    fn num(flag: &str, v: Option<&String>) -> Result<usize, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse()
            .map_err(|_| format!("{flag} {v}: not a valid count"))
    }
    while let Some(a) = it.next() {
        match a.as_str() {
            "--prompt-tokens" | "-p" => o.prompt_tokens = num(a, it.next())?,
            "--gen-tokens" | "-n" => o.gen_tokens = num(a, it.next())?,
            "--repeat" | "-r" => o.repeat = num(a, it.next())?.max(1),
            "--threads" | "-t" => threads = Some(num(a, it.next())?.max(1)),
            "--bandwidth" => o.bandwidth = true,
            "--concurrency" | "-c" => o.concurrency = num(a, it.next())?.max(1),
            "--shared-prefix" => o.shared_prefix = num(a, it.next())?,
            other => {
                return Err(format!(
                    "unknown argument `{other}` (bench [--prompt-tokens N] [--gen-tokens N] [--threads N] [--repeat R] [--bandwidth] [--concurrency N] [--shared-prefix K] [--kv-cache-mb N] [--max-seqs N] [--max-batch-tokens N])"
                ))
            }
        }
    }
    if o.prompt_tokens == 0 {
        return Err("--prompt-tokens must be at least 1".into());
    }
    if o.shared_prefix > o.prompt_tokens {
        return Err(format!(
            "--shared-prefix {} exceeds --prompt-tokens {}",
            o.shared_prefix, o.prompt_tokens
        ));
    }
    Ok((o, threads))
}

/// Bytes of weights one decode step reads: every data-section buffer a kernel reads
/// counts once; a table read by `gather` kernels only counts one row per step.
pub fn weight_bytes_per_token(plan: &Plan) -> u64 {
    let n = plan.buffers.len();
    // 0 = unread, 1 = read by gathers only, 2 = read whole.
    let mut how = vec![0u8; n];
    for s in &plan.steps {
        if let StepKind::Kernel { kernel, bufs, .. } = &s.kind {
            let name = plan
                .kernels
                .get(*kernel as usize)
                .map_or("", |s| s.as_str());
            let gather = name.starts_with("gather");
            for &b in bufs {
                if let Some(h) = how.get_mut(b as usize) {
                    *h = (*h).max(if gather { 1 } else { 2 });
                }
            }
        }
    }
    let mut total = 0u64;
    for (b, h) in plan.buffers.iter().zip(how) {
        let Source::Data { len, .. } = b.source else {
            continue;
        };
        // Build-time tables (`%x.table0`: rope's cos/sin) are read a row at a time.
        if b.name.contains(".table") {
            continue;
        }
        total += match h {
            2 => len,
            1 => {
                let rows = b.shape.first().and_then(|p| p.eval(&[])).unwrap_or(1);
                len / rows.max(1) as u64
            }
            _ => 0,
        };
    }
    total
}

/// Multiply-add FLOPs per prompt token and per decoded token of the plan's linears
/// (2 · n · k per row a token adds). For a prompt token each `linear*`/`matmul*`
/// step's rows are counted at one and two tokens (`seq` = 1, 2; every other symbol 1),
/// so the logits head that runs on a sequence's last row only adds nothing; a decoded
/// token runs every linear once, the head included. Attention's FLOPs
/// (context-dependent) are not counted.
pub fn linear_flops_per_token(plan: &Plan) -> (u64, u64) {
    let Some(seq) = plan.symbols.iter().position(|s| s == "seq") else {
        return (0, 0);
    };
    let at = |t: i64| {
        let mut v = vec![Some(1i64); plan.symbols.len()];
        v[seq] = Some(t);
        v
    };
    let (one, two) = (at(1), at(2));
    let numel = |b: u32, syms: &[Option<i64>]| -> Option<i64> {
        let d = plan.buffers.get(b as usize)?;
        d.shape
            .iter()
            .try_fold(1i64, |a, p| Some(a * p.eval(syms)?))
    };
    let (mut total, mut decode) = (0u64, 0u64);
    for s in &plan.steps {
        let StepKind::Kernel { kernel, bufs, .. } = &s.kind else {
            continue;
        };
        let name = plan
            .kernels
            .get(*kernel as usize)
            .map_or("", |s| s.as_str());
        if !(name.starts_with("linear") || name.starts_with("matmul")) {
            continue;
        }
        let (Some(&x), Some(&w)) = (bufs.first(), bufs.get(1)) else {
            continue;
        };
        let wd = &plan.buffers[w as usize];
        if !matches!(wd.source, Source::Data { .. }) || wd.shape.len() != 2 {
            continue;
        }
        let (Some(n), Some(k)) = (wd.shape[0].eval(&one), wd.shape[1].eval(&one)) else {
            continue;
        };
        let (Some(r1), Some(r2)) = (numel(x, &one), numel(x, &two)) else {
            continue;
        };
        // Rows of x: its elements over k, or over 2k where the linear reads the GLU
        // of [gate | up] rows (`glu_in`: x's last dim is 2k, which no other linear's
        // x, or a view of it, can have).
        let last = plan.buffers[x as usize]
            .shape
            .last()
            .and_then(|d| d.eval(&one));
        let xrow = if last == Some(2 * k) { 2 * k } else { k.max(1) };
        let rows = (r2 - r1).max(0) / xrow;
        total += (2 * n * k * rows) as u64;
        decode += (2 * n * k * (r1 / xrow).max(1)) as u64;
    }
    (total, decode)
}

/// The f32 FMA peak in FLOP/s of `threads` threads: each runs independent chains of
/// vector FMAs (16 lanes with AVX-512F, 8 with AVX2+FMA, else 4-lane SSE multiplies and
/// adds at 2 FLOPs a lane) for ~10 ms; best of eight passes (on a shared VM one pass
/// in a few runs has a thread descheduled: a batched-bench run once printed 293
/// GFLOP/s where the runs beside it printed 477-492).
pub fn fma_peak(threads: usize) -> f64 {
    const ITERS: u64 = 4_000_000;
    let threads = threads.max(1);
    let mut best = 0f64;
    for _ in 0..8 {
        let t0 = Instant::now();
        let flops: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| s.spawn(|| fma_chains(ITERS)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        best = best.max(flops as f64 / t0.elapsed().as_secs_f64().max(1e-12));
    }
    best
}

/// FLOPs done by `iters` rounds of 12 independent FMA chains at the widest width.
fn fma_chains(iters: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            let s = unsafe { fma_chains_avx512(iters) };
            std::hint::black_box(s);
            return iters * 12 * 16 * 2;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            let s = unsafe { fma_chains_avx2(iters) };
            std::hint::black_box(s);
            return iters * 12 * 8 * 2;
        }
    }
    let mut acc = [[0f32; 4]; 12];
    let (m, a) = (
        std::hint::black_box(0.999f32),
        std::hint::black_box(1e-3f32),
    );
    for _ in 0..iters / 4 {
        for c in acc.iter_mut() {
            for x in c.iter_mut() {
                *x = *x * m + a;
            }
        }
    }
    std::hint::black_box(acc);
    (iters / 4) * 12 * 4 * 2
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains_avx512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm512_set1_ps(std::hint::black_box(0.999));
    let a = _mm512_set1_ps(std::hint::black_box(1e-3));
    let mut acc = [_mm512_setzero_ps(); 12];
    for _ in 0..iters {
        for c in acc.iter_mut() {
            *c = _mm512_fmadd_ps(*c, m, a);
        }
    }
    acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_avx2(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(std::hint::black_box(0.999));
    let a = _mm256_set1_ps(std::hint::black_box(1e-3));
    let mut acc = [_mm256_setzero_ps(); 12];
    for _ in 0..iters {
        for c in acc.iter_mut() {
            *c = _mm256_fmadd_ps(*c, m, a);
        }
    }
    let mut out = [0f32; 8];
    let mut sum = 0f32;
    for v in acc {
        _mm256_storeu_ps(out.as_mut_ptr(), v);
        sum += out.iter().sum::<f32>();
    }
    sum
}

/// Measured numbers of one bench.
#[derive(Clone, Debug, Default)]
pub struct BenchResult {
    /// Prefill tokens per second.
    pub prefill_tps: f64,
    /// Decode tokens per second.
    pub decode_tps: f64,
    /// Time to first token, seconds.
    pub ttft: f64,
    /// CPU seconds (all threads) per decoded token, when the OS reports them.
    pub decode_cpu: Option<f64>,
    /// CPU seconds (all threads) per prompt token.
    pub prefill_cpu: Option<f64>,
}

/// CPU time this process's threads have run, in seconds (Linux `schedstat`; `None`
/// elsewhere). On a shared machine, wall time includes waiting for a core; this does
/// not (spinning pool workers count as running).
pub fn cpu_seconds() -> Option<f64> {
    let mut ns = 0u64;
    for e in std::fs::read_dir("/proc/self/task").ok()? {
        let p = e.ok()?.path().join("schedstat");
        let s = std::fs::read_to_string(p).ok()?;
        ns += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 * 1e-9)
}

fn ids_tensor(ids: &[i64]) -> HostTensor {
    HostTensor {
        dtype: ElemType::I64,
        shape: vec![1, ids.len()],
        data: ids.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// One model call: ids at positions `start..`, the index of the last row's largest logit.
fn call(
    model: &mut Model,
    ids: &[i64],
    start: usize,
    io: (usize, usize, usize),
) -> Result<i64, String> {
    let (ids_in, pos_in, logits_out) = io;
    let mut inputs = vec![ids_tensor(&[]); 2];
    inputs[ids_in] = ids_tensor(ids);
    let pos: Vec<i64> = (start..start + ids.len()).map(|p| p as i64).collect();
    inputs[pos_in] = ids_tensor(&pos);
    let outs = model.run(&inputs).map_err(|e| e.to_string())?;
    let t = outs.get(logits_out).ok_or("the model returned no logits")?;
    if t.dtype != ElemType::F32 {
        return Err(format!("logits are {}, expected f32", t.dtype.name()));
    }
    let vocab = *t.shape.last().ok_or("logits have no dims")?;
    let last = t.data.len().saturating_sub(vocab * 4);
    let mut best = (0i64, f32::NEG_INFINITY);
    for (i, c) in t.data[last..].chunks_exact(4).enumerate() {
        let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        if v > best.1 {
            best = (i as i64, v);
        }
    }
    Ok(best.0)
}

/// Runs the benchmark on a language model.
pub fn bench(model: &mut Model, o: &BenchOptions) -> Result<BenchResult, String> {
    let llm = model
        .plan()
        .llm
        .clone()
        .ok_or("bench needs a language model (this executable has no decoder inputs)")?;
    let io = (
        llm.ids_input as usize,
        llm.pos_input as usize,
        llm.logits_output as usize,
    );
    let ctx = llm.context_length.unwrap_or(i64::MAX).max(0) as u64;
    if (o.prompt_tokens + o.gen_tokens) as u64 > ctx {
        return Err(format!(
            "--prompt-tokens {} + --gen-tokens {} exceed the model's context length {ctx}",
            o.prompt_tokens, o.gen_tokens
        ));
    }
    // Synthetic prompt: ids spread over the low part of the vocabulary (any valid id
    // costs the same), deterministic.
    let prompt: Vec<i64> = (0..o.prompt_tokens as i64)
        .map(|i| 100 + (i * 7919) % 20000)
        .collect();
    // Warm-up: page the weights in, start the pool.
    model.reset();
    call(model, &prompt[..prompt.len().min(8)], 0, io)?;
    let mut best = BenchResult::default();
    for _ in 0..o.repeat {
        model.reset();
        let c0 = cpu_seconds();
        let t0 = Instant::now();
        let mut next = call(model, &prompt, 0, io)?;
        let prefill = t0.elapsed().as_secs_f64();
        let c1 = cpu_seconds();
        let ttft = prefill;
        let t1 = Instant::now();
        for g in 0..o.gen_tokens {
            next = call(model, &[next], o.prompt_tokens + g, io)?;
        }
        let decode = t1.elapsed().as_secs_f64();
        let c2 = cpu_seconds();
        let per = |a: Option<f64>, b: Option<f64>, n: usize| match (a, b) {
            (Some(a), Some(b)) if n > 0 => Some((b - a) / n as f64),
            _ => None,
        };
        let min = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        best.prefill_cpu = min(best.prefill_cpu, per(c0, c1, o.prompt_tokens));
        best.decode_cpu = min(best.decode_cpu, per(c1, c2, o.gen_tokens));
        let r = BenchResult {
            prefill_tps: o.prompt_tokens as f64 / prefill.max(1e-12),
            decode_tps: if o.gen_tokens == 0 {
                0.0
            } else {
                o.gen_tokens as f64 / decode.max(1e-12)
            },
            ttft,
            ..BenchResult::default()
        };
        best.prefill_tps = best.prefill_tps.max(r.prefill_tps);
        best.decode_tps = best.decode_tps.max(r.decode_tps);
        best.ttft = if best.ttft == 0.0 {
            r.ttft
        } else {
            best.ttft.min(r.ttft)
        };
    }
    Ok(best)
}

/// Memory read bandwidth in bytes/s: `threads` threads sum disjoint parts of a buffer
/// much larger than the caches; best of several passes.
pub fn read_bandwidth(threads: usize) -> Result<f64, String> {
    read_bandwidth_of(512 << 20, threads)
}

/// The read bandwidth a decode step meets: `threads` threads read this executable's
/// mapped data section (the very pages the kernels stream), best of several passes.
/// A fresh buffer's bandwidth depends on where its pages land: on a Zen 4 VM the
/// 512 MB probe read 32 GB/s in one run and 55-62 in the next while an f32 decode
/// streamed its weights at 45-51, so a roofline from it moved by 2x between the formats
/// of one run. Where the weights fit a large last-level cache, decode and this read
/// both meet the cache. Falls back to [`read_bandwidth`] when the data section is
/// under 64 MB (a pass would be too short to time) or cannot be mapped. Returns the
/// bytes/s and what was read.
pub fn read_bandwidth_weights(threads: usize) -> Result<(f64, String), String> {
    if let Ok(map) = crate::payload::map_self() {
        if let Ok((_, data)) = crate::payload::locate(&map) {
            if data.len() >= 64 << 20 {
                // SAFETY: any bit pattern is a valid u64; `align_to` keeps the
                // middle part aligned.
                let (_, words, _) = unsafe { data.align_to::<u64>() };
                let bw = read_words(words, threads);
                let what = format!("the weights ({:.1} MB, mapped)", data.len() as f64 / 1e6);
                return Ok((bw, what));
            }
        }
    }
    Ok((read_bandwidth(threads)?, "a 512 MB buffer".to_string()))
}

fn read_bandwidth_of(bytes: usize, threads: usize) -> Result<f64, String> {
    let words = bytes / 8;
    let mut buf: Vec<u64> = Vec::new();
    buf.try_reserve_exact(words)
        .map_err(|_| "cannot allocate the bandwidth buffer".to_string())?;
    buf.extend((0..words as u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    Ok(read_words(&buf, threads))
}

/// Bytes/s of `threads` threads summing disjoint parts of `buf`, best of 5 passes.
fn read_words(buf: &[u64], threads: usize) -> f64 {
    let words = buf.len();
    let threads = threads.max(1);
    let part = words.div_ceil(threads).max(1);
    let mut best = 0f64;
    let mut sink = 0u64;
    for _ in 0..5 {
        let t0 = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(part)
                .map(|c| s.spawn(move || sum_words(c)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        let secs = t0.elapsed().as_secs_f64();
        sink = sums.iter().fold(sink, |a, &b| a ^ b);
        best = best.max((words * 8) as f64 / secs.max(1e-12));
    }
    std::hint::black_box(sink);
    best
}

/// Sums words with 8 independent accumulators (no dependency chain limits the loads).
fn sum_words(c: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = c.chunks_exact(8);
    for ch in &mut chunks {
        for (a, &w) in acc.iter_mut().zip(ch) {
            *a = a.wrapping_add(w);
        }
    }
    let tail: u64 = chunks.remainder().iter().fold(0, |a, &w| a.wrapping_add(w));
    acc.iter().fold(tail, |a, &w| a.wrapping_add(w))
}

/// The `bench` command: prints one `key: value` line per number.
pub fn run(model: &mut Model, o: &BenchOptions) -> Result<(), String> {
    let threads = crate::pool::num_threads();
    let bytes = weight_bytes_per_token(model.plan());
    let r = bench(model, o)?;
    println!("threads: {threads}");
    println!("prompt tokens: {}", o.prompt_tokens);
    println!("gen tokens: {}", o.gen_tokens);
    println!("prefill tok/s: {:.1}", r.prefill_tps);
    println!("decode tok/s: {:.1}", r.decode_tps);
    println!("ttft ms: {:.1}", r.ttft * 1e3);
    if let Some(c) = r.prefill_cpu {
        println!("prefill cpu ms/token: {:.2}", c * 1e3);
    }
    if let Some(c) = r.decode_cpu {
        println!("decode cpu ms/token: {:.2}", c * 1e3);
    }
    println!("weight bytes per token: {bytes}");
    if o.bandwidth {
        let (bw, what) = read_bandwidth_weights(threads)?;
        let roof = bw / bytes.max(1) as f64;
        println!("read bandwidth GB/s: {:.2}", bw / 1e9);
        println!("read bandwidth of: {what}");
        println!("roofline decode tok/s: {roof:.1}");
        println!("decode / roofline: {:.3}", r.decode_tps / roof.max(1e-12));
    }
    Ok(())
}

/// A synthetic prompt: `shared` leading ids common to every sequence, the rest
/// distinct per `seed` (so the prefix cache only helps where asked to).
fn synthetic_prompt(n: usize, shared: usize, seed: usize) -> Vec<u32> {
    (0..n)
        .map(|i| {
            let salt = if i < shared { 0 } else { seed * 104_729 + 1 };
            (100 + (i * 7919 + salt) % 20000) as u32
        })
        .collect()
}

/// One request's measured times, seconds from its submission.
#[derive(Clone, Copy, Debug, Default)]
struct Times {
    first: f64,
    end: f64,
    tokens: usize,
}

/// Runs `prompts` at once through the engine, each generating `gen` tokens (end of
/// sequence ignored); returns per-request times, the wall time, and the most KV
/// blocks in use during the run.
fn run_batch(
    engine: &crate::engine::EngineHandle,
    prompts: Vec<Vec<u32>>,
    gen: usize,
) -> Result<(Vec<Times>, f64, usize), String> {
    use crate::engine::{Event, Request};
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Event)>();
    let n = prompts.len();
    let t0 = Instant::now();
    let mut starts = Vec::with_capacity(n);
    for (i, p) in prompts.into_iter().enumerate() {
        let mut r = Request::greedy(p, gen);
        r.ignore_eos = true;
        let tx = tx.clone();
        starts.push(t0.elapsed().as_secs_f64());
        engine
            .submit(r, Box::new(move |e| tx.send((i, e)).is_ok()))
            .map_err(|e| format!("bench request {i}: {e}"))?;
    }
    drop(tx);
    let mut times = vec![Times::default(); n];
    let mut done = 0;
    let mut peak = 0usize;
    while done < n {
        match rx.recv_timeout(std::time::Duration::from_millis(20)) {
            Ok((i, e)) => {
                let now = t0.elapsed().as_secs_f64() - starts[i];
                match e {
                    Event::Token { .. } => {
                        if times[i].tokens == 0 {
                            times[i].first = now;
                        }
                        times[i].tokens += 1;
                    }
                    Event::Error(e) => return Err(format!("bench request {i}: {e}")),
                    Event::Finished { .. } => {
                        times[i].end = now;
                        done += 1;
                    }
                    Event::PromptLogprobs(_) => {}
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => return Err("the engine stopped during the bench".into()),
        }
        peak = peak.max(engine.stats().kv_blocks_used);
    }
    Ok((times, t0.elapsed().as_secs_f64(), peak))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// The `bench` command of a serving-form executable: single-sequence prefill/decode
/// through the engine (best of `--repeat`), then `--concurrency` sequences at once
/// (best of `--repeat` as well).
/// One `key: value` line per number.
pub fn run_engine(
    engine: &crate::engine::EngineHandle,
    o: &BenchOptions,
    (weight_bytes, (prefill_flops, decode_flops)): (u64, (u64, u64)),
) -> Result<(), String> {
    let threads = crate::pool::num_threads();
    let facts = engine.facts().clone();
    if o.prompt_tokens + o.gen_tokens > facts.context_length {
        return Err(format!(
            "--prompt-tokens {} + --gen-tokens {} exceed the model's context length {}",
            o.prompt_tokens, o.gen_tokens, facts.context_length
        ));
    }
    // Warm-up: page the weights in, start the pool.
    run_batch(engine, vec![synthetic_prompt(8, 0, 999_999)], 2)?;
    let mut best = BenchResult::default();
    for r in 0..o.repeat {
        let (t, _, _) = run_batch(
            engine,
            vec![synthetic_prompt(o.prompt_tokens, 0, 1_000 + r)],
            o.gen_tokens.max(1),
        )?;
        let t = t[0];
        best.prefill_tps = best
            .prefill_tps
            .max(o.prompt_tokens as f64 / t.first.max(1e-12));
        if t.tokens > 1 {
            best.decode_tps = best
                .decode_tps
                .max((t.tokens - 1) as f64 / (t.end - t.first).max(1e-12));
        }
        best.ttft = if best.ttft == 0.0 {
            t.first
        } else {
            best.ttft.min(t.first)
        };
    }
    println!("threads: {threads}");
    println!("prompt tokens: {}", o.prompt_tokens);
    println!("gen tokens: {}", o.gen_tokens);
    println!("prefill tok/s: {:.1}", best.prefill_tps);
    println!("decode tok/s: {:.1}", best.decode_tps);
    println!("ttft ms: {:.1}", best.ttft * 1e3);
    println!("weight bytes per token: {weight_bytes}");
    println!("linear FLOP per decoded token: {decode_flops}");
    println!("kv capacity tokens: {}", facts.kv_capacity_tokens());
    let kv_ctx = facts.kv_bytes_per_token as u64 * (o.prompt_tokens + o.gen_tokens / 2) as u64;
    println!("kv bytes per token at this context: {kv_ctx}");
    let mut bw = None;
    if o.bandwidth && o.gpu {
        let d = crate::cuda::Device::open()?;
        let b = d.bandwidth_gbs(1024)? * 1e9;
        let roof = b / (weight_bytes + kv_ctx).max(1) as f64;
        println!("gpu: {} ({} SMs)", d.name, d.sms);
        println!("device bandwidth GB/s (copy, read + write): {:.1}", b / 1e9);
        println!("roofline decode tok/s: {roof:.1}");
        println!(
            "decode / roofline: {:.3}",
            best.decode_tps / roof.max(1e-12)
        );
    } else if o.bandwidth {
        let (b, what) = read_bandwidth_weights(threads)?;
        let roof = b / (weight_bytes + kv_ctx).max(1) as f64;
        println!("read bandwidth GB/s: {:.2}", b / 1e9);
        println!("read bandwidth of: {what}");
        println!("roofline decode tok/s: {roof:.1}");
        println!(
            "decode / roofline: {:.3}",
            best.decode_tps / roof.max(1e-12)
        );
        bw = Some(b);
        let peak = fma_peak(threads);
        let flops = prefill_flops as f64 * best.prefill_tps;
        println!("fma peak GFLOP/s: {:.1}", peak / 1e9);
        println!("prefill linear GFLOP/s: {:.1}", flops / 1e9);
        println!("prefill / fma peak: {:.3}", flops / peak.max(1e-12));
    }
    let _ = bw;
    if o.concurrency > 1 {
        // The concurrent run is repeated as the single stream is, and the best run
        // reported, so that the two compare like for like; each repeat's prompts are
        // new (no prefix-cache hits beyond `--shared-prefix`).
        let mut best: Option<(f64, Vec<Times>, usize, [u64; 3])> = None;
        let mut each = Vec::new();
        let mut stats = engine.stats();
        for r in 0..o.repeat {
            let prompts: Vec<Vec<u32>> = (0..o.concurrency)
                .map(|i| {
                    synthetic_prompt(
                        o.prompt_tokens,
                        o.shared_prefix,
                        5_000 + r * o.concurrency + i,
                    )
                })
                .collect();
            let (times, wall, peak) = run_batch(engine, prompts, o.gen_tokens.max(1))?;
            let after = engine.stats();
            let total: usize = times.iter().map(|t| t.tokens).sum();
            let agg = total as f64 / wall.max(1e-12);
            each.push(format!("{agg:.1}"));
            if best.as_ref().is_none_or(|b| agg > b.0) {
                // (prefix queries, prefix hits, preemptions) of this run.
                let d = [
                    after.prefix_queries - stats.prefix_queries,
                    after.prefix_hits - stats.prefix_hits,
                    after.preemptions - stats.preemptions,
                ];
                best = Some((agg, times, peak, d));
            }
            stats = after;
        }
        let (agg, times, peak, [q, h, preempted]) = best.ok_or("bench: no concurrent run")?;
        let mut ttft: Vec<f64> = times.iter().map(|t| t.first * 1e3).collect();
        let mut tpot: Vec<f64> = times
            .iter()
            .filter(|t| t.tokens > 1)
            .map(|t| (t.end - t.first) * 1e3 / (t.tokens - 1) as f64)
            .collect();
        println!("concurrency: {}", o.concurrency);
        println!("aggregate decode tok/s: {agg:.1}");
        println!("aggregate decode tok/s of each run: {}", each.join(" / "));
        println!("TTFT p50 ms: {:.1}", percentile(&mut ttft, 0.5));
        println!("TTFT p99 ms: {:.1}", percentile(&mut ttft, 0.99));
        let tpot50 = percentile(&mut tpot, 0.5);
        println!("TPOT p50 ms: {tpot50:.2}");
        println!("TPOT p99 ms: {:.2}", percentile(&mut tpot, 0.99));
        // The decode phase alone (llama-batched-bench's S_TG): every stream produces a
        // token per step of the median inter-token time; the aggregate above also
        // carries the prompts' prefill.
        if tpot50 > 0.0 {
            println!(
                "steady decode tok/s: {:.1}",
                o.concurrency as f64 * 1e3 / tpot50
            );
        }
        println!("kv blocks used: {peak}");
        println!(
            "prefix hit rate: {:.3}",
            if q == 0 { 0.0 } else { h as f64 / q as f64 }
        );
        println!("preemptions: {preempted}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_flags() {
        let a: Vec<String> = "--prompt-tokens 16 -n 4 --threads 2 --bandwidth"
            .split(' ')
            .map(String::from)
            .collect();
        let (o, t) = parse(&a).unwrap();
        assert_eq!(o.prompt_tokens, 16);
        assert_eq!(o.gen_tokens, 4);
        assert!(o.bandwidth);
        assert_eq!(t, Some(2));
        assert!(parse(&["--bogus".into()]).unwrap_err().contains("unknown"));
        assert!(parse(&["-p".into(), "0".into()]).is_err());
    }

    #[test]
    fn word_sum_matches_a_plain_sum() {
        let v: Vec<u64> = (0..1003u64).map(|i| i * i).collect();
        let want = v.iter().fold(0u64, |a, &b| a.wrapping_add(b));
        assert_eq!(sum_words(&v), want);
    }

    #[test]
    fn bandwidth_is_positive() {
        let bw = read_bandwidth_of(8 << 20, 2).unwrap();
        assert!(bw > 1e8, "{bw}");
    }
}
