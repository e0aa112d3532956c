//! A cache of large host buffers, so a training loop that allocates the same tensor
//! sizes every step reuses memory instead of asking the system for it each time.
//!
//! Buffers of at least [`MIN_BYTES`] go back into the cache when their storage is
//! dropped, keyed by dtype and capacity; kernels that allocate an output take one of
//! exactly the size they need. Without it, every large allocation is fresh pages from
//! the kernel (glibc serves them with `mmap`): the page faults and page clearing were
//! about a quarter of the CNN benchmark's training step. The cache holds at most
//! [`cpu_cache_limit`] bytes (default 1 GiB; [`set_cpu_cache_limit`]), evicting other
//! sizes to make room; [`empty_cpu_cache`] frees it all.

use crate::dtype::DType;
use crate::storage::{BufferElement, CpuBuffer};
use crate::with_buffer;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Buffers smaller than this are left to the allocator, which serves them from its
/// own free lists without page faults.
pub const MIN_BYTES: usize = 1 << 16;

static LIMIT: AtomicUsize = AtomicUsize::new(1 << 30);

#[derive(Default)]
struct Cache {
    /// Cached buffers by (dtype, capacity), each with the tick it was cached at (the
    /// oldest first in every list).
    free: HashMap<(DType, usize), Vec<(u64, CpuBuffer)>>,
    bytes: usize,
    tick: u64,
}

impl Cache {
    /// Removes the least recently cached buffer, if any.
    fn evict_oldest(&mut self) -> Option<CpuBuffer> {
        let key = self
            .free
            .iter()
            .filter_map(|(k, list)| list.first().map(|(t, _)| (*t, *k)))
            .min()?
            .1;
        let list = self.free.get_mut(&key)?;
        let (_, buf) = list.remove(0);
        if list.is_empty() {
            self.free.remove(&key);
        }
        self.bytes -= bytes_of(&buf);
        Some(buf)
    }
}

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn bytes_of(buf: &CpuBuffer) -> usize {
    with_buffer!(buf, v => v.capacity() * std::mem::size_of_val(&v.first().copied().unwrap_or_default()))
}

/// An empty vector with room for `n` elements: a cached buffer of exactly that
/// capacity when there is one, a new allocation otherwise.
pub(crate) fn take<T: BufferElement>(n: usize) -> Vec<T> {
    if n * std::mem::size_of::<T>() >= MIN_BYTES {
        let mut c = cache();
        if let Some((_, buf)) = c.free.get_mut(&(T::DTYPE, n)).and_then(|list| list.pop()) {
            c.bytes -= bytes_of(&buf);
            drop(c);
            if let Ok(mut v) = T::from_buffer(buf) {
                v.clear();
                return v;
            }
        }
    }
    Vec::with_capacity(n)
}

/// A vector of `n` zeros (a cached buffer, cleared, when there is one).
pub(crate) fn zeros<T: BufferElement>(n: usize) -> Vec<T> {
    let mut v = take(n);
    v.resize(n, T::default());
    v
}

/// A buffer of `n` elements from the pool ([`take`]) that is written before it is read,
/// so it is not zero-filled first: [`Uninit::all`] hands out its elements for writing,
/// [`written`] reads back a part already written, and [`Uninit::assume_init`] makes it a
/// `Vec` once every element is.
pub(crate) struct Uninit<T> {
    v: Vec<T>,
    n: usize,
}

impl<T: BufferElement> Uninit<T> {
    /// Room for `n` elements, none written yet.
    pub(crate) fn new(n: usize) -> Self {
        Uninit { v: take(n), n }
    }

    /// All `n` elements, for writing.
    pub(crate) fn all(&mut self) -> &mut [std::mem::MaybeUninit<T>] {
        &mut self.v.spare_capacity_mut()[..self.n]
    }

    /// The `n` elements as a `Vec`.
    ///
    /// # Safety
    /// Every element has been written.
    pub(crate) unsafe fn assume_init(mut self) -> Vec<T> {
        // SAFETY: the capacity is at least `n` (`take`) and the caller wrote all `n`.
        unsafe { self.v.set_len(self.n) };
        self.v
    }
}

/// `s` read as initialised.
///
/// # Safety
/// Every element of `s` has been written.
pub(crate) unsafe fn written<T>(s: &[std::mem::MaybeUninit<T>]) -> &[T] {
    // SAFETY: `MaybeUninit<T>` has `T`'s layout and the caller wrote every element.
    unsafe { &*(s as *const [std::mem::MaybeUninit<T>] as *const [T]) }
}

/// `s` read and written as initialised (a row written, then scaled in place).
///
/// # Safety
/// Every element of `s` has been written.
pub(crate) unsafe fn written_mut<T>(s: &mut [std::mem::MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: `MaybeUninit<T>` has `T`'s layout and the caller wrote every element.
    unsafe { &mut *(s as *mut [std::mem::MaybeUninit<T>] as *mut [T]) }
}

/// `s` as slots to overwrite (an output buffer reused from an earlier call).
///
/// # Safety
/// The caller writes only initialised values through the result (never
/// `MaybeUninit::uninit()`), so `s` stays initialised.
pub(crate) unsafe fn for_writing<T>(s: &mut [T]) -> &mut [std::mem::MaybeUninit<T>] {
    // SAFETY: same layout; the caller keeps every element initialised.
    unsafe { &mut *(s as *mut [T] as *mut [std::mem::MaybeUninit<T>]) }
}

/// Keeps `buf` for reuse if it is large enough and fits under the limit, evicting the
/// least recently cached buffers to make room (so the sizes of a model trained earlier
/// in the process give way to the current one's); frees it otherwise.
pub(crate) fn give(buf: CpuBuffer) {
    let bytes = bytes_of(&buf);
    let limit = LIMIT.load(Ordering::Relaxed);
    if bytes < MIN_BYTES || bytes > limit {
        return;
    }
    let key = (buf.dtype(), with_buffer!(&buf, v => v.capacity()));
    let mut evicted = Vec::new();
    {
        let mut c = cache();
        while c.bytes + bytes > limit {
            match c.evict_oldest() {
                Some(old) => evicted.push(old),
                None => break,
            }
        }
        c.tick += 1;
        let tick = c.tick;
        c.bytes += bytes;
        c.free.entry(key).or_default().push((tick, buf));
    }
    // freed outside the lock
    drop(evicted);
}

/// Sets the most bytes the host buffer cache keeps (0 turns it off), freeing what is
/// over the new limit.
///
/// ```
/// flint_runtime::set_cpu_cache_limit(256 << 20);
/// assert_eq!(flint_runtime::cpu_cache_limit(), 256 << 20);
/// flint_runtime::set_cpu_cache_limit(1 << 30);
/// ```
pub fn set_cpu_cache_limit(bytes: usize) {
    LIMIT.store(bytes, Ordering::Relaxed);
    if cpu_cache_bytes() > bytes {
        empty_cpu_cache();
    }
}

/// The most bytes the host buffer cache keeps.
pub fn cpu_cache_limit() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

/// The bytes the host buffer cache holds now (memory the process keeps but no tensor
/// uses).
///
/// ```
/// flint_runtime::empty_cpu_cache();
/// assert_eq!(flint_runtime::cpu_cache_bytes(), 0);
/// ```
pub fn cpu_cache_bytes() -> usize {
    cache().bytes
}

/// Frees every cached host buffer (like `torch.cuda.empty_cache` for host memory).
pub fn empty_cpu_cache() {
    let free = {
        let mut c = cache();
        c.bytes = 0;
        std::mem::take(&mut c.free)
    };
    drop(free);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    #[test]
    fn dropped_buffers_are_reused_and_bounded() {
        // other tests run in parallel and share the cache: use a size only this test
        // allocates, and check by pointer
        let n = 3 * MIN_BYTES / 4 + 17; // f32 elements: above the threshold
        let t = Tensor::zeros([n], ());
        let ptr = t
            .with_slice::<f32, _>("test", |s, _| s.as_ptr() as usize)
            .unwrap();
        drop(t);
        let v = take::<f32>(n);
        assert_eq!(
            v.as_ptr() as usize,
            ptr,
            "the freed buffer is handed out again"
        );
        assert!(v.is_empty() && v.capacity() == n);
        // zeros() from a cached buffer is all zeros even if the buffer was not
        let mut dirty = v;
        dirty.resize(n, 7.0);
        give(CpuBuffer::F32(dirty));
        assert!(zeros::<f32>(n).iter().all(|&x| x == 0.0));
        // small buffers are not cached
        give(CpuBuffer::F64(vec![1.0; 8]));
        assert!(!cache().free.contains_key(&(DType::F64, 8)));
    }

    /// Over the limit, the least recently cached buffers go first.
    #[test]
    fn eviction_takes_the_oldest() {
        let mut c = Cache::default();
        for (i, n) in [MIN_BYTES, 2 * MIN_BYTES, MIN_BYTES]
            .into_iter()
            .enumerate()
        {
            c.tick += 1;
            c.bytes += n;
            c.free
                .entry((DType::Bool, n))
                .or_default()
                .push((i as u64 + 1, CpuBuffer::Bool(Vec::with_capacity(n))));
        }
        let first = c.evict_oldest().expect("a buffer");
        assert_eq!(bytes_of(&first), MIN_BYTES);
        assert_eq!(c.free[&(DType::Bool, MIN_BYTES)].len(), 1);
        assert_eq!(
            bytes_of(&c.evict_oldest().expect("a buffer")),
            2 * MIN_BYTES
        );
        assert_eq!(bytes_of(&c.evict_oldest().expect("a buffer")), MIN_BYTES);
        assert!(c.evict_oldest().is_none() && c.bytes == 0);
    }
}
