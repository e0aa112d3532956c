//! Reproducible random streams: a counter-based Philox4x32-10 generator.
//!
//! Element `i` of a draw is a pure function of `(seed, offset + i)` (of the Philox block of
//! counter `offset + i`), so the numbers do not depend on how many threads fill the tensor,
//! and a CUDA kernel given the same seed and offset produces the very same stream. Each
//! draw advances the generator's offset by the number of elements drawn.
//!
//! Bernoulli draws (`bernoulli`, the dropout masks) need fewer bits: element `i` takes
//! one 32-bit word, word `i mod 4` of the block of counter `offset + ⌊i/4⌋`, and is true
//! when that word is below `⌈p·2³²⌉` (so `p` counts in steps of 2⁻³²). A block per four
//! elements makes the masks of a dropout-heavy model four times cheaper to draw; they
//! still advance the offset by the number of elements.
//!
//! On x86-64 the blocks of consecutive counters are computed 8 at a time, one counter per
//! 32-bit lane of an AVX2 vector, when the CPU has AVX2 (detected at run time; the scalar
//! [`philox4x32_10`] otherwise): the same integer arithmetic, so every number is
//! bit-identical on either path. (An AVX-512 copy, 16 lanes, was 15 % faster still on a
//! Zen 4 core, but its intrinsics need Rust 1.89, above this crate's MSRV.)
//!
//! ```
//! use flint_runtime::{manual_seed, Tensor};
//! manual_seed(42);
//! let a = Tensor::randn([3], ());
//! manual_seed(42);
//! let b = Tensor::randn([3], ());
//! assert_eq!(a.to_vec::<f32>(), b.to_vec::<f32>());
//! ```

use crate::cpu::{parallel, pool};
use crate::dtype::DType;
use crate::error::{or_panic, Error, Result};
use crate::storage::CpuBuffer;
use crate::tensor::{check_device, Tensor, TensorOptions};
use rayon::prelude::*;
use std::sync::{Mutex, OnceLock};

const M0: u64 = 0xD251_1F53;
const M1: u64 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// One Philox4x32-10 block: 4 random `u32` from a 128-bit counter and a 64-bit key.
#[inline]
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for r in 0..10 {
        if r > 0 {
            key[0] = key[0].wrapping_add(W0);
            key[1] = key[1].wrapping_add(W1);
        }
        let p0 = M0 * ctr[0] as u64;
        let p1 = M1 * ctr[2] as u64;
        ctr = [
            (p1 >> 32) as u32 ^ ctr[1] ^ key[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ ctr[3] ^ key[1],
            p0 as u32,
        ];
    }
    ctr
}

/// Runs `kernel(dst, first)` over `out` in chunks (across the pool above the parallel
/// threshold), `first` being the index of `dst[0]` in `out`; chunks start at multiples
/// of `align`.
fn fill_chunks<T: Send>(
    out: &mut [T],
    align: usize,
    kernel: impl Fn(&mut [T], usize) + Send + Sync,
) {
    let n = out.len();
    if parallel::should_parallelize(n) {
        let chunk = parallel::chunk_len(n).next_multiple_of(align);
        parallel::install(|| {
            out.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(c, dst)| kernel(dst, c * chunk))
        });
    } else {
        kernel(out, 0);
    }
}

/// The block of counter `counter` under the key `seed`.
#[inline(always)]
fn block(seed: u64, counter: u64) -> [u32; 4] {
    philox4x32_10(
        [counter as u32, (counter >> 32) as u32, 0, 0],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// How blocks of consecutive counters are computed: one at a time, or 8 side by side in
/// SIMD lanes. Both give the same words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lanes {
    /// [`philox4x32_10`], one block at a time.
    Scalar,
    /// 8 blocks per AVX2 vector.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Lanes {
    /// The widest level this CPU runs (the feature tests are cached by `std`).
    #[inline]
    fn detect() -> Lanes {
        // the detection the vectorised loops use (`cpu::vmath`)
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::vmath::has_avx2_fma() {
            return Lanes::Avx2;
        }
        Lanes::Scalar
    }

    /// Writes the blocks of counters `ctr, ctr + 1, …` (wrapping) under the key `seed`
    /// into `out`, block `l` in `out[4l .. 4l + 4]`, for `want ≥ 1` blocks wanted, and
    /// returns how many it wrote: 1 to 16, which may be fewer than `want` (8 on AVX2) or
    /// more (AVX2 computes a whole vector of them).
    #[inline]
    fn blocks(self, seed: u64, ctr: u64, want: usize, out: &mut [u32; 64]) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            if self == Lanes::Avx2 && want > 2 {
                let out8: &mut [u32; 32] = (&mut out[..32]).try_into().expect("32 words");
                // SAFETY: `Avx2` is only chosen (by `detect`, or by a test after the same
                // check) where the CPU has AVX2.
                unsafe { simd::blocks8(seed, ctr, out8) };
                return 8;
            }
        }
        let n = want.min(16);
        for (l, o) in out.chunks_exact_mut(4).take(n).enumerate() {
            o.copy_from_slice(&block(seed, ctr.wrapping_add(l as u64)));
        }
        n
    }
}

/// `dst[j] = f(block(seed, ctr + j))` (counters wrapping).
fn map_blocks<T>(lanes: Lanes, seed: u64, ctr: u64, dst: &mut [T], f: &impl Fn([u32; 4]) -> T) {
    let mut buf = [0u32; 64];
    let mut ctr = ctr;
    let mut rest = dst;
    while !rest.is_empty() {
        let got = lanes
            .blocks(seed, ctr, rest.len().min(16), &mut buf)
            .min(rest.len());
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(got);
        for (d, w) in head.iter_mut().zip(buf.chunks_exact(4)) {
            *d = f([w[0], w[1], w[2], w[3]]);
        }
        rest = tail;
        ctr = ctr.wrapping_add(got as u64);
    }
}

/// `dst[j] = f(w)` for the word `w` of element `e + j` of a Bernoulli draw whose first
/// counter is `first`: word `(e + j) mod 4` of the block of counter `first + ⌊(e + j)/4⌋`.
fn map_words<T>(lanes: Lanes, seed: u64, first: u64, e: u64, dst: &mut [T], f: &impl Fn(u32) -> T) {
    let mut buf = [0u32; 64];
    let mut q = e / 4;
    let mut skip = (e % 4) as usize;
    let mut rest = dst;
    while !rest.is_empty() {
        let want = (skip + rest.len()).div_ceil(4).min(16);
        let got = lanes
            .blocks(seed, first.wrapping_add(q), want, &mut buf)
            .min(want);
        let words = &buf[skip..4 * got];
        let n = words.len().min(rest.len());
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
        for (d, &w) in head.iter_mut().zip(words) {
            *d = f(w);
        }
        rest = tail;
        q += got as u64;
        skip = 0;
    }
}

/// `dst[j] = f(w)` for the word `w` of element `e + j` of a Bernoulli draw reserved with
/// [`Generator::reserve_bernoulli`] (which returned `(seed, first)`): word `(e + j) mod 4`
/// of the block of counter `first + ⌊(e + j)/4⌋`. For fused kernels that draw a dropout
/// mask themselves (the CPU attention).
pub(crate) fn map_bernoulli_words<T>(
    seed: u64,
    first: u64,
    e: u64,
    dst: &mut [T],
    f: impl Fn(u32) -> T,
) {
    map_words(Lanes::detect(), seed, first, e, dst, &f);
}

/// Philox4x32-10 on 8 consecutive counters at once (AVX2): the four
/// words of the blocks in four vectors (word `w` of block `l` in lane `l` of vector `w`),
/// the 32×32 → 64-bit products from `mul_epu32` on the even and the odd lanes, and a
/// transpose at the end so that the words come out in the scalar order.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{M0, M1, W0, W1};
    use std::arch::x86_64::*;

    /// The round keys: `(seed_lo + r·W0, seed_hi + r·W1)` for rounds `r = 0..10`.
    #[inline(always)]
    fn round_keys(seed: u64) -> [[u32; 2]; 10] {
        let mut k = [[0; 2]; 10];
        let (mut k0, mut k1) = (seed as u32, (seed >> 32) as u32);
        for kr in &mut k {
            *kr = [k0, k1];
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        k
    }

    /// The high and low 32 bits of the lane-wise products `a · m` of 8 lanes (`m` the
    /// same in every lane): `mul_epu32` multiplies the even lanes, and the odd ones
    /// shifted down.
    macro_rules! mulhilo8 {
        ($a:expr, $m:expr) => {{
            let (a, m) = ($a, $m);
            let even = _mm256_mul_epu32(a, m);
            let odd = _mm256_mul_epu32(_mm256_srli_epi64::<32>(a), m);
            (
                _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(even), odd),
                _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd)),
            )
        }};
    }

    /// The blocks of counters `ctr .. ctr + 8` (wrapping) under the key `seed`, block `l`
    /// into `out[4l .. 4l + 4]`.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn blocks8(seed: u64, ctr: u64, out: &mut [u32; 32]) {
        // SAFETY: the caller guarantees AVX2; the four 8-word stores go to words 8k ..
        // 8k + 8 (k < 4) of `out`, which holds 32.
        unsafe {
            let lo = _mm256_set1_epi32(ctr as u32 as i32);
            let hi = _mm256_set1_epi32((ctr >> 32) as u32 as i32);
            let c0 = _mm256_add_epi32(lo, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            // a lane whose low word wrapped (c0 < lo unsigned, compared with the sign
            // bits flipped) carries 1 into the high word (the mask is -1 there)
            let sign = _mm256_set1_epi32(i32::MIN);
            let carry = _mm256_cmpgt_epi32(_mm256_xor_si256(lo, sign), _mm256_xor_si256(c0, sign));
            let c1 = _mm256_sub_epi32(hi, carry);
            // the ten rounds on the counters [c0, c1, 0, 0] (words 2 and 3 being 0, the
            // first round's second product is 0)
            let (m0, m1) = (
                _mm256_set1_epi32(M0 as u32 as i32),
                _mm256_set1_epi32(M1 as u32 as i32),
            );
            let keys = round_keys(seed);
            let (h0, l0) = mulhilo8!(c0, m0);
            let (mut c0, mut c1, mut c2, mut c3) = (
                _mm256_xor_si256(c1, _mm256_set1_epi32(keys[0][0] as i32)),
                _mm256_setzero_si256(),
                _mm256_xor_si256(h0, _mm256_set1_epi32(keys[0][1] as i32)),
                l0,
            );
            for &[k0, k1] in &keys[1..] {
                let (k0, k1) = (_mm256_set1_epi32(k0 as i32), _mm256_set1_epi32(k1 as i32));
                let (h0, l0) = mulhilo8!(c0, m0);
                let (h1, l1) = mulhilo8!(c2, m1);
                c0 = _mm256_xor_si256(_mm256_xor_si256(h1, c1), k0);
                c1 = l1;
                c2 = _mm256_xor_si256(_mm256_xor_si256(h0, c3), k1);
                c3 = l0;
            }
            // transpose: block l is lane l of (c0, c1, c2, c3); in each 128-bit half h
            // the unpacks give u_j = block 4h + j
            let t0 = _mm256_unpacklo_epi32(c0, c1);
            let t1 = _mm256_unpackhi_epi32(c0, c1);
            let t2 = _mm256_unpacklo_epi32(c2, c3);
            let t3 = _mm256_unpackhi_epi32(c2, c3);
            let u0 = _mm256_unpacklo_epi64(t0, t2);
            let u1 = _mm256_unpackhi_epi64(t0, t2);
            let u2 = _mm256_unpacklo_epi64(t1, t3);
            let u3 = _mm256_unpackhi_epi64(t1, t3);
            let rows = [
                _mm256_permute2x128_si256::<0x20>(u0, u1),
                _mm256_permute2x128_si256::<0x20>(u2, u3),
                _mm256_permute2x128_si256::<0x31>(u0, u1),
                _mm256_permute2x128_si256::<0x31>(u2, u3),
            ];
            let dst = out.as_mut_ptr();
            for (k, row) in rows.into_iter().enumerate() {
                _mm256_storeu_si256(dst.add(8 * k).cast(), row);
            }
        }
    }
}

/// PyTorch's default CPU seed, so an unseeded program is still deterministic.
pub const DEFAULT_SEED: u64 = 67_280_421_310_721;

/// A random generator: a seed (the Philox key) and an offset (the next counter).
///
/// ```
/// use flint_runtime::Generator;
/// let mut g = Generator::new(7);
/// let x = g.rand([2, 2], ());
/// assert!(x.to_vec::<f32>().iter().all(|&v| (0.0..1.0).contains(&v)));
/// assert_eq!(g.offset(), 4);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generator {
    seed: u64,
    offset: u64,
}

impl Generator {
    /// A generator seeded with `seed`, at offset 0.
    pub fn new(seed: u64) -> Generator {
        Generator { seed, offset: 0 }
    }
    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// The counter of the next draw.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Reseeds and rewinds to offset 0.
    pub fn manual_seed(&mut self, seed: u64) {
        self.seed = seed;
        self.offset = 0;
    }
    /// Restores a state saved with [`Generator::seed`] and [`Generator::offset`].
    pub fn set_state(&mut self, seed: u64, offset: u64) {
        self.seed = seed;
        self.offset = offset;
    }

    /// Reserves `n` counters and returns the first.
    fn advance(&mut self, n: usize) -> u64 {
        let start = self.offset;
        self.offset = self.offset.wrapping_add(n as u64);
        start
    }

    /// Reserves the counters of a Bernoulli draw of `n` elements (advancing the offset
    /// as [`Generator::bernoulli`] of `n` elements would) and returns `(seed, first
    /// counter)`: element `i` of that draw is word `i mod 4` of the block of counter
    /// `first + ⌊i/4⌋` (see [`map_bernoulli_words`]). For fused kernels that draw a
    /// dropout mask themselves (the CPU attention).
    pub(crate) fn reserve_bernoulli(&mut self, n: usize) -> (u64, u64) {
        (self.seed, self.advance(n))
    }

    /// Fills a buffer of `n` values, element `i` computed by `f(block(offset + i))`.
    fn fill<T: Send + Default + Clone>(
        &mut self,
        n: usize,
        f: impl Fn([u32; 4]) -> T + Send + Sync,
    ) -> Vec<T> {
        let mut out = vec![T::default(); n];
        let start = self.advance(n);
        let (seed, lanes) = (self.seed, Lanes::detect());
        // one block per element (a CUDA kernel given the seed and offset draws the same
        // stream), 8 or 16 of them at once in SIMD lanes where the CPU has them
        fill_chunks(&mut out, 1, |dst, first| {
            map_blocks(lanes, seed, start.wrapping_add(first as u64), dst, &f)
        });
        out
    }

    /// `out[i] = f(w)` for the 32-bit word `w` of element `i` of a Bernoulli draw (word
    /// `i mod 4` of the block of counter `offset + ⌊i/4⌋`; see the module docs).
    fn fill_words<T: Send>(&mut self, out: &mut [T], f: impl Fn(u32) -> T + Send + Sync) {
        let start = self.advance(out.len());
        let (seed, lanes) = (self.seed, Lanes::detect());
        // chunks start at whole blocks (any start gives the same words; whole blocks
        // compute each block once)
        fill_chunks(out, 4, |dst, first| {
            map_words(lanes, seed, start, first as u64, dst, &f)
        });
    }

    /// Uniform samples in `[0, 1)`.
    pub fn rand(&mut self, shape: impl AsRef<[usize]>, opts: impl Into<TensorOptions>) -> Tensor {
        or_panic(self.try_uniform(shape.as_ref(), 0.0, 1.0, opts.into()))
    }

    /// Uniform samples in `[low, high)`.
    pub fn uniform(
        &mut self,
        shape: impl AsRef<[usize]>,
        low: f64,
        high: f64,
        opts: impl Into<TensorOptions>,
    ) -> Tensor {
        or_panic(self.try_uniform(shape.as_ref(), low, high, opts.into()))
    }

    fn try_uniform(
        &mut self,
        shape: &[usize],
        low: f64,
        high: f64,
        opts: TensorOptions,
    ) -> Result<Tensor> {
        check_device(opts.device)?;
        let bits = mantissa_bits("rand", opts.dtype)?;
        let n: usize = shape.iter().product();
        let v = self.fill(n, |r| low + (high - low) * unit(r, bits));
        // drawn on the host, so a seed gives the same numbers on every device
        Tensor::from_buffer_on(
            CpuBuffer::from_f64_iter(opts.dtype, v.into_iter()),
            shape,
            opts.device,
        )
    }

    /// Standard normal samples (Box–Muller).
    pub fn randn(&mut self, shape: impl AsRef<[usize]>, opts: impl Into<TensorOptions>) -> Tensor {
        or_panic(self.try_normal(shape.as_ref(), 0.0, 1.0, opts.into()))
    }

    /// Normal samples with mean and standard deviation.
    pub fn normal(
        &mut self,
        shape: impl AsRef<[usize]>,
        mean: f64,
        std: f64,
        opts: impl Into<TensorOptions>,
    ) -> Tensor {
        or_panic(self.try_normal(shape.as_ref(), mean, std, opts.into()))
    }

    fn try_normal(
        &mut self,
        shape: &[usize],
        mean: f64,
        std: f64,
        opts: TensorOptions,
    ) -> Result<Tensor> {
        check_device(opts.device)?;
        mantissa_bits("randn", opts.dtype)?;
        let n: usize = shape.iter().product();
        let v = self.fill(n, |r| {
            let u1 = 1.0 - unit(r, 53); // (0, 1]
            let u2 = unit([r[2], r[3], 0, 0], 53);
            mean + std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        });
        Tensor::from_buffer_on(
            CpuBuffer::from_f64_iter(opts.dtype, v.into_iter()),
            shape,
            opts.device,
        )
    }

    /// Integers uniform in `[low, high)`, as an i64 tensor.
    #[track_caller]
    pub fn randint(&mut self, low: i64, high: i64, shape: impl AsRef<[usize]>) -> Tensor {
        or_panic(self.try_randint(low, high, shape.as_ref()))
    }

    /// Fallible [`Generator::randint`]: an error when `low >= high`.
    pub fn try_randint(&mut self, low: i64, high: i64, shape: &[usize]) -> Result<Tensor> {
        if low >= high {
            return Err(Error::index(
                "randint",
                format!("empty range: low {low} >= high {high}"),
            ));
        }
        let range = high.wrapping_sub(low) as u64 as u128;
        let n: usize = shape.iter().product();
        let v = self.fill(n, |r| {
            let x = ((r[0] as u64) << 32 | r[1] as u64) as u128;
            low.wrapping_add(((x * range) >> 64) as i64)
        });
        Ok(Tensor::from_vec(v, shape))
    }

    /// Booleans that are `true` with probability `p`.
    pub fn bernoulli(&mut self, shape: impl AsRef<[usize]>, p: f64) -> Tensor {
        let shape = shape.as_ref();
        let n: usize = shape.iter().product();
        let below = Below::new(p);
        let mut v = vec![false; n];
        self.fill_words(&mut v, |w| below.test(w));
        Tensor::from_vec(v, shape)
    }

    /// `scale` where [`Generator::bernoulli`]`(shape, p)` would give `true`, 0 elsewhere,
    /// in `dtype` (a float dtype), drawn in one pass: the mask of inverted dropout. Equal
    /// to `bernoulli(shape, p).to_dtype(dtype) * scale`, and advances the generator the
    /// same way.
    pub(crate) fn scaled_bernoulli(
        &mut self,
        shape: &[usize],
        p: f64,
        scale: f64,
        dtype: DType,
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let below = Below::new(p);
        let buffer = match dtype {
            // a cached host buffer: a fresh one would be page-faulted in at every step
            DType::F32 => {
                let (s, mut v) = (scale as f32, pool::zeros::<f32>(n));
                self.fill_words(&mut v, |w| below.keep_f32(w, s));
                CpuBuffer::F32(v)
            }
            DType::F64 => {
                let mut v = pool::zeros::<f64>(n);
                self.fill_words(&mut v, |w| below.keep_f64(w, scale));
                CpuBuffer::F64(v)
            }
            other => {
                mantissa_bits("dropout", other)?;
                let mut v = vec![0.0; n];
                self.fill_words(&mut v, |w| below.keep_f64(w, scale));
                CpuBuffer::from_f64_iter(other, v.into_iter())
            }
        };
        Ok(Tensor::from_buffer(buffer, shape))
    }

    /// A random permutation of `0..n` as an i64 tensor.
    pub fn randperm(&mut self, n: usize) -> Tensor {
        let keys = self.fill(n, |r| (r[0] as u64) << 32 | r[1] as u64);
        let mut idx: Vec<i64> = (0..n as i64).collect();
        idx.sort_by_key(|&i| (keys[i as usize], i));
        Tensor::from_vec(idx, [n])
    }
}

/// The Bernoulli test of one 32-bit word `w`: `w·2⁻³² < p`, done on the integer as
/// `w < ⌈p·2³²⌉` (`p·2³²` is exact); false for every word when `p ≤ 0` or NaN, true for
/// every word when `p ≥ 1`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Below(u64);

impl Below {
    pub(crate) fn new(p: f64) -> Below {
        let t = (p.clamp(0.0, 1.0) * 2f64.powi(32)).ceil() as u64;
        Below(if p.is_nan() { 0 } else { t })
    }
    #[inline(always)]
    pub(crate) fn test(self, w: u32) -> bool {
        (w as u64) < self.0
    }
    /// `x` where `w` passes the test, `+0.0` elsewhere, without a branch (a dropout
    /// mask's tests are random, a branch on them mispredicted often).
    #[inline(always)]
    fn keep_f32(self, w: u32, x: f32) -> f32 {
        f32::from_bits(x.to_bits() & 0u32.wrapping_sub(self.test(w) as u32))
    }
    /// [`Below::keep_f32`] in f64.
    #[inline(always)]
    fn keep_f64(self, w: u32, x: f64) -> f64 {
        f64::from_bits(x.to_bits() & 0u64.wrapping_sub(self.test(w) as u64))
    }
}

/// A uniform number in `[0, 1)` with `bits` random bits (exactly representable in the
/// target dtype, so rounding never produces 1).
#[inline]
fn unit(r: [u32; 4], bits: u32) -> f64 {
    let x = (r[0] as u64) << 32 | r[1] as u64;
    (x >> (64 - bits)) as f64 * (-(bits as f64)).exp2()
}

fn mantissa_bits(op: &'static str, dtype: DType) -> Result<u32> {
    match dtype {
        DType::F64 => Ok(53),
        DType::F32 => Ok(24),
        DType::F16 => Ok(11),
        DType::BF16 => Ok(8),
        other => Err(Error::dtype(
            op,
            format!("expected a floating-point dtype, got {other}"),
        )),
    }
}

fn global() -> &'static Mutex<Generator> {
    static G: OnceLock<Mutex<Generator>> = OnceLock::new();
    G.get_or_init(|| Mutex::new(Generator::new(DEFAULT_SEED)))
}

/// Runs `f` with the global generator locked.
pub fn with_global_generator<R>(f: impl FnOnce(&mut Generator) -> R) -> R {
    let mut g = global().lock().unwrap_or_else(|p| p.into_inner());
    f(&mut g)
}

/// Seeds the global generator (like `torch.manual_seed`).
pub fn manual_seed(seed: u64) {
    with_global_generator(|g| g.manual_seed(seed));
}

impl Tensor {
    /// Uniform samples in `[0, 1)` from the global generator.
    pub fn rand(shape: impl AsRef<[usize]>, opts: impl Into<TensorOptions>) -> Tensor {
        with_global_generator(|g| g.rand(shape, opts))
    }
    /// Standard normal samples from the global generator.
    pub fn randn(shape: impl AsRef<[usize]>, opts: impl Into<TensorOptions>) -> Tensor {
        with_global_generator(|g| g.randn(shape, opts))
    }
    /// Integers uniform in `[low, high)` (i64) from the global generator.
    #[track_caller]
    pub fn randint(low: i64, high: i64, shape: impl AsRef<[usize]>) -> Tensor {
        or_panic(with_global_generator(|g| {
            g.try_randint(low, high, shape.as_ref())
        }))
    }
    /// A random permutation of `0..n` (i64) from the global generator.
    pub fn randperm(n: usize) -> Tensor {
        with_global_generator(|g| g.randperm(n))
    }
    /// Uniform samples with the shape, dtype and device of `self`.
    pub fn rand_like(&self) -> Tensor {
        Tensor::rand(self.shape(), (self.dtype(), self.device()))
    }
    /// Normal samples with the shape, dtype and device of `self`.
    pub fn randn_like(&self) -> Tensor {
        Tensor::randn(self.shape(), (self.dtype(), self.device()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answers() {
        // Random123's known-answer vectors for philox4x32-10.
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
    }

    /// The levels this CPU runs, each to be called explicitly.
    fn levels() -> Vec<Lanes> {
        let mut v = vec![Lanes::Scalar];
        if Lanes::detect() != Lanes::Scalar {
            v.push(Lanes::detect());
        }
        v
    }

    /// Seeds and counters for the SIMD comparisons: small ones, ones whose low word is
    /// about to wrap (a vector straddling 2³²), the u64 wrap, and scattered ones.
    fn seeds_and_counters() -> (Vec<u64>, Vec<u64>) {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut seeds = vec![0, 1, 42, DEFAULT_SEED, u64::MAX, 0xffff_ffff, 1 << 32];
        seeds.extend((0..8).map(|_| next()));
        let mut ctrs = vec![0, 1, 3, 5];
        for base in [1u64 << 32, 2 << 32, 0xdead_0000_0000, 0] {
            for back in [1u64, 2, 5, 7, 8, 9, 15, 16, 17] {
                ctrs.push(base.wrapping_sub(back));
            }
        }
        ctrs.extend((0..8).map(|_| next()));
        (seeds, ctrs)
    }

    #[test]
    fn simd_blocks_are_the_scalar_blocks() {
        let (seeds, ctrs) = seeds_and_counters();
        let levels = levels();
        eprintln!("levels: {levels:?}");
        for &lanes in &levels {
            for &seed in &seeds {
                for &ctr in &ctrs {
                    for want in 1..=16 {
                        let mut out = [0u32; 64];
                        let n = lanes.blocks(seed, ctr, want, &mut out);
                        assert!((1..=16).contains(&n), "{lanes:?} want {want}: {n}");
                        for l in 0..n {
                            let c = ctr.wrapping_add(l as u64);
                            let want_words = philox4x32_10(
                                [c as u32, (c >> 32) as u32, 0, 0],
                                [seed as u32, (seed >> 32) as u32],
                            );
                            assert_eq!(
                                out[4 * l..4 * l + 4],
                                want_words,
                                "{lanes:?} seed {seed:#x} ctr {ctr:#x} block {l}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn simd_fills_are_the_scalar_fills() {
        let (seeds, ctrs) = seeds_and_counters();
        for &lanes in &levels() {
            for &seed in seeds.iter().step_by(5) {
                for &first in &ctrs {
                    for e in [0u64, 1, 2, 3, 6, 1001] {
                        for len in [0usize, 1, 2, 3, 5, 8, 13, 31, 33, 64, 67] {
                            // Bernoulli words: element e + j is word (e + j) mod 4 of the
                            // block first + (e + j)/4
                            let mut got = vec![0u32; len];
                            map_words(lanes, seed, first, e, &mut got, &|w| w);
                            for (j, &w) in got.iter().enumerate() {
                                let i = e + j as u64;
                                let r = block(seed, first.wrapping_add(i / 4));
                                assert_eq!(
                                    w,
                                    r[(i % 4) as usize],
                                    "{lanes:?} seed {seed:#x} first {first:#x} e {e} j {j}"
                                );
                            }
                            // one block per element, from counter first + e
                            let ctr = first.wrapping_add(e);
                            let mut got = vec![[0u32; 4]; len];
                            map_blocks(lanes, seed, ctr, &mut got, &|r| r);
                            for (j, &r) in got.iter().enumerate() {
                                let c = ctr.wrapping_add(j as u64);
                                assert_eq!(
                                    r,
                                    block(seed, c),
                                    "{lanes:?} seed {seed:#x} ctr {c:#x}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn draws_near_the_counter_wrap() {
        // a draw that crosses 2^64 wraps to counter 0, as the scalar blocks do
        let seed = 5u64;
        let mut g = Generator::new(seed);
        g.set_state(seed, u64::MAX - 20);
        let got = g.fill(50, |r| r);
        for (i, r) in got.into_iter().enumerate() {
            assert_eq!(r, block(seed, (u64::MAX - 20).wrapping_add(i as u64)));
        }
        g.set_state(seed, u64::MAX - 9);
        let b = g.bernoulli([123], 0.5).to_vec::<bool>();
        for (i, &got) in b.iter().enumerate() {
            let r = block(seed, (u64::MAX - 9).wrapping_add(i as u64 / 4));
            assert_eq!(got, Below::new(0.5).test(r[i % 4]), "element {i}");
        }
    }

    #[test]
    fn fill_draws_block_offset_plus_i() {
        let seed = 0x1234_5678_9abc_def0u64;
        let mut g = Generator::new(seed);
        g.set_state(seed, 5);
        let got = g.fill(13, |r| r);
        for (i, r) in got.into_iter().enumerate() {
            let c = 5 + i as u64;
            let want = philox4x32_10([c as u32, 0, 0, 0], [seed as u32, (seed >> 32) as u32]);
            assert_eq!(r, want);
        }
        assert_eq!(g.offset(), 18);
    }

    #[test]
    fn bernoulli_takes_one_word_per_element() {
        let seed = 77u64;
        let mut g = Generator::new(seed);
        g.set_state(seed, 6);
        let b = g.bernoulli([11], 0.3).to_vec::<bool>();
        assert_eq!(g.offset(), 17);
        for (i, &got) in b.iter().enumerate() {
            let c = 6 + (i / 4) as u64;
            let r = philox4x32_10([c as u32, 0, 0, 0], [seed as u32, 0]);
            assert_eq!(got, (r[i % 4] as f64) * 2f64.powi(-32) < 0.3, "element {i}");
        }
        // the same bits at any thread count (chunks start at multiples of 4)
        let draw = |threads| {
            parallel::set_num_threads(threads);
            let v = Generator::new(3).bernoulli([300_001], 0.5).to_vec::<bool>();
            parallel::set_num_threads(0);
            v
        };
        assert_eq!(draw(1), draw(2));
    }

    #[test]
    fn integer_bernoulli_test_is_the_float_one() {
        let words = [
            0u32,
            1,
            2,
            1 << 31,
            (1 << 31) + 1,
            3_000_000_000,
            u32::MAX - 1,
            u32::MAX,
        ];
        for p in [
            0.0,
            1e-300,
            2f64.powi(-32),
            0.1,
            0.5,
            0.9,
            1.0 - 1e-16,
            1.0,
            f64::NAN,
            -1.0,
            2.0,
        ] {
            let below = Below::new(p);
            for &w in &words {
                assert_eq!(
                    below.test(w),
                    (w as f64) * 2f64.powi(-32) < p,
                    "p = {p}, w = {w}"
                );
            }
        }
        // the branch-free selects are the if-else
        for p in [0.0, 0.3, 1.0] {
            let below = Below::new(p);
            for &w in &words {
                for x in [1.25f64, -0.0, f64::INFINITY, f64::NAN] {
                    let want = if below.test(w) { x } else { 0.0 };
                    assert_eq!(below.keep_f64(w, x).to_bits(), want.to_bits());
                    let want = if below.test(w) { x as f32 } else { 0.0 };
                    assert_eq!(below.keep_f32(w, x as f32).to_bits(), want.to_bits());
                }
            }
        }
        // frequency: p = 0.25 gives a quarter
        let mut g = Generator::new(1);
        let n = 400_000;
        let hits = g
            .bernoulli([n], 0.25)
            .to_vec::<bool>()
            .iter()
            .filter(|&&b| b)
            .count();
        assert!((hits as f64 / n as f64 - 0.25).abs() < 0.005);
    }

    #[test]
    fn scaled_bernoulli_is_the_composition() {
        for dt in [DType::F32, DType::F64, DType::BF16] {
            let mut a = Generator::new(9);
            let mut b = a.clone();
            let want = a.bernoulli([70, 3], 0.7).to_dtype(dt) * (1.0 / 0.7);
            let got = b.scaled_bernoulli(&[70, 3], 0.7, 1.0 / 0.7, dt).unwrap();
            assert_eq!(got.dtype(), dt);
            let f64s = |t: &Tensor| t.to_dtype(DType::F64).to_vec::<f64>();
            assert_eq!(f64s(&got), f64s(&want));
            assert_eq!(a, b);
        }
    }

    #[test]
    fn same_numbers_at_any_thread_count() {
        let draw = |threads| {
            parallel::set_num_threads(threads);
            let mut g = Generator::new(3);
            let v = g.randn([300_000], DType::F64).to_vec::<f64>();
            parallel::set_num_threads(0);
            v
        };
        assert_eq!(draw(1), draw(2));
    }

    #[test]
    fn moments_are_right() {
        let mut g = Generator::new(11);
        let v = g.randn([200_000], DType::F64).to_vec::<f64>();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
        let u = g.rand([200_000], DType::F32).to_vec::<f32>();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let m = u.iter().map(|&x| x as f64).sum::<f64>() / u.len() as f64;
        assert!((m - 0.5).abs() < 0.01);
        let r = g.randint(-3, 4, [10_000]).to_vec::<i64>();
        assert!(r.iter().all(|x| (-3..4).contains(x)));
        for k in -3..4 {
            assert!(r.contains(&k));
        }
        let p = g.randperm(100).to_vec::<i64>();
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(p, s);
    }

    #[test]
    fn randint_rejects_empty_range() {
        assert!(Generator::new(0).try_randint(3, 3, &[2]).is_err());
    }
}
