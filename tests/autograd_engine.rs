//! The autograd engine's behaviour: accumulation, retain/create_graph, no_grad, in-place
//! safety, anomaly mode, BPTT and memory.

use flint::autograd::{self, gradcheck, no_grad, GradcheckOptions};
use flint::{DType, Generator, Tensor};

fn leaf(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).requires_grad_(true)
}

#[test]
fn gradients_accumulate_and_reduce_through_broadcasting() {
    let w = leaf(vec![1.0, 2.0, 3.0], &[3]);
    let x = Tensor::from_vec(vec![1.0f64, 1.0, 1.0, 2.0, 2.0, 2.0], [2, 3]);
    let y = (&x * &w).sum_all();
    y.backward();
    assert_eq!(w.grad().unwrap().to_vec::<f64>(), vec![3.0, 3.0, 3.0]);
    (&w * 2.0).sum_all().backward();
    assert_eq!(w.grad().unwrap().to_vec::<f64>(), vec![5.0, 5.0, 5.0]);
    w.zero_grad();
    assert!(w.grad().is_none());
    assert!(w.is_leaf() && !y.is_leaf() && y.requires_grad());
    assert_eq!(y.grad_fn().unwrap().name(), "sum");
}

#[test]
fn views_slices_and_inplace_ops_route_gradients() {
    let x = leaf((0..12).map(f64::from).collect(), &[3, 4]);
    let y = x.t().narrow(0, 1, 2).select(1, 0) * 3.0; // x[0, 1..3] * 3
    y.sum_all().backward();
    let g = x.grad().unwrap().to_vec::<f64>();
    assert_eq!(g, vec![0., 3., 3., 0., 0., 0., 0., 0., 0., 0., 0., 0.]);

    let a = leaf(vec![1.0, 2.0], &[2]);
    let b = &a * 1.0;
    b.mul_(3.0).add_(&a);
    b.sum_all().backward(); // d/da (3a + a) = 4
    assert_eq!(a.grad().unwrap().to_vec::<f64>(), vec![4.0, 4.0]);
}

#[test]
fn non_scalar_backward_needs_a_gradient() {
    let x = leaf(vec![1.0, 2.0], &[2]);
    let y = &x * 2.0;
    let e = y.try_backward(None, false, false).unwrap_err().to_string();
    assert!(e.contains("only for scalar outputs"), "{e}");
    y.backward_with(&Tensor::from_vec(vec![1.0f64, 10.0], [2]));
    assert_eq!(x.grad().unwrap().to_vec::<f64>(), vec![2.0, 20.0]);
}

#[test]
fn second_backward_through_a_freed_graph_is_an_error() {
    let x = leaf(vec![0.5], &[1]);
    let y = x.exp().sum_all();
    y.try_backward(None, true, false).unwrap();
    y.try_backward(None, false, false).unwrap(); // retained the first time
    let e = y.try_backward(None, false, false).unwrap_err().to_string();
    assert!(
        e.contains("backward through the graph a second time"),
        "{e}"
    );
    assert!(e.contains("sum") || e.contains("exp"), "{e}");
}

#[test]
fn modifying_a_saved_tensor_in_place_is_an_error_not_a_wrong_gradient() {
    let x = leaf(vec![1.0, 2.0], &[2]);
    let a = &x * 2.0;
    let b = a.sin(); // sin saves its input `a`
    a.add_(1.0);
    let e = b
        .sum_all()
        .try_backward(None, false, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("modified by an inplace operation"), "{e}");
    assert!(e.contains("`sin`") && e.contains("shape [2]"), "{e}");
    // exp saves its output, not its input (as PyTorch's): changing the input afterwards
    // leaves its gradient right
    let a = &x * 2.0;
    let b = a.exp();
    a.add_(1.0);
    b.sum_all().backward();
    for (got, v) in x.grad().unwrap().to_vec::<f64>().iter().zip([1.0f64, 2.0]) {
        let want = 2.0 * (2.0 * v).exp();
        assert!((got - want).abs() <= 1e-12 * want, "{got} vs {want}");
    }
}

#[test]
fn backward_of_a_result_computed_under_no_grad_is_an_error() {
    let x = leaf(vec![1.0], &[1]);
    let y = no_grad(|| (&x * 2.0).sum_all());
    assert!(!y.requires_grad());
    let e = y.try_backward(None, false, false).unwrap_err().to_string();
    assert!(e.contains("does not require grad"), "{e}");
}

#[test]
fn leaves_are_updated_in_place_only_under_no_grad() {
    let w = leaf(vec![1.0, 2.0], &[2]);
    let caught = std::panic::catch_unwind(|| {
        w.add_(1.0);
    });
    let msg = caught
        .unwrap_err()
        .downcast::<String>()
        .map(|s| *s)
        .unwrap_or_default();
    assert!(msg.contains("leaf tensor that requires grad"), "{msg}");
    no_grad(|| {
        w.sub_(0.5);
    });
    assert_eq!(w.to_vec::<f64>(), vec![0.5, 1.5]);
    assert!(w.try_requires_grad_(true).is_ok());
    assert!((&w * 2.0).try_requires_grad_(false).is_err());
    assert!(Tensor::ones([2], DType::I64)
        .try_requires_grad_(true)
        .is_err());
}

#[test]
fn create_graph_gives_hessian_vector_products() {
    // f(x) = Σ x³ → ∇f = 3x², H = diag(6x); Hv = 6x⊙v
    let x = leaf(vec![1.0, -2.0, 0.5], &[3]);
    let f = x.pow(3.0).sum_all();
    let g = autograd::grad(&[f], std::slice::from_ref(&x), None, true, true).unwrap()[0]
        .clone()
        .unwrap();
    let v = Tensor::from_vec(vec![1.0f64, 1.0, 2.0], [3]);
    let hv = autograd::grad(
        &[(&g * &v).sum_all()],
        std::slice::from_ref(&x),
        None,
        false,
        false,
    )
    .unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(hv.to_vec::<f64>(), vec![6.0, -12.0, 6.0]);
    assert!(x.grad().is_none(), "grad() must not touch .grad");
}

#[test]
fn anomaly_mode_names_the_forward_op() {
    autograd::set_anomaly_enabled(true);
    let x = leaf(vec![0.0, 1.0], &[2]);
    let y = x.sqrt().sum_all(); // d sqrt / dx = inf at 0
    let e = y.try_backward(None, false, false).unwrap_err().to_string();
    autograd::set_anomaly_enabled(false);
    assert!(
        e.contains("`sqrt`") && e.contains("autograd_engine.rs"),
        "{e}"
    );
}

#[test]
fn bptt_through_fifty_steps_matches_finite_differences() {
    // h_{t+1} = tanh(x_t W_x + h_t W_h + b), loss = Σ h_T ⊙ c
    let mut g = Generator::new(1);
    let (steps, batch, inp, hid) = (50, 2, 3, 4);
    let xs = g.randn([steps, batch, inp], DType::F64);
    let wx = g.randn([inp, hid], DType::F64) * 0.5;
    let wh = g.randn([hid, hid], DType::F64) * 0.5;
    let b = g.randn([hid], DType::F64) * 0.1;
    let f = |p: &[Tensor]| {
        let mut h = Tensor::zeros([batch, hid], DType::F64);
        for t in 0..steps {
            h = (xs.select(0, t as isize).matmul(&p[0]) + h.matmul(&p[1]) + &p[2]).tanh();
        }
        h
    };
    gradcheck(f, &[wx, wh, b], GradcheckOptions::default()).unwrap();
}

/// `y = x·sin(x)` as a user-defined function, with its derivative written by hand.
struct XSinX;

impl autograd::Function for XSinX {
    fn name(&self) -> &'static str {
        "x_sin_x"
    }
    fn forward(&self, x: &[Tensor]) -> Tensor {
        &x[0] * x[0].sin()
    }
    fn backward(&self, x: &[Tensor], _y: &Tensor, g: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(g * (x[0].sin() + &x[0] * x[0].cos()))]
    }
}

#[test]
fn user_defined_functions_are_differentiable_to_second_order() {
    let x = Generator::new(4).randn([2, 3], DType::F64);
    let f = |v: &[Tensor]| autograd::apply(XSinX, &[&v[0]]);
    gradcheck(f, std::slice::from_ref(&x), GradcheckOptions::default()).unwrap();
    autograd::gradgradcheck(f, &[x], GradcheckOptions::default()).unwrap();
}

#[test]
fn graphs_export_to_dot() {
    let w = Tensor::ones([3, 2], DType::F64).requires_grad_(true);
    let x = Tensor::ones([4, 3], DType::F64);
    let y = autograd::apply(XSinX, &[&x.matmul(&w)]).relu().sum_all();
    let dot = autograd::to_dot(&y);
    for want in [
        "digraph",
        "matmul\\n[4, 2]",
        "x_sin_x",
        "relu",
        "sum",
        "parameter [3, 2]",
        "->",
    ] {
        assert!(dot.contains(want), "{want} missing from:\n{dot}");
    }
    // one node per op, one ellipse for the one parameter
    assert_eq!(dot.matches("shape=ellipse").count(), 1);
    assert_eq!(dot.matches("shape=box").count(), 4);
}

/// The engine adds a tensor's gradients into a buffer nobody else holds and adds a
/// view's gradient straight into its input's (no zero tensor per view): the results
/// must be those of plain out-of-place sums, and a gradient the caller holds must
/// never change under it.
#[test]
fn in_place_accumulation_and_view_scatter_match_out_of_place_sums() {
    // one [T, B, H] tensor read T times through select, each step also through
    // chunk (narrow views), like an RNN's input projection
    let (t, b, h) = (5usize, 3usize, 4usize);
    let mut g = Generator::new(7);
    let x = g
        .normal([t, b, 2 * h], 0.0, 1.0, DType::F64)
        .requires_grad_(true);
    let w = g.normal([h, h], 0.0, 1.0, DType::F64).requires_grad_(true);
    let forward = |x: &Tensor, w: &Tensor| {
        let mut s = Tensor::zeros([b, h], DType::F64);
        for k in 0..t {
            let parts = x.select(0, k as isize).chunk(2, -1);
            s = (&s.matmul(w) + &parts[0]).tanh() * parts[1].sigmoid();
        }
        s.square().sum_all()
    };
    // reference: the same gradient with the whole graph kept differentiable
    // (create_graph takes the ordinary backward of every view, out of place)
    let want = autograd::grad(
        &[forward(&x, &w)],
        &[x.clone(), w.clone()],
        None,
        false,
        true,
    )
    .unwrap();
    let (want_x, want_w) = (
        want[0].as_ref().unwrap().detach().to_vec::<f64>(),
        want[1].as_ref().unwrap().detach().to_vec::<f64>(),
    );
    forward(&x, &w).backward();
    let close = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .all(|(p, q)| (p - q).abs() <= 1e-12 * (1.0 + q.abs()))
    };
    let held = x.grad().unwrap();
    assert!(close(&held.to_vec::<f64>(), &want_x));
    assert!(close(&w.grad().unwrap().to_vec::<f64>(), &want_w));
    // a second backward accumulates; the gradient held from the first stays as it was
    let first = held.to_vec::<f64>();
    forward(&x, &w).backward();
    assert_eq!(held.to_vec::<f64>(), first);
    let doubled: Vec<f64> = want_x.iter().map(|v| 2.0 * v).collect();
    assert!(close(&x.grad().unwrap().to_vec::<f64>(), &doubled));
    // a view node still frees its backward: a second pass without retain_graph fails
    let y = x.select(0, 1).sum_all();
    y.backward();
    let e = y.try_backward(None, false, false).unwrap_err().to_string();
    assert!(e.contains("a second time"), "{e}");
}

/// Slices of a non-contiguous tensor and overlapping slices of one tensor get the
/// gradient of the definition (views of a permuted input take the ordinary backward).
#[test]
fn overlapping_and_strided_views_route_gradients() {
    let x = leaf((0..12).map(f64::from).collect(), &[3, 4]);
    let a = x.narrow(1, 0, 3); // columns 0..3
    let b = x.narrow(1, 1, 3); // columns 1..4, overlapping
    let c = x.t().select(0, 2); // column 2 through a transposed (strided) view
    ((&a * 2.0).sum_all() + (&b * 3.0).sum_all() + c.sum_all()).backward();
    let want: Vec<f64> = (0..12)
        .map(|i| match i % 4 {
            0 => 2.0,
            1 => 5.0,
            2 => 6.0,
            _ => 3.0,
        })
        .collect();
    assert_eq!(x.grad().unwrap().to_vec::<f64>(), want);
}
