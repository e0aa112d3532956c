//! Optimizers with `torch.optim`'s update rules (single-tensor, `foreach=False`
//! semantics): [`Sgd`], [`Adam`] (with AMSGrad, L2 or decoupled weight decay, so AdamW
//! too), [`RmsProp`], [`Adagrad`], [`Adadelta`], [`Adamax`] and [`Asgd`]. Parameter
//! groups carry their own learning rate; the other hyper-parameters are shared by all
//! groups.
//!
//! On the CPU, [`Sgd`], [`Adam`], [`RmsProp`] and [`Adagrad`] update a contiguous `f32` or
//! `f64` parameter in one fused pass over its elements (state tensors in place unless
//! something else, such as an earlier state dict, holds them); the result is the same as
//! that of the op chain the other cases take.
//!
//! Learning-rate schedulers live in [`scheduler`] (re-exported here); the state of an
//! optimizer or a scheduler is saved to and restored from a [`StateDict`] (see
//! [`state`] for the names), so that training resumed from a checkpoint continues bit
//! for bit.
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
            self.groups.push(ParamGroup::new(params, lr));
        }
    };
}

mod adadelta;
mod adagrad;
mod adam;
pub(crate) mod fused;
mod rmsprop;
pub mod scheduler;
mod sgd;
pub mod state;

pub use adadelta::{clip_grad_norm_, clip_grad_value_, Adadelta, Adamax, Asgd};
pub use adagrad::Adagrad;
pub use adam::Adam;
pub use rmsprop::RmsProp;
pub use scheduler::{
    AnnealStrategy, CosineAnnealingLR, ExponentialLR, LambdaLR, LinearLR, LrLambda, LrScheduler,
    MultiStepLR, OneCycleConfig, OneCycleLR, SequentialLR, StepLR,
};
pub use sgd::Sgd;
pub use state::StateDict;

use crate::error::Result;
use crate::tensor::Tensor;

/// A set of parameters with its own learning rate.
#[derive(Clone, Debug)]
pub struct ParamGroup {
    /// The parameters (leaf tensors that require grad).
    pub params: Vec<Tensor>,
    /// The learning rate of this group.
    pub lr: f64,
    /// The learning rate schedulers start from: set to `lr` by the first scheduler built
    /// on the optimizer (PyTorch's `group["initial_lr"]`), so that the schedulers of a
    /// [`SequentialLR`] all share it. `None` until then.
    pub initial_lr: Option<f64>,
}

impl ParamGroup {
    /// A group of `params` with learning rate `lr` and no `initial_lr` yet.
    ///
    /// ```
    /// use flint_runtime::{optim::ParamGroup, Tensor};
    /// let g = ParamGroup::new(vec![Tensor::zeros([2], ())], 0.1);
    /// assert_eq!((g.lr, g.initial_lr), (0.1, None));
    /// ```
    pub fn new(params: Vec<Tensor>, lr: f64) -> Self {
        ParamGroup {
            params,
            lr,
            initial_lr: None,
        }
    }
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

    /// The momentum factor a scheduler may cycle ([`OneCycleLR`]): SGD's and RMSprop's
    /// `momentum`, Adam's and Adamax's `β₁`; `None` for optimizers without one (Adagrad,
    /// Adadelta, ASGD).
    ///
    /// ```
    /// use flint_runtime::optim::{Adagrad, Adam, Optimizer};
    /// assert_eq!(Adam::new(vec![], 1e-3).momentum_or_beta1(), Some(0.9));
    /// assert_eq!(Adagrad::new(vec![], 1e-2).momentum_or_beta1(), None);
    /// ```
    fn momentum_or_beta1(&self) -> Option<f64> {
        None
    }
    /// Sets the factor [`Optimizer::momentum_or_beta1`] reports (for every group);
    /// nothing for optimizers without one.
    ///
    /// ```
    /// use flint_runtime::optim::{Optimizer, Sgd};
    /// let mut opt = Sgd::new(vec![], 0.1);
    /// opt.set_momentum_or_beta1(0.9);
    /// assert_eq!(opt.momentum, 0.9);
    /// ```
    fn set_momentum_or_beta1(&mut self, _value: f64) {}

    /// The optimizer's state: per parameter its slots (`state.{i}.exp_avg`, …), per
    /// group its learning rate, and the hyper-parameters; see [`state`] for the names.
    ///
    /// ```
    /// use flint_runtime::optim::{Optimizer, Sgd};
    /// use flint_runtime::Tensor;
    /// let w = Tensor::from_vec(vec![1.0f64], [1]).requires_grad_(true);
    /// let mut opt = Sgd::new(vec![w.clone()], 0.1).momentum(0.9);
    /// (&w * &w).sum_all().backward();
    /// opt.step();
    /// let sd = opt.state_dict();
    /// assert_eq!(sd.tensor("state.0.momentum_buffer").unwrap().to_vec::<f64>(), vec![2.0]);
    /// assert_eq!(sd.scalar("defaults.momentum"), Some(0.9));
    /// ```
    fn state_dict(&self) -> StateDict;

    /// Restores a state saved by [`Optimizer::state_dict`] from an optimizer of the same
    /// kind over parameters of the same shapes (learning rates and hyper-parameters
    /// included, like PyTorch). Slot tensors are copied and converted to each
    /// parameter's dtype and device. Everything is checked before anything is written:
    /// a different number of groups or parameters, missing, unexpected or wrongly-shaped
    /// entries give one [`Error::StateDict`](crate::Error::StateDict) listing them, and
    /// the optimizer is left untouched.
    ///
    /// ```
    /// use flint_runtime::optim::{Adam, Optimizer};
    /// use flint_runtime::Tensor;
    /// let w = Tensor::from_vec(vec![1.0f64, 2.0], [2]).requires_grad_(true);
    /// let mut opt = Adam::new(vec![w.clone()], 0.1);
    /// (&w * &w).sum_all().backward();
    /// opt.step();
    /// let mut resumed = Adam::new(vec![w.detach().requires_grad_(true)], 0.1);
    /// resumed.load_state_dict(&opt.state_dict()).unwrap();
    /// let v = Tensor::from_vec(vec![1.0f64, 2.0, 3.0], [3]).requires_grad_(true);
    /// let err = Adam::new(vec![v], 0.1).load_state_dict(&opt.state_dict()).unwrap_err();
    /// assert!(err.to_string().contains("state.0.exp_avg: expected shape [3]"));
    /// ```
    fn load_state_dict(&mut self, state: &StateDict) -> Result<()>;
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
