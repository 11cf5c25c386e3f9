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
