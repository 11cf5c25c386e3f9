//! The BERT-style encoder builder: token + position (+ token type) embeddings,
//! post-LayerNorm transformer blocks with bidirectional attention under a padding
//! mask, then the sentence-embedding head (mean or CLS pooling, optional L2
//! normalization) that sentence-transformers puts after the model. Frontends fill an
//! [`EncoderConfig`] and hand over the tensors under Hugging Face BERT names.
//!
//! The graph is
//! `@main(%ids: i64[batch, seq], %mask: i64[batch, seq], %pos: i64[batch, seq]) -> (%embedding: f32[batch, hidden])`:
//! - `%mask` is the attention mask (1 = real token, 0 = padding). It becomes the
//!   additive mask `(1 - mask) * -1e9` broadcast over heads and queries, and the
//!   weights of the mean pooling.
//! - `%pos` holds the position of each token, `0..seq` in every row (the driver fills
//!   it, as it does for the decoder graph). The op table has no `range` op and `slice`
//!   takes constant bounds, so the first `seq` rows of the position table cannot be cut
//!   with a symbolic `seq`; gathering rows at `%pos` is exact and keeps both graphs
//!   fed the same way.
//! - Token type ids are all zero for single sentences, which is all an embedding model
//!   is given: row 0 of the token-type table is added to every token instead of taking
//!   a third index input.

use super::{Activation, TensorSource};
use crate::FrontendError;
use llmc_ir::{attrs, Attr, DType, Dim, ModelInfo, Module, Op, Shape, Tensor, TensorType, ValueId};

/// How the token vectors become one sentence vector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pooling {
    /// Mean over the real (unmasked) tokens.
    Mean,
    /// The first token (`[CLS]`).
    Cls,
}

impl Pooling {
    /// Name as recorded in `ModelInfo::extra`.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

/// Everything the encoder builder needs to know about a BERT-style model.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderConfig {
    /// Architecture name for `ModelInfo` (`bert`).
    pub arch: String,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden size.
    pub hidden_size: i64,
    /// MLP inner size.
    pub intermediate_size: i64,
    /// Number of blocks.
    pub num_layers: i64,
    /// Attention heads.
    pub num_heads: i64,
    /// Rows of the position table (the longest input).
    pub max_positions: i64,
    /// Rows of the token-type table (0 when the model has none).
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    pub norm_eps: f64,
    /// MLP activation.
    pub activation: Activation,
    /// Sentence pooling.
    pub pooling: Pooling,
    /// L2-normalize the pooled vector.
    pub normalize: bool,
}

/// Additive mask value for padded keys: large enough that `exp` gives exactly 0 in
/// f32, small enough to stay finite in every float type a kernel might use for it.
const MASK_NEG: f64 = -1e9;

/// Graph-building state: the module and where tensors come from.
struct Builder<'a> {
    m: Module,
    src: &'a dyn TensorSource,
    /// Where the builder is, for errors (`layer 3`).
    at: String,
}

impl Builder<'_> {
    fn graph_err(&self, e: llmc_ir::InferError) -> FrontendError {
        FrontendError::Build {
            file: self.src.origin(),
            at: self.at.clone(),
            source: e,
        }
    }

    fn op(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        a: llmc_ir::Attrs,
    ) -> Result<ValueId, FrontendError> {
        self.m.add1(op, inputs, a).map_err(|e| self.graph_err(e))
    }

    /// Declares weight `name`, checking it has shape `dims`, and returns its value.
    fn weight(&mut self, name: &str, dims: &[i64]) -> Result<ValueId, FrontendError> {
        let t = self
            .src
            .get(name)
            .ok_or_else(|| FrontendError::MissingTensor {
                file: self.src.origin(),
                name: name.to_string(),
            })?;
        if t.shape != Shape::of(dims) {
            return Err(FrontendError::BadTensor {
                file: self.src.origin(),
                name: name.to_string(),
                msg: format!("has shape {}, expected {}", t.shape, Shape::of(dims)),
            });
        }
        if !t.dtype.is_float() {
            return Err(FrontendError::BadTensor {
                file: self.src.origin(),
                name: name.to_string(),
                msg: format!("is {}, expected a float type", t.dtype),
            });
        }
        let v = self.m.add_weight(name, t.dtype, t.shape, t.data);
        if t.dtype == DType::F32 {
            return Ok(v);
        }
        // The graph computes in f32: f16/bf16 checkpoints are widened where read.
        self.op(Op::Cast, &[v], attrs([("to", Attr::Type(DType::F32))]))
    }

    fn constant(&mut self, v: f64) -> Result<ValueId, FrontendError> {
        let t = Tensor::scalar(DType::F32, v);
        self.op(Op::Constant, &[], attrs([("value", Attr::Tensor(t))]))
    }

    fn linear(
        &mut self,
        x: ValueId,
        prefix: &str,
        out: i64,
        inp: i64,
    ) -> Result<ValueId, FrontendError> {
        let w = self.weight(&format!("{prefix}.weight"), &[out, inp])?;
        let b = self.weight(&format!("{prefix}.bias"), &[out])?;
        self.op(Op::Linear, &[x, w, b], Default::default())
    }

    fn layer_norm(
        &mut self,
        x: ValueId,
        prefix: &str,
        h: i64,
        eps: f64,
    ) -> Result<ValueId, FrontendError> {
        let w = self.weight(&format!("{prefix}.weight"), &[h])?;
        let b = self.weight(&format!("{prefix}.bias"), &[h])?;
        self.op(
            Op::LayerNorm,
            &[x, w, b],
            attrs([("eps", Attr::Float(eps))]),
        )
    }
}

fn check(cfg: &EncoderConfig, origin: &str) -> Result<(), FrontendError> {
    let bad = |msg: String| FrontendError::Unsupported {
        file: origin.to_string(),
        msg,
    };
    for (what, v) in [
        ("vocab_size", cfg.vocab_size),
        ("hidden_size", cfg.hidden_size),
        ("intermediate_size", cfg.intermediate_size),
        ("num_layers", cfg.num_layers),
        ("num_heads", cfg.num_heads),
        ("max_positions", cfg.max_positions),
    ] {
        if v <= 0 {
            return Err(bad(format!("{what} must be positive, got {v}")));
        }
    }
    if cfg.hidden_size % cfg.num_heads != 0 {
        return Err(bad(format!(
            "hidden_size {} is not a multiple of the {} heads",
            cfg.hidden_size, cfg.num_heads
        )));
    }
    Ok(())
}

/// Builds the sentence-embedding graph of a BERT-style encoder. Tensors are read from
/// `src` under Hugging Face `BertModel` names (`embeddings.word_embeddings.weight`,
/// `encoder.layer.0.attention.self.query.weight`, ...).
pub fn build_encoder(
    cfg: &EncoderConfig,
    src: &dyn TensorSource,
    mut info: ModelInfo,
) -> Result<Module, FrontendError> {
    check(cfg, &src.origin())?;
    let h = cfg.hidden_size;
    let heads = cfg.num_heads;
    let hd = h / heads;
    let eps = cfg.norm_eps;
    info.architecture = cfg.arch.clone();
    info.context_length = Some(cfg.max_positions);
    info.extra
        .insert("pooling".into(), cfg.pooling.name().into());
    info.extra
        .insert("normalize".into(), cfg.normalize.to_string());
    info.extra.insert("embedding_size".into(), h.to_string());
    let mut b = Builder {
        m: Module::new(&cfg.arch),
        src,
        at: "embeddings".into(),
    };
    b.m.info = info;

    let batch = Dim::sym("batch");
    let seq = Dim::sym("seq");
    let bs = Shape(vec![batch.clone(), seq.clone()]);
    let ids =
        b.m.graph
            .add_input("ids", TensorType::new(DType::I64, bs.clone()));
    let mask =
        b.m.graph
            .add_input("mask", TensorType::new(DType::I64, bs.clone()));
    let pos = b.m.graph.add_input("pos", TensorType::new(DType::I64, bs));

    // Embeddings.
    let wte = b.weight("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
    let wpe = b.weight(
        "embeddings.position_embeddings.weight",
        &[cfg.max_positions, h],
    )?;
    let axis0 = || attrs([("axis", Attr::Int(0))]);
    let tok = b.op(Op::Gather, &[wte, ids], axis0())?;
    let posv = b.op(Op::Gather, &[wpe, pos], axis0())?;
    let mut x = b.op(Op::Add, &[tok, posv], Default::default())?;
    if cfg.type_vocab_size > 0 {
        let wtt = b.weight(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, h],
        )?;
        let row0 = b.op(
            Op::Slice,
            &[wtt],
            attrs([
                ("starts", Attr::Ints(vec![0])),
                ("ends", Attr::Ints(vec![1])),
                ("axes", Attr::Ints(vec![0])),
            ]),
        )?;
        x = b.op(Op::Add, &[x, row0], Default::default())?;
    }
    x = b.layer_norm(x, "embeddings.LayerNorm", h, eps)?;

    // Additive attention mask [batch, 1, 1, seq] and pooling weights [batch, seq, 1].
    let maskf = b.op(Op::Cast, &[mask], attrs([("to", Attr::Type(DType::F32))]))?;
    let one = b.constant(1.0)?;
    let neg = b.constant(MASK_NEG)?;
    let inv = b.op(Op::Sub, &[one, maskf], Default::default())?;
    let add_mask = b.op(Op::Mul, &[inv, neg], Default::default())?;
    let add_mask = b.op(
        Op::Unsqueeze,
        &[add_mask],
        attrs([("axes", Attr::Ints(vec![1, 2]))]),
    )?;

    let heads_shape = Shape(vec![batch.clone(), seq.clone(), Dim::c(heads), Dim::c(hd)]);
    let flat_shape = Shape(vec![batch.clone(), seq.clone(), Dim::c(h)]);
    let perm = || attrs([("perm", Attr::Ints(vec![0, 2, 1, 3]))]);
    let scale = 1.0 / (hd as f64).sqrt();
    for l in 0..cfg.num_layers {
        let p = format!("encoder.layer.{l}");
        b.at = format!("layer {l}");
        // Self-attention: [b, s, h] -> [b, heads, s, hd] for q, k, v.
        let mut qkv = Vec::with_capacity(3);
        for which in ["query", "key", "value"] {
            let y = b.linear(x, &format!("{p}.attention.self.{which}"), h, h)?;
            let y = b.op(
                Op::Reshape,
                &[y],
                attrs([("shape", Attr::Shape(heads_shape.clone()))]),
            )?;
            qkv.push(b.op(Op::Transpose, &[y], perm())?);
        }
        let att = b.op(
            Op::Attention,
            &[qkv[0], qkv[1], qkv[2], add_mask],
            attrs([("scale", Attr::Float(scale))]),
        )?;
        let att = b.op(Op::Transpose, &[att], perm())?;
        let att = b.op(
            Op::Reshape,
            &[att],
            attrs([("shape", Attr::Shape(flat_shape.clone()))]),
        )?;
        let o = b.linear(att, &format!("{p}.attention.output.dense"), h, h)?;
        let r = b.op(Op::Add, &[o, x], Default::default())?;
        x = b.layer_norm(r, &format!("{p}.attention.output.LayerNorm"), h, eps)?;
        // MLP.
        let i = cfg.intermediate_size;
        let u = b.linear(x, &format!("{p}.intermediate.dense"), i, h)?;
        let u = match cfg.activation {
            Activation::Gelu => b.op(Op::Gelu, &[u], Default::default())?,
            Activation::GeluTanh => b.op(
                Op::Gelu,
                &[u],
                attrs([("approximate", Attr::Str("tanh".into()))]),
            )?,
            Activation::Relu => b.op(Op::Relu, &[u], Default::default())?,
            Activation::Silu => b.op(Op::Silu, &[u], Default::default())?,
        };
        let d = b.linear(u, &format!("{p}.output.dense"), h, i)?;
        let r = b.op(Op::Add, &[d, x], Default::default())?;
        x = b.layer_norm(r, &format!("{p}.output.LayerNorm"), h, eps)?;
    }

    // Pooling: [b, s, h] -> [b, h].
    b.at = "pooling".into();
    let e = sentence_head(&mut b.m, x, maskf, cfg.pooling, cfg.normalize)
        .map_err(|e| b.graph_err(e))?;
    b.m.graph.values[e.0 as usize].name = "embedding".into();
    b.m.graph.outputs.push(e);
    Ok(b.m)
}

/// The sentence-transformers head over token vectors `x` [b, s, h] with the f32
/// padding mask `maskf` [b, s] (1 = real token): mean over the real tokens (the count
/// clamped at 1e-9) or the first token, then optionally x / max(‖x‖, 1e-12). Gives the
/// [b, h] embedding. Shared by the HF builder and ONNX encoder exports.
pub fn sentence_head(
    m: &mut Module,
    x: ValueId,
    maskf: ValueId,
    pooling: Pooling,
    normalize: bool,
) -> Result<ValueId, llmc_ir::InferError> {
    let sum_axis1 = || {
        attrs([
            ("axes", Attr::Ints(vec![1])),
            ("keepdims", Attr::Bool(false)),
        ])
    };
    let mut e = match pooling {
        Pooling::Mean => {
            let w = m.add1(
                Op::Unsqueeze,
                &[maskf],
                attrs([("axes", Attr::Ints(vec![2]))]),
            )?;
            let xm = m.add1(Op::Mul, &[x, w], Default::default())?;
            let sum = m.add1(Op::ReduceSum, &[xm], sum_axis1())?;
            let cnt = m.add1(Op::ReduceSum, &[w], sum_axis1())?;
            // sentence-transformers clamps the token count at 1e-9.
            let cnt = m.add1(Op::Clip, &[cnt], attrs([("min", Attr::Float(1e-9))]))?;
            m.add1(Op::Div, &[sum, cnt], Default::default())?
        }
        Pooling::Cls => {
            let first = m.add1(
                Op::Slice,
                &[x],
                attrs([
                    ("starts", Attr::Ints(vec![0])),
                    ("ends", Attr::Ints(vec![1])),
                    ("axes", Attr::Ints(vec![1])),
                ]),
            )?;
            m.add1(
                Op::Squeeze,
                &[first],
                attrs([("axes", Attr::Ints(vec![1]))]),
            )?
        }
    };
    if normalize {
        // x / max(||x||, 1e-12), as torch.nn.functional.normalize.
        let sq = m.add1(Op::Mul, &[e, e], Default::default())?;
        let ss = m.add1(
            Op::ReduceSum,
            &[sq],
            attrs([
                ("axes", Attr::Ints(vec![1])),
                ("keepdims", Attr::Bool(true)),
            ]),
        )?;
        let n = m.add1(Op::Sqrt, &[ss], Default::default())?;
        let n = m.add1(Op::Clip, &[n], attrs([("min", Attr::Float(1e-12))]))?;
        e = m.add1(Op::Div, &[e, n], Default::default())?;
    }
    Ok(e)
}
