//! One GGUF decoder builder for every architecture llmc imports, driven by the file's
//! metadata: `general.architecture` picks an [`ArchSpec`] (the few facts the metadata
//! does not say: norm kind, activation, which extras the family has, whether
//! llama.cpp's converter permuted Q/K rows), and the `{arch}.*` keys fill the rest of
//! the [`DecoderConfig`]. Tensors are served under canonical Hugging Face names
//! ([`gguf_name`]); fused projections (`attn_qkv`, Phi-3's gate+up in `ffn_up`) are
//! split into row ranges of the mapping, so nothing is decoded or copied except the
//! Q/K rows of the `llama` family (see [`super::llama`] for why those are unpermuted).
//!
//! Family facts that are llama.cpp constants rather than metadata, reproduced here:
//! - Gemma stores RMSNorm weights as `1 + w` (the converter adds 1), so norms are
//!   plain RMSNorm here; embeddings are scaled by sqrt(hidden).
//! - Gemma 2: every even layer is local (sliding window); scale 1/sqrt(head_dim)
//!   except the 27B (46 layers), which uses 1/sqrt(hidden/heads); soft-caps from
//!   `gemma2.attn_logit_softcapping` / `gemma2.final_logit_softcapping`.
//! - Gemma 3: layer i is local unless (i + 1) % 6 == 0 (or the file's
//!   `sliding_window_pattern`); local layers use RoPE base 10000 unscaled, global ones
//!   `rope.freq_base` with the file's linear scaling; the 27B (62 layers) scales by
//!   1/sqrt(hidden/heads).

use super::llama::unpermute_rows;
use super::reader::{GgufHeader, MetaValue, TensorInfo};
use super::GgufFile;
use crate::llm::decoder::build_decoder;
use crate::llm::{
    Activation, DecoderConfig, DecoderExtras, NormKind, Positions, TensorRef, TensorSource,
};
use crate::FrontendError;
use llmc_ir::{ModelInfo, Module, Shape, TokenizerSource, WeightData};
use std::sync::Arc;

/// Architectures [`build`] imports.
pub const ARCHITECTURES: &[&str] = &[
    "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3", "gpt2",
];

/// What an architecture's metadata does not say.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArchSpec {
    /// llama.cpp's converter permuted the Q/K rows for its interleaved RoPE.
    pub permute_qk: bool,
    /// Norm kind.
    pub norm: NormKind,
    /// MLP activation.
    pub activation: Activation,
    /// Gated MLP.
    pub gated: bool,
    /// Learned positions (GPT-2) instead of RoPE.
    pub learned_positions: bool,
    /// Gemma generation (0 = not Gemma).
    pub gemma: u8,
    /// QK-norm (Qwen3, Gemma 3).
    pub qk_norm: bool,
}

impl ArchSpec {
    /// The spec of `arch`, `None` when llmc does not import it.
    pub fn of(arch: &str) -> Option<ArchSpec> {
        let llama = ArchSpec {
            permute_qk: true,
            norm: NormKind::RmsNorm,
            activation: Activation::Silu,
            gated: true,
            learned_positions: false,
            gemma: 0,
            qk_norm: false,
        };
        let gemma = |g| ArchSpec {
            permute_qk: false,
            activation: Activation::GeluTanh,
            gemma: g,
            qk_norm: g == 3,
            ..llama
        };
        Some(match arch {
            "llama" | "mistral" => llama,
            "qwen2" | "phi3" => ArchSpec {
                permute_qk: false,
                ..llama
            },
            "qwen3" => ArchSpec {
                permute_qk: false,
                qk_norm: true,
                ..llama
            },
            "gemma" => gemma(1),
            "gemma2" => gemma(2),
            "gemma3" => gemma(3),
            "gpt2" => ArchSpec {
                permute_qk: false,
                norm: NormKind::LayerNorm,
                activation: Activation::GeluTanh,
                gated: false,
                learned_positions: true,
                gemma: 0,
                qk_norm: false,
            },
            _ => return None,
        })
    }

    /// Gemma 2/3's four norms per block.
    pub fn sandwich(&self) -> bool {
        self.gemma >= 2
    }
}

fn spec_of(f: &GgufFile) -> Result<(String, ArchSpec), FrontendError> {
    let arch = f.header.req_str("general.architecture")?;
    let spec = ArchSpec::of(arch).ok_or_else(|| FrontendError::UnknownArchitecture {
        file: f.name(),
        arch: arch.to_string(),
        supported: ARCHITECTURES.join(", "),
    })?;
    Ok((arch.to_string(), spec))
}

/// Reads the decoder config from the `{arch}.*` metadata.
pub fn config(f: &GgufFile) -> Result<DecoderConfig, FrontendError> {
    let (arch, spec) = spec_of(f)?;
    let h = &f.header;
    let key = |k: &str| format!("{arch}.{k}");
    let bad = |k: &str, msg: String| FrontendError::BadValue {
        file: h.file.clone(),
        key: key(k),
        msg,
    };
    let unsupported = |msg: String| FrontendError::Unsupported {
        file: h.file.clone(),
        msg,
    };
    let num_layers = h.req_count(&key("block_count"))?;
    // Every block has tensors: a count beyond the tensor count is a corrupt header,
    // and must not size the builder's loop.
    if num_layers as u64 > h.tensors.len() as u64 {
        return Err(bad(
            "block_count",
            format!(
                "{num_layers} blocks but the file has {} tensors",
                h.tensors.len()
            ),
        ));
    }
    let hidden = h.req_count(&key("embedding_length"))?;
    let ffn = h.req_count(&key("feed_forward_length"))?;
    let heads = h.req_count(&key("attention.head_count"))?;
    if heads == 0 {
        return Err(bad("attention.head_count", "is 0".into()));
    }
    let kv_heads = h
        .opt_count(&key("attention.head_count_kv"))?
        .unwrap_or(heads);
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(bad(
            "attention.head_count_kv",
            format!("{kv_heads} does not divide the {heads} query heads"),
        ));
    }
    let head_dim = match h.opt_count(&key("attention.key_length"))? {
        Some(d) => d,
        None if hidden % heads == 0 => hidden / heads,
        None => {
            return Err(bad(
                "embedding_length",
                format!("{hidden} is not a multiple of the {heads} heads"),
            ))
        }
    };
    if let Some(vd) = h.opt_count(&key("attention.value_length"))? {
        if vd != head_dim {
            return Err(unsupported(format!(
                "value head dim {vd} differs from key head dim {head_dim}"
            )));
        }
    }
    if !spec.learned_positions {
        let rope_dims = h
            .opt_count(&key("rope.dimension_count"))?
            .unwrap_or(head_dim);
        if rope_dims != head_dim {
            return Err(unsupported(format!(
                "partial rotary embedding ({rope_dims} of {head_dim} dims)"
            )));
        }
    }
    let eps_key = match spec.norm {
        NormKind::RmsNorm => "attention.layer_norm_rms_epsilon",
        NormKind::LayerNorm => "attention.layer_norm_epsilon",
    };
    let eps = h
        .opt_f64(&key(eps_key))?
        .ok_or_else(|| FrontendError::MissingKey {
            file: h.file.clone(),
            key: key(eps_key),
        })?;
    let rope_scale = match h.opt_str(&key("rope.scaling.type"))? {
        None | Some("none") => 1.0,
        Some("linear") => h.opt_f64(&key("rope.scaling.factor"))?.unwrap_or(1.0),
        Some(other) => return Err(unsupported(format!("RoPE scaling `{other}`"))),
    };
    if h.tensor("rope_freqs.weight").is_some() || h.tensor("rope_factors_long.weight").is_some() {
        return Err(unsupported(
            "per-dimension RoPE frequency factors (rope_freqs / rope_factors_*)".into(),
        ));
    }
    let vocab = match h.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(_, items)) => items.len() as i64,
        _ => match h.opt_count(&key("vocab_size"))? {
            Some(v) => v,
            None => h
                .tensor("token_embd.weight")
                .and_then(|t| t.ne.get(1).copied())
                .map(|v| v as i64)
                .ok_or_else(|| FrontendError::MissingKey {
                    file: h.file.clone(),
                    key: "tokenizer.ggml.tokens".into(),
                })?,
        },
    };
    let window = h
        .opt_count(&key("attention.sliding_window"))?
        .filter(|&w| w > 0);
    let mut extras = DecoderExtras {
        qk_norm: spec.qk_norm,
        sandwich_norms: spec.sandwich(),
        sliding_window: window,
        ..DecoderExtras::default()
    };
    let softcap = |k: &str| -> Result<Option<f64>, FrontendError> {
        Ok(h.opt_f64(&key(k))?.filter(|&c| c > 0.0))
    };
    if spec.gemma > 0 {
        extras.embed_scale = Some((hidden as f64).sqrt());
        let big = (spec.gemma == 2 && num_layers == 46) || (spec.gemma == 3 && num_layers == 62);
        if big {
            extras.attn_scale = Some(1.0 / ((hidden / heads) as f64).sqrt());
        }
    }
    if spec.gemma == 2 {
        extras.attn_softcap = softcap("attn_logit_softcapping")?;
        extras.final_softcap = softcap("final_logit_softcapping")?;
        extras.local_layers = (0..num_layers).map(|i| i % 2 == 0).collect();
    }
    if spec.gemma == 3 {
        let pattern = h
            .opt_count(&key("attention.sliding_window_pattern"))?
            .unwrap_or(6);
        if pattern <= 0 {
            return Err(bad(
                "attention.sliding_window_pattern",
                format!("{pattern} must be positive"),
            ));
        }
        extras.local_layers = (0..num_layers).map(|i| (i + 1) % pattern != 0).collect();
        extras.local_rope_theta = Some(10_000.0);
    }
    let tied = h.tensor("output.weight").is_none();
    let bias_of = |t: &str| {
        h.tensor(&format!("blk.0.{t}.bias")).is_some()
            || h.tensor("blk.0.attn_qkv.bias").is_some() && t.starts_with("attn_")
    };
    Ok(DecoderConfig {
        arch: arch.clone(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: ffn,
        num_layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        norm: spec.norm,
        norm_eps: eps,
        activation: spec.activation,
        gated_mlp: spec.gated,
        positions: if spec.learned_positions {
            Positions::Learned
        } else {
            Positions::RopeNeox
        },
        rope_theta: h.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        rope_scale,
        tied_embeddings: tied,
        attn_bias: bias_of("attn_q"),
        mlp_bias: h.tensor("blk.0.ffn_down.bias").is_some(),
        context_length: h.req_count(&key("context_length"))?,
        extras,
    })
}

/// The model facts the runtime needs.
pub fn model_info(f: &GgufFile) -> Result<ModelInfo, FrontendError> {
    let h = &f.header;
    let arch = h.req_str("general.architecture")?.to_string();
    let id = |k: &str| h.opt_count(k);
    let mut eos: Vec<i64> = id("tokenizer.ggml.eos_token_id")?.into_iter().collect();
    if let Some(t) = id("tokenizer.ggml.eot_token_id")?.filter(|t| !eos.contains(t)) {
        eos.push(t);
    }
    let mut info = ModelInfo {
        context_length: h.opt_count(&format!("{arch}.context_length"))?,
        architecture: arch,
        tokenizer: TokenizerSource::Gguf(f.path.as_ref().clone()),
        bos_token: id("tokenizer.ggml.bos_token_id")?,
        eos_tokens: eos,
        chat_template: h.opt_str("tokenizer.chat_template")?.map(str::to_string),
        ..ModelInfo::default()
    };
    if let Some(name) = h.opt_str("general.name")? {
        info.extra.insert("name".into(), name.to_string());
    }
    Ok(info)
}

/// The GGUF tensor name holding canonical tensor `name`, if any. `sandwich` picks
/// Gemma 2/3's names for the norms around attention and MLP.
pub fn gguf_name(name: &str, sandwich: bool) -> Option<String> {
    let global = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.embed_positions.weight" => Some("position_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "model.norm.bias" => Some("output_norm.bias"),
        "lm_head.weight" => Some("output.weight"),
        "lm_head.bias" => Some("output.bias"),
        _ => None,
    };
    if let Some(g) = global {
        return Some(g.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: u64 = layer.parse().ok()?;
    let (module, kind) = part.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let g = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" if sandwich => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// The tensors of a GGUF decoder under canonical names: Q and K rows unpermuted for
/// the llama family, fused projections split into row ranges.
pub struct GgufTensors<'a> {
    file: &'a GgufFile,
    spec: ArchSpec,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
}

impl<'a> GgufTensors<'a> {
    /// A source over `file` for the model `cfg` describes.
    pub fn new(file: &'a GgufFile, spec: ArchSpec, cfg: &DecoderConfig) -> GgufTensors<'a> {
        GgufTensors {
            file,
            spec,
            heads: cfg.num_heads as usize,
            kv_heads: cfg.num_kv_heads as usize,
            head_dim: cfg.head_dim as usize,
            ffn: cfg.intermediate_size as usize,
        }
    }

    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.file
            .header
            .tensor(&gguf_name(name, self.spec.sandwich())?)
    }

    /// Rows `start..start + n` of tensor `t` (a matrix's rows, a vector's elements).
    fn rows(&self, t: &TensorInfo, start: usize, n: usize) -> Option<TensorRef> {
        let rows = t.ne.last().copied().unwrap_or(1) as usize;
        if start + n > rows || rows == 0 || !(t.size as usize).is_multiple_of(rows) {
            return None;
        }
        let row = t.size as usize / rows;
        let mut dims = t.shape.0.clone();
        *dims.first_mut()? = llmc_ir::Dim::c(n as i64);
        let data = match self.file.tensor_data(t) {
            WeightData::Mapped {
                map, path, offset, ..
            } => WeightData::Mapped {
                map,
                path,
                offset: offset + start * row,
                len: n * row,
            },
            _ => return None,
        };
        Some(TensorRef {
            dtype: t.dtype,
            shape: Shape(dims),
            data,
        })
    }

    /// A projection that lives inside a fused tensor: q/k/v in `attn_qkv`, gate/up in
    /// Phi-3's `ffn_up` of 2·ffn rows.
    fn fused(&self, name: &str) -> Option<TensorRef> {
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, part) = rest.split_once('.')?;
        let (module, kind) = part.rsplit_once('.')?;
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let (fused, start, n) = match module {
            "self_attn.q_proj" => ("attn_qkv", 0, q),
            "self_attn.k_proj" => ("attn_qkv", q, kv),
            "self_attn.v_proj" => ("attn_qkv", q + kv, kv),
            "mlp.gate_proj" => ("ffn_up", 0, self.ffn),
            "mlp.up_proj" => ("ffn_up", self.ffn, self.ffn),
            _ => return None,
        };
        let h = &self.file.header;
        if fused == "ffn_up" && h.tensor(&format!("blk.{layer}.ffn_gate.{kind}")).is_some() {
            return None;
        }
        let t = h.tensor(&format!("blk.{layer}.{fused}.{kind}"))?;
        if fused == "ffn_up" && t.ne.last().copied() != Some(2 * self.ffn as u64) {
            return None;
        }
        self.rows(t, start, n)
    }
}

impl TensorSource for GgufTensors<'_> {
    fn get(&self, name: &str) -> Option<TensorRef> {
        let Some(t) = self.info(name) else {
            return self.fused(name);
        };
        if self.spec.gated && name.ends_with(".mlp.up_proj.weight") {
            // Phi-3 keeps gate and up in `ffn_up`; the up projection is its second half.
            if let Some(r) = self.fused(name) {
                return Some(r);
            }
        }
        let heads = if !self.spec.permute_qk {
            None
        } else if name.contains(".self_attn.q_proj.") {
            Some(self.heads)
        } else if name.contains(".self_attn.k_proj.") {
            Some(self.kv_heads)
        } else {
            None
        };
        let rows = t.ne.last().copied().unwrap_or(1) as usize;
        let data = match heads {
            // When the rows do not split into heads, hand the tensor over as it is:
            // the builder's shape check reports the mismatch.
            Some(n) => match unpermute_rows(self.file.tensor_bytes(t), rows, n) {
                Some(v) => WeightData::Owned(Arc::new(v)),
                None => self.file.tensor_data(t),
            },
            None => self.file.tensor_data(t),
        };
        Some(TensorRef {
            dtype: t.dtype,
            shape: t.shape.clone(),
            data,
        })
    }

    fn origin(&self) -> String {
        self.file.name()
    }
}

/// A module name from `general.basename`/`general.name`, in text-format characters.
pub fn module_name(h: &GgufHeader) -> String {
    let raw = h
        .get("general.basename")
        .or_else(|| h.get("general.name"))
        .and_then(|v| v.as_str())
        .unwrap_or("model");
    let s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "model".into()
    } else {
        s
    }
}

/// Builds the module for a GGUF decoder of any architecture in [`ARCHITECTURES`].
pub fn build(f: &GgufFile) -> Result<Module, FrontendError> {
    let (_, spec) = spec_of(f)?;
    let cfg = config(f)?;
    let src = GgufTensors::new(f, spec, &cfg);
    let mut m = build_decoder(&cfg, &src, model_info(f)?)?;
    m.name = module_name(&f.header);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandwich_names_follow_gemma() {
        let n = |s: &str, sw| gguf_name(s, sw);
        assert_eq!(
            n("model.layers.2.post_attention_layernorm.weight", false).as_deref(),
            Some("blk.2.ffn_norm.weight")
        );
        assert_eq!(
            n("model.layers.2.post_attention_layernorm.weight", true).as_deref(),
            Some("blk.2.post_attention_norm.weight")
        );
        assert_eq!(
            n("model.layers.2.pre_feedforward_layernorm.weight", true).as_deref(),
            Some("blk.2.ffn_norm.weight")
        );
        assert_eq!(
            n("model.layers.0.post_feedforward_layernorm.weight", true).as_deref(),
            Some("blk.0.post_ffw_norm.weight")
        );
        assert_eq!(
            n("model.layers.0.self_attn.q_norm.weight", true).as_deref(),
            Some("blk.0.attn_q_norm.weight")
        );
        assert_eq!(
            n("model.embed_positions.weight", false).as_deref(),
            Some("position_embd.weight")
        );
    }

    #[test]
    fn every_listed_architecture_has_a_spec() {
        for a in ARCHITECTURES {
            assert!(ArchSpec::of(a).is_some(), "{a}");
        }
        assert!(ArchSpec::of("mamba").is_none());
        assert!(ArchSpec::of("llama").unwrap().permute_qk);
        assert!(!ArchSpec::of("gemma3").unwrap().permute_qk);
        assert!(ArchSpec::of("gemma3").unwrap().qk_norm);
        assert!(ArchSpec::of("gemma2").unwrap().sandwich());
        assert!(!ArchSpec::of("gemma").unwrap().sandwich());
    }
}
