//! Layout: transpose∘transpose composes (and an identity permutation disappears),
//! reshape∘reshape is one reshape, and reshapes/expands to the same type are no-ops.

use super::{fn_rule, get, same_type};
use crate::egraph::lang::{EGraph, ENode, TypeAnalysis};
use crate::egraph::matchers::{add_op, attrs_of, is_identity_perm, nodes_of, perm_attrs};
use egg::{rewrite as rw, Id, Rewrite, Subst};
use llmc_ir::{AttrsExt, Op};

/// The op keeps the type of its operand.
fn keeps_type(eg: &mut EGraph, class: Id, s: &Subst) -> bool {
    get(s, "?x").is_some_and(|x| same_type(eg, class, x))
}

/// The transpose's permutation is the identity.
fn identity_perm(eg: &mut EGraph, _: Id, s: &Subst) -> bool {
    get(s, "?a")
        .and_then(|a| eg[a].data.attrs.clone())
        .and_then(|a| a.attrs().ints("perm").map(is_identity_perm))
        .unwrap_or(false)
}

/// transpose(transpose(x, p), q) = transpose(x, p∘q): out axis i reads x axis p[q[i]].
fn compose_transposes(eg: &mut EGraph, _class: Id, s: &Subst) -> Option<Id> {
    let (inner, q) = (get(s, "?t")?, get(s, "?b")?);
    let q = eg[q].data.attrs.clone()?.attrs().ints("perm")?.to_vec();
    for t in nodes_of(eg, inner, Op::Transpose) {
        let p = attrs_of(eg, &t)?.ints("perm")?.to_vec();
        let [x] = t.operands() else { continue };
        if p.len() != q.len() {
            continue;
        }
        let mut r = Vec::with_capacity(q.len());
        for &qi in &q {
            r.push(*p.get(usize::try_from(qi).ok()?)?);
        }
        let x = *x;
        if is_identity_perm(&r) {
            return Some(x);
        }
        return Some(add_op(eg, Op::Transpose, &[x], perm_attrs(&r)));
    }
    None
}

/// The rules of this theme.
#[rustfmt::skip]
pub fn rules() -> Vec<Rewrite<ENode, TypeAnalysis>> {
    vec![
        rw!("layout/reshape-same-type";    "(reshape ?x ?a)" => "?x" if keeps_type),
        rw!("layout/expand-same-type";     "(expand ?x ?a)"  => "?x" if keeps_type),
        rw!("layout/transpose-identity";   "(transpose ?x ?a)" => "?x" if identity_perm),
        rw!("layout/reshape-reshape";      "(reshape (reshape ?x ?a) ?b)" => "(reshape ?x ?b)"),
        fn_rule("layout/transpose-transpose", "(transpose ?t ?b)",           compose_transposes),
    ]
}
