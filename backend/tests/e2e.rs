//! End to end: a small graph through loop IR, LLVM, the linker and the runtime, its
//! outputs compared with the reference interpreter.

use llmc_backend::run::run_compiled;
use llmc_backend::BuildOptions;
use llmc_ir::interp::Interpreter;
use llmc_ir::{DType, Tensor};

fn close(got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.shape, want.shape);
    for (i, (g, w)) in got.to_f64().iter().zip(want.to_f64()).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn elementwise_and_matmul_graph_runs_compiled() {
    let text = r#"module @e2e {
  graph @main(%a: f32[seq, 4], %b: f32[4, 3], %c: f32[3]) -> (%y: f32[seq, 3], %s: f32[seq, 3]) {
    %m = matmul(%a, %b) : f32[seq, 3]
    %y = add(%m, %c) : f32[seq, 3]
    %s = silu(%y) : f32[seq, 3]
    return %y, %s
  }
}
"#;
    let m = llmc_ir::text::parse(text, "e2e.llmc").expect("parse");
    let mk = |shape: &[usize], k: f64| {
        let n: usize = shape.iter().product();
        Tensor::from_f64(
            DType::F32,
            shape.to_vec(),
            (0..n).map(|i| ((i as f64) * k).sin()).collect(),
        )
    };
    let runs = vec![
        vec![mk(&[5, 4], 0.7), mk(&[4, 3], 1.3), mk(&[3], 0.4)],
        vec![mk(&[1, 4], 0.2), mk(&[4, 3], 1.1), mk(&[3], 0.9)],
    ];
    for opt in [0u8, 3] {
        let mut opts = BuildOptions::default();
        opts.cpu.opt_level = opt;
        let got = run_compiled(&m, &opts, &runs).unwrap_or_else(|e| panic!("-O{opt}: {e}"));
        for (r, inputs) in runs.iter().enumerate() {
            let want = Interpreter::new(&m).run(inputs).expect("reference");
            for (g, w) in got[r].iter().zip(&want) {
                close(g, w, 1e-5);
            }
        }
    }
}
