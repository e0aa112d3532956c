//! Stateless forms of the layers (`torch.nn.functional`): what the modules call, for
//! users who keep their own parameters.

pub use super::conv::{conv1d, conv2d, conv3d, fold, unfold};
pub use super::pool::{
    adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d, avg_pool1d, avg_pool2d,
    avg_pool3d, max_pool1d, max_pool2d, max_pool2d_with_indices, max_pool3d,
};

use crate::autograd::{is_grad_enabled, record, NoGradGuard};
use crate::cpu::attention;
use crate::cpu::batchnorm;
use crate::cpu::rowwise::{self, NormNeeds};
use crate::dtype::DType;
use crate::error::{or_panic, Error, Result};
use crate::layout::fmt_shape;
use crate::ops::elementwise::sum_to;
use crate::random::with_global_generator;
use crate::tensor::Tensor;

/// `y = x Wᵀ + b` over the last dim of `x` (`[.., in]` → `[.., out]`), with `W` of shape
/// `[out, in]` as in PyTorch.
///
/// ```
/// use flint_runtime::{nn::functional::linear, Tensor};
/// let x = Tensor::from_vec(vec![1.0f32, 2.0], [1, 2]);
/// let w = Tensor::from_vec(vec![1.0f32, 1.0, 0.0, 1.0, 2.0, 0.0], [3, 2]);
/// let b = Tensor::from_vec(vec![0.5f32, 0.0, 0.0], [3]);
/// assert_eq!(linear(&x, &w, Some(&b)).unwrap().to_vec::<f32>(), vec![3.5, 2.0, 2.0]);
/// ```
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let inf = weight.size(-1);
    if x.ndim() == 0 || x.size(-1) != inf {
        return Err(Error::shape(
            "Linear",
            format!(
                "expected input of shape [.., {inf}], got {} (weight is {})",
                fmt_shape(x.shape()),
                fmt_shape(weight.shape())
            ),
        ));
    }
    if let Some(b) = bias
        && let Some(fused) = crate::ops::matmul::linear_bias(x, weight, b)
    {
        return fused;
    }
    let y = x.try_matmul(&weight.t())?;
    match bias {
        Some(b) => y.try_add(b),
        None => Ok(y),
    }
}

/// Layer normalisation over the trailing `normalized_shape` dims: mean and biased
/// variance, `y = (x − mean)/√(var + eps) · w + b`.
///
/// An f32/f64 CPU input with a weight and bias of exactly `normalized_shape` (or none)
/// runs fused kernels (one pass per row each way) and records one `layer_norm` node;
/// other inputs (f16/bf16, CUDA, broadcasting weights) use a composition of tensor ops.
///
/// ```
/// use flint_runtime::{nn::functional::layer_norm, Tensor};
/// let x = Tensor::from_vec(vec![1.0f64, 3.0], [1, 2]);
/// let b = Tensor::from_vec(vec![0.0f64, 10.0], [2]);
/// let y = layer_norm(&x, &[2], None, Some(&b), 0.0).unwrap();
/// assert_eq!(y.to_vec::<f64>(), vec![-1.0, 11.0]);
/// ```
pub fn layer_norm(
    x: &Tensor,
    normalized_shape: &[usize],
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let k = normalized_shape.len();
    if x.ndim() < k || &x.shape()[x.ndim() - k..] != normalized_shape {
        return Err(Error::shape(
            "LayerNorm",
            format!(
                "expected input of shape [.., {}], got {}",
                normalized_shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                fmt_shape(x.shape())
            ),
        ));
    }
    let n: usize = normalized_shape.iter().product();
    let fits = |t: Option<&Tensor>| {
        t.is_none_or(|t| {
            t.dtype() == x.dtype() && t.device() == x.device() && t.shape() == normalized_shape
        })
    };
    if k > 0 && n > 0 && rowwise::has_row_kernels(x) && fits(weight) && fits(bias) {
        return layer_norm_fused(x, normalized_shape, weight, bias, eps);
    }
    layer_norm_composed(x, k, weight, bias, eps)
}

/// [`layer_norm`] over the last `k` dims as tensor ops (half types, and weights or biases
/// that only broadcast to the normalised shape).
fn layer_norm_composed(
    x: &Tensor,
    k: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let dims: Vec<isize> = (0..k as isize).map(|i| -1 - i).collect();
    let mean = x.try_mean(dims.as_slice(), true)?;
    let xc = x.try_sub(&mean)?;
    let var = xc.try_mul(&xc)?.try_mean(dims.as_slice(), true)?;
    let mut y = xc.try_mul(var.try_add(eps)?.rsqrt())?;
    if let Some(w) = weight {
        y = y.try_mul(w)?;
    }
    if let Some(b) = bias {
        y = y.try_add(b)?;
    }
    Ok(y)
}

/// [`layer_norm`] of an f32/f64 tensor (CPU or CUDA) with the fused row kernels: one recorded node
/// (`layer_norm`, inputs `x`, `weight`, `bias`) whose backward runs the fused backward
/// kernel, or, under `create_graph`, [`layer_norm_grad_ops`].
fn layer_norm_fused(
    x: &Tensor,
    normalized_shape: &[usize],
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    const OP: &str = "LayerNorm";
    let n: usize = normalized_shape.iter().product();
    let (y, mean, rstd) = rowwise::layer_norm_rows(OP, x, n, weight, bias, eps)?;
    let inputs: Vec<&Tensor> = [Some(x), weight, bias].into_iter().flatten().collect();
    if !(is_grad_enabled() && inputs.iter().any(|t| t.requires_grad())) {
        return Ok(y);
    }
    let needs = NormNeeds {
        x: x.requires_grad(),
        weight: weight.is_some_and(|w| w.requires_grad()),
        bias: bias.is_some_and(|b| b.requires_grad()),
    };
    let saved: Vec<&Tensor> = [Some(x), weight, Some(&mean), Some(&rstd)]
        .into_iter()
        .flatten()
        .collect();
    let (xs, ws, has_bias) = (x.clone(), weight.cloned(), bias.is_some());
    let (ms, rs) = (mean.clone(), rstd.clone());
    let k = normalized_shape.len();
    let shape = normalized_shape.to_vec();
    Ok(record(y, "layer_norm", &inputs, &saved, move |g| {
        let (dx, dw, db) = if is_grad_enabled() {
            layer_norm_grad_ops(&xs, g, ws.as_ref(), k, eps, needs)
        } else {
            let (dx, dw, db) = or_panic(rowwise::layer_norm_rows_backward(
                OP,
                &xs,
                g,
                &ms,
                &rs,
                n,
                ws.as_ref(),
                needs,
            ));
            (
                dx,
                dw.map(|t| t.reshape(shape.as_slice())),
                db.map(|t| t.reshape(shape.as_slice())),
            )
        };
        let mut grads = vec![dx];
        if ws.is_some() {
            grads.push(dw);
        }
        if has_bias {
            grads.push(db);
        }
        grads
    }))
}

/// The layer-norm gradients `(dx, dweight, dbias)` as differentiable tensor ops (for
/// `create_graph`), with the statistics recomputed from `x`: `x̂ = (x − mean)·rstd`,
/// `ĝ = g ⊙ w`, `dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ ⊙ x̂))` over the last `k` dims,
/// `dw = Σ g ⊙ x̂` and `db = Σ g` over the leading dims.
fn layer_norm_grad_ops(
    x: &Tensor,
    g: &Tensor,
    w: Option<&Tensor>,
    k: usize,
    eps: f64,
    needs: NormNeeds,
) -> (Option<Tensor>, Option<Tensor>, Option<Tensor>) {
    let dims: Vec<isize> = (0..k as isize).map(|i| -1 - i).collect();
    let dims = dims.as_slice();
    let lead: Vec<usize> = (0..x.ndim() - k).collect();
    let over_rows = |t: Tensor| {
        if lead.is_empty() {
            t
        } else {
            t.sum(lead.as_slice(), false)
        }
    };
    let mean = x.mean(dims, true);
    let xc = x - &mean;
    let rstd = ((&xc * &xc).mean(dims, true) + eps).rsqrt();
    let xhat = &xc * &rstd;
    let dx = needs.x.then(|| {
        let gy = match w {
            Some(w) => g * w,
            None => g.clone(),
        };
        let a = gy.mean(dims, true);
        let b = (&gy * &xhat).mean(dims, true);
        &rstd * ((&gy - &a) - &xhat * &b)
    });
    let dw = (needs.weight && w.is_some()).then(|| over_rows(g * &xhat));
    let db = needs.bias.then(|| over_rows(g.clone()));
    (dx, dw, db)
}

/// The running statistics of a batch norm, updated in place during training.
pub struct RunningStats<'a> {
    /// Running mean, `[C]`.
    pub mean: &'a Tensor,
    /// Running (unbiased) variance, `[C]`.
    pub var: &'a Tensor,
    /// Number of batches seen (i64 scalar).
    pub num_batches_tracked: &'a Tensor,
    /// Weight of the new batch; `None` = cumulative average.
    pub momentum: Option<f64>,
}

/// Batch normalisation over dim 1 (`[N, C]`, `[N, C, L]`, `[N, C, H, W]`, …).
///
/// In training (or without running statistics) normalises with the batch mean and
/// biased variance and, when `stats` is given, updates them in place with the unbiased
/// variance, as PyTorch does. In evaluation normalises with the running statistics.
///
/// f32/f64 inputs (with a weight and bias of `C` elements in the input's dtype) run the
/// fused kernels of `cpu/batchnorm.rs`, or on CUDA those of `flint-kernels`' norm module,
/// as one recorded node (`batch_norm`); other dtypes run the tensor-op composition.
pub fn batch_norm(
    x: &Tensor,
    stats: Option<RunningStats<'_>>,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    training: bool,
    eps: f64,
) -> Result<Tensor> {
    if x.ndim() < 2 {
        return Err(Error::shape(
            "BatchNorm",
            format!(
                "expected input of shape [N, C, ..], got {}",
                fmt_shape(x.shape())
            ),
        ));
    }
    let c = x.size(1);
    let n = x.numel() / c.max(1);
    if n <= 1 && training {
        return Err(Error::shape(
            "BatchNorm",
            format!(
                "expected more than 1 value per channel when training, got input of shape {}",
                fmt_shape(x.shape())
            ),
        ));
    }
    // batch statistics in training, and in evaluation without running statistics
    let use_batch = training || stats.is_none();
    if batch_norm_fusable(x, stats.as_ref(), weight, bias, use_batch) {
        return batch_norm_fused(x, stats, weight, bias, training, use_batch, eps);
    }
    batch_norm_composed(x, stats, weight, bias, training, use_batch, eps)
}

/// [`batch_norm`] as tensor ops (half types, CUDA tensors, and parameters or running
/// statistics the fused kernels do not take); `use_batch` = normalise with the batch
/// statistics.
fn batch_norm_composed(
    x: &Tensor,
    stats: Option<RunningStats<'_>>,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    training: bool,
    use_batch: bool,
    eps: f64,
) -> Result<Tensor> {
    let c = x.size(1);
    let n = x.numel() / c.max(1);
    let mut bshape = vec![1usize; x.ndim()];
    bshape[1] = c;
    let dims: Vec<isize> = (0..x.ndim() as isize).filter(|&d| d != 1).collect();
    // The centred input and the variance to normalise it by.
    let (xc, var) = match (use_batch, &stats) {
        (false, Some(s)) => {
            let mean = s.mean.to_dtype(x.dtype()).try_reshape(bshape.as_slice())?;
            (
                x.try_sub(&mean)?,
                s.var.to_dtype(x.dtype()).try_reshape(bshape.as_slice())?,
            )
        }
        _ => {
            let mean = x.try_mean(dims.as_slice(), true)?;
            let xc = x.try_sub(&mean)?;
            let var = xc.try_mul(&xc)?.try_mean(dims.as_slice(), true)?;
            if let (Some(s), true) = (&stats, training) {
                update_running_stats(s, &mean, &var, n);
            }
            (xc, var)
        }
    };
    let mut y = xc.try_mul(var.try_add(eps)?.rsqrt())?;
    if let Some(w) = weight {
        y = y.try_mul(&w.try_reshape(bshape.as_slice())?)?;
    }
    if let Some(b) = bias {
        y = y.try_add(&b.try_reshape(bshape.as_slice())?)?;
    }
    Ok(y)
}

/// Updates the running statistics in place from a batch's per-channel `mean` and biased
/// `var` (`C` elements each, any shape) over `n` values a channel: PyTorch's
/// `r ← (1 − m)·r + m·batch`, the variance made unbiased (`·n/(n−1)`), `m` the momentum
/// or, without one, `1/num_batches_tracked` (a cumulative average).
fn update_running_stats(s: &RunningStats<'_>, mean: &Tensor, var: &Tensor, n: usize) {
    let _g = NoGradGuard::new();
    let c = mean.numel();
    let nbt = s.num_batches_tracked;
    nbt.add_(1i64);
    let m = match s.momentum {
        Some(m) => m,
        None => 1.0 / nbt.item::<i64>() as f64,
    };
    let bm = mean.detach().reshape([c]).to_dtype(s.mean.dtype());
    let bv = var.detach().reshape([c]).to_dtype(s.var.dtype()) * (n as f64 / (n - 1) as f64);
    s.mean.mul_(1.0 - m).add_(&(bm * m));
    s.var.mul_(1.0 - m).add_(&(bv * m));
}

/// True when [`batch_norm_fused`] takes the call: a non-empty f32/f64 CPU input, a
/// weight and bias (if any) of `C` elements in its dtype on the CPU, and, in
/// evaluation, running statistics of `C` elements that do not require grad (the
/// composition would differentiate through them).
fn batch_norm_fusable(
    x: &Tensor,
    stats: Option<&RunningStats<'_>>,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    use_batch: bool,
) -> bool {
    let c = x.size(1);
    let param_ok = |t: Option<&Tensor>| {
        t.is_none_or(|t| t.device() == x.device() && t.dtype() == x.dtype() && t.numel() == c)
    };
    let stats_ok = use_batch
        || stats.is_some_and(|s| {
            [s.mean, s.var]
                .iter()
                .all(|t| t.numel() == c && !t.requires_grad() && t.device() == x.device())
        });
    rowwise::has_row_kernels(x) && x.numel() > 0 && param_ok(weight) && param_ok(bias) && stats_ok
}

/// [`batch_norm`] with the fused kernels (`cpu/batchnorm.rs`, or CUDA's): one recorded node
/// (`batch_norm`, inputs `x`, `weight`, `bias`) saving the statistics, whose backward
/// runs the fused backward kernel, or, under `create_graph`, [`batch_norm_grad_ops`].
fn batch_norm_fused(
    x: &Tensor,
    stats: Option<RunningStats<'_>>,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    training: bool,
    use_batch: bool,
    eps: f64,
) -> Result<Tensor> {
    const OP: &str = "BatchNorm";
    let fixed = match (use_batch, &stats) {
        (false, Some(s)) => Some((s.mean.to_dtype(x.dtype()), s.var.to_dtype(x.dtype()))),
        _ => None,
    };
    let (y, mean, var, invstd) = batchnorm::forward(
        OP,
        x,
        fixed.as_ref().map(|(m, v)| (m, v)),
        weight,
        bias,
        eps,
    )?;
    if let (Some(s), true) = (&stats, training) {
        update_running_stats(s, &mean, &var, x.numel() / x.size(1));
    }
    let inputs: Vec<&Tensor> = [Some(x), weight, bias].into_iter().flatten().collect();
    if !(is_grad_enabled() && inputs.iter().any(|t| t.requires_grad())) {
        return Ok(y);
    }
    let needs = NormNeeds {
        x: x.requires_grad(),
        weight: weight.is_some_and(|w| w.requires_grad()),
        bias: bias.is_some_and(|b| b.requires_grad()),
    };
    let saved: Vec<&Tensor> = [Some(x), weight, Some(&mean), Some(&invstd)]
        .into_iter()
        .flatten()
        .collect();
    let (xs, ws, bshape) = (x.clone(), weight.cloned(), bias.map(|b| b.shape().to_vec()));
    let (ms, vs, is) = (mean.clone(), var.clone(), invstd.clone());
    Ok(record(y, "batch_norm", &inputs, &saved, move |g| {
        let (dx, dw, db) = if is_grad_enabled() {
            batch_norm_grad_ops(&xs, g, ws.as_ref(), &ms, &is, use_batch, eps, needs)
        } else {
            or_panic(batchnorm::backward_tensors(
                OP,
                &xs,
                g,
                (&ms, &vs, &is),
                ws.as_ref(),
                use_batch,
                eps,
                needs,
            ))
        };
        let mut grads = vec![dx];
        if let Some(w) = &ws {
            grads.push(dw.map(|t| t.reshape(w.shape())));
        }
        if let Some(shape) = &bshape {
            grads.push(db.map(|t| t.reshape(shape.as_slice())));
        }
        grads
    }))
}

/// The batch-norm gradients `(dx, dweight, dbias)` as differentiable tensor ops (for
/// `create_graph`; `dweight`, `dbias` of shape `[C]`). With batch statistics they are
/// recomputed from `x` (`x̂ = (x − mean)·rstd`, `ĝ = g·w`,
/// `dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))` over all dims but 1); with fixed ones
/// (`mean`, `invstd`, `[C]`) `dx = g·w·invstd`. In both `dw = Σ g·x̂`, `db = Σ g`.
#[allow(clippy::too_many_arguments)]
fn batch_norm_grad_ops(
    x: &Tensor,
    g: &Tensor,
    w: Option<&Tensor>,
    mean: &Tensor,
    invstd: &Tensor,
    use_batch: bool,
    eps: f64,
    needs: NormNeeds,
) -> (Option<Tensor>, Option<Tensor>, Option<Tensor>) {
    let c = x.size(1);
    let mut bshape = vec![1usize; x.ndim()];
    bshape[1] = c;
    let bshape = bshape.as_slice();
    let dims: Vec<isize> = (0..x.ndim() as isize).filter(|&d| d != 1).collect();
    let dims = dims.as_slice();
    let wb = w.map(|w| w.reshape(bshape));
    let (xhat, rstd) = if use_batch {
        let mean = x.mean(dims, true);
        let xc = x - &mean;
        let rstd = ((&xc * &xc).mean(dims, true) + eps).rsqrt();
        (&xc * &rstd, rstd)
    } else {
        let rstd = invstd.reshape(bshape);
        ((x - &mean.reshape(bshape)) * &rstd, rstd)
    };
    let dx = needs.x.then(|| {
        let gy = match &wb {
            Some(w) => g * w,
            None => g.clone(),
        };
        if use_batch {
            let a = gy.mean(dims, true);
            let b = (&gy * &xhat).mean(dims, true);
            &rstd * ((&gy - &a) - &xhat * &b)
        } else {
            gy * &rstd
        }
    });
    let dw = (needs.weight && w.is_some()).then(|| (g * &xhat).sum(dims, false));
    let db = needs.bias.then(|| g.sum(dims, false));
    (dx, dw, db)
}

/// A keep-mask scaled by `1/(1−p)` (inverted dropout), of `shape`, in `dtype` (a float
/// dtype; panics naming `dropout` otherwise).
#[track_caller]
pub fn dropout_mask(shape: &[usize], p: f64, dtype: DType) -> Tensor {
    or_panic(with_global_generator(|g| {
        g.scaled_bernoulli(shape, 1.0 - p, 1.0 / (1.0 - p), dtype)
    }))
}

fn check_p(op: &'static str, p: f64) -> Result<()> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(Error::config(
            op,
            format!("dropout probability must be in [0, 1], got {p}"),
        ))
    }
}

/// Inverted dropout: in training, zeroes each element with probability `p` and scales
/// the rest by `1/(1−p)`; the identity otherwise.
pub fn dropout(x: &Tensor, p: f64, training: bool) -> Result<Tensor> {
    check_p("dropout", p)?;
    if !training || p == 0.0 {
        return Ok(x.clone());
    }
    if p == 1.0 {
        return x.try_mul(0.0);
    }
    // one recorded node, `dropout`, on both devices; its backward multiplies by the same
    // mask (differentiable ops under create_graph)
    let grad = is_grad_enabled() && x.requires_grad();
    #[cfg(feature = "cuda")]
    if x.is_cuda() && x.dtype().is_float() {
        // one kernel each way, the same keep-mask bits as `dropout_mask`, drawn on the
        // device; the 1-byte mask is what the backward keeps
        let (y, keep) = crate::cuda::ops::dropout(x, p)?;
        if !grad {
            return Ok(y);
        }
        return Ok(record(y, "dropout", &[x], &[], move |g| {
            let dx = if is_grad_enabled() {
                g * keep.to_dtype(g.dtype()) * (1.0 / (1.0 - p))
            } else {
                or_panic(crate::cuda::ops::dropout_backward(g, &keep, p))
            };
            vec![Some(dx)]
        }));
    }
    let mask = dropout_mask(x.shape(), p, x.dtype()).try_to(x.device())?;
    let y = x.detach().try_mul(&mask)?;
    if !grad {
        return Ok(y);
    }
    Ok(record(y, "dropout", &[x], &[], move |g| {
        vec![Some(g * &mask)]
    }))
}

/// Channel dropout (`Dropout2d`/`Dropout3d`): zeroes whole channels. `x` is
/// `[N, C, spatial…]` with `spatial` dims, or unbatched `[C, spatial…]`.
pub fn feature_dropout(x: &Tensor, p: f64, training: bool, spatial: usize) -> Result<Tensor> {
    let op = if spatial == 3 {
        "Dropout3d"
    } else {
        "Dropout2d"
    };
    check_p(op, p)?;
    let r = x.ndim();
    if r != spatial + 1 && r != spatial + 2 {
        return Err(Error::shape(
            op,
            format!(
                "expected input of rank {} ([N, C, ..]) or {} ([C, ..]), got {}",
                spatial + 2,
                spatial + 1,
                fmt_shape(x.shape())
            ),
        ));
    }
    if !training || p == 0.0 {
        return Ok(x.clone());
    }
    let keep = r - spatial; // leading dims that get their own mask entry
    let mut mshape: Vec<usize> = x.shape()[..keep].to_vec();
    mshape.extend(std::iter::repeat_n(1, spatial));
    // one entry per channel, drawn on the CPU (the generator's stream), used on x's device
    x.try_mul(dropout_mask(&mshape, p, x.dtype()).try_to(x.device())?)
}

/// Scaled dot-product attention, `softmax(q kᵀ · scale + mask) v`, over `[.., Tq, D]`
/// queries, `[.., Tk, D]` keys and `[.., Tk, Dv]` values (batch dims broadcast); returns
/// the `[.., Tq, Dv]` output, as `torch.nn.functional.scaled_dot_product_attention`
/// (see [`scaled_dot_product_attention_with_weights`] for the attention weights too).
///
/// `mask` follows PyTorch: a **bool** mask is `true` where a query *may* attend; a float
/// mask is added to the scores; either broadcasts to the scores' `[.., Tq, Tk]`. `causal`
/// additionally hides key `j` from query `i` when `j > i` (aligned at the top left, as
/// PyTorch's `is_causal`, also when `Tq ≠ Tk`). `scale` defaults to `1/√D`. Dropout
/// (training only) applies to the weights. A query that may attend to no key gets a NaN
/// output, as in PyTorch.
///
/// f32/f64 tensors on the CPU, and f32/f64/f16/bf16 tensors on CUDA with head dims up
/// to 128 (with a bool mask, or a float mask of their dtype that does not require grad,
/// that does not enlarge the batch) take the fused kernels: those of `cpu/attention.rs`
/// on the CPU, and on CUDA those of `flint-kernels`' attention module
/// (`cuda/attention.rs`; tensor cores for f32, f16 and bf16 with head dims up to 64 on
/// compute capability 8.0+). The `[.., Tq, Tk]` scores
/// are never stored, the causal upper triangle is skipped, and one
/// `scaled_dot_product_attention` node is recorded whose backward recomputes the
/// weights block by block (a fully masked query gets zero gradients). Its dropout draws
/// the same mask as the composed path from the same generator state, on either device.
/// Other inputs run [`scaled_dot_product_attention_with_weights`]'s composition of
/// tensor ops.
///
/// ```
/// use flint_runtime::nn::functional::scaled_dot_product_attention;
/// use flint_runtime::Tensor;
/// let q = Tensor::zeros([1, 3, 2], ());
/// let v = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], [1, 3, 2]);
/// let y = scaled_dot_product_attention(&q, &q, &v, None, true, 0.0, false, None).unwrap();
/// // equal scores: query i averages the values of keys 0..=i
/// let y = y.to_vec::<f32>();
/// assert_eq!(y[..4], [1.0, 0.0, 0.5, 0.5]);
/// assert!((y[4] - 2.0 / 3.0).abs() < 1e-6 && (y[5] - 2.0 / 3.0).abs() < 1e-6);
/// ```
#[allow(clippy::too_many_arguments)] // PyTorch's signature
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
    dropout_p: f64,
    training: bool,
    scale: Option<f64>,
) -> Result<Tensor> {
    check_attention_shapes(q, k, v)?;
    check_p("dropout", dropout_p)?;
    let scale = scale.unwrap_or(1.0 / (q.size(-1) as f64).sqrt());
    let drop = (training && dropout_p > 0.0).then_some(dropout_p);
    match attention::fused_batch(q, k, v, mask) {
        // (p = 1 drops everything without drawing: the composed path)
        Some(batch) if drop.is_none_or(|p| p < 1.0) => {
            // the draw the composed path's dropout makes: one element per score
            let key = drop.map(|p| {
                let n = batch.iter().product::<usize>() * q.size(-2) * k.size(-2);
                let (seed, first) = with_global_generator(|g| g.reserve_bernoulli(n));
                attention::DropoutKey { seed, first, p }
            });
            attention_fused(q, k, v, mask, &batch, causal, scale, key)
        }
        _ => Ok(attention_composed(q, k, v, mask, causal, scale, dropout_p, training)?.0),
    }
}

/// [`scaled_dot_product_attention`] that also returns the attention weights
/// `softmax(q kᵀ · scale + mask)` (`[.., Tq, Tk]`, before dropout), as a composition of
/// tensor ops (the weights are materialised anyway): for callers that need them, such as
/// [`MultiheadAttention`](super::MultiheadAttention) with `need_weights`. Its dropout draws
/// the same mask as the fused path.
///
/// ```
/// use flint_runtime::nn::functional::scaled_dot_product_attention_with_weights;
/// use flint_runtime::Tensor;
/// let q = Tensor::zeros([1, 3, 2], ());
/// let v = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], [1, 3, 2]);
/// let (y, p) =
///     scaled_dot_product_attention_with_weights(&q, &q, &v, None, true, 0.0, false, None)
///         .unwrap();
/// // equal scores: query i averages the values of keys 0..=i
/// assert_eq!(p.to_vec::<f32>(), vec![1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]);
/// assert_eq!(y.to_vec::<f32>()[..4], [1.0, 0.0, 0.5, 0.5]);
/// ```
#[allow(clippy::too_many_arguments)] // PyTorch's signature
pub fn scaled_dot_product_attention_with_weights(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
    dropout_p: f64,
    training: bool,
    scale: Option<f64>,
) -> Result<(Tensor, Tensor)> {
    check_attention_shapes(q, k, v)?;
    let scale = scale.unwrap_or(1.0 / (q.size(-1) as f64).sqrt());
    attention_composed(q, k, v, mask, causal, scale, dropout_p, training)
}

/// The shape check of both attention functions.
fn check_attention_shapes(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
    let d = q.size(-1);
    if q.ndim() < 2 || k.ndim() < 2 || v.ndim() < 2 || k.size(-1) != d || v.size(-2) != k.size(-2) {
        return Err(Error::shape(
            "scaled_dot_product_attention",
            format!(
                "expected q [.., Tq, D], k [.., Tk, D], v [.., Tk, Dv], got q {}, k {}, v {}",
                fmt_shape(q.shape()),
                fmt_shape(k.shape()),
                fmt_shape(v.shape())
            ),
        ));
    }
    Ok(())
}

/// The attention weights `softmax(q kᵀ · scale + mask)` (causal-masked) as tensor ops.
fn attention_probs(
    q: &Tensor,
    k: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
    scale: f64,
) -> Result<Tensor> {
    let mut s = q.try_matmul(&k.try_transpose(-2, -1)?)?.try_mul(scale)?;
    if let Some(m) = mask {
        s = if m.dtype() == DType::Bool {
            s.try_masked_fill(&m.logical_not(), f64::NEG_INFINITY)?
        } else {
            s.try_add(m)?
        };
    }
    if causal {
        let (tq, tk) = (q.size(-2), k.size(-2));
        let hide = Tensor::ones([tq, tk], (DType::Bool, q.device())).triu(1);
        s = s.try_masked_fill(&hide, f64::NEG_INFINITY)?;
    }
    Ok(s.softmax(-1))
}

/// The composed attention: `(dropout(p) v, p)` with `p` from [`attention_probs`].
#[allow(clippy::too_many_arguments)]
fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
    scale: f64,
    dropout_p: f64,
    training: bool,
) -> Result<(Tensor, Tensor)> {
    let p = attention_probs(q, k, mask, causal, scale)?;
    let pd = dropout(&p, dropout_p, training)?;
    Ok((pd.try_matmul(v)?, p))
}

/// [`scaled_dot_product_attention`] with the fused kernels (`batch` from
/// [`attention::fused_batch`], `key` the dropout's reserved draw): one recorded
/// node (inputs q, k, v) whose backward runs the fused backward kernel or, under
/// `create_graph`, [`attention_grad_ops`].
#[allow(clippy::too_many_arguments)]
fn attention_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    batch: &[usize],
    causal: bool,
    scale: f64,
    key: Option<attention::DropoutKey>,
) -> Result<Tensor> {
    let unit_last = attention::unit_last;
    let (qc, kc, vc) = (unit_last(q)?, unit_last(k)?, unit_last(v)?);
    let (out, lse) = attention::forward(&qc, &kc, &vc, mask, batch, causal, scale, key)?;
    if !(is_grad_enabled() && [q, k, v].iter().any(|t| t.requires_grad())) {
        return Ok(out);
    }
    let saved_out = out.detach();
    let saved = [q, k, v, &saved_out.clone()];
    let (qs, ks, vs, ms) = (q.clone(), k.clone(), v.clone(), mask.cloned());
    let batch = batch.to_vec();
    Ok(record(
        out,
        "scaled_dot_product_attention",
        &[q, k, v],
        &saved,
        move |g| {
            let (dq, dk, dv) = if is_grad_enabled() {
                or_panic(attention_grad_ops(
                    &qs,
                    &ks,
                    &vs,
                    ms.as_ref(),
                    causal,
                    scale,
                    key,
                    g,
                ))
            } else {
                or_panic(attention::backward(
                    &qc,
                    &kc,
                    &vc,
                    ms.as_ref(),
                    &batch,
                    causal,
                    scale,
                    key,
                    &saved_out,
                    &lse,
                    g,
                ))
            };
            vec![
                qs.requires_grad().then(|| sum_to(&dq, qs.shape())),
                ks.requires_grad().then(|| sum_to(&dk, ks.shape())),
                vs.requires_grad().then(|| sum_to(&dv, vs.shape())),
            ]
        },
    ))
}

/// The gradients `(dq, dk, dv)` of the fused attention from the output gradient `g`, as
/// differentiable tensor ops (for `create_graph`), with the weights recomputed by
/// [`attention_probs`] (a fully masked query's NaN weights replaced by 0, as the fused
/// backward) and the dropout mask redrawn from its key: with `M` the scaled keep-mask,
/// `Pd = P ∘ M`, `dP = (g vᵀ) ∘ M`, `dS = P ∘ (dP − rowsum(dP ∘ P))`,
/// `dq = scale·dS k`, `dk = scale·dSᵀ q`, `dv = Pdᵀ g` (in the broadcast batch shape).
#[allow(clippy::too_many_arguments)]
fn attention_grad_ops(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
    scale: f64,
    key: Option<attention::DropoutKey>,
    g: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let p = attention_probs(q, k, mask, causal, scale)?;
    let p = p.try_where(&p.try_eq(&p)?, 0.0)?;
    let m = match key {
        Some(key) => {
            let mut rng = crate::random::Generator::new(key.seed);
            rng.set_state(key.seed, key.first);
            // drawn on the host, used on p's device
            let m = rng.scaled_bernoulli(p.shape(), 1.0 - key.p, 1.0 / (1.0 - key.p), p.dtype())?;
            Some(m.try_to(p.device())?)
        }
        None => None,
    };
    let (pd, dp) = match &m {
        Some(m) => (
            p.try_mul(m)?,
            g.try_matmul(&v.try_transpose(-2, -1)?)?.try_mul(m)?,
        ),
        None => (p.clone(), g.try_matmul(&v.try_transpose(-2, -1)?)?),
    };
    let delta = dp.try_mul(&p)?.try_sum(-1isize, true)?;
    let ds = p.try_mul(&dp.try_sub(&delta)?)?.try_mul(scale)?;
    Ok((
        ds.try_matmul(k)?,
        ds.try_transpose(-2, -1)?.try_matmul(q)?,
        pd.try_transpose(-2, -1)?.try_matmul(g)?,
    ))
}

/// A `[B, T]` bool mask that is `true` at padded positions (`t >= lengths[b]`): the
/// `key_padding_mask` of [`MultiheadAttention`](super::MultiheadAttention).
///
/// ```
/// let m = flint_runtime::nn::functional::padding_mask(&[3, 1], 3);
/// assert_eq!(m.to_vec::<bool>(), vec![false, false, false, false, true, true]);
/// ```
pub fn padding_mask(lengths: &[usize], max_len: usize) -> Tensor {
    let v: Vec<bool> = lengths
        .iter()
        .flat_map(|&l| (0..max_len).map(move |t| t >= l))
        .collect();
    Tensor::from_vec(v, [lengths.len(), max_len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::{grad, gradcheck, gradgradcheck, GradcheckOptions};

    fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
        assert_eq!(got.shape(), want.shape(), "{what}: shapes");
        for (i, (a, b)) in got.to_f64_vec().iter().zip(want.to_f64_vec()).enumerate() {
            assert!(
                (a - b).abs() <= tol * (1.0 + b.abs()),
                "{what}: element {i}: {a} vs {b}"
            );
        }
    }

    /// The error of `x − mean` grows with `|x|`: tolerances scale by `max(1, max |x|)`.
    fn scale(x: &Tensor) -> f64 {
        x.to_f64_vec().iter().fold(1.0, |m, v| m.max(v.abs()))
    }

    /// `(x, normalized_shape)` cases: one and two normalised dims, rows of length 1, a
    /// non-contiguous view, large offsets (a one-pass variance would lose them; the
    /// offset is smaller in f32, whose rounding of `x` itself is `|x|·6e-8`).
    fn cases(dtype: DType) -> Vec<(Tensor, Vec<usize>)> {
        let offset = if dtype == DType::F64 { 1e4 } else { 10.0 };
        let big = Tensor::randn([6, 40], DType::F64) + offset;
        vec![
            (Tensor::randn([4, 8], DType::F64), vec![8]),
            (Tensor::randn([2, 3, 5], DType::F64) * 3.0, vec![3, 5]),
            (Tensor::randn([7, 1], DType::F64), vec![1]),
            (Tensor::randn([9, 4], DType::F64).t(), vec![9]),
            (big, vec![40]),
            (Tensor::randn([300, 256], DType::F64), vec![256]),
        ]
        .into_iter()
        .map(|(x, s)| (x.to_dtype(dtype), s))
        .collect()
    }

    #[test]
    fn fused_layer_norm_matches_the_composition() {
        // f64: 1e-12; f32: 1e-5 relative (f32 lane sums against the composition's f64
        // sums)
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            for (x, ns) in cases(dtype) {
                let w = Tensor::randn(&ns, dtype);
                let b = Tensor::randn(&ns, dtype);
                let k = ns.len();
                let tol = tol * scale(&x);
                for (wo, bo) in [
                    (None, None),
                    (Some(&w), None),
                    (None, Some(&b)),
                    (Some(&w), Some(&b)),
                ] {
                    let what = format!(
                        "{dtype} {:?} w {} b {}",
                        x.shape(),
                        wo.is_some(),
                        bo.is_some()
                    );
                    let fused = layer_norm(&x, &ns, wo, bo, 1e-5).unwrap();
                    let composed = layer_norm_composed(&x, k, wo, bo, 1e-5).unwrap();
                    assert_close(&what, &fused, &composed, tol);
                }
            }
        }
        // a row of equal values: x̂ = 0, the output is the bias
        let x = Tensor::full([2, 3], 5.0, DType::F64);
        let b = Tensor::from_vec(vec![0.5f64, -1.0, 2.0], [3]);
        let y = layer_norm(&x, &[3], None, Some(&b), 1e-5).unwrap();
        assert_eq!(y.to_vec::<f64>(), vec![0.5, -1.0, 2.0, 0.5, -1.0, 2.0]);
        // the input shape is still checked
        let e = layer_norm(&x, &[4], None, None, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected input of shape [.., 4], got [2, 3]"),
            "{e}"
        );
        // a weight that only broadcasts keeps the composition
        let w = Tensor::from_vec(vec![2.0f64], [1]);
        let y = layer_norm(&x, &[3], Some(&w), None, 1e-5).unwrap();
        assert_eq!(y.to_vec::<f64>(), vec![0.0; 6]);
    }

    #[test]
    fn fused_layer_norm_gradients_match_the_composition() {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            for (x, ns) in cases(dtype) {
                let x = x.detach().requires_grad_(true);
                let w = (Tensor::randn(&ns, dtype) + 1.0).requires_grad_(true);
                let b = Tensor::randn(&ns, dtype).requires_grad_(true);
                let gout = Tensor::randn(x.shape(), dtype);
                let k = ns.len();
                let tol = tol * scale(&x);
                for (wo, bo) in [(None, None), (Some(&w), None), (Some(&w), Some(&b))] {
                    let leaves: Vec<Tensor> =
                        [Some(&x), wo, bo].into_iter().flatten().cloned().collect();
                    let fused = layer_norm(&x, &ns, wo, bo, 1e-5).unwrap();
                    assert_eq!(fused.grad_fn().unwrap().name(), "layer_norm");
                    let composed = layer_norm_composed(&x, k, wo, bo, 1e-5).unwrap();
                    let gouts = [gout.clone()];
                    let a = grad(&[fused], &leaves, Some(&gouts), false, false).unwrap();
                    let c = grad(&[composed], &leaves, Some(&gouts), false, false).unwrap();
                    for (i, (a, c)) in a.iter().zip(&c).enumerate() {
                        let what = format!("{dtype} {:?} input {i}", x.shape());
                        assert_close(&what, a.as_ref().unwrap(), c.as_ref().unwrap(), tol);
                    }
                }
                // only the weight requires grad: dx is not computed, dw still right
                let xd = x.detach();
                let fused = layer_norm(&xd, &ns, Some(&w), None, 1e-5).unwrap();
                let composed = layer_norm_composed(&xd, k, Some(&w), None, 1e-5).unwrap();
                let gouts = [gout.clone()];
                let a = grad(
                    &[fused],
                    std::slice::from_ref(&w),
                    Some(&gouts),
                    false,
                    false,
                )
                .unwrap();
                let c = grad(
                    &[composed],
                    std::slice::from_ref(&w),
                    Some(&gouts),
                    false,
                    false,
                )
                .unwrap();
                assert_close(
                    "dw alone",
                    a[0].as_ref().unwrap(),
                    c[0].as_ref().unwrap(),
                    tol,
                );
            }
        }
    }

    #[test]
    fn fused_layer_norm_gradcheck_first_and_second_order() {
        let opts = GradcheckOptions::default();
        let x = Tensor::randn([5, 3], DType::F64).t(); // [3, 5], non-contiguous
        let w = Tensor::randn([5], DType::F64);
        let b = Tensor::randn([5], DType::F64);
        let f = |v: &[Tensor]| layer_norm(&v[0], &[5], Some(&v[1]), Some(&v[2]), 1e-5).unwrap();
        let inputs = [x.clone(), w, b];
        gradcheck(f, &inputs, opts).unwrap();
        gradgradcheck(f, &inputs, opts).unwrap();
        let plain = |v: &[Tensor]| layer_norm(&v[0], &[5], None, None, 1e-5).unwrap();
        gradcheck(plain, std::slice::from_ref(&x), opts).unwrap();
        gradgradcheck(plain, &[x], opts).unwrap();
        // two normalised dims
        let x = Tensor::randn([2, 3, 4], DType::F64);
        let w = Tensor::randn([3, 4], DType::F64);
        let f2 = |v: &[Tensor]| layer_norm(&v[0], &[3, 4], Some(&v[1]), None, 1e-5).unwrap();
        gradcheck(f2, &[x.clone(), w.clone()], opts).unwrap();
        gradgradcheck(f2, &[x, w], opts).unwrap();
    }

    /// Batch-norm inputs: `[N, C]`, `[N, C, L]` (and a non-contiguous one), `[N, C, H, W]`,
    /// `[N, C, D, H, W]`, and one large enough to split across the pool with an offset
    /// (smaller in f32, as for layer norm).
    fn bn_cases(dtype: DType) -> Vec<Tensor> {
        let offset = if dtype == DType::F64 { 1e4 } else { 10.0 };
        vec![
            Tensor::randn([6, 3], DType::F64),
            Tensor::randn([4, 3, 5], DType::F64) * 3.0,
            Tensor::randn([4, 5, 3], DType::F64).transpose(1, 2),
            Tensor::randn([2, 4, 3, 5], DType::F64),
            Tensor::randn([2, 3, 2, 3, 4], DType::F64),
            Tensor::randn([8, 6, 24, 24], DType::F64) + offset,
        ]
        .into_iter()
        .map(|x| x.to_dtype(dtype))
        .collect()
    }

    /// Fresh running statistics for `c` channels: `(mean, var, num_batches_tracked)`.
    fn bn_buffers(c: usize, dtype: DType) -> (Tensor, Tensor, Tensor) {
        (
            Tensor::randn([c], dtype),
            Tensor::rand([c], dtype) + 0.5,
            Tensor::full([0usize; 0], 2.0, DType::I64),
        )
    }

    #[test]
    fn fused_batch_norm_matches_the_composition() {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            for x in bn_cases(dtype) {
                let c = x.size(1);
                let w = Tensor::randn([c], dtype);
                let b = Tensor::randn([c], dtype);
                let tol = tol * scale(&x);
                // (training, with running stats, momentum)
                for (training, with_stats, momentum) in [
                    (true, true, Some(0.1)),
                    (true, true, None),
                    (true, false, None),
                    (false, true, Some(0.1)),
                    (false, false, None),
                ] {
                    for (wo, bo) in [
                        (None, None),
                        (Some(&w), None),
                        (None, Some(&b)),
                        (Some(&w), Some(&b)),
                    ] {
                        let what = format!(
                            "{dtype} {:?} train {training} stats {with_stats} {momentum:?} \
                             w {} b {}",
                            x.shape(),
                            wo.is_some(),
                            bo.is_some()
                        );
                        let (m1, v1, n1) = bn_buffers(c, dtype);
                        let (m2, v2, n2) = (m1.deep_clone(), v1.deep_clone(), n1.deep_clone());
                        let s1 = with_stats.then_some(RunningStats {
                            mean: &m1,
                            var: &v1,
                            num_batches_tracked: &n1,
                            momentum,
                        });
                        let s2 = with_stats.then_some(RunningStats {
                            mean: &m2,
                            var: &v2,
                            num_batches_tracked: &n2,
                            momentum,
                        });
                        let use_batch = training || !with_stats;
                        assert!(batch_norm_fusable(&x, s1.as_ref(), wo, bo, use_batch));
                        let fused = batch_norm(&x, s1, wo, bo, training, 1e-5).unwrap();
                        let composed =
                            batch_norm_composed(&x, s2, wo, bo, training, use_batch, 1e-5).unwrap();
                        assert_close(&what, &fused, &composed, tol);
                        assert_close(&format!("{what} running mean"), &m1, &m2, tol);
                        assert_close(&format!("{what} running var"), &v1, &v2, tol);
                        assert_eq!(n1.to_vec::<i64>(), n2.to_vec::<i64>());
                    }
                }
            }
        }
        // the running statistics by hand: channel 0 holds [1, 3], channel 1 [2, 6];
        // mean 0.9·0 + 0.1·2 and 0.1·4; var 0.9·1 + 0.1·2 and 0.9·1 + 0.1·8 (unbiased)
        let x = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 6.0], [2, 2]);
        let (m, v, n) = (
            Tensor::zeros([2], DType::F64),
            Tensor::ones([2], DType::F64),
            Tensor::zeros([0usize; 0], DType::I64),
        );
        let stats = RunningStats {
            mean: &m,
            var: &v,
            num_batches_tracked: &n,
            momentum: Some(0.1),
        };
        let y = batch_norm(&x, Some(stats), None, None, true, 0.0).unwrap();
        assert_eq!(y.to_vec::<f64>(), vec![-1.0, -1.0, 1.0, 1.0]);
        assert_close("mean", &m, &Tensor::from_vec(vec![0.2, 0.4], [2]), 1e-15);
        assert_close("var", &v, &Tensor::from_vec(vec![1.1, 1.7], [2]), 1e-15);
        assert_eq!(n.item::<i64>(), 1);
        // one value per channel in training is an error; a weight of another dtype
        // keeps the composition
        let e = batch_norm(&x.reshape([1, 4]), None, None, None, true, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 1 value per channel"), "{e}");
        let w32 = Tensor::ones([2], DType::F32);
        assert!(!batch_norm_fusable(&x, None, Some(&w32), None, true));
    }

    #[test]
    fn fused_batch_norm_gradients_match_the_composition() {
        for (dtype, tol) in [(DType::F64, 1e-11), (DType::F32, 1e-4)] {
            for x in bn_cases(dtype) {
                let c = x.size(1);
                let x = x.detach().requires_grad_(true);
                let w = (Tensor::randn([c], dtype) + 1.0).requires_grad_(true);
                let b = Tensor::randn([c], dtype).requires_grad_(true);
                let gout = Tensor::randn(x.shape(), dtype);
                let tol = tol * scale(&x);
                let (m, v, n) = bn_buffers(c, dtype);
                for training in [true, false] {
                    for (wo, bo) in [(None, None), (Some(&w), None), (Some(&w), Some(&b))] {
                        let stats = || {
                            Some(RunningStats {
                                mean: &m,
                                var: &v,
                                num_batches_tracked: &n,
                                momentum: Some(0.1),
                            })
                        };
                        let leaves: Vec<Tensor> =
                            [Some(&x), wo, bo].into_iter().flatten().cloned().collect();
                        let fused = batch_norm(&x, stats(), wo, bo, training, 1e-5).unwrap();
                        assert_eq!(fused.grad_fn().unwrap().name(), "batch_norm");
                        let composed =
                            batch_norm_composed(&x, stats(), wo, bo, training, training, 1e-5)
                                .unwrap();
                        let gouts = [gout.clone()];
                        let a = grad(&[fused], &leaves, Some(&gouts), false, false).unwrap();
                        let cg = grad(&[composed], &leaves, Some(&gouts), false, false).unwrap();
                        for (i, (a, cg)) in a.iter().zip(&cg).enumerate() {
                            let what =
                                format!("{dtype} {:?} train {training} input {i}", x.shape());
                            assert_close(&what, a.as_ref().unwrap(), cg.as_ref().unwrap(), tol);
                        }
                    }
                }
                // only the weight requires grad: dx is not computed, dw still right
                let xd = x.detach();
                let fused = batch_norm(&xd, None, Some(&w), None, true, 1e-5).unwrap();
                let composed =
                    batch_norm_composed(&xd, None, Some(&w), None, true, true, 1e-5).unwrap();
                let gouts = [gout.clone()];
                let w1 = std::slice::from_ref(&w);
                let a = grad(&[fused], w1, Some(&gouts), false, false).unwrap();
                let cg = grad(&[composed], w1, Some(&gouts), false, false).unwrap();
                let (a, cg) = (a[0].as_ref().unwrap(), cg[0].as_ref().unwrap());
                assert_close("dw alone", a, cg, tol);
            }
        }
    }

    #[test]
    fn fused_batch_norm_gradcheck_first_and_second_order() {
        let opts = GradcheckOptions::default();
        let x = Tensor::randn([4, 5, 3], DType::F64).transpose(1, 2); // [4, 3, 5], a view
        let w = Tensor::randn([3], DType::F64);
        let b = Tensor::randn([3], DType::F64);
        let (m, v, n) = bn_buffers(3, DType::F64);
        for training in [true, false] {
            let f = |t: &[Tensor]| {
                let stats = RunningStats {
                    mean: &m,
                    var: &v,
                    num_batches_tracked: &n,
                    momentum: Some(0.1),
                };
                batch_norm(&t[0], Some(stats), Some(&t[1]), Some(&t[2]), training, 1e-5).unwrap()
            };
            let inputs = [x.clone(), w.clone(), b.clone()];
            gradcheck(f, &inputs, opts).unwrap();
            gradgradcheck(f, &inputs, opts).unwrap();
        }
        // no affine, [N, C] and [N, C, H, W], batch statistics
        for x in [
            Tensor::randn([5, 3], DType::F64),
            Tensor::randn([2, 3, 2, 3], DType::F64),
        ] {
            let plain = |t: &[Tensor]| batch_norm(&t[0], None, None, None, true, 1e-5).unwrap();
            gradcheck(plain, std::slice::from_ref(&x), opts).unwrap();
            gradgradcheck(plain, &[x], opts).unwrap();
        }
    }

    /// The fused attention's dropout (from a given key) against the composition with the
    /// keep-mask the composed path would draw from the same generator state: the same
    /// mask bits (the values agree far closer than a single flipped bit would allow),
    /// outputs and gradients; then gradcheck and gradgradcheck of the fused node under
    /// dropout (the same key at every evaluation).
    #[test]
    fn fused_attention_dropout_matches_the_composed_mask() {
        let mut g = crate::Generator::new(31);
        for (dtype, tol) in [(DType::F64, 1e-11), (DType::F32, 2e-5)] {
            for causal in [false, true] {
                let leaf = |g: &mut crate::Generator, s: &[usize]| {
                    g.randn(s, DType::F64).to_dtype(dtype).requires_grad_(true)
                };
                let (q, k, v) = (
                    leaf(&mut g, &[2, 3, 37, 8]),
                    leaf(&mut g, &[2, 3, 37, 8]),
                    leaf(&mut g, &[2, 3, 37, 5]),
                );
                let mask = g.randn([37, 37], DType::F64).to_dtype(dtype);
                let batch = attention::fused_batch(&q, &k, &v, Some(&mask)).expect("fusable");
                let n = 2 * 3 * 37 * 37;
                let mut rng = crate::Generator::new(77);
                rng.set_state(77, 5);
                let (seed, first) = rng.reserve_bernoulli(n);
                assert_eq!((seed, first, rng.offset()), (77, 5, 5 + n as u64));
                let key = attention::DropoutKey {
                    seed,
                    first,
                    p: 0.3,
                };
                let y = attention_fused(&q, &k, &v, Some(&mask), &batch, causal, 0.4, Some(key))
                    .unwrap();
                let mut rng = crate::Generator::new(77);
                rng.set_state(77, 5);
                let keep = rng
                    .scaled_bernoulli(&[2, 3, 37, 37], 0.7, 1.0 / 0.7, dtype)
                    .unwrap();
                // the composed path's dropout with that mask
                let y0 = attention_probs(&q, &k, Some(&mask), causal, 0.4)
                    .unwrap()
                    .mul(&keep)
                    .matmul(&v);
                let gy = g.randn(y.shape(), DType::F64).to_dtype(dtype);
                let grads = |y: &Tensor| {
                    crate::autograd::grad(
                        std::slice::from_ref(y),
                        &[q.clone(), k.clone(), v.clone()],
                        Some(std::slice::from_ref(&gy)),
                        false,
                        false,
                    )
                    .unwrap()
                    .into_iter()
                    .map(|t| t.expect("grad"))
                    .collect::<Vec<_>>()
                };
                let what = format!("{dtype} causal={causal}");
                assert_close(&format!("{what}: y"), &y, &y0, tol);
                for (a, b) in grads(&y).iter().zip(grads(&y0)) {
                    assert_close(&format!("{what}: grad"), a, &b, tol * 10.0);
                }
            }
        }
        let opts = GradcheckOptions::default();
        let xs = [
            g.randn([2, 6, 3], DType::F64),
            g.randn([2, 7, 3], DType::F64),
            g.randn([2, 7, 2], DType::F64),
        ];
        let batch = attention::fused_batch(&xs[0], &xs[1], &xs[2], None).expect("fusable");
        let key = attention::DropoutKey {
            seed: 3,
            first: 0,
            p: 0.5,
        };
        let f = |t: &[Tensor]| {
            attention_fused(&t[0], &t[1], &t[2], None, &batch, true, 0.5, Some(key)).unwrap()
        };
        gradcheck(f, &xs, opts).unwrap();
        gradgradcheck(f, &xs, opts).unwrap();
    }
}
