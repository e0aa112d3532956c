//! Finding the driver and the devices: the availability probe and the per-device state
//! (context, stream, allocator, cuBLAS handle), created once per ordinal and kept for the
//! life of the process.

use super::alloc::Pool;
use crate::error::{Error, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaStream};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

/// One CUDA device as Flint uses it: its primary context, the one stream every op of
/// that device is queued on (so ordering between ops, copies and reused allocations is
/// the stream's order, as in PyTorch), its caching allocator and its cuBLAS handle.
pub(crate) struct Gpu {
    pub(crate) ordinal: usize,
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) pool: Mutex<Pool>,
    /// The device's compute capability `(major, minor)`, asked once when it is opened.
    pub(crate) capability: (i32, i32),
    blas: OnceLock<std::result::Result<CudaBlas, String>>,
    lt: OnceLock<std::result::Result<super::matmul::Lt, String>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu(cuda:{})", self.ordinal)
    }
}

/// The text of a panic payload (cudarc panics when a library or symbol is missing).
fn panic_text(p: Box<dyn Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic inside cudarc".to_string()
    }
}

/// Runs `f`, turning a panic of cudarc (a library or a symbol it could not load) into an
/// error message.
pub(crate) fn guarded<T>(
    what: &str,
    f: impl FnOnce() -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(format!("{what} failed: {}", panic_text(p))),
    }
}

/// The number of devices, probed once per process: the driver library must load,
/// `cuInit` must succeed.
fn probe() -> Result<usize> {
    static PROBE: OnceLock<std::result::Result<usize, String>> = OnceLock::new();
    let r = PROBE.get_or_init(|| {
        // SAFETY: only tries to open the driver library with `dlopen`; nothing is called.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("no CUDA driver library (libcuda.so) could be loaded".to_string());
        }
        guarded("loading the CUDA driver", || {
            use cudarc::driver::{result, sys::cudaError_enum};
            match result::init() {
                Ok(()) => {}
                Err(e) if e.0 == cudaError_enum::CUDA_ERROR_NO_DEVICE => {
                    return Err("no CUDA device found (cuInit: CUDA_ERROR_NO_DEVICE)".into())
                }
                Err(e) => return Err(format!("cuInit failed: {e}")),
            }
            let n =
                result::device::get_count().map_err(|e| format!("cuDeviceGetCount failed: {e}"))?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
    });
    r.clone().map_err(Error::cuda_unavailable)
}

/// Whether CUDA can be used: the driver library loads, `cuInit` succeeds and there is
/// at least one device. Never panics; the error says what is missing and starts with
/// "CUDA is not available: ".
///
/// ```
/// match flint_runtime::cuda::available() {
///     Ok(()) => println!("{} CUDA device(s)", flint_runtime::cuda::device_count()),
///     Err(e) => assert!(e.to_string().starts_with("CUDA is not available: ")),
/// }
/// ```
pub fn available() -> Result<()> {
    match probe()? {
        0 => Err(Error::cuda_unavailable("no CUDA device found")),
        _ => Ok(()),
    }
}

/// The number of CUDA devices (0 when CUDA is not available).
///
/// ```
/// let n = flint_runtime::cuda::device_count();
/// assert_eq!(n > 0, flint_runtime::cuda::available().is_ok());
/// ```
pub fn device_count() -> usize {
    probe().unwrap_or(0)
}

/// Waits until all work queued on `device` has finished (PyTorch's
/// `torch.cuda.synchronize`), reporting an error that a kernel or copy raised
/// asynchronously. For timing: ops return as soon as their work is queued.
///
/// ```
/// use flint_runtime::{cuda, Device};
/// if cuda::available().is_ok() {
///     cuda::synchronize(Device::Cuda(0))?;
/// }
/// # Ok::<(), flint_runtime::Error>(())
/// ```
pub fn synchronize(device: crate::Device) -> Result<()> {
    match device {
        crate::Device::Cuda(n) => gpu(n)?.synchronize(),
        crate::Device::Cpu => Ok(()),
    }
}

/// The device `cuda:ordinal`, opened on first use (probe, primary context, stream).
pub(crate) fn gpu(ordinal: usize) -> Result<Arc<Gpu>> {
    static GPUS: OnceLock<Mutex<Vec<Option<Arc<Gpu>>>>> = OnceLock::new();
    let count = probe()?;
    if ordinal >= count {
        return Err(Error::cuda_unavailable(match count {
            0 => "no CUDA device found".to_string(),
            n => {
                format!("device cuda:{ordinal} does not exist: this machine has {n} CUDA device(s)")
            }
        }));
    }
    let table = GPUS.get_or_init(|| Mutex::new(Vec::new()));
    let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
    if table.len() <= ordinal {
        table.resize(ordinal + 1, None);
    }
    if let Some(g) = &table[ordinal] {
        return Ok(g.clone());
    }
    let g = Arc::new(open(ordinal)?);
    table[ordinal] = Some(g.clone());
    Ok(g)
}

fn open(ordinal: usize) -> Result<Gpu> {
    let ctx = guarded("creating a CUDA context", || {
        CudaContext::new(ordinal)
            .map_err(|e| format!("cannot create a context on cuda:{ordinal}: {e}"))
    })
    .map_err(Error::cuda_unavailable)?;
    // SAFETY: Flint queues all work of a device on one stream, so cudarc's per-slice
    // events (which order uses across streams) are not needed; stream order covers
    // allocation, use, reuse and copies. Called before any slice of this context exists.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.default_stream();
    let capability = ctx
        .compute_capability()
        .map_err(|e| driver_error("opening the device", ordinal, e))?;
    Ok(Gpu {
        ordinal,
        ctx,
        stream,
        pool: Mutex::new(Pool::default()),
        capability,
        blas: OnceLock::new(),
        lt: OnceLock::new(),
    })
}

impl Gpu {
    /// The cuBLAS handle of this device, created on first use (on the device's stream).
    pub(crate) fn blas(&self) -> Result<&CudaBlas> {
        let r = self.blas.get_or_init(|| {
            // SAFETY: only tries to open the library with `dlopen`.
            if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                return Err("no cuBLAS library (libcublas.so) could be loaded".to_string());
            }
            let stream = self.stream.clone();
            guarded("loading cuBLAS", || {
                CudaBlas::new(stream).map_err(|e| format!("cannot create a cuBLAS handle: {e}"))
            })
        });
        r.as_ref()
            .map_err(|msg| Error::cuda_unavailable(msg.clone()))
    }

    /// The cuBLASLt handle and workspace of this device, created on first use.
    pub(crate) fn lt(&self) -> Result<&super::matmul::Lt> {
        self.lt
            .get_or_init(|| guarded("loading cuBLASLt", || super::matmul::Lt::new(self)))
            .as_ref()
            .map_err(|msg| Error::cuda_unavailable(msg.clone()))
    }

    /// Makes this device's context current on the calling thread (needed before raw
    /// driver calls; cudarc's safe API does it itself).
    pub(crate) fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error("bind", self.ordinal, e))
    }

    /// Waits for all work queued on this device.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver_error("synchronize", self.ordinal, e))
    }
}

/// A failed driver call on a device that is available (out of memory, a failed launch,
/// an asynchronous error reported late) as an [`Error::Device`].
pub(crate) fn driver_error(
    op: &'static str,
    ordinal: usize,
    e: cudarc::driver::DriverError,
) -> Error {
    Error::device(op, format!("CUDA error on cuda:{ordinal}: {e}"))
}
