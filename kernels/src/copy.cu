#line 1 "copy.cu"
// Casts, strided copies, fills and aranges. Any grid and block size works.

// ---------------------------------------------------------------------------------------
// Casts: cast_<from>_<to>(const S* x, Layout lx, D* out, i64 n), through double as the
// CPU runtime does (floats round to nearest even; to i64 truncates, saturates, NaN -> 0;
// to bool is `!= 0`; from bool is 0/1).

template <typename S, typename D>
__device__ __forceinline__ void cast_kernel(const S* x, const Layout& lx, D* out, i64 n) {
    for_runs(lx, n, packs(x, lx) && packs_out(out), [&](auto r) {
        constexpr int V = decltype(r)::V;
        S xv[V];
        D ov[V];
        r.load(xv, x, lx);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            ov[j] = Ty<D>::from_f64(Ty<S>::to_f64(xv[j]));
        }
        r.store(out, ov);
    });
}

#define CAST(dd, D, sd, S)                                                                 \
    extern "C" __global__ void cast_##sd##_##dd(const S* x, Layout lx, D* out, i64 n) {     \
        cast_kernel<S, D>(x, lx, out, n);                                                  \
    }
// all ordered pairs of distinct dtypes (same dtype: use copy_<dt>)
#define CAST_FROM_F32(dd, D, _) CAST(dd, D, f32, float)
#define CAST_FROM_F64(dd, D, _) CAST(dd, D, f64, double)
#define CAST_FROM_F16(dd, D, _) CAST(dd, D, f16, f16_t)
#define CAST_FROM_BF16(dd, D, _) CAST(dd, D, bf16, bf16_t)
#define CAST_FROM_I64(dd, D, _) CAST(dd, D, i64, i64)
#define CAST_FROM_BOOL(dd, D, _) CAST(dd, D, bool, u8)
CAST_FROM_F32(f64, double, _)
CAST_FROM_F32(f16, f16_t, _)
CAST_FROM_F32(bf16, bf16_t, _)
CAST_FROM_F32(i64, i64, _)
CAST_FROM_F32(bool, u8, _)
CAST_FROM_F64(f32, float, _)
CAST_FROM_F64(f16, f16_t, _)
CAST_FROM_F64(bf16, bf16_t, _)
CAST_FROM_F64(i64, i64, _)
CAST_FROM_F64(bool, u8, _)
CAST_FROM_F16(f32, float, _)
CAST_FROM_F16(f64, double, _)
CAST_FROM_F16(bf16, bf16_t, _)
CAST_FROM_F16(i64, i64, _)
CAST_FROM_F16(bool, u8, _)
CAST_FROM_BF16(f32, float, _)
CAST_FROM_BF16(f64, double, _)
CAST_FROM_BF16(f16, f16_t, _)
CAST_FROM_BF16(i64, i64, _)
CAST_FROM_BF16(bool, u8, _)
CAST_FROM_I64(f32, float, _)
CAST_FROM_I64(f64, double, _)
CAST_FROM_I64(f16, f16_t, _)
CAST_FROM_I64(bf16, bf16_t, _)
CAST_FROM_I64(bool, u8, _)
CAST_FROM_BOOL(f32, float, _)
CAST_FROM_BOOL(f64, double, _)
CAST_FROM_BOOL(f16, f16_t, _)
CAST_FROM_BOOL(bf16, bf16_t, _)
CAST_FROM_BOOL(i64, i64, _)

// ---------------------------------------------------------------------------------------
// Copies and fills, any dtype.
// copy_<dt>(const T* src, Layout ls, T* dst, Layout ld, i64 n): dst view = src view
//   (same shape; makes a tensor contiguous when ld is contiguous, or writes into a view).
// contiguous_<dt>(const T* src, Layout ls, T* out, i64 n): out (contiguous) = src view
//   (copy_ with a contiguous destination, without decomposing its index).
// fill_<dt>(T* dst, Layout ld, i64 n, T value): every element of the dst view = value
//   (value passed as T's bits: half/bf16 as u16, bool as u8).

template <typename T>
__device__ __forceinline__ void copy_kernel(const T* src, const Layout& ls, T* dst,
                                            const Layout& ld, i64 n) {
    for_runs(ls, n, packs(src, ls) && packs_into(dst, ld), [&](auto r) {
        T v[decltype(r)::V];
        r.load(v, src, ls);
        r.store_at(dst, layout_offset(ld, r.i), inner_stride(ld), v);
    });
}

template <typename T>
__device__ __forceinline__ void contiguous_kernel(const T* src, const Layout& ls, T* out, i64 n) {
    for_runs(ls, n, packs(src, ls) && packs_out(out), [&](auto r) {
        T v[decltype(r)::V];
        r.load(v, src, ls);
        r.store(out, v);
    });
}

template <typename T>
__device__ __forceinline__ void fill_kernel(T* dst, const Layout& ld, i64 n, T value) {
    for_runs(ld, n, packs_into(dst, ld), [&](auto r) {
        T v[decltype(r)::V];
#pragma unroll
        for (int j = 0; j < decltype(r)::V; ++j) {
            v[j] = value;
        }
        r.store_at(dst, layout_offset(ld, r.i), inner_stride(ld), v);
    });
}

#define COPY_FILL(dt, T, _)                                                                \
    extern "C" __global__ void copy_##dt(const T* src, Layout ls, T* dst, Layout ld,       \
                                         i64 n) {                                          \
        copy_kernel<T>(src, ls, dst, ld, n);                                               \
    }                                                                                      \
    extern "C" __global__ void contiguous_##dt(const T* src, Layout ls, T* out, i64 n) {   \
        contiguous_kernel<T>(src, ls, out, n);                                             \
    }                                                                                      \
    extern "C" __global__ void fill_##dt(T* dst, Layout ld, i64 n, T value) {              \
        fill_kernel<T>(dst, ld, n, value);                                                 \
    }
FLINT_ALL(COPY_FILL, _)

// arange_<dt>(T* out, i64 n, double start, double step): out[i] = start + i * step
// (computed in double, then rounded to T).
#define ARANGE(dt, T, _)                                                                   \
    extern "C" __global__ void arange_##dt(T* out, i64 n, double start, double step) {     \
        FLINT_GRID_STRIDE(i, n) { out[i] = Ty<T>::from_f64(start + (double)i * step); }    \
    }
FLINT_NUMS(ARANGE, _)
