//! Workload C's model (`TinyLM` and its pre-LN `Block` in `benches/torch_baseline.py`),
//! shared by the CPU workloads (`workloads.rs`, the script's sizes) and the CUDA bench
//! (`cuda.rs`, issue 8's larger size). Included with `#[path]` by both (a folder of its
//! own, so cargo does not take it for a bench target).

use flint::loss::CrossEntropy;
use flint::nn::functional::scaled_dot_product_attention;
use flint::nn::{Dropout, Embedding, LayerNorm, Linear};
use flint::optim::Adam;
use flint::prelude::*;

/// The loss and optimizer of the script's training steps (workloads B and C):
/// cross-entropy with label smoothing 0.1, and AdamW (betas 0.9/0.999, eps 1e-8, weight
/// decay 0.01) at learning rate `lr`.
pub fn loss_and_adamw(params: Vec<Tensor>, lr: f64) -> (CrossEntropy, Adam) {
    let opt = Adam::new(params, lr)
        .betas(0.9, 0.999)
        .eps(1e-8)
        .weight_decay(0.01)
        .decoupled(true);
    (CrossEntropy::new().label_smoothing(0.1), opt)
}

/// The sizes of a `TinyLM` and its batch.
#[derive(Clone, Copy, Debug)]
pub struct TinyLmConfig {
    /// vocabulary
    pub v: usize,
    /// model width
    pub d: usize,
    /// heads (head size `d / h`)
    pub h: usize,
    /// MLP width
    pub ff: usize,
    /// sequence length (and positions)
    pub t: usize,
    /// batch
    pub b: usize,
    /// dropout probability
    pub p: f64,
}

impl TinyLmConfig {
    /// Forward FLOPs as the script counts them: the products, with the full (unmasked)
    /// score matrix.
    pub fn flops(&self) -> f64 {
        let (v, d, h, f, t, b) = (
            self.v as f64,
            self.d as f64,
            self.h as f64,
            self.ff as f64,
            self.t as f64,
            self.b as f64,
        );
        2.0 * b * t * (d * 3.0 * d + d * d + 2.0 * d * f + d * v)
            + 2.0 * 2.0 * b * h * t * t * (d / h)
    }
}

/// The pre-LN block of the script's `Block`.
#[derive(Module)]
pub struct Block {
    ln1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    attn_drop: Dropout,
    resid_drop1: Dropout,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    resid_drop2: Dropout,
    heads: usize,
    p: f64,
    sdpa: bool,
}

impl Block {
    fn new(d: usize, h: usize, f: usize, p: f64, sdpa: bool) -> Block {
        // the script's construction order, so the seeded parameters are drawn alike
        Block {
            ln1: LayerNorm::new(&[d], ()),
            qkv: Linear::new(d, 3 * d, ()),
            proj: Linear::new(d, d, ()),
            attn_drop: Dropout::new(p),
            resid_drop1: Dropout::new(p),
            ln2: LayerNorm::new(&[d], ()),
            fc1: Linear::new(d, f, ()),
            fc2: Linear::new(f, d, ()),
            resid_drop2: Dropout::new(p),
            heads: h,
            p,
            sdpa,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, t, d) = (x.size(0), x.size(1), x.size(2));
        let hd = d / self.heads;
        let qkv = self.qkv.forward(&self.ln1.forward(x)).split(d, -1);
        let split_heads = |z: &Tensor| z.view([b, t, self.heads, hd]).transpose(1, 2);
        let (q, k, v) = (
            split_heads(&qkv[0]),
            split_heads(&qkv[1]),
            split_heads(&qkv[2]),
        );
        let o = if self.sdpa {
            let training = self.attn_drop.is_training();
            let p = if training { self.p } else { 0.0 };
            scaled_dot_product_attention(&q, &k, &v, None, true, p, training, None)
                .expect("scaled_dot_product_attention")
        } else {
            let s = q.matmul(&k.transpose(-2, -1)) * (1.0 / (hd as f64).sqrt());
            let mask = Tensor::ones([t, t], (DType::Bool, x.device())).triu(1);
            let s = s.masked_fill(&mask, f64::NEG_INFINITY);
            self.attn_drop.forward(&s.softmax(-1)).matmul(&v)
        };
        let o = o.transpose(1, 2).reshape([b, t, d]);
        let x = x + &self.resid_drop1.forward(&self.proj.forward(&o));
        let m = self
            .fc1
            .forward(&self.ln2.forward(&x))
            .gelu(GeluApprox::None);
        &x + &self.resid_drop2.forward(&self.fc2.forward(&m))
    }
}

/// The script's `TinyLM`: embeddings, one block, final norm, untied head.
#[derive(Module)]
pub struct TinyLM {
    tok: Embedding,
    pos: Embedding,
    drop: Dropout,
    block: Block,
    ln_f: LayerNorm,
    head: Linear,
}

impl TinyLM {
    /// A model of sizes `c`, drawn from the global generator in the script's order.
    pub fn new(c: &TinyLmConfig, sdpa: bool) -> TinyLM {
        TinyLM {
            tok: Embedding::new(c.v, c.d, ()),
            pos: Embedding::new(c.t, c.d, ()),
            drop: Dropout::new(c.p),
            block: Block::new(c.d, c.h, c.ff, c.p, sdpa),
            ln_f: LayerNorm::new(&[c.d], ()),
            head: Linear::with_bias(c.d, c.v, false, ()),
        }
    }

    /// Logits `[b, t, v]` of tokens `[b, t]` (on the model's device).
    pub fn forward(&self, idx: &Tensor) -> Tensor {
        let t = idx.size(1);
        let pos = Tensor::arange(0.0, t as f64, 1.0, (DType::I64, idx.device()));
        let x = self
            .drop
            .forward(&(&self.tok.forward(idx) + &self.pos.forward(&pos)));
        self.head
            .forward(&self.ln_f.forward(&self.block.forward(&x)))
    }
}
