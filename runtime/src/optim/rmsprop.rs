//! RMSprop (plain, centered, with momentum).

use super::state::{self, flag, SlotReader, SlotState, StateDict};
use super::{fused, Optimizer, ParamGroup, Slots};
use crate::autograd::no_grad;
use crate::error::Result;
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
struct State {
    square_avg: Tensor,
    grad_avg: Option<Tensor>,
    buf: Option<Tensor>,
}

impl SlotState for State {
    fn save(&self, out: &mut Vec<(&'static str, Tensor)>) {
        out.push(("square_avg", self.square_avg.clone()));
        if let Some(g) = &self.grad_avg {
            out.push(("grad_avg", g.clone()));
        }
        if let Some(b) = &self.buf {
            out.push(("momentum_buffer", b.clone()));
        }
    }
    fn load(r: &mut SlotReader<'_>) -> Self {
        State {
            square_avg: r.tensor("square_avg"),
            grad_avg: r.optional("grad_avg"),
            buf: r.optional("momentum_buffer"),
        }
    }
}

/// RMSprop like `torch.optim.RMSprop`.
#[derive(Clone, Debug)]
pub struct RmsProp {
    groups: Vec<ParamGroup>,
    /// Smoothing constant of the squared-gradient average.
    pub alpha: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Momentum factor.
    pub momentum: f64,
    /// Normalise by the variance estimate instead of the second moment.
    pub centered: bool,
    state: Slots<State>,
}

impl RmsProp {
    /// RMSprop with PyTorch's defaults (alpha 0.99, eps 1e-8).
    pub fn new(params: Vec<Tensor>, lr: f64) -> RmsProp {
        RmsProp {
            groups: vec![ParamGroup::new(params, lr)],
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            state: Slots::default(),
        }
    }
    /// Sets alpha.
    pub fn alpha(mut self, a: f64) -> Self {
        self.alpha = a;
        self
    }
    /// Sets ε.
    pub fn eps(mut self, e: f64) -> Self {
        self.eps = e;
        self
    }
    /// Sets the weight decay.
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
    /// Sets the momentum.
    pub fn momentum(mut self, m: f64) -> Self {
        self.momentum = m;
        self
    }
    /// Turns the centered variant on or off.
    pub fn centered(mut self, on: bool) -> Self {
        self.centered = on;
        self
    }
}

impl Optimizer for RmsProp {
    fn step(&mut self) {
        self.state.sync(&self.groups);
        let a = self.alpha;
        no_grad(|| {
            for (gi, group) in self.groups.iter().enumerate() {
                for (pi, p) in group.params.iter().enumerate() {
                    let Some(mut g) = p.grad() else { continue };
                    let st = self.state.state[gi][pi].get_or_insert_with(|| State {
                        square_avg: p.zeros_like(),
                        grad_avg: None,
                        buf: None,
                    });
                    let coeffs = fused::RmsPropStep {
                        lr: group.lr,
                        alpha: a,
                        eps: self.eps,
                        weight_decay: self.weight_decay,
                        momentum: self.momentum,
                        centered: self.centered,
                    };
                    let state = fused::RmsPropState {
                        square_avg: &st.square_avg,
                        grad_avg: st.grad_avg.as_ref(),
                        buf: st.buf.as_ref(),
                    };
                    if let Some((sa, ga, buf)) = fused::rmsprop(p, &g, state, &coeffs) {
                        st.square_avg = sa;
                        if ga.is_some() {
                            st.grad_avg = ga;
                        }
                        if buf.is_some() {
                            st.buf = buf;
                        }
                        continue;
                    }
                    if self.weight_decay != 0.0 {
                        g = g + p * self.weight_decay;
                    }
                    st.square_avg = &st.square_avg * a + &g * &g * (1.0 - a);
                    let avg = if self.centered {
                        let ga = st.grad_avg.take().unwrap_or_else(|| p.zeros_like());
                        let ga = &ga + (&g - &ga) * (1.0 - a);
                        let avg = (&st.square_avg - &ga * &ga).sqrt() + self.eps;
                        st.grad_avg = Some(ga);
                        avg
                    } else {
                        st.square_avg.sqrt() + self.eps
                    };
                    if self.momentum > 0.0 {
                        let buf = st.buf.take().unwrap_or_else(|| p.zeros_like());
                        let buf = buf * self.momentum + &g / &avg;
                        p.sub_(&buf * group.lr);
                        st.buf = Some(buf);
                    } else {
                        p.sub_(&g / &avg * group.lr);
                    }
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
            &self.state,
            &[
                ("alpha", self.alpha),
                ("eps", self.eps),
                ("weight_decay", self.weight_decay),
                ("momentum", self.momentum),
                ("centered", flag(self.centered)),
            ],
        )
    }
    fn load_state_dict(&mut self, sd: &StateDict) -> Result<()> {
        let names = ["alpha", "eps", "weight_decay", "momentum", "centered"];
        let loaded = state::load(&self.groups, sd, names)?;
        let [a, eps, wd, m, c] = loaded.commit(&mut self.groups, &mut self.state);
        (self.alpha, self.eps, self.weight_decay, self.momentum) = (a, eps, wd, m);
        self.centered = c != 0.0;
        Ok(())
    }
}
