#line 1 "common.cuh"
// Definitions shared by every Flint kernel module. flint_kernels::MODULES prepends this
// file to each module's source, so every module compiles on its own with NVRTC and
// needs no header at all (no libc, no cuda_fp16.h): half-precision conversions are
// written with PTX `cvt` instructions and bit operations.
//
// Conventions (see kernels/README.md):
// - Element types: f32 = float, f64 = double, f16 = f16_t, bf16 = bf16_t (2-byte
//   structs holding the IEEE bits), i64 = long long, bool = unsigned char (0 or 1).
// - f16/bf16/f32 compute in float, f64 in double ("acc" type below).
// - Sizes, strides, offsets and indices are 64-bit signed (`long long`), in elements.
// - Unless a kernel says otherwise, any grid and block size works (grid-stride loops);
//   kernels that reduce with a block need blockDim.x to be a multiple of 32, at most
//   1024, and blockDim.y = blockDim.z = 1.

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

/// IEEE half: the 16 bits, as Rust's `half::f16`.
struct __align__(2) f16_t {
    u16 bits;
};
/// bfloat16: the upper 16 bits of an f32, as Rust's `half::bf16`.
struct __align__(2) bf16_t {
    u16 bits;
};

#define FLINT_INF __int_as_float(0x7f800000)
#define FLINT_NAN __int_as_float(0x7fc00000)
#define FLINT_INF_F64 __longlong_as_double(0x7ff0000000000000LL)
#define FLINT_NAN_F64 __longlong_as_double(0x7ff8000000000000LL)

// ---------------------------------------------------------------------------------------
// Half-precision conversions

#ifndef FLINT_HOST_EMULATION
__device__ __forceinline__ float f16_to_f32(f16_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
    return f;
}

__device__ __forceinline__ f16_t f32_to_f16(float f) {
    f16_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
    return h;
}
#else // the host emulation of kernels/tests/emulated.rs (no PTX there)
__device__ __forceinline__ float f16_to_f32(f16_t h) { return flint_emu_f16_to_f32(h.bits); }
__device__ __forceinline__ f16_t f32_to_f16(float f) {
    f16_t h;
    h.bits = flint_emu_f32_to_f16(f);
    return h;
}
#endif

__device__ __forceinline__ float bf16_to_f32(bf16_t h) {
    return __uint_as_float(((u32)h.bits) << 16);
}

/// Round to nearest even, NaN kept quiet with its sign (as `half::bf16::from_f32`).
__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    bf16_t r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.bits = (u16)((u >> 16) | 0x40u);
        return r;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    r.bits = (u16)(u >> 16);
    return r;
}

/// f64 -> f16 as the CPU runtime converts (`half::f16::from_f64` on x86 with F16C):
/// rounded to f32, then to f16 (both to nearest even).
__device__ __forceinline__ f16_t f64_to_f16(double d) { return f32_to_f16((float)d); }

/// f64 -> bf16 as `half::bf16::from_f64`: the f64 is truncated to its upper 32 bits
/// (20 mantissa bits), then rounded to nearest even. Exact for every normal result.
__device__ __forceinline__ bf16_t f64_to_bf16(double d) {
    if (d != d) {
        return f32_to_bf16((float)d);
    }
    return f32_to_bf16((float)__hiloint2double(__double2hiint(d), 0));
}

// ---------------------------------------------------------------------------------------
// Element traits: Ty<T>::acc is the compute type; load/store convert between storage and
// acc; to_f64/from_f64 convert through double (casts, scalars, random numbers) exactly as
// the CPU runtime's `Element::to_f64/from_f64` do.

template <typename T> struct Ty;

template <> struct Ty<float> {
    typedef float acc;
    static __device__ __forceinline__ float load(float v) { return v; }
    static __device__ __forceinline__ float store(float v) { return v; }
    static __device__ __forceinline__ double to_f64(float v) { return (double)v; }
    static __device__ __forceinline__ float from_f64(double v) { return (float)v; }
};

template <> struct Ty<double> {
    typedef double acc;
    static __device__ __forceinline__ double load(double v) { return v; }
    static __device__ __forceinline__ double store(double v) { return v; }
    static __device__ __forceinline__ double to_f64(double v) { return v; }
    static __device__ __forceinline__ double from_f64(double v) { return v; }
};

template <> struct Ty<f16_t> {
    typedef float acc;
    static __device__ __forceinline__ float load(f16_t v) { return f16_to_f32(v); }
    static __device__ __forceinline__ f16_t store(float v) { return f32_to_f16(v); }
    static __device__ __forceinline__ double to_f64(f16_t v) { return (double)f16_to_f32(v); }
    static __device__ __forceinline__ f16_t from_f64(double v) { return f64_to_f16(v); }
};

template <> struct Ty<bf16_t> {
    typedef float acc;
    static __device__ __forceinline__ float load(bf16_t v) { return bf16_to_f32(v); }
    static __device__ __forceinline__ bf16_t store(float v) { return f32_to_bf16(v); }
    static __device__ __forceinline__ double to_f64(bf16_t v) { return (double)bf16_to_f32(v); }
    static __device__ __forceinline__ bf16_t from_f64(double v) { return f64_to_bf16(v); }
};

template <> struct Ty<i64> {
    typedef i64 acc;
    static __device__ __forceinline__ i64 load(i64 v) { return v; }
    static __device__ __forceinline__ i64 store(i64 v) { return v; }
    static __device__ __forceinline__ double to_f64(i64 v) { return (double)v; }
    // PTX float -> integer conversions truncate, saturate and map NaN to 0, as Rust's `as`.
    static __device__ __forceinline__ i64 from_f64(double v) { return (i64)v; }
};

template <> struct Ty<u8> {
    typedef u8 acc;
    static __device__ __forceinline__ u8 load(u8 v) { return v; }
    static __device__ __forceinline__ u8 store(u8 v) { return v; }
    static __device__ __forceinline__ double to_f64(u8 v) { return v != 0 ? 1.0 : 0.0; }
    static __device__ __forceinline__ u8 from_f64(double v) { return v != 0.0 ? 1 : 0; }
};

// Overloaded math on the acc types (float and double).
__device__ __forceinline__ float m_exp(float x) { return expf(x); }
__device__ __forceinline__ double m_exp(double x) { return exp(x); }
__device__ __forceinline__ float m_log(float x) { return logf(x); }
__device__ __forceinline__ double m_log(double x) { return log(x); }
__device__ __forceinline__ float m_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double m_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float m_rsqrt(float x) { return 1.0f / sqrtf(x); }
__device__ __forceinline__ double m_rsqrt(double x) { return 1.0 / sqrt(x); }
__device__ __forceinline__ float m_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double m_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float m_erf(float x) { return erff(x); }
__device__ __forceinline__ double m_erf(double x) { return erf(x); }
__device__ __forceinline__ float m_sin(float x) { return sinf(x); }
__device__ __forceinline__ double m_sin(double x) { return sin(x); }
__device__ __forceinline__ float m_cos(float x) { return cosf(x); }
__device__ __forceinline__ double m_cos(double x) { return cos(x); }
__device__ __forceinline__ float m_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double m_pow(double x, double y) { return pow(x, y); }
__device__ __forceinline__ float m_floor(float x) { return floorf(x); }
__device__ __forceinline__ double m_floor(double x) { return floor(x); }
__device__ __forceinline__ float m_ceil(float x) { return ceilf(x); }
__device__ __forceinline__ double m_ceil(double x) { return ceil(x); }
__device__ __forceinline__ float m_rint(float x) { return rintf(x); }
__device__ __forceinline__ double m_rint(double x) { return rint(x); }
__device__ __forceinline__ float m_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double m_abs(double x) { return fabs(x); }
__device__ __forceinline__ i64 m_abs(i64 x) { return x < 0 ? -x : x; }
__device__ __forceinline__ float m_inf(float) { return FLINT_INF; }
__device__ __forceinline__ double m_inf(double) { return FLINT_INF_F64; }
__device__ __forceinline__ float m_nan(float) { return FLINT_NAN; }
__device__ __forceinline__ double m_nan(double) { return FLINT_NAN_F64; }

/// `a` unless `b` is larger or NaN (NaN propagates, as torch.maximum and max()).
template <typename A> __device__ __forceinline__ A nan_max(A a, A b) {
    return (a != a || a > b) ? a : b;
}
/// `a` unless `b` is smaller or NaN.
template <typename A> __device__ __forceinline__ A nan_min(A a, A b) {
    return (a != a || a < b) ? a : b;
}

// ---------------------------------------------------------------------------------------
// Strided layouts

#define FLINT_MAX_DIMS 8

/// A strided view of `rank` <= 8 dims: element (c0, .., c{rank-1}) lives at
/// `offset + sum(c_d * stride[d])`. Broadcast dims have stride 0. Mirrored by
/// `flint_kernels::Layout` (#[repr(C)], 144 bytes), passed to kernels by value.
struct Layout {
    i64 rank;
    i64 shape[FLINT_MAX_DIMS];
    i64 stride[FLINT_MAX_DIMS];
    i64 offset;
};
static_assert(sizeof(Layout) == 144, "Layout must match flint_kernels::Layout");

/// Element offset of the `i`-th element (row-major order over `l.shape`, 0 <= i < the
/// element count). The outermost dim needs no division (what is left of `i` is its
/// coordinate), so a one-dim layout (the host coalesces contiguous views to one dim) costs
/// a multiply. Indices below 2^31 divide in 32 bits, several times cheaper than 64-bit
/// division on the GPU: a size of 2^31 or more is larger than any such index, so it is
/// clamped to 2^31 - 1, which gives that dim the same coordinate (`i`) and quotient (0).
__device__ __forceinline__ i64 layout_offset(const Layout& l, i64 i) {
    i64 off = l.offset;
    if (i <= 0x7fffffffLL) {
        u32 j = (u32)i;
#pragma unroll
        for (int d = FLINT_MAX_DIMS - 1; d >= 1; --d) {
            if (d < l.rank) {
                const u32 s = l.shape[d] > 0x7fffffffLL ? 0x7fffffffu : (u32)l.shape[d];
                const u32 q = j / s;
                off += (i64)(j - q * s) * l.stride[d];
                j = q;
            }
        }
        return l.rank > 0 ? off + (i64)j * l.stride[0] : off;
    }
#pragma unroll
    for (int d = FLINT_MAX_DIMS - 1; d >= 1; --d) {
        if (d < l.rank) {
            const i64 s = l.shape[d];
            const i64 q = i / s;
            off += (i - q * s) * l.stride[d];
            i = q;
        }
    }
    return l.rank > 0 ? off + i * l.stride[0] : off;
}

// ---------------------------------------------------------------------------------------
// Loops and reductions

/// for (i = global thread id; i < n; i += total threads)
#define FLINT_GRID_STRIDE(i, n)                                                            \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (i64)(n);                 \
         i += (i64)blockDim.x * gridDim.x)

/// The stride of a layout's innermost dim (0 for a 0-d layout).
__device__ __forceinline__ i64 inner_stride(const Layout& l) {
    return l.rank > 0 ? l.stride[l.rank - 1] : 0;
}

/// V consecutive elements of T, aligned to their size: one vector load or store.
template <typename T, int V> struct alignas(V * sizeof(T)) Pack {
    T v[V];
};

/// Whether `p` is aligned for `bytes`-byte vector accesses.
__device__ __forceinline__ bool aligned_to(const void* p, unsigned long long bytes) {
    return ((unsigned long long)p & (bytes - 1)) == 0;
}

/// Elements per lane of the packed order of `for_runs` (see Run).
#define FLINT_PACK 4

/// Whether the view `l` of `p` can be read in the packed order of `for_runs` (see Run):
/// its innermost stride is 0 (a run reads one value), or 1 with every run's first
/// element aligned for a Pack<T, FLINT_PACK>: `p + offset` aligned and every outer stride
/// a multiple of FLINT_PACK (runs start at multiples of 32 FLINT_PACK in their row).
template <typename T> __device__ __forceinline__ bool packs(const T* p, const Layout& l) {
    const i64 s = inner_stride(l);
    if (s == 0) {
        return true;
    }
    if (s != 1 || !aligned_to(p + l.offset, sizeof(Pack<T, FLINT_PACK>))) {
        return false;
    }
#pragma unroll
    for (int d = 0; d < FLINT_MAX_DIMS - 1; ++d) {
        if (d < l.rank - 1 && l.shape[d] > 1 && l.stride[d] % FLINT_PACK != 0) {
            return false;
        }
    }
    return true;
}

/// Whether the view `l` of `p` can be written in the packed order: `packs` with an
/// innermost stride of 1 (a destination's elements are distinct).
template <typename T> __device__ __forceinline__ bool packs_into(const T* p, const Layout& l) {
    return inner_stride(l) == 1 && packs(p, l);
}

/// Whether a contiguous output `out` (element i at out[i]) can be written in the packed
/// order.
template <typename T> __device__ __forceinline__ bool packs_out(const T* out) {
    return aligned_to(out, sizeof(Pack<T, FLINT_PACK>));
}

/// The run of a `for_runs` body: the elements i + at(j), j < V, of a chunk of 32 V
/// consecutive element indices (one innermost row's; i is the chunk's first) that lane q
/// of the warp takes. In the strided order at(j) = q + 32 j: each of a warp's V accesses
/// to an operand covers 32 consecutive elements. In the packed order (`P`, V =
/// FLINT_PACK, chosen by the kernel when every operand `packs`) at(j) = V q + j: a lane's
/// elements are consecutive, one vector access per operand. The single-element loop has
/// V = 1 and q = 0.
///
/// Loads take all V elements of an operand before the body stores anything (the pointers
/// are not `restrict`, so a load after a store would wait for it).
template <int V_, bool P> struct Run {
    static constexpr int V = V_;
    static constexpr bool packed = P;
    i64 i; // the chunk's first element index
    int q; // the lane

    /// The index of element j of this lane's run within the chunk.
    __device__ __forceinline__ i64 at(int j) const {
        return P ? (i64)V * q + j : (i64)q + 32 * j;
    }

    /// v[j] = p[off + at(j) * s]: the run of a view whose chunk starts at `off` and whose
    /// innermost stride is `s`.
    template <typename T>
    __device__ __forceinline__ void load_at(T (&v)[V], const T* p, i64 off, i64 s) const {
        if constexpr (P) {
            if (s == 0) {
#pragma unroll
                for (int j = 0; j < V; ++j) {
                    v[j] = p[off];
                }
            } else {
                const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(p + off + (i64)V * q);
#pragma unroll
                for (int j = 0; j < V; ++j) {
                    v[j] = pk.v[j];
                }
            }
        } else {
#pragma unroll
            for (int j = 0; j < V; ++j) {
                v[j] = p[off + at(j) * s];
            }
        }
    }

    /// The run of the view `l` of `p`.
    template <typename T>
    __device__ __forceinline__ void load(T (&v)[V], const T* p, const Layout& l) const {
        load_at(v, p, layout_offset(l, i), inner_stride(l));
    }

    /// p[off + at(j) * s] = v[j] (in the packed order s is 1: see packs_into).
    template <typename T>
    __device__ __forceinline__ void store_at(T* p, i64 off, i64 s, const T (&v)[V]) const {
        if constexpr (P) {
            Pack<T, V> pk;
#pragma unroll
            for (int j = 0; j < V; ++j) {
                pk.v[j] = v[j];
            }
            *reinterpret_cast<Pack<T, V>*>(p + off + (i64)V * q) = pk;
        } else {
#pragma unroll
            for (int j = 0; j < V; ++j) {
                p[off + at(j) * s] = v[j];
            }
        }
    }

    /// out[i + at(j)] = v[j] for a contiguous output.
    template <typename T> __device__ __forceinline__ void store(T* out, const T (&v)[V]) const {
        store_at(out, i, 1, v);
    }
};

/// for_runs with chunks of 32 * V elements (a warp's) in the order P.
template <int V, bool P, typename F> __device__ __forceinline__ void warp_chunks(i64 n, F& body) {
    const i64 chunk = 32 * V, chunks = n / chunk;
    const i64 warps = (i64)gridDim.x * (blockDim.x >> 5);
    const int lane = threadIdx.x & 31;
    for (i64 w = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); w < chunks;
         w += warps) {
        body(Run<V, P>{w * chunk, lane});
    }
}

/// The elementwise loop over n elements of layouts that share one shape (the host
/// coalesces the views of a launch jointly, so they do; `l` is any of them). Calls
/// body(run) with a Run<V, P> for each index once:
/// - when the innermost size is a multiple of 32 * 4, a warp takes chunks of 128
///   consecutive indices in one innermost row: in the packed order when `packed` (the
///   kernel found that every operand packs), else strided (V = 4);
/// - else when it is a multiple of 32 * 2, chunks of 64 in the strided order (V = 2);
/// - else (or when blockDim.x is not a multiple of 32) each thread takes single indices
///   (V = 1), grid-strided.
/// A body decomposes each layout's index i once (layout_offset) and steps by
/// inner_stride, and a warp's accesses stay consecutive.
template <typename F>
__device__ __forceinline__ void for_runs(const Layout& l, i64 n, bool packed, F body) {
    const i64 inner = l.rank > 0 ? l.shape[l.rank - 1] : 1;
    const bool warps = blockDim.x % 32 == 0; // whole warps (any block size works)
    if (warps && inner % (32 * FLINT_PACK) == 0) {
        if (packed) {
            warp_chunks<FLINT_PACK, true>(n, body);
        } else {
            warp_chunks<FLINT_PACK, false>(n, body);
        }
    } else if (warps && inner % (32 * 2) == 0) {
        warp_chunks<2, false>(n, body);
    } else {
        FLINT_GRID_STRIDE(i, n) { body(Run<1, false>{i, 0}); }
    }
}

/// for (row = this warp's global index; row < rows; row += warps in the grid)
#define FLINT_WARP_STRIDE(row, rows)                                                       \
    for (i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); row < (i64)(rows); \
         row += (i64)gridDim.x * (blockDim.x >> 5))

/// The launch bounds of the warp-per-row kernels of element type T (softmax_w<K>,
/// layer_norm_w<K>, ...): blocks of at most 256 threads (the runtime's launch::warp_rows
/// launches 256), and for types up to 4 bytes at least two blocks per SM, so ptxas keeps
/// them under 128 registers instead of hoisting every load of a 32-a-lane row at the cost
/// of occupancy (f64 rows of 32 a lane need more than that without spilling).
#define FLINT_WARP_ROWS_BOUNDS(T) __launch_bounds__(256, sizeof(T) >= 8 ? 1 : 2)

/// Which columns of a row of at most 32 K elements a lane of a warp-per-row kernel holds
/// (K per lane, K a multiple of 4). Element k of lane `lane` is column lane + 32 k; or,
/// in the vector order (`vec`: every row of every operand aligned for vectors of V
/// elements, see `fits`), column V (lane + 32 (k / V)) + k % V, so each group of V is one
/// vector access. Both orders are coalesced; the vector order moves a row with a quarter
/// of the load and store instructions. V = 4 for types up to 4 bytes; 8-byte types keep
/// the scalar order (V = 1: their rows of 32 a lane would spill with both orders compiled).
template <typename T, int K> struct WarpRow {
    static constexpr int V = sizeof(T) >= 8 ? 1 : 4;
    typedef Pack<T, V> P;
    const bool vec;
    const int lane;

    __device__ __forceinline__ explicit WarpRow(bool vec) : vec(vec), lane(threadIdx.x & 31) {}

    /// Whether rows of `cols` elements starting at `p` are aligned for the vector order.
    static __device__ __forceinline__ bool fits(const void* p, i64 cols) {
        return V > 1 && aligned_to(p, sizeof(P)) && cols % V == 0;
    }

    /// The column of this lane's element k.
    __device__ __forceinline__ i64 col(int k) const {
        return vec ? (i64)V * (lane + 32 * (k / V)) + k % V : (i64)lane + 32 * k;
    }

    /// v[k] = row[col(k)] in the acc type A, `fill` for columns past `cols`.
    template <typename A>
    __device__ __forceinline__ void load(const T* row, i64 cols, A (&v)[K], A fill) const {
        if (vec) {
#pragma unroll
            for (int j = 0; j < K / V; ++j) {
                const i64 c = (i64)V * (lane + 32 * j);
                if (c < cols) {
                    const P p = *reinterpret_cast<const P*>(row + c);
#pragma unroll
                    for (int i = 0; i < V; ++i) {
                        v[V * j + i] = Ty<T>::load(p.v[i]);
                    }
                } else {
#pragma unroll
                    for (int i = 0; i < V; ++i) {
                        v[V * j + i] = fill;
                    }
                }
            }
        } else {
#pragma unroll
            for (int k = 0; k < K; ++k) {
                const i64 c = (i64)lane + 32 * k;
                v[k] = c < cols ? Ty<T>::load(row[c]) : fill;
            }
        }
    }

    /// row[col(k)] = f(k) (rounded to T) for the columns before `cols`: f computes each
    /// value where it is stored.
    template <typename F> __device__ __forceinline__ void store(T* row, i64 cols, F f) const {
        if (vec) {
#pragma unroll
            for (int j = 0; j < K / V; ++j) {
                const i64 c = (i64)V * (lane + 32 * j);
                if (c < cols) {
                    P p;
#pragma unroll
                    for (int i = 0; i < V; ++i) {
                        p.v[i] = Ty<T>::store(f(V * j + i));
                    }
                    *reinterpret_cast<P*>(row + c) = p;
                }
            }
        } else {
#pragma unroll
            for (int k = 0; k < K; ++k) {
                const i64 c = (i64)lane + 32 * k;
                if (c < cols) {
                    row[c] = Ty<T>::store(f(k));
                }
            }
        }
    }
};

/// for (row = blockIdx.x; row < rows; row += gridDim.x): one block per row.
#define FLINT_BLOCK_STRIDE(row, rows)                                                      \
    for (i64 row = blockIdx.x; row < (i64)(rows); row += gridDim.x)

struct SumOp {
    template <typename A> __device__ __forceinline__ A operator()(A a, A b) const { return a + b; }
};
struct ProdOp {
    template <typename A> __device__ __forceinline__ A operator()(A a, A b) const { return a * b; }
};
struct MaxOp {
    template <typename A> __device__ __forceinline__ A operator()(A a, A b) const {
        return nan_max(a, b);
    }
};
struct MinOp {
    template <typename A> __device__ __forceinline__ A operator()(A a, A b) const {
        return nan_min(a, b);
    }
};

template <typename A, typename Op> __device__ __forceinline__ A warp_reduce(A v, Op op) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    }
    return v;
}

/// Reduces `v` over the block; every thread gets the result. blockDim.x must be a
/// multiple of 32 (at most 1024); `scratch` is a __shared__ array of at least 32.
/// Contains __syncthreads(): call it from all threads of the block.
template <typename A, typename Op>
__device__ __forceinline__ A block_reduce(A v, Op op, A* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_reduce(v, op);
    __syncthreads(); // the previous use of scratch is finished
    if (lane == 0) {
        scratch[warp] = v;
    }
    __syncthreads();
    A r = scratch[0];
    for (int w = 1; w < warps; ++w) {
        r = op(r, scratch[w]);
    }
    return r;
}

/// The core of the column reductions (reduce.cu's `*_cols` kernels, the layer-norm
/// parameter gradients): for each slice o < outer and column i < inner, reduces
/// `load(o, d, i)` (a V) with `op` over the rows d of this block's chunk
/// [blockIdx.y * chunk, + chunk) and calls `store(o * gridDim.y + blockIdx.y, i, result)`.
/// Each warp of the block takes every `warps`-th row, lane l the column tile*32 + l, so a
/// warp's loads are coalesced along the columns; blocks grid-stride over outer *
/// ceil(inner / 32) tiles. blockDim.x a multiple of 32 up to 1024; contains
/// __syncthreads(): call it from all threads of the block.
template <typename V, typename Op, typename Load, typename Store>
__device__ __forceinline__ void cols_reduce_with(Load load, Store store, Op op, i64 outer,
                                                 i64 dim, i64 inner, i64 chunk, V init) {
    __shared__ V part[32][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const i64 tiles = (inner + 31) / 32, c = blockIdx.y;
    const i64 d0 = c * chunk, d1 = d0 + chunk < dim ? d0 + chunk : dim;
    FLINT_BLOCK_STRIDE(r, outer * tiles) {
        const i64 o = r / tiles, col = (r - o * tiles) * 32 + lane;
        V v = init;
        if (col < inner) {
            for (i64 d = d0 + warp; d < d1; d += warps) {
                v = op(v, load(o, d, col));
            }
        }
        __syncthreads(); // the previous tile's reads of `part` are done
        part[warp][lane] = v;
        __syncthreads();
        if (warp == 0 && col < inner) {
            for (int w = 1; w < warps; ++w) {
                v = op(v, part[w][lane]);
            }
            store(o * (i64)gridDim.y + c, col, v);
        }
    }
}

/// [`cols_reduce_with`] of one value: writes `result / div` (as an O) to
/// out[(o * gridDim.y + blockIdx.y) * inner + i].
template <typename A, typename O, typename Op, typename Load>
__device__ __forceinline__ void cols_reduce(Load load, O* out, i64 outer, i64 dim, i64 inner,
                                            i64 chunk, A init, double div) {
    const auto store = [=](i64 row, i64 col, A v) {
        out[row * inner + col] = Ty<O>::store(div != 1.0 ? v / (A)div : v);
    };
    cols_reduce_with<A>(load, store, Op(), outer, dim, inner, chunk, init);
}

// ---------------------------------------------------------------------------------------
// Atomics (scatter_add, index_add)

__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(double* p, double v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(i64* p, i64 v) {
    atomicAdd((u64*)p, (u64)v); // two's complement: the same bits as a signed add
}

/// 16-bit float add through a compare-and-swap on the aligned 32-bit word holding it.
template <typename H> __device__ __forceinline__ void atomic_add_half(H* p, float v) {
    u32* word = (u32*)((size_t)p & ~(size_t)3);
    const u32 shift = ((size_t)p & 2) ? 16u : 0u;
    u32 old = *word, assumed;
    do {
        assumed = old;
        H h;
        h.bits = (u16)((assumed >> shift) & 0xffffu);
        H sum = Ty<H>::store(Ty<H>::load(h) + v);
        u32 next = (assumed & ~(0xffffu << shift)) | ((u32)sum.bits << shift);
        old = atomicCAS(word, assumed, next);
    } while (old != assumed);
}
__device__ __forceinline__ void atomic_add(f16_t* p, float v) { atomic_add_half(p, v); }
__device__ __forceinline__ void atomic_add(bf16_t* p, float v) { atomic_add_half(p, v); }

// ---------------------------------------------------------------------------------------
// Instantiation lists: X(dtype name, C type, extra args...)

#define FLINT_FLOATS(X, ...)                                                               \
    X(f32, float, __VA_ARGS__)                                                             \
    X(f64, double, __VA_ARGS__)                                                            \
    X(f16, f16_t, __VA_ARGS__)                                                             \
    X(bf16, bf16_t, __VA_ARGS__)
#define FLINT_NUMS(X, ...) FLINT_FLOATS(X, __VA_ARGS__) X(i64, i64, __VA_ARGS__)
#define FLINT_ALL(X, ...) FLINT_NUMS(X, __VA_ARGS__) X(bool, u8, __VA_ARGS__)
