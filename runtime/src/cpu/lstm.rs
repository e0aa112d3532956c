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

use crate::cpu::rowwise::{by_dtype, contiguous_data, supports, RowFloat};
use crate::error::Result;
use crate::storage::BufferElement;
use crate::tensor::Tensor;

/// Elements (`B · H`) from which the forward's rows are split across the pool. Each
/// element costs five scalar `exp`/`tanh` (≈ 50 ns), so from 2048 of them (≈ 100 µs) the
/// hand-off to the pool (a few µs) pays.
const FORWARD_PAR_THRESHOLD: usize = 1 << 11;

/// Elements (`B · H`) from which the backward's rows are split across the pool: about
/// 15 multiply-adds per element, no transcendental functions.
const BACKWARD_PAR_THRESHOLD: usize = 1 << 14;

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
type ForwardRow<'a, T> = (&'a mut [T], (&'a mut [T], &'a mut [T]));

/// The forward of one LSTM step: `z` is `[B, 4H]`, `c` is `[B, H]`, both contiguous.
pub(crate) fn cell_forward<T: RowFloat>(z: &[T], c: &[T], hidden: usize) -> CellOut<T> {
    let h = hidden;
    let bh = c.len();
    debug_assert_eq!(z.len(), 4 * bh);
    let mut hc = crate::cpu::pool::zeros::<T>(2 * bh);
    let mut act = crate::cpu::pool::zeros::<T>(5 * bh);
    if bh == 0 {
        return CellOut { hc, act };
    }
    let (hs, cs) = hc.split_at_mut(bh);
    // one task a batch row: its h' and c' rows and its activations
    let rows: Vec<ForwardRow<'_, T>> = hs
        .chunks_mut(h)
        .zip(cs.chunks_mut(h).zip(act.chunks_mut(5 * h)))
        .collect();
    run_rows(
        rows,
        bh >= FORWARD_PAR_THRESHOLD,
        |r, (h_row, (c_row, a_row))| {
            let z = &z[r * 4 * h..(r + 1) * 4 * h];
            forward_row(z, &c[r * h..(r + 1) * h], h_row, c_row, a_row)
        },
    );
    CellOut { hc, act }
}

crate::cpu::vmath::multiversion_loop! {
    /// One batch row of [`cell_forward`]: `z` is the row's `4H` gate pre-activations,
    /// `c` its cell state; writes `h'`, `c'` and the activations `[i, f, g, o, tanh c']`.
    fn forward_row<T: RowFloat>(
        z: &[T],
        c: &[T],
        h_row: &mut [T],
        c_row: &mut [T],
        a_row: &mut [T]
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
            ai[j] = i;
            af[j] = f;
            ag[j] = g;
            ao[j] = o;
            at[j] = t;
            c_row[j] = c2;
            h_row[j] = o * t;
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
    let h = hidden;
    let bh = c.len();
    debug_assert_eq!(act.len(), 5 * bh);
    debug_assert_eq!(g.len(), 2 * bh);
    let mut dz = crate::cpu::pool::zeros::<T>(4 * bh);
    let mut dc_prev = crate::cpu::pool::zeros::<T>(bh);
    if bh == 0 {
        return (dz, dc_prev);
    }
    let (dh_all, dc_all) = g.split_at(bh);
    let rows: Vec<(&mut [T], &mut [T])> = dz.chunks_mut(4 * h).zip(dc_prev.chunks_mut(h)).collect();
    run_rows(rows, bh >= BACKWARD_PAR_THRESHOLD, |r, (dz, dcp)| {
        let a = &act[r * 5 * h..(r + 1) * 5 * h];
        let (ai, rest) = a.split_at(h);
        let (af, rest) = rest.split_at(h);
        let (ag, rest) = rest.split_at(h);
        let (ao, at) = rest.split_at(h);
        let c = &c[r * h..(r + 1) * h];
        let dh = &dh_all[r * h..(r + 1) * h];
        let dc = &dc_all[r * h..(r + 1) * h];
        let (dzi, rest) = dz.split_at_mut(h);
        let (dzf, rest) = rest.split_at_mut(h);
        let (dzg, dzo) = rest.split_at_mut(h);
        let one = T::one();
        for j in 0..h {
            let (i, f, gg, o, t) = (ai[j], af[j], ag[j], ao[j], at[j]);
            let dct = dc[j] + dh[j] * o * (one - t * t);
            dzi[j] = dct * gg * (i * (one - i));
            dzf[j] = dct * c[j] * (f * (one - f));
            dzg[j] = dct * i * (one - gg * gg);
            dzo[j] = dh[j] * t * (o * (one - o));
            dcp[j] = dct * f;
        }
    });
    (dz, dc_prev)
}

/// Runs `f(r, row)` for every batch row: across the pool when `parallel` and the pool
/// has more than one thread, else in order on this thread.
fn run_rows<R: Send>(rows: Vec<R>, parallel: bool, f: impl Fn(usize, R) + Send + Sync) {
    if parallel && crate::cpu::parallel::num_threads() > 1 {
        use rayon::prelude::*;
        crate::cpu::parallel::install(|| {
            rows.into_par_iter()
                .enumerate()
                .for_each(|(r, row)| f(r, row))
        });
    } else {
        for (r, row) in rows.into_iter().enumerate() {
            f(r, row);
        }
    }
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
