#line 1 "attention.cu"
// Fused scaled dot-product attention (flash-attention style): softmax(q kᵀ·scale + bias,
// masked) v without materializing the [Tq, Tk] score matrix, and its backward from the
// saved log-sum-exp. A straightforward tiled version: one warp per query (forward, dq) or
// per key (dk/dv) row, the other operand streamed through shared memory in tiles, online
// softmax in the acc type (f32 for f16/bf16/f32, f64 for f64).
//
// Layout: q [B, H, Tq, D], k [B, H, Tk, D], v [B, H, Tk, Dv], D and Dv <= 128. q, k, v may
// be strided over (b, h, t) (AttentionParams strides) but their last dim is contiguous;
// out/dout [B, H, Tq, Dv], lse/delta [B, H, Tq] (acc type), dq [B, H, Tq, D],
// dk [B, H, Tk, D] and dv [B, H, Tk, Dv] are contiguous.
// Masking, as F.scaled_dot_product_attention: `mask` (bool, may be null) is true where
// query i MAY attend key j; `bias` (T, may be null) is added to the scaled scores; both
// are read at b*s[0] + h*s[1] + i*s[2] + j*s[3] with their strides (0 = broadcast).
// `causal` hides key j from query i when j > i (top-left aligned, as PyTorch's is_causal).
// A query that may attend no key gets NaN output and lse = -inf (as PyTorch), and zero
// gradients. No gradient is computed for `bias`.
//
// Launch (forward, dq): grid (ceil(Tq / W), B*H), block (32*W) with W warps = W query
// rows per block, W <= 32 (W = 8 is a good default); dkv: grid (ceil(Tk / W), B*H).
// Both grid dims are grid-stride loops, so smaller grids (gridDim.y <= 65535) work.
// delta: any grid, blockDim.x a multiple of 32 (one warp per row).

#define ATT_MAX_D 128
#define ATT_PER_LANE 4 // ATT_MAX_D / 32

/// Mirrored by `flint_kernels::AttentionParams` (#[repr(C)], 200 bytes), passed by value.
struct AttentionParams {
    i64 batch, heads, tq, tk, d, dv;
    i64 q_stride[3];    // (b, h, t) element strides of q
    i64 k_stride[3];    // of k
    i64 v_stride[3];    // of v
    i64 mask_stride[4]; // (b, h, i, j) strides of the bool mask
    i64 bias_stride[4]; // (b, h, i, j) strides of the additive bias
    double scale;       // usually 1/sqrt(D)
    i64 causal;         // nonzero: hide j > i
};
static_assert(sizeof(AttentionParams) == 200, "must match flint_kernels::AttentionParams");

/// Keys (or queries) per shared-memory tile: 32 KB of K and V tiles per block.
template <typename A> struct AttTile { static const int rows = 32; };
template <> struct AttTile<double> { static const int rows = 16; };

/// The score of (i, j) given the raw dot product, or -inf when (i, j) is masked.
template <typename T>
__device__ __forceinline__ typename Ty<T>::acc att_score(typename Ty<T>::acc dot, i64 b, i64 h,
                                                         i64 i, i64 j, const u8* mask,
                                                         const T* bias,
                                                         const AttentionParams& p) {
    typedef typename Ty<T>::acc A;
    if (p.causal != 0 && j > i) {
        return -m_inf(A(0));
    }
    if (mask != 0) {
        const i64 at = b * p.mask_stride[0] + h * p.mask_stride[1] + i * p.mask_stride[2] +
                       j * p.mask_stride[3];
        if (mask[at] == 0) {
            return -m_inf(A(0));
        }
    }
    A s = dot * (A)p.scale;
    if (bias != 0) {
        const i64 at = b * p.bias_stride[0] + h * p.bias_stride[1] + i * p.bias_stride[2] +
                       j * p.bias_stride[3];
        s += Ty<T>::load(bias[at]);
    }
    return s;
}

/// Loads `rows` rows of `width` <= 128 elements (row r at src + (r0 + r) * stride) into a
/// shared tile, zero past `limit` rows. All threads of the block call it.
template <typename T, int R>
__device__ __forceinline__ void att_load_tile(typename Ty<T>::acc (*tile)[ATT_MAX_D], const T* src,
                                              i64 r0, i64 limit, i64 stride, i64 width) {
    for (i64 e = threadIdx.x; e < (i64)R * width; e += blockDim.x) {
        const i64 r = e / width, c = e - r * width;
        tile[r][c] = (r0 + r < limit) ? Ty<T>::load(src[(r0 + r) * stride + c])
                                      : (typename Ty<T>::acc)0;
    }
}

// attention_forward_<dt>(const T* q, const T* k, const T* v, const u8* mask, const T* bias,
//                        T* out, A* lse, AttentionParams p)
//   out = softmax(scores) v, lse[i] = log(sum_j exp(score_ij)) (saved for the backward).
template <typename T>
__device__ __forceinline__ void attention_forward_impl(const T* q, const T* k, const T* v,
                                                       const u8* mask, const T* bias, T* out,
                                                       typename Ty<T>::acc* lse,
                                                       const AttentionParams& p) {
    typedef typename Ty<T>::acc A;
    const int BK = AttTile<A>::rows;
    __shared__ A ks[AttTile<A>::rows][ATT_MAX_D];
    __shared__ A vs[AttTile<A>::rows][ATT_MAX_D];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const i64 tiles = (p.tq + warps - 1) / warps;
    for (i64 bh = blockIdx.y; bh < p.batch * p.heads; bh += gridDim.y) {
        const i64 b = bh / p.heads, h = bh - b * p.heads;
        const T* kb = k + b * p.k_stride[0] + h * p.k_stride[1];
        const T* vb = v + b * p.v_stride[0] + h * p.v_stride[1];
        for (i64 qt = blockIdx.x; qt < tiles; qt += gridDim.x) {
            const i64 i = qt * warps + warp;
            const bool active = i < p.tq;
            A qr[ATT_PER_LANE], acc[ATT_PER_LANE];
#pragma unroll
            for (int e = 0; e < ATT_PER_LANE; ++e) {
                const int c = lane + 32 * e;
                qr[e] = (active && c < p.d)
                            ? Ty<T>::load(q[b * p.q_stride[0] + h * p.q_stride[1] +
                                            i * p.q_stride[2] + c])
                            : A(0);
                acc[e] = 0;
            }
            A m = -m_inf(A(0)), l = 0;
            i64 kend = p.tk;
            if (p.causal != 0 && qt * warps + warps < kend) {
                kend = qt * warps + warps; // no key after the tile's last query
            }
            for (i64 k0 = 0; k0 < kend; k0 += BK) {
                __syncthreads(); // the previous tile is consumed
                att_load_tile<T, AttTile<A>::rows>(ks, kb, k0, p.tk, p.k_stride[2], p.d);
                att_load_tile<T, AttTile<A>::rows>(vs, vb, k0, p.tk, p.v_stride[2], p.dv);
                __syncthreads();
                if (!active) {
                    continue;
                }
                const i64 jn = (kend - k0 < BK) ? kend - k0 : BK;
                for (i64 jj = 0; jj < jn; ++jj) {
                    A dot = 0;
#pragma unroll
                    for (int e = 0; e < ATT_PER_LANE; ++e) {
                        const int c = lane + 32 * e;
                        if (c < p.d) {
                            dot += qr[e] * ks[jj][c];
                        }
                    }
                    dot = warp_reduce(dot, SumOp());
                    const A s = att_score<T>(dot, b, h, i, k0 + jj, mask, bias, p);
                    if (s == -m_inf(A(0))) {
                        continue; // masked (warp-uniform)
                    }
                    const A m_new = nan_max(m, s);
                    const A corr = m_exp(m - m_new); // 0 while m = -inf
                    const A w = m_exp(s - m_new);
                    l = l * corr + w;
#pragma unroll
                    for (int e = 0; e < ATT_PER_LANE; ++e) {
                        const int c = lane + 32 * e;
                        if (c < p.dv) {
                            acc[e] = acc[e] * corr + w * vs[jj][c];
                        }
                    }
                    m = m_new;
                }
            }
            if (active) {
                const i64 row = bh * p.tq + i;
                const A inv = A(1) / l; // l = 0 (nothing attended): NaN output, as PyTorch
#pragma unroll
                for (int e = 0; e < ATT_PER_LANE; ++e) {
                    const int c = lane + 32 * e;
                    if (c < p.dv) {
                        out[row * p.dv + c] = Ty<T>::store(acc[e] * inv);
                    }
                }
                if (lane == 0) {
                    lse[row] = m + m_log(l);
                }
            }
        }
    }
}

// attention_backward_delta_<dt>(const T* out, const T* dout, A* delta, i64 rows, i64 dv)
//   delta[r] = sum_c dout[r, c] * out[r, c] over rows = B*H*Tq (one warp per row).
template <typename T>
__device__ __forceinline__ void attention_delta_impl(const T* out, const T* dout,
                                                     typename Ty<T>::acc* delta, i64 rows,
                                                     i64 dv) {
    typedef typename Ty<T>::acc A;
    const int lane = threadIdx.x & 31;
    const i64 warps_total = ((i64)blockDim.x * gridDim.x) >> 5;
    for (i64 r = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps_total) {
        A s = 0;
        for (i64 c = lane; c < dv; c += 32) {
            s += Ty<T>::load(dout[r * dv + c]) * Ty<T>::load(out[r * dv + c]);
        }
        s = warp_reduce(s, SumOp());
        if (lane == 0) {
            delta[r] = s;
        }
    }
}

// attention_backward_dq_<dt>(const T* q, const T* k, const T* v, const u8* mask,
//     const T* bias, const T* dout, const A* lse, const A* delta, T* dq, AttentionParams p)
//   P_ij = exp(score_ij - lse_i), dS_ij = P_ij (dout_i·v_j - delta_i),
//   dq_i = scale * sum_j dS_ij k_j.
template <typename T>
__device__ __forceinline__ void attention_dq_impl(const T* q, const T* k, const T* v,
                                                  const u8* mask, const T* bias, const T* dout,
                                                  const typename Ty<T>::acc* lse,
                                                  const typename Ty<T>::acc* delta, T* dq,
                                                  const AttentionParams& p) {
    typedef typename Ty<T>::acc A;
    const int BK = AttTile<A>::rows;
    __shared__ A ks[AttTile<A>::rows][ATT_MAX_D];
    __shared__ A vs[AttTile<A>::rows][ATT_MAX_D];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const i64 tiles = (p.tq + warps - 1) / warps;
    for (i64 bh = blockIdx.y; bh < p.batch * p.heads; bh += gridDim.y) {
        const i64 b = bh / p.heads, h = bh - b * p.heads;
        const T* kb = k + b * p.k_stride[0] + h * p.k_stride[1];
        const T* vb = v + b * p.v_stride[0] + h * p.v_stride[1];
        for (i64 qt = blockIdx.x; qt < tiles; qt += gridDim.x) {
            const i64 i = qt * warps + warp;
            const bool active = i < p.tq;
            const i64 row = bh * p.tq + i;
            A qr[ATT_PER_LANE], dor[ATT_PER_LANE], g[ATT_PER_LANE];
#pragma unroll
            for (int e = 0; e < ATT_PER_LANE; ++e) {
                const int c = lane + 32 * e;
                qr[e] = (active && c < p.d)
                            ? Ty<T>::load(q[b * p.q_stride[0] + h * p.q_stride[1] +
                                            i * p.q_stride[2] + c])
                            : A(0);
                dor[e] = (active && c < p.dv) ? Ty<T>::load(dout[row * p.dv + c]) : A(0);
                g[e] = 0;
            }
            const A lse_i = active ? lse[row] : A(0), delta_i = active ? delta[row] : A(0);
            i64 kend = p.tk;
            if (p.causal != 0 && qt * warps + warps < kend) {
                kend = qt * warps + warps;
            }
            for (i64 k0 = 0; k0 < kend; k0 += BK) {
                __syncthreads();
                att_load_tile<T, AttTile<A>::rows>(ks, kb, k0, p.tk, p.k_stride[2], p.d);
                att_load_tile<T, AttTile<A>::rows>(vs, vb, k0, p.tk, p.v_stride[2], p.dv);
                __syncthreads();
                if (!active) {
                    continue;
                }
                const i64 jn = (kend - k0 < BK) ? kend - k0 : BK;
                for (i64 jj = 0; jj < jn; ++jj) {
                    A dot = 0, dp = 0;
#pragma unroll
                    for (int e = 0; e < ATT_PER_LANE; ++e) {
                        const int c = lane + 32 * e;
                        if (c < p.d) {
                            dot += qr[e] * ks[jj][c];
                        }
                        if (c < p.dv) {
                            dp += dor[e] * vs[jj][c];
                        }
                    }
                    dot = warp_reduce(dot, SumOp());
                    const A s = att_score<T>(dot, b, h, i, k0 + jj, mask, bias, p);
                    if (s == -m_inf(A(0))) {
                        continue;
                    }
                    dp = warp_reduce(dp, SumOp());
                    const A ds = m_exp(s - lse_i) * (dp - delta_i);
#pragma unroll
                    for (int e = 0; e < ATT_PER_LANE; ++e) {
                        const int c = lane + 32 * e;
                        if (c < p.d) {
                            g[e] += ds * ks[jj][c];
                        }
                    }
                }
            }
            if (active) {
#pragma unroll
                for (int e = 0; e < ATT_PER_LANE; ++e) {
                    const int c = lane + 32 * e;
                    if (c < p.d) {
                        dq[row * p.d + c] = Ty<T>::store(g[e] * (A)p.scale);
                    }
                }
            }
        }
    }
}

// attention_backward_dkv_<dt>(const T* q, const T* k, const T* v, const u8* mask,
//     const T* bias, const T* dout, const A* lse, const A* delta, T* dk, T* dv,
//     AttentionParams p)
//   dv_j = sum_i P_ij dout_i, dk_j = scale * sum_i dS_ij q_i (one warp per key row).
template <typename T>
__device__ __forceinline__ void attention_dkv_impl(const T* q, const T* k, const T* v,
                                                   const u8* mask, const T* bias, const T* dout,
                                                   const typename Ty<T>::acc* lse,
                                                   const typename Ty<T>::acc* delta, T* dk,
                                                   T* dv, const AttentionParams& p) {
    typedef typename Ty<T>::acc A;
    const int BQ = AttTile<A>::rows;
    __shared__ A qs[AttTile<A>::rows][ATT_MAX_D];
    __shared__ A dos[AttTile<A>::rows][ATT_MAX_D];
    __shared__ A lse_s[AttTile<A>::rows];
    __shared__ A delta_s[AttTile<A>::rows];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const i64 tiles = (p.tk + warps - 1) / warps;
    for (i64 bh = blockIdx.y; bh < p.batch * p.heads; bh += gridDim.y) {
        const i64 b = bh / p.heads, h = bh - b * p.heads;
        const T* qb = q + b * p.q_stride[0] + h * p.q_stride[1];
        const T* dob = dout + bh * p.tq * p.dv;
        for (i64 kt = blockIdx.x; kt < tiles; kt += gridDim.x) {
            const i64 j = kt * warps + warp;
            const bool active = j < p.tk;
            A kr[ATT_PER_LANE], vr[ATT_PER_LANE], gk[ATT_PER_LANE], gv[ATT_PER_LANE];
#pragma unroll
            for (int e = 0; e < ATT_PER_LANE; ++e) {
                const int c = lane + 32 * e;
                kr[e] = (active && c < p.d)
                            ? Ty<T>::load(k[b * p.k_stride[0] + h * p.k_stride[1] +
                                            j * p.k_stride[2] + c])
                            : A(0);
                vr[e] = (active && c < p.dv)
                            ? Ty<T>::load(v[b * p.v_stride[0] + h * p.v_stride[1] +
                                            j * p.v_stride[2] + c])
                            : A(0);
                gk[e] = 0;
                gv[e] = 0;
            }
            // causal: queries before the tile's first key see none of its keys
            const i64 qstart = p.causal != 0 ? ((kt * warps) / BQ) * BQ : 0;
            for (i64 q0 = qstart; q0 < p.tq; q0 += BQ) {
                __syncthreads();
                att_load_tile<T, AttTile<A>::rows>(qs, qb, q0, p.tq, p.q_stride[2], p.d);
                att_load_tile<T, AttTile<A>::rows>(dos, dob, q0, p.tq, p.dv, p.dv);
                for (int r = threadIdx.x; r < BQ; r += blockDim.x) {
                    const bool in = q0 + r < p.tq;
                    lse_s[r] = in ? lse[bh * p.tq + q0 + r] : A(0);
                    delta_s[r] = in ? delta[bh * p.tq + q0 + r] : A(0);
                }
                __syncthreads();
                if (!active) {
                    continue;
                }
                const i64 in_tile = (p.tq - q0 < BQ) ? p.tq - q0 : BQ;
                for (i64 ii = 0; ii < in_tile; ++ii) {
                    A dot = 0, dp = 0;
#pragma unroll
                    for (int e = 0; e < ATT_PER_LANE; ++e) {
                        const int c = lane + 32 * e;
                        if (c < p.d) {
                            dot += qs[ii][c] * kr[e];
                        }
                        if (c < p.dv) {
                            dp += dos[ii][c] * vr[e];
                        }
                    }
                    dot = warp_reduce(dot, SumOp());
                    const A s = att_score<T>(dot, b, h, q0 + ii, j, mask, bias, p);
                    if (s == -m_inf(A(0))) {
                        continue;
                    }
                    dp = warp_reduce(dp, SumOp());
                    const A pij = m_exp(s - lse_s[ii]);
                    const A ds = pij * (dp - delta_s[ii]);
#pragma unroll
                    for (int e = 0; e < ATT_PER_LANE; ++e) {
                        const int c = lane + 32 * e;
                        if (c < p.d) {
                            gk[e] += ds * qs[ii][c];
                        }
                        if (c < p.dv) {
                            gv[e] += pij * dos[ii][c];
                        }
                    }
                }
            }
            if (active) {
                const i64 row = bh * p.tk + j;
#pragma unroll
                for (int e = 0; e < ATT_PER_LANE; ++e) {
                    const int c = lane + 32 * e;
                    if (c < p.d) {
                        dk[row * p.d + c] = Ty<T>::store(gk[e] * (A)p.scale);
                    }
                    if (c < p.dv) {
                        dv[row * p.dv + c] = Ty<T>::store(gv[e]);
                    }
                }
            }
        }
    }
}

#define ATTENTION(dt, T, _)                                                                \
    extern "C" __global__ void attention_forward_##dt(const T* q, const T* k, const T* v,  \
                                                      const u8* mask, const T* bias,       \
                                                      T* out, Ty<T>::acc* lse,             \
                                                      AttentionParams p) {                 \
        attention_forward_impl<T>(q, k, v, mask, bias, out, lse, p);                       \
    }                                                                                      \
    extern "C" __global__ void attention_backward_delta_##dt(                              \
        const T* out, const T* dout, Ty<T>::acc* delta, i64 rows, i64 dv) {                \
        attention_delta_impl<T>(out, dout, delta, rows, dv);                               \
    }                                                                                      \
    extern "C" __global__ void attention_backward_dq_##dt(                                 \
        const T* q, const T* k, const T* v, const u8* mask, const T* bias, const T* dout,  \
        const Ty<T>::acc* lse, const Ty<T>::acc* delta, T* dq, AttentionParams p) {        \
        attention_dq_impl<T>(q, k, v, mask, bias, dout, lse, delta, dq, p);                \
    }                                                                                      \
    extern "C" __global__ void attention_backward_dkv_##dt(                                \
        const T* q, const T* k, const T* v, const u8* mask, const T* bias, const T* dout,  \
        const Ty<T>::acc* lse, const Ty<T>::acc* delta, T* dk, T* dv, AttentionParams p) { \
        attention_dkv_impl<T>(q, k, v, mask, bias, dout, lse, delta, dk, dv, p);           \
    }
FLINT_FLOATS(ATTENTION, _)
