#line 1 "norm.cu"
// Layer norm over the last dim of a contiguous [rows, cols] tensor, and batch norm over
// a contiguous [n, c, s] tensor (s = product of the spatial dims, 1 for [n, c]).
// Statistics (mean, rstd, var) are in the acc type A: f32 for f16/bf16/f32, f64 for f64.
// Variances are biased (divided by the count), as the normalization uses them.
// Optional pointers (weight, bias, mean/rstd outputs, gradient outputs) may be null.
//
// Launch: kernels marked [block] run one block per row/channel (grid-stride, any grid
// size) with blockDim.x a multiple of 32 up to 1024 (256 is a good default); the others
// take any grid and block size.

// [block] layer_norm_<dt>(const T* x, const T* weight, const T* bias, T* y, A* mean,
//                         A* rstd, i64 rows, i64 cols, double eps)
//   y = (x - mean) * rstd * weight + bias, rstd = 1/sqrt(var + eps); mean/rstd saved per
//   row for the backward (may be null).
template <typename T>
__device__ __forceinline__ void layer_norm_rows(const T* x, const T* weight, const T* bias,
                                                T* y, typename Ty<T>::acc* mean_out,
                                                typename Ty<T>::acc* rstd_out, i64 rows,
                                                i64 cols, double eps) {
    typedef typename Ty<T>::acc A;
    __shared__ A scratch[32];
    FLINT_BLOCK_STRIDE(r, rows) {
        const T* xr = x + r * cols;
        T* yr = y + r * cols;
        A s = 0;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            s += Ty<T>::load(xr[c]);
        }
        const A mean = block_reduce(s, SumOp(), scratch) / (A)cols;
        A q = 0;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            const A d = Ty<T>::load(xr[c]) - mean;
            q += d * d;
        }
        const A var = block_reduce(q, SumOp(), scratch) / (A)cols;
        const A rstd = m_rsqrt(var + (A)eps);
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            A v = (Ty<T>::load(xr[c]) - mean) * rstd;
            if (weight != 0) {
                v *= Ty<T>::load(weight[c]);
            }
            if (bias != 0) {
                v += Ty<T>::load(bias[c]);
            }
            yr[c] = Ty<T>::store(v);
        }
        if (threadIdx.x == 0) {
            if (mean_out != 0) {
                mean_out[r] = mean;
            }
            if (rstd_out != 0) {
                rstd_out[r] = rstd;
            }
        }
    }
}

// [block] layer_norm_backward_<dt>(const T* dy, const T* x, const T* weight, const A* mean,
//                                  const A* rstd, T* dx, i64 rows, i64 cols)
//   xhat = (x - mean) * rstd, g = dy * weight,
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
template <typename T>
__device__ __forceinline__ void layer_norm_backward_rows(const T* dy, const T* x,
                                                         const T* weight,
                                                         const typename Ty<T>::acc* mean,
                                                         const typename Ty<T>::acc* rstd,
                                                         T* dx, i64 rows, i64 cols) {
    typedef typename Ty<T>::acc A;
    __shared__ A scratch[32];
    FLINT_BLOCK_STRIDE(r, rows) {
        const T* xr = x + r * cols;
        const T* gr = dy + r * cols;
        T* dr = dx + r * cols;
        const A mu = mean[r], rs = rstd[r];
        A s1 = 0, s2 = 0;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            A g = Ty<T>::load(gr[c]);
            if (weight != 0) {
                g *= Ty<T>::load(weight[c]);
            }
            s1 += g;
            s2 += g * (Ty<T>::load(xr[c]) - mu) * rs;
        }
        const A m1 = block_reduce(s1, SumOp(), scratch) / (A)cols;
        const A m2 = block_reduce(s2, SumOp(), scratch) / (A)cols;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) {
            A g = Ty<T>::load(gr[c]);
            if (weight != 0) {
                g *= Ty<T>::load(weight[c]);
            }
            const A xhat = (Ty<T>::load(xr[c]) - mu) * rs;
            dr[c] = Ty<T>::store(rs * (g - m1 - xhat * m2));
        }
    }
}

// Warp-per-row forms for rows of at most 32 K elements (K = 8, 16, 32 per lane):
// layer_norm_w<K>_<dt> and layer_norm_backward_w<K>_<dt>, the arguments and numbers of
// the block forms above; a warp per row (a block takes blockDim.x / 32 rows at a time,
// grid-strided), the row held in registers (common.cuh's WarpRow: vector loads and stores
// when the rows are aligned): one read of x (and dy), shuffles instead of block barriers.
// blockDim.x a multiple of 32, any grid size.

template <typename T, int K>
__device__ __forceinline__ void layer_norm_warp_rows(const T* x, const T* weight, const T* bias,
                                                     T* y, typename Ty<T>::acc* mean_out,
                                                     typename Ty<T>::acc* rstd_out, i64 rows,
                                                     i64 cols, double eps) {
    typedef typename Ty<T>::acc A;
    const WarpRow<T, K> w(WarpRow<T, K>::fits(x, cols) && WarpRow<T, K>::fits(y, cols));
    FLINT_WARP_STRIDE(r, rows) {
        A v[K];
        w.load(x + r * cols, cols, v, A(0));
        A s = 0;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            s += v[k];
        }
        const A mean = warp_reduce(s, SumOp()) / (A)cols;
        A q = 0;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            if (w.col(k) < cols) {
                const A d = v[k] - mean;
                q += d * d;
            }
        }
        const A var = warp_reduce(q, SumOp()) / (A)cols;
        const A rstd = m_rsqrt(var + (A)eps);
        w.store(y + r * cols, cols, [&](int k) {
            const i64 c = w.col(k);
            A o = (v[k] - mean) * rstd;
            if (weight != 0) {
                o *= Ty<T>::load(weight[c]);
            }
            if (bias != 0) {
                o += Ty<T>::load(bias[c]);
            }
            return o;
        });
        if (w.lane == 0) {
            if (mean_out != 0) {
                mean_out[r] = mean;
            }
            if (rstd_out != 0) {
                rstd_out[r] = rstd;
            }
        }
    }
}

template <typename T, int K>
__device__ __forceinline__ void layer_norm_backward_warp_rows(const T* dy, const T* x,
                                                              const T* weight,
                                                              const typename Ty<T>::acc* mean,
                                                              const typename Ty<T>::acc* rstd,
                                                              T* dx, i64 rows, i64 cols) {
    typedef typename Ty<T>::acc A;
    const WarpRow<T, K> w(WarpRow<T, K>::fits(dy, cols) && WarpRow<T, K>::fits(x, cols) &&
                          WarpRow<T, K>::fits(dx, cols));
    FLINT_WARP_STRIDE(r, rows) {
        const A mu = mean[r], rs = rstd[r];
        A g[K], xh[K];
        w.load(dy + r * cols, cols, g, A(0));
        w.load(x + r * cols, cols, xh, A(0));
        A s1 = 0, s2 = 0;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const i64 c = w.col(k);
            if (c < cols) {
                if (weight != 0) {
                    g[k] *= Ty<T>::load(weight[c]);
                }
                xh[k] = (xh[k] - mu) * rs;
            }
            s1 += g[k];
            s2 += g[k] * xh[k];
        }
        const A m1 = warp_reduce(s1, SumOp()) / (A)cols;
        const A m2 = warp_reduce(s2, SumOp()) / (A)cols;
        w.store(dx + r * cols, cols, [&](int k) { return rs * (g[k] - m1 - xh[k] * m2); });
    }
}

// layer_norm_backward_params_<dt>(const T* dy, const T* x, const A* mean, const A* rstd,
//                                 A* pweight, A* pbias, i64 rows, i64 cols, i64 chunk)
//   per chunk c of `chunk` rows (gridDim.y = ceil(rows / chunk) chunks):
//   pweight[c * cols + j] = sum_r dy * xhat, pbias[c * cols + j] = sum_r dy (either may be
//   null), in the acc type; launched and finished like reduce.cu's `*_cols_part` kernels
//   (blockDim.x a multiple of 32, blocks grid-stride over ceil(cols / 32) column tiles;
//   then `sum_cols_fin_<dt>(pweight, dweight, 1, chunks, cols, chunks, 1.0)`).
template <typename T>
__device__ __forceinline__ void layer_norm_backward_params_cols(
    const T* dy, const T* x, const typename Ty<T>::acc* mean, const typename Ty<T>::acc* rstd,
    typename Ty<T>::acc* pweight, typename Ty<T>::acc* pbias, i64 rows, i64 cols, i64 chunk) {
    typedef typename Ty<T>::acc A;
    // one pass for both sums (x read only when the weight's is asked)
    struct Pair {
        A w, b;
    };
    const bool want_w = pweight != 0;
    const auto load = [=](i64, i64 r, i64 c) {
        const A g = Ty<T>::load(dy[r * cols + c]);
        return Pair{want_w ? g * (Ty<T>::load(x[r * cols + c]) - mean[r]) * rstd[r] : A(0), g};
    };
    const auto sum = [](Pair a, Pair b) { return Pair{a.w + b.w, a.b + b.b}; };
    const auto store = [=](i64 row, i64 c, Pair v) {
        if (pweight != 0) {
            pweight[row * cols + c] = v.w;
        }
        if (pbias != 0) {
            pbias[row * cols + c] = v.b;
        }
    };
    cols_reduce_with<Pair>(load, store, sum, 1, rows, cols, chunk, Pair{A(0), A(0)});
}

// [block] batch_norm_stats_<dt>(const T* x, A* mean, A* var, i64 n, i64 c, i64 s)
//   per-channel mean and biased variance over the n * s elements of each channel.
template <typename T>
__device__ __forceinline__ void batch_norm_stats_channels(const T* x, typename Ty<T>::acc* mean,
                                                          typename Ty<T>::acc* var, i64 n, i64 c,
                                                          i64 s) {
    typedef typename Ty<T>::acc A;
    __shared__ A scratch[32];
    const i64 count = n * s;
    FLINT_BLOCK_STRIDE(ch, c) {
        A sum = 0;
        for (i64 e = threadIdx.x; e < count; e += blockDim.x) {
            const i64 ni = e / s, si = e - ni * s;
            sum += Ty<T>::load(x[(ni * c + ch) * s + si]);
        }
        const A mu = block_reduce(sum, SumOp(), scratch) / (A)count;
        A q = 0;
        for (i64 e = threadIdx.x; e < count; e += blockDim.x) {
            const i64 ni = e / s, si = e - ni * s;
            const A d = Ty<T>::load(x[(ni * c + ch) * s + si]) - mu;
            q += d * d;
        }
        const A v = block_reduce(q, SumOp(), scratch) / (A)count;
        if (threadIdx.x == 0) {
            mean[ch] = mu;
            var[ch] = v;
        }
    }
}

// batch_norm_apply_<dt>(const T* x, const A* mean, const A* var, const T* weight,
//                       const T* bias, T* y, i64 n, i64 c, i64 s, double eps)
//   y = (x - mean[ch]) / sqrt(var[ch] + eps) * weight[ch] + bias[ch]; any launch.
//   (Eval mode: pass the running statistics, converted to A.)
template <typename T>
__device__ __forceinline__ void batch_norm_apply_all(const T* x, const typename Ty<T>::acc* mean,
                                                     const typename Ty<T>::acc* var,
                                                     const T* weight, const T* bias, T* y, i64 n,
                                                     i64 c, i64 s, double eps) {
    typedef typename Ty<T>::acc A;
    FLINT_GRID_STRIDE(i, n * c * s) {
        const i64 ch = (i / s) % c;
        A v = (Ty<T>::load(x[i]) - mean[ch]) * m_rsqrt(var[ch] + (A)eps);
        if (weight != 0) {
            v *= Ty<T>::load(weight[ch]);
        }
        if (bias != 0) {
            v += Ty<T>::load(bias[ch]);
        }
        y[i] = Ty<T>::store(v);
    }
}

// [block] batch_norm_backward_reduce_<dt>(const T* dy, const T* x, const A* mean,
//     const A* var, A* sum_dy, A* sum_dy_xhat, T* dweight, T* dbias, i64 n, i64 c, i64 s,
//     double eps)
//   per channel: sum_dy = sum(dy), sum_dy_xhat = sum(dy * xhat) with
//   xhat = (x - mean) / sqrt(var + eps); dweight = sum_dy_xhat, dbias = sum_dy.
template <typename T>
__device__ __forceinline__ void batch_norm_backward_reduce_channels(
    const T* dy, const T* x, const typename Ty<T>::acc* mean, const typename Ty<T>::acc* var,
    typename Ty<T>::acc* sum_dy, typename Ty<T>::acc* sum_dy_xhat, T* dweight, T* dbias, i64 n,
    i64 c, i64 s, double eps) {
    typedef typename Ty<T>::acc A;
    __shared__ A scratch[32];
    const i64 count = n * s;
    FLINT_BLOCK_STRIDE(ch, c) {
        const A mu = mean[ch], rs = m_rsqrt(var[ch] + (A)eps);
        A s1 = 0, s2 = 0;
        for (i64 e = threadIdx.x; e < count; e += blockDim.x) {
            const i64 ni = e / s, si = e - ni * s;
            const i64 at = (ni * c + ch) * s + si;
            const A g = Ty<T>::load(dy[at]);
            s1 += g;
            s2 += g * (Ty<T>::load(x[at]) - mu) * rs;
        }
        s1 = block_reduce(s1, SumOp(), scratch);
        s2 = block_reduce(s2, SumOp(), scratch);
        if (threadIdx.x == 0) {
            if (sum_dy != 0) {
                sum_dy[ch] = s1;
            }
            if (sum_dy_xhat != 0) {
                sum_dy_xhat[ch] = s2;
            }
            if (dweight != 0) {
                dweight[ch] = Ty<T>::store(s2);
            }
            if (dbias != 0) {
                dbias[ch] = Ty<T>::store(s1);
            }
        }
    }
}

// batch_norm_backward_apply_<dt>(const T* dy, const T* x, const A* mean, const A* var,
//     const T* weight, const A* sum_dy, const A* sum_dy_xhat, T* dx, i64 n, i64 c, i64 s,
//     double eps)
//   training-mode input gradient, M = n * s:
//   dx = weight * rstd * (dy - sum_dy / M - xhat * sum_dy_xhat / M); any launch.
template <typename T>
__device__ __forceinline__ void batch_norm_backward_apply_all(
    const T* dy, const T* x, const typename Ty<T>::acc* mean, const typename Ty<T>::acc* var,
    const T* weight, const typename Ty<T>::acc* sum_dy, const typename Ty<T>::acc* sum_dy_xhat,
    T* dx, i64 n, i64 c, i64 s, double eps) {
    typedef typename Ty<T>::acc A;
    const A count = (A)(n * s);
    FLINT_GRID_STRIDE(i, n * c * s) {
        const i64 ch = (i / s) % c;
        const A rs = m_rsqrt(var[ch] + (A)eps);
        const A xhat = (Ty<T>::load(x[i]) - mean[ch]) * rs;
        A k = rs;
        if (weight != 0) {
            k *= Ty<T>::load(weight[ch]);
        }
        dx[i] = Ty<T>::store(k * (Ty<T>::load(dy[i]) - sum_dy[ch] / count -
                                  xhat * sum_dy_xhat[ch] / count));
    }
}

#define NORM_WARP(dt, T, K)                                                                \
    extern "C" __global__ void FLINT_WARP_ROWS_BOUNDS(T) layer_norm_w##K##_##dt(           \
        const T* x, const T* weight, const T* bias, T* y, Ty<T>::acc* mean,                \
        Ty<T>::acc* rstd, i64 rows, i64 cols, double eps) {                                \
        layer_norm_warp_rows<T, K>(x, weight, bias, y, mean, rstd, rows, cols, eps);       \
    }                                                                                      \
    extern "C" __global__ void FLINT_WARP_ROWS_BOUNDS(T) layer_norm_backward_w##K##_##dt(  \
        const T* dy, const T* x, const T* weight, const Ty<T>::acc* mean,                  \
        const Ty<T>::acc* rstd, T* dx, i64 rows, i64 cols) {                               \
        layer_norm_backward_warp_rows<T, K>(dy, x, weight, mean, rstd, dx, rows, cols);    \
    }
FLINT_FLOATS(NORM_WARP, 8)
FLINT_FLOATS(NORM_WARP, 16)
FLINT_FLOATS(NORM_WARP, 32)

#define NORM(dt, T, _)                                                                     \
    extern "C" __global__ void layer_norm_##dt(const T* x, const T* weight, const T* bias, \
                                               T* y, Ty<T>::acc* mean, Ty<T>::acc* rstd,   \
                                               i64 rows, i64 cols, double eps) {           \
        layer_norm_rows<T>(x, weight, bias, y, mean, rstd, rows, cols, eps);               \
    }                                                                                      \
    extern "C" __global__ void layer_norm_backward_##dt(                                   \
        const T* dy, const T* x, const T* weight, const Ty<T>::acc* mean,                  \
        const Ty<T>::acc* rstd, T* dx, i64 rows, i64 cols) {                               \
        layer_norm_backward_rows<T>(dy, x, weight, mean, rstd, dx, rows, cols);            \
    }                                                                                      \
    extern "C" __global__ void layer_norm_backward_params_##dt(                            \
        const T* dy, const T* x, const Ty<T>::acc* mean, const Ty<T>::acc* rstd,           \
        Ty<T>::acc* pweight, Ty<T>::acc* pbias, i64 rows, i64 cols, i64 chunk) {           \
        layer_norm_backward_params_cols<T>(dy, x, mean, rstd, pweight, pbias, rows, cols,  \
                                           chunk);                                         \
    }                                                                                      \
    extern "C" __global__ void batch_norm_stats_##dt(const T* x, Ty<T>::acc* mean,         \
                                                     Ty<T>::acc* var, i64 n, i64 c,        \
                                                     i64 s) {                              \
        batch_norm_stats_channels<T>(x, mean, var, n, c, s);                               \
    }                                                                                      \
    extern "C" __global__ void batch_norm_apply_##dt(                                      \
        const T* x, const Ty<T>::acc* mean, const Ty<T>::acc* var, const T* weight,        \
        const T* bias, T* y, i64 n, i64 c, i64 s, double eps) {                            \
        batch_norm_apply_all<T>(x, mean, var, weight, bias, y, n, c, s, eps);              \
    }                                                                                      \
    extern "C" __global__ void batch_norm_backward_reduce_##dt(                            \
        const T* dy, const T* x, const Ty<T>::acc* mean, const Ty<T>::acc* var,            \
        Ty<T>::acc* sum_dy, Ty<T>::acc* sum_dy_xhat, T* dweight, T* dbias, i64 n, i64 c,   \
        i64 s, double eps) {                                                               \
        batch_norm_backward_reduce_channels<T>(dy, x, mean, var, sum_dy, sum_dy_xhat,      \
                                               dweight, dbias, n, c, s, eps);              \
    }                                                                                      \
    extern "C" __global__ void batch_norm_backward_apply_##dt(                             \
        const T* dy, const T* x, const Ty<T>::acc* mean, const Ty<T>::acc* var,            \
        const T* weight, const Ty<T>::acc* sum_dy, const Ty<T>::acc* sum_dy_xhat, T* dx,   \
        i64 n, i64 c, i64 s, double eps) {                                                 \
        batch_norm_backward_apply_all<T>(dy, x, mean, var, weight, sum_dy, sum_dy_xhat,    \
                                         dx, n, c, s, eps);                                \
    }
FLINT_FLOATS(NORM, _)
