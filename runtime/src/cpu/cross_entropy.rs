//! Fused cross-entropy over `[rows, C]` logits of `f32` or `f64` (classes last and
//! contiguous): one pass per row forward, one per row backward.
//!
//! With `logp = log_softmax(x)`, target `t`, class weights `w` (all 1 without weights)
//! and label smoothing `ε`, a row's loss is, as `loss::CrossEntropy`'s composition
//! computes it,
//! `(1−ε)·(−w_t·logp_t) + ε/C·(−Σ_c w_c·logp_c)` (just the first term when `ε = 0`), and
//! 0 at an ignored row. Writing it `−Σ_c a_c·logp_c` with
//! `a_c = (1−ε)·w_t·[c = t] + ε/C·w_c` and `∂logp_c/∂x_j = [c = j] − p_j`, the gradient
//! of a row is `g·(p_j·Σ_c a_c − a_j)`, 0 at an ignored row.
//!
//! A row is reduced on one thread in a fixed order (the [`rowwise`] helpers), so results
//! do not depend on the thread count.

use crate::cpu::parallel::for_each_row;
use crate::cpu::pool;
use crate::cpu::rowwise::{
    by_dtype, contiguous_data, min_rows, rows_into, shift_of, sum_map, sum_map2, with_opt, RowFloat,
};
use crate::error::Result;
use crate::storage::BufferElement;
use crate::tensor::Tensor;
use std::mem::MaybeUninit;

/// The target of an ignored row.
pub(crate) const IGNORED: usize = usize::MAX;

/// The smoothing constants of a row's loss, in the element type.
#[derive(Clone, Copy)]
pub(crate) struct Consts<T> {
    /// `1 − ε`.
    keep: T,
    /// `ε / C`.
    spread: T,
    /// `ε > 0` (the composition adds the smoothing term only then).
    smooth: bool,
    /// `Σ_c w_c` (`C` without weights; only the backward reads it).
    sw: T,
}

impl<T: RowFloat> Consts<T> {
    fn new(eps: f64, c: usize, w: Option<&[T]>) -> Self {
        let cast = |v: f64| T::from(v).unwrap_or_else(T::zero);
        Consts {
            keep: cast(1.0 - eps),
            spread: cast(eps / c.max(1) as f64),
            smooth: eps > 0.0,
            sw: match w {
                Some(w) => sum_map(w, |v| v),
                None => cast(c as f64),
            },
        }
    }
}

crate::cpu::vmath::multiversion_loop! {
    /// One row of [`forward`]: `[loss, shift, log Σ exp(x − shift)]` into `out` (`t` a
    /// class index, not [`IGNORED`]).
    fn forward_row<T: RowFloat>(x: &[T], t: usize, w: Option<&[T]>, k: Consts<T>, out: &mut [T]) {
        let shift = shift_of(x);
        let ls = sum_map(x, |v| (v - shift).exp_v()).ln();
        let wt = w.map_or(T::one(), |w| w[t]);
        // −w_t·logp_t, logp as log_softmax rounds it: (x − shift) − log Σ
        let nll = -(((x[t] - shift) - ls) * wt);
        let loss = if k.smooth {
            let s = match w {
                Some(w) => sum_map2(x, w, |x, w| ((x - shift) - ls) * w),
                None => sum_map(x, |x| (x - shift) - ls),
            };
            nll * k.keep + (-s) * k.spread
        } else {
            nll
        };
        out[0] = loss;
        out[1] = shift;
        out[2] = ls;
    }
}

crate::cpu::vmath::multiversion_loop! {
    /// One row of [`backward`] (every slot of `dx` written; `t` a class index): `stats`
    /// the row's `[loss, shift, log Σ]` from [`forward`], `g` its loss gradient.
    fn backward_row<T: RowFloat>(
        x: &[T],
        dx: &mut [MaybeUninit<T>],
        t: usize,
        stats: &[T],
        g: T,
        w: Option<&[T]>,
        k: Consts<T>
    ) {
        let (shift, ls) = (stats[1], stats[2]);
        let wt = w.map_or(T::one(), |w| w[t]);
        let spread = if k.smooth { k.spread } else { T::zero() };
        // g·Σ_c a_c and g·ε/C
        let ga = g * (k.keep * wt + spread * k.sw);
        let gs = g * spread;
        let dx = &mut dx[..x.len()];
        match w {
            Some(w) => {
                for ((d, &x), &w) in dx.iter_mut().zip(x).zip(w) {
                    d.write(ga * ((x - shift) - ls).exp_v() - gs * w);
                }
            }
            None => {
                for (d, &x) in dx.iter_mut().zip(x) {
                    d.write(ga * ((x - shift) - ls).exp_v() - gs);
                }
            }
        }
        // SAFETY: the loop above wrote every slot of `dx` (cut to `x`'s length).
        let dx = unsafe { pool::written_mut(dx) };
        dx[t] = dx[t] - g * k.keep * wt;
    }
}

/// Per-row losses and statistics of `C`-long rows `x` with per-row targets (class
/// indices below `C`, or [`IGNORED`]): `[loss, shift, log Σ]` for each row (all 0 at an
/// ignored row).
pub(crate) fn forward<T: RowFloat>(
    x: &[T],
    c: usize,
    targets: &[usize],
    w: Option<&[T]>,
    eps: f64,
) -> Vec<T> {
    let k = Consts::<T>::new(eps, c, w);
    let mut out = vec![T::zero(); 3 * targets.len()];
    if c > 0 {
        for_each_row(&mut out, 3, min_rows(c), 3 * x.len(), |r, o| {
            let t = targets[r];
            if t != IGNORED {
                forward_row(&x[r * c..(r + 1) * c], t, w, k, o);
            }
        });
    }
    out
}

/// The gradient of the row losses of [`forward`] (`stats` its output) for the row
/// gradients `g` (one per row, or a single value for all rows).
pub(crate) fn backward<T: RowFloat>(
    x: &[T],
    c: usize,
    targets: &[usize],
    stats: &[T],
    w: Option<&[T]>,
    eps: f64,
    g: &[T],
) -> Vec<T> {
    let k = Consts::<T>::new(eps, c, w);
    let len = targets.len() * c;
    rows_into(len, c, 2 * len, |r, dx| {
        let t = targets[r];
        if t == IGNORED {
            for d in dx.iter_mut() {
                d.write(T::zero());
            }
            return;
        }
        let gr = if g.len() == 1 { g[0] } else { g[r] };
        let s = &stats[3 * r..3 * r + 3];
        backward_row(&x[r * c..(r + 1) * c], dx, t, s, gr, w, k);
    })
}

// ----------------------------------------------------------------------- tensor glue

/// [`forward`] on tensors: `x` holds `targets.len()` rows of `c` logits (f32/f64 on the
/// CPU, read as a contiguous `[rows, c]`), `weight` (`[c]`, `x`'s dtype) is optional.
/// Returns the per-row losses `[rows]` and the statistics `[rows, 3]` that [`backward_rows`]
/// reads. Records nothing.
pub(crate) fn forward_rows(
    op: &'static str,
    x: &Tensor,
    c: usize,
    targets: &[usize],
    weight: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let rows = targets.len();
    by_dtype!(op, x, T => {
        let stats = contiguous_data::<T, _>(op, x, |xs| {
            with_opt::<T, _>(op, weight, |ws| forward(xs, c, targets, ws, eps))
        })??;
        let loss: Vec<T> = stats.chunks_exact(3).map(|s| s[0]).collect();
        Ok((
            Tensor::from_buffer(T::into_buffer(loss), &[rows]),
            Tensor::from_buffer(T::into_buffer(stats), &[rows, 3]),
        ))
    })
}

/// The gradient `[rows, c]` of [`forward_rows`]' losses for the row gradients `g` (`rows`
/// values, or one for every row). Records nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_rows(
    op: &'static str,
    x: &Tensor,
    stats: &Tensor,
    c: usize,
    targets: &[usize],
    weight: Option<&Tensor>,
    eps: f64,
    g: &Tensor,
) -> Result<Tensor> {
    let g = g.to_dtype_raw(x.dtype())?;
    by_dtype!(op, x, T => {
        let dx = contiguous_data::<T, _>(op, x, |xs| {
            contiguous_data::<T, _>(op, stats, |ss| {
                contiguous_data::<T, _>(op, &g, |gs| {
                    with_opt::<T, _>(op, weight, |ws| backward(xs, c, targets, ss, ws, eps, gs))
                })
            })
        })????;
        Ok(Tensor::from_buffer(T::into_buffer(dx), &[targets.len(), c]))
    })
}
