//! Algebra: identities (x·1, x+0, x-0, x/1, cast to the same type) and canonical
//! spellings that make the fusion matchers' job smaller (1/x as reciprocal, 1/sqrt as
//! rsqrt, x^2 as x·x).

use super::same_type;
use crate::egraph::lang::{EGraph, ENode, TypeAnalysis};
use crate::egraph::matchers::is_splat;
use egg::{rewrite as rw, Id, Rewrite, Subst};

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
        rw!("algebra/pow-two";          "(pow ?x ?c ?a)" => "(mul ?x ?x noattrs)" if is_const("?c", 2.0)),
    ]
}
