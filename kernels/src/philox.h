#line 1 "philox.h"
/* Philox4x32-10 and the number conversions of flint_runtime::random, in portable C.
 *
 * This file is part of the `random` module's source (NVRTC) and is also compiled as
 * plain C on the host by kernels/tests/philox.rs, which checks it against the CPU
 * generator (flint_runtime::Generator) bit for bit. Keep it C99: no templates, no CUDA
 * builtins except through the FLINT_* macros below.
 *
 * Stream layout (runtime/src/random.rs): element i of a draw at generator offset `off`
 * with seed `seed` uses the block
 *     philox4x32_10(counter = [lo32(off + i), hi32(off + i), 0, 0],
 *                   key     = [lo32(seed), hi32(seed)])
 * and a draw of n elements advances the offset by n.
 */

#ifndef FLINT_HD
#define FLINT_HD __device__ __forceinline__
#endif
#ifndef FLINT_DMUL
/* no fused multiply-add: the CPU computes these in separately rounded steps */
#define FLINT_DMUL(a, b) __dmul_rn((a), (b))
#define FLINT_DADD(a, b) __dadd_rn((a), (b))
#define FLINT_MULHI64(a, b) __umul64hi((a), (b))
#define FLINT_LOG(x) log(x)
#define FLINT_SQRT(x) sqrt(x)
#define FLINT_COS(x) cos(x)
#endif

typedef struct {
    unsigned int v[4];
} flint_u32x4;

/* One Philox4x32-10 block: 4 random words from a 128-bit counter and a 64-bit key. */
FLINT_HD flint_u32x4 flint_philox4x32_10(flint_u32x4 ctr, unsigned int k0, unsigned int k1) {
    const unsigned long long m0 = 0xD2511F53ull, m1 = 0xCD9E8D57ull;
    int r;
    for (r = 0; r < 10; ++r) {
        unsigned long long p0, p1;
        flint_u32x4 n;
        if (r > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        p0 = m0 * ctr.v[0];
        p1 = m1 * ctr.v[2];
        n.v[0] = (unsigned int)(p1 >> 32) ^ ctr.v[1] ^ k0;
        n.v[1] = (unsigned int)p1;
        n.v[2] = (unsigned int)(p0 >> 32) ^ ctr.v[3] ^ k1;
        n.v[3] = (unsigned int)p0;
        ctr = n;
    }
    return ctr;
}

/* The block of the element at `counter` (= generator offset + element index). */
FLINT_HD flint_u32x4 flint_philox_block(unsigned long long seed, unsigned long long counter) {
    flint_u32x4 c;
    c.v[0] = (unsigned int)counter;
    c.v[1] = (unsigned int)(counter >> 32);
    c.v[2] = 0u;
    c.v[3] = 0u;
    return flint_philox4x32_10(c, (unsigned int)seed, (unsigned int)(seed >> 32));
}

/* A uniform number in [0, 1) with `bits` random bits: the top `bits` of (hi << 32 | lo),
 * scaled by 2^-bits (exact). bits = 53 (f64), 24 (f32), 11 (f16), 8 (bf16). */
FLINT_HD double flint_unit(unsigned int hi, unsigned int lo, int bits) {
    unsigned long long x = ((unsigned long long)hi << 32) | lo;
    return (double)(x >> (64 - bits)) * (1.0 / (double)(1ull << bits));
}

/* Uniform in [low, high): low + (high - low) * unit, in f64. */
FLINT_HD double flint_uniform(flint_u32x4 r, int bits, double low, double high) {
    return FLINT_DADD(low, FLINT_DMUL(high - low, flint_unit(r.v[0], r.v[1], bits)));
}

/* Normal (Box-Muller), in f64: mean + std * sqrt(-2 ln u1) * cos(2 pi u2),
 * u1 = 1 - unit(v0, v1) in (0, 1], u2 = unit(v2, v3) in [0, 1). */
FLINT_HD double flint_normal(flint_u32x4 r, double mean, double std) {
    double u1 = 1.0 - flint_unit(r.v[0], r.v[1], 53);
    double u2 = flint_unit(r.v[2], r.v[3], 53);
    double radius = FLINT_SQRT(-2.0 * FLINT_LOG(u1));
    double angle = FLINT_COS(6.283185307179586 * u2);
    return FLINT_DADD(mean, FLINT_DMUL(FLINT_DMUL(std, radius), angle));
}

/* Bernoulli draws take one 32-bit word per element (flint_runtime::random): element i is
 * word i % 4 of the block of counter offset + i / 4, true when the word is below
 * ceil(p * 2^32) (0 for p <= 0 or NaN, 2^32 for p >= 1): the threshold. */
FLINT_HD unsigned long long flint_bernoulli_threshold(double p) {
    double t;
    unsigned long long k;
    if (!(p > 0.0)) {
        return 0ull;
    }
    if (p >= 1.0) {
        return 4294967296ull;
    }
    t = p * 4294967296.0;
    k = (unsigned long long)t;
    return (double)k < t ? k + 1ull : k;
}

/* Element i of a Bernoulli draw at (seed, offset) against a flint_bernoulli_threshold. */
FLINT_HD int flint_bernoulli_at(unsigned long long seed, unsigned long long offset,
                                long long i, unsigned long long threshold) {
    const flint_u32x4 r = flint_philox_block(seed, offset + (unsigned long long)i / 4ull);
    return (unsigned long long)r.v[i & 3] < threshold;
}

/* An integer uniform in [low, high) (low < high): low + ((v0 << 32 | v1) * range) >> 64. */
FLINT_HD long long flint_randint(flint_u32x4 r, long long low, long long high) {
    unsigned long long range = (unsigned long long)high - (unsigned long long)low;
    unsigned long long x = ((unsigned long long)r.v[0] << 32) | r.v[1];
    return (long long)((unsigned long long)low + FLINT_MULHI64(x, range));
}
