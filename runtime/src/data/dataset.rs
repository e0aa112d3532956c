//! The [`Dataset`] trait and the two datasets every program needs: [`TensorDataset`]
//! (rows of tensors already in memory) and [`Subset`] (a dataset seen through a list of
//! indices).

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::sync::Arc;

/// A collection of items that can be read by index, like PyTorch's map-style
/// `torch.utils.data.Dataset`.
///
/// Datasets are shared between a [`DataLoader`](super::DataLoader)'s worker threads, so
/// they are `Send + Sync` and read through `&self`. `get` returns an error for an index
/// outside `0..len()` (see [`check_index`]) and for anything else that fails (a file that
/// cannot be read, a record that does not parse), never a panic.
///
/// The two provided batch methods let a dataset read many items at once:
/// [`get_batch`](Dataset::get_batch) (the items, by default one `get` each) and
/// [`get_stacked`](Dataset::get_stacked) (the items already stacked into batch tensors,
/// which [`Stack`](super::Stack) uses when a dataset offers it: one `index_select` per
/// tensor for a [`TensorDataset`] instead of a view per row and a `stack`).
///
/// ```
/// use flint_runtime::data::{check_index, Dataset};
/// use flint_runtime::{Result, Tensor};
///
/// /// The squares 0, 1, 4, 9, … as scalar tensors.
/// struct Squares(usize);
/// impl Dataset for Squares {
///     type Item = Tensor;
///     fn len(&self) -> usize {
///         self.0
///     }
///     fn get(&self, index: usize) -> Result<Tensor> {
///         check_index("Squares", index, self.0)?;
///         Ok(Tensor::scalar((index * index) as f32))
///     }
/// }
///
/// let ds = Squares(4);
/// assert_eq!(ds.get(3).unwrap().item::<f32>(), 9.0);
/// assert!(ds.get(4).is_err());
/// assert_eq!(ds.get_batch(&[1, 2]).unwrap().len(), 2);
/// ```
pub trait Dataset: Send + Sync + 'static {
    /// What one index yields: a tensor, a list of tensors (input and target), a tuple…
    type Item: Send + 'static;

    /// The number of items.
    ///
    /// ```
    /// use flint_runtime::data::{Dataset, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::zeros([5, 2], ())]).unwrap();
    /// assert_eq!(ds.len(), 5);
    /// ```
    fn len(&self) -> usize;

    /// The item at `index`; an error for `index >= len()` or when the item cannot be
    /// produced.
    ///
    /// ```
    /// use flint_runtime::data::{Dataset, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::from_vec(vec![1i64, 2, 3], [3])]).unwrap();
    /// assert_eq!(ds.get(2).unwrap()[0].item::<i64>(), 3);
    /// assert!(ds.get(3).unwrap_err().to_string().contains("index 3 is out of range"));
    /// ```
    fn get(&self, index: usize) -> Result<Self::Item>;

    /// Whether the dataset has no items.
    ///
    /// ```
    /// use flint_runtime::data::{Dataset, TensorDataset};
    /// use flint_runtime::Tensor;
    /// assert!(TensorDataset::new(vec![Tensor::zeros([0, 3], ())]).unwrap().is_empty());
    /// ```
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The items at `indices`, in that order (by default one [`get`](Dataset::get) each);
    /// the first error ends the read.
    ///
    /// ```
    /// use flint_runtime::data::{Dataset, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::from_vec(vec![10i64, 11, 12], [3])]).unwrap();
    /// let items = ds.get_batch(&[2, 0]).unwrap();
    /// assert_eq!(items[0][0].item::<i64>(), 12);
    /// assert_eq!(items[1][0].item::<i64>(), 10);
    /// ```
    fn get_batch(&self, indices: &[usize]) -> Result<Vec<Self::Item>> {
        indices.iter().map(|&i| self.get(i)).collect()
    }

    /// The items at `indices` already stacked along a new leading dim (the batch dim),
    /// as one item of the same type, if this dataset can build that faster than stacking
    /// the items one by one; `None` (the default) when it cannot.
    ///
    /// [`Stack`](super::Stack) asks for it first and falls back to
    /// [`get_batch`](Dataset::get_batch) and stacking. An implementation must return
    /// exactly what stacking `get_batch(indices)` would (same shapes, dtypes, values), and
    /// an index error for an index outside `0..len()`.
    ///
    /// ```
    /// use flint_runtime::data::{Dataset, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let x = Tensor::from_vec(vec![0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0], [3, 2]);
    /// let ds = TensorDataset::new(vec![x]).unwrap();
    /// let batch = ds.get_stacked(&[2, 0]).unwrap().unwrap();
    /// assert_eq!(batch[0].shape(), &[2, 2]);
    /// assert_eq!(batch[0].to_vec::<f32>(), vec![4.0, 5.0, 0.0, 1.0]);
    /// ```
    fn get_stacked(&self, indices: &[usize]) -> Option<Result<Self::Item>> {
        let _ = indices;
        None
    }
}

/// `Ok(())` when `index < len`, else an [`Error::Index`] from `op`: "index 7 is out of
/// range for a dataset of length 7". For [`Dataset::get`] implementations.
///
/// ```
/// use flint_runtime::data::check_index;
/// assert!(check_index("MyData", 2, 3).is_ok());
/// let e = check_index("MyData", 3, 3).unwrap_err();
/// assert_eq!(e.to_string(), "MyData: index 3 is out of range for a dataset of length 3");
/// ```
pub fn check_index(op: &'static str, index: usize, len: usize) -> Result<()> {
    if index < len {
        Ok(())
    } else {
        Err(Error::index(
            op,
            format!("index {index} is out of range for a dataset of length {len}"),
        ))
    }
}

/// A dataset, or an `Arc` of one: what [`DataLoader::new`](super::DataLoader::new),
/// [`Subset::new`] and [`random_split`](super::random_split) accept, so that a dataset can
/// be handed over by value or shared with other loaders and subsets.
///
/// ```
/// use flint_runtime::data::{IntoArcDataset, TensorDataset};
/// use flint_runtime::Tensor;
/// use std::sync::Arc;
/// let ds = Arc::new(TensorDataset::new(vec![Tensor::zeros([4], ())]).unwrap());
/// let again = Arc::clone(&ds).into_arc();
/// assert!(Arc::ptr_eq(&ds, &again));
/// ```
pub trait IntoArcDataset {
    /// The dataset inside.
    type Dataset: Dataset;
    /// The dataset in an `Arc` (the same `Arc` when given one).
    ///
    /// ```
    /// use flint_runtime::data::{Dataset, IntoArcDataset, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::zeros([4], ())]).unwrap().into_arc();
    /// assert_eq!(ds.len(), 4);
    /// ```
    fn into_arc(self) -> Arc<Self::Dataset>;
}

impl<D: Dataset> IntoArcDataset for D {
    type Dataset = D;
    fn into_arc(self) -> Arc<D> {
        Arc::new(self)
    }
}

impl<D: Dataset> IntoArcDataset for Arc<D> {
    type Dataset = D;
    fn into_arc(self) -> Arc<D> {
        self
    }
}

/// Rows of tensors that share their first dim, like `torch.utils.data.TensorDataset`:
/// item `i` is row `i` of each tensor (`t.select(0, i)`, a view), e.g. `[image, label]`.
///
/// Batches through [`Stack`](super::Stack) take the fast path
/// ([`Dataset::get_stacked`]): one `index_select` per tensor.
///
/// ```
/// use flint_runtime::data::{Dataset, TensorDataset};
/// use flint_runtime::Tensor;
/// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [3, 2]);
/// let y = Tensor::from_vec(vec![0i64, 1, 0], [3]);
/// let ds = TensorDataset::new(vec![x, y]).unwrap();
/// assert_eq!(ds.len(), 3);
/// let item = ds.get(1).unwrap();
/// assert_eq!(item[0].to_vec::<f32>(), vec![3.0, 4.0]);
/// assert_eq!(item[1].item::<i64>(), 1);
/// ```
#[derive(Clone, Debug)]
pub struct TensorDataset {
    tensors: Vec<Tensor>,
    len: usize,
}

impl TensorDataset {
    /// A dataset over the rows of `tensors`: an error when the list is empty, a tensor is
    /// 0-d, or the tensors differ in their first dim.
    ///
    /// ```
    /// use flint_runtime::data::TensorDataset;
    /// use flint_runtime::Tensor;
    /// let e = TensorDataset::new(vec![Tensor::zeros([3, 2], ()), Tensor::zeros([4], ())]);
    /// assert!(e.unwrap_err().to_string().contains("tensor 1 has 4 rows (shape [4]) but tensor 0 has 3"));
    /// ```
    pub fn new(tensors: Vec<Tensor>) -> Result<TensorDataset> {
        const OP: &str = "TensorDataset";
        let first = tensors
            .first()
            .ok_or_else(|| Error::config(OP, "expects at least one tensor"))?;
        for (i, t) in tensors.iter().enumerate() {
            if t.ndim() == 0 {
                return Err(Error::shape(
                    OP,
                    format!("tensor {i} is 0-d; every tensor needs a first dim to index rows by"),
                ));
            }
        }
        let len = first.size(0);
        for (i, t) in tensors.iter().enumerate().skip(1) {
            if t.size(0) != len {
                return Err(Error::shape(
                    OP,
                    format!(
                        "tensor {i} has {} rows (shape {:?}) but tensor 0 has {len}; all tensors must share their first dim",
                        t.size(0),
                        t.shape()
                    ),
                ));
            }
        }
        Ok(TensorDataset { tensors, len })
    }

    /// The tensors, in the order given.
    ///
    /// ```
    /// use flint_runtime::data::TensorDataset;
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::zeros([3, 2], ())]).unwrap();
    /// assert_eq!(ds.tensors()[0].shape(), &[3, 2]);
    /// ```
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    /// The tensors, given back.
    ///
    /// ```
    /// use flint_runtime::data::TensorDataset;
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::zeros([3], ()), Tensor::ones([3], ())]).unwrap();
    /// assert_eq!(ds.into_tensors().len(), 2);
    /// ```
    pub fn into_tensors(self) -> Vec<Tensor> {
        self.tensors
    }
}

impl Dataset for TensorDataset {
    type Item = Vec<Tensor>;

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, index: usize) -> Result<Vec<Tensor>> {
        check_index("TensorDataset", index, self.len)?;
        self.tensors
            .iter()
            .map(|t| t.try_select(0, index as isize))
            .collect()
    }

    fn get_stacked(&self, indices: &[usize]) -> Option<Result<Vec<Tensor>>> {
        Some(self.select_rows(indices))
    }
}

impl TensorDataset {
    /// Rows `indices` of every tensor: one `index_select` each.
    fn select_rows(&self, indices: &[usize]) -> Result<Vec<Tensor>> {
        for &i in indices {
            check_index("TensorDataset", i, self.len)?;
        }
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let idx = Tensor::from_vec(idx, [indices.len()]);
        self.tensors
            .iter()
            .map(|t| {
                if t.device() == idx.device() {
                    t.try_index_select(0, &idx)
                } else {
                    t.try_index_select(0, &idx.try_to(t.device())?)
                }
            })
            .collect()
    }
}

/// A dataset seen through a list of indices (like `torch.utils.data.Subset`): item `i` is
/// item `indices[i]` of the underlying dataset, which is shared, not copied.
///
/// [`random_split`](super::random_split) returns these. Batches keep the underlying
/// dataset's fast path ([`Dataset::get_stacked`]).
///
/// ```
/// use flint_runtime::data::{Dataset, Subset, TensorDataset};
/// use flint_runtime::Tensor;
/// let ds = TensorDataset::new(vec![Tensor::from_vec(vec![10i64, 11, 12, 13], [4])]).unwrap();
/// let odd = Subset::new(ds, vec![1, 3]).unwrap();
/// assert_eq!(odd.len(), 2);
/// assert_eq!(odd.get(1).unwrap()[0].item::<i64>(), 13);
/// ```
#[derive(Debug)]
pub struct Subset<D> {
    dataset: Arc<D>,
    indices: Arc<[usize]>,
}

impl<D> Clone for Subset<D> {
    fn clone(&self) -> Self {
        Subset {
            dataset: Arc::clone(&self.dataset),
            indices: Arc::clone(&self.indices),
        }
    }
}

impl<D: Dataset> Subset<D> {
    /// The items `indices` of `dataset` (a dataset or an `Arc` of one); an error when an
    /// index is outside `0..dataset.len()`. Repeats are allowed.
    ///
    /// ```
    /// use flint_runtime::data::{Subset, TensorDataset};
    /// use flint_runtime::Tensor;
    /// use std::sync::Arc;
    /// let ds = Arc::new(TensorDataset::new(vec![Tensor::zeros([3], ())]).unwrap());
    /// assert!(Subset::new(Arc::clone(&ds), vec![0, 2]).is_ok());
    /// let e = Subset::new(ds, vec![3]).unwrap_err();
    /// assert!(e.to_string().contains("index 3 is out of range for a dataset of length 3"));
    /// ```
    pub fn new(
        dataset: impl IntoArcDataset<Dataset = D>,
        indices: Vec<usize>,
    ) -> Result<Subset<D>> {
        let dataset = dataset.into_arc();
        let len = dataset.len();
        for &i in &indices {
            check_index("Subset", i, len)?;
        }
        Ok(Subset {
            dataset,
            indices: indices.into(),
        })
    }

    /// The underlying dataset.
    ///
    /// ```
    /// use flint_runtime::data::{Dataset, Subset, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let s = Subset::new(TensorDataset::new(vec![Tensor::zeros([3], ())]).unwrap(), vec![1]).unwrap();
    /// assert_eq!(s.dataset().len(), 3);
    /// ```
    pub fn dataset(&self) -> &Arc<D> {
        &self.dataset
    }

    /// The indices into the underlying dataset.
    ///
    /// ```
    /// use flint_runtime::data::{Subset, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let s = Subset::new(TensorDataset::new(vec![Tensor::zeros([3], ())]).unwrap(), vec![2, 0]).unwrap();
    /// assert_eq!(s.indices(), &[2, 0]);
    /// ```
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    fn map(&self, indices: &[usize]) -> Result<Vec<usize>> {
        indices
            .iter()
            .map(|&i| {
                check_index("Subset", i, self.indices.len())?;
                Ok(self.indices[i])
            })
            .collect()
    }
}

impl<D: Dataset> Dataset for Subset<D> {
    type Item = D::Item;

    fn len(&self) -> usize {
        self.indices.len()
    }

    fn get(&self, index: usize) -> Result<D::Item> {
        check_index("Subset", index, self.indices.len())?;
        self.dataset.get(self.indices[index])
    }

    fn get_batch(&self, indices: &[usize]) -> Result<Vec<D::Item>> {
        self.dataset.get_batch(&self.map(indices)?)
    }

    fn get_stacked(&self, indices: &[usize]) -> Option<Result<D::Item>> {
        match self.map(indices) {
            Ok(inner) => self.dataset.get_stacked(&inner),
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> TensorDataset {
        // x[i] = [2i, 2i + 1], y[i] = 10 + i
        let x = Tensor::from_vec((0..10).map(|v| v as f32).collect::<Vec<_>>(), [5, 2]);
        let y = Tensor::from_vec((10..15i64).collect::<Vec<_>>(), [5]);
        TensorDataset::new(vec![x, y]).unwrap()
    }

    #[test]
    fn tensor_dataset_rows_and_errors() {
        let ds = rows();
        assert_eq!(ds.len(), 5);
        assert!(!ds.is_empty());
        let item = ds.get(3).unwrap();
        assert_eq!(item[0].shape(), &[2]);
        assert_eq!(item[0].to_vec::<f32>(), vec![6.0, 7.0]);
        assert_eq!(item[1].shape(), &[] as &[usize]);
        assert_eq!(item[1].item::<i64>(), 13);
        let e = ds.get(5).unwrap_err();
        assert!(matches!(e, Error::Index { .. }));
        assert_eq!(
            e.to_string(),
            "TensorDataset: index 5 is out of range for a dataset of length 5"
        );
        assert!(TensorDataset::new(vec![]).is_err());
        let e = TensorDataset::new(vec![Tensor::scalar(1.0f32)]).unwrap_err();
        assert!(e.to_string().contains("tensor 0 is 0-d"), "{e}");
        let e = TensorDataset::new(vec![Tensor::zeros([5, 2], ()), Tensor::zeros([4, 2], ())])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "TensorDataset: tensor 1 has 4 rows (shape [4, 2]) but tensor 0 has 5; all tensors must share their first dim"
        );
    }

    #[test]
    fn stacked_rows_equal_stacked_items() {
        let ds = rows();
        let idx = [4, 0, 2, 2];
        let fast = ds.get_stacked(&idx).unwrap().unwrap();
        let items = ds.get_batch(&idx).unwrap();
        let x: Vec<&Tensor> = items.iter().map(|it| &it[0]).collect();
        let y: Vec<&Tensor> = items.iter().map(|it| &it[1]).collect();
        assert_eq!(fast[0].shape(), &[4, 2]);
        assert_eq!(
            fast[0].to_vec::<f32>(),
            Tensor::stack(&x, 0).to_vec::<f32>()
        );
        assert_eq!(
            fast[0].to_vec::<f32>(),
            vec![8., 9., 0., 1., 4., 5., 4., 5.]
        );
        assert_eq!(
            fast[1].to_vec::<i64>(),
            Tensor::stack(&y, 0).to_vec::<i64>()
        );
        assert_eq!(fast[1].to_vec::<i64>(), vec![14, 10, 12, 12]);
        let e = ds.get_stacked(&[1, 9]).unwrap().unwrap_err();
        assert!(e.to_string().contains("index 9 is out of range"), "{e}");
    }

    #[test]
    fn subset_maps_indices() {
        let ds = Arc::new(rows());
        let s = Subset::new(Arc::clone(&ds), vec![4, 1, 1]).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.get(0).unwrap()[1].item::<i64>(), 14);
        assert_eq!(s.get(2).unwrap()[1].item::<i64>(), 11);
        let stacked = s.get_stacked(&[2, 0]).unwrap().unwrap();
        assert_eq!(stacked[1].to_vec::<i64>(), vec![11, 14]);
        assert_eq!(stacked[0].to_vec::<f32>(), vec![2., 3., 8., 9.]);
        let batch = s.get_batch(&[1, 0]).unwrap();
        assert_eq!(batch[0][1].item::<i64>(), 11);
        assert_eq!(batch[1][1].item::<i64>(), 14);
        assert_eq!(
            s.get(3).unwrap_err().to_string(),
            "Subset: index 3 is out of range for a dataset of length 3"
        );
        assert!(s.get_stacked(&[0, 3]).unwrap().is_err());
        assert!(Subset::new(ds, vec![0, 5]).is_err());
        // a subset of a subset
        let ss = Subset::new(s, vec![1]).unwrap();
        assert_eq!(ss.get(0).unwrap()[1].item::<i64>(), 11);
    }
}
