//! [`CudaBuffer`]: a typed device buffer, and the copies between host and device.

use super::alloc::DeviceVec;
use super::context::{driver_error, gpu, Gpu};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::storage::CpuBuffer;
use cudarc::driver::sys;
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};
use std::ops::Range;
use std::sync::Arc;

/// A typed buffer in the memory of one CUDA device, from Flint's caching allocator.
/// `bool` is stored as one byte per element (`0` or `1`), as in PyTorch.
#[derive(Debug)]
pub enum CudaBuffer {
    /// `bool` elements as bytes.
    Bool(DeviceVec<u8>),
    /// `i64` elements.
    I64(DeviceVec<i64>),
    /// `f16` elements.
    F16(DeviceVec<f16>),
    /// `bf16` elements.
    BF16(DeviceVec<bf16>),
    /// `f32` elements.
    F32(DeviceVec<f32>),
    /// `f64` elements.
    F64(DeviceVec<f64>),
}

/// Binds `$v` to the [`DeviceVec`] inside a [`CudaBuffer`] and evaluates `$body` once per
/// dtype.
macro_rules! with_cuda_buffer {
    ($buf:expr, $v:ident => $body:expr) => {
        match $buf {
            CudaBuffer::Bool($v) => $body,
            CudaBuffer::I64($v) => $body,
            CudaBuffer::F16($v) => $body,
            CudaBuffer::BF16($v) => $body,
            CudaBuffer::F32($v) => $body,
            CudaBuffer::F64($v) => $body,
        }
    };
}

/// Copies `src` to a new device buffer.
fn upload<T: DeviceRepr>(g: &Arc<Gpu>, src: &[T]) -> Result<DeviceVec<T>> {
    let mut dst = g.alloc::<T>(src.len())?;
    if !src.is_empty() {
        g.stream
            .memcpy_htod(src, &mut *dst)
            .map_err(|e| driver_error("to", g.ordinal, e))?;
    }
    Ok(dst)
}

/// Copies `range` of `src` to a new host vector (waits for the copy).
fn download<T: DeviceRepr + Default + Clone>(
    src: &DeviceVec<T>,
    range: Range<usize>,
) -> Result<Vec<T>> {
    let g = src.gpu();
    let mut out = vec![T::default(); range.len()];
    if !range.is_empty() {
        g.stream
            .memcpy_dtoh(&src.slice(range), &mut out)
            .map_err(|e| driver_error("to", g.ordinal, e))?;
        g.synchronize()?;
    }
    Ok(out)
}

/// Copies `range` of `src` to a new device buffer on the same device.
fn copy_within<T: DeviceRepr>(src: &DeviceVec<T>, range: Range<usize>) -> Result<DeviceVec<T>> {
    let g = src.gpu();
    let mut dst = g.alloc::<T>(range.len())?;
    if !range.is_empty() {
        g.stream
            .memcpy_dtod(&src.slice(range), &mut *dst)
            .map_err(|e| driver_error("clone", g.ordinal, e))?;
    }
    Ok(dst)
}

/// A device buffer of `len` zero bytes.
fn zeroed<T: DeviceRepr + ValidAsZeroBits>(g: &Arc<Gpu>, len: usize) -> Result<DeviceVec<T>> {
    let mut dst = g.alloc::<T>(len)?;
    if len > 0 {
        g.stream
            .memset_zeros(&mut *dst)
            .map_err(|e| driver_error("zeros", g.ordinal, e))?;
    }
    Ok(dst)
}

/// A device buffer of `len` copies of a 1-, 2- or 4-byte pattern, set with `cuMemsetD*`.
fn memset<T: DeviceRepr>(g: &Arc<Gpu>, len: usize, bits: u32) -> Result<DeviceVec<T>> {
    let mut dst = g.alloc::<T>(len)?;
    if len > 0 {
        g.bind()?;
        let stream = g.stream.clone();
        let (ptr, _sync) = dst.device_ptr_mut(&stream);
        let cu = stream.cu_stream();
        // SAFETY: `ptr` holds `len` elements of `size_of::<T>()` bytes; the memset is
        // queued on the buffer's stream.
        let r = unsafe {
            match std::mem::size_of::<T>() {
                1 => sys::cuMemsetD8Async(ptr, bits as u8, len, cu),
                2 => sys::cuMemsetD16Async(ptr, bits as u16, len, cu),
                _ => sys::cuMemsetD32Async(ptr, bits, len, cu),
            }
        };
        r.result().map_err(|e| driver_error("full", g.ordinal, e))?;
    }
    Ok(dst)
}

impl CudaBuffer {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            CudaBuffer::Bool(_) => DType::Bool,
            CudaBuffer::I64(_) => DType::I64,
            CudaBuffer::F16(_) => DType::F16,
            CudaBuffer::BF16(_) => DType::BF16,
            CudaBuffer::F32(_) => DType::F32,
            CudaBuffer::F64(_) => DType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_cuda_buffer!(self, v => v.len())
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ordinal of the device that holds it.
    pub fn ordinal(&self) -> usize {
        with_cuda_buffer!(self, v => v.ordinal())
    }

    /// The device that holds it and the address of its first element (for kernel
    /// arguments; valid while the buffer lives).
    pub(crate) fn raw(&self) -> (Arc<Gpu>, u64) {
        with_cuda_buffer!(self, v => {
            let g = v.gpu().clone();
            // no events exist on Flint's contexts: the guard records nothing
            let (ptr, _guard) = v.device_ptr(&g.stream);
            (g.clone(), ptr)
        })
    }

    /// `n` uninitialised elements of `dtype` on `g` (for kernel outputs).
    pub(crate) fn uninit(g: &Arc<Gpu>, dtype: DType, n: usize) -> Result<CudaBuffer> {
        Ok(match dtype {
            DType::Bool => CudaBuffer::Bool(g.alloc(n)?),
            DType::I64 => CudaBuffer::I64(g.alloc(n)?),
            DType::F16 => CudaBuffer::F16(g.alloc(n)?),
            DType::BF16 => CudaBuffer::BF16(g.alloc(n)?),
            DType::F32 => CudaBuffer::F32(g.alloc(n)?),
            DType::F64 => CudaBuffer::F64(g.alloc(n)?),
        })
    }

    /// Copies elements `range` of a host buffer to device `ordinal`.
    ///
    /// ```
    /// use flint_runtime::cuda::CudaBuffer;
    /// use flint_runtime::storage::CpuBuffer;
    /// if flint_runtime::cuda::available().is_err() {
    ///     return; // no GPU here
    /// }
    /// let host = CpuBuffer::F32(vec![1.0, 2.0, 3.0]);
    /// let dev = CudaBuffer::from_cpu(&host, 1..3, 0).unwrap();
    /// assert_eq!(dev.len(), 2);
    /// let back = dev.to_cpu(0..2).unwrap();
    /// assert!(matches!(back, CpuBuffer::F32(v) if v == [2.0, 3.0]));
    /// ```
    pub fn from_cpu(buf: &CpuBuffer, range: Range<usize>, ordinal: usize) -> Result<CudaBuffer> {
        check_range("to", &range, buf.len())?;
        let g = gpu(ordinal)?;
        Ok(match buf {
            CpuBuffer::Bool(v) => {
                let bytes: Vec<u8> = v[range].iter().map(|&b| b as u8).collect();
                CudaBuffer::Bool(upload(&g, &bytes)?)
            }
            CpuBuffer::I64(v) => CudaBuffer::I64(upload(&g, &v[range])?),
            CpuBuffer::F16(v) => CudaBuffer::F16(upload(&g, &v[range])?),
            CpuBuffer::BF16(v) => CudaBuffer::BF16(upload(&g, &v[range])?),
            CpuBuffer::F32(v) => CudaBuffer::F32(upload(&g, &v[range])?),
            CpuBuffer::F64(v) => CudaBuffer::F64(upload(&g, &v[range])?),
        })
    }

    /// Copies elements `range` to a host buffer (waits for the device).
    pub fn to_cpu(&self, range: Range<usize>) -> Result<CpuBuffer> {
        check_range("to", &range, self.len())?;
        Ok(match self {
            CudaBuffer::Bool(v) => {
                CpuBuffer::Bool(download(v, range)?.into_iter().map(|b| b != 0).collect())
            }
            CudaBuffer::I64(v) => CpuBuffer::I64(download(v, range)?),
            CudaBuffer::F16(v) => CpuBuffer::F16(download(v, range)?),
            CudaBuffer::BF16(v) => CpuBuffer::BF16(download(v, range)?),
            CudaBuffer::F32(v) => CpuBuffer::F32(download(v, range)?),
            CudaBuffer::F64(v) => CpuBuffer::F64(download(v, range)?),
        })
    }

    /// Copies elements `range` to a new buffer on the same device.
    pub fn copy_range(&self, range: Range<usize>) -> Result<CudaBuffer> {
        check_range("clone", &range, self.len())?;
        Ok(match self {
            CudaBuffer::Bool(v) => CudaBuffer::Bool(copy_within(v, range)?),
            CudaBuffer::I64(v) => CudaBuffer::I64(copy_within(v, range)?),
            CudaBuffer::F16(v) => CudaBuffer::F16(copy_within(v, range)?),
            CudaBuffer::BF16(v) => CudaBuffer::BF16(copy_within(v, range)?),
            CudaBuffer::F32(v) => CudaBuffer::F32(copy_within(v, range)?),
            CudaBuffer::F64(v) => CudaBuffer::F64(copy_within(v, range)?),
        })
    }

    /// `n` zeros (`false`) of `dtype` on device `ordinal`, set with a device memset.
    pub fn zeros(dtype: DType, n: usize, ordinal: usize) -> Result<CudaBuffer> {
        let g = gpu(ordinal)?;
        Ok(match dtype {
            DType::Bool => CudaBuffer::Bool(zeroed(&g, n)?),
            DType::I64 => CudaBuffer::I64(zeroed(&g, n)?),
            DType::F16 => CudaBuffer::F16(zeroed(&g, n)?),
            DType::BF16 => CudaBuffer::BF16(zeroed(&g, n)?),
            DType::F32 => CudaBuffer::F32(zeroed(&g, n)?),
            DType::F64 => CudaBuffer::F64(zeroed(&g, n)?),
        })
    }

    /// `n` copies of `value` (converted to `dtype` as [`crate::Tensor::full`] does) on
    /// device `ordinal`: a device memset for 1-, 2- and 4-byte dtypes, an upload for the
    /// 8-byte ones.
    pub fn full(dtype: DType, n: usize, value: f64, ordinal: usize) -> Result<CudaBuffer> {
        if value == 0.0 && !value.is_sign_negative() {
            return Self::zeros(dtype, n, ordinal);
        }
        let g = gpu(ordinal)?;
        // the one converted element, so the conversion is exactly the host's
        let one = CpuBuffer::from_f64_iter(dtype, std::iter::once(value));
        Ok(match one {
            CpuBuffer::Bool(v) => CudaBuffer::Bool(memset(&g, n, v[0] as u32)?),
            CpuBuffer::F16(v) => CudaBuffer::F16(memset(&g, n, v[0].to_bits() as u32)?),
            CpuBuffer::BF16(v) => CudaBuffer::BF16(memset(&g, n, v[0].to_bits() as u32)?),
            CpuBuffer::F32(v) => CudaBuffer::F32(memset(&g, n, v[0].to_bits())?),
            CpuBuffer::I64(v) => CudaBuffer::I64(upload(&g, &vec![v[0]; n])?),
            CpuBuffer::F64(v) => CudaBuffer::F64(upload(&g, &vec![v[0]; n])?),
        })
    }
}

fn check_range(op: &'static str, range: &Range<usize>, len: usize) -> Result<()> {
    if range.start > range.end || range.end > len {
        return Err(Error::index(
            op,
            format!("range {range:?} is outside a buffer of {len} elements"),
        ));
    }
    Ok(())
}
