//! A model written as `#[derive(Module)]` structs — residual blocks (Linear + LayerNorm +
//! GELU + Dropout) in a `Vec`, between a stem and a head — trained with AdamW and
//! cross-entropy to tell apart three noisy spirals, then saved to a safetensors
//! checkpoint and reloaded into a fresh model that gives bit-identical outputs.
//!
//! ```sh
//! cargo run --example derive_mlp -- [--steps N]
//! ```
//!
//! `tests/examples_train.rs` includes this file and checks that the loss falls.

use flint::loss::CrossEntropy;
use flint::nn::{Dropout, LayerNorm, Linear};
use flint::no_grad;
use flint::optim::Adam;
use flint::prelude::*;
use std::path::Path;

/// Number of spiral arms (classes).
pub const CLASSES: usize = 3;

/// A residual block: `x + dropout(gelu(norm(fc(x))))`.
#[derive(Module)]
pub struct Block {
    fc: Linear,
    norm: LayerNorm,
    drop: Dropout,
}

impl Block {
    /// A block of width `d`.
    pub fn new(d: usize, dropout: f64) -> Block {
        Block {
            fc: Linear::new(d, d, ()),
            norm: LayerNorm::new(&[d], ()),
            drop: Dropout::new(dropout),
        }
    }
}

impl Forward for Block {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.norm.try_forward(&self.fc.try_forward(x)?)?;
        let h = self.drop.try_forward(&h.gelu(GeluApprox::None))?;
        x.try_add(&h)
    }
}

/// The classifier: points `[N, 2]` → logits `[N, CLASSES]`.
#[derive(Module)]
#[module(name = "SpiralNet")]
pub struct SpiralNet {
    stem: Linear,
    blocks: Vec<Block>,
    head: Linear,
    /// Not a module: skipped by the derive without an attribute.
    width: usize,
}

impl SpiralNet {
    /// `depth` blocks of width `width` (parameters drawn from the global generator).
    pub fn new(width: usize, depth: usize) -> SpiralNet {
        SpiralNet {
            stem: Linear::new(2, width, ()),
            blocks: (0..depth).map(|_| Block::new(width, 0.1)).collect(),
            head: Linear::new(width, CLASSES, ()),
            width,
        }
    }

    /// The width of the hidden layers.
    pub fn width(&self) -> usize {
        self.width
    }
}

impl Forward for SpiralNet {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.stem.try_forward(x)?.gelu(GeluApprox::None);
        for b in &self.blocks {
            h = b.try_forward(&h)?;
        }
        self.head.try_forward(&h)
    }
}

/// `n` points per class on [`CLASSES`] interleaved spiral arms with Gaussian noise, drawn
/// from `g`: inputs `[n·CLASSES, 2]` (f32) and labels `[n·CLASSES]` (i64).
pub fn spirals(g: &mut Generator, n: usize, noise: f64) -> (Tensor, Tensor) {
    let total = n * CLASSES;
    let t = g.rand([total], DType::F64).to_vec::<f64>();
    let eps = g.randn([total, 2], DType::F64).to_vec::<f64>();
    let mut xy = Vec::with_capacity(2 * total);
    let mut labels = Vec::with_capacity(total);
    for (i, &t) in t.iter().enumerate() {
        let class = i % CLASSES;
        let r = 0.15 + 0.85 * t;
        let angle = 4.5 * t + class as f64 * std::f64::consts::TAU / CLASSES as f64;
        xy.push((r * angle.cos() + noise * eps[2 * i]) as f32);
        xy.push((r * angle.sin() + noise * eps[2 * i + 1]) as f32);
        labels.push(class as i64);
    }
    (
        Tensor::from_vec(xy, [total, 2]),
        Tensor::from_vec(labels, [total]),
    )
}

/// What a training run gives back.
pub struct Report {
    /// The loss of every step (training mode, full batch).
    pub losses: Vec<f32>,
    /// Accuracy in eval mode on a held-out set from the same distribution.
    pub test_accuracy: f64,
    /// The model's summary (`Display`).
    pub summary: String,
    /// The number of parameters.
    pub parameters: usize,
    /// Whether the model reloaded from the checkpoint gave bit-identical eval outputs.
    pub reload_identical: bool,
}

impl Report {
    /// The loss before the first update.
    pub fn initial_loss(&self) -> f32 {
        self.losses.first().copied().unwrap_or(f32::NAN)
    }
    /// The mean loss of the last 5 steps (dropout makes single steps noisy).
    pub fn final_loss(&self) -> f32 {
        let tail = &self.losses[self.losses.len().saturating_sub(5)..];
        tail.iter().sum::<f32>() / tail.len().max(1) as f32
    }
}

/// Fraction of rows whose arg-max logit is the label.
fn accuracy(logits: &Tensor, labels: &Tensor) -> f64 {
    logits
        .argmax(-1, false)
        .eq(labels)
        .to_dtype(DType::F64)
        .mean_all()
        .item::<f64>()
}

/// Trains a fresh model for `steps` full-batch AdamW steps from `seed`, saves it to a
/// checkpoint in `checkpoint_dir` and reloads it into a second model.
pub fn train(steps: usize, seed: u64, checkpoint_dir: &Path) -> Result<Report> {
    let mut data = Generator::new(seed);
    let (x, y) = spirals(&mut data, 100, 0.05);
    let (x_test, y_test) = spirals(&mut data, 100, 0.05);

    manual_seed(seed); // parameter init and dropout masks
    let mut model = SpiralNet::new(32, 2);
    let mut opt = Adam::adamw(model.parameters(), 1e-2);
    let criterion = CrossEntropy::new();

    model.train();
    let mut losses = Vec::with_capacity(steps);
    for _ in 0..steps {
        let loss = criterion.try_forward(&model.try_forward(&x)?, &y)?;
        losses.push(loss.item::<f32>());
        opt.zero_grad();
        loss.backward();
        opt.step();
    }

    model.eval();
    let (logits, test_accuracy) = no_grad(|| -> Result<_> {
        let logits = model.try_forward(&x_test)?;
        let acc = accuracy(&logits, &y_test);
        Ok((logits, acc))
    })?;

    // Save, then load into a model with different initial weights.
    std::fs::create_dir_all(checkpoint_dir).map_err(|e| Error::io(checkpoint_dir, e))?;
    let path = checkpoint_dir.join("spiral_net.safetensors");
    model.save(&path)?;
    manual_seed(seed.wrapping_add(1));
    let mut reloaded = SpiralNet::new(32, 2);
    reloaded.load(&path)?;
    reloaded.eval();
    let again = no_grad(|| reloaded.try_forward(&x_test))?;
    let bits = |t: &Tensor| -> Vec<u32> { t.to_vec::<f32>().iter().map(|v| v.to_bits()).collect() };
    let reload_identical = bits(&logits) == bits(&again);

    Ok(Report {
        losses,
        test_accuracy,
        summary: model.to_string(),
        parameters: model.num_parameters(),
        reload_identical,
    })
}

/// `--steps N` (or `--steps=N`); the default is 300.
fn parse_steps(args: &[String]) -> std::result::Result<usize, String> {
    let mut steps = 300;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = if a == "--steps" {
            it.next().ok_or("--steps needs a number")?.clone()
        } else if let Some(v) = a.strip_prefix("--steps=") {
            v.to_string()
        } else {
            return Err(format!(
                "unknown argument `{a}`; usage: derive_mlp [--steps N]"
            ));
        };
        steps = value
            .parse()
            .map_err(|_| format!("--steps needs a number, got `{value}`"))?;
    }
    Ok(steps)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let steps = match parse_steps(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("flint-derive-mlp-{}", std::process::id()));
    let report = match train(steps, 0, &dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("training failed: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", report.summary);
    println!("{} parameters", report.parameters);
    let every = (steps / 10).max(1);
    for (i, l) in report.losses.iter().enumerate() {
        if i % every == 0 || i + 1 == steps {
            println!("step {i:>4}  loss {l:.4}");
        }
    }
    println!(
        "loss {:.4} -> {:.4}, held-out accuracy {:.1}% (chance {:.1}%)",
        report.initial_loss(),
        report.final_loss(),
        100.0 * report.test_accuracy,
        100.0 / CLASSES as f64
    );
    println!(
        "checkpoint {}: reloaded model {}",
        dir.join("spiral_net.safetensors").display(),
        if report.reload_identical {
            "gives bit-identical outputs"
        } else {
            "DIFFERS"
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
    if !report.reload_identical {
        std::process::exit(1);
    }
}
