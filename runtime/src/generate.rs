//! Text generation in the emitted executable: tokenize the prompt (optionally through
//! the chat template), then either submit it to the engine (serving-form executables:
//! [`generate_engine`]) or, for one-sequence builds, one model call for the whole
//! prompt (prefill) and one call per sampled token with the KV cache carried by the
//! [`Model`] ([`generate`]); text streams to stdout and timings to stderr, stopping at
//! an end-of-sequence id, the token budget or the context length.

use crate::exec::{HostTensor, Model};
use crate::plan::{ElemType, LlmInfo};
use crate::sampler::{Sampler, SamplerConfig};
use crate::{ChatMessage, Tokenizer};
use std::io::Write;
use std::time::Instant;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Prompt text.
    pub prompt: String,
    /// Apply the chat template to the prompt as one user message.
    pub chat: bool,
    /// Stop after this many new tokens.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampler: SamplerConfig,
    /// More prompts: with any, every prompt runs through the engine (all at once, or
    /// one after another with `one_at_a_time`) and each result is one JSON line.
    pub more_prompts: Vec<String>,
    /// Run the prompts one after another (the prefix cache carries over).
    pub one_at_a_time: bool,
}

/// The tokenizer described by `llm`.
pub fn tokenizer(llm: &LlmInfo) -> Result<Tokenizer, String> {
    Ok(Tokenizer::from_json_bytes(llm.tokenizer_json.as_bytes())
        .map_err(|e| format!("the embedded tokenizer: {e}"))?
        .with_specials(llm.bos, llm.eos.clone())
        .with_chat_template(llm.chat_template.clone()))
}

fn i64_tensor(v: impl Iterator<Item = i64>, n: usize) -> HostTensor {
    HostTensor {
        dtype: ElemType::I64,
        shape: vec![1, n],
        data: v.flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// One model call on `ids` at positions `start..`: the last position's logits.
fn step(model: &mut Model, llm: &LlmInfo, ids: &[u32], start: usize) -> Result<Vec<f32>, String> {
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
    let all: Vec<f32> = t
        .data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(all[all.len().saturating_sub(vocab)..].to_vec())
}

/// The prompt's token ids (through the chat template with `--chat`).
fn prompt_ids(tok: &Tokenizer, llm: &LlmInfo, opts: &GenerateOptions) -> Result<Vec<u32>, String> {
    let (prompt, add_special) = if opts.chat {
        let text = tok
            .apply_chat_template(&[ChatMessage::new("user", &opts.prompt)], true)
            .map_err(|e| format!("--chat: {e}"))?;
        (text, false)
    } else {
        (opts.prompt.clone(), true)
    };
    let prompt_ids = tok
        .encode(&prompt, add_special)
        .map_err(|e| format!("--prompt: {e}"))?;
    if prompt_ids.is_empty() {
        return Err("--prompt: the prompt encodes to no tokens".into());
    }
    let ctx_len = llm.context_length.unwrap_or(i64::MAX);
    if prompt_ids.len() as i64 > ctx_len {
        return Err(format!(
            "--prompt: {} tokens exceed the model's context length {ctx_len}",
            prompt_ids.len()
        ));
    }
    Ok(prompt_ids)
}

/// Generates text through the engine (a serving-form executable): one request,
/// streamed as its tokens arrive; returns the number of generated tokens.
pub fn generate_engine(
    engine: &crate::engine::EngineHandle,
    llm: &LlmInfo,
    opts: &GenerateOptions,
) -> Result<usize, String> {
    use crate::engine::{Event, FinishReason, Request};
    let tok = tokenizer(llm)?;
    let prompt = prompt_ids(&tok, llm, opts)?;
    let ctx = engine.facts().context_length;
    let max_tokens = opts.max_tokens.min(ctx.saturating_sub(prompt.len()));
    let mut req = Request::greedy(prompt.clone(), max_tokens);
    req.sampling = opts.sampler.clone();
    let (tx, rx) = std::sync::mpsc::channel::<Event>();
    let t0 = Instant::now();
    engine
        .submit(req, Box::new(move |e| tx.send(e).is_ok()))
        .map_err(|e| format!("--prompt: {e}"))?;
    let mut stream = tok.stream(true);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let io = |e: std::io::Error| format!("writing the text: {e}");
    let mut generated = 0usize;
    let mut first: Option<f64> = None;
    let mut reason = FinishReason::Error;
    for e in rx {
        match e {
            Event::Token { id, .. } => {
                generated += 1;
                if first.is_none() {
                    let f = t0.elapsed().as_secs_f64();
                    first = Some(f);
                    eprintln!(
                        "generate: prompt {} tokens, first token after {:.3} s ({:.1} tok/s prefill), {} threads",
                        prompt.len(),
                        f,
                        prompt.len() as f64 / f.max(1e-9),
                        crate::pool::num_threads()
                    );
                }
                if let Some(piece) = stream.push(&tok, id).map_err(|e| e.to_string())? {
                    out.write_all(piece.as_bytes()).map_err(io)?;
                    out.flush().map_err(io)?;
                }
            }
            Event::Error(e) => return Err(e),
            Event::Finished { reason: r, .. } => {
                reason = r;
                break;
            }
            Event::PromptLogprobs(_) => {}
        }
    }
    if let Some(piece) = stream.flush(&tok).map_err(|e| e.to_string())? {
        out.write_all(piece.as_bytes()).map_err(io)?;
    }
    writeln!(out).map_err(io)?;
    out.flush().map_err(io)?;
    let total = t0.elapsed().as_secs_f64();
    let decode = total - first.unwrap_or(total);
    let stop = match reason {
        FinishReason::Stop => "end of sequence",
        FinishReason::Length => "max tokens",
        FinishReason::ContextLength => "context length",
        FinishReason::Cancelled => "cancelled",
        FinishReason::Error => "error",
    };
    eprintln!(
        "generate: {generated} tokens in {decode:.3} s ({:.2} tok/s), stopped at {stop}",
        generated.saturating_sub(1) as f64 / decode.max(1e-9)
    );
    Ok(generated)
}

/// Several prompts through the engine: submitted together (or one at a time), each
/// result printed as one JSON line in prompt order (`index`, `prompt_tokens`,
/// `cached_tokens`, `ids`, `logprobs` of each generated token, `text`,
/// `finish_reason`), the engine's counters on stderr.
pub fn generate_many(
    engine: &crate::engine::EngineHandle,
    llm: &LlmInfo,
    opts: &GenerateOptions,
) -> Result<(), String> {
    use crate::engine::{Event, Request};
    let tok = tokenizer(llm)?;
    let texts: Vec<&String> = std::iter::once(&opts.prompt)
        .chain(&opts.more_prompts)
        .collect();
    let ctx = engine.facts().context_length;
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Event)>();
    let n = texts.len();
    let mut ids: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut lps: Vec<Vec<f32>> = vec![Vec::new(); n];
    let mut fin: Vec<Option<(String, usize, usize)>> = vec![None; n];
    let t0 = Instant::now();
    let mut pending = 0usize;
    let collect = |want: usize,
                   ids: &mut Vec<Vec<u32>>,
                   lps: &mut Vec<Vec<f32>>,
                   fin: &mut Vec<Option<(String, usize, usize)>>|
     -> Result<(), String> {
        let mut done = 0;
        while done < want {
            let (i, e) = rx.recv().map_err(|_| "the engine stopped".to_string())?;
            match e {
                Event::Token { id, logprob } => {
                    ids[i].push(id);
                    lps[i].push(logprob.map_or(f32::NAN, |l| l.logprob));
                }
                Event::Error(e) => return Err(format!("prompt {i}: {e}")),
                Event::Finished {
                    reason,
                    prompt_tokens,
                    cached_tokens,
                    ..
                } => {
                    fin[i] = Some((reason.as_str().to_string(), prompt_tokens, cached_tokens));
                    done += 1;
                }
                Event::PromptLogprobs(_) => {}
            }
        }
        Ok(())
    };
    for (i, text) in texts.iter().enumerate() {
        let one = GenerateOptions {
            prompt: (*text).clone(),
            ..opts.clone()
        };
        let prompt = prompt_ids(&tok, llm, &one)?;
        let max_tokens = opts.max_tokens.min(ctx.saturating_sub(prompt.len()));
        let mut req = Request::greedy(prompt, max_tokens);
        req.sampling = opts.sampler.clone();
        req.logprobs = Some(0);
        let tx = tx.clone();
        engine
            .submit(req, Box::new(move |e| tx.send((i, e)).is_ok()))
            .map_err(|e| format!("prompt {i}: {e}"))?;
        pending += 1;
        if opts.one_at_a_time {
            collect(1, &mut ids, &mut lps, &mut fin)?;
            pending -= 1;
        }
    }
    collect(pending, &mut ids, &mut lps, &mut fin)?;
    let secs = t0.elapsed().as_secs_f64();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let io = |e: std::io::Error| format!("writing the results: {e}");
    let mut total = 0;
    for (i, ((ids, f), lp)) in ids.iter().zip(&fin).zip(&lps).enumerate() {
        let (reason, prompt_tokens, cached) = f.clone().unwrap_or_default();
        total += ids.len();
        let text = tok.decode(ids).map_err(|e| e.to_string())?;
        let line = serde_json::json!({
            "index": i,
            "prompt_tokens": prompt_tokens,
            "cached_tokens": cached,
            "ids": ids,
            "logprobs": lp,
            "text": text,
            "finish_reason": reason,
        });
        writeln!(out, "{line}").map_err(io)?;
    }
    out.flush().map_err(io)?;
    let st = engine.stats();
    eprintln!(
        "generate: {n} prompts, {total} tokens in {secs:.3} s ({:.1} tok/s), {} steps, {} preemptions, prefix cache {}/{} blocks hit, kv blocks {} of {}",
        total as f64 / secs.max(1e-9),
        st.steps,
        st.preemptions,
        st.prefix_hits,
        st.prefix_queries,
        st.kv_blocks_used,
        st.kv_blocks_total
    );
    Ok(())
}

/// Generates text; returns the number of generated tokens.
pub fn generate(model: &mut Model, opts: &GenerateOptions) -> Result<usize, String> {
    let llm = model
        .plan()
        .llm
        .clone()
        .ok_or("this executable holds no language model (no tokenizer was built in)")?;
    let tok = tokenizer(&llm)?;
    let prompt_ids = prompt_ids(&tok, &llm, opts)?;
    let ctx_len = llm.context_length.unwrap_or(i64::MAX);
    let mut sampler = Sampler::new(opts.sampler.clone()).map_err(|e| e.to_string())?;
    let eos = tok.eos_ids().to_vec();
    model.reset();
    let t0 = Instant::now();
    let mut logits = step(model, &llm, &prompt_ids, 0)?;
    let prefill = t0.elapsed().as_secs_f64();
    eprintln!(
        "generate: prompt {} tokens, prefill {:.3} s ({:.1} tok/s), {} threads",
        prompt_ids.len(),
        prefill,
        prompt_ids.len() as f64 / prefill.max(1e-9),
        crate::pool::num_threads()
    );
    let mut history = prompt_ids.clone();
    let mut generated = 0usize;
    let mut stream = tok.stream(true);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let io = |e: std::io::Error| format!("writing the text: {e}");
    let t1 = Instant::now();
    let mut stop = "max tokens";
    while generated < opts.max_tokens {
        let next = sampler
            .sample(&logits, &history)
            .map_err(|e| e.to_string())?;
        if eos.contains(&next) {
            stop = "end of sequence";
            break;
        }
        generated += 1;
        history.push(next);
        if let Some(piece) = stream.push(&tok, next).map_err(|e| e.to_string())? {
            out.write_all(piece.as_bytes()).map_err(io)?;
            out.flush().map_err(io)?;
        }
        if generated == opts.max_tokens {
            break;
        }
        let pos = history.len() - 1;
        if pos as i64 >= ctx_len {
            stop = "context length";
            break;
        }
        logits = step(model, &llm, &[next], pos)?;
    }
    if let Some(piece) = stream.flush(&tok).map_err(|e| e.to_string())? {
        out.write_all(piece.as_bytes()).map_err(io)?;
    }
    writeln!(out).map_err(io)?;
    out.flush().map_err(io)?;
    let decode = t1.elapsed().as_secs_f64();
    eprintln!(
        "generate: {generated} tokens in {decode:.3} s ({:.2} tok/s), stopped at {stop}",
        generated as f64 / decode.max(1e-9)
    );
    Ok(generated)
}
