//! `Linear`, `Identity` and `Flatten`.

use super::functional;
use super::init;
use super::module::{Forward, Module, Visitor, VisitorMut};
use crate::error::Result;
use crate::tensor::{Tensor, TensorOptions};

/// A fully connected layer, `y = x Wᵀ + b`, over the last dim (`[.., in]` → `[.., out]`).
///
/// Parameters `weight` `[out, in]` and `bias` `[out]`, initialised as PyTorch does
/// (uniform in `±1/√in`).
///
/// ```
/// use flint_runtime::nn::{Forward, Linear};
/// use flint_runtime::Tensor;
/// let fc = Linear::new(64, 10, ());
/// assert_eq!(fc.forward(&Tensor::zeros([32, 64], ())).shape(), &[32, 10]);
/// let err = fc.try_forward(&Tensor::zeros([32, 63], ())).unwrap_err();
/// assert_eq!(err.to_string(), "Linear: expected input of shape [.., 64], got [32, 63] (weight is [10, 64])");
/// ```
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out_features, in_features]`.
    pub weight: Tensor,
    /// `[out_features]`, if the layer has a bias.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A layer with a bias, in the dtype and on the device of `opts` (`()` = f32, CPU).
    pub fn new(in_features: usize, out_features: usize, opts: impl Into<TensorOptions>) -> Linear {
        Linear::with_bias(in_features, out_features, true, opts)
    }

    /// A layer with or without a bias.
    pub fn with_bias(
        in_features: usize,
        out_features: usize,
        bias: bool,
        opts: impl Into<TensorOptions>,
    ) -> Linear {
        let opts = opts.into();
        Linear {
            weight: init::kaiming_uniform([out_features, in_features], in_features, opts),
            bias: bias.then(|| init::kaiming_uniform([out_features], in_features, opts)),
        }
    }

    /// `in_features`.
    pub fn in_features(&self) -> usize {
        self.weight.size(1)
    }

    /// `out_features`.
    pub fn out_features(&self) -> usize {
        self.weight.size(0)
    }
}

impl Module for Linear {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.param("weight", &self.weight);
        v.param_opt("bias", self.bias.as_ref());
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.param("weight", &mut self.weight);
        v.param_opt("bias", self.bias.as_mut());
    }
    fn extra_repr(&self) -> String {
        format!(
            "in_features={}, out_features={}, bias={}",
            self.in_features(),
            self.out_features(),
            self.bias.is_some()
        )
    }
}

impl Forward for Linear {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        functional::linear(x, &self.weight, self.bias.as_ref())
    }
}

/// The identity layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl Module for Identity {
    fn visit(&self, _: &mut Visitor<'_>) {}
    fn visit_mut(&mut self, _: &mut VisitorMut<'_>) {}
}

impl Forward for Identity {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
}

/// Flattens dims `start..=end` into one (PyTorch's `nn.Flatten`, default `1..=-1`).
#[derive(Debug, Clone, Copy)]
pub struct Flatten {
    /// First dim to flatten.
    pub start: isize,
    /// Last dim to flatten (inclusive; negative counts from the end).
    pub end: isize,
}

impl Default for Flatten {
    fn default() -> Self {
        Flatten { start: 1, end: -1 }
    }
}

impl Module for Flatten {
    fn visit(&self, _: &mut Visitor<'_>) {}
    fn visit_mut(&mut self, _: &mut VisitorMut<'_>) {}
    fn extra_repr(&self) -> String {
        format!("start_dim={}, end_dim={}", self.start, self.end)
    }
}

impl Forward for Flatten {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        x.try_flatten(self.start, self.end)
    }
}

crate::impl_module_display!(Linear, Identity, Flatten);
