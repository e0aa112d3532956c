//! `Embedding`: a lookup table of vectors.

use super::init;
use super::module::{Module, Visitor, VisitorMut};
use crate::dtype::DType;
use crate::error::{or_panic, Error, Result};
use crate::layout::fmt_shape;
use crate::tensor::{Tensor, TensorOptions};

/// A table of `num_embeddings` vectors of size `embedding_dim`, looked up by i64 index;
/// indices of any shape `[..]` give `[.., embedding_dim]`.
///
/// `weight` starts standard normal, as in PyTorch. With `padding_idx`, that row starts
/// at zero and never receives a gradient.
///
/// ```
/// use flint_runtime::nn::Embedding;
/// use flint_runtime::Tensor;
/// let emb = Embedding::with_padding(10, 4, Some(0), ());
/// let ids = Tensor::from_vec(vec![0i64, 3, 3, 9], [2, 2]);
/// let y = emb.forward(&ids);
/// assert_eq!(y.shape(), &[2, 2, 4]);
/// assert_eq!(y.i(0).i(0).to_vec::<f32>(), vec![0.0; 4]); // the padding row
/// ```
#[derive(Debug, Clone)]
pub struct Embedding {
    /// `[num_embeddings, embedding_dim]`.
    pub weight: Tensor,
    /// The index whose row is padding (no gradient).
    pub padding_idx: Option<usize>,
}

impl Embedding {
    /// A table without a padding index.
    pub fn new(
        num_embeddings: usize,
        embedding_dim: usize,
        opts: impl Into<TensorOptions>,
    ) -> Self {
        Embedding::with_padding(num_embeddings, embedding_dim, None, opts)
    }

    /// A table whose row `padding_idx` is zero and frozen.
    pub fn with_padding(
        num_embeddings: usize,
        embedding_dim: usize,
        padding_idx: Option<usize>,
        opts: impl Into<TensorOptions>,
    ) -> Self {
        let weight = init::normal([num_embeddings, embedding_dim], 1.0, opts);
        if let Some(p) = padding_idx {
            assert!(
                p < num_embeddings,
                "Embedding: padding_idx {p} out of range for {num_embeddings} embeddings"
            );
            let _g = crate::NoGradGuard::new();
            weight.select(0, p as isize).fill_(0.0);
        }
        Embedding {
            weight,
            padding_idx,
        }
    }

    /// Looks up `indices` (i64, any shape); panics on a bad dtype or an index out of range.
    #[track_caller]
    pub fn forward(&self, indices: &Tensor) -> Tensor {
        or_panic(self.try_forward(indices))
    }

    /// Fallible [`Embedding::forward`].
    pub fn try_forward(&self, indices: &Tensor) -> Result<Tensor> {
        if indices.dtype() != DType::I64 {
            return Err(Error::dtype(
                "Embedding",
                format!(
                    "expected i64 indices, got {} of shape {}",
                    indices.dtype(),
                    fmt_shape(indices.shape())
                ),
            ));
        }
        let n = self.weight.size(0);
        let flat = indices.try_reshape([indices.numel()])?;
        // index_select checks the range; only on failure look for the index to name.
        let mut rows = self.weight.try_index_select(0, &flat).map_err(|e| {
            let bad = flat
                .to_vec::<i64>()
                .into_iter()
                .find(|&i| i < 0 || i as usize >= n);
            match bad {
                Some(bad) => Error::index(
                    "Embedding",
                    format!(
                        "index {bad} out of range for {n} embeddings (indices of shape {})",
                        fmt_shape(indices.shape())
                    ),
                ),
                None => e,
            }
        })?;
        if let Some(p) = self.padding_idx {
            // Same values, but no gradient flows into the padding row.
            let keep = flat.ne(p as i64).unsqueeze(1);
            rows = rows.try_where(&keep, rows.detach())?;
        }
        let mut shape = indices.shape().to_vec();
        shape.push(self.weight.size(1));
        rows.try_reshape(shape.as_slice())
    }
}

impl Module for Embedding {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.param("weight", &self.weight);
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.param("weight", &mut self.weight);
    }
    fn extra_repr(&self) -> String {
        let mut s = format!("{}, {}", self.weight.size(0), self.weight.size(1));
        if let Some(p) = self.padding_idx {
            s += &format!(", padding_idx={p}");
        }
        s
    }
}

crate::impl_module_display!(Embedding);
