#line 1 "unary.cu"
// Unary elementwise kernels over a strided input; the output is contiguous with `n`
// elements in row-major order of the input's shape. Any grid and block size works.

// ---------------------------------------------------------------------------------------
// <op>_<dt>(const T* x, Layout lx, T* out, i64 n), computed in the acc type. Floats only,
// except neg, abs, square, sign and relu, which also take i64.

#define UNARY_FN(Name, expr)                                                               \
    struct Name {                                                                          \
        template <typename A> __device__ __forceinline__ A operator()(A x) const {         \
            return (expr);                                                                 \
        }                                                                                  \
    };
UNARY_FN(ExpF, m_exp(x))
UNARY_FN(LogF, m_log(x))
UNARY_FN(SqrtF, m_sqrt(x))
UNARY_FN(RsqrtF, m_rsqrt(x))
UNARY_FN(TanhF, m_tanh(x))
UNARY_FN(SigmoidF, A(1) / (A(1) + m_exp(-x)))
UNARY_FN(SiluF, x / (A(1) + m_exp(-x)))
UNARY_FN(SinF, m_sin(x))
UNARY_FN(CosF, m_cos(x))
UNARY_FN(RecipF, A(1) / x)
UNARY_FN(FloorF, m_floor(x))
UNARY_FN(CeilF, m_ceil(x))
UNARY_FN(RoundF, m_rint(x)) // half to even, as torch.round
UNARY_FN(NegF, -x)
UNARY_FN(AbsF, m_abs(x))
UNARY_FN(SquareF, x * x)
UNARY_FN(SignF, (x > A(0)) ? A(1) : ((x < A(0)) ? A(-1) : x)) // keeps ±0 and NaN
UNARY_FN(ReluF, (x > A(0) || x != x) ? x : A(0))               // NaN propagates
UNARY_FN(ErfF, m_erf(x))
// x·Φ(x) with the exact normal CDF (torch's default gelu)
UNARY_FN(GeluF, A(0.5) * x * (A(1) + m_erf(x * A(0.70710678118654752440))))
// the tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
UNARY_FN(GeluTanhF,
         A(0.5) * x * (A(1) + m_tanh(A(0.79788456080286535588) * (x + A(0.044715) * x * x * x))))

template <typename T, typename Op>
__device__ __forceinline__ void unary_kernel(const T* x, const Layout& lx, T* out, i64 n) {
    for_runs(lx, n, packs(x, lx) && packs_out(out), [&](auto r) {
        constexpr int V = decltype(r)::V;
        T xv[V];
        r.load(xv, x, lx);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            xv[j] = Ty<T>::store(Op()(Ty<T>::load(xv[j])));
        }
        r.store(out, xv);
    });
}

#define UNARY(dt, T, op, Op)                                                               \
    extern "C" __global__ void op##_##dt(const T* x, Layout lx, T* out, i64 n) {           \
        unary_kernel<T, Op>(x, lx, out, n);                                                \
    }
FLINT_FLOATS(UNARY, exp, ExpF)
FLINT_FLOATS(UNARY, log, LogF)
FLINT_FLOATS(UNARY, sqrt, SqrtF)
FLINT_FLOATS(UNARY, rsqrt, RsqrtF)
FLINT_FLOATS(UNARY, tanh, TanhF)
FLINT_FLOATS(UNARY, sigmoid, SigmoidF)
FLINT_FLOATS(UNARY, silu, SiluF)
FLINT_FLOATS(UNARY, sin, SinF)
FLINT_FLOATS(UNARY, cos, CosF)
FLINT_FLOATS(UNARY, reciprocal, RecipF)
FLINT_FLOATS(UNARY, floor, FloorF)
FLINT_FLOATS(UNARY, ceil, CeilF)
FLINT_FLOATS(UNARY, round, RoundF)
FLINT_NUMS(UNARY, neg, NegF)
FLINT_NUMS(UNARY, abs, AbsF)
FLINT_NUMS(UNARY, square, SquareF)
FLINT_NUMS(UNARY, sign, SignF)
FLINT_NUMS(UNARY, relu, ReluF)
FLINT_FLOATS(UNARY, erf, ErfF)
FLINT_FLOATS(UNARY, gelu, GeluF)
FLINT_FLOATS(UNARY, gelu_tanh, GeluTanhF)

