//! Differential test of the optimizer on random graphs: each graph, built from the ops
//! the rewrite rules look at (elementwise arithmetic with the constants 0 and 1 that
//! identity rules remove, transpose and reshape pairs that layout rules cancel, softmax,
//! matmul with a bias that the epilogue rule fuses into `linear`), must give the same
//! outputs through the reference interpreter before and after the -O3 pipeline
//! (fold, cse, egraph, fuse-elementwise, dce), and the optimized module must verify.
//!
//! Tolerance: 1e-5 relative to the largest output (rewrites reorder f32 roundings, for
//! example `linear`'s bias added inside the product, 1/sqrt(x) as one op).

#[path = "common/random_graph.rs"]
mod random_graph;

use llmc_ir::Op;
use llmc_passes::{pipeline_for_level, run_passes, Instrument, PassContext};
use random_graph::{close, inputs, random_module, Rng};

#[test]
fn random_graphs_give_the_same_outputs_at_o0_and_o3() {
    let (mut changed, mut linear, mut transposes) = (0, 0, 0);
    for seed in 0..300u64 {
        let mut rng = Rng(seed * 7919 + 1);
        let m0 = random_module(&mut rng);
        let mut m3 = m0.clone();
        let inst = Instrument {
            verify_each: true,
            ..Default::default()
        };
        let ctx = PassContext {
            opt_level: 3,
            ..Default::default()
        };
        let report = run_passes(
            &mut m3,
            &pipeline_for_level(3),
            &ctx,
            &inst,
            &mut std::io::sink(),
        )
        .unwrap_or_else(|e| {
            panic!(
                "seed {seed}: -O3 failed: {e}\n{}",
                llmc_ir::text::print(&m0)
            )
        });
        if report.rows.iter().any(|r| r.changed) {
            changed += 1;
        }
        let count = |op: Op| m3.graph.nodes.iter().filter(|n| n.op == op).count();
        linear += count(Op::Linear);
        transposes += count(Op::Transpose);
        let ins = inputs(&mut rng);
        let want = llmc_ir::interp::Interpreter::new(&m0)
            .run(&ins)
            .unwrap_or_else(|e| panic!("seed {seed}: -O0 run: {e}"));
        let got = llmc_ir::interp::Interpreter::new(&m3)
            .run(&ins)
            .unwrap_or_else(|e| panic!("seed {seed}: -O3 run: {e}"));
        if let Err(e) = close(&got, &want, 1e-5) {
            panic!(
                "seed {seed}: {e}\n-O0:\n{}\n-O3:\n{}",
                llmc_ir::text::print(&m0),
                llmc_ir::text::print(&m3)
            );
        }
    }
    // The generator must exercise the rewrites, not only pass through them.
    assert!(changed > 250, "only {changed} of 300 graphs were rewritten");
    // matmul + constant bias became `linear`; every transpose pair cancelled.
    assert!(linear > 0, "no matmul + bias was fused into linear");
    assert_eq!(transposes, 0, "transpose pairs left after -O3");
}
