//! GPTQ (Frantar et al., 2022): error-compensating rounding of a weight matrix into a
//! block format, chosen so the quantized linear reproduces the original's output on
//! calibration activations rather than each weight on its own. With `H = XᵀX` over
//! the calibration rows `x` a linear reads, the output error of a quantized row `q` of
//! `w` is `(w - q)ᵀ H (w - q)`; GPTQ quantizes the columns left to right and spreads
//! each column's rounding error over the columns not yet quantized through the upper
//! Cholesky factor `U` of `H⁻¹` (the optimal update, OBQ's formula), so later columns
//! absorb what earlier ones lost.
//!
//! Here the groups are the format's blocks of 32 along a row, so each block's scale
//! is chosen (by the format's reference rule, [`BlockScale::of`]) from the block's
//! values as updated when the sweep reaches it, and the result is ordinary `q4_0` /
//! `q4_1` / `q8_0` blocks: the kernels, the executable and llama.cpp read them as they
//! read any other. Rows are independent (`H` couples columns), so the sweep runs per
//! row, a tile of rows at a time sharing each row of `U`, spread over threads.
//!
//! The calibration statistics come from `llmc build --calibration FILE`
//! (`src/calibrate.rs` runs the unquantized model and accumulates `XᵀX` per linear
//! input); [`Hessian`] is what it hands to the pass.

use super::gguf::{BlockScale, MAX_GROUP};
use llmc_ir::DType;

/// `XᵀX` summed over the calibration rows a group of linears read (`k` = their input
/// width), and how many rows went into it.
#[derive(Clone, Debug)]
pub struct Hessian {
    pub k: usize,
    /// Row-major `k x k`.
    pub h: Vec<f64>,
    pub rows: usize,
    /// Per input column, the largest `|x|` over the rows (empty: not measured). What
    /// static activation scales (`--act-quant int8-static`) are set from.
    pub amax: Vec<f64>,
}

/// Relative damping added to `H`'s diagonal (of its mean), as GPTQ's `percdamp`: the
/// least [`default_damp`] gives.
pub const DAMP: f64 = 0.01;

/// The damping for statistics from `rows` rows of width `k`: `max(1%, k / rows)`.
/// `H` estimated from few rows per column is noisy (rank-deficient below `k` rows), and
/// GPTQ then compensates noise: on SmolLM2 with 1024 calibration tokens, 1% damping made
/// q4_0 worse than rounding to nearest on held-out text, `k / rows` better (docs/quant.md).
pub fn default_damp(h: &Hessian) -> f64 {
    (h.k as f64 / h.rows.max(1) as f64).max(DAMP)
}

/// `a · b` with eight running sums (so it vectorizes; a single sum cannot be
/// reordered).
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Lower Cholesky factor of the symmetric positive definite `a` (`k x k`, row-major),
/// or `None` when it is not positive definite.
pub(crate) fn cholesky(a: &[f64], k: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0f64; k * k];
    for i in 0..k {
        for j in 0..=i {
            let v = a[i * k + j] - dot(&l[i * k..i * k + j], &l[j * k..j * k + j]);
            if i == j {
                if v <= 0.0 || !v.is_finite() {
                    return None;
                }
                l[i * k + i] = v.sqrt();
            } else {
                l[i * k + j] = v / l[j * k + j];
            }
        }
    }
    Some(l)
}

/// The inverse of the lower-triangular `l` (also lower triangular): row `i` of
/// `X = L⁻¹` is `(eᵢ - Σ_{p<i} L[i,p]·X[p]) / L[i,i]`. Columns are independent, so
/// threads take column panels of equal work (column `j` costs `(k - j)²`).
fn lower_inverse(l: &[f64], k: usize) -> Vec<f64> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(8);
    let bounds: Vec<usize> = (0..=threads)
        .map(|t| {
            let f = 1.0 - (1.0 - t as f64 / threads as f64).cbrt();
            ((k as f64 * f).round() as usize).min(k)
        })
        .collect();
    let panels: Vec<(usize, usize, Vec<f64>)> = std::thread::scope(|s| {
        let hs: Vec<_> = bounds
            .windows(2)
            .map(|b| {
                let (c0, c1) = (b[0], b[1]);
                s.spawn(move || {
                    let w = c1 - c0;
                    let mut x = vec![0.0f64; k * w];
                    for i in c0..k {
                        let (done, rest) = x.split_at_mut(i * w);
                        let row = &mut rest[..w];
                        // Only columns <= i are non-zero in row i.
                        let hi = (i + 1).min(c1) - c0;
                        for p in c0..i {
                            let c = l[i * k + p];
                            if c != 0.0 {
                                let xp = &done[p * w..p * w + ((p + 1).min(c1) - c0)];
                                for (r, v) in row.iter_mut().zip(xp) {
                                    *r -= c * v;
                                }
                            }
                        }
                        if i < c1 {
                            row[i - c0] += 1.0;
                        }
                        let d = l[i * k + i];
                        for r in row[..hi].iter_mut() {
                            *r /= d;
                        }
                    }
                    (c0, c1, x)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut x = vec![0.0f64; k * k];
    for (c0, c1, p) in panels {
        let w = c1 - c0;
        for i in 0..k {
            x[i * k + c0..i * k + c1].copy_from_slice(&p[i * w..(i + 1) * w]);
        }
    }
    x
}

/// The upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = UᵀU`), from one Cholesky and one
/// triangular inverse: with `J` the reversal, `JHJ = MMᵀ` gives `H = RRᵀ` for the
/// upper `R = JMJ`, and `U = R⁻¹ = J M⁻¹ J`.
fn inverse_cholesky_upper(h: &[f64], k: usize) -> Option<Vec<f64>> {
    let mut rev = vec![0.0f64; k * k];
    for i in 0..k {
        for j in 0..k {
            rev[i * k + j] = h[(k - 1 - i) * k + (k - 1 - j)];
        }
    }
    let m = cholesky(&rev, k)?;
    let minv = lower_inverse(&m, k);
    let mut u = vec![0.0f64; k * k];
    for i in 0..k {
        for j in i..k {
            u[i * k + j] = minv[(k - 1 - i) * k + (k - 1 - j)];
        }
    }
    Some(u)
}

/// What one matrix's GPTQ did, for the pass's report.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// `Σ (w-q)ᵀH(w-q) / Σ wᵀHw` for round-to-nearest (the reference quantizer) and
    /// for GPTQ, over a sample of rows.
    pub rtn_error: f64,
    pub gptq_error: f64,
    /// The damping used, and whether the factorization needed more than asked.
    pub damp: f64,
    pub damped: bool,
}

/// `eᵀ H e` for a row error `e`.
pub(crate) fn quad(h: &[f64], k: usize, e: &[f64]) -> f64 {
    (0..k).map(|i| e[i] * dot(&h[i * k..(i + 1) * k], e)).sum()
}

/// `H` made ready for sweeps: normalised, damped, and `U` (the upper Cholesky factor
/// of `H⁻¹`); one per calibration input, shared by the linears reading it.
pub struct Prepared {
    pub(crate) k: usize,
    /// `H / rows` (undamped), for measuring errors.
    h: Vec<f64>,
    /// The upper Cholesky factor of the damped `H⁻¹`, row-major `k x k`.
    pub(crate) u: Vec<f32>,
    damp: f64,
    damped: bool,
}

impl Prepared {
    /// Normalises and factors `hess`. A column no calibration row reached (`H_ii = 0`)
    /// gets `H_ii = 1` so the factorization exists; the damping grows tenfold until it
    /// does.
    pub fn new(hess: &Hessian, damp: f64) -> Result<Prepared, String> {
        let k = hess.k;
        if hess.rows == 0 {
            return Err("the calibration saw no rows".into());
        }
        if hess.h.len() != k * k {
            return Err(format!("{} statistics for width {k}", hess.h.len()));
        }
        let mut h: Vec<f64> = hess.h.iter().map(|v| v / hess.rows as f64).collect();
        for i in 0..k {
            if h[i * k + i] <= 0.0 {
                h[i * k + i] = 1.0;
            }
        }
        let mean_diag = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
        let asked = damp;
        let mut damp = damp;
        loop {
            let mut hd = h.clone();
            for i in 0..k {
                hd[i * k + i] += damp * mean_diag;
            }
            if let Some(u) = inverse_cholesky_upper(&hd, k) {
                let u = u.iter().map(|&v| v as f32).collect();
                let damped = damp > asked;
                return Ok(Prepared {
                    k,
                    h,
                    u,
                    damp,
                    damped,
                });
            }
            damp *= 10.0;
            if damp > 1e3 {
                return Err("the calibration statistics are not positive definite".into());
            }
        }
    }
}

/// Quantizes the row-major `n x k` matrix `w` into `dtype` blocks with GPTQ against
/// the calibration `p` (`k` must match and be a multiple of 32). Returns the blocks,
/// row by row as [`super::gguf::quantize`] lays them out, and the measured errors.
pub fn quantize(
    dtype: DType,
    w: &[f32],
    n: usize,
    p: &Prepared,
) -> Result<(Vec<u8>, Outcome), String> {
    let k = p.k;
    let bl = dtype.block_len();
    if w.len() != n * k || !k.is_multiple_of(bl) || bl > MAX_GROUP {
        return Err(format!(
            "a {n} x {} matrix does not fit a calibration of width {k} in blocks of {bl}",
            w.len() / n.max(1)
        ));
    }
    let (h, damp, damped) = (&p.h, p.damp, p.damped);
    let uf = &p.u;
    let bpr = k / bl * dtype.block_bytes();
    let mut out = vec![0u8; n * bpr];
    let mut deq = vec![0f32; n * k];
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(n.div_ceil(TILE))
        .max(1);
    let rows_per = n.div_ceil(threads).div_ceil(TILE) * TILE;
    std::thread::scope(|s| {
        for ((wc, oc), dc) in w
            .chunks(rows_per * k)
            .zip(out.chunks_mut(rows_per * bpr))
            .zip(deq.chunks_mut(rows_per * k))
        {
            s.spawn(move || sweep(dtype, wc, k, uf, oc, dc));
        }
    });
    // The errors on about 64 rows (the full sum costs as much as the sweep).
    let (mut base, mut e_rtn, mut e_gptq) = (0.0f64, 0.0f64, 0.0f64);
    let mut e = vec![0.0f64; k];
    for r in (0..n).step_by((n / 64).max(1)) {
        let row = &w[r * k..(r + 1) * k];
        let wr: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        base += quad(h, k, &wr);
        for (b, chunk) in row.chunks_exact(dtype.block_len()).enumerate() {
            let sc = BlockScale::of(dtype, chunk);
            for (j, &v) in chunk.iter().enumerate() {
                e[b * dtype.block_len() + j] = (v - sc.code(dtype, v).1) as f64;
            }
        }
        e_rtn += quad(h, k, &e);
        for j in 0..k {
            e[j] = (row[j] - deq[r * k + j]) as f64;
        }
        e_gptq += quad(h, k, &e);
    }
    let base = base.max(f64::MIN_POSITIVE);
    Ok((
        out,
        Outcome {
            rtn_error: e_rtn / base,
            gptq_error: e_gptq / base,
            damp,
            damped,
        },
    ))
}

/// The relative output error `Σ eᵀHe / Σ wᵀHw` of rounding the rows of `w` (width
/// `h.k`) to nearest in `dtype`, over about 64 rows spread through it.
pub fn rounding_error(dtype: DType, w: &[f32], h: &Hessian) -> f64 {
    let k = h.k;
    let n = w.len() / k.max(1);
    let (mut base, mut err) = (0.0f64, 0.0f64);
    let mut e = vec![0.0f64; k];
    for r in (0..n).step_by((n / 64).max(1)) {
        let row = &w[r * k..(r + 1) * k];
        let wr: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        base += quad(&h.h, k, &wr);
        for (b, chunk) in row.chunks_exact(dtype.block_len()).enumerate() {
            let sc = BlockScale::of(dtype, chunk);
            for (j, &v) in chunk.iter().enumerate() {
                e[b * dtype.block_len() + j] = (v - sc.code(dtype, v).1) as f64;
            }
        }
        err += quad(&h.h, k, &e);
    }
    err / base.max(f64::MIN_POSITIVE)
}

/// Rows swept together, sharing each row of `U` while it is in cache.
const TILE: usize = 8;

/// The GPTQ sweep over the rows of `w` (`k` wide): blocks into `out`, the values they
/// stand for into `deq`.
fn sweep(dtype: DType, w: &[f32], k: usize, u: &[f32], out: &mut [u8], deq: &mut [f32]) {
    let n = w.len() / k;
    let bl = dtype.block_len();
    let bpr = k / bl * dtype.block_bytes();
    let mut work = vec![0f32; TILE * k];
    let mut codes = [[0u8; MAX_GROUP]; TILE];
    let mut scales = [BlockScale { d: 0.0, m: 0.0 }; TILE];
    for r0 in (0..n).step_by(TILE) {
        let t = TILE.min(n - r0);
        work[..t * k].copy_from_slice(&w[r0 * k..(r0 + t) * k]);
        for i in 0..k {
            let col = i % bl;
            let urow = &u[i * k..(i + 1) * k];
            let uii = urow[i];
            for r in 0..t {
                let row = &mut work[r * k..(r + 1) * k];
                if col == 0 {
                    scales[r] = BlockScale::of(dtype, &row[i..i + bl]);
                }
                let (c, q) = scales[r].code(dtype, row[i]);
                codes[r][col] = c;
                deq[(r0 + r) * k + i] = q;
                let err = (row[i] - q) / uii;
                for (x, &uv) in row[i + 1..].iter_mut().zip(&urow[i + 1..]) {
                    *x -= err * uv;
                }
                if col == bl - 1 {
                    let mut blk = Vec::with_capacity(dtype.block_bytes());
                    scales[r].encode(dtype, &codes[r], &mut blk);
                    let at = (r0 + r) * bpr + i / bl * dtype.block_bytes();
                    out[at..at + blk.len()].copy_from_slice(&blk);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The factorization against its definition, and GPTQ against round-to-nearest on
    //! correlated inputs (where it must win) and uncorrelated ones (where it cannot).
    use super::*;
    use llmc_ir::quant::dequantize;

    /// A deterministic generator (no rand dependency), shared with the prune tests.
    pub(crate) struct Lcg(pub(crate) u64);
    impl Lcg {
        /// Uniform in [-1, 1).
        pub(crate) fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
    }

    /// `XᵀX` of `rows` random rows of width `k` whose columns share a common factor
    /// (correlated, as real activations are) when `mix > 0`.
    fn hessian(k: usize, rows: usize, mix: f64, rng: &mut Lcg) -> Hessian {
        let mut h = vec![0.0; k * k];
        let mut x = vec![0.0; k];
        for _ in 0..rows {
            let common = rng.next();
            for v in x.iter_mut() {
                *v = rng.next() + mix * common;
            }
            for i in 0..k {
                for j in 0..k {
                    h[i * k + j] += x[i] * x[j];
                }
            }
        }
        Hessian {
            k,
            h,
            rows,
            amax: Vec::new(),
        }
    }

    #[test]
    fn inverse_cholesky_factor_reproduces_the_inverse() {
        let mut rng = Lcg(7);
        let k = 40;
        let hs = hessian(k, 200, 0.5, &mut rng);
        let u = inverse_cholesky_upper(&hs.h, k).unwrap();
        // U upper, and H · (UᵀU) = I.
        for i in 0..k {
            for j in 0..i {
                assert_eq!(u[i * k + j], 0.0);
            }
        }
        for i in 0..k {
            for j in 0..k {
                let mut s = 0.0;
                for p in 0..k {
                    let mut inv = 0.0;
                    for q in 0..k {
                        inv += u[q * k + p] * u[q * k + j];
                    }
                    s += hs.h[i * k + p] * inv;
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-8, "({i},{j}): {s}");
            }
        }
    }

    #[test]
    fn gptq_beats_rounding_on_correlated_inputs_and_writes_valid_blocks() {
        let mut rng = Lcg(11);
        let (n, k) = (24, 96);
        let hs = hessian(k, 400, 1.5, &mut rng);
        let w: Vec<f32> = (0..n * k).map(|_| rng.next() as f32).collect();
        for dt in [
            DType::Q4_0,
            DType::Q4_1,
            DType::Q5_0,
            DType::Q5_1,
            DType::Q8_0,
        ] {
            let (blocks, o) = quantize(dt, &w, n, &Prepared::new(&hs, DAMP).unwrap()).unwrap();
            assert_eq!(blocks.len(), n * k / dt.block_len() * dt.block_bytes());
            assert!(
                o.gptq_error < 0.8 * o.rtn_error,
                "{dt}: gptq {} vs rtn {}",
                o.gptq_error,
                o.rtn_error
            );
            // The blocks decode to a matrix near w (GPTQ moves values by at most a few
            // steps of the block's grid).
            let back = dequantize(dt, &blocks, n * k).unwrap();
            let step = match dt {
                DType::Q8_0 => 1.0 / 127.0,
                _ => 2.0 / 15.0,
            } * 2.0;
            for (a, b) in w.iter().zip(&back) {
                assert!((*a as f64 - b).abs() < 4.0 * step, "{dt}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn uncorrelated_inputs_leave_little_to_compensate() {
        let mut rng = Lcg(3);
        let (n, k) = (16, 64);
        // H = I exactly: U is diagonal, GPTQ is rounding to nearest.
        let mut h = vec![0.0; k * k];
        for i in 0..k {
            h[i * k + i] = 1.0;
        }
        let hs = Hessian {
            k,
            h,
            rows: 1,
            amax: Vec::new(),
        };
        let w: Vec<f32> = (0..n * k).map(|_| rng.next() as f32).collect();
        let (_, o) = quantize(DType::Q4_0, &w, n, &Prepared::new(&hs, DAMP).unwrap()).unwrap();
        assert!(
            (o.gptq_error - o.rtn_error).abs() <= 1e-3 * o.rtn_error,
            "{o:?}"
        );
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let mut hs = Hessian {
            k: 64,
            h: vec![0.0; 64 * 64],
            rows: 0,
            amax: Vec::new(),
        };
        let e = Prepared::new(&hs, DAMP).err().unwrap();
        assert!(e.contains("no rows"), "{e}");
        hs.rows = 1;
        let p = Prepared::new(&hs, DAMP).unwrap();
        assert!(quantize(DType::Q4_0, &[0.0; 63 * 2], 2, &p).is_err());
        assert!(quantize(DType::Q4_0, &[0.0; 128], 2, &p).is_ok());
    }
}
