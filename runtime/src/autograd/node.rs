//! Graph nodes and how ops record them.

use crate::autograd::grad_mode::is_grad_enabled;
use crate::storage::Storage;
use crate::tensor::Tensor;
use std::panic::Location;
use std::sync::{Arc, Mutex};

/// The backward formula of a node: gradient of the output → gradient of each input
/// (`None` where an input gets none).
pub(crate) type BackwardFn = Box<dyn Fn(&Tensor) -> Vec<Option<Tensor>> + Send + Sync>;

/// Where the gradient for one input of a node goes.
#[derive(Clone)]
pub(crate) enum Edge {
    /// Into the node that produced the input.
    Node(Arc<Node>),
    /// Into the `.grad` of a leaf tensor.
    Leaf(Tensor),
}

/// A tensor saved for backward, with the storage version it had then.
pub(crate) struct Saved {
    pub(crate) storage: Arc<Storage>,
    pub(crate) version: u64,
    pub(crate) shape: Vec<usize>,
}

/// One recorded op: its name, where it was called, the edges to its inputs and its
/// backward formula (dropped once run, unless the graph is retained).
pub struct Node {
    pub(crate) name: &'static str,
    pub(crate) location: &'static Location<'static>,
    pub(crate) inputs: Vec<Option<Edge>>,
    pub(crate) backward: Mutex<Option<BackwardFn>>,
    pub(crate) saved: Vec<Saved>,
    pub(crate) out_shape: Vec<usize>,
    /// Set for a view of part of a contiguous input (see [`ViewGrad`]).
    pub(crate) view: Option<ViewGrad>,
}

/// How a view's gradient lands in its input's: the view's layout within a contiguous
/// buffer of the input's shape. The engine puts the gradients of all such views of one
/// input together itself instead of calling each view's backward, which allocates a zero
/// tensor of the whole input per view (quadratic for the `T` steps an RNN selects out of
/// one `[T, B, G]` projection): views that tile the input (a split's parts) become one
/// `cat`, others are written into one buffer (see `engine::join_views`). Only views that
/// leave elements out (narrow, slice, select) have one: the backward of a view of every
/// element (reshape, permute, transpose) is a re-view of the gradient, which costs nothing.
pub(crate) struct ViewGrad {
    /// The output's layout relative to a contiguous input.
    pub(crate) layout: crate::layout::Layout,
    /// The input's shape.
    pub(crate) input_shape: Vec<usize>,
}

impl Node {
    /// The op that recorded this node, e.g. `"mul"`.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// Where the op was called.
    pub fn location(&self) -> &'static Location<'static> {
        self.location
    }
    /// Shape of the op's output.
    pub fn output_shape(&self) -> &[usize] {
        &self.out_shape
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}Backward (at {})", self.name, self.location)
    }
}

/// Records `name` on `out` when grad mode is on and some input requires grad.
///
/// `saved` lists the tensors the backward formula reads (an in-place write to one of them
/// afterwards makes backward fail rather than return a wrong gradient). Returns `out`.
#[track_caller]
pub(crate) fn record(
    out: Tensor,
    name: &'static str,
    inputs: &[&Tensor],
    saved: &[&Tensor],
    backward: impl Fn(&Tensor) -> Vec<Option<Tensor>> + Send + Sync + 'static,
) -> Tensor {
    debug_assert!(
        super::DIFFERENTIABLE_OPS.contains(&name),
        "op `{name}` records a node but is missing from autograd::DIFFERENTIABLE_OPS"
    );
    record_node(out, name, inputs, saved, backward)
}

/// [`record`] for any name (user-defined functions).
#[track_caller]
pub(crate) fn record_node(
    out: Tensor,
    name: &'static str,
    inputs: &[&Tensor],
    saved: &[&Tensor],
    backward: impl Fn(&Tensor) -> Vec<Option<Tensor>> + Send + Sync + 'static,
) -> Tensor {
    record_with_view(out, name, inputs, saved, None, backward)
}

/// [`record_node`] with the [`ViewGrad`] of a view op.
#[track_caller]
pub(crate) fn record_with_view(
    out: Tensor,
    name: &'static str,
    inputs: &[&Tensor],
    saved: &[&Tensor],
    view: Option<ViewGrad>,
    backward: impl Fn(&Tensor) -> Vec<Option<Tensor>> + Send + Sync + 'static,
) -> Tensor {
    if !is_grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
        return out;
    }
    let edges = inputs.iter().map(|t| t.grad_edge()).collect();
    let saved = saved
        .iter()
        .map(|t| Saved {
            storage: t.storage().clone(),
            version: t.version(),
            shape: t.shape().to_vec(),
        })
        .collect();
    let node = Arc::new(Node {
        name,
        location: Location::caller(),
        inputs: edges,
        backward: Mutex::new(Some(Box::new(backward))),
        saved,
        out_shape: out.shape().to_vec(),
        view,
    });
    out.set_grad_fn(Some(node));
    out
}
