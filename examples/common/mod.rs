//! What the examples share: command-line flags, the device flag and accuracy.
//! (A folder, not `examples/common.rs`, so that cargo does not take it for an example.)
#![allow(dead_code)] // each example uses a part

pub mod classify;

use flint::{Device, Tensor};
use std::str::FromStr;

/// The command line of an example: `--name value` options and `--name` switches. Every
/// argument must be taken by [`Args::value`] or [`Args::flag`] before [`Args::finish`],
/// which rejects anything left over with the usage line.
pub struct Args {
    rest: Vec<String>,
    usage: &'static str,
}

impl Args {
    /// The process's arguments; `usage` is printed with any error.
    pub fn from_env(usage: &'static str) -> Args {
        Args {
            rest: std::env::args().skip(1).collect(),
            usage,
        }
    }

    /// True when `--name` was given (and takes it).
    pub fn flag(&mut self, name: &str) -> bool {
        let before = self.rest.len();
        self.rest.retain(|a| a != name);
        self.rest.len() != before
    }

    /// The value after `--name`, parsed; `default` when absent.
    pub fn value<T: FromStr>(&mut self, name: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        let Some(i) = self.rest.iter().position(|a| a == name) else {
            return Ok(default);
        };
        let Some(v) = self.rest.get(i + 1).cloned() else {
            return Err(format!("{name} needs a value\nusage: {}", self.usage));
        };
        self.rest.drain(i..i + 2);
        v.parse()
            .map_err(|e| format!("{name} {v}: {e}\nusage: {}", self.usage))
    }

    /// Ok when every argument was taken.
    pub fn finish(self) -> Result<(), String> {
        match self.rest.first() {
            None => Ok(()),
            Some(a) => Err(format!("unknown argument `{a}`\nusage: {}", self.usage)),
        }
    }
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device, String> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("unknown device `{s}`: expected cpu, cuda or cuda:N")),
    }
}

/// The number of rows of `logits` (`[n, classes]`) whose arg-max is the label.
pub fn correct(logits: &Tensor, labels: &Tensor) -> usize {
    let pred = logits.argmax(-1, false);
    pred.eq(labels)
        .to_dtype(flint::DType::I64)
        .sum_all()
        .to(Device::Cpu)
        .item::<i64>() as usize
}

/// A progress bar over `total` steps, or a hidden one when `show` is false.
pub fn progress(show: bool, total: u64, prefix: impl Into<String>) -> flint::train::Progress {
    match show {
        true => flint::train::Progress::new(total, prefix),
        false => flint::train::Progress::hidden(total, prefix),
    }
}

/// A character id drawn from `softmax(logits / temperature)` (`logits`: `[vocab]`) with
/// the generator `g`.
pub fn draw(logits: &Tensor, temperature: f64, g: &mut flint::Generator) -> i64 {
    let probs = (logits / temperature)
        .softmax(-1)
        .to(Device::Cpu)
        .to_vec::<f32>();
    let u = g.rand([1], flint::DType::F64).item::<f64>() as f32;
    let mut acc = 0.0;
    probs
        .iter()
        .position(|&p| {
            acc += p;
            acc > u
        })
        .unwrap_or(probs.len() - 1) as i64
}

/// The options the text examples share, taken from `args`: `--steps N`, `--sample N`
/// (characters to generate), `--out DIR`, `--device D`, `--no-progress`, and `--text FILE`
/// (default: the bundled corpus), whose contents are returned.
pub struct TextOptions {
    /// Optimizer steps.
    pub steps: usize,
    /// Characters to sample at the end.
    pub sample: usize,
    /// Where metrics go.
    pub out: std::path::PathBuf,
    /// Where to train.
    pub device: Device,
    /// Draw a progress bar.
    pub progress: bool,
    /// The training text.
    pub text: String,
}

impl TextOptions {
    /// Reads the options (defaults: `steps`, `sample`, `out`) and the text, and checks that
    /// nothing else was given.
    pub fn parse(
        mut args: Args,
        steps: usize,
        sample: usize,
        out: std::path::PathBuf,
    ) -> Result<TextOptions, Box<dyn std::error::Error>> {
        let steps = args.value("--steps", steps)?;
        let sample = args.value("--sample", sample)?;
        let out = args.value("--out", out)?;
        let device = parse_device(&args.value("--device", "cpu".to_string())?)?;
        let progress = !args.flag("--no-progress");
        let path: std::path::PathBuf = args.value(
            "--text",
            std::path::PathBuf::from("data/text/python_reference_topics.txt"),
        )?;
        args.finish()?;
        let text = std::fs::read_to_string(&path).map_err(|e| flint::Error::io(&path, e))?;
        Ok(TextOptions {
            steps,
            sample,
            out,
            device,
            progress,
            text,
        })
    }
}
