//! Finite-difference checks of analytical gradients: [`gradcheck`] and [`gradgradcheck`].

use crate::autograd::{engine::grad, no_grad, NoGradGuard};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::random::Generator;
use crate::storage::BufferElement;
use crate::tensor::Tensor;

/// Tolerances and step of [`gradcheck`] (PyTorch's defaults).
#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    /// Finite-difference step.
    pub eps: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance.
    pub rtol: f64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-6,
            atol: 1e-5,
            rtol: 1e-3,
        }
    }
}

/// Reads or writes element `i` (row-major over the view) of an f64 tensor in place,
/// without recording anything.
fn element(t: &Tensor, i: usize, set: Option<f64>) -> Result<f64> {
    let l = t.layout();
    let mut idx = vec![0usize; l.ndim()];
    let mut rem = i;
    for d in (0..l.ndim()).rev() {
        idx[d] = rem % l.shape()[d];
        rem /= l.shape()[d];
    }
    let off = l.index_of(&idx);
    match set {
        Some(v) => {
            let mut g = t.storage().write();
            let buf = g.as_cpu_mut().ok_or(Error::NoCudaKernel {
                op: "gradcheck",
                device: t.device(),
            })?;
            let s = <f64 as BufferElement>::slice_mut(buf).expect("gradcheck inputs are f64");
            let old = s[off];
            s[off] = v;
            Ok(old)
        }
        None => t.with_slice::<f64, _>("gradcheck", |s, _| s[off]),
    }
}

/// Checks the gradients of `f` at `inputs` against central finite differences in f64.
///
/// `inputs` must be f64 tensors (they may be non-contiguous views); each is used as a
/// leaf that requires grad. The output is projected on a fixed random direction `v`,
/// so one backward gives `vᵀJ`, compared with `(vᵀf(x+εeᵢ) − vᵀf(x−εeᵢ)) / 2ε` for every
/// input element. Returns an error naming the first mismatch.
///
/// ```
/// use flint_runtime::{autograd::{gradcheck, GradcheckOptions}, DType, Tensor};
/// let x = Tensor::randn([3, 4], DType::F64);
/// gradcheck(|v| v[0].tanh().sum(1, false), &[x], GradcheckOptions::default()).unwrap();
/// ```
pub fn gradcheck(
    f: impl Fn(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    opts: GradcheckOptions,
) -> Result<()> {
    for (k, x) in inputs.iter().enumerate() {
        if x.dtype() != DType::F64 {
            return Err(Error::Autograd(format!(
                "gradcheck: input {k} must be f64, got {}",
                x.dtype()
            )));
        }
    }
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|x| x.detach().requires_grad_(true))
        .collect();
    let out = f(&leaves);
    if !out.dtype().is_float() {
        return Err(Error::Autograd(
            "gradcheck: the function's output is not floating-point".into(),
        ));
    }
    let v = Generator::new(0x5eed).randn(out.shape(), out.dtype());
    // an output that does not depend on the inputs through the graph has a zero gradient
    let analytical = if out.requires_grad() {
        grad(
            std::slice::from_ref(&out),
            &leaves,
            Some(std::slice::from_ref(&v)),
            false,
            false,
        )?
    } else {
        vec![None; leaves.len()]
    };
    let project = |xs: &[Tensor]| -> f64 {
        let o = no_grad(|| f(xs));
        (o.to_dtype(DType::F64) * v.to_dtype(DType::F64))
            .sum_all()
            .item::<f64>()
    };
    for (k, x) in leaves.iter().enumerate() {
        let a = analytical[k]
            .as_ref()
            .map(|g| g.to_dtype(DType::F64).to_vec::<f64>())
            .unwrap_or_else(|| vec![0.0; x.numel()]);
        for (i, &ai) in a.iter().enumerate() {
            let orig = element(x, i, None)?;
            element(x, i, Some(orig + opts.eps))?;
            let fp = project(&leaves);
            element(x, i, Some(orig - opts.eps))?;
            let fm = project(&leaves);
            element(x, i, Some(orig))?;
            let n = (fp - fm) / (2.0 * opts.eps);
            let within = (ai - n).abs() <= opts.atol + opts.rtol * n.abs();
            if !within {
                return Err(Error::Autograd(format!(
                    "gradcheck: input {k} (shape {:?}), element {i}: analytical {ai} vs numerical {n}",
                    x.shape()
                )));
            }
        }
    }
    Ok(())
}

/// Checks second derivatives: [`gradcheck`] of `x ↦ Σₖ wₖ · ∂(vᵀf)/∂xₖ` for fixed random
/// `v` and `wₖ`, where the inner gradient is built with `create_graph`.
///
/// ```
/// use flint_runtime::{autograd::{gradgradcheck, GradcheckOptions}, DType, Tensor};
/// let x = Tensor::randn([5], DType::F64);
/// gradgradcheck(|v| v[0].sin() * &v[0], &[x], GradcheckOptions::default()).unwrap();
/// ```
pub fn gradgradcheck(
    f: impl Fn(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    opts: GradcheckOptions,
) -> Result<()> {
    let probe = no_grad(|| f(&inputs.iter().map(|x| x.detach()).collect::<Vec<_>>()));
    let mut g = Generator::new(0xfeed);
    let v = g.randn(probe.shape(), probe.dtype());
    let w: Vec<Tensor> = inputs
        .iter()
        .map(|x| g.randn(x.shape(), DType::F64))
        .collect();
    let h = |xs: &[Tensor]| -> Tensor {
        // the inner gradient needs a graph even when gradcheck evaluates h under no_grad
        let _mode = NoGradGuard::with(true);
        let out = f(xs);
        let grads = match grad(
            std::slice::from_ref(&out),
            xs,
            Some(std::slice::from_ref(&v)),
            true,
            true,
        ) {
            Ok(g) => g,
            Err(e) => panic!("gradgradcheck: inner gradient failed: {e}"),
        };
        let mut total = Tensor::zeros([], DType::F64);
        for (gk, wk) in grads.iter().zip(&w) {
            if let Some(gk) = gk {
                total = total + (gk.to_dtype(DType::F64) * wk).sum_all();
            }
        }
        total
    };
    gradcheck(h, inputs, opts)
}
