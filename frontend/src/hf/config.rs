//! `config.json` to the family builders' configs. Keys that Hugging Face's config
//! classes give a default are optional here with the same default; keys that every
//! real checkpoint writes (sizes, layer counts, the norm epsilon) are required, and a
//! missing one is an error naming the key and the file.

use super::json::JsonFile;
use super::{format_err, io_err, unsupported};
use crate::llm::encoder::{EncoderConfig, Pooling};
use crate::llm::{Activation, DecoderConfig, NormKind, Positions};
use crate::FrontendError;
use std::path::Path;

/// The `hidden_act` / `activation_function` string to an [`Activation`].
fn activation(cfg: &JsonFile, key: &str, default: &str) -> Result<Activation, FrontendError> {
    let name = cfg.opt_str(key)?.unwrap_or(default);
    Ok(match name {
        "silu" | "swish" => Activation::Silu,
        "gelu" => Activation::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
        "relu" => Activation::Relu,
        other => {
            return Err(unsupported(
                &cfg.path,
                format!(
                    "key `{key}` = `{other}`: supported activations are silu, gelu, gelu_new, gelu_pytorch_tanh, relu"
                ),
            ))
        }
    })
}

/// RoPE base and linear scale factor. transformers 4 writes `rope_theta` and
/// `rope_scaling` (`{"type"|"rope_type": ..., "factor": f}`); transformers 5 writes
/// both into `rope_parameters` (`{"rope_type", "rope_theta", "factor"}`). The rope
/// types `default` (factor 1) and `linear` are supported.
fn rope(cfg: &JsonFile) -> Result<(f64, f64), FrontendError> {
    let params = cfg.get("rope_parameters");
    if let Some(p) = params {
        if !p.is_object() {
            return Err(cfg.bad_value("rope_parameters", format!("must be an object, got {p}")));
        }
    }
    let theta = match params
        .and_then(|p| p.get("rope_theta"))
        .filter(|v| !v.is_null())
    {
        Some(v) => v.as_f64().ok_or_else(|| {
            cfg.bad_value(
                "rope_parameters.rope_theta",
                format!("must be a number, got {v}"),
            )
        })?,
        None => cfg.opt_float("rope_theta")?.unwrap_or(10000.0),
    };
    if !(theta.is_finite() && theta > 0.0) {
        return Err(cfg.bad_value("rope_theta", format!("must be positive, got {theta}")));
    }
    let (key, scaling) = match cfg.get("rope_scaling") {
        Some(v) => ("rope_scaling", Some(v)),
        None => ("rope_parameters", params),
    };
    let Some(rs) = scaling else {
        return Ok((theta, 1.0));
    };
    let kind = rs
        .get("rope_type")
        .or_else(|| rs.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    match kind {
        "default" => Ok((theta, 1.0)),
        "linear" => {
            let f = rs.get("factor").and_then(|v| v.as_f64()).ok_or_else(|| {
                cfg.bad_value(key, "has rope_type `linear` but no number `factor`")
            })?;
            if !(f.is_finite() && f > 0.0) {
                return Err(cfg.bad_value(key, format!("`factor` must be positive, got {f}")));
            }
            Ok((theta, f))
        }
        other => Err(unsupported(
            &cfg.path,
            format!(
                "key `{key}` of type `{other}` (only `default` and `linear` RoPE are supported)"
            ),
        )),
    }
}

/// Llama, Mistral and Qwen2: pre-RMSNorm blocks, rotary positions (rotate-half),
/// gated SiLU MLP, GQA.
pub fn llama_like(cfg: &JsonFile, arch: &str) -> Result<DecoderConfig, FrontendError> {
    let hidden = cfg.pos_int("hidden_size")?;
    let heads = cfg.pos_int("num_attention_heads")?;
    let kv_heads = cfg.opt_pos_int("num_key_value_heads")?.unwrap_or(heads);
    if heads % kv_heads != 0 {
        return Err(format_err(
            &cfg.path,
            format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            ),
        ));
    }
    let head_dim = match cfg.opt_pos_int("head_dim")? {
        Some(d) => d,
        None if hidden % heads == 0 => hidden / heads,
        None => {
            return Err(format_err(
                &cfg.path,
                format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads} and there is no `head_dim`"),
            ))
        }
    };
    // Llama's `attention_bias` puts biases on q, k, v and o; Qwen2 has q/k/v biases
    // only; `mlp_bias` covers the MLP. DecoderConfig ties o_proj's bias to the MLP's.
    let (attn_bias, mlp_bias) = match arch {
        "qwen2" => (true, false),
        _ => {
            let a = cfg.opt_bool("attention_bias")?.unwrap_or(false);
            let m = cfg.opt_bool("mlp_bias")?.unwrap_or(false);
            if a != m {
                return Err(unsupported(
                    &cfg.path,
                    format!(
                        "attention_bias = {a} with mlp_bias = {m} (llmc needs both or neither)"
                    ),
                ));
            }
            (a, m)
        }
    };
    let max_pos = cfg.opt_pos_int("max_position_embeddings")?.unwrap_or(2048);
    // Mistral's sliding window: the builder attends over the whole cache, which is
    // exact as long as the context stays within the window.
    // transformers 5 lists each layer's kind in `layer_types`; a sliding layer is only
    // there when the model uses its window.
    let sliding_layers = match cfg.get("layer_types") {
        Some(v) => Some(
            v.as_array()
                .ok_or_else(|| cfg.bad_value("layer_types", "must be a list"))?
                .iter()
                .any(|t| t.as_str() == Some("sliding_attention")),
        ),
        None => None,
    };
    let uses_window = match (arch, sliding_layers) {
        (_, Some(any)) => any,
        ("qwen2", None) => cfg.opt_bool("use_sliding_window")?.unwrap_or(false),
        _ => true,
    };
    let window = if uses_window {
        cfg.opt_pos_int("sliding_window")?
    } else {
        None
    };
    let context_length = window.map_or(max_pos, |w| w.min(max_pos));
    let activation = activation(cfg, "hidden_act", "silu")?;
    let (rope_theta, rope_scale) = rope(cfg)?;
    Ok(DecoderConfig {
        arch: arch.to_string(),
        vocab_size: cfg.pos_int("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: cfg.pos_int("intermediate_size")?,
        num_layers: cfg.pos_int("num_hidden_layers")?,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        norm: NormKind::RmsNorm,
        norm_eps: cfg.float("rms_norm_eps")?,
        activation,
        gated_mlp: true,
        positions: Positions::RopeNeox,
        rope_theta,
        rope_scale,
        tied_embeddings: cfg.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attn_bias,
        mlp_bias,
        context_length,
        extras: Default::default(),
    })
}

/// GPT-2: pre-LayerNorm blocks, learned positions, plain GELU (tanh) MLP, biases
/// everywhere, output head tied to the token embedding.
pub fn gpt2(cfg: &JsonFile) -> Result<DecoderConfig, FrontendError> {
    let hidden = cfg.pos_int("n_embd")?;
    let heads = cfg.pos_int("n_head")?;
    if hidden % heads != 0 {
        return Err(format_err(
            &cfg.path,
            format!("n_embd {hidden} is not a multiple of n_head {heads}"),
        ));
    }
    // Variants of GPT-2 attention that the builder's one attention form cannot express.
    if cfg.opt_bool("scale_attn_by_inverse_layer_idx")? == Some(true) {
        return Err(unsupported(
            &cfg.path,
            "key `scale_attn_by_inverse_layer_idx` = true",
        ));
    }
    if cfg.opt_bool("scale_attn_weights")? == Some(false) {
        return Err(unsupported(&cfg.path, "key `scale_attn_weights` = false"));
    }
    Ok(DecoderConfig {
        arch: "gpt2".into(),
        vocab_size: cfg.pos_int("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: cfg.opt_pos_int("n_inner")?.unwrap_or(4 * hidden),
        num_layers: cfg.pos_int("n_layer")?,
        num_heads: heads,
        num_kv_heads: heads,
        head_dim: hidden / heads,
        norm: NormKind::LayerNorm,
        norm_eps: cfg.float("layer_norm_epsilon")?,
        activation: activation(cfg, "activation_function", "gelu_new")?,
        gated_mlp: false,
        positions: Positions::Learned,
        rope_theta: 10000.0,
        rope_scale: 1.0,
        tied_embeddings: cfg.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        attn_bias: true,
        mlp_bias: true,
        context_length: cfg.pos_int("n_positions")?,
        extras: Default::default(),
    })
}

/// The sentence-transformers head of a model folder: which pooling and whether the
/// vector is normalized, from `modules.json` and the pooling module's `config.json`.
/// A plain BERT folder without `modules.json` gets mean pooling, unnormalized.
pub(crate) fn sentence_head(dir: &Path) -> Result<(Pooling, bool), FrontendError> {
    let modules_path = dir.join("modules.json");
    if !modules_path.is_file() {
        return Ok((Pooling::Mean, false));
    }
    let text = std::fs::read_to_string(&modules_path).map_err(|e| io_err(&modules_path, e))?;
    let modules: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format_err(&modules_path, format!("invalid JSON: {e}")))?;
    let list = modules
        .as_array()
        .ok_or_else(|| format_err(&modules_path, "the top level is not a list"))?;
    let mut pooling = None;
    let mut normalize = false;
    for (i, m) in list.iter().enumerate() {
        let ty = m
            .get("type")
            .and_then(|t| t.as_str())
            .ok_or_else(|| format_err(&modules_path, format!("module {i} has no string `type`")))?;
        match ty.rsplit('.').next().unwrap_or(ty) {
            "Transformer" => {}
            "Normalize" => normalize = true,
            "Pooling" => {
                let sub = m.get("path").and_then(|p| p.as_str()).unwrap_or("");
                if sub.contains("..") {
                    return Err(format_err(
                        &modules_path,
                        format!("module {i}: path `{sub}` leaves the model folder"),
                    ));
                }
                let pc = JsonFile::read(&dir.join(sub).join("config.json"))?;
                let on = |k: &str| pc.opt_bool(k).map(|v| v.unwrap_or(false));
                pooling = Some(match (
                    on("pooling_mode_mean_tokens")?,
                    on("pooling_mode_cls_token")?,
                    on("pooling_mode_max_tokens")? || on("pooling_mode_mean_sqrt_len_tokens")?,
                ) {
                    (true, false, false) => Pooling::Mean,
                    (false, true, false) => Pooling::Cls,
                    _ => {
                        return Err(unsupported(
                            &pc.path,
                            "pooling modes other than exactly one of `pooling_mode_mean_tokens`, `pooling_mode_cls_token`",
                        ))
                    }
                });
            }
            other => {
                return Err(unsupported(
                    &modules_path,
                    format!("sentence-transformers module `{other}` (module {i})"),
                ))
            }
        }
    }
    Ok((pooling.unwrap_or(Pooling::Mean), normalize))
}

/// BERT encoders (`BertModel`, `BertForMaskedLM`, ...) with their sentence head.
pub fn bert(cfg: &JsonFile, dir: &Path) -> Result<EncoderConfig, FrontendError> {
    let pet = cfg
        .opt_str("position_embedding_type")?
        .unwrap_or("absolute");
    if pet != "absolute" {
        return Err(unsupported(
            &cfg.path,
            format!("key `position_embedding_type` = `{pet}` (only `absolute`)"),
        ));
    }
    let (pooling, normalize) = sentence_head(dir)?;
    Ok(EncoderConfig {
        arch: "bert".into(),
        vocab_size: cfg.pos_int("vocab_size")?,
        hidden_size: cfg.pos_int("hidden_size")?,
        intermediate_size: cfg.pos_int("intermediate_size")?,
        num_layers: cfg.pos_int("num_hidden_layers")?,
        num_heads: cfg.pos_int("num_attention_heads")?,
        max_positions: cfg.pos_int("max_position_embeddings")?,
        type_vocab_size: cfg.opt_int("type_vocab_size")?.unwrap_or(2).max(0),
        norm_eps: cfg.opt_float("layer_norm_eps")?.unwrap_or(1e-12),
        activation: activation(cfg, "hidden_act", "gelu")?,
        pooling,
        normalize,
    })
}
