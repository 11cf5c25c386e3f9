//! Algebra: identities (x·1, x+0, x-0, x/1, cast to the same type) and canonical
//! spellings that make the fusion matchers' job smaller (1/x as reciprocal, 1/sqrt as
//! rsqrt, x^2 as x·x). A constant multiplication of a GEMM by a weight moves into the
//! weight (`mul-into-weight`), which is then scaled once at compile time.

use super::{fn_rule, same_type};
use crate::egraph::lang::{EGraph, ENode, TypeAnalysis};
use crate::egraph::matchers::is_splat;
use crate::egraph::matchers::{add_op, attrs_of, nodes_of, ty};
use egg::{rewrite as rw, Id, Rewrite, Subst};
use llmc_ir::{Attrs, Op};

/// `?c` is the constant `v` and dropping it keeps the type of the matched class.
fn unit(c: &'static str, x: &'static str, v: f64) -> impl Fn(&mut EGraph, Id, &Subst) -> bool {
    move |eg, class, s| match (super::get(s, c), super::get(s, x)) {
        (Some(c), Some(x)) => is_splat(eg, c, v) && same_type(eg, class, x),
        _ => false,
    }
}

/// `?c` is the constant `v` (the result type is checked by the op table when the new
/// node is built).
fn is_const(c: &'static str, v: f64) -> impl Fn(&mut EGraph, Id, &Subst) -> bool {
    move |eg, _, s| super::get(s, c).is_some_and(|c| is_splat(eg, c, v))
}

/// The cast does not change the type.
fn cast_is_noop(eg: &mut EGraph, class: Id, s: &Subst) -> bool {
    super::get(s, "?x").is_some_and(|x| same_type(eg, class, x))
}

/// `w` is a weight the extraction can scale at compile time: a constant (weight-only)
/// f32 tensor. Block-quantized weights are not scaled: their block scales are f16, so
/// w·c would round unless c is a power of two.
pub fn is_scalable_weight(eg: &EGraph, w: Id) -> bool {
    eg[w].data.konst
        && eg[w]
            .data
            .ty()
            .is_some_and(|t| t.dtype == llmc_ir::DType::F32)
}

/// mul(matmul(x, w), c) → matmul(x, w·c) and mul(linear(x, w[, b]), c) →
/// linear(x, w·c[, b·c]) for a splat constant c and a scalable weight w; w·c (and b·c)
/// become new weights when the graph is written back.
fn mul_into_weight(eg: &mut EGraph, class: Id, s: &Subst) -> Option<Id> {
    for (m, c) in [
        (super::get(s, "?x")?, super::get(s, "?y")?),
        (super::get(s, "?y")?, super::get(s, "?x")?),
    ] {
        if eg[c].data.splat.is_none() || !same_type(eg, class, m) {
            continue;
        }
        for op in [Op::MatMul, Op::Linear] {
            for n in nodes_of(eg, m, op) {
                let ops = n.operands().to_vec();
                let (Some(&x), Some(&w)) = (ops.first(), ops.get(1)) else {
                    continue;
                };
                let b = ops.get(2).copied();
                if !is_scalable_weight(eg, w) || b.is_some_and(|b| !is_scalable_weight(eg, b)) {
                    continue;
                }
                let wc = add_op(eg, Op::Mul, &[w, c], Attrs::new());
                if ty(eg, wc) != ty(eg, w) {
                    continue; // c would broadcast the weight
                }
                let mut new = vec![x, wc];
                if let Some(b) = b {
                    new.push(add_op(eg, Op::Mul, &[b, c], Attrs::new()));
                }
                let id = add_op(eg, op, &new, attrs_of(eg, &n).cloned().unwrap_or_default());
                if same_type(eg, id, class) {
                    return Some(id);
                }
            }
        }
    }
    None
}

/// The rules of this theme.
#[rustfmt::skip]
pub fn rules() -> Vec<Rewrite<ENode, TypeAnalysis>> {
    vec![
        rw!("algebra/mul-one";          "(mul ?x ?c ?a)" => "?x" if unit("?c", "?x", 1.0)),
        rw!("algebra/one-mul";          "(mul ?c ?x ?a)" => "?x" if unit("?c", "?x", 1.0)),
        rw!("algebra/add-zero";         "(add ?x ?c ?a)" => "?x" if unit("?c", "?x", 0.0)),
        rw!("algebra/zero-add";         "(add ?c ?x ?a)" => "?x" if unit("?c", "?x", 0.0)),
        rw!("algebra/sub-zero";         "(sub ?x ?c ?a)" => "?x" if unit("?c", "?x", 0.0)),
        rw!("algebra/div-one";          "(div ?x ?c ?a)" => "?x" if unit("?c", "?x", 1.0)),
        rw!("algebra/cast-same-type";   "(cast ?x ?a)"   => "?x" if cast_is_noop),
        rw!("algebra/one-div";          "(div ?c ?x ?a)" => "(reciprocal ?x noattrs)" if is_const("?c", 1.0)),
        rw!("algebra/reciprocal-sqrt";  "(reciprocal (sqrt ?x ?a) ?b)" => "(rsqrt ?x noattrs)"),
        fn_rule("algebra/mul-into-weight", "(mul ?x ?y ?a)", mul_into_weight),
        rw!("algebra/pow-two";          "(pow ?x ?c ?a)" => "(mul ?x ?x noattrs)" if is_const("?c", 2.0)),
    ]
}
