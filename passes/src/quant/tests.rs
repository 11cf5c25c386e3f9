//! The quantize pass on hand-built blocks, run through the reference interpreter:
//! AWQ's scaling leaves the unquantized function as it was and makes the rounded one
//! closer on inputs with outlier channels; SmoothQuant's keeps it too and evens the
//! ranges the static activation scales then read; f16/bf16 conversion keeps a tied embedding
//! gatherable (a cast after the gather) and the outputs within f16's rounding.

use super::gptq::tests::Lcg;
use super::*;
use llmc_ir::interp::Interpreter;
use llmc_ir::{attrs, Attr, Dim, Shape, Tensor, TensorType};

const H: usize = 64;
const F: usize = 128;
const ROWS: usize = 256;

fn weight(m: &mut Module, name: &str, shape: &[usize], x: &[f32]) -> ValueId {
    m.add_weight(
        name,
        DType::F32,
        Shape(shape.iter().map(|&d| Dim::c(d as i64)).collect()),
        WeightData::Owned(Arc::new(x.iter().flat_map(|v| v.to_le_bytes()).collect())),
    )
}

fn random(rng: &mut Lcg, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.next() * scale) as f32).collect()
}

/// Input `x` of `dims` (last H) and `n = rms_norm(x, γ)`, γ near 1.
fn normed_input(m: &mut Module, rng: &mut Lcg, dims: &[usize]) -> (ValueId, ValueId) {
    let x = m.graph.add_input(
        "x",
        TensorType::new(
            DType::F32,
            Shape(dims.iter().map(|&d| Dim::c(d as i64)).collect()),
        ),
    );
    let gamma: Vec<f32> = (0..H).map(|_| 1.0 + 0.2 * rng.next() as f32).collect();
    let gamma = weight(m, "norm", &[H], &gamma);
    let n = m
        .add1(
            Op::RmsNorm,
            &[x, gamma],
            attrs([("eps", Attr::Float(1e-6))]),
        )
        .unwrap();
    (x, n)
}

/// `y = x + down(silu(gate(n)) · up(n))`, `n = rms_norm(x, γ)`; with `probe` the norm's
/// and the product's values are outputs too (for calibration).
fn block(seed: u64, probe: bool) -> Module {
    let mut rng = Lcg(seed);
    let mut m = Module::new("block");
    let (x, n) = normed_input(&mut m, &mut rng, &[ROWS, H]);
    let wg = random(&mut rng, F * H, 0.2);
    let wu = random(&mut rng, F * H, 0.2);
    let wd = random(&mut rng, H * F, 0.2);
    let (g, u, d) = (
        weight(&mut m, "gate", &[F, H], &wg),
        weight(&mut m, "up", &[F, H], &wu),
        weight(&mut m, "down", &[H, F], &wd),
    );
    let gl = m.add1(Op::Linear, &[n, g], attrs([])).unwrap();
    let a = m.add1(Op::Silu, &[gl], attrs([])).unwrap();
    let ul = m.add1(Op::Linear, &[n, u], attrs([])).unwrap();
    let h = m.add1(Op::Mul, &[a, ul], attrs([])).unwrap();
    let y = m.add1(Op::Linear, &[h, d], attrs([])).unwrap();
    // The residual add: the down projection is not the graph's output (the head).
    let y = m.add1(Op::Add, &[y, x], attrs([])).unwrap();
    m.graph.outputs = vec![y];
    if probe {
        m.graph.outputs.extend([n, h]);
    }
    m
}

/// Rows with a few outlier channels (as LLM activations have).
fn input(seed: u64) -> Tensor {
    let mut rng = Lcg(seed);
    let x = (0..ROWS * H)
        .map(|i| {
            let v = rng.next() as f32;
            if i % H < 3 {
                v * 25.0
            } else {
                v
            }
        })
        .collect();
    Tensor::f32(vec![ROWS, H], x)
}

fn run1(m: &Module, x: &Tensor) -> Vec<f64> {
    Interpreter::new(m).run(std::slice::from_ref(x)).unwrap()[0].to_f64()
}

fn xtx(rows: &[f64], k: usize) -> Arc<gptq::Hessian> {
    let n = rows.len() / k;
    let mut h = vec![0.0; k * k];
    for r in rows.chunks_exact(k) {
        for i in 0..k {
            for j in 0..k {
                h[i * k + j] += r[i] * r[j];
            }
        }
    }
    let mut amax = vec![0.0f64; k];
    for r in rows.chunks_exact(k) {
        for (a, v) in amax.iter_mut().zip(r) {
            *a = a.max(v.abs());
        }
    }
    Arc::new(gptq::Hessian {
        k,
        h,
        rows: n,
        amax,
    })
}

fn calibration(seed: u64, x: &Tensor) -> Arc<Calibration> {
    let outs = Interpreter::new(&block(seed, true))
        .run(std::slice::from_ref(x))
        .unwrap();
    let (hn, hh) = (xtx(&outs[1].to_f64(), H), xtx(&outs[2].to_f64(), F));
    Arc::new(Calibration::new(
        HashMap::from([
            ("gate".to_string(), hn.clone()),
            ("up".to_string(), hn),
            ("down".to_string(), hh),
        ]),
        ROWS,
        "test".into(),
    ))
}

fn rel_error(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = a.iter().map(|x| x * x).sum();
    (num / den).sqrt()
}

fn quantized(seed: u64, spec: &str, cal: Option<Arc<Calibration>>) -> Module {
    quantize(block(seed, false), spec, cal)
}

/// `m` after the pass with `--quantize spec`, checked to change and verify.
fn quantize(mut m: Module, spec: &str, cal: Option<Arc<Calibration>>) -> Module {
    let ctx = PassContext {
        quantize: Some(QuantSpec::parse(spec).unwrap()),
        calibration: cal,
        ..Default::default()
    };
    assert_eq!(run(&mut m, &ctx).unwrap(), Changed::Yes);
    llmc_ir::verify::verify(&m).unwrap();
    m
}

#[test]
fn awq_scaling_keeps_the_function_and_folds_into_norm_and_up() {
    let x = input(2);
    let cal = calibration(1, &x);
    let mut m = block(1, false);
    let want = run1(&m, &x);
    let (_, report) = awq::apply(&mut m, &cal, &|_| Some(DType::Q4_0)).unwrap();
    assert_eq!((report.groups, report.matrices), (2, 3), "{report:?}");
    assert!(report.skipped.is_empty(), "{report:?}");
    assert!(
        report.alpha_sum > 0.0,
        "outlier channels must be scaled: {report:?}"
    );
    assert!(report.awq_error < report.rtn_error, "{report:?}");
    // Scaled weights, divided norm: the same function (f32 rounding apart).
    let got = run1(&m, &x);
    let e = rel_error(&want, &got);
    assert!(e < 1e-5, "unquantized output moved by {e}");
    let gamma = m.weight(m.weight_id("norm").unwrap()).data.bytes().unwrap();
    let g0 = f32::from_le_bytes([gamma[0], gamma[1], gamma[2], gamma[3]]);
    let orig = block(1, false);
    let o = orig
        .weight(orig.weight_id("norm").unwrap())
        .data
        .bytes()
        .unwrap();
    assert_ne!(g0, f32::from_le_bytes([o[0], o[1], o[2], o[3]]));
}

/// SmoothQuant divides the input channels where they are made and multiplies the
/// weights: the float function stays, the channels' ranges even out, and the
/// `act-quant` pass's static scales are the smoothed ranges (per block of 32).
#[test]
fn smoothquant_keeps_the_function_and_static_scales_read_the_smoothed_ranges() {
    let x = input(2);
    let cal = calibration(1, &x);
    let mut m = block(1, false);
    let want = run1(&m, &x);
    let (scaled, report) =
        smooth::apply(&mut m, &cal, &|_| Some(DType::Q8_0), Some(0.5), 127.0).unwrap();
    assert_eq!((report.groups, report.matrices), (2, 3), "{report:?}");
    assert!(report.skipped.is_empty(), "{report:?}");
    assert!(
        report.spread_after < 0.8 * report.spread_before,
        "outlier channels must even out: {report:?}"
    );
    let e = rel_error(&want, &run1(&m, &x));
    assert!(e < 1e-5, "unquantized output moved by {e}");
    for (name, h) in &scaled {
        assert_eq!(h.amax.len(), h.k, "@{name}");
    }
    // α searched: never scores worse than no migration, the function still kept.
    let mut m = block(1, false);
    let (_, r) = smooth::apply(&mut m, &cal, &|_| Some(DType::Q8_0), None, 127.0).unwrap();
    assert!(
        r.smooth_error <= r.plain_error && r.plain_error > 0.0,
        "{r:?}"
    );
    assert!(rel_error(&want, &run1(&m, &x)) < 1e-5);
    // Through the pass, then act-quant with static scales.
    let mut m = block(1, false);
    let ctx = PassContext {
        quantize: Some(QuantSpec::parse("q8_0,smooth").unwrap()),
        calibration: Some(cal.clone()),
        act_bits: Some(8),
        act_static: true,
        ..Default::default()
    };
    assert_eq!(run(&mut m, &ctx).unwrap(), Changed::Yes);
    assert_eq!(act::run(&mut m, &ctx).unwrap(), Changed::Yes);
    llmc_ir::verify::verify(&m).unwrap();
    let mut seen = 0;
    for n in &m.graph.nodes {
        let Some(Attr::Floats(r)) = n.attrs.get("act_amax") else {
            continue;
        };
        let ValueDef::Weight(w) = m.graph.value(n.inputs[1]).def else {
            panic!("a linear's weight");
        };
        let name = &m.weight(w).name;
        let smoothed = cal.input_stats(name).unwrap();
        let measured = cal.hessian(name).unwrap();
        let blocks = |a: &[f64]| -> Vec<f64> {
            a.chunks(32)
                .map(|c| c.iter().fold(0.0f64, |m, &v| m.max(v)))
                .collect()
        };
        assert_eq!(r, &blocks(&smoothed.amax), "@{name}");
        assert_ne!(
            r,
            &blocks(&measured.amax),
            "@{name}: the ranges before smoothing"
        );
        assert_eq!(n.attrs.get("act_bits"), Some(&Attr::Int(8)));
        seen += 1;
    }
    assert_eq!(seen, 3, "gate, up and down carry static scales");
    // Without statistics: a clear error.
    let mut m = block(1, false);
    let e = act::run(
        &mut m,
        &PassContext {
            act_bits: Some(8),
            act_static: true,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--calibration"), "{e}");
    // Spec: smooth[=A], not with awq.
    assert_eq!(
        QuantSpec::parse("q8_0,smooth=0.7").unwrap().smooth,
        Some(Some(0.7))
    );
    assert_eq!(QuantSpec::parse("q8_0,smooth").unwrap().smooth, Some(None));
    assert!(QuantSpec::parse("q8_0,smooth=2").is_err());
    assert!(QuantSpec::parse("q8_0,awq,smooth").is_err());
}

/// `--quantize int8`: per output channel, every block of a row carries the row's one
/// scale; the output stays within int8's rounding; the spec prints back as given.
#[test]
fn int8_per_channel_shares_each_rows_scale() {
    let x = input(5);
    let want = run1(&block(5, false), &x);
    let m = quantized(5, "int8", None);
    for name in ["gate", "up", "down"] {
        let w = m.weight(m.weight_id(name).unwrap());
        assert_eq!(w.dtype, DType::Q8_0, "@{name}");
        let k = w.shape.as_consts().unwrap()[1] as usize;
        let bytes = w.data.bytes().unwrap();
        for row in bytes.chunks_exact(k / 32 * 34) {
            let d = &row[..2];
            assert!(row.chunks_exact(34).all(|b| &b[..2] == d), "@{name}");
        }
    }
    let e = rel_error(&want, &run1(&m, &x));
    assert!(e < 2e-2, "int8 per channel moved the output by {e}");
    let spec = QuantSpec::parse("int8").unwrap();
    assert!(spec.per_channel && spec.format == DType::Q8_0);
    assert_eq!(QuantSpec::parse(&spec.to_string()).unwrap(), spec);
    assert!(QuantSpec::parse("int8,gptq").is_err());
}

#[test]
fn awq_before_rounding_and_gptq_reduce_the_output_error() {
    let x = input(4);
    let want = run1(&block(3, false), &x);
    let cal = calibration(3, &x);
    let err = |spec: &str| rel_error(&want, &run1(&quantized(3, spec, Some(cal.clone())), &x));
    let rtn = rel_error(&want, &run1(&quantized(3, "q4_0", None), &x));
    let (awq, gptq, both) = (err("q4_0,awq"), err("q4_0,gptq"), err("q4_0,awq,gptq"));
    assert!(awq < 0.9 * rtn, "awq {awq} vs rounding {rtn}");
    assert!(both < gptq, "awq+gptq {both} vs gptq {gptq}");
    // Without statistics AWQ cannot choose: a clear error.
    let mut m = block(3, false);
    let ctx = PassContext {
        quantize: Some(QuantSpec::parse("q4_0,awq").unwrap()),
        ..Default::default()
    };
    let e = run(&mut m, &ctx).unwrap_err().to_string();
    assert!(e.contains("--calibration"), "{e}");
}

#[test]
fn spec_parses_awq_and_float_formats() {
    let s = QuantSpec::parse("q4_1,awq,gptq").unwrap();
    assert!(s.awq && s.gptq && s.calibrated());
    assert_eq!(s.to_string(), "q4_1,head=q8_0,embed=q4_1,awq,gptq");
    let l = QuantSpec::parse("q4_0,layer3=q8_0,layer5-7=q8_0,layer8=q5_0").unwrap();
    assert_eq!(l.layers.len(), 5);
    assert_eq!(
        l.to_string(),
        "q4_0,head=q8_0,embed=q4_0,layer3=q8_0,layer5-7=q8_0,layer8=q5_0"
    );
    assert_eq!(QuantSpec::parse(&l.to_string()).unwrap(), l);
    assert_eq!(
        l.linear_format("model.layers.6.mlp.up_proj.weight"),
        DType::Q8_0
    );
    assert_eq!(l.linear_format("blk.4.ffn_up.weight"), DType::Q4_0);
    assert_eq!(l.linear_format("model.embed_tokens.weight"), DType::Q4_0);
    assert!(QuantSpec::parse("q4_0,layer9-2=q8_0")
        .unwrap_err()
        .contains("layerA-B"));
    assert!(QuantSpec::parse("q4_0,awq,layer2=f16")
        .unwrap_err()
        .contains("converted"));
    let f = QuantSpec::parse("bf16").unwrap();
    assert_eq!(
        (f.format, f.head, f.embed),
        (DType::BF16, Some(DType::BF16), Some(DType::BF16))
    );
    assert!(QuantSpec::parse("f16,gptq")
        .unwrap_err()
        .contains("converted as they are"));
    assert!(QuantSpec::parse("q3_k")
        .unwrap_err()
        .contains("f16, bf16, q8_0"));
}

/// A tied embedding: rows gathered from the table, the norm of their sum projected
/// back onto it (the logits).
fn tied(seed: u64) -> Module {
    let (v, k) = (96, 64);
    let mut rng = Lcg(seed);
    let mut m = Module::new("tied");
    let ids = m
        .graph
        .add_input("ids", TensorType::new(DType::I64, Shape(vec![Dim::c(4)])));
    let table = random(&mut rng, v * k, 1.0);
    let t = weight(&mut m, "embed", &[v, k], &table);
    let gamma = weight(&mut m, "norm", &[k], &vec![1.0; k]);
    let e = m.add1(Op::Gather, &[t, ids], attrs([])).unwrap();
    let n = m
        .add1(
            Op::RmsNorm,
            &[e, gamma],
            attrs([("eps", Attr::Float(1e-6))]),
        )
        .unwrap();
    let y = m.add1(Op::Linear, &[n, t], attrs([])).unwrap();
    m.graph.outputs = vec![y];
    m
}

#[test]
fn float_formats_convert_a_tied_embedding_and_keep_it_gathered() {
    let ids = Tensor::from_i64(DType::I64, vec![4], vec![3, 0, 95, 17]);
    let want = Interpreter::new(&tied(5))
        .run(std::slice::from_ref(&ids))
        .unwrap()[0]
        .to_f64();
    for (spec, dtype, tol) in [("f16", DType::F16, 2e-3), ("bf16", DType::BF16, 2e-2)] {
        let m = quantize(tied(5), spec, None);
        assert_eq!(m.weight(m.weight_id("embed").unwrap()).dtype, dtype);
        let casts = m.graph.nodes.iter().filter(|n| n.op == Op::Cast).count();
        assert_eq!(casts, 1, "one cast after the gather");
        let got = Interpreter::new(&m)
            .run(std::slice::from_ref(&ids))
            .unwrap()[0]
            .to_f64();
        let e = rel_error(&want, &got);
        assert!(e < tol, "{spec}: {e}");
    }
}

fn shape(d: &[usize]) -> Attr {
    Attr::Shape(Shape(d.iter().map(|&d| Dim::c(d as i64)).collect()))
}

/// `x + o(attention(q(n), k(n), v(n)))`, `n = rms_norm(x)`, 4 query heads of 16
/// sharing 2 value heads, in the import's layout (reshape/transpose around attention).
fn attention_block(seed: u64, probe: bool) -> Module {
    let (heads, kv, dim) = (4usize, 2usize, 16usize);
    let mut rng = Lcg(seed);
    let mut m = Module::new("attn");
    let (x, n) = normed_input(&mut m, &mut rng, &[1, ROWS, H]);
    let wq = random(&mut rng, heads * dim * H, 0.2);
    let wk = random(&mut rng, kv * dim * H, 0.2);
    let wv = random(&mut rng, kv * dim * H, 0.2);
    let wo = random(&mut rng, H * heads * dim, 0.2);
    let q = weight(&mut m, "q", &[heads * dim, H], &wq);
    let k = weight(&mut m, "k", &[kv * dim, H], &wk);
    let v = weight(&mut m, "v", &[kv * dim, H], &wv);
    let o = weight(&mut m, "o", &[H, heads * dim], &wo);
    let split = |m: &mut Module, w: ValueId, h: usize| {
        let l = m.add1(Op::Linear, &[n, w], attrs([])).unwrap();
        let r = m
            .add1(
                Op::Reshape,
                &[l],
                attrs([("shape", shape(&[1, ROWS, h, dim]))]),
            )
            .unwrap();
        m.add1(
            Op::Transpose,
            &[r],
            attrs([("perm", Attr::Ints(vec![0, 2, 1, 3]))]),
        )
        .unwrap()
    };
    let (qh, kh, vh) = (
        split(&mut m, q, heads),
        split(&mut m, k, kv),
        split(&mut m, v, kv),
    );
    let a = m
        .add1(
            Op::Attention,
            &[qh, kh, vh],
            attrs([("scale", Attr::Float(0.25)), ("causal", Attr::Bool(true))]),
        )
        .unwrap();
    let t = m
        .add1(
            Op::Transpose,
            &[a],
            attrs([("perm", Attr::Ints(vec![0, 2, 1, 3]))]),
        )
        .unwrap();
    let merged = m
        .add1(
            Op::Reshape,
            &[t],
            attrs([("shape", shape(&[1, ROWS, heads * dim]))]),
        )
        .unwrap();
    let y = m.add1(Op::Linear, &[merged, o], attrs([])).unwrap();
    let y = m.add1(Op::Add, &[y, x], attrs([])).unwrap();
    m.graph.outputs = vec![y];
    if probe {
        m.graph.outputs.extend([n, merged]);
    }
    m
}

#[test]
fn awq_folds_the_o_projection_into_grouped_value_heads() {
    let x = input(6);
    let x = Tensor::f32(
        vec![1, ROWS, H],
        x.to_f64().into_iter().map(|v| v as f32).collect(),
    );
    let outs = Interpreter::new(&attention_block(7, true))
        .run(std::slice::from_ref(&x))
        .unwrap();
    let (hn, ho) = (xtx(&outs[1].to_f64(), H), xtx(&outs[2].to_f64(), H));
    let cal = Calibration::new(
        HashMap::from([
            ("q".to_string(), hn.clone()),
            ("k".to_string(), hn.clone()),
            ("v".to_string(), hn),
            ("o".to_string(), ho),
        ]),
        ROWS,
        "test".into(),
    );
    let mut m = attention_block(7, false);
    let want = run1(&m, &x);
    let (_, report) = awq::apply(&mut m, &cal, &|_| Some(DType::Q4_0)).unwrap();
    assert_eq!((report.groups, report.matrices), (2, 4), "{report:?}");
    assert!(report.skipped.is_empty(), "{report:?}");
    let e = rel_error(&want, &run1(&m, &x));
    assert!(e < 1e-5, "unquantized output moved by {e}");
}

/// `y = matmul(x, w₁) + b₁` read by `matmul(·, w₂)` (no bias), weights `[k, n]` as ONNX
/// exports write them; `w₁` is also read by a second matmul, so both readers move.
fn onnx_style(seed: u64) -> Module {
    let mut rng = Lcg(seed);
    let mut m = Module::new("onnx_style");
    let x = m.graph.add_input(
        "x",
        TensorType::new(
            DType::F32,
            Shape(vec![Dim::c(ROWS as i64), Dim::c(H as i64)]),
        ),
    );
    let w1 = random(&mut rng, H * F, 0.2);
    let w2 = random(&mut rng, F * H, 0.2);
    let b1 = random(&mut rng, F, 0.5);
    let (w1, w2, b1) = (
        weight(&mut m, "w1", &[H, F], &w1),
        weight(&mut m, "w2", &[F, H], &w2),
        weight(&mut m, "b1", &[F], &b1),
    );
    let p = m.add1(Op::MatMul, &[x, w1], attrs([])).unwrap();
    let y = m.add1(Op::Add, &[p, b1], attrs([])).unwrap();
    let z = m.add1(Op::MatMul, &[y, w2], attrs([])).unwrap();
    let p2 = m.add1(Op::MatMul, &[x, w1], attrs([])).unwrap();
    m.graph.outputs.extend([z, p2]);
    m
}

#[test]
fn matmul_weights_become_quantized_linears() {
    let x = input(21);
    let want = Interpreter::new(&onnx_style(20))
        .run(std::slice::from_ref(&x))
        .unwrap();
    // f16 keeps the function to f16's rounding: the transposes and the bias are right.
    for (spec, tol) in [("f16", 2e-3), ("q8_0", 2e-2)] {
        let m = quantize(onnx_style(20), spec, None);
        let ops: Vec<Op> = m.graph.nodes.iter().map(|n| n.op).collect();
        assert_eq!(ops, [Op::Linear, Op::Linear, Op::Linear], "{spec}: {ops:?}");
        assert_eq!(
            m.graph.nodes[0].inputs.len(),
            3,
            "{spec}: the bias is taken"
        );
        for n in &m.graph.nodes {
            let w = m.graph.ty(n.inputs[1]);
            assert_ne!(w.dtype, DType::F32, "{spec}: {w:?} stayed f32");
        }
        let got = Interpreter::new(&m).run(std::slice::from_ref(&x)).unwrap();
        for (g, w) in got.iter().zip(&want) {
            let e = rel_error(&w.to_f64(), &g.to_f64());
            assert!(e < tol, "{spec}: relative error {e}");
        }
    }
}

/// K-quants: rows of whole super-blocks keep them, others take llama-quantize's
/// fallback; per-block code choosers are refused with them, naming why.
#[test]
fn k_quants_fall_back_like_llama_quantize_and_refuse_block_codes() {
    use super::fitted_format;
    assert_eq!(fitted_format(DType::Q4K, 1536), DType::Q4K);
    assert_eq!(fitted_format(DType::Q4K, 576), DType::Q5_0);
    assert_eq!(fitted_format(DType::Q6K, 576), DType::Q8_0);
    assert_eq!(QuantSpec::parse("q4_k").unwrap().format, DType::Q4K);
    assert_eq!(
        QuantSpec::parse("q4_0,head=q6_k").unwrap().head,
        Some(DType::Q6K)
    );
    for bad in ["q4_k,gptq", "q6_k,awq", "q4_0,gptq,layer3=q4_k"] {
        let e = QuantSpec::parse(bad).unwrap_err();
        assert!(
            e.contains("q4_k and q6_k are rounded as llama-quantize"),
            "{bad}: {e}"
        );
    }
}
