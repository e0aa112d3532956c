//! Adadelta, Adamax and ASGD: the less common `torch.optim` rules.

use super::state::{self, SlotReader, SlotState, StateDict};
use super::{Optimizer, ParamGroup, Slots};
use crate::autograd::no_grad;
use crate::error::Result;
use crate::tensor::Tensor;

/// Adadelta like `torch.optim.Adadelta` (default lr 1.0).
#[derive(Clone, Debug)]
pub struct Adadelta {
    groups: Vec<ParamGroup>,
    /// Decay of the running averages.
    pub rho: f64,
    /// Added inside the square roots.
    pub eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    state: Slots<AdadeltaState>,
}

#[derive(Clone, Debug)]
struct AdadeltaState {
    square_avg: Tensor,
    acc_delta: Tensor,
}

impl SlotState for AdadeltaState {
    fn save(&self, out: &mut Vec<(&'static str, Tensor)>) {
        out.push(("square_avg", self.square_avg.clone()));
        out.push(("acc_delta", self.acc_delta.clone()));
    }
    fn load(r: &mut SlotReader<'_>) -> Self {
        AdadeltaState {
            square_avg: r.tensor("square_avg"),
            acc_delta: r.tensor("acc_delta"),
        }
    }
}

impl Adadelta {
    /// Adadelta with PyTorch's defaults (rho 0.9, eps 1e-6).
    pub fn new(params: Vec<Tensor>, lr: f64) -> Self {
        Adadelta {
            groups: vec![ParamGroup::new(params, lr)],
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
            state: Slots::default(),
        }
    }
    /// Sets rho.
    pub fn rho(mut self, rho: f64) -> Self {
        self.rho = rho;
        self
    }
    /// Sets the weight decay.
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
}

impl Optimizer for Adadelta {
    fn step(&mut self) {
        self.state.sync(&self.groups);
        let (rho, eps) = (self.rho, self.eps);
        no_grad(|| {
            for (gi, group) in self.groups.iter().enumerate() {
                for (pi, p) in group.params.iter().enumerate() {
                    let Some(mut g) = p.grad() else { continue };
                    if self.weight_decay != 0.0 {
                        g = g + p * self.weight_decay;
                    }
                    let (sq, acc) = match self.state.state[gi][pi].take() {
                        Some(s) => (s.square_avg, s.acc_delta),
                        None => (p.zeros_like(), p.zeros_like()),
                    };
                    let sq = sq * rho + &g * &g * (1.0 - rho);
                    let delta = (&acc + eps).sqrt() / (&sq + eps).sqrt() * &g;
                    let acc = acc * rho + &delta * &delta * (1.0 - rho);
                    p.sub_(delta * group.lr);
                    self.state.state[gi][pi] = Some(AdadeltaState {
                        square_avg: sq,
                        acc_delta: acc,
                    });
                }
            }
        });
    }
    groups_impl!();
    fn state_dict(&self) -> StateDict {
        state::save(
            &self.groups,
            &self.state,
            &[
                ("rho", self.rho),
                ("eps", self.eps),
                ("weight_decay", self.weight_decay),
            ],
        )
    }
    fn load_state_dict(&mut self, sd: &StateDict) -> Result<()> {
        let loaded = state::load(&self.groups, sd, ["rho", "eps", "weight_decay"])?;
        let [rho, eps, wd] = loaded.commit(&mut self.groups, &mut self.state);
        (self.rho, self.eps, self.weight_decay) = (rho, eps, wd);
        Ok(())
    }
}

/// Adamax (Adam with the infinity norm) like `torch.optim.Adamax`.
#[derive(Clone, Debug)]
pub struct Adamax {
    groups: Vec<ParamGroup>,
    /// `(β₁, β₂)`.
    pub betas: (f64, f64),
    /// Added to the infinity norm.
    pub eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    state: Slots<AdamaxState>,
}

#[derive(Clone, Debug)]
struct AdamaxState {
    step: i32,
    exp_avg: Tensor,
    exp_inf: Tensor,
}

impl SlotState for AdamaxState {
    fn save(&self, out: &mut Vec<(&'static str, Tensor)>) {
        out.push(("step", state::count_tensor(self.step as u64)));
        out.push(("exp_avg", self.exp_avg.clone()));
        out.push(("exp_inf", self.exp_inf.clone()));
    }
    fn load(r: &mut SlotReader<'_>) -> Self {
        AdamaxState {
            step: r.count("step") as i32,
            exp_avg: r.tensor("exp_avg"),
            exp_inf: r.tensor("exp_inf"),
        }
    }
}

impl Adamax {
    /// Adamax with PyTorch's defaults (betas 0.9/0.999, eps 1e-8).
    pub fn new(params: Vec<Tensor>, lr: f64) -> Self {
        Adamax {
            groups: vec![ParamGroup::new(params, lr)],
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            state: Slots::default(),
        }
    }
    /// Sets the weight decay.
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
}

impl Optimizer for Adamax {
    fn step(&mut self) {
        self.state.sync(&self.groups);
        let (b1, b2) = self.betas;
        no_grad(|| {
            for (gi, group) in self.groups.iter().enumerate() {
                for (pi, p) in group.params.iter().enumerate() {
                    let Some(mut g) = p.grad() else { continue };
                    if self.weight_decay != 0.0 {
                        g = g + p * self.weight_decay;
                    }
                    let (step, m, u) = match self.state.state[gi][pi].take() {
                        Some(s) => (s.step, s.exp_avg, s.exp_inf),
                        None => (0, p.zeros_like(), p.zeros_like()),
                    };
                    let step = step + 1;
                    let m = &m + (&g - &m) * (1.0 - b1);
                    let u = (u * b2).maximum(g.abs() + self.eps);
                    p.sub_(&m / &u * (group.lr / (1.0 - b1.powi(step))));
                    self.state.state[gi][pi] = Some(AdamaxState {
                        step,
                        exp_avg: m,
                        exp_inf: u,
                    });
                }
            }
        });
    }
    groups_impl!();
    fn momentum_or_beta1(&self) -> Option<f64> {
        Some(self.betas.0)
    }
    fn set_momentum_or_beta1(&mut self, value: f64) {
        self.betas.0 = value;
    }
    fn state_dict(&self) -> StateDict {
        state::save(
            &self.groups,
            &self.state,
            &[
                ("betas.0", self.betas.0),
                ("betas.1", self.betas.1),
                ("eps", self.eps),
                ("weight_decay", self.weight_decay),
            ],
        )
    }
    fn load_state_dict(&mut self, sd: &StateDict) -> Result<()> {
        let names = ["betas.0", "betas.1", "eps", "weight_decay"];
        let loaded = state::load(&self.groups, sd, names)?;
        let [b1, b2, eps, wd] = loaded.commit(&mut self.groups, &mut self.state);
        (self.betas, self.eps, self.weight_decay) = ((b1, b2), eps, wd);
        Ok(())
    }
}

/// Averaged SGD like `torch.optim.ASGD`; [`Asgd::averaged`] gives the running average
/// of each parameter.
#[derive(Clone, Debug)]
pub struct Asgd {
    groups: Vec<ParamGroup>,
    /// Decay term.
    pub lambd: f64,
    /// Power of the eta update.
    pub alpha: f64,
    /// Step at which averaging starts.
    pub t0: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    state: Slots<AsgdState>,
}

#[derive(Clone, Debug)]
struct AsgdState {
    step: u64,
    eta: f64,
    mu: f64,
    ax: Tensor,
}

impl SlotState for AsgdState {
    fn save(&self, out: &mut Vec<(&'static str, Tensor)>) {
        out.push(("step", state::count_tensor(self.step)));
        out.push(("eta", Tensor::scalar(self.eta)));
        out.push(("mu", Tensor::scalar(self.mu)));
        out.push(("ax", self.ax.clone()));
    }
    fn load(r: &mut SlotReader<'_>) -> Self {
        AsgdState {
            step: r.count("step"),
            eta: r.scalar("eta"),
            mu: r.scalar("mu"),
            ax: r.tensor("ax"),
        }
    }
}

impl Asgd {
    /// ASGD with PyTorch's defaults (lambd 1e-4, alpha 0.75, t0 1e6).
    pub fn new(params: Vec<Tensor>, lr: f64) -> Self {
        Asgd {
            groups: vec![ParamGroup::new(params, lr)],
            lambd: 1e-4,
            alpha: 0.75,
            t0: 1e6,
            weight_decay: 0.0,
            state: Slots::default(),
        }
    }
    /// Sets t0.
    pub fn t0(mut self, t0: f64) -> Self {
        self.t0 = t0;
        self
    }
    /// The averaged value of parameter `index` of group `group` (after at least one step).
    pub fn averaged(&self, group: usize, index: usize) -> Option<Tensor> {
        self.state
            .state
            .get(group)?
            .get(index)?
            .as_ref()
            .map(|s| s.ax.clone())
    }
}

impl Optimizer for Asgd {
    fn step(&mut self) {
        self.state.sync(&self.groups);
        no_grad(|| {
            for (gi, group) in self.groups.iter().enumerate() {
                let lr = group.lr;
                for (pi, p) in group.params.iter().enumerate() {
                    let Some(mut g) = p.grad() else { continue };
                    let st = self.state.state[gi][pi].get_or_insert_with(|| AsgdState {
                        step: 0,
                        eta: lr,
                        mu: 1.0,
                        ax: p.zeros_like(),
                    });
                    st.step += 1;
                    if self.weight_decay != 0.0 {
                        g = g + p * self.weight_decay;
                    }
                    p.mul_(1.0 - self.lambd * st.eta);
                    p.sub_(g * st.eta);
                    st.ax = if st.mu != 1.0 {
                        &st.ax + (p - &st.ax) * st.mu
                    } else {
                        p.deep_clone()
                    };
                    st.eta = lr / (1.0 + self.lambd * lr * st.step as f64).powf(self.alpha);
                    st.mu = 1.0 / (st.step as f64 - self.t0).max(1.0);
                }
            }
        });
    }
    groups_impl!();
    fn state_dict(&self) -> StateDict {
        state::save(
            &self.groups,
            &self.state,
            &[
                ("lambd", self.lambd),
                ("alpha", self.alpha),
                ("t0", self.t0),
                ("weight_decay", self.weight_decay),
            ],
        )
    }
    fn load_state_dict(&mut self, sd: &StateDict) -> Result<()> {
        let names = ["lambd", "alpha", "t0", "weight_decay"];
        let loaded = state::load(&self.groups, sd, names)?;
        let [lambd, alpha, t0, wd] = loaded.commit(&mut self.groups, &mut self.state);
        (self.lambd, self.alpha, self.t0, self.weight_decay) = (lambd, alpha, t0, wd);
        Ok(())
    }
}

/// Scales the gradients of `params` so their joint L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
///
/// ```
/// use flint_runtime::{optim::clip_grad_norm_, Tensor};
/// let w = Tensor::from_vec(vec![0.0f64, 0.0], [2]).requires_grad_(true);
/// w.set_grad(Some(Tensor::from_vec(vec![3.0f64, 4.0], [2])));
/// assert_eq!(clip_grad_norm_(&[w.clone()], 1.0), 5.0);
/// let g = w.grad().unwrap().to_vec::<f64>();
/// assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
/// ```
pub fn clip_grad_norm_(params: &[Tensor], max_norm: f64) -> f64 {
    no_grad(|| {
        let total: f64 = params
            .iter()
            .filter_map(|p| p.grad())
            .map(|g| {
                g.to_dtype(crate::DType::F64)
                    .square()
                    .sum_all()
                    .item::<f64>()
            })
            .sum::<f64>()
            .sqrt();
        let coef = (max_norm / (total + 1e-6)).min(1.0);
        if coef < 1.0 {
            for p in params {
                if let Some(g) = p.grad() {
                    p.set_grad(Some(g * coef));
                }
            }
        }
        total
    })
}

/// Clamps every gradient element of `params` into `[-clip, clip]`
/// (`torch.nn.utils.clip_grad_value_`).
pub fn clip_grad_value_(params: &[Tensor], clip: f64) {
    no_grad(|| {
        for p in params {
            if let Some(g) = p.grad() {
                p.set_grad(Some(g.clamp(-clip, clip)));
            }
        }
    })
}
