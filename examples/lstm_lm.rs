//! A character-level LSTM language model with variational dropout, trained by truncated
//! backpropagation through time on the bundled text corpus, then sampled.
//!
//! ```sh
//! cargo run --release --example lstm_lm                 # 300 steps
//! cargo run --release --example lstm_lm -- --quick      # 15 small steps (CI)
//! ```
//!
//! The text is one stream of character ids cut into `batch` parallel columns (PyTorch's
//! `word_language_model` "batchify"); each step trains on the next `bptt` characters of
//! every column, starting from the previous step's final state, detached (truncated
//! BPTT). Variational dropout — one mask per sequence, the same at every time step — on
//! the inputs of every LSTM layer (the embeddings first), on the hidden state fed to each
//! layer's recurrence and on the LSTM's outputs. Adam, gradient-norm clipping at 0.25, held-out perplexity on the last 5% of
//! the text.

pub mod common;

use common::{draw, progress, Args, TextOptions};
use flint::data::CharVocab;
use flint::loss::CrossEntropy;
use flint::nn::{Embedding, Linear, RecurrentConfig, VariationalDropout, LSTM};
use flint::optim::{clip_grad_norm_, Adam};
use flint::prelude::*;
use flint::train::RunLogger;
use flint::{no_grad, Tensor};
use std::path::PathBuf;
use std::time::Instant;

/// Embedding → LSTM → variational dropout → linear head. The LSTM applies variational
/// dropout to the inputs of every layer (the embeddings, then the layer below's outputs)
/// and to the hidden state fed to every recurrence. Sequences are `[T, B]` (time first,
/// like `nn.LSTM`'s default).
#[derive(Module)]
pub struct CharLstm {
    emb: Embedding,
    lstm: LSTM,
    drop_out: VariationalDropout,
    head: Linear,
}

/// An LSTM's `(h, c)`, each `[layers, B, H]`.
pub type State = (Tensor, Tensor);

impl CharLstm {
    /// A model over `vocab` characters: embeddings of `emb`, `layers` LSTM layers of
    /// `hidden` units, dropout probability `p`.
    pub fn new(
        vocab: usize,
        emb: usize,
        hidden: usize,
        layers: usize,
        p: f64,
        opts: impl Into<flint::TensorOptions>,
    ) -> CharLstm {
        let opts = opts.into();
        let config = RecurrentConfig {
            num_layers: layers,
            input_dropout: p,
            hidden_dropout: p,
            ..Default::default()
        };
        CharLstm {
            emb: Embedding::new(vocab, emb, opts),
            lstm: LSTM::with_config(emb, hidden, config, opts),
            drop_out: VariationalDropout::new(p, false),
            head: Linear::new(hidden, vocab, opts),
        }
    }

    /// `[T, B]` ids and the state → `[T, B, vocab]` logits and the new state.
    pub fn forward(&self, ids: &Tensor, state: Option<&State>) -> flint::Result<(Tensor, State)> {
        let x = self.emb.try_forward(ids)?;
        let (y, state) = self.lstm.try_forward(&x, state.map(|(h, c)| (h, c)))?;
        let logits = self.head.try_forward(&self.drop_out.try_forward(&y)?)?;
        Ok((logits, state))
    }
}

/// How to train.
#[derive(Clone, Debug)]
pub struct Config {
    /// Optimizer steps.
    pub steps: usize,
    /// Parallel columns of the stream.
    pub batch: usize,
    /// Characters per step (the truncation length of BPTT).
    pub bptt: usize,
    /// Embedding width.
    pub emb: usize,
    /// LSTM units per layer.
    pub hidden: usize,
    /// LSTM layers.
    pub layers: usize,
    /// Dropout probability (variational).
    pub dropout: f64,
    /// Adam's learning rate.
    pub lr: f64,
    /// Seed of everything random.
    pub seed: u64,
    /// Characters to sample at the end.
    pub sample: usize,
    /// Where metrics go.
    pub out: PathBuf,
    /// Where to train.
    pub device: Device,
    /// Draw a progress bar.
    pub progress: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            steps: 300,
            batch: 32,
            bptt: 48,
            emb: 64,
            hidden: 128,
            layers: 2,
            dropout: 0.25,
            lr: 3e-3,
            seed: 0,
            sample: 300,
            out: PathBuf::from("runs/lstm_lm"),
            device: Device::Cpu,
            progress: true,
        }
    }
}

/// What a run reports.
#[derive(Debug)]
pub struct Report {
    /// Training loss of the first step.
    pub first_loss: f64,
    /// Mean training loss of the last 10 steps.
    pub last_loss: f64,
    /// Held-out loss (nats per character) at the end.
    pub val_loss: f64,
    /// Text sampled from the trained model.
    pub sample: String,
    /// Seconds of training.
    pub seconds: f64,
}

/// `ids` as `batch` columns: `[len / batch, batch]`, column `j` holding the `j`-th
/// contiguous stretch of the stream (the remainder is dropped).
fn batchify(ids: &[i64], batch: usize, device: Device) -> flint::Result<Tensor> {
    let n = ids.len() / batch;
    Tensor::from_vec(ids[..n * batch].to_vec(), [batch, n])
        .t()
        .contiguous()
        .try_to(device)
}

/// Rows `i..i+len` of the columns as input and rows `i+1..i+1+len` as target.
fn chunk(data: &Tensor, i: usize, bptt: usize) -> (Tensor, Tensor) {
    let len = bptt.min(data.size(0) - 1 - i);
    (data.narrow(0, i, len), data.narrow(0, i + 1, len))
}

/// Trains on `text` as `cfg` says and samples from the model.
pub fn train(text: &str, cfg: &Config) -> flint::Result<Report> {
    manual_seed(cfg.seed);
    let vocab = CharVocab::from_text(text);
    let ids = vocab.encode(text)?;
    let cut = ids.len() * 95 / 100;
    let train_data = batchify(&ids[..cut], cfg.batch, cfg.device)?;
    let val_data = batchify(&ids[cut..], cfg.batch, cfg.device)?;
    let v = vocab.len();
    let mut model = CharLstm::new(
        v,
        cfg.emb,
        cfg.hidden,
        cfg.layers,
        cfg.dropout,
        (DType::F32, cfg.device),
    );
    let mut opt = Adam::new(model.parameters(), cfg.lr);
    let loss_fn = CrossEntropy::new();
    let mut log = RunLogger::create(&cfg.out)?;
    let flat = |t: &Tensor| t.try_reshape([-1, v as i64]);

    let clock = Instant::now();
    let mut bar = progress(cfg.progress, cfg.steps as u64, "train");
    model.train();
    let mut losses = Vec::with_capacity(cfg.steps);
    let (mut i, mut state): (usize, Option<State>) = (0, None);
    for step in 1..=cfg.steps {
        if i + 1 >= train_data.size(0) {
            (i, state) = (0, None); // a new pass over the stream
        }
        let (x, y) = chunk(&train_data, i, cfg.bptt);
        i += x.size(0);
        let (logits, next) = model.forward(&x, state.as_ref())?;
        state = Some((next.0.detach(), next.1.detach())); // truncate the graph here
        let loss = loss_fn.try_forward(&flat(&logits)?, &y.try_reshape([-1])?)?;
        opt.zero_grad();
        loss.backward();
        clip_grad_norm_(&model.parameters(), 0.25);
        opt.step();
        let l = loss.to(Device::Cpu).item::<f32>() as f64;
        losses.push(l);
        log.scalar("train/loss", step as u64, l)?;
        bar.step((x.size(0) * cfg.batch) as u64, l);
    }
    bar.finish();
    let seconds = clock.elapsed().as_secs_f64();

    model.eval();
    let val_loss = no_grad(|| -> flint::Result<f64> {
        let (mut sum, mut n, mut i, mut state) = (0.0, 0usize, 0, None::<State>);
        while i + 1 < val_data.size(0) {
            let (x, y) = chunk(&val_data, i, cfg.bptt);
            let (logits, next) = model.forward(&x, state.as_ref())?;
            let l = loss_fn.try_forward(&flat(&logits)?, &y.try_reshape([-1])?)?;
            sum += l.to(Device::Cpu).item::<f32>() as f64 * x.size(0) as f64;
            n += x.size(0);
            (i, state) = (i + x.size(0), Some(next));
        }
        Ok(sum / n.max(1) as f64)
    })?;
    log.scalar("val/loss", cfg.steps as u64, val_loss)?;
    log.flush()?;
    log.plot(cfg.out.join("curves.png"), &[&["train/loss"]])?;

    let sample = sample(&model, &vocab, "The ", cfg.sample, cfg.seed, cfg.device)?;
    let tail = &losses[losses.len().saturating_sub(10)..];
    Ok(Report {
        first_loss: losses.first().copied().unwrap_or(f64::NAN),
        last_loss: tail.iter().sum::<f64>() / tail.len().max(1) as f64,
        val_loss,
        sample,
        seconds,
    })
}

/// `n` characters after `prompt`, fed one at a time through the recurrent state and drawn
/// from the softmax of the logits / 0.8.
fn sample(
    model: &CharLstm,
    vocab: &CharVocab,
    prompt: &str,
    n: usize,
    seed: u64,
    device: Device,
) -> flint::Result<String> {
    let mut ids = vocab.encode(prompt)?;
    let mut g = Generator::new(seed);
    no_grad(|| -> flint::Result<()> {
        let x = Tensor::from_vec(ids.clone(), [ids.len(), 1]).try_to(device)?;
        let (mut logits, mut state) = model.forward(&x, None)?;
        for _ in 0..n {
            let last = logits.select(0, -1).squeeze_dim(0);
            let next = draw(&last, 0.8, &mut g);
            ids.push(next);
            let x = Tensor::from_vec(vec![next], [1, 1]).try_to(device)?;
            (logits, state) = model.forward(&x, Some(&state))?;
        }
        Ok(())
    })?;
    vocab.try_decode(&ids)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = Args::from_env(
        "lstm_lm [--quick] [--steps N] [--sample N] [--text FILE] [--out DIR] [--device cpu|cuda] [--no-progress]",
    );
    let mut cfg = Config::default();
    if args.flag("--quick") {
        cfg = Config {
            steps: 15,
            batch: 8,
            bptt: 16,
            emb: 16,
            hidden: 32,
            sample: 60,
            ..cfg
        };
    }
    let o = TextOptions::parse(args, cfg.steps, cfg.sample, cfg.out.clone())?;
    (cfg.steps, cfg.sample, cfg.out, cfg.device, cfg.progress) =
        (o.steps, o.sample, o.out, o.device, o.progress);

    let r = train(&o.text, &cfg)?;
    println!(
        "{} steps in {:.1} s: loss {:.3} → {:.3} (last 10 steps), held-out {:.3} nats/char (perplexity {:.2})",
        cfg.steps, r.seconds, r.first_loss, r.last_loss, r.val_loss, r.val_loss.exp()
    );
    println!("sample:\n{}", r.sample);
    Ok(())
}
