//! In-place ops (`add_`, `mul_`, `fill_`, `copy_`, `masked_fill_`, …).
//!
//! Each writes into the tensor's own storage through its layout, so a write through a
//! view is seen by every tensor sharing the storage, and bumps the storage's version
//! counter (what autograd checks to refuse a wrong gradient).

use crate::autograd::is_grad_enabled;
use crate::cpu::strided::{fill_strided, for_each_offsets};
use crate::dispatch;
use crate::dtype::DType;
use crate::error::{or_panic, Error, Result};
use crate::layout::fmt_shape;
use crate::ops::elementwise::{arith, assign_arith, Arith, Operand};
use crate::storage::BufferElement;
use crate::tensor::Tensor;

/// Ops that return views: an in-place write through one would also change the base,
/// which this autograd does not track yet.
const VIEW_OPS: &[&str] = &[
    "view",
    "reshape",
    "permute",
    "transpose",
    "unsqueeze",
    "squeeze",
    "expand",
    "narrow",
    "slice",
    "select",
];

impl Tensor {
    /// Copies `src` (broadcast to this shape, converted to this dtype) into this tensor.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let x = Tensor::zeros([2, 3], ());
    /// x.narrow(1, 1, 2).copy_(&Tensor::ones([2, 1], ()));
    /// assert_eq!(x.to_vec::<f32>(), vec![0., 1., 1., 0., 1., 1.]);
    /// ```
    #[track_caller]
    pub fn copy_(&self, src: &Tensor) -> &Tensor {
        or_panic(self.try_copy_(src));
        self
    }

    /// Fallible [`Tensor::copy_`].
    #[track_caller]
    pub fn try_copy_(&self, src: &Tensor) -> Result<()> {
        if is_grad_enabled() && (src.requires_grad() || self.requires_grad()) {
            self.check_rebase("copy_")?;
            let shape = self.shape().to_vec();
            let r = src
                .try_broadcast_to(&shape)?
                .to_dtype(self.dtype())
                .try_deep_clone()?;
            self.write_from("copy_", &r)?;
            self.set_grad_fn(r.grad_fn());
            return Ok(());
        }
        self.write_from("copy_", src)
    }

    /// Refuses an in-place write that autograd cannot follow: to a leaf that requires
    /// grad (outside `no_grad`), or to a view of a tensor that requires grad.
    fn check_rebase(&self, op: &'static str) -> Result<()> {
        if self.is_leaf() && self.requires_grad() {
            return Err(Error::Autograd(format!(
                "{op}: a leaf tensor that requires grad (shape {}) is being used in an in-place operation; wrap parameter updates in no_grad",
                fmt_shape(self.shape())
            )));
        }
        if let Some(n) = self.grad_fn()
            && VIEW_OPS.contains(&n.name())
        {
            return Err(Error::Autograd(format!(
                    "{op}: in-place writes to a view (made by `{}`) of a tensor that requires grad are not supported; write to a copy, or build the result out of place",
                    n.name()
                )));
        }
        Ok(())
    }

    /// What an in-place op computes from: `self`, or — when the op is recorded — a
    /// differentiable copy, so that the nodes saving it are not invalidated by the write.
    #[track_caller]
    fn inplace_source(&self, op: &'static str) -> Result<Tensor> {
        if is_grad_enabled() && self.requires_grad() {
            self.check_rebase(op)?;
            self.try_deep_clone()
        } else {
            Ok(self.clone())
        }
    }

    fn check_writable(&self, op: &'static str) -> Result<()> {
        let l = self.layout();
        if l.shape()
            .iter()
            .zip(l.strides())
            .any(|(&n, &s)| n > 1 && s == 0)
        {
            return Err(Error::shape(
                op,
                format!(
                    "cannot write in place to a tensor of shape {} whose elements overlap in memory (an expanded view); call contiguous() first",
                    fmt_shape(self.shape())
                ),
            ));
        }
        Ok(())
    }

    /// Writes `src` into this tensor's elements.
    fn write_from(&self, op: &'static str, src: &Tensor) -> Result<()> {
        self.check_writable(op)?;
        if src.device() != self.device() {
            return Err(Error::devices(op, self.device(), src.device()));
        }
        let lsrc_shape_ok = src.layout().broadcast_to(op, self.shape());
        let lsrc = lsrc_shape_ok.map_err(|_| {
            Error::shape(
                op,
                format!(
                    "source of shape {} does not broadcast to the tensor's shape {}",
                    fmt_shape(src.shape()),
                    fmt_shape(self.shape())
                ),
            )
        })?;
        let mut src = src.to_dtype_raw(self.dtype())?;
        let mut lsrc = lsrc;
        if src.shares_storage(self) {
            src = src.copy_raw()?;
            lsrc = src.layout().broadcast_to(op, self.shape())?;
        }
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            return crate::cuda::ops::write(op, self, &src, &lsrc);
        }
        let dt = self.dtype();
        let dst_layout = self.layout().clone();
        src.with_cpu(op, |sbuf, _| {
            let mut guard = self.storage().write();
            let dbuf = guard.as_cpu_mut().ok_or(Error::NoCudaKernel {
                op,
                device: self.device(),
            })?;
            dispatch!(all dt, T => {
                let s = <T as BufferElement>::slice(sbuf).expect("source converted to the destination dtype");
                let d = <T as BufferElement>::slice_mut(dbuf).expect("destination dtype");
                write_strided(d, &dst_layout, s, &lsrc);
            });
            Ok(())
        })?
    }

    /// Writes `result` (computed out of place by `op`) back, refusing a float result into
    /// an integer tensor like PyTorch does.
    fn assign_result(&self, op: &'static str, result: Result<Tensor>) -> Result<()> {
        let r = result?;
        if r.dtype().is_float() && !self.dtype().is_float() {
            return Err(Error::dtype(
                op,
                format!(
                    "result type {} can't be cast to the tensor's type {}",
                    r.dtype(),
                    self.dtype()
                ),
            ));
        }
        let track = is_grad_enabled() && r.requires_grad();
        if track {
            self.check_rebase(op)?;
        }
        self.write_from(op, &r)?;
        if track {
            // the tensor's history is now that of the result
            self.set_grad_fn(r.grad_fn());
        }
        Ok(())
    }

    /// `self = self <kind> other`: straight into the storage when nothing else is needed
    /// ([`assign_arith`]), else out of place and written back (recording for autograd).
    #[track_caller]
    fn arith_inplace(&self, op: &'static str, other: Operand, kind: Arith) -> Result<()> {
        if assign_arith(self, &other, kind) {
            return Ok(());
        }
        self.assign_result(
            op,
            self.inplace_source(op).and_then(|x| arith(&x, other, kind)),
        )
    }

    /// Sets every element to `value`.
    #[track_caller]
    pub fn fill_(&self, value: f64) -> &Tensor {
        if is_grad_enabled() && self.requires_grad() {
            or_panic(self.check_rebase("fill_"));
            self.set_grad_fn(None);
        }
        or_panic(
            Tensor::try_full(&[], value, (self.dtype(), self.device()).into())
                .and_then(|v| self.write_from("fill_", &v)),
        );
        self
    }

    /// Sets every element to zero.
    #[track_caller]
    pub fn zero_(&self) -> &Tensor {
        self.fill_(0.0)
    }

    /// `self += other` in place.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let w = Tensor::ones([3], ());
    /// let view = w.clone();
    /// w.add_(2.0);
    /// assert_eq!(view.to_vec::<f32>(), vec![3.0; 3]);
    /// ```
    #[track_caller]
    pub fn add_(&self, other: impl Into<Operand>) -> &Tensor {
        or_panic(self.arith_inplace("add_", other.into(), Arith::Add));
        self
    }
    /// `self -= other` in place.
    #[track_caller]
    pub fn sub_(&self, other: impl Into<Operand>) -> &Tensor {
        or_panic(self.arith_inplace("sub_", other.into(), Arith::Sub));
        self
    }
    /// `self *= other` in place.
    #[track_caller]
    pub fn mul_(&self, other: impl Into<Operand>) -> &Tensor {
        or_panic(self.arith_inplace("mul_", other.into(), Arith::Mul));
        self
    }
    /// `self /= other` in place (float tensors only, as in PyTorch).
    #[track_caller]
    pub fn div_(&self, other: impl Into<Operand>) -> &Tensor {
        or_panic(self.arith_inplace("div_", other.into(), Arith::Div));
        self
    }
    /// Clamps in place.
    #[track_caller]
    pub fn clamp_(&self, min: f64, max: f64) -> &Tensor {
        or_panic(self.assign_result(
            "clamp_",
            self.inplace_source("clamp_").map(|x| x.clamp(min, max)),
        ));
        self
    }
    /// `max(x, 0)` in place.
    #[track_caller]
    pub fn relu_(&self) -> &Tensor {
        or_panic(self.assign_result("relu_", self.inplace_source("relu_").map(|x| x.relu())));
        self
    }
    /// Fills the elements where `mask` is true with `value`, in place.
    #[track_caller]
    pub fn masked_fill_(&self, mask: &Tensor, value: f64) -> &Tensor {
        or_panic(
            self.assign_result(
                "masked_fill_",
                self.inplace_source("masked_fill_")
                    .and_then(|x| x.try_masked_fill(mask, value)),
            ),
        );
        self
    }
}

/// `dst[dl] = src[sl]` elementwise (layouts of the same shape).
fn write_strided<T: Copy + Send + Sync>(
    dst: &mut [T],
    dl: &crate::layout::Layout,
    src: &[T],
    sl: &crate::layout::Layout,
) {
    if let Some(r) = dl.contiguous_range() {
        fill_strided(&mut dst[r], sl, |_, o| src[o]);
    } else {
        for_each_offsets(
            dl.shape(),
            [dl.strides(), sl.strides()],
            [dl.offset(), sl.offset()],
            0..dl.numel(),
            |_, [d, s]| {
                dst[d] = src[s];
            },
        );
    }
}

#[allow(dead_code)]
const _: DType = DType::F32;

#[cfg(test)]
mod tests {
    use crate::{DType, Tensor};

    #[test]
    fn writes_through_views_and_bumps_version() {
        let x = Tensor::zeros([3, 4], DType::F64);
        let v0 = x.version();
        let col = x.select(1, 2); // strided view
        col.fill_(7.0);
        assert!(x.version() > v0);
        x.t().narrow(0, 0, 1).add_(1.0);
        let got = x.to_vec::<f64>();
        assert_eq!(got, vec![1., 0., 7., 0., 1., 0., 7., 0., 1., 0., 7., 0.]);
        x.mul_(Tensor::from_vec(vec![2.0f64, 1.0, 1.0, 1.0], [4]));
        assert_eq!(x.to_vec::<f64>()[..4], [2., 0., 7., 0.]);
        x.masked_fill_(&x.gt(5.0), -1.0).zero_();
        assert_eq!(x.sum_all().item::<f64>(), 0.0);
    }

    /// The direct in-place kernel (same dtype or a scalar, through any view, with
    /// broadcasting) against the out-of-place op, and the cases that take the
    /// out-of-place path (another dtype, autograd).
    #[test]
    fn in_place_arithmetic_matches_out_of_place() {
        let base = || Tensor::arange(0.0, 24.0, 1.0, DType::F64).view([2, 3, 4]);
        let row = Tensor::from_vec(vec![1.0f64, -2.0, 0.5, 4.0], [4]);
        let col = Tensor::from_vec(vec![2.0f64, 3.0, 5.0], [3, 1]);
        type Case = (&'static str, fn(&Tensor, &Tensor) -> Tensor);
        let cases: [Case; 4] = [
            ("add", |a, b| a + b),
            ("sub", |a, b| a - b),
            ("mul", |a, b| a * b),
            ("div", |a, b| a / b),
        ];
        for (name, f) in cases {
            for other in [&row, &col] {
                // through a permuted view: x.permute(2, 0, 1) op= other.permute-compatible
                let x = base();
                let view = x.narrow(1, 1, 2); // [2, 2, 4], strided
                let o = if other.ndim() == 1 {
                    other.clone()
                } else {
                    other.narrow(0, 0, 2)
                };
                let want = f(&view, &o).to_vec::<f64>();
                match name {
                    "add" => view.add_(&o),
                    "sub" => view.sub_(&o),
                    "mul" => view.mul_(&o),
                    _ => view.div_(&o),
                };
                assert_eq!(view.to_vec::<f64>(), want, "{name}");
                // the rows outside the view are untouched
                assert_eq!(
                    x.select(1, 0).to_vec::<f64>(),
                    base().select(1, 0).to_vec::<f64>()
                );
            }
        }
        // scalars, f32 and i64
        let y = Tensor::from_vec(vec![1.5f32, -2.0, 3.25], [3]);
        y.mul_(2.0).add_(1).sub_(0.5f32).div_(4.0);
        let want: Vec<f32> = [1.5f32, -2.0, 3.25]
            .iter()
            .map(|v| ((v * 2.0 + 1.0) - 0.5) / 4.0)
            .collect();
        assert_eq!(y.to_vec::<f32>(), want);
        let k = Tensor::from_vec(vec![3i64, -4, 5], [3]);
        k.mul_(3).sub_(Tensor::from_vec(vec![1i64, 1, 1], [3]));
        assert_eq!(k.to_vec::<i64>(), vec![8, -13, 14]);
        // another dtype converts (out-of-place path), like PyTorch's f32 += f64
        let z = Tensor::from_vec(vec![1.0f32, 2.0], [2]);
        z.add_(Tensor::from_vec(vec![0.25f64, 0.5], [2]));
        assert_eq!(
            (z.dtype(), z.to_vec::<f32>()),
            (DType::F32, vec![1.25, 2.5])
        );
        // a large contiguous tensor (the parallel chunks) with a broadcast row
        let big = Tensor::arange(0.0, 70000.0, 1.0, DType::F32).view([700, 100]);
        let r = Tensor::arange(0.0, 100.0, 1.0, DType::F32);
        let want = (&big + &r).to_vec::<f32>();
        big.add_(&r);
        assert_eq!(big.to_vec::<f32>(), want);
    }

    #[test]
    fn self_aliasing_is_safe() {
        let x = Tensor::arange(0.0, 4.0, 1.0, DType::F64);
        x.add_(&x);
        assert_eq!(x.to_vec::<f64>(), vec![0., 2., 4., 6.]);
        // overlapping source and destination views of one storage
        let y = Tensor::arange(0.0, 5.0, 1.0, DType::I64);
        y.narrow(0, 1, 4).copy_(&y.narrow(0, 0, 4));
        assert_eq!(y.to_vec::<i64>(), vec![0, 0, 1, 2, 3]);
    }

    #[test]
    fn refuses_bad_writes() {
        let x = Tensor::ones([3], ()).unsqueeze(0).expand([2, 3]);
        assert!(x
            .try_copy_(&Tensor::zeros([2, 3], ()))
            .unwrap_err()
            .to_string()
            .contains("overlap"));
        let i = Tensor::ones([2], DType::I64);
        assert!(std::panic::catch_unwind(|| {
            i.div_(2);
        })
        .is_err());
        i.add_(3);
        assert_eq!(i.to_vec::<i64>(), vec![4, 4]);
        assert!(Tensor::zeros([2], ())
            .try_copy_(&Tensor::zeros([3], ()))
            .is_err());
    }
}
