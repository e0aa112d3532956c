//! A character-level GPT written entirely with `model!`, trained on the bundled text
//! corpus (`data/text/python_reference_topics.txt`: the Python Language Reference topics),
//! then sampled.
//!
//! ```sh
//! cargo run --release --example char_transformer                 # 600 steps
//! cargo run --release --example char_transformer -- --quick      # 20 small steps (CI)
//! cargo run --release --example char_transformer -- --steps 300 --sample 400
//! ```
//!
//! Causal self-attention, position-wise feed-forward, residuals and dropout in pre-LN
//! blocks; cross-entropy with label smoothing; AdamW with a linear warm-up into a cosine
//! schedule; batches of random windows from a shuffled `DataLoader` with two workers; the
//! held-out last 5% of the text for validation; metrics in `runs/char_transformer/`.
//!
//! Every shape in the two models is checked while you type: change `head`'s input to
//! `Linear(2 * D -> vocab)` and the editor underlines `head` with
//! ``shape mismatch: `ln` produces [b, t, D] but `head` expects [.., 2 * D]``.

pub mod common;

use common::{draw, progress, Args, TextOptions};
use flint::data::{CharDataset, CharVocab, DataLoader};
use flint::loss::CrossEntropy;
use flint::optim::{Adam, CosineAnnealingLR, LinearLR, LrScheduler, Optimizer, SequentialLR};
use flint::prelude::*;
use flint::train::RunLogger;
use flint::{assert_shapes, model, no_grad, Tensor};
use std::path::PathBuf;
use std::time::Instant;

model! {
    /// A pre-LayerNorm transformer block with causal self-attention.
    pub struct Block<const D: usize, const H: usize>(dropout: f64)
        where D % H == 0
    {
        ln1: LayerNorm(D),
        attn: MultiheadAttention(D, heads = H, dropout = dropout),
        drop: Dropout(dropout),
        ln2: LayerNorm(D),
        mlp: FeedForward(D -> 4 * D -> D, activation = Gelu, dropout = dropout),
    }
    fn forward(x: [b, t, D]) -> [b, t, D] {
        let x = x + drop(attn(ln1(x), causal));
        x + mlp(ln2(x))
    }

    /// GPT: token and position embeddings, `layers` blocks, a final norm and the
    /// language-model head.
    pub struct Gpt<const D: usize, const H: usize>(vocab: usize, ctx: usize, layers: usize, dropout: f64) {
        tok: Embedding(vocab -> D),
        pos: Embedding(ctx -> D),
        drop: Dropout(dropout),
        blocks: [Block<D, H>(dropout); layers],
        ln: LayerNorm(D),
        head: Linear(D -> vocab, bias = false),
    }
    fn forward(idx: Ids[b, t]) -> [b, t, vocab] where t <= ctx {
        let x = drop(tok(idx) + pos(positions(t)));
        head(ln(blocks(x)))
    }
}

/// The width this example trains (and the quick run's).
pub type Wide = Gpt<128, 4>;
/// The quick (CI) model.
pub type Small = Gpt<32, 2>;
assert_shapes!(Block<128, 4>, Wide, Small);

/// How to train.
#[derive(Clone, Debug)]
pub struct Config {
    /// Optimizer steps.
    pub steps: usize,
    /// Windows per batch.
    pub batch: usize,
    /// Characters per window (the model's context).
    pub ctx: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Dropout everywhere.
    pub dropout: f64,
    /// Peak learning rate (after the warm-up).
    pub lr: f64,
    /// Label smoothing of the loss.
    pub label_smoothing: f64,
    /// Use the small model ([`Small`]) instead of [`Wide`].
    pub small: bool,
    /// Seed of everything random.
    pub seed: u64,
    /// Validation (and logging of it) every this many steps.
    pub eval_every: usize,
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
            steps: 600,
            batch: 32,
            ctx: 64,
            layers: 2,
            dropout: 0.1,
            lr: 2e-3,
            label_smoothing: 0.1,
            small: false,
            seed: 0,
            eval_every: 100,
            sample: 300,
            out: PathBuf::from("runs/char_transformer"),
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
    /// Validation loss (held-out text) at the end.
    pub val_loss: f64,
    /// Parameters of the model.
    pub parameters: usize,
    /// Text sampled from the trained model.
    pub sample: String,
    /// Seconds of training.
    pub seconds: f64,
}

/// The model behind one type: [`Wide`] or [`Small`].
enum Net {
    Wide(Wide),
    Small(Small),
}

impl Net {
    fn forward(&self, x: &Tensor) -> flint::Result<Tensor> {
        match self {
            Net::Wide(m) => m.try_forward(x),
            Net::Small(m) => m.try_forward(x),
        }
    }
    fn module(&mut self) -> &mut dyn Module {
        match self {
            Net::Wide(m) => m,
            Net::Small(m) => m,
        }
    }
}

/// Trains on `text` as `cfg` says and samples from the model.
pub fn train(text: &str, cfg: &Config) -> flint::Result<Report> {
    manual_seed(cfg.seed);
    let corpus = CharDataset::new(text, cfg.ctx)?;
    let vocab = corpus.vocab().clone();
    let (train_set, val_set) = corpus.split(0.95);
    let opts = (DType::F32, cfg.device);
    let (v, ctx, layers, p) = (vocab.len(), cfg.ctx, cfg.layers, cfg.dropout);
    let mut net = match cfg.small {
        false => Net::Wide(Wide::try_new(v, ctx, layers, p, opts)?),
        true => Net::Small(Small::try_new(v, ctx, layers, p, opts)?),
    };
    let parameters = net.module().num_parameters();
    let mut opt = Adam::adamw(net.module().parameters(), cfg.lr)
        .betas(0.9, 0.99)
        .weight_decay(0.1);
    // linear warm-up over the first 5% of the steps, then a cosine down to lr / 10
    let warmup = (cfg.steps / 20).max(1);
    let ramp = LinearLR::try_new(&mut opt, 0.01, 1.0, warmup)?;
    let cosine =
        CosineAnnealingLR::try_new(&mut opt, cfg.steps - warmup.min(cfg.steps), cfg.lr / 10.0)?;
    let mut sched =
        SequentialLR::try_new(&mut opt, vec![Box::new(ramp), Box::new(cosine)], &[warmup])?;
    let loss_fn = CrossEntropy::new().label_smoothing(cfg.label_smoothing);
    let loader = DataLoader::new(train_set, cfg.batch)
        .shuffle(cfg.seed)
        .drop_last(true)
        .num_workers(2);
    let val_loader = DataLoader::new(val_set, cfg.batch).shuffle(cfg.seed + 1);
    let mut log = RunLogger::create(&cfg.out)?;

    let loss_of = |net: &Net, batch: Vec<Tensor>| -> flint::Result<Tensor> {
        let x = batch[0].try_to(cfg.device)?;
        let y = batch[1].try_to(cfg.device)?;
        let logits = net.forward(&x)?;
        loss_fn.try_forward(&logits.try_reshape([-1, v as i64])?, &y.try_reshape([-1])?)
    };
    let validate = |net: &mut Net| -> flint::Result<f64> {
        net.module().eval();
        let l = no_grad(|| -> flint::Result<f64> {
            let mut sum = 0.0;
            let mut n = 0;
            for b in val_loader.epoch(0).take(8) {
                sum += loss_of(net, b?)?.to(Device::Cpu).item::<f32>() as f64;
                n += 1;
            }
            Ok(sum / n.max(1) as f64)
        })?;
        net.module().train();
        Ok(l)
    };

    let clock = Instant::now();
    let mut bar = progress(cfg.progress, cfg.steps as u64, "train");
    let mut losses = Vec::with_capacity(cfg.steps);
    net.module().train();
    let mut batches = (0..).flat_map(|epoch| loader.epoch(epoch));
    let mut val_loss = f64::NAN;
    for step in 1..=cfg.steps {
        let batch = batches.next().expect("the epochs never end")?;
        let loss = loss_of(&net, batch)?;
        opt.zero_grad();
        loss.backward();
        flint::optim::clip_grad_norm_(&net.module().parameters(), 1.0);
        opt.step();
        sched.try_step(&mut opt)?;
        let l = loss.to(Device::Cpu).item::<f32>() as f64;
        losses.push(l);
        log.scalar("train/loss", step as u64, l)?;
        log.scalar("train/lr", step as u64, opt.groups()[0].lr)?;
        bar.step((cfg.batch * cfg.ctx) as u64, l);
        if step % cfg.eval_every == 0 || step == cfg.steps {
            val_loss = validate(&mut net)?;
            log.scalar("val/loss", step as u64, val_loss)?;
            log.flush()?;
        }
    }
    bar.finish();
    let seconds = clock.elapsed().as_secs_f64();
    log.plot(
        cfg.out.join("curves.png"),
        &[&["train/loss", "val/loss"], &["train/lr"]],
    )?;

    net.module().eval();
    let prompt = "The ";
    let sample = sample(
        &net, &vocab, prompt, cfg.sample, cfg.ctx, 0.8, cfg.seed, cfg.device,
    )?;
    let tail = &losses[losses.len().saturating_sub(10)..];
    Ok(Report {
        first_loss: losses.first().copied().unwrap_or(f64::NAN),
        last_loss: tail.iter().sum::<f64>() / tail.len().max(1) as f64,
        val_loss,
        parameters,
        sample,
        seconds,
    })
}

/// `n` characters after `prompt`, each drawn from the softmax of the logits divided by
/// `temperature`, with a generator seeded by `seed`.
#[allow(clippy::too_many_arguments)]
fn sample(
    net: &Net,
    vocab: &CharVocab,
    prompt: &str,
    n: usize,
    ctx: usize,
    temperature: f64,
    seed: u64,
    device: Device,
) -> flint::Result<String> {
    let mut ids = vocab.encode(prompt)?;
    let mut g = Generator::new(seed);
    no_grad(|| -> flint::Result<()> {
        for _ in 0..n {
            let window = &ids[ids.len().saturating_sub(ctx)..];
            let x = Tensor::from_vec(window.to_vec(), [1, window.len()]).try_to(device)?;
            let logits = net.forward(&x)?.select(1, -1).squeeze_dim(0);
            ids.push(draw(&logits, temperature, &mut g));
        }
        Ok(())
    })?;
    vocab.try_decode(&ids)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = Args::from_env(
        "char_transformer [--quick] [--steps N] [--sample N] [--text FILE] [--out DIR] [--device cpu|cuda] [--no-progress]",
    );
    let mut cfg = Config::default();
    if args.flag("--quick") {
        cfg = Config {
            steps: 20,
            batch: 8,
            ctx: 32,
            layers: 1,
            small: true,
            eval_every: 10,
            sample: 60,
            ..cfg
        };
    }
    let o = TextOptions::parse(args, cfg.steps, cfg.sample, cfg.out.clone())?;
    (cfg.steps, cfg.sample, cfg.out, cfg.device, cfg.progress) =
        (o.steps, o.sample, o.out, o.device, o.progress);

    let r = train(&o.text, &cfg)?;
    println!("parameters: {}", r.parameters);
    println!(
        "{} steps in {:.1} s: loss {:.3} → {:.3} (last 10 steps), validation {:.3}",
        cfg.steps, r.seconds, r.first_loss, r.last_loss, r.val_loss
    );
    println!("sample:\n{}", r.sample);
    Ok(())
}
