//! Storage: the buffer that tensors (and their views) share.

use crate::device::Device;
use crate::dtype::{DType, Element};
use half::{bf16, f16};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A typed host buffer.
#[derive(Clone, Debug)]
pub enum CpuBuffer {
    /// `bool` elements.
    Bool(Vec<bool>),
    /// `i64` elements.
    I64(Vec<i64>),
    /// `f16` elements.
    F16(Vec<f16>),
    /// `bf16` elements.
    BF16(Vec<bf16>),
    /// `f32` elements.
    F32(Vec<f32>),
    /// `f64` elements.
    F64(Vec<f64>),
}

/// Binds `$v` to the typed `Vec` inside a [`CpuBuffer`] and evaluates `$body` once per
/// dtype, so a generic kernel is written once and instantiated for every type.
#[macro_export]
#[doc(hidden)]
macro_rules! with_buffer {
    ($buf:expr, $v:ident => $body:expr) => {
        match $buf {
            $crate::storage::CpuBuffer::Bool($v) => $body,
            $crate::storage::CpuBuffer::I64($v) => $body,
            $crate::storage::CpuBuffer::F16($v) => $body,
            $crate::storage::CpuBuffer::BF16($v) => $body,
            $crate::storage::CpuBuffer::F32($v) => $body,
            $crate::storage::CpuBuffer::F64($v) => $body,
        }
    };
}

impl CpuBuffer {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            CpuBuffer::Bool(_) => DType::Bool,
            CpuBuffer::I64(_) => DType::I64,
            CpuBuffer::F16(_) => DType::F16,
            CpuBuffer::BF16(_) => DType::BF16,
            CpuBuffer::F32(_) => DType::F32,
            CpuBuffer::F64(_) => DType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_buffer!(self, v => v.len())
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A buffer of `n` default values (zeros, `false`).
    pub fn zeros(dtype: DType, n: usize) -> CpuBuffer {
        use crate::cpu::pool::zeros;
        match dtype {
            DType::Bool => CpuBuffer::Bool(zeros(n)),
            DType::I64 => CpuBuffer::I64(zeros(n)),
            DType::F16 => CpuBuffer::F16(zeros(n)),
            DType::BF16 => CpuBuffer::BF16(zeros(n)),
            DType::F32 => CpuBuffer::F32(zeros(n)),
            DType::F64 => CpuBuffer::F64(zeros(n)),
        }
    }

    /// A buffer of `dtype` built from an iterator of `f64` values.
    pub fn from_f64_iter(dtype: DType, it: impl Iterator<Item = f64>) -> CpuBuffer {
        match dtype {
            DType::Bool => CpuBuffer::Bool(it.map(bool::from_f64).collect()),
            DType::I64 => CpuBuffer::I64(it.map(i64::from_f64).collect()),
            DType::F16 => CpuBuffer::F16(it.map(f16::from_f64).collect()),
            DType::BF16 => CpuBuffer::BF16(it.map(bf16::from_f64).collect()),
            DType::F32 => CpuBuffer::F32(it.map(|x| x as f32).collect()),
            DType::F64 => CpuBuffer::F64(it.collect()),
        }
    }
}

/// Conversion between `Vec<T>` / `&[T]` and [`CpuBuffer`].
pub trait BufferElement: Element {
    /// Wraps a vector.
    fn into_buffer(v: Vec<Self>) -> CpuBuffer;
    /// The typed slice, if the buffer holds this type.
    fn slice(b: &CpuBuffer) -> Option<&[Self]>;
    /// The typed mutable slice, if the buffer holds this type.
    fn slice_mut(b: &mut CpuBuffer) -> Option<&mut [Self]>;
    /// The vector inside, if the buffer holds this type (the buffer back otherwise).
    fn from_buffer(b: CpuBuffer) -> Result<Vec<Self>, CpuBuffer>;
}

macro_rules! buffer_element {
    ($t:ty, $v:ident) => {
        impl BufferElement for $t {
            #[inline]
            fn into_buffer(v: Vec<Self>) -> CpuBuffer {
                CpuBuffer::$v(v)
            }
            #[inline]
            fn slice(b: &CpuBuffer) -> Option<&[Self]> {
                match b {
                    CpuBuffer::$v(v) => Some(v),
                    _ => None,
                }
            }
            #[inline]
            fn slice_mut(b: &mut CpuBuffer) -> Option<&mut [Self]> {
                match b {
                    CpuBuffer::$v(v) => Some(v),
                    _ => None,
                }
            }
            #[inline]
            fn from_buffer(b: CpuBuffer) -> Result<Vec<Self>, CpuBuffer> {
                match b {
                    CpuBuffer::$v(v) => Ok(v),
                    other => Err(other),
                }
            }
        }
    };
}
buffer_element!(bool, Bool);
buffer_element!(i64, I64);
buffer_element!(f16, F16);
buffer_element!(bf16, BF16);
buffer_element!(f32, F32);
buffer_element!(f64, F64);

/// The data of a storage, by device.
#[derive(Debug)]
pub enum StorageData {
    /// Host memory.
    Cpu(CpuBuffer),
    /// The memory of a CUDA device (feature `cuda`).
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaBuffer),
}

impl StorageData {
    /// The host buffer, or `None` for device memory.
    pub fn as_cpu(&self) -> Option<&CpuBuffer> {
        match self {
            StorageData::Cpu(b) => Some(b),
            #[cfg(feature = "cuda")]
            StorageData::Cuda(_) => None,
        }
    }

    /// The host buffer for writing, or `None` for device memory.
    pub fn as_cpu_mut(&mut self) -> Option<&mut CpuBuffer> {
        match self {
            StorageData::Cpu(b) => Some(b),
            #[cfg(feature = "cuda")]
            StorageData::Cuda(_) => None,
        }
    }
}

/// A buffer shared by a tensor and all its views, with a version counter that every
/// in-place write bumps (autograd uses it to detect writes to saved tensors).
#[derive(Debug)]
pub struct Storage {
    data: RwLock<StorageData>,
    version: AtomicU64,
    device: Device,
}

impl Drop for Storage {
    /// Hands a large host buffer to the cache ([`crate::cpu::pool`]) for reuse.
    fn drop(&mut self) {
        if let Ok(StorageData::Cpu(buf)) = self.data.get_mut() {
            crate::cpu::pool::give(std::mem::replace(buf, CpuBuffer::Bool(Vec::new())));
        }
    }
}

impl Storage {
    /// A CPU storage owning `buf`.
    pub fn cpu(buf: CpuBuffer) -> Storage {
        Storage {
            data: RwLock::new(StorageData::Cpu(buf)),
            version: AtomicU64::new(0),
            device: Device::Cpu,
        }
    }

    /// A storage owning the device buffer `buf`, on the device that holds it.
    #[cfg(feature = "cuda")]
    pub fn cuda(buf: crate::cuda::CudaBuffer) -> Storage {
        let device = Device::Cuda(buf.ordinal());
        Storage {
            data: RwLock::new(StorageData::Cuda(buf)),
            version: AtomicU64::new(0),
            device,
        }
    }

    /// The device the data lives on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The number of in-place writes so far.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Shared access to the data.
    pub fn read(&self) -> RwLockReadGuard<'_, StorageData> {
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Exclusive access for an in-place write; bumps the version counter.
    pub fn write(&self) -> RwLockWriteGuard<'_, StorageData> {
        self.version.fetch_add(1, Ordering::AcqRel);
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }
}
