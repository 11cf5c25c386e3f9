//! Attention: `attention` (what the GGUF/HF frontends emit) becomes `flash_attention`,
//! and softmax(q·kᵀ·scale + mask)·v built from primitives (what ONNX exporters emit,
//! with head split transposes, GQA repeat_kv and additive masks) becomes one
//! `flash_attention` too. The structural work is in `matchers::match_attention`.

use super::{fn_rule, get};
use crate::egraph::lang::{EGraph, ENode, TypeAnalysis};
use crate::egraph::matchers::{add_op, match_attention, perm_attrs, Operand};
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
    for x in m.masks {
        mask = Some(match mask {
            None => x,
            Some(prev) => add_op(eg, Op::Add, &[prev, x], Attrs::new()),
        });
    }
    ops.extend(mask);
    let mut a = Attrs::new();
    a.insert("scale".into(), Attr::Float(m.scale));
    let id = add_op(eg, Op::FlashAttention, &ops, a);
    eg[id].data.types.is_some().then_some(id)
}

/// The rules of this theme.
#[rustfmt::skip]
pub fn rules() -> Vec<Rewrite<ENode, TypeAnalysis>> {
    vec![
        rw!("attention/flash";          "(attention ?q ?k ?v ?a)"    => "(flash_attention ?q ?k ?v ?a)"),
        rw!("attention/flash-masked";   "(attention ?q ?k ?v ?m ?a)" => "(flash_attention ?q ?k ?v ?m ?a)"),
        fn_rule("attention/primitives",     "(matmul ?p ?v ?a)",         primitives_to_flash),
    ]
}
