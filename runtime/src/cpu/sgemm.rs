//! A BLIS-style `f32` matrix product for x86-64 CPUs with AVX2 and FMA: `C (=|+=) A·B`
//! with arbitrary row and column strides on `A` and `B` and a row-major destination.
//!
//! The loop nest is the classic one (Goto / BLIS):
//!
//! ```text
//! for jc in columns, NC at a time:            B panel  KC × NC  (L3)
//!   for pc in depth, KC at a time:              pack B into KC × NR strips
//!     for ic in rows, MC at a time:             A block  MC × KC  (L2)
//!       pack A into MR × KC strips
//!       for jr in NR-column strips of the panel:  one B strip  KC × NR  (L1)
//!         for ir in MR-row strips of the block:
//!           MR × NR microkernel: C[ir.., jr..] (=|+=) Σ_p A~[ir.., p] B~[p, jr..]
//! ```
//!
//! The microkernel holds a 6 × 16 tile of `C` in 12 `__m256` accumulators and, for each
//! `p`, loads two vectors of the packed `B` strip, broadcasts six values of the packed
//! `A` strip and issues 12 FMAs. Packing copies `A` and `B` into that order whatever
//! their strides (contiguous rows, contiguous columns — a transposed view — or neither),
//! zero-padding ragged strips, so the kernel only ever reads packed memory. Edge tiles
//! (`m % 6`, `n % 16`) are computed into a tile on the stack and the valid part copied
//! out, so nothing outside `C`'s `m × n` elements is read or written.
//!
//! Summation order: every element of `C` is the sum over the same depth blocks in the
//! same order, each block summed by the microkernel in `p` order from zero and then added
//! to `C` (or stored, for the first block of a product that does not accumulate). Where
//! the element sits in a tile, a block or a thread's share does not change that order, so
//! a product gives bit-identical results whatever the number of threads.
//!
//! Threads: [`sgemm`] splits `C` into one block of rows (tall outputs) or columns (wide
//! ones) per thread; each thread packs the parts of `A` and `B` its block needs.
//!
//! [`available`] says whether this path runs (AVX2 and FMA detected, cached); otherwise
//! the caller uses the `gemm` crate. Setting the environment variable `FLINT_SGEMM=0`
//! before the first product turns this path off (read once), to compare with `gemm`.

#[cfg(target_arch = "x86_64")]
pub(crate) use imp::{sgemm, sgemm_packed, sgemm_rows, PackedB};

/// Whether [`sgemm`] may be called: the CPU has AVX2 and FMA and `FLINT_SGEMM` is not
/// `0` (both read once and cached).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::env::var("FLINT_SGEMM").map_or(true, |v| v.trim() != "0")
                && std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a product of this shape is faster here than through the `gemm` crate, which
/// has vector paths for a single row or column, narrower tiles for few rows or columns
/// and less fixed cost (packing) on small products. Measured on a Zen 3 core: `gemm`
/// wins on `m` or `n` below 16 (`[1, 256] × [256, 1024]`: 3.5×, `[10, 128] × [128, 64]`:
/// 1.6×) and below 2¹⁹ multiply-adds (`64³`: 1.1×); above, this path is 1.0–1.7×
/// faster (the matmul and transformer shapes), the most where `B` is transposed.
pub(crate) fn wins(m: usize, k: usize, n: usize) -> bool {
    m >= 16 && n >= 16 && m * k * n >= 1 << 19
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use rayon::prelude::*;
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    /// Rows of the register tile.
    pub(super) const MR: usize = 6;
    /// Columns of the register tile (two `__m256`).
    pub(super) const NR: usize = 16;
    /// Depth of a packed block: a `KC × NR` strip of `B` (16 KiB) stays in L1 while the
    /// microkernel runs over the `A` strips of a block.
    pub(super) const KC: usize = 256;
    /// Rows of a packed `A` block (`MC × KC`, 144 KiB: in the 512 KiB L2 of a Zen 3 core).
    pub(super) const MC: usize = 144;
    /// Columns of a packed `B` panel (`KC × NC`, 4 MiB: in L3).
    pub(super) const NC: usize = 4080;

    /// One 64-byte line of packed floats (the packing buffers' unit, for alignment).
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    struct Line([f32; 16]);

    thread_local! {
        /// This thread's packing buffers for `A` and `B`, grown as needed, kept between
        /// products.
        static BUFFERS: RefCell<(Vec<Line>, Vec<Line>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }

    /// Grows `buf` to hold at least `floats` floats and returns its start.
    fn reserve(buf: &mut Vec<Line>, floats: usize) -> *mut f32 {
        let lines = floats.div_ceil(16);
        if buf.len() < lines {
            buf.resize(lines, Line([0.0; 16]));
        }
        buf.as_mut_ptr() as *mut f32
    }

    /// `len` split into blocks of at most `max` (balanced, rounded up to `align`).
    fn block_len(len: usize, max: usize, align: usize) -> usize {
        let blocks = len.div_ceil(max).max(1);
        len.div_ceil(blocks).next_multiple_of(align).min(max)
    }

    /// The operands of one product (see [`sgemm`]).
    #[derive(Clone, Copy)]
    struct Product {
        k: usize,
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: BSource,
        /// `n` floats added to every row of the result (after the last depth block), or
        /// null.
        bias: *const f32,
    }

    /// Where a product's `B` comes from.
    #[derive(Clone, Copy)]
    enum BSource {
        /// `B[p, j]` at `ptr + p * rs + j * cs`, packed by each block as it goes.
        Strided {
            ptr: *const f32,
            rs: usize,
            cs: usize,
        },
        /// Already packed by [`PackedB::new`]: depth block `pc..pc + kc` at
        /// `ptr + pc * npad`, its column strip `t` `NR · kc` floats further on each.
        Packed { ptr: *const f32, npad: usize },
    }

    // SAFETY: a `Product` is shared by the threads of one `sgemm` call, each of which
    // reads `a` and `b` and writes a disjoint block of `dst` (see `sgemm`).
    unsafe impl Sync for Product {}
    // SAFETY: as above.
    unsafe impl Send for Product {}

    /// How `C` is split across threads: `blocks` blocks of `len` rows (`by_rows`) or
    /// columns.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub(super) struct Split {
        pub(super) by_rows: bool,
        pub(super) blocks: usize,
        pub(super) len: usize,
    }

    impl Split {
        /// Rows for a tall output, columns for a wide one, each block at least two
        /// register tiles across.
        pub(super) fn new(m: usize, n: usize, threads: usize) -> Split {
            let by_rows = m >= n;
            let (dim, align) = if by_rows { (m, MR) } else { (n, NR) };
            let blocks = threads.min(dim / (2 * align)).max(1);
            let len = dim.div_ceil(blocks).next_multiple_of(align);
            Split {
                by_rows,
                blocks: dim.div_ceil(len),
                len,
            }
        }
    }

    /// `dst[i * dst_rs + j]` (`i < m`, `j < n`) set to (or, with `accumulate`, has added
    /// to it) `Σ_p a[i * a_rs + p * a_cs] · b[p * b_rs + j * b_cs]` (`p < k`), then
    /// `bias[j]` added unless `bias` is null (as the results are stored: a linear layer's
    /// `x·Wᵀ + b` without a second pass, bit-identical to the product followed by the
    /// add), with up to `threads` threads of the current rayon pool (the caller runs it
    /// inside Flint's pool). Results do not depend on `threads`.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA ([`super::available`]). `dst` must be valid for
    /// reads and writes at every `i * dst_rs + j` (it may be uninitialised when
    /// `accumulate` is false), `a` valid for reads at every `i * a_rs + p * a_cs` and `b`
    /// at every `p * b_rs + j * b_cs`, `bias` (unless null) at `n` floats, and `dst`
    /// must not overlap `a`, `b` or `bias`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn sgemm(
        m: usize,
        k: usize,
        n: usize,
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
        a: *const f32,
        (a_rs, a_cs): (usize, usize),
        b: *const f32,
        (b_rs, b_cs): (usize, usize),
        bias: *const f32,
        threads: usize,
    ) {
        let b = BSource::Strided {
            ptr: b,
            rs: b_rs,
            cs: b_cs,
        };
        // SAFETY: the caller upholds the contract, which is `run`'s.
        unsafe {
            run(
                m,
                k,
                n,
                dst,
                dst_rs,
                accumulate,
                (a, a_rs, a_cs),
                b,
                bias,
                threads,
            )
        }
    }

    /// A `k × n` right-hand operand packed once into the microkernel's `KC × NR` strips,
    /// for many products `A · B` with the same `B` ([`sgemm_packed`]): a recurrent
    /// layer's weight, multiplied by a new `A` every step, is packed once per sequence
    /// instead of once per step. The layout does not depend on how a product is split
    /// across threads, and [`sgemm_packed`] sums exactly as [`sgemm`] does, so the two
    /// give bit-identical results.
    pub(crate) struct PackedB {
        k: usize,
        n: usize,
        buf: Vec<Line>,
    }

    impl PackedB {
        /// Packs `B[p, j] = b[p * rs + j * cs]` (`p < k`, `j < n`).
        ///
        /// # Safety
        /// The CPU must have AVX2 and FMA ([`super::available`]) and `b` must be valid
        /// for reads at every `p * rs + j * cs`.
        pub(crate) unsafe fn new(
            k: usize,
            n: usize,
            b: *const f32,
            (rs, cs): (usize, usize),
        ) -> PackedB {
            let npad = n.next_multiple_of(NR);
            let mut buf = Vec::new();
            let out = reserve(&mut buf, k * npad);
            let kc_max = block_len(k, KC, 8);
            let mut pc = 0;
            while pc < k {
                let kc = kc_max.min(k - pc);
                // SAFETY: reads inside `B` (contract above), writes inside the `k · npad`
                // floats reserved: depth block `pc` takes `kc · npad` from `pc · npad`.
                unsafe { pack_b(kc, n, b.add(pc * rs), rs, cs, out.add(pc * npad)) };
                pc += kc;
            }
            PackedB { k, n, buf }
        }
    }

    /// [`sgemm`] with a `B` packed beforehand: `dst (=|+=) A · B` for the `m × k` `A` at
    /// `a` and `b`'s `k × n` matrix, bit-identical to [`sgemm`] on the unpacked `B`.
    ///
    /// # Safety
    /// As [`sgemm`] for `dst` and `a` (`b` is valid by construction).
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn sgemm_packed(
        m: usize,
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
        a: *const f32,
        (a_rs, a_cs): (usize, usize),
        b: &PackedB,
        threads: usize,
    ) {
        let source = BSource::Packed {
            ptr: b.buf.as_ptr() as *const f32,
            npad: b.n.next_multiple_of(NR),
        };
        // SAFETY: the caller upholds the contract for `dst` and `a`; `source` holds the
        // `k × n` strips `block` reads.
        unsafe {
            run(
                m,
                b.k,
                b.n,
                dst,
                dst_rs,
                accumulate,
                (a, a_rs, a_cs),
                source,
                std::ptr::null(),
                threads,
            )
        }
    }

    thread_local! {
        /// The packed `B` of [`sgemm_rows`] (and one row of scratch after it), kept
        /// between products.
        static ROWS: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
    }

    /// [`sgemm`] with `B` (`k × n`) given row by row: `fill(p, row)` writes every element
    /// of row `p` (`n` floats), which goes straight into the packed strips. A `B` made on
    /// the fly (a convolution's unfolded input) is then not written out whole and read
    /// back by the packing. Bit-identical to [`sgemm`] on the same `B`.
    ///
    /// # Safety
    /// As [`sgemm`] for `dst` and `a`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn sgemm_rows(
        m: usize,
        k: usize,
        n: usize,
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
        (a, a_rs, a_cs): (*const f32, usize, usize),
        fill: &mut dyn FnMut(usize, &mut [std::mem::MaybeUninit<f32>]),
        threads: usize,
    ) {
        let npad = n.next_multiple_of(NR);
        let mut buf = ROWS.with(|b| std::mem::take(&mut *b.borrow_mut()));
        let packed = reserve(&mut buf, (k + 1) * npad);
        let kc_max = block_len(k, KC, 8).max(1);
        // SAFETY: the row scratch is the last `npad` floats reserved; row `p` of depth
        // block `pc` goes to `pc · npad + (p − pc) · NR` plus `t · NR · kc` for strip
        // `t`, inside the `k · npad` floats before it (the layout `PackedB::new` makes).
        unsafe {
            let row = packed.add(k * npad);
            // the padding columns of the last strip stay zero
            std::ptr::write_bytes(row.add(n), 0, npad - n);
            for p in 0..k {
                fill(p, std::slice::from_raw_parts_mut(row.cast(), n));
                let pc = p / kc_max * kc_max;
                let kc = kc_max.min(k - pc);
                let base = packed.add(pc * npad + (p - pc) * NR);
                for t in 0..npad / NR {
                    std::ptr::copy_nonoverlapping(row.add(t * NR), base.add(t * NR * kc), NR);
                }
            }
            let source = BSource::Packed {
                ptr: packed as *const f32,
                npad,
            };
            run(
                m,
                k,
                n,
                dst,
                dst_rs,
                accumulate,
                (a, a_rs, a_cs),
                source,
                std::ptr::null(),
                threads,
            );
        }
        ROWS.with(|b| *b.borrow_mut() = buf);
    }

    /// The body of [`sgemm`], [`sgemm_packed`] and [`sgemm_rows`]: the split across threads.
    ///
    /// # Safety
    /// As [`sgemm`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        m: usize,
        k: usize,
        n: usize,
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
        (a, a_rs, a_cs): (*const f32, usize, usize),
        b: BSource,
        bias: *const f32,
        threads: usize,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for i in 0..m {
                // SAFETY: row `i`'s `n` elements lie inside `dst`, and `bias` holds `n`
                // (contract above).
                unsafe {
                    let row = dst.add(i * dst_rs);
                    if !accumulate {
                        std::ptr::write_bytes(row, 0, n);
                    }
                    if !bias.is_null() {
                        for j in 0..n {
                            *row.add(j) += *bias.add(j);
                        }
                    }
                }
            }
            return;
        }
        let p = Product {
            k,
            dst,
            dst_rs,
            accumulate,
            a,
            a_rs,
            a_cs,
            b,
            bias,
        };
        let split = Split::new(m, n, threads);
        let run = |t: usize| {
            let start = t * split.len;
            let (rows, cols) = if split.by_rows {
                ((start, (start + split.len).min(m)), (0, n))
            } else {
                ((0, m), (start, (start + split.len).min(n)))
            };
            // SAFETY: the CPU has the features (contract above); block `t` covers rows
            // `rows` and columns `cols` of `C`, disjoint from every other block's.
            unsafe { block(&p, rows, cols) }
        };
        if split.blocks == 1 {
            run(0);
        } else {
            (0..split.blocks).into_par_iter().for_each(run);
        }
    }

    /// The loop nest over rows `r0..r1` and columns `c0..c1` of `C`.
    ///
    /// # Safety
    /// As [`sgemm`], for this block.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block(p: &Product, (r0, r1): (usize, usize), (c0, c1): (usize, usize)) {
        let bufs = BUFFERS.with(|b| std::mem::take(&mut *b.borrow_mut()));
        let (mut abuf, mut bbuf) = bufs;
        let k = p.k;
        let kc_max = block_len(k, KC, 8);
        let mc_max = block_len(r1 - r0, MC, MR);
        let nc_max = block_len(c1 - c0, NC, NR);
        let apack = reserve(&mut abuf, mc_max * kc_max);
        let bpack = match p.b {
            BSource::Strided { .. } => reserve(&mut bbuf, nc_max * kc_max),
            BSource::Packed { .. } => std::ptr::null_mut(),
        };
        // SAFETY: every pointer below stays inside the caller's matrices (rows `r0..r1`,
        // columns `c0..c1`, depth `0..k`) or the packing buffers sized just above.
        unsafe {
            let mut jc = c0;
            while jc < c1 {
                let nc = nc_max.min(c1 - jc);
                let mut pc = 0;
                while pc < k {
                    let kc = kc_max.min(k - pc);
                    let bpanel = match p.b {
                        BSource::Strided { ptr, rs, cs } => {
                            pack_b(kc, nc, ptr.add(pc * rs + jc * cs), rs, cs, bpack);
                            bpack as *const f32
                        }
                        // `jc` is a multiple of `NR` (blocks are whole strips), so its
                        // strip starts `jc · kc` into the depth block
                        BSource::Packed { ptr, npad } => ptr.add(pc * npad + jc * kc),
                    };
                    let overwrite = pc == 0 && !p.accumulate;
                    // the bias goes onto the finished sums, in the last depth block
                    let bias = if pc + kc == k && !p.bias.is_null() {
                        p.bias.add(jc)
                    } else {
                        std::ptr::null()
                    };
                    let mut ic = r0;
                    while ic < r1 {
                        let mc = mc_max.min(r1 - ic);
                        pack_a(
                            mc,
                            kc,
                            p.a.add(ic * p.a_rs + pc * p.a_cs),
                            p.a_rs,
                            p.a_cs,
                            apack,
                        );
                        macro_kernel(
                            mc,
                            nc,
                            kc,
                            apack,
                            bpanel,
                            p.dst.add(ic * p.dst_rs + jc),
                            p.dst_rs,
                            overwrite,
                            bias,
                        );
                        ic += mc;
                    }
                    pc += kc;
                }
                jc += nc;
            }
        }
        BUFFERS.with(|b| *b.borrow_mut() = (abuf, bbuf));
    }

    /// Runs the microkernel over the `mc × nc` block of `C` at `c` from packed `A`
    /// (`⌈mc / MR⌉` strips of `MR × kc`) and `B` (`⌈nc / NR⌉` strips of `kc × NR`),
    /// adding `bias` (the block's `nc` columns of it) unless it is null.
    ///
    /// # Safety
    /// The packed buffers hold those strips; `c` is valid for the block (rows `rs` apart)
    /// and `bias` for `nc` floats or null.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn macro_kernel(
        mc: usize,
        nc: usize,
        kc: usize,
        apack: *const f32,
        bpack: *const f32,
        c: *mut f32,
        rs: usize,
        overwrite: bool,
        bias: *const f32,
    ) {
        let mut tile = [Line([0.0; 16]); MR];
        // SAFETY: strip offsets stay inside the packed buffers; tiles inside the block.
        unsafe {
            let mut jr = 0;
            while jr < nc {
                let nr = NR.min(nc - jr);
                let bs = bpack.add(jr * kc);
                let bias = if bias.is_null() { bias } else { bias.add(jr) };
                let mut ir = 0;
                while ir < mc {
                    let mr = MR.min(mc - ir);
                    let as_ = apack.add(ir * kc);
                    let ct = c.add(ir * rs + jr);
                    // the rows of the strip that exist: a ragged last strip of 1–2 or
                    // 3–4 rows runs a kernel that many rows tall (same sums, fewer FMAs)
                    let rows = if mr <= 2 {
                        2
                    } else if mr <= 4 {
                        4
                    } else {
                        MR
                    };
                    if mr == rows && nr == NR {
                        match rows {
                            2 => kernel::<2>(kc, as_, bs, ct, rs, overwrite, bias),
                            4 => kernel::<4>(kc, as_, bs, ct, rs, overwrite, bias),
                            _ => kernel::<MR>(kc, as_, bs, ct, rs, overwrite, bias),
                        }
                    } else {
                        let t = tile.as_mut_ptr() as *mut f32;
                        let none = std::ptr::null();
                        match rows {
                            2 => kernel::<2>(kc, as_, bs, t, NR, true, none),
                            4 => kernel::<4>(kc, as_, bs, t, NR, true, none),
                            _ => kernel::<MR>(kc, as_, bs, t, NR, true, none),
                        }
                        // as the kernel stores: `C + sums` (or the sums), then the bias
                        for i in 0..mr {
                            for j in 0..nr {
                                let d = ct.add(i * rs + j);
                                let mut v = *t.add(i * NR + j);
                                if !overwrite {
                                    v += *d;
                                }
                                if !bias.is_null() {
                                    v += *bias.add(j);
                                }
                                d.write(v);
                            }
                        }
                    }
                    ir += MR;
                }
                jr += NR;
            }
        }
    }

    /// The `R × 16` microkernel (`R ≤ 6`; 6 but for a ragged last strip):
    /// `c[i * rs + j] (=|+=) Σ_{p < kc} a[p * 6 + i] · b[p * 16 + j]` for `i < R` (stored
    /// when `overwrite`, added otherwise), each sum from zero in `p` order, so a row's
    /// result does not depend on `R`; then `bias[j]` added, unless `bias` is null.
    ///
    /// # Safety
    /// `a` holds `6 kc` floats, `b` `16 kc` floats (32-byte aligned), `c` an `R × 16`
    /// tile with rows `rs` apart, `bias` 16 floats or null.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn kernel<const R: usize>(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        rs: usize,
        overwrite: bool,
        bias: *const f32,
    ) {
        // SAFETY: loads stay inside the packed strips (and the tile's 16 bias floats),
        // stores inside the tile.
        unsafe {
            for i in 0..R {
                _mm_prefetch::<_MM_HINT_T0>(c.add(i * rs) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(c.add(i * rs + 15) as *const i8);
            }
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let (mut a, mut b) = (a, b);
            macro_rules! step {
                ($u:expr) => {{
                    let b0 = _mm256_load_ps(b.add($u * NR));
                    let b1 = _mm256_load_ps(b.add($u * NR + 8));
                    for i in 0..R {
                        let ai = _mm256_broadcast_ss(&*a.add($u * MR + i));
                        acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
                        acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
                    }
                }};
            }
            for _ in 0..kc / 4 {
                step!(0);
                step!(1);
                step!(2);
                step!(3);
                a = a.add(4 * MR);
                b = b.add(4 * NR);
            }
            for _ in 0..kc % 4 {
                step!(0);
                a = a.add(MR);
                b = b.add(NR);
            }
            let b =
                (!bias.is_null()).then(|| (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8))));
            for (i, row) in acc.iter().enumerate() {
                let d = c.add(i * rs);
                let (mut v0, mut v1) = (row[0], row[1]);
                if !overwrite {
                    v0 = _mm256_add_ps(_mm256_loadu_ps(d), v0);
                    v1 = _mm256_add_ps(_mm256_loadu_ps(d.add(8)), v1);
                }
                if let Some((b0, b1)) = b {
                    v0 = _mm256_add_ps(v0, b0);
                    v1 = _mm256_add_ps(v1, b1);
                }
                _mm256_storeu_ps(d, v0);
                _mm256_storeu_ps(d.add(8), v1);
            }
        }
    }

    /// Transposes eight `__m256` rows in place: afterwards `$r[q][i]` is the old `$r[i][q]`.
    macro_rules! transpose8 {
        ($r:ident) => {{
            let t0 = _mm256_unpacklo_ps($r[0], $r[1]);
            let t1 = _mm256_unpackhi_ps($r[0], $r[1]);
            let t2 = _mm256_unpacklo_ps($r[2], $r[3]);
            let t3 = _mm256_unpackhi_ps($r[2], $r[3]);
            let t4 = _mm256_unpacklo_ps($r[4], $r[5]);
            let t5 = _mm256_unpackhi_ps($r[4], $r[5]);
            let t6 = _mm256_unpacklo_ps($r[6], $r[7]);
            let t7 = _mm256_unpackhi_ps($r[6], $r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            $r[0] = _mm256_permute2f128_ps::<0x20>(u0, u4);
            $r[1] = _mm256_permute2f128_ps::<0x20>(u1, u5);
            $r[2] = _mm256_permute2f128_ps::<0x20>(u2, u6);
            $r[3] = _mm256_permute2f128_ps::<0x20>(u3, u7);
            $r[4] = _mm256_permute2f128_ps::<0x31>(u0, u4);
            $r[5] = _mm256_permute2f128_ps::<0x31>(u1, u5);
            $r[6] = _mm256_permute2f128_ps::<0x31>(u2, u6);
            $r[7] = _mm256_permute2f128_ps::<0x31>(u3, u7);
        }};
    }

    /// Packs the `mc × kc` block of `A` at `a` (strides `rs`, `cs`) into `⌈mc / 6⌉`
    /// strips of `6 × kc`, strip `s` at `out + s * 6 * kc` holding
    /// `out[s * 6 kc + p * 6 + i] = A[6 s + i, p]` (zero past row `mc`).
    ///
    /// # Safety
    /// `a` is valid for the block, `out` for `⌈mc / 6⌉ · 6 · kc` floats.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_a(mc: usize, kc: usize, a: *const f32, rs: usize, cs: usize, out: *mut f32) {
        // SAFETY: reads inside the block, writes inside the strips (contract above).
        unsafe {
            let mut s0 = 0;
            while s0 < mc {
                let mr = MR.min(mc - s0);
                let src = a.add(s0 * rs);
                let dst = out.add(s0 * kc);
                if mr == MR && cs == 1 {
                    // rows contiguous: transpose 8 × 8 blocks (rows 6 and 7 zero)
                    let mut p = 0;
                    while p + 8 <= kc {
                        let mut r = [_mm256_setzero_ps(); 8];
                        for (i, v) in r.iter_mut().enumerate().take(MR) {
                            *v = _mm256_loadu_ps(src.add(i * rs + p));
                        }
                        transpose8!(r);
                        for (q, v) in r.iter().enumerate() {
                            let d = dst.add((p + q) * MR);
                            _mm_storeu_ps(d, _mm256_castps256_ps128(*v));
                            _mm_storel_pd(
                                d.add(4) as *mut f64,
                                _mm_castps_pd(_mm256_extractf128_ps::<1>(*v)),
                            );
                        }
                        p += 8;
                    }
                    for p in p..kc {
                        for i in 0..MR {
                            *dst.add(p * MR + i) = *src.add(i * rs + p);
                        }
                    }
                } else if mr == MR && rs == 1 {
                    // columns contiguous: six floats a step
                    for p in 0..kc {
                        std::ptr::copy_nonoverlapping(src.add(p * cs), dst.add(p * MR), MR);
                    }
                } else {
                    for p in 0..kc {
                        for i in 0..MR {
                            *dst.add(p * MR + i) = if i < mr {
                                *src.add(i * rs + p * cs)
                            } else {
                                0.0
                            };
                        }
                    }
                }
                s0 += MR;
            }
        }
    }

    /// Packs the `kc × nc` panel of `B` at `b` (strides `rs`, `cs`) into `⌈nc / 16⌉`
    /// strips of `kc × 16`, strip `t` at `out + t * 16 * kc` holding
    /// `out[t * 16 kc + p * 16 + j] = B[p, 16 t + j]` (zero past column `nc`).
    ///
    /// # Safety
    /// `b` is valid for the panel, `out` for `⌈nc / 16⌉ · 16 · kc` floats.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_b(kc: usize, nc: usize, b: *const f32, rs: usize, cs: usize, out: *mut f32) {
        // SAFETY: reads inside the panel, writes inside the strips (contract above).
        unsafe {
            let mut t0 = 0;
            while t0 < nc {
                let nr = NR.min(nc - t0);
                let src = b.add(t0 * cs);
                let dst = out.add(t0 * kc);
                if nr == NR && cs == 1 {
                    for p in 0..kc {
                        let s = src.add(p * rs);
                        let d = dst.add(p * NR);
                        _mm256_store_ps(d, _mm256_loadu_ps(s));
                        _mm256_store_ps(d.add(8), _mm256_loadu_ps(s.add(8)));
                    }
                } else if nr == NR && rs == 1 {
                    // columns contiguous (a transposed matrix): 8 × 8 transposes
                    let mut p = 0;
                    while p + 8 <= kc {
                        for half in 0..2 {
                            let mut r = [_mm256_setzero_ps(); 8];
                            for (j, v) in r.iter_mut().enumerate() {
                                *v = _mm256_loadu_ps(src.add((half * 8 + j) * cs + p));
                            }
                            transpose8!(r);
                            for (q, v) in r.iter().enumerate() {
                                _mm256_store_ps(dst.add((p + q) * NR + half * 8), *v);
                            }
                        }
                        p += 8;
                    }
                    for p in p..kc {
                        for j in 0..NR {
                            *dst.add(p * NR + j) = *src.add(j * cs + p);
                        }
                    }
                } else {
                    for p in 0..kc {
                        for j in 0..NR {
                            *dst.add(p * NR + j) = if j < nr {
                                *src.add(p * rs + j * cs)
                            } else {
                                0.0
                            };
                        }
                    }
                }
                t0 += NR;
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::imp::{Split, MC, MR, NC, NR};
    use super::*;

    /// A deterministic value in [-1, 1) for index `i` of operand `salt`.
    fn val(i: usize, salt: usize) -> f32 {
        let x = (i.wrapping_mul(2654435761).wrapping_add(salt * 97)) % 2003;
        x as f32 / 1001.5 - 1.0
    }

    /// One operand stored with strides for `layout`: 0 row-major, 1 column-major,
    /// 2 a general stride (every other column of a wider row-major matrix, so neither
    /// stride is 1). Returns the storage and `(rs, cs)`.
    fn operand(rows: usize, cols: usize, layout: usize, salt: usize) -> (Vec<f32>, (usize, usize)) {
        let (len, rs, cs) = match layout {
            0 => (rows * cols, cols, 1),
            1 => (rows * cols, 1, rows),
            _ => (rows * (2 * cols + 1), 2 * cols + 1, 2),
        };
        let mut v = vec![f32::NAN; len.max(1)];
        for i in 0..rows {
            for j in 0..cols {
                v[i * rs + j * cs] = val(i * cols + j, salt);
            }
        }
        (v, (rs, cs))
    }

    /// Runs `sgemm` on an `m × k` by `k × n` product with the given layouts into a
    /// destination whose rows are `n + 3` apart, starting from `init`, and checks every
    /// element (and that the gap after each row is untouched) against an f64 sum.
    #[allow(clippy::too_many_arguments)]
    fn check(m: usize, k: usize, n: usize, la: usize, lb: usize, accumulate: bool, threads: usize) {
        let (a, sa) = operand(m, k, la, 1);
        let (b, sb) = operand(k, n, lb, 2);
        let rs = n + 3;
        let init = |i: usize| 0.25 + (i % 7) as f32;
        let mut dst: Vec<f32> = (0..m * rs).map(init).collect();
        // SAFETY: the CPU has the features (checked by the caller); every index the
        // contract names lies inside the three vectors.
        unsafe {
            sgemm(
                m,
                k,
                n,
                dst.as_mut_ptr(),
                rs,
                accumulate,
                a.as_ptr(),
                sa,
                b.as_ptr(),
                sb,
                std::ptr::null(),
                threads,
            )
        };
        for i in 0..m {
            for j in 0..rs {
                let got = dst[i * rs + j];
                let what = format!("{m}x{k}x{n} layouts {la}{lb} acc {accumulate} ({i}, {j})");
                if j >= n {
                    assert_eq!(got.to_bits(), init(i * rs + j).to_bits(), "gap {what}");
                    continue;
                }
                let (mut want, mut mag) = (0f64, 0f64);
                for p in 0..k {
                    let x = a[i * sa.0 + p * sa.1] as f64 * b[p * sb.0 + j * sb.1] as f64;
                    want += x;
                    mag += x.abs();
                }
                if accumulate {
                    let c = init(i * rs + j) as f64;
                    want += c;
                    mag += c.abs();
                }
                // each of the k products and additions rounds once in f32
                let tol = (k as f64 + 2.0) * f32::EPSILON as f64 * mag + 1e-30;
                assert!(
                    (got as f64 - want).abs() <= tol,
                    "{what}: {got} vs {want} (tol {tol})"
                );
            }
        }
    }

    #[test]
    fn matches_a_plain_sum_around_the_tile_edges() {
        if !available() {
            return;
        }
        // every m, n, k around the tile edges, cycling through the 9 layout pairs and
        // accumulate on / off so each pair meets many shapes
        let mut case = 0;
        for k in [1, 7, 255, 256, 257, 600] {
            for m in 1..=13 {
                for n in 1..=33 {
                    let (la, lb) = (case % 3, (case / 3) % 3);
                    check(m, k, n, la, lb, (case / 9) % 2 == 1, 1);
                    case += 1;
                }
            }
        }
    }

    #[test]
    fn every_layout_and_accumulate_on_full_and_ragged_tiles() {
        if !available() {
            return;
        }
        for (m, k, n) in [(12, 33, 32), (13, 64, 35), (6, 9, 16), (1, 300, 1)] {
            for la in 0..3 {
                for lb in 0..3 {
                    for acc in [false, true] {
                        check(m, k, n, la, lb, acc, 1);
                    }
                }
            }
        }
    }

    #[test]
    fn several_cache_blocks_in_each_dimension() {
        if !available() {
            return;
        }
        // m over MC (ragged last block), k over KC (three depth blocks), n over NC
        check(MC + 13, 600, 40, 0, 0, true, 1);
        check(MC * 2 + 1, 520, 21, 1, 1, false, 1);
        check(7, 300, NC + 37, 0, 1, false, 1);
        check(8, 3, NC * 2 + 5, 2, 0, true, 1);
    }

    #[test]
    fn splits_tall_outputs_by_rows_and_wide_ones_by_columns() {
        let s = Split::new(2048, 768, 2);
        assert_eq!((s.by_rows, s.blocks, s.len), (true, 2, 1026));
        let s = Split::new(32, 1024, 2);
        assert_eq!((s.by_rows, s.blocks, s.len), (false, 2, 512));
        // too narrow for two blocks of two tiles each
        let s = Split::new(8, 40, 4);
        assert_eq!((s.by_rows, s.blocks), (false, 1));
        let s = Split::new(100, 10, 1);
        assert_eq!(s.blocks, 1);
        // blocks are whole tiles; the last one ragged
        let s = Split::new(6 * MR + 1, 3, 3);
        assert_eq!((s.by_rows, s.blocks, s.len), (true, 3, 3 * MR));
        assert_eq!(NR % 8, 0);
    }

    /// `sgemm` of a fixed product with `threads` threads inside a pool of that size.
    fn threaded(m: usize, k: usize, n: usize, la: usize, lb: usize, threads: usize) -> Vec<f32> {
        let (a, sa) = operand(m, k, la, 3);
        let (b, sb) = operand(k, n, lb, 4);
        let mut dst = vec![0.5f32; m * n];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("test pool");
        pool.install(|| {
            // SAFETY: as in `check`.
            unsafe {
                sgemm(
                    m,
                    k,
                    n,
                    dst.as_mut_ptr(),
                    n,
                    true,
                    a.as_ptr(),
                    sa,
                    b.as_ptr(),
                    sb,
                    std::ptr::null(),
                    threads,
                )
            }
        });
        dst
    }

    #[test]
    fn a_bias_on_the_stores_gives_the_bits_of_the_product_then_the_add() {
        if !available() {
            eprintln!("skipped: no AVX2/FMA");
            return;
        }
        // full and ragged tiles in both directions, one and several depth blocks (the
        // bias goes onto the last), a transposed B, split across 1 and 2 threads
        for (m, k, n, lb) in [
            (32, 64, 48, 0),
            (13, 300, 37, 1),
            (7, 600, 70, 0),
            (40, 5, 17, 1),
        ] {
            let (a, sa) = operand(m, k, 0, 5);
            let (b, sb) = operand(k, n, lb, 6);
            let bias: Vec<f32> = (0..n).map(|j| val(j, 7)).collect();
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("test pool");
                let (mut want, mut got) = (vec![0f32; m * n], vec![f32::NAN; m * n]);
                pool.install(|| {
                    // SAFETY: the CPU has the features (checked above); every index the
                    // contract names lies inside the vectors.
                    unsafe {
                        let (ap, bp) = (a.as_ptr(), b.as_ptr());
                        sgemm(
                            m,
                            k,
                            n,
                            want.as_mut_ptr(),
                            n,
                            false,
                            ap,
                            sa,
                            bp,
                            sb,
                            std::ptr::null(),
                            threads,
                        );
                        let (dp, cp) = (got.as_mut_ptr(), bias.as_ptr());
                        sgemm(m, k, n, dp, n, false, ap, sa, bp, sb, cp, threads);
                    }
                });
                for (row, w) in want.chunks_mut(n).zip(std::iter::repeat(&bias)) {
                    for (d, &c) in row.iter_mut().zip(w) {
                        *d += c;
                    }
                }
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(same, "{m}x{k}x{n} B layout {lb}, {threads} threads");
            }
        }
    }

    #[test]
    fn a_packed_b_gives_the_same_bits_as_packing_per_product() {
        if !available() {
            return;
        }
        // several depth blocks, ragged strips, row and column splits, every B layout
        for (m, k, n, la, lb) in [
            (32, 256, 1024, 0, 1),
            (32, 1024, 256, 0, 0),
            (13, 600, 37, 1, 2),
            (301, 300, 97, 2, 0),
            (7, 300, NC + 37, 0, 1),
        ] {
            let (a, sa) = operand(m, k, la, 5);
            let (b, sb) = operand(k, n, lb, 6);
            // SAFETY: the CPU has the features; `b` holds every index of its layout.
            let packed = unsafe { PackedB::new(k, n, b.as_ptr(), sb) };
            for accumulate in [false, true] {
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("test pool");
                    let (mut want, mut got) = (vec![0.5f32; m * n], vec![0.5f32; m * n]);
                    pool.install(|| {
                        // SAFETY: as in `check`.
                        unsafe {
                            sgemm(
                                m,
                                k,
                                n,
                                want.as_mut_ptr(),
                                n,
                                accumulate,
                                a.as_ptr(),
                                sa,
                                b.as_ptr(),
                                sb,
                                std::ptr::null(),
                                threads,
                            );
                            sgemm_packed(
                                m,
                                got.as_mut_ptr(),
                                n,
                                accumulate,
                                a.as_ptr(),
                                sa,
                                &packed,
                                threads,
                            );
                        }
                    });
                    let same = want
                        .iter()
                        .zip(&got)
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(
                        same,
                        "{m}x{k}x{n} layouts {la}{lb} acc {accumulate} threads {threads}"
                    );
                }
            }
        }
    }

    #[test]
    fn bit_identical_at_any_thread_count() {
        if !available() {
            return;
        }
        for (m, k, n, la, lb) in [
            (301, 300, 97, 0, 1),
            (40, 513, 250, 1, 0),
            (13, 64, 1000, 0, 0),
            (200, 2, 200, 2, 2),
        ] {
            let one = threaded(m, k, n, la, lb, 1);
            for threads in [2, 3, 4] {
                let many = threaded(m, k, n, la, lb, threads);
                let same = one
                    .iter()
                    .zip(&many)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{m}x{k}x{n} at {threads} threads");
            }
        }
        // and the threaded result is right
        check(301, 300, 97, 0, 1, true, 2);
        check(40, 513, 250, 1, 0, false, 3);
    }
}
