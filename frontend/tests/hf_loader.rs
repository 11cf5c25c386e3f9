//! The Hugging Face loader on small folders written here: config mapping, sharded
//! weights, GPT-2's Conv1D layout, special tokens, and every kind of bad input, each
//! error checked to name the file and the key or tensor at fault.

use anyhow::Result;
use llmc_frontend::hf::{self, Family};
use llmc_frontend::llm::{Activation, NormKind, Positions, TensorSource};
use llmc_ir::{DType, Shape};
use serde_json::{json, Value};
use std::path::Path;

/// Bytes of a safetensors file with the given header and data, written verbatim (so
/// tests can write inconsistent ones).
fn st_bytes(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = header.to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A well-formed safetensors file of f32 tensors `(name, shape, values)`.
fn st_f32(tensors: &[(&str, &[usize], Vec<f32>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, vals) in tensors {
        assert_eq!(vals.len(), shape.iter().product::<usize>());
        let start = data.len();
        for v in vals {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.to_string(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    st_bytes(&Value::Object(header), &data)
}

fn write_json(dir: &Path, name: &str, v: &Value) {
    std::fs::write(dir.join(name), v.to_string()).unwrap();
}

fn llama_config() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 32, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 128,
        "tie_word_embeddings": true, "head_dim": null,
        "rope_scaling": {"rope_type": "linear", "factor": 4.0}
    })
}

/// A folder with `config` and a one-tensor model.safetensors.
fn folder(config: &Value) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write_json(d.path(), "config.json", config);
    std::fs::write(
        d.path().join("model.safetensors"),
        st_f32(&[("model.norm.weight", &[8], vec![1.0; 8])]),
    )
    .unwrap();
    d
}

fn err_of(dir: &Path) -> String {
    match hf::open(dir) {
        Ok(_) => panic!("{} loaded but should not have", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} does not mention {p:?}");
    }
}

#[test]
fn llama_config_maps_to_decoder_config() -> Result<()> {
    let d = folder(&llama_config());
    let m = hf::open(d.path())?;
    let Family::Decoder(c) = m.family else {
        panic!("not a decoder")
    };
    assert_eq!(c.arch, "llama");
    assert_eq!(
        (
            c.vocab_size,
            c.hidden_size,
            c.intermediate_size,
            c.num_layers
        ),
        (32, 8, 16, 1)
    );
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (2, 1, 4));
    assert_eq!(c.norm, NormKind::RmsNorm);
    assert_eq!(c.norm_eps, 1e-5);
    assert_eq!(c.activation, Activation::Silu);
    assert!(c.gated_mlp);
    assert_eq!(c.positions, Positions::RopeNeox);
    assert_eq!((c.rope_theta, c.rope_scale), (500000.0, 4.0));
    assert!(c.tied_embeddings && !c.attn_bias && !c.mlp_bias);
    assert_eq!(c.context_length, 128);
    Ok(())
}

#[test]
fn qwen2_and_mistral_specifics() -> Result<()> {
    let mut cfg = llama_config();
    cfg["architectures"] = json!(["Qwen2ForCausalLM"]);
    cfg["rope_scaling"] = Value::Null;
    cfg["head_dim"] = json!(16);
    let Family::Decoder(c) = hf::open(folder(&cfg).path())?.family else {
        panic!("not a decoder")
    };
    assert_eq!(c.arch, "qwen2");
    assert!(c.attn_bias && !c.mlp_bias, "Qwen2 has q/k/v biases only");
    assert_eq!((c.head_dim, c.rope_scale), (16, 1.0));

    cfg["architectures"] = json!(["MistralForCausalLM"]);
    cfg["sliding_window"] = json!(64);
    let Family::Decoder(c) = hf::open(folder(&cfg).path())?.family else {
        panic!("not a decoder")
    };
    assert_eq!(c.arch, "mistral");
    assert!(!c.attn_bias);
    assert_eq!(c.context_length, 64, "context capped at the sliding window");
    Ok(())
}

#[test]
fn transformers5_rope_parameters_and_layer_types() -> Result<()> {
    let mut cfg = llama_config();
    let o = cfg.as_object_mut().unwrap();
    o.remove("rope_theta");
    o.remove("rope_scaling");
    o.insert(
        "rope_parameters".into(),
        json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0}),
    );
    let Family::Decoder(c) = hf::open(folder(&cfg).path())?.family else {
        panic!("not a decoder")
    };
    assert_eq!((c.rope_theta, c.rope_scale), (1000000.0, 2.0));

    // A Mistral whose layers are all full attention ignores `sliding_window`; one
    // with a sliding layer caps the context at the window.
    cfg["architectures"] = json!(["MistralForCausalLM"]);
    cfg["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 10000.0});
    cfg["sliding_window"] = json!(32);
    cfg["layer_types"] = json!(["full_attention"]);
    let Family::Decoder(c) = hf::open(folder(&cfg).path())?.family else {
        panic!("not a decoder")
    };
    assert_eq!(
        (c.rope_theta, c.rope_scale, c.context_length),
        (10000.0, 1.0, 128)
    );
    cfg["layer_types"] = json!(["sliding_attention"]);
    let Family::Decoder(c) = hf::open(folder(&cfg).path())?.family else {
        panic!("not a decoder")
    };
    assert_eq!(c.context_length, 32);

    cfg["rope_parameters"] = json!({"rope_type": "llama3", "factor": 8.0, "rope_theta": 1.0});
    assert_mentions(
        &err_of(folder(&cfg).path()),
        &["config.json", "`rope_parameters`", "llama3"],
    );
    Ok(())
}

#[test]
fn gpt2_config_and_conv1d_layout() -> Result<()> {
    let d = tempfile::tempdir()?;
    write_json(
        d.path(),
        "config.json",
        &json!({
            "architectures": ["GPT2LMHeadModel"], "vocab_size": 10, "n_embd": 4,
            "n_layer": 1, "n_head": 2, "n_positions": 16, "n_inner": null,
            "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"
        }),
    );
    // c_attn is Conv1D [in = 4, out = 3*4]: element (i, j) = 100*i + j.
    let c_attn: Vec<f32> = (0..4)
        .flat_map(|i| (0..12).map(move |j| (100 * i + j) as f32))
        .collect();
    let bias: Vec<f32> = (0..12).map(|j| j as f32 / 2.0).collect();
    let c_fc: Vec<f32> = (0..4 * 16).map(|k| k as f32).collect();
    std::fs::write(
        d.path().join("model.safetensors"),
        st_f32(&[
            ("h.0.attn.c_attn.weight", &[4, 12], c_attn),
            ("h.0.attn.c_attn.bias", &[12], bias),
            ("transformer.h.0.mlp.c_fc.weight", &[4, 16], c_fc),
            ("wte.weight", &[10, 4], vec![0.5; 40]),
        ]),
    )?;
    let m = hf::open(d.path())?;
    let Family::Decoder(c) = &m.family else {
        panic!("not a decoder")
    };
    assert_eq!((c.arch.as_str(), c.intermediate_size), ("gpt2", 16));
    assert_eq!(
        (c.norm, c.positions),
        (NormKind::LayerNorm, Positions::Learned)
    );
    assert_eq!(c.activation, Activation::GeluTanh);
    assert!(c.tied_embeddings && c.attn_bias && c.mlp_bias && !c.gated_mlp);

    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    // k_proj = columns 4..8 of c_attn, transposed to [out, in]: k[o][i] = 100*i + 4 + o.
    let k = m
        .source
        .get("model.layers.0.self_attn.k_proj.weight")
        .expect("k_proj");
    assert_eq!(k.shape, Shape::of(&[4, 4]));
    let want: Vec<f32> = (0..4)
        .flat_map(|o| (0..4).map(move |i| (100 * i + 4 + o) as f32))
        .collect();
    assert_eq!(f32s(k.data.bytes().unwrap()), want);
    let vb = m
        .source
        .get("model.layers.0.self_attn.v_proj.bias")
        .expect("v bias");
    assert_eq!(f32s(vb.data.bytes().unwrap()), vec![4.0, 4.5, 5.0, 5.5]);
    // c_fc (with the `transformer.` prefix) [4, 16] -> up_proj [16, 4].
    let up = m
        .source
        .get("model.layers.0.mlp.up_proj.weight")
        .expect("up");
    assert_eq!(up.shape, Shape::of(&[16, 4]));
    let upv = f32s(up.data.bytes().unwrap());
    for o in 0..16 {
        for i in 0..4 {
            assert_eq!(upv[o * 4 + i], (i * 16 + o) as f32);
        }
    }
    assert!(m.source.get("model.embed_tokens.weight").is_some());
    assert!(m
        .source
        .get("model.layers.0.mlp.gate_proj.weight")
        .is_none());
    Ok(())
}

#[test]
fn sharded_weights_and_special_tokens() -> Result<()> {
    let d = folder(&llama_config());
    std::fs::remove_file(d.path().join("model.safetensors"))?;
    std::fs::write(
        d.path().join("a.safetensors"),
        st_f32(&[("model.norm.weight", &[2], vec![1.0, 2.0])]),
    )?;
    std::fs::write(
        d.path().join("b.safetensors"),
        st_f32(&[("lm_head.weight", &[1, 2], vec![3.0, 4.0])]),
    )?;
    write_json(
        d.path(),
        "model.safetensors.index.json",
        &json!({"weight_map": {"model.norm.weight": "a.safetensors", "lm_head.weight": "b.safetensors"}}),
    );
    write_json(
        d.path(),
        "tokenizer.json",
        &json!({
            "added_tokens": [{"id": 0, "content": "<unk>"}, {"id": 7, "content": "<|end|>"}],
            "model": {"type": "BPE", "vocab": {"<s>": 1, "a": 2}, "merges": []}
        }),
    );
    write_json(
        d.path(),
        "tokenizer_config.json",
        &json!({"bos_token": {"content": "<s>"}, "eos_token": "<|end|>", "add_bos_token": true,
                "chat_template": "{{ messages }}"}),
    );
    write_json(
        d.path(),
        "generation_config.json",
        &json!({"eos_token_id": [2, 5]}),
    );
    let m = hf::open(d.path())?;
    let head = m
        .source
        .get("lm_head.weight")
        .expect("lm_head from shard b");
    assert_eq!(head.shape, Shape::of(&[1, 2]));
    assert_eq!(head.dtype, DType::F32);
    assert_eq!(
        head.data.bytes().unwrap(),
        [3.0f32.to_le_bytes(), 4.0f32.to_le_bytes()].concat()
    );
    assert!(m.source.get("model.norm.weight").is_some());
    assert_eq!(m.info.bos_token, Some(1));
    assert_eq!(m.info.eos_tokens, vec![2, 5, 7]);
    assert_eq!(m.info.chat_template.as_deref(), Some("{{ messages }}"));
    assert_eq!(
        m.info.extra.get("add_bos_token").map(String::as_str),
        Some("true")
    );
    Ok(())
}

#[test]
fn missing_config_key_is_named() {
    let mut cfg = llama_config();
    cfg.as_object_mut().unwrap().remove("hidden_size");
    let msg = err_of(folder(&cfg).path());
    assert_mentions(&msg, &["config.json", "missing", "`hidden_size`"]);

    let mut cfg = llama_config();
    cfg["num_hidden_layers"] = json!("six");
    let msg = err_of(folder(&cfg).path());
    assert_mentions(&msg, &["config.json", "`num_hidden_layers`", "integer"]);

    let mut cfg = llama_config();
    cfg.as_object_mut().unwrap().remove("architectures");
    assert_mentions(
        &err_of(folder(&cfg).path()),
        &["config.json", "`architectures`"],
    );

    let mut cfg = llama_config();
    cfg["rope_scaling"] = json!({"rope_type": "yarn", "factor": 2.0});
    assert_mentions(
        &err_of(folder(&cfg).path()),
        &["config.json", "`rope_scaling`", "yarn"],
    );
}

#[test]
fn unknown_architecture_lists_supported_ones() {
    let mut cfg = llama_config();
    cfg["architectures"] = json!(["FalconForCausalLM"]);
    let msg = err_of(folder(&cfg).path());
    assert_mentions(
        &msg,
        &[
            "config.json",
            "FalconForCausalLM",
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
            "GPT2LMHeadModel",
            "BertModel",
        ],
    );
}

/// A folder whose model.safetensors holds exactly `bytes`.
fn with_weights(bytes: &[u8]) -> tempfile::TempDir {
    let d = folder(&llama_config());
    std::fs::write(d.path().join("model.safetensors"), bytes).unwrap();
    d
}

#[test]
fn truncated_safetensors_header() {
    let msg = err_of(with_weights(&[1, 2, 3, 4, 5]).path());
    assert_mentions(&msg, &["model.safetensors", "truncated"]);
}

#[test]
fn header_length_larger_than_file() {
    let mut b = 1000u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{\"x\": {}}");
    let msg = err_of(with_weights(&b).path());
    assert_mentions(
        &msg,
        &[
            "model.safetensors",
            "header length 1000",
            "larger than the file",
        ],
    );
}

#[test]
fn tensor_offsets_outside_the_data() {
    let h = json!({"model.norm.weight": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}});
    let msg = err_of(with_weights(&st_bytes(&h, &[0u8; 16])).path());
    assert_mentions(
        &msg,
        &[
            "model.safetensors",
            "`model.norm.weight`",
            "[0, 64]",
            "outside",
        ],
    );
}

#[test]
fn tensor_size_disagrees_with_shape_and_dtype() {
    let h = json!({"blk.w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}});
    let msg = err_of(with_weights(&st_bytes(&h, &[0u8; 20])).path());
    assert_mentions(
        &msg,
        &["model.safetensors", "`blk.w`", "needs 24 bytes", "hold 20"],
    );
}

#[test]
fn overlapping_tensors_and_bad_json() {
    let h = json!({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}
    });
    let msg = err_of(with_weights(&st_bytes(&h, &[0u8; 12])).path());
    assert_mentions(&msg, &["model.safetensors", "`b`", "gaps or overlaps"]);

    let mut b = 5u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{\"a\":");
    let msg = err_of(with_weights(&b).path());
    assert_mentions(&msg, &["model.safetensors", "JSON"]);
}

#[test]
fn unsupported_dtype_names_the_tensor() {
    let h = json!({
        "embeddings.position_ids": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]},
        "model.layers.0.q.weight": {"dtype": "I32", "shape": [2], "data_offsets": [8, 16]}
    });
    let msg = err_of(with_weights(&st_bytes(&h, &[0u8; 16])).path());
    assert_mentions(
        &msg,
        &["model.safetensors", "`model.layers.0.q.weight`", "I32"],
    );
    // The I64 buffer alone is skipped, not an error.
    let h =
        json!({"embeddings.position_ids": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}});
    let m = hf::open(with_weights(&st_bytes(&h, &[0u8; 8])).path()).unwrap();
    assert_eq!(m.source.names().count(), 0);
}

#[test]
fn missing_shard_is_named() {
    let d = folder(&llama_config());
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    std::fs::write(
        d.path().join("model-00001-of-00002.safetensors"),
        st_f32(&[("model.norm.weight", &[2], vec![1.0, 2.0])]),
    )
    .unwrap();
    write_json(
        d.path(),
        "model.safetensors.index.json",
        &json!({"weight_map": {
            "model.norm.weight": "model-00001-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors"
        }}),
    );
    let msg = err_of(d.path());
    assert_mentions(
        &msg,
        &[
            "model.safetensors.index.json",
            "model-00002-of-00002.safetensors",
            "lm_head.weight",
        ],
    );

    // A listed tensor absent from its shard.
    write_json(
        d.path(),
        "model.safetensors.index.json",
        &json!({"weight_map": {
            "model.norm.weight": "model-00001-of-00002.safetensors",
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors"
        }}),
    );
    assert_mentions(
        &err_of(d.path()),
        &[
            "model.safetensors.index.json",
            "`model.embed_tokens.weight`",
        ],
    );
}

#[test]
fn encoder_reports_missing_and_misshapen_tensors() {
    let d = tempfile::tempdir().unwrap();
    write_json(
        d.path(),
        "config.json",
        &json!({
            "architectures": ["BertModel"], "vocab_size": 10, "hidden_size": 4,
            "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
            "max_position_embeddings": 6, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
            "hidden_act": "gelu"
        }),
    );
    std::fs::write(
        d.path().join("model.safetensors"),
        st_f32(&[(
            "bert.embeddings.word_embeddings.weight",
            &[10, 4],
            vec![0.0; 40],
        )]),
    )
    .unwrap();
    let msg = hf::load(d.path()).unwrap_err().to_string();
    assert_mentions(
        &msg,
        &["`embeddings.position_embeddings.weight`", "missing"],
    );

    std::fs::write(
        d.path().join("model.safetensors"),
        st_f32(&[("embeddings.word_embeddings.weight", &[10, 5], vec![0.0; 50])]),
    )
    .unwrap();
    let msg = hf::load(d.path()).unwrap_err().to_string();
    assert_mentions(
        &msg,
        &[
            "`embeddings.word_embeddings.weight`",
            "[10, 5]",
            "expected [10, 4]",
        ],
    );
}
