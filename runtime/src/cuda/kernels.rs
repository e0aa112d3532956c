//! Compiling CUDA C with NVRTC at first use and caching the loaded module per device.
//!
//! Sources (the `flint-kernels` crate's `.cu` files) are compiled for the device's exact
//! architecture (`compute_XY` PTX, JIT-compiled by the driver) the first time a module
//! is asked for on a device; later calls get the cached module.
//!
//! The PTX is also kept on disk between processes (NVRTC takes seconds per module; a
//! test run or a short training job would pay that at every start): in
//! `$FLINT_PTX_CACHE`, else `$XDG_CACHE_HOME/flint/ptx`, else `~/.cache/flint/ptx`, one
//! file per module named by a hash of the source, the compile options, the architecture
//! and the NVRTC version. `FLINT_PTX_CACHE=off` (or empty) turns it off. A file is
//! written to a temporary name and renamed, and ends with a marker line; a file without
//! it, or PTX the driver rejects, is compiled again and replaced. The cache only saves
//! time: any failure to read or write it falls back to compiling.

use super::context::{gpu, guarded};
use crate::error::{Error, Result};
use cudarc::driver::CudaModule;
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
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
    let (major, minor) = g.capability;
    let opts = compile_options(name, major, minor);
    let key = ptx_key(name, source, &opts.options, nvrtc_version());
    let dir = cache_dir();
    let cached = dir
        .as_deref()
        .and_then(|d| read_cached(d, &key))
        .and_then(|text| g.ctx.load_module(Ptx::from_src(text)).ok());
    let m = match cached {
        Some(m) => m,
        None => {
            let ptx = compile_and_cache(name, source, opts, dir.as_deref(), &key)?;
            g.ctx
                .load_module(ptx)
                .map_err(|e| super::context::driver_error("kernels", ordinal, e))?
        }
    };
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((ordinal, name), m.clone());
    Ok(m)
}

/// The NVRTC options of module `name` for compute capability `major.minor`.
fn compile_options(name: &str, major: i32, minor: i32) -> CompileOptions {
    CompileOptions {
        options: std::iter::once(format!("--gpu-architecture=compute_{major}{minor}"))
            .chain(flint_kernels::COMPILE_OPTIONS.iter().map(|o| o.to_string()))
            .collect(),
        name: Some(format!("{name}.cu")),
        ..Default::default()
    }
}

/// Compiles a module with NVRTC and writes its PTX to the cache folder `dir` (if any)
/// under `key`.
fn compile_and_cache(
    name: &str,
    source: &str,
    opts: CompileOptions,
    dir: Option<&Path>,
    key: &str,
) -> Result<Ptx> {
    let ptx = guarded("NVRTC", || {
        cudarc::nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| e.to_string())
    })
    .map_err(|msg| Error::device("kernels", format!("compiling `{name}` failed: {msg}")))?;
    if let Some(d) = dir {
        // best effort: a cache that cannot be written only costs the next start
        let _ = write_cached(d, key, &ptx.to_src());
    }
    Ok(ptx)
}

/// Compiles every module of `flint-kernels` for GPUs of compute capability
/// `major.minor` into the PTX cache folder (see the module docs), skipping those
/// already there; needs NVRTC but no GPU. `scripts/gpu-check.sh` ships such a folder, so
/// that a fresh GPU machine loads the kernels instead of compiling them for minutes.
/// Returns `(compiled, already cached)`.
///
/// ```no_run
/// use flint_runtime::cuda::kernels::warm_ptx_cache;
/// // with NVRTC, compiles every module into the cache (half a minute); without NVRTC
/// // (or with the cache turned off) it is an error, not a panic
/// let (compiled, cached) = warm_ptx_cache(9, 0).unwrap_or((0, 0));
/// println!("{compiled} compiled, {cached} already cached");
/// ```
pub fn warm_ptx_cache(major: i32, minor: i32) -> Result<(usize, usize)> {
    // SAFETY: only tries to open the library with `dlopen`.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::cuda_unavailable(
            "no NVRTC library (libnvrtc.so) could be loaded to compile CUDA kernels",
        ));
    }
    let dir = cache_dir().ok_or_else(|| {
        Error::device(
            "kernels",
            "the PTX cache is turned off (FLINT_PTX_CACHE) or has no home".to_string(),
        )
    })?;
    let nvrtc = nvrtc_version();
    let (mut compiled, mut cached) = (0, 0);
    for m in flint_kernels::MODULES {
        let opts = compile_options(m.name, major, minor);
        let key = ptx_key(m.name, m.source, &opts.options, nvrtc);
        if read_cached(&dir, &key).is_some() {
            cached += 1;
            continue;
        }
        compile_and_cache(m.name, m.source, opts, Some(&dir), &key)?;
        if read_cached(&dir, &key).is_none() {
            return Err(Error::device(
                "kernels",
                format!(
                    "could not write the PTX of `{}` to {}",
                    m.name,
                    dir.display()
                ),
            ));
        }
        compiled += 1;
    }
    Ok((compiled, cached))
}

/// The last line of a complete cache file.
const MARKER: &str = "// flint ptx cache: complete";

/// The NVRTC library's version, `(0, 0)` when it cannot be asked.
fn nvrtc_version() -> (i32, i32) {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: writes two ints; the library was found present before this is called.
    let r = guarded("NVRTC", || {
        Ok(unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) })
    });
    match r {
        Ok(cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS) => (major, minor),
        _ => (0, 0),
    }
}

/// The PTX cache folder (see the module docs), `None` when turned off or no home is
/// known.
fn cache_dir() -> Option<PathBuf> {
    cache_dir_from(
        std::env::var_os("FLINT_PTX_CACHE"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

fn cache_dir_from(
    explicit: Option<std::ffi::OsString>,
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    if let Some(e) = explicit {
        let off = e.is_empty() || e == "off" || e == "0";
        return (!off).then(|| PathBuf::from(e));
    }
    let base = match (
        xdg.filter(|x| !x.is_empty()),
        home.filter(|h| !h.is_empty()),
    ) {
        (Some(x), _) => PathBuf::from(x),
        (None, Some(h)) => PathBuf::from(h).join(".cache"),
        (None, None) => return None,
    };
    Some(base.join("flint").join("ptx"))
}

/// 64-bit FNV-1a (stable across builds and toolchains, unlike `DefaultHasher`).
fn fnv1a(bytes: impl IntoIterator<Item = u8>, mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The cache file name of a module: its name and a hash of everything the PTX depends
/// on (source, options, which include the architecture, the NVRTC version).
fn ptx_key(name: &str, source: &str, options: &[String], nvrtc: (i32, i32)) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325;
    h = fnv1a(source.bytes(), h);
    for o in options {
        h = fnv1a(o.bytes().chain([0]), h);
    }
    h = fnv1a(format!("nvrtc {}.{}", nvrtc.0, nvrtc.1).into_bytes(), h);
    format!("{name}-{h:016x}.ptx")
}

/// The PTX of a complete cache file, without its marker; `None` when missing or cut
/// short.
fn read_cached(dir: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(key)).ok()?;
    let body = text.strip_suffix(MARKER)?.strip_suffix('\n')?;
    Some(body.to_string())
}

/// Writes `ptx` to the cache atomically: a temporary file in the folder, then a rename.
fn write_cached(dir: &Path, key: &str, ptx: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(ptx.as_bytes())?;
        f.write_all(b"\n")?;
        f.write_all(MARKER.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(key))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn the_cache_folder_follows_the_environment() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            cache_dir_from(os("/x/ptx"), os("/xdg"), os("/home/u")),
            Some(PathBuf::from("/x/ptx"))
        );
        for off in ["", "off", "0"] {
            assert_eq!(cache_dir_from(os(off), os("/xdg"), os("/home/u")), None);
        }
        assert_eq!(
            cache_dir_from(None, os("/xdg"), os("/home/u")),
            Some(PathBuf::from("/xdg/flint/ptx"))
        );
        assert_eq!(
            cache_dir_from(None, os(""), os("/home/u")),
            Some(PathBuf::from("/home/u/.cache/flint/ptx"))
        );
        assert_eq!(cache_dir_from(None, None, None), None);
    }

    #[test]
    fn keys_change_with_everything_the_ptx_depends_on() {
        let opts = vec!["--gpu-architecture=compute_90".to_string()];
        let k = ptx_key("reduce", "src", &opts, (13, 0));
        assert!(k.starts_with("reduce-") && k.ends_with(".ptx"), "{k}");
        assert_eq!(k, ptx_key("reduce", "src", &opts, (13, 0)));
        assert_ne!(k, ptx_key("reduce", "src2", &opts, (13, 0)));
        assert_ne!(k, ptx_key("reduce", "src", &opts, (13, 1)));
        let other = vec!["--gpu-architecture=compute_80".to_string()];
        assert_ne!(k, ptx_key("reduce", "src", &other, (13, 0)));
    }

    #[test]
    fn cache_files_round_trip_and_cut_files_are_misses() {
        let dir = std::env::temp_dir().join(format!("flint-ptx-test-{}", std::process::id()));
        let ptx = ".version 9.0\n.target sm_90\n";
        write_cached(&dir, "m-1.ptx", ptx).unwrap();
        assert_eq!(read_cached(&dir, "m-1.ptx").as_deref(), Some(ptx));
        // a file cut short (no marker) is a miss, as is a missing one
        let full = std::fs::read_to_string(dir.join("m-1.ptx")).unwrap();
        std::fs::write(dir.join("m-2.ptx"), &full[..full.len() - 5]).unwrap();
        assert_eq!(read_cached(&dir, "m-2.ptx"), None);
        assert_eq!(read_cached(&dir, "m-3.ptx"), None);
        // no temporary file is left behind
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")),
            "{names:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
