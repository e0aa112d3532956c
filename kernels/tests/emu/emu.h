// A small host emulation of the CUDA execution model, enough to run Flint's kernels on a
// CPU for testing (kernels/tests/emulated.rs). Every thread of a block is a fiber
// (ucontext) on the calling OS thread; blocks run one after another, so `__shared__` can
// be `static`. A fiber runs until it reaches __syncthreads or a warp shuffle (a warp
// barrier), and the scheduler releases a barrier once every live thread of the block (or
// lane of the warp) waits at it: a barrier that some threads never reach is reported as
// a deadlock. Device pointers are host pointers. It checks what the kernels compute, not
// how fast, and not the memory model.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <ucontext.h>
#include <vector>

#define FLINT_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) alignas(n)
#define __launch_bounds__(...)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

// Set by the scheduler before it resumes a thread.
inline dim3 gridDim, blockDim, threadIdx, blockIdx;

namespace emu {

enum class State { Runnable, BlockWait, WarpWait, Done };

struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    State state = State::Runnable;
};

struct Block {
    ucontext_t scheduler;
    std::vector<Fiber> fibers;
    int current = 0;
    const std::function<void()>* kernel = nullptr;
    uint64_t slots[1024] = {}; // shuffle slots, one per thread
};

inline Block* g_block = nullptr;

inline void fiber_main() {
    (*g_block->kernel)();
    g_block->fibers[g_block->current].state = State::Done;
    // returning resumes uc_link = the scheduler
}

/// Blocks the current thread in `st` until the scheduler releases it.
inline void wait(State st) {
    Block& b = *g_block;
    Fiber& f = b.fibers[b.current];
    f.state = st;
    swapcontext(&f.ctx, &b.scheduler);
}

[[noreturn]] inline void deadlock(const char* why) {
    std::printf("FAIL emulation: %s (block %u,%u)\n", why, blockIdx.x, blockIdx.y);
    std::fflush(stdout);
    std::exit(3);
}

inline void run_block(int nt) {
    Block& b = *g_block;
    for (;;) {
        bool live = false;
        for (int t = 0; t < nt; ++t) {
            if (b.fibers[t].state == State::Runnable) {
                b.current = t;
                threadIdx.x = (unsigned)t;
                swapcontext(&b.scheduler, &b.fibers[t].ctx);
            }
        }
        // every thread now waits or is done: release a complete barrier
        bool released = false;
        for (int w = 0; w * 32 < nt; ++w) {
            const int lo = w * 32, hi = lo + 32 < nt ? lo + 32 : nt;
            int waiting = 0, done = 0;
            for (int t = lo; t < hi; ++t) {
                waiting += b.fibers[t].state == State::WarpWait;
                done += b.fibers[t].state == State::Done;
            }
            if (waiting > 0 && waiting + done == hi - lo) {
                if (done > 0) deadlock("a warp shuffle with exited lanes");
                for (int t = lo; t < hi; ++t) b.fibers[t].state = State::Runnable;
                released = true;
            }
        }
        int at_block = 0, done = 0;
        for (int t = 0; t < nt; ++t) {
            at_block += b.fibers[t].state == State::BlockWait;
            done += b.fibers[t].state == State::Done;
            live |= b.fibers[t].state != State::Done;
        }
        if (!live) return;
        if (released) continue;
        if (at_block > 0 && at_block + done == nt) {
            if (done > 0) deadlock("__syncthreads not reached by exited threads");
            for (int t = 0; t < nt; ++t) b.fibers[t].state = State::Runnable;
            continue;
        }
        deadlock("threads wait at different barriers");
    }
}

} // namespace emu

/// Runs `kernel` (a call of one kernel with its arguments) on a grid of blocks.
inline void emu_launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = block;
    const int nt = (int)block.x;
    if (nt > 1024) emu::deadlock("more than 1024 threads per block");
    auto b = std::make_unique<emu::Block>();
    b->kernel = &kernel;
    b->fibers.resize(nt);
    emu::g_block = b.get();
    for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            blockIdx.x = bx;
            blockIdx.y = by;
            for (auto& f : b->fibers) {
                f.stack.resize(256 * 1024);
                getcontext(&f.ctx);
                f.ctx.uc_stack.ss_sp = f.stack.data();
                f.ctx.uc_stack.ss_size = f.stack.size();
                f.ctx.uc_link = &b->scheduler;
                makecontext(&f.ctx, emu::fiber_main, 0);
                f.state = emu::State::Runnable;
            }
            emu::run_block(nt);
        }
    }
    emu::g_block = nullptr;
}

inline void __syncthreads() { emu::wait(emu::State::BlockWait); }

namespace emu {
/// Every lane of the warp offers `v` and reads what lane `partner` (a thread index of
/// the block) offered: a warp barrier on each side.
template <typename T> inline T shuffle(T v, unsigned partner) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    uint64_t u = 0;
    std::memcpy(&u, &v, sizeof(T));
    g_block->slots[threadIdx.x] = u;
    wait(State::WarpWait);
    const uint64_t o = g_block->slots[partner];
    wait(State::WarpWait);
    T r;
    std::memcpy(&r, &o, sizeof(T));
    return r;
}
} // namespace emu

template <typename T> inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    const unsigned t = threadIdx.x;
    return emu::shuffle(v, (t & ~31u) | ((t & 31u) ^ (unsigned)lane_mask));
}

template <typename T> inline T __shfl_sync(unsigned, T v, int src_lane) {
    return emu::shuffle(v, (threadIdx.x & ~31u) | ((unsigned)src_lane & 31u));
}

// Tensor-core instructions used by attention.cu (PTX `cvt.rna.tf32.f32` and
// `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32`), emulated from the PTX ISA's
// fragment layouts: with g = lane / 4 and q = lane % 4, lane holds A(g + 8(r % 2),
// q + 4(r / 2)) in a[r], B(q + 4r, g) in b[r] and C(g + 8(r / 2), 2q + r % 2) in c[r].
// The products of TF32 operands are exact in double; the sum is rounded once to f32
// (the hardware's order and rounding of the sum are unspecified).

/// f32 -> TF32 (10 mantissa bits), round to nearest, ties away from zero; the bits.
inline uint32_t flint_emu_tf32(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return u; // inf, NaN
    return (u + 0x1000u) & 0xffffe000u;
}

namespace emu {
struct MmaSlot {
    uint32_t a[4], b[2];
};
inline MmaSlot mma_slots[1024];
} // namespace emu

namespace emu {
/// d += A·B for one warp's m16n8kK mma (all 32 lanes call it, like the instruction), with
/// each lane's registers a[4], b[2]: `at_a(w, r, k)` and `at_b(w, k, n)` read A(r, k) and
/// B(k, n) from the warp's slots `w` (as double; the products are exact there, and the
/// sum is rounded once to f32).
template <typename AtA, typename AtB>
inline void mma_m16n8(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, unsigned k_extent,
                      AtA at_a, AtB at_b) {
    const unsigned t = threadIdx.x, lane = t & 31u;
    mma_slots[t] = MmaSlot{{a[0], a[1], a[2], a[3]}, {b0, b1}};
    wait(State::WarpWait);
    const MmaSlot* w = &mma_slots[t & ~31u];
    const unsigned g = lane / 4, q = lane % 4;
    float out[4];
    for (unsigned r = 0; r < 4; ++r) {
        const unsigned row = g + 8 * (r / 2), col = 2 * q + r % 2;
        double acc = d[r];
        for (unsigned k = 0; k < k_extent; ++k) acc += at_a(w, row, k) * at_b(w, k, col);
        out[r] = (float)acc;
    }
    wait(State::WarpWait); // every lane has read the slots
    for (unsigned r = 0; r < 4; ++r) d[r] = out[r];
}
} // namespace emu

/// d += A·B for `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32` (layouts above).
inline void flint_emu_mma_tf32(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                               uint32_t b0, uint32_t b1) {
    auto f = [](uint32_t u) {
        float x;
        std::memcpy(&x, &u, 4);
        return (double)x;
    };
    emu::mma_m16n8(
        d, {a0, a1, a2, a3}, b0, b1, 8,
        [&](const emu::MmaSlot* w, unsigned r, unsigned k) { return f(w[(r % 8) * 4 + k % 4].a[(r >= 8 ? 1 : 0) + (k >= 4 ? 2 : 0)]); },
        [&](const emu::MmaSlot* w, unsigned k, unsigned n) { return f(w[n * 4 + k % 4].b[k >= 4 ? 1 : 0]); });
}

/// d += A·B for `mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}` (all 32 lanes call
/// it): each register holds two 16-bit elements, the lower k in the low half; lane holds
/// A(g + 8(r % 2), 2q + 8(r / 2) + e) in half e of a[r], B(2q + 8r + e, g) in half e of
/// b[r]; C as in the m16n8k8 form. `elem` converts an element's bits to float.
template <typename F>
inline void flint_emu_mma_k16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                              uint32_t b0, uint32_t b1, F elem) {
    auto half = [&](uint32_t reg, unsigned k) { return (double)elem((uint16_t)(reg >> (16 * (k % 2)))); };
    emu::mma_m16n8(
        d, {a0, a1, a2, a3}, b0, b1, 16,
        [&](const emu::MmaSlot* w, unsigned r, unsigned k) {
            return half(w[(r % 8) * 4 + (k % 8) / 2].a[(r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k);
        },
        [&](const emu::MmaSlot* w, unsigned k, unsigned n) { return half(w[n * 4 + (k % 8) / 2].b[k >= 8 ? 1 : 0], k); });
}

// Bit casts and rounding intrinsics.
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
inline int __double2hiint(double d) {
    uint64_t u;
    std::memcpy(&u, &d, 8);
    return (int)(uint32_t)(u >> 32);
}
inline double __hiloint2double(int hi, int lo) {
    const uint64_t u = ((uint64_t)(uint32_t)hi << 32) | (uint32_t)lo;
    double d;
    std::memcpy(&d, &u, 8);
    return d;
}
inline double __dmul_rn(double a, double b) { return a * b; } // built with -ffp-contract=off
inline double __dadd_rn(double a, double b) { return a + b; }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}

// Atomics.
inline float atomicAdd(float* p, float v) {
    const float o = *p;
    *p = o + v;
    return o;
}
inline double atomicAdd(double* p, double v) {
    const double o = *p;
    *p = o + v;
    return o;
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    const unsigned long long o = *p;
    *p = o + v;
    return o;
}
inline unsigned atomicCAS(unsigned* p, unsigned expected, unsigned desired) {
    const unsigned o = *p;
    if (o == expected) {
        *p = desired;
    }
    return o;
}
inline int atomicExch(int* p, int v) {
    const int o = *p;
    *p = v;
    return o;
}

// IEEE half <-> float, round to nearest even (the PTX cvt instructions on the device).
inline float flint_emu_f16_to_f32(uint16_t h) {
    const int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    float v;
    if (e == 0) {
        v = std::ldexp((float)m, -24);
    } else if (e == 31) {
        v = m ? NAN : INFINITY;
    } else {
        v = std::ldexp((float)(m | 0x400), e - 25);
    }
    return s ? -v : v;
}

inline uint16_t flint_emu_f32_to_f16(float value) {
    uint32_t x;
    std::memcpy(&x, &value, 4);
    const uint32_t sign = x & 0x80000000u, exp = x & 0x7F800000u;
    uint32_t man = x & 0x007FFFFFu;
    const uint32_t half_sign = sign >> 16;
    if (exp == 0x7F800000u) {
        return (uint16_t)(half_sign | 0x7C00u | (man ? 0x0200u : 0u) | (man >> 13));
    }
    const int half_exp = (int)(exp >> 23) - 127 + 15;
    if (half_exp >= 0x1F) {
        return (uint16_t)(half_sign | 0x7C00u);
    }
    if (half_exp <= 0) {
        if (14 - half_exp > 24) {
            return (uint16_t)half_sign;
        }
        man |= 0x00800000u;
        uint32_t half_man = man >> (14 - half_exp);
        const uint32_t round_bit = 1u << (13 - half_exp);
        if ((man & round_bit) != 0 && (man & (3 * round_bit - 1)) != 0) {
            half_man += 1;
        }
        return (uint16_t)(half_sign | half_man);
    }
    const uint32_t h = half_sign | ((uint32_t)half_exp << 10) | (man >> 13);
    const uint32_t round_bit = 0x00001000u;
    return (uint16_t)(((man & round_bit) != 0 && (man & (3 * round_bit - 1)) != 0) ? h + 1 : h);
}
