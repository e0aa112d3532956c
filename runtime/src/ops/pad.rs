//! Constant padding: [`Tensor::pad`] (PyTorch's `F.pad` in `"constant"` mode).

use crate::autograd::{no_grad, record};
use crate::error::{or_panic, Error, Result};
use crate::layout::fmt_shape;
use crate::tensor::Tensor;

impl Tensor {
    /// The tensor with `value` added around its trailing dims, like
    /// `torch.nn.functional.pad(x, pad, value=value)`: `pads[0]` is the `(before, after)`
    /// count for the **last** dim, `pads[1]` for the dim before it, and so on (PyTorch's
    /// flat `(left, right, top, bottom, …)` tuple, in pairs). Dims without a pair are not
    /// padded.
    ///
    /// Differentiable: the gradient is the gradient of the output with the padding cut
    /// off. Panics when there are more pairs than dims; see [`Tensor::try_pad`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]);
    /// // one zero column before the last dim's elements, one zero row after dim 0's
    /// let y = x.pad(&[(1, 0), (0, 1)], 0.0);
    /// assert_eq!(y.shape(), &[3, 3]);
    /// assert_eq!(y.to_vec::<f32>(), vec![0., 1., 2., 0., 3., 4., 0., 0., 0.]);
    /// ```
    #[track_caller]
    pub fn pad(&self, pads: &[(usize, usize)], value: f64) -> Tensor {
        or_panic(self.try_pad(pads, value))
    }

    /// Fallible [`Tensor::pad`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let e = Tensor::zeros([3], ()).try_pad(&[(1, 1), (1, 1)], 0.0).unwrap_err();
    /// assert_eq!(e.to_string(), "pad: 2 (before, after) pairs given for a tensor of shape [3] with 1 dims");
    /// ```
    #[track_caller]
    pub fn try_pad(&self, pads: &[(usize, usize)], value: f64) -> Result<Tensor> {
        const OP: &str = "pad";
        let nd = self.ndim();
        if pads.len() > nd {
            return Err(Error::shape(
                OP,
                format!(
                    "{} (before, after) pairs given for a tensor of shape {} with {nd} dims",
                    pads.len(),
                    fmt_shape(self.shape())
                ),
            ));
        }
        // (dim, before, after) for every padded dim
        let dims: Vec<(usize, usize, usize)> = pads
            .iter()
            .enumerate()
            .filter(|(_, (b, a))| b + a > 0)
            .map(|(i, &(b, a))| (nd - 1 - i, b, a))
            .collect();
        if dims.is_empty() {
            return Ok(self.clone());
        }
        let mut shape = self.shape().to_vec();
        for &(d, b, a) in &dims {
            shape[d] += b + a;
        }
        let in_shape = self.shape().to_vec();
        let out = no_grad(|| -> Result<Tensor> {
            let out = Tensor::try_full(&shape, value, (self.dtype(), self.device()).into())?;
            let mut dst = out.clone();
            for &(d, b, _) in &dims {
                dst = dst.try_narrow(d as isize, b, in_shape[d])?;
            }
            dst.try_copy_(self)?;
            Ok(out)
        })?;
        Ok(record(out, OP, &[self], &[], move |g| {
            let mut g = g.clone();
            for &(d, b, _) in &dims {
                g = g.narrow(d as isize, b, in_shape[d]);
            }
            vec![Some(g)]
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::autograd::{gradcheck, gradgradcheck, GradcheckOptions};
    use crate::{DType, Generator, Tensor};

    #[test]
    fn pads_like_torch() {
        // torch.nn.functional.pad(torch.arange(6.).reshape(1, 2, 3), (2, 1, 0, 1), value=-1)
        let x = Tensor::arange(0.0, 6.0, 1.0, ()).reshape([1, 2, 3]);
        let y = x.pad(&[(2, 1), (0, 1)], -1.0);
        assert_eq!(y.shape(), &[1, 3, 6]);
        #[rustfmt::skip]
        assert_eq!(y.to_vec::<f32>(), vec![
            -1., -1., 0., 1., 2., -1.,
            -1., -1., 3., 4., 5., -1.,
            -1., -1., -1., -1., -1., -1.,
        ]);
        // integer tensors and a non-contiguous input
        let t = Tensor::from_vec(vec![1i64, 2, 3, 4], [2, 2]).t();
        assert_eq!(
            t.pad(&[(0, 0), (1, 0)], 9.0).to_vec::<i64>(),
            vec![9, 9, 1, 3, 2, 4]
        );
        // no padding gives the same tensor
        assert!(t.pad(&[(0, 0)], 1.0).same_tensor(&t));
    }

    #[test]
    fn pad_gradient_cuts_the_border() {
        let x = Tensor::ones([2, 2], DType::F64).requires_grad_(true);
        let y = x.pad(&[(1, 2), (3, 0)], 5.0);
        let w = Tensor::arange(0.0, 25.0, 1.0, DType::F64).reshape([5, 5]);
        (&y * &w).sum_all().backward();
        // the input sits at rows 3..5, cols 1..3 of w
        assert_eq!(x.grad().unwrap().to_vec::<f64>(), vec![16., 17., 21., 22.]);
    }

    #[test]
    fn pad_gradcheck() {
        let mut g = Generator::new(1);
        let x = g.randn([3, 2, 4], DType::F64).transpose(0, 2);
        let opts = GradcheckOptions::default();
        let f = |v: &[Tensor]| v[0].pad(&[(1, 2), (0, 0), (2, 1)], 0.5);
        gradcheck(f, std::slice::from_ref(&x), opts).unwrap();
        gradgradcheck(f, &[x], opts).unwrap();
    }
}
