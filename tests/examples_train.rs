//! The examples that train something, run here with small settings: the loss has to fall
//! and the model has to beat chance, so an example cannot silently rot.

#[allow(dead_code)] // `main` and the CLI helpers are for the example binary
#[path = "../examples/derive_mlp.rs"]
mod derive_mlp;

#[test]
fn derive_mlp_learns_the_spirals_and_reloads_identically() {
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
