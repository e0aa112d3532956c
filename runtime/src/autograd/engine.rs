//! The backward engine: reverse topological traversal with gradient accumulation.

use crate::autograd::grad_mode::{is_anomaly_enabled, is_grad_enabled, NoGradGuard};
use crate::autograd::node::{Edge, Node};
use crate::error::{or_panic, Error, Result};
use crate::layout::fmt_shape;
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::sync::Arc;

fn key(n: &Arc<Node>) -> usize {
    Arc::as_ptr(n) as usize
}

fn add_grads(a: Option<Tensor>, b: Tensor) -> Tensor {
    match a {
        Some(a) => sum_grads(a, b),
        None => b,
    }
}

/// True when `t` is a buffer the engine may add into: held by nobody else, contiguous,
/// and not part of a graph.
fn reusable(t: &Tensor) -> bool {
    t.is_exclusive() && t.layout().is_contiguous() && t.grad_fn().is_none() && !t.requires_grad()
}

/// `a + b` for two gradients of one tensor. With grad mode off (no `create_graph`), the
/// sum is written into whichever of the two buffers nobody else holds, instead of a new
/// tensor: accumulating the gradient of a tensor used `n` times then costs `n` adds and
/// no allocation.
pub(crate) fn sum_grads(a: Tensor, b: Tensor) -> Tensor {
    if !is_grad_enabled() && a.dtype() == b.dtype() && a.shape() == b.shape() {
        if reusable(&a) {
            a.add_(&b);
            return a;
        }
        if reusable(&b) {
            b.add_(&a);
            return b;
        }
    }
    &a + &b
}

/// The backward of a view node (one with a [`ViewGrad`]) without `create_graph`: adds
/// `g` into the pending gradient of the view's input through the view's layout, creating
/// that gradient as zeros first (and then copying `g` in rather than adding it). Returns false (nothing done) when the input's pending
/// gradient is shared or of another layout; the node's own backward then runs.
fn scatter_view_grad(grads: &mut HashMap<usize, Tensor>, node: &Node, g: &Tensor) -> bool {
    let (Some(view), [Some(Edge::Node(input))]) = (&node.view, node.inputs.as_slice()) else {
        return false;
    };
    let k = key(input);
    let (acc, fresh) = match grads.remove(&k) {
        None => (
            Tensor::zeros(view.input_shape.as_slice(), (g.dtype(), g.device())),
            true,
        ),
        Some(acc)
            if reusable(&acc)
                && acc.dtype() == g.dtype()
                && acc.shape() == view.input_shape.as_slice() =>
        {
            (acc, false)
        }
        Some(acc) => {
            grads.insert(k, acc);
            return false;
        }
    };
    let mut layout = view.layout.clone();
    layout.offset += acc.layout().offset();
    let dst = acc.with_layout(layout);
    if fresh {
        dst.copy_(g); // the region is zeros: a copy, without reading them back
    } else {
        dst.add_(g);
    }
    grads.insert(k, acc);
    true
}

/// What to do with the gradients that reach leaves.
enum Sink<'a> {
    /// Accumulate into `.grad` (`backward`).
    Accumulate,
    /// Capture the gradients of these tensors and touch no `.grad` (`grad`).
    Capture(&'a [Tensor], Vec<Option<Tensor>>),
}

fn check_anomaly(node: &Node, g: &Tensor) -> Result<()> {
    if is_anomaly_enabled() && g.dtype().is_float() {
        let bad = g.to_f64_vec().iter().any(|v| !v.is_finite());
        if bad {
            return Err(Error::Autograd(format!(
                "anomaly: the backward of `{}` (called at {}) produced a NaN or infinite gradient",
                node.name, node.location
            )));
        }
    }
    Ok(())
}

fn run(
    roots: &[(Tensor, Tensor)],
    retain_graph: bool,
    create_graph: bool,
    sink: &mut Sink<'_>,
) -> Result<()> {
    let mut grads: HashMap<usize, Tensor> = HashMap::new();
    let mut start: Vec<Arc<Node>> = vec![];
    for (root, g) in roots {
        if g.shape() != root.shape() {
            return Err(Error::Autograd(format!(
                "gradient of shape {} given for a tensor of shape {}",
                fmt_shape(g.shape()),
                fmt_shape(root.shape())
            )));
        }
        match root.grad_fn() {
            Some(n) => {
                let k = key(&n);
                let prev = grads.remove(&k);
                grads.insert(k, add_grads(prev, g.clone()));
                start.push(n);
            }
            None if root.requires_grad() => deliver_leaf(root, g.clone(), sink),
            None => {
                return Err(Error::Autograd(format!(
                    "tensor of shape {} does not require grad and has no grad_fn (was it computed under no_grad, or from tensors that do not require grad?)",
                    fmt_shape(root.shape())
                )))
            }
        }
    }

    // dependency counts over the reachable graph
    let mut deps: HashMap<usize, usize> = HashMap::new();
    let mut seen: HashMap<usize, Arc<Node>> = HashMap::new();
    let mut stack: Vec<Arc<Node>> = start.clone();
    for n in &start {
        seen.insert(key(n), n.clone());
    }
    while let Some(n) = stack.pop() {
        for e in n.inputs.iter().flatten() {
            if let Edge::Node(c) = e {
                *deps.entry(key(c)).or_insert(0) += 1;
                if seen.insert(key(c), c.clone()).is_none() {
                    stack.push(c.clone());
                }
            }
        }
    }
    let mut ready: Vec<Arc<Node>> = seen
        .values()
        .filter(|n| deps.get(&key(n)).copied().unwrap_or(0) == 0)
        .cloned()
        .collect();

    while let Some(node) = ready.pop() {
        let k = key(&node);
        let grad = grads.remove(&k);
        if let (Some(g), Sink::Capture(targets, out)) = (&grad, &mut *sink) {
            for (i, t) in targets.iter().enumerate() {
                if t.grad_fn().is_some_and(|f| key(&f) == k) {
                    out[i] = Some(add_grads(out[i].take(), g.clone()));
                }
            }
        }
        let input_grads = match grad {
            Some(g)
                if !create_graph && node.view.is_some() && {
                    let _mode = NoGradGuard::with(false);
                    scatter_view_grad(&mut grads, &node, &g)
                } =>
            {
                // the gradient is already in the input's; the backward is not needed
                check_anomaly(&node, &g)?;
                release_backward(&node, retain_graph)?;
                Some(vec![None])
            }
            Some(g) => Some(call_backward(&node, &g, retain_graph, create_graph)?),
            None => None,
        };
        for (i, e) in node.inputs.iter().enumerate() {
            let Some(e) = e else { continue };
            let g = input_grads
                .as_ref()
                .and_then(|v| v.get(i).cloned().flatten());
            match e {
                Edge::Node(c) => {
                    let ck = key(c);
                    if let Some(g) = g {
                        let prev = grads.remove(&ck);
                        let _mode = NoGradGuard::with(create_graph);
                        grads.insert(ck, add_grads(prev, g));
                    }
                    let d = deps.get_mut(&ck).expect("dependency counted");
                    *d -= 1;
                    if *d == 0 {
                        ready.push(c.clone());
                    }
                }
                Edge::Leaf(t) => {
                    if let Some(g) = g {
                        let _mode = NoGradGuard::with(create_graph);
                        deliver_leaf(t, g, sink);
                    }
                }
            }
        }
    }
    Ok(())
}

fn call_backward(
    node: &Node,
    g: &Tensor,
    retain_graph: bool,
    create_graph: bool,
) -> Result<Vec<Option<Tensor>>> {
    for s in &node.saved {
        if s.storage.version() != s.version {
            return Err(Error::Autograd(format!(
                "one of the tensors needed for gradient computation has been modified by an inplace operation: a tensor of shape {} saved by `{}` (called at {}) is at version {}; expected version {}",
                fmt_shape(&s.shape),
                node.name,
                node.location,
                s.storage.version(),
                s.version
            )));
        }
    }
    let mut slot = node.backward.lock().unwrap_or_else(|p| p.into_inner());
    let Some(f) = slot.as_ref() else {
        return Err(freed_graph(node));
    };
    let out = {
        let _mode = NoGradGuard::with(create_graph);
        f(g)
    };
    if !retain_graph {
        *slot = None;
    }
    for g in out.iter().flatten() {
        check_anomaly(node, g)?;
    }
    Ok(out)
}

fn freed_graph(node: &Node) -> Error {
    Error::Autograd(format!(
        "trying to backward through the graph a second time (through `{}` called at {}): its saved tensors were freed after the first backward; pass retain_graph = true to the first backward if you need to",
        node.name, node.location
    ))
}

/// Frees a node's backward as running it would (unless the graph is retained), with the
/// same error for a second pass through a freed graph.
fn release_backward(node: &Node, retain_graph: bool) -> Result<()> {
    let mut slot = node.backward.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        return Err(freed_graph(node));
    }
    if !retain_graph {
        *slot = None;
    }
    Ok(())
}

fn deliver_leaf(t: &Tensor, g: Tensor, sink: &mut Sink<'_>) {
    match sink {
        Sink::Accumulate => t.accumulate_grad(g),
        Sink::Capture(targets, out) => {
            for (i, x) in targets.iter().enumerate() {
                if x.same_tensor(t) {
                    out[i] = Some(add_grads(out[i].take(), g.clone()));
                }
            }
        }
    }
}

pub(crate) fn backward(
    roots: &[(Tensor, Tensor)],
    retain_graph: bool,
    create_graph: bool,
) -> Result<()> {
    run(
        roots,
        retain_graph || create_graph,
        create_graph,
        &mut Sink::Accumulate,
    )
}

/// Gradients of `outputs` (weighted by `grad_outputs`, ones for scalars when `None`) with
/// respect to `inputs`, without touching any `.grad` (like `torch.autograd.grad`).
/// With `create_graph`, the gradients are themselves differentiable.
///
/// Returns `Ok(None)` for an input the outputs do not depend on.
///
/// ```
/// use flint_runtime::{autograd, Tensor};
/// let x = Tensor::from_vec(vec![3.0f64], [1]).requires_grad_(true);
/// let y = (&x * &x * &x).sum_all();
/// let g = autograd::grad(&[y], &[x.clone()], None, true, true).unwrap();
/// let g = g[0].clone().unwrap();           // 3x² = 27
/// assert_eq!(g.to_vec::<f64>(), vec![27.0]);
/// let h = autograd::grad(&[g.sum_all()], &[x], None, false, false).unwrap();
/// assert_eq!(h[0].as_ref().unwrap().to_vec::<f64>(), vec![18.0]); // 6x
/// ```
pub fn grad(
    outputs: &[Tensor],
    inputs: &[Tensor],
    grad_outputs: Option<&[Tensor]>,
    retain_graph: bool,
    create_graph: bool,
) -> Result<Vec<Option<Tensor>>> {
    let roots = seed_grads(outputs, grad_outputs)?;
    let mut sink = Sink::Capture(inputs, vec![None; inputs.len()]);
    run(
        &roots,
        retain_graph || create_graph,
        create_graph,
        &mut sink,
    )?;
    match sink {
        Sink::Capture(_, out) => Ok(out),
        Sink::Accumulate => unreachable!("grad captures"),
    }
}

fn seed_grads(
    outputs: &[Tensor],
    grad_outputs: Option<&[Tensor]>,
) -> Result<Vec<(Tensor, Tensor)>> {
    outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let g = match grad_outputs.and_then(|g| g.get(i)) {
                Some(g) => g.clone(),
                None if o.numel() == 1 => o.ones_like(),
                None => {
                    return Err(Error::Autograd(format!(
                        "grad can be implicitly created only for scalar outputs, got shape {}; pass a gradient (backward_with)",
                        fmt_shape(o.shape())
                    )))
                }
            };
            Ok((o.clone(), g))
        })
        .collect()
}

impl Tensor {
    /// Computes the gradient of this scalar with respect to every leaf that requires grad
    /// and accumulates it into their [`Tensor::grad`]; frees the graph.
    ///
    /// Panics on a non-scalar (use [`Tensor::backward_with`]), a freed graph, or a saved
    /// tensor modified in place; see [`Tensor::try_backward`].
    #[track_caller]
    pub fn backward(&self) {
        or_panic(self.try_backward(None, false, false))
    }

    /// Backward with an explicit gradient of this tensor's shape.
    #[track_caller]
    pub fn backward_with(&self, grad: &Tensor) {
        or_panic(self.try_backward(Some(grad), false, false))
    }

    /// The fallible, fully optioned backward: `grad` (ones for a scalar when `None`),
    /// `retain_graph` to allow another backward, `create_graph` to make the gradients
    /// differentiable.
    pub fn try_backward(
        &self,
        grad: Option<&Tensor>,
        retain_graph: bool,
        create_graph: bool,
    ) -> Result<()> {
        let g = grad.map(std::slice::from_ref);
        let roots = seed_grads(std::slice::from_ref(self), g)?;
        backward(&roots, retain_graph, create_graph)
    }
}
