//! The engine's greedy-picks path (a step model that returns each logit row's argmax,
//! as a CUDA build does, so a step copies back ids, not logits): steps whose sampled
//! rows are all plain greedy without logprobs take the picks and give the tokens the
//! logits give; a step with any row that needs logits (logprobs, prompt logprobs,
//! temperature sampling) takes the logits; a bad pick fails its request, not the
//! engine. The model's logits tie often, and its picks are its own first-maximum scan,
//! independent of the engine's sampler.

use llmc_runtime::engine::step::{StepBatch, StepModel};
use llmc_runtime::engine::{Engine, EngineConfig, Event, FinishReason, Request};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

const VOCAB: usize = 50;

/// Steps run through `step` and through `step_picks`.
#[derive(Default)]
struct Counts {
    logits: AtomicUsize,
    picks: AtomicUsize,
}

struct Ranked {
    picks: bool,
    /// Add this to every pick (a model returning garbage).
    pick_offset: u32,
    logits: Vec<f32>,
    ids: Vec<u32>,
    counts: Arc<Counts>,
}

impl Ranked {
    fn fill(&mut self, b: &StepBatch) {
        self.logits.clear();
        for &r in &b.logit_rows {
            let tok = b.tokens[r as usize] as usize;
            let pos = b.positions[r as usize] as usize;
            for v in 0..VOCAB {
                // 11 distinct values over 50 ids: every row has ties for its maximum.
                self.logits
                    .push(((v * 31 + tok * 7 + pos * 3) % 11) as f32 * 0.25 - 1.0);
            }
        }
    }
}

impl StepModel for Ranked {
    fn vocab(&self) -> usize {
        VOCAB
    }
    fn kv_blocks(&self) -> usize {
        256
    }
    fn block_size(&self) -> usize {
        16
    }
    fn kv_bytes_per_token(&self) -> usize {
        64
    }
    fn step(&mut self, b: &StepBatch) -> Result<&[f32], String> {
        self.counts.logits.fetch_add(1, Ordering::SeqCst);
        self.fill(b);
        Ok(&self.logits)
    }
    fn has_picks(&self) -> bool {
        self.picks
    }
    fn step_picks(&mut self, b: &StepBatch) -> Result<&[u32], String> {
        assert!(self.picks, "step_picks on a model without picks");
        self.counts.picks.fetch_add(1, Ordering::SeqCst);
        self.fill(b);
        self.ids.clear();
        for row in self.logits.chunks(VOCAB) {
            let mut best = 0;
            for (v, &x) in row.iter().enumerate() {
                if x > row[best] {
                    best = v;
                }
            }
            self.ids.push(best as u32 + self.pick_offset);
        }
        Ok(&self.ids)
    }
    fn copy_block(&mut self, _from: u32, _to: u32) {}
}

/// Each request's tokens, logprobs (as given), errors and finish reason.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    tokens: Vec<u32>,
    logprobs: Vec<Option<f32>>,
    prompt_logprobs: usize,
    errors: Vec<String>,
    finish: Option<FinishReason>,
}

/// Runs `reqs` at once on a [`Ranked`] model.
fn run(picks: bool, pick_offset: u32, reqs: &[Request]) -> (Vec<Outcome>, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    let engine = Engine::start(
        move || {
            Ok(Box::new(Ranked {
                picks,
                pick_offset,
                logits: Vec::new(),
                ids: Vec::new(),
                counts: c,
            }) as Box<dyn StepModel>)
        },
        EngineConfig::default(),
        512,
        vec![],
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    for (i, r) in reqs.iter().enumerate() {
        let tx = tx.clone();
        engine
            .submit(r.clone(), Box::new(move |e| tx.send((i, e)).is_ok()))
            .unwrap();
    }
    let mut out: Vec<Outcome> = reqs.iter().map(|_| Outcome::default()).collect();
    let mut left = reqs.len();
    while left > 0 {
        let (i, e) = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the engine answers");
        let o = &mut out[i];
        match e {
            Event::Token { id, logprob } => {
                o.tokens.push(id);
                o.logprobs.push(logprob.map(|l| l.logprob));
            }
            Event::PromptLogprobs(p) => o.prompt_logprobs = p.len(),
            Event::Error(m) => o.errors.push(m),
            Event::Finished { reason, .. } => {
                o.finish = Some(reason);
                left -= 1;
            }
        }
    }
    (out, counts)
}

fn greedy(prompt_len: usize, seed: u32, max_tokens: usize) -> Request {
    let prompt = (0..prompt_len as u32)
        .map(|i| (i * 13 + seed * 5) % VOCAB as u32)
        .collect();
    Request::greedy(prompt, max_tokens)
}

#[test]
fn greedy_steps_take_the_models_picks_and_give_the_same_tokens() {
    let reqs: Vec<Request> = (0..5).map(|i| greedy(3 + 4 * i, i as u32, 12)).collect();
    let (want, c0) = run(false, 0, &reqs);
    let (got, c1) = run(true, 0, &reqs);
    assert_eq!(got, want);
    for o in &got {
        assert_eq!(o.tokens.len(), 12);
        assert_eq!(o.finish, Some(FinishReason::Length));
    }
    assert_eq!(c0.picks.load(Ordering::SeqCst), 0);
    assert!(c0.logits.load(Ordering::SeqCst) > 0);
    assert_eq!(
        c1.logits.load(Ordering::SeqCst),
        0,
        "a greedy step took logits"
    );
    assert!(c1.picks.load(Ordering::SeqCst) >= 12);
}

#[test]
fn steps_with_a_row_that_needs_logits_take_them() {
    let mut with_logprobs = greedy(5, 1, 3);
    with_logprobs.logprobs = Some(2);
    let mut sampled = greedy(9, 2, 4);
    sampled.sampling.temperature = 0.8;
    sampled.sampling.seed = 7;
    let mut prompt_lp = greedy(6, 3, 2);
    prompt_lp.prompt_logprobs = Some(1);
    let reqs = vec![
        greedy(4, 0, 16),
        with_logprobs,
        sampled,
        prompt_lp,
        greedy(11, 4, 16),
    ];
    let (want, _) = run(false, 0, &reqs);
    let (got, c) = run(true, 0, &reqs);
    assert_eq!(got, want);
    assert!(got[1].logprobs.iter().all(|l| l.is_some()));
    assert_eq!(got[3].prompt_logprobs, 6);
    assert!(got.iter().all(|o| o.errors.is_empty()));
    // Logits while the three finish, picks for the long greedy ones after.
    let (l, p) = (
        c.logits.load(Ordering::SeqCst),
        c.picks.load(Ordering::SeqCst),
    );
    assert!(l >= 4 && p >= 10, "{l} logits steps, {p} picks steps");
}

#[test]
fn a_bad_pick_fails_its_request_not_the_engine() {
    let mut with_logprobs = greedy(5, 1, 2);
    with_logprobs.logprobs = Some(0);
    let reqs = vec![greedy(4, 0, 6), with_logprobs];
    let (got, _) = run(true, VOCAB as u32, &reqs);
    // The first step (both prompts) takes logits; the greedy request's next pick is
    // out of the vocabulary once the logprobs request is done.
    assert_eq!(got[1].tokens.len(), 2);
    assert_eq!(got[1].finish, Some(FinishReason::Length));
    assert_eq!(got[0].finish, Some(FinishReason::Error), "{:?}", got[0]);
    assert!(
        got[0].errors.iter().any(|e| e.contains("greedy pick")),
        "{:?}",
        got[0].errors
    );
}
