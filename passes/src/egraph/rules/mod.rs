//! The rewrite rules, one themed file each: `algebra` (identities and their canonical
//! spellings), `layout` (transpose/reshape cancellation), `attention` (to
//! flash_attention) and `fusion` (norms). Rules are named `"theme/what"`, one direction,
//! with conditions as named predicates; [`all`] lists them in one place.

pub mod algebra;
pub mod attention;
pub mod fusion;
pub mod layout;

use super::lang::{EGraph, ENode, TypeAnalysis};
use egg::{Applier, Id, PatternAst, Rewrite, Subst, Symbol, Var};

/// Every rule the pass runs.
pub fn all() -> Vec<Rewrite<ENode, TypeAnalysis>> {
    let mut v = Vec::new();
    v.extend(algebra::rules());
    v.extend(layout::rules());
    v.extend(attention::rules());
    v.extend(fusion::rules());
    v
}

/// A pattern variable.
pub fn var(s: &str) -> Var {
    s.parse()
        .unwrap_or_else(|_| panic!("bad pattern variable {s} in a rule"))
}

/// The class a variable is bound to.
pub fn get(subst: &Subst, v: &str) -> Option<Id> {
    subst.get(var(v)).copied()
}

/// The single result types of two classes are equal (so replacing one by the other
/// keeps the graph's types).
pub fn same_type(eg: &EGraph, a: Id, b: Id) -> bool {
    match (eg[a].data.ty(), eg[b].data.ty()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// An applier written as a function of the match: it returns the class to union with
/// the matched one, or `None` when the match does not apply.
pub struct FnApplier(pub fn(&mut EGraph, Id, &Subst) -> Option<Id>);

impl Applier<ENode, TypeAnalysis> for FnApplier {
    fn apply_one(
        &self,
        egraph: &mut EGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<ENode>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        match (self.0)(egraph, eclass, subst) {
            Some(new) if egraph.union(eclass, new) => vec![new],
            _ => Vec::new(),
        }
    }
}

/// A rule whose right-hand side is a function.
pub fn fn_rule(
    name: &str,
    lhs: &str,
    f: fn(&mut EGraph, Id, &Subst) -> Option<Id>,
) -> Rewrite<ENode, TypeAnalysis> {
    let pat: egg::Pattern<ENode> = lhs
        .parse()
        .unwrap_or_else(|e| panic!("rule {name}: bad pattern {lhs}: {e}"));
    Rewrite::new(name, pat, FnApplier(f)).unwrap_or_else(|e| panic!("rule {name}: {e}"))
}
