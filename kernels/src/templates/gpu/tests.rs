//! Every GPU schedule checked against the reference interpreter on random shapes, run
//! by the interpreter's GPU mode (blocks, threads in lock-step, shared memory,
//! barriers, shuffles, race checks); and the GPU mode's own checks (divergent
//! barriers, shared-memory races, incomplete warps) on kernels that break them.

use super::super::testing::{check_args_on, tt, with_mma_rows, Arg, Rng};
use super::super::tests::{f32_bytes, quant_bytes};
use crate::builder::KernelBuilder;
use crate::loopir::{Expr, LoopTag, Role, Ty};
use llmc_ir::{attrs, Attr, DType, Op};

const F: DType = DType::F32;

fn check(op: Op, a: llmc_ir::Attrs, args: &[Arg], tol: f64) -> String {
    check_args_on(true, op, a, args, tol, tol)
}

fn input(t: llmc_ir::TensorType, x: llmc_ir::Tensor) -> Arg {
    Arg::In(t, x)
}

#[test]
fn gpu_linear_float_and_quantized() {
    let mut r = Rng::new(101);
    for case in 0..6 {
        let rows = [1usize, 3, 4, 6, 37, 2][case];
        // 16+ rows against a multiple of 8 weight rows take the tiled form.
        let n = if rows >= 16 {
            16
        } else {
            1 + (r.next() % 20) as usize
        };
        // Widths of whole int4 groups of 64 and 128 in most cases.
        let k = [128, 64, 96, 256, 128, 32][case];
        let x = r.tensor(F, &[rows, k], 1.0);
        let xa = || input(tt(F, &["seq", &k.to_string()]), x.clone());
        let w = r.tensor(F, &[n, k], 1.0);
        let b = r.tensor(F, &[n], 1.0);
        let text = check(
            Op::Linear,
            attrs([]),
            &[xa(), Arg::W(F, vec![n, k], f32_bytes(&w))],
            1e-5,
        );
        assert!(text.contains("shuffle_xor"), "{text}");
        check(
            Op::Linear,
            attrs([]),
            &[
                xa(),
                Arg::W(F, vec![n, k], f32_bytes(&w)),
                Arg::W(F, vec![n], f32_bytes(&b)),
            ],
            1e-5,
        );
        for d in [
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4_1,
            DType::Q5_0,
            DType::Q5_1,
            DType::Q4K,
            DType::Q6K,
            DType::Q4_0G64,
            DType::Q4_1G64,
            DType::Q4_0G128,
            DType::Q4_1G128,
            DType::Q8_0S24,
            DType::Q8_0S832,
        ] {
            if k % d.block_len() != 0 {
                continue;
            }
            let wq = quant_bytes(&mut r, d, n, k);
            check(
                Op::Linear,
                attrs([]),
                &[xa(), Arg::W(d, vec![n, k], wq.clone())],
                1e-5,
            );
            check(
                Op::LinearAct,
                attrs([("act", Attr::Str("silu".into()))]),
                &[
                    xa(),
                    Arg::W(d, vec![n, k], wq),
                    Arg::W(F, vec![n], f32_bytes(&b)),
                ],
                1e-5,
            );
        }
    }
}

/// The generic GPU mapping of a quantized linear (what a format the GEMV does not
/// decode would take) uses the CPU template's integer dot products, never its CPU-only
/// tile form: rows alone and in quads, a weight of whole 16-row chunks.
#[test]
fn gpu_generic_quantized_linear_takes_the_dots_not_the_tile() {
    let mut r = Rng::new(103);
    for (rows, n, k) in [(1usize, 16usize, 256usize), (4, 16, 512), (6, 32, 256)] {
        for d in [DType::Q5K, DType::Q3K, DType::Q2K, DType::Q4_0] {
            let mut m = llmc_ir::Module::new("t");
            let x = m.graph.add_input("x", tt(F, &["seq", &k.to_string()]));
            let wq = quant_bytes(&mut r, d, n, k);
            let w = m.add_weight(
                "w",
                d,
                llmc_ir::Shape::of(&[n as i64, k as i64]),
                llmc_ir::WeightData::Owned(std::sync::Arc::new(wq)),
            );
            let outs = m.add_node(Op::Linear, &[x, w], attrs([])).unwrap();
            let node = &m.graph.nodes[0];
            let ins = [m.graph.ty(x), m.graph.ty(w)];
            let cpu = crate::templates::with_gpu_mapping(|| {
                crate::templates::lower(node, &ins, &[m.graph.ty(outs[0])], "linear")
            })
            .unwrap();
            let crate::templates::Lowered::Kernel { kernel, .. } = cpu else {
                panic!("{d}: no kernel");
            };
            let text = kernel.to_string();
            assert!(
                text.contains("qdot") && !text.contains("qtile"),
                "{d} rows {rows}:\n{text}"
            );
        }
    }
}

/// K-quant (Q3_K, Q4_K, Q5_K, Q6_K) and IQ4 (IQ4_NL, IQ4_XS) weights in the GPU GEMV,
/// decoded per unit in registers (no integer dots): one row, a decode batch, and 16+
/// rows (the tiled form, four weight rows a warp); two super-blocks a row.
#[test]
fn gpu_k_quant_gemv() {
    let mut r = Rng::new(107);
    for (rows, n) in [(1usize, 8usize), (5, 9), (37, 16)] {
        let k = 512;
        let x = r.tensor(F, &[rows, k], 1.0);
        for d in [
            DType::Q4K,
            DType::Q6K,
            DType::Q5K,
            DType::Q3K,
            DType::Q2K,
            DType::IQ4NL,
            DType::IQ4XS,
        ] {
            let wq = quant_bytes(&mut r, d, n, k);
            let text = check(
                Op::Linear,
                attrs([]),
                &[
                    input(tt(F, &["seq", &k.to_string()]), x.clone()),
                    Arg::W(d, vec![n, k], wq),
                ],
                1e-5,
            );
            assert!(
                text.contains("shuffle_xor") && !text.contains("qdot"),
                "{d}:\n{text}"
            );
        }
    }
}

#[test]
fn gpu_norms() {
    let mut r = Rng::new(102);
    for d in [6usize, 40, 96, 200] {
        let rows = 1 + (r.next() % 4) as usize;
        let x = r.tensor(F, &[2, rows, d], 2.0);
        let w = r.tensor(F, &[d], 1.0);
        let b = r.tensor(F, &[d], 1.0);
        let xt = tt(F, &["2", "seq", &d.to_string()]);
        let wt = tt(F, &[&d.to_string()]);
        let text = check(
            Op::RmsNorm,
            attrs([("eps", Attr::Float(1e-5))]),
            &[input(xt.clone(), x.clone()), input(wt.clone(), w.clone())],
            1e-5,
        );
        assert!(text.contains("grid.x for"), "{text}");
        check(
            Op::LayerNorm,
            attrs([("eps", Attr::Float(1e-3))]),
            &[
                input(xt.clone(), x.clone()),
                input(wt.clone(), w.clone()),
                input(wt.clone(), b.clone()),
            ],
            1e-5,
        );
    }
}

#[test]
fn gpu_rope() {
    let mut r = Rng::new(103);
    for (s, d) in [(3usize, 8usize), (1, 64), (5, 12)] {
        let xr = r.tensor(F, &[2, 3, s, d], 2.0);
        let pos = r.ints(DType::I64, &[2, s], 0, 5000);
        let pos1 = r.ints(DType::I64, &[1, s], 0, 40);
        let xrt = tt(F, &["2", "3", "seq", &d.to_string()]);
        for a in [
            attrs([("theta", Attr::Float(10000.0))]),
            attrs([
                ("theta", Attr::Float(500.0)),
                ("style", Attr::Str("interleaved".into())),
            ]),
            attrs([("theta", Attr::Float(10000.0)), ("dims", Attr::Int(4))]),
        ] {
            check(
                Op::Rope,
                a.clone(),
                &[
                    input(xrt.clone(), xr.clone()),
                    input(tt(DType::I64, &["2", "seq"]), pos.clone()),
                ],
                1e-5,
            );
            check(
                Op::Rope,
                a,
                &[
                    input(xrt.clone(), xr.clone()),
                    input(tt(DType::I64, &["1", "seq"]), pos1.clone()),
                ],
                1e-5,
            );
        }
    }
}

#[test]
fn gpu_flash_attention() {
    let mut r = Rng::new(104);
    // (batch, heads, kv heads, queries, keys, dk, dv): GQA, dk not a multiple of 32,
    // more queries than keys, a decode row.
    for (b, h, kvh, s, t, dk, dv) in [
        (2usize, 4usize, 2usize, 3usize, 7usize, 5usize, 3usize),
        (1, 3, 1, 1, 9, 64, 64),
        (1, 2, 2, 9, 4, 40, 33),
        (2, 2, 1, 4, 6, 32, 16),
    ] {
        let q = r.tensor(F, &[b, h, s, dk], 1.0);
        let k = r.tensor(F, &[b, kvh, t, dk], 1.0);
        let v = r.tensor(F, &[b, kvh, t, dv], 1.0);
        let mv: Vec<f64> = (0..s * t)
            .map(|i| match i % 5 {
                0 => f64::NEG_INFINITY,
                1 => -1.5,
                _ => 0.25 * (i % 3) as f64,
            })
            .collect();
        let mask = llmc_ir::Tensor::from_f64(F, vec![s, t], mv);
        let sd = |n: usize| n.to_string();
        let qt = tt(F, &[&sd(b), &sd(h), "seq", &sd(dk)]);
        let kt = tt(F, &[&sd(b), &sd(kvh), "t", &sd(dk)]);
        let vt = tt(F, &[&sd(b), &sd(kvh), "t", &sd(dv)]);
        for causal in [false, true] {
            for op in [Op::FlashAttention, Op::Attention] {
                let a = attrs([("scale", Attr::Float(0.45)), ("causal", Attr::Bool(causal))]);
                let base = vec![
                    input(qt.clone(), q.clone()),
                    input(kt.clone(), k.clone()),
                    input(vt.clone(), v.clone()),
                ];
                check(op, a.clone(), &base, 1e-5);
                let mut masked = base;
                masked.push(input(tt(F, &["seq", "t"]), mask.clone()));
                check(op, a, &masked, 1e-5);
            }
        }
        // causal_fill with a left-padding mask (f32::MIN on the first keys).
        let pad: Vec<f64> = (0..s * t)
            .map(|i| if i % t < 2 { f32::MIN as f64 } else { 0.0 })
            .collect();
        let pad = llmc_ir::Tensor::from_f64(F, vec![s, t], pad);
        let a = attrs([
            ("scale", Attr::Float(0.45)),
            ("causal", Attr::Bool(true)),
            ("causal_fill", Attr::Float(f32::MIN as f64)),
        ]);
        check(
            Op::FlashAttention,
            a,
            &[
                input(qt.clone(), q.clone()),
                input(kt.clone(), k.clone()),
                input(vt.clone(), v.clone()),
                input(tt(F, &["seq", "t"]), pad),
            ],
            1e-5,
        );
    }
}

/// `argmax`/`argmin` over the last axis, a block per row: random rows, rows whose
/// extreme repeats (the lowest index wins, also across threads and warps), rows with
/// NaNs (the first NaN wins), a row of -inf, rows shorter than the block and longer
/// than it by a non-multiple, rows of whole unrolled chunks and with a rest; as i64
/// indices, equal to the reference.
#[test]
fn gpu_argmax_picks_the_reference_index() {
    let mut r = Rng::new(107);
    for (rows, n) in [
        (1usize, 49_152usize),
        (3, 700),
        (5, 33),
        (2, 1),
        (4, 4_099),
        (4, 17_000),
    ] {
        let mut v: Vec<f64> = (0..rows * n)
            .map(|_| (r.next() % 1000) as f64 / 100.0 - 5.0)
            .collect();
        if rows > 1 {
            // Row 1: its maximum and minimum at three places each, in different warps.
            let row = &mut v[n..2 * n];
            for j in [n / 2, n - 1, n / 3 + 1] {
                row[j % n] = 1e6;
            }
            for j in [n - 2, n / 4, n / 2 + 1] {
                row[j % n] = -1e6;
            }
        }
        if rows > 2 {
            // Row 2: NaNs late and early; row 2's first NaN is the answer both ways.
            let row = &mut v[2 * n..3 * n];
            row[n - 1] = f64::NAN;
            row[n / 2] = f64::NAN;
        }
        if rows > 1 && n > 2 {
            // Row 0: -0 and +0 as its maximum (equal: the first wins).
            for e in &mut v[..n] {
                *e = -1.0;
            }
            v[n - 1] = 0.0;
            v[n / 2] = -0.0;
        }
        if rows > 3 {
            for e in &mut v[3 * n..4 * n] {
                *e = f64::NEG_INFINITY;
            }
        }
        let x = llmc_ir::Tensor::from_f64(F, vec![rows, n], v);
        for op in [Op::ArgMax, Op::ArgMin] {
            for keep in [false, true] {
                let text = check(
                    op,
                    attrs([("axis", Attr::Int(-1)), ("keepdims", Attr::Bool(keep))]),
                    &[input(tt(F, &["seq", &n.to_string()]), x.clone())],
                    0.0,
                );
                assert!(
                    text.contains("shuffle_xor") && text.contains("grid.x for"),
                    "{text}"
                );
            }
        }
    }
}

/// Ops without a GPU template: their CPU template spread over threads.
#[test]
fn gpu_generic_mapping() {
    let mut r = Rng::new(105);
    let a = r.tensor(F, &[2, 3, 40], 2.0);
    let c = r.tensor(F, &[3, 1], 2.0);
    let text = check(
        Op::Add,
        attrs([]),
        &[
            input(tt(F, &["batch", "3", "40"]), a.clone()),
            input(tt(F, &["3", "1"]), c.clone()),
        ],
        0.0,
    );
    assert!(text.contains("block.x for"), "{text}");
    check(
        Op::FusedElementwise,
        attrs([("expr", Attr::Str("silu(add(mul($0, $0), $1))".into()))]),
        &[
            input(tt(F, &["batch", "3", "40"]), a.clone()),
            input(tt(F, &["3", "1"]), c.clone()),
        ],
        1e-6,
    );
    let g = r.tensor(F, &[1, 3, 600], 3.0);
    let text = check(
        Op::Glu,
        attrs([("act", Attr::Str("silu".into()))]),
        &[input(tt(F, &["1", "seq", "600"]), g)],
        1e-5,
    );
    // A thread per output element, over as many blocks as the rows need.
    assert!(
        text.contains("grid.x for") && text.contains("/ 300)") && !text.contains("step 256"),
        "{text}"
    );
    let x = r.tensor(F, &[2, 3, 300], 1.0);
    check(
        Op::Split,
        attrs([
            ("axis", Attr::Int(2)),
            ("sizes", Attr::Ints(vec![100, 200])),
        ]),
        &[input(tt(F, &["2", "seq", "300"]), x)],
        0.0,
    );
    let wq = quant_bytes(&mut r, DType::Q4_1, 6, 64);
    let ids = llmc_ir::Tensor::from_i64(DType::I64, vec![1, 3], vec![5, 0, 2]);
    check(
        Op::Gather,
        attrs([("axis", Attr::Int(0))]),
        &[
            Arg::W(DType::Q4_1, vec![6, 64], wq),
            input(tt(DType::I64, &["1", "seq"]), ids),
        ],
        0.0,
    );
    let x = r.tensor(F, &[2, 5, 7], 3.0);
    check(
        Op::Softmax,
        attrs([("axis", Attr::Int(-1))]),
        &[input(tt(F, &["2", "seq", "7"]), x)],
        1e-6,
    );
}

/// A kernel of one block of `threads` threads whose body `f` builds.
fn one_block(
    threads: i64,
    f: impl FnOnce(&mut KernelBuilder, Expr, crate::loopir::BufId),
) -> crate::loopir::Kernel {
    let mut kb = KernelBuilder::new("probe");
    let out = kb.param("out", Ty::F32, Role::Out);
    kb.for_("b", 0, 1, LoopTag::GpuGrid(0), |kb, _| {
        let sh = kb.shared("sh", Ty::F32, threads);
        kb.for_("t", 0, threads, LoopTag::GpuBlock(0), |kb, t| {
            let _ = sh;
            f(kb, t, out)
        });
    });
    kb.finish().expect("well-formed")
}

fn run_probe(k: &crate::loopir::Kernel, n: usize) -> Result<Vec<u8>, String> {
    let mut bufs = vec![vec![0u8; n * 4]];
    crate::interp::run(k, &mut bufs, &[]).map_err(|e| e.to_string())?;
    Ok(bufs.remove(0))
}

#[test]
fn gpu_mode_catches_divergence_races_and_bad_warps() {
    // Shared memory through a barrier: thread t reads its neighbour's value. Correct.
    let ok = one_block(64, |kb, t, out| {
        let sh = crate::loopir::BufId(1);
        kb.store(sh, t.clone(), t.clone().cast(Ty::F32));
        kb.barrier();
        let v = Expr::load(sh, (t.clone() + 1) % 64);
        kb.store(out, t, v);
    });
    let bytes = run_probe(&ok, 64).expect("correct kernel");
    assert_eq!(f32::from_le_bytes(bytes[0..4].try_into().unwrap()), 1.0);
    // The same without the barrier: a race.
    let racy = one_block(64, |kb, t, out| {
        let sh = crate::loopir::BufId(1);
        kb.store(sh, t.clone(), t.clone().cast(Ty::F32));
        let v = Expr::load(sh, (t.clone() + 1) % 64);
        kb.store(out, t, v);
    });
    let e = run_probe(&racy, 64).unwrap_err();
    assert!(e.contains("race on shared %sh"), "{e}");
    // A barrier only half the threads reach.
    let divergent = one_block(64, |kb, t, out| {
        kb.if_(t.clone().lt(Expr::i(32)), |kb| kb.barrier());
        kb.store(out, t, Expr::f(0.0, Ty::F32));
    });
    let e = run_probe(&divergent, 64).unwrap_err();
    assert!(e.contains("divergent barrier"), "{e}");
    // A shuffle with half a warp.
    let half_warp = one_block(32, |kb, t, out| {
        let v = kb.let_mut("v", Expr::f(1.0, Ty::F32));
        kb.if_(t.clone().lt(Expr::i(16)), |kb| {
            kb.shuffle_xor(v, Expr::Var(v), 1)
        });
        kb.store(out, t, Expr::Var(v));
    });
    let e = run_probe(&half_warp, 32).unwrap_err();
    assert!(e.contains("shuffle in warp 0"), "{e}");
    // Two threads writing one global element.
    let clash = one_block(32, |kb, _t, out| {
        kb.store(out, Expr::i(0), Expr::f(1.0, Ty::F32));
    });
    let e = run_probe(&clash, 32).unwrap_err();
    assert!(e.contains("race on %out"), "{e}");
    // A butterfly sum gives every lane the total.
    let sum = one_block(32, |kb, t, out| {
        let s = super::warp_sum(kb, t.clone().cast(Ty::F32));
        kb.store(out, t, s);
    });
    let bytes = run_probe(&sum, 32).expect("correct kernel");
    for l in 0..32 {
        let v = f32::from_le_bytes(bytes[4 * l..4 * l + 4].try_into().unwrap());
        assert_eq!(v, 496.0, "lane {l}");
    }
}

/// A tensor of multiples of 1/64 in [-2, 2): exact in tf32, and every product and
/// sum of a short dot product of them exact in f32, so the tensor-core form must give
/// the reference's numbers bit for bit.
fn tf32_exact(r: &mut Rng, shape: &[usize]) -> llmc_ir::Tensor {
    let n = shape.iter().product();
    let v = (0..n)
        .map(|_| ((r.next() % 256) as f64 - 128.0) / 64.0)
        .collect();
    llmc_ir::Tensor::from_f64(F, shape.to_vec(), v)
}

/// Steps of 64+ rows take the tensor-core form (`mma.m16n8k8` on tf32, tiles of 64
/// rows x 64 columns staged 32 elements of k at a time): whole and partial tiles of
/// rows and columns, a k that is not whole 32s (float weights), with a bias and an
/// activation, a residual, `glu` (gate and up tiles), `glu_in` and `norm_eps`; every
/// block format dequantized into the weight tile. Tf32-exact float operands give the
/// reference's numbers exactly; quantized ones within tf32's rounding of each operand
/// (2^-11 relative, over k = 256-512 products).
#[test]
fn gpu_linear_tensor_cores() {
    let mut r = Rng::new(109);
    for (rows, n, k) in [
        (64usize, 64usize, 32usize),
        (67, 72, 96),
        (130, 8, 40),
        (64, 130, 64),
    ] {
        let ks = k.to_string();
        let x = tf32_exact(&mut r, &[rows, k]);
        let w = tf32_exact(&mut r, &[n, k]);
        let b = tf32_exact(&mut r, &[n]);
        let res = tf32_exact(&mut r, &[rows, n]);
        let xa = || input(tt(F, &["seq", &ks]), x.clone());
        let wa = || Arg::W(F, vec![n, k], f32_bytes(&w));
        let text = check(Op::Linear, attrs([]), &[xa(), wa()], 0.0);
        assert!(text.contains("mma.m16n8k8.tf32"), "{text}");
        let silu = || attrs([("act", Attr::Str("silu".into()))]);
        check(
            Op::LinearAct,
            silu(),
            &[xa(), wa(), Arg::W(F, vec![n], f32_bytes(&b))],
            1e-6,
        );
        let mut ra = attrs([]);
        ra.insert("residual".into(), Attr::Int(1));
        check(
            Op::Linear,
            ra,
            &[
                xa(),
                wa(),
                input(tt(F, &["seq", &n.to_string()]), res.clone()),
            ],
            0.0,
        );
        if n % 2 == 0 {
            check(
                Op::Linear,
                attrs([("glu", Attr::Str("silu".into()))]),
                &[xa(), wa(), Arg::W(F, vec![n], f32_bytes(&b))],
                1e-6,
            );
        }
        // Activations that are not tf32-exact: within tf32's rounding.
        let z = tf32_exact(&mut r, &[rows, 2 * k]);
        check_args_on(
            true,
            Op::Linear,
            attrs([("glu_in", Attr::Str("silu".into()))]),
            &[input(tt(F, &["seq", &(2 * k).to_string()]), z), wa()],
            0.05,
            0.01,
        );
        let nw = tf32_exact(&mut r, &[k]);
        check_args_on(
            true,
            Op::Linear,
            attrs([("norm_eps", Attr::Float(1e-5))]),
            &[xa(), wa(), input(tt(F, &[&ks]), nw)],
            0.05,
            0.01,
        );
    }
    let (rows, n) = (70usize, 72usize);
    for d in [
        DType::F16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q4_0G64,
        DType::Q4_1G128,
        DType::Q8_0S24,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
        DType::Q3K,
        DType::Q2K,
        DType::IQ4NL,
        DType::IQ4XS,
    ] {
        let k = if d.block_len() > 32 { 512 } else { 256 };
        let x = r.tensor(F, &[rows, k], 1.0);
        let wq = if d == DType::F16 {
            r.tensor(F, &[n, k], 0.5)
                .to_f64()
                .iter()
                .flat_map(|v| half::f16::from_f64(*v).to_le_bytes())
                .collect()
        } else {
            quant_bytes(&mut r, d, n, k)
        };
        let args = [
            input(tt(F, &["seq", &k.to_string()]), x),
            Arg::W(d, vec![n, k], wq),
        ];
        let text = check_args_on(true, Op::Linear, attrs([]), &args, 0.03, 0.01);
        assert!(text.contains("mma.m16n8k8.tf32"), "{d}: {text}");
    }
}

/// The tensor-core threshold is the runtime's: at 1 the tiles serve a one-row decode
/// step and a few rows (mostly padding), at "never" a 70-row step takes the SIMT tiles
/// (the `LLMC_CUDA_NO_MMA=1` baseline); both against the reference.
#[test]
fn gpu_linear_mma_threshold_is_bound_at_run_time() {
    let mut r = Rng::new(110);
    let k = 64;
    let ks = k.to_string();
    for d in [F, DType::Q4_1, DType::Q8_0] {
        for (rows, thr, n) in [
            (1usize, 1i64, 72usize),
            (5, 1, 40),
            (17, 1, 64),
            (70, 1 << 40, 72),
        ] {
            let x = tf32_exact(&mut r, &[rows, k]);
            let wb = if d == F {
                f32_bytes(&tf32_exact(&mut r, &[n, k]))
            } else {
                quant_bytes(&mut r, d, n, k)
            };
            let args = [input(tt(F, &["seq", &ks]), x), Arg::W(d, vec![n, k], wb)];
            let tol = if d == F && thr == 1 { 0.0 } else { 0.03 };
            with_mma_rows(thr, || {
                check_args_on(true, Op::Linear, attrs([]), &args, tol, 0.01)
            });
        }
    }
}
