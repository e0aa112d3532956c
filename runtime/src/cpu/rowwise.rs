//! Fused row-wise kernels: softmax, log-softmax, logsumexp and layer norm, forward and
//! backward, over a contiguous `[rows, n]` buffer of `f32` or `f64`.
//!
//! Each replaces a chain of 5–10 tensor ops (each allocating its output and recording a
//! node) by one pass or two over each row. Rows are split across the pool with
//! [`for_each_row`] when the tensor is large; a row is always reduced on one thread in a
//! fixed order, and the column sums of the layer-norm backward (`dweight`, `dbias`) add
//! fixed blocks of [`COL_BLOCK`] rows in order, so results never depend on the thread
//! count.
//!
//! Row sums use [`LANES`] independent accumulators of the element type (combined in a
//! fixed tree at the end): the loop vectorises, and the rounding error grows with
//! `n / LANES` rather than `n`. `exp` is [`RowFloat::exp_v`]: the vectorisable
//! `cpu::vmath::exp_f32` for f32, the standard library's for f64.
//!
//! Edge cases follow the tensor-op compositions these kernels replace (kept in
//! `ops/reduce.rs` and `nn/functional.rs` for other dtypes and devices): the softmax
//! shift is the row max where it is finite and 0 otherwise, so a row of all `-inf` gives
//! NaN (`0/0`), a row holding `+inf` gives NaN at the `+inf` entries and 0 elsewhere,
//! and a NaN anywhere in a row makes the whole row NaN.

use crate::cpu::parallel::for_each_row;
use crate::cpu::pool;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::storage::BufferElement;
use crate::tensor::Tensor;
use num_traits::Float;
use std::mem::MaybeUninit;

/// Independent partial sums per row reduction.
pub(crate) const LANES: usize = 8;

/// Rows per block of the layer-norm `dweight`/`dbias` column sums (a constant, so the
/// summation order is the same at every thread count).
pub(crate) const COL_BLOCK: usize = 32;

/// The element types the kernels run on (`f32`, `f64`).
pub(crate) trait RowFloat: Float + BufferElement + Send + Sync {
    /// `eˣ`, in a form a loop vectorises where there is one.
    fn exp_v(self) -> Self;
    /// `tanh x`, in a form a loop vectorises where there is one.
    fn tanh_v(self) -> Self;
    /// The slice as `f32`s, when `Self` is `f32` (for loops written for `f32` lanes).
    fn as_f32s(s: &[Self]) -> Option<&[f32]>;
    /// The mutable slice as `f32`s, when `Self` is `f32`.
    fn as_f32s_mut(s: &mut [Self]) -> Option<&mut [f32]>;
}
impl RowFloat for f32 {
    #[inline(always)]
    fn exp_v(self) -> Self {
        crate::cpu::vmath::exp_f32(self)
    }
    #[inline(always)]
    fn tanh_v(self) -> Self {
        crate::cpu::vmath::tanh_f32(self)
    }
    #[inline(always)]
    fn as_f32s(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    #[inline(always)]
    fn as_f32s_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        Some(s)
    }
}
impl RowFloat for f64 {
    #[inline(always)]
    fn exp_v(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn tanh_v(self) -> Self {
        self.tanh()
    }
    #[inline(always)]
    fn as_f32s(_: &[Self]) -> Option<&[f32]> {
        None
    }
    #[inline(always)]
    fn as_f32s_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

/// Rows per parallel task: enough that a task touches a few thousand elements.
#[inline]
pub(crate) fn min_rows(n: usize) -> usize {
    (4096 / n.max(1)).max(1)
}

/// Folds the lanes in a fixed tree.
#[inline(always)]
pub(crate) fn combine<T: Float>(a: [T; LANES]) -> T {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// `Σ f(aᵢ)` with [`LANES`] partial sums.
#[inline(always)]
pub(crate) fn sum_map<T: Float>(a: &[T], f: impl Fn(T) -> T) -> T {
    let mut acc = [T::zero(); LANES];
    let chunks = a.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l] + f(c[l]);
        }
    }
    let mut tail = T::zero();
    for &v in rest {
        tail = tail + f(v);
    }
    combine(acc) + tail
}

/// `Σ f(aᵢ, bᵢ)` with [`LANES`] partial sums (`a` and `b` of equal length).
#[inline(always)]
pub(crate) fn sum_map2<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] = acc[l] + f(x[l], y[l]);
        }
    }
    let mut tail = T::zero();
    for (&x, &y) in ra.iter().zip(rb) {
        tail = tail + f(x, y);
    }
    combine(acc) + tail
}

/// The row max, ignoring NaN (a NaN makes the row's sum NaN later anyway).
#[inline(always)]
pub(crate) fn row_max<T: Float>(a: &[T]) -> T {
    let mut acc = [T::neg_infinity(); LANES];
    let chunks = a.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    let mut m = T::neg_infinity();
    for v in acc.into_iter().chain(rest.iter().copied()) {
        if v > m {
            m = v;
        }
    }
    m
}

/// The stable-softmax shift: the max where finite, else 0 (as the composition does).
#[inline(always)]
pub(crate) fn shift_of<T: Float>(x: &[T]) -> T {
    let m = row_max(x);
    if m.is_finite() {
        m
    } else {
        T::zero()
    }
}

/// `log Σ exp(x)` of one row, shifted stably.
#[inline(always)]
fn row_logsumexp<T: RowFloat>(x: &[T]) -> T {
    let shift = shift_of(x);
    sum_map(x, |v| (v - shift).exp_v()).ln() + shift
}

/// A `len`-element output of `n`-long rows: row `r` is written by `row(r, slots)`, which
/// must write every slot it is given; rows are split across the pool as by
/// [`for_each_row`] (`work` elements touched in all). The buffer comes from the pool
/// without a zero fill (on the calling thread, that fill was serial work while the pool
/// waited).
pub(crate) fn rows_into<T: RowFloat>(
    len: usize,
    n: usize,
    work: usize,
    row: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut out = pool::Uninit::new(len);
    if n > 0 {
        for_each_row(out.all(), n, min_rows(n), work, row);
    }
    // SAFETY: the rows cover all `len` slots (`len` is 0 when `n` is: a row of 0
    // elements) and each row callback writes every slot of its row.
    unsafe { out.assume_init() }
}

/// Softmax (or, with `log`, log-softmax) of every `n`-long row of `x`.
pub(crate) fn softmax_forward<T: RowFloat>(x: &[T], n: usize, log: bool) -> Vec<T> {
    rows_into(x.len(), n, x.len(), |r, y| {
        softmax_row(&x[r * n..(r + 1) * n], y, log)
    })
}

crate::cpu::vmath::multiversion_loop! {
    /// Softmax (or log-softmax) of one row `x` into `y` (every slot written).
    fn softmax_row<T: RowFloat>(x: &[T], y: &mut [MaybeUninit<T>], log: bool) {
        let y = &mut y[..x.len()];
        if log {
            // (x − shift) − log Σ, as PyTorch: near the max the result keeps its relative
            // precision, where x − (log Σ + shift) would round at the scale of the max
            let shift = shift_of(x);
            let log_sum = sum_map(x, |v| (v - shift).exp_v()).ln();
            for (y, &x) in y.iter_mut().zip(x) {
                y.write((x - shift) - log_sum);
            }
        } else {
            let shift = shift_of(x);
            for (y, &x) in y.iter_mut().zip(x) {
                y.write((x - shift).exp_v());
            }
            // SAFETY: the loop above wrote every slot of `y` (cut to `x`'s length).
            let y = unsafe { pool::written_mut(y) };
            let inv = T::one() / sum_map(y, |v| v);
            for y in y.iter_mut() {
                *y = *y * inv;
            }
        }
    }
}

crate::cpu::vmath::multiversion_loop! {
    /// One row of [`softmax_backward`] (every slot of `dx` written).
    fn softmax_backward_row<T: RowFloat>(y: &[T], g: &[T], dx: &mut [MaybeUninit<T>], log: bool) {
        if log {
            let s = sum_map(g, |v| v);
            for ((d, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                d.write(g - y.exp_v() * s);
            }
        } else {
            let s = sum_map2(g, y, |g, y| g * y);
            for ((d, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                d.write(y * (g - s));
            }
        }
    }
}

/// `log Σ exp` of every `n`-long row of `x` (one value a row).
pub(crate) fn logsumexp_forward<T: RowFloat>(x: &[T], n: usize) -> Vec<T> {
    let rows = x.len().checked_div(n).unwrap_or(0);
    let mut out = vec![T::neg_infinity(); rows];
    // one output a row: tasks of `min_rows(n)` outputs
    for_each_row(&mut out, 1, min_rows(n), x.len(), |r, o| {
        o[0] = row_logsumexp(&x[r * n..(r + 1) * n]);
    });
    out
}

/// Gradient of softmax (`dx = y ⊙ (g − Σ g⊙y)`) or, with `log`, of log-softmax
/// (`dx = g − exp(y) ⊙ Σ g`), from the forward output `y` and the output gradient `g`.
pub(crate) fn softmax_backward<T: RowFloat>(y: &[T], g: &[T], n: usize, log: bool) -> Vec<T> {
    rows_into(y.len(), n, 2 * y.len(), |r, dx| {
        softmax_backward_row(&y[r * n..(r + 1) * n], &g[r * n..(r + 1) * n], dx, log)
    })
}

/// Output and saved statistics of [`layer_norm_forward`].
pub(crate) struct LayerNormOut<T> {
    /// The normalised (and scaled, shifted) rows.
    pub(crate) y: Vec<T>,
    /// Mean of each row.
    pub(crate) mean: Vec<T>,
    /// `1/√(var + eps)` of each row (biased variance).
    pub(crate) rstd: Vec<T>,
}

/// Layer norm of every `n`-long row: `(x − mean)·rstd·w + b` with the row's mean and
/// biased variance; `w` and `b` (length `n`) are optional.
pub(crate) fn layer_norm_forward<T: RowFloat>(
    x: &[T],
    n: usize,
    w: Option<&[T]>,
    b: Option<&[T]>,
    eps: f64,
) -> LayerNormOut<T> {
    let rows = x.len().checked_div(n).unwrap_or(0);
    let eps = T::from(eps).unwrap_or_else(T::zero);
    let inv_n = T::one() / T::from(n).unwrap_or_else(T::one);
    // pass 1: [mean, rstd] per row
    let mut stats = vec![T::zero(); 2 * rows];
    for_each_row(&mut stats, 2, min_rows(n), 2 * x.len(), |r, s| {
        let x = &x[r * n..(r + 1) * n];
        let mean = sum_map(x, |v| v) * inv_n;
        let var = sum_map(x, |v| (v - mean) * (v - mean)) * inv_n;
        s[0] = mean;
        s[1] = T::one() / (var + eps).sqrt();
    });
    // pass 2: the output
    let y = rows_into(x.len(), n, x.len(), |r, y| {
        let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
        layer_norm_row(&x[r * n..(r + 1) * n], y, mean, rstd, w, b)
    });
    let (mean, rstd) = stats.chunks_exact(2).map(|s| (s[0], s[1])).unzip();
    LayerNormOut { y, mean, rstd }
}

crate::cpu::vmath::multiversion_loop! {
    /// One output row of [`layer_norm_forward`], `(x − mean)·rstd·w + b` (every slot of
    /// `y` written).
    fn layer_norm_row<T: RowFloat>(
        x: &[T],
        y: &mut [MaybeUninit<T>],
        mean: T,
        rstd: T,
        w: Option<&[T]>,
        b: Option<&[T]>
    ) {
        match (w, b) {
            (Some(w), Some(b)) => {
                for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                    y.write((x - mean) * rstd * w + b);
                }
            }
            (Some(w), None) => {
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                    y.write((x - mean) * rstd * w);
                }
            }
            (None, Some(b)) => {
                for ((y, &x), &b) in y.iter_mut().zip(x).zip(b) {
                    y.write((x - mean) * rstd + b);
                }
            }
            (None, None) => {
                for (y, &x) in y.iter_mut().zip(x) {
                    y.write((x - mean) * rstd);
                }
            }
        }
    }
}

/// Which gradients of a normalisation with an optional affine weight and bias (layer
/// norm here, batch norm in `cpu::batchnorm`) to compute.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NormNeeds {
    /// `dx`.
    pub(crate) x: bool,
    /// `dweight` (only with a weight).
    pub(crate) weight: bool,
    /// `dbias`.
    pub(crate) bias: bool,
}

/// Gradients of [`layer_norm_forward`]: with `x̂ = (x − mean)·rstd` and `ĝ = g ⊙ w`,
/// `dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ ⊙ x̂))` per row, `dw = Σ_rows g ⊙ x̂`,
/// `db = Σ_rows g`. Returns `(dx, dw, db)`, each `None` unless asked for.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn layer_norm_backward<T: RowFloat>(
    x: &[T],
    g: &[T],
    mean: &[T],
    rstd: &[T],
    n: usize,
    w: Option<&[T]>,
    needs: NormNeeds,
) -> (Option<Vec<T>>, Option<Vec<T>>, Option<Vec<T>>) {
    let dx = needs.x.then(|| {
        let inv_n = T::one() / T::from(n).unwrap_or_else(T::one);
        rows_into(x.len(), n, 3 * x.len(), |r, dx| {
            let (x, g) = (&x[r * n..(r + 1) * n], &g[r * n..(r + 1) * n]);
            layer_norm_backward_row(x, g, dx, mean[r], rstd[r], inv_n, w)
        })
    });
    let want_w = needs.weight && w.is_some();
    let (dw, db) = if want_w || needs.bias {
        let (dw, db) = column_sums(x, g, mean, rstd, n, want_w, needs.bias);
        (want_w.then_some(dw), needs.bias.then_some(db))
    } else {
        (None, None)
    };
    (dx, dw, db)
}

crate::cpu::vmath::multiversion_loop! {
    /// One row of the layer-norm `dx` (see [`layer_norm_backward`]; every slot of `dx`
    /// written), with the row's mean `m` and rstd `s`.
    fn layer_norm_backward_row<T: RowFloat>(
        x: &[T],
        g: &[T],
        dx: &mut [MaybeUninit<T>],
        m: T,
        s: T,
        inv_n: T,
        w: Option<&[T]>
    ) {
        // the row's Σĝ and Σĝx̂ (x̂ = (x − m)·s)
        let (sum_g, sum_gx) = match w {
            Some(w) => sums_weighted(x, g, w, m, s),
            None => (sum_map(g, |v| v), sum_map2(g, x, |g, x| g * ((x - m) * s))),
        };
        let (a, b) = (sum_g * inv_n, sum_gx * inv_n);
        match w {
            Some(w) => {
                for (((d, &x), &g), &w) in dx.iter_mut().zip(x).zip(g).zip(w) {
                    d.write(s * (g * w - a - (x - m) * s * b));
                }
            }
            None => {
                for ((d, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                    d.write(s * (g - a - (x - m) * s * b));
                }
            }
        }
    }
}

/// `(Σ g⊙w, Σ g⊙w⊙x̂)` of one row with [`LANES`] partial sums.
#[inline(always)]
fn sums_weighted<T: Float>(x: &[T], g: &[T], w: &[T], m: T, s: T) -> (T, T) {
    let n = x.len().min(g.len()).min(w.len());
    let (x, g, w) = (&x[..n], &g[..n], &w[..n]);
    let (mut a1, mut a2) = ([T::zero(); LANES], [T::zero(); LANES]);
    let (cx, cg, cw) = (
        x.chunks_exact(LANES),
        g.chunks_exact(LANES),
        w.chunks_exact(LANES),
    );
    let (rx, rg, rw) = (cx.remainder(), cg.remainder(), cw.remainder());
    for ((x, g), w) in cx.zip(cg).zip(cw) {
        for l in 0..LANES {
            let gw = g[l] * w[l];
            a1[l] = a1[l] + gw;
            a2[l] = a2[l] + gw * ((x[l] - m) * s);
        }
    }
    let (mut t1, mut t2) = (T::zero(), T::zero());
    for ((&x, &g), &w) in rx.iter().zip(rg).zip(rw) {
        let gw = g * w;
        t1 = t1 + gw;
        t2 = t2 + gw * ((x - m) * s);
    }
    (combine(a1) + t1, combine(a2) + t2)
}

/// `(Σ_rows g⊙x̂, Σ_rows g)`: blocks of [`COL_BLOCK`] rows summed in parallel, the block
/// sums then added in order. Entries not asked for stay zero.
fn column_sums<T: RowFloat>(
    x: &[T],
    g: &[T],
    mean: &[T],
    rstd: &[T],
    n: usize,
    want_w: bool,
    want_b: bool,
) -> (Vec<T>, Vec<T>) {
    let rows = mean.len();
    let blocks = rows.div_ceil(COL_BLOCK);
    // each block's partial row: [dw (n) | db (n)]
    let mut partial = vec![T::zero(); blocks * 2 * n];
    if n > 0 {
        for_each_row(&mut partial, 2 * n, 1, 2 * x.len(), |k, p| {
            let (pw, pb) = p.split_at_mut(n);
            for r in k * COL_BLOCK..((k + 1) * COL_BLOCK).min(rows) {
                let (x, g) = (&x[r * n..(r + 1) * n], &g[r * n..(r + 1) * n]);
                let (m, s) = (mean[r], rstd[r]);
                if want_w {
                    for ((p, &x), &g) in pw.iter_mut().zip(x).zip(g) {
                        *p = *p + g * ((x - m) * s);
                    }
                }
                if want_b {
                    for (p, &g) in pb.iter_mut().zip(g) {
                        *p = *p + g;
                    }
                }
            }
        });
    }
    let (mut dw, mut db) = (vec![T::zero(); n], vec![T::zero(); n]);
    for p in partial.chunks_exact(2 * n.max(1)) {
        let (pw, pb) = p.split_at(n);
        for (d, &v) in dw.iter_mut().zip(pw) {
            *d = *d + v;
        }
        for (d, &v) in db.iter_mut().zip(pb) {
            *d = *d + v;
        }
    }
    (dw, db)
}

// ----------------------------------------------------------------------- tensor glue

/// True when the fused kernels take `x`: an `f32` or `f64` tensor in host memory.
/// (Half types and CUDA tensors keep the tensor-op compositions.)
pub(crate) fn supports(x: &Tensor) -> bool {
    x.device() == crate::Device::Cpu && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Whether the softmax and layer-norm row functions below take `x`: f32/f64 on the CPU
/// (the kernels of this module) or, with the `cuda` feature, on a CUDA device (the fused
/// kernels of `flint-kernels`' softmax and norm modules).
pub(crate) fn has_row_kernels(x: &Tensor) -> bool {
    matches!(x.dtype(), DType::F32 | DType::F64)
        && match x.device() {
            crate::Device::Cpu => true,
            crate::Device::Cuda(_) => cfg!(feature = "cuda"),
        }
}

/// The contiguous elements of `t` (dtype `T`, on the CPU), copied out of a view if
/// needed. Records nothing. (Shared by the fused kernels of `cpu::batchnorm` and
/// `cpu::lstm`.)
pub(crate) fn contiguous_data<T: RowFloat, R>(
    op: &'static str,
    t: &Tensor,
    f: impl FnOnce(&[T]) -> R,
) -> Result<R> {
    if t.numel() == 0 {
        // (an empty layout need not count as contiguous)
        return Ok(f(&[]));
    }
    let t = if t.is_contiguous() {
        t.clone()
    } else {
        t.detach().try_contiguous()?
    };
    t.with_slice::<T, _>(op, |s, l| {
        let r = l
            .contiguous_range()
            .ok_or_else(|| Error::config(op, "internal: expected a contiguous tensor"))?;
        Ok(f(&s[r]))
    })?
}

/// Runs `$body` with `$T` the Rust type of `t`'s dtype (`f32` or `f64`); an error naming
/// `$op` for any other dtype. (Shared by the fused kernels of `cpu::batchnorm` and
/// `cpu::lstm`.)
macro_rules! by_dtype {
    ($op:expr, $t:expr, $T:ident => $body:expr) => {
        $crate::dispatch!(f32_f64 $t.dtype(), $T => $body, else Err($crate::error::Error::dtype(
            $op,
            format!("internal: fused kernels take f32 or f64, got {}", $t.dtype()),
        )))
    };
}
pub(crate) use by_dtype;

/// Softmax (or log-softmax) along the last dim of `x` (f32/f64 on the CPU): a new
/// contiguous tensor of the same shape. Records nothing.
pub(crate) fn softmax_last(op: &'static str, x: &Tensor, log: bool) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return crate::cuda::ops::softmax_last(x, log);
    }
    let n = x.shape().last().copied().unwrap_or(1);
    by_dtype!(op, x, T => {
        let y = contiguous_data::<T, _>(op, x, |s| softmax_forward(s, n, log))?;
        Ok(Tensor::from_buffer(T::into_buffer(y), x.shape()))
    })
}

/// The gradient of [`softmax_last`] from its output `y` and output gradient `g` (same
/// shape and dtype). Records nothing.
pub(crate) fn softmax_last_backward(
    op: &'static str,
    y: &Tensor,
    g: &Tensor,
    log: bool,
) -> Result<Tensor> {
    let n = y.shape().last().copied().unwrap_or(1);
    let g = g.to_dtype_raw(y.dtype())?;
    #[cfg(feature = "cuda")]
    if y.is_cuda() {
        return crate::cuda::ops::softmax_last_backward(y, &g, log);
    }
    by_dtype!(op, y, T => {
        let dx = contiguous_data::<T, _>(op, y, |ys| {
            contiguous_data::<T, _>(op, &g, |gs| softmax_backward(ys, gs, n, log))
        })??;
        Ok(Tensor::from_buffer(T::into_buffer(dx), y.shape()))
    })
}

/// `log Σ exp` along the last dim of `x` (f32/f64 on the CPU), the last dim dropped.
/// Records nothing.
pub(crate) fn logsumexp_last(op: &'static str, x: &Tensor) -> Result<Tensor> {
    let shape = x.shape();
    let n = shape.last().copied().unwrap_or(1);
    let out_shape = &shape[..shape.len().saturating_sub(1)];
    by_dtype!(op, x, T => {
        let v = contiguous_data::<T, _>(op, x, |s| logsumexp_forward(s, n))?;
        Ok(Tensor::from_buffer(T::into_buffer(v), out_shape))
    })
}

/// Layer norm of `x` over its trailing dims of `n` elements in all, with optional weight
/// and bias of `n` elements (same dtype as `x`, f32/f64 on the CPU). Returns the output
/// (shape of `x`) and the per-row mean and rstd (`[rows]`). Records nothing.
pub(crate) fn layer_norm_rows(
    op: &'static str,
    x: &Tensor,
    n: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return crate::cuda::ops::layer_norm_rows(x, n, weight, bias, eps);
    }
    by_dtype!(op, x, T => {
        let out = contiguous_data::<T, _>(op, x, |xs| {
            with_opt::<T, _>(op, weight, |ws| {
                with_opt::<T, _>(op, bias, |bs| layer_norm_forward(xs, n, ws, bs, eps))
            })
        })???;
        let rows = out.mean.len();
        Ok((
            Tensor::from_buffer(T::into_buffer(out.y), x.shape()),
            Tensor::from_buffer(T::into_buffer(out.mean), &[rows]),
            Tensor::from_buffer(T::into_buffer(out.rstd), &[rows]),
        ))
    })
}

/// The gradients of [`layer_norm_rows`]: `(dx, dweight, dbias)` (shapes of `x`, and of
/// `weight` flattened to `[n]`), each `None` unless asked for. Records nothing.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn layer_norm_rows_backward(
    op: &'static str,
    x: &Tensor,
    g: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    n: usize,
    weight: Option<&Tensor>,
    needs: NormNeeds,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let g = g.to_dtype_raw(x.dtype())?;
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return crate::cuda::ops::layer_norm_rows_backward(
            x,
            &g,
            mean,
            rstd,
            n,
            weight,
            (needs.x, needs.weight, needs.bias),
        );
    }
    by_dtype!(op, x, T => {
        let (dx, dw, db) = contiguous_data::<T, _>(op, x, |xs| {
            contiguous_data::<T, _>(op, &g, |gs| {
                contiguous_data::<T, _>(op, mean, |ms| {
                    contiguous_data::<T, _>(op, rstd, |rs| {
                        with_opt::<T, _>(op, weight, |ws| {
                            layer_norm_backward(xs, gs, ms, rs, n, ws, needs)
                        })
                    })
                })
            })
        })?????;
        let wrap = |v: Vec<T>, shape: &[usize]| Tensor::from_buffer(T::into_buffer(v), shape);
        Ok((
            dx.map(|v| wrap(v, x.shape())),
            dw.map(|v| wrap(v, &[n])),
            db.map(|v| wrap(v, &[n])),
        ))
    })
}

/// `f` on the contiguous data of `t`, or on `None` (an optional weight, bias or mask of
/// the fused kernels).
pub(crate) fn with_opt<T: RowFloat, R>(
    op: &'static str,
    t: Option<&Tensor>,
    f: impl FnOnce(Option<&[T]>) -> R,
) -> Result<R> {
    match t {
        Some(t) => contiguous_data::<T, _>(op, t, |s| f(Some(s))),
        None => Ok(f(None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax of one row in f64, the textbook way.
    fn reference_softmax(x: &[f64]) -> Vec<f64> {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    #[test]
    fn softmax_rows_match_the_textbook_formula() {
        // rows of length 1, shorter than a lane block, and with a lane tail
        for n in [1usize, 3, 8, 13, 100] {
            let x: Vec<f64> = (0..4 * n).map(|i| ((i * 37 % 11) as f64) - 5.0).collect();
            let y = softmax_forward(&x, n, false);
            let ly = softmax_forward(&x, n, true);
            for r in 0..4 {
                let want = reference_softmax(&x[r * n..(r + 1) * n]);
                for j in 0..n {
                    assert!((y[r * n + j] - want[j]).abs() < 1e-15);
                    assert!((ly[r * n + j] - want[j].ln()).abs() < 1e-13);
                }
            }
        }
        // softmax([1, 2, 3]) = e^(i−3)/(1 + e^−1 + e^−2)
        let y = softmax_forward(&[1.0f32, 2.0, 3.0], 3, false);
        let z = 1.0 + (-1.0f64).exp() + (-2.0f64).exp();
        for (i, &v) in y.iter().enumerate() {
            assert!((v as f64 - (i as f64 - 2.0).exp() / z).abs() < 1e-7);
        }
    }

    #[test]
    fn softmax_edge_rows() {
        let inf = f64::INFINITY;
        // an all -inf row is NaN (0/0); -inf entries get 0; large values do not overflow
        let x = [-inf, -inf, 1.0, -inf, 1000.0, 1000.0];
        let y = softmax_forward(&x, 2, false);
        assert!(y[0].is_nan() && y[1].is_nan());
        assert_eq!((y[2], y[3]), (1.0, 0.0));
        assert_eq!((y[4], y[5]), (0.5, 0.5));
        let ly = softmax_forward(&x, 2, true);
        assert!(ly[0].is_nan() && ly[1].is_nan());
        assert_eq!((ly[2], ly[3]), (0.0, -inf));
        assert_eq!(ly[4], -(2f64.ln()));
        // +inf: shift 0, so inf/inf = NaN there and 0 elsewhere
        let y = softmax_forward(&[inf, 1.0], 2, false);
        assert!(y[0].is_nan());
        assert_eq!(y[1], 0.0);
        // NaN spreads over its row only
        let y = softmax_forward(&[f64::NAN, 1.0, 2.0, 3.0], 2, false);
        assert!(y[0].is_nan() && y[1].is_nan());
        assert!((y[2] + y[3] - 1.0).abs() < 1e-15);
        let l = logsumexp_forward(&[-inf, -inf, 1000.0, 1000.0], 2);
        assert_eq!(l[0], -inf);
        assert!((l[1] - (1000.0 + 2f64.ln())).abs() < 1e-12);
    }

    #[test]
    fn softmax_backward_matches_the_jacobian() {
        // dx_j = Σ_i g_i ∂y_i/∂x_j with ∂y_i/∂x_j = y_i(δ_ij − y_j), and for log-softmax
        // ∂y_i/∂x_j = δ_ij − softmax_j
        let x = [0.3, -1.2, 2.0, 0.7, 0.1, -0.4, 1.1, 0.0, 0.9, -2.5];
        let g = [1.0, -0.5, 0.25, 2.0, -1.0, 0.3, 0.6, -0.2, 0.8, 0.05];
        let n = 10;
        let p = reference_softmax(&x);
        let y = softmax_forward(&x, n, false);
        let dx = softmax_backward(&y, &g, n, false);
        let ly = softmax_forward(&x, n, true);
        let ldx = softmax_backward(&ly, &g, n, true);
        for j in 0..n {
            let want: f64 = (0..n)
                .map(|i| g[i] * p[i] * (f64::from(u8::from(i == j)) - p[j]))
                .sum();
            let lwant: f64 = (0..n)
                .map(|i| g[i] * (f64::from(u8::from(i == j)) - p[j]))
                .sum();
            assert!((dx[j] - want).abs() < 1e-15, "{j}: {} vs {want}", dx[j]);
            assert!((ldx[j] - lwant).abs() < 1e-14, "{j}: {} vs {lwant}", ldx[j]);
        }
    }

    #[test]
    fn layer_norm_rows_by_hand() {
        // row [1, 2, 3, 4]: mean 2.5, var 1.25; row [2, 2, 2, 2]: var 0 → rstd 1/√eps
        let x = [1.0, 2.0, 3.0, 4.0, 2.0, 2.0, 2.0, 2.0];
        let w = [1.0, 2.0, 0.5, -1.0];
        let b = [0.0, 0.1, 0.2, 0.3];
        let eps = 1e-5;
        let out = layer_norm_forward(&x, 4, Some(&w), Some(&b), eps);
        assert_eq!(out.mean, vec![2.5, 2.0]);
        let rstd = 1.0 / (1.25f64 + eps).sqrt();
        assert!((out.rstd[0] - rstd).abs() < 1e-15);
        assert!((out.rstd[1] - 1.0 / eps.sqrt()).abs() < 1e-9);
        for j in 0..4 {
            let want = (x[j] - 2.5) * rstd * w[j] + b[j];
            assert!((out.y[j] - want).abs() < 1e-15);
            assert_eq!(out.y[4 + j], b[j]);
        }
        // no affine: zero mean, unit (biased) variance up to eps
        let plain = layer_norm_forward(&x[..4], 4, None, None, 0.0);
        let m: f64 = plain.y.iter().sum::<f64>() / 4.0;
        let v: f64 = plain.y.iter().map(|y| y * y).sum::<f64>() / 4.0;
        assert!(m.abs() < 1e-15 && (v - 1.0).abs() < 1e-14);
    }

    #[test]
    fn layer_norm_backward_matches_finite_differences() {
        let (rows, n) = (70usize, 5usize); // 3 column blocks, the last partial
        let x: Vec<f64> = (0..rows * n)
            .map(|i| ((i * 7919 % 97) as f64) / 13.0)
            .collect();
        let g: Vec<f64> = (0..rows * n)
            .map(|i| ((i * 31 % 17) as f64) / 7.0 - 1.0)
            .collect();
        let w = [0.5, -1.0, 2.0, 1.5, 0.25];
        let b = [0.1, 0.2, 0.3, 0.4, 0.5];
        let eps = 1e-5;
        let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
            let y = layer_norm_forward(x, n, Some(w), Some(b), eps).y;
            y.iter().zip(&g).map(|(y, g)| y * g).sum()
        };
        let f = layer_norm_forward(&x, n, Some(&w), Some(&b), eps);
        let all = NormNeeds {
            x: true,
            weight: true,
            bias: true,
        };
        let (dx, dw, db) = layer_norm_backward(&x, &g, &f.mean, &f.rstd, n, Some(&w), all);
        let (dx, dw, db) = (dx.unwrap(), dw.unwrap(), db.unwrap());
        let h = 1e-6;
        let fd = |v: &[f64], i: usize, which: u8| {
            let (mut p, mut m) = (v.to_vec(), v.to_vec());
            p[i] += h;
            m[i] -= h;
            match which {
                0 => (loss(&p, &w, &b) - loss(&m, &w, &b)) / (2.0 * h),
                1 => (loss(&x, &p, &b) - loss(&x, &m, &b)) / (2.0 * h),
                _ => (loss(&x, &w, &p) - loss(&x, &w, &m)) / (2.0 * h),
            }
        };
        for i in (0..rows * n).step_by(17) {
            assert!((dx[i] - fd(&x, i, 0)).abs() < 1e-6, "dx[{i}]");
        }
        for j in 0..n {
            assert!((dw[j] - fd(&w, j, 1)).abs() < 1e-5, "dw[{j}]");
            assert!((db[j] - fd(&b, j, 2)).abs() < 1e-6, "db[{j}]");
        }
        // without a weight the same dx as with a weight of ones
        let ones = [1.0; 5];
        let f1 = layer_norm_forward(&x, n, Some(&ones), None, eps);
        let (a, _, _) = layer_norm_backward(&x, &g, &f1.mean, &f1.rstd, n, Some(&ones), all);
        let (c, none_w, _) = layer_norm_backward(&x, &g, &f1.mean, &f1.rstd, n, None, all);
        assert!(none_w.is_none());
        for (a, c) in a.unwrap().iter().zip(c.unwrap()) {
            assert!((a - c).abs() < 1e-13);
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // large enough to be split across the pool
        let (rows, n) = (600usize, 300usize);
        let x: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 7919 % 1013) as f32) / 101.0 - 5.0)
            .collect();
        let g: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 31 % 17) as f32) / 7.0)
            .collect();
        let w: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 / n as f32).collect();
        let all = NormNeeds {
            x: true,
            weight: true,
            bias: true,
        };
        let run = || {
            let y = softmax_forward(&x, n, false);
            let dy = softmax_backward(&y, &g, n, false);
            let ly = softmax_forward(&x, n, true);
            let dly = softmax_backward(&ly, &g, n, true);
            let f = layer_norm_forward(&x, n, Some(&w), Some(&w), 1e-5);
            let b = layer_norm_backward(&x, &g, &f.mean, &f.rstd, n, Some(&w), all);
            (y, dy, ly, dly, f.y, b)
        };
        crate::set_num_threads(1);
        let one = run();
        crate::set_num_threads(4);
        let four = run();
        crate::set_num_threads(0);
        assert!(one == four);
    }
}
