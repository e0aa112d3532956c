#line 1 "softmax.cu"
// Softmax and log-softmax over the last dim of a contiguous [rows, cols] tensor, and
// their backward passes. Computed in the acc type, max-subtracted.
//
// Launch: one block per row (grid-stride over rows, any grid size), blockDim.x a multiple
// of 32 up to 1024 (256 is a good default). A row that is all -inf gives NaN, as PyTorch.

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
