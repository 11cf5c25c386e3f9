//! Every template checked against the reference interpreter on the op it implements,
//! with random inputs (symbolic dims included) and explicit tolerances.

use super::testing::{check, check_args, run_args, tt, Arg, Rng};
use llmc_ir::{attrs, Attr, DType, Op, Shape};

const F: DType = DType::F32;

#[test]
fn unary_float_ops() {
    let mut r = Rng::new(1);
    let x = r.tensor(F, &[3, 5], 3.0);
    let pos = Rng::new(2).tensor(F, &[3, 5], 1.0).to_f64();
    let pos = llmc_ir::Tensor::from_f64(F, vec![3, 5], pos.iter().map(|v| v.abs() + 0.1).collect());
    for op in [
        Op::Neg,
        Op::Abs,
        Op::Exp,
        Op::Tanh,
        Op::Sigmoid,
        Op::Relu,
        Op::Silu,
        Op::Gelu,
        Op::Erf,
        Op::Sin,
        Op::Cos,
        Op::Floor,
        Op::Ceil,
        Op::Round,
        Op::Sign,
        Op::Reciprocal,
    ] {
        check(
            op,
            attrs([]),
            &[(tt(F, &["batch", "5"]), x.clone())],
            1e-6,
            1e-6,
        );
    }
    for op in [Op::Log, Op::Sqrt, Op::Rsqrt] {
        check(
            op,
            attrs([]),
            &[(tt(F, &["3", "5"]), pos.clone())],
            1e-6,
            1e-6,
        );
    }
    let a = attrs([("approximate", Attr::Str("tanh".into()))]);
    check(Op::Gelu, a, &[(tt(F, &["3", "5"]), x.clone())], 1e-6, 1e-6);
    let a = attrs([("min", Attr::Float(-0.5)), ("max", Attr::Float(1.25))]);
    check(Op::Clip, a, &[(tt(F, &["3", "5"]), x)], 0.0, 0.0);
}

#[test]
fn binary_ops_broadcast() {
    let mut r = Rng::new(3);
    let a = r.tensor(F, &[2, 3, 4], 2.0);
    let b = r.tensor(F, &[4], 2.0);
    let c = r.tensor(F, &[3, 1], 2.0);
    for op in [Op::Add, Op::Sub, Op::Mul, Op::Div, Op::Max, Op::Min] {
        check(
            op,
            attrs([]),
            &[
                (tt(F, &["batch", "3", "4"]), a.clone()),
                (tt(F, &["4"]), b.clone()),
            ],
            1e-6,
            1e-6,
        );
        check(
            op,
            attrs([]),
            &[
                (tt(F, &["3", "1"]), c.clone()),
                (tt(F, &["2", "3", "4"]), a.clone()),
            ],
            1e-6,
            1e-6,
        );
    }
    for op in [
        Op::Less,
        Op::Greater,
        Op::Equal,
        Op::LessEqual,
        Op::GreaterEqual,
    ] {
        check(
            op,
            attrs([]),
            &[
                (tt(F, &["2", "3", "4"]), a.clone()),
                (tt(F, &["3", "1"]), c.clone()),
            ],
            0.0,
            0.0,
        );
    }
    let pa = llmc_ir::Tensor::from_f64(F, vec![4], vec![0.5, 1.5, 2.0, 3.0]);
    let pb = llmc_ir::Tensor::from_f64(F, vec![4], vec![2.0, -1.0, 0.5, 3.0]);
    check(
        Op::Pow,
        attrs([]),
        &[(tt(F, &["4"]), pa), (tt(F, &["4"]), pb)],
        1e-6,
        1e-6,
    );
}

#[test]
fn integer_and_bool_ops() {
    let mut r = Rng::new(4);
    let m = r.ints(DType::I64, &[2, 3], -9, 9);
    let n = r.ints(DType::I64, &[2, 3], -9, 9);
    let n_nz = llmc_ir::Tensor::from_i64(
        DType::I64,
        vec![2, 3],
        n.to_i64()
            .iter()
            .map(|&v| if v == 0 { 3 } else { v })
            .collect(),
    );
    for op in [Op::Add, Op::Sub, Op::Mul, Op::Max, Op::Min] {
        check(
            op,
            attrs([]),
            &[
                (tt(DType::I64, &["2", "3"]), m.clone()),
                (tt(DType::I64, &["2", "3"]), n.clone()),
            ],
            0.0,
            0.0,
        );
    }
    check(
        Op::Div,
        attrs([]),
        &[
            (tt(DType::I64, &["2", "3"]), m.clone()),
            (tt(DType::I64, &["2", "3"]), n_nz),
        ],
        0.0,
        0.0,
    );
    for op in [Op::Neg, Op::Abs, Op::Relu, Op::Sign] {
        check(
            op,
            attrs([]),
            &[(tt(DType::I64, &["2", "3"]), m.clone())],
            0.0,
            0.0,
        );
    }
    let p = llmc_ir::Tensor::from_i64(DType::I64, vec![4], vec![2, -2, 1, 3]);
    let e = llmc_ir::Tensor::from_i64(DType::I64, vec![4], vec![5, 3, -1, -2]);
    check(
        Op::Pow,
        attrs([]),
        &[(tt(DType::I64, &["4"]), p), (tt(DType::I64, &["4"]), e)],
        0.0,
        0.0,
    );
    let a = r.ints(DType::Bool, &[2, 2], 0, 2);
    let b = r.ints(DType::Bool, &[2, 2], 0, 2);
    for op in [Op::And, Op::Or, Op::Xor] {
        check(
            op,
            attrs([]),
            &[
                (tt(DType::Bool, &["2", "2"]), a.clone()),
                (tt(DType::Bool, &["2", "2"]), b.clone()),
            ],
            0.0,
            0.0,
        );
    }
    check(
        Op::Not,
        attrs([]),
        &[(tt(DType::Bool, &["2", "2"]), a.clone())],
        0.0,
        0.0,
    );
    let x = r.tensor(F, &[2, 2], 1.0);
    let y = r.tensor(F, &[2], 1.0);
    check(
        Op::Where,
        attrs([]),
        &[
            (tt(DType::Bool, &["2", "2"]), a),
            (tt(F, &["2", "2"]), x),
            (tt(F, &["2"]), y),
        ],
        0.0,
        0.0,
    );
    let a = attrs([("min", Attr::Float(-2.5)), ("max", Attr::Float(4.5))]);
    check(Op::Clip, a, &[(tt(DType::I64, &["2", "3"]), m)], 0.0, 0.0);
}

#[test]
fn casts_between_types() {
    let x = llmc_ir::Tensor::from_f64(F, vec![7], vec![-2.7, -0.5, 0.0, 0.1, 1.9, 1000.3, 3e10]);
    for to in [
        DType::I64,
        DType::I32,
        DType::I8,
        DType::Bool,
        DType::F16,
        DType::BF16,
        DType::F64,
    ] {
        check(
            Op::Cast,
            attrs([("to", Attr::Type(to))]),
            &[(tt(F, &["7"]), x.clone())],
            0.0,
            0.0,
        );
    }
    let n = llmc_ir::Tensor::from_i64(DType::I64, vec![3], vec![-3, 0, 123456]);
    for to in [DType::F32, DType::F16, DType::I16, DType::U8, DType::Bool] {
        check(
            Op::Cast,
            attrs([("to", Attr::Type(to))]),
            &[(tt(DType::I64, &["3"]), n.clone())],
            0.0,
            0.0,
        );
    }
    // f16 arithmetic rounds once, like the reference.
    let mut r = Rng::new(5);
    let h = r.tensor(DType::F16, &[8], 4.0);
    let g = r.tensor(DType::F16, &[8], 4.0);
    check(
        Op::Mul,
        attrs([]),
        &[
            (tt(DType::F16, &["8"]), h.clone()),
            (tt(DType::F16, &["8"]), g),
        ],
        0.0,
        0.0,
    );
    check(
        Op::Silu,
        attrs([]),
        &[(tt(DType::F16, &["8"]), h)],
        1e-3,
        1e-3,
    );
}

#[test]
fn reductions() {
    let mut r = Rng::new(6);
    let x = r.tensor(F, &[4, 3, 5], 2.0);
    for op in [
        Op::ReduceSum,
        Op::ReduceMean,
        Op::ReduceMax,
        Op::ReduceMin,
        Op::ReduceProd,
    ] {
        for (axes, keep) in [
            (vec![-1], true),
            (vec![0, 2], false),
            (vec![], true),
            (vec![1], false),
        ] {
            let a = attrs([("axes", Attr::Ints(axes)), ("keepdims", Attr::Bool(keep))]);
            check(op, a, &[(tt(F, &["seq", "3", "5"]), x.clone())], 1e-5, 1e-5);
        }
    }
    let n = r.ints(DType::I64, &[2, 4], -5, 5);
    for op in [
        Op::ReduceSum,
        Op::ReduceMean,
        Op::ReduceMax,
        Op::ReduceMin,
        Op::ReduceProd,
    ] {
        let a = attrs([("axes", Attr::Ints(vec![1]))]);
        check(op, a, &[(tt(DType::I64, &["2", "4"]), n.clone())], 0.0, 0.0);
    }
    for op in [Op::ArgMax, Op::ArgMin] {
        for (axis, keep) in [(1, true), (-1, false), (0, false)] {
            let a = attrs([("axis", Attr::Int(axis)), ("keepdims", Attr::Bool(keep))]);
            check(op, a, &[(tt(F, &["4", "3", "5"]), x.clone())], 0.0, 0.0);
        }
    }
    for op in [Op::Softmax, Op::LogSoftmax] {
        for axis in [-1, 1, 0] {
            let a = attrs([("axis", Attr::Int(axis))]);
            check(op, a, &[(tt(F, &["seq", "3", "5"]), x.clone())], 1e-6, 1e-5);
        }
    }
    for (ex, rev) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = attrs([
            ("axis", Attr::Int(1)),
            ("exclusive", Attr::Bool(ex)),
            ("reverse", Attr::Bool(rev)),
        ]);
        check(
            Op::CumSum,
            a,
            &[(tt(F, &["4", "3", "5"]), x.clone())],
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn matmul_shapes() {
    let mut r = Rng::new(7);
    let a = r.tensor(F, &[2, 1, 2, 3], 1.0);
    let b = r.tensor(F, &[3, 3, 4], 1.0);
    let v = r.tensor(F, &[3], 1.0);
    let s = r.tensor(F, &[5, 3], 1.0);
    check(
        Op::MatMul,
        attrs([]),
        &[
            (tt(F, &["2", "1", "2", "3"]), a.clone()),
            (tt(F, &["3", "3", "4"]), b.clone()),
        ],
        1e-6,
        1e-5,
    );
    check(
        Op::MatMul,
        attrs([]),
        &[
            (tt(F, &["3"]), v.clone()),
            (tt(F, &["3", "3", "4"]), b.clone()),
        ],
        1e-6,
        1e-5,
    );
    check(
        Op::MatMul,
        attrs([]),
        &[(tt(F, &["2", "1", "2", "3"]), a), (tt(F, &["3"]), v)],
        1e-6,
        1e-5,
    );
    check(
        Op::MatMul,
        attrs([]),
        &[(tt(F, &["seq", "3"]), s), (tt(F, &["3", "3", "4"]), b)],
        1e-6,
        1e-5,
    );
    let m = r.ints(DType::I64, &[2, 3], -5, 5);
    let n = r.ints(DType::I64, &[3, 2], -5, 5);
    check(
        Op::MatMul,
        attrs([]),
        &[
            (tt(DType::I64, &["2", "3"]), m),
            (tt(DType::I64, &["3", "2"]), n),
        ],
        0.0,
        0.0,
    );
    // The outer-product tiles over the right operand in place (rows in tiles of 12, 8,
    // 4, 2, 1; batch broadcast on either side; symbolic rows), a column tail (270 = 8 x
    // 32 + 14), and n known only at run time (the row-update form).
    for (ash, bsh) in [
        (vec!["15", "7"], vec!["7", "64"]),
        (vec!["23", "5"], vec!["5", "32"]),
        (vec!["2", "11", "5"], vec!["5", "32"]),
        (vec!["3", "9", "4"], vec!["2", "1", "4", "32"]),
        (vec!["seq", "6"], vec!["2", "6", "96"]),
        (vec!["5", "7"], vec!["7", "270"]),
        (vec!["2", "9", "3"], vec!["2", "3", "n"]),
        (vec!["seq", "4"], vec!["4", "seq"]),
    ] {
        let dims = |v: &[&str]| -> Vec<usize> {
            let sym = |d: &str| if d == "n" { 70 } else { 13 };
            v.iter()
                .map(|d| d.parse().unwrap_or_else(|_| sym(d)))
                .collect()
        };
        let x = r.tensor(F, &dims(&ash), 1.0);
        let y = r.tensor(F, &dims(&bsh), 1.0);
        check(
            Op::MatMul,
            attrs([]),
            &[(tt(F, &ash), x), (tt(F, &bsh), y)],
            1e-6,
            1e-5,
        );
    }
    let h = r.tensor(DType::F16, &[3, 8], 1.0);
    let g = r.tensor(DType::F16, &[8, 2], 1.0);
    check(
        Op::MatMul,
        attrs([]),
        &[
            (tt(DType::F16, &["3", "8"]), h),
            (tt(DType::F16, &["8", "2"]), g),
        ],
        2e-3,
        2e-3,
    );
}

pub(crate) fn f32_bytes(t: &llmc_ir::Tensor) -> Vec<u8> {
    crate::interp::tensor_bytes(t)
}

/// A random mask of a `q8_0_2of4` block: half the time 2:4 (two of every aligned
/// four), else any 16 or fewer of the 32.
pub(crate) fn mask24(r: &mut Rng, keep: usize) -> u32 {
    const PAIRS: [u32; 6] = [0b0011, 0b0101, 0b1001, 0b0110, 0b1010, 0b1100];
    if keep == 16 && r.next().is_multiple_of(2) {
        return (0..8).fold(0, |m, g| m | PAIRS[(r.next() % 6) as usize] << (4 * g));
    }
    // Half the blocks of q8_0_2of4: any 0..=16 of 32 kept (16:32 pruning's freedom);
    // q8_0_8of32: any 0..=8.
    let mut m = (r.next() as u32) ^ ((r.next() as u32) << 16);
    while m.count_ones() as usize > keep {
        m &= !(1u32 << (r.next() % 32));
    }
    m
}

/// Random blocks of a GGUF format: `rows` rows of `k` elements.
pub(crate) fn quant_bytes(r: &mut Rng, d: DType, rows: usize, k: usize) -> Vec<u8> {
    let mut out = Vec::new();
    if d == DType::Q6K || d == DType::Q3K {
        // Super-blocks: quants and scales (any bits), then D.
        for _ in 0..rows * k / 256 {
            out.extend((0..d.block_bytes() - 2).map(|_| r.next() as u8));
            out.extend(half::f16::from_f64(0.0005 + 0.001 * r.unit().abs()).to_le_bytes());
        }
        return out;
    }
    if d == DType::Q2K {
        // Super-blocks: scales and minimums, quants (any bits), then D and Dmin.
        for _ in 0..rows * k / 256 {
            out.extend((0..80).map(|_| r.next() as u8));
            out.extend(half::f16::from_f64(0.001 + 0.002 * r.unit().abs()).to_le_bytes());
            out.extend(half::f16::from_f64(0.0005 + 0.001 * r.unit().abs()).to_le_bytes());
        }
        return out;
    }
    if d == DType::IQ4XS {
        // Super-blocks: D, scales_h, scales_l (any bits), nibbles.
        for _ in 0..rows * k / 256 {
            out.extend(half::f16::from_f64(0.0002 + 0.0005 * r.unit().abs()).to_le_bytes());
            out.extend((0..134).map(|_| r.next() as u8));
        }
        return out;
    }
    if matches!(
        d,
        DType::Q4_0G64 | DType::Q4_1G64 | DType::Q4_0G128 | DType::Q4_1G128
    ) {
        // Groups: d, the `_1` kinds' m, then the nibbles (any bits).
        let asym = matches!(d, DType::Q4_1G64 | DType::Q4_1G128);
        for _ in 0..rows * k / d.block_len() {
            out.extend(half::f16::from_f64(0.01 + 0.05 * r.unit().abs()).to_le_bytes());
            if asym {
                out.extend(half::f16::from_f64(-0.2 * r.unit().abs()).to_le_bytes());
            }
            out.extend((0..d.block_len() / 2).map(|_| r.next() as u8));
        }
        return out;
    }
    if let Some(keep) = d.sparse_keep() {
        // Blocks: d, a mask of at most `keep` kept elements, `keep` codes (the tail
        // unread).
        for _ in 0..rows * k / 32 {
            out.extend(half::f16::from_f64(0.01 + 0.05 * r.unit().abs()).to_le_bytes());
            out.extend(mask24(r, keep).to_le_bytes());
            out.extend((0..keep).map(|_| r.next() as u8));
        }
        return out;
    }
    if d == DType::Q4K || d == DType::Q5K {
        // Super-blocks: D, Dmin, 12 bytes of packed scales/mins (any bits), Q5_K's 32
        // bytes of fifth bits, nibbles.
        for _ in 0..rows * k / 256 {
            out.extend(half::f16::from_f64(0.001 + 0.004 * r.unit().abs()).to_le_bytes());
            out.extend(half::f16::from_f64(0.002 * r.unit().abs()).to_le_bytes());
            out.extend((0..d.block_bytes() - 4).map(|_| r.next() as u8));
        }
        return out;
    }
    for _ in 0..rows * k / 32 {
        let scale = half::f16::from_f64(0.01 + 0.05 * r.unit().abs()).to_le_bytes();
        out.extend(scale);
        match d {
            DType::Q8_0 => out.extend((0..32).map(|_| r.next() as u8)),
            DType::Q4_0 => out.extend((0..16).map(|_| r.next() as u8)),
            DType::Q5_0 => out.extend((0..20).map(|_| r.next() as u8)),
            DType::IQ4NL => out.extend((0..16).map(|_| r.next() as u8)),
            DType::Q5_1 => {
                out.extend(half::f16::from_f64(-0.2 * r.unit().abs()).to_le_bytes());
                out.extend((0..20).map(|_| r.next() as u8));
            }
            _ => {
                out.extend(half::f16::from_f64(-0.2 * r.unit().abs()).to_le_bytes());
                out.extend((0..16).map(|_| r.next() as u8));
            }
        }
    }
    out
}

#[test]
fn linear_float_and_quantized() {
    let mut r = Rng::new(8);
    // n = 7 exercises the column tail, rows = 5 the row tail; n = 32, 64 the panels
    // (outer-product tiles of 12 rows, then tiles of 8, 4, 2 and 1 for the rows left:
    // 23 = 12 + 8 + 2 + 1).
    for (rows, n, k) in [
        (5usize, 7usize, 64usize),
        (1, 9, 32),
        (2, 4, 96),
        (11, 64, 64),
        (1, 32, 32),
        (8, 32, 64),
        (7, 32, 32),
        (14, 64, 64),
        (23, 32, 32),
    ] {
        let x = r.tensor(F, &[rows, k], 1.0);
        let w = r.tensor(F, &[n, k], 1.0);
        let b = r.tensor(F, &[n], 1.0);
        let xa = Arg::In(tt(F, &["seq", &k.to_string()]), x.clone());
        check_args(
            Op::Linear,
            attrs([]),
            &[xa, Arg::W(F, vec![n, k], f32_bytes(&w))],
            1e-5,
            1e-5,
        );
        let xa = Arg::In(tt(F, &["seq", &k.to_string()]), x.clone());
        check_args(
            Op::Linear,
            attrs([]),
            &[
                xa,
                Arg::W(F, vec![n, k], f32_bytes(&w)),
                Arg::W(F, vec![n], f32_bytes(&b)),
            ],
            1e-5,
            1e-5,
        );
        for d in [
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4_1,
            DType::Q5_0,
            DType::Q5_1,
        ] {
            let wq = quant_bytes(&mut r, d, n, k);
            check_quant_linear(&x, rows, d, n, k, &wq, None);
            let b = r.tensor(F, &[n], 1.0);
            check_quant_linear(&x, rows, d, n, k, &wq, Some(&b));
        }
    }
    // Row octets, quads and single rows, several parallel chunks of weight rows, odd
    // block counts (a trailing block without a partner).
    for (rows, n, k) in [
        (1usize, 40usize, 64usize),
        (3, 17, 32),
        (4, 8, 96),
        (9, 33, 64),
        (13, 20, 96),
    ] {
        let x = r.tensor(F, &[rows, k], 1.0);
        for d in [
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4_1,
            DType::Q5_0,
            DType::Q5_1,
        ] {
            let wq = quant_bytes(&mut r, d, n, k);
            check_quant_linear(&x, rows, d, n, k, &wq, None);
            // int8 activation blocks (`act_bits = 8`), as stored and packed.
            check_quant_linear_bits(&x, rows, d, n, k, &wq, None, 8, None);
            // Static scales (`act_amax`), int8 and int16, some values saturating.
            let fixed = static_ranges(&x, k, 0.6);
            check_quant_linear_static(&x, rows, d, n, k, &wq, 8, &fixed);
            check_quant_linear_static(&x, rows, d, n, k, &wq, 16, &fixed);
        }
    }
    // Rows long enough to be taken in slices of blocks (33 blocks: 16 + 16 + 1, the
    // last slice odd), packed (n = 32) and as stored (n = 20), rows in quads and alone.
    for (d, n) in [(DType::Q4_1, 32usize), (DType::Q8_0, 32), (DType::Q5_0, 20)] {
        let (rows, k) = (9usize, 1056usize);
        let x = r.tensor(F, &[rows, k], 1.0);
        let wq = quant_bytes(&mut r, d, n, k);
        check_quant_linear(&x, rows, d, n, k, &wq, None);
        check_quant_linear_bits(&x, rows, d, n, k, &wq, None, 8, None);
        check_quant_linear_static(&x, rows, d, n, k, &wq, 8, &static_ranges(&x, k, 0.6));
    }
    // Q4_K super-blocks (eight blocks of 32 each): decode rows, quads and octets,
    // several chunks of weight rows.
    // (n = 32, 16: packed in tiles of 16 rows; 4352 = 17 super-blocks, in slices.)
    for (rows, n, k) in [
        (1usize, 40usize, 256usize),
        (5, 17, 512),
        (9, 33, 256),
        (13, 20, 768),
        (1, 32, 512),
        (6, 16, 4352),
    ] {
        let x = r.tensor(F, &[rows, k], 1.0);
        let wq = quant_bytes(&mut r, DType::Q4K, n, k);
        check_quant_linear(&x, rows, DType::Q4K, n, k, &wq, None);
    }
    // Tables of whole groups of 16 rows are read in the packed tile layout the
    // quantized linear shares (a tied embedding stored once): the same values, exactly.
    for d in [
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
    ] {
        let wq = quant_bytes(&mut r, d, 32, 64);
        let ids = llmc_ir::Tensor::from_i64(DType::I64, vec![1, 4], vec![17, 0, 31, -1]);
        let text = check_args(
            Op::Gather,
            attrs([("axis", Attr::Int(0))]),
            &[
                Arg::W(d, vec![32, 64], wq),
                Arg::In(tt(DType::I64, &["1", "seq"]), ids),
            ],
            0.0,
            0.0,
        );
        assert!(text.contains("% 16"), "{d}: not the packed gather\n{text}");
    }
    for d in [DType::Q5_0, DType::Q5_1] {
        let wq = quant_bytes(&mut r, d, 6, 64);
        let ids = llmc_ir::Tensor::from_i64(DType::I64, vec![1, 3], vec![5, 0, 2]);
        check_args(
            Op::Gather,
            attrs([("axis", Attr::Int(0))]),
            &[
                Arg::W(d, vec![6, 64], wq),
                Arg::In(tt(DType::I64, &["1", "seq"]), ids),
            ],
            0.0,
            0.0,
        );
    }
    // Q6_K: as stored (n = 40, 17, 33), packed in tiles of 16 rows (n = 32, 48, 16;
    // 4352 = 17 super-blocks, in slices), decode rows, quads and octets; int8
    // activations and static scales on the packed tile.
    for (rows, n, k) in [
        (1usize, 40usize, 256usize),
        (5, 17, 512),
        (9, 33, 256),
        (1, 32, 512),
        (5, 48, 256),
        (9, 32, 768),
        (6, 16, 4352),
    ] {
        let x = r.tensor(F, &[rows, k], 1.0);
        let wq = quant_bytes(&mut r, DType::Q6K, n, k);
        check_quant_linear(&x, rows, DType::Q6K, n, k, &wq, None);
        if n % 16 == 0 {
            check_quant_linear_bits(&x, rows, DType::Q6K, n, k, &wq, None, 8, None);
            let fixed = static_ranges(&x, k, 0.6);
            check_quant_linear_static(&x, rows, DType::Q6K, n, k, &wq, 8, &fixed);
        }
    }
    // Q3_K and Q2_K: packed in tiles of 16 rows too (n = 48, 32, 16; decode rows,
    // quads and octets; 4352 = 17 super-blocks, in slices; Q2_K's packed blocks read
    // as they go for every row).
    for d in [DType::Q3K, DType::Q2K] {
        for (rows, n, k) in [
            (1usize, 48usize, 256usize),
            (5, 32, 512),
            (9, 48, 256),
            (6, 16, 4352),
        ] {
            let x = r.tensor(F, &[rows, k], 1.0);
            let wq = quant_bytes(&mut r, d, n, k);
            check_quant_linear(&x, rows, d, n, k, &wq, None);
            check_quant_linear_bits(&x, rows, d, n, k, &wq, None, 8, None);
        }
    }
    for d in [DType::Q3K, DType::Q2K] {
        for (rows, n, k) in [(1usize, 40usize, 256usize), (9, 33, 512), (4, 8, 768)] {
            let x = r.tensor(F, &[rows, k], 1.0);
            let wq = quant_bytes(&mut r, d, n, k);
            check_quant_linear(&x, rows, d, n, k, &wq, None);
            check_quant_linear_bits(&x, rows, d, n, k, &wq, None, 8, None);
        }
        let wq = quant_bytes(&mut r, d, 5, 512);
        let ids = llmc_ir::Tensor::from_i64(DType::I64, vec![1, 3], vec![4, 0, 2]);
        check_args(
            Op::Gather,
            attrs([("axis", Attr::Int(0))]),
            &[
                Arg::W(d, vec![5, 512], wq),
                Arg::In(tt(DType::I64, &["1", "seq"]), ids),
            ],
            0.0,
            0.0,
        );
    }
    let wq = quant_bytes(&mut r, DType::Q6K, 5, 512);
    let ids = llmc_ir::Tensor::from_i64(DType::I64, vec![1, 3], vec![4, 0, 2]);
    check_args(
        Op::Gather,
        attrs([("axis", Attr::Int(0))]),
        &[
            Arg::W(DType::Q6K, vec![5, 512], wq),
            Arg::In(tt(DType::I64, &["1", "seq"]), ids),
        ],
        0.0,
        0.0,
    );
    // A Q6_K table of whole groups of 16 rows: read packed, exactly.
    let wq = quant_bytes(&mut r, DType::Q6K, 32, 512);
    let ids = llmc_ir::Tensor::from_i64(DType::I64, vec![1, 4], vec![17, 0, 31, -1]);
    let text = check_args(
        Op::Gather,
        attrs([("axis", Attr::Int(0))]),
        &[
            Arg::W(DType::Q6K, vec![32, 512], wq),
            Arg::In(tt(DType::I64, &["1", "seq"]), ids),
        ],
        0.0,
        0.0,
    );
    assert!(text.contains("% 16"), "Q6_K: not the packed gather\n{text}");
    // IQ4_NL (and Q5_1's fifth bits) the same: the levels looked up from the packed
    // nibbles.
    for d in [DType::IQ4NL, DType::Q5_1] {
        let wq = quant_bytes(&mut r, d, 32, 96);
        let ids = llmc_ir::Tensor::from_i64(DType::I64, vec![1, 4], vec![17, 0, 31, -1]);
        let text = check_args(
            Op::Gather,
            attrs([("axis", Attr::Int(0))]),
            &[
                Arg::W(d, vec![32, 96], wq),
                Arg::In(tt(DType::I64, &["1", "seq"]), ids),
            ],
            0.0,
            0.0,
        );
        assert!(text.contains("% 16"), "{d}: not the packed gather\n{text}");
    }
    // 48 rows: packed in tiles of 16 (the fifth bits as masks).
    for (rows, n, k) in [
        (1usize, 40usize, 256usize),
        (9, 33, 512),
        (1, 48, 256),
        (5, 48, 512),
    ] {
        let x = r.tensor(F, &[rows, k], 1.0);
        let wq = quant_bytes(&mut r, DType::Q5K, n, k);
        check_quant_linear(&x, rows, DType::Q5K, n, k, &wq, None);
    }
    for (d, k) in [
        (DType::IQ4NL, 96usize),
        (DType::IQ4XS, 512),
        (DType::Q4_0G64, 192),
        (DType::Q4_1G64, 64),
        (DType::Q4_0G128, 384),
        (DType::Q4_1G128, 256),
        (DType::Q8_0S24, 96),
        (DType::Q8_0S832, 96),
    ] {
        // 48 rows: the int4 groups packed in tiles of 16.
        for (rows, n) in [(1usize, 40usize), (9, 33), (1, 48), (5, 48)] {
            let x = r.tensor(F, &[rows, k], 1.0);
            let wq = quant_bytes(&mut r, d, n, k);
            check_quant_linear(&x, rows, d, n, k, &wq, None);
        }
        let wq = quant_bytes(&mut r, d, 5, k);
        let ids = llmc_ir::Tensor::from_i64(DType::I64, vec![1, 3], vec![4, 0, 2]);
        check_args(
            Op::Gather,
            attrs([("axis", Attr::Int(0))]),
            &[
                Arg::W(d, vec![5, k], wq),
                Arg::In(tt(DType::I64, &["1", "seq"]), ids),
            ],
            0.0,
            0.0,
        );
    }
    let wq = quant_bytes(&mut r, DType::Q5K, 5, 512);
    let ids = llmc_ir::Tensor::from_i64(DType::I64, vec![1, 3], vec![4, 0, 2]);
    check_args(
        Op::Gather,
        attrs([("axis", Attr::Int(0))]),
        &[
            Arg::W(DType::Q5K, vec![5, 512], wq),
            Arg::In(tt(DType::I64, &["1", "seq"]), ids),
        ],
        0.0,
        0.0,
    );
    let wq = quant_bytes(&mut r, DType::Q4K, 5, 512);
    let ids = llmc_ir::Tensor::from_i64(DType::I64, vec![1, 3], vec![4, 0, 2]);
    check_args(
        Op::Gather,
        attrs([("axis", Attr::Int(0))]),
        &[
            Arg::W(DType::Q4K, vec![5, 512], wq),
            Arg::In(tt(DType::I64, &["1", "seq"]), ids),
        ],
        0.0,
        0.0,
    );
    // A quantized gather (embedding lookup) and a quantized elementwise operand.
    let wq = quant_bytes(&mut r, DType::Q4_1, 6, 64);
    let ids = llmc_ir::Tensor::from_i64(DType::I64, vec![1, 3], vec![5, 0, 2]);
    check_args(
        Op::Gather,
        attrs([("axis", Attr::Int(0))]),
        &[
            Arg::W(DType::Q4_1, vec![6, 64], wq),
            Arg::In(tt(DType::I64, &["1", "seq"]), ids),
        ],
        0.0,
        0.0,
    );
    let wq = quant_bytes(&mut r, DType::Q8_0, 2, 32);
    let x = r.tensor(F, &[2, 32], 1.0);
    check_args(
        Op::Mul,
        attrs([]),
        &[
            Arg::In(tt(F, &["2", "32"]), x),
            Arg::W(DType::Q8_0, vec![2, 32], wq),
        ],
        0.0,
        0.0,
    );
}

#[test]
fn layout_ops() {
    let mut r = Rng::new(9);
    let x = r.tensor(F, &[2, 3, 4], 1.0);
    let ty = tt(F, &["2", "seq", "4"]);
    check(
        Op::Transpose,
        attrs([("perm", Attr::Ints(vec![2, 0, 1]))]),
        &[(ty.clone(), x.clone())],
        0.0,
        0.0,
    );
    check(
        Op::Transpose,
        attrs([("perm", Attr::Ints(vec![0, 2, 1]))]),
        &[(ty.clone(), x.clone())],
        0.0,
        0.0,
    );
    let sym = |d: &[&str]| Attr::Shape(tt(F, d).shape);
    check(
        Op::Expand,
        attrs([("shape", sym(&["3", "2", "1", "4"]))]),
        &[(tt(F, &["2", "3", "4"]), x.clone())],
        0.0,
        0.0,
    );
    check(
        Op::Tile,
        attrs([("repeats", Attr::Ints(vec![1, 2, 3]))]),
        &[(ty.clone(), x.clone())],
        0.0,
        0.0,
    );
    for (upper, k) in [(true, 1), (false, 0), (false, -1)] {
        check(
            Op::Trilu,
            attrs([("upper", Attr::Bool(upper)), ("k", Attr::Int(k))]),
            &[(ty.clone(), x.clone())],
            0.0,
            0.0,
        );
    }
    check(
        Op::Pad,
        attrs([
            ("pads", Attr::Ints(vec![1, 0, -1, 0, 2, 1])),
            ("value", Attr::Float(1.5)),
        ]),
        &[(ty.clone(), x.clone())],
        0.0,
        0.0,
    );
    let sl = |st: &[i64], en: &[i64], ax: &[i64], sp: &[i64]| {
        attrs([
            ("starts", Attr::Ints(st.to_vec())),
            ("ends", Attr::Ints(en.to_vec())),
            ("axes", Attr::Ints(ax.to_vec())),
            ("steps", Attr::Ints(sp.to_vec())),
        ])
    };
    check(
        Op::Slice,
        sl(&[-1], &[i64::MIN], &[2], &[-1]),
        &[(ty.clone(), x.clone())],
        0.0,
        0.0,
    );
    check(
        Op::Slice,
        sl(&[1, 0], &[i64::MAX, 100], &[1, -1], &[1, 3]),
        &[(ty.clone(), x.clone())],
        0.0,
        0.0,
    );
    check(
        Op::Slice,
        sl(&[-2], &[i64::MAX], &[1], &[1]),
        &[(ty.clone(), x.clone())],
        0.0,
        0.0,
    );
    let ids = llmc_ir::Tensor::from_i64(DType::I64, vec![2, 2], vec![0, 2, -1, 1]);
    check(
        Op::Gather,
        attrs([("axis", Attr::Int(1))]),
        &[
            (tt(F, &["2", "3", "4"]), x.clone()),
            (tt(DType::I64, &["2", "2"]), ids),
        ],
        0.0,
        0.0,
    );
    let ix = r.ints(DType::I64, &[2, 2, 4], -3, 3);
    check(
        Op::GatherElements,
        attrs([("axis", Attr::Int(1))]),
        &[
            (tt(F, &["2", "3", "4"]), x.clone()),
            (tt(DType::I64, &["2", "2", "4"]), ix),
        ],
        0.0,
        0.0,
    );
    let y = r.tensor(F, &[2, 1, 4], 1.0);
    check(
        Op::Concat,
        attrs([("axis", Attr::Int(1))]),
        &[(ty.clone(), x.clone()), (tt(F, &["2", "1", "4"]), y)],
        0.0,
        0.0,
    );
    check(
        Op::Split,
        attrs([("axis", Attr::Int(2)), ("sizes", Attr::Ints(vec![1, 3]))]),
        &[(ty, x)],
        0.0,
        0.0,
    );
    let _ = Shape::of(&[]);
}

#[test]
fn norms_rope_attention() {
    let mut r = Rng::new(10);
    let x = r.tensor(F, &[2, 3, 6], 2.0);
    let w = r.tensor(F, &[6], 1.0);
    let b = r.tensor(F, &[6], 1.0);
    let xt = tt(F, &["2", "seq", "6"]);
    check(
        Op::RmsNorm,
        attrs([("eps", Attr::Float(1e-5))]),
        &[(xt.clone(), x.clone()), (tt(F, &["6"]), w.clone())],
        1e-5,
        1e-5,
    );
    check(
        Op::LayerNorm,
        attrs([("eps", Attr::Float(1e-3))]),
        &[
            (xt.clone(), x.clone()),
            (tt(F, &["6"]), w.clone()),
            (tt(F, &["6"]), b),
        ],
        1e-5,
        1e-5,
    );
    let xr = r.tensor(F, &[2, 2, 3, 8], 2.0);
    let pos = r.ints(DType::I64, &[2, 3], 0, 40);
    let pos1 = r.ints(DType::I64, &[1, 3], 0, 40);
    let xrt = tt(F, &["2", "2", "seq", "8"]);
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
            a,
            &[
                (xrt.clone(), xr.clone()),
                (tt(DType::I64, &["2", "seq"]), pos.clone()),
            ],
            1e-5,
            1e-5,
        );
    }
    let a = attrs([
        ("theta", Attr::Float(100.0)),
        ("dims", Attr::Int(6)),
        ("scale", Attr::Float(4.0)),
        ("style", Attr::Str("interleaved".into())),
    ]);
    check(
        Op::Rope,
        a,
        &[
            (xrt.clone(), xr.clone()),
            (tt(DType::I64, &["1", "seq"]), pos1),
        ],
        1e-5,
        1e-5,
    );
    // Positions on both sides of the end of the f32 kernel's cos/sin table (4096):
    // table rows and computed angles agree with the reference alike.
    let far = llmc_ir::Tensor::from_i64(
        DType::I64,
        vec![2, 3],
        vec![4094, 4095, 4096, 0, 9000, 4097],
    );
    check(
        Op::Rope,
        attrs([("theta", Attr::Float(10000.0)), ("scale", Attr::Float(2.0))]),
        &[(xrt, xr), (tt(DType::I64, &["2", "seq"]), far)],
        1e-5,
        1e-5,
    );
    let q = r.tensor(F, &[1, 4, 2, 3], 1.0);
    let k = r.tensor(F, &[1, 2, 5, 3], 1.0);
    let v = r.tensor(F, &[1, 2, 5, 3], 1.0);
    let mask = llmc_ir::Tensor::from_f64(
        F,
        vec![2, 5],
        vec![
            0.0,
            -1.0,
            f64::NEG_INFINITY,
            0.5,
            0.0,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ],
    );
    let qt = tt(F, &["1", "4", "seq", "3"]);
    let kt = tt(F, &["1", "2", "t", "3"]);
    for causal in [false, true] {
        let a = attrs([("scale", Attr::Float(0.5)), ("causal", Attr::Bool(causal))]);
        check(
            Op::Attention,
            a.clone(),
            &[
                (qt.clone(), q.clone()),
                (kt.clone(), k.clone()),
                (kt.clone(), v.clone()),
            ],
            1e-5,
            1e-5,
        );
        check(
            Op::Attention,
            a,
            &[
                (qt.clone(), q.clone()),
                (kt.clone(), k.clone()),
                (kt.clone(), v.clone()),
                (tt(F, &["seq", "t"]), mask.clone()),
            ],
            1e-5,
            1e-5,
        );
    }
    // More queries than keys: early queries see nothing under the causal rule.
    let q6 = r.tensor(F, &[1, 2, 6, 3], 1.0);
    let a = attrs([("scale", Attr::Float(0.5)), ("causal", Attr::Bool(true))]);
    check(
        Op::Attention,
        a,
        &[(tt(F, &["1", "2", "6", "3"]), q6), (kt.clone(), k), (kt, v)],
        1e-5,
        1e-5,
    );
}

#[test]
fn kernels_print_readably() {
    let mut r = Rng::new(11);
    let a = r.tensor(F, &[2, 4], 1.0);
    let b = r.tensor(F, &[4], 1.0);
    let text = check(
        Op::Add,
        attrs([]),
        &[(tt(F, &["seq", "4"]), a), (tt(F, &["4"]), b)],
        0.0,
        0.0,
    );
    assert!(
        text.starts_with("kernel add(in %in0: f32, in %in1: f32, out %out: f32; $seq) {"),
        "{text}"
    );
    assert!(text.contains("vectorize(8) for"), "{text}");
}

#[test]
fn newer_elementwise_ops() {
    let mut r = Rng::new(12);
    let x = r.tensor(F, &[2, 5], 3.0);
    let y = llmc_ir::Tensor::from_f64(F, vec![5], vec![1.5, -2.0, 0.7, -0.3, 2.5]);
    check(
        Op::Atan,
        attrs([]),
        &[(tt(F, &["2", "5"]), x.clone())],
        1e-6,
        1e-6,
    );
    for fmod in [false, true] {
        let a = attrs([("fmod", Attr::Bool(fmod))]);
        check(
            Op::Mod,
            a,
            &[(tt(F, &["2", "5"]), x.clone()), (tt(F, &["5"]), y.clone())],
            1e-6,
            1e-6,
        );
    }
    let m = llmc_ir::Tensor::from_i64(DType::I64, vec![6], vec![7, -7, 7, -7, 0, 5]);
    let n = llmc_ir::Tensor::from_i64(DType::I64, vec![6], vec![3, 3, -3, -3, 4, 5]);
    for fmod in [false, true] {
        let a = attrs([("fmod", Attr::Bool(fmod))]);
        check(
            Op::Mod,
            a,
            &[
                (tt(DType::I64, &["6"]), m.clone()),
                (tt(DType::I64, &["6"]), n.clone()),
            ],
            0.0,
            0.0,
        );
    }
    let a8 = llmc_ir::Tensor::from_i64(DType::I32, vec![6], vec![5, -6, 12, -1, 255, 3]);
    let b8 = llmc_ir::Tensor::from_i64(DType::I32, vec![6], vec![3, 1, 40, -2, 4, 31]);
    for op in [Op::BitwiseAnd, Op::BitwiseOr, Op::BitwiseXor] {
        check(
            op,
            attrs([]),
            &[
                (tt(DType::I32, &["6"]), a8.clone()),
                (tt(DType::I32, &["6"]), b8.clone()),
            ],
            0.0,
            0.0,
        );
    }
    check(
        Op::BitwiseNot,
        attrs([]),
        &[(tt(DType::I32, &["6"]), a8.clone())],
        0.0,
        0.0,
    );
    for dir in ["left", "right"] {
        let a = attrs([("direction", Attr::Str(dir.into()))]);
        check(
            Op::BitShift,
            a,
            &[
                (tt(DType::I32, &["6"]), a8.clone()),
                (tt(DType::I32, &["6"]), b8.clone()),
            ],
            0.0,
            0.0,
        );
    }
    let u = llmc_ir::Tensor::from_i64(DType::U8, vec![4], vec![255, 1, 128, 7]);
    let s = llmc_ir::Tensor::from_i64(DType::U8, vec![4], vec![1, 7, 9, 0]);
    for dir in ["left", "right"] {
        let a = attrs([("direction", Attr::Str(dir.into()))]);
        check(
            Op::BitShift,
            a,
            &[
                (tt(DType::U8, &["4"]), u.clone()),
                (tt(DType::U8, &["4"]), s.clone()),
            ],
            0.0,
            0.0,
        );
    }
    for (ex, rev) in [(false, false), (true, true)] {
        let a = attrs([
            ("axis", Attr::Int(1)),
            ("exclusive", Attr::Bool(ex)),
            ("reverse", Attr::Bool(rev)),
        ]);
        check(
            Op::CumProd,
            a,
            &[(tt(F, &["2", "5"]), x.clone())],
            1e-6,
            1e-6,
        );
    }
}

#[test]
fn indexing_ops() {
    let mut r = Rng::new(13);
    let d = r.tensor(F, &[3, 4, 2], 1.0);
    let ix = llmc_ir::Tensor::from_i64(DType::I64, vec![2, 2], vec![0, 1, -1, 3]);
    check(
        Op::GatherNd,
        attrs([]),
        &[
            (tt(F, &["3", "4", "2"]), d.clone()),
            (tt(DType::I64, &["2", "2"]), ix.clone()),
        ],
        0.0,
        0.0,
    );
    let ib = llmc_ir::Tensor::from_i64(DType::I64, vec![3, 1], vec![2, 0, 3]);
    check(
        Op::GatherNd,
        attrs([("batch_dims", Attr::Int(1))]),
        &[
            (tt(F, &["3", "4", "2"]), d.clone()),
            (tt(DType::I64, &["3", "1"]), ib),
        ],
        0.0,
        0.0,
    );
    let base = r.tensor(F, &[3, 4], 1.0);
    let upd = r.tensor(F, &[2, 4], 1.0);
    // Duplicate positions: later updates win or accumulate in index order.
    let se = llmc_ir::Tensor::from_i64(DType::I64, vec![2, 4], vec![1, 0, 2, -1, 1, 2, 2, 0]);
    for red in ["none", "add", "mul", "max", "min"] {
        let a = attrs([("axis", Attr::Int(0)), ("reduction", Attr::Str(red.into()))]);
        check(
            Op::ScatterElements,
            a,
            &[
                (tt(F, &["3", "4"]), base.clone()),
                (tt(DType::I64, &["2", "4"]), se.clone()),
                (tt(F, &["2", "4"]), upd.clone()),
            ],
            1e-6,
            1e-6,
        );
    }
    let sn = llmc_ir::Tensor::from_i64(DType::I64, vec![2, 1], vec![2, 2]);
    for red in ["none", "add"] {
        let a = attrs([("reduction", Attr::Str(red.into()))]);
        check(
            Op::ScatterNd,
            a,
            &[
                (tt(F, &["3", "4"]), base.clone()),
                (tt(DType::I64, &["2", "1"]), sn.clone()),
                (tt(F, &["2", "4"]), upd.clone()),
            ],
            1e-6,
            1e-6,
        );
    }
    let v = llmc_ir::Tensor::from_f64(
        F,
        vec![2, 5],
        vec![3.0, f64::NAN, 1.0, 3.0, -2.0, 0.5, 0.5, 0.5, 9.0, -1.0],
    );
    for largest in [true, false] {
        let a = attrs([("k", Attr::Int(3)), ("largest", Attr::Bool(largest))]);
        check(Op::TopK, a, &[(tt(F, &["2", "5"]), v.clone())], 0.0, 0.0);
    }
    let a = attrs([("k", Attr::Int(2)), ("axis", Attr::Int(0))]);
    check(Op::TopK, a, &[(tt(F, &["2", "5"]), v)], 0.0, 0.0);
}

#[test]
fn convolution_and_pooling() {
    let mut r = Rng::new(14);
    let x = r.tensor(F, &[2, 4, 5, 6], 1.0);
    let w = r.tensor(F, &[6, 2, 3, 2], 1.0);
    let b = r.tensor(F, &[6], 1.0);
    let a = attrs([
        ("group", Attr::Int(2)),
        ("strides", Attr::Ints(vec![2, 1])),
        ("pads", Attr::Ints(vec![1, 0, 1, 1])),
        ("dilations", Attr::Ints(vec![1, 2])),
    ]);
    check(
        Op::Conv,
        a,
        &[
            (tt(F, &["batch", "4", "5", "6"]), x.clone()),
            (tt(F, &["6", "2", "3", "2"]), w),
            (tt(F, &["6"]), b),
        ],
        1e-5,
        1e-5,
    );
    let wt = r.tensor(F, &[4, 3, 3, 2], 1.0);
    let a = attrs([
        ("group", Attr::Int(2)),
        ("strides", Attr::Ints(vec![2, 3])),
        ("pads", Attr::Ints(vec![1, 0, 0, 1])),
        ("output_padding", Attr::Ints(vec![1, 0])),
    ]);
    check(
        Op::ConvTranspose,
        a,
        &[
            (tt(F, &["2", "4", "5", "6"]), x.clone()),
            (tt(F, &["4", "3", "3", "2"]), wt),
        ],
        1e-5,
        1e-5,
    );
    for (op, include) in [
        (Op::MaxPool, false),
        (Op::AvgPool, false),
        (Op::AvgPool, true),
    ] {
        let a = attrs([
            ("kernel", Attr::Ints(vec![3, 2])),
            ("strides", Attr::Ints(vec![2, 2])),
            ("pads", Attr::Ints(vec![1, 1, 1, 0])),
            ("ceil_mode", Attr::Bool(true)),
            ("count_include_pad", Attr::Bool(include)),
        ]);
        let a = if op == Op::MaxPool {
            let mut a = a;
            a.remove("count_include_pad");
            a
        } else {
            a
        };
        check(
            op,
            a,
            &[(tt(F, &["2", "4", "5", "6"]), x.clone())],
            1e-6,
            1e-6,
        );
    }
}

#[test]
fn resize_modes() {
    let mut r = Rng::new(15);
    let x = r.tensor(F, &[1, 2, 3, 4], 2.0);
    let shape = |d: &[i64]| Attr::Shape(Shape::of(d));
    let cases: Vec<llmc_ir::Attrs> = vec![
        attrs([
            ("mode", Attr::Str("linear".into())),
            (
                "scales",
                Attr::Floats(vec![1.0, 1.0, 1.6666666666666667, 0.5]),
            ),
            ("sizes", shape(&[1, 2, 5, 2])),
        ]),
        attrs([
            (
                "coordinate_transformation_mode",
                Attr::Str("asymmetric".into()),
            ),
            ("nearest_mode", Attr::Str("floor".into())),
            ("scales", Attr::Floats(vec![1.0, 1.0, 2.5, 1.0])),
            ("sizes", shape(&[1, 2, 7, 4])),
        ]),
        attrs([
            ("mode", Attr::Str("cubic".into())),
            ("scales", Attr::Floats(vec![1.0, 1.0, 2.0, 1.5])),
            ("sizes", shape(&[1, 2, 6, 6])),
        ]),
        attrs([
            ("mode", Attr::Str("linear".into())),
            ("antialias", Attr::Bool(true)),
            (
                "scales",
                Attr::Floats(vec![1.0, 1.0, 0.6666666666666666, 0.5]),
            ),
            ("sizes", shape(&[1, 2, 2, 2])),
        ]),
        attrs([
            ("mode", Attr::Str("linear".into())),
            (
                "coordinate_transformation_mode",
                Attr::Str("tf_crop_and_resize".into()),
            ),
            (
                "roi",
                Attr::Floats(vec![0.0, 0.0, -0.2, 0.1, 1.0, 1.0, 1.3, 0.9]),
            ),
            ("extrapolation_value", Attr::Float(7.5)),
            ("scales", Attr::Floats(vec![1.0, 1.0, 1.0, 1.0])),
            ("sizes", shape(&[1, 2, 3, 4])),
        ]),
    ];
    for a in cases {
        check(
            Op::Resize,
            a,
            &[(tt(F, &["1", "2", "3", "4"]), x.clone())],
            1e-6,
            1e-6,
        );
    }
    let u = r.ints(DType::U8, &[1, 1, 2, 3], 0, 256);
    let a = attrs([
        ("mode", Attr::Str("cubic".into())),
        ("scales", Attr::Floats(vec![1.0, 1.0, 2.0, 2.0])),
        ("sizes", shape(&[1, 1, 4, 6])),
    ]);
    check(
        Op::Resize,
        a,
        &[(tt(DType::U8, &["1", "1", "2", "3"]), u)],
        0.0,
        0.0,
    );
}

#[test]
fn flash_attention_matches_the_reference() {
    let mut r = Rng::new(12);
    // GQA (4 query heads over 2 kv heads), 7 keys: tiles of 1, 2, 3 and 64 keys give
    // full, partial and single tiles.
    let q = r.tensor(F, &[2, 4, 3, 5], 1.0);
    let k = r.tensor(F, &[2, 2, 7, 5], 1.0);
    let v = r.tensor(F, &[2, 2, 7, 3], 1.0);
    let mut mv = Vec::new();
    for i in 0..21 {
        mv.push(match i % 5 {
            0 => f64::NEG_INFINITY,
            1 => -1.5,
            _ => 0.25 * (i % 3) as f64,
        });
    }
    let mask = llmc_ir::Tensor::from_f64(F, vec![3, 7], mv);
    let qt = tt(F, &["2", "4", "seq", "5"]);
    let kt = tt(F, &["2", "2", "t", "5"]);
    let vt = tt(F, &["2", "2", "t", "3"]);
    for block_k in [1, 2, 3, 64] {
        for causal in [false, true] {
            let a = attrs([
                ("scale", Attr::Float(0.45)),
                ("causal", Attr::Bool(causal)),
                ("block_k", Attr::Int(block_k)),
            ]);
            let base = [
                (qt.clone(), q.clone()),
                (kt.clone(), k.clone()),
                (vt.clone(), v.clone()),
            ];
            check(Op::FlashAttention, a.clone(), &base, 1e-5, 1e-5);
            let mut masked = base.to_vec();
            masked.push((tt(F, &["seq", "t"]), mask.clone()));
            check(Op::FlashAttention, a, &masked, 1e-5, 1e-5);
        }
    }
    // More queries than keys: early queries see no key under the causal rule (zeros).
    let q6 = r.tensor(F, &[1, 2, 9, 5], 1.0);
    let k1 = r.tensor(F, &[1, 1, 4, 5], 1.0);
    let v1 = r.tensor(F, &[1, 1, 4, 3], 1.0);
    let a = attrs([
        ("scale", Attr::Float(0.5)),
        ("causal", Attr::Bool(true)),
        ("block_k", Attr::Int(2)),
    ]);
    check(
        Op::FlashAttention,
        a,
        &[
            (tt(F, &["1", "2", "9", "5"]), q6),
            (tt(F, &["1", "1", "t", "5"]), k1),
            (tt(F, &["1", "1", "t", "3"]), v1),
        ],
        1e-5,
        1e-5,
    );
}

/// The tile form (f32, queries in lanes): several query tiles of 32 and key tiles of
/// 64 with partial ones at both ends, GQA, causal with more keys than queries (a KV
/// prefix) and more queries than keys, sliding windows, soft-capping, an additive mask
/// with a key stride and fully masked rows.
#[test]
fn flash_attention_tiles_match_the_reference() {
    let mut r = Rng::new(91);
    for &(s, t, causal, window, cap, masked) in &[
        (70usize, 150usize, false, 0i64, 0.0f64, false),
        (70, 150, true, 0, 0.0, true),
        (33, 33, true, 20, 30.0, false),
        (100, 40, true, 0, 0.0, false),
        (5, 200, false, 0, 0.0, true),
        (64, 130, true, 50, 0.0, true),
    ] {
        let q = r.tensor(F, &[2, 4, s, 16], 1.0);
        let k = r.tensor(F, &[2, 2, t, 16], 1.0);
        let v = r.tensor(F, &[2, 2, t, 24], 1.0);
        let mut a = attrs([("scale", Attr::Float(0.3)), ("causal", Attr::Bool(causal))]);
        if window > 0 {
            a.insert("window".into(), Attr::Int(window));
        }
        if cap > 0.0 {
            a.insert("softcap".into(), Attr::Float(cap));
        }
        let mut ins = vec![
            (tt(F, &["2", "4", "seq", "16"]), q),
            (tt(F, &["2", "2", "t", "16"]), k),
            (tt(F, &["2", "2", "t", "24"]), v),
        ];
        if masked {
            // Batch 1 masks its first 70 keys (every key for short rows of t = 40);
            // the others get small additive biases.
            let mv: Vec<f64> = (0..2 * t)
                .map(|i| match (i / t, i % t) {
                    (1, j) if j < 70 => f64::NEG_INFINITY,
                    (_, j) => 0.1 * (j % 5) as f64,
                })
                .collect();
            let mask = llmc_ir::Tensor::from_f64(F, vec![2, 1, 1, t], mv);
            ins.push((tt(F, &["2", "1", "1", "t"]), mask));
        }
        check(Op::FlashAttention, a, &ins, 1e-5, 1e-5);
    }
}

/// `causal_fill`: a left-padded batch (padding as an additive f32::MIN mask): the first
/// queries of the padded row see only masked keys and, as in the unfused where-mask,
/// spread over every key; the kernel agrees with the reference on every row, and the
/// fully masked rows differ from plain causal (so the fill path is exercised).
#[test]
fn flash_attention_causal_fill_keeps_fully_masked_rows() {
    let mut r = Rng::new(77);
    let (b, s) = (2usize, 5usize);
    let q = r.tensor(F, &[b, 2, s, 4], 1.0);
    let k = r.tensor(F, &[b, 1, s, 4], 1.0);
    let v = r.tensor(F, &[b, 1, s, 3], 1.0);
    let min = f64::from(f32::MIN);
    // Batch 0 unpadded, batch 1 left-padded by 2 keys.
    let pad: Vec<f64> = (0..b * s)
        .map(|i| if i / s == 1 && i % s < 2 { min } else { 0.0 })
        .collect();
    let mask = llmc_ir::Tensor::from_f64(F, vec![b, 1, 1, s], pad);
    let ins = [
        (tt(F, &["2", "2", "seq", "4"]), q.clone()),
        (tt(F, &["2", "1", "seq", "4"]), k.clone()),
        (tt(F, &["2", "1", "seq", "3"]), v.clone()),
        (tt(F, &["2", "1", "1", "seq"]), mask.clone()),
    ];
    for block_k in [1, 2, 64] {
        let a = attrs([
            ("scale", Attr::Float(0.5)),
            ("causal", Attr::Bool(true)),
            ("causal_fill", Attr::Float(min)),
            ("block_k", Attr::Int(block_k)),
        ]);
        check(Op::FlashAttention, a, &ins, 1e-5, 1e-5);
    }
    let eval = |fill: bool| {
        let mut a = attrs([("scale", Attr::Float(0.5)), ("causal", Attr::Bool(true))]);
        if fill {
            a.insert("causal_fill".into(), Attr::Float(min));
        }
        let mut ctx = llmc_ir::interp::EvalCtx::default();
        Op::FlashAttention
            .eval(&[&q, &k, &v, &mask], &a, &mut ctx)
            .unwrap_or_else(|e| panic!("{e}"))[0]
            .to_f64()
    };
    let (with, without) = (eval(true), eval(false));
    // Batch 1, head 0, query 0: every visible key padded: the mean of all 5 v rows.
    let at = (2 * s) * 3;
    let vals = v.to_f64();
    for c in 0..3 {
        let mean = (0..s).map(|j| vals[(s + j) * 3 + c]).sum::<f64>() / s as f64;
        // The result is rounded to f32.
        assert!(
            (with[at + c] - mean).abs() < 1e-6,
            "{} vs {mean}",
            with[at + c]
        );
    }
    assert_ne!(with[at..at + 3], without[at..at + 3]);
    // Rows with a visible unpadded key are the same either way.
    assert_eq!(with[..2 * s * 3], without[..2 * s * 3]);
}

/// Block `b` (of 32) of a GGUF row as numbers: each element's scale, each element's
/// minimum (Q4_0: -8 d; Q8_0, Q6_K: 0), 32 integer quants. Q4_K's scales come from
/// the reference decoder's unpacking; Q6_K's and Q2_K's are written out from
/// llama.cpp's layout.
fn row_block_values(d: DType, row: &[u8], b: usize) -> (Vec<f64>, Vec<f64>, Vec<i64>) {
    if d == DType::Q2K {
        let sb = &row[b / 8 * 84..][..84];
        let t = b % 8;
        let (h, k) = (t / 4, t % 4);
        let f16 = |o: usize| half::f16::from_le_bytes([sb[o], sb[o + 1]]).to_f64();
        let q = (0..32)
            .map(|e| ((sb[16 + 32 * h + e] >> (2 * k)) & 3) as i64)
            .collect();
        let byte = |e: usize| sb[2 * t + e / 16];
        let scales = (0..32).map(|e| f16(80) * (byte(e) & 15) as f64).collect();
        let mins = (0..32)
            .map(|e| -(f16(82) * (byte(e) >> 4) as f64))
            .collect();
        return (scales, mins, q);
    }
    if d == DType::Q3K {
        let sb = &row[b / 8 * 110..][..110];
        let t = b % 8;
        let (h, k) = (t / 4, t % 4);
        let dd = half::f16::from_le_bytes([sb[108], sb[109]]).to_f64();
        let s = llmc_ir::quant_k::q3k_scales(&sb[96..108]);
        let q = (0..32)
            .map(|e| {
                let lo = ((sb[32 + 32 * h + e] >> (2 * k)) & 3) as i64;
                let set = (sb[e] >> (4 * h + k)) & 1 == 1;
                lo - if set { 0 } else { 4 }
            })
            .collect();
        let scales = (0..32).map(|e| dd * s[2 * t + e / 16] as f64).collect();
        return (scales, vec![0.0; 32], q);
    }
    if d == DType::Q6K {
        let sb = &row[b / 8 * 210..][..210];
        let (h, c) = (b % 8 / 4, b % 4);
        let dd = half::f16::from_le_bytes([sb[208], sb[209]]).to_f64();
        let q = (0..32)
            .map(|e| {
                let lo = (sb[64 * h + 32 * (c % 2) + e] >> (4 * (c / 2))) & 15;
                let hi = (sb[128 + 32 * h + e] >> (2 * c)) & 3;
                (lo | hi << 4) as i64 - 32
            })
            .collect();
        let scales = (0..32)
            .map(|e| dd * sb[192 + 8 * h + 2 * c + e / 16] as i8 as f64)
            .collect();
        return (scales, vec![0.0; 32], q);
    }
    let (scale, m, q) = block32_values(d, row, b);
    (vec![scale; 32], vec![m; 32], q)
}

/// [`row_block_values`] for formats with one scale per block of 32.
fn block32_values(d: DType, row: &[u8], b: usize) -> (f64, f64, Vec<i64>) {
    let kv = |n: u8| llmc_ir::quant::KVALUES_IQ4NL[n as usize] as i64;
    let levels = |qs: &[u8]| -> Vec<i64> {
        (0..32)
            .map(|e| kv(if e < 16 { qs[e] & 15 } else { qs[e - 16] >> 4 }))
            .collect()
    };
    if d == DType::IQ4XS {
        let sb = &row[b / 8 * 136..][..136];
        let j = b % 8;
        let dd = half::f16::from_le_bytes([sb[0], sb[1]]).to_f64();
        let sh = u16::from_le_bytes([sb[2], sb[3]]);
        let ls =
            ((sb[4 + j / 2] >> (4 * (j % 2))) & 15) as i64 | (((sh >> (2 * j)) & 3) as i64) << 4;
        return (dd * (ls - 32) as f64, 0.0, levels(&sb[8 + 16 * j..][..16]));
    }
    if d == DType::IQ4NL {
        let blk = &row[b * 18..][..18];
        let dd = half::f16::from_le_bytes([blk[0], blk[1]]).to_f64();
        return (dd, 0.0, levels(&blk[2..18]));
    }
    if d == DType::Q4K || d == DType::Q5K {
        let bb = d.block_bytes();
        let sb = &row[b / 8 * bb..][..bb];
        let j = b % 8;
        let f16 = |o: usize| half::f16::from_le_bytes([sb[o], sb[o + 1]]).to_f64();
        let (sc, mn) = llmc_ir::quant_k::scale_min_k4(j, &sb[4..16]);
        let qs = if d == DType::Q5K { 48 } else { 16 };
        let q = (0..32)
            .map(|e| {
                let nib = ((sb[qs + 32 * (j / 2) + e] >> (4 * (j % 2))) & 15) as i64;
                let high = if d == DType::Q5K {
                    ((sb[16 + e] >> j) & 1) as i64
                } else {
                    0
                };
                nib | high << 4
            })
            .collect();
        return (f16(0) * sc as f64, -(f16(2) * mn as f64), q);
    }
    if d.sparse_keep().is_some() {
        let bb = d.block_bytes();
        let blk = &row[b * bb..][..bb];
        let mask = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
        let mut codes = blk[6..].iter();
        let q = (0..32)
            .map(|e| {
                if (mask >> e) & 1 == 1 {
                    *codes.next().unwrap() as i8 as i64
                } else {
                    0
                }
            })
            .collect();
        let dd = half::f16::from_le_bytes([blk[0], blk[1]]).to_f64();
        return (dd, 0.0, q);
    }
    if let Some((base, hdr)) = match d {
        DType::Q4_0G64 | DType::Q4_0G128 => Some((DType::Q4_0, 2)),
        DType::Q4_1G64 | DType::Q4_1G128 => Some((DType::Q4_1, 4)),
        _ => None,
    } {
        // Block b is sub-block b mod n of group b / n: rebuild it as a Q4_0 / Q4_1 block.
        let (n, bb) = (d.block_len() / 32, d.block_bytes());
        let g = &row[b / n * bb..][..bb];
        let mut blk = g[..hdr].to_vec();
        blk.extend_from_slice(&g[hdr + 16 * (b % n)..][..16]);
        return block_values(base, &blk);
    }
    let bb = d.block_bytes();
    block_values(d, &row[b * bb..][..bb])
}

/// A GGUF block as numbers: scale, minimum (Q4_0: -8 d; Q8_0: 0), 32 integer quants.
fn block_values(d: DType, blk: &[u8]) -> (f64, f64, Vec<i64>) {
    let f16 = |o: usize| half::f16::from_le_bytes([blk[o], blk[o + 1]]).to_f64();
    let scale = f16(0);
    match d {
        DType::Q8_0 => (
            scale,
            0.0,
            (0..32).map(|e| blk[2 + e] as i8 as i64).collect(),
        ),
        _ => {
            // (minimum, quant bytes, fifth bits).
            let (m, qs, qh) = match d {
                DType::Q4_1 => (f16(2), 4, None),
                DType::Q5_0 => (-16.0 * scale, 6, Some(2)),
                DType::Q5_1 => (f16(2), 8, Some(4)),
                _ => (-8.0 * scale, 2, None),
            };
            let q = (0..32)
                .map(|e| {
                    let b = blk[qs + e % 16] as i64;
                    let nib = if e < 16 { b & 15 } else { b >> 4 };
                    let high = qh.map_or(0, |h| {
                        let bits = u32::from_le_bytes([blk[h], blk[h + 1], blk[h + 2], blk[h + 3]]);
                        ((bits >> e) & 1) as i64
                    });
                    nib | high << 4
                })
                .collect();
            (scale, m, q)
        }
    }
}

/// [`check_quant_linear_bits`] with the default int16 activations.
fn check_quant_linear(
    x: &llmc_ir::Tensor,
    rows: usize,
    d: DType,
    n: usize,
    k: usize,
    wq: &[u8],
    bias: Option<&llmc_ir::Tensor>,
) {
    check_quant_linear_bits(x, rows, d, n, k, wq, bias, 16, None);
}

/// Per block of 32 columns of `x` (`[rows, k]`), `share` of its largest |x| over the
/// rows: static activation ranges that some values exceed.
fn static_ranges(x: &llmc_ir::Tensor, k: usize, share: f64) -> Vec<f64> {
    let xv = x.to_f64();
    (0..k / 32)
        .map(|b| {
            let m = xv
                .chunks_exact(k)
                .flat_map(|row| &row[b * 32..b * 32 + 32])
                .fold(0f64, |a, v| a.max(v.abs()));
            (m * share) as f32 as f64
        })
        .collect()
}

/// [`check_quant_linear_bits`] with static scales (`act_amax`).
#[allow(clippy::too_many_arguments)]
fn check_quant_linear_static(
    x: &llmc_ir::Tensor,
    rows: usize,
    d: DType,
    n: usize,
    k: usize,
    wq: &[u8],
    bits: i64,
    ranges: &[f64],
) {
    check_quant_linear_bits(x, rows, d, n, k, wq, None, bits, Some(ranges));
}

/// A quantized `linear` of f32 activations, which it quantizes to int16 (or int8:
/// `act_bits = 8`) per block of 32 (scale amax / 32767 or / 127, round half to even;
/// with `fixed`, the static ranges `act_amax`: each block's amax from there, values
/// beyond it saturating at ±qmax).
/// It must match (a) the same quantized product computed here in f64 within 1e-5 of
/// the sum of the terms' magnitudes (f32 accumulation), and (b) the exact f32
/// reference within the quantization bound Σ_e |w_e| · d_x / 2 per block, plus 1e-4.
#[allow(clippy::too_many_arguments)]
fn check_quant_linear_bits(
    x: &llmc_ir::Tensor,
    rows: usize,
    d: DType,
    n: usize,
    k: usize,
    wq: &[u8],
    bias: Option<&llmc_ir::Tensor>,
    bits: i64,
    fixed: Option<&[f64]>,
) {
    let qmax: f32 = if bits == 8 { 127.0 } else { 32767.0 };
    let mut lin_attrs = if bits == 16 {
        attrs([])
    } else {
        attrs([("act_bits", llmc_ir::Attr::Int(bits))])
    };
    if let Some(f) = fixed {
        lin_attrs.insert("act_amax".into(), llmc_ir::Attr::Floats(f.to_vec()));
    }
    let mut args = vec![
        Arg::In(tt(F, &["seq", &k.to_string()]), x.clone()),
        Arg::W(d, vec![n, k], wq.to_vec()),
    ];
    if let Some(b) = bias {
        args.push(Arg::W(F, vec![n], f32_bytes(b)));
    }
    let (got, want, text) = run_args(Op::Linear, lin_attrs, &args);
    assert!(
        text.contains("qdot") || text.contains("qtile"),
        "{d}, {rows} rows: not the integer path\n{text}"
    );
    let xv = x.to_f64();
    let bv = bias.map(|b| b.to_f64());
    let row_bytes = k / d.block_len() * d.block_bytes();
    let blocks = k / 32;
    for r in 0..rows {
        // The activation row's int16 (int8) blocks.
        let mut xq = Vec::new();
        let mut saturated = false;
        for b in 0..blocks {
            let xs: Vec<f32> = (0..32).map(|e| xv[r * k + b * 32 + e] as f32).collect();
            let amax = match fixed {
                Some(f) => f[b] as f32,
                None => xs.iter().fold(0f32, |a, v| a.max(v.abs())),
            };
            let id = if amax > 0.0 { qmax / amax } else { 0.0 };
            let q: Vec<i64> = xs
                .iter()
                .map(|v| {
                    let q = (v * id).round_ties_even();
                    saturated |= q.abs() > qmax;
                    q.clamp(-qmax, qmax) as i64
                })
                .collect();
            xq.push(((amax / qmax) as f64, q));
        }
        for j in 0..n {
            let (mut exact, mut mag, mut bound) = (0f64, 0f64, 0f64);
            for (b, (dx, q)) in xq.iter().enumerate() {
                let (dw, m, qw) = row_block_values(d, &wq[j * row_bytes..][..row_bytes], b);
                let t1: f64 = (0..32).map(|e| dw[e] * (qw[e] * q[e]) as f64).sum::<f64>() * dx;
                let t2: f64 = (0..32).map(|e| m[e] * q[e] as f64).sum::<f64>() * dx;
                exact += t1 + t2;
                mag += t1.abs() + t2.abs();
                bound += (0..32)
                    .map(|e| (dw[e] * qw[e] as f64 + m[e]).abs())
                    .sum::<f64>()
                    * dx
                    / 2.0;
            }
            if let Some(bv) = &bv {
                exact += bv[j];
                mag += bv[j].abs();
            }
            let g = got[0][r * n + j];
            let w = want[0][r * n + j];
            assert!(
                (g - exact).abs() <= 1e-5 * (1.0 + mag),
                "{d} row {r} col {j}: got {g}, int{bits} product {exact}\n{text}"
            );
            // (Saturated values are outside the rounding bound.)
            assert!(
                saturated || (g - w).abs() <= bound + 1e-4,
                "{d} row {r} col {j}: got {g}, reference {w}, bound {bound}"
            );
        }
    }
}

/// `fused_elementwise`: the loop-IR kernel agrees with the reference (the chain op by
/// op), with broadcast operands and an operand read twice; and it is one loop nest
/// with one store, the nest a single binary op over the same shapes gets.
#[test]
fn fused_elementwise_is_one_loop_nest() {
    let mut r = Rng::new(41);
    let a = r.tensor(F, &[2, 3, 4], 2.0);
    let b = r.tensor(F, &[4], 2.0);
    let c = r.tensor(F, &[3, 1], 2.0);
    let ins = [
        (tt(F, &["batch", "3", "4"]), a.clone()),
        (tt(F, &["4"]), b.clone()),
        (tt(F, &["3", "1"]), c.clone()),
    ];
    let plain = check(
        Op::Add,
        attrs([]),
        &ins[..1]
            .iter()
            .chain(&ins[2..])
            .cloned()
            .collect::<Vec<_>>(),
        0.0,
        0.0,
    );
    // Loops print as `TAG VAR in LO..HI`.
    let loops = |k: &str| {
        k.lines()
            .filter(|l| l.contains(" in ") && l.contains(".."))
            .count()
    };
    assert!(loops(&plain) >= 1, "{plain}");
    let stores = |k: &str| k.lines().filter(|l| l.contains("] = ")).count();
    for expr in [
        "silu(add(mul($0, $1), $2))",
        "add($0, sigmoid(sub($1, $2)))",
        "mul(silu(silu(silu(silu($0)))), add($1, $2))",
        "max(neg($2), tanh(mul($1, add($0, $0))))",
    ] {
        let k = check(
            Op::FusedElementwise,
            attrs([("expr", llmc_ir::Attr::Str(expr.into()))]),
            &ins,
            1e-6,
            1e-6,
        );
        assert_eq!(
            loops(&k),
            loops(&plain),
            "{expr}:\n{k}\nplain add:\n{plain}"
        );
        assert_eq!(stores(&k), 1, "{expr}:\n{k}");
    }
}

/// The reference activation of `act` on one value.
fn act_ref(act: &str, v: f64) -> f64 {
    let a = llmc_ir::ops::fused_gemm::Act::from_name(act).expect("known act");
    let t = llmc_ir::Tensor::from_f64(F, vec![1], vec![v]);
    let mut ctx = llmc_ir::interp::EvalCtx::default();
    a.apply(&t, &mut ctx).expect("activation").to_f64()[0]
}

#[test]
fn linear_act_epilogues_float_and_quantized() {
    let mut r = Rng::new(21);
    for act in ["silu", "gelu", "gelu_tanh", "relu", "tanh", "sigmoid"] {
        let a = attrs([("act", Attr::Str(act.into()))]);
        for (rows, n, k) in [
            (5usize, 7usize, 64usize),
            (1, 9, 32),
            (4, 8, 96),
            (9, 32, 32),
        ] {
            let x = r.tensor(F, &[rows, k], 1.0);
            let w = r.tensor(F, &[n, k], 0.5);
            let b = r.tensor(F, &[n], 1.0);
            // f32 weights: against the reference interpreter directly.
            check_args(
                Op::LinearAct,
                a.clone(),
                &[
                    Arg::In(tt(F, &["seq", &k.to_string()]), x.clone()),
                    Arg::W(F, vec![n, k], f32_bytes(&w)),
                    Arg::W(F, vec![n], f32_bytes(&b)),
                ],
                1e-5,
                1e-5,
            );
            // Block-quantized weights (integer path for decode, dequantized tiles for
            // prefill): the epilogue applied to the plain linear kernel's own output.
            for d in [DType::Q8_0, DType::Q4_1] {
                let wq = quant_bytes(&mut r, d, n, k);
                let args = || {
                    vec![
                        Arg::In(tt(F, &["seq", &k.to_string()]), x.clone()),
                        Arg::W(d, vec![n, k], wq.clone()),
                        Arg::W(F, vec![n], f32_bytes(&b)),
                    ]
                };
                let (lin, _, _) = run_args(Op::Linear, attrs([]), &args());
                let (fused, _, text) = run_args(Op::LinearAct, a.clone(), &args());
                for (j, (g, l)) in fused[0].iter().zip(&lin[0]).enumerate() {
                    let want = act_ref(act, *l);
                    assert!(
                        (g - want).abs() <= 1e-5 + 1e-5 * want.abs(),
                        "{act} {d} element {j}: got {g}, act(linear) {want}\n{text}"
                    );
                }
            }
        }
    }
}

/// `residual = 1`: the store adds the residual last, so the fused kernel's output is
/// the plain kernel's output plus the residual in f32, bit for bit, on every store path
/// (generic tiles, packed f32 panels with their 12/8/4/2/1-row tiles, block formats'
/// integer rows with int16 and int8 activations, and their dequantized prefill tiles),
/// with and without a bias, for `linear` and `linear_act`; and the GPU schedule agrees
/// with the reference.
#[test]
fn linear_residual_is_the_add_of_the_plain_output() {
    let mut r = Rng::new(23);
    for (rows, n, k) in [
        (1usize, 64usize, 64usize),
        (5, 7, 64),
        (13, 64, 96),
        (29, 32, 32),
    ] {
        let x = r.tensor(F, &[rows, k], 1.0);
        let res = r.tensor(F, &[rows, n], 2.0);
        let b = r.tensor(F, &[n], 1.0);
        let ks = k.to_string();
        let ns = n.to_string();
        for d in [F, DType::F16, DType::Q8_0, DType::Q4_1, DType::Q4_0] {
            let wb = match d {
                DType::F32 => f32_bytes(&r.tensor(F, &[n, k], 0.5)),
                DType::F16 => r
                    .tensor(F, &[n, k], 0.5)
                    .to_f64()
                    .iter()
                    .flat_map(|v| half::f16::from_f64(*v).to_le_bytes())
                    .collect(),
                _ => quant_bytes(&mut r, d, n, k),
            };
            for bias in [false, true] {
                for (op, act_bits) in [
                    (Op::Linear, None),
                    (Op::LinearAct, None),
                    (Op::Linear, Some(8)),
                ] {
                    if act_bits.is_some() && !d.is_quantized() {
                        continue;
                    }
                    let mut a = attrs([]);
                    if op == Op::LinearAct {
                        a.insert("act".into(), Attr::Str("silu".into()));
                    }
                    if let Some(bits) = act_bits {
                        a.insert("act_bits".into(), Attr::Int(bits));
                    }
                    let mut args = vec![
                        Arg::In(tt(F, &["seq", &ks]), x.clone()),
                        Arg::W(d, vec![n, k], wb.clone()),
                    ];
                    if bias {
                        args.push(Arg::W(F, vec![n], f32_bytes(&b)));
                    }
                    let (plain, _, _) = run_args(op, a.clone(), &args);
                    args.push(Arg::In(tt(F, &["seq", &ns]), res.clone()));
                    let mut fa = a.clone();
                    fa.insert("residual".into(), Attr::Int(1));
                    let (fused, _, text) = run_args(op, fa.clone(), &args);
                    let rv = res.to_f64();
                    for (j, (g, p)) in fused[0].iter().zip(&plain[0]).enumerate() {
                        let want = f64::from(*p as f32 + rv[j] as f32);
                        assert_eq!(
                            *g, want,
                            "{op} {d} bias {bias} {rows}x{n}x{k} element {j}\n{text}"
                        );
                    }
                    if d == F {
                        check_args(op, fa.clone(), &args, 1e-5, 1e-5);
                        super::testing::check_args_on(true, op, fa, &args, 1e-5, 1e-5);
                    }
                }
            }
        }
    }
}

/// `glu` on `linear`: the store's act(gate) · up is the `glu` kernel applied to the
/// plain kernel's output, bit for bit, through the packed f32/f16 panels (gate and up
/// rows paired in one panel) and the generic tiles (an n that is not whole panels),
/// with and without a bias; and it and the GPU's warp GEMV (each warp a gate row and
/// its up row) agree with the reference.
#[test]
fn linear_glu_is_the_glu_of_the_plain_output() {
    let mut r = Rng::new(24);
    for (rows, n, k) in [
        (1usize, 64usize, 64usize),
        (13, 64, 96),
        (5, 10, 32),
        (29, 96, 32),
    ] {
        let x = r.tensor(F, &[rows, k], 1.0);
        let b = r.tensor(F, &[n], 1.0);
        let ks = k.to_string();
        for d in [F, DType::F16] {
            let w = r.tensor(F, &[n, k], 0.5);
            let wb: Vec<u8> = match d {
                DType::F32 => f32_bytes(&w),
                _ => w
                    .to_f64()
                    .iter()
                    .flat_map(|v| half::f16::from_f64(*v).to_le_bytes())
                    .collect(),
            };
            for bias in [false, true] {
                for act in ["silu", "gelu"] {
                    let mut args = vec![
                        Arg::In(tt(F, &["seq", &ks]), x.clone()),
                        Arg::W(d, vec![n, k], wb.clone()),
                    ];
                    if bias {
                        args.push(Arg::W(F, vec![n], f32_bytes(&b)));
                    }
                    let (plain, _, _) = run_args(Op::Linear, attrs([]), &args);
                    let z = llmc_ir::Tensor::from_f64(F, vec![rows, n], plain[0].clone());
                    let aa = attrs([("act", Attr::Str(act.into()))]);
                    let (want, _, _) =
                        run_args(Op::Glu, aa, &[Arg::In(tt(F, &["seq", &n.to_string()]), z)]);
                    let ga = attrs([("glu", Attr::Str(act.into()))]);
                    let (got, _, text) = run_args(Op::Linear, ga.clone(), &args);
                    assert_eq!(
                        got[0], want[0],
                        "{d} {act} bias {bias} {rows}x{n}x{k}\n{text}"
                    );
                    check_args(Op::Linear, ga.clone(), &args, 1e-5, 1e-5);
                    // The GPU's warp GEMV takes each gate row with its up row.
                    let gpu =
                        super::testing::check_args_on(true, Op::Linear, ga, &args, 1e-5, 1e-5);
                    assert!(gpu.contains("shuffle_xor"), "{gpu}");
                }
            }
        }
    }
}

/// `glu_in` on a block-quantized `linear`: reading x as act(gate) · up while it
/// quantizes its activations gives the bits the `glu` kernel then the plain linear
/// give, with int16 and int8 activations, decode rows and prefill tiles; the GPU's
/// warp GEMV agrees with the reference.
#[test]
fn linear_glu_in_is_the_linear_of_the_glu() {
    let mut r = Rng::new(25);
    for (rows, n, k) in [
        (1usize, 64usize, 64usize),
        (5, 32, 96),
        (13, 64, 64),
        (29, 32, 32),
    ] {
        let z = r.tensor(F, &[rows, 2 * k], 2.0);
        let z_t = tt(F, &["seq", &(2 * k).to_string()]);
        let x_t = tt(F, &["seq", &k.to_string()]);
        for d in [DType::Q8_0, DType::Q4_1, DType::Q4_0] {
            let wq = quant_bytes(&mut r, d, n, k);
            for bits in [None, Some(8)] {
                let mut a = attrs([]);
                if let Some(b) = bits {
                    a.insert("act_bits".into(), Attr::Int(b));
                }
                let ga = attrs([("act", Attr::Str("silu".into()))]);
                let (x, _, _) = run_args(Op::Glu, ga, &[Arg::In(z_t.clone(), z.clone())]);
                let x = llmc_ir::Tensor::from_f64(F, vec![rows, k], x[0].clone());
                let (want, _, _) = run_args(
                    Op::Linear,
                    a.clone(),
                    &[Arg::In(x_t.clone(), x), Arg::W(d, vec![n, k], wq.clone())],
                );
                let mut fa = a.clone();
                fa.insert("glu_in".into(), Attr::Str("silu".into()));
                let args = [
                    Arg::In(z_t.clone(), z.clone()),
                    Arg::W(d, vec![n, k], wq.clone()),
                ];
                let (got, _, text) = run_args(Op::Linear, fa.clone(), &args);
                assert_eq!(got[0], want[0], "{d} bits {bits:?} {rows}x{n}x{k}\n{text}");
                if bits.is_none() {
                    // The GPU's warp GEMV, each read of x through the GLU (float
                    // activations: the reference's numbers).
                    let gpu =
                        super::testing::check_args_on(true, Op::Linear, fa, &args, 1e-4, 1e-4);
                    assert!(gpu.contains("shuffle_xor"), "{gpu}");
                }
            }
        }
    }
}

/// `linear {norm_eps}` against `rms_norm` then `linear`, bit for bit, on the CPU paths
/// of the block formats (tiles and per-row dot products; int16 and int8 activations,
/// run-time and static scales; with a residual too), and the GPU's warp GEMV against the reference.
#[test]
fn linear_norm_in_is_the_linear_of_the_norm() {
    let mut r = Rng::new(26);
    let eps = 1e-5;
    for (rows, n, k) in [
        (1usize, 64usize, 256usize),
        (5, 32, 512),
        (13, 64, 256),
        (29, 32, 256),
    ] {
        let x = r.tensor(F, &[rows, k], 2.0);
        let nw = r.tensor(F, &[k], 1.0);
        let res = r.tensor(F, &[rows, n], 1.0);
        let x_t = tt(F, &["seq", &k.to_string()]);
        let nw_t = tt(F, &[&k.to_string()]);
        let y_t = tt(F, &["seq", &n.to_string()]);
        let na = attrs([("eps", Attr::Float(eps))]);
        let (xn, _, _) = run_args(
            Op::RmsNorm,
            na,
            &[
                Arg::In(x_t.clone(), x.clone()),
                Arg::In(nw_t.clone(), nw.clone()),
            ],
        );
        let xn = llmc_ir::Tensor::from_f64(F, vec![rows, k], xn[0].clone());
        for d in [
            DType::Q8_0,
            DType::Q4_1,
            DType::Q4_0,
            DType::Q5_0,
            DType::Q4K,
            DType::Q6K,
        ] {
            let wq = quant_bytes(&mut r, d, n, k);
            // (act_bits, residual, static scales)
            for (bits, residual, fixed) in [
                (None, false, false),
                (Some(8), false, false),
                (None, true, false),
                (Some(8), false, true),
            ] {
                let mut a = attrs([]);
                if let Some(b) = bits {
                    a.insert("act_bits".into(), Attr::Int(b));
                }
                if fixed {
                    let amax = (0..k / 32).map(|b| 1.0 + 0.25 * (b % 5) as f64).collect();
                    a.insert("act_amax".into(), Attr::Floats(amax));
                }
                let mut plain = vec![
                    Arg::In(x_t.clone(), xn.clone()),
                    Arg::W(d, vec![n, k], wq.clone()),
                ];
                let mut args = vec![
                    Arg::In(x_t.clone(), x.clone()),
                    Arg::W(d, vec![n, k], wq.clone()),
                ];
                if residual {
                    a.insert("residual".into(), Attr::Int(1));
                    plain.push(Arg::In(y_t.clone(), res.clone()));
                    args.push(Arg::In(y_t.clone(), res.clone()));
                }
                let (want, _, _) = run_args(Op::Linear, a.clone(), &plain);
                let mut fa = a.clone();
                fa.insert("norm_eps".into(), Attr::Float(eps));
                args.push(Arg::In(nw_t.clone(), nw.clone()));
                let (got, _, text) = run_args(Op::Linear, fa.clone(), &args);
                let what =
                    format!("{d} bits {bits:?} residual {residual} static {fixed} {rows}x{n}x{k}");
                assert_eq!(got[0], want[0], "{what}\n{text}");
                if bits.is_none() {
                    // The GPU schedule (the warp GEMV for Q8_0/Q4_x: each warp takes its
                    // rows' factors; the others the CPU template mapped), float
                    // activations there: the reference's numbers.
                    let gpu =
                        super::testing::check_args_on(true, Op::Linear, fa, &args, 2e-3, 2e-3);
                    if matches!(d, DType::Q8_0 | DType::Q4_1 | DType::Q4_0) {
                        assert!(gpu.contains("shuffle_xor"), "{what}: {gpu}");
                    }
                }
            }
        }
    }
}

#[test]
fn glu_halves_and_two_operands() {
    let mut r = Rng::new(22);
    for act in ["silu", "gelu", "gelu_tanh", "relu"] {
        let a = attrs([("act", Attr::Str(act.into()))]);
        let x = r.tensor(F, &[1, 3, 24], 3.0);
        check(
            Op::Glu,
            a.clone(),
            &[(tt(F, &["1", "seq", "24"]), x)],
            1e-5,
            1e-5,
        );
        let g = r.tensor(F, &[2, 5, 12], 3.0);
        let u = r.tensor(F, &[2, 5, 12], 3.0);
        check(
            Op::Glu,
            a,
            &[
                (tt(F, &["batch", "seq", "12"]), g),
                (tt(F, &["batch", "seq", "12"]), u),
            ],
            1e-5,
            1e-5,
        );
    }
}

/// `paged_kv_write` then `paged_attention` against the reference on random block
/// tables, sequence lengths, GQA ratios, windows, soft-capping and pool dtypes (f32 and
/// f16). The rows of a step are chunks of several sequences at their positions: decode
/// rows (one token after a long context) and prefill chunks together.
#[test]
fn paged_attention_matches_the_reference() {
    let mut r = Rng::new(77);
    let i64t = |x: Vec<i64>, dims: &[&str], dt: DType| {
        let shape: Vec<usize> = match dims.len() {
            1 => vec![x.len()],
            _ => vec![1, x.len()],
        };
        (tt(dt, dims), llmc_ir::Tensor::from_i64(dt, shape, x))
    };
    // Three sequences: (context already cached, new rows this step).
    let short = [(0usize, 5usize), (9, 1), (3, 4)];
    // Decode of one or two sequences over contexts of several 256-token splits (the
    // splits run in parallel and merge), with a window that starts mid-split.
    let long1 = [(700usize, 1usize)];
    let long2 = [(300usize, 1usize), (530, 2)];
    // A prefill chunk across a split boundary beside a short one: 50 rows x 2 kv
    // heads, past the pair count from which each pair runs as its own task.
    let many = [(250usize, 30usize), (0, 20)];
    // The head dim: 64 for q8_kv (one block per token and head); the prefill chunks
    // take a head dim of whole 16-lane vectors, so the CPU schedule's row tiles (query
    // heads in lanes) run.
    let d_of = |pool_dt: DType, seqs: &[(usize, usize)]| match pool_dt {
        DType::Q8Kv => 64usize,
        _ if std::ptr::eq(seqs, &many[..]) => 16,
        _ => 8,
    };
    let cases = [
        (
            4usize,
            2usize,
            4usize,
            0i64,
            None,
            F,
            &short[..],
            5usize,
            24usize,
        ),
        (6, 2, 8, 0, Some(5.0), DType::F16, &short[..], 5, 24),
        (3, 3, 4, 5, None, F, &short[..], 5, 24),
        (8, 1, 16, 0, None, DType::F16, &short[..], 5, 24),
        (2, 1, 4, 3, Some(2.0), F, &short[..], 5, 24),
        (6, 2, 16, 0, None, F, &long1[..], 44, 48),
        (3, 3, 16, 300, Some(5.0), DType::F16, &long1[..], 44, 48),
        (4, 1, 16, 0, None, F, &long2[..], 34, 70),
        (6, 3, 8, 270, None, F, &long2[..], 67, 140),
        (4, 2, 16, 0, None, F, &many[..], 20, 40),
        (6, 2, 16, 40, Some(5.0), DType::F16, &many[..], 20, 40),
        // int8 pools (q8_kv, head dim 64: one block per token and head).
        (4, 2, 4, 0, None, DType::Q8Kv, &short[..], 5, 24),
        (3, 3, 8, 5, Some(5.0), DType::Q8Kv, &short[..], 5, 24),
        (6, 2, 16, 0, None, DType::Q8Kv, &long2[..], 34, 70),
    ];
    // Every float case in both key layouts (`k_dim_major`: each block's keys
    // transposed, as CPU builds lay them out), and every case with the rows' tensors
    // heads-major and token-major (`token_major`, as the serving form lays them out).
    let layouts = cases.iter().flat_map(|c| {
        let dms: &[i64] = if c.5 == DType::Q8Kv { &[0] } else { &[0, 1] };
        dms.iter()
            .flat_map(move |&dm| [0i64, 1].map(move |tm| (*c, dm, tm)))
    });
    for (case, ((h, kvh, bs, window, cap, pool_dt, seqs, width, nblk), dm, tm)) in
        layouts.enumerate()
    {
        let wa = || {
            attrs([
                ("k_dim_major", Attr::Int(dm)),
                ("token_major", Attr::Int(tm)),
            ])
        };
        // The rows' tensors: [1, heads, seq, d], or [1, seq, heads, d] token-major.
        let rows_shape = |heads: usize, rows: usize| {
            if tm == 1 {
                vec![1, rows, heads, d_of(pool_dt, seqs)]
            } else {
                vec![1, heads, rows, d_of(pool_dt, seqs)]
            }
        };
        let rows_dims = |heads: &str, ds: &str| -> Vec<String> {
            let v = if tm == 1 {
                ["1", "seq", heads, ds]
            } else {
                ["1", heads, "seq", ds]
            };
            v.iter().map(|x| x.to_string()).collect()
        };
        let d = d_of(pool_dt, seqs);
        let ds = d.to_string();
        // Distinct blocks per sequence, scattered.
        let mut order: Vec<i64> = (0..nblk as i64).collect();
        for i in (1..order.len()).rev() {
            let j = (r.next() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let mut tables = vec![0i64; seqs.len() * width];
        for (si, &(past, new)) in seqs.iter().enumerate() {
            let need = (past + new).div_ceil(bs);
            for b in 0..need {
                tables[si * width + b] = order[si * width + b];
            }
        }
        let rows: usize = seqs.iter().map(|s| s.1).sum();
        let (mut slots, mut pos, mut row_seq) = (vec![], vec![], vec![]);
        for (si, &(past, new)) in seqs.iter().enumerate() {
            for p in past..past + new {
                slots.push(tables[si * width + p / bs] * bs as i64 + (p % bs) as i64);
                pos.push(p as i64);
                row_seq.push(si as i64);
            }
        }
        // The pools start with random "cached" keys everywhere (a q8_kv pool's given
        // dequantized: values its blocks hold exactly).
        let pool = |r: &mut Rng| {
            let x = r.tensor(F, &[nblk, kvh, bs, d], 1.0);
            match pool_dt {
                DType::Q8Kv => llmc_ir::Tensor::from_f64(
                    F,
                    x.shape.clone(),
                    llmc_ir::quant::q8_kv_round_trip(&x.to_f64()),
                ),
                dt => llmc_ir::Tensor::from_f64(dt, x.shape.clone(), x.to_f64()),
            }
        };
        let kpool = pool(&mut r);
        let vpool = pool(&mut r);
        let k = r.tensor(F, &rows_shape(kvh, rows), 1.0);
        let v = r.tensor(F, &rows_shape(kvh, rows), 1.0);
        let q = r.tensor(F, &rows_shape(h, rows), 1.0);
        let pool_t = tt(pool_dt, &["blocks", &kvh.to_string(), &bs.to_string(), &ds]);
        let kvh_s = kvh.to_string();
        let kv_dims = rows_dims(&kvh_s, &ds);
        let kv_dims: Vec<&str> = kv_dims.iter().map(|x| x.as_str()).collect();
        let w_args = vec![
            Arg::In(tt(F, &kv_dims), k.clone()),
            Arg::In(tt(F, &kv_dims), v.clone()),
            Arg::In(pool_t.clone(), kpool.clone()),
            Arg::In(pool_t.clone(), vpool.clone()),
            {
                let (t, x) = i64t(slots.clone(), &["seq"], DType::I64);
                Arg::In(t, x)
            },
        ];
        check_args(Op::PagedKvWrite, wa(), &w_args, 0.0, 0.0);
        super::testing::check_args_on(true, Op::PagedKvWrite, wa(), &w_args, 0.0, 0.0);
        // The written pools (from the reference) feed the attention check.
        let (_, written, _) = run_args(Op::PagedKvWrite, wa(), &w_args);
        let held = if pool_dt == DType::Q8Kv { F } else { pool_dt };
        let kp2 = llmc_ir::Tensor::from_f64(held, kpool.shape.clone(), written[0].clone());
        let vp2 = llmc_ir::Tensor::from_f64(held, vpool.shape.clone(), written[1].clone());
        let mut a = wa();
        a.insert("scale".into(), Attr::Float(0.4));
        if window > 0 {
            a.insert("window".into(), Attr::Int(window));
        }
        if let Some(c) = cap {
            a.insert("softcap".into(), Attr::Float(c));
        }
        let (pt, px) = i64t(pos, &["1", "seq"], DType::I64);
        let (rt, rx) = i64t(row_seq, &["seq"], DType::I32);
        let bt = (
            tt(DType::I32, &["nseq", "width"]),
            llmc_ir::Tensor::from_i64(DType::I32, vec![seqs.len(), width], tables),
        );
        let tol = if pool_dt == F { 1e-5 } else { 2e-3 };
        let q_dims = rows_dims(&h.to_string(), &ds);
        let q_dims: Vec<&str> = q_dims.iter().map(|x| x.as_str()).collect();
        let args = [
            (tt(F, &q_dims), q),
            (pool_t.clone(), kp2),
            (pool_t, vp2),
            (pt, px),
            (rt, rx),
            bt,
        ];
        let text = check(Op::PagedAttention, a.clone(), &args, tol, tol);
        assert!(text.contains("paged_attention"), "case {case}");
        // The GPU schedule (a warp per row and query head; int8 pools read through
        // their blocks' scales), run by the interpreter's GPU mode.
        let gpu_args: Vec<Arg> = args
            .iter()
            .map(|(t, x)| Arg::In(t.clone(), x.clone()))
            .collect();
        let text = super::testing::check_args_on(true, Op::PagedAttention, a, &gpu_args, tol, tol);
        // The warp kernel reads key rows; transposed keys take the generic mapping.
        if dm == 0 {
            assert!(text.contains("shuffle_xor"), "case {case}: {text}");
        }
    }
}

/// `paged_qkv_write` (a merged projection's split, both RoPEs and the KV write in one
/// kernel) against the reference, bit for bit, on the CPU and in the GPU schedule:
/// neox and interleaved pairs, a partial rotation (`dims` < d), f32, f16 and q8_kv pools,
/// keys transposed or not, positions inside and past the CPU's trig table.
#[test]
fn paged_qkv_write_matches_the_reference() {
    let mut r = Rng::new(79);
    // (query heads, kv heads, head dim, dims, style, pool dtype, rows, max position)
    let cases = [
        (3usize, 1usize, 8usize, None, "neox", F, 5usize, 40i64),
        (4, 2, 16, None, "neox", DType::F16, 7, 5000),
        (2, 2, 8, Some(4i64), "neox", F, 3, 6000),
        (6, 2, 8, None, "interleaved", F, 4, 5000),
        (2, 1, 12, Some(8), "interleaved", DType::F16, 2, 100),
        (9, 3, 64, None, "neox", DType::F16, 3, 4100),
        // int8 pools (q8_kv: whole heads of 64 quantized as they are written).
        (3, 1, 64, None, "neox", DType::Q8Kv, 4, 5000),
        (4, 2, 128, Some(96), "interleaved", DType::Q8Kv, 3, 300),
    ];
    let bs = 4usize;
    let nblk = 6usize;
    for (case, &(hq, kvh, d, dims, style, pool_dt, rows, maxp)) in cases.iter().enumerate() {
        let dms: &[i64] = if pool_dt == DType::Q8Kv {
            &[0]
        } else {
            &[0, 1]
        };
        for &dm in dms {
            let mut a = attrs([
                ("heads", Attr::Int(hq as i64)),
                ("theta", Attr::Float(10000.0)),
                ("style", Attr::Str(style.into())),
                ("k_dim_major", Attr::Int(dm)),
            ]);
            if let Some(dd) = dims {
                a.insert("dims".into(), Attr::Int(dd));
            }
            let width = (hq + 2 * kvh) * d;
            let qkv = r.tensor(F, &[1, rows, width], 2.0);
            // A q8_kv pool is given as values its blocks hold exactly.
            let pool = |r: &mut Rng| {
                let x = r.tensor(F, &[nblk, kvh, bs, d], 1.0);
                match pool_dt {
                    DType::Q8Kv => llmc_ir::Tensor::from_f64(
                        F,
                        x.shape.clone(),
                        llmc_ir::quant::q8_kv_round_trip(&x.to_f64()),
                    ),
                    dt => llmc_ir::Tensor::from_f64(dt, x.shape.clone(), x.to_f64()),
                }
            };
            let (kp, vp) = (pool(&mut r), pool(&mut r));
            // Distinct slots, scattered over the pool.
            let mut slots: Vec<i64> = (0..(nblk * bs) as i64).collect();
            for i in (1..slots.len()).rev() {
                let j = (r.next() % (i as u64 + 1)) as usize;
                slots.swap(i, j);
            }
            slots.truncate(rows);
            let pos = r.ints(DType::I64, &[1, rows], 0, maxp);
            let (ds, ks) = (d.to_string(), kvh.to_string());
            let pool_t = tt(pool_dt, &["blocks", &ks, &bs.to_string(), &ds]);
            let args = vec![
                Arg::In(tt(F, &["1", "seq", &width.to_string()]), qkv),
                Arg::In(pool_t.clone(), kp),
                Arg::In(pool_t, vp),
                Arg::In(
                    tt(DType::I64, &["seq"]),
                    llmc_ir::Tensor::from_i64(DType::I64, vec![rows], slots),
                ),
                Arg::In(tt(DType::I64, &["1", "seq"]), pos),
            ];
            // The reference rotates in f64, the kernels (as `rope`'s) in f32.
            // (A code of a q8_kv block may then round the other way: one step of
            // its scale, max|x| / 127.)
            let (atol, rtol) = match pool_dt {
                F => (1e-6, 1e-6),
                DType::Q8Kv => (0.03, 0.0),
                _ => (1e-5, 2e-3),
            };
            let text = check_args(Op::PagedQkvWrite, a.clone(), &args, atol, rtol);
            assert!(text.contains("paged_qkv_write"), "case {case}");
            for gpu in [false, true] {
                let run = |op: Op, a: llmc_ir::Attrs, args: &[Arg]| {
                    super::testing::run_args_on(gpu, op, a, args).0
                };
                let fused = run(Op::PagedQkvWrite, a.clone(), &args);
                // The unfused ops' kernels, chained as the serving form ran them:
                // split, a rope of each part's rows as [s, heads, 1, d] at positions
                // [s, 1], then paged_kv_write of the token-major keys and values.
                let Arg::In(_, x) = &args[0] else {
                    unreachable!()
                };
                let sizes = vec![(hq * d) as i64, (kvh * d) as i64, (kvh * d) as i64];
                let parts = run(
                    Op::Split,
                    attrs([("axis", Attr::Int(2)), ("sizes", Attr::Ints(sizes))]),
                    &[Arg::In(tt(F, &["1", "seq", &width.to_string()]), x.clone())],
                );
                let Arg::In(_, pos) = &args[4] else {
                    unreachable!()
                };
                let pcol = llmc_ir::Tensor::from_i64(DType::I64, vec![rows, 1], pos.to_i64());
                let mut ra = a.clone();
                ra.remove("heads");
                ra.remove("k_dim_major");
                let rope = |v: &[f64], h: usize| {
                    let t = llmc_ir::Tensor::from_f64(F, vec![rows, h, 1, d], v.to_vec());
                    let hs = h.to_string();
                    let args = [
                        Arg::In(tt(F, &["seq", &hs, "1", &ds]), t),
                        Arg::In(tt(DType::I64, &["seq", "1"]), pcol.clone()),
                    ];
                    run(Op::Rope, ra.clone(), &args).remove(0)
                };
                let q = rope(&parts[0], hq);
                let k = rope(&parts[1], kvh);
                let rows_t = |v: &[f64]| {
                    let t = llmc_ir::Tensor::from_f64(F, vec![1, rows, kvh, d], v.to_vec());
                    Arg::In(tt(F, &["1", "seq", &ks, &ds]), t)
                };
                let mut w_args = vec![rows_t(&k), rows_t(&parts[2])];
                w_args.extend(args[1..4].iter().map(|a| match a {
                    Arg::In(t, x) => Arg::In(t.clone(), x.clone()),
                    Arg::W(..) => unreachable!(),
                }));
                let wa = attrs([
                    ("token_major", Attr::Int(1)),
                    ("k_dim_major", Attr::Int(dm)),
                ]);
                let mut unfused = run(Op::PagedKvWrite, wa, &w_args);
                unfused.push(q);
                assert!(fused == unfused, "case {case}, k_dim_major {dm}, gpu {gpu}");
            }
        }
    }
}
