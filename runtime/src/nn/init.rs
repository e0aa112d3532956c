//! Parameter initialisation with PyTorch's default schemes, drawn from the global
//! generator (seed it with [`manual_seed`](crate::manual_seed) for reproducible models).
//!
//! ```
//! use flint_runtime::nn::init;
//! let w = init::kaiming_uniform([8, 4], 4, ());
//! let bound = 1.0 / 2.0; // 1/sqrt(fan_in)
//! assert!(w.to_vec::<f32>().iter().all(|v| v.abs() <= bound));
//! assert!(w.requires_grad());
//! ```

use crate::random::with_global_generator;
use crate::tensor::{Tensor, TensorOptions};

/// A parameter: a leaf tensor that requires gradients.
pub fn param(t: Tensor) -> Tensor {
    t.detach().requires_grad_(true)
}

/// A parameter with values uniform in `[-bound, bound)`.
pub fn uniform(shape: impl AsRef<[usize]>, bound: f64, opts: impl Into<TensorOptions>) -> Tensor {
    param(with_global_generator(|g| {
        g.uniform(shape, -bound, bound, opts)
    }))
}

/// PyTorch's default for `Linear`/`Conv` weights and biases:
/// `kaiming_uniform_(a = √5)`, that is uniform in `±1/√fan_in`.
pub fn kaiming_uniform(
    shape: impl AsRef<[usize]>,
    fan_in: usize,
    opts: impl Into<TensorOptions>,
) -> Tensor {
    uniform(shape, 1.0 / (fan_in.max(1) as f64).sqrt(), opts)
}

/// Xavier/Glorot uniform: `±√(6 / (fan_in + fan_out))`, as `MultiheadAttention`'s
/// `in_proj_weight` is initialised.
pub fn xavier_uniform(
    shape: impl AsRef<[usize]>,
    fan_in: usize,
    fan_out: usize,
    opts: impl Into<TensorOptions>,
) -> Tensor {
    uniform(shape, (6.0 / (fan_in + fan_out).max(1) as f64).sqrt(), opts)
}

/// A parameter with standard normal values (`Embedding`'s default).
pub fn normal(shape: impl AsRef<[usize]>, std: f64, opts: impl Into<TensorOptions>) -> Tensor {
    param(with_global_generator(|g| g.normal(shape, 0.0, std, opts)))
}

/// A parameter of zeros.
pub fn zeros(shape: impl AsRef<[usize]>, opts: impl Into<TensorOptions>) -> Tensor {
    param(Tensor::zeros(shape, opts))
}

/// A parameter of ones.
pub fn ones(shape: impl AsRef<[usize]>, opts: impl Into<TensorOptions>) -> Tensor {
    param(Tensor::ones(shape, opts))
}
