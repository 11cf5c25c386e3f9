//! Differential test of the optimizer on random graphs: each graph, built from the ops
//! the rewrite rules look at (elementwise arithmetic with the constants 0 and 1 that
//! identity rules remove, transpose and reshape pairs that layout rules cancel, softmax,
//! matmul with a bias that the epilogue rule fuses into `linear`), must give the same
//! outputs through the reference interpreter before and after the -O3 pipeline
//! (fold, cse, egraph, dce), and the optimized module must verify.
//!
//! Tolerance: 1e-5 relative to the largest output (rewrites reorder f32 roundings, for
//! example `linear`'s bias added inside the product, 1/sqrt(x) as one op).

use llmc_ir::module::attrs;
use llmc_ir::{Attr, DType, Module, Op, Shape, Tensor, TensorType, ValueId};
use llmc_passes::{pipeline_for_level, run_passes, Instrument, PassContext};

/// A small deterministic generator (PCG-style LCG), so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn float(&mut self) -> f32 {
        (self.next() % 2001) as f32 / 1000.0 - 1.0
    }
}

const ROWS: usize = 4;
const COLS: usize = 6;

fn ty() -> TensorType {
    TensorType::new(DType::F32, Shape::of(&[ROWS as i64, COLS as i64]))
}

fn constant(m: &mut Module, v: Vec<f32>, shape: &[usize]) -> ValueId {
    let t = Tensor::f32(shape.to_vec(), v);
    m.add1(Op::Constant, &[], attrs([("value", Attr::Tensor(t))]))
        .expect("constant")
}

/// One random graph over two inputs `[ROWS, COLS]`; every value it makes has that shape.
fn random_module(rng: &mut Rng) -> Module {
    let mut m = Module::new("random");
    let mut vals = vec![m.graph.add_input("x", ty()), m.graph.add_input("y", ty())];
    let steps = 3 + rng.below(10);
    for _ in 0..steps {
        let a = vals[rng.below(vals.len())];
        let b = vals[rng.below(vals.len())];
        let v = match rng.below(11) {
            0 => m.add1(Op::Add, &[a, b], attrs([])),
            1 => m.add1(Op::Mul, &[a, b], attrs([])),
            2 => m.add1(Op::Sub, &[a, b], attrs([])),
            3 => {
                // x * 1 and x + 0: identity rules.
                let one = constant(&mut m, vec![1.0], &[1]);
                let t = m.add1(Op::Mul, &[a, one], attrs([])).expect("mul");
                let zero = constant(&mut m, vec![0.0; COLS], &[COLS]);
                m.add1(Op::Add, &[t, zero], attrs([]))
            }
            4 => {
                // transpose twice: layout cancellation.
                let p = attrs([("perm", Attr::Ints(vec![1, 0]))]);
                let t = m.add1(Op::Transpose, &[a], p.clone()).expect("transpose");
                m.add1(Op::Transpose, &[t], p)
            }
            5 => {
                // reshape to [COLS, ROWS] then back.
                let r = |s: &[i64]| attrs([("shape", Attr::Shape(Shape::of(s)))]);
                let t = m
                    .add1(Op::Reshape, &[a], r(&[COLS as i64, ROWS as i64]))
                    .expect("reshape");
                m.add1(Op::Reshape, &[t], r(&[ROWS as i64, COLS as i64]))
            }
            6 => m.add1(Op::Softmax, &[a], attrs([("axis", Attr::Int(1))])),
            7 => {
                // matmul with a constant square weight plus a bias: the epilogue rule.
                let w: Vec<f32> = (0..COLS * COLS).map(|_| rng.float()).collect();
                let w = constant(&mut m, w, &[COLS, COLS]);
                let bias: Vec<f32> = (0..COLS).map(|_| rng.float()).collect();
                let bias = constant(&mut m, bias, &[COLS]);
                let t = m.add1(Op::MatMul, &[a, w], attrs([])).expect("matmul");
                m.add1(Op::Add, &[t, bias], attrs([]))
            }
            8 => m.add1(Op::Neg, &[a], attrs([])),
            9 => m.add1(Op::Tanh, &[a], attrs([])),
            _ => m.add1(Op::Relu, &[a], attrs([])),
        }
        .expect("a valid random node");
        vals.push(v);
    }
    // Two outputs: the last value and one picked at random (maybe an input).
    let last = *vals.last().expect("values");
    let other = vals[rng.below(vals.len())];
    m.graph.outputs.push(last);
    if other != last {
        m.graph.outputs.push(other);
    }
    m
}

fn inputs(rng: &mut Rng) -> Vec<Tensor> {
    (0..2)
        .map(|_| {
            Tensor::f32(
                vec![ROWS, COLS],
                (0..ROWS * COLS).map(|_| rng.float()).collect(),
            )
        })
        .collect()
}

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
        assert_eq!(got.len(), want.len(), "seed {seed}: output count");
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.shape, w.shape, "seed {seed}: output {k} shape");
            let (g, w) = (g.to_f64(), w.to_f64());
            let scale = w.iter().fold(1.0f64, |a, x| a.max(x.abs()));
            let err = g
                .iter()
                .zip(&w)
                .fold(0.0f64, |a, (p, q)| a.max((p - q).abs()));
            assert!(
                err <= 1e-5 * scale,
                "seed {seed}: output {k} differs by {err:e} (scale {scale})\n-O0:\n{}\n-O3:\n{}",
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
