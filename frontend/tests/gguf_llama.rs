//! A tiny random Llama written as GGUF (Q/K rows permuted the way llama.cpp's converter
//! permutes them, some weights in q8_0/q4_1 blocks) is imported and run through the
//! reference interpreter; its logits must match a plain f64 implementation of the
//! Hugging Face Llama forward pass written here from the model's definition, over a
//! prefill and decode steps. Also: the module's structure, and the equivalence behind
//! the Q/K decision (interleaved rope on the file's rows = neox rope on unpermuted rows).

mod common;

use common::{ggml, GgufWriter};
use llmc_frontend::gguf::{self, llama, GgufFile};
use llmc_frontend::llm::decoder::build_decoder;
use llmc_frontend::llm::{Positions, TensorRef, TensorSource};
use llmc_ir::interp::Interpreter;
use llmc_ir::{DType, Shape, Tensor, TokenizerSource, WeightData};

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn float(&mut self, scale: f64) -> f64 {
        // f32-exact values in [-scale, scale).
        ((self.next() % 65536) as f64 / 32768.0 - 1.0) * scale
    }
}

/// A matrix `[rows, cols]` in HF row order: its exact values and, per row, the bytes
/// of its storage format. Quantized values are built from integer quants and
/// power-of-two scales, so the stored blocks decode to exactly these values.
struct Mat {
    rows: usize,
    cols: usize,
    values: Vec<f64>,
    row_bytes: Vec<Vec<u8>>,
    ggml_type: u32,
}

fn f16b(v: f64) -> [u8; 2] {
    half::f16::from_f64(v).to_le_bytes()
}

fn mat(rng: &mut Lcg, rows: usize, cols: usize, ggml_type: u32, scale: f64) -> Mat {
    let mut values = Vec::new();
    let mut row_bytes = Vec::new();
    for _ in 0..rows {
        let mut bytes = Vec::new();
        match ggml_type {
            ggml::F32 => {
                for _ in 0..cols {
                    let v = rng.float(scale) as f32;
                    values.push(v as f64);
                    bytes.extend(v.to_le_bytes());
                }
            }
            ggml::Q8_0 => {
                let d = scale / 64.0; // a power of two times `scale`
                for _ in 0..cols / 32 {
                    bytes.extend(f16b(d));
                    for _ in 0..32 {
                        let q = (rng.next() % 255) as i64 - 127;
                        values.push(d * q as f64);
                        bytes.push(q as i8 as u8);
                    }
                }
            }
            ggml::Q4_1 => {
                let (d, m) = (scale / 8.0, -scale);
                for _ in 0..cols / 32 {
                    bytes.extend(f16b(d));
                    bytes.extend(f16b(m));
                    let qs: Vec<u8> = (0..32).map(|_| (rng.next() % 16) as u8).collect();
                    // Element j < 16: low nibble of byte j; element j + 16: high nibble.
                    for j in 0..16 {
                        bytes.push(qs[j] | (qs[j + 16] << 4));
                    }
                    values.extend(qs.iter().map(|&q| d * q as f64 + m));
                }
            }
            t => panic!("test writer has no ggml type {t}"),
        }
        row_bytes.push(bytes);
    }
    Mat {
        rows,
        cols,
        values,
        row_bytes,
        ggml_type,
    }
}

fn vector(rng: &mut Lcg, n: usize, base: f64, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|_| (base + rng.float(scale)) as f32 as f64)
        .collect()
}

#[derive(Clone, Copy)]
struct Cfg {
    vocab: usize,
    hidden: usize,
    ffn: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    theta: f64,
    eps: f64,
    tied: bool,
    bias: bool,
    quant: bool,
}

impl Cfg {
    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

struct Layer {
    attn_norm: Vec<f64>,
    q: Mat,
    k: Mat,
    v: Mat,
    bq: Vec<f64>,
    bk: Vec<f64>,
    bv: Vec<f64>,
    o: Mat,
    ffn_norm: Vec<f64>,
    gate: Mat,
    up: Mat,
    down: Mat,
}

struct Model {
    cfg: Cfg,
    embed: Mat,
    layers: Vec<Layer>,
    norm: Vec<f64>,
    lm_head: Option<Mat>,
}

fn random_model(cfg: Cfg, seed: u64) -> Model {
    let mut r = Lcg(seed);
    let (h, f, d) = (cfg.hidden, cfg.ffn, cfg.head_dim());
    let (qt, et) = if cfg.quant {
        (ggml::Q4_1, ggml::Q8_0)
    } else {
        (ggml::F32, ggml::F32)
    };
    let embed = mat(&mut r, cfg.vocab, h, et, 1.0);
    let layers = (0..cfg.layers)
        .map(|_| Layer {
            attn_norm: vector(&mut r, h, 1.0, 0.2),
            q: mat(&mut r, cfg.heads * d, h, qt, 0.25),
            k: mat(&mut r, cfg.kv_heads * d, h, qt, 0.25),
            v: mat(&mut r, cfg.kv_heads * d, h, ggml::F32, 0.25),
            bq: vector(&mut r, cfg.heads * d, 0.0, 0.5),
            bk: vector(&mut r, cfg.kv_heads * d, 0.0, 0.5),
            bv: vector(&mut r, cfg.kv_heads * d, 0.0, 0.5),
            o: mat(&mut r, h, cfg.heads * d, ggml::F32, 0.25),
            ffn_norm: vector(&mut r, h, 1.0, 0.2),
            gate: mat(&mut r, f, h, qt, 0.25),
            up: mat(&mut r, f, h, ggml::F32, 0.25),
            down: mat(&mut r, h, f, et, 0.25),
        })
        .collect();
    Model {
        cfg,
        embed,
        layers,
        norm: vector(&mut r, h, 1.0, 0.2),
        lm_head: (!cfg.tied).then(|| mat(&mut r, cfg.vocab, h, ggml::F32, 0.5)),
    }
}

/// llama.cpp's converter permutation: GGUF row `h*d + 2j + i` holds HF row
/// `h*d + i*d/2 + j`.
fn gguf_row_order(rows: usize, heads: usize) -> Vec<usize> {
    let d = rows / heads;
    (0..rows)
        .map(|g| {
            let (h, r) = (g / d, g % d);
            let (j, i) = (r / 2, r % 2);
            h * d + i * (d / 2) + j
        })
        .collect()
}

fn put_mat(w: &mut GgufWriter, name: &str, m: &Mat, order: Option<Vec<usize>>) {
    let order = order.unwrap_or_else(|| (0..m.rows).collect());
    let data: Vec<u8> = order.iter().flat_map(|&r| m.row_bytes[r].clone()).collect();
    w.tensor(name, &[m.cols as u64, m.rows as u64], m.ggml_type, data);
}

fn put_vec(w: &mut GgufWriter, name: &str, v: &[f64], order: Option<Vec<usize>>) {
    let order = order.unwrap_or_else(|| (0..v.len()).collect());
    let vals: Vec<f32> = order.iter().map(|&i| v[i] as f32).collect();
    w.tensor_f32(name, &[v.len()], &vals);
}

fn write_gguf(m: &Model) -> GgufWriter {
    let c = m.cfg;
    let mut w = GgufWriter::default();
    w.kv_str("general.architecture", "llama")
        .kv_str("general.basename", "Tiny Llama")
        .kv_u32("llama.block_count", c.layers as u32)
        .kv_u32("llama.context_length", 64)
        .kv_u32("llama.embedding_length", c.hidden as u32)
        .kv_u32("llama.feed_forward_length", c.ffn as u32)
        .kv_u32("llama.attention.head_count", c.heads as u32)
        .kv_u32("llama.attention.head_count_kv", c.kv_heads as u32)
        .kv_f32("llama.attention.layer_norm_rms_epsilon", c.eps as f32)
        .kv_f32("llama.rope.freq_base", c.theta as f32)
        .kv_u32("llama.rope.dimension_count", c.head_dim() as u32)
        .kv_u32("tokenizer.ggml.bos_token_id", 1)
        .kv_u32("tokenizer.ggml.eos_token_id", 2)
        .kv_str("tokenizer.chat_template", "{{ messages }}");
    let tokens: Vec<String> = (0..c.vocab).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = tokens.iter().map(|s| s.as_str()).collect();
    w.kv_str_array("tokenizer.ggml.tokens", &refs);
    put_mat(&mut w, "token_embd.weight", &m.embed, None);
    for (i, l) in m.layers.iter().enumerate() {
        let p = |s: &str| format!("blk.{i}.{s}");
        let qo = || Some(gguf_row_order(l.q.rows, c.heads));
        let ko = || Some(gguf_row_order(l.k.rows, c.kv_heads));
        put_vec(&mut w, &p("attn_norm.weight"), &l.attn_norm, None);
        put_mat(&mut w, &p("attn_q.weight"), &l.q, qo());
        put_mat(&mut w, &p("attn_k.weight"), &l.k, ko());
        put_mat(&mut w, &p("attn_v.weight"), &l.v, None);
        if c.bias {
            put_vec(&mut w, &p("attn_q.bias"), &l.bq, qo());
            put_vec(&mut w, &p("attn_k.bias"), &l.bk, ko());
            put_vec(&mut w, &p("attn_v.bias"), &l.bv, None);
        }
        put_mat(&mut w, &p("attn_output.weight"), &l.o, None);
        put_vec(&mut w, &p("ffn_norm.weight"), &l.ffn_norm, None);
        put_mat(&mut w, &p("ffn_gate.weight"), &l.gate, None);
        put_mat(&mut w, &p("ffn_up.weight"), &l.up, None);
        put_mat(&mut w, &p("ffn_down.weight"), &l.down, None);
    }
    put_vec(&mut w, "output_norm.weight", &m.norm, None);
    if let Some(h) = &m.lm_head {
        put_mat(&mut w, "output.weight", h, None);
    }
    w
}

// ----- the reference: Hugging Face LlamaForCausalLM, in f64 -----

fn matvec(m: &Mat, x: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    (0..m.rows)
        .map(|r| {
            let row = &m.values[r * m.cols..(r + 1) * m.cols];
            row.iter().zip(x).map(|(a, b)| a * b).sum::<f64>() + bias.map_or(0.0, |b| b[r])
        })
        .collect()
}

fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v * inv * w).collect()
}

/// `rotate_half` RoPE on each head of `x` at position `pos`.
fn rope_neox(x: &mut [f64], d: usize, pos: usize, theta: f64) {
    for head in x.chunks_mut(d) {
        for i in 0..d / 2 {
            let angle = pos as f64 * theta.powf(-2.0 * i as f64 / d as f64);
            let (s, c) = angle.sin_cos();
            let (a, b) = (head[i], head[i + d / 2]);
            head[i] = a * c - b * s;
            head[i + d / 2] = b * c + a * s;
        }
    }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Logits at the last position for `ids` at positions 0..n.
fn reference_logits(m: &Model, ids: &[usize]) -> Vec<f64> {
    let c = m.cfg;
    let (h, d) = (c.hidden, c.head_dim());
    let group = c.heads / c.kv_heads;
    let mut xs: Vec<Vec<f64>> = ids
        .iter()
        .map(|&t| m.embed.values[t * h..(t + 1) * h].to_vec())
        .collect();
    for l in &m.layers {
        let bias = |b: &[f64]| if c.bias { Some(b.to_vec()) } else { None };
        let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for (p, x) in xs.iter().enumerate() {
            let hn = rms_norm(x, &l.attn_norm, c.eps);
            let mut q = matvec(&l.q, &hn, bias(&l.bq).as_deref());
            let mut k = matvec(&l.k, &hn, bias(&l.bk).as_deref());
            rope_neox(&mut q, d, p, c.theta);
            rope_neox(&mut k, d, p, c.theta);
            qs.push(q);
            ks.push(k);
            vs.push(matvec(&l.v, &hn, bias(&l.bv).as_deref()));
        }
        for t in 0..xs.len() {
            let mut att = vec![0.0; c.heads * d];
            for hq in 0..c.heads {
                let hk = hq / group;
                let q = &qs[t][hq * d..(hq + 1) * d];
                let scores: Vec<f64> = (0..=t)
                    .map(|s| {
                        let k = &ks[s][hk * d..(hk + 1) * d];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for (s, w) in e.iter().enumerate() {
                    for j in 0..d {
                        att[hq * d + j] += w / z * vs[s][hk * d + j];
                    }
                }
            }
            let o = matvec(&l.o, &att, None);
            for (x, o) in xs[t].iter_mut().zip(o) {
                *x += o;
            }
        }
        for x in xs.iter_mut() {
            let hn = rms_norm(x, &l.ffn_norm, c.eps);
            let g = matvec(&l.gate, &hn, None);
            let u = matvec(&l.up, &hn, None);
            let inner: Vec<f64> = g.iter().zip(&u).map(|(g, u)| silu(*g) * u).collect();
            for (x, dn) in x.iter_mut().zip(matvec(&l.down, &inner, None)) {
                *x += dn;
            }
        }
    }
    let last = xs.last().expect("at least one token");
    let n = rms_norm(last, &m.norm, c.eps);
    matvec(m.lm_head.as_ref().unwrap_or(&m.embed), &n, None)
}

fn ids_tensor(v: &[usize]) -> Tensor {
    Tensor::from_i64(
        DType::I64,
        vec![1, v.len()],
        v.iter().map(|&x| x as i64).collect(),
    )
}

fn pos_tensor(start: usize, n: usize) -> Tensor {
    Tensor::from_i64(
        DType::I64,
        vec![1, n],
        (start..start + n).map(|x| x as i64).collect(),
    )
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f64, |a, b| a.max(b.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        // Activations are rounded to f32 after each op: a few f32 ulps of the scale.
        assert!(
            (g - w).abs() <= 1e-5 * scale,
            "{what}: logit {i}: got {g}, want {w}"
        );
    }
}

/// Prefill `prompt`, then feed `more` one token at a time, comparing every step's
/// logits with the reference over the whole prefix.
fn check_against_reference(
    model: &Model,
    module: &llmc_ir::Module,
    prompt: &[usize],
    more: &[usize],
) {
    let mut interp = Interpreter::new(module);
    let out = interp
        .run(&[ids_tensor(prompt), pos_tensor(0, prompt.len())])
        .expect("prefill runs");
    assert_eq!(out[0].shape, vec![1, model.cfg.vocab]);
    assert_close(
        &out[0].to_f64(),
        &reference_logits(model, prompt),
        "prefill",
    );
    let mut seq = prompt.to_vec();
    for &t in more {
        let out = interp
            .run(&[ids_tensor(&[t]), pos_tensor(seq.len(), 1)])
            .expect("decode step runs");
        seq.push(t);
        assert_close(
            &out[0].to_f64(),
            &reference_logits(model, &seq),
            &format!("decode at {}", seq.len()),
        );
    }
}

const QUANT_TIED: Cfg = Cfg {
    vocab: 40,
    hidden: 32,
    ffn: 64,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    theta: 10_000.0,
    eps: 1e-5,
    tied: true,
    bias: false,
    quant: true,
};

#[test]
fn quantized_tied_llama_matches_reference() {
    let model = random_model(QUANT_TIED, 7);
    let (_dir, path) = write_gguf(&model).write_temp();
    let module = gguf::load(&path).expect("loads");
    check_against_reference(&model, &module, &[3, 17, 5, 39], &[8, 0, 22]);
}

#[test]
fn f32_untied_llama_with_biases_matches_reference() {
    let cfg = Cfg {
        vocab: 23,
        hidden: 24,
        ffn: 40,
        layers: 3,
        heads: 6,
        kv_heads: 3,
        theta: 500.0,
        eps: 1e-6,
        tied: false,
        bias: true,
        quant: false,
    };
    let model = random_model(cfg, 11);
    let (_dir, path) = write_gguf(&model).write_temp();
    let module = gguf::load(&path).expect("loads");
    check_against_reference(&model, &module, &[1, 2, 22, 9, 4, 0], &[13, 7]);
}

#[test]
fn module_structure() {
    let model = random_model(QUANT_TIED, 3);
    let (_dir, path) = write_gguf(&model).write_temp();
    let m = gguf::load(&path).unwrap();
    llmc_ir::verify::verify(&m).expect("verifies");
    assert_eq!(m.name, "tiny_llama");
    assert_eq!(m.info.architecture, "llama");
    assert_eq!(m.info.context_length, Some(64));
    assert_eq!(m.info.tokenizer, TokenizerSource::Gguf(path.clone()));
    assert_eq!(
        (m.info.bos_token, m.info.eos_tokens.clone()),
        (Some(1), vec![2])
    );
    assert_eq!(m.info.chat_template.as_deref(), Some("{{ messages }}"));
    let g = &m.graph;
    let names: Vec<String> = g
        .inputs
        .iter()
        .map(|&v| g.value(v).ty.to_string())
        .collect();
    assert_eq!(names, ["i64[batch, seq]", "i64[batch, seq]"]);
    assert_eq!(g.outputs.len(), 1);
    assert_eq!(g.value(g.outputs[0]).name, "logits");
    assert_eq!(g.value(g.outputs[0]).ty.to_string(), "f32[batch, 40]");
    // Weights keep their block formats; tied embeddings are one weight.
    let w = |n: &str| m.weight(m.weight_id(n).unwrap_or_else(|| panic!("weight {n}")));
    assert_eq!(w("model.embed_tokens.weight").dtype, DType::Q8_0);
    assert_eq!(w("model.embed_tokens.weight").shape, Shape::of(&[40, 32]));
    assert_eq!(w("model.layers.1.mlp.gate_proj.weight").dtype, DType::Q4_1);
    assert_eq!(
        w("model.layers.0.self_attn.k_proj.weight").shape,
        Shape::of(&[16, 32])
    );
    assert!(m.weight_id("lm_head.weight").is_none());
    assert_eq!(m.weights.len(), 1 + 2 * 9 + 1);
    // Only Q and K are rewritten; everything else is a range of the mapped file.
    for wt in &m.weights {
        let owned = matches!(wt.data, WeightData::Owned(_));
        let qk = wt.name.contains("q_proj") || wt.name.contains("k_proj");
        assert_eq!(owned, qk, "{}: {:?}", wt.name, wt.data);
    }
    // Quantized Q rows moved whole: HF row r of layer 0's q_proj is a file row.
    let f = GgufFile::open(&path).unwrap();
    let t = f.header.tensor("blk.0.attn_q.weight").unwrap();
    let file_bytes = f.tensor_bytes(t);
    let q = w("model.layers.0.self_attn.q_proj.weight")
        .data
        .bytes()
        .unwrap();
    let row = model.layers[0].q.row_bytes[0].len();
    for (g, &hf) in gguf_row_order(32, 4).iter().enumerate() {
        assert_eq!(
            &q[hf * row..(hf + 1) * row],
            &file_bytes[g * row..(g + 1) * row]
        );
        assert_eq!(
            &q[hf * row..(hf + 1) * row],
            &model.layers[0].q.row_bytes[hf][..]
        );
    }
    // Readable value names in the text form, and the text round-trips.
    let text = llmc_ir::text::print(&m);
    for part in [
        "%l0.q_rope = rope(",
        "%l1.k_cache, %l1.v_cache = kv_append(",
        "%logits = linear(%final_norm",
    ] {
        assert!(text.contains(part), "printed IR lacks {part:?}");
    }
    let back = llmc_ir::text::parse(&text, "printed").expect("parses");
    assert_eq!(llmc_ir::text::print(&back), text);
    assert_eq!(
        (back.weights.len(), back.graph.nodes.len()),
        (m.weights.len(), m.graph.nodes.len())
    );
}

/// The file's Q/K rows served as they are, with no unpermutation.
struct RawTensors<'a>(&'a GgufFile);

impl TensorSource for RawTensors<'_> {
    fn get(&self, name: &str) -> Option<TensorRef> {
        let t = self.0.header.tensor(&llama::gguf_name(name)?)?;
        Some(TensorRef {
            dtype: t.dtype,
            shape: t.shape.clone(),
            data: self.0.tensor_data(t),
        })
    }
    fn origin(&self) -> String {
        self.0.name()
    }
}

/// The permutation llama.cpp applies is exactly the one that turns neox rope into
/// interleaved rope: the file's rows with `style = "interleaved"` give the logits the
/// unpermuted rows give with `style = "neox"`.
#[test]
fn interleaved_rope_on_file_rows_equals_neox_on_unpermuted_rows() {
    let cfg = Cfg {
        bias: true,
        tied: false,
        quant: false,
        ..QUANT_TIED
    };
    let model = random_model(cfg, 5);
    let (_dir, path) = write_gguf(&model).write_temp();
    let f = GgufFile::open(&path).unwrap();
    let mut dc = llama::config(&f).unwrap();
    assert_eq!(dc.positions, Positions::RopeNeox);
    dc.positions = Positions::RopeInterleaved;
    let raw = build_decoder(&dc, &RawTensors(&f), llama::model_info(&f).unwrap()).unwrap();
    let neox = gguf::load(&path).unwrap();
    let prompt = [4, 9, 31, 2, 0];
    let run = |m: &llmc_ir::Module| {
        Interpreter::new(m)
            .run(&[ids_tensor(&prompt), pos_tensor(0, prompt.len())])
            .unwrap()[0]
            .to_f64()
    };
    let (a, b) = (run(&raw), run(&neox));
    assert_close(&a, &b, "interleaved vs neox");
    // And both are the reference; with the rows left permuted and neox rope, they are not.
    assert_close(&b, &reference_logits(&model, &prompt), "neox vs reference");
    dc.positions = Positions::RopeNeox;
    let wrong = build_decoder(&dc, &RawTensors(&f), llama::model_info(&f).unwrap()).unwrap();
    let c = run(&wrong);
    let diff = c
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(
        diff > 1e-3,
        "permuted rows with neox rope should differ, max diff {diff}"
    );
}

#[test]
fn config_errors_name_the_key() {
    let model = random_model(QUANT_TIED, 1);
    let mut w = write_gguf(&model);
    let up = w
        .tensors
        .iter_mut()
        .find(|t| t.name == "blk.0.ffn_up.weight")
        .unwrap();
    up.ne = vec![32, 32];
    up.data.truncate(32 * 32 * 4);
    let (_dir, path) = w.write_temp();
    let e = gguf::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("tensor `model.layers.0.mlp.up_proj.weight`: has shape [32, 32], the config implies [64, 32]"),
        "{e}"
    );

    let mut w = write_gguf(&model);
    w.kv_str("llama.rope.scaling.type", "yarn");
    let (_dir, path) = w.write_temp();
    let e = gguf::load(&path).unwrap_err().to_string();
    assert!(e.contains("unsupported: RoPE scaling `yarn`"), "{e}");

    let mut w = write_gguf(&model);
    w.tensors.retain(|t| t.name != "blk.1.ffn_up.weight");
    let (_dir, path) = w.write_temp();
    let e = gguf::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("missing tensor `model.layers.1.mlp.up_proj.weight`"),
        "{e}"
    );
}
