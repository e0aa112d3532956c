//! The README's main example: an MLP, declared with `model!`, learns to read the UCI
//! 8×8 handwritten digits bundled in `data/digits/`.
//!
//! ```sh
//! cargo run --release --example digits                 # 30 epochs, about a second
//! cargo run --release --example digits -- --quick      # 3 epochs (what CI runs)
//! cargo run --release --example digits -- --resume     # continue from runs/digits/checkpoint.safetensors
//! ```
//!
//! Rows whose index % 5 == 0 are held out (360 of 1,797); the rest train a 64-128-128-10
//! ReLU network with AdamW and label-smoothed cross-entropy, in shuffled batches of 32.
//! Every epoch ends with the held-out loss and accuracy, a line in
//! `runs/digits/metrics.csv`, TensorBoard scalars in `runs/digits/events.out.tfevents.*`
//! and a checkpoint (model, optimizer, epoch, random state) that `--resume` continues
//! from; the run ends with the curves in `runs/digits/curves.png`.
//! `scripts/digits_torch.py` is the same run in PyTorch.

pub mod common;

use common::classify::{self, Config, Report};
use flint::model;
use flint::optim::Adam;
use flint::prelude::*;

model! {
    /// Two hidden layers of width `H` with ReLU; `dropout` after each.
    pub struct DigitsMlp<const H: usize>(dropout: f64) {
        fc1: Linear(64 -> H),
        fc2: Linear(H -> H),
        head: Linear(H -> 10),
        drop: Dropout(dropout),
    }
    fn forward(x: [b, 64]) -> [b, 10] {
        let h = drop(relu(fc1(x)));
        let h = drop(relu(fc2(h)));
        head(h)
    }
}

/// The model of this example: hidden width 128.
pub type Model = DigitsMlp<128>;

/// Builds the model and AdamW (seeded with `cfg.seed`) and trains them as `cfg` says.
pub fn run(cfg: &Config) -> flint::Result<Report> {
    manual_seed(cfg.seed);
    let mut model = Model::try_new(0.0, (DType::F32, cfg.device))?;
    let mut opt = Adam::adamw(model.parameters(), 1e-3).weight_decay(0.01);
    classify::train(&mut model, &mut opt, None, |x| Ok(x.clone()), cfg)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cfg = Config::new("runs/digits", 30).with_args(
        "digits [--quick] [--epochs N] [--resume] [--out DIR] [--data FILE] [--device cpu|cuda] [--no-progress]",
        3,
    )?;
    run(&cfg)?.print("digits", &cfg.out);
    Ok(())
}
