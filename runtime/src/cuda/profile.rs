//! Device time per kernel: a small profiler of Flint's own for the CUDA backend, for
//! machines where Nsight Systems is not at hand.
//!
//! While it is on ([`profile_start`]), every kernel launch and cuBLAS product is
//! bracketed by two CUDA events on the device's stream; [`profile_stop`] waits for them
//! and sums the time between each pair per name (`op: entry` for kernels,
//! `matmul: gemm_<dtype> b×m×k×n` for products). The events cost a little host time per
//! launch, so profile to find where the time goes, and time without it.

use super::context::{driver_error, Gpu};
use crate::error::Result;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static ON: AtomicBool = AtomicBool::new(false);
static SPANS: Mutex<Vec<(String, CudaEvent, CudaEvent)>> = Mutex::new(Vec::new());

/// The summed device time of one kernel (or product) name while profiling was on.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// `op: entry` (the op that launched it and the kernel's entry point), or
    /// `matmul: gemm_<dtype> b×m×k×n` for a cuBLAS product.
    pub name: String,
    /// How many launches.
    pub calls: usize,
    /// Their device time, in milliseconds.
    pub total_ms: f64,
}

/// Starts recording the device time of every CUDA kernel and product (clearing what an
/// earlier [`profile_start`] recorded).
///
/// ```
/// use flint_runtime::cuda;
/// cuda::profile_start();
/// // ... CUDA work ...
/// let times = cuda::profile_stop()?; // empty without a GPU
/// for k in &times {
///     println!("{:>10.3} ms {:>6} {}", k.total_ms, k.calls, k.name);
/// }
/// # Ok::<(), flint_runtime::Error>(())
/// ```
pub fn profile_start() {
    SPANS.lock().unwrap_or_else(|p| p.into_inner()).clear();
    ON.store(true, Ordering::Relaxed);
}

/// Stops recording, waits for the recorded work and returns the device time per name,
/// the largest total first.
pub fn profile_stop() -> Result<Vec<KernelTime>> {
    ON.store(false, Ordering::Relaxed);
    let spans = std::mem::take(&mut *SPANS.lock().unwrap_or_else(|p| p.into_inner()));
    let mut by_name: HashMap<String, (usize, f64)> = HashMap::new();
    for (name, start, end) in spans {
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| driver_error("profile", 0, e))?;
        let e = by_name.entry(name).or_default();
        e.0 += 1;
        e.1 += f64::from(ms);
    }
    let mut out: Vec<KernelTime> = by_name
        .into_iter()
        .map(|(name, (calls, total_ms))| KernelTime {
            name,
            calls,
            total_ms,
        })
        .collect();
    out.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    Ok(out)
}

/// Runs `f` (which queues work on `g`'s stream); while profiling, brackets it with two
/// events recorded under `name()`.
pub(crate) fn timed<R>(
    g: &Gpu,
    name: impl FnOnce() -> String,
    f: impl FnOnce() -> Result<R>,
) -> Result<R> {
    if !ON.load(Ordering::Relaxed) {
        return f();
    }
    let event = || {
        g.stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| driver_error("profile", g.ordinal, e))
    };
    let start = event()?;
    let r = f()?;
    let end = event()?;
    SPANS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((name(), start, end));
    Ok(r)
}
