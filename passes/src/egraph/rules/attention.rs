//! Attention: `attention` (what the GGUF/HF frontends emit) becomes `flash_attention`,
//! and softmax(q·kᵀ·scale + mask)·v built from primitives (what ONNX exporters emit,
//! with head split transposes, GQA repeat_kv and additive masks) becomes one
//! `flash_attention` too. The structural work is in `matchers::match_attention`; a
//! causal mask (`causal::split_causal`) becomes `causal = true`, what is left of it (the
//! padding part) stays an additive mask. Rotary embeddings spelled x·cos +
//! rotate_half(x)·sin (`rotary::match_rope`) become the `rope` op.

use super::{fn_rule, get};
use crate::egraph::causal::MaskRest;
use crate::egraph::lang::{EGraph, ENode, TypeAnalysis};
use crate::egraph::matchers::{add_op, match_attention, perm_attrs, Operand};
use crate::egraph::rotary::match_rope;
use egg::{rewrite as rw, Id, Rewrite, Subst};
use llmc_ir::{Attr, Attrs, Op};

/// Builds flash_attention from a primitive softmax(q·kᵀ·scale + mask)·v.
fn primitives_to_flash(eg: &mut EGraph, _class: Id, s: &Subst) -> Option<Id> {
    let node = ENode::op(Op::MatMul, &[get(s, "?p")?, get(s, "?v")?], get(s, "?a")?);
    let m = match_attention(eg, &node).ok()?;
    let k = match m.k {
        Operand::Class(c) => c,
        Operand::Transposed(c, perm) => add_op(eg, Op::Transpose, &[c], perm_attrs(&perm)),
    };
    let mut ops = vec![m.q, k, m.v];
    let mut mask: Option<Id> = None;
    for part in m.masks {
        let x = match part {
            MaskRest::Class(c) => c,
            MaskRest::Where {
                terms,
                join,
                on_true,
                on_false,
            } => {
                let mut cond = *terms.first()?;
                for &t in &terms[1..] {
                    cond = add_op(eg, join, &[cond, t], Attrs::new());
                }
                add_op(eg, Op::Where, &[cond, on_true, on_false], Attrs::new())
            }
        };
        mask = Some(match mask {
            None => x,
            Some(prev) => add_op(eg, Op::Add, &[prev, x], Attrs::new()),
        });
    }
    ops.extend(mask);
    let mut a = Attrs::new();
    a.insert("scale".into(), Attr::Float(m.scale));
    if m.causal {
        a.insert("causal".into(), Attr::Bool(true));
    }
    let id = add_op(eg, Op::FlashAttention, &ops, a);
    eg[id].data.types.is_some().then_some(id)
}

/// Builds rope(x, pos) {theta, style = neox[, scale]} from x·cos + rotate_half(x)·sin.
fn rotary_to_rope(eg: &mut EGraph, _class: Id, s: &Subst) -> Option<Id> {
    let node = ENode::op(Op::Add, &[get(s, "?x")?, get(s, "?y")?], get(s, "?a")?);
    let m = match_rope(eg, &node).ok()?;
    let mut a = Attrs::new();
    a.insert("theta".into(), Attr::Float(m.theta));
    a.insert("style".into(), Attr::Str("neox".into()));
    if m.scale != 1.0 {
        a.insert("scale".into(), Attr::Float(m.scale));
    }
    let id = add_op(eg, Op::Rope, &[m.x, m.pos], a);
    eg[id].data.types.is_some().then_some(id)
}

/// The rules of this theme.
#[rustfmt::skip]
pub fn rules() -> Vec<Rewrite<ENode, TypeAnalysis>> {
    vec![
        rw!("attention/flash";          "(attention ?q ?k ?v ?a)"    => "(flash_attention ?q ?k ?v ?a)"),
        rw!("attention/flash-masked";   "(attention ?q ?k ?v ?m ?a)" => "(flash_attention ?q ?k ?v ?m ?a)"),
        fn_rule("attention/primitives",     "(matmul ?p ?v ?a)",         primitives_to_flash),
        fn_rule("attention/rope",           "(add ?x ?y ?a)",            rotary_to_rope),
    ]
}
