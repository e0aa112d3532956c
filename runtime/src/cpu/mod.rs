//! The CPU backend: strided iteration, parallel loops and the kernels on host buffers.

pub(crate) mod attention;
pub(crate) mod batchnorm;
pub(crate) mod conv;
pub(crate) mod convert;
pub(crate) mod cross_entropy;
pub(crate) mod lstm;
pub(crate) mod map;
pub mod matmul;
pub mod parallel;
pub mod pool;
pub(crate) mod reduce;
pub(crate) mod rowwise;
pub(crate) mod sgemm;
pub(crate) mod strided;
pub(crate) mod vmath;
