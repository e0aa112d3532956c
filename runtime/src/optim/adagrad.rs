//! Adagrad with learning-rate decay and an initial accumulator.

use super::state::{self, SlotReader, SlotState, StateDict};
use super::{fused, Optimizer, ParamGroup, Slots};
use crate::autograd::no_grad;
use crate::error::Result;
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
struct State {
    step: u64,
    sum: Tensor,
}

impl SlotState for State {
    fn save(&self, out: &mut Vec<(&'static str, Tensor)>) {
        out.push(("step", state::count_tensor(self.step)));
        out.push(("sum", self.sum.clone()));
    }
    fn load(r: &mut SlotReader<'_>) -> Self {
        State {
            step: r.count("step"),
            sum: r.tensor("sum"),
        }
    }
}

/// Adagrad like `torch.optim.Adagrad`.
#[derive(Clone, Debug)]
pub struct Adagrad {
    groups: Vec<ParamGroup>,
    /// Learning-rate decay: step `t` uses `lr / (1 + (t − 1)·lr_decay)`.
    pub lr_decay: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Starting value of the squared-gradient sum.
    pub initial_accumulator_value: f64,
    /// Added to the denominator.
    pub eps: f64,
    state: Slots<State>,
}

impl Adagrad {
    /// Adagrad with PyTorch's defaults (eps 1e-10).
    pub fn new(params: Vec<Tensor>, lr: f64) -> Adagrad {
        Adagrad {
            groups: vec![ParamGroup::new(params, lr)],
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            state: Slots::default(),
        }
    }
    /// Sets the learning-rate decay.
    pub fn lr_decay(mut self, d: f64) -> Self {
        self.lr_decay = d;
        self
    }
    /// Sets the weight decay.
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
    /// Sets the initial accumulator value.
    pub fn initial_accumulator_value(mut self, v: f64) -> Self {
        self.initial_accumulator_value = v;
        self
    }
    /// Sets ε.
    pub fn eps(mut self, e: f64) -> Self {
        self.eps = e;
        self
    }
}

impl Optimizer for Adagrad {
    fn step(&mut self) {
        self.state.sync(&self.groups);
        no_grad(|| {
            for (gi, group) in self.groups.iter().enumerate() {
                for (pi, p) in group.params.iter().enumerate() {
                    let Some(mut g) = p.grad() else { continue };
                    let init = self.initial_accumulator_value;
                    let st = self.state.state[gi][pi].get_or_insert_with(|| State {
                        step: 0,
                        sum: p.full_like(init),
                    });
                    st.step += 1;
                    let clr = group.lr / (1.0 + (st.step - 1) as f64 * self.lr_decay);
                    let (wd, eps) = (self.weight_decay, self.eps);
                    if let Some(sum) = fused::adagrad(p, &g, &st.sum, clr, wd, eps) {
                        st.sum = sum;
                        continue;
                    }
                    if self.weight_decay != 0.0 {
                        g = g + p * self.weight_decay;
                    }
                    st.sum = &st.sum + &g * &g;
                    let std = st.sum.sqrt() + self.eps;
                    p.sub_(g / std * clr);
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
                ("lr_decay", self.lr_decay),
                ("weight_decay", self.weight_decay),
                ("initial_accumulator_value", self.initial_accumulator_value),
                ("eps", self.eps),
            ],
        )
    }
    fn load_state_dict(&mut self, sd: &StateDict) -> Result<()> {
        let names = [
            "lr_decay",
            "weight_decay",
            "initial_accumulator_value",
            "eps",
        ];
        let loaded = state::load(&self.groups, sd, names)?;
        let [d, wd, init, eps] = loaded.commit(&mut self.groups, &mut self.state);
        (self.lr_decay, self.weight_decay) = (d, wd);
        (self.initial_accumulator_value, self.eps) = (init, eps);
        Ok(())
    }
}
