//! # Flint
//!
//! Deep learning for Rust in which models are declared with procedural macros and shape
//! errors surface at compile time. This facade re-exports the runtime (tensors, ops,
//! random streams) and the macros; generated code reaches everything through `flint::…`.
//!
//! ```
//! use flint::prelude::*;
//! manual_seed(0);
//! let x = Tensor::randn([2, 3], DType::F32);
//! let y = x.softmax(-1);
//! assert_eq!(y.shape(), &[2, 3]);
//! ```

// The derive macro `Module` and the trait `Module` share a name (different namespaces),
// like serde's `Serialize`: `use flint::Module;` brings both.
pub use flint_macros::*;
pub use flint_runtime::nn::Module;
pub use flint_runtime::*;
/// Training tooling: progress bars, run logs (CSV and TensorBoard), curves as PNG.
pub use flint_train as train;

// Generated code names `::flint::…`; this lets the facade's own tests use the macros.
extern crate self as flint;

/// The names most programs need: `use flint::prelude::*;`.
pub mod prelude {
    pub use flint_macros::Module;
    pub use flint_runtime::nn::{self, Forward, Module, ModuleExt};
    pub use flint_runtime::optim::{self, Optimizer};
    pub use flint_runtime::{
        causal_mask, manual_seed, All, DType, Device, Error, GeluApprox, Generator, Result, Tensor,
    };
}

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
