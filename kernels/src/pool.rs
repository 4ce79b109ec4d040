//! A persistent pool of kernel workers. Decode issues a couple of hundred small matvecs per
//! token, so workers spin briefly between jobs and only then park; a job is one shared closure
//! that every thread (the caller included) runs, pulling row chunks from an atomic counter so a
//! preempted thread delays nobody.

use crate::error::{Error, Result};
use crate::matmul::{active, check_shapes, float_rows};
use crate::qdot::QActs;
use crate::quant::QMatrix;
use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking: long enough to cover the gaps between the
/// matvecs of one decode step, short enough not to burn a core between requests.
const SPIN: Duration = Duration::from_micros(200);

type Job = *const (dyn Fn(usize) + Sync + 'static);

struct Shared {
    /// Generation (high 32 bits), closed flag (bit 31) and number of workers that entered the
    /// job (low bits). A worker may enter only an open job; the caller closes it once every
    /// chunk is claimed and then waits only for the workers that entered, so a worker that was
    /// descheduled never delays a call.
    state: AtomicU64,
    /// The current job; written only while no worker is inside one.
    job: UnsafeCell<Option<Job>>,
    /// Workers that finished the current job.
    done: AtomicUsize,
    /// Per worker: parked (or about to park) and needs an unpark.
    sleeping: Vec<AtomicBool>,
    /// Worker thread handles, for unpark.
    threads: OnceLock<Vec<Thread>>,
    shutdown: AtomicBool,
    panicked: AtomicBool,
}

const CLOSED: u64 = 1 << 31;
const ENTERED: u64 = CLOSED - 1;

// SAFETY: `job` is written by the caller only while no worker is inside a job (all that entered
// are done) and read by a worker only after entering the open job that publishes it.
unsafe impl Sync for Shared {}
// SAFETY: see above; the raw job pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// Pointer to an output buffer shared by the workers, which write disjoint rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32, usize);
// SAFETY: each chunk writes a disjoint set of rows; the caller holds the exclusive borrow.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Persistent kernel workers with an explicit thread count; `Send + Sync`. Concurrent callers
/// are served one after another.
pub struct KernelPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    threads: usize,
    /// Serializes callers and holds the quantized activations of the running call.
    acts: Mutex<QActs>,
    /// The workers' CPU clocks, read from the caller's thread (nothing on the workers' path).
    clocks: Vec<crate::cpu::ThreadClock>,
}

impl std::fmt::Debug for KernelPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelPool")
            .field("threads", &self.threads)
            .finish()
    }
}

impl KernelPool {
    /// Starts `threads - 1` workers; the calling thread is the remaining one.
    pub fn new(threads: usize) -> Result<Self> {
        if threads == 0 {
            return Err(Error::InvalidArgument(
                "kernel pool needs at least one thread".into(),
            ));
        }
        let shared = Arc::new(Shared {
            state: AtomicU64::new(CLOSED),
            job: UnsafeCell::new(None),
            done: AtomicUsize::new(0),
            sleeping: (0..threads).map(|_| AtomicBool::new(false)).collect(),
            threads: OnceLock::new(),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        let mut handles = Vec::with_capacity(threads - 1);
        for idx in 1..threads {
            let s = Arc::clone(&shared);
            let h = std::thread::Builder::new()
                .name(format!("tandem-kernel-{idx}"))
                .spawn(move || worker(s, idx))
                .map_err(|e| Error::Pool(format!("spawning worker {idx}: {e}")))?;
            handles.push(h);
        }
        let _ = shared
            .threads
            .set(handles.iter().map(|h| h.thread().clone()).collect());
        let clocks = handles
            .iter()
            .filter_map(crate::cpu::ThreadClock::of)
            .collect();
        Ok(Self {
            shared,
            handles,
            threads,
            acts: Mutex::new(QActs::default()),
            clocks,
        })
    }

    /// Total threads, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// CPU time the pool's own workers (not its callers) have used so far, in nanoseconds;
    /// their spinning between jobs counts, as CPU spent on the callers' work.
    pub fn worker_cpu_ns(&self) -> u64 {
        self.clocks.iter().map(crate::cpu::ThreadClock::ns).sum()
    }

    /// Runs `f(task)` for every `task in 0..tasks` across the pool (the caller takes part) and
    /// returns when all are done. Tasks are handed out dynamically, one at a time.
    pub fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) -> Result<()> {
        let _serial = self.acts.lock().unwrap_or_else(|p| p.into_inner());
        let next = AtomicUsize::new(0);
        self.run(&|_| {
            loop {
                let t = next.fetch_add(1, Ordering::Relaxed);
                if t >= tasks {
                    break;
                }
                f(t);
            }
        })
    }

    /// `y = w · x` across the pool.
    pub fn matvec(&self, w: &QMatrix, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.matmul_many(&[w], x, 1, &mut [y])
    }

    /// `y = x · wᵀ` for `n` input rows across the pool (shapes as [`crate::matmul()`]).
    pub fn matmul(&self, w: &QMatrix, x: &[f32], n: usize, y: &mut [f32]) -> Result<()> {
        self.matmul_many(&[w], x, n, &mut [y])
    }

    /// Several matrices sharing one input (q/k/v, gate/up): `x` is quantized once and all
    /// products run in one pool dispatch.
    pub fn matvec_many(&self, ws: &[&QMatrix], x: &[f32], ys: &mut [&mut [f32]]) -> Result<()> {
        self.matmul_many(ws, x, 1, ys)
    }

    /// [`KernelPool::matvec_many`] for `n` input rows.
    pub fn matmul_many(
        &self,
        ws: &[&QMatrix],
        x: &[f32],
        n: usize,
        ys: &mut [&mut [f32]],
    ) -> Result<()> {
        if ws.len() != ys.len() {
            return Err(Error::InvalidShape(format!(
                "{} matrices but {} outputs",
                ws.len(),
                ys.len()
            )));
        }
        let Some(first) = ws.first() else {
            return Ok(());
        };
        for (w, y) in ws.iter().zip(ys.iter()) {
            if w.cols != first.cols {
                return Err(Error::InvalidShape(format!(
                    "matrices sharing an input need equal columns, got {} and {}",
                    first.cols, w.cols
                )));
            }
            check_shapes(w, x.len(), n, y.len())?;
        }
        let quantized = ws.iter().any(|w| w.ty.is_quantized());
        let kern = active();
        let mut acts = self.acts.lock().unwrap_or_else(|p| p.into_inner());
        if quantized {
            acts.quantize(kern.path, x, n, first.cols);
        }
        let acts = &*acts;
        let outs: Vec<OutPtr> = ys
            .iter_mut()
            .map(|y| OutPtr(y.as_mut_ptr(), y.len()))
            .collect();

        // Row chunks over all matrices; multiples of 8 keep matmul tiles and interleaved groups
        // whole.
        let parts = self.threads * if n == 1 { 16 } else { 8 };
        let mut chunks: Vec<(usize, usize, usize)> = Vec::new();
        for (mi, w) in ws.iter().enumerate() {
            let min = if n == 1 { 16 } else { 4 };
            let step = (w.rows.div_ceil(parts)).max(min).div_ceil(8) * 8;
            let mut r = 0;
            while r < w.rows {
                let e = (r + step).min(w.rows);
                chunks.push((mi, r, e));
                r = e;
            }
        }
        let next = AtomicUsize::new(0);
        let job = |_: usize| {
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(mi, r0, r1)) = chunks.get(c) else {
                    break;
                };
                let w = ws[mi];
                let out = outs[mi];
                if !w.ty.is_quantized() {
                    float_rows(w, x, n, r0, r1, out.0);
                } else {
                    // SAFETY: chunks are disjoint row ranges; each writes only its rows of every
                    // token of an output of n × rows floats.
                    unsafe { kern.rows(w, acts, r0, r1, out.0) };
                }
                debug_assert!(out.1 == n * w.rows);
            }
        };
        if chunks.len() == 1 {
            job(0);
            return Ok(());
        }
        self.run(&job)
    }

    /// Runs `f(thread_index)` on the caller (index 0) and on every worker that wakes up in
    /// time. `f` must be a work-stealing loop: any subset of threads completes the work. The
    /// caller must hold `self.acts` (which serializes jobs).
    fn run(&self, f: &(dyn Fn(usize) + Sync)) -> Result<()> {
        let s = &*self.shared;
        if self.threads == 1 {
            f(0);
            return Ok(());
        }
        let job: *const (dyn Fn(usize) + Sync + '_) = f;
        // SAFETY: the pointer outlives every use: workers enter only until the job is closed
        // below, and we wait for all that entered.
        let job: Job = unsafe { std::mem::transmute(job) };
        // SAFETY: the previous job is closed and every worker that entered it is done.
        unsafe { *s.job.get() = Some(job) };
        s.done.store(0, Ordering::Relaxed);
        let generation = (s.state.load(Ordering::Relaxed) >> 32).wrapping_add(1) & 0xFFFF_FFFF;
        s.state.store(generation << 32, Ordering::SeqCst);
        if let Some(threads) = s.threads.get() {
            for (i, t) in threads.iter().enumerate() {
                if s.sleeping[i + 1].load(Ordering::SeqCst) {
                    t.unpark();
                }
            }
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        let entered = (s.state.fetch_or(CLOSED, Ordering::AcqRel) & ENTERED) as usize;
        let start = Instant::now();
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < entered {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        // SAFETY: every worker that entered is done; no other can enter a closed job.
        unsafe { *s.job.get() = None };
        if mine.is_err() || s.panicked.swap(false, Ordering::AcqRel) {
            return Err(Error::Pool("a kernel task panicked".into()));
        }
        Ok(())
    }
}

impl Drop for KernelPool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.shutdown.store(true, Ordering::SeqCst);
        let generation = (s.state.load(Ordering::Relaxed) >> 32).wrapping_add(1) & 0xFFFF_FFFF;
        s.state.store(generation << 32, Ordering::SeqCst);
        for h in &self.handles {
            h.thread().unpark();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn worker(s: Arc<Shared>, idx: usize) {
    let mut seen = 0u64;
    let mut start = Instant::now();
    let mut spins = 0u32;
    loop {
        let st = s.state.load(Ordering::Acquire);
        let generation = st >> 32;
        if generation != seen {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            if st & CLOSED != 0 {
                // Finished without us.
                seen = generation;
                continue;
            }
            if s.state
                .compare_exchange_weak(st, st + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            seen = generation;
            // SAFETY: published before the job was opened; the caller keeps it alive until
            // `done` counts us.
            if let Some(job) = unsafe { *s.job.get() } {
                // SAFETY: as above.
                let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(idx) }));
                if r.is_err() {
                    s.panicked.store(true, Ordering::Release);
                }
            }
            s.done.fetch_add(1, Ordering::Release);
            start = Instant::now();
            spins = 0;
            continue;
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(64) || start.elapsed() < SPIN {
            std::hint::spin_loop();
            continue;
        }
        s.sleeping[idx].store(true, Ordering::SeqCst);
        if s.state.load(Ordering::SeqCst) >> 32 == seen {
            std::thread::park();
        }
        s.sleeping[idx].store(false, Ordering::SeqCst);
    }
}
