//! `llmc run`: text generation with the reference interpreter, before there is a
//! compiled executable. The decoder graph contract is `%ids: i64[batch, seq]`,
//! `%pos: i64[batch, seq]` -> `%logits: f32[batch, vocab]` (the last position's
//! logits), with the KV cache carried by the interpreter between calls: one call for
//! the whole prompt (prefill), then one call per generated token.

use anyhow::{bail, Context, Result};
use llmc_ir::interp::Interpreter;
use llmc_ir::{DType, ModelInfo, Module, Tensor, TokenizerSource, ValueId};
use llmc_runtime::sampler::{Sampler, SamplerConfig};
use llmc_runtime::{ChatMessage, Tokenizer};
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
pub struct DecoderIo {
    /// Graph-input index of the token ids.
    pub ids: usize,
    /// Graph-input index of the positions.
    pub pos: usize,
    /// Graph-output index of the logits.
    pub logits: usize,
}

/// Finds the decoder contract's inputs and output, or says why the graph is not one.
pub fn find_io(m: &Module) -> Result<DecoderIo> {
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

/// The tokenizer the model names, with the model's special ids and chat template
/// (ModelInfo wins over what the tokenizer file says, when both are set).
pub fn load_tokenizer(info: &ModelInfo) -> Result<Tokenizer> {
    let tok = match &info.tokenizer {
        TokenizerSource::None => {
            bail!("the model names no tokenizer (ModelInfo.tokenizer is none); llmc run needs a language model")
        }
        TokenizerSource::HfJson(p) => {
            let bytes = std::fs::read(p)
                .with_context(|| format!("cannot read tokenizer {}", p.display()))?;
            Tokenizer::from_json_bytes(&bytes)
                .with_context(|| format!("tokenizer {}", p.display()))?
        }
        TokenizerSource::Gguf(p) => llmc_frontend::gguf::load_tokenizer(p)?,
    };
    let ids = |v: &[i64]| -> Vec<u32> { v.iter().filter_map(|&i| u32::try_from(i).ok()).collect() };
    let bos = info
        .bos_token
        .and_then(|b| u32::try_from(b).ok())
        .or(tok.bos_id());
    let eos = if info.eos_tokens.is_empty() {
        tok.eos_ids().to_vec()
    } else {
        ids(&info.eos_tokens)
    };
    let template = info
        .chat_template
        .clone()
        .or_else(|| tok.chat_template().map(str::to_string));
    Ok(tok.with_specials(bos, eos).with_chat_template(template))
}

/// Runs generation, streaming text to stdout and timings to stderr.
pub fn run(module: &Module, opts: &GenerateOptions, load_secs: f64) -> Result<()> {
    let io = find_io(module)?;
    let info = &module.info;
    let tok = load_tokenizer(info).context("loading the tokenizer")?;
    let (prompt, add_special) = if opts.chat {
        let text = tok
            .apply_chat_template(&[ChatMessage::new("user", &opts.prompt)], true)
            .context("--chat")?;
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
    let eos = tok.eos_ids().to_vec();

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
    let mut stream = tok.stream(true);
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
        if let Some(piece) = stream.push(&tok, next)? {
            out.write_all(piece.as_bytes())?;
            out.flush()?;
        }
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
    if let Some(piece) = stream.flush(&tok)? {
        out.write_all(piece.as_bytes())?;
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
