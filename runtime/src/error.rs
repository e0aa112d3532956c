//! The error type of Flint.
//!
//! Programmer errors in tensor math (incompatible shapes, impossible views, indices out
//! of range) panic with a message naming the op, the shapes and the caller's line, like
//! indexing a slice does. Every such op also has a `try_` form that returns
//! [`Result<_, Error>`](Error) for callers that want to recover; anything that meets the
//! outside world (files, checkpoints, devices, data) returns `Result` only.

use std::panic::Location;

/// Everything that can go wrong in Flint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Shapes that an op cannot combine.
    #[error("{op}: {msg}")]
    Shape {
        /// The op that failed, e.g. `"matmul"`.
        op: &'static str,
        /// What was wrong, naming the shapes involved.
        msg: String,
    },
    /// A dtype an op does not support, or two dtypes it cannot combine.
    #[error("{op}: {msg}")]
    DType {
        /// The op that failed.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },
    /// An index or dimension out of range.
    #[error("{op}: {msg}")]
    Index {
        /// The op that failed.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },
    /// Tensors on different devices in one op, or a CUDA call that failed on a device
    /// that is available (out of memory, a failed copy or cuBLAS call).
    #[error("{op}: {msg}")]
    Device {
        /// The op that failed.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },
    /// CUDA was asked for but cannot be used: a build without the `cuda` feature, no
    /// driver library, no GPU, a device ordinal out of range, a driver too old for the
    /// CUDA 13 API, or a missing cuBLAS/NVRTC library. Never a panic: probe with
    /// `flint_runtime::cuda::available()` (feature `cuda`) or try the move.
    ///
    /// ```
    /// use flint_runtime::{DType, Device, Error, Tensor};
    /// // on a machine without a GPU (or a build without the `cuda` feature)
    /// if let Err(e) = Tensor::try_zeros([2], (DType::F32, Device::Cuda(0))) {
    ///     assert!(e.to_string().starts_with("CUDA is not available: "), "{e}");
    /// }
    /// ```
    #[error("CUDA is not available: {0}")]
    CudaUnavailable(String),
    /// An op that has no CUDA kernel yet was given a tensor on a CUDA device. Move the
    /// tensor to the CPU with `.to(Device::Cpu)` first, or use an op that has one.
    #[error("`{op}` has no CUDA kernel yet (tensor on {device})")]
    NoCudaKernel {
        /// The op that was called.
        op: &'static str,
        /// The device of the tensor it was given.
        device: crate::Device,
    },
    /// Autograd misuse: backward through a freed graph, a saved tensor modified in place,
    /// a non-scalar without a gradient, an anomaly.
    #[error("autograd: {0}")]
    Autograd(String),
    /// A state dict that does not fit a module: missing, unexpected or wrongly-shaped
    /// entries, all listed.
    #[error("state dict: {0}")]
    StateDict(String),
    /// An invalid argument to a constructor or a configuration (a zero size, a rate
    /// outside `[0, 1)`, …).
    #[error("{op}: {msg}")]
    Config {
        /// The constructor or function that refused it.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },
    /// A checkpoint file that cannot be read or written as safetensors: a truncated or
    /// corrupt file, a dtype Flint has no counterpart for, a tensor whose bytes do not
    /// match its shape, duplicate names. Failures of the file system itself are
    /// [`Error::Io`].
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The file involved.
        path: String,
        /// What was wrong.
        msg: String,
    },
    /// A data file that does not hold what its reader expects: a malformed line (wrong
    /// number of columns, a value that is not a number), a value out of range, text that
    /// is not UTF-8, a corrupt gzip stream. Displayed as `path:line: msg` (like a
    /// compiler's diagnostic) or `path: msg` when no single line is at fault. A file
    /// that cannot be opened at all is an [`Error::Io`].
    ///
    /// ```
    /// use flint_runtime::Error;
    /// let e = Error::data("data/digits/digits.csv.gz", Some(17), "expected 65 comma-separated integers, got 64");
    /// assert_eq!(e.to_string(), "data/digits/digits.csv.gz:17: expected 65 comma-separated integers, got 64");
    /// assert_eq!(Error::data("a.txt", None, "empty").to_string(), "a.txt: empty");
    /// ```
    #[error("{}: {msg}", data_location(.path, *.line))]
    Data {
        /// The file involved (or the name given to in-memory data).
        path: std::path::PathBuf,
        /// The 1-based line at fault, if one is.
        line: Option<usize>,
        /// What was wrong.
        msg: String,
    },
    /// A [`DataLoader`](crate::data::DataLoader) failure that is not the dataset's own
    /// error: a worker thread that panicked (the panic's message is kept), stopped
    /// unexpectedly or could not be started.
    #[error("DataLoader: {0}")]
    DataLoader(String),
    /// An I/O error, with the path involved.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Flint's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A [`Error::Shape`].
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    /// A [`Error::DType`].
    pub fn dtype(op: &'static str, msg: impl Into<String>) -> Self {
        Error::DType {
            op,
            msg: msg.into(),
        }
    }
    /// An [`Error::Index`].
    pub fn index(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Index {
            op,
            msg: msg.into(),
        }
    }
    /// An [`Error::Config`].
    pub fn config(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Config {
            op,
            msg: msg.into(),
        }
    }
    /// An [`Error::Checkpoint`] about the file at `path`.
    pub fn checkpoint(path: impl AsRef<std::path::Path>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.as_ref().display().to_string(),
            msg: msg.into(),
        }
    }
    /// An [`Error::Data`] about the file at `path`, at the 1-based `line` if one is at
    /// fault.
    pub fn data(
        path: impl AsRef<std::path::Path>,
        line: Option<usize>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Data {
            path: path.as_ref().to_path_buf(),
            line,
            msg: msg.into(),
        }
    }
    /// An [`Error::Io`] about the file at `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
    /// An [`Error::Device`] for tensors on two devices given to one op: "expected all
    /// tensors on one device, got cpu and cuda:0".
    pub fn devices(op: &'static str, a: crate::Device, b: crate::Device) -> Self {
        Error::Device {
            op,
            msg: format!("expected all tensors on one device, got {a} and {b}"),
        }
    }
    /// An [`Error::CudaUnavailable`] with the reason.
    pub fn cuda_unavailable(reason: impl Into<String>) -> Self {
        Error::CudaUnavailable(reason.into())
    }
    /// A [`Error::Device`].
    pub fn device(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Device {
            op,
            msg: msg.into(),
        }
    }
}

/// `path:line` or `path`, the prefix of an [`Error::Data`] message.
fn data_location(path: &std::path::Path, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", path.display()),
        None => path.display().to_string(),
    }
}

/// Unwraps the result of a `try_` op, panicking with the error and the caller's location.
///
/// Every panicking tensor op is `#[track_caller]` and ends in this function, so the
/// panic names the line of user code that made the bad call.
#[track_caller]
#[inline]
pub fn or_panic<T>(r: Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => fail(e),
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn fail(e: Error) -> ! {
    let loc = Location::caller();
    panic!("{e} (called at {}:{})", loc.file(), loc.line())
}
