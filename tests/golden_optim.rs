//! Every optimizer configuration in tests/golden/ against PyTorch, step by step: a linear
//! regression `X @ Wᵀ + b` under MSE, 10 steps, checking the loss, the gradients and the
//! parameters after each step (f64, 1e-6 relative).

mod common;
use common::{assert_close, Case};
use flint::loss::{mse_loss, Reduction};
use flint::optim::{Adagrad, Adam, Optimizer, RmsProp, Sgd};
use flint::Tensor;
use serde_json::Value;

const CASES: [&str; 15] = [
    "optim_sgd_plain",
    "optim_sgd_momentum",
    "optim_sgd_momentum_dampening_wd",
    "optim_sgd_nesterov_wd",
    "optim_adam",
    "optim_adam_amsgrad",
    "optim_adam_l2_wd",
    "optim_adamw",
    "optim_adamw_wd0p1",
    "optim_rmsprop",
    "optim_rmsprop_momentum",
    "optim_rmsprop_centered",
    "optim_rmsprop_centered_momentum_wd",
    "optim_adagrad",
    "optim_adagrad_decay_wd_init",
];

fn num(c: &Case, k: &str) -> f64 {
    c.param(k)
        .as_f64()
        .unwrap_or_else(|| panic!("{}: param {k}", c.name))
}

fn build(c: &Case, params: Vec<Tensor>) -> Box<dyn Optimizer> {
    let lr = num(c, "lr");
    let flag = |k: &str| c.param(k).as_bool().unwrap_or(false);
    match c.param("optimizer").as_str().expect("optimizer") {
        "SGD" => Box::new(
            Sgd::new(params, lr)
                .momentum(num(c, "momentum"))
                .dampening(num(c, "dampening"))
                .weight_decay(num(c, "weight_decay"))
                .nesterov(flag("nesterov")),
        ),
        "Adam" | "AdamW" => {
            let betas = match c.param("betas") {
                Value::Array(b) => (b[0].as_f64().expect("b1"), b[1].as_f64().expect("b2")),
                _ => panic!("{}: betas", c.name),
            };
            Box::new(
                Adam::new(params, lr)
                    .betas(betas.0, betas.1)
                    .eps(num(c, "eps"))
                    .weight_decay(num(c, "weight_decay"))
                    .decoupled(flag("decoupled_weight_decay") || c.param("optimizer") == "AdamW")
                    .amsgrad(flag("amsgrad")),
            )
        }
        "RMSprop" => Box::new(
            RmsProp::new(params, lr)
                .alpha(num(c, "alpha"))
                .eps(num(c, "eps"))
                .weight_decay(num(c, "weight_decay"))
                .momentum(num(c, "momentum"))
                .centered(flag("centered")),
        ),
        "Adagrad" => Box::new(
            Adagrad::new(params, lr)
                .lr_decay(num(c, "lr_decay"))
                .weight_decay(num(c, "weight_decay"))
                .initial_accumulator_value(num(c, "initial_accumulator_value"))
                .eps(num(c, "eps")),
        ),
        other => panic!("{}: unknown optimizer {other}", c.name),
    }
}

#[test]
fn every_optimizer_configuration_matches_pytorch_over_ten_steps() {
    for name in CASES {
        let c = Case::load(name);
        let w = c.input("W0").requires_grad_(true);
        let b = c.input("b0").requires_grad_(true);
        let (x, y) = (c.input("X"), c.input("Y"));
        let mut opt = build(&c, vec![w.clone(), b.clone()]);
        let (losses, ws, bs) = (c.output("loss"), c.output("W"), c.output("b"));
        let (gws, gbs) = (c.output("grad_W"), c.output("grad_b"));
        let steps = c.param("steps").as_u64().expect("steps") as isize;
        for k in 0..steps {
            opt.zero_grad();
            let loss = mse_loss(&(x.matmul(&w.t()) + &b), &y, Reduction::Mean);
            let at = format!("{name} step {}", k + 1);
            assert_close(&format!("{at} loss"), &loss, &losses.select(0, k), 1e-6);
            loss.backward();
            assert_close(
                &format!("{at} grad W"),
                &w.grad().expect("grad"),
                &gws.select(0, k),
                1e-6,
            );
            assert_close(
                &format!("{at} grad b"),
                &b.grad().expect("grad"),
                &gbs.select(0, k),
                1e-6,
            );
            opt.step();
            assert_close(&format!("{at} W"), &w, &ws.select(0, k), 1e-6);
            assert_close(&format!("{at} b"), &b, &bs.select(0, k), 1e-6);
        }
    }
}

#[test]
fn parameter_groups_have_their_own_learning_rate() {
    let a = Tensor::from_vec(vec![1.0f64], [1]).requires_grad_(true);
    let b = Tensor::from_vec(vec![1.0f64], [1]).requires_grad_(true);
    let mut opt = Sgd::new(vec![a.clone()], 0.1);
    opt.add_param_group(vec![b.clone()], 0.5);
    (&a + &b).sum_all().backward();
    opt.step();
    assert_eq!((a.item::<f64>(), b.item::<f64>()), (0.9, 0.5));
    opt.groups_mut()[1].lr = 0.0;
    opt.zero_grad();
    assert!(a.grad().is_none());
    (&a + &b).sum_all().backward();
    opt.step();
    assert_eq!(b.item::<f64>(), 0.5);
}
