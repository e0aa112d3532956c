//! Loss functions with PyTorch's semantics: cross-entropy (label smoothing, ignored
//! targets, class weights), NLL, MSE, L1 and binary cross-entropy with logits.
//!
//! Each loss is a small configuration struct with builder methods and a `forward`; the
//! plain functions ([`cross_entropy`], [`mse_loss`], …) use PyTorch's defaults. All are
//! compositions of differentiable tensor ops, so they work with autograd to any order,
//! except that cross-entropy of f32/f64 CPU logits runs the fused row kernels of
//! `cpu::cross_entropy` as one recorded node (`cross_entropy`), whose backward is one
//! pass over the logits (and, under `create_graph`, tensor ops). The fused path gives
//! ignored rows no gradient even where the mean divides by a zero total weight (the
//! composition's `0·∞` gives NaN there).
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

use crate::autograd::{is_grad_enabled, record};
use crate::cpu::cross_entropy::{self, IGNORED};
use crate::dtype::DType;
use crate::error::{or_panic, Error, Result};
use crate::layout::fmt_shape;
use crate::tensor::Tensor;
use crate::Device;

#[cfg(test)]
thread_local! {
    /// Test switch: when set, cross-entropy takes the composition (the reference the
    /// fused kernels are checked against).
    static COMPOSED_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

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
        let x = class_last(OP, logits, targets)?;
        if let Some(loss) = self.fused(OP, logits, &x, targets)? {
            return Ok(loss);
        }
        let logp = x.log_softmax(-1);
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

impl CrossEntropy {
    /// The loss through the fused row kernels (`cpu::cross_entropy`) as one recorded
    /// node, `cross_entropy`; `None` where the composition runs instead (half types, CUDA
    /// tensors, no classes, a class weight that requires grad). `x` is `logits` with the
    /// classes moved last. Errors on bad targets and weights as the composition does.
    #[track_caller]
    fn fused(
        &self,
        op: &'static str,
        logits: &Tensor,
        x: &Tensor,
        targets: &Tensor,
    ) -> Result<Option<Tensor>> {
        #[cfg(test)]
        if COMPOSED_ONLY.get() {
            return Ok(None);
        }
        let c = x.size(-1);
        let weight_fits = self
            .weight
            .as_ref()
            .is_none_or(|w| w.device() == Device::Cpu && !(w.requires_grad() && is_grad_enabled()));
        if !(crate::cpu::rowwise::supports(logits)
            && targets.device() == Device::Cpu
            && c > 0
            && weight_fits)
        {
            return Ok(None);
        }
        // the row targets, with the composition's errors (the first bad target in
        // row-major order, then the weight's shape)
        let mut rows = Vec::with_capacity(targets.numel());
        for t in targets.try_to_vec::<i64>()? {
            if t == self.ignore_index {
                rows.push(IGNORED);
            } else if t < 0 || t >= c as i64 {
                return Err(Error::index(
                    op,
                    format!("target {t} is out of range for {c} classes"),
                ));
            } else {
                rows.push(t as usize);
            }
        }
        let weight = match &self.weight {
            Some(w) if w.shape() != [c] => {
                return Err(Error::shape(
                    op,
                    format!("weight must have shape [{c}], got {}", fmt_shape(w.shape())),
                ));
            }
            Some(w) => Some(w.detach().to_dtype_raw(x.dtype())?),
            None => None,
        };
        let eps = self.label_smoothing;
        let xc = if x.is_contiguous() {
            x.detach()
        } else {
            x.detach().try_contiguous()?
        };
        let (per_row, stats) =
            cross_entropy::forward_rows(op, &xc, c, &rows, weight.as_ref(), eps)?;
        let per_row = per_row.reshape(targets.shape());
        let (out, total) = match self.reduction {
            Reduction::None => (per_row, None),
            Reduction::Sum => (per_row.sum_all(), None),
            Reduction::Mean => {
                // Σ w_t over the rows not ignored
                let valid = targets.ne(self.ignore_index);
                let wt = match &weight {
                    Some(w) => {
                        let safe: Vec<i64> = rows
                            .iter()
                            .map(|&t| if t == IGNORED { 0 } else { t as i64 })
                            .collect();
                        w.index_select(0, &Tensor::from_vec(safe, [rows.len()]))
                            .reshape(targets.shape())
                            .where_(&valid, 0.0)
                    }
                    None => valid.to_dtype(x.dtype()),
                };
                let total = wt.sum_all();
                (per_row.sum_all() / &total, Some(total))
            }
        };
        if !(is_grad_enabled() && logits.requires_grad()) {
            return Ok(Some(out));
        }
        let lg = logits.clone();
        let x_shape = x.shape().to_vec();
        Ok(Some(record(
            out,
            "cross_entropy",
            &[logits],
            &[logits],
            move |g| {
                let g = match &total {
                    Some(t) => g / t,
                    None => g.clone(),
                };
                let d = if is_grad_enabled() {
                    cross_entropy_grad_ops(&lg, &rows, weight.as_ref(), eps, &g)
                } else {
                    or_panic(cross_entropy::backward_rows(
                        "cross_entropy",
                        &xc,
                        &stats,
                        c,
                        &rows,
                        weight.as_ref(),
                        eps,
                        &g,
                    ))
                };
                vec![Some(from_class_last(d.reshape(x_shape.as_slice())))]
            },
        )))
    }
}

/// The gradient `[rows, C]` of the fused cross-entropy as differentiable tensor ops (for
/// `create_graph`): `g_r·(p·Σ_c a_c − a)` per row with `p = softmax(x)` and the constant
/// `a_c = (1−ε)·w_t·[c = t] + ε/C·w_c`, 0 at ignored rows; `g` holds the row gradients
/// (`[N, d…]`, or one value for all rows, the mean's divisor already applied).
fn cross_entropy_grad_ops(
    logits: &Tensor,
    rows: &[usize],
    weight: Option<&Tensor>,
    eps: f64,
    g: &Tensor,
) -> Tensor {
    let x = to_class_last(logits);
    let c = x.size(-1);
    let n = rows.len();
    let p = x.reshape([n, c]).softmax(-1);
    let w: Vec<f64> = match weight {
        Some(w) => w.to_dtype(DType::F64).to_vec(),
        None => vec![1.0; c],
    };
    let keep = 1.0 - eps;
    let spread = if eps > 0.0 { eps / c as f64 } else { 0.0 };
    let sw: f64 = w.iter().sum();
    let (mut a, mut a_sum, mut valid) = (vec![0.0f64; n * c], vec![0.0f64; n], vec![false; n]);
    for (r, &t) in rows.iter().enumerate() {
        if t == IGNORED {
            continue;
        }
        valid[r] = true;
        a_sum[r] = keep * w[t] + spread * sw;
        let row = &mut a[r * c..(r + 1) * c];
        for (a, &w) in row.iter_mut().zip(&w) {
            *a = spread * w;
        }
        row[t] += keep * w[t];
    }
    let dt = x.dtype();
    let a = Tensor::from_vec(a, [n, c]).to_dtype(dt);
    let a_sum = Tensor::from_vec(a_sum, [n, 1]).to_dtype(dt);
    let valid = Tensor::from_vec(valid, [n, 1]);
    let gr = if g.numel() == 1 {
        g.reshape([1, 1])
    } else {
        g.reshape([n, 1])
    };
    ((p * a_sum - a) * gr).where_(&valid, 0.0)
}

/// `x` (`[N, C, d…]`) with the classes moved last (`[N, d…, C]`).
fn to_class_last(x: &Tensor) -> Tensor {
    let n = x.ndim() as isize;
    let mut perm: Vec<isize> = vec![0];
    perm.extend(2..n);
    perm.push(1);
    x.permute(perm)
}

/// The inverse of [`to_class_last`]: `[N, d…, C]` → `[N, C, d…]`.
fn from_class_last(x: Tensor) -> Tensor {
    let n = x.ndim() as isize;
    let mut perm: Vec<isize> = vec![0, n - 1];
    perm.extend(1..n - 1);
    x.permute(perm)
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

/// Checks shapes and dtypes and returns `x` with the class dim moved last.
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
    Ok(to_class_last(x))
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

    /// The loss and the gradient of `ce` at `x` for the output gradient `go`, fused (and
    /// checked to record the one `cross_entropy` node) or composed; second derivatives
    /// too (`d/dx Σ dlogits²`) with `create_graph`.
    fn run_ce(
        ce: &CrossEntropy,
        x: &Tensor,
        t: &Tensor,
        go: &Tensor,
        composed: bool,
        second: bool,
    ) -> (Tensor, Tensor, Option<Tensor>) {
        COMPOSED_ONLY.set(composed);
        let x = x.detach().requires_grad_(true);
        let loss = ce.forward(&x, t);
        COMPOSED_ONLY.set(false);
        let name = loss.grad_fn().map(|n| n.name());
        assert_eq!(name == Some("cross_entropy"), !composed, "{name:?}");
        let g = crate::autograd::grad(
            std::slice::from_ref(&loss),
            std::slice::from_ref(&x),
            Some(std::slice::from_ref(go)),
            second,
            second,
        )
        .unwrap()[0]
            .clone()
            .unwrap();
        let gg = second.then(|| {
            let s = (&g * &g).sum_all();
            crate::autograd::grad(&[s], &[x], None, false, false).unwrap()[0]
                .clone()
                .unwrap()
        });
        (loss.detach(), g.detach(), gg)
    }

    fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
        assert_eq!(a.shape(), b.shape(), "{what}");
        let (a, b) = (
            a.to_dtype(DType::F64).to_vec::<f64>(),
            b.to_dtype(DType::F64).to_vec::<f64>(),
        );
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let ok = (x.is_nan() && y.is_nan()) || (x - y).abs() <= tol * (1.0 + y.abs());
            assert!(ok, "{what}[{i}]: fused {x:e}, composed {y:e}");
        }
    }

    #[test]
    fn fused_cross_entropy_matches_the_composition() {
        let mut g = Generator::new(3);
        let reductions = [Reduction::Mean, Reduction::Sum, Reduction::None];
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 2e-5 };
            // [N, C] with some rows ignored (the default index and a class index), and
            // [N, C, d] (classes on dim 1) as a non-contiguous view
            let x2 = (g.randn([9, 13], DType::F64) * 3.0).to_dtype(dtype);
            let t2 = Tensor::from_vec(vec![0i64, 12, 5, 5, 3, 5, 7, 1, 11], [9]);
            let x3 = g
                .randn([2, 4, 5], DType::F64)
                .transpose(1, 2)
                .to_dtype(dtype);
            let t3 = Tensor::from_vec(vec![0i64, 4, 1, 2, -100, 3, 3, 0], [2, 4]);
            let w2 = g.uniform([13], 0.2, 2.0, DType::F64);
            let w3 = g.uniform([5], 0.2, 2.0, DType::F32); // converted to the logits' dtype
            for (x, t, w, ignore) in [(&x2, &t2, &w2, 5i64), (&x3, &t3, &w3, -100)] {
                for eps in [0.0, 0.1, 1.0] {
                    for weighted in [false, true] {
                        for r in reductions {
                            let mut ce = CrossEntropy::new()
                                .label_smoothing(eps)
                                .ignore_index(ignore)
                                .reduction(r);
                            if weighted {
                                ce = ce.weight(w.clone());
                            }
                            let go = match r {
                                Reduction::None => g.randn(t.shape(), dtype),
                                _ => Tensor::scalar(1.5f64).to_dtype(dtype),
                            };
                            let second = dtype == DType::F64;
                            let what =
                                format!("{dtype} {:?} eps {eps} w {weighted} {r:?}", x.shape());
                            let f = run_ce(&ce, x, t, &go, false, second);
                            let c = run_ce(&ce, x, t, &go, true, second);
                            assert_close(&format!("{what} loss"), &f.0, &c.0, tol);
                            assert_close(&format!("{what} grad"), &f.1, &c.1, tol);
                            if let (Some(a), Some(b)) = (&f.2, &c.2) {
                                assert_close(&format!("{what} grad²"), a, b, tol);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn fused_cross_entropy_with_every_row_ignored() {
        let x = Generator::new(4).randn([3, 4], DType::F64);
        let t = Tensor::full([3], -100.0, DType::I64);
        for eps in [0.0, 0.1] {
            let ce = CrossEntropy::new().label_smoothing(eps);
            let one = Tensor::scalar(1.0f64);
            let (fl, fg, _) = run_ce(&ce, &x, &t, &one, false, false);
            let (cl, _, _) = run_ce(&ce, &x, &t, &one, true, false);
            // the mean is 0/0 as in the composition (and PyTorch); no gradient reaches
            // an ignored row, where the composition's 0·∞ gives NaN
            assert!(fl.item::<f64>().is_nan() && cl.item::<f64>().is_nan());
            assert_eq!(fg.to_vec::<f64>(), vec![0.0; 12]);
            let sum = ce.clone().reduction(Reduction::Sum);
            let (fl, fg, _) = run_ce(&sum, &x, &t, &one, false, false);
            assert_eq!(fl.item::<f64>(), 0.0);
            assert_eq!(fg.to_vec::<f64>(), vec![0.0; 12]);
        }
    }

    #[test]
    fn fused_cross_entropy_does_not_depend_on_the_thread_count() {
        // large enough to be split across the pool
        let mut g = Generator::new(5);
        let x = g.randn([700, 300], DType::F32);
        let t = g
            .randint(0, 300, [700])
            .where_(&g.rand([700], DType::F64).gt(0.1), -100);
        let w = g.uniform([300], 0.5, 1.5, DType::F32);
        let go = g.randn([700], DType::F32);
        let run = || {
            let mut out = vec![];
            for ce in [
                CrossEntropy::new().label_smoothing(0.1),
                CrossEntropy::new()
                    .weight(w.clone())
                    .reduction(Reduction::None),
            ] {
                let go = if ce.reduction == Reduction::None {
                    go.clone()
                } else {
                    Tensor::scalar(1.0f32)
                };
                let (l, d, _) = run_ce(&ce, &x, &t, &go, false, false);
                out.push((l.to_vec::<f32>(), d.to_vec::<f32>()));
            }
            out
        };
        crate::set_num_threads(1);
        let one = run();
        crate::set_num_threads(2);
        let two = run();
        crate::set_num_threads(0);
        assert!(one == two);
    }

    #[test]
    fn fused_and_composed_cross_entropy_give_the_same_errors() {
        let logits = Tensor::zeros([3, 3], DType::F32);
        let bad = Tensor::from_vec(vec![0i64, -2, 3], [3]);
        let w = Tensor::ones([4], DType::F32);
        for composed in [false, true] {
            COMPOSED_ONLY.set(composed);
            let range = CrossEntropy::new().try_forward(&logits, &bad).unwrap_err();
            let shape = CrossEntropy::new()
                .weight(w.clone())
                .try_forward(&logits, &Tensor::from_vec(vec![0i64, 1, 2], [3]))
                .unwrap_err();
            // an ignored index out of range is no error
            let ok = CrossEntropy::new()
                .ignore_index(-2)
                .try_forward(&logits, &Tensor::from_vec(vec![0i64, -2, 2], [3]));
            COMPOSED_ONLY.set(false);
            assert!(
                range
                    .to_string()
                    .contains("target -2 is out of range for 3 classes"),
                "{range}"
            );
            assert!(
                shape
                    .to_string()
                    .contains("weight must have shape [3], got [4]"),
                "{shape}"
            );
            assert!((ok.unwrap().item::<f32>() - 3f32.ln()).abs() < 1e-6);
        }
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
