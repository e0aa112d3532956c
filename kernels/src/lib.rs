//! CUDA C kernel sources of Flint, embedded for NVRTC.
//!
//! Each [`KernelModule`] is one self-contained CUDA C translation unit (no `#include`,
//! no libc: it compiles with NVRTC alone) together with the names of its
//! `extern "C" __global__` entry points, named `<op>_<dtype>` (`add_f32`, `sum_dim_f64`,
//! `cast_f16_f32`, …). The CUDA backend compiles a module with NVRTC for the device's
//! architecture the first time it needs one of its kernels, loads it, and launches
//! entries by name. `kernels/tests/nvrtc.rs` compiles every module to `sm_90` and checks
//! that the entries listed here are exactly those in the PTX; `kernels/tests/emulated.rs`
//! runs the kernels on the CPU under a small CUDA emulation and checks their numbers.
//!
//! The argument layout of every entry point is documented in the crate's `README.md`
//! (reproduced below) and in a comment above each kernel in the `.cu` files.
//!
//! ```
//! let m = flint_kernels::module("softmax").unwrap();
//! assert!(m.has_entry("softmax_f32"));
//! assert!(m.source.contains("softmax_rows"));
//! // compile with NVRTC: `--gpu-architecture=sm_90` plus flint_kernels::COMPILE_OPTIONS
//! assert_eq!(
//!     flint_kernels::COMPILE_OPTIONS,
//!     &["--std=c++17", "--device-as-default-execution-space"]
//! );
//! ```
//!
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

/// One CUDA C module: its name, full NVRTC source, and entry points.
///
/// ```
/// let m = flint_kernels::module("reduce").unwrap();
/// assert_eq!(m.name, "reduce");
/// assert!(m.entries.contains(&"argmax_dim_bf16"));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct KernelModule {
    /// Module name (`"elementwise"`, `"reduce"`, …); also the file name of its `.cu`.
    pub name: &'static str,
    /// The complete source handed to NVRTC: the shared prelude (`common.cuh`) followed
    /// by the module's `.cu` (with `#line` directives, so NVRTC's messages name the
    /// right file and line).
    pub source: &'static str,
    /// The names of the module's `extern "C" __global__` kernels.
    pub entries: &'static [&'static str],
}

impl KernelModule {
    /// Whether the module defines the kernel `name`.
    ///
    /// ```
    /// let m = flint_kernels::module("optim").unwrap();
    /// assert!(m.has_entry("adam_f16"));
    /// assert!(!m.has_entry("adam_i64"));
    /// ```
    pub fn has_entry(&self, name: &str) -> bool {
        self.entries.contains(&name)
    }
}

/// Options to pass to NVRTC with every module, besides `--gpu-architecture=sm_XY`.
/// Do not add `--use_fast_math`: the random kernels rely on exactly rounded arithmetic.
/// `--device-as-default-execution-space` makes unannotated functions device functions,
/// which lets the elementwise kernels pass their loop bodies to `for_runs` as lambdas.
///
/// ```
/// assert!(flint_kernels::COMPILE_OPTIONS.contains(&"--std=c++17"));
/// ```
pub const COMPILE_OPTIONS: &[&str] = &["--std=c++17", "--device-as-default-execution-space"];

/// Every kernel module.
///
/// ```
/// let total: usize = flint_kernels::MODULES.iter().map(|m| m.entries.len()).sum();
/// assert!(total > 400);
/// ```
pub const MODULES: &[KernelModule] = &[
    KernelModule {
        name: "elementwise",
        source: concat!(include_str!("common.cuh"), include_str!("elementwise.cu")),
        entries: ELEMENTWISE,
    },
    KernelModule {
        name: "unary",
        source: concat!(include_str!("common.cuh"), include_str!("unary.cu")),
        entries: UNARY,
    },
    KernelModule {
        name: "copy",
        source: concat!(include_str!("common.cuh"), include_str!("copy.cu")),
        entries: COPY,
    },
    KernelModule {
        name: "reduce",
        source: concat!(include_str!("common.cuh"), include_str!("reduce.cu")),
        entries: REDUCE,
    },
    KernelModule {
        name: "softmax",
        source: concat!(include_str!("common.cuh"), include_str!("softmax.cu")),
        entries: SOFTMAX,
    },
    KernelModule {
        name: "norm",
        source: concat!(include_str!("common.cuh"), include_str!("norm.cu")),
        entries: NORM,
    },
    KernelModule {
        name: "index",
        source: concat!(include_str!("common.cuh"), include_str!("index.cu")),
        entries: INDEX,
    },
    KernelModule {
        name: "random",
        source: concat!(
            include_str!("common.cuh"),
            include_str!("philox.h"),
            include_str!("random.cu")
        ),
        entries: RANDOM,
    },
    KernelModule {
        name: "optim",
        source: concat!(include_str!("common.cuh"), include_str!("optim.cu")),
        entries: OPTIM,
    },
    KernelModule {
        name: "window",
        source: concat!(include_str!("common.cuh"), include_str!("window.cu")),
        entries: WINDOW,
    },
    KernelModule {
        name: "attention",
        source: concat!(
            include_str!("common.cuh"),
            include_str!("philox.h"),
            include_str!("attention.cu")
        ),
        entries: ATTENTION,
    },
];

/// The module called `name`, if any.
///
/// ```
/// assert!(flint_kernels::module("attention").is_some());
/// assert!(flint_kernels::module("nope").is_none());
/// ```
pub fn module(name: &str) -> Option<&'static KernelModule> {
    MODULES.iter().find(|m| m.name == name)
}

/// The module that defines the kernel `entry`, if any.
///
/// ```
/// assert_eq!(flint_kernels::module_of("cast_f32_bf16").unwrap().name, "copy");
/// assert!(flint_kernels::module_of("add_u8").is_none());
/// ```
pub fn module_of(entry: &str) -> Option<&'static KernelModule> {
    MODULES.iter().find(|m| m.has_entry(entry))
}

/// The most dims a [`KernelLayout`] describes.
pub const MAX_DIMS: usize = 8;

/// A strided view as elementwise kernels take it: the C `Layout` struct of `common.cuh`,
/// passed by value (`#[repr(C)]`, 144 bytes). Element `(c0, …, c{rank-1})` is at
/// `offset + Σ c_d · strides[d]` elements from the buffer's start; broadcast dims have
/// stride 0. Unused dims (`rank..8`) are ignored.
///
/// To launch with cudarc, wrap it in a `#[repr(transparent)]` newtype and
/// `unsafe impl DeviceRepr` for it.
///
/// ```
/// use flint_kernels::KernelLayout;
/// let l = KernelLayout::contiguous(&[2, 3]).unwrap();
/// assert_eq!((l.rank, &l.shape[..2], &l.strides[..2], l.offset), (2, &[2, 3][..], &[3, 1][..], 0));
/// // a [3] row broadcast to [2, 3]
/// let b = KernelLayout::new(&[2, 3], &[0, 1], 0).unwrap();
/// assert_eq!(b.strides[..2], [0, 1]);
/// assert_eq!(std::mem::size_of::<KernelLayout>(), 144);
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    /// Number of dims, at most [`MAX_DIMS`].
    pub rank: i64,
    /// Size of each dim.
    pub shape: [i64; MAX_DIMS],
    /// Stride of each dim, in elements.
    pub strides: [i64; MAX_DIMS],
    /// Offset of the first element, in elements.
    pub offset: i64,
}

const _: () = assert!(std::mem::size_of::<KernelLayout>() == 144);

impl KernelLayout {
    /// A layout of `shape` with `strides` and `offset` (elements); `None` when the rank
    /// exceeds [`MAX_DIMS`], the lengths differ, or a value does not fit in `i64`.
    ///
    /// ```
    /// assert!(flint_kernels::KernelLayout::new(&[1; 9], &[1; 9], 0).is_none());
    /// assert!(flint_kernels::KernelLayout::new(&[2], &[1, 1], 0).is_none());
    /// ```
    pub fn new(shape: &[usize], strides: &[usize], offset: usize) -> Option<KernelLayout> {
        if shape.len() > MAX_DIMS || strides.len() != shape.len() {
            return None;
        }
        let mut l = KernelLayout {
            rank: shape.len() as i64,
            shape: [1; MAX_DIMS],
            strides: [0; MAX_DIMS],
            offset: i64::try_from(offset).ok()?,
        };
        for (d, (&n, &s)) in shape.iter().zip(strides).enumerate() {
            l.shape[d] = i64::try_from(n).ok()?;
            l.strides[d] = i64::try_from(s).ok()?;
        }
        Some(l)
    }

    /// The row-major layout of a contiguous tensor of `shape` at offset 0.
    ///
    /// ```
    /// let l = flint_kernels::KernelLayout::contiguous(&[4, 5, 6]).unwrap();
    /// assert_eq!(l.strides[..3], [30, 6, 1]);
    /// ```
    pub fn contiguous(shape: &[usize]) -> Option<KernelLayout> {
        let mut strides = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1].checked_mul(shape[d + 1])?;
        }
        KernelLayout::new(shape, &strides, 0)
    }

    /// The number of elements, `Π shape`.
    ///
    /// ```
    /// assert_eq!(flint_kernels::KernelLayout::contiguous(&[4, 5]).unwrap().numel(), 20);
    /// assert_eq!(flint_kernels::KernelLayout::contiguous(&[]).unwrap().numel(), 1);
    /// ```
    pub fn numel(&self) -> i64 {
        self.shape[..self.rank as usize].iter().product()
    }
}

/// The geometry of sliding windows for the `window` kernels (im2col, col2im, the
/// argmax of max pooling): the C `WindowParams` of `window.cu`, passed by value
/// (`#[repr(C)]`, 144 bytes). Three spatial dims; fewer are padded with leading unit
/// dims (input, kernel, stride, dilation and output 1, padding 0).
///
/// ```
/// use flint_kernels::WindowParams;
/// // a 3x3 kernel with padding 1 over an 8x8 plane, 1-D over 5 with kernel 2
/// let w = WindowParams::new(&[8, 8], &[3, 3], &[1, 1], &[1, 1], &[1, 1], &[8, 8]).unwrap();
/// assert_eq!((w.input, w.padding, w.output), ([1, 8, 8], [0, 1, 1], [1, 8, 8]));
/// let w = WindowParams::new(&[5], &[2], &[1], &[0], &[1], &[4]).unwrap();
/// assert_eq!((w.kernel, w.output), ([1, 1, 2], [1, 1, 4]));
/// assert!(WindowParams::new(&[1; 4], &[1; 4], &[1; 4], &[0; 4], &[1; 4], &[1; 4]).is_none());
/// assert_eq!(std::mem::size_of::<WindowParams>(), 144);
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowParams {
    /// Spatial size of each input plane.
    pub input: [i64; 3],
    /// Taps per window, per dim.
    pub kernel: [i64; 3],
    /// Step between window starts.
    pub stride: [i64; 3],
    /// Implicit zeros before (and after) the input.
    pub padding: [i64; 3],
    /// Step between taps.
    pub dilation: [i64; 3],
    /// Windows per dim.
    pub output: [i64; 3],
}

const _: () = assert!(std::mem::size_of::<WindowParams>() == 144);

impl WindowParams {
    /// The geometry of 1 to 3 spatial dims (every slice of one length), padded to three;
    /// `None` for another number of dims, slices of different lengths, or a value that
    /// does not fit in `i64`.
    pub fn new(
        input: &[usize],
        kernel: &[usize],
        stride: &[usize],
        padding: &[usize],
        dilation: &[usize],
        output: &[usize],
    ) -> Option<WindowParams> {
        let nd = input.len();
        let all = [input, kernel, stride, padding, dilation, output];
        if !(1..=3).contains(&nd) || all.iter().any(|v| v.len() != nd) {
            return None;
        }
        let pad = |v: &[usize], fill: i64| -> Option<[i64; 3]> {
            let mut a = [fill; 3];
            for (d, &x) in v.iter().enumerate() {
                a[3 - nd + d] = i64::try_from(x).ok()?;
            }
            Some(a)
        };
        Some(WindowParams {
            input: pad(input, 1)?,
            kernel: pad(kernel, 1)?,
            stride: pad(stride, 1)?,
            padding: pad(padding, 0)?,
            dilation: pad(dilation, 1)?,
            output: pad(output, 1)?,
        })
    }
}

/// Shapes, strides and options of the attention kernels: the C `AttentionParams` of
/// `attention.cu`, passed by value (`#[repr(C)]`, 320 bytes). See the README's
/// `attention` section.
///
/// ```
/// use flint_kernels::AttentionParams;
/// let p = AttentionParams::contiguous(2, 4, 16, 16, 64, 64).with_causal(true);
/// assert_eq!(p.q_stride, [4 * 16 * 64, 16 * 64, 64]);
/// assert_eq!(p.scale, 0.125);
/// assert_eq!(p.causal, 1);
/// assert_eq!(p.dropout, 0.0);
/// assert_eq!(p.o_stride, [4 * 16 * 64, 16 * 64, 64]);
/// assert_eq!(std::mem::size_of::<AttentionParams>(), 320);
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams {
    /// Batch size B.
    pub batch: i64,
    /// Number of heads H.
    pub heads: i64,
    /// Number of queries Tq.
    pub tq: i64,
    /// Number of keys (and values) Tk.
    pub tk: i64,
    /// Head dim D of q and k (at most 128).
    pub d: i64,
    /// Head dim Dv of v and the output (at most 128).
    pub dv: i64,
    /// Element strides of q over (b, h, t); its last dim is contiguous.
    pub q_stride: [i64; 3],
    /// Element strides of k over (b, h, t).
    pub k_stride: [i64; 3],
    /// Element strides of v over (b, h, t).
    pub v_stride: [i64; 3],
    /// Element strides of the output and its gradient over (b, h, t); last dim contiguous.
    pub o_stride: [i64; 3],
    /// Element strides of q's gradient over (b, h, t).
    pub dq_stride: [i64; 3],
    /// Element strides of k's gradient over (b, h, t).
    pub dk_stride: [i64; 3],
    /// Element strides of v's gradient over (b, h, t).
    pub dv_stride: [i64; 3],
    /// Strides of the bool mask over (b, h, i, j); 0 broadcasts.
    pub mask_stride: [i64; 4],
    /// Strides of the additive bias over (b, h, i, j); 0 broadcasts.
    pub bias_stride: [i64; 4],
    /// Score scale, usually `1/√D`.
    pub scale: f64,
    /// Nonzero: key `j` is hidden from query `i` when `j > i`.
    pub causal: i64,
    /// Dropout: the Philox key (the generator's seed) of the reserved Bernoulli draw.
    pub seed: u64,
    /// Dropout: the first counter of the reserved draw; score `(bh, i, j)` is element
    /// `(bh·Tq + i)·Tk + j` of it (the composed path's `[B, H, Tq, Tk]` draw).
    pub offset: u64,
    /// Dropout probability of the attention weights, in `[0, 1)`; 0 = no dropout.
    pub dropout: f64,
}

const _: () = assert!(std::mem::size_of::<AttentionParams>() == 320);

/// The largest head dim the attention kernels take.
pub const ATTENTION_MAX_HEAD_DIM: usize = 128;

/// The largest head dim (of q/k and of v) the tensor-core attention kernels
/// (`attention_tc_*_{f32,f16,bf16}`) take; larger heads use the `attention_*` kernels.
pub const ATTENTION_TC_MAX_HEAD_DIM: usize = 64;

/// Query rows per block of `attention_tc_forward_<dt>` (4 warps of 16 rows, 128 threads).
pub const ATTENTION_TC_FORWARD_ROWS: usize = 64;

/// Query (`attention_tc_backward_dq_<dt>`) or key (`attention_tc_backward_dkv_<dt>`) rows
/// per block of the tensor-core backward kernels (2 warps of 16 rows, 64 threads).
pub const ATTENTION_TC_BACKWARD_ROWS: usize = 32;

impl AttentionParams {
    /// Parameters for contiguous `q [B, H, Tq, D]`, `k [B, H, Tk, D]`,
    /// `v [B, H, Tk, Dv]` (and output and gradients), scale `1/√D`, no mask, no bias, not
    /// causal.
    ///
    /// ```
    /// let p = flint_kernels::AttentionParams::contiguous(1, 1, 3, 5, 4, 2);
    /// assert_eq!((p.k_stride, p.v_stride), ([20, 20, 4], [10, 10, 2]));
    /// ```
    pub fn contiguous(batch: i64, heads: i64, tq: i64, tk: i64, d: i64, dv: i64) -> Self {
        AttentionParams {
            batch,
            heads,
            tq,
            tk,
            d,
            dv,
            q_stride: [heads * tq * d, tq * d, d],
            k_stride: [heads * tk * d, tk * d, d],
            v_stride: [heads * tk * dv, tk * dv, dv],
            o_stride: [heads * tq * dv, tq * dv, dv],
            dq_stride: [heads * tq * d, tq * d, d],
            dk_stride: [heads * tk * d, tk * d, d],
            dv_stride: [heads * tk * dv, tk * dv, dv],
            mask_stride: [0; 4],
            bias_stride: [0; 4],
            scale: 1.0 / (d as f64).sqrt(),
            causal: 0,
            seed: 0,
            offset: 0,
            dropout: 0.0,
        }
    }

    /// Sets the dropout of the attention weights: drop probability `p` and the reserved
    /// Bernoulli draw `(seed, offset)` of the generator.
    ///
    /// ```
    /// let p = flint_kernels::AttentionParams::contiguous(1, 1, 2, 2, 8, 8);
    /// let p = p.with_dropout(0.1, 7, 40);
    /// assert_eq!((p.dropout, p.seed, p.offset), (0.1, 7, 40));
    /// ```
    pub fn with_dropout(mut self, p: f64, seed: u64, offset: u64) -> Self {
        self.dropout = p;
        self.seed = seed;
        self.offset = offset;
        self
    }

    /// Sets the causal flag.
    ///
    /// ```
    /// let p = flint_kernels::AttentionParams::contiguous(1, 1, 2, 2, 8, 8);
    /// assert_eq!(p.with_causal(true).causal, 1);
    /// ```
    pub fn with_causal(mut self, causal: bool) -> Self {
        self.causal = causal as i64;
        self
    }

    /// Sets the score scale.
    ///
    /// ```
    /// let p = flint_kernels::AttentionParams::contiguous(1, 1, 2, 2, 8, 8);
    /// assert_eq!(p.with_scale(0.5).scale, 0.5);
    /// ```
    pub fn with_scale(mut self, scale: f64) -> Self {
        self.scale = scale;
        self
    }

    /// Sets the (b, h, i, j) strides of the bool mask, e.g. `[tk, 0, 0, 1]` for a
    /// `[B, 1, 1, Tk]` key-padding mask.
    ///
    /// ```
    /// let p = flint_kernels::AttentionParams::contiguous(2, 1, 3, 3, 8, 8);
    /// assert_eq!(p.with_mask_strides([3, 0, 0, 1]).mask_stride, [3, 0, 0, 1]);
    /// ```
    pub fn with_mask_strides(mut self, strides: [i64; 4]) -> Self {
        self.mask_stride = strides;
        self
    }

    /// Sets the (b, h, i, j) strides of the additive bias.
    ///
    /// ```
    /// let p = flint_kernels::AttentionParams::contiguous(1, 1, 3, 3, 8, 8);
    /// assert_eq!(p.with_bias_strides([0, 0, 3, 1]).bias_stride, [0, 0, 3, 1]);
    /// ```
    pub fn with_bias_strides(mut self, strides: [i64; 4]) -> Self {
        self.bias_stride = strides;
        self
    }
}

// ---------------------------------------------------------------------------------------
// Entry lists. Written out here (the kernels are generated by C macros); the NVRTC test
// checks each list against the `.entry` names of the module's PTX, both ways.

/// `op_dtype` names for an op over a dtype group.
macro_rules! dtypes {
    (floats, $op:ident) => {
        dtypes!([f32, f64, f16, bf16], $op)
    };
    (nums, $op:ident) => {
        dtypes!([f32, f64, f16, bf16, i64], $op)
    };
    (all, $op:ident) => {
        dtypes!([f32, f64, f16, bf16, i64, bool], $op)
    };
    ([$($dt:ident),* $(,)?], $op:ident) => {
        &[$(concat!(stringify!($op), "_", stringify!($dt))),*]
    };
}

/// A flat `&'static [&'static str]` from `group: op, op, …;` lines, where a group is
/// `floats` (f32 f64 f16 bf16), `nums` (floats and i64), `all` (nums and bool) or an
/// explicit `[dtype, …]`.
macro_rules! entry_list {
    ($($group:tt: $($op:ident),+ $(,)?;)*) => {{
        const PARTS: &[&[&str]] = &[$($(dtypes!($group, $op)),+),*];
        const LIST: [&str; count(PARTS)] = flatten(PARTS);
        &LIST
    }};
}

const fn count(parts: &[&[&str]]) -> usize {
    let (mut n, mut i) = (0, 0);
    while i < parts.len() {
        n += parts[i].len();
        i += 1;
    }
    n
}

const fn flatten<const N: usize>(parts: &[&[&'static str]]) -> [&'static str; N] {
    let mut out = [""; N];
    let (mut k, mut i) = (0, 0);
    while i < parts.len() {
        let mut j = 0;
        while j < parts[i].len() {
            out[k] = parts[i][j];
            k += 1;
            j += 1;
        }
        i += 1;
    }
    out
}

const ELEMENTWISE: &[&str] = entry_list! {
    nums: add, sub, mul, maximum, minimum, relu_backward;
    floats: div, pow, gelu_backward, gelu_tanh_backward;
    nums: add_assign, sub_assign, mul_assign;
    floats: div_assign;
    floats: add_scalar, sub_scalar, rsub_scalar, mul_scalar, div_scalar, rdiv_scalar,
        pow_scalar, rpow_scalar, maximum_scalar, minimum_scalar;
    all: eq, ne, lt, le, gt, ge;
    [bool]: logical_and, logical_or, logical_xor, logical_not;
};

const UNARY: &[&str] = entry_list! {
    floats: exp, log, sqrt, rsqrt, tanh, sigmoid, silu, sin, cos, reciprocal, floor, ceil,
        round, erf, gelu, gelu_tanh;
    nums: neg, abs, square, sign, relu;
};

const COPY: &[&str] = entry_list! {
    [f64, f16, bf16, i64, bool]: cast_f32;
    [f32, f16, bf16, i64, bool]: cast_f64;
    [f32, f64, bf16, i64, bool]: cast_f16;
    [f32, f64, f16, i64, bool]: cast_bf16;
    [f32, f64, f16, bf16, bool]: cast_i64;
    [f32, f64, f16, bf16, i64]: cast_bool;
    all: copy, contiguous, fill;
    nums: arange;
};

const REDUCE: &[&str] = entry_list! {
    nums: sum_dim, prod_dim, max_dim, min_dim, argmax_dim, argmin_dim, sum_cols,
        sum_cols_part, sum_cols_fin, prod_cols, prod_cols_part, prod_cols_fin, max_cols,
        max_cols_part, max_cols_fin, min_cols, min_cols_part, min_cols_fin;
    floats: mean_dim;
};

const SOFTMAX: &[&str] = entry_list! {
    floats: softmax, log_softmax, softmax_backward, log_softmax_backward;
    floats: softmax_w4, log_softmax_w4, softmax_backward_w4, log_softmax_backward_w4;
    floats: softmax_w8, log_softmax_w8, softmax_backward_w8, log_softmax_backward_w8;
    floats: softmax_w16, log_softmax_w16, softmax_backward_w16, log_softmax_backward_w16;
    floats: softmax_w32, log_softmax_w32, softmax_backward_w32, log_softmax_backward_w32;
};

const NORM: &[&str] = entry_list! {
    floats: layer_norm, layer_norm_backward, layer_norm_backward_params, batch_norm_stats,
        batch_norm_apply, batch_norm_backward_reduce, batch_norm_backward_apply;
    floats: layer_norm_w8, layer_norm_backward_w8, layer_norm_w16, layer_norm_backward_w16,
        layer_norm_w32, layer_norm_backward_w32;
};

const INDEX: &[&str] = entry_list! {
    all: index_select, gather, masked_fill, where, triu, tril;
    nums: index_add, scatter_add;
};

const RANDOM: &[&str] = entry_list! {
    floats: philox_uniform, philox_normal, dropout, dropout_backward;
    [bool]: philox_bernoulli;
    [i64]: philox_randint;
};

const OPTIM: &[&str] = entry_list! {
    floats: sgd, adam;
};

const WINDOW: &[&str] = entry_list! {
    all: im2col;
    nums: col2im, window_argmax;
};

const ATTENTION: &[&str] = entry_list! {
    floats: attention_forward, attention_backward_delta, attention_backward_dq,
        attention_backward_dkv;
    [f32, f16, bf16]: attention_tc_forward, attention_tc_backward_dq, attention_tc_backward_dkv;
};

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn entry_names_are_unique_and_per_module_counts_are_known() {
        let counts: Vec<(&str, usize)> =
            MODULES.iter().map(|m| (m.name, m.entries.len())).collect();
        // worked out from the lists: e.g. elementwise = 6·5 + 4·4 + 3·5 + 4 + 10·4 + 6·6 + 4
        assert_eq!(
            counts,
            [
                ("elementwise", 145),
                ("unary", 89),
                ("copy", 53),
                ("reduce", 94),
                ("softmax", 80),
                ("norm", 52),
                ("index", 46),
                ("random", 18),
                ("optim", 8),
                ("window", 16),
                ("attention", 25),
            ]
        );
        let mut seen = HashSet::new();
        for m in MODULES {
            for e in m.entries {
                assert!(seen.insert(*e), "duplicate entry {e}");
            }
        }
    }

    #[test]
    fn entry_lists_expand_groups_in_order() {
        assert_eq!(
            &SOFTMAX[..4],
            ["softmax_f32", "softmax_f64", "softmax_f16", "softmax_bf16"]
        );
        assert_eq!(&COPY[..2], ["cast_f32_f64", "cast_f32_f16"]);
        assert_eq!(
            RANDOM[16..],
            ["philox_bernoulli_bool", "philox_randint_i64"]
        );
        assert!(ELEMENTWISE.contains(&"logical_not_bool"));
        assert!(INDEX.contains(&"where_bool"));
    }

    #[test]
    fn sources_are_self_contained() {
        for m in MODULES {
            assert!(
                !m.source.contains("#include"),
                "{} includes a header",
                m.name
            );
            assert!(m.source.starts_with("#line 1 \"common.cuh\""), "{}", m.name);
            let file = format!("#line 1 \"{}.cu\"", m.name);
            assert!(m.source.contains(&file), "{} lacks {file}", m.name);
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(module("norm").map(|m| m.name), Some("norm"));
        assert_eq!(module_of("layer_norm_bf16").map(|m| m.name), Some("norm"));
        assert_eq!(
            module_of("attention_backward_dkv_f64").map(|m| m.name),
            Some("attention")
        );
        assert!(module_of("softmax_i64").is_none());
    }

    #[test]
    fn layouts() {
        let l = KernelLayout::contiguous(&[2, 3, 4]).unwrap();
        assert_eq!(l.rank, 3);
        assert_eq!(l.shape, [2, 3, 4, 1, 1, 1, 1, 1]);
        assert_eq!(l.strides, [12, 4, 1, 0, 0, 0, 0, 0]);
        assert_eq!(l.numel(), 24);
        let t = KernelLayout::new(&[4, 3], &[1, 4], 7).unwrap(); // a transposed view
        assert_eq!((t.strides[..2].to_vec(), t.offset), (vec![1, 4], 7));
        assert!(KernelLayout::new(&[usize::MAX], &[1], 0).is_none());
        assert!(KernelLayout::contiguous(&[usize::MAX, 2]).is_none());
        assert_eq!(KernelLayout::contiguous(&[3, 0, 2]).unwrap().numel(), 0);
    }

    #[test]
    fn attention_params_builders() {
        let p = AttentionParams::contiguous(2, 3, 5, 7, 16, 8)
            .with_scale(0.3)
            .with_mask_strides([7, 0, 0, 1])
            .with_bias_strides([0, 35, 7, 1])
            .with_causal(true);
        assert_eq!(p.q_stride, [3 * 5 * 16, 5 * 16, 16]);
        assert_eq!(p.k_stride, [3 * 7 * 16, 7 * 16, 16]);
        assert_eq!(p.v_stride, [3 * 7 * 8, 7 * 8, 8]);
        assert_eq!((p.scale, p.causal), (0.3, 1));
        assert_eq!(p.mask_stride, [7, 0, 0, 1]);
        assert_eq!(p.bias_stride, [0, 35, 7, 1]);
    }
}
