//! [`Progress`]: a progress bar for a training epoch or an evaluation loop.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
#[cfg(test)]
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the bar's message (loss, throughput, ETA) is recomputed at most.
const MESSAGE_EVERY: Duration = Duration::from_millis(100);

/// Where the summary line and [`Progress::println`] go.
#[derive(Clone, Debug)]
enum Sink {
    Stderr,
    /// Tests: collects what would be printed.
    #[cfg(test)]
    Buffer(Arc<Mutex<String>>),
}

impl Sink {
    fn line(&self, s: &str) {
        match self {
            Sink::Stderr => {
                let _ = writeln!(std::io::stderr().lock(), "{s}");
            }
            #[cfg(test)]
            Sink::Buffer(b) => {
                let mut b = b.lock().unwrap_or_else(|e| e.into_inner());
                b.push_str(s);
                b.push('\n');
            }
        }
    }
}

/// A progress bar over the steps of one epoch or evaluation loop (built on `indicatif`).
///
/// While running it shows the prefix, a bar, `step k/n`, the running-mean loss, the
/// throughput in items per second and the time left. [`finish`](Self::finish) replaces it
/// with one summary line, e.g.
///
/// ```text
/// epoch 3/30  45/45  loss 0.2130  5230 items/s  0.3s
/// ```
///
/// When stderr is not a terminal (CI logs, a redirect) no bar is drawn, but `finish`
/// still prints the summary line, so logs show one line per loop. With the environment
/// variable `FLINT_PROGRESS=0` (or `false`/`off`/`no`), or a bar made by
/// [`Progress::hidden`], no progress is printed at all (lines given to [`Progress::println`]
/// still are).
///
/// ```
/// use flint_train::Progress;
/// let batches = [(32u64, 2.0f64), (32, 1.0), (16, 0.5)];
/// let mut bar = Progress::new(batches.len() as u64, "epoch 1/3");
/// for (items, loss) in batches {
///     // ... a training step on `items` examples with this mean loss ...
///     bar.step(items, loss);
/// }
/// let summary = bar.finish();
/// assert_eq!(summary.steps, 3);
/// assert_eq!(summary.items, 80);
/// assert_eq!(summary.mean_loss, Some((2.0 + 1.0 + 0.5) / 3.0));
/// ```
#[derive(Debug)]
pub struct Progress {
    /// `None` when hidden: no progress is drawn or printed.
    bar: Option<ProgressBar>,
    sink: Sink,
    total: u64,
    steps: u64,
    items: u64,
    loss_sum: f64,
    loss_count: u64,
    start: Instant,
    last_message: Option<Instant>,
    prefix: String,
    extra: String,
    finished: bool,
}

/// What a finished [`Progress`] measured.
///
/// ```
/// use flint_train::Progress;
/// let mut bar = Progress::hidden(2, "eval");
/// bar.step(10, 0.5);
/// bar.step_items(10);
/// let s = bar.finish();
/// assert_eq!((s.steps, s.items, s.mean_loss), (2, 20, Some(0.5)));
/// assert!(s.items_per_sec > 0.0);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressSummary {
    /// Steps taken.
    pub steps: u64,
    /// Items (examples, tokens, …) processed.
    pub items: u64,
    /// The mean of the losses given to [`Progress::step`] (`None` if there were none).
    pub mean_loss: Option<f64>,
    /// Time from creation to [`Progress::finish`].
    pub elapsed: Duration,
    /// `items / elapsed`.
    pub items_per_sec: f64,
}

/// `FLINT_PROGRESS=0|false|off|no` turns progress output off.
fn disabled_by_env() -> bool {
    disables(std::env::var("FLINT_PROGRESS").ok().as_deref())
}

/// Whether a value of `FLINT_PROGRESS` turns progress output off.
fn disables(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "off" | "no"
        )
    })
}

impl Progress {
    /// A bar over `total_steps` steps, labelled `prefix` (e.g. `"epoch 3/30"`), drawn on
    /// stderr when it is a terminal. Hidden when `FLINT_PROGRESS=0`.
    ///
    /// ```
    /// let mut bar = flint_train::Progress::new(100, "epoch 1/5");
    /// bar.step(64, 2.3);
    /// assert_eq!(bar.position(), 1);
    /// # bar.finish();
    /// ```
    pub fn new(total_steps: u64, prefix: impl Into<String>) -> Self {
        if disabled_by_env() {
            return Self::hidden(total_steps, prefix);
        }
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total_steps), target);
        bar.set_style(bar_style());
        Self::build(total_steps, prefix.into(), Some(bar), Sink::Stderr)
    }

    /// A bar that draws and prints no progress but still measures (see
    /// [`finish`](Self::finish)'s summary); for quiet runs and tests.
    ///
    /// ```
    /// let mut bar = flint_train::Progress::hidden(10, "quiet");
    /// bar.step(1, 0.1);
    /// assert!(bar.is_hidden());
    /// assert_eq!(bar.finish().steps, 1);
    /// ```
    pub fn hidden(total_steps: u64, prefix: impl Into<String>) -> Self {
        Self::build(total_steps, prefix.into(), None, Sink::Stderr)
    }

    fn build(total: u64, prefix: String, bar: Option<ProgressBar>, sink: Sink) -> Self {
        if let Some(b) = &bar {
            b.set_prefix(prefix.clone());
        }
        let mut p = Progress {
            bar,
            sink,
            total,
            steps: 0,
            items: 0,
            loss_sum: 0.0,
            loss_count: 0,
            start: Instant::now(),
            last_message: None,
            prefix,
            extra: String::new(),
            finished: false,
        };
        p.refresh_message(true);
        p
    }

    #[cfg(test)]
    fn with_sink(total: u64, prefix: &str, sink: Sink) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        Self::build(total, prefix.into(), Some(bar), sink)
    }

    /// Whether this bar prints no progress ([`Progress::hidden`] or `FLINT_PROGRESS=0`).
    ///
    /// ```
    /// assert!(flint_train::Progress::hidden(1, "x").is_hidden());
    /// ```
    pub fn is_hidden(&self) -> bool {
        self.bar.is_none()
    }

    /// Records one step over `items` items with mean loss `loss` (the loss feeds the
    /// running mean shown; a NaN loss makes it NaN, which is worth seeing).
    ///
    /// ```
    /// let mut bar = flint_train::Progress::hidden(2, "epoch 1/1");
    /// bar.step(32, 1.0);
    /// bar.step(32, 0.0);
    /// assert_eq!(bar.mean_loss(), Some(0.5));
    /// ```
    pub fn step(&mut self, items: u64, loss: f64) {
        self.loss_sum += loss;
        self.loss_count += 1;
        self.advance(items);
    }

    /// Records one step over `items` items without a loss (e.g. an evaluation loop
    /// that only counts correct answers).
    ///
    /// ```
    /// let mut bar = flint_train::Progress::hidden(3, "eval");
    /// bar.step_items(100);
    /// assert_eq!((bar.position(), bar.items(), bar.mean_loss()), (1, 100, None));
    /// ```
    pub fn step_items(&mut self, items: u64) {
        self.advance(items);
    }

    fn advance(&mut self, items: u64) {
        self.steps += 1;
        self.items += items;
        if let Some(b) = &self.bar {
            b.inc(1);
        }
        self.refresh_message(false);
    }

    /// Steps taken so far.
    ///
    /// ```
    /// let mut bar = flint_train::Progress::hidden(3, "x");
    /// bar.step(1, 0.0);
    /// assert_eq!(bar.position(), 1);
    /// ```
    pub fn position(&self) -> u64 {
        self.steps
    }

    /// Items processed so far.
    ///
    /// ```
    /// let mut bar = flint_train::Progress::hidden(3, "x");
    /// bar.step(7, 0.0);
    /// assert_eq!(bar.items(), 7);
    /// ```
    pub fn items(&self) -> u64 {
        self.items
    }

    /// The mean of the losses given to [`step`](Self::step) so far.
    ///
    /// ```
    /// let mut bar = flint_train::Progress::hidden(3, "x");
    /// assert_eq!(bar.mean_loss(), None);
    /// bar.step(1, 3.0);
    /// assert_eq!(bar.mean_loss(), Some(3.0));
    /// ```
    pub fn mean_loss(&self) -> Option<f64> {
        (self.loss_count > 0).then(|| self.loss_sum / self.loss_count as f64)
    }

    /// Replaces the label before the bar.
    ///
    /// ```
    /// let mut bar = flint_train::Progress::hidden(3, "epoch 1/3");
    /// bar.set_prefix("epoch 2/3");
    /// assert!(bar.summary_line().starts_with("epoch 2/3  0/3"));
    /// ```
    pub fn set_prefix(&mut self, prefix: impl Into<String>) {
        self.prefix = prefix.into();
        if let Some(b) = &self.bar {
            b.set_prefix(self.prefix.clone());
        }
    }

    /// Extra text shown after the loss, throughput and ETA (e.g. the learning rate), and
    /// at the end of the summary line. An empty string removes it.
    ///
    /// ```
    /// let mut bar = flint_train::Progress::hidden(3, "epoch 1/3");
    /// bar.set_message("lr 3.0e-4");
    /// assert!(bar.summary_line().ends_with("  lr 3.0e-4"));
    /// ```
    pub fn set_message(&mut self, message: impl Into<String>) {
        self.extra = message.into();
        self.refresh_message(true);
    }

    /// Prints a line to stderr above the bar without garbling it. The line is the
    /// program's own output, not progress: it is printed also when no bar is drawn or
    /// the bar is hidden.
    ///
    /// ```
    /// let bar = flint_train::Progress::new(3, "epoch 1/3");
    /// bar.println("sample: hello world");
    /// # bar.finish();
    /// ```
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(line.as_ref()),
            _ => self.sink.line(line.as_ref()),
        }
    }

    fn refresh_message(&mut self, force: bool) {
        let Some(bar) = &self.bar else { return };
        let now = Instant::now();
        if !force
            && self.steps < self.total
            && self
                .last_message
                .is_some_and(|t| now.duration_since(t) < MESSAGE_EVERY)
        {
            return;
        }
        self.last_message = Some(now);
        let elapsed = now.duration_since(self.start);
        let mut msg = String::with_capacity(64);
        if let Some(l) = self.mean_loss() {
            msg.push_str(&format!("loss {}  ", format_loss(l)));
        }
        if self.steps > 0 {
            msg.push_str(&format!(
                "{} items/s  ",
                format_rate(self.items as f64 / elapsed.as_secs_f64())
            ));
            if self.total > self.steps {
                let left = elapsed.mul_f64((self.total - self.steps) as f64 / self.steps as f64);
                msg.push_str(&format!("ETA {}", format_duration(left)));
            }
        }
        if !self.extra.is_empty() {
            if !msg.is_empty() && !msg.ends_with("  ") {
                msg.push_str("  ");
            }
            msg.push_str(&self.extra);
        }
        bar.set_message(Cow::Owned(msg.trim_end().to_string()));
    }

    /// The line [`finish`](Self::finish) prints, as of now: prefix, `steps/total`, mean
    /// loss (if any), items per second, elapsed time and the message (if any).
    ///
    /// ```
    /// let mut bar = flint_train::Progress::hidden(45, "epoch 3/30");
    /// bar.step(32, 0.25);
    /// let line = bar.summary_line();
    /// assert!(line.starts_with("epoch 3/30  1/45  loss 0.2500  "), "{line}");
    /// assert!(line.contains(" items/s  "), "{line}");
    /// ```
    pub fn summary_line(&self) -> String {
        self.format_summary(&self.summary())
    }

    fn summary(&self) -> ProgressSummary {
        let elapsed = self.start.elapsed();
        let secs = elapsed.as_secs_f64();
        ProgressSummary {
            steps: self.steps,
            items: self.items,
            mean_loss: self.mean_loss(),
            elapsed,
            items_per_sec: if secs > 0.0 {
                self.items as f64 / secs
            } else {
                0.0
            },
        }
    }

    fn format_summary(&self, s: &ProgressSummary) -> String {
        let mut line = format!("{}  {}/{}", self.prefix, s.steps, self.total);
        if let Some(l) = s.mean_loss {
            line.push_str(&format!("  loss {}", format_loss(l)));
        }
        line.push_str(&format!(
            "  {} items/s  {}",
            format_rate(s.items_per_sec),
            format_duration(s.elapsed)
        ));
        if !self.extra.is_empty() {
            line.push_str("  ");
            line.push_str(&self.extra);
        }
        line
    }

    /// Ends the loop: clears the bar and prints the summary line to stderr (also when
    /// stderr is not a terminal; nothing when hidden). Returns what was measured.
    ///
    /// ```
    /// let mut bar = flint_train::Progress::hidden(1, "eval");
    /// bar.step(500, 0.1);
    /// let s = bar.finish();
    /// assert_eq!(s.items, 500);
    /// ```
    pub fn finish(mut self) -> ProgressSummary {
        self.finished = true;
        let summary = self.summary();
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            self.sink.line(&self.format_summary(&summary));
        }
        summary
    }
}

impl Drop for Progress {
    /// A bar dropped without [`Progress::finish`] (an error or `break` left the loop)
    /// is cleared without a summary line.
    fn drop(&mut self) {
        if !self.finished
            && let Some(bar) = self.bar.take()
        {
            bar.finish_and_clear();
        }
    }
}

fn bar_style() -> ProgressStyle {
    // the template is a constant known to parse; fall back to the default style anyway
    ProgressStyle::with_template("{prefix}  [{bar:28}] {pos}/{len}  {wide_msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// A loss with 4 significant decimals, exponent notation when tiny or huge.
fn format_loss(l: f64) -> String {
    let a = l.abs();
    if l.is_finite() && a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{l:.3e}")
    } else {
        format!("{l:.4}")
    }
}

/// Items per second: whole numbers from 100 up, 3 significant digits below.
fn format_rate(r: f64) -> String {
    if !r.is_finite() {
        "-".into()
    } else if r >= 100.0 {
        format!("{r:.0}")
    } else if r >= 10.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.2}")
    }
}

/// `0.3s`, `12.4s`, `2m05s`, `1h02m`.
fn format_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        let s = s.round() as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        let m = (s / 60.0).round() as u64;
        format!("{}h{:02}m", m / 60, m % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(format_duration(Duration::from_millis(300)), "0.3s");
        assert_eq!(format_duration(Duration::from_millis(12_440)), "12.4s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(format_duration(Duration::from_secs(3720)), "1h02m");
    }

    #[test]
    fn rates_and_losses() {
        assert_eq!(format_rate(5230.4), "5230");
        assert_eq!(format_rate(42.25), "42.2");
        assert_eq!(format_rate(1.5), "1.50");
        assert_eq!(format_rate(f64::INFINITY), "-");
        assert_eq!(format_loss(0.213), "0.2130");
        assert_eq!(format_loss(0.0), "0.0000");
        assert_eq!(format_loss(1.5e-5), "1.500e-5");
        assert_eq!(format_loss(f64::NAN), "NaN");
    }

    #[test]
    fn running_mean_and_counts() {
        let mut p = Progress::hidden(4, "epoch 1/1");
        p.step(32, 2.0);
        p.step(32, 1.0);
        p.step(16, 0.0);
        assert_eq!(p.position(), 3);
        assert_eq!(p.items(), 80);
        assert_eq!(p.mean_loss(), Some(1.0));
        p.step(8, f64::NAN);
        assert!(p.mean_loss().unwrap().is_nan());
    }

    #[test]
    fn finish_prints_one_summary_line_without_a_terminal() {
        let out = Arc::new(Mutex::new(String::new()));
        let mut p = Progress::with_sink(3, "epoch 3/30", Sink::Buffer(out.clone()));
        p.step(10, 0.5);
        p.step(10, 0.25);
        p.step(10, 0.0);
        p.set_message("lr 1.0e-3");
        p.println("a note");
        let s = p.finish();
        assert_eq!(s.steps, 3);
        assert_eq!(s.items, 30);
        assert_eq!(s.mean_loss, Some(0.25));
        let text = out.lock().unwrap().clone();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0], "a note");
        let l = lines[1];
        assert!(l.starts_with("epoch 3/30  3/3  loss 0.2500  "), "{l}");
        assert!(l.ends_with("s  lr 1.0e-3"), "{l}");
        // the rate printed is items / elapsed
        let rate: f64 = l
            .split("  ")
            .nth(3)
            .unwrap()
            .trim_end_matches(" items/s")
            .parse()
            .unwrap();
        assert!(rate > 0.0, "{l}");
    }

    #[test]
    fn hidden_prints_no_progress_and_drop_without_finish_is_silent() {
        let out = Arc::new(Mutex::new(String::new()));
        {
            let mut p = Progress::with_sink(3, "e", Sink::Buffer(out.clone()));
            p.step(1, 1.0);
            // dropped without finish
        }
        assert_eq!(*out.lock().unwrap(), "");
        let mut p = Progress::hidden(1, "e");
        p.sink = Sink::Buffer(out.clone());
        p.step(1, 1.0);
        let s = p.finish();
        assert_eq!(s.steps, 1);
        assert_eq!(*out.lock().unwrap(), "");
        // the program's own lines still get out
        let mut p = Progress::hidden(1, "e");
        p.sink = Sink::Buffer(out.clone());
        p.println("sample: abc");
        p.finish();
        assert_eq!(*out.lock().unwrap(), "sample: abc\n");
    }

    #[test]
    fn flint_progress_values() {
        for off in ["0", "false", "OFF", " no "] {
            assert!(disables(Some(off)), "{off}");
        }
        for on in ["1", "true", "", "yes"] {
            assert!(!disables(Some(on)), "{on}");
        }
        assert!(!disables(None));
    }

    #[test]
    fn summary_without_loss() {
        let mut p = Progress::hidden(2, "eval");
        p.step_items(5);
        let l = p.summary_line();
        assert!(l.starts_with("eval  1/2  "), "{l}");
        assert!(!l.contains("loss"), "{l}");
    }
}
