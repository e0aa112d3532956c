//! Containers: [`Sequential`] and the residual wrapper [`Residual`].

use super::module::{Forward, Layer, Module, Visitor, VisitorMut};
use crate::error::{Error, Result};
use crate::layout::fmt_shape;
use crate::tensor::Tensor;

/// Layers applied in order, named `0`, `1`, … as in PyTorch's `nn.Sequential`.
///
/// ```
/// use flint_runtime::nn::{Forward, Linear, ReLU, Sequential};
/// use flint_runtime::Tensor;
/// let net = Sequential::new()
///     .add(Linear::new(64, 128, ()))
///     .add(ReLU)
///     .add(Linear::new(128, 10, ()));
/// assert_eq!(net.forward(&Tensor::zeros([32, 64], ())).shape(), &[32, 10]);
/// assert_eq!(net.len(), 3);
/// ```
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Layer>>,
}

impl Sequential {
    /// An empty chain.
    pub fn new() -> Sequential {
        Sequential { layers: Vec::new() }
    }

    /// Appends a layer (builder style).
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: impl Layer + 'static) -> Sequential {
        self.layers.push(Box::new(layer));
        self
    }

    /// Appends a layer.
    pub fn push(&mut self, layer: impl Layer + 'static) {
        self.layers.push(Box::new(layer));
    }

    /// The number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The layer at `i`.
    pub fn get(&self, i: usize) -> Option<&dyn Layer> {
        self.layers.get(i).map(|b| &**b)
    }
}

impl Module for Sequential {
    fn visit(&self, v: &mut Visitor<'_>) {
        for (i, l) in self.layers.iter().enumerate() {
            v.child(&i.to_string(), &**l);
        }
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            v.child(&i.to_string(), &mut **l);
        }
    }
}

impl Forward for Sequential {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            h = l.try_forward(&h)?;
        }
        Ok(h)
    }
}

/// A skip connection around a layer: `x + inner(x)` (the inner layer must keep the
/// shape).
///
/// ```
/// use flint_runtime::nn::{Forward, Linear, Residual};
/// use flint_runtime::Tensor;
/// let block = Residual::new(Linear::new(8, 8, ()));
/// assert_eq!(block.forward(&Tensor::ones([2, 8], ())).shape(), &[2, 8]);
/// let bad = Residual::new(Linear::new(8, 4, ()));
/// assert_eq!(bad.try_forward(&Tensor::ones([2, 8], ())).unwrap_err().to_string(),
///     "Residual: the inner Linear maps [2, 8] to [2, 4]; a residual needs the same shape");
/// ```
#[derive(Debug, Clone)]
pub struct Residual<M> {
    /// The wrapped layer; its entries keep their own names (`Residual(Linear)` has
    /// `weight` and `bias`).
    pub inner: M,
}

impl<M> Residual<M> {
    /// Wraps `inner`.
    pub fn new(inner: M) -> Residual<M> {
        Residual { inner }
    }
}

/// Transparent: the wrapper adds no name level, so parameters keep the inner names.
impl<M: Module> Module for Residual<M> {
    fn visit(&self, v: &mut Visitor<'_>) {
        self.inner.visit(v)
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        self.inner.visit_mut(v)
    }
    fn extra_repr(&self) -> String {
        format!("{}({})", self.inner.type_name(), self.inner.extra_repr())
    }
    fn set_own_training(&mut self, training: bool) {
        self.inner.set_own_training(training)
    }
    fn own_training(&self) -> Option<bool> {
        self.inner.own_training()
    }
}

impl<M: Module + Forward> Forward for Residual<M> {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.inner.try_forward(x)?;
        if y.shape() != x.shape() {
            return Err(Error::shape(
                "Residual",
                format!(
                    "the inner {} maps {} to {}; a residual needs the same shape",
                    self.inner.type_name(),
                    fmt_shape(x.shape()),
                    fmt_shape(y.shape())
                ),
            ));
        }
        x.try_add(&y)
    }
}

crate::impl_module_display!(Sequential);
