//! Fused batch norm, forward and backward, over a contiguous `[N, C, S]` buffer of `f32`
//! or `f64` (`S` = the product of the spatial dims; 1 for `BatchNorm1d` on `[N, C]`).
//!
//! A channel's `N·S` elements lie in memory as `N` contiguous runs of `S` (one per batch
//! item). The per-channel reductions (mean and biased variance in two passes; the
//! backward's `Σg` and `Σg·x̂`) walk those runs with [`LANES`] partial sums (for `f32`
//! written with AVX: [`lanes`]), one channel per task across the pool; the elementwise
//! passes (normalise + affine, and the input gradient) run over the `N·C` runs of `S` in
//! memory order, each run reading its channel's constants. A channel is always reduced
//! on one thread in a fixed order, so results never depend on the thread count.
//!
//! They replace the tensor-op composition in `nn/functional.rs::batch_norm` (mean, sub,
//! mul, mean, add, rsqrt, mul, mul, add: nine ops, four strided reductions, and as many
//! in the backward), which is kept for half types, CUDA tensors and `create_graph`.

use super::rowwise::{by_dtype, contiguous_data, with_opt, NormNeeds, RowFloat, LANES};
use crate::cpu::parallel::for_each_row;
use crate::cpu::pool;
use crate::cpu::vmath::{map_into, zip_into};
use crate::error::Result;
use crate::tensor::Tensor;
use num_traits::Float;
use std::mem::MaybeUninit;

/// The `[N, C, S]` geometry of a batch-norm input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geom {
    /// Batch size.
    pub(crate) n: usize,
    /// Channels.
    pub(crate) c: usize,
    /// Elements per (batch item, channel): the product of the spatial dims.
    pub(crate) s: usize,
}

impl Geom {
    /// The geometry of `shape` (`[N, C, ..]`, at least 2 dims).
    pub(crate) fn of(shape: &[usize]) -> Geom {
        Geom {
            n: shape.first().copied().unwrap_or(1),
            c: shape.get(1).copied().unwrap_or(1),
            s: shape.iter().skip(2).product(),
        }
    }

    /// Elements per channel (`N·S`).
    fn per_channel(self) -> usize {
        self.n * self.s
    }

    /// Channels per parallel task in the per-channel reductions: a few thousand
    /// elements a task.
    fn min_channels(self) -> usize {
        (4096 / self.per_channel().max(1)).max(1)
    }

    /// Runs of `S` per parallel task in the elementwise passes.
    fn min_runs(self) -> usize {
        (4096 / self.s.max(1)).max(1)
    }
}

/// Folds the lanes in a fixed tree.
#[inline(always)]
fn combine<T: Float>(a: [T; LANES]) -> T {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// `Σ xᵢ` (`shift` = `None`) or `Σ (xᵢ − shift)²` over channel `ch`'s `N` runs, with
/// [`LANES`] partial sums carried across the runs (so short runs still vectorise a
/// little and the error grows with `N·S / LANES`).
#[inline(always)]
fn channel_sum<T: RowFloat>(x: &[T], g: Geom, ch: usize, shift: Option<T>) -> T {
    let mut acc = [T::zero(); LANES];
    let mut tail = T::zero();
    let f = |v: T| shift.map_or(v, |m| (v - m) * (v - m));
    for b in 0..g.n {
        let run = &x[(b * g.c + ch) * g.s..(b * g.c + ch + 1) * g.s];
        let (chunks, rest) = run.as_chunks::<LANES>();
        if !lanes::sum(&mut acc, chunks, shift) {
            for c in chunks {
                for l in 0..LANES {
                    acc[l] = acc[l] + f(c[l]);
                }
            }
        }
        for &v in rest {
            tail = tail + f(v);
        }
    }
    combine(acc) + tail
}

/// `(Σ gᵢ, Σ gᵢ·(xᵢ − m)·r)` over channel `ch`'s runs of `x` and `g`.
#[inline(always)]
fn channel_sums2<T: RowFloat>(x: &[T], gr: &[T], g: Geom, ch: usize, m: T, r: T) -> (T, T) {
    let (mut a1, mut a2) = ([T::zero(); LANES], [T::zero(); LANES]);
    let (mut t1, mut t2) = (T::zero(), T::zero());
    for b in 0..g.n {
        let range = (b * g.c + ch) * g.s..(b * g.c + ch + 1) * g.s;
        let (cx, rx) = x[range.clone()].as_chunks::<LANES>();
        let (cg, rg) = gr[range].as_chunks::<LANES>();
        if !lanes::sums2((&mut a1, &mut a2), cx, cg, (m, r)) {
            for (x, gv) in cx.iter().zip(cg) {
                for l in 0..LANES {
                    a1[l] = a1[l] + gv[l];
                    a2[l] = a2[l] + gv[l] * ((x[l] - m) * r);
                }
            }
        }
        for (&x, &gv) in rx.iter().zip(rg) {
            t1 = t1 + gv;
            t2 = t2 + gv * ((x - m) * r);
        }
    }
    (combine(a1) + t1, combine(a2) + t2)
}

/// The lane sums of [`channel_sum`] and [`channel_sums2`] over whole chunks, written
/// for `f32` with AVX (one `__m256` is the [`LANES`] partial sums): the same adds and
/// multiplies in the same order as the generic loops, so the same bits. The compiler
/// turns the generic loops into scalar and 4-wide code, at about half the speed (the
/// backward's sums took 60 % of its time). Each returns `false`, touching nothing,
/// where it does not apply (`f64`, or a CPU without AVX2).
mod lanes {
    use super::{RowFloat, LANES};

    /// The accumulators as `f32` lanes, when `T` is `f32` and the CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    fn f32_lanes<T: RowFloat>(acc: &mut [T; LANES]) -> Option<&mut [f32; LANES]> {
        if crate::cpu::vmath::simd_level() == crate::cpu::vmath::SimdLevel::Baseline {
            return None;
        }
        T::as_f32s_mut(acc).and_then(|s| s.try_into().ok())
    }

    /// `chunks` as `f32` lanes (when `T` is `f32`).
    #[cfg(target_arch = "x86_64")]
    fn f32_chunks<T: RowFloat>(c: &[[T; LANES]]) -> Option<&[[f32; LANES]]> {
        T::as_f32s(c.as_flattened()).map(|s| s.as_chunks::<LANES>().0)
    }

    /// `v` as an `f32` (exact: only called where `T` is `f32`).
    #[cfg(target_arch = "x86_64")]
    fn f32_of<T: RowFloat>(v: T) -> f32 {
        v.to_f32().unwrap_or(f32::NAN)
    }

    /// `acc[l] += c[l]` (`shift` = `None`) or `acc[l] += (c[l] − shift)²` over `chunks`.
    #[inline(always)]
    pub(super) fn sum<T: RowFloat>(
        acc: &mut [T; LANES],
        chunks: &[[T; LANES]],
        shift: Option<T>,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let (Some(acc), Some(c)) = (f32_lanes(acc), f32_chunks(chunks)) {
            // SAFETY: `f32_lanes` checked the CPU has AVX2
            unsafe { avx::sum(acc, c, shift.map(f32_of)) };
            return true;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (acc, chunks, shift);
        false
    }

    /// `a1[l] += g[l]; a2[l] += g[l]·((x[l] − m)·r)` over the chunks of `x` and `g`.
    #[inline(always)]
    pub(super) fn sums2<T: RowFloat>(
        (a1, a2): (&mut [T; LANES], &mut [T; LANES]),
        x: &[[T; LANES]],
        g: &[[T; LANES]],
        (m, r): (T, T),
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let (Some(a1), Some(a2), Some(x), Some(g)) =
            (f32_lanes(a1), f32_lanes(a2), f32_chunks(x), f32_chunks(g))
        {
            // SAFETY: `f32_lanes` checked the CPU has AVX2
            unsafe { avx::sums2(a1, a2, x, g, f32_of(m), f32_of(r)) };
            return true;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (a1, a2, x, g, m, r);
        false
    }

    #[cfg(target_arch = "x86_64")]
    mod avx {
        use super::LANES;
        use std::arch::x86_64::*;

        /// See [`super::sum`].
        ///
        /// # Safety
        /// The CPU has AVX.
        #[target_feature(enable = "avx")]
        pub(super) unsafe fn sum(acc: &mut [f32; LANES], c: &[[f32; LANES]], shift: Option<f32>) {
            // SAFETY: every load and store is of a whole `[f32; 8]`
            unsafe {
                let mut a = _mm256_loadu_ps(acc.as_ptr());
                match shift {
                    None => {
                        for c in c {
                            a = _mm256_add_ps(a, _mm256_loadu_ps(c.as_ptr()));
                        }
                    }
                    Some(m) => {
                        let m = _mm256_set1_ps(m);
                        for c in c {
                            let d = _mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m);
                            a = _mm256_add_ps(a, _mm256_mul_ps(d, d));
                        }
                    }
                }
                _mm256_storeu_ps(acc.as_mut_ptr(), a);
            }
        }

        /// See [`super::sums2`].
        ///
        /// # Safety
        /// The CPU has AVX.
        #[target_feature(enable = "avx")]
        pub(super) unsafe fn sums2(
            a1: &mut [f32; LANES],
            a2: &mut [f32; LANES],
            x: &[[f32; LANES]],
            g: &[[f32; LANES]],
            m: f32,
            r: f32,
        ) {
            // SAFETY: every load and store is of a whole `[f32; 8]`
            unsafe {
                let (mut s1, mut s2) = (_mm256_loadu_ps(a1.as_ptr()), _mm256_loadu_ps(a2.as_ptr()));
                let (m, r) = (_mm256_set1_ps(m), _mm256_set1_ps(r));
                for (x, g) in x.iter().zip(g) {
                    let gv = _mm256_loadu_ps(g.as_ptr());
                    let xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr()), m), r);
                    s1 = _mm256_add_ps(s1, gv);
                    s2 = _mm256_add_ps(s2, _mm256_mul_ps(gv, xh));
                }
                _mm256_storeu_ps(a1.as_mut_ptr(), s1);
                _mm256_storeu_ps(a2.as_mut_ptr(), s2);
            }
        }
    }
}

/// `f(ch, row)` for every channel's `k`-long row of a new `[C, k]` vector (zeroed),
/// across the pool when `work` (elements touched) is large enough; a channel's row is
/// always computed by one task, in the same order on any number of threads.
fn per_channel<T: RowFloat>(
    g: Geom,
    k: usize,
    work: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    let mut rows = vec![T::zero(); g.c * k];
    if g.per_channel() > 0 {
        for_each_row(&mut rows, k, g.min_channels(), work, f);
    }
    rows
}

/// A new vector of `len` (= `N·C·S`) elements, run `r` (of `S`) filled by `f(r, run)`,
/// which must write every element of its run; runs split across the pool. The passes
/// run over the runs in memory order: measured on `[64, 64, 32, 32]`, this is 1.3×
/// faster than a channel's runs back to back after its reductions (its data still in
/// cache), which writes 4 KiB at a time 256 KiB apart.
fn fill_runs<T: RowFloat>(
    len: usize,
    g: Geom,
    work: usize,
    f: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut out: Vec<T> = pool::take(len);
    if len == 0 || g.s == 0 {
        return out;
    }
    let dst = &mut out.spare_capacity_mut()[..len];
    for_each_row(dst, g.s, g.min_runs(), work, f);
    // SAFETY: every run of the `len / S` runs of `S` was written by `f`
    unsafe { out.set_len(len) };
    out
}

/// The per-channel batch mean and biased variance of `x` (two passes a channel:
/// the mean, then the mean squared deviation from it).
fn channel_stats<T: RowFloat>(x: &[T], g: Geom, ch: usize) -> (T, T) {
    let inv = T::one() / T::from(g.per_channel().max(1)).unwrap_or_else(T::one);
    let mean = channel_sum(x, g, ch, None) * inv;
    (mean, channel_sum(x, g, ch, Some(mean)) * inv)
}

/// Batch norm of `x` (`[N, C, S]`) with the batch statistics (`stats` = `None`) or the
/// given `(mean, var)` per channel, then the optional affine `w`, `b`: returns
/// `(y, mean, var, invstd)` (biased variance). `y = ((x − mean)·invstd)·w + b`: the same
/// operations in the same order as the composition, so with equal statistics the
/// output is bit for bit the composition's.
#[allow(clippy::type_complexity)]
pub(crate) fn forward_slices<T: RowFloat>(
    x: &[T],
    g: Geom,
    stats: Option<(&[T], &[T])>,
    eps: f64,
    w: Option<&[T]>,
    b: Option<&[T]>,
) -> (Vec<T>, Vec<T>, Vec<T>, Vec<T>) {
    let eps = T::from(eps).unwrap_or_else(T::zero);
    let rows = per_channel(g, 3, 2 * x.len(), |ch, s| {
        let (m, v) = match stats {
            Some((m, v)) => (m[ch], v[ch]),
            None => channel_stats(x, g, ch),
        };
        (s[0], s[1], s[2]) = (m, v, T::one() / (v + eps).sqrt());
    });
    let column = |i: usize| rows.iter().skip(i).step_by(3).copied().collect::<Vec<T>>();
    let (mean, var, invstd) = (column(0), column(1), column(2));
    let y = fill_runs(x.len(), g, 2 * x.len(), |r, y| {
        let ch = r % g.c;
        let x = &x[r * g.s..(r + 1) * g.s];
        let (m, k) = (mean[ch], invstd[ch]);
        match (w.map(|w| w[ch]), b.map(|b| b[ch])) {
            (Some(w), Some(b)) => map_into(y, x, &|x: T| (x - m) * k * w + b),
            (Some(w), None) => map_into(y, x, &|x: T| (x - m) * k * w),
            (None, Some(b)) => map_into(y, x, &|x: T| (x - m) * k + b),
            (None, None) => map_into(y, x, &|x: T| (x - m) * k),
        }
    });
    (y, mean, var, invstd)
}

/// Gradients of [`forward_slices`] with `x̂ = (x − mean)·invstd`: with batch statistics
/// (functions of `x`) `dx = invstd·w·(g − Σg/M − x̂·Σgx̂/M)` per channel (`M = N·S`);
/// with fixed (running) statistics `dx = (g·w)·invstd`; in both `dw = Σ g·x̂` and
/// `db = Σ g`. Returns `(dx, dw, db)`, each `None` unless asked for.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn backward<T: RowFloat>(
    x: &[T],
    gr: &[T],
    g: Geom,
    mean: &[T],
    invstd: &[T],
    w: Option<&[T]>,
    batch_stats: bool,
    needs: NormNeeds,
) -> (Option<Vec<T>>, Option<Vec<T>>, Option<Vec<T>>) {
    let want_w = needs.weight && w.is_some();
    // [Σg, Σg·x̂] per channel, when anything needs them
    let sums = (want_w || needs.bias || (needs.x && batch_stats)).then(|| {
        per_channel(g, 2, 2 * x.len(), |ch, s| {
            (s[0], s[1]) = channel_sums2(x, gr, g, ch, mean[ch], invstd[ch]);
        })
    });
    let dx = needs.x.then(|| {
        let inv_m = T::one() / T::from(g.per_channel().max(1)).unwrap_or_else(T::one);
        fill_runs(x.len(), g, 3 * x.len(), |r, dx| {
            let ch = r % g.c;
            let range = r * g.s..(r + 1) * g.s;
            let (x, gr) = (&x[range.clone()], &gr[range]);
            let (m, k) = (mean[ch], invstd[ch]);
            match (&sums, batch_stats, w.map(|w| w[ch])) {
                (Some(s), true, wc) => {
                    let scale = k * wc.unwrap_or_else(T::one);
                    let (a, b) = (s[2 * ch] * inv_m, s[2 * ch + 1] * inv_m);
                    zip_into(dx, x, gr, &|x: T, gv: T| scale * (gv - a - (x - m) * k * b));
                }
                (_, _, Some(wc)) => map_into(dx, gr, &|gv: T| gv * wc * k),
                (_, _, None) => map_into(dx, gr, &|gv: T| gv * k),
            }
        })
    });
    let (dw, db) = match sums {
        Some(s) => (
            want_w.then(|| s.iter().skip(1).step_by(2).copied().collect()),
            needs.bias.then(|| s.iter().step_by(2).copied().collect()),
        ),
        None => (None, None),
    };
    (dx, dw, db)
}

// ----------------------------------------------------------------------- tensor glue

fn wrap<T: RowFloat>(v: Vec<T>, shape: &[usize]) -> Tensor {
    Tensor::from_buffer(T::into_buffer(v), shape)
}

/// The forward of the fused batch norm on `x` (`[N, C, ..]`, f32/f64 on the CPU;
/// `weight`, `bias` of `C` elements and `x`'s dtype). With `stats` = `None` it
/// normalises with the batch statistics and returns `(y, mean, var, invstd)` (biased
/// variance); with `Some((mean, var))` (`[C]`, `x`'s dtype) it normalises with those and
/// returns them back with their invstd. Records nothing.
#[allow(clippy::type_complexity)]
pub(crate) fn forward(
    op: &'static str,
    x: &Tensor,
    stats: Option<(&Tensor, &Tensor)>,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return crate::cuda::ops::batch_norm_forward(x, stats, weight, bias, eps);
    }
    let g = Geom::of(x.shape());
    by_dtype!(op, x, T => {
        let (y, mean, var, invstd) = contiguous_data::<T, _>(op, x, |xs| {
            let fixed = match stats {
                None => None,
                Some((m, v)) => Some((
                    contiguous_data::<T, _>(op, m, |s| s.to_vec())?,
                    contiguous_data::<T, _>(op, v, |s| s.to_vec())?,
                )),
            };
            let fixed = fixed.as_ref().map(|(m, v)| (m.as_slice(), v.as_slice()));
            with_opt::<T, _>(op, weight, |ws| {
                with_opt::<T, _>(op, bias, |bs| forward_slices(xs, g, fixed, eps, ws, bs))
            })?
        })??;
        let c = [g.c];
        Ok((wrap(y, x.shape()), wrap(mean, &c), wrap(var, &c), wrap(invstd, &c)))
    })
}

/// The gradients of [`forward`]: `(dx, dweight, dbias)` (shapes of `x` and `[C]`),
/// each `None` unless asked for, from the statistics `(mean, var, invstd)` forward
/// returned and its `eps` (the CPU kernels read `invstd`, CUDA's `var` and `eps`);
/// `batch_stats` says whether they were the batch's (functions of `x`) or fixed.
/// Records nothing.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn backward_tensors(
    op: &'static str,
    x: &Tensor,
    grad: &Tensor,
    (mean, var, invstd): (&Tensor, &Tensor, &Tensor),
    weight: Option<&Tensor>,
    batch_stats: bool,
    eps: f64,
    needs: NormNeeds,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let g = Geom::of(x.shape());
    let grad = grad.to_dtype_raw(x.dtype())?;
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        let needs = (needs.x, needs.weight, needs.bias);
        return crate::cuda::ops::batch_norm_backward(
            x,
            &grad,
            mean,
            var,
            invstd,
            weight,
            batch_stats,
            eps,
            needs,
        );
    }
    let _ = (var, eps); // the CPU kernels use `invstd`
    by_dtype!(op, x, T => {
        let (dx, dw, db) = contiguous_data::<T, _>(op, x, |xs| {
            contiguous_data::<T, _>(op, &grad, |gs| {
                contiguous_data::<T, _>(op, mean, |ms| {
                    contiguous_data::<T, _>(op, invstd, |is| {
                        with_opt::<T, _>(op, weight, |ws| {
                            backward(xs, gs, g, ms, is, ws, batch_stats, needs)
                        })
                    })
                })
            })
        })?????;
        let c = [g.c];
        Ok((
            dx.map(|v| wrap(v, x.shape())),
            dw.map(|v| wrap(v, &c)),
            db.map(|v| wrap(v, &c)),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: usize) -> Vec<f64> {
        (0..len)
            .map(|i| (((i + seed) * 7919 % 1013) as f64) / 101.0 - 5.0)
            .collect()
    }

    /// Mean and biased variance of channel `ch`, the textbook way.
    fn reference_stats(x: &[f64], g: Geom, ch: usize) -> (f64, f64) {
        let vals: Vec<f64> = (0..g.n)
            .flat_map(|b| x[(b * g.c + ch) * g.s..(b * g.c + ch + 1) * g.s].to_vec())
            .collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let v = vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / vals.len() as f64;
        (m, v)
    }

    #[test]
    fn stats_and_output_match_the_textbook_formula() {
        // [N, C], [N, C, L] with a lane tail, [N, C, H·W]
        for g in [
            Geom { n: 5, c: 3, s: 1 },
            Geom { n: 4, c: 2, s: 13 },
            Geom { n: 3, c: 4, s: 64 },
        ] {
            let x = data(g.n * g.c * g.s, 3);
            let w: Vec<f64> = (0..g.c).map(|c| 0.5 + c as f64).collect();
            let b: Vec<f64> = (0..g.c).map(|c| c as f64 - 1.0).collect();
            let (y, mean, var, invstd) = forward_slices(&x, g, None, 1e-5, Some(&w), Some(&b));
            // fixed statistics reproduce the output and give back the same invstd
            let fixed = forward_slices(&x, g, Some((&mean, &var)), 1e-5, Some(&w), Some(&b));
            assert!(fixed.0 == y && fixed.3 == invstd);
            for ch in 0..g.c {
                let (m, v) = reference_stats(&x, g, ch);
                assert!((mean[ch] - m).abs() < 1e-13, "{g:?} mean {ch}");
                assert!((var[ch] - v).abs() < 1e-12, "{g:?} var {ch}");
                // the output of a channel has mean b and biased variance w²·v/(v+eps)
                let yc: Vec<f64> = (0..g.n)
                    .flat_map(|n| y[(n * g.c + ch) * g.s..(n * g.c + ch + 1) * g.s].to_vec())
                    .collect();
                let ym = yc.iter().sum::<f64>() / yc.len() as f64;
                let yv = yc.iter().map(|y| (y - ym) * (y - ym)).sum::<f64>() / yc.len() as f64;
                assert!((ym - b[ch]).abs() < 1e-12);
                assert!((yv - w[ch] * w[ch] * v / (v + 1e-5)).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let g = Geom { n: 3, c: 2, s: 11 };
        let len = g.n * g.c * g.s;
        let x = data(len, 1);
        let gr: Vec<f64> = (0..len)
            .map(|i| ((i * 31 % 17) as f64) / 7.0 - 1.0)
            .collect();
        let w = [0.7, -1.3];
        let b = [0.2, 0.4];
        let eps = 1e-5;
        let rm = [0.3, -0.2];
        let rv = [1.5, 0.8];
        let all = NormNeeds {
            x: true,
            weight: true,
            bias: true,
        };
        for batch in [true, false] {
            let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
                let fixed = (!batch).then_some((&rm[..], &rv[..]));
                let (y, ..) = forward_slices(x, g, fixed, eps, Some(w), Some(b));
                y.iter().zip(&gr).map(|(y, g)| y * g).sum()
            };
            let fixed = (!batch).then_some((&rm[..], &rv[..]));
            let (_, m, _, is) = forward_slices(&x, g, fixed, eps, Some(&w), Some(&b));
            let (dx, dw, db) = backward(&x, &gr, g, &m, &is, Some(&w), batch, all);
            let (dx, dw, db) = (dx.unwrap(), dw.unwrap(), db.unwrap());
            let h = 1e-6;
            let fd = |v: &[f64], i: usize, which: u8| {
                let (mut p, mut q) = (v.to_vec(), v.to_vec());
                p[i] += h;
                q[i] -= h;
                match which {
                    0 => (loss(&p, &w, &b) - loss(&q, &w, &b)) / (2.0 * h),
                    1 => (loss(&x, &p, &b) - loss(&x, &q, &b)) / (2.0 * h),
                    _ => (loss(&x, &w, &p) - loss(&x, &w, &q)) / (2.0 * h),
                }
            };
            for (i, &d) in dx.iter().enumerate() {
                assert!((d - fd(&x, i, 0)).abs() < 1e-6, "batch {batch} dx[{i}]");
            }
            for ch in 0..g.c {
                assert!((dw[ch] - fd(&w, ch, 1)).abs() < 1e-6, "dw[{ch}]");
                assert!((db[ch] - fd(&b, ch, 2)).abs() < 1e-6, "db[{ch}]");
            }
            // without a weight: the dx of a weight of ones
            let ones = [1.0; 2];
            let (a, _, _) = backward(&x, &gr, g, &m, &is, Some(&ones), batch, all);
            let (c, none_w, _) = backward(&x, &gr, g, &m, &is, None, batch, all);
            assert!(none_w.is_none());
            for (a, c) in a.unwrap().iter().zip(c.unwrap()) {
                assert!((a - c).abs() < 1e-13);
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let g = Geom {
            n: 8,
            c: 6,
            s: 1000,
        };
        let len = g.n * g.c * g.s;
        let x: Vec<f32> = data(len, 5).into_iter().map(|v| v as f32).collect();
        let gr: Vec<f32> = (0..len).map(|i| ((i * 31 % 17) as f32) / 7.0).collect();
        let w: Vec<f32> = (0..g.c).map(|c| 1.0 + c as f32).collect();
        let all = NormNeeds {
            x: true,
            weight: true,
            bias: true,
        };
        let run = || {
            let (y, m, v, is) = forward_slices(&x, g, None, 1e-5, Some(&w), Some(&w));
            let b = backward(&x, &gr, g, &m, &is, Some(&w), true, all);
            (m, v, y, b)
        };
        crate::set_num_threads(1);
        let one = run();
        crate::set_num_threads(4);
        let four = run();
        crate::set_num_threads(0);
        assert!(one == four);
    }

    #[test]
    fn the_f32_lanes_give_the_bits_of_the_generic_loops() {
        use crate::cpu::vmath::{detected_level, tests::at_level, SimdLevel};
        let all = NormNeeds {
            x: true,
            weight: true,
            bias: true,
        };
        // runs with and without a tail of fewer than LANES elements
        for g in [Geom { n: 3, c: 4, s: 37 }, Geom { n: 5, c: 2, s: 64 }] {
            let len = g.n * g.c * g.s;
            let x: Vec<f32> = data(len, 2).into_iter().map(|v| v as f32).collect();
            let gr: Vec<f32> = (0..len)
                .map(|i| ((i * 13 % 23) as f32) / 9.0 - 1.0)
                .collect();
            let w: Vec<f32> = (0..g.c).map(|c| 0.5 + c as f32).collect();
            let run = || {
                let (y, m, v, is) = forward_slices(&x, g, None, 1e-5, Some(&w), Some(&w));
                let b = backward(&x, &gr, g, &m, &is, Some(&w), true, all);
                (y, m, v, b)
            };
            let want = at_level(SimdLevel::Baseline, run);
            let got = at_level(detected_level(), run);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&want.0), bits(&got.0), "{g:?} y");
            assert_eq!(bits(&want.1), bits(&got.1), "{g:?} mean");
            assert_eq!(bits(&want.2), bits(&got.2), "{g:?} var");
            let (wb, gb) = (&want.3, &got.3);
            for (a, b) in [(&wb.0, &gb.0), (&wb.1, &gb.1), (&wb.2, &gb.2)] {
                assert_eq!(
                    a.as_deref().map(bits),
                    b.as_deref().map(bits),
                    "{g:?} grads"
                );
            }
        }
    }
}
