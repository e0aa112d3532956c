//! Loss functions with PyTorch's semantics: cross-entropy (label smoothing, ignored
//! targets, class weights), NLL, MSE, L1 and binary cross-entropy with logits.
//!
//! Each loss is a small configuration struct with builder methods and a `forward`; the
//! plain functions ([`cross_entropy`], [`mse_loss`], …) use PyTorch's defaults. All are
//! compositions of differentiable tensor ops, so they work with autograd to any order.
//!
//! ```
//! use flint_runtime::loss::{CrossEntropy, Reduction};
//! use flint_runtime::Tensor;
//! let logits = Tensor::from_vec(vec![2.0f64, 0.5, -1.0, 0.1, 0.2, 3.0], [2, 3]);
//! let targets = Tensor::from_vec(vec![0i64, 2], [2]);
//! let loss = CrossEntropy::new().label_smoothing(0.1).forward(&logits, &targets);
//! assert_eq!(loss.shape(), &[] as &[usize]);
//! let per_row = CrossEntropy::new().reduction(Reduction::None).forward(&logits, &targets);
//! assert_eq!(per_row.shape(), &[2]);
//! ```

use crate::dtype::DType;
use crate::error::{or_panic, Error, Result};
use crate::layout::fmt_shape;
use crate::tensor::Tensor;

/// How per-element losses are combined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// The (weighted) mean, PyTorch's default.
    #[default]
    Mean,
    /// The sum.
    Sum,
    /// No reduction: one loss per element.
    None,
}

/// Cross-entropy between logits `[N, C]` (or `[N, C, d…]`, classes on dim 1) and class
/// indices `[N]` (or `[N, d…]`), like `torch.nn.CrossEntropyLoss`.
#[derive(Clone, Debug)]
pub struct CrossEntropy {
    weight: Option<Tensor>,
    ignore_index: i64,
    label_smoothing: f64,
    reduction: Reduction,
}

impl Default for CrossEntropy {
    fn default() -> Self {
        CrossEntropy {
            weight: None,
            ignore_index: -100,
            label_smoothing: 0.0,
            reduction: Reduction::Mean,
        }
    }
}

impl CrossEntropy {
    /// PyTorch's defaults: no weights, `ignore_index = -100`, no smoothing, mean.
    pub fn new() -> Self {
        Self::default()
    }
    /// A weight per class (`[C]`).
    pub fn weight(mut self, weight: Tensor) -> Self {
        self.weight = Some(weight);
        self
    }
    /// Targets equal to this index contribute no loss and no gradient.
    pub fn ignore_index(mut self, index: i64) -> Self {
        self.ignore_index = index;
        self
    }
    /// Mixes the one-hot target with the uniform distribution: `(1-ε)·onehot + ε/C`.
    pub fn label_smoothing(mut self, eps: f64) -> Self {
        self.label_smoothing = eps;
        self
    }
    /// How the per-element losses are combined.
    pub fn reduction(mut self, r: Reduction) -> Self {
        self.reduction = r;
        self
    }

    /// The loss; panics on bad shapes, dtypes or targets (see [`CrossEntropy::try_forward`]).
    #[track_caller]
    pub fn forward(&self, logits: &Tensor, targets: &Tensor) -> Tensor {
        or_panic(self.try_forward(logits, targets))
    }

    /// Fallible [`CrossEntropy::forward`].
    #[track_caller]
    pub fn try_forward(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        const OP: &str = "cross_entropy";
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return Err(Error::shape(
                OP,
                format!(
                    "label_smoothing must be in [0, 1], got {}",
                    self.label_smoothing
                ),
            ));
        }
        let logp = class_last_log_probs(OP, logits, targets)?;
        let c = logp.size(-1);
        let nll = NllLoss {
            weight: self.weight.clone(),
            ignore_index: self.ignore_index,
            reduction: self.reduction,
        };
        let (per_elem, valid_w) = nll.per_element(OP, &logp, targets)?;
        let loss = if self.label_smoothing > 0.0 {
            // −Σ_c w_c log p_c, zero at ignored positions
            let lw = match &self.weight {
                Some(w) => &logp * w.to_dtype(logp.dtype()),
                None => logp.clone(),
            };
            let valid = targets.ne(self.ignore_index);
            let smooth = lw.sum(-1, false).neg().where_(&valid, 0.0);
            per_elem * (1.0 - self.label_smoothing) + smooth * (self.label_smoothing / c as f64)
        } else {
            per_elem
        };
        Ok(reduce(loss, self.reduction, &valid_w))
    }
}

/// The negative log-likelihood of log-probabilities `[N, C]` (or `[N, C, d…]`) at class
/// indices, like `torch.nn.NLLLoss`.
#[derive(Clone, Debug)]
pub struct NllLoss {
    weight: Option<Tensor>,
    ignore_index: i64,
    reduction: Reduction,
}

impl Default for NllLoss {
    fn default() -> Self {
        NllLoss {
            weight: None,
            ignore_index: -100,
            reduction: Reduction::Mean,
        }
    }
}

impl NllLoss {
    /// PyTorch's defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// A weight per class.
    pub fn weight(mut self, weight: Tensor) -> Self {
        self.weight = Some(weight);
        self
    }
    /// Targets equal to this index are ignored.
    pub fn ignore_index(mut self, index: i64) -> Self {
        self.ignore_index = index;
        self
    }
    /// How the per-element losses are combined.
    pub fn reduction(mut self, r: Reduction) -> Self {
        self.reduction = r;
        self
    }

    /// The loss of log-probabilities (classes on dim 1).
    #[track_caller]
    pub fn forward(&self, log_probs: &Tensor, targets: &Tensor) -> Tensor {
        or_panic(self.try_forward(log_probs, targets))
    }

    /// Fallible [`NllLoss::forward`].
    #[track_caller]
    pub fn try_forward(&self, log_probs: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let logp = class_last("nll_loss", log_probs, targets)?;
        let (per, w) = self.per_element("nll_loss", &logp, targets)?;
        Ok(reduce(per, self.reduction, &w))
    }

    /// Per-element `−w[t]·log p[t]` (0 where ignored) and the weights `w[t]` (0 where
    /// ignored), for log-probabilities with the classes last.
    #[track_caller]
    fn per_element(
        &self,
        op: &'static str,
        logp: &Tensor,
        targets: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let c = logp.size(-1) as i64;
        let valid = targets.ne(self.ignore_index);
        let safe = targets.where_(&valid, 0);
        let bad = safe.lt(0).logical_or(safe.ge(c));
        if bad.any() {
            let t = targets.masked_select(&bad).to_vec::<i64>()[0];
            return Err(Error::index(
                op,
                format!("target {t} is out of range for {c} classes"),
            ));
        }
        let picked = logp.gather(-1, &safe.unsqueeze(-1)).squeeze_dim(-1);
        let w = match &self.weight {
            Some(w) => {
                if w.shape() != [c as usize] {
                    return Err(Error::shape(
                        op,
                        format!("weight must have shape [{c}], got {}", fmt_shape(w.shape())),
                    ));
                }
                w.to_dtype(logp.dtype())
                    .index_select(0, &safe.reshape([-1]))
                    .reshape(safe.shape())
            }
            None => Tensor::ones(safe.shape(), (logp.dtype(), logp.device())),
        };
        let w = w.where_(&valid, 0.0);
        Ok(((picked * &w).neg(), w))
    }
}

/// Checks shapes and returns log-probabilities with the class dim moved last.
#[track_caller]
fn class_last_log_probs(op: &'static str, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(class_last(op, logits, targets)?.log_softmax(-1))
}

#[track_caller]
fn class_last(op: &'static str, x: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if targets.dtype() != DType::I64 {
        return Err(Error::dtype(
            op,
            format!("targets must be i64 class indices, got {}", targets.dtype()),
        ));
    }
    let ok = x.ndim() >= 2 && targets.ndim() == x.ndim() - 1 && {
        let mut s = x.shape().to_vec();
        s.remove(1);
        s == targets.shape()
    };
    if !ok {
        return Err(Error::shape(
            op,
            format!(
                "input of shape {} (N, C, d…) does not match targets of shape {} (N, d…)",
                fmt_shape(x.shape()),
                fmt_shape(targets.shape())
            ),
        ));
    }
    if !x.dtype().is_float() {
        return Err(Error::dtype(
            op,
            format!("input must be floating-point, got {}", x.dtype()),
        ));
    }
    let n = x.ndim() as isize;
    let mut perm: Vec<isize> = vec![0];
    perm.extend(2..n);
    perm.push(1);
    Ok(x.permute(perm))
}

/// Combines per-element losses; `weights` are the per-element weights whose sum is the
/// mean's denominator (PyTorch's weighted mean).
fn reduce(loss: Tensor, r: Reduction, weights: &Tensor) -> Tensor {
    match r {
        Reduction::None => loss,
        Reduction::Sum => loss.sum_all(),
        Reduction::Mean => loss.sum_all() / weights.sum_all(),
    }
}

fn plain_reduce(loss: Tensor, r: Reduction) -> Tensor {
    match r {
        Reduction::None => loss,
        Reduction::Sum => loss.sum_all(),
        Reduction::Mean => loss.mean_all(),
    }
}

#[track_caller]
fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!(
                "input of shape {} and target of shape {} differ",
                fmt_shape(a.shape()),
                fmt_shape(b.shape())
            ),
        ));
    }
    Ok(())
}

/// Cross-entropy with PyTorch's defaults (see [`CrossEntropy`]).
#[track_caller]
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    CrossEntropy::new().forward(logits, targets)
}

/// NLL with PyTorch's defaults (see [`NllLoss`]).
#[track_caller]
pub fn nll_loss(log_probs: &Tensor, targets: &Tensor) -> Tensor {
    NllLoss::new().forward(log_probs, targets)
}

/// Mean squared error `mean((x − y)²)` with a reduction.
///
/// ```
/// use flint_runtime::{loss::{mse_loss, Reduction}, Tensor};
/// let x = Tensor::from_vec(vec![1.0f64, 2.0], [2]);
/// let y = Tensor::from_vec(vec![0.0f64, 0.0], [2]);
/// assert_eq!(mse_loss(&x, &y, Reduction::Mean).item::<f64>(), 2.5);
/// ```
#[track_caller]
pub fn mse_loss(input: &Tensor, target: &Tensor, reduction: Reduction) -> Tensor {
    or_panic(same_shape("mse_loss", input, target));
    plain_reduce((input - target).square(), reduction)
}

/// Mean absolute error `mean(|x − y|)` with a reduction.
#[track_caller]
pub fn l1_loss(input: &Tensor, target: &Tensor, reduction: Reduction) -> Tensor {
    or_panic(same_shape("l1_loss", input, target));
    plain_reduce((input - target).abs(), reduction)
}

/// Binary cross-entropy on logits, computed stably:
/// `max(x, 0) − x·y + log(1 + e^{−|x|})`, with an optional `pos_weight` (broadcast over
/// the last dim) scaling the positive term, like `BCEWithLogitsLoss`.
///
/// ```
/// use flint_runtime::{loss::{binary_cross_entropy_with_logits, Reduction}, Tensor};
/// let x = Tensor::from_vec(vec![0.0f64], [1]);
/// let y = Tensor::from_vec(vec![1.0f64], [1]);
/// let l = binary_cross_entropy_with_logits(&x, &y, None, Reduction::Mean).item::<f64>();
/// assert!((l - std::f64::consts::LN_2).abs() < 1e-12);
/// ```
#[track_caller]
pub fn binary_cross_entropy_with_logits(
    input: &Tensor,
    target: &Tensor,
    pos_weight: Option<&Tensor>,
    reduction: Reduction,
) -> Tensor {
    or_panic(same_shape(
        "binary_cross_entropy_with_logits",
        input,
        target,
    ));
    // log(1 + e^{-|x|}) + max(-x, 0) = -log σ(x)
    let softplus_neg = (input.abs().neg().exp() + 1.0).log() + input.neg().relu();
    let loss = match pos_weight {
        None => input - input * target + &softplus_neg,
        Some(pw) => {
            let coef = (pw - 1.0) * target + 1.0;
            (1.0 - target) * input + coef * softplus_neg
        }
    };
    plain_reduce(loss, reduction)
}

/// [`mse_loss`] as a module struct (`torch.nn.MSELoss`).
///
/// ```
/// use flint_runtime::loss::{MseLoss, Reduction};
/// use flint_runtime::Tensor;
/// let l = MseLoss::new().reduction(Reduction::Sum);
/// let x = Tensor::from_vec(vec![1.0f64, 2.0], [2]);
/// assert_eq!(l.forward(&x, &Tensor::zeros([2], flint_runtime::DType::F64)).item::<f64>(), 5.0);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct MseLoss {
    reduction: Reduction,
}

/// [`l1_loss`] as a module struct (`torch.nn.L1Loss`).
#[derive(Clone, Copy, Debug, Default)]
pub struct L1Loss {
    reduction: Reduction,
}

macro_rules! plain_loss {
    ($t:ident, $f:ident, $name:literal) => {
        impl $t {
            /// Mean reduction, PyTorch's default.
            pub fn new() -> Self {
                Self::default()
            }
            /// Sets the reduction.
            pub fn reduction(mut self, r: Reduction) -> Self {
                self.reduction = r;
                self
            }
            /// The loss; panics when the shapes differ.
            #[track_caller]
            pub fn forward(&self, input: &Tensor, target: &Tensor) -> Tensor {
                or_panic(self.try_forward(input, target))
            }
            /// Fallible [`Self::forward`].
            pub fn try_forward(&self, input: &Tensor, target: &Tensor) -> Result<Tensor> {
                same_shape($name, input, target)?;
                Ok($f(input, target, self.reduction))
            }
        }
    };
}
plain_loss!(MseLoss, mse_loss, "mse_loss");
plain_loss!(L1Loss, l1_loss, "l1_loss");

/// [`binary_cross_entropy_with_logits`] as a module struct (`torch.nn.BCEWithLogitsLoss`).
///
/// ```
/// use flint_runtime::loss::BceWithLogitsLoss;
/// use flint_runtime::Tensor;
/// let l = BceWithLogitsLoss::new();
/// let x = Tensor::from_vec(vec![0.0f64], [1]);
/// let y = Tensor::from_vec(vec![1.0f64], [1]);
/// assert!((l.forward(&x, &y).item::<f64>() - std::f64::consts::LN_2).abs() < 1e-12);
/// ```
#[derive(Clone, Debug, Default)]
pub struct BceWithLogitsLoss {
    pos_weight: Option<Tensor>,
    reduction: Reduction,
}

impl BceWithLogitsLoss {
    /// No positive weight, mean reduction.
    pub fn new() -> Self {
        Self::default()
    }
    /// Weights the positive term (broadcast over the last dim).
    pub fn pos_weight(mut self, w: Tensor) -> Self {
        self.pos_weight = Some(w);
        self
    }
    /// Sets the reduction.
    pub fn reduction(mut self, r: Reduction) -> Self {
        self.reduction = r;
        self
    }
    /// The loss; panics when the shapes differ.
    #[track_caller]
    pub fn forward(&self, input: &Tensor, target: &Tensor) -> Tensor {
        or_panic(self.try_forward(input, target))
    }
    /// Fallible [`Self::forward`].
    pub fn try_forward(&self, input: &Tensor, target: &Tensor) -> Result<Tensor> {
        same_shape("binary_cross_entropy_with_logits", input, target)?;
        Ok(binary_cross_entropy_with_logits(
            input,
            target,
            self.pos_weight.as_ref(),
            self.reduction,
        ))
    }
}

// Losses are modules too (no parameters; a class weight is a buffer, as in PyTorch), so
// they can sit inside a model and move with it.
macro_rules! loss_module {
    ($t:ident, $field:ident, $buf:literal) => {
        impl crate::nn::Module for $t {
            fn visit(&self, v: &mut crate::nn::Visitor<'_>) {
                if let Some(w) = &self.$field {
                    v.buffer($buf, w);
                }
            }
            fn visit_mut(&mut self, v: &mut crate::nn::VisitorMut<'_>) {
                if let Some(w) = &mut self.$field {
                    v.buffer($buf, w);
                }
            }
        }
    };
    ($t:ident) => {
        impl crate::nn::Module for $t {
            fn visit(&self, _: &mut crate::nn::Visitor<'_>) {}
            fn visit_mut(&mut self, _: &mut crate::nn::VisitorMut<'_>) {}
        }
    };
}
loss_module!(CrossEntropy, weight, "weight");
loss_module!(NllLoss, weight, "weight");
loss_module!(BceWithLogitsLoss, pos_weight, "pos_weight");
loss_module!(MseLoss);
loss_module!(L1Loss);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::{gradcheck, GradcheckOptions};
    use crate::Generator;

    #[test]
    fn weighted_mean_divides_by_the_weights_of_the_targets() {
        let logits = Generator::new(1).randn([4, 3], DType::F64);
        let t = Tensor::from_vec(vec![0i64, 2, -100, 1], [4]);
        let w = Tensor::from_vec(vec![1.0f64, 2.0, 3.0], [3]);
        let per = CrossEntropy::new()
            .weight(w.clone())
            .reduction(Reduction::None)
            .forward(&logits, &t);
        let mean = CrossEntropy::new().weight(w).forward(&logits, &t);
        let p = per.to_vec::<f64>();
        assert_eq!(p[2], 0.0);
        let want = (p[0] + p[1] + p[3]) / (1.0 + 3.0 + 2.0);
        assert!((mean.item::<f64>() - want).abs() < 1e-12);
        // the same as NLL on log-softmax
        let nll = NllLoss::new().forward(&logits.log_softmax(1), &t);
        let ce = cross_entropy(&logits, &t);
        assert!((nll.item::<f64>() - ce.item::<f64>()).abs() < 1e-12);
    }

    #[test]
    fn bad_targets_and_shapes_are_clear_errors() {
        let logits = Tensor::zeros([2, 3], DType::F64);
        let e = CrossEntropy::new()
            .try_forward(&logits, &Tensor::from_vec(vec![0i64, 3], [2]))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("target 3 is out of range for 3 classes"),
            "{e}"
        );
        let e = CrossEntropy::new()
            .try_forward(&logits, &Tensor::from_vec(vec![0i64], [1]))
            .unwrap_err();
        assert!(
            e.to_string().contains("[2, 3]") && e.to_string().contains("[1]"),
            "{e}"
        );
        assert!(CrossEntropy::new()
            .try_forward(&logits, &Tensor::zeros([2], DType::F32))
            .is_err());
    }

    #[test]
    fn loss_structs_are_modules_with_weight_buffers() {
        use crate::nn::ModuleExt;
        let w = Tensor::from_vec(vec![1.0f64, 2.0], [2]);
        let ce = CrossEntropy::new().weight(w);
        let names: Vec<String> = ce.state_dict().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["weight"]);
        assert_eq!(ce.num_parameters(), 0);
        let x = Tensor::from_vec(vec![1.0f64, -2.0], [2]);
        let y = Tensor::from_vec(vec![0.0f64, 1.0], [2]);
        assert_eq!(L1Loss::new().forward(&x, &y).item::<f64>(), 2.0);
        assert!(MseLoss::new()
            .try_forward(&x, &Tensor::zeros([3], DType::F64))
            .is_err());
    }

    #[test]
    fn regression_losses_and_bce() {
        let x = Tensor::from_vec(vec![1.0f64, -2.0, 3.0], [3]);
        let y = Tensor::from_vec(vec![0.0f64, 1.0, 1.0], [3]);
        assert_eq!(l1_loss(&x, &y, Reduction::Sum).item::<f64>(), 6.0);
        assert_eq!(
            mse_loss(&x, &y, Reduction::None).to_vec::<f64>(),
            vec![1.0, 9.0, 4.0]
        );
        let bce = binary_cross_entropy_with_logits(&x, &y, None, Reduction::None).to_vec::<f64>();
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let want = [-(1.0 - sig(1.0)).ln(), -sig(-2.0).ln(), -sig(3.0).ln()];
        for (a, b) in bce.iter().zip(want) {
            assert!((a - b).abs() < 1e-12);
        }
        let pw = Tensor::from_vec(vec![2.0f64], [1]);
        let wb =
            binary_cross_entropy_with_logits(&x, &y, Some(&pw), Reduction::None).to_vec::<f64>();
        assert!((wb[1] - 2.0 * want[1]).abs() < 1e-12 && (wb[0] - want[0]).abs() < 1e-12);
        // stable for large logits
        let big = Tensor::from_vec(vec![1000.0f64, -1000.0], [2]);
        let l = binary_cross_entropy_with_logits(
            &big,
            &Tensor::from_vec(vec![1.0f64, 0.0], [2]),
            None,
            Reduction::Sum,
        );
        assert!(l.item::<f64>().abs() < 1e-12);
    }

    #[test]
    fn losses_pass_gradcheck() {
        let mut g = Generator::new(9);
        let (x, y) = (g.randn([3, 4], DType::F64), g.randn([3, 4], DType::F64));
        let t = Tensor::from_vec(vec![1i64, 3, -100], [3]);
        let w = Tensor::from_vec(vec![0.5f64, 1.0, 2.0, 1.5], [4]);
        let o = GradcheckOptions::default();
        gradcheck(
            |v| {
                CrossEntropy::new()
                    .weight(w.clone())
                    .label_smoothing(0.2)
                    .forward(&v[0], &t)
            },
            std::slice::from_ref(&x),
            o,
        )
        .unwrap();
        gradcheck(
            |v| mse_loss(&v[0], &v[1], Reduction::Mean),
            &[x.clone(), y.clone()],
            o,
        )
        .unwrap();
        gradcheck(
            |v| l1_loss(&v[0], &v[1], Reduction::Sum),
            &[x.clone(), y.clone()],
            o,
        )
        .unwrap();
        let yb = g.rand([3, 4], DType::F64);
        gradcheck(
            |v| binary_cross_entropy_with_logits(&v[0], &yb, Some(&w), Reduction::Mean),
            &[x],
            o,
        )
        .unwrap();
    }
}
