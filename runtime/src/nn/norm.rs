//! `LayerNorm` and `BatchNorm1d/2d/3d`.

use super::functional::{self, RunningStats};
use super::init;
use super::module::{Forward, Module, Visitor, VisitorMut};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::fmt_shape;
use crate::tensor::{Tensor, TensorOptions};

/// Layer normalisation over the trailing `normalized_shape` dims, with an elementwise
/// affine `weight` (ones) and `bias` (zeros) of that shape.
///
/// ```
/// use flint_runtime::nn::{Forward, LayerNorm};
/// use flint_runtime::Tensor;
/// let ln = LayerNorm::new(&[4], ());
/// let y = ln.forward(&Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [1, 4]));
/// assert!(y.mean_all().item::<f32>().abs() < 1e-6);
/// assert!(ln.try_forward(&Tensor::zeros([2, 5], ())).unwrap_err().to_string()
///     .contains("LayerNorm: expected input of shape [.., 4], got [2, 5]"));
/// ```
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// The trailing dims normalised over.
    pub normalized_shape: Vec<usize>,
    /// Scale, of `normalized_shape` (absent without elementwise affine).
    pub weight: Option<Tensor>,
    /// Shift, of `normalized_shape`.
    pub bias: Option<Tensor>,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// With `eps = 1e-5` and an elementwise affine.
    pub fn new(normalized_shape: &[usize], opts: impl Into<TensorOptions>) -> LayerNorm {
        LayerNorm::with_config(normalized_shape, 1e-5, true, opts)
    }

    /// With a chosen `eps`, and an affine or not.
    pub fn with_config(
        normalized_shape: &[usize],
        eps: f64,
        affine: bool,
        opts: impl Into<TensorOptions>,
    ) -> LayerNorm {
        let opts = opts.into();
        LayerNorm {
            normalized_shape: normalized_shape.to_vec(),
            weight: affine.then(|| init::ones(normalized_shape, opts)),
            bias: affine.then(|| init::zeros(normalized_shape, opts)),
            eps,
        }
    }
}

impl Module for LayerNorm {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.param_opt("weight", self.weight.as_ref());
        v.param_opt("bias", self.bias.as_ref());
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.param_opt("weight", self.weight.as_mut());
        v.param_opt("bias", self.bias.as_mut());
    }
    fn extra_repr(&self) -> String {
        format!(
            "({},), eps={:e}, elementwise_affine={}",
            self.normalized_shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.eps,
            self.weight.is_some()
        )
    }
}

impl Forward for LayerNorm {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        functional::layer_norm(
            x,
            &self.normalized_shape,
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.eps,
        )
    }
}

/// Options of a batch norm; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormConfig {
    /// Added to the variance (`1e-5`).
    pub eps: f64,
    /// Weight of each new batch in the running statistics (`Some(0.1)`); `None` keeps a
    /// cumulative average.
    pub momentum: Option<f64>,
    /// Learnable `weight` and `bias` (`true`).
    pub affine: bool,
    /// Keep running statistics for evaluation (`true`).
    pub track_running_stats: bool,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig {
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            track_running_stats: true,
        }
    }
}

/// Batch normalisation over the channel dim 1, for `D`-dimensional spatial inputs:
/// [`BatchNorm1d`] (`[N, C]` or `[N, C, L]`), [`BatchNorm2d`] (`[N, C, H, W]`),
/// [`BatchNorm3d`] (`[N, C, D, H, W]`).
///
/// Training normalises with the batch statistics (biased variance) and updates
/// `running_mean`/`running_var` with the unbiased variance; evaluation uses the running
/// statistics.
///
/// ```
/// use flint_runtime::nn::{BatchNorm2d, Forward, ModuleExt};
/// use flint_runtime::Tensor;
/// let mut bn = BatchNorm2d::new(3, ());
/// let y = bn.forward(&Tensor::randn([4, 3, 5, 5], ()));
/// assert_eq!(y.shape(), &[4, 3, 5, 5]);
/// assert_eq!(bn.num_batches_tracked.as_ref().unwrap().item::<i64>(), 1);
/// bn.eval();
/// let names: Vec<String> = bn.state_dict().into_iter().map(|(n, _)| n).collect();
/// assert_eq!(names, ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]);
/// ```
#[derive(Debug, Clone)]
pub struct BatchNorm<const D: usize> {
    /// Per-channel scale `[C]` (ones).
    pub weight: Option<Tensor>,
    /// Per-channel shift `[C]` (zeros).
    pub bias: Option<Tensor>,
    /// Running mean `[C]` (zeros).
    pub running_mean: Option<Tensor>,
    /// Running unbiased variance `[C]` (ones).
    pub running_var: Option<Tensor>,
    /// Batches seen (i64 scalar).
    pub num_batches_tracked: Option<Tensor>,
    /// The options.
    pub config: BatchNormConfig,
    num_features: usize,
    training: bool,
}

/// Batch norm over `[N, C]` or `[N, C, L]`.
pub type BatchNorm1d = BatchNorm<1>;
/// Batch norm over `[N, C, H, W]`.
pub type BatchNorm2d = BatchNorm<2>;
/// Batch norm over `[N, C, D, H, W]`.
pub type BatchNorm3d = BatchNorm<3>;

impl<const D: usize> BatchNorm<D> {
    /// With PyTorch's defaults.
    pub fn new(num_features: usize, opts: impl Into<TensorOptions>) -> Self {
        Self::with_config(num_features, BatchNormConfig::default(), opts)
    }

    /// With chosen options.
    pub fn with_config(
        num_features: usize,
        config: BatchNormConfig,
        opts: impl Into<TensorOptions>,
    ) -> Self {
        let opts = opts.into();
        let c = [num_features];
        let track = config.track_running_stats;
        BatchNorm {
            weight: config.affine.then(|| init::ones(c, opts)),
            bias: config.affine.then(|| init::zeros(c, opts)),
            running_mean: track.then(|| Tensor::zeros(c, opts)),
            running_var: track.then(|| Tensor::ones(c, opts)),
            num_batches_tracked: track
                .then(|| Tensor::zeros([0usize; 0], (DType::I64, opts.device))),
            config,
            num_features,
            training: true,
        }
    }

    fn name() -> &'static str {
        match D {
            1 => "BatchNorm1d",
            2 => "BatchNorm2d",
            _ => "BatchNorm3d",
        }
    }
}

impl<const D: usize> Module for BatchNorm<D> {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.param_opt("weight", self.weight.as_ref());
        v.param_opt("bias", self.bias.as_ref());
        if let (Some(m), Some(var), Some(n)) = (
            &self.running_mean,
            &self.running_var,
            &self.num_batches_tracked,
        ) {
            v.buffer("running_mean", m);
            v.buffer("running_var", var);
            v.buffer("num_batches_tracked", n);
        }
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.param_opt("weight", self.weight.as_mut());
        v.param_opt("bias", self.bias.as_mut());
        if let (Some(m), Some(var), Some(n)) = (
            &mut self.running_mean,
            &mut self.running_var,
            &mut self.num_batches_tracked,
        ) {
            v.buffer("running_mean", m);
            v.buffer("running_var", var);
            v.buffer("num_batches_tracked", n);
        }
    }
    fn type_name(&self) -> String {
        Self::name().into()
    }
    fn extra_repr(&self) -> String {
        format!(
            "{}, eps={:e}, momentum={}, affine={}, track_running_stats={}",
            self.num_features,
            self.config.eps,
            self.config
                .momentum
                .map_or("None".to_string(), |m| m.to_string()),
            self.config.affine,
            self.config.track_running_stats
        )
    }
    fn set_own_training(&mut self, training: bool) {
        self.training = training;
    }
    fn own_training(&self) -> Option<bool> {
        Some(self.training)
    }
}

impl<const D: usize> Forward for BatchNorm<D> {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        let ranks: &[usize] = if D == 1 { &[2, 3] } else { &[D + 2] };
        if !ranks.contains(&x.ndim()) || x.size(1) != self.num_features {
            let c = self.num_features;
            let expected = match D {
                1 => format!("[N, {c}] or [N, {c}, L]"),
                2 => format!("[N, {c}, H, W]"),
                _ => format!("[N, {c}, D, H, W]"),
            };
            return Err(Error::shape(
                Self::name(),
                format!(
                    "expected input of shape {expected}, got {}",
                    fmt_shape(x.shape())
                ),
            ));
        }
        let stats = match (
            &self.running_mean,
            &self.running_var,
            &self.num_batches_tracked,
        ) {
            (Some(mean), Some(var), Some(n)) => Some(RunningStats {
                mean,
                var,
                num_batches_tracked: n,
                momentum: self.config.momentum,
            }),
            _ => None,
        };
        functional::batch_norm(
            x,
            stats,
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.training,
            self.config.eps,
        )
    }
}

crate::impl_module_display!(LayerNorm);

impl<const D: usize> std::fmt::Display for BatchNorm<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&super::Summary(self), f)
    }
}
