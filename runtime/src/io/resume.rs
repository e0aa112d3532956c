//! Checkpoint and resume: everything a training run needs to continue exactly where it
//! stopped, in one safetensors file written atomically.
//!
//! A [`TrainCheckpoint`] holds
//!
//! - the model's `state_dict` (parameters and buffers) under `model.{name}`,
//! - the optimizer's [`StateDict`] (slots as tensors under `optimizer.{name}`, learning
//!   rates and hyper-parameters as scalars),
//! - the learning-rate scheduler's state (scalars, under `scheduler.{name}`), if any,
//! - the epoch (the number of finished epochs) and the global step,
//! - the state of the global random generator (seed and offset), so dropout masks and
//!   anything else drawn from it continue the same stream,
//! - any scalars of the caller's (best accuracy so far, …).
//!
//! Scalars go into the file header's metadata as text (`f64` printed with `{}` parses back
//! to the same bits). Data loaders whose shuffling depends only on their seed and the epoch
//! (Flint's `DataLoader`) need no state of their own: resuming at an epoch boundary
//! replays the same batches.
//!
//! Training 2 epochs in one go, or 1 epoch + save + load into a fresh model, optimizer and
//! scheduler + 1 epoch, gives bit-identical weights on the CPU (tested below and in
//! `tests/resume.rs`).
//!
//! ```
//! use flint_runtime::io::TrainCheckpoint;
//! use flint_runtime::nn::{Linear, ModuleExt};
//! use flint_runtime::optim::{Adam, Optimizer};
//! let path = std::env::temp_dir().join(format!("flint-resume-doc-{}.safetensors", std::process::id()));
//! let model = Linear::new(3, 2, ());
//! let mut opt = Adam::adamw(model.parameters(), 1e-3);
//! // ... train an epoch ...
//! TrainCheckpoint::capture(&model, &opt, None, 1).with_scalar("best_acc", 0.5).save(&path).unwrap();
//!
//! let mut fresh = Linear::new(3, 2, ());
//! let mut opt2 = Adam::adamw(fresh.parameters(), 1e-3);
//! let ck = TrainCheckpoint::load(&path).unwrap();
//! ck.restore(&mut fresh, &mut opt2, None).unwrap();
//! assert_eq!(ck.epoch(), 1);
//! assert_eq!(ck.scalar("best_acc"), Some(0.5));
//! assert_eq!(fresh.weight.to_vec::<f32>(), model.weight.to_vec::<f32>());
//! std::fs::remove_file(&path).unwrap();
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use super::{load_tensors_with_metadata, save_tensors_with_metadata, Metadata};
use crate::error::{Error, Result};
use crate::nn::{Module, ModuleExt};
use crate::optim::{LrScheduler, Optimizer, StateDict};
use crate::random::with_global_generator;
use crate::tensor::Tensor;

/// The value of the metadata key `flint.checkpoint` that marks a training checkpoint.
const FORMAT: &str = "train-v1";

/// The saved state of a training run (see the module docs of `io::resume`).
#[derive(Clone, Debug)]
pub struct TrainCheckpoint {
    model: Vec<(String, Tensor)>,
    optimizer: StateDict,
    scheduler: Option<StateDict>,
    epoch: usize,
    step: u64,
    rng: (u64, u64),
    scalars: BTreeMap<String, f64>,
}

impl TrainCheckpoint {
    /// Captures the state of `model`, `optimizer` and `scheduler` after `epoch` finished
    /// epochs, and the global random generator's seed and offset. The tensors are shared
    /// with the model and optimizer, not copied: save the checkpoint before training on.
    ///
    /// ```
    /// use flint_runtime::io::TrainCheckpoint;
    /// use flint_runtime::nn::{Linear, ModuleExt};
    /// use flint_runtime::optim::{CosineAnnealingLR, Sgd};
    /// let model = Linear::new(2, 2, ());
    /// let mut opt = Sgd::new(model.parameters(), 0.1);
    /// let sched = CosineAnnealingLR::new(&mut opt, 10, 0.0);
    /// let ck = TrainCheckpoint::capture(&model, &opt, Some(&sched), 3);
    /// assert_eq!(ck.epoch(), 3);
    /// ```
    pub fn capture<M: Module + ?Sized>(
        model: &M,
        optimizer: &dyn Optimizer,
        scheduler: Option<&dyn LrScheduler>,
        epoch: usize,
    ) -> TrainCheckpoint {
        TrainCheckpoint {
            model: model.state_dict(),
            optimizer: optimizer.state_dict(),
            scheduler: scheduler.map(|s| s.state_dict()),
            epoch,
            step: 0,
            rng: with_global_generator(|g| (g.seed(), g.offset())),
            scalars: BTreeMap::new(),
        }
    }

    /// Records the global step (optimizer steps taken so far); 0 unless set.
    ///
    /// ```
    /// use flint_runtime::io::TrainCheckpoint;
    /// use flint_runtime::nn::{Linear, ModuleExt};
    /// use flint_runtime::optim::Sgd;
    /// let model = Linear::new(2, 2, ());
    /// let opt = Sgd::new(model.parameters(), 0.1);
    /// assert_eq!(TrainCheckpoint::capture(&model, &opt, None, 1).with_step(45).step(), 45);
    /// ```
    pub fn with_step(mut self, step: u64) -> Self {
        self.step = step;
        self
    }

    /// Adds a scalar of the caller's (read back with [`TrainCheckpoint::scalar`]).
    ///
    /// ```
    /// use flint_runtime::io::TrainCheckpoint;
    /// use flint_runtime::nn::{Linear, ModuleExt};
    /// use flint_runtime::optim::Sgd;
    /// let model = Linear::new(2, 2, ());
    /// let opt = Sgd::new(model.parameters(), 0.1);
    /// let ck = TrainCheckpoint::capture(&model, &opt, None, 1).with_scalar("best", 0.9);
    /// assert_eq!(ck.scalar("best"), Some(0.9));
    /// ```
    pub fn with_scalar(mut self, name: &str, value: f64) -> Self {
        self.scalars.insert(name.to_string(), value);
        self
    }

    /// The number of finished epochs: the epoch a resumed run starts with.
    ///
    /// ```
    /// use flint_runtime::io::TrainCheckpoint;
    /// use flint_runtime::nn::{Linear, ModuleExt};
    /// use flint_runtime::optim::Sgd;
    /// let model = Linear::new(2, 2, ());
    /// let opt = Sgd::new(model.parameters(), 0.1);
    /// assert_eq!(TrainCheckpoint::capture(&model, &opt, None, 7).epoch(), 7);
    /// ```
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// The global step recorded with [`TrainCheckpoint::with_step`].
    ///
    /// ```
    /// use flint_runtime::io::TrainCheckpoint;
    /// use flint_runtime::nn::{Linear, ModuleExt};
    /// use flint_runtime::optim::Sgd;
    /// let model = Linear::new(2, 2, ());
    /// let opt = Sgd::new(model.parameters(), 0.1);
    /// assert_eq!(TrainCheckpoint::capture(&model, &opt, None, 7).step(), 0);
    /// ```
    pub fn step(&self) -> u64 {
        self.step
    }

    /// A scalar added with [`TrainCheckpoint::with_scalar`].
    ///
    /// ```
    /// use flint_runtime::io::TrainCheckpoint;
    /// use flint_runtime::nn::{Linear, ModuleExt};
    /// use flint_runtime::optim::Sgd;
    /// let model = Linear::new(2, 2, ());
    /// let opt = Sgd::new(model.parameters(), 0.1);
    /// assert_eq!(TrainCheckpoint::capture(&model, &opt, None, 1).scalar("best"), None);
    /// ```
    pub fn scalar(&self, name: &str) -> Option<f64> {
        self.scalars.get(name).copied()
    }

    /// Writes the checkpoint to `path` atomically (a temporary file in the same folder,
    /// synced, then renamed over `path`): a crash or an error leaves any earlier file at
    /// `path` as it was. Errors name the path ([`Error::Io`], [`Error::Checkpoint`]).
    ///
    /// ```
    /// use flint_runtime::io::TrainCheckpoint;
    /// use flint_runtime::nn::{Linear, ModuleExt};
    /// use flint_runtime::optim::Sgd;
    /// let model = Linear::new(2, 2, ());
    /// let opt = Sgd::new(model.parameters(), 0.1);
    /// let ck = TrainCheckpoint::capture(&model, &opt, None, 1);
    /// let err = ck.save("/nonexistent-dir/ck.safetensors").unwrap_err();
    /// assert!(err.to_string().contains("/nonexistent-dir/ck.safetensors"), "{err}");
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut tensors = Vec::new();
        let mut meta = Metadata::new();
        meta.insert("flint.checkpoint".into(), FORMAT.into());
        meta.insert("epoch".into(), self.epoch.to_string());
        meta.insert("step".into(), self.step.to_string());
        meta.insert("rng.seed".into(), self.rng.0.to_string());
        meta.insert("rng.offset".into(), self.rng.1.to_string());
        for (k, t) in &self.model {
            tensors.push((format!("model.{k}"), t.clone()));
        }
        let mut put = |prefix: &str, sd: &StateDict| {
            for (k, t) in &sd.tensors {
                tensors.push((format!("{prefix}.{k}"), t.clone()));
            }
            for (k, v) in &sd.scalars {
                meta.insert(format!("{prefix}.{k}"), format!("{v}"));
            }
        };
        put("optimizer", &self.optimizer);
        if let Some(s) = &self.scheduler {
            put("scheduler", s);
            meta.insert("scheduler".into(), "1".into());
        }
        for (k, v) in &self.scalars {
            meta.insert(format!("scalar.{k}"), format!("{v}"));
        }
        save_tensors_with_metadata(path, &tensors, &meta)
    }

    /// Reads a checkpoint written by [`TrainCheckpoint::save`]. A missing or unreadable
    /// file is an [`Error::Io`]; a file that is not a training checkpoint (a plain model
    /// file, say) or whose header is damaged is an [`Error::Checkpoint`] naming the path
    /// and what is wrong.
    ///
    /// ```
    /// use flint_runtime::io::{save_tensors, TrainCheckpoint};
    /// use flint_runtime::Tensor;
    /// let path = std::env::temp_dir().join(format!("flint-resume-notck-{}.safetensors", std::process::id()));
    /// save_tensors(&path, &[("w".into(), Tensor::zeros([2], ()))]).unwrap();
    /// let err = TrainCheckpoint::load(&path).unwrap_err();
    /// assert!(err.to_string().contains("not a training checkpoint"), "{err}");
    /// std::fs::remove_file(&path).unwrap();
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<TrainCheckpoint> {
        let path = path.as_ref();
        let (tensors, meta) = load_tensors_with_metadata(path)?;
        let bad = |msg: String| Error::checkpoint(path, msg);
        match meta.get("flint.checkpoint").map(String::as_str) {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(bad(format!(
                    "a training checkpoint of format `{other}`, this Flint reads `{FORMAT}`"
                )));
            }
            None => {
                return Err(bad(
                    "not a training checkpoint (no `flint.checkpoint` entry in its metadata; \
                     a model file loads with ModuleExt::load)"
                        .into(),
                ));
            }
        }
        let int = |key: &str| -> Result<u64> {
            let v = meta
                .get(key)
                .ok_or_else(|| bad(format!("metadata `{key}` is missing")))?;
            v.parse()
                .map_err(|_| bad(format!("metadata `{key}` is `{v}`, not an integer")))
        };
        let epoch = int("epoch")?;
        let step = int("step")?;
        let rng = (int("rng.seed")?, int("rng.offset")?);
        let mut model = Vec::new();
        let mut optimizer = StateDict::new();
        let mut scheduler = meta.contains_key("scheduler").then(StateDict::new);
        for (k, t) in tensors {
            if let Some(name) = k.strip_prefix("model.") {
                model.push((name.to_string(), t));
            } else if let Some(name) = k.strip_prefix("optimizer.") {
                optimizer.tensors.push((name.to_string(), t));
            } else {
                return Err(bad(format!("unexpected tensor `{k}`")));
            }
        }
        let mut scalars = BTreeMap::new();
        for (k, v) in &meta {
            let value = || -> Result<f64> {
                v.parse()
                    .map_err(|_| bad(format!("metadata `{k}` is `{v}`, not a number")))
            };
            if let Some(name) = k.strip_prefix("optimizer.") {
                optimizer.scalars.push((name.to_string(), value()?));
            } else if let Some(name) = k.strip_prefix("scheduler.") {
                match scheduler.as_mut() {
                    Some(s) => s.scalars.push((name.to_string(), value()?)),
                    None => return Err(bad(format!("`{k}` but no scheduler entry"))),
                }
            } else if let Some(name) = k.strip_prefix("scalar.") {
                scalars.insert(name.to_string(), value()?);
            }
        }
        Ok(TrainCheckpoint {
            model,
            optimizer,
            scheduler,
            epoch: epoch as usize,
            step,
            rng,
            scalars,
        })
    }

    /// Restores the state into `model`, `optimizer` and `scheduler` (built the same way as
    /// those that were saved) and sets the global random generator to the saved seed and
    /// offset. All or nothing: when any part does not fit (a different architecture,
    /// another optimizer kind, a scheduler given but none saved or the reverse) the error
    /// lists the problems and nothing is changed.
    ///
    /// ```
    /// use flint_runtime::io::TrainCheckpoint;
    /// use flint_runtime::nn::{Linear, ModuleExt};
    /// use flint_runtime::optim::Sgd;
    /// let model = Linear::new(2, 2, ());
    /// let opt = Sgd::new(model.parameters(), 0.1);
    /// let ck = TrainCheckpoint::capture(&model, &opt, None, 1);
    /// let mut other = Linear::new(3, 2, ());
    /// let before = other.weight.to_vec::<f32>();
    /// let mut opt2 = Sgd::new(other.parameters(), 0.1);
    /// let err = ck.restore(&mut other, &mut opt2, None).unwrap_err();
    /// assert!(err.to_string().contains("weight: expected shape [2, 3], got [2, 2]"), "{err}");
    /// assert_eq!(other.weight.to_vec::<f32>(), before);
    /// ```
    pub fn restore<M: Module + ?Sized>(
        &self,
        model: &mut M,
        optimizer: &mut dyn Optimizer,
        scheduler: Option<&mut dyn LrScheduler>,
    ) -> Result<()> {
        // Checked first: the model's load checks everything before writing.
        model.check_state_dict(&self.model, true)?;
        let saved_opt = optimizer.state_dict();
        optimizer.load_state_dict(&self.optimizer)?;
        let sched_result = match (scheduler, &self.scheduler) {
            (Some(s), Some(state)) => s.load_state_dict(state),
            (None, None) => Ok(()),
            (Some(_), None) => Err(Error::StateDict(
                "a scheduler was given but the checkpoint holds none".into(),
            )),
            (None, Some(_)) => Err(Error::StateDict(
                "the checkpoint holds a scheduler's state but no scheduler was given".into(),
            )),
        };
        let result = sched_result.and_then(|()| model.load_state_dict(&self.model, true));
        if let Err(e) = result {
            // the optimizer replaces its state tensors on every step, so the state
            // captured before holds the old values: put it back
            optimizer.load_state_dict(&saved_opt)?;
            return Err(e);
        }
        with_global_generator(|g| g.set_state(self.rng.0, self.rng.1));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::CrossEntropy;
    use crate::nn::{Dropout, Forward, Linear};
    use crate::optim::{Adam, CosineAnnealingLR, Sgd, StepLR};
    use crate::random::{manual_seed, Generator};
    use crate::DType;

    struct Net {
        a: Linear,
        drop: Dropout,
        b: Linear,
    }
    impl Module for Net {
        fn visit(&self, v: &mut crate::nn::Visitor<'_>) {
            v.child("a", &self.a);
            v.child("drop", &self.drop);
            v.child("b", &self.b);
        }
        fn visit_mut(&mut self, v: &mut crate::nn::VisitorMut<'_>) {
            v.child("a", &mut self.a);
            v.child("drop", &mut self.drop);
            v.child("b", &mut self.b);
        }
    }
    impl Net {
        fn new() -> Net {
            Net {
                a: Linear::new(4, 8, ()),
                drop: Dropout::new(0.3),
                b: Linear::new(8, 3, ()),
            }
        }
        fn forward(&self, x: &Tensor) -> Tensor {
            self.b
                .forward(&self.drop.forward(&self.a.forward(x).relu()))
        }
    }

    fn data() -> (Tensor, Tensor) {
        let mut g = Generator::new(7);
        let x = g.randn([24, 4], DType::F32);
        let y = g.try_randint(0, 3, &[24]).unwrap();
        (x, y)
    }

    /// One epoch: 3 batches of 8, each shuffled by the global generator (as a loader
    /// drawing from it would), dropout on.
    fn epoch(net: &Net, opt: &mut Adam, sched: &mut CosineAnnealingLR) {
        let (x, y) = data();
        let perm = Tensor::randperm(24);
        let loss_fn = CrossEntropy::new().label_smoothing(0.1);
        for b in 0..3 {
            let idx = perm.narrow(0, b * 8, 8);
            let logits = net.forward(&x.index_select(0, &idx));
            let loss = loss_fn.forward(&logits, &y.index_select(0, &idx));
            opt.zero_grad();
            loss.backward();
            opt.step();
        }
        sched.step(opt);
    }

    fn weights(net: &Net) -> Vec<Vec<u32>> {
        (net.state_dict().iter())
            .map(|(_, t)| t.to_vec::<f32>().iter().map(|v| v.to_bits()).collect())
            .collect()
    }

    fn fresh() -> (Net, Adam, CosineAnnealingLR) {
        let net = Net::new();
        let mut opt = Adam::adamw(net.parameters(), 1e-2).weight_decay(0.01);
        let sched = CosineAnnealingLR::new(&mut opt, 4, 1e-4);
        (net, opt, sched)
    }

    #[test]
    fn resumed_training_is_bit_identical_to_uninterrupted_training() {
        let path = std::env::temp_dir().join(format!(
            "flint-resume-test-{}.safetensors",
            std::process::id()
        ));
        manual_seed(11);
        let (net, mut opt, mut sched) = fresh();
        epoch(&net, &mut opt, &mut sched);
        epoch(&net, &mut opt, &mut sched);
        let straight = weights(&net);
        let straight_lr = opt.groups()[0].lr;

        manual_seed(11);
        let (net, mut opt, mut sched) = fresh();
        epoch(&net, &mut opt, &mut sched);
        TrainCheckpoint::capture(&net, &opt, Some(&sched), 1)
            .with_step(3)
            .save(&path)
            .unwrap();
        // the run dies; the global generator moves on in between
        manual_seed(999);
        let _ = Tensor::randn([100], DType::F32);

        let (mut net2, mut opt2, mut sched2) = fresh();
        let ck = TrainCheckpoint::load(&path).unwrap();
        ck.restore(&mut net2, &mut opt2, Some(&mut sched2)).unwrap();
        assert_eq!((ck.epoch(), ck.step()), (1, 3));
        epoch(&net2, &mut opt2, &mut sched2);
        assert_eq!(weights(&net2), straight);
        assert_eq!(opt2.groups()[0].lr.to_bits(), straight_lr.to_bits());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_mismatched_restore_changes_nothing() {
        manual_seed(3);
        let (net, mut opt, mut sched) = fresh();
        epoch(&net, &mut opt, &mut sched);
        let ck = TrainCheckpoint::capture(&net, &opt, Some(&sched), 1);

        // a different optimizer kind: the optimizer's load fails first
        let (mut net2, _, _) = fresh();
        let before = weights(&net2);
        let mut sgd = Sgd::new(net2.parameters(), 0.1).momentum(0.9);
        let err = ck.restore(&mut net2, &mut sgd, None).unwrap_err();
        assert!(matches!(err, Error::StateDict(_)), "{err}");
        assert_eq!(weights(&net2), before);

        // the right optimizer but another scheduler kind: the optimizer is rolled back
        let (mut net3, mut opt3, _) = fresh();
        let mut step_lr = StepLR::new(&mut opt3, 2, 0.5);
        let opt_before = opt3.state_dict();
        let gen_before = crate::random::with_global_generator(|g| g.clone());
        assert!(ck
            .restore(&mut net3, &mut opt3, Some(&mut step_lr))
            .is_err());
        assert!(opt3.state_dict().tensors.is_empty());
        assert_eq!(opt3.state_dict().scalars, opt_before.scalars);
        assert_eq!(
            crate::random::with_global_generator(|g| g.clone()),
            gen_before
        );

        // no scheduler given for a checkpoint with one
        let (mut net4, mut opt4, _) = fresh();
        let err = ck.restore(&mut net4, &mut opt4, None).unwrap_err();
        assert!(err.to_string().contains("no scheduler was given"), "{err}");
        assert!(opt4.state_dict().tensors.is_empty());
    }

    #[test]
    fn damaged_metadata_is_an_error_naming_the_key() {
        let path = std::env::temp_dir().join(format!(
            "flint-resume-bad-{}.safetensors",
            std::process::id()
        ));
        let t = vec![("model.w".to_string(), Tensor::zeros([1], ()))];
        let mut meta = Metadata::new();
        meta.insert("flint.checkpoint".into(), FORMAT.into());
        meta.insert("epoch".into(), "two".into());
        save_tensors_with_metadata(&path, &t, &meta).unwrap();
        let err = TrainCheckpoint::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("metadata `epoch` is `two`, not an integer"),
            "{err}"
        );
        meta.insert("epoch".into(), "2".into());
        save_tensors_with_metadata(&path, &t, &meta).unwrap();
        let err = TrainCheckpoint::load(&path).unwrap_err().to_string();
        assert!(err.contains("metadata `step` is missing"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
