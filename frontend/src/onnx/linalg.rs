//! Matrix products: `MatMul`, `Gemm` (transposes, alpha/beta scaling and the bias
//! become separate ops), `MatMulInteger` (zero points subtracted, accumulated in i32),
//! `Einsum` (diagonals and single-use labels summed, then pairwise matmuls).

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
    r.add("Einsum", einsum);
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

/// One einsum operand: its value and the label of each of its axes.
struct Term {
    v: V,
    labels: Vec<char>,
}

/// Parses an equation into (input labels with ellipses expanded, output labels).
/// Ellipsis dims get the labels '0', '1', ... aligned to the right, as numpy does.
fn parse_einsum(eq: &str, ranks: &[usize]) -> Result<(Vec<Vec<char>>, Vec<char>), String> {
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ranks.len() {
        return Err(format!(
            "equation {eq:?} has {} inputs, the node {}",
            terms.len(),
            ranks.len()
        ));
    }
    let ell_labels = |n: usize, max: usize| -> Vec<char> {
        (max - n..max).map(|i| char::from(b'0' + i as u8)).collect()
    };
    let mut counts = Vec::new();
    for (t, &r) in terms.iter().zip(ranks) {
        let letters = t.replace("...", "").chars().count();
        if letters > r || (!t.contains("...") && letters != r) {
            return Err(format!("term {t:?} does not fit an input of rank {r}"));
        }
        counts.push(r - letters);
    }
    let max_ell = counts.iter().copied().max().unwrap_or(0);
    if max_ell > 10 {
        return Err("too many ellipsis dims".into());
    }
    let expand = |t: &str, n: usize| -> Result<Vec<char>, String> {
        let mut out = Vec::new();
        let mut rest = t;
        if let Some((a, b)) = t.split_once("...") {
            out.extend(a.chars());
            out.extend(ell_labels(n, max_ell));
            rest = b;
        } else {
            out.extend(rest.chars());
            rest = "";
        }
        out.extend(rest.chars());
        if let Some(c) = out
            .iter()
            .find(|c| !(c.is_ascii_alphabetic() || c.is_ascii_digit()))
        {
            return Err(format!("label {c:?} is not a letter"));
        }
        Ok(out)
    };
    let ins: Vec<Vec<char>> = terms
        .iter()
        .zip(&counts)
        .map(|(t, &n)| expand(t, n))
        .collect::<Result<_, _>>()?;
    let out = match rhs {
        Some(r) => expand(&r, max_ell)?,
        None => {
            // Implicit output: the ellipsis, then letters used once, sorted.
            let mut o = ell_labels(max_ell, max_ell);
            let mut letters: Vec<char> = ins
                .iter()
                .flatten()
                .copied()
                .filter(|c| c.is_ascii_alphabetic())
                .collect();
            letters.sort();
            let once: Vec<char> = letters
                .iter()
                .copied()
                .filter(|c| letters.iter().filter(|d| *d == c).count() == 1)
                .collect();
            o.extend(once);
            o
        }
    };
    Ok((ins, out))
}

fn sum_axes(cx: &mut NodeCtx, t: Term, drop: &[char]) -> Result<Term, String> {
    let axes: Vec<i64> = t
        .labels
        .iter()
        .enumerate()
        .filter(|(_, c)| drop.contains(c))
        .map(|(i, _)| i as i64)
        .collect();
    if axes.is_empty() {
        return Ok(t);
    }
    let v = cx.op(
        Op::ReduceSum,
        &[t.v],
        llmc_ir::attrs([
            ("axes", llmc_ir::Attr::Ints(axes)),
            ("keepdims", llmc_ir::Attr::Bool(false)),
        ]),
    )?;
    let labels = t.labels.into_iter().filter(|c| !drop.contains(c)).collect();
    Ok(Term { v, labels })
}

/// Takes the diagonal of a label repeated within one term (x * eye, summed).
fn diagonals(cx: &mut NodeCtx, mut t: Term) -> Result<Term, String> {
    loop {
        let rep = (0..t.labels.len())
            .find_map(|q| (0..q).find(|&p| t.labels[p] == t.labels[q]).map(|p| (p, q)));
        let Some((p, q)) = rep else { return Ok(t) };
        let n = cx.shape(t.v).0[p]
            .as_const()
            .ok_or("a repeated label needs a constant dim")? as usize;
        let mut shape = vec![1usize; t.labels.len()];
        shape[p] = n;
        shape[q] = n;
        let eye: Vec<f64> = (0..n * n).map(|i| (i / n == i % n) as i64 as f64).collect();
        let dt = cx.dtype(t.v);
        let e = llmc_ir::Tensor::from_f64(DType::F64, vec![n * n], eye)
            .cast(dt)
            .reshaped(shape);
        let e = cx.constant(e);
        let m = cx.bin(Op::Mul, t.v, e)?;
        let v = cx.op(
            Op::ReduceSum,
            &[m],
            llmc_ir::attrs([
                ("axes", llmc_ir::Attr::Ints(vec![q as i64])),
                ("keepdims", llmc_ir::Attr::Bool(false)),
            ]),
        )?;
        t.labels.remove(q);
        t = Term {
            v,
            labels: t.labels,
        };
    }
}

/// Contracts two terms with one matmul, keeping the labels in `keep`.
fn contract(cx: &mut NodeCtx, a: Term, b: Term, keep: &[char]) -> Result<Term, String> {
    use llmc_ir::Dim;
    let in_b = |c: &char| b.labels.contains(c);
    let batch: Vec<char> = a
        .labels
        .iter()
        .copied()
        .filter(|c| in_b(c) && keep.contains(c))
        .collect();
    let sum: Vec<char> = a
        .labels
        .iter()
        .copied()
        .filter(|c| in_b(c) && !keep.contains(c))
        .collect();
    let left: Vec<char> = a.labels.iter().copied().filter(|c| !in_b(c)).collect();
    let right: Vec<char> = b
        .labels
        .iter()
        .copied()
        .filter(|c| !a.labels.contains(c))
        .collect();
    let pos = |t: &Term, c: char| t.labels.iter().position(|&d| d == c).unwrap_or(0) as i64;
    let dim = |cx: &NodeCtx, t: &Term, c: char| cx.shape(t.v).0[pos(t, c) as usize].clone();
    let prod = |cx: &NodeCtx, t: &Term, cs: &[char]| {
        cs.iter().fold(Dim::c(1), |acc, &c| acc.mul(&dim(cx, t, c)))
    };
    // A -> [batch..., L, K], B -> [batch..., K, R].
    let pa: Vec<i64> = batch
        .iter()
        .chain(&left)
        .chain(&sum)
        .map(|&c| pos(&a, c))
        .collect();
    let pb: Vec<i64> = batch
        .iter()
        .chain(&sum)
        .chain(&right)
        .map(|&c| pos(&b, c))
        .collect();
    let at = super::tensor::transpose_by(cx, a.v, pa)?;
    let bt = super::tensor::transpose_by(cx, b.v, pb)?;
    let mut da: Vec<Dim> = batch.iter().map(|&c| dim(cx, &a, c)).collect();
    let mut db: Vec<Dim> = batch.iter().map(|&c| dim(cx, &b, c)).collect();
    let (l, k, r) = (
        prod(cx, &a, &left),
        prod(cx, &a, &sum),
        prod(cx, &b, &right),
    );
    da.extend([l, k.clone()]);
    db.extend([k, r]);
    let am = super::tensor::reshape_to(cx, at, da)?;
    let bm = super::tensor::reshape_to(cx, bt, db)?;
    let y = cx.bin(Op::MatMul, am, bm)?;
    let ys = cx.shape(y).0.clone();
    let mut dims: Vec<Dim> = ys[..batch.len()].to_vec();
    dims.extend(left.iter().map(|&c| dim(cx, &a, c)));
    dims.extend(right.iter().map(|&c| dim(cx, &b, c)));
    let v = super::tensor::reshape_to(cx, y, dims)?;
    let labels = batch.into_iter().chain(left).chain(right).collect();
    Ok(Term { v, labels })
}

/// `Einsum`: diagonals, sums over labels used once, then pairwise matmul contractions
/// and a final transpose to the output order.
fn einsum(cx: &mut NodeCtx) -> R {
    let eq = cx
        .attr_s("equation")?
        .ok_or("missing attribute `equation`")?;
    let ins = cx.inputs()?;
    let ranks: Vec<usize> = ins.iter().map(|&v| cx.rank(v)).collect();
    let (labels, out) = parse_einsum(&eq, &ranks)?;
    let mut terms = Vec::new();
    for (v, l) in ins.into_iter().zip(labels) {
        terms.push(diagonals(cx, Term { v, labels: l })?);
    }
    // Labels only one term uses and the output does not: sum them out first.
    for i in 0..terms.len() {
        let drop: Vec<char> = terms[i]
            .labels
            .iter()
            .copied()
            .filter(|c| {
                !out.contains(c)
                    && terms
                        .iter()
                        .enumerate()
                        .all(|(j, t)| j == i || !t.labels.contains(c))
            })
            .collect();
        let v = terms[i].v;
        let t = std::mem::replace(&mut terms[i], Term { v, labels: vec![] });
        terms[i] = sum_axes(cx, t, &drop)?;
    }
    let mut it = terms.into_iter();
    let mut acc = it.next().ok_or("needs at least one input")?;
    let rest: Vec<Term> = it.collect();
    for (i, t) in rest.iter().enumerate() {
        let mut keep = out.clone();
        for later in &rest[i + 1..] {
            keep.extend(later.labels.iter().copied());
        }
        acc = contract(
            cx,
            acc,
            Term {
                v: t.v,
                labels: t.labels.clone(),
            },
            &keep,
        )?;
    }
    let extra: Vec<char> = acc
        .labels
        .iter()
        .copied()
        .filter(|c| !out.contains(c))
        .collect();
    let acc = sum_axes(cx, acc, &extra)?;
    let perm: Vec<i64> = out
        .iter()
        .map(|c| {
            acc.labels
                .iter()
                .position(|d| d == c)
                .map(|p| p as i64)
                .ok_or_else(|| format!("output label {c:?} is not in any input"))
        })
        .collect::<Result<_, _>>()?;
    Ok(vec![super::tensor::transpose_by(cx, acc.v, perm)?])
}
