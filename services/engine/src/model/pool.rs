//! The engine's worker threads: a fixed set that spins briefly between jobs.
//!
//! A forward pass runs a few hundred short parallel steps per token (each matrix product takes
//! tens of microseconds on a small model). Workers that sleep between them pay a futex wake and
//! a reschedule on every step, which on a 2-core board costs as much as the step itself, so,
//! like ggml's thread pool, the workers spin on the job counter for a while after each job and
//! only park when none comes ([`SPIN`]); an idle engine sleeps.
//!
//! [`Pool::run`] hands a borrowed closure to the workers without `'static`: it erases the
//! closure's lifetime, and that is sound because `run` does not return (nor unwind) before every
//! worker has finished with it. This is the only engine module besides `ggml_math` that allows
//! `unsafe`, for that one pointer.
#![allow(unsafe_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a worker keeps polling for the next job before it parks.
const SPIN: Duration = Duration::from_micros(300);

/// A job: called once on every thread with that thread's index (0 is the caller).
type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped for each job; workers run a job when they see a new value.
    generation: AtomicU64,
    /// The current job, lifetime erased (see the module doc). Only read by a worker between
    /// seeing a new `generation` and decrementing `pending`.
    job: Mutex<Option<Job<'static>>>,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    /// Whether a worker's call of the current job panicked.
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Parked workers wait here for a new generation or `stop`.
    wake: Condvar,
    parked: Mutex<usize>,
}

/// `threads - 1` workers plus the calling thread.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads())
            .finish()
    }
}

impl Pool {
    /// A pool that runs jobs on `threads` threads (the caller and `threads - 1` workers named
    /// `hearth-matmul-N`). Fails only if the OS refuses a thread.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: Mutex::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
            parked: Mutex::new(0),
        });
        let mut workers = Vec::new();
        for index in 1..threads.max(1) {
            let shared = Arc::clone(&shared);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("hearth-matmul-{}", index - 1))
                    .spawn(move || worker(&shared, index))?,
            );
        }
        Ok(Self { shared, workers })
    }

    /// Threads a job runs on, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `job(i)` once on each thread `i` (the caller is 0) and returns when all calls
    /// have returned. A panic in any call is raised again here, after all calls have ended.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            job(0);
            return;
        }
        let shared = &*self.shared;
        // SAFETY: the erased `'static` is never relied on: `Finish` below (also on unwind)
        // waits until every worker has decremented `pending`, after which no worker touches
        // the job, and it clears the slot before `job`'s borrow ends.
        let erased: Job<'static> = unsafe { std::mem::transmute::<Job<'_>, Job<'static>>(job) };
        *lock(&shared.job) = Some(erased);
        shared.panicked.store(false, Ordering::Relaxed);
        shared.pending.store(self.workers.len(), Ordering::Relaxed);
        shared.generation.fetch_add(1, Ordering::Release);
        if *lock(&shared.parked) > 0 {
            shared.wake.notify_all();
        }
        let finish = Finish(shared);
        job(0);
        drop(finish);
        if shared.panicked.swap(false, Ordering::Relaxed) {
            panic!("an engine worker thread panicked");
        }
    }

    /// Calls `f` once on each of `items`, item `i` on thread `i % threads`, and returns when
    /// all calls have returned; a single item runs on the caller alone. This is how a job is
    /// split into per-thread shares that each own their part of the output.
    pub fn run_each<T: Send>(&self, items: Vec<T>, f: impl Fn(T) + Sync) {
        if items.len() <= 1 {
            items.into_iter().for_each(f);
            return;
        }
        let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
        let threads = self.threads();
        self.run(&|t| {
            for slot in slots.iter().skip(t).step_by(threads) {
                if let Some(item) = lock(slot).take() {
                    f(item);
                }
            }
        });
    }
}

/// Waits for the workers to finish the current job and clears it, also when the caller's
/// own call unwinds.
struct Finish<'a>(&'a Shared);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        let mut spins = 0u32;
        while self.0.pending.load(Ordering::Acquire) != 0 {
            pause(&mut spins);
        }
        *lock(&self.0.job) = None;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _parked = lock(&self.shared.parked);
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One step of a busy wait: a CPU pause, and every [`YIELD_EVERY`] steps a `sched_yield`, so
/// a waiting thread gives its core up whenever another thread (a worker that was preempted,
/// another process) can run on it.
fn pause(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if (*spins).is_multiple_of(YIELD_EVERY) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Busy-wait steps between yields.
const YIELD_EVERY: u32 = 16;

fn worker(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        // Spin for the next generation, then park.
        let started = Instant::now();
        let mut spins = 0u32;
        let generation = loop {
            let g = shared.generation.load(Ordering::Acquire);
            if g != seen {
                break g;
            }
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            if spins.is_multiple_of(64) && started.elapsed() > SPIN {
                let mut parked = lock(&shared.parked);
                *parked += 1;
                while shared.generation.load(Ordering::Acquire) == seen
                    && !shared.stop.load(Ordering::Acquire)
                {
                    parked = shared
                        .wake
                        .wait(parked)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                *parked -= 1;
                spins = 0;
                continue;
            }
            pause(&mut spins);
        };
        seen = generation;
        let job = *lock(&shared.job);
        if let Some(job) = job
            && catch_unwind(AssertUnwindSafe(|| job(index))).is_err()
        {
            shared.panicked.store(true, Ordering::Relaxed);
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_each_job_once() {
        let pool = Pool::new(3).unwrap();
        for round in 0..200 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            pool.run(&|i| {
                hits[i].fetch_add(round, Ordering::Relaxed);
            });
            for h in &hits {
                assert_eq!(h.load(Ordering::Relaxed), round);
            }
            // Let the workers park now and then, so both wake paths are taken.
            if round % 50 == 0 {
                std::thread::sleep(SPIN * 3);
            }
        }
    }

    #[test]
    fn run_each_calls_every_item_once() {
        let pool = Pool::new(3).unwrap();
        for n in [0usize, 1, 2, 3, 7] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run_each((0..n).collect(), |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "{n} items"
            );
        }
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_after_all_calls_end() {
        let pool = Pool::new(2).unwrap();
        let done = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|i| {
                if i == 1 {
                    panic!("worker");
                }
                std::thread::sleep(Duration::from_millis(5));
                done.fetch_add(1, Ordering::Relaxed);
            });
        }));
        assert!(r.is_err());
        assert_eq!(done.load(Ordering::Relaxed), 1);
        // The pool still works.
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
