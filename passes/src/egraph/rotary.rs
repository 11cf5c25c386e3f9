//! Rotary position embedding as exporters spell it: `x·cos + rotate_half(x)·sin`, with
//! rotate_half = concat(-x[.., d/2:], x[.., :d/2]) and cos/sin computed from the
//! positions (`cos(concat(f, f))`, f = positions × inv_freq, a constant) or gathered by
//! position from constant cos/sin tables (`cos_cached[position_ids]`). This module
//! recognises that form and gives what the `rope` op needs: x, the positions, theta and
//! the linear position scale (read back from inv_freq, which must be the geometric
//! series theta^(-2i/d) / scale to f32 precision). Each step is a named predicate, and a
//! miss says what blocked it.

use super::lang::EGraph;
use super::matchers::{attrs_of, nodes_of, ty, Blocked};
use egg::Id;
use llmc_ir::{Attr, AttrsExt, Op};

const ROPE: &str = "rope";

fn blocked<T>(depth: u32, msg: impl Into<String>) -> Result<T, Blocked> {
    Err(Blocked {
        pattern: ROPE,
        depth,
        msg: msg.into(),
    })
}

/// rope(x, pos) {theta, scale}, as found.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeMatch {
    /// x[b, h, s, d].
    pub x: Id,
    /// positions [b, s] (integer).
    pub pos: Id,
    /// Base of the frequencies.
    pub theta: f64,
    /// Positions are divided by it (1 = no scaling).
    pub scale: f64,
}

/// A slice of the last axis of a rank-4 tensor with unit step: gives (operand, start, end).
fn last_axis_slice(eg: &EGraph, id: Id) -> Vec<(Id, i64, i64)> {
    let mut out = Vec::new();
    for n in nodes_of(eg, id, Op::Slice) {
        let (Some(a), [x]) = (attrs_of(eg, &n), n.operands()) else {
            continue;
        };
        let rank = ty(eg, *x).map_or(0, |t| t.shape.rank()) as i64;
        let axes_ok = matches!(a.ints("axes"), Some([ax]) if *ax == -1 || *ax == rank - 1);
        let steps_ok = a.ints("steps").is_none_or(|s| s == [1]);
        if let (true, true, Some([s]), Some([e])) =
            (axes_ok, steps_ok, a.ints("starts"), a.ints("ends"))
        {
            out.push((*x, *s, *e));
        }
    }
    out
}

/// `r` = rotate_half(x) for a last axis of length `d`: concat(neg(x[d/2:]), x[:d/2]).
pub fn is_rotate_half(eg: &EGraph, r: Id, x: Id, d: i64) -> Result<(), String> {
    let half = d / 2;
    let mut why = "not a concat of the negated second half and the first half".to_string();
    for c in nodes_of(eg, r, Op::Concat) {
        let rank = ty(eg, r).map_or(0, |t| t.shape.rank()) as i64;
        let axis = attrs_of(eg, &c).and_then(|a| a.int("axis"));
        if !matches!(axis, Some(ax) if ax == -1 || ax == rank - 1) {
            why = "the concat is not along the last axis".into();
            continue;
        }
        let [hi_neg, lo] = c.operands() else {
            why = "the concat does not have two parts".into();
            continue;
        };
        let second = nodes_of(eg, *hi_neg, Op::Neg)
            .iter()
            .filter_map(|n| n.operands().first().copied())
            .flat_map(|h| last_axis_slice(eg, h))
            .any(|(y, s, e)| eg.find(y) == eg.find(x) && s == half && e >= d);
        let first = last_axis_slice(eg, *lo)
            .into_iter()
            .any(|(y, s, e)| eg.find(y) == eg.find(x) && s == 0 && e == half);
        if second && first {
            return Ok(());
        }
        why = format!(
            "the rotary split is not at d/2 = {half} with the negated half first (rotate_half needs concat(-x[{half}:], x[:{half}]))"
        );
    }
    Err(why)
}

/// `id` = f(concat(g, g)) or concat(f(g), f(g)) for f = cos or sin, possibly
/// unsqueezed at axis 1 (from [b, s, d] to [b, 1, s, d]); gives g's class.
fn trig_of(eg: &EGraph, id: Id, op: Op) -> Option<Id> {
    let mut at = vec![id];
    for u in nodes_of(eg, id, Op::Unsqueeze) {
        if attrs_of(eg, &u).and_then(|a| a.ints("axes")) == Some(&[1][..]) {
            at.extend(u.operands().first().copied());
        }
    }
    for c in at {
        for t in nodes_of(eg, c, op) {
            let [cat] = t.operands() else { continue };
            for n in nodes_of(eg, *cat, Op::Concat) {
                if let [a, b] = n.operands() {
                    if eg.find(*a) == eg.find(*b) {
                        return Some(*a);
                    }
                }
            }
        }
        // concat(f(g), f(g)): the same values (ONNX RotaryEmbedding's half-size tables).
        for n in nodes_of(eg, c, Op::Concat) {
            let [a, b] = n.operands() else { continue };
            if eg.find(*a) != eg.find(*b) {
                continue;
            }
            for t in nodes_of(eg, *a, op) {
                if let [g] = t.operands() {
                    return Some(*g);
                }
            }
        }
    }
    None
}

/// Where cos or sin comes from: computed from the angles g, or gathered by position
/// from a constant table (`cos_cached[position_ids]`).
#[derive(Clone, Debug)]
enum Source {
    /// f(concat(g, g)): g's class.
    Computed(Id),
    /// gather(table, pos, axis 0): the table's rows ([P, d], row-major) and pos.
    Table(Vec<f64>, usize, Id),
}

/// The source of a cos / sin operand (`op` names which), through an unsqueeze at axis 1.
fn source(eg: &EGraph, id: Id, op: Op) -> Option<Source> {
    if let Some(g) = trig_of(eg, id, op) {
        return Some(Source::Computed(g));
    }
    let mut at = vec![id];
    for u in nodes_of(eg, id, Op::Unsqueeze) {
        if attrs_of(eg, &u).and_then(|a| a.ints("axes")) == Some(&[1][..]) {
            at.extend(u.operands().first().copied());
        }
    }
    for c in at {
        for g in nodes_of(eg, c, Op::Gather) {
            let ([table, pos], Some(0)) = (
                g.operands(),
                attrs_of(eg, &g).map(|a| a.int("axis").unwrap_or(0)),
            ) else {
                continue;
            };
            let pos_ok = ty(eg, *pos).is_some_and(|t| t.dtype.is_int() && t.shape.rank() == 2);
            let Some(tt) = ty(eg, *table) else { continue };
            let Some(vals) = constant_values(eg, *table) else {
                continue;
            };
            if pos_ok && tt.shape.rank() == 2 {
                let d = tt.shape.0[1].as_const()? as usize;
                return Some(Source::Table(vals, d, *pos));
            }
        }
    }
    None
}

/// Tables cos[p][k] = cos(p · inv[k mod d/2]) and sin likewise (to f32 precision): gives
/// inv_freq, read from row 1 as atan2(sin, cos).
fn table_freqs(cos: &[f64], sin: &[f64], d: usize) -> Result<Vec<f64>, String> {
    let half = d / 2;
    if cos.len() != sin.len() || cos.len() < 2 * d || !d.is_multiple_of(2) {
        return Err("the cos and sin tables are not [positions ≥ 2, d] alike".into());
    }
    let inv: Vec<f64> = (0..half).map(|k| sin[d + k].atan2(cos[d + k])).collect();
    for (i, (&c, &s)) in cos.iter().zip(sin).enumerate() {
        let (p, k) = ((i / d) as f64, i % d);
        let a = p * inv[k % half];
        let tol = 1e-5 + 2.4e-7 * p;
        if (c - a.cos()).abs() > tol || (s - a.sin()).abs() > tol {
            return Err(format!(
                "the cos/sin tables at position {p}, channel {k} are not cos/sin(position × inv_freq) with both halves alike"
            ));
        }
    }
    Ok(inv)
}

/// `f` = float(unsqueeze(pos, [2])) × inv_freq (or transformers' matmul of inv_freq by
/// the positions, transposed): gives pos and inv_freq's values.
fn freqs(eg: &EGraph, f: Id) -> Result<(Id, Vec<f64>), String> {
    for m in nodes_of(eg, f, Op::Mul) {
        let [a, b] = m.operands() else { continue };
        for (p, c) in [(*a, *b), (*b, *a)] {
            let Some(inv) = constant_values(eg, c) else {
                continue;
            };
            for cast in nodes_of(eg, p, Op::Cast) {
                let [u] = cast.operands() else { continue };
                for un in nodes_of(eg, *u, Op::Unsqueeze) {
                    let axes = attrs_of(eg, &un).and_then(|a| a.ints("axes"));
                    let [pos] = un.operands() else { continue };
                    let pos_ok =
                        ty(eg, *pos).is_some_and(|t| t.dtype.is_int() && t.shape.rank() == 2);
                    if pos_ok && axes == Some(&[2][..]) {
                        return Ok((*pos, inv));
                    }
                }
            }
        }
    }
    // transformers' spelling: transpose(matmul(inv_freq[b, d/2, 1] (expanded over the
    // batch), float(unsqueeze(pos, [1])) [b, 1, s]), [0, 2, 1]): an outer product with
    // K = 1, the same products as the mul.
    for t in nodes_of(eg, f, Op::Transpose) {
        let perm = attrs_of(eg, &t).and_then(|a| a.ints("perm"));
        let [mm] = t.operands() else { continue };
        if perm != Some(&[0, 2, 1][..]) {
            continue;
        }
        for m in nodes_of(eg, *mm, Op::MatMul) {
            let [a, b] = m.operands() else { continue };
            let inv = constant_values(eg, *a).or_else(|| {
                nodes_of(eg, *a, Op::Expand)
                    .iter()
                    .find_map(|e| constant_values(eg, *e.operands().first()?))
            });
            let inv_ok = ty(eg, *a)
                .is_some_and(|t| t.shape.rank() == 3 && t.shape.0[2] == llmc_ir::Dim::c(1));
            let (Some(inv), true) = (inv, inv_ok) else {
                continue;
            };
            for cast in nodes_of(eg, *b, Op::Cast) {
                let [u] = cast.operands() else { continue };
                for un in nodes_of(eg, *u, Op::Unsqueeze) {
                    let axes = attrs_of(eg, &un).and_then(|a| a.ints("axes"));
                    let [pos] = un.operands() else { continue };
                    let rank = ty(eg, *pos)
                        .filter(|t| t.dtype.is_int())
                        .map(|t| t.shape.rank());
                    // [b, s] positions, or (dynamo, no position_ids input) the
                    // position ramp [s] itself: the rope rule unsqueezes it to [1, s].
                    if (rank == Some(2) && axes == Some(&[1][..]))
                        || (rank == Some(1) && axes == Some(&[0, 1][..]))
                    {
                        return Ok((*pos, inv));
                    }
                }
            }
        }
    }
    Err("the angles are not positions × a constant inv_freq".into())
}

/// The values of a constant node of class `id`.
fn constant_values(eg: &EGraph, id: Id) -> Option<Vec<f64>> {
    nodes_of(eg, id, Op::Constant)
        .iter()
        .find_map(|n| match attrs_of(eg, n)?.get("value")? {
            Attr::Tensor(t) if t.dtype.is_float() => Some(t.to_f64()),
            _ => None,
        })
}

/// inv_freq is theta^(-2i/d) / scale for i < d/2, to f32 precision: gives (theta, scale).
pub fn rope_params(inv: &[f64], d: i64) -> Result<(f64, f64), String> {
    let half = inv.len();
    if half < 2 || half as i64 * 2 != d {
        return Err(format!(
            "inv_freq has {half} values; rope over the whole head needs d/2 = {}",
            d / 2
        ));
    }
    let (first, last) = (inv[0], inv[half - 1]);
    if !(first > 0.0 && last > 0.0 && first > last) {
        return Err("inv_freq is not a decreasing positive series".into());
    }
    let scale = 1.0 / first;
    let mut theta = (first / last).powf(d as f64 / (2.0 * (half - 1) as f64));
    if (theta - theta.round()).abs() <= 1e-4 * theta {
        theta = theta.round();
    }
    let scale = if (scale - 1.0).abs() <= 1e-6 {
        1.0
    } else {
        scale
    };
    for (i, &v) in inv.iter().enumerate() {
        let want = theta.powf(-2.0 * i as f64 / d as f64) / scale;
        if (v - want).abs() > 2e-6 * want {
            return Err(format!(
                "inv_freq[{i}] = {v} is not theta^(-2i/d) = {want} (theta {theta}): not the rope frequencies"
            ));
        }
    }
    Ok((theta, scale))
}

/// Matches x·cos + rotate_half(x)·sin rooted at the add node `top`.
pub fn match_rope(eg: &EGraph, top: &super::lang::ENode) -> Result<RopeMatch, Blocked> {
    if top.as_op() != Some(Op::Add) {
        return blocked(0, "not an add");
    }
    let [a, b] = top.operands() else {
        return blocked(0, "add without two operands");
    };
    let mut near = Blocked {
        pattern: ROPE,
        depth: 0,
        msg: "not x·cos + rotate_half(x)·sin".into(),
    };
    let keep = |b: Blocked, near: &mut Blocked| {
        if b.depth >= near.depth {
            *near = b;
        }
    };
    for (xc, rs) in [(*a, *b), (*b, *a)] {
        for m1 in nodes_of(eg, xc, Op::Mul) {
            let [p, q] = m1.operands() else { continue };
            for (x, cos) in [(*p, *q), (*q, *p)] {
                let Some(xt) = ty(eg, x) else { continue };
                let d = match (
                    xt.shape.rank(),
                    xt.shape.0.last().and_then(|d| d.as_const()),
                ) {
                    (4, Some(d)) if d % 2 == 0 && xt.dtype.is_float() => d,
                    _ => continue,
                };
                let Some(gc) = source(eg, cos, Op::Cos) else {
                    continue;
                };
                for m2 in nodes_of(eg, rs, Op::Mul) {
                    let [r, s] = m2.operands() else { continue };
                    for (rot, sin) in [(*r, *s), (*s, *r)] {
                        let Some(gs) = source(eg, sin, Op::Sin) else {
                            continue;
                        };
                        if let Err(e) = is_rotate_half(eg, rot, x, d) {
                            keep(
                                Blocked {
                                    pattern: ROPE,
                                    depth: 2,
                                    msg: e,
                                },
                                &mut near,
                            );
                            continue;
                        }
                        let angles = match (&gc, &gs) {
                            (Source::Computed(c), Source::Computed(s))
                                if eg.find(*c) == eg.find(*s) =>
                            {
                                freqs(eg, *c)
                            }
                            (Source::Table(c, dc, pc), Source::Table(s, ds, ps))
                                if eg.find(*pc) == eg.find(*ps)
                                    && *dc == d as usize
                                    && *ds == d as usize =>
                            {
                                table_freqs(c, s, d as usize).map(|inv| (*pc, inv))
                            }
                            _ => Err("cos and sin are not of the same angles".into()),
                        };
                        let (pos, inv) = match angles {
                            Ok(v) => v,
                            Err(e) => {
                                keep(
                                    Blocked {
                                        pattern: ROPE,
                                        depth: 4,
                                        msg: e,
                                    },
                                    &mut near,
                                );
                                continue;
                            }
                        };
                        match rope_params(&inv, d) {
                            Ok((theta, scale)) => {
                                return Ok(RopeMatch {
                                    x,
                                    pos,
                                    theta,
                                    scale,
                                })
                            }
                            Err(e) => keep(
                                Blocked {
                                    pattern: ROPE,
                                    depth: 5,
                                    msg: e,
                                },
                                &mut near,
                            ),
                        }
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
    fn rope_params_read_back_theta_and_scale() {
        let d = 8;
        let inv: Vec<f64> = (0..4)
            .map(|i| (10000f64.powf(-2.0 * i as f64 / 8.0) as f32) as f64)
            .collect();
        assert_eq!(rope_params(&inv, d), Ok((10000.0, 1.0)));
        let scaled: Vec<f64> = inv.iter().map(|v| v / 4.0).collect();
        let (t, s) = rope_params(&scaled, d).unwrap_or((0.0, 0.0));
        assert_eq!(t, 10000.0);
        assert!((s - 4.0).abs() < 1e-6);
        // Not a geometric series.
        assert!(rope_params(&[1.0, 0.5, 0.4, 0.1], d).is_err());
        // Partial rotary (fewer frequencies than d/2) is not matched.
        assert!(rope_params(&inv[..2], d).is_err());
    }
}
