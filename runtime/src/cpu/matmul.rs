//! Matrix products on host buffers: Flint's own AVX2/FMA kernel (`sgemm`) for f32 where
//! it beats the `gemm` crate, `gemm` for the other f32 products and f64/f16 (bf16 goes
//! through f32 one level up), a plain loop for i64.
//!
//! Operands arrive as strided layouts `batch ++ [m, k]` and `batch ++ [k, n]` whose batch
//! dims are already broadcast to one shape. Each matrix is handed to `gemm` with its own
//! row and column strides, so transposed or permuted inputs are not copied (the caller
//! makes a matrix contiguous only when neither of its strides is 1, see
//! `has_unit_stride`). The output is always a new contiguous `batch ++ [m, n]` buffer.
//!
//! Threads: one large product is split across the Flint pool by `gemm_threaded`
//! (`sgemm`'s own row/column split, `gemm`'s threads, or a column split for few rows); a
//! batch of small products is split across the pool by batch with each product
//! single-threaded; anything below the thresholds stays on the calling thread.

use crate::cpu::parallel;
use crate::cpu::sgemm;
use crate::cpu::strided::for_each_offsets;
use crate::dtype::{DType, NumElement};
use crate::layout::Layout;
use crate::storage::CpuBuffer;
use gemm::Parallelism;
use half::f16;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Multiply-adds (`m * n * k`) from which one product runs multi-threaded inside `gemm`.
///
/// `gemm` itself only splits a product whose blocks exceed `48 * 48 * 256` (≈ 2¹⁹)
/// multiply-adds, so below ≈ 2¹⁸ asking for threads buys nothing and costs a hand-off
/// to the pool (a few µs, while a 64³ = 2¹⁸ product takes ≈ 10 µs on one AVX2 core).
pub const GEMM_PAR_THRESHOLD: usize = 1 << 18;

/// Total multiply-adds (`batch * m * n * k`) from which a batch of products that are each
/// below [`GEMM_PAR_THRESHOLD`] is split across threads by batch. 2¹⁵ multiply-adds take
/// a few µs on one core, the same order as sending work to the pool.
pub const BATCH_PAR_THRESHOLD: usize = 1 << 15;

/// True when a matrix layout (the last two dims of `l`, which must have at least two) has
/// a unit stride in one of them (dims of size 1 count as unit-stride), so `gemm` can read
/// it in place.
pub(crate) fn has_unit_stride(l: &Layout) -> bool {
    let nd = l.ndim();
    let (rows, cols) = (l.shape()[nd - 2], l.shape()[nd - 1]);
    let (rs, cs) = (l.strides()[nd - 2], l.strides()[nd - 1]);
    rows <= 1 || cols <= 1 || rs == 1 || cs == 1
}

/// The batch of products `a @ b` of `la = batch ++ [m, k]` and `lb = batch ++ [k, n]`
/// (same batch shape), as a contiguous `batch ++ [m, n]` buffer of the same dtype.
/// Supports f32, f64, f16 and i64 buffers.
pub(crate) fn matmul(a: &CpuBuffer, la: &Layout, b: &CpuBuffer, lb: &Layout) -> CpuBuffer {
    let p = Plan::new(la, lb);
    match (a, b) {
        (CpuBuffer::F32(a), CpuBuffer::F32(b)) => CpuBuffer::F32(gemm_batched(&p, a, b, None)),
        (CpuBuffer::F64(a), CpuBuffer::F64(b)) => CpuBuffer::F64(gemm_batched(&p, a, b, None)),
        (CpuBuffer::F16(a), CpuBuffer::F16(b)) => {
            CpuBuffer::F16(gemm_batched::<f16>(&p, a, b, None))
        }
        (CpuBuffer::I64(a), CpuBuffer::I64(b)) => CpuBuffer::I64(int_batched(&p, a, b)),
        (a, b) => panic!(
            "internal: matmul kernel called with {} and {} buffers",
            a.dtype(),
            b.dtype()
        ),
    }
}

/// [`matmul`] plus a bias of `n` contiguous elements from `bias_offset` in `bias`
/// (`bias[bias_offset + j]` added to column `j` of every product) as the results are
/// stored: a linear layer's `x·Wᵀ + b` in one pass.
/// On [`sgemm`] the bias is added to the finished sums, so the result is bit-identical to
/// the product followed by the addition; on the `gemm` crate each product starts from
/// the bias rows. f32 and f64 buffers.
pub(crate) fn matmul_bias(
    a: &CpuBuffer,
    la: &Layout,
    b: &CpuBuffer,
    lb: &Layout,
    bias: &CpuBuffer,
    bias_offset: usize,
) -> CpuBuffer {
    let p = Plan::new(la, lb);
    let range = bias_offset..bias_offset + p.n;
    match (a, b, bias) {
        (CpuBuffer::F32(a), CpuBuffer::F32(b), CpuBuffer::F32(c)) => {
            CpuBuffer::F32(gemm_batched(&p, a, b, Some(&c[range])))
        }
        (CpuBuffer::F64(a), CpuBuffer::F64(b), CpuBuffer::F64(c)) => {
            CpuBuffer::F64(gemm_batched(&p, a, b, Some(&c[range])))
        }
        (a, b, c) => panic!(
            "internal: matmul_bias kernel called with {}, {} and {} buffers",
            a.dtype(),
            b.dtype(),
            c.dtype()
        ),
    }
}

/// Strides of one matrix operand.
#[derive(Clone, Copy, Debug)]
struct Mat {
    rs: usize,
    cs: usize,
}

/// The shape of a batched product after planning: `offsets` holds the storage offsets of
/// each batch's `a` and `b` matrices, `m` rows each.
struct Plan {
    m: usize,
    k: usize,
    n: usize,
    a: Mat,
    b: Mat,
    offsets: Vec<(usize, usize)>,
}

impl Plan {
    fn new(la: &Layout, lb: &Layout) -> Plan {
        let nd = la.ndim();
        debug_assert!(nd >= 2 && lb.ndim() == nd);
        let (m, k, n) = (la.shape()[nd - 2], la.shape()[nd - 1], lb.shape()[nd - 1]);
        debug_assert_eq!(lb.shape()[nd - 2], k);
        let batch = &la.shape()[..nd - 2];
        debug_assert_eq!(batch, &lb.shape()[..nd - 2]);
        let (sa, sb) = (la.strides(), lb.strides());
        // a dim of size 1 is never stepped along: give it stride 1 so gemm sees a unit stride
        let unit = |size: usize, stride: usize| if size <= 1 { 1 } else { stride };
        let mut a = Mat {
            rs: unit(m, sa[nd - 2]),
            cs: unit(k, sa[nd - 1]),
        };
        let b = Mat {
            rs: unit(k, sb[nd - 2]),
            cs: unit(n, sb[nd - 1]),
        };

        // `b` shared by every batch and `a`'s batch dims and rows one evenly strided run:
        // one product of `batch * m` rows (PyTorch folds `[.., m, k] @ [k, n]` this way).
        if !batch.is_empty()
            && m > 0
            && let Some(rs) = fold_rows(batch, &sa[..nd - 2], m, a.rs, &sb[..nd - 2])
        {
            let rows = batch.iter().product::<usize>() * m;
            a.rs = unit(rows, rs);
            return Plan {
                m: rows,
                k,
                n,
                a,
                b,
                offsets: vec![(la.offset(), lb.offset())],
            };
        }

        let count: usize = batch.iter().product();
        let mut offsets = Vec::with_capacity(count);
        for_each_offsets(
            batch,
            [&sa[..nd - 2], &sb[..nd - 2]],
            [la.offset(), lb.offset()],
            0..count,
            |_, [oa, ob]| offsets.push((oa, ob)),
        );
        Plan {
            m,
            k,
            n,
            a,
            b,
            offsets,
        }
    }

    fn batches(&self) -> usize {
        self.offsets.len()
    }
}

/// The row stride of `a`'s batch dims and rows merged into one dim, when `b` does not
/// vary over the batch and `a`'s batch dims and rows step through storage evenly.
fn fold_rows(
    batch: &[usize],
    a_batch: &[usize],
    m: usize,
    a_rs: usize,
    b_batch: &[usize],
) -> Option<usize> {
    let b_shared = batch.iter().zip(b_batch).all(|(&d, &s)| d <= 1 || s == 0);
    if !b_shared {
        return None;
    }
    // walk from the rows outwards: each kept dim must step `size * stride` of the next
    let (mut size, mut stride) = (m, a_rs);
    for (&d, &s) in batch.iter().zip(a_batch).rev() {
        if d <= 1 {
            continue;
        }
        if size == 1 {
            (size, stride) = (d, s);
        } else if s == size * stride && s != 0 {
            size *= d;
        } else {
            return None;
        }
    }
    Some(stride)
}

/// One `m × k` by `k × n` product on the calling thread, for fused kernels that multiply
/// small blocks themselves (attention, RNN cells): `dst[i * dst_rs + j]` is set to (or,
/// with `accumulate`, has added to it) `Σ_p a[i * a_rs + p * a_cs] · b[p * b_rs + j * b_cs]`.
///
/// # Safety
/// `dst` must be valid for reads and writes at every `i * dst_rs + j` (`i < m`, `j < n`)
/// (it may be uninitialised when `accumulate` is false), `a` valid for reads at every
/// `i * a_rs + p * a_cs` and `b` at every `p * b_rs + j * b_cs` (`p < k`), and `dst` must
/// not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_serial<T: NumElement>(
    m: usize,
    k: usize,
    n: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    a: *const T,
    (a_rs, a_cs): (usize, usize),
    b: *const T,
    (b_rs, b_cs): (usize, usize),
) {
    let (am, bm) = (Mat { rs: a_rs, cs: a_cs }, Mat { rs: b_rs, cs: b_cs });
    // SAFETY: the caller upholds the contract (see `# Safety` above).
    unsafe {
        gemm_into(
            m,
            k,
            n,
            dst,
            dst_rs,
            accumulate,
            a,
            am,
            b,
            bm,
            std::ptr::null(),
            Parallelism::None,
        )
    }
}

/// One product through [`sgemm`] where it wins, else the `gemm` crate, setting or adding
/// to `dst` (`accumulate`); the body of [`gemm_serial`] and [`gemm_threaded`]. Unless
/// `bias` is null (then `accumulate` must be false), `bias[j]` is added to column `j`:
/// by `sgemm` onto the finished sums (the bits of the product followed by the add), on
/// the `gemm` crate by starting from the bias rows.
///
/// # Safety
/// As [`gemm_serial`], with `par` the threads gemm may use, and `bias` null or valid for
/// reads of `n` elements.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into<T: NumElement>(
    m: usize,
    k: usize,
    n: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    a: *const T,
    am: Mat,
    b: *const T,
    bm: Mat,
    bias: *const T,
    par: Parallelism,
) {
    debug_assert!(bias.is_null() || !accumulate);
    // the bias rows, which the `gemm` crate (or nothing, for `k = 0`) adds to
    let start_from_bias = || {
        for i in 0..m {
            for j in 0..n {
                // SAFETY: inside `dst` and `bias` by the caller's contract.
                unsafe { dst.add(i * dst_rs + j).write(*bias.add(j)) };
            }
        }
    };
    if k == 0 {
        if !bias.is_null() {
            start_from_bias();
        } else if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: inside `dst` by the caller's contract.
                    unsafe { dst.add(i * dst_rs + j).write(T::zero()) };
                }
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if uses_sgemm::<T>(m, k, n) {
        let threads = match par {
            Parallelism::Rayon(t) => t.max(1),
            _ => 1,
        };
        // SAFETY: `T` is f32 (checked by `uses_sgemm`, which also checked the CPU
        // features); the caller upholds the pointer contract, which is `sgemm`'s.
        unsafe {
            sgemm::sgemm(
                m,
                k,
                n,
                dst as *mut f32,
                dst_rs,
                accumulate,
                a as *const f32,
                (am.rs, am.cs),
                b as *const f32,
                (bm.rs, bm.cs),
                bias as *const f32,
                threads,
            )
        };
        return;
    }
    let accumulate = if bias.is_null() {
        accumulate
    } else {
        start_from_bias();
        true
    };
    // SAFETY: the caller upholds `gemm`'s contract (see `# Safety` above); with
    // `accumulate` gemm computes `dst = 1 · dst + 1 · a b`, otherwise `dst = a b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a,
            am.cs as isize,
            am.rs as isize,
            b,
            bm.cs as isize,
            bm.rs as isize,
            if accumulate { T::one() } else { T::zero() },
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// Whether an `m × k` by `k × n` product of `T` runs in [`sgemm`] (f32 on a CPU with AVX2
/// and FMA, at shapes where it beats `gemm`) rather than in the `gemm` crate.
fn uses_sgemm<T: NumElement>(m: usize, k: usize, n: usize) -> bool {
    T::DTYPE == DType::F32 && sgemm::available() && sgemm::wins(m, k, n)
}

/// Rows up to which one large product is split by columns across the pool (see
/// `column_blocks`) rather than threaded inside `gemm`.
pub const COL_SPLIT_MAX_M: usize = 96;

/// Column blocks are multiples of this many columns (a multiple of every `gemm`
/// microkernel's width), so no block ends in a partial register tile.
const COL_ALIGN: usize = 16;

/// Into how many column blocks a product of `m` rows and `n` columns is split across
/// `threads` threads, or 1 to leave the threading to `gemm`.
///
/// `gemm` parallelises the micro-tiles of each `nc`-column panel and joins its threads
/// once per panel and depth block; with few rows each panel is a few µs of work, so for
/// an RNN step's `[32, 256] × [256, 1024]` two threads ran no faster than one. Split by
/// columns, each thread runs one single-threaded `gemm` over its block: one hand-off per
/// product. Each output element is summed in the same order as on one thread for the RNN
/// shapes (tested); `gemm`'s vector path (`m = 1`) may round differently.
fn column_blocks(m: usize, n: usize, threads: usize) -> usize {
    if threads <= 1 || m > COL_SPLIT_MAX_M {
        return 1;
    }
    // at least two aligned tiles of columns per block
    threads.min(n / (2 * COL_ALIGN)).max(1)
}

/// One product as [`gemm_threaded`] computes it when `threaded`, else as [`gemm_serial`]:
/// for callers that decide per product whether the pool takes it (the batched matmul,
/// the convolution).
///
/// # Safety
/// As [`gemm_serial`].
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn gemm<T: NumElement>(
    threaded: bool,
    m: usize,
    k: usize,
    n: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    a: *const T,
    a_st: (usize, usize),
    b: *const T,
    b_st: (usize, usize),
) {
    // SAFETY: the caller upholds the contract.
    let null = std::ptr::null();
    unsafe {
        gemm_with(
            threaded, m, k, n, dst, dst_rs, accumulate, a, a_st, b, b_st, null,
        )
    }
}

/// [`gemm`] plus `bias` (null, or `n` elements added to every row; then `accumulate`
/// must be false), as [`gemm_into`] adds it.
///
/// # Safety
/// As [`gemm_serial`], and `bias` null or valid for reads of `n` elements.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_with<T: NumElement>(
    threaded: bool,
    m: usize,
    k: usize,
    n: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    a: *const T,
    (a_rs, a_cs): (usize, usize),
    b: *const T,
    (b_rs, b_cs): (usize, usize),
    bias: *const T,
) {
    let (am, bm) = (Mat { rs: a_rs, cs: a_cs }, Mat { rs: b_rs, cs: b_cs });
    // SAFETY: the caller upholds the contract.
    unsafe {
        if threaded {
            gemm_threaded(m, k, n, dst, dst_rs, accumulate, a, am, b, bm, bias)
        } else {
            let par = Parallelism::None;
            gemm_into(m, k, n, dst, dst_rs, accumulate, a, am, b, bm, bias, par)
        }
    }
}

/// [`gemm`] with `B` (`k × n`) given row by row: `fill(p, row)` writes every element of
/// row `p` (`n` elements). Where [`sgemm`] runs the product the rows go straight into its
/// packed layout ([`sgemm::sgemm_rows`]); otherwise they are written into `scratch` (at
/// least `k · n` elements, row-major) and multiplied from there. The result is the
/// product with that `B` either way, summed as [`gemm`] sums it.
///
/// # Safety
/// As [`gemm_serial`] for `dst` and `a`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_rows<T: NumElement>(
    threaded: bool,
    m: usize,
    k: usize,
    n: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    a: *const T,
    (a_rs, a_cs): (usize, usize),
    scratch: &mut [T],
    mut fill: impl FnMut(usize, &mut [MaybeUninit<T>]) + Send,
) {
    #[cfg(target_arch = "x86_64")]
    if uses_sgemm::<T>(m, k, n) {
        let threads = if threaded && m * n * k >= GEMM_PAR_THRESHOLD {
            parallel::num_threads()
        } else {
            1
        };
        // SAFETY: `T` is f32 (`uses_sgemm`), so the row handed to `fill` is a row of
        // `T`, and the CPU has the features; the caller upholds the rest.
        let mut fill32 = |p: usize, row: &mut [MaybeUninit<f32>]| {
            let len = row.len();
            fill(p, unsafe {
                std::slice::from_raw_parts_mut(row.as_mut_ptr() as *mut MaybeUninit<T>, len)
            })
        };
        let (d, a) = (SendPtr(dst as *mut f32), SendPtr(a as *mut f32));
        // SAFETY: as above.
        let run = move || unsafe {
            sgemm::sgemm_rows(
                m,
                k,
                n,
                d.get(),
                dst_rs,
                accumulate,
                (a.get() as *const f32, a_rs, a_cs),
                &mut fill32,
                threads,
            )
        };
        parallel::install_if(threads > 1, run);
        return;
    }
    assert!(
        scratch.len() >= k * n,
        "internal: gemm_rows scratch too small"
    );
    // SAFETY: `fill` writes every element of each row, and only values of `T`.
    let rows = unsafe { crate::cpu::pool::for_writing(&mut scratch[..k * n]) };
    for (p, row) in rows.chunks_exact_mut(n.max(1)).enumerate().take(k) {
        fill(p, row);
    }
    // SAFETY: the caller upholds the contract for `dst` and `a`; `scratch` holds `B`
    // row-major.
    unsafe {
        gemm(
            threaded,
            m,
            k,
            n,
            dst,
            dst_rs,
            accumulate,
            a,
            (a_rs, a_cs),
            scratch.as_ptr(),
            (n, 1),
        )
    }
}

/// A raw destination pointer shared by the threads that write disjoint parts of it.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the field).
    fn get(self) -> *mut T {
        self.0
    }
}

// SAFETY: only used to hand one output buffer to threads that write disjoint elements.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above; the pointer itself is never written through a shared reference.
unsafe impl<T> Sync for SendPtr<T> {}

/// One `m × k` by `k × n` product into a strided destination, as [`gemm_serial`] but
/// threaded across the Flint pool from [`GEMM_PAR_THRESHOLD`] multiply-adds: inside
/// [`sgemm`] (which splits the output by rows or columns itself) or `gemm`, or, for few
/// rows through `gemm`, one single-threaded product per column block (see
/// [`column_blocks`]). Every element is summed in the same order at any thread count
/// wherever `sgemm` or the column split runs.
///
/// # Safety
/// As [`gemm_with`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_threaded<T: NumElement>(
    m: usize,
    k: usize,
    n: usize,
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    a: *const T,
    am: Mat,
    b: *const T,
    bm: Mat,
    bias: *const T,
) {
    let threads = parallel::num_threads();
    if threads <= 1 || m * n * k < GEMM_PAR_THRESHOLD {
        // SAFETY: the caller upholds the contract.
        return unsafe {
            gemm_into(
                m,
                k,
                n,
                dst,
                dst_rs,
                accumulate,
                a,
                am,
                b,
                bm,
                bias,
                Parallelism::None,
            )
        };
    }
    // `sgemm` splits a product across threads itself (by rows or columns)
    let col_blocks = if uses_sgemm::<T>(m, k, n) {
        1
    } else {
        column_blocks(m, n, threads)
    };
    // raw pointers travel to the pool's threads in `SendPtr`s
    let (dst, a, b) = (SendPtr(dst), SendPtr(a as *mut T), SendPtr(b as *mut T));
    let (a, b) = (move || a.get() as *const T, move || b.get() as *const T);
    let bias = SendPtr(bias as *mut T);
    let bias = move || bias.get() as *const T;
    if col_blocks == 1 {
        let par = Parallelism::Rayon(threads);
        // SAFETY: the caller upholds the contract.
        return parallel::install(|| unsafe {
            gemm_into(
                m,
                k,
                n,
                dst.get(),
                dst_rs,
                accumulate,
                a(),
                am,
                b(),
                bm,
                bias(),
                par,
            )
        });
    }
    // few rows, many columns: gemm's own threads would split `m` too finely and meet once
    // per column panel; one single-threaded gemm a column block instead
    let width = n.div_ceil(col_blocks).next_multiple_of(COL_ALIGN);
    parallel::install(|| {
        (0..col_blocks).into_par_iter().for_each(|j| {
            let c0 = (j * width).min(n);
            let cols = width.min(n - c0);
            if cols == 0 {
                return;
            }
            // SAFETY: block `j` writes columns `c0..c0 + cols` of every row of `dst`,
            // disjoint from the other blocks, and reads `a`, columns `c0..c0 + cols` of
            // `b` and of `bias` (all inside the caller's contract); nothing writes `a`,
            // `b` or `bias`.
            unsafe {
                let bias = if bias().is_null() {
                    bias()
                } else {
                    bias().add(c0)
                };
                gemm_into(
                    m,
                    k,
                    cols,
                    dst.get().add(c0),
                    dst_rs,
                    accumulate,
                    a(),
                    am,
                    b().add(c0 * bm.cs),
                    bm,
                    bias,
                    Parallelism::None,
                )
            }
        });
    });
}

/// A right-hand operand `B` (`k × n`, strided) of many products `A · B` with different
/// `A`s, computed by [`Rhs::product`] (safe: it checks every index against the slices).
/// [`Rhs::pack_for`] packs `B` once where Flint's `sgemm` runs the products, so a
/// recurrent weight multiplied by a new `A` every step is not re-packed every step; the
/// results are bit-identical either way.
///
/// ```text
/// // W (k × n, row-major) times a new [m, k] A at each of many steps
/// let w = Rhs::new(k, n, &w_data, (n, 1)).pack_for(m);
/// for a in steps { w.product(true, m, &mut out, false, a, (k, 1)); }
/// ```
pub(crate) struct Rhs<'a, T> {
    k: usize,
    n: usize,
    b: &'a [T],
    strides: (usize, usize),
    #[cfg(target_arch = "x86_64")]
    packed: Option<sgemm::PackedB>,
}

impl<'a, T: NumElement> Rhs<'a, T> {
    /// `B[p, j] = b[p * rs + j * cs]` (`p < k`, `j < n`). Panics (an internal error) when
    /// an index lies outside `b`.
    pub(crate) fn new(k: usize, n: usize, b: &'a [T], strides: (usize, usize)) -> Self {
        assert!(
            k == 0 || n == 0 || b.len() > (k - 1) * strides.0 + (n - 1) * strides.1,
            "internal: matrix operand of {k} x {n} with strides {strides:?} outside its {} elements",
            b.len()
        );
        Rhs {
            k,
            n,
            b,
            strides,
            #[cfg(target_arch = "x86_64")]
            packed: None,
        }
    }

    /// Packs `B` now if products with `m` rows run on `sgemm`. That choice of kernel then
    /// holds for every [`Rhs::product`], also of fewer rows (a part of the `m`), so a row's
    /// result does not depend on how the rows are split into products.
    pub(crate) fn pack_for(mut self, m: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if uses_sgemm::<T>(m, self.k, self.n) {
            // SAFETY: `T` is f32 and the CPU has the features (`uses_sgemm`); `new`
            // checked every index of `B` against `b`.
            self.packed = Some(unsafe {
                sgemm::PackedB::new(self.k, self.n, self.b.as_ptr() as *const f32, self.strides)
            });
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = m;
        self
    }

    /// `dst (+)= a · B` for a row-major `m × n` `dst` (rows `n` apart) and the strided
    /// `m × k` `a`: threaded as [`gemm_threaded`] threads it when `threaded`, else on this
    /// thread. Every element is summed in the same order either way and at any thread
    /// count. Panics (an internal error) when an index lies outside `dst` or `a`.
    pub(crate) fn product(
        &self,
        threaded: bool,
        m: usize,
        dst: &mut [T],
        accumulate: bool,
        a: &[T],
        (a_rs, a_cs): (usize, usize),
    ) {
        let (k, n) = (self.k, self.n);
        if m == 0 || n == 0 {
            return;
        }
        assert!(
            dst.len() >= m * n && (k == 0 || a.len() > (m - 1) * a_rs + (k - 1) * a_cs),
            "internal: product of [{m}, {k}] x [{k}, {n}] outside its operands"
        );
        #[cfg(target_arch = "x86_64")]
        if let Some(packed) = &self.packed {
            let threads = if !threaded || m * n * k < GEMM_PAR_THRESHOLD {
                1
            } else {
                parallel::num_threads()
            };
            let (d, a) = (
                SendPtr(dst.as_mut_ptr() as *mut f32),
                SendPtr(a.as_ptr() as *mut f32),
            );
            // SAFETY: `T` is f32 and the CPU has the features (`pack_for` packed only
            // then); the bounds were checked above and `dst` is a separate `&mut`.
            parallel::install_if(threads > 1, || unsafe {
                sgemm::sgemm_packed(
                    m,
                    d.get(),
                    n,
                    accumulate,
                    a.get(),
                    (a_rs, a_cs),
                    packed,
                    threads,
                )
            });
            return;
        }
        // SAFETY: the bounds were checked above and in `new`; `dst` is a separate `&mut`.
        unsafe {
            gemm(
                threaded,
                m,
                k,
                n,
                dst.as_mut_ptr(),
                n,
                accumulate,
                a.as_ptr(),
                (a_rs, a_cs),
                self.b.as_ptr(),
                self.strides,
            )
        }
    }
}

/// Batched product through `gemm` (`T` is f32, f64 or f16), plus `bias` (`n` elements)
/// on every row when given.
fn gemm_batched<T: NumElement + crate::storage::BufferElement>(
    p: &Plan,
    a: &[T],
    b: &[T],
    bias: Option<&[T]>,
) -> Vec<T> {
    let mn = p.m * p.n;
    let total = p.batches() * mn;
    if let Some(c) = bias {
        assert_eq!(
            c.len(),
            p.n,
            "internal: bias of {} for {} columns",
            c.len(),
            p.n
        );
    }
    if total == 0 {
        return Vec::new();
    }
    let work = p.m * p.n * p.k;
    let threads = parallel::num_threads();
    let mut out: Vec<T> = crate::cpu::pool::take(total);
    {
        let dst = &mut out.spare_capacity_mut()[..total];
        // one product (per batch): threaded by `gemm_threaded`, or on this thread
        let run = |dst: &mut [MaybeUninit<T>], (oa, ob): (usize, usize), threaded: bool| {
            debug_assert_eq!(dst.len(), mn);
            let (am, bm) = ((p.a.rs, p.a.cs), (p.b.rs, p.b.cs));
            let c = bias.map_or(std::ptr::null(), |c| c.as_ptr());
            let dst = dst.as_mut_ptr() as *mut T;
            // SAFETY: `dst` holds `m * n` slots that the product overwrites (no
            // accumulate); the layouts index inside `a` and `b` (checked when the views
            // were made); `c` is null or holds `n` elements (checked above).
            unsafe {
                let (a, b) = (a.as_ptr().add(oa), b.as_ptr().add(ob));
                gemm_with(threaded, p.m, p.k, p.n, dst, p.n, false, a, am, b, bm, c)
            }
        };
        if threads > 1 && work >= GEMM_PAR_THRESHOLD {
            // one large product at a time, each split across the pool
            for (d, &o) in dst.chunks_mut(mn).zip(&p.offsets) {
                run(d, o, true);
            }
        } else if threads > 1 && p.batches() > 1 && work * p.batches() >= BATCH_PAR_THRESHOLD {
            parallel::install(|| {
                dst.par_chunks_mut(mn)
                    .zip(p.offsets.par_iter())
                    .for_each(|(d, &o)| run(d, o, false));
            });
        } else {
            for (d, &o) in dst.chunks_mut(mn).zip(&p.offsets) {
                run(d, o, false);
            }
        }
    }
    // SAFETY: every one of the `total` slots was written by gemm above.
    unsafe { out.set_len(total) };
    out
}

/// Batched integer product: a plain loop with wrapping arithmetic (like PyTorch's integer
/// matmul), split across threads by output row above [`BATCH_PAR_THRESHOLD`].
fn int_batched(p: &Plan, a: &[i64], b: &[i64]) -> Vec<i64> {
    let (m, k, n) = (p.m, p.k, p.n);
    let total = p.batches() * m * n;
    let mut out = vec![0i64; total];
    if total == 0 || k == 0 {
        return out;
    }
    let row = |r: usize, dst: &mut [i64]| {
        let (oa, ob) = p.offsets[r / m];
        let a_row = oa + (r % m) * p.a.rs;
        for l in 0..k {
            let x = a[a_row + l * p.a.cs];
            let b_row = ob + l * p.b.rs;
            for (j, d) in dst.iter_mut().enumerate() {
                *d = d.wrapping_add(x.wrapping_mul(b[b_row + j * p.b.cs]));
            }
        }
    };
    if parallel::num_threads() > 1 && total * k >= BATCH_PAR_THRESHOLD {
        parallel::install(|| {
            out.par_chunks_mut(n)
                .enumerate()
                .for_each(|(r, d)| row(r, d))
        });
    } else {
        for (r, d) in out.chunks_mut(n).enumerate() {
            row(r, d);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_rows_only_when_b_is_shared_and_a_is_evenly_strided() {
        // a: [2, 3, m=4, k] contiguous with k = 5 -> rows stride 5, batch strides 60, 20
        assert_eq!(fold_rows(&[2, 3], &[60, 20], 4, 5, &[0, 0]), Some(5));
        // b varies over the batch
        assert_eq!(fold_rows(&[2, 3], &[60, 20], 4, 5, &[0, 7]), None);
        // a's batch dims are permuted
        assert_eq!(fold_rows(&[3, 2], &[20, 60], 4, 5, &[0, 0]), None);
        // a broadcast over the batch
        assert_eq!(fold_rows(&[2], &[0], 4, 5, &[0]), None);
        // size-1 dims are skipped; m = 1 takes the batch stride
        assert_eq!(fold_rows(&[1, 6], &[99, 5], 1, 1, &[3, 0]), Some(5));
    }

    #[test]
    fn gemm_serial_sets_or_adds_to_a_strided_destination() {
        // a is [m=3, k=4] stored transposed (column-major), b is [k=4, n=5] row-major,
        // dst rows are 7 apart
        let (m, k, n, dst_rs) = (3, 4, 5, 7);
        let a: Vec<f64> = (0..m * k).map(|x| x as f64 * 0.5 - 2.0).collect();
        let b: Vec<f64> = (0..k * n).map(|x| (x as f64).sin()).collect();
        let want = |i: usize, j: usize| (0..k).map(|p| a[p * m + i] * b[p * n + j]).sum::<f64>();
        for accumulate in [false, true] {
            let mut dst = vec![1.5f64; m * dst_rs];
            // SAFETY: every index named by the contract lies inside the three vectors.
            unsafe {
                gemm_serial(
                    m,
                    k,
                    n,
                    dst.as_mut_ptr(),
                    dst_rs,
                    accumulate,
                    a.as_ptr(),
                    (1, m),
                    b.as_ptr(),
                    (n, 1),
                )
            };
            for i in 0..m {
                for j in 0..dst_rs {
                    let got = dst[i * dst_rs + j];
                    let expect = match (j < n, accumulate) {
                        (false, _) => 1.5,
                        (true, false) => want(i, j),
                        (true, true) => 1.5 + want(i, j),
                    };
                    assert!(
                        (got - expect).abs() < 1e-12,
                        "({i}, {j}): {got} vs {expect}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_product_with_rows_filled_matches_gemm_on_the_same_b() {
        // a convolution's forward shapes ([32, 27] and [64, 288] by [k, 1024]: sgemm for
        // f32, packed row by row), depth past one KC block, ragged columns, a small one
        // (gemm, from the scratch), f32 and f64: bit-identical to `gemm`, threaded or not
        fn check<T: NumElement>(m: usize, k: usize, n: usize) {
            let val = |i: usize| T::from_f64(((i * 7919 % 1009) as f64) / 500.0 - 1.0);
            let a: Vec<T> = (0..m * k).map(val).collect();
            let b: Vec<T> = (0..k * n).map(|i| val(i + 3)).collect();
            for accumulate in [false, true] {
                for threaded in [false, true] {
                    let mut want = vec![T::from_f64(0.25); m * n];
                    let mut got = want.clone();
                    let mut scratch = vec![T::zero(); k * n];
                    // SAFETY: every index named by the contract lies inside the vectors.
                    unsafe {
                        let (ap, bp) = (a.as_ptr(), b.as_ptr());
                        let dst = want.as_mut_ptr();
                        gemm(
                            threaded,
                            m,
                            k,
                            n,
                            dst,
                            n,
                            accumulate,
                            ap,
                            (k, 1),
                            bp,
                            (n, 1),
                        );
                        gemm_rows(
                            threaded,
                            m,
                            k,
                            n,
                            got.as_mut_ptr(),
                            n,
                            accumulate,
                            a.as_ptr(),
                            (k, 1),
                            &mut scratch,
                            |p, row: &mut [MaybeUninit<T>]| {
                                for (d, &v) in row.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                                    d.write(v);
                                }
                            },
                        )
                    };
                    let same = got.iter().zip(&want).all(|(g, w)| g.to_f64() == w.to_f64());
                    assert!(same, "{m}x{k}x{n} acc {accumulate} threaded {threaded}");
                }
            }
        }
        crate::set_num_threads(2);
        for (m, k, n) in [(32, 27, 1024), (64, 288, 1024), (20, 300, 37), (4, 8, 8)] {
            check::<f32>(m, k, n);
            check::<f64>(m, k, n);
        }
        crate::set_num_threads(0);
    }

    #[test]
    fn a_reused_rhs_matches_gemm_serial_packed_or_not() {
        // the LSTM's recurrent products ([32, 256] x W_hh^T, [32, 1024] x W_hh), a ragged
        // one, and one too small for `sgemm`; f32 (packed where `sgemm` runs) and f64
        fn check<T: NumElement>(m: usize, k: usize, n: usize, b_rowmajor: bool, tol: f64) {
            let val = |i: usize| T::from_f64(((i * 7919 % 1009) as f64) / 500.0 - 1.0);
            let a: Vec<T> = (0..m * k).map(val).collect();
            let b: Vec<T> = (0..k * n).map(|i| val(i + 3)).collect();
            let sb = if b_rowmajor { (n, 1) } else { (1, k) };
            let rhs = Rhs::new(k, n, &b, sb).pack_for(m);
            for accumulate in [false, true] {
                let mut want = vec![T::from_f64(0.25); m * n];
                // SAFETY: every index named by the contract lies inside the vectors.
                unsafe {
                    gemm_serial(
                        m,
                        k,
                        n,
                        want.as_mut_ptr(),
                        n,
                        accumulate,
                        a.as_ptr(),
                        (k, 1),
                        b.as_ptr(),
                        sb,
                    )
                };
                for (threads, threaded) in [(1, true), (2, true), (2, false)] {
                    crate::set_num_threads(threads);
                    let mut got = vec![T::from_f64(0.25); m * n];
                    rhs.product(threaded, m, &mut got, accumulate, &a, (k, 1));
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let (g, w) = (g.to_f64(), w.to_f64());
                        assert!(
                            (g - w).abs() <= tol * (1.0 + w.abs()),
                            "{m}x{k}x{n} acc {accumulate} threads {threads} [{i}]: {g} vs {w}"
                        );
                    }
                }
            }
            crate::set_num_threads(0);
        }
        for (m, k, n, row) in [
            (32, 256, 1024, false),
            (32, 1024, 256, true),
            (19, 300, 37, true),
            (4, 8, 8, false),
        ] {
            // `sgemm` (packed or not, any threads) sums like `gemm_serial`'s `sgemm`
            check::<f32>(
                m,
                k,
                n,
                row,
                if uses_sgemm::<f32>(m, k, n) {
                    0.0
                } else {
                    1e-5
                },
            );
            check::<f64>(m, k, n, row, 1e-13);
        }
    }

    #[test]
    fn column_blocks_only_for_few_rows_and_enough_columns() {
        assert_eq!(column_blocks(32, 1024, 1), 1);
        assert_eq!(column_blocks(32, 1024, 2), 2);
        assert_eq!(column_blocks(32, 1024, 16), 16);
        assert_eq!(column_blocks(COL_SPLIT_MAX_M + 1, 1024, 2), 1);
        // fewer than two aligned tiles per block: fewer blocks
        assert_eq!(column_blocks(8, 64, 4), 2);
        assert_eq!(column_blocks(8, 40, 4), 1);
    }

    /// `a @ b` through [`matmul`] on an f32 or f64 buffer, with `b` given as `[n, k]`
    /// transposed (an RNN's `W_hhᵀ`) or as `[k, n]`.
    fn product<T: NumElement + crate::storage::BufferElement>(
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        b_transposed: bool,
    ) -> Vec<T> {
        let val = |i: usize| T::from_f64(((i * 7919 % 1009) as f64) / 500.0 - 1.0);
        let a: Vec<T> = (0..batch * m * k).map(val).collect();
        let b: Vec<T> = (0..batch * k * n).map(|i| val(i + 17)).collect();
        let la = Layout::contiguous(&[batch, m, k]);
        let lb = if b_transposed {
            Layout::contiguous(&[batch, n, k])
                .permute(&[0, 2, 1])
                .unwrap()
        } else {
            Layout::contiguous(&[batch, k, n])
        };
        let out = matmul(&T::into_buffer(a), &la, &T::into_buffer(b), &lb);
        T::slice(&out).unwrap().to_vec()
    }

    #[test]
    fn column_split_matches_one_thread() {
        // the RNN step products (forward and the two backward ones), a row vector, an n
        // that is not a multiple of the alignment, a batch of two large products, m at the
        // limit. f32 on `sgemm` is bit-identical to one thread; the `gemm` crate (f64, and
        // f32 without `sgemm`) is close: its depth blocking follows the CPU's cache sizes
        // and each column block's width, so a split may sum in another order (on the
        // H200 machine's CPU, f64 32x1024x256 at 3 threads did; on a Zen 4 it did not)
        let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol * (1.0 + b.abs());
        let shapes = [
            (1, 32, 256, 1024),
            (1, 32, 1024, 256),
            (1, 1, 4096, 300),
            (2, 24, 300, 520),
            (1, COL_SPLIT_MAX_M, 64, 700),
            // f32 through `sgemm` (where the CPU has it): a tall product split by rows,
            // a transformer Linear, a batch of attention-sized products
            (1, 300, 200, 100),
            (1, 512, 256, 768),
            (4, 64, 128, 64),
        ];
        for &(batch, m, k, n) in &shapes {
            for bt in [false, true] {
                crate::set_num_threads(1);
                let one32 = product::<f32>(batch, m, k, n, bt);
                let one64 = product::<f64>(batch, m, k, n, bt);
                // and f32 (through `sgemm` or `gemm`) agrees with f64 to f32 rounding
                for (a, b) in one32.iter().zip(&one64) {
                    assert!(close(*a as f64, *b, 1e-5 * (k as f64).sqrt()), "f32 vs f64");
                }
                for threads in [2, 3, 8] {
                    crate::set_num_threads(threads);
                    let many32 = product::<f32>(batch, m, k, n, bt);
                    let many64 = product::<f64>(batch, m, k, n, bt);
                    let what = format!("{batch}x{m}x{k}x{n} {bt} at {threads}");
                    // `sgemm` sums in the same order at any thread count
                    if uses_sgemm::<f32>(m, k, n) {
                        assert!(one32 == many32, "f32 {what}");
                    }
                    for (a, b) in one32.iter().zip(&many32) {
                        assert!(close(*a as f64, *b as f64, 1e-5), "f32 {what}");
                    }
                    for (a, b) in one64.iter().zip(&many64) {
                        assert!(close(*a, *b, 1e-13), "f64 {what}");
                    }
                }
            }
        }
        crate::set_num_threads(0);
        // and the values are right: row 0, column 5 of the first shape against a plain sum
        let got = product::<f64>(1, 32, 256, 1024, false);
        let val = |i: usize| ((i * 7919 % 1009) as f64) / 500.0 - 1.0;
        let want: f64 = (0..256).map(|l| val(l) * val(l * 1024 + 5 + 17)).sum();
        assert!((got[5] - want).abs() < 1e-12);
    }

    #[test]
    fn unit_stride_detection() {
        let l = Layout::contiguous(&[3, 4]);
        assert!(has_unit_stride(&l));
        assert!(has_unit_stride(&l.permute(&[1, 0]).unwrap()));
        assert!(!has_unit_stride(
            &Layout::contiguous(&[3, 4]).slice(1, 0, 2, 2)
        ));
        assert!(has_unit_stride(
            &Layout::contiguous(&[3, 4]).slice(1, 0, 1, 2)
        ));
    }
}
