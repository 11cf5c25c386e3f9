//! The one graph builder for causal decoder LMs (Llama, Mistral, Qwen2/3, Phi-3,
//! Gemma 1/2/3, GPT-2 style). Model differences are config fields, not code paths per
//! model: norm kind, activation, gated or plain MLP, rotary (either layout) or learned
//! positions, GQA, tied embeddings, biases, and the [`super::DecoderExtras`]: QK-norm,
//! sandwich norms, embedding scale, sliding-window layers with their own RoPE base,
//! soft-capping.
//!
//! The graph takes `%ids: i64[batch, seq]` and `%pos: i64[batch, seq]` and returns
//! `%logits: f32[batch, VOCAB]` for the last position. Keys and values go through
//! `kv_append`, so one graph serves prefill (`past = 0`, `seq = prompt`) and decode
//! (`seq = 1`). Each block is
//!
//! ```text
//! h = norm(x); q,k,v = linear(h); split heads; rope(q,k, pos); k,v = kv_append(k,v)
//! x = x + o_proj(merge heads(attention(q, k, v, scale = 1/sqrt(d), causal)))
//! x = x + down(act(gate(norm(x))) * up(norm(x)))      (or down(act(up(...))) ungated)
//! ```
//!
//! With sandwich norms the attention and MLP outputs are normalized again before their
//! residual adds; with QK-norm q and k are RMS-normalized per head before RoPE; local
//! layers pass `window` to `attention` and use the local RoPE base.
//!
//! Weights use canonical Hugging Face names (see `super`); a learned position table
//! is `model.embed_positions.weight`. Weights keep their stored dtype (a q4_1 matrix
//! stays q4_1 in the IR); float parameters other than f32 are cast to f32 in the graph
//! so activations are f32 throughout.

use super::{Activation, DecoderConfig, NormKind, Positions, TensorRef, TensorSource};
use crate::FrontendError;
use llmc_ir::{attrs, Attr, DType, Dim, ModelInfo, Module, Op, Shape, TensorType, ValueId};

/// Builds the decoder graph for `cfg` from the tensors of `src`.
pub fn build_decoder(
    cfg: &DecoderConfig,
    src: &dyn TensorSource,
    info: ModelInfo,
) -> Result<Module, FrontendError> {
    let mut b = Builder::new(cfg, src)?;
    b.m.info = info;
    b.build()?;
    Ok(b.m)
}

struct Builder<'a> {
    cfg: &'a DecoderConfig,
    src: &'a dyn TensorSource,
    m: Module,
    /// Where the builder is, for errors (`layer 3 attention`).
    at: String,
}

fn batch() -> Dim {
    Dim::sym("batch")
}

fn seq() -> Dim {
    Dim::sym("seq")
}

impl<'a> Builder<'a> {
    fn new(
        cfg: &'a DecoderConfig,
        src: &'a dyn TensorSource,
    ) -> Result<Builder<'a>, FrontendError> {
        let unsupported = |msg: String| FrontendError::Unsupported {
            file: src.origin(),
            msg,
        };
        let positive = [
            ("vocab_size", cfg.vocab_size),
            ("hidden_size", cfg.hidden_size),
            ("intermediate_size", cfg.intermediate_size),
            ("num_heads", cfg.num_heads),
            ("num_kv_heads", cfg.num_kv_heads),
            ("head_dim", cfg.head_dim),
        ];
        for (name, v) in positive {
            if v <= 0 {
                return Err(unsupported(format!("config {name} = {v} must be positive")));
            }
        }
        if cfg.num_layers < 0 {
            return Err(unsupported(format!(
                "config num_layers = {} is negative",
                cfg.num_layers
            )));
        }
        // Projection widths are products of config fields: they must not overflow.
        for (what, heads) in [
            ("num_heads", cfg.num_heads),
            ("num_kv_heads", cfg.num_kv_heads),
        ] {
            if heads.checked_mul(cfg.head_dim).is_none() {
                return Err(unsupported(format!(
                    "{what} {heads} x head_dim {} overflows",
                    cfg.head_dim
                )));
            }
        }
        if cfg.num_heads % cfg.num_kv_heads != 0 {
            return Err(unsupported(format!(
                "{} query heads are not a multiple of {} key/value heads",
                cfg.num_heads, cfg.num_kv_heads
            )));
        }
        let rope = matches!(
            cfg.positions,
            Positions::RopeNeox | Positions::RopeInterleaved
        );
        if rope && cfg.head_dim % 2 != 0 {
            return Err(unsupported(format!(
                "rotary embedding over an odd head dim {}",
                cfg.head_dim
            )));
        }
        if rope && !(cfg.rope_scale > 0.0 && cfg.rope_scale.is_finite()) {
            return Err(unsupported(format!(
                "RoPE scaling factor {}",
                cfg.rope_scale
            )));
        }
        if !(cfg.norm_eps.is_finite() && cfg.norm_eps >= 0.0) {
            return Err(unsupported(format!("norm epsilon {}", cfg.norm_eps)));
        }
        let x = &cfg.extras;
        let finite_pos = |v: Option<f64>| v.is_none_or(|v| v.is_finite() && v > 0.0);
        for (name, v) in [
            ("attention scale", x.attn_scale),
            ("embedding scale", x.embed_scale),
            ("attention soft-cap", x.attn_softcap),
            ("final logit soft-cap", x.final_softcap),
            ("local RoPE base", x.local_rope_theta),
        ] {
            if !finite_pos(v) {
                return Err(unsupported(format!("{name} {v:?} must be finite and > 0")));
            }
        }
        if x.sliding_window.is_some_and(|w| w <= 0) {
            return Err(unsupported(format!(
                "sliding window {:?} must be positive",
                x.sliding_window
            )));
        }
        if !x.local_layers.is_empty() && x.local_layers.len() as i64 != cfg.num_layers {
            return Err(unsupported(format!(
                "{} local-layer flags for {} layers",
                x.local_layers.len(),
                cfg.num_layers
            )));
        }
        if !x.norm_offset.is_finite() {
            return Err(unsupported(format!("norm offset {}", x.norm_offset)));
        }
        Ok(Builder {
            cfg,
            src,
            m: Module::new("model"),
            at: String::new(),
        })
    }

    /// Appends a node, naming its result `name` (unique by construction).
    fn node(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        a: llmc_ir::Attrs,
        name: &str,
    ) -> Result<ValueId, FrontendError> {
        let v = self
            .m
            .add1(op, inputs, a)
            .map_err(|source| FrontendError::Build {
                file: self.src.origin(),
                at: self.at.clone(),
                source,
            })?;
        self.m.graph.values[v.0 as usize].name = name.to_string();
        Ok(v)
    }

    fn ty(&self, v: ValueId) -> &TensorType {
        self.m.graph.ty(v)
    }

    /// Casts to f32 when the value is another float type.
    fn as_f32(&mut self, v: ValueId, name: &str) -> Result<ValueId, FrontendError> {
        if self.ty(v).dtype == DType::F32 {
            return Ok(v);
        }
        self.node(
            Op::Cast,
            &[v],
            attrs([("to", Attr::Type(DType::F32))]),
            name,
        )
    }

    /// `linear` computes in its weight's compute type: f16/bf16 matrices are cast to
    /// f32 (block formats already compute as f32). A pass may fold the cast into the
    /// kernel that reads the weight.
    fn float_matrix(&mut self, w: ValueId, name: &str) -> Result<ValueId, FrontendError> {
        if self.ty(w).dtype.is_quantized() {
            Ok(w)
        } else {
            self.as_f32(w, name)
        }
    }

    /// Declares the weight `name`, checking that it exists and has `shape`.
    /// `matrix` weights may be block-quantized; vectors must be plain floats.
    fn weight(
        &mut self,
        name: &str,
        shape: &[i64],
        matrix: bool,
    ) -> Result<ValueId, FrontendError> {
        let t = self
            .src
            .get(name)
            .ok_or_else(|| FrontendError::MissingTensor {
                file: self.src.origin(),
                name: name.to_string(),
            })?;
        self.declare(name, t, shape, matrix)
    }

    fn opt_weight(
        &mut self,
        name: &str,
        shape: &[i64],
        matrix: bool,
    ) -> Result<Option<ValueId>, FrontendError> {
        match self.src.get(name) {
            Some(t) => self.declare(name, t, shape, matrix).map(Some),
            None => Ok(None),
        }
    }

    fn declare(
        &mut self,
        name: &str,
        t: TensorRef,
        shape: &[i64],
        matrix: bool,
    ) -> Result<ValueId, FrontendError> {
        let bad = |msg: String| FrontendError::BadTensor {
            file: self.src.origin(),
            name: name.to_string(),
            msg,
        };
        if t.shape != Shape::of(shape) {
            return Err(bad(format!(
                "has shape {}, the config implies {}",
                t.shape,
                Shape::of(shape)
            )));
        }
        let ok = t.dtype.is_float() || (matrix && t.dtype.is_quantized());
        if !ok {
            return Err(bad(format!("dtype {} is not usable here", t.dtype)));
        }
        if let Some(w) = self.m.weight_id(name) {
            // Declared already (tied embeddings read the table twice).
            return self
                .m
                .weight_value(w)
                .ok_or_else(|| bad("weight has no value".into()));
        }
        Ok(self.m.add_weight(name, t.dtype, t.shape, t.data))
    }

    /// A norm over the last axis with the weights `prefix.weight` (+ `prefix.bias`).
    fn norm(&mut self, x: ValueId, prefix: &str, name: &str) -> Result<ValueId, FrontendError> {
        self.norm_dim(x, prefix, self.cfg.hidden_size, name)
    }

    /// A scalar f32 constant.
    fn scalar(&mut self, v: f64, name: &str) -> Result<ValueId, FrontendError> {
        let t = llmc_ir::Tensor::from_f64(DType::F32, vec![], vec![v]);
        self.node(Op::Constant, &[], attrs([("value", Attr::Tensor(t))]), name)
    }

    /// `x * c` for a scalar constant c.
    fn scale_by(&mut self, x: ValueId, c: f64, name: &str) -> Result<ValueId, FrontendError> {
        let k = self.scalar(c, &format!("{name}.c"))?;
        self.node(Op::Mul, &[x, k], attrs([]), name)
    }

    /// `c·tanh(x / c)`.
    fn soft_cap(&mut self, x: ValueId, c: f64, name: &str) -> Result<ValueId, FrontendError> {
        let d = self.scale_by(x, 1.0 / c, &format!("{name}.div"))?;
        let t = self.node(Op::Tanh, &[d], attrs([]), &format!("{name}.tanh"))?;
        self.scale_by(t, c, name)
    }

    /// A norm over a last axis of `dim` (the hidden size, or the head dim for QK-norm).
    fn norm_dim(
        &mut self,
        x: ValueId,
        prefix: &str,
        dim: i64,
        name: &str,
    ) -> Result<ValueId, FrontendError> {
        let w = self.weight(&format!("{prefix}.weight"), &[dim], false)?;
        let mut w = self.as_f32(w, &format!("{name}.w"))?;
        let offset = self.cfg.extras.norm_offset;
        if offset != 0.0 && self.cfg.norm == NormKind::RmsNorm {
            let c = self.scalar(offset, &format!("{name}.w_offset"))?;
            w = self.node(Op::Add, &[w, c], attrs([]), &format!("{name}.w_plus"))?;
        }
        let eps = attrs([("eps", Attr::Float(self.cfg.norm_eps))]);
        match self.cfg.norm {
            NormKind::RmsNorm => self.node(Op::RmsNorm, &[x, w], eps, name),
            NormKind::LayerNorm => {
                let b = self.weight(&format!("{prefix}.bias"), &[dim], false)?;
                let b = self.as_f32(b, &format!("{name}.b"))?;
                self.node(Op::LayerNorm, &[x, w, b], eps, name)
            }
        }
    }

    /// `x . W^T (+ b)` with `prefix.weight: [out, in]` and, when `bias`, `prefix.bias`.
    fn linear(
        &mut self,
        x: ValueId,
        prefix: &str,
        out: i64,
        inp: i64,
        bias: bool,
        name: &str,
    ) -> Result<ValueId, FrontendError> {
        let w = self.weight(&format!("{prefix}.weight"), &[out, inp], true)?;
        let w = self.float_matrix(w, &format!("{name}.w"))?;
        let mut ins = vec![x, w];
        if bias {
            let b = self.weight(&format!("{prefix}.bias"), &[out], false)?;
            ins.push(self.as_f32(b, &format!("{name}.b"))?);
        }
        let y = self.node(Op::Linear, &ins, attrs([]), name)?;
        self.as_f32(y, &format!("{name}.f32"))
    }

    fn activation(&mut self, x: ValueId, name: &str) -> Result<ValueId, FrontendError> {
        match self.cfg.activation {
            Activation::Silu => self.node(Op::Silu, &[x], attrs([]), name),
            Activation::Relu => self.node(Op::Relu, &[x], attrs([]), name),
            Activation::Gelu => self.node(Op::Gelu, &[x], attrs([]), name),
            Activation::GeluTanh => self.node(
                Op::Gelu,
                &[x],
                attrs([("approximate", Attr::Str("tanh".into()))]),
                name,
            ),
        }
    }

    /// `[batch, seq, heads*d]` -> `[batch, heads, seq, d]`.
    fn split_heads(
        &mut self,
        x: ValueId,
        heads: i64,
        name: &str,
    ) -> Result<ValueId, FrontendError> {
        let d = self.cfg.head_dim;
        let shape = Shape(vec![batch(), seq(), Dim::c(heads), Dim::c(d)]);
        let r = self.node(
            Op::Reshape,
            &[x],
            attrs([("shape", Attr::Shape(shape))]),
            &format!("{name}.4d"),
        )?;
        self.node(
            Op::Transpose,
            &[r],
            attrs([("perm", Attr::Ints(vec![0, 2, 1, 3]))]),
            name,
        )
    }

    fn rope(
        &mut self,
        x: ValueId,
        pos: ValueId,
        local: bool,
        name: &str,
    ) -> Result<ValueId, FrontendError> {
        let style = match self.cfg.positions {
            Positions::RopeNeox => "neox",
            Positions::RopeInterleaved => "interleaved",
            Positions::Learned => return Ok(x),
        };
        // Local layers with their own base (Gemma 3) are not scaled.
        let (theta, scale) = match self.cfg.extras.local_rope_theta {
            Some(t) if local => (t, 1.0),
            _ => (self.cfg.rope_theta, self.cfg.rope_scale),
        };
        let mut a = attrs([
            ("theta", Attr::Float(theta)),
            ("style", Attr::Str(style.into())),
        ]);
        // Linear RoPE scaling divides positions by the factor.
        if scale != 1.0 {
            a.insert("scale".into(), Attr::Float(scale));
        }
        self.node(Op::Rope, &[x, pos], a, name)
    }

    fn attention_block(
        &mut self,
        i: i64,
        x: ValueId,
        pos: ValueId,
    ) -> Result<ValueId, FrontendError> {
        let c = self.cfg;
        let (h, nh, nkv, d) = (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim);
        let p = format!("model.layers.{i}");
        let l = format!("l{i}");
        self.at = format!("layer {i} attention");
        let hn = self.norm(
            x,
            &format!("{p}.input_layernorm"),
            &format!("{l}.attn_norm"),
        )?;
        let q = self.linear(
            hn,
            &format!("{p}.self_attn.q_proj"),
            nh * d,
            h,
            c.attn_bias,
            &format!("{l}.q"),
        )?;
        let k = self.linear(
            hn,
            &format!("{p}.self_attn.k_proj"),
            nkv * d,
            h,
            c.attn_bias,
            &format!("{l}.k"),
        )?;
        let v = self.linear(
            hn,
            &format!("{p}.self_attn.v_proj"),
            nkv * d,
            h,
            c.attn_bias,
            &format!("{l}.v"),
        )?;
        let q = self.split_heads(q, nh, &format!("{l}.q_heads"))?;
        let k = self.split_heads(k, nkv, &format!("{l}.k_heads"))?;
        let v = self.split_heads(v, nkv, &format!("{l}.v_heads"))?;
        let (q, k) = if c.extras.qk_norm {
            (
                self.norm_dim(
                    q,
                    &format!("{p}.self_attn.q_norm"),
                    d,
                    &format!("{l}.q_norm"),
                )?,
                self.norm_dim(
                    k,
                    &format!("{p}.self_attn.k_norm"),
                    d,
                    &format!("{l}.k_norm"),
                )?,
            )
        } else {
            (q, k)
        };
        let local = c.extras.is_local(i);
        let q = self.rope(q, pos, local, &format!("{l}.q_rope"))?;
        let k = self.rope(k, pos, local, &format!("{l}.k_rope"))?;
        let kv = self
            .m
            .add_node(Op::KvAppend, &[k, v], attrs([("layer", Attr::Int(i))]))
            .map_err(|source| FrontendError::Build {
                file: self.src.origin(),
                at: self.at.clone(),
                source,
            })?;
        let [kc, vc] = kv[..] else {
            return Err(FrontendError::Unsupported {
                file: self.src.origin(),
                msg: format!("kv_append gave {} results, expected 2", kv.len()),
            });
        };
        self.m.graph.values[kc.0 as usize].name = format!("{l}.k_cache");
        self.m.graph.values[vc.0 as usize].name = format!("{l}.v_cache");
        let scale = c.extras.attn_scale.unwrap_or(1.0 / (d as f64).sqrt());
        let mut a = attrs([("scale", Attr::Float(scale)), ("causal", Attr::Bool(true))]);
        if let (true, Some(w)) = (local, c.extras.sliding_window) {
            a.insert("window".into(), Attr::Int(w));
        }
        if let Some(cap) = c.extras.attn_softcap {
            a.insert("softcap".into(), Attr::Float(cap));
        }
        let att = self.node(Op::Attention, &[q, kc, vc], a, &format!("{l}.attn"))?;
        let t = self.node(
            Op::Transpose,
            &[att],
            attrs([("perm", Attr::Ints(vec![0, 2, 1, 3]))]),
            &format!("{l}.attn_t"),
        )?;
        let shape = Shape(vec![batch(), seq(), Dim::c(nh * d)]);
        let merged = self.node(
            Op::Reshape,
            &[t],
            attrs([("shape", Attr::Shape(shape))]),
            &format!("{l}.attn_merged"),
        )?;
        let o = self.linear(
            merged,
            &format!("{p}.self_attn.o_proj"),
            h,
            nh * d,
            c.mlp_bias,
            &format!("{l}.o"),
        )?;
        let o = if c.extras.sandwich_norms {
            self.norm(
                o,
                &format!("{p}.post_attention_layernorm"),
                &format!("{l}.attn_post_norm"),
            )?
        } else {
            o
        };
        self.node(Op::Add, &[x, o], attrs([]), &format!("{l}.attn_res"))
    }

    fn mlp_block(&mut self, i: i64, x: ValueId) -> Result<ValueId, FrontendError> {
        let c = self.cfg;
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let p = format!("model.layers.{i}");
        let l = format!("l{i}");
        self.at = format!("layer {i} mlp");
        let pre = if c.extras.sandwich_norms {
            "pre_feedforward_layernorm"
        } else {
            "post_attention_layernorm"
        };
        let hn = self.norm(x, &format!("{p}.{pre}"), &format!("{l}.mlp_norm"))?;
        let inner = if c.gated_mlp {
            let g = self.linear(
                hn,
                &format!("{p}.mlp.gate_proj"),
                f,
                h,
                c.mlp_bias,
                &format!("{l}.gate"),
            )?;
            let g = self.activation(g, &format!("{l}.gate_act"))?;
            let u = self.linear(
                hn,
                &format!("{p}.mlp.up_proj"),
                f,
                h,
                c.mlp_bias,
                &format!("{l}.up"),
            )?;
            self.node(Op::Mul, &[g, u], attrs([]), &format!("{l}.glu"))?
        } else {
            let u = self.linear(
                hn,
                &format!("{p}.mlp.up_proj"),
                f,
                h,
                c.mlp_bias,
                &format!("{l}.up"),
            )?;
            self.activation(u, &format!("{l}.up_act"))?
        };
        let dn = self.linear(
            inner,
            &format!("{p}.mlp.down_proj"),
            h,
            f,
            c.mlp_bias,
            &format!("{l}.down"),
        )?;
        let dn = if c.extras.sandwich_norms {
            self.norm(
                dn,
                &format!("{p}.post_feedforward_layernorm"),
                &format!("{l}.mlp_post_norm"),
            )?
        } else {
            dn
        };
        self.node(Op::Add, &[x, dn], attrs([]), &format!("{l}.out"))
    }

    fn build(&mut self) -> Result<(), FrontendError> {
        let c = self.cfg;
        let (h, vocab) = (c.hidden_size, c.vocab_size);
        let ids_ty = TensorType::new(DType::I64, Shape(vec![batch(), seq()]));
        let ids = self.m.graph.add_input("ids", ids_ty.clone());
        let pos = self.m.graph.add_input("pos", ids_ty);
        self.at = "embeddings".into();
        let table = self.weight("model.embed_tokens.weight", &[vocab, h], true)?;
        let axis0 = || attrs([("axis", Attr::Int(0))]);
        let x = self.node(Op::Gather, &[table, ids], axis0(), "embed")?;
        let mut x = self.as_f32(x, "embed.f32")?;
        if let Some(s) = c.extras.embed_scale {
            x = self.scale_by(x, s, "embed_scaled")?;
        }
        if c.positions == Positions::Learned {
            let pt = self.weight("model.embed_positions.weight", &[c.context_length, h], true)?;
            let pe = self.node(Op::Gather, &[pt, pos], axis0(), "pos_embed")?;
            let pe = self.as_f32(pe, "pos_embed.f32")?;
            x = self.node(Op::Add, &[x, pe], attrs([]), "embed_sum")?;
        }
        for i in 0..c.num_layers {
            x = self.attention_block(i, x, pos)?;
            x = self.mlp_block(i, x)?;
        }
        // Only the last position's logits are needed: slice before the final norm
        // (which is per position) and the vocabulary projection.
        self.at = "output".into();
        let last = self.node(
            Op::Slice,
            &[x],
            attrs([
                ("starts", Attr::Ints(vec![-1])),
                ("ends", Attr::Ints(vec![i64::MAX])),
                ("axes", Attr::Ints(vec![1])),
            ]),
            "last",
        )?;
        let shape = Shape(vec![batch(), Dim::c(h)]);
        let last = self.node(
            Op::Reshape,
            &[last],
            attrs([("shape", Attr::Shape(shape))]),
            "last_2d",
        )?;
        let n = self.norm(last, "model.norm", "final_norm")?;
        let head = if c.tied_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        let w = self.weight(head, &[vocab, h], true)?;
        let w = self.float_matrix(w, "lm_head.w")?;
        let bias = if c.tied_embeddings {
            None
        } else {
            self.opt_weight("lm_head.bias", &[vocab], false)?
        };
        let mut ins = vec![n, w];
        if let Some(b) = bias {
            ins.push(self.as_f32(b, "lm_head.b")?);
        }
        let mut logits = self.node(Op::Linear, &ins, attrs([]), "logits_raw")?;
        if let Some(cap) = c.extras.final_softcap {
            let l32 = self.as_f32(logits, "logits_raw.f32")?;
            logits = self.soft_cap(l32, cap, "logits_capped")?;
        }
        let logits = if self.ty(logits).dtype == DType::F32 {
            self.m.graph.values[logits.0 as usize].name = "logits".into();
            logits
        } else {
            self.as_f32(logits, "logits")?
        };
        self.m.graph.outputs = vec![logits];
        Ok(())
    }
}
