//! User-defined differentiable functions (PyTorch's `torch.autograd.Function`).

use crate::autograd::grad_mode::no_grad;
use crate::autograd::node::record_node;
use crate::tensor::Tensor;
use std::sync::Arc;

/// A differentiable function with a hand-written forward and backward.
///
/// `forward` runs with graph recording off; `backward` receives the inputs, the output
/// (detached) and the gradient of the output, and returns one gradient per input (`None`
/// for inputs that get none). Write `backward` with tensor ops and the function supports
/// higher-order gradients too. Inputs are checked for in-place modification before
/// `backward` runs, like built-in ops.
///
/// ```
/// use flint_runtime::autograd::{apply, Function};
/// use flint_runtime::{DType, Tensor};
///
/// /// `y = x³`, with the derivative written by hand.
/// struct Cube;
/// impl Function for Cube {
///     fn name(&self) -> &'static str {
///         "cube"
///     }
///     fn forward(&self, x: &[Tensor]) -> Tensor {
///         &x[0] * &x[0] * &x[0]
///     }
///     fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor) -> Vec<Option<Tensor>> {
///         vec![Some(g * x[0].square() * 3.0)]
///     }
/// }
///
/// let x = Tensor::from_vec(vec![2.0f64], [1]).requires_grad_(true);
/// let y = apply(Cube, &[&x]);
/// y.sum_all().backward();
/// assert_eq!(x.grad().unwrap().to_vec::<f64>(), vec![12.0]);
/// assert_eq!(y.grad_fn().unwrap().name(), "cube");
/// ```
pub trait Function: Send + Sync + 'static {
    /// The name shown in graphs, errors and anomaly reports.
    fn name(&self) -> &'static str;
    /// Computes the output (graph recording is off).
    fn forward(&self, inputs: &[Tensor]) -> Tensor;
    /// The gradient of each input, given the inputs, the output and the output's gradient.
    fn backward(&self, inputs: &[Tensor], output: &Tensor, grad: &Tensor) -> Vec<Option<Tensor>>;
}

/// Runs a [`Function`] on `inputs` and records its backward when an input requires grad.
#[track_caller]
pub fn apply<F: Function>(f: F, inputs: &[&Tensor]) -> Tensor {
    let owned: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
    let out = no_grad(|| f.forward(&owned));
    let y = out.detach();
    let f = Arc::new(f);
    let name = f.name();
    record_node(out, name, inputs, inputs, move |g| {
        f.backward(&owned, &y, g)
    })
}
