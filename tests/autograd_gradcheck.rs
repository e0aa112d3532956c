//! gradcheck (and gradgradcheck where twice differentiable) on every differentiable op,
//! with non-contiguous and broadcast inputs. `every_differentiable_op_is_covered` fails
//! when an op in `autograd::DIFFERENTIABLE_OPS` has no case here.

use flint::autograd::{gradcheck, gradgradcheck, GradcheckOptions, DIFFERENTIABLE_OPS};
use flint::loss::{CrossEntropy, Reduction};
use flint::{DType, GeluApprox, Generator, Tensor};

/// A differentiable function of some tensors.
type Func = Box<dyn Fn(&[Tensor]) -> Tensor>;
/// A unary op and whether it needs positive inputs.
type Unary = (&'static str, fn(&Tensor) -> Tensor, bool);
/// Name, function, inputs, and whether to check second derivatives too.
type Case = (&'static str, Func, Vec<Tensor>, bool);

/// A non-contiguous [r, c] f64 tensor (a transposed view).
fn nc(g: &mut Generator, r: usize, c: usize) -> Tensor {
    g.randn([c, r], DType::F64).t()
}

/// Values kept away from 0 (for log, sqrt, div, pow).
fn pos(g: &mut Generator, shape: &[usize]) -> Tensor {
    g.uniform(shape, 0.5, 2.0, DType::F64)
}

fn cases() -> Vec<Case> {
    let mut g = Generator::new(7);
    let mut v: Vec<Case> = vec![];
    let mut add = |name: &'static str, f: Func, inputs: Vec<Tensor>, twice: bool| {
        v.push((name, f, inputs, twice));
    };
    // broadcasting binary ops: [3,4] (non-contiguous) with [4]
    add(
        "add",
        Box::new(|x| &x[0] + &x[1]),
        vec![nc(&mut g, 3, 4), g.randn([4], DType::F64)],
        true,
    );
    add(
        "sub",
        Box::new(|x| &x[0] - &x[1]),
        vec![nc(&mut g, 3, 4), g.randn([3, 1], DType::F64)],
        true,
    );
    add(
        "mul",
        Box::new(|x| &x[0] * &x[1]),
        vec![nc(&mut g, 3, 4), g.randn([4], DType::F64)],
        true,
    );
    add(
        "div",
        Box::new(|x| &x[0] / &x[1]),
        vec![nc(&mut g, 3, 4), pos(&mut g, &[3, 1])],
        true,
    );
    add(
        "maximum",
        Box::new(|x| x[0].maximum(&x[1])),
        vec![nc(&mut g, 3, 4), g.randn([4], DType::F64)],
        true,
    );
    add(
        "minimum",
        Box::new(|x| x[0].minimum(&x[1])),
        vec![nc(&mut g, 3, 4), g.randn([4], DType::F64)],
        true,
    );
    add(
        "pow",
        Box::new(|x| x[0].pow(&x[1])),
        vec![pos(&mut g, &[3, 4]).t(), g.randn([3], DType::F64)],
        true,
    );
    add(
        "clamp",
        Box::new(|x| x[0].clamp(-0.5, 0.7)),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    let unary: Vec<Unary> = vec![
        ("neg", |t| t.neg(), false),
        ("abs", |t| t.abs(), false),
        ("sign", |t| t.sign(), false),
        ("relu", |t| t.relu(), false),
        ("exp", |t| t.exp(), false),
        ("tanh", |t| t.tanh(), false),
        ("sigmoid", |t| t.sigmoid(), false),
        ("silu", |t| t.silu(), false),
        ("sin", |t| t.sin(), false),
        ("cos", |t| t.cos(), false),
        ("floor", |t| t.floor(), false),
        ("ceil", |t| t.ceil(), false),
        ("round", |t| t.round(), false),
        ("erf", |t| t.erf(), false),
        (
            "gelu",
            |t| t.gelu(GeluApprox::None) + t.gelu(GeluApprox::Tanh),
            false,
        ),
        ("log", |t| t.log(), true),
        ("sqrt", |t| t.sqrt(), true),
        ("rsqrt", |t| t.rsqrt(), true),
        ("reciprocal", |t| t.reciprocal(), true),
    ];
    for (name, f, positive) in unary {
        // keep inputs off the kinks of abs/relu/sign/floor at 0 and integers
        let x = if positive {
            pos(&mut g, &[4, 3]).t()
        } else {
            nc(&mut g, 3, 4) * 0.9 + 0.05
        };
        add(name, Box::new(move |x| f(&x[0])), vec![x], true);
    }
    add(
        "to_dtype",
        Box::new(|x| x[0].to_dtype(DType::F32).to_dtype(DType::F64) * 2.0),
        vec![nc(&mut g, 2, 3)],
        true,
    );
    add(
        "clone",
        Box::new(|x| x[0].deep_clone() * &x[0]),
        vec![nc(&mut g, 2, 3)],
        true,
    );
    // reductions
    add(
        "sum",
        Box::new(|x| x[0].sum(1, false) + x[0].sum([0, 1], true)),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    add(
        "prod",
        Box::new(|x| x[0].prod(0, true)),
        vec![pos(&mut g, &[3, 4])],
        true,
    );
    add(
        "max",
        Box::new(|x| x[0].max(-1, false)),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    add(
        "min",
        Box::new(|x| x[0].min(0, true)),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    // views
    add(
        "view",
        Box::new(|x| x[0].view([6, 2]) * 1.0),
        vec![g.randn([3, 4], DType::F64)],
        true,
    );
    add(
        "reshape",
        Box::new(|x| x[0].reshape([2, 6]).square()),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    add(
        "permute",
        Box::new(|x| x[0].permute([2, 0, 1]).square()),
        vec![g.randn([2, 3, 4], DType::F64)],
        true,
    );
    add(
        "transpose",
        Box::new(|x| x[0].transpose(0, 1).square()),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    add(
        "unsqueeze",
        Box::new(|x| x[0].unsqueeze(1).square()),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    add(
        "squeeze",
        Box::new(|x| x[0].squeeze().square() + x[0].squeeze_dim(1).sum_all()),
        vec![g.randn([3, 1, 4], DType::F64)],
        true,
    );
    add(
        "expand",
        Box::new(|x| x[0].expand([2, 3, 4]).square()),
        vec![g.randn([3, 1], DType::F64)],
        true,
    );
    add(
        "narrow",
        Box::new(|x| x[0].narrow(1, 1, 2).square()),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    add(
        "slice",
        Box::new(|x| x[0].try_slice(1, 0, 4, 2).map(|t| t.square()).unwrap()),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    add(
        "select",
        Box::new(|x| x[0].select(0, -1).square()),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    add(
        "slice_backward",
        Box::new(|x| x[0].narrow(0, 1, 2).exp()),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    // masks
    let m = Generator::new(3).bernoulli([3, 4], 0.5);
    let m2 = m.clone();
    add(
        "where",
        Box::new(move |x| x[0].where_(&m, &x[1])),
        vec![nc(&mut g, 3, 4), g.randn([4], DType::F64)],
        true,
    );
    add(
        "masked_fill",
        Box::new(move |x| x[0].masked_fill(&m2.narrow(0, 0, 1), 0.5).square()),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    // matmul: 2-D with a transposed input, 1-D on either side, broadcast batches
    add(
        "matmul",
        Box::new(|x| x[0].matmul(&x[1])),
        vec![nc(&mut g, 3, 4), nc(&mut g, 4, 2)],
        true,
    );
    add(
        "matmul(vec)*",
        Box::new(|x| x[0].matmul(&x[1]).sum_all() + x[1].matmul(&x[2]).prod(0, false)),
        vec![
            g.randn([3], DType::F64),
            g.randn([3, 4], DType::F64),
            g.randn([4], DType::F64),
        ],
        true,
    );
    add(
        "matmul(batched)*",
        Box::new(|x| x[0].matmul(&x[1])),
        vec![
            g.randn([2, 1, 3, 4], DType::F64),
            g.randn([3, 4, 2], DType::F64),
        ],
        true,
    );
    add(
        "matmul(dot)*",
        Box::new(|x| x[0].matmul(&x[1])),
        vec![
            g.randn([5], DType::F64),
            g.randn([5], DType::F64).narrow(0, 0, 5),
        ],
        true,
    );
    // indexing
    let idx = Tensor::from_vec(vec![2i64, 0, 2], [3]);
    add(
        "index_select",
        Box::new(move |x| x[0].index_select(1, &idx).square()),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    // repeated index 2: its two slices add up (and both get the gradient at row 2)
    let ai = Tensor::from_vec(vec![2i64, 0, 2], [3]);
    add(
        "index_add",
        Box::new(move |x| x[0].index_add(1, &ai, &x[1]).square()),
        vec![nc(&mut g, 3, 4), g.randn([3, 3], DType::F64)],
        true,
    );
    let gi = Tensor::from_vec(vec![0i64, 2, 1, 1, 0, 0], [3, 2]);
    let gi2 = gi.clone();
    add(
        "gather",
        Box::new(move |x| x[0].gather(1, &gi).square()),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    add(
        "scatter_add",
        Box::new(move |x| x[0].scatter_add(1, &gi2, &x[1]).square()),
        vec![nc(&mut g, 3, 4), g.randn([3, 2], DType::F64)],
        true,
    );
    add(
        "cat",
        Box::new(|x| Tensor::cat(&[x[0].clone(), x[1].square()], 1)),
        vec![nc(&mut g, 3, 4), g.randn([3, 2], DType::F64)],
        true,
    );
    add(
        "stack*",
        Box::new(|x| Tensor::stack(&[&x[0], &x[1].exp()], 0)),
        vec![nc(&mut g, 3, 4), nc(&mut g, 3, 4)],
        true,
    );
    let sm = Generator::new(5).bernoulli([4], 0.5);
    add(
        "masked_select",
        Box::new(move |x| x[0].masked_select(&sm).square()),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    add(
        "i*",
        Box::new(|x| {
            x[0].i((.., 1..3)).square() + x[0].i((-1, flint::TensorIndex::NewAxis)).sum_all()
        }),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    // sliding windows (conv/pool building blocks) and padding
    add(
        "im2col",
        Box::new(|x| flint::nn::unfold(&x[0], [2, 3], [1, 2], 1, [2, 1]).unwrap()),
        vec![g.randn([2, 5, 4], DType::F64).transpose(1, 2).unsqueeze(0)],
        true,
    );
    add(
        "col2im",
        Box::new(|x| flint::nn::fold(&x[0], [4, 5], [2, 3], [1, 2], 1, [2, 1]).unwrap()),
        vec![g.randn([1, 6, 9], DType::F64)],
        true,
    );
    add(
        "pad",
        Box::new(|x| x[0].pad(&[(1, 2), (0, 1)], 0.5)),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    // fused row kernels (one node each; second order through tensor-op backwards)
    add(
        "softmax",
        Box::new(|x| x[0].softmax(1)),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    add(
        "log_softmax",
        Box::new(|x| x[0].log_softmax(0)),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    add(
        "logsumexp",
        Box::new(|x| x[0].logsumexp(-1, false)),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    add(
        "layer_norm",
        Box::new(|x| {
            flint::nn::functional::layer_norm(&x[0], &[4], Some(&x[1]), Some(&x[2]), 1e-5).unwrap()
        }),
        vec![
            nc(&mut g, 3, 4),
            g.randn([4], DType::F64),
            g.randn([4], DType::F64),
        ],
        true,
    );
    // dropout: the same mask on every call (the closure reseeds), non-contiguous input
    add(
        "dropout",
        Box::new(|x| {
            flint::manual_seed(5);
            flint::nn::functional::dropout(&x[0], 0.3, true).unwrap()
        }),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    // batch norm on batch statistics, [N, C, L] non-contiguous
    add(
        "batch_norm",
        Box::new(|x| {
            flint::nn::functional::batch_norm(&x[0], None, Some(&x[1]), Some(&x[2]), true, 1e-5)
                .unwrap()
        }),
        vec![
            g.randn([4, 5, 3], DType::F64).transpose(1, 2),
            g.randn([3], DType::F64),
            g.randn([3], DType::F64),
        ],
        true,
    );
    // fused LSTM cell (one node from the gate pre-activations and the cell state; second
    // order through its tensor-op backward); x, h, c each non-contiguous
    let cell = flint::nn::LSTMCell::new(3, 2, DType::F64);
    add(
        "lstm_cell",
        Box::new(move |x| {
            let (h, c) = cell.forward(&x[0], Some((&x[1], &x[2])));
            Tensor::cat(&[h, c], 1)
        }),
        vec![nc(&mut g, 4, 3), nc(&mut g, 4, 2), nc(&mut g, 4, 2)],
        true,
    );
    // fused LSTM layer (one node for the whole sequence: backpropagation through time in
    // one kernel; second order through its tensor-op backward); x non-contiguous
    let lstm = flint::nn::LSTM::new(3, 2, DType::F64);
    add(
        "lstm_layer",
        Box::new(move |x| {
            let (y, (h, c)) = lstm.forward(&x[0], Some((&x[1], &x[2])));
            Tensor::cat(&[y.flatten(0, -1), h.flatten(0, -1), c.flatten(0, -1)], 0)
        }),
        vec![
            g.randn([3, 3, 2], DType::F64).transpose(1, 2),
            g.randn([1, 2, 2], DType::F64),
            g.randn([1, 2, 2], DType::F64),
        ],
        true,
    );
    // a linear layer with its bias added by the product (one node; second order through
    // its tensor-op backward): a non-contiguous 3-D input, a transposed weight
    add(
        "linear",
        Box::new(|x| flint::nn::functional::linear(&x[0], &x[1], Some(&x[2])).unwrap()),
        vec![
            g.randn([2, 4, 3], DType::F64).transpose(1, 2),
            g.randn([4, 5], DType::F64).t(),
            g.randn([5], DType::F64),
        ],
        true,
    );
    // fused convolution (one node; second order through its tensor-op backward): groups,
    // stride, padding, dilation, bias, a non-contiguous input
    add(
        "conv",
        Box::new(|x| {
            flint::nn::conv2d(&x[0], &x[1], Some(&x[2]), [2, 1], [1, 2], [1, 2], 2).unwrap()
        }),
        vec![
            g.randn([2, 4, 5, 4], DType::F64).transpose(2, 3),
            g.randn([4, 2, 2, 3], DType::F64),
            g.randn([4], DType::F64),
        ],
        true,
    );
    // fused cross-entropy (one node; second order through its tensor-op backward):
    // classes on dim 1 of a non-contiguous [N, C, d], class weights, label smoothing,
    // an ignored position; and the plain [N, C] case with per-row losses
    let ce_w = g.uniform([4], 0.5, 2.0, DType::F64);
    add(
        "cross_entropy",
        Box::new(move |x| {
            let t = Tensor::from_vec(vec![1i64, 3, -100, 0, 2, 2], [2, 3]);
            CrossEntropy::new()
                .weight(ce_w.clone())
                .label_smoothing(0.2)
                .forward(&x[0], &t)
        }),
        vec![g.randn([2, 3, 4], DType::F64).transpose(1, 2)],
        true,
    );
    add(
        "cross_entropy",
        Box::new(|x| {
            let t = Tensor::from_vec(vec![1i64, 3, 0], [3]);
            CrossEntropy::new()
                .reduction(Reduction::None)
                .forward(&x[0], &t)
        }),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    // fused scaled dot-product attention (one node; second order through its tensor-op
    // backward): q, k, v as MultiheadAttention views them ([B, T, H·D] → [B, H, T, D]),
    // causal with an additive mask, Tq ≠ Tk, D ≠ Dv
    let add_mask = g.randn([3, 4], DType::F64);
    add(
        "scaled_dot_product_attention",
        Box::new(move |x| {
            let heads =
                |t: &Tensor, len: usize, d: usize| t.reshape([2, len, 2, d]).transpose(1, 2);
            flint::nn::functional::scaled_dot_product_attention(
                &heads(&x[0], 3, 2),
                &heads(&x[1], 4, 2),
                &heads(&x[2], 4, 3),
                Some(&add_mask),
                true,
                0.0,
                false,
                None,
            )
            .unwrap()
        }),
        vec![
            g.randn([2, 3, 4], DType::F64),
            g.randn([2, 4, 4], DType::F64),
            g.randn([2, 4, 6], DType::F64),
        ],
        true,
    );
    // composites built from the ops above
    add(
        "var*",
        Box::new(|x| x[0].var(0, 1, false) + x[0].std(1, 0, true).sum_all()),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    add(
        "mean*",
        Box::new(|x| x[0].mean([0, 1], false)),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    add(
        "triu*",
        Box::new(|x| x[0].triu(1) + x[0].tril(0)),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    add(
        "split*",
        Box::new(|x| {
            let p = x[0].chunk(2, 1);
            &p[0] * &p[1]
        }),
        vec![nc(&mut g, 3, 4)],
        true,
    );
    v
}

#[test]
fn gradcheck_every_op() {
    let opts = GradcheckOptions::default();
    let mut covered = vec![];
    for (name, f, inputs, twice) in cases() {
        // a round trip through f32 is only as smooth as f32's rounding: larger step
        let opts = if name == "to_dtype" {
            GradcheckOptions {
                eps: 1e-3,
                atol: 1e-4,
                rtol: 1e-3,
            }
        } else {
            opts
        };
        gradcheck(&f, &inputs, opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        if twice {
            gradgradcheck(&f, &inputs, opts)
                .unwrap_or_else(|e| panic!("{name} (second order): {e}"));
        }
        covered.push(if twice {
            format!("{name}(+2nd)")
        } else {
            name.to_string()
        });
    }
    println!(
        "gradcheck covered {} cases: {}",
        covered.len(),
        covered.join(", ")
    );
}

/// Ops that only record across devices: their gradcheck needs a GPU and lives in
/// `tests/cuda.rs` (`moves_are_differentiable_across_devices`).
const DEVICE_CROSSING_OPS: [&str; 1] = ["to"];

#[test]
fn every_differentiable_op_is_covered() {
    let names: Vec<&str> = cases().iter().map(|c| c.0).collect();
    let missing: Vec<&&str> = DIFFERENTIABLE_OPS
        .iter()
        .filter(|op| !names.contains(op) && !DEVICE_CROSSING_OPS.contains(op))
        .collect();
    assert!(
        missing.is_empty(),
        "differentiable ops without a gradcheck case: {missing:?}"
    );
}
