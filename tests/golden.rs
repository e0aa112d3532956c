//! Every case file of the PyTorch golden vectors (tests/golden/, written by golden.py;
//! `FLINT_GOLDEN_DIR` points the harness elsewhere) checked in one test.
//!
//! Each file is routed to a checker by its name; a file no checker knows is a failure,
//! not a skip, and so is a file that `index.json` lists but the folder lacks. The test
//! ends by printing `golden: N cases passed, M failed`. Tolerance: 1e-6 relative in f64
//! (1e-4 where a case is also run in f32).

mod common;
use common::{assert_close, golden_dir, Case};
use flint::loss::{mse_loss, CrossEntropy, Reduction};
use flint::nn::functional::{
    padding_mask, scaled_dot_product_attention, scaled_dot_product_attention_with_weights,
};
use flint::nn::{BatchNorm1d, BatchNorm2d, Forward, LayerNorm, ModuleExt};
use flint::optim::{Adagrad, Adam, Optimizer, RmsProp, Sgd};
use flint::{DType, GeluApprox, Tensor};
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};

const RTOL_F64: f64 = 1e-6;
const RTOL_F32: f64 = 1e-4;

type Check = fn(&Case);

/// The checker of a case, by the family its name starts with.
fn checker(name: &str) -> Option<Check> {
    let families: [(&str, Check); 8] = [
        ("gelu_", gelu),
        ("softmax_", softmax),
        ("masked_fill_", masked_fill),
        ("cross_entropy_", cross_entropy),
        ("optim_", optimizer),
        ("batchnorm", batchnorm),
        ("layernorm_", layernorm),
        ("attention_", attention),
    ];
    families
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, f)| *f)
}

#[test]
fn every_golden_case_matches_pytorch() {
    let dir = golden_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| p.file_name().is_some_and(|n| n != "index.json"))
        .collect();
    files.sort();
    let mut failures = Vec::new();
    let mut passed = 0;

    // Everything the index promises must be there.
    if let Ok(text) = std::fs::read_to_string(dir.join("index.json")) {
        let index: Value = serde_json::from_str(&text).expect("index.json is JSON");
        if let Some(listed) = index["files"].as_object() {
            for f in listed.keys() {
                if !dir.join(f).exists() {
                    failures.push(format!("{f}: listed in index.json but missing"));
                }
            }
        }
    }

    for path in &files {
        let case = Case::from_path(path);
        let Some(check) = checker(&case.name) else {
            failures.push(format!("{}: unknown case (no checker)", case.name));
            continue;
        };
        match catch_unwind(AssertUnwindSafe(|| check(&case))) {
            Ok(()) => passed += 1,
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {msg}", case.name));
            }
        }
    }
    println!("golden: {passed} cases passed, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "golden failures:\n{}",
        failures.join("\n")
    );
    assert!(passed > 0, "no golden cases found in {}", dir.display());
}

/// The gradient of `f(x)` with respect to `x` for the given output gradient.
fn vjp(x: &Tensor, grad_output: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let x = x.detach().requires_grad_(true);
    f(&x).backward_with(grad_output);
    x.grad().expect("x gets a gradient")
}

fn num(c: &Case, k: &str) -> f64 {
    c.param(k)
        .as_f64()
        .unwrap_or_else(|| panic!("{}: param {k}", c.name))
}

// ---------------------------------------------------------------- elementwise ops

fn gelu(c: &Case) {
    let approx = match c.param("approximate").as_str() {
        Some("tanh") => GeluApprox::Tanh,
        _ => GeluApprox::None,
    };
    let (x, go) = (c.input("x"), c.input("grad_output"));
    assert_close("y", &x.gelu(approx), &c.output("y"), RTOL_F64);
    assert_close(
        "y f32",
        &x.to_dtype(DType::F32).gelu(approx),
        &c.output("y"),
        RTOL_F32,
    );
    let g = vjp(&x, &go, |t| t.gelu(approx));
    assert_close("grad_x", &g, &c.output("grad_x"), RTOL_F64);
    let d = vjp(&x, &x.ones_like(), |t| t.gelu(approx));
    assert_close("dydx", &d, &c.output("dydx"), RTOL_F64);
}

fn softmax(c: &Case) {
    let (x, go) = (c.input("x"), c.input("grad_output"));
    let dim = c.param("dim").as_i64().expect("dim") as isize;
    assert_close("softmax", &x.softmax(dim), &c.output("softmax"), RTOL_F64);
    assert_close(
        "log_softmax",
        &x.log_softmax(dim),
        &c.output("log_softmax"),
        RTOL_F64,
    );
    // the same through a non-contiguous view of the input
    let rev: Vec<isize> = (0..x.ndim() as isize).rev().collect();
    let xt = x.permute(&rev).contiguous().permute(&rev);
    assert!(!xt.is_contiguous());
    assert_close(
        "softmax of a view",
        &xt.softmax(dim),
        &c.output("softmax"),
        RTOL_F64,
    );
    assert_close(
        "log_softmax f32",
        &x.to_dtype(DType::F32).log_softmax(dim),
        &c.output("log_softmax"),
        RTOL_F32,
    );
    let g = vjp(&x, &go, |t| t.softmax(dim));
    assert_close("grad softmax", &g, &c.output("grad_x_softmax"), RTOL_F64);
    let g = vjp(&x, &go, |t| t.log_softmax(dim));
    assert_close(
        "grad log_softmax",
        &g,
        &c.output("grad_x_log_softmax"),
        RTOL_F64,
    );
}

fn masked_fill(c: &Case) {
    let value = num(c, "value");
    let mask = c.input("mask");
    let y = c.input("x").masked_fill(&mask, value);
    assert_close("y", &y, &c.output("y"), RTOL_F64);
    let g = vjp(&c.input("x"), &c.input("grad_output"), |t| {
        t.masked_fill(&mask, value)
    });
    assert_close("grad_x", &g, &c.output("grad_x"), RTOL_F64);
}

// ---------------------------------------------------------------- losses

fn cross_entropy(c: &Case) {
    let reduction = match c.param("reduction").as_str().expect("reduction") {
        "mean" => Reduction::Mean,
        "sum" => Reduction::Sum,
        _ => Reduction::None,
    };
    let ce = CrossEntropy::new()
        .label_smoothing(num(c, "label_smoothing"))
        .ignore_index(c.param("ignore_index").as_i64().expect("ignore_index"))
        .reduction(reduction);
    let (logits, targets) = (c.input("logits"), c.input("targets"));
    assert_close(
        "loss",
        &ce.forward(&logits, &targets),
        &c.output("loss"),
        RTOL_F64,
    );
    let go = if reduction == Reduction::None {
        c.input("grad_output")
    } else {
        Tensor::scalar(1.0f64)
    };
    let g = vjp(&logits, &go, |t| ce.forward(t, &targets));
    assert_close("grad_logits", &g, &c.output("grad_logits"), RTOL_F64);
    let l32 = ce.forward(&logits.to_dtype(DType::F32), &targets);
    assert_close("loss f32", &l32, &c.output("loss"), RTOL_F32);
}

// ---------------------------------------------------------------- optimizers

fn build_optimizer(c: &Case, params: Vec<Tensor>) -> Box<dyn Optimizer> {
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

/// A linear regression `X @ Wᵀ + b` under MSE, checking the loss, the gradients and the
/// parameters after every step.
fn optimizer(c: &Case) {
    let w = c.input("W0").requires_grad_(true);
    let b = c.input("b0").requires_grad_(true);
    let (x, y) = (c.input("X"), c.input("Y"));
    let mut opt = build_optimizer(c, vec![w.clone(), b.clone()]);
    let (losses, ws, bs) = (c.output("loss"), c.output("W"), c.output("b"));
    let (gws, gbs) = (c.output("grad_W"), c.output("grad_b"));
    let steps = c.param("steps").as_u64().expect("steps") as isize;
    for k in 0..steps {
        opt.zero_grad();
        let loss = mse_loss(&(x.matmul(&w.t()) + &b), &y, Reduction::Mean);
        let at = format!("step {}", k + 1);
        assert_close(&format!("{at} loss"), &loss, &losses.select(0, k), RTOL_F64);
        loss.backward();
        let gw = w.grad().expect("grad");
        assert_close(&format!("{at} grad W"), &gw, &gws.select(0, k), RTOL_F64);
        let gb = b.grad().expect("grad");
        assert_close(&format!("{at} grad b"), &gb, &gbs.select(0, k), RTOL_F64);
        opt.step();
        assert_close(&format!("{at} W"), &w, &ws.select(0, k), RTOL_F64);
        assert_close(&format!("{at} b"), &b, &bs.select(0, k), RTOL_F64);
    }
}

// ---------------------------------------------------------------- normalisation layers

/// Two training steps (outputs, gradients, running statistics), then evaluation on the
/// running statistics, through the `BatchNorm1d`/`BatchNorm2d` modules.
fn batchnorm(c: &Case) {
    let nf = c.param("num_features").as_u64().expect("num_features") as usize;
    let x1 = c.input("x1");
    let mut bn: Box<dyn BnLike> = if x1.ndim() == 4 {
        Box::new(BatchNorm2d::new(nf, DType::F64))
    } else {
        Box::new(BatchNorm1d::new(nf, DType::F64))
    };
    bn.load(&[
        ("weight".into(), c.input("weight")),
        ("bias".into(), c.input("bias")),
    ]);
    let go = c.input("grad_output");
    let x = x1.requires_grad_(true);
    let y1 = bn.fwd(&x);
    assert_close("y1", &y1, &c.output("y1"), RTOL_F64);
    y1.backward_with(&go);
    assert_close(
        "grad_x1",
        &x.grad().expect("grad"),
        &c.output("grad_x1"),
        RTOL_F64,
    );
    let params = bn.params();
    assert_close(
        "grad_weight",
        &params[0].grad().expect("grad"),
        &c.output("grad_weight"),
        RTOL_F64,
    );
    assert_close(
        "grad_bias",
        &params[1].grad().expect("grad"),
        &c.output("grad_bias"),
        RTOL_F64,
    );
    let stat = |bn: &dyn BnLike, k: &str| bn.buffer(k);
    assert_close(
        "running_mean_1",
        &stat(&*bn, "running_mean"),
        &c.output("running_mean_1"),
        RTOL_F64,
    );
    assert_close(
        "running_var_1",
        &stat(&*bn, "running_var"),
        &c.output("running_var_1"),
        RTOL_F64,
    );
    let y2 = bn.fwd(&c.input("x2"));
    assert_close("y2", &y2, &c.output("y2"), RTOL_F64);
    assert_close(
        "running_mean_2",
        &stat(&*bn, "running_mean"),
        &c.output("running_mean_2"),
        RTOL_F64,
    );
    assert_close(
        "running_var_2",
        &stat(&*bn, "running_var"),
        &c.output("running_var_2"),
        RTOL_F64,
    );
    assert_eq!(stat(&*bn, "num_batches_tracked").item::<i64>(), 2);
    bn.set_eval();
    let x3 = c.input("x3").requires_grad_(true);
    let y3 = bn.fwd(&x3);
    assert_close("y3 (eval)", &y3, &c.output("y3"), RTOL_F64);
    y3.backward_with(&go);
    assert_close(
        "grad_x3",
        &x3.grad().expect("grad"),
        &c.output("grad_x3"),
        RTOL_F64,
    );
}

/// The batch-norm modules of different ranks behind one interface for [`batchnorm`].
trait BnLike {
    fn fwd(&self, x: &Tensor) -> Tensor;
    fn load(&mut self, state: &[(String, Tensor)]);
    fn params(&self) -> Vec<Tensor>;
    fn buffer(&self, name: &str) -> Tensor;
    fn set_eval(&mut self);
}

impl<M: Forward + ModuleExt> BnLike for M {
    fn fwd(&self, x: &Tensor) -> Tensor {
        self.forward(x)
    }
    fn load(&mut self, state: &[(String, Tensor)]) {
        self.load_state_dict(state, false)
            .expect("load weight and bias");
    }
    fn params(&self) -> Vec<Tensor> {
        self.parameters()
    }
    fn buffer(&self, name: &str) -> Tensor {
        self.named_buffers()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .unwrap_or_else(|| panic!("no buffer {name}"))
    }
    fn set_eval(&mut self) {
        self.eval()
    }
}

fn layernorm(c: &Case) {
    let shape: Vec<usize> = c
        .param("normalized_shape")
        .as_array()
        .expect("normalized_shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    let mut ln = LayerNorm::with_config(&shape, num(c, "eps"), true, DType::F64);
    ln.load_state_dict(
        &[
            ("weight".into(), c.input("weight")),
            ("bias".into(), c.input("bias")),
        ],
        true,
    )
    .expect("load");
    let x = c.input("x").requires_grad_(true);
    let y = ln.forward(&x);
    assert_close("y", &y, &c.output("y"), RTOL_F64);
    y.backward_with(&c.input("grad_output"));
    assert_close(
        "grad_x",
        &x.grad().expect("grad"),
        &c.output("grad_x"),
        RTOL_F64,
    );
    let p = ln.parameters();
    assert_close(
        "grad_weight",
        &p[0].grad().expect("grad"),
        &c.output("grad_weight"),
        RTOL_F64,
    );
    assert_close(
        "grad_bias",
        &p[1].grad().expect("grad"),
        &c.output("grad_bias"),
        RTOL_F64,
    );
    let y32 = LayerNorm::with_config(&shape, num(c, "eps"), false, DType::F32)
        .forward(&c.input("x").to_dtype(DType::F32))
        * c.input("weight").to_dtype(DType::F32)
        + c.input("bias").to_dtype(DType::F32);
    assert_close("y f32", &y32, &c.output("y"), RTOL_F32);
}

// ---------------------------------------------------------------- attention

/// Scaled dot-product attention twice: with the case's combined bool mask, and with
/// Flint's own `causal` flag and `padding_mask` built from the key lengths.
fn attention(c: &Case) {
    let (q, k, v) = (c.input("q"), c.input("k"), c.input("v"));
    let go = c.input("grad_output");
    let scale = Some(num(c, "scale"));
    let causal = c.param("causal").as_bool().expect("causal");
    let padding = c.param("padding").as_bool().expect("padding");
    let lengths: Vec<usize> = c
        .input("key_lengths")
        .to_vec::<i64>()
        .into_iter()
        .map(|l| l as usize)
        .collect();
    let t = k.size(-2);
    let own_mask = padding.then(|| {
        padding_mask(&lengths, t)
            .logical_not()
            .view([lengths.len() as isize, 1, 1, t as isize])
    });
    let given = c.input("attn_mask");
    for (label, mask, causal) in [
        ("case mask", Some(&given), false),
        ("flint masks", own_mask.as_ref(), causal),
    ] {
        let (qq, kk, vv) = (
            q.detach().requires_grad_(true),
            k.detach().requires_grad_(true),
            v.detach().requires_grad_(true),
        );
        let (y, p) = scaled_dot_product_attention_with_weights(
            &qq, &kk, &vv, mask, causal, 0.0, false, scale,
        )
        .expect("attention");
        assert_close(&format!("{label}: y"), &y, &c.output("y"), RTOL_F64);
        assert_close(&format!("{label}: probs"), &p, &c.output("probs"), RTOL_F64);
        y.backward_with(&go);
        for (n, t) in [("grad_q", &qq), ("grad_k", &kk), ("grad_v", &vv)] {
            let g = t.grad().expect("grad");
            assert_close(&format!("{label}: {n}"), &g, &c.output(n), RTOL_F64);
        }
        // the fused kernel (output only) against the same references
        let (qq, kk, vv) = (
            q.detach().requires_grad_(true),
            k.detach().requires_grad_(true),
            v.detach().requires_grad_(true),
        );
        let y = scaled_dot_product_attention(&qq, &kk, &vv, mask, causal, 0.0, false, scale)
            .expect("attention");
        assert_eq!(
            y.grad_fn().expect("a node").name(),
            "scaled_dot_product_attention",
            "{label}: the fused path"
        );
        assert_close(&format!("{label}: y (fused)"), &y, &c.output("y"), RTOL_F64);
        y.backward_with(&go);
        for (n, t) in [("grad_q", &qq), ("grad_k", &kk), ("grad_v", &vv)] {
            let g = t.grad().expect("grad");
            assert_close(&format!("{label}: {n} (fused)"), &g, &c.output(n), RTOL_F64);
        }
    }
}
