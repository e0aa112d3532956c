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

/// Runs `steps` updates of `opt` on `f(w) = Σ (w − c)²` and returns the parameter
/// values after each step, alongside the gradients used.
fn run(mut opt: Box<dyn Optimizer>, w: &Tensor, steps: usize) -> Vec<(Vec<f64>, Vec<f64>)> {
    let c = Tensor::from_vec(vec![0.5f64, -1.0, 2.0], [3]);
    (0..steps)
        .map(|_| {
            opt.zero_grad();
            (w - &c).square().sum_all().backward();
            let g = w.grad().expect("grad").to_vec::<f64>();
            opt.step();
            (w.to_vec::<f64>(), g)
        })
        .collect()
}

fn check(
    name: &str,
    got: &[(Vec<f64>, Vec<f64>)],
    mut reference: impl FnMut(&mut [f64], &[f64], usize),
) {
    let mut p = vec![1.0f64, 2.0, -3.0];
    for (k, (w, g)) in got.iter().enumerate() {
        reference(&mut p, g, k + 1);
        for (a, b) in w.iter().zip(&p) {
            assert!(
                (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                "{name} step {}: {w:?} vs {p:?}",
                k + 1
            );
        }
    }
}

fn start() -> Tensor {
    Tensor::from_vec(vec![1.0f64, 2.0, -3.0], [3]).requires_grad_(true)
}

#[test]
fn adadelta_adamax_asgd_follow_their_documented_formulas() {
    use flint::optim::{Adadelta, Adamax, Asgd};
    // Adadelta (torch.optim.Adadelta docs): v = ρv + (1−ρ)g²; Δ = √(u+ε)/√(v+ε)·g;
    // u = ρu + (1−ρ)Δ²; p −= lr·Δ
    let w = start();
    let got = run(
        Box::new(Adadelta::new(vec![w.clone()], 1.0).weight_decay(0.1)),
        &w,
        6,
    );
    let (mut v, mut u) = (vec![0.0; 3], vec![0.0; 3]);
    check("adadelta", &got, |p, g, _| {
        for i in 0..3 {
            let gi = g[i] + 0.1 * p[i];
            v[i] = 0.9 * v[i] + 0.1 * gi * gi;
            let d = (u[i] + 1e-6f64).sqrt() / (v[i] + 1e-6f64).sqrt() * gi;
            u[i] = 0.9 * u[i] + 0.1 * d * d;
            p[i] -= d;
        }
    });
    // Adamax: m = β₁m + (1−β₁)g; u = max(β₂u, |g| + ε); p −= lr/(1−β₁ᵗ)·m/u
    let w = start();
    let got = run(Box::new(Adamax::new(vec![w.clone()], 0.01)), &w, 6);
    let (mut m, mut uu) = (vec![0.0; 3], vec![0.0f64; 3]);
    check("adamax", &got, |p, g, t| {
        for i in 0..3 {
            m[i] = m[i] + (g[i] - m[i]) * 0.1;
            uu[i] = (uu[i] * 0.999).max(g[i].abs() + 1e-8);
            p[i] -= 0.01 / (1.0 - 0.9f64.powi(t as i32)) * m[i] / uu[i];
        }
    });
    // ASGD: p ← p(1 − λη) − ηg; η ← lr/(1 + λ·lr·t)^α; averaging from t0
    let w = start();
    let asgd = Asgd::new(vec![w.clone()], 0.05).t0(2.0);
    let got = run(Box::new(asgd), &w, 6);
    let mut eta = 0.05f64;
    check("asgd", &got, |p, g, t| {
        for i in 0..3 {
            p[i] = p[i] * (1.0 - 1e-4 * eta) - eta * g[i];
        }
        eta = 0.05 / (1.0 + 1e-4 * 0.05 * t as f64).powf(0.75);
    });
}

#[test]
fn gradient_clipping() {
    use flint::optim::{clip_grad_norm_, clip_grad_value_};
    let a = Tensor::zeros([2], flint::DType::F64).requires_grad_(true);
    let b = Tensor::zeros([1], flint::DType::F64).requires_grad_(true);
    a.set_grad(Some(Tensor::from_vec(vec![1.0f64, 2.0], [2])));
    b.set_grad(Some(Tensor::from_vec(vec![2.0f64], [1])));
    let n = clip_grad_norm_(&[a.clone(), b.clone()], 1.5);
    assert_eq!(n, 3.0);
    let scale = 1.5 / (3.0 + 1e-6);
    assert!((a.grad().unwrap().to_vec::<f64>()[1] - 2.0 * scale).abs() < 1e-12);
    assert_eq!(
        clip_grad_norm_(std::slice::from_ref(&b), 100.0),
        2.0 * scale
    ); // no clipping below the max
    a.set_grad(Some(Tensor::from_vec(vec![-2.0f64, 0.25], [2])));
    clip_grad_value_(std::slice::from_ref(&a), 0.5);
    assert_eq!(a.grad().unwrap().to_vec::<f64>(), vec![-0.5, 0.25]);
}
