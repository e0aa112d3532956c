//! Vectorisable `f32` transcendental functions: `exp`, `erfc`, `tanh`, `sigmoid`.
//!
//! The standard library's (libm's) `f32` functions are scalar calls with branches, so a
//! loop over a slice that calls them runs one element at a time; they were 7–11 % of the
//! transformer and LSTM training steps (GELU's `erfcf`, the gates' `tanhf`/`expf`).
//! These are straight-line code (no calls, no data-dependent branches: both sides of a
//! range split are computed and one is selected), so the compiler turns a loop over them
//! into SIMD code.
//!
//! Accuracy (checked against `f64` in the tests below over the whole `f32` range that
//! matters): `exp` within 2 ulp, `tanh` within 2 ulp, `sigmoid` within 4 ulp, `erfc`
//! within 1·10⁻⁵ relative where its value is a normal `f32` (the error of the rounded
//! `−x²` argument: ~1·10⁻⁶ at the `x ≈ 4` where GELU's tail lives, 8·10⁻⁶ at `x ≈ 8`). PyTorch's
//! own vectorised CPU kernels (Sleef) are within 1 ulp; the golden tests compare with a
//! relative tolerance of 1·10⁻⁵ or looser.
//!
//! The loops that apply such functions over slices, [`map_into`] and [`zip_into`], are
//! compiled twice: for the baseline target and with AVX2 + FMA, picked at run time (the
//! CPU's features are detected once and cached by the standard library). Only explicit
//! `mul_add` would use FMA instructions, so both copies give bit-identical results.
//!
//! Special values follow libm: `exp(−∞) = 0`, `exp(+∞) = +∞`, overflow to `+∞`, underflow
//! to 0 (flushing results below `2⁻¹²⁶`, where libm keeps subnormals, is not done: they are
//! produced as subnormals too), NaN in gives NaN out.

use std::mem::MaybeUninit;

/// Whether the CPU runs the AVX2 + FMA copies of the loops.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// The widest copy of the [`multiversion_loop!`] loops this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SimdLevel {
    /// The build's baseline target (SSE2 on x86-64).
    Baseline,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512 (F, VL, BW, DQ) besides AVX2 + FMA.
    Avx512,
}

/// The [`SimdLevel`] the multiversioned loops run at: this CPU's ([`detected_level`]),
/// unless a test forces another.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn simd_level() -> SimdLevel {
    #[cfg(test)]
    if let Some(l) = tests::forced_level() {
        return l;
    }
    detected_level()
}

/// The widest [`SimdLevel`] this CPU has, detected once (every multiversioned loop asks
/// on every call).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn detected_level() -> SimdLevel {
    static LEVEL: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        if !has_avx2_fma() {
            SimdLevel::Baseline
        } else if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
        {
            SimdLevel::Avx512
        } else {
            SimdLevel::Avx2
        }
    })
}

/// Defines a function `$name` (a loop over slices) that runs `$body` compiled for the baseline target or,
/// where the CPU has them, with AVX2 + FMA enabled (the body and the closures it calls,
/// being inlined into the AVX2 copy, vectorise 8 lanes wide). Const generics go in
/// brackets before the type parameters: `fn name<[const K: usize] T: Copy>(..)`.
macro_rules! multiversion_loop {
    ($(#[$doc:meta])* fn $name:ident<$($g:ident: $b:path),*>($($arg:ident: $ty:ty),*) $body:block) => {
        $crate::cpu::vmath::multiversion_loop! {
            $(#[$doc])* fn $name<[] $($g: $b),*>($($arg: $ty),*) $body
        }
    };
    // with const generics first: `fn name<[const K: usize] T: Copy>(..)`
    ($(#[$doc:meta])* fn $name:ident<[$(const $c:ident: usize),*] $($g:ident: $b:path),*>($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        #[inline]
        pub(crate) fn $name<$(const $c: usize,)* $($g: $b),*>($($arg: $ty),*) {
            #[inline(always)]
            fn body<$(const $c: usize,)* $($g: $b),*>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<$(const $c: usize,)* $($g: $b),*>($($arg: $ty),*) {
                body::<$($c,)* $($g),*>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
            unsafe fn avx512<$(const $c: usize,)* $($g: $b),*>($($arg: $ty),*) {
                body::<$($c,)* $($g),*>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            match $crate::cpu::vmath::simd_level() {
                // SAFETY: the CPU has the features `avx512` is compiled for
                $crate::cpu::vmath::SimdLevel::Avx512 => return unsafe { avx512::<$($c,)* $($g),*>($($arg),*) },
                // SAFETY: the CPU has the features `avx2` is compiled for
                $crate::cpu::vmath::SimdLevel::Avx2 => return unsafe { avx2::<$($c,)* $($g),*>($($arg),*) },
                $crate::cpu::vmath::SimdLevel::Baseline => {}
            }
            body::<$($c,)* $($g),*>($($arg),*)
        }
    };
}

pub(crate) use multiversion_loop;

multiversion_loop! {
    /// `dst[i] = f(x[i])` over the shorter of the two slices.
    fn map_into<T: Copy, U: Sized, F: Fn(T) -> U>(dst: &mut [MaybeUninit<U>], x: &[T], f: &F) {
        for (d, &v) in dst.iter_mut().zip(x) {
            d.write(f(v));
        }
    }
}

multiversion_loop! {
    /// `dst[i] = f(x[i], y[i])` over the shortest of the three slices.
    fn zip_into<T: Copy, U: Sized, F: Fn(T, T) -> U>(
        dst: &mut [MaybeUninit<U>],
        x: &[T],
        y: &[T],
        f: &F
    ) {
        for ((d, &a), &b) in dst.iter_mut().zip(x).zip(y) {
            d.write(f(a, b));
        }
    }
}

multiversion_loop! {
    /// `d[i] = f(d[i], y[i])` over the shorter of the two slices.
    fn update_zip<T: Copy, F: Fn(T, T) -> T>(d: &mut [T], y: &[T], f: &F) {
        for (d, &b) in d.iter_mut().zip(y) {
            *d = f(*d, b);
        }
    }
}

multiversion_loop! {
    /// `d[i] = f(d[i])`.
    fn update_each<T: Copy, F: Fn(T) -> T>(d: &mut [T], f: &F) {
        for d in d.iter_mut() {
            *d = f(*d);
        }
    }
}

/// `2²³ + 2²²`: adding it to an `f32` of magnitude below `2²²` rounds to an integer (round
/// to nearest even), and the low mantissa bits of the sum are that integer.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `eˣ` for `f32`, vectorisable.
///
/// `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2` (Cody–Waite: `ln 2` in two parts, so `r` is
/// exact to `f32` precision), `eʳ = 1 + r + r²·Q(r)` with `Q` a degree-4 least-squares fit
/// (relative error 1·10⁻⁸ on the interval), and `2ⁿ` applied as two powers of two so
/// results down to the smallest subnormal come out right.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO, LN2_HI with 9 low mantissa bits zero: n·LN2_HI is exact
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const Q: [f32; 5] = [
        0.5,
        0.166_665_77,
        0.041_666_465,
        0.008_363_176,
        0.001_393_364_4,
    ];
    // below −105 the result rounds to 0, above 89 it overflows: clamping keeps `n` in
    // [−152, 129]; NaN passes through `max`/`min` as the non-NaN operand, so it is
    // restored at the end
    let xc = x.clamp(-105.0, 89.0);
    let t = xc * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let q = Q[0] + r * (Q[1] + r * (Q[2] + r * (Q[3] + r * Q[4])));
    let p = 1.0 + r + r * r * q;
    // 2ⁿ = 2^(n/2) · 2^(n − n/2), each factor a normal f32
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    let y = p * s1 * s2;
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// The complementary error function `erfc(x) = 1 − erf(x)` for `f32`, vectorisable.
///
/// For `z = |x|`: `erfc(z) = t·exp(−z² + P(t))` with `t = 1/(1 + z/2)` and `P` the
/// degree-9 Chebyshev fit of Press et al. (*Numerical Recipes*, `erfcc`; fractional error
/// below 1.2·10⁻⁷ for every `z ≥ 0`), and `erfc(−z) = 2 − erfc(z)`. The relative accuracy
/// holds in the right tail, where `1 − erf` would cancel.
#[inline(always)]
pub(crate) fn erfc_f32(x: f32) -> f32 {
    const P: [f32; 10] = [
        -1.265_512_2,
        1.000_023_7,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_204,
        1.488_515_9,
        -0.822_152_2,
        0.170_872_77,
    ];
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = P[0]
        + t * (P[1]
            + t * (P[2]
                + t * (P[3]
                    + t * (P[4] + t * (P[5] + t * (P[6] + t * (P[7] + t * (P[8] + t * P[9]))))))));
    // NaN in: `e` is NaN and is returned
    let e = t * exp_f32(poly - z * z);
    if x < 0.0 {
        2.0 - e
    } else {
        e
    }
}

/// The logistic sigmoid `1/(1 + e⁻ˣ)` for `f32`, vectorisable. No cancellation anywhere:
/// for `x ≪ 0` the denominator is large (or `+∞`, giving 0).
#[inline(always)]
pub(crate) fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// `tanh x` for `f32`, vectorisable: `x + x³·P(x²)` (a degree-4 least-squares fit,
/// relative error 5·10⁻⁸) for `|x| < 0.625`, where `1 − 2/(e^{2|x|} + 1)` would lose
/// relative precision to cancellation, and that form (with the sign of `x`) above.
#[inline(always)]
pub(crate) fn tanh_f32(x: f32) -> f32 {
    const P: [f32; 5] = [
        -0.333_333_3,
        0.133_328_73,
        -0.053_867_333,
        0.021_075_127,
        -0.006_208_766_4,
    ];
    let a = x.abs();
    let a2 = a * a;
    let small = a + a * a2 * (P[0] + a2 * (P[1] + a2 * (P[2] + a2 * (P[3] + a2 * P[4]))));
    let large = 1.0 - 2.0 / (exp_f32(2.0 * a) + 1.0);
    let m = if a < 0.625 { small } else { large };
    if x.is_nan() {
        x
    } else {
        m.copysign(x)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicU8, Ordering};

    /// The level the multiversioned loops run at, when a test forces one (0: detect).
    static FORCED: AtomicU8 = AtomicU8::new(0);

    pub(super) fn forced_level() -> Option<SimdLevel> {
        match FORCED.load(Ordering::Relaxed) {
            1 => Some(SimdLevel::Baseline),
            2 => Some(SimdLevel::Avx2),
            3 => Some(SimdLevel::Avx512),
            _ => None,
        }
    }

    /// Runs `f` with the multiversioned loops at `level` (which the CPU must have), then
    /// back to detection. Other tests running meanwhile get that level too, which is
    /// harmless: every level gives the same bits (what the tests using this check).
    pub(crate) fn at_level<R>(level: SimdLevel, f: impl FnOnce() -> R) -> R {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let code = match level {
            SimdLevel::Baseline => 1,
            SimdLevel::Avx2 => 2,
            SimdLevel::Avx512 => 3,
        };
        FORCED.store(code, Ordering::Relaxed);
        let out = f();
        FORCED.store(0, Ordering::Relaxed);
        out
    }
    use super::*;

    /// Distance in units in the last place between `got` and the correctly rounded `want`.
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        if got == w {
            return 0.0;
        }
        let ulp = (f32::from_bits(w.abs().to_bits() + 1) - w.abs()) as f64;
        (got as f64 - want).abs() / ulp
    }

    /// Every `step`-th f32 bit pattern in `[lo, hi]` (both signs when `lo < 0`).
    fn samples(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..=n)
            .map(|i| lo + (hi - lo) * (i as f32 / n as f32))
            .chain([0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, lo, hi])
            .collect()
    }

    #[test]
    fn exp_is_within_2_ulp_and_handles_the_edges() {
        let mut worst = 0.0f64;
        for x in samples(-103.0, 88.7, 200_000) {
            let want = (x as f64).exp();
            if want < f32::MIN_POSITIVE as f64 {
                // subnormal results: within one subnormal step
                assert!((exp_f32(x) as f64 - want).abs() <= 1.5e-45, "exp({x})");
                continue;
            }
            worst = worst.max(ulps(exp_f32(x), want));
        }
        assert!(worst <= 2.0, "exp: {worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-200.0), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn erfc_keeps_its_relative_accuracy_in_both_tails() {
        let mut worst = 0.0f64;
        for x in samples(-10.0, 9.0, 200_000) {
            let want = libm::erfc(x as f64);
            if want < f32::MIN_POSITIVE as f64 {
                continue;
            }
            worst = worst.max((erfc_f32(x) as f64 / want - 1.0).abs());
        }
        assert!(worst < 1e-5, "erfc: relative error {worst}");
        // GELU's left tail: erfc(6/√2)/2 ≈ 9.87e-10, as PyTorch's gelu(-6) = -5.92e-9
        let z = 6.0 * std::f32::consts::FRAC_1_SQRT_2;
        assert!((erfc_f32(z) as f64 / libm::erfc(z as f64) - 1.0).abs() < 2e-6);
        assert_eq!(erfc_f32(f32::INFINITY), 0.0);
        assert_eq!(erfc_f32(f32::NEG_INFINITY), 2.0);
        assert!(erfc_f32(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_and_sigmoid_are_within_2_and_4_ulp() {
        let (mut wt, mut ws) = (0.0f64, 0.0f64);
        for x in samples(-20.0, 20.0, 200_000) {
            let xd = x as f64;
            wt = wt.max(ulps(tanh_f32(x), xd.tanh()));
            let s = 1.0 / (1.0 + (-xd).exp());
            if s >= f32::MIN_POSITIVE as f64 {
                ws = ws.max(ulps(sigmoid_f32(x), s));
            }
        }
        assert!(wt <= 2.0, "tanh: {wt} ulp");
        assert!(ws <= 4.0, "sigmoid: {ws} ulp");
        assert_eq!(tanh_f32(0.0), 0.0);
        assert!(tanh_f32(-0.0).is_sign_negative());
        assert_eq!(tanh_f32(f32::INFINITY), 1.0);
        assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
        assert_eq!(sigmoid_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(sigmoid_f32(f32::INFINITY), 1.0);
        assert!(tanh_f32(f32::NAN).is_nan() && sigmoid_f32(f32::NAN).is_nan());
    }

    /// Every copy of the multiversioned loops this CPU can run (baseline, AVX2,
    /// AVX-512) gives the same bits: elementwise maps with the transcendental functions,
    /// a softmax, a layer norm and an AdamW step.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn every_simd_level_gives_the_same_bits() {
        use crate::nn::functional::layer_norm;
        use crate::Tensor;
        let mut levels = vec![SimdLevel::Baseline];
        if has_avx2_fma() {
            levels.push(SimdLevel::Avx2);
        }
        if super::detected_level() == SimdLevel::Avx512 {
            levels.push(SimdLevel::Avx512);
        }
        let x = samples(-12.0, 12.0, 4099);
        let run = || {
            let mut out = vec![MaybeUninit::<f32>::uninit(); x.len()];
            let f = |v: f32| exp_f32(v) + erfc_f32(v) + tanh_f32(v) * sigmoid_f32(v);
            map_into(&mut out, &x, &f);
            // SAFETY: `map_into` wrote every element (the slices have one length).
            let mapped = unsafe { crate::cpu::pool::written(&out) }.to_vec();
            // an Adam-like update: square roots, divisions, selects
            let (mut p, mut m, mut v) = (x.clone(), vec![0.1f32; x.len()], vec![0.2f32; x.len()]);
            let step = move |p: f32, g: f32, [m, v]: [f32; 2]| {
                let (m, v) = (m + (g - m) * 0.1, v * 0.999 + g * g * 0.001);
                let p = if g > 0.0 { p * 0.99 } else { p };
                (p - m / (v.sqrt() / 0.3 + 1e-8) * 1e-3, [m, v])
            };
            crate::optim::fused::update_elements(&mut p, &x, [&mut m, &mut v], &step);
            let mapped = [mapped, p, m, v].concat();
            let t = Tensor::from_vec(x[..37 * 110].to_vec(), [37, 110]);
            let soft = t.softmax(-1).to_vec::<f32>();
            let w = Tensor::from_vec(x[..110].to_vec(), [110]);
            let norm = layer_norm(&t, &[110], Some(&w), Some(&w), 1e-5)
                .map(|y| y.to_vec::<f32>())
                .unwrap_or_default();
            (mapped, soft, norm)
        };
        let want = at_level(SimdLevel::Baseline, run);
        for &level in &levels[1..] {
            let got = at_level(level, run);
            assert!(
                want.0
                    .iter()
                    .zip(&got.0)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "map at {level:?}"
            );
            assert_eq!(want.1, got.1, "softmax at {level:?}");
            assert_eq!(want.2, got.2, "layer norm at {level:?}");
        }
    }
}
