//! Indexing by tensors of indices: `index_select`, `gather`, `scatter_add`,
//! `masked_select`, and joining tensors with `cat` and `stack`.
//!
//! Indices are `i64` tensors and must lie in `0..size`: negative indices are an error
//! here (unlike [`Tensor::select`] and [`Tensor::i`]), as an index tensor usually comes
//! from data, where a negative value is a bug rather than "from the end".

use crate::autograd::record;
use crate::cpu::parallel;
use crate::cpu::strided::{for_each_offsets, gather, map_offsets2};
use crate::dispatch;
use crate::dtype::DType;
use crate::error::{or_panic, Error, Result};
use crate::layout::{broadcast_shapes, contiguous_strides, fmt_shape, normalize_dim, Dims, Layout};
use crate::ops::elementwise::sum_to;
use crate::storage::BufferElement;
use crate::tensor::Tensor;
use rayon::prelude::*;

impl AsRef<Tensor> for Tensor {
    /// A `Tensor` is trivially a reference to itself, so that functions taking
    /// `&[impl AsRef<Tensor>]` (like [`Tensor::cat`]) accept both `&[Tensor]` and
    /// `&[&Tensor]`.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::zeros([2], ());
    /// let r: &Tensor = t.as_ref();
    /// assert!(r.shares_storage(&t));
    /// ```
    fn as_ref(&self) -> &Tensor {
        self
    }
}

/// Storage offsets of every element of `shape` under `strides`, starting at `base`, in
/// row-major order.
fn offsets(shape: &[usize], strides: &[usize], base: usize) -> Vec<usize> {
    let n = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    for_each_offsets(shape, [strides], [base], 0..n, |_, [o]| out.push(o));
    out
}

fn check_index_tensor(op: &'static str, index: &Tensor) -> Result<()> {
    if index.dtype() != DType::I64 {
        return Err(Error::dtype(
            op,
            format!(
                "index must be an i64 tensor, got {} (convert with to_dtype(DType::I64))",
                index.dtype()
            ),
        ));
    }
    Ok(())
}

fn check_same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.device() != b.device() {
        return Err(Error::devices(op, a.device(), b.device()));
    }
    Ok(())
}

/// The checks shared by the ops that add `src` into a copy of `t` at `index`
/// (`index_add`, `scatter_add`): an `i64` index, one device, one dtype.
fn check_add_operands(op: &'static str, t: &Tensor, index: &Tensor, src: &Tensor) -> Result<()> {
    check_index_tensor(op, index)?;
    check_same_device(op, t, index)?;
    check_same_device(op, t, src)?;
    if src.dtype() != t.dtype() {
        return Err(Error::dtype(
            op,
            format!(
                "src has dtype {} but the tensor has dtype {}; convert with to_dtype first",
                src.dtype(),
                t.dtype()
            ),
        ));
    }
    Ok(())
}

fn out_of_range(op: &'static str, value: i64, dim: usize, size: usize, shape: &[usize]) -> Error {
    let what = if value < 0 { "negative index" } else { "index" };
    Error::index(
        op,
        format!(
            "{what} {value} is out of range for dim {dim} of size {size} (shape {}); indices must lie in 0..{size}",
            fmt_shape(shape)
        ),
    )
}

/// A copy of `index` that does not share storage with `other` (so that reading both
/// never takes the same storage lock twice).
fn unaliased(index: &Tensor, other: &Tensor) -> Result<Tensor> {
    if index.shares_storage(other) {
        index.copy_raw()
    } else {
        Ok(index.clone())
    }
}

/// The error for an index outside `0..size` that a CUDA kernel flagged: the index is
/// copied to the host to name the first bad value, as the CPU's error does.
#[cfg(feature = "cuda")]
fn cuda_bad_index(
    op: &'static str,
    index: &Tensor,
    dim: usize,
    size: usize,
    shape: &[usize],
) -> Error {
    let host = match index.host() {
        Ok(h) => h,
        Err(e) => return e,
    };
    match first_bad_index(op, &host, size) {
        Ok(Some(v)) => out_of_range(op, v, dim, size, shape),
        Ok(None) => Error::index(op, "a CUDA kernel flagged an index out of range"),
        Err(e) => e,
    }
}

/// The first element of the `i64` tensor `index` outside `0..size`, if any.
fn first_bad_index(op: &'static str, index: &Tensor, size: usize) -> Result<Option<i64>> {
    index.with_slice::<i64, _>(op, |s, l| {
        let mut bad = None;
        for_each_offsets(
            l.shape(),
            [l.strides()],
            [l.offset()],
            0..l.numel(),
            |_, [o]| {
                let v = s[o];
                if bad.is_none() && (v < 0 || v as u64 >= size as u64) {
                    bad = Some(v);
                }
            },
        );
        bad
    })
}

impl Tensor {
    /// The slices at `index` along `dim`, in that order (like `torch.index_select`):
    /// the result has the shape of `self` with dim `dim` replaced by `index.numel()`.
    ///
    /// `index` is a 1-D (or 0-d) `i64` tensor whose values lie in `0..size(dim)`;
    /// repeats are allowed. Panics on a negative or out-of-range index; see
    /// [`Tensor::try_index_select`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let emb = Tensor::arange(0.0, 6.0, 1.0, ()).view([3, 2]);
    /// let rows = emb.index_select(0, &Tensor::from_vec(vec![2i64, 0, 2], [3]));
    /// assert_eq!(rows.to_vec::<f32>(), vec![4., 5., 0., 1., 4., 5.]);
    /// ```
    #[track_caller]
    pub fn index_select(&self, dim: isize, index: &Tensor) -> Tensor {
        or_panic(self.try_index_select(dim, index))
    }

    /// Fallible [`Tensor::index_select`]: an error names the op, the bad index, the dim's
    /// size and the shape.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::zeros([2, 3], ());
    /// let e = t.try_index_select(1, &Tensor::from_vec(vec![3i64], [1])).unwrap_err();
    /// assert!(e.to_string().contains("index 3 is out of range for dim 1 of size 3"));
    /// ```
    fn index_select_impl(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_select";
        check_index_tensor(OP, index)?;
        check_same_device(OP, self, index)?;
        if index.ndim() > 1 {
            return Err(Error::shape(
                OP,
                format!("index must be 1-D, got shape {}", fmt_shape(index.shape())),
            ));
        }
        let d = normalize_dim(OP, dim, self.ndim())?;
        let shape = self.shape();
        let size = shape[d];
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            return match crate::cuda::ops::index_select(self, d, index)? {
                Some(t) => Ok(t),
                None => Err(cuda_bad_index(OP, index, d, size, shape)),
            };
        }
        let idx: Vec<usize> = index
            .try_to_vec::<i64>()?
            .into_iter()
            .map(|i| {
                if i < 0 || i as u64 >= size as u64 {
                    Err(out_of_range(OP, i, d, size, shape))
                } else {
                    Ok(i as usize)
                }
            })
            .collect::<Result<_>>()?;
        let mut out_shape: Dims = shape.into();
        out_shape[d] = idx.len();
        let l = self.layout();
        let outer = offsets(&shape[..d], &l.strides()[..d], l.offset());
        let inner = offsets(&shape[d + 1..], &l.strides()[d + 1..], 0);
        let sd = l.strides()[d];
        let (k, row) = (idx.len(), inner.len());
        let n = outer.len() * k * row;
        let inner_contiguous = inner.iter().enumerate().all(|(i, &o)| i == o);
        let dt = self.dtype();
        Ok(dispatch!(all dt, T => {
            let out = self.with_slice::<T, _>(OP, |s, _| {
                let mut out = vec![T::default(); n];
                if n == 0 {
                    return out;
                }
                let fill_row = |r: usize, dst: &mut [T]| {
                    let b = outer[r / k] + idx[r % k] * sd;
                    if inner_contiguous {
                        dst.copy_from_slice(&s[b..b + row]);
                    } else {
                        for (x, &o) in dst.iter_mut().zip(&inner) {
                            *x = s[b + o];
                        }
                    }
                };
                if parallel::should_parallelize(n) {
                    let min_rows = (4096 / row).max(1);
                    parallel::install(|| {
                        out.par_chunks_mut(row)
                            .enumerate()
                            .with_min_len(min_rows)
                            .for_each(|(r, dst)| fill_row(r, dst))
                    });
                } else {
                    out.chunks_mut(row).enumerate().for_each(|(r, dst)| fill_row(r, dst));
                }
                out
            })?;
            Tensor::from_buffer(T::into_buffer(out), &out_shape)
        }))
    }

    /// `self` with the slices of `src` added at `index` along `dim` (like
    /// `torch.index_add`): `out[.., index[j], ..] = self[.., index[j], ..] + src[.., j, ..]`,
    /// repeated indices adding up. `index` is a 1-D `i64` tensor; `src` has `self`'s
    /// shape except `index.numel()` in `dim`, and `self`'s dtype. The backward of
    /// [`index_select`](Tensor::index_select) (an embedding's weight gradient) is one
    /// `index_add` into zeros. Panics on bad shapes or an index out of range; see
    /// [`Tensor::try_index_add`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::zeros([3, 2], ());
    /// let src = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [3, 2]);
    /// let idx = Tensor::from_vec(vec![2i64, 0, 2], [3]);
    /// let r = t.index_add(0, &idx, &src);
    /// assert_eq!(r.to_vec::<f32>(), vec![3.0, 4.0, 0.0, 0.0, 6.0, 8.0]);
    /// ```
    #[track_caller]
    pub fn index_add(&self, dim: isize, index: &Tensor, src: &Tensor) -> Tensor {
        or_panic(self.try_index_add(dim, index, src))
    }

    fn index_add_impl(&self, dim: isize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_add";
        check_add_operands(OP, self, index, src)?;
        if self.dtype() == DType::Bool {
            return Err(Error::dtype(OP, "not defined on bool tensors"));
        }
        if index.ndim() > 1 {
            return Err(Error::shape(
                OP,
                format!("index must be 1-D, got shape {}", fmt_shape(index.shape())),
            ));
        }
        let d = normalize_dim(OP, dim, self.ndim())?;
        let shape = self.shape();
        let n_idx = index.numel();
        let mut want: Dims = shape.into();
        want[d] = n_idx;
        if src.shape() != want.as_slice() {
            return Err(Error::shape(
                OP,
                format!(
                    "src must have shape {} (the tensor's {} with {n_idx} in dim {d}), got {}",
                    fmt_shape(&want),
                    fmt_shape(shape),
                    fmt_shape(src.shape())
                ),
            ));
        }
        let size = shape[d];
        let index = unaliased(&index.reshape([n_idx]), src)?;
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            return match crate::cuda::ops::index_add(self, d, &index, src)? {
                Some(t) => Ok(t),
                None => Err(cuda_bad_index(OP, &index, d, size, shape)),
            };
        }
        if let Some(v) = first_bad_index(OP, &index, size)? {
            return Err(out_of_range(OP, v, d, size, shape));
        }
        let idx = index.try_to_vec::<i64>()?;
        let outer: usize = shape[..d].iter().product();
        let inner: usize = shape[d + 1..].iter().product();
        let src = src.try_contiguous()?;
        let dt = self.dtype();
        dispatch!(num OP, dt, T => {
            let mut out = self.with_slice::<T, _>(OP, gather)?;
            src.with_slice::<T, _>(OP, |sv, _| {
                for o in 0..outer {
                    for (j, &k) in idx.iter().enumerate() {
                        let at = (o * size + k as usize) * inner;
                        let from = (o * n_idx + j) * inner;
                        for (y, &x) in out[at..at + inner].iter_mut().zip(&sv[from..from + inner]) {
                            *y += x;
                        }
                    }
                }
            })?;
            Tensor::from_buffer(T::into_buffer(out), shape)
        })
    }

    /// Gathers values along `dim` (like `torch.gather`):
    /// `out[i][j][k] = self[index[i][j][k]][j][k]` for `dim == 0`, and so on.
    ///
    /// `index` is an `i64` tensor with the same number of dims as `self`, with
    /// `index.size(d) <= self.size(d)` for every `d != dim`; the result has the shape of
    /// `index` and the dtype of `self`. Panics on a bad shape or an index outside
    /// `0..self.size(dim)`; see [`Tensor::try_gather`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::from_vec(vec![1i64, 2, 3, 4], [2, 2]);
    /// let g = t.gather(1, &Tensor::from_vec(vec![0i64, 0, 1, 0], [2, 2]));
    /// assert_eq!(g.to_vec::<i64>(), vec![1, 1, 4, 3]);
    /// ```
    #[track_caller]
    pub fn gather(&self, dim: isize, index: &Tensor) -> Tensor {
        or_panic(self.try_gather(dim, index))
    }

    /// Fallible [`Tensor::gather`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::zeros([2, 2], ());
    /// assert!(t.try_gather(0, &Tensor::from_vec(vec![-1i64], [1, 1])).is_err());
    /// ```
    fn gather_impl(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        const OP: &str = "gather";
        check_index_tensor(OP, index)?;
        check_same_device(OP, self, index)?;
        let d = normalize_dim(OP, dim, self.ndim().max(1))?;
        let ndim = self.ndim().max(1);
        if index.ndim().max(1) != ndim {
            return Err(Error::shape(
                OP,
                format!(
                    "index {} and input {} must have the same number of dims",
                    fmt_shape(index.shape()),
                    fmt_shape(self.shape())
                ),
            ));
        }
        let out_shape = index.shape().to_vec();
        // treat 0-d tensors as 1-d of one element, like PyTorch
        let src = if self.ndim() == 0 {
            self.reshape([1usize])
        } else {
            self.clone()
        };
        let index = unaliased(index, &src)?;
        let index = if index.ndim() == 0 {
            index.reshape([1usize])
        } else {
            index
        };
        for k in 0..ndim {
            if k != d && index.shape()[k] > src.shape()[k] {
                return Err(Error::shape(
                    OP,
                    format!(
                        "index {} is larger than input {} in dim {k} (only dim {d} may differ)",
                        fmt_shape(index.shape()),
                        fmt_shape(self.shape())
                    ),
                ));
            }
        }
        let size = src.shape()[d];
        #[cfg(feature = "cuda")]
        if src.is_cuda() {
            return match crate::cuda::ops::gather(&src, d, &index)? {
                Some(t) => Ok(t.with_layout(Layout::contiguous(&out_shape))),
                None => Err(cuda_bad_index(OP, &index, d, size, self.shape())),
            };
        }
        if let Some(v) = first_bad_index(OP, &index, size)? {
            return Err(out_of_range(OP, v, d, size, self.shape()));
        }
        let li = index.layout().clone();
        let mut src_strides: Dims = src.strides().into();
        let sd = src_strides[d];
        src_strides[d] = 0;
        let ls = Layout {
            shape: li.shape.clone(),
            strides: src_strides,
            offset: src.layout().offset(),
        };
        let dt = self.dtype();
        Ok(dispatch!(all dt, T => {
            let out = src.with_slice::<T, _>(OP, |s, _| {
                index.with_slice::<i64, _>(OP, |ix, _| {
                    map_offsets2(&li, &ls, |oi, os| s[os + ix[oi] as usize * sd])
                })
            })??;
            Tensor::from_buffer(T::into_buffer(out), &out_shape)
        }))
    }

    /// Out-of-place scatter-add (like `torch.scatter_add`): a copy of `self` where, for
    /// every position `p` of `index`, `src[p]` is added at `p` with its coordinate along
    /// `dim` replaced by `index[p]`. Repeated indices accumulate.
    ///
    /// `index` (`i64`), `src` and `self` have the same number of dims;
    /// `index.size(d) <= src.size(d)` for all `d` and `index.size(d) <= self.size(d)` for
    /// `d != dim`; `src` has the dtype of `self` (not bool). Panics otherwise; see
    /// [`Tensor::try_scatter_add`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let counts = Tensor::zeros([3], ());
    /// let idx = Tensor::from_vec(vec![0i64, 2, 2, 1, 2], [5]);
    /// let out = counts.scatter_add(0, &idx, &Tensor::ones([5], ()));
    /// assert_eq!(out.to_vec::<f32>(), vec![1., 1., 3.]);
    /// assert_eq!(counts.to_vec::<f32>(), vec![0.; 3]); // unchanged
    /// ```
    #[track_caller]
    pub fn scatter_add(&self, dim: isize, index: &Tensor, src: &Tensor) -> Tensor {
        or_panic(self.try_scatter_add(dim, index, src))
    }

    /// Fallible [`Tensor::scatter_add`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let t = Tensor::zeros([2], ());
    /// let idx = Tensor::from_vec(vec![5i64], [1]);
    /// assert!(t.try_scatter_add(0, &idx, &Tensor::ones([1], ())).is_err());
    /// ```
    fn scatter_add_impl(&self, dim: isize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        const OP: &str = "scatter_add";
        check_add_operands(OP, self, index, src)?;
        let d = normalize_dim(OP, dim, self.ndim().max(1))?;
        let ndim = self.ndim().max(1);
        let as1 = |t: &Tensor| {
            if t.ndim() == 0 {
                t.reshape([1usize])
            } else {
                t.clone()
            }
        };
        let (base, index, src) = (as1(self), as1(index), as1(src));
        if index.ndim() != ndim || src.ndim() != ndim {
            return Err(Error::shape(
                OP,
                format!(
                    "index {}, src {} and the tensor {} must have the same number of dims",
                    fmt_shape(index.shape()),
                    fmt_shape(src.shape()),
                    fmt_shape(self.shape())
                ),
            ));
        }
        for k in 0..ndim {
            let (i, s, b) = (index.shape()[k], src.shape()[k], base.shape()[k]);
            if i > s || (k != d && i > b) {
                return Err(Error::shape(
                    OP,
                    format!(
                        "index {} must be no larger than src {} in every dim and no larger than the tensor {} except in dim {d} (dim {k} differs)",
                        fmt_shape(index.shape()),
                        fmt_shape(src.shape()),
                        fmt_shape(self.shape())
                    ),
                ));
            }
        }
        let size = base.shape()[d];
        let index = unaliased(&index, &src)?;
        #[cfg(feature = "cuda")]
        if base.is_cuda() && self.dtype() != DType::Bool {
            return match crate::cuda::ops::scatter_add(&base, d, &index, &src)? {
                Some(t) => Ok(t.with_layout(Layout::contiguous(self.shape()))),
                None => Err(cuda_bad_index(OP, &index, d, size, self.shape())),
            };
        }
        if let Some(v) = first_bad_index(OP, &index, size)? {
            return Err(out_of_range(OP, v, d, size, self.shape()));
        }
        let li = index.layout().clone();
        let mut out_strides = contiguous_strides(base.shape());
        let od = out_strides[d];
        out_strides[d] = 0;
        let ls = src.layout();
        let dt = self.dtype();
        dispatch!(num OP, dt, T => {
            let mut out = base.with_slice::<T, _>(OP, gather)?;
            src.with_slice::<T, _>(OP, |sv, _| {
                index.with_slice::<i64, _>(OP, |ix, _| {
                    for_each_offsets(
                        li.shape(),
                        [li.strides(), &ls.strides()[..ndim], &out_strides],
                        [li.offset(), ls.offset(), 0],
                        0..li.numel(),
                        |_, [oi, os, oo]| {
                            let o = oo + ix[oi] as usize * od;
                            out[o] += sv[os];
                        },
                    );
                })
            })??;
            Tensor::from_buffer(T::into_buffer(out), self.shape())
        })
    }

    /// Joins tensors along an existing dim (like `torch.cat`). Accepts `&[Tensor]` and
    /// `&[&Tensor]`.
    ///
    /// All tensors have the same number of dims and the same size in every dim but
    /// `dim`; the result's dtype is the promotion of all their dtypes (like PyTorch). As
    /// in PyTorch, 1-D empty tensors (shape `[0]`) are skipped. Panics on an empty list
    /// or mismatched shapes; see [`Tensor::try_cat`].
    ///
    /// ```
    /// use flint_runtime::{DType, Tensor};
    /// let a = Tensor::ones([2, 2], DType::I64);
    /// let b = Tensor::zeros([2, 1], DType::F32);
    /// let c = Tensor::cat(&[&a, &b], 1);
    /// assert_eq!(c.dtype(), DType::F32);
    /// assert_eq!(c.to_vec::<f32>(), vec![1., 1., 0., 1., 1., 0.]);
    /// let v = vec![a.clone(), a];
    /// assert_eq!(Tensor::cat(&v, 0).shape(), &[4, 2]);
    /// ```
    #[track_caller]
    pub fn cat<T: AsRef<Tensor>>(tensors: &[T], dim: isize) -> Tensor {
        or_panic(Self::try_cat(tensors, dim))
    }

    /// Fallible [`Tensor::cat`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let e = Tensor::try_cat(&[Tensor::zeros([2, 3], ()), Tensor::zeros([3, 3], ())], 1);
    /// assert!(e.unwrap_err().to_string().contains("[3, 3]"));
    /// assert!(Tensor::try_cat::<Tensor>(&[], 0).is_err());
    /// ```
    #[track_caller]
    pub fn try_cat<T: AsRef<Tensor>>(tensors: &[T], dim: isize) -> Result<Tensor> {
        cat_recorded("cat", tensors, dim)
    }

    /// Joins tensors of equal shape along a new dim `dim` (in `-(ndim+1)..=ndim`), like
    /// `torch.stack`. Accepts `&[Tensor]` and `&[&Tensor]`; dtypes promote like
    /// [`Tensor::cat`]. Panics on an empty list or unequal shapes; see
    /// [`Tensor::try_stack`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let a = Tensor::from_vec(vec![1i64, 2], [2]);
    /// let b = Tensor::from_vec(vec![3i64, 4], [2]);
    /// assert_eq!(Tensor::stack(&[&a, &b], 0).to_vec::<i64>(), vec![1, 2, 3, 4]);
    /// assert_eq!(Tensor::stack(&[a, b], -1).to_vec::<i64>(), vec![1, 3, 2, 4]);
    /// ```
    #[track_caller]
    pub fn stack<T: AsRef<Tensor>>(tensors: &[T], dim: isize) -> Tensor {
        or_panic(Self::try_stack(tensors, dim))
    }

    /// Fallible [`Tensor::stack`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let r = Tensor::try_stack(&[Tensor::zeros([2], ()), Tensor::zeros([3], ())], 0);
    /// assert!(r.is_err());
    /// ```
    #[track_caller]
    pub fn try_stack<T: AsRef<Tensor>>(tensors: &[T], dim: isize) -> Result<Tensor> {
        const OP: &str = "stack";
        let first = match tensors.first() {
            Some(t) => t.as_ref(),
            None => return Err(Error::shape(OP, "expects a non-empty list of tensors")),
        };
        for (i, t) in tensors.iter().enumerate().skip(1) {
            if t.as_ref().shape() != first.shape() {
                return Err(Error::shape(
                    OP,
                    format!(
                        "expects tensors of equal shape, but tensor 0 has shape {} and tensor {i} has shape {}",
                        fmt_shape(first.shape()),
                        fmt_shape(t.as_ref().shape())
                    ),
                ));
            }
        }
        let d = normalize_dim(OP, dim, first.ndim() + 1)? as isize;
        let parts = tensors
            .iter()
            .map(|t| t.as_ref().try_unsqueeze(d))
            .collect::<Result<Vec<_>>>()?;
        cat_recorded(OP, &parts, d)
    }

    /// The elements of `self` where `mask` is true, as a 1-D tensor in row-major order
    /// (PyTorch's `x[mask]` / `torch.masked_select`). `mask` is a bool tensor; `self`
    /// and `mask` broadcast together. Panics otherwise; see
    /// [`Tensor::try_masked_select`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, -2.0, 3.0, -4.0], [2, 2]);
    /// assert_eq!(x.masked_select(&x.gt(0.0)).to_vec::<f32>(), vec![1.0, 3.0]);
    /// ```
    #[track_caller]
    pub fn masked_select(&self, mask: &Tensor) -> Tensor {
        or_panic(self.try_masked_select(mask))
    }

    /// Fallible [`Tensor::masked_select`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let x = Tensor::zeros([2, 3], ());
    /// assert!(x.try_masked_select(&Tensor::ones([2], flint_runtime::DType::Bool)).is_err());
    /// ```
    fn masked_select_impl(&self, mask: &Tensor) -> Result<Tensor> {
        const OP: &str = "masked_select";
        check_same_device(OP, self, mask)?;
        if mask.dtype() != DType::Bool {
            return Err(Error::dtype(
                OP,
                format!("mask must be a bool tensor, got {}", mask.dtype()),
            ));
        }
        let shape = broadcast_shapes(OP, self.shape(), mask.shape()).map_err(|_| {
            Error::shape(
                OP,
                format!(
                    "mask of shape {} does not broadcast with the tensor's shape {}",
                    fmt_shape(mask.shape()),
                    fmt_shape(self.shape())
                ),
            )
        })?;
        let mask = unaliased(mask, self)?;
        let ls = self.layout().broadcast_to(OP, &shape)?;
        let lm = mask.layout().broadcast_to(OP, &shape)?;
        #[cfg(feature = "cuda")]
        if self.is_cuda() {
            return crate::cuda::ops::masked_select(self, &ls, &mask, &lm);
        }
        let dt = self.dtype();
        Ok(dispatch!(all dt, T => {
            let out = self.with_slice::<T, _>(OP, |s, _| {
                mask.with_slice::<bool, _>(OP, |m, _| {
                    let mut out = Vec::new();
                    for_each_offsets(&shape, [ls.strides(), lm.strides()], [ls.offset(), lm.offset()], 0..ls.numel(), |_, [os, om]| {
                        if m[om] {
                            out.push(s[os]);
                        }
                    });
                    out
                })
            })??;
            let n = out.len();
            Tensor::from_buffer(T::into_buffer(out), &[n])
        }))
    }
}

/// `cat` with its backward: each input's gradient is its slice of the output's.
#[track_caller]
fn cat_recorded<T: AsRef<Tensor>>(op: &'static str, tensors: &[T], dim: isize) -> Result<Tensor> {
    let out = cat_impl(op, tensors, dim)?;
    let all: Vec<Tensor> = tensors.iter().map(|t| t.as_ref().clone()).collect();
    let refs: Vec<&Tensor> = tensors.iter().map(|t| t.as_ref()).collect();
    let d = normalize_dim(op, dim, out.ndim())?;
    Ok(record(out, "cat", &refs, &[], move |g| {
        let mut start = 0;
        all.iter()
            .map(|t| {
                if t.ndim() == 1 && t.numel() == 0 && g.ndim() != 1 {
                    return t.requires_grad().then(|| t.zeros_like());
                }
                let len = t.shape()[d];
                let piece = g.narrow(d as isize, start, len).to_dtype(t.dtype());
                start += len;
                t.requires_grad().then_some(piece)
            })
            .collect()
    }))
}

/// Differentiable forms of the index ops: each wraps the kernel above and records the
/// backward (written with `scatter_add`/`gather`, so second derivatives work too).
impl Tensor {
    /// Fallible [`Tensor::index_select`].
    #[track_caller]
    pub fn try_index_select(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        let out = self.index_select_impl(dim, index)?;
        let d = normalize_dim("index_select", dim, self.ndim())?;
        let (shape, idx) = (self.shape().to_vec(), index.reshape([-1]));
        Ok(record(out, "index_select", &[self], &[], move |g| {
            // each selected slice added back at its index
            vec![Some(
                Tensor::zeros(&shape, (g.dtype(), g.device())).index_add(d as isize, &idx, g),
            )]
        }))
    }

    /// Fallible [`Tensor::index_add`].
    #[track_caller]
    pub fn try_index_add(&self, dim: isize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        let out = self.index_add_impl(dim, index, src)?;
        let d = normalize_dim("index_add", dim, self.ndim())?;
        let (idx, ns, nsrc) = (
            index.reshape([-1]),
            self.requires_grad(),
            src.requires_grad(),
        );
        Ok(record(out, "index_add", &[self, src], &[], move |g| {
            vec![
                ns.then(|| g.clone()),
                nsrc.then(|| g.index_select(d as isize, &idx)),
            ]
        }))
    }

    /// Fallible [`Tensor::gather`].
    #[track_caller]
    pub fn try_gather(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        let out = self.gather_impl(dim, index)?;
        let (shape, idx) = (self.shape().to_vec(), index.clone());
        Ok(record(out, "gather", &[self], &[], move |g| {
            vec![Some(
                Tensor::zeros(&shape, (g.dtype(), g.device())).scatter_add(dim, &idx, g),
            )]
        }))
    }

    /// Fallible [`Tensor::scatter_add`].
    #[track_caller]
    pub fn try_scatter_add(&self, dim: isize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        let out = self.scatter_add_impl(dim, index, src)?;
        let (idx, ns, nsrc) = (index.clone(), self.requires_grad(), src.requires_grad());
        let src_shape = src.shape().to_vec();
        Ok(record(out, "scatter_add", &[self, src], &[], move |g| {
            let gsrc = nsrc.then(|| {
                // gather reads only the index's extent; src beyond it gets no gradient
                let got = g.gather(dim, &idx);
                if got.shape() == src_shape.as_slice() {
                    got
                } else {
                    let z = Tensor::zeros(&src_shape, (g.dtype(), g.device()));
                    let mut region = z.clone();
                    for (k, &n) in got.shape().iter().enumerate() {
                        region = region.narrow(k as isize, 0, n);
                    }
                    crate::autograd::no_grad(|| region.copy_(&got));
                    z
                }
            });
            vec![ns.then(|| g.clone()), gsrc]
        }))
    }

    /// Fallible [`Tensor::masked_select`].
    #[track_caller]
    pub fn try_masked_select(&self, mask: &Tensor) -> Result<Tensor> {
        let out = self.masked_select_impl(mask)?;
        let (shape, m) = (self.shape().to_vec(), mask.clone());
        Ok(record(out, "masked_select", &[self], &[], move |g| {
            // the positions (in the broadcast shape) that were selected, in order
            let bshape = broadcast_shapes("masked_select", &shape, m.shape()).unwrap_or_default();
            let n: usize = bshape.iter().product();
            let pos = Tensor::arange(0.0, n as f64, 1.0, (DType::I64, m.device()))
                .reshape(bshape.as_slice())
                .masked_select_impl(&m)
                .unwrap_or_else(|_| Tensor::zeros([0usize], (DType::I64, m.device())));
            let flat = Tensor::zeros([n], (g.dtype(), g.device())).scatter_add(0, &pos, g);
            vec![Some(sum_to(&flat.reshape(bshape.as_slice()), &shape))]
        }))
    }
}

fn cat_impl<T: AsRef<Tensor>>(op: &'static str, tensors: &[T], dim: isize) -> Result<Tensor> {
    if tensors.is_empty() {
        return Err(Error::shape(op, "expects a non-empty list of tensors"));
    }
    let all: Vec<&Tensor> = tensors.iter().map(|t| t.as_ref()).collect();
    let dt = all
        .iter()
        .skip(1)
        .fold(all[0].dtype(), |acc, t| DType::promote(acc, t.dtype()));
    let device = crate::tensor::same_device(op, &all)?;
    // legacy PyTorch rule: 1-D empty tensors are skipped
    let parts: Vec<(usize, &Tensor)> = all
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, t)| !(t.ndim() == 1 && t.numel() == 0))
        .collect();
    let Some(&(i0, first)) = parts.first() else {
        return Tensor::try_zeros([0usize], (dt, device));
    };
    if first.ndim() == 0 {
        return Err(Error::shape(
            op,
            format!("zero-dimensional tensor (at position {i0}) cannot be concatenated"),
        ));
    }
    let d = normalize_dim(op, dim, first.ndim())?;
    let mut out_shape: Dims = first.shape().into();
    out_shape[d] = 0;
    for &(i, t) in &parts {
        let same = t.ndim() == first.ndim()
            && t.shape()
                .iter()
                .zip(first.shape())
                .enumerate()
                .all(|(k, (a, b))| k == d || a == b);
        if !same {
            return Err(Error::shape(
                op,
                format!(
                    "tensors must have the same shape except in dim {d}, but tensor {i0} has shape {} and tensor {i} has shape {}",
                    fmt_shape(first.shape()),
                    fmt_shape(t.shape())
                ),
            ));
        }
        out_shape[d] += t.shape()[d];
    }
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = device {
        let parts = parts
            .iter()
            .map(|(_, t)| t.to_dtype_raw(dt))
            .collect::<Result<Vec<_>>>()?;
        return crate::cuda::ops::cat(&parts, d, &out_shape, dt);
    }
    let out_strides = contiguous_strides(&out_shape);
    let n: usize = out_shape.iter().product();
    let outer: usize = out_shape[..d].iter().product();
    let inner: usize = out_shape[d + 1..].iter().product();
    let out_row = out_shape[d] * inner;
    Ok(dispatch!(all dt, E => {
        let mut out: Vec<E> = crate::cpu::pool::zeros(n);
        let mut start = 0usize;
        for &(_, t) in &parts {
            let t = t.to_dtype_raw(dt)?;
            let len = t.shape()[d];
            let chunk = len * inner;
            t.with_slice::<E, _>(op, |s, l| {
                if chunk == 0 {
                    return;
                }
                if let Some(r) = l.contiguous_range() {
                    let s = &s[r];
                    for o in 0..outer {
                        let dst = o * out_row + start * inner;
                        out[dst..dst + chunk].copy_from_slice(&s[o * chunk..(o + 1) * chunk]);
                    }
                } else {
                    let base = start * out_strides[d];
                    for_each_offsets(l.shape(), [l.strides(), &out_strides], [l.offset(), base], 0..l.numel(), |_, [os, oo]| {
                        out[oo] = s[os];
                    });
                }
            })?;
            start += len;
        }
        Tensor::from_buffer(E::into_buffer(out), &out_shape)
    }))
}

#[cfg(test)]
mod tests {
    use crate::{DType, Tensor};

    /// `[2, 3, 4]` holding 0..24 in `dt`.
    fn grid(dt: DType) -> Tensor {
        Tensor::arange(0.0, 24.0, 1.0, dt).view([2, 3, 4])
    }

    fn idx(v: &[i64]) -> Tensor {
        Tensor::from_vec(v.to_vec(), [v.len()])
    }

    const DTYPES: [DType; 5] = [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I64];

    #[test]
    fn index_select_on_views_and_dtypes() {
        for dt in DTYPES {
            let t = grid(dt);
            let r = t.index_select(1, &idx(&[2, 0, 2]));
            assert_eq!(r.shape(), &[2, 3, 4]);
            assert_eq!(r.dtype(), dt);
            assert_eq!(r.to_f64_vec()[..8], [8., 9., 10., 11., 0., 1., 2., 3.]);
            // permuted: [4, 2, 3] with strides [1, 12, 4]
            let p = t.permute([2, 0, 1]);
            let r = p.index_select(0, &idx(&[3, 1]));
            assert_eq!(
                r.to_f64_vec(),
                p.to_f64_vec()[18..24]
                    .iter()
                    .chain(&p.to_f64_vec()[6..12])
                    .copied()
                    .collect::<Vec<_>>()
            );
            // sliced (step 2) and selecting along the last dim
            let s = t.try_slice(2, 0, 4, 2).unwrap();
            assert_eq!(
                s.index_select(-1, &idx(&[1])).to_f64_vec(),
                vec![2., 6., 10., 14., 18., 22.]
            );
            // expanded
            let e = Tensor::arange(0.0, 3.0, 1.0, dt)
                .unsqueeze(0)
                .expand([2, 3]);
            assert_eq!(
                e.index_select(1, &idx(&[2, 2])).to_f64_vec(),
                vec![2., 2., 2., 2.]
            );
        }
        let b = Tensor::from_vec(vec![true, false, true], [3]);
        assert_eq!(
            b.index_select(0, &idx(&[1, 0])).to_vec::<bool>(),
            vec![false, true]
        );
        // index itself strided
        let i = Tensor::from_vec(vec![0i64, 9, 2, 9], [4])
            .try_slice(0, 0, 4, 2)
            .unwrap();
        assert_eq!(grid(DType::F32).index_select(2, &i).shape(), &[2, 3, 2]);
        // empty index
        assert_eq!(
            grid(DType::F32).index_select(0, &idx(&[])).shape(),
            &[0, 3, 4]
        );
    }

    #[test]
    fn index_add_adds_slices_at_their_indices() {
        // dim 1 of [2, 3, 2], index with a repeat; a transposed (non-contiguous) src
        let t = Tensor::arange(0.0, 12.0, 1.0, DType::F64).reshape([2, 3, 2]);
        let src = Tensor::arange(100.0, 108.0, 1.0, DType::F64)
            .reshape([2, 2, 2])
            .transpose(1, 2);
        let r = t.index_add(1, &idx(&[2, 2]), &src);
        let (tv, sv) = (t.to_vec::<f64>(), src.contiguous().to_vec::<f64>());
        let mut want = tv.clone();
        for o in 0..2 {
            for j in 0..2 {
                for i in 0..2 {
                    want[(o * 3 + 2) * 2 + i] += sv[(o * 2 + j) * 2 + i];
                }
            }
        }
        assert_eq!(r.to_vec::<f64>(), want);
        assert_eq!(r.shape(), &[2, 3, 2]);
        // i64, dim 0, the tensor itself unchanged
        let a = Tensor::from_vec(vec![1i64, 2, 3], [3]);
        let b = a.index_add(
            0,
            &idx(&[0, 2, 0]),
            &Tensor::from_vec(vec![10i64, 20, 30], [3]),
        );
        assert_eq!(b.to_vec::<i64>(), vec![41, 2, 23]);
        assert_eq!(a.to_vec::<i64>(), vec![1, 2, 3]);
    }

    #[test]
    fn index_add_errors() {
        let t = Tensor::zeros([3, 2], ());
        let e = t
            .try_index_add(0, &idx(&[0, 3]), &Tensor::zeros([2, 2], ()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("index_add") && e.contains('3'), "{e}");
        let e = t
            .try_index_add(0, &idx(&[0, 1]), &Tensor::zeros([2, 3], ()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("src must have shape [2, 2]"), "{e}");
        let e = t
            .try_index_add(0, &idx(&[0]), &Tensor::zeros([1, 2], DType::F64))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dtype"), "{e}");
        let b = Tensor::zeros([3, 2], DType::Bool);
        let e = b
            .try_index_add(0, &idx(&[0]), &Tensor::zeros([1, 2], DType::Bool))
            .unwrap_err()
            .to_string();
        assert!(e.contains("index_add") && e.contains("bool"), "{e}");
    }

    #[test]
    fn index_select_errors() {
        let t = grid(DType::F32);
        let e = t
            .try_index_select(1, &idx(&[0, 3]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("index_select")
                && e.contains("index 3")
                && e.contains("size 3")
                && e.contains("[2, 3, 4]"),
            "{e}"
        );
        let e = t.try_index_select(1, &idx(&[-1])).unwrap_err().to_string();
        assert!(e.contains("negative index -1"), "{e}");
        assert!(t
            .try_index_select(0, &Tensor::zeros([1], DType::F32))
            .is_err());
        assert!(t
            .try_index_select(0, &Tensor::zeros([1, 1], DType::I64))
            .is_err());
        assert!(t.try_index_select(3, &idx(&[0])).is_err());
    }

    #[test]
    #[should_panic(expected = "index_select: index 7 is out of range for dim 0 of size 2")]
    fn index_select_panics_with_message() {
        grid(DType::F32).index_select(0, &idx(&[7]));
    }

    #[test]
    fn index_select_large_runs_in_parallel_and_matches() {
        let t = Tensor::arange(0.0, 200_000.0, 1.0, DType::F64).view([1000, 200]);
        let i = idx(&(0..500).map(|k| (k * 7) % 1000).collect::<Vec<_>>());
        let r = t.index_select(0, &i);
        assert_eq!(r.shape(), &[500, 200]);
        assert_eq!(r.select(0, 3).to_vec::<f64>()[0], 21.0 * 200.0);
        let rt = t.t().index_select(1, &i);
        assert_eq!(rt.t().to_vec::<f64>(), r.to_vec::<f64>());
    }

    #[test]
    fn gather_follows_pytorch() {
        for dt in DTYPES {
            let t = Tensor::arange(1.0, 7.0, 1.0, dt).view([2, 3]);
            let i = Tensor::from_vec(vec![2i64, 0, 1, 1], [2, 2]);
            assert_eq!(t.gather(1, &i).to_f64_vec(), vec![3., 1., 5., 5.]);
            let i0 = Tensor::from_vec(vec![1i64, 0, 1], [1, 3]);
            assert_eq!(t.gather(0, &i0).to_f64_vec(), vec![4., 2., 6.]);
            // permuted input: t.t() is [3, 2] = [[1,4],[2,5],[3,6]]
            assert_eq!(t.t().gather(0, &i0.t()).to_f64_vec(), vec![2., 1., 2.]);
            // expanded input and expanded index
            let e = Tensor::arange(0.0, 3.0, 1.0, dt)
                .unsqueeze(0)
                .expand([4, 3]);
            let ie = idx(&[2, 1]).unsqueeze(0).expand([4, 2]);
            assert_eq!(
                e.gather(1, &ie).to_f64_vec(),
                vec![2., 1., 2., 1., 2., 1., 2., 1.]
            );
            // sliced input
            let s = grid(dt).narrow(2, 1, 2); // [2,3,2]
            let g = s.gather(2, &Tensor::ones([2, 3, 1], DType::I64));
            assert_eq!(g.to_f64_vec(), vec![2., 6., 10., 14., 18., 22.]);
        }
        let b = Tensor::from_vec(vec![true, false], [2]);
        assert_eq!(
            b.gather(0, &idx(&[1, 1, 0])).to_vec::<bool>(),
            vec![false, false, true]
        );
        // index sharing the input's storage
        let x = Tensor::from_vec(vec![1i64, 0, 2], [3]);
        assert_eq!(x.gather(0, &x).to_vec::<i64>(), vec![0, 1, 2]);
        // 0-d input and index, like PyTorch
        let g = Tensor::scalar(5.0f32).gather(0, &Tensor::scalar(0i64));
        assert_eq!((g.shape(), g.item::<f32>()), (&[] as &[usize], 5.0));
        let z = Tensor::scalar(1i64).scatter_add(0, &Tensor::scalar(0i64), &Tensor::scalar(2i64));
        assert_eq!((z.shape(), z.item::<i64>()), (&[] as &[usize], 3));
    }

    #[test]
    fn gather_errors() {
        let t = Tensor::zeros([2, 3], ());
        let e = t
            .try_gather(1, &Tensor::from_vec(vec![3i64], [1, 1]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gather: index 3 is out of range for dim 1 of size 3 (shape [2, 3])"),
            "{e}"
        );
        assert!(t.try_gather(1, &Tensor::zeros([3, 1], DType::I64)).is_err());
        assert!(t.try_gather(1, &Tensor::zeros([2], DType::I64)).is_err());
        assert!(t.try_gather(1, &Tensor::zeros([2, 1], DType::F32)).is_err());
        // the dim being gathered may be larger than the input's
        assert_eq!(
            t.gather(1, &Tensor::zeros([2, 5], DType::I64)).shape(),
            &[2, 5]
        );
    }

    #[test]
    fn scatter_add_follows_pytorch() {
        for dt in DTYPES {
            let base = Tensor::zeros([2, 4], dt);
            let src = Tensor::arange(1.0, 7.0, 1.0, dt).view([2, 3]);
            let i = Tensor::from_vec(vec![0i64, 1, 0, 3, 3, 3], [2, 3]);
            let out = base.scatter_add(1, &i, &src);
            assert_eq!(out.dtype(), dt);
            assert_eq!(out.to_f64_vec(), vec![4., 2., 0., 0., 0., 0., 0., 15.]);
            assert_eq!(base.to_f64_vec(), vec![0.; 8]);
            // dim 0, index smaller than src, permuted base, expanded src
            let base = Tensor::ones([3, 2], dt).t(); // [2, 3] non-contiguous
            let src = Tensor::full([1], 2.0, dt).expand([2, 3]);
            let i = Tensor::from_vec(vec![1i64, 0], [1, 2]);
            let out = base.scatter_add(0, &i, &src);
            assert_eq!(out.to_f64_vec(), vec![1., 3., 1., 3., 1., 1.]);
            // sliced src
            let src = Tensor::arange(0.0, 8.0, 1.0, dt)
                .try_slice(0, 0, 8, 2)
                .unwrap(); // 0,2,4,6
            let out = Tensor::zeros([2], dt).scatter_add(0, &idx(&[1, 1, 0, 1]), &src);
            assert_eq!(out.to_f64_vec(), vec![4., 8.]);
        }
    }

    #[test]
    fn scatter_add_errors() {
        let t = Tensor::zeros([2, 3], ());
        let src = Tensor::ones([2, 3], ());
        let e = t
            .try_scatter_add(0, &Tensor::full([1, 1], 2.0, DType::I64), &src)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("scatter_add: index 2 is out of range for dim 0 of size 2"),
            "{e}"
        );
        assert!(t
            .try_scatter_add(0, &Tensor::full([1, 1], -1.0, DType::I64), &src)
            .is_err());
        assert!(t
            .try_scatter_add(0, &Tensor::zeros([1, 4], DType::I64), &src)
            .is_err());
        assert!(t
            .try_scatter_add(0, &Tensor::zeros([3, 1], DType::I64), &src)
            .is_err());
        assert!(t
            .try_scatter_add(
                0,
                &Tensor::zeros([1, 1], DType::I64),
                &src.to_dtype(DType::F64)
            )
            .is_err());
        assert!(t
            .try_scatter_add(0, &Tensor::zeros([1], DType::I64), &src)
            .is_err());
        let b = Tensor::zeros([2], DType::Bool);
        assert!(b
            .try_scatter_add(0, &idx(&[0]), &Tensor::ones([1], DType::Bool))
            .is_err());
    }

    #[test]
    fn cat_promotes_and_handles_views() {
        let a = Tensor::arange(0.0, 6.0, 1.0, DType::I64).view([2, 3]);
        let b = Tensor::arange(0.0, 6.0, 1.0, DType::F16).view([3, 2]).t(); // [2,3] permuted
        let c = Tensor::cat(&[&a, &b], 0);
        assert_eq!(c.dtype(), DType::F16);
        assert_eq!(
            c.to_f64_vec(),
            vec![0., 1., 2., 3., 4., 5., 0., 2., 4., 1., 3., 5.]
        );
        let c = Tensor::cat(&[a.clone(), b.clone()], -1);
        assert_eq!(c.shape(), &[2, 6]);
        assert_eq!(
            c.to_f64_vec(),
            vec![0., 1., 2., 0., 2., 4., 3., 4., 5., 1., 3., 5.]
        );
        // f16 + bf16 -> f32; sliced and expanded inputs
        let h = Tensor::ones([2, 1], DType::BF16).expand([2, 2]);
        let s = Tensor::arange(0.0, 8.0, 1.0, DType::F16)
            .view([2, 4])
            .try_slice(1, 1, 4, 2)
            .unwrap();
        let c = Tensor::cat(&[&s, &h], 1);
        assert_eq!(c.dtype(), DType::F32);
        assert_eq!(c.to_vec::<f32>(), vec![1., 3., 1., 1., 5., 7., 1., 1.]);
        // bool and f64
        let m = Tensor::from_vec(vec![true, false], [2]);
        let c = Tensor::cat(&[m.clone(), Tensor::full([1], 0.5, DType::F64)], 0);
        assert_eq!(
            (c.dtype(), c.to_vec::<f64>()),
            (DType::F64, vec![1., 0., 0.5])
        );
        assert_eq!(
            Tensor::cat(&[&m, &m], 0).to_vec::<bool>(),
            vec![true, false, true, false]
        );
        // middle dim of a 3-d tensor, with a zero-size part and the legacy [0] skip
        let g = grid(DType::F32);
        let c = Tensor::cat(
            &[
                g.narrow(1, 0, 1),
                g.narrow(1, 0, 0),
                Tensor::zeros([0], ()),
                g.narrow(1, 2, 1),
            ],
            1,
        );
        assert_eq!(c.shape(), &[2, 2, 4]);
        assert_eq!(c.select(1, 1).to_vec::<f32>()[..2], [8., 9.]);
        assert_eq!(
            Tensor::cat(std::slice::from_ref(&g), 2).to_vec::<f32>(),
            g.to_vec::<f32>()
        );
    }

    #[test]
    fn cat_errors() {
        let e = Tensor::try_cat::<Tensor>(&[], 0).unwrap_err().to_string();
        assert!(e.contains("cat") && e.contains("non-empty"), "{e}");
        let e = Tensor::try_cat(&[Tensor::zeros([2, 3], ()), Tensor::zeros([2, 4], ())], 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("except in dim 0") && e.contains("[2, 3]") && e.contains("[2, 4]"),
            "{e}"
        );
        assert!(Tensor::try_cat(
            &[Tensor::zeros([2, 3], ()), Tensor::zeros([2, 3, 1], ())],
            0
        )
        .is_err());
        assert!(Tensor::try_cat(&[Tensor::zeros([2], ())], 1).is_err());
        assert!(Tensor::try_cat(&[Tensor::scalar(1.0f32)], 0).is_err());
    }

    #[test]
    fn stack_views_and_dtypes() {
        let a = Tensor::arange(0.0, 6.0, 1.0, DType::BF16).view([2, 3]);
        let b = Tensor::arange(0.0, 6.0, 1.0, DType::I64).view([3, 2]).t();
        let s = Tensor::stack(&[&a, &b], 1);
        assert_eq!((s.shape(), s.dtype()), (&[2usize, 2, 3][..], DType::BF16));
        assert_eq!(
            s.to_f64_vec(),
            vec![0., 1., 2., 0., 2., 4., 3., 4., 5., 1., 3., 5.]
        );
        let s = Tensor::stack(&[a.clone(), a.clone(), a.clone()], -1);
        assert_eq!(s.shape(), &[2, 3, 3]);
        assert_eq!(s.to_f64_vec()[..3], [0., 0., 0.]);
        let e = Tensor::ones([3], DType::Bool).unsqueeze(0).expand([2, 3]);
        assert_eq!(Tensor::stack(&[&e], 0).shape(), &[1, 2, 3]);
        assert!(Tensor::try_stack::<Tensor>(&[], 0).is_err());
        let err = Tensor::try_stack(&[&a, &b.t()], 0).unwrap_err().to_string();
        assert!(err.contains("stack") && err.contains("[3, 2]"), "{err}");
        assert!(Tensor::try_stack(&[&a], 3).is_err());
    }

    #[test]
    fn masked_select_broadcasts() {
        for dt in [
            DType::F32,
            DType::F64,
            DType::F16,
            DType::BF16,
            DType::I64,
            DType::Bool,
        ] {
            let x = Tensor::arange(0.0, 6.0, 1.0, dt).view([2, 3]);
            let row_mask = Tensor::from_vec(vec![true, false, true], [3]);
            let want: Vec<f64> = [0., 2., 3., 5.]
                .iter()
                .map(|&v| {
                    if dt == DType::Bool {
                        (v != 0.0) as i64 as f64
                    } else {
                        v
                    }
                })
                .collect();
            assert_eq!(x.masked_select(&row_mask).to_f64_vec(), want);
        }
        // permuted input and a mask that broadcasts the input up
        let x = Tensor::arange(0.0, 6.0, 1.0, DType::I64).view([2, 3]).t(); // [[0,3],[1,4],[2,5]]
        let m = x.gt(2);
        assert_eq!(x.masked_select(&m).to_vec::<i64>(), vec![3, 4, 5]);
        let v = Tensor::from_vec(vec![10i64, 20], [2]);
        let m2 = Tensor::from_vec(vec![true, false, false, true], [2, 2]);
        assert_eq!(v.masked_select(&m2).to_vec::<i64>(), vec![10, 20]);
        // expanded input, sliced mask
        let e = v.unsqueeze(0).expand([3, 2]);
        let ms = Tensor::from_vec(vec![true, true, false, true], [4])
            .try_slice(0, 1, 4, 2)
            .unwrap(); // [true, true]
        assert_eq!(e.masked_select(&ms).numel(), 6);
        assert_eq!(
            e.masked_select(&Tensor::zeros([3, 2], DType::Bool)).shape(),
            &[0]
        );
        // a bool tensor as its own mask
        let b = Tensor::from_vec(vec![true, false, true], [3]);
        assert_eq!(b.masked_select(&b).to_vec::<bool>(), vec![true, true]);
        assert!(x
            .try_masked_select(&Tensor::ones([3], DType::Bool))
            .is_err());
        assert!(x
            .try_masked_select(&Tensor::ones([3, 2], DType::I64))
            .is_err());
    }
}
