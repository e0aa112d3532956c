//! A small residual CNN with BatchNorm and skip connections, written with `model!`, on
//! the 8×8 digits (the images as `[b, 1, 8, 8]`).
//!
//! ```sh
//! cargo run --release --example digits_resnet              # 15 epochs
//! cargo run --release --example digits_resnet -- --quick   # 2 epochs (CI)
//! ```
//!
//! A 3×3 stem to `C` channels, `blocks` residual blocks (conv-BN-ReLU-conv-BN plus the
//! identity, then ReLU), a 2×2 max pool, a second stage of blocks, global average pooling
//! and a linear head; SGD with Nesterov momentum and a cosine learning-rate schedule. The
//! same loop as `digits` (examples/common/classify.rs): progress bars, metrics,
//! checkpoints, `--resume`.

pub mod common;

use common::classify::{self, Config, Report};
use flint::model;
use flint::optim::{CosineAnnealingLR, Sgd};
use flint::prelude::*;

model! {
    /// `relu(x + bn2(conv2(relu(bn1(conv1(x))))))`, keeping `[b, C, h, w]`.
    pub struct ResBlock<const C: usize> {
        conv1: Conv2d(C -> C, kernel = 3, padding = 1, bias = false),
        bn1: BatchNorm2d(C),
        conv2: Conv2d(C -> C, kernel = 3, padding = 1, bias = false),
        bn2: BatchNorm2d(C),
    }
    fn forward(x: [b, C, h, w]) -> [b, C, h, w] {
        let y = relu(bn1(conv1(x)));
        relu(x + bn2(conv2(y)))
    }

    /// The network: 8×8 images → 10 logits.
    pub struct DigitsResNet<const C: usize>(blocks: usize) {
        stem: Conv2d(1 -> C, kernel = 3, padding = 1, bias = false),
        bn: BatchNorm2d(C),
        stage1: [ResBlock<C>; blocks],
        pool: MaxPool2d(2),
        stage2: [ResBlock<C>; blocks],
        head: Linear(C -> 10),
    }
    fn forward(x: [b, 1, 8, 8]) -> [b, 10] {
        let h = stage1(relu(bn(stem(x))));
        let h = stage2(pool(h));
        head(h.mean(-1).mean(-1))
    }
}

/// The model of this example: 32 channels.
pub type Model = DigitsResNet<32>;

/// Builds the model (one block per stage), SGD and the schedule, and trains them.
pub fn run(cfg: &Config) -> flint::Result<Report> {
    manual_seed(cfg.seed);
    let mut model = Model::try_new(1, (DType::F32, cfg.device))?;
    let mut opt = Sgd::new(model.parameters(), 0.05)
        .momentum(0.9)
        .nesterov(true)
        .weight_decay(5e-4);
    let mut sched = CosineAnnealingLR::try_new(&mut opt, cfg.epochs, 1e-3)?;
    let images = |x: &Tensor| x.try_reshape([-1, 1, 8, 8]);
    classify::train(&mut model, &mut opt, Some(&mut sched), images, cfg)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = Config::new("runs/digits_resnet", 15);
    cfg.label_smoothing = 0.0;
    let cfg = cfg.with_args(
        "digits_resnet [--quick] [--epochs N] [--resume] [--out DIR] [--data FILE] [--device cpu|cuda] [--no-progress]",
        2,
    )?;
    println!("{}", Model::try_new(1, ())?);
    run(&cfg)?.print("digits_resnet", &cfg.out);
    Ok(())
}
