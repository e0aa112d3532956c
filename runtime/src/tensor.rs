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

pub(crate) fn check_device(op: &'static str, device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        d => Err(Error::device(
            op,
            format!("device {d} is not available: this build has no CUDA backend"),
        )),
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
    /// The storage's version counter (bumped by every in-place write).
    pub fn version(&self) -> u64 {
        self.0.storage.version()
    }
    pub(crate) fn storage(&self) -> &Arc<Storage> {
        &self.0.storage
    }

    /// Runs `f` on the CPU buffer and layout.
    pub(crate) fn with_cpu<R>(&self, f: impl FnOnce(&CpuBuffer, &Layout) -> R) -> R {
        let guard = self.0.storage.read();
        match &*guard {
            StorageData::Cpu(buf) => f(buf, &self.0.layout),
        }
    }

    /// Runs `f` on the typed CPU slice and layout; panics if `T` is not the dtype.
    pub(crate) fn with_slice<T: BufferElement, R>(&self, f: impl FnOnce(&[T], &Layout) -> R) -> R {
        self.with_cpu(|buf, l| match T::slice(buf) {
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
        Ok(self.with_slice::<T, _>(|s, l| crate::cpu::strided::gather(s, l)))
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

    /// The elements converted to `f64`, in row-major order (any dtype).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.with_cpu(|buf, l| crate::with_buffer!(buf, v => crate::cpu::strided::gather_map(v, l, |x| x.to_f64())))
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
        let out = self.to_dtype_raw(dtype);
        if dtype == self.dtype() || !dtype.is_float() {
            return out;
        }
        let from = self.dtype();
        record(out, "to_dtype", &[self], &[], move |g| {
            vec![Some(g.to_dtype(from))]
        })
    }

    /// Dtype conversion that records nothing (for kernels).
    pub(crate) fn to_dtype_raw(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let buf = self.with_cpu(|buf, l| crate::cpu::convert::convert(buf, l, dtype));
        Tensor::from_buffer(buf, self.shape())
    }

    /// The tensor moved to `device` (the same tensor when already there).
    #[track_caller]
    pub fn to(&self, device: Device) -> Tensor {
        or_panic(self.try_to(device))
    }

    /// Fallible [`Tensor::to`]: an error when the device is not available.
    pub fn try_to(&self, device: Device) -> Result<Tensor> {
        check_device("to", device)?;
        Ok(self.clone())
    }

    /// A contiguous tensor with the same elements (the same tensor when already
    /// contiguous).
    #[track_caller]
    pub fn contiguous(&self) -> Tensor {
        if self.is_contiguous() {
            return self.clone();
        }
        self.deep_clone()
    }

    /// A contiguous copy that shares nothing with `self` (PyTorch's `clone()`);
    /// differentiable.
    #[track_caller]
    pub fn deep_clone(&self) -> Tensor {
        record(self.copy_raw(), "clone", &[self], &[], |g| {
            vec![Some(g.clone())]
        })
    }

    /// A contiguous copy that records nothing (for kernels).
    pub(crate) fn copy_raw(&self) -> Tensor {
        let buf = self.with_cpu(|buf, l| crate::with_buffer!(buf, v => crate::storage::BufferElement::into_buffer(crate::cpu::strided::gather(v, l))));
        Tensor::from_buffer(buf, self.shape())
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
