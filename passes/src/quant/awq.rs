//! AWQ (Lin et al., 2023): activation-aware scaling before rounding. A few input
//! channels of each linear carry much larger activations than the rest, and rounding
//! the weights that multiply them costs the output most. Scaling input channel `j` of
//! every linear reading one input by `s_j > 1` (so its weights get finer steps
//! relative to the block's) and dividing the input by `s_j` where it is made (a norm's
//! weight, or the rows of the linear whose output is multiplied into it) leaves the
//! unquantized model unchanged and the quantized one closer.
//!
//! `s = rms(x)^α` (normalised so `sqrt(max s · min s) = 1`), with `rms(x)_j =
//! sqrt(H_jj / rows)` from the same calibration statistics GPTQ uses (`XᵀX` per linear
//! input; AWQ's mean `|x|` is not in them, the root mean square is). `α` is searched
//! over 0, 0.1, …, 1 per input, scoring the output error on the calibration,
//! `Σ (w - ŵ)ᵀ H (w - ŵ) / Σ wᵀ H w` over sampled rows of every linear reading it
//! (`ŵ` = round to nearest of `w·s`, divided back by `s`), exactly rather than
//! through activations. `α = 0` is plain rounding, so the chosen scaling never does
//! worse on the calibration.
//!
//! Where the input comes from decides whether `1/s` can be folded:
//! - `rms_norm` / `layer_norm` whose weight (and bias) only it reads: they are divided
//!   (Q/K/V and gate/up in a Llama block);
//! - `mul(a, b)` where `b` is another linear's result read only there: that linear's
//!   rows (and bias) are divided (the down projection reads `silu(gate) · up`);
//! - `reshape(transpose(attention(q, k, v)))` (the O projection's input) where `v`
//!   comes (through `kv_append`) from `transpose(reshape(linear))`: attention mixes
//!   positions, never channels, so the V projection's rows are divided; with grouped
//!   query heads the scales are tied across the heads sharing a value head (their
//!   mean square decides);
//! - anything else is left to rounding, and the report says how many and why.
//!
//! With `gptq` too, GPTQ then runs on the scaled weights against the scaled
//! statistics `H' = S⁻¹ H S⁻¹` (the input the scaled linear reads is `x / s`).

use super::gguf::BlockScale;
use super::gptq::{quad, Hessian};
use super::{calibration_points, Calibration};
use llmc_ir::{AttrsExt, DType, Module, Op, ValueDef, ValueId, WeightData, WeightId};
use std::collections::HashMap;
use std::sync::Arc;

/// The α grid searched.
const ALPHAS: usize = 11;

/// Rows of each matrix the search scores (spread evenly).
pub(super) const SAMPLE_ROWS: usize = 32;

/// What the scaling did, for the pass's report.
#[derive(Default, Debug)]
pub struct Report {
    /// Inputs scaled (each a group of linears), and the matrices in them.
    pub groups: usize,
    pub matrices: usize,
    /// Sum of the chosen α over the groups.
    pub alpha_sum: f64,
    /// Mean relative output error on the calibration, rounded as is -> after scaling.
    pub rtn_error: f64,
    pub awq_error: f64,
    /// Inputs left unscaled, with why.
    pub skipped: Vec<String>,
}

/// Where `1/s` goes.
pub(super) enum Fold {
    /// A norm's weight, and its bias.
    Norm(WeightId, Option<WeightId>),
    /// The rows of a linear's weight, and its bias.
    Rows(WeightId, Option<WeightId>),
    /// The rows of the V projection (and bias) whose heads attention mixes into the
    /// input: `heads` query heads of `dim` channels share `kv` value heads
    /// (query head `h` reads value head `h / (heads / kv)`), so the scales are tied
    /// across the query heads of a group.
    Heads {
        w: WeightId,
        b: Option<WeightId>,
        heads: usize,
        kv: usize,
        dim: usize,
    },
}

/// The single node computing `v` (result 0 unless `out` says), if only one operand
/// reads `v`.
fn sole_producer(m: &Module, v: ValueId, op: Op, out: usize) -> Option<llmc_ir::NodeId> {
    match m.graph.value(v).def {
        ValueDef::Node(n, k)
            if k == out
                && m.graph.node(n).op == op
                && super::readers(m, v).len() == 1
                && !m.graph.outputs.contains(&v) =>
        {
            Some(n)
        }
        _ => None,
    }
}

/// `[.., heads, .., dim]` → `heads·dim` merged by `reshape(transpose(x, [0, 2, 1, 3]))`.
fn heads_transposed(m: &Module, v: ValueId) -> Option<ValueId> {
    let t = sole_producer(m, v, Op::Transpose, 0)?;
    let node = m.graph.node(t);
    (node.attrs.ints("perm") == Some(&[0, 2, 1, 3][..])).then_some(node.inputs[0])
}

/// The attention output `x` of width `k` (the O projection's input): `reshape ∘
/// transpose` of an `attention` whose values come (through `kv_append`) from
/// `transpose ∘ reshape` of a linear of its own.
fn attention_fold(m: &Module, x: ValueId, k: usize) -> Result<Fold, String> {
    let why = || "made by attention in a shape AWQ does not follow".to_string();
    let g = &m.graph;
    let r = sole_producer(m, x, Op::Reshape, 0).ok_or_else(why)?;
    let t_out = g.node(r).inputs[0];
    let a_out = heads_transposed(m, t_out).ok_or_else(why)?;
    let att = sole_producer(m, a_out, Op::Attention, 0).ok_or_else(why)?;
    // [batch, heads, seq, dim]: batch and seq may be symbolic.
    let dims = &g.ty(a_out).shape.0;
    let at = |i: usize| dims.get(i).and_then(|d| d.as_const()).map(|d| d as usize);
    let (Some(heads), Some(dim), 4) = (at(1), at(3), dims.len()) else {
        return Err(why());
    };
    if heads * dim != k {
        return Err(why());
    }
    let mut v = g.node(att).inputs[2];
    if let ValueDef::Node(n, 1) = g.value(v).def {
        if g.node(n).op == Op::KvAppend && super::readers(m, v).len() == 1 {
            v = g.node(n).inputs[1];
        }
    }
    let kv = g
        .ty(v)
        .shape
        .0
        .get(1)
        .and_then(|d| d.as_const())
        .ok_or_else(why)? as usize;
    let v4 = heads_transposed(m, v).ok_or_else(why)?;
    let rs = sole_producer(m, v4, Op::Reshape, 0).ok_or_else(why)?;
    let lin_out = g.node(rs).inputs[0];
    let lin = sole_producer(m, lin_out, Op::Linear, 0).ok_or_else(why)?;
    let w = sole_weight(m, g.node(lin).inputs[1]).ok_or_else(why)?;
    let b = match g.node(lin).inputs.get(2) {
        Some(&b) => Some(sole_weight(m, b).ok_or_else(why)?),
        None => None,
    };
    if kv == 0
        || heads % kv != 0
        || m.weight(w)
            .shape
            .as_consts()
            .and_then(|d| d.first().copied())
            != Some((kv * dim) as i64)
    {
        return Err(why());
    }
    Ok(Fold::Heads {
        w,
        b,
        heads,
        kv,
        dim,
    })
}

/// The weight a node reads at `v`: directly, or through one cast; `None` if `v` is
/// read elsewhere too.
fn sole_weight(m: &Module, v: ValueId) -> Option<WeightId> {
    let single = |v: ValueId| super::readers(m, v).len() == 1 && !m.graph.outputs.contains(&v);
    match m.graph.value(v).def {
        ValueDef::Weight(w) => single(v).then_some(w),
        ValueDef::Node(n, 0) if m.graph.node(n).op == Op::Cast => {
            let src = m.graph.node(n).inputs[0];
            match m.graph.value(src).def {
                ValueDef::Weight(w) if single(v) && single(src) => Some(w),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Where input `x` of width `k` is made, if `1/s` can be folded there; otherwise why not.
pub(super) fn fold_point(
    m: &Module,
    x: ValueId,
    k: usize,
    group: &[WeightId],
) -> Result<Fold, String> {
    let g = &m.graph;
    // Every reader of x must be one of the group's linears (the scaled weights).
    for (n, op) in super::readers(m, x) {
        let node = g.node(n);
        let reads_group = matches!(node.op, Op::Linear | Op::LinearAct)
            && op == 0
            && sole_weight(m, node.inputs[1]).is_some_and(|w| group.contains(&w));
        if !reads_group {
            return Err(format!("also read by {}", node.op.name()));
        }
    }
    if g.outputs.contains(&x) {
        return Err("returned by the graph".into());
    }
    let ValueDef::Node(p, 0) = g.value(x).def else {
        return Err("not computed by a node".into());
    };
    let node = g.node(p);
    let vector = |w: WeightId| m.weight(w).shape.as_consts() == Some(vec![k as i64]);
    match node.op {
        Op::RmsNorm | Op::LayerNorm => {
            let w = sole_weight(m, node.inputs[1])
                .filter(|&w| vector(w))
                .ok_or("its norm's weight is not its own constant vector")?;
            let b = match node.inputs.get(2) {
                Some(&b) => Some(
                    sole_weight(m, b)
                        .filter(|&b| vector(b))
                        .ok_or("its norm's bias is not its own constant vector")?,
                ),
                None => None,
            };
            Ok(Fold::Norm(w, b))
        }
        Op::Mul => {
            for &a in &node.inputs {
                let ValueDef::Node(l, 0) = g.value(a).def else {
                    continue;
                };
                let lin = g.node(l);
                if lin.op != Op::Linear
                    || super::readers(m, a).len() != 1
                    || g.ty(a).shape.0.last().and_then(|d| d.as_const()) != Some(k as i64)
                {
                    continue;
                }
                let Some(w) = sole_weight(m, lin.inputs[1]) else {
                    continue;
                };
                let b = match lin.inputs.get(2) {
                    Some(&b) => match sole_weight(m, b) {
                        Some(b) => Some(b),
                        None => continue,
                    },
                    None => None,
                };
                return Ok(Fold::Rows(w, b));
            }
            Err("a product with no linear factor of its own".into())
        }
        Op::Reshape => attention_fold(m, x, k),
        other => Err(format!("made by {}", other.name())),
    }
}

fn write(m: &mut Module, w: WeightId, x: &[f32]) {
    let bytes = super::float_bytes(m.weight(w).dtype, x);
    m.weights[w.0 as usize].data = WeightData::Owned(Arc::new(bytes));
}

/// The scales for exponent `alpha` from the channels' root mean squares.
fn scales(rms: &[f64], alpha: f64) -> Vec<f64> {
    let s: Vec<f64> = rms.iter().map(|&r| r.max(1e-8).powf(alpha)).collect();
    let (lo, hi) = s
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let norm = (lo * hi).sqrt().max(1e-12);
    s.iter().map(|&v| (v / norm).clamp(1e-4, 1e4)).collect()
}

/// The relative output error of rounding the sampled rows of `mats` (each `[n, k]`)
/// to `dtype` after scaling their columns by `s`.
pub(super) fn error(
    dtype: DType,
    mats: &[(Vec<f32>, usize)],
    k: usize,
    h: &[f64],
    s: &[f64],
) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    let mut e = vec![0.0f64; k];
    let mut wr = vec![0.0f64; k];
    let mut scaled = vec![0.0f32; k];
    for (w, n) in mats {
        for r in (0..*n).step_by((n / SAMPLE_ROWS).max(1)) {
            let row = &w[r * k..(r + 1) * k];
            for j in 0..k {
                scaled[j] = (row[j] as f64 * s[j]) as f32;
                wr[j] = row[j] as f64;
            }
            let bl = dtype.block_len();
            for (b, chunk) in scaled.chunks_exact(bl).enumerate() {
                let sc = BlockScale::of(dtype, chunk);
                for (i, &v) in chunk.iter().enumerate() {
                    let j = b * bl + i;
                    e[j] = wr[j] - sc.code(dtype, v).1 as f64 / s[j];
                }
            }
            num += quad(h, k, &e);
            den += quad(h, k, &wr);
        }
    }
    num / den.max(f64::MIN_POSITIVE)
}

/// One calibration input whose linears are rescaled together: the weights reading it
/// (names and ids), the block format the first one gets, the input's statistics, where
/// `1/s` folds, and the matrices' float data as `(values, rows)`.
pub(super) struct Group {
    pub names: Vec<String>,
    pub ids: Vec<WeightId>,
    pub dtype: DType,
    pub h: Arc<Hessian>,
    pub fold: Fold,
    pub mats: Vec<(Vec<f32>, usize)>,
}

/// The [`Group`] of input `x` read by the weights `names`, keeping those `target`
/// quantizes into a block format; `None` when none is, or when the input cannot be
/// rescaled (why is pushed to `skipped` as `@first (why)`): no statistics, readers
/// with different statistics, rows not whole blocks, or no place to fold `1/s`.
pub(super) fn group(
    m: &Module,
    cal: &Calibration,
    x: ValueId,
    names: Vec<String>,
    target: &dyn Fn(&str) -> Option<DType>,
    skipped: &mut Vec<String>,
) -> Result<Option<Group>, String> {
    let names: Vec<String> = names.into_iter().filter(|n| target(n).is_some()).collect();
    let Some(first) = names.first() else {
        return Ok(None);
    };
    let Some(dtype) = target(first) else {
        return Ok(None);
    };
    let Some(h) = cal.hessian(first) else {
        skipped.push(format!("@{first} (no statistics)"));
        return Ok(None);
    };
    let k = h.k;
    let ids: Vec<WeightId> = names.iter().filter_map(|n| m.weight_id(n)).collect();
    let shared = names.iter().all(|n| {
        cal.hessian(n)
            .is_some_and(|o| Arc::ptr_eq(&o, &h) || (o.k == k && o.h == h.h))
    });
    if ids.len() != names.len() || !shared || !k.is_multiple_of(dtype.block_len()) {
        skipped.push(format!("@{first} (its readers' statistics differ)"));
        return Ok(None);
    }
    let fold = match fold_point(m, x, k, &ids) {
        Ok(f) => f,
        Err(why) => {
            skipped.push(format!("@{first} ({why})"));
            return Ok(None);
        }
    };
    let mut mats = Vec::new();
    for &w in &ids {
        let data = super::read_float(m, w)?;
        let n = data.len() / k;
        mats.push((data, n));
    }
    Ok(Some(Group {
        names,
        ids,
        dtype,
        h,
        fold,
        mats,
    }))
}

/// Scales the linears of every calibration input whose `1/s` can be folded, for
/// rounding into the block format `target` gives each weight (a group's first
/// weight's decides; `None`: not quantized, or not into a block format). Returns the scaled statistics by weight name (for GPTQ
/// afterwards) and the report.
pub fn apply(
    m: &mut Module,
    cal: &Calibration,
    target: &dyn Fn(&str) -> Option<DType>,
) -> Result<(HashMap<String, Arc<Hessian>>, Report), String> {
    let mut report = Report::default();
    let mut scaled_h = HashMap::new();
    let (mut rtn_sum, mut awq_sum) = (0.0, 0.0);
    for (x, names) in calibration_points(m) {
        let Some(Group {
            names,
            ids,
            dtype,
            h,
            fold,
            mats,
        }) = group(m, cal, x, names, target, &mut report.skipped)?
        else {
            continue;
        };
        let k = h.k;
        let rows = h.rows.max(1) as f64;
        let hn: Vec<f64> = h.h.iter().map(|v| v / rows).collect();
        let mut rms: Vec<f64> = (0..k).map(|j| hn[j * k + j].max(0.0).sqrt()).collect();
        if let Fold::Heads { heads, kv, dim, .. } = fold {
            // One scale per value channel: the mean square over the query heads
            // reading it.
            let group = heads / kv;
            for g in 0..kv {
                for d in 0..dim {
                    let chans = (g * group..(g + 1) * group).map(|h| h * dim + d);
                    let ms = chans.clone().map(|c| rms[c] * rms[c]).sum::<f64>() / group as f64;
                    for c in chans {
                        rms[c] = ms.sqrt();
                    }
                }
            }
        }
        // Score the α grid over the threads.
        let alphas: Vec<f64> = (0..ALPHAS)
            .map(|i| i as f64 / (ALPHAS - 1) as f64)
            .collect();
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        let mut errs = [0.0f64; ALPHAS];
        std::thread::scope(|sc| {
            for (ch_a, ch_e) in alphas
                .chunks(ALPHAS.div_ceil(threads))
                .zip(errs.chunks_mut(ALPHAS.div_ceil(threads)))
            {
                let (mats, hn, rms) = (&mats, &hn, &rms);
                sc.spawn(move || {
                    for (a, e) in ch_a.iter().zip(ch_e.iter_mut()) {
                        *e = error(dtype, mats, k, hn, &scales(rms, *a));
                    }
                });
            }
        });
        let best = (0..ALPHAS)
            .min_by(|&a, &b| errs[a].total_cmp(&errs[b]))
            .unwrap_or(0);
        rtn_sum += errs[0];
        awq_sum += errs[best];
        report.groups += 1;
        report.matrices += ids.len();
        report.alpha_sum += alphas[best];
        if best == 0 {
            continue;
        }
        let s = scales(&rms, alphas[best]);
        fold_scales(m, &ids, &mats, fold, &s)?;
        let hs = Arc::new(scaled_stats(&h, &s));
        for n in &names {
            scaled_h.insert(n.clone(), hs.clone());
        }
    }
    let g = report.groups.max(1) as f64;
    report.rtn_error = rtn_sum / g;
    report.awq_error = awq_sum / g;
    Ok((scaled_h, report))
}

/// Multiplies input column `j` of every matrix of a group (`ids`, their float data
/// `mats` as `(values, rows)`) by `s[j]` and divides where the input is made (`fold`)
/// by it: the unquantized model computes the same.
pub(super) fn fold_scales(
    m: &mut Module,
    ids: &[WeightId],
    mats: &[(Vec<f32>, usize)],
    fold: Fold,
    s: &[f64],
) -> Result<(), String> {
    let k = s.len();
    for (&w, (data, n)) in ids.iter().zip(mats) {
        let mut d = data.clone();
        for r in 0..*n {
            for j in 0..k {
                d[r * k + j] = (d[r * k + j] as f64 * s[j]) as f32;
            }
        }
        write(m, w, &d);
    }
    // Element i of a folded weight is divided by by[i / per_row].
    let divide = |m: &mut Module, w: WeightId, by: &[f64], per_row: usize| {
        let mut d = super::read_float(m, w)?;
        for (i, v) in d.iter_mut().enumerate() {
            *v = (*v as f64 / by[i / per_row]) as f32;
        }
        write(m, w, &d);
        Ok::<(), String>(())
    };
    let cols = |m: &Module, w: WeightId| {
        m.weight(w)
            .shape
            .as_consts()
            .and_then(|d| d.get(1).copied())
            .unwrap_or(1) as usize
    };
    let (w, b, by, per_row) = match fold {
        Fold::Norm(w, b) => (w, b, s.to_vec(), 1),
        Fold::Rows(w, b) => (w, b, s.to_vec(), cols(m, w)),
        Fold::Heads {
            w,
            b,
            heads,
            kv,
            dim,
        } => {
            // Value row g·dim + d carries the scale of the group's channels.
            let group = heads / kv;
            let by = (0..kv * dim)
                .map(|r| s[(r / dim) * group * dim + r % dim])
                .collect();
            (w, b, by, cols(m, w))
        }
    };
    divide(m, w, &by, per_row)?;
    if let Some(b) = b {
        divide(m, b, &by, 1)?;
    }
    Ok(())
}

/// The statistics of `x / s` given those of `x`: `S⁻¹ H S⁻¹`, and the ranges divided.
pub(super) fn scaled_stats(h: &Hessian, s: &[f64]) -> Hessian {
    let k = h.k;
    let mut hs = h.h.clone();
    for i in 0..k {
        for j in 0..k {
            hs[i * k + j] /= s[i] * s[j];
        }
    }
    Hessian {
        k,
        h: hs,
        rows: h.rows,
        amax: h.amax.iter().zip(s).map(|(a, s)| a / s).collect(),
    }
}
