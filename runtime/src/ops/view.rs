//! Views: ops that make a new layout over the same storage (and `reshape`, which copies
//! only when no view exists).

use crate::autograd::{no_grad, record, record_with_view, ViewGrad};
use crate::error::{or_panic, Error, Result};
use crate::layout::{fmt_shape, infer_shape, normalize_dim, Dims, Layout};
use crate::ops::elementwise::sum_to;
use crate::tensor::Tensor;
use smallvec::SmallVec;

/// A shape that may contain one `-1` to be inferred: `[2, -1]`, `vec![4, 3]`, `&[6]`.
pub trait IntoShapeSpec {
    /// The dims, `-1` for an inferred one.
    fn to_spec(&self) -> SmallVec<[isize; 6]>;
}
macro_rules! shape_spec {
    ($($t:ty),*) => {$(
        impl<const N: usize> IntoShapeSpec for [$t; N] {
            fn to_spec(&self) -> SmallVec<[isize; 6]> { self.iter().map(|&d| d as isize).collect() }
        }
        impl IntoShapeSpec for &[$t] {
            fn to_spec(&self) -> SmallVec<[isize; 6]> { self.iter().map(|&d| d as isize).collect() }
        }
        impl IntoShapeSpec for Vec<$t> {
            fn to_spec(&self) -> SmallVec<[isize; 6]> { self.iter().map(|&d| d as isize).collect() }
        }
    )*};
}
shape_spec!(usize, isize, i32, i64);

/// The gradient of a slice (`start`, `step` along `dim`) of a tensor of `in_shape`:
/// zeros with `g` written into the sliced positions. Its own backward slices again, so
/// slicing is differentiable to any order.
#[track_caller]
pub(crate) fn slice_backward(
    g: &Tensor,
    in_shape: &[usize],
    dim: usize,
    start: usize,
    step: usize,
) -> Tensor {
    let len = g.shape()[dim];
    let end = if len == 0 {
        start
    } else {
        start + (len - 1) * step + 1
    };
    let out = no_grad(|| {
        let z = Tensor::zeros(in_shape, (g.dtype(), g.device()));
        let dst = or_panic(z.try_slice(dim as isize, start, end, step));
        dst.copy_(g);
        z
    });
    record(out, "slice_backward", &[g], &[], move |gg| {
        vec![Some(or_panic(gg.try_slice(dim as isize, start, end, step)))]
    })
}

impl Tensor {
    /// A view with another layout whose gradient is `backward(g)`.
    #[track_caller]
    fn view_op(
        &self,
        name: &'static str,
        layout: Layout,
        backward: impl Fn(&Tensor) -> Tensor + Send + Sync + 'static,
    ) -> Tensor {
        let input = self.layout();
        // a view of part of a contiguous input (narrow, slice, select) that does not repeat
        // elements: the engine puts its gradient into the input's through the layout
        // (autograd::node::ViewGrad): one cat for views that tile the input, one buffer
        // otherwise. A view of every element (reshape, permute, transpose, squeeze) keeps
        // its own backward: a re-view of the gradient, which moves nothing (through the
        // layout it would cost a zero-filled buffer and a copy).
        let view = (input.is_contiguous()
            && self.requires_grad()
            && layout.shape().iter().product::<usize>() < self.numel()
            && !layout
                .shape()
                .iter()
                .zip(layout.strides())
                .any(|(&n, &s)| n > 1 && s == 0))
        .then(|| ViewGrad {
            layout: Layout {
                shape: layout.shape.clone(),
                strides: layout.strides.clone(),
                offset: layout.offset - input.offset,
            },
            input_shape: self.shape().to_vec(),
        });
        let out = self.with_layout(layout);
        debug_assert!(crate::autograd::DIFFERENTIABLE_OPS.contains(&name));
        record_with_view(out, name, &[self], &[], view, move |g| {
            vec![Some(backward(g))]
        })
    }

    #[track_caller]
    fn reshape_view(&self, name: &'static str, shape: Dims, strides: Dims) -> Tensor {
        let l = Layout {
            shape,
            strides,
            offset: self.layout().offset,
        };
        let in_shape = self.shape().to_vec();
        self.view_op(name, l, move |g| g.reshape(in_shape.as_slice()))
    }

    /// The same data seen with another shape, without copying; `-1` infers one dim.
    /// Panics when the strides do not allow a view (use [`Tensor::reshape`] then).
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::arange(0.0, 12.0, 1.0, ()).view([3, -1]);
    /// assert_eq!(t.shape(), &[3, 4]);
    /// ```
    #[track_caller]
    pub fn view(&self, shape: impl IntoShapeSpec) -> Tensor {
        or_panic(self.try_view(shape))
    }

    /// Fallible [`Tensor::view`].
    #[track_caller]
    pub fn try_view(&self, shape: impl IntoShapeSpec) -> Result<Tensor> {
        let shape = infer_shape("view", &shape.to_spec(), self.numel())?;
        match self.layout().view_strides(&shape) {
            Some(strides) => Ok(self.reshape_view("view", shape, strides)),
            None => Err(Error::shape(
                "view",
                format!(
                    "cannot view a tensor of shape {} with strides {:?} as {}: the layout is not compatible (use reshape, which copies)",
                    fmt_shape(self.shape()),
                    self.strides(),
                    fmt_shape(&shape)
                ),
            )),
        }
    }

    /// Like [`Tensor::view`], but copies when no view exists.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::arange(0.0, 6.0, 1.0, ()).view([2, 3]).t().reshape([-1]);
    /// assert_eq!(t.to_vec::<f32>(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    /// ```
    #[track_caller]
    pub fn reshape(&self, shape: impl IntoShapeSpec) -> Tensor {
        or_panic(self.try_reshape(shape))
    }

    /// Fallible [`Tensor::reshape`].
    #[track_caller]
    pub fn try_reshape(&self, shape: impl IntoShapeSpec) -> Result<Tensor> {
        let spec = shape.to_spec();
        let shape = infer_shape("reshape", &spec, self.numel())?;
        match self.layout().view_strides(&shape) {
            Some(strides) => Ok(self.reshape_view("reshape", shape, strides)),
            None => self.try_contiguous()?.try_view(shape.as_slice()),
        }
    }

    /// Reorders the dims (negative indices allowed): dim `i` of the result is dim
    /// `dims[i]` of `self`.
    #[track_caller]
    pub fn permute(&self, dims: impl AsRef<[isize]>) -> Tensor {
        or_panic(self.try_permute(dims.as_ref()))
    }

    /// Fallible [`Tensor::permute`].
    #[track_caller]
    pub fn try_permute(&self, dims: &[isize]) -> Result<Tensor> {
        let perm = dims
            .iter()
            .map(|&d| normalize_dim("permute", d, self.ndim()))
            .collect::<Result<Vec<_>>>()?;
        let mut inv = vec![0isize; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i as isize;
        }
        let l = self.layout().permute(&perm)?;
        Ok(self.view_op("permute", l, move |g| g.permute(&inv)))
    }

    /// Swaps two dims.
    #[track_caller]
    pub fn transpose(&self, d0: isize, d1: isize) -> Tensor {
        or_panic(self.try_transpose(d0, d1))
    }

    /// Fallible [`Tensor::transpose`].
    #[track_caller]
    pub fn try_transpose(&self, d0: isize, d1: isize) -> Result<Tensor> {
        let n = self.ndim();
        let (a, b) = (
            normalize_dim("transpose", d0, n)?,
            normalize_dim("transpose", d1, n)?,
        );
        let mut perm: Vec<usize> = (0..n).collect();
        perm.swap(a, b);
        let l = self.layout().permute(&perm)?;
        Ok(self.view_op("transpose", l, move |g| g.transpose(a as isize, b as isize)))
    }

    /// The transpose of a matrix (a 0-d or 1-d tensor is returned as is).
    #[track_caller]
    pub fn t(&self) -> Tensor {
        match self.ndim() {
            0 | 1 => self.clone(),
            2 => self.transpose(0, 1),
            n => or_panic(Err(Error::shape(
                "t",
                format!(
                    "expects a tensor with <= 2 dims, got {n} (shape {})",
                    fmt_shape(self.shape())
                ),
            ))),
        }
    }

    /// Inserts a dim of size 1 at `dim` (in `-(ndim+1)..=ndim`).
    #[track_caller]
    pub fn unsqueeze(&self, dim: isize) -> Tensor {
        or_panic(self.try_unsqueeze(dim))
    }

    /// Fallible [`Tensor::unsqueeze`].
    #[track_caller]
    pub fn try_unsqueeze(&self, dim: isize) -> Result<Tensor> {
        let d = normalize_dim("unsqueeze", dim, self.ndim() + 1)?;
        let mut l = self.layout().clone();
        let stride = if d < l.ndim() {
            l.strides[d] * l.shape[d]
        } else {
            1
        };
        l.shape.insert(d, 1);
        l.strides.insert(d, stride);
        Ok(self.view_op("unsqueeze", l, move |g| g.squeeze_dim(d as isize)))
    }

    /// Removes every dim of size 1.
    pub fn squeeze(&self) -> Tensor {
        let l = self.layout();
        let keep: Vec<usize> = (0..l.ndim()).filter(|&d| l.shape[d] != 1).collect();
        let nl = Layout {
            shape: keep.iter().map(|&d| l.shape[d]).collect(),
            strides: keep.iter().map(|&d| l.strides[d]).collect(),
            offset: l.offset,
        };
        let shape = self.shape().to_vec();
        self.view_op("squeeze", nl, move |g| g.reshape(shape.as_slice()))
    }

    /// Removes dim `dim` if it has size 1 (otherwise returns the tensor unchanged, like
    /// PyTorch).
    #[track_caller]
    pub fn squeeze_dim(&self, dim: isize) -> Tensor {
        let d = or_panic(normalize_dim("squeeze_dim", dim, self.ndim()));
        if self.shape()[d] != 1 {
            return self.clone();
        }
        let mut l = self.layout().clone();
        l.shape.remove(d);
        l.strides.remove(d);
        let shape = self.shape().to_vec();
        self.view_op("squeeze", l, move |g| g.reshape(shape.as_slice()))
    }

    /// Broadcasts to `shape` without copying (stride 0 on expanded dims); `-1` keeps a dim.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::from_vec(vec![1.0f32, 2.0], [2, 1]).expand([2, 3]);
    /// assert_eq!(t.to_vec::<f32>(), vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
    /// ```
    #[track_caller]
    pub fn expand(&self, shape: impl IntoShapeSpec) -> Tensor {
        or_panic(self.try_expand(shape))
    }

    /// Fallible [`Tensor::expand`].
    #[track_caller]
    pub fn try_expand(&self, shape: impl IntoShapeSpec) -> Result<Tensor> {
        let spec = shape.to_spec();
        if spec.len() < self.ndim() {
            return Err(Error::shape(
                "expand",
                format!(
                    "cannot expand shape {} to {spec:?} with fewer dims",
                    fmt_shape(self.shape())
                ),
            ));
        }
        let lead = spec.len() - self.ndim();
        let mut target: Dims = SmallVec::with_capacity(spec.len());
        for (i, &d) in spec.iter().enumerate() {
            if d == -1 {
                if i < lead {
                    return Err(Error::shape(
                        "expand",
                        "-1 is not allowed in a new leading dim",
                    ));
                }
                target.push(self.shape()[i - lead]);
            } else if d < 0 {
                return Err(Error::shape("expand", format!("invalid size {d}")));
            } else {
                target.push(d as usize);
            }
        }
        self.try_broadcast_to(&target)
    }

    /// Broadcasts to `shape` under NumPy rules, without copying.
    #[track_caller]
    pub fn broadcast_to(&self, shape: impl AsRef<[usize]>) -> Tensor {
        or_panic(self.try_broadcast_to(shape.as_ref()))
    }

    /// Fallible [`Tensor::broadcast_to`].
    #[track_caller]
    pub fn try_broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let l = self.layout().broadcast_to("broadcast_to", shape)?;
        let in_shape = self.shape().to_vec();
        Ok(self.view_op("expand", l, move |g| sum_to(g, &in_shape)))
    }

    /// The elements `start..start + len` along `dim`, as a view.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::arange(0.0, 6.0, 1.0, ()).narrow(0, 2, 3);
    /// assert_eq!(t.to_vec::<f32>(), vec![2.0, 3.0, 4.0]);
    /// ```
    #[track_caller]
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Tensor {
        or_panic(self.try_narrow(dim, start, len))
    }

    /// Fallible [`Tensor::narrow`].
    #[track_caller]
    pub fn try_narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        let d = normalize_dim("narrow", dim, self.ndim())?;
        let size = self.shape()[d];
        if start + len > size {
            return Err(Error::index(
                "narrow",
                format!(
                    "range {start}..{} is out of bounds for dim {d} of size {size} (shape {})",
                    start + len,
                    fmt_shape(self.shape())
                ),
            ));
        }
        let l = self.layout().slice(d, start, len, 1);
        let in_shape = self.shape().to_vec();
        Ok(self.view_op("narrow", l, move |g| {
            slice_backward(g, &in_shape, d, start, 1)
        }))
    }

    /// Every `step`-th element of `start..end` along `dim`, as a view.
    #[track_caller]
    pub fn try_slice(&self, dim: isize, start: usize, end: usize, step: usize) -> Result<Tensor> {
        let d = normalize_dim("slice", dim, self.ndim())?;
        let size = self.shape()[d];
        if step == 0 {
            return Err(Error::index("slice", "step must be positive"));
        }
        let end = end.min(size);
        let start = start.min(end);
        let len = (end - start).div_ceil(step);
        let l = self.layout().slice(d, start, len, step);
        let in_shape = self.shape().to_vec();
        Ok(self.view_op("slice", l, move |g| {
            slice_backward(g, &in_shape, d, start, step)
        }))
    }

    /// The slice at `index` along `dim`, with that dim removed (negative index counts from
    /// the end).
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::arange(0.0, 6.0, 1.0, ()).view([2, 3]);
    /// assert_eq!(t.select(1, -1).to_vec::<f32>(), vec![2.0, 5.0]);
    /// ```
    #[track_caller]
    pub fn select(&self, dim: isize, index: isize) -> Tensor {
        or_panic(self.try_select(dim, index))
    }

    /// Fallible [`Tensor::select`].
    #[track_caller]
    pub fn try_select(&self, dim: isize, index: isize) -> Result<Tensor> {
        let d = normalize_dim("select", dim, self.ndim())?;
        let size = self.shape()[d] as isize;
        let i = if index < 0 { index + size } else { index };
        if i < 0 || i >= size {
            return Err(Error::index(
                "select",
                format!(
                    "index {index} is out of range for dim {d} of size {size} (shape {})",
                    fmt_shape(self.shape())
                ),
            ));
        }
        let mut l = self.layout().slice(d, i as usize, 1, 1);
        l.shape.remove(d);
        l.strides.remove(d);
        let in_shape = self.shape().to_vec();
        Ok(self.view_op("select", l, move |g| {
            slice_backward(&g.unsqueeze(d as isize), &in_shape, d, i as usize, 1)
        }))
    }

    /// Merges dims `start..=end` into one (a view when possible, else a copy).
    #[track_caller]
    pub fn flatten(&self, start: isize, end: isize) -> Tensor {
        or_panic(self.try_flatten(start, end))
    }

    /// Fallible [`Tensor::flatten`].
    #[track_caller]
    pub fn try_flatten(&self, start: isize, end: isize) -> Result<Tensor> {
        if self.ndim() == 0 {
            return self.try_reshape([1usize]);
        }
        let s = normalize_dim("flatten", start, self.ndim())?;
        let e = normalize_dim("flatten", end, self.ndim())?;
        if s > e {
            return Err(Error::shape(
                "flatten",
                format!("start dim {s} is after end dim {e}"),
            ));
        }
        let shape = self.shape();
        let mut new: Vec<usize> = shape[..s].to_vec();
        new.push(shape[s..=e].iter().product());
        new.extend_from_slice(&shape[e + 1..]);
        self.try_reshape(new)
    }

    /// Splits along `dim` into pieces of `size` (the last may be smaller), as views.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let parts = Tensor::arange(0.0, 5.0, 1.0, ()).split(2, 0);
    /// assert_eq!(parts.iter().map(|p| p.numel()).collect::<Vec<_>>(), vec![2, 2, 1]);
    /// ```
    #[track_caller]
    pub fn split(&self, size: usize, dim: isize) -> Vec<Tensor> {
        or_panic(self.try_split(size, dim))
    }

    /// Fallible [`Tensor::split`].
    #[track_caller]
    pub fn try_split(&self, size: usize, dim: isize) -> Result<Vec<Tensor>> {
        let d = normalize_dim("split", dim, self.ndim())?;
        if size == 0 {
            return Err(Error::shape("split", "split size must be positive"));
        }
        let n = self.shape()[d];
        (0..n.div_ceil(size).max(1))
            .map(|i| {
                let start = (i * size).min(n);
                self.try_narrow(d as isize, start, size.min(n - start))
            })
            .collect()
    }

    /// Splits along `dim` into pieces with the given sizes (which must sum to the dim).
    #[track_caller]
    pub fn split_sizes(&self, sizes: &[usize], dim: isize) -> Vec<Tensor> {
        or_panic(self.try_split_sizes(sizes, dim))
    }

    /// Fallible [`Tensor::split_sizes`].
    #[track_caller]
    pub fn try_split_sizes(&self, sizes: &[usize], dim: isize) -> Result<Vec<Tensor>> {
        let d = normalize_dim("split_sizes", dim, self.ndim())?;
        let total: usize = sizes.iter().sum();
        if total != self.shape()[d] {
            return Err(Error::shape(
                "split_sizes",
                format!(
                    "sizes {sizes:?} sum to {total} but dim {d} has size {} (shape {})",
                    self.shape()[d],
                    fmt_shape(self.shape())
                ),
            ));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&s| {
                let t = self.try_narrow(d as isize, start, s);
                start += s;
                t
            })
            .collect()
    }

    /// Splits along `dim` into `chunks` pieces of equal size (the last may be smaller),
    /// like `torch.chunk`.
    #[track_caller]
    pub fn chunk(&self, chunks: usize, dim: isize) -> Vec<Tensor> {
        or_panic(self.try_chunk(chunks, dim))
    }

    /// Fallible [`Tensor::chunk`].
    #[track_caller]
    pub fn try_chunk(&self, chunks: usize, dim: isize) -> Result<Vec<Tensor>> {
        if chunks == 0 {
            return Err(Error::shape("chunk", "number of chunks must be positive"));
        }
        let d = normalize_dim("chunk", dim, self.ndim())?;
        let size = self.shape()[d].div_ceil(chunks).max(1);
        self.try_split(size, d as isize)
    }
}

#[cfg(test)]
mod tests {
    use crate::Tensor;

    fn grid() -> Tensor {
        Tensor::arange(0.0, 24.0, 1.0, ()).view([2, 3, 4])
    }

    #[test]
    fn views_share_storage() {
        let t = grid();
        for v in [
            t.permute([2, 0, 1]),
            t.transpose(0, 2),
            t.narrow(1, 1, 2),
            t.select(0, 1),
            t.unsqueeze(1),
            t.view([6, 4]),
            t.unsqueeze(0).expand([3, 2, 3, 4]),
        ] {
            assert!(v.shares_storage(&t));
        }
        assert!(!t.permute([1, 0, 2]).reshape([-1]).shares_storage(&t));
    }

    /// The backward of a view of every element re-views the gradient (no buffer, no copy);
    /// the gradients of a split's parts are joined into one tensor of the input's shape.
    #[test]
    fn whole_views_pass_the_gradient_through_and_partial_views_join_into_one_tensor() {
        let leaf = grid().requires_grad_(true);
        let x = &leaf * 1.0; // a non-leaf, contiguous
        type View = fn(&Tensor) -> Tensor;
        let views: [(&str, View); 3] = [
            ("transpose", |x| x.transpose(0, 2)),
            ("permute", |x| x.permute([1, 2, 0])),
            ("view", |x| x.view([6, 4])),
        ];
        for (what, f) in views {
            let y = f(&x);
            let gy = Tensor::arange(0.0, 24.0, 1.0, ()).view(y.shape());
            let (xs, gys) = (std::slice::from_ref(&x), std::slice::from_ref(&gy));
            let g = crate::autograd::grad(&[y], xs, Some(gys), true, false).unwrap()[0]
                .clone()
                .unwrap();
            assert!(g.shares_storage(&gy), "{what}: the gradient was copied");
            assert_eq!(f(&g).to_vec::<f32>(), gy.to_vec::<f32>(), "{what}");
        }
        // the three thirds of a split: one tensor, each third in its place
        let parts = x.split(1, 1);
        let gs: Vec<Tensor> = (0..3)
            .map(|i| Tensor::full([2, 1, 4], i as f64, ()))
            .collect();
        let xs = std::slice::from_ref(&x);
        let g = crate::autograd::grad(&parts, xs, Some(&gs), true, false).unwrap()[0]
            .clone()
            .unwrap();
        let want: Vec<f32> = (0..24).map(|e| ((e / 4) % 3) as f32).collect();
        assert_eq!(g.to_vec::<f32>(), want);
    }

    #[test]
    fn view_of_incompatible_layout_errors() {
        let t = grid().permute([0, 2, 1]);
        let e = t.try_view([8, 3]).unwrap_err().to_string();
        assert!(
            e.contains("view") && e.contains("[2, 4, 3]") && e.contains("reshape"),
            "{e}"
        );
        assert_eq!(t.reshape([8, 3]).shape(), &[8, 3]);
    }

    #[test]
    fn squeeze_unsqueeze_flatten() {
        let t = grid().unsqueeze(-1).unsqueeze(0);
        assert_eq!(t.shape(), &[1, 2, 3, 4, 1]);
        assert_eq!(t.squeeze().shape(), &[2, 3, 4]);
        assert_eq!(t.squeeze_dim(0).shape(), &[2, 3, 4, 1]);
        assert_eq!(t.squeeze_dim(1).shape(), &[1, 2, 3, 4, 1]);
        assert_eq!(grid().flatten(1, -1).shape(), &[2, 12]);
        assert_eq!(
            grid().permute([2, 1, 0]).flatten(0, 1).to_vec::<f32>()[..4],
            [0.0, 12.0, 4.0, 16.0]
        );
    }

    #[test]
    fn split_and_chunk() {
        let t = grid();
        let parts = t.chunk(2, -1);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].to_vec::<f32>()[..2], [2.0, 3.0]);
        let s = t.split_sizes(&[1, 2], 1);
        assert_eq!(s[1].shape(), &[2, 2, 4]);
        assert!(t.try_split_sizes(&[1, 1], 1).is_err());
        assert_eq!(t.chunk(5, 1).len(), 3);
    }

    #[test]
    #[should_panic(expected = "select: index 3 is out of range for dim 1 of size 3")]
    fn select_out_of_range_panics_with_op_and_shape() {
        grid().select(1, 3);
    }

    #[test]
    fn expand_and_select() {
        let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3]);
        assert_eq!(
            t.expand([2, -1]).to_vec::<f32>(),
            vec![1., 2., 3., 1., 2., 3.]
        );
        assert!(t.try_expand([2usize, 4]).is_err());
        assert_eq!(
            grid().select(2, -1).to_vec::<f32>(),
            vec![3., 7., 11., 15., 19., 23.]
        );
    }
}
