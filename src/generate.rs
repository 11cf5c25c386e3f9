//! `llmc run`: text generation with the reference interpreter, before there is a
//! compiled executable. The decoder graph contract is `%ids: i64[batch, seq]`,
//! `%pos: i64[batch, seq]` -> `%logits: f32[batch, vocab]` (the last position's
//! logits), with the KV cache carried by the interpreter between calls: one call for
//! the whole prompt (prefill), then one call per generated token.

use crate::bridge::Tokenizer;
use anyhow::{bail, Context, Result};
use llmc_ir::interp::Interpreter;
use llmc_ir::{DType, Module, Tensor, ValueId};
use llmc_runtime::chat::{apply_chat_template, Message};
use llmc_runtime::sampler::{Sampler, SamplerConfig};
use std::io::Write;
use std::time::Instant;

/// What to generate.
pub struct GenerateOptions {
    /// The prompt text.
    pub prompt: String,
    /// Apply the model's chat template to the prompt as one user message.
    pub chat: bool,
    /// Stop after this many new tokens.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampler: SamplerConfig,
}

/// Where the decoder's inputs and output sit in the graph.
#[derive(Debug)]
struct DecoderIo {
    ids: usize,
    pos: usize,
    logits: usize,
}

fn find_io(m: &Module) -> Result<DecoderIo> {
    let g = &m.graph;
    let names = |vs: &[ValueId]| -> String {
        vs.iter()
            .map(|&v| format!("%{}: {}", g.value(v).name, g.value(v).ty))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sig = || {
        format!(
            "llmc run needs a decoder graph (%ids: i64[batch, seq], %pos: i64[batch, seq]) \
             -> (%logits: f32[batch, vocab]); this graph is ({}) -> ({})",
            names(&g.inputs),
            names(&g.outputs)
        )
    };
    let input = |name: &str| {
        g.inputs
            .iter()
            .position(|&v| g.value(v).name == name && g.value(v).ty.dtype == DType::I64)
    };
    let (Some(ids), Some(pos)) = (input("ids"), input("pos")) else {
        bail!("{}", sig());
    };
    if g.inputs.len() != 2 {
        bail!("{}", sig());
    }
    let logits = g
        .outputs
        .iter()
        .position(|&v| g.value(v).name == "logits")
        .or(if g.outputs.len() == 1 { Some(0) } else { None });
    let Some(logits) = logits else {
        bail!("{}", sig());
    };
    Ok(DecoderIo { ids, pos, logits })
}

/// The last row of a `[1, vocab]` (or `[1, seq, vocab]`) logits tensor.
fn last_row(t: &Tensor) -> Result<Vec<f32>> {
    let vocab = match t.shape.as_slice() {
        [1, v] | [1, _, v] => *v,
        s => bail!("logits have shape {s:?}, expected [1, vocab]"),
    };
    let n = t.numel();
    Ok((n - vocab..n).map(|i| t.get_f64(i) as f32).collect())
}

/// Streams decoded text: decodes all generated ids each step and prints what is new,
/// holding back while the text ends in an incomplete UTF-8 sequence (a token that is
/// part of a multi-byte character decodes to U+FFFD until the rest arrives).
struct Streamer {
    printed: usize,
}

impl Streamer {
    fn push(&mut self, tok: &Tokenizer, ids: &[u32], out: &mut impl Write) -> Result<()> {
        let text = tok.decode(ids)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(());
        }
        if let Some(new) = text.get(self.printed..) {
            out.write_all(new.as_bytes())?;
            out.flush()?;
            self.printed = text.len();
        } else {
            // Decoding re-segmented earlier text (rare with byte-level BPE); print
            // nothing rather than garbage, and resynchronise.
            self.printed = text.len();
        }
        Ok(())
    }
}

/// Runs generation, streaming text to stdout and timings to stderr.
pub fn run(module: &Module, opts: &GenerateOptions, load_secs: f64) -> Result<()> {
    let io = find_io(module)?;
    let info = &module.info;
    let tok = Tokenizer::load(&info.tokenizer).context("loading the tokenizer")?;
    let text_of = |id: Option<i64>| {
        id.and_then(|i| u32::try_from(i).ok())
            .and_then(|i| tok.token_text(i))
            .unwrap_or_default()
    };

    let (prompt, add_special) = if opts.chat {
        let tmpl = info.chat_template.as_deref().with_context(|| {
            "--chat: the model has no chat template (ModelInfo.chat_template is empty)"
        })?;
        let text = apply_chat_template(
            tmpl,
            &[Message::new("user", &opts.prompt)],
            &text_of(info.bos_token),
            &text_of(info.eos_tokens.first().copied()),
            true,
        )?;
        // The template writes the special tokens itself.
        (text, false)
    } else {
        (opts.prompt.clone(), true)
    };
    let prompt_ids = tok.encode(&prompt, add_special)?;
    if prompt_ids.is_empty() {
        bail!("--prompt: the prompt encodes to no tokens");
    }
    let ctx_len = info.context_length.unwrap_or(i64::MAX);
    if prompt_ids.len() as i64 > ctx_len {
        bail!(
            "--prompt: {} tokens exceed the model's context length {ctx_len}",
            prompt_ids.len()
        );
    }
    let mut sampler = Sampler::new(opts.sampler.clone())?;
    let eos: Vec<u32> = info
        .eos_tokens
        .iter()
        .filter_map(|&e| u32::try_from(e).ok())
        .collect();

    let mut interp = Interpreter::new(module);
    let step = |interp: &mut Interpreter, ids: &[u32], start: usize| -> Result<Vec<f32>> {
        let n = ids.len();
        let mut inputs = vec![Tensor::zeros(DType::I64, vec![1, n]); 2];
        inputs[io.ids] = Tensor::from_i64(
            DType::I64,
            vec![1, n],
            ids.iter().map(|&t| t as i64).collect(),
        );
        inputs[io.pos] = Tensor::from_i64(
            DType::I64,
            vec![1, n],
            (start..start + n).map(|p| p as i64).collect(),
        );
        let outs = interp
            .run(&inputs)
            .context("running the model with the reference interpreter")?;
        let logits = outs
            .get(io.logits)
            .context("the interpreter returned fewer outputs than the graph has")?;
        last_row(logits)
    };

    eprintln!(
        "llmc run: loaded in {load_secs:.2} s; prompt {} tokens; engine interp",
        prompt_ids.len()
    );
    let t0 = Instant::now();
    let mut logits = step(&mut interp, &prompt_ids, 0)?;
    let prefill = t0.elapsed().as_secs_f64();
    eprintln!(
        "llmc run: prefill {:.2} s ({:.1} tok/s)",
        prefill,
        prompt_ids.len() as f64 / prefill.max(1e-9)
    );

    let mut history = prompt_ids.clone();
    let mut generated: Vec<u32> = Vec::new();
    let mut streamer = Streamer { printed: 0 };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let t1 = Instant::now();
    let mut stop = "max tokens";
    while generated.len() < opts.max_tokens {
        let next = sampler.sample(&logits, &history)?;
        if eos.contains(&next) {
            stop = "end of sequence";
            break;
        }
        generated.push(next);
        history.push(next);
        streamer.push(&tok, &generated, &mut out)?;
        if generated.len() == opts.max_tokens {
            break;
        }
        let pos = history.len() - 1;
        if pos as i64 >= ctx_len {
            stop = "context length";
            break;
        }
        logits = step(&mut interp, &[next], pos)?;
    }
    writeln!(out)?;
    out.flush()?;
    let decode = t1.elapsed().as_secs_f64();
    eprintln!(
        "llmc run: {} tokens in {:.2} s ({:.2} tok/s), stopped at {stop}",
        generated.len(),
        decode,
        generated.len() as f64 / decode.max(1e-9)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmc_ir::{Shape, TensorType};

    #[test]
    fn last_row_picks_the_final_position() {
        let t = Tensor::f32(vec![1, 2], vec![0.5, 1.5]);
        assert_eq!(last_row(&t).unwrap(), vec![0.5, 1.5]);
        let t = Tensor::f32(vec![1, 2, 3], vec![0., 1., 2., 3., 4., 5.]);
        assert_eq!(last_row(&t).unwrap(), vec![3., 4., 5.]);
        assert!(last_row(&Tensor::f32(vec![2, 1], vec![0., 1.])).is_err());
    }

    #[test]
    fn decoder_signature_is_checked() {
        let mut m = Module::new("t");
        let ty = TensorType::new(DType::I64, Shape::of(&[1, 1]));
        let a = m.graph.add_input("pos", ty.clone());
        m.graph.add_input("ids", ty.clone());
        m.graph.outputs.push(a);
        let io = find_io(&m).unwrap();
        assert_eq!((io.ids, io.pos, io.logits), (1, 0, 0));
        let mut m = Module::new("t");
        let a = m.graph.add_input("x", ty);
        m.graph.outputs.push(a);
        let e = find_io(&m).unwrap_err().to_string();
        assert!(
            e.contains("needs a decoder graph") && e.contains("%x: i64[1, 1]"),
            "{e}"
        );
    }
}
