//! Fused CPU optimizer updates: one pass over a parameter's elements instead of a chain
//! of about ten tensor ops, each of which allocates and fills a new tensor. For small
//! and medium models the chain's per-op overhead was most of an optimizer step (Adam was
//! 49% of a step of the `digits` example).
//!
//! Covered: [`adam`] (Adam/AdamW, AMSGrad included), [`sgd`] (momentum, dampening,
//! Nesterov, weight decay), [`rmsprop`] (centered, momentum) and [`adagrad`], for a
//! contiguous CPU `f32`/`f64` parameter whose gradient and state tensors have its dtype,
//! shape and device. Adam and SGD of a contiguous float CUDA parameter go to the fused
//! kernels of `flint-kernels` (`cuda::optim`, the same rules). Everything else (`f16`/
//! `bf16` on the CPU, non-contiguous parameters or state) returns `None` and the
//! optimizer takes its op chain, which stays the reference.
//!
//! Numerics: each update evaluates the chain's formulas in the same order, in the
//! parameter's dtype, with every scalar coefficient converted to that dtype once (as the
//! chain's scalar operands are, and as PyTorch's foreach/fused CPU paths do for `f32`).
//! Rust does not contract `a * b + c` into a fused multiply-add, so the fused result
//! matches the chain's bit for bit; the tests allow a few ulps all the same.
//!
//! Writes: the parameter is written in place under its storage's write lock, which bumps
//! the storage version (so a backward through a graph that saved the parameter reports
//! the in-place modification). A state tensor is updated in place when
//! [`Tensor::is_exclusive`] (nothing else — a clone in an earlier state dict, a view —
//! can see it); otherwise its new values go into a new tensor and the old one keeps its
//! values. Large parameters are split across the Flint CPU pool; every element is
//! computed independently, so results do not depend on the number of threads.

use crate::cpu::parallel::{chunk_len, install, should_parallelize};
use crate::device::Device;
use crate::dtype::{DType, Element, FloatElement};
use crate::storage::{BufferElement, StorageData};
use crate::tensor::Tensor;
use std::ops::Range;
use std::sync::RwLockWriteGuard;

#[cfg(test)]
thread_local! {
    /// Test switch: when set, every fused update declines and the optimizers take the
    /// op chain (the reference the fused updates are checked against).
    static CHAIN_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Test counter: fused updates done on this thread.
    static FUSED_UPDATES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One state tensor of a fused update.
pub(crate) enum Slot<'a> {
    /// An existing state tensor: updated in place when exclusive, otherwise read and
    /// replaced by a new tensor.
    Tensor(&'a Tensor),
    /// No state yet: a new tensor whose old value is this in every element.
    Fill(f64),
}

/// Runs `$body` with `$T` the Rust type of `$dtype` for `f32` and `f64`; `None` for any
/// other dtype.
macro_rules! per_float {
    ($dtype:expr, $T:ident => $body:expr) => {
        $crate::dispatch!(f32_f64 $dtype, $T => $body, else None)
    };
}

/// `torch.maximum` of two elements (NaN propagates), as the chain's `maximum` computes it.
#[inline(always)]
fn max_nan<T: Element>(x: T, y: T) -> T {
    if x.is_nan() || x > y {
        x
    } else {
        y
    }
}

/// The storage range of a contiguous tensor.
fn range(t: &Tensor) -> Range<usize> {
    let off = t.layout().offset();
    off..off + t.numel()
}

/// True when `t` can take part in a fused update of the parameter `p`: on the CPU,
/// contiguous, of `p`'s dtype and shape.
fn fits(t: &Tensor, p: &Tensor) -> bool {
    t.device() == Device::Cpu
        && t.dtype() == p.dtype()
        && t.shape() == p.shape()
        && t.is_contiguous()
}

/// A fused CUDA update (`cuda::optim`), unless the tests asked for the chain; `None` when
/// it declines or fails.
#[cfg(feature = "cuda")]
fn cuda_unless_chain_only<R>(f: impl FnOnce() -> crate::error::Result<Option<R>>) -> Option<R> {
    #[cfg(test)]
    if CHAIN_ONLY.get() {
        return None;
    }
    f().ok().flatten()
}

/// The checks shared by every fused update: `p` is a contiguous CPU `f32`/`f64` tensor,
/// `g` has its dtype, shape and device and does not share its storage, and so does every
/// state tensor. Returns the gradient to read (a contiguous copy if `g` is strided).
fn prepare(p: &Tensor, g: &Tensor, slots: &[Slot<'_>]) -> Option<Tensor> {
    #[cfg(test)]
    if CHAIN_ONLY.get() {
        return None;
    }
    let float = matches!(p.dtype(), DType::F32 | DType::F64);
    if !float || !fits(p, p) || g.shares_storage(p) {
        return None;
    }
    let states_fit = slots.iter().all(|s| match s {
        Slot::Tensor(t) => fits(t, p) && !t.shares_storage(p),
        Slot::Fill(_) => true,
    });
    let g_fits = g.device() == Device::Cpu && g.dtype() == p.dtype() && g.shape() == p.shape();
    if !states_fit || !g_fits {
        return None;
    }
    // a strided gradient (rare) is copied once rather than sending the step to the chain
    g.try_contiguous().ok()
}

/// A state's buffer during a fused update.
enum Buf<'a, T> {
    /// An exclusive state tensor, its storage locked for writing, and its range.
    InPlace(&'a Tensor, RwLockWriteGuard<'a, StorageData>, Range<usize>),
    /// The new values of a state that is shared or does not exist yet.
    New(Vec<T>),
}

impl<T: BufferElement> Buf<'_, T> {
    fn slice_mut(&mut self) -> Option<&mut [T]> {
        match self {
            Buf::InPlace(_, guard, r) => guard
                .as_cpu_mut()
                .and_then(T::slice_mut)
                .map(|s| &mut s[r.clone()]),
            Buf::New(v) => Some(v),
        }
    }
}

/// The fused update of parameter `p` with gradient `g` and `K` state tensors: for every
/// element `i`, `(p[i], s[i]) ← f(p[i], g[i], s[i])`. Returns the state tensors after the
/// update (the same tensors where they were updated in place, new ones otherwise), or
/// `None` — with nothing written — when the tensors do not qualify (see [`prepare`]).
fn update<T, const K: usize>(
    p: &Tensor,
    g: &Tensor,
    slots: [Slot<'_>; K],
    f: impl Fn(T, T, [T; K]) -> (T, [T; K]) + Sync,
) -> Option<[Tensor; K]>
where
    T: FloatElement + BufferElement,
{
    let g = prepare(p, g, &slots)?;
    let n = p.numel();
    // shared states are copied out (their read locks released) before any write lock
    let mut new: [Option<Vec<T>>; K] = std::array::from_fn(|_| None);
    for (new, slot) in new.iter_mut().zip(&slots) {
        *new = match slot {
            Slot::Tensor(t) if t.is_exclusive() => None,
            Slot::Tensor(t) => {
                let r = range(t);
                Some(
                    t.with_slice::<T, _>("fused optimizer step", |s, _| s[r].to_vec())
                        .ok()?,
                )
            }
            Slot::Fill(v) => Some(vec![T::from_f64(*v); n]),
        };
    }
    let g_guard = g.storage().read();
    let gs = &T::slice(g_guard.as_cpu()?)?[range(&g)];
    // the write lock bumps the parameter's version, like every in-place op
    let mut p_guard = p.storage().write();
    let ps = &mut T::slice_mut(p_guard.as_cpu_mut()?)?[range(p)];
    // an exclusive state shares its storage with nothing, so these locks are uncontended
    let mut bufs: Vec<Buf<'_, T>> = new
        .into_iter()
        .zip(&slots)
        .map(|(new, slot)| match (new, slot) {
            (None, Slot::Tensor(t)) => Buf::InPlace(t, t.storage().write(), range(t)),
            (new, _) => Buf::New(new.unwrap_or_default()),
        })
        .collect();
    let states: Vec<&mut [T]> = bufs.iter_mut().map(Buf::slice_mut).collect::<Option<_>>()?;
    if states.iter().any(|s| s.len() != n) {
        return None;
    }
    let mut states: [&mut [T]; K] = states.try_into().ok()?;
    let run = |ps: &mut [T], gs: &[T], ss: [&mut [T]; K]| update_elements(ps, gs, ss, &f);
    if should_parallelize(n) {
        use rayon::prelude::*;
        let chunk = chunk_len(n);
        let mut parts = Vec::with_capacity(n.div_ceil(chunk));
        let (mut p_rest, mut g_rest) = (ps, gs);
        while !p_rest.is_empty() {
            let c = chunk.min(p_rest.len());
            let (p_head, p_tail) = p_rest.split_at_mut(c);
            let (g_head, g_tail) = g_rest.split_at(c);
            let s_heads: [&mut [T]; K] = std::array::from_fn(|k| {
                let (head, tail) = std::mem::take(&mut states[k]).split_at_mut(c);
                states[k] = tail;
                head
            });
            parts.push((p_head, g_head, s_heads));
            (p_rest, g_rest) = (p_tail, g_tail);
        }
        install(|| parts.into_par_iter().for_each(|(p, g, s)| run(p, g, s)));
    } else {
        run(ps, gs, states);
    }
    drop((p_guard, g_guard));
    #[cfg(test)]
    FUSED_UPDATES.set(FUSED_UPDATES.get() + 1);
    let out: Vec<Tensor> = bufs
        .into_iter()
        .map(|b| match b {
            Buf::InPlace(t, ..) => t.clone(),
            Buf::New(v) => Tensor::from_vec(v, p.shape()),
        })
        .collect();
    out.try_into().ok()
}

crate::cpu::vmath::multiversion_loop! {
    /// `(ps[i], ss[k][i]) ← f(ps[i], gs[i], ss[..][i])` for every `i` (the slices all have
    /// `ps`' length). Compiled for the baseline target and with AVX2 (see
    /// `multiversion_loop`): the updates' square roots and divisions vectorise 8 lanes
    /// wide, with the same bits in both copies.
    fn update_elements<[const K: usize] T: Copy, F: Fn(T, T, [T; K]) -> (T, [T; K])>(
        ps: &mut [T],
        gs: &[T],
        ss: [&mut [T]; K],
        f: &F
    ) {
        // every slice cut to one length, so the loop's indexing needs no bounds checks
        let n = ps.len();
        let gs = &gs[..n];
        let ss = ss.map(|s| &mut s[..n]);
        for i in 0..n {
            let (p, s) = f(ps[i], gs[i], std::array::from_fn(|k| ss[k][i]));
            ps[i] = p;
            for (k, v) in s.into_iter().enumerate() {
                ss[k][i] = v;
            }
        }
    }
}

/// The coefficients of one Adam/AdamW step of one parameter.
pub(crate) struct AdamStep {
    /// The group's learning rate.
    pub lr: f64,
    /// Weight decay (0 for none).
    pub weight_decay: f64,
    /// AdamW's decoupled decay (`p *= 1 − lr·wd`) rather than L2 (`g += wd·p`).
    pub decoupled: bool,
    /// AMSGrad: divide by the running maximum of the second moment.
    pub amsgrad: bool,
    /// β₁ and β₂.
    pub betas: (f64, f64),
    /// `1 − β₁ᵗ`.
    pub bias1: f64,
    /// `√(1 − β₂ᵗ)`.
    pub bias2_sqrt: f64,
    /// ε.
    pub eps: f64,
}

/// One Adam step of `p` with gradient `g`, moments `m`, `v` and, for AMSGrad, the running
/// maximum `v_max` of `v` (`None` before the first AMSGrad step: it then starts as `v`).
/// `p` is updated in place; returns the new `(m, v, v_max)` (`v_max` is `None` without
/// AMSGrad), or `None` when the tensors do not qualify.
pub(crate) fn adam(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    v_max: Option<&Tensor>,
    s: &AdamStep,
) -> Option<(Tensor, Tensor, Option<Tensor>)> {
    #[cfg(feature = "cuda")]
    if p.is_cuda() {
        // an error here (a failed launch) sends the step to the chain, which reports it
        return cuda_unless_chain_only(|| crate::cuda::optim::adam(p, g, m, v, v_max, s));
    }
    per_float!(p.dtype(), T => {
        let c = |x: f64| T::from_f64(x);
        let (b1, b2) = s.betas;
        let (one_b1, b2, one_b2) = (c(1.0 - b1), c(b2), c(1.0 - b2));
        let (decay, wd) = (c(1.0 - s.lr * s.weight_decay), c(s.weight_decay));
        let (bc2, eps, step) = (c(s.bias2_sqrt), c(s.eps), c(s.lr / s.bias1));
        let (use_wd, decoupled) = (s.weight_decay != 0.0, s.decoupled);
        // the chain's formulas, term for term and in its order
        let moments = move |p: T, g: T, m: T, v: T| {
            let p = if use_wd && decoupled { p * decay } else { p };
            let g = if use_wd && !decoupled { g + p * wd } else { g };
            (p, m + (g - m) * one_b1, v * b2 + g * g * one_b2)
        };
        let apply = move |p: T, m: T, second: T| p - m / (second.sqrt() / bc2 + eps) * step;
        if s.amsgrad {
            let had_max = v_max.is_some();
            let slot = v_max.map_or(Slot::Fill(0.0), Slot::Tensor);
            let [m, v, v_max] = update::<T, 3>(
                p,
                g,
                [Slot::Tensor(m), Slot::Tensor(v), slot],
                move |p, g, [m, v, v_max]| {
                    let (p, m, v) = moments(p, g, m, v);
                    let v_max = if had_max { max_nan(v_max, v) } else { v };
                    (apply(p, m, v_max), [m, v, v_max])
                },
            )?;
            Some((m, v, Some(v_max)))
        } else {
            let [m, v] = update::<T, 2>(p, g, [Slot::Tensor(m), Slot::Tensor(v)], move |p, g, [m, v]| {
                let (p, m, v) = moments(p, g, m, v);
                (apply(p, m, v), [m, v])
            })?;
            Some((m, v, None))
        }
    })
}

/// The coefficients of one SGD step.
pub(crate) struct SgdStep {
    /// The group's learning rate.
    pub lr: f64,
    /// Momentum factor (0: no momentum buffer).
    pub momentum: f64,
    /// Dampening of the momentum.
    pub dampening: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}

/// One SGD step of `p` with gradient `g` and momentum buffer `buf` (`None` before the
/// first step with momentum: the buffer then starts as the gradient, like PyTorch's).
/// `p` is updated in place; returns the new buffer (`None` without momentum), or `None`
/// when the tensors do not qualify.
pub(crate) fn sgd(
    p: &Tensor,
    g: &Tensor,
    buf: Option<&Tensor>,
    s: &SgdStep,
) -> Option<Option<Tensor>> {
    #[cfg(feature = "cuda")]
    if p.is_cuda() {
        return cuda_unless_chain_only(|| crate::cuda::optim::sgd(p, g, buf, s));
    }
    per_float!(p.dtype(), T => {
        let c = |x: f64| T::from_f64(x);
        let (lr, wd, use_wd) = (c(s.lr), c(s.weight_decay), s.weight_decay != 0.0);
        let decayed = move |p: T, g: T| if use_wd { g + p * wd } else { g };
        if s.momentum == 0.0 {
            update::<T, 0>(p, g, [], move |p, g, []| (p - decayed(p, g) * lr, []))?;
            return Some(None);
        }
        let (momentum, one_damp, nesterov) = (c(s.momentum), c(1.0 - s.dampening), s.nesterov);
        let first = buf.is_none();
        let slot = buf.map_or(Slot::Fill(0.0), Slot::Tensor);
        let [buf] = update::<T, 1>(p, g, [slot], move |p, g, [b]| {
            let g = decayed(p, g);
            let b = if first { g } else { b * momentum + g * one_damp };
            let g = if nesterov { g + b * momentum } else { b };
            (p - g * lr, [b])
        })?;
        Some(Some(buf))
    })
}

/// The coefficients of one RMSprop step.
pub(crate) struct RmsPropStep {
    /// The group's learning rate.
    pub lr: f64,
    /// Smoothing constant α.
    pub alpha: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Momentum factor (≤ 0: no momentum buffer).
    pub momentum: f64,
    /// Centered RMSprop (divide by the estimated variance).
    pub centered: bool,
}

/// The state of one RMSprop parameter, as the fused step reads and returns it.
pub(crate) struct RmsPropState<'a> {
    /// Running average of the squared gradient.
    pub square_avg: &'a Tensor,
    /// Running average of the gradient (centered; `None` starts from zeros).
    pub grad_avg: Option<&'a Tensor>,
    /// Momentum buffer (`None` starts from zeros).
    pub buf: Option<&'a Tensor>,
}

/// One RMSprop step of `p` with gradient `g`: `p` is updated in place; returns the new
/// `(square_avg, grad_avg, buf)` (`grad_avg` only when centered, `buf` only with
/// momentum), or `None` when the tensors do not qualify.
pub(crate) fn rmsprop(
    p: &Tensor,
    g: &Tensor,
    st: RmsPropState<'_>,
    s: &RmsPropStep,
) -> Option<(Tensor, Option<Tensor>, Option<Tensor>)> {
    per_float!(p.dtype(), T => {
        let c = |x: f64| T::from_f64(x);
        let (lr, alpha, one_alpha, eps) = (c(s.lr), c(s.alpha), c(1.0 - s.alpha), c(s.eps));
        let (wd, use_wd, momentum) = (c(s.weight_decay), s.weight_decay != 0.0, c(s.momentum));
        let decayed = move |p: T, g: T| if use_wd { g + p * wd } else { g };
        let square = move |sa: T, g: T| sa * alpha + g * g * one_alpha;
        let centered = move |sa: T, ga: T, g: T| {
            let ga = ga + (g - ga) * one_alpha;
            (ga, (sa - ga * ga).sqrt() + eps)
        };
        let with_momentum = move |p: T, b: T, g: T, avg: T| {
            let b = b * momentum + g / avg;
            (p - b * lr, b)
        };
        let sa = Slot::Tensor(st.square_avg);
        let ga = st.grad_avg.map_or(Slot::Fill(0.0), Slot::Tensor);
        let buf = st.buf.map_or(Slot::Fill(0.0), Slot::Tensor);
        match (s.centered, s.momentum > 0.0) {
            (false, false) => {
                let [sa] = update::<T, 1>(p, g, [sa], move |p, g, [sa]| {
                    let g = decayed(p, g);
                    let sa = square(sa, g);
                    (p - g / (sa.sqrt() + eps) * lr, [sa])
                })?;
                Some((sa, None, None))
            }
            (true, false) => {
                let [sa, ga] = update::<T, 2>(p, g, [sa, ga], move |p, g, [sa, ga]| {
                    let g = decayed(p, g);
                    let sa = square(sa, g);
                    let (ga, avg) = centered(sa, ga, g);
                    (p - g / avg * lr, [sa, ga])
                })?;
                Some((sa, Some(ga), None))
            }
            (false, true) => {
                let [sa, b] = update::<T, 2>(p, g, [sa, buf], move |p, g, [sa, b]| {
                    let g = decayed(p, g);
                    let sa = square(sa, g);
                    let (p, b) = with_momentum(p, b, g, sa.sqrt() + eps);
                    (p, [sa, b])
                })?;
                Some((sa, None, Some(b)))
            }
            (true, true) => {
                let [sa, ga, b] = update::<T, 3>(p, g, [sa, ga, buf], move |p, g, [sa, ga, b]| {
                    let g = decayed(p, g);
                    let sa = square(sa, g);
                    let (ga, avg) = centered(sa, ga, g);
                    let (p, b) = with_momentum(p, b, g, avg);
                    (p, [sa, ga, b])
                })?;
                Some((sa, Some(ga), Some(b)))
            }
        }
    })
}

/// One Adagrad step of `p` with gradient `g` and accumulator `sum`, at learning rate
/// `clr` (already decayed): `p` is updated in place; returns the new accumulator, or
/// `None` when the tensors do not qualify.
pub(crate) fn adagrad(
    p: &Tensor,
    g: &Tensor,
    sum: &Tensor,
    clr: f64,
    weight_decay: f64,
    eps: f64,
) -> Option<Tensor> {
    per_float!(p.dtype(), T => {
        let c = |x: f64| T::from_f64(x);
        let (clr, wd, eps, use_wd) = (c(clr), c(weight_decay), c(eps), weight_decay != 0.0);
        let [sum] = update::<T, 1>(p, g, [Slot::Tensor(sum)], move |p, g, [sum]| {
            let g = if use_wd { g + p * wd } else { g };
            let sum = sum + g * g;
            (p - g / (sum.sqrt() + eps) * clr, [sum])
        })?;
        Some(sum)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::no_grad;
    use crate::optim::{Adagrad, Adam, Optimizer, RmsProp, Sgd, StateDict};

    type Build = Box<dyn Fn(Vec<Tensor>) -> Box<dyn Optimizer>>;

    fn fused_updates() -> usize {
        FUSED_UPDATES.get()
    }

    /// Every optimizer/option combination the fused updates cover.
    fn configs() -> Vec<(&'static str, Build)> {
        fn b(f: impl Fn(Vec<Tensor>) -> Box<dyn Optimizer> + 'static) -> Build {
            Box::new(f)
        }
        vec![
            ("adam", b(|p| Box::new(Adam::new(p, 0.01)))),
            (
                "adam l2",
                b(|p| Box::new(Adam::new(p, 0.01).weight_decay(0.1))),
            ),
            (
                "adamw",
                b(|p| Box::new(Adam::adamw(p, 0.01).weight_decay(0.1))),
            ),
            (
                "adam betas eps",
                b(|p| Box::new(Adam::new(p, 0.02).betas(0.8, 0.99).eps(1e-3))),
            ),
            ("amsgrad", b(|p| Box::new(Adam::new(p, 0.01).amsgrad(true)))),
            (
                "amsgrad l2",
                b(|p| Box::new(Adam::new(p, 0.01).weight_decay(0.1).amsgrad(true))),
            ),
            (
                "amsgrad adamw",
                b(|p| Box::new(Adam::adamw(p, 0.01).amsgrad(true))),
            ),
            ("sgd", b(|p| Box::new(Sgd::new(p, 0.05)))),
            (
                "sgd wd",
                b(|p| Box::new(Sgd::new(p, 0.05).weight_decay(0.1))),
            ),
            (
                "sgd momentum",
                b(|p| Box::new(Sgd::new(p, 0.05).momentum(0.9))),
            ),
            (
                "sgd dampening",
                b(|p| Box::new(Sgd::new(p, 0.05).momentum(0.9).dampening(0.3))),
            ),
            (
                "sgd nesterov",
                b(|p| Box::new(Sgd::new(p, 0.05).momentum(0.9).nesterov(true))),
            ),
            (
                "sgd all",
                b(|p| {
                    let o = Sgd::new(p, 0.05).momentum(0.8).dampening(0.1);
                    Box::new(o.nesterov(true).weight_decay(0.1))
                }),
            ),
            ("rmsprop", b(|p| Box::new(RmsProp::new(p, 0.01)))),
            (
                "rmsprop alpha wd",
                b(|p| Box::new(RmsProp::new(p, 0.01).alpha(0.9).weight_decay(0.1))),
            ),
            (
                "rmsprop centered",
                b(|p| Box::new(RmsProp::new(p, 0.01).centered(true))),
            ),
            (
                "rmsprop momentum",
                b(|p| Box::new(RmsProp::new(p, 0.01).momentum(0.5))),
            ),
            (
                "rmsprop centered momentum",
                b(|p| {
                    let o = RmsProp::new(p, 0.01).centered(true).momentum(0.5);
                    Box::new(o.weight_decay(0.1).eps(1e-4))
                }),
            ),
            ("adagrad", b(|p| Box::new(Adagrad::new(p, 0.1)))),
            (
                "adagrad options",
                b(|p| {
                    let o = Adagrad::new(p, 0.1).lr_decay(0.01).weight_decay(0.1);
                    Box::new(o.initial_accumulator_value(0.2).eps(1e-6))
                }),
            ),
        ]
    }

    /// A small matrix and a vector large enough to be split across the CPU pool.
    fn params(dtype: DType) -> Vec<Tensor> {
        let big = crate::cpu::parallel::PAR_THRESHOLD + 7000;
        [vec![3, 5], vec![big]]
            .into_iter()
            .map(|shape: Vec<usize>| {
                let n: usize = shape.iter().product();
                let v: Vec<f64> = (0..n).map(|i| (i * 37 % 101) as f64 / 50.0 - 1.0).collect();
                let t = Tensor::from_vec(v, &shape).to_dtype(dtype);
                t.requires_grad_(true)
            })
            .collect()
    }

    /// The gradient at step `t`: a smooth function of the parameter that changes sign.
    fn set_grads(ps: &[Tensor], t: usize) {
        no_grad(|| {
            for p in ps {
                let g = (p * 3.0 + t as f64).sin() * 0.5 + p * 0.1;
                p.set_grad(Some(g));
            }
        });
    }

    /// Runs `steps` steps of the optimizer `build` makes over `ps`; returns the number of
    /// fused updates done and the state dict (which holds the slot tensors).
    fn train(build: &Build, ps: &[Tensor], steps: usize) -> (usize, StateDict) {
        let mut opt = build(ps.to_vec());
        let before = fused_updates();
        for t in 0..steps {
            set_grads(ps, t);
            opt.step();
        }
        (fused_updates() - before, opt.state_dict())
    }

    /// Distance in units in the last place between two f32 values.
    fn ulps(a: f32, b: f32) -> u32 {
        let key = |x: f32| {
            let i = x.to_bits() as i32;
            if i < 0 {
                i32::MIN - i
            } else {
                i
            }
        };
        key(a).abs_diff(key(b))
    }

    /// Asserts `got` ≈ `want`: within 1e-12 relative in f64, within 4 ulps in f32.
    fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
        assert_eq!(got.dtype(), want.dtype(), "{what}");
        assert_eq!(got.shape(), want.shape(), "{what}");
        let (a, b) = (got.to_f64_vec(), want.to_f64_vec());
        for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
            let ok = match got.dtype() {
                DType::F32 => ulps(x as f32, y as f32) <= 4,
                _ => (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
            };
            assert!(ok, "{what}[{i}]: fused {x:e}, chain {y:e}");
        }
    }

    #[test]
    fn fused_updates_match_the_op_chain() {
        const STEPS: usize = 6;
        for dtype in [DType::F64, DType::F32] {
            for (name, build) in configs() {
                let what = format!("{name} {dtype}");
                let (fused_ps, chain_ps) = (params(dtype), params(dtype));
                let (n_fused, fused_sd) = train(&build, &fused_ps, STEPS);
                CHAIN_ONLY.set(true);
                let (n_chain, chain_sd) = train(&build, &chain_ps, STEPS);
                CHAIN_ONLY.set(false);
                assert_eq!((n_fused, n_chain), (2 * STEPS, 0), "{what}");
                for (i, (f, c)) in fused_ps.iter().zip(&chain_ps).enumerate() {
                    assert_close(&format!("{what} param {i}"), f, c);
                }
                assert_eq!(fused_sd.scalars, chain_sd.scalars, "{what}");
                let names = |sd: &StateDict| -> Vec<String> {
                    sd.tensors.iter().map(|(k, _)| k.clone()).collect()
                };
                let names = (names(&fused_sd), names(&chain_sd));
                assert_eq!(names.0, names.1, "{what}");
                for ((k, f), (_, c)) in fused_sd.tensors.iter().zip(&chain_sd.tensors) {
                    assert_close(&format!("{what} {k}"), f, c);
                }
            }
        }
    }

    #[test]
    fn other_tensors_take_the_op_chain() {
        // a transposed (non-contiguous) parameter: the chain, with the same result as the
        // fused update of a contiguous copy
        let base = Tensor::from_vec((0..15).map(|i| i as f64 / 7.0 - 1.0).collect(), [5, 3]);
        let strided = base.t().detach().requires_grad_(true);
        let contiguous = strided.contiguous().detach().requires_grad_(true);
        assert!(!strided.is_contiguous());
        let build: Build = Box::new(|p| Box::new(Adam::adamw(p, 0.01).amsgrad(true)));
        let (n_strided, _) = train(&build, std::slice::from_ref(&strided), 5);
        let (n_contiguous, _) = train(&build, std::slice::from_ref(&contiguous), 5);
        assert_eq!((n_strided, n_contiguous), (0, 5));
        assert_close("strided", &strided, &contiguous);
        // f16 parameters, and gradients of another dtype than the parameter
        let half = Tensor::ones([4], DType::F16).requires_grad_(true);
        let (n_half, _) = train(&build, &[half], 2);
        let p = Tensor::ones([4], DType::F32).requires_grad_(true);
        let mut opt = Sgd::new(vec![p.clone()], 0.5);
        p.set_grad(Some(Tensor::ones([4], DType::F64)));
        let before = fused_updates();
        opt.step();
        assert_eq!((n_half, fused_updates() - before), (0, 0));
        assert_eq!(p.to_vec::<f32>(), vec![0.5; 4]);
    }

    #[test]
    fn state_is_updated_in_place_only_when_nothing_else_holds_it() {
        let p = Tensor::from_vec(vec![1.0f32, -2.0, 3.0], [3]).requires_grad_(true);
        let mut opt = Adam::new(vec![p.clone()], 0.1);
        let m = |sd: &StateDict| sd.tensor("state.0.exp_avg").cloned().expect("exp_avg");
        set_grads(std::slice::from_ref(&p), 0);
        opt.step();
        // m starts as zeros_like(p) (version 0) and is written in place: version 1
        let version = m(&opt.state_dict()).version();
        assert_eq!(version, 1);
        set_grads(std::slice::from_ref(&p), 1);
        opt.step();
        assert_eq!(m(&opt.state_dict()).version(), 2);
        // a state dict taken now keeps its values: the next step writes a new tensor
        let saved = opt.state_dict();
        let before = m(&saved).to_vec::<f32>();
        set_grads(std::slice::from_ref(&p), 2);
        opt.step();
        let after = m(&opt.state_dict());
        assert_eq!(m(&saved).to_vec::<f32>(), before);
        assert_eq!(m(&saved).version(), 2);
        assert!(!after.shares_storage(&m(&saved)));
        assert_eq!(after.version(), 0);
        assert_ne!(after.to_vec::<f32>(), before);
        // by hand: m₃ = 0.9·m₂ + 0.1·g₂
        let g2 = p.grad().expect("grad").to_vec::<f32>();
        for ((a, b), g) in after.to_vec::<f32>().iter().zip(&before).zip(&g2) {
            assert!((a - (0.9 * b + 0.1 * g)).abs() < 1e-6, "{a} {b} {g}");
        }

        // SGD: the first buffer is a copy of the gradient (a new tensor), then in place
        let p = Tensor::from_vec(vec![1.0f64, 2.0], [2]).requires_grad_(true);
        let mut opt = Sgd::new(vec![p.clone()], 0.1).momentum(0.9);
        let buf = |opt: &Sgd| {
            let sd = opt.state_dict();
            sd.tensor("state.0.momentum_buffer")
                .cloned()
                .expect("buffer")
        };
        let grad = Tensor::from_vec(vec![1.0f64, -1.0], [2]);
        p.set_grad(Some(grad.clone()));
        opt.step();
        let first = buf(&opt);
        assert!(!first.shares_storage(&grad));
        assert_eq!(
            (first.version(), first.to_vec::<f64>()),
            (0, vec![1.0, -1.0])
        );
        drop(first);
        opt.step();
        let second = buf(&opt);
        // b₂ = 0.9·b₁ + g; p = p − 0.1·b₁ − 0.1·b₂
        assert_eq!(
            (second.version(), second.to_vec::<f64>()),
            (1, vec![1.9, -1.9])
        );
        assert_eq!(grad.to_vec::<f64>(), vec![1.0, -1.0]);
        let want = [1.0 - 0.1 - 0.1 * 1.9, 2.0 + 0.1 + 0.1 * 1.9];
        for (got, want) in p.to_vec::<f64>().iter().zip(want) {
            assert!((got - want).abs() < 1e-15, "{got} {want}");
        }
    }

    #[test]
    fn a_step_is_an_in_place_write_that_autograd_detects() {
        let builds: Vec<Build> = vec![
            Box::new(|p| Box::new(Sgd::new(p, 0.1))),
            Box::new(|p| Box::new(Adam::adamw(p, 0.1).amsgrad(true))),
            Box::new(|p| Box::new(RmsProp::new(p, 0.1).momentum(0.9))),
            Box::new(|p| Box::new(Adagrad::new(p, 0.1))),
        ];
        for build in builds {
            let p = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3]).requires_grad_(true);
            let loss = (&p * &p).sum_all(); // saves p
            let mut opt = build(vec![p.clone()]);
            p.set_grad(Some(Tensor::ones([3], ())));
            let (version, before) = (p.version(), fused_updates());
            opt.step();
            assert_eq!(fused_updates() - before, 1);
            assert!(p.version() > version);
            let err = loss.try_backward(None, false, false).unwrap_err();
            assert!(
                err.to_string().contains("modified by an inplace operation"),
                "{err}"
            );
        }
    }
}
