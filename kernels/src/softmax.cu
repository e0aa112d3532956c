#line 1 "softmax.cu"
// Softmax and log-softmax over the last dim of a contiguous [rows, cols] tensor, and
// their backward passes. Computed in the acc type, max-subtracted.
//
// Two forms, for any grid size and blockDim.x a multiple of 32 up to 1024 (256 is a good
// default):
// - softmax_<dt> etc.: a block per row (grid-stride over rows), for rows of any length;
// - softmax_w<K>_<dt> etc. (K = 4, 8, 16, 32), for rows of at most 32 K elements: a warp
//   per row (a block takes blockDim.x / 32 rows at a time, grid-strided), the row held in
//   registers, K per lane (common.cuh's WarpRow: vector loads and stores when the rows
//   are aligned): one read of x, shuffles instead of block barriers. A grid of
//   ceil(rows / (blockDim.x / 32)) blocks covers the rows at once. Each K is an entry
//   of its own, so a short row's kernel is not sized (in registers) for the longest.
// A row that is all -inf gives NaN, as PyTorch.

// K: elements per lane (cols <= 32 K), a compile-time bound so the row stays in registers;
// the lanes hold a row in WarpRow's vector order when x and y allow it (one 16-byte access
// per 4 f32), else in its scalar order
template <typename T, bool Log, int K>
__device__ __forceinline__ void softmax_warp_rows(const T* x, T* y, i64 rows, i64 cols) {
    typedef typename Ty<T>::acc A;
    const WarpRow<T, K> w(WarpRow<T, K>::fits(x, cols) && WarpRow<T, K>::fits(y, cols));
    FLINT_WARP_STRIDE(r, rows) {
        A v[K];
        w.load(x + r * cols, cols, v, -m_inf(A(0)));
        A m = -m_inf(A(0));
#pragma unroll
        for (int k = 0; k < K; ++k) {
            m = nan_max(m, v[k]);
        }
        m = warp_reduce(m, MaxOp());
        A s = 0;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            if (w.col(k) < cols) {
                const A e = m_exp(v[k] - m);
                s += e;
                if (!Log) {
                    v[k] = e;
                }
            }
        }
        s = warp_reduce(s, SumOp());
        const A ls = Log ? m_log(s) : A(0), inv = Log ? A(0) : A(1) / s;
        w.store(y + r * cols, cols, [&](int k) { return Log ? v[k] - m - ls : v[k] * inv; });
    }
}

template <typename T, bool Log, int K>
__device__ __forceinline__ void softmax_backward_warp_rows(const T* y, const T* dy, T* dx,
                                                           i64 rows, i64 cols) {
    typedef typename Ty<T>::acc A;
    const WarpRow<T, K> w(WarpRow<T, K>::fits(y, cols) && WarpRow<T, K>::fits(dy, cols) &&
                          WarpRow<T, K>::fits(dx, cols));
    FLINT_WARP_STRIDE(r, rows) {
        A yv[K], gv[K];
        w.load(y + r * cols, cols, yv, A(0));
        w.load(dy + r * cols, cols, gv, A(0));
        A s = 0;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            s += Log ? gv[k] : gv[k] * yv[k];
        }
        s = warp_reduce(s, SumOp());
        w.store(dx + r * cols, cols,
                [&](int k) { return Log ? gv[k] - m_exp(yv[k]) * s : yv[k] * (gv[k] - s); });
    }
}

// softmax_<dt> / log_softmax_<dt>(const T* x, T* y, i64 rows, i64 cols)
template <typename T, bool Log>
__device__ __forceinline__ void softmax_rows(const T* x, T* y, i64 rows, i64 cols) {
    typedef typename Ty<T>::acc A;
    __shared__ A scratch[32];
    FLINT_BLOCK_STRIDE(r, rows) {
        const T* xr = x + r * cols;
        T* yr = y + r * cols;
        A m = -m_inf(A(0));
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            m = nan_max(m, Ty<T>::load(xr[c]));
        }
        m = block_reduce(m, MaxOp(), scratch);
        A s = 0;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            s += m_exp(Ty<T>::load(xr[c]) - m);
        }
        s = block_reduce(s, SumOp(), scratch);
        if (Log) {
            const A ls = m_log(s);
            for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
                yr[c] = Ty<T>::store(Ty<T>::load(xr[c]) - m - ls);
            }
        } else {
            const A inv = A(1) / s;
            for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
                yr[c] = Ty<T>::store(m_exp(Ty<T>::load(xr[c]) - m) * inv);
            }
        }
    }
}

// softmax_backward_<dt>(const T* y, const T* dy, T* dx, i64 rows, i64 cols):
//   dx = y * (dy - sum(dy * y)), y the softmax output.
// log_softmax_backward_<dt>(const T* y, const T* dy, T* dx, i64 rows, i64 cols):
//   dx = dy - exp(y) * sum(dy), y the log-softmax output.
template <typename T, bool Log>
__device__ __forceinline__ void softmax_backward_rows(const T* y, const T* dy, T* dx, i64 rows,
                                                      i64 cols) {
    typedef typename Ty<T>::acc A;
    __shared__ A scratch[32];
    FLINT_BLOCK_STRIDE(r, rows) {
        const T* yr = y + r * cols;
        const T* gr = dy + r * cols;
        T* dr = dx + r * cols;
        A s = 0;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            const A g = Ty<T>::load(gr[c]);
            s += Log ? g : g * Ty<T>::load(yr[c]);
        }
        s = block_reduce(s, SumOp(), scratch);
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            const A g = Ty<T>::load(gr[c]), yv = Ty<T>::load(yr[c]);
            dr[c] = Ty<T>::store(Log ? g - m_exp(yv) * s : yv * (g - s));
        }
    }
}

#define SOFTMAX(dt, T, _)                                                                  \
    extern "C" __global__ void softmax_##dt(const T* x, T* y, i64 rows, i64 cols) {        \
        softmax_rows<T, false>(x, y, rows, cols);                                          \
    }                                                                                      \
    extern "C" __global__ void log_softmax_##dt(const T* x, T* y, i64 rows, i64 cols) {    \
        softmax_rows<T, true>(x, y, rows, cols);                                           \
    }                                                                                      \
    extern "C" __global__ void softmax_backward_##dt(const T* y, const T* dy, T* dx,       \
                                                     i64 rows, i64 cols) {                 \
        softmax_backward_rows<T, false>(y, dy, dx, rows, cols);                            \
    }                                                                                      \
    extern "C" __global__ void log_softmax_backward_##dt(const T* y, const T* dy, T* dx,   \
                                                         i64 rows, i64 cols) {             \
        softmax_backward_rows<T, true>(y, dy, dx, rows, cols);                             \
    }
FLINT_FLOATS(SOFTMAX, _)

#define SOFTMAX_WARP(dt, T, K)                                                             \
    extern "C" __global__ void FLINT_WARP_ROWS_BOUNDS(T) softmax_w##K##_##dt(              \
        const T* x, T* y, i64 rows, i64 cols) {                                            \
        softmax_warp_rows<T, false, K>(x, y, rows, cols);                                  \
    }                                                                                      \
    extern "C" __global__ void FLINT_WARP_ROWS_BOUNDS(T) log_softmax_w##K##_##dt(          \
        const T* x, T* y, i64 rows, i64 cols) {                                            \
        softmax_warp_rows<T, true, K>(x, y, rows, cols);                                   \
    }                                                                                      \
    extern "C" __global__ void FLINT_WARP_ROWS_BOUNDS(T) softmax_backward_w##K##_##dt(     \
        const T* y, const T* dy, T* dx, i64 rows, i64 cols) {                              \
        softmax_backward_warp_rows<T, false, K>(y, dy, dx, rows, cols);                    \
    }                                                                                      \
    extern "C" __global__ void FLINT_WARP_ROWS_BOUNDS(T) log_softmax_backward_w##K##_##dt( \
        const T* y, const T* dy, T* dx, i64 rows, i64 cols) {                              \
        softmax_backward_warp_rows<T, true, K>(y, dy, dx, rows, cols);                     \
    }
FLINT_FLOATS(SOFTMAX_WARP, 4)
FLINT_FLOATS(SOFTMAX_WARP, 8)
FLINT_FLOATS(SOFTMAX_WARP, 16)
FLINT_FLOATS(SOFTMAX_WARP, 32)
