//! Sliding-window kernels behind convolution and pooling: `im2col` (PyTorch's `unfold`)
//! and its adjoint `col2im` (`fold`), each the other's backward, and the argmax of
//! max pooling.
//!
//! A [`Window`] describes windows of `kernel` taps, `dilation` apart, that start every
//! `stride` elements along each of 1 to 3 trailing spatial dims of a `[B, C, *spatial]`
//! tensor padded with `padding` zeros on both sides. Taps that fall into the padding read
//! zero (`im2col`), receive nothing (`col2im`) or are skipped (max pooling). The number
//! of windows per dim (`output`) is stored rather than derived, so that callers choose
//! floor or ceil rounding; windows that run past the padded end just read more zeros.
//!
//! The kernels work on contiguous buffers, one row (or plane) per parallel task, and copy
//! whole runs of a row with `copy_from_slice` where the stride is 1.

use crate::autograd::record;
use crate::cpu::parallel;
use crate::dispatch;
use crate::dtype::{Element, NumElement};
use crate::error::{or_panic, Error, Result};
use crate::layout::fmt_shape;
use crate::storage::BufferElement;
use crate::tensor::Tensor;
use std::mem::MaybeUninit;

/// The geometry of a set of sliding windows over 1 to 3 spatial dims (all vectors have
/// one entry per spatial dim).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    /// Spatial size of the input, without padding.
    pub input: Vec<usize>,
    /// Taps per window.
    pub kernel: Vec<usize>,
    /// Step between window starts.
    pub stride: Vec<usize>,
    /// Implicit zeros before and after the input.
    pub padding: Vec<usize>,
    /// Step between taps.
    pub dilation: Vec<usize>,
    /// Windows per dim.
    pub output: Vec<usize>,
}

/// A [`Window`] padded to three spatial dims with leading unit dims, for the kernels
/// (here and the per-sample convolution of `cpu::conv`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct W3 {
    input: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
    dilation: [usize; 3],
    output: [usize; 3],
}

impl Window {
    /// Number of spatial dims.
    pub(crate) fn ndim(&self) -> usize {
        self.input.len()
    }
    /// Taps per window (the product of `kernel`).
    pub(crate) fn taps(&self) -> usize {
        self.kernel.iter().product()
    }
    /// Windows per plane (the product of `output`).
    pub(crate) fn windows(&self) -> usize {
        self.output.iter().product()
    }
    /// Elements per input plane (the product of `input`).
    pub(crate) fn plane(&self) -> usize {
        self.input.iter().product()
    }

    /// The geometry padded to three spatial dims, for [`im2col_row`] and [`col2im_row`].
    pub(crate) fn w3(&self) -> W3 {
        let nd = self.ndim();
        debug_assert!((1..=3).contains(&nd));
        let pad = |v: &[usize], fill: usize| {
            let mut a = [fill; 3];
            a[3 - nd..].copy_from_slice(v);
            a
        };
        W3 {
            input: pad(&self.input, 1),
            kernel: pad(&self.kernel, 1),
            stride: pad(&self.stride, 1),
            padding: pad(&self.padding, 0),
            dilation: pad(&self.dilation, 1),
            output: pad(&self.output, 1),
        }
    }
}

/// The output positions `lo..hi` (within `0..out`) whose tap at offset `tap` (already
/// multiplied by the dilation) lands inside the input of size `input` along one dim:
/// `0 <= o * stride + tap - pad < input`.
#[inline]
fn valid_range(
    tap: usize,
    pad: usize,
    stride: usize,
    input: usize,
    out: usize,
) -> std::ops::Range<usize> {
    let lo = if tap >= pad {
        0
    } else {
        (pad - tap).div_ceil(stride)
    };
    let hi = if input + pad <= tap {
        0
    } else {
        (input + pad - tap).div_ceil(stride)
    };
    let hi = hi.min(out);
    lo.min(hi)..hi
}

/// Kernel-tap offsets (dilated) and valid output ranges of tap `kk` of the window.
struct Tap {
    /// Input index of output position 0 plus `pad` (`tap * dilation`), per dim.
    off: [usize; 3],
    /// Valid output positions, per dim.
    range: [std::ops::Range<usize>; 3],
}

impl W3 {
    fn tap(&self, kk: usize) -> Tap {
        let k = self.kernel;
        let idx = [kk / (k[1] * k[2]), (kk / k[2]) % k[1], kk % k[2]];
        let off: [usize; 3] = std::array::from_fn(|d| idx[d] * self.dilation[d]);
        let range = std::array::from_fn(|d| {
            valid_range(
                off[d],
                self.padding[d],
                self.stride[d],
                self.input[d],
                self.output[d],
            )
        });
        Tap { off, range }
    }

    /// Input index along dim `d` of output position `o` for a tap at `off` (which must be
    /// in the tap's valid range).
    #[inline]
    fn at(&self, d: usize, o: usize, off: usize) -> usize {
        o * self.stride[d] + off - self.padding[d]
    }
}

/// Where a "same" window (stride 1 along the last two dims, input and output rows of
/// one length) lets the valid part of tap `t` in plane `a` (of the im2col row) be one
/// run: `len` elements from `row` in the im2col row and from `src` in the input
/// plane. Inside the run, the ends of consecutive rows ([`Run::gaps`]) are windows whose
/// tap falls into the padding: the run carries values there that belong to no window.
struct Run {
    row: usize,
    src: usize,
    len: usize,
    /// Valid output rows and columns of the tap, the output row length and where the
    /// plane starts in the im2col row.
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    o2: usize,
    base: usize,
}

impl Run {
    /// The gaps between valid rows inside the run, as ranges of the im2col row.
    fn gaps(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        let (o2, lo, hi, base) = (self.o2, self.cols.start, self.cols.end, self.base);
        (self.rows.start + 1..self.rows.end)
            .map(move |b| base + (b - 1) * o2 + hi..base + b * o2 + lo)
    }
}

impl W3 {
    /// The [`Run`] of tap `t` in output plane `a`, when there is one (and it spans more
    /// than one row; a single row is a run of the plain loops anyway).
    fn run(&self, t: &Tap, a: usize) -> Option<Run> {
        let [_, i1, i2] = self.input;
        let [_, o1, o2] = self.output;
        let (rows, cols) = (t.range[1].clone(), t.range[2].clone());
        let same = self.stride[1] == 1 && self.stride[2] == 1 && i2 == o2;
        if !same || !t.range[0].contains(&a) || cols.is_empty() || rows.len() < 2 {
            return None;
        }
        let (ia, ib) = (self.at(0, a, t.off[0]), self.at(1, rows.start, t.off[1]));
        Some(Run {
            row: (a * o1 + rows.start) * o2 + cols.start,
            src: (ia * i1 + ib) * i2 + self.at(2, cols.start, t.off[2]),
            len: (rows.len() - 1) * o2 + cols.len(),
            rows,
            cols,
            o2,
            base: a * o1 * o2,
        })
    }
}

/// Fills one `im2col` row (tap `kk` of one plane) of `out` from the plane `src`: every
/// element of `out` is written, the windows whose tap falls into the padding with zero
/// (so `out` may start uninitialised, and the caller need not clear it first).
pub(crate) fn im2col_row<T: Copy + Default>(
    w: &W3,
    src: &[T],
    kk: usize,
    out: &mut [MaybeUninit<T>],
) {
    let t = w.tap(kk);
    let [_, i1, i2] = w.input;
    let [o0, o1, o2] = w.output;
    let s2 = w.stride[2];
    let (lo, hi) = (t.range[2].start, t.range[2].end);
    let zero = |d: &mut [MaybeUninit<T>]| {
        for x in d {
            x.write(T::default());
        }
    };
    for a in 0..o0 {
        let plane = &mut out[a * o1 * o2..(a + 1) * o1 * o2];
        if !t.range[0].contains(&a) || lo >= hi {
            zero(plane);
            continue;
        }
        if let Some(run) = w.run(&t, a) {
            // one copy of the valid part, then zeros over the rest of the plane,
            // including the gaps the copy filled
            let r = run.row - a * o1 * o2;
            copy_run(&mut plane[r..r + run.len], &src[run.src..run.src + run.len]);
            zero(&mut plane[..r]);
            for gap in run.gaps() {
                zero(&mut plane[gap.start - a * o1 * o2..gap.end - a * o1 * o2]);
            }
            zero(&mut plane[r + run.len..]);
            continue;
        }
        let ia = w.at(0, a, t.off[0]);
        for b in 0..o1 {
            let drow = &mut plane[b * o2..(b + 1) * o2];
            if !t.range[1].contains(&b) {
                zero(drow);
                continue;
            }
            let ib = w.at(1, b, t.off[1]);
            let srow = &src[(ia * i1 + ib) * i2..(ia * i1 + ib + 1) * i2];
            let start = w.at(2, lo, t.off[2]);
            zero(&mut drow[..lo]);
            zero(&mut drow[hi..]);
            if s2 == 1 {
                copy_run(&mut drow[lo..hi], &srow[start..start + hi - lo]);
            } else {
                for (j, x) in drow[lo..hi].iter_mut().enumerate() {
                    x.write(srow[start + j * s2]);
                }
            }
        }
    }
}

/// `dst = src` (equal lengths).
#[inline(always)]
fn copy_run<T: Copy>(dst: &mut [MaybeUninit<T>], src: &[T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// [`col2im_row`] for a row the caller may overwrite (a scratch): where a [`Run`] spans
/// the tap's valid rows, its gaps are zeroed and the run added in one loop.
pub(crate) fn col2im_row_scratch<T: NumElement>(w: &W3, row: &mut [T], kk: usize, dst: &mut [T]) {
    let t = w.tap(kk);
    // a tap has a run in every plane it reaches or in none
    if w.run(&t, t.range[0].start).is_none() {
        return col2im_row(w, row, kk, dst);
    }
    for run in t.range[0].clone().filter_map(|a| w.run(&t, a)) {
        for gap in run.gaps() {
            row[gap].fill(<T as NumElement>::zero());
        }
        let d = &mut dst[run.src..run.src + run.len];
        for (d, &s) in d.iter_mut().zip(&row[run.row..run.row + run.len]) {
            *d = *d + s;
        }
    }
}

/// Adds one `col2im` row (tap `kk` of one plane) of `cols` into the plane `dst`.
pub(crate) fn col2im_row<T: NumElement>(w: &W3, row: &[T], kk: usize, dst: &mut [T]) {
    let t = w.tap(kk);
    let [_, i1, i2] = w.input;
    let [_, o1, o2] = w.output;
    let s2 = w.stride[2];
    let (lo, hi) = (t.range[2].start, t.range[2].end);
    if lo >= hi {
        return;
    }
    for a in t.range[0].clone() {
        let ia = w.at(0, a, t.off[0]);
        for b in t.range[1].clone() {
            let ib = w.at(1, b, t.off[1]);
            let drow = &mut dst[(ia * i1 + ib) * i2..(ia * i1 + ib + 1) * i2];
            let srow = &row[(a * o1 + b) * o2 + lo..(a * o1 + b) * o2 + hi];
            let start = w.at(2, lo, t.off[2]);
            if s2 == 1 {
                for (d, &s) in drow[start..start + hi - lo].iter_mut().zip(srow) {
                    *d = *d + s;
                }
            } else {
                for (j, &s) in srow.iter().enumerate() {
                    let d = &mut drow[start + j * s2];
                    *d = *d + s;
                }
            }
        }
    }
}

/// `[planes, *input]` (contiguous) → `[planes, taps, windows]`.
fn im2col_kernel<T: BufferElement>(src: &[T], planes: usize, w: &Window) -> Vec<T> {
    let (k, l, p) = (w.taps(), w.windows(), w.plane());
    let w3 = w.w3();
    let total = planes * k * l;
    let mut out = crate::cpu::pool::take(total);
    if total == 0 {
        return out;
    }
    let fill = |r: usize, dst: &mut [MaybeUninit<T>]| {
        let plane = r / k;
        im2col_row(&w3, &src[plane * p..(plane + 1) * p], r % k, dst);
    };
    let dst = &mut out.spare_capacity_mut()[..total];
    parallel::for_each_row(dst, l, 4096 / l.max(1), total, fill);
    // SAFETY: `im2col_row` wrote every element of each of the `planes·k` rows of `l`
    unsafe { out.set_len(total) };
    out
}

/// `[planes, taps, windows]` (contiguous) → `[planes, *input]`, summing overlaps.
fn col2im_kernel<T: NumElement + BufferElement>(cols: &[T], planes: usize, w: &Window) -> Vec<T> {
    let (k, l, p) = (w.taps(), w.windows(), w.plane());
    let w3 = w.w3();
    let mut out = crate::cpu::pool::zeros(planes * p);
    if out.is_empty() || l == 0 {
        return out;
    }
    let fill = |plane: usize, dst: &mut [T]| {
        for kk in 0..k {
            let r = plane * k + kk;
            col2im_row(&w3, &cols[r * l..(r + 1) * l], kk, dst);
        }
    };
    let work = cols.len().max(out.len());
    parallel::for_each_row(&mut out, p, 4096 / (k * l).max(1), work, fill);
    out
}

/// For each window of each plane of `[planes, *input]`, the flat in-plane index of its
/// largest element (the first one on ties; a NaN wins, the last NaN on several, as in
/// PyTorch), or `-1` for a window that holds only padding.
fn argmax_kernel<T: Element>(src: &[T], planes: usize, w: &Window) -> Vec<i64> {
    let (l, p) = (w.windows(), w.plane());
    let w3 = w.w3();
    let taps: Vec<Tap> = (0..w.taps()).map(|kk| w3.tap(kk)).collect();
    let mut out = vec![-1i64; planes * l];
    if out.is_empty() {
        return out;
    }
    let [_, i1, i2] = w3.input;
    let [o0, o1, o2] = w3.output;
    let fill = |plane: usize, dst: &mut [i64]| {
        let src = &src[plane * p..(plane + 1) * p];
        for a in 0..o0 {
            for b in 0..o1 {
                for c in 0..o2 {
                    let mut best: Option<(T, usize)> = None;
                    for t in &taps {
                        if !(t.range[0].contains(&a)
                            && t.range[1].contains(&b)
                            && t.range[2].contains(&c))
                        {
                            continue;
                        }
                        let i = (w3.at(0, a, t.off[0]) * i1 + w3.at(1, b, t.off[1])) * i2
                            + w3.at(2, c, t.off[2]);
                        let v = src[i];
                        match best {
                            Some((m, _)) if !(v > m || v.is_nan()) => {}
                            _ => best = Some((v, i)),
                        }
                    }
                    if let Some((_, i)) = best {
                        dst[(a * o1 + b) * o2 + c] = i as i64;
                    }
                }
            }
        }
    };
    let work = out.len() * taps.len();
    parallel::for_each_row(&mut out, l, 4096 / (l * taps.len()).max(1), work, fill);
    out
}

/// Runs `f` on the contiguous typed data of `t` (copying it first when `t` is a
/// non-contiguous view).
fn with_contiguous<T: BufferElement, R>(
    op: &'static str,
    t: &Tensor,
    f: impl FnOnce(&[T]) -> R,
) -> Result<R> {
    if let crate::Device::Cuda(_) = t.device() {
        return Err(Error::NoCudaKernel {
            op,
            device: t.device(),
        });
    }
    let t = if t.is_contiguous() {
        t.clone()
    } else {
        t.copy_raw()?
    };
    t.with_slice::<T, _>(op, |s, l| f(&s[l.offset()..l.offset() + l.numel()]))
}

/// A `window` kernel on a CUDA tensor (see `cuda::ops::window`); without the `cuda`
/// feature no tensor is on CUDA, and this is the "no CUDA kernel" error.
#[allow(clippy::too_many_arguments)]
fn cuda_window(
    op: &'static str,
    entry: &str,
    src: &Tensor,
    planes: usize,
    w: &Window,
    out_dtype: crate::DType,
    shape: &[usize],
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    {
        crate::cuda::ops::window(op, entry, src, planes, w, out_dtype, shape)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (entry, planes, w, out_dtype, shape);
        Err(Error::NoCudaKernel {
            op,
            device: src.device(),
        })
    }
}

fn check_window(op: &'static str, w: &Window) -> Result<()> {
    let nd = w.ndim();
    let ok = (1..=3).contains(&nd)
        && [&w.kernel, &w.stride, &w.padding, &w.dilation, &w.output]
            .iter()
            .all(|v| v.len() == nd)
        && w.kernel.iter().all(|&k| k > 0)
        && w.stride.iter().all(|&s| s > 0)
        && w.dilation.iter().all(|&d| d > 0);
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            op,
            format!("invalid window (kernel, stride and dilation must be positive, 1 to 3 spatial dims): {w:?}"),
        ))
    }
}

impl Tensor {
    /// `im2col` (PyTorch's `unfold`): `[B, C, *input]` → `[B, C * taps, windows]`, where
    /// row `c * taps + t` holds tap `t` of every window of channel `c`, zero where the
    /// tap falls into the padding. Differentiable; the backward is [`Tensor::col2im`].
    #[track_caller]
    pub(crate) fn im2col(&self, w: &Window) -> Result<Tensor> {
        const OP: &str = "im2col";
        check_window(OP, w)?;
        let nd = w.ndim();
        if self.ndim() != nd + 2 || self.shape()[2..] != w.input[..] {
            return Err(Error::shape(
                OP,
                format!(
                    "expected input of shape [B, C, {}], got {}",
                    w.input
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    fmt_shape(self.shape())
                ),
            ));
        }
        let (b, c) = (self.shape()[0], self.shape()[1]);
        let shape = [b, c * w.taps(), w.windows()];
        let dt = self.dtype();
        let out = if self.is_cuda() {
            cuda_window(OP, "im2col", self, b * c, w, dt, &shape)?
        } else {
            dispatch!(all dt, T => {
                let v = with_contiguous::<T, _>(OP, self, |s| im2col_kernel(s, b * c, w))?;
                Tensor::from_buffer(T::into_buffer(v), &shape)
            })
        };
        let w = w.clone();
        Ok(record(out, OP, &[self], &[], move |g| {
            vec![Some(or_panic(g.col2im(&w)))]
        }))
    }

    /// `col2im` (PyTorch's `fold`): `[B, C * taps, windows]` → `[B, C, *input]`, adding
    /// every tap of every window into the input position it reads in [`Tensor::im2col`]
    /// (the adjoint of `im2col`, and its backward). Differentiable; the backward is
    /// `im2col`.
    #[track_caller]
    pub(crate) fn col2im(&self, w: &Window) -> Result<Tensor> {
        const OP: &str = "col2im";
        check_window(OP, w)?;
        let (k, l) = (w.taps(), w.windows());
        if self.ndim() != 3 || !self.shape()[1].is_multiple_of(k) || self.shape()[2] != l {
            return Err(Error::shape(
                OP,
                format!(
                    "expected input of shape [B, C * {k}, {l}] ({k} taps per window, {l} windows), got {}",
                    fmt_shape(self.shape())
                ),
            ));
        }
        let (b, c) = (self.shape()[0], self.shape()[1] / k);
        let mut shape = vec![b, c];
        shape.extend_from_slice(&w.input);
        let dt = self.dtype();
        let out = if self.is_cuda() {
            cuda_window(OP, "col2im", self, b * c, w, dt, &shape)?
        } else {
            dispatch!(num OP, dt, T => {
                let v = with_contiguous::<T, _>(OP, self, |s| col2im_kernel(s, b * c, w))?;
                Tensor::from_buffer(T::into_buffer(v), &shape)
            })?
        };
        let w = w.clone();
        Ok(record(out, OP, &[self], &[], move |g| {
            vec![Some(or_panic(g.im2col(&w)))]
        }))
    }

    /// For max pooling: the `i64` tensor `[B, C, *output]` of the flat in-plane index
    /// (over `input`) of the largest element of each window of `[B, C, *input]`; `-1`
    /// for a window made only of padding. Records nothing.
    pub(crate) fn window_argmax(&self, w: &Window) -> Result<Tensor> {
        const OP: &str = "max_pool";
        check_window(OP, w)?;
        let nd = w.ndim();
        if self.ndim() != nd + 2 || self.shape()[2..] != w.input[..] {
            return Err(Error::shape(
                OP,
                format!(
                    "expected input with spatial size {:?}, got {}",
                    w.input,
                    fmt_shape(self.shape())
                ),
            ));
        }
        let (b, c) = (self.shape()[0], self.shape()[1]);
        let mut shape = vec![b, c];
        shape.extend_from_slice(&w.output);
        let dt = self.dtype();
        if self.is_cuda() {
            return cuda_window(
                OP,
                "window_argmax",
                self,
                b * c,
                w,
                crate::DType::I64,
                &shape,
            );
        }
        let idx = dispatch!(num OP, dt, T => {
            with_contiguous::<T, _>(OP, self, |s| argmax_kernel(s, b * c, w))?
        })?;
        Ok(Tensor::from_buffer(i64::into_buffer(idx), &shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::{gradcheck, gradgradcheck, GradcheckOptions};
    use crate::DType;

    fn win(input: &[usize], k: &[usize], s: &[usize], p: &[usize], d: &[usize]) -> Window {
        let output = (0..input.len())
            .map(|i| (input[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) / s[i] + 1)
            .collect();
        Window {
            input: input.to_vec(),
            kernel: k.to_vec(),
            stride: s.to_vec(),
            padding: p.to_vec(),
            dilation: d.to_vec(),
            output,
        }
    }

    /// im2col by the definition, from f64 values.
    fn naive_im2col(x: &[f64], b: usize, c: usize, w: &Window) -> Vec<f64> {
        let w3 = w.w3();
        let (k, l, p) = (w.taps(), w.windows(), w.plane());
        let mut out = vec![0.0; b * c * k * l];
        for plane in 0..b * c {
            for kk in 0..k {
                let ki = [
                    kk / (w3.kernel[1] * w3.kernel[2]),
                    (kk / w3.kernel[2]) % w3.kernel[1],
                    kk % w3.kernel[2],
                ];
                for o in 0..l {
                    let oi = [
                        o / (w3.output[1] * w3.output[2]),
                        (o / w3.output[2]) % w3.output[1],
                        o % w3.output[2],
                    ];
                    let pos: Vec<isize> = (0..3)
                        .map(|d| {
                            (oi[d] * w3.stride[d] + ki[d] * w3.dilation[d]) as isize
                                - w3.padding[d] as isize
                        })
                        .collect();
                    if (0..3).all(|d| pos[d] >= 0 && (pos[d] as usize) < w3.input[d]) {
                        let i = (pos[0] as usize * w3.input[1] + pos[1] as usize) * w3.input[2]
                            + pos[2] as usize;
                        out[(plane * k + kk) * l + o] = x[plane * p + i];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn valid_range_matches_the_definition() {
        for tap in 0..7 {
            for pad in 0..4 {
                for stride in 1..4 {
                    for input in 1..6 {
                        for out in 0..8 {
                            let r = valid_range(tap, pad, stride, input, out);
                            let want: Vec<usize> = (0..out)
                                .filter(|&o| {
                                    let i = (o * stride + tap) as isize - pad as isize;
                                    i >= 0 && (i as usize) < input
                                })
                                .collect();
                            assert_eq!(
                                r.collect::<Vec<_>>(),
                                want,
                                "{tap} {pad} {stride} {input} {out}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn im2col_hand_worked_2x3() {
        // x = [[1, 2, 3], [4, 5, 6]], 2x2 kernel, padding 0: two windows
        let x = Tensor::from_vec(vec![1.0f32, 2., 3., 4., 5., 6.], [1, 1, 2, 3]);
        let w = win(&[2, 3], &[2, 2], &[1, 1], &[0, 0], &[1, 1]);
        let cols = x.im2col(&w).unwrap();
        assert_eq!(cols.shape(), &[1, 4, 2]);
        assert_eq!(cols.to_vec::<f32>(), vec![1., 2., 2., 3., 4., 5., 5., 6.]);
        // fold sums the overlaps: 2 and 5 are read twice
        let back = cols.col2im(&w).unwrap();
        assert_eq!(back.to_vec::<f32>(), vec![1., 4., 3., 4., 10., 6.]);
    }

    #[test]
    fn im2col_matches_the_definition() {
        let mut g = crate::Generator::new(3);
        let cases: Vec<Window> = vec![
            win(&[7], &[3], &[2], &[1], &[2]),
            win(&[5, 6], &[3, 2], &[1, 2], &[1, 0], &[1, 2]),
            win(&[4, 5], &[2, 3], &[3, 1], &[2, 2], &[2, 1]),
            win(&[3, 4, 5], &[2, 2, 3], &[1, 2, 1], &[1, 0, 1], &[1, 1, 2]),
            // "same" windows (stride 1, rows as long as the input's): each tap's valid
            // rows are one copy with the row edges zeroed after it
            win(&[5, 6], &[3, 3], &[1, 1], &[1, 1], &[1, 1]),
            win(&[6, 6], &[3, 3], &[1, 1], &[2, 2], &[2, 2]),
            win(&[4, 1], &[3, 3], &[1, 1], &[1, 1], &[1, 1]),
            win(&[3, 4, 5], &[3, 3, 3], &[1, 1, 1], &[1, 1, 1], &[1, 1, 1]),
        ];
        for w in cases {
            let (b, c) = (2, 3);
            let mut shape = vec![b, c];
            shape.extend_from_slice(&w.input);
            let x = g.randn(&shape, DType::F64);
            let got = x.im2col(&w).unwrap().to_vec::<f64>();
            assert_eq!(got, naive_im2col(&x.to_vec::<f64>(), b, c, &w), "{w:?}");
            // the f32 path and a non-contiguous input give the same values
            let xt = x.transpose(0, 1).contiguous().transpose(0, 1);
            assert_eq!(xt.im2col(&w).unwrap().to_vec::<f64>(), got);
            let g32 = x
                .to_dtype(DType::F32)
                .im2col(&w)
                .unwrap()
                .to_dtype(DType::F64);
            let r: Vec<f64> = got.iter().map(|&v| v as f32 as f64).collect();
            assert_eq!(g32.to_vec::<f64>(), r);
        }
    }

    #[test]
    fn col2im_on_a_scratch_row_adds_what_col2im_adds() {
        let cases = [
            win(&[5, 6], &[3, 3], &[1, 1], &[1, 1], &[1, 1]),
            win(&[6, 6], &[3, 3], &[1, 1], &[2, 2], &[2, 2]),
            win(&[3, 4, 5], &[3, 3, 3], &[1, 1, 1], &[1, 1, 1], &[1, 1, 1]),
            win(&[5, 6], &[3, 2], &[1, 2], &[1, 0], &[1, 2]),
        ];
        for w in cases {
            let (w3, l) = (w.w3(), w.windows());
            for kk in 0..w.taps() {
                let row: Vec<f64> = (0..l).map(|i| (i * 7 % 11) as f64 - 4.5).collect();
                let mut want = vec![0.25; w.plane()];
                col2im_row(&w3, &row, kk, &mut want);
                let mut got = vec![0.25; w.plane()];
                col2im_row_scratch(&w3, &mut row.clone(), kk, &mut got);
                assert_eq!(got, want, "{w:?} tap {kk}");
            }
        }
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), y> == <x, col2im(y)> for random x, y
        let mut g = crate::Generator::new(5);
        let w = win(&[5, 6], &[3, 2], &[2, 1], &[1, 1], &[1, 2]);
        let x = g.randn([2, 3, 5, 6], DType::F64);
        let y = g.randn([2, 3 * w.taps(), w.windows()], DType::F64);
        let lhs = (x.im2col(&w).unwrap() * &y).sum_all().item::<f64>();
        let rhs = (&x * &y.col2im(&w).unwrap()).sum_all().item::<f64>();
        assert!((lhs - rhs).abs() < 1e-10, "{lhs} vs {rhs}");
    }

    #[test]
    fn im2col_and_col2im_gradcheck_to_second_order() {
        let mut g = crate::Generator::new(9);
        let opts = GradcheckOptions::default();
        let w = win(&[4, 5], &[2, 3], &[2, 1], &[1, 1], &[1, 2]);
        let x = g.randn([2, 2, 4, 5], DType::F64);
        gradcheck(|v| v[0].im2col(&w).unwrap(), std::slice::from_ref(&x), opts).unwrap();
        gradgradcheck(|v| v[0].im2col(&w).unwrap(), &[x], opts).unwrap();
        let y = g.randn([2, 2 * w.taps(), w.windows()], DType::F64);
        gradcheck(|v| v[0].col2im(&w).unwrap(), std::slice::from_ref(&y), opts).unwrap();
        gradgradcheck(|v| v[0].col2im(&w).unwrap(), &[y], opts).unwrap();
    }

    #[test]
    fn argmax_picks_the_first_maximum_and_skips_padding() {
        // 1x1x2x3 plane [[1, 3, 3], [0, -1, 2]], 2x2 windows, stride 1, padding 1 (3x4 windows)
        let x = Tensor::from_vec(vec![1.0f32, 3., 3., 0., -1., 2.], [1, 1, 2, 3]);
        let w = win(&[2, 3], &[2, 2], &[1, 1], &[1, 1], &[1, 1]);
        let idx = x.window_argmax(&w).unwrap();
        assert_eq!(idx.shape(), &[1, 1, 3, 4]);
        assert_eq!(
            idx.to_vec::<i64>(),
            vec![0, 1, 1, 2, 0, 1, 1, 2, 3, 3, 5, 5]
        );
        // windows of padding only get -1: kernel 2 dilated by 4 on size 2 with padding 2
        // has two windows, with taps at -2 and 2, and at -1 and 3
        let x = Tensor::from_vec(vec![1.0f32, 2.], [1, 1, 2]);
        let w = win(&[2], &[2], &[1], &[2], &[4]);
        assert_eq!(x.window_argmax(&w).unwrap().to_vec::<i64>(), vec![-1, -1]);
        // NaN wins
        let x = Tensor::from_vec(vec![1.0f32, f32::NAN, 5.], [1, 1, 3]);
        let w = win(&[3], &[3], &[1], &[0], &[1]);
        assert_eq!(x.window_argmax(&w).unwrap().to_vec::<i64>(), vec![1]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let w = win(&[4, 4], &[2, 2], &[1, 1], &[0, 0], &[1, 1]);
        let e = Tensor::zeros([1, 1, 4, 5], ()).im2col(&w).unwrap_err();
        assert_eq!(
            e.to_string(),
            "im2col: expected input of shape [B, C, 4, 4], got [1, 1, 4, 5]"
        );
        let e = Tensor::zeros([1, 5, 9], ()).col2im(&w).unwrap_err();
        assert_eq!(
            e.to_string(),
            "col2im: expected input of shape [B, C * 4, 9] (4 taps per window, 9 windows), got [1, 5, 9]"
        );
    }
}
