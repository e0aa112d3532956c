//! The fused LSTM cell, forward and backward, over contiguous `f32` or `f64` host buffers.
//!
//! One step of an LSTM from the gate pre-activations `z = x W_ihᵀ + h W_hhᵀ + biases`
//! (`[B, 4H]`, gates `i, f, g, o` in PyTorch's order) and the previous cell state
//! `c` (`[B, H]`):
//!
//! ```text
//! i = σ(z_i)   f = σ(z_f)   g = tanh(z_g)   o = σ(z_o)
//! c' = f ⊙ c + i ⊙ g        h' = o ⊙ tanh(c')
//! ```
//!
//! The forward writes `[h'; c']` as one `[2, B, H]` buffer and keeps the five activations
//! `[i, f, g, o, tanh c']` per row (`[B, 5H]`) for the backward, which from the output
//! gradients `dh'`, `dc'` gives
//!
//! ```text
//! dc  = dc' + dh' ⊙ o ⊙ (1 − tanh² c')      (the total gradient reaching c')
//! dz_i = dc ⊙ g ⊙ i(1 − i)    dz_f = dc ⊙ c ⊙ f(1 − f)
//! dz_g = dc ⊙ i ⊙ (1 − g²)    dz_o = dh' ⊙ tanh c' ⊙ o(1 − o)
//! dc_prev = dc ⊙ f
//! ```
//!
//! This replaces about 15 recorded tensor ops per step (a chunk into four gates, four
//! activations, three products, a sum, a tanh and their backward nodes, each allocating
//! its output). The composed form stays in `nn/rnn.rs` for other dtypes, CUDA tensors and
//! `create_graph`. Every element is computed on its own, so results do not depend on the
//! thread count; rows are split across the pool only for large batches.

use crate::cpu::matmul::Rhs;
use crate::cpu::pool::{written, Uninit};
use crate::cpu::rowwise::{by_dtype, contiguous_data, supports, with_opt, RowFloat};
use crate::dtype::NumElement;
use crate::error::Result;
use crate::storage::BufferElement;
use crate::tensor::Tensor;
use std::mem::MaybeUninit;

/// Elements (`B · H`) from which the forward's rows are split across the pool. Each
/// element costs five scalar `exp`/`tanh` (≈ 50 ns), so from 2048 of them (≈ 100 µs) the
/// hand-off to the pool (a few µs) pays.
const FORWARD_PAR_THRESHOLD: usize = 1 << 11;

/// Elements (`B · H`) from which the backward's rows are split across the pool: about
/// 15 multiply-adds per element, no transcendental functions. At 8192 elements (the
/// benchmark's LSTM) the serial cell backward was 2.9 % of a 2-thread profile, run on
/// the calling thread while the pool waited; split from 4096, it left the profile.
const BACKWARD_PAR_THRESHOLD: usize = 1 << 12;

/// `σ(v) = 1 / (1 + e^−v)`, the formula of the `sigmoid` tensor op, with the vectorisable
/// `exp` of f32 (`cpu::vmath`).
#[inline(always)]
fn sigmoid<T: RowFloat>(v: T) -> T {
    T::one() / (T::one() + (-v).exp_v())
}

/// `tanh(v)`, vectorisable for f32 (`cpu::vmath`).
#[inline(always)]
fn tanh<T: RowFloat>(v: T) -> T {
    v.tanh_v()
}

/// Output of [`cell_forward`].
pub(crate) struct CellOut<T> {
    /// `[h'; c']`, `[2, B, H]`.
    pub(crate) hc: Vec<T>,
    /// `[i, f, g, o, tanh c']` of every row, `[B, 5H]`.
    pub(crate) act: Vec<T>,
}

/// One batch row of the forward's outputs: `(h' row, (c' row, activations row))`.
type ForwardRow<'a, T> = (
    &'a mut [MaybeUninit<T>],
    (&'a mut [MaybeUninit<T>], &'a mut [MaybeUninit<T>]),
);

/// The forward of one LSTM step: `z` is `[B, 4H]`, `c` is `[B, H]`, both contiguous.
pub(crate) fn cell_forward<T: RowFloat>(z: &[T], c: &[T], hidden: usize) -> CellOut<T> {
    let bh = c.len();
    let (mut hc, mut act) = (Uninit::new(2 * bh), Uninit::new(5 * bh));
    let (hs, cs) = hc.all().split_at_mut(bh);
    let parallel = c.len() >= FORWARD_PAR_THRESHOLD;
    cell_forward_into(z, c, hidden, hs, cs, act.all(), parallel);
    // SAFETY: the cell wrote every element of both buffers.
    unsafe {
        CellOut {
            hc: hc.assume_init(),
            act: act.assume_init(),
        }
    }
}

/// [`cell_forward`] into given buffers, every element of which it writes: `h_out` and
/// `c_out` (`[B, H]`) and `act_out` (`[B, 5H]`); rows split across the pool when
/// `parallel`.
fn cell_forward_into<T: RowFloat>(
    z: &[T],
    c: &[T],
    hidden: usize,
    h_out: &mut [MaybeUninit<T>],
    c_out: &mut [MaybeUninit<T>],
    act_out: &mut [MaybeUninit<T>],
    parallel: bool,
) {
    let h = hidden;
    let bh = c.len();
    debug_assert_eq!(z.len(), 4 * bh);
    debug_assert!(h_out.len() == bh && c_out.len() == bh && act_out.len() == 5 * bh);
    if bh == 0 {
        return;
    }
    // one task a batch row: its h' and c' rows and its activations
    let rows: Vec<ForwardRow<'_, T>> = h_out
        .chunks_mut(h)
        .zip(c_out.chunks_mut(h).zip(act_out.chunks_mut(5 * h)))
        .collect();
    run_all(rows, parallel, |r, (h_row, (c_row, a_row))| {
        let z = &z[r * 4 * h..(r + 1) * 4 * h];
        forward_row(z, &c[r * h..(r + 1) * h], h_row, c_row, a_row)
    });
}

crate::cpu::vmath::multiversion_loop! {
    /// One batch row of [`cell_forward`]: `z` is the row's `4H` gate pre-activations,
    /// `c` its cell state; writes `h'`, `c'` and the activations `[i, f, g, o, tanh c']`.
    fn forward_row<T: RowFloat>(
        z: &[T],
        c: &[T],
        h_row: &mut [MaybeUninit<T>],
        c_row: &mut [MaybeUninit<T>],
        a_row: &mut [MaybeUninit<T>]
    ) {
        let h = c.len();
        let (zi, rest) = z.split_at(h);
        let (zf, rest) = rest.split_at(h);
        let (zg, zo) = rest.split_at(h);
        let (ai, rest) = a_row.split_at_mut(h);
        let (af, rest) = rest.split_at_mut(h);
        let (ag, rest) = rest.split_at_mut(h);
        let (ao, at) = rest.split_at_mut(h);
        // equal lengths up front, so the loop below runs without bounds checks
        let (zo, at, h_row, c_row) = (&zo[..h], &mut at[..h], &mut h_row[..h], &mut c_row[..h]);
        let (zi, zf, zg) = (&zi[..h], &zf[..h], &zg[..h]);
        let (ai, af, ag, ao) = (&mut ai[..h], &mut af[..h], &mut ag[..h], &mut ao[..h]);
        for j in 0..h {
            let i = sigmoid(zi[j]);
            let f = sigmoid(zf[j]);
            let g = tanh(zg[j]);
            let o = sigmoid(zo[j]);
            let c2 = f * c[j] + i * g;
            let t = tanh(c2);
            ai[j].write(i);
            af[j].write(f);
            ag[j].write(g);
            ao[j].write(o);
            at[j].write(t);
            c_row[j].write(c2);
            h_row[j].write(o * t);
        }
    }
}

/// The backward of one LSTM step from the saved activations `act` (`[B, 5H]`), the
/// previous cell state `c` (`[B, H]`) and the output gradient `g = [dh'; dc']`
/// (`[2, B, H]`). Returns `(dz [B, 4H], dc_prev [B, H])`.
pub(crate) fn cell_backward<T: RowFloat>(
    act: &[T],
    c: &[T],
    g: &[T],
    hidden: usize,
) -> (Vec<T>, Vec<T>) {
    let bh = c.len();
    debug_assert_eq!(g.len(), 2 * bh);
    let (mut dz, mut dc_prev) = (Uninit::new(4 * bh), Uninit::new(bh));
    let (dh, dc) = g.split_at(bh);
    let parallel = bh >= BACKWARD_PAR_THRESHOLD;
    cell_backward_into(act, c, dh, dc, hidden, dz.all(), dc_prev.all(), parallel);
    // SAFETY: the cell wrote every element of both buffers.
    unsafe { (dz.assume_init(), dc_prev.assume_init()) }
}

/// [`cell_backward`] from the output gradients `dh_all`, `dc_all` (`[B, H]` each) into
/// given buffers `dz` (`[B, 4H]`) and `dc_prev` (`[B, H]`), every element of which it
/// writes; rows split across the pool when `parallel`.
#[allow(clippy::too_many_arguments)]
fn cell_backward_into<T: RowFloat>(
    act: &[T],
    c: &[T],
    dh_all: &[T],
    dc_all: &[T],
    hidden: usize,
    dz: &mut [MaybeUninit<T>],
    dc_prev: &mut [MaybeUninit<T>],
    parallel: bool,
) {
    let h = hidden;
    let bh = c.len();
    debug_assert_eq!(act.len(), 5 * bh);
    debug_assert!(dh_all.len() == bh && dc_all.len() == bh);
    debug_assert!(dz.len() == 4 * bh && dc_prev.len() == bh);
    if bh == 0 {
        return;
    }
    type Row<'a, T> = (&'a mut [MaybeUninit<T>], &'a mut [MaybeUninit<T>]);
    let rows: Vec<Row<'_, T>> = dz.chunks_mut(4 * h).zip(dc_prev.chunks_mut(h)).collect();
    run_all(rows, parallel, |r, (dz, dcp)| {
        let a = &act[r * 5 * h..(r + 1) * 5 * h];
        let rows = r * h..(r + 1) * h;
        let (c, dh, dc) = (&c[rows.clone()], &dh_all[rows.clone()], &dc_all[rows]);
        backward_row(a, c, dh, dc, dz, dcp)
    });
}

crate::cpu::vmath::multiversion_loop! {
    /// One batch row of [`cell_backward_into`]: from the row's saved activations `a`
    /// (`[i, f, g, o, tanh c']`, `5H`), previous cell state `c` and output gradients `dh`,
    /// `dc`, writes the gate gradients `dz` (`4H`) and `dc_prev` (`H`).
    fn backward_row<T: RowFloat>(
        a: &[T],
        c: &[T],
        dh: &[T],
        dc: &[T],
        dz: &mut [MaybeUninit<T>],
        dc_prev: &mut [MaybeUninit<T>]
    ) {
        let h = c.len();
        let (ai, rest) = a.split_at(h);
        let (af, rest) = rest.split_at(h);
        let (ag, rest) = rest.split_at(h);
        let (ao, at) = rest.split_at(h);
        let (dzi, rest) = dz.split_at_mut(h);
        let (dzf, rest) = rest.split_at_mut(h);
        let (dzg, dzo) = rest.split_at_mut(h);
        // equal lengths up front, so the loop below runs without bounds checks
        let (at, dh, dc, dc_prev) = (&at[..h], &dh[..h], &dc[..h], &mut dc_prev[..h]);
        let (ai, af, ag, ao) = (&ai[..h], &af[..h], &ag[..h], &ao[..h]);
        let (dzi, dzf, dzg, dzo) = (&mut dzi[..h], &mut dzf[..h], &mut dzg[..h], &mut dzo[..h]);
        let one = T::one();
        for j in 0..h {
            let (i, f, gg, o, t) = (ai[j], af[j], ag[j], ao[j], at[j]);
            let dct = dc[j] + dh[j] * o * (one - t * t);
            dzi[j].write(dct * gg * (i * (one - i)));
            dzf[j].write(dct * c[j] * (f * (one - f)));
            dzg[j].write(dct * i * (one - gg * gg));
            dzo[j].write(dh[j] * t * (o * (one - o)));
            dc_prev[j].write(dct * f);
        }
    }
}

/// `f(i, item)` for every item, in order: across the pool when `parallel`, there is
/// more than one item and the pool has more than one thread, else on this thread.
fn run_all<P: Send, R: Send>(
    items: Vec<P>,
    parallel: bool,
    f: impl Fn(usize, P) -> R + Send + Sync,
) -> Vec<R> {
    if parallel && items.len() > 1 && crate::cpu::parallel::num_threads() > 1 {
        use rayon::prelude::*;
        crate::cpu::parallel::install(|| {
            items
                .into_par_iter()
                .enumerate()
                .map(|(i, item)| f(i, item))
                .collect()
        })
    } else {
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| f(i, item))
            .collect()
    }
}

// --------------------------------------------------------------------- a whole layer

/// The sizes of one LSTM layer run by [`layer_forward`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    /// Time steps `T` (at least one).
    pub(crate) steps: usize,
    /// Batch `B`.
    pub(crate) batch: usize,
    /// Hidden size `H`.
    pub(crate) hidden: usize,
}

/// What [`layer_forward`] returns and keeps for [`layer_backward`].
pub(crate) struct LayerOut<T> {
    /// `[h_1, …, h_T, c_T]`, `[T + 1, B, H]`: the outputs, then the last cell state.
    pub(crate) y: Vec<T>,
    /// The recurrent product's inputs `h_{t−1} ⊙ mask` (`h_0` the initial state),
    /// `[T, B, H]`.
    pub(crate) hin: Vec<T>,
    /// The cell states `c_1 … c_T`, `[T, B, H]`.
    pub(crate) cs: Vec<T>,
    /// The activations `[i, f, g, o, tanh c_t]` of every step and row, `[T, B, 5H]`.
    pub(crate) act: Vec<T>,
}

/// Batch rows from which a layer's rows are split into parts for separate threads (a
/// part below this runs its recurrent products through `gemm`'s narrow tiles).
const MIN_PART_ROWS: usize = 8;

/// The bounds `[0, r1, …, B]` of the parts a layer's batch rows are split into, one a
/// thread ([`layer_forward`], [`layer_backward`]). Each batch row's recurrence is
/// independent of the other rows', so a part runs all `T` steps without meeting the
/// other parts: one hand-off to the pool a layer, where splitting each step's product
/// and cell across the pool cost two hand-offs a step and left the per-step copies on
/// the calling thread. One part when the layer is small or the pool has one thread.
fn row_parts(d: Dims) -> Vec<usize> {
    let threads = crate::cpu::parallel::num_threads();
    let work = d.steps * d.batch * 4 * d.hidden * d.hidden;
    let parts = if threads > 1 && work >= crate::cpu::matmul::GEMM_PAR_THRESHOLD {
        threads.min(d.batch / MIN_PART_ROWS).max(1)
    } else {
        1
    };
    let len = d.batch.div_ceil(parts).max(1);
    let parts = d.batch.div_ceil(len).max(1);
    (0..=parts).map(|p| (p * len).min(d.batch)).collect()
}

/// `buf`, `blocks` blocks of `B` rows of `row` elements (one block a step), split by the
/// batch parts `bounds` ([`row_parts`]): for each part, its rows of every block in order.
fn per_part<'a, E>(
    buf: &'a mut [E],
    blocks: usize,
    row: usize,
    bounds: &[usize],
) -> Vec<Vec<&'a mut [E]>> {
    let block = bounds[bounds.len() - 1] * row;
    debug_assert_eq!(buf.len(), blocks * block);
    let mut parts: Vec<Vec<&'a mut [E]>> = bounds[1..].iter().map(|_| Vec::new()).collect();
    let mut rest = buf;
    for _ in 0..blocks {
        for (part, w) in parts.iter_mut().zip(bounds.windows(2)) {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut((w[1] - w[0]) * row);
            part.push(head);
            rest = tail;
        }
    }
    parts
}

/// A whole LSTM layer over `T` steps, from the input projections `gi` (`[T, B, 4H]`,
/// `x_t W_ihᵀ` plus both biases), the recurrent weight `w_hh` (`[4H, H]`), the initial
/// state `h0`, `c0` (`[B, H]`) and an optional variational mask on the recurrent input
/// (`[B, H]`, applied as `h_{t−1} ⊙ mask`). Every step is
/// `z_t = gi_t + (h_{t−1} ⊙ mask) W_hhᵀ` followed by [`cell_forward`]'s cell.
///
/// One call replaces the per-step tensor ops (a product, a sum and a cell node a step) and
/// lets [`layer_backward`] form the weight gradient in one product over all steps. The
/// batch rows are split across the pool for the whole layer ([`row_parts`]); every row is
/// computed the same way in any part, so results do not depend on the thread count.
pub(crate) fn layer_forward<T: RowFloat + NumElement>(
    gi: &[T],
    w_hh: &[T],
    h0: &[T],
    c0: &[T],
    mask: Option<&[T]>,
    d: Dims,
) -> LayerOut<T> {
    let (b, h, steps) = (d.batch, d.hidden, d.steps);
    let (bh, g4) = (b * h, 4 * h);
    debug_assert!(gi.len() == steps * b * g4 && w_hh.len() == g4 * h);
    debug_assert!(h0.len() == bh && c0.len() == bh);
    // written step by step before they are read: no zero fill
    let (mut y, mut hin, mut cs, mut act) = (
        Uninit::new((steps + 1) * bh),
        Uninit::new(steps * bh),
        Uninit::new(steps * bh),
        Uninit::new(steps * 5 * bh),
    );
    let bounds = row_parts(d);
    // W_hhᵀ ([H, 4H]) as a strided view of W_hh: packed once for all steps and parts
    // where `sgemm` runs the products (an explicit transpose first was a scatter of 4H·H
    // elements on the calling thread)
    let w_t = Rhs::new(h, g4, w_hh, (1, h)).pack_for(b);
    let parts: Vec<_> = per_part(y.all(), steps + 1, h, &bounds)
        .into_iter()
        .zip(per_part(hin.all(), steps, h, &bounds))
        .zip(per_part(cs.all(), steps, h, &bounds))
        .zip(per_part(act.all(), steps, 5 * h, &bounds))
        .zip(bounds.windows(2))
        .map(|((((y, hin), cs), act), w)| ForwardPart {
            rows: (w[0], w[1]),
            y,
            hin,
            cs,
            act,
        })
        .collect();
    let inputs = ForwardInputs {
        gi,
        w_t: &w_t,
        h0,
        c0,
        mask,
        d,
    };
    run_all(parts, true, |_, part| forward_part(&inputs, part));
    // SAFETY: every part wrote its rows of every `h_t`, `hin_t`, `c_t`, activation and
    // `c_T` (`forward_part`), and the parts cover the batch.
    unsafe {
        LayerOut {
            y: y.assume_init(),
            hin: hin.assume_init(),
            cs: cs.assume_init(),
            act: act.assume_init(),
        }
    }
}

/// What every part of [`layer_forward`] reads.
struct ForwardInputs<'a, T> {
    gi: &'a [T],
    w_t: &'a Rhs<'a, T>,
    h0: &'a [T],
    c0: &'a [T],
    mask: Option<&'a [T]>,
    d: Dims,
}

/// One part's rows `r0..r1` of [`LayerOut`]'s buffers, one slice a step ([`per_part`]):
/// `y` has `T + 1` of them, the others `T`.
struct ForwardPart<'a, T> {
    rows: (usize, usize),
    y: Vec<&'a mut [MaybeUninit<T>]>,
    hin: Vec<&'a mut [MaybeUninit<T>]>,
    cs: Vec<&'a mut [MaybeUninit<T>]>,
    act: Vec<&'a mut [MaybeUninit<T>]>,
}

/// All `T` steps of [`layer_forward`] for the batch rows of `p`, on this thread; writes
/// every element of `p`'s slices.
fn forward_part<T: RowFloat + NumElement>(inp: &ForwardInputs<'_, T>, p: ForwardPart<'_, T>) {
    let (h, g4, b) = (inp.d.hidden, 4 * inp.d.hidden, inp.d.batch);
    let (r0, r1) = p.rows;
    let (m, rows) = (r1 - r0, r0 * h..r1 * h);
    let ForwardPart {
        mut y,
        mut hin,
        mut cs,
        mut act,
        ..
    } = p;
    let mut z = crate::cpu::pool::take::<T>(m * g4);
    for t in 0..inp.d.steps {
        let (h_done, h_rest) = y.split_at_mut(t);
        // SAFETY: step `t − 1` wrote `h_{t−1}` (`cell_forward_into` below).
        let h_prev = match h_done.last() {
            None => &inp.h0[rows.clone()],
            Some(prev) => unsafe { written(prev) },
        };
        let hin_t = &mut *hin[t];
        match inp.mask {
            Some(mk) => {
                for ((d, &x), &mk) in hin_t.iter_mut().zip(h_prev).zip(&mk[rows.clone()]) {
                    d.write(x * mk);
                }
            }
            None => {
                for (d, &x) in hin_t.iter_mut().zip(h_prev) {
                    d.write(x);
                }
            }
        }
        // SAFETY: written just above.
        let hin_t = unsafe { written(hin_t) };
        z.clear();
        z.extend_from_slice(&inp.gi[(t * b + r0) * g4..(t * b + r1) * g4]);
        inp.w_t.product(false, m, &mut z, true, hin_t, (h, 1));
        let (c_done, c_rest) = cs.split_at_mut(t);
        // SAFETY: step `t − 1` wrote `c_{t−1}`.
        let c_prev = match c_done.last() {
            None => &inp.c0[rows.clone()],
            Some(prev) => unsafe { written(prev) },
        };
        cell_forward_into(&z, c_prev, h, h_rest[0], c_rest[0], act[t], false);
    }
    if let (Some(c_last), Some(y_last)) = (cs.last(), y.last_mut()) {
        for (d, c) in y_last.iter_mut().zip(c_last.iter()) {
            // SAFETY: the last step wrote the last cell state.
            d.write(unsafe { c.assume_init() });
        }
    }
}

/// Gradients of [`layer_forward`]: `(dgi [T, B, 4H], dh0 [B, H], dc0 [B, H], dz_all)`
/// from its saved cell states `cs` and activations `act` ([`LayerOut`]) and the
/// gradient `g` of `y` (`[T + 1, B, H]`). `dz_all` is
/// `dgi` itself (the gate pre-activations' gradient); the weight gradient is
/// `dz_allᵀ · hin` (`[4H, T·B] · [T·B, H]`), one product the caller forms.
///
/// Backpropagation through time: from the last step down, the step's `dh` is its output
/// gradient plus what step `t + 1` sent back through `W_hh`, the cell backward gives
/// `dz_t` and the gradient reaching `c_{t−1}`, and `dh_{t−1} = (dz_t W_hh) ⊙ mask`. The
/// batch rows are split across the pool for the whole layer, as in the forward.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_backward<T: RowFloat + NumElement>(
    cs: &[T],
    act: &[T],
    w_hh: &[T],
    c0: &[T],
    mask: Option<&[T]>,
    g: &[T],
    d: Dims,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (b, h, steps) = (d.batch, d.hidden, d.steps);
    let (bh, g4) = (b * h, 4 * h);
    debug_assert_eq!(g.len(), (steps + 1) * bh);
    // every part writes its rows of every step's block of `dz_all`: no zero fill
    let mut dz_all = Uninit::new(steps * b * g4);
    let bounds = row_parts(d);
    let w_hh = Rhs::new(g4, h, w_hh, (h, 1)).pack_for(b);
    let inputs = BackwardInputs {
        cs,
        act,
        w_hh: &w_hh,
        c0,
        mask,
        g,
        d,
    };
    let parts: Vec<_> = per_part(dz_all.all(), steps, g4, &bounds)
        .into_iter()
        .zip(bounds.windows(2))
        .map(|(dz, w)| ((w[0], w[1]), dz))
        .collect();
    let carries = run_all(parts, true, |_, (rows, dz)| {
        backward_part(&inputs, rows, dz)
    });
    let (mut dh0, mut dc0) = (Vec::with_capacity(bh), Vec::with_capacity(bh));
    for (dh, dc) in carries {
        dh0.extend_from_slice(&dh);
        dc0.extend_from_slice(&dc);
    }
    // SAFETY: the parts wrote their rows of every block of `dz_all` and cover the batch.
    (unsafe { dz_all.assume_init() }, dh0, dc0)
}

/// What every part of [`layer_backward`] reads.
struct BackwardInputs<'a, T> {
    cs: &'a [T],
    act: &'a [T],
    w_hh: &'a Rhs<'a, T>,
    c0: &'a [T],
    mask: Option<&'a [T]>,
    g: &'a [T],
    d: Dims,
}

/// All `T` steps of [`layer_backward`] for the batch rows `r0..r1`, on this thread: writes
/// every element of `dz` (the rows' block of each step) and returns the rows of
/// `(dh0, dc0)`.
fn backward_part<T: RowFloat + NumElement>(
    inp: &BackwardInputs<'_, T>,
    (r0, r1): (usize, usize),
    mut dz: Vec<&mut [MaybeUninit<T>]>,
) -> (Vec<T>, Vec<T>) {
    let (h, g4, b, steps) = (inp.d.hidden, 4 * inp.d.hidden, inp.d.batch, inp.d.steps);
    let m = r1 - r0;
    // the rows of step `t`'s `[B, H]` block
    let at = |t: usize| (t * b + r0) * h..(t * b + r1) * h;
    let pool = crate::cpu::pool::zeros::<T>;
    let (mut dh, mut dh_carry, mut dcp) = (pool(m * h), pool(m * h), pool(m * h));
    let mut dc_carry = pool(m * h);
    dc_carry.copy_from_slice(&inp.g[at(steps)]);
    for t in (0..steps).rev() {
        for ((d, &x), &y) in dh.iter_mut().zip(&inp.g[at(t)]).zip(&dh_carry) {
            *d = x + y;
        }
        let c_prev = if t == 0 {
            &inp.c0[r0 * h..r1 * h]
        } else {
            &inp.cs[at(t - 1)]
        };
        let act_t = &inp.act[(t * b + r0) * 5 * h..(t * b + r1) * 5 * h];
        // SAFETY: `cell_backward_into` writes only values into `dcp`.
        let dcp_out = unsafe { crate::cpu::pool::for_writing(&mut dcp) };
        let dz_t = &mut *dz[t];
        cell_backward_into(act_t, c_prev, &dh, &dc_carry, h, dz_t, dcp_out, false);
        std::mem::swap(&mut dc_carry, &mut dcp);
        // SAFETY: the cell backward just wrote every element of `dz_t`.
        let dz_t = unsafe { written(dz_t) };
        inp.w_hh
            .product(false, m, &mut dh_carry, false, dz_t, (g4, 1));
        if let Some(mk) = inp.mask {
            for (d, &mk) in dh_carry.iter_mut().zip(&mk[r0 * h..r1 * h]) {
                *d = *d * mk;
            }
        }
    }
    (dh_carry, dc_carry)
}

// ----------------------------------------------------------------------- tensor glue

/// True when the fused cell takes these operands: `f32` or `f64` host tensors of one
/// dtype, `z` of shape `[B, 4H]` and `c` of shape `[B, H]`.
pub(crate) fn cell_supports(z: &Tensor, c: &Tensor) -> bool {
    supports(z)
        && supports(c)
        && z.dtype() == c.dtype()
        && z.ndim() == 2
        && c.ndim() == 2
        && z.size(0) == c.size(0)
        && z.size(1) == 4 * c.size(1)
}

/// One fused LSTM step on tensors accepted by [`cell_supports`]: returns `[h'; c']`
/// (`[2, B, H]`) and the saved activations (`[B, 5H]`). Records nothing.
pub(crate) fn lstm_cell(op: &'static str, z: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
    let (b, h) = (c.size(0), c.size(1));
    by_dtype!(op, z, T => {
        let out = contiguous_data::<T, _>(op, z, |zs| {
            contiguous_data::<T, _>(op, c, |cs| cell_forward(zs, cs, h))
        })??;
        Ok((
            Tensor::from_buffer(T::into_buffer(out.hc), &[2, b, h]),
            Tensor::from_buffer(T::into_buffer(out.act), &[b, 5 * h]),
        ))
    })
}

/// The gradients `(dz [B, 4H], dc_prev [B, H])` of [`lstm_cell`] from its saved
/// activations, the previous cell state `c` and the output gradient `g` (`[2, B, H]`).
/// Records nothing.
pub(crate) fn lstm_cell_backward(
    op: &'static str,
    act: &Tensor,
    c: &Tensor,
    g: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (b, h) = (c.size(0), c.size(1));
    let g = g.to_dtype_raw(c.dtype())?;
    by_dtype!(op, c, T => {
        let (dz, dc) = contiguous_data::<T, _>(op, act, |a| {
            contiguous_data::<T, _>(op, c, |cs| {
                contiguous_data::<T, _>(op, &g, |gs| cell_backward(a, cs, gs, h))
            })
        })???;
        Ok((
            Tensor::from_buffer(T::into_buffer(dz), &[b, 4 * h]),
            Tensor::from_buffer(T::into_buffer(dc), &[b, h]),
        ))
    })
}

/// True when [`lstm_layer`] takes these operands: `f32` or `f64` host tensors of one
/// dtype, `gi` of shape `[T, B, 4H]` with `T ≥ 1`, `w_hh` `[4H, H]`, and `h0`, `c0` and
/// the mask `[B, H]`.
pub(crate) fn layer_supports(
    gi: &Tensor,
    w_hh: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
    mask: Option<&Tensor>,
) -> bool {
    if gi.ndim() != 3 || gi.size(0) == 0 || w_hh.ndim() != 2 {
        return false;
    }
    let (b, h) = (gi.size(1), w_hh.size(1));
    let state = |t: &Tensor| supports(t) && t.dtype() == gi.dtype() && t.shape() == [b, h];
    supports(gi)
        && supports(w_hh)
        && w_hh.dtype() == gi.dtype()
        && w_hh.size(0) == 4 * h
        && gi.size(2) == 4 * h
        && state(h0)
        && state(c0)
        && mask.is_none_or(state)
}

/// What the backward of [`lstm_layer`] reads besides the inputs: plain tensors without
/// autograd history.
#[derive(Clone)]
pub(crate) struct LayerSaved {
    /// [`LayerOut::hin`], `[T·B, H]`.
    pub(crate) hin: Tensor,
    /// [`LayerOut::cs`], `[T, B, H]`.
    pub(crate) cs: Tensor,
    /// [`LayerOut::act`], `[T, B, 5H]`.
    pub(crate) act: Tensor,
}

/// One fused LSTM layer ([`layer_forward`]) on tensors accepted by [`layer_supports`]:
/// returns `y = [h_1, …, h_T, c_T]` (`[T + 1, B, H]`) and what the backward needs.
/// Records nothing.
pub(crate) fn lstm_layer(
    op: &'static str,
    gi: &Tensor,
    w_hh: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
    mask: Option<&Tensor>,
) -> Result<(Tensor, LayerSaved)> {
    let d = Dims {
        steps: gi.size(0),
        batch: gi.size(1),
        hidden: w_hh.size(1),
    };
    let bh = [d.batch, d.hidden];
    by_dtype!(op, gi, T => {
        let out = contiguous_data::<T, _>(op, gi, |gi| {
            contiguous_data::<T, _>(op, w_hh, |w| {
                contiguous_data::<T, _>(op, h0, |h0| {
                    contiguous_data::<T, _>(op, c0, |c0| {
                        with_opt::<T, _>(op, mask, |m| layer_forward(gi, w, h0, c0, m, d))
                    })
                })
            })
        })?????;
        let buf = |v: Vec<T>, shape: &[usize]| Tensor::from_buffer(T::into_buffer(v), shape);
        Ok((
            buf(out.y, &[d.steps + 1, bh[0], bh[1]]),
            LayerSaved {
                hin: buf(out.hin, &[d.steps * bh[0], bh[1]]),
                cs: buf(out.cs, &[d.steps, bh[0], bh[1]]),
                act: buf(out.act, &[d.steps, bh[0], 5 * bh[1]]),
            },
        ))
    })
}

/// The gradients `(dgi [T, B, 4H], dw_hh [4H, H], dh0 [B, H], dc0 [B, H])` of
/// [`lstm_layer`] from what it saved, its inputs `w_hh`, `c0`, `mask` and the gradient `g`
/// of `y` (`[T + 1, B, H]`). The weight gradient is one product over all steps,
/// `dgiᵀ · hin`, through the threaded matmul. Records nothing.
pub(crate) fn lstm_layer_backward(
    op: &'static str,
    saved: &LayerSaved,
    w_hh: &Tensor,
    c0: &Tensor,
    mask: Option<&Tensor>,
    g: &Tensor,
) -> Result<[Tensor; 4]> {
    let (steps, batch, hidden) = (saved.cs.size(0), saved.cs.size(1), saved.cs.size(2));
    let d = Dims {
        steps,
        batch,
        hidden,
    };
    let g = g.to_dtype_raw(c0.dtype())?;
    by_dtype!(op, c0, T => {
        let (dz, dh0, dc0) = contiguous_data::<T, _>(op, &saved.cs, |cs| {
            contiguous_data::<T, _>(op, &saved.act, |act| {
                contiguous_data::<T, _>(op, w_hh, |w| {
                    contiguous_data::<T, _>(op, c0, |c0| {
                        contiguous_data::<T, _>(op, &g, |g| {
                            with_opt::<T, _>(op, mask, |m| {
                                layer_backward(cs, act, w, c0, m, g, d)
                            })
                        })
                    })
                })
            })
        })??????;
        let buf = |v: Vec<T>, shape: &[usize]| Tensor::from_buffer(T::into_buffer(v), shape);
        let dz = buf(dz, &[steps * batch, 4 * hidden]);
        let dw = dz.try_transpose(0, 1)?.try_matmul(&saved.hin)?;
        Ok([
            dz.try_reshape([steps, batch, 4 * hidden])?,
            dw,
            buf(dh0, &[batch, hidden]),
            buf(dc0, &[batch, hidden]),
        ])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One cell step in f64, written out per element.
    fn reference(z: &[f64], c: &[f64], h: usize) -> (Vec<f64>, Vec<f64>) {
        let s = |v: f64| 1.0 / (1.0 + (-v).exp());
        let (mut hs, mut cs) = (vec![], vec![]);
        for (r, c) in c.chunks(h).enumerate() {
            let z = &z[r * 4 * h..(r + 1) * 4 * h];
            for j in 0..h {
                let c2 = s(z[h + j]) * c[j] + s(z[j]) * z[2 * h + j].tanh();
                cs.push(c2);
                hs.push(s(z[3 * h + j]) * c2.tanh());
            }
        }
        (hs, cs)
    }

    fn inputs(b: usize, h: usize) -> (Vec<f64>, Vec<f64>) {
        let z = (0..b * 4 * h)
            .map(|i| 3.0 * ((i * 7919 % 97) as f64 / 48.0 - 1.0))
            .collect();
        let c = (0..b * h)
            .map(|i| (i * 31 % 17) as f64 / 8.0 - 1.0)
            .collect();
        (z, c)
    }

    #[test]
    fn forward_matches_the_formula() {
        let (b, h) = (3, 5);
        let (z, c) = inputs(b, h);
        let out = cell_forward(&z, &c, h);
        let (hs, cs) = reference(&z, &c, h);
        assert_eq!(out.hc.len(), 2 * b * h);
        for k in 0..b * h {
            assert!((out.hc[k] - hs[k]).abs() < 1e-15, "h[{k}]");
            assert!((out.hc[b * h + k] - cs[k]).abs() < 1e-15, "c[{k}]");
            // the saved tanh c' and the gates
            assert!((out.act[(k / h) * 5 * h + 4 * h + k % h] - cs[k].tanh()).abs() < 1e-15);
        }
        // one hand-checked element: z = 0 everywhere, c = 1 → c' = ½, h' = ½ tanh ½
        let out = cell_forward(&[0.0f32; 4], &[1.0], 1);
        assert_eq!(out.hc[1], 0.5);
        assert!((out.hc[0] - 0.5 * 0.5f32.tanh()).abs() < 1e-7);
        assert_eq!(out.act[..4], [0.5, 0.5, 0.0, 0.5]);
        // f32 tanh is the vectorisable `cpu::vmath` form: within 2 ulp of the library's
        assert!((out.act[4] - 0.5f32.tanh()).abs() <= 2.0 * f32::EPSILON * 0.5);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (b, h) = (3, 5);
        let (z, c) = inputs(b, h);
        let g: Vec<f64> = (0..2 * b * h)
            .map(|i| ((i * 13 % 11) as f64) / 5.0 - 1.0)
            .collect();
        let loss = |z: &[f64], c: &[f64]| -> f64 {
            let hc = cell_forward(z, c, h).hc;
            hc.iter().zip(&g).map(|(a, b)| a * b).sum()
        };
        let out = cell_forward(&z, &c, h);
        let (dz, dc) = cell_backward(&out.act, &c, &g, h);
        let eps = 1e-6;
        for i in 0..z.len() {
            let (mut p, mut m) = (z.clone(), z.clone());
            p[i] += eps;
            m[i] -= eps;
            let fd = (loss(&p, &c) - loss(&m, &c)) / (2.0 * eps);
            assert!((dz[i] - fd).abs() < 1e-8, "dz[{i}]: {} vs {fd}", dz[i]);
        }
        for i in 0..c.len() {
            let (mut p, mut m) = (c.clone(), c.clone());
            p[i] += eps;
            m[i] -= eps;
            let fd = (loss(&z, &p) - loss(&z, &m)) / (2.0 * eps);
            assert!((dc[i] - fd).abs() < 1e-8, "dc[{i}]: {} vs {fd}", dc[i]);
        }
    }

    #[test]
    fn a_layer_with_an_empty_batch_or_hidden_size() {
        for (b, h) in [(0, 3), (2, 0), (0, 0)] {
            let d = Dims {
                steps: 3,
                batch: b,
                hidden: h,
            };
            let gi = vec![0.5f32; 3 * b * 4 * h];
            let (w, s0) = (vec![0.25f32; 4 * h * h], vec![0.1f32; b * h]);
            let out = layer_forward(&gi, &w, &s0, &s0, None, d);
            assert_eq!((out.y.len(), out.act.len()), (4 * b * h, 15 * b * h));
            let g = vec![1.0f32; 4 * b * h];
            let (dz, dh0, dc0) = layer_backward(&out.cs, &out.act, &w, &s0, None, &g, d);
            assert_eq!((dz.len(), dh0.len(), dc0.len()), (12 * b * h, b * h, b * h));
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // above both thresholds, so the rows are split across the pool
        let (b, h) = (64, 300);
        let z: Vec<f32> = (0..b * 4 * h)
            .map(|i| (i * 7919 % 1013) as f32 / 101.0 - 5.0)
            .collect();
        let c: Vec<f32> = (0..b * h)
            .map(|i| (i * 31 % 17) as f32 / 7.0 - 1.0)
            .collect();
        let g: Vec<f32> = (0..2 * b * h).map(|i| (i * 13 % 11) as f32 / 5.0).collect();
        let run = || {
            let out = cell_forward(&z, &c, h);
            let (dz, dc) = cell_backward(&out.act, &c, &g, h);
            (out.hc, out.act, dz, dc)
        };
        crate::set_num_threads(1);
        let one = run();
        crate::set_num_threads(3);
        let three = run();
        crate::set_num_threads(0);
        assert!(one == three);
    }
}
