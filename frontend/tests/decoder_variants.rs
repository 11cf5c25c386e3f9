//! The generic decoder builder beyond Llama: GPT-2 style (LayerNorm with bias, tanh
//! GELU, plain MLP, learned positions, biases everywhere, untied head), Qwen2 style
//! (q/k/v biases, GQA with one KV head, linearly scaled RoPE, tied embeddings, f16 and
//! bf16 weights), and a mix (erf GELU, gated, interleaved RoPE). Each runs through the
//! reference interpreter over a prefill and decode steps and is checked against a
//! plain f64 forward pass written here from the architectures' definitions.

use llmc_frontend::llm::decoder::build_decoder;
use llmc_frontend::llm::{Activation, DecoderConfig, NormKind, Positions, TensorRef, TensorSource};
use llmc_ir::interp::Interpreter;
use llmc_ir::{DType, ModelInfo, Shape, Tensor, WeightData};
use std::collections::HashMap;
use std::sync::Arc;

struct Lcg(u64);

impl Lcg {
    fn float(&mut self, scale: f64) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % 65536) as f64 / 32768.0 * scale - scale
    }
}

/// Named tensors in memory; values are kept as the stored dtype rounds them.
#[derive(Default)]
struct Mem {
    tensors: HashMap<String, TensorRef>,
    values: HashMap<String, Vec<f64>>,
}

impl Mem {
    fn put(&mut self, r: &mut Lcg, name: &str, shape: &[i64], dtype: DType, base: f64, scale: f64) {
        let n: i64 = shape.iter().product();
        let mut vals = Vec::new();
        let mut bytes = Vec::new();
        for _ in 0..n {
            let v = base + r.float(scale);
            match dtype {
                DType::F32 => {
                    let x = v as f32;
                    vals.push(x as f64);
                    bytes.extend(x.to_le_bytes());
                }
                DType::F16 => {
                    let x = half::f16::from_f64(v);
                    vals.push(x.to_f64());
                    bytes.extend(x.to_le_bytes());
                }
                DType::BF16 => {
                    let x = half::bf16::from_f64(v);
                    vals.push(x.to_f64());
                    bytes.extend(x.to_le_bytes());
                }
                d => panic!("test source has no {d}"),
            }
        }
        self.values.insert(name.to_string(), vals);
        self.tensors.insert(
            name.to_string(),
            TensorRef {
                dtype,
                shape: Shape::of(shape),
                data: WeightData::Owned(Arc::new(bytes)),
            },
        );
    }

    fn v(&self, name: &str) -> &[f64] {
        self.values
            .get(name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    fn has(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }
}

impl TensorSource for Mem {
    fn get(&self, name: &str) -> Option<TensorRef> {
        self.tensors.get(name).cloned()
    }
    fn origin(&self) -> String {
        "memory".into()
    }
}

/// Stores one random tensor: (source, name, shape, base, scale).
type Put<'a> = dyn FnMut(&mut Mem, String, &[i64], f64, f64) + 'a;

/// Random weights for `c`; `dtype_of` picks each tensor's storage type by name.
fn weights(c: &DecoderConfig, seed: u64, dtype_of: &dyn Fn(&str) -> DType) -> Mem {
    let mut r = Lcg(seed);
    let mut m = Mem::default();
    let (h, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let mut put = |m: &mut Mem, name: String, shape: &[i64], base: f64, scale: f64| {
        let d = dtype_of(&name);
        m.put(&mut r, &name, shape, d, base, scale);
    };
    put(
        &mut m,
        "model.embed_tokens.weight".into(),
        &[v, h],
        0.0,
        1.0,
    );
    if c.positions == Positions::Learned {
        put(
            &mut m,
            "model.embed_positions.weight".into(),
            &[c.context_length, h],
            0.0,
            0.5,
        );
    }
    let norm = |m: &mut Mem, put: &mut Put, p: String| {
        put(m, format!("{p}.weight"), &[h], 1.0, 0.2);
        if c.norm == NormKind::LayerNorm {
            put(m, format!("{p}.bias"), &[h], 0.0, 0.2);
        }
    };
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}");
        norm(&mut m, &mut put, format!("{p}.input_layernorm"));
        for (n, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            put(
                &mut m,
                format!("{p}.self_attn.{n}.weight"),
                &[rows, h],
                0.0,
                0.3,
            );
            if c.attn_bias {
                put(&mut m, format!("{p}.self_attn.{n}.bias"), &[rows], 0.0, 0.3);
            }
        }
        put(
            &mut m,
            format!("{p}.self_attn.o_proj.weight"),
            &[h, q],
            0.0,
            0.3,
        );
        norm(&mut m, &mut put, format!("{p}.post_attention_layernorm"));
        let mut mlp = vec![("up_proj", f, h), ("down_proj", h, f)];
        if c.gated_mlp {
            mlp.push(("gate_proj", f, h));
        }
        for (n, o, i_) in mlp {
            put(&mut m, format!("{p}.mlp.{n}.weight"), &[o, i_], 0.0, 0.3);
            if c.mlp_bias {
                put(&mut m, format!("{p}.mlp.{n}.bias"), &[o], 0.0, 0.3);
            }
        }
        if c.mlp_bias {
            put(&mut m, format!("{p}.self_attn.o_proj.bias"), &[h], 0.0, 0.3);
        }
    }
    norm(&mut m, &mut put, "model.norm".into());
    if !c.tied_embeddings {
        put(&mut m, "lm_head.weight".into(), &[v, h], 0.0, 0.5);
    }
    m
}

// ----- reference -----

fn linear(w: &[f64], b: Option<&[f64]>, x: &[f64]) -> Vec<f64> {
    let k = x.len();
    (0..w.len() / k)
        .map(|r| {
            w[r * k..(r + 1) * k]
                .iter()
                .zip(x)
                .map(|(a, b)| a * b)
                .sum::<f64>()
                + b.map_or(0.0, |b| b[r])
        })
        .collect()
}

fn norm(c: &DecoderConfig, m: &Mem, p: &str, x: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let w = m.v(&format!("{p}.weight"));
    match c.norm {
        NormKind::RmsNorm => {
            let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / n + c.norm_eps).sqrt();
            x.iter().zip(w).map(|(v, w)| v * inv * w).collect()
        }
        NormKind::LayerNorm => {
            let b = m.v(&format!("{p}.bias"));
            let mean = x.iter().sum::<f64>() / n;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            let inv = 1.0 / (var + c.norm_eps).sqrt();
            x.iter()
                .zip(w.iter().zip(b))
                .map(|(v, (w, b))| (v - mean) * inv * w + b)
                .collect()
        }
    }
}

/// erf by Simpson's rule on 2/sqrt(pi) e^(-t^2) (error far below f32 precision).
fn erf(x: f64) -> f64 {
    let n = 4000;
    let h = x / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(0.0) + f(x);
    for i in 1..n {
        s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

fn act(c: &DecoderConfig, x: f64) -> f64 {
    match c.activation {
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Relu => x.max(0.0),
        Activation::Gelu => 0.5 * x * (1.0 + erf(x / 2f64.sqrt())),
        Activation::GeluTanh => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
        }
    }
}

fn rope(c: &DecoderConfig, x: &mut [f64], pos: usize) {
    let d = c.head_dim as usize;
    let p = pos as f64 / c.rope_scale;
    for head in x.chunks_mut(d) {
        for i in 0..d / 2 {
            let (s, co) = (p * c.rope_theta.powf(-2.0 * i as f64 / d as f64)).sin_cos();
            let (ia, ib) = match c.positions {
                Positions::RopeNeox => (i, i + d / 2),
                Positions::RopeInterleaved => (2 * i, 2 * i + 1),
                Positions::Learned => return,
            };
            let (a, b) = (head[ia], head[ib]);
            head[ia] = a * co - b * s;
            head[ib] = b * co + a * s;
        }
    }
}

fn reference(c: &DecoderConfig, m: &Mem, ids: &[usize]) -> Vec<f64> {
    let (h, d) = (c.hidden_size as usize, c.head_dim as usize);
    let (nh, nkv) = (c.num_heads as usize, c.num_kv_heads as usize);
    let bias = |name: String, on: bool| {
        if on && m.has(&name) {
            Some(m.v(&name).to_vec())
        } else {
            None
        }
    };
    let mut xs: Vec<Vec<f64>> = ids
        .iter()
        .enumerate()
        .map(|(p, &t)| {
            let mut x = m.v("model.embed_tokens.weight")[t * h..(t + 1) * h].to_vec();
            if c.positions == Positions::Learned {
                let pe = &m.v("model.embed_positions.weight")[p * h..(p + 1) * h];
                x.iter_mut().zip(pe).for_each(|(a, b)| *a += b);
            }
            x
        })
        .collect();
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}");
        let proj = |n: &str, x: &[f64]| {
            let w = m.v(&format!("{p}.self_attn.{n}.weight"));
            let on = if n == "o_proj" {
                c.mlp_bias
            } else {
                c.attn_bias
            };
            linear(w, bias(format!("{p}.self_attn.{n}.bias"), on).as_deref(), x)
        };
        let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
        for (t, x) in xs.iter().enumerate() {
            let hn = norm(c, m, &format!("{p}.input_layernorm"), x);
            let (mut q, mut k) = (proj("q_proj", &hn), proj("k_proj", &hn));
            rope(c, &mut q, t);
            rope(c, &mut k, t);
            qs.push(q);
            ks.push(k);
            vs.push(proj("v_proj", &hn));
        }
        for t in 0..xs.len() {
            let mut att = vec![0.0; nh * d];
            for hq in 0..nh {
                let hk = hq / (nh / nkv);
                let q = &qs[t][hq * d..(hq + 1) * d];
                let sc: Vec<f64> = (0..=t)
                    .map(|s| {
                        let k = &ks[s][hk * d..(hk + 1) * d];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|s| (s - mx).exp()).sum();
                for (s, v) in sc.iter().enumerate() {
                    let w = (v - mx).exp() / z;
                    for j in 0..d {
                        att[hq * d + j] += w * vs[s][hk * d + j];
                    }
                }
            }
            let o = proj("o_proj", &att);
            xs[t].iter_mut().zip(o).for_each(|(a, b)| *a += b);
        }
        for x in xs.iter_mut() {
            let hn = norm(c, m, &format!("{p}.post_attention_layernorm"), x);
            let mlp = |n: &str, x: &[f64]| {
                let w = m.v(&format!("{p}.mlp.{n}.weight"));
                linear(
                    w,
                    bias(format!("{p}.mlp.{n}.bias"), c.mlp_bias).as_deref(),
                    x,
                )
            };
            let up = mlp("up_proj", &hn);
            let inner: Vec<f64> = if c.gated_mlp {
                let g = mlp("gate_proj", &hn);
                g.iter().zip(&up).map(|(g, u)| act(c, *g) * u).collect()
            } else {
                up.iter().map(|u| act(c, *u)).collect()
            };
            let dn = mlp("down_proj", &inner);
            x.iter_mut().zip(dn).for_each(|(a, b)| *a += b);
        }
    }
    let n = norm(c, m, "model.norm", xs.last().unwrap());
    let head = if c.tied_embeddings {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    linear(m.v(head), None, &n)
}

fn check(c: &DecoderConfig, m: &Mem, prompt: &[usize], more: &[usize]) {
    let module = build_decoder(c, m, ModelInfo::default()).expect("builds");
    llmc_ir::verify::verify(&module).expect("verifies");
    let mut interp = Interpreter::new(&module);
    let t = |v: Vec<i64>| Tensor::from_i64(DType::I64, vec![1, v.len()], v);
    let mut seq: Vec<usize> = Vec::new();
    let mut feed: Vec<usize> = prompt.to_vec();
    for step in 0..=more.len() {
        let start = seq.len();
        let ids = t(feed.iter().map(|&x| x as i64).collect());
        let pos = t((start..start + feed.len()).map(|x| x as i64).collect());
        let out = interp.run(&[ids, pos]).expect("runs");
        seq.extend(&feed);
        let got = out[0].to_f64();
        let want = reference(c, m, &seq);
        let scale = want.iter().fold(1.0f64, |a, b| a.max(b.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 2e-5 * scale,
                "{} step {step} logit {i}: got {g}, want {w}",
                c.arch
            );
        }
        if let Some(&n) = more.get(step) {
            feed = vec![n];
        }
    }
}

fn base() -> DecoderConfig {
    DecoderConfig {
        arch: "test".into(),
        vocab_size: 19,
        hidden_size: 16,
        intermediate_size: 24,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 4,
        head_dim: 4,
        norm: NormKind::RmsNorm,
        norm_eps: 1e-5,
        activation: Activation::Silu,
        gated_mlp: true,
        positions: Positions::RopeNeox,
        rope_theta: 10_000.0,
        rope_scale: 1.0,
        tied_embeddings: true,
        attn_bias: false,
        mlp_bias: false,
        context_length: 16,
        extras: Default::default(),
    }
}

#[test]
fn gpt2_style() {
    let c = DecoderConfig {
        arch: "gpt2".into(),
        norm: NormKind::LayerNorm,
        activation: Activation::GeluTanh,
        gated_mlp: false,
        positions: Positions::Learned,
        tied_embeddings: false,
        attn_bias: true,
        mlp_bias: true,
        ..base()
    };
    let m = weights(&c, 1, &|_| DType::F32);
    check(&c, &m, &[3, 1, 18, 7], &[0, 12, 5]);
}

#[test]
fn qwen2_style_with_half_precision_weights() {
    let c = DecoderConfig {
        arch: "qwen2".into(),
        num_kv_heads: 1,
        rope_scale: 2.0,
        rope_theta: 1000.0,
        attn_bias: true,
        ..base()
    };
    let dtype = |n: &str| {
        if n.contains("q_proj.weight") || n.contains("embed_tokens") || n.contains("layernorm") {
            DType::F16
        } else if n.contains("down_proj") || n.contains("k_proj.bias") {
            DType::BF16
        } else {
            DType::F32
        }
    };
    let m = weights(&c, 2, &dtype);
    check(&c, &m, &[2, 9, 9, 14, 0], &[6, 1]);
}

#[test]
fn erf_gelu_gated_interleaved_rope() {
    let c = DecoderConfig {
        arch: "mix".into(),
        norm: NormKind::LayerNorm,
        activation: Activation::Gelu,
        positions: Positions::RopeInterleaved,
        tied_embeddings: false,
        num_kv_heads: 2,
        ..base()
    };
    let m = weights(&c, 3, &|_| DType::F32);
    check(&c, &m, &[11, 4], &[17, 2, 8]);
    let relu = DecoderConfig {
        activation: Activation::Relu,
        ..c
    };
    check(&relu, &m, &[5, 6, 7], &[]);
}

#[test]
fn bad_configs_are_errors() {
    let c = base();
    let m = weights(&c, 4, &|_| DType::F32);
    let err = |c: DecoderConfig| {
        build_decoder(&c, &m, ModelInfo::default())
            .unwrap_err()
            .to_string()
    };
    assert!(err(DecoderConfig {
        num_kv_heads: 3,
        ..base()
    })
    .contains("not a multiple of 3 key/value heads"));
    assert!(err(DecoderConfig {
        head_dim: 0,
        ..base()
    })
    .contains("head_dim = 0"));
    assert!(err(DecoderConfig {
        head_dim: i64::MAX,
        ..base()
    })
    .contains("overflows"));
    assert!(err(DecoderConfig {
        rope_scale: 0.0,
        ..base()
    })
    .contains("RoPE scaling factor 0"));
    assert!(err(DecoderConfig {
        num_layers: 3,
        ..base()
    })
    .contains("memory: missing tensor `model.layers.2.input_layernorm.weight`"));
    assert!(err(DecoderConfig { intermediate_size: 25, ..base() })
        .contains("tensor `model.layers.0.mlp.gate_proj.weight`: has shape [24, 16], the config implies [25, 16]"));
    assert!(err(DecoderConfig {
        tied_embeddings: false,
        ..base()
    })
    .contains("missing tensor `lm_head.weight`"));
}
