//! The random-graph differential test through the compiled CPU path: each graph (the
//! generator of `passes/tests/random_graphs.rs`, over the ops the rewrite rules touch)
//! is optimised at -O0 and -O3 by the pass pipeline, each result is compiled by the CPU
//! backend (loop IR, LLVM, link, the runtime) and run, and both must give the reference
//! interpreter's outputs on the unoptimised graph.
//!
//! Fewer graphs than the interpreter's 300 (each costs two builds). Tolerance: 1e-5
//! relative to the largest output (the compiled kernels and the rewrites reorder f32
//! roundings: `linear`'s bias inside the product, softmax's exp and sum).

#[path = "../../passes/tests/common/random_graph.rs"]
mod random_graph;

use llmc_backend::run::run_compiled;
use llmc_backend::BuildOptions;
use llmc_ir::{Module, Tensor};
use llmc_passes::{pipeline_for_level, run_passes, Instrument, PassContext};
use random_graph::{close, inputs, random_module, Rng};

const GRAPHS: u64 = 40;

fn optimise(m0: &Module, level: u8, seed: u64) -> Module {
    let mut m = m0.clone();
    let ctx = PassContext {
        opt_level: level,
        ..Default::default()
    };
    let inst = Instrument {
        verify_each: true,
        ..Default::default()
    };
    run_passes(
        &mut m,
        &pipeline_for_level(level),
        &ctx,
        &inst,
        &mut std::io::sink(),
    )
    .unwrap_or_else(|e| panic!("seed {seed}: -O{level}: {e}"));
    m
}

fn check(seed: u64, what: &str, got: &[Tensor], want: &[Tensor], m: &Module) {
    if let Err(e) = close(got, want, 1e-5) {
        panic!("seed {seed} {what}: {e}\n{}", llmc_ir::text::print(m));
    }
}

#[test]
fn random_graphs_compiled_at_o0_and_o3_match_the_interpreter() {
    let mut rewritten = 0;
    for seed in 0..GRAPHS {
        // The same seeds as the interpreter test's first graphs.
        let mut rng = Rng(seed * 7919 + 1);
        let m0 = random_module(&mut rng);
        let ins = inputs(&mut rng);
        let want = llmc_ir::interp::Interpreter::new(&m0)
            .run(&ins)
            .unwrap_or_else(|e| panic!("seed {seed}: interpreter: {e}"));
        for level in [0u8, 3] {
            let m = optimise(&m0, level, seed);
            if level == 3 && m.graph != m0.graph {
                rewritten += 1;
            }
            let mut opts = BuildOptions::default();
            opts.cpu.opt_level = level;
            let got = run_compiled(&m, &opts, std::slice::from_ref(&ins))
                .unwrap_or_else(|e| {
                    panic!(
                        "seed {seed}: -O{level} build/run: {e}\n{}",
                        llmc_ir::text::print(&m)
                    )
                })
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("seed {seed}: -O{level}: no run"));
            check(seed, &format!("-O{level} compiled"), &got, &want, &m);
        }
    }
    // The -O3 builds must compile rewritten graphs, not the -O0 ones again.
    assert!(
        rewritten * 4 > GRAPHS * 3,
        "only {rewritten} of {GRAPHS} graphs were rewritten"
    );
}
