//! Creation functions: `zeros`, `ones`, `full`, `arange`, `linspace`, `eye`, `*_like`.

use crate::device::Device;
use crate::error::{or_panic, Error, Result};
use crate::storage::CpuBuffer;
use crate::tensor::{check_device, Tensor, TensorOptions};

impl Tensor {
    /// A tensor of `shape` filled with `value` (converted to the dtype).
    ///
    /// ```
    /// use flint_runtime::{DType, Tensor};
    /// let t = Tensor::full([2, 2], 3.0, DType::I64);
    /// assert_eq!(t.to_vec::<i64>(), vec![3; 4]);
    /// ```
    #[track_caller]
    pub fn full(shape: impl AsRef<[usize]>, value: f64, opts: impl Into<TensorOptions>) -> Tensor {
        or_panic(Self::try_full(shape.as_ref(), value, opts.into()))
    }

    /// Fallible [`Tensor::full`]: an error when the device is not available.
    ///
    /// ```
    /// use flint_runtime::{DType, Tensor};
    /// let t = Tensor::try_full(&[2], 1.5, DType::F64.into())?;
    /// assert_eq!(t.to_vec::<f64>(), vec![1.5, 1.5]);
    /// # Ok::<(), flint_runtime::Error>(())
    /// ```
    pub fn try_full(shape: &[usize], value: f64, opts: TensorOptions) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        match opts.device {
            Device::Cpu => Ok(Tensor::from_buffer(
                CpuBuffer::from_f64_iter(opts.dtype, std::iter::repeat_n(value, n)),
                shape,
            )),
            #[cfg(feature = "cuda")]
            Device::Cuda(ord) => Ok(Tensor::from_cuda(
                crate::cuda::CudaBuffer::full(opts.dtype, n, value, ord)?,
                shape,
            )),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(crate::tensor::no_cuda_backend()),
        }
    }

    /// A tensor of zeros.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// assert_eq!(Tensor::zeros([3], ()).to_vec::<f32>(), vec![0.0; 3]);
    /// ```
    #[track_caller]
    pub fn zeros(shape: impl AsRef<[usize]>, opts: impl Into<TensorOptions>) -> Tensor {
        or_panic(Self::try_zeros(shape, opts))
    }

    /// Fallible [`Tensor::zeros`]: an [`Error::CudaUnavailable`] when the device cannot
    /// be used.
    ///
    /// ```
    /// use flint_runtime::{DType, Device, Tensor};
    /// match Tensor::try_zeros([2], (DType::F32, Device::Cuda(0))) {
    ///     Ok(t) => assert_eq!(t.device(), Device::Cuda(0)),
    ///     Err(e) => assert!(e.to_string().starts_with("CUDA is not available: ")),
    /// }
    /// ```
    pub fn try_zeros(shape: impl AsRef<[usize]>, opts: impl Into<TensorOptions>) -> Result<Tensor> {
        let (shape, opts) = (shape.as_ref(), opts.into());
        let n: usize = shape.iter().product();
        match opts.device {
            Device::Cpu => Ok(Tensor::from_buffer(CpuBuffer::zeros(opts.dtype, n), shape)),
            #[cfg(feature = "cuda")]
            Device::Cuda(ord) => Ok(Tensor::from_cuda(
                crate::cuda::CudaBuffer::zeros(opts.dtype, n, ord)?,
                shape,
            )),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(crate::tensor::no_cuda_backend()),
        }
    }

    /// A tensor built on the host and then placed on `device` (an upload for CUDA).
    pub(crate) fn from_buffer_on(
        buf: CpuBuffer,
        shape: &[usize],
        device: Device,
    ) -> Result<Tensor> {
        check_device(device)?;
        Tensor::from_buffer(buf, shape).to_raw(device)
    }

    /// A tensor of ones.
    #[track_caller]
    pub fn ones(shape: impl AsRef<[usize]>, opts: impl Into<TensorOptions>) -> Tensor {
        Self::full(shape, 1.0, opts)
    }

    /// An "uninitialised" tensor. Flint zero-fills it: reading it is defined, but do not
    /// rely on its contents.
    #[track_caller]
    pub fn empty(shape: impl AsRef<[usize]>, opts: impl Into<TensorOptions>) -> Tensor {
        Self::zeros(shape, opts)
    }

    /// Zeros with the shape, dtype and device of `self`.
    pub fn zeros_like(&self) -> Tensor {
        Tensor::zeros(self.shape(), (self.dtype(), self.device()))
    }
    /// Ones with the shape, dtype and device of `self`.
    pub fn ones_like(&self) -> Tensor {
        Tensor::ones(self.shape(), (self.dtype(), self.device()))
    }
    /// `value` with the shape, dtype and device of `self`.
    pub fn full_like(&self, value: f64) -> Tensor {
        Tensor::full(self.shape(), value, (self.dtype(), self.device()))
    }
    /// An uninitialised (zero-filled) tensor like `self`.
    pub fn empty_like(&self) -> Tensor {
        self.zeros_like()
    }

    /// Values from `start` up to (not including) `end` by `step`, like `torch.arange`.
    ///
    /// ```
    /// use flint_runtime::{DType, Tensor};
    /// assert_eq!(Tensor::arange(0.0, 5.0, 2.0, DType::I64).to_vec::<i64>(), vec![0, 2, 4]);
    /// ```
    #[track_caller]
    pub fn arange(start: f64, end: f64, step: f64, opts: impl Into<TensorOptions>) -> Tensor {
        or_panic(Self::try_arange(start, end, step, opts.into()))
    }

    /// Fallible [`Tensor::arange`]: an error for a zero step or a step of the wrong sign.
    pub fn try_arange(start: f64, end: f64, step: f64, opts: TensorOptions) -> Result<Tensor> {
        check_device(opts.device)?;
        if step == 0.0 || !step.is_finite() || (end - start) * step < 0.0 {
            return Err(Error::shape(
                "arange",
                format!("invalid range {start}..{end} with step {step}"),
            ));
        }
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        #[cfg(feature = "cuda")]
        if let Device::Cuda(ordinal) = opts.device
            && let Some(t) = crate::cuda::ops::arange(n, start, step, opts.dtype, ordinal)?
        {
            return Ok(t);
        }
        Tensor::from_buffer_on(
            CpuBuffer::from_f64_iter(opts.dtype, (0..n).map(|i| start + i as f64 * step)),
            &[n],
            opts.device,
        )
    }

    /// `steps` values evenly spaced from `start` to `end` inclusive.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// assert_eq!(Tensor::linspace(0.0, 1.0, 5, ()).to_vec::<f32>(), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    /// ```
    #[track_caller]
    pub fn linspace(start: f64, end: f64, steps: usize, opts: impl Into<TensorOptions>) -> Tensor {
        let opts = opts.into();
        or_panic(check_device(opts.device));
        let step = if steps > 1 {
            (end - start) / (steps - 1) as f64
        } else {
            0.0
        };
        // like PyTorch, fill the second half from the end so `end` is exact
        let half = steps / 2;
        let it = (0..steps).map(move |i| {
            if i < half {
                start + step * i as f64
            } else {
                end - step * (steps - 1 - i) as f64
            }
        });
        or_panic(Tensor::from_buffer_on(
            CpuBuffer::from_f64_iter(opts.dtype, it),
            &[steps],
            opts.device,
        ))
    }

    /// The `n × n` identity matrix.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// assert_eq!(Tensor::eye(2, ()).to_vec::<f32>(), vec![1.0, 0.0, 0.0, 1.0]);
    /// ```
    #[track_caller]
    pub fn eye(n: usize, opts: impl Into<TensorOptions>) -> Tensor {
        let opts = opts.into();
        or_panic(check_device(opts.device));
        let it = (0..n * n).map(move |i| if i / n == i % n { 1.0 } else { 0.0 });
        or_panic(Tensor::from_buffer_on(
            CpuBuffer::from_f64_iter(opts.dtype, it),
            &[n, n],
            opts.device,
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Device, Tensor};

    #[test]
    fn creation_in_every_dtype() {
        for dt in [
            DType::F32,
            DType::F64,
            DType::F16,
            DType::BF16,
            DType::I64,
            DType::Bool,
        ] {
            let t = Tensor::ones([2, 3], dt);
            assert_eq!(t.dtype(), dt);
            assert_eq!(t.shape(), &[2, 3]);
            assert_eq!(t.to_f64_vec(), vec![1.0; 6]);
            assert_eq!(t.zeros_like().to_f64_vec(), vec![0.0; 6]);
            assert_eq!(t.full_like(1.0).dtype(), dt);
        }
        assert_eq!(
            Tensor::eye(3, DType::F64).to_f64_vec(),
            vec![1., 0., 0., 0., 1., 0., 0., 0., 1.]
        );
        assert_eq!(
            Tensor::arange(1.0, 2.0, 0.25, DType::F64).to_f64_vec(),
            vec![1.0, 1.25, 1.5, 1.75]
        );
        assert_eq!(
            Tensor::arange(5.0, 0.0, -2.0, DType::I64).to_vec::<i64>(),
            vec![5, 3, 1]
        );
        assert!(Tensor::try_arange(0.0, 1.0, 0.0, DType::F32.into()).is_err());
        assert!(Tensor::try_arange(0.0, 1.0, -1.0, DType::F32.into()).is_err());
        assert_eq!(
            Tensor::linspace(-1.0, 1.0, 3, DType::F64).to_f64_vec(),
            vec![-1.0, 0.0, 1.0]
        );
        assert_eq!(
            Tensor::linspace(2.0, 2.0, 1, DType::F64).to_f64_vec(),
            vec![2.0]
        );
        assert_eq!(Tensor::empty([0, 4], ()).numel(), 0);
    }

    #[test]
    fn no_cuda_is_a_clear_error() {
        // without the `cuda` feature, or without a GPU, creating on cuda:0 is an error
        for r in [
            Tensor::try_full(&[2], 0.0, Device::Cuda(0).into()),
            Tensor::try_zeros([2], (DType::F32, Device::Cuda(0))),
            Tensor::try_arange(0.0, 2.0, 1.0, Device::Cuda(0).into()),
        ] {
            match r {
                Err(e) => {
                    assert!(e.to_string().starts_with("CUDA is not available: "), "{e}")
                }
                Ok(t) => assert!(cfg!(feature = "cuda") && t.device() == Device::Cuda(0)),
            }
        }
        // a device that no machine has
        let e = Tensor::try_zeros([2], (DType::F32, Device::Cuda(999))).unwrap_err();
        assert!(e.to_string().starts_with("CUDA is not available: "), "{e}");
    }
}
