//! Saving and restoring optimizer and scheduler state: [`StateDict`], a flat list of
//! named tensors and named `f64` scalars, ready to be written into a checkpoint.
//!
//! An optimizer's state dict follows `torch.optim.Optimizer.state_dict()`, flattened:
//!
//! - `state.{i}.{slot}` (tensors): the state of parameter `i`, counting the parameters of
//!   every group in order (PyTorch's integer keys), e.g. `state.0.exp_avg`,
//!   `state.0.step`, `state.3.momentum_buffer`. Counters and per-parameter scalars
//!   (`step`, ASGD's `eta` and `mu`) are 0-dimensional `F64` tensors, like PyTorch's
//!   `step` tensors. A parameter that has not been updated yet has no entries.
//! - `param_groups.{g}.lr`, `param_groups.{g}.num_params` and, once a scheduler has
//!   set it, `param_groups.{g}.initial_lr` (scalars).
//! - `defaults.{name}` (scalars): the optimizer's hyper-parameters (`momentum`,
//!   `betas.0`, `weight_decay`, …; flags such as `nesterov` as `0.0`/`1.0`). They are
//!   shared by all groups in Flint, so they are saved once rather than per group.
//!
//! The tensors share storage with the optimizer's state at the time of the call; the
//! optimizers replace their state tensors at every step instead of writing into them,
//! so a saved dict keeps its values while training goes on.
//!
//! In a safetensors checkpoint the tensors go in as they are and the scalars as
//! metadata (an `f64` printed with `{}` parses back to the same bits) or as
//! 0-dimensional `F64` tensors.

use std::collections::{BTreeMap, BTreeSet};

use super::{ParamGroup, Slots};
use crate::autograd::NoGradGuard;
use crate::error::{Error, Result};
use crate::layout::fmt_shape;
use crate::tensor::Tensor;

/// The saved state of an optimizer or a learning-rate scheduler: named tensors and named
/// scalars (see the [module docs](self) for the names an optimizer uses).
///
/// ```
/// use flint_runtime::optim::{Adam, Optimizer};
/// use flint_runtime::Tensor;
/// let w = Tensor::from_vec(vec![1.0f64, 2.0], [2]).requires_grad_(true);
/// let mut opt = Adam::new(vec![w.clone()], 0.1);
/// (&w * &w).sum_all().backward();
/// opt.step();
/// let sd = opt.state_dict();
/// assert_eq!(sd.tensor("state.0.step").unwrap().item::<f64>(), 1.0);
/// assert_eq!(sd.tensor("state.0.exp_avg").unwrap().shape(), &[2]);
/// assert_eq!(sd.scalar("param_groups.0.lr"), Some(0.1));
/// assert_eq!(sd.scalar("defaults.betas.0"), Some(0.9));
/// ```
#[derive(Clone, Debug, Default)]
pub struct StateDict {
    /// Named tensors (optimizer slots such as `state.0.exp_avg`).
    pub tensors: Vec<(String, Tensor)>,
    /// Named scalars (learning rates, hyper-parameters, scheduler counters).
    pub scalars: Vec<(String, f64)>,
}

impl StateDict {
    /// An empty state dict.
    ///
    /// ```
    /// assert!(flint_runtime::optim::StateDict::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// True when there is neither a tensor nor a scalar.
    ///
    /// ```
    /// use flint_runtime::optim::StateDict;
    /// let mut sd = StateDict::new();
    /// sd.scalars.push(("last_epoch".into(), 3.0));
    /// assert!(!sd.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty() && self.scalars.is_empty()
    }

    /// The tensor called `name`, if any.
    ///
    /// ```
    /// use flint_runtime::{optim::StateDict, Tensor};
    /// let mut sd = StateDict::new();
    /// sd.tensors.push(("state.0.sum".into(), Tensor::zeros([2], ())));
    /// assert_eq!(sd.tensor("state.0.sum").unwrap().shape(), &[2]);
    /// assert!(sd.tensor("state.1.sum").is_none());
    /// ```
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(k, _)| k == name).map(|(_, t)| t)
    }

    /// The scalar called `name`, if any.
    ///
    /// ```
    /// use flint_runtime::optim::StateDict;
    /// let mut sd = StateDict::new();
    /// sd.scalars.push(("gamma".into(), 0.5));
    /// assert_eq!(sd.scalar("gamma"), Some(0.5));
    /// assert_eq!(sd.scalar("step_size"), None);
    /// ```
    pub fn scalar(&self, name: &str) -> Option<f64> {
        self.scalars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }

    /// The same entries with `prefix.` put in front of every name (to store several
    /// state dicts in one checkpoint).
    ///
    /// ```
    /// use flint_runtime::optim::StateDict;
    /// let mut sd = StateDict::new();
    /// sd.scalars.push(("last_epoch".into(), 2.0));
    /// assert_eq!(sd.prefixed("scheduler").scalar("scheduler.last_epoch"), Some(2.0));
    /// ```
    pub fn prefixed(&self, prefix: &str) -> StateDict {
        StateDict {
            tensors: (self.tensors.iter())
                .map(|(k, t)| (format!("{prefix}.{k}"), t.clone()))
                .collect(),
            scalars: (self.scalars.iter())
                .map(|(k, v)| (format!("{prefix}.{k}"), *v))
                .collect(),
        }
    }

    /// The entries whose names start with `prefix.`, with that prefix removed (the
    /// inverse of [`StateDict::prefixed`]).
    ///
    /// ```
    /// use flint_runtime::optim::StateDict;
    /// let mut sd = StateDict::new();
    /// sd.scalars.push(("scheduler.last_epoch".into(), 2.0));
    /// sd.scalars.push(("other".into(), 1.0));
    /// let sub = sd.sub("scheduler");
    /// assert_eq!(sub.scalars, vec![("last_epoch".to_string(), 2.0)]);
    /// ```
    pub fn sub(&self, prefix: &str) -> StateDict {
        let p = format!("{prefix}.");
        let strip = |k: &String| k.strip_prefix(&p).map(str::to_string);
        StateDict {
            tensors: (self.tensors.iter())
                .filter_map(|(k, t)| Some((strip(k)?, t.clone())))
                .collect(),
            scalars: (self.scalars.iter())
                .filter_map(|(k, v)| Some((strip(k)?, *v)))
                .collect(),
        }
    }
}

/// Per-parameter optimizer state that can be saved under slot names and rebuilt.
pub(crate) trait SlotState: Sized {
    /// Appends `(slot name, tensor)` for every slot.
    fn save(&self, out: &mut Vec<(&'static str, Tensor)>);
    /// Rebuilds the state from the slots `r` hands out (problems are recorded in `r`; the
    /// value returned then is never used).
    fn load(r: &mut SlotReader<'_>) -> Self;
}

/// SGD's momentum buffer.
impl SlotState for Tensor {
    fn save(&self, out: &mut Vec<(&'static str, Tensor)>) {
        out.push(("momentum_buffer", self.clone()));
    }
    fn load(r: &mut SlotReader<'_>) -> Self {
        r.tensor("momentum_buffer")
    }
}

/// A counter saved as a 0-dimensional `F64` tensor.
pub(crate) fn count_tensor(n: u64) -> Tensor {
    Tensor::scalar(n as f64)
}

/// Hands the saved slots of one parameter to [`SlotState::load`], checking shapes and
/// converting to the parameter's dtype and device.
pub(crate) struct SlotReader<'a> {
    prefix: String,
    param: &'a Tensor,
    entries: BTreeMap<&'a str, &'a Tensor>,
    used: BTreeSet<&'a str>,
    problems: &'a mut Vec<String>,
}

impl SlotReader<'_> {
    fn take(&mut self, slot: &str) -> Option<&Tensor> {
        let (k, t) = self.entries.get_key_value(slot)?;
        self.used.insert(k);
        Some(t)
    }

    fn convert(&mut self, slot: &str, t: &Tensor) -> Tensor {
        let p = self.param;
        if t.shape() != p.shape() {
            self.problems.push(format!(
                "{}.{slot}: expected shape {} (the parameter's), got {}",
                self.prefix,
                fmt_shape(p.shape()),
                fmt_shape(t.shape())
            ));
            return p.zeros_like();
        }
        match t.to_dtype(p.dtype()).try_to(p.device()) {
            Ok(t) => t.deep_clone(),
            Err(e) => {
                self.problems.push(format!("{}.{slot}: {e}", self.prefix));
                p.zeros_like()
            }
        }
    }

    /// A required slot shaped like the parameter.
    pub(crate) fn tensor(&mut self, slot: &str) -> Tensor {
        match self.optional(slot) {
            Some(t) => t,
            None => {
                self.problems
                    .push(format!("missing {}.{slot}", self.prefix));
                self.param.zeros_like()
            }
        }
    }

    /// An optional slot shaped like the parameter.
    pub(crate) fn optional(&mut self, slot: &str) -> Option<Tensor> {
        let t = self.take(slot)?.clone();
        Some(self.convert(slot, &t))
    }

    /// A required one-element slot (any dtype), as `f64`.
    pub(crate) fn scalar(&mut self, slot: &str) -> f64 {
        let Some(t) = self.take(slot).cloned() else {
            self.problems
                .push(format!("missing {}.{slot}", self.prefix));
            return 0.0;
        };
        if t.numel() != 1 {
            self.problems.push(format!(
                "{}.{slot}: expected one value, got shape {}",
                self.prefix,
                fmt_shape(t.shape())
            ));
            return 0.0;
        }
        t.to_f64_vec()[0]
    }

    /// A required counter (a one-element slot holding a non-negative integer).
    pub(crate) fn count(&mut self, slot: &str) -> u64 {
        let v = self.scalar(slot);
        if v < 0.0 || v.fract() != 0.0 || v > i32::MAX as f64 {
            self.problems.push(format!(
                "{}.{slot}: expected a non-negative integer, got {v}",
                self.prefix
            ));
            return 0;
        }
        v as u64
    }
}

/// `1.0` for true, `0.0` for false: how flags are saved.
pub(crate) fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

/// The state dict of an optimizer with `groups`, per-parameter `slots` and the
/// hyper-parameters `defaults` (saved as `defaults.{name}`).
pub(crate) fn save<S: SlotState>(
    groups: &[ParamGroup],
    slots: &Slots<S>,
    defaults: &[(&str, f64)],
) -> StateDict {
    let mut sd = StateDict::new();
    let mut index = 0;
    for (gi, g) in groups.iter().enumerate() {
        sd.scalars.push((format!("param_groups.{gi}.lr"), g.lr));
        if let Some(l) = g.initial_lr {
            sd.scalars
                .push((format!("param_groups.{gi}.initial_lr"), l));
        }
        sd.scalars.push((
            format!("param_groups.{gi}.num_params"),
            g.params.len() as f64,
        ));
        for pi in 0..g.params.len() {
            if let Some(Some(s)) = slots.state.get(gi).and_then(|v| v.get(pi)) {
                let mut out = Vec::new();
                s.save(&mut out);
                for (slot, t) in out {
                    sd.tensors.push((format!("state.{index}.{slot}"), t));
                }
            }
            index += 1;
        }
    }
    for (name, v) in defaults {
        sd.scalars.push((format!("defaults.{name}"), *v));
    }
    sd
}

/// A checked state dict, ready to be written into an optimizer by [`Loaded::commit`].
pub(crate) struct Loaded<S, const N: usize> {
    lrs: Vec<(f64, Option<f64>)>,
    slots: Slots<S>,
    defaults: [f64; N],
}

impl<S, const N: usize> Loaded<S, N> {
    /// Writes the learning rates and the slots; returns the hyper-parameters, in the
    /// order of the names given to [`load`].
    pub(crate) fn commit(self, groups: &mut [ParamGroup], slots: &mut Slots<S>) -> [f64; N] {
        for (g, (lr, initial)) in groups.iter_mut().zip(self.lrs) {
            g.lr = lr;
            g.initial_lr = initial;
        }
        *slots = self.slots;
        self.defaults
    }
}

/// Parses `"{index}.{rest}"`.
fn split_index(s: &str) -> Option<(usize, &str)> {
    let (i, rest) = s.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

/// Checks `sd` against an optimizer with `groups` and hyper-parameters named `defaults`,
/// and builds the new per-parameter state. Every problem (group or parameter counts,
/// missing, unexpected or wrongly-shaped entries) is listed in one
/// [`Error::StateDict`].
pub(crate) fn load<S: SlotState, const N: usize>(
    groups: &[ParamGroup],
    sd: &StateDict,
    defaults: [&str; N],
) -> Result<Loaded<S, N>> {
    let fail = |problems: Vec<String>| Err(Error::StateDict(problems.join("; ")));
    let scalars: BTreeMap<&str, f64> = sd.scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();

    // Groups first: counts that differ make every other check meaningless.
    let saved_groups = (scalars.keys())
        .filter_map(|k| split_index(k.strip_prefix("param_groups.")?))
        .map(|(g, _)| g + 1)
        .max()
        .unwrap_or(0);
    if saved_groups != groups.len() {
        return fail(vec![format!(
            "the saved state has {saved_groups} parameter group(s), the optimizer has {}",
            groups.len()
        )]);
    }
    let mut lrs = Vec::with_capacity(groups.len());
    for (gi, g) in groups.iter().enumerate() {
        let mut get = |field: &str| {
            let key = format!("param_groups.{gi}.{field}");
            let v = scalars.get_key_value(key.as_str()).map(|(k, v)| {
                used.insert(*k);
                *v
            });
            (key, v)
        };
        match get("num_params") {
            (_, Some(n)) if n == g.params.len() as f64 => {}
            (key, Some(n)) => problems.push(format!(
                "{key}: the saved group has {n} parameter(s), the optimizer's has {}",
                g.params.len()
            )),
            (key, None) => problems.push(format!("missing {key}")),
        }
        let lr = match get("lr") {
            (_, Some(lr)) => lr,
            (key, None) => {
                problems.push(format!("missing {key}"));
                g.lr
            }
        };
        lrs.push((lr, get("initial_lr").1));
    }
    if !problems.is_empty() {
        return fail(problems);
    }

    let mut values = [0.0; N];
    for (v, name) in values.iter_mut().zip(defaults) {
        let key = format!("defaults.{name}");
        match scalars.get_key_value(key.as_str()) {
            Some((k, x)) => {
                used.insert(*k);
                *v = *x;
            }
            None => problems.push(format!("missing {key}")),
        }
    }
    for k in scalars.keys() {
        if !used.contains(k) {
            problems.push(format!("unexpected {k}"));
        }
    }

    // Per-parameter slots, grouped by flat parameter index.
    let params: Vec<&Tensor> = groups.iter().flat_map(|g| &g.params).collect();
    let mut per_param: BTreeMap<usize, BTreeMap<&str, &Tensor>> = BTreeMap::new();
    for (k, t) in &sd.tensors {
        match k.strip_prefix("state.").and_then(split_index) {
            Some((i, slot)) if i < params.len() => {
                per_param.entry(i).or_default().insert(slot, t);
            }
            _ => problems.push(format!(
                "unexpected {k} (the optimizer has {} parameter(s))",
                params.len()
            )),
        }
    }
    let _no_grad = NoGradGuard::new();
    let mut loaded: BTreeMap<usize, S> = BTreeMap::new();
    for (i, entries) in per_param {
        let mut r = SlotReader {
            prefix: format!("state.{i}"),
            param: params[i],
            entries,
            used: BTreeSet::new(),
            problems: &mut problems,
        };
        let s = S::load(&mut r);
        let unused: Vec<String> = (r.entries.keys())
            .filter(|k| !r.used.contains(*k))
            .map(|k| format!("unexpected state.{i}.{k}"))
            .collect();
        problems.extend(unused);
        loaded.insert(i, s);
    }
    if !problems.is_empty() {
        return fail(problems);
    }

    let mut slots = Slots::default();
    slots.sync(groups);
    let mut index = 0;
    for gs in slots.state.iter_mut() {
        for s in gs.iter_mut() {
            *s = loaded.remove(&index);
            index += 1;
        }
    }
    Ok(Loaded {
        lrs,
        slots,
        defaults: values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{
        Adadelta, Adagrad, Adam, Adamax, Asgd, CosineAnnealingLR, LinearLR, LrScheduler, Optimizer,
        RmsProp, SequentialLR, Sgd,
    };
    use crate::DType;

    /// Group 0: `w` [3] and `b` [1]; group 1: `v` [2] and `u` [2], which never gets a
    /// gradient (so it never has state).
    fn params() -> Vec<Tensor> {
        vec![
            Tensor::from_vec(vec![0.3f64, -0.7, 1.1], [3]),
            Tensor::from_vec(vec![0.05f64], [1]),
            Tensor::from_vec(vec![1.5f64, -2.0], [2]),
            Tensor::from_vec(vec![4.0f64, 5.0], [2]),
        ]
        .into_iter()
        .map(|t| t.requires_grad_(true))
        .collect()
    }

    fn copies(ps: &[Tensor]) -> Vec<Tensor> {
        ps.iter()
            .map(|p| p.detach().deep_clone().requires_grad_(true))
            .collect()
    }

    /// One optimisation step at time `t`: a least-squares fit for `w`, `b` and a moving
    /// target for `v`.
    fn train(opt: &mut dyn Optimizer, ps: &[Tensor], steps: std::ops::Range<usize>) {
        let x = Tensor::from_vec(
            vec![
                1.0f64, 0.5, -1.0, 0.2, -0.3, 2.0, -1.5, 1.0, 0.0, 0.7, 0.7, -0.2, 2.0, -1.0, 0.3,
                0.1, 0.9, 1.4,
            ],
            [6, 3],
        );
        let y = Tensor::from_vec(vec![0.5f64, -1.0, 2.0, 0.3, 1.2, -0.4], [6]);
        for t in steps {
            opt.zero_grad();
            let pred = x.matmul(&ps[0]) + &ps[1];
            let target = Tensor::from_vec(vec![0.1 * t as f64, -0.3], [2]);
            let loss = (pred - &y).square().mean_all() + (&ps[2] - target).square().sum_all() * 0.5;
            loss.backward();
            opt.step();
        }
    }

    fn bits(ps: &[Tensor]) -> Vec<Vec<u64>> {
        ps.iter()
            .map(|p| p.to_vec::<f64>().into_iter().map(f64::to_bits).collect())
            .collect()
    }

    type Make = dyn Fn(Vec<Tensor>, Vec<Tensor>) -> Box<dyn Optimizer>;

    /// N steps straight vs k steps, save, a fresh optimizer built by `fresh` (default
    /// settings, learning rate 1) on copies of the parameters, load, N − k steps: the
    /// parameters must agree bit for bit. Also checks that the state matters (without
    /// loading it the result differs) and that the saved state does not change as the
    /// saving optimizer trains on.
    fn resumes_bit_identically(name: &str, make: &Make, fresh: &Make) {
        let (n, k) = (9, 4);
        let a = params();
        let mut oa = make(a[..2].to_vec(), a[2..].to_vec());
        train(&mut *oa, &a, 0..n);

        let b = params();
        let mut ob = make(b[..2].to_vec(), b[2..].to_vec());
        train(&mut *ob, &b, 0..k);
        let saved = ob.state_dict();
        assert!(
            !saved.tensors.iter().any(|(k, _)| k.starts_with("state.3.")),
            "{name}: u never had a gradient"
        );
        let snapshot: Vec<Vec<f64>> = saved.tensors.iter().map(|(_, t)| t.to_f64_vec()).collect();

        let c = copies(&b);
        let mut oc = fresh(c[..2].to_vec(), c[2..].to_vec());
        oc.load_state_dict(&saved).unwrap();
        assert_eq!(oc.groups()[1].lr, ob.groups()[1].lr, "{name}");
        train(&mut *oc, &c, k..n);
        assert_eq!(bits(&a), bits(&c), "{name}: resumed training differs");

        train(&mut *ob, &b, k..n);
        let after: Vec<Vec<f64>> = saved.tensors.iter().map(|(_, t)| t.to_f64_vec()).collect();
        assert_eq!(snapshot, after, "{name}: the saved state changed");

        let d = copies(&c);
        let mut od = make(d[..2].to_vec(), d[2..].to_vec());
        train(&mut *od, &d, k..n);
        assert_ne!(bits(&a), bits(&d), "{name}: the state made no difference");
    }

    fn two<O: Optimizer + 'static>(mut o: O, g1: Vec<Tensor>, lr1: f64) -> Box<dyn Optimizer> {
        o.add_param_group(g1, lr1);
        Box::new(o)
    }

    #[test]
    fn sgd_with_momentum_resumes_bit_identically() {
        resumes_bit_identically(
            "SGD momentum",
            &|g0, g1| {
                let o = Sgd::new(g0, 0.05)
                    .momentum(0.9)
                    .dampening(0.1)
                    .weight_decay(0.01);
                two(o, g1, 0.02)
            },
            &|g0, g1| two(Sgd::new(g0, 1.0), g1, 1.0),
        );
        resumes_bit_identically(
            "SGD Nesterov",
            &|g0, g1| two(Sgd::new(g0, 0.05).momentum(0.8).nesterov(true), g1, 0.02),
            &|g0, g1| two(Sgd::new(g0, 1.0), g1, 1.0),
        );
    }

    #[test]
    fn adam_and_adamw_resume_bit_identically() {
        resumes_bit_identically(
            "Adam AMSGrad",
            &|g0, g1| {
                let o = Adam::new(g0, 0.05)
                    .amsgrad(true)
                    .weight_decay(0.01)
                    .betas(0.8, 0.99);
                two(o, g1, 0.02)
            },
            &|g0, g1| two(Adam::new(g0, 1.0), g1, 1.0),
        );
        resumes_bit_identically(
            "AdamW",
            &|g0, g1| two(Adam::adamw(g0, 0.05), g1, 0.02),
            &|g0, g1| two(Adam::new(g0, 1.0), g1, 1.0),
        );
    }

    #[test]
    fn rmsprop_centered_resumes_bit_identically() {
        resumes_bit_identically(
            "RMSprop centered",
            &|g0, g1| {
                let o = RmsProp::new(g0, 0.01)
                    .centered(true)
                    .momentum(0.5)
                    .weight_decay(0.01);
                two(o, g1, 0.02)
            },
            &|g0, g1| two(RmsProp::new(g0, 1.0), g1, 1.0),
        );
    }

    #[test]
    fn adagrad_adadelta_adamax_asgd_resume_bit_identically() {
        resumes_bit_identically(
            "Adagrad",
            &|g0, g1| {
                let o = Adagrad::new(g0, 0.1)
                    .lr_decay(0.01)
                    .initial_accumulator_value(0.1);
                two(o, g1, 0.05)
            },
            &|g0, g1| two(Adagrad::new(g0, 1.0), g1, 1.0),
        );
        resumes_bit_identically(
            "Adadelta",
            &|g0, g1| two(Adadelta::new(g0, 1.0).rho(0.8).weight_decay(0.01), g1, 0.5),
            &|g0, g1| two(Adadelta::new(g0, 1.0), g1, 1.0),
        );
        resumes_bit_identically(
            "Adamax",
            &|g0, g1| two(Adamax::new(g0, 0.05).weight_decay(0.01), g1, 0.02),
            &|g0, g1| two(Adamax::new(g0, 1.0), g1, 1.0),
        );
        resumes_bit_identically(
            "ASGD",
            &|g0, g1| two(Asgd::new(g0, 0.05).t0(2.0), g1, 0.02),
            &|g0, g1| two(Asgd::new(g0, 1.0), g1, 1.0),
        );
    }

    #[test]
    fn asgd_averages_come_back_too() {
        let make = |ps: &[Tensor]| {
            let mut o = Asgd::new(ps[..2].to_vec(), 0.05).t0(1.0);
            o.add_param_group(ps[2..].to_vec(), 0.02);
            o
        };
        let a = params();
        let mut oa = make(&a);
        train(&mut oa, &a, 0..6);
        let b = params();
        let mut ob = make(&b);
        train(&mut ob, &b, 0..2);
        let c = copies(&b);
        let mut oc = make(&c);
        oc.load_state_dict(&ob.state_dict()).unwrap();
        train(&mut oc, &c, 2..6);
        let ax = |o: &Asgd| o.averaged(0, 0).unwrap().to_vec::<f64>();
        assert_eq!(ax(&oa), ax(&oc));
    }

    #[test]
    fn adam_with_warmup_cosine_schedule_resumes_bit_identically() {
        fn setup(ps: &[Tensor]) -> (Adam, SequentialLR) {
            let mut opt = Adam::new(ps[..2].to_vec(), 0.05);
            opt.add_param_group(ps[2..].to_vec(), 0.02);
            let warmup = LinearLR::new(&mut opt, 0.1, 1.0, 3);
            let cosine = CosineAnnealingLR::new(&mut opt, 8, 1e-3);
            let sched = SequentialLR::new(&mut opt, vec![Box::new(warmup), Box::new(cosine)], &[3]);
            (opt, sched)
        }
        let run =
            |opt: &mut Adam, s: &mut SequentialLR, ps: &[Tensor], r: std::ops::Range<usize>| {
                for t in r {
                    train(opt, ps, t..t + 1);
                    s.step(opt);
                }
            };
        let a = params();
        let (mut oa, mut sa) = setup(&a);
        run(&mut oa, &mut sa, &a, 0..10);
        let b = params();
        let (mut ob, mut sb) = setup(&b);
        run(&mut ob, &mut sb, &b, 0..5);
        let (opt_state, sched_state) = (ob.state_dict(), sb.state_dict());
        let c = copies(&b);
        let (mut oc, mut sc) = setup(&c);
        oc.load_state_dict(&opt_state).unwrap();
        sc.load_state_dict(&sched_state).unwrap();
        run(&mut oc, &mut sc, &c, 5..10);
        assert_eq!(bits(&a), bits(&c));
        assert_eq!(sa.get_last_lr(), sc.get_last_lr());
    }

    #[test]
    fn state_dict_names_follow_pytorch() {
        let ps = params();
        let mut opt = Adam::new(ps[..2].to_vec(), 0.05).amsgrad(true);
        opt.add_param_group(ps[2..].to_vec(), 0.02);
        train(&mut opt, &ps, 0..2);
        let sd = opt.state_dict();
        let names: Vec<&str> = sd.tensors.iter().map(|(k, _)| k.as_str()).collect();
        let mut want = Vec::new();
        for i in 0..3 {
            for slot in ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"] {
                want.push(format!("state.{i}.{slot}"));
            }
        }
        assert_eq!(names, want);
        assert_eq!(sd.tensor("state.2.step").unwrap().item::<f64>(), 2.0);
        assert_eq!(sd.tensor("state.1.exp_avg").unwrap().shape(), &[1]);
        let scalars: Vec<&str> = sd.scalars.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            scalars,
            [
                "param_groups.0.lr",
                "param_groups.0.num_params",
                "param_groups.1.lr",
                "param_groups.1.num_params",
                "defaults.betas.0",
                "defaults.betas.1",
                "defaults.eps",
                "defaults.weight_decay",
                "defaults.decoupled_weight_decay",
                "defaults.amsgrad",
            ]
        );
        assert_eq!(sd.scalar("param_groups.1.num_params"), Some(2.0));
        assert_eq!(sd.scalar("defaults.amsgrad"), Some(1.0));
    }

    #[test]
    fn initial_lr_is_saved_once_a_scheduler_set_it() {
        let mut opt = Sgd::new(params(), 0.1);
        assert_eq!(opt.state_dict().scalar("param_groups.0.initial_lr"), None);
        let _s = LinearLR::new(&mut opt, 0.5, 1.0, 4);
        let sd = opt.state_dict();
        assert_eq!(sd.scalar("param_groups.0.initial_lr"), Some(0.1));
        assert_eq!(sd.scalar("param_groups.0.lr"), Some(0.05));
        let mut other = Sgd::new(params(), 0.3);
        other.load_state_dict(&sd).unwrap();
        assert_eq!(
            (other.groups()[0].lr, other.groups()[0].initial_lr),
            (0.05, Some(0.1))
        );
    }

    #[test]
    fn state_is_converted_to_the_parameters_dtype() {
        let w = Tensor::from_vec(vec![1.0f64, 2.0], [2]).requires_grad_(true);
        let mut opt = Sgd::new(vec![w.clone()], 0.1).momentum(0.9);
        (&w * &w).sum_all().backward();
        opt.step();
        let w32 = Tensor::from_vec(vec![1.0f32, 2.0], [2]).requires_grad_(true);
        let mut opt32 = Sgd::new(vec![w32.clone()], 0.1);
        opt32.load_state_dict(&opt.state_dict()).unwrap();
        let buf = opt32.state_dict();
        let buf = buf.tensor("state.0.momentum_buffer").unwrap();
        assert_eq!(buf.dtype(), DType::F32);
        assert_eq!(buf.to_vec::<f32>(), vec![2.0, 4.0]);
        assert_eq!(opt32.momentum, 0.9);
    }

    /// An Adam over `w` [3] (group 0) and `v` [2] (group 1), after one step.
    fn adam_state() -> (Adam, StateDict) {
        let w = Tensor::from_vec(vec![1.0f64, 2.0, 3.0], [3]).requires_grad_(true);
        let v = Tensor::from_vec(vec![1.0f64, 2.0], [2]).requires_grad_(true);
        let mut opt = Adam::new(vec![w.clone()], 0.1);
        opt.add_param_group(vec![v.clone()], 0.2);
        ((&w * &w).sum_all() + (&v * &v).sum_all()).backward();
        opt.step();
        let sd = opt.state_dict();
        (opt, sd)
    }

    fn err(opt: &mut dyn Optimizer, sd: &StateDict) -> String {
        let before = opt.state_dict();
        let e = opt.load_state_dict(sd).unwrap_err();
        assert!(matches!(e, Error::StateDict(_)));
        let after = opt.state_dict();
        assert_eq!(
            before.scalars, after.scalars,
            "a failed load changed the optimizer"
        );
        assert_eq!(before.tensors.len(), after.tensors.len());
        e.to_string()
    }

    #[test]
    fn wrong_group_or_parameter_counts_are_errors() {
        let (_, sd) = adam_state();
        let t = |shape: &[usize]| Tensor::zeros(shape, DType::F64).requires_grad_(true);
        let mut one_group = Adam::new(vec![t(&[3])], 0.1);
        assert_eq!(
            err(&mut one_group, &sd),
            "state dict: the saved state has 2 parameter group(s), the optimizer has 1"
        );
        let mut three_params = Adam::new(vec![t(&[3])], 0.1);
        three_params.add_param_group(vec![t(&[2]), t(&[4])], 0.2);
        assert_eq!(
            err(&mut three_params, &sd),
            "state dict: param_groups.1.num_params: the saved group has 1 parameter(s), \
             the optimizer's has 2"
        );
    }

    #[test]
    fn wrong_shapes_are_errors_listing_every_slot() {
        let (_, sd) = adam_state();
        let t = |shape: &[usize]| Tensor::zeros(shape, DType::F64).requires_grad_(true);
        let mut opt = Adam::new(vec![t(&[3])], 0.1);
        opt.add_param_group(vec![t(&[2, 1])], 0.2);
        assert_eq!(
            err(&mut opt, &sd),
            "state dict: state.1.exp_avg: expected shape [2, 1] (the parameter's), got [2]; \
             state.1.exp_avg_sq: expected shape [2, 1] (the parameter's), got [2]"
        );
    }

    #[test]
    fn another_optimizers_state_is_an_error() {
        let (opt, sd) = adam_state();
        let groups = opt.groups();
        let mut sgd = Sgd::new(groups[0].params.clone(), 0.1).momentum(0.9);
        sgd.add_param_group(groups[1].params.clone(), 0.1);
        let e = err(&mut sgd, &sd);
        for part in [
            "missing defaults.momentum",
            "missing defaults.nesterov",
            "unexpected defaults.betas.0",
            "unexpected defaults.amsgrad",
            "missing state.0.momentum_buffer",
            "unexpected state.0.exp_avg",
            "unexpected state.1.step",
        ] {
            assert!(e.contains(part), "{part} not in {e}");
        }
    }

    #[test]
    fn malformed_entries_are_errors() {
        let (mut opt, sd) = adam_state();
        let mut bad = sd.clone();
        for (k, t) in bad.tensors.iter_mut() {
            if k == "state.0.step" {
                *t = Tensor::scalar(1.5f64);
            }
        }
        bad.tensors
            .push(("state.7.exp_avg".into(), Tensor::zeros([3], DType::F64)));
        bad.tensors.retain(|(k, _)| k != "state.1.exp_avg_sq");
        bad.scalars.retain(|(k, _)| k != "param_groups.0.lr");
        bad.scalars.push(("defaults.foo".into(), 1.0));
        assert_eq!(err(&mut opt, &bad), "state dict: missing param_groups.0.lr");
        bad.scalars.push(("param_groups.0.lr".into(), 0.1));
        assert_eq!(
            err(&mut opt, &bad),
            "state dict: unexpected defaults.foo; \
             unexpected state.7.exp_avg (the optimizer has 2 parameter(s)); \
             state.0.step: expected a non-negative integer, got 1.5; \
             missing state.1.exp_avg_sq"
        );
        // the intact state still loads
        opt.load_state_dict(&sd).unwrap();
    }

    #[test]
    fn prefixed_and_sub_are_inverse() {
        let (_, sd) = adam_state();
        let p = sd.prefixed("optimizer");
        assert!(p.tensor("optimizer.state.0.exp_avg").is_some());
        let back = p.sub("optimizer");
        let names = |s: &StateDict| s.tensors.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(names(&back), names(&sd));
        assert_eq!(back.scalars, sd.scalars);
        assert!(p.sub("optim").is_empty());
    }
}
