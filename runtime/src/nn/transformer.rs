//! Transformer blocks with PyTorch's structure and names: the position-wise
//! [`FeedForward`], [`TransformerEncoderLayer`], [`TransformerDecoderLayer`], and the
//! stacks [`TransformerEncoder`] and [`TransformerDecoder`].

use super::activation::Activation;
use super::attention::{AttnMasks, MultiheadAttention, MultiheadAttentionConfig};
use super::dropout::Dropout;
use super::linear::Linear;
use super::module::{walk_mut, EntryMut, Forward, Module, Visitor, VisitorMut};
use super::norm::LayerNorm;
use crate::autograd::NoGradGuard;
use crate::error::{or_panic, Error, Result};
use crate::layout::fmt_shape;
use crate::tensor::{Tensor, TensorOptions};

fn check_dropout(op: &'static str, p: f64) -> Result<()> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(Error::config(
            op,
            format!("dropout probability must be in [0, 1], got {p}"),
        ))
    }
}

/// Options of a [`FeedForward`] block; the defaults are those of PyTorch's transformer
/// layers.
///
/// ```
/// use flint_runtime::nn::{Activation, FeedForwardConfig};
/// let cfg = FeedForwardConfig::default();
/// assert_eq!((cfg.activation, cfg.dropout, cfg.bias), (Activation::Relu, 0.1, true));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeedForwardConfig {
    /// Between the two linear layers (ReLU).
    pub activation: Activation,
    /// Dropout after the activation, in training (`0.1`).
    pub dropout: f64,
    /// Biases on both linear layers (`true`).
    pub bias: bool,
}

impl Default for FeedForwardConfig {
    fn default() -> Self {
        FeedForwardConfig {
            activation: Activation::Relu,
            dropout: 0.1,
            bias: true,
        }
    }
}

/// The position-wise feed-forward block of a transformer layer:
/// `linear2(dropout(activation(linear1(x))))`, `d_model → dim_feedforward → d_model`
/// over the last dim.
///
/// Its children are named `linear1`, `dropout` and `linear2`, as in PyTorch's transformer
/// layers (which hold them directly: the layers here report this block's children
/// without a name level of their own, so their `state_dict` keys are PyTorch's).
///
/// ```
/// use flint_runtime::nn::{FeedForward, Forward, ModuleExt};
/// use flint_runtime::Tensor;
/// let ff = FeedForward::new(8, 32, ());
/// assert_eq!(ff.forward(&Tensor::zeros([2, 5, 8], ())).shape(), &[2, 5, 8]);
/// let keys: Vec<String> = ff.state_dict().into_iter().map(|(k, _)| k).collect();
/// assert_eq!(keys, ["linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"]);
/// assert_eq!(ff.try_forward(&Tensor::zeros([2, 7], ())).unwrap_err().to_string(),
///     "FeedForward: expected input of shape [.., 8], got [2, 7]");
/// ```
#[derive(Debug, Clone)]
pub struct FeedForward {
    /// `d_model → dim_feedforward`.
    pub linear1: Linear,
    /// After the activation.
    pub dropout: Dropout,
    /// `dim_feedforward → d_model`.
    pub linear2: Linear,
    /// Between the linear layers (a function, not a child, as in PyTorch).
    pub activation: Activation,
}

impl FeedForward {
    /// ReLU, dropout 0.1, biases.
    pub fn new(d_model: usize, dim_feedforward: usize, opts: impl Into<TensorOptions>) -> Self {
        FeedForward::with_config(d_model, dim_feedforward, FeedForwardConfig::default(), opts)
    }

    /// With the options of `config`; panics on a dropout probability outside `[0, 1]`.
    #[track_caller]
    pub fn with_config(
        d_model: usize,
        dim_feedforward: usize,
        config: FeedForwardConfig,
        opts: impl Into<TensorOptions>,
    ) -> Self {
        or_panic(check_dropout("FeedForward", config.dropout));
        let opts = opts.into();
        FeedForward {
            linear1: Linear::with_bias(d_model, dim_feedforward, config.bias, opts),
            dropout: Dropout::new(config.dropout),
            linear2: Linear::with_bias(dim_feedforward, d_model, config.bias, opts),
            activation: config.activation,
        }
    }
}

impl Module for FeedForward {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.child("linear1", &self.linear1);
        v.child("dropout", &self.dropout);
        v.child("linear2", &self.linear2);
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.child("linear1", &mut self.linear1);
        v.child("dropout", &mut self.dropout);
        v.child("linear2", &mut self.linear2);
    }
    fn extra_repr(&self) -> String {
        format!("activation={}", self.activation.name())
    }
}

impl Forward for FeedForward {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = self.linear1.in_features();
        if x.ndim() == 0 || x.size(-1) != d {
            return Err(Error::shape(
                "FeedForward",
                format!(
                    "expected input of shape [.., {d}], got {}",
                    fmt_shape(x.shape())
                ),
            ));
        }
        let h = self.activation.apply(&self.linear1.try_forward(x)?);
        self.linear2.try_forward(&self.dropout.try_forward(&h)?)
    }
}

/// Options of a transformer layer; the defaults are PyTorch's
/// (`nn.TransformerEncoderLayer` / `nn.TransformerDecoderLayer`).
///
/// ```
/// use flint_runtime::nn::TransformerLayerConfig;
/// let cfg = TransformerLayerConfig { batch_first: true, norm_first: true, ..Default::default() };
/// assert_eq!((cfg.dim_feedforward, cfg.dropout, cfg.layer_norm_eps), (2048, 0.1, 1e-5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransformerLayerConfig {
    /// Width of the feed-forward block (`2048`).
    pub dim_feedforward: usize,
    /// Dropout after attention, in the feed-forward block, and on the attention weights
    /// (`0.1`).
    pub dropout: f64,
    /// Activation of the feed-forward block (ReLU).
    pub activation: Activation,
    /// `eps` of the layer norms (`1e-5`).
    pub layer_norm_eps: f64,
    /// Inputs are `[B, T, E]` (else `[T, B, E]`, PyTorch's default `false`).
    pub batch_first: bool,
    /// Pre-norm (`x + f(norm(x))`) instead of post-norm (`norm(x + f(x))`, `false`).
    pub norm_first: bool,
    /// Biases in the linear layers, the attention projections and the layer norms
    /// (`true`).
    pub bias: bool,
}

impl Default for TransformerLayerConfig {
    fn default() -> Self {
        TransformerLayerConfig {
            dim_feedforward: 2048,
            dropout: 0.1,
            activation: Activation::Relu,
            layer_norm_eps: 1e-5,
            batch_first: false,
            norm_first: false,
            bias: true,
        }
    }
}

impl TransformerLayerConfig {
    fn attention(&self) -> MultiheadAttentionConfig {
        MultiheadAttentionConfig {
            dropout: self.dropout,
            bias: self.bias,
            kdim: None,
            vdim: None,
            batch_first: self.batch_first,
        }
    }

    fn feed_forward(&self) -> FeedForwardConfig {
        FeedForwardConfig {
            activation: self.activation,
            dropout: self.dropout,
            bias: self.bias,
        }
    }

    fn norm(&self, d_model: usize, opts: TensorOptions) -> LayerNorm {
        let mut n = LayerNorm::with_config(&[d_model], self.layer_norm_eps, true, opts);
        if !self.bias {
            n.bias = None;
        }
        n
    }

    fn check(&self, op: &'static str, d_model: usize, nhead: usize) -> Result<()> {
        if d_model == 0 || nhead == 0 || self.dim_feedforward == 0 {
            return Err(Error::config(
                op,
                format!(
                    "d_model, nhead and dim_feedforward must be positive, got {d_model}, {nhead}, {}",
                    self.dim_feedforward
                ),
            ));
        }
        if !d_model.is_multiple_of(nhead) {
            return Err(Error::config(
                op,
                format!("d_model ({d_model}) must be divisible by nhead ({nhead})"),
            ));
        }
        check_dropout(op, self.dropout)
    }
}

/// Checks that `x` is `[B, T, d]` / `[T, B, d]` (or unbatched `[T, d]`).
fn check_seq(op: &'static str, name: &str, x: &Tensor, d: usize, batch_first: bool) -> Result<()> {
    if (x.ndim() == 2 || x.ndim() == 3) && x.size(-1) == d {
        return Ok(());
    }
    let layout = if batch_first { "[B, T, " } else { "[T, B, " };
    Err(Error::shape(
        op,
        format!(
            "expected {name} of shape {layout}{d}] or [T, {d}], got {}",
            fmt_shape(x.shape())
        ),
    ))
}

/// The masks of a [`TransformerEncoderLayer`] / [`TransformerEncoder`] call, with
/// `nn.MultiheadAttention`'s conventions (see [`AttnMasks`]): bool `true` = may not
/// attend / padding, float = added to the scores.
///
/// ```
/// use flint_runtime::nn::{padding_mask, EncoderMasks};
/// let pad = padding_mask(&[4, 2], 4);
/// let masks = EncoderMasks { src_key_padding_mask: Some(&pad), is_causal: true, ..Default::default() };
/// assert!(masks.src_mask.is_none());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct EncoderMasks<'a> {
    /// `[T, T]` or `[B·nhead, T, T]`.
    pub src_mask: Option<&'a Tensor>,
    /// `[B, T]`, `true` at padding.
    pub src_key_padding_mask: Option<&'a Tensor>,
    /// Hide later positions (the causal mask is generated; see [`AttnMasks::is_causal`]).
    pub is_causal: bool,
}

/// The masks of a [`TransformerDecoderLayer`] / [`TransformerDecoder`] call, with
/// `nn.MultiheadAttention`'s conventions (see [`AttnMasks`]).
///
/// ```
/// use flint_runtime::nn::{padding_mask, DecoderMasks};
/// let mem_pad = padding_mask(&[6, 4], 6);
/// let masks = DecoderMasks { tgt_is_causal: true, memory_key_padding_mask: Some(&mem_pad), ..Default::default() };
/// assert!(masks.tgt_mask.is_none() && !masks.memory_is_causal);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DecoderMasks<'a> {
    /// Self-attention mask, `[T, T]` or `[B·nhead, T, T]`.
    pub tgt_mask: Option<&'a Tensor>,
    /// Cross-attention mask, `[T, S]` or `[B·nhead, T, S]`.
    pub memory_mask: Option<&'a Tensor>,
    /// `[B, T]`, `true` at target padding.
    pub tgt_key_padding_mask: Option<&'a Tensor>,
    /// `[B, S]`, `true` at memory padding.
    pub memory_key_padding_mask: Option<&'a Tensor>,
    /// Hide later target positions in the self-attention (generated).
    pub tgt_is_causal: bool,
    /// Hide memory position `j` from target position `i` when `j > i` (generated).
    pub memory_is_causal: bool,
}

fn no_weights<'a>(
    attn_mask: Option<&'a Tensor>,
    key_padding_mask: Option<&'a Tensor>,
    is_causal: bool,
) -> AttnMasks<'a> {
    AttnMasks {
        attn_mask,
        key_padding_mask,
        is_causal,
        need_weights: false,
        average_attn_weights: true,
    }
}

/// One layer of a transformer encoder, `nn.TransformerEncoderLayer`: self-attention and
/// a feed-forward block, each with dropout, a residual connection and a layer norm
/// (after the residual, or before the block with `norm_first`).
///
/// Children (PyTorch's names and `state_dict` keys): `self_attn`, `linear1`, `dropout`,
/// `linear2`, `norm1`, `norm2`, `dropout1`, `dropout2`. Call
/// [`ModuleExt::eval`](super::ModuleExt::eval) to switch every dropout off.
///
/// ```
/// use flint_runtime::nn::{padding_mask, EncoderMasks, Forward, ModuleExt};
/// use flint_runtime::nn::{TransformerEncoderLayer, TransformerLayerConfig};
/// use flint_runtime::Tensor;
/// let cfg = TransformerLayerConfig { dim_feedforward: 64, batch_first: true, ..Default::default() };
/// let mut layer = TransformerEncoderLayer::with_config(16, 4, cfg, ());
/// layer.eval();
/// let x = Tensor::randn([2, 5, 16], ()); // [B, T, d_model]
/// let pad = padding_mask(&[5, 3], 5);
/// let masks = EncoderMasks { src_key_padding_mask: Some(&pad), is_causal: true, ..Default::default() };
/// assert_eq!(layer.forward_masked(&x, &masks).shape(), &[2, 5, 16]);
/// assert_eq!(layer.forward(&x).shape(), &[2, 5, 16]); // no masks
/// assert_eq!(layer.try_forward(&Tensor::zeros([2, 5, 8], ())).unwrap_err().to_string(),
///     "TransformerEncoderLayer: expected src of shape [B, T, 16] or [T, 16], got [2, 5, 8]");
/// ```
#[derive(Debug, Clone)]
pub struct TransformerEncoderLayer {
    /// The self-attention.
    pub self_attn: MultiheadAttention,
    /// `linear1`, `dropout`, `linear2` and the activation.
    pub ff: FeedForward,
    /// Norm of the attention sub-block.
    pub norm1: LayerNorm,
    /// Norm of the feed-forward sub-block.
    pub norm2: LayerNorm,
    /// Dropout on the attention output.
    pub dropout1: Dropout,
    /// Dropout on the feed-forward output.
    pub dropout2: Dropout,
    /// Pre-norm (else post-norm).
    pub norm_first: bool,
    d_model: usize,
    nhead: usize,
    config: TransformerLayerConfig,
}

impl TransformerEncoderLayer {
    /// With PyTorch's defaults (`dim_feedforward` 2048, dropout 0.1, ReLU, post-norm,
    /// `[T, B, E]` inputs); panics when `d_model` is not a multiple of `nhead`.
    #[track_caller]
    pub fn new(d_model: usize, nhead: usize, opts: impl Into<TensorOptions>) -> Self {
        TransformerEncoderLayer::with_config(d_model, nhead, Default::default(), opts)
    }

    /// With the options of `config`; panics on an invalid configuration.
    #[track_caller]
    pub fn with_config(
        d_model: usize,
        nhead: usize,
        config: TransformerLayerConfig,
        opts: impl Into<TensorOptions>,
    ) -> Self {
        or_panic(TransformerEncoderLayer::try_with_config(
            d_model, nhead, config, opts,
        ))
    }

    /// Fallible [`TransformerEncoderLayer::with_config`]: an [`Error::Config`] when
    /// `d_model` is not a multiple of `nhead`, a size is zero, or the dropout
    /// probability is outside `[0, 1]`.
    pub fn try_with_config(
        d_model: usize,
        nhead: usize,
        config: TransformerLayerConfig,
        opts: impl Into<TensorOptions>,
    ) -> Result<Self> {
        const OP: &str = "TransformerEncoderLayer";
        config.check(OP, d_model, nhead)?;
        let opts = opts.into();
        Ok(TransformerEncoderLayer {
            self_attn: MultiheadAttention::try_with_config(
                d_model,
                nhead,
                config.attention(),
                opts,
            )?,
            ff: FeedForward::with_config(
                d_model,
                config.dim_feedforward,
                config.feed_forward(),
                opts,
            ),
            norm1: config.norm(d_model, opts),
            norm2: config.norm(d_model, opts),
            dropout1: Dropout::new(config.dropout),
            dropout2: Dropout::new(config.dropout),
            norm_first: config.norm_first,
            d_model,
            nhead,
            config,
        })
    }

    /// The model width.
    pub fn d_model(&self) -> usize {
        self.d_model
    }

    /// The number of attention heads.
    pub fn nhead(&self) -> usize {
        self.nhead
    }

    /// The configuration the layer was built with.
    pub fn config(&self) -> &TransformerLayerConfig {
        &self.config
    }

    /// Applies the layer to `src` (`[T, B, E]`, `[B, T, E]` when batch-first, or
    /// `[T, E]`) with masks; panics where [`TransformerEncoderLayer::try_forward_masked`]
    /// fails. [`Forward::forward`] is the form without masks.
    #[track_caller]
    pub fn forward_masked(&self, src: &Tensor, masks: &EncoderMasks<'_>) -> Tensor {
        or_panic(self.try_forward_masked(src, masks))
    }

    /// Fallible [`TransformerEncoderLayer::forward_masked`].
    pub fn try_forward_masked(&self, src: &Tensor, masks: &EncoderMasks<'_>) -> Result<Tensor> {
        check_seq(
            "TransformerEncoderLayer",
            "src",
            src,
            self.d_model,
            self.self_attn.batch_first,
        )?;
        let sa = |x: &Tensor| -> Result<Tensor> {
            let am = no_weights(masks.src_mask, masks.src_key_padding_mask, masks.is_causal);
            let (y, _) = self.self_attn.try_forward(x, x, x, &am)?;
            self.dropout1.try_forward(&y)
        };
        let ff =
            |x: &Tensor| -> Result<Tensor> { self.dropout2.try_forward(&self.ff.try_forward(x)?) };
        if self.norm_first {
            let x = src.try_add(&sa(&self.norm1.try_forward(src)?)?)?;
            x.try_add(&ff(&self.norm2.try_forward(&x)?)?)
        } else {
            let x = self.norm1.try_forward(&src.try_add(&sa(src)?)?)?;
            self.norm2.try_forward(&x.try_add(&ff(&x)?)?)
        }
    }
}

impl Forward for TransformerEncoderLayer {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        self.try_forward_masked(x, &EncoderMasks::default())
    }
}

impl Module for TransformerEncoderLayer {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.child("self_attn", &self.self_attn);
        self.ff.visit(v);
        v.child("norm1", &self.norm1);
        v.child("norm2", &self.norm2);
        v.child("dropout1", &self.dropout1);
        v.child("dropout2", &self.dropout2);
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.child("self_attn", &mut self.self_attn);
        self.ff.visit_mut(v);
        v.child("norm1", &mut self.norm1);
        v.child("norm2", &mut self.norm2);
        v.child("dropout1", &mut self.dropout1);
        v.child("dropout2", &mut self.dropout2);
    }
}

/// One layer of a transformer decoder, `nn.TransformerDecoderLayer`: self-attention over
/// the target, cross-attention to the encoder's output (`memory`), and a feed-forward
/// block, each with dropout, a residual connection and a layer norm (post-norm, or
/// pre-norm with `norm_first`).
///
/// Children (PyTorch's names and `state_dict` keys): `self_attn`, `multihead_attn`,
/// `linear1`, `dropout`, `linear2`, `norm1`, `norm2`, `norm3`, `dropout1`, `dropout2`,
/// `dropout3`.
///
/// ```
/// use flint_runtime::nn::{padding_mask, DecoderMasks, ModuleExt};
/// use flint_runtime::nn::{TransformerDecoderLayer, TransformerLayerConfig};
/// use flint_runtime::Tensor;
/// let cfg = TransformerLayerConfig { dim_feedforward: 64, batch_first: true, ..Default::default() };
/// let mut layer = TransformerDecoderLayer::with_config(16, 4, cfg, ());
/// layer.eval();
/// let tgt = Tensor::randn([2, 5, 16], ());
/// let memory = Tensor::randn([2, 7, 16], ());
/// let mem_pad = padding_mask(&[7, 4], 7);
/// let masks = DecoderMasks { tgt_is_causal: true, memory_key_padding_mask: Some(&mem_pad), ..Default::default() };
/// assert_eq!(layer.forward(&tgt, &memory, &masks).shape(), &[2, 5, 16]);
/// ```
#[derive(Debug, Clone)]
pub struct TransformerDecoderLayer {
    /// Self-attention over the target.
    pub self_attn: MultiheadAttention,
    /// Cross-attention from the target to the memory.
    pub multihead_attn: MultiheadAttention,
    /// `linear1`, `dropout`, `linear2` and the activation.
    pub ff: FeedForward,
    /// Norm of the self-attention sub-block.
    pub norm1: LayerNorm,
    /// Norm of the cross-attention sub-block.
    pub norm2: LayerNorm,
    /// Norm of the feed-forward sub-block.
    pub norm3: LayerNorm,
    /// Dropout on the self-attention output.
    pub dropout1: Dropout,
    /// Dropout on the cross-attention output.
    pub dropout2: Dropout,
    /// Dropout on the feed-forward output.
    pub dropout3: Dropout,
    /// Pre-norm (else post-norm).
    pub norm_first: bool,
    d_model: usize,
    nhead: usize,
    config: TransformerLayerConfig,
}

impl TransformerDecoderLayer {
    /// With PyTorch's defaults; panics when `d_model` is not a multiple of `nhead`.
    #[track_caller]
    pub fn new(d_model: usize, nhead: usize, opts: impl Into<TensorOptions>) -> Self {
        TransformerDecoderLayer::with_config(d_model, nhead, Default::default(), opts)
    }

    /// With the options of `config`; panics on an invalid configuration.
    #[track_caller]
    pub fn with_config(
        d_model: usize,
        nhead: usize,
        config: TransformerLayerConfig,
        opts: impl Into<TensorOptions>,
    ) -> Self {
        or_panic(TransformerDecoderLayer::try_with_config(
            d_model, nhead, config, opts,
        ))
    }

    /// Fallible [`TransformerDecoderLayer::with_config`].
    ///
    /// ```
    /// use flint_runtime::nn::TransformerDecoderLayer;
    /// let err = TransformerDecoderLayer::try_with_config(10, 3, Default::default(), ()).unwrap_err();
    /// assert_eq!(err.to_string(), "TransformerDecoderLayer: d_model (10) must be divisible by nhead (3)");
    /// ```
    pub fn try_with_config(
        d_model: usize,
        nhead: usize,
        config: TransformerLayerConfig,
        opts: impl Into<TensorOptions>,
    ) -> Result<Self> {
        const OP: &str = "TransformerDecoderLayer";
        config.check(OP, d_model, nhead)?;
        let opts = opts.into();
        let attn = MultiheadAttention::try_with_config(d_model, nhead, config.attention(), opts)?;
        Ok(TransformerDecoderLayer {
            self_attn: attn,
            multihead_attn: MultiheadAttention::try_with_config(
                d_model,
                nhead,
                config.attention(),
                opts,
            )?,
            ff: FeedForward::with_config(
                d_model,
                config.dim_feedforward,
                config.feed_forward(),
                opts,
            ),
            norm1: config.norm(d_model, opts),
            norm2: config.norm(d_model, opts),
            norm3: config.norm(d_model, opts),
            dropout1: Dropout::new(config.dropout),
            dropout2: Dropout::new(config.dropout),
            dropout3: Dropout::new(config.dropout),
            norm_first: config.norm_first,
            d_model,
            nhead,
            config,
        })
    }

    /// The model width.
    pub fn d_model(&self) -> usize {
        self.d_model
    }

    /// The number of attention heads.
    pub fn nhead(&self) -> usize {
        self.nhead
    }

    /// The configuration the layer was built with.
    pub fn config(&self) -> &TransformerLayerConfig {
        &self.config
    }

    /// Applies the layer to `tgt` (`[T, B, E]`, `[B, T, E]` when batch-first, or
    /// `[T, E]`) attending to `memory` (`S` positions, same layout); panics where
    /// [`TransformerDecoderLayer::try_forward`] fails.
    #[track_caller]
    pub fn forward(&self, tgt: &Tensor, memory: &Tensor, masks: &DecoderMasks<'_>) -> Tensor {
        or_panic(self.try_forward(tgt, memory, masks))
    }

    /// Fallible [`TransformerDecoderLayer::forward`].
    pub fn try_forward(
        &self,
        tgt: &Tensor,
        memory: &Tensor,
        masks: &DecoderMasks<'_>,
    ) -> Result<Tensor> {
        const OP: &str = "TransformerDecoderLayer";
        let bf = self.self_attn.batch_first;
        check_seq(OP, "tgt", tgt, self.d_model, bf)?;
        check_seq(OP, "memory", memory, self.d_model, bf)?;
        let sa = |x: &Tensor| -> Result<Tensor> {
            let am = no_weights(
                masks.tgt_mask,
                masks.tgt_key_padding_mask,
                masks.tgt_is_causal,
            );
            let (y, _) = self.self_attn.try_forward(x, x, x, &am)?;
            self.dropout1.try_forward(&y)
        };
        let mha = |x: &Tensor| -> Result<Tensor> {
            let am = no_weights(
                masks.memory_mask,
                masks.memory_key_padding_mask,
                masks.memory_is_causal,
            );
            let (y, _) = self.multihead_attn.try_forward(x, memory, memory, &am)?;
            self.dropout2.try_forward(&y)
        };
        let ff =
            |x: &Tensor| -> Result<Tensor> { self.dropout3.try_forward(&self.ff.try_forward(x)?) };
        if self.norm_first {
            let x = tgt.try_add(&sa(&self.norm1.try_forward(tgt)?)?)?;
            let x = x.try_add(&mha(&self.norm2.try_forward(&x)?)?)?;
            x.try_add(&ff(&self.norm3.try_forward(&x)?)?)
        } else {
            let x = self.norm1.try_forward(&tgt.try_add(&sa(tgt)?)?)?;
            let x = self.norm2.try_forward(&x.try_add(&mha(&x)?)?)?;
            self.norm3.try_forward(&x.try_add(&ff(&x)?)?)
        }
    }
}

impl Module for TransformerDecoderLayer {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.child("self_attn", &self.self_attn);
        v.child("multihead_attn", &self.multihead_attn);
        self.ff.visit(v);
        v.child("norm1", &self.norm1);
        v.child("norm2", &self.norm2);
        v.child("norm3", &self.norm3);
        v.child("dropout1", &self.dropout1);
        v.child("dropout2", &self.dropout2);
        v.child("dropout3", &self.dropout3);
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.child("self_attn", &mut self.self_attn);
        v.child("multihead_attn", &mut self.multihead_attn);
        self.ff.visit_mut(v);
        v.child("norm1", &mut self.norm1);
        v.child("norm2", &mut self.norm2);
        v.child("norm3", &mut self.norm3);
        v.child("dropout1", &mut self.dropout1);
        v.child("dropout2", &mut self.dropout2);
        v.child("dropout3", &mut self.dropout3);
    }
}

/// A copy of `m` that shares no storage with it (PyTorch's `copy.deepcopy` of a module):
/// parameters stay leaves with their `requires_grad`.
fn deep_copy<M: Module + Clone>(m: &M) -> M {
    let mut c = m.clone();
    let _g = NoGradGuard::new();
    walk_mut(&mut c, &mut |e| match e {
        EntryMut::Param { tensor, .. } => {
            let rg = tensor.requires_grad();
            *tensor = tensor.detach().deep_clone().requires_grad_(rg);
        }
        EntryMut::Buffer { tensor, .. } => *tensor = tensor.detach().deep_clone(),
        EntryMut::Enter { .. } => {}
    });
    c
}

/// A stack of encoder layers, `nn.TransformerEncoder`: `num_layers` independent copies of
/// one layer (same initial weights, as PyTorch's deep copies), named `layers.0`,
/// `layers.1`, …, and an optional final `norm`.
///
/// ```
/// use flint_runtime::nn::{EncoderMasks, LayerNorm, ModuleExt};
/// use flint_runtime::nn::{TransformerEncoder, TransformerEncoderLayer, TransformerLayerConfig};
/// use flint_runtime::Tensor;
/// let cfg = TransformerLayerConfig { dim_feedforward: 32, batch_first: true, ..Default::default() };
/// let layer = TransformerEncoderLayer::with_config(8, 2, cfg, ());
/// let mut enc = TransformerEncoder::new(layer, 3, Some(LayerNorm::new(&[8], ())));
/// enc.eval();
/// let x = Tensor::randn([2, 5, 8], ());
/// let masks = EncoderMasks { is_causal: true, ..Default::default() };
/// assert_eq!(enc.forward_masked(&x, &masks).shape(), &[2, 5, 8]);
/// let keys: Vec<String> = enc.state_dict().into_iter().map(|(k, _)| k).collect();
/// assert_eq!(keys[0], "layers.0.self_attn.in_proj_weight");
/// assert_eq!(keys[keys.len() - 1], "norm.bias");
/// ```
#[derive(Debug, Clone)]
pub struct TransformerEncoder {
    /// The layers, applied in order.
    pub layers: Vec<TransformerEncoderLayer>,
    /// Applied after the last layer.
    pub norm: Option<LayerNorm>,
}

impl TransformerEncoder {
    /// `num_layers` deep copies of `layer`, then `norm`.
    pub fn new(
        layer: TransformerEncoderLayer,
        num_layers: usize,
        norm: Option<LayerNorm>,
    ) -> TransformerEncoder {
        TransformerEncoder {
            layers: (0..num_layers).map(|_| deep_copy(&layer)).collect(),
            norm,
        }
    }

    /// The number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Applies every layer with the same masks, then the final norm; panics where
    /// [`TransformerEncoder::try_forward_masked`] fails.
    #[track_caller]
    pub fn forward_masked(&self, src: &Tensor, masks: &EncoderMasks<'_>) -> Tensor {
        or_panic(self.try_forward_masked(src, masks))
    }

    /// Fallible [`TransformerEncoder::forward_masked`].
    pub fn try_forward_masked(&self, src: &Tensor, masks: &EncoderMasks<'_>) -> Result<Tensor> {
        let mut x = src.clone();
        for l in &self.layers {
            x = l.try_forward_masked(&x, masks)?;
        }
        match &self.norm {
            Some(n) => n.try_forward(&x),
            None => Ok(x),
        }
    }
}

impl Forward for TransformerEncoder {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        self.try_forward_masked(x, &EncoderMasks::default())
    }
}

impl Module for TransformerEncoder {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.child("layers", &self.layers);
        v.child_opt("norm", self.norm.as_ref().map(|n| n as &dyn Module));
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.child("layers", &mut self.layers);
        v.child_opt("norm", self.norm.as_mut().map(|n| n as &mut dyn Module));
    }
}

/// A stack of decoder layers, `nn.TransformerDecoder`: `num_layers` deep copies of one
/// layer named `layers.0`, `layers.1`, …, and an optional final `norm`.
///
/// ```
/// use flint_runtime::nn::{DecoderMasks, LayerNorm, ModuleExt};
/// use flint_runtime::nn::{TransformerDecoder, TransformerDecoderLayer, TransformerLayerConfig};
/// use flint_runtime::Tensor;
/// let cfg = TransformerLayerConfig { dim_feedforward: 32, batch_first: true, ..Default::default() };
/// let layer = TransformerDecoderLayer::with_config(8, 2, cfg, ());
/// let mut dec = TransformerDecoder::new(layer, 2, Some(LayerNorm::new(&[8], ())));
/// dec.eval();
/// let (tgt, memory) = (Tensor::randn([2, 4, 8], ()), Tensor::randn([2, 6, 8], ()));
/// let masks = DecoderMasks { tgt_is_causal: true, ..Default::default() };
/// assert_eq!(dec.forward(&tgt, &memory, &masks).shape(), &[2, 4, 8]);
/// assert_eq!(dec.num_layers(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct TransformerDecoder {
    /// The layers, applied in order.
    pub layers: Vec<TransformerDecoderLayer>,
    /// Applied after the last layer.
    pub norm: Option<LayerNorm>,
}

impl TransformerDecoder {
    /// `num_layers` deep copies of `layer`, then `norm`.
    pub fn new(
        layer: TransformerDecoderLayer,
        num_layers: usize,
        norm: Option<LayerNorm>,
    ) -> TransformerDecoder {
        TransformerDecoder {
            layers: (0..num_layers).map(|_| deep_copy(&layer)).collect(),
            norm,
        }
    }

    /// The number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Applies every layer with the same memory and masks, then the final norm; panics
    /// where [`TransformerDecoder::try_forward`] fails.
    #[track_caller]
    pub fn forward(&self, tgt: &Tensor, memory: &Tensor, masks: &DecoderMasks<'_>) -> Tensor {
        or_panic(self.try_forward(tgt, memory, masks))
    }

    /// Fallible [`TransformerDecoder::forward`].
    pub fn try_forward(
        &self,
        tgt: &Tensor,
        memory: &Tensor,
        masks: &DecoderMasks<'_>,
    ) -> Result<Tensor> {
        let mut x = tgt.clone();
        for l in &self.layers {
            x = l.try_forward(&x, memory, masks)?;
        }
        match &self.norm {
            Some(n) => n.try_forward(&x),
            None => Ok(x),
        }
    }
}

impl Module for TransformerDecoder {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.child("layers", &self.layers);
        v.child_opt("norm", self.norm.as_ref().map(|n| n as &dyn Module));
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.child("layers", &mut self.layers);
        v.child_opt("norm", self.norm.as_mut().map(|n| n as &mut dyn Module));
    }
}

crate::impl_module_display!(
    FeedForward,
    TransformerEncoderLayer,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerDecoder
);

#[cfg(test)]
mod tests {
    //! The reference numbers were printed by the PyTorch script in
    //! `nn::attention::testutil` (same weights by parameter name, same inputs).
    use super::*;
    use crate::autograd::{gradcheck, GradcheckOptions};
    use crate::dtype::DType;
    use crate::nn::attention::testutil::{assert_close, fill, float_mask, inp};
    use crate::nn::{causal_mask, padding_mask, walk, Entry, ModuleExt};

    /// [2, 3, 4]
    const ENC_POST: [f64; 24] = [
        0.4855861307179777,
        0.026816384588363815,
        -0.20101168007753825,
        0.2831846557143003,
        0.5860537749275622,
        0.07204240483575416,
        0.04956366477386963,
        0.03600992096997784,
        0.5220304155770111,
        0.05398974125001978,
        -0.1973131404412777,
        0.2577000738298236,
        0.4695870811680177,
        0.007128026395105985,
        -0.15836076327528892,
        0.2707203807287109,
        0.5784283077099811,
        0.07455042213695377,
        -0.04024338607303981,
        0.1177895476725382,
        0.5466497565554812,
        0.07076296956869037,
        -0.17444423575195653,
        0.2218576481123394,
    ];
    /// [3, 2, 4]
    const ENC_PRE: [f64; 24] = [
        0.5879477441757924,
        0.8496355557712943,
        0.7949689369887065,
        0.8027401742944077,
        0.7292687383894721,
        0.40582365314674546,
        -0.27697563333444974,
        -0.8640317633702466,
        -1.0227044316620777,
        -0.8064961393908279,
        -0.6012549803500591,
        -0.4228683488845825,
        -0.04658230223468996,
        0.5398535912249615,
        1.041434516923485,
        1.1406297456025107,
        0.7385205723791691,
        0.2731267669961501,
        -0.04585230905861857,
        -0.26747671620607033,
        -0.6949827892957404,
        -1.0824380430485492,
        -1.1048174477730466,
        -0.5854911012104995,
    ];
    /// [2, 3, 4]
    const DEC_POST: [f64; 24] = [
        0.48108034851268944,
        -0.013495259557974917,
        0.19454746902540196,
        -0.12064334345372474,
        0.4760174497623079,
        -0.01942419288690954,
        -0.0016828481273767483,
        0.10230720305639054,
        0.4790384980813906,
        -0.02180387592807333,
        0.15917029676458455,
        -0.06348375246069013,
        0.4890904109614714,
        0.00346598420264723,
        0.19497218754592793,
        -0.14513422986005445,
        0.4814799292595111,
        -0.017971709114649407,
        0.06833607431623162,
        0.0353331975008435,
        0.4827381786905422,
        -0.016337487449736603,
        0.14398615217804273,
        -0.050827485132148034,
    ];
    /// [2, 3, 4]
    const DEC_PRE: [f64; 24] = [
        1.342738397735375,
        1.4386738167864168,
        0.9524071696371934,
        0.3023792186826588,
        2.1765132134218366,
        1.6588154149547973,
        0.4304691316052565,
        -1.0467339161800102,
        0.28014258065104247,
        0.028874522252289037,
        -0.48709335444419205,
        -1.274273711016416,
        0.7834440453403636,
        1.1685402633977313,
        1.123777220747376,
        0.4693946231559458,
        2.0142258426340796,
        1.500673339541486,
        0.6695161052825149,
        -0.453314547469517,
        0.6626517855049988,
        -0.0827574786798132,
        -0.8853369664110349,
        -1.4429113215065932,
    ];
    /// [2, 3, 4]
    const ENC_STACK: [f64; 24] = [
        -0.5955141765955523,
        0.18310876289235592,
        -0.28677919377720434,
        -0.23572477932247354,
        -0.5706748121458699,
        0.21045592791851284,
        -0.30931410138965976,
        -0.23442402902968387,
        -0.595514182597926,
        0.18336154859496862,
        -0.2870699602057732,
        -0.23574255107825848,
        -0.6001941565786483,
        0.17627822942010174,
        -0.28118678230541366,
        -0.23592686134635568,
        -0.5820989501850767,
        0.19943710726770172,
        -0.30024038265164205,
        -0.2350673081218386,
        -0.5727608990193772,
        0.20913573964525337,
        -0.30847256163609516,
        -0.23459264158516197,
    ];
    /// [2, 3, 4]
    const DEC_STACK: [f64; 24] = [
        -0.4053878498324568,
        0.1999196056628435,
        -0.28880994450499475,
        -0.21878451245016173,
        0.4202626515522461,
        -0.5112302535520266,
        -0.3838450408680373,
        -0.21705569302673736,
        -0.3642657553654158,
        0.19063551645624568,
        -0.28799608467138943,
        -0.21596063434260854,
        0.17344394508069963,
        -0.1218686056889952,
        -0.33939773566993614,
        -0.20181495674501326,
        -0.4606820035117531,
        0.21036614717450733,
        -0.29365280445165237,
        -0.22322105715144125,
        0.42116304828720347,
        -0.5034550595390959,
        -0.38816144799551866,
        -0.2169325252059173,
    ];

    fn cfg(batch_first: bool, norm_first: bool, activation: Activation) -> TransformerLayerConfig {
        TransformerLayerConfig {
            dim_feedforward: 8,
            activation,
            batch_first,
            norm_first,
            ..Default::default()
        }
    }

    fn keys(m: &impl Module) -> Vec<String> {
        m.state_dict().into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn encoder_layer_post_norm_matches_pytorch() {
        let mut l = TransformerEncoderLayer::with_config(
            4,
            2,
            cfg(true, false, Activation::Relu),
            DType::F64,
        );
        fill(&l);
        l.eval();
        let x = inp(&[2, 3, 4], 0.0);
        let pad = padding_mask(&[3, 2], 3);
        let causal = causal_mask(3);
        // PyTorch got the explicit mask; the generated one must agree
        for (src_mask, is_causal) in [(Some(&causal), false), (None, true)] {
            let masks = EncoderMasks {
                src_mask,
                src_key_padding_mask: Some(&pad),
                is_causal,
            };
            let y = l.forward_masked(&x, &masks);
            assert_close("enc_post", &y, &[2, 3, 4], &ENC_POST, 1e-10, 1e-13);
        }
    }

    #[test]
    fn encoder_layer_pre_norm_without_bias_matches_pytorch() {
        let c = TransformerLayerConfig {
            bias: false,
            layer_norm_eps: 1e-6,
            ..cfg(false, true, Activation::Gelu)
        };
        let mut l = TransformerEncoderLayer::with_config(4, 2, c, DType::F64);
        assert_eq!(
            keys(&l),
            [
                "self_attn.in_proj_weight",
                "self_attn.out_proj.weight",
                "linear1.weight",
                "linear2.weight",
                "norm1.weight",
                "norm2.weight"
            ]
        );
        fill(&l);
        l.eval();
        let x = inp(&[3, 2, 4], 0.4); // [T, B, E]
        let pad = padding_mask(&[3, 2], 3);
        let masks = EncoderMasks {
            src_key_padding_mask: Some(&pad),
            ..Default::default()
        };
        assert_close(
            "enc_pre",
            &l.forward_masked(&x, &masks),
            &[3, 2, 4],
            &ENC_PRE,
            1e-10,
            1e-13,
        );
    }

    #[test]
    fn decoder_layers_match_pytorch() {
        let x = inp(&[2, 3, 4], 0.0);
        let mem = inp(&[2, 4, 4], 0.5);
        let tpad = padding_mask(&[3, 2], 3);
        let mpad = padding_mask(&[4, 3], 4);
        let mut post = TransformerDecoderLayer::with_config(
            4,
            2,
            cfg(true, false, Activation::Relu),
            DType::F64,
        );
        fill(&post);
        post.eval();
        let masks = DecoderMasks {
            tgt_key_padding_mask: Some(&tpad),
            memory_key_padding_mask: Some(&mpad),
            tgt_is_causal: true,
            ..Default::default()
        };
        assert_close(
            "dec_post",
            &post.forward(&x, &mem, &masks),
            &[2, 3, 4],
            &DEC_POST,
            1e-10,
            1e-13,
        );

        let mut pre = TransformerDecoderLayer::with_config(
            4,
            2,
            cfg(true, true, Activation::Gelu),
            DType::F64,
        );
        fill(&pre);
        pre.eval();
        let causal = causal_mask(3);
        let fm = float_mask();
        let masks = DecoderMasks {
            tgt_mask: Some(&causal),
            memory_mask: Some(&fm),
            ..Default::default()
        };
        assert_close(
            "dec_pre",
            &pre.forward(&x, &mem, &masks),
            &[2, 3, 4],
            &DEC_PRE,
            1e-10,
            1e-13,
        );
    }

    #[test]
    fn stacks_match_pytorch() {
        let x = inp(&[2, 3, 4], 0.0);
        let mem = inp(&[2, 4, 4], 0.5);
        let layer = TransformerEncoderLayer::with_config(
            4,
            2,
            cfg(true, false, Activation::Relu),
            DType::F64,
        );
        let mut enc = TransformerEncoder::new(layer, 2, Some(LayerNorm::new(&[4], DType::F64)));
        let mut want: Vec<String> = Vec::new();
        for i in 0..2 {
            for k in [
                "self_attn.in_proj_weight",
                "self_attn.in_proj_bias",
                "self_attn.out_proj.weight",
                "self_attn.out_proj.bias",
                "linear1.weight",
                "linear1.bias",
                "linear2.weight",
                "linear2.bias",
                "norm1.weight",
                "norm1.bias",
                "norm2.weight",
                "norm2.bias",
            ] {
                want.push(format!("layers.{i}.{k}"));
            }
        }
        want.extend(["norm.weight".to_string(), "norm.bias".to_string()]);
        assert_eq!(keys(&enc), want); // PyTorch's TransformerEncoder state_dict keys
        fill(&enc);
        enc.eval();
        let pad = padding_mask(&[3, 2], 3);
        let masks = EncoderMasks {
            src_key_padding_mask: Some(&pad),
            is_causal: true,
            ..Default::default()
        };
        assert_close(
            "enc_stack",
            &enc.forward_masked(&x, &masks),
            &[2, 3, 4],
            &ENC_STACK,
            1e-10,
            1e-13,
        );

        let layer = TransformerDecoderLayer::with_config(
            4,
            2,
            cfg(true, false, Activation::Relu),
            DType::F64,
        );
        let mut dec = TransformerDecoder::new(layer, 2, Some(LayerNorm::new(&[4], DType::F64)));
        fill(&dec);
        dec.eval();
        let mpad = padding_mask(&[4, 3], 4);
        let masks = DecoderMasks {
            tgt_is_causal: true,
            memory_key_padding_mask: Some(&mpad),
            ..Default::default()
        };
        assert_close(
            "dec_stack",
            &dec.forward(&x, &mem, &masks),
            &[2, 3, 4],
            &DEC_STACK,
            1e-10,
            1e-13,
        );
    }

    #[test]
    fn state_dict_keys_and_summary_follow_pytorch() {
        let dec =
            TransformerDecoderLayer::with_config(4, 2, cfg(false, false, Activation::Relu), ());
        // PyTorch: list(nn.TransformerDecoderLayer(4, 2, dim_feedforward=8).state_dict())
        assert_eq!(
            keys(&dec),
            [
                "self_attn.in_proj_weight",
                "self_attn.in_proj_bias",
                "self_attn.out_proj.weight",
                "self_attn.out_proj.bias",
                "multihead_attn.in_proj_weight",
                "multihead_attn.in_proj_bias",
                "multihead_attn.out_proj.weight",
                "multihead_attn.out_proj.bias",
                "linear1.weight",
                "linear1.bias",
                "linear2.weight",
                "linear2.bias",
                "norm1.weight",
                "norm1.bias",
                "norm2.weight",
                "norm2.bias",
                "norm3.weight",
                "norm3.bias"
            ]
        );
        let enc =
            TransformerEncoderLayer::with_config(4, 2, cfg(false, false, Activation::Relu), ());
        assert_eq!(
            keys(&enc),
            [
                "self_attn.in_proj_weight",
                "self_attn.in_proj_bias",
                "self_attn.out_proj.weight",
                "self_attn.out_proj.bias",
                "linear1.weight",
                "linear1.bias",
                "linear2.weight",
                "linear2.bias",
                "norm1.weight",
                "norm1.bias",
                "norm2.weight",
                "norm2.bias"
            ]
        );
        // the children print in PyTorch's order, with PyTorch's labels
        let labels: Vec<String> = dec
            .summary()
            .lines()
            .filter(|l| l.starts_with("  ("))
            .map(|l| l[3..l.find(')').unwrap_or(3)].to_string())
            .collect();
        assert_eq!(
            labels,
            [
                "self_attn",
                "multihead_attn",
                "linear1",
                "dropout",
                "linear2",
                "norm1",
                "norm2",
                "norm3",
                "dropout1",
                "dropout2",
                "dropout3"
            ]
        );
        assert!(dec.to_string().starts_with("TransformerDecoderLayer(\n  (self_attn): MultiheadAttention(\n    (out_proj): Linear(in_features=4, out_features=4, bias=true)\n  )"));
    }

    /// `eval()` reaches every dropout (the three `Dropout`s and both attentions'), and
    /// `train()` turns them back on.
    #[test]
    fn train_and_eval_reach_every_dropout() {
        let c = TransformerLayerConfig {
            dropout: 0.5,
            ..cfg(true, false, Activation::Relu)
        };
        let mut dec = TransformerDecoderLayer::with_config(4, 2, c, DType::F64);
        let flags = |m: &TransformerDecoderLayer| {
            let mut v = Vec::new();
            walk(m, &mut |e| {
                if let Entry::Enter { name, module, .. } = e
                    && let Some(t) = module.own_training()
                {
                    v.push((name.to_string(), t));
                }
            });
            v
        };
        let names: Vec<String> = flags(&dec).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "self_attn",
                "multihead_attn",
                "dropout",
                "dropout1",
                "dropout2",
                "dropout3"
            ]
        );
        let (x, mem) = (inp(&[2, 3, 4], 0.0), inp(&[2, 4, 4], 0.5));
        let none = DecoderMasks::default();
        assert_ne!(
            dec.forward(&x, &mem, &none).to_vec::<f64>(),
            dec.forward(&x, &mem, &none).to_vec::<f64>()
        );
        dec.eval();
        assert!(flags(&dec).iter().all(|(_, t)| !t));
        let y = dec.forward(&x, &mem, &none).to_vec::<f64>();
        assert_eq!(y, dec.forward(&x, &mem, &none).to_vec::<f64>());
        dec.train();
        assert!(flags(&dec).iter().all(|(_, t)| *t));
        // and the eval output equals a dropout-free layer's
        let mut enc = TransformerEncoderLayer::with_config(4, 2, c, DType::F64);
        enc.eval();
        let c0 = TransformerLayerConfig { dropout: 0.0, ..c };
        let mut enc0 = TransformerEncoderLayer::with_config(4, 2, c0, DType::F64);
        enc0.load_state_dict(&enc.state_dict(), true).unwrap();
        assert_eq!(
            enc.forward(&x).to_vec::<f64>(),
            enc0.forward(&x).to_vec::<f64>()
        );
    }

    #[test]
    fn stack_layers_are_independent_copies() {
        let layer =
            TransformerEncoderLayer::with_config(4, 2, cfg(true, false, Activation::Relu), ());
        let enc = TransformerEncoder::new(layer.clone(), 3, None);
        assert_eq!(enc.num_layers(), 3);
        let w0 = enc.layers[0].ff.linear1.weight.clone();
        let w1 = enc.layers[1].ff.linear1.weight.clone();
        assert_eq!(w0.to_vec::<f32>(), layer.ff.linear1.weight.to_vec::<f32>());
        assert_eq!(w0.to_vec::<f32>(), w1.to_vec::<f32>());
        assert!(!w0.shares_storage(&w1) && !w0.shares_storage(&layer.ff.linear1.weight));
        assert!(w0.requires_grad() && w0.is_leaf());
        w0.requires_grad_(false);
        w0.fill_(1.0);
        assert_ne!(w1.to_vec::<f32>(), w0.to_vec::<f32>());
        assert_eq!(enc.parameters().len(), 3 * 12);
    }

    #[test]
    fn gradcheck_encoder_and_decoder_layers() {
        let c = cfg(true, true, Activation::Gelu);
        let mut enc = TransformerEncoderLayer::with_config(4, 2, c, DType::F64);
        enc.eval();
        let pad = padding_mask(&[3, 2], 3);
        let f = |t: &[Tensor]| {
            let masks = EncoderMasks {
                src_key_padding_mask: Some(&pad),
                is_causal: true,
                ..Default::default()
            };
            enc.forward_masked(&t[0], &masks)
        };
        gradcheck(f, &[inp(&[2, 3, 4], 0.3)], GradcheckOptions::default()).unwrap();

        let mut dec = TransformerDecoderLayer::with_config(
            4,
            2,
            cfg(false, false, Activation::Gelu),
            DType::F64,
        );
        dec.eval();
        let mpad = padding_mask(&[4, 3], 4);
        let f = |t: &[Tensor]| {
            let masks = DecoderMasks {
                tgt_is_causal: true,
                memory_key_padding_mask: Some(&mpad),
                ..Default::default()
            };
            dec.forward(&t[0], &t[1], &masks)
        };
        gradcheck(
            f,
            &[inp(&[3, 2, 4], 0.1), inp(&[4, 2, 4], 0.6)],
            GradcheckOptions::default(),
        )
        .unwrap();
    }

    /// `linear2(relu(linear1(x)))` by hand: d_model 1, width 2.
    #[test]
    fn feed_forward_by_hand() {
        let c = FeedForwardConfig {
            dropout: 0.0,
            ..Default::default()
        };
        let ff = FeedForward::with_config(1, 2, c, DType::F64);
        ff.linear1
            .weight
            .requires_grad_(false)
            .copy_(&Tensor::from_vec(vec![1.0f64, -1.0], [2, 1]));
        ff.linear1
            .bias
            .as_ref()
            .unwrap()
            .requires_grad_(false)
            .fill_(0.0);
        ff.linear2
            .weight
            .requires_grad_(false)
            .copy_(&Tensor::from_vec(vec![1.0f64, 2.0], [1, 2]));
        ff.linear2
            .bias
            .as_ref()
            .unwrap()
            .requires_grad_(false)
            .fill_(0.5);
        // x = 3: h = relu([3, -3]) = [3, 0], y = 3 + 0.5; x = -2: h = [0, 2], y = 4 + 0.5
        let y = ff.forward(&Tensor::from_vec(vec![3.0f64, -2.0], [2, 1]));
        assert_eq!(y.to_vec::<f64>(), vec![3.5, 4.5]);
        assert_eq!(ff.extra_repr(), "activation=relu");
        let fg = FeedForward::with_config(
            1,
            2,
            FeedForwardConfig {
                activation: Activation::Gelu,
                dropout: 0.0,
                bias: false,
            },
            DType::F64,
        );
        assert_eq!(keys(&fg), ["linear1.weight", "linear2.weight"]);
        gradcheck(
            |t| fg.forward(&t[0]),
            &[inp(&[3, 1], 0.2)],
            GradcheckOptions::default(),
        )
        .unwrap();
    }

    #[test]
    fn shape_and_config_errors() {
        let dec =
            TransformerDecoderLayer::with_config(4, 2, cfg(true, false, Activation::Relu), ());
        let x = Tensor::zeros([2, 3, 4], ());
        let err = dec
            .try_forward(&x, &Tensor::zeros([2, 5, 6], ()), &DecoderMasks::default())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "TransformerDecoderLayer: expected memory of shape [B, T, 4] or [T, 4], got [2, 5, 6]"
        );
        let err = dec
            .try_forward(
                &Tensor::zeros([3, 4, 2, 4], ()),
                &x,
                &DecoderMasks::default(),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "TransformerDecoderLayer: expected tgt of shape [B, T, 4] or [T, 4], got [3, 4, 2, 4]"
        );
        // a memory with another batch size is caught by the cross-attention
        let err = dec
            .try_forward(&x, &Tensor::zeros([3, 5, 4], ()), &DecoderMasks::default())
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("MultiheadAttention: query [2, 3, 4], key [3, 5, 4]"),
            "{err}"
        );
        let err =
            TransformerEncoderLayer::try_with_config(6, 4, Default::default(), ()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "TransformerEncoderLayer: d_model (6) must be divisible by nhead (4)"
        );
        let c = TransformerLayerConfig {
            dropout: -0.1,
            ..Default::default()
        };
        let err = TransformerEncoderLayer::try_with_config(8, 2, c, ()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "TransformerEncoderLayer: dropout probability must be in [0, 1], got -0.1"
        );
        let enc =
            TransformerEncoderLayer::with_config(4, 2, cfg(false, false, Activation::Relu), ());
        let err = enc.try_forward(&Tensor::zeros([3, 2, 5], ())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "TransformerEncoderLayer: expected src of shape [T, B, 4] or [T, 4], got [3, 2, 5]"
        );
        assert_eq!(
            (enc.d_model(), enc.nhead(), enc.config().dim_feedforward),
            (4, 2, 8)
        );
    }
}
