//! The tensors of a Hugging Face folder under the builders' canonical names.
//!
//! Llama, Mistral and Qwen2 checkpoints already use the canonical names, and BERT
//! checkpoints use the encoder builder's names (a `bert.` prefix, as
//! `BertForMaskedLM` saves them, is looked through). All of these are byte ranges of
//! the mapped files: nothing is copied.
//!
//! GPT-2 is the exception. Its linears are `Conv1D` modules whose weights are stored
//! `[in, out]`, the transpose of the canonical `[out, in]`, and its q/k/v projections
//! are one fused `c_attn` of `[in, 3*out]`. Each projection weight is therefore
//! produced on request by copying its columns into an owned `[out, in]` buffer (a
//! one-time cost at import, ~500 MB for GPT-2 small; the alternative, `matmul` with
//! the stored layout, would leave GPT-2 as the one model whose linears the passes and
//! quantizers could not recognise). Bias slices of `c_attn` stay mapped ranges. The
//! GPT-2 names map as:
//!
//! | canonical | GPT-2 (`transformer.` prefix optional) |
//! |---|---|
//! | `model.embed_tokens.weight` | `wte.weight` |
//! | `model.embed_positions.weight` | `wpe.weight` |
//! | `model.layers.N.input_layernorm.{weight,bias}` | `h.N.ln_1.*` |
//! | `model.layers.N.self_attn.{q,k,v}_proj.{weight,bias}` | thirds of `h.N.attn.c_attn.*` |
//! | `model.layers.N.self_attn.o_proj.{weight,bias}` | `h.N.attn.c_proj.*` |
//! | `model.layers.N.post_attention_layernorm.{weight,bias}` | `h.N.ln_2.*` |
//! | `model.layers.N.mlp.up_proj.{weight,bias}` | `h.N.mlp.c_fc.*` |
//! | `model.layers.N.mlp.down_proj.{weight,bias}` | `h.N.mlp.c_proj.*` |
//! | `model.norm.{weight,bias}` | `ln_f.*` |
//! | `lm_head.weight` | `lm_head.weight` (usually absent: tied) |

use super::safetensors::MappedTensor;
use crate::llm::{TensorRef, TensorSource};
use llmc_ir::{Shape, WeightData};
use std::collections::BTreeMap;
use std::sync::Arc;

/// How canonical names map to the checkpoint's names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Naming {
    /// Same names (Llama, Mistral, Qwen2).
    Identity,
    /// BERT names, with an optional `bert.` prefix in the file.
    Bert,
    /// GPT-2's `Conv1D` layout (see the module comment).
    Gpt2,
}

/// The tensors of one Hugging Face folder.
pub struct HfSource {
    origin: String,
    tensors: BTreeMap<String, MappedTensor>,
    naming: Naming,
}

impl HfSource {
    /// Wraps the tensors read from `origin` (the folder).
    pub fn new(
        origin: String,
        tensors: BTreeMap<String, MappedTensor>,
        naming: Naming,
    ) -> HfSource {
        HfSource {
            origin,
            tensors,
            naming,
        }
    }

    /// The checkpoint's tensor names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    fn raw(&self, name: &str) -> Option<&MappedTensor> {
        self.tensors.get(name)
    }

    fn direct(t: &MappedTensor) -> TensorRef {
        TensorRef {
            dtype: t.dtype,
            shape: Shape::of(&t.shape.iter().map(|&d| d as i64).collect::<Vec<_>>()),
            data: t.data.clone(),
        }
    }

    fn gpt2_raw(&self, name: &str) -> Option<&MappedTensor> {
        self.raw(name)
            .or_else(|| self.raw(&format!("transformer.{name}")))
    }

    fn gpt2(&self, name: &str) -> Option<TensorRef> {
        match name {
            "model.embed_tokens.weight" => return self.gpt2_raw("wte.weight").map(Self::direct),
            "model.embed_positions.weight" => return self.gpt2_raw("wpe.weight").map(Self::direct),
            "lm_head.weight" => return self.raw(name).map(Self::direct),
            _ => {}
        }
        if let Some(rest) = name.strip_prefix("model.norm.") {
            return self.gpt2_raw(&format!("ln_f.{rest}")).map(Self::direct);
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let (module, param) = rest.rsplit_once('.')?;
        let h = |m: &str| format!("h.{layer}.{m}.{param}");
        let (src, part) = match module {
            "input_layernorm" => return self.gpt2_raw(&h("ln_1")).map(Self::direct),
            "post_attention_layernorm" => return self.gpt2_raw(&h("ln_2")).map(Self::direct),
            "self_attn.q_proj" => (h("attn.c_attn"), Some(0)),
            "self_attn.k_proj" => (h("attn.c_attn"), Some(1)),
            "self_attn.v_proj" => (h("attn.c_attn"), Some(2)),
            "self_attn.o_proj" => (h("attn.c_proj"), None),
            "mlp.up_proj" => (h("mlp.c_fc"), None),
            "mlp.down_proj" => (h("mlp.c_proj"), None),
            _ => return None,
        };
        let t = self.gpt2_raw(&src)?;
        match param {
            "weight" => conv1d_weight(t, part),
            "bias" => bias_part(t, part),
            _ => None,
        }
    }
}

/// The canonical `[out, in]` weight of a `Conv1D` stored `[in, n*out]`: all of it
/// (`part` = None) or the `part`th of three column blocks, transposed into owned bytes.
fn conv1d_weight(t: &MappedTensor, part: Option<usize>) -> Option<TensorRef> {
    let [rows, cols] = t.shape[..] else {
        return None;
    };
    let (c0, n) = match part {
        None => (0, cols),
        Some(p) if cols % 3 == 0 => (p * cols / 3, cols / 3),
        Some(_) => return None,
    };
    let es = t.dtype.block_bytes();
    let bytes = t.data.bytes()?;
    if bytes.len() != rows * cols * es {
        return None;
    }
    let mut out = vec![0u8; n * rows * es];
    for (j, dst_row) in out.chunks_exact_mut(rows * es).enumerate() {
        for (i, dst) in dst_row.chunks_exact_mut(es).enumerate() {
            let s = (i * cols + c0 + j) * es;
            dst.copy_from_slice(bytes.get(s..s + es)?);
        }
    }
    Some(TensorRef {
        dtype: t.dtype,
        shape: Shape::of(&[n as i64, rows as i64]),
        data: WeightData::Owned(Arc::new(out)),
    })
}

/// A bias, or the `part`th third of a fused one, as a sub-range of the map.
fn bias_part(t: &MappedTensor, part: Option<usize>) -> Option<TensorRef> {
    let [len] = t.shape[..] else {
        return None;
    };
    let Some(p) = part else {
        return Some(HfSource::direct(t));
    };
    if len % 3 != 0 {
        return None;
    }
    let n = len / 3;
    let es = t.dtype.block_bytes();
    let data = match &t.data {
        WeightData::Mapped {
            map, path, offset, ..
        } => WeightData::Mapped {
            map: map.clone(),
            path: path.clone(),
            offset: offset + p * n * es,
            len: n * es,
        },
        other => {
            let b = other.bytes()?.get(p * n * es..(p + 1) * n * es)?;
            WeightData::Owned(Arc::new(b.to_vec()))
        }
    };
    Some(TensorRef {
        dtype: t.dtype,
        shape: Shape::of(&[n as i64]),
        data,
    })
}

impl TensorSource for HfSource {
    fn get(&self, name: &str) -> Option<TensorRef> {
        match self.naming {
            Naming::Identity => self.raw(name).map(Self::direct),
            Naming::Bert => self
                .raw(name)
                .or_else(|| self.raw(&format!("bert.{name}")))
                .map(Self::direct),
            Naming::Gpt2 => self.gpt2(name),
        }
    }

    fn origin(&self) -> String {
        self.origin.clone()
    }
}
