//! Learning-rate schedulers with `torch.optim.lr_scheduler`'s semantics: [`StepLR`],
//! [`MultiStepLR`], [`ExponentialLR`], [`CosineAnnealingLR`], [`LinearLR`],
//! [`LambdaLR`], [`OneCycleLR`] (which also cycles momentum or Adam's `β₁`) and
//! [`SequentialLR`] (one schedule after another, e.g. linear warm-up then cosine).
//!
//! Building a scheduler sets every group's learning rate to the schedule's value at epoch
//! 0, as PyTorch's constructors do; then call [`LrScheduler::step`] after each
//! `opt.step()`, once per epoch or once per batch, whichever the schedule counts in:
//!
//! ```
//! use flint_runtime::optim::{CosineAnnealingLR, LinearLR, LrScheduler, Optimizer, SequentialLR, Sgd};
//! use flint_runtime::Tensor;
//! let w = Tensor::zeros([3], ()).requires_grad_(true);
//! let mut opt = Sgd::new(vec![w], 0.1);
//! // 5 epochs of linear warm-up from 0.01, then cosine annealing over 15 epochs.
//! let warmup = LinearLR::new(&mut opt, 0.1, 1.0, 5);
//! let cosine = CosineAnnealingLR::new(&mut opt, 15, 0.0);
//! let mut sched = SequentialLR::new(&mut opt, vec![Box::new(warmup), Box::new(cosine)], &[5]);
//! assert!((opt.groups()[0].lr - 0.01).abs() < 1e-12);
//! for _epoch in 0..5 {
//!     // ... train one epoch: opt.zero_grad(), backward, opt.step() ...
//!     sched.step(&mut opt);
//! }
//! assert!((opt.groups()[0].lr - 0.1).abs() < 1e-12);
//! assert_eq!(sched.get_last_lr(), vec![opt.groups()[0].lr]);
//! ```
//!
//! **Base learning rates.** Like PyTorch, the first scheduler built on an optimizer
//! stores each group's learning rate in [`ParamGroup::initial_lr`](super::ParamGroup)
//! and every scheduler schedules from `initial_lr` (its `base_lrs`). So the parts of a
//! [`SequentialLR`], built one after the other on the same optimizer, all start from the
//! original learning rates even though the first one already changed `lr`.
//! [`OneCycleLR`] sets `initial_lr` to `max_lr / div_factor`, as PyTorch does.
//!
//! **Closed forms.** Every scheduler here computes the learning rate from the base
//! learning rates and the epoch alone: the formulas of PyTorch's `_get_closed_form_lr`
//! (and of `get_lr` for [`LambdaLR`] and [`OneCycleLR`], which have no other form),
//! evaluated in the same order with the same `libm` functions: in this module's tests
//! every value equals PyTorch's closed form bit for bit. PyTorch's `step()` itself uses a
//! recursive form for `StepLR`, `MultiStepLR`, `ExponentialLR`, `CosineAnnealingLR` and
//! `LinearLR` (the new lr is computed from the group's current lr). Mathematically the
//! two agree; numerically the recursive values drift by rounding: over the sequences in
//! this module's tests (torch 2.15) the largest relative difference between PyTorch's
//! recursive and closed-form values is 2.0e-16 (MultiStepLR), 4.8e-16 (ExponentialLR),
//! 5.2e-16 (LinearLR) and 4.6e-15 (CosineAnnealingLR over 30 epochs with `T_max` 10,
//! where the recursion divides by `1 + cos(π(t−1)/T_max)`, small near `T_max`); StepLR
//! and LambdaLR agree exactly. The other difference is semantic: a recursive schedule
//! carries along changes that something else made to `lr` between steps (PyTorch's
//! `ChainedScheduler` relies on it), while a closed form overwrites them.
//!
//! **State.** [`LrScheduler::state_dict`] holds scalars only: `last_epoch`,
//! `base_lrs.{g}`, `last_lr.{g}` and the scheduler's settings (`gamma`, `T_max`, …; a
//! [`SequentialLR`] nests its schedulers under `schedulers.{k}.`). [`LambdaLR`]'s
//! closures are not saved (PyTorch does not save plain functions either). To resume:
//! build the optimizer and the scheduler as at the start, then load the optimizer's state
//! and the scheduler's state (in either order: the scheduler's next step depends only on
//! its own state).

use std::collections::BTreeSet;
use std::f64::consts::PI;
use std::fmt;
use std::sync::Arc;

use super::{Optimizer, StateDict};
use crate::error::{or_panic, Error, Result};

/// What every learning-rate scheduler does.
pub trait LrScheduler: Send {
    /// Moves to the next epoch (or batch) and sets every group's learning rate; call it
    /// after `opt.step()`. Panics where [`LrScheduler::try_step`] returns an error.
    ///
    /// ```
    /// use flint_runtime::optim::{LrScheduler, Optimizer, Sgd, StepLR};
    /// let mut opt = Sgd::new(vec![], 1.0);
    /// let mut s = StepLR::new(&mut opt, 2, 0.5);
    /// s.step(&mut opt);
    /// s.step(&mut opt);
    /// assert_eq!(opt.groups()[0].lr, 0.5);
    /// ```
    #[track_caller]
    fn step(&mut self, opt: &mut dyn Optimizer) {
        or_panic(self.try_step(opt))
    }

    /// Fallible [`LrScheduler::step`]: an error when the optimizer's number of groups is
    /// not the one the scheduler was built for, or when a [`OneCycleLR`] is stepped past
    /// its `total_steps`.
    ///
    /// ```
    /// use flint_runtime::optim::{LrScheduler, Optimizer, Sgd, StepLR};
    /// use flint_runtime::Tensor;
    /// let mut opt = Sgd::new(vec![], 1.0);
    /// let mut s = StepLR::new(&mut opt, 2, 0.5);
    /// opt.add_param_group(vec![Tensor::zeros([1], ())], 0.1);
    /// assert!(s.try_step(&mut opt).is_err());
    /// ```
    fn try_step(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        let next = self.last_epoch() + 1;
        self.try_step_to(opt, next)
    }

    /// Jumps to `epoch` and sets the learning rates of that epoch (PyTorch's deprecated
    /// `step(epoch)`, which also uses the closed form).
    ///
    /// ```
    /// use flint_runtime::optim::{ExponentialLR, LrScheduler, Optimizer, Sgd};
    /// let mut opt = Sgd::new(vec![], 1.0);
    /// let mut s = ExponentialLR::new(&mut opt, 0.5);
    /// s.try_step_to(&mut opt, 3).unwrap();
    /// assert_eq!((s.last_epoch(), opt.groups()[0].lr), (3, 0.125));
    /// ```
    fn try_step_to(&mut self, opt: &mut dyn Optimizer, epoch: usize) -> Result<()>;

    /// The number of steps taken (0 right after construction).
    ///
    /// ```
    /// use flint_runtime::optim::{ExponentialLR, LrScheduler, Sgd};
    /// let mut opt = Sgd::new(vec![], 1.0);
    /// let mut s = ExponentialLR::new(&mut opt, 0.5);
    /// s.step(&mut opt);
    /// assert_eq!(s.last_epoch(), 1);
    /// ```
    fn last_epoch(&self) -> usize;

    /// The learning rates the last step set, one per group.
    ///
    /// ```
    /// use flint_runtime::optim::{ExponentialLR, LrScheduler, Sgd};
    /// let mut opt = Sgd::new(vec![], 1.0);
    /// let s = ExponentialLR::new(&mut opt, 0.5);
    /// assert_eq!(s.get_last_lr(), vec![1.0]);
    /// ```
    fn get_last_lr(&self) -> Vec<f64>;

    /// The scheduler's state (scalars only; see the [module docs](self)).
    ///
    /// ```
    /// use flint_runtime::optim::{LrScheduler, Sgd, StepLR};
    /// let mut opt = Sgd::new(vec![], 1.0);
    /// let s = StepLR::new(&mut opt, 3, 0.1);
    /// let sd = s.state_dict();
    /// assert_eq!(sd.scalar("step_size"), Some(3.0));
    /// assert_eq!(sd.scalar("base_lrs.0"), Some(1.0));
    /// ```
    fn state_dict(&self) -> StateDict;

    /// Restores a state saved by [`LrScheduler::state_dict`] from the same kind of
    /// scheduler over the same number of groups; missing or unexpected entries give an
    /// [`Error::StateDict`] listing them, and the scheduler is left untouched. The
    /// optimizer's learning rates are not touched: they come back with the optimizer's
    /// own state, and the next step sets them anyway.
    ///
    /// ```
    /// use flint_runtime::optim::{LrScheduler, Optimizer, Sgd, StepLR};
    /// let mut opt = Sgd::new(vec![], 1.0);
    /// let mut s = StepLR::new(&mut opt, 3, 0.1);
    /// for _ in 0..4 {
    ///     s.step(&mut opt);
    /// }
    /// let mut opt2 = Sgd::new(vec![], 1.0);
    /// let mut resumed = StepLR::new(&mut opt2, 3, 0.1);
    /// resumed.load_state_dict(&s.state_dict()).unwrap();
    /// resumed.step(&mut opt2);
    /// assert_eq!(resumed.last_epoch(), 5);
    /// assert!((opt2.groups()[0].lr - 0.1).abs() < 1e-15);
    /// ```
    fn load_state_dict(&mut self, state: &StateDict) -> Result<()>;
}

/// What every scheduler keeps: the base learning rates, the epoch and the last values.
#[derive(Clone, Debug)]
struct Core {
    base_lrs: Vec<f64>,
    last_epoch: usize,
    last_lr: Vec<f64>,
}

impl Core {
    /// Base learning rates from the groups' `initial_lr`, set to `lr` where missing.
    fn new(opt: &mut dyn Optimizer) -> Core {
        let base_lrs = (opt.groups_mut().iter_mut())
            .map(|g| *g.initial_lr.get_or_insert(g.lr))
            .collect();
        Core {
            base_lrs,
            last_epoch: 0,
            last_lr: Vec::new(),
        }
    }

    fn check(&self, op: &'static str, opt: &dyn Optimizer) -> Result<()> {
        let n = opt.groups().len();
        if n != self.base_lrs.len() {
            return Err(Error::config(
                op,
                format!(
                    "the scheduler was built for {} parameter group(s) but the optimizer has {n}",
                    self.base_lrs.len()
                ),
            ));
        }
        Ok(())
    }

    /// Writes `lrs` into the groups (after [`Core::check`]).
    fn apply(&mut self, opt: &mut dyn Optimizer, epoch: usize, lrs: Vec<f64>) {
        for (g, lr) in opt.groups_mut().iter_mut().zip(&lrs) {
            g.lr = *lr;
        }
        self.last_epoch = epoch;
        self.last_lr = lrs;
    }

    fn save(&self) -> StateDict {
        let mut sd = StateDict::new();
        sd.scalars
            .push(("last_epoch".into(), self.last_epoch as f64));
        push_list(&mut sd, "base_lrs", &self.base_lrs);
        push_list(&mut sd, "last_lr", &self.last_lr);
        sd
    }

    fn load(r: &mut Reader<'_>, groups: usize) -> Core {
        Core {
            last_epoch: r.usize("last_epoch"),
            base_lrs: r.list("base_lrs", groups),
            last_lr: r.list("last_lr", groups),
        }
    }
}

fn push_list(sd: &mut StateDict, name: &str, values: &[f64]) {
    for (i, v) in values.iter().enumerate() {
        sd.scalars.push((format!("{name}.{i}"), *v));
    }
}

/// Reads a scheduler's state dict, recording missing and malformed entries.
struct Reader<'a> {
    op: &'static str,
    sd: &'a StateDict,
    used: BTreeSet<&'a str>,
    problems: Vec<String>,
}

impl<'a> Reader<'a> {
    fn new(op: &'static str, sd: &'a StateDict) -> Self {
        Reader {
            op,
            sd,
            used: BTreeSet::new(),
            problems: Vec::new(),
        }
    }

    fn get(&mut self, key: &str) -> Option<f64> {
        let (k, v) = self.sd.scalars.iter().find(|(k, _)| k == key)?;
        self.used.insert(k.as_str());
        Some(*v)
    }

    fn f64(&mut self, key: &str) -> f64 {
        self.get(key).unwrap_or_else(|| {
            self.problems.push(format!("missing {key}"));
            0.0
        })
    }

    fn usize(&mut self, key: &str) -> usize {
        let v = self.f64(key);
        if v < 0.0 || v.fract() != 0.0 || v > u32::MAX as f64 {
            self.problems
                .push(format!("{key}: expected a non-negative integer, got {v}"));
            return 0;
        }
        v as usize
    }

    /// A required integer of at least 1.
    fn positive(&mut self, key: &str) -> usize {
        let before = self.problems.len();
        let v = self.usize(key);
        if v == 0 && self.problems.len() == before {
            self.problems.push(format!("{key}: must be at least 1"));
        }
        v.max(1)
    }

    fn flag(&mut self, key: &str) -> bool {
        self.f64(key) != 0.0
    }

    /// `key.0` … `key.{n-1}`, all required.
    fn list(&mut self, key: &str, n: usize) -> Vec<f64> {
        (0..n).map(|i| self.f64(&format!("{key}.{i}"))).collect()
    }

    /// `key.0`, `key.1`, … as long as they are there.
    fn list_any(&mut self, key: &str) -> Vec<f64> {
        (0..)
            .map_while(|i| self.get(&format!("{key}.{i}")))
            .collect()
    }

    fn finish(mut self) -> Result<()> {
        for (k, _) in &self.sd.tensors {
            self.problems.push(format!("unexpected tensor {k}"));
        }
        for (k, _) in &self.sd.scalars {
            if !self.used.contains(k.as_str()) {
                self.problems.push(format!("unexpected {k}"));
            }
        }
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(Error::StateDict(format!(
                "{}: {}",
                self.op,
                self.problems.join("; ")
            )))
        }
    }
}

/// Implements [`LrScheduler`] for a scheduler with a `core: Core` field and the inherent
/// methods `lr_at(&self, group, base_lr, epoch)`, `save_params(&self, &mut StateDict)`
/// and `load_params(&mut self, &mut Reader)`.
macro_rules! closed_form_scheduler {
    ($t:ident) => {
        impl LrScheduler for $t {
            fn try_step_to(&mut self, opt: &mut dyn Optimizer, epoch: usize) -> Result<()> {
                self.core.check(stringify!($t), opt)?;
                let lrs = (self.core.base_lrs.iter().enumerate())
                    .map(|(g, &base)| self.lr_at(g, base, epoch))
                    .collect();
                self.core.apply(opt, epoch, lrs);
                Ok(())
            }
            fn last_epoch(&self) -> usize {
                self.core.last_epoch
            }
            fn get_last_lr(&self) -> Vec<f64> {
                self.core.last_lr.clone()
            }
            fn state_dict(&self) -> StateDict {
                let mut sd = self.core.save();
                self.save_params(&mut sd);
                sd
            }
            fn load_state_dict(&mut self, state: &StateDict) -> Result<()> {
                let mut r = Reader::new(stringify!($t), state);
                let mut next = self.clone();
                next.core = Core::load(&mut r, self.core.base_lrs.len());
                next.load_params(&mut r);
                r.finish()?;
                *self = next;
                Ok(())
            }
        }
    };
}

/// Builds a scheduler: its step to epoch 0 sets the first learning rates.
fn start<S: LrScheduler>(mut s: S, opt: &mut dyn Optimizer) -> Result<S> {
    s.try_step_to(opt, 0)?;
    Ok(s)
}

/// Multiplies the learning rates by `gamma` every `step_size` epochs
/// (`torch.optim.lr_scheduler.StepLR`): `lr = base_lr · gamma^⌊epoch / step_size⌋`.
///
/// ```
/// use flint_runtime::optim::{LrScheduler, Sgd, StepLR};
/// let mut opt = Sgd::new(vec![], 0.1);
/// let mut s = StepLR::new(&mut opt, 2, 0.5);
/// let lrs: Vec<f64> = (0..5).map(|_| { let lr = s.get_last_lr()[0]; s.step(&mut opt); lr }).collect();
/// assert_eq!(lrs, vec![0.1, 0.1, 0.05, 0.05, 0.025]);
/// ```
#[derive(Clone, Debug)]
pub struct StepLR {
    core: Core,
    /// Epochs between two decays.
    pub step_size: usize,
    /// Decay factor.
    pub gamma: f64,
}

impl StepLR {
    /// A step schedule; panics when `step_size` is 0 (see [`StepLR::try_new`]).
    #[track_caller]
    pub fn new(opt: &mut dyn Optimizer, step_size: usize, gamma: f64) -> Self {
        or_panic(Self::try_new(opt, step_size, gamma))
    }

    /// Fallible [`StepLR::new`].
    ///
    /// ```
    /// use flint_runtime::optim::{Sgd, StepLR};
    /// let mut opt = Sgd::new(vec![], 0.1);
    /// assert!(StepLR::try_new(&mut opt, 0, 0.5).is_err());
    /// ```
    pub fn try_new(opt: &mut dyn Optimizer, step_size: usize, gamma: f64) -> Result<Self> {
        if step_size == 0 {
            return Err(Error::config("StepLR", "step_size must be at least 1"));
        }
        let core = Core::new(opt);
        start(
            StepLR {
                core,
                step_size,
                gamma,
            },
            opt,
        )
    }

    fn lr_at(&self, _group: usize, base: f64, epoch: usize) -> f64 {
        base * self.gamma.powf((epoch / self.step_size) as f64)
    }
    fn save_params(&self, sd: &mut StateDict) {
        sd.scalars.push(("step_size".into(), self.step_size as f64));
        sd.scalars.push(("gamma".into(), self.gamma));
    }
    fn load_params(&mut self, r: &mut Reader<'_>) {
        self.step_size = r.positive("step_size");
        self.gamma = r.f64("gamma");
    }
}
closed_form_scheduler!(StepLR);

/// Multiplies the learning rates by `gamma` at each milestone epoch
/// (`torch.optim.lr_scheduler.MultiStepLR`): `lr = base_lr · gamma^(number of
/// milestones ≤ epoch)`; a milestone listed twice counts twice.
///
/// ```
/// use flint_runtime::optim::{LrScheduler, MultiStepLR, Sgd};
/// let mut opt = Sgd::new(vec![], 1.0);
/// let mut s = MultiStepLR::new(&mut opt, &[1, 3], 0.5);
/// let lrs: Vec<f64> = (0..4).map(|_| { let lr = s.get_last_lr()[0]; s.step(&mut opt); lr }).collect();
/// assert_eq!(lrs, vec![1.0, 0.5, 0.5, 0.25]);
/// ```
#[derive(Clone, Debug)]
pub struct MultiStepLR {
    core: Core,
    /// The epochs at which the learning rate decays (sorted).
    pub milestones: Vec<usize>,
    /// Decay factor.
    pub gamma: f64,
}

impl MultiStepLR {
    /// A multi-step schedule (the milestones need not be sorted).
    #[track_caller]
    pub fn new(opt: &mut dyn Optimizer, milestones: &[usize], gamma: f64) -> Self {
        let mut milestones = milestones.to_vec();
        milestones.sort_unstable();
        let core = Core::new(opt);
        or_panic(start(
            MultiStepLR {
                core,
                milestones,
                gamma,
            },
            opt,
        ))
    }

    fn lr_at(&self, _group: usize, base: f64, epoch: usize) -> f64 {
        let passed = self.milestones.partition_point(|&m| m <= epoch);
        base * self.gamma.powf(passed as f64)
    }
    fn save_params(&self, sd: &mut StateDict) {
        let m: Vec<f64> = self.milestones.iter().map(|&m| m as f64).collect();
        push_list(sd, "milestones", &m);
        sd.scalars.push(("gamma".into(), self.gamma));
    }
    fn load_params(&mut self, r: &mut Reader<'_>) {
        let m = r.list_any("milestones");
        if m.iter().any(|v| *v < 0.0 || v.fract() != 0.0) {
            r.problems.push(format!(
                "milestones: expected non-negative integers, got {m:?}"
            ));
        }
        self.milestones = m.iter().map(|&v| v as usize).collect();
        self.milestones.sort_unstable();
        self.gamma = r.f64("gamma");
    }
}
closed_form_scheduler!(MultiStepLR);

/// Multiplies the learning rates by `gamma` every epoch
/// (`torch.optim.lr_scheduler.ExponentialLR`): `lr = base_lr · gamma^epoch`.
///
/// ```
/// use flint_runtime::optim::{ExponentialLR, LrScheduler, Optimizer, Sgd};
/// let mut opt = Sgd::new(vec![], 1.0);
/// let mut s = ExponentialLR::new(&mut opt, 0.5);
/// s.step(&mut opt);
/// s.step(&mut opt);
/// assert_eq!(opt.groups()[0].lr, 0.25);
/// ```
#[derive(Clone, Debug)]
pub struct ExponentialLR {
    core: Core,
    /// Decay factor per epoch.
    pub gamma: f64,
}

impl ExponentialLR {
    /// An exponential schedule.
    #[track_caller]
    pub fn new(opt: &mut dyn Optimizer, gamma: f64) -> Self {
        let core = Core::new(opt);
        or_panic(start(ExponentialLR { core, gamma }, opt))
    }

    fn lr_at(&self, _group: usize, base: f64, epoch: usize) -> f64 {
        base * self.gamma.powf(epoch as f64)
    }
    fn save_params(&self, sd: &mut StateDict) {
        sd.scalars.push(("gamma".into(), self.gamma));
    }
    fn load_params(&mut self, r: &mut Reader<'_>) {
        self.gamma = r.f64("gamma");
    }
}
closed_form_scheduler!(ExponentialLR);

/// Cosine annealing from the base learning rates down to `eta_min` over `t_max` epochs
/// (`torch.optim.lr_scheduler.CosineAnnealingLR`, closed form):
/// `lr = eta_min + (base_lr − eta_min)·(1 + cos(π·epoch / t_max)) / 2`. Past `t_max`
/// the cosine goes on, back up to `base_lr` at `2·t_max`, like PyTorch's.
///
/// ```
/// use flint_runtime::optim::{CosineAnnealingLR, LrScheduler, Optimizer, Sgd};
/// let mut opt = Sgd::new(vec![], 1.0);
/// let mut s = CosineAnnealingLR::new(&mut opt, 4, 0.0);
/// s.step(&mut opt);
/// s.step(&mut opt);
/// assert!((opt.groups()[0].lr - 0.5).abs() < 1e-15);
/// ```
#[derive(Clone, Debug)]
pub struct CosineAnnealingLR {
    core: Core,
    /// Epochs from the base learning rate down to `eta_min` (PyTorch's `T_max`).
    pub t_max: usize,
    /// The smallest learning rate.
    pub eta_min: f64,
}

impl CosineAnnealingLR {
    /// A cosine schedule; panics when `t_max` is 0 (see [`CosineAnnealingLR::try_new`]).
    #[track_caller]
    pub fn new(opt: &mut dyn Optimizer, t_max: usize, eta_min: f64) -> Self {
        or_panic(Self::try_new(opt, t_max, eta_min))
    }

    /// Fallible [`CosineAnnealingLR::new`].
    ///
    /// ```
    /// use flint_runtime::optim::{CosineAnnealingLR, Sgd};
    /// let mut opt = Sgd::new(vec![], 0.1);
    /// assert!(CosineAnnealingLR::try_new(&mut opt, 0, 0.0).is_err());
    /// ```
    pub fn try_new(opt: &mut dyn Optimizer, t_max: usize, eta_min: f64) -> Result<Self> {
        if t_max == 0 {
            return Err(Error::config(
                "CosineAnnealingLR",
                "T_max must be at least 1",
            ));
        }
        let core = Core::new(opt);
        start(
            CosineAnnealingLR {
                core,
                t_max,
                eta_min,
            },
            opt,
        )
    }

    fn lr_at(&self, _group: usize, base: f64, epoch: usize) -> f64 {
        let cos = (PI * epoch as f64 / self.t_max as f64).cos();
        self.eta_min + (base - self.eta_min) * (1.0 + cos) / 2.0
    }
    fn save_params(&self, sd: &mut StateDict) {
        sd.scalars.push(("T_max".into(), self.t_max as f64));
        sd.scalars.push(("eta_min".into(), self.eta_min));
    }
    fn load_params(&mut self, r: &mut Reader<'_>) {
        self.t_max = r.positive("T_max");
        self.eta_min = r.f64("eta_min");
    }
}
closed_form_scheduler!(CosineAnnealingLR);

/// Linear change of a factor on the base learning rates from `start_factor` to
/// `end_factor` over `total_iters` epochs, then constant
/// (`torch.optim.lr_scheduler.LinearLR`, the usual linear warm-up):
/// `lr = base_lr · (start + (end − start)·min(epoch, total_iters) / total_iters)`.
///
/// ```
/// use flint_runtime::optim::{LinearLR, LrScheduler, Optimizer, Sgd};
/// let mut opt = Sgd::new(vec![], 1.0);
/// let mut s = LinearLR::new(&mut opt, 0.5, 1.0, 2);
/// assert_eq!(opt.groups()[0].lr, 0.5);
/// s.step(&mut opt);
/// assert_eq!(opt.groups()[0].lr, 0.75);
/// s.step(&mut opt);
/// s.step(&mut opt);
/// assert_eq!(opt.groups()[0].lr, 1.0);
/// ```
#[derive(Clone, Debug)]
pub struct LinearLR {
    core: Core,
    /// Factor at epoch 0, in `(0, 1]`.
    pub start_factor: f64,
    /// Factor from `total_iters` on, in `[0, 1]`.
    pub end_factor: f64,
    /// Epochs the change takes.
    pub total_iters: usize,
}

impl LinearLR {
    /// A linear schedule; panics on factors outside PyTorch's ranges or `total_iters` 0
    /// (see [`LinearLR::try_new`]).
    #[track_caller]
    pub fn new(
        opt: &mut dyn Optimizer,
        start_factor: f64,
        end_factor: f64,
        total_iters: usize,
    ) -> Self {
        or_panic(Self::try_new(opt, start_factor, end_factor, total_iters))
    }

    /// Fallible [`LinearLR::new`]: `start_factor` must be in `(0, 1]`, `end_factor` in
    /// `[0, 1]` and `total_iters` at least 1.
    ///
    /// ```
    /// use flint_runtime::optim::{LinearLR, Sgd};
    /// let mut opt = Sgd::new(vec![], 0.1);
    /// let err = LinearLR::try_new(&mut opt, 0.0, 1.0, 5).unwrap_err();
    /// assert!(err.to_string().contains("start_factor"));
    /// ```
    pub fn try_new(
        opt: &mut dyn Optimizer,
        start_factor: f64,
        end_factor: f64,
        total_iters: usize,
    ) -> Result<Self> {
        if !(start_factor > 0.0 && start_factor <= 1.0) {
            return Err(Error::config(
                "LinearLR",
                format!("start_factor must be in (0, 1], got {start_factor}"),
            ));
        }
        if !(0.0..=1.0).contains(&end_factor) {
            return Err(Error::config(
                "LinearLR",
                format!("end_factor must be in [0, 1], got {end_factor}"),
            ));
        }
        if total_iters == 0 {
            return Err(Error::config("LinearLR", "total_iters must be at least 1"));
        }
        let core = Core::new(opt);
        start(
            LinearLR {
                core,
                start_factor,
                end_factor,
                total_iters,
            },
            opt,
        )
    }

    fn lr_at(&self, _group: usize, base: f64, epoch: usize) -> f64 {
        let (s, e, n) = (self.start_factor, self.end_factor, self.total_iters);
        base * (s + (e - s) * epoch.min(n) as f64 / n as f64)
    }
    fn save_params(&self, sd: &mut StateDict) {
        sd.scalars.push(("start_factor".into(), self.start_factor));
        sd.scalars.push(("end_factor".into(), self.end_factor));
        sd.scalars
            .push(("total_iters".into(), self.total_iters as f64));
    }
    fn load_params(&mut self, r: &mut Reader<'_>) {
        self.start_factor = r.f64("start_factor");
        self.end_factor = r.f64("end_factor");
        self.total_iters = r.positive("total_iters");
    }
}
closed_form_scheduler!(LinearLR);

/// A learning-rate factor as a function of the epoch, for [`LambdaLR`].
pub type LrLambda = Arc<dyn Fn(usize) -> f64 + Send + Sync>;

/// The base learning rates times a function of the epoch
/// (`torch.optim.lr_scheduler.LambdaLR`): `lr = base_lr · f(epoch)`, with one function
/// for all groups or one per group.
///
/// ```
/// use flint_runtime::optim::{LambdaLR, LrScheduler, Optimizer, Sgd};
/// let mut opt = Sgd::new(vec![], 0.1);
/// let mut s = LambdaLR::new(&mut opt, |epoch| 1.0 / (epoch + 1) as f64);
/// s.step(&mut opt);
/// assert_eq!(opt.groups()[0].lr, 0.05);
/// ```
#[derive(Clone)]
pub struct LambdaLR {
    core: Core,
    lambdas: Vec<LrLambda>,
}

impl fmt::Debug for LambdaLR {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LambdaLR")
            .field("last_epoch", &self.core.last_epoch)
            .field("base_lrs", &self.core.base_lrs)
            .field("last_lr", &self.core.last_lr)
            .finish_non_exhaustive()
    }
}

impl LambdaLR {
    /// One factor function for every group.
    #[track_caller]
    pub fn new(opt: &mut dyn Optimizer, f: impl Fn(usize) -> f64 + Send + Sync + 'static) -> Self {
        let f: LrLambda = Arc::new(f);
        let n = opt.groups().len();
        or_panic(Self::try_per_group(opt, vec![f; n]))
    }

    /// One factor function per group; an error when their number is not the number of
    /// groups.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use flint_runtime::optim::{LambdaLR, LrLambda, Optimizer, Sgd};
    /// use flint_runtime::Tensor;
    /// let mut opt = Sgd::new(vec![], 1.0);
    /// opt.add_param_group(vec![Tensor::zeros([1], ())], 1.0);
    /// let half: LrLambda = Arc::new(|_| 0.5);
    /// let one: LrLambda = Arc::new(|_| 1.0);
    /// LambdaLR::try_per_group(&mut opt, vec![half.clone(), one]).unwrap();
    /// assert_eq!((opt.groups()[0].lr, opt.groups()[1].lr), (0.5, 1.0));
    /// assert!(LambdaLR::try_per_group(&mut opt, vec![half]).is_err());
    /// ```
    pub fn try_per_group(opt: &mut dyn Optimizer, lambdas: Vec<LrLambda>) -> Result<Self> {
        if lambdas.len() != opt.groups().len() {
            return Err(Error::config(
                "LambdaLR",
                format!(
                    "expected {} functions (one per parameter group), got {}",
                    opt.groups().len(),
                    lambdas.len()
                ),
            ));
        }
        let core = Core::new(opt);
        start(LambdaLR { core, lambdas }, opt)
    }

    fn lr_at(&self, group: usize, base: f64, epoch: usize) -> f64 {
        base * (self.lambdas[group])(epoch)
    }
    fn save_params(&self, _sd: &mut StateDict) {}
    fn load_params(&mut self, _r: &mut Reader<'_>) {}
}
closed_form_scheduler!(LambdaLR);

/// How [`OneCycleLR`] goes from one value to the next within a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnealStrategy {
    /// Half a cosine (PyTorch's `"cos"`, the default).
    Cos,
    /// A straight line (`"linear"`).
    Linear,
}

impl AnnealStrategy {
    /// From `start` to `end` as `pct` goes from 0 to 1 (PyTorch's `_annealing_cos` and
    /// `_annealing_linear`, same operation order).
    fn anneal(self, start: f64, end: f64, pct: f64) -> f64 {
        match self {
            AnnealStrategy::Cos => {
                let cos_out = (PI * pct).cos() + 1.0;
                end + (start - end) / 2.0 * cos_out
            }
            AnnealStrategy::Linear => (end - start) * pct + start,
        }
    }
}

/// The options of [`OneCycleLR`], with PyTorch's defaults.
///
/// ```
/// use flint_runtime::optim::{AnnealStrategy, OneCycleConfig};
/// let c = OneCycleConfig { anneal_strategy: AnnealStrategy::Linear, ..Default::default() };
/// assert_eq!((c.pct_start, c.div_factor, c.final_div_factor), (0.3, 25.0, 1e4));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OneCycleConfig {
    /// Fraction of the steps spent increasing the learning rate (0.3).
    pub pct_start: f64,
    /// Cosine or linear annealing (cosine).
    pub anneal_strategy: AnnealStrategy,
    /// Cycle the momentum (or Adam's `β₁`) inversely to the learning rate (true).
    pub cycle_momentum: bool,
    /// Momentum at the learning-rate peak (0.85).
    pub base_momentum: f64,
    /// Momentum at the start and the end (0.95).
    pub max_momentum: f64,
    /// `initial_lr = max_lr / div_factor` (25).
    pub div_factor: f64,
    /// `min_lr = initial_lr / final_div_factor` (1e4).
    pub final_div_factor: f64,
    /// Three phases (up, down to `initial_lr`, down to `min_lr`) instead of two (false).
    pub three_phase: bool,
}

impl Default for OneCycleConfig {
    fn default() -> Self {
        OneCycleConfig {
            pct_start: 0.3,
            anneal_strategy: AnnealStrategy::Cos,
            cycle_momentum: true,
            base_momentum: 0.85,
            max_momentum: 0.95,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
        }
    }
}

/// Which learning rate or momentum a phase starts or ends at.
#[derive(Clone, Copy)]
enum Point {
    Initial,
    Max,
    Min,
}

/// The 1cycle policy (`torch.optim.lr_scheduler.OneCycleLR`), stepped once per batch:
/// the learning rate rises from `max_lr / div_factor` to `max_lr` over the first
/// `pct_start` of `total_steps`, then falls to `initial_lr / final_div_factor`; the
/// momentum (SGD's and RMSprop's `momentum`, Adam's and Adamax's `β₁`, through
/// [`Optimizer::set_momentum_or_beta1`]) goes the other way between `max_momentum` and
/// `base_momentum`. Flint's momentum is one value for the whole optimizer, so it is
/// cycled once for all groups (PyTorch's per-group momenta coincide with it whenever
/// `base_momentum` and `max_momentum` are single numbers, which is all that is offered
/// here). Stepping past `total_steps` is an error, as in PyTorch.
///
/// ```
/// use flint_runtime::optim::{LrScheduler, OneCycleLR, Optimizer, Sgd};
/// let mut opt = Sgd::new(vec![], 0.1).momentum(0.9);
/// let mut s = OneCycleLR::new(&mut opt, 1.0, 10);
/// assert!((opt.groups()[0].lr - 0.04).abs() < 1e-15); // max_lr / 25
/// assert_eq!(opt.momentum, 0.95);
/// for _ in 0..2 {
///     s.step(&mut opt);
/// }
/// assert_eq!(opt.groups()[0].lr, 1.0); // the peak, at step pct_start·10 − 1
/// assert_eq!(opt.momentum, 0.85);
/// ```
#[derive(Clone, Debug)]
pub struct OneCycleLR {
    core: Core,
    max_lrs: Vec<f64>,
    min_lrs: Vec<f64>,
    total_steps: usize,
    config: OneCycleConfig,
    last_momentum: Option<f64>,
}

impl OneCycleLR {
    /// The 1cycle policy with PyTorch's defaults and the same `max_lr` for every group;
    /// panics where [`OneCycleLR::try_new`] returns an error.
    #[track_caller]
    pub fn new(opt: &mut dyn Optimizer, max_lr: f64, total_steps: usize) -> Self {
        or_panic(Self::try_new(opt, max_lr, total_steps))
    }

    /// Fallible [`OneCycleLR::new`]: an error when `total_steps` is 0 or when the
    /// optimizer has no momentum to cycle (Adagrad, Adadelta, ASGD: use
    /// [`OneCycleLR::try_with_config`] with `cycle_momentum: false`).
    ///
    /// ```
    /// use flint_runtime::optim::{Adagrad, OneCycleLR};
    /// let mut opt = Adagrad::new(vec![], 0.1);
    /// let err = OneCycleLR::try_new(&mut opt, 1.0, 10).unwrap_err();
    /// assert!(err.to_string().contains("cycle_momentum"));
    /// ```
    pub fn try_new(opt: &mut dyn Optimizer, max_lr: f64, total_steps: usize) -> Result<Self> {
        Self::try_with_config(opt, &[max_lr], total_steps, OneCycleConfig::default())
    }

    /// The 1cycle policy with options; `max_lrs` holds one value for every group or one
    /// per group. Panics where [`OneCycleLR::try_with_config`] returns an error.
    #[track_caller]
    pub fn with_config(
        opt: &mut dyn Optimizer,
        max_lrs: &[f64],
        total_steps: usize,
        config: OneCycleConfig,
    ) -> Self {
        or_panic(Self::try_with_config(opt, max_lrs, total_steps, config))
    }

    /// Fallible [`OneCycleLR::with_config`]: an error for `total_steps` 0, `pct_start`
    /// outside `[0, 1]`, a number of `max_lrs` that is neither 1 nor the number of
    /// groups, or `cycle_momentum` on an optimizer without momentum.
    ///
    /// ```
    /// use flint_runtime::optim::{Adam, AnnealStrategy, OneCycleConfig, OneCycleLR, Optimizer};
    /// use flint_runtime::Tensor;
    /// let mut opt = Adam::new(vec![], 1e-3);
    /// opt.add_param_group(vec![Tensor::zeros([1], ())], 1e-3);
    /// let config = OneCycleConfig { anneal_strategy: AnnealStrategy::Linear, ..Default::default() };
    /// OneCycleLR::try_with_config(&mut opt, &[0.5, 0.1], 100, config).unwrap();
    /// assert_eq!((opt.groups()[0].lr, opt.groups()[1].lr), (0.02, 0.004));
    /// assert_eq!(opt.betas.0, 0.95);
    /// assert!(OneCycleLR::try_with_config(&mut opt, &[0.5, 0.1, 0.2], 100, config).is_err());
    /// ```
    pub fn try_with_config(
        opt: &mut dyn Optimizer,
        max_lrs: &[f64],
        total_steps: usize,
        config: OneCycleConfig,
    ) -> Result<Self> {
        let op = "OneCycleLR";
        if total_steps == 0 {
            return Err(Error::config(op, "total_steps must be at least 1"));
        }
        if !(0.0..=1.0).contains(&config.pct_start) {
            return Err(Error::config(
                op,
                format!("pct_start must be in [0, 1], got {}", config.pct_start),
            ));
        }
        let n = opt.groups().len();
        let max_lrs = match max_lrs.len() {
            1 => vec![max_lrs[0]; n],
            k if k == n => max_lrs.to_vec(),
            k => {
                return Err(Error::config(
                    op,
                    format!("expected 1 or {n} max_lr values (one per parameter group), got {k}"),
                ))
            }
        };
        if config.cycle_momentum && opt.momentum_or_beta1().is_none() {
            return Err(Error::config(
                op,
                "the optimizer has no momentum or beta1 to cycle; set cycle_momentum to false",
            ));
        }
        let base_lrs: Vec<f64> = max_lrs.iter().map(|m| m / config.div_factor).collect();
        for (g, &initial) in opt.groups_mut().iter_mut().zip(&base_lrs) {
            g.initial_lr = Some(initial);
        }
        let min_lrs = base_lrs
            .iter()
            .map(|i| i / config.final_div_factor)
            .collect();
        let core = Core {
            base_lrs,
            last_epoch: 0,
            last_lr: Vec::new(),
        };
        start(
            OneCycleLR {
                core,
                max_lrs,
                min_lrs,
                total_steps,
                config,
                last_momentum: None,
            },
            opt,
        )
    }

    /// The momentum (or `β₁`) the last step set; `None` when momentum is not cycled.
    ///
    /// ```
    /// use flint_runtime::optim::{OneCycleLR, Sgd};
    /// let mut opt = Sgd::new(vec![], 0.1);
    /// assert_eq!(OneCycleLR::new(&mut opt, 1.0, 10).get_last_momentum(), Some(0.95));
    /// ```
    pub fn get_last_momentum(&self) -> Option<f64> {
        self.last_momentum
    }

    /// The number of steps of the cycle.
    ///
    /// ```
    /// use flint_runtime::optim::{OneCycleLR, Sgd};
    /// let mut opt = Sgd::new(vec![], 0.1);
    /// assert_eq!(OneCycleLR::new(&mut opt, 1.0, 10).total_steps(), 10);
    /// ```
    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// The phases: `(end_step, start lr, end lr, start momentum, end momentum)`, with
    /// PyTorch's `end_step` arithmetic.
    fn phases(&self) -> Vec<(f64, Point, Point, Point, Point)> {
        use Point::*;
        let (p, n) = (self.config.pct_start, self.total_steps as f64);
        if self.config.three_phase {
            vec![
                (p * n - 1.0, Initial, Max, Max, Min),
                (2.0 * p * n - 2.0, Max, Initial, Min, Max),
                (n - 1.0, Initial, Min, Max, Max),
            ]
        } else {
            vec![
                (p * n - 1.0, Initial, Max, Max, Min),
                (n - 1.0, Max, Min, Min, Max),
            ]
        }
    }

    /// The learning rates of every group and the momentum at `step`.
    fn values_at(&self, step: usize) -> (Vec<f64>, f64) {
        let phases = self.phases();
        let step = step as f64;
        let mut start = 0.0;
        let mut found = phases[phases.len() - 1];
        for (i, ph) in phases.iter().enumerate() {
            if step <= ph.0 || i == phases.len() - 1 {
                found = *ph;
                break;
            }
            start = ph.0;
        }
        let (end, lr0, lr1, m0, m1) = found;
        let pct = (step - start) / (end - start);
        let anneal = self.config.anneal_strategy;
        let lrs = (0..self.core.base_lrs.len())
            .map(|g| {
                let lr = |p: Point| match p {
                    Point::Initial => self.core.base_lrs[g],
                    Point::Max => self.max_lrs[g],
                    Point::Min => self.min_lrs[g],
                };
                anneal.anneal(lr(lr0), lr(lr1), pct)
            })
            .collect();
        let m = |p: Point| match p {
            Point::Min => self.config.base_momentum,
            _ => self.config.max_momentum,
        };
        (lrs, anneal.anneal(m(m0), m(m1), pct))
    }
}

impl LrScheduler for OneCycleLR {
    fn try_step_to(&mut self, opt: &mut dyn Optimizer, epoch: usize) -> Result<()> {
        self.core.check("OneCycleLR", opt)?;
        if epoch > self.total_steps {
            return Err(Error::config(
                "OneCycleLR",
                format!(
                    "tried to step {epoch} times; the specified number of total steps is {}",
                    self.total_steps
                ),
            ));
        }
        let (lrs, momentum) = self.values_at(epoch);
        if self.config.cycle_momentum {
            opt.set_momentum_or_beta1(momentum);
            self.last_momentum = Some(momentum);
        }
        self.core.apply(opt, epoch, lrs);
        Ok(())
    }
    fn last_epoch(&self) -> usize {
        self.core.last_epoch
    }
    fn get_last_lr(&self) -> Vec<f64> {
        self.core.last_lr.clone()
    }
    fn state_dict(&self) -> StateDict {
        let mut sd = self.core.save();
        let c = &self.config;
        push_list(&mut sd, "max_lrs", &self.max_lrs);
        push_list(&mut sd, "min_lrs", &self.min_lrs);
        let linear = c.anneal_strategy == AnnealStrategy::Linear;
        for (k, v) in [
            ("total_steps", self.total_steps as f64),
            ("pct_start", c.pct_start),
            ("anneal_linear", super::state::flag(linear)),
            ("cycle_momentum", super::state::flag(c.cycle_momentum)),
            ("base_momentum", c.base_momentum),
            ("max_momentum", c.max_momentum),
            ("div_factor", c.div_factor),
            ("final_div_factor", c.final_div_factor),
            ("three_phase", super::state::flag(c.three_phase)),
        ] {
            sd.scalars.push((k.into(), v));
        }
        sd
    }
    fn load_state_dict(&mut self, state: &StateDict) -> Result<()> {
        let mut r = Reader::new("OneCycleLR", state);
        let n = self.core.base_lrs.len();
        let mut next = self.clone();
        next.core = Core::load(&mut r, n);
        next.max_lrs = r.list("max_lrs", n);
        next.min_lrs = r.list("min_lrs", n);
        next.total_steps = r.positive("total_steps");
        next.config = OneCycleConfig {
            pct_start: r.f64("pct_start"),
            anneal_strategy: match r.flag("anneal_linear") {
                true => AnnealStrategy::Linear,
                false => AnnealStrategy::Cos,
            },
            cycle_momentum: r.flag("cycle_momentum"),
            base_momentum: r.f64("base_momentum"),
            max_momentum: r.f64("max_momentum"),
            div_factor: r.f64("div_factor"),
            final_div_factor: r.f64("final_div_factor"),
            three_phase: r.flag("three_phase"),
        };
        r.finish()?;
        next.last_momentum =
            (next.config.cycle_momentum).then(|| next.values_at(next.core.last_epoch).1);
        *self = next;
        Ok(())
    }
}

/// Several schedulers one after the other (`torch.optim.lr_scheduler.SequentialLR`):
/// scheduler `k` runs from milestone `k − 1` (epoch 0 for the first), counting its own
/// epochs from 0 there. Build the parts on the same optimizer first, in order; they all
/// schedule from the groups' `initial_lr`.
///
/// ```
/// use flint_runtime::optim::{ExponentialLR, LrScheduler, Optimizer, SequentialLR, Sgd, StepLR};
/// let mut opt = Sgd::new(vec![], 1.0);
/// let a = ExponentialLR::new(&mut opt, 0.5);
/// let b = StepLR::new(&mut opt, 10, 0.1);
/// let mut s = SequentialLR::new(&mut opt, vec![Box::new(a), Box::new(b)], &[2]);
/// let lrs: Vec<f64> = (0..4).map(|_| { let lr = opt.groups()[0].lr; s.step(&mut opt); lr }).collect();
/// assert_eq!(lrs, vec![1.0, 0.5, 1.0, 1.0]);
/// ```
pub struct SequentialLR {
    schedulers: Vec<Box<dyn LrScheduler>>,
    milestones: Vec<usize>,
    last_epoch: usize,
    last_lr: Vec<f64>,
}

impl fmt::Debug for SequentialLR {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SequentialLR")
            .field("schedulers", &self.schedulers.len())
            .field("milestones", &self.milestones)
            .field("last_epoch", &self.last_epoch)
            .field("last_lr", &self.last_lr)
            .finish()
    }
}

impl SequentialLR {
    /// Chains `schedulers` at `milestones`; panics where [`SequentialLR::try_new`]
    /// returns an error.
    #[track_caller]
    pub fn new(
        opt: &mut dyn Optimizer,
        schedulers: Vec<Box<dyn LrScheduler>>,
        milestones: &[usize],
    ) -> Self {
        or_panic(Self::try_new(opt, schedulers, milestones))
    }

    /// Fallible [`SequentialLR::new`]: an error without schedulers, when the number of
    /// milestones is not one less than the number of schedulers, or when the milestones
    /// decrease.
    ///
    /// ```
    /// use flint_runtime::optim::{ExponentialLR, SequentialLR, Sgd};
    /// let mut opt = Sgd::new(vec![], 1.0);
    /// let a = ExponentialLR::new(&mut opt, 0.5);
    /// let err = SequentialLR::try_new(&mut opt, vec![Box::new(a)], &[3]).unwrap_err();
    /// assert!(err.to_string().contains("one milestone fewer than schedulers"));
    /// ```
    pub fn try_new(
        opt: &mut dyn Optimizer,
        schedulers: Vec<Box<dyn LrScheduler>>,
        milestones: &[usize],
    ) -> Result<Self> {
        let op = "SequentialLR";
        if schedulers.is_empty() {
            return Err(Error::config(op, "expects at least one scheduler"));
        }
        if milestones.len() + 1 != schedulers.len() {
            return Err(Error::config(
                op,
                format!(
                    "expects one milestone fewer than schedulers, got {} scheduler(s) and {} milestone(s)",
                    schedulers.len(),
                    milestones.len()
                ),
            ));
        }
        if milestones.windows(2).any(|w| w[0] > w[1]) {
            return Err(Error::config(
                op,
                format!("milestones must not decrease, got {milestones:?}"),
            ));
        }
        start(
            SequentialLR {
                schedulers,
                milestones: milestones.to_vec(),
                last_epoch: 0,
                last_lr: Vec::new(),
            },
            opt,
        )
    }
}

impl LrScheduler for SequentialLR {
    fn try_step_to(&mut self, opt: &mut dyn Optimizer, epoch: usize) -> Result<()> {
        let idx = self.milestones.partition_point(|&m| m <= epoch);
        let from = if idx == 0 {
            0
        } else {
            self.milestones[idx - 1]
        };
        let s = &mut self.schedulers[idx];
        s.try_step_to(opt, epoch - from)?;
        self.last_lr = s.get_last_lr();
        self.last_epoch = epoch;
        Ok(())
    }
    fn last_epoch(&self) -> usize {
        self.last_epoch
    }
    fn get_last_lr(&self) -> Vec<f64> {
        self.last_lr.clone()
    }
    fn state_dict(&self) -> StateDict {
        let mut sd = StateDict::new();
        sd.scalars
            .push(("last_epoch".into(), self.last_epoch as f64));
        push_list(&mut sd, "last_lr", &self.last_lr);
        let m: Vec<f64> = self.milestones.iter().map(|&m| m as f64).collect();
        push_list(&mut sd, "milestones", &m);
        for (k, s) in self.schedulers.iter().enumerate() {
            let sub = s.state_dict().prefixed(&format!("schedulers.{k}"));
            sd.tensors.extend(sub.tensors);
            sd.scalars.extend(sub.scalars);
        }
        sd
    }
    fn load_state_dict(&mut self, state: &StateDict) -> Result<()> {
        let in_sub = |k: &String| {
            let rest = k.strip_prefix("schedulers.")?;
            let (i, _) = rest.split_once('.')?;
            i.parse::<usize>().ok()
        };
        let own = StateDict {
            tensors: (state.tensors.iter())
                .filter(|(k, _)| in_sub(k).is_none())
                .cloned()
                .collect(),
            scalars: (state.scalars.iter())
                .filter(|(k, _)| in_sub(k).is_none())
                .cloned()
                .collect(),
        };
        let mut r = Reader::new("SequentialLR", &own);
        let last_epoch = r.usize("last_epoch");
        let last_lr = r.list("last_lr", self.last_lr.len());
        let milestones = r.list("milestones", self.milestones.len());
        let names = state.tensors.iter().map(|(k, _)| k);
        for k in names.chain(state.scalars.iter().map(|(k, _)| k)) {
            if in_sub(k).is_some_and(|i| i >= self.schedulers.len()) {
                r.problems.push(format!(
                    "unexpected {k} (there are {} schedulers)",
                    self.schedulers.len()
                ));
            }
        }
        if milestones.iter().any(|v| *v < 0.0 || v.fract() != 0.0) {
            r.problems.push(format!(
                "milestones: expected non-negative integers, got {milestones:?}"
            ));
        }
        r.finish()?;
        // Load the parts one by one, putting the earlier ones back if a later one fails.
        let before: Vec<StateDict> = self.schedulers.iter().map(|s| s.state_dict()).collect();
        for k in 0..self.schedulers.len() {
            let sub = state.sub(&format!("schedulers.{k}"));
            if let Err(e) = self.schedulers[k].load_state_dict(&sub) {
                for (s, old) in self.schedulers.iter_mut().zip(&before).take(k) {
                    s.load_state_dict(old)?;
                }
                let e = match e {
                    Error::StateDict(msg) => msg,
                    other => other.to_string(),
                };
                return Err(Error::StateDict(format!(
                    "SequentialLR: schedulers.{k}: {e}"
                )));
            }
        }
        self.last_epoch = last_epoch;
        self.last_lr = last_lr;
        self.milestones = milestones.iter().map(|&m| m as usize).collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{Adagrad, Adam, Sgd};
    use crate::tensor::Tensor;
    use crate::DType;

    // Reference learning rates from torch 2.15 (`~/.venvs/flint-torch/bin/python`), on an
    // SGD (or Adam) optimizer with two groups, lr 0.1 and 0.02; entry k is the value
    // after k scheduler steps (entry 0: right after construction). Values are PyTorch's
    // closed forms where a scheduler has one (recorded after each `s.step()` with
    // `s._get_closed_form_lr()`), else `s.get_last_lr()`:
    //
    //   import torch; from torch.optim import SGD, Adam
    //   from torch.optim.lr_scheduler import *
    //   def opt2(cls=SGD, **kw):
    //       a = torch.nn.Parameter(torch.zeros(1)); b = torch.nn.Parameter(torch.zeros(1))
    //       return cls([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.02}], **kw)
    //   opt = opt2(); s = StepLR(opt, 3, 0.5)              # the scheduler under test
    //   vals = [s._get_closed_form_lr()]
    //   for _ in range(20):
    //       opt.step(); s.step(); vals.append(s._get_closed_form_lr())
    //   # momentum: opt.param_groups[0]["momentum"] (SGD) or ["betas"][0] (Adam)
    //
    // The same run also gave the largest relative difference between the recursive
    // values `s.get_last_lr()` and the closed forms, quoted in the module docs. Flint's
    // values equal these closed forms bit for bit; only the SequentialLR reference, whose
    // cosine part PyTorch steps recursively, differs from Flint's by up to 4e-16
    // relative (checked to 1e-12 like the others).
    /// The reference values (kept three to a line).
    #[rustfmt::skip]
    mod torch {
        // StepLR(step_size=3, gamma=0.5)
        pub const STEP_G0: [f64; 21] = [
            0.1, 0.1, 0.1,
            0.05, 0.05, 0.05,
            0.025, 0.025, 0.025,
            0.0125, 0.0125, 0.0125,
            0.00625, 0.00625, 0.00625,
            0.003125, 0.003125, 0.003125,
            0.0015625, 0.0015625, 0.0015625,
        ];
        pub const STEP_G1: [f64; 21] = [
            0.02, 0.02, 0.02,
            0.01, 0.01, 0.01,
            0.005, 0.005, 0.005,
            0.0025, 0.0025, 0.0025,
            0.00125, 0.00125, 0.00125,
            0.000625, 0.000625, 0.000625,
            0.0003125, 0.0003125, 0.0003125,
        ];
        // MultiStepLR([3, 7, 7, 12], gamma=0.3)
        pub const MULTISTEP_G0: [f64; 21] = [
            0.1, 0.1, 0.1,
            0.03, 0.03, 0.03,
            0.03, 0.0026999999999999997, 0.0026999999999999997,
            0.0026999999999999997, 0.0026999999999999997, 0.0026999999999999997,
            0.00081, 0.00081, 0.00081,
            0.00081, 0.00081, 0.00081,
            0.00081, 0.00081, 0.00081,
        ];
        pub const MULTISTEP_G1: [f64; 21] = [
            0.02, 0.02, 0.02,
            0.006, 0.006, 0.006,
            0.006, 0.0005399999999999999, 0.0005399999999999999,
            0.0005399999999999999, 0.0005399999999999999, 0.0005399999999999999,
            0.000162, 0.000162, 0.000162,
            0.000162, 0.000162, 0.000162,
            0.000162, 0.000162, 0.000162,
        ];
        // ExponentialLR(gamma=0.9)
        pub const EXP_G0: [f64; 26] = [
            0.1, 0.09000000000000001, 0.08100000000000002,
            0.0729, 0.06561, 0.05904900000000001,
            0.05314410000000001, 0.04782969000000001, 0.04304672100000001,
            0.03874204890000001, 0.03486784401000001, 0.031381059609000006,
            0.028242953648100012, 0.02541865828329001, 0.02287679245496101,
            0.02058911320946491, 0.018530201888518418, 0.016677181699666577,
            0.015009463529699918, 0.013508517176729929, 0.012157665459056936,
            0.010941898913151242, 0.00984770902183612, 0.008862938119652507,
            0.007976644307687256, 0.00717897987691853,
        ];
        pub const EXP_G1: [f64; 26] = [
            0.02, 0.018000000000000002, 0.016200000000000003,
            0.014580000000000003, 0.013122, 0.011809800000000002,
            0.01062882, 0.009565938000000001, 0.008609344200000002,
            0.007748409780000002, 0.006973568802000002, 0.006276211921800001,
            0.005648590729620003, 0.005083731656658002, 0.004575358490992202,
            0.004117822641892982, 0.0037060403777036833, 0.0033354363399333152,
            0.0030018927059399835, 0.0027017034353459856, 0.002431533091811387,
            0.0021883797826302486, 0.0019695418043672234, 0.0017725876239305014,
            0.0015953288615374512, 0.001435795975383706,
        ];
        // CosineAnnealingLR(T_max=10, eta_min=0.001)
        pub const COSINE_G0: [f64; 31] = [
            0.1, 0.09757729755661011, 0.0905463412215599,
            0.07959536998847742, 0.0657963412215599, 0.0505,
            0.03520365877844011, 0.021404630011522586, 0.010453658778440109,
            0.0034227024433899004, 0.001, 0.003422702443389889,
            0.010453658778440095, 0.021404630011522575, 0.035203658778440096,
            0.05049999999999999, 0.06579634122155989, 0.07959536998847741,
            0.0905463412215599, 0.09757729755661011, 0.1,
            0.09757729755661011, 0.09054634122155994, 0.07959536998847744,
            0.06579634122155992, 0.05050000000000002, 0.03520365877844012,
            0.021404630011522593, 0.010453658778440112, 0.0034227024433899056,
            0.001,
        ];
        pub const COSINE_G1: [f64; 31] = [
            0.02, 0.01953503690480396, 0.018185661446562,
            0.016083959896778494, 0.013435661446562, 0.010499999999999999,
            0.007564338553438, 0.004916040103221506, 0.0028143385534380003,
            0.0014649630951960415, 0.001, 0.0014649630951960393,
            0.002814338553437998, 0.004916040103221504, 0.007564338553437998,
            0.010499999999999999, 0.013435661446561997, 0.016083959896778494,
            0.018185661446562, 0.01953503690480396, 0.02,
            0.01953503690480396, 0.01818566144656201, 0.016083959896778497,
            0.013435661446562004, 0.010500000000000002, 0.007564338553438002,
            0.004916040103221507, 0.0028143385534380016, 0.0014649630951960426,
            0.001,
        ];
        // LinearLR(start_factor=0.25, end_factor=1.0, total_iters=8)
        pub const LINEAR_UP_G0: [f64; 16] = [
            0.025, 0.034375, 0.043750000000000004,
            0.053125000000000006, 0.0625, 0.07187500000000001,
            0.08125, 0.09062500000000001, 0.1,
            0.1, 0.1, 0.1,
            0.1, 0.1, 0.1,
            0.1,
        ];
        pub const LINEAR_UP_G1: [f64; 16] = [
            0.005, 0.006875, 0.00875,
            0.010625, 0.0125, 0.014375,
            0.01625, 0.018125, 0.02,
            0.02, 0.02, 0.02,
            0.02, 0.02, 0.02,
            0.02,
        ];
        // LinearLR(start_factor=1.0, end_factor=0.1, total_iters=6)
        pub const LINEAR_DOWN_G0: [f64; 11] = [
            0.1, 0.085, 0.06999999999999999,
            0.05500000000000001, 0.04000000000000001, 0.025,
            0.009999999999999998, 0.009999999999999998, 0.009999999999999998,
            0.009999999999999998, 0.009999999999999998,
        ];
        pub const LINEAR_DOWN_G1: [f64; 11] = [
            0.02, 0.017, 0.013999999999999999,
            0.011000000000000001, 0.008, 0.005,
            0.0019999999999999996, 0.0019999999999999996, 0.0019999999999999996,
            0.0019999999999999996, 0.0019999999999999996,
        ];
        // LambdaLR(lambda e
        pub const LAMBDA_G0: [f64; 21] = [
            0.1, 0.06666666666666667, 0.05,
            0.04000000000000001, 0.03333333333333333, 0.02857142857142857,
            0.025, 0.022222222222222223, 0.020000000000000004,
            0.018181818181818184, 0.016666666666666666, 0.015384615384615385,
            0.014285714285714285, 0.013333333333333334, 0.0125,
            0.011764705882352941, 0.011111111111111112, 0.010526315789473684,
            0.010000000000000002, 0.009523809523809525, 0.009090909090909092,
        ];
        pub const LAMBDA_G1: [f64; 21] = [
            0.02, 0.013333333333333332, 0.01,
            0.008, 0.006666666666666666, 0.005714285714285714,
            0.005, 0.0044444444444444444, 0.004,
            0.0036363636363636364, 0.003333333333333333, 0.0030769230769230774,
            0.002857142857142857, 0.0026666666666666666, 0.0025,
            0.0023529411764705885, 0.0022222222222222222, 0.002105263157894737,
            0.002, 0.0019047619047619048, 0.0018181818181818182,
        ];
        // SequentialLR([LinearLR(0.1, 1.0, 5), CosineAnnealingLR(15, 1e-4)], [5])
        pub const SEQUENTIAL_G0: [f64; 26] = [
            0.010000000000000002, 0.028000000000000004, 0.046000000000000006,
            0.064, 0.082, 0.1,
            0.0989084726566536, 0.09568159560924792, 0.09046039886902864,
            0.08347307378762497, 0.07502500000000001, 0.06548539886902864,
            0.05527119674021931, 0.04482880325978073, 0.034614601130971395,
            0.025075000000000017, 0.016626926212375052, 0.009639601130971382,
            0.0044184043907520825, 0.0011915273433464062, 0.0001,
            0.001191527343346406, 0.004418404390752088, 0.009639601130971369,
            0.01662692621237502, 0.02507499999999998,
        ];
        pub const SEQUENTIAL_G1: [f64; 26] = [
            0.002, 0.0056, 0.0092,
            0.012799999999999999, 0.016399999999999998, 0.02,
            0.019782568627301367, 0.019139777303543878, 0.018099719094030728,
            0.01670784953327064, 0.015025, 0.013124719094030728,
            0.011090058209513153, 0.00900994179048685, 0.006975280905969276,
            0.005075000000000003, 0.003392150466729364, 0.0020002809059692737,
            0.0009602226964561203, 0.0003174313726986334, 0.0001,
            0.0003174313726986334, 0.0009602226964561216, 0.002000280905969272,
            0.0033921504667293587, 0.005074999999999997,
        ];
        // OneCycleLR(max_lr=[0.5, 0.1], total_steps=30) on SGD(momentum=0.9)
        pub const ONECYCLE_SGD_G0: [f64; 30] = [
            0.020000000000000018, 0.03826891219729123, 0.09029437251522865,
            0.16815597623237843, 0.26, 0.3518440237676215,
            0.42970562748477137, 0.4817310878027088, 0.5,
            0.49720771772545586, 0.4888932458737294, 0.47524231600673683,
            0.4565598673402244, 0.4332632349055847, 0.40587282697488153,
            0.3750005, 0.34133589075057447, 0.30563101096814466,
            0.2686834486665125, 0.23131855133348753, 0.19437098903185537,
            0.15866610924942562, 0.12500150000000004, 0.09412917302511849,
            0.0667387650944153, 0.043442132659775645, 0.024759683993263143,
            0.01110875412627059, 0.002794282274544094, 2e-06,
        ];
        pub const ONECYCLE_SGD_G1: [f64; 30] = [
            0.0040000000000000036, 0.0076537824394582454, 0.018058874503045733,
            0.03363119524647569, 0.052000000000000005, 0.0703688047535243,
            0.08594112549695429, 0.09634621756054176, 0.1,
            0.09944154354509119, 0.0977786491747459, 0.09504846320134738,
            0.09131197346804489, 0.08665264698111695, 0.0811745653949763,
            0.0750001, 0.06826717815011489, 0.06112620219362893,
            0.0537366897333025, 0.046263710266697504, 0.03887419780637107,
            0.03173322184988512, 0.025000300000000013, 0.0188258346050237,
            0.01334775301888306, 0.008688426531955128, 0.004951936798652629,
            0.002221750825254118, 0.0005588564549088189, 4e-07,
        ];
        pub const ONECYCLE_SGD_MOM: [f64; 30] = [
            0.95, 0.9461939766255643, 0.9353553390593273,
            0.9191341716182544, 0.8999999999999999, 0.8808658283817454,
            0.8646446609406726, 0.8538060233744357, 0.85,
            0.8505584586887436, 0.8522213597106929, 0.854951556604879,
            0.8586880612842003, 0.8633474064085087, 0.8688255099070633,
            0.875, 0.8817329487816802, 0.8888739533021842,
            0.8962634953206787, 0.9037365046793212, 0.9111260466978157,
            0.9182670512183198, 0.9249999999999999, 0.9311744900929366,
            0.9366525935914912, 0.9413119387157997, 0.945048443395121,
            0.947778640289307, 0.9494415413112564, 0.95,
        ];
        // OneCycleLR(max_lr=[0.5, 0.1], total_steps=25, anneal_strategy='linear', three_phase=True, pct_start=0.25) on Adam
        pub const ONECYCLE_ADAM_G0: [f64; 25] = [
            0.02, 0.11142857142857142, 0.20285714285714282,
            0.29428571428571426, 0.3857142857142857, 0.4771428571428571,
            0.43142857142857144, 0.34, 0.24857142857142855,
            0.15714285714285714, 0.06571428571428573, 0.019259333333333333,
            0.017778000000000002, 0.016296666666666668, 0.014815333333333333,
            0.013334, 0.011852666666666668, 0.010371333333333333,
            0.008889999999999999, 0.007408666666666666, 0.005927333333333331,
            0.0044459999999999986, 0.002964666666666664, 0.001483333333333333,
            1.9999999999985307e-06,
        ];
        pub const ONECYCLE_ADAM_G1: [f64; 25] = [
            0.004, 0.022285714285714284, 0.040571428571428564,
            0.05885714285714286, 0.07714285714285714, 0.09542857142857143,
            0.0862857142857143, 0.068, 0.04971428571428572,
            0.03142857142857143, 0.01314285714285715, 0.003851866666666667,
            0.0035556, 0.0032593333333333337, 0.0029630666666666666,
            0.0026668000000000004, 0.0023705333333333333, 0.002074266666666667,
            0.001778, 0.0014817333333333334, 0.0011854666666666668,
            0.0008892000000000001, 0.0005929333333333335, 0.00029666666666666687,
            4.0000000000022656e-07,
        ];
        pub const ONECYCLE_ADAM_MOM: [f64; 25] = [
            0.95, 0.9309523809523809, 0.9119047619047619,
            0.8928571428571428, 0.8738095238095238, 0.8547619047619047,
            0.8642857142857142, 0.8833333333333333, 0.9023809523809524,
            0.9214285714285714, 0.9404761904761905, 0.95,
            0.95, 0.95, 0.95,
            0.95, 0.95, 0.95,
            0.95, 0.95, 0.95,
            0.95, 0.95, 0.95,
            0.95,
        ];
    }
    use torch::*;

    fn two_groups_sgd() -> Sgd {
        let p = || Tensor::zeros([1], DType::F64).requires_grad_(true);
        let mut opt = Sgd::new(vec![p()], 0.1);
        opt.add_param_group(vec![p()], 0.02);
        opt
    }

    fn two_groups_adam() -> Adam {
        let p = || Tensor::zeros([1], DType::F64).requires_grad_(true);
        let mut opt = Adam::new(vec![p()], 0.1);
        opt.add_param_group(vec![p()], 0.02);
        opt
    }

    fn assert_rel(what: &str, got: f64, want: f64) {
        assert!(
            (got - want).abs() <= 1e-12 * want.abs(),
            "{what}: got {got:e}, PyTorch {want:e}"
        );
    }

    /// Steps `s` through the reference values (the first is the value after
    /// construction) and checks the scheduler's and the optimizer's learning rates.
    fn check(name: &str, s: &mut dyn LrScheduler, opt: &mut dyn Optimizer, g0: &[f64], g1: &[f64]) {
        for k in 0..g0.len() {
            if k > 0 {
                s.step(opt);
            }
            assert_eq!(s.last_epoch(), k, "{name}");
            let got = s.get_last_lr();
            assert_rel(&format!("{name} epoch {k} group 0"), got[0], g0[k]);
            assert_rel(&format!("{name} epoch {k} group 1"), got[1], g1[k]);
            assert_eq!(got, vec![opt.groups()[0].lr, opt.groups()[1].lr]);
        }
    }

    #[test]
    fn step_lr_matches_pytorch() {
        let mut opt = two_groups_sgd();
        let mut s = StepLR::new(&mut opt, 3, 0.5);
        check("StepLR", &mut s, &mut opt, &STEP_G0, &STEP_G1);
    }

    #[test]
    fn multi_step_lr_matches_pytorch() {
        let mut opt = two_groups_sgd();
        let mut s = MultiStepLR::new(&mut opt, &[7, 3, 12, 7], 0.3);
        check(
            "MultiStepLR",
            &mut s,
            &mut opt,
            &MULTISTEP_G0,
            &MULTISTEP_G1,
        );
    }

    #[test]
    fn exponential_lr_matches_pytorch() {
        let mut opt = two_groups_sgd();
        let mut s = ExponentialLR::new(&mut opt, 0.9);
        check("ExponentialLR", &mut s, &mut opt, &EXP_G0, &EXP_G1);
    }

    #[test]
    fn cosine_annealing_lr_matches_pytorch_past_t_max() {
        let mut opt = two_groups_sgd();
        let mut s = CosineAnnealingLR::new(&mut opt, 10, 0.001);
        check(
            "CosineAnnealingLR",
            &mut s,
            &mut opt,
            &COSINE_G0,
            &COSINE_G1,
        );
        // epoch 10 is exactly eta_min, epoch 20 exactly back at the base lr
        assert_eq!((COSINE_G0[10], COSINE_G0[20]), (0.001, 0.1));
    }

    #[test]
    fn linear_lr_matches_pytorch_up_and_down() {
        let mut opt = two_groups_sgd();
        let mut s = LinearLR::new(&mut opt, 0.25, 1.0, 8);
        check(
            "LinearLR up",
            &mut s,
            &mut opt,
            &LINEAR_UP_G0,
            &LINEAR_UP_G1,
        );
        let mut opt = two_groups_sgd();
        let mut s = LinearLR::new(&mut opt, 1.0, 0.1, 6);
        check(
            "LinearLR down",
            &mut s,
            &mut opt,
            &LINEAR_DOWN_G0,
            &LINEAR_DOWN_G1,
        );
    }

    #[test]
    fn lambda_lr_matches_pytorch() {
        let mut opt = two_groups_sgd();
        let mut s = LambdaLR::new(&mut opt, |e| 1.0 / (1.0 + 0.5 * e as f64));
        check("LambdaLR", &mut s, &mut opt, &LAMBDA_G0, &LAMBDA_G1);
    }

    #[test]
    fn lambda_lr_per_group() {
        let mut opt = two_groups_sgd();
        let half: LrLambda = Arc::new(|e| 0.5f64.powi(e as i32));
        let linear: LrLambda = Arc::new(|e| 1.0 / (e + 1) as f64);
        let mut s = LambdaLR::try_per_group(&mut opt, vec![half, linear]).unwrap();
        for _ in 0..3 {
            s.step(&mut opt);
        }
        assert_eq!(s.get_last_lr(), vec![0.1 * 0.125, 0.02 * 0.25]);
    }

    fn warmup_cosine(opt: &mut dyn Optimizer) -> SequentialLR {
        let warmup = LinearLR::new(opt, 0.1, 1.0, 5);
        let cosine = CosineAnnealingLR::new(opt, 15, 1e-4);
        SequentialLR::new(opt, vec![Box::new(warmup), Box::new(cosine)], &[5])
    }

    #[test]
    fn sequential_warmup_then_cosine_matches_pytorch() {
        let mut opt = two_groups_sgd();
        let mut s = warmup_cosine(&mut opt);
        // both parts scheduled from the original lrs, kept in initial_lr
        assert_eq!(opt.groups()[0].initial_lr, Some(0.1));
        assert_eq!(opt.groups()[1].initial_lr, Some(0.02));
        check(
            "SequentialLR",
            &mut s,
            &mut opt,
            &SEQUENTIAL_G0,
            &SEQUENTIAL_G1,
        );
    }

    #[test]
    fn one_cycle_cos_cycles_sgd_momentum_like_pytorch() {
        let mut opt = two_groups_sgd().momentum(0.9);
        let config = OneCycleConfig::default();
        let mut s = OneCycleLR::with_config(&mut opt, &[0.5, 0.1], 30, config);
        assert_eq!(opt.groups()[0].initial_lr, Some(0.02));
        for (k, want) in ONECYCLE_SGD_MOM.iter().enumerate() {
            if k > 0 {
                s.step(&mut opt);
            }
            assert_rel(&format!("momentum at {k}"), opt.momentum, *want);
            assert_eq!(s.get_last_momentum(), Some(opt.momentum));
        }
        let mut opt = two_groups_sgd().momentum(0.9);
        let mut s = OneCycleLR::with_config(&mut opt, &[0.5, 0.1], 30, config);
        check(
            "OneCycleLR",
            &mut s,
            &mut opt,
            &ONECYCLE_SGD_G0,
            &ONECYCLE_SGD_G1,
        );
        // PyTorch allows one more step (to total_steps), then refuses
        s.step(&mut opt);
        let err = s.try_step(&mut opt).unwrap_err();
        assert!(
            err.to_string().contains("tried to step 31 times")
                && err.to_string().contains("total steps is 30"),
            "{err}"
        );
        assert_eq!(s.last_epoch(), 30);
    }

    #[test]
    fn one_cycle_linear_three_phase_cycles_adam_beta1_like_pytorch() {
        let config = OneCycleConfig {
            anneal_strategy: AnnealStrategy::Linear,
            three_phase: true,
            pct_start: 0.25,
            ..Default::default()
        };
        let mut opt = two_groups_adam();
        let mut s = OneCycleLR::with_config(&mut opt, &[0.5, 0.1], 25, config);
        for (k, want) in ONECYCLE_ADAM_MOM.iter().enumerate() {
            if k > 0 {
                s.step(&mut opt);
            }
            assert_rel(&format!("beta1 at {k}"), opt.betas.0, *want);
            assert_eq!(opt.betas.1, 0.999);
        }
        let mut opt = two_groups_adam();
        let mut s = OneCycleLR::with_config(&mut opt, &[0.5, 0.1], 25, config);
        check(
            "OneCycleLR",
            &mut s,
            &mut opt,
            &ONECYCLE_ADAM_G0,
            &ONECYCLE_ADAM_G1,
        );
    }

    #[test]
    fn one_cycle_without_momentum_cycling_leaves_momentum_alone() {
        let mut opt = Adagrad::new(vec![], 0.1);
        let config = OneCycleConfig {
            cycle_momentum: false,
            ..Default::default()
        };
        let mut s = OneCycleLR::with_config(&mut opt, &[1.0], 10, config);
        s.step(&mut opt);
        assert_eq!(s.get_last_momentum(), None);
        let mut sgd = Sgd::new(vec![], 0.1).momentum(0.5);
        OneCycleLR::with_config(&mut sgd, &[1.0], 10, config);
        assert_eq!(sgd.momentum, 0.5);
    }

    #[test]
    fn invalid_configurations_are_errors() {
        let mut opt = two_groups_sgd();
        let msg = |r: Result<()>| r.unwrap_err().to_string();
        assert!(msg(StepLR::try_new(&mut opt, 0, 0.1).map(drop)).contains("step_size"));
        assert!(msg(CosineAnnealingLR::try_new(&mut opt, 0, 0.0).map(drop)).contains("T_max"));
        assert!(msg(LinearLR::try_new(&mut opt, 1.5, 1.0, 3).map(drop)).contains("start_factor"));
        assert!(msg(LinearLR::try_new(&mut opt, 0.5, -0.1, 3).map(drop)).contains("end_factor"));
        assert!(msg(LinearLR::try_new(&mut opt, 0.5, 1.0, 0).map(drop)).contains("total_iters"));
        assert!(msg(OneCycleLR::try_new(&mut opt, 1.0, 0).map(drop)).contains("total_steps"));
        let bad_pct = OneCycleConfig {
            pct_start: 1.5,
            ..Default::default()
        };
        let r = OneCycleLR::try_with_config(&mut opt, &[1.0], 10, bad_pct);
        assert!(msg(r.map(drop)).contains("pct_start"));
        let f: LrLambda = Arc::new(|_| 1.0);
        assert!(msg(LambdaLR::try_per_group(&mut opt, vec![f]).map(drop)).contains("expected 2"));
        let a = ExponentialLR::new(&mut opt, 0.5);
        let b = ExponentialLR::new(&mut opt, 0.5);
        let c = ExponentialLR::new(&mut opt, 0.5);
        let r = SequentialLR::try_new(&mut opt, vec![Box::new(a), Box::new(b)], &[]);
        assert!(msg(r.map(drop)).contains("one milestone fewer"));
        let r = SequentialLR::try_new(&mut opt, vec![], &[]);
        assert!(msg(r.map(drop)).contains("at least one"));
        let (a, b) = (
            ExponentialLR::new(&mut opt, 0.5),
            ExponentialLR::new(&mut opt, 0.5),
        );
        let r = SequentialLR::try_new(
            &mut opt,
            vec![Box::new(a), Box::new(b), Box::new(c)],
            &[4, 2],
        );
        assert!(msg(r.map(drop)).contains("must not decrease"));
    }

    #[test]
    fn a_group_added_after_construction_is_an_error_not_a_panic() {
        let mut opt = two_groups_sgd();
        let mut s = ExponentialLR::new(&mut opt, 0.5);
        opt.add_param_group(vec![Tensor::zeros([1], ())], 1.0);
        let err = s.try_step(&mut opt).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ExponentialLR: the scheduler was built for 2 parameter group(s) but the optimizer has 3"
        );
        assert_eq!(s.last_epoch(), 0);
    }

    #[test]
    #[should_panic(expected = "OneCycleLR: tried to step 2 times")]
    fn step_panics_with_the_error() {
        let mut opt = Sgd::new(vec![], 0.1);
        let mut s = OneCycleLR::new(&mut opt, 1.0, 1);
        s.step(&mut opt);
        s.step(&mut opt);
    }

    /// Runs `make` for `n` steps straight, and for `k` steps, saves, builds a fresh one on
    /// a fresh optimizer, loads and runs the rest: the learning rates must be identical.
    fn resume_identically(
        make: &dyn Fn(&mut dyn Optimizer) -> Box<dyn LrScheduler>,
        n: usize,
        k: usize,
    ) {
        let mut opt = two_groups_sgd().momentum(0.9);
        let mut s = make(&mut opt);
        let straight: Vec<Vec<f64>> = (0..n)
            .map(|_| {
                s.step(&mut opt);
                s.get_last_lr()
            })
            .collect();
        let mut opt = two_groups_sgd().momentum(0.9);
        let mut s = make(&mut opt);
        for _ in 0..k {
            s.step(&mut opt);
        }
        let saved = s.state_dict();
        let mut opt2 = two_groups_sgd().momentum(0.9);
        let mut resumed = make(&mut opt2);
        resumed.load_state_dict(&saved).unwrap();
        assert_eq!(resumed.last_epoch(), k);
        assert_eq!(resumed.get_last_lr(), straight[k - 1]);
        for (i, want) in straight.iter().enumerate().skip(k) {
            resumed.step(&mut opt2);
            assert_eq!(&resumed.get_last_lr(), want, "step {}", i + 1);
            assert_eq!(opt2.groups()[1].lr, want[1]);
        }
    }

    #[test]
    fn every_scheduler_resumes_from_its_state_dict() {
        resume_identically(&|o| Box::new(StepLR::new(o, 3, 0.5)), 12, 4);
        resume_identically(&|o| Box::new(MultiStepLR::new(o, &[2, 5, 5], 0.3)), 12, 3);
        resume_identically(&|o| Box::new(ExponentialLR::new(o, 0.9)), 12, 5);
        resume_identically(&|o| Box::new(CosineAnnealingLR::new(o, 10, 1e-3)), 12, 7);
        resume_identically(&|o| Box::new(LinearLR::new(o, 0.2, 1.0, 6)), 12, 2);
        resume_identically(
            &|o| Box::new(LambdaLR::new(o, |e| 0.9f64.powf(e as f64))),
            12,
            6,
        );
        resume_identically(&|o| Box::new(warmup_cosine(o)), 24, 3);
        resume_identically(&|o| Box::new(warmup_cosine(o)), 24, 9);
        resume_identically(&|o| Box::new(OneCycleLR::new(o, 0.5, 20)), 20, 8);
    }

    #[test]
    fn loaded_settings_replace_the_constructed_ones() {
        let mut opt = two_groups_sgd();
        let mut s = StepLR::new(&mut opt, 2, 0.5);
        s.step(&mut opt);
        let mut other = StepLR::new(&mut two_groups_sgd(), 7, 0.9);
        other.load_state_dict(&s.state_dict()).unwrap();
        assert_eq!(
            (other.step_size, other.gamma, other.last_epoch()),
            (2, 0.5, 1)
        );
        let mut opt = two_groups_sgd().momentum(0.9);
        let mut s = OneCycleLR::new(&mut opt, 0.5, 20);
        s.step(&mut opt);
        let mut other = OneCycleLR::new(&mut two_groups_sgd(), 3.0, 50);
        other.load_state_dict(&s.state_dict()).unwrap();
        assert_eq!(other.total_steps(), 20);
        assert_eq!(other.get_last_momentum(), s.get_last_momentum());
    }

    #[test]
    fn scheduler_load_errors_list_every_problem() {
        let mut opt = two_groups_sgd();
        let s = StepLR::new(&mut opt, 2, 0.5);
        let saved = s.state_dict();
        // a scheduler over one group gets a two-group state
        let mut one = Sgd::new(vec![Tensor::zeros([1], ())], 0.1);
        let mut s1 = StepLR::new(&mut one, 2, 0.5);
        let err = s1.load_state_dict(&saved).unwrap_err().to_string();
        assert_eq!(
            err,
            "state dict: StepLR: unexpected base_lrs.1; unexpected last_lr.1"
        );
        // another kind of scheduler
        let mut cos = CosineAnnealingLR::new(&mut opt, 10, 0.0);
        let err = cos.load_state_dict(&saved).unwrap_err().to_string();
        assert_eq!(
            err,
            "state dict: CosineAnnealingLR: missing T_max; missing eta_min; \
             unexpected step_size; unexpected gamma"
        );
        assert_eq!(cos.t_max, 10);
        // malformed counters
        let mut bad = saved.clone();
        bad.scalars[0].1 = -1.0;
        bad.scalars.retain(|(k, _)| k != "step_size");
        let mut s2 = StepLR::new(&mut opt, 2, 0.5);
        let err = s2.load_state_dict(&bad).unwrap_err().to_string();
        assert_eq!(
            err,
            "state dict: StepLR: last_epoch: expected a non-negative integer, got -1; \
             missing step_size"
        );
        // a SequentialLR with parts that do not fit is left as it was
        let mut seq = warmup_cosine(&mut opt);
        seq.step(&mut opt);
        let mut seq_state = seq.state_dict();
        seq_state
            .scalars
            .retain(|(k, _)| k != "schedulers.1.eta_min");
        seq_state
            .scalars
            .push(("schedulers.2.last_epoch".into(), 0.0));
        let mut fresh = warmup_cosine(&mut two_groups_sgd());
        let err = fresh.load_state_dict(&seq_state).unwrap_err().to_string();
        assert!(err.contains("unexpected schedulers.2.last_epoch"), "{err}");
        seq_state.scalars.pop();
        let err = fresh.load_state_dict(&seq_state).unwrap_err().to_string();
        assert_eq!(
            err,
            "state dict: SequentialLR: schedulers.1: CosineAnnealingLR: missing eta_min"
        );
        assert_eq!(fresh.last_epoch(), 0);
        assert_eq!(fresh.schedulers[0].last_epoch(), 0);
    }
}
