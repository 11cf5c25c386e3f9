//! GGUF files of the `llama` architecture (Llama 1/2/3, Mistral, SmolLM, ...): their
//! `llama.*` metadata becomes a [`DecoderConfig`], their tensor names
//! (`blk.N.attn_q.weight`) are served under canonical Hugging Face names, and the
//! shared decoder builder emits the graph.
//!
//! **Q/K row permutation.** llama.cpp's converter reorders the rows of `q_proj` and
//! `k_proj` (weights and biases) inside each head so that ggml's "normal" RoPE, which
//! rotates adjacent pairs (2j, 2j+1), computes what Hugging Face's rotate-half RoPE
//! computes on pairs (j, j + d/2): GGUF row `2j + i` of a head is HF row `i*d/2 + j`.
//! We undo that permutation here, copying those two tensors per layer into owned
//! bytes, and build with `rope {style = "neox"}`. The alternative, `style =
//! "interleaved"` on the file's rows, would avoid the copy, but then the same model
//! would give two different graphs (and K caches laid out differently) depending on
//! whether it came from GGUF or a Hugging Face folder. With the undo, both frontends
//! produce the same IR, the same weights row for row, and one set of rope kernels and
//! graph tests covers both. Whole rows move intact, so block-quantized rows (blocks run
//! along the input dimension) are copied without decoding. The copy is small: Q and K
//! are ~12% of SmolLM2's weights.

use super::reader::{GgufHeader, TensorInfo};
use super::GgufFile;
use crate::llm::decoder::build_decoder;
use crate::llm::{Activation, DecoderConfig, NormKind, Positions, TensorRef, TensorSource};
use crate::FrontendError;
use llmc_ir::{ModelInfo, Module, TokenizerSource, WeightData};
use std::sync::Arc;

/// Reads the decoder config from `llama.*` metadata.
pub fn config(f: &GgufFile) -> Result<DecoderConfig, FrontendError> {
    let h = &f.header;
    let key = |k: &str| format!("llama.{k}");
    let bad = |k: &str, msg: String| FrontendError::BadValue {
        file: h.file.clone(),
        key: key(k),
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
            return Err(FrontendError::Unsupported {
                file: h.file.clone(),
                msg: format!("value head dim {vd} differs from key head dim {head_dim}"),
            });
        }
    }
    let rope_dims = h
        .opt_count(&key("rope.dimension_count"))?
        .unwrap_or(head_dim);
    if rope_dims != head_dim {
        return Err(FrontendError::Unsupported {
            file: h.file.clone(),
            msg: format!("partial rotary embedding ({rope_dims} of {head_dim} dims)"),
        });
    }
    let eps = h
        .opt_f64(&key("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| FrontendError::MissingKey {
            file: h.file.clone(),
            key: key("attention.layer_norm_rms_epsilon"),
        })?;
    let rope_scale = match h.opt_str(&key("rope.scaling.type"))? {
        None | Some("none") => 1.0,
        Some("linear") => h.opt_f64(&key("rope.scaling.factor"))?.unwrap_or(1.0),
        Some(other) => {
            return Err(FrontendError::Unsupported {
                file: h.file.clone(),
                msg: format!("RoPE scaling `{other}`"),
            })
        }
    };
    let vocab = match h.get("tokenizer.ggml.tokens") {
        Some(super::reader::MetaValue::Array(_, items)) => items.len() as i64,
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
    Ok(DecoderConfig {
        arch: "llama".into(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: ffn,
        num_layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        norm: NormKind::RmsNorm,
        norm_eps: eps,
        activation: Activation::Silu,
        gated_mlp: true,
        positions: Positions::RopeNeox,
        rope_theta: h.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        rope_scale,
        tied_embeddings: h.tensor("output.weight").is_none(),
        attn_bias: h.tensor("blk.0.attn_q.bias").is_some(),
        mlp_bias: h.tensor("blk.0.ffn_down.bias").is_some(),
        context_length: h.req_count(&key("context_length"))?,
    })
}

/// The model facts the runtime needs.
pub fn model_info(f: &GgufFile) -> Result<ModelInfo, FrontendError> {
    let h = &f.header;
    let id = |k: &str| h.opt_count(k);
    let mut eos: Vec<i64> = id("tokenizer.ggml.eos_token_id")?.into_iter().collect();
    if let Some(t) = id("tokenizer.ggml.eot_token_id")?.filter(|t| !eos.contains(t)) {
        eos.push(t);
    }
    let mut info = ModelInfo {
        architecture: h.req_str("general.architecture")?.to_string(),
        context_length: h.opt_count("llama.context_length")?,
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

/// The GGUF tensor name holding canonical tensor `name`, if any.
pub fn gguf_name(name: &str) -> Option<String> {
    let global = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
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
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// Undoes llama.cpp's Q/K row permutation (see the module doc) on the bytes of a
/// tensor with `rows` rows in `heads` heads: HF row `h*d + i*d/2 + j` is GGUF row
/// `h*d + 2j + i`. `None` when the rows do not split into heads of even size.
pub fn unpermute_rows(bytes: &[u8], rows: usize, heads: usize) -> Option<Vec<u8>> {
    if rows == 0 || heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return None;
    }
    if !bytes.len().is_multiple_of(rows) {
        return None;
    }
    let row = bytes.len() / rows;
    let d = rows / heads;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..d / 2 {
                let dst = h * d + i * (d / 2) + j;
                let src = h * d + 2 * j + i;
                out[dst * row..(dst + 1) * row].copy_from_slice(&bytes[src * row..(src + 1) * row]);
            }
        }
    }
    Some(out)
}

/// The tensors of a llama GGUF under canonical names, Q and K rows unpermuted.
pub struct LlamaTensors<'a> {
    file: &'a GgufFile,
    heads: usize,
    kv_heads: usize,
}

impl<'a> LlamaTensors<'a> {
    /// A source over `file` for a model with these head counts.
    pub fn new(file: &'a GgufFile, heads: usize, kv_heads: usize) -> LlamaTensors<'a> {
        LlamaTensors {
            file,
            heads,
            kv_heads,
        }
    }

    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.file.header.tensor(&gguf_name(name)?)
    }
}

impl TensorSource for LlamaTensors<'_> {
    fn get(&self, name: &str) -> Option<TensorRef> {
        let t = self.info(name)?;
        let heads = if name.contains(".self_attn.q_proj.") {
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
fn module_name(h: &GgufHeader) -> String {
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

/// Builds the module for a llama GGUF.
pub fn build(f: &GgufFile) -> Result<Module, FrontendError> {
    let cfg = config(f)?;
    let src = LlamaTensors::new(f, cfg.num_heads as usize, cfg.num_kv_heads as usize);
    let mut m = build_decoder(&cfg, &src, model_info(f)?)?;
    m.name = module_name(&f.header);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_gguf() {
        assert_eq!(
            gguf_name("model.embed_tokens.weight").as_deref(),
            Some("token_embd.weight")
        );
        assert_eq!(
            gguf_name("model.layers.12.self_attn.k_proj.bias").as_deref(),
            Some("blk.12.attn_k.bias")
        );
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight").as_deref(),
            Some("blk.0.ffn_norm.weight")
        );
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(gguf_name("model.layers.1.mlp.router.weight"), None);
    }

    /// The converter's permutation, written as it is defined (reshape to
    /// `[heads, 2, d/2, ...]`, swap axes 1 and 2): GGUF row `h*d + 2j + i` holds HF row
    /// `h*d + i*d/2 + j`. Undoing it must give the HF rows back.
    #[test]
    fn unpermute_inverts_the_converters_permutation() {
        let (heads, d, row) = (3, 8, 5);
        let rows = heads * d;
        let hf: Vec<u8> = (0..rows * row).map(|x| (x % 251) as u8).collect();
        let mut gguf = vec![0u8; hf.len()];
        for h in 0..heads {
            for i in 0..2 {
                for j in 0..d / 2 {
                    let g = h * d + 2 * j + i;
                    let s = h * d + i * (d / 2) + j;
                    gguf[g * row..(g + 1) * row].copy_from_slice(&hf[s * row..(s + 1) * row]);
                }
            }
        }
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_rows(&gguf, rows, heads), Some(hf));
        assert_eq!(unpermute_rows(&[0u8; 30], 6, 4), None, "rows not in heads");
        assert_eq!(unpermute_rows(&[0u8; 30], 6, 2), None, "odd head dim");
    }
}
