//! Collating: turning the items of one batch into batch tensors. [`Stack`] is the
//! default; any `Fn(Vec<Item>) -> Result<Batch>` closure is a [`Collate`] too.

use super::Dataset;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Turns the items of one batch into a batch (PyTorch's `collate_fn`).
///
/// [`Stack`] (the [`DataLoader`](super::DataLoader)'s default) stacks tensors along a new
/// dim 0. A closure `Fn(Vec<T>) -> Result<B>` is a `Collate<T>` with `Batch = B`, for
/// anything else (padding sequences to one length, building masks):
///
/// ```
/// use flint_runtime::data::Collate;
/// use flint_runtime::{Result, Tensor};
/// // sequences of different lengths, padded with -1 to the longest
/// let pad = |items: Vec<Vec<i64>>| -> Result<Tensor> {
///     let t = items.iter().map(Vec::len).max().unwrap_or(0);
///     let mut flat = Vec::new();
///     for it in &items {
///         flat.extend(it.iter().copied().chain(std::iter::repeat(-1).take(t - it.len())));
///     }
///     Ok(Tensor::from_vec(flat, [items.len(), t]))
/// };
/// let batch = pad.collate(vec![vec![1, 2, 3], vec![4]]).unwrap();
/// assert_eq!(batch.to_vec::<i64>(), vec![1, 2, 3, 4, -1, -1]);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot collate dataset items of type `{T}`",
    label = "no `Collate<{T}>` implementation",
    note = "`Stack` collates items of type Tensor, Vec<Tensor>, (Tensor, Tensor), i64, f32 and f64; for other items use `DataLoader::with_collate` with a closure `|items: Vec<Item>| -> Result<Batch>`"
)]
pub trait Collate<T>: Send + Sync + 'static {
    /// What a batch becomes.
    type Batch: Send + 'static;

    /// The batch made of `items` (in batch order).
    ///
    /// ```
    /// use flint_runtime::data::{Collate, Stack};
    /// use flint_runtime::Tensor;
    /// let b = Stack.collate(vec![Tensor::zeros([3], ()), Tensor::ones([3], ())]).unwrap();
    /// assert_eq!(b.shape(), &[2, 3]);
    /// ```
    fn collate(&self, items: Vec<T>) -> Result<Self::Batch>;

    /// Reads the items `indices` of `dataset` and collates them: by default
    /// `collate(dataset.get_batch(indices)?)`. [`Stack`] first asks the dataset for its
    /// fast path, [`Dataset::get_stacked`]. The [`DataLoader`](super::DataLoader) builds
    /// every batch with this.
    ///
    /// ```
    /// use flint_runtime::data::{Collate, Stack, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::from_vec(vec![5i64, 6, 7], [3])]).unwrap();
    /// let b = Stack.fetch(&ds, &[2, 1]).unwrap();
    /// assert_eq!(b[0].to_vec::<i64>(), vec![7, 6]);
    /// ```
    fn fetch<D: Dataset<Item = T> + ?Sized>(
        &self,
        dataset: &D,
        indices: &[usize],
    ) -> Result<Self::Batch> {
        self.collate(dataset.get_batch(indices)?)
    }
}

impl<T, B, F> Collate<T> for F
where
    F: Fn(Vec<T>) -> Result<B> + Send + Sync + 'static,
    B: Send + 'static,
{
    type Batch = B;
    fn collate(&self, items: Vec<T>) -> Result<B> {
        self(items)
    }
}

/// The default collate: stacks the items of a batch along a new dim 0, like PyTorch's
/// `default_collate`.
///
/// | item | batch |
/// | --- | --- |
/// | `Tensor` of shape `S` | `Tensor` of shape `[B, ..S]` |
/// | `Vec<Tensor>` (each item the same length) | `Vec<Tensor>`, position by position |
/// | `(Tensor, Tensor)` | `(Tensor, Tensor)` |
/// | `i64`, `f32`, `f64` | a 1-D `Tensor` of that dtype |
///
/// Tensors at one position must have the same shape (an error names the item). When the
/// dataset offers [`Dataset::get_stacked`] (a [`TensorDataset`](super::TensorDataset)
/// does), [`Collate::fetch`] takes that instead of stacking.
///
/// ```
/// use flint_runtime::data::{Collate, Stack};
/// use flint_runtime::Tensor;
/// let items = vec![
///     (Tensor::from_vec(vec![1.0f32, 2.0], [2]), Tensor::scalar(0i64)),
///     (Tensor::from_vec(vec![3.0f32, 4.0], [2]), Tensor::scalar(1i64)),
/// ];
/// let (x, y) = Stack.collate(items).unwrap();
/// assert_eq!(x.shape(), &[2, 2]);
/// assert_eq!(y.to_vec::<i64>(), vec![0, 1]);
/// assert_eq!(Stack.collate(vec![3i64, 4]).unwrap().to_vec::<i64>(), vec![3, 4]);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stack;

/// Stacks tensors along a new dim 0, naming `what` on an error.
fn stack_rows<T: AsRef<Tensor>>(tensors: &[T], what: &str) -> Result<Tensor> {
    if let Some(first) = tensors.first() {
        let shape = first.as_ref().shape();
        for (i, t) in tensors.iter().enumerate().skip(1) {
            if t.as_ref().shape() != shape {
                return Err(Error::shape(
                    "Stack",
                    format!(
                        "{what}: item {i} has shape {:?} but item 0 has shape {shape:?}; items of a batch must have equal shapes (or use a collate that pads)",
                        t.as_ref().shape()
                    ),
                ));
            }
        }
    }
    Tensor::try_stack(tensors, 0)
}

impl Collate<Tensor> for Stack {
    type Batch = Tensor;
    fn collate(&self, items: Vec<Tensor>) -> Result<Tensor> {
        stack_rows(&items, "tensor")
    }
    fn fetch<D: Dataset<Item = Tensor> + ?Sized>(
        &self,
        ds: &D,
        indices: &[usize],
    ) -> Result<Tensor> {
        match ds.get_stacked(indices) {
            Some(batch) => batch,
            None => self.collate(ds.get_batch(indices)?),
        }
    }
}

impl Collate<Vec<Tensor>> for Stack {
    type Batch = Vec<Tensor>;
    fn collate(&self, items: Vec<Vec<Tensor>>) -> Result<Vec<Tensor>> {
        let k = items.first().map_or(0, Vec::len);
        for (i, it) in items.iter().enumerate().skip(1) {
            if it.len() != k {
                return Err(Error::shape(
                    "Stack",
                    format!(
                        "item {i} has {} tensors but item 0 has {k}; items of a batch must have the same number of tensors",
                        it.len()
                    ),
                ));
            }
        }
        (0..k)
            .map(|j| {
                let column: Vec<&Tensor> = items.iter().map(|it| &it[j]).collect();
                stack_rows(&column, &format!("tensor {j} of each item"))
            })
            .collect()
    }
    fn fetch<D: Dataset<Item = Vec<Tensor>> + ?Sized>(
        &self,
        ds: &D,
        indices: &[usize],
    ) -> Result<Vec<Tensor>> {
        match ds.get_stacked(indices) {
            Some(batch) => batch,
            None => self.collate(ds.get_batch(indices)?),
        }
    }
}

impl Collate<(Tensor, Tensor)> for Stack {
    type Batch = (Tensor, Tensor);
    fn collate(&self, items: Vec<(Tensor, Tensor)>) -> Result<(Tensor, Tensor)> {
        let (a, b): (Vec<Tensor>, Vec<Tensor>) = items.into_iter().unzip();
        Ok((
            stack_rows(&a, "first tensor of each item")?,
            stack_rows(&b, "second tensor of each item")?,
        ))
    }
    fn fetch<D: Dataset<Item = (Tensor, Tensor)> + ?Sized>(
        &self,
        ds: &D,
        indices: &[usize],
    ) -> Result<(Tensor, Tensor)> {
        match ds.get_stacked(indices) {
            Some(batch) => batch,
            None => self.collate(ds.get_batch(indices)?),
        }
    }
}

macro_rules! stack_scalars {
    ($($t:ty),*) => {$(
        impl Collate<$t> for Stack {
            type Batch = Tensor;
            fn collate(&self, items: Vec<$t>) -> Result<Tensor> {
                let n = items.len();
                Tensor::try_from_vec(items, [n])
            }
        }
    )*};
}
stack_scalars!(i64, f32, f64);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::TensorDataset;

    #[test]
    fn stack_tensors_lists_pairs_scalars() {
        let a = Tensor::from_vec(vec![1i64, 2, 3, 4], [2, 2]);
        let b = Tensor::from_vec(vec![5i64, 6, 7, 8], [2, 2]);
        let t = Stack.collate(vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(t.shape(), &[2, 2, 2]);
        assert_eq!(t.to_vec::<i64>(), vec![1, 2, 3, 4, 5, 6, 7, 8]);

        let v = Stack
            .collate(vec![
                vec![a.clone(), Tensor::scalar(0.5f32)],
                vec![b.clone(), Tensor::scalar(1.5f32)],
            ])
            .unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].shape(), &[2, 2, 2]);
        assert_eq!(v[1].shape(), &[2]);
        assert_eq!(v[1].to_vec::<f32>(), vec![0.5, 1.5]);

        let (x, y) = Stack
            .collate(vec![
                (a.clone(), Tensor::scalar(3i64)),
                (b, Tensor::scalar(4i64)),
            ])
            .unwrap();
        assert_eq!(x.to_vec::<i64>(), vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(y.to_vec::<i64>(), vec![3, 4]);

        let s = Stack.collate(vec![0.25f64, 0.5, 0.75]).unwrap();
        assert_eq!(s.shape(), &[3]);
        assert_eq!(s.to_vec::<f64>(), vec![0.25, 0.5, 0.75]);
        assert_eq!(
            Stack.collate(vec![1.0f32]).unwrap().to_vec::<f32>(),
            vec![1.0]
        );
    }

    #[test]
    fn stack_errors_name_the_item() {
        let e = Stack
            .collate(vec![
                Tensor::zeros([2], ()),
                Tensor::zeros([2], ()),
                Tensor::zeros([3], ()),
            ])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Stack: tensor: item 2 has shape [3] but item 0 has shape [2]; items of a batch must have equal shapes (or use a collate that pads)"
        );
        let e = Stack
            .collate(vec![vec![Tensor::zeros([2], ())], vec![]])
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("item 1 has 0 tensors but item 0 has 1"),
            "{e}"
        );
        let e = Stack
            .collate(vec![
                vec![Tensor::zeros([2], ()), Tensor::zeros([1], ())],
                vec![Tensor::zeros([2], ()), Tensor::zeros([2], ())],
            ])
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("tensor 1 of each item: item 1 has shape [2]"),
            "{e}"
        );
        assert!(Stack.collate(Vec::<Tensor>::new()).is_err());
    }

    #[test]
    fn fetch_uses_the_fast_path_and_closures_collate() {
        let ds = TensorDataset::new(vec![Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3])]).unwrap();
        let b = Stack.fetch(&ds, &[2, 2, 0]).unwrap();
        assert_eq!(b[0].to_vec::<f32>(), vec![3.0, 3.0, 1.0]);
        // a closure: the sum of each batch
        let sum = |items: Vec<Vec<Tensor>>| -> Result<f32> {
            Ok(items.iter().map(|it| it[0].item::<f32>()).sum())
        };
        assert_eq!(sum.fetch(&ds, &[0, 1, 2]).unwrap(), 6.0);
        assert!(sum.fetch(&ds, &[3]).is_err());
    }
}
