//! The examples that train something, run here with small settings: the loss has to fall
//! and the model has to beat chance, so an example cannot silently rot.
// Each example file brings its own copy of `examples/common/`, as each example binary does.
#![allow(clippy::duplicate_mod)]

#[allow(dead_code)] // `main` and the CLI helpers are for the example binary
#[path = "../examples/derive_mlp.rs"]
mod derive_mlp;

/// The examples seed and draw from the process-wide generator (`manual_seed`), and the
/// tests of this file run on parallel threads of one process: each test holds this lock,
/// so no test's draws interleave with another's (a resumed run compared bit for bit with a
/// straight one failed when they did).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn derive_mlp_learns_the_spirals_and_reloads_identically() {
    let _rng = one_at_a_time();
    let dir = std::env::temp_dir().join(format!("flint-examples-train-{}", std::process::id()));
    let report = derive_mlp::train(60, 0, &dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(report.losses.len(), 60);
    assert!(report.losses.iter().all(|l| l.is_finite()));
    // Three balanced classes: the untrained loss is near ln 3 ≈ 1.10.
    let (first, last) = (report.initial_loss(), report.final_loss());
    assert!((0.8..1.5).contains(&first), "initial loss {first}");
    assert!(
        last < 0.5 * first,
        "loss fell only from {first} to {last}: {:?}",
        report.losses
    );
    let chance = 1.0 / derive_mlp::CLASSES as f64;
    assert!(
        report.test_accuracy > 2.0 * chance,
        "held-out accuracy {} (chance {chance})",
        report.test_accuracy
    );
    assert!(report.reload_identical);
    // The derived summary: nested blocks in a ModuleList, the renamed root.
    assert!(report.summary.starts_with("SpiralNet(\n  (stem): Linear(in_features=2, out_features=32, bias=true)\n  (blocks): ModuleList(\n    (0): Block(\n      (fc): Linear(in_features=32, out_features=32, bias=true)\n"), "{}", report.summary);
    assert!(report
        .summary
        .contains("(drop): Dropout(p=0.1, inplace=false)"));
    // stem 2·32+32, two blocks of 32·32+32 + 2·32, head 32·3+3
    assert_eq!(report.parameters, 96 + 2 * (1056 + 64) + 99);
}

#[allow(dead_code)]
#[path = "../examples/digits.rs"]
mod digits;

#[allow(dead_code)]
#[path = "../examples/digits_resnet.rs"]
mod digits_resnet;

#[allow(dead_code)]
#[path = "../examples/lstm_lm.rs"]
mod lstm_lm;

use digits::common::classify::Config as DigitsConfig;

fn temp_out(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("flint-examples-{name}-{}", std::process::id()))
}

fn digits_config(name: &str, epochs: usize) -> DigitsConfig {
    let mut cfg = DigitsConfig::new(temp_out(name).to_str().unwrap(), epochs);
    cfg.data = "data/digits/digits.csv.gz".into();
    cfg.progress = false;
    cfg
}

/// The README's main example, in full: 30 epochs reach at least 97% on the held-out fifth.
#[test]
fn digits_reaches_97_percent_on_the_held_out_fifth() {
    let _rng = one_at_a_time();
    let cfg = digits_config("digits-full", 30);
    let r = digits::run(&cfg).unwrap();
    assert_eq!((r.test_rows, r.epochs_run), (360, 30));
    assert!(r.accuracy >= 0.97, "held-out accuracy {}", r.accuracy);
    assert!(
        r.last_loss < r.first_loss,
        "{} -> {}",
        r.first_loss,
        r.last_loss
    );
    // what the run leaves behind: metrics, TensorBoard events, curves, checkpoint
    let files: Vec<String> = std::fs::read_dir(&cfg.out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for want in ["metrics.csv", "curves.png", "checkpoint.safetensors"] {
        assert!(
            files.iter().any(|f| f == want),
            "{want} missing from {files:?}"
        );
    }
    assert!(
        files.iter().any(|f| f.starts_with("events.out.tfevents.")),
        "{files:?}"
    );
    let csv = std::fs::read_to_string(cfg.out.join("metrics.csv")).unwrap();
    assert_eq!(
        csv.lines()
            .filter(|l| l.contains(",test/accuracy,"))
            .count(),
        30
    );
    let _ = std::fs::remove_dir_all(&cfg.out);
}

/// Checkpoint and resume: 2 epochs in one go, or 1 epoch, a checkpoint, a new process's
/// worth of fresh objects and 1 more epoch, give the same weights bit for bit.
#[test]
fn digits_resumed_run_is_bit_identical() {
    let _rng = one_at_a_time();
    let bits = |w: &[(String, flint::Tensor)]| -> Vec<(String, Vec<u32>)> {
        w.iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    t.to_vec::<f32>().iter().map(|v| v.to_bits()).collect(),
                )
            })
            .collect()
    };
    let straight = digits_config("digits-straight", 2);
    let a = digits::run(&straight).unwrap();

    let mut first = digits_config("digits-resumed", 2);
    first.stop_after = Some(1);
    let half = digits::run(&first).unwrap();
    assert_eq!(half.epochs_run, 1);
    let mut second = first.clone();
    second.stop_after = None;
    second.resume = true;
    let b = digits::run(&second).unwrap();
    assert_eq!(b.epochs_run, 1);
    assert_eq!(bits(&a.weights), bits(&b.weights));
    assert_eq!(a.accuracy, b.accuracy);
    for cfg in [straight, first] {
        let _ = std::fs::remove_dir_all(&cfg.out);
    }
}

#[test]
fn digits_resnet_learns() {
    let _rng = one_at_a_time();
    let out = temp_out("digits-resnet");
    let mut cfg = digits_resnet::common::classify::Config::new(out.to_str().unwrap(), 2);
    cfg.progress = false;
    cfg.label_smoothing = 0.0;
    let r = digits_resnet::run(&cfg).unwrap();
    let _ = std::fs::remove_dir_all(&cfg.out);
    assert!(
        r.last_loss < r.first_loss,
        "{} -> {}",
        r.first_loss,
        r.last_loss
    );
    assert!(r.accuracy > 0.85, "held-out accuracy {}", r.accuracy);
}

#[test]
fn lstm_lm_loss_falls() {
    let _rng = one_at_a_time();
    let text = std::fs::read_to_string("data/text/python_reference_topics.txt").unwrap();
    let cfg = lstm_lm::Config {
        steps: 30,
        batch: 8,
        bptt: 32,
        emb: 16,
        hidden: 64,
        sample: 20,
        out: temp_out("lstm"),
        progress: false,
        ..Default::default()
    };
    let r = lstm_lm::train(&text[..60_000], &cfg).unwrap();
    let _ = std::fs::remove_dir_all(&cfg.out);
    assert!(r.val_loss.is_finite());
    assert!(
        r.last_loss < r.first_loss - 0.5,
        "{} -> {}",
        r.first_loss,
        r.last_loss
    );
    assert_eq!(
        r.sample.chars().count(),
        "The ".len() + 20,
        "{:?}",
        r.sample
    );
}
