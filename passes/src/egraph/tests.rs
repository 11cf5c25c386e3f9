//! Unit tests of the e-graph pass: each rule family on a small module, checked by the
//! ops left and by running both modules through the reference interpreter.

use super::*;
use llmc_ir::interp::Interpreter;
use llmc_ir::{Op, Tensor};

fn parse(src: &str) -> Module {
    llmc_ir::text::parse(src, "test").unwrap_or_else(|e| panic!("{e}"))
}

fn count(m: &Module, op: Op) -> usize {
    m.graph.nodes.iter().filter(|n| n.op == op).count()
}

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f64 / (1u64 << 31) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

/// `n` pseudo-random f32 values (`values(n, seed)`) as a weight's data.
fn f32_weight(n: usize, seed: u64) -> llmc_ir::WeightData {
    let bytes = values(n, seed)
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    llmc_ir::WeightData::Owned(std::sync::Arc::new(bytes))
}

/// Runs `m` on inputs of the given shapes (random f32) and returns the outputs.
fn eval(m: &Module, shapes: &[Vec<usize>]) -> Vec<Tensor> {
    let ins: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| Tensor::f32(s.clone(), values(s.iter().product(), i as u64 + 7)))
        .collect();
    let mut it = Interpreter::new(m);
    it.run(&ins).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_close(a: &[Tensor], b: &[Tensor], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.shape, y.shape);
        for (p, q) in x.to_f64().iter().zip(y.to_f64()) {
            assert!((p - q).abs() <= tol * (1.0 + q.abs()), "{p} vs {q}");
        }
    }
}

/// Optimises `src`, checks the outputs agree before and after, returns the result.
fn optimise_and_compare(src: &str, shapes: &[Vec<usize>]) -> (Module, Report) {
    let m0 = parse(src);
    let mut m1 = m0.clone();
    let (_, report) = run_with(&mut m1, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    llmc_ir::verify::verify(&m1).unwrap_or_else(|e| panic!("{e:?}\n{}", llmc_ir::text::print(&m1)));
    let (a, b) = (eval(&m0, shapes), eval(&m1, shapes));
    assert_close(&b, &a, 1e-5);
    (m1, report)
}

/// BERT-style attention as the torch exporter writes it (MiniLM): head split by
/// transposes, kᵀ by a [0, 2, 3, 1] transpose, scale by mul, additive mask.
const BERT_ATTENTION: &str = "module @att {
  graph @main(%q: f32[1, 4, 2, 8], %k: f32[1, 4, 2, 8], %v: f32[1, 4, 2, 8], %mask: f32[1, 1, 4, 4]) -> (%out: f32[1, 4, 2, 8]) {
    %qh = transpose(%q) {perm = [0, 2, 1, 3]} : f32[1, 2, 4, 8]
    %kt = transpose(%k) {perm = [0, 2, 3, 1]} : f32[1, 2, 8, 4]
    %vh = transpose(%v) {perm = [0, 2, 1, 3]} : f32[1, 2, 4, 8]
    %s = matmul(%qh, %kt) : f32[1, 2, 4, 4]
    %c = constant() {value = dense<f32[]: [0.35355338]>} : f32[]
    %ss = mul(%s, %c) : f32[1, 2, 4, 4]
    %sm = add(%ss, %mask) : f32[1, 2, 4, 4]
    %p = softmax(%sm) {axis = -1} : f32[1, 2, 4, 4]
    %o = matmul(%p, %vh) : f32[1, 2, 4, 8]
    %out = transpose(%o) {perm = [0, 2, 1, 3]} : f32[1, 4, 2, 8]
    return %out
  }
}";

#[test]
fn bert_attention_becomes_flash_attention() {
    let shapes = [
        vec![1, 4, 2, 8],
        vec![1, 4, 2, 8],
        vec![1, 4, 2, 8],
        vec![1, 1, 4, 4],
    ];
    let (m, report) = optimise_and_compare(BERT_ATTENTION, &shapes);
    assert_eq!(
        count(&m, Op::FlashAttention),
        1,
        "{}",
        llmc_ir::text::print(&m)
    );
    assert_eq!(count(&m, Op::Softmax), 0);
    assert_eq!(count(&m, Op::MatMul), 0);
    assert!(report.stop_reason == "saturated", "{report}");
    let fa = m
        .graph
        .nodes
        .iter()
        .find(|n| n.op == Op::FlashAttention)
        .map(|n| n.attrs.clone());
    let scale = fa.and_then(|a| llmc_ir::AttrsExt::float(&a, "scale"));
    assert!(
        (scale.unwrap_or(0.0) - 0.35355338).abs() < 1e-7,
        "{scale:?}"
    );
    assert!(explain(&m).is_empty(), "{:?}", explain(&m));
}

/// Llama-style (SmolLM2 export): GQA repeat_kv by unsqueeze/expand/reshape, kᵀ by a
/// [0, 1, 3, 2] transpose, scale divides the scores, mask added on the left.
const LLAMA_ATTENTION: &str = "module @att {
  graph @main(%q: f32[1, 4, 3, 8], %k: f32[1, 2, 3, 8], %v: f32[1, 2, 3, 8], %mask: f32[1, 1, 3, 3]) -> (%out: f32[1, 4, 3, 8]) {
    %ku = unsqueeze(%k) {axes = [2]} : f32[1, 2, 1, 3, 8]
    %ke = expand(%ku) {shape = [1, 2, 2, 3, 8]} : f32[1, 2, 2, 3, 8]
    %kr = reshape(%ke) {shape = [1, 4, 3, 8]} : f32[1, 4, 3, 8]
    %vu = unsqueeze(%v) {axes = [2]} : f32[1, 2, 1, 3, 8]
    %ve = expand(%vu) {shape = [1, 2, 2, 3, 8]} : f32[1, 2, 2, 3, 8]
    %vr = reshape(%ve) {shape = [1, 4, 3, 8]} : f32[1, 4, 3, 8]
    %kt = transpose(%kr) {perm = [0, 1, 3, 2]} : f32[1, 4, 8, 3]
    %s = matmul(%q, %kt) : f32[1, 4, 3, 3]
    %c = constant() {value = dense<f32[]: [2.828427]>} : f32[]
    %ss = div(%s, %c) : f32[1, 4, 3, 3]
    %sm = add(%mask, %ss) : f32[1, 4, 3, 3]
    %p = softmax(%sm) {axis = 3} : f32[1, 4, 3, 3]
    %out = matmul(%p, %vr) : f32[1, 4, 3, 8]
    return %out
  }
}";

#[test]
fn llama_gqa_attention_becomes_flash_attention_on_unrepeated_kv() {
    let shapes = [
        vec![1, 4, 3, 8],
        vec![1, 2, 3, 8],
        vec![1, 2, 3, 8],
        vec![1, 1, 3, 3],
    ];
    let (m, _) = optimise_and_compare(LLAMA_ATTENTION, &shapes);
    let text = llmc_ir::text::print(&m);
    assert_eq!(count(&m, Op::FlashAttention), 1, "{text}");
    // k and v go in before repeat_kv: nothing expands them any more.
    assert_eq!(count(&m, Op::Expand), 0, "{text}");
    assert!(
        text.contains("flash_attention(%q, %k, %v, %mask)"),
        "{text}"
    );
}

#[test]
fn softmax_over_the_wrong_axis_is_left_alone_and_explained() {
    let src = LLAMA_ATTENTION.replace("softmax(%sm) {axis = 3}", "softmax(%sm) {axis = 2}");
    let shapes = [
        vec![1, 4, 3, 8],
        vec![1, 2, 3, 8],
        vec![1, 2, 3, 8],
        vec![1, 1, 3, 3],
    ];
    let (m, _) = optimise_and_compare(&src, &shapes);
    assert_eq!(count(&m, Op::FlashAttention), 0);
    let ex = explain(&m);
    assert_eq!(ex.len(), 1, "{ex:?}");
    assert_eq!(ex[0].candidate, "attention");
    assert_eq!(ex[0].node, "%p");
    assert!(ex[0].reason.contains("softmax over axis 2"), "{}", ex[0]);
}

#[test]
fn attention_op_becomes_flash_attention() {
    let src = "module @att {
  graph @main(%q: f32[1, 2, 3, 4], %k: f32[1, 1, 3, 4], %v: f32[1, 1, 3, 4]) -> (%out: f32[1, 2, 3, 4]) {
    %out = attention(%q, %k, %v) {causal = true, scale = 0.5} : f32[1, 2, 3, 4]
    return %out
  }
}";
    let (m, _) = optimise_and_compare(src, &[vec![1, 2, 3, 4], vec![1, 1, 3, 4], vec![1, 1, 3, 4]]);
    let text = llmc_ir::text::print(&m);
    assert!(
        text.contains("%out = flash_attention(%q, %k, %v) {causal = true, scale = 0.5}"),
        "{text}"
    );
}

/// RMSNorm as torch exports HF Llama's: pow, reduce_mean, add eps, sqrt, 1/x by div,
/// mul, then the weight on the left.
const RMS: &str = "module @rms {
  weight @w : f32[8]
  graph @main(%x: f32[2, 3, 8]) -> (%out: f32[2, 3, 8]) {
    %two = constant() {value = dense<f32[]: [2.0]>} : f32[]
    %sq = pow(%x, %two) : f32[2, 3, 8]
    %m = reduce_mean(%sq) {axes = [-1], keepdims = true} : f32[2, 3, 1]
    %eps = constant() {value = dense<f32[]: [1e-5]>} : f32[]
    %v = add(%m, %eps) : f32[2, 3, 1]
    %r = sqrt(%v) : f32[2, 3, 1]
    %one = constant() {value = dense<f32[]: [1.0]>} : f32[]
    %ir = div(%one, %r) : f32[2, 3, 1]
    %n = mul(%x, %ir) : f32[2, 3, 8]
    %out = mul(@w, %n) : f32[2, 3, 8]
    return %out
  }
}";

#[test]
fn rms_norm_from_primitives() {
    let mut m0 = parse(RMS);
    // Give the weight data so the interpreter can run it.
    m0.weights[0].data = f32_weight(8, 99);
    let mut m1 = m0.clone();
    run_with(&mut m1, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let text = llmc_ir::text::print(&m1);
    assert_eq!(m1.graph.nodes.len(), 1, "{text}");
    assert!(
        text.contains("%out = rms_norm(%x, @w) {eps = 1e-5}"),
        "{text}"
    );
    assert_close(
        &eval(&m1, &[vec![2, 3, 8]]),
        &eval(&m0, &[vec![2, 3, 8]]),
        1e-5,
    );
    assert!(explain(&m1).is_empty());
}

#[test]
fn rms_norm_over_the_wrong_axis_is_explained() {
    let src = RMS
        .replace(
            "{axes = [-1], keepdims = true} : f32[2, 3, 1]",
            "{axes = [1], keepdims = true} : f32[2, 1, 8]",
        )
        .replace(
            "%v = add(%m, %eps) : f32[2, 3, 1]",
            "%v = add(%m, %eps) : f32[2, 1, 8]",
        )
        .replace(
            "%r = sqrt(%v) : f32[2, 3, 1]",
            "%r = sqrt(%v) : f32[2, 1, 8]",
        )
        .replace(
            "%ir = div(%one, %r) : f32[2, 3, 1]",
            "%ir = div(%one, %r) : f32[2, 1, 8]",
        );
    let mut m = parse(&src);
    run_with(&mut m, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&m, Op::RmsNorm), 0);
    let ex = explain(&m);
    assert_eq!(ex.len(), 1, "{ex:?}");
    assert_eq!(ex[0].candidate, "rms_norm");
    assert!(
        ex[0].reason.contains("reduce_mean over axes [1]"),
        "{}",
        ex[0]
    );
}

#[test]
fn layer_norm_from_primitives() {
    let src = "module @ln {
  graph @main(%x: f32[2, 3, 8], %w: f32[8], %b: f32[8]) -> (%out: f32[2, 3, 8]) {
    %mu = reduce_mean(%x) {axes = [2], keepdims = true} : f32[2, 3, 1]
    %d = sub(%x, %mu) : f32[2, 3, 8]
    %sq = mul(%d, %d) : f32[2, 3, 8]
    %var = reduce_mean(%sq) {axes = [-1], keepdims = true} : f32[2, 3, 1]
    %eps = constant() {value = dense<f32[]: [1e-12]>} : f32[]
    %ve = add(%eps, %var) : f32[2, 3, 1]
    %s = sqrt(%ve) : f32[2, 3, 1]
    %n = div(%d, %s) : f32[2, 3, 8]
    %y = mul(%n, %w) : f32[2, 3, 8]
    %out = add(%y, %b) : f32[2, 3, 8]
    return %out
  }
}";
    let (m, _) = optimise_and_compare(src, &[vec![2, 3, 8], vec![8], vec![8]]);
    let text = llmc_ir::text::print(&m);
    assert!(
        text.contains("%out = layer_norm(%x, %w, %b) {eps = 1e-12}"),
        "{text}"
    );
    assert_eq!(m.graph.nodes.len(), 1, "{text}");
}

#[test]
fn identities_and_transpose_pairs_disappear() {
    let src = "module @alg {
  graph @main(%x: f32[2, 3, 4]) -> (%out: f32[2, 3, 4]) {
    %one = constant() {value = dense<f32[]: [1.0]>} : f32[]
    %zero = constant() {value = dense<f32[]: [0.0]>} : f32[]
    %a = mul(%x, %one) : f32[2, 3, 4]
    %b = add(%zero, %a) : f32[2, 3, 4]
    %c = cast(%b) {to = f32} : f32[2, 3, 4]
    %t1 = transpose(%c) {perm = [1, 2, 0]} : f32[3, 4, 2]
    %t2 = transpose(%t1) {perm = [2, 0, 1]} : f32[2, 3, 4]
    %r1 = reshape(%t2) {shape = [6, 4]} : f32[6, 4]
    %r2 = reshape(%r1) {shape = [2, 3, 4]} : f32[2, 3, 4]
    %out = exp(%r2) : f32[2, 3, 4]
    return %out
  }
}";
    let (m, _) = optimise_and_compare(src, &[vec![2, 3, 4]]);
    let text = llmc_ir::text::print(&m);
    assert_eq!(m.graph.nodes.len(), 1, "{text}");
    assert!(text.contains("%out = exp(%x)"), "{text}");
}

#[test]
fn a_broadcasting_mul_by_one_is_kept() {
    // x·1 where 1 has a bigger shape changes the type: not an identity.
    let src = "module @alg {
  graph @main(%x: f32[4]) -> (%out: f32[3, 4]) {
    %one = constant() {value = dense<f32[3, 1]: [1.0, 1.0, 1.0]>} : f32[3, 1]
    %out = mul(%x, %one) : f32[3, 4]
    return %out
  }
}";
    let (m, _) = optimise_and_compare(src, &[vec![4]]);
    assert_eq!(count(&m, Op::Mul), 1);
}

#[test]
fn every_layer_of_a_deep_residual_stack_is_fused() {
    // x_{i+1} = x_i + attention(x_i, x_i, x_i): each x is used twice, so a tree-sum cost
    // would double per layer and lose the fusion's saving to rounding deep down.
    let mut m = Module::new("deep");
    let ty = llmc_ir::TensorType::new(llmc_ir::DType::F32, llmc_ir::Shape::of(&[1, 2, 3, 4]));
    let mut x = m.graph.add_input("x", ty);
    let layers = 60;
    for _ in 0..layers {
        let a = m
            .add1(
                Op::Attention,
                &[x, x, x],
                llmc_ir::attrs([("scale", llmc_ir::Attr::Float(0.5))]),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        x = m
            .add1(Op::Add, &[x, a], Default::default())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    m.graph.outputs.push(x);
    let m0 = m.clone();
    run_with(&mut m, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&m, Op::FlashAttention), layers);
    assert_close(
        &eval(&m, &[vec![1, 2, 3, 4]]),
        &eval(&m0, &[vec![1, 2, 3, 4]]),
        1e-9,
    );
}

#[test]
fn matmul_plus_bias_becomes_linear_with_a_transposed_weight() {
    let src = "module @mm {
  weight @w : f32[4, 3]
  weight @b : f32[3]
  graph @main(%x: f32[2, 5, 4]) -> (%out: f32[2, 5, 3]) {
    %y = matmul(%x, @w) : f32[2, 5, 3]
    %out = add(@b, %y) : f32[2, 5, 3]
    return %out
  }
}";
    let mut m0 = parse(src);
    for (i, w) in m0.weights.iter_mut().enumerate() {
        let n: usize = w
            .shape
            .as_consts()
            .map_or(0, |s| s.iter().product::<i64>() as usize);
        w.data = f32_weight(n, 40 + i as u64);
    }
    let mut m1 = m0.clone();
    run_with(&mut m1, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let text = llmc_ir::text::print(&m1);
    assert!(text.contains("%out = linear(%x, @w.T, @b)"), "{text}");
    assert!(text.contains("weight @w.T : f32[3, 4]"), "{text}");
    assert_eq!(m1.graph.nodes.len(), 1, "{text}");
    assert_close(
        &eval(&m1, &[vec![2, 5, 4]]),
        &eval(&m0, &[vec![2, 5, 4]]),
        1e-6,
    );
    assert!(explain(&m1).is_empty());
}

#[test]
fn matmul_by_a_weight_becomes_linear_and_by_an_activation_stays() {
    let src = "module @mm {
  weight @w : f32[4, 3]
  graph @main(%x: f32[2, 5, 4], %v: f32[3, 2]) -> (%y: f32[2, 5, 3], %z: f32[2, 5, 2]) {
    %y = matmul(%x, @w) : f32[2, 5, 3]
    %z = matmul(%y, %v) : f32[2, 5, 2]
    return %y, %z
  }
}";
    let mut m0 = parse(src);
    m0.weights[0].data = f32_weight(12, 7);
    let mut m1 = m0.clone();
    run_with(&mut m1, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let text = llmc_ir::text::print(&m1);
    assert!(text.contains("%y = linear(%x, @w.T)"), "{text}");
    assert!(text.contains("%z = matmul(%y, %v)"), "{text}");
    let shapes = [vec![2, 5, 4], vec![3, 2]];
    assert_close(&eval(&m1, &shapes), &eval(&m0, &shapes), 1e-6);
}

#[test]
fn an_f16_weight_is_transposed_at_compile_time() {
    let src = "module @mm {
  weight @w : f16[4, 3]
  graph @main(%x: f16[5, 4]) -> (%y: f16[5, 3]) {
    %y = matmul(%x, @w) : f16[5, 3]
    return %y
  }
}";
    let mut m0 = parse(src);
    let bytes: Vec<u8> = values(12, 9)
        .iter()
        .flat_map(|&f| half::f16::from_f32(f).to_le_bytes())
        .collect();
    m0.weights[0].data = llmc_ir::WeightData::Owned(std::sync::Arc::new(bytes));
    let mut m1 = m0.clone();
    run_with(&mut m1, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let text = llmc_ir::text::print(&m1);
    assert!(text.contains("%y = linear(%x, @w.T)"), "{text}");
    assert!(text.contains("weight @w.T : f16[3, 4]"), "{text}");
    assert!(!text.contains("transpose"), "{text}");
    let x = Tensor::from_f64(
        llmc_ir::DType::F16,
        vec![5, 4],
        values(20, 3).iter().map(|&v| v as f64).collect(),
    );
    let run = |m: &Module| Interpreter::new(m).run(std::slice::from_ref(&x));
    let (a, b) = (run(&m1), run(&m0));
    assert_close(
        &a.unwrap_or_else(|e| panic!("{e}")),
        &b.unwrap_or_else(|e| panic!("{e}")),
        0.0,
    );
}

#[test]
fn matmul_of_two_activations_plus_bias_is_explained() {
    let src = "module @mm {
  graph @main(%x: f32[2, 4], %w: f32[4, 3], %b: f32[3]) -> (%out: f32[2, 3]) {
    %y = matmul(%x, %w) : f32[2, 3]
    %out = add(%y, %b) : f32[2, 3]
    return %out
  }
}";
    let (m, _) = optimise_and_compare(src, &[vec![2, 4], vec![4, 3], vec![3]]);
    assert_eq!(count(&m, Op::Linear), 0);
    let ex = explain(&m);
    assert_eq!(ex.len(), 1, "{ex:?}");
    assert_eq!(
        (ex[0].candidate, ex[0].node.as_str()),
        ("gemm_epilogue", "%y")
    );
    assert!(ex[0].reason.contains("computed at run time"), "{}", ex[0]);
}

/// Attention with a trilu mask of diagonal `k` over a symbolic sequence.
fn trilu_attention(k: i64) -> String {
    format!(
        r#"module @m {{
  graph @main(%q: f32[1, 2, seq, 4], %k: f32[1, 2, seq, 4], %v: f32[1, 2, seq, 4]) -> (%out: f32[1, 2, seq, 4]) {{
    %min = constant() {{value = dense<f32[]: [-1000000000.0]>}} : f32[]
    %full = expand(%min) {{shape = [seq, seq]}} : f32[seq, seq]
    %mask = trilu(%full) {{k = {k}, upper = true}} : f32[seq, seq]
    %kt = transpose(%k) {{perm = [0, 1, 3, 2]}} : f32[1, 2, 4, seq]
    %s = matmul(%q, %kt) : f32[1, 2, seq, seq]
    %sm = add(%s, %mask) : f32[1, 2, seq, seq]
    %p = softmax(%sm) {{axis = -1}} : f32[1, 2, seq, seq]
    %out = matmul(%p, %v) : f32[1, 2, seq, 4]
    return %out
  }}
}}"#
    )
}

#[test]
fn a_causal_trilu_mask_becomes_the_causal_flag() {
    let shapes = [vec![1, 2, 3, 4], vec![1, 2, 3, 4], vec![1, 2, 3, 4]];
    let (m, _) = optimise_and_compare(&trilu_attention(1), &shapes);
    let fa: Vec<_> = m
        .graph
        .nodes
        .iter()
        .filter(|n| n.op == Op::FlashAttention)
        .collect();
    assert_eq!(fa.len(), 1);
    assert_eq!(fa[0].attrs.get("causal"), Some(&llmc_ir::Attr::Bool(true)));
    assert_eq!(fa[0].inputs.len(), 3, "no mask left");
    assert_eq!(count(&m, Op::Trilu), 0);
    assert!(explain(&m).is_empty());
}

#[test]
fn a_non_causal_trilu_mask_stays_additive_and_is_explained() {
    let shapes = [vec![1, 2, 3, 4], vec![1, 2, 3, 4], vec![1, 2, 3, 4]];
    let (m, _) = optimise_and_compare(&trilu_attention(2), &shapes);
    assert_eq!(count(&m, Op::FlashAttention), 1);
    assert_eq!(count(&m, Op::Trilu), 1);
    let ex = explain(&m);
    assert_eq!(ex.len(), 1, "{ex:?}");
    assert_eq!(ex[0].candidate, "causal_mask");
    assert!(
        ex[0]
            .reason
            .contains("mask is not causal: trilu upper k=2 (causal needs upper k=1)"),
        "{}",
        ex[0]
    );
}

/// x·cos + rotate_half(x)·sin with the halves given by `rot` and inv_freq `inv`.
fn rope_module(rot: &str, inv: &str) -> String {
    format!(
        r#"module @m {{
  graph @main(%x: f32[1, 2, 3, 8], %pos: i64[1, 3]) -> (%out: f32[1, 2, 3, 8]) {{
    %pu = unsqueeze(%pos) {{axes = [2]}} : i64[1, 3, 1]
    %pf = cast(%pu) {{to = f32}} : f32[1, 3, 1]
    %inv = constant() {{value = dense<f32[4]: [{inv}]>}} : f32[4]
    %f = mul(%pf, %inv) : f32[1, 3, 4]
    %emb = concat(%f, %f) {{axis = -1}} : f32[1, 3, 8]
    %cos = cos(%emb) : f32[1, 3, 8]
    %sin = sin(%emb) : f32[1, 3, 8]
    %c4 = unsqueeze(%cos) {{axes = [1]}} : f32[1, 1, 3, 8]
    %s4 = unsqueeze(%sin) {{axes = [1]}} : f32[1, 1, 3, 8]
    %xc = mul(%x, %c4) : f32[1, 2, 3, 8]
    %x2 = slice(%x) {{axes = [3], ends = [8], starts = [4], steps = [1]}} : f32[1, 2, 3, 4]
    %nx2 = neg(%x2) : f32[1, 2, 3, 4]
    %x1 = slice(%x) {{axes = [3], ends = [4], starts = [0], steps = [1]}} : f32[1, 2, 3, 4]
    %rot = concat({rot}) {{axis = -1}} : f32[1, 2, 3, 8]
    %rs = mul(%rot, %s4) : f32[1, 2, 3, 8]
    %out = add(%xc, %rs) : f32[1, 2, 3, 8]
    return %out
  }}
}}"#
    )
}

#[test]
fn rope_is_recognised_and_a_wrong_split_is_explained() {
    let m0 = parse(&rope_module("%nx2, %x1", "1.0, 0.1, 0.01, 0.001"));
    let mut m1 = m0.clone();
    run_with(&mut m1, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&m1, Op::Rope), 1);
    assert!(explain(&m1).is_empty());
    // Positions as the interpreter needs them: compare on explicit inputs.
    let x = Tensor::from_f64(
        llmc_ir::DType::F32,
        vec![1, 2, 3, 8],
        values(48, 7).iter().map(|&v| v as f64).collect(),
    );
    let pos = Tensor::from_i64(llmc_ir::DType::I64, vec![1, 3], vec![0, 5, 17]);
    let a = Interpreter::new(&m0)
        .run(&[x.clone(), pos.clone()])
        .unwrap_or_else(|e| panic!("{e}"));
    let b = Interpreter::new(&m1)
        .run(&[x, pos])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_close(&b, &a, 1e-5);

    let mut m2 = parse(&rope_module("%x1, %nx2", "1.0, 0.1, 0.01, 0.001"));
    run_with(&mut m2, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&m2, Op::Rope), 0);
    let ex = explain(&m2);
    assert_eq!(ex.len(), 1, "{ex:?}");
    assert_eq!(ex[0].candidate, "rope");
    assert!(ex[0].reason.contains("rotary split"), "{}", ex[0]);

    let mut m3 = parse(&rope_module("%nx2, %x1", "1.0, 0.5, 0.2, 0.05"));
    run_with(&mut m3, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let ex = explain(&m3);
    assert_eq!(ex.len(), 1, "{ex:?}");
    assert!(
        ex[0].reason.contains("not the rope frequencies"),
        "{}",
        ex[0]
    );
}

/// q = transpose(reshape(matmul(x, wq))) into attention with scale 0.5; `outs` lists the
/// graph outputs (adding `%qp` gives the projection a second user).
fn q_projection_attention(outs: &str, out_types: &str) -> String {
    let w: Vec<String> = values(64, 3).iter().map(|v| format!("{v:?}")).collect();
    format!(
        r#"module @m {{
  graph @main(%x: f32[1, 3, 8], %k: f32[1, 2, 3, 4], %v: f32[1, 2, 3, 4]) -> ({out_types}) {{
    %wq = constant() {{value = dense<f32[8, 8]: [{}]>}} : f32[8, 8]
    %qp = matmul(%x, %wq) : f32[1, 3, 8]
    %qr = reshape(%qp) {{shape = [1, 3, 2, 4]}} : f32[1, 3, 2, 4]
    %q = transpose(%qr) {{perm = [0, 2, 1, 3]}} : f32[1, 2, 3, 4]
    %kt = transpose(%k) {{perm = [0, 1, 3, 2]}} : f32[1, 2, 4, 3]
    %s = matmul(%q, %kt) : f32[1, 2, 3, 3]
    %c = constant() {{value = dense<f32[]: [0.5]>}} : f32[]
    %ss = mul(%s, %c) : f32[1, 2, 3, 3]
    %p = softmax(%ss) {{axis = -1}} : f32[1, 2, 3, 3]
    %out = matmul(%p, %v) : f32[1, 2, 3, 4]
    return {outs}
  }}
}}"#,
        w.join(", ")
    )
}

#[test]
fn the_attention_scale_moves_into_a_single_use_q_projection() {
    let shapes = [vec![1, 3, 8], vec![1, 2, 3, 4], vec![1, 2, 3, 4]];
    let src = q_projection_attention("%out", "%out: f32[1, 2, 3, 4]");
    let (m, report) = optimise_and_compare(&src, &shapes);
    let fa: Vec<_> = m
        .graph
        .nodes
        .iter()
        .filter(|n| n.op == Op::FlashAttention)
        .collect();
    assert_eq!(fa.len(), 1);
    assert_eq!(
        fa[0].attrs.get("scale"),
        Some(&llmc_ir::Attr::Float(1.0)),
        "{report}"
    );
    assert!(explain(&m).is_empty());

    let src = q_projection_attention("%out, %qp", "%out: f32[1, 2, 3, 4], %qp: f32[1, 3, 8]");
    let (m, _) = optimise_and_compare(&src, &shapes);
    let fa: Vec<_> = m
        .graph
        .nodes
        .iter()
        .filter(|n| n.op == Op::FlashAttention)
        .collect();
    assert_eq!(fa[0].attrs.get("scale"), Some(&llmc_ir::Attr::Float(0.5)));
    let ex = explain(&m);
    assert_eq!(ex.len(), 1, "{ex:?}");
    assert_eq!(ex[0].candidate, "attention_scale");
    assert!(
        ex[0].reason.contains("%qp") && ex[0].reason.contains("2 users"),
        "{}",
        ex[0]
    );
}

/// `layers` pre-norm residual layers as an exporter writes them: RMSNorm from
/// primitives (shared constants, as `cse` leaves them), a matmul by the layer's [8, 8]
/// weight, the residual add; a final norm after the last layer.
fn layered(layers: usize) -> Module {
    let mut s = String::from("module @layers {\n");
    for l in 0..layers {
        s += &format!("  weight @n{l} : f32[8]\n  weight @w{l} : f32[8, 8]\n");
    }
    s += "  weight @nf : f32[8]\n";
    s += "  graph @main(%x: f32[2, 3, 8]) -> (%out: f32[2, 3, 8]) {\n";
    s += "    %two = constant() {value = dense<f32[]: [2.0]>} : f32[]\n";
    s += "    %eps = constant() {value = dense<f32[]: [1e-5]>} : f32[]\n";
    let norm = |s: &mut String, x: &str, w: &str, p: &str| {
        *s += &format!("    %{p}sq = pow(%{x}, %two) : f32[2, 3, 8]\n");
        *s += &format!(
            "    %{p}m = reduce_mean(%{p}sq) {{axes = [-1], keepdims = true}} : f32[2, 3, 1]\n"
        );
        *s += &format!("    %{p}v = add(%{p}m, %eps) : f32[2, 3, 1]\n");
        *s += &format!("    %{p}r = sqrt(%{p}v) : f32[2, 3, 1]\n");
        *s += &format!("    %{p}d = div(%{x}, %{p}r) : f32[2, 3, 8]\n");
        *s += &format!("    %{p}n = mul(@{w}, %{p}d) : f32[2, 3, 8]\n");
    };
    let mut x = "x".to_string();
    for l in 0..layers {
        let p = format!("l{l}");
        norm(&mut s, &x, &format!("n{l}"), &p);
        s += &format!("    %{p}y = matmul(%{p}n, @w{l}) : f32[2, 3, 8]\n");
        s += &format!("    %{p}h = add(%{x}, %{p}y) : f32[2, 3, 8]\n");
        x = format!("{p}h");
    }
    norm(&mut s, &x, "nf", "f");
    s += "    %out = relu(%fn) : f32[2, 3, 8]\n    return %out\n  }\n}\n";
    let mut m = parse(&s);
    for (i, w) in m.weights.iter_mut().enumerate() {
        let n = w
            .shape
            .as_consts()
            .map_or(0, |d| d.iter().product::<i64>() as usize);
        w.data = f32_weight(n, 200 + i as u64);
    }
    m
}

#[test]
fn repeated_layers_are_found_as_one_block() {
    let m = layered(12);
    let found = blocks::find(&m);
    // Layer 0 defines nothing the others lack (the constants come first), so the
    // layers are copies; the final norm is its own block.
    assert!(found.segments.len() >= 12, "{:?}", found.segments.len());
    assert!(found.distinct() <= 3, "{} distinct", found.distinct());
    // Every segment of a layer has the same signature as layer 1's.
    let reps: std::collections::BTreeSet<usize> = found.rep.iter().copied().collect();
    assert_eq!(reps.len(), found.distinct());
}

#[test]
fn block_wise_result_equals_whole_graph_result() {
    let m0 = layered(12);
    let mut whole = m0.clone();
    let opts = Options {
        blocks: false,
        ..Options::default()
    };
    let (_, rw) = run_with(&mut whole, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rw.blocks, 0);
    let mut by_block = m0.clone();
    let (_, rb) = run_with(&mut by_block, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    llmc_ir::verify::verify(&by_block).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(rb.blocks >= 12 && rb.distinct_blocks <= 3, "{rb}");
    // The e-graph of the block-wise run holds only the distinct blocks.
    assert!(
        rb.enodes * 2 < rw.enodes,
        "{} vs {} e-nodes",
        rb.enodes,
        rw.enodes
    );
    for op in [
        Op::RmsNorm,
        Op::MatMul,
        Op::Linear,
        Op::Add,
        Op::Pow,
        Op::Transpose,
    ] {
        assert_eq!(count(&by_block, op), count(&whole, op), "{op}");
    }
    assert_eq!(count(&by_block, Op::RmsNorm), 13);
    assert_eq!(by_block.graph.nodes.len(), whole.graph.nodes.len());
    // Same values, bit for bit: the same ops on the same operands.
    let shapes = [vec![2, 3, 8]];
    let (a, b) = (eval(&whole, &shapes), eval(&by_block, &shapes));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.to_f64(), y.to_f64());
    }
    assert_close(&b, &eval(&m0, &shapes), 1e-5);
}

#[test]
fn a_graph_without_repetition_is_optimised_whole() {
    let m0 = layered(1);
    let mut m1 = m0.clone();
    let (_, r) = run_with(&mut m1, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.blocks, 0, "{r}");
    assert_eq!(count(&m1, Op::RmsNorm), 2);
}

#[test]
fn explain_names_what_blocks_glu_epilogue_and_merge() {
    // The gate's silu is also a graph output: no glu (it would be computed twice).
    let src = "module @glu {
  graph @main(%x: f32[2, 4], %wg: f32[4, 3], %wu: f32[4, 3]) -> (%out: f32[2, 3], %s: f32[2, 3]) {
    %g = matmul(%x, %wg) : f32[2, 3]
    %s = silu(%g) : f32[2, 3]
    %u = matmul(%x, %wu) : f32[2, 3]
    %out = mul(%s, %u) : f32[2, 3]
    return %out, %s
  }
}";
    let (m, _) = optimise_and_compare(src, &[vec![2, 4], vec![4, 3], vec![4, 3]]);
    assert_eq!(count(&m, Op::Glu), 0);
    let ex = explain(&m);
    assert_eq!(ex.len(), 1, "{ex:?}");
    assert_eq!((ex[0].candidate, ex[0].node.as_str()), ("glu", "%out"));
    assert!(ex[0].reason.contains("other users"), "{}", ex[0]);

    // The linear's result is also a graph output: no epilogue. Its sibling linear reads
    // the same input with a weight computed at run time: no merge either.
    let src = "module @epi {
  graph @main(%x: f32[2, 4], %w: f32[3, 4], %w2: f32[3, 4]) -> (%r: f32[2, 3], %h: f32[2, 3], %h2: f32[2, 3]) {
    %h = linear(%x, %w) : f32[2, 3]
    %r = relu(%h) : f32[2, 3]
    %h2 = linear(%x, %w2) : f32[2, 3]
    return %r, %h, %h2
  }
}";
    let (m, _) = optimise_and_compare(src, &[vec![2, 4], vec![3, 4], vec![3, 4]]);
    assert_eq!(count(&m, Op::LinearAct), 0);
    let ex = explain(&m);
    let epi: Vec<_> = ex
        .iter()
        .filter(|e| e.candidate == "gemm_epilogue")
        .collect();
    assert_eq!(epi.len(), 1, "{ex:?}");
    assert_eq!(epi[0].node, "%r");
    assert!(epi[0].reason.contains("other users"), "{}", epi[0]);
    let merge: Vec<_> = ex.iter().filter(|e| e.candidate == "gemm_merge").collect();
    assert_eq!(merge.len(), 1, "{ex:?}");
    assert!(merge[0].reason.contains("not a weight"), "{}", merge[0]);
}

/// Sliding-window, soft-capped attention (Gemma 2/3) with q from a scaled projection:
/// `attention/flash` and `scale-into-q` must keep `window` and `softcap` (the scale
/// moves into q's weight, the cap applies to the same scores).
#[test]
fn window_and_softcap_survive_flash_and_scale_into_q() {
    let src = "module @swa {
  weight @wq : f32[8, 8]
  graph @main(%x: f32[1, 6, 8], %k: f32[1, 1, 6, 4], %v: f32[1, 1, 6, 4]) -> (%out: f32[1, 2, 6, 4]) {
    %q = matmul(%x, @wq) : f32[1, 6, 8]
    %q4 = reshape(%q) {shape = [1, 6, 2, 4]} : f32[1, 6, 2, 4]
    %qh = transpose(%q4) {perm = [0, 2, 1, 3]} : f32[1, 2, 6, 4]
    %out = attention(%qh, %k, %v) {scale = 0.5, causal = true, window = 3, softcap = 0.75} : f32[1, 2, 6, 4]
    return %out
  }
}";
    let mut m1 = parse(src);
    let w = m1.weight_id("wq").unwrap();
    m1.weights[w.0 as usize].data = f32_weight(64, 3);
    let m0 = m1.clone();
    run_with(&mut m1, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let fa: Vec<_> = m1
        .graph
        .nodes
        .iter()
        .filter(|n| n.op == Op::FlashAttention)
        .collect();
    assert_eq!(fa.len(), 1, "{}", llmc_ir::text::print(&m1));
    assert_eq!(fa[0].attrs.get("window"), Some(&llmc_ir::Attr::Int(3)));
    assert_eq!(
        fa[0].attrs.get("softcap"),
        Some(&llmc_ir::Attr::Float(0.75))
    );
    let shapes = [vec![1, 6, 8], vec![1, 1, 6, 4], vec![1, 1, 6, 4]];
    assert_close(&eval(&m1, &shapes), &eval(&m0, &shapes), 1e-5);
}
