#line 1 "index.cu"
// Index ops: index_select (embedding), index_add (embedding backward), gather,
// scatter_add, masked_fill, where. Any grid and block size works.
//
// Indices are i64 in 0..size, as in the CPU runtime (whose index ops take no negative
// indices). An index out of range, negative ones included, is skipped (index_select/
// gather write 0 there) and, when `status` is not null, sets *status = 1 so the caller
// can report an error after the launch.
// The *_add kernels use atomics: their summation order, hence the last bits of float
// results, varies from run to run.

__device__ __forceinline__ bool fix_index(i64& k, i64 size, int* status) {
    if (k < 0 || k >= size) {
        if (status != 0) {
            atomicExch(status, 1);
        }
        return false;
    }
    return true;
}

// index_select_<dt>(const T* src, const i64* idx, T* out, i64 outer, i64 src_dim,
//                   i64 inner, i64 n_idx, int* status)
//   src [outer, src_dim, inner], idx [n_idx] -> out [outer, n_idx, inner],
//   out[o, j, i] = src[o, idx[j], i]. Embedding: outer = 1, src_dim = vocab,
//   inner = embedding dim, idx = the flattened token ids.
// index_add_<dt>(const T* src, const i64* idx, T* out, i64 outer, i64 out_dim, i64 inner,
//                i64 n_idx, int* status)
//   out[o, idx[j], i] += src[o, j, i] for src [outer, n_idx, inner] (embedding backward:
//   src = the output gradient, out = the zeroed weight gradient).
template <typename T>
__device__ __forceinline__ void index_select_all(const T* src, const i64* idx, T* out, i64 outer,
                                                 i64 src_dim, i64 inner, i64 n_idx,
                                                 int* status) {
    FLINT_GRID_STRIDE(e, outer * n_idx * inner) {
        const i64 i = e % inner, oj = e / inner, j = oj % n_idx, o = oj / n_idx;
        i64 k = idx[j];
        if (fix_index(k, src_dim, status)) {
            out[e] = src[(o * src_dim + k) * inner + i];
        } else {
            out[e] = Ty<T>::from_f64(0.0);
        }
    }
}

template <typename T>
__device__ __forceinline__ void index_add_all(const T* src, const i64* idx, T* out, i64 outer,
                                              i64 out_dim, i64 inner, i64 n_idx, int* status) {
    FLINT_GRID_STRIDE(e, outer * n_idx * inner) {
        const i64 i = e % inner, oj = e / inner, j = oj % n_idx, o = oj / n_idx;
        i64 k = idx[j];
        if (fix_index(k, out_dim, status)) {
            atomic_add(&out[(o * out_dim + k) * inner + i], Ty<T>::load(src[e]));
        }
    }
}

// gather_<dt>(const T* src, const i64* idx, T* out, i64 outer, i64 src_dim, i64 idx_dim,
//             i64 inner, int* status)
//   src [outer, src_dim, inner], idx and out [outer, idx_dim, inner]:
//   out[o, j, i] = src[o, idx[o, j, i], i] (torch.gather with the non-gathered dims of
//   idx equal to src's; make idx contiguous first).
// scatter_add_<dt>(const T* src, const i64* idx, T* out, i64 outer, i64 out_dim,
//                  i64 idx_dim, i64 inner, int* status)
//   src and idx [outer, idx_dim, inner], out [outer, out_dim, inner]:
//   out[o, idx[o, j, i], i] += src[o, j, i] (the backward of gather).
template <typename T>
__device__ __forceinline__ void gather_all(const T* src, const i64* idx, T* out, i64 outer,
                                           i64 src_dim, i64 idx_dim, i64 inner, int* status) {
    FLINT_GRID_STRIDE(e, outer * idx_dim * inner) {
        const i64 i = e % inner, o = e / (idx_dim * inner);
        i64 k = idx[e];
        if (fix_index(k, src_dim, status)) {
            out[e] = src[(o * src_dim + k) * inner + i];
        } else {
            out[e] = Ty<T>::from_f64(0.0);
        }
    }
}

template <typename T>
__device__ __forceinline__ void scatter_add_all(const T* src, const i64* idx, T* out, i64 outer,
                                                i64 out_dim, i64 idx_dim, i64 inner,
                                                int* status) {
    FLINT_GRID_STRIDE(e, outer * idx_dim * inner) {
        const i64 i = e % inner, o = e / (idx_dim * inner);
        i64 k = idx[e];
        if (fix_index(k, out_dim, status)) {
            atomic_add(&out[(o * out_dim + k) * inner + i], Ty<T>::load(src[e]));
        }
    }
}

#define SELECT(dt, T, _)                                                                   \
    extern "C" __global__ void index_select_##dt(const T* src, const i64* idx, T* out,     \
                                                 i64 outer, i64 src_dim, i64 inner,        \
                                                 i64 n_idx, int* status) {                 \
        index_select_all<T>(src, idx, out, outer, src_dim, inner, n_idx, status);          \
    }                                                                                      \
    extern "C" __global__ void gather_##dt(const T* src, const i64* idx, T* out,           \
                                           i64 outer, i64 src_dim, i64 idx_dim, i64 inner, \
                                           int* status) {                                  \
        gather_all<T>(src, idx, out, outer, src_dim, idx_dim, inner, status);              \
    }
FLINT_ALL(SELECT, _)

#define ADD(dt, T, _)                                                                      \
    extern "C" __global__ void index_add_##dt(const T* src, const i64* idx, T* out,        \
                                              i64 outer, i64 out_dim, i64 inner,           \
                                              i64 n_idx, int* status) {                    \
        index_add_all<T>(src, idx, out, outer, out_dim, inner, n_idx, status);             \
    }                                                                                      \
    extern "C" __global__ void scatter_add_##dt(const T* src, const i64* idx, T* out,      \
                                                i64 outer, i64 out_dim, i64 idx_dim,       \
                                                i64 inner, int* status) {                  \
        scatter_add_all<T>(src, idx, out, outer, out_dim, idx_dim, inner, status);         \
    }
FLINT_NUMS(ADD, _)

// masked_fill_<dt>(const T* x, Layout lx, const u8* mask, Layout lm, T value, T* out, i64 n)
//   out[i] = mask ? value : x (value passed as T's bits), out contiguous.
// where_<dt>(const u8* cond, Layout lc, const T* a, Layout la, const T* b, Layout lb,
//            T* out, i64 n)
//   out[i] = cond ? a : b, out contiguous.
template <typename T>
__device__ __forceinline__ void masked_fill_kernel(const T* x, const Layout& lx, const u8* mask,
                                                   const Layout& lm, T value, T* out, i64 n) {
    const bool packed = packs(x, lx) && packs(mask, lm) && packs_out(out);
    for_runs(lx, n, packed, [&](auto r) {
        constexpr int V = decltype(r)::V;
        T xv[V];
        u8 mv[V];
        r.load(mv, mask, lm);
        r.load(xv, x, lx);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            xv[j] = mv[j] != 0 ? value : xv[j];
        }
        r.store(out, xv);
    });
}

template <typename T>
__device__ __forceinline__ void where_kernel(const u8* cond, const Layout& lc, const T* a,
                                             const Layout& la, const T* b, const Layout& lb,
                                             T* out, i64 n) {
    const bool packed = packs(cond, lc) && packs(a, la) && packs(b, lb) && packs_out(out);
    for_runs(lc, n, packed, [&](auto r) {
        constexpr int V = decltype(r)::V;
        T av[V], bv[V];
        u8 cv[V];
        r.load(cv, cond, lc);
        r.load(av, a, la);
        r.load(bv, b, lb);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            av[j] = cv[j] != 0 ? av[j] : bv[j];
        }
        r.store(out, av);
    });
}

#define MASK(dt, T, _)                                                                     \
    extern "C" __global__ void masked_fill_##dt(const T* x, Layout lx, const u8* mask,     \
                                                Layout lm, T value, T* out, i64 n) {       \
        masked_fill_kernel<T>(x, lx, mask, lm, value, out, n);                             \
    }                                                                                      \
    extern "C" __global__ void where_##dt(const u8* cond, Layout lc, const T* a,           \
                                          Layout la, const T* b, Layout lb, T* out,        \
                                          i64 n) {                                         \
        where_kernel<T>(cond, lc, a, la, b, lb, out, n);                                   \
    }
FLINT_ALL(MASK, _)

// triu_<dt> / tril_<dt>(const T* x, T* out, i64 batch, i64 rows, i64 cols, i64 k)
//   x and out contiguous [batch, rows, cols]; triu keeps col - row >= k, tril keeps
//   col - row <= k, the rest is 0 (false for bool).
#define TRI(dt, T, _)                                                                      \
    extern "C" __global__ void triu_##dt(const T* x, T* out, i64 batch, i64 rows,          \
                                         i64 cols, i64 k) {                                \
        FLINT_GRID_STRIDE(e, batch * rows * cols) {                                        \
            const i64 c = e % cols, r = (e / cols) % rows;                                 \
            out[e] = (c - r >= k) ? x[e] : Ty<T>::from_f64(0.0);                           \
        }                                                                                  \
    }                                                                                      \
    extern "C" __global__ void tril_##dt(const T* x, T* out, i64 batch, i64 rows,          \
                                         i64 cols, i64 k) {                                \
        FLINT_GRID_STRIDE(e, batch * rows * cols) {                                        \
            const i64 c = e % cols, r = (e / cols) % rows;                                 \
            out[e] = (c - r <= k) ? x[e] : Ty<T>::from_f64(0.0);                           \
        }                                                                                  \
    }
FLINT_ALL(TRI, _)
