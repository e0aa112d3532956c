//! Grad mode (thread-local `no_grad`) and anomaly mode.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

static ANOMALY: AtomicBool = AtomicBool::new(false);

/// True unless a [`no_grad`] scope (or [`NoGradGuard`]) is active on this thread.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

pub(crate) fn set_grad_enabled(on: bool) -> bool {
    GRAD_ENABLED.with(|g| g.replace(on))
}

/// Disables graph recording on this thread until dropped (then restores the previous
/// mode).
///
/// ```
/// use flint_runtime::{autograd::NoGradGuard, Tensor};
/// let w = Tensor::ones([2], ()).requires_grad_(true);
/// {
///     let _g = NoGradGuard::new();
///     assert!(!(&w * 2.0).requires_grad());
/// }
/// assert!((&w * 2.0).requires_grad());
/// ```
#[must_use = "the guard disables grad mode only while it is alive"]
pub struct NoGradGuard {
    prev: bool,
}

impl NoGradGuard {
    /// Turns grad mode off.
    pub fn new() -> NoGradGuard {
        NoGradGuard {
            prev: set_grad_enabled(false),
        }
    }
    /// Sets grad mode to `on` (used by the engine for `create_graph`).
    pub(crate) fn with(on: bool) -> NoGradGuard {
        NoGradGuard {
            prev: set_grad_enabled(on),
        }
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        set_grad_enabled(self.prev);
    }
}

/// Runs `f` with graph recording off (like `with torch.no_grad():`).
///
/// ```
/// use flint_runtime::{autograd::no_grad, Tensor};
/// let w = Tensor::ones([2], ()).requires_grad_(true);
/// let y = no_grad(|| &w * 3.0);
/// assert!(!y.requires_grad());
/// ```
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _g = NoGradGuard::new();
    f()
}

/// Turns anomaly mode on or off (process-wide): when on, a NaN or infinity produced by a
/// backward formula makes `backward` fail naming the forward op and where it was called.
pub fn set_anomaly_enabled(on: bool) {
    ANOMALY.store(on, Ordering::Relaxed);
}

/// True when anomaly mode is on.
pub fn is_anomaly_enabled() -> bool {
    ANOMALY.load(Ordering::Relaxed)
}
