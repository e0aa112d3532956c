//! Optimizers that the golden files do not cover (Adadelta, Adamax, ASGD), against their
//! documented update rules, plus parameter groups and gradient clipping. The golden
//! configurations are checked by tests/golden.rs.

use flint::optim::{Optimizer, Sgd};
use flint::Tensor;

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
