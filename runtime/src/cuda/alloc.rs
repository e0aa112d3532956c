//! The caching device allocator.
//!
//! Every CUDA allocation of Flint goes through here. A freed buffer's block is not
//! returned to the driver but kept in a free list of its size, and the next allocation
//! of that size takes it back, so that a training loop, which allocates the same sizes
//! at every step, calls `cuMemAlloc` only during its first step (PyTorch's
//! `CUDACachingAllocator` does the same). Sizes are rounded up to buckets: multiples of
//! 512 bytes up to 1 MiB, of 2 MiB above. A block is reused only for its own bucket.
//!
//! Reuse is safe without events because all work of a device runs on one stream: a
//! kernel that reads a freed block was queued before any kernel that writes it after it
//! was taken again. When `cuMemAlloc` runs out of memory, the cached blocks of the
//! device are released and the allocation is tried once more.

use super::context::{driver_error, gpu, Gpu};
use crate::device::Device;
use crate::error::{Error, Result};
use cudarc::driver::sys::{cudaError_enum, CUdeviceptr};
use cudarc::driver::{result as drv, CudaSlice, DeviceRepr};
use std::collections::BTreeMap;
use std::mem::ManuallyDrop;
use std::sync::Arc;

const SMALL: usize = 1 << 20;
const SMALL_ROUND: usize = 512;
const LARGE_ROUND: usize = 2 << 20;

/// The bucket (block size in bytes) that an allocation of `bytes` uses.
pub(crate) fn bucket(bytes: usize) -> usize {
    let bytes = bytes.max(1);
    if bytes <= SMALL {
        bytes.div_ceil(SMALL_ROUND) * SMALL_ROUND
    } else {
        bytes.div_ceil(LARGE_ROUND) * LARGE_ROUND
    }
}

/// Memory use of one device as seen by Flint's caching allocator.
///
/// ```no_run
/// use flint_runtime::{cuda, DType, Device, Tensor};
/// let t = Tensor::zeros([1024], (DType::F32, Device::Cuda(0)));
/// let s = cuda::memory_stats(Device::Cuda(0))?;
/// assert!(s.allocated >= 4096 && s.reserved >= s.allocated);
/// # Ok::<(), flint_runtime::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes in blocks that live buffers use (rounded up to the allocator's buckets).
    pub allocated: usize,
    /// Bytes obtained from the driver and not yet returned: `allocated` plus the cached
    /// free blocks (PyTorch's `memory_reserved`).
    pub reserved: usize,
    /// The highest `allocated` so far.
    pub peak_allocated: usize,
    /// How many times the allocator called `cuMemAlloc` (a loop that reuses its memory
    /// stops raising this after its first iteration).
    pub driver_allocs: u64,
}

/// The free lists and counters of one device.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    free: BTreeMap<usize, Vec<CUdeviceptr>>,
    stats: MemoryStats,
}

impl Pool {
    fn take(&mut self, size: usize) -> Option<CUdeviceptr> {
        let list = self.free.get_mut(&size)?;
        let ptr = list.pop()?;
        if list.is_empty() {
            self.free.remove(&size);
        }
        Some(ptr)
    }

    fn note_alloc(&mut self, size: usize) {
        self.stats.allocated += size;
        self.stats.peak_allocated = self.stats.peak_allocated.max(self.stats.allocated);
    }

    /// Removes every cached block, returning them to be freed.
    fn drain(&mut self) -> Vec<(CUdeviceptr, usize)> {
        let blocks: Vec<_> = std::mem::take(&mut self.free)
            .into_iter()
            .flat_map(|(size, ptrs)| ptrs.into_iter().map(move |p| (p, size)))
            .collect();
        self.stats.reserved -= blocks.iter().map(|&(_, s)| s).sum::<usize>();
        blocks
    }
}

impl Gpu {
    /// A block of at least `bytes` bytes (its size is `bucket(bytes)`), from the cache
    /// when one is free.
    fn alloc_block(&self, bytes: usize) -> Result<(CUdeviceptr, usize)> {
        let size = bucket(bytes);
        {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(ptr) = pool.take(size) {
                pool.note_alloc(size);
                return Ok((ptr, size));
            }
        }
        self.bind()?;
        // SAFETY: a plain cuMemAlloc in this device's context (bound above).
        let ptr = match unsafe { drv::malloc_sync(size) } {
            Ok(p) => p,
            Err(e) if e.0 == cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY => {
                self.release_cached()?;
                // SAFETY: as above.
                unsafe { drv::malloc_sync(size) }.map_err(|e| self.oom(bytes, e))?
            }
            Err(e) => return Err(driver_error("alloc", self.ordinal, e)),
        };
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.stats.reserved += size;
        pool.stats.driver_allocs += 1;
        pool.note_alloc(size);
        Ok((ptr, size))
    }

    fn oom(&self, bytes: usize, e: cudarc::driver::DriverError) -> Error {
        let s = self.stats();
        Error::device(
            "alloc",
            format!(
                "out of memory on cuda:{} allocating {bytes} bytes ({} bytes allocated, {} reserved by Flint): {e}",
                self.ordinal, s.allocated, s.reserved
            ),
        )
    }

    /// Puts a block back on its free list.
    fn free_block(&self, ptr: CUdeviceptr, size: usize) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.stats.allocated -= size;
        pool.free.entry(size).or_default().push(ptr);
    }

    /// Returns all cached blocks to the driver (after the stream has finished with them).
    pub(crate) fn release_cached(&self) -> Result<()> {
        let blocks = self.pool.lock().unwrap_or_else(|p| p.into_inner()).drain();
        if blocks.is_empty() {
            return Ok(());
        }
        self.synchronize()?;
        self.bind()?;
        let mut first_err = None;
        for (ptr, _) in blocks {
            // SAFETY: the block came from cuMemAlloc in this context, no buffer owns it
            // and the stream has finished all work that used it.
            if let Err(e) = unsafe { drv::free_sync(ptr) } {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(driver_error("empty_cache", self.ordinal, e)),
            None => Ok(()),
        }
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).stats
    }

    /// An uninitialised buffer of `len` elements of `T` from the cache.
    pub(crate) fn alloc<T: DeviceRepr>(self: &Arc<Self>, len: usize) -> Result<DeviceVec<T>> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            Error::device("alloc", format!("{len} elements overflow usize bytes"))
        })?;
        let (ptr, size) = self.alloc_block(bytes)?;
        // SAFETY: `ptr` is a live allocation of `size >= len * size_of::<T>()` bytes of
        // this context. Event tracking is off for Flint's contexts, so no event is
        // created (cudarc would unwrap its creation otherwise).
        let slice = unsafe { self.stream.upgrade_device_ptr::<T>(ptr, len) };
        Ok(DeviceVec {
            slice: ManuallyDrop::new(slice),
            block: size,
            gpu: self.clone(),
        })
    }
}

/// A typed device buffer whose memory belongs to Flint's caching allocator: dropping it
/// returns its block to the device's free list instead of freeing it.
///
/// It derefs to cudarc's [`CudaSlice`], so it can be passed to cudarc's copies, cuBLAS
/// and kernel launches.
pub struct DeviceVec<T> {
    slice: ManuallyDrop<CudaSlice<T>>,
    block: usize,
    gpu: Arc<Gpu>,
}

impl<T> DeviceVec<T> {
    /// The number of elements.
    pub fn len(&self) -> usize {
        self.slice.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.gpu.ordinal
    }
    /// The size of the allocator block that holds it, in bytes.
    pub fn block_bytes(&self) -> usize {
        self.block
    }
    pub(crate) fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
}

impl<T> std::ops::Deref for DeviceVec<T> {
    type Target = CudaSlice<T>;
    fn deref(&self) -> &CudaSlice<T> {
        &self.slice
    }
}

impl<T> std::ops::DerefMut for DeviceVec<T> {
    fn deref_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.slice
    }
}

impl<T> std::fmt::Debug for DeviceVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceVec<{}>(len {}, cuda:{})",
            std::any::type_name::<T>(),
            self.len(),
            self.gpu.ordinal
        )
    }
}

impl<T> Drop for DeviceVec<T> {
    fn drop(&mut self) {
        // SAFETY: `slice` is not used again; `leak` hands back the pointer without
        // freeing it (no events exist, see `Gpu::alloc`).
        let slice = unsafe { ManuallyDrop::take(&mut self.slice) };
        let ptr = slice.leak();
        self.gpu.free_block(ptr, self.block);
    }
}

fn cuda_ordinal(op: &'static str, device: Device) -> Result<usize> {
    match device {
        Device::Cuda(n) => Ok(n),
        Device::Cpu => Err(Error::device(op, "expected a CUDA device, got cpu")),
    }
}

/// The memory use of `device` by Flint's caching allocator (an error for
/// [`Device::Cpu`] or when the device is not available).
///
/// ```
/// use flint_runtime::{cuda, Device};
/// match cuda::memory_stats(Device::Cuda(0)) {
///     Ok(s) => assert!(s.reserved >= s.allocated),
///     Err(e) => println!("{e}"), // no GPU here
/// }
/// ```
pub fn memory_stats(device: Device) -> Result<MemoryStats> {
    let n = cuda_ordinal("memory_stats", device)?;
    Ok(gpu(n)?.stats())
}

/// Returns the cached free blocks of `device` to the driver (PyTorch's
/// `torch.cuda.empty_cache()`): `reserved` drops to `allocated`. Waits for the device's
/// queued work first.
///
/// ```
/// use flint_runtime::{cuda, Device};
/// if cuda::available().is_ok() {
///     cuda::empty_cache(Device::Cuda(0))?;
///     let s = cuda::memory_stats(Device::Cuda(0))?;
///     assert_eq!(s.reserved, s.allocated);
/// }
/// # Ok::<(), flint_runtime::Error>(())
/// ```
pub fn empty_cache(device: Device) -> Result<()> {
    let n = cuda_ordinal("empty_cache", device)?;
    gpu(n)?.release_cached()
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn buckets_round_small_sizes_to_512_bytes_and_large_to_2_mib() {
        assert_eq!(bucket(0), 512);
        assert_eq!(bucket(1), 512);
        assert_eq!(bucket(512), 512);
        assert_eq!(bucket(513), 1024);
        assert_eq!(bucket(1 << 20), 1 << 20);
        assert_eq!(bucket((1 << 20) + 1), 2 << 20);
        assert_eq!(bucket((2 << 20) + 1), 4 << 20);
    }
}
