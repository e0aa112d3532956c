//! The Philox code of the `random` module (`src/philox.h`, plain C) compiled with the host
//! C compiler and compared bit for bit with the CPU generator, `flint_runtime::Generator`:
//! the same counter/key layout, the same float conversions, the same streams.
//!
//! Needs a C compiler (`$CC` or `cc`; Rust links with it on Linux, so it is there). If
//! none can be started the test prints a `SKIPPED` line and passes.

use flint_runtime::random::philox4x32_10;
use flint_runtime::{DType, Generator};
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

const PHILOX_H: &str = include_str!("../src/philox.h");

/// Host definitions of the FLINT_* hooks of philox.h, then a driver that prints, for
/// element i of a draw at (seed, offset): the raw block, uniform f64 in [low, high),
/// uniform f32, normal f64, element i of a bernoulli(p) draw (one word of the block of
/// `offset + i/4`) and randint(lo, hi), as exact hex bit patterns.
const HARNESS: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#define FLINT_HD static inline
#define FLINT_DMUL(a, b) ((a) * (b))
#define FLINT_DADD(a, b) ((a) + (b))
#define FLINT_MULHI64(a, b) ((unsigned long long)(((unsigned __int128)(a) * (b)) >> 64))
#define FLINT_LOG(x) log(x)
#define FLINT_SQRT(x) sqrt(x)
#define FLINT_COS(x) cos(x)
@PHILOX@
#line 1 "harness.c"
static unsigned long long bits64(double d) { unsigned long long u; memcpy(&u, &d, 8); return u; }
static unsigned int bits32(float f) { unsigned int u; memcpy(&u, &f, 4); return u; }
int main(int argc, char** argv) {
    unsigned long long seed, offset, i;
    long long n;
    if (argc != 4) return 2;
    seed = strtoull(argv[1], 0, 0);
    offset = strtoull(argv[2], 0, 0);
    n = atoll(argv[3]);
    for (i = 0; i < (unsigned long long)n; ++i) {
        flint_u32x4 r = flint_philox_block(seed, offset + i);
        printf("%08x %08x %08x %08x %016llx %08x %016llx %d %lld\n", r.v[0], r.v[1], r.v[2],
               r.v[3], bits64(flint_uniform(r, 53, -2.0, 3.0)),
               bits32((float)flint_uniform(r, 24, -2.0, 3.0)),
               bits64(flint_normal(r, 0.5, 2.0)),
               flint_bernoulli_at(seed, offset, (long long)i, flint_bernoulli_threshold(0.3)),
               flint_randint(r, -5, 17));
    }
    return 0;
}
"#;

struct Row {
    block: [u32; 4],
    uniform_f64: u64,
    uniform_f32: u32,
    normal_f64: u64,
    bernoulli: bool,
    randint: i64,
}

fn parse(line: &str) -> Row {
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 9, "bad harness line {line:?}");
    let h32 = |s: &str| u32::from_str_radix(s, 16).unwrap();
    Row {
        block: [h32(f[0]), h32(f[1]), h32(f[2]), h32(f[3])],
        uniform_f64: u64::from_str_radix(f[4], 16).unwrap(),
        uniform_f32: h32(f[5]),
        normal_f64: u64::from_str_radix(f[6], 16).unwrap(),
        bernoulli: f[7] == "1",
        randint: f[8].parse().unwrap(),
    }
}

/// The harness, built once; `None` (after a visible SKIPPED line) when no compiler starts.
fn harness() -> Option<PathBuf> {
    static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();
    EXE.get_or_init(build_harness).clone()
}

fn build_harness() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("flint-kernels-philox");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("harness.c");
    let exe = dir.join("harness");
    std::fs::write(&src, HARNESS.replace("@PHILOX@", PHILOX_H)).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    // -ffp-contract=off: no fused multiply-add, as on the GPU (explicit __dmul_rn) and CPU
    let out = Command::new(&cc)
        .args(["-std=gnu99", "-O2", "-ffp-contract=off", "-Wall", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg("-lm")
        .output();
    match out {
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: no C compiler ({cc}: {e}); philox.h not checked against the CPU generator"
            );
            None
        }
        Ok(o) => {
            assert!(
                o.status.success(),
                "{cc} failed on philox.h:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            Some(exe)
        }
    }
}

fn run(exe: &PathBuf, seed: u64, offset: u64, n: usize) -> Vec<Row> {
    let o = Command::new(exe)
        .args([format!("{seed:#x}"), format!("{offset:#x}"), n.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success());
    let rows: Vec<Row> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(parse)
        .collect();
    assert_eq!(rows.len(), n);
    rows
}

#[test]
fn philox_h_reproduces_the_cpu_generator() {
    let Some(exe) = harness() else { return };
    // small and large seeds; an offset crossing 2^32 (the carry into counter word 1)
    let cases: [(u64, u64); 4] = [
        (0, 0),
        (42, 7),
        (0xDEAD_BEEF_1234_5678, 0xFFFF_FFF0),
        (flint_runtime::random::DEFAULT_SEED, 1 << 40),
    ];
    let n = 48;
    for (seed, offset) in cases {
        let rows = run(&exe, seed, offset, n);
        let rng = || {
            let mut g = Generator::new(seed);
            g.set_state(seed, offset);
            g
        };
        let u64s = rng().uniform([n], -2.0, 3.0, DType::F64).to_vec::<f64>();
        let u32s = rng().uniform([n], -2.0, 3.0, DType::F32).to_vec::<f32>();
        let normals = rng().normal([n], 0.5, 2.0, DType::F64).to_vec::<f64>();
        let bern = rng().bernoulli([n], 0.3).to_vec::<bool>();
        let ints = rng().randint(-5, 17, [n]).to_vec::<i64>();
        for (i, r) in rows.iter().enumerate() {
            let c = offset.wrapping_add(i as u64);
            let block = philox4x32_10(
                [c as u32, (c >> 32) as u32, 0, 0],
                [seed as u32, (seed >> 32) as u32],
            );
            let at = format!("seed {seed:#x} offset {offset:#x} element {i}");
            assert_eq!(r.block, block, "block, {at}");
            assert_eq!(f64::from_bits(r.uniform_f64), u64s[i], "uniform f64, {at}");
            assert_eq!(f32::from_bits(r.uniform_f32), u32s[i], "uniform f32, {at}");
            assert_eq!(f64::from_bits(r.normal_f64), normals[i], "normal f64, {at}");
            assert_eq!(r.bernoulli, bern[i], "bernoulli, {at}");
            assert_eq!(r.randint, ints[i], "randint, {at}");
        }
        // the draws are not degenerate
        assert!(bern.iter().any(|&b| b) && bern.iter().any(|&b| !b));
        assert!(ints.iter().all(|k| (-5..17).contains(k)));
    }
}

#[test]
fn philox_h_matches_random123_known_answers() {
    // the same vectors as runtime/src/random.rs, through the C code
    let Some(exe) = harness() else { return };
    // counter 0, key 0: element 0 of seed 0 at offset 0
    let rows = run(&exe, 0, 0, 1);
    assert_eq!(
        rows[0].block,
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    );
}
