//! Tensor operations, one family per file.

mod creation;
pub(crate) mod elementwise;
mod index;
pub mod indexing;
mod inplace;
mod mask;
pub(crate) mod matmul;
mod pad;
mod reduce;
mod view;
pub(crate) mod window;

pub use elementwise::{GeluApprox, Operand};
pub use indexing::{IndexRange, IntoIndices, TensorIndex};
pub use mask::causal_mask;
pub use reduce::{All, ReduceDims};
pub use view::IntoShapeSpec;
