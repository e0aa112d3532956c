//! The training loop of the digits classifiers (`digits`, `digits_resnet`): epochs of
//! shuffled batches with a progress bar, held-out loss and accuracy after each epoch,
//! metrics in CSV and TensorBoard files, a checkpoint per epoch that `--resume` continues
//! from, and the curves as a PNG at the end.

use super::{correct, parse_device, progress, Args};
use flint::data::{DataLoader, Dataset, Digits, TensorDataset};
use flint::io::TrainCheckpoint;
use flint::loss::CrossEntropy;
use flint::no_grad;
use flint::optim::{LrScheduler, Optimizer};
use flint::prelude::*;
use flint::train::RunLogger;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How to train.
#[derive(Clone, Debug)]
pub struct Config {
    /// Epochs in all (a resumed run stops here too).
    pub epochs: usize,
    /// Rows per batch.
    pub batch: usize,
    /// Label smoothing of the cross-entropy.
    pub label_smoothing: f64,
    /// Seed of the weights' initialisation and of the shuffling.
    pub seed: u64,
    /// The digits file.
    pub data: PathBuf,
    /// Where the metrics, checkpoint and curves go.
    pub out: PathBuf,
    /// Continue from `out/checkpoint.safetensors` when it exists.
    pub resume: bool,
    /// Stop after this many epochs of this process (to test resuming).
    pub stop_after: Option<usize>,
    /// Where to train.
    pub device: Device,
    /// Draw progress bars.
    pub progress: bool,
}

impl Config {
    /// The defaults for `out` with `epochs` epochs.
    pub fn new(out: &str, epochs: usize) -> Config {
        Config {
            epochs,
            batch: 32,
            label_smoothing: 0.1,
            seed: 0,
            data: PathBuf::from("data/digits/digits.csv.gz"),
            out: PathBuf::from(out),
            resume: false,
            stop_after: None,
            device: Device::Cpu,
            progress: true,
        }
    }

    /// The defaults changed by the command line: `--quick` (`quick_epochs` epochs),
    /// `--epochs N`, `--resume`, `--out DIR`, `--data FILE`, `--device D`, `--no-progress`.
    pub fn with_args(mut self, name: &'static str, quick_epochs: usize) -> Result<Config, String> {
        let mut args = Args::from_env(name);
        if args.flag("--quick") {
            self.epochs = quick_epochs;
        }
        self.epochs = args.value("--epochs", self.epochs)?;
        self.resume = args.flag("--resume");
        self.progress = !args.flag("--no-progress");
        self.out = args.value("--out", self.out)?;
        self.data = args.value("--data", self.data)?;
        self.device = parse_device(&args.value("--device", "cpu".to_string())?)?;
        args.finish()?;
        Ok(self)
    }
}

/// What a run reports.
#[derive(Debug)]
pub struct Report {
    /// Held-out accuracy after the last epoch, in [0, 1].
    pub accuracy: f64,
    /// Held-out rows.
    pub test_rows: usize,
    /// Epochs this process ran.
    pub epochs_run: usize,
    /// Mean training loss of the first epoch this process ran.
    pub first_loss: f64,
    /// Mean training loss of the last epoch.
    pub last_loss: f64,
    /// Seconds of training and evaluation (data loading excluded).
    pub seconds: f64,
    /// The trained model's parameters and buffers by name.
    pub weights: Vec<(String, Tensor)>,
}

impl Report {
    /// Prints the one-line summary.
    pub fn print(&self, name: &str, out: &Path) {
        println!(
            "{name}: {} epochs in {:.2} s, held-out accuracy {:.1}% ({}/{})",
            self.epochs_run,
            self.seconds,
            100.0 * self.accuracy,
            (self.accuracy * self.test_rows as f64).round(),
            self.test_rows
        );
        println!(
            "metrics: {0}/metrics.csv; TensorBoard: tensorboard --logdir {0}; curves: {0}/curves.png",
            out.display()
        );
    }
}

/// The digits with rows whose index % 5 == 0 held out: (train, test).
pub fn digits(cfg: &Config) -> flint::Result<(TensorDataset, TensorDataset)> {
    Digits::load(&cfg.data)?.holdout_split(5)
}

/// Trains `model` (whose input is a batch of the digits' 64 pixels, reshaped by
/// `prepare`) with `opt` and, stepped once per epoch, `sched`.
pub fn train<M: Module + Forward>(
    model: &mut M,
    opt: &mut dyn Optimizer,
    mut sched: Option<&mut dyn LrScheduler>,
    prepare: impl Fn(&Tensor) -> flint::Result<Tensor>,
    cfg: &Config,
) -> flint::Result<Report> {
    let (train, test) = digits(cfg)?;
    let test_rows = test.len();
    let loss_fn = CrossEntropy::new().label_smoothing(cfg.label_smoothing);
    let loader = DataLoader::new(train, cfg.batch).shuffle(cfg.seed);
    let test_loader = DataLoader::new(test, 512);

    std::fs::create_dir_all(&cfg.out).map_err(|e| flint::Error::io(&cfg.out, e))?;
    let ck_path = cfg.out.join("checkpoint.safetensors");
    let (mut start, mut step) = (0, 0u64);
    if cfg.resume && ck_path.exists() {
        let ck = TrainCheckpoint::load(&ck_path)?;
        ck.restore(model, opt, sched.as_mut().map(|s| &mut **s as _))?;
        (start, step) = (ck.epoch(), ck.step());
        eprintln!("resumed from {} after epoch {start}", ck_path.display());
    }
    // a resumed run keeps the metrics logged up to the checkpoint and appends to them
    let mut log = match start {
        0 => RunLogger::create(&cfg.out)?,
        _ => RunLogger::resume(&cfg.out, step)?,
    };
    let batch = |b: Vec<Tensor>| -> flint::Result<(Tensor, Tensor)> {
        Ok((
            prepare(&b[0].try_to(cfg.device)?)?,
            b[1].try_to(cfg.device)?,
        ))
    };

    let clock = Instant::now();
    let (mut first_loss, mut last_loss, mut accuracy) = (f64::NAN, f64::NAN, f64::NAN);
    let end = (cfg.stop_after).map_or(cfg.epochs, |n| (start + n).min(cfg.epochs));
    for epoch in start..end {
        model.train();
        let mut bar = progress(
            cfg.progress,
            loader.len() as u64,
            format!("epoch {}/{}", epoch + 1, cfg.epochs),
        );
        let (mut sum, mut n) = (0.0, 0usize);
        for b in loader.epoch(epoch) {
            let (x, y) = batch(b?)?;
            let loss = loss_fn.try_forward(&model.try_forward(&x)?, &y)?;
            opt.zero_grad();
            loss.backward();
            opt.step();
            let l = loss.to(Device::Cpu).item::<f32>() as f64;
            step += 1;
            log.scalar("train/loss", step, l)?;
            bar.step(x.size(0) as u64, l);
            sum += l * x.size(0) as f64;
            n += x.size(0);
        }
        bar.finish();
        if let Some(s) = sched.as_mut() {
            s.try_step(opt)?;
        }
        last_loss = sum / n as f64;
        if epoch == start {
            first_loss = last_loss;
        }

        model.eval();
        let (test_loss, right) = no_grad(|| -> flint::Result<(f64, usize)> {
            let (mut loss, mut right) = (0.0, 0);
            for b in test_loader.epoch(0) {
                let (x, y) = batch(b?)?;
                let logits = model.try_forward(&x)?;
                let l = loss_fn.try_forward(&logits, &y)?.to(Device::Cpu);
                loss += l.item::<f32>() as f64 * x.size(0) as f64;
                right += correct(&logits, &y);
            }
            Ok((loss / test_rows as f64, right))
        })?;
        accuracy = right as f64 / test_rows as f64;
        log.scalar("train/epoch_loss", step, last_loss)?;
        log.scalar("test/loss", step, test_loss)?;
        log.scalar("test/accuracy", step, accuracy)?;
        log.flush()?;
        TrainCheckpoint::capture(&*model, &*opt, sched.as_ref().map(|s| &**s as _), epoch + 1)
            .with_step(step)
            .save(&ck_path)?;
        eprintln!(
            "epoch {:>2}/{}: train loss {last_loss:.4}, test loss {test_loss:.4}, test accuracy {:.1}%",
            epoch + 1,
            cfg.epochs,
            100.0 * accuracy
        );
    }
    let seconds = clock.elapsed().as_secs_f64();
    log.plot(
        cfg.out.join("curves.png"),
        &[&["train/loss", "test/loss"], &["test/accuracy"]],
    )?;
    Ok(Report {
        accuracy,
        test_rows,
        epochs_run: end - start,
        first_loss,
        last_loss,
        seconds,
        weights: model.state_dict(),
    })
}
