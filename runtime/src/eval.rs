//! `perplexity` in the emitted executable: the perplexity of a language model over a
//! text file with llama.cpp's `llama-perplexity` protocol, so the numbers compare with
//! llama.cpp's (and `llmc eval` measures what a quantization costs with it):
//!
//! - the whole text is tokenized once (special tokens added as the tokenizer adds
//!   them), cut into non-overlapping windows of `--ctx` tokens (at least two windows);
//!   when the tokenizer adds a BOS, each window's first token is replaced by BOS;
//! - each window starts from an empty KV cache; only the second half is scored: the
//!   logits at positions `ctx/2 ..= ctx-2` predict the tokens after them (`ctx/2 - 1`
//!   per window);
//! - after each window the running perplexity is printed as `[i]PPL,`, at the end
//!   `Final estimate: PPL = X +/- Y` (Y from the spread of the per-token
//!   log-likelihoods, as llama.cpp computes it).
//!
//! A graph that returns every position's logits (`[batch, seq, vocab]`; `llmc eval`
//! builds its models so) scores a window in one call; a one-sequence graph that
//! returns only the last position's takes one call for the unscored first half plus
//! the first scored position, then one per scored token. A serving-form executable
//! (`llmc build`'s default for decoders) scores each window as one engine request with
//! prompt log-probabilities ([`perplexity_engine`]): the engine's own kernels and KV
//! cache (`--kv-cache-dtype`) are what is measured.
//!
//! `--dump-logits FILE` writes the scored distributions in llama.cpp's
//! `--kl-divergence-base` format (`_logits_`, n_ctx, n_vocab, n_chunk, the tokens, then
//! per scored position two f32 (scale, min log-prob) and one u16 per vocabulary entry);
//! `--kl-base FILE` reads such a file (made by another build of the same model, or by
//! llama.cpp) and reports the mean KL divergence from it and how often both models
//! rank the same token first, as `llama-perplexity --kl-divergence` does.
//!
//! ```text
//! ./OUT perplexity --file TEXT [--ctx 512] [--chunks N] [--dump-logits FILE] [--kl-base FILE]
//! ```

use crate::exec::{HostTensor, Model};
use crate::plan::{ElemType, LlmInfo};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

/// Usage of the `perplexity` command (lines of the executable's usage).
pub const USAGE: &str = "  perplexity --file TEXT [--ctx 512] [--chunks N] [--dump-logits FILE]
             [--kl-base FILE]      perplexity over TEXT (llama-perplexity protocol)";

/// What to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalOptions {
    /// The text file.
    pub file: PathBuf,
    /// Window length in tokens.
    pub ctx: usize,
    /// Stop after this many windows.
    pub chunks: Option<usize>,
    /// Write the scored distributions here (llama.cpp's KL-divergence base format).
    pub dump_logits: Option<PathBuf>,
    /// Compare with the distributions in this file.
    pub kl_base: Option<PathBuf>,
}

/// Parses `perplexity`'s arguments.
pub fn parse(args: &[String]) -> Result<EvalOptions, String> {
    let mut file = None;
    let mut o = EvalOptions {
        file: PathBuf::new(),
        ctx: 512,
        chunks: None,
        dump_logits: None,
        kl_base: None,
    };
    let mut it = args.iter();
    let value = |flag: &str, v: Option<&String>| -> Result<String, String> {
        v.cloned().ok_or_else(|| format!("{flag} needs a value"))
    };
    let num = |flag: &str, v: String| -> Result<usize, String> {
        v.parse()
            .map_err(|_| format!("{flag} {v}: not a valid count"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--file" | "-f" => file = Some(PathBuf::from(value(a, it.next())?)),
            "--ctx" | "-c" => o.ctx = num(a, value(a, it.next())?)?,
            "--chunks" => o.chunks = Some(num(a, value(a, it.next())?)?),
            "--dump-logits" => o.dump_logits = Some(PathBuf::from(value(a, it.next())?)),
            "--kl-base" => o.kl_base = Some(PathBuf::from(value(a, it.next())?)),
            other => {
                return Err(format!(
                    "perplexity: unknown argument `{other}`\nusage:\n{USAGE}"
                ))
            }
        }
    }
    o.file = file.ok_or_else(|| format!("perplexity needs --file TEXT\nusage:\n{USAGE}"))?;
    if o.ctx < 4 {
        return Err(format!("--ctx {}: a window needs at least 4 tokens", o.ctx));
    }
    if o.chunks == Some(0) {
        return Err("--chunks 0: nothing to measure".into());
    }
    Ok(o)
}

fn i64_tensor(v: impl Iterator<Item = i64>, n: usize) -> HostTensor {
    HostTensor {
        dtype: ElemType::I64,
        shape: vec![1, n],
        data: v.flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// One model call on `ids` at positions `start..`: the logits rows the graph returns
/// (the last position's, or one per position), flattened, and the vocabulary size.
fn logits(
    model: &mut Model,
    llm: &LlmInfo,
    ids: &[u32],
    start: usize,
) -> Result<(Vec<f32>, usize), String> {
    let n = ids.len();
    let n_inputs = model.plan().inputs.len();
    let mut inputs = vec![i64_tensor(std::iter::empty(), 0); n_inputs];
    for (slot, t) in [
        (llm.ids_input, i64_tensor(ids.iter().map(|&t| t as i64), n)),
        (
            llm.pos_input,
            i64_tensor((start..start + n).map(|p| p as i64), n),
        ),
    ] {
        *inputs
            .get_mut(slot as usize)
            .ok_or_else(|| format!("the plan names graph input {slot} of {n_inputs}"))? = t;
    }
    let outs = model.run(&inputs).map_err(|e| e.to_string())?;
    let t = outs
        .get(llm.logits_output as usize)
        .ok_or("the model returned no logits")?;
    if t.dtype != ElemType::F32 {
        return Err(format!("logits are {}, expected f32", t.dtype.name()));
    }
    let vocab = *t.shape.last().ok_or("logits have no dims")?;
    if vocab == 0 || !t.data.len().is_multiple_of(4 * vocab) {
        return Err(format!("logits of shape {:?} have no whole rows", t.shape));
    }
    let all = t
        .data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((all, vocab))
}

/// The logits at positions `first..ctx-1` of `window` (a fresh sequence), one row per
/// position: from one call when the graph returns every position's logits
/// (`[batch, seq, vocab]`, what `llmc eval` builds), else from one call for
/// `0..=first` and one per token after it.
fn window_logits(
    model: &mut Model,
    llm: &LlmInfo,
    window: &[u32],
    first: usize,
) -> Result<(Vec<f32>, usize), String> {
    let ctx = window.len();
    model.reset();
    let every_position = model
        .plan()
        .outputs
        .get(llm.logits_output as usize)
        .is_some_and(|o| o.shape.len() == 3);
    if every_position {
        let (all, vocab) = logits(model, llm, &window[..ctx - 1], 0)?;
        if all.len() != (ctx - 1) * vocab {
            return Err(format!(
                "{} logits for {} positions of {vocab}",
                all.len(),
                ctx - 1
            ));
        }
        return Ok((all[first * vocab..].to_vec(), vocab));
    }
    let (mut all, vocab) = logits(model, llm, &window[..=first], 0)?;
    all.drain(..all.len() - vocab);
    for j in first + 1..ctx - 1 {
        let (row, v) = logits(model, llm, &window[j..=j], j)?;
        all.extend_from_slice(&row[row.len() - v..]);
    }
    Ok((all, vocab))
}

/// `-log p(tok)` under `softmax(logits)`, in f64.
pub fn nll(logits: &[f32], tok: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln() - logits[tok] as f64
}

/// Running sums of the per-token negative log-likelihoods.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Nll {
    /// Σ nll.
    pub sum: f64,
    /// Σ nll².
    pub sum2: f64,
    /// Tokens scored.
    pub count: usize,
}

impl Nll {
    /// Adds one token.
    pub fn add(&mut self, v: f64) {
        self.sum += v;
        self.sum2 += v * v;
        self.count += 1;
    }

    /// exp(mean nll).
    pub fn ppl(&self) -> f64 {
        (self.sum / self.count.max(1) as f64).exp()
    }

    /// llama.cpp's uncertainty of the perplexity: PPL · sqrt(var(nll) / (n - 1)).
    pub fn ppl_err(&self) -> f64 {
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum2 / n - mean * mean;
        if self.count < 2 || var <= 0.0 {
            return 0.0;
        }
        self.ppl() * (var / (n - 1.0)).sqrt()
    }
}

/// u16 values per stored distribution in llama.cpp's format (two f32 in front, the
/// vocabulary rounded up to even).
pub fn row_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// One distribution as llama.cpp stores it (`log_softmax` in `perplexity.cpp`): the
/// log-probabilities from `max - 16` up, as u16 steps of `(max - min) / 65535` above
/// the smallest kept one.
pub fn compress(logits: &[f32], out: &mut [u16]) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let min = logits
        .iter()
        .fold(f32::INFINITY, |a, &b| a.min(b))
        .max(max - 16.0);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    let log_sum = sum.ln() as f32;
    let min_log_prob = min - max - log_sum;
    let scale = (max - min) / 65535.0;
    let (head, rest) = out.split_at_mut(4);
    for (k, f) in [scale, min_log_prob].iter().enumerate() {
        let b = f.to_le_bytes();
        head[2 * k] = u16::from_le_bytes([b[0], b[1]]);
        head[2 * k + 1] = u16::from_le_bytes([b[2], b[3]]);
    }
    rest.iter_mut().for_each(|v| *v = 0);
    if scale != 0.0 {
        let inv = 1.0 / scale;
        for (o, &l) in rest.iter_mut().zip(logits) {
            *o = if l > min {
                (inv * (l - min)).round_ties_even() as u16
            } else {
                0
            };
        }
    }
}

/// The running sums of a KL-divergence comparison.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Kld {
    /// Σ KL(base ‖ model).
    pub sum: f64,
    /// Σ KL².
    pub sum2: f64,
    /// Positions where both rank the same token first.
    pub same_top: usize,
    /// Positions compared.
    pub count: usize,
}

impl Kld {
    /// Adds one position: `logits` of this model against a stored base distribution
    /// (`row`, see [`compress`]), as llama.cpp's `log_softmax` for KL does (base
    /// probabilities below e^-16 are left out).
    pub fn add(&mut self, logits: &[f32], row: &[u16]) {
        let (mut max, mut imax) = (logits[0], 0usize);
        for (i, &l) in logits.iter().enumerate().skip(1) {
            if l > max {
                max = l;
                imax = i;
            }
        }
        let sum: f64 = logits.iter().map(|&l| (l as f64 - max as f64).exp()).sum();
        let log_norm = max as f64 + sum.ln();
        let f = |k: usize| {
            f32::from_le_bytes({
                let (a, b) = (row[2 * k].to_le_bytes(), row[2 * k + 1].to_le_bytes());
                [a[0], a[1], b[0], b[1]]
            })
        };
        let (scale, min_log_prob) = (f(0), f(1));
        let mut kl = 0.0f64;
        let (mut best, mut ibest) = (f32::NEG_INFINITY, 0usize);
        for (i, (&q, &l)) in row[4..].iter().zip(logits).enumerate() {
            let lp_base = scale * q as f32 + min_log_prob;
            if i == 0 || lp_base > best {
                best = lp_base;
                ibest = i;
            }
            if lp_base > -16.0 {
                let lp_base = lp_base as f64;
                kl += lp_base.exp() * (lp_base - (l as f64 - log_norm));
            }
        }
        self.sum += kl;
        self.sum2 += kl * kl;
        self.count += 1;
        if imax == ibest {
            self.same_top += 1;
        }
    }

    /// Mean KL divergence and its standard error.
    pub fn mean(&self) -> (f64, f64) {
        let n = self.count.max(1) as f64;
        let m = self.sum / n;
        let var = self.sum2 / n - m * m;
        let err = if self.count > 1 && var > 0.0 {
            (var / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        (m, err)
    }

    /// Share of positions with the same top token, and its standard error.
    pub fn top1(&self) -> (f64, f64) {
        let n = self.count.max(1) as f64;
        let p = self.same_top as f64 / n;
        let err = if self.count > 1 {
            (p * (1.0 - p) / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        (p, err)
    }
}

fn write_i32s(w: &mut impl Write, v: &[i32]) -> std::io::Result<()> {
    for x in v {
        w.write_all(&x.to_le_bytes())?;
    }
    Ok(())
}

fn read_i32s(r: &mut impl Read, n: usize) -> std::io::Result<Vec<i32>> {
    let mut b = vec![0u8; 4 * n];
    r.read_exact(&mut b)?;
    Ok(b.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// An open `--kl-base` file, positioned at the first distribution.
struct Base {
    r: BufReader<File>,
    path: String,
    buf: Vec<u8>,
}

impl Base {
    fn open(
        path: &std::path::Path,
        ctx: usize,
        tokens: &[u32],
        chunks: usize,
    ) -> Result<Base, String> {
        let p = path.display().to_string();
        let io = |e: std::io::Error| format!("--kl-base {p}: {e}");
        let mut r = BufReader::new(File::open(path).map_err(io)?);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(io)?;
        if &magic != b"_logits_" {
            return Err(format!(
                "--kl-base {p}: not a logits file (llama-perplexity --kl-divergence-base or perplexity --dump-logits)"
            ));
        }
        let head = read_i32s(&mut r, 3).map_err(io)?;
        let (b_ctx, b_vocab, b_chunks) = (head[0], head[1], head[2]);
        if b_ctx as usize != ctx {
            return Err(format!(
                "--kl-base {p}: windows of {b_ctx} tokens, this run uses --ctx {ctx}"
            ));
        }
        if (b_chunks as usize) < chunks {
            return Err(format!(
                "--kl-base {p}: {b_chunks} windows, this run scores {chunks}"
            ));
        }
        let base_tokens = read_i32s(&mut r, b_chunks as usize * ctx).map_err(io)?;
        if let Some(i) = (0..chunks * ctx).find(|&i| base_tokens[i] as i64 != tokens[i] as i64) {
            return Err(format!(
                "--kl-base {p}: token {i} is {} there and {} here: the text or tokenizer differs",
                base_tokens[i], tokens[i]
            ));
        }
        if b_vocab <= 0 {
            return Err(format!("--kl-base {p}: vocabulary size {b_vocab}"));
        }
        Ok(Base {
            r,
            path: p,
            buf: vec![0u8; 2 * row_len(b_vocab as usize)],
        })
    }

    fn next(&mut self, vocab: usize) -> Result<Vec<u16>, String> {
        if self.buf.len() != 2 * row_len(vocab) {
            return Err(format!(
                "--kl-base {}: distributions of {} entries, this model has {vocab}",
                self.path,
                (self.buf.len() / 2).saturating_sub(4)
            ));
        }
        self.r
            .read_exact(&mut self.buf)
            .map_err(|e| format!("--kl-base {}: {e}", self.path))?;
        Ok(self
            .buf
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    }
}

/// What a run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalResult {
    /// The log-likelihood sums.
    pub nll: Nll,
    /// The comparison with `--kl-base`, when given.
    pub kld: Option<Kld>,
    /// Windows scored.
    pub windows: usize,
    /// Tokens in the text.
    pub tokens: usize,
}

/// Measures the perplexity (and KL divergence) as the module comment says, printing
/// progress and results on stdout.
/// The windows `perplexity` scores: the text's tokens, cut as llama-perplexity cuts
/// them.
struct Windows {
    tokens: Vec<u32>,
    bos: Option<u32>,
    ctx: usize,
    n_chunk: usize,
    /// The first scored window position is `first + 1` (`ctx / 2`).
    first: usize,
}

impl Windows {
    /// Tokenizes `opts.file` and checks there are two windows of `opts.ctx`.
    fn new(llm: &LlmInfo, opts: &EvalOptions) -> Result<Windows, String> {
        let tok = crate::generate::tokenizer(llm)?;
        let f = opts.file.display();
        let text = std::fs::read(&opts.file).map_err(|e| format!("--file {f}: {e}"))?;
        let text =
            String::from_utf8(text).map_err(|e| format!("--file {f}: not UTF-8 text ({e})"))?;
        let tokens = tok
            .encode(&text, true)
            .map_err(|e| format!("--file {f}: {e}"))?;
        // "BOS first when the tokenizer adds one" (llama.cpp: the vocabulary's add_bos).
        let bos = llm.bos.filter(|&b| {
            tok.encode("a", true)
                .is_ok_and(|ids| ids.first() == Some(&b))
        });
        let ctx = opts.ctx;
        if let Some(c) = llm.context_length.filter(|&c| (ctx as i64) > c) {
            return Err(format!(
                "--ctx {ctx} exceeds the model's context length {c}"
            ));
        }
        if tokens.len() < 2 * ctx {
            return Err(format!(
                "--file {f}: {} tokens; a context of {ctx} needs at least {} (two windows)",
                tokens.len(),
                2 * ctx
            ));
        }
        let n_chunk = (tokens.len() / ctx).min(opts.chunks.unwrap_or(usize::MAX));
        let first = ctx / 2;
        eprintln!(
            "perplexity: {} tokens, {n_chunk} windows of {ctx}, {} scored per window, BOS {}",
            tokens.len(),
            ctx - 1 - first,
            match bos {
                Some(b) => format!("{b} first in each window"),
                None => "not added".into(),
            }
        );
        Ok(Windows {
            tokens,
            bos,
            ctx,
            n_chunk,
            first,
        })
    }

    /// Window `c`'s tokens (BOS first when the tokenizer adds one).
    fn get(&self, c: usize) -> Vec<u32> {
        let mut window = self.tokens[c * self.ctx..(c + 1) * self.ctx].to_vec();
        if let Some(b) = self.bos {
            window[0] = b;
        }
        window
    }
}

/// After window `c` (0-based): the time estimate once, and the running perplexity.
fn progress(c: usize, n_chunk: usize, t0: Instant, nll: &Nll) {
    if c == 0 {
        let s = t0.elapsed().as_secs_f64();
        eprintln!(
            "perplexity: {s:.2} s per window, about {:.1} minutes in all",
            s * n_chunk as f64 / 60.0
        );
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = write!(out, "[{}]{:.4},", c + 1, nll.ppl());
    let _ = out.flush();
}

/// `perplexity` through the engine (a serving-form executable): each window is one
/// request whose prompt log-probabilities give the scored tokens' likelihoods, so the
/// serving path itself is measured (its KV cache type included). The full
/// distributions do not leave the engine: `--dump-logits` and `--kl-base` need a
/// one-sequence build.
pub fn perplexity_engine(
    engine: &crate::engine::EngineHandle,
    llm: &LlmInfo,
    opts: &EvalOptions,
) -> Result<EvalResult, String> {
    use crate::engine::{Event, Request};
    if opts.dump_logits.is_some() || opts.kl_base.is_some() {
        return Err(
            "--dump-logits and --kl-base need every logit, which the engine does not \
                    return: use a one-sequence build (`llmc build --no-serving`) or `llmc eval`"
                .into(),
        );
    }
    let w = Windows::new(llm, opts)?;
    let mut res = EvalResult {
        tokens: w.tokens.len(),
        ..EvalResult::default()
    };
    let t0 = Instant::now();
    for c in 0..w.n_chunk {
        let mut req = Request::greedy(w.get(c), 1);
        req.prompt_logprobs = Some(0);
        let (tx, rx) = std::sync::mpsc::channel::<Event>();
        engine
            .submit(req, Box::new(move |e| tx.send(e).is_ok()))
            .map_err(|e| format!("window {}: {e}", c + 1))?;
        let mut lps = None;
        for e in rx {
            match e {
                Event::PromptLogprobs(v) => lps = Some(v),
                Event::Error(e) => return Err(format!("window {}: {e}", c + 1)),
                Event::Finished { .. } => break,
                Event::Token { .. } => {}
            }
        }
        let lps = lps.ok_or_else(|| format!("window {}: no prompt log-probabilities", c + 1))?;
        for j in w.first + 1..w.ctx {
            let lp = lps
                .get(j)
                .and_then(|l| l.as_ref())
                .ok_or_else(|| format!("window {}: no log-probability at {j}", c + 1))?;
            res.nll.add(-(lp.logprob as f64));
        }
        res.windows += 1;
        progress(c, w.n_chunk, t0, &res.nll);
    }
    finish(&res, t0)?;
    Ok(res)
}

/// Scores `opts.file` with `model` (a one-sequence build), printing as
/// `llama-perplexity` does.
pub fn perplexity(model: &mut Model, opts: &EvalOptions) -> Result<EvalResult, String> {
    let llm = model
        .plan()
        .llm
        .clone()
        .ok_or("perplexity needs a language model with a tokenizer")?;
    let w = Windows::new(&llm, opts)?;
    let (tokens, ctx, n_chunk, first) = (&w.tokens, w.ctx, w.n_chunk, w.first);
    let mut base = match &opts.kl_base {
        Some(p) => Some(Base::open(p, ctx, tokens, n_chunk)?),
        None => None,
    };
    let mut dump = match &opts.dump_logits {
        Some(p) => {
            let io = |e: std::io::Error| format!("--dump-logits {}: {e}", p.display());
            Some((BufWriter::new(File::create(p).map_err(io)?), p.clone()))
        }
        None => None,
    };
    let mut res = EvalResult {
        tokens: tokens.len(),
        kld: base.as_ref().map(|_| Kld::default()),
        ..EvalResult::default()
    };
    let mut row: Vec<u16> = Vec::new();
    let mut dumped_header = false;
    let t0 = Instant::now();
    for c in 0..n_chunk {
        let window = w.get(c);
        let (rows, vocab) = window_logits(model, &llm, &window, first)?;
        for (r, logits) in rows.chunks_exact(vocab).enumerate() {
            let target = window[first + r + 1] as usize;
            if target >= vocab {
                return Err(format!(
                    "token id {target} is outside the model's {vocab} logits"
                ));
            }
            res.nll.add(nll(logits, target));
            if let (Some(b), Some(k)) = (base.as_mut(), res.kld.as_mut()) {
                k.add(logits, &b.next(vocab)?);
            }
            if let Some((w, p)) = dump.as_mut() {
                let io = |e: std::io::Error| format!("--dump-logits {}: {e}", p.display());
                if !dumped_header {
                    w.write_all(b"_logits_").map_err(io)?;
                    write_i32s(w, &[ctx as i32, vocab as i32, n_chunk as i32]).map_err(io)?;
                    let t: Vec<i32> = tokens[..n_chunk * ctx].iter().map(|&t| t as i32).collect();
                    write_i32s(w, &t).map_err(io)?;
                    dumped_header = true;
                }
                row.resize(row_len(vocab), 0);
                compress(logits, &mut row);
                let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
                w.write_all(&bytes).map_err(io)?;
            }
        }
        res.windows += 1;
        progress(c, n_chunk, t0, &res.nll);
    }
    if let Some((mut w, p)) = dump {
        w.flush()
            .map_err(|e| format!("--dump-logits {}: {e}", p.display()))?;
    }
    finish(&res, t0)?;
    Ok(res)
}

/// The final lines: the estimate (and the KL divergence when measured), the time.
fn finish(res: &EvalResult, t0: Instant) -> Result<(), String> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let io = |e: std::io::Error| format!("writing the results: {e}");
    writeln!(out).map_err(io)?;
    writeln!(
        out,
        "Final estimate: PPL = {:.4} +/- {:.5}",
        res.nll.ppl(),
        res.nll.ppl_err()
    )
    .map_err(io)?;
    if let Some(k) = &res.kld {
        let (m, e) = k.mean();
        let (p, pe) = k.top1();
        writeln!(out, "Mean KLD: {m:.6} +/- {e:.6}").map_err(io)?;
        writeln!(out, "Same top p: {:.3} +/- {:.3} %", 100.0 * p, 100.0 * pe).map_err(io)?;
    }
    out.flush().map_err(io)?;
    eprintln!(
        "perplexity: {} tokens scored in {:.1} s",
        res.nll.count,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_have_perplexity_vocab() {
        let mut n = Nll::default();
        for t in 0..10 {
            n.add(nll(&[0.5; 8], t % 8));
        }
        assert!((n.ppl() - 8.0).abs() < 1e-9);
        // Every token the same nll: no spread (up to rounding in sum2/n - mean²).
        assert!(n.ppl_err() < 1e-5, "{}", n.ppl_err());
        let mut n = Nll::default();
        n.add(1.0);
        n.add(3.0);
        // mean 2, var 1, sqrt(1 / 1) -> e^2 * 1.
        assert!((n.ppl_err() - 2f64.exp()).abs() < 1e-9);
    }

    #[test]
    fn kl_of_a_distribution_with_itself_is_about_zero() {
        let logits: Vec<f32> = (0..101)
            .map(|i| ((i * 37) % 101) as f32 * 0.13 - 4.0)
            .collect();
        let mut row = vec![0u16; row_len(logits.len())];
        assert_eq!(row.len(), 102 + 4);
        compress(&logits, &mut row);
        let mut k = Kld::default();
        k.add(&logits, &row);
        assert!(k.sum.abs() < 1e-4, "{}", k.sum);
        assert_eq!(k.top1().0, 1.0);
        // A flatter model: positive divergence, possibly another top token.
        let flat: Vec<f32> = logits.iter().map(|l| l * 0.5).collect();
        let mut k2 = Kld::default();
        k2.add(&flat, &row);
        assert!(k2.sum > 0.01, "{}", k2.sum);
        assert_eq!(k2.same_top, 1);
    }

    #[test]
    fn compressed_log_probs_decode_back() {
        let logits = [2.0f32, 1.0, -3.0, -30.0];
        let mut row = vec![0u16; row_len(4)];
        compress(&logits, &mut row);
        let f = |k: usize| {
            let (a, b) = (row[2 * k].to_le_bytes(), row[2 * k + 1].to_le_bytes());
            f32::from_le_bytes([a[0], a[1], b[0], b[1]])
        };
        let lse = logits.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
        for i in 0..3 {
            let got = f(0) * row[4 + i] as f32 + f(1);
            assert!((got as f64 - (logits[i] as f64 - lse)).abs() < 1e-3, "{i}");
        }
        // Below max - 16: clamped to the floor.
        assert_eq!(row[7], 0);
    }

    #[test]
    fn arguments() {
        let a = |s: &str| -> Vec<String> { s.split(' ').map(String::from).collect() };
        let o = parse(&a("--file t.txt --ctx 64 --chunks 3")).unwrap();
        assert_eq!((o.ctx, o.chunks), (64, Some(3)));
        assert!(parse(&a("--ctx 64")).unwrap_err().contains("--file"));
        assert!(parse(&a("--file t --ctx 2"))
            .unwrap_err()
            .contains("at least 4"));
        assert!(parse(&a("--file t --bogus"))
            .unwrap_err()
            .contains("unknown argument"));
    }
}
