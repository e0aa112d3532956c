//! Reductions over any dims with `keepdim`, and the softmax family.

use crate::autograd::{is_grad_enabled, record, record_with_output};
use crate::cpu::reduce::reduce;
use crate::cpu::rowwise;
use crate::dispatch;
use crate::dtype::{DType, Element};
use crate::error::{or_panic, Error, Result};
use crate::layout::{fmt_shape, normalize_dim};
use crate::storage::BufferElement;
use crate::tensor::Tensor;

/// The dims a reduction runs over: one dim (`1`, `-1`), several (`[0, 2]`, `&[..]`), or
/// [`All`] of them.
pub trait ReduceDims {
    /// The dims, possibly negative.
    fn dims(&self, ndim: usize) -> Vec<isize>;
}

/// Every dim (a full reduction).
#[derive(Clone, Copy, Debug)]
pub struct All;

impl ReduceDims for All {
    fn dims(&self, ndim: usize) -> Vec<isize> {
        (0..ndim as isize).collect()
    }
}
macro_rules! reduce_dims {
    ($($t:ty),*) => {$(
        impl ReduceDims for $t {
            fn dims(&self, _: usize) -> Vec<isize> { vec![*self as isize] }
        }
        impl<const N: usize> ReduceDims for [$t; N] {
            fn dims(&self, _: usize) -> Vec<isize> { self.iter().map(|&d| d as isize).collect() }
        }
        impl ReduceDims for &[$t] {
            fn dims(&self, _: usize) -> Vec<isize> { self.iter().map(|&d| d as isize).collect() }
        }
        impl ReduceDims for Vec<$t> {
            fn dims(&self, _: usize) -> Vec<isize> { self.iter().map(|&d| d as isize).collect() }
        }
    )*};
}
reduce_dims!(i32, i64, isize, usize);

/// Sorted, distinct, non-negative dims.
fn resolve(op: &'static str, t: &Tensor, dims: &impl ReduceDims) -> Result<Vec<usize>> {
    let mut out = dims
        .dims(t.ndim())
        .into_iter()
        .map(|d| normalize_dim(op, d, t.ndim().max(1)))
        .collect::<Result<Vec<_>>>()?;
    out.sort_unstable();
    let n = out.len();
    out.dedup();
    if out.len() != n {
        return Err(Error::index(
            op,
            format!("a dim appears twice in {:?}", dims.dims(t.ndim())),
        ));
    }
    if t.ndim() == 0 {
        out.clear();
    }
    Ok(out)
}

/// Output shape of a reduction.
fn out_shape(shape: &[usize], dims: &[usize], keepdim: bool) -> Vec<usize> {
    let mut s = Vec::with_capacity(shape.len());
    for (d, &n) in shape.iter().enumerate() {
        if dims.contains(&d) {
            if keepdim {
                s.push(1);
            }
        } else {
            s.push(n);
        }
    }
    s
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sum,
    Prod,
    Max,
    Min,
}

#[allow(clippy::bool_comparison)] // T may be bool
fn reduce_values(
    t: &Tensor,
    dims: &[usize],
    keepdim: bool,
    kind: Kind,
    op: &'static str,
) -> Result<Tensor> {
    let shape = out_shape(t.shape(), dims, keepdim);
    let n_red: usize = dims.iter().map(|&d| t.shape()[d]).product();
    if matches!(kind, Kind::Max | Kind::Min) && n_red == 0 {
        return Err(Error::shape(
            op,
            format!(
                "cannot reduce over an empty dim (shape {}) without an identity",
                fmt_shape(t.shape())
            ),
        ));
    }
    let mut dt = t.dtype();
    if dt == DType::Bool && matches!(kind, Kind::Sum | Kind::Prod) {
        dt = DType::I64;
    }
    let t = t.to_dtype_raw(dt)?;
    #[cfg(feature = "cuda")]
    if t.is_cuda() {
        let kind = match kind {
            Kind::Sum => "sum",
            Kind::Prod => "prod",
            Kind::Max => "max",
            Kind::Min => "min",
        };
        return crate::cuda::ops::reduce(kind, &t, dims, &shape);
    }
    let out = dispatch!(all dt, T => {
        t.with_slice::<T, _>(op, |s, l| {
            let v: Vec<T> = match (kind, T::DTYPE.is_float()) {
                // floats accumulate in f64
                (Kind::Sum, true) => reduce(s, l, dims, 0.0f64, |a, x: T, _| a + x.to_f64(), |a, b| a + b)
                    .into_iter().map(T::from_f64).collect(),
                (Kind::Prod, true) => reduce(s, l, dims, 1.0f64, |a, x: T, _| a * x.to_f64(), |a, b| a * b)
                    .into_iter().map(T::from_f64).collect(),
                (Kind::Sum, false) => reduce(s, l, dims, 0i64, |a, x: T, _| a.wrapping_add(x.to_i64()), i64::wrapping_add)
                    .into_iter().map(T::from_i64).collect(),
                (Kind::Prod, false) => reduce(s, l, dims, 1i64, |a, x: T, _| a.wrapping_mul(x.to_i64()), i64::wrapping_mul)
                    .into_iter().map(T::from_i64).collect(),
                (Kind::Max, _) => reduce(s, l, dims, None::<T>, |a, x: T, _| Some(match a {
                    Some(m) if !x.is_nan() && (m.is_nan() || m >= x) => m,
                    _ => x,
                }), |a, b| match (a, b) {
                    (Some(x), Some(y)) => Some(if x.is_nan() || x >= y { x } else { y }),
                    (a, None) => a,
                    (None, b) => b,
                }).into_iter().map(|v| v.unwrap_or_default()).collect(),
                (Kind::Min, _) => reduce(s, l, dims, None::<T>, |a, x: T, _| Some(match a {
                    Some(m) if !x.is_nan() && (m.is_nan() || m <= x) => m,
                    _ => x,
                }), |a, b| match (a, b) {
                    (Some(x), Some(y)) => Some(if x.is_nan() || x <= y { x } else { y }),
                    (a, None) => a,
                    (None, b) => b,
                }).into_iter().map(|v| v.unwrap_or_default()).collect(),
            };
            T::into_buffer(v)
        })?
    });
    Ok(Tensor::from_buffer(out, &shape))
}

/// Index of the max (or min) along one dim; ties go to the first, NaN wins.
#[allow(clippy::bool_comparison)] // T may be bool
fn arg_reduce(
    t: &Tensor,
    dim: usize,
    keepdim: bool,
    max: bool,
    op: &'static str,
) -> Result<Tensor> {
    if t.ndim() > 0 && t.shape()[dim] == 0 {
        return Err(Error::shape(
            op,
            format!(
                "cannot take {op} of an empty dim (shape {})",
                fmt_shape(t.shape())
            ),
        ));
    }
    let dims = if t.ndim() == 0 { vec![] } else { vec![dim] };
    let shape = out_shape(t.shape(), &dims, keepdim);
    #[cfg(feature = "cuda")]
    if t.is_cuda() {
        return crate::cuda::ops::arg_reduce(t, dims.first().copied(), max, &shape);
    }
    let v: Vec<i64> = dispatch!(all t.dtype(), T => t.with_slice::<T, _>(op, |s, l| {
        reduce(s, l, &dims, None::<(T, usize)>, |a, x: T, j| match a {
            None => Some((x, j)),
            Some((m, i)) => {
                let better = if m.is_nan() { false } else if x.is_nan() { true } else if max { x > m } else { x < m };
                Some(if better { (x, j) } else { (m, i) })
            }
        }, |a, b| match (a, b) {
            (Some((x, i)), Some((y, j))) => {
                let better = if x.is_nan() { false } else if y.is_nan() { true } else if max { y > x } else { y < x };
                Some(if better { (y, j) } else { (x, i) })
            }
            (a, None) => a,
            (None, b) => b,
        }).into_iter().map(|a| a.map_or(0, |(_, i)| i as i64)).collect()
    })?);
    Ok(Tensor::from_vec(v, shape))
}

/// The backward of `max`/`min` over dims: the gradient goes to the elements equal to the
/// extreme, split evenly among ties (like `torch.amax`).
#[track_caller]
fn record_extreme(out: Tensor, x: &Tensor, dims: &[usize], name: &'static str) -> Tensor {
    let kept = out_shape(x.shape(), dims, true);
    let dims = dims.to_vec();
    let (xs, y) = (x.clone(), out.detach());
    record(out, name, &[x], &[x], move |g| {
        let hit = xs.eq(y.reshape(kept.as_slice())).to_dtype(g.dtype());
        let count = hit.sum(dims.as_slice(), true);
        vec![Some(g.reshape(kept.as_slice()) * hit / count)]
    })
}

impl Tensor {
    /// Sum over `dims` (bool sums to i64; floats accumulate in f64).
    ///
    /// ```
    /// use flint_runtime::{All, Tensor};
    /// let t = Tensor::arange(0.0, 6.0, 1.0, ()).view([2, 3]);
    /// assert_eq!(t.sum(1, false).to_vec::<f32>(), vec![3.0, 12.0]);
    /// assert_eq!(t.sum([0, 1], true).shape(), &[1, 1]);
    /// assert_eq!(t.sum(All, false).item::<f32>(), 15.0);
    /// ```
    #[track_caller]
    pub fn sum(&self, dims: impl ReduceDims, keepdim: bool) -> Tensor {
        or_panic(self.try_sum(dims, keepdim))
    }
    /// Fallible [`Tensor::sum`].
    #[track_caller]
    pub fn try_sum(&self, dims: impl ReduceDims, keepdim: bool) -> Result<Tensor> {
        let d = resolve("sum", self, &dims)?;
        let out = reduce_values(self, &d, keepdim, Kind::Sum, "sum")?;
        let (shape, kept) = (self.shape().to_vec(), out_shape(self.shape(), &d, true));
        Ok(record(out, "sum", &[self], &[], move |g| {
            vec![Some(g.reshape(kept.as_slice()).expand(shape.as_slice()))]
        }))
    }
    /// Sum of all elements, as a 0-d tensor.
    pub fn sum_all(&self) -> Tensor {
        self.sum(All, false)
    }

    /// Product over `dims`.
    #[track_caller]
    pub fn prod(&self, dims: impl ReduceDims, keepdim: bool) -> Tensor {
        let d = or_panic(resolve("prod", self, &dims));
        let out = or_panic(reduce_values(self, &d, keepdim, Kind::Prod, "prod"));
        let kept = out_shape(self.shape(), &d, true);
        let (x, y) = (self.clone(), out.detach());
        // d prod / d xᵢ = prod / xᵢ (inputs must be non-zero for this formula)
        let dims = d.clone();
        record(out, "prod", &[self], &[self], move |g| {
            // recompute the product when the gradient itself must be differentiable
            let y = if crate::autograd::is_grad_enabled() {
                x.prod(dims.as_slice(), true)
            } else {
                y.reshape(kept.as_slice())
            };
            vec![Some(g.reshape(kept.as_slice()) * y / &x)]
        })
    }

    /// Mean over `dims` (a floating-point result).
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::from_vec(vec![1i64, 2, 3, 4], [2, 2]);
    /// assert_eq!(t.mean(0, false).to_vec::<f32>(), vec![2.0, 3.0]);
    /// ```
    #[track_caller]
    pub fn mean(&self, dims: impl ReduceDims, keepdim: bool) -> Tensor {
        or_panic(self.try_mean(dims, keepdim))
    }
    /// Fallible [`Tensor::mean`].
    #[track_caller]
    pub fn try_mean(&self, dims: impl ReduceDims, keepdim: bool) -> Result<Tensor> {
        let d = resolve("mean", self, &dims)?;
        let n: usize = d.iter().map(|&i| self.shape()[i]).product();
        let x = self.to_dtype(self.dtype().to_float());
        Ok(x.try_sum(d.as_slice(), keepdim)?.div(n as f64))
    }
    /// Mean of all elements, as a 0-d tensor.
    pub fn mean_all(&self) -> Tensor {
        self.mean(All, false)
    }

    /// Maximum over `dims` (values only, like `torch.amax`; NaN propagates).
    #[track_caller]
    pub fn max(&self, dims: impl ReduceDims, keepdim: bool) -> Tensor {
        or_panic(self.try_max(dims, keepdim))
    }
    /// Fallible [`Tensor::max`].
    #[track_caller]
    pub fn try_max(&self, dims: impl ReduceDims, keepdim: bool) -> Result<Tensor> {
        let d = resolve("max", self, &dims)?;
        let out = reduce_values(self, &d, keepdim, Kind::Max, "max")?;
        Ok(record_extreme(out, self, &d, "max"))
    }
    /// Minimum over `dims` (values only, like `torch.amin`; NaN propagates).
    #[track_caller]
    pub fn min(&self, dims: impl ReduceDims, keepdim: bool) -> Tensor {
        or_panic(self.try_min(dims, keepdim))
    }
    /// Fallible [`Tensor::min`].
    #[track_caller]
    pub fn try_min(&self, dims: impl ReduceDims, keepdim: bool) -> Result<Tensor> {
        let d = resolve("min", self, &dims)?;
        let out = reduce_values(self, &d, keepdim, Kind::Min, "min")?;
        Ok(record_extreme(out, self, &d, "min"))
    }
    /// Maximum along `dim` with its index, like `torch.max(x, dim)`.
    #[track_caller]
    pub fn max_dim(&self, dim: isize, keepdim: bool) -> (Tensor, Tensor) {
        (self.max(dim, keepdim), self.argmax(dim, keepdim))
    }
    /// Minimum along `dim` with its index, like `torch.min(x, dim)`.
    #[track_caller]
    pub fn min_dim(&self, dim: isize, keepdim: bool) -> (Tensor, Tensor) {
        (self.min(dim, keepdim), self.argmin(dim, keepdim))
    }

    /// Index of the maximum along `dim` (the first on ties), as i64.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::from_vec(vec![1.0f32, 5.0, 5.0, 0.0, -1.0, 2.0], [2, 3]);
    /// assert_eq!(t.argmax(1, false).to_vec::<i64>(), vec![1, 2]);
    /// ```
    #[track_caller]
    pub fn argmax(&self, dim: isize, keepdim: bool) -> Tensor {
        let d = or_panic(normalize_dim("argmax", dim, self.ndim().max(1)));
        or_panic(arg_reduce(self, d, keepdim, true, "argmax"))
    }
    /// Index of the minimum along `dim` (the first on ties), as i64.
    #[track_caller]
    pub fn argmin(&self, dim: isize, keepdim: bool) -> Tensor {
        let d = or_panic(normalize_dim("argmin", dim, self.ndim().max(1)));
        or_panic(arg_reduce(self, d, keepdim, false, "argmin"))
    }
    /// Index of the maximum of the flattened tensor.
    pub fn argmax_all(&self) -> Tensor {
        self.reshape([-1]).argmax(0, false)
    }

    /// Variance over `dims` with `correction` (1 for the unbiased estimate, PyTorch's
    /// default; 0 for the population variance).
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0], [4]);
    /// assert_eq!(t.var(0, 1, false).item::<f64>(), 5.0 / 3.0);
    /// ```
    #[track_caller]
    pub fn var(&self, dims: impl ReduceDims, correction: usize, keepdim: bool) -> Tensor {
        let d = or_panic(resolve("var", self, &dims));
        let x = self.to_dtype(self.dtype().to_float());
        let n: usize = d.iter().map(|&i| self.shape()[i]).product();
        let mean = x.mean(d.as_slice(), true);
        let dev = (&x - &mean).square();
        dev.sum(d.as_slice(), keepdim)
            .div((n as f64 - correction as f64).max(0.0))
    }

    /// Standard deviation over `dims` with `correction` (see [`Tensor::var`]).
    #[track_caller]
    pub fn std(&self, dims: impl ReduceDims, correction: usize, keepdim: bool) -> Tensor {
        self.var(dims, correction, keepdim).sqrt()
    }

    /// `log(sum(exp(x)))` over `dims`, computed stably.
    ///
    /// Over one dim of an f32/f64 CPU tensor this is one fused kernel and one recorded
    /// node (`logsumexp`); otherwise a composition of max, exp, sum and log.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::from_vec(vec![1000.0f64, 1000.0], [2]);
    /// assert!((t.logsumexp(0, false).item::<f64>() - (1000.0 + 2f64.ln())).abs() < 1e-9);
    /// ```
    #[track_caller]
    pub fn logsumexp(&self, dims: impl ReduceDims, keepdim: bool) -> Tensor {
        let d = or_panic(resolve("logsumexp", self, &dims));
        let x = self.to_dtype(self.dtype().to_float());
        if d.len() == 1 && rowwise::supports(&x) {
            return or_panic(fused_logsumexp(&x, d[0], keepdim));
        }
        logsumexp_composed(&x, &d, keepdim)
    }

    /// Softmax along `dim`, computed stably (`exp(x - max) / sum`).
    ///
    /// On an f32/f64 tensor (CPU or CUDA) this is one fused kernel each way and one
    /// recorded node (`softmax`); f16/bf16 tensors use a composition of tensor ops.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let p = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3]).softmax(-1);
    /// assert!((p.sum_all().item::<f32>() - 1.0).abs() < 1e-6);
    /// ```
    #[track_caller]
    pub fn softmax(&self, dim: isize) -> Tensor {
        let d = or_panic(normalize_dim("softmax", dim, self.ndim().max(1)));
        let x = self.to_dtype(self.dtype().to_float());
        if rowwise::has_row_kernels(&x) {
            return or_panic(fused_softmax(&x, d, false));
        }
        softmax_composed(&x, d)
    }

    /// Log-softmax along `dim`, computed stably (`x - logsumexp(x)`).
    ///
    /// On an f32/f64 tensor (CPU or CUDA) this is one fused kernel each way and one
    /// recorded node (`log_softmax`); f16/bf16 tensors use a composition of tensor ops.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let l = Tensor::from_vec(vec![0.0f64, 0.0], [2]).log_softmax(0);
    /// assert_eq!(l.to_vec::<f64>(), vec![-(2f64.ln()); 2]);
    /// ```
    #[track_caller]
    pub fn log_softmax(&self, dim: isize) -> Tensor {
        let d = or_panic(normalize_dim("log_softmax", dim, self.ndim().max(1)));
        let x = self.to_dtype(self.dtype().to_float());
        if rowwise::has_row_kernels(&x) {
            return or_panic(fused_softmax(&x, d, true));
        }
        log_softmax_composed(&x, d)
    }

    /// Replaces infinite (and NaN) elements by 0: the shift used by stable softmax.
    fn where_finite_or_zero(&self) -> Tensor {
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            // |x| < ∞ is false for ±∞ and NaN; like the CPU path, records nothing
            return crate::autograd::no_grad(|| {
                let x = self.detach();
                x.where_(&x.abs().lt(f64::INFINITY), 0.0)
            });
        }
        let dt = self.dtype();
        or_panic(
            dispatch!(float "where_finite_or_zero", dt, T => crate::cpu::map::unary::<T, T>("softmax", self, |v| {
                if num_traits::Float::is_finite(v) { v } else { T::from_f64(0.0) }
            }))
            .and_then(|r| r),
        )
    }
}

/// `log Σ exp` over `dims` of a float tensor as tensor ops (half types, CUDA).
#[track_caller]
fn logsumexp_composed(x: &Tensor, d: &[usize], keepdim: bool) -> Tensor {
    // a max of ±inf would give inf - inf = NaN: shift by 0 there
    let m = x.max(d, true);
    let m = m.where_finite_or_zero();
    let s = (x - &m).exp().sum(d, true).log() + &m;
    if keepdim {
        s
    } else {
        let shape = out_shape(x.shape(), d, false);
        s.reshape(shape)
    }
}

/// Softmax along `d` of a float tensor as tensor ops (half types, CUDA).
#[track_caller]
fn softmax_composed(x: &Tensor, d: usize) -> Tensor {
    let m = x.max(d, true).where_finite_or_zero();
    let e = (x - &m).exp();
    let s = e.sum(d, true);
    e / s
}

/// Log-softmax along `d` of a float tensor as tensor ops (half types, CUDA).
#[track_caller]
fn log_softmax_composed(x: &Tensor, d: usize) -> Tensor {
    x - &logsumexp_composed(x, &[d], true)
}

/// The dims of an `ndim`-dim tensor with `d` moved last, the others in order.
fn last_perm(ndim: usize, d: usize) -> Vec<usize> {
    (0..ndim).filter(|&i| i != d).chain([d]).collect()
}

/// A view of `t` with dim `d` moved last (`t` itself when it already is). Records
/// nothing.
fn move_last(t: &Tensor, d: usize) -> Result<Tensor> {
    if t.ndim() <= 1 || d + 1 == t.ndim() {
        return Ok(t.clone());
    }
    Ok(t.with_layout(t.layout().permute(&last_perm(t.ndim(), d))?))
}

/// The inverse of [`move_last`]: the last dim of `t` moved back to `d`. Records nothing.
fn move_back(t: &Tensor, d: usize) -> Result<Tensor> {
    let n = t.ndim();
    if n <= 1 || d + 1 == n {
        return Ok(t.clone());
    }
    let perm: Vec<usize> = (0..n)
        .map(|i| match i.cmp(&d) {
            std::cmp::Ordering::Less => i,
            std::cmp::Ordering::Equal => n - 1,
            std::cmp::Ordering::Greater => i - 1,
        })
        .collect();
    Ok(t.with_layout(t.layout().permute(&perm)?))
}

/// Softmax (or log-softmax) along `d` of an f32/f64 tensor (CPU or CUDA) with the fused
/// row kernels: `d` is moved last (a copy unless it already is last and `x` contiguous), and
/// the result viewed back. Records one node whose backward runs the fused backward
/// kernel, or, under `create_graph`, the same formula as tensor ops (so it can be
/// differentiated again): softmax `dx = y ⊙ (g − Σ g⊙y)`, log-softmax
/// `dx = g − softmax(x) ⊙ Σ g`.
#[track_caller]
fn fused_softmax(x: &Tensor, d: usize, log: bool) -> Result<Tensor> {
    let name = if log { "log_softmax" } else { "softmax" };
    let y_last = rowwise::softmax_last(name, &move_last(x, d)?, log)?;
    let y = move_back(&y_last, d)?;
    if !(is_grad_enabled() && x.requires_grad()) {
        return Ok(y);
    }
    // the backward reads the output only (as PyTorch's), so the input is not kept
    Ok(record_with_output(y, name, &[x], &[], move |g, y| {
        let dx = if is_grad_enabled() {
            // create_graph: differentiable ops on the output, which is in the graph
            if log {
                g - y.exp() * g.sum(d, true)
            } else {
                y * (g - (g * y).sum(d, true))
            }
        } else {
            or_panic(
                move_last(g, d)
                    .and_then(|gl| {
                        rowwise::softmax_last_backward(name, &move_last(y, d)?, &gl, log)
                    })
                    .and_then(|dx| move_back(&dx, d)),
            )
        };
        vec![Some(dx)]
    }))
}

/// `log Σ exp` along `d` of an f32/f64 CPU tensor with the fused row kernel; one node,
/// whose backward is `g ⊙ exp(x − lse)` (tensor ops, with `lse` recomputed under
/// `create_graph`).
#[track_caller]
fn fused_logsumexp(x: &Tensor, d: usize, keepdim: bool) -> Result<Tensor> {
    let lse = rowwise::logsumexp_last("logsumexp", &move_last(x, d)?)?;
    let kept = lse.reshape(out_shape(x.shape(), &[d], true));
    let out = if keepdim {
        kept.clone()
    } else {
        lse.reshape(out_shape(x.shape(), &[d], false))
    };
    if !(is_grad_enabled() && x.requires_grad()) {
        return Ok(out);
    }
    let (xs, ls) = (x.clone(), kept.clone());
    Ok(record(out, "logsumexp", &[x], &[x, &kept], move |g| {
        let l = if is_grad_enabled() {
            xs.logsumexp(d, true)
        } else {
            ls.clone()
        };
        let g = if keepdim {
            g.clone()
        } else {
            g.unsqueeze(d as isize)
        };
        vec![Some(g * (&xs - &l).exp())]
    }))
}

#[cfg(test)]
mod tests {
    use crate::{All, DType, Tensor};

    fn naive_sum(t: &Tensor, dim: usize) -> Vec<f64> {
        let v = t.contiguous().to_f64_vec();
        let s = t.shape();
        let outer: usize = s[..dim].iter().product();
        let inner: usize = s[dim + 1..].iter().product();
        let mut out = vec![0.0; outer * inner];
        for o in 0..outer {
            for k in 0..s[dim] {
                for i in 0..inner {
                    out[o * inner + i] += v[(o * s[dim] + k) * inner + i];
                }
            }
        }
        out
    }

    #[test]
    fn sums_over_each_dim_of_strided_inputs() {
        let t = Tensor::randn([3, 4, 5], DType::F64);
        for view in [
            t.clone(),
            t.permute([2, 0, 1]),
            t.narrow(1, 1, 2),
            t.select(0, 1).unsqueeze(0).expand([3, 4, 5]),
        ] {
            for d in 0..3 {
                let got = view.sum(d as i32, false).to_vec::<f64>();
                let want = naive_sum(&view, d);
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-12);
                }
            }
        }
        assert_eq!(t.sum([0, 2], true).shape(), &[1, 4, 1]);
        assert!(t.try_sum([0, 0], false).is_err());
        assert!(t.try_sum(3, false).is_err());
    }

    #[test]
    fn max_min_arg() {
        let t = Tensor::from_vec(vec![3.0f32, 1.0, 4.0, 1.0, 5.0, 9.0], [2, 3]);
        assert_eq!(t.max(1, false).to_vec::<f32>(), vec![4.0, 9.0]);
        assert_eq!(t.min(0, true).to_vec::<f32>(), vec![1.0, 1.0, 4.0]);
        assert_eq!(t.argmin(1, false).to_vec::<i64>(), vec![1, 0]);
        assert_eq!(t.argmax(0, true).shape(), &[1, 3]);
        assert_eq!(t.argmax_all().item::<i64>(), 5);
        assert_eq!(t.max(All, false).item::<f32>(), 9.0);
        let (v, i) = t.t().max_dim(-1, false);
        assert_eq!(
            (v.to_vec::<f32>(), i.to_vec::<i64>()),
            (vec![3.0, 5.0, 9.0], vec![0, 1, 1])
        );
        let n = Tensor::from_vec(vec![1.0f32, f32::NAN, 2.0], [3]);
        assert!(n.max(0, false).item::<f32>().is_nan());
        assert_eq!(n.argmax(0, false).item::<i64>(), 1);
        let i = Tensor::from_vec(vec![3i64, -7, 2], [3]);
        assert_eq!(i.min(0, false).item::<i64>(), -7);
        assert_eq!(i.sum(0, false).item::<i64>(), -2);
        assert_eq!(i.prod(0, false).item::<i64>(), -42);
        let b = Tensor::from_vec(vec![true, true, false], [3]);
        assert_eq!(b.sum(0, false).item::<i64>(), 2);
        assert!(Tensor::zeros([0], ()).try_max(0, false).is_err());
        assert_eq!(
            Tensor::zeros([0, 2], ()).sum(0, false).to_vec::<f32>(),
            vec![0.0, 0.0]
        );
    }

    #[test]
    fn mean_var_std_match_two_pass_formulas() {
        let t = Tensor::randn([50, 7], DType::F64);
        let v = t.to_vec::<f64>();
        for j in 0..7 {
            let col: Vec<f64> = (0..50).map(|i| v[i * 7 + j]).collect();
            let m = col.iter().sum::<f64>() / 50.0;
            let var = col.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 49.0;
            assert!((t.mean(0, false).to_vec::<f64>()[j] - m).abs() < 1e-12);
            assert!((t.var(0, 1, false).to_vec::<f64>()[j] - var).abs() < 1e-12);
            assert!(
                (t.std(0, 0, false).to_vec::<f64>()[j] - (var * 49.0 / 50.0).sqrt()).abs() < 1e-12
            );
        }
    }

    #[test]
    fn softmax_is_stable_and_normalised() {
        let x = Tensor::from_vec(vec![1000.0f32, 1001.0, -1000.0, f32::NEG_INFINITY], [2, 2]);
        let p = x.softmax(1).to_vec::<f32>();
        assert!((p[0] + p[1] - 1.0).abs() < 1e-6 && p[1] > p[0]);
        assert_eq!(p[2..], [1.0, 0.0]);
        let lp = x.log_softmax(1).to_vec::<f32>();
        // inputs near 1000 carry ~6e-5 of f32 rounding
        assert!((lp[1] - (-(1.0f32 + (-1.0f32).exp()).ln())).abs() < 2e-4);
        assert_eq!(lp[3], f32::NEG_INFINITY);
        let all_masked = Tensor::full([3], f64::NEG_INFINITY, ())
            .logsumexp(0, false)
            .item::<f32>();
        assert_eq!(all_masked, f32::NEG_INFINITY);
    }

    /// Elementwise: equal NaN-ness, equal infinities, finite values within
    /// `tol · (1 + |want|)`.
    fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
        assert_eq!(got.shape(), want.shape(), "{what}: shapes");
        let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            let ok = if b.is_nan() {
                a.is_nan()
            } else if b.is_infinite() {
                a == b
            } else {
                (a - b).abs() <= tol * (1.0 + b.abs())
            };
            assert!(ok, "{what}: element {i}: {a} vs {b}");
        }
    }

    /// Random inputs with `-inf` entries, an all-`-inf` row (along the last dim), large
    /// values and a row of length-1 rows when `shape` says so.
    fn nasty(shape: &[usize], dtype: DType) -> Tensor {
        let mut v = Tensor::randn(shape, DType::F64).to_vec::<f64>();
        let n = *shape.last().unwrap_or(&1);
        for (i, x) in v.iter_mut().enumerate() {
            match i % 11 {
                3 => *x = f64::NEG_INFINITY,
                7 => *x = *x * 10.0 + 1000.0,
                _ => *x *= 4.0,
            }
        }
        if v.len() >= 2 * n {
            for x in &mut v[n..2 * n] {
                *x = f64::NEG_INFINITY;
            }
        }
        Tensor::from_vec(v, shape).to_dtype(dtype)
    }

    const SHAPES: [&[usize]; 6] = [&[5, 1], &[4, 7], &[3, 9, 16], &[2, 3, 300], &[1], &[6]];

    #[test]
    fn fused_softmax_family_matches_the_composition() {
        // f64: against the f64 composition, 1e-12. f32: against the f64 composition of
        // the same values, 1e-5 relative (the f32 composition itself is further off:
        // its x − (lse + max) rounds at the scale of the max, ~6e-5 near 1000, where the
        // fused (x − max) − lse keeps the relative precision of a small result)
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            for shape in SHAPES {
                let x = nasty(shape, dtype);
                let x64 = x.to_dtype(DType::F64);
                for d in 0..shape.len() {
                    let what = format!("{dtype} {shape:?} dim {d}");
                    let dd = d as isize;
                    assert_close(
                        &format!("softmax {what}"),
                        &x.softmax(dd),
                        &super::softmax_composed(&x64, d),
                        tol,
                    );
                    assert_close(
                        &format!("log_softmax {what}"),
                        &x.log_softmax(dd),
                        &super::log_softmax_composed(&x64, d),
                        tol,
                    );
                    for keep in [false, true] {
                        assert_close(
                            &format!("logsumexp {what}"),
                            &x.logsumexp(d, keep),
                            &super::logsumexp_composed(&x64, &[d], keep),
                            tol,
                        );
                    }
                }
                // a non-contiguous view along the last dim
                if shape.len() >= 2 {
                    let t = x.transpose(0, -1);
                    assert_close(
                        "softmax of a view",
                        &t.softmax(-1),
                        &super::softmax_composed(&x64.transpose(0, -1), shape.len() - 1),
                        tol,
                    );
                }
            }
        }
        // a scalar, an empty tensor and integers (converted to f32 first)
        let s = Tensor::from_vec(vec![3.0f64], &[] as &[usize]);
        assert_eq!(s.softmax(0).item::<f64>(), 1.0);
        assert_eq!(s.log_softmax(-1).item::<f64>(), 0.0);
        assert_eq!(Tensor::zeros([0, 3], ()).softmax(1).shape(), &[0, 3]);
        assert_eq!(Tensor::zeros([2, 0], ()).log_softmax(1).shape(), &[2, 0]);
        let i = Tensor::from_vec(vec![0i64, 0], [2]).softmax(0);
        assert_eq!(i.to_vec::<f32>(), vec![0.5, 0.5]);
    }

    #[test]
    fn fused_softmax_gradients_match_the_composition() {
        use crate::autograd::grad;
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            for shape in [&[4usize, 7][..], &[3, 9, 16], &[5, 1], &[2, 3, 300]] {
                // finite inputs (gradients at -inf entries are 0·∞-prone in the
                // composition), with large values
                let x = (Tensor::randn(shape, DType::F64) * 30.0).to_dtype(dtype);
                let x = x.requires_grad_(true);
                let gout = Tensor::randn(shape, dtype);
                for d in 0..shape.len() {
                    let what = format!("{dtype} {shape:?} dim {d}");
                    let cases: [(&str, Tensor, Tensor); 3] = [
                        (
                            "softmax",
                            x.softmax(d as isize),
                            super::softmax_composed(&x, d),
                        ),
                        (
                            "log_softmax",
                            x.log_softmax(d as isize),
                            super::log_softmax_composed(&x, d),
                        ),
                        (
                            "logsumexp",
                            x.logsumexp(d, true),
                            super::logsumexp_composed(&x, &[d], true),
                        ),
                    ];
                    for (name, fused, composed) in cases {
                        assert_eq!(fused.grad_fn().unwrap().name(), name, "one node");
                        let g = gout.narrow(d as isize, 0, fused.size(d as isize));
                        let a = grad(
                            &[fused],
                            std::slice::from_ref(&x),
                            Some(std::slice::from_ref(&g)),
                            false,
                            false,
                        )
                        .unwrap()[0]
                            .clone()
                            .unwrap();
                        let b = grad(
                            &[composed],
                            std::slice::from_ref(&x),
                            Some(&[g]),
                            false,
                            false,
                        )
                        .unwrap()[0]
                            .clone()
                            .unwrap();
                        assert_close(&format!("grad {name} {what}"), &a, &b, tol);
                    }
                }
            }
        }
    }

    /// A function of the gradcheck inputs.
    type Unary<'a> = dyn Fn(&[Tensor]) -> Tensor + 'a;

    #[test]
    fn fused_softmax_second_order() {
        use crate::autograd::{gradcheck, gradgradcheck, GradcheckOptions};
        let x = Tensor::randn([4, 5], DType::F64);
        let xt = Tensor::randn([5, 4], DType::F64).t();
        for x in [x, xt] {
            for d in [0isize, 1] {
                let opts = GradcheckOptions::default();
                let fs: [&Unary<'_>; 3] = [&|v| v[0].softmax(d), &|v| v[0].log_softmax(d), &|v| {
                    v[0].logsumexp(d as usize, false)
                }];
                for f in fs {
                    gradcheck(f, std::slice::from_ref(&x), opts).unwrap();
                    gradgradcheck(f, std::slice::from_ref(&x), opts).unwrap();
                }
            }
        }
    }

    #[test]
    fn large_reductions_are_thread_count_independent() {
        let x = Tensor::randn([1 << 17], DType::F32);
        crate::set_num_threads(1);
        let a = x.sum_all().item::<f32>();
        let am = x.argmax(0, false).item::<i64>();
        crate::set_num_threads(2);
        let b = x.sum_all().item::<f32>();
        let bm = x.argmax(0, false).item::<i64>();
        crate::set_num_threads(0);
        assert_eq!(a.to_bits(), b.to_bits());
        assert_eq!(am, bm);
        let v = x.to_vec::<f32>();
        let exact: f64 = v.iter().map(|&x| x as f64).sum();
        assert!((a as f64 - exact).abs() < 1e-3);
    }
}
