//! The Module trait and the basic layers: names, state dicts, modes, moves, freezing,
//! summaries, values worked out by hand, gradchecks and wrong-shape messages.

use flint::autograd::{gradcheck, GradcheckOptions};
use flint::nn::functional::{self, RunningStats};
use flint::nn::{
    BatchNorm1d, BatchNorm2d, BatchNormConfig, Dropout, Dropout2d, Embedding, Forward, LayerNorm,
    Linear, Module, ModuleExt, ReLU, Residual, Sequential, VariationalDropout, Visitor, VisitorMut,
};
use flint::{manual_seed, DType, Generator, Tensor};

/// A hand-written module with nested children, a list and a buffer: what
/// `#[derive(Module)]` will generate.
struct Block {
    fc: Linear,
    bn: BatchNorm1d,
    drop: Dropout,
}

impl Module for Block {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.child("fc", &self.fc);
        v.child("bn", &self.bn);
        v.child("drop", &self.drop);
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.child("fc", &mut self.fc);
        v.child("bn", &mut self.bn);
        v.child("drop", &mut self.drop);
    }
}

struct Net {
    embed: Embedding,
    layers: Vec<Block>,
    head: Linear,
    scale: Tensor,
}

impl Module for Net {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.child("embed", &self.embed);
        v.child("layers", &self.layers);
        v.child("head", &self.head);
        v.param("scale", &self.scale);
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.child("embed", &mut self.embed);
        v.child("layers", &mut self.layers);
        v.child("head", &mut self.head);
        v.param("scale", &mut self.scale);
    }
}

fn block(d: usize) -> Block {
    Block {
        fc: Linear::new(d, d, ()),
        bn: BatchNorm1d::new(d, ()),
        drop: Dropout::new(0.5),
    }
}

fn net() -> Net {
    Net {
        embed: Embedding::new(10, 4, ()),
        layers: vec![block(4), block(4)],
        head: Linear::with_bias(4, 2, false, ()),
        scale: flint::nn::init::ones([1], ()),
    }
}

#[test]
fn dotted_names_follow_pytorch_state_dict_keys() {
    let n = net();
    let names: Vec<String> = n.state_dict().into_iter().map(|(k, _)| k).collect();
    let mut want = vec!["embed.weight".to_string()];
    for i in 0..2 {
        for k in [
            "fc.weight",
            "fc.bias",
            "bn.weight",
            "bn.bias",
            "bn.running_mean",
            "bn.running_var",
            "bn.num_batches_tracked",
        ] {
            want.push(format!("layers.{i}.{k}"));
        }
    }
    want.push("head.weight".into());
    want.push("scale".into());
    assert_eq!(names, want);
    let params: Vec<String> = n.named_parameters().into_iter().map(|(k, _)| k).collect();
    assert_eq!(params.len(), 1 + 2 * 4 + 2);
    assert_eq!(n.named_buffers().len(), 6);
    assert_eq!(n.num_parameters(), 40 + 2 * (16 + 4 + 4 + 4) + 8 + 1);
}

#[test]
fn train_and_eval_reach_every_child() {
    let mut n = net();
    assert!(n.is_training());
    n.eval();
    assert!(!n.is_training());
    assert!(!n.layers[1].drop.is_training());
    assert!(!n.layers[0].bn.is_training());
    n.train();
    assert!(n.layers[1].bn.is_training());
}

#[test]
fn freezing_by_prefix_and_trainable_counts() {
    let n = net();
    assert_eq!(n.freeze_prefix("layers.0"), 4);
    assert!(!n.layers[0].fc.weight.requires_grad());
    assert!(n.layers[1].fc.weight.requires_grad());
    assert_eq!(
        n.num_trainable_parameters(),
        n.num_parameters() - (16 + 4 + 4 + 4)
    );
    n.freeze();
    assert_eq!(n.trainable_parameters().len(), 0);
    n.unfreeze();
    assert_eq!(n.num_trainable_parameters(), n.num_parameters());
    // a frozen layer gets no gradient
    let fc = Linear::new(3, 2, DType::F64);
    fc.freeze();
    let x = Tensor::ones([1, 3], DType::F64).requires_grad_(true);
    fc.forward(&x).sum_all().backward();
    assert!(fc.weight.grad().is_none());
    assert!(x.grad().is_some());
}

#[test]
fn load_state_dict_lists_every_problem_and_changes_nothing() {
    let src = net();
    let mut dst = net();
    let before = dst.head.weight.to_vec::<f32>();
    let mut state = src.state_dict();
    state.retain(|(k, _)| k != "layers.1.fc.bias");
    state.push(("layers.9.fc.weight".into(), Tensor::zeros([1], ())));
    for (k, t) in state.iter_mut() {
        if k == "head.weight" {
            *t = Tensor::zeros([3, 4], ());
        }
    }
    let err = dst.load_state_dict(&state, true).unwrap_err().to_string();
    assert!(err.contains("missing layers.1.fc.bias"), "{err}");
    assert!(err.contains("unexpected layers.9.fc.weight"), "{err}");
    assert!(
        err.contains("head.weight: expected shape [2, 4], got [3, 4]"),
        "{err}"
    );
    assert_eq!(dst.head.weight.to_vec::<f32>(), before);
    // a good state dict is copied in place: handles held elsewhere see the new values
    let held = dst.head.weight.clone();
    dst.load_state_dict(&src.state_dict(), true).unwrap();
    assert_eq!(held.to_vec::<f32>(), src.head.weight.to_vec::<f32>());
    assert!(held.requires_grad() && held.is_leaf());
    // non-strict loading ignores missing and unexpected keys
    let partial = vec![("scale".to_string(), Tensor::full([1], 3.0, DType::F64))];
    dst.load_state_dict(&partial, false).unwrap();
    assert_eq!(dst.scale.to_vec::<f32>(), vec![3.0]);
}

#[test]
fn dtype_and_device_moves_keep_parameters_trainable_leaves() {
    let mut n = net();
    n.layers[0].fc.weight.requires_grad_(false);
    n.to_dtype(DType::F64).unwrap();
    assert_eq!(n.head.weight.dtype(), DType::F64);
    assert_eq!(
        n.layers[0].bn.running_mean.as_ref().unwrap().dtype(),
        DType::F64
    );
    // counters stay integers
    let nbt = n.layers[0].bn.num_batches_tracked.as_ref().unwrap();
    assert_eq!(nbt.dtype(), DType::I64);
    assert!(n.head.weight.requires_grad() && n.head.weight.is_leaf());
    assert!(!n.layers[0].fc.weight.requires_grad());
    n.to_device(flint::Device::Cpu).unwrap();
    assert_eq!(n.head.weight.device(), flint::Device::Cpu);
}

#[test]
fn summary_prints_the_tree_like_pytorch() {
    let n = net();
    let s = n.summary();
    let want = "Net(
  (embed): Embedding(10, 4)
  (layers): ModuleList(
    (0): Block(
      (fc): Linear(in_features=4, out_features=4, bias=true)
      (bn): BatchNorm1d(4, eps=1e-5, momentum=0.1, affine=true, track_running_stats=true)
      (drop): Dropout(p=0.5, inplace=false)
    )
    (1): Block(
      (fc): Linear(in_features=4, out_features=4, bias=true)
      (bn): BatchNorm1d(4, eps=1e-5, momentum=0.1, affine=true, track_running_stats=true)
      (drop): Dropout(p=0.5, inplace=false)
    )
  )
  (head): Linear(in_features=4, out_features=2, bias=false)
)";
    assert_eq!(s, want);
    let table = n.parameter_table();
    assert!(table.contains("layers.1.bn.running_var"), "{table}");
    assert!(table.contains(&format!("total {} parameters", n.num_parameters())));
    assert_eq!(
        format!("{}", Linear::new(2, 3, ())),
        "Linear(in_features=2, out_features=3, bias=true)"
    );
}

#[test]
fn linear_matches_hand_computation_and_pytorch_init_bounds() {
    manual_seed(3);
    let fc = Linear::new(4, 3, DType::F64);
    let bound = 0.5; // 1/sqrt(4)
    for v in fc
        .weight
        .to_vec::<f64>()
        .into_iter()
        .chain(fc.bias.as_ref().unwrap().to_vec::<f64>())
    {
        assert!(v.abs() <= bound);
    }
    let x = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0], [1, 4]);
    let w = fc.weight.to_vec::<f64>();
    let b = fc.bias.as_ref().unwrap().to_vec::<f64>();
    let y = fc.forward(&x).to_vec::<f64>();
    for o in 0..3 {
        let want: f64 = (0..4).map(|i| w[o * 4 + i] * (i + 1) as f64).sum::<f64>() + b[o];
        assert!((y[o] - want).abs() < 1e-12);
    }
    // [b, t, in] inputs
    assert_eq!(
        fc.forward(&Tensor::zeros([2, 5, 4], DType::F64)).shape(),
        &[2, 5, 3]
    );
}

#[test]
fn wrong_input_shapes_name_the_layer_and_both_shapes() {
    type Call = Box<dyn Fn() -> Tensor + std::panic::RefUnwindSafe>;
    let cases: Vec<(Call, &str)> = vec![
        (
            Box::new(|| Linear::new(8, 4, ()).forward(&Tensor::zeros([2, 7], ()))),
            "Linear: expected input of shape [.., 8], got [2, 7]",
        ),
        (
            Box::new(|| LayerNorm::new(&[6], ()).forward(&Tensor::zeros([2, 5], ()))),
            "LayerNorm: expected input of shape [.., 6], got [2, 5]",
        ),
        (
            Box::new(|| BatchNorm2d::new(3, ()).forward(&Tensor::zeros([2, 4, 5, 5], ()))),
            "BatchNorm2d: expected input of shape [N, 3, H, W], got [2, 4, 5, 5]",
        ),
        (
            Box::new(|| BatchNorm1d::new(3, ()).forward(&Tensor::zeros([2, 3, 4, 4], ()))),
            "BatchNorm1d: expected input of shape [N, 3] or [N, 3, L], got [2, 3, 4, 4]",
        ),
        (
            Box::new(|| Dropout2d::new(0.5).forward(&Tensor::zeros([2, 3], ()))),
            "Dropout2d: expected input of rank 4 ([N, C, ..]) or 3 ([C, ..]), got [2, 3]",
        ),
        (
            Box::new(|| {
                Sequential::new()
                    .add(Linear::new(4, 8, ()))
                    .add(ReLU)
                    .add(Linear::new(6, 2, ()))
                    .forward(&Tensor::zeros([1, 4], ()))
            }),
            "Linear: expected input of shape [.., 6], got [1, 8]",
        ),
    ];
    for (f, want) in cases {
        let err = std::panic::catch_unwind(&*f).expect_err("wrong shape must panic");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains(want), "{msg:?} should contain {want:?}");
        // and the caller's line
        assert!(msg.contains("tests/nn_layers.rs"), "{msg}");
    }
    let e = Embedding::new(5, 2, ()).try_forward(&Tensor::from_vec(vec![7i64], [1]));
    assert_eq!(
        e.unwrap_err().to_string(),
        "Embedding: index 7 out of range for 5 embeddings (indices of shape [1])"
    );
}

#[test]
fn embedding_padding_row_is_zero_and_gets_no_gradient() {
    manual_seed(0);
    let emb = Embedding::with_padding(6, 3, Some(2), DType::F64);
    assert_eq!(emb.weight.i(2).to_vec::<f64>(), vec![0.0; 3]);
    let ids = Tensor::from_vec(vec![2i64, 1, 2, 5, 1, 0], [2, 3]);
    let y = emb.forward(&ids);
    assert_eq!(y.shape(), &[2, 3, 3]);
    assert_eq!(y.i((0, 1)).to_vec::<f64>(), emb.weight.i(1).to_vec::<f64>());
    y.sum_all().backward();
    let g = emb.weight.grad().unwrap();
    assert_eq!(g.i(2).to_vec::<f64>(), vec![0.0; 3]); // padding
    assert_eq!(g.i(1).to_vec::<f64>(), vec![2.0; 3]); // looked up twice
    assert_eq!(g.i(3).to_vec::<f64>(), vec![0.0; 3]); // never looked up
    assert_eq!(g.i(5).to_vec::<f64>(), vec![1.0; 3]);
}

#[test]
fn batchnorm_by_hand_and_cumulative_momentum() {
    // [N=4, C=1]: mean 2.5, biased var 1.25, unbiased 5/3
    let x = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0], [4, 1]);
    let bn = BatchNorm1d::with_config(
        1,
        BatchNormConfig {
            momentum: None,
            ..Default::default()
        },
        DType::F64,
    );
    let y = bn.forward(&x).to_vec::<f64>();
    let s = (1.25f64 + 1e-5).sqrt();
    for (i, v) in y.iter().enumerate() {
        assert!((v - (i as f64 + 1.0 - 2.5) / s).abs() < 1e-12);
    }
    // momentum None: the running stats are the cumulative average; after one batch
    // they equal the batch statistics
    assert!((bn.running_mean.as_ref().unwrap().item::<f64>() - 2.5).abs() < 1e-12);
    assert!((bn.running_var.as_ref().unwrap().item::<f64>() - 5.0 / 3.0).abs() < 1e-12);
    let x2 = Tensor::from_vec(vec![0.0f64, 0.0, 2.0, 2.0], [4, 1]);
    bn.forward(&x2);
    // mean of (2.5, 1.0); mean of (5/3, 4/3)
    assert!((bn.running_mean.as_ref().unwrap().item::<f64>() - 1.75).abs() < 1e-12);
    assert!((bn.running_var.as_ref().unwrap().item::<f64>() - 1.5).abs() < 1e-12);
    // a single value per channel cannot be normalised in training
    assert!(bn.try_forward(&Tensor::zeros([1, 1], DType::F64)).is_err());
}

#[test]
fn batchnorm3d_normalises_each_channel_over_batch_and_volume() {
    let bn = flint::nn::BatchNorm3d::new(3, DType::F64);
    let x = Generator::new(4).normal([2, 3, 2, 3, 2], 5.0, 3.0, DType::F64);
    let y = bn.forward(&x);
    let mean = y.mean([0isize, 2, 3, 4].as_slice(), false).to_vec::<f64>();
    let var = y
        .var([0isize, 2, 3, 4].as_slice(), 0, false)
        .to_vec::<f64>();
    for c in 0..3 {
        assert!(mean[c].abs() < 1e-12, "{mean:?}");
        assert!((var[c] - 1.0).abs() < 1e-3, "{var:?}"); // eps = 1e-5 shrinks it slightly
    }
    // running mean moved 10% of the way to the batch mean
    let bm = x.mean([0isize, 2, 3, 4].as_slice(), false).to_vec::<f64>();
    let rm = bn.running_mean.as_ref().unwrap().to_vec::<f64>();
    for c in 0..3 {
        assert!((rm[c] - 0.1 * bm[c]).abs() < 1e-12);
    }
    let err = bn
        .try_forward(&Tensor::zeros([2, 3, 4, 4], DType::F64))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "BatchNorm3d: expected input of shape [N, 3, D, H, W], got [2, 3, 4, 4]"
    );
}

#[test]
fn dropout_scales_in_training_and_is_identity_in_eval() {
    manual_seed(5);
    let mut d = Dropout::new(0.25);
    let y = d
        .forward(&Tensor::ones([20000], DType::F64))
        .to_vec::<f64>();
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
    assert!((kept - 0.75).abs() < 0.02, "kept {kept}");
    assert!(y
        .iter()
        .all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-12));
    d.eval();
    let x = Tensor::randn([5], DType::F64);
    assert_eq!(d.forward(&x).to_vec::<f64>(), x.to_vec::<f64>());
    // channel dropout: whole [H, W] planes
    let d2 = Dropout2d::new(0.5);
    let y = d2.forward(&Tensor::ones([4, 8, 3, 3], ()));
    for n in 0..4 {
        for c in 0..8 {
            let plane = y.i((n, c)).to_vec::<f32>();
            assert!(plane.iter().all(|&v| v == plane[0]));
        }
    }
}

#[test]
fn variational_dropout_reuses_one_mask_per_sequence() {
    manual_seed(11);
    let mut d = VariationalDropout::new(0.5, true);
    let x = Tensor::ones([16, 7, 32], DType::F64);
    let y = d.forward(&x);
    // the same mask at every time step within a sequence
    for t in 1..7 {
        assert_eq!(y.i((.., t)).to_vec::<f64>(), y.i((.., 0)).to_vec::<f64>());
    }
    // different masks across sequences (rows of the batch) and across calls
    let m = y.i((.., 0));
    let distinct_rows = (1..16)
        .filter(|&b| m.i(b).to_vec::<f64>() != m.i(0).to_vec::<f64>())
        .count();
    assert!(distinct_rows >= 14, "{distinct_rows}");
    let y2 = d.forward(&x);
    assert_ne!(y2.to_vec::<f64>(), y.to_vec::<f64>());
    // values are 0 or 1/(1-p)
    assert!(y.to_vec::<f64>().iter().all(|&v| v == 0.0 || v == 2.0));
    // time-major layout: the mask is shared along dim 0
    let dt = VariationalDropout::new(0.5, false);
    let yt = dt.forward(&Tensor::ones([5, 3, 8], DType::F64));
    for t in 1..5 {
        assert_eq!(yt.i(t).to_vec::<f64>(), yt.i(0).to_vec::<f64>());
    }
    // eval is the identity
    d.eval();
    let r = Tensor::randn([2, 3, 4], DType::F64);
    assert_eq!(d.forward(&r).to_vec::<f64>(), r.to_vec::<f64>());
    assert!(d.mask(2, 4, DType::F64).is_none());
}

#[test]
fn residual_and_sequential_compose() {
    manual_seed(1);
    let inner = Linear::new(3, 3, DType::F64);
    let (w, b) = (inner.weight.clone(), inner.bias.clone().unwrap());
    let r = Residual::new(inner);
    let x = Tensor::randn([2, 3], DType::F64);
    let want = &x + (x.matmul(&w.t()) + &b);
    assert_eq!(r.forward(&x).to_vec::<f64>(), want.to_vec::<f64>());
    let names: Vec<String> = r.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["weight", "bias"]);
    let seq = Sequential::new()
        .add(Linear::new(3, 5, ()))
        .add(ReLU)
        .add(Linear::new(5, 1, ()));
    let names: Vec<String> = seq.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0.weight", "0.bias", "2.weight", "2.bias"]);
}

fn opts() -> GradcheckOptions {
    GradcheckOptions::default()
}

#[test]
fn gradcheck_of_the_functional_layers() {
    let mut g = Generator::new(3);
    let x = g.randn([3, 4], DType::F64);
    let w = g.randn([2, 4], DType::F64);
    let b = g.randn([2], DType::F64);
    gradcheck(
        |t| functional::linear(&t[0], &t[1], Some(&t[2])).unwrap(),
        &[x.clone(), w, b],
        opts(),
    )
    .unwrap();
    let lw = g.randn([4], DType::F64);
    let lb = g.randn([4], DType::F64);
    gradcheck(
        |t| functional::layer_norm(&t[0], &[4], Some(&t[1]), Some(&t[2]), 1e-5).unwrap(),
        &[x.clone(), lw, lb],
        opts(),
    )
    .unwrap();
    let xb = g.randn([4, 3, 2], DType::F64);
    let bw = g.randn([3], DType::F64);
    let bb = g.randn([3], DType::F64);
    gradcheck(
        |t| functional::batch_norm(&t[0], None, Some(&t[1]), Some(&t[2]), true, 1e-5).unwrap(),
        &[xb.clone(), bw.clone(), bb.clone()],
        opts(),
    )
    .unwrap();
    // eval mode on running statistics
    let (m, v, n) = (
        g.randn([3], DType::F64),
        g.uniform([3], 0.5, 2.0, DType::F64),
        Tensor::zeros([0usize; 0], DType::I64),
    );
    gradcheck(
        |t| {
            let stats = RunningStats {
                mean: &m,
                var: &v,
                num_batches_tracked: &n,
                momentum: Some(0.1),
            };
            functional::batch_norm(&t[0], Some(stats), Some(&t[1]), Some(&t[2]), false, 1e-5)
                .unwrap()
        },
        &[xb, bw, bb],
        opts(),
    )
    .unwrap();
    let (q, k, vv) = (
        g.randn([2, 3, 4], DType::F64),
        g.randn([2, 5, 4], DType::F64),
        g.randn([2, 5, 4], DType::F64),
    );
    let mask = functional::padding_mask(&[5, 2], 5)
        .logical_not()
        .unsqueeze(1);
    gradcheck(
        |t| {
            functional::scaled_dot_product_attention(
                &t[0],
                &t[1],
                &t[2],
                Some(&mask),
                true,
                0.0,
                false,
                None,
            )
            .unwrap()
        },
        &[q, k, vv],
        opts(),
    )
    .unwrap();
    // embedding: gradient with respect to the table (without a padding row, whose
    // gradient is zero by definition, not by calculus)
    let table = g.randn([5, 3], DType::F64);
    let ids = Tensor::from_vec(vec![1i64, 4, 1, 0], [2, 2]);
    gradcheck(
        |t| {
            let e = Embedding {
                weight: t[0].clone(),
                padding_idx: None,
            };
            e.forward(&ids)
        },
        &[table],
        opts(),
    )
    .unwrap();
}
