//! The error type of `flint-train`.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while logging, plotting or reading back a run.
///
/// Every variant that involves a file names it. With the feature `runtime` (on in the
/// `flint` facade) a `TrainError` converts into `flint::Error`, so `?` works in a
/// `fn main() -> flint::Result<()>`; it also works with `Box<dyn std::error::Error>`.
///
/// ```
/// use flint_train::{RunLogger, TrainError};
/// // a folder cannot be created inside a regular file
/// let file = std::env::temp_dir().join(format!("flint-train-doc-error-{}", std::process::id()));
/// std::fs::write(&file, b"not a folder").unwrap();
/// let err = RunLogger::create(file.join("run")).unwrap_err();
/// assert!(matches!(err, TrainError::Io { .. }));
/// assert!(err.to_string().contains("flint-train-doc-error"), "{err}");
/// std::fs::remove_file(&file).unwrap();
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A file or folder that could not be created, written, read or renamed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A plot that could not be drawn or encoded.
    #[error("plot {}: {msg}", path.display())]
    Plot {
        /// The image file that was being written.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// A malformed line in a run's `metrics.csv` (read back by [`RunLogger::resume`]).
    ///
    /// [`RunLogger::resume`]: crate::RunLogger::resume
    #[error("{}:{line}: {msg}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line number, starting at 1.
        line: usize,
        /// What was wrong with it.
        msg: String,
    },
    /// An argument that cannot be used: an empty tag, a step beyond `i64::MAX`, a plot
    /// of a tag that was never logged, …
    #[error("{op}: {msg}")]
    Invalid {
        /// The function that refused it, e.g. `"RunLogger::scalar"`.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },
}

/// The result type of `flint-train`.
///
/// ```
/// fn tags() -> flint_train::Result<Vec<String>> {
///     Ok(vec!["train/loss".to_string()])
/// }
/// assert_eq!(tags().unwrap().len(), 1);
/// ```
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    /// A [`TrainError::Io`] about `path`.
    ///
    /// ```
    /// use flint_train::TrainError;
    /// let e = TrainError::io("runs/x/metrics.csv", std::io::Error::other("disk full"));
    /// assert_eq!(e.to_string(), "runs/x/metrics.csv: disk full");
    /// ```
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A [`TrainError::Invalid`] raised by `op`.
    ///
    /// ```
    /// use flint_train::TrainError;
    /// let e = TrainError::invalid("RunLogger::scalar", "the tag is empty");
    /// assert_eq!(e.to_string(), "RunLogger::scalar: the tag is empty");
    /// ```
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        TrainError::Invalid {
            op,
            msg: msg.into(),
        }
    }
}

/// `?` on a [`TrainError`] in a function returning `flint::Result` (feature `runtime`):
/// file errors keep their path and source ([`flint_runtime::Error::Io`]), the others
/// become [`flint_runtime::Error::Config`] naming the function, or `Io` with the path.
#[cfg(feature = "runtime")]
impl From<TrainError> for flint_runtime::Error {
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Io { path, source } => flint_runtime::Error::io(path, source),
            TrainError::Plot { path, msg } => {
                flint_runtime::Error::io(path, std::io::Error::other(format!("plot: {msg}")))
            }
            TrainError::Parse { path, line, msg } => flint_runtime::Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("line {line}: {msg}"),
                ),
            ),
            TrainError::Invalid { op, msg } => flint_runtime::Error::config(op, msg),
        }
    }
}
