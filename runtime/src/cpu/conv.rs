//! The fused CPU convolution, forward and backward, over `f32` or `f64` host buffers,
//! one sample at a time.
//!
//! A convolution of `x` `[N, C, *S]` with `w` `[OC, C/G, *K]` (`G` groups, `k` taps per
//! window, `L` windows) is, per sample `n` and group `g`, the product
//! `y_n[g] = W_g · cols_n[g]` of the weight block `W_g` `[OC/G, C/G·k]` with the group's
//! rows of the sample's `im2col` matrix `cols_n` `[C·k, L]`. Rather than unfolding the
//! whole batch into one `[N, C·k, L]` tensor (75 MB for the CNN benchmark's second
//! layer, written, read back from memory by the product and kept for the backward), each
//! sample is unfolded into a scratch buffer of `C·k·L` elements that stays in cache and
//! is multiplied straight into the output. A 1×1 kernel with stride 1 and no padding
//! reads the sample itself as its `cols_n`. The backward recomputes `cols_n` per sample:
//!
//! ```text
//! dW_g   += dY_n[g] · cols_n[g]ᵀ         (only when w requires grad)
//! dcols_n = W_gᵀ · dY_n[g],  dx_n = col2im(dcols_n)   (only when x requires grad)
//! dbias   = Σ_n Σ_l dY[n, :, l]
//! ```
//!
//! Threads: with at least as many samples as threads, samples run in parallel (each
//! thread its own scratch, each product single-threaded); with fewer, samples run in
//! order and each product is threaded
//! ([`gemm_threaded`](crate::cpu::matmul::gemm_threaded)). The weight gradient is summed
//! over a partition of the batch into chunks that depends only on `N` and the weight's
//! size ([`dw_chunks`]): one partial sum per chunk, added up in chunk order, so every
//! result is bit-identical at any thread count.
//!
//! The `im2col`/`col2im` rows are `ops::window`'s; the products go through
//! `cpu::matmul` (Flint's `sgemm` or the `gemm` crate, operands read in place with
//! their strides, so the transposes cost nothing).

use crate::cpu::matmul::{gemm, gemm_rows, GEMM_PAR_THRESHOLD};
use crate::cpu::parallel;
use crate::cpu::rowwise::{by_dtype, contiguous_data, RowFloat};
use crate::dtype::{DType, NumElement};
use crate::error::Result;
use crate::ops::window::{col2im_row_scratch, im2col_row, Window, W3};
use crate::storage::BufferElement;
use crate::tensor::Tensor;
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::thread::LocalKey;

const OP: &str = "conv";

/// At most this many chunks of the batch each get a partial weight gradient.
const MAX_DW_CHUNKS: usize = 16;

/// The partial weight gradients of all chunks together stay below this many bytes (a
/// large weight gets fewer chunks).
const DW_PARTIAL_BYTES: usize = 64 << 20;

/// Scratch buffers above this many bytes are freed after use instead of kept by the
/// thread.
const MAX_KEPT_SCRATCH_BYTES: usize = 64 << 20;

/// The element types of the fused convolution (f32, f64), each with its per-thread
/// scratch buffer.
pub(crate) trait ConvFloat: RowFloat + NumElement {
    /// The calling thread's scratch buffer of this type.
    fn scratch() -> &'static LocalKey<RefCell<Vec<Self>>>;
}

thread_local! {
    static SCRATCH_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH_F64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

impl ConvFloat for f32 {
    fn scratch() -> &'static LocalKey<RefCell<Vec<f32>>> {
        &SCRATCH_F32
    }
}

impl ConvFloat for f64 {
    fn scratch() -> &'static LocalKey<RefCell<Vec<f64>>> {
        &SCRATCH_F64
    }
}

/// Runs `f` on `len` elements of the calling thread's scratch buffer (their values are
/// whatever an earlier call left). The buffer is taken out of the thread-local for the
/// call, so a nested call (a product that runs pool tasks on this thread) gets its own.
fn with_scratch<T: ConvFloat, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    let mut buf = T::scratch().with(|s| std::mem::take(&mut *s.borrow_mut()));
    if buf.len() < len {
        buf.resize(len, <T as NumElement>::zero());
    }
    let r = f(&mut buf[..len]);
    if buf.len() * std::mem::size_of::<T>() <= MAX_KEPT_SCRATCH_BYTES {
        T::scratch().with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < buf.len() {
                *s = buf;
            }
        });
    }
    r
}

/// Whether [`forward`] and [`backward`] take these operands: f32 or f64 CPU tensors of
/// one dtype, none of them empty.
pub(crate) fn supports(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> bool {
    let ok =
        |t: &Tensor| t.device() == crate::Device::Cpu && t.dtype() == x.dtype() && t.numel() > 0;
    matches!(x.dtype(), DType::F32 | DType::F64) && ok(x) && ok(w) && bias.is_none_or(ok)
}

/// The sizes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geom {
    /// Samples.
    n: usize,
    /// Input channels.
    c: usize,
    /// Output channels.
    oc: usize,
    groups: usize,
    /// Taps per window.
    k: usize,
    /// Windows (output positions) per sample.
    l: usize,
    /// Input elements per channel.
    p: usize,
    /// A 1×1 kernel, stride 1, no padding: a sample is its own `cols`.
    pointwise: bool,
    w3: W3,
}

impl Geom {
    fn new(x: &Tensor, w: &Tensor, win: &Window, groups: usize) -> Geom {
        Geom {
            n: x.size(0),
            c: x.size(1),
            oc: w.size(0),
            groups,
            k: win.taps(),
            l: win.windows(),
            p: win.plane(),
            pointwise: is_pointwise(win),
            w3: win.w3(),
        }
    }
    /// Output channels per group (rows of one product).
    fn ocg(&self) -> usize {
        self.oc / self.groups
    }
    /// Depth of one group's product: `C/G · k`.
    fn kc(&self) -> usize {
        self.c / self.groups * self.k
    }
    /// Rows of a sample's `cols`: `C · k`.
    fn rows(&self) -> usize {
        self.c * self.k
    }
    /// Multiply-adds of one sample's forward.
    fn macs(&self) -> usize {
        self.oc * self.kc() * self.l
    }
    /// Whether samples run in parallel (each product single-threaded) rather than in
    /// order with threaded products.
    fn by_sample(&self) -> bool {
        let threads = parallel::num_threads();
        threads > 1 && self.n >= threads && self.n * self.macs() >= GEMM_PAR_THRESHOLD
    }
}

/// A 1×1 kernel with stride 1 and no padding, whose `im2col` is the input itself.
pub(crate) fn is_pointwise(win: &Window) -> bool {
    win.taps() == 1 && win.stride.iter().all(|&s| s == 1) && win.padding.iter().all(|&p| p == 0)
}

/// The chunks of `n` samples that each get one partial weight gradient of `wlen`
/// elements, in order. Depends on `n` and `wlen` only (never on the thread count), so
/// the weight gradient is summed in the same order on any number of threads.
fn dw_chunks(n: usize, wlen: usize, elem_bytes: usize) -> Vec<Range<usize>> {
    let by_memory = (DW_PARTIAL_BYTES / (wlen * elem_bytes).max(1)).max(1);
    let count = n.min(MAX_DW_CHUNKS).min(by_memory).max(1);
    (0..count)
        .map(|i| i * n / count..(i + 1) * n / count)
        .collect()
}

/// Unfolds sample `xn` (`[C, *S]`) into `cols` (`[C·k, L]`).
fn im2col_sample<T: ConvFloat>(g: &Geom, xn: &[T], cols: &mut [T]) {
    // SAFETY: `im2col_row` only writes values of `T`, so `cols` stays initialised.
    let out = unsafe { crate::cpu::pool::for_writing(cols) };
    for (r, row) in out.chunks_exact_mut(g.l).enumerate() {
        let ch = r / g.k;
        im2col_row(&g.w3, &xn[ch * g.p..(ch + 1) * g.p], r % g.k, row);
    }
}

/// The sample's `im2col` matrix `[C·k, L]`: `xn` itself for a pointwise kernel, else
/// `xn` unfolded into `scratch`.
fn sample_cols<'a, T: ConvFloat>(g: &Geom, xn: &'a [T], scratch: &'a mut [T]) -> &'a [T] {
    if g.pointwise {
        xn
    } else {
        im2col_sample(g, xn, scratch);
        scratch
    }
}

/// Adds the columns `cols` (`[C·k, L]`, a scratch, overwritten in places) of one sample
/// into `dxn` (`[C, *S]`).
fn col2im_sample<T: ConvFloat>(g: &Geom, cols: &mut [T], dxn: &mut [T]) {
    for (ch, plane) in dxn.chunks_exact_mut(g.p).enumerate() {
        for kk in 0..g.k {
            let r = ch * g.k + kk;
            col2im_row_scratch(&g.w3, &mut cols[r * g.l..(r + 1) * g.l], kk, plane);
        }
    }
}

/// The forward of sample `xn` (`[C, *S]`) into `yn` (`[OC, L]`, may be uninitialised),
/// with `cols` scratch of `C·k·L` elements (unused for a pointwise kernel, and where the
/// product packs the unfolded rows straight into its own layout: [`gemm_rows`]).
fn forward_sample<T: ConvFloat>(
    g: &Geom,
    xn: &[T],
    w: &[T],
    bias: Option<&[T]>,
    yn: &mut [MaybeUninit<T>],
    cols: &mut [T],
    threaded: bool,
) {
    if let Some(b) = bias {
        for (row, &bo) in yn.chunks_exact_mut(g.l).zip(b) {
            for v in row {
                v.write(bo);
            }
        }
    }
    let (ocg, kc, l) = (g.ocg(), g.kc(), g.l);
    let dst = yn.as_mut_ptr() as *mut T;
    for grp in 0..g.groups {
        // SAFETY: `yn` is `[OC, L]`, `w` `[OC, kc]` and the group's `B` `[kc, L]` (rows
        // `grp·kc..` of the sample's `[C·k, L]` unfolding), all contiguous: group `grp`
        // writes rows `grp·ocg..` of `yn` (initialised by the bias above when it
        // accumulates) from rows `grp·ocg..` of `w`.
        unsafe {
            let (dst, wg) = (dst.add(grp * ocg * l), w.as_ptr().add(grp * ocg * kc));
            if g.pointwise {
                let src = xn.as_ptr().add(grp * kc * l);
                gemm(
                    threaded,
                    ocg,
                    kc,
                    l,
                    dst,
                    l,
                    bias.is_some(),
                    wg,
                    (kc, 1),
                    src,
                    (l, 1),
                )
            } else {
                let fill = |p: usize, row: &mut [MaybeUninit<T>]| {
                    let r = grp * kc + p;
                    let ch = r / g.k;
                    im2col_row(&g.w3, &xn[ch * g.p..(ch + 1) * g.p], r % g.k, row)
                };
                let acc = bias.is_some();
                gemm_rows(threaded, ocg, kc, l, dst, l, acc, wg, (kc, 1), cols, fill)
            }
        }
    }
}

/// The forward over contiguous buffers: `x` `[N, C, *S]`, `w` `[OC, C/G, *K]`; returns
/// `y` `[N, OC, L]`.
fn forward_kernel<T: ConvFloat>(g: &Geom, x: &[T], w: &[T], bias: Option<&[T]>) -> Vec<T> {
    let (cs, ys) = (g.c * g.p, g.oc * g.l);
    let total = g.n * ys;
    let mut y = crate::cpu::pool::take::<T>(total);
    let scratch = if g.pointwise { 0 } else { g.rows() * g.l };
    let out = &mut y.spare_capacity_mut()[..total];
    if g.by_sample() {
        parallel::install(|| {
            out.par_chunks_mut(ys).enumerate().for_each(|(i, yn)| {
                with_scratch(scratch, |cols| {
                    forward_sample(g, &x[i * cs..(i + 1) * cs], w, bias, yn, cols, false)
                })
            })
        });
    } else {
        with_scratch(scratch, |cols| {
            for (i, yn) in out.chunks_exact_mut(ys).enumerate() {
                forward_sample(g, &x[i * cs..(i + 1) * cs], w, bias, yn, cols, true);
            }
        });
    }
    // SAFETY: every sample's `[OC, L]` block was written (each group's product sets its
    // rows, after the bias when there is one).
    unsafe { y.set_len(total) };
    y
}

/// The backward of one sample: adds `dY_n · cols_nᵀ` into `dw` (`[OC, kc]`; set rather
/// than added when `dw_first`) and writes `dx_n` (`dxn`, `[C, *S]`, zeroed by the
/// caller), with `scratch` of `C·k·L` elements.
#[allow(clippy::too_many_arguments)]
fn backward_sample<T: ConvFloat>(
    g: &Geom,
    xn: &[T],
    w: &[T],
    gyn: &[T],
    dw: Option<(&mut [T], bool)>,
    dxn: Option<&mut [T]>,
    scratch: &mut [T],
    threaded: bool,
) {
    let (ocg, kc, l) = (g.ocg(), g.kc(), g.l);
    if let Some((dw, first)) = dw {
        let src = sample_cols(g, xn, scratch);
        for grp in 0..g.groups {
            // SAFETY: `dw` is `[OC, kc]`, `gyn` `[OC, L]` and `src` `[C·k, L]`, all
            // contiguous; `src`'s group rows are read transposed (`[L, kc]`, strides
            // `(1, L)`).
            unsafe {
                gemm(
                    threaded,
                    ocg,
                    l,
                    kc,
                    dw.as_mut_ptr().add(grp * ocg * kc),
                    kc,
                    !first,
                    gyn.as_ptr().add(grp * ocg * l),
                    (l, 1),
                    src.as_ptr().add(grp * kc * l),
                    (1, l),
                )
            }
        }
    }
    if let Some(dxn) = dxn {
        // a pointwise kernel's `dcols` is `dx_n` itself
        let dcols: &mut [T] = if g.pointwise { dxn } else { scratch };
        for grp in 0..g.groups {
            // SAFETY: `dcols` is `[C·k, L]`, `w` `[OC, kc]` read transposed (`[kc, ocg]`
            // per group, strides `(1, kc)`), `gyn` `[OC, L]`; all contiguous.
            unsafe {
                gemm(
                    threaded,
                    kc,
                    ocg,
                    l,
                    dcols.as_mut_ptr().add(grp * kc * l),
                    l,
                    false,
                    w.as_ptr().add(grp * ocg * kc),
                    (1, kc),
                    gyn.as_ptr().add(grp * ocg * l),
                    (l, 1),
                )
            }
        }
        if !g.pointwise {
            col2im_sample(g, scratch, dxn);
        }
    }
}

/// Which gradients [`backward`] computes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvNeeds {
    /// Of the input.
    pub(crate) x: bool,
    /// Of the weight.
    pub(crate) w: bool,
    /// Of the bias.
    pub(crate) bias: bool,
}

/// The element-wise sum `acc += part`.
fn add_into<T: ConvFloat>(acc: &mut [T], part: &[T]) {
    for (a, &p) in acc.iter_mut().zip(part) {
        *a = *a + p;
    }
}

/// The backward over contiguous buffers (`gy` `[N, OC, L]`): `(dx, dw, dbias)` as asked.
#[allow(clippy::type_complexity)]
fn backward_kernel<T: ConvFloat>(
    g: &Geom,
    x: &[T],
    w: &[T],
    gy: &[T],
    needs: ConvNeeds,
) -> (Option<Vec<T>>, Option<Vec<T>>, Option<Vec<T>>) {
    let (cs, ys, wlen) = (g.c * g.p, g.oc * g.l, w.len());
    let mut dx = needs.x.then(|| crate::cpu::pool::zeros::<T>(g.n * cs));
    let scratch = if g.pointwise && !needs.x {
        0
    } else {
        g.rows() * g.l
    };
    let chunks = dw_chunks(g.n, wlen, std::mem::size_of::<T>());
    // each chunk of samples: its partial dw (when asked for), its samples' dx
    let run_chunk = |range: Range<usize>, dx: Option<&mut [T]>, part: &mut [T], threaded: bool| {
        let mut dx = dx;
        with_scratch(scratch, |scr| {
            for (j, i) in range.clone().enumerate() {
                let dxn = dx.as_deref_mut().map(|d| &mut d[j * cs..(j + 1) * cs]);
                let dwp = needs.w.then_some((&mut *part, j == 0));
                backward_sample(
                    g,
                    &x[i * cs..(i + 1) * cs],
                    w,
                    &gy[i * ys..(i + 1) * ys],
                    dwp,
                    dxn,
                    scr,
                    threaded,
                );
            }
        });
    };
    let plen = if needs.w { wlen } else { 0 };
    let mut dw: Option<Vec<T>> = None;
    // the dx block of each chunk
    let mut dx_blocks: Vec<Option<&mut [T]>> = Vec::with_capacity(chunks.len());
    {
        let mut rest = dx.as_deref_mut();
        for r in &chunks {
            match rest.take() {
                Some(d) => {
                    let (a, b) = d.split_at_mut(r.len() * cs);
                    dx_blocks.push(Some(a));
                    rest = Some(b);
                }
                None => dx_blocks.push(None),
            }
        }
    }
    if g.by_sample() && chunks.len() > 1 {
        let parts: Vec<Vec<T>> = parallel::install(|| {
            chunks
                .par_iter()
                .zip(dx_blocks.into_par_iter())
                .map(|(r, dxb)| {
                    let mut part = crate::cpu::pool::take::<T>(plen);
                    part.resize(plen, <T as NumElement>::zero());
                    run_chunk(r.clone(), dxb, &mut part, false);
                    part
                })
                .collect()
        });
        if needs.w {
            let mut it = parts.into_iter();
            let mut acc = it.next().unwrap_or_default();
            for p in it {
                add_into(&mut acc, &p);
            }
            dw = Some(acc);
        }
    } else {
        let mut part = vec![<T as NumElement>::zero(); plen];
        for (r, dxb) in chunks.iter().zip(dx_blocks) {
            run_chunk(r.clone(), dxb, &mut part, true);
            if needs.w {
                match &mut dw {
                    None => dw = Some(part.clone()),
                    Some(acc) => add_into(acc, &part),
                }
            }
        }
    }
    let db = needs.bias.then(|| {
        let mut db = vec![<T as NumElement>::zero(); g.oc];
        for (o, d) in db.iter_mut().enumerate() {
            let mut s = <T as NumElement>::zero();
            for i in 0..g.n {
                for &v in &gy[i * ys + o * g.l..i * ys + (o + 1) * g.l] {
                    s = s + v;
                }
            }
            *d = s;
        }
        db
    });
    (dx, dw, db)
}

/// The convolution of `x` `[N, C, *S]` with `w` `[OC, C/groups, *K]` and an optional
/// `bias` `[OC]` over the windows `win` (whose input is `S`): `[N, OC, *out]`. The
/// operands must pass [`supports`] and have matching shapes (`conv_nd` checks them).
/// Records nothing.
pub(crate) fn forward(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    win: &Window,
    groups: usize,
) -> Result<Tensor> {
    let g = Geom::new(x, w, win, groups);
    let mut shape = vec![g.n, g.oc];
    shape.extend_from_slice(&win.output);
    by_dtype!(OP, x, T => {
        let y = contiguous_data::<T, _>(OP, x, |xs| {
            contiguous_data::<T, _>(OP, w, |ws| match bias {
                Some(b) => contiguous_data::<T, _>(OP, b, |bs| forward_kernel(&g, xs, ws, Some(bs))),
                None => Ok(forward_kernel(&g, xs, ws, None)),
            })
        })???;
        Ok(Tensor::from_buffer(T::into_buffer(y), &shape))
    })
}

/// The gradients `(dx, dw, dbias)` of [`forward`] from the output gradient `gy`
/// (`[N, OC, *out]`), those not asked for in `needs` left `None`; shapes those of `x`,
/// `w` and `[OC]`. Records nothing.
pub(crate) fn backward(
    x: &Tensor,
    w: &Tensor,
    gy: &Tensor,
    win: &Window,
    groups: usize,
    needs: ConvNeeds,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let g = Geom::new(x, w, win, groups);
    let gy = gy.to_dtype_raw(x.dtype())?;
    by_dtype!(OP, x, T => {
        let (dx, dw, db) = contiguous_data::<T, _>(OP, x, |xs| {
            contiguous_data::<T, _>(OP, w, |ws| {
                contiguous_data::<T, _>(OP, &gy, |gs| backward_kernel(&g, xs, ws, gs, needs))
            })
        })???;
        let wrap = |v: Vec<T>, shape: &[usize]| Tensor::from_buffer(T::into_buffer(v), shape);
        Ok((
            dx.map(|v| wrap(v, x.shape())),
            dw.map(|v| wrap(v, w.shape())),
            db.map(|v| wrap(v, &[g.oc])),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Generator};

    fn win(input: &[usize], k: &[usize], s: &[usize], p: &[usize], d: &[usize]) -> Window {
        crate::nn::conv::window("test", input, k, s, p, d, false).unwrap()
    }

    #[test]
    fn dw_chunks_partition_the_batch() {
        assert_eq!(dw_chunks(3, 10, 4), vec![0..1, 1..2, 2..3]);
        let c = dw_chunks(64, 18432, 4);
        assert_eq!(c.len(), 16);
        assert!(c.iter().all(|r| r.len() == 4));
        assert_eq!(dw_chunks(0, 10, 4), vec![0..0]);
        // a weight of 32 MiB gets two partials
        assert_eq!(dw_chunks(10, 8 << 20, 4), vec![0..5, 5..10]);
    }

    /// Forward and all gradients at 1 and 2 threads, as f64 bit patterns.
    fn run_at(threads: usize, x: &Tensor, w: &Tensor, b: &Tensor, wn: &Window) -> Vec<Vec<u64>> {
        crate::set_num_threads(threads);
        let y = forward(x, w, Some(b), wn, 2).unwrap();
        let gy = Generator::new(4).randn(y.shape(), x.dtype());
        let needs = ConvNeeds {
            x: true,
            w: true,
            bias: true,
        };
        let (dx, dw, db) = backward(x, w, &gy, wn, 2, needs).unwrap();
        [y, dx.unwrap(), dw.unwrap(), db.unwrap()]
            .iter()
            .map(|t| {
                t.to_dtype(DType::F64)
                    .to_vec::<f64>()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn thread_count_does_not_change_the_result() {
        let mut g = Generator::new(8);
        for dt in [DType::F32, DType::F64] {
            // many samples (split by sample) and one (threaded products), large enough
            // for the products to thread
            for n in [9, 1] {
                let x = g.randn([n, 8, 20, 24], dt);
                let w = g.randn([32, 4, 3, 3], dt);
                let b = g.randn([32], dt);
                let wn = win(&[20, 24], &[3, 3], &[1, 1], &[1, 1], &[1, 1]);
                let one = run_at(1, &x, &w, &b, &wn);
                let two = run_at(2, &x, &w, &b, &wn);
                crate::set_num_threads(0);
                assert_eq!(one, two, "{dt} n={n}");
            }
        }
    }
}
