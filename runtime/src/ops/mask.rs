//! Masks: comparisons, logical ops, `where_`, `masked_fill`, `triu`/`tril`.

use crate::autograd::record;
use crate::cpu::map;
use crate::dispatch;
use crate::dtype::{DType, Element};
use crate::error::{or_panic, Error, Result};
use crate::layout::{broadcast_shapes, Layout};
use crate::ops::elementwise::{prepare, sum_to, Operand};
use crate::tensor::Tensor;

#[derive(Clone, Copy)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[allow(clippy::bool_comparison)] // T may be bool
fn compare(a: &Tensor, b: Operand, cmp: Cmp, op: &'static str) -> Result<Tensor> {
    let b = b.into_tensor(a)?;
    let dt = DType::promote(a.dtype(), b.dtype());
    let (a, la, b, lb) = prepare(op, a, &b, dt)?;
    dispatch!(all dt, T => match cmp {
        Cmp::Eq => map::binary::<T, bool>(op, &a, &la, &b, &lb, |x, y| x == y),
        Cmp::Ne => map::binary::<T, bool>(op, &a, &la, &b, &lb, |x, y| x != y),
        Cmp::Lt => map::binary::<T, bool>(op, &a, &la, &b, &lb, |x, y| x < y),
        Cmp::Le => map::binary::<T, bool>(op, &a, &la, &b, &lb, |x, y| x <= y),
        Cmp::Gt => map::binary::<T, bool>(op, &a, &la, &b, &lb, |x, y| x > y),
        Cmp::Ge => map::binary::<T, bool>(op, &a, &la, &b, &lb, |x, y| x >= y),
    })
}

#[derive(Clone, Copy)]
enum Logic {
    And,
    Or,
    Xor,
}

fn logical(a: &Tensor, b: Operand, l: Logic, op: &'static str) -> Result<Tensor> {
    let b = b.into_tensor(a)?;
    let (a, b) = (a.try_truthy()?, b.try_truthy()?);
    let (a, la, b, lb) = prepare(op, &a, &b, DType::Bool)?;
    match l {
        Logic::And => map::binary::<bool, bool>(op, &a, &la, &b, &lb, |x, y| x && y),
        Logic::Or => map::binary::<bool, bool>(op, &a, &la, &b, &lb, |x, y| x || y),
        Logic::Xor => map::binary::<bool, bool>(op, &a, &la, &b, &lb, |x, y| x ^ y),
    }
}

macro_rules! cmp_methods {
    ($($(#[$doc:meta])* $name:ident, $try_name:ident, $kind:ident;)*) => {$(
        $(#[$doc])*
        #[track_caller]
        pub fn $name(&self, other: impl Into<Operand>) -> Tensor {
            or_panic(self.$try_name(other))
        }
        #[doc = concat!("Fallible [`Tensor::", stringify!($name), "`].")]
        pub fn $try_name(&self, other: impl Into<Operand>) -> Result<Tensor> {
            compare(self, other.into(), Cmp::$kind, stringify!($name))
        }
    )*};
}

macro_rules! logic_methods {
    ($($(#[$doc:meta])* $name:ident, $kind:ident;)*) => {$(
        $(#[$doc])*
        #[track_caller]
        pub fn $name(&self, other: impl Into<Operand>) -> Tensor {
            or_panic(logical(self, other.into(), Logic::$kind, stringify!($name)))
        }
    )*};
}

impl Tensor {
    cmp_methods! {
        /// `self == other` elementwise, as a bool tensor.
        ///
        /// ```
        /// use flint_runtime::Tensor;
        /// let x = Tensor::from_vec(vec![1i64, 2, 3], [3]);
        /// assert_eq!(x.eq(2).to_vec::<bool>(), vec![false, true, false]);
        /// ```
        eq, try_eq, Eq;
        /// `self != other` elementwise.
        ne, try_ne, Ne;
        /// `self < other` elementwise.
        lt, try_lt, Lt;
        /// `self <= other` elementwise.
        le, try_le, Le;
        /// `self > other` elementwise.
        gt, try_gt, Gt;
        /// `self >= other` elementwise.
        ge, try_ge, Ge;
    }

    logic_methods! {
        /// Logical AND (non-zero is true), as a bool tensor.
        logical_and, And;
        /// Logical OR (non-zero is true).
        logical_or, Or;
        /// Logical XOR (non-zero is true).
        logical_xor, Xor;
    }

    /// Logical NOT (zero is true).
    #[track_caller]
    pub fn logical_not(&self) -> Tensor {
        or_panic(self.try_logical_not())
    }

    /// Fallible [`Tensor::logical_not`].
    pub fn try_logical_not(&self) -> Result<Tensor> {
        map::unary::<bool, bool>("logical_not", &self.try_truthy()?, |x| !x)
    }

    /// The tensor as bool (non-zero is true).
    fn try_truthy(&self) -> Result<Tensor> {
        self.to_dtype_raw(DType::Bool)
    }

    fn truthy(&self) -> Tensor {
        or_panic(self.try_truthy())
    }

    /// True when every element is non-zero.
    pub fn all(&self) -> bool {
        self.truthy().to_vec::<bool>().iter().all(|&x| x)
    }
    /// True when some element is non-zero.
    pub fn any(&self) -> bool {
        self.truthy().to_vec::<bool>().iter().any(|&x| x)
    }

    /// `cond ? self : other` elementwise (PyTorch's `torch.where(cond, self, other)`),
    /// broadcasting all three.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let x = Tensor::from_vec(vec![-1.0f32, 2.0], [2]);
    /// assert_eq!(x.where_(&x.gt(0.0), 0.0).to_vec::<f32>(), vec![0.0, 2.0]);
    /// ```
    #[track_caller]
    pub fn where_(&self, cond: &Tensor, other: impl Into<Operand>) -> Tensor {
        or_panic(self.try_where(cond, other))
    }

    /// Fallible [`Tensor::where_`].
    #[track_caller]
    pub fn try_where(&self, cond: &Tensor, other: impl Into<Operand>) -> Result<Tensor> {
        let other = other.into().into_tensor(self)?;
        if cond.dtype() != DType::Bool {
            return Err(Error::dtype(
                "where",
                format!("condition must be a bool tensor, got {}", cond.dtype()),
            ));
        }
        let dt = DType::promote(self.dtype(), other.dtype());
        crate::tensor::same_device("where", &[self, cond, &other])?;
        let (a, la, b, lb) = prepare("where", self, &other, dt)?;
        let shape = broadcast_shapes("where", la.shape(), cond.shape())?;
        let la = la.broadcast_to("where", &shape)?;
        let lb = lb.broadcast_to("where", &shape)?;
        let lc = cond.layout().broadcast_to("where", &shape)?;
        let out = dispatch!(all dt, T => map::ternary::<bool, T, T>("where", (cond, &lc), (&a, &la), (&b, &lb), |c, x, y| if c { x } else { y }))?;
        // the formula reads the condition only (and the inputs' shapes and dtypes)
        let c = cond.clone();
        let (nx, ny) = (self.requires_grad(), other.requires_grad());
        let (sx, dx) = (self.shape().to_vec(), self.dtype());
        let (sy, dy) = (other.shape().to_vec(), other.dtype());
        Ok(record(out, "where", &[self, &other], &[], move |g| {
            let gx = nx.then(|| sum_to(&g.masked_fill(&c.logical_not(), 0.0), &sx).to_dtype(dx));
            let gy = ny.then(|| sum_to(&g.masked_fill(&c, 0.0), &sy).to_dtype(dy));
            vec![gx, gy]
        }))
    }

    /// `value` where `mask` is true, `self` elsewhere; `mask` broadcasts to `self`.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let s = Tensor::zeros([2, 2], ());
    /// let causal = Tensor::ones([2, 2], flint_runtime::DType::Bool).triu(1);
    /// let m = s.masked_fill(&causal, f64::NEG_INFINITY);
    /// assert_eq!(m.to_vec::<f32>(), vec![0.0, f32::NEG_INFINITY, 0.0, 0.0]);
    /// ```
    #[track_caller]
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Tensor {
        or_panic(self.try_masked_fill(mask, value))
    }

    /// Fallible [`Tensor::masked_fill`].
    #[track_caller]
    pub fn try_masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        if mask.dtype() != DType::Bool {
            return Err(Error::dtype(
                "masked_fill",
                format!("mask must be a bool tensor, got {}", mask.dtype()),
            ));
        }
        let lm = mask
            .layout()
            .broadcast_to("masked_fill", self.shape())
            .map_err(|_| {
                Error::shape(
                    "masked_fill",
                    format!(
                        "mask of shape {:?} does not broadcast to the tensor's shape {:?}",
                        mask.shape(),
                        self.shape()
                    ),
                )
            })?;
        crate::tensor::same_device("masked_fill", &[self, mask])?;
        let out = self.masked_fill_raw(mask, &lm, value)?;
        let m = mask.clone();
        Ok(record(out, "masked_fill", &[self], &[], move |g| {
            vec![Some(g.masked_fill(&m, 0.0))]
        }))
    }

    /// `value` where the mask view `lm` (broadcast to this shape) is true; records
    /// nothing.
    fn masked_fill_raw(&self, mask: &Tensor, lm: &Layout, value: f64) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            // the fill value as a kernel argument
            return crate::cuda::ops::masked_fill(self, mask, lm, value);
        }
        let dt = self.dtype();
        let fill = Tensor::try_full(&[], value, (dt, self.device()).into())?;
        let lf = fill.layout().broadcast_to("masked_fill", self.shape())?;
        dispatch!(all dt, T => map::ternary::<bool, T, T>("masked_fill", (mask, lm), (&fill, &lf), (self, self.layout()), |c, x, y| if c { x } else { y }))
    }

    /// The upper triangle of the last two dims: elements with `col - row >= diagonal`
    /// kept, the rest zeroed (false for bool).
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::ones([3, 3], ()).triu(1);
    /// assert_eq!(t.to_vec::<f32>(), vec![0., 1., 1., 0., 0., 1., 0., 0., 0.]);
    /// ```
    #[track_caller]
    pub fn triu(&self, diagonal: i64) -> Tensor {
        or_panic(self.tri(diagonal, true))
    }

    /// The lower triangle of the last two dims: elements with `col - row <= diagonal` kept.
    #[track_caller]
    pub fn tril(&self, diagonal: i64) -> Tensor {
        or_panic(self.tri(diagonal, false))
    }

    #[track_caller]
    fn tri(&self, diagonal: i64, upper: bool) -> Result<Tensor> {
        let op = if upper { "triu" } else { "tril" };
        if self.ndim() < 2 {
            return Err(Error::shape(
                op,
                format!("expects at least 2 dims, got shape {:?}", self.shape()),
            ));
        }
        let (r, c) = (self.size(-2), self.size(-1));
        let dt = self.dtype();
        let zero = Tensor::try_zeros([], (dt, self.device()))?;
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            // the [r, c] keep-mask made on the device by the triangle kernel
            let ones = Tensor::try_full(&[r, c], 1.0, (DType::Bool, self.device()).into())?;
            let keep = crate::cuda::ops::tri(&ones, diagonal, upper)?;
            return self.try_where(&keep, zero);
        }
        let keep: Vec<bool> = (0..r * c)
            .map(|i| {
                let d = (i % c) as i64 - (i / c) as i64;
                if upper {
                    d >= diagonal
                } else {
                    d <= diagonal
                }
            })
            .collect();
        let keep = Tensor::from_vec(keep, [r, c]);
        self.try_where(&keep, zero)
    }
}

/// A `[t, t]` bool mask that is true above the diagonal: the positions a causal
/// attention must not see (pass it to `masked_fill` with `-inf`).
///
/// ```
/// let m = flint_runtime::causal_mask(3);
/// assert_eq!(m.to_vec::<bool>(), vec![false, true, true, false, false, true, false, false, false]);
/// ```
pub fn causal_mask(t: usize) -> Tensor {
    Tensor::ones([t, t], DType::Bool).triu(1)
}

#[allow(dead_code)]
fn _assert_element<T: Element>() {}

#[cfg(test)]
mod tests {
    use crate::{DType, Tensor};

    #[test]
    fn comparisons_broadcast_and_promote() {
        let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3]);
        let b = Tensor::from_vec(vec![2i64], [1]);
        assert_eq!(a.lt(&b).to_vec::<bool>(), vec![true, false, false]);
        assert_eq!(a.le(&b).to_vec::<bool>(), vec![true, true, false]);
        assert_eq!(a.ge(2.0).to_vec::<bool>(), vec![false, true, true]);
        assert_eq!(a.ne(2).to_vec::<bool>(), vec![true, false, true]);
        assert_eq!(a.unsqueeze(1).gt(&a).shape(), &[3, 3]);
        assert_eq!(
            a.unsqueeze(1)
                .gt(&a)
                .to_vec::<bool>()
                .iter()
                .filter(|&&x| x)
                .count(),
            3
        );
    }

    #[test]
    fn logical_ops() {
        let x = Tensor::from_vec(vec![true, true, false, false], [4]);
        let y = Tensor::from_vec(vec![1i64, 0, 1, 0], [4]);
        assert_eq!(
            x.logical_and(&y).to_vec::<bool>(),
            vec![true, false, false, false]
        );
        assert_eq!(
            x.logical_or(&y).to_vec::<bool>(),
            vec![true, true, true, false]
        );
        assert_eq!(
            x.logical_xor(&y).to_vec::<bool>(),
            vec![false, true, true, false]
        );
        assert_eq!(
            y.logical_not().to_vec::<bool>(),
            vec![false, true, false, true]
        );
        assert!(x.any() && !x.all());
    }

    #[test]
    fn masked_fill_with_a_mask_of_the_trailing_dims() {
        // a causal [3, 3] mask over [2, 3, 3] scores 0..18 (the contiguous fast path)
        let s = Tensor::arange(0.0, 18.0, 1.0, ()).view([2, 3, 3]);
        let mask = Tensor::ones([3, 3], DType::Bool).triu(1);
        let inf = f32::NEG_INFINITY;
        let want = vec![
            0., inf, inf, 3., 4., inf, 6., 7., 8., //
            9., inf, inf, 12., 13., inf, 15., 16., 17.,
        ];
        assert_eq!(
            s.masked_fill(&mask, f64::NEG_INFINITY).to_vec::<f32>(),
            want
        );
        // the same through a [1, 3, 3] mask, in f64, and on a strided input (general path)
        let got = s
            .to_dtype(DType::F64)
            .masked_fill(&mask.unsqueeze(0), f64::NEG_INFINITY);
        let want64: Vec<f64> = want.iter().map(|&v| v as f64).collect();
        assert_eq!(got.to_vec::<f64>(), want64);
        let t = s.transpose(1, 2).masked_fill(&mask, -1.0).to_vec::<f32>();
        assert_eq!(&t[..9], &[0., -1., -1., 1., 4., -1., 2., 5., 8.]);
        // its gradient is zero at the masked positions
        let x = Tensor::ones([2, 3, 3], ()).requires_grad_(true);
        x.masked_fill(&mask, 0.0).sum_all().backward();
        let g = x.grad().unwrap().to_vec::<f32>();
        assert_eq!(&g[..9], &[1., 0., 0., 1., 1., 0., 1., 1., 1.]);
    }

    #[test]
    fn where_and_masked_fill_on_views() {
        let x = Tensor::arange(0.0, 6.0, 1.0, DType::F64).view([2, 3]).t(); // [3,2] strided
        let mask = Tensor::from_vec(vec![true, false], [2]);
        assert_eq!(
            x.masked_fill(&mask, -1.0).to_vec::<f64>(),
            vec![-1., 3., -1., 4., -1., 5.]
        );
        let cond = x.gt(2.0);
        assert_eq!(
            x.where_(&cond, x.neg()).to_vec::<f64>(),
            vec![-0., 3., -1., 4., -2., 5.]
        );
        assert!(x
            .try_masked_fill(&Tensor::ones([3], DType::Bool), 0.0)
            .is_err());
        assert!(x
            .try_masked_fill(&Tensor::ones([2], DType::F32), 0.0)
            .is_err());
    }

    #[test]
    fn triangles() {
        let t = Tensor::arange(1.0, 10.0, 1.0, DType::I64).view([3, 3]);
        assert_eq!(t.tril(0).to_vec::<i64>(), vec![1, 0, 0, 4, 5, 0, 7, 8, 9]);
        assert_eq!(t.triu(-1).to_vec::<i64>(), vec![1, 2, 3, 4, 5, 6, 0, 8, 9]);
        let b = Tensor::ones([2, 2, 3], DType::Bool).tril(0);
        assert_eq!(
            b.to_vec::<bool>()[6..],
            [true, false, false, true, true, false]
        );
        assert_eq!(
            crate::causal_mask(2).to_vec::<bool>(),
            vec![false, true, false, false]
        );
    }
}
