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

/// A tensor saved for backward, with the storage version it had then. The node holds its
/// storage weakly: the backward formula holds what it reads, so a saved tensor is freed
/// as soon as the formula has run (and been dropped) and nothing else holds it, not when
/// the whole graph goes (PyTorch frees saved tensors as each node runs, too). A storage
/// that is gone cannot have been modified in place.
pub(crate) struct Saved {
    pub(crate) storage: std::sync::Weak<Storage>,
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

/// (debug builds) Every op that records a node is listed in `DIFFERENTIABLE_OPS`, which
/// the gradcheck suite covers.
fn debug_assert_listed(name: &str) {
    debug_assert!(
        super::DIFFERENTIABLE_OPS.contains(&name),
        "op `{name}` records a node but is missing from autograd::DIFFERENTIABLE_OPS"
    );
}

/// Whether an op on `inputs` records a node: grad mode is on and some input requires grad.
fn tracked(inputs: &[&Tensor]) -> bool {
    is_grad_enabled() && inputs.iter().any(|t| t.requires_grad())
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
    debug_assert_listed(name);
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
    if !tracked(inputs) {
        return out;
    }
    let node = Arc::new(new_node(
        &out,
        name,
        inputs,
        saved,
        view,
        Box::new(backward),
    ));
    out.set_grad_fn(Some(node));
    out
}

/// [`record`] for an op whose backward reads its output instead of its inputs (softmax,
/// log-softmax): `backward(g, y)` gets the output `y`, and the node keeps the output's
/// storage, not the inputs'. With `create_graph`, `y` is the output as a part of the
/// graph (its `grad_fn` is this node), so a formula written with it is differentiable
/// again, through this node, without the inputs: PyTorch's saved outputs. `saved` lists
/// the inputs the formula also reads (the output is saved in any case).
#[track_caller]
pub(crate) fn record_with_output(
    out: Tensor,
    name: &'static str,
    inputs: &[&Tensor],
    saved: &[&Tensor],
    backward: impl Fn(&Tensor, &Tensor) -> Vec<Option<Tensor>> + Send + Sync + 'static,
) -> Tensor {
    debug_assert_listed(name);
    if !tracked(inputs) {
        return out;
    }
    let data = out.detach();
    let mut keep: Vec<&Tensor> = saved.to_vec();
    keep.push(&out);
    let location = Location::caller();
    // the node holds itself only weakly (the output's handle in its backward would
    // otherwise keep it alive forever): while its backward runs, the engine holds it
    let node = Arc::new_cyclic(|me: &std::sync::Weak<Node>| {
        let me = me.clone();
        let formula = move |g: &Tensor| {
            let y = match me.upgrade() {
                Some(node) if is_grad_enabled() => {
                    let y = data.detach();
                    y.set_grad_fn(Some(node));
                    y
                }
                _ => data.clone(),
            };
            backward(g, &y)
        };
        let mut node = new_node(&out, name, inputs, &keep, None, Box::new(formula));
        node.location = location;
        node
    });
    out.set_grad_fn(Some(node));
    out
}

/// A node for `out` (see [`record_with_view`]), called at the caller's location.
#[track_caller]
fn new_node(
    out: &Tensor,
    name: &'static str,
    inputs: &[&Tensor],
    saved: &[&Tensor],
    view: Option<ViewGrad>,
    backward: BackwardFn,
) -> Node {
    let saved = saved
        .iter()
        .map(|t| Saved {
            storage: Arc::downgrade(t.storage()),
            version: t.version(),
            shape: t.shape().to_vec(),
        })
        .collect();
    Node {
        name,
        location: Location::caller(),
        inputs: inputs.iter().map(|t| t.grad_edge()).collect(),
        backward: Mutex::new(Some(backward)),
        saved,
        out_shape: out.shape().to_vec(),
        view,
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Tensor};
    use std::sync::Arc;

    /// An intermediate tensor that no backward formula reads is freed when its last
    /// handle is dropped, while the graph lives on: a kept handle would hold its storage
    /// until the backward ran (in attention, `scores * scale` kept the whole score tensor,
    /// and softmax its input as well as its output).
    #[test]
    fn the_graph_keeps_only_what_backward_formulas_read() {
        let x = Tensor::randn([4, 8], DType::F64).requires_grad_(true);
        let w = Tensor::randn([8], DType::F64);
        let mask = Tensor::ones([4, 8], DType::Bool).triu(1);
        let run = |drop_them: bool| {
            let s = &x * 2.0;
            let s1 = &s * 0.125; // a scalar factor: reads neither input
            let s2 = s1.masked_fill(&mask, f64::NEG_INFINITY); // reads the mask only
            let y = s2.softmax(-1); // reads its output only
            let l = y.log_softmax(0); // reads its output only
            let r = &l + &w; // reads nothing
            let q = &r - &y; // reads nothing
            let z = (&q * &q).sum_all(); // reads q (twice)
            let freed = [&s, &s1, &s2].map(|t| Arc::downgrade(t.storage()));
            let kept = [&y, &l, &q].map(|t| Arc::downgrade(t.storage()));
            let r_storage = Arc::downgrade(r.storage());
            if drop_them {
                drop((s, s1, s2, y, l, r, q));
                for (i, f) in freed.iter().enumerate() {
                    assert!(f.upgrade().is_none(), "intermediate {i} still alive");
                }
                assert!(r_storage.upgrade().is_none(), "the sum's input still alive");
                for (i, k) in kept.iter().enumerate() {
                    assert!(k.upgrade().is_some(), "saved tensor {i} freed");
                }
            }
            z.backward();
            x.grad().unwrap().to_f64_vec()
        };
        let all_kept = run(false);
        x.zero_grad();
        assert_eq!(run(true), all_kept);
        // and the gradient is the composed formulas' (no fused softmax)
        x.zero_grad();
        let s = (&x * 2.0 * 0.125).masked_fill(&mask, f64::NEG_INFINITY);
        let e = (&s - s.max(1, true).detach()).exp();
        let y = &e / e.sum(1, true);
        let l = &y - y.exp().sum(0, true).log();
        let q = &(&l + &w) - &y;
        (&q * &q).sum_all().backward();
        let want = x.grad().unwrap().to_f64_vec();
        for (a, b) in all_kept.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "{a} vs {b}");
        }
        // `where` reads its condition only
        x.zero_grad();
        let (a, b) = (&x * 1.5, &x * 0.5);
        let picked = a.where_(&mask, &b);
        let gone = [&a, &b].map(|t| Arc::downgrade(t.storage()));
        drop((a, b));
        assert!(
            gone.iter().all(|w| w.upgrade().is_none()),
            "where kept an input"
        );
        picked.sum_all().backward();
        let m = mask.to_dtype(DType::F64);
        let want = (&m * 1.5 + (1.0 - &m) * 0.5).to_f64_vec();
        assert_eq!(x.grad().unwrap().to_f64_vec(), want);
    }
}
