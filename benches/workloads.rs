//! Every workload of `benches/torch_baseline.py` (a verbatim copy of
//! `shared/bench/torch_baseline.py`), built in Flint exactly as that script's docstring
//! defines it, and timed the same way:
//!
//! ```text
//! cargo bench --bench workloads -- OUT.json [--threads 2,1] [--warmup 5] [--iters 30]
//!                                  [--repeats 3] [--quick] [--only NAME,NAME] [--rss]
//! ```
//!
//! - A. `matmul_{512,1024,2048}`: `a @ b` of two `randn(n, n)`, a fresh output each call.
//! - B. `mlp_train`: MLP 784-512-512-10, batch 128, cross-entropy with label smoothing 0.1,
//!   AdamW (lr 1e-3, wd 0.01); forward + loss + backward + step + zero_grad.
//! - C. `transformer_train` / `transformer_infer`: one pre-LN block (V 1000, D 256, H 4,
//!   F 1024, T 128, B 16, dropout 0.1, exact GELU, untied head, causal `masked_fill`),
//!   cross-entropy with label smoothing 0.1, AdamW (lr 3e-4, wd 0.01); inference in eval
//!   mode under `no_grad`. The `*_sdpa` variants call
//!   [`flint::nn::functional::scaled_dot_product_attention`] with the causal flag.
//! - D. `cnn_train`: Conv2d(3,32,3,p1,no bias)-BatchNorm2d-ReLU-Conv2d(32,64,3,p1,no
//!   bias)-BatchNorm2d-ReLU-global average pool-Linear(64,10), batch 64 of 3×32×32,
//!   cross-entropy, SGD (lr 0.1, momentum 0.9, wd 5e-4).
//! - E. `lstm_fwd_bwd`: 2-layer LSTM 256, seq 64, batch 32, MSE; zero_grad + forward +
//!   backward, no optimizer step.
//!
//! Timing is the PyTorch script's: `manual_seed(0)` before each workload is built, data
//! made before timing, `warmup` untimed steps, the median of `iters` individually timed
//! steps (`iters` at least 10 for matmul below 2048), the whole suite repeated `repeats`
//! times per thread count (`set_num_threads`) and the median of the per-repeat medians
//! reported. "foreign cores" is the CPU, in cores, that other processes used during the
//! timed loops (`/proc/stat` minus this process's own CPU time). The JSON file has the
//! script's layout (`machine`, `config`, `runs[threads][workload]` with the same keys).
//!
//! `--rss` adds `peak_rss_mib` to every row: for each workload and thread count the
//! binary runs itself again as a fresh child (`--rss-child NAME --threads T`), which
//! reads `VmHWM` from `/proc/self/status` before building the workload and after one
//! warm-up and two timed steps; the difference is the workload's peak resident-set
//! increase. `scripts/torch_peak_rss.py` does the same on the PyTorch side.
//!
//! `--only NAME,...` times only those workloads (for profiling). `--no-buffer-cache` turns
//! off the host buffer cache (`flint::set_cpu_cache_limit(0)`) to measure what it gives.

use flint::loss::{mse_loss, CrossEntropy, Reduction};
use flint::nn::{
    AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, Flatten, Linear, ReLU, RecurrentConfig,
    Sequential, LSTM,
};
use flint::optim::{Optimizer, Sgd};
use flint::prelude::*;
use flint::{no_grad, set_num_threads};
use serde_json::{json, Map, Value};
use std::time::Instant;

#[path = "common/tinylm.rs"]
mod tinylm;
use tinylm::{loss_and_adamw, TinyLM, TinyLmConfig};

/// The rows, in the PyTorch script's order.
const NAMES: [&str; 10] = [
    "matmul_512",
    "matmul_1024",
    "matmul_2048",
    "mlp_train",
    "transformer_train",
    "transformer_infer",
    "transformer_train_sdpa",
    "transformer_infer_sdpa",
    "cnn_train",
    "lstm_fwd_bwd",
];

fn workload_names() -> impl Iterator<Item = &'static str> {
    NAMES.iter().copied()
}

// ------------------------------------------------------------------------ arguments

struct Args {
    json_out: Option<String>,
    threads: Vec<usize>,
    warmup: usize,
    iters: usize,
    repeats: usize,
    only: Option<Vec<String>>,
    rss: bool,
    rss_child: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        json_out: None,
        threads: vec![2, 1],
        warmup: 5,
        iters: 30,
        repeats: 3,
        only: None,
        rss: false,
        rss_child: None,
    };
    let mut quick = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value");
                std::process::exit(2)
            })
        };
        let count = |name: &str, v: String| -> usize {
            v.parse().unwrap_or_else(|_| {
                eprintln!("{name}: expected a count, got {v:?}");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--threads" => {
                let v = value("--threads");
                a.threads = v
                    .split(',')
                    .map(|t| count("--threads", t.trim().to_string()))
                    .collect()
            }
            "--warmup" => a.warmup = count("--warmup", value("--warmup")),
            "--iters" => a.iters = count("--iters", value("--iters")),
            "--repeats" => a.repeats = count("--repeats", value("--repeats")),
            "--quick" => quick = true,
            "--only" => {
                let v = value("--only");
                let names: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
                for n in &names {
                    if !workload_names().any(|w| w == n) {
                        eprintln!("--only: unknown workload {n:?}");
                        std::process::exit(2);
                    }
                }
                a.only = Some(names);
            }
            "--rss" => a.rss = true,
            // measure without the host buffer cache (its effect, A/B in one binary)
            "--no-buffer-cache" => flint::set_cpu_cache_limit(0),
            "--rss-child" => a.rss_child = Some(value("--rss-child")),
            // `cargo bench` passes `--bench`
            "--bench" => {}
            s if s.starts_with("--") => {
                eprintln!("unknown flag {s}");
                std::process::exit(2)
            }
            _ => a.json_out = Some(arg),
        }
    }
    if quick {
        (a.warmup, a.iters, a.repeats) = (2, 5, 1);
    }
    if a.iters == 0 || a.repeats == 0 || a.threads.is_empty() {
        eprintln!("--iters, --repeats and --threads must be positive");
        std::process::exit(2);
    }
    a
}

// ------------------------------------------------------------------------ timing

/// Machine-wide busy CPU seconds and this process's CPU seconds (all threads), from
/// `/proc`, like the script's `_busy_seconds()` and `os.times()`.
fn cpu_seconds() -> Option<(f64, f64)> {
    let tick = 100.0; // USER_HZ (sysconf(_SC_CLK_TCK)) on Linux
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return None;
    }
    // user nice system idle iowait irq softirq steal
    let busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tick;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    let f: Vec<&str> = own.rsplit(')').next()?.split_whitespace().collect();
    // fields after the command name: state is [0], utime [11], stime [12]
    let mine = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick;
    Some((busy, mine))
}

#[derive(Clone, Copy)]
struct Timing {
    median_ms: f64,
    min_ms: f64,
    foreign_cores: Option<f64>,
}

fn time_it(mut f: impl FnMut(), warmup: usize, iters: usize) -> Timing {
    for _ in 0..warmup {
        f();
    }
    let mut ts = Vec::with_capacity(iters);
    let (c0, w0) = (cpu_seconds(), Instant::now());
    for _ in 0..iters {
        let t0 = Instant::now();
        f();
        ts.push(t0.elapsed().as_secs_f64());
    }
    let (c1, wall) = (cpu_seconds(), w0.elapsed().as_secs_f64());
    let foreign_cores = match (c0, c1) {
        (Some((b0, o0)), Some((b1, o1))) => Some((((b1 - b0) - (o1 - o0)) / wall).max(0.0)),
        _ => None,
    };
    ts.sort_by(f64::total_cmp);
    Timing {
        median_ms: median(&ts) * 1e3,
        min_ms: ts[0] * 1e3,
        foreign_cores,
    }
}

/// Python's `statistics.median` of sorted values.
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

// ------------------------------------------------------------------------ A. matmul

/// Times the step every `*_train` workload shares: `loss()` (forward and loss), backward,
/// the optimizer step and `zero_grad`.
fn time_train_step(
    mut loss: impl FnMut() -> Tensor,
    opt: &mut impl Optimizer,
    warmup: usize,
    iters: usize,
) -> Timing {
    time_it(
        || {
            loss().backward();
            opt.step();
            opt.zero_grad();
        },
        warmup,
        iters,
    )
}

fn bench_matmul(n: usize, warmup: usize, iters: usize) -> Timing {
    manual_seed(0);
    let a = Tensor::randn([n, n], DType::F32);
    let b = Tensor::randn([n, n], DType::F32);
    time_it(
        || {
            std::hint::black_box(a.matmul(&b));
        },
        warmup,
        iters,
    )
}

fn matmul_flops(n: usize) -> f64 {
    2.0 * (n as f64).powi(3)
}

// ------------------------------------------------------------------------ B. MLP

fn bench_mlp(warmup: usize, iters: usize) -> Timing {
    manual_seed(0);
    let x = Tensor::randn([128, 784], DType::F32);
    let y = Tensor::randint(0, 10, [128]);
    let model = Sequential::new()
        .add(Linear::new(784, 512, ()))
        .add(ReLU)
        .add(Linear::new(512, 512, ()))
        .add(ReLU)
        .add(Linear::new(512, 10, ()));
    let (loss_fn, mut opt) = loss_and_adamw(model.parameters(), 1e-3);
    time_train_step(
        || loss_fn.forward(&model.forward(&x), &y),
        &mut opt,
        warmup,
        iters,
    )
}

const MLP_FLOPS: f64 = 3.0 * 2.0 * 128.0 * (784.0 * 512.0 + 512.0 * 512.0 + 512.0 * 10.0);

// ------------------------------------------------------------------------ C. transformer

/// Workload C's sizes.
const TF: TinyLmConfig = TinyLmConfig {
    v: 1000,
    d: 256,
    h: 4,
    ff: 1024,
    t: 128,
    b: 16,
    p: 0.1,
};
const V: usize = TF.v;
const T: usize = TF.t;
const B: usize = TF.b;

/// Seeded data and model of workload C, as the script builds them.
fn transformer_setup(sdpa: bool) -> (Tensor, Tensor, TinyLM) {
    manual_seed(0);
    let tokens = Tensor::randint(0, V as i64, [B, T]);
    let targets = Tensor::randint(0, V as i64, [B, T]);
    (tokens, targets, TinyLM::new(&TF, sdpa))
}

fn time_infer(model: &TinyLM, tokens: &Tensor, warmup: usize, iters: usize) -> Timing {
    time_it(
        || {
            no_grad(|| {
                std::hint::black_box(model.forward(tokens));
            })
        },
        warmup,
        iters,
    )
}

/// `(train, infer)` like the script's `bench_transformer`: train steps, then inference
/// with the same (trained) model in eval mode.
fn bench_transformer(warmup: usize, iters: usize, sdpa: bool) -> (Timing, Timing) {
    let (tokens, targets, mut model) = transformer_setup(sdpa);
    let (loss_fn, mut opt) = loss_and_adamw(model.parameters(), 3e-4);
    let flat_targets = targets.view([B * T]);
    model.train();
    let train = time_train_step(
        || loss_fn.forward(&model.forward(&tokens).view([B * T, V]), &flat_targets),
        &mut opt,
        warmup,
        iters,
    );
    model.eval();
    let infer = time_infer(&model, &tokens, warmup, iters);
    (train, infer)
}

/// Inference alone (for `--only transformer_infer*` and its peak RSS): a fresh model in
/// eval mode.
fn bench_transformer_infer(warmup: usize, iters: usize, sdpa: bool) -> Timing {
    let (tokens, _targets, mut model) = transformer_setup(sdpa);
    model.eval();
    time_infer(&model, &tokens, warmup, iters)
}

// ------------------------------------------------------------------------ D. CNN

fn bench_cnn(warmup: usize, iters: usize) -> Timing {
    manual_seed(0);
    let x = Tensor::randn([64, 3, 32, 32], DType::F32);
    let y = Tensor::randint(0, 10, [64]);
    let conv = Conv2dConfig::default().padding(1).bias(false);
    let mut model = Sequential::new()
        .add(Conv2d::with_config(3, 32, 3, conv, ()))
        .add(BatchNorm2d::new(32, ()))
        .add(ReLU)
        .add(Conv2d::with_config(32, 64, 3, conv, ()))
        .add(BatchNorm2d::new(64, ()))
        .add(ReLU)
        .add(AdaptiveAvgPool2d::new(1))
        .add(Flatten::default())
        .add(Linear::new(64, 10, ()));
    model.train();
    let loss_fn = CrossEntropy::new();
    let mut opt = Sgd::new(model.parameters(), 0.1)
        .momentum(0.9)
        .weight_decay(5e-4);
    time_train_step(
        || loss_fn.forward(&model.forward(&x), &y),
        &mut opt,
        warmup,
        iters,
    )
}

const CNN_FLOPS: f64 = 3.0 * 2.0 * 64.0 * 32.0 * 32.0 * (3.0 * 32.0 * 9.0 + 32.0 * 64.0 * 9.0);

// ------------------------------------------------------------------------ E. LSTM

fn bench_lstm(warmup: usize, iters: usize) -> Timing {
    manual_seed(0);
    let x = Tensor::randn([64, 32, 256], DType::F32);
    let target = Tensor::randn([64, 32, 256], DType::F32);
    let config = RecurrentConfig {
        num_layers: 2,
        ..Default::default()
    };
    let mut model = LSTM::with_config(256, 256, config, ());
    model.train();
    time_it(
        || {
            model.zero_grad();
            let (out, _) = model.forward(&x, None);
            mse_loss(&out, &target, Reduction::Mean).backward();
        },
        warmup,
        iters,
    )
}

const LSTM_FLOPS: f64 = 3.0 * 2.0 * 64.0 * 2.0 * 32.0 * 4.0 * 256.0 * (256.0 + 256.0);

// ------------------------------------------------------------------------ suite

fn flops_of(name: &str) -> f64 {
    match name {
        "matmul_512" => matmul_flops(512),
        "matmul_1024" => matmul_flops(1024),
        "matmul_2048" => matmul_flops(2048),
        "mlp_train" => MLP_FLOPS,
        "transformer_train" | "transformer_train_sdpa" => 3.0 * TF.flops(),
        "transformer_infer" | "transformer_infer_sdpa" => TF.flops(),
        "cnn_train" => CNN_FLOPS,
        "lstm_fwd_bwd" => LSTM_FLOPS,
        _ => f64::NAN,
    }
}

/// One pass of the suite (the selected workloads) at the current thread count, in the
/// script's order.
fn run_suite(
    wanted: &dyn Fn(&str) -> bool,
    warmup: usize,
    iters: usize,
) -> Vec<(&'static str, Timing)> {
    let mut res = Vec::new();
    for (name, n) in [
        ("matmul_512", 512),
        ("matmul_1024", 1024),
        ("matmul_2048", 2048),
    ] {
        if wanted(name) {
            let it = if n < 2048 { iters.max(10) } else { iters };
            res.push((name, bench_matmul(n, warmup, it)));
        }
    }
    if wanted("mlp_train") {
        res.push(("mlp_train", bench_mlp(warmup, iters)));
    }
    for (sdpa, train_name, infer_name) in [
        (false, "transformer_train", "transformer_infer"),
        (true, "transformer_train_sdpa", "transformer_infer_sdpa"),
    ] {
        if wanted(train_name) {
            let (tr, inf) = bench_transformer(warmup, iters, sdpa);
            res.push((train_name, tr));
            if wanted(infer_name) {
                res.push((infer_name, inf));
            }
        } else if wanted(infer_name) {
            res.push((infer_name, bench_transformer_infer(warmup, iters, sdpa)));
        }
    }
    if wanted("cnn_train") {
        res.push(("cnn_train", bench_cnn(warmup, iters)));
    }
    if wanted("lstm_fwd_bwd") {
        res.push(("lstm_fwd_bwd", bench_lstm(warmup, iters)));
    }
    res
}

// ------------------------------------------------------------------------ peak RSS

/// `VmHWM` (peak resident set) of this process in KiB.
fn vm_hwm_kib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The child side of `--rss`: builds and runs one workload (one warm-up and two timed
/// steps; a train-then-infer pass for `transformer_train*`, as in the script) and prints
/// its peak-RSS increase in MiB.
fn rss_child(name: &str) {
    let before = vm_hwm_kib();
    let (w, n) = (1, 2);
    match name {
        "matmul_512" => drop(bench_matmul(512, w, n)),
        "matmul_1024" => drop(bench_matmul(1024, w, n)),
        "matmul_2048" => drop(bench_matmul(2048, w, n)),
        "mlp_train" => drop(bench_mlp(w, n)),
        "transformer_train" => drop(bench_transformer(w, n, false)),
        "transformer_train_sdpa" => drop(bench_transformer(w, n, true)),
        "transformer_infer" => drop(bench_transformer_infer(w, n, false)),
        "transformer_infer_sdpa" => drop(bench_transformer_infer(w, n, true)),
        "cnn_train" => drop(bench_cnn(w, n)),
        "lstm_fwd_bwd" => drop(bench_lstm(w, n)),
        _ => {
            eprintln!("--rss-child: unknown workload {name:?}");
            std::process::exit(2)
        }
    }
    match (before, vm_hwm_kib()) {
        (Some(b), Some(a)) => println!("peak_rss_mib={}", (a - b) / 1024.0),
        _ => println!("peak_rss_mib=nan"),
    }
}

/// Runs `--rss-child name --threads t` in a fresh process of this binary.
fn measure_rss(name: &str, threads: usize) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new(exe)
        .args(["--rss-child", name, "--threads", &threads.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "peak RSS of {name} ({threads} threads) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_mib="))
        .and_then(|v| v.trim().parse().ok())
        .filter(|v: &f64| v.is_finite())
}

// ------------------------------------------------------------------------ main

fn machine_facts() -> Value {
    let mut m = Map::new();
    m.insert("impl".into(), json!("flint"));
    m.insert(
        "nproc".into(),
        json!(std::thread::available_parallelism().map_or(1, |n| n.get())),
    );
    m.insert(
        "platform".into(),
        json!(format!(
            "{}-{}",
            std::env::consts::OS,
            std::env::consts::ARCH
        )),
    );
    if let Ok(txt) = std::fs::read_to_string("/proc/cpuinfo") {
        for line in txt.lines() {
            let Some((key, val)) = line.split_once(':') else {
                continue;
            };
            match key.trim() {
                "model name" => {
                    m.insert("cpu_model".into(), json!(val.trim()));
                }
                "cpu MHz" => {
                    if let Ok(mhz) = val.trim().parse::<f64>() {
                        m.insert("cpu_mhz".into(), json!(mhz));
                    }
                }
                "flags" => {
                    let fl: Vec<&str> = val.split_whitespace().collect();
                    let simd: Vec<&str> = [
                        "avx2",
                        "avx512_bf16",
                        "avx512_fp16",
                        "avx512bw",
                        "avx512f",
                        "avx512vl",
                        "amx_tile",
                        "fma",
                    ]
                    .into_iter()
                    .filter(|x| fl.contains(x))
                    .collect();
                    m.insert("simd".into(), json!(simd));
                    break;
                }
                _ => {}
            }
        }
    }
    Value::Object(m)
}

fn main() {
    let args = parse_args();
    if let Some(name) = &args.rss_child {
        set_num_threads(args.threads[0]);
        rss_child(name);
        return;
    }
    let only = args.only.clone();
    let wanted = move |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == name));
    let (w, n, r) = (args.warmup, args.iters, args.repeats);

    // per_rep[thread index] = (name, one timing per repeat), in suite order
    let mut per_rep: Vec<Vec<(&'static str, Vec<Timing>)>> = vec![Vec::new(); args.threads.len()];
    for rep in 0..r {
        for (ti, &th) in args.threads.iter().enumerate() {
            set_num_threads(th);
            for (name, t) in run_suite(&wanted, w, n) {
                let slot = &mut per_rep[ti];
                match slot.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, v)) => v.push(t),
                    None => slot.push((name, vec![t])),
                }
            }
        }
        eprintln!("repeat {}/{r} done", rep + 1);
    }
    set_num_threads(0);

    let mut runs = Map::new();
    for (ti, &th) in args.threads.iter().enumerate() {
        let mut out = Map::new();
        for (name, reps) in &per_rep[ti] {
            let meds: Vec<f64> = reps.iter().map(|t| t.median_ms).collect();
            let mut sorted = meds.clone();
            sorted.sort_by(f64::total_cmp);
            let med = median(&sorted);
            let fcs: Vec<f64> = reps.iter().filter_map(|t| t.foreign_cores).collect();
            let flops = flops_of(name);
            let mut row = json!({
                "median_ms": med,
                "min_ms": reps.iter().map(|t| t.min_ms).fold(f64::INFINITY, f64::min),
                "repeat_medians_ms": meds,
                "spread_pct": 100.0 * (sorted[sorted.len() - 1] - sorted[0]) / med,
                "foreign_cores_max": fcs.iter().copied().reduce(f64::max),
                "flops": flops,
                "gflops_per_s": flops / (med * 1e-3) / 1e9,
            });
            if args.rss {
                row["peak_rss_mib"] = json!(measure_rss(name, th));
            }
            out.insert((*name).into(), row);
        }
        runs.insert(th.to_string(), Value::Object(out));
    }
    let results = json!({
        "machine": machine_facts(),
        "config": {"warmup": w, "iters": n, "repeats": r, "threads": args.threads},
        "runs": runs,
    });

    println!(
        "flint; each cell = median over {r} repeats of the median of {n} timed iterations \
         (after {w} warmup)\n"
    );
    println!(
        "| workload | threads | median ms | min ms | spread of repeats % \
         | GFLOP/s (matmul/conv FLOPs, at median) | max other load (cores) | peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for name in workload_names() {
        for th in &args.threads {
            let Some(row) = results["runs"][th.to_string()].get(name) else {
                continue;
            };
            let f = |k: &str, digits: usize| {
                row[k]
                    .as_f64()
                    .map_or("n/a".to_string(), |x| format!("{x:.digits$}"))
            };
            println!(
                "| {name} | {th} | {} | {} | {} | {} | {} | {} |",
                f("median_ms", 2),
                f("min_ms", 2),
                f("spread_pct", 0),
                f("gflops_per_s", 1),
                f("foreign_cores_max", 2),
                f("peak_rss_mib", 1)
            );
        }
    }

    if let Some(path) = &args.json_out {
        let text = serde_json::to_string_pretty(&results).expect("JSON of plain numbers");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
}
