//! Flint on one CUDA GPU, the counterpart of `benches/torch_gpu.py` (PyTorch eager on the
//! same GPU, same workloads):
//!
//! ```text
//! cargo bench --features cuda --bench cuda -- [OUT.json] [--torch TORCH.json]
//!                                             [--warmup 5] [--iters 20] [--quick]
//!                                             [--only NAME,NAME] [--profile]
//! cargo bench --features cuda --bench cuda -- --warm-ptx-cache MAJOR.MINOR
//! ```
//!
//! `--warm-ptx-cache 9.0` compiles every kernel module for compute capability 9.0 into
//! the PTX cache (`$FLINT_PTX_CACHE`) and exits: it needs NVRTC but no GPU
//! (`scripts/gpu-check.sh` ships the folder so the GPU machine does not compile).
//!
//! - `matmul_{f32,tf32,bf16}_{2048,4096,8192}`: `a @ b` of two `randn(n, n)` on `cuda:0`
//!   (a fresh output from the caching allocator each call); `tf32` is f32 tensors with
//!   [`flint::cuda::set_allow_tf32`] on, `f32` has it off (PyTorch's default).
//! - `transformer_train` / `transformer_train_sdpa`: workload C's `TinyLM` training step
//!   (forward, cross-entropy with label smoothing 0.1, backward, AdamW, zero_grad) at
//!   issue 8's size: batch 64, sequence 512, d_model 1024, 16 heads, d_ff 4096, vocab 1000;
//!   f32, TF32 off.
//! - `attention_sdpa`: the attention core of that step alone: `scaled_dot_product_attention`
//!   of `q, k, v = randn(64, 16, 512, 64)` (f32, requiring grad) with `is_causal` and
//!   dropout 0.1, then the backward from a fixed `randn` output gradient (the fused
//!   kernels on both sides). FLOPs: the causal half of the four products, forward
//!   and backward (`2·B·H·T²·D·(2 + 5) / 2`, as PyTorch's backward recomputes `QKᵀ`).
//! - `attention_sdpa_bf16`: the same in bf16 (PyTorch runs its flash-attention kernels).
//!
//! Each step is queued and then waited for (`cuda::synchronize`); the time is the median
//! of `iters` steps after `warmup` untimed ones. With `--torch` the table has PyTorch's
//! median from that JSON and the ratio Flint / PyTorch. `--profile` adds, per transformer
//! workload, one more step with [`flint::cuda::profile_start`] on and its device time per
//! kernel (the largest 40). Prints a skip line without a GPU.

use flint::optim::Optimizer;
use flint::prelude::*;
use flint::{cuda, manual_seed};
use serde_json::{json, Map, Value};
use std::time::Instant;

#[path = "common/tinylm.rs"]
mod tinylm;
use tinylm::{loss_and_adamw, TinyLM, TinyLmConfig};

/// Issue 8's size for the transformer step on a GPU.
const GPU_TF: TinyLmConfig = TinyLmConfig {
    v: 1000,
    d: 1024,
    h: 16,
    ff: 4096,
    t: 512,
    b: 64,
    p: 0.1,
};

struct Args {
    out: Option<String>,
    torch: Option<String>,
    warmup: usize,
    iters: usize,
    only: Option<Vec<String>>,
    profile: bool,
}

fn fail(msg: String) -> ! {
    eprintln!("{msg}");
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        out: None,
        torch: None,
        warmup: 5,
        iters: 20,
        only: None,
        profile: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .unwrap_or_else(|| fail(format!("{name} needs a value")))
        };
        let count = |name: &str, v: String| -> usize {
            v.parse()
                .unwrap_or_else(|_| fail(format!("{name} needs a number, got {v:?}")))
        };
        match x.as_str() {
            "--warmup" => a.warmup = count("--warmup", value("--warmup")),
            "--iters" => a.iters = count("--iters", value("--iters")).max(1),
            "--quick" => (a.warmup, a.iters) = (2, 5),
            "--torch" => a.torch = Some(value("--torch")),
            "--only" => a.only = Some(value("--only").split(',').map(String::from).collect()),
            "--profile" => a.profile = true,
            "--bench" => {} // passed by `cargo bench`
            s if s.starts_with("--") => fail(format!("unknown argument {s:?}")),
            s => a.out = Some(s.to_string()),
        }
    }
    a
}

/// The median and minimum of `iters` synchronized steps, in ms.
fn time_cuda(d: Device, warmup: usize, iters: usize, mut f: impl FnMut()) -> (f64, f64) {
    let sync = || cuda::synchronize(d).unwrap_or_else(|e| fail(format!("synchronize: {e}")));
    for _ in 0..warmup {
        f();
    }
    sync();
    let mut ts = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t0 = Instant::now();
        f();
        sync();
        ts.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(f64::total_cmp);
    let n = ts.len();
    let median = if n % 2 == 1 {
        ts[n / 2]
    } else {
        0.5 * (ts[n / 2 - 1] + ts[n / 2])
    };
    (median, ts[0])
}

fn bench_matmul(d: Device, dtype: &str, n: usize, a: &Args) -> (f64, f64) {
    cuda::set_allow_tf32(dtype == "tf32");
    manual_seed(0);
    let dt = if dtype == "bf16" {
        DType::BF16
    } else {
        DType::F32
    };
    let x = Tensor::randn([n, n], DType::F32).to_dtype(dt).to(d);
    let y = Tensor::randn([n, n], DType::F32).to_dtype(dt).to(d);
    let r = time_cuda(d, a.warmup, a.iters, || {
        std::hint::black_box(x.matmul(&y));
    });
    cuda::set_allow_tf32(false);
    r
}

fn bench_transformer(d: Device, sdpa: bool, a: &Args) -> (f64, f64) {
    cuda::set_allow_tf32(false);
    let c = GPU_TF;
    manual_seed(0);
    let tokens = Tensor::randint(0, c.v as i64, [c.b, c.t]).to(d);
    let targets = Tensor::randint(0, c.v as i64, [c.b * c.t]).to(d);
    let mut model = TinyLM::new(&c, sdpa);
    model
        .to_device(d)
        .unwrap_or_else(|e| fail(format!("model.to_device: {e}")));
    let (loss_fn, mut opt) = loss_and_adamw(model.parameters(), 3e-4);
    model.train();
    let mut step = || {
        let logits = model.forward(&tokens).view([c.b * c.t, c.v]);
        loss_fn.forward(&logits, &targets).backward();
        opt.step();
        opt.zero_grad();
    };
    let r = time_cuda(d, a.warmup, a.iters, &mut step);
    if a.profile {
        let t0 = Instant::now();
        cuda::profile_start();
        step();
        let kernels = cuda::profile_stop().unwrap_or_else(|e| fail(format!("profile: {e}")));
        let wall = t0.elapsed().as_secs_f64() * 1e3;
        let total: f64 = kernels.iter().map(|k| k.total_ms).sum();
        let calls: usize = kernels.iter().map(|k| k.calls).sum();
        println!(
            "profile of one step (sdpa {sdpa}): {total:.3} ms of device time in {calls} launches, \
             {wall:.3} ms wall (with the events)"
        );
        println!("| ms | % | calls | kernel |\n|---:|---:|---:|---|");
        for k in kernels.iter().take(40) {
            println!(
                "| {:.3} | {:.1} | {} | {} |",
                k.total_ms,
                100.0 * k.total_ms / total,
                k.calls,
                k.name
            );
        }
    }
    r
}

/// The `attention_sdpa` workload: (B, H, T, D).
const ATTN: (usize, usize, usize, usize) = (64, 16, 512, 64);

fn attention_flops() -> f64 {
    let (b, h, t, d) = ATTN;
    2.0 * (b * h * t * t * d) as f64 * 7.0 / 2.0
}

/// The `attention_sdpa` workloads in `dtype` (f32 or bf16).
fn bench_attention(d: Device, dtype: DType, a: &Args) -> (f64, f64) {
    cuda::set_allow_tf32(false);
    manual_seed(0);
    let (b, h, t, hd) = ATTN;
    let leaf = || {
        Tensor::randn([b, h, t, hd], DType::F32)
            .to_dtype(dtype)
            .to(d)
            .requires_grad_(true)
    };
    let (q, k, v) = (leaf(), leaf(), leaf());
    let g = Tensor::randn([b, h, t, hd], DType::F32)
        .to_dtype(dtype)
        .to(d);
    time_cuda(d, a.warmup, a.iters, || {
        let o = flint::nn::functional::scaled_dot_product_attention(
            &q, &k, &v, None, true, 0.1, true, None,
        )
        .unwrap_or_else(|e| fail(format!("scaled_dot_product_attention: {e}")));
        o.backward_with(&g);
        for x in [&q, &k, &v] {
            x.zero_grad();
        }
    })
}

/// `--warm-ptx-cache MAJOR.MINOR`: fills the PTX cache and exits.
fn warm_ptx_cache(arch: &str) -> ! {
    let parsed = arch
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<i32>().ok()?, b.parse::<i32>().ok()?)));
    let Some((major, minor)) = parsed else {
        fail(format!(
            "--warm-ptx-cache needs MAJOR.MINOR, e.g. 9.0, got {arch:?}"
        ))
    };
    match cuda::kernels::warm_ptx_cache(major, minor) {
        Ok((compiled, cached)) => {
            println!("PTX cache for compute {major}.{minor}: {compiled} modules compiled, {cached} already there");
            std::process::exit(0)
        }
        Err(e) => fail(format!("--warm-ptx-cache: {e}")),
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if let Some(i) = argv.iter().position(|x| x == "--warm-ptx-cache") {
        let arch = argv
            .get(i + 1)
            .unwrap_or_else(|| fail("--warm-ptx-cache needs MAJOR.MINOR".into()));
        warm_ptx_cache(arch);
    }
    let a = args();
    if let Err(e) = cuda::available() {
        println!("SKIPPED (no CUDA): cuda bench — {e}");
        return;
    }
    let d = Device::Cuda(0);
    let torch: Option<Value> = a.torch.as_ref().map(|p| {
        let text = std::fs::read_to_string(p).unwrap_or_else(|e| fail(format!("{p}: {e}")));
        serde_json::from_str(&text).unwrap_or_else(|e| fail(format!("{p}: {e}")))
    });
    let wanted = |name: &str| a.only.as_ref().is_none_or(|o| o.iter().any(|x| x == name));
    let mut runs = Map::new();
    let mut rows = Vec::new();
    let mut record = |name: String, (median, min): (f64, f64), flops: f64| {
        let torch_ms = torch
            .as_ref()
            .and_then(|t| t["runs"][&name]["median_ms"].as_f64());
        rows.push((name.clone(), median, min, flops, torch_ms));
        runs.insert(
            name,
            json!({"median_ms": median, "min_ms": min, "flops": flops}),
        );
    };
    for dtype in ["f32", "tf32", "bf16"] {
        for n in [2048usize, 4096, 8192] {
            let name = format!("matmul_{dtype}_{n}");
            if wanted(&name) {
                let flops = 2.0 * (n as f64).powi(3);
                record(name, bench_matmul(d, dtype, n, &a), flops);
            }
        }
    }
    for sdpa in [false, true] {
        let name = format!("transformer_train{}", if sdpa { "_sdpa" } else { "" });
        if wanted(&name) {
            record(name, bench_transformer(d, sdpa, &a), 3.0 * GPU_TF.flops());
        }
    }
    for (name, dtype) in [
        ("attention_sdpa", DType::F32),
        ("attention_sdpa_bf16", DType::BF16),
    ] {
        if wanted(name) {
            record(
                name.into(),
                bench_attention(d, dtype, &a),
                attention_flops(),
            );
        }
    }
    let s = cuda::memory_stats(d).unwrap_or_default();
    println!(
        "| workload | PyTorch ms | Flint ms | Flint / PyTorch | Flint min ms | Flint TFLOP/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, median, min, flops, torch_ms) in &rows {
        let (t, r) = match torch_ms {
            Some(t) => (format!("{t:.3}"), format!("{:.2}", median / t)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {name} | {t} | {median:.3} | {r} | {min:.3} | {:.1} |",
            flops / median / 1e9
        );
    }
    println!(
        "memory: peak {} MiB allocated, {} MiB reserved, {} cuMemAlloc calls",
        s.peak_allocated >> 20,
        s.reserved >> 20,
        s.driver_allocs
    );
    if let Some(out) = &a.out {
        let j = json!({"device": "cuda:0", "runs": runs});
        std::fs::write(out, serde_json::to_string_pretty(&j).unwrap_or_default())
            .unwrap_or_else(|e| fail(format!("{out}: {e}")));
    }
}
