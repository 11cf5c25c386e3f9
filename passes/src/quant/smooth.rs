//! SmoothQuant (Xiao et al., 2023): migrating activation outliers into the weights
//! before int8 activations. A few input channels of a linear carry activations far
//! larger than the rest; a block of 32 holding one of them quantizes its other 31
//! coarsely, worst with static scales (`--act-quant int8-static`, one range per block
//! for every row). Dividing channel `j` of the input by
//! `s_j = max|x_j|^α / max|w_j|^(1-α)` (`max|w_j|` over the rows of every linear
//! reading the input) and multiplying the weights' column `j` by it leaves the float
//! model unchanged and evens the channels' ranges, moving the difficulty into the
//! weights, which quantize per row and block anyway.
//!
//! The ranges `max|x_j|` are the calibration's (`Hessian::amax`), and `1/s` is folded
//! where the input is made exactly as AWQ folds its scales (`awq::fold_point`: a
//! norm's weight and bias, the rows of the linear whose output is multiplied in, the
//! V projection's rows for the attention output); inputs made elsewhere (a GELU's
//! output) are left as they are and the report says so.
//!
//! `smooth=A` fixes `α`; `smooth` searches it per input over 0, 0.1, …, 1, scoring on
//! the calibration statistics the relative output error of both roundings: the
//! weights' (to their block format, as AWQ scores it) and the activations' with
//! static scales (`Σ_j min(step_b(j)² / 12, E[x_j²] / s_j²) · s_j² · Σ_r w_rj²` over
//! `Σ_r wᵀHw`, with `step_b` = the block's largest smoothed range over the quant
//! range: uniform rounding noise, at most the channel's own mean square). `α = 0` is no migration, so the choice never scores worse. With
//! per-block activation scales (32 channels share one) migration pays less than the
//! paper's per-tensor ones: on all-MiniLM-L6-v2 a fixed `α = 0.5` lowered static int8's
//! cosine (see docs/quant.md).

use super::awq::{error, fold_scales, group, scaled_stats, Fold, Group, SAMPLE_ROWS};
use super::gptq::quad;
use super::gptq::Hessian;
use super::{calibration_points, Calibration};
use llmc_ir::{DType, Module};
use std::collections::HashMap;
use std::sync::Arc;

/// The α grid `smooth` searches.
const ALPHAS: usize = 11;

/// What the migration did, for the pass's report.
#[derive(Default, Debug)]
pub struct Report {
    /// Inputs smoothed (each a group of linears), and the matrices in them.
    pub groups: usize,
    pub matrices: usize,
    /// Sum of the chosen α over the groups.
    pub alpha_sum: f64,
    /// Mean estimated relative output error (weights' and activations' rounding)
    /// without migration and with the chosen α.
    pub plain_error: f64,
    pub smooth_error: f64,
    /// Over the smoothed inputs: the mean ratio of the largest channel range to the
    /// mean one, before and after.
    pub spread_before: f64,
    pub spread_after: f64,
    /// Inputs left as they are, with why.
    pub skipped: Vec<String>,
}

/// The largest channel range over the mean one.
fn spread(amax: &[f64]) -> f64 {
    let mean = amax.iter().sum::<f64>() / amax.len().max(1) as f64;
    amax.iter().fold(0.0f64, |a, &v| a.max(v)) / mean.max(f64::MIN_POSITIVE)
}

/// The scales for strength `alpha` from the channels' ranges and weight ranges.
fn scales(amax: &[f64], wmax: &[f64], alpha: f64) -> Vec<f64> {
    amax.iter()
        .zip(wmax)
        .map(|(&a, &w)| {
            if a > 0.0 && w > 0.0 {
                (a.powf(alpha) / w.powf(1.0 - alpha)).clamp(1e-5, 1e5)
            } else {
                1.0
            }
        })
        .collect()
}

/// The sampled rows' column sums of squares `Σ_r w_rj²` and `Σ_r wᵀ H w` (the
/// rows [`error`] scores).
fn sampled(mats: &[(Vec<f32>, usize)], k: usize, hn: &[f64]) -> (Vec<f64>, f64) {
    let mut col2 = vec![0.0f64; k];
    let mut den = 0.0;
    let mut wr = vec![0.0f64; k];
    for (w, n) in mats {
        for r in (0..*n).step_by((n / SAMPLE_ROWS).max(1)) {
            for (j, v) in w[r * k..(r + 1) * k].iter().enumerate() {
                wr[j] = *v as f64;
                col2[j] += wr[j] * wr[j];
            }
            den += quad(hn, k, &wr);
        }
    }
    (col2, den)
}

/// The activations' static rounding error relative to the output (see the module
/// comment), for scales `s`; `ms` is each channel's mean square. A channel's noise is
/// at most its own mean square (a step far above its values rounds them to zero).
fn act_error(amax: &[f64], ms: &[f64], col2: &[f64], den: f64, s: &[f64], qmax: f64) -> f64 {
    let mut num = 0.0;
    for (((a, m), c), sb) in amax
        .chunks(32)
        .zip(ms.chunks(32))
        .zip(col2.chunks(32))
        .zip(s.chunks(32))
    {
        let range = a.iter().zip(sb).fold(0.0f64, |r, (a, s)| r.max(a / s));
        let step = range / qmax;
        num += (0..a.len())
            .map(|j| (step * step / 12.0).min(m[j] / (sb[j] * sb[j])) * c[j] * sb[j] * sb[j])
            .sum::<f64>();
    }
    num / den.max(f64::MIN_POSITIVE)
}

/// Smooths every calibration input whose linears `target` quantizes (`Some` format)
/// and whose `1/s` can be folded, with strength `alpha` (`None`: searched per input,
/// activations rounded to `±qmax` with static scales). Returns the statistics of the
/// smoothed inputs by weight name (GPTQ and the static scales read them) and the
/// report.
pub fn apply(
    m: &mut Module,
    cal: &Calibration,
    target: &dyn Fn(&str) -> Option<DType>,
    alpha: Option<f64>,
    qmax: f64,
) -> Result<(HashMap<String, Arc<Hessian>>, Report), String> {
    let mut report = Report::default();
    let (mut plain_sum, mut smooth_sum) = (0.0, 0.0);
    let mut scaled = HashMap::new();
    let (mut before, mut after) = (0.0, 0.0);
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
        if h.amax.len() != k {
            report
                .skipped
                .push(format!("@{} (no ranges measured)", names[0]));
            continue;
        }
        let mut wmax = vec![0.0f64; k];
        for (data, _) in &mats {
            for row in data.chunks_exact(k) {
                for (a, &v) in wmax.iter_mut().zip(row) {
                    *a = a.max((v as f64).abs());
                }
            }
        }
        let mut amax = h.amax.clone();
        if let Fold::Heads { heads, kv, dim, .. } = fold {
            // One scale per value channel: the largest over the query heads reading it.
            let group = heads / kv;
            for g in 0..kv {
                for d in 0..dim {
                    let chans = (g * group..(g + 1) * group).map(|h| h * dim + d);
                    let (a, w) = chans.clone().fold((0.0f64, 0.0f64), |(a, w), c| {
                        (a.max(amax[c]), w.max(wmax[c]))
                    });
                    for c in chans {
                        amax[c] = a;
                        wmax[c] = w;
                    }
                }
            }
        }
        // Score the grid (or the given α against none) over the threads.
        let rows = h.rows.max(1) as f64;
        let hn: Vec<f64> = h.h.iter().map(|v| v / rows).collect();
        let (col2, den) = sampled(&mats, k, &hn);
        let ms: Vec<f64> = (0..k).map(|j| hn[j * k + j].max(0.0)).collect();
        let alphas: Vec<f64> = match alpha {
            Some(a) => vec![0.0, a],
            None => (0..ALPHAS)
                .map(|i| i as f64 / (ALPHAS - 1) as f64)
                .collect(),
        };
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        let per = alphas.len().div_ceil(threads);
        let mut errs = vec![0.0f64; alphas.len()];
        std::thread::scope(|sc| {
            for (ch_a, ch_e) in alphas.chunks(per).zip(errs.chunks_mut(per)) {
                let (mats, hn, amax, wmax, col2, ms) = (&mats, &hn, &amax, &wmax, &col2, &ms);
                sc.spawn(move || {
                    for (a, e) in ch_a.iter().zip(ch_e.iter_mut()) {
                        let s = scales(amax, wmax, *a);
                        *e = error(dtype, mats, k, hn, &s)
                            + act_error(amax, ms, col2, den, &s, qmax);
                    }
                });
            }
        });
        let best = match alpha {
            Some(_) => 1,
            None => (0..alphas.len())
                .min_by(|&a, &b| errs[a].total_cmp(&errs[b]))
                .unwrap_or(0),
        };
        plain_sum += errs[0];
        smooth_sum += errs[best];
        report.alpha_sum += alphas[best];
        let s = scales(&amax, &wmax, alphas[best]);
        fold_scales(m, &ids, &mats, fold, &s)?;
        let hs = Arc::new(scaled_stats(&h, &s));
        before += spread(&h.amax);
        after += spread(&hs.amax);
        report.groups += 1;
        report.matrices += ids.len();
        for n in &names {
            scaled.insert(n.clone(), hs.clone());
        }
    }
    let g = report.groups.max(1) as f64;
    report.plain_error = plain_sum / g;
    report.smooth_error = smooth_sum / g;
    report.spread_before = before / g;
    report.spread_after = after / g;
    Ok((scaled, report))
}
