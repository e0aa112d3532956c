//! The [`Tensor`] handle.

use crate::autograd::{record, Edge, Node};
use crate::device::Device;
use crate::dtype::{DType, Element};
use crate::error::{or_panic, Error, Result};
use crate::layout::{fmt_shape, Layout};
use crate::storage::{BufferElement, CpuBuffer, Storage, StorageData};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// An n-dimensional array: a cheap-to-clone handle over shared storage plus a layout
/// (shape, strides, offset), a dtype and a device.
///
/// Cloning a `Tensor` clones the handle, not the data; views (`permute`, `narrow`,
/// `expand`, …) share storage with the tensor they come from.
///
/// ```
/// use flint_runtime::Tensor;
/// let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]);
/// let t = a.t(); // a view
/// assert_eq!(t.shape(), &[3, 2]);
/// assert_eq!(t.to_vec::<f32>(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
/// ```
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<TensorImpl>);

pub(crate) struct TensorImpl {
    pub(crate) storage: Arc<Storage>,
    pub(crate) layout: Layout,
    pub(crate) dtype: DType,
    pub(crate) autograd: AutogradMeta,
}

/// Autograd state of a tensor: whether a leaf requires grad, its accumulated gradient,
/// and the node that produced it (replaced when an in-place op rewrites history).
#[derive(Default)]
pub(crate) struct AutogradMeta {
    requires_grad: AtomicBool,
    grad: Mutex<Option<Tensor>>,
    grad_fn: RwLock<Option<Arc<Node>>>,
}

/// Dtype and device for creating a tensor. Anything that converts into it can be
/// passed where a creation function takes `opts`: a [`DType`], a [`Device`], a pair of
/// both, or `()` for the defaults (f32 on the CPU).
///
/// ```
/// use flint_runtime::{DType, Device, Tensor};
/// let a = Tensor::zeros([2, 3], DType::F64);
/// let b = Tensor::ones([4], (DType::I64, Device::Cpu));
/// let c = Tensor::full([2], 7.0, ());
/// assert_eq!((a.dtype(), b.dtype(), c.dtype()), (DType::F64, DType::I64, DType::F32));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorOptions {
    /// Element type.
    pub dtype: DType,
    /// Device.
    pub device: Device,
}

impl Default for TensorOptions {
    fn default() -> Self {
        TensorOptions {
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}
impl From<()> for TensorOptions {
    fn from(_: ()) -> Self {
        Self::default()
    }
}
impl From<DType> for TensorOptions {
    fn from(dtype: DType) -> Self {
        TensorOptions {
            dtype,
            ..Default::default()
        }
    }
}
impl From<Device> for TensorOptions {
    fn from(device: Device) -> Self {
        TensorOptions {
            device,
            ..Default::default()
        }
    }
}
impl From<(DType, Device)> for TensorOptions {
    fn from((dtype, device): (DType, Device)) -> Self {
        TensorOptions { dtype, device }
    }
}

/// Ok when tensors can be created on `device`: always for the CPU; for a CUDA device,
/// when the `cuda` feature is on and the device can be opened (an
/// [`Error::CudaUnavailable`] otherwise).
pub(crate) fn check_device(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => crate::cuda::gpu(n).map(|_| ()),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(no_cuda_backend()),
    }
}

/// The error for any use of a CUDA device in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub(crate) fn no_cuda_backend() -> Error {
    Error::cuda_unavailable(
        "this build of Flint has no CUDA backend (enable the cargo feature `cuda`)",
    )
}

/// The one device of `tensors`, or the error "expected all tensors on one device, got
/// cpu and cuda:0" naming `op`.
pub(crate) fn same_device(op: &'static str, tensors: &[&Tensor]) -> Result<Device> {
    let mut it = tensors.iter().map(|t| t.device());
    let first = it.next().unwrap_or_default();
    match it.find(|&d| d != first) {
        Some(other) => Err(Error::devices(op, first, other)),
        None => Ok(first),
    }
}

impl Tensor {
    /// Wraps a CPU buffer with a layout.
    pub(crate) fn from_parts(storage: Arc<Storage>, layout: Layout, dtype: DType) -> Tensor {
        Tensor(Arc::new(TensorImpl {
            storage,
            layout,
            dtype,
            autograd: AutogradMeta::default(),
        }))
    }

    /// A contiguous tensor owning `buf` with `shape`.
    pub(crate) fn from_buffer(buf: CpuBuffer, shape: &[usize]) -> Tensor {
        debug_assert_eq!(buf.len(), shape.iter().product::<usize>());
        let dtype = buf.dtype();
        Tensor::from_parts(
            Arc::new(Storage::cpu(buf)),
            Layout::contiguous(shape),
            dtype,
        )
    }

    /// A view of the same storage with another layout.
    pub(crate) fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor::from_parts(self.0.storage.clone(), layout, self.0.dtype)
    }

    /// A tensor with `shape` holding `data` in row-major order.
    ///
    /// Panics when `data.len()` is not the product of `shape`; see [`Tensor::try_from_vec`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::from_vec(vec![1i64, 2, 3, 4], [2, 2]);
    /// assert_eq!(t.to_vec::<i64>(), vec![1, 2, 3, 4]);
    /// ```
    #[track_caller]
    pub fn from_vec<T: BufferElement>(data: Vec<T>, shape: impl AsRef<[usize]>) -> Tensor {
        or_panic(Self::try_from_vec(data, shape))
    }

    /// Fallible [`Tensor::from_vec`].
    pub fn try_from_vec<T: BufferElement>(
        data: Vec<T>,
        shape: impl AsRef<[usize]>,
    ) -> Result<Tensor> {
        let shape = shape.as_ref();
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::shape(
                "from_vec",
                format!(
                    "shape {} needs {n} elements but {} were given",
                    fmt_shape(shape),
                    data.len()
                ),
            ));
        }
        Ok(Tensor::from_buffer(T::into_buffer(data), shape))
    }

    /// A tensor with `shape` copied from a slice.
    #[track_caller]
    pub fn from_slice<T: BufferElement>(data: &[T], shape: impl AsRef<[usize]>) -> Tensor {
        Self::from_vec(data.to_vec(), shape)
    }

    /// A 0-dimensional tensor holding one value.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let s = Tensor::scalar(2.5f64);
    /// assert_eq!(s.shape(), &[] as &[usize]);
    /// assert_eq!(s.item::<f64>(), 2.5);
    /// ```
    pub fn scalar<T: BufferElement>(value: T) -> Tensor {
        Tensor::from_buffer(T::into_buffer(vec![value]), &[])
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.0.layout.shape()
    }
    /// The size of dim `dim` (negative counts from the end).
    #[track_caller]
    pub fn size(&self, dim: isize) -> usize {
        let d = or_panic(crate::layout::normalize_dim("size", dim, self.ndim()));
        self.shape()[d]
    }
    /// The strides, in elements.
    pub fn strides(&self) -> &[usize] {
        self.0.layout.strides()
    }
    /// The layout (shape, strides, offset).
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.0.layout.ndim()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.0.layout.numel()
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    /// The device.
    pub fn device(&self) -> Device {
        self.0.storage.device()
    }
    /// True when the elements are row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    /// True when both tensors view the same storage.
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }
    /// True when this handle is the only one to the tensor and the tensor the only one
    /// on its storage (no clone, view, saved copy or state-dict entry shares it): a
    /// write into it can then be seen by nobody else, so kernels may reuse its buffer
    /// instead of allocating a new one.
    pub(crate) fn is_exclusive(&self) -> bool {
        Arc::strong_count(&self.0) == 1
            && Arc::weak_count(&self.0) == 0
            && Arc::strong_count(&self.0.storage) == 1
            && Arc::weak_count(&self.0.storage) == 0
    }
    /// The storage's version counter (bumped by every in-place write).
    pub fn version(&self) -> u64 {
        self.0.storage.version()
    }
    pub(crate) fn storage(&self) -> &Arc<Storage> {
        &self.0.storage
    }
    /// True for a tensor on a CUDA device.
    #[cfg(feature = "cuda")]
    pub(crate) fn is_cuda(&self) -> bool {
        matches!(self.device(), Device::Cuda(_))
    }

    /// Runs `f` on the CPU buffer and layout: the one place where ops get at host
    /// memory. A tensor on a CUDA device gives [`Error::NoCudaKernel`] naming `op`
    /// instead (its memory is not touched).
    pub(crate) fn with_cpu<R>(
        &self,
        op: &'static str,
        f: impl FnOnce(&CpuBuffer, &Layout) -> R,
    ) -> Result<R> {
        let _ = op; // unused without the `cuda` feature
        let guard = self.0.storage.read();
        match &*guard {
            StorageData::Cpu(buf) => Ok(f(buf, &self.0.layout)),
            #[cfg(feature = "cuda")]
            StorageData::Cuda(_) => Err(Error::NoCudaKernel {
                op,
                device: self.device(),
            }),
        }
    }

    /// Runs `f` on the typed CPU slice and layout ([`Error::NoCudaKernel`] naming `op`
    /// for a CUDA tensor); panics if `T` is not the dtype (an internal error).
    pub(crate) fn with_slice<T: BufferElement, R>(
        &self,
        op: &'static str,
        f: impl FnOnce(&[T], &Layout) -> R,
    ) -> Result<R> {
        self.with_cpu(op, |buf, l| match T::slice(buf) {
            Some(s) => f(s, l),
            None => panic!(
                "internal: expected a {} buffer, found {}",
                T::DTYPE,
                buf.dtype()
            ),
        })
    }

    /// The elements in row-major order as `Vec<T>`. The tensor must have dtype `T`
    /// (use [`Tensor::to_dtype`] first to convert).
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::arange(0.0, 6.0, 1.0, ()).reshape([2, 3]).t();
    /// assert_eq!(t.to_vec::<f32>(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    /// ```
    #[track_caller]
    pub fn to_vec<T: BufferElement>(&self) -> Vec<T> {
        or_panic(self.try_to_vec())
    }

    /// Fallible [`Tensor::to_vec`].
    pub fn try_to_vec<T: BufferElement>(&self) -> Result<Vec<T>> {
        if self.dtype() != T::DTYPE {
            return Err(Error::dtype(
                "to_vec",
                format!(
                    "tensor has dtype {} but {} was asked for; call to_dtype first",
                    self.dtype(),
                    T::DTYPE
                ),
            ));
        }
        self.host()?
            .with_slice::<T, _>("to_vec", |s, l| crate::cpu::strided::gather(s, l))
    }

    /// The single value of a one-element tensor.
    #[track_caller]
    pub fn item<T: BufferElement>(&self) -> T {
        or_panic(self.try_item())
    }

    /// Fallible [`Tensor::item`].
    pub fn try_item<T: BufferElement>(&self) -> Result<T> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!(
                    "only one-element tensors can be converted to a scalar, got shape {}",
                    fmt_shape(self.shape())
                ),
            ));
        }
        Ok(self.try_to_vec::<T>()?[0])
    }

    /// The elements converted to `f64`, in row-major order (any dtype; a CUDA tensor is
    /// copied to the host first). Panics when that copy fails; see
    /// [`Tensor::try_to_f64_vec`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// assert_eq!(Tensor::from_vec(vec![1i64, -2], [2]).to_f64_vec(), vec![1.0, -2.0]);
    /// ```
    #[track_caller]
    pub fn to_f64_vec(&self) -> Vec<f64> {
        or_panic(self.try_to_f64_vec())
    }

    /// Fallible [`Tensor::to_f64_vec`].
    pub fn try_to_f64_vec(&self) -> Result<Vec<f64>> {
        self.host()?.with_cpu("to_f64_vec", |buf, l| crate::with_buffer!(buf, v => crate::cpu::strided::gather_map(v, l, |x| x.to_f64())))
    }

    /// This tensor when it is on the CPU, else a host copy of it (recording nothing).
    pub(crate) fn host(&self) -> Result<Tensor> {
        match self.device() {
            Device::Cpu => Ok(self.clone()),
            Device::Cuda(_) => self.to_raw(Device::Cpu),
        }
    }

    /// A copy converted to `dtype` (the same tensor when it already has that dtype).
    /// Differentiable between float dtypes.
    ///
    /// ```
    /// use flint_runtime::{DType, Tensor};
    /// let t = Tensor::from_vec(vec![1.7f32, -2.2], [2]).to_dtype(DType::I64);
    /// assert_eq!(t.to_vec::<i64>(), vec![1, -2]);
    /// ```
    #[track_caller]
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        let out = or_panic(self.to_dtype_raw(dtype));
        if dtype == self.dtype() || !dtype.is_float() {
            return out;
        }
        let from = self.dtype();
        record(out, "to_dtype", &[self], &[], move |g| {
            vec![Some(g.to_dtype(from))]
        })
    }

    /// Dtype conversion that records nothing (for kernels); the same tensor when it
    /// already has `dtype`.
    pub(crate) fn to_dtype_raw(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            return crate::cuda::ops::cast(self, dtype);
        }
        let buf = self.with_cpu("to_dtype", |buf, l| {
            crate::cpu::convert::convert(buf, l, dtype)
        })?;
        Ok(Tensor::from_buffer(buf, self.shape()))
    }

    /// The tensor moved to `device` (the same tensor when already there); see
    /// [`Tensor::try_to`].
    ///
    /// ```
    /// use flint_runtime::{Device, Tensor};
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0], [2]);
    /// assert!(x.to(Device::Cpu).same_tensor(&x));
    /// ```
    #[track_caller]
    pub fn to(&self, device: Device) -> Tensor {
        or_panic(self.try_to(device))
    }

    /// Fallible [`Tensor::to`]: an [`Error::CudaUnavailable`] when the device cannot be
    /// used (no `cuda` feature, no driver, no GPU, an ordinal out of range).
    ///
    /// The result is contiguous. A move is differentiable: the gradient goes back to the
    /// source device. Non-contiguous views are copied to contiguous on the host side
    /// (before an upload, after a download of the span of device memory they cover).
    ///
    /// ```
    /// use flint_runtime::{Device, Tensor};
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0], [2]);
    /// match x.try_to(Device::Cuda(0)) {
    ///     Ok(y) => assert_eq!(y.to(Device::Cpu).to_vec::<f32>(), vec![1.0, 2.0]),
    ///     Err(e) => assert!(e.to_string().starts_with("CUDA is not available: ")),
    /// }
    /// ```
    pub fn try_to(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        check_device(device)?;
        let out = self.to_raw(device)?;
        let from = self.device();
        Ok(record(out, "to", &[self], &[], move |g| {
            vec![Some(g.to(from))]
        }))
    }

    /// A contiguous copy of this tensor on `device` that records nothing.
    pub(crate) fn to_raw(&self, device: Device) -> Result<Tensor> {
        match (self.device(), device) {
            (a, b) if a == b => Ok(self.clone()),
            #[cfg(feature = "cuda")]
            (Device::Cpu, Device::Cuda(n)) => {
                let t = if self.is_contiguous() {
                    self.clone()
                } else {
                    self.copy_raw()?
                };
                let (off, len) = (t.layout().offset(), t.numel());
                let buf = t.with_cpu("to", |buf, _| {
                    crate::cuda::CudaBuffer::from_cpu(buf, off..off + len, n)
                })??;
                Ok(Tensor::from_parts(
                    Arc::new(Storage::cuda(buf)),
                    Layout::contiguous(self.shape()),
                    self.dtype(),
                ))
            }
            #[cfg(feature = "cuda")]
            (Device::Cuda(_), Device::Cpu) => {
                // download the span of device memory the view covers, then gather on
                // the host (any strides, expanded views included)
                let l = self.layout();
                let span = l.storage_extent() - l.offset();
                let guard = self.storage().read();
                let StorageData::Cuda(dbuf) = &*guard else {
                    return Err(Error::device(
                        "to",
                        "internal: a CUDA tensor without a CUDA buffer",
                    ));
                };
                let host = dbuf.to_cpu(l.offset()..l.offset() + span)?;
                drop(guard);
                let local = Layout {
                    offset: 0,
                    ..l.clone()
                };
                let t = Tensor::from_parts(Arc::new(Storage::cpu(host)), local, self.dtype());
                if t.is_contiguous() {
                    Ok(t)
                } else {
                    t.copy_raw()
                }
            }
            #[cfg(feature = "cuda")]
            (Device::Cuda(_), Device::Cuda(_)) => self.to_raw(Device::Cpu)?.to_raw(device),
            (_, device) => {
                check_device(device)?;
                Err(Error::device(
                    "to",
                    format!("cannot move a tensor to {device}"),
                ))
            }
        }
    }

    /// A contiguous tensor with the same elements (the same tensor when already
    /// contiguous); see [`Tensor::try_contiguous`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]).t();
    /// assert!(!t.is_contiguous() && t.contiguous().is_contiguous());
    /// ```
    #[track_caller]
    pub fn contiguous(&self) -> Tensor {
        or_panic(self.try_contiguous())
    }

    /// Fallible [`Tensor::contiguous`] (on CUDA, non-contiguous views are copied with
    /// the strided copy kernel).
    pub fn try_contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        self.try_deep_clone()
    }

    /// A contiguous copy that shares nothing with `self` (PyTorch's `clone()`);
    /// differentiable. See [`Tensor::try_deep_clone`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let a = Tensor::from_vec(vec![1.0f32, 2.0], [2]);
    /// assert!(!a.deep_clone().shares_storage(&a));
    /// ```
    #[track_caller]
    pub fn deep_clone(&self) -> Tensor {
        or_panic(self.try_deep_clone())
    }

    /// Fallible [`Tensor::deep_clone`].
    pub fn try_deep_clone(&self) -> Result<Tensor> {
        Ok(record(self.copy_raw()?, "clone", &[self], &[], |g| {
            vec![Some(g.clone())]
        }))
    }

    /// A contiguous copy that records nothing (for kernels).
    pub(crate) fn copy_raw(&self) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(_) = self.device() {
            let Some(range) = self.layout().contiguous_range() else {
                return crate::cuda::ops::copy_to_new(self);
            };
            let guard = self.storage().read();
            let StorageData::Cuda(dbuf) = &*guard else {
                return Err(Error::device(
                    "clone",
                    "internal: a CUDA tensor without a CUDA buffer",
                ));
            };
            let buf = dbuf.copy_range(range)?;
            drop(guard);
            return Ok(Tensor::from_cuda(buf, self.shape()));
        }
        let buf = self.with_cpu("contiguous", |buf, l| crate::with_buffer!(buf, v => crate::storage::BufferElement::into_buffer(crate::cpu::strided::gather(v, l))))?;
        Ok(Tensor::from_buffer(buf, self.shape()))
    }

    /// A contiguous tensor owning the device buffer `buf` with `shape`.
    #[cfg(feature = "cuda")]
    pub(crate) fn from_cuda(buf: crate::cuda::CudaBuffer, shape: &[usize]) -> Tensor {
        debug_assert_eq!(buf.len(), shape.iter().product::<usize>());
        let dtype = buf.dtype();
        Tensor::from_parts(
            Arc::new(Storage::cuda(buf)),
            Layout::contiguous(shape),
            dtype,
        )
    }
}

/// Autograd state.
impl Tensor {
    /// True when gradients flow to this tensor: a leaf marked with
    /// [`Tensor::requires_grad_`], or the result of an op on such tensors.
    pub fn requires_grad(&self) -> bool {
        self.0.autograd.requires_grad.load(Ordering::Relaxed) || self.grad_fn().is_some()
    }

    /// Marks a leaf tensor as requiring grad (or not) and returns it, so that
    /// `let w = Tensor::randn([3], ()).requires_grad_(true);` reads naturally.
    ///
    /// Panics on a non-leaf or a non-float tensor; see [`Tensor::try_requires_grad_`].
    #[track_caller]
    pub fn requires_grad_(&self, on: bool) -> Tensor {
        or_panic(self.try_requires_grad_(on));
        self.clone()
    }

    /// Fallible [`Tensor::requires_grad_`].
    pub fn try_requires_grad_(&self, on: bool) -> Result<()> {
        if self.grad_fn().is_some() {
            return Err(Error::Autograd(
                "you can only change requires_grad of leaf tensors; use detach() to get a leaf"
                    .into(),
            ));
        }
        if on && !self.dtype().is_float() {
            return Err(Error::Autograd(format!(
                "only floating-point tensors can require gradients, got {}",
                self.dtype()
            )));
        }
        self.0.autograd.requires_grad.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// True for a tensor not produced by a recorded op (user-created tensors, parameters,
    /// results computed under `no_grad`, `detach()`ed tensors).
    pub fn is_leaf(&self) -> bool {
        self.grad_fn().is_none()
    }

    /// The gradient accumulated by `backward`, if any.
    pub fn grad(&self) -> Option<Tensor> {
        self.0
            .autograd
            .grad
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the accumulated gradient.
    pub fn set_grad(&self, grad: Option<Tensor>) {
        *self
            .0
            .autograd
            .grad
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = grad;
    }

    /// Drops the accumulated gradient (PyTorch's `zero_grad(set_to_none=True)`).
    pub fn zero_grad(&self) {
        self.set_grad(None);
    }

    /// A tensor sharing this one's storage, cut from the graph (a leaf that does not
    /// require grad).
    pub fn detach(&self) -> Tensor {
        Tensor::from_parts(self.0.storage.clone(), self.0.layout.clone(), self.0.dtype)
    }

    /// The node that produced this tensor (`None` for leaves).
    pub fn grad_fn(&self) -> Option<Arc<Node>> {
        self.0
            .autograd
            .grad_fn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_grad_fn(&self, node: Option<Arc<Node>>) {
        *self
            .0
            .autograd
            .grad_fn
            .write()
            .unwrap_or_else(|p| p.into_inner()) = node;
    }

    /// Where a gradient for this tensor should go, if it wants one.
    pub(crate) fn grad_edge(&self) -> Option<Edge> {
        match self.grad_fn() {
            Some(n) => Some(Edge::Node(n)),
            None if self.0.autograd.requires_grad.load(Ordering::Relaxed) => {
                Some(Edge::Leaf(self.clone()))
            }
            None => None,
        }
    }

    pub(crate) fn accumulate_grad(&self, g: Tensor) {
        let mut slot = self
            .0
            .autograd
            .grad
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *slot = Some(match slot.take() {
            Some(old) => &old + &g,
            None => g,
        });
    }

    /// An identity for this tensor handle's target (for graph export).
    pub(crate) fn impl_ptr(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// True when both handles are the same tensor (not merely the same storage).
    pub fn same_tensor(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
