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
