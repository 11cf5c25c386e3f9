//! Unit tests of the pass manager's instrumentation and of folding into weights (which
//! file tests cannot reach: modules read from text carry no weight data).

use crate::{run_passes, Changed, Instrument, Pass, PassContext, PassError, PASSES};
use llmc_ir::interp::Interpreter;
use llmc_ir::{attrs, Attr, DType, Module, Op, Shape, Tensor, TensorType, WeightData};
use std::sync::Arc;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// z = x @ transpose(w) + neg(neg(c)): `transpose(@w)` folds into a new weight, the
/// constant chain into a constant.
fn sample() -> Module {
    let mut m = Module::new("t");
    let w = m.add_weight(
        "w",
        DType::F32,
        Shape::of(&[2, 3]),
        WeightData::Owned(Arc::new(f32_bytes(&[1.0, 2.0, 3.0, -1.0, 0.5, 4.0]))),
    );
    let x = m
        .graph
        .add_input("x", TensorType::new(DType::F32, Shape::of(&[1, 3])));
    let c = Tensor::from_f64(DType::F32, vec![2], vec![0.5, -1.0]);
    let c = m
        .add1(Op::Constant, &[], attrs([("value", Attr::Tensor(c))]))
        .expect("constant");
    let n1 = m.add1(Op::Neg, &[c], attrs([])).expect("neg");
    let n2 = m.add1(Op::Neg, &[n1], attrs([])).expect("neg");
    let wt = m
        .add1(
            Op::Transpose,
            &[w],
            attrs([("perm", Attr::Ints(vec![1, 0]))]),
        )
        .expect("transpose");
    let y = m.add1(Op::MatMul, &[x, wt], attrs([])).expect("matmul");
    let z = m.add1(Op::Add, &[y, n2], attrs([])).expect("add");
    m.graph.values[z.0 as usize].name = "z".into();
    m.graph.outputs.push(z);
    m
}

/// The classic passes (the e-graph pass has its own tests in `egraph/`, elementwise
/// fusion in `fuse_elementwise`, epilogue fusion in `fuse_epilogue`).
fn all() -> Vec<&'static Pass> {
    PASSES
        .iter()
        // The rewrites under test here; quantize, act-quant and serving change what
        // the graph takes or how it is lowered and are tested on their own.
        .filter(|p| {
            !matches!(
                p.name,
                "egraph"
                    | "fuse-elementwise"
                    | "fuse-epilogue"
                    | "merge"
                    | "prune"
                    | "quantize"
                    | "act-quant"
                    | "serving"
            )
        })
        .collect()
}

#[test]
fn weights_fold_into_weights_and_outputs_agree() {
    let m = sample();
    llmc_ir::verify::verify(&m).expect("sample verifies");
    let mut opt = m.clone();
    let inst = Instrument {
        verify_each: true,
        ..Default::default()
    };
    let report = run_passes(
        &mut opt,
        &all(),
        &PassContext::default(),
        &inst,
        &mut Vec::new(),
    )
    .expect("pipeline");
    let text = llmc_ir::text::print(&opt);
    assert!(text.contains("weight @fold.5 : f32[3, 2]"), "{text}");
    assert!(!text.contains("transpose("), "{text}");
    assert!(!text.contains("neg("), "{text}");
    assert_eq!(report.rows.len(), 3);
    assert_eq!(report.rows[0].nodes_before, 6);
    assert_eq!(report.rows[2].nodes_after, 3);
    let x = Tensor::from_f64(DType::F32, vec![1, 3], vec![2.0, -3.0, 1.0]);
    let want = Interpreter::new(&m)
        .run(std::slice::from_ref(&x))
        .expect("run");
    let got = Interpreter::new(&opt).run(&[x]).expect("run");
    // Rows of w dotted with x: [2 - 6 + 3, -2 - 1.5 + 4], plus c.
    assert_eq!(want[0].to_f64(), vec![-0.5, -0.5]);
    assert_eq!(got, want);
}

#[test]
fn dumps_banners_and_dump_dir_files_parse_back() {
    let dir = std::env::temp_dir().join(format!("llmc-passes-dump-{}", std::process::id()));
    let mut m = sample();
    let inst = Instrument {
        print_before: vec!["cse".into()],
        print_after: vec!["fold".into()],
        print_after_change: true,
        dump_dir: Some(dir.clone()),
        ..Default::default()
    };
    let mut out = Vec::new();
    run_passes(&mut m, &all(), &PassContext::default(), &inst, &mut out).expect("run");
    let out = String::from_utf8(out).expect("utf-8");
    let banners: Vec<&str> = out.lines().filter(|l| l.starts_with("// -----")).collect();
    // fold (asked and changed), before cse, cse (changed: the folded neg(neg(c)) is a
    // constant equal to c), dce (changed).
    assert_eq!(
        banners,
        [
            "// ----- IR dump after fold ----- //",
            "// ----- IR dump before cse ----- //",
            "// ----- IR dump after cse ----- //",
            "// ----- IR dump after dce ----- //",
        ]
    );
    for (i, p) in ["input", "fold", "cse", "dce"].iter().enumerate() {
        let f = dir.join(format!("{i:02}-{p}.llmc"));
        let text = std::fs::read_to_string(&f).expect("dump written");
        let back = llmc_ir::text::parse(&text, "dump").expect("dump parses");
        assert_eq!(llmc_ir::text::print(&back), text);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn broken(m: &mut Module, _: &PassContext) -> Result<Changed, PassError> {
    // Points the graph output at a value that does not exist.
    m.graph.outputs[0] = llmc_ir::ValueId(9999);
    Ok(Changed::Yes)
}

#[test]
fn verify_each_names_the_pass_that_broke_the_module() {
    let bad = Pass {
        name: "broken",
        summary: "test",
        run: broken,
    };
    let mut m = sample();
    let inst = Instrument {
        verify_each: true,
        ..Default::default()
    };
    let e = run_passes(
        &mut m,
        &[&bad],
        &PassContext::default(),
        &inst,
        &mut Vec::new(),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        e.starts_with("the module does not verify after pass `broken`"),
        "{e}"
    );
}

#[test]
fn dump_flags_must_name_known_passes() {
    let inst = Instrument {
        print_after: vec!["nope".into()],
        ..Default::default()
    };
    let e = run_passes(
        &mut sample(),
        &all(),
        &PassContext::default(),
        &inst,
        &mut Vec::new(),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert_eq!(
        e,
        "unknown pass `nope` in --print-ir-after; known passes: prune, quantize, fold, cse, dce, egraph, merge, fuse-epilogue, fuse-elementwise, act-quant, serving"
    );
}

#[test]
fn time_report_lists_every_pass() {
    let mut m = sample();
    let r = run_passes(
        &mut m,
        &all(),
        &PassContext::default(),
        &Instrument::default(),
        &mut Vec::new(),
    )
    .expect("run");
    let table = r.to_string();
    for p in ["fold", "cse", "dce", "total"] {
        assert!(table.contains(p), "{table}");
    }
    assert_eq!(r.pass_names(), "fold,cse,dce");
}
