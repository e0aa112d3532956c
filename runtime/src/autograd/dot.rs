//! Export of a recorded graph to Graphviz DOT.

use crate::autograd::node::{Edge, Node};
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

/// The graph that produced `t`, as Graphviz DOT: one box per recorded op (its name and
/// output shape), one ellipse per leaf that requires grad (parameters, shaded), edges in
/// the direction data flowed. Render with `dot -Tpng graph.dot -o graph.png`.
///
/// ```
/// use flint_runtime::{autograd::to_dot, Tensor};
/// let w = Tensor::ones([3, 2], ()).requires_grad_(true);
/// let y = Tensor::ones([4, 3], ()).matmul(&w).relu().sum_all();
/// let dot = to_dot(&y);
/// assert!(dot.starts_with("digraph") && dot.contains("matmul") && dot.contains("[3, 2]"));
/// ```
pub fn to_dot(t: &Tensor) -> String {
    let mut out = String::from(
        "digraph autograd {\n  rankdir=BT;\n  node [fontname=\"monospace\", fontsize=10];\n",
    );
    let mut ids: HashMap<usize, String> = HashMap::new();
    let mut stack: Vec<Arc<Node>> = vec![];
    let root = match t.grad_fn() {
        Some(n) => n,
        None => {
            let _ = writeln!(
                out,
                "  t0 [label=\"leaf {:?}\", shape=ellipse];\n}}",
                t.shape()
            );
            return out;
        }
    };
    let node_id = |n: &Arc<Node>,
                   ids: &mut HashMap<usize, String>,
                   stack: &mut Vec<Arc<Node>>,
                   out: &mut String|
     -> String {
        let k = Arc::as_ptr(n) as usize;
        if let Some(id) = ids.get(&k) {
            return id.clone();
        }
        let id = format!("n{}", ids.len());
        let _ = writeln!(
            out,
            "  {id} [label=\"{}\\n{:?}\", shape=box];",
            n.name(),
            n.output_shape()
        );
        ids.insert(k, id.clone());
        stack.push(n.clone());
        id
    };
    let top = node_id(&root, &mut ids, &mut stack, &mut out);
    let _ = writeln!(
        out,
        "  out [label=\"output {:?}\", shape=plaintext];\n  {top} -> out;",
        t.shape()
    );
    let mut leaves: HashMap<usize, String> = HashMap::new();
    while let Some(n) = stack.pop() {
        let me = ids[&(Arc::as_ptr(&n) as usize)].clone();
        for e in n.inputs.iter().flatten() {
            let from = match e {
                Edge::Node(c) => node_id(c, &mut ids, &mut stack, &mut out),
                Edge::Leaf(l) => {
                    let k = l.impl_ptr();
                    let n_leaves = leaves.len();
                    leaves
                        .entry(k)
                        .or_insert_with(|| {
                            let id = format!("l{n_leaves}");
                            let _ = writeln!(out, "  {id} [label=\"parameter {:?}\", shape=ellipse, style=filled, fillcolor=lightblue];", l.shape());
                            id
                        })
                        .clone()
                }
            };
            let _ = writeln!(out, "  {from} -> {me};");
        }
    }
    out.push_str("}\n");
    out
}
