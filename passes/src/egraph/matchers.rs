//! Structural matchers for the big fusions (attention, RMSNorm, LayerNorm). Exporters
//! spell these many ways (scale on Q, K or the scores, by mul or div; masks added on
//! either side; 1/sqrt as div, reciprocal or rsqrt), and a pattern per spelling would
//! multiply. Each matcher walks e-classes instead, trying every spelling at each step,
//! and either returns what it found or a [`Blocked`] saying how far it got and what
//! stopped it. The rewrite rules apply the found results; `--explain-fusion` prints the
//! blocks. Each condition is a named predicate.

use super::causal::{split_causal, MaskRest};
use super::lang::{AttrsKey, EGraph, ENode, Head};
use egg::Id;
use llmc_ir::{Attr, Attrs, AttrsExt, DType, Op, TensorType};

/// Why a candidate did not match: the pattern, how many steps of it matched (the
/// larger, the nearer), and what stopped it.
#[derive(Clone, Debug, PartialEq)]
pub struct Blocked {
    /// The pattern tried (`attention`, `rms_norm`, `layer_norm`).
    pub pattern: &'static str,
    /// Steps of the pattern that matched before the block.
    pub depth: u32,
    /// What blocked it.
    pub msg: String,
}

fn blocked<T>(pattern: &'static str, depth: u32, msg: impl Into<String>) -> Result<T, Blocked> {
    Err(Blocked {
        pattern,
        depth,
        msg: msg.into(),
    })
}

// ----- e-graph helpers -----

/// The nodes of class `id` whose op is `op`.
pub fn nodes_of(eg: &EGraph, id: Id, op: Op) -> Vec<ENode> {
    eg[id]
        .nodes
        .iter()
        .filter(|n| n.head == Head::Op(op))
        .cloned()
        .collect()
}

/// The attributes of an op node.
pub fn attrs_of<'a>(eg: &'a EGraph, n: &ENode) -> Option<&'a Attrs> {
    n.attrs_class()
        .and_then(|a| eg[a].data.attrs.as_ref())
        .map(AttrsKey::attrs)
}

/// The single result type of class `id`.
pub fn ty(eg: &EGraph, id: Id) -> Option<&TensorType> {
    eg[id].data.ty()
}

/// The splat value of class `id` (a constant whose elements all equal it).
pub fn splat(eg: &EGraph, id: Id) -> Option<f64> {
    eg[id].data.splat
}

/// Adds an op node with the given attributes; returns its class.
pub fn add_op(eg: &mut EGraph, op: Op, operands: &[Id], attrs: Attrs) -> Id {
    let a = eg.add(ENode::leaf(Head::Attrs(AttrsKey::new(attrs, None))));
    eg.add(ENode::op(op, operands, a))
}

/// Are two classes the same value?
fn same(eg: &EGraph, a: Id, b: Id) -> bool {
    eg.find(a) == eg.find(b)
}

/// The operand pairs of a binary node, in both orders when the op is commutative.
fn orders(n: &ENode) -> Vec<(Id, Id)> {
    match n.operands() {
        [a, b]
            if n.as_op()
                .is_some_and(|o| o.flags().has(llmc_ir::ops::Flags::COMMUTATIVE)) =>
        {
            vec![(*a, *b), (*b, *a)]
        }
        [a, b] => vec![(*a, *b)],
        _ => Vec::new(),
    }
}

/// A value read from an f32 constant, as the decimal the user wrote: `1e-5` rather than
/// `9.999999747378752e-6` (the f32 nearest to it), so printed attributes stay readable.
/// Values that are not exactly an f32 are returned unchanged.
pub fn tidy(v: f64) -> f64 {
    let f = v as f32;
    if f as f64 == v && f.is_finite() {
        format!("{f}").parse().unwrap_or(v)
    } else {
        v
    }
}

// ----- named predicates -----

/// `axis` names the last axis of a rank-`rank` tensor.
pub fn is_last_axis(axis: i64, rank: usize) -> bool {
    axis == -1 || (rank > 0 && axis == rank as i64 - 1)
}

/// A reduction's `axes` attribute is exactly the last axis.
pub fn reduces_last_axis(a: &Attrs, rank: usize) -> bool {
    matches!(a.ints("axes"), Some([ax]) if is_last_axis(*ax, rank))
}

/// A reduction keeps its reduced axes.
pub fn keeps_dims(a: &Attrs) -> bool {
    a.bool("keepdims").unwrap_or(true)
}

/// Class `id` is the constant `v` everywhere.
pub fn is_splat(eg: &EGraph, id: Id, v: f64) -> bool {
    splat(eg, id) == Some(v)
}

/// Class `id` is a float tensor.
pub fn is_float(eg: &EGraph, id: Id) -> bool {
    ty(eg, id).is_some_and(|t| t.dtype.is_float())
}

/// A permutation swaps only the last two axes.
pub fn swaps_last_two(perm: &[i64]) -> bool {
    let r = perm.len();
    r >= 2
        && perm[r - 2] == r as i64 - 1
        && perm[r - 1] == r as i64 - 2
        && perm[..r - 2]
            .iter()
            .enumerate()
            .all(|(i, &p)| p == i as i64)
}

/// A permutation is the identity.
pub fn is_identity_perm(perm: &[i64]) -> bool {
    perm.iter().enumerate().all(|(i, &p)| p == i as i64)
}

// ----- attention -----

/// softmax(q·kᵀ·scale + mask)·v, as found.
#[derive(Clone, Debug)]
pub struct AttentionMatch {
    /// q[b, h, s, d].
    pub q: Id,
    /// k: an existing class, or `kt` transposed by the perm given.
    pub k: Operand,
    /// v[b, kvh, t, dv].
    pub v: Id,
    /// Additive masks (summed), without their causal part when `causal`.
    pub masks: Vec<MaskRest>,
    /// The masks held the causal rule (keys after the query's position masked out).
    pub causal: bool,
    /// Why no mask was recognised as causal (when there were masks).
    pub not_causal: Option<String>,
    /// flash_attention's `causal_fill` (see `causal::causal_fill`).
    pub causal_fill: Option<f64>,
    /// Scale applied to the scores.
    pub scale: f64,
    /// Scores soft-capped as c·tanh(score/c) before the masks (Gemma 2), when `Some(c)`.
    pub softcap: Option<f64>,
}

/// An operand the rewrite uses: an existing class, or one to build by a transpose.
#[derive(Clone, Debug)]
pub enum Operand {
    /// An existing class.
    Class(Id),
    /// transpose(class, perm).
    Transposed(Id, Vec<i64>),
}

const ATT: &str = "attention";

/// `p` without sdpa's NaN guard `where(isnan(p), 0, p)` (`isnan` imported as
/// `not(equal(p, p))`): a softmax over a row whose scores are all masked is NaN, the
/// guard makes that row zeros, and `flash_attention` gives zeros for such a row too.
fn strip_nan_guard(eg: &EGraph, p: Id) -> Id {
    for w in nodes_of(eg, p, Op::Where) {
        let [c, zero, x] = w.operands() else { continue };
        if !is_splat(eg, *zero, 0.0) {
            continue;
        }
        let guarded = nodes_of(eg, *c, Op::Not).iter().any(|n| {
            n.operands().first().is_some_and(|&e| {
                nodes_of(eg, e, Op::Equal)
                    .iter()
                    .any(|q| matches!(q.operands(), [a, b] if same(eg, *a, *x) && same(eg, *b, *x)))
            })
        });
        if guarded {
            return *x;
        }
    }
    p
}

/// Matches `matmul(softmax(scores), v)` rooted at the node `pv`.
pub fn match_attention(eg: &EGraph, pv: &ENode) -> Result<AttentionMatch, Blocked> {
    if pv.as_op() != Some(Op::MatMul) {
        return blocked(ATT, 0, "not a matmul");
    }
    let [p, v] = pv.operands() else {
        return blocked(ATT, 0, "matmul without two operands");
    };
    let p = &strip_nan_guard(eg, *p);
    let sms = nodes_of(eg, *p, Op::Softmax);
    // A where-masked softmax also has its additive twin (`attention/where-mask`):
    // take that one.
    // (A where over scores: one branch is not a constant; a mask's are both.)
    fn has_where(eg: &EGraph, x: Id, depth: u32) -> bool {
        nodes_of(eg, x, Op::Where)
            .iter()
            .any(|w| w.operands()[1..].iter().any(|&b| splat(eg, b).is_none()))
            || (depth < 3
                && nodes_of(eg, x, Op::Add)
                    .iter()
                    .all(|a| a.operands().iter().any(|&o| has_where(eg, o, depth + 1)))
                && !nodes_of(eg, x, Op::Add).is_empty())
    }
    let plain = |sm: &&ENode| sm.operands().first().is_some_and(|&x| !has_where(eg, x, 0));
    let Some(sm) = sms.iter().find(plain).or(sms.first()) else {
        return blocked(ATT, 0, "operand 0 of the matmul is not a softmax");
    };
    let rank = ty(eg, *p).map_or(0, |t| t.shape.rank());
    let axis = attrs_of(eg, sm)
        .and_then(|a| a.int("axis"))
        .unwrap_or(i64::MIN);
    if !is_last_axis(axis, rank) {
        return blocked(
            ATT,
            1,
            format!(
                "softmax over axis {axis}; attention needs the last axis ({})",
                rank as i64 - 1
            ),
        );
    }
    if rank != 4 {
        return blocked(
            ATT,
            1,
            format!(
                "scores are rank {rank}; flash_attention needs [b, h, s, t] (heads split into their own axis)"
            ),
        );
    }
    let scores = sm.operands().first().copied().ok_or(Blocked {
        pattern: ATT,
        depth: 1,
        msg: "softmax without operand".into(),
    })?;
    let (qk, scale, masks, softcap) = decompose_scores(eg, scores, 1.0, Vec::new(), 0)?;
    let (q, kt, scale) = strip_qk_scale(eg, qk.0, qk.1, scale);
    // k from kᵀ: fold the transpose that made kᵀ when there is one.
    let mut k = Operand::Transposed(kt, vec![0, 1, 3, 2]);
    for t in nodes_of(eg, kt, Op::Transpose) {
        if let (Some(perm), [x]) = (attrs_of(eg, &t).and_then(|a| a.ints("perm")), t.operands()) {
            if perm.len() == 4 {
                let p2 = vec![perm[0], perm[1], perm[3], perm[2]];
                k = if is_identity_perm(&p2) {
                    Operand::Class(*x)
                } else {
                    Operand::Transposed(*x, p2)
                };
                break;
            }
        }
    }
    for &m in &masks {
        if !is_float(eg, m) {
            return blocked(ATT, 4, "the additive mask is not a float tensor");
        }
    }
    // Grouped-query attention: use k/v before repeat_kv when both were repeated alike.
    let (mut k, mut v) = (k, *v);
    if let Operand::Class(kc) = k {
        if let (Some((k0, nk)), Some((v0, nv))) = (unrepeat_kv(eg, kc), unrepeat_kv(eg, v)) {
            if nk == nv {
                k = Operand::Class(k0);
                v = v0;
            }
        }
    }
    // The rewrite must type-check: q[b,h,s,d], k[b,kvh,t,d], v[b,kvh,t,dv].
    let kty = match &k {
        Operand::Class(c) => ty(eg, *c).cloned(),
        Operand::Transposed(c, perm) => ty(eg, *c).and_then(|t| {
            Op::Transpose
                .infer(&[t], &perm_attrs(perm))
                .ok()
                .and_then(|v| v.into_iter().next())
        }),
    };
    let (Some(qt), Some(kt_), Some(vt)) = (ty(eg, q), kty, ty(eg, v)) else {
        return blocked(ATT, 5, "an operand has no type");
    };
    let mut ins = vec![qt, &kt_, vt];
    let mut mty = None;
    for &m in &masks {
        let Some(t) = ty(eg, m) else {
            return blocked(ATT, 5, "mask has no type");
        };
        mty = Some(match mty {
            None => t.clone(),
            Some(prev) => match Op::Add.infer(&[&prev, t], &Attrs::new()) {
                Ok(v) => v.into_iter().next().unwrap_or(prev),
                Err(e) => return blocked(ATT, 5, format!("masks do not add: {e}")),
            },
        });
    }
    if let Some(t) = &mty {
        ins.push(t);
    }
    if let Err(e) = Op::FlashAttention.infer(&ins, &Attrs::new().tap_scale(scale)) {
        return blocked(ATT, 5, format!("operands do not fit flash_attention: {e}"));
    }
    // The causal part of the masks becomes the causal flag.
    let (mut rest, mut causal, mut not_causal) = (Vec::new(), false, None);
    let st = ty(eg, *p).map(|t| (t.shape.0[2].clone(), t.shape.0[3].clone()));
    // Every mask is tried: a model can carry the causal rule twice (GPT-2's eager
    // attention masks with its own `bias` buffer on top of the model's causal mask);
    // the rule taken twice is the rule once.
    for &m in &masks {
        let split = match &st {
            Some((s, t)) => split_causal(eg, m, s, t, 0),
            None => Err("the scores have no type".into()),
        };
        match split {
            Ok(r) => {
                causal = true;
                rest.extend(r);
            }
            Err(e) => {
                if !causal {
                    not_causal = Some(e);
                }
                rest.push(MaskRest::Class(m));
            }
        }
    }
    let mut causal_fill = None;
    if causal {
        match super::causal::causal_fill(eg, &rest) {
            Ok(f) => causal_fill = f,
            Err(e) => {
                causal = false;
                rest = masks.iter().map(|&m| MaskRest::Class(m)).collect();
                not_causal = Some(e);
            }
        }
    }
    Ok(AttentionMatch {
        q,
        k,
        v,
        masks: rest,
        causal,
        causal_fill,
        not_causal: if causal { None } else { not_causal },
        scale: tidy(scale),
        softcap,
    })
}

trait TapScale {
    fn tap_scale(self, s: f64) -> Attrs;
}
impl TapScale for Attrs {
    fn tap_scale(mut self, s: f64) -> Attrs {
        self.insert("scale".into(), Attr::Float(s));
        self
    }
}

/// `{perm = perm}`.
pub fn perm_attrs(perm: &[i64]) -> Attrs {
    let mut a = Attrs::new();
    a.insert("perm".into(), Attr::Ints(perm.to_vec()));
    a
}

type ScoreParts = ((Id, Id), f64, Vec<Id>, Option<f64>);

/// `c·tanh(y / c)` (or `tanh(y · (1/c)) · c`) at class `x·c`: gives y.
fn softcapped(eg: &EGraph, x: Id, c: f64) -> Option<Id> {
    for t in nodes_of(eg, x, Op::Tanh) {
        let [y] = t.operands() else { continue };
        for n in &eg[*y].nodes {
            let Some(op @ (Op::Div | Op::Mul)) = n.as_op() else {
                continue;
            };
            for (z, d) in orders(n) {
                let Some(dv) = splat(eg, d) else { continue };
                let inner = if op == Op::Div { dv } else { 1.0 / dv };
                if (inner - c).abs() <= 1e-6 * c.abs() {
                    return Some(z);
                }
            }
        }
    }
    None
}

/// scores = (q·kᵀ) scaled by constants and plus masks, in any order.
fn decompose_scores(
    eg: &EGraph,
    s: Id,
    scale: f64,
    masks: Vec<Id>,
    depth: u32,
) -> Result<ScoreParts, Blocked> {
    if depth > 6 {
        return blocked(ATT, 2, "scores are built by more than 6 scale/mask steps");
    }
    let mut nearest: Option<Blocked> = None;
    for n in eg[s].nodes.clone() {
        let Some(op) = n.as_op() else { continue };
        match op {
            Op::MatMul => {
                if let [a, b] = n.operands() {
                    return Ok(((*a, *b), scale, masks, None));
                }
            }
            Op::Mul | Op::Div => {
                for (x, c) in orders(&n) {
                    // Soft-capping: c·tanh(scores / c), the masks added after it.
                    let capped = splat(eg, c)
                        .filter(|&cv| op == Op::Mul && scale == 1.0 && cv > 0.0)
                        .and_then(|cv| Some((softcapped(eg, x, cv)?, cv)));
                    if let Some((y, cv)) = capped {
                        match decompose_scores(eg, y, 1.0, Vec::new(), depth + 1) {
                            Ok((qk, sc, inner, None)) if inner.is_empty() => {
                                return Ok((qk, sc, masks, Some(cv)))
                            }
                            Ok(_) => {
                                nearest = Some(Blocked {
                                    pattern: ATT,
                                    depth: 2,
                                    msg: "a mask or a second cap inside the soft-capping".into(),
                                })
                            }
                            Err(b) => nearest = Some(b),
                        }
                        continue;
                    }
                    if let Some(cv) = splat(eg, c) {
                        let sc = if op == Op::Mul {
                            scale * cv
                        } else {
                            scale / cv
                        };
                        match decompose_scores(eg, x, sc, masks.clone(), depth + 1) {
                            Ok(r) => return Ok(r),
                            Err(b) => nearest = Some(b),
                        }
                    }
                }
            }
            Op::Add => {
                for (x, m) in orders(&n) {
                    let mut ms = masks.clone();
                    ms.push(m);
                    match decompose_scores(eg, x, scale, ms, depth + 1) {
                        Ok(r) => return Ok(r),
                        Err(b) => nearest = Some(b),
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(b) = nearest {
        return Err(b);
    }
    let ops: Vec<String> = eg[s].nodes.iter().map(|n| n.to_string()).collect();
    blocked(
        ATT,
        2,
        format!(
            "the softmax input is {} — not q·kᵀ (a matmul) times a constant scale plus masks",
            ops.join(" / ")
        ),
    )
}

/// Moves constant scales on q or kᵀ into the scale.
fn strip_qk_scale(eg: &EGraph, q: Id, kt: Id, scale: f64) -> (Id, Id, f64) {
    let strip = |x: Id| -> (Id, f64) {
        for n in &eg[x].nodes {
            let Some(op) = n.as_op() else { continue };
            if op == Op::Mul || op == Op::Div {
                for (y, c) in orders(n) {
                    if let Some(cv) = splat(eg, c) {
                        if ty(eg, y) == ty(eg, x) && cv != 0.0 {
                            return (y, if op == Op::Mul { cv } else { 1.0 / cv });
                        }
                    }
                }
            }
        }
        (x, 1.0)
    };
    let (q2, sq) = strip(q);
    let (k2, sk) = strip(kt);
    (q2, k2, scale * sq * sk)
}

/// repeat_kv: reshape(expand|tile(unsqueeze(x, [2]))) from [b, kvh, t, d] to
/// [b, kvh*n, t, d]; gives x and n.
pub fn unrepeat_kv(eg: &EGraph, id: Id) -> Option<(Id, i64)> {
    let out = ty(eg, id)?;
    for r in nodes_of(eg, id, Op::Reshape) {
        let [e] = r.operands() else { continue };
        let e_nodes: Vec<ENode> = eg[*e]
            .nodes
            .iter()
            .filter(|n| matches!(n.as_op(), Some(Op::Expand) | Some(Op::Tile)))
            .cloned()
            .collect();
        for en in e_nodes {
            let [u] = en.operands() else { continue };
            for un in nodes_of(eg, *u, Op::Unsqueeze) {
                let [x] = un.operands() else { continue };
                let axes = attrs_of(eg, &un).and_then(|a| a.ints("axes"));
                if axes != Some(&[2][..]) {
                    continue;
                }
                let xt = ty(eg, *x)?;
                let et = ty(eg, *e)?;
                if xt.shape.rank() != 4 || et.shape.rank() != 5 || out.shape.rank() != 4 {
                    continue;
                }
                let xs = &xt.shape.0;
                let es = &et.shape.0;
                let os = &out.shape.0;
                let n = es[2].as_const()?;
                let expands_only_axis2 =
                    es[0] == xs[0] && es[1] == xs[1] && es[3] == xs[2] && es[4] == xs[3];
                let merged = os[0] == xs[0]
                    && os[1] == xs[1].mul(&llmc_ir::Dim::c(n))
                    && os[2] == xs[2]
                    && os[3] == xs[3];
                if expands_only_axis2 && merged {
                    return Some((*x, n));
                }
            }
        }
    }
    None
}

// ----- norms -----

/// rms_norm(x, w) {eps}, as found.
#[derive(Clone, Debug)]
pub struct NormMatch {
    /// x.
    pub x: Id,
    /// Scale weight [d].
    pub w: Id,
    /// Bias [d] (layer_norm only).
    pub b: Option<Id>,
    /// epsilon.
    pub eps: f64,
}

const RMS: &str = "rms_norm";
const LN: &str = "layer_norm";

/// `w` is a [d] vector of x's dtype with d the last dim of x.
pub fn is_norm_weight(eg: &EGraph, w: Id, x: Id) -> bool {
    match (ty(eg, w), ty(eg, x)) {
        (Some(wt), Some(xt)) => {
            wt.shape.rank() == 1
                && wt.shape.0.first() == xt.shape.0.last()
                && wt.dtype.compute_type() == xt.dtype.compute_type()
                && xt.dtype.is_float()
                && wt.dtype != DType::Bool
        }
        _ => false,
    }
}

/// `v` = reduce_mean(x², last axis, keepdims) + eps: gives eps.
fn mean_square_plus_eps(
    eg: &EGraph,
    v: Id,
    x: Id,
    pat: &'static str,
    d: u32,
) -> Result<f64, Blocked> {
    let mut near = None;
    for n in nodes_of(eg, v, Op::Add) {
        for (m, e) in orders(&n) {
            let Some(eps) = splat(eg, e) else { continue };
            for rm in nodes_of(eg, m, Op::ReduceMean) {
                let [sq] = rm.operands() else { continue };
                let rank = ty(eg, *sq).map_or(0, |t| t.shape.rank());
                let a = attrs_of(eg, &rm).cloned().unwrap_or_default();
                if !reduces_last_axis(&a, rank) {
                    near = Some(Blocked {
                        pattern: pat,
                        depth: d + 2,
                        msg: format!(
                            "reduce_mean over axes {:?}; a norm reduces the last axis only",
                            a.ints("axes").unwrap_or(&[])
                        ),
                    });
                    continue;
                }
                if !keeps_dims(&a) {
                    near = Some(Blocked {
                        pattern: pat,
                        depth: d + 2,
                        msg: "reduce_mean drops the reduced axis (keepdims = false)".into(),
                    });
                    continue;
                }
                if is_square_of(eg, *sq, x) {
                    return Ok(eps);
                }
                near = Some(Blocked {
                    pattern: pat,
                    depth: d + 3,
                    msg: "reduce_mean's operand is not the square of the normalised tensor".into(),
                });
            }
        }
    }
    Err(near.unwrap_or(Blocked {
        pattern: pat,
        depth: d + 1,
        msg: "the variance term is not reduce_mean(x²) + a constant eps".into(),
    }))
}

/// `sq` = x² (pow(x, 2) or x·x, possibly through a cast to the same type).
pub fn is_square_of(eg: &EGraph, sq: Id, x: Id) -> bool {
    eg[sq]
        .nodes
        .iter()
        .any(|n| match (n.as_op(), n.operands()) {
            (Some(Op::Pow), [b, e]) => same(eg, *b, x) && is_splat(eg, *e, 2.0),
            (Some(Op::Mul), [a, b]) => same(eg, *a, x) && same(eg, *b, x),
            _ => false,
        })
}

/// `r` = 1/sqrt(v) in any spelling; gives v.
fn inv_sqrt(eg: &EGraph, r: Id) -> Vec<Id> {
    let mut out = Vec::new();
    for n in &eg[r].nodes {
        match (n.as_op(), n.operands()) {
            (Some(Op::Rsqrt), [v]) => out.push(*v),
            (Some(Op::Reciprocal), [s]) => out.extend(
                nodes_of(eg, *s, Op::Sqrt)
                    .iter()
                    .filter_map(|n| n.operands().first().copied()),
            ),
            (Some(Op::Div), [one, s]) if is_splat(eg, *one, 1.0) => out.extend(
                nodes_of(eg, *s, Op::Sqrt)
                    .iter()
                    .filter_map(|n| n.operands().first().copied()),
            ),
            _ => {}
        }
    }
    out
}

/// `n` = x / sqrt(v) in any spelling; gives (x, v) pairs.
fn div_by_sqrt(eg: &EGraph, n: Id) -> Vec<(Id, Id)> {
    let mut out = Vec::new();
    for node in &eg[n].nodes {
        match node.as_op() {
            Some(Op::Mul) => {
                for (x, r) in orders(node) {
                    for v in inv_sqrt(eg, r) {
                        out.push((x, v));
                    }
                }
            }
            Some(Op::Div) => {
                if let [x, s] = node.operands() {
                    for sq in nodes_of(eg, *s, Op::Sqrt) {
                        if let [v] = sq.operands() {
                            out.push((*x, *v));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Matches w · (x / sqrt(mean(x²) + eps)) rooted at the mul node `top`.
pub fn match_rms_norm(eg: &EGraph, top: &ENode) -> Result<NormMatch, Blocked> {
    if top.as_op() != Some(Op::Mul) {
        return blocked(RMS, 0, "not a mul");
    }
    let mut near = Blocked {
        pattern: RMS,
        depth: 0,
        msg: "no operand is x / sqrt(mean(x²) + eps)".into(),
    };
    for (w, n) in orders(top) {
        for (x, v) in div_by_sqrt(eg, n) {
            match mean_square_plus_eps(eg, v, x, RMS, 1) {
                Ok(eps) => {
                    if !is_norm_weight(eg, w, x) {
                        let (wt, xt) = (ty(eg, w), ty(eg, x));
                        near = Blocked {
                            pattern: RMS,
                            depth: 5,
                            msg: format!(
                                "the scale is {} but rms_norm needs a [d] vector of x's dtype (x is {})",
                                wt.map_or("untyped".into(), |t| t.to_string()),
                                xt.map_or("untyped".into(), |t| t.to_string())
                            ),
                        };
                        continue;
                    }
                    return Ok(NormMatch {
                        x,
                        w,
                        b: None,
                        eps: tidy(eps),
                    });
                }
                Err(b) if b.depth >= near.depth => near = b,
                Err(_) => {}
            }
        }
    }
    Err(near)
}

/// Matches [b +] w · ((x - mean(x)) / sqrt(mean((x - mean(x))²) + eps)) rooted at `top`
/// (an add with a bias, or the mul by the weight).
pub fn match_layer_norm(eg: &EGraph, top: &ENode) -> Result<NormMatch, Blocked> {
    let mut near = Blocked {
        pattern: LN,
        depth: 0,
        msg: "not w · (x - mean(x)) / sqrt(var + eps) [+ b]".into(),
    };
    let mut tops: Vec<(ENode, Option<Id>)> = Vec::new();
    match top.as_op() {
        Some(Op::Add) => {
            for (y, b) in orders(top) {
                for m in nodes_of(eg, y, Op::Mul) {
                    tops.push((m, Some(b)));
                }
            }
        }
        Some(Op::Mul) => tops.push((top.clone(), None)),
        _ => return Err(near),
    }
    for (mul, b) in tops {
        for (w, n) in orders(&mul) {
            for (d, v) in div_by_sqrt(eg, n) {
                // d = x - mean(x)
                for sub in nodes_of(eg, d, Op::Sub) {
                    let [x, mean] = sub.operands() else { continue };
                    let centred = nodes_of(eg, *mean, Op::ReduceMean).iter().any(|rm| {
                        let rank = ty(eg, *x).map_or(0, |t| t.shape.rank());
                        rm.operands().first().is_some_and(|o| same(eg, *o, *x))
                            && attrs_of(eg, rm)
                                .is_some_and(|a| reduces_last_axis(a, rank) && keeps_dims(a))
                    });
                    if !centred {
                        near = Blocked {
                            pattern: LN,
                            depth: 3,
                            msg: "the centred term is not x - reduce_mean(x, last axis)".into(),
                        };
                        continue;
                    }
                    match mean_square_plus_eps(eg, v, d, LN, 3) {
                        Ok(eps) => {
                            if !is_norm_weight(eg, w, *x)
                                || b.is_some_and(|b| !is_norm_weight(eg, b, *x))
                            {
                                near = Blocked {
                                    pattern: LN,
                                    depth: 7,
                                    msg: "scale or bias is not a [d] vector of x's dtype".into(),
                                };
                                continue;
                            }
                            return Ok(NormMatch {
                                x: *x,
                                w,
                                b,
                                eps: tidy(eps),
                            });
                        }
                        Err(bl) if bl.depth >= near.depth => near = bl,
                        Err(_) => {}
                    }
                }
            }
        }
    }
    Err(near)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tidy_recovers_the_written_decimal_of_an_f32() {
        assert_eq!(tidy(1e-5f32 as f64), 1e-5);
        assert_eq!(tidy(0.125), 0.125);
        // Not an f32: unchanged.
        assert_eq!(tidy(0.1), 0.1);
    }

    #[test]
    fn permutation_predicates() {
        assert!(swaps_last_two(&[0, 1, 3, 2]));
        assert!(!swaps_last_two(&[0, 2, 3, 1]));
        assert!(is_identity_perm(&[0, 1, 2]));
        assert!(!is_identity_perm(&[1, 0]));
        assert!(is_last_axis(-1, 4) && is_last_axis(3, 4) && !is_last_axis(2, 4));
    }
}
