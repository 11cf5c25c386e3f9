//! Token sampling: turns one row of logits into the next token id. The emitted
//! executable and `llmc run` both decode with it, so it has to be exact about greedy
//! ties and reproducible for a seed. The random source is a PCG32 generator written
//! here (O'Neill's PCG-XSH-RR 64/32 with the reference seeding), not a library RNG whose
//! stream could change between versions: a seed gives the same tokens forever.
//!
//! Order of operations, as in Hugging Face `generate` and llama.cpp: repetition
//! penalty, then greedy (`temperature == 0`) or temperature scaling, top-k, softmax,
//! top-p (nucleus), and one draw from what is left. Without a top-k cut the row is
//! never sorted whole ([`nucleus`]): a serving step samples every sequence's row of
//! the vocabulary on the engine thread.

use std::cmp::Ordering;

/// Why sampling could not proceed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    /// A setting is out of range.
    #[error("sampler setting {name} = {value}: {msg}")]
    Setting {
        /// The setting (`temperature`, `top_p`, ...).
        name: &'static str,
        /// Its value, as text.
        value: String,
        /// The allowed range.
        msg: &'static str,
    },
    /// No logits were given.
    #[error("cannot sample from an empty row of logits")]
    Empty,
    /// A logit is NaN (the model produced garbage).
    #[error("logit of token {token} is NaN")]
    NaN {
        /// The token id.
        token: u32,
    },
    /// Every token is masked out (all logits are -inf).
    #[error("every logit is -inf: no token can be sampled")]
    AllMasked,
}

/// Sampling settings. The defaults are greedy decoding.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; `0` means greedy (argmax, ties to the lowest id).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens; `0` disables the filter.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose mass is at least `p`; `1.0`
    /// disables the filter.
    pub top_p: f32,
    /// Divide positive (multiply negative) logits of tokens already seen by this
    /// factor, as in CTRL / Hugging Face; `1.0` disables it.
    pub repetition_penalty: f32,
    /// Seed of the random generator.
    pub seed: u64,
    /// Drop tokens whose probability is below `min_p` times the most likely one's
    /// (after temperature); `0` disables the filter.
    pub min_p: f32,
    /// Subtracted from the logit of every token generated so far (OpenAI's
    /// `presence_penalty`); `0` disables it.
    pub presence_penalty: f32,
    /// Subtracted from a logit once per time its token was generated so far (OpenAI's
    /// `frequency_penalty`); `0` disables it.
    pub frequency_penalty: f32,
}

impl Default for SamplerConfig {
    fn default() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

impl SamplerConfig {
    /// Checks every setting's range.
    pub fn validate(&self) -> Result<(), SamplerError> {
        let bad = |name, value: f32, msg| {
            Err(SamplerError::Setting {
                name,
                value: value.to_string(),
                msg,
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                self.temperature,
                "must be a finite number >= 0",
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "must be in (0, 1]");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                self.repetition_penalty,
                "must be a finite number > 0",
            );
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "must be in [0, 1]");
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(v.is_finite() && (-2.0..=2.0).contains(&v)) {
                return bad(name, v, "must be in [-2, 2]");
            }
        }
        Ok(())
    }
}

/// PCG-XSH-RR with 64-bit state and 32-bit output (M. O'Neill, "PCG: A Family of
/// Simple Fast Space-Efficient Statistically Good Algorithms for Random Number
/// Generation", 2014), seeded as the reference `pcg32_srandom_r` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pcg32 {
    state: u64,
    inc: u64,
}

impl Pcg32 {
    const MULT: u64 = 6364136223846793005;

    /// A generator on stream `seq`, started from `seed`.
    pub fn new(seed: u64, seq: u64) -> Pcg32 {
        let mut r = Pcg32 {
            state: 0,
            inc: (seq << 1) | 1,
        };
        r.next_u32();
        r.state = r.state.wrapping_add(seed);
        r.next_u32();
        r
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(Self::MULT).wrapping_add(self.inc);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rot = (old >> 59) as u32;
        xorshifted.rotate_right(rot)
    }

    /// A uniform f64 in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        let hi = (self.next_u32() >> 5) as u64; // 27 bits
        let lo = (self.next_u32() >> 6) as u64; // 26 bits
        ((hi << 26) | lo) as f64 / (1u64 << 53) as f64
    }
}

/// A token with a score (a logit or a probability, depending on the stage).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Token id.
    pub id: u32,
    /// Score.
    pub score: f32,
}

/// Orders candidates by descending score, ties by ascending id: the one order every
/// stage uses, so results never depend on the sort algorithm.
fn by_score_desc(a: &Candidate, b: &Candidate) -> Ordering {
    b.score.total_cmp(&a.score).then(a.id.cmp(&b.id))
}

/// The id of the largest logit; ties go to the lowest id.
pub fn argmax(logits: &[f32]) -> Result<u32, SamplerError> {
    if logits.is_empty() {
        return Err(SamplerError::Empty);
    }
    // One pass in 16 independent lanes (the compiler keeps them in vector registers):
    // each lane's best value and its first index, and whether any value is NaN; then
    // the lanes merge, ties to the lowest index. A serving step samples every row of
    // a 49,152-token vocabulary: this pass is most of greedy decoding's host time.
    const L: usize = 16;
    let mut best = [f32::NEG_INFINITY; L];
    let mut at = [u32::MAX; L];
    let mut nan = false;
    let chunks = logits.chunks_exact(L);
    let tail = chunks.remainder();
    for (c, xs) in chunks.enumerate() {
        for j in 0..L {
            let x = xs[j];
            nan |= x.is_nan();
            if x > best[j] {
                best[j] = x;
                at[j] = (c * L + j) as u32;
            }
        }
    }
    let base = logits.len() - tail.len();
    for (j, &x) in tail.iter().enumerate() {
        nan |= x.is_nan();
        if x > best[j] {
            best[j] = x;
            at[j] = (base + j) as u32;
        }
    }
    if nan {
        let i = logits.iter().position(|x| x.is_nan()).unwrap_or(0);
        return Err(SamplerError::NaN { token: i as u32 });
    }
    let mut bv = f32::NEG_INFINITY;
    let mut bi = u32::MAX;
    for j in 0..L {
        if at[j] != u32::MAX && (best[j] > bv || (best[j] == bv && at[j] < bi)) {
            bv = best[j];
            bi = at[j];
        }
    }
    if bv == f32::NEG_INFINITY {
        return Err(SamplerError::AllMasked);
    }
    Ok(bi)
}

fn check(logits: &[f32]) -> Result<(), SamplerError> {
    if logits.is_empty() {
        return Err(SamplerError::Empty);
    }
    if let Some(i) = logits.iter().position(|x| x.is_nan()) {
        return Err(SamplerError::NaN { token: i as u32 });
    }
    if logits.iter().all(|&x| x == f32::NEG_INFINITY) {
        return Err(SamplerError::AllMasked);
    }
    Ok(())
}

/// Applies the repetition penalty in place to every token id in `seen` (each once).
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = vec![false; logits.len()];
    for &t in seen {
        let t = t as usize;
        if let (Some(x), Some(d)) = (logits.get_mut(t), done.get_mut(t)) {
            if !*d {
                *d = true;
                *x = if *x > 0.0 { *x / penalty } else { *x * penalty };
            }
        }
    }
}

/// The tokens that are not masked (-inf), their logits divided by `temperature`.
fn scaled_candidates(logits: &[f32], temperature: f32) -> Vec<Candidate> {
    let inv_t = 1.0 / temperature;
    logits
        .iter()
        .enumerate()
        .filter(|(_, &x)| x != f32::NEG_INFINITY)
        .map(|(i, &x)| Candidate {
            id: i as u32,
            score: x * inv_t,
        })
        .collect()
}

/// Keeps the `k` highest-scoring candidates (ties to the lower id), sorted by
/// descending score. `k == 0` or `k >= len` keeps all of them, sorted.
pub fn top_k(mut cands: Vec<Candidate>, k: usize) -> Vec<Candidate> {
    if k > 0 && k < cands.len() {
        cands.select_nth_unstable_by(k - 1, by_score_desc);
        cands.truncate(k);
    }
    cands.sort_by(by_score_desc);
    cands
}

/// Converts scores (logits) to probabilities in place: a softmax over the candidates.
pub fn softmax(cands: &mut [Candidate]) {
    let max = cands
        .iter()
        .map(|c| c.score)
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for c in cands.iter_mut() {
        let e = ((c.score - max) as f64).exp();
        c.score = e as f32;
        sum += e;
    }
    for c in cands.iter_mut() {
        c.score = (c.score as f64 / sum) as f32;
    }
}

/// Nucleus filter: given probabilities sorted in descending order, keeps the shortest
/// prefix whose mass is at least `p` (always at least one token), and renormalizes.
pub fn top_p(mut probs: Vec<Candidate>, p: f32) -> Vec<Candidate> {
    if p >= 1.0 {
        return probs;
    }
    let mut mass = 0.0f64;
    let mut keep = probs.len();
    for (i, c) in probs.iter().enumerate() {
        mass += c.score as f64;
        if mass >= p as f64 {
            keep = i + 1;
            break;
        }
    }
    probs.truncate(keep.max(1));
    let total: f64 = probs.iter().map(|c| c.score as f64).sum();
    if total > 0.0 {
        for c in &mut probs {
            c.score = (c.score as f64 / total) as f32;
        }
    }
    probs
}

/// Draws one candidate with probability proportional to its score, from a uniform
/// number `u` in `[0, 1)`, walking the candidates in their given order.
pub fn draw(probs: &[Candidate], u: f64) -> Option<u32> {
    let total: f64 = probs.iter().map(|c| c.score as f64).sum();
    let target = u * total;
    let mut acc = 0.0f64;
    for c in probs {
        acc += c.score as f64;
        if target < acc {
            return Some(c.id);
        }
    }
    // Rounding left `target` at the very end: the last token with mass takes it.
    probs.iter().rev().find(|c| c.score > 0.0).map(|c| c.id)
}

/// OpenAI's presence and frequency penalties over the generated tokens: a token seen
/// `n > 0` times loses `presence + n * frequency` from its logit.
pub fn apply_presence_frequency(
    logits: &mut [f32],
    generated: &[u32],
    presence: f32,
    frequency: f32,
) {
    if presence == 0.0 && frequency == 0.0 {
        return;
    }
    let mut counts: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
    for &t in generated {
        *counts.entry(t).or_insert(0) += 1;
    }
    for (t, n) in counts {
        if let Some(l) = logits.get_mut(t as usize) {
            *l -= presence + n as f32 * frequency;
        }
    }
}

/// Keeps the candidates (probabilities, sorted most likely first) whose probability
/// is at least `p` times the largest, renormalised; `p = 0` keeps all.
pub fn min_p(probs: Vec<Candidate>, p: f32) -> Vec<Candidate> {
    if p <= 0.0 || probs.is_empty() {
        return probs;
    }
    let top = probs.iter().map(|c| c.score).fold(0.0f32, f32::max);
    let mut kept: Vec<Candidate> = probs.into_iter().filter(|c| c.score >= p * top).collect();
    let total: f32 = kept.iter().map(|c| c.score).sum();
    if total > 0.0 {
        for c in &mut kept {
            c.score /= total;
        }
    }
    kept
}

/// `e^x` for `x <= 0` in f32 (0 below -87.3), branch-free so a loop over a row
/// vectorizes: `x = n ln 2 + r` with `|r| <= ln 2 / 2` (`ln 2` in two parts), a
/// degree-6 polynomial for `e^r` (Cephes' `expf` coefficients, about 2 ulp), times
/// `2^n` from the exponent bits.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    let under = x < -87.3;
    let x = x.max(-87.3);
    // Round to nearest by adding and subtracting 1.5 * 2^23 (|x log2 e| < 127): no
    // `roundf` call, which the baseline x86-64 target would not inline.
    const MAGIC: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if under {
        0.0
    } else {
        e * scale
    }
}

/// `Σ xs` in f64 over eight running sums (independent chains; the order is fixed).
fn sum_f64(xs: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..8 {
            acc[j] += c[j] as f64;
        }
    }
    let mut s = acc.iter().sum::<f64>();
    for &x in tail {
        s += x as f64;
    }
    s
}

/// Temperature sampling without a top-k cut (the usual request: `temperature`, maybe
/// `top_p` and `min_p`) in passes over the row instead of a sort of the whole
/// vocabulary (49,152 tokens: the sort made a 32-stream sampled decode 2.8x slower
/// than greedy). The same distribution as top-k → softmax → min-p → top-p: weights
/// `e^((z - max) / T)` (f32, summed in f64), min-p keeps weights `>= min_p` (the
/// largest is 1), top-p keeps the most likely tokens (ties to the lower id) until
/// their mass reaches `top_p` of what min-p kept, found by selecting ever larger top
/// sets (64, 256, ...) and sorting only the one that reaches it. `u` in `[0, 1)` picks
/// the token: walking the kept tokens in id order without top-p, most likely first
/// with it.
pub fn nucleus(
    logits: &[f32],
    cfg: &SamplerConfig,
    w: &mut Vec<f32>,
    u: f64,
) -> Result<u32, SamplerError> {
    check(logits)?;
    let inv_t = 1.0 / cfg.temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    w.clear();
    w.extend(logits.iter().map(|&z| exp_nonpositive((z - max) * inv_t)));
    // min-p against the largest weight, which is exactly 1.
    if cfg.min_p > 0.0 {
        let p = cfg.min_p;
        w.iter_mut().for_each(|x| {
            if *x < p {
                *x = 0.0
            }
        });
    }
    let total = sum_f64(w);
    if total <= 0.0 {
        return Err(SamplerError::AllMasked);
    }
    if cfg.top_p >= 1.0 {
        let target = u * total;
        let mut acc = 0.0f64;
        let mut last = None;
        for (i, &x) in w.iter().enumerate() {
            if x > 0.0 {
                acc += x as f64;
                last = Some(i as u32);
                if target < acc {
                    return Ok(i as u32);
                }
            }
        }
        return last.ok_or(SamplerError::AllMasked);
    }
    let need = cfg.top_p as f64 * total;
    let mut cands: Vec<Candidate> = w
        .iter()
        .enumerate()
        .filter(|(_, &x)| x > 0.0)
        .map(|(i, &x)| Candidate {
            id: i as u32,
            score: x,
        })
        .collect();
    let mut k = 64usize;
    loop {
        if k < cands.len() {
            cands.select_nth_unstable_by(k - 1, by_score_desc);
            let mass: f64 = cands[..k].iter().map(|c| c.score as f64).sum();
            if mass < need {
                k *= 4;
                continue;
            }
            cands.truncate(k);
        }
        break;
    }
    cands.sort_by(by_score_desc);
    let mut mass = 0.0f64;
    let mut keep = cands.len();
    for (i, c) in cands.iter().enumerate() {
        mass += c.score as f64;
        if mass >= need {
            keep = i + 1;
            break;
        }
    }
    cands.truncate(keep.max(1));
    draw(&cands, u).ok_or(SamplerError::AllMasked)
}

/// The log-probability of token `tok` in one row of logits and the row's `k` most
/// likely tokens with theirs, most likely first, ties to the lower id; `None` for a row
/// of -inf (or with a NaN maximum), or a token outside the row. One pass for the
/// normalizer (the exponentials of [`nucleus`], summed in f64: within 1e-6 of an f64
/// log-softmax) and one for the top tokens, without the row's whole log-softmax: the
/// engine asks this for every prompt row of an `echo` + `logprobs` request (lm-eval's
/// log-likelihoods) on the engine thread.
pub fn logprob_top(logits: &[f32], tok: u32, k: usize) -> Option<(f32, Vec<(u32, f32)>)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY || max.is_nan() {
        return None;
    }
    let sum = WEIGHTS.with(|w| {
        let mut w = w.borrow_mut();
        w.clear();
        w.extend(logits.iter().map(|&x| exp_nonpositive(x - max)));
        sum_f64(&w)
    });
    let lse = max as f64 + sum.ln();
    let lp = |x: f32| (x as f64 - lse) as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &v) in logits.iter().enumerate() {
            if top.len() == k && v <= top[k - 1].1 {
                continue;
            }
            let at = top.partition_point(|&(_, w)| w >= v);
            top.insert(at, (i as u32, v));
            top.truncate(k);
        }
    }
    let top = top.into_iter().map(|(i, v)| (i, lp(v))).collect();
    Some((lp(*logits.get(tok as usize)?), top))
}

/// A sampler: settings plus the random generator's state.
#[derive(Clone, Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Pcg32,
}

thread_local! {
    /// One weight per token for [`nucleus`] and [`logprob_top`]: one row's worth per
    /// thread (the engine samples on one), not per request.
    static WEIGHTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Sampler {
    /// A sampler with validated settings; the generator starts from `cfg.seed`.
    pub fn new(cfg: SamplerConfig) -> Result<Sampler, SamplerError> {
        cfg.validate()?;
        let rng = Pcg32::new(cfg.seed, 0x11c_5a3d);
        Ok(Sampler { cfg, rng })
    }

    /// The settings.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Picks the next token from one row of logits; `history` holds the tokens so far
    /// (prompt and generated), used by the repetition penalty.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32, SamplerError> {
        self.sample_after(logits, history, history.len())
    }

    /// Whether this sampler's choice is [`argmax`] of the raw logits whatever the
    /// history (greedy with no penalty), so a caller may take it for many rows at once.
    pub fn is_plain_greedy(&self) -> bool {
        let c = &self.cfg;
        c.temperature == 0.0
            && c.repetition_penalty == 1.0
            && c.presence_penalty == 0.0
            && c.frequency_penalty == 0.0
    }

    /// [`Sampler::sample`] where `history[generated_from..]` are the generated tokens
    /// (the ones the presence and frequency penalties count).
    pub fn sample_after(
        &mut self,
        logits: &[f32],
        history: &[u32],
        generated_from: usize,
    ) -> Result<u32, SamplerError> {
        if self.cfg.temperature != 0.0 {
            check(logits)?;
        }
        let penalized;
        let c = &self.cfg;
        let logits = if c.repetition_penalty != 1.0
            || c.presence_penalty != 0.0
            || c.frequency_penalty != 0.0
        {
            let mut l = logits.to_vec();
            if c.repetition_penalty != 1.0 {
                apply_repetition_penalty(&mut l, history, c.repetition_penalty);
            }
            let generated = history.get(generated_from..).unwrap_or(&[]);
            apply_presence_frequency(&mut l, generated, c.presence_penalty, c.frequency_penalty);
            penalized = l;
            &penalized[..]
        } else {
            logits
        };
        if self.cfg.temperature == 0.0 {
            return argmax(logits);
        }
        if self.cfg.top_k == 0 || self.cfg.top_k >= logits.len() {
            let u = self.rng.next_f64();
            return WEIGHTS.with(|w| nucleus(logits, &self.cfg, &mut w.borrow_mut(), u));
        }
        let cands = scaled_candidates(logits, self.cfg.temperature);
        let mut cands = top_k(cands, self.cfg.top_k);
        softmax(&mut cands);
        let cands = min_p(cands, self.cfg.min_p);
        let cands = top_p(cands, self.cfg.top_p);
        let u = self.rng.next_f64();
        draw(&cands, u).ok_or(SamplerError::AllMasked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(scores: &[f32]) -> Vec<Candidate> {
        scores
            .iter()
            .enumerate()
            .map(|(i, &s)| Candidate {
                id: i as u32,
                score: s,
            })
            .collect()
    }

    fn ids(c: &[Candidate]) -> Vec<u32> {
        c.iter().map(|c| c.id).collect()
    }

    #[test]
    fn pcg32_matches_the_reference_stream() {
        // pcg32-demo from the PCG reference C library: pcg32_srandom_r(&rng, 42u, 54u)
        // prints these first six outputs.
        let mut r = Pcg32::new(42, 54);
        let got: Vec<u32> = (0..6).map(|_| r.next_u32()).collect();
        assert_eq!(
            got,
            [0xa15c02b7, 0x7b47f409, 0xba1d3330, 0x83d2f293, 0xbfa4784b, 0xcbed606e]
        );
    }

    #[test]
    fn uniform_floats_are_in_range_and_spread() {
        let mut r = Pcg32::new(7, 1);
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| r.next_f64()).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = xs.iter().sum::<f64>() / n as f64;
        // Standard error of the mean is sqrt(1/12 / n) ~ 0.0009; allow 5 of them.
        assert!((mean - 0.5).abs() < 0.0046, "mean {mean}");
    }

    #[test]
    fn exp_of_nonpositive_arguments_is_within_a_few_ulp() {
        let mut x = 0.0f32;
        while x > -90.0 {
            let (got, want) = (exp_nonpositive(x), (x as f64).exp());
            if x < -87.3 {
                assert_eq!(got, 0.0, "{x}");
            } else {
                let rel = ((got as f64 - want) / want).abs();
                assert!(
                    rel < 4.0 * f32::EPSILON as f64,
                    "exp({x}) = {got}, want {want}"
                );
            }
            x -= 0.0137;
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    /// The whole-row path ([`nucleus`]) keeps the tokens top-k (off) → softmax →
    /// min-p → top-p keeps, with the same probabilities, and walks them so that every
    /// `u` lands on a kept token in proportion to its probability.
    #[test]
    fn nucleus_matches_the_sorted_pipeline() {
        let mut r = Pcg32::new(3, 9);
        for case in 0..24 {
            let v = [50usize, 3000, 20_000][case % 3];
            let spread = [2.0f32, 8.0, 30.0][case / 3 % 3];
            let mut logits: Vec<f32> = (0..v)
                .map(|_| (r.next_f64() as f32 - 0.5) * spread)
                .collect();
            // A few masked tokens and a tie at the top.
            logits[v / 3] = f32::NEG_INFINITY;
            let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            logits[v / 2] = m;
            let cfg = SamplerConfig {
                temperature: [0.7f32, 1.0, 1.6][case % 3],
                top_p: [1.0f32, 0.9, 0.5, 0.99][case % 4],
                min_p: [0.0f32, 0.05][case / 12],
                ..Default::default()
            };
            // The reference: the sorted pipeline.
            let mut want = top_k(scaled_candidates(&logits, cfg.temperature), 0);
            softmax(&mut want);
            let want = top_p(min_p(want, cfg.min_p), cfg.top_p);
            let mut prob = vec![0.0f64; v];
            for c in &want {
                prob[c.id as usize] = c.score as f64;
            }
            // Sweep u: each kept token's share of the sweep is its probability.
            let n = 2_000;
            let mut hits = vec![0usize; v];
            let mut w = Vec::new();
            for i in 0..n {
                let u = (i as f64 + 0.5) / n as f64;
                hits[nucleus(&logits, &cfg, &mut w, u).unwrap() as usize] += 1;
            }
            for t in 0..v {
                let got = hits[t] as f64 / n as f64;
                assert!(
                    (got - prob[t]).abs() <= 1.5 / n as f64 + 1e-4 * prob[t].max(1e-3),
                    "case {case} token {t}: share {got}, probability {}",
                    prob[t]
                );
            }
        }
    }

    /// Against a plain f64 log-softmax: every token's log-probability within 2e-6,
    /// the top tokens in order (ties to the lower id), -inf rows and bad ids refused.
    #[test]
    fn logprobs_match_an_f64_log_softmax() {
        let mut r = Pcg32::new(5, 2);
        for (v, spread) in [(7usize, 3.0f32), (1000, 20.0), (49_152, 40.0)] {
            let mut row: Vec<f32> = (0..v)
                .map(|_| (r.next_f64() as f32 - 0.5) * spread)
                .collect();
            row[0] = f32::NEG_INFINITY;
            row[v - 1] = row[v - 2];
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
            let mut order: Vec<usize> = (0..v).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            for tok in [1u32, (v / 2) as u32, (v - 1) as u32, 0] {
                let (lp, top) = logprob_top(&row, tok, 5).unwrap();
                let want = row[tok as usize] as f64 - lse;
                if tok == 0 {
                    assert_eq!(lp, f32::NEG_INFINITY);
                } else {
                    assert!((lp as f64 - want).abs() < 2e-6, "{lp} vs {want}");
                }
                let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
                let want_ids: Vec<u32> = order[..5.min(v)].iter().map(|&i| i as u32).collect();
                assert_eq!(ids, want_ids);
            }
        }
        assert!(logprob_top(&[f32::NEG_INFINITY; 4], 0, 2).is_none());
        assert!(logprob_top(&[1.0, 2.0], 2, 1).is_none());
    }

    #[test]
    fn argmax_in_lanes_matches_the_plain_scan() {
        let plain = |v: &[f32]| -> Result<u32, SamplerError> {
            check(v)?;
            let mut best = 0usize;
            for (i, &x) in v.iter().enumerate() {
                if x > v[best] {
                    best = i;
                }
            }
            Ok(best as u32)
        };
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for n in [1usize, 2, 15, 16, 17, 31, 33, 100, 49152] {
            for case in 0..6 {
                let mut v: Vec<f32> = (0..n).map(|_| (next() % 7) as f32 - 3.0).collect();
                match case {
                    1 => v.iter_mut().for_each(|x| *x = f32::NEG_INFINITY),
                    2 => {
                        let i = next() as usize % n;
                        v[i] = f32::NAN;
                    }
                    3 => {
                        v.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
                        let i = next() as usize % n;
                        v[i] = -1e30;
                    }
                    4 => v.iter_mut().step_by(3).for_each(|x| *x = f32::NEG_INFINITY),
                    _ => {}
                }
                assert_eq!(argmax(&v), plain(&v), "n {n} case {case}");
            }
        }
    }

    #[test]
    fn greedy_is_argmax_with_ties_to_lowest_id() {
        assert_eq!(argmax(&[0.1, 3.0, -2.0, 3.0]).unwrap(), 1);
        assert_eq!(argmax(&[5.0, 5.0]).unwrap(), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -1e30]).unwrap(), 1);
        let mut s = Sampler::new(SamplerConfig::default()).unwrap();
        for _ in 0..10 {
            assert_eq!(s.sample(&[1.0, 2.0, 7.0, 7.0, 0.0], &[]).unwrap(), 2);
        }
    }

    #[test]
    fn bad_logits_and_settings_are_errors() {
        assert_eq!(argmax(&[]), Err(SamplerError::Empty));
        assert_eq!(
            argmax(&[0.0, f32::NAN]),
            Err(SamplerError::NaN { token: 1 })
        );
        assert_eq!(
            argmax(&[f32::NEG_INFINITY; 3]),
            Err(SamplerError::AllMasked)
        );
        for cfg in [
            SamplerConfig {
                temperature: -1.0,
                ..Default::default()
            },
            SamplerConfig {
                top_p: 0.0,
                ..Default::default()
            },
            SamplerConfig {
                top_p: 1.5,
                ..Default::default()
            },
            SamplerConfig {
                repetition_penalty: 0.0,
                ..Default::default()
            },
        ] {
            assert!(matches!(
                Sampler::new(cfg),
                Err(SamplerError::Setting { .. })
            ));
        }
    }

    #[test]
    fn top_k_keeps_exactly_k_highest() {
        let c = cands(&[0.5, 2.0, -1.0, 2.0, 1.5, 0.0]);
        assert_eq!(ids(&top_k(c.clone(), 3)), [1, 3, 4]);
        assert_eq!(ids(&top_k(c.clone(), 1)), [1]);
        // Ties at the cut go to the lower id.
        assert_eq!(ids(&top_k(cands(&[1.0, 1.0, 1.0, 1.0]), 2)), [0, 1]);
        // 0 and k >= len keep everything, sorted.
        assert_eq!(ids(&top_k(c.clone(), 0)), [1, 3, 4, 0, 5, 2]);
        assert_eq!(top_k(c.clone(), 10).len(), 6);
        for k in 1..=6 {
            assert_eq!(top_k(c.clone(), k).len(), k);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_p() {
        let probs = cands(&[0.4, 0.3, 0.2, 0.1]);
        // 0.4 < 0.5, 0.4 + 0.3 >= 0.5: two tokens.
        let kept = top_p(probs.clone(), 0.5);
        assert_eq!(ids(&kept), [0, 1]);
        let sum: f32 = kept.iter().map(|c| c.score).sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!((kept[0].score - 0.4 / 0.7).abs() < 1e-6);
        // Exactly reaching p stops there.
        assert_eq!(ids(&top_p(probs.clone(), 0.4)), [0]);
        // A tiny p keeps one token; p = 1 keeps all.
        assert_eq!(ids(&top_p(probs.clone(), 1e-6)), [0]);
        assert_eq!(top_p(probs.clone(), 1.0).len(), 4);
        assert_eq!(ids(&top_p(probs, 0.95)), [0, 1, 2, 3]);
    }

    #[test]
    fn softmax_matches_closed_form() {
        let mut c = cands(&[1.0, 2.0, 3.0]);
        softmax(&mut c);
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|x| x.exp()).sum();
        for (i, x) in [1.0f64, 2.0, 3.0].iter().enumerate() {
            assert!((c[i].score as f64 - x.exp() / z).abs() < 1e-6);
        }
    }

    #[test]
    fn repetition_penalty_follows_ctrl_rule() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1, 7], 2.0);
        assert_eq!(l, [1.0, -4.0, 1.0]);
        // The penalty can flip a greedy choice.
        let mut s = Sampler::new(SamplerConfig {
            repetition_penalty: 2.0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.sample(&[2.0, 1.5], &[0]).unwrap(), 1);
    }

    #[test]
    fn same_seed_same_sequence() {
        let cfg = SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            seed: 1234,
            ..Default::default()
        };
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |cfg: &SamplerConfig| {
            let mut s = Sampler::new(cfg.clone()).unwrap();
            (0..50)
                .map(|_| s.sample(&logits, &[]).unwrap())
                .collect::<Vec<u32>>()
        };
        let a = run(&cfg);
        assert_eq!(a, run(&cfg));
        let b = run(&SamplerConfig { seed: 4321, ..cfg });
        assert_ne!(a, b, "different seeds gave the same 50 draws");
    }

    #[test]
    fn filters_restrict_what_can_be_drawn() {
        let logits = [3.0, 2.9, 2.8, 0.0, -1.0, 2.7];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 2,
            seed: 9,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..500 {
            let t = s.sample(&logits, &[]).unwrap();
            assert!(t == 0 || t == 1, "top-k 2 drew {t}");
        }
        // Masked tokens are never drawn.
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            seed: 3,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..500 {
            assert_ne!(s.sample(&[0.0, f32::NEG_INFINITY, 0.0], &[]).unwrap(), 1);
        }
    }

    #[test]
    fn draws_follow_the_softmax_distribution() {
        // Logits ln(0.5), ln(0.3), ln(0.2) at temperature 1 give probabilities 0.5,
        // 0.3, 0.2. With n = 200_000 draws each frequency has a standard deviation of
        // at most sqrt(0.25 / n) ~ 0.0011; the tolerance 0.006 is over 5 of them.
        let p = [0.5f64, 0.3, 0.2];
        let logits: Vec<f32> = p.iter().map(|x| x.ln() as f32).collect();
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            seed: 2024,
            ..Default::default()
        })
        .unwrap();
        let n = 200_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[s.sample(&logits, &[]).unwrap() as usize] += 1;
        }
        for i in 0..3 {
            let f = counts[i] as f64 / n as f64;
            assert!((f - p[i]).abs() < 0.006, "token {i}: {f} vs {}", p[i]);
        }
        // Temperature 0.5 squares the odds: probabilities proportional to p^2.
        let z: f64 = p.iter().map(|x| x * x).sum();
        let q: Vec<f64> = p.iter().map(|x| x * x / z).collect();
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.5,
            seed: 77,
            ..Default::default()
        })
        .unwrap();
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[s.sample(&logits, &[]).unwrap() as usize] += 1;
        }
        for i in 0..3 {
            let f = counts[i] as f64 / n as f64;
            assert!((f - q[i]).abs() < 0.006, "t=0.5 token {i}: {f} vs {}", q[i]);
        }
    }

    #[test]
    fn top_p_distribution_is_renormalized() {
        // Probabilities 0.5, 0.3, 0.2 with top-p 0.7 keep {0, 1}, renormalized to
        // 0.625 / 0.375. Same tolerance argument as above.
        let p = [0.5f64, 0.3, 0.2];
        let logits: Vec<f32> = p.iter().map(|x| x.ln() as f32).collect();
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_p: 0.7,
            seed: 5,
            ..Default::default()
        })
        .unwrap();
        let n = 200_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[s.sample(&logits, &[]).unwrap() as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        let f0 = counts[0] as f64 / n as f64;
        assert!((f0 - 0.625).abs() < 0.006, "{f0}");
    }
}
