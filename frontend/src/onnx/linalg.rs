//! Matrix products: `MatMul`, `Gemm` (transposes, alpha/beta scaling and the bias
//! become separate ops), `MatMulInteger` (zero points subtracted, accumulated in i32).

use super::import::{NodeCtx, V};
use super::registry::Registry;
use super::tensor::transpose_by;
use llmc_ir::{DType, Op};

type R = Result<Vec<V>, String>;

/// Adds this family's converters.
pub fn register(r: &mut Registry) {
    r.add("MatMul", |cx| cx.binary(Op::MatMul));
    r.add("Gemm", gemm);
    r.add("MatMulInteger", matmul_integer);
}

/// Y = alpha * A' B' + beta * C, with A' = A^T when transA, B' = B^T when transB.
fn gemm(cx: &mut NodeCtx) -> R {
    let (mut a, mut b) = (cx.input(0)?, cx.input(1)?);
    let c = cx.opt_input(2)?;
    let alpha = cx.attr_f("alpha", 1.0)?;
    let beta = cx.attr_f("beta", 1.0)?;
    for (v, name) in [(&mut a, "transA"), (&mut b, "transB")] {
        if cx.rank(*v) != 2 {
            return Err(format!(
                "input {} must be a matrix, got {}",
                if name == "transA" { "A" } else { "B" },
                cx.ty(*v)
            ));
        }
        if cx.attr_i(name, 0)? != 0 {
            *v = transpose_by(cx, *v, vec![1, 0])?;
        }
    }
    let mut y = cx.bin(Op::MatMul, a, b)?;
    if alpha != 1.0 {
        let s = cx.scalar_like(y, alpha);
        y = cx.bin(Op::Mul, y, s)?;
    }
    if let Some(c) = c {
        let mut c = c;
        if beta != 1.0 {
            let s = cx.scalar_like(c, beta);
            c = cx.bin(Op::Mul, c, s)?;
        }
        y = cx.bin(Op::Add, y, c)?;
    }
    Ok(vec![y])
}

/// (A - a_zero_point) (B - b_zero_point) in i32.
fn matmul_integer(cx: &mut NodeCtx) -> R {
    let mut ops = Vec::new();
    for (i, zi) in [(0, 2), (1, 3)] {
        let x = cx.input(i)?;
        let x = cx.cast(x, DType::I32)?;
        let x = match cx.opt_input(zi)? {
            Some(z) => {
                let z = cx.cast(z, DType::I32)?;
                // A per-row zero point of A ([M]) applies along rows: make it [M, 1].
                let z = if i == 0 && cx.rank(z) == 1 && cx.rank(x) >= 2 {
                    let n = cx.shape(z).0[0].clone();
                    super::tensor::reshape_to(cx, z, vec![n, llmc_ir::Dim::c(1)])?
                } else {
                    z
                };
                cx.bin(Op::Sub, x, z)?
            }
            None => x,
        };
        ops.push(x);
    }
    Ok(vec![cx.bin(Op::MatMul, ops[0], ops[1])?])
}
