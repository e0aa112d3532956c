//! Checkpoints: a PyTorch model's safetensors `state_dict` loads into the same model
//! written with `#[derive(Module)]` and gives PyTorch's outputs; save → load is
//! bit-identical; bad loads list every problem and leave the model untouched; damaged
//! files are errors, not panics; a failed save keeps the file that was there.
//!
//! The fixtures come from `tests/fixtures/make_torch_checkpoint.py` (torch 2.15, run
//! with `~/.venvs/flint-torch/bin/python tests/fixtures/make_torch_checkpoint.py`).

use flint::io::{load_tensors, save_tensors};
use flint::nn::{
    BatchNorm1d, Conv1d, Conv1dConfig, Embedding, LayerNorm, Linear, TransformerEncoderLayer,
    TransformerLayerConfig,
};
use flint::prelude::*;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fresh, empty directory for one test.
fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flint-ckpt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `Net` of make_torch_checkpoint.py; the field names give PyTorch's `state_dict` keys.
#[derive(Module)]
struct Net {
    embed: Embedding,
    conv: Conv1d,
    bn: BatchNorm1d,
    encoder: TransformerEncoderLayer,
    norm: LayerNorm,
    head: Linear,
}

fn encoder_config() -> TransformerLayerConfig {
    TransformerLayerConfig {
        dim_feedforward: 16,
        dropout: 0.0,
        batch_first: true,
        ..Default::default()
    }
}

impl Net {
    fn new() -> Net {
        Net {
            embed: Embedding::new(11, 8, ()),
            conv: Conv1d::with_config(8, 8, 3, Conv1dConfig::default().padding(1), ()),
            bn: BatchNorm1d::new(8, ()),
            encoder: TransformerEncoderLayer::with_config(8, 2, encoder_config(), ()),
            norm: LayerNorm::new(&[8], ()),
            head: Linear::new(8, 3, ()),
        }
    }
}

impl Forward for Net {
    /// `ids` `[B, T]` → logits `[B, T, 3]`, as `Net.forward` in the script.
    fn try_forward(&self, ids: &Tensor) -> Result<Tensor> {
        let x = self.embed.try_forward(ids)?;
        let x = self.conv.try_forward(&x.transpose(1, 2))?;
        let x = self.bn.try_forward(&x)?.relu().transpose(1, 2);
        let x = self.encoder.try_forward(&x)?;
        let x = self.norm.try_forward(&x)?;
        self.head.try_forward(&x)
    }
}

/// The same model with one layer of the wrong size, one missing and one extra.
#[derive(Module)]
struct Mismatched {
    embed: Embedding, // 12 rows instead of 11
    conv: Conv1d,
    bn: BatchNorm1d,
    encoder: TransformerEncoderLayer,
    // no `norm`
    head: Linear,
    extra: Linear, // not in the file
}

fn io_tensor(name: &str) -> Tensor {
    let io = load_tensors(fixture("torch_model_io.safetensors")).unwrap();
    io.into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} not in the io fixture"))
        .1
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.to_f64_vec()
        .iter()
        .zip(b.to_f64_vec())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Every value of every state-dict entry, as exact bit patterns (dtype-independent).
fn snapshot(m: &impl Module) -> Vec<(String, Vec<u64>)> {
    m.state_dict()
        .into_iter()
        .map(|(n, t)| (n, t.to_f64_vec().into_iter().map(f64::to_bits).collect()))
        .collect()
}

#[test]
fn torch_checkpoint_loads_and_gives_torch_outputs() {
    manual_seed(0);
    let mut net = Net::new();
    net.load(fixture("torch_model.safetensors")).unwrap();
    net.eval();

    // The buffers came along: 3 training-mode forwards in the script.
    let bn = &net.bn;
    assert_eq!(bn.num_batches_tracked.as_ref().unwrap().item::<i64>(), 3);
    assert_eq!(bn.num_batches_tracked.as_ref().unwrap().dtype(), DType::I64);
    let rm = bn.running_mean.as_ref().unwrap().to_vec::<f32>();
    assert!(rm.iter().any(|&m| m.abs() > 1e-3), "running_mean {rm:?}");

    // BatchNorm1d alone, on running statistics.
    let bn_out = net.bn.forward(&io_tensor("bn_input"));
    let d = max_abs_diff(&bn_out, &io_tensor("bn_output"));
    assert!(d < 1e-5, "BatchNorm1d differs from torch by {d}");

    // The whole model.
    let ids = io_tensor("ids");
    assert_eq!(ids.dtype(), DType::I64);
    assert_eq!(ids.shape(), &[2, 5]);
    let want = io_tensor("logits");
    let got = net.forward(&ids);
    assert_eq!(got.shape(), &[2, 5, 3]);
    let d = max_abs_diff(&got, &want);
    eprintln!("max |flint - torch| over the logits: {d:e}");
    assert!(d < 1e-5, "logits differ from torch by {d}");
    // The first row as the script printed it (f32 values, printed by Python as the
    // exact f64 they widen to), so a silently regenerated fixture is noticed.
    let row = want.to_f64_vec()[..3].to_vec();
    assert_eq!(
        row,
        [1.3628363609313965, 0.4904986023902893, -0.30146652460098267]
    );
}

#[test]
fn the_torch_file_has_exactly_the_derived_names() {
    let mut file: Vec<String> = load_tensors(fixture("torch_model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut ours: Vec<String> = Net::new()
        .state_dict()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    file.sort();
    ours.sort();
    assert_eq!(file, ours);
    assert!(ours.contains(&"encoder.self_attn.in_proj_weight".to_string()));
    assert!(ours.contains(&"encoder.linear1.weight".to_string()));
    assert!(ours.contains(&"bn.num_batches_tracked".to_string()));
}

#[test]
fn save_then_load_is_bit_identical() {
    let dir = scratch("roundtrip");
    let path = dir.join("net.safetensors");
    manual_seed(1);
    let mut a = Net::new();
    // Move the batch-norm statistics away from their defaults.
    a.train();
    let ids = Tensor::from_vec((0..20).map(|i| i % 11).collect::<Vec<i64>>(), [4, 5]);
    let _ = flint::no_grad(|| a.forward(&ids));
    a.eval();
    a.save(&path).unwrap();

    manual_seed(2);
    let mut b = Net::new();
    assert_ne!(snapshot(&a), snapshot(&b));
    let params_before = b.parameters();
    b.load(&path).unwrap();
    b.eval();
    assert_eq!(snapshot(&a), snapshot(&b));
    // Loaded in place: the same parameter tensors (an optimizer would stay valid), still
    // trainable.
    for (p, q) in params_before.iter().zip(b.parameters()) {
        assert!(p.same_tensor(&q));
        assert!(q.requires_grad());
    }
    let ya = a.forward(&ids).to_vec::<f32>();
    let yb = b.forward(&ids).to_vec::<f32>();
    assert_eq!(
        ya.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        yb.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_mismatched_model_gets_one_error_naming_every_problem_and_stays_untouched() {
    let path = fixture("torch_model.safetensors");
    let mut m = Mismatched {
        embed: Embedding::new(12, 8, ()),
        conv: Conv1d::with_config(8, 8, 3, Conv1dConfig::default().padding(1), ()),
        bn: BatchNorm1d::new(8, ()),
        encoder: TransformerEncoderLayer::with_config(8, 2, encoder_config(), ()),
        head: Linear::new(8, 3, ()),
        extra: Linear::new(3, 2, ()),
    };
    let before = snapshot(&m);
    let err = m.load(&path).unwrap_err();
    assert!(matches!(err, Error::StateDict(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "state dict: {}: embed.weight: expected shape [12, 8], got [11, 8]; missing extra.weight; missing extra.bias; unexpected norm.bias; unexpected norm.weight",
            path.display()
        )
    );
    assert_eq!(snapshot(&m), before, "a failed load changed the model");

    // Non-strict: the missing and extra layers are fine, the wrong shape still is not.
    let err = m.load_with(&path, false).unwrap_err().to_string();
    assert!(
        err.ends_with("embed.weight: expected shape [12, 8], got [11, 8]"),
        "{err}"
    );
    assert_eq!(snapshot(&m), before);
    m.embed = Embedding::new(11, 8, ());
    m.load_with(&path, false).unwrap();
    let file = load_tensors(&path).unwrap();
    let head_w = &file.iter().find(|(n, _)| n == "head.weight").unwrap().1;
    assert_eq!(m.head.weight.to_vec::<f32>(), head_w.to_vec::<f32>());
}

#[test]
fn a_truncated_checkpoint_is_an_error_not_a_panic() {
    let dir = scratch("truncated");
    let bytes = std::fs::read(fixture("torch_model.safetensors")).unwrap();
    let cut_path = dir.join("cut.safetensors");
    let mut net = Net::new();
    let before = snapshot(&net);
    let mut cuts: Vec<usize> = (0..bytes.len()).step_by(97).collect();
    cuts.extend([1, 7, 8, 9, bytes.len() - 1]);
    for cut in cuts {
        std::fs::write(&cut_path, &bytes[..cut]).unwrap();
        let err = net.load(&cut_path).unwrap_err();
        assert!(
            matches!(err, Error::Checkpoint { .. }),
            "cut {cut}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("checkpoint {}: ", cut_path.display())),
            "{msg}"
        );
        assert!(msg.contains("truncated"), "cut {cut}: {msg}");
    }
    assert_eq!(snapshot(&net), before);

    // A missing file names itself.
    let missing = dir.join("nope.safetensors");
    let err = net.load(&missing).unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert!(err
        .to_string()
        .starts_with(&format!("{}: ", missing.display())));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn an_existing_checkpoint_survives_a_failed_save() {
    let dir = scratch("survive");
    let path = dir.join("net.safetensors");
    let net = Net::new();
    net.save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();

    // A save that fails before writing (two tensors with one name).
    let mut state = net.state_dict();
    state.push(state[0].clone());
    let err = save_tensors(&path, &state).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "checkpoint {}: two tensors are named `embed.weight`",
            path.display()
        )
    );
    assert_eq!(std::fs::read(&path).unwrap(), good);
    assert_eq!(files_in(&dir), ["net.safetensors"]);

    // A save into a directory that does not exist.
    let nowhere = dir.join("no-such-dir").join("net.safetensors");
    let err = net.save(&nowhere).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}: ", nowhere.display())) && msg.contains("No such file"),
        "{msg}"
    );

    // A save whose final rename fails (the target is a non-empty directory).
    let blocked = dir.join("blocked.safetensors");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("keep"), b"x").unwrap();
    assert!(net.save(&blocked).is_err());
    assert_eq!(files_in(&dir), ["blocked.safetensors", "net.safetensors"]);

    // The good file still loads.
    let mut again = Net::new();
    again.load(&path).unwrap();
    assert_eq!(snapshot(&again), snapshot(&net));
    std::fs::remove_dir_all(&dir).unwrap();
}
