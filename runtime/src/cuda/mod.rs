//! The CUDA backend (cargo feature `cuda`).
//!
//! Tensors on [`Device::Cuda`](crate::Device::Cuda) keep their elements in device memory
//! ([`CudaBuffer`], from a caching allocator: [`memory_stats`], [`empty_cache`]). CUDA is
//! found at run time: cudarc loads the driver, cuBLAS and NVRTC libraries when first
//! needed, so the build needs no CUDA installation, and a machine without a GPU gets an
//! [`Error::CudaUnavailable`](crate::Error::CudaUnavailable) ("CUDA is not available: …"),
//! never a panic.
//!
//! What runs on CUDA so far: moves between devices ([`Tensor::to`](crate::Tensor::to),
//! differentiable), `zeros`/`full`/`ones` (device memsets), contiguous clones, and
//! `matmul` for f32, f64, f16 and bf16 (cuBLAS). Every other op given a CUDA tensor
//! returns [`Error::NoCudaKernel`](crate::Error::NoCudaKernel) from its `try_` form (and
//! panics with that message from its panicking form) without touching device memory.
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
mod buffer;
mod context;
pub mod kernels;
mod launch;
mod matmul;
pub(crate) mod ops;

pub use alloc::{empty_cache, memory_stats, DeviceVec, MemoryStats};
pub use buffer::CudaBuffer;
pub use context::{available, device_count, synchronize};

pub(crate) use context::gpu;
pub(crate) use matmul::matmul;

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
