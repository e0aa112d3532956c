//! Layouts: how a tensor's logical elements map onto its storage.
//!
//! A [`Layout`] is a shape, a stride per dimension (in elements, `0` for broadcast
//! dimensions) and an offset into storage. Views (`permute`, `narrow`, `expand`, …) only
//! make a new layout over the same storage.

use crate::error::{Error, Result};
use smallvec::SmallVec;

/// A small vector of dimension sizes or strides (inline up to 6 dims).
pub type Dims = SmallVec<[usize; 6]>;

/// Shape, strides and offset of a tensor view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub(crate) shape: Dims,
    pub(crate) strides: Dims,
    pub(crate) offset: usize,
}

/// Row-major (C order) strides of a shape.
pub fn contiguous_strides(shape: &[usize]) -> Dims {
    let mut strides: Dims = SmallVec::from_elem(1, shape.len());
    let mut acc = 1usize;
    for i in (0..shape.len()).rev() {
        strides[i] = acc;
        acc *= shape[i].max(1);
    }
    strides
}

/// Formats a shape as `[2, 3, 4]`.
pub fn fmt_shape(shape: &[usize]) -> String {
    format!("{shape:?}")
}

/// Resolves a possibly negative dimension index against `ndim` dims.
pub fn normalize_dim(op: &'static str, dim: isize, ndim: usize) -> Result<usize> {
    let n = ndim as isize;
    let d = if dim < 0 { dim + n } else { dim };
    if d < 0 || d >= n.max(0) {
        return Err(Error::index(
            op,
            format!(
                "dimension {dim} is out of range for a tensor with {ndim} dims (expected {}..{})",
                -n,
                n - 1
            ),
        ));
    }
    Ok(d as usize)
}

/// The broadcast of two shapes under NumPy rules.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Dims> {
    let n = a.len().max(b.len());
    let mut out: Dims = SmallVec::from_elem(1, n);
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::shape(
                op,
                format!(
                    "shapes {} and {} cannot be broadcast together (dim {i}: {da} vs {db})",
                    fmt_shape(a),
                    fmt_shape(b)
                ),
            ));
        };
    }
    Ok(out)
}

impl Layout {
    /// A contiguous row-major layout of `shape` at offset 0.
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout {
            shape: SmallVec::from_slice(shape),
            strides: contiguous_strides(shape),
            offset: 0,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The strides, in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    /// Offset of the first element in storage, in elements.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the elements are laid out row-major with no gaps (size-1 dims may have
    /// any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1usize;
        for i in (0..self.shape.len()).rev() {
            if self.shape[i] == 1 {
                continue;
            }
            if self.strides[i] != expected {
                return false;
            }
            expected *= self.shape[i];
        }
        true
    }

    /// The storage range `[offset, offset + numel)` when contiguous.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        if self.is_contiguous() {
            Some(self.offset..self.offset + self.numel())
        } else {
            None
        }
    }

    /// One past the largest storage index this layout touches (0 when empty).
    pub fn storage_extent(&self) -> usize {
        if self.numel() == 0 {
            return self.offset;
        }
        self.offset
            + self
                .shape
                .iter()
                .zip(&self.strides)
                .map(|(&d, &s)| (d - 1) * s)
                .sum::<usize>()
            + 1
    }

    /// The layout broadcast to `shape` (new leading dims and size-1 dims get stride 0).
    pub fn broadcast_to(&self, op: &'static str, shape: &[usize]) -> Result<Layout> {
        if shape.len() < self.ndim() {
            return Err(Error::shape(
                op,
                format!(
                    "cannot broadcast shape {} to {} with fewer dims",
                    fmt_shape(&self.shape),
                    fmt_shape(shape)
                ),
            ));
        }
        let lead = shape.len() - self.ndim();
        let mut strides: Dims = SmallVec::from_elem(0, shape.len());
        for (i, &target) in shape.iter().enumerate().skip(lead) {
            let d = self.shape[i - lead];
            if d == target {
                strides[i] = if d == 1 { 0 } else { self.strides[i - lead] };
            } else if d == 1 {
                strides[i] = 0;
            } else {
                return Err(Error::shape(
                    op,
                    format!(
                        "cannot broadcast shape {} to {} (dim {i}: {d} vs {target})",
                        fmt_shape(&self.shape),
                        fmt_shape(shape)
                    ),
                ));
            }
        }
        Ok(Layout {
            shape: SmallVec::from_slice(shape),
            strides,
            offset: self.offset,
        })
    }

    /// Reorders the dims: dim `i` of the result is dim `perm[i]` of `self`.
    pub fn permute(&self, perm: &[usize]) -> Result<Layout> {
        let n = self.ndim();
        let mut seen = vec![false; n];
        if perm.len() != n
            || perm
                .iter()
                .any(|&p| p >= n || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::shape(
                "permute",
                format!(
                    "{perm:?} is not a permutation of the {n} dims of a tensor of shape {}",
                    fmt_shape(&self.shape)
                ),
            ));
        }
        Ok(Layout {
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        })
    }

    /// The sub-range `start..start+len` of dim `dim`, with a step.
    pub fn slice(&self, dim: usize, start: usize, len: usize, step: usize) -> Layout {
        let mut l = self.clone();
        l.offset += start * self.strides[dim];
        l.shape[dim] = len;
        l.strides[dim] *= step;
        l
    }

    /// Strides that view this layout as `shape` without copying, if any exist
    /// (PyTorch's `computeStride`: each run of merged dims must be contiguous).
    pub fn view_strides(&self, shape: &[usize]) -> Option<Dims> {
        let numel = self.numel();
        if numel <= 1 {
            return Some(contiguous_strides(shape));
        }
        let mut new_strides: Dims = SmallVec::from_elem(0, shape.len());
        let old_shape = &self.shape;
        let old_strides = &self.strides;
        let mut view_d = shape.len() as isize - 1;
        let mut chunk_base_stride = *old_strides.last().unwrap_or(&1);
        let mut tensor_numel = 1usize;
        let mut view_numel = 1usize;
        for tensor_d in (0..old_shape.len()).rev() {
            tensor_numel *= old_shape[tensor_d];
            let boundary = tensor_d == 0
                || (old_shape[tensor_d - 1] != 1
                    && old_strides[tensor_d - 1] != tensor_numel * chunk_base_stride);
            if boundary {
                while view_d >= 0 && (view_numel < tensor_numel || shape[view_d as usize] == 1) {
                    new_strides[view_d as usize] = view_numel * chunk_base_stride;
                    view_numel *= shape[view_d as usize];
                    view_d -= 1;
                }
                if view_numel != tensor_numel {
                    return None;
                }
                if tensor_d > 0 {
                    chunk_base_stride = old_strides[tensor_d - 1];
                    tensor_numel = 1;
                    view_numel = 1;
                }
            }
        }
        if view_d != -1 {
            return None;
        }
        Some(new_strides)
    }

    /// Storage index of the element at a multi-index.
    pub fn index_of(&self, idx: &[usize]) -> usize {
        self.offset
            + idx
                .iter()
                .zip(&self.strides)
                .map(|(i, s)| i * s)
                .sum::<usize>()
    }
}

/// Resolves `-1` in a requested shape against `numel` elements.
pub fn infer_shape(op: &'static str, shape: &[isize], numel: usize) -> Result<Dims> {
    let mut infer = None;
    let mut known = 1usize;
    for (i, &d) in shape.iter().enumerate() {
        if d == -1 {
            if infer.replace(i).is_some() {
                return Err(Error::shape(op, "only one dimension can be inferred (-1)"));
            }
        } else if d < 0 {
            return Err(Error::shape(
                op,
                format!("invalid dimension {d} in shape {shape:?}"),
            ));
        } else {
            known *= d as usize;
        }
    }
    let mut out: Dims = shape.iter().map(|&d| d.max(0) as usize).collect();
    if let Some(i) = infer {
        if known == 0 || !numel.is_multiple_of(known) {
            return Err(Error::shape(
                op,
                format!("shape {shape:?} is invalid for input of size {numel}"),
            ));
        }
        out[i] = numel / known;
    } else if known != numel {
        return Err(Error::shape(
            op,
            format!("shape {shape:?} is invalid for input of size {numel}"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_and_contiguity() {
        let l = Layout::contiguous(&[2, 3, 4]);
        assert_eq!(l.strides(), &[12, 4, 1]);
        assert!(l.is_contiguous());
        let p = l.permute(&[2, 0, 1]).unwrap();
        assert_eq!(p.shape(), &[4, 2, 3]);
        assert!(!p.is_contiguous());
    }

    #[test]
    fn view_strides_follow_pytorch() {
        let l = Layout::contiguous(&[2, 3, 4]);
        assert_eq!(l.view_strides(&[6, 4]).unwrap().as_slice(), &[4, 1]);
        let t = l.permute(&[0, 2, 1]).unwrap(); // [2,4,3] strides [12,1,4]
        assert!(t.view_strides(&[8, 3]).is_none());
        assert_eq!(t.view_strides(&[2, 12]), None);
        assert_eq!(
            t.view_strides(&[2, 4, 3, 1]).unwrap().as_slice()[..3],
            [12, 1, 4]
        );
        // a column slice keeps rows independent
        let s = Layout::contiguous(&[4, 6]).slice(1, 0, 3, 1);
        assert_eq!(s.view_strides(&[2, 2, 3]).unwrap().as_slice(), &[12, 6, 1]);
        // a 0-d layout views as [1], [1, 1], ...
        assert_eq!(
            Layout::contiguous(&[])
                .view_strides(&[1, 1])
                .unwrap()
                .as_slice(),
            &[1, 1]
        );
    }

    #[test]
    fn broadcasting() {
        assert_eq!(
            broadcast_shapes("t", &[3, 1], &[4]).unwrap().as_slice(),
            &[3, 4]
        );
        assert!(broadcast_shapes("t", &[3], &[4]).is_err());
        let l = Layout::contiguous(&[3, 1])
            .broadcast_to("t", &[2, 3, 4])
            .unwrap();
        assert_eq!(l.strides(), &[0, 1, 0]);
    }

    #[test]
    fn infer() {
        assert_eq!(infer_shape("t", &[-1, 4], 12).unwrap().as_slice(), &[3, 4]);
        assert!(infer_shape("t", &[-1, 5], 12).is_err());
        assert!(infer_shape("t", &[-1, -1], 12).is_err());
    }
}
