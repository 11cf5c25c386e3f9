//! Layout: transpose∘transpose composes (and an identity permutation disappears),
//! reshape∘reshape is one reshape, reshapes/expands to the same type are no-ops, and a
//! transpose moves before a reshape that only inserts unit axes (so dynamo's
//! `transpose(reshape(transpose(reshape(k, [h, t, d])), [1, h, d, t]))` meets its
//! twin and the pair cancels).

use super::{fn_rule, get, same_type};
use crate::egraph::lang::{EGraph, ENode, TypeAnalysis};
use crate::egraph::matchers::{add_op, attrs_of, is_identity_perm, nodes_of, perm_attrs, ty};
use egg::{rewrite as rw, Id, Rewrite, Subst};
use llmc_ir::{attrs, Attr, AttrsExt, Op};

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

/// transpose(reshape(y, r), q) where the reshape only inserts unit axes into y:
/// reshape(transpose(y, q'), out), q' being q's order of y's axes.
fn transpose_before_unit_reshape(eg: &mut EGraph, class: Id, s: &Subst) -> Option<Id> {
    let (r, b) = (get(s, "?r")?, get(s, "?b")?);
    let q = eg[b].data.attrs.clone()?.attrs().ints("perm")?.to_vec();
    let out = ty(eg, class)?.shape.clone();
    let rs = ty(eg, r)?.shape.0.clone();
    for rn in nodes_of(eg, r, Op::Reshape) {
        let [y] = rn.operands() else { continue };
        let y = *y;
        let Some(ys) = ty(eg, y).map(|t| t.shape.0.clone()) else {
            continue;
        };
        // Which axis of y each axis of the reshape's output is (None: an inserted 1).
        let mut from = Vec::with_capacity(rs.len());
        let mut j = 0;
        for d in &rs {
            if j < ys.len() && *d == ys[j] {
                from.push(Some(j as i64));
                j += 1;
            } else if d.as_const() == Some(1) {
                from.push(None);
            } else {
                break;
            }
        }
        if j != ys.len() || from.len() != rs.len() || q.len() != rs.len() {
            continue;
        }
        let qp: Vec<i64> = q
            .iter()
            .filter_map(|&qi| usize::try_from(qi).ok().and_then(|i| from.get(i).copied()?))
            .collect();
        if qp.len() != ys.len() {
            continue;
        }
        let t = if is_identity_perm(&qp) {
            y
        } else {
            add_op(eg, Op::Transpose, &[y], perm_attrs(&qp))
        };
        return Some(add_op(
            eg,
            Op::Reshape,
            &[t],
            attrs([("shape", Attr::Shape(out))]),
        ));
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
        fn_rule("layout/transpose-unit-reshape", "(transpose ?r ?b)",        transpose_before_unit_reshape),
    ]
}
