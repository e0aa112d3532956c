//! Compiling CUDA C with NVRTC at first use and caching the loaded module per device.
//!
//! Sources (the `flint-kernels` crate's `.cu` files) are compiled for the device's exact
//! architecture (`compute_XY` PTX, JIT-compiled by the driver) the first time a module
//! is asked for on a device; later calls get the cached module.

use super::context::{gpu, guarded};
use crate::error::{Error, Result};
use cudarc::driver::CudaModule;
use cudarc::nvrtc::CompileOptions;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

type Cache = Mutex<HashMap<(usize, &'static str), Arc<CudaModule>>>;

/// The module `name` compiled from `source` and loaded on device `cuda:ordinal`
/// (compiled once per device and cached). Errors, never panics: no NVRTC library, a
/// compile error (with NVRTC's log), a driver that rejects the PTX.
///
/// ```
/// use flint_runtime::cuda;
/// if cuda::available().is_err() {
///     return; // no GPU here
/// }
/// let src = r#"extern "C" __global__ void twice(float *x, unsigned n) {
///     unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
///     if (i < n) x[i] *= 2.0f;
/// }"#;
/// let m = cuda::kernels::module(0, "doc_twice", src).unwrap();
/// assert!(m.load_function("twice").is_ok());
/// ```
pub fn module(ordinal: usize, name: &'static str, source: &'static str) -> Result<Arc<CudaModule>> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(m) = cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(ordinal, name))
    {
        return Ok(m.clone());
    }
    let g = gpu(ordinal)?;
    // SAFETY: only tries to open the library with `dlopen`.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::cuda_unavailable(
            "no NVRTC library (libnvrtc.so) could be loaded to compile CUDA kernels",
        ));
    }
    let (major, minor) = g
        .ctx
        .compute_capability()
        .map_err(|e| super::context::driver_error("kernels", ordinal, e))?;
    let opts = CompileOptions {
        options: std::iter::once(format!("--gpu-architecture=compute_{major}{minor}"))
            .chain(flint_kernels::COMPILE_OPTIONS.iter().map(|o| o.to_string()))
            .collect(),
        name: Some(format!("{name}.cu")),
        ..Default::default()
    };
    let ptx = guarded("NVRTC", || {
        cudarc::nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| e.to_string())
    })
    .map_err(|msg| Error::device("kernels", format!("compiling `{name}` failed: {msg}")))?;
    let m = g
        .ctx
        .load_module(ptx)
        .map_err(|e| super::context::driver_error("kernels", ordinal, e))?;
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((ordinal, name), m.clone());
    Ok(m)
}
