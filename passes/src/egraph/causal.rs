//! Causal masks as exporters build them. torch's export never says "causal": it builds
//! an index ramp for the keys and one for the queries (cumsum of ones, offset by the
//! cache length), compares them (`kv <= q`), combines that with the padding mask
//! (`and`), and turns the result into an additive mask (`where(keep, 0, min)`); older
//! exports fill a matrix with the minimum and keep its upper triangle (`trilu`, k = 1);
//! with static shapes the fold pass has already made either one a constant matrix,
//! which is checked element by element.
//! This module recognises the causal part of such a mask, so attention can run with
//! `causal = true` (the kernel then skips the masked keys instead of adding -3.4e38 to
//! them), and says what is left of the mask (the padding part) as an additive mask.
//!
//! The split is exact for every row that has at least one visible key. A row whose
//! keys are all masked (a left-padded query position) gets a uniform average of every
//! key from the additive form (the minimum swamps the scores) and a causal-only average
//! from the split form; such rows are padding, and nothing valid reads them.

use super::lang::EGraph;
use super::matchers::{attrs_of, nodes_of, splat, ty};
use egg::Id;
use llmc_ir::{Attr, AttrsExt, Dim, Op};

/// What is left of an additive mask once its causal part is taken out.
#[derive(Clone, Debug, PartialEq)]
pub enum MaskRest {
    /// An existing additive mask class.
    Class(Id),
    /// `where(join(terms), on_true, on_false)`: the other conditions of a where-mask.
    Where {
        /// The remaining boolean conditions.
        terms: Vec<Id>,
        /// How they combine (`and` for a keep-mask, `or` for a masked-out mask).
        join: Op,
        /// The value where the condition holds.
        on_true: Id,
        /// The value where it does not.
        on_false: Id,
    },
}

/// An added value masks a score out: adding it sends exp(score) to exactly 0 in f32 and
/// f64 (exp(-1e9) underflows in both), so it is the same as skipping the key.
pub fn is_masking_value(v: f64) -> bool {
    v <= -1e9
}

/// The splat value of a class, looking through the views and broadcasts that keep it.
fn splat_deep(eg: &EGraph, id: Id, depth: u32) -> Option<f64> {
    if let Some(v) = splat(eg, id) {
        return Some(v);
    }
    if depth > 4 {
        return None;
    }
    for n in &eg[id].nodes {
        if let (Some(Op::Expand | Op::Reshape | Op::Unsqueeze | Op::Squeeze | Op::Cast), [x]) =
            (n.as_op(), n.operands())
        {
            if let Some(v) = splat_deep(eg, *x, depth + 1) {
                return Some(v);
            }
        }
    }
    None
}

/// A one-element integer value known as a dim: a splat integer constant, or a `dims`
/// node naming one dim (possibly reshaped or cast).
pub fn dim_value(eg: &EGraph, id: Id, depth: u32) -> Option<Dim> {
    if depth > 4 {
        return None;
    }
    let t = ty(eg, id)?;
    if !t.dtype.is_int() || t.shape.0.iter().any(|d| d.as_const() != Some(1)) {
        return None;
    }
    if let Some(v) = splat(eg, id) {
        return (v.fract() == 0.0).then(|| Dim::c(v as i64));
    }
    for n in &eg[id].nodes {
        match (n.as_op(), n.operands()) {
            (Some(Op::Dims), []) => {
                if let Some(Attr::Shape(s)) = attrs_of(eg, n).and_then(|a| a.get("value")) {
                    if let [d] = &s.0[..] {
                        return Some(d.clone());
                    }
                }
            }
            (Some(Op::Reshape | Op::Squeeze | Op::Unsqueeze | Op::Cast), [x]) => {
                if let Some(d) = dim_value(eg, *x, depth + 1) {
                    return Some(d);
                }
            }
            _ => {}
        }
    }
    None
}

/// An index ramp: element i along one axis is `offset + i`, constant along the others.
#[derive(Clone, Debug, PartialEq)]
pub struct Ramp {
    /// The axis, counted from the last (0 = last axis).
    pub axis_from_end: usize,
    /// The value at index 0.
    pub offset: Dim,
}

/// Is class `id` an index ramp (cumsum of ones, unsqueezed or reshaped to add unit
/// axes, expanded, offset by a dim)?
pub fn ramp(eg: &EGraph, id: Id, depth: u32) -> Option<Ramp> {
    if depth > 10 {
        return None;
    }
    let t = ty(eg, id)?;
    if !t.dtype.is_int() {
        return None;
    }
    let r = t.shape.rank();
    for n in &eg[id].nodes {
        let found = match (n.as_op(), n.operands()) {
            (Some(Op::CumSum), [x]) => {
                let a = attrs_of(eg, n)?;
                let ones = splat_deep(eg, *x, 0) == Some(1.0);
                let plain = r == 1
                    && matches!(a.int("axis"), Some(0 | -1))
                    && !a.bool("reverse").unwrap_or(false);
                (ones && plain).then(|| Ramp {
                    axis_from_end: 0,
                    offset: Dim::c(if a.bool("exclusive").unwrap_or(false) {
                        0
                    } else {
                        1
                    }),
                })
            }
            (Some(Op::Unsqueeze), [x]) => (|| {
                let inner = ramp(eg, *x, depth + 1)?;
                let r0 = ty(eg, *x)?.shape.rank();
                let axes: Vec<usize> = attrs_of(eg, n)?
                    .ints("axes")?
                    .iter()
                    .map(|&a| if a < 0 { a + r as i64 } else { a } as usize)
                    .collect();
                let p0 = r0.checked_sub(1 + inner.axis_from_end)?;
                let pos = (0..r).filter(|p| !axes.contains(p)).nth(p0)?;
                Some(Ramp {
                    axis_from_end: r - 1 - pos,
                    offset: inner.offset,
                })
            })(),
            // A reshape that only adds or drops unit axes (dynamo's `reshape(r, [s, 1])`).
            (Some(Op::Reshape), [x]) => (|| {
                let inner = ramp(eg, *x, depth + 1)?;
                let xs = &ty(eg, *x)?.shape.0;
                let unit = |d: &Dim| d.as_const() == Some(1);
                let keep = |sh: &[Dim]| -> Vec<usize> {
                    (0..sh.len()).filter(|&i| !unit(&sh[i])).collect()
                };
                let (ki, ko) = (keep(xs), keep(&t.shape.0));
                let same = ki.len() == ko.len()
                    && ki.iter().zip(&ko).all(|(&i, &o)| xs[i] == t.shape.0[o]);
                let p_in = xs.len().checked_sub(1 + inner.axis_from_end)?;
                let k = ki.iter().position(|&i| i == p_in)?;
                same.then(|| Ramp {
                    axis_from_end: r - 1 - ko[k],
                    offset: inner.offset,
                })
            })(),
            (Some(Op::Expand | Op::Cast), [x]) => (|| {
                let inner = ramp(eg, *x, depth + 1)?;
                let xs = &ty(eg, *x)?.shape.0;
                let a = inner.axis_from_end;
                let same_len =
                    xs.len() > a && r > a && xs[xs.len() - 1 - a] == t.shape.0[r - 1 - a];
                same_len.then_some(inner)
            })(),
            (Some(Op::Sub), [a, b]) => (|| {
                if ty(eg, *a).map(|t| t.shape.rank()) != Some(r) {
                    return None;
                }
                let inner = ramp(eg, *a, depth + 1)?;
                let d = dim_value(eg, *b, 0)?;
                Some(Ramp {
                    axis_from_end: inner.axis_from_end,
                    offset: inner.offset.sub(&d),
                })
            })(),
            (Some(Op::Add), [a, b]) => (|| {
                for (x, c) in [(*a, *b), (*b, *a)] {
                    if ty(eg, x).map(|t| t.shape.rank()) != Some(r) {
                        continue;
                    }
                    if let (Some(inner), Some(d)) = (ramp(eg, x, depth + 1), dim_value(eg, c, 0)) {
                        return Some(Ramp {
                            axis_from_end: inner.axis_from_end,
                            offset: inner.offset.add(&d),
                        });
                    }
                }
                None
            })(),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// `kv` is the key index (a ramp from 0 along the last axis, t long) and `q` the query
/// index (a ramp along the second-to-last axis, s long, starting at t - s: the queries
/// are the last s positions), so `kv <= q` is the causal rule. Gives the reason when not.
pub fn is_causal_compare(eg: &EGraph, kv: Id, q: Id, s: &Dim, t: &Dim) -> Result<(), String> {
    let kr = ramp(eg, kv, 0).ok_or("the key side is not an index ramp")?;
    let qr = ramp(eg, q, 0).ok_or("the query side is not an index ramp")?;
    let last = |id: Id, from_end: usize| {
        ty(eg, id).and_then(|t| {
            let r = t.shape.rank();
            (r > from_end).then(|| t.shape.0[r - 1 - from_end].clone())
        })
    };
    if kr.axis_from_end != 0 || qr.axis_from_end != 1 {
        return Err(format!(
            "the compared ramps run along axes -{} and -{}; causal needs keys on the last axis and queries on the one before",
            kr.axis_from_end + 1,
            qr.axis_from_end + 1
        ));
    }
    if last(kv, 0).as_ref() != Some(t) || last(q, 1).as_ref() != Some(s) {
        return Err("the compared ramps do not span the scores' query and key axes".into());
    }
    if kr.offset != Dim::c(0) {
        return Err(format!("the key index starts at {}, not 0", kr.offset));
    }
    let want = t.sub(s);
    if qr.offset != want {
        return Err(format!(
            "the query index starts at {}; causal (queries are the last positions) needs {want}",
            qr.offset
        ));
    }
    Ok(())
}

/// A constant (folded) mask or condition over [.., s, t] is the causal triangle: every
/// element at (i, j) with j <= i + t - s is `visible`, every other one `hidden`.
fn const_triangle(
    eg: &EGraph,
    id: Id,
    s: &Dim,
    t: &Dim,
    visible: fn(f64) -> bool,
    hidden: fn(f64) -> bool,
) -> Result<(), String> {
    let tensor = nodes_of(eg, id, Op::Constant)
        .iter()
        .find_map(|n| match attrs_of(eg, n)?.get("value")? {
            Attr::Tensor(x) => Some(x.clone()),
            _ => None,
        })
        .ok_or("not a constant")?;
    let (Some(sv), Some(tv)) = (s.as_const(), t.as_const()) else {
        return Err("a constant mask with symbolic scores".into());
    };
    let r = tensor.shape.len();
    if r < 2 || tensor.shape[r - 2] as i64 != sv || tensor.shape[r - 1] as i64 != tv {
        return Err(format!(
            "the constant mask {:?} is not [.., {sv}, {tv}]",
            tensor.shape
        ));
    }
    for (k, &x) in tensor.to_f64().iter().enumerate() {
        let j = (k % tv as usize) as i64;
        let i = ((k / tv as usize) % sv as usize) as i64;
        let ok = if j <= i + tv - sv {
            visible(x)
        } else {
            hidden(x)
        };
        if !ok {
            return Err(format!(
                "mask is not causal: the constant mask holds {x} at query {i}, key {j}"
            ));
        }
    }
    Ok(())
}

/// The leaves of a tree of `op` (and / or) nodes. Looks through an `unsqueeze` of
/// leading axes (dynamo's `unsqueeze(and(..), [1])` for the head axis): the leaves
/// still broadcast to the scores' last two axes as the tree did.
fn leaves(eg: &EGraph, id: Id, op: Op, out: &mut Vec<Id>, depth: u32) {
    if depth < 8 {
        if let Some(n) = nodes_of(eg, id, op).into_iter().next() {
            for &c in n.operands() {
                leaves(eg, c, op, out, depth + 1);
            }
            return;
        }
        for n in nodes_of(eg, id, Op::Unsqueeze) {
            let rank = ty(eg, id).map_or(0, |t| t.shape.rank()) as i64;
            let leading = attrs_of(eg, &n)
                .and_then(|a| a.ints("axes"))
                .is_some_and(|ax| ax.iter().all(|&a| a >= 0 && a < rank - 2));
            if let ([x], true) = (n.operands(), leading) {
                leaves(eg, *x, op, out, depth + 1);
                return;
            }
        }
    }
    out.push(id);
}

/// A boolean leaf that is the causal comparison: `kv <= q` / `q >= kv` when `keep`
/// (true = visible), `kv > q` / `q < kv` otherwise (true = masked). Looks through
/// expands (an identity expand joins its operand's class: `depth` stops that cycle).
fn causal_leaf(
    eg: &EGraph,
    leaf: Id,
    keep: bool,
    s: &Dim,
    t: &Dim,
    depth: u32,
) -> Result<(), String> {
    let mut why = String::from("no comparison of index ramps");
    for n in &eg[leaf].nodes {
        let (op, ops) = (n.as_op(), n.operands());
        let pair = match (op, ops) {
            (Some(Op::Expand), [x]) => {
                if depth >= 8 || eg.find(*x) == eg.find(leaf) {
                    continue;
                }
                match causal_leaf(eg, *x, keep, s, t, depth + 1) {
                    Ok(()) => return Ok(()),
                    Err(e) => why = e,
                }
                continue;
            }
            (Some(Op::Constant), []) => {
                let r = if keep {
                    const_triangle(eg, leaf, s, t, |x| x != 0.0, |x| x == 0.0)
                } else {
                    const_triangle(eg, leaf, s, t, |x| x == 0.0, |x| x != 0.0)
                };
                match r {
                    Ok(()) => return Ok(()),
                    Err(e) => why = e,
                }
                continue;
            }
            (Some(Op::Gather), [rows, kv]) if keep => {
                let r = ty(eg, leaf).map_or(0, |t| t.shape.rank()) as i64;
                let axis = attrs_of(eg, n).and_then(|a| a.int("axis"));
                if axis != Some(r - 1) && axis != Some(-1) {
                    continue;
                }
                match gathered_triangle(eg, *rows, *kv, s, t) {
                    Ok(()) => return Ok(()),
                    Err(e) => why = e,
                }
                continue;
            }
            (Some(Op::LessEqual), [a, b]) if keep => (*a, *b),
            (Some(Op::GreaterEqual), [a, b]) if keep => (*b, *a),
            (Some(Op::Greater), [a, b]) if !keep => (*a, *b),
            (Some(Op::Less), [a, b]) if !keep => (*b, *a),
            (Some(o @ (Op::Less | Op::LessEqual | Op::Greater | Op::GreaterEqual)), _) => {
                why = format!(
                    "{o} in a {} mask is not the causal comparison (kv {} q)",
                    if keep { "keep" } else { "masked-out" },
                    if keep { "<=" } else { ">" }
                );
                continue;
            }
            _ => continue,
        };
        match is_causal_compare(eg, pair.0, pair.1, s, t) {
            Ok(()) => return Ok(()),
            Err(e) => why = e,
        }
    }
    Err(why)
}

/// The sliding window of a keep-condition leaf: `kv > q - w` (or `q - w < kv`,
/// `kv >= q - w + 1`, `q - w + 1 <= kv`) over the key and query index ramps of scores
/// [.., s, t], with the query at position `i + t - s`: gives w (a key is visible when
/// its distance to the query is under w, what `window = w` means).
fn window_leaf(eg: &EGraph, leaf: Id, s: &Dim, t: &Dim) -> Option<i64> {
    for n in &eg[leaf].nodes {
        let (kv, q, strict) = match (n.as_op(), n.operands()) {
            (Some(Op::Greater), [a, b]) => (*a, *b, true),
            (Some(Op::Less), [a, b]) => (*b, *a, true),
            (Some(Op::GreaterEqual), [a, b]) => (*a, *b, false),
            (Some(Op::LessEqual), [a, b]) => (*b, *a, false),
            (Some(Op::Expand), [x]) if eg.find(*x) != eg.find(leaf) => {
                match window_leaf(eg, *x, s, t) {
                    Some(w) => return Some(w),
                    None => continue,
                }
            }
            _ => continue,
        };
        let (Some(kr), Some(qr)) = (ramp(eg, kv, 0), ramp(eg, q, 0)) else {
            continue;
        };
        if kr.axis_from_end != 0 || qr.axis_from_end != 1 || kr.offset != Dim::c(0) {
            continue;
        }
        // visible: kv > q + (t - s) - w  (strict), kv >= q + (t - s) - w + 1 (not).
        let base = t.sub(s);
        let w = base.sub(&qr.offset).as_const()? + i64::from(!strict);
        if w > 0 {
            return Some(w);
        }
    }
    None
}

/// The sliding window `w` of a mask `where(cond, 0, -big)` whose condition is only a
/// window comparison (and neutral `true`s): what is left of a sliding-window model's
/// mask once the causal part became the flag. A window always keeps the query's own
/// key, so no row is ever fully masked by it.
pub fn window_mask(eg: &EGraph, m: Id, s: &Dim, t: &Dim) -> Option<i64> {
    for n in nodes_of(eg, m, Op::Where) {
        let [cond, a, b] = n.operands() else { continue };
        let keep = splat(eg, *a) == Some(0.0) && splat(eg, *b).is_some_and(is_masking_value);
        if !keep {
            continue;
        }
        let mut ls = Vec::new();
        leaves(eg, *cond, Op::And, &mut ls, 0);
        let mut w = None;
        for l in ls {
            if splat_deep(eg, l, 0) == Some(1.0) {
                continue;
            }
            match (window_leaf(eg, l, s, t), w) {
                (Some(x), None) => w = Some(x),
                (Some(x), Some(y)) if x == y => {}
                _ => return None,
            }
        }
        if w.is_some() {
            return w;
        }
    }
    None
}

/// `gather(gather(tril, q, axis -2), kv, axis -1)`: a constant boolean lower triangle
/// (GPT-2's `bias` buffer, `bias[:, :, past:past + s, :t]` in its TorchScript export)
/// read at the query and key index ramps: visible iff kv <= q, the causal rule.
fn gathered_triangle(eg: &EGraph, rows: Id, kv: Id, s: &Dim, t: &Dim) -> Result<(), String> {
    let axis_of = |n: &super::lang::ENode, rank: usize| {
        attrs_of(eg, n)
            .and_then(|a| a.int("axis"))
            .map(|a| if a < 0 { a + rank as i64 } else { a })
    };
    let out_rank = ty(eg, rows).map_or(0, |t| t.shape.rank());
    for g in nodes_of(eg, rows, Op::Gather) {
        let [table, q] = g.operands() else { continue };
        let Some(tt) = ty(eg, *table) else { continue };
        let r = tt.shape.rank();
        if r < 2 || out_rank != r || axis_of(&g, r) != Some(r as i64 - 2) {
            continue;
        }
        let tril = eg[*table].nodes.iter().find_map(|n| match n.head {
            super::lang::Head::Weight(w) => eg.analysis.bool_weights.get(&w).cloned(),
            _ => None,
        });
        let Some(tril) = tril else {
            return Err("the gathered mask is not a boolean weight".into());
        };
        let n = tril.shape[r - 1];
        if tril.shape[r - 2] != n {
            return Err("the gathered mask is not square".into());
        }
        let v = tril.to_i64();
        let lower = v
            .chunks(n * n)
            .all(|m| (0..n * n).all(|k| (m[k] != 0) == (k % n <= k / n)));
        if !lower {
            return Err("the gathered mask is not the lower triangle".into());
        }
        let (qr, kr) = (ramp(eg, *q, 0), ramp(eg, kv, 0));
        let (Some(qr), Some(kr)) = (qr, kr) else {
            return Err("the mask is not gathered at index ramps".into());
        };
        let dim = |id: Id| ty(eg, id).and_then(|t| t.shape.0.last().cloned());
        if kr.offset != Dim::c(0) || dim(kv).as_ref() != Some(t) || dim(*q).as_ref() != Some(s) {
            return Err("the gathered rows and columns do not span the scores".into());
        }
        if qr.offset != t.sub(s) {
            return Err(format!(
                "the gathered rows start at {}; causal needs {}",
                qr.offset,
                t.sub(s)
            ));
        }
        return Ok(());
    }
    Err("not a gathered mask".into())
}

/// Splits a where-mask `where(cond, a, b)` into its causal condition and the rest.
fn split_where(
    eg: &EGraph,
    cond: Id,
    a: Id,
    b: Id,
    s: &Dim,
    t: &Dim,
) -> Result<Vec<MaskRest>, String> {
    let (sa, sb) = (splat(eg, a), splat(eg, b));
    let keep = match (sa, sb) {
        (Some(x), Some(y)) if x == 0.0 && is_masking_value(y) => true,
        (Some(x), Some(y)) if is_masking_value(x) && y == 0.0 => false,
        _ => {
            return Err(format!(
            "where-mask values are {} and {}; a causal mask adds 0 and a large negative (<= -1e9)",
            sa.map_or("not constant".into(), |v| v.to_string()),
            sb.map_or("not constant".into(), |v| v.to_string())
        ))
        }
    };
    let join = if keep { Op::And } else { Op::Or };
    let mut ls = Vec::new();
    leaves(eg, cond, join, &mut ls, 0);
    let neutral = if keep { 1.0 } else { 0.0 };
    let mut why = String::from("the mask condition has no causal comparison");
    let mut found = None;
    for (i, &l) in ls.iter().enumerate() {
        match causal_leaf(eg, l, keep, s, t, 0) {
            Ok(()) => {
                found = Some(i);
                break;
            }
            Err(e) => why = e,
        }
    }
    let Some(i) = found else { return Err(why) };
    let terms: Vec<Id> = ls
        .iter()
        .enumerate()
        .filter(|&(j, &l)| j != i && splat_deep(eg, l, 0) != Some(neutral))
        .map(|(_, &l)| l)
        .collect();
    Ok(if terms.is_empty() {
        Vec::new()
    } else {
        vec![MaskRest::Where {
            terms,
            join,
            on_true: a,
            on_false: b,
        }]
    })
}

/// Takes the causal part out of the additive mask `m` of scores [.., s, t]: gives what
/// is left (possibly nothing), or why the mask is not causal.
pub fn split_causal(
    eg: &EGraph,
    m: Id,
    s: &Dim,
    t: &Dim,
    depth: u32,
) -> Result<Vec<MaskRest>, String> {
    if depth > 4 {
        return Err("the mask is built by more than 4 additions".into());
    }
    let mut why = String::from("no causal part (not a where-mask, a trilu or a sum of masks)");
    for n in &eg[m].nodes {
        let r = match (n.as_op(), n.operands()) {
            (Some(Op::Where), [c, a, b]) => split_where(eg, *c, *a, *b, s, t),
            (Some(Op::Add), [a, b]) => {
                let (a, b) = (*a, *b);
                match split_causal(eg, a, s, t, depth + 1) {
                    Ok(mut rest) => {
                        rest.push(MaskRest::Class(b));
                        Ok(rest)
                    }
                    Err(_) => split_causal(eg, b, s, t, depth + 1).map(|mut rest| {
                        rest.push(MaskRest::Class(a));
                        rest
                    }),
                }
            }
            (Some(Op::Expand), [x]) => split_causal(eg, *x, s, t, depth + 1),
            (Some(Op::Constant), []) => {
                const_triangle(eg, m, s, t, |x| x == 0.0, is_masking_value).map(|()| Vec::new())
            }
            (Some(Op::Trilu), [x]) => (|| {
                let a = attrs_of(eg, n).ok_or("trilu without attributes")?;
                let k = a.int("k").unwrap_or(0);
                let upper = a.bool("upper").unwrap_or(true);
                let fill = splat_deep(eg, *x, 0);
                if !fill.is_some_and(is_masking_value) {
                    return Err(
                        "trilu of a tensor that is not a large negative constant".to_string()
                    );
                }
                // Kept (masked) where j - i >= k; causal masks j > i + (t - s).
                let want = t.sub(s).add(&Dim::c(1));
                if !upper || Dim::c(k) != want {
                    return Err(format!(
                        "mask is not causal: trilu {} k={k} (causal needs upper k={want})",
                        if upper { "upper" } else { "lower" }
                    ));
                }
                let xt = ty(eg, *x).ok_or("trilu operand has no type")?;
                let r = xt.shape.rank();
                if r < 2 || &xt.shape.0[r - 2] != s || &xt.shape.0[r - 1] != t {
                    return Err("the trilu matrix is not [s, t]".into());
                }
                Ok(Vec::new())
            })(),
            _ => continue,
        };
        match r {
            Ok(rest) => return Ok(rest),
            Err(e) => why = e,
        }
    }
    Err(why)
}

/// The `causal_fill` of a causal flag taken out of a mask whose rest is `rest`, or why
/// the flag would change the result. With nothing left, every query row keeps a visible
/// key and the masked keys' exp underflows to 0: dropping them is exact (`Ok(None)`).
/// With the other conditions of the same where-mask left (`where(causal & pad, 0, f)`,
/// the transformers export), a fully padded row scored every key f in the unfused
/// graph: `causal_fill = f` keeps that (`Ok(Some(f))`). A mask *added* to the causal
/// one would make those keys -inf (f + f) rather than f: not exact, refused.
pub fn causal_fill(eg: &EGraph, rest: &[MaskRest]) -> Result<Option<f64>, String> {
    match rest {
        [] => Ok(None),
        [MaskRest::Where {
            join,
            on_true,
            on_false,
            ..
        }] => {
            let masked = if *join == Op::And {
                *on_false
            } else {
                *on_true
            };
            splat_deep(eg, masked, 0)
                .filter(|&f| is_masking_value(f))
                .map(Some)
                .ok_or_else(|| "the where-mask's masking value is not a constant".to_string())
        }
        _ => Err(
            "another mask is added to the causal one: a fully masked query row would \
                  weigh the keys past the causal bound differently"
                .to_string(),
        ),
    }
}

/// The mask is built with a trilu, a comparison of an index ramp or is a constant
/// matrix with masked entries (within a few steps): a
/// candidate for the causal flag, worth explaining when it was not taken.
pub fn looks_triangular(eg: &EGraph, m: Id, depth: u32) -> bool {
    if depth > 6 {
        return false;
    }
    eg[m].nodes.iter().any(|n| match n.as_op() {
        Some(Op::Trilu) => true,
        Some(Op::Less | Op::LessEqual | Op::Greater | Op::GreaterEqual) => {
            // Both sides index ramps: a triangle (an encoder's `q >= 0` is not).
            n.operands().iter().all(|&c| ramp(eg, c, 0).is_some())
        }
        Some(Op::Constant) => matches!(
            attrs_of(eg, n).and_then(|a| a.get("value")),
            Some(Attr::Tensor(t)) if t.shape.len() >= 2
                && t.shape[t.shape.len() - 2] > 1
                && t.to_f64().iter().any(|&x| is_masking_value(x))
        ),
        Some(Op::Where | Op::Add | Op::And | Op::Or | Op::Expand | Op::Cast | Op::Mul) => n
            .operands()
            .iter()
            .any(|&c| looks_triangular(eg, c, depth + 1)),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_values() {
        assert!(is_masking_value(-3.4028234663852886e38));
        assert!(is_masking_value(f64::NEG_INFINITY));
        assert!(is_masking_value(-1e9));
        assert!(!is_masking_value(-10000.0));
    }
}
