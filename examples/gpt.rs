//! A character-level GPT written entirely with `model!`, trained for a few steps on a
//! text file (by default this repository's README), then sampled greedily.
//!
//! ```sh
//! cargo run --release --example gpt -- [--steps N] [--text PATH]
//! ```
//!
//! Every shape in the two models below is checked while you type: change `head`'s input
//! to `Linear(2 * D -> vocab)` and the editor underlines `head` with
//! ``shape mismatch: `ln` produces [b, t, D] but `head` expects [.., 2 * D]``.

use flint::optim::Adam;
use flint::prelude::*;
use flint::{assert_shapes, loss, model, Tensor};

model! {
    /// A pre-LayerNorm transformer block with causal self-attention.
    pub struct Block<const D: usize, const H: usize>(dropout: f64)
        where D % H == 0
    {
        ln1: LayerNorm(D),
        attn: MultiheadAttention(D, heads = H, dropout = dropout),
        ln2: LayerNorm(D),
        mlp: FeedForward(D -> 4 * D -> D, activation = Gelu, dropout = dropout),
    }
    fn forward(x: [b, t, D]) -> [b, t, D] {
        let x = x + attn(ln1(x), causal);
        x + mlp(ln2(x))
    }

    /// GPT: token and position embeddings, `layers` blocks, a final norm and the
    /// language-model head.
    pub struct Gpt<const D: usize, const H: usize>(vocab: usize, ctx: usize, layers: usize, dropout: f64) {
        tok: Embedding(vocab -> D),
        pos: Embedding(ctx -> D),
        blocks: [Block<D, H>(dropout); layers],
        ln: LayerNorm(D),
        head: Linear(D -> vocab, bias = false),
    }
    fn forward(idx: Ids[b, t]) -> [b, t, vocab] where t <= ctx {
        let x = tok(idx) + pos(positions(t));
        head(ln(blocks(x)))
    }
}

/// The sizes this example trains; checked under `cargo check`.
type Small = Gpt<64, 4>;
assert_shapes!(Block<64, 4>, Small);

/// What [`train`] reports.
#[derive(Debug)]
pub struct Report {
    /// Loss of the first step.
    pub first_loss: f32,
    /// Mean loss of the last few steps.
    pub last_loss: f32,
    /// Parameters of the model.
    pub parameters: usize,
    /// A greedy continuation of the text's first characters.
    pub sample: String,
}

/// Trains a small GPT on `text` for `steps` steps and samples from it.
pub fn train(text: &str, steps: usize, seed: u64) -> flint::Result<Report> {
    const CTX: usize = 32;
    const BATCH: usize = 16;
    flint::manual_seed(seed);
    let mut chars: Vec<char> = text
        .chars()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    chars.sort_unstable();
    let ids: Vec<i64> = text
        .chars()
        .map(|c| chars.binary_search(&c).map_or(0, |i| i as i64))
        .collect();
    if ids.len() <= CTX + 1 {
        return Err(flint::Error::config(
            "gpt",
            "the text is shorter than one context window",
        ));
    }
    let vocab = chars.len();
    let mut model = Small::try_new(vocab, CTX, 2, 0.0, ())?;
    model.train();
    let mut opt = Adam::adamw(model.parameters(), 3e-3);
    let mut g = flint::Generator::new(seed);
    let mut losses = Vec::new();
    for _ in 0..steps {
        let starts = g
            .randint(0, (ids.len() - CTX - 1) as i64, [BATCH])
            .to_vec::<i64>();
        let mut x = Vec::with_capacity(BATCH * CTX);
        let mut y = Vec::with_capacity(BATCH * CTX);
        for &s in &starts {
            let s = s as usize;
            x.extend_from_slice(&ids[s..s + CTX]);
            y.extend_from_slice(&ids[s + 1..s + CTX + 1]);
        }
        let x = Tensor::from_vec(x, [BATCH, CTX]);
        let y = Tensor::from_vec(y, [BATCH * CTX]);
        let logits = model.try_forward(&x)?;
        let loss = loss::cross_entropy(&logits.reshape([BATCH * CTX, vocab]), &y);
        opt.zero_grad();
        loss.backward();
        opt.step();
        losses.push(loss.item::<f32>());
    }
    model.eval();
    let mut context: Vec<i64> = ids[..8].to_vec();
    flint::no_grad(|| -> flint::Result<()> {
        for _ in 0..24 {
            let window = &context[context.len().saturating_sub(CTX)..];
            let logits =
                model.try_forward(&Tensor::from_vec(window.to_vec(), [1, window.len()]))?;
            let last = logits.select(1, -1).argmax(-1, false).to_vec::<i64>()[0];
            context.push(last);
        }
        Ok(())
    })?;
    let sample: String = context.iter().map(|&i| chars[i as usize]).collect();
    let tail = losses.len().saturating_sub(5);
    let last: Vec<f32> = losses[tail..].to_vec();
    Ok(Report {
        first_loss: losses.first().copied().unwrap_or(f32::NAN),
        last_loss: last.iter().sum::<f32>() / last.len().max(1) as f32,
        parameters: model.num_parameters(),
        sample,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mut steps = 200;
    let mut path: Option<String> = None;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--steps" => {
                steps = args.get(i + 1).ok_or("--steps needs a number")?.parse()?;
                i += 1;
            }
            "--text" => {
                path = Some(args.get(i + 1).ok_or("--text needs a path")?.clone());
                i += 1;
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`; expected --steps N or --text PATH"
                )
                .into())
            }
        }
        i += 1;
    }
    let text = match &path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?,
        None => include_str!("../README.md").to_string(),
    };
    println!("{}", Small::new(20, 32, 2, 0.0, ()));
    let r = train(&text, steps, 0)?;
    println!("parameters: {}", r.parameters);
    println!(
        "loss: first step {:.3}, last steps {:.3}",
        r.first_loss, r.last_loss
    );
    println!("sample: {:?}", r.sample);
    Ok(())
}
