//! The pass on a hand-built gated MLP, run through the reference interpreter: shapes
//! shrink and the module stays valid; with calibration statistics the refit carries
//! what removed channels contributed into kept ones that correlate with them; MLPs
//! whose hidden values are read elsewhere are left alone.

use super::*;
use crate::quant::gptq::tests::Lcg;
use crate::quant::gptq::Hessian;
use llmc_ir::interp::Interpreter;
use llmc_ir::{attrs, DType, Tensor, TensorType};
use std::collections::HashMap;

const H: usize = 64;
const F: usize = 128;
const ROWS: usize = 256;

/// Uniform f32 in [-1, 1) from the GPTQ tests' generator.
struct Rng(Lcg);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0.next() as f32
    }
}

fn weight(m: &mut Module, name: &str, shape: &[i64], x: &[f32]) -> ValueId {
    m.add_weight(
        name,
        DType::F32,
        Shape(shape.iter().map(|&d| Dim::c(d)).collect()),
        WeightData::Owned(Arc::new(x.iter().flat_map(|v| v.to_le_bytes()).collect())),
    )
}

/// Gate/up rows F-32.. duplicate rows 0..32 (those hidden channels are copies), and
/// the down columns of the copies are small: pruning 25% removes exactly the copies.
fn weights(rng: &mut Rng) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut wg: Vec<f32> = (0..F * H).map(|_| rng.next() * 0.2).collect();
    let mut wu: Vec<f32> = (0..F * H).map(|_| rng.next() * 0.2).collect();
    for j in 0..32 {
        for c in 0..H {
            wg[(F - 32 + j) * H + c] = wg[j * H + c];
            wu[(F - 32 + j) * H + c] = wu[j * H + c];
        }
    }
    let mut wd: Vec<f32> = (0..H * F).map(|_| rng.next() * 0.2).collect();
    for r in 0..H {
        for j in F - 32..F {
            wd[r * F + j] *= 0.25;
        }
    }
    (wg, wu, wd)
}

fn mlp(wg: &[f32], wu: &[f32], wd: &[f32], hidden_is_output: bool) -> Module {
    let mut m = Module::new("mlp");
    let x = m.graph.add_input(
        "x",
        TensorType::new(
            DType::F32,
            Shape(vec![Dim::c(ROWS as i64), Dim::c(H as i64)]),
        ),
    );
    let g = weight(&mut m, "wg", &[F as i64, H as i64], wg);
    let u = weight(&mut m, "wu", &[F as i64, H as i64], wu);
    let d = weight(&mut m, "wd", &[H as i64, F as i64], wd);
    let gl = m.add1(Op::Linear, &[x, g], attrs([])).unwrap();
    let a = m.add1(Op::Silu, &[gl], attrs([])).unwrap();
    let ul = m.add1(Op::Linear, &[x, u], attrs([])).unwrap();
    let h = m.add1(Op::Mul, &[a, ul], attrs([])).unwrap();
    let y = m.add1(Op::Linear, &[h, d], attrs([])).unwrap();
    m.graph.outputs = vec![y];
    if hidden_is_output {
        m.graph.outputs.push(h);
    }
    m
}

fn input(rng: &mut Rng) -> Tensor {
    Tensor::f32(vec![ROWS, H], (0..ROWS * H).map(|_| rng.next()).collect())
}

fn run1(m: &Module, x: &Tensor) -> Vec<f64> {
    Interpreter::new(m).run(std::slice::from_ref(x)).unwrap()[0].to_f64()
}

/// `XᵀX` of the down projection's input on `x`, from the unpruned module.
fn calibration(wg: &[f32], wu: &[f32], wd: &[f32], x: &Tensor) -> Calibration {
    let m = mlp(wg, wu, wd, true);
    let h = Interpreter::new(&m).run(std::slice::from_ref(x)).unwrap()[1].to_f64();
    let mut hs = vec![0.0; F * F];
    for r in 0..ROWS {
        let row = &h[r * F..(r + 1) * F];
        for i in 0..F {
            for j in 0..F {
                hs[i * F + j] += row[i] * row[j];
            }
        }
    }
    let hess = Arc::new(Hessian {
        k: F,
        h: hs,
        rows: ROWS,
    });
    Calibration::new(
        HashMap::from([("wd".to_string(), hess)]),
        ROWS,
        "test".into(),
    )
}

fn prune(m: &mut Module, cal: Option<Arc<Calibration>>) {
    let ctx = PassContext {
        prune: Some(PruneSpec::parse("ffn=25%").unwrap()),
        calibration: cal,
        ..Default::default()
    };
    assert_eq!(run(m, &ctx).unwrap(), Changed::Yes);
    llmc_ir::verify::verify(m).unwrap();
}

fn rel_error(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = a.iter().map(|x| x * x).sum();
    (num / den).sqrt()
}

#[test]
fn spec_parses_percentages_and_fractions() {
    assert_eq!(PruneSpec::parse("ffn=25%").unwrap().ffn, 0.25);
    assert_eq!(PruneSpec::parse("ffn=0.5").unwrap().ffn, 0.5);
    assert!(PruneSpec::parse("ffn=100%")
        .unwrap_err()
        .contains("[0%, 100%)"));
    assert!(PruneSpec::parse("heads=10%")
        .unwrap_err()
        .contains("unknown"));
    assert!(PruneSpec::parse("ffn=lots")
        .unwrap_err()
        .contains("not a percentage"));
}

#[test]
fn pruning_shrinks_every_shape_of_the_mlp() {
    let mut rng = Rng(Lcg(5));
    let (wg, wu, wd) = weights(&mut rng);
    let mut m = mlp(&wg, &wu, &wd, false);
    prune(&mut m, None);
    let shape = |n: &str| m.weight(m.weight_id(n).unwrap()).shape.as_consts().unwrap();
    assert_eq!(shape("wg"), vec![96, H as i64]);
    assert_eq!(shape("wu"), vec![96, H as i64]);
    assert_eq!(shape("wd"), vec![H as i64, 96]);
    let x = input(&mut rng);
    assert_eq!(run1(&m, &x).len(), ROWS * H);
}

#[test]
fn refit_carries_removed_channels_into_correlated_kept_ones() {
    let mut rng = Rng(Lcg(9));
    let (wg, wu, wd) = weights(&mut rng);
    let x = input(&mut rng);
    let want = run1(&mlp(&wg, &wu, &wd, false), &x);
    let mut plain = mlp(&wg, &wu, &wd, false);
    prune(&mut plain, None);
    let cal = Arc::new(calibration(&wg, &wu, &wd, &x));
    let mut refit = mlp(&wg, &wu, &wd, false);
    prune(&mut refit, Some(cal.clone()));
    let (e_plain, e_refit) = (
        rel_error(&want, &run1(&plain, &x)),
        rel_error(&want, &run1(&refit, &x)),
    );
    assert!(
        e_plain > 0.05,
        "the removed copies carried output: {e_plain}"
    );
    assert!(
        e_refit < 0.1 * e_plain,
        "refit {e_refit} vs plain {e_plain}"
    );
    // GPTQ afterwards sees the statistics of the kept channels only.
    assert_eq!(cal.hessian("wd").unwrap().k, 96);
}

#[test]
fn an_mlp_whose_hidden_values_are_read_elsewhere_is_not_pruned() {
    let mut rng = Rng(Lcg(1));
    let (wg, wu, wd) = weights(&mut rng);
    let mut m = mlp(&wg, &wu, &wd, true);
    let ctx = PassContext {
        prune: Some(PruneSpec::parse("ffn=25%").unwrap()),
        ..Default::default()
    };
    let e = run(&mut m, &ctx).unwrap_err().to_string();
    assert!(e.contains("no MLP found"), "{e}");
}
