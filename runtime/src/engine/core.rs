//! The engine thread and its handle. The thread owns the step function, the block
//! pool and the scheduler; it takes commands (submit, cancel, shutdown) between steps,
//! runs one step at a time, samples each finished row with its request's own seeded
//! sampler, and sends events to the request's sink. The handle validates requests
//! before they reach the thread and reads a stats snapshot the thread refreshes after
//! every step.

use super::blocks::BlockPool;
use super::scheduler::{Limits, Scheduled, Scheduler, Seq};
use super::step::{StepBatch, StepModel};
use super::{
    EngineConfig, Event, FinishReason, ModelFacts, Request, RequestId, Sink, Stats, SubmitError,
    Timings, TokenLogprob,
};
use crate::sampler::{argmax, logprob_top, Sampler, SamplerError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

enum Cmd {
    Submit {
        id: RequestId,
        req: Box<Request>,
        sink: Sink,
        at: Instant,
    },
    Cancel(RequestId),
    Shutdown,
}

struct Shared {
    tx: Mutex<Sender<Cmd>>,
    stats: Mutex<Stats>,
    facts: ModelFacts,
    cfg: EngineConfig,
    next_id: AtomicU64,
    /// Requests submitted and not yet finished.
    in_flight: AtomicUsize,
    /// Requests submitted and not yet scheduled.
    queued: AtomicUsize,
    closing: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A cheap, cloneable handle to a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

/// Starts engines.
pub struct Engine;

impl Engine {
    /// Starts the engine thread. `make` builds the step function on that thread (it
    /// may hold memory that is not `Send`); its error is returned here.
    pub fn start<F>(
        make: F,
        cfg: EngineConfig,
        context_length: usize,
        eos: Vec<u32>,
    ) -> Result<EngineHandle, String>
    where
        F: FnOnce() -> Result<Box<dyn StepModel>, String> + Send + 'static,
    {
        let (tx, rx) = channel::<Cmd>();
        let (ftx, frx) = channel::<Result<ModelFacts, String>>();
        let cfg2 = cfg.clone();
        let eos2 = eos.clone();
        let shared_slot: Arc<Mutex<Option<Arc<Shared>>>> = Arc::new(Mutex::new(None));
        let slot2 = shared_slot.clone();
        let thread = std::thread::Builder::new()
            .name("llmc-engine".into())
            .spawn(move || {
                let model = match make() {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ftx.send(Err(e));
                        return;
                    }
                };
                let facts = ModelFacts {
                    vocab: model.vocab(),
                    context_length,
                    eos: eos2,
                    block_size: model.block_size(),
                    kv_blocks: model.kv_blocks(),
                    kv_bytes_per_token: model.kv_bytes_per_token(),
                };
                let _ = ftx.send(Ok(facts.clone()));
                // Wait for the handle's shared state.
                let shared = loop {
                    if let Some(s) = slot2.lock().ok().and_then(|g| g.clone()) {
                        break s;
                    }
                    std::thread::yield_now();
                };
                let mut w = Worker::new(model, cfg2, facts, shared);
                w.run(rx);
            })
            .map_err(|e| format!("cannot start the engine thread: {e}"))?;
        let facts = match frx.recv() {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err("the engine thread stopped while loading the model".into());
            }
        };
        let stats = Stats {
            kv_blocks_total: facts.kv_blocks,
            block_size: facts.block_size,
            ..Stats::default()
        };
        let shared = Arc::new(Shared {
            tx: Mutex::new(tx),
            stats: Mutex::new(stats),
            facts,
            cfg,
            next_id: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
        });
        if let Ok(mut g) = shared_slot.lock() {
            *g = Some(shared.clone());
        }
        Ok(EngineHandle { shared })
    }
}

impl EngineHandle {
    /// The model's facts.
    pub fn facts(&self) -> &ModelFacts {
        &self.shared.facts
    }

    /// The limits the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.cfg
    }

    /// Checks a request against the model and the engine's limits.
    pub fn validate(&self, req: &Request) -> Result<(), SubmitError> {
        let f = &self.shared.facts;
        if req.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if let Some((index, &id)) = req
            .prompt
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= f.vocab)
        {
            return Err(SubmitError::BadToken {
                index,
                id,
                vocab: f.vocab,
            });
        }
        let need = req.prompt.len().saturating_add(req.max_tokens);
        if need > f.context_length {
            return Err(SubmitError::TooLong {
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
                context: f.context_length,
            });
        }
        if need > f.kv_capacity_tokens() {
            return Err(SubmitError::ExceedsCache {
                needed: need,
                capacity: f.kv_capacity_tokens(),
            });
        }
        req.sampling
            .validate()
            .map_err(|e| SubmitError::Sampling(e.to_string()))?;
        Ok(())
    }

    /// Submits a request; its events go to `sink` on the engine thread.
    pub fn submit(&self, req: Request, sink: Sink) -> Result<RequestId, SubmitError> {
        self.validate(&req)?;
        let sh = &self.shared;
        if sh.closing.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let waiting = sh.queued.load(Ordering::SeqCst);
        if waiting >= sh.cfg.max_waiting {
            return Err(SubmitError::QueueFull { waiting });
        }
        let id = sh.next_id.fetch_add(1, Ordering::SeqCst);
        sh.in_flight.fetch_add(1, Ordering::SeqCst);
        sh.queued.fetch_add(1, Ordering::SeqCst);
        let cmd = Cmd::Submit {
            id,
            req: Box::new(req),
            sink,
            at: Instant::now(),
        };
        let sent = sh.tx.lock().map(|tx| tx.send(cmd).is_ok()).unwrap_or(false);
        if !sent {
            sh.in_flight.fetch_sub(1, Ordering::SeqCst);
            sh.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(id)
    }

    /// Cancels a request (a no-op when it has finished); its blocks are freed before
    /// the next step and its sink gets `Finished { reason: Cancelled }`.
    pub fn cancel(&self, id: RequestId) {
        if let Ok(tx) = self.shared.tx.lock() {
            let _ = tx.send(Cmd::Cancel(id));
        }
    }

    /// A snapshot of the counters (refreshed after every step).
    pub fn stats(&self) -> Stats {
        self.shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Requests submitted and not finished.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Refuses new requests, lets the running and waiting ones finish, then stops the
    /// engine thread and waits for it.
    pub fn shutdown(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Ok(tx) = self.shared.tx.lock() {
            let _ = tx.send(Cmd::Shutdown);
        }
        let t = self.shared.thread.lock().ok().and_then(|mut g| g.take());
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

/// What a step returned: every logit row's logits, or only their greedy picks.
enum Out<'a> {
    Logits(&'a [f32]),
    Picks(&'a [u32]),
}

/// A request's state on the engine thread.
struct Live {
    req: Box<Request>,
    sink: Sink,
    sampler: Sampler,
    at: Instant,
    scheduled_at: Option<Instant>,
    first_token: Option<Instant>,
    generated: usize,
    prompt_logprobs_sent: bool,
    /// Prompt logprobs gathered over the prompt's prefill chunks.
    prompt_lp: Vec<Option<TokenLogprob>>,
}

struct Worker {
    model: Box<dyn StepModel>,
    cfg: EngineConfig,
    facts: ModelFacts,
    shared: Arc<Shared>,
    pool: BlockPool,
    sch: Scheduler,
    live: HashMap<RequestId, Live>,
    arrivals: u64,
    closing: bool,
    stats: Stats,
    finished: HashMap<FinishReason, u64>,
    batch: StepBatch,
}

impl Worker {
    fn new(
        model: Box<dyn StepModel>,
        cfg: EngineConfig,
        facts: ModelFacts,
        shared: Arc<Shared>,
    ) -> Worker {
        let pool = BlockPool::new(facts.kv_blocks, facts.block_size);
        let stats = Stats {
            kv_blocks_total: facts.kv_blocks,
            block_size: facts.block_size,
            ..Stats::default()
        };
        Worker {
            model,
            cfg,
            facts,
            shared,
            pool,
            sch: Scheduler::default(),
            live: HashMap::new(),
            arrivals: 0,
            closing: false,
            stats,
            finished: HashMap::new(),
            batch: StepBatch::default(),
        }
    }

    fn idle(&self) -> bool {
        self.sch.running.is_empty() && self.sch.waiting.is_empty()
    }

    fn run(&mut self, rx: Receiver<Cmd>) {
        loop {
            // Commands: block when there is nothing to step.
            if self.idle() {
                if self.closing {
                    break;
                }
                match rx.recv() {
                    Ok(c) => self.command(c),
                    Err(_) => break,
                }
            }
            while let Ok(c) = rx.try_recv() {
                self.command(c);
            }
            if self.idle() {
                self.publish();
                continue;
            }
            self.step();
            self.publish();
        }
        self.publish();
    }

    fn command(&mut self, c: Cmd) {
        match c {
            Cmd::Submit { id, req, sink, at } => {
                let sampler = match Sampler::new(req.sampling.clone()) {
                    Ok(s) => s,
                    Err(e) => {
                        let mut sink = sink;
                        sink(Event::Error(e.to_string()));
                        self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                };
                let mut seq = Seq::new(id, req.prompt.clone(), req.priority, self.arrivals);
                self.arrivals += 1;
                seq.use_prefix = self.cfg.prefix_cache && req.prompt_logprobs.is_none();
                seq.prompt_logits = req.prompt_logprobs.is_some();
                self.sch.add(seq);
                self.live.insert(
                    id,
                    Live {
                        req,
                        sink,
                        sampler,
                        at,
                        scheduled_at: None,
                        first_token: None,
                        generated: 0,
                        prompt_logprobs_sent: false,
                        prompt_lp: Vec::new(),
                    },
                );
            }
            Cmd::Cancel(id) => self.finish(id, FinishReason::Cancelled),
            Cmd::Shutdown => self.closing = true,
        }
    }

    /// Ends a request: frees its blocks and sends `Finished`.
    fn finish(&mut self, id: RequestId, reason: FinishReason) {
        let seq = self.sch.remove(id, &mut self.pool);
        let Some(mut l) = self.live.remove(&id) else {
            return;
        };
        if l.scheduled_at.is_none() {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        }
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        *self.finished.entry(reason).or_insert(0) += 1;
        // The counters first: a client that reads them after its last event sees its
        // request gone.
        self.publish();
        let now = Instant::now();
        let timings = Timings {
            queued: l.scheduled_at.unwrap_or(now) - l.at,
            first_token: l.first_token.map(|t| t - l.at),
            total: now - l.at,
        };
        (l.sink)(Event::Finished {
            reason,
            prompt_tokens: l.req.prompt.len(),
            generated_tokens: l.generated,
            cached_tokens: seq.map_or(0, |s| s.cached_tokens),
            timings,
        });
    }

    fn step(&mut self) {
        let lim = Limits {
            max_seqs: self.cfg.max_seqs,
            max_tokens: self.cfg.max_batch_tokens,
        };
        let plan = self.sch.schedule(&mut self.pool, lim);
        if plan.chunks.is_empty() {
            // Nothing fits (cannot happen for validated requests: each fits alone);
            // fail the head of the queue rather than spin.
            if let Some(s) = self.sch.waiting.first() {
                let id = s.id;
                if let Some(l) = self.live.get_mut(&id) {
                    (l.sink)(Event::Error(
                        "the request does not fit in the KV cache".into(),
                    ));
                }
                self.finish(id, FinishReason::Error);
            }
            return;
        }
        for &(from, to) in &plan.copies {
            self.model.copy_block(from, to);
        }
        let now = Instant::now();
        for c in &plan.chunks {
            let id = self.sch.running[c.seq].id;
            if let Some(l) = self.live.get_mut(&id) {
                if l.scheduled_at.is_none() {
                    l.scheduled_at = Some(now);
                    self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        let rows = self.fill_batch(&plan);
        // Where every row this step samples is plain greedy and no logprobs are
        // wanted, a model that computes the greedy picks itself returns those (a GPU
        // then copies back an id per row, not its logits).
        let picks_only = self.model.has_picks()
            && plan.chunks.iter().all(|c| {
                let seq = &self.sch.running[c.seq];
                self.live.get(&seq.id).is_none_or(|l| {
                    !c.all_logits
                        && (!c.sample || (l.req.logprobs.is_none() && l.sampler.is_plain_greedy()))
                })
            });
        let res = if picks_only {
            self.model.step_picks(&self.batch).map(Out::Picks)
        } else {
            self.model.step(&self.batch).map(Out::Logits)
        };
        self.stats.steps += 1;
        self.stats.step_tokens += self.batch.tokens.len() as u64;
        let out = match res {
            Ok(l) => l,
            Err(e) => {
                let ids: Vec<RequestId> = plan
                    .chunks
                    .iter()
                    .map(|c| self.sch.running[c.seq].id)
                    .collect();
                for id in ids {
                    if let Some(l) = self.live.get_mut(&id) {
                        (l.sink)(Event::Error(format!("step failed: {e}")));
                    }
                    self.finish(id, FinishReason::Error);
                }
                return;
            }
        };
        let (logits, picks) = match out {
            Out::Logits(l) => (l, None),
            Out::Picks(p) => (&[][..], Some(p)),
        };
        let vocab = self.facts.vocab;
        // Commit every chunk first (indices into `running` stay valid), then sample
        // and finish.
        for c in &plan.chunks {
            self.sch.commit(c, &mut self.pool);
        }
        // Greedy rows without penalties take the argmax of their last logits row: in
        // parallel, before the loop below (one 49,152-float scan per row was 4% of a
        // 32-stream step on one thread while the other waited).
        let greedy: Vec<Option<usize>> = plan
            .chunks
            .iter()
            .zip(&rows)
            .map(|(c, &(first, n))| {
                let seq = &self.sch.running[c.seq];
                let l = self.live.get(&seq.id)?;
                let plain = c.sample && l.req.max_tokens > 0 && l.sampler.is_plain_greedy();
                plain.then_some(first + n - 1)
            })
            .collect();
        let greedy_picks: Vec<std::sync::OnceLock<Result<u32, SamplerError>>> =
            greedy.iter().map(|_| std::sync::OnceLock::new()).collect();
        if picks.is_none() && greedy.iter().filter(|g| g.is_some()).count() > 1 {
            crate::pool::for_each(greedy.len(), &|i| {
                if let Some(r) = greedy[i] {
                    let _ = greedy_picks[i].set(argmax(&logits[r * vocab..(r + 1) * vocab]));
                }
            });
        }
        let mut done: Vec<(RequestId, FinishReason)> = Vec::new();
        for (i, (c, (first_row, n_rows))) in plan.chunks.iter().zip(rows).enumerate() {
            let seq = &mut self.sch.running[c.seq];
            let Some(l) = self.live.get_mut(&seq.id) else {
                continue;
            };
            let row = |r: usize| &logits[r * vocab..(r + 1) * vocab];
            if c.all_logits && !l.prompt_logprobs_sent {
                // Rows at positions start..start+n give the distribution of the token
                // after each; prompt logprobs are sent once the whole prompt has run.
                let k = l.req.prompt_logprobs.unwrap_or(0);
                let mut out: Vec<Option<TokenLogprob>> = Vec::new();
                if c.start == 0 {
                    out.push(None);
                }
                for i in 0..n_rows {
                    let pos = c.start + i;
                    if pos + 1 >= seq.prompt_len {
                        break;
                    }
                    let tok = seq.tokens[pos + 1];
                    out.push(token_logprob(row(first_row + i), tok, k));
                }
                l.prompt_lp.extend(out);
                if c.start + c.n >= seq.prompt_len {
                    let all = std::mem::take(&mut l.prompt_lp);
                    l.prompt_logprobs_sent = true;
                    seq.prompt_logits = false;
                    if !(l.sink)(Event::PromptLogprobs(all)) {
                        done.push((seq.id, FinishReason::Cancelled));
                        continue;
                    }
                }
            }
            if !c.sample {
                continue;
            }
            if l.req.max_tokens == 0 {
                done.push((seq.id, FinishReason::Length));
                continue;
            }
            let at = first_row + n_rows - 1;
            let picked = if let Some(p) = picks {
                // Plain greedy, no logprobs (`picks_only`).
                match p.get(at) {
                    Some(&t) if (t as usize) < vocab => Ok(t),
                    t => {
                        let e = format!("the step's greedy pick of row {at} is {t:?}");
                        (l.sink)(Event::Error(e));
                        done.push((seq.id, FinishReason::Error));
                        continue;
                    }
                }
            } else {
                match greedy_picks[i].get() {
                    Some(p) => p.clone(),
                    None => l.sampler.sample_after(row(at), &seq.tokens, seq.prompt_len),
                }
            };
            let next = match picked {
                Ok(t) => t,
                Err(e) => {
                    (l.sink)(Event::Error(format!("sampling failed: {e}")));
                    done.push((seq.id, FinishReason::Error));
                    continue;
                }
            };
            let is_eos = !l.req.ignore_eos && self.facts.eos.contains(&next);
            if is_eos || l.req.stop_token_ids.contains(&next) {
                done.push((seq.id, FinishReason::Stop));
                continue;
            }
            let logprob = match picks {
                Some(_) => None,
                None => l.req.logprobs.and_then(|k| token_logprob(row(at), next, k)),
            };
            seq.tokens.push(next);
            l.generated += 1;
            self.stats.generation_tokens += 1;
            if l.first_token.is_none() {
                l.first_token = Some(Instant::now());
            }
            if !(l.sink)(Event::Token { id: next, logprob }) {
                done.push((seq.id, FinishReason::Cancelled));
                continue;
            }
            if l.generated >= l.req.max_tokens {
                done.push((seq.id, FinishReason::Length));
            } else if seq.tokens.len() >= self.facts.context_length {
                done.push((seq.id, FinishReason::ContextLength));
            }
        }
        for c in &plan.chunks {
            // Prompt tokens count once, when the prompt first completes.
            let seq = &self.sch.running[c.seq];
            if c.start < seq.prompt_len
                && c.start + c.n >= seq.prompt_len
                && seq.cached_tokens <= c.start
            {
                self.stats.prompt_tokens += seq.prompt_len as u64;
            }
        }
        for (id, reason) in done {
            self.finish(id, reason);
        }
    }

    /// Lays out the step's rows; returns each chunk's (first logits row, rows).
    fn fill_batch(&mut self, plan: &Scheduled) -> Vec<(usize, usize)> {
        let bs = self.facts.block_size;
        let b = &mut self.batch;
        b.tokens.clear();
        b.positions.clear();
        b.slots.clear();
        b.row_seq.clear();
        b.block_tables.clear();
        b.logit_rows.clear();
        let width = plan
            .chunks
            .iter()
            .map(|c| (c.start + c.n).div_ceil(bs))
            .max()
            .unwrap_or(1)
            .max(1);
        b.table_width = width;
        let mut spans = Vec::with_capacity(plan.chunks.len());
        for (si, c) in plan.chunks.iter().enumerate() {
            let s = &self.sch.running[c.seq];
            let first_logit = b.logit_rows.len();
            for p in c.start..c.start + c.n {
                let row = b.tokens.len() as i64;
                b.tokens.push(s.tokens[p] as i64);
                b.positions.push(p as i64);
                b.slots
                    .push((s.blocks[p / bs] as usize * bs + p % bs) as i64);
                b.row_seq.push(si as i32);
                let last = p + 1 == c.start + c.n;
                if c.all_logits || (last && c.sample) {
                    b.logit_rows.push(row);
                }
            }
            for j in 0..width {
                b.block_tables
                    .push(s.blocks.get(j).copied().unwrap_or(0) as i32);
            }
            let n_logits = b.logit_rows.len() - first_logit;
            spans.push((first_logit, n_logits.max(1)));
        }
        spans
    }

    fn publish(&mut self) {
        let s = &mut self.stats;
        s.running = self.sch.running.len();
        s.waiting = self.sch.waiting.len();
        s.kv_blocks_used = self.pool.num_used();
        s.kv_blocks_cached = self.pool.num_cached_free();
        s.prefix_queries = self.pool.queries;
        s.prefix_hits = self.pool.hits;
        s.preemptions = self.sch.preemptions;
        let mut f: Vec<(FinishReason, u64)> = self.finished.iter().map(|(k, v)| (*k, *v)).collect();
        f.sort_by_key(|(k, _)| k.as_str());
        s.finished = f;
        if let Ok(mut g) = self.shared.stats.lock() {
            *g = s.clone();
        }
    }
}

/// The log-probability of `tok` in a row of logits with the row's `k` best.
fn token_logprob(row: &[f32], tok: u32, k: usize) -> Option<TokenLogprob> {
    let (logprob, top) = logprob_top(row, tok, k)?;
    Some(TokenLogprob {
        token: tok,
        logprob,
        top,
    })
}
