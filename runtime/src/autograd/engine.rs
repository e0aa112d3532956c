//! The backward engine: reverse topological traversal with gradient accumulation.

use crate::autograd::grad_mode::{is_anomaly_enabled, is_grad_enabled, NoGradGuard};
use crate::autograd::node::{Edge, Node};
use crate::error::{or_panic, Error, Result};
use crate::layout::{contiguous_strides, fmt_shape, Layout};
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

/// The gradients of views of part of one input (narrow, slice, select: nodes with a
/// [`ViewGrad`]) that have arrived before the input's gradient is needed: each with the
/// view's layout within a contiguous tensor of the input's shape.
struct ViewParts {
    input_shape: Vec<usize>,
    parts: Vec<(Layout, Tensor)>,
}

/// `acc` seen through a view's layout (relative to a contiguous tensor of `acc`'s shape).
fn through(acc: &Tensor, layout: &Layout) -> Tensor {
    let mut l = layout.clone();
    l.offset += acc.layout().offset();
    acc.with_layout(l)
}

/// The backward of a view node (one with a [`ViewGrad`]) without `create_graph`: when
/// the input already has a gradient of its own (from a consumer that is not a view) that
/// the engine may write into, `g` is added into it through the view's layout; otherwise
/// `g` is kept with the view's layout until the input's gradient is needed ([`settle`]),
/// so that views which tile the input (a split, an RNN's steps) become one `cat` of their
/// gradients instead of a zero-filled buffer they are added into. Returns false (nothing
/// done) only for a gradient of another dtype than the parts kept before it; the node's
/// own backward then runs.
fn scatter_view_grad(
    grads: &mut HashMap<usize, Tensor>,
    pending: &mut HashMap<usize, ViewParts>,
    node: &Node,
    g: &Tensor,
) -> bool {
    let (Some(view), [Some(Edge::Node(input))]) = (&node.view, node.inputs.as_slice()) else {
        return false;
    };
    let k = key(input);
    let writable = |acc: &&Tensor| {
        reusable(acc) && acc.dtype() == g.dtype() && acc.shape() == view.input_shape
    };
    if let Some(acc) = grads.get(&k).filter(writable) {
        through(acc, &view.layout).add_(g);
        return true;
    }
    let entry = pending.entry(k).or_insert_with(|| ViewParts {
        input_shape: view.input_shape.clone(),
        parts: Vec::new(),
    });
    if entry
        .parts
        .first()
        .is_some_and(|(_, p)| p.dtype() != g.dtype())
    {
        return false;
    }
    entry.parts.push((view.layout.clone(), g.clone()));
    true
}

/// The gradient of node `k` once every consumer has delivered: its own gradient and the
/// view gradients kept for it ([`scatter_view_grad`]) together.
fn settle(
    grads: &mut HashMap<usize, Tensor>,
    pending: &mut HashMap<usize, ViewParts>,
    k: usize,
) -> Option<Tensor> {
    let own = grads.remove(&k);
    if pending.is_empty() {
        return own; // no view gradients kept at all: the common case costs no lookup
    }
    let Some(ViewParts { input_shape, parts }) = pending.remove(&k) else {
        return own;
    };
    let _mode = NoGradGuard::with(false);
    let dtype = parts[0].1.dtype();
    match own {
        Some(acc) if reusable(&acc) && acc.dtype() == dtype && acc.shape() == input_shape => {
            for (l, g) in &parts {
                through(&acc, l).add_(g);
            }
            Some(acc)
        }
        own => {
            let joined = join_views(&input_shape, &parts);
            Some(add_grads(own, joined))
        }
    }
}

/// A view's place in a contiguous tensor of `shape`, when it is a slab: every dim whole
/// but `d`, of which it takes `start..start + len` (a narrow), or the one index `start`
/// with `d` dropped (a select, `len` 1). Returns `(d, start, len, dropped)`.
fn slab(l: &Layout, shape: &[usize]) -> Option<(usize, usize, usize, bool)> {
    let cs = contiguous_strides(shape);
    // the view's dims, with the dropped one (if any) put back as size 1
    let fits = |d: usize, dropped: bool| -> Option<(usize, usize, usize, bool)> {
        let (mut vs, mut vst) = (l.shape.to_vec(), l.strides.to_vec());
        if dropped {
            vs.insert(d, 1);
            vst.insert(d, cs[d]);
        }
        let whole = (0..shape.len())
            .all(|i| i == d || (vs[i] == shape[i] && (vs[i] <= 1 || vst[i] == cs[i])));
        let len = vs[d];
        let stride_ok = len <= 1 || vst[d] == cs[d];
        let start = l.offset.checked_div(cs[d])?;
        (whole && stride_ok && start * cs[d] == l.offset && start + len <= shape[d])
            .then_some((d, start, len, dropped))
    };
    match shape.len().checked_sub(l.shape.len())? {
        0 => (0..shape.len()).find_map(|d| fits(d, false)),
        1 => (0..shape.len()).find_map(|d| fits(d, true)),
        _ => None,
    }
}

/// How [`join_views`] puts view gradients together.
#[derive(Debug, PartialEq, Eq)]
enum Join {
    /// The views tile the tensor along dim `d` (a split's parts, every step of an RNN):
    /// one `cat` of the parts in this order (`true`: the view dropped `d`, a select).
    Cat(usize, Vec<(usize, bool)>),
    /// Disjoint slabs with a gap: each copied into zeros.
    Copy,
    /// Anything else (overlapping or strided views): each added into zeros.
    Add,
}

/// The [`Join`] for views of parts of a contiguous tensor of `shape` with these layouts.
fn join_plan(shape: &[usize], layouts: &[&Layout]) -> Join {
    let Some(slabs) = layouts
        .iter()
        .map(|l| slab(l, shape))
        .collect::<Option<Vec<_>>>()
    else {
        return Join::Add;
    };
    let d = slabs[0].0;
    if slabs.iter().any(|s| s.0 != d) {
        return Join::Add;
    }
    let mut order: Vec<usize> = (0..slabs.len()).collect();
    order.sort_by_key(|&i| slabs[i].1);
    let end = |i: usize| slabs[i].1 + slabs[i].2;
    if !order.windows(2).all(|w| end(w[0]) <= slabs[w[1]].1) {
        return Join::Add;
    }
    let tiles = slabs[order[0]].1 == 0
        && order.windows(2).all(|w| end(w[0]) == slabs[w[1]].1)
        && order.last().is_some_and(|&i| end(i) == shape[d]);
    if tiles {
        Join::Cat(d, order.iter().map(|&i| (i, slabs[i].3)).collect())
    } else {
        Join::Copy
    }
}

/// When the gradients of views that tile a tensor of `shape` already lie where their
/// views do, in one storage (the attention kernels write the gradients of a packed
/// projection's q, k and v so), that storage seen as the tensor: no copy.
fn joined_in_place(shape: &[usize], parts: &[(Layout, Tensor)]) -> Option<Tensor> {
    let (l0, g0) = &parts[0];
    let base = g0.layout().offset().checked_sub(l0.offset)?;
    let in_place = parts.iter().all(|(l, g)| {
        let gl = g.layout();
        g.shares_storage(g0)
            && gl.offset() == base + l.offset
            && gl.shape() == l.shape()
            && (l.shape().iter().zip(l.strides()).zip(gl.strides()))
                .all(|((&n, a), b)| n <= 1 || a == b)
    });
    in_place.then(|| {
        let mut whole = Layout::contiguous(shape);
        whole.offset = base;
        g0.with_layout(whole)
    })
}

/// One tensor of `shape` from the gradients of views of parts of it (each added where
/// its view lies, zeros elsewhere), as [`join_plan`] says: views that tile `shape` are
/// one `cat`, every element written once and nothing zero-filled or read back (or no
/// copy at all when the gradients already lie in place, [`joined_in_place`]).
fn join_views(shape: &[usize], parts: &[(Layout, Tensor)]) -> Tensor {
    let layouts: Vec<&Layout> = parts.iter().map(|(l, _)| l).collect();
    let plan = join_plan(shape, &layouts);
    if let Join::Cat(d, order) = &plan {
        if let Some(t) = joined_in_place(shape, parts) {
            return t;
        }
        let pieces: Vec<Tensor> = order
            .iter()
            .map(|&(i, dropped)| match dropped {
                true => parts[i].1.unsqueeze(*d as isize),
                false => parts[i].1.clone(),
            })
            .collect();
        return Tensor::cat(&pieces, *d as isize);
    }
    let g0 = &parts[0].1;
    let acc = Tensor::zeros(shape, (g0.dtype(), g0.device()));
    for (l, g) in parts {
        match plan {
            Join::Copy => through(&acc, l).copy_(g), // zeros there: not read back
            _ => through(&acc, l).add_(g),
        };
    }
    acc
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
    let mut pending: HashMap<usize, ViewParts> = HashMap::new();
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
        let grad = settle(&mut grads, &mut pending, k);
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
                    scatter_view_grad(&mut grads, &mut pending, &node, &g)
                } =>
            {
                // the gradient is in (or kept for) the input's; the backward is not needed
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
        let Some(storage) = s.storage.upgrade() else {
            continue;
        };
        if storage.version() != s.version {
            return Err(Error::Autograd(format!(
                "one of the tensors needed for gradient computation has been modified by an inplace operation: a tensor of shape {} saved by `{}` (called at {}) is at version {}; expected version {}",
                fmt_shape(&s.shape),
                node.name,
                node.location,
                storage.version(),
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

#[cfg(test)]
mod tests {
    use super::{join_plan, slab, Join};
    use crate::autograd::grad;
    use crate::Tensor;

    /// `[3, 4, 5]` of distinct values: a contiguous non-leaf and its leaf.
    fn input() -> (Tensor, Tensor) {
        let leaf = Tensor::arange(0.0, 60.0, 1.0, crate::DType::F64)
            .view([3, 4, 5])
            .requires_grad_(true);
        let x = &leaf * 1.0;
        (leaf, x)
    }

    #[test]
    fn slabs_are_narrows_and_selects_of_one_dim() {
        let (_, x) = input();
        let s = [3, 4, 5];
        assert_eq!(slab(x.narrow(1, 1, 2).layout(), &s), Some((1, 1, 2, false)));
        assert_eq!(slab(x.select(0, 2).layout(), &s), Some((0, 2, 1, true)));
        assert_eq!(slab(x.select(2, 4).layout(), &s), Some((2, 4, 1, true)));
        assert_eq!(slab(x.narrow(2, 0, 1).layout(), &s), Some((2, 0, 1, false)));
        // strided, or part of two dims: not a slab
        assert_eq!(slab(x.try_slice(1, 0, 4, 2).unwrap().layout(), &s), None);
        assert_eq!(slab(x.narrow(0, 1, 1).narrow(1, 0, 2).layout(), &s), None);
        assert_eq!(slab(x.select(0, 1).select(0, 1).layout(), &s), None);
    }

    #[test]
    fn the_plan_is_a_cat_only_for_views_that_tile_one_dim() {
        let (_, x) = input();
        let s = [3, 4, 5];
        let plan = |views: &[Tensor]| {
            let ls: Vec<_> = views.iter().map(|v| v.layout()).collect();
            join_plan(&s, &ls)
        };
        // a split's parts, in any order; every select of a dim
        let parts = x.split(2, 1);
        assert_eq!(
            plan(&[parts[1].clone(), parts[0].clone()]),
            Join::Cat(1, vec![(1, false), (0, false)])
        );
        let steps: Vec<Tensor> = (0..3).rev().map(|t| x.select(0, t)).collect();
        assert_eq!(
            plan(&steps),
            Join::Cat(0, vec![(2, true), (1, true), (0, true)])
        );
        assert_eq!(
            plan(&[x.narrow(2, 0, 2), x.select(2, 2), x.narrow(2, 3, 2)]),
            Join::Cat(2, vec![(0, false), (1, true), (2, false)])
        );
        // a gap: copies into zeros; an overlap, two dims or a stride: adds
        assert_eq!(plan(&[x.narrow(1, 0, 1), x.narrow(1, 2, 2)]), Join::Copy);
        assert_eq!(plan(&[x.narrow(1, 0, 3), x.narrow(1, 2, 2)]), Join::Add);
        assert_eq!(plan(&[x.narrow(1, 0, 2), x.narrow(2, 0, 2)]), Join::Add);
        assert_eq!(
            plan(&[
                x.try_slice(1, 0, 4, 2).unwrap(),
                x.try_slice(1, 1, 4, 2).unwrap()
            ]),
            Join::Add
        );
    }

    /// Gradients that already lie where their views do in one buffer (as the attention
    /// kernels write a packed projection's) are joined without a copy: the buffer itself;
    /// the same values in separate tensors are joined by a cat.
    #[test]
    fn gradients_already_in_place_are_the_joined_gradient() {
        let (_, x) = input();
        let parts = x.split(2, 1);
        let buf = Tensor::arange(0.0, 60.0, 1.0, crate::DType::F64).view([3, 4, 5]) * 2.0;
        let in_place: Vec<Tensor> = (0..2).map(|i| buf.narrow(1, 2 * i, 2)).collect();
        let copies: Vec<Tensor> = in_place.iter().map(|t| t.contiguous() + 0.0).collect();
        for (gs, shared) in [(in_place, true), (copies, false)] {
            let g = grad(&parts, std::slice::from_ref(&x), Some(&gs), true, false).unwrap()[0]
                .clone()
                .unwrap();
            assert_eq!(g.shares_storage(&buf), shared);
            assert_eq!(g.to_vec::<f64>(), buf.to_vec::<f64>());
        }
        // in place but the storage's parts out of their views' places: a cat
        let swapped: Vec<Tensor> = (0..2).map(|i| buf.narrow(1, 2 - 2 * i, 2)).collect();
        let g = grad(
            &parts,
            std::slice::from_ref(&x),
            Some(&swapped),
            true,
            false,
        )
        .unwrap()[0]
            .clone()
            .unwrap();
        assert!(!g.shares_storage(&buf));
        let want = Tensor::cat(&[&swapped[0], &swapped[1]], 1);
        assert_eq!(g.to_vec::<f64>(), want.to_vec::<f64>());
    }

    /// Every way view gradients are put together gives what the views' own backward
    /// passes give (`create_graph` runs those instead of the engine's join), with and
    /// without a gradient of the input's own (a consumer that is not a view), one the
    /// engine may write into or not.
    #[test]
    fn joined_view_gradients_match_the_views_own_backward() {
        type Views = fn(&Tensor) -> Vec<Tensor>;
        let cases: [(&str, Views); 7] = [
            ("split", |x| x.split(2, 1)),
            ("selects", |x| (0..3).map(|t| x.select(0, t)).collect()),
            ("gap", |x| vec![x.narrow(1, 0, 1), x.narrow(1, 2, 2)]),
            ("overlap", |x| vec![x.narrow(1, 0, 3), x.narrow(1, 2, 2)]),
            ("two dims", |x| vec![x.narrow(1, 0, 2), x.narrow(2, 1, 3)]),
            ("strided", |x| {
                vec![
                    x.try_slice(1, 0, 4, 2).unwrap(),
                    x.try_slice(1, 1, 4, 2).unwrap(),
                ]
            }),
            ("one", |x| vec![x.select(1, 3)]),
        ];
        for (what, views) in cases {
            // the input's own gradient: none; one the engine may add into (a new
            // contiguous tensor); one it may not (sum_all's backward: an expanded view)
            for own in ["none", "writable", "expanded"] {
                let run = |create_graph: bool| {
                    let (leaf, x) = input();
                    let mut outs: Vec<Tensor> = views(&x)
                        .iter()
                        .enumerate()
                        // a distinct gradient per view, some of them transposed
                        .map(|(i, v)| match v.ndim() {
                            3 if i % 2 == 0 => v.transpose(0, 2) * (i + 1) as f64,
                            _ => v * (i + 1) as f64,
                        })
                        .map(|v| (&v * &v).sum_all())
                        .collect();
                    match own {
                        "writable" => outs.push((&x * 3.0).sum_all()),
                        "expanded" => outs.push(x.sum_all()),
                        _ => {}
                    }
                    let total = outs.iter().skip(1).fold(outs[0].clone(), |a, b| &a + b);
                    let g = grad(&[total], &[leaf], None, false, create_graph).unwrap();
                    g[0].as_ref().unwrap().to_vec::<f64>()
                };
                assert_eq!(run(false), run(true), "{what}, own gradient: {own}");
            }
        }
    }
}
