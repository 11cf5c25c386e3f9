//! The e-graph pass on real models: op counts after the rewrite (every attention block
//! as flash_attention, every norm fused), nothing left for `explain`, compile time, and
//! the same outputs through the interpreter before and after. Models come from
//! `LLMC_MODELS` (GGUF/HF) and `LLMC_ONNX_EXPORTS` (torch exports of the same models);
//! a missing model skips its test with a message.

use llmc_ir::{Module, Op};
use llmc_passes::egraph::{self, explain, Options};
use std::path::PathBuf;
use std::time::Instant;

fn models() -> PathBuf {
    std::env::var_os("LLMC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models"))
}

fn exports() -> PathBuf {
    std::env::var_os("LLMC_ONNX_EXPORTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/onnx-exports"))
}

fn load(path: PathBuf) -> Option<Module> {
    if !path.exists() {
        eprintln!(
            "skipped: {} not found (run scripts/fetch-models; ONNX exports: scripts/onnx-exports)",
            path.display()
        );
        return None;
    }
    Some(llmc_frontend::load(&path).unwrap_or_else(|e| panic!("{e}")))
}

fn count(m: &Module, op: Op) -> usize {
    m.graph.nodes.iter().filter(|n| n.op == op).count()
}

/// flash_attention nodes whose scale was folded into the q projection (scale 1).
fn unit_scale(m: &Module) -> usize {
    m.graph
        .nodes
        .iter()
        .filter(|n| {
            n.op == Op::FlashAttention
                && matches!(n.attrs.get("scale"), Some(llmc_ir::Attr::Float(s)) if *s == 1.0)
        })
        .count()
}

/// flash_attention nodes with `causal = true`.
fn causal(m: &Module) -> usize {
    m.graph
        .nodes
        .iter()
        .filter(|n| {
            n.op == Op::FlashAttention
                && matches!(n.attrs.get("causal"), Some(llmc_ir::Attr::Bool(true)))
        })
        .count()
}

/// Optimises, prints the report and counts, checks the module still verifies.
fn optimise(name: &str, m: &mut Module) {
    let t = Instant::now();
    let (_, report) =
        egraph::run_with(m, &Options::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("{name}: {report}");
    eprintln!(
        "{name}: {:.2} s; flash_attention {}, attention {}, rms_norm {}, layer_norm {}, softmax {}",
        t.elapsed().as_secs_f64(),
        count(m, Op::FlashAttention),
        count(m, Op::Attention),
        count(m, Op::RmsNorm),
        count(m, Op::LayerNorm),
        count(m, Op::Softmax)
    );
    llmc_ir::verify::verify(m).unwrap_or_else(|e| panic!("{name}: {e:?}"));
}

fn explained(name: &str, m: &Module, kinds: &[&str]) -> usize {
    let ex = explain(m);
    for e in &ex {
        eprintln!("{name}: {e}");
    }
    ex.iter().filter(|e| kinds.contains(&e.candidate)).count()
}

#[test]
fn smollm2_onnx_export() {
    let Some(mut m) = load(exports().join("smollm2-prefill/model.onnx")) else {
        return;
    };
    optimise("smollm2 onnx", &mut m);
    assert_eq!(count(&m, Op::FlashAttention), 30);
    assert_eq!(causal(&m), 30);
    assert_eq!(count(&m, Op::Rope), 60);
    assert_eq!(count(&m, Op::RmsNorm), 61);
    assert_eq!(count(&m, Op::Softmax), 0);
    assert_eq!(
        explained(
            "smollm2 onnx",
            &m,
            &["attention", "rms_norm", "layer_norm", "gemm_epilogue"]
        ),
        0
    );
}

#[test]
fn minilm_onnx_export() {
    let Some(mut m) = load(exports().join("minilm/model.onnx")) else {
        return;
    };
    optimise("minilm onnx", &mut m);
    assert_eq!(count(&m, Op::FlashAttention), 6);
    assert_eq!(count(&m, Op::LayerNorm), 13);
    // 36 GEMMs: the 6 FFN up projections carry their GELU as an epilogue.
    assert_eq!(count(&m, Op::Linear), 30);
    assert_eq!(count(&m, Op::LinearAct), 6);
    assert!(m
        .graph
        .nodes
        .iter()
        .all(|n| n.op != Op::Erf && n.op != Op::Gelu));
    assert_eq!(
        explained(
            "minilm onnx",
            &m,
            &["attention", "rms_norm", "layer_norm", "gemm_epilogue"]
        ),
        0
    );
}

#[test]
fn smollm2_gguf() {
    let Some(mut m) = load(models().join("SmolLM2-135M-Instruct.Q4_1.gguf")) else {
        return;
    };
    optimise("smollm2 gguf", &mut m);
    assert_eq!(count(&m, Op::FlashAttention), 30);
    assert_eq!(count(&m, Op::Attention), 0);
    assert_eq!(count(&m, Op::RmsNorm), 61);
    // Every MLP's silu(gate) · up is one glu; the merge pass then gives each layer one
    // Q/K/V GEMM (split in three) and one gate/up GEMM read by a one-operand glu.
    assert_eq!(count(&m, Op::Glu), 30);
    assert_eq!(count(&m, Op::Silu), 0);
    let merged = merge_and_check("smollm2 gguf", &mut m);
    assert_eq!(merged, llmc_passes::merge::Merged { split: 30, glu: 30 });
    let splits: Vec<_> = m.graph.nodes.iter().filter(|n| n.op == Op::Split).collect();
    assert!(splits.iter().all(|n| n.outputs.len() == 3), "Q/K/V splits");
    assert!(m
        .graph
        .nodes
        .iter()
        .filter(|n| n.op == Op::Glu)
        .all(|n| n.inputs.len() == 1));
    // 7 GEMMs per layer became 4 (qkv, o, gate/up, down), plus the LM head.
    assert_eq!(count(&m, Op::Linear), 30 * 4 + 1);
}

/// Runs the merge pass (then DCE), checks the module verifies and that
/// `--explain-fusion` has nothing left to say about GEMM merges, epilogues or GLUs.
fn merge_and_check(name: &str, m: &mut Module) -> llmc_passes::merge::Merged {
    let t = Instant::now();
    let merged = llmc_passes::merge::merge(m).unwrap_or_else(|e| panic!("{name}: {e}"));
    llmc_passes::dce::run(m, &llmc_passes::PassContext::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!(
        "{name}: merge {merged:?} in {:.3} s",
        t.elapsed().as_secs_f64()
    );
    llmc_ir::verify::verify(m).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    assert_eq!(
        explained(name, m, &["gemm_epilogue", "glu", "gemm_merge"]),
        0,
        "{name}"
    );
    merged
}

#[test]
fn minilm_merges_qkv() {
    let Some(mut m) = load(exports().join("minilm/model.onnx")) else {
        return;
    };
    optimise("minilm onnx", &mut m);
    let merged = merge_and_check("minilm onnx", &mut m);
    assert_eq!(merged, llmc_passes::merge::Merged { split: 6, glu: 0 });
    assert_eq!(count(&m, Op::LinearAct), 6);
}

#[test]
fn smollm2_hf() {
    let Some(mut m) = load(models().join("SmolLM2-135M-Instruct-hf")) else {
        return;
    };
    optimise("smollm2 hf", &mut m);
    assert_eq!(count(&m, Op::FlashAttention), 30);
    assert_eq!(count(&m, Op::RmsNorm), 61);
    assert_eq!(count(&m, Op::Glu), 30);
    let merged = merge_and_check("smollm2 hf", &mut m);
    assert_eq!(merged, llmc_passes::merge::Merged { split: 30, glu: 30 });
}

/// Largest |a - b| over two output lists, and the largest |b|.
fn max_diff(a: &[llmc_ir::Tensor], b: &[llmc_ir::Tensor]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let (mut d, mut mag) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.shape, y.shape);
        for (p, q) in x.to_f64().iter().zip(y.to_f64()) {
            d = d.max((p - q).abs());
            mag = mag.max(q.abs());
        }
    }
    (d, mag)
}

/// The optimised module gives the same logits as the original through the reference
/// interpreter: a prefill of 5 tokens, then one decode step through the KV cache.
/// Tolerance: 1e-6 relative to the largest logit (the interpreter rounds each node's
/// result to its f32 dtype; a fused op rounds fewer intermediates).
#[test]
fn smollm2_gguf_logits_match_after_optimisation() {
    let Some(m0) = load(models().join("SmolLM2-135M-Instruct.Q4_1.gguf")) else {
        return;
    };
    let mut m1 = m0.clone();
    egraph::run_with(&mut m1, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&m1, Op::FlashAttention), 30);
    llmc_passes::merge::merge(&mut m1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&m1, Op::Split), 30);
    let ids = [1i64, 9690, 314, 253, 1127];
    let steps: Vec<Vec<llmc_ir::Tensor>> = vec![
        vec![
            llmc_ir::Tensor::from_i64(llmc_ir::DType::I64, vec![1, 5], ids.to_vec()),
            llmc_ir::Tensor::from_i64(llmc_ir::DType::I64, vec![1, 5], (0..5).collect()),
        ],
        vec![
            llmc_ir::Tensor::from_i64(llmc_ir::DType::I64, vec![1, 1], vec![28]),
            llmc_ir::Tensor::from_i64(llmc_ir::DType::I64, vec![1, 1], vec![5]),
        ],
    ];
    let mut i0 = llmc_ir::interp::Interpreter::new(&m0);
    let mut i1 = llmc_ir::interp::Interpreter::new(&m1);
    for (k, ins) in steps.iter().enumerate() {
        let a = i0.run(ins).unwrap_or_else(|e| panic!("{e}"));
        let b = i1.run(ins).unwrap_or_else(|e| panic!("{e}"));
        let (d, mag) = max_diff(&b, &a);
        eprintln!("smollm2 gguf step {k}: max |logit diff| {d:e}, max |logit| {mag}");
        assert!(d <= 1e-6 * mag.max(1.0), "step {k}: {d} vs {mag}");
    }
}

/// The same for the ONNX exports of SmolLM2 (8 tokens, all attended, then tokens 2 and 7
/// padded: the causal flag plus what is left of the mask must give the same logits;
/// the third input is `position_ids`) and MiniLM (the third input is `token_type_ids`).
#[test]
fn onnx_exports_match_after_optimisation() {
    for (file, attended, third) in [
        (
            "smollm2-prefill/model.onnx",
            vec![1; 8],
            (0..8).collect::<Vec<i64>>(),
        ),
        (
            "smollm2-prefill/model.onnx",
            vec![1, 1, 0, 1, 1, 1, 1, 0],
            (0..8).collect(),
        ),
        ("minilm/model.onnx", vec![1; 8], vec![0; 8]),
    ] {
        let Some(m0) = load(exports().join(file)) else {
            continue;
        };
        let mut m1 = m0.clone();
        egraph::run_with(&mut m1, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
        llmc_passes::merge::merge(&mut m1).unwrap_or_else(|e| panic!("{e}"));
        let ids = vec![1i64, 9690, 314, 253, 1127, 28, 300, 7];
        let mut ins = vec![
            llmc_ir::Tensor::from_i64(llmc_ir::DType::I64, vec![1, 8], ids),
            llmc_ir::Tensor::from_i64(llmc_ir::DType::I64, vec![1, 8], attended),
        ];
        ins.push(llmc_ir::Tensor::from_i64(
            llmc_ir::DType::I64,
            vec![1, 8],
            third,
        ));
        let a = llmc_ir::interp::Interpreter::new(&m0)
            .run(&ins)
            .unwrap_or_else(|e| panic!("{e}"));
        let b = llmc_ir::interp::Interpreter::new(&m1)
            .run(&ins)
            .unwrap_or_else(|e| panic!("{e}"));
        let (d, mag) = max_diff(&b, &a);
        eprintln!("{file}: max |diff| {d:e}, max |out| {mag}");
        assert!(d <= 1e-6 * mag.max(1.0), "{file}: {d} vs {mag}");
    }
}

/// The exports of the ONNX conformance work (`<dir>/<case>/model.onnx`, dynamic batch
/// and sequence; `smollm2-past` reads a KV cache given as inputs), found through
/// `$LLMC_ONNX_EXPORTS` (default `.cache/onnx-exports`, written by `scripts/onnx-exports`).
#[test]
fn onnx_case_exports() {
    let dir = exports();
    if !dir.is_dir() {
        eprintln!(
            "skipped: no ONNX exports at {} (run scripts/onnx-exports)",
            dir.display()
        );
        return;
    }
    for (case, flash, causals, ropes, norms, norm_op) in [
        ("smollm2-prefill", 30, 30, 60, 61, Op::RmsNorm),
        ("smollm2-past", 30, 30, 60, 61, Op::RmsNorm),
        ("minilm", 6, 0, 0, 13, Op::LayerNorm),
    ] {
        let Some(mut m) = load(dir.join(case).join("model.onnx")) else {
            continue;
        };
        optimise(case, &mut m);
        assert_eq!(count(&m, Op::FlashAttention), flash, "{case}");
        assert_eq!(causal(&m), causals, "{case}: causal flash_attention");
        assert_eq!(count(&m, Op::Rope), ropes, "{case}: rope");
        assert_eq!(unit_scale(&m), flash, "{case}: scale folded into q");
        assert_eq!(count(&m, norm_op), norms, "{case}");
        assert_eq!(count(&m, Op::Softmax), 0, "{case}");
        assert_eq!(explain(&m).len(), 0, "{case}: {:?}", explain(&m));
    }
}

fn histogram(m: &Module) -> std::collections::BTreeMap<&'static str, usize> {
    let mut h = std::collections::BTreeMap::new();
    for n in &m.graph.nodes {
        *h.entry(n.op.name()).or_default() += 1;
    }
    h
}

/// Repeated-block detection: on every real model the block-wise run (one e-graph per
/// distinct block) gives the whole-graph run's program: the same ops, node for node
/// (the order of independent nodes may differ), and the same outputs through the
/// interpreter, bit for bit on the GGUF prefill. It also does less work: fewer e-nodes.
#[test]
fn block_wise_run_equals_whole_graph_run() {
    let whole = Options {
        blocks: false,
        ..Options::default()
    };
    for (name, path) in [
        (
            "smollm2 gguf",
            models().join("SmolLM2-135M-Instruct.Q4_1.gguf"),
        ),
        ("smollm2 hf", models().join("SmolLM2-135M-Instruct-hf")),
        ("smollm2 onnx", exports().join("smollm2-prefill/model.onnx")),
        (
            "smollm2-past onnx",
            exports().join("smollm2-past/model.onnx"),
        ),
        ("minilm onnx", exports().join("minilm/model.onnx")),
    ] {
        let Some(m0) = load(path) else {
            continue;
        };
        let (mut a, mut b) = (m0.clone(), m0.clone());
        let (_, ra) = egraph::run_with(&mut a, &whole).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (_, rb) =
            egraph::run_with(&mut b, &Options::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{name}: whole: {ra}");
        eprintln!("{name}: blocks: {rb}");
        llmc_ir::verify::verify(&b).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(
            rb.blocks > 0 && rb.distinct_blocks < rb.blocks,
            "{name}: {rb}"
        );
        assert!(
            rb.enodes < ra.enodes,
            "{name}: {} vs {} e-nodes",
            rb.enodes,
            ra.enodes
        );
        // The ops of the two programs, after dropping what neither reads.
        let cx = llmc_passes::PassContext::default();
        for m in [&mut a, &mut b] {
            llmc_passes::dce::run(m, &cx).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(histogram(&b), histogram(&a), "{name}");
    }
    // Outputs: the GGUF model, a 5-token prefill through the interpreter.
    let Some(m0) = load(models().join("SmolLM2-135M-Instruct.Q4_1.gguf")) else {
        return;
    };
    let (mut a, mut b) = (m0.clone(), m0);
    egraph::run_with(&mut a, &whole).unwrap_or_else(|e| panic!("{e}"));
    egraph::run_with(&mut b, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let ins = vec![
        llmc_ir::Tensor::from_i64(
            llmc_ir::DType::I64,
            vec![1, 5],
            vec![1, 9690, 314, 253, 1127],
        ),
        llmc_ir::Tensor::from_i64(llmc_ir::DType::I64, vec![1, 5], (0..5).collect()),
    ];
    let oa = llmc_ir::interp::Interpreter::new(&a)
        .run(&ins)
        .unwrap_or_else(|e| panic!("{e}"));
    let ob = llmc_ir::interp::Interpreter::new(&b)
        .run(&ins)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(oa, ob);
}
