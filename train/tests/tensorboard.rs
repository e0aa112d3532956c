//! TensorBoard opens what `RunLogger` writes: each test logs a run, then
//! `scripts/check-tensorboard.py` reads it back with TensorBoard's own reader
//! (`EventAccumulator`) and compares tags, steps and values.
//!
//! The python comes from `FLINT_TB_PYTHON` (an interpreter with the `tensorboard` package;
//! `.ci/run` installs one). Without it the tests print a `SKIPPED` line and pass, unless
//! `REQUIRE_TENSORBOARD=1` (as in CI), where they fail.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use flint_train::RunLogger;

fn say(line: &str) {
    // straight to stderr, past the test harness's capture, so the skip line is visible
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The python to run the checker with, or `None` (skip) when none is configured.
fn tensorboard_python(test: &str) -> Option<String> {
    match std::env::var("FLINT_TB_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            let why = "FLINT_TB_PYTHON is not set (a python with `tensorboard`, e.g. \
                       `python3 -m venv tb && tb/bin/pip install 'tensorboard==2.20.*'`)";
            if std::env::var("REQUIRE_TENSORBOARD").as_deref() == Ok("1") {
                panic!("REQUIRE_TENSORBOARD=1 but {why}");
            }
            say(&format!("SKIPPED {test}: {why}"));
            None
        }
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flint-train-tb-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "Infinity".into()
    } else if v == f64::NEG_INFINITY {
        "-Infinity".into()
    } else {
        format!("{v:?}")
    }
}

/// `{"tag": [[step, value], ...], ...}` as the checker reads it.
fn expected_json(scalars: &[(&str, Vec<(u64, f64)>)]) -> String {
    let tags: Vec<String> = scalars
        .iter()
        .map(|(tag, pts)| {
            let pts: Vec<String> = pts
                .iter()
                .map(|(s, v)| format!("[{s}, {}]", json_number(*v)))
                .collect();
            format!("{}: [{}]", json_string(tag), pts.join(", "))
        })
        .collect();
    format!("{{{}}}", tags.join(",\n "))
}

/// Runs the checker on `events` (a file or a run folder); panics with its output unless
/// it reports a match.
fn check(python: &str, events: &Path, expected: &str, dir: &Path) {
    let expected_path = dir.join("expected.json");
    std::fs::write(&expected_path, expected).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check-tensorboard.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(events)
        .arg(&expected_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    say(&stdout);
    assert!(
        out.status.success() && stdout.contains("OK: tags, steps and values match"),
        "check-tensorboard.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// Runs the checker expecting it to fail; returns its output.
fn check_fails(python: &str, events: &Path, expected: &str, dir: &Path) -> String {
    let expected_path = dir.join("expected-bad.json");
    std::fs::write(&expected_path, expected).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check-tensorboard.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(events)
        .arg(&expected_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    stdout
}

#[test]
fn the_checker_catches_wrong_values_and_bad_crcs() {
    let Some(python) = tensorboard_python("the_checker_catches_wrong_values_and_bad_crcs") else {
        return;
    };
    let dir = temp_dir("negative");
    let mut log = RunLogger::create(&dir).unwrap();
    log.scalar("loss", 0, 1.0).unwrap();
    log.scalar("loss", 1, 0.5).unwrap();
    log.flush().unwrap();
    let events = log.event_file().to_path_buf();
    drop(log);
    let good = expected_json(&[("loss", vec![(0, 1.0), (1, 0.5)])]);
    check(&python, &events, &good, &dir);
    // a value off by one float32 ulp, a step that differs, a tag that is missing
    let off = f32::from_bits(0.5f32.to_bits() + 1) as f64;
    let out = check_fails(
        &python,
        &events,
        &expected_json(&[("loss", vec![(0, 1.0), (1, off)])]),
        &dir,
    );
    assert!(
        out.contains("loss step 1: value 0.5, expected 0.5000000596046448 (float32)"),
        "{out}"
    );
    let out = check_fails(
        &python,
        &events,
        &expected_json(&[("loss", vec![(0, 1.0), (2, 0.5)])]),
        &dir,
    );
    assert!(out.contains("loss: steps [0, 1], expected [0, 2]"), "{out}");
    let out = check_fails(
        &python,
        &events,
        &expected_json(&[("loss", vec![(0, 1.0), (1, 0.5)]), ("acc", vec![(1, 0.9)])]),
        &dir,
    );
    assert!(
        out.contains("scalar tags ['loss'], expected ['acc', 'loss']"),
        "{out}"
    );
    // one flipped bit in the last record's data: TensorBoard's reader rejects its CRC
    let mut bytes = std::fs::read(&events).unwrap();
    let n = bytes.len();
    bytes[n - 6] ^= 0x01;
    std::fs::write(&events, &bytes).unwrap();
    let out = check_fails(&python, &events, &good, &dir);
    assert!(out.contains("failed event crc32 check"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tensorboard_reads_a_run() {
    let Some(python) = tensorboard_python("tensorboard_reads_a_run") else {
        return;
    };
    let dir = temp_dir("run");
    let mut log = RunLogger::create(&dir).unwrap();
    let mut expected: Vec<(&str, Vec<(u64, f64)>)> = vec![
        ("train/loss", vec![]),
        ("test/loss", vec![]),
        ("test/accuracy", vec![]),
        ("odd, \"quoted\" tag/ünïcødé", vec![]),
        ("edge/values", vec![]),
    ];
    for step in 0..200u64 {
        let loss = 2.3 * (-(step as f64) / 40.0).exp() + 0.05;
        log.scalar("train/loss", step, loss).unwrap();
        expected[0].1.push((step, loss));
        if step % 50 == 49 {
            let test_loss = loss * 1.1;
            let acc = 1.0 - test_loss / 3.0;
            log.scalar("test/loss", step, test_loss).unwrap();
            log.scalar("test/accuracy", step, acc).unwrap();
            expected[1].1.push((step, test_loss));
            expected[2].1.push((step, acc));
        }
    }
    log.scalar(expected[3].0, 7, -1.5).unwrap();
    expected[3].1.push((7, -1.5));
    // values f32 cannot hold exactly or at all, a NaN, infinities, a step past 2^32
    let edge = [
        (1, 0.1),
        (2, 1e-40),
        (3, 1e39),
        (4, f64::NAN),
        (5, f64::NEG_INFINITY),
        (1 << 40, 123456.789),
    ];
    for (s, v) in edge {
        log.scalar("edge/values", s, v).unwrap();
    }
    expected[4].1.extend(edge);
    log.flush().unwrap();
    check(&python, log.event_file(), &expected_json(&expected), &dir);
    drop(log);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tensorboard_sees_a_resumed_run_as_one() {
    let Some(python) = tensorboard_python("tensorboard_sees_a_resumed_run_as_one") else {
        return;
    };
    let dir = temp_dir("resume");
    {
        let mut log = RunLogger::create(&dir).unwrap();
        for step in 0..6u64 {
            log.scalar("loss", step, step as f64).unwrap();
            log.scalar("lr", step, 0.1).unwrap();
        }
        // the process ends here, having logged past its last checkpoint (step 3)
    }
    let mut log = RunLogger::resume(&dir, 3).unwrap();
    for step in 4..8u64 {
        log.scalar("loss", step, 10.0 * step as f64).unwrap();
        log.scalar("lr", step, 0.01).unwrap();
    }
    log.flush().unwrap();
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            n.to_string_lossy().starts_with("events.out.tfevents.")
        })
        .count();
    assert_eq!(files, 2, "the resumed run writes a second event file");
    let loss: Vec<(u64, f64)> = (0..8)
        .map(|s| (s, if s <= 3 { s as f64 } else { 10.0 * s as f64 }))
        .collect();
    let lr: Vec<(u64, f64)> = (0..8)
        .map(|s| (s, if s <= 3 { 0.1 } else { 0.01 }))
        .collect();
    assert_eq!(log.history("loss"), loss.as_slice());
    // TensorBoard reads the folder as one run: the old file's steps 4 and 5 are dropped
    check(
        &python,
        &dir,
        &expected_json(&[("loss", loss), ("lr", lr)]),
        &dir,
    );
    // and the CSV holds each step once
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 16, "{csv}");
    assert!(rows[8].starts_with("4,loss,40.0,"), "{csv}");
    drop(log);
    std::fs::remove_dir_all(&dir).unwrap();
}
