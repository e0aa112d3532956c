//! Strided iteration: visiting the elements of one or more layouts in row-major order.

use crate::cpu::parallel;
use crate::cpu::vmath::{map_into, update_each, update_zip, zip_into};
use crate::layout::{Dims, Layout};
use crate::storage::BufferElement;
use rayon::prelude::*;
use smallvec::SmallVec;
use std::mem::MaybeUninit;

/// Merges adjacent dims that are contiguous with each other in *every* stride set and
/// drops size-1 dims, so the loops below run over as few, as long, dims as possible.
fn coalesce<const N: usize>(shape: &[usize], strides: [&[usize]; N]) -> (Dims, [Dims; N]) {
    let mut out_shape: Dims = SmallVec::new();
    let mut out_strides: [Dims; N] = std::array::from_fn(|_| SmallVec::new());
    for d in 0..shape.len() {
        if shape[d] == 1 {
            continue;
        }
        if let Some(&last) = out_shape.last() {
            let merge =
                (0..N).all(|k| *out_strides[k].last().unwrap_or(&0) == strides[k][d] * shape[d]);
            if merge {
                let n = out_shape.len() - 1;
                out_shape[n] = last * shape[d];
                for k in 0..N {
                    out_strides[k][n] = strides[k][d];
                }
                continue;
            }
        }
        out_shape.push(shape[d]);
        for k in 0..N {
            out_strides[k].push(strides[k][d]);
        }
    }
    (out_shape, out_strides)
}

/// Calls `f(i, offsets, len, inner)` for each run of consecutive linear indices in
/// `range` of `shape` that lies along the innermost (coalesced) dim: the run starts at
/// linear index `i`, where `offsets[k]` is the storage index under `strides[k]` starting
/// at `bases[k]`, and element `j < len` of the run is at `offsets[k] + j * inner[k]`.
///
/// Kernels specialise their inner loop on `inner` (both 1: two slices; 1 and 0: a slice
/// and a broadcast value), which is what lets the compiler vectorise broadcasting ops.
#[inline]
pub(crate) fn for_each_run<const N: usize>(
    shape: &[usize],
    strides: [&[usize]; N],
    bases: [usize; N],
    range: std::ops::Range<usize>,
    mut f: impl FnMut(usize, [usize; N], usize, [usize; N]),
) {
    if range.start >= range.end {
        return;
    }
    let (shape, strides) = coalesce(shape, strides);
    let nd = shape.len();
    if nd == 0 {
        f(range.start, bases, 1, [0; N]);
        return;
    }
    let mut idx: Dims = SmallVec::from_elem(0, nd);
    let mut rem = range.start;
    let mut off = bases;
    for d in (0..nd).rev() {
        idx[d] = rem % shape[d];
        rem /= shape[d];
        for k in 0..N {
            off[k] += idx[d] * strides[k][d];
        }
    }
    let inner = shape[nd - 1];
    let inner_s: [usize; N] = std::array::from_fn(|k| strides[k][nd - 1]);
    let mut lin = range.start;
    while lin < range.end {
        let first = idx[nd - 1];
        let run = (inner - first).min(range.end - lin);
        f(lin, off, run, inner_s);
        lin += run;
        if lin >= range.end {
            break;
        }
        // back to the start of the row, then carry into the outer dims
        for k in 0..N {
            off[k] -= first * inner_s[k];
        }
        idx[nd - 1] = 0;
        let mut d = nd - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            for k in 0..N {
                off[k] += strides[k][d];
            }
            if idx[d] < shape[d] {
                break;
            }
            for k in 0..N {
                off[k] -= shape[d] * strides[k][d];
            }
            idx[d] = 0;
        }
    }
}

/// Calls `f(i, offsets)` for the linear indices `i` in `range` of `shape`, where
/// `offsets[k]` is the storage index of element `i` under `strides[k]` starting at
/// `bases[k]`.
#[inline]
pub(crate) fn for_each_offsets<const N: usize>(
    shape: &[usize],
    strides: [&[usize]; N],
    bases: [usize; N],
    range: std::ops::Range<usize>,
    mut f: impl FnMut(usize, [usize; N]),
) {
    for_each_run(shape, strides, bases, range, |lin, mut o, len, inner| {
        for j in 0..len {
            f(lin + j, o);
            for k in 0..N {
                o[k] += inner[k];
            }
        }
    });
}

/// Runs `fill(start, chunk)` over consecutive chunks of `out` that together cover it:
/// across the CPU pool above the parallel threshold, as one call otherwise.
fn chunked<U: Send>(out: &mut [U], fill: impl Fn(usize, &mut [U]) + Send + Sync) {
    let n = out.len();
    if parallel::should_parallelize(n) {
        let chunk = parallel::chunk_len(n);
        parallel::install(|| {
            out.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(c, dst)| fill(c * chunk, dst))
        });
    } else {
        fill(0, out);
    }
}

/// A vector of `n` elements written by `fill(start, chunk)` over chunks covering it (in
/// parallel above the threshold), without first zeroing the memory.
///
/// Every `fill` passed here writes each element of its chunk: it walks `for_each_run`
/// over exactly `start..start + chunk.len()`, whose runs cover that range once.
fn collect_chunked<U: BufferElement>(
    n: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<U>]) + Send + Sync,
) -> Vec<U> {
    let mut v = crate::cpu::pool::take(n);
    chunked(&mut v.spare_capacity_mut()[..n], fill);
    // SAFETY: `fill` initialised all `n` elements (see above); a panic inside it
    // leaves the length at 0, so nothing uninitialised is ever read or dropped.
    unsafe { v.set_len(n) };
    v
}

/// The elements of `src` under `layout`, mapped by `f`, in row-major order.
pub(crate) fn gather_map<T: Copy + Send + Sync, U: BufferElement>(
    src: &[T],
    layout: &Layout,
    f: impl Fn(T) -> U + Send + Sync,
) -> Vec<U> {
    let (shape, strides, base) = (layout.shape(), layout.strides(), layout.offset());
    collect_chunked(layout.numel(), |start, dst| {
        for_each_run(
            shape,
            [strides],
            [base],
            start..start + dst.len(),
            |i, [o], len, [s]| {
                let d = &mut dst[i - start..i - start + len];
                if s == 1 {
                    map_into(d, &src[o..o + len], &f);
                } else {
                    for (j, d) in d.iter_mut().enumerate() {
                        d.write(f(src[o + j * s]));
                    }
                }
            },
        );
    })
}

/// The elements of `src` under `layout`, in row-major order.
pub(crate) fn gather<T: BufferElement>(src: &[T], layout: &Layout) -> Vec<T> {
    gather_map(src, layout, |x| x)
}

/// Fills `out` (row-major over `layout.shape()`) with `f(linear_index, storage_offset)`,
/// in parallel above the threshold.
pub(crate) fn fill_strided<U: Send>(
    out: &mut [U],
    layout: &Layout,
    f: impl Fn(usize, usize) -> U + Send + Sync,
) {
    let (shape, strides, base) = (layout.shape(), layout.strides(), layout.offset());
    chunked(out, |start, dst| {
        for_each_offsets(
            shape,
            [strides],
            [base],
            start..start + dst.len(),
            |i, [o]| {
                dst[i - start] = f(i, o);
            },
        );
    });
}

/// `out[i] = f(a[i], b[i])` (row-major over the broadcast shape) for two layouts already
/// broadcast to one shape, in parallel above the threshold. The inner loop is
/// specialised for the common run shapes (both contiguous, or one side a broadcast
/// value), so bias adds, scalar ops and row/column broadcasts vectorise.
pub(crate) fn zip_map<T: Copy + Send + Sync, U: BufferElement>(
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    f: impl Fn(T, T) -> U + Send + Sync,
) -> Vec<U> {
    let shape = la.shape();
    let st = [la.strides(), lb.strides()];
    let bases = [la.offset(), lb.offset()];
    collect_chunked(la.numel(), |start, dst| {
        for_each_run(
            shape,
            st,
            bases,
            start..start + dst.len(),
            |i, [oa, ob], len, inner| {
                let o = &mut dst[i - start..i - start + len];
                match inner {
                    [1, 1] => zip_into(o, &a[oa..oa + len], &b[ob..ob + len], &f),
                    [1, 0] => {
                        let y = b[ob];
                        map_into(o, &a[oa..oa + len], &|x| f(x, y));
                    }
                    [0, 1] => {
                        let x = a[oa];
                        map_into(o, &b[ob..ob + len], &|y| f(x, y));
                    }
                    [sa, sb] => {
                        for (j, o) in o.iter_mut().enumerate() {
                            o.write(f(a[oa + j * sa], b[ob + j * sb]));
                        }
                    }
                }
            },
        );
    })
}

/// `out[i] = f(a_offset, b_offset)` (row-major over the shape of two layouts broadcast
/// to one shape), for kernels that index with the offsets themselves (`gather`).
pub(crate) fn map_offsets2<U: BufferElement>(
    la: &Layout,
    lb: &Layout,
    f: impl Fn(usize, usize) -> U + Send + Sync,
) -> Vec<U> {
    let st = [la.strides(), lb.strides()];
    let bases = [la.offset(), lb.offset()];
    collect_chunked(la.numel(), |start, dst| {
        for_each_run(
            la.shape(),
            st,
            bases,
            start..start + dst.len(),
            |i, [oa, ob], len, [sa, sb]| {
                for (j, o) in dst[i - start..i - start + len].iter_mut().enumerate() {
                    o.write(f(oa + j * sa, ob + j * sb));
                }
            },
        );
    })
}

/// `dst[d] = f(dst[d], src[s])` over the elements of `ld` (which must not overlap
/// itself) with `ls` broadcast to the same shape: the in-place form of [`zip_map`].
/// Parallel above the threshold when `ld` is contiguous.
pub(crate) fn zip_assign<T: Copy + Send + Sync>(
    dst: &mut [T],
    ld: &Layout,
    src: &[T],
    ls: &Layout,
    f: impl Fn(T, T) -> T + Send + Sync,
) {
    let assign = |d: &mut [T], od: usize, os: usize, len: usize, inner: [usize; 2]| match inner {
        [1, 1] => update_zip(&mut d[od..od + len], &src[os..os + len], &f),
        [1, 0] => {
            let y = src[os];
            update_each(&mut d[od..od + len], &|x| f(x, y));
        }
        [sd, ss] => {
            for j in 0..len {
                let x = &mut d[od + j * sd];
                *x = f(*x, src[os + j * ss]);
            }
        }
    };
    let shape = ld.shape();
    if let Some(r) = ld.contiguous_range() {
        // the destination is a slice: chunk it like an output
        let contiguous = crate::layout::contiguous_strides(shape);
        chunked(&mut dst[r], |start, d| {
            for_each_run(
                shape,
                [&contiguous, ls.strides()],
                [0, ls.offset()],
                start..start + d.len(),
                |_, [od, os], len, inner| assign(d, od - start, os, len, inner),
            );
        });
    } else {
        for_each_run(
            shape,
            [ld.strides(), ls.strides()],
            [ld.offset(), ls.offset()],
            0..ld.numel(),
            |_, [od, os], len, inner| assign(dst, od, os, len, inner),
        );
    }
}

/// `out[i] = f(c[i], a[i], b[i])` for three layouts broadcast to one shape (`where`,
/// `masked_fill`), in parallel above the threshold.
pub(crate) fn zip3_map<C: Copy + Send + Sync, T: Copy + Send + Sync, U: BufferElement>(
    (c, lc): (&[C], &Layout),
    (a, la): (&[T], &Layout),
    (b, lb): (&[T], &Layout),
    f: impl Fn(C, T, T) -> U + Send + Sync,
) -> Vec<U> {
    let shape = la.shape();
    let st = [lc.strides(), la.strides(), lb.strides()];
    let bases = [lc.offset(), la.offset(), lb.offset()];
    collect_chunked(la.numel(), |start, dst| {
        for_each_run(
            shape,
            st,
            bases,
            start..start + dst.len(),
            |i, [oc, oa, ob], len, inner| {
                let o = &mut dst[i - start..i - start + len];
                match inner {
                    [1, 1, 0] => {
                        let y = b[ob];
                        let (cs, xs) = (&c[oc..oc + len], &a[oa..oa + len]);
                        for ((o, &m), &x) in o.iter_mut().zip(cs).zip(xs) {
                            o.write(f(m, x, y));
                        }
                    }
                    [1, 1, 1] => {
                        let (cs, xs, ys) = (&c[oc..oc + len], &a[oa..oa + len], &b[ob..ob + len]);
                        for (((o, &m), &x), &y) in o.iter_mut().zip(cs).zip(xs).zip(ys) {
                            o.write(f(m, x, y));
                        }
                    }
                    [1, 0, 1] => {
                        // `masked_fill`: a fill value between the mask and the data
                        let x = a[oa];
                        let (cs, ys) = (&c[oc..oc + len], &b[ob..ob + len]);
                        for ((o, &m), &y) in o.iter_mut().zip(cs).zip(ys) {
                            o.write(f(m, x, y));
                        }
                    }
                    [0, 1, 1] => {
                        let m = c[oc];
                        zip_into(o, &a[oa..oa + len], &b[ob..ob + len], &|x, y| f(m, x, y));
                    }
                    [sc, sa, sb] => {
                        for (j, o) in o.iter_mut().enumerate() {
                            o.write(f(c[oc + j * sc], a[oa + j * sa], b[ob + j * sb]));
                        }
                    }
                }
            },
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visits_permuted_layout_in_row_major_order() {
        let l = Layout::contiguous(&[2, 3, 4]).permute(&[2, 0, 1]).unwrap();
        let src: Vec<i64> = (0..24).collect();
        let got = gather(&src, &l);
        let mut want = vec![];
        for k in 0..4 {
            for i in 0..2 {
                for j in 0..3 {
                    want.push(i * 12 + j * 4 + k);
                }
            }
        }
        assert_eq!(got, want);
    }

    /// The specialised inner loops of `zip_map` / `zip_assign` / `zip3_map` against the
    /// definition, for layouts whose runs hit each case (both contiguous, a broadcast
    /// row or column, a transposed operand) and sizes that take the parallel chunks.
    #[test]
    fn zip_kernels_match_the_definition() {
        /// The elements of `v` under `l`, row-major.
        fn at<T: Copy>(l: &Layout, v: &[T]) -> Vec<T> {
            let mut out = vec![];
            for_each_offsets(
                l.shape(),
                [l.strides()],
                [l.offset()],
                0..l.numel(),
                |_, [o]| out.push(v[o]),
            );
            out
        }
        for (r, c) in [(3usize, 5usize), (300, 257)] {
            let n = r * c;
            let a: Vec<i64> = (0..n as i64).collect();
            let b: Vec<i64> = (0..n as i64).map(|x| 3 * x + 1).collect();
            let full = Layout::contiguous(&[r, c]);
            let layouts = [
                full.clone(),
                Layout::contiguous(&[c, r]).permute(&[1, 0]).unwrap(),
                Layout::contiguous(&[c]).broadcast_to("t", &[r, c]).unwrap(),
                Layout::contiguous(&[r, 1])
                    .broadcast_to("t", &[r, c])
                    .unwrap(),
                Layout::contiguous(&[]).broadcast_to("t", &[r, c]).unwrap(),
            ];
            for la in &layouts {
                for lb in &layouts {
                    let (xa, xb) = (at(la, &a), at(lb, &b));
                    let want: Vec<i64> = xa.iter().zip(&xb).map(|(x, y)| x * 7 - y).collect();
                    assert_eq!(zip_map(&a, la, &b, lb, |x, y| x * 7 - y), want);
                    // a full mask, and one broadcast along the rows (a constant per run)
                    let mask: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
                    let row_mask = Layout::contiguous(&[r, 1])
                        .broadcast_to("t", &[r, c])
                        .unwrap();
                    for lm in [&full, &row_mask] {
                        let m = at(lm, &mask);
                        let want3: Vec<i64> =
                            (0..n).map(|i| if m[i] { xa[i] } else { xb[i] }).collect();
                        let got3 = zip3_map(
                            (&mask, lm),
                            (&a, la),
                            (&b, lb),
                            |m, x, y| {
                                if m {
                                    x
                                } else {
                                    y
                                }
                            },
                        );
                        assert_eq!(got3, want3);
                    }
                    // in place, into a destination that does not overlap itself
                    if la.strides().iter().all(|&s| s != 0) {
                        let mut d = a.clone();
                        zip_assign(&mut d, la, &b, lb, |x, y| x * 7 - y);
                        assert_eq!(at(la, &d), want);
                    }
                }
            }
        }
    }

    #[test]
    fn sub_ranges_agree_with_full_walk() {
        let l = Layout::contiguous(&[3, 5, 7])
            .slice(1, 1, 3, 1)
            .permute(&[1, 2, 0])
            .unwrap();
        let mut all = vec![];
        for_each_offsets(
            l.shape(),
            [l.strides()],
            [l.offset()],
            0..l.numel(),
            |_, [o]| all.push(o),
        );
        for start in 0..l.numel() {
            for end in start..=l.numel() {
                let mut part = vec![];
                for_each_offsets(
                    l.shape(),
                    [l.strides()],
                    [l.offset()],
                    start..end,
                    |_, [o]| part.push(o),
                );
                assert_eq!(part, all[start..end]);
            }
        }
    }
}
