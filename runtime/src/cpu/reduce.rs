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
