//! With the feature `runtime` (on in the `flint` facade), `?` turns a `TrainError` into
//! `flint_runtime::Error`, so examples can use `fn main() -> flint::Result<()>`.
#![cfg(feature = "runtime")]

use flint_train::{RunLogger, TrainError};

fn start(dir: &std::path::Path) -> flint_runtime::Result<RunLogger> {
    Ok(RunLogger::create(dir)?)
}

fn plot_unknown(log: &RunLogger) -> flint_runtime::Result<()> {
    log.plot(log.dir().join("c.png"), &[&["missing"]])?;
    Ok(())
}

#[test]
fn train_errors_convert_into_flint_errors() {
    let dir = std::env::temp_dir().join(format!("flint-train-rt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    // an I/O error keeps its path and source
    let e = start(&file.join("run")).unwrap_err();
    assert!(matches!(e, flint_runtime::Error::Io { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("{}: ", file.join("run").display())),
        "{e}"
    );
    // a refused argument becomes a Config error naming the function
    let log = start(&dir.join("run")).unwrap();
    let e = plot_unknown(&log).unwrap_err();
    assert_eq!(
        e.to_string(),
        "RunLogger::plot: nothing was logged under \"missing\" (tags: none)"
    );
    // a malformed metrics.csv keeps file and line
    drop(log);
    std::fs::write(
        dir.join("run/metrics.csv"),
        "step,tag,value,wall_time\n1,a\n",
    )
    .unwrap();
    let e: flint_runtime::Error = RunLogger::resume(dir.join("run"), 5).unwrap_err().into();
    let csv = dir.join("run/metrics.csv");
    assert_eq!(
        e.to_string(),
        format!("{}: line 2: expected 4 fields, found 2", csv.display())
    );
    let _: TrainError = TrainError::invalid("x", "y");
    std::fs::remove_dir_all(&dir).unwrap();
}
