//! Fusion: RMSNorm and LayerNorm recognised from the primitives exporters emit
//! (reduce_mean, pow or mul, add eps, sqrt, div or reciprocal or rsqrt, the scale and
//! bias) become one `rms_norm` / `layer_norm`. The structural work is in `matchers`.
//! A matmul by a weight (followed by a bias add or not) becomes `linear` (the packed
//! GEMM, with the bias as its epilogue), its weight transposed once at compile time.
//! GEMM epilogues and gated units: an exact GELU spelled in primitives becomes `gelu`;
//! an activation of a `linear` used by nothing else becomes `linear_act`; act(gate) ·
//! up over two GEMM results becomes `glu` (SwiGLU, GeGLU). The conditions are the
//! named predicates of `gemm`. (Merging the gate and up GEMMs, and Q/K/V, into one
//! GEMM is the `merge` pass: the critical-path cost cannot see that saving.)

use super::{fn_rule, get};
use crate::egraph::gemm::{activations, is_act_epilogue, match_erf_gelu, match_glu, match_silu};
use crate::egraph::lang::{EGraph, ENode, TypeAnalysis};
use crate::egraph::matchers::{add_op, match_layer_norm, match_rms_norm, nodes_of, perm_attrs, ty};
use egg::{Id, Rewrite, Subst};
use llmc_ir::{Attr, Attrs, Op};

fn eps_attrs(eps: f64) -> Attrs {
    let mut a = Attrs::new();
    a.insert("eps".into(), Attr::Float(eps));
    a
}

/// The matched binary node.
fn binary(op: Op, s: &Subst) -> Option<ENode> {
    Some(ENode::op(
        op,
        &[get(s, "?x")?, get(s, "?y")?],
        get(s, "?a")?,
    ))
}

fn to_rms_norm(eg: &mut EGraph, _class: Id, s: &Subst) -> Option<Id> {
    let m = match_rms_norm(eg, &binary(Op::Mul, s)?).ok()?;
    let id = add_op(eg, Op::RmsNorm, &[m.x, m.w], eps_attrs(m.eps));
    eg[id].data.types.is_some().then_some(id)
}

fn to_layer_norm(op: Op, eg: &mut EGraph, s: &Subst) -> Option<Id> {
    let m = match_layer_norm(eg, &binary(op, s)?).ok()?;
    let mut ops = vec![m.x, m.w];
    ops.extend(m.b);
    let id = add_op(eg, Op::LayerNorm, &ops, eps_attrs(m.eps));
    eg[id].data.types.is_some().then_some(id)
}

fn add_to_layer_norm(eg: &mut EGraph, _class: Id, s: &Subst) -> Option<Id> {
    to_layer_norm(Op::Add, eg, s)
}

fn mul_to_layer_norm(eg: &mut EGraph, _class: Id, s: &Subst) -> Option<Id> {
    to_layer_norm(Op::Mul, eg, s)
}

/// `w` is a 2-D weight (or weight-only value) [k, n] and `b` a [n] vector of x's dtype:
/// matmul(x, w) + b is linear(x, wᵀ, b), with wᵀ folded at compile time.
pub fn is_bias_epilogue(eg: &EGraph, w: Id, b: Id) -> bool {
    let (Some(wt), Some(bt)) = (ty(eg, w), ty(eg, b)) else {
        return false;
    };
    eg[w].data.konst
        && wt.dtype.is_float()
        && !wt.dtype.is_quantized()
        && wt.shape.rank() == 2
        && bt.shape.rank() == 1
        && bt.shape.0.first() == wt.shape.0.get(1)
        && bt.dtype == wt.dtype
}

/// add(matmul(x, w), b) → linear(x, transpose(w), b).
fn to_linear(eg: &mut EGraph, _class: Id, s: &Subst) -> Option<Id> {
    for (mm, b) in [
        (get(s, "?x")?, get(s, "?y")?),
        (get(s, "?y")?, get(s, "?x")?),
    ] {
        for n in nodes_of(eg, mm, Op::MatMul) {
            let [x, w] = n.operands() else { continue };
            let (x, w) = (*x, *w);
            if !is_bias_epilogue(eg, w, b) || ty(eg, x).is_none_or(|t| t.shape.rank() < 2) {
                continue;
            }
            let wt = add_op(eg, Op::Transpose, &[w], perm_attrs(&[1, 0]));
            let id = add_op(eg, Op::Linear, &[x, wt, b], Attrs::new());
            if eg[id].data.types.is_some() {
                return Some(id);
            }
        }
    }
    None
}

/// matmul(x, w) → linear(x, transpose(w)) for a 2-D float weight `w` [k, n] (no bias
/// add after it; `to_linear` takes those): the weight is transposed once at compile
/// time and the product runs the packed GEMM instead of the generic matmul loop.
fn weight_matmul_to_linear(eg: &mut EGraph, class: Id, s: &Subst) -> Option<Id> {
    let (x, w) = (get(s, "?x")?, get(s, "?y")?);
    let wt = ty(eg, w)?;
    if !(eg[w].data.konst
        && wt.dtype.is_float()
        && !wt.dtype.is_quantized()
        && wt.shape.rank() == 2
        && ty(eg, x).is_some_and(|t| t.shape.rank() >= 2))
    {
        return None;
    }
    let t = add_op(eg, Op::Transpose, &[w], perm_attrs(&[1, 0]));
    let id = add_op(eg, Op::Linear, &[x, t], Attrs::new());
    (eg[id].data.types.is_some() && ty(eg, id) == ty(eg, class)).then_some(id)
}

/// x · (1 + erf(x/√2)) · 0.5 → gelu(x).
fn to_gelu(eg: &mut EGraph, class: Id, _s: &Subst) -> Option<Id> {
    let x = match_erf_gelu(eg, class)?;
    let id = add_op(eg, Op::Gelu, &[x], Attrs::new());
    eg[id].data.types.is_some().then_some(id)
}

/// x · sigmoid(x) → silu(x).
fn to_silu(eg: &mut EGraph, _class: Id, s: &Subst) -> Option<Id> {
    let x = match_silu(eg, &binary(Op::Mul, s)?)?;
    let id = add_op(eg, Op::Silu, &[x], Attrs::new());
    eg[id].data.types.is_some().then_some(id)
}

/// act(linear(x, w[, b])) → linear_act(x, w[, b]) {act}, when `is_act_epilogue`.
fn to_linear_act(eg: &mut EGraph, class: Id, s: &Subst) -> Option<Id> {
    let lin = get(s, "?x")?;
    let (act, _) = activations(eg, class)
        .into_iter()
        .find(|&(_, x)| eg.find(x) == eg.find(lin))?;
    is_act_epilogue(eg, lin, class).ok()?;
    for n in nodes_of(eg, lin, Op::Linear) {
        let ops = n.operands().to_vec();
        let id = add_op(eg, Op::LinearAct, &ops, act.attrs());
        if eg[id].data.types.is_some() {
            return Some(id);
        }
    }
    None
}

/// mul(act(gate), up) → glu(gate, up) {act}, when `match_glu`.
fn to_glu(eg: &mut EGraph, class: Id, s: &Subst) -> Option<Id> {
    let m = match_glu(eg, class, &binary(Op::Mul, s)?).ok()?;
    let id = add_op(eg, Op::Glu, &[m.gate, m.up], m.act.attrs());
    eg[id].data.types.is_some().then_some(id)
}

/// The rules of this theme.
#[rustfmt::skip]
pub fn rules() -> Vec<Rewrite<ENode, TypeAnalysis>> {
    vec![
        fn_rule("fusion/rms-norm",           "(mul ?x ?y ?a)", to_rms_norm),
        fn_rule("fusion/layer-norm",         "(add ?x ?y ?a)", add_to_layer_norm),
        fn_rule("fusion/layer-norm-no-bias", "(mul ?x ?y ?a)", mul_to_layer_norm),
        fn_rule("fusion/matmul-bias-linear", "(add ?x ?y ?a)", to_linear),
        fn_rule("fusion/matmul-weight-linear", "(matmul ?x ?y ?a)", weight_matmul_to_linear),
        fn_rule("fusion/gelu-erf",           "(mul ?x ?y ?a)", to_gelu),
        fn_rule("fusion/silu",               "(mul ?x ?y ?a)", to_silu),
        fn_rule("fusion/linear-silu",        "(silu ?x ?a)",    to_linear_act),
        fn_rule("fusion/linear-gelu",        "(gelu ?x ?a)",    to_linear_act),
        fn_rule("fusion/linear-relu",        "(relu ?x ?a)",    to_linear_act),
        fn_rule("fusion/linear-tanh",        "(tanh ?x ?a)",    to_linear_act),
        fn_rule("fusion/linear-sigmoid",     "(sigmoid ?x ?a)", to_linear_act),
        fn_rule("fusion/glu",                "(mul ?x ?y ?a)", to_glu),
    ]
}
