//! Workload A of `shared/bench/torch_baseline.py`: f32 `a @ b` for square 512, 1024
//! and 2048 matrices at each thread count, timed the same way as the PyTorch script.
//!
//! ```text
//! cargo bench --bench matmul -- [--threads 2,1] [--warmup 5] [--iters 30] [--repeats 3]
//!                               [--quick] [--json OUT.json]
//! ```
//!
//! `a` and `b` are `randn(n, n)` (seed 0), contiguous and row-major, created before
//! timing; each timed call makes a fresh output tensor. Each cell is the median over
//! `repeats` passes of the median of `iters` individually timed calls after `warmup`
//! untimed ones (`iters` is at least 10 below n = 2048, as in the PyTorch script).
//! GFLOP/s counts `2 n³` FLOPs at the median. "other load" is the CPU, in cores, that
//! other processes used during the timed loops (from `/proc/stat`): well above 0 means
//! the numbers are contended.

use flint::{manual_seed, set_num_threads, DType, Tensor};
use std::time::Instant;

struct Args {
    threads: Vec<usize>,
    warmup: usize,
    iters: usize,
    repeats: usize,
    json: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        threads: vec![2, 1],
        warmup: 5,
        iters: 30,
        repeats: 3,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--threads" => {
                a.threads = value("--threads")
                    .split(',')
                    .map(|t| t.trim().parse().expect("--threads: comma-separated counts"))
                    .collect()
            }
            "--warmup" => a.warmup = value("--warmup").parse().expect("--warmup: a count"),
            "--iters" => a.iters = value("--iters").parse().expect("--iters: a count"),
            "--repeats" => a.repeats = value("--repeats").parse().expect("--repeats: a count"),
            "--json" => a.json = Some(value("--json")),
            "--quick" => (a.warmup, a.iters, a.repeats) = (2, 5, 1),
            // `cargo bench` passes `--bench`; a filter or other flags are ignored
            _ => {}
        }
    }
    a
}

/// Machine-wide busy CPU seconds and this process's CPU seconds, from `/proc`.
fn cpu_seconds() -> Option<(f64, f64)> {
    let tick = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tick;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    let f: Vec<&str> = own.rsplit(')').next()?.split_whitespace().collect();
    // fields after the command name: state is [0], utime [11], stime [12]
    let mine = (f[11].parse::<f64>().ok()? + f[12].parse::<f64>().ok()?) / tick;
    Some((busy, mine))
}

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

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
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

struct Row {
    name: String,
    threads: usize,
    median_ms: f64,
    min_ms: f64,
    repeat_medians_ms: Vec<f64>,
    spread_pct: f64,
    foreign_cores_max: Option<f64>,
    flops: f64,
    gflops_per_s: f64,
}

fn main() {
    let args = parse_args();
    let sizes = [512usize, 1024, 2048];
    // per[thread index][size index] = one timing per repeat
    let mut per: Vec<Vec<Vec<Timing>>> = args
        .threads
        .iter()
        .map(|_| sizes.iter().map(|_| Vec::new()).collect())
        .collect();
    for rep in 0..args.repeats {
        for (ti, &t) in args.threads.iter().enumerate() {
            set_num_threads(t);
            for (si, &n) in sizes.iter().enumerate() {
                let iters = if n < 2048 {
                    args.iters.max(10)
                } else {
                    args.iters
                };
                per[ti][si].push(bench_matmul(n, args.warmup, iters));
            }
        }
        eprintln!("repeat {}/{} done", rep + 1, args.repeats);
    }
    set_num_threads(0);

    let mut rows = Vec::new();
    for (ti, &t) in args.threads.iter().enumerate() {
        for (si, &n) in sizes.iter().enumerate() {
            let reps = &per[ti][si];
            let mut meds: Vec<f64> = reps.iter().map(|r| r.median_ms).collect();
            let repeat_medians_ms = meds.clone();
            meds.sort_by(f64::total_cmp);
            let med = median(&meds);
            let flops = 2.0 * (n as f64).powi(3);
            rows.push(Row {
                name: format!("matmul_{n}"),
                threads: t,
                median_ms: med,
                min_ms: reps.iter().map(|r| r.min_ms).fold(f64::INFINITY, f64::min),
                spread_pct: 100.0 * (meds[meds.len() - 1] - meds[0]) / med,
                repeat_medians_ms,
                foreign_cores_max: reps.iter().filter_map(|r| r.foreign_cores).reduce(f64::max),
                flops,
                gflops_per_s: flops / (med * 1e-3) / 1e9,
            });
        }
    }

    println!(
        "flint matmul (f32); each cell = median over {} repeats of the median of {} timed \
         iterations (after {} warmup)\n",
        args.repeats, args.iters, args.warmup
    );
    println!(
        "| workload | threads | median ms | min ms | spread of repeats % | GFLOP/s | max other load (cores) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for si in 0..sizes.len() {
        for ti in 0..args.threads.len() {
            let r = &rows[ti * sizes.len() + si];
            let fc = r
                .foreign_cores_max
                .map_or("n/a".to_string(), |f| format!("{f:.2}"));
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.0} | {:.1} | {fc} |",
                r.name, r.threads, r.median_ms, r.min_ms, r.spread_pct, r.gflops_per_s
            );
        }
    }

    if let Some(path) = &args.json {
        std::fs::write(path, to_json(&args, &rows))
            .unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    }
}

/// The results in the layout of the PyTorch script's JSON (`runs[threads][workload]`).
fn to_json(args: &Args, rows: &[Row]) -> String {
    let num = |x: f64| {
        if x.is_finite() {
            format!("{x}")
        } else {
            "null".into()
        }
    };
    let mut s = String::from("{\n \"machine\": {\"impl\": \"flint\"},\n");
    s += &format!(
        " \"config\": {{\"warmup\": {}, \"iters\": {}, \"repeats\": {}, \"threads\": {:?}}},\n",
        args.warmup, args.iters, args.repeats, args.threads
    );
    s += " \"runs\": {";
    for (ti, &t) in args.threads.iter().enumerate() {
        s += if ti == 0 { "\n" } else { ",\n" };
        s += &format!("  \"{t}\": {{");
        let mine: Vec<&Row> = rows.iter().filter(|r| r.threads == t).collect();
        for (i, r) in mine.iter().enumerate() {
            s += if i == 0 { "\n" } else { ",\n" };
            let reps: Vec<String> = r.repeat_medians_ms.iter().map(|&x| num(x)).collect();
            s += &format!(
                "   \"{}\": {{\"median_ms\": {}, \"min_ms\": {}, \"repeat_medians_ms\": [{}], \
                 \"spread_pct\": {}, \"foreign_cores_max\": {}, \"flops\": {}, \"gflops_per_s\": {}}}",
                r.name,
                num(r.median_ms),
                num(r.min_ms),
                reps.join(", "),
                num(r.spread_pct),
                r.foreign_cores_max.map_or("null".into(), num),
                num(r.flops),
                num(r.gflops_per_s)
            );
        }
        s += "\n  }";
    }
    s += "\n }\n}\n";
    s
}
