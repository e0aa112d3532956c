//! # flint-train
//!
//! The training experience around a Flint model, independent of the tensor runtime:
//!
//! - [`Progress`]: a progress bar per epoch or evaluation loop (step, running-mean
//!   loss, throughput, ETA), one summary line per loop in logs that are not a terminal;
//! - [`RunLogger`]: one folder per run with `metrics.csv`, a TensorBoard event file
//!   (written by [`tensorboard`], no TensorFlow needed) and an in-memory history;
//! - [`RunLogger::plot`] / [`plot::plot_panels`]: loss and accuracy curves as a PNG.
//!
//! In the `flint` facade this crate is `flint::train`, and its errors convert into
//! `flint::Error`, so `?` works in a `fn main() -> flint::Result<()>`.
//!
//! ```
//! use flint_train::{Progress, RunLogger};
//! let dir = std::env::temp_dir().join(format!("flint-train-doc-lib-{}", std::process::id()));
//! let mut log = RunLogger::create(&dir)?;
//! let (epochs, steps_per_epoch, batch) = (3u64, 5u64, 32u64);
//! for epoch in 0..epochs {
//!     let mut bar = Progress::new(steps_per_epoch, format!("epoch {}/{epochs}", epoch + 1));
//!     for i in 0..steps_per_epoch {
//!         let step = epoch * steps_per_epoch + i;
//!         let loss = 2.0 / (1.0 + step as f64); // stands in for a training step
//!         bar.step(batch, loss);
//!         log.scalar("train/loss", step, loss)?;
//!     }
//!     let summary = bar.finish(); // prints "epoch 1/3  5/5  loss 1.1417  ... items/s  0.0s"
//!     log.scalar("train/epoch_loss", (epoch + 1) * steps_per_epoch, summary.mean_loss.unwrap())?;
//! }
//! log.plot(dir.join("curves.png"), &[&["train/loss"], &["train/epoch_loss"]])?;
//! log.flush()?;
//! # drop(log);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), flint_train::TrainError>(())
//! ```

#![warn(missing_docs)]

mod error;
mod logger;
pub mod plot;
mod progress;
pub mod tensorboard;

pub use error::{Result, TrainError};
pub use logger::{RunLogger, CSV_HEADER};
pub use progress::{Progress, ProgressSummary};
