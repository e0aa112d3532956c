#line 1 "elementwise.cu"
// Elementwise kernels over strided, broadcast operands. Outputs are contiguous with
// `n` elements in row-major order of the operands' common shape; each input is
// described by a Layout whose shape is that output shape (stride 0 on broadcast dims).
// Any grid and block size works.

// ---------------------------------------------------------------------------------------
// Binary arithmetic: <op>_<dt>(const T* a, Layout la, const T* b, Layout lb, T* out, i64 n)

struct AddF {
    template <typename A> __device__ __forceinline__ A operator()(A x, A y) const { return x + y; }
};
struct SubF {
    template <typename A> __device__ __forceinline__ A operator()(A x, A y) const { return x - y; }
};
struct MulF {
    template <typename A> __device__ __forceinline__ A operator()(A x, A y) const { return x * y; }
};
struct DivF {
    template <typename A> __device__ __forceinline__ A operator()(A x, A y) const { return x / y; }
};
struct MaximumF {
    template <typename A> __device__ __forceinline__ A operator()(A x, A y) const {
        return nan_max(x, y);
    }
};
struct MinimumF {
    template <typename A> __device__ __forceinline__ A operator()(A x, A y) const {
        return nan_min(x, y);
    }
};
struct PowF {
    template <typename A> __device__ __forceinline__ A operator()(A x, A y) const {
        return m_pow(x, y);
    }
};

template <typename T, typename Op>
__device__ __forceinline__ void binary_kernel(const T* a, const Layout& la, const T* b,
                                              const Layout& lb, T* out, i64 n) {
    const bool packed = packs(a, la) && packs(b, lb) && packs_out(out);
    for_runs(la, n, packed, [&](auto r) {
        constexpr int V = decltype(r)::V;
        T av[V], bv[V];
        r.load(av, a, la);
        r.load(bv, b, lb);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            av[j] = Ty<T>::store(Op()(Ty<T>::load(av[j]), Ty<T>::load(bv[j])));
        }
        r.store(out, av);
    });
}

// In place: <op>_assign_<dt>(T* a, Layout la, const T* b, Layout lb, i64 n)
//   a[view la] = a <op> b for add, sub, mul, div (the elements of la must not overlap,
//   and b must not share memory with a: each element is read and written by one thread).
template <typename T, typename Op>
__device__ __forceinline__ void assign_kernel(T* a, const Layout& la, const T* b,
                                              const Layout& lb, i64 n) {
    const bool packed = packs_into(a, la) && packs(b, lb);
    for_runs(la, n, packed, [&](auto r) {
        constexpr int V = decltype(r)::V;
        T av[V], bv[V];
        const i64 oa = layout_offset(la, r.i), sa = inner_stride(la);
        r.load_at(av, a, oa, sa);
        r.load(bv, b, lb);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            av[j] = Ty<T>::store(Op()(Ty<T>::load(av[j]), Ty<T>::load(bv[j])));
        }
        r.store_at(a, oa, sa, av);
    });
}

#define BINARY(dt, T, op, Op)                                                              \
    extern "C" __global__ void op##_##dt(const T* a, Layout la, const T* b, Layout lb,     \
                                         T* out, i64 n) {                                  \
        binary_kernel<T, Op>(a, la, b, lb, out, n);                                        \
    }
#define ASSIGN(dt, T, op, Op)                                                              \
    extern "C" __global__ void op##_assign_##dt(T* a, Layout la, const T* b, Layout lb,    \
                                                i64 n) {                                   \
        assign_kernel<T, Op>(a, la, b, lb, n);                                             \
    }
FLINT_NUMS(BINARY, add, AddF)
FLINT_NUMS(BINARY, sub, SubF)
FLINT_NUMS(BINARY, mul, MulF)
FLINT_FLOATS(BINARY, div, DivF)
FLINT_NUMS(BINARY, maximum, MaximumF)
FLINT_NUMS(BINARY, minimum, MinimumF)
FLINT_FLOATS(BINARY, pow, PowF)
FLINT_NUMS(ASSIGN, add, AddF)
FLINT_NUMS(ASSIGN, sub, SubF)
FLINT_NUMS(ASSIGN, mul, MulF)
FLINT_FLOATS(ASSIGN, div, DivF)

// Activation backward passes, a = the output gradient g, b = the activation's input x
// (output y for relu): <op>_<dt>(const T* g, Layout lg, const T* x, Layout lx, T* out, i64 n)
//   gelu_backward:      g·(Φ(x) + x·φ(x))                 (exact GELU)
//   gelu_tanh_backward: g·d/dx[0.5·x·(1 + tanh(u))], u = √(2/π)·(x + 0.044715·x³)
//   relu_backward:      y ≤ 0 ? 0 : g                     (NaN passes g through)
struct GeluBackF {
    template <typename A> __device__ __forceinline__ A operator()(A g, A x) const {
        const A cdf = A(0.5) * (A(1) + m_erf(x * A(0.70710678118654752440)));
        const A pdf = m_exp(A(-0.5) * x * x) * A(0.39894228040143267794);
        return g * (cdf + x * pdf);
    }
};
struct GeluTanhBackF {
    template <typename A> __device__ __forceinline__ A operator()(A g, A x) const {
        const A k = A(0.79788456080286535588), c = A(0.044715);
        const A t = m_tanh(k * (x + c * x * x * x));
        const A du = k * (A(1) + A(3) * c * x * x);
        return g * (A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * du);
    }
};
struct ReluBackF {
    template <typename A> __device__ __forceinline__ A operator()(A g, A y) const {
        return y <= A(0) ? A(0) : g;
    }
};
FLINT_FLOATS(BINARY, gelu_backward, GeluBackF)
FLINT_FLOATS(BINARY, gelu_tanh_backward, GeluTanhBackF)
FLINT_NUMS(BINARY, relu_backward, ReluBackF)

// ---------------------------------------------------------------------------------------
// Binary with a scalar: <op>_scalar_<dt>(const T* x, Layout lx, T* out, i64 n, double s)
// The scalar is first rounded to T (as the CPU runtime turns it into a tensor of x's
// dtype). rsub = s - x, rdiv = s / x, rpow = s ^ x.

struct RsubF {
    template <typename A> __device__ __forceinline__ A operator()(A x, A y) const { return y - x; }
};
struct RdivF {
    template <typename A> __device__ __forceinline__ A operator()(A x, A y) const { return y / x; }
};
struct RpowF {
    template <typename A> __device__ __forceinline__ A operator()(A x, A y) const {
        return m_pow(y, x);
    }
};

template <typename T, typename Op>
__device__ __forceinline__ void scalar_kernel(const T* x, const Layout& lx, T* out, i64 n,
                                              double s) {
    const typename Ty<T>::acc sv = Ty<T>::load(Ty<T>::from_f64(s));
    for_runs(lx, n, packs(x, lx) && packs_out(out), [&](auto r) {
        constexpr int V = decltype(r)::V;
        T xv[V];
        r.load(xv, x, lx);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            xv[j] = Ty<T>::store(Op()(Ty<T>::load(xv[j]), sv));
        }
        r.store(out, xv);
    });
}

#define SCALAR(dt, T, op, Op)                                                              \
    extern "C" __global__ void op##_scalar_##dt(const T* x, Layout lx, T* out, i64 n,      \
                                                double s) {                                \
        scalar_kernel<T, Op>(x, lx, out, n, s);                                            \
    }
FLINT_FLOATS(SCALAR, add, AddF)
FLINT_FLOATS(SCALAR, sub, SubF)
FLINT_FLOATS(SCALAR, rsub, RsubF)
FLINT_FLOATS(SCALAR, mul, MulF)
FLINT_FLOATS(SCALAR, div, DivF)
FLINT_FLOATS(SCALAR, rdiv, RdivF)
FLINT_FLOATS(SCALAR, pow, PowF)
FLINT_FLOATS(SCALAR, rpow, RpowF)
FLINT_FLOATS(SCALAR, maximum, MaximumF)
FLINT_FLOATS(SCALAR, minimum, MinimumF)

// ---------------------------------------------------------------------------------------
// Comparisons: <op>_<dt>(const T* a, Layout la, const T* b, Layout lb, u8* out, i64 n)
// Logical: logical_<op>_bool(const u8* a, Layout la, const u8* b, Layout lb, u8* out, i64 n)

struct EqF {
    template <typename A> __device__ __forceinline__ bool operator()(A x, A y) const { return x == y; }
};
struct NeF {
    template <typename A> __device__ __forceinline__ bool operator()(A x, A y) const { return x != y; }
};
struct LtF {
    template <typename A> __device__ __forceinline__ bool operator()(A x, A y) const { return x < y; }
};
struct LeF {
    template <typename A> __device__ __forceinline__ bool operator()(A x, A y) const { return x <= y; }
};
struct GtF {
    template <typename A> __device__ __forceinline__ bool operator()(A x, A y) const { return x > y; }
};
struct GeF {
    template <typename A> __device__ __forceinline__ bool operator()(A x, A y) const { return x >= y; }
};
struct AndF {
    template <typename A> __device__ __forceinline__ bool operator()(A x, A y) const {
        return (x != 0) && (y != 0);
    }
};
struct OrF {
    template <typename A> __device__ __forceinline__ bool operator()(A x, A y) const {
        return (x != 0) || (y != 0);
    }
};
struct XorF {
    template <typename A> __device__ __forceinline__ bool operator()(A x, A y) const {
        return (x != 0) != (y != 0);
    }
};

template <typename T, typename Op>
__device__ __forceinline__ void compare_kernel(const T* a, const Layout& la, const T* b,
                                               const Layout& lb, u8* out, i64 n) {
    const bool packed = packs(a, la) && packs(b, lb) && packs_out(out);
    for_runs(la, n, packed, [&](auto r) {
        constexpr int V = decltype(r)::V;
        T av[V], bv[V];
        u8 ov[V];
        r.load(av, a, la);
        r.load(bv, b, lb);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            ov[j] = Op()(Ty<T>::load(av[j]), Ty<T>::load(bv[j])) ? 1 : 0;
        }
        r.store(out, ov);
    });
}

#define COMPARE(dt, T, op, Op)                                                             \
    extern "C" __global__ void op##_##dt(const T* a, Layout la, const T* b, Layout lb,     \
                                         u8* out, i64 n) {                                 \
        compare_kernel<T, Op>(a, la, b, lb, out, n);                                       \
    }
FLINT_ALL(COMPARE, eq, EqF)
FLINT_ALL(COMPARE, ne, NeF)
FLINT_ALL(COMPARE, lt, LtF)
FLINT_ALL(COMPARE, le, LeF)
FLINT_ALL(COMPARE, gt, GtF)
FLINT_ALL(COMPARE, ge, GeF)
COMPARE(bool, u8, logical_and, AndF)
COMPARE(bool, u8, logical_or, OrF)
COMPARE(bool, u8, logical_xor, XorF)

extern "C" __global__ void logical_not_bool(const u8* x, Layout lx, u8* out, i64 n) {
    FLINT_GRID_STRIDE(i, n) { out[i] = x[layout_offset(lx, i)] != 0 ? 0 : 1; }
}

