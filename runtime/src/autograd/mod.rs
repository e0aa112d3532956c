//! Define-by-run automatic differentiation.
//!
//! Every differentiable op records a [`Node`] on its output when grad mode is on and an
//! input requires grad; [`Tensor::backward`](crate::Tensor::backward) walks the recorded graph in reverse
//! topological order. Backward formulas are written with tensor ops, so running them
//! with `create_graph` records a graph of the gradient itself (higher-order gradients).
//!
//! ```
//! use flint_runtime::{DType, Tensor};
//! let x = Tensor::from_vec(vec![1.0f64, 2.0, 3.0], [3]).requires_grad_(true);
//! let y = (&x * &x).sum_all();
//! y.backward();
//! assert_eq!(x.grad().unwrap().to_vec::<f64>(), vec![2.0, 4.0, 6.0]);
//! ```

mod dot;
mod engine;
mod function;
mod grad_mode;
mod gradcheck;
mod node;

pub use dot::to_dot;
pub use engine::grad;
pub(crate) use engine::sum_grads;
pub use function::{apply, Function};
pub use grad_mode::{
    is_anomaly_enabled, is_grad_enabled, no_grad, set_anomaly_enabled, NoGradGuard,
};
pub use gradcheck::{gradcheck, gradgradcheck, GradcheckOptions};
pub use node::Node;
pub(crate) use node::{record, record_with_output, record_with_view, Edge, ViewGrad};

/// Every op that records a backward node. A debug build checks that each recorded node is
/// in this list, and the gradcheck suite checks that each entry here has a gradcheck case,
/// so no differentiable op goes untested silently.
pub const DIFFERENTIABLE_OPS: &[&str] = &[
    // elementwise
    "add",
    "sub",
    "mul",
    "div",
    "maximum",
    "minimum",
    "pow",
    "clamp",
    "neg",
    "abs",
    "sign",
    "relu",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "tanh",
    "sigmoid",
    "silu",
    "sin",
    "cos",
    "reciprocal",
    "floor",
    "ceil",
    "round",
    "erf",
    "gelu",
    "to_dtype",
    "to",
    "clone",
    // reductions
    "sum",
    "prod",
    "max",
    "min",
    // fused row kernels (cpu/rowwise.rs)
    "softmax",
    "log_softmax",
    "logsumexp",
    "layer_norm",
    // a linear layer with its bias added by the product (ops/matmul.rs)
    "linear",
    // fused batch norm (cpu/batchnorm.rs)
    "batch_norm",
    // inverted dropout, one node (nn/functional.rs; one kernel each way on CUDA)
    "dropout",
    // fused LSTM cell (cpu/lstm.rs)
    "lstm_cell",
    // fused LSTM layer over a whole sequence (cpu/lstm.rs)
    "lstm_layer",
    // fused convolution, one sample at a time (cpu/conv.rs)
    "conv",
    // fused cross-entropy (cpu/cross_entropy.rs)
    "cross_entropy",
    // fused scaled dot-product attention (cpu/attention.rs)
    "scaled_dot_product_attention",
    // views
    "view",
    "reshape",
    "permute",
    "transpose",
    "unsqueeze",
    "squeeze",
    "expand",
    "narrow",
    "slice",
    "select",
    "slice_backward",
    // masks
    "where",
    "masked_fill",
    // indexing
    "index_select",
    "index_add",
    "gather",
    "scatter_add",
    "cat",
    "masked_select",
    // linear algebra
    "matmul",
    // sliding windows and padding
    "im2col",
    "col2im",
    "pad",
];
