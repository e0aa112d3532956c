//! Flint's runtime: strided tensors on the CPU and, behind the cargo feature `cuda`, on
//! CUDA devices (module `cuda`); random streams, and the ops that the `flint` facade and the
//! macros build on.
//!
//! ```
//! use flint_runtime::{DType, Tensor};
//! let x = Tensor::randn([4, 3], DType::F32);
//! let w = Tensor::ones([3], DType::F32);
//! let y = (&x * &w).sum(-1, false).relu();
//! assert_eq!(y.shape(), &[4]);
//! ```
#![warn(missing_docs)]

pub mod autograd;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
pub mod device;
mod dispatch;
mod display;
pub mod dtype;
pub mod error;
pub mod io;
pub mod layout;
pub mod loss;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod random;
pub mod storage;
pub mod tensor;

pub use half;

pub use autograd::{no_grad, NoGradGuard};
pub use cpu::parallel::{num_threads, set_num_threads};
pub use cpu::pool::{cpu_cache_bytes, cpu_cache_limit, empty_cpu_cache, set_cpu_cache_limit};
pub use device::Device;
pub use dtype::{DType, Element, FloatElement, NumElement};
pub use error::{Error, Result};
pub use layout::Layout;
pub use ops::{
    causal_mask, All, GeluApprox, IndexRange, IntoIndices, IntoShapeSpec, Operand, ReduceDims,
    TensorIndex,
};
pub use random::{manual_seed, Generator};
pub use tensor::{Tensor, TensorOptions};
