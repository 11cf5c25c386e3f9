//! The random-graph generator shared by the differential tests (`passes/tests/
//! random_graphs.rs` through the interpreter, `tests/tests/random_compiled.rs` through
//! the compiled CPU path): graphs over the ops the rewrite rules touch, so -O3 has
//! something to rewrite. Included with `#[path]` by both.

#![allow(dead_code)]

use llmc_ir::module::attrs;
use llmc_ir::{Attr, DType, Module, Op, Shape, Tensor, TensorType, ValueId};

/// A small deterministic generator (PCG-style LCG), so a failure names its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn float(&mut self) -> f32 {
        (self.next() % 2001) as f32 / 1000.0 - 1.0
    }
}

pub const ROWS: usize = 4;
pub const COLS: usize = 6;

fn ty() -> TensorType {
    TensorType::new(DType::F32, Shape::of(&[ROWS as i64, COLS as i64]))
}

fn constant(m: &mut Module, v: Vec<f32>, shape: &[usize]) -> ValueId {
    let t = Tensor::f32(shape.to_vec(), v);
    m.add1(Op::Constant, &[], attrs([("value", Attr::Tensor(t))]))
        .expect("constant")
}

/// One random graph over two inputs `[ROWS, COLS]`; every value it makes has that shape.
pub fn random_module(rng: &mut Rng) -> Module {
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

pub fn inputs(rng: &mut Rng) -> Vec<Tensor> {
    (0..2)
        .map(|_| {
            Tensor::f32(
                vec![ROWS, COLS],
                (0..ROWS * COLS).map(|_| rng.float()).collect(),
            )
        })
        .collect()
}

/// Checks `got` against `want` output by output: same count and shapes, and every
/// element within `rtol` of the largest |want| (at least 1); says which output is off.
pub fn close(got: &[Tensor], want: &[Tensor], rtol: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("output count {} vs {}", got.len(), want.len()));
    }
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        if g.shape != w.shape {
            return Err(format!("output {k} shape {:?} vs {:?}", g.shape, w.shape));
        }
        let (g, w) = (g.to_f64(), w.to_f64());
        let scale = w.iter().fold(1.0f64, |a, x| a.max(x.abs()));
        let err = g
            .iter()
            .zip(&w)
            .fold(0.0f64, |a, (p, q)| a.max((p - q).abs()));
        if err > rtol * scale {
            return Err(format!("output {k} differs by {err:e} (scale {scale})"));
        }
    }
    Ok(())
}
