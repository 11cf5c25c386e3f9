//! The GEMM-side matchers and predicates: what the `fusion/` rules for activation
//! epilogues (`linear_act`), gated units (`glu`, SwiGLU/GeGLU) and erf-GELU
//! recognition check before they fire, and what `--explain-fusion` reports when they
//! do not. Each condition is a named predicate so a rule reads as its conditions and
//! an explanation names the one that failed.

use super::lang::{EGraph, ENode, Head};
use super::matchers::{attrs_of, is_splat, nodes_of, splat, ty};
use egg::Id;
use llmc_ir::ops::fused_gemm::Act;
use llmc_ir::Op;
use std::collections::HashSet;

/// How far up [`only_feeds`] looks before giving up (a GELU spelled out in
/// primitives is 5 nodes deep).
const DOMINANCE_CLASSES: usize = 16;

/// The classes using `id` (canonical, distinct).
pub fn users(eg: &EGraph, id: Id) -> Vec<Id> {
    let mut u: Vec<Id> = eg[id].parents().map(|p| eg.find(p)).collect();
    u.sort();
    u.dedup();
    u
}

/// Every use of `id` flows into `into` (and nowhere else): the value can be computed
/// inside `into`'s fused op without being computed a second time for another user.
/// `into` itself counts as the end of every path; a graph output or a stateful root
/// that reads an intermediate class fails it.
pub fn only_feeds(eg: &EGraph, id: Id, into: Id) -> bool {
    let (id, into) = (eg.find(id), eg.find(into));
    let mut seen: HashSet<Id> = HashSet::new();
    let mut todo = vec![id];
    while let Some(c) = todo.pop() {
        let ups = users(eg, c);
        if ups.is_empty() && c != into {
            return false;
        }
        for p in ups {
            if p == into || p == c || !seen.insert(p) {
                continue;
            }
            if seen.len() > DOMINANCE_CLASSES
                || eg[p]
                    .nodes
                    .iter()
                    .any(|n| matches!(n.head, Head::Outputs(_)))
            {
                return false;
            }
            todo.push(p);
        }
    }
    true
}

/// Class `id` holds a GEMM result (`linear`, `linear_act` or `matmul`).
pub fn is_gemm_output(eg: &EGraph, id: Id) -> bool {
    eg[id]
        .nodes
        .iter()
        .any(|n| matches!(n.as_op(), Some(Op::Linear | Op::LinearAct | Op::MatMul)))
}

/// The activation nodes of class `id`: (activation, its operand class).
pub fn activations(eg: &EGraph, id: Id) -> Vec<(Act, Id)> {
    eg[id]
        .nodes
        .iter()
        .filter_map(|n| {
            let op = n.as_op()?;
            let act = Act::of_node(op, attrs_of(eg, n)?)?;
            match n.operands() {
                [x] => Some((act, *x)),
                _ => None,
            }
        })
        .collect()
}

/// A gated-unit match: act(gate) · up.
pub struct GluMatch {
    /// The activation.
    pub act: Act,
    /// The gate (the activation's operand).
    pub gate: Id,
    /// The up projection.
    pub up: Id,
}

/// Why a candidate did not match.
pub type Why = String;

/// mul(act(gate), up) with gate and up GEMM results of one type, and the activation
/// used by this product only (`only_feeds`).
pub fn match_glu(eg: &EGraph, mul_class: Id, n: &ENode) -> Result<GluMatch, Why> {
    let [a, b] = n.operands() else {
        return Err("not a binary mul".into());
    };
    let mut why = "neither operand is an activation (silu, gelu, relu, tanh, sigmoid)".to_string();
    for (actc, up) in [(*a, *b), (*b, *a)] {
        for (act, gate) in activations(eg, actc) {
            if !is_gemm_output(eg, gate) {
                why = format!(
                    "the {} gate's operand is not a GEMM (linear/matmul) result",
                    act.name()
                );
                continue;
            }
            if !is_gemm_output(eg, up) {
                why = format!(
                    "the operand multiplied with {}(gate) is not a GEMM result",
                    act.name()
                );
                continue;
            }
            if eg.find(gate) == eg.find(up) {
                why = format!(
                    "x · {}(x) is an activation of one value, not a gated unit",
                    act.name()
                );
                continue;
            }
            if ty(eg, gate).is_none() || ty(eg, gate) != ty(eg, up) {
                why = "gate and up have different types".into();
                continue;
            }
            if !only_feeds(eg, actc, mul_class) {
                why = format!("{}(gate) has other users besides this product", act.name());
                continue;
            }
            return Ok(GluMatch { act, gate, up });
        }
    }
    Err(why)
}

/// The activation class `act_class` is the gate of a gated unit: it is used by one
/// product with a GEMM result of its type, so `fusion/glu` takes it (and the gate/up
/// pair can later share one GEMM) rather than an epilogue.
pub fn feeds_glu(eg: &EGraph, act_class: Id) -> bool {
    let ups = users(eg, act_class);
    let [m] = ups[..] else { return false };
    nodes_of(eg, m, Op::Mul)
        .iter()
        .any(|n| match_glu(eg, m, n).is_ok())
}

/// act(linear(x, w[, b])) may become `linear_act`: class `x` holds a `linear`, every
/// use of it flows into the activation (`only_feeds`), and the activation is not a
/// gated unit's gate (`feeds_glu`).
pub fn is_act_epilogue(eg: &EGraph, lin: Id, act_class: Id) -> Result<(), Why> {
    if nodes_of(eg, lin, Op::Linear).is_empty() {
        return Err("the activation's operand is not a linear".into());
    }
    if !only_feeds(eg, lin, act_class) {
        return Err("the linear's result has other users besides the activation".into());
    }
    if feeds_glu(eg, act_class) {
        return Err("the activation is a gated unit's gate (fused into glu instead)".into());
    }
    Ok(())
}

/// The factors of a product tree under class `id`, at most `depth` muls deep (one
/// e-node per class: the first mul found).
fn factors(eg: &EGraph, id: Id, depth: usize, out: &mut Vec<Id>) {
    if depth > 0 {
        if let Some(m) = nodes_of(eg, id, Op::Mul).into_iter().next() {
            if let [a, b] = m.operands() {
                factors(eg, *a, depth - 1, out);
                factors(eg, *b, depth - 1, out);
                return;
            }
        }
    }
    out.push(eg.find(id));
}

/// `t` is x/√2 (div by √2 or mul by 1/√2): the erf argument of an exact GELU.
pub fn is_erf_gelu_arg(eg: &EGraph, t: Id, x: Id) -> bool {
    let near = |v: Option<f64>, want: f64| v.is_some_and(|v| (v - want).abs() <= 1e-6 * want);
    let s2 = std::f64::consts::SQRT_2;
    nodes_of(eg, t, Op::Div).iter().any(|n| match n.operands() {
        [a, b] => eg.find(*a) == eg.find(x) && near(splat(eg, *b), s2),
        _ => false,
    }) || nodes_of(eg, t, Op::Mul).iter().any(|n| match n.operands() {
        [a, b] => {
            (eg.find(*a) == eg.find(x) && near(splat(eg, *b), 1.0 / s2))
                || (eg.find(*b) == eg.find(x) && near(splat(eg, *a), 1.0 / s2))
        }
        _ => false,
    })
}

/// x · (1 + erf(x/√2)) · 0.5 in any grouping and order of the three factors: the
/// exact GELU as exporters spell it. Returns x.
pub fn match_erf_gelu(eg: &EGraph, mul_class: Id) -> Option<Id> {
    let mut fs = Vec::new();
    factors(eg, mul_class, 2, &mut fs);
    if fs.len() != 3 {
        return None;
    }
    let half = fs.iter().position(|&f| is_splat(eg, f, 0.5))?;
    fs.remove(half);
    for (x, p) in [(fs[0], fs[1]), (fs[1], fs[0])] {
        let ok = nodes_of(eg, p, Op::Add).iter().any(|n| {
            let [a, b] = n.operands() else { return false };
            [(*a, *b), (*b, *a)].iter().any(|&(e, one)| {
                is_splat(eg, one, 1.0)
                    && nodes_of(eg, e, Op::Erf).iter().any(|en| {
                        en.operands()
                            .first()
                            .is_some_and(|&t| is_erf_gelu_arg(eg, t, x))
                    })
            })
        });
        if ok && ty(eg, x) == ty(eg, mul_class) {
            return Some(x);
        }
    }
    None
}

/// mul(x, sigmoid(x)) in either order: SiLU as exporters spell it. Returns x.
pub fn match_silu(eg: &EGraph, n: &ENode) -> Option<Id> {
    let [a, b] = n.operands() else { return None };
    [(*a, *b), (*b, *a)].into_iter().find_map(|(x, s)| {
        nodes_of(eg, s, Op::Sigmoid)
            .iter()
            .any(|sn| {
                sn.operands()
                    .first()
                    .is_some_and(|&y| eg.find(y) == eg.find(x))
            })
            .then_some(x)
    })
}
