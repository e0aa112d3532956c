//! Reading and writing tensors: checkpoints in the
//! [safetensors](https://github.com/huggingface/safetensors) format, the one PyTorch and
//! Hugging Face models are shared in.
//!
//! [`save_tensors`] writes named tensors, [`load_tensors`] reads them back; modules save
//! and load their `state_dict` with [`ModuleExt::save`](crate::nn::ModuleExt::save) and
//! [`ModuleExt::load`](crate::nn::ModuleExt::load). A file written by PyTorch's
//! `safetensors.torch.save_file(model.state_dict(), path)` loads into a Flint module whose
//! dotted parameter names are PyTorch's.
//!
//! ```
//! use flint_runtime::io::{load_tensors, save_tensors};
//! use flint_runtime::Tensor;
//! let path = std::env::temp_dir().join(format!("flint-io-doc-{}.safetensors", std::process::id()));
//! let w = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]);
//! let steps = Tensor::scalar(7i64);
//! save_tensors(&path, &[("w".to_string(), w.t()), ("steps".to_string(), steps)]).unwrap();
//! let back = load_tensors(&path).unwrap(); // sorted by name
//! assert_eq!(back[0].0, "steps");
//! assert_eq!(back[0].1.item::<i64>(), 7);
//! assert_eq!(back[1].1.shape(), &[3, 2]);
//! assert_eq!(back[1].1.to_vec::<f32>(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
//! std::fs::remove_file(&path).unwrap();
//! ```

mod checkpoint;
mod resume;

pub use checkpoint::{
    load_tensors, load_tensors_with_metadata, save_tensors, save_tensors_with_metadata, Metadata,
};
pub use resume::TrainCheckpoint;
