//! `a @ b` on CUDA through cuBLAS: f32 and f64 square matrices of 512 to 4096, the GPU
//! counterpart of Workload A of `shared/bench/torch_baseline.py` (whose PyTorch numbers
//! on the same GPU are the comparison).
//!
//! ```text
//! cargo bench --features cuda --bench cuda_matmul -- [--warmup 5] [--iters 30] [--quick]
//! ```
//!
//! `a` and `b` are `randn(n, n)` (seed 0) moved to `cuda:0` before timing. Each timed call
//! queues one product (a fresh output from the caching allocator) and waits for the
//! device, so the time is the product's own. Prints the median and minimum time and the
//! GFLOP/s (`2 n³` FLOPs at the median) per size, and a skip line without a GPU.

use flint::{cuda, manual_seed, DType, Device, Tensor};
use std::time::Instant;

fn main() {
    let (mut warmup, mut iters) = (5usize, 30usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> usize {
            let v = args.next().unwrap_or_default();
            v.parse().unwrap_or_else(|_| {
                eprintln!("{name} needs a number, got {v:?}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--warmup" => warmup = value("--warmup"),
            "--iters" => iters = value("--iters"),
            "--quick" => (warmup, iters) = (2, 5),
            "--bench" => {} // passed by `cargo bench`
            other => {
                eprintln!("unknown argument {other:?}");
                std::process::exit(2)
            }
        }
    }
    let iters = iters.max(1);
    if let Err(e) = cuda::available() {
        println!("SKIPPED (no CUDA): cuda_matmul — {e}");
        return;
    }
    let d = Device::Cuda(0);
    println!("| dtype | n | median ms | min ms | GFLOP/s |");
    println!("|---|---:|---:|---:|---:|");
    for dt in [DType::F32, DType::F64] {
        for n in [512usize, 1024, 2048, 4096] {
            manual_seed(0);
            let a = Tensor::randn([n, n], dt).to(d);
            let b = Tensor::randn([n, n], dt).to(d);
            let run = || -> flint::Result<()> {
                std::hint::black_box(a.try_matmul(&b)?);
                cuda::synchronize(d)
            };
            let mut times = Vec::with_capacity(iters);
            for i in 0..warmup + iters {
                let t0 = Instant::now();
                if let Err(e) = run() {
                    eprintln!("{dt} n = {n}: {e}");
                    std::process::exit(1);
                }
                if i >= warmup {
                    times.push(t0.elapsed().as_secs_f64());
                }
            }
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            let flops = 2.0 * (n as f64).powi(3);
            println!(
                "| {dt} | {n} | {:.3} | {:.3} | {:.0} |",
                median * 1e3,
                times[0] * 1e3,
                flops / median / 1e9
            );
        }
    }
    let s = cuda::memory_stats(d).unwrap_or_default();
    println!(
        "memory: {} bytes allocated, {} reserved, {} cuMemAlloc calls",
        s.allocated, s.reserved, s.driver_allocs
    );
}
