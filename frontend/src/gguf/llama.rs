//! GGUF files of the `llama` architecture (Llama 1/2/3, Mistral, SmolLM, ...). The
//! generic builder in [`super::decoder`] reads them like every other architecture;
//! what is particular to this family lives here: the Q/K row permutation.
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

use super::GgufFile;
use crate::llm::DecoderConfig;
use crate::FrontendError;
use llmc_ir::{ModelInfo, Module};

/// Reads the decoder config from `llama.*` metadata (see [`super::decoder::config`]).
pub fn config(f: &GgufFile) -> Result<DecoderConfig, FrontendError> {
    super::decoder::config(f)
}

/// The model facts the runtime needs.
pub fn model_info(f: &GgufFile) -> Result<ModelInfo, FrontendError> {
    super::decoder::model_info(f)
}

/// The GGUF tensor name holding canonical tensor `name`, if any.
pub fn gguf_name(name: &str) -> Option<String> {
    super::decoder::gguf_name(name, false)
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

/// Builds the module for a llama GGUF.
pub fn build(f: &GgufFile) -> Result<Module, FrontendError> {
    super::decoder::build(f)
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
