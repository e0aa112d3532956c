//! Memory: a long forward + backward loop keeps a flat resident size. A test binary of its
//! own, so that no other test allocates in the same process while it measures.

use flint::autograd::no_grad;
use flint::{DType, Generator};

fn resident_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

#[test]
fn a_long_training_loop_keeps_a_flat_resident_size() {
    // 10,000 forward + backward steps of a small MLP; graphs must be freed each step.
    let mut g = Generator::new(2);
    let w1 = g.randn([16, 32], DType::F32).requires_grad_(true);
    let w2 = g.randn([32, 1], DType::F32).requires_grad_(true);
    let x = g.randn([8, 16], DType::F32);
    let step = |_: usize| {
        let loss = x.matmul(&w1).relu().matmul(&w2).square().mean_all();
        loss.backward();
        no_grad(|| {
            for w in [&w1, &w2] {
                w.sub_(w.grad().unwrap() * 1e-4);
                w.zero_grad();
            }
        });
    };
    for i in 0..1_000 {
        step(i);
    }
    let after_warmup = resident_kib();
    for i in 0..9_000 {
        step(i);
    }
    if let (Some(a), Some(b)) = (after_warmup, resident_kib()) {
        println!("resident size: {a} KiB after 1,000 steps, {b} KiB after 10,000");
        assert!(
            b < a + 8 * 1024,
            "resident size grew from {a} KiB to {b} KiB"
        );
    }
}
