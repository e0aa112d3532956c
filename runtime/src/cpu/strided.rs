//! Strided iteration: visiting the elements of one or more layouts in row-major order.

use crate::cpu::parallel;
use crate::layout::{Dims, Layout};
use rayon::prelude::*;
use smallvec::SmallVec;

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
    if range.start >= range.end {
        return;
    }
    let (shape, strides) = coalesce(shape, strides);
    let nd = shape.len();
    if nd == 0 {
        f(range.start, bases);
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
        let run = (inner - idx[nd - 1]).min(range.end - lin);
        let mut o = off;
        for j in 0..run {
            f(lin + j, o);
            for k in 0..N {
                o[k] += inner_s[k];
            }
        }
        lin += run;
        if lin >= range.end {
            break;
        }
        // carry into the outer dims
        for k in 0..N {
            off[k] = o[k] - inner * inner_s[k];
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

/// The elements of `src` under `layout`, mapped by `f`, in row-major order.
pub(crate) fn gather_map<T: Copy + Send + Sync, U: Copy + Send + Sync + Default>(
    src: &[T],
    layout: &Layout,
    f: impl Fn(T) -> U + Send + Sync,
) -> Vec<U> {
    let n = layout.numel();
    if let Some(r) = layout.contiguous_range() {
        let s = &src[r];
        if parallel::should_parallelize(n) {
            return parallel::install(|| {
                let mut out = Vec::with_capacity(n);
                s.par_iter()
                    .with_min_len(4096)
                    .map(|&x| f(x))
                    .collect_into_vec(&mut out);
                out
            });
        }
        return s.iter().map(|&x| f(x)).collect();
    }
    let mut out = vec![U::default(); n];
    fill_strided(&mut out, layout, |i, o| {
        let _ = i;
        f(src[o])
    });
    out
}

/// The elements of `src` under `layout`, in row-major order.
pub(crate) fn gather<T: Copy + Send + Sync + Default>(src: &[T], layout: &Layout) -> Vec<T> {
    gather_map(src, layout, |x| x)
}

/// Fills `out` (row-major over `layout.shape()`) with `f(linear_index, storage_offset)`,
/// in parallel above the threshold.
pub(crate) fn fill_strided<U: Send>(
    out: &mut [U],
    layout: &Layout,
    f: impl Fn(usize, usize) -> U + Send + Sync,
) {
    let n = out.len();
    let shape = layout.shape();
    let strides = layout.strides();
    if parallel::should_parallelize(n) {
        let chunk = parallel::chunk_len(n);
        parallel::install(|| {
            out.par_chunks_mut(chunk).enumerate().for_each(|(c, dst)| {
                let start = c * chunk;
                for_each_offsets(
                    shape,
                    [strides],
                    [layout.offset()],
                    start..start + dst.len(),
                    |i, [o]| {
                        dst[i - start] = f(i, o);
                    },
                );
            })
        });
    } else {
        for_each_offsets(shape, [strides], [layout.offset()], 0..n, |i, [o]| {
            out[i] = f(i, o);
        });
    }
}

/// Fills `out` (row-major over `shape`) with `f(a_offset, b_offset)` for two layouts
/// already broadcast to `shape`.
pub(crate) fn fill_strided2<U: Send>(
    out: &mut [U],
    la: &Layout,
    lb: &Layout,
    f: impl Fn(usize, usize) -> U + Send + Sync,
) {
    let n = out.len();
    let shape = la.shape();
    let st = [la.strides(), lb.strides()];
    let bases = [la.offset(), lb.offset()];
    if parallel::should_parallelize(n) {
        let chunk = parallel::chunk_len(n);
        parallel::install(|| {
            out.par_chunks_mut(chunk).enumerate().for_each(|(c, dst)| {
                let start = c * chunk;
                for_each_offsets(shape, st, bases, start..start + dst.len(), |i, [a, b]| {
                    dst[i - start] = f(a, b);
                });
            })
        });
    } else {
        for_each_offsets(shape, st, bases, 0..n, |i, [a, b]| {
            out[i] = f(a, b);
        });
    }
}

/// Fills `out` with `f(a, b, c offsets)` for three layouts broadcast to one shape.
pub(crate) fn fill_strided3<U: Send>(
    out: &mut [U],
    l: [&Layout; 3],
    f: impl Fn(usize, usize, usize) -> U + Send + Sync,
) {
    let n = out.len();
    let shape = l[0].shape();
    let st = [l[0].strides(), l[1].strides(), l[2].strides()];
    let bases = [l[0].offset(), l[1].offset(), l[2].offset()];
    if parallel::should_parallelize(n) {
        let chunk = parallel::chunk_len(n);
        parallel::install(|| {
            out.par_chunks_mut(chunk).enumerate().for_each(|(c, dst)| {
                let start = c * chunk;
                for_each_offsets(
                    shape,
                    st,
                    bases,
                    start..start + dst.len(),
                    |i, [a, b, cc]| {
                        dst[i - start] = f(a, b, cc);
                    },
                );
            })
        });
    } else {
        for_each_offsets(shape, st, bases, 0..n, |i, [a, b, c]| {
            out[i] = f(a, b, c);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visits_permuted_layout_in_row_major_order() {
        let l = Layout::contiguous(&[2, 3, 4]).permute(&[2, 0, 1]).unwrap();
        let src: Vec<usize> = (0..24).collect();
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
