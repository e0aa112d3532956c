// Runs Flint's CUDA kernels under the host emulation of emu.h and checks their results:
// against reference computations written here (in double, straight from the documented
// formulas), and, for casts, random streams and optimizer steps, by printing `data` lines
// that kernels/tests/emulated.rs compares with the CPU runtime (flint_runtime).
//
// Output: `ok <check>` / `FAIL <check>: <why>` / `data ...` lines; exit status 1 on a failure.
// Built by kernels/tests/emulated.rs with the module sources written next to it.

#include "emu.h"

#include <algorithm>
#include <cinttypes>
#include <string>

namespace ew {
#include "elementwise.cu"
}
namespace un {
#include "unary.cu"
}
namespace cp {
#include "copy.cu"
}
namespace rd {
#include "reduce.cu"
}
namespace sm {
#include "softmax.cu"
}
namespace nm {
#include "norm.cu"
}
namespace ix {
#include "index.cu"
}
namespace rn {
#include "random.cu"
}
namespace op {
#include "optim.cu"
}
namespace wd {
#include "window.cu"
}
namespace at {
#include "attention.cu"
}

typedef long long i64;
typedef std::vector<double> Vd;

// ---------------------------------------------------------------------------------------
// Reporting

static int g_failures = 0, g_checks = 0;

static void report(bool ok, const std::string& name, const std::string& why) {
    ++g_checks;
    if (ok) {
        std::printf("ok %s\n", name.c_str());
    } else {
        ++g_failures;
        std::printf("FAIL %s: %s\n", name.c_str(), why.c_str());
    }
}

static bool same(double a, double b, double rtol, double atol) {
    if (std::isnan(a) || std::isnan(b)) {
        return std::isnan(a) && std::isnan(b);
    }
    if (std::isinf(a) || std::isinf(b)) {
        return a == b;
    }
    return std::fabs(a - b) <= atol + rtol * std::fabs(b);
}

template <typename G>
static void close(const std::string& name, const G& got, const Vd& want, double rtol = 0,
                  double atol = 0) {
    if (got.size() != want.size()) {
        report(false, name, "length " + std::to_string(got.size()) + " != " + std::to_string(want.size()));
        return;
    }
    for (size_t i = 0; i < want.size(); ++i) {
        if (!same((double)got[i], want[i], rtol, atol)) {
            char buf[200];
            std::snprintf(buf, sizeof buf, "element %zu: got %.17g, want %.17g", i, (double)got[i], want[i]);
            report(false, name, buf);
            return;
        }
    }
    report(true, name, "");
}

/// A copy of `v` one element into a new buffer: `.data() + 1` is the copy, misaligned for
/// vector accesses (for the scalar order of the warp-per-row kernels, see WarpRow).
template <typename T> static std::vector<T> shifted(const std::vector<T>& v) {
    std::vector<T> s(v.size() + 1);
    std::copy(v.begin(), v.end(), s.begin() + 1);
    return s;
}

/// The elements of a `shifted` buffer.
template <typename T> static std::vector<T> unshifted(const std::vector<T>& s) {
    return std::vector<T>(s.begin() + 1, s.end());
}

// ---------------------------------------------------------------------------------------
// Helpers

template <class L> static L layout(std::vector<i64> shape, std::vector<i64> strides = {}, i64 offset = 0) {
    L l{};
    l.rank = (i64)shape.size();
    if (strides.empty()) {
        strides.assign(shape.size(), 1);
        for (int d = (int)shape.size() - 2; d >= 0; --d) {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
    }
    for (int d = 0; d < 8; ++d) {
        l.shape[d] = d < (int)shape.size() ? shape[d] : 1;
        l.stride[d] = d < (int)shape.size() ? strides[d] : 0;
    }
    l.offset = offset;
    return l;
}

static void run(unsigned blocks, unsigned threads, const std::function<void()>& k) {
    emu_launch(dim3{blocks, 1, 1}, dim3{threads, 1, 1}, k);
}

static uint64_t g_lcg = 0x2545F4914F6CDD1Dull;
/// Deterministic pseudo-random numbers in [lo, hi).
static double rnd(double lo = -2, double hi = 2) {
    g_lcg = g_lcg * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (double)(g_lcg >> 11) * (1.0 / 9007199254740992.0);
}
static Vd rnd_vec(size_t n, double lo = -2, double hi = 2) {
    Vd v(n);
    for (auto& x : v) x = rnd(lo, hi);
    return v;
}
template <typename T> static std::vector<T> cast_vec(const Vd& v) {
    return std::vector<T>(v.begin(), v.end());
}

static uint16_t h16(float f) { return flint_emu_f32_to_f16(f); }
static float f16v(uint16_t h) { return flint_emu_f16_to_f32(h); }
static float bf16v(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
static uint32_t bits(float f) { return __float_as_uint(f); }
static uint64_t bits(double d) { uint64_t u; std::memcpy(&u, &d, 8); return u; }

template <typename T> static void print_hex(const std::vector<T>& v);
template <> void print_hex(const std::vector<float>& v) { for (float x : v) std::printf(" %08" PRIx32, bits(x)); }
template <> void print_hex(const std::vector<double>& v) { for (double x : v) std::printf(" %016" PRIx64, bits(x)); }
template <> void print_hex(const std::vector<uint16_t>& v) { for (uint16_t x : v) std::printf(" %04x", x); }
template <> void print_hex(const std::vector<i64>& v) { for (i64 x : v) std::printf(" %016" PRIx64, (uint64_t)x); }
template <> void print_hex(const std::vector<uint8_t>& v) { for (uint8_t x : v) std::printf(" %x", x); }

// ---------------------------------------------------------------------------------------
// elementwise

static void test_elementwise() {
    using namespace ew;
    {
        // activation backward passes against central differences of the activations
        const Vd x = {-3.1, -1.2, -0.4, 0.0, 0.3, 0.9, 2.2, 4.5};
        const Vd g = {0.7, -1.1, 2.0, 0.5, -0.3, 1.4, 0.9, -2.2};
        const size_t n = x.size();
        auto l = layout<Layout>({(i64)n});
        auto gelu = [](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); };
        auto gelu_tanh = [](double v) {
            return 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
        };
        Vd want(n), want_t(n), out(n);
        for (size_t i = 0; i < n; ++i) {
            const double h = 1e-6;
            want[i] = g[i] * (gelu(x[i] + h) - gelu(x[i] - h)) / (2 * h);
            want_t[i] = g[i] * (gelu_tanh(x[i] + h) - gelu_tanh(x[i] - h)) / (2 * h);
        }
        run(1, 32, [&] { gelu_backward_f64(g.data(), l, x.data(), l, out.data(), (i64)n); });
        close("gelu_backward_f64 vs central differences", out, want, 1e-8, 1e-9);
        run(1, 32, [&] { gelu_tanh_backward_f64(g.data(), l, x.data(), l, out.data(), (i64)n); });
        close("gelu_tanh_backward_f64 vs central differences", out, want_t, 1e-8, 1e-9);
        std::vector<float> gf = {1, 2, 3, 4}, yf = {-1, 0, NAN, 5}, of(4);
        auto l4 = layout<Layout>({4});
        run(1, 32, [&] { relu_backward_f32(gf.data(), l4, yf.data(), l4, of.data(), 4); });
        close("relu_backward_f32 (0 where y <= 0, NaN passes)", of, {0, 0, 3, 4});
    }
    {
        std::vector<float> a = {1, 2, 3, 4, 5, 6}, b = {10, 20, 30}, out(6);
        auto la = layout<Layout>({2, 3}), lb = layout<Layout>({2, 3}, {0, 1});
        run(2, 4, [&] { add_f32(a.data(), la, b.data(), lb, out.data(), 6); });
        close("add_f32 broadcast row", out, {11, 22, 33, 14, 25, 36});
    }
    {
        // a = transpose of a [2, 3] buffer (shape [3, 2], strides [1, 3]), offset view of b
        std::vector<double> s = {1, 2, 3, 4, 5, 6}, b = {99, .5, .5, .5, .5, .5, .5}, out(6);
        auto la = layout<Layout>({3, 2}, {1, 3}), lb = layout<Layout>({3, 2}, {}, 1);
        run(1, 32, [&] { sub_f64(s.data(), la, b.data(), lb, out.data(), 6); });
        close("sub_f64 transposed and offset views", out, {.5, 3.5, 1.5, 4.5, 2.5, 5.5});
    }
    {
        std::vector<float> a = {1, NAN, 3, -INFINITY}, b = {2, 0, NAN, -5}, mx(4), mn(4);
        auto l = layout<Layout>({4});
        run(1, 32, [&] { maximum_f32(a.data(), l, b.data(), l, mx.data(), 4); });
        run(1, 32, [&] { minimum_f32(a.data(), l, b.data(), l, mn.data(), 4); });
        close("maximum_f32 propagates NaN", mx, {2, NAN, NAN, -5});
        close("minimum_f32 propagates NaN", mn, {1, NAN, NAN, -INFINITY});
        std::vector<i64> ia = {-3, 7}, ib = {5, -9}, io(2);
        auto l2 = layout<Layout>({2});
        run(1, 32, [&] { maximum_i64(ia.data(), l2, ib.data(), l2, io.data(), 2); });
        close("maximum_i64", io, {5, 7});
        run(1, 32, [&] { mul_i64(ia.data(), l2, ib.data(), l2, io.data(), 2); });
        close("mul_i64", io, {-15, -63});
    }
    {
        std::vector<uint16_t> a = {h16(1), h16(2), h16(3)}, b = {h16(3), h16(7), h16(0.1f)}, out(3);
        auto l = layout<Layout>({3});
        run(1, 32, [&] { div_f16((f16_t*)a.data(), l, (f16_t*)b.data(), l, (f16_t*)out.data(), 3); });
        Vd want;
        for (int i = 0; i < 3; ++i) want.push_back(h16(f16v(a[i]) / f16v(b[i])));
        close("div_f16 rounds the f32 quotient", out, want);
    }
    {
        std::vector<uint16_t> x = {h16(1)}, out(1);
        auto l = layout<Layout>({1});
        run(1, 1, [&] { add_scalar_f16((f16_t*)x.data(), l, (f16_t*)out.data(), 1, 0.1); });
        close("add_scalar_f16 rounds the scalar to f16 first", out, {(double)h16(1.0f + f16v(h16(0.1f)))});
        std::vector<float> xf = {1, 2}, of(2);
        auto l2 = layout<Layout>({2});
        run(1, 32, [&] { rsub_scalar_f32(xf.data(), l2, of.data(), 2, 10.0); });
        close("rsub_scalar_f32", of, {9, 8});
        std::vector<double> xd = {3, .5}, od(2);
        run(1, 32, [&] { rpow_scalar_f64(xd.data(), l2, od.data(), 2, 2.0); });
        close("rpow_scalar_f64", od, {8, std::sqrt(2.0)}, 1e-15);
        run(1, 32, [&] { rdiv_scalar_f64(xd.data(), l2, od.data(), 2, 1.5); });
        close("rdiv_scalar_f64", od, {.5, 3});
        std::vector<float> pa = {2, 9}, pb = {10, .5}, po(2);
        run(1, 32, [&] { pow_f32(pa.data(), l2, pb.data(), l2, po.data(), 2); });
        close("pow_f32", po, {1024, 3}, 1e-6);
    }
    {
        std::vector<i64> a = {1, 5, 3, 7}, b = {4, 4};
        std::vector<uint8_t> out(4);
        auto la = layout<Layout>({2, 2}), lb = layout<Layout>({2, 2}, {0, 0});
        run(1, 32, [&] { lt_i64(a.data(), la, b.data(), lb, out.data(), 4); });
        close("lt_i64 against a broadcast scalar", out, {1, 0, 1, 0});
        std::vector<uint16_t> fa = {h16(1), h16(2)}, fb = {h16(2), h16(2)};
        auto l2 = layout<Layout>({2});
        run(1, 32, [&] { ge_f16((f16_t*)fa.data(), l2, (f16_t*)fb.data(), l2, out.data(), 2); });
        close("ge_f16", std::vector<uint8_t>(out.begin(), out.begin() + 2), {0, 1});
        std::vector<float> na = {NAN, 1}, nb = {NAN, 1};
        run(1, 32, [&] { ne_f32(na.data(), l2, nb.data(), l2, out.data(), 2); });
        close("ne_f32 with NaN", std::vector<uint8_t>(out.begin(), out.begin() + 2), {1, 0});
        std::vector<uint8_t> x = {0, 1, 1, 0}, y = {0, 0, 1, 1}, o(4);
        auto l4 = layout<Layout>({4});
        run(1, 32, [&] { logical_xor_bool(x.data(), l4, y.data(), l4, o.data(), 4); });
        close("logical_xor_bool", o, {0, 1, 0, 1});
        run(1, 32, [&] { logical_and_bool(x.data(), l4, y.data(), l4, o.data(), 4); });
        close("logical_and_bool", o, {0, 0, 1, 0});
        run(1, 32, [&] { logical_not_bool(x.data(), l4, o.data(), 4); });
        close("logical_not_bool", o, {1, 0, 0, 1});
        run(1, 32, [&] { eq_bool(x.data(), l4, y.data(), l4, o.data(), 4); });
        close("eq_bool", o, {1, 0, 1, 0});
    }
}

// ---------------------------------------------------------------------------------------
// runs: the elementwise loop (for_runs) gives warps chunks of 32·V elements of one
// innermost row, V = 4 or 2 by the innermost size, else one element per thread; strided,
// broadcast and offset views, against the element offsets computed here

template <class L> static i64 ref_offset(const L& l, i64 i) {
    i64 off = l.offset;
    for (int d = (int)l.rank - 1; d >= 0; --d) {
        off += (i % l.shape[d]) * l.stride[d];
        i /= l.shape[d];
    }
    return off;
}

static void runs_case(const int R, const int C);
static void packed_case(const int R, const int C);

static void test_runs() {
    // innermost sizes 8 (one element at a time), 64 (warp chunks of 2 per lane), 128
    // (warp chunks of 4 per lane)
    runs_case(12, 8);
    runs_case(5, 64);
    runs_case(3, 128);
    // the packed order (a lane's 4 elements consecutive, vector accesses)
    packed_case(3, 128);
    packed_case(2, 384);
}

/// n elements at a 64-byte aligned address (vector accesses of any width), `at` elements
/// into the allocation's aligned part when given (misaligned for at % 4 != 0).
template <typename T> struct Aligned {
    std::vector<T> raw;
    T* p;
    size_t n;
    explicit Aligned(size_t n, T fill = T(), size_t at = 0) : raw(n + at + 64 / sizeof(T) + 1, fill), n(n) {
        const uintptr_t a = (uintptr_t)raw.data();
        p = raw.data() + ((64 - a % 64) % 64) / sizeof(T) + at;
    }
    T* data() { return p; }
    std::vector<T> vec() const { return std::vector<T>(p, p + n); }
};

static void runs_case(const int R, const int C) {
    // a: the transpose of a [C, R] buffer (shape [R, C], inner stride R); b: one row of
    // C broadcast down R rows, at offset 3; both against the same element order
    const int N = R * C;
    const std::string at = " [" + std::to_string(R) + ", " + std::to_string(C) + "]";
    const Vd abuf = rnd_vec(N), bbuf = rnd_vec(C + 3);
    std::vector<float> a(abuf.begin(), abuf.end()), b(bbuf.begin(), bbuf.end());
    auto la = layout<ew::Layout>({R, C}, {1, R}), lb = layout<ew::Layout>({R, C}, {0, 1}, 3);
    Vd sum(N);
    for (int i = 0; i < N; ++i) sum[i] = (double)(a[ref_offset(la, i)] + b[ref_offset(lb, i)]);
    std::vector<float> out(N);
    // 2 blocks of 1 warp: each warp takes several chunks (3 threads: one element at a time)
    run(2, 32, [&] { ew::add_f32(a.data(), la, b.data(), lb, out.data(), N); });
    close(std::string("add_f32 in warp chunks (transposed + broadcast row at an offset)") + at, out, sum);
    std::fill(out.begin(), out.end(), 0.0f);
    run(1, 3, [&] { ew::add_f32(a.data(), la, b.data(), lb, out.data(), N); });
    close(std::string("add_f32 on 3 threads (one element at a time)") + at, out, sum);
    {
        std::vector<float> acc = a;
        run(1, 64, [&] { ew::add_assign_f32(acc.data(), la, b.data(), lb, N); });
        Vd want(N);
        for (int i = 0; i < N; ++i) want[ref_offset(la, i)] = sum[i];
        close(std::string("add_assign_f32 writes a + b through a's transposed view") + at, acc, want);
        std::vector<double> ad(abuf), bd(abuf.rbegin(), abuf.rend());
        auto la2 = layout<ew::Layout>({5, 3}), lb2 = layout<ew::Layout>({5, 3}, {1, 5});
        run(1, 4, [&] { ew::div_assign_f64(ad.data(), la2, bd.data(), lb2, 15); });
        Vd want2(abuf);
        for (int i = 0; i < 15; ++i) want2[i] = abuf[i] / bd[ref_offset(lb2, i)];
        close(std::string("div_assign_f64 (innermost size 3: one element at a time)") + at, ad, want2);
        std::vector<i64> ia = {1, 2, 3, 4, 5, 6, 7, 8}, ib = {10, 20, 30, 40};
        auto l24 = layout<ew::Layout>({2, 4}), lbc = layout<ew::Layout>({2, 4}, {0, 1});
        run(1, 32, [&] { ew::sub_assign_i64(ia.data(), l24, ib.data(), lbc, 8); });
        close(std::string("sub_assign_i64 broadcast row") + at, ia, {-9, -18, -27, -36, -5, -14, -23, -32});
        run(1, 32, [&] { ew::mul_assign_i64(ia.data(), l24, ib.data(), lbc, 8); });
        close(std::string("mul_assign_i64 broadcast row") + at, ia, {-90, -360, -810, -1440, -50, -280, -690, -1280});
    }
    {
        std::vector<uint8_t> cmp(N);
        run(1, 32, [&] { ew::lt_f32(a.data(), la, b.data(), lb, cmp.data(), N); });
        Vd want(N);
        for (int i = 0; i < N; ++i) want[i] = a[ref_offset(la, i)] < b[ref_offset(lb, i)];
        close(std::string("lt_f32 in runs") + at, cmp, want);
        std::vector<float> o(N);
        run(2, 32, [&] { ew::mul_scalar_f32(a.data(), la, o.data(), N, -1.5); });
        for (int i = 0; i < N; ++i) want[i] = (double)(a[ref_offset(la, i)] * -1.5f);
        close(std::string("mul_scalar_f32 in runs") + at, o, want);
    }
    {
        auto lu = layout<un::Layout>({R, C}, {1, R});
        std::vector<float> o(N);
        run(1, 96, [&] { un::neg_f32(a.data(), lu, o.data(), N); });
        Vd want(N);
        for (int i = 0; i < N; ++i) want[i] = -a[ref_offset(lu, i)];
        close(std::string("neg_f32 in runs (transposed)") + at, o, want);
    }
    {
        auto ls = layout<cp::Layout>({R, C}, {1, R}), lc = layout<cp::Layout>({R, C});
        std::vector<float> o(N), t(N, 0.0f);
        Vd want(N), want_t(N);
        for (int i = 0; i < N; ++i) {
            want[i] = a[ref_offset(ls, i)];
            want_t[ref_offset(ls, i)] = a[i];
        }
        run(2, 32, [&] { cp::contiguous_f32(a.data(), ls, o.data(), N); });
        close(std::string("contiguous_f32 of a transposed view") + at, o, want);
        run(1, 64, [&] { cp::copy_f32(a.data(), lc, t.data(), ls, N); });
        close(std::string("copy_f32 into a transposed view") + at, t, want_t);
        std::vector<double> d(N);
        run(3, 32, [&] { cp::cast_f32_f64(a.data(), ls, d.data(), N); });
        close(std::string("cast_f32_f64 of a transposed view in runs") + at, d, want);
        std::vector<float> f(34, 7.0f);
        auto lf = layout<cp::Layout>({4, 2, 4}, {8, 1, 2}, 2);
        run(1, 3, [&] { cp::fill_f32(f.data(), lf, 32, 0.5f); });
        Vd wf(34, 7.0);
        for (int i = 0; i < 32; ++i) wf[ref_offset(lf, i)] = 0.5;
        close(std::string("fill_f32 through a permuted view at an offset") + at, f, wf);
    }
    {
        // a [2, 3, 8] tensor masked by a [3, 8] mask broadcast over the first dim
        const int B = 2, T = 3, S = C, M = B * T * S;
        std::vector<float> x(M), o(M), y(M);
        for (int i = 0; i < M; ++i) x[i] = (float)rnd();
        std::vector<uint8_t> m(T * S);
        for (int i = 0; i < T * S; ++i) m[i] = (i * 7) % 3 == 0;
        auto lx = layout<ix::Layout>({B, T, S}), lm = layout<ix::Layout>({B, T, S}, {0, S, 1});
        Vd want(M), want_w(M);
        for (int i = 0; i < M; ++i) {
            const bool k = m[i % (T * S)] != 0;
            want[i] = k ? -INFINITY : x[i];
            want_w[i] = k ? x[i] : (double)b[3 + i % S];
        }
        run(2, 32, [&] { ix::masked_fill_f32(x.data(), lx, m.data(), lm, -INFINITY, o.data(), M); });
        close(std::string("masked_fill_f32 in runs (broadcast mask)") + at, o, want);
        auto lbb = layout<ix::Layout>({B, T, S}, {0, 0, 1}, 3);
        run(1, 32, [&] { ix::where_f32(m.data(), lm, x.data(), lx, b.data(), lbb, y.data(), M); });
        close(std::string("where_f32 in runs") + at, y, want_w);
    }
}

/// The packed order of for_runs on every kind of body: contiguous, broadcast-row (offset
/// 4) and broadcast-column (innermost stride 0) operands, which pack; then the same
/// kernels with one operand that does not pack (a misaligned offset, an innermost stride
/// of 2, a row stride that is not a multiple of 4), which take the strided order. Both
/// against references computed here.
static void packed_case(const int R, const int C) {
    const int N = R * C;
    const std::string at = " [" + std::to_string(R) + ", " + std::to_string(C) + "]";
    Aligned<float> a(N), b(C + 4), c(R), w(R * (C + 4));
    for (int i = 0; i < N; ++i) a.p[i] = (float)rnd();
    for (int i = 0; i < C + 4; ++i) b.p[i] = (float)rnd();
    for (int i = 0; i < R; ++i) c.p[i] = (float)rnd(0.5, 2);
    for (int i = 0; i < R * (C + 4); ++i) w.p[i] = (float)rnd();
    auto la = layout<ew::Layout>({R, C}), lb = layout<ew::Layout>({R, C}, {0, 1}, 4),
         lc = layout<ew::Layout>({R, C}, {1, 0});
    // the rows of a [R, C + 4] buffer from column 4: row stride C + 4, offset 4
    auto lw = layout<ew::Layout>({R, C}, {C + 4, 1}, 4);
    const bool packs_all = ew::packs(a.p, la) && ew::packs(b.p, lb) && ew::packs(c.p, lc) &&
                           ew::packs(w.p, lw) && ew::packs_out(a.p) && ew::packs_into(w.p, lw);
    report(packs_all, "contiguous, broadcast and aligned row views pack" + at, "");
    // views that do not pack: misaligned, strided, a row stride not a multiple of 4, a
    // broadcast destination
    auto l_off = layout<ew::Layout>({R, C}, {0, 1}, 1), l_s2 = layout<ew::Layout>({R, C / 2}, {C, 2});
    auto l_row = layout<ew::Layout>({R, C}, {C + 1, 1});
    report(!ew::packs(b.p, l_off) && !ew::packs(a.p, l_s2) && !ew::packs(w.p, l_row) &&
               !ew::packs_into(c.p, lc) && !ew::packs_out(a.p + 1),
           "misaligned, strided and broadcast-destination views do not pack" + at, "");

    auto A = [&](int i) { return (double)a.p[ref_offset(la, i)]; };
    auto B = [&](const ew::Layout& l, int i) { return (double)b.p[ref_offset(l, i)]; };
    auto Cc = [&](int i) { return (double)c.p[ref_offset(lc, i)]; };
    for (const bool pack : {true, false}) {
        // the second operand of the binary kernels: packs, or a misaligned broadcast row
        const ew::Layout lb2 = pack ? lb : l_off;
        const std::string how = std::string(pack ? " packed" : " strided (misaligned operand)") + at;
        Aligned<float> out(N);
        run(2, 64, [&] { ew::add_f32(a.p, la, b.p, lb2, out.p, N); });
        Vd want(N);
        for (int i = 0; i < N; ++i) want[i] = (double)((float)A(i) + (float)B(lb2, i));
        close("add_f32" + how, out.vec(), want);
        // a broadcast column, with a (or a misaligned copy of it)
        Aligned<float> a1(N, 0.0f, pack ? 0 : 1);
        std::copy(a.p, a.p + N, a1.p);
        run(1, 96, [&] { ew::mul_f32(a1.p, la, c.p, lc, out.p, N); });
        for (int i = 0; i < N; ++i) want[i] = (double)((float)A(i) * (float)Cc(i));
        close("mul_f32 by a broadcast column" + how, out.vec(), want);
        Aligned<uint8_t> cmp(N);
        run(2, 32, [&] { ew::lt_f32(a.p, la, b.p, lb2, cmp.p, N); });
        for (int i = 0; i < N; ++i) want[i] = A(i) < B(lb2, i);
        close("lt_f32" + how, cmp.vec(), want);
        // the output at an offset of 1 when not packed
        Aligned<float> o1(N, 0.0f, pack ? 0 : 1);
        run(2, 32, [&] { ew::mul_scalar_f32(a.p, la, o1.p, N, -1.5); });
        for (int i = 0; i < N; ++i) want[i] = (double)((float)A(i) * -1.5f);
        close("mul_scalar_f32" + how, o1.vec(), want);
        run(1, 64, [&] { un::gelu_f32(a.p, *(const un::Layout*)&la, o1.p, N); });
        for (int i = 0; i < N; ++i) want[i] = 0.5 * A(i) * (1 + std::erf(A(i) / std::sqrt(2.0)));
        close("gelu_f32" + how, o1.vec(), want, 1e-6, 1e-7);
        // in place through the rows of w (aligned and packed, or rows of C + 1 elements)
        {
            const ew::Layout lw2 = pack ? lw : l_row;
            Aligned<float> acc(R * (C + 4));
            std::copy(w.p, w.p + R * (C + 4), acc.p);
            run(2, 32, [&] { ew::add_assign_f32(acc.p, lw2, b.p, lb, N); });
            Vd wa(acc.raw.begin(), acc.raw.end());
            Vd want_a(w.p, w.p + R * (C + 4));
            for (int i = 0; i < N; ++i) {
                const i64 o = ref_offset(lw2, i);
                want_a[o] = (double)(w.p[o] + (float)B(lb, i));
            }
            close("add_assign_f32 through row views" + how, acc.vec(), want_a);
        }
        // copies: out = rows of w; rows of w = a; casts; fills
        {
            const cp::Layout lw2 = *(const cp::Layout*)(pack ? &lw : &l_row);
            const cp::Layout lac = *(const cp::Layout*)&la;
            run(2, 32, [&] { cp::contiguous_f32(w.p, lw2, out.p, N); });
            for (int i = 0; i < N; ++i) want[i] = w.p[ref_offset(lw2, i)];
            close("contiguous_f32 of row views" + how, out.vec(), want);
            Aligned<float> t(R * (C + 4), 7.0f);
            run(1, 64, [&] { cp::copy_f32(a.p, lac, t.p, lw2, N); });
            Vd want_t(R * (C + 4), 7.0);
            for (int i = 0; i < N; ++i) want_t[ref_offset(lw2, i)] = a.p[i];
            close("copy_f32 into row views" + how, t.vec(), want_t);
            Aligned<uint16_t> h(N, 0, pack ? 0 : 1);
            run(2, 32, [&] { cp::cast_f32_f16(a.p, lac, (cp::f16_t*)h.p, N); });
            Vd want_h(N);
            for (int i = 0; i < N; ++i) want_h[i] = h16(a.p[i]);
            close("cast_f32_f16" + how, h.vec(), want_h);
            Aligned<float> f(R * (C + 4), 7.0f);
            run(2, 32, [&] { cp::fill_f32(f.p, lw2, N, 0.25f); });
            Vd want_f(R * (C + 4), 7.0);
            for (int i = 0; i < N; ++i) want_f[ref_offset(lw2, i)] = 0.25;
            close("fill_f32 of row views" + how, f.vec(), want_f);
        }
        // masks: a [T, C] mask broadcast over R / T... here a [C] mask row broadcast down R
        {
            Aligned<uint8_t> m(C + 4);
            for (int i = 0; i < C + 4; ++i) m.p[i] = (i * 5) % 3 == 0;
            const ix::Layout lm = layout<ix::Layout>({R, C}, {0, 1}, pack ? 4 : 1);
            const ix::Layout lx = *(const ix::Layout*)&la, lbx = *(const ix::Layout*)&lb;
            run(2, 32, [&] { ix::masked_fill_f32(a.p, lx, m.p, lm, -INFINITY, out.p, N); });
            Vd want_w(N);
            for (int i = 0; i < N; ++i) {
                const bool k = m.p[ref_offset(lm, i)] != 0;
                want[i] = k ? -INFINITY : A(i);
                want_w[i] = k ? A(i) : (double)b.p[ref_offset(lbx, i)];
            }
            close("masked_fill_f32 (broadcast mask row)" + how, out.vec(), want);
            run(1, 32, [&] { ix::where_f32(m.p, lm, a.p, lx, b.p, lbx, out.p, N); });
            close("where_f32" + how, out.vec(), want_w);
        }
    }
    // other widths of the packed order: f64 (two 16-byte accesses a lane), f16 and i64
    {
        Aligned<double> x(N), y(N), o(N);
        for (int i = 0; i < N; ++i) { x.p[i] = rnd(); y.p[i] = rnd(); }
        report(ew::packs(x.p, la) && !ew::packs(x.p + 2, la), "f64 views pack at 32 bytes" + at, "");
        run(2, 32, [&] { ew::sub_f64(x.p, la, y.p, la, o.p, N); });
        Vd want(N);
        for (int i = 0; i < N; ++i) want[i] = x.p[i] - y.p[i];
        close("sub_f64 packed" + at, o.vec(), want);
        Aligned<uint16_t> hx(N), hy(N), ho(N);
        for (int i = 0; i < N; ++i) { hx.p[i] = h16((float)rnd()); hy.p[i] = h16((float)rnd()); }
        run(2, 32, [&] { ew::mul_f16((ew::f16_t*)hx.p, la, (ew::f16_t*)hy.p, la, (ew::f16_t*)ho.p, N); });
        for (int i = 0; i < N; ++i) want[i] = h16(f16v(hx.p[i]) * f16v(hy.p[i]));
        close("mul_f16 packed" + at, ho.vec(), want);
        Aligned<i64> ix_(N), iy(C + 4);
        for (int i = 0; i < N; ++i) ix_.p[i] = (i64)(rnd() * 100);
        for (int i = 0; i < C + 4; ++i) iy.p[i] = (i64)(rnd() * 100);
        Aligned<uint8_t> cmp(N);
        run(1, 64, [&] { ew::ge_i64(ix_.p, la, iy.p, lb, cmp.p, N); });
        for (int i = 0; i < N; ++i) want[i] = ix_.p[i] >= iy.p[ref_offset(lb, i)];
        close("ge_i64 packed (broadcast row at an offset of 4)" + at, cmp.vec(), want);
    }
}

// ---------------------------------------------------------------------------------------
// unary

static double gelu_ref(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }
static double gelu_tanh_ref(double x) {
    return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

template <typename T, typename K>
static void unary_case(const char* name, K kernel, const Vd& xs, double (*f)(double), double rtol,
                       double atol) {
    using namespace un;
    // the input is every other element of a buffer: a strided view
    std::vector<T> buf(2 * xs.size(), T(77)), out(xs.size());
    for (size_t i = 0; i < xs.size(); ++i) buf[2 * i] = (T)xs[i];
    auto l = layout<Layout>({(i64)xs.size()}, {2});
    run(2, 32, [&] { kernel(buf.data(), l, out.data(), (i64)xs.size()); });
    Vd want;
    for (double x : xs) want.push_back(f((double)(T)x));
    close(name, out, want, rtol, atol);
}

static void test_unary() {
    using namespace un;
    const Vd xs = {-2.5, -1, -0.5, 0, 0.3, 1.5, 2.5, 3.5}, pos = {0.1, 0.5, 1, 2, 7.5, 100};
    unary_case<float>("exp_f32", exp_f32, xs, [](double x) { return std::exp(x); }, 1e-6, 0);
    unary_case<double>("exp_f64", exp_f64, xs, [](double x) { return std::exp(x); }, 1e-15, 0);
    unary_case<float>("log_f32", log_f32, pos, [](double x) { return std::log(x); }, 1e-6, 1e-7);
    unary_case<double>("sqrt_f64", sqrt_f64, pos, [](double x) { return std::sqrt(x); }, 0, 0);
    unary_case<float>("rsqrt_f32", rsqrt_f32, pos, [](double x) { return 1 / std::sqrt(x); }, 1e-6, 0);
    unary_case<float>("tanh_f32", tanh_f32, xs, [](double x) { return std::tanh(x); }, 1e-6, 1e-7);
    unary_case<double>("sigmoid_f64", sigmoid_f64, xs, [](double x) { return 1 / (1 + std::exp(-x)); }, 1e-15, 0);
    unary_case<float>("silu_f32", silu_f32, xs, [](double x) { return x / (1 + std::exp(-x)); }, 1e-6, 1e-7);
    unary_case<double>("sin_f64", sin_f64, xs, [](double x) { return std::sin(x); }, 1e-15, 1e-16);
    unary_case<float>("cos_f32", cos_f32, xs, [](double x) { return std::cos(x); }, 1e-6, 1e-7);
    unary_case<double>("reciprocal_f64", reciprocal_f64, pos, [](double x) { return 1 / x; }, 0, 0);
    unary_case<float>("floor_f32", floor_f32, xs, [](double x) { return std::floor(x); }, 0, 0);
    unary_case<double>("ceil_f64", ceil_f64, xs, [](double x) { return std::ceil(x); }, 0, 0);
    // half to even: -2.5 -> -2, -0.5 -> -0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4
    unary_case<float>("round_f32 half to even", round_f32, xs, [](double x) { return std::nearbyint(x); }, 0, 0);
    unary_case<double>("erf_f64", erf_f64, xs, [](double x) { return std::erf(x); }, 1e-15, 1e-16);
    unary_case<double>("gelu_f64", gelu_f64, xs, gelu_ref, 1e-14, 1e-16);
    unary_case<float>("gelu_f32", gelu_f32, xs, gelu_ref, 1e-6, 1e-7);
    unary_case<double>("gelu_tanh_f64", gelu_tanh_f64, xs, gelu_tanh_ref, 1e-14, 1e-16);
    unary_case<float>("square_f32", square_f32, xs, [](double x) { return x * x; }, 1e-7, 0);
    unary_case<i64>("neg_i64", neg_i64, {-3, 0, 5}, [](double x) { return -x; }, 0, 0);
    unary_case<i64>("abs_i64", abs_i64, {-3, 0, 5}, [](double x) { return std::fabs(x); }, 0, 0);
    unary_case<i64>("relu_i64", relu_i64, {-3, 0, 5}, [](double x) { return x > 0 ? x : 0; }, 0, 0);
    {
        std::vector<float> x = {-3, -0.0f, 0, NAN, 2}, s(5), r(5);
        auto l = layout<Layout>({5});
        run(1, 32, [&] { sign_f32(x.data(), l, s.data(), 5); });
        run(1, 32, [&] { relu_f32(x.data(), l, r.data(), 5); });
        close("sign_f32 keeps zero and NaN", s, {-1, 0, 0, NAN, 1});
        report(std::signbit(s[1]), "sign_f32(-0) is -0", "lost the sign");
        close("relu_f32 propagates NaN", r, {0, 0, 0, NAN, 2});
    }
    {
        std::vector<uint16_t> x = {h16(0.5f), h16(-1.25f)}, o(2);
        auto l = layout<Layout>({2});
        run(1, 32, [&] { exp_f16((f16_t*)x.data(), l, (f16_t*)o.data(), 2); });
        close("exp_f16 rounds exp of the f32 value", o, {(double)h16(std::exp(0.5f)), (double)h16(std::exp(-1.25f))});
    }
}

// ---------------------------------------------------------------------------------------
// copy: casts are printed for emulated.rs to compare with the CPU runtime's to_dtype

template <typename S, typename D, typename K>
static void cast_data(const char* from, const char* to, K kernel, const std::vector<S>& x) {
    using namespace cp;
    std::vector<D> out(x.size());
    auto l = layout<Layout>({(i64)x.size()});
    run(1, 32, [&] { kernel(x.data(), l, out.data(), (i64)x.size()); });
    std::printf("data cast %s %s %zu", from, to, x.size());
    print_hex(x);
    print_hex(out);
    std::printf("\n");
}

static void test_copy() {
    using namespace cp;
    // f32 values around bf16/f16 rounding boundaries: ties, just above ties (in the f32's
    // last 3 bits, which the CPU's f64 -> bf16 truncation ignores), subnormals, NaN, inf
    const float p8 = std::ldexp(1.0f, -8), p20 = std::ldexp(1.0f, -20), p23 = std::ldexp(1.0f, -23);
    const std::vector<float> fx = {1.0f + p8, 1.0f + 3 * p8, 1.0f + p8 + p20, 1.0f + p8 + p23,
                                   -2.7f, 0.1f, 65519.0f, 65520.0f, 1e-7f, 3e38f, INFINITY, -0.0f, 1e-40f};
    const std::vector<double> dx = {1.0 / 3, 1 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40), -2.5,
                                    1e300, 2049.0, 4097.0, 1e-9, std::ldexp(1.0, 60)};
    // (out-of-range f64 -> i64 saturates on the GPU, as in Rust; C++ on the host does not)
    const std::vector<double> dx_int = {1.0 / 3, -2.5, -7.9, 2049.0, std::ldexp(1.0, 60)};
    const std::vector<i64> ix = {0, -7, 9007199254740993LL, (i64)1 << 62, 2049};
    cast_data<float, uint16_t>("f32", "bf16", [](const float* x, Layout l, uint16_t* o, i64 n) { cast_f32_bf16(x, l, (bf16_t*)o, n); }, fx);
    cast_data<float, uint16_t>("f32", "f16", [](const float* x, Layout l, uint16_t* o, i64 n) { cast_f32_f16(x, l, (f16_t*)o, n); }, fx);
    cast_data<float, double>("f32", "f64", cast_f32_f64, fx);
    cast_data<float, uint8_t>("f32", "bool", cast_f32_bool, fx);
    cast_data<double, uint16_t>("f64", "bf16", [](const double* x, Layout l, uint16_t* o, i64 n) { cast_f64_bf16(x, l, (bf16_t*)o, n); }, dx);
    cast_data<double, uint16_t>("f64", "f16", [](const double* x, Layout l, uint16_t* o, i64 n) { cast_f64_f16(x, l, (f16_t*)o, n); }, dx);
    cast_data<double, float>("f64", "f32", cast_f64_f32, dx);
    cast_data<double, i64>("f64", "i64", cast_f64_i64, dx_int);
    cast_data<i64, float>("i64", "f32", cast_i64_f32, ix);
    cast_data<i64, uint16_t>("i64", "f16", [](const i64* x, Layout l, uint16_t* o, i64 n) { cast_i64_f16(x, l, (f16_t*)o, n); }, ix);
    cast_data<i64, uint8_t>("i64", "bool", cast_i64_bool, ix);
    {
        std::vector<uint8_t> b = {0, 1, 1};
        std::vector<double> o(3);
        auto l = layout<Layout>({3});
        run(1, 32, [&] { cast_bool_f64(b.data(), l, o.data(), 3); });
        close("cast_bool_f64", o, {0, 1, 1});
        std::vector<uint16_t> h = {h16(1.5f), h16(-2.0f)};
        std::vector<uint16_t> bo(2);
        auto l2 = layout<Layout>({2});
        run(1, 32, [&] { cast_f16_bf16((const f16_t*)h.data(), l2, (bf16_t*)bo.data(), 2); });
        close("cast_f16_bf16", std::vector<double>{bf16v(bo[0]), bf16v(bo[1])}, {1.5, -2});
    }
    {
        std::vector<float> s = {1, 2, 3, 4, 5, 6}, d(6);
        auto ls = layout<Layout>({3, 2}, {1, 3}), ld = layout<Layout>({3, 2});
        run(1, 4, [&] { copy_f32(s.data(), ls, d.data(), ld, 6); });
        close("copy_f32 makes a transpose contiguous", d, {1, 4, 2, 5, 3, 6});
        std::vector<float> big(8, 0);
        auto lsrc = layout<Layout>({4}), ldst = layout<Layout>({4}, {2}, 1);
        run(1, 32, [&] { copy_f32(s.data(), lsrc, big.data(), ldst, 4); });
        close("copy_f32 writes into a strided view", big, {0, 1, 0, 2, 0, 3, 0, 4});
        std::vector<uint16_t> hb(6, 0);
        f16_t v;
        v.bits = h16(-1.5f);
        auto lv = layout<Layout>({2, 2}, {3, 1}, 1); // columns 1..2 of a [2, 3]
        run(1, 32, [&] { fill_f16((f16_t*)hb.data(), lv, 4, v); });
        close("fill_f16 fills a view only", hb, {0, (double)v.bits, (double)v.bits, 0, (double)v.bits, (double)v.bits});
        std::vector<uint8_t> bb(3, 0);
        auto lb = layout<Layout>({3});
        run(1, 32, [&] { fill_bool(bb.data(), lb, 3, (uint8_t)1); });
        close("fill_bool", bb, {1, 1, 1});
        std::vector<i64> ar(5);
        run(2, 2, [&] { arange_i64(ar.data(), 5, -2.0, 3.0); });
        close("arange_i64", ar, {-2, 1, 4, 7, 10});
        std::vector<float> af(4);
        run(1, 32, [&] { arange_f32(af.data(), 4, 0.5, 0.25); });
        close("arange_f32", af, {0.5, 0.75, 1, 1.25});
    }
}

// ---------------------------------------------------------------------------------------
// reduce

/// The column kernels (`*_cols`, and `_part` + `_fin` over several row chunks) against
/// sums, maxima and minima in double: [outer 2, dim 37, inner 45] (a partial column tile,
/// rows not a multiple of the warps or the chunk), f32, f64, i64 and f16.
static void test_reduce_cols() {
    using namespace rd;
    const int O = 2, D = 37, I = 45;
    Vd x = rnd_vec(O * D * I);
    x[(1 * D + 20) * I + 7] = NAN; // max and min propagate it
    Vd s(O * I, 0), mx(O * I, -INFINITY), mn(O * I, INFINITY);
    for (int o = 0; o < O; ++o)
        for (int d = 0; d < D; ++d)
            for (int i = 0; i < I; ++i) {
                const double v = (float)x[(o * D + d) * I + i];
                const int r = o * I + i;
                s[r] += v;
                mx[r] = std::isnan(mx[r]) || std::isnan(v) ? NAN : std::max(mx[r], v);
                mn[r] = std::isnan(mn[r]) || std::isnan(v) ? NAN : std::min(mn[r], v);
            }
    Vd mean = s;
    for (auto& m : mean) m /= D;
    auto xf = cast_vec<float>(x);
    auto xd = cast_vec<double>(Vd(xf.begin(), xf.end()));
    const unsigned tiles = (I + 31) / 32;
    auto launch = [&](unsigned blocks, unsigned chunks, unsigned threads, const std::function<void()>& k) {
        emu_launch(dim3{blocks, chunks, 1}, dim3{threads, 1, 1}, k);
    };
    std::vector<float> out(O * I);
    // one chunk, fewer blocks than tiles (grid-stride), 2 warps
    launch(3, 1, 64, [&] { sum_cols_f32(xf.data(), out.data(), O, D, I, D, 1.0); });
    close("sum_cols_f32 (one chunk)", out, s, 1e-6, 1e-6);
    launch(O * tiles, 1, 96, [&] { sum_cols_f32(xf.data(), out.data(), O, D, I, D, (double)D); });
    close("sum_cols_f32 with div (a mean)", out, mean, 1e-6, 1e-6);
    launch(O * tiles, 1, 64, [&] { max_cols_f32(xf.data(), out.data(), O, D, I, D, 1.0); });
    close("max_cols_f32 (NaN propagates)", out, mx);
    launch(2, 1, 32, [&] { min_cols_f32(xf.data(), out.data(), O, D, I, D, 1.0); });
    close("min_cols_f32", out, mn);
    {
        // products of values near 1 (so 37 of them stay finite), one launch and chunks
        Vd pr(O * I, 1);
        std::vector<double> y(O * D * I), got(O * I), part(O * 3 * I);
        for (size_t k = 0; k < y.size(); ++k) {
            y[k] = 1.0 + 0.1 * std::sin((double)k);
            pr[(k / (D * I)) * I + k % I] *= y[k];
        }
        launch(O * tiles, 1, 64, [&] { rd::prod_cols_f64(y.data(), got.data(), O, D, I, D, 1.0); });
        close("prod_cols_f64", got, pr, 1e-13, 0);
        launch(O * tiles, 3, 64, [&] { rd::prod_cols_part_f64(y.data(), part.data(), O, D, I, 13, 1.0); });
        launch(O * tiles, 1, 64, [&] { rd::prod_cols_fin_f64(part.data(), got.data(), O, 3, I, 3, 1.0); });
        close("prod_cols_part + fin f64", got, pr, 1e-13, 0);
        Vd pd(O * I, 1);
        for (int o = 0; o < O; ++o)
            for (int d = 0; d < D; ++d)
                for (int i = 0; i < I; ++i) pd[o * I + i] *= y[(o * D + d) * I + i];
        std::vector<double> gd(O * I);
        run(5, 64, [&] { rd::prod_dim_f64(y.data(), gd.data(), O, D, I); });
        close("prod_dim_f64", gd, pd, 1e-13, 0);
    }
    // three chunks of 13 rows: partials, then the final pass
    const int chunk = 13, chunks = (D + chunk - 1) / chunk;
    std::vector<float> part(O * chunks * I);
    launch(O * tiles, chunks, 64, [&] { sum_cols_part_f32(xf.data(), part.data(), O, D, I, chunk, 1.0); });
    launch(O * tiles, 1, 64, [&] { sum_cols_fin_f32(part.data(), out.data(), O, chunks, I, chunks, 1.0); });
    close("sum_cols_part + fin f32 (3 chunks)", out, s, 1e-6, 1e-6);
    launch(1, chunks, 128, [&] { max_cols_part_f32(xf.data(), part.data(), O, D, I, chunk, 1.0); });
    launch(1, 1, 128, [&] { max_cols_fin_f32(part.data(), out.data(), O, chunks, I, chunks, 1.0); });
    close("max_cols_part + fin f32", out, mx);
    std::vector<double> outd(O * I), partd(O * chunks * I);
    launch(O * tiles, chunks, 64, [&] { sum_cols_part_f64(xd.data(), partd.data(), O, D, I, chunk, 1.0); });
    launch(O * tiles, 1, 64, [&] { sum_cols_fin_f64(partd.data(), outd.data(), O, chunks, I, chunks, (double)D); });
    close("sum_cols_part + fin f64 with div", outd, mean, 1e-13, 1e-13);
    // i64, and f16 with f32 partials
    std::vector<i64> xi(O * D * I), oi(O * I), pi(O * chunks * I);
    Vd si(O * I, 0);
    for (size_t k = 0; k < xi.size(); ++k) {
        xi[k] = (i64)(k % 7) - 3;
        si[(k / (D * I)) * I + k % I] += (double)xi[k];
    }
    launch(O * tiles, chunks, 64, [&] { sum_cols_part_i64(xi.data(), pi.data(), O, D, I, chunk, 1.0); });
    launch(O * tiles, 1, 64, [&] { sum_cols_fin_i64(pi.data(), oi.data(), O, chunks, I, chunks, 1.0); });
    close("sum_cols_part + fin i64", oi, si);
    std::vector<uint16_t> xh(O * D * I), oh(O * I);
    Vd sh(O * I, 0);
    for (size_t k = 0; k < xh.size(); ++k) {
        xh[k] = h16((float)x[k] * 0.25f);
        if (!std::isnan(x[k])) sh[(k / (D * I)) * I + k % I] += f16v(xh[k]);
    }
    xh[(1 * D + 20) * I + 7] = h16(0.0f);
    std::vector<float> ph(O * chunks * I);
    launch(O * tiles, chunks, 64, [&] { sum_cols_part_f16((f16_t*)xh.data(), ph.data(), O, D, I, chunk, 1.0); });
    launch(O * tiles, 1, 64, [&] { sum_cols_fin_f16(ph.data(), (f16_t*)oh.data(), O, chunks, I, chunks, 1.0); });
    Vd ohd(O * I);
    for (int k = 0; k < O * I; ++k) ohd[k] = f16v(oh[k]);
    close("sum_cols_part + fin f16 (f32 partials)", ohd, sh, 2e-3, 2e-3);
}

static void test_reduce() {
    using namespace rd;
    const int O = 2, D = 5, I = 3;
    Vd x = rnd_vec(O * D * I);
    x[(0 * D + 1) * I + 0] = 100; // a tie for argmax at d = 1 and 3: the lower index wins
    x[(0 * D + 3) * I + 0] = 100;
    x[(1 * D + 2) * I + 1] = NAN; // the first NaN wins argmax and argmin
    x[(1 * D + 4) * I + 1] = NAN;
    auto xf = cast_vec<float>(x);
    Vd s(O * I, 0), mx(O * I, -INFINITY), mn(O * I, INFINITY);
    std::vector<i64> amax(O * I, -1), amin(O * I, -1);
    for (int o = 0; o < O; ++o)
        for (int i = 0; i < I; ++i)
            for (int d = 0; d < D; ++d) {
                const double v = (float)x[(o * D + d) * I + i];
                const int r = o * I + i;
                s[r] += v;
                if (std::isnan(v)) {
                    if (!std::isnan(mx[r])) amax[r] = amin[r] = d;
                    mx[r] = mn[r] = NAN;
                } else if (!std::isnan(mx[r])) {
                    if (v > mx[r]) mx[r] = v, amax[r] = d;
                    if (v < mn[r]) mn[r] = v, amin[r] = d;
                }
            }
    std::vector<float> out(O * I), vals(O * I);
    std::vector<i64> idx(O * I);
    run(2, 64, [&] { sum_dim_f32(xf.data(), out.data(), O, D, I); });
    close("sum_dim_f32 over the middle dim", out, s, 1e-6, 1e-6);
    Vd mean = s;
    for (auto& m : mean) m /= D;
    run(2, 64, [&] { mean_dim_f32(xf.data(), out.data(), O, D, I); });
    close("mean_dim_f32", out, mean, 1e-6, 1e-6);
    run(3, 32, [&] { max_dim_f32(xf.data(), out.data(), O, D, I); });
    close("max_dim_f32 (NaN propagates)", out, mx);
    run(3, 32, [&] { min_dim_f32(xf.data(), out.data(), O, D, I); });
    close("min_dim_f32", out, mn);
    run(2, 64, [&] { argmax_dim_f32(xf.data(), vals.data(), idx.data(), O, D, I); });
    close("argmax_dim_f32 indices (ties: lowest, NaN first)", idx, Vd(amax.begin(), amax.end()));
    close("argmax_dim_f32 values", vals, mx);
    run(2, 64, [&] { argmin_dim_f32(xf.data(), nullptr, idx.data(), O, D, I); });
    close("argmin_dim_f32 indices, no values", idx, Vd(amin.begin(), amin.end()));

    Vd big = rnd_vec(1000);
    double total = 0;
    for (double v : big) total += v;
    std::vector<double> one(1);
    run(1, 64, [&] { sum_dim_f64(big.data(), one.data(), 1, 1000, 1); });
    close("sum_dim_f64 whole tensor", one, {total}, 1e-13, 1e-13);
    std::vector<i64> ints = {5, -7, 3, 2, -9, 4}, io(2);
    run(1, 32, [&] { sum_dim_i64(ints.data(), io.data(), 1, 3, 2); });
    close("sum_dim_i64 inner 2", io, {5 + 3 - 9, -7 + 2 + 4});
    run(1, 32, [&] { max_dim_i64(ints.data(), io.data(), 2, 3, 1); });
    close("max_dim_i64", io, {5, 4});
    std::vector<uint16_t> hx = {h16(1), h16(2), h16(3.5f), h16(-0.5f)}, ho(1);
    run(1, 32, [&] { sum_dim_f16((f16_t*)hx.data(), (f16_t*)ho.data(), 1, 4, 1); });
    close("sum_dim_f16", Vd{f16v(ho[0])}, {6});
    test_reduce_cols();
}

// ---------------------------------------------------------------------------------------
// softmax

// C up to 1024 runs a warp per row (C = 70: 3 elements a lane, 300: 10, 1000: 32), longer
// rows a block per row; 5 rows on 2 blocks of 2 warps also run a second round of rows
template <typename T> static void softmax_case(const char* dt, double tol, const int C) {
    using namespace sm;
    const int R = 5;
    Vd x = rnd_vec(R * C, -3, 3), dy = rnd_vec(R * C);
    auto xt = cast_vec<T>(x), dyt = cast_vec<T>(dy);
    Vd y(R * C), ly(R * C), dx(R * C), ldx(R * C);
    for (int r = 0; r < R; ++r) {
        double m = -INFINITY, s = 0, sdy = 0, sdyy = 0;
        for (int c = 0; c < C; ++c) m = std::max(m, (double)xt[r * C + c]);
        for (int c = 0; c < C; ++c) s += std::exp((double)xt[r * C + c] - m);
        for (int c = 0; c < C; ++c) {
            y[r * C + c] = std::exp((double)xt[r * C + c] - m) / s;
            ly[r * C + c] = (double)xt[r * C + c] - m - std::log(s);
        }
        for (int c = 0; c < C; ++c) {
            sdyy += (double)dyt[r * C + c] * (double)(T)y[r * C + c];
            sdy += (double)dyt[r * C + c];
        }
        for (int c = 0; c < C; ++c) {
            dx[r * C + c] = (double)(T)y[r * C + c] * ((double)dyt[r * C + c] - sdyy);
            ldx[r * C + c] = (double)dyt[r * C + c] - std::exp((double)(T)ly[r * C + c]) * sdy;
        }
    }
    std::vector<T> out(R * C), g(R * C);
    const std::string rows = " (" + std::to_string(R) + " rows of " + std::to_string(C) + ")";
    typedef void (*Fwd)(const T*, T*, i64, i64);
    typedef void (*Bwd)(const T*, const T*, T*, i64, i64);
    // one form: softmax, its backward, log_softmax, its backward
    auto check = [&](const std::string& form, Fwd f, Bwd fb, Fwd lf, Bwd lfb) {
        const std::string n = std::string("_") + dt + form + rows;
        run(2, 64, [&] { f(xt.data(), out.data(), R, C); });
        close("softmax" + n, out, y, tol, tol);
        run(2, 64, [&] { fb(out.data(), dyt.data(), g.data(), R, C); });
        close("softmax_backward" + n, g, dx, tol, tol);
        run(2, 64, [&] { lf(xt.data(), out.data(), R, C); });
        close("log_softmax" + n, out, ly, tol, tol);
        run(2, 64, [&] { lfb(out.data(), dyt.data(), g.data(), R, C); });
        close("log_softmax_backward" + n, g, ldx, tol, tol);
    };
    // a warp form, on the aligned buffers above (WarpRow's vector order when C is a
    // multiple of its vector) and on misaligned copies (its scalar order)
    auto check_warp = [&](const std::string& form, auto fits, Fwd f, Bwd fb, Fwd lf, Bwd lfb) {
        report(fits(xt.data(), C) == (WarpRow<T, 4>::V > 1 && C % WarpRow<T, 4>::V == 0), std::string(dt) + form + rows + " aligned buffers take the vector order iff T has one and C is a multiple of it", "");
        check(form, f, fb, lf, lfb);
        auto xs = shifted(xt), dys = shifted(dyt), os = shifted(out), gs = shifted(g);
        report(!fits(xs.data() + 1, C), std::string(dt) + form + rows + " misaligned buffers take the scalar order", "");
        const std::string n = std::string("_") + dt + form + " misaligned" + rows;
        run(2, 64, [&] { f(xs.data() + 1, os.data() + 1, R, C); });
        close("softmax" + n, unshifted(os), y, tol, tol);
        run(2, 64, [&] { fb(os.data() + 1, dys.data() + 1, gs.data() + 1, R, C); });
        close("softmax_backward" + n, unshifted(gs), dx, tol, tol);
        run(2, 64, [&] { lf(xs.data() + 1, os.data() + 1, R, C); });
        close("log_softmax" + n, unshifted(os), ly, tol, tol);
        run(2, 64, [&] { lfb(os.data() + 1, dys.data() + 1, gs.data() + 1, R, C); });
        close("log_softmax_backward" + n, unshifted(gs), ldx, tol, tol);
    };
#define SM_FORM(K, dt)                                                                     \
    check_warp(" (warp per row, " #K " a lane)", WarpRow<T, K>::fits,                      \
               softmax_w##K##_##dt, softmax_backward_w##K##_##dt, log_softmax_w##K##_##dt,   \
               log_softmax_backward_w##K##_##dt)
    if constexpr (std::is_same<T, float>::value) {
        check(" (block per row)", softmax_f32, softmax_backward_f32, log_softmax_f32,
              log_softmax_backward_f32);
        if (C <= 128) SM_FORM(4, f32);
        if (C <= 256) SM_FORM(8, f32);
        if (C <= 512) SM_FORM(16, f32);
        if (C <= 1024) SM_FORM(32, f32);
    } else {
        check(" (block per row)", softmax_f64, softmax_backward_f64, log_softmax_f64,
              log_softmax_backward_f64);
        if (C <= 128) SM_FORM(4, f64);
        if (C <= 256) SM_FORM(8, f64);
        if (C <= 512) SM_FORM(16, f64);
        if (C <= 1024) SM_FORM(32, f64);
        std::vector<double> inf(4, -INFINITY), o(4);
        run(1, 32, [&] { softmax_f64(inf.data(), o.data(), 1, 4); });
        close("softmax_f64 of an all -inf row is NaN", o, {NAN, NAN, NAN, NAN});
        run(1, 32, [&] { softmax_w4_f64(inf.data(), o.data(), 1, 4); });
        close("softmax_w4_f64 of an all -inf row is NaN", o, {NAN, NAN, NAN, NAN});
    }
#undef SM_FORM
}

// ---------------------------------------------------------------------------------------
// norm

static Vd layer_norm_ref(const Vd& x, const Vd& w, const Vd& b, int R, int C, double eps) {
    Vd y(R * C);
    for (int r = 0; r < R; ++r) {
        double m = 0, v = 0;
        for (int c = 0; c < C; ++c) m += x[r * C + c];
        m /= C;
        for (int c = 0; c < C; ++c) v += (x[r * C + c] - m) * (x[r * C + c] - m);
        v /= C;
        for (int c = 0; c < C; ++c) y[r * C + c] = (x[r * C + c] - m) / std::sqrt(v + eps) * w[c] + b[c];
    }
    return y;
}

/// d(sum(dy * f(x)))/dx by central differences.
static Vd numeric_grad(const std::function<Vd(const Vd&)>& f, const Vd& x, const Vd& dy) {
    Vd g(x.size());
    const double h = 1e-6;
    for (size_t i = 0; i < x.size(); ++i) {
        Vd xp = x, xm = x;
        xp[i] += h;
        xm[i] -= h;
        const Vd yp = f(xp), ym = f(xm);
        double s = 0;
        for (size_t j = 0; j < dy.size(); ++j) s += dy[j] * (yp[j] - ym[j]);
        g[i] = s / (2 * h);
    }
    return g;
}

static Vd batch_norm_ref(const Vd& x, const Vd& w, const Vd& b, int N, int C, int S, double eps) {
    Vd y(x.size());
    for (int c = 0; c < C; ++c) {
        double m = 0, v = 0;
        for (int n = 0; n < N; ++n)
            for (int s = 0; s < S; ++s) m += x[(n * C + c) * S + s];
        m /= N * S;
        for (int n = 0; n < N; ++n)
            for (int s = 0; s < S; ++s) v += std::pow(x[(n * C + c) * S + s] - m, 2);
        v /= N * S;
        for (int n = 0; n < N; ++n)
            for (int s = 0; s < S; ++s)
                y[(n * C + c) * S + s] = (x[(n * C + c) * S + s] - m) / std::sqrt(v + eps) * w[c] + b[c];
    }
    return y;
}

// the warp-per-row layer norm forms in T: rows of 37 (2 a lane), 300 (10) and 1000 (32);
// 5 rows on 2 blocks of 2 warps (a second round of rows), against the f64 block forms on
// the same (T-rounded) numbers; on aligned buffers (WarpRow's vector order where T has
// one and C is a multiple of it) and on misaligned copies (its scalar order)
template <typename T>
static void layer_norm_warp_case(const char* dt, double tol, double dtol, const int C) {
    using namespace nm;
    typedef typename Ty<T>::acc A;
    const int R = 5;
    const double eps = 1e-5;
    const std::string at = std::string("_") + dt + " (" + std::to_string(R) + " rows of " + std::to_string(C) + ")";
    auto xt = cast_vec<T>(rnd_vec(R * C, -3, 3)), wt = cast_vec<T>(rnd_vec(C)), bt = cast_vec<T>(rnd_vec(C)),
         dyt = cast_vec<T>(rnd_vec(R * C));
    Vd x(xt.begin(), xt.end()), w(wt.begin(), wt.end()), b(bt.begin(), bt.end()), dy(dyt.begin(), dyt.end());
    Vd y(R * C), mean(R), rstd(R), dx(R * C);
    run(3, 64, [&] { layer_norm_f64(x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data(), R, C, eps); });
    run(3, 64, [&] { layer_norm_backward_f64(dy.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(), R, C); });
    std::vector<T> y2(R * C), dx2(R * C);
    std::vector<A> mean2(R), rstd2(R);
    auto xs = shifted(xt), dys = shifted(dyt), ys = shifted(y2), dxs = shifted(dx2);
    typedef WarpRow<T, 8> W;
    report(W::fits(xt.data(), C) == (W::V > 1 && C % W::V == 0) && !W::fits(xs.data() + 1, C),
           "layer_norm_w*" + at + ": aligned buffers take the vector order iff T has one and C is a multiple of it, misaligned the scalar", "");
    typedef void (*Fwd)(const T*, const T*, const T*, T*, A*, A*, i64, i64, double);
    typedef void (*Bwd)(const T*, const T*, const T*, const A*, const A*, T*, i64, i64);
    auto warp = [&](Fwd fwd, Bwd bwd, const char* k) {
        const std::string n = std::string("layer_norm_w") + k, nb = std::string("layer_norm_backward_w") + k;
        run(2, 64, [&] { fwd(xt.data(), wt.data(), bt.data(), y2.data(), mean2.data(), rstd2.data(), R, C, eps); });
        close(n + at, y2, y, tol, tol);
        close(n + " saved mean" + at, mean2, mean, tol, tol);
        close(n + " saved rstd" + at, rstd2, rstd, tol, 0);
        run(2, 64, [&] { bwd(dyt.data(), xt.data(), wt.data(), mean2.data(), rstd2.data(), dx2.data(), R, C); });
        close(nb + at, dx2, dx, dtol, dtol);
        run(2, 64, [&] { fwd(xs.data() + 1, wt.data(), bt.data(), ys.data() + 1, mean2.data(), rstd2.data(), R, C, eps); });
        close(n + " misaligned" + at, unshifted(ys), y, tol, tol);
        run(2, 64, [&] { bwd(dys.data() + 1, xs.data() + 1, wt.data(), mean2.data(), rstd2.data(), dxs.data() + 1, R, C); });
        close(nb + " misaligned" + at, unshifted(dxs), dx, dtol, dtol);
    };
#define LN_FORMS(dt)                                                                       \
    if (C <= 256) warp(layer_norm_w8_##dt, layer_norm_backward_w8_##dt, "8");              \
    if (C <= 512) warp(layer_norm_w16_##dt, layer_norm_backward_w16_##dt, "16");           \
    warp(layer_norm_w32_##dt, layer_norm_backward_w32_##dt, "32");
    if constexpr (std::is_same<T, float>::value) {
        LN_FORMS(f32)
    } else {
        LN_FORMS(f64)
    }
#undef LN_FORMS
}

static void test_norm() {
    using namespace nm;
    {
        const int R = 4, C = 37;
        const double eps = 1e-5;
        Vd x = rnd_vec(R * C, -3, 3), w = rnd_vec(C), b = rnd_vec(C), dy = rnd_vec(R * C);
        Vd y(R * C), mean(R), rstd(R), dx(R * C), dw(C), db(C);
        run(3, 64, [&] { layer_norm_f64(x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data(), R, C, eps); });
        close("layer_norm_f64", y, layer_norm_ref(x, w, b, R, C, eps), 1e-13, 1e-13);
        Vd want_mean(R), want_rstd(R);
        for (int r = 0; r < R; ++r) {
            double m = 0, v = 0;
            for (int c = 0; c < C; ++c) m += x[r * C + c] / C;
            for (int c = 0; c < C; ++c) v += std::pow(x[r * C + c] - m, 2) / C;
            want_mean[r] = m;
            want_rstd[r] = 1 / std::sqrt(v + eps);
        }
        close("layer_norm_f64 saved mean", mean, want_mean, 1e-13, 1e-14);
        close("layer_norm_f64 saved rstd", rstd, want_rstd, 1e-13, 0);
        run(3, 64, [&] { layer_norm_backward_f64(dy.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(), R, C); });
        close("layer_norm_backward_f64 vs finite differences", dx,
              numeric_grad([&](const Vd& xx) { return layer_norm_ref(xx, w, b, R, C, eps); }, x, dy), 1e-6, 1e-7);
        {
            // partials over row chunks of 2 (the params kernel), summed by reduce's fin pass
            const int chunk = 2, chunks = (R + chunk - 1) / chunk;
            const unsigned tiles = (C + 31) / 32;
            std::vector<double> pw(chunks * C), pb(chunks * C);
            emu_launch(dim3{tiles, (unsigned)chunks, 1}, dim3{64, 1, 1}, [&] {
                layer_norm_backward_params_f64(dy.data(), x.data(), mean.data(), rstd.data(), pw.data(), pb.data(), R, C, chunk);
            });
            run(tiles, 32, [&] { rd::sum_cols_fin_f64(pw.data(), dw.data(), 1, chunks, C, chunks, 1.0); });
            run(tiles, 32, [&] { rd::sum_cols_fin_f64(pb.data(), db.data(), 1, chunks, C, chunks, 1.0); });
            // either alone (its own pass) gives the same partials as the pass of both
            std::vector<double> pw1(chunks * C, -1), pb1(chunks * C, -1);
            emu_launch(dim3{tiles, (unsigned)chunks, 1}, dim3{64, 1, 1}, [&] {
                layer_norm_backward_params_f64(dy.data(), x.data(), mean.data(), rstd.data(), pw1.data(), nullptr, R, C, chunk);
            });
            emu_launch(dim3{tiles, (unsigned)chunks, 1}, dim3{64, 1, 1}, [&] {
                layer_norm_backward_params_f64(dy.data(), x.data(), mean.data(), rstd.data(), nullptr, pb1.data(), R, C, chunk);
            });
            close("layer_norm_backward_params_f64 weight partials alone = with the bias's", pw1, Vd(pw.begin(), pw.end()));
            close("layer_norm_backward_params_f64 bias partials alone = with the weight's", pb1, Vd(pb.begin(), pb.end()));
        }
        close("layer_norm_backward_params_f64 dweight vs finite differences", dw,
              numeric_grad([&](const Vd& ww) { return layer_norm_ref(x, ww, b, R, C, eps); }, w, dy), 1e-6, 1e-7);
        close("layer_norm_backward_params_f64 dbias vs finite differences", db,
              numeric_grad([&](const Vd& bb) { return layer_norm_ref(x, w, bb, R, C, eps); }, b, dy), 1e-6, 1e-7);
        auto xf = cast_vec<float>(x);
        std::vector<float> yf(R * C);
        run(1, 32, [&] { layer_norm_f32(xf.data(), nullptr, nullptr, yf.data(), nullptr, nullptr, R, C, eps); });
        close("layer_norm_f32 without affine or saved stats", yf,
              layer_norm_ref(Vd(xf.begin(), xf.end()), Vd(C, 1), Vd(C, 0), R, C, eps), 1e-5, 1e-5);
    }
    for (int C : {37, 300, 1000}) {
        layer_norm_warp_case<double>("f64", 1e-13, 1e-12, C);
        layer_norm_warp_case<float>("f32", 1e-5, 1e-5, C);
        const int R = 5;
        const double eps = 1e-5;
        const std::string at = " (" + std::to_string(R) + " rows of " + std::to_string(C) + ")";
        auto xf = cast_vec<float>(rnd_vec(R * C, -3, 3));
        std::vector<float> yf(R * C);
        run(1, 64, [&] { layer_norm_w32_f32(xf.data(), nullptr, nullptr, yf.data(), nullptr, nullptr, R, C, eps); });
        close("layer_norm_w32_f32 without affine or saved stats" + at, yf,
              layer_norm_ref(Vd(xf.begin(), xf.end()), Vd(C, 1), Vd(C, 0), R, C, eps), 1e-5, 1e-5);
    }
    {
        const int N = 3, C = 4, S = 5;
        const double eps = 1e-5;
        Vd x = rnd_vec(N * C * S, -2, 3), w = rnd_vec(C), b = rnd_vec(C), dy = rnd_vec(N * C * S);
        Vd mean(C), var(C), y(N * C * S), s1(C), s2(C), dw(C), db(C), dx(N * C * S);
        run(2, 32, [&] { batch_norm_stats_f64(x.data(), mean.data(), var.data(), N, C, S); });
        Vd wm(C, 0), wv(C, 0);
        for (int c = 0; c < C; ++c) {
            for (int n = 0; n < N; ++n)
                for (int s = 0; s < S; ++s) wm[c] += x[(n * C + c) * S + s] / (N * S);
            for (int n = 0; n < N; ++n)
                for (int s = 0; s < S; ++s) wv[c] += std::pow(x[(n * C + c) * S + s] - wm[c], 2) / (N * S);
        }
        close("batch_norm_stats_f64 mean", mean, wm, 1e-13, 1e-14);
        close("batch_norm_stats_f64 biased var", var, wv, 1e-13, 1e-14);
        run(2, 32, [&] { batch_norm_apply_f64(x.data(), mean.data(), var.data(), w.data(), b.data(), y.data(), N, C, S, eps); });
        close("batch_norm_apply_f64", y, batch_norm_ref(x, w, b, N, C, S, eps), 1e-13, 1e-13);
        run(2, 32, [&] { batch_norm_backward_reduce_f64(dy.data(), x.data(), mean.data(), var.data(), s1.data(), s2.data(), dw.data(), db.data(), N, C, S, eps); });
        close("batch_norm_backward_reduce_f64 dweight vs finite differences", dw,
              numeric_grad([&](const Vd& ww) { return batch_norm_ref(x, ww, b, N, C, S, eps); }, w, dy), 1e-6, 1e-7);
        close("batch_norm_backward_reduce_f64 dbias vs finite differences", db,
              numeric_grad([&](const Vd& bb) { return batch_norm_ref(x, w, bb, N, C, S, eps); }, b, dy), 1e-6, 1e-7);
        run(3, 8, [&] { batch_norm_backward_apply_f64(dy.data(), x.data(), mean.data(), var.data(), w.data(), s1.data(), s2.data(), dx.data(), N, C, S, eps); });
        close("batch_norm_backward_apply_f64 vs finite differences (training mode)", dx,
              numeric_grad([&](const Vd& xx) { return batch_norm_ref(xx, w, b, N, C, S, eps); }, x, dy), 1e-6, 1e-7);
    }
}

// ---------------------------------------------------------------------------------------
// index

static void test_index() {
    using namespace ix;
    {
        // embedding: vocab 4, dim 3
        std::vector<float> wt = {0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32}, out(9);
        std::vector<i64> ids = {2, 3, 0};
        int status = 0;
        run(1, 4, [&] { index_select_f32(wt.data(), ids.data(), out.data(), 1, 4, 3, 3, &status); });
        close("index_select_f32 (embedding)", out, {20, 21, 22, 30, 31, 32, 0, 1, 2});
        report(status == 0, "index_select_f32 status stays 0", "status set");
        // a negative id is out of range (as in the CPU runtime), not counted from the end
        std::vector<i64> neg = {2, -1, 0};
        run(1, 4, [&] { index_select_f32(wt.data(), neg.data(), out.data(), 1, 4, 3, 3, &status); });
        close("index_select_f32 writes 0 for a negative id", out, {20, 21, 22, 0, 0, 0, 0, 1, 2});
        report(status == 1, "index_select_f32 flags a negative id", "status not set");
        status = 0;
        std::vector<i64> bad = {1, 4, -5};
        run(1, 4, [&] { index_select_f32(wt.data(), bad.data(), out.data(), 1, 4, 3, 3, &status); });
        close("index_select_f32 writes 0 for bad ids", out, {10, 11, 12, 0, 0, 0, 0, 0, 0});
        report(status == 1, "index_select_f32 flags bad ids", "status not set");
        // embedding backward with a repeated id
        std::vector<float> g = {1, 2, 3, 4, 5, 6, 7, 8, 9}, gw(12, 0);
        std::vector<i64> rep = {1, 3, 1};
        run(2, 2, [&] { index_add_f32(g.data(), rep.data(), gw.data(), 1, 4, 3, 3, nullptr); });
        close("index_add_f32 sums repeated ids", gw, {0, 0, 0, 8, 10, 12, 0, 0, 0, 4, 5, 6});
        std::vector<uint16_t> gh, gwh(12, 0);
        for (float v : g) gh.push_back(h16(v * 0.5f));
        run(2, 2, [&] { index_add_f16((f16_t*)gh.data(), rep.data(), (f16_t*)gwh.data(), 1, 4, 3, 3, nullptr); });
        Vd got;
        for (auto v : gwh) got.push_back(f16v(v));
        close("index_add_f16 (16-bit CAS) sums repeated ids", got, {0, 0, 0, 4, 5, 6, 0, 0, 0, 2, 2.5, 3});
        // index_select over a middle dim: src [2, 3, 2], pick [2, 0]
        std::vector<i64> s = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, so(8);
        std::vector<i64> pick = {2, 0};
        run(1, 32, [&] { index_select_i64(s.data(), pick.data(), so.data(), 2, 3, 2, 2, nullptr); });
        close("index_select_i64 middle dim", so, {5, 6, 1, 2, 11, 12, 7, 8});
    }
    {
        // gather / scatter_add along dim 1 of [2, 4, 3] with idx [2, 2, 3]
        const int O = 2, D = 4, J = 2, I = 3;
        Vd src = rnd_vec(O * D * I);
        std::vector<i64> idx(O * J * I);
        for (auto& k : idx) k = (i64)rnd(0, D);
        Vd want(O * J * I);
        for (int o = 0; o < O; ++o)
            for (int j = 0; j < J; ++j)
                for (int i = 0; i < I; ++i) {
                    i64 k = idx[(o * J + j) * I + i];
                    want[(o * J + j) * I + i] = src[(o * D + k) * I + i];
                }
        std::vector<double> out(O * J * I);
        run(2, 4, [&] { gather_f64(src.data(), idx.data(), out.data(), O, D, J, I, nullptr); });
        close("gather_f64 dim 1", out, want);
        Vd acc(O * D * I, 0), wacc(O * D * I, 0);
        for (int o = 0; o < O; ++o)
            for (int j = 0; j < J; ++j)
                for (int i = 0; i < I; ++i) {
                    i64 k = idx[(o * J + j) * I + i];
                    wacc[(o * D + k) * I + i] += out[(o * J + j) * I + i];
                }
        run(2, 4, [&] { scatter_add_f64(out.data(), idx.data(), acc.data(), O, D, J, I, nullptr); });
        close("scatter_add_f64 dim 1", acc, wacc, 1e-15, 1e-15);
        std::vector<i64> ia(O * D * I, 0), isrc(O * J * I, 1);
        int status = 0;
        idx[0] = 9;
        idx[1] = -1; // negative: out of range too
        run(1, 32, [&] { scatter_add_i64(isrc.data(), idx.data(), ia.data(), O, D, J, I, &status); });
        i64 total = 0;
        for (auto v : ia) total += v;
        report(status == 1 && total == O * J * I - 2, "scatter_add_i64 skips and flags bad indices",
               "status " + std::to_string(status) + " total " + std::to_string(total));
    }
    {
        std::vector<float> x = {1, 2, 3, 4, 5, 6}, out(6);
        std::vector<uint8_t> m = {1, 0, 1}; // a row mask broadcast over 2 rows
        auto lx = layout<Layout>({2, 3}), lm = layout<Layout>({2, 3}, {0, 1});
        run(1, 32, [&] { masked_fill_f32(x.data(), lx, m.data(), lm, -INFINITY, out.data(), 6); });
        close("masked_fill_f32 broadcast mask", out, {-INFINITY, 2, -INFINITY, -INFINITY, 5, -INFINITY});
        std::vector<uint8_t> c = {1, 0}; // a column condition
        std::vector<float> b = {-1};
        auto lc = layout<Layout>({2, 3}, {1, 0}), lb = layout<Layout>({2, 3}, {0, 0});
        run(1, 32, [&] { where_f32(c.data(), lc, x.data(), lx, b.data(), lb, out.data(), 6); });
        close("where_f32 broadcast", out, {1, 2, 3, -1, -1, -1});
        std::vector<uint8_t> ones(2 * 3 * 3, 1), tri(18);
        run(1, 32, [&] { triu_bool(ones.data(), tri.data(), 2, 3, 3, 1); });
        close("triu_bool k=1 (causal mask)", tri, {0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0});
        std::vector<double> d(6, 7), dout(6);
        run(1, 32, [&] { tril_f64(d.data(), dout.data(), 1, 2, 3, 0); });
        close("tril_f64 k=0 on [2, 3]", dout, {7, 0, 0, 7, 7, 0});
    }
}

// ---------------------------------------------------------------------------------------
// random: streams printed for emulated.rs to compare with flint_runtime::Generator

static void test_random() {
    using namespace rn;
    const uint64_t seed = 0x0123456789ABCDEFull, offset = 0xFFFFFFF8ull;
    const int n = 37;
    const double low = -1.5, high = 2.25;
    std::vector<float> f(n);
    std::vector<double> d(n);
    std::vector<uint16_t> h(n);
    run(2, 8, [&] { philox_uniform_f32(f.data(), n, seed, offset, low, high); });
    std::printf("data uniform f32 %" PRIu64 " %" PRIu64 " %d %016" PRIx64 " %016" PRIx64, seed, offset, n, bits(low), bits(high));
    print_hex(f);
    std::printf("\n");
    run(2, 8, [&] { philox_uniform_f64(d.data(), n, seed, offset, low, high); });
    std::printf("data uniform f64 %" PRIu64 " %" PRIu64 " %d %016" PRIx64 " %016" PRIx64, seed, offset, n, bits(low), bits(high));
    print_hex(d);
    std::printf("\n");
    run(2, 8, [&] { philox_uniform_f16((f16_t*)h.data(), n, seed, offset, low, high); });
    std::printf("data uniform f16 %" PRIu64 " %" PRIu64 " %d %016" PRIx64 " %016" PRIx64, seed, offset, n, bits(low), bits(high));
    print_hex(h);
    std::printf("\n");
    run(2, 8, [&] { philox_uniform_bf16((bf16_t*)h.data(), n, seed, offset, low, high); });
    std::printf("data uniform bf16 %" PRIu64 " %" PRIu64 " %d %016" PRIx64 " %016" PRIx64, seed, offset, n, bits(low), bits(high));
    print_hex(h);
    std::printf("\n");
    const double mean = 0.25, sd = 1.5;
    run(2, 8, [&] { philox_normal_f32(f.data(), n, seed, offset, mean, sd); });
    std::printf("data normal f32 %" PRIu64 " %" PRIu64 " %d %016" PRIx64 " %016" PRIx64, seed, offset, n, bits(mean), bits(sd));
    print_hex(f);
    std::printf("\n");
    run(2, 8, [&] { philox_normal_f64(d.data(), n, seed, offset, mean, sd); });
    std::printf("data normal f64 %" PRIu64 " %" PRIu64 " %d %016" PRIx64 " %016" PRIx64, seed, offset, n, bits(mean), bits(sd));
    print_hex(d);
    std::printf("\n");
    run(2, 8, [&] { philox_normal_bf16((bf16_t*)h.data(), n, seed, offset, mean, sd); });
    std::printf("data normal bf16 %" PRIu64 " %" PRIu64 " %d %016" PRIx64 " %016" PRIx64, seed, offset, n, bits(mean), bits(sd));
    print_hex(h);
    std::printf("\n");
    std::vector<uint8_t> keep(n);
    run(2, 8, [&] { philox_bernoulli_bool(keep.data(), n, seed, offset, 0.3); });
    std::printf("data bernoulli %" PRIu64 " %" PRIu64 " %d %016" PRIx64, seed, offset, n, bits(0.3));
    print_hex(keep);
    std::printf("\n");
    std::vector<i64> ints(n);
    run(2, 8, [&] { philox_randint_i64(ints.data(), n, seed, offset, -1000, 3); });
    std::printf("data randint %" PRIu64 " %" PRIu64 " %d -1000 3", seed, offset, n);
    print_hex(ints);
    std::printf("\n");
    // dropout at offset 0 (what manual_seed(seed) then functional::dropout draws)
    const double p = 0.4;
    std::vector<float> x(n), y(n), dx(n);
    for (int i = 0; i < n; ++i) x[i] = (float)rnd(-3, 3);
    run(2, 8, [&] { dropout_f32(x.data(), y.data(), keep.data(), n, seed, 0, p); });
    std::printf("data dropout f32 %" PRIu64 " %d %016" PRIx64, seed, n, bits(p));
    print_hex(x);
    print_hex(y);
    print_hex(keep);
    std::printf("\n");
    run(1, 32, [&] { dropout_backward_f32(x.data(), keep.data(), dx.data(), n, 1 / (1 - p)); });
    Vd want;
    for (int i = 0; i < n; ++i) want.push_back(keep[i] ? x[i] * (float)(1 / (1 - p)) : 0.0);
    close("dropout_backward_f32 = dy * keep / (1 - p)", dx, want);
    close("dropout_f32 output = its backward of x", y, want);
    {
        // buffers off their vector alignment take the element-at-a-time path: the same
        // draws (flint_bernoulli_at) and numbers
        const int m = n - 1;
        std::vector<float> y2(n + 1), dx2(n + 1);
        std::vector<uint8_t> keep2(n + 1);
        const unsigned long long thr = rn::flint_bernoulli_threshold(1 - p);
        run(2, 8, [&] { rn::dropout_f32(x.data() + 1, y2.data() + 1, keep2.data() + 1, m, seed, 0, p); });
        Vd want2, keep_want;
        for (int i = 0; i < m; ++i) {
            const bool k = rn::flint_bernoulli_at(seed, 0, i, thr) != 0;
            keep_want.push_back(k);
            want2.push_back(k ? x[i + 1] * (float)(1 / (1 - p)) : 0.0);
        }
        close("dropout_f32 on unaligned buffers", std::vector<float>(y2.begin() + 1, y2.begin() + 1 + m), want2);
        close("dropout_f32 mask on unaligned buffers", std::vector<uint8_t>(keep2.begin() + 1, keep2.begin() + 1 + m), keep_want);
        run(1, 32, [&] { rn::dropout_backward_f32(x.data() + 1, keep2.data() + 1, dx2.data() + 1, m, 1 / (1 - p)); });
        close("dropout_backward_f32 on unaligned buffers", std::vector<float>(dx2.begin() + 1, dx2.begin() + 1 + m), want2);
    }
}

// ---------------------------------------------------------------------------------------
// optim: steps printed for emulated.rs to replay with flint_runtime's Sgd and Adam

template <typename T, typename K>
static void optim_data(const char* what, const K& step, int n, int steps) {
    std::vector<T> p(n), g(n);
    for (auto& v : p) v = (T)rnd(-1, 1);
    std::printf("data %s %d %d", what, n, steps);
    print_hex(p);
    for (int s = 0; s < steps; ++s) {
        for (auto& v : g) v = (T)rnd(-1, 1);
        step(p, g, s);
        print_hex(g);
        print_hex(p);
    }
    std::printf("\n");
}

static void test_optim() {
    using namespace op;
    const int n = 5, steps = 3;
    {
        std::vector<double> buf(n);
        // Sgd::new(p, 0.1).momentum(0.9).dampening(0.1).weight_decay(0.01).nesterov(true)
        optim_data<double>("sgd f64", [&](std::vector<double>& p, std::vector<double>& g, int s) {
            run(1, 32, [&] { sgd_f64(p.data(), g.data(), buf.data(), n, 0.1, 0.9, 0.1, 0.01, 1, s == 0); });
        }, n, steps);
        std::vector<float> fbuf(n);
        // Sgd::new(p, 0.05).momentum(0.8)
        optim_data<float>("sgd f32", [&](std::vector<float>& p, std::vector<float>& g, int s) {
            run(1, 32, [&] { sgd_f32(p.data(), g.data(), fbuf.data(), n, 0.05, 0.8, 0.0, 0.0, 0, s == 0); });
        }, n, steps);
    }
    {
        std::vector<double> m(n, 0), v(n, 0), vmax(n, 0);
        // Adam::new(p, 0.01).weight_decay(0.1).amsgrad(true)
        optim_data<double>("adam f64", [&](std::vector<double>& p, std::vector<double>& g, int s) {
            const int t = s + 1;
            const double bc1 = 1 - std::pow(0.9, t), bc2 = std::sqrt(1 - std::pow(0.999, t));
            run(1, 32, [&] { adam_f64(p.data(), g.data(), m.data(), v.data(), vmax.data(), n, 0.01, 0.9, 0.999, 1e-8, 0.1, 0, bc1, bc2); });
        }, n, steps);
        std::vector<float> fm(n, 0), fv(n, 0);
        // Adam::adamw(p, 0.02) (weight decay 0.01, decoupled)
        optim_data<float>("adamw f32", [&](std::vector<float>& p, std::vector<float>& g, int s) {
            const int t = s + 1;
            const double bc1 = 1 - std::pow(0.9, t), bc2 = std::sqrt(1 - std::pow(0.999, t));
            run(1, 32, [&] { adam_f32(p.data(), g.data(), fm.data(), fv.data(), nullptr, n, 0.02, 0.9, 0.999, 1e-8, 0.01, 1, bc1, bc2); });
        }, n, steps);
    }
}

// ---------------------------------------------------------------------------------------
// attention: fused kernels vs the materialized computation

struct AttCase {
    const char* name;
    int B, H, Tq, Tk, D, Dv;
    bool causal, mask, bias, transposed_q, block_row; // block_row: query 1 of batch 0 sees nothing
    int warps;
    double dropout; // 0: none
};

/// x as an element of T (f32, f64, f16 or bf16), and back.
template <typename T> static T att_elem(double x) { return at::Ty<T>::from_f64(x); }
template <typename T> static double att_val(T x) { return at::Ty<T>::to_f64(x); }
/// x rounded to T.
template <typename T> static double att_round(double x) { return att_val(att_elem<T>(x)); }
template <typename T> static std::vector<T> att_elems(const Vd& v) {
    std::vector<T> r;
    for (double x : v) r.push_back(att_elem<T>(x));
    return r;
}
template <typename T> static Vd att_vals(const std::vector<T>& v) {
    Vd r;
    for (const T& x : v) r.push_back(att_val(x));
    return r;
}

/// The dropout factor of score (bh, i, j) as the kernels draw it (seed 7, offset 40):
/// word e % 4 of block offset + e / 4, e = (bh·Tq + i)·Tk + j, factor 1/(1-p) rounded to T.
template <typename T> static double att_drop_factor(const AttCase& c, int bh, int i, int j) {
    if (c.dropout <= 0) return 1;
    const i64 e = ((i64)bh * c.Tq + i) * c.Tk + j;
    const bool keep = at::flint_bernoulli_at(7, 40, e, at::flint_bernoulli_threshold(1 - c.dropout));
    return keep ? att_round<T>(1 / (1 - c.dropout)) : 0;
}

struct AttRef {
    Vd out, lse, dq, dk, dv;
};

/// dropout(softmax(q kᵀ·scale + bias, masked)) v and its gradients, materialized, in
/// double (the dropout factors of T).
template <typename T>
static AttRef attention_ref(const AttCase& c, const Vd& q, const Vd& k, const Vd& v, const Vd& dout,
                            const std::vector<uint8_t>& mask, const Vd& bias, double scale) {
    AttRef r;
    r.out.assign(c.B * c.H * c.Tq * c.Dv, 0);
    r.lse.assign(c.B * c.H * c.Tq, 0);
    r.dq.assign(c.B * c.H * c.Tq * c.D, 0);
    r.dk.assign(c.B * c.H * c.Tk * c.D, 0);
    r.dv.assign(c.B * c.H * c.Tk * c.Dv, 0);
    for (int b = 0; b < c.B; ++b)
        for (int h = 0; h < c.H; ++h) {
            const int bh = b * c.H + h;
            for (int i = 0; i < c.Tq; ++i) {
                Vd s(c.Tk), p(c.Tk, 0), dp(c.Tk, 0);
                bool any = false;
                double m = -INFINITY;
                for (int j = 0; j < c.Tk; ++j) {
                    bool hide = (c.causal && j > i) || (c.mask && !mask[b * c.Tk + j]) ||
                                (c.block_row && b == 0 && i == 1);
                    double dot = 0;
                    for (int e = 0; e < c.D; ++e) dot += q[(bh * c.Tq + i) * c.D + e] * k[(bh * c.Tk + j) * c.D + e];
                    s[j] = hide ? -INFINITY : dot * scale + (c.bias ? bias[(h * c.Tq + i) * c.Tk + j] : 0);
                    if (!hide) any = true, m = std::max(m, s[j]);
                }
                const int row = bh * c.Tq + i;
                if (!any) {
                    for (int e = 0; e < c.Dv; ++e) r.out[row * c.Dv + e] = NAN;
                    r.lse[row] = -INFINITY;
                    continue; // no gradient flows through a fully masked row
                }
                double z = 0;
                for (int j = 0; j < c.Tk; ++j) z += std::exp(s[j] - m);
                r.lse[row] = m + std::log(z);
                for (int j = 0; j < c.Tk; ++j) p[j] = std::exp(s[j] - m) / z;
                for (int j = 0; j < c.Tk; ++j) {
                    const double f = att_drop_factor<T>(c, bh, i, j);
                    for (int e = 0; e < c.Dv; ++e) {
                        r.out[row * c.Dv + e] += p[j] * f * v[(bh * c.Tk + j) * c.Dv + e];
                        r.dv[(bh * c.Tk + j) * c.Dv + e] += p[j] * f * dout[row * c.Dv + e];
                        dp[j] += f * dout[row * c.Dv + e] * v[(bh * c.Tk + j) * c.Dv + e];
                    }
                }
                double pdp = 0;
                for (int j = 0; j < c.Tk; ++j) pdp += p[j] * dp[j];
                for (int j = 0; j < c.Tk; ++j) {
                    const double ds = p[j] * (dp[j] - pdp) * scale;
                    for (int e = 0; e < c.D; ++e) {
                        r.dq[row * c.D + e] += ds * k[(bh * c.Tk + j) * c.D + e];
                        r.dk[(bh * c.Tk + j) * c.D + e] += ds * q[row * c.D + e];
                    }
                }
            }
        }
    return r;
}

/// The kernels of T: `fwd`, `delta`, `dq`, `dkv` (the SIMT family) and, for f32, f16 and
/// bf16, `tc_fwd`, `tc_dq`, `tc_dkv` (tensor cores).
template <typename T> struct AttKernels;
#define ATT_KERNELS(dt, T)                                             \
    template <> struct AttKernels<T> {                                 \
        static constexpr const char* name = #dt;                       \
        static constexpr auto fwd = at::attention_forward_##dt;        \
        static constexpr auto delta = at::attention_backward_delta_##dt; \
        static constexpr auto dq = at::attention_backward_dq_##dt;     \
        static constexpr auto dkv = at::attention_backward_dkv_##dt;   \
        ATT_TC_KERNELS_##dt                                            \
    };
#define ATT_TC_KERNELS_f64
#define ATT_TC_KERNELS_TC(dt)                                          \
    static constexpr auto tc_fwd = at::attention_tc_forward_##dt;     \
    static constexpr auto tc_dq = at::attention_tc_backward_dq_##dt;  \
    static constexpr auto tc_dkv = at::attention_tc_backward_dkv_##dt;
#define ATT_TC_KERNELS_f32 ATT_TC_KERNELS_TC(f32)
#define ATT_TC_KERNELS_f16 ATT_TC_KERNELS_TC(f16)
#define ATT_TC_KERNELS_bf16 ATT_TC_KERNELS_TC(bf16)
ATT_KERNELS(f32, float)
ATT_KERNELS(f64, double)
ATT_KERNELS(f16, at::f16_t)
ATT_KERNELS(bf16, at::bf16_t)

/// `x` of [B, H, T, W] rearranged into [B, T, H, W] order (`to_bthw`), or back.
template <typename V> static V att_bthw(const V& x, int B, int H, int T, int W, bool to_bthw) {
    V y(x.size());
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
            for (int t = 0; t < T; ++t)
                for (int w = 0; w < W; ++w) {
                    const size_t bh = (((size_t)b * H + h) * T + t) * W + w, bt = (((size_t)b * T + t) * H + h) * W + w;
                    if (to_bthw) y[bt] = x[bh];
                    else y[bh] = x[bt];
                }
    return y;
}

/// Runs case `c` in T through the SIMT kernels (tolerance `tol` against the double
/// reference on the same T inputs) and, where T has them and the heads fit, the
/// tensor-core kernels (tolerance `tc_tol`).
template <typename T> static void attention_case(const AttCase& c, double tol, double tc_tol) {
    using namespace at;
    const int B = c.B, H = c.H, Tq = c.Tq, Tk = c.Tk, D = c.D, Dv = c.Dv;
    Vd q = rnd_vec(B * H * Tq * D), k = rnd_vec(B * H * Tk * D), v = rnd_vec(B * H * Tk * Dv);
    Vd dout = rnd_vec(B * H * Tq * Dv), bias = rnd_vec(H * Tq * Tk, -1, 1);
    for (auto* x : {&q, &k, &v, &dout, &bias})
        for (auto& e : *x) e = att_round<T>(e); // exactly representable in T
    std::vector<uint8_t> mask(B * Tk, 1);
    if (c.mask) {
        for (int j = Tk - 2; j < Tk; ++j) mask[0 * Tk + j] = 0; // batch 0: last 2 keys padded
        mask[(B - 1) * Tk + 0] = 0;                              // last batch: key 0 hidden
    }
    std::vector<uint8_t> full_mask; // c.block_row: mask [B, 1, Tq, Tk]
    AttentionParams p{};
    p.batch = B, p.heads = H, p.tq = Tq, p.tk = Tk, p.d = D, p.dv = Dv;
    p.scale = 1 / std::sqrt((double)D);
    p.causal = c.causal;
    p.seed = 7, p.offset = 40, p.dropout = c.dropout;
    // q stored as [B, Tq, H, D] (the layout before transpose(1, 2)) when transposed_q
    std::vector<T> qs(q.size());
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
            for (int i = 0; i < Tq; ++i)
                for (int e = 0; e < D; ++e) {
                    const size_t src = ((size_t)(b * H + h) * Tq + i) * D + e;
                    const size_t dst = c.transposed_q ? ((size_t)(b * Tq + i) * H + h) * D + e : src;
                    qs[dst] = att_elem<T>(q[src]);
                }
    // (b, h, t) strides of [B, H, R, W], stored in [B, R, H, W] order when `bthw`
    auto rows = [&](i64(&s)[3], int R, int W, bool bthw) {
        if (bthw) {
            s[0] = (i64)R * H * W, s[1] = W, s[2] = (i64)H * W;
        } else {
            s[0] = (i64)H * R * W, s[1] = (i64)R * W, s[2] = W;
        }
    };
    // with transposed_q, out, dout and dq are in q's order too (as the host allocates
    // them); k, v, dk, dv stay contiguous
    const bool tr = c.transposed_q;
    rows(p.q_stride, Tq, D, tr), rows(p.o_stride, Tq, Dv, tr), rows(p.dq_stride, Tq, D, tr);
    rows(p.k_stride, Tk, D, false), rows(p.v_stride, Tk, Dv, false);
    rows(p.dk_stride, Tk, D, false), rows(p.dv_stride, Tk, Dv, false);
    // an output stored in [B, R, H, W] order, back in [B, H, R, W] for the comparisons
    auto un = [&](const auto& x, int R, int W) { return tr ? att_bthw(x, B, H, R, W, false) : x; };
    const uint8_t* mask_ptr = nullptr;
    if (c.block_row) {
        full_mask.assign((size_t)B * Tq * Tk, 1);
        for (int b = 0; b < B; ++b)
            for (int i = 0; i < Tq; ++i)
                for (int j = 0; j < Tk; ++j)
                    full_mask[((size_t)b * Tq + i) * Tk + j] = (c.mask ? mask[b * Tk + j] : 1) && !(b == 0 && i == 1);
        p.mask_stride[0] = (i64)Tq * Tk, p.mask_stride[1] = 0, p.mask_stride[2] = Tk, p.mask_stride[3] = 1;
        mask_ptr = full_mask.data();
    } else if (c.mask) {
        p.mask_stride[0] = Tk, p.mask_stride[1] = 0, p.mask_stride[2] = 0, p.mask_stride[3] = 1;
        mask_ptr = mask.data();
    }
    std::vector<T> bias_t = att_elems<T>(bias);
    if (c.bias) {
        p.bias_stride[0] = 0, p.bias_stride[1] = (i64)Tq * Tk, p.bias_stride[2] = Tk, p.bias_stride[3] = 1;
    }
    const T* bias_ptr = c.bias ? bias_t.data() : nullptr;
    std::vector<T> kt = att_elems<T>(k), vt = att_elems<T>(v);
    std::vector<T> dot = att_elems<T>(tr ? att_bthw(dout, B, H, Tq, Dv, true) : dout);
    std::vector<T> out(B * H * Tq * Dv), dq(q.size()), dk(k.size()), dv(v.size());
    typedef typename Ty<T>::acc A;
    std::vector<A> lse(B * H * Tq), delta(B * H * Tq);
    const AttRef r = attention_ref<T>(c, q, k, v, dout, mask, bias, p.scale);
    const unsigned W = c.warps;
    const unsigned qtiles = (Tq + W - 1) / W, ktiles = (Tk + W - 1) / W;
    const std::string n = std::string(c.name) + " " + AttKernels<T>::name;
    emu_launch(dim3{qtiles, (unsigned)(B * H), 1}, dim3{32 * W, 1, 1},
               [&] { AttKernels<T>::fwd(qs.data(), kt.data(), vt.data(), mask_ptr, bias_ptr, out.data(), lse.data(), p); });
    close("attention_forward " + n + " out", att_vals(un(out, Tq, Dv)), r.out, tol, tol);
    close("attention_forward " + n + " lse", lse, r.lse, tol, tol);
    run(2, 64, [&] { AttKernels<T>::delta(out.data(), dot.data(), delta.data(), p); });
    // a small grid: exercise the grid-stride loops over query tiles and (b, h)
    emu_launch(dim3{(qtiles + 1) / 2, (unsigned)(B * H + 1) / 2, 1}, dim3{32 * W, 1, 1},
               [&] { AttKernels<T>::dq(qs.data(), kt.data(), vt.data(), mask_ptr, bias_ptr, dot.data(), lse.data(), delta.data(), dq.data(), p); });
    emu_launch(dim3{ktiles, (unsigned)(B * H), 1}, dim3{32 * W, 1, 1},
               [&] { AttKernels<T>::dkv(qs.data(), kt.data(), vt.data(), mask_ptr, bias_ptr, dot.data(), lse.data(), delta.data(), dk.data(), dv.data(), p); });
    close("attention_backward " + n + " dq", att_vals(un(dq, Tq, D)), r.dq, tol, tol);
    close("attention_backward " + n + " dk", att_vals(dk), r.dk, tol, tol);
    close("attention_backward " + n + " dv", att_vals(dv), r.dv, tol, tol);
    if constexpr (!std::is_same<T, double>::value) {
        if (D > ATT_TC_HD || Dv > ATT_TC_HD) return;
        // the tensor-core kernels on the same case (f32: 3xTF32 products, about f32's
        // accuracy; f16/bf16: P and dS rounded to T for their products)
        std::vector<T> out2(out.size(), att_elem<T>(-9)), dq2(dq.size(), att_elem<T>(-9));
        std::vector<T> dk2(dk.size(), att_elem<T>(-9)), dv2(dv.size(), att_elem<T>(-9));
        std::vector<float> lse2(lse.size(), -9), delta2(delta.size());
        const unsigned bh = (unsigned)(B * H);
        emu_launch(dim3{(unsigned)(Tq + 63) / 64, bh, 1}, dim3{128, 1, 1},
                   [&] { AttKernels<T>::tc_fwd(qs.data(), kt.data(), vt.data(), mask_ptr, bias_ptr, out2.data(), lse2.data(), p); });
        close("attention_tc_forward " + n + " out", att_vals(un(out2, Tq, Dv)), r.out, tc_tol, tc_tol);
        close("attention_tc_forward " + n + " lse", lse2, r.lse, tc_tol, tc_tol);
        run(2, 64, [&] { AttKernels<T>::delta(out2.data(), dot.data(), delta2.data(), p); });
        // dq on a small grid (the grid-stride loops), dkv on the full one
        emu_launch(dim3{(unsigned)((Tq + 31) / 32 + 1) / 2, (bh + 1) / 2, 1}, dim3{64, 1, 1},
                   [&] { AttKernels<T>::tc_dq(qs.data(), kt.data(), vt.data(), mask_ptr, bias_ptr, dot.data(), lse2.data(), delta2.data(), dq2.data(), p); });
        emu_launch(dim3{(unsigned)(Tk + 31) / 32, bh, 1}, dim3{64, 1, 1},
                   [&] { AttKernels<T>::tc_dkv(qs.data(), kt.data(), vt.data(), mask_ptr, bias_ptr, dot.data(), lse2.data(), delta2.data(), dk2.data(), dv2.data(), p); });
        close("attention_tc_backward " + n + " dq", att_vals(un(dq2, Tq, D)), r.dq, tc_tol, tc_tol);
        close("attention_tc_backward " + n + " dk", att_vals(dk2), r.dk, tc_tol, tc_tol);
        close("attention_tc_backward " + n + " dv", att_vals(dv2), r.dv, tc_tol, tc_tol);
    }
}

/// The TF32 pieces and the emulated mma itself: hi + lo splits x within f32's rounding,
/// and one m16n8k8 product of known fragments equals the loop over its definition.
static void test_tf32_mma() {
    using namespace at;
    bool ok = true;
    for (float x : {1.0f, -3.14159265f, 1e-20f, 123456.789f, -0.1f}) {
        u32 hi, lo;
        att_split(x, hi, lo);
        ok = ok && (hi & 0x1fffu) == 0 && (lo & 0x1fffu) == 0;
        ok = ok && std::fabs((double)__uint_as_float(hi) + __uint_as_float(lo) - x) <= std::fabs(x) * 1e-7;
    }
    report(ok, "tf32 split: hi and lo are TF32, hi + lo = x", ok ? "" : "a split is off");
    // A (16 x 8) and B (8 x 8) small integers (exact in TF32): D = A B + C
    double A[16][8], Bm[8][8], C[16][8];
    for (int r = 0; r < 16; ++r)
        for (int k = 0; k < 8; ++k) A[r][k] = (r * 3 + k * 5) % 7 - 3;
    for (int k = 0; k < 8; ++k)
        for (int n = 0; n < 8; ++n) Bm[k][n] = (k * 2 + n * 3) % 5 - 2;
    for (int r = 0; r < 16; ++r)
        for (int n = 0; n < 8; ++n) C[r][n] = r - n;
    std::vector<double> got(16 * 8, -99), want(16 * 8);
    for (int r = 0; r < 16; ++r)
        for (int n = 0; n < 8; ++n) {
            double a = C[r][n];
            for (int k = 0; k < 8; ++k) a += A[r][k] * Bm[k][n];
            want[r * 8 + n] = a;
        }
    emu_launch(dim3{1, 1, 1}, dim3{32, 1, 1}, [&] {
        const int lane = threadIdx.x, g = lane / 4, q = lane % 4;
        float d[4];
        for (int c = 0; c < 4; ++c) d[c] = (float)C[g + 8 * (c / 2)][2 * q + c % 2];
        att_mma(d, att_tf32((float)A[g][q]), att_tf32((float)A[g + 8][q]), att_tf32((float)A[g][q + 4]),
                att_tf32((float)A[g + 8][q + 4]), att_tf32((float)Bm[q][g]), att_tf32((float)Bm[q + 4][g]));
        for (int c = 0; c < 4; ++c) got[(g + 8 * (c / 2)) * 8 + 2 * q + c % 2] = d[c];
    });
    close("mma m16n8k8 tf32 (emulated) = the definition", got, want);
    // m16n8k16 in f16 and bf16: A (16 x 16), B (16 x 8) small integers (exact in both)
    double A16[16][16], B16[16][8];
    for (int r = 0; r < 16; ++r)
        for (int k = 0; k < 16; ++k) A16[r][k] = (r * 5 + k * 3) % 9 - 4;
    for (int k = 0; k < 16; ++k)
        for (int n = 0; n < 8; ++n) B16[k][n] = (k * 7 + n * 2) % 5 - 2;
    for (int r = 0; r < 16; ++r)
        for (int n = 0; n < 8; ++n) {
            double a = C[r][n];
            for (int k = 0; k < 16; ++k) a += A16[r][k] * B16[k][n];
            want[r * 8 + n] = a;
        }
    auto k16 = [&](auto h, const char* name) {
        typedef AttMma<decltype(h)> M;
        std::fill(got.begin(), got.end(), -99);
        emu_launch(dim3{1, 1, 1}, dim3{32, 1, 1}, [&] {
            const int lane = threadIdx.x, g = lane / 4, q = lane % 4;
            float d[4];
            for (int c = 0; c < 4; ++c) d[c] = (float)C[g + 8 * (c / 2)][2 * q + c % 2];
            const u32 a[4] = {M::pack(A16[g][2 * q], A16[g][2 * q + 1]), M::pack(A16[g + 8][2 * q], A16[g + 8][2 * q + 1]),
                              M::pack(A16[g][2 * q + 8], A16[g][2 * q + 9]), M::pack(A16[g + 8][2 * q + 8], A16[g + 8][2 * q + 9])};
            att_mma16<decltype(h)>(d, a, M::pack(B16[2 * q][g], B16[2 * q + 1][g]), M::pack(B16[2 * q + 8][g], B16[2 * q + 9][g]));
            for (int c = 0; c < 4; ++c) got[(g + 8 * (c / 2)) * 8 + 2 * q + c % 2] = d[c];
        });
        close(std::string("mma m16n8k16 ") + name + " (emulated) = the definition", got, want);
    };
    k16(f16_t{}, "f16");
    k16(bf16_t{}, "bf16");
}

// ---------------------------------------------------------------------------------------
// window

/// im2col, col2im and the window argmax against loops straight from the definition
/// (window o reads o * stride - padding + tap * dilation), over geometries with padding,
/// strides, dilation, windows past the end (ceil mode) and windows of padding only.
static void test_window() {
    using namespace wd;
    struct Case {
        const char* name;
        WindowParams w;
    };
    auto geom = [](std::vector<i64> in, std::vector<i64> k, std::vector<i64> s, std::vector<i64> p,
                   std::vector<i64> d, std::vector<i64> out) {
        WindowParams w;
        const size_t nd = in.size();
        for (int i = 0; i < 3; ++i) {
            const bool pad = i < (int)(3 - nd);
            const size_t j = pad ? 0 : i - (3 - nd);
            w.input[i] = pad ? 1 : in[j];
            w.kernel[i] = pad ? 1 : k[j];
            w.stride[i] = pad ? 1 : s[j];
            w.padding[i] = pad ? 0 : p[j];
            w.dilation[i] = pad ? 1 : d[j];
            w.output[i] = pad ? 1 : out[j];
        }
        return w;
    };
    const Case cases[] = {
        {"2-D stride, padding, dilation", geom({5, 6}, {3, 2}, {2, 1}, {1, 0}, {1, 2}, {3, 4})},
        {"1-D windows of padding only", geom({2}, {1}, {1}, {1}, {1}, {4})},
        {"1-D ceil mode", geom({7}, {3}, {2}, {1}, {1}, {5})},
        {"3-D", geom({3, 4, 3}, {2, 3, 2}, {1, 2, 1}, {0, 1, 1}, {1, 1, 2}, {2, 2, 2})},
    };
    for (const Case& c : cases) {
        const WindowParams& w = c.w;
        const i64 planes = 2;
        const i64 taps = w.kernel[0] * w.kernel[1] * w.kernel[2];
        const i64 wins = w.output[0] * w.output[1] * w.output[2];
        const i64 plane = w.input[0] * w.input[1] * w.input[2];
        Vd x = rnd_vec(planes * plane);
        x[plane + 1] = x[plane + 2] = 10; // a tie at the maximum
        Vd cols = rnd_vec(planes * taps * wins);
        Vd want_cols(planes * taps * wins, 0), want_fold(planes * plane, 0);
        std::vector<i64> want_arg(planes * wins, -1);
        for (i64 p = 0; p < planes; ++p)
            for (i64 t = 0; t < taps; ++t)
                for (i64 l = 0; l < wins; ++l) {
                    const i64 o[3] = {l / (w.output[1] * w.output[2]), (l / w.output[2]) % w.output[1], l % w.output[2]};
                    const i64 k[3] = {t / (w.kernel[1] * w.kernel[2]), (t / w.kernel[2]) % w.kernel[1], t % w.kernel[2]};
                    i64 e = 0;
                    bool ok = true;
                    for (int dd = 0; dd < 3; ++dd) {
                        const i64 xi = o[dd] * w.stride[dd] - w.padding[dd] + k[dd] * w.dilation[dd];
                        ok = ok && xi >= 0 && xi < w.input[dd];
                        e = e * w.input[dd] + xi;
                    }
                    const i64 r = (p * taps + t) * wins + l;
                    if (!ok) continue;
                    want_cols[r] = x[p * plane + e];
                    want_fold[p * plane + e] += cols[r];
                    i64& a = want_arg[p * wins + l];
                    const double v = x[p * plane + e];
                    if (a < 0 || v > x[p * plane + a] || std::isnan(v)) a = e;
                }
        std::vector<double> got(planes * taps * wins, -7), fold(planes * plane, -7);
        std::vector<i64> arg(planes * wins, -7);
        run(3, 32, [&] { im2col_f64(x.data(), got.data(), planes, w); });
        close(std::string("im2col_f64 ") + c.name, got, want_cols);
        run(2, 64, [&] { col2im_f64(cols.data(), fold.data(), planes, w); });
        close(std::string("col2im_f64 ") + c.name, fold, want_fold, 1e-14, 1e-14);
        run(2, 32, [&] { window_argmax_f64(x.data(), arg.data(), planes, w); });
        close(std::string("window_argmax_f64 ") + c.name, arg, Vd(want_arg.begin(), want_arg.end()));
        // f32 and bool im2col move the same elements
        auto xf = cast_vec<float>(x);
        std::vector<float> gotf(planes * taps * wins);
        run(2, 64, [&] { im2col_f32(xf.data(), gotf.data(), planes, w); });
        Vd wantf(want_cols.size());
        for (size_t i = 0; i < wantf.size(); ++i) wantf[i] = (float)want_cols[i];
        close(std::string("im2col_f32 ") + c.name, gotf, wantf);
        std::vector<u8> xb(planes * plane), gotb(planes * taps * wins, 7);
        for (size_t i = 0; i < xb.size(); ++i) xb[i] = x[i] > 0;
        run(1, 32, [&] { im2col_bool(xb.data(), gotb.data(), planes, w); });
        Vd wantb(want_cols.size());
        for (size_t i = 0; i < wantb.size(); ++i) wantb[i] = want_cols[i] > 0 ? 1 : 0;
        close(std::string("im2col_bool ") + c.name, gotb, wantb);
    }
    // NaN wins the argmax, the last of several
    {
        const WindowParams w = geom({4}, {4}, {1}, {0}, {1}, {1});
        Vd x = {1, NAN, 5, NAN};
        std::vector<i64> arg(1);
        run(1, 32, [&] { window_argmax_f64(x.data(), arg.data(), 1, w); });
        close("window_argmax_f64 NaN: the last", arg, {3});
    }
}

static void test_attention() {
    test_tf32_mma();
    // name, B, H, Tq, Tk, D, Dv, causal, mask, bias, transposed q, a fully masked row, warps,
    // dropout
    const AttCase cases[] = {
        {"plain", 1, 1, 5, 5, 8, 8, false, false, false, false, false, 2, 0},
        {"causal Tq<Tk odd dims, tiles", 2, 3, 7, 40, 5, 6, true, false, false, false, false, 2, 0},
        {"key padding + bias, strided q", 2, 2, 9, 19, 33, 17, false, true, true, true, false, 3, 0},
        {"causal + mask + bias, Tq>Tk", 2, 1, 13, 6, 16, 4, true, true, true, false, false, 4, 0},
        {"fully masked query row", 2, 2, 4, 5, 8, 8, false, true, false, false, true, 2, 0},
        {"head dim 128", 1, 2, 3, 34, 128, 128, true, false, false, true, false, 1, 0},
        {"dropout 0.3", 2, 2, 6, 11, 8, 8, false, false, false, false, false, 2, 0.3},
        {"causal + dropout + mask, several tiles", 1, 2, 70, 75, 64, 64, true, true, false, true, false, 4, 0.1},
        {"causal head dim 64, 3 forward tiles", 1, 1, 130, 130, 64, 40, true, false, false, false, false, 8, 0},
        {"dropout, Tk % 4 = 0 (shared Philox blocks) + mask", 2, 2, 45, 72, 16, 24, false, true, false, false, false, 2, 0.2},
        {"causal + dropout, Tk % 4 = 0, Tq > Tk", 1, 3, 70, 36, 8, 8, true, false, true, true, false, 4, 0.5},
    };
    for (const auto& c : cases) {
        attention_case<double>(c, 1e-12, 0);
        attention_case<float>(c, 2e-5, 2e-5);
    }
    // f16 and bf16 (SIMT: f32 arithmetic, results rounded to T; tensor cores: P and dS
    // rounded to T too) on the cases that cover masks, bias, strides, a fully masked
    // row, tiles and both dropout draws
    for (int i : {1, 2, 4, 7, 9}) {
        attention_case<at::f16_t>(cases[i], 2e-3, 4e-3);
        attention_case<at::bf16_t>(cases[i], 2e-2, 3e-2);
    }
}

#include <chrono>

/// Runs group `name` and prints its time; with FLINT_EMU_ONLY set, only the group it names
/// runs (e.g. FLINT_EMU_ONLY=attention when working on one module).
static void timed(const char* name, const std::function<void()>& f) {
    const char* only = std::getenv("FLINT_EMU_ONLY");
    if (only != nullptr && *only != 0 && std::string(only) != name) return;
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("time %s %.2f s\n", name, s);
}

int main() {
    timed("elementwise", test_elementwise);
    timed("runs", test_runs);
    timed("unary", test_unary);
    timed("copy", test_copy);
    timed("reduce", test_reduce);
    timed("softmax", [] {
        for (int c : {70, 300, 1000, 1500}) {
            softmax_case<float>("f32", 1e-6, c);
            softmax_case<double>("f64", 1e-14, c);
        }
    });
    timed("norm", test_norm);
    timed("index", test_index);
    timed("random", test_random);
    timed("optim", test_optim);
    timed("window", test_window);
    timed("attention", test_attention);
    std::printf("summary %d checks, %d failed\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
