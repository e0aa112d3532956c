//! Fused batch norm, forward and backward, over a contiguous `[N, C, S]` buffer of `f32`
//! or `f64` (`S` = the product of the spatial dims; 1 for `BatchNorm1d` on `[N, C]`).
//!
//! A channel's `N·S` elements lie in memory as `N` contiguous runs of `S` (one per batch
//! item). The per-channel reductions (mean and biased variance in two passes; the
//! backward's `Σg` and `Σg·x̂`) walk those runs with [`LANES`] partial sums and run one
//! channel per task across the pool; the elementwise passes (normalise + affine, and the
//! input gradient) run over the `N·C` runs of `S`, each run reading its channel's
//! constants. A channel is always reduced on one thread in a fixed order, so results
//! never depend on the thread count.
//!
//! They replace the tensor-op composition in `nn/functional.rs::batch_norm` (mean, sub,
//! mul, mean, add, rsqrt, mul, mul, add: nine ops, four strided reductions, and as many
//! in the backward), which is kept for half types, CUDA tensors and `create_graph`.

use super::rowwise::{by_dtype, contiguous_data, with_opt, NormNeeds, RowFloat, LANES};
use crate::cpu::parallel::for_each_row;
use crate::cpu::pool;
use crate::error::{Error, Result};
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

/// `Σ f(aᵢ)` over channel `ch`'s `N` runs, with [`LANES`] partial sums carried across
/// the runs (so short runs still vectorise a little and the error grows with
/// `N·S / LANES`).
#[inline(always)]
fn channel_sum<T: Float>(x: &[T], g: Geom, ch: usize, f: impl Fn(T) -> T) -> T {
    let mut acc = [T::zero(); LANES];
    let mut tail = T::zero();
    for b in 0..g.n {
        let run = &x[(b * g.c + ch) * g.s..(b * g.c + ch + 1) * g.s];
        let chunks = run.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..LANES {
                acc[l] = acc[l] + f(c[l]);
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
fn channel_sums2<T: Float>(x: &[T], gr: &[T], g: Geom, ch: usize, m: T, r: T) -> (T, T) {
    let (mut a1, mut a2) = ([T::zero(); LANES], [T::zero(); LANES]);
    let (mut t1, mut t2) = (T::zero(), T::zero());
    for b in 0..g.n {
        let range = (b * g.c + ch) * g.s..(b * g.c + ch + 1) * g.s;
        let (xr, grr) = (&x[range.clone()], &gr[range]);
        let (cx, cg) = (xr.chunks_exact(LANES), grr.chunks_exact(LANES));
        let (rx, rg) = (cx.remainder(), cg.remainder());
        for (x, gv) in cx.zip(cg) {
            for l in 0..LANES {
                a1[l] = a1[l] + gv[l];
                a2[l] = a2[l] + gv[l] * ((x[l] - m) * r);
            }
        }
        for (&x, &gv) in rx.iter().zip(rg) {
            t1 = t1 + gv;
            t2 = t2 + gv * ((x - m) * r);
        }
    }
    (combine(a1) + t1, combine(a2) + t2)
}

/// The per-channel batch mean and biased variance of `x` (two passes a channel:
/// the mean, then the mean squared deviation from it).
pub(crate) fn batch_stats<T: RowFloat>(x: &[T], g: Geom) -> (Vec<T>, Vec<T>) {
    let mut stats = vec![T::zero(); 2 * g.c];
    if g.per_channel() > 0 {
        let inv = T::one() / T::from(g.per_channel()).unwrap_or_else(T::one);
        for_each_row(&mut stats, 2, g.min_channels(), 2 * x.len(), |ch, s| {
            let mean = channel_sum(x, g, ch, |v| v) * inv;
            s[0] = mean;
            s[1] = channel_sum(x, g, ch, |v| (v - mean) * (v - mean)) * inv;
        });
    }
    stats.chunks_exact(2).map(|s| (s[0], s[1])).unzip()
}

/// A new vector of `len` (= `N·C·S`) elements, run `r` (of `S`) filled by `f(r, run)`,
/// which must write every element of its run; runs split across the pool.
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

/// `((x − mean)·invstd)·w + b` per channel (`w`, `b` optional, of length `C`): the
/// same operations in the same order as the composition, so with equal statistics the
/// output is bit for bit the composition's.
pub(crate) fn normalize<T: RowFloat>(
    x: &[T],
    g: Geom,
    mean: &[T],
    invstd: &[T],
    w: Option<&[T]>,
    b: Option<&[T]>,
) -> Vec<T> {
    fill_runs(x.len(), g, x.len(), |r, y| {
        let ch = r % g.c;
        let x = &x[r * g.s..(r + 1) * g.s];
        let (m, k) = (mean[ch], invstd[ch]);
        match (w, b) {
            (Some(w), Some(b)) => {
                let (w, b) = (w[ch], b[ch]);
                for (y, &x) in y.iter_mut().zip(x) {
                    y.write((x - m) * k * w + b);
                }
            }
            (Some(w), None) => {
                let w = w[ch];
                for (y, &x) in y.iter_mut().zip(x) {
                    y.write((x - m) * k * w);
                }
            }
            (None, Some(b)) => {
                let b = b[ch];
                for (y, &x) in y.iter_mut().zip(x) {
                    y.write((x - m) * k + b);
                }
            }
            (None, None) => {
                for (y, &x) in y.iter_mut().zip(x) {
                    y.write((x - m) * k);
                }
            }
        }
    })
}

/// `1/√(var + eps)` of each channel.
pub(crate) fn invstd_of<T: RowFloat>(var: &[T], eps: f64) -> Vec<T> {
    let eps = T::from(eps).unwrap_or_else(T::zero);
    var.iter().map(|&v| T::one() / (v + eps).sqrt()).collect()
}

/// Gradients of [`normalize`] with `x̂ = (x − mean)·invstd`: with batch statistics
/// (`batch_stats`, the mean and invstd functions of `x`)
/// `dx = invstd·w·(g − Σg/M − x̂·Σgx̂/M)` per channel (`M = N·S`); with fixed (running)
/// statistics `dx = (g·w)·invstd`; in both `dw = Σ g·x̂` and `db = Σ g`. Returns
/// `(dx, dw, db)`, each `None` unless asked for.
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
        let mut sums = vec![T::zero(); 2 * g.c];
        if g.per_channel() > 0 {
            for_each_row(&mut sums, 2, g.min_channels(), 2 * x.len(), |ch, s| {
                let (a, b) = channel_sums2(x, gr, g, ch, mean[ch], invstd[ch]);
                s[0] = a;
                s[1] = b;
            });
        }
        sums
    });
    let dx = needs.x.then(|| {
        let inv_m = T::one() / T::from(g.per_channel()).unwrap_or_else(T::one);
        let w_of = |ch: usize| w.map_or(T::one(), |w| w[ch]);
        match (&sums, batch_stats) {
            (Some(sums), true) => fill_runs(x.len(), g, 3 * x.len(), |r, dx| {
                let ch = r % g.c;
                let range = r * g.s..(r + 1) * g.s;
                let (x, gr) = (&x[range.clone()], &gr[range]);
                let (m, k) = (mean[ch], invstd[ch]);
                let scale = k * w_of(ch);
                let (a, b) = (sums[2 * ch] * inv_m, sums[2 * ch + 1] * inv_m);
                for ((d, &x), &gv) in dx.iter_mut().zip(x).zip(gr) {
                    d.write(scale * (gv - a - (x - m) * k * b));
                }
            }),
            _ => fill_runs(x.len(), g, 2 * x.len(), |r, dx| {
                let ch = r % g.c;
                let gr = &gr[r * g.s..(r + 1) * g.s];
                let k = invstd[ch];
                match w {
                    Some(w) => {
                        let w = w[ch];
                        for (d, &gv) in dx.iter_mut().zip(gr) {
                            d.write(gv * w * k);
                        }
                    }
                    None => {
                        for (d, &gv) in dx.iter_mut().zip(gr) {
                            d.write(gv * k);
                        }
                    }
                }
            }),
        }
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
            let (mean, var) = match stats {
                None => batch_stats(xs, g),
                Some((m, v)) => (
                    contiguous_data::<T, _>(op, m, |s| s.to_vec())?,
                    contiguous_data::<T, _>(op, v, |s| s.to_vec())?,
                ),
            };
            let invstd = invstd_of(&var, eps);
            let y = with_opt::<T, _>(op, weight, |ws| {
                with_opt::<T, _>(op, bias, |bs| normalize(xs, g, &mean, &invstd, ws, bs))
            })??;
            Ok::<_, Error>((y, mean, var, invstd))
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
            let (mean, var) = batch_stats(&x, g);
            let invstd = invstd_of(&var, 1e-5);
            let w: Vec<f64> = (0..g.c).map(|c| 0.5 + c as f64).collect();
            let b: Vec<f64> = (0..g.c).map(|c| c as f64 - 1.0).collect();
            let y = normalize(&x, g, &mean, &invstd, Some(&w), Some(&b));
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
                let (m, v) = if batch {
                    batch_stats(x, g)
                } else {
                    (rm.to_vec(), rv.to_vec())
                };
                let y = normalize(x, g, &m, &invstd_of(&v, eps), Some(w), Some(b));
                y.iter().zip(&gr).map(|(y, g)| y * g).sum()
            };
            let (m, v) = if batch {
                batch_stats(&x, g)
            } else {
                (rm.to_vec(), rv.to_vec())
            };
            let is = invstd_of(&v, eps);
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
            let (m, v) = batch_stats(&x, g);
            let is = invstd_of(&v, 1e-5);
            let y = normalize(&x, g, &m, &is, Some(&w), Some(&w));
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
}
