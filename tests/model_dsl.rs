//! `model!` models at run time: the GPT of the `char_transformer` example trains, entry
//! checks name the model, the argument and both shapes, constructor relations on run-time
//! sizes are errors, and the generated modules have PyTorch's state-dict names.

#[path = "../examples/char_transformer.rs"]
#[allow(dead_code)]
mod gpt;

use flint::nn::ModuleExt;
use flint::{model, DType, Tensor};
use std::sync::{Mutex, MutexGuard};

/// Held by each test for its whole run: the tests draw parameters from the one global
/// generator, so a test running beside the training one would change what it draws
/// after its `manual_seed` (the GPT then trained from another start and, now and then,
/// missed the loss drop the test asks for).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn gpt_example_trains() {
    let _serial = serial();
    let text = include_str!("../README.md");
    let out = std::env::temp_dir().join(format!("flint-model-dsl-gpt-{}", std::process::id()));
    let cfg = gpt::Config {
        steps: 12,
        batch: 16,
        ctx: 32,
        layers: 2,
        dropout: 0.0,
        lr: 3e-3,
        label_smoothing: 0.0,
        small: true,
        eval_every: 6,
        sample: 24,
        out: out.clone(),
        progress: false,
        ..Default::default()
    };
    let r = gpt::train(text, &cfg).expect("trains");
    let _ = std::fs::remove_dir_all(&out);
    assert!(r.first_loss.is_finite() && r.last_loss.is_finite() && r.val_loss.is_finite());
    assert!(
        r.last_loss < r.first_loss - 0.3,
        "loss should fall: first {} last {}",
        r.first_loss,
        r.last_loss
    );
    assert_eq!(
        r.sample.chars().count(),
        "The ".len() + 24,
        "{:?}",
        r.sample
    );
}

#[test]
fn gpt_parameters_and_names_follow_pytorch() {
    let _serial = serial();
    let m = gpt::Gpt::<16, 2>::new(10, 8, 2, 0.0, ());
    // tok 10·16, pos 8·16; per block: 2 LayerNorms (4·16), attention (16·48 + 48 + 16·16 + 16),
    // FeedForward (16·64 + 64 + 64·16 + 16); final LayerNorm 2·16; head 16·10.
    let block = 4 * 16 + (16 * 48 + 48 + 16 * 16 + 16) + (16 * 64 + 64 + 64 * 16 + 16);
    assert_eq!(m.num_parameters(), 160 + 128 + 2 * block + 32 + 160);
    let keys: Vec<String> = m.state_dict().into_iter().map(|(k, _)| k).collect();
    for k in [
        "tok.weight",
        "blocks.0.ln1.weight",
        "blocks.0.attn.in_proj_weight",
        "blocks.0.attn.out_proj.bias",
        "blocks.1.mlp.linear1.weight",
        "blocks.1.mlp.linear2.bias",
        "head.weight",
    ] {
        assert!(keys.iter().any(|x| x == k), "missing {k} in {keys:?}");
    }
    assert!(!keys.iter().any(|k| k == "head.bias"));
}

#[test]
fn entry_checks_name_model_argument_and_shapes() {
    let _serial = serial();
    let m = gpt::Gpt::<16, 2>::new(10, 8, 1, 0.0, ());
    let long = Tensor::zeros([2, 9], DType::I64);
    assert_eq!(
        m.try_forward(&long).unwrap_err().to_string(),
        "Gpt::forward: `t <= ctx` does not hold (t = 9, ctx = 8)"
    );
    let floats = Tensor::zeros([2, 4], ());
    assert_eq!(
        m.try_forward(&floats).unwrap_err().to_string(),
        "Gpt::forward: argument `idx` should be integer (i64) ids, got f32"
    );
    let flat = Tensor::zeros([8], DType::I64);
    assert_eq!(
        m.try_forward(&flat).unwrap_err().to_string(),
        "Gpt::forward: argument `idx` should be [b, t], got [8]: rank 2, got rank 1"
    );
    assert_eq!(
        m.forward(&Tensor::zeros([3, 5], DType::I64)).shape(),
        &[3, 5, 10]
    );
}

model! {
    /// Sizes from the constructor, with a relation checked when it runs.
    struct Heads(d: usize, heads: usize) where d % heads == 0 {
        attn: MultiheadAttention(d, heads = heads),
        out: Linear(d -> 1),
    }
    fn forward(q: [b, t, d], kv: [b, s, d], pad: Mask[b, s]) -> [b, t, 1] {
        out(attn(q, kv, padding = pad))
    }
}

#[test]
fn runtime_sizes_and_relations() {
    let _serial = serial();
    let err = Heads::try_new(10, 4, ()).err().expect("10 % 4 != 0");
    assert_eq!(
        err.to_string(),
        "Heads::new: `d % heads == 0` does not hold (d = 10, heads = 4)"
    );
    let m = Heads::new(8, 2, ());
    let q = Tensor::ones([2, 3, 8], ());
    let kv = Tensor::ones([2, 5, 8], ());
    let pad = flint::nn::padding_mask(&[5, 3], 5);
    assert_eq!(m.forward(&q, &kv, &pad).shape(), &[2, 3, 1]);
    // s is bound by `kv` (5); a padding mask over 4 keys is caught on entry.
    let bad = flint::nn::padding_mask(&[4, 3], 4);
    assert_eq!(
        m.try_forward(&q, &kv, &bad).unwrap_err().to_string(),
        "Heads::forward: argument `pad` should be [b, s], got [2, 4]: s = 5 (from `kv`), got 4 at dim 1"
    );
    // d = 8 comes from the constructor.
    let q6 = Tensor::ones([2, 3, 6], ());
    assert_eq!(
        m.try_forward(&q6, &kv, &pad).unwrap_err().to_string(),
        "Heads::forward: argument `q` should be [b, t, d], got [2, 3, 6]: d = 8, got 6 at dim 2"
    );
}

#[test]
fn train_and_eval_reach_generated_children() {
    let _serial = serial();
    let mut m = gpt::Gpt::<16, 2>::new(10, 8, 2, 0.5, ());
    m.eval();
    assert!(!m.blocks[1].mlp.dropout.is_training());
    let x = Tensor::from_vec(vec![1i64, 2, 3, 4], [1, 4]);
    // Eval is deterministic even with dropout 0.5.
    let (a, b) = (m.forward(&x), m.forward(&x));
    assert_eq!(a.to_vec::<f32>(), b.to_vec::<f32>());
    m.train();
    assert!(m.blocks[0].mlp.dropout.is_training());
}
