//! Range slicing on any dims, like Python's `t[0, 1:5:2, ..., None]`: [`Tensor::i`],
//! [`TensorIndex`] and the [`s!`](crate::s) macro.
//!
//! Every result is a view of the same storage: nothing is copied.
//!
//! | Python            | `t.i(...)`                        | `s![...]`            |
//! |-------------------|-----------------------------------|----------------------|
//! | `t[1]`            | `t.i(1)`                          | `s![1]`              |
//! | `t[-1]`           | `t.i(-1)`                         | `s![-1]`             |
//! | `t[:, 1:5]`       | `t.i((.., 1..5))`                 | `s![.., 1..5]`       |
//! | `t[2:]`, `t[:-1]` | `t.i(2..)`, `t.i(..-1)`           | `s![2..]`, `s![..-1]`|
//! | `t[1:4:2]`        | `t.i(TensorIndex::slice(1..4, 2))`| `s![1..4;2]`         |
//! | `t[::2]`          | `t.i(TensorIndex::slice(.., 2))`  | `s![..;2]`           |
//! | `t[1:3+1]`        | `t.i(1..=3)`                      | `s![1..=3]`          |
//! | `t[..., 0]`       | `t.i((TensorIndex::Ellipsis, 0))` | `s![..., 0]`         |
//! | `t[:, None]`      | `t.i((.., TensorIndex::NewAxis))` | `s![.., NewAxis]`    |
//!
//! Integers select (removing the dim) and may be `usize`, `isize`, `i64` or `i32`;
//! negative integers and negative range bounds count from the end. Range bounds are
//! clamped to the dim like Python's slices (`t.i(..100)` on a dim of 5 is the whole dim);
//! a selected index out of range is an error. Steps must be positive (as in PyTorch).
//! Dims not mentioned are kept whole.

use crate::error::{or_panic, Error, Result};
use crate::layout::fmt_shape;
use crate::tensor::Tensor;
use std::ops::{Range, RangeFrom, RangeFull, RangeInclusive, RangeTo, RangeToInclusive};

/// One item of an index: what happens to one dim (or, for [`TensorIndex::NewAxis`] and
/// [`TensorIndex::Ellipsis`], to none or several).
///
/// Integers and ranges convert into it with `From`, so a `TensorIndex` is rarely built
/// by hand; see the [module docs](crate::ops::indexing) for the table of forms.
///
/// ```
/// use flint_runtime::TensorIndex;
/// assert_eq!(TensorIndex::from(-1), TensorIndex::Select(-1));
/// assert_eq!(TensorIndex::from(1..=3), TensorIndex::Slice { start: Some(1), end: Some(4), step: 1 });
/// assert_eq!(TensorIndex::slice(..-1, 2), TensorIndex::Slice { start: None, end: Some(-1), step: 2 });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorIndex {
    /// Picks one index of the dim and removes the dim (negative counts from the end).
    Select(isize),
    /// Keeps every `step`-th index of `start..end` (Python's `start:end:step`); `None`
    /// is open, negative bounds count from the end, bounds are clamped to the dim.
    Slice {
        /// First index (inclusive); `None` is the start of the dim.
        start: Option<isize>,
        /// Last index (exclusive); `None` is the end of the dim.
        end: Option<isize>,
        /// Stride between kept indices; must be positive.
        step: isize,
    },
    /// Inserts a new dim of size 1 (Python's `None`).
    NewAxis,
    /// Stands for as many whole dims as needed (Python's `...`); at most one per index.
    Ellipsis,
}

impl TensorIndex {
    /// A slice of `range` keeping every `step`-th index: `TensorIndex::slice(1..5, 2)` is
    /// Python's `1:5:2`.
    ///
    /// ```
    /// use flint_runtime::{Tensor, TensorIndex};
    /// let t = Tensor::arange(0.0, 6.0, 1.0, ());
    /// assert_eq!(t.i(TensorIndex::slice(.., 2)).to_vec::<f32>(), vec![0., 2., 4.]);
    /// assert_eq!(t.i(TensorIndex::slice(-4.., 3)).to_vec::<f32>(), vec![2., 5.]);
    /// ```
    pub fn slice(range: impl IndexRange, step: isize) -> TensorIndex {
        let (start, end) = range.bounds();
        TensorIndex::Slice { start, end, step }
    }

    /// True for the items that consume a dim of the tensor (selects and slices).
    fn consumes_dim(&self) -> bool {
        matches!(self, TensorIndex::Select(_) | TensorIndex::Slice { .. })
    }
}

/// A Rust range usable as a slice: `..`, `a..b`, `a..`, `..b`, `a..=b`, `..=b` over
/// `usize`, `isize`, `i64` or `i32`. See [`TensorIndex::slice`].
///
/// ```
/// use flint_runtime::ops::IndexRange;
/// assert_eq!((2i64..-1).bounds(), (Some(2), Some(-1)));
/// assert_eq!((..=-1i32).bounds(), (None, None)); // through the last element
/// ```
pub trait IndexRange {
    /// The `(start, end)` bounds, end exclusive, `None` where open.
    fn bounds(self) -> (Option<isize>, Option<isize>);
}

impl IndexRange for RangeFull {
    fn bounds(self) -> (Option<isize>, Option<isize>) {
        (None, None)
    }
}

/// Saturating conversion of an index to `isize` (an index that large is out of range
/// anyway, and slices clamp).
trait ToIsize: Copy {
    fn to_isize(self) -> isize;
}
impl ToIsize for usize {
    fn to_isize(self) -> isize {
        isize::try_from(self).unwrap_or(isize::MAX)
    }
}
impl ToIsize for isize {
    fn to_isize(self) -> isize {
        self
    }
}
impl ToIsize for i64 {
    fn to_isize(self) -> isize {
        isize::try_from(self).unwrap_or(if self < 0 { isize::MIN } else { isize::MAX })
    }
}
impl ToIsize for i32 {
    fn to_isize(self) -> isize {
        self as isize
    }
}

/// The exclusive end of an inclusive range ending at `b` (`..=-1` runs to the end).
fn inclusive_end(b: isize) -> Option<isize> {
    if b == -1 {
        None
    } else {
        Some(b.saturating_add(1))
    }
}

macro_rules! index_ints {
    ($($t:ty),*) => {$(
        impl From<$t> for TensorIndex {
            fn from(i: $t) -> Self {
                TensorIndex::Select(i.to_isize())
            }
        }
        impl IndexRange for Range<$t> {
            fn bounds(self) -> (Option<isize>, Option<isize>) {
                (Some(self.start.to_isize()), Some(self.end.to_isize()))
            }
        }
        impl IndexRange for RangeFrom<$t> {
            fn bounds(self) -> (Option<isize>, Option<isize>) {
                (Some(self.start.to_isize()), None)
            }
        }
        impl IndexRange for RangeTo<$t> {
            fn bounds(self) -> (Option<isize>, Option<isize>) {
                (None, Some(self.end.to_isize()))
            }
        }
        impl IndexRange for RangeInclusive<$t> {
            fn bounds(self) -> (Option<isize>, Option<isize>) {
                (Some(self.start().to_isize()), inclusive_end(self.end().to_isize()))
            }
        }
        impl IndexRange for RangeToInclusive<$t> {
            fn bounds(self) -> (Option<isize>, Option<isize>) {
                (None, inclusive_end(self.end.to_isize()))
            }
        }
        impl From<Range<$t>> for TensorIndex {
            fn from(r: Range<$t>) -> Self {
                TensorIndex::slice(r, 1)
            }
        }
        impl From<RangeFrom<$t>> for TensorIndex {
            fn from(r: RangeFrom<$t>) -> Self {
                TensorIndex::slice(r, 1)
            }
        }
        impl From<RangeTo<$t>> for TensorIndex {
            fn from(r: RangeTo<$t>) -> Self {
                TensorIndex::slice(r, 1)
            }
        }
        impl From<RangeInclusive<$t>> for TensorIndex {
            fn from(r: RangeInclusive<$t>) -> Self {
                TensorIndex::slice(r, 1)
            }
        }
        impl From<RangeToInclusive<$t>> for TensorIndex {
            fn from(r: RangeToInclusive<$t>) -> Self {
                TensorIndex::slice(r, 1)
            }
        }
    )*};
}
index_ints!(usize, isize, i64, i32);

impl From<RangeFull> for TensorIndex {
    fn from(_: RangeFull) -> Self {
        TensorIndex::slice(.., 1)
    }
}

/// Everything [`Tensor::i`] accepts: one item (an integer, a range, a [`TensorIndex`]),
/// a tuple of up to 6 items, or a list of [`TensorIndex`] (what [`s!`](crate::s)
/// makes).
///
/// ```
/// use flint_runtime::{ops::IntoIndices, TensorIndex};
/// assert_eq!((0i64, ..).into_indices(), vec![TensorIndex::Select(0), TensorIndex::slice(.., 1)]);
/// ```
pub trait IntoIndices {
    /// The items, in order.
    fn into_indices(self) -> Vec<TensorIndex>;
}

impl<T: Into<TensorIndex>> IntoIndices for T {
    fn into_indices(self) -> Vec<TensorIndex> {
        vec![self.into()]
    }
}
impl<const N: usize> IntoIndices for [TensorIndex; N] {
    fn into_indices(self) -> Vec<TensorIndex> {
        self.to_vec()
    }
}
impl IntoIndices for &[TensorIndex] {
    fn into_indices(self) -> Vec<TensorIndex> {
        self.to_vec()
    }
}
impl IntoIndices for Vec<TensorIndex> {
    fn into_indices(self) -> Vec<TensorIndex> {
        self
    }
}

macro_rules! tuple_indices {
    ($(($($T:ident $v:ident),+))*) => {$(
        impl<$($T: Into<TensorIndex>),+> IntoIndices for ($($T,)+) {
            fn into_indices(self) -> Vec<TensorIndex> {
                let ($($v,)+) = self;
                vec![$($v.into()),+]
            }
        }
    )*};
}
tuple_indices! {
    (A a)
    (A a, B b)
    (A a, B b, C c)
    (A a, B b, C c, D d)
    (A a, B b, C c, D d, E e)
    (A a, B b, C c, D d, E e, F f)
}

/// A Python-style index as a list of [`TensorIndex`], for [`Tensor::i`].
///
/// Items are separated by commas; each is an integer or range expression (negative
/// counts from the end), a range with a step written `range;step` (Python's
/// `start:end:step`), `NewAxis` (Python's `None`) or `...` (Python's `...`).
///
/// ```
/// use flint_runtime::{s, Tensor};
/// let t = Tensor::arange(0.0, 24.0, 1.0, ()).view([2, 3, 4]);
/// let v = t.i(s![.., 1..3, ..;2]);            // t[:, 1:3, ::2]
/// assert_eq!(v.shape(), &[2, 2, 2]);
/// assert_eq!(v.to_vec::<f32>(), vec![4., 6., 8., 10., 16., 18., 20., 22.]);
/// assert_eq!(t.i(s![-1, ..., 0]).to_vec::<f32>(), vec![12., 16., 20.]); // t[-1, ..., 0]
/// assert_eq!(t.i(s![0, NewAxis, 1..=2]).shape(), &[1, 2, 4]);       // t[0, None, 1:3]
/// let k = 2;
/// assert_eq!(t.i(s![.., k - 1, 1..;2]).shape(), &[2, 2]);
/// ```
#[macro_export]
macro_rules! s {
    (@acc []) => {{
        let items: [$crate::TensorIndex; 0] = [];
        items
    }};
    (@acc [$($out:expr,)*]) => {
        [$($out,)*]
    };
    (@acc [$($out:expr,)*] NewAxis $(, $($rest:tt)*)?) => {
        $crate::s!(@acc [$($out,)* $crate::TensorIndex::NewAxis,] $($($rest)*)?)
    };
    (@acc [$($out:expr,)*] ... $(, $($rest:tt)*)?) => {
        $crate::s!(@acc [$($out,)* $crate::TensorIndex::Ellipsis,] $($($rest)*)?)
    };
    (@acc [$($out:expr,)*] $r:expr ; $step:expr $(, $($rest:tt)*)?) => {
        $crate::s!(@acc [$($out,)* $crate::TensorIndex::slice($r, $step),] $($($rest)*)?)
    };
    (@acc [$($out:expr,)*] $e:expr $(, $($rest:tt)*)?) => {
        $crate::s!(@acc [$($out,)* $crate::TensorIndex::from($e),] $($($rest)*)?)
    };
    ($($t:tt)*) => {
        $crate::s!(@acc [] $($t)*)
    };
}

/// Python's slice clamping: a bound (default `dflt`) resolved against `size`.
fn clamp_bound(b: Option<isize>, size: isize, dflt: isize) -> isize {
    match b {
        None => dflt,
        Some(v) if v < 0 => (v + size).max(0),
        Some(v) => v.min(size),
    }
}

impl Tensor {
    /// A view indexed Python-style: one item or a tuple of up to 6 (integers select,
    /// ranges slice, [`TensorIndex::NewAxis`] and [`TensorIndex::Ellipsis`]), or the
    /// list that [`s!`](crate::s) makes. Negative indices and bounds count from the end;
    /// see the [module docs](crate::ops::indexing). Never copies. Panics when an
    /// integer is out of range or there are more indices than dims; see
    /// [`Tensor::try_i`].
    ///
    /// ```
    /// use flint_runtime::{s, Tensor, TensorIndex};
    /// let t = Tensor::arange(0.0, 12.0, 1.0, ()).view([3, 4]);
    /// assert_eq!(t.i(1).to_vec::<f32>(), vec![4., 5., 6., 7.]);          // t[1]
    /// assert_eq!(t.i((.., -1)).to_vec::<f32>(), vec![3., 7., 11.]);      // t[:, -1]
    /// assert_eq!(t.i((1.., ..2)).to_vec::<f32>(), vec![4., 5., 8., 9.]); // t[1:, :2]
    /// assert_eq!(t.i((TensorIndex::Ellipsis, TensorIndex::slice(.., 3))).shape(), &[3, 2]);
    /// assert_eq!(t.i(s![..;2, 2]).to_vec::<f32>(), vec![2., 10.]);      // t[::2, 2]
    /// assert!(t.i(0).shares_storage(&t));
    /// ```
    #[track_caller]
    pub fn i(&self, index: impl IntoIndices) -> Tensor {
        or_panic(self.try_i(index))
    }

    /// Fallible [`Tensor::i`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::zeros([2, 3], ());
    /// let e = t.try_i((0, 3)).unwrap_err().to_string();
    /// assert_eq!(e, "i: index 3 is out of range for dim 1 of size 3 (shape [2, 3])");
    /// assert!(t.try_i((0, 0, 0)).is_err());
    /// ```
    #[track_caller]
    pub fn try_i(&self, index: impl IntoIndices) -> Result<Tensor> {
        const OP: &str = "i";
        let items = index.into_indices();
        let l = self.layout();
        let ndim = l.ndim();
        let consuming = items.iter().filter(|x| x.consumes_dim()).count();
        if items
            .iter()
            .filter(|x| **x == TensorIndex::Ellipsis)
            .count()
            > 1
        {
            return Err(Error::index(
                OP,
                "an index can have only one ellipsis (...)",
            ));
        }
        if consuming > ndim {
            return Err(Error::index(
                OP,
                format!(
                    "too many indices for a tensor of shape {}: {consuming} dims indexed but the tensor has {ndim}",
                    fmt_shape(self.shape())
                ),
            ));
        }
        // composed of select/slice/unsqueeze, so the result is a view and differentiable
        let mut t = self.clone();
        let mut d = 0usize; // dim of `self` being indexed
        let mut td = 0isize; // the matching dim of `t`
        for item in items {
            match item {
                TensorIndex::Select(i) => {
                    let size = l.shape()[d];
                    let j = if i < 0 {
                        i.checked_add(size as isize)
                    } else {
                        Some(i)
                    };
                    let Some(j) = j.filter(|&j| j >= 0 && (j as usize) < size) else {
                        let shape = fmt_shape(self.shape());
                        let msg = format!(
                            "index {i} is out of range for dim {d} of size {size} (shape {shape})"
                        );
                        return Err(Error::index(OP, msg));
                    };
                    t = t.try_select(td, j)?;
                    d += 1;
                }
                TensorIndex::Slice { start, end, step } => {
                    if step <= 0 {
                        return Err(Error::index(
                            OP,
                            format!("slice step must be positive, got {step} (for dim {d})"),
                        ));
                    }
                    let size = l.shape()[d] as isize;
                    let s = clamp_bound(start, size, 0);
                    let e = clamp_bound(end, size, size).max(s);
                    t = t.try_slice(td, s as usize, e as usize, step as usize)?;
                    d += 1;
                    td += 1;
                }
                TensorIndex::NewAxis => {
                    t = t.try_unsqueeze(td)?;
                    td += 1;
                }
                TensorIndex::Ellipsis => {
                    let n = ndim - consuming;
                    d += n;
                    td += n as isize;
                }
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::TensorIndex;
    use crate::{DType, Tensor};

    /// `[2, 3, 4]` holding 0..24 in `dt`.
    fn grid(dt: DType) -> Tensor {
        Tensor::arange(0.0, 24.0, 1.0, dt).view([2, 3, 4])
    }

    #[test]
    fn integer_types_and_negative_select() {
        let t = grid(DType::F32);
        let want = t.select(1, 2).to_vec::<f32>();
        for v in [
            t.i((.., 2usize)),
            t.i((.., 2isize)),
            t.i((.., 2i64)),
            t.i((.., 2i32)),
            t.i((.., -1)),
            t.i(s![.., -1]),
        ] {
            assert_eq!(v.shape(), &[2, 4]);
            assert_eq!(v.to_vec::<f32>(), want);
            assert!(v.shares_storage(&t));
        }
        assert_eq!(t.i((1, 2, 3)).item::<f32>(), 23.0);
        assert_eq!(t.i((-2, -3, -4)).item::<f32>(), 0.0);
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)] // Python's t[6:2] is empty, not an error
    fn ranges_follow_python() {
        let t = Tensor::arange(0.0, 10.0, 1.0, DType::I64);
        let v = |x: Tensor| x.to_vec::<i64>();
        assert_eq!(v(t.i(2..5)), vec![2, 3, 4]);
        assert_eq!(v(t.i(7..)), vec![7, 8, 9]);
        assert_eq!(v(t.i(..3)), vec![0, 1, 2]);
        assert_eq!(v(t.i(..-7)), vec![0, 1, 2]);
        assert_eq!(v(t.i(-3..)), vec![7, 8, 9]);
        assert_eq!(v(t.i(-3..-1)), vec![7, 8]);
        assert_eq!(v(t.i(2..=4)), vec![2, 3, 4]);
        assert_eq!(v(t.i(-2..=-1)), vec![8, 9]);
        assert_eq!(v(t.i(..=-2)), vec![0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(v(t.i(..)), v(t.clone()));
        // clamped like Python
        assert_eq!(v(t.i(5..100)), vec![5, 6, 7, 8, 9]);
        assert_eq!(v(t.i(-100..2)), vec![0, 1]);
        assert_eq!(t.i(6..2).shape(), &[0]);
        assert_eq!(t.i(10..).shape(), &[0]);
        // steps
        assert_eq!(v(t.i(s![1..8;3])), vec![1, 4, 7]);
        assert_eq!(v(t.i(s![..;4])), vec![0, 4, 8]);
        assert_eq!(v(t.i(s![-4..;2])), vec![6, 8]);
        assert_eq!(v(t.i(s![1..=7;3])), vec![1, 4, 7]);
        assert_eq!(v(t.i(TensorIndex::slice(..=-1, 5))), vec![0, 5]);
        assert_eq!(v(t.i(s![..;3]).i(s![1..;2])), vec![3, 9]);
    }

    #[test]
    fn ellipsis_and_new_axis() {
        let t = grid(DType::F64);
        assert_eq!(
            t.i(s![..., 1]).to_vec::<f64>(),
            t.select(2, 1).to_vec::<f64>()
        );
        assert_eq!(t.i(s![1, ...]).shape(), &[3, 4]);
        assert_eq!(t.i(s![1, ..., 2]).to_vec::<f64>(), vec![14., 18., 22.]);
        assert_eq!(t.i(s![0, 1, ..., 2]).item::<f64>(), 6.0);
        assert_eq!(t.i(s![...]).shape(), &[2, 3, 4]);
        assert_eq!(t.i(s![NewAxis]).shape(), &[1, 2, 3, 4]);
        assert_eq!(t.i(s![.., NewAxis, 1..]).shape(), &[2, 1, 2, 4]);
        assert_eq!(t.i(s![..., NewAxis]).shape(), &[2, 3, 4, 1]);
        let n = t.i(s![0, NewAxis, ..., NewAxis]);
        assert_eq!(n.shape(), &[1, 3, 4, 1]);
        assert_eq!(n.to_vec::<f64>(), t.select(0, 0).to_vec::<f64>());
        // a new axis keeps a contiguous tensor viewable
        assert!(t.i(s![.., NewAxis]).is_contiguous());
        assert_eq!(
            t.i((TensorIndex::Ellipsis, TensorIndex::NewAxis, 0))
                .shape(),
            &[2, 3, 1]
        );
        assert_eq!(
            Tensor::scalar(2i64).i(s![NewAxis, NewAxis]).shape(),
            &[1, 1]
        );
        assert_eq!(Tensor::scalar(2i64).i(s![]).item::<i64>(), 2);
    }

    #[test]
    fn on_permuted_sliced_expanded_views() {
        for dt in [DType::F32, DType::F16, DType::BF16, DType::I64, DType::F64] {
            let p = grid(dt).permute([2, 0, 1]); // [4, 2, 3]
            let v = p.i(s![1..;2, -1, ..2]);
            assert_eq!(v.shape(), &[2, 2]);
            assert_eq!(v.to_f64_vec(), vec![13., 17., 15., 19.]);
            assert!(v.shares_storage(&p));
            let sl = grid(dt).narrow(2, 1, 3).i(s![.., 1..;2, -2]); // [2,1]
            assert_eq!(sl.to_f64_vec(), vec![6., 18.]);
            let e = Tensor::arange(0.0, 3.0, 1.0, dt)
                .unsqueeze(0)
                .expand([5, 3]);
            let ev = e.i(s![1..4;2, 1..]);
            assert_eq!(ev.shape(), &[2, 2]);
            assert_eq!(ev.to_f64_vec(), vec![1., 2., 1., 2.]);
        }
        let b = Tensor::from_vec(vec![true, false, true, false], [2, 2]).t();
        assert_eq!(b.i((.., 1)).to_vec::<bool>(), vec![true, false]);
    }

    #[test]
    fn writes_through_the_view() {
        let t = Tensor::zeros([3, 4], DType::F32);
        t.i(s![1.., ..;2]).fill_(1.0);
        assert_eq!(
            t.to_vec::<f32>(),
            vec![0., 0., 0., 0., 1., 0., 1., 0., 1., 0., 1., 0.]
        );
    }

    #[test]
    fn errors_name_dim_and_size() {
        let t = grid(DType::F32);
        let e = t.try_i((0, 3)).unwrap_err().to_string();
        assert_eq!(
            e,
            "i: index 3 is out of range for dim 1 of size 3 (shape [2, 3, 4])"
        );
        let e = t.try_i(s![.., .., -5]).unwrap_err().to_string();
        assert!(
            e.contains("index -5 is out of range for dim 2 of size 4"),
            "{e}"
        );
        let e = t.try_i((0, 0, 0, 0)).unwrap_err().to_string();
        assert!(
            e.contains("too many indices") && e.contains("[2, 3, 4]"),
            "{e}"
        );
        assert!(t.try_i(s![..., 0, ...]).is_err());
        assert!(t.try_i(s![..;0]).is_err());
        assert!(t.try_i(s![..;-1]).is_err());
        assert!(t.try_i(usize::MAX).is_err());
        assert!(t.try_i(i64::MIN).is_err());
        assert_eq!(t.i(0usize..usize::MAX).shape(), &[2, 3, 4]);
    }

    #[test]
    #[should_panic(expected = "i: index 2 is out of range for dim 0 of size 2")]
    fn select_out_of_range_panics() {
        grid(DType::F32).i(2);
    }

    #[test]
    fn index_lists() {
        let t = grid(DType::F32);
        let items = vec![TensorIndex::Select(1), TensorIndex::slice(1..3, 1)];
        assert_eq!(t.i(items.as_slice()).shape(), &[2, 4]);
        assert_eq!(t.i(items).shape(), &[2, 4]);
        assert_eq!(t.i((0, 0, 1..2, TensorIndex::NewAxis)).shape(), &[1, 1]);
        assert_eq!(
            t.i((
                ..,
                ..,
                ..,
                TensorIndex::NewAxis,
                TensorIndex::NewAxis,
                TensorIndex::NewAxis
            ))
            .shape(),
            &[2, 3, 4, 1, 1, 1]
        );
    }
}
