//! Adam and AdamW.

use super::state::{self, flag, SlotReader, SlotState, StateDict};
use super::{fused, Optimizer, ParamGroup, Slots};
use crate::autograd::no_grad;
use crate::error::Result;
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
struct State {
    step: i32,
    m: Tensor,
    v: Tensor,
    v_max: Option<Tensor>,
}

impl SlotState for State {
    fn save(&self, out: &mut Vec<(&'static str, Tensor)>) {
        out.push(("step", state::count_tensor(self.step as u64)));
        out.push(("exp_avg", self.m.clone()));
        out.push(("exp_avg_sq", self.v.clone()));
        if let Some(v) = &self.v_max {
            out.push(("max_exp_avg_sq", v.clone()));
        }
    }
    fn load(r: &mut SlotReader<'_>) -> Self {
        State {
            step: r.count("step") as i32,
            m: r.tensor("exp_avg"),
            v: r.tensor("exp_avg_sq"),
            v_max: r.optional("max_exp_avg_sq"),
        }
    }
}

/// Adam like `torch.optim.Adam`; with [`Adam::decoupled`] (or [`Adam::adamw`]) it is
/// `torch.optim.AdamW`.
#[derive(Clone, Debug)]
pub struct Adam {
    groups: Vec<ParamGroup>,
    /// `(β₁, β₂)`.
    pub betas: (f64, f64),
    /// Added to the denominator.
    pub eps: f64,
    /// Weight decay: an L2 term in the gradient, or decoupled (AdamW).
    pub weight_decay: f64,
    /// Decoupled weight decay (`p ← p·(1 − lr·wd)` before the update).
    pub decoupled: bool,
    /// Use the running maximum of the second moment (AMSGrad).
    pub amsgrad: bool,
    state: Slots<State>,
}

impl Adam {
    /// Adam with PyTorch's defaults (betas 0.9/0.999, eps 1e-8, no weight decay).
    pub fn new(params: Vec<Tensor>, lr: f64) -> Adam {
        Adam {
            groups: vec![ParamGroup::new(params, lr)],
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            amsgrad: false,
            state: Slots::default(),
        }
    }
    /// AdamW with PyTorch's defaults (weight decay 0.01, decoupled).
    pub fn adamw(params: Vec<Tensor>, lr: f64) -> Adam {
        Adam::new(params, lr).weight_decay(0.01).decoupled(true)
    }
    /// Sets `(β₁, β₂)`.
    pub fn betas(mut self, b1: f64, b2: f64) -> Self {
        self.betas = (b1, b2);
        self
    }
    /// Sets ε.
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// Sets the weight decay.
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
    /// Decoupled (AdamW) or L2 (Adam) weight decay.
    pub fn decoupled(mut self, on: bool) -> Self {
        self.decoupled = on;
        self
    }
    /// Turns AMSGrad on or off.
    pub fn amsgrad(mut self, on: bool) -> Self {
        self.amsgrad = on;
        self
    }
}

impl Optimizer for Adam {
    fn step(&mut self) {
        self.state.sync(&self.groups);
        let (b1, b2) = self.betas;
        no_grad(|| {
            for (gi, group) in self.groups.iter().enumerate() {
                let lr = group.lr;
                for (pi, p) in group.params.iter().enumerate() {
                    let Some(mut g) = p.grad() else { continue };
                    let slot = &mut self.state.state[gi][pi];
                    let st = slot.get_or_insert_with(|| State {
                        step: 0,
                        m: p.zeros_like(),
                        v: p.zeros_like(),
                        v_max: None,
                    });
                    st.step += 1;
                    let coeffs = fused::AdamStep {
                        lr,
                        weight_decay: self.weight_decay,
                        decoupled: self.decoupled,
                        amsgrad: self.amsgrad,
                        betas: (b1, b2),
                        bias1: 1.0 - b1.powi(st.step),
                        bias2_sqrt: (1.0 - b2.powi(st.step)).sqrt(),
                        eps: self.eps,
                    };
                    let v_max = if self.amsgrad {
                        st.v_max.as_ref()
                    } else {
                        None
                    };
                    if let Some((m, v, v_max)) = fused::adam(p, &g, &st.m, &st.v, v_max, &coeffs) {
                        (st.m, st.v) = (m, v);
                        if v_max.is_some() {
                            st.v_max = v_max;
                        }
                        continue;
                    }
                    if self.weight_decay != 0.0 {
                        if self.decoupled {
                            p.mul_(1.0 - lr * self.weight_decay);
                        } else {
                            g = g + p * self.weight_decay;
                        }
                    }
                    st.m = &st.m + (&g - &st.m) * (1.0 - b1);
                    st.v = &st.v * b2 + &g * &g * (1.0 - b2);
                    let bc1 = 1.0 - b1.powi(st.step);
                    let bc2_sqrt = (1.0 - b2.powi(st.step)).sqrt();
                    let second = if self.amsgrad {
                        let vmax = match st.v_max.take() {
                            Some(m) => m.maximum(&st.v),
                            None => st.v.clone(),
                        };
                        st.v_max = Some(vmax.clone());
                        vmax
                    } else {
                        st.v.clone()
                    };
                    let denom = second.sqrt() / bc2_sqrt + self.eps;
                    p.sub_(&st.m / denom * (lr / bc1));
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
                ("decoupled_weight_decay", flag(self.decoupled)),
                ("amsgrad", flag(self.amsgrad)),
            ],
        )
    }
    fn load_state_dict(&mut self, sd: &StateDict) -> Result<()> {
        let names = [
            "betas.0",
            "betas.1",
            "eps",
            "weight_decay",
            "decoupled_weight_decay",
            "amsgrad",
        ];
        let loaded = state::load(&self.groups, sd, names)?;
        let [b1, b2, eps, wd, dec, ams] = loaded.commit(&mut self.groups, &mut self.state);
        (self.betas, self.eps, self.weight_decay) = ((b1, b2), eps, wd);
        (self.decoupled, self.amsgrad) = (dec != 0.0, ams != 0.0);
        Ok(())
    }
}
