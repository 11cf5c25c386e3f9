//! SmolLM2-135M-Instruct (Q4_1 GGUF) end to end: the tokenizer built from its metadata
//! against ids from an independent implementation, the module it imports to, and
//! greedy generation through the reference interpreter. Needs the model file
//! (`$LLMC_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf`, default `.cache/models`); skips
//! with a message when it is absent. Run generation in release:
//! `cargo test --release -p llmc-frontend --test smollm2`.

mod common;

use llmc_frontend::gguf;
use llmc_ir::interp::Interpreter;
use llmc_ir::{DType, Tensor};
use llmc_runtime::ChatMessage;
use std::time::Instant;

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Ids from `tests/oracle/gguf_tokenizer_oracle.py`: transformers' own GGUF tokenizer
/// conversion (`byte_level_tokenizer` + `add_gguf_special_tokens`) over this file's
/// metadata, read with the `gguf` package.
const ORACLE: &[(&str, &[u32])] = &[
    ("The capital of France is", &[504, 3575, 282, 4649, 314]),
    (
        "Paris is the capital and largest city of France.",
        &[38634, 314, 260, 3575, 284, 3995, 2240, 282, 4649, 30],
    ),
    (
        "  indented\n\tcode() { return x->y; }\r\n",
        &[
            216, 641, 6574, 198, 197, 4635, 1000, 1662, 1003, 1792, 22690, 105, 43, 4029, 2738,
        ],
    ),
    (
        "Hello, world! héllo wörld — 日本語のテキスト 🎉🦀",
        &[
            19556, 28, 905, 17, 294, 2756, 31394, 267, 29989, 400, 1841, 17097, 241, 115, 40993,
            179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226, 15107, 232, 227,
            10813, 116, 218,
        ],
    ),
    (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n",
        &[1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198],
    ),
];

#[test]
fn tokenizer_matches_reference_ids() {
    let Some(path) = common::model_file(MODEL) else {
        return;
    };
    let tok = gguf::load_tokenizer(&path).expect("tokenizer");
    assert_eq!(tok.vocab_size(), 49152);
    for (text, want) in ORACLE {
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(&ids, want, "ids of {text:?}");
        assert_eq!(tok.decode(&ids).unwrap(), *text, "round trip of {text:?}");
    }
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_ids(), &[2]);
    for text in [
        "",
        " ",
        "a",
        "Ünïcödé: ça, 東京, Привет, 🎉🦀👩‍👩‍👧",
        "tabs\tand\r\nCRLF   triple spaces",
        "1234567890 3.14159 -42",
        "<|endoftext|><|im_start|>assistant\n",
        "emoji at the end 🦀",
    ] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text, "round trip of {text:?}");
    }
    // SmolLM's pre-tokenizer splits digits one by one.
    assert_eq!(tok.encode("2024", false).unwrap().len(), 4);
    let chat = tok
        .apply_chat_template(
            &[ChatMessage::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    assert_eq!(
        chat,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn imports_with_expected_structure() {
    let Some(path) = common::model_file(MODEL) else {
        return;
    };
    let m = gguf::load(&path).expect("imports");
    llmc_ir::verify::verify(&m).expect("verifies");
    assert_eq!(m.info.architecture, "llama");
    assert_eq!(m.info.context_length, Some(8192));
    assert_eq!(
        (m.info.bos_token, m.info.eos_tokens.clone()),
        (Some(1), vec![2])
    );
    assert!(m
        .info
        .chat_template
        .as_deref()
        .unwrap_or("")
        .contains("<|im_start|>"));
    // 30 blocks of 9 weights, the embedding (tied: also the output head), the final norm.
    assert_eq!(m.weights.len(), 30 * 9 + 2);
    let w = |n: &str| m.weight(m.weight_id(n).unwrap());
    assert_eq!(w("model.embed_tokens.weight").dtype, DType::Q8_0);
    assert_eq!(w("model.layers.29.mlp.down_proj.weight").dtype, DType::Q4_1);
    assert_eq!(
        w("model.layers.0.self_attn.k_proj.weight")
            .shape
            .to_string(),
        "[192, 576]"
    );
    let out = m.graph.value(m.graph.outputs[0]);
    assert_eq!(out.ty.to_string(), "f32[batch, 49152]");
    let text = llmc_ir::text::print(&m);
    assert!(
        text.contains("kv_append(%l29.k_rope, %l29.v_heads) {layer = 29}"),
        "{}",
        &text[..2000]
    );
}

fn argmax(v: &[f64]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn greedy_generation_says_paris() {
    let Some(path) = common::model_file(MODEL) else {
        return;
    };
    let tok = gguf::load_tokenizer(&path).expect("tokenizer");
    let m = gguf::load(&path).expect("imports");
    let prompt = tok.encode("The capital of France is", false).unwrap();
    let n = prompt.len();
    let mut interp = Interpreter::new(&m);
    let ids = |v: &[u32]| {
        Tensor::from_i64(
            DType::I64,
            vec![1, v.len()],
            v.iter().map(|&x| x as i64).collect(),
        )
    };
    let pos = |start: usize, len: usize| {
        Tensor::from_i64(
            DType::I64,
            vec![1, len],
            (start..start + len).map(|x| x as i64).collect(),
        )
    };
    let t0 = Instant::now();
    let out = interp.run(&[ids(&prompt), pos(0, n)]).expect("prefill");
    let prefill = t0.elapsed();
    let mut next = argmax(&out[0].to_f64());
    let mut generated = vec![next];
    let mut stream = tok.stream(true);
    let mut streamed = stream.push(&tok, next).unwrap().unwrap_or_default();
    let t1 = Instant::now();
    while generated.len() < 16 && !tok.eos_ids().contains(&next) {
        let p = n + generated.len() - 1;
        let out = interp.run(&[ids(&[next]), pos(p, 1)]).expect("decode step");
        next = argmax(&out[0].to_f64());
        generated.push(next);
        streamed.push_str(&stream.push(&tok, next).unwrap().unwrap_or_default());
    }
    streamed.push_str(&stream.flush(&tok).unwrap().unwrap_or_default());
    let steps = generated.len() - 1;
    let decode = t1.elapsed();
    let text = tok.decode_opts(&generated, true).unwrap();
    eprintln!("prompt ids: {prompt:?}");
    eprintln!("generated ids: {generated:?}");
    eprintln!("generated text: {text:?}");
    eprintln!(
        "prefill of {n} tokens: {:.2} s; {steps} decode steps: {:.2} s ({:.2} s/token)",
        prefill.as_secs_f64(),
        decode.as_secs_f64(),
        decode.as_secs_f64() / steps.max(1) as f64
    );
    assert_eq!(streamed, text, "streaming decode gives the same text");
    assert!(text.contains("Paris"), "continuation {text:?} lacks Paris");
}
