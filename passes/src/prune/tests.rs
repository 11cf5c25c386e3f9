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
        amax: Vec::new(),
    });
    Calibration::new(
        HashMap::from([("wd".to_string(), hess)]),
        ROWS,
        "test".into(),
    )
}

fn prune(m: &mut Module, cal: Option<Arc<Calibration>>) {
    prune_as(m, "ffn=25%", cal)
}

fn prune_as(m: &mut Module, spec: &str, cal: Option<Arc<Calibration>>) {
    let ctx = PassContext {
        prune: Some(PruneSpec::parse(spec).unwrap()),
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
    assert!(PruneSpec::parse("experts=10%")
        .unwrap_err()
        .contains("unknown"));
    let both = PruneSpec::parse("ffn=25%,heads=50%").unwrap();
    assert_eq!((both.ffn, both.heads), (0.25, 0.5));
    assert_eq!(both.to_string(), "ffn=25%,heads=50%");
    let sp = PruneSpec::parse("sparse=2:4").unwrap();
    assert_eq!(sp.sparse, Some(Sparsity::NofM(2, 4)));
    assert_eq!(sp.to_string(), "sparse=2:4");
    assert_eq!(
        PruneSpec::parse("sparse=50%").unwrap().sparse,
        Some(Sparsity::Share(0.5))
    );
    assert!(PruneSpec::parse("sparse=4:2")
        .unwrap_err()
        .contains("N < M"));
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

/// A tiny Llama with GQA (4 query heads, 2 kv heads of 4 dims, bf16 weights behind
/// casts) as `save_pretrained` writes it, imported.
fn tiny_llama() -> Module {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/hf-tiny/llama_gqa_bf16");
    llmc_frontend::hf::load(&dir).unwrap()
}

/// Removing heads without a refit is the same function as zeroing their columns of
/// the o projection: the pruned model (half the query heads, one per kv head) and the
/// original with those columns zeroed give the same logits.
#[test]
fn pruned_heads_are_the_model_with_their_o_columns_zeroed() {
    let before = tiny_llama();
    let mut pruned = before.clone();
    prune_as(&mut pruned, "heads=50%", None);
    let ids = Tensor::from_i64(DType::I64, vec![1, 5], vec![3, 17, 9, 40, 1]);
    let pos = Tensor::from_i64(DType::I64, vec![1, 5], (0..5).collect());
    let mut zeroed = before.clone();
    for layer in 0..2 {
        let name = |p: &str| format!("model.layers.{layer}.self_attn.{p}_proj.weight");
        let q0 = crate::quant::read_float(&before, before.weight_id(&name("q")).unwrap()).unwrap();
        let q1 = crate::quant::read_float(&pruned, pruned.weight_id(&name("q")).unwrap()).unwrap();
        // 16 inputs per row, 4 rows per head: which of the 4 heads the 2 kept are.
        assert_eq!(q1.len(), 2 * 4 * 16, "layer {layer}: two heads kept");
        let kept: Vec<usize> = q1
            .chunks(64)
            .map(|h| q0.chunks(64).position(|o| o == h).unwrap())
            .collect();
        assert!(kept[0] < 2 && kept[1] >= 2, "one per kv head: {kept:?}");
        let wo = zeroed.weight_id(&name("o")).unwrap();
        let mut o = crate::quant::read_float(&zeroed, wo).unwrap();
        for (j, v) in o.iter_mut().enumerate() {
            if !kept.contains(&(j % 16 / 4)) {
                *v = 0.0;
            }
        }
        set_weight(&mut zeroed, wo, vec![16, 16], Some(o));
        let o_kept = pruned.weight(pruned.weight_id(&name("o")).unwrap());
        assert_eq!(o_kept.shape.as_consts(), Some(vec![16, 8]));
    }
    let run = |m: &Module| {
        Interpreter::new(m)
            .run(&[ids.clone(), pos.clone()])
            .unwrap()[0]
            .to_f64()
    };
    let (want, got) = (run(&zeroed), run(&pruned));
    assert!(rel_error(&want, &got) < 1e-5, "{}", rel_error(&want, &got));
    assert!(rel_error(&run(&before), &got) > 1e-3, "the heads mattered");
}

/// `sparse=2:4` leaves two nonzero weights in every four of every linear's rows (the
/// one whose result the graph returns stays dense), `sparse=50%` half of each row; with
/// calibration statistics (SparseGPT) the weights on a loud input column survive where
/// magnitude alone would drop them, and the kept weights' update lowers the output
/// error below the mask's alone.
#[test]
fn sparsity_zeroes_by_rows_and_keeps_loud_inputs() {
    let mut rng = Rng(Lcg(7));
    let (wg, wu, wd) = weights(&mut rng);
    let read =
        |m: &Module, name: &str| crate::quant::read_float(m, m.weight_id(name).unwrap()).unwrap();
    for spec in ["sparse=2:4", "sparse=50%"] {
        let mut m = mlp(&wg, &wu, &wd, false);
        prune_as(&mut m, spec, None);
        assert!(
            read(&m, "wd").iter().all(|&v| v != 0.0),
            "{spec}: output linear dense"
        );
        for row in read(&m, "wg").chunks(H) {
            assert_eq!(row.iter().filter(|&&v| v != 0.0).count(), H / 2, "{spec}");
            if spec.contains(':') {
                for four in row.chunks(4) {
                    assert_eq!(four.iter().filter(|&&v| v == 0.0).count(), 2, "{spec}");
                }
            }
        }
    }
    // Input column 0 made 100x louder than the rest and its gate weights small:
    // magnitude zeroes them, Wanda keeps them.
    let mut wg = wg.clone();
    for r in 0..F {
        wg[r * H] = 0.01;
    }
    // Inputs sharing a common factor (correlated columns, as activations are), so the
    // kept weights can stand in for the zeroed ones.
    let mut xtx = vec![0.0; H * H];
    for _ in 0..ROWS {
        let z = rng.next() as f64;
        let mut row: Vec<f64> = (0..H).map(|_| 0.8 * z + 0.3 * rng.next() as f64).collect();
        row[0] *= 100.0;
        for i in 0..H {
            for j in 0..H {
                xtx[i * H + j] += row[i] * row[j];
            }
        }
    }
    let hess = Arc::new(Hessian {
        k: H,
        h: xtx,
        rows: ROWS,
        amax: Vec::new(),
    });
    let cal = Arc::new(Calibration::new(
        HashMap::from([("wg".to_string(), hess)]),
        ROWS,
        "test".into(),
    ));
    let kept = |cal: Option<Arc<Calibration>>| {
        let mut m = mlp(&wg, &wu, &wd, false);
        prune_as(&mut m, "sparse=50%", cal);
        read(&m, "wg").chunks(H).filter(|row| row[0] != 0.0).count()
    };
    assert_eq!(kept(None), 0, "magnitude drops the small weights");
    let loud = kept(Some(cal.clone()));
    assert!(
        loud > F * 3 / 4,
        "SparseGPT keeps the loud column: {loud} of {F} rows"
    );
    // And the kept weights carry what the zeros dropped: the gate's output error on
    // the calibration inputs (eᵀHe over its rows) is smaller than zeroing the same
    // weights without the update.
    let mut m = mlp(&wg, &wu, &wd, false);
    prune_as(&mut m, "sparse=50%", Some(cal.clone()));
    let rebuilt = read(&m, "wg");
    let h = cal.hessian("wg").unwrap();
    let quad = |e: &[f64]| crate::quant::gptq::quad(&h.h, H, e);
    let (mut with_update, mut masked_only) = (0.0, 0.0);
    for (r, row) in rebuilt.chunks(H).enumerate() {
        let orig = &wg[r * H..(r + 1) * H];
        let e: Vec<f64> = orig.iter().zip(row).map(|(a, b)| (a - b) as f64).collect();
        with_update += quad(&e);
        let e: Vec<f64> = orig
            .iter()
            .zip(row)
            .map(|(&a, &b)| if b == 0.0 { a as f64 } else { 0.0 })
            .collect();
        masked_only += quad(&e);
    }
    assert!(
        with_update < 0.8 * masked_only,
        "update {with_update} vs mask alone {masked_only}"
    );
}
