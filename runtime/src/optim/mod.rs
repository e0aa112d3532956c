//! Optimizers with `torch.optim`'s update rules (single-tensor, `foreach=False`
//! semantics): [`Sgd`], [`Adam`] (with AMSGrad, L2 or decoupled weight decay, so AdamW
//! too), [`RmsProp`] and [`Adagrad`]. Parameter groups carry their own learning rate.
//!
//! ```
//! use flint_runtime::optim::{Optimizer, Sgd};
//! use flint_runtime::{DType, Tensor};
//! let w = Tensor::from_vec(vec![1.0f64, -2.0], [2]).requires_grad_(true);
//! let mut opt = Sgd::new(vec![w.clone()], 0.1);
//! (&w * &w).sum_all().backward(); // grad = 2w
//! opt.step();
//! opt.zero_grad();
//! assert_eq!(w.to_vec::<f64>(), vec![0.8, -1.6]);
//! ```

/// The [`Optimizer`] methods that only hand out the parameter groups (every optimizer
/// keeps them in a `groups` field).
macro_rules! groups_impl {
    () => {
        fn groups(&self) -> &[ParamGroup] {
            &self.groups
        }
        fn groups_mut(&mut self) -> &mut [ParamGroup] {
            &mut self.groups
        }
        fn add_param_group(&mut self, params: Vec<Tensor>, lr: f64) {
            self.groups.push(ParamGroup { params, lr });
        }
    };
}

mod adadelta;
mod adagrad;
mod adam;
mod rmsprop;
mod sgd;

pub use adadelta::{clip_grad_norm_, clip_grad_value_, Adadelta, Adamax, Asgd};
pub use adagrad::Adagrad;
pub use adam::Adam;
pub use rmsprop::RmsProp;
pub use sgd::Sgd;

use crate::tensor::Tensor;

/// A set of parameters with its own learning rate.
#[derive(Clone, Debug)]
pub struct ParamGroup {
    /// The parameters (leaf tensors that require grad).
    pub params: Vec<Tensor>,
    /// The learning rate of this group.
    pub lr: f64,
}

/// What every optimizer does.
pub trait Optimizer {
    /// Updates every parameter that has a gradient (under `no_grad`).
    fn step(&mut self);
    /// The parameter groups.
    fn groups(&self) -> &[ParamGroup];
    /// The parameter groups, to change learning rates (schedulers do).
    fn groups_mut(&mut self) -> &mut [ParamGroup];
    /// Drops every parameter's gradient (`zero_grad(set_to_none=True)`).
    fn zero_grad(&mut self) {
        for g in self.groups() {
            for p in &g.params {
                p.zero_grad();
            }
        }
    }
    /// Adds a group of parameters with its own learning rate.
    fn add_param_group(&mut self, params: Vec<Tensor>, lr: f64);
}

/// Per-parameter state slots, indexed like the groups' parameters.
#[derive(Clone, Debug)]
pub(crate) struct Slots<S> {
    pub(crate) state: Vec<Vec<Option<S>>>,
}

impl<S> Default for Slots<S> {
    fn default() -> Self {
        Slots { state: Vec::new() }
    }
}

impl<S> Slots<S> {
    pub(crate) fn sync(&mut self, groups: &[ParamGroup]) {
        self.state.resize_with(groups.len(), Vec::new);
        for (s, g) in self.state.iter_mut().zip(groups) {
            s.resize_with(g.params.len(), || None);
        }
    }
}
