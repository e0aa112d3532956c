//! Writes the autograd graph of a small MLP's loss as Graphviz DOT (`graph.dot`), and a
//! picture (`graph.png`) where the `dot` program exists.
//!
//! ```sh
//! cargo run --example graph -- [OUT_DIR]
//! ```

use flint::autograd::to_dot;
use flint::prelude::*;

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    std::fs::create_dir_all(&dir)?;
    let mut g = Generator::new(0);
    let w1 = g.randn([4, 8], DType::F32).requires_grad_(true);
    let b1 = Tensor::zeros([8], DType::F32).requires_grad_(true);
    let w2 = g.randn([8, 3], DType::F32).requires_grad_(true);
    let x = g.randn([5, 4], DType::F32);
    let y = Tensor::from_vec(vec![0i64, 2, 1, 1, 0], [5]);

    let logits = (x.matmul(&w1) + &b1).relu().matmul(&w2);
    let picked = logits.log_softmax(-1).gather(1, &y.unsqueeze(1));
    let loss = picked.mean_all().neg();

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
        "loss {:.4}, |grad w1| = {:.4}",
        loss.item::<f32>(),
        w1.grad()
            .map(|g| g.square().sum_all().sqrt().item::<f32>())
            .unwrap_or(0.0)
    );
    Ok(())
}
