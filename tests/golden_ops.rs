//! Tensor-core ops against PyTorch's own numbers (tests/golden/, from golden.py).
//! Forward values here; the gradients in the same files are checked by the autograd tests.

mod common;
use common::{assert_close, Case};
use flint::{DType, GeluApprox};

const RTOL_F64: f64 = 1e-6;
const RTOL_F32: f64 = 1e-4;

#[test]
fn gelu_exact_and_tanh() {
    for (name, approx) in [
        ("gelu_exact", GeluApprox::None),
        ("gelu_tanh", GeluApprox::Tanh),
    ] {
        let c = Case::load(name);
        let x = c.input("x");
        assert_close(name, &x.gelu(approx), &c.output("y"), RTOL_F64);
        assert_close(
            name,
            &x.to_dtype(DType::F32).gelu(approx),
            &c.output("y"),
            RTOL_F32,
        );
    }
}

#[test]
fn softmax_and_log_softmax() {
    for name in ["softmax_dim1", "softmax_dimlast"] {
        let c = Case::load(name);
        let x = c.input("x");
        let dim = c.param("dim").as_i64().expect("dim") as isize;
        assert_close(name, &x.softmax(dim), &c.output("softmax"), RTOL_F64);
        assert_close(
            name,
            &x.log_softmax(dim),
            &c.output("log_softmax"),
            RTOL_F64,
        );
        // the same through a non-contiguous view of the input
        let rev: Vec<isize> = (0..x.ndim() as isize).rev().collect();
        let xt = x.permute(&rev).contiguous().permute(&rev);
        assert!(!xt.is_contiguous());
        assert_close(name, &xt.softmax(dim), &c.output("softmax"), RTOL_F64);
        assert_close(
            name,
            &x.to_dtype(DType::F32).log_softmax(dim),
            &c.output("log_softmax"),
            RTOL_F32,
        );
    }
}

#[test]
fn masked_fill() {
    for name in ["masked_fill_broadcast_mask", "masked_fill_full_mask"] {
        let c = Case::load(name);
        let value = c.param("value").as_f64().expect("value");
        let y = c.input("x").masked_fill(&c.input("mask"), value);
        assert_close(name, &y, &c.output("y"), RTOL_F64);
    }
}

// ---------------------------------------------------------------- gradients (autograd)

/// The gradient of `f(x)` with respect to `x` for the given output gradient.
fn vjp(
    x: &flint::Tensor,
    grad_output: &flint::Tensor,
    f: impl Fn(&flint::Tensor) -> flint::Tensor,
) -> flint::Tensor {
    let x = x.detach().requires_grad_(true);
    let y = f(&x);
    y.backward_with(grad_output);
    x.grad().expect("x gets a gradient")
}

#[test]
fn gelu_gradients() {
    for (name, approx) in [
        ("gelu_exact", GeluApprox::None),
        ("gelu_tanh", GeluApprox::Tanh),
    ] {
        let c = Case::load(name);
        let (x, go) = (c.input("x"), c.input("grad_output"));
        assert_close(
            name,
            &vjp(&x, &go, |t| t.gelu(approx)),
            &c.output("grad_x"),
            RTOL_F64,
        );
        assert_close(
            name,
            &vjp(&x, &x.ones_like(), |t| t.gelu(approx)),
            &c.output("dydx"),
            RTOL_F64,
        );
    }
}

#[test]
fn softmax_gradients() {
    for name in ["softmax_dim1", "softmax_dimlast"] {
        let c = Case::load(name);
        let (x, go) = (c.input("x"), c.input("grad_output"));
        let dim = c.param("dim").as_i64().expect("dim") as isize;
        assert_close(
            name,
            &vjp(&x, &go, |t| t.softmax(dim)),
            &c.output("grad_x_softmax"),
            RTOL_F64,
        );
        assert_close(
            name,
            &vjp(&x, &go, |t| t.log_softmax(dim)),
            &c.output("grad_x_log_softmax"),
            RTOL_F64,
        );
    }
}

#[test]
fn masked_fill_gradients() {
    for name in ["masked_fill_broadcast_mask", "masked_fill_full_mask"] {
        let c = Case::load(name);
        let value = c.param("value").as_f64().expect("value");
        let mask = c.input("mask");
        let g = vjp(&c.input("x"), &c.input("grad_output"), |t| {
            t.masked_fill(&mask, value)
        });
        assert_close(name, &g, &c.output("grad_x"), RTOL_F64);
    }
}

// ---------------------------------------------------------------- losses

#[test]
fn cross_entropy_losses_and_gradients() {
    use flint::loss::{CrossEntropy, Reduction};
    for name in [
        "cross_entropy_ls0p0_mean",
        "cross_entropy_ls0p0_none",
        "cross_entropy_ls0p0_sum",
        "cross_entropy_ls0p1_mean",
        "cross_entropy_ls0p1_mean_kdim",
        "cross_entropy_ls0p1_none",
        "cross_entropy_ls0p1_sum",
    ] {
        let c = Case::load(name);
        let reduction = match c.param("reduction").as_str().expect("reduction") {
            "mean" => Reduction::Mean,
            "sum" => Reduction::Sum,
            _ => Reduction::None,
        };
        let ce = CrossEntropy::new()
            .label_smoothing(c.param("label_smoothing").as_f64().expect("ls"))
            .ignore_index(c.param("ignore_index").as_i64().expect("ignore_index"))
            .reduction(reduction);
        let (logits, targets) = (c.input("logits"), c.input("targets"));
        assert_close(
            name,
            &ce.forward(&logits, &targets),
            &c.output("loss"),
            RTOL_F64,
        );
        let go = if reduction == Reduction::None {
            c.input("grad_output")
        } else {
            flint::Tensor::scalar(1.0f64)
        };
        let g = vjp(&logits, &go, |t| ce.forward(t, &targets));
        assert_close(name, &g, &c.output("grad_logits"), RTOL_F64);
        // f32 within 1e-4
        let l32 = ce.forward(&logits.to_dtype(DType::F32), &targets);
        assert_close(name, &l32, &c.output("loss"), RTOL_F32);
    }
}
