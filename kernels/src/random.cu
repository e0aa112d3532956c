#line 1 "random.cu"
// Random numbers and dropout from the Philox4x32-10 stream of flint_runtime::Generator
// (see philox.h): element i uses the block of counter `offset + i` under key `seed`
// (Bernoulli draws: one word of the block of `offset + i / 4`), so a
// kernel launched with the generator's (seed, offset) produces the CPU's numbers; the
// caller then advances the generator's offset by n. Outputs are contiguous, n elements.
// Any grid and block size works.
//
// Exactness: uniform, bernoulli, randint and dropout masks are bit-identical to the CPU.
// normal uses the GPU's f64 log/cos (within 1-2 ulp of glibc's), so f64 normals can
// differ from the CPU's in the last bits; rounded to f32/f16/bf16 they almost always agree.

/// Mantissa bits of a uniform sample of dtype T (the CPU's `mantissa_bits`).
template <typename T> struct UnitBits;
template <> struct UnitBits<float> { static const int value = 24; };
template <> struct UnitBits<double> { static const int value = 53; };
template <> struct UnitBits<f16_t> { static const int value = 11; };
template <> struct UnitBits<bf16_t> { static const int value = 8; };

// philox_uniform_<dt>(T* out, i64 n, u64 seed, u64 offset, double low, double high)
//   out[i] = low + (high - low) * unit(bits of T), computed in f64, rounded to T.
// philox_normal_<dt>(T* out, i64 n, u64 seed, u64 offset, double mean, double std)
//   out[i] = mean + std * sqrt(-2 ln u1) * cos(2 pi u2), computed in f64, rounded to T.
#define RANDOM(dt, T, _)                                                                   \
    extern "C" __global__ void philox_uniform_##dt(T* out, i64 n, u64 seed, u64 offset,    \
                                                   double low, double high) {              \
        FLINT_GRID_STRIDE(i, n) {                                                          \
            const flint_u32x4 r = flint_philox_block(seed, offset + (u64)i);               \
            out[i] = Ty<T>::from_f64(flint_uniform(r, UnitBits<T>::value, low, high));     \
        }                                                                                  \
    }                                                                                      \
    extern "C" __global__ void philox_normal_##dt(T* out, i64 n, u64 seed, u64 offset,     \
                                                  double mean, double std) {               \
        FLINT_GRID_STRIDE(i, n) {                                                          \
            const flint_u32x4 r = flint_philox_block(seed, offset + (u64)i);               \
            out[i] = Ty<T>::from_f64(flint_normal(r, mean, std));                          \
        }                                                                                  \
    }
FLINT_FLOATS(RANDOM, _)

// philox_bernoulli_bool(u8* out, i64 n, u64 seed, u64 offset, double p)
//   out[i] = element i of the Bernoulli draw (one 32-bit word each; Generator::bernoulli).
extern "C" __global__ void philox_bernoulli_bool(u8* out, i64 n, u64 seed, u64 offset,
                                                 double p) {
    const u64 threshold = flint_bernoulli_threshold(p);
    FLINT_GRID_STRIDE(i, n) { out[i] = flint_bernoulli_at(seed, offset, i, threshold) ? 1 : 0; }
}

// philox_randint_i64(i64* out, i64 n, u64 seed, u64 offset, i64 low, i64 high)
//   integers uniform in [low, high) (Generator::randint; the caller checks low < high).
extern "C" __global__ void philox_randint_i64(i64* out, i64 n, u64 seed, u64 offset, i64 low,
                                              i64 high) {
    FLINT_GRID_STRIDE(i, n) {
        out[i] = flint_randint(flint_philox_block(seed, offset + (u64)i), low, high);
    }
}

// dropout_<dt>(const T* x, T* out, u8* keep, i64 n, u64 seed, u64 offset, double p)
//   keep[i] = bernoulli(1 - p) from the stream (keep may be null), and
//   out[i] = x[i] * (keep ? T(1 / (1 - p)) : 0), x and out contiguous: the numbers of
//   nn::functional::dropout (mask = bernoulli(1 - p) cast to T, times 1/(1-p)). p < 1.
// dropout_backward_<dt>(const T* dy, const u8* keep, T* dx, i64 n, double scale)
//   dx[i] = dy[i] * (keep ? T(scale) : 0), scale = 1 / (1 - p).
// A thread per Philox block: elements 4b .. 4b + 3 take its four words (as
// flint_bernoulli_at draws them), one block instead of four, and when the buffers are
// aligned the thread moves its four elements with one vector load and store (and the
// four mask bytes as one word), so a warp's accesses are consecutive.
template <typename T>
__device__ __forceinline__ void dropout_all(const T* x, T* out, u8* keep, i64 n, u64 seed,
                                            u64 offset, double p) {
    typedef typename Ty<T>::acc A;
    const double q = 1.0 - p;
    const A scale = Ty<T>::load(Ty<T>::from_f64(1.0 / q));
    const u64 threshold = flint_bernoulli_threshold(q);
    typedef Pack<T, 4> P4;
    const bool vec = aligned_to(x, sizeof(P4)) && aligned_to(out, sizeof(P4)) &&
                     aligned_to(keep, 4);
    FLINT_GRID_STRIDE(b, (n + 3) / 4) {
        const flint_u32x4 r = flint_philox_block(seed, offset + (u64)b);
        if (vec && 4 * b + 4 <= n) {
            const P4 xv = reinterpret_cast<const P4*>(x)[b];
            P4 ov;
            u32 bytes = 0;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const bool k = (u64)r.v[j] < threshold;
                bytes |= (k ? 1u : 0u) << (8 * j);
                ov.v[j] = Ty<T>::store(Ty<T>::load(xv.v[j]) * (k ? scale : A(0)));
            }
            reinterpret_cast<P4*>(out)[b] = ov;
            if (keep != 0) {
                reinterpret_cast<u32*>(keep)[b] = bytes; // byte j = element 4b + j
            }
            continue;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const i64 i = 4 * b + j;
            if (i < n) {
                const bool k = (u64)r.v[j] < threshold;
                if (keep != 0) {
                    keep[i] = k ? 1 : 0;
                }
                out[i] = Ty<T>::store(Ty<T>::load(x[i]) * (k ? scale : A(0)));
            }
        }
    }
}

template <typename T>
__device__ __forceinline__ void dropout_backward_all(const T* dy, const u8* keep, T* dx, i64 n,
                                                     double scale) {
    typedef typename Ty<T>::acc A;
    const A s = Ty<T>::load(Ty<T>::from_f64(scale));
    typedef Pack<T, 4> P4;
    const bool vec = aligned_to(dy, sizeof(P4)) && aligned_to(dx, sizeof(P4)) &&
                     aligned_to(keep, 4);
    FLINT_GRID_STRIDE(b, (n + 3) / 4) {
        if (vec && 4 * b + 4 <= n) {
            const P4 gv = reinterpret_cast<const P4*>(dy)[b];
            const u32 bytes = reinterpret_cast<const u32*>(keep)[b];
            P4 ov;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const bool k = ((bytes >> (8 * j)) & 0xffu) != 0;
                ov.v[j] = Ty<T>::store(Ty<T>::load(gv.v[j]) * (k ? s : A(0)));
            }
            reinterpret_cast<P4*>(dx)[b] = ov;
            continue;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const i64 i = 4 * b + j;
            if (i < n) {
                dx[i] = Ty<T>::store(Ty<T>::load(dy[i]) * (keep[i] != 0 ? s : A(0)));
            }
        }
    }
}

#define DROPOUT(dt, T, _)                                                                  \
    extern "C" __global__ void dropout_##dt(const T* x, T* out, u8* keep, i64 n, u64 seed, \
                                            u64 offset, double p) {                        \
        dropout_all<T>(x, out, keep, n, seed, offset, p);                                  \
    }                                                                                      \
    extern "C" __global__ void dropout_backward_##dt(const T* dy, const u8* keep, T* dx,   \
                                                     i64 n, double scale) {                \
        dropout_backward_all<T>(dy, keep, dx, n, scale);                                   \
    }
FLINT_FLOATS(DROPOUT, _)
