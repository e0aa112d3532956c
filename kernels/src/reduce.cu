#line 1 "reduce.cu"
// Reductions over one dim of a contiguous tensor viewed as [outer, dim, inner]; the
// output is contiguous [outer, inner] (the reduced dim dropped). A whole-tensor
// reduction is outer = inner = 1.
//
// Launch: one block per output element (grid-stride over outer * inner, so any grid
// size works), blockDim.x a multiple of 32 up to 1024 (256 is a good default).
// Accumulation is in the acc type (f32 for f16/bf16/f32, f64 for f64, i64 for i64).
// The `*_cols` kernels below reduce the same [outer, dim, inner] view when inner is wide
// (a bias gradient: the sum over the rows of [rows, features]), reading along the
// contiguous inner dim so that a warp's loads are coalesced.
// max/min/argmax/argmin propagate NaN (the first NaN wins), ties go to the lowest index;
// they need dim >= 1 (with dim = 0 max gives -inf, min +inf, arg* an index of 2^63-1).

template <typename A> __device__ __forceinline__ A lowest(A) { return -m_inf(A(0)); }
template <> __device__ __forceinline__ i64 lowest(i64) { return (i64)0x8000000000000000ULL; }
template <typename A> __device__ __forceinline__ A highest(A) { return m_inf(A(0)); }
template <> __device__ __forceinline__ i64 highest(i64) { return (i64)0x7fffffffffffffffLL; }

// sum_dim / prod_dim / mean_dim / max_dim / min_dim:
//   (const T* x, T* out, i64 outer, i64 dim, i64 inner)
template <typename T, typename Op>
__device__ __forceinline__ void reduce_dim(const T* x, T* out, i64 outer, i64 dim, i64 inner,
                                           typename Ty<T>::acc init, bool mean) {
    typedef typename Ty<T>::acc A;
    __shared__ A scratch[32];
    FLINT_BLOCK_STRIDE(r, outer * inner) {
        const i64 o = r / inner, in = r - o * inner;
        const T* base = x + o * dim * inner + in;
        A v = init;
        for (i64 d = threadIdx.x; d < dim; d += blockDim.x) {
            v = Op()(v, Ty<T>::load(base[d * inner]));
        }
        v = block_reduce(v, Op(), scratch);
        if (threadIdx.x == 0) {
            out[r] = Ty<T>::store(mean ? v / (A)dim : v);
        }
    }
}

#define REDUCE(dt, T, _)                                                                   \
    extern "C" __global__ void sum_dim_##dt(const T* x, T* out, i64 outer, i64 dim,        \
                                            i64 inner) {                                   \
        reduce_dim<T, SumOp>(x, out, outer, dim, inner, 0, false);                         \
    }                                                                                      \
    extern "C" __global__ void prod_dim_##dt(const T* x, T* out, i64 outer, i64 dim,       \
                                             i64 inner) {                                  \
        reduce_dim<T, ProdOp>(x, out, outer, dim, inner, 1, false);                        \
    }                                                                                      \
    extern "C" __global__ void max_dim_##dt(const T* x, T* out, i64 outer, i64 dim,        \
                                            i64 inner) {                                   \
        typedef Ty<T>::acc A;                                                              \
        reduce_dim<T, MaxOp>(x, out, outer, dim, inner, lowest(A(0)), false);              \
    }                                                                                      \
    extern "C" __global__ void min_dim_##dt(const T* x, T* out, i64 outer, i64 dim,        \
                                            i64 inner) {                                   \
        typedef Ty<T>::acc A;                                                              \
        reduce_dim<T, MinOp>(x, out, outer, dim, inner, highest(A(0)), false);             \
    }
FLINT_NUMS(REDUCE, _)

#define MEAN(dt, T, _)                                                                     \
    extern "C" __global__ void mean_dim_##dt(const T* x, T* out, i64 outer, i64 dim,       \
                                             i64 inner) {                                  \
        reduce_dim<T, SumOp>(x, out, outer, dim, inner, 0, true);                          \
    }
FLINT_FLOATS(MEAN, _)

// Column reductions of [outer, dim, inner] over dim, for wide inner:
//   <kind>_cols_<dt>(const T* x, T* out, i64 outer, i64 dim, i64 inner, i64 chunk, double div)
//   <kind>_cols_part_<dt>(const T* x, A* part, i64 outer, i64 dim, i64 inner, i64 chunk,
//                         double div)
//   <kind>_cols_fin_<dt>(const A* part, T* out, i64 outer, i64 chunks, i64 inner,
//                        i64 chunk, double div)
// kind: sum, prod, max, min. Launch: blockDim.x a multiple of 32 up to 1024 (256 is a good
// default; each warp takes a share of the rows, lane l the column tile*32 + l); blocks
// grid-stride over outer * ceil(inner / 32) column tiles; gridDim.y splits dim into
// chunks of `chunk` rows (gridDim.y = ceil(dim / chunk)). Writes
// out[(o * gridDim.y + c) * inner + i] = reduce over rows [c*chunk, (c+1)*chunk) / div:
// with one chunk, `<kind>_cols` writes the [outer, inner] result directly; with several,
// `_part` writes [outer, chunks, inner] partials in the acc type A, and `_fin` (one chunk
// of `chunks` rows, gridDim.y = 1) reduces them into T. `div` divides the result (the
// count, for a mean; 1 otherwise). The order of the sums is fixed by the launch shape.
template <typename I, typename O, typename Op>
__device__ __forceinline__ void reduce_cols(const I* x, O* out, i64 outer, i64 dim, i64 inner,
                                            i64 chunk, typename Ty<I>::acc init, double div) {
    typedef typename Ty<I>::acc A;
    const auto load = [=](i64 o, i64 d, i64 i) { return Ty<I>::load(x[(o * dim + d) * inner + i]); };
    cols_reduce<A, O, Op>(load, out, outer, dim, inner, chunk, init, div);
}

#define REDUCE_COLS(dt, T, kind, Op, init)                                                 \
    extern "C" __global__ void kind##_cols_##dt(const T* x, T* out, i64 outer, i64 dim,    \
                                                i64 inner, i64 chunk, double div) {        \
        typedef Ty<T>::acc A;                                                              \
        reduce_cols<T, T, Op>(x, out, outer, dim, inner, chunk, init, div);                \
    }                                                                                      \
    extern "C" __global__ void kind##_cols_part_##dt(const T* x, Ty<T>::acc* part,         \
                                                     i64 outer, i64 dim, i64 inner,        \
                                                     i64 chunk, double div) {              \
        typedef Ty<T>::acc A;                                                              \
        reduce_cols<T, A, Op>(x, part, outer, dim, inner, chunk, init, div);               \
    }                                                                                      \
    extern "C" __global__ void kind##_cols_fin_##dt(const Ty<T>::acc* part, T* out,        \
                                                    i64 outer, i64 chunks, i64 inner,      \
                                                    i64 chunk, double div) {               \
        typedef Ty<T>::acc A;                                                              \
        reduce_cols<A, T, Op>(part, out, outer, chunks, inner, chunk, init, div);          \
    }
FLINT_NUMS(REDUCE_COLS, sum, SumOp, A(0))
FLINT_NUMS(REDUCE_COLS, prod, ProdOp, A(1))
FLINT_NUMS(REDUCE_COLS, max, MaxOp, lowest(A(0)))
FLINT_NUMS(REDUCE_COLS, min, MinOp, highest(A(0)))

// argmax_dim / argmin_dim:
//   (const T* x, T* values, i64* indices, i64 outer, i64 dim, i64 inner)
// `values` may be null; otherwise it receives the max/min (torch.max(x, dim)).

/// Is (va, ia) preferred over (vb, ib)? NaN first, then larger (or smaller) values, then
/// lower indices.
template <typename A, bool Max>
__device__ __forceinline__ bool arg_better(A va, i64 ia, A vb, i64 ib) {
    const bool na = va != va, nb = vb != vb;
    if (na || nb) {
        return (na && nb) ? ia < ib : na;
    }
    if (va != vb) {
        return Max ? va > vb : va < vb;
    }
    return ia < ib;
}

template <typename T, bool Max>
__device__ __forceinline__ void arg_reduce_dim(const T* x, T* values, i64* indices, i64 outer,
                                               i64 dim, i64 inner) {
    typedef typename Ty<T>::acc A;
    __shared__ A sv[32];
    __shared__ i64 si[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    FLINT_BLOCK_STRIDE(r, outer * inner) {
        const i64 o = r / inner, in = r - o * inner;
        const T* base = x + o * dim * inner + in;
        A v = Max ? lowest(A(0)) : highest(A(0));
        i64 idx = highest(i64(0));
        for (i64 d = threadIdx.x; d < dim; d += blockDim.x) {
            const A e = Ty<T>::load(base[d * inner]);
            if (arg_better<A, Max>(e, d, v, idx)) {
                v = e;
                idx = d;
            }
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const A ov = __shfl_xor_sync(0xffffffffu, v, off);
            const i64 oi = __shfl_xor_sync(0xffffffffu, idx, off);
            if (arg_better<A, Max>(ov, oi, v, idx)) {
                v = ov;
                idx = oi;
            }
        }
        __syncthreads();
        if (lane == 0) {
            sv[warp] = v;
            si[warp] = idx;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            v = sv[0];
            idx = si[0];
            for (int w = 1; w < warps; ++w) {
                if (arg_better<A, Max>(sv[w], si[w], v, idx)) {
                    v = sv[w];
                    idx = si[w];
                }
            }
            indices[r] = idx;
            if (values != 0) {
                values[r] = Ty<T>::store(v);
            }
        }
    }
}

#define ARG_REDUCE(dt, T, _)                                                               \
    extern "C" __global__ void argmax_dim_##dt(const T* x, T* values, i64* indices,        \
                                               i64 outer, i64 dim, i64 inner) {            \
        arg_reduce_dim<T, true>(x, values, indices, outer, dim, inner);                    \
    }                                                                                      \
    extern "C" __global__ void argmin_dim_##dt(const T* x, T* values, i64* indices,        \
                                               i64 outer, i64 dim, i64 inner) {            \
        arg_reduce_dim<T, false>(x, values, indices, outer, dim, inner);                   \
    }
FLINT_NUMS(ARG_REDUCE, _)
