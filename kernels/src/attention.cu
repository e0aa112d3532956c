#line 1 "attention.cu"
// Fused scaled dot-product attention (flash-attention style): softmax(q kᵀ·scale + bias,
// masked) v without materializing the [Tq, Tk] score matrix, and its backward from the
// saved log-sum-exp. A straightforward tiled version: one warp per query (forward, dq) or
// per key (dk/dv) row, the other operand streamed through shared memory in tiles, online
// softmax in the acc type (f32 for f16/bf16/f32, f64 for f64).
//
// Layout: q [B, H, Tq, D], k [B, H, Tk, D], v [B, H, Tk, Dv], D and Dv <= 128; out/dout
// [B, H, Tq, Dv], dq [B, H, Tq, D], dk [B, H, Tk, D] and dv [B, H, Tk, Dv]. Each of these
// may be strided over (b, h, t) (AttentionParams strides; out and dout share theirs) but
// its last dim is contiguous. lse/delta [B, H, Tq] (acc type) are contiguous.
// Masking, as F.scaled_dot_product_attention: `mask` (bool, may be null) is true where
// query i MAY attend key j; `bias` (T, may be null) is added to the scaled scores; both
// are read at b*s[0] + h*s[1] + i*s[2] + j*s[3] with their strides (0 = broadcast).
// `causal` hides key j from query i when j > i (top-left aligned, as PyTorch's is_causal).
// A query that may attend no key gets NaN output and lse = -inf (as PyTorch), and zero
// gradients. No gradient is computed for `bias`.
// Dropout (p.dropout > 0) drops the attention weights after the softmax, as
// flint_runtime's fused CPU path and the composed ops: score (bh, i, j) is kept when word
// e % 4 of the Philox block of counter p.offset + e / 4 (key p.seed) is below the
// Bernoulli threshold of 1 - p.dropout, with e = (bh * Tq + i) * Tk + j, and a kept
// weight is multiplied by 1 / (1 - p.dropout). lse is that of the weights before
// dropout; with M the dropout factors the backward is dV = (P∘M)ᵀ dO,
// dS = P ∘ ((dO Vᵀ)∘M - delta), delta_i = dO_i · O_i.
//
// Launch (forward, dq): grid (ceil(Tq / W), B*H), block (32*W) with W warps = W query
// rows per block, W <= 32 (W = 8 is a good default); dkv: grid (ceil(Tk / W), B*H).
// Both grid dims are grid-stride loops, so smaller grids (gridDim.y <= 65535) work.
// delta: any grid, blockDim.x a multiple of 32 (one warp per row).

#define ATT_MAX_D 128
#define ATT_PER_LANE 4 // ATT_MAX_D / 32

/// Mirrored by `flint_kernels::AttentionParams` (#[repr(C)], 320 bytes), passed by value.
struct AttentionParams {
    i64 batch, heads, tq, tk, d, dv;
    i64 q_stride[3];    // (b, h, t) element strides of q
    i64 k_stride[3];    // of k
    i64 v_stride[3];    // of v
    i64 o_stride[3];    // of out and dout
    i64 dq_stride[3];   // of dq
    i64 dk_stride[3];   // of dk
    i64 dv_stride[3];   // of dv
    i64 mask_stride[4]; // (b, h, i, j) strides of the bool mask
    i64 bias_stride[4]; // (b, h, i, j) strides of the additive bias
    double scale;       // usually 1/sqrt(D)
    i64 causal;         // nonzero: hide j > i
    u64 seed;           // dropout: Philox key of the reserved Bernoulli draw
    u64 offset;         // dropout: its first counter
    double dropout;     // dropout probability in [0, 1); 0 = none
};
static_assert(sizeof(AttentionParams) == 320, "must match flint_kernels::AttentionParams");

/// The dropout of one call: the keep threshold and the factor of a kept weight (rounded
/// to T, as the CPU's).
template <typename T> struct AttDrop {
    typedef typename Ty<T>::acc A;
    bool on;
    u64 threshold;
    A factor;
    __device__ __forceinline__ AttDrop(const AttentionParams& p) {
        on = p.dropout > 0.0;
        threshold = flint_bernoulli_threshold(1.0 - p.dropout);
        factor = Ty<T>::load(Ty<T>::from_f64(1.0 / (1.0 - p.dropout)));
    }
    /// The factor of score (bh, i, j): 1 without dropout, else `factor` or 0.
    __device__ __forceinline__ A at(const AttentionParams& p, i64 bh, i64 i, i64 j) const {
        if (!on) {
            return A(1);
        }
        const i64 e = (bh * p.tq + i) * p.tk + j;
        return flint_bernoulli_at(p.seed, p.offset, e, threshold) ? factor : A(0);
    }
};

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

/// Element offset of problem (b, h)'s first row in an operand of (b, h, t) strides `s`.
__device__ __forceinline__ i64 att_at(const i64 (&s)[3], i64 b, i64 h) {
    return b * s[0] + h * s[1];
}

/// Problem bh's (b, h) and the first rows of its q, k and v.
template <typename T> struct AttProblem {
    i64 b, h;
    const T *q, *k, *v;
    __device__ __forceinline__ AttProblem(const T* q0, const T* k0, const T* v0,
                                          const AttentionParams& p, i64 bh) {
        b = bh / p.heads;
        h = bh - b * p.heads;
        q = q0 + att_at(p.q_stride, b, h);
        k = k0 + att_at(p.k_stride, b, h);
        v = v0 + att_at(p.v_stride, b, h);
    }
};

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
    const AttDrop<T> drop(p);
    for (i64 bh = blockIdx.y; bh < p.batch * p.heads; bh += gridDim.y) {
        const AttProblem<T> pr(q, k, v, p, bh);
        const i64 b = pr.b, h = pr.h;
        const T *kb = pr.k, *vb = pr.v;
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
                    const A wd = w * drop.at(p, bh, i, k0 + jj); // weight after dropout
#pragma unroll
                    for (int e = 0; e < ATT_PER_LANE; ++e) {
                        const int c = lane + 32 * e;
                        if (c < p.dv) {
                            acc[e] = acc[e] * corr + wd * vs[jj][c];
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
                        out[att_at(p.o_stride, b, h) + i * p.o_stride[2] + c] =
                            Ty<T>::store(acc[e] * inv);
                    }
                }
                if (lane == 0) {
                    lse[row] = m + m_log(l);
                }
            }
        }
    }
}

// attention_backward_delta_<dt>(const T* out, const T* dout, A* delta, AttentionParams p)
//   delta[r] = sum_c dout[r, c] * out[r, c] over rows r = (b, h, i) of B*H*Tq (one warp per
//   row; out and dout at p.o_stride).
template <typename T>
__device__ __forceinline__ void attention_delta_impl(const T* out, const T* dout,
                                                     typename Ty<T>::acc* delta,
                                                     const AttentionParams& p) {
    typedef typename Ty<T>::acc A;
    const int lane = threadIdx.x & 31;
    const i64 warps_total = ((i64)blockDim.x * gridDim.x) >> 5;
    const i64 rows = p.batch * p.heads * p.tq;
    for (i64 r = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps_total) {
        const i64 bh = r / p.tq, i = r - bh * p.tq, b = bh / p.heads, h = bh - b * p.heads;
        const i64 at = att_at(p.o_stride, b, h) + i * p.o_stride[2];
        A s = 0;
        for (i64 c = lane; c < p.dv; c += 32) {
            s += Ty<T>::load(dout[at + c]) * Ty<T>::load(out[at + c]);
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
    const AttDrop<T> drop(p);
    for (i64 bh = blockIdx.y; bh < p.batch * p.heads; bh += gridDim.y) {
        const AttProblem<T> pr(q, k, v, p, bh);
        const i64 b = pr.b, h = pr.h;
        const T *kb = pr.k, *vb = pr.v;
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
                dor[e] = (active && c < p.dv) ? Ty<T>::load(dout[att_at(p.o_stride, b, h) +
                                                                 i * p.o_stride[2] + c])
                                              : A(0);
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
                    dp = warp_reduce(dp, SumOp()) * drop.at(p, bh, i, k0 + jj);
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
                        dq[att_at(p.dq_stride, b, h) + i * p.dq_stride[2] + c] =
                            Ty<T>::store(g[e] * (A)p.scale);
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
    const AttDrop<T> drop(p);
    for (i64 bh = blockIdx.y; bh < p.batch * p.heads; bh += gridDim.y) {
        const AttProblem<T> pr(q, k, v, p, bh);
        const i64 b = pr.b, h = pr.h;
        const T* qb = pr.q;
        const T* dob = dout + att_at(p.o_stride, b, h);
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
                att_load_tile<T, AttTile<A>::rows>(dos, dob, q0, p.tq, p.o_stride[2], p.dv);
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
                    const A f = drop.at(p, bh, q0 + ii, j);
                    dp = warp_reduce(dp, SumOp()) * f;
                    const A pij = m_exp(s - lse_s[ii]);
                    const A ds = pij * (dp - delta_s[ii]);
                    const A pd = pij * f; // the weight after dropout
#pragma unroll
                    for (int e = 0; e < ATT_PER_LANE; ++e) {
                        const int c = lane + 32 * e;
                        if (c < p.d) {
                            gk[e] += ds * qs[ii][c];
                        }
                        if (c < p.dv) {
                            gv[e] += pd * dos[ii][c];
                        }
                    }
                }
            }
            if (active) {
                const i64 ak = att_at(p.dk_stride, b, h) + j * p.dk_stride[2];
                const i64 av = att_at(p.dv_stride, b, h) + j * p.dv_stride[2];
#pragma unroll
                for (int e = 0; e < ATT_PER_LANE; ++e) {
                    const int c = lane + 32 * e;
                    if (c < p.d) {
                        dk[ak + c] = Ty<T>::store(gk[e] * (A)p.scale);
                    }
                    if (c < p.dv) {
                        dv[av + c] = Ty<T>::store(gv[e]);
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
        const T* out, const T* dout, Ty<T>::acc* delta, AttentionParams p) {               \
        attention_delta_impl<T>(out, dout, delta, p);                                      \
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

// ---------------------------------------------------------------------------------------
// Tensor-core attention for f32, f16 and bf16 with head dims D, Dv <= 64: the same
// kernels' arithmetic (online softmax, recomputed P in the backward, the same masks,
// dropout, lse and delta conventions) with the tile products on `mma.sync` instructions
// (AttMma below):
// - f32: m16n8k8 TF32 in three passes (3xTF32: x = hi + lo, each a TF32;
//   A·B ≈ hi·hi + hi·lo + lo·hi), which keeps about f32's accuracy (the dropped lo·lo
//   term is below f32's rounding of the sum);
// - f16, bf16: one m16n8k16 in T with f32 accumulation. The operands are T already, except
//   the probabilities P and score gradients dS, which are rounded to T for their
//   products (as flash attention does); the softmax, its sums and every accumulator
//   stay f32.
//
// A warp owns 16 rows (queries in the forward and dq, keys in dkv) and streams the other
// side through shared memory (as f32) in tiles of ATT_TC_TILE rows. Its score tile S
// (16 x 32) is accumulated in the mma's C layout: with g = lane / 4 and q = lane % 4,
// lane holds s[t][c] = S(g + 8 (c / 2), 8 t + 2 q + c % 2). The product of such a tile
// with a 32-row operand B uses it as the A operand directly: for m16n8k16 two C tiles
// (t = 2u, 2u + 1) are exactly one A fragment; for m16n8k8 the k index is read in the
// order (2q, 2q + 1) for (q, q + 4), and the B fragment then takes rows 8 t + 2 q and
// 8 t + 2 q + 1. Shared rows are padded to ATT_TC_LD floats, which makes the f32
// fragment loads free of bank conflicts.
//
// attention_tc_forward_<dt>: block 128 threads (4 warps, 64 queries), grid
//   (ceil(Tq / 64), B*H); attention_tc_backward_dq_<dt>: block 64 (2 warps, 32 queries),
//   grid (ceil(Tq / 32), B*H); attention_tc_backward_dkv_<dt>: block 64 (32 keys), grid
//   (ceil(Tk / 32), B*H). Grid dims are grid-stride loops. Same signatures as the
//   attention_* kernels; lse and delta are f32. sm_80 or newer.

#define ATT_TC_HD 64
#define ATT_TC_LD (ATT_TC_HD + 4)
#define ATT_TC_TILE 32

#ifdef FLINT_HOST_EMULATION
__device__ __forceinline__ u32 att_tf32(float x) { return flint_emu_tf32(x); }
__device__ __forceinline__ void att_mma(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                        u32 b1) {
    flint_emu_mma_tf32(d, a0, a1, a2, a3, b0, b1);
}
#else
__device__ __forceinline__ u32 att_tf32(float x) {
    u32 r;
#if __CUDA_ARCH__ >= 800
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
#else
    r = __float_as_uint(x) & 0xffffe000u; // never launched below sm_80
#endif
    return r;
}
__device__ __forceinline__ void att_mma(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                        u32 b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}
#endif

/// x as hi + lo, both TF32.
__device__ __forceinline__ void att_split(float x, u32& hi, u32& lo) {
    hi = att_tf32(x);
    lo = att_tf32(x - __uint_as_float(hi));
}

/// d += A·B in 3xTF32 from f32 fragments (a: the A fragment, b: the B fragment).
__device__ __forceinline__ void att_mma3(float (&d)[4], const u32 (&ah)[4], const u32 (&al)[4],
                                         float b0, float b1) {
    u32 bh0, bl0, bh1, bl1;
    att_split(b0, bh0, bl0);
    att_split(b1, bh1, bl1);
    att_mma(d, al[0], al[1], al[2], al[3], bh0, bh1); // the small terms first
    att_mma(d, ah[0], ah[1], ah[2], ah[3], bl0, bl1);
    att_mma(d, ah[0], ah[1], ah[2], ah[3], bh0, bh1);
}

// f16x2 / bf16x2 packing and the half-precision mma (two elements per 32-bit register,
// the lower index in the low half).

/// lo and hi rounded to H and packed, in C (the emulation's, and the fallback below sm_80,
/// where the kernels are never launched).
template <typename H> __device__ __forceinline__ u32 att_pack_c(float lo, float hi) {
    return (u32)Ty<H>::store(lo).bits | ((u32)Ty<H>::store(hi).bits << 16);
}
#ifdef FLINT_HOST_EMULATION
template <typename H> __device__ __forceinline__ u32 att_pack(H, float lo, float hi) {
    return att_pack_c<H>(lo, hi);
}
template <typename H>
__device__ __forceinline__ void att_mma16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    flint_emu_mma_k16(d, a[0], a[1], a[2], a[3], b0, b1, [](u16 bits) {
        H h;
        h.bits = bits;
        return Ty<H>::load(h);
    });
}
#else
template <typename H> struct AttMma16Op;
#if __CUDA_ARCH__ >= 800
#define ATT_IF_SM80(yes, no) yes
#else
#define ATT_IF_SM80(yes, no) no
#endif
// `cvt.rn.<ty>x2.f32` and `mma.sync.aligned.m16n8k16.row.col.f32.<ty>.<ty>.f32` for the
// 16-bit type H of PTX name `ty`.
#define ATT_HALF_OPS(H, ty)                                                                \
    __device__ __forceinline__ u32 att_pack(H, float lo, float hi) {                       \
        u32 r;                                                                             \
        ATT_IF_SM80(asm("cvt.rn." ty "x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)),    \
                    r = att_pack_c<H>(lo, hi));                                            \
        return r;                                                                          \
    }                                                                                      \
    template <> struct AttMma16Op<H> {                                                     \
        static __device__ __forceinline__ void run(float (&d)[4], const u32 (&a)[4],       \
                                                   u32 b0, u32 b1) {                       \
            ATT_IF_SM80(asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." ty "." ty    \
                                     ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "   \
                                     "{%0, %1, %2, %3};"                                   \
                                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])      \
                                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]),         \
                                       "r"(b0), "r"(b1)),                                  \
                        (void)d);                                                          \
        }                                                                                  \
    };
ATT_HALF_OPS(f16_t, "f16")
ATT_HALF_OPS(bf16_t, "bf16")
template <typename H>
__device__ __forceinline__ void att_mma16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    AttMma16Op<H>::run(d, a, b0, b1);
}
#endif

// The tile products' instruction by element type T, on f32 tiles in shared memory (row
// length ATT_TC_LD) and C-layout tiles in registers, with g = lane / 4, q = lane % 4:
// - K: the k extent of one instruction;
// - a_rows(a, k0): the A fragment of A(r, k) = a[r][k0 + k] (16 rows at a);
// - a_tile(p, kk): the A fragment of k-step kk of a 16 x 32 C-layout tile p
//   (A(r, k) = P(r, K kk + k), in the k order b_cols follows);
// - b_rows(b, n0, k0): the B fragment of B(k, n) = b[n0 + n][k0 + k] (for A Bᵀ);
// - b_cols(b, k0, n0): the B fragment of B(k, n) = b[k0 + k][n0 + n] (for P B);
// - mma(d, a, b): d += A B.
template <typename T> struct AttMma;

/// f32: 3xTF32 on m16n8k8 (k read as (2q, 2q + 1) for (q, q + 4) in a_tile and b_cols).
template <> struct AttMma<float> {
    static const int K = 8;
    struct A {
        u32 hi[4], lo[4];
    };
    struct B {
        float b0, b1;
    };
    static __device__ __forceinline__ A a_rows(const float* a, int k0) {
        const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
        A f;
        att_split(a[g * ATT_TC_LD + k0 + q], f.hi[0], f.lo[0]);
        att_split(a[(g + 8) * ATT_TC_LD + k0 + q], f.hi[1], f.lo[1]);
        att_split(a[g * ATT_TC_LD + k0 + q + 4], f.hi[2], f.lo[2]);
        att_split(a[(g + 8) * ATT_TC_LD + k0 + q + 4], f.hi[3], f.lo[3]);
        return f;
    }
    static __device__ __forceinline__ A a_tile(const float (&p)[4][4], int kk) {
        A f; // k index q <- column 2q, q + 4 <- column 2q + 1
        att_split(p[kk][0], f.hi[0], f.lo[0]);
        att_split(p[kk][2], f.hi[1], f.lo[1]);
        att_split(p[kk][1], f.hi[2], f.lo[2]);
        att_split(p[kk][3], f.hi[3], f.lo[3]);
        return f;
    }
    static __device__ __forceinline__ B b_rows(const float* b, int n0, int k0) {
        const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
        const float* r = b + (n0 + g) * ATT_TC_LD + k0 + q;
        return B{r[0], r[4]};
    }
    static __device__ __forceinline__ B b_cols(const float* b, int k0, int n0) {
        const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
        const float* c = b + (k0 + 2 * q) * ATT_TC_LD + n0 + g;
        return B{c[0], c[ATT_TC_LD]};
    }
    static __device__ __forceinline__ void mma(float (&d)[4], const A& a, const B& b) {
        att_mma3(d, a.hi, a.lo, b.b0, b.b1);
    }
};

/// f16 and bf16: m16n8k16 with f32 accumulation, operands rounded to H (exact for
/// tiles loaded from H).
template <typename H> struct AttMmaHalf {
    static const int K = 16;
    struct A {
        u32 r[4];
    };
    struct B {
        u32 b0, b1;
    };
    static __device__ __forceinline__ u32 pack(float lo, float hi) { return att_pack(H(), lo, hi); }
    static __device__ __forceinline__ A a_rows(const float* a, int k0) {
        const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
        const float* r0 = a + g * ATT_TC_LD + k0 + 2 * q;
        const float* r1 = r0 + 8 * ATT_TC_LD;
        return A{{pack(r0[0], r0[1]), pack(r1[0], r1[1]), pack(r0[8], r0[9]), pack(r1[8], r1[9])}};
    }
    static __device__ __forceinline__ A a_tile(const float (&p)[4][4], int kk) {
        const float(&x)[4] = p[2 * kk];
        const float(&y)[4] = p[2 * kk + 1];
        return A{{pack(x[0], x[1]), pack(x[2], x[3]), pack(y[0], y[1]), pack(y[2], y[3])}};
    }
    static __device__ __forceinline__ B b_rows(const float* b, int n0, int k0) {
        const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
        const float* r = b + (n0 + g) * ATT_TC_LD + k0 + 2 * q;
        return B{pack(r[0], r[1]), pack(r[8], r[9])};
    }
    static __device__ __forceinline__ B b_cols(const float* b, int k0, int n0) {
        const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
        const float* c = b + (k0 + 2 * q) * ATT_TC_LD + n0 + g;
        return B{pack(c[0], c[ATT_TC_LD]), pack(c[8 * ATT_TC_LD], c[9 * ATT_TC_LD])};
    }
    static __device__ __forceinline__ void mma(float (&d)[4], const A& a, const B& b) {
        att_mma16<H>(d, a.r, b.b0, b.b1);
    }
};
template <> struct AttMma<f16_t> : AttMmaHalf<f16_t> {};
template <> struct AttMma<bf16_t> : AttMmaHalf<bf16_t> {};

/// k-steps of T's instruction that cover `width` columns.
template <typename T> __device__ __forceinline__ int att_ksteps(i64 width) {
    return (int)((width + AttMma<T>::K - 1) / AttMma<T>::K);
}

/// The 8-column n-tiles (every form's n) that cover `width` columns.
__device__ __forceinline__ int att_ntiles(i64 width) { return (int)((width + 7) / 8); }

/// acc[n] += A Bᵀ over `ksteps` k-steps of T's instruction: A = 16 rows at `a`, B = 8 NT
/// rows at `b`, both row-major in shared memory with row length ATT_TC_LD (zero past
/// the real width).
template <typename T, int NT>
__device__ __forceinline__ void att_mma_abt(float (&acc)[NT][4], const float* a, const float* b,
                                            int ksteps) {
    typedef AttMma<T> M;
#pragma unroll
    for (int ks = 0; ks < ATT_TC_HD / M::K; ++ks) {
        if (ks >= ksteps) {
            break;
        }
        const typename M::A af = M::a_rows(a, M::K * ks);
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            M::mma(acc[n], af, M::b_rows(b, 8 * n, M::K * ks));
        }
    }
}

/// Sets a tile of C fragments to zero.
template <int N> __device__ __forceinline__ void att_zero(float (&x)[N][4]) {
#pragma unroll
    for (int n = 0; n < N; ++n) {
        x[n][0] = x[n][1] = x[n][2] = x[n][3] = 0.0f;
    }
}

/// The two raw products of a backward tile: s = A1 B1ᵀ (over k1 steps) and
/// dp = A2 B2ᵀ (over k2), each 16 x 32, from zero.
template <typename T>
__device__ __forceinline__ void att_tc_backward_products(float (&s)[4][4], float (&dp)[4][4],
                                                         const float* a1, const float* b1,
                                                         int k1, const float* a2,
                                                         const float* b2, int k2) {
    att_zero(s);
    att_zero(dp);
    att_mma_abt<T, 4>(s, a1, b1, k1);
    att_mma_abt<T, 4>(dp, a2, b2, k2);
}

/// acc[n] += P B for n < ntiles: P (16 x 32) in the C layout (p[t][c], see above), B the
/// 32 rows at `b` (row-major, row length ATT_TC_LD).
template <typename T>
__device__ __forceinline__ void att_mma_pb(float (&acc)[8][4], const float (&p)[4][4],
                                           const float* b, int ntiles) {
    typedef AttMma<T> M;
#pragma unroll
    for (int kk = 0; kk < ATT_TC_TILE / M::K; ++kk) {
        const typename M::A af = M::a_tile(p, kk);
#pragma unroll
        for (int n = 0; n < 8; ++n) {
            if (n < ntiles) {
                M::mma(acc[n], af, M::b_cols(b, M::K * kk, 8 * n));
            }
        }
    }
}

/// Loads rows r0 .. r0 + R - 1 (row r at src + r * stride) of `width` <= ATT_TC_HD
/// elements into a shared tile, zero past `limit` rows and past `width` columns. All
/// threads of the block call it.
template <typename T, int R>
__device__ __forceinline__ void att_tc_load(float (*tile)[ATT_TC_LD], const T* src, i64 r0,
                                            i64 limit, i64 stride, i64 width) {
    for (int e = threadIdx.x; e < R * ATT_TC_HD; e += blockDim.x) {
        const int r = e / ATT_TC_HD, c = e - r * ATT_TC_HD;
        tile[r][c] = (r0 + r < limit && c < width) ? Ty<T>::load(src[(r0 + r) * stride + c]) : 0.0f;
    }
}

/// The scaled, masked score of (i, j) from the raw product, -inf where hidden (causal,
/// mask, or past the real rows).
template <typename T>
__device__ __forceinline__ float att_tc_score(float dot, i64 b, i64 h, i64 i, i64 j, const u8* mask,
                                              const T* bias, const AttentionParams& p) {
    if (i >= p.tq || j >= p.tk) {
        return -FLINT_INF;
    }
    return att_score<T>(dot, b, h, i, j, mask, bias, p);
}

/// One of four words by a lane-dependent index, without a local-memory array.
__device__ __forceinline__ u32 att_word(const flint_u32x4& r, int w) {
    return w == 0 ? r.v[0] : w == 1 ? r.v[1] : w == 2 ? r.v[2] : r.v[3];
}

/// The dropout keep flags of a score tile in the C layout of the forward and dq kernels,
/// bit 4 t + c for entry (t, c), which is score (bh, i, j), i = r0 + g + 8 (c / 2), j = k0 + 8 t + 2 q
/// + c % 2. When Tk % 4 == 0 a Philox block holds the words of four consecutive keys of
/// one query, which two lanes (q = 2u, 2u + 1) share: each lane draws the block of one
/// of its two rows and they swap the half the other needs (4 blocks per lane and tile
/// instead of 16). Otherwise each entry draws its own.
template <typename T>
__device__ __forceinline__ u32 att_tc_drop_rows(const AttentionParams& p, const AttDrop<T>& drop,
                                                i64 bh, i64 r0, i64 k0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    u32 keep = 0;
    if (p.tk % 4 == 0) {
        const int u = q >> 1, odd = q & 1;
        const i64 i = r0 + g + 8 * odd;
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            const i64 e0 = (bh * p.tq + i) * p.tk + k0 + 8 * t + 4 * u; // a multiple of 4
            const flint_u32x4 r = flint_philox_block(p.seed, p.offset + (u64)e0 / 4);
            const u32 x0 = __shfl_xor_sync(0xffffffffu, odd ? r.v[0] : r.v[2], 1);
            const u32 x1 = __shfl_xor_sync(0xffffffffu, odd ? r.v[1] : r.v[3], 1);
            const u32 w[4] = {odd ? x0 : r.v[0], odd ? x1 : r.v[1], odd ? r.v[2] : x0,
                              odd ? r.v[3] : x1};
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                keep |= ((u64)w[c] < drop.threshold ? 1u : 0u) << (4 * t + c);
            }
        }
        return keep;
    }
#pragma unroll
    for (int t = 0; t < 4; ++t) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const float f = drop.at(p, bh, r0 + g + 8 * (c >> 1), k0 + 8 * t + 2 * q + (c & 1));
            keep |= (f != 0.0f ? 1u : 0u) << (4 * t + c);
        }
    }
    return keep;
}

/// The dropout keep flags of a transposed tile (the dkv kernel's): entry (t, c) is score
/// (bh, i, j), j = r0 + g + 8 (c / 2), i = q0 + 8 t + 2 q + c % 2. When Tk % 4 == 0 the
/// four lanes g = 4a .. 4a + 3 (same q) hold four consecutive keys of each query: for
/// each t, lane b = g % 4 draws the block of entry c = b and the four lanes exchange
/// words in four rotations (lane b reads word b of lane (b + r) % 4's block).
template <typename T>
__device__ __forceinline__ u32 att_tc_drop_cols(const AttentionParams& p, const AttDrop<T>& drop,
                                                i64 bh, i64 r0, i64 q0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    u32 keep = 0;
    if (p.tk % 4 == 0) {
        const int a = g >> 2, b = g & 3;
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            const i64 i = q0 + 8 * t + 2 * q + (b & 1);
            const i64 kb = r0 + 4 * a + 8 * (b >> 1); // a multiple of 4
            const flint_u32x4 r = flint_philox_block(p.seed, p.offset + (u64)((bh * p.tq + i) * p.tk + kb) / 4);
            u32 x[4]; // x[r]: word b of the block of entry c = (b + r) % 4
#pragma unroll
            for (int rot = 0; rot < 4; ++rot) {
                const int src = (b + rot) & 3;
                x[rot] = __shfl_sync(0xffffffffu, att_word(r, (b - rot) & 3), lane + 4 * (src - b));
            }
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int rot = (c - b) & 3;
                const u32 w = rot == 0 ? x[0] : rot == 1 ? x[1] : rot == 2 ? x[2] : x[3];
                keep |= ((u64)w < drop.threshold ? 1u : 0u) << (4 * t + c);
            }
        }
        return keep;
    }
#pragma unroll
    for (int t = 0; t < 4; ++t) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const float f = drop.at(p, bh, q0 + 8 * t + 2 * q + (c & 1), r0 + g + 8 * (c >> 1));
            keep |= (f != 0.0f ? 1u : 0u) << (4 * t + c);
        }
    }
    return keep;
}

template <typename T>
__device__ __forceinline__ void att_tc_forward(const T* q, const T* k, const T* v, const u8* mask,
                                               const T* bias, T* out, float* lse,
                                               const AttentionParams& p) {
    __shared__ float qs[4 * 16][ATT_TC_LD];
    __shared__ float ks[ATT_TC_TILE][ATT_TC_LD];
    __shared__ float vs[ATT_TC_TILE][ATT_TC_LD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, qq = lane & 3;
    // k-steps over D (the score product), 8-column tiles of Dv (the output)
    const int kd = att_ksteps<T>(p.d), nv = att_ntiles(p.dv);
    const AttDrop<T> drop(p);
    const i64 tiles = (p.tq + 63) / 64;
    for (i64 bh = blockIdx.y; bh < p.batch * p.heads; bh += gridDim.y) {
        const AttProblem<T> pr(q, k, v, p, bh);
        const i64 b = pr.b, h = pr.h;
        const T *qb = pr.q, *kb = pr.k, *vb = pr.v;
        for (i64 qt = blockIdx.x; qt < tiles; qt += gridDim.x) {
            const i64 i0 = qt * 64, r0 = i0 + 16 * warp;
            __syncthreads(); // the previous tile's rows are consumed
            att_tc_load<T, 64>(qs, qb, i0, p.tq, p.q_stride[2], p.d);
            float o[8][4], m[2] = {-FLINT_INF, -FLINT_INF}, l[2] = {0.0f, 0.0f};
            att_zero(o);
            i64 kend = p.tk;
            if (p.causal != 0 && i0 + 64 < kend) {
                kend = i0 + 64; // no key after the block's last query
            }
            for (i64 k0 = 0; k0 < kend; k0 += ATT_TC_TILE) {
                __syncthreads();
                att_tc_load<T, ATT_TC_TILE>(ks, kb, k0, p.tk, p.k_stride[2], p.d);
                att_tc_load<T, ATT_TC_TILE>(vs, vb, k0, p.tk, p.v_stride[2], p.dv);
                __syncthreads();
                if ((p.causal != 0 && k0 > r0 + 15) || r0 >= p.tq) {
                    continue; // every key of the tile is hidden from the warp's rows
                }
                float s[4][4];
                att_zero(s);
                att_mma_abt<T, 4>(s, &qs[16 * warp][0], &ks[0][0], kd);
                float mx[2] = {-FLINT_INF, -FLINT_INF};
#pragma unroll
                for (int t = 0; t < 4; ++t) {
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        const i64 i = r0 + g + 8 * (c >> 1), j = k0 + 8 * t + 2 * qq + (c & 1);
                        s[t][c] = att_tc_score<T>(s[t][c], b, h, i, j, mask, bias, p);
                        mx[c >> 1] = nan_max(mx[c >> 1], s[t][c]);
                    }
                }
                float corr[2], base[2];
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    mx[r] = nan_max(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                    mx[r] = nan_max(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                    const float m_new = nan_max(m[r], mx[r]);
                    base[r] = m_new == -FLINT_INF ? 0.0f : m_new; // nothing seen yet
                    corr[r] = m_exp(m[r] - base[r]);
                    m[r] = m_new;
                    l[r] *= corr[r];
                }
                const u32 keep = drop.on ? att_tc_drop_rows<T>(p, drop, bh, r0, k0) : 0u;
#pragma unroll
                for (int t = 0; t < 4; ++t) {
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        const float w = m_exp(s[t][c] - base[c >> 1]);
                        l[c >> 1] += w;
                        if (drop.on) { // the weight after dropout
                            s[t][c] = ((keep >> (4 * t + c)) & 1u) != 0 ? w * drop.factor : 0.0f;
                        } else {
                            s[t][c] = w;
                        }
                    }
                }
#pragma unroll
                for (int n = 0; n < 8; ++n) {
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        o[n][c] *= corr[c >> 1];
                    }
                }
                att_mma_pb<T>(o, s, &vs[0][0], nv);
            }
            // the row sums: each lane has summed its own columns
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
                l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const i64 i = r0 + g + 8 * r;
                if (i >= p.tq) {
                    continue;
                }
                const i64 row = bh * p.tq + i;
                const float inv = 1.0f / l[r]; // l = 0 (nothing attended): NaN output
                // b and h recomputed, not kept live to here: unbounded, f32 took 178
                // registers with them kept, 171 with this
                T* orow = out + att_at(p.o_stride, bh / p.heads, bh % p.heads) +
                          i * p.o_stride[2];
#pragma unroll
                for (int n = 0; n < 8; ++n) {
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        const i64 col = 8 * n + 2 * qq + c;
                        if (col < p.dv) {
                            orow[col] = Ty<T>::store(o[n][2 * r + c] * inv);
                        }
                    }
                }
                if (qq == 0) {
                    lse[row] = m[r] + m_log(l[r]);
                }
            }
        }
    }
}

/// The probabilities (after the masks) and the score gradients of one 16 x 32 tile in
/// the C layout, from its raw products `s` (q·k) and `dp` (dO·v) and the dropout keep
/// flags `keep` (bit 4 t + c; M = keep ? factor : 0): on return `s` holds P∘M and `dp`
/// dS = P ∘ (dP∘M - delta). Row and column (i, j) of entry (t, c) come from `at`;
/// `lse_of` and `delta_of` give a query's lse and delta.
template <typename T, typename At, typename LseOf, typename DeltaOf>
__device__ __forceinline__ void att_tc_grad_tile(float (&s)[4][4], float (&dp)[4][4], i64 b,
                                                 i64 h, const u8* mask, const T* bias,
                                                 const AttentionParams& p, const AttDrop<T>& drop,
                                                 u32 keep, At at, LseOf lse_of,
                                                 DeltaOf delta_of) {
#pragma unroll
    for (int t = 0; t < 4; ++t) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            i64 i, j;
            at(t, c, i, j);
            const float sc = att_tc_score<T>(s[t][c], b, h, i, j, mask, bias, p);
            const float pij = sc == -FLINT_INF ? 0.0f : m_exp(sc - lse_of(t, c));
            const float f =
                drop.on ? (((keep >> (4 * t + c)) & 1u) != 0 ? drop.factor : 0.0f) : 1.0f;
            // (a fully masked query has delta = NaN from its NaN output: no gradient)
            dp[t][c] = pij == 0.0f ? 0.0f : pij * (dp[t][c] * f - delta_of(t, c));
            s[t][c] = pij * f;
        }
    }
}

template <typename T>
__device__ __forceinline__ void att_tc_dq(const T* q, const T* k, const T* v, const u8* mask,
                                          const T* bias, const T* dout, const float* lse,
                                          const float* delta, T* dq, const AttentionParams& p) {
    __shared__ float qs[32][ATT_TC_LD];
    __shared__ float dos[32][ATT_TC_LD];
    __shared__ float ks[ATT_TC_TILE][ATT_TC_LD];
    __shared__ float vs[ATT_TC_TILE][ATT_TC_LD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, qq = lane & 3;
    // k-steps over D and Dv (the two score products), 8-column tiles of D (dq)
    const int kd = att_ksteps<T>(p.d), kv = att_ksteps<T>(p.dv), nd = att_ntiles(p.d);
    const AttDrop<T> drop(p);
    const i64 tiles = (p.tq + 31) / 32;
    for (i64 bh = blockIdx.y; bh < p.batch * p.heads; bh += gridDim.y) {
        const AttProblem<T> pr(q, k, v, p, bh);
        const i64 b = pr.b, h = pr.h;
        const T *qb = pr.q, *kb = pr.k, *vb = pr.v;
        for (i64 qt = blockIdx.x; qt < tiles; qt += gridDim.x) {
            const i64 i0 = qt * 32, r0 = i0 + 16 * warp;
            __syncthreads();
            att_tc_load<T, 32>(qs, qb, i0, p.tq, p.q_stride[2], p.d);
            att_tc_load<T, 32>(dos, dout + att_at(p.o_stride, b, h), i0, p.tq, p.o_stride[2],
                               p.dv);
            float lse_r[2], delta_r[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const i64 i = r0 + g + 8 * r;
                lse_r[r] = i < p.tq ? lse[bh * p.tq + i] : 0.0f;
                delta_r[r] = i < p.tq ? delta[bh * p.tq + i] : 0.0f;
            }
            float acc[8][4];
            att_zero(acc);
            i64 kend = p.tk;
            if (p.causal != 0 && i0 + 32 < kend) {
                kend = i0 + 32;
            }
            for (i64 k0 = 0; k0 < kend; k0 += ATT_TC_TILE) {
                __syncthreads();
                att_tc_load<T, ATT_TC_TILE>(ks, kb, k0, p.tk, p.k_stride[2], p.d);
                att_tc_load<T, ATT_TC_TILE>(vs, vb, k0, p.tk, p.v_stride[2], p.dv);
                __syncthreads();
                if ((p.causal != 0 && k0 > r0 + 15) || r0 >= p.tq) {
                    continue;
                }
                float s[4][4], dp[4][4];
                att_tc_backward_products<T>(s, dp, &qs[16 * warp][0], &ks[0][0], kd,
                                         &dos[16 * warp][0], &vs[0][0], kv);
                const u32 keep = drop.on ? att_tc_drop_rows<T>(p, drop, bh, r0, k0) : 0u;
                att_tc_grad_tile<T>(
                    s, dp, b, h, mask, bias, p, drop, keep,
                    [&](int t, int c, i64& i, i64& j) {
                        i = r0 + g + 8 * (c >> 1);
                        j = k0 + 8 * t + 2 * qq + (c & 1);
                    },
                    [&](int, int c) { return lse_r[c >> 1]; },
                    [&](int, int c) { return delta_r[c >> 1]; });
                att_mma_pb<T>(acc, dp, &ks[0][0], nd); // dQ += dS K
            }
            const float sc = (float)p.scale;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const i64 i = r0 + g + 8 * r;
                if (i >= p.tq) {
                    continue;
                }
#pragma unroll
                for (int n = 0; n < 8; ++n) {
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        const i64 col = 8 * n + 2 * qq + c;
                        if (col < p.d) {
                            dq[att_at(p.dq_stride, b, h) + i * p.dq_stride[2] + col] =
                                Ty<T>::store(acc[n][2 * r + c] * sc);
                        }
                    }
                }
            }
        }
    }
}

template <typename T>
__device__ __forceinline__ void att_tc_dkv(const T* q, const T* k, const T* v, const u8* mask,
                                           const T* bias, const T* dout, const float* lse,
                                           const float* delta, T* dk, T* dv,
                                           const AttentionParams& p) {
    __shared__ float kso[32][ATT_TC_LD];
    __shared__ float vso[32][ATT_TC_LD];
    __shared__ float qs[ATT_TC_TILE][ATT_TC_LD];
    __shared__ float dos[ATT_TC_TILE][ATT_TC_LD];
    __shared__ float lse_s[ATT_TC_TILE];
    __shared__ float delta_s[ATT_TC_TILE];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, qq = lane & 3;
    // k-steps over D and Dv (the two score products), 8-column tiles of D and Dv (dk, dv)
    const int kd = att_ksteps<T>(p.d), kv = att_ksteps<T>(p.dv);
    const int nd = att_ntiles(p.d), nv = att_ntiles(p.dv);
    const AttDrop<T> drop(p);
    const i64 tiles = (p.tk + 31) / 32;
    for (i64 bh = blockIdx.y; bh < p.batch * p.heads; bh += gridDim.y) {
        const AttProblem<T> pr(q, k, v, p, bh);
        const i64 b = pr.b, h = pr.h;
        const T *qb = pr.q, *kb = pr.k, *vb = pr.v;
        const T* dob = dout + att_at(p.o_stride, b, h);
        for (i64 kt = blockIdx.x; kt < tiles; kt += gridDim.x) {
            const i64 j0 = kt * 32, r0 = j0 + 16 * warp;
            __syncthreads();
            att_tc_load<T, 32>(kso, kb, j0, p.tk, p.k_stride[2], p.d);
            att_tc_load<T, 32>(vso, vb, j0, p.tk, p.v_stride[2], p.dv);
            float gk[8][4], gv[8][4];
            att_zero(gk);
            att_zero(gv);
            // causal: queries before the block's first key see none of its keys
            const i64 qstart = p.causal != 0 ? (j0 / ATT_TC_TILE) * ATT_TC_TILE : 0;
            for (i64 q0 = qstart; q0 < p.tq; q0 += ATT_TC_TILE) {
                __syncthreads();
                att_tc_load<T, ATT_TC_TILE>(qs, qb, q0, p.tq, p.q_stride[2], p.d);
                att_tc_load<T, ATT_TC_TILE>(dos, dob, q0, p.tq, p.o_stride[2], p.dv);
                for (int r = threadIdx.x; r < ATT_TC_TILE; r += blockDim.x) {
                    const bool in = q0 + r < p.tq;
                    lse_s[r] = in ? lse[bh * p.tq + q0 + r] : 0.0f;
                    delta_s[r] = in ? delta[bh * p.tq + q0 + r] : 0.0f;
                }
                __syncthreads();
                if ((p.causal != 0 && q0 + ATT_TC_TILE - 1 < r0) || r0 >= p.tk) {
                    continue; // every query of the tile comes before the warp's keys
                }
                // transposed tiles: row = key, column = query
                float st[4][4], dpt[4][4];
                att_tc_backward_products<T>(st, dpt, &kso[16 * warp][0], &qs[0][0], kd,
                                         &vso[16 * warp][0], &dos[0][0], kv);
                const u32 keep = drop.on ? att_tc_drop_cols<T>(p, drop, bh, r0, q0) : 0u;
                att_tc_grad_tile<T>(
                    st, dpt, b, h, mask, bias, p, drop, keep,
                    [&](int t, int c, i64& i, i64& j) {
                        j = r0 + g + 8 * (c >> 1);
                        i = q0 + 8 * t + 2 * qq + (c & 1);
                    },
                    [&](int t, int c) { return lse_s[8 * t + 2 * qq + (c & 1)]; },
                    [&](int t, int c) { return delta_s[8 * t + 2 * qq + (c & 1)]; });
                att_mma_pb<T>(gv, st, &dos[0][0], nv); // dV += (P∘M)ᵀ dO
                att_mma_pb<T>(gk, dpt, &qs[0][0], nd); // dK += dSᵀ Q
            }
            const float sc = (float)p.scale;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const i64 j = r0 + g + 8 * r;
                if (j >= p.tk) {
                    continue;
                }
                const i64 ak = att_at(p.dk_stride, b, h) + j * p.dk_stride[2];
                const i64 av = att_at(p.dv_stride, b, h) + j * p.dv_stride[2];
#pragma unroll
                for (int n = 0; n < 8; ++n) {
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        const i64 col = 8 * n + 2 * qq + c;
                        if (col < p.d) {
                            dk[ak + col] = Ty<T>::store(gk[n][2 * r + c] * sc);
                        }
                        if (col < p.dv) {
                            dv[av + col] = Ty<T>::store(gv[n][2 * r + c]);
                        }
                    }
                }
            }
        }
    }
}

// The forwards' launch bounds (3 blocks of 128 threads per SM): without them f32 takes
// 171 registers and f16/bf16 172 (2 blocks per SM); with them all take 168 and spill nothing.
#define ATTENTION_TC(dt, T)                                                                \
    extern "C" __global__ void __launch_bounds__(128, 3) attention_tc_forward_##dt(        \
        const T* q, const T* k, const T* v, const u8* mask, const T* bias, T* out,         \
        float* lse, AttentionParams p) {                                                   \
        att_tc_forward<T>(q, k, v, mask, bias, out, lse, p);                                \
    }                                                                                      \
    extern "C" __global__ void __launch_bounds__(64, 6) attention_tc_backward_dq_##dt(      \
        const T* q, const T* k, const T* v, const u8* mask, const T* bias, const T* dout,  \
        const float* lse, const float* delta, T* dq, AttentionParams p) {                  \
        att_tc_dq<T>(q, k, v, mask, bias, dout, lse, delta, dq, p);                         \
    }                                                                                      \
    extern "C" __global__ void __launch_bounds__(64, 6) attention_tc_backward_dkv_##dt(     \
        const T* q, const T* k, const T* v, const u8* mask, const T* bias, const T* dout,  \
        const float* lse, const float* delta, T* dk, T* dv, AttentionParams p) {           \
        att_tc_dkv<T>(q, k, v, mask, bias, dout, lse, delta, dk, dv, p);                    \
    }
ATTENTION_TC(f32, float)
ATTENTION_TC(f16, f16_t)
ATTENTION_TC(bf16, bf16_t)
