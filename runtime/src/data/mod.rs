//! Datasets and data loading (`torch.utils.data`): the [`Dataset`] trait,
//! [`TensorDataset`], [`Subset`] and [`random_split`], a [`DataLoader`] with seeded
//! shuffling, `drop_last`, a [`Collate`] step ([`Stack`] by default) and background
//! workers, and readers for the data bundled in the repository's `data/` folder:
//! [`Digits`] (8×8 handwritten digits) and [`CharDataset`] (character-level text).
//!
//! Anything read from a file fails with an error naming the file and, where one line is
//! at fault, the line ([`Error::Data`](crate::Error::Data)), never with a panic.
//!
//! ```
//! use flint_runtime::data::{random_split, DataLoader, Dataset, TensorDataset};
//! use flint_runtime::Tensor;
//! // 100 samples of 3 features and a class label
//! let x = Tensor::randn([100, 3], ());
//! let y = Tensor::randint(0, 2, [100]);
//! let ds = TensorDataset::new(vec![x, y]).unwrap();
//! let parts = random_split(ds, &[80, 20], 0).unwrap();
//! let (train, val) = (parts[0].clone(), parts[1].clone());
//! let loader = DataLoader::new(train, 16).shuffle(0).num_workers(2);
//! assert_eq!(loader.len(), 5);
//! for epoch in 0..2 {
//!     for batch in loader.epoch(epoch) {
//!         let batch = batch.unwrap();
//!         let (features, labels) = (&batch[0], &batch[1]);
//!         assert_eq!(features.shape(), &[16, 3]);
//!         assert_eq!(labels.shape(), &[16]);
//!     }
//! }
//! assert_eq!(val.len(), 20);
//! ```

mod collate;
mod dataset;
mod digits;
mod loader;
mod split;
mod text;

pub use collate::{Collate, Stack};
pub use dataset::{check_index, Dataset, IntoArcDataset, Subset, TensorDataset};
pub use digits::Digits;
pub use loader::{DataLoader, Epoch};
pub use split::random_split;
pub use text::{CharDataset, CharVocab};
