//! Model-family builders shared by the weights-first frontends: a GGUF file and a
//! Hugging Face folder both describe a model as a config plus named tensors, so both
//! fill the same config structs here and one builder per family (decoder, encoder)
//! emits the IR. Weight names are canonical Hugging Face names
//! (`model.layers.3.self_attn.q_proj.weight`); each frontend maps its own names onto
//! them.

pub mod decoder;
pub mod encoder;

use llmc_ir::{DType, Shape, WeightData};

/// Normalization used by a block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormKind {
    /// RMSNorm with a weight.
    RmsNorm,
    /// LayerNorm with weight and bias.
    LayerNorm,
}

/// MLP activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// SiLU (SwiGLU when the MLP is gated).
    Silu,
    /// GELU, erf form.
    Gelu,
    /// GELU, tanh approximation (GPT-2's `gelu_new`).
    GeluTanh,
    /// ReLU.
    Relu,
}

/// How positions enter the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Positions {
    /// Rotary embedding, rotate-half ("neox") layout, as Hugging Face Llama applies it.
    RopeNeox,
    /// Rotary embedding on interleaved pairs (GGML's "normal" rope).
    RopeInterleaved,
    /// Learned absolute position embeddings added to the token embeddings.
    Learned,
}

/// Everything the decoder builder needs to know about a causal LM.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    /// Architecture name for `ModelInfo` (`llama`, `mistral`, `qwen2`, `gpt2`).
    pub arch: String,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden size.
    pub hidden_size: i64,
    /// MLP inner size.
    pub intermediate_size: i64,
    /// Number of blocks.
    pub num_layers: i64,
    /// Query heads.
    pub num_heads: i64,
    /// Key/value heads (GQA when fewer than `num_heads`).
    pub num_kv_heads: i64,
    /// Head dim.
    pub head_dim: i64,
    /// Norm kind.
    pub norm: NormKind,
    /// Norm epsilon.
    pub norm_eps: f64,
    /// MLP activation.
    pub activation: Activation,
    /// Gated MLP (gate_proj * up_proj) or plain (up -> act -> down).
    pub gated_mlp: bool,
    /// Position scheme.
    pub positions: Positions,
    /// RoPE base.
    pub rope_theta: f64,
    /// Linear RoPE scaling factor (1.0 = none).
    pub rope_scale: f64,
    /// Output head shares the token embedding.
    pub tied_embeddings: bool,
    /// q/k/v projections have biases (Qwen2, GPT-2).
    pub attn_bias: bool,
    /// o_proj and MLP projections have biases (GPT-2).
    pub mlp_bias: bool,
    /// Maximum context length.
    pub context_length: i64,
    /// What Gemma, Qwen3, Mistral and Phi-3 add to the plain block (all off by default).
    pub extras: DecoderExtras,
}

/// Block variations beyond the Llama/GPT-2 shape, each off by default: QK-norm
/// (Qwen3, Gemma 3), sandwich norms (Gemma 2/3), a scaled embedding, a custom
/// attention scale, sliding-window layers with their own RoPE base (Mistral, Gemma
/// 2/3, Phi-3), attention and final-logit soft-capping (Gemma 2).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct DecoderExtras {
    /// RMSNorm of q and k per head, over the head dim, before RoPE:
    /// `self_attn.{q,k}_norm.weight: [head_dim]`.
    pub qk_norm: bool,
    /// Gemma 2/3's four norms per block: `input_layernorm` before attention,
    /// `post_attention_layernorm` on the attention output (before the residual add),
    /// `pre_feedforward_layernorm` before the MLP, `post_feedforward_layernorm` on its
    /// output. Off: `input_layernorm` and `post_attention_layernorm` (before the MLP).
    pub sandwich_norms: bool,
    /// Multiplies the token embeddings (Gemma: sqrt(hidden)).
    pub embed_scale: Option<f64>,
    /// The attention scale (default 1/sqrt(head_dim)).
    pub attn_scale: Option<f64>,
    /// Sliding-window length of the local layers.
    pub sliding_window: Option<i64>,
    /// Which layers are local (windowed, `local_rope_theta`); empty = every layer.
    pub local_layers: Vec<bool>,
    /// RoPE base of the local layers (Gemma 3: 10000); the global layers keep
    /// `rope_theta` and `rope_scale`, the local ones are not scaled.
    pub local_rope_theta: Option<f64>,
    /// Attention-score soft-capping (Gemma 2): scores become c·tanh(s / c).
    pub attn_softcap: Option<f64>,
    /// Final-logit soft-capping (Gemma 2).
    pub final_softcap: Option<f64>,
    /// Added to every RMSNorm weight in the graph (Hugging Face Gemma stores w and
    /// computes with 1 + w; GGUF stores 1 + w already, so 0 there).
    pub norm_offset: f64,
}

impl DecoderExtras {
    /// Whether layer `i` is a local (sliding-window) layer.
    pub fn is_local(&self, i: i64) -> bool {
        self.sliding_window.is_some()
            && (self.local_layers.is_empty()
                || self.local_layers.get(i as usize).copied().unwrap_or(false))
    }
}

/// One tensor as a frontend hands it to a builder.
#[derive(Clone, Debug)]
pub struct TensorRef {
    /// Storage dtype.
    pub dtype: DType,
    /// Shape in the canonical (Hugging Face, row-major `[out, in]` for linears) layout.
    pub shape: Shape,
    /// Bytes.
    pub data: WeightData,
}

/// Named tensors of a model, under canonical names.
pub trait TensorSource {
    /// The tensor with canonical name `name`, if the model has it.
    fn get(&self, name: &str) -> Option<TensorRef>;
    /// The file the tensors come from, for error messages.
    fn origin(&self) -> String;
}
