//! Tensor operations, one family per file.

mod creation;
pub(crate) mod elementwise;
mod inplace;
mod mask;
mod matmul;
mod reduce;
mod view;

pub use elementwise::{GeluApprox, Operand};
pub use mask::causal_mask;
pub use reduce::{All, ReduceDims};
pub use view::IntoShapeSpec;
