#line 1 "window.cu"
// Sliding windows, behind convolution and pooling (runtime/src/ops/window.rs): im2col
// (PyTorch's unfold), col2im (fold, its adjoint) and the argmax of each window (max
// pooling). 1 to 3 spatial dims, padded to three with leading unit dims (WindowParams).
// A plane is one [in0, in1, in2] input of a [planes, in0, in1, in2] contiguous tensor;
// taps are ordered row-major over the kernel, windows row-major over the output. Window
// o reads input position o * stride - padding + tap * dilation per dim; a position
// outside [0, input) is padding (zero for im2col, skipped by col2im and the argmax).
// Every kernel takes any grid and block size (grid-stride loops).

/// The geometry of the windows, three dims each (`flint_kernels::WindowParams`,
/// #[repr(C)], 144 bytes).
struct WindowParams {
    i64 input[3];
    i64 kernel[3];
    i64 stride[3];
    i64 padding[3];
    i64 dilation[3];
    i64 output[3];
};
static_assert(sizeof(WindowParams) == 144, "WindowParams must match flint_kernels::WindowParams");

/// Input position along dim d of window o's tap t, or -1 when it falls into the padding.
__device__ __forceinline__ i64 window_at(const WindowParams& w, int d, i64 o, i64 t) {
    const i64 x = o * w.stride[d] - w.padding[d] + t * w.dilation[d];
    return (x >= 0 && x < w.input[d]) ? x : -1;
}

/// The three coordinates of flat index `f` over the row-major sizes `n` (a window over
/// `output`, a tap over `kernel`, a position over `input`).
__device__ __forceinline__ void unflatten3(i64 f, const i64 n[3], i64 c[3]) {
    c[2] = f % n[2];
    c[1] = (f / n[2]) % n[1];
    c[0] = f / (n[2] * n[1]);
}

/// The sizes' product.
__device__ __forceinline__ i64 product3(const i64 n[3]) { return n[0] * n[1] * n[2]; }

// im2col_<dt>(const T* src, T* out, i64 planes, WindowParams w)
//   src [planes, *input] contiguous -> out [planes, taps, windows]:
//   out[(p * taps + t) * windows + l] = tap t of window l of plane p (0 in the padding).
template <typename T>
__device__ __forceinline__ void im2col_all(const T* src, T* out, i64 planes, const WindowParams& w) {
    const i64 taps = product3(w.kernel), wins = product3(w.output), plane = product3(w.input);
    FLINT_GRID_STRIDE(i, planes * taps * wins) {
        const i64 l = i % wins, r = i / wins, t = r % taps, p = r / taps;
        i64 o[3], k[3];
        unflatten3(l, w.output, o);
        unflatten3(t, w.kernel, k);
        const i64 x0 = window_at(w, 0, o[0], k[0]), x1 = window_at(w, 1, o[1], k[1]),
                  x2 = window_at(w, 2, o[2], k[2]);
        out[i] = (x0 < 0 || x1 < 0 || x2 < 0)
                     ? Ty<T>::store(0)
                     : src[p * plane + (x0 * w.input[1] + x1) * w.input[2] + x2];
    }
}

// col2im_<dt>(const T* cols, T* out, i64 planes, WindowParams w)
//   cols [planes, taps, windows] -> out [planes, *input]: each input position receives the
//   sum of every (tap, window) that reads it, in increasing tap order (one thread per
//   input element: no atomics, the CPU kernel's order of additions).
template <typename T>
__device__ __forceinline__ void col2im_all(const T* cols, T* out, i64 planes,
                                           const WindowParams& w) {
    typedef typename Ty<T>::acc A;
    const i64 taps = product3(w.kernel), wins = product3(w.output), plane = product3(w.input);
    FLINT_GRID_STRIDE(i, planes * plane) {
        const i64 p = i / plane;
        i64 x[3];
        unflatten3(i % plane, w.input, x);
        A s = A(0);
        for (i64 t0 = 0; t0 < w.kernel[0]; ++t0) {
            const i64 a0 = x[0] + w.padding[0] - t0 * w.dilation[0];
            if (a0 < 0 || a0 % w.stride[0] != 0 || a0 / w.stride[0] >= w.output[0]) continue;
            for (i64 t1 = 0; t1 < w.kernel[1]; ++t1) {
                const i64 a1 = x[1] + w.padding[1] - t1 * w.dilation[1];
                if (a1 < 0 || a1 % w.stride[1] != 0 || a1 / w.stride[1] >= w.output[1]) continue;
                for (i64 t2 = 0; t2 < w.kernel[2]; ++t2) {
                    const i64 a2 = x[2] + w.padding[2] - t2 * w.dilation[2];
                    if (a2 < 0 || a2 % w.stride[2] != 0 || a2 / w.stride[2] >= w.output[2])
                        continue;
                    const i64 t = (t0 * w.kernel[1] + t1) * w.kernel[2] + t2;
                    const i64 l = ((a0 / w.stride[0]) * w.output[1] + a1 / w.stride[1]) *
                                      w.output[2] +
                                  a2 / w.stride[2];
                    s = s + Ty<T>::load(cols[(p * taps + t) * wins + l]);
                }
            }
        }
        out[i] = Ty<T>::store(s);
    }
}

// window_argmax_<dt>(const T* src, i64* out, i64 planes, WindowParams w)
//   src [planes, *input] -> out [planes, windows]: the flat in-plane index of the largest
//   element of each window (the first on ties; a NaN wins, the last of several), or -1
//   for a window made only of padding.
template <typename T>
__device__ __forceinline__ void window_argmax_all(const T* src, i64* out, i64 planes,
                                                  const WindowParams& w) {
    typedef typename Ty<T>::acc A;
    const i64 wins = product3(w.output), plane = product3(w.input);
    FLINT_GRID_STRIDE(i, planes * wins) {
        const i64 p = i / wins;
        i64 o[3];
        unflatten3(i % wins, w.output, o);
        i64 best_i = -1;
        A best = A(0);
        for (i64 t0 = 0; t0 < w.kernel[0]; ++t0) {
            const i64 x0 = window_at(w, 0, o[0], t0);
            if (x0 < 0) continue;
            for (i64 t1 = 0; t1 < w.kernel[1]; ++t1) {
                const i64 x1 = window_at(w, 1, o[1], t1);
                if (x1 < 0) continue;
                for (i64 t2 = 0; t2 < w.kernel[2]; ++t2) {
                    const i64 x2 = window_at(w, 2, o[2], t2);
                    if (x2 < 0) continue;
                    const i64 e = (x0 * w.input[1] + x1) * w.input[2] + x2;
                    const A v = Ty<T>::load(src[p * plane + e]);
                    if (best_i < 0 || v > best || v != v) {
                        best = v;
                        best_i = e;
                    }
                }
            }
        }
        out[i] = best_i;
    }
}

#define IM2COL(dt, T, _)                                                                   \
    extern "C" __global__ void im2col_##dt(const T* src, T* out, i64 planes,               \
                                           WindowParams w) {                               \
        im2col_all<T>(src, out, planes, w);                                                \
    }
FLINT_ALL(IM2COL, _)

#define COL2IM(dt, T, _)                                                                   \
    extern "C" __global__ void col2im_##dt(const T* cols, T* out, i64 planes,              \
                                           WindowParams w) {                               \
        col2im_all<T>(cols, out, planes, w);                                               \
    }                                                                                      \
    extern "C" __global__ void window_argmax_##dt(const T* src, i64* out, i64 planes,      \
                                                  WindowParams w) {                        \
        window_argmax_all<T>(src, out, planes, w);                                         \
    }
FLINT_NUMS(COL2IM, _)
