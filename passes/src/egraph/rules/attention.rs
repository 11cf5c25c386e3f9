//! Attention: `attention` (what the GGUF/HF frontends emit) becomes `flash_attention`,
//! and softmax(q·kᵀ·scale + mask)·v built from primitives (what ONNX exporters emit,
//! with head split transposes, GQA repeat_kv and additive masks) becomes one
//! `flash_attention` too. The structural work is in `matchers::match_attention`; a
//! causal mask (`causal::split_causal`) becomes `causal = true`, what is left of it (the
//! padding part) stays an additive mask. Rotary embeddings spelled x·cos +
//! rotate_half(x)·sin (`rotary::match_rope`) become the `rope` op. The attention scale
//! moves into the q projection's weight when q comes from one (`scale-into-q`).

use super::{fn_rule, get};
use crate::egraph::causal::{causal_fill, is_masking_value, split_causal, window_mask, MaskRest};
use crate::egraph::lang::{EGraph, ENode, TypeAnalysis};
use crate::egraph::matchers::{
    add_op, attrs_of, match_attention, nodes_of, perm_attrs, splat, ty, unrepeat_kv, Operand,
};
use crate::egraph::rotary::match_rope;
use crate::egraph::rules::algebra::is_scalable_weight;
use egg::{rewrite as rw, Id, Rewrite, Subst};
use llmc_ir::{attrs, Attr, Attrs, AttrsExt, Op};

/// Builds flash_attention from a primitive softmax(q·kᵀ·scale + mask)·v.
fn primitives_to_flash(eg: &mut EGraph, _class: Id, s: &Subst) -> Option<Id> {
    let node = ENode::op(Op::MatMul, &[get(s, "?p")?, get(s, "?v")?], get(s, "?a")?);
    let m = match_attention(eg, &node).ok()?;
    let k = match m.k {
        Operand::Class(c) => c,
        Operand::Transposed(c, perm) => add_op(eg, Op::Transpose, &[c], perm_attrs(&perm)),
    };
    let mut ops = vec![m.q, k, m.v];
    ops.extend(build_mask(eg, m.masks)?);
    let mut a = Attrs::new();
    a.insert("scale".into(), Attr::Float(m.scale));
    if m.causal {
        a.insert("causal".into(), Attr::Bool(true));
    }
    if let Some(f) = m.causal_fill {
        a.insert("causal_fill".into(), Attr::Float(f));
    }
    if let Some(c) = m.softcap {
        a.insert("softcap".into(), Attr::Float(c));
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
    let pos = if ty(eg, m.pos).is_some_and(|t| t.shape.rank() == 1) {
        add_op(
            eg,
            Op::Unsqueeze,
            &[m.pos],
            attrs([("axes", Attr::Ints(vec![0]))]),
        )
    } else {
        m.pos
    };
    let id = add_op(eg, Op::Rope, &[m.x, pos], a);
    eg[id].data.types.is_some().then_some(id)
}

/// flash_attention(q, ..) {scale} with q = [rope ∘ transpose ∘ reshape ∘] matmul(x, w)
/// (or linear) and w a weight scaled at compile time: the scale moves into w (rope,
/// transpose and reshape are linear, so they commute with it) and the kernel runs with
/// scale 1. Every value on the way must have attention as its only user, or the other
/// users would see the scaled projection.
fn scale_into_q(eg: &mut EGraph, _class: Id, s: &Subst) -> Option<Id> {
    let a = eg[get(s, "?a")?].data.attrs.clone()?;
    let scale = a.attrs().float("scale")?;
    if scale == 1.0 {
        return None;
    }
    let mut ops = vec![get(s, "?q")?, get(s, "?k")?, get(s, "?v")?];
    ops.extend(get(s, "?m"));
    // Walk down from q through single-use linear views to the projection.
    let mut chain: Vec<ENode> = Vec::new();
    let mut cur = ops[0];
    // Uses the current value may have: 1, or 3 under a rope recognised from its
    // primitives (x·cos and the two halves of rotate_half use x).
    let mut allowed = 1;
    let base = loop {
        if TypeAnalysis::uses(eg, cur) != Some(allowed) || chain.len() > 4 {
            return None;
        }
        let nodes = eg[cur].nodes.clone();
        let pick = |op: Op| nodes.iter().find(|n| n.as_op() == Some(op)).cloned();
        if let Some(n) = pick(Op::MatMul).or_else(|| pick(Op::Linear)) {
            let w = *n.operands().get(1)?;
            let b = n.operands().get(2).copied();
            if is_scalable_weight(eg, w) && b.is_none_or(|b| is_scalable_weight(eg, b)) {
                break n;
            }
        }
        let n = pick(Op::Rope)
            .or_else(|| pick(Op::Transpose))
            .or_else(|| pick(Op::Reshape))?;
        allowed = if n.as_op() == Some(Op::Rope) && !nodes_of(eg, cur, Op::Add).is_empty() {
            3
        } else {
            1
        };
        cur = *n.operands().first()?;
        chain.push(n);
    };
    let mut ct = llmc_ir::Attrs::new();
    ct.insert(
        "value".into(),
        Attr::Tensor(llmc_ir::Tensor::from_f64(
            llmc_ir::DType::F32,
            vec![],
            vec![scale],
        )),
    );
    let c = add_op(eg, Op::Constant, &[], ct);
    let bops = base.operands().to_vec();
    let mut new_ops = vec![bops[0], add_op(eg, Op::Mul, &[bops[1], c], Attrs::new())];
    if let Some(&b) = bops.get(2) {
        new_ops.push(add_op(eg, Op::Mul, &[b, c], Attrs::new()));
    }
    let base_op = base.as_op()?;
    let mut q = add_op(
        eg,
        base_op,
        &new_ops,
        attrs_of(eg, &base).cloned().unwrap_or_default(),
    );
    for n in chain.iter().rev() {
        let mut o = n.operands().to_vec();
        *o.first_mut()? = q;
        q = add_op(
            eg,
            n.as_op()?,
            &o,
            attrs_of(eg, n).cloned().unwrap_or_default(),
        );
    }
    ops[0] = q;
    let mut na = a.attrs().clone();
    na.insert("scale".into(), Attr::Float(1.0));
    let id = add_op(eg, Op::FlashAttention, &ops, na);
    eg[id].data.types.is_some().then_some(id)
}

/// `where(c, x, m)` (or `where(c, m, x)`) with m a masking constant, as
/// `x + where(c, 0, m)` (`x + where(c, m, 0)`).
fn where_as_add(eg: &mut EGraph, w: Id) -> Option<Id> {
    for n in nodes_of(eg, w, Op::Where) {
        let [c, t, f] = n.operands() else { continue };
        let (c, t, f) = (*c, *t, *f);
        let masking = |id: Id| splat(eg, id).is_some_and(is_masking_value);
        let (x, keep_on_true) = if masking(f) && !masking(t) {
            (t, true)
        } else if masking(t) && !masking(f) {
            (f, false)
        } else {
            continue;
        };
        let m = if keep_on_true { f } else { t };
        let dt = ty(eg, x)?.dtype;
        let mut za = Attrs::new();
        za.insert(
            "value".into(),
            Attr::Tensor(llmc_ir::Tensor::from_f64(dt, vec![], vec![0.0])),
        );
        let zero = add_op(eg, Op::Constant, &[], za);
        let ops = if keep_on_true {
            [c, zero, m]
        } else {
            [c, m, zero]
        };
        let mask = add_op(eg, Op::Where, &ops, Attrs::new());
        let sum = add_op(eg, Op::Add, &[x, mask], Attrs::new());
        return (ty(eg, sum) == ty(eg, w)).then_some(sum);
    }
    None
}

/// softmax(where(c, x, m) [+ y]) with m a masking constant (GPT-2's and Gemma 2's
/// eager `where(causal, scores, min)`, DistilBERT's `masked_fill`: `where(c, m, x)`)
/// = softmax(x + where(c, 0, m) [+ y]): the additive-mask form the attention matcher
/// reads. Exact in f32 for the scores attention computes: a masked score is m either
/// way (x + m rounds to m for |x| < 1e31, and is -inf for m = -inf).
fn where_mask_to_add(eg: &mut EGraph, _class: Id, s: &Subst) -> Option<Id> {
    let (w, a) = (get(s, "?w")?, get(s, "?a")?);
    let attrs = eg[a].data.attrs.clone()?;
    let scores = match where_as_add(eg, w) {
        Some(x) => x,
        None => {
            let add = nodes_of(eg, w, Op::Add).into_iter().next()?;
            let [p, q] = add.operands() else { return None };
            let (p, q) = (*p, *q);
            let (inner, other) = match where_as_add(eg, p) {
                Some(x) => (x, q),
                None => (where_as_add(eg, q)?, p),
            };
            let sum = add_op(eg, Op::Add, &[inner, other], Attrs::new());
            if ty(eg, sum) != ty(eg, w) {
                return None;
            }
            sum
        }
    };
    let id = add_op(eg, Op::Softmax, &[scores], attrs.attrs().clone());
    eg[id].data.types.is_some().then_some(id)
}

/// A causal flash_attention whose mask is only a sliding window (what is left of a
/// Mistral/Gemma 2/Gemma 3 export's mask once the causal part became the flag): the
/// `window` attribute instead of the mask. The window keeps each query's own key, so
/// no row is fully masked and `causal_fill` (a fill that sends exp to 0) has nothing
/// to do.
fn window_flag(eg: &mut EGraph, _class: Id, s: &Subst) -> Option<Id> {
    let a = eg[get(s, "?a")?].data.attrs.clone()?;
    let at = a.attrs();
    if at.bool("causal") != Some(true) || at.int("window").is_some() {
        return None;
    }
    if at
        .float("causal_fill")
        .is_some_and(|f| !is_masking_value(f))
    {
        return None;
    }
    let (q, k, v, m) = (get(s, "?q")?, get(s, "?k")?, get(s, "?v")?, get(s, "?m")?);
    let sd = ty(eg, q)?.shape.0.get(2)?.clone();
    let td = ty(eg, k)?.shape.0.get(2)?.clone();
    let w = window_mask(eg, m, &sd, &td)?;
    let mut na = at.clone();
    na.remove("causal_fill");
    na.insert("window".into(), Attr::Int(w));
    let id = add_op(eg, Op::FlashAttention, &[q, k, v], na);
    eg[id].data.types.is_some().then_some(id)
}

/// flash_attention(q, repeat_kv(k), repeat_kv(v), ..) = flash_attention(q, k, v, ..):
/// grouped-query attention whose repeat only became visible after the attention was
/// fused (dynamo writes kᵀ through reshapes and transposes that the layout rules
/// straighten later).
fn gqa_into_flash(eg: &mut EGraph, _class: Id, s: &Subst) -> Option<Id> {
    let a = eg[get(s, "?a")?].data.attrs.clone()?;
    let (q, k, v) = (get(s, "?q")?, get(s, "?k")?, get(s, "?v")?);
    let (k0, nk) = unrepeat_kv(eg, k)?;
    let (v0, nv) = unrepeat_kv(eg, v)?;
    if nk != nv {
        return None;
    }
    let mut ops = vec![q, k0, v0];
    ops.extend(get(s, "?m"));
    let id = add_op(eg, Op::FlashAttention, &ops, a.attrs().clone());
    eg[id].data.types.is_some().then_some(id)
}

/// flash_attention(q, k, v, mask) without the causal flag whose mask holds the causal
/// rule: the flag is set and what is left of the mask stays (after the block-wise run,
/// attention is already flash_attention and its mask is built outside the blocks).
fn causal_flag(eg: &mut EGraph, _class: Id, s: &Subst) -> Option<Id> {
    let a = eg[get(s, "?a")?].data.attrs.clone()?;
    if a.attrs().bool("causal") == Some(true) {
        return None;
    }
    let (q, k, v, m) = (get(s, "?q")?, get(s, "?k")?, get(s, "?v")?, get(s, "?m")?);
    let sd = ty(eg, q)?.shape.0.get(2)?.clone();
    let td = ty(eg, k)?.shape.0.get(2)?.clone();
    let rest = split_causal(eg, m, &sd, &td, 0).ok()?;
    let fill = causal_fill(eg, &rest).ok()?;
    let mut ops = vec![q, k, v];
    ops.extend(build_mask(eg, rest)?);
    let mut na = a.attrs().clone();
    na.insert("causal".into(), Attr::Bool(true));
    if let Some(f) = fill {
        na.insert("causal_fill".into(), Attr::Float(f));
    }
    let id = add_op(eg, Op::FlashAttention, &ops, na);
    eg[id].data.types.is_some().then_some(id)
}

/// The sum of the mask parts left (None when nothing is left).
fn build_mask(eg: &mut EGraph, parts: Vec<MaskRest>) -> Option<Option<Id>> {
    let mut mask: Option<Id> = None;
    for part in parts {
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
    Some(mask)
}

/// Rules that need the whole graph: the causal mask and rope's cos/sin are built once
/// for all layers, outside the repeated blocks, so the block-wise run cannot see them;
/// the pass runs these over the whole graph after it.
#[rustfmt::skip]
pub fn whole_graph_rules() -> Vec<Rewrite<ENode, TypeAnalysis>> {
    vec![
        fn_rule("attention/where-mask",     "(softmax ?w ?a)",           where_mask_to_add),
        fn_rule("attention/primitives",     "(matmul ?p ?v ?a)",         primitives_to_flash),
        fn_rule("attention/causal-flag",    "(flash_attention ?q ?k ?v ?m ?a)", causal_flag),
        fn_rule("attention/rope",           "(add ?x ?y ?a)",            rotary_to_rope),
        fn_rule("attention/scale-into-q",   "(flash_attention ?q ?k ?v ?a)",    scale_into_q),
        fn_rule("attention/scale-into-q-masked", "(flash_attention ?q ?k ?v ?m ?a)", scale_into_q),
        fn_rule("attention/gqa",            "(flash_attention ?q ?k ?v ?a)",    gqa_into_flash),
        fn_rule("attention/gqa-masked",     "(flash_attention ?q ?k ?v ?m ?a)", gqa_into_flash),
        fn_rule("attention/window-flag",    "(flash_attention ?q ?k ?v ?m ?a)", window_flag),
    ]
}

/// The rules of this theme.
#[rustfmt::skip]
pub fn rules() -> Vec<Rewrite<ENode, TypeAnalysis>> {
    vec![
        rw!("attention/flash";          "(attention ?q ?k ?v ?a)"    => "(flash_attention ?q ?k ?v ?a)"),
        rw!("attention/flash-masked";   "(attention ?q ?k ?v ?m ?a)" => "(flash_attention ?q ?k ?v ?m ?a)"),
        fn_rule("attention/where-mask",     "(softmax ?w ?a)",           where_mask_to_add),
        fn_rule("attention/primitives",     "(matmul ?p ?v ?a)",         primitives_to_flash),
        fn_rule("attention/causal-flag",    "(flash_attention ?q ?k ?v ?m ?a)", causal_flag),
        fn_rule("attention/rope",           "(add ?x ?y ?a)",            rotary_to_rope),
        fn_rule("attention/scale-into-q",   "(flash_attention ?q ?k ?v ?a)",    scale_into_q),
        fn_rule("attention/scale-into-q-masked", "(flash_attention ?q ?k ?v ?m ?a)", scale_into_q),
        fn_rule("attention/gqa",            "(flash_attention ?q ?k ?v ?a)",    gqa_into_flash),
        fn_rule("attention/gqa-masked",     "(flash_attention ?q ?k ?v ?m ?a)", gqa_into_flash),
        fn_rule("attention/window-flag",    "(flash_attention ?q ?k ?v ?m ?a)", window_flag),
    ]
}
