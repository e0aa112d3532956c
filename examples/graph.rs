//! Writes the autograd graph of a small model's loss (Linear, LayerNorm, GELU, Linear,
//! label-smoothed cross-entropy) as Graphviz DOT (`graph.dot`), and a
//! picture (`graph.png`) where the `dot` program exists.
//!
//! ```sh
//! cargo run --example graph -- [OUT_DIR]
//! ```

use flint::autograd::to_dot;
use flint::loss::CrossEntropy;
use flint::nn::{LayerNorm, Linear};
use flint::prelude::*;

/// A small classifier: Linear → LayerNorm → GELU → Linear.
#[derive(Module)]
#[module(sequential)]
struct Small {
    fc1: Linear,
    norm: LayerNorm,
    act: flint::nn::Gelu,
    fc2: Linear,
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    std::fs::create_dir_all(&dir)?;
    manual_seed(0);
    let model = Small {
        fc1: Linear::new(4, 8, ()),
        norm: LayerNorm::new(&[8], ()),
        act: flint::nn::Gelu::default(),
        fc2: Linear::new(8, 3, ()),
    };
    let x = Tensor::randn([5, 4], DType::F32);
    let y = Tensor::from_vec(vec![0i64, 2, 1, 1, 0], [5]);
    let loss = CrossEntropy::new()
        .label_smoothing(0.1)
        .forward(&model.forward(&x), &y);

    let dot_path = dir.join("graph.dot");
    std::fs::write(&dot_path, to_dot(&loss))?;
    println!("wrote {}", dot_path.display());
    let png = dir.join("graph.png");
    match std::process::Command::new("dot")
        .arg("-Tpng")
        .arg(&dot_path)
        .arg("-o")
        .arg(&png)
        .status()
    {
        Ok(s) if s.success() => println!("wrote {}", png.display()),
        Ok(s) => println!("dot failed ({s}); the .dot file is still there"),
        Err(_) => println!(
            "`dot` (Graphviz) is not installed; render with: dot -Tpng {} -o graph.png",
            dot_path.display()
        ),
    }
    loss.backward();
    println!(
        "loss {:.4}, |grad fc1.weight| = {:.4}",
        loss.item::<f32>(),
        model
            .fc1
            .weight
            .grad()
            .map(|g| g.square().sum_all().sqrt().item::<f32>())
            .unwrap_or(0.0)
    );
    Ok(())
}
