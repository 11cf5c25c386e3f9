//! The thread pool behind generated parallel loops: a few persistent std threads
//! that `llmc_parallel_for` hands chunks of an iteration range to. The calling thread
//! works too, and returns when every chunk is done. A parallel loop reached from
//! inside a body, or while another thread is using the pool, runs inline, so nested
//! and concurrent calls are always safe. The caller never waits for a worker that has
//! not joined: on a busy machine it simply does the whole range itself. Each thread
//! owns a contiguous region of the range and claims it front to back (its reads stay
//! one stream); a thread with nothing left takes the back half of another's region.
//! `LLMC_NUM_THREADS` sets the thread count (default: the machine's available
//! parallelism).

use crate::abi::BodyFn;
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

#[derive(Clone, Copy)]
struct Job {
    body: BodyFn,
    ctx: usize,
    n: i64,
    /// The smallest claim.
    chunk: i64,
    /// A claim takes the unclaimed iterations divided by this (or `chunk`).
    div: i64,
    /// Whether the range was split into one region per thread ([`Region`]); else one
    /// cursor (`Shared::next`) serves every claim.
    split: bool,
}

/// One thread's share of a split job's range: the unclaimed `[lo, hi)`, `lo` in the
/// low 32 bits, on a cache line of its own. Its owner claims from the front, so its
/// claims follow each other in memory and its weight stream never restarts; a thread
/// with nothing left takes the back half of another's. With one cursor for all, each
/// claim started a new stream: a stream's first kilobytes come slowly, and on a Zen 4
/// VM two threads read a 96 KB range in 4.9 us where one read it in 4.0.
#[repr(align(128))]
struct Region(AtomicU64);

fn pack(lo: i64, hi: i64) -> u64 {
    lo as u64 | (hi as u64) << 32
}

fn unpack(v: u64) -> (i64, i64) {
    ((v & 0xffff_ffff) as i64, (v >> 32) as i64)
}

/// The owner's claim: the front `1/div` of what its region has left (at least
/// `job.chunk`).
fn claim_front(r: &Region, job: &Job) -> Option<(i64, i64)> {
    take(r, |lo, hi| {
        let end = (lo + ((hi - lo) / job.div).max(job.chunk)).min(hi);
        ((end, hi), (lo, end))
    })
}

/// Another thread's claim: the back half of what the region has left.
fn steal_back(r: &Region, job: &Job) -> Option<(i64, i64)> {
    take(r, |lo, hi| {
        let start = hi - ((hi - lo + 1) / 2).max(job.chunk).min(hi - lo);
        ((lo, start), (start, hi))
    })
}

/// Cuts what region `r` has left, `[lo, hi)`, into (what stays, what is claimed) with
/// `cut`, atomically; `None` once the region is empty.
fn take(r: &Region, cut: impl Fn(i64, i64) -> ((i64, i64), (i64, i64))) -> Option<(i64, i64)> {
    let mut cur = r.0.load(Ordering::Relaxed);
    loop {
        let (lo, hi) = unpack(cur);
        if lo >= hi {
            return None;
        }
        let ((a, b), claim) = cut(lo, hi);
        match r
            .0
            .compare_exchange_weak(cur, pack(a, b), Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => return Some(claim),
            Err(now) => cur = now,
        }
    }
}

/// Claims the next range of a job that is not split ([`Region`]): a share of what is left, never less than
/// `job.chunk` (guided scheduling). Large claims first keep the claims few; the small
/// last ones keep threads from idling while one finishes a long last chunk (with
/// equal chunks of an eighth, the caller waited at the end of each loop for 5% of a
/// 32-stream serving step).
fn claim(shared: &Shared, job: &Job) -> Option<(i64, i64)> {
    let mut cur = shared.next.load(Ordering::Relaxed);
    loop {
        if cur >= job.n {
            return None;
        }
        let end = (cur + ((job.n - cur) / job.div).max(job.chunk)).min(job.n);
        match shared
            .next
            .compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => return Some((cur, end)),
            Err(now) => cur = now,
        }
    }
}

struct State {
    generation: u64,
    /// The open job; `None` once its caller has finished the range.
    job: Option<Job>,
    /// Workers inside the open job's `drain`.
    joined: usize,
    /// Region numbers handed to the open job's workers so far (the caller's is 0).
    ids: usize,
    /// Workers asleep on `work` (a notify is a system call: skipped when none).
    sleeping: usize,
    /// The caller is asleep on `done`.
    waiting: bool,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
    next: AtomicI64,
    /// One per thread (workers + caller), for split jobs.
    regions: Vec<Region>,
    /// Mirrors `State::generation`, so idle workers can spin without the lock.
    published: AtomicU64,
    /// Workers still inside a job's `drain`, so the caller can spin-wait for them
    /// without the lock (a condvar sleep costs a scheduler wake-up per parallel loop).
    inside: AtomicUsize,
}

struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    /// Held by the thread dispatching a job.
    dispatch: Mutex<()>,
}

thread_local! {
    static IN_BODY: Cell<bool> = const { Cell::new(false) };
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// A thread count set by the command line before the pool starts (overrides
/// `LLMC_NUM_THREADS`).
static REQUESTED: OnceLock<usize> = OnceLock::new();

/// Asks for `n` threads (workers + caller); only effective before the first parallel
/// loop starts the pool. Returns whether the pool will use it.
pub fn set_num_threads(n: usize) -> bool {
    POOL.get().is_none() && REQUESTED.set(n.max(1)).is_ok()
}

/// How long an idle worker polls for the next job before blocking (decode runs
/// hundreds of small parallel loops per token; a sleeping worker takes a scheduler
/// wake-up to rejoin).
const SPIN: u32 = 20_000;

/// The smallest claim is the range divided by this and the thread count.
const GUIDED_TAIL: i64 = 16;

/// The number of threads parallel loops use (workers + the caller).
pub fn num_threads() -> usize {
    pool().workers + 1
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let n = REQUESTED
            .get()
            .copied()
            .or_else(|| {
                std::env::var("LLMC_NUM_THREADS")
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
            })
            .filter(|&v| v > 0)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            });
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                joined: 0,
                ids: 0,
                sleeping: 0,
                waiting: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            next: AtomicI64::new(0),
            regions: (0..n.max(1)).map(|_| Region(AtomicU64::new(0))).collect(),
            published: AtomicU64::new(0),
            inside: AtomicUsize::new(0),
        });
        let mut workers = 0;
        for i in 1..n {
            let s = shared.clone();
            let ok = std::thread::Builder::new()
                .name(format!("llmc-worker-{i}"))
                .spawn(move || worker(s))
                .is_ok();
            if ok {
                workers += 1;
            }
        }
        Pool {
            shared,
            workers,
            dispatch: Mutex::new(()),
        }
    })
}

/// Claims and runs chunks until the range is exhausted; `id` is the thread's region.
fn drain(shared: &Shared, job: Job, id: usize) {
    IN_BODY.with(|f| f.set(true));
    let run = |(start, end): (i64, i64)| {
        // SAFETY: `body` and `ctx` come from generated code that stays blocked in
        // `llmc_parallel_for` until every worker that joined the job has left it.
        unsafe { (job.body)(job.ctx as *mut u8, start, end) };
    };
    if job.split {
        let rs = &shared.regions;
        let own = &rs[id % rs.len()];
        'work: loop {
            while let Some(c) = claim_front(own, &job) {
                run(c);
            }
            for k in 1..rs.len() {
                if let Some(c) = steal_back(&rs[(id + k) % rs.len()], &job) {
                    run(c);
                    continue 'work;
                }
            }
            break;
        }
    } else {
        while let Some(c) = claim(shared, &job) {
            run(c);
        }
    }
    IN_BODY.with(|f| f.set(false));
}

fn worker(shared: Arc<Shared>) {
    let mut seen = 0u64;
    loop {
        // Poll briefly, then block until a new generation is published.
        let mut spins = 0;
        while shared.published.load(Ordering::Acquire) == seen && spins < SPIN {
            std::hint::spin_loop();
            spins += 1;
        }
        let job = {
            let mut st = lock(&shared.state);
            while st.generation == seen {
                st.sleeping += 1;
                st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
                st.sleeping -= 1;
            }
            seen = st.generation;
            // Join only a job that is still open; its caller waits for us.
            let job = st.job;
            if job.is_some() {
                st.joined += 1;
                st.ids += 1;
                shared.inside.fetch_add(1, Ordering::AcqRel);
            }
            job.map(|j| (j, st.ids))
        };
        if let Some((job, id)) = job {
            drain(&shared, job, id);
            shared.inside.fetch_sub(1, Ordering::AcqRel);
            let mut st = lock(&shared.state);
            st.joined -= 1;
            if st.joined == 0 && st.waiting {
                shared.done.notify_all();
            }
        }
    }
}

/// Runs `body` over `0..n` on the pool.
///
/// # Safety
/// `body` must be safe to call concurrently on disjoint ranges with `ctx`.
pub unsafe fn parallel_for(body: BodyFn, ctx: *mut u8, n: i64) {
    if n <= 0 {
        return;
    }
    let inline = || unsafe { body(ctx, 0, n) };
    if n == 1 || IN_BODY.with(|f| f.get()) {
        return inline();
    }
    let p = pool();
    if p.workers == 0 {
        return inline();
    }
    let Ok(_guard) = p.dispatch.try_lock() else {
        return inline();
    };
    let threads = (p.workers + 1) as i64;
    let split = n <= u32::MAX as i64 && p.shared.regions.len() as i64 == threads;
    let job = Job {
        body,
        ctx: ctx as usize,
        n,
        chunk: (n / (threads * GUIDED_TAIL)).max(1),
        // Split: the owner takes a quarter of what its region has left a claim.
        div: if split { 4 } else { threads * 2 },
        split,
    };
    if split {
        for (i, r) in p.shared.regions.iter().enumerate() {
            let i = i as i64;
            r.0.store(
                pack(n * i / threads, n * (i + 1) / threads),
                Ordering::Relaxed,
            );
        }
    } else {
        p.shared.next.store(0, Ordering::Relaxed);
    }
    let wake = {
        let mut st = lock(&p.shared.state);
        st.ids = 0;
        st.job = Some(job);
        st.generation += 1;
        p.shared.published.store(st.generation, Ordering::Release);
        st.sleeping > 0
    };
    if wake {
        p.shared.work.notify_all();
    }
    drain(&p.shared, job, 0);
    // The range is done once we leave `drain` and no joined worker is still in it;
    // workers that wake later find the job closed and touch nothing.
    let mut st = lock(&p.shared.state);
    st.job = None;
    if st.joined > 0 {
        // Joined workers finish about when we do: spin briefly before sleeping.
        drop(st);
        let mut spins = 0;
        while p.shared.inside.load(Ordering::Acquire) > 0 && spins < SPIN {
            std::hint::spin_loop();
            spins += 1;
        }
        st = lock(&p.shared.state);
    }
    while st.joined > 0 {
        st.waiting = true;
        st = p.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
        st.waiting = false;
    }
}

/// Calls `f(i)` for every `i` in `0..n` on the pool (the caller's thread included),
/// each exactly once, in no particular order. `f` must not panic (a panic cannot
/// unwind out of the pool's `extern "C"` body: it aborts).
pub fn for_each(n: usize, f: &(dyn Fn(usize) + Sync)) {
    unsafe extern "C" fn body(ctx: *mut u8, start: i64, end: i64) {
        // SAFETY: `ctx` is the `&&dyn Fn` below, alive until `parallel_for` returns.
        let f = unsafe { &*(ctx as *const &(dyn Fn(usize) + Sync)) };
        for i in start..end {
            f(i as usize);
        }
    }
    let mut ctx: &(dyn Fn(usize) + Sync) = f;
    // SAFETY: `f` is `Sync`, so calling it from several threads on disjoint indices is
    // sound; `ctx` outlives the call.
    unsafe { parallel_for(body, &mut ctx as *mut _ as *mut u8, n as i64) }
}

/// The entry generated code calls (see [`crate::abi::PARALLEL_FOR_SYMBOL`]).
///
/// # Safety
/// As [`parallel_for`].
#[no_mangle]
pub unsafe extern "C" fn llmc_parallel_for(body: BodyFn, ctx: *mut u8, n: i64) {
    parallel_for(body, ctx, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn add_range(ctx: *mut u8, start: i64, end: i64) {
        let (sum, hits) = &*(ctx as *const (AtomicU64, Vec<AtomicU64>));
        for i in start..end {
            sum.fetch_add(i as u64, Ordering::Relaxed);
            hits[i as usize].fetch_add(1, Ordering::Relaxed);
            // Nested loops run inline.
            parallel_for(noop, std::ptr::null_mut(), 3);
        }
    }

    unsafe extern "C" fn noop(_: *mut u8, _: i64, _: i64) {}

    #[test]
    fn for_each_visits_every_index_once() {
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        for_each(hits.len(), &|i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        for_each(0, &|_| panic!("no index in 0..0"));
    }

    #[test]
    fn every_index_runs_exactly_once() {
        for n in [0i64, 1, 2, 7, 1000, 12345] {
            let ctx: (AtomicU64, Vec<AtomicU64>) = (
                AtomicU64::new(0),
                (0..n).map(|_| AtomicU64::new(0)).collect(),
            );
            unsafe { parallel_for(add_range, &ctx as *const _ as *mut u8, n) };
            let want = (n.max(0) as u64) * (n.max(1) as u64 - 1) / 2;
            assert_eq!(ctx.0.load(Ordering::Relaxed), if n > 0 { want } else { 0 });
            assert!(ctx.1.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    unsafe extern "C" fn slow_front(ctx: *mut u8, start: i64, end: i64) {
        let hits = &*(ctx as *const Vec<AtomicU64>);
        for i in start..end {
            // The first region's iterations are slow: the other threads run out of
            // their own and take the back halves of it.
            if (i as usize) < hits.len() / 4 {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
            hits[i as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn uneven_regions_are_taken_over_and_every_index_runs_once() {
        for n in [3usize, 64, 401] {
            let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
            unsafe { parallel_for(slow_front, &hits as *const _ as *mut u8, n as i64) };
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n {n}");
        }
    }

    #[test]
    fn concurrent_callers_are_safe() {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..50 {
                        let ctx: (AtomicU64, Vec<AtomicU64>) = (
                            AtomicU64::new(0),
                            (0..100).map(|_| AtomicU64::new(0)).collect(),
                        );
                        unsafe { parallel_for(add_range, &ctx as *const _ as *mut u8, 100) };
                        assert_eq!(ctx.0.load(Ordering::Relaxed), 4950);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
