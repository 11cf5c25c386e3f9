//! Properties every entry of the op table must have, checked on random operands and
//! attributes: the shape rule and the reference semantics never panic (the verifier may
//! not have run, so bad shapes and attributes must be errors), and whenever both accept
//! a node, the tensors the semantics produce have exactly the types the rule predicts.

use llmc_ir::attr::AttrKind;
use llmc_ir::interp::EvalCtx;
use llmc_ir::{Attr, Attrs, DType, Op, Shape, Tensor, TensorType};
use proptest::prelude::*;

/// A small deterministic generator driven by proptest's seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize].clone()
    }
}

fn shape(g: &mut Gen) -> Vec<usize> {
    let rank = g.below(5) as usize;
    (0..rank).map(|_| g.range(0, 3) as usize).collect()
}

fn tensor(g: &mut Gen, dtype: DType, shape: Vec<usize>) -> Tensor {
    let n: usize = shape.iter().product();
    match dtype {
        DType::F32 => Tensor::from_f64(
            dtype,
            shape,
            (0..n).map(|_| g.range(-40, 40) as f64 / 8.0).collect(),
        ),
        DType::Bool => Tensor::from_i64(dtype, shape, (0..n).map(|_| g.range(0, 1)).collect()),
        _ => Tensor::from_i64(dtype, shape, (0..n).map(|_| g.range(-4, 4)).collect()),
    }
}

fn attr(g: &mut Gen, kind: AttrKind) -> Attr {
    let ints = |g: &mut Gen| -> Vec<i64> {
        let n = g.below(5);
        (0..n)
            .map(|_| {
                if g.chance(5) {
                    g.pick(&[i64::MAX, i64::MIN])
                } else {
                    g.range(-4, 4)
                }
            })
            .collect()
    };
    match kind {
        AttrKind::Int => Attr::Int(g.range(-4, 4)),
        AttrKind::Float => Attr::Float(g.pick(&[1e-5, 0.5, 1.0, 2.0, 1e4, -1.0, 0.0])),
        AttrKind::Bool => Attr::Bool(g.chance(50)),
        AttrKind::Str => Attr::Str(
            g.pick(&["none", "tanh", "neox", "interleaved", "x", "silu", "gelu"])
                .into(),
        ),
        AttrKind::Ints => Attr::Ints(ints(g)),
        AttrKind::Floats => Attr::Floats((0..g.below(3)).map(|_| 0.5).collect()),
        AttrKind::Type => Attr::Type(g.pick(&[DType::F32, DType::I64, DType::Bool, DType::F16])),
        AttrKind::Shape => {
            let s: Vec<i64> = shape(g).into_iter().map(|d| d as i64).collect();
            Attr::Shape(Shape::of(&s))
        }
        AttrKind::Tensor => {
            let s = shape(g);
            let d = g.pick(&[DType::F32, DType::I64]);
            Attr::Tensor(tensor(g, d, s))
        }
    }
}

/// Well-formed operands for the ops whose rules need related shapes, so the agreement
/// check reaches them (dims are sometimes 0 or 1 to hit the edges).
fn template(op: Op, g: &mut Gen) -> Option<Vec<Tensor>> {
    let d = |g: &mut Gen| g.range(0, 3) as usize;
    let f = DType::F32;
    Some(match op {
        Op::Attention => {
            let (b, kvh, grp, s, t, dk, dv) = (d(g), d(g).max(1), d(g), d(g), d(g), d(g), d(g));
            let mut v = vec![
                tensor(g, f, vec![b, kvh * grp, s, dk]),
                tensor(g, f, vec![b, kvh, t, dk]),
                tensor(g, f, vec![b, kvh, t, dv]),
            ];
            if g.chance(50) {
                v.push(tensor(g, f, vec![s, t]));
            }
            v
        }
        Op::Rope => {
            let (b, h, s, half) = (d(g), d(g), d(g), d(g).max(1));
            let pos = Tensor::from_i64(
                DType::I64,
                vec![b, s],
                (0..b * s).map(|_| g.range(0, 50)).collect(),
            );
            vec![tensor(g, f, vec![b, h, s, 2 * half]), pos]
        }
        Op::KvAppend => {
            let sh = vec![d(g), d(g), d(g), d(g)];
            vec![tensor(g, f, sh.clone()), tensor(g, f, sh)]
        }
        Op::RmsNorm | Op::LayerNorm | Op::Linear | Op::LinearAct => {
            let lin = matches!(op, Op::Linear | Op::LinearAct);
            let mut sh = shape(g);
            let k = d(g);
            sh.push(k);
            let n = if lin { d(g) } else { k };
            let mut v = vec![tensor(g, f, sh)];
            v.push(if lin {
                tensor(g, f, vec![n, k])
            } else {
                tensor(g, f, vec![k])
            });
            if g.chance(50) {
                v.push(tensor(g, f, vec![n]));
            }
            v
        }
        Op::Glu => {
            // One operand with an even last dim, or two of one shape.
            let mut sh = shape(g);
            let n = d(g);
            if g.chance(50) {
                sh.push(2 * n);
                vec![tensor(g, f, sh)]
            } else {
                sh.push(n);
                vec![tensor(g, f, sh.clone()), tensor(g, f, sh)]
            }
        }
        Op::MatMul => {
            let (m, k, n) = (d(g), d(g), d(g));
            let batch = shape(g);
            let mut a = batch.clone();
            a.extend([m, k]);
            let mut b = batch[g.below(batch.len() as u64 + 1) as usize..].to_vec();
            b.extend([k, n]);
            vec![tensor(g, f, a), tensor(g, f, b)]
        }
        Op::GatherElements => {
            let sh = shape(g);
            let ish: Vec<usize> = sh.iter().map(|&n| g.range(0, n as i64) as usize).collect();
            let n: usize = ish.iter().product();
            let lim = sh.iter().copied().min().unwrap_or(1).max(1) as i64;
            let ix = Tensor::from_i64(
                DType::I64,
                ish,
                (0..n).map(|_| g.range(-lim, lim - 1)).collect(),
            );
            vec![tensor(g, f, sh), ix]
        }
        Op::Conv | Op::ConvTranspose => {
            let (n, cg, grp, m, k) = (d(g), d(g).max(1), d(g).max(1), d(g).max(1), d(g).max(1));
            let sp: Vec<usize> = (0..g.range(1, 2)).map(|_| d(g) + k).collect();
            let mut x = vec![n, cg * grp];
            x.extend(&sp);
            let mut w = if op == Op::Conv {
                vec![m * grp, cg]
            } else {
                vec![cg * grp, m]
            };
            w.extend(std::iter::repeat_n(k, sp.len()));
            vec![tensor(g, f, x), tensor(g, f, w)]
        }
        Op::MaxPool | Op::AvgPool | Op::Resize => {
            let mut x = vec![d(g), d(g)];
            x.extend((0..g.range(1, 2)).map(|_| d(g) + 1));
            vec![tensor(g, f, x)]
        }
        _ => return None,
    })
}

fn check(op: Op, seed: u64) -> Result<(), TestCaseError> {
    let mut g = Gen(seed | 1);
    let def = op.def();
    let n_ops = g.below(5) as usize;
    // Operands often share a base shape (or a suffix of it), so rules that need
    // matching shapes accept some of the cases.
    let base = shape(&mut g);
    let mut ins = Vec::new();
    for _ in 0..n_ops {
        let s = match g.below(3) {
            0 => base.clone(),
            1 => base[g.below(base.len() as u64 + 1) as usize..].to_vec(),
            _ => shape(&mut g),
        };
        let d = g.pick(&[DType::F32, DType::F32, DType::I64, DType::Bool]);
        ins.push(tensor(&mut g, d, s));
    }
    if g.chance(60) {
        if let Some(t) = template(op, &mut g) {
            ins = t;
        }
    }
    let mut attrs = Attrs::new();
    for spec in def.attrs {
        if g.chance(if spec.required { 95 } else { 60 }) {
            attrs.insert(spec.name.to_string(), attr(&mut g, spec.kind));
        }
    }
    let tys: Vec<TensorType> = ins
        .iter()
        .map(|t| {
            let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
            TensorType::new(t.dtype, Shape::of(&dims))
        })
        .collect();
    let ty_refs: Vec<&TensorType> = tys.iter().collect();
    let in_refs: Vec<&Tensor> = ins.iter().collect();
    let inferred = op.infer(&ty_refs, &attrs);
    let evaluated = op.eval(&in_refs, &attrs, &mut EvalCtx::default());
    if let (Ok(want), Ok(got)) = (&inferred, &evaluated) {
        prop_assert_eq!(want.len(), got.len(), "{}: result count", op);
        for (w, t) in want.iter().zip(got) {
            // The only symbol a rule introduces is kv_append's `past`: 0 in a fresh
            // context.
            let want_dims: Option<Vec<i64>> = w
                .shape
                .0
                .iter()
                .map(|d| d.eval(&|s| (s == "past").then_some(0)))
                .collect();
            let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
            prop_assert_eq!(
                (w.dtype.compute_type(), want_dims),
                (t.dtype, Some(dims)),
                "{} on {:?} with {:?}",
                op,
                tys,
                attrs
            );
            let data_len = match &t.data {
                llmc_ir::tensor::Data::F(v) => v.len(),
                llmc_ir::tensor::Data::I(v) => v.len(),
            };
            prop_assert_eq!(data_len, t.numel(), "{}: data length", op);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn rules_and_semantics_agree_and_never_panic(
        which in 0..Op::ALL.len(),
        seed in any::<u64>(),
    ) {
        check(Op::ALL[which], seed)?;
    }
}

/// Every op, many seeds each (the random choice of op above may skip rare ones).
#[test]
fn every_op_gets_exercised() {
    for &op in Op::ALL {
        for seed in 0..300u64 {
            if let Err(e) = check(op, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xABCDEF) {
                panic!("{op} seed {seed}: {e}");
            }
        }
    }
}
