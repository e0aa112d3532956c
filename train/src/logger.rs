//! [`RunLogger`]: one folder per training run with a CSV of every scalar, a TensorBoard
//! event file, an in-memory history, and curves as PNG.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Result, TrainError};
use crate::plot::{plot_panels, PlotOptions, Series};
use crate::tensorboard::EventWriter;

/// The first line of every `metrics.csv`.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("flint-train-doc-header-{}", std::process::id()));
/// let log = flint_train::RunLogger::create(&dir)?;
/// let csv = std::fs::read_to_string(log.csv_file()).unwrap();
/// assert_eq!(csv.lines().next(), Some(flint_train::CSV_HEADER));
/// # drop(log);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), flint_train::TrainError>(())
/// ```
pub const CSV_HEADER: &str = "step,tag,value,wall_time";

/// Buffered writes reach the files at least this often while scalars are being logged,
/// so a TensorBoard watching the run sees it progress.
const AUTO_FLUSH: Duration = Duration::from_secs(2);

/// Logs the scalars of one training run into a folder:
///
/// - `metrics.csv`, a row `step,tag,value,wall_time` per scalar (values written so that
///   they parse back to the same `f64`, `wall_time` in seconds since the Unix epoch);
/// - a TensorBoard event file `events.out.tfevents.<unix secs>.<hostname>.<pid>.flint`
///   (`tensorboard --logdir runs` shows every run below `runs/`);
/// - an in-memory history per tag, for [`history`](Self::history) and
///   [`plot`](Self::plot).
///
/// Files are written through buffers, flushed by [`flush`](Self::flush), at least every
/// two seconds while logging, and on drop.
///
/// ```
/// use flint_train::RunLogger;
/// let dir = std::env::temp_dir().join(format!("flint-train-doc-run-{}", std::process::id()));
/// let mut log = RunLogger::create(&dir)?;
/// for step in 0..10u64 {
///     log.scalar("train/loss", step, 1.0 / (step + 1) as f64)?;
/// }
/// log.scalar("test/loss", 9, 0.12)?;
/// log.scalar("test/accuracy", 9, 0.97)?;
/// log.flush()?;
/// assert_eq!(log.history("train/loss").len(), 10);
/// assert_eq!(log.last("test/accuracy"), Some((9, 0.97)));
/// log.plot(dir.join("curves.png"), &[&["train/loss", "test/loss"], &["test/accuracy"]])?;
/// let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
/// assert!(csv.starts_with("step,tag,value,wall_time\n0,train/loss,1.0,"));
/// # drop(log);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), flint_train::TrainError>(())
/// ```
#[derive(Debug)]
pub struct RunLogger {
    dir: PathBuf,
    csv_path: PathBuf,
    csv: BufWriter<File>,
    events: EventWriter,
    /// tag → index into `history`, which keeps tags in the order first logged
    index: HashMap<String, usize>,
    history: Vec<(String, Vec<(u64, f64)>)>,
    last_flush: Instant,
    row: String,
}

impl RunLogger {
    /// Starts a fresh run in `dir`: creates the folder (and its parents), writes
    /// `metrics.csv` with its header (replacing one left by an earlier run) and a new
    /// TensorBoard event file. Event files that an earlier Flint run wrote there (names
    /// `events.out.tfevents.*.flint`) are removed, so TensorBoard does not mix two runs;
    /// any other file is left alone. To continue a run after a checkpoint, use
    /// [`resume`](Self::resume).
    ///
    /// ```
    /// use flint_train::RunLogger;
    /// let dir = std::env::temp_dir().join(format!("flint-train-doc-create-{}", std::process::id()));
    /// let log = RunLogger::create(dir.join("digits"))?;
    /// assert!(log.dir().join("metrics.csv").is_file());
    /// assert!(log.event_file().file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents."));
    /// # drop(log);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), flint_train::TrainError>(())
    /// ```
    pub fn create(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        for old in flint_event_files(&dir)? {
            std::fs::remove_file(&old).map_err(|e| TrainError::io(&old, e))?;
        }
        let csv_path = dir.join("metrics.csv");
        let file = File::create(&csv_path).map_err(|e| TrainError::io(&csv_path, e))?;
        let mut csv = BufWriter::new(file);
        writeln!(csv, "{CSV_HEADER}")
            .and_then(|()| csv.flush())
            .map_err(|e| TrainError::io(&csv_path, e))?;
        Self::finish_open(dir, csv_path, csv, Vec::new())
    }

    /// Continues the run in `dir` after a checkpoint taken at `step`: reads its
    /// `metrics.csv` back into the history, drops the rows logged after `step` (the
    /// resumed run logs them again), appends from there, and starts a new event file
    /// beside the old ones that opens with a `SessionLog START` at `step + 1`.
    /// TensorBoard's `EventAccumulator` reads a folder's event files in name order and,
    /// at that event, discards the points past `step` that the old files hold, so the
    /// run reads as if it had never stopped (checked in `tests/tensorboard.rs`).
    ///
    /// ```
    /// use flint_train::RunLogger;
    /// let dir = std::env::temp_dir().join(format!("flint-train-doc-resume-{}", std::process::id()));
    /// {
    ///     let mut log = RunLogger::create(&dir)?;
    ///     for step in 0..5 {
    ///         log.scalar("loss", step, step as f64)?;
    ///     }
    /// } // dropped: flushed, as after a crash past the checkpoint at step 2
    /// let mut log = RunLogger::resume(&dir, 2)?;
    /// assert_eq!(log.history("loss"), &[(0, 0.0), (1, 1.0), (2, 2.0)]);
    /// log.scalar("loss", 3, 30.0)?;
    /// assert_eq!(log.history("loss").len(), 4);
    /// # drop(log);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), flint_train::TrainError>(())
    /// ```
    pub fn resume(dir: impl AsRef<Path>, step: u64) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let csv_path = dir.join("metrics.csv");
        let rows = read_metrics_csv(&csv_path)?;
        let kept: Vec<(u64, String, f64, String)> =
            rows.into_iter().filter(|r| r.0 <= step).collect();
        // rewrite the kept rows under a temporary name, then rename over the old file
        let tmp = temp_sibling(&csv_path);
        let written = (|| -> std::io::Result<()> {
            let mut out = BufWriter::new(File::create(&tmp)?);
            writeln!(out, "{CSV_HEADER}")?;
            for (s, tag, value, wall) in &kept {
                writeln!(out, "{s},{},{value:?},{wall}", csv_field(tag))?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, &csv_path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(TrainError::io(&csv_path, e));
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&csv_path)
            .map_err(|e| TrainError::io(&csv_path, e))?;
        let history = kept.into_iter().map(|(s, tag, v, _)| (s, tag, v)).collect();
        let mut log = Self::finish_open(dir, csv_path, BufWriter::new(file), history)?;
        // TensorBoard drops what the old event files hold past `step`
        if let Some(next) = step.checked_add(1).filter(|&n| i64::try_from(n).is_ok()) {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            log.events.add_session_start(next, wall)?;
        }
        Ok(log)
    }

    fn finish_open(
        dir: PathBuf,
        csv_path: PathBuf,
        csv: BufWriter<File>,
        history: Vec<(u64, String, f64)>,
    ) -> Result<Self> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let host = hostname();
        let pid = std::process::id();
        // one second later if a file of that name exists (a second logger within the
        // same second): names keep sorting in the order the files were started
        let mut secs = now.as_secs();
        let event_path = loop {
            let p = dir.join(format!("events.out.tfevents.{secs}.{host}.{pid}.flint"));
            if !p.exists() {
                break p;
            }
            secs += 1;
        };
        let events = EventWriter::create(&event_path, now.as_secs_f64())?;
        let mut log = RunLogger {
            dir,
            csv_path,
            csv,
            events,
            index: HashMap::new(),
            history: Vec::new(),
            last_flush: Instant::now(),
            row: String::with_capacity(96),
        };
        for (step, tag, value) in history {
            log.remember(&tag, step, value);
        }
        Ok(log)
    }

    /// The run's folder.
    ///
    /// ```
    /// # use flint_train::RunLogger;
    /// # let dir = std::env::temp_dir().join(format!("flint-train-doc-dir-{}", std::process::id()));
    /// let log = RunLogger::create(&dir)?;
    /// assert_eq!(log.dir(), dir.as_path());
    /// # drop(log);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), flint_train::TrainError>(())
    /// ```
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The TensorBoard event file this logger writes.
    ///
    /// ```
    /// # use flint_train::RunLogger;
    /// # let dir = std::env::temp_dir().join(format!("flint-train-doc-ev-{}", std::process::id()));
    /// let log = RunLogger::create(&dir)?;
    /// let name = log.event_file().file_name().unwrap().to_string_lossy().into_owned();
    /// assert!(name.ends_with(&format!(".{}.flint", std::process::id())));
    /// # drop(log);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), flint_train::TrainError>(())
    /// ```
    pub fn event_file(&self) -> &Path {
        self.events.path()
    }

    /// The run's CSV file, `dir/metrics.csv`.
    ///
    /// ```
    /// # use flint_train::RunLogger;
    /// # let dir = std::env::temp_dir().join(format!("flint-train-doc-csv-{}", std::process::id()));
    /// let log = RunLogger::create(&dir)?;
    /// assert_eq!(log.csv_file(), dir.join("metrics.csv"));
    /// # drop(log);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), flint_train::TrainError>(())
    /// ```
    pub fn csv_file(&self) -> &Path {
        &self.csv_path
    }

    /// Logs `value` under `tag` at `step`: a CSV row, a TensorBoard scalar (stored as
    /// `f32` there) and a history entry. Tags are free-form; a `/` groups them in
    /// TensorBoard (`train/loss`, `test/loss`). An empty tag, a tag with control
    /// characters or a step beyond `i64::MAX` (TensorBoard's step type) is an error and
    /// writes nothing. Non-finite values are logged as they are (TensorBoard shows NaN).
    ///
    /// ```
    /// # use flint_train::RunLogger;
    /// # let dir = std::env::temp_dir().join(format!("flint-train-doc-scalar-{}", std::process::id()));
    /// let mut log = RunLogger::create(&dir)?;
    /// log.scalar("train/loss", 0, 2.31)?;
    /// log.scalar("train/lr", 0, 1e-3)?;
    /// assert!(log.scalar("", 1, 0.0).is_err());
    /// assert!(log.scalar("a\nb", 1, 0.0).is_err());
    /// assert_eq!(log.tags().collect::<Vec<_>>(), ["train/loss", "train/lr"]);
    /// # drop(log);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), flint_train::TrainError>(())
    /// ```
    pub fn scalar(&mut self, tag: &str, step: u64, value: f64) -> Result<()> {
        const OP: &str = "RunLogger::scalar";
        if tag.is_empty() {
            return Err(TrainError::invalid(OP, "the tag is empty"));
        }
        if tag.chars().any(char::is_control) {
            return Err(TrainError::invalid(
                OP,
                format!("the tag {tag:?} contains a control character"),
            ));
        }
        if i64::try_from(step).is_err() {
            return Err(TrainError::invalid(
                OP,
                format!("step {step} does not fit TensorBoard's int64"),
            ));
        }
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.row.clear();
        // `{:?}` of an f64 is the shortest text that parses back to the same value
        // (exponent notation for very large or small numbers, `NaN`, `inf`)
        use std::fmt::Write as _;
        let _ = writeln!(self.row, "{step},{},{value:?},{wall:.6}", csv_field(tag));
        self.csv
            .write_all(self.row.as_bytes())
            .map_err(|e| TrainError::io(&self.csv_path, e))?;
        self.events.add_scalar(tag, step, value, wall)?;
        self.remember(tag, step, value);
        if self.last_flush.elapsed() >= AUTO_FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    fn remember(&mut self, tag: &str, step: u64, value: f64) {
        let i = match self.index.get(tag) {
            Some(&i) => i,
            None => {
                self.index.insert(tag.to_string(), self.history.len());
                self.history.push((tag.to_string(), Vec::new()));
                self.history.len() - 1
            }
        };
        self.history[i].1.push((step, value));
    }

    /// Writes everything logged so far to the CSV and event files.
    ///
    /// ```
    /// # use flint_train::RunLogger;
    /// # let dir = std::env::temp_dir().join(format!("flint-train-doc-flush-{}", std::process::id()));
    /// let mut log = RunLogger::create(&dir)?;
    /// log.scalar("loss", 1, 0.5)?;
    /// log.flush()?;
    /// let csv = std::fs::read_to_string(log.csv_file()).unwrap();
    /// assert_eq!(csv.lines().count(), 2);
    /// # drop(log);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), flint_train::TrainError>(())
    /// ```
    pub fn flush(&mut self) -> Result<()> {
        self.csv
            .flush()
            .map_err(|e| TrainError::io(&self.csv_path, e))?;
        self.events.flush()?;
        self.last_flush = Instant::now();
        Ok(())
    }

    /// The `(step, value)` pairs logged under `tag`, in the order logged (empty for a
    /// tag never logged).
    ///
    /// ```
    /// # use flint_train::RunLogger;
    /// # let dir = std::env::temp_dir().join(format!("flint-train-doc-hist-{}", std::process::id()));
    /// let mut log = RunLogger::create(&dir)?;
    /// log.scalar("loss", 0, 1.5)?;
    /// log.scalar("loss", 10, 0.5)?;
    /// assert_eq!(log.history("loss"), &[(0, 1.5), (10, 0.5)]);
    /// assert!(log.history("nope").is_empty());
    /// # drop(log);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), flint_train::TrainError>(())
    /// ```
    pub fn history(&self, tag: &str) -> &[(u64, f64)] {
        match self.index.get(tag) {
            Some(&i) => &self.history[i].1,
            None => &[],
        }
    }

    /// The last `(step, value)` logged under `tag`.
    ///
    /// ```
    /// # use flint_train::RunLogger;
    /// # let dir = std::env::temp_dir().join(format!("flint-train-doc-last-{}", std::process::id()));
    /// let mut log = RunLogger::create(&dir)?;
    /// assert_eq!(log.last("acc"), None);
    /// log.scalar("acc", 3, 0.9)?;
    /// assert_eq!(log.last("acc"), Some((3, 0.9)));
    /// # drop(log);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), flint_train::TrainError>(())
    /// ```
    pub fn last(&self, tag: &str) -> Option<(u64, f64)> {
        self.history(tag).last().copied()
    }

    /// The tags logged so far, in the order first logged.
    ///
    /// ```
    /// # use flint_train::RunLogger;
    /// # let dir = std::env::temp_dir().join(format!("flint-train-doc-tags-{}", std::process::id()));
    /// let mut log = RunLogger::create(&dir)?;
    /// log.scalar("b", 0, 1.0)?;
    /// log.scalar("a", 0, 1.0)?;
    /// log.scalar("b", 1, 1.0)?;
    /// assert_eq!(log.tags().collect::<Vec<_>>(), ["b", "a"]);
    /// # drop(log);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), flint_train::TrainError>(())
    /// ```
    pub fn tags(&self) -> impl Iterator<Item = &str> + '_ {
        self.history.iter().map(|(t, _)| t.as_str())
    }

    /// Draws the history as a PNG at `path`: one panel per group (stacked), one line per
    /// tag with a legend, steps on the x axis. 900 pixels wide, 320 per panel; see
    /// [`plot_with`](Self::plot_with) for other sizes. A tag never logged is an error
    /// naming the tags that were.
    ///
    /// ```
    /// # use flint_train::RunLogger;
    /// # let dir = std::env::temp_dir().join(format!("flint-train-doc-plot-{}", std::process::id()));
    /// let mut log = RunLogger::create(&dir)?;
    /// for s in 0..20u64 {
    ///     log.scalar("train/loss", s, (-(s as f64) / 5.0).exp())?;
    /// }
    /// log.plot(dir.join("curves.png"), &[&["train/loss"]])?;
    /// assert!(dir.join("curves.png").is_file());
    /// let err = log.plot(dir.join("x.png"), &[&["test/loss"]]).unwrap_err();
    /// assert_eq!(err.to_string(), "RunLogger::plot: nothing was logged under \"test/loss\" (tags: \"train/loss\")");
    /// # drop(log);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), flint_train::TrainError>(())
    /// ```
    pub fn plot(&self, path: impl AsRef<Path>, groups: &[&[&str]]) -> Result<()> {
        self.plot_with(path, groups, &PlotOptions::default())
    }

    /// [`plot`](Self::plot) with a size and title.
    ///
    /// ```
    /// use flint_train::{RunLogger, plot::PlotOptions};
    /// # let dir = std::env::temp_dir().join(format!("flint-train-doc-plotwith-{}", std::process::id()));
    /// let mut log = RunLogger::create(&dir)?;
    /// log.scalar("loss", 0, 1.0)?;
    /// log.scalar("loss", 1, 0.4)?;
    /// let opts = PlotOptions { width: 600, panel_height: 250, title: Some("digits".into()) };
    /// log.plot_with(dir.join("loss.png"), &[&["loss"]], &opts)?;
    /// # drop(log);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), flint_train::TrainError>(())
    /// ```
    pub fn plot_with(
        &self,
        path: impl AsRef<Path>,
        groups: &[&[&str]],
        opts: &PlotOptions,
    ) -> Result<()> {
        let mut panels = Vec::with_capacity(groups.len());
        for group in groups {
            let mut panel = Vec::with_capacity(group.len());
            for &tag in group.iter() {
                let points = self.history(tag);
                if points.is_empty() {
                    let known: Vec<String> = self.tags().map(|t| format!("{t:?}")).collect();
                    return Err(TrainError::invalid(
                        "RunLogger::plot",
                        format!(
                            "nothing was logged under {tag:?} (tags: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
                panel.push(Series { label: tag, points });
            }
            panels.push(panel);
        }
        plot_panels(path, &panels, opts)
    }
}

impl Drop for RunLogger {
    fn drop(&mut self) {
        // errors here have nowhere to go; `flush` reports them
        let _ = self.csv.flush();
        // the event writer flushes itself when dropped
    }
}

/// `path` with `.tmp` appended to its file name (same folder, so a rename is atomic).
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(OsString::from)
        .unwrap_or_else(|| OsString::from("file"));
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// The event files that a Flint logger wrote in `dir`.
fn flint_event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))? {
        let entry = entry.map_err(|e| TrainError::io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("events.out.tfevents.") && name.ends_with(".flint") {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// This machine's name, restricted to characters safe in a file name.
fn hostname() -> String {
    let from_file = |p: &str| std::fs::read_to_string(p).ok();
    let raw = from_file("/proc/sys/kernel/hostname")
        .or_else(|| from_file("/etc/hostname"))
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

/// A CSV field: quoted (with `"` doubled) when it contains a comma, a quote or
/// surrounding spaces.
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

/// Splits one CSV line into fields (RFC 4180 quoting, no line breaks inside fields).
fn split_csv_line(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted field is not closed".into()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("unexpected {c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("a quote inside an unquoted field".into()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

/// The rows `(step, tag, value, wall_time as written)` of a run's `metrics.csv`.
fn read_metrics_csv(path: &Path) -> Result<Vec<(u64, String, f64, String)>> {
    let file = File::open(path).map_err(|e| TrainError::io(path, e))?;
    let parse_err = |line: usize, msg: String| TrainError::Parse {
        path: path.to_path_buf(),
        line,
        msg,
    };
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| TrainError::io(path, e))?;
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if n == 1 {
            if line != CSV_HEADER {
                return Err(parse_err(
                    n,
                    format!("expected the header {CSV_HEADER:?}, found {line:?}"),
                ));
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let fields = split_csv_line(line).map_err(|m| parse_err(n, m))?;
        let [step, tag, value, wall] = <[String; 4]>::try_from(fields)
            .map_err(|f| parse_err(n, format!("expected 4 fields, found {}", f.len())))?;
        let step = step
            .parse::<u64>()
            .map_err(|_| parse_err(n, format!("the step {step:?} is not a whole number")))?;
        let value = value
            .parse::<f64>()
            .map_err(|_| parse_err(n, format!("the value {value:?} is not a number")))?;
        if wall.parse::<f64>().is_err() {
            return Err(parse_err(
                n,
                format!("the wall_time {wall:?} is not a number"),
            ));
        }
        rows.push((step, tag, value, wall));
    }
    if rows.is_empty() && std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(parse_err(1, "the file is empty (no header)".into()));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("flint-train-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn csv_quoting_round_trips() {
        for tag in ["plain/tag", "a,b", "say \"hi\"", " padded ", "ünïcødé"] {
            let line = format!("3,{},0.5,1.0", csv_field(tag));
            let fields = split_csv_line(&line).unwrap();
            assert_eq!(fields, ["3", tag, "0.5", "1.0"], "{line}");
        }
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("q\""), "\"q\"\"\"");
        assert!(split_csv_line("1,\"open,2").is_err());
        assert!(split_csv_line("1,a\"b,2").is_err());
    }

    #[test]
    fn csv_rows_parse_back_exactly() {
        let dir = temp_dir("csv");
        let mut log = RunLogger::create(&dir).unwrap();
        let values = [0.1, 1e-300, 1.0 / 3.0, -2.5e12, f64::INFINITY];
        for (i, v) in values.iter().enumerate() {
            log.scalar("x,y", i as u64, *v).unwrap();
        }
        log.scalar("nan", 7, f64::NAN).unwrap();
        log.flush().unwrap();
        let rows = read_metrics_csv(&dir.join("metrics.csv")).unwrap();
        assert_eq!(rows.len(), 6);
        for (i, v) in values.iter().enumerate() {
            assert_eq!(rows[i].0, i as u64);
            assert_eq!(rows[i].1, "x,y");
            assert_eq!(rows[i].2.to_bits(), v.to_bits());
        }
        assert!(rows[5].2.is_nan());
        let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert!(lines[1].starts_with("0,\"x,y\",0.1,"), "{}", lines[1]);
        assert!(lines[2].starts_with("1,\"x,y\",1e-300,"), "{}", lines[2]);
        assert!(lines[6].starts_with("7,nan,NaN,"), "{}", lines[6]);
        drop(log);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_csv_names_file_and_line() {
        let dir = temp_dir("badcsv");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("metrics.csv");
        std::fs::write(&p, "step,tag,value,wall_time\n1,a,0.5,1.0\n2,a,zero,1.0\n").unwrap();
        let e = RunLogger::resume(&dir, 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}:3: the value \"zero\" is not a number", p.display())
        );
        std::fs::write(&p, "step,tag,value,wall_time\n-1,a,0.5,1.0\n").unwrap();
        let e = RunLogger::resume(&dir, 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}:2: the step \"-1\" is not a whole number", p.display())
        );
        std::fs::write(&p, "step,tag,value,wall_time\n1,a,0.5\n").unwrap();
        let e = RunLogger::resume(&dir, 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}:2: expected 4 fields, found 3", p.display())
        );
        std::fs::write(&p, "time,value\n").unwrap();
        let e = RunLogger::resume(&dir, 10).unwrap_err();
        assert!(e
            .to_string()
            .starts_with(&format!("{}:1: expected the header", p.display())));
        std::fs::write(&p, "").unwrap();
        let e = RunLogger::resume(&dir, 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}:1: the file is empty (no header)", p.display())
        );
        std::fs::remove_file(&p).unwrap();
        let e = RunLogger::resume(&dir, 10).unwrap_err();
        assert!(matches!(e, TrainError::Io { .. }));
        assert!(e.to_string().starts_with(&p.display().to_string()), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hostname_is_file_name_safe() {
        let h = hostname();
        assert!(!h.is_empty());
        assert!(
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "{h}"
        );
    }

    #[test]
    fn temp_sibling_stays_in_the_folder() {
        let t = temp_sibling(Path::new("runs/a/metrics.csv"));
        assert_eq!(t.parent(), Some(Path::new("runs/a")));
        assert_eq!(
            t.file_name().unwrap().to_string_lossy(),
            format!("metrics.csv.{}.tmp", std::process::id())
        );
    }
}
