//! Thread control for CPU kernels.
//!
//! Kernels run on a Flint-owned `rayon` pool whose size [`set_num_threads`] sets (default:
//! the number of cores). Work below [`PAR_THRESHOLD`] elements stays on the calling thread:
//! for small tensors the hand-off costs more than it saves.

use rayon::ThreadPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Element count below which kernels do not parallelise.
pub const PAR_THRESHOLD: usize = 1 << 15;

static NUM_THREADS: AtomicUsize = AtomicUsize::new(0);

fn pools() -> &'static Mutex<HashMap<usize, Arc<ThreadPool>>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<ThreadPool>>>> = OnceLock::new();
    POOLS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Sets the number of threads CPU kernels use (like `torch.set_num_threads`); `0` means
/// the number of cores.
///
/// ```
/// flint_runtime::set_num_threads(1);
/// assert_eq!(flint_runtime::num_threads(), 1);
/// flint_runtime::set_num_threads(0);
/// ```
pub fn set_num_threads(n: usize) {
    NUM_THREADS.store(n, Ordering::Relaxed);
}

/// The number of threads CPU kernels use.
pub fn num_threads() -> usize {
    match NUM_THREADS.load(Ordering::Relaxed) {
        // asked once: `available_parallelism` reads the cgroup quota files on every call,
        // which cost a third of a small model's training step when asked per op
        0 => {
            static AVAILABLE: OnceLock<usize> = OnceLock::new();
            *AVAILABLE.get_or_init(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
        }
        n => n,
    }
}

/// Runs `f` inside the pool of [`num_threads`] threads.
pub(crate) fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let n = num_threads();
    if n <= 1 {
        return f();
    }
    let pool = {
        let mut map = pools().lock().unwrap_or_else(|p| p.into_inner());
        map.entry(n)
            .or_insert_with(|| {
                Arc::new(
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(n)
                        .thread_name(|i| format!("flint-cpu-{i}"))
                        .build()
                        .expect("failed to start the CPU thread pool"),
                )
            })
            .clone()
    };
    pool.install(f)
}

/// [`install`] when `pool` (work that splits itself across the pool's threads), else
/// `f` on this thread: for a kernel that decided to run single-threaded, which need not
/// hand `f` to the pool only to run it on one thread there.
pub(crate) fn install_if<R: Send>(pool: bool, f: impl FnOnce() -> R + Send) -> R {
    if pool {
        install(f)
    } else {
        f()
    }
}

/// True when work of `n` elements should be split across threads.
#[inline]
pub(crate) fn should_parallelize(n: usize) -> bool {
    n >= PAR_THRESHOLD && num_threads() > 1
}

/// Calls `f(i, row)` for every `row_len`-long row `i` of `out`: across the pool, at
/// least `min_rows` rows a task, when `work` (elements touched) is large enough; in
/// order on this thread otherwise.
pub(crate) fn for_each_row<T: Send>(
    out: &mut [T],
    row_len: usize,
    min_rows: usize,
    work: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    use rayon::prelude::*;
    let row_len = row_len.max(1);
    if should_parallelize(work) {
        install(|| {
            out.par_chunks_mut(row_len)
                .enumerate()
                .with_min_len(min_rows.max(1))
                .for_each(|(i, row)| f(i, row))
        });
    } else {
        out.chunks_mut(row_len)
            .enumerate()
            .for_each(|(i, row)| f(i, row));
    }
}

/// A chunk length that splits `n` items into a few chunks per thread.
#[inline]
pub(crate) fn chunk_len(n: usize) -> usize {
    (n / (num_threads() * 4)).max(4096)
}
