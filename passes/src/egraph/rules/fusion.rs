//! Fusion: RMSNorm and LayerNorm recognised from the primitives exporters emit
//! (reduce_mean, pow or mul, add eps, sqrt, div or reciprocal or rsqrt, the scale and
//! bias) become one `rms_norm` / `layer_norm`. The structural work is in `matchers`.

use super::{fn_rule, get};
use crate::egraph::lang::{EGraph, ENode, TypeAnalysis};
use crate::egraph::matchers::{add_op, match_layer_norm, match_rms_norm};
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

/// The rules of this theme.
pub fn rules() -> Vec<Rewrite<ENode, TypeAnalysis>> {
    vec![
        fn_rule("fusion/rms-norm", "(mul ?x ?y ?a)", to_rms_norm),
        fn_rule("fusion/layer-norm", "(add ?x ?y ?a)", add_to_layer_norm),
        fn_rule(
            "fusion/layer-norm-no-bias",
            "(mul ?x ?y ?a)",
            mul_to_layer_norm,
        ),
    ]
}
