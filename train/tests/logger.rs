//! `RunLogger`'s files: names, contents, flushing, fresh runs and resumed ones, errors.

use std::path::{Path, PathBuf};

use flint_train::{RunLogger, TrainError};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flint-train-log-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn event_file_name_follows_tensorboard_convention() {
    let dir = temp_dir("name");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let log = RunLogger::create(dir.join("digits")).unwrap();
    let name = log
        .event_file()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // events.out.tfevents.<unix secs>.<hostname>.<pid>.flint
    let parts: Vec<&str> = name.split('.').collect();
    assert_eq!(&parts[..3], ["events", "out", "tfevents"], "{name}");
    let secs: u64 = parts[3].parse().unwrap();
    assert!(secs >= before && secs <= before + 5, "{name}");
    assert_eq!(parts[parts.len() - 2], std::process::id().to_string());
    assert_eq!(parts[parts.len() - 1], "flint");
    assert_eq!(log.dir(), dir.join("digits"));
    assert_eq!(names(log.dir()), [name, "metrics.csv".to_string()]);
    drop(log);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn drop_flushes_both_files() {
    let dir = temp_dir("drop");
    let event_file;
    {
        let mut log = RunLogger::create(&dir).unwrap();
        log.scalar("train/loss", 0, 0.75).unwrap();
        log.scalar("train/loss", 1, 0.5).unwrap();
        event_file = log.event_file().to_path_buf();
    }
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0], "step,tag,value,wall_time");
    assert!(lines[1].starts_with("0,train/loss,0.75,"));
    assert!(lines[2].starts_with("1,train/loss,0.5,"));
    let wall: f64 = lines[2].rsplit(',').next().unwrap().parse().unwrap();
    assert!(wall > 1.6e9, "{wall}");
    // file version record + two scalar records: 12 bytes of header and 4 of CRC each,
    // events of 24 bytes and 9 (wall) + 2 (step) + 2 + 2 + 12 (tag) + 5 (value) = 32
    let len = std::fs::metadata(&event_file).unwrap().len();
    assert_eq!(len, (16 + 24) + 2 * (16 + 32));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn create_starts_fresh_but_keeps_foreign_files() {
    let dir = temp_dir("fresh");
    {
        let mut log = RunLogger::create(&dir).unwrap();
        log.scalar("old", 0, 1.0).unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "keep me").unwrap();
    std::fs::write(dir.join("events.out.tfevents.1.other.2"), "not ours").unwrap();
    let log = RunLogger::create(&dir).unwrap();
    let ours = log
        .event_file()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut want = vec![
        "events.out.tfevents.1.other.2".to_string(),
        "metrics.csv".to_string(),
        "notes.txt".to_string(),
        ours,
    ];
    want.sort();
    assert_eq!(names(&dir), want);
    assert!(log.history("old").is_empty());
    drop(log);
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(csv, "step,tag,value,wall_time\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_in_the_same_second_gets_a_later_name() {
    let dir = temp_dir("same-second");
    let first = RunLogger::create(&dir).unwrap();
    let second = RunLogger::resume(&dir, 0).unwrap();
    let (a, b) = (
        first.event_file().to_path_buf(),
        second.event_file().to_path_buf(),
    );
    assert_ne!(a, b);
    // TensorBoard reads a folder's files in name order: the resumed one must come last
    assert!(a.file_name() < b.file_name(), "{a:?} {b:?}");
    drop((first, second));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_keeps_history_up_to_the_checkpoint() {
    let dir = temp_dir("resume");
    {
        let mut log = RunLogger::create(&dir).unwrap();
        for s in 0..10u64 {
            log.scalar("loss", s, 1.0 / (s + 1) as f64).unwrap();
            if s % 3 == 0 {
                log.scalar("eval, \"odd\" tag", s, s as f64).unwrap();
            }
        }
    }
    let mut log = RunLogger::resume(&dir, 6).unwrap();
    let want: Vec<(u64, f64)> = (0..=6u64).map(|s| (s, 1.0 / (s + 1) as f64)).collect();
    assert_eq!(log.history("loss"), want.as_slice());
    assert_eq!(
        log.history("eval, \"odd\" tag"),
        &[(0, 0.0), (3, 3.0), (6, 6.0)]
    );
    assert_eq!(
        log.tags().collect::<Vec<_>>(),
        ["loss", "eval, \"odd\" tag"]
    );
    log.scalar("loss", 7, 0.0).unwrap();
    drop(log);
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    // header, 7 loss rows, 3 eval rows, the new row
    assert_eq!(lines.len(), 1 + 7 + 3 + 1, "{csv}");
    assert!(lines[1].starts_with("0,loss,1.0,"), "{csv}");
    assert!(
        lines[2].starts_with("0,\"eval, \"\"odd\"\" tag\",0.0,"),
        "{csv}"
    );
    assert!(
        lines[6].starts_with("3,\"eval, \"\"odd\"\" tag\",3.0,"),
        "{csv}"
    );
    assert!(lines.last().unwrap().starts_with("7,loss,0.0,"), "{csv}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn folder_that_cannot_be_created_names_the_path() {
    let dir = temp_dir("blocked");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let target = file.join("run");
    let e = RunLogger::create(&target).unwrap_err();
    assert!(
        matches!(&e, TrainError::Io { path, .. } if path == &target),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with(&format!("{}: ", target.display())),
        "{e}"
    );
    // metrics.csv that cannot be written: a folder of that name is in the way
    let run = dir.join("run");
    std::fs::create_dir_all(run.join("metrics.csv")).unwrap();
    let e = RunLogger::create(&run).unwrap_err();
    let csv = run.join("metrics.csv");
    assert!(
        e.to_string().starts_with(&format!("{}: ", csv.display())),
        "{e}"
    );
    // resuming a run that was never started
    let e = RunLogger::resume(dir.join("never"), 3).unwrap_err();
    assert!(e.to_string().contains("never/metrics.csv: "), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_write_nothing() {
    let dir = temp_dir("args");
    let mut log = RunLogger::create(&dir).unwrap();
    let e = log.scalar("", 0, 1.0).unwrap_err();
    assert_eq!(e.to_string(), "RunLogger::scalar: the tag is empty");
    let e = log.scalar("a\tb", 0, 1.0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "RunLogger::scalar: the tag \"a\\tb\" contains a control character"
    );
    let e = log.scalar("big", u64::MAX, 1.0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "RunLogger::scalar: step 18446744073709551615 does not fit TensorBoard's int64"
    );
    assert_eq!(log.tags().count(), 0);
    log.flush().unwrap();
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(csv, "step,tag,value,wall_time\n");
    drop(log);
    std::fs::remove_dir_all(&dir).unwrap();
}
