//! The CUDA backend (cargo feature `cuda`).
//!
//! Tensors on [`Device::Cuda`](crate::Device::Cuda) keep their elements in device memory
//! ([`CudaBuffer`], from a caching allocator: [`memory_stats`], [`empty_cache`]). CUDA is
//! found at run time: cudarc loads the driver, cuBLAS and NVRTC libraries when first
//! needed, so the build needs no CUDA installation, and a machine without a GPU gets an
//! [`Error::CudaUnavailable`](crate::Error::CudaUnavailable) ("CUDA is not available: …"),
//! never a panic.
//!
//! What runs on CUDA (each op launches the `flint-kernels` entry of its family, compiled
//! with NVRTC for the device at first use; the module cache is per device):
//! - moves between devices ([`Tensor::to`](crate::Tensor::to), differentiable),
//!   `zeros`/`full`/`ones` (device memsets), `arange` (kernel);
//! - elementwise arithmetic with broadcasting and any strides (`add sub mul div pow
//!   maximum minimum`, the operators, `clamp`), tensor-scalar forms with the scalar as a
//!   kernel argument, unary math (`exp log sqrt rsqrt tanh sigmoid silu sin cos
//!   reciprocal floor ceil round erf gelu` (exact and tanh) `neg abs sign relu`),
//!   comparisons and logical ops, `where_`, `masked_fill`, dtype casts
//!   ([`Tensor::to_dtype`](crate::Tensor::to_dtype));
//! - `contiguous`/`deep_clone` of any view (strided copy kernel) and the in-place ops
//!   (`copy_`, `fill_`, `add_`, `mul_`, `masked_fill_`, …, written through the view);
//! - reductions over any dims (`sum`, `prod`, `mean`, `max`, `min`, `argmax`, `argmin`,
//!   and what is built on them: `var`, `std`, `logsumexp`): one block per output, or,
//!   over the rows of a wide tensor (bias gradients), column kernels whose warps read
//!   along the rows;
//! - fused softmax and log-softmax (one kernel each way), layer norm and batch norm
//!   (forward, input gradient, parameter gradients), so cross-entropy and attention use
//!   them; GELU and ReLU backward passes in one kernel each;
//! - `index_select` (embedding lookups), `gather`, `scatter_add` (their backward), `cat`,
//!   `stack`, `triu`/`tril` (and the causal masks of attention), `masked_select` (its
//!   positions read on the host, as the output's size depends on them);
//! - `matmul` for f32, f64, f16 and bf16 (cuBLAS; f32 on TF32 tensor cores with
//!   [`set_allow_tf32`]); a batch of matrices that is not evenly spaced in memory is made
//!   contiguous first, so every product is one strided-batched call;
//! - sliding windows (`im2col`, `col2im`, the window argmax), so convolutions (1-3
//!   spatial dims, any stride, padding, dilation and groups), max/avg/adaptive pooling
//!   and `unfold`/`fold` run on the device, with their gradients;
//! - fused scaled dot-product attention
//!   ([`scaled_dot_product_attention`](crate::nn::functional::scaled_dot_product_attention),
//!   so also `MultiheadAttention` without `need_weights`): f32/f64 with head dims up to
//!   128, bool or additive masks broadcast over any batch shape, `causal`, dropout of the
//!   weights (the CPU's mask for the same generator state); forward and backward without
//!   storing the `[.., Tq, Tk]` scores, f32 heads up to 64 on the tensor-core kernels
//!   (`cuda/attention.rs`);
//! - dropout in one kernel each way, its mask drawn on the device from the global
//!   generator's Philox stream (the same bits as on the CPU for the same seed and
//!   offset); fused Adam/AdamW and SGD steps (one launch per parameter).
//!
//! Elementwise launches coalesce the dims of their operands first (contiguous operands
//! reach the kernel as one dim), which also lets views of more than 8 dims through when
//! they merge down to 8.
//!
//! So the layers, losses and optimizers of `nn` (Linear, Conv, pooling, activations,
//! LayerNorm, BatchNorm, Dropout, Embedding, attention, cross-entropy, the Adam/AdamW
//! and SGD updates) run on CUDA with their autograd (`tests/cuda.rs` trains an MLP and an
//! attention block on both devices and compares every wired op with the CPU). An op
//! without a kernel (an `i64` matrix product, …) given a CUDA tensor returns
//! [`Error::NoCudaKernel`](crate::Error::NoCudaKernel) from its `try_` form (and panics
//! with that message from its panicking form) without touching device memory.
//!
//! [`profile_start`] / [`profile_stop`] time every kernel and product on the device (CUDA
//! events), for finding where a step's time goes.
//!
//! ```
//! use flint_runtime::{cuda, Device, Tensor};
//! if let Err(e) = cuda::available() {
//!     println!("{e}"); // CUDA is not available: …
//!     return;
//! }
//! let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]).to(Device::Cuda(0));
//! let c = a.matmul(&a).to(Device::Cpu);
//! assert_eq!(c.to_vec::<f32>(), vec![7.0, 10.0, 15.0, 22.0]);
//! ```

mod alloc;
pub(crate) mod attention;
mod buffer;
mod context;
pub mod kernels;
mod launch;
mod matmul;
pub(crate) mod ops;
pub(crate) mod optim;
mod profile;

pub use alloc::{empty_cache, memory_stats, DeviceVec, MemoryStats};
pub use buffer::CudaBuffer;
pub use context::{available, device_count, synchronize};

pub(crate) use context::gpu;
pub use matmul::{allow_tf32, set_allow_tf32};
pub(crate) use matmul::{batched_operand, gemm_operand, linear_bias, matmul};
pub use profile::{profile_start, profile_stop, KernelTime};

#[cfg(test)]
mod tests {
    use crate::{DType, Device, Error, Tensor};

    #[test]
    fn without_a_gpu_cuda_is_an_error_with_the_reason() {
        let Err(e) = super::available() else {
            // a GPU machine: creating on the device works instead
            let t = Tensor::try_zeros([2], (DType::F32, Device::Cuda(0))).unwrap();
            assert_eq!(t.device(), Device::Cuda(0));
            return;
        };
        assert!(matches!(e, Error::CudaUnavailable(_)), "{e:?}");
        assert!(e.to_string().starts_with("CUDA is not available: "), "{e}");
        assert_eq!(super::device_count(), 0);
        let e = Tensor::try_zeros([2], (DType::F32, Device::Cuda(0))).unwrap_err();
        assert!(e.to_string().starts_with("CUDA is not available: "), "{e}");
        let e = Tensor::from_vec(vec![1.0f32], [1])
            .try_to(Device::Cuda(0))
            .unwrap_err();
        assert!(e.to_string().starts_with("CUDA is not available: "), "{e}");
        let e = super::kernels::module(0, "k", "extern \"C\" __global__ void k() {}").unwrap_err();
        assert!(e.to_string().starts_with("CUDA is not available: "), "{e}");
        let e = super::empty_cache(Device::Cuda(0)).unwrap_err();
        assert!(e.to_string().starts_with("CUDA is not available: "), "{e}");
    }
}
