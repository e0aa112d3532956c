//! Runs the CUDA kernels on the CPU, under the small CUDA emulation of `tests/emu/emu.h`
//! (each GPU thread a fiber, real `__syncthreads`/warp-shuffle barriers), and checks the
//! numbers. `tests/emu/checks.cpp` includes every module's source, launches the kernels
//! and compares them with reference computations (materialized attention, finite
//! differences for the norm backward passes, …). For casts, random streams, dropout and
//! optimizer steps it prints what the kernels produced, and this test compares that with
//! the CPU runtime itself (`to_dtype`, `Generator`, `functional::dropout`, `Sgd`, `Adam`).
//!
//! This checks what the kernels compute on any machine; it cannot check GPU-only matters
//! (the PTX `cvt` instructions are replaced by equivalent C, there is no memory model or
//! timing). Needs a C++17 compiler (`$CXX`, `c++` or `g++`); without one the test prints
//! a `SKIPPED` line and passes.

use flint_runtime::half::{bf16, f16};
use flint_runtime::nn::functional::dropout;
use flint_runtime::optim::{Adam, Optimizer, Sgd};
use flint_runtime::{manual_seed, DType, Generator, Tensor};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EMU_H: &str = include_str!("emu/emu.h");
const CHECKS_CPP: &str = include_str!("emu/checks.cpp");

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Writes the sources and builds the checks; `None` when no C++ compiler starts.
fn build(dir: &Path) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    for m in flint_kernels::MODULES {
        std::fs::write(dir.join(format!("{}.cu", m.name)), m.source).unwrap();
    }
    std::fs::write(dir.join("emu.h"), EMU_H).unwrap();
    std::fs::write(dir.join("checks.cpp"), CHECKS_CPP).unwrap();
    let exe = dir.join("checks");
    let candidates: Vec<String> = match std::env::var("CXX") {
        Ok(cxx) => vec![cxx],
        Err(_) => vec!["c++".into(), "g++".into(), "clang++".into()],
    };
    for cxx in &candidates {
        // -ffp-contract=off: the kernels' explicit no-FMA arithmetic (__dmul_rn) holds
        let out = Command::new(cxx)
            .args(["-std=c++17", "-O1", "-ffp-contract=off", "-w", "-I"])
            .arg(dir)
            .arg(dir.join("checks.cpp"))
            .arg("-o")
            .arg(&exe)
            .output();
        match out {
            Err(_) => continue,
            Ok(o) if o.status.success() => return Some(exe),
            Ok(o) => panic!(
                "{cxx} failed to build the emulated kernels:\n{}",
                String::from_utf8_lossy(&o.stderr)
            ),
        }
    }
    say(&format!(
        "SKIPPED: no C++ compiler ({}); kernels not run under emulation",
        candidates.join(", ")
    ));
    None
}

/// Runs the checks with a deadline; their stdout.
fn run(exe: &Path, limit: Duration) -> String {
    let mut child = Command::new(exe)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the emulated kernels ran past {limit:?} (a deadlock?)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap();
    let failures: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        status.success() && failures.is_empty(),
        "emulated kernel checks failed ({status}):\n{}",
        failures.join("\n")
    );
    out
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

fn dtype(name: &str) -> DType {
    match name {
        "f32" => DType::F32,
        "f64" => DType::F64,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        "i64" => DType::I64,
        "bool" => DType::Bool,
        other => panic!("unknown dtype {other}"),
    }
}

/// A 1-d tensor from the bit patterns the checks print.
fn from_bits(dt: DType, bits: &[u64]) -> Tensor {
    let n = [bits.len()];
    match dt {
        DType::F32 => Tensor::from_vec(bits.iter().map(|&b| f32::from_bits(b as u32)).collect(), n),
        DType::F64 => Tensor::from_vec(bits.iter().map(|&b| f64::from_bits(b)).collect(), n),
        DType::I64 => Tensor::from_vec(bits.iter().map(|&b| b as i64).collect(), n),
        other => panic!("no inputs of {other} here"),
    }
}

/// The bit patterns of a tensor's elements, as the checks print them.
fn bits_of(t: &Tensor) -> Vec<u64> {
    match t.dtype() {
        DType::F32 => t
            .to_vec::<f32>()
            .iter()
            .map(|x| x.to_bits() as u64)
            .collect(),
        DType::F64 => t.to_vec::<f64>().iter().map(|x| x.to_bits()).collect(),
        DType::F16 => t
            .to_vec::<f16>()
            .iter()
            .map(|x| x.to_bits() as u64)
            .collect(),
        DType::BF16 => t
            .to_vec::<bf16>()
            .iter()
            .map(|x| x.to_bits() as u64)
            .collect(),
        DType::I64 => t.to_vec::<i64>().iter().map(|&x| x as u64).collect(),
        DType::Bool => t.to_vec::<bool>().iter().map(|&x| x as u64).collect(),
    }
}

fn generator(seed: u64, offset: u64) -> Generator {
    let mut g = Generator::new(seed);
    g.set_state(seed, offset);
    g
}

/// Compares one `data` line with the CPU runtime; returns a description of the check.
fn compare(f: &[&str]) -> String {
    let num = |i: usize| -> u64 { f[i].parse().unwrap() };
    match f[0] {
        "cast" => {
            let (from, to, n) = (dtype(f[1]), dtype(f[2]), num(3) as usize);
            let input: Vec<u64> = f[4..4 + n].iter().map(|s| hex(s)).collect();
            let got: Vec<u64> = f[4 + n..4 + 2 * n].iter().map(|s| hex(s)).collect();
            let want = bits_of(&from_bits(from, &input).to_dtype(to));
            assert_eq!(got, want, "cast {from} -> {to} of {input:x?}");
            format!("cast {from} -> {to} ({n} values) = to_dtype")
        }
        "uniform" | "normal" => {
            let (dt, seed, offset, n) = (dtype(f[1]), num(2), num(3), num(4) as usize);
            let (a, b) = (f64::from_bits(hex(f[5])), f64::from_bits(hex(f[6])));
            let got: Vec<u64> = f[7..7 + n].iter().map(|s| hex(s)).collect();
            let mut g = generator(seed, offset);
            let want = if f[0] == "uniform" {
                g.uniform([n], a, b, dt)
            } else {
                g.normal([n], a, b, dt)
            };
            assert_eq!(got, bits_of(&want), "philox_{}_{dt}", f[0]);
            format!("philox_{}_{dt} = Generator::{}", f[0], f[0])
        }
        "bernoulli" => {
            let (seed, offset, n) = (num(1), num(2), num(3) as usize);
            let p = f64::from_bits(hex(f[4]));
            let got: Vec<u64> = f[5..5 + n].iter().map(|s| hex(s)).collect();
            let want = generator(seed, offset).bernoulli([n], p);
            assert_eq!(got, bits_of(&want), "philox_bernoulli_bool");
            "philox_bernoulli_bool = Generator::bernoulli".into()
        }
        "randint" => {
            let (seed, offset, n) = (num(1), num(2), num(3) as usize);
            let (lo, hi): (i64, i64) = (f[4].parse().unwrap(), f[5].parse().unwrap());
            let got: Vec<u64> = f[6..6 + n].iter().map(|s| hex(s)).collect();
            let want = generator(seed, offset).randint(lo, hi, [n]);
            assert_eq!(got, bits_of(&want), "philox_randint_i64");
            "philox_randint_i64 = Generator::randint".into()
        }
        "dropout" => {
            let (seed, n) = (num(2), num(3) as usize);
            let p = f64::from_bits(hex(f[4]));
            let words: Vec<u64> = f[5..5 + 3 * n].iter().map(|s| hex(s)).collect();
            let x = from_bits(DType::F32, &words[..n]);
            manual_seed(seed);
            let y = dropout(&x, p, true).unwrap();
            assert_eq!(&words[n..2 * n], bits_of(&y), "dropout_f32 output");
            let keep = Generator::new(seed).bernoulli([n], 1.0 - p);
            assert_eq!(&words[2 * n..], bits_of(&keep), "dropout_f32 keep mask");
            "dropout_f32 = functional::dropout (manual_seed)".into()
        }
        "sgd" | "adam" | "adamw" => {
            let dt = dtype(f[1]);
            let (n, steps) = (num(2) as usize, num(3) as usize);
            let words: Vec<u64> = f[4..].iter().map(|s| hex(s)).collect();
            assert_eq!(words.len(), n * (1 + 2 * steps));
            let p = from_bits(dt, &words[..n]).requires_grad_(true);
            let params = vec![p.clone()];
            let mut opt: Box<dyn Optimizer> = match f[0] {
                "sgd" if dt == DType::F64 => Box::new(
                    Sgd::new(params, 0.1)
                        .momentum(0.9)
                        .dampening(0.1)
                        .weight_decay(0.01)
                        .nesterov(true),
                ),
                "sgd" => Box::new(Sgd::new(params, 0.05).momentum(0.8)),
                "adam" => Box::new(Adam::new(params, 0.01).weight_decay(0.1).amsgrad(true)),
                _ => Box::new(Adam::adamw(params, 0.02)),
            };
            for s in 0..steps {
                let at = n * (1 + 2 * s);
                let g = from_bits(dt, &words[at..at + n]);
                opt.zero_grad();
                (&p * &g).sum_all().backward();
                opt.step();
                let got = &words[at + n..at + 2 * n];
                let want = bits_of(&p.detach());
                if dt == DType::F64 {
                    assert_eq!(got, want, "{} {dt} step {}", f[0], s + 1);
                } else {
                    // f32: the fused kernel rounds like the CPU's tensor ops up to the
                    // order of a few operations
                    for (a, b) in got.iter().zip(&want) {
                        let (a, b) = (f32::from_bits(*a as u32), f32::from_bits(*b as u32));
                        assert!(
                            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                            "{} {dt} step {}: {a} vs {b}",
                            f[0],
                            s + 1
                        );
                    }
                }
            }
            format!("{} {dt}: {steps} steps = the CPU optimizer", f[0])
        }
        other => panic!("unknown data line {other}"),
    }
}

#[test]
fn kernels_compute_the_right_numbers_under_emulation() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("flint-kernels-emu");
    let t = Instant::now();
    let Some(exe) = build(&dir) else { return };
    say(&format!(
        "built the emulated kernels in {:.0} s",
        t.elapsed().as_secs_f64()
    ));
    let out = run(&exe, Duration::from_secs(600));
    let mut checks = 0;
    let mut compared = BTreeSet::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first() {
            Some(&"ok") => checks += 1,
            Some(&"data") => {
                compared.insert(compare(&f[1..]));
            }
            Some(&"time") | Some(&"summary") => say(&format!("  {line}")),
            _ => {}
        }
    }
    assert!(checks >= 150, "only {checks} checks ran:\n{out}");
    assert!(
        compared.len() >= 20,
        "only {} comparisons with the runtime",
        compared.len()
    );
    say(&format!(
        "{checks} emulated kernel checks passed; {} outputs equal the CPU runtime's",
        compared.len()
    ));
}
