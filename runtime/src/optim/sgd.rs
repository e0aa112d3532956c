//! Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

use super::state::{self, flag, StateDict};
use super::{fused, Optimizer, ParamGroup, Slots};
use crate::autograd::no_grad;
use crate::error::Result;
use crate::tensor::Tensor;

/// SGD like `torch.optim.SGD`.
#[derive(Clone, Debug)]
pub struct Sgd {
    groups: Vec<ParamGroup>,
    /// Momentum factor (0 disables momentum).
    pub momentum: f64,
    /// Dampening of the momentum.
    pub dampening: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    bufs: Slots<Tensor>,
}

impl Sgd {
    /// Plain SGD over `params` with learning rate `lr`.
    pub fn new(params: Vec<Tensor>, lr: f64) -> Sgd {
        Sgd {
            groups: vec![ParamGroup::new(params, lr)],
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            bufs: Slots::default(),
        }
    }
    /// Sets the momentum.
    pub fn momentum(mut self, m: f64) -> Self {
        self.momentum = m;
        self
    }
    /// Sets the dampening.
    pub fn dampening(mut self, d: f64) -> Self {
        self.dampening = d;
        self
    }
    /// Sets the weight decay.
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
    /// Turns Nesterov momentum on or off.
    pub fn nesterov(mut self, on: bool) -> Self {
        self.nesterov = on;
        self
    }
}

impl Optimizer for Sgd {
    fn step(&mut self) {
        self.bufs.sync(&self.groups);
        no_grad(|| {
            for (gi, group) in self.groups.iter().enumerate() {
                for (pi, p) in group.params.iter().enumerate() {
                    let Some(mut g) = p.grad() else { continue };
                    let slot = &mut self.bufs.state[gi][pi];
                    let coeffs = fused::SgdStep {
                        lr: group.lr,
                        momentum: self.momentum,
                        dampening: self.dampening,
                        weight_decay: self.weight_decay,
                        nesterov: self.nesterov,
                    };
                    if let Some(buf) = fused::sgd(p, &g, slot.as_ref(), &coeffs) {
                        if buf.is_some() {
                            *slot = buf;
                        }
                        continue;
                    }
                    if self.weight_decay != 0.0 {
                        g = g + p * self.weight_decay;
                    }
                    if self.momentum != 0.0 {
                        let buf = match slot.take() {
                            None => g.deep_clone(),
                            Some(b) => b * self.momentum + &g * (1.0 - self.dampening),
                        };
                        g = if self.nesterov {
                            g + &buf * self.momentum
                        } else {
                            buf.clone()
                        };
                        *slot = Some(buf);
                    }
                    p.sub_(g * group.lr);
                }
            }
        });
    }
    groups_impl!();
    fn momentum_or_beta1(&self) -> Option<f64> {
        Some(self.momentum)
    }
    fn set_momentum_or_beta1(&mut self, value: f64) {
        self.momentum = value;
    }
    fn state_dict(&self) -> StateDict {
        state::save(
            &self.groups,
            &self.bufs,
            &[
                ("momentum", self.momentum),
                ("dampening", self.dampening),
                ("weight_decay", self.weight_decay),
                ("nesterov", flag(self.nesterov)),
            ],
        )
    }
    fn load_state_dict(&mut self, sd: &StateDict) -> Result<()> {
        let names = ["momentum", "dampening", "weight_decay", "nesterov"];
        let loaded = state::load(&self.groups, sd, names)?;
        let [m, d, wd, n] = loaded.commit(&mut self.groups, &mut self.bufs);
        (self.momentum, self.dampening, self.weight_decay) = (m, d, wd);
        self.nesterov = n != 0.0;
        Ok(())
    }
}
