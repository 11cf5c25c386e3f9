//! Continuous batching: each step takes one token from every running sequence that is
//! decoding, chunks of prompts still being prefilled, and new sequences from the
//! waiting queue, under a token budget and a sequence cap. Blocks for the step's new
//! tokens are allocated here; when the pool runs out, the most recently admitted
//! running sequence is preempted (its blocks freed, its tokens kept) and recomputed
//! later — the engine never fails a request for lack of KV memory once it fits alone.

use super::blocks::BlockPool;
use super::RequestId;

/// A sequence's KV state as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Seq {
    /// The request.
    pub id: RequestId,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    /// Tokens of the prompt.
    pub prompt_len: usize,
    /// Tokens whose K/V are in the pool (a prefix of `tokens`).
    pub computed: usize,
    /// Its blocks, in position order.
    pub blocks: Vec<u32>,
    /// The chain hash of each full block registered so far (a prefix of `blocks`).
    pub hashes: Vec<u64>,
    /// Larger first among waiting sequences.
    pub priority: i32,
    /// Arrival order (first come, first served among equal priorities).
    pub arrival: u64,
    /// May take blocks from the prefix cache (false when prompt logprobs are wanted).
    pub use_prefix: bool,
    /// Wants logits at every prompt position (prompt logprobs) until they are sent.
    pub prompt_logits: bool,
    /// Prompt tokens served from the prefix cache (first admission).
    pub cached_tokens: usize,
    /// Has been scheduled at least once.
    pub started: bool,
}

impl Seq {
    /// A new waiting sequence.
    pub fn new(id: RequestId, prompt: Vec<u32>, priority: i32, arrival: u64) -> Seq {
        Seq {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            computed: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
            priority,
            arrival,
            use_prefix: true,
            prompt_logits: false,
            cached_tokens: 0,
            started: false,
        }
    }
}

/// One sequence's part of a step: `n` rows at positions `start..start + n`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Index into the running list (after this step's admissions and preemptions).
    pub seq: usize,
    /// First position.
    pub start: usize,
    /// Rows.
    pub n: usize,
    /// The last row completes the sequence's tokens: its logits are sampled.
    pub sample: bool,
    /// Every row's logits are wanted (prompt logprobs).
    pub all_logits: bool,
}

/// What one step runs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Scheduled {
    /// The chunks, in row order.
    pub chunks: Vec<Chunk>,
    /// Block copies to make before the step (copy-on-write): (from, to).
    pub copies: Vec<(u32, u32)>,
    /// Requests preempted this step (moved back to waiting).
    pub preempted: Vec<RequestId>,
}

impl Scheduled {
    /// Rows in the step.
    pub fn rows(&self) -> usize {
        self.chunks.iter().map(|c| c.n).sum()
    }
}

/// The scheduler's queues.
#[derive(Debug, Default)]
pub struct Scheduler {
    /// Sequences being stepped, in admission order.
    pub running: Vec<Seq>,
    /// Sequences waiting, in service order.
    pub waiting: Vec<Seq>,
    /// Preemptions so far.
    pub preemptions: u64,
}

/// Limits of one step.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most running sequences.
    pub max_seqs: usize,
    /// Most rows per step.
    pub max_tokens: usize,
}

impl Scheduler {
    /// Queues a sequence by priority, then arrival.
    pub fn add(&mut self, s: Seq) {
        let at = self
            .waiting
            .iter()
            .position(|w| {
                (w.priority, std::cmp::Reverse(w.arrival))
                    < (s.priority, std::cmp::Reverse(s.arrival))
            })
            .unwrap_or(self.waiting.len());
        self.waiting.insert(at, s);
    }

    /// Removes a sequence wherever it is, releasing its blocks.
    pub fn remove(&mut self, id: RequestId, pool: &mut BlockPool) -> Option<Seq> {
        let s = if let Some(i) = self.running.iter().position(|s| s.id == id) {
            self.running.remove(i)
        } else {
            let i = self.waiting.iter().position(|s| s.id == id)?;
            self.waiting.remove(i)
        };
        for &b in &s.blocks {
            pool.release(b);
        }
        Some(s)
    }

    /// Frees a sequence's blocks and puts it back in the queue to be recomputed.
    fn preempt(&mut self, i: usize, pool: &mut BlockPool) -> RequestId {
        let mut s = self.running.remove(i);
        for &b in &s.blocks {
            pool.release(b);
        }
        s.blocks.clear();
        s.hashes.clear();
        s.computed = 0;
        self.preemptions += 1;
        let id = s.id;
        self.add(s);
        id
    }

    /// Takes cached blocks for the full blocks of `s`'s tokens (never its last token:
    /// at least one row must run to produce logits).
    fn take_prefix(s: &mut Seq, pool: &mut BlockPool) {
        let bs = pool.block_size();
        let full = (s.tokens.len() - 1) / bs;
        let mut parent = 0u64;
        for i in 0..full {
            match pool.lookup(parent, &s.tokens[i * bs..(i + 1) * bs]) {
                Some((b, h)) => {
                    s.blocks.push(b);
                    s.hashes.push(h);
                    parent = h;
                }
                None => break,
            }
        }
        s.computed = s.blocks.len() * bs;
    }

    /// Makes sure `s` has blocks for positions up to `end` and that the block the
    /// first new row writes into is its own; false (with nothing changed but blocks
    /// already added) when the pool is out of blocks.
    fn reserve(
        s: &mut Seq,
        end: usize,
        pool: &mut BlockPool,
        copies: &mut Vec<(u32, u32)>,
    ) -> bool {
        let bs = pool.block_size();
        if !s.computed.is_multiple_of(bs) {
            let bi = s.computed / bs;
            if let Some(&b) = s.blocks.get(bi) {
                match pool.writable(b) {
                    Some((nb, copy)) => {
                        s.blocks[bi] = nb;
                        copies.extend(copy);
                    }
                    None => return false,
                }
            }
        }
        while s.blocks.len() * bs < end {
            match pool.allocate() {
                Some(b) => s.blocks.push(b),
                None => return false,
            }
        }
        true
    }

    /// Plans the next step.
    pub fn schedule(&mut self, pool: &mut BlockPool, lim: Limits) -> Scheduled {
        let mut out = Scheduled::default();
        let mut budget = lim.max_tokens;
        // Running sequences first, oldest first; a sequence that cannot get blocks
        // preempts the newest running one (possibly itself).
        let mut i = 0;
        while i < self.running.len() {
            if budget == 0 {
                break;
            }
            let remaining = self.running[i].tokens.len() - self.running[i].computed;
            let n = remaining.min(budget);
            if n == 0 {
                i += 1;
                continue;
            }
            let end = self.running[i].computed + n;
            let mut ok = Self::reserve(&mut self.running[i], end, pool, &mut out.copies);
            while !ok {
                let victim = self.running.len() - 1;
                out.preempted.push(self.preempt(victim, pool));
                // Chunks already planned for the victim are dropped.
                out.chunks.retain(|c| c.seq != victim);
                if victim == i {
                    break;
                }
                ok = Self::reserve(&mut self.running[i], end, pool, &mut out.copies);
            }
            if !ok {
                break;
            }
            let s = &mut self.running[i];
            out.chunks.push(Chunk {
                seq: i,
                start: s.computed,
                n,
                sample: end == s.tokens.len(),
                all_logits: s.prompt_logits,
            });
            budget -= n;
            i += 1;
        }
        // Then new sequences while they fit without preempting anyone. One whose next
        // full prompt block a running sequence is computing right now (the other choices
        // of an `n > 1` request, identical prompts arriving together) waits a step and
        // then takes those blocks from the prefix cache instead of computing them again.
        let mut deferred = Vec::new();
        while budget > 0 && self.running.len() < lim.max_seqs && !self.waiting.is_empty() {
            let mut s = self.waiting.remove(0);
            if s.computed == 0 && s.blocks.is_empty() && s.use_prefix {
                Self::take_prefix(&mut s, pool);
                if !s.started {
                    s.cached_tokens = s.computed;
                }
                if self.computing_next_block_of(&s, pool.block_size()) {
                    for &b in &s.blocks {
                        pool.release(b);
                    }
                    s.blocks.clear();
                    s.hashes.clear();
                    s.computed = 0;
                    if !s.started {
                        s.cached_tokens = 0;
                    }
                    deferred.push(s);
                    continue;
                }
            }
            let n = (s.tokens.len() - s.computed).min(budget);
            let end = s.computed + n;
            let mut copies = Vec::new();
            if !Self::reserve(&mut s, end, pool, &mut copies) {
                for &b in &s.blocks {
                    pool.release(b);
                }
                s.blocks.clear();
                s.hashes.clear();
                s.computed = 0;
                self.waiting.insert(0, s);
                break;
            }
            out.copies.extend(copies);
            s.started = true;
            out.chunks.push(Chunk {
                seq: self.running.len(),
                start: s.computed,
                n,
                sample: end == s.tokens.len(),
                all_logits: s.prompt_logits,
            });
            budget -= n;
            self.running.push(s);
        }
        for s in deferred.into_iter().rev() {
            self.waiting.insert(0, s);
        }
        out
    }

    /// Whether a running sequence that shares `s`'s next full prompt block (the one
    /// after what `s` took from the prefix cache) has not committed that block yet.
    fn computing_next_block_of(&self, s: &Seq, bs: usize) -> bool {
        let (from, to) = (s.computed, s.computed + bs);
        // `take_prefix` never takes the block holding the last token.
        if s.tokens.len() <= to {
            return false;
        }
        self.running.iter().any(|r| {
            r.use_prefix
                && r.computed < to
                && r.tokens.len() > to
                && r.tokens[from..to] == s.tokens[from..to]
        })
    }

    /// After a step: the chunk's rows are computed; full blocks enter the prefix cache.
    pub fn commit(&mut self, c: &Chunk, pool: &mut BlockPool) {
        let bs = pool.block_size();
        let s = &mut self.running[c.seq];
        s.computed = c.start + c.n;
        while s.hashes.len() < s.computed / bs {
            let i = s.hashes.len();
            let parent = if i == 0 { 0 } else { s.hashes[i - 1] };
            let h = pool.register(s.blocks[i], parent, &s.tokens[i * bs..(i + 1) * bs]);
            s.hashes.push(h);
        }
    }

    /// How many times the scheduler's sequences hold each block (for invariant checks).
    pub fn held(&self, total: usize) -> Vec<u32> {
        let mut held = vec![0u32; total];
        for s in self.running.iter().chain(&self.waiting) {
            for &b in &s.blocks {
                held[b as usize] += 1;
            }
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Submit { len: usize, prefix: bool, prio: i32 },
        Step,
        Cancel(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1usize..40, any::<bool>(), 0i32..2).prop_map(|(len, prefix, prio)| Op::Submit {
                len,
                prefix,
                prio
            }),
            Just(Op::Step),
            Just(Op::Step),
            Just(Op::Step),
            (0usize..8).prop_map(Op::Cancel),
        ]
    }

    /// Runs random submit / step / cancel sequences against a small pool; every step the
    /// block invariants hold, sequences stay within their limits, and every sequence's
    /// blocks hold exactly its tokens (tracked by a shadow copy of each block's content).
    fn run_ops(ops: &[Op], blocks: usize, bs: usize, max_tokens: usize) -> Result<(), String> {
        let mut pool = BlockPool::new(blocks, bs);
        let mut sch = Scheduler::default();
        // What each block holds: token per slot (None = never written).
        let mut content: Vec<Vec<Option<u32>>> = vec![vec![None; bs]; blocks];
        let mut next_id = 0u64;
        let lim = Limits {
            max_seqs: 4,
            max_tokens,
        };
        for op in ops {
            match op {
                Op::Submit { len, prefix, prio } => {
                    // Prompts share a prefix of token 7s when `prefix`.
                    let prompt: Vec<u32> = (0..*len)
                        .map(|i| {
                            if *prefix && i < 20 {
                                7
                            } else {
                                (next_id as u32) * 100 + i as u32
                            }
                        })
                        .collect();
                    if len.div_ceil(bs) + 1 > blocks {
                        continue;
                    }
                    sch.add(Seq::new(next_id, prompt, *prio, next_id));
                    next_id += 1;
                }
                Op::Cancel(k) => {
                    let ids: Vec<RequestId> = sch
                        .running
                        .iter()
                        .chain(&sch.waiting)
                        .map(|s| s.id)
                        .collect();
                    if let Some(&id) = ids.get(*k) {
                        sch.remove(id, &mut pool);
                    }
                }
                Op::Step => {
                    let st = sch.schedule(&mut pool, lim);
                    if st.rows() > max_tokens || sch.running.len() > lim.max_seqs {
                        return Err("limits exceeded".into());
                    }
                    for &(a, b) in &st.copies {
                        content[b as usize] = content[a as usize].clone();
                    }
                    // The step writes each row's token into its slot.
                    for c in &st.chunks {
                        let s = &sch.running[c.seq];
                        for p in c.start..c.start + c.n {
                            let b = s.blocks[p / bs] as usize;
                            if pool.refs(b as u32) != 1 {
                                return Err(format!("write into shared block {b}"));
                            }
                            content[b][p % bs] = Some(s.tokens[p]);
                        }
                    }
                    for c in st.chunks.clone() {
                        sch.commit(&c, &mut pool);
                        let s = &mut sch.running[c.seq];
                        if c.sample {
                            // "Generate" one token; finish at 3 generated.
                            let t = 1000 + s.tokens.len() as u32;
                            s.tokens.push(t);
                        }
                    }
                    let done: Vec<RequestId> = sch
                        .running
                        .iter()
                        .filter(|s| {
                            s.tokens.len() >= s.prompt_len + 3 && s.computed + 1 == s.tokens.len()
                        })
                        .map(|s| s.id)
                        .collect();
                    for id in done {
                        sch.remove(id, &mut pool);
                    }
                }
            }
            pool.check(&sch.held(blocks))?;
            for s in sch.running.iter().chain(&sch.waiting) {
                for p in 0..s.computed {
                    let got = content[s.blocks[p / bs] as usize][p % bs];
                    if got != Some(s.tokens[p]) {
                        return Err(format!(
                            "seq {} position {p}: block holds {got:?}, the sequence has {}",
                            s.id, s.tokens[p]
                        ));
                    }
                }
            }
        }
        // Cancel everything: every block comes back.
        let ids: Vec<RequestId> = sch
            .running
            .iter()
            .chain(&sch.waiting)
            .map(|s| s.id)
            .collect();
        for id in ids {
            sch.remove(id, &mut pool);
        }
        if pool.num_used() != 0 {
            return Err(format!("{} blocks leaked", pool.num_used()));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn no_leak_no_double_free_and_blocks_hold_their_tokens(
            ops in proptest::collection::vec(op(), 1..120),
            blocks in 6usize..24,
            max_tokens in 4usize..40,
        ) {
            run_ops(&ops, blocks, 4, max_tokens).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn a_second_identical_prompt_reuses_the_first_ones_blocks() {
        let mut pool = BlockPool::new(16, 4);
        let mut sch = Scheduler::default();
        let lim = Limits {
            max_seqs: 4,
            max_tokens: 64,
        };
        let prompt: Vec<u32> = (0..10).collect();
        sch.add(Seq::new(0, prompt.clone(), 0, 0));
        let st = sch.schedule(&mut pool, lim);
        for c in st.chunks.clone() {
            sch.commit(&c, &mut pool);
        }
        sch.add(Seq::new(1, prompt, 0, 1));
        let st = sch.schedule(&mut pool, lim);
        // Two full blocks (8 tokens) come from the cache: 2 rows run.
        let c = st
            .chunks
            .iter()
            .find(|c| sch.running[c.seq].id == 1)
            .unwrap();
        assert_eq!((c.start, c.n), (8, 2));
        assert_eq!(sch.running[c.seq].cached_tokens, 8);
        // The first prompt looked up its first block (a miss), the second both (hits).
        assert_eq!((pool.queries, pool.hits), (3, 2));
    }

    #[test]
    fn identical_prompts_arriving_together_compute_their_blocks_once() {
        // The choices of an `n = 3` request: the first prefills, the others wait one
        // step and take its two full blocks from the cache.
        let mut pool = BlockPool::new(16, 4);
        let mut sch = Scheduler::default();
        let lim = Limits {
            max_seqs: 4,
            max_tokens: 64,
        };
        let prompt: Vec<u32> = (0..10).collect();
        for id in 0..3 {
            sch.add(Seq::new(id, prompt.clone(), 0, id));
        }
        let st = sch.schedule(&mut pool, lim);
        assert_eq!(st.chunks.len(), 1, "only the first prefills");
        assert_eq!((st.chunks[0].start, st.chunks[0].n), (0, 10));
        for c in st.chunks.clone() {
            sch.commit(&c, &mut pool);
        }
        let st = sch.schedule(&mut pool, lim);
        for id in [1, 2] {
            let c = st
                .chunks
                .iter()
                .find(|c| sch.running[c.seq].id == id)
                .unwrap();
            assert_eq!((c.start, c.n), (8, 2), "choice {id}");
            assert_eq!(sch.running[c.seq].cached_tokens, 8);
        }
        assert!(sch.waiting.is_empty());
    }

    #[test]
    fn out_of_blocks_preempts_the_newest_and_it_resumes() {
        // 4 blocks of 4: two sequences of 7 tokens fit (2 blocks each) until they grow.
        let mut pool = BlockPool::new(4, 4);
        let mut sch = Scheduler::default();
        let lim = Limits {
            max_seqs: 4,
            max_tokens: 64,
        };
        sch.add(Seq::new(0, (0..7).collect(), 0, 0));
        sch.add(Seq::new(1, (100..107).collect(), 0, 1));
        let mut preempted = 0;
        for _ in 0..6 {
            let st = sch.schedule(&mut pool, lim);
            preempted += st.preempted.len();
            for c in st.chunks.clone() {
                sch.commit(&c, &mut pool);
                if c.sample {
                    let s = &mut sch.running[c.seq];
                    s.tokens.push(9);
                }
            }
            pool.check(&sch.held(4)).unwrap();
        }
        assert!(preempted >= 1);
        assert_eq!(sch.preemptions as usize, preempted);
    }
}
