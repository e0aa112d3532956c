//! Reductions over any set of dims.
//!
//! Each output element folds its reduced sub-tensor in row-major order. When there are
//! few outputs but many reduced elements, the reduced range is cut into fixed blocks of
//! [`BLOCK`] elements whose partial results are combined in order: the block size never
//! depends on the thread count, so results are bit-identical at any number of threads.

use crate::cpu::parallel;
use crate::cpu::strided::for_each_offsets;
use crate::layout::{Dims, Layout};
use rayon::prelude::*;

/// Reduced elements per block when one output's reduction is split.
pub(crate) const BLOCK: usize = 1 << 14;

/// Reduces `src` (under `layout`) over the sorted, distinct `dims`; returns one
/// accumulator per kept element, row-major over the kept dims. `fold` receives the
/// accumulator, the element and its linear index in the reduced sub-space.
pub(crate) fn reduce<T, A>(
    src: &[T],
    layout: &Layout,
    dims: &[usize],
    init: A,
    fold: impl Fn(A, T, usize) -> A + Send + Sync,
    combine: impl Fn(A, A) -> A + Send + Sync,
) -> Vec<A>
where
    T: Copy + Send + Sync,
    A: Copy + Send + Sync,
{
    let (mut ks, mut kst, mut rs, mut rst) = (Dims::new(), Dims::new(), Dims::new(), Dims::new());
    for d in 0..layout.ndim() {
        if dims.contains(&d) {
            rs.push(layout.shape()[d]);
            rst.push(layout.strides()[d]);
        } else {
            ks.push(layout.shape()[d]);
            kst.push(layout.strides()[d]);
        }
    }
    let n_out: usize = ks.iter().product();
    let n_red: usize = rs.iter().product();
    if n_out > 1 && n_red > 1 && kept_are_one_run(&ks, &kst) {
        return reduce_rows(src, layout.offset(), (&rs, &rst), n_out, init, fold);
    }
    let mut bases = Vec::with_capacity(n_out);
    for_each_offsets(&ks, [&kst], [layout.offset()], 0..n_out, |_, [o]| {
        bases.push(o)
    });

    let fold_range = |base: usize, range: std::ops::Range<usize>| {
        let mut acc = init;
        for_each_offsets(&rs, [&rst], [base], range, |j, [o]| {
            acc = fold(acc, src[o], j)
        });
        acc
    };
    let blocked = n_red >= 2 * BLOCK && n_out < 4 * parallel::num_threads().max(4);
    if blocked {
        let n_blocks = n_red.div_ceil(BLOCK);
        return bases
            .iter()
            .map(|&base| {
                let block = |b: usize| fold_range(base, b * BLOCK..((b + 1) * BLOCK).min(n_red));
                let partials: Vec<A> = if parallel::num_threads() > 1 {
                    parallel::install(|| (0..n_blocks).into_par_iter().map(block).collect())
                } else {
                    (0..n_blocks).map(block).collect()
                };
                partials.into_iter().reduce(&combine).unwrap_or(init)
            })
            .collect();
    }
    if parallel::should_parallelize(n_out * n_red) && n_out > 1 {
        let min_len = (parallel::PAR_THRESHOLD / n_red.max(1)).max(1);
        parallel::install(|| {
            bases
                .par_iter()
                .with_min_len(min_len)
                .map(|&b| fold_range(b, 0..n_red))
                .collect()
        })
    } else {
        bases.iter().map(|&b| fold_range(b, 0..n_red)).collect()
    }
}

/// True when the kept dims, row-major, are one contiguous stretch of memory (stride 1):
/// the reduction is then over whole rows, e.g. the column sums of a `[N, D]` tensor.
fn kept_are_one_run(ks: &[usize], kst: &[usize]) -> bool {
    let mut expected = 1;
    for (&n, &s) in ks.iter().zip(kst).rev() {
        if n == 1 {
            continue;
        }
        if s != expected {
            return false;
        }
        expected *= n;
    }
    true
}

/// [`reduce`] when the kept elements are one contiguous run: walks the reduced index
/// in order and folds each row of `n_out` elements into the accumulators, so memory is
/// read in order (one output at a time would stride across every row). Each output
/// still folds its elements in row-major order of the reduced dims, so the result is
/// the same as the general path's; columns are split across threads above the
/// threshold.
fn reduce_rows<T, A>(
    src: &[T],
    offset: usize,
    (rs, rst): (&[usize], &[usize]),
    n_out: usize,
    init: A,
    fold: impl Fn(A, T, usize) -> A + Send + Sync,
) -> Vec<A>
where
    T: Copy + Send + Sync,
    A: Copy + Send + Sync,
{
    let n_red: usize = rs.iter().product();
    let mut accs = vec![init; n_out];
    let cols = if parallel::should_parallelize(n_out * n_red) {
        n_out.div_ceil(parallel::num_threads() * 4).max(64)
    } else {
        n_out
    };
    parallel::for_each_row(&mut accs, cols, 1, n_out * n_red, |c, part| {
        let first = c * cols;
        for_each_offsets(rs, [rst], [offset], 0..n_red, |j, [o]| {
            let row = &src[o + first..o + first + part.len()];
            for (a, &x) in part.iter_mut().zip(row) {
                *a = fold(*a, x, j);
            }
        });
    });
    accs
}

#[cfg(test)]
mod tests {
    use crate::{DType, Tensor};

    /// Reductions over leading dims (the row-wise path) equal the per-output walk
    /// (taken for the same data through a permuted copy), for sums, max and argmax.
    #[test]
    fn column_reductions_match_row_reductions_of_the_transpose() {
        let mut g = crate::Generator::new(3);
        let x = g.normal([37, 5, 70], 0.0, 1.0, DType::F64);
        let xt = x.permute([1, 2, 0]).contiguous(); // [5, 70, 37]
        assert_eq!(
            x.sum(0, false).to_vec::<f64>(),
            xt.sum(-1, false).to_vec::<f64>()
        );
        let rows = x.reshape([185, 70]).t().contiguous(); // [70, 185]
        assert_eq!(
            x.sum([0, 1].as_slice(), false).to_vec::<f64>(),
            rows.sum(-1, false).to_vec::<f64>()
        );
        assert_eq!(
            x.max(0, false).to_vec::<f64>(),
            xt.max(-1, false).to_vec::<f64>()
        );
        assert_eq!(
            x.argmax(0, false).to_vec::<i64>(),
            xt.argmax(-1, false).to_vec::<i64>()
        );
        // ties: argmax takes the first
        let t = Tensor::from_vec(vec![1.0f32, 2.0, 2.0, 2.0, 1.0, 0.0], [3, 2]);
        assert_eq!(t.argmax(0, false).to_vec::<i64>(), vec![1, 0]);
    }
}
