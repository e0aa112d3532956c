//! `MultiheadAttention` (PyTorch's `nn.MultiheadAttention`) and the masks it takes.

use super::functional::{
    self, scaled_dot_product_attention, scaled_dot_product_attention_with_weights,
};
use super::init;
use super::linear::Linear;
use super::module::{Module, Visitor, VisitorMut};
use crate::dtype::DType;
use crate::error::{or_panic, Error, Result};
use crate::layout::fmt_shape;
use crate::tensor::{Tensor, TensorOptions};

const OP: &str = "MultiheadAttention";

/// Options of a [`MultiheadAttention`]; the defaults are PyTorch's.
///
/// ```
/// use flint_runtime::nn::MultiheadAttentionConfig;
/// let cfg = MultiheadAttentionConfig { batch_first: true, dropout: 0.1, ..Default::default() };
/// assert!(cfg.bias && cfg.kdim.is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MultiheadAttentionConfig {
    /// Dropout on the attention weights, in training (`0.0`).
    pub dropout: f64,
    /// Biases on the input and output projections (`true`).
    pub bias: bool,
    /// Feature size of the keys (`None` = `embed_dim`).
    pub kdim: Option<usize>,
    /// Feature size of the values (`None` = `embed_dim`).
    pub vdim: Option<usize>,
    /// Inputs and outputs are `[B, T, E]` (else `[T, B, E]`, PyTorch's default `false`).
    pub batch_first: bool,
}

impl Default for MultiheadAttentionConfig {
    fn default() -> Self {
        MultiheadAttentionConfig {
            dropout: 0.0,
            bias: true,
            kdim: None,
            vdim: None,
            batch_first: false,
        }
    }
}

/// The masks and switches of one [`MultiheadAttention::forward`] call, with
/// `nn.MultiheadAttention`'s conventions (the defaults are PyTorch's: no masks, weights
/// returned averaged over heads).
///
/// - `attn_mask`: `[L, S]` or `[B·num_heads, L, S]` (`L` queries, `S` keys). A **bool**
///   mask is `true` where a query may **not** attend (so [`causal_mask`](crate::causal_mask)
///   is one); a float mask is added to the scores.
/// - `key_padding_mask`: `[B, S]` (`[S]` unbatched). A **bool** mask is `true` at keys to
///   ignore (padding; [`padding_mask`](super::padding_mask) makes one); a float mask is
///   added to the scores of every query.
/// - `is_causal`: hides key `j` from query `i` when `j > i`. Unlike PyTorch, where it is
///   only a hint that `attn_mask` *is* the causal mask, the mask is generated here; code
///   ported from PyTorch that passes both gets the same result.
///
/// A query that may attend to no key gets NaN outputs, as in PyTorch.
///
/// ```
/// use flint_runtime::nn::{padding_mask, AttnMasks};
/// let pad = padding_mask(&[3, 2], 3);
/// let masks = AttnMasks { key_padding_mask: Some(&pad), is_causal: true, ..Default::default() };
/// assert!(masks.need_weights && masks.attn_mask.is_none());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct AttnMasks<'a> {
    /// `[L, S]` or `[B·H, L, S]`; bool `true` = may not attend, float = added.
    pub attn_mask: Option<&'a Tensor>,
    /// `[B, S]`; bool `true` = padding (ignored), float = added.
    pub key_padding_mask: Option<&'a Tensor>,
    /// Hide later keys from each query.
    pub is_causal: bool,
    /// Return the attention weights (`true`). With `false`, f32/f64 inputs (on the CPU,
    /// or on CUDA with head dims up to 128) run the fused attention kernels, which never
    /// store the `[B, H, L, S]` weights.
    pub need_weights: bool,
    /// Average the returned weights over heads (`[B, L, S]`) rather than returning them
    /// per head (`[B, H, L, S]`) (`true`).
    pub average_attn_weights: bool,
}

impl Default for AttnMasks<'_> {
    fn default() -> Self {
        AttnMasks {
            attn_mask: None,
            key_padding_mask: None,
            is_causal: false,
            need_weights: true,
            average_attn_weights: true,
        }
    }
}

/// Multi-head attention, `softmax(Q Kᵀ/√d + mask) V` over `num_heads` heads of
/// `embed_dim / num_heads` features, between input and output projections, with
/// `nn.MultiheadAttention`'s parameters, initialisation and mask conventions.
///
/// Parameters (PyTorch's names, in `state_dict` order): `in_proj_weight` `[3E, E]`
/// (Xavier uniform) when keys and values have `embed_dim` features, else
/// `q_proj_weight` `[E, E]`, `k_proj_weight` `[E, kdim]` and `v_proj_weight` `[E, vdim]`;
/// `in_proj_bias` `[3E]` (zeros); `out_proj.weight` `[E, E]` (Linear's default) and
/// `out_proj.bias` `[E]` (zeros).
///
/// Inputs are `[T, B, E]` by default (PyTorch's layout), `[B, T, E]` with
/// [`MultiheadAttentionConfig::batch_first`], or unbatched `[T, E]`. Self-attention
/// (the same tensor as query, key and value) projects with one matrix product.
///
/// ```
/// use flint_runtime::nn::{causal_mask, padding_mask, AttnMasks, ModuleExt};
/// use flint_runtime::nn::{MultiheadAttention, MultiheadAttentionConfig};
/// use flint_runtime::Tensor;
/// let cfg = MultiheadAttentionConfig { batch_first: true, ..Default::default() };
/// let mha = MultiheadAttention::with_config(16, 4, cfg, ());
/// let x = Tensor::randn([2, 5, 16], ()); // [B, T, E]
/// let pad = padding_mask(&[5, 3], 5);
/// let causal = causal_mask(5);
/// let masks = AttnMasks { attn_mask: Some(&causal), key_padding_mask: Some(&pad), ..Default::default() };
/// let (y, w) = mha.forward(&x, &x, &x, &masks);
/// assert_eq!(y.shape(), &[2, 5, 16]);
/// let w = w.unwrap(); // averaged over heads: [B, L, S]
/// assert_eq!(w.shape(), &[2, 5, 5]);
/// assert_eq!(w.i((1, 4)).to_vec::<f32>()[3..], [0.0, 0.0]); // padded keys get no weight
/// let keys: Vec<String> = mha.state_dict().into_iter().map(|(k, _)| k).collect();
/// assert_eq!(keys, ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]);
/// let err = mha.try_forward(&Tensor::zeros([2, 5, 8], ()), &x, &x, &masks).unwrap_err();
/// assert_eq!(err.to_string(), "MultiheadAttention: expected query of shape [B, T, 16] or [T, 16], got [2, 5, 8]");
/// ```
#[derive(Debug, Clone)]
pub struct MultiheadAttention {
    /// `[3E, E]`: the query, key and value projections stacked (when `kdim == vdim == E`).
    pub in_proj_weight: Option<Tensor>,
    /// `[E, E]` (only when `kdim` or `vdim` differs from `E`).
    pub q_proj_weight: Option<Tensor>,
    /// `[E, kdim]` (only when `kdim` or `vdim` differs from `E`).
    pub k_proj_weight: Option<Tensor>,
    /// `[E, vdim]` (only when `kdim` or `vdim` differs from `E`).
    pub v_proj_weight: Option<Tensor>,
    /// `[3E]`, if the layer has biases.
    pub in_proj_bias: Option<Tensor>,
    /// The output projection `E → E`.
    pub out_proj: Linear,
    embed_dim: usize,
    num_heads: usize,
    kdim: usize,
    vdim: usize,
    /// Dropout probability on the attention weights (training only).
    pub dropout: f64,
    /// Inputs and outputs are `[B, T, E]` (else `[T, B, E]`).
    pub batch_first: bool,
    training: bool,
}

impl MultiheadAttention {
    /// With PyTorch's defaults (biases, no dropout, `[T, B, E]` inputs); panics when
    /// `embed_dim` is not a multiple of `num_heads`.
    #[track_caller]
    pub fn new(
        embed_dim: usize,
        num_heads: usize,
        opts: impl Into<TensorOptions>,
    ) -> MultiheadAttention {
        or_panic(MultiheadAttention::try_with_config(
            embed_dim,
            num_heads,
            MultiheadAttentionConfig::default(),
            opts,
        ))
    }

    /// With the options of `config`; panics on an invalid configuration.
    #[track_caller]
    pub fn with_config(
        embed_dim: usize,
        num_heads: usize,
        config: MultiheadAttentionConfig,
        opts: impl Into<TensorOptions>,
    ) -> MultiheadAttention {
        or_panic(MultiheadAttention::try_with_config(
            embed_dim, num_heads, config, opts,
        ))
    }

    /// Fallible [`MultiheadAttention::with_config`]: an [`Error::Config`] when `embed_dim`
    /// is not a positive multiple of `num_heads`, a feature size is zero or the dropout
    /// probability is outside `[0, 1]`.
    ///
    /// ```
    /// use flint_runtime::nn::{MultiheadAttention, MultiheadAttentionConfig};
    /// let err = MultiheadAttention::try_with_config(10, 4, MultiheadAttentionConfig::default(), ())
    ///     .unwrap_err();
    /// assert_eq!(err.to_string(), "MultiheadAttention: embed_dim (10) must be divisible by num_heads (4)");
    /// ```
    pub fn try_with_config(
        embed_dim: usize,
        num_heads: usize,
        config: MultiheadAttentionConfig,
        opts: impl Into<TensorOptions>,
    ) -> Result<MultiheadAttention> {
        let opts = opts.into();
        let kdim = config.kdim.unwrap_or(embed_dim);
        let vdim = config.vdim.unwrap_or(embed_dim);
        if embed_dim == 0 || num_heads == 0 || kdim == 0 || vdim == 0 {
            return Err(Error::config(
                OP,
                format!(
                    "embed_dim, num_heads, kdim and vdim must be positive, got {embed_dim}, {num_heads}, {kdim}, {vdim}"
                ),
            ));
        }
        if !embed_dim.is_multiple_of(num_heads) {
            return Err(Error::config(
                OP,
                format!("embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"),
            ));
        }
        if !(0.0..=1.0).contains(&config.dropout) {
            return Err(Error::config(
                OP,
                format!(
                    "dropout probability must be in [0, 1], got {}",
                    config.dropout
                ),
            ));
        }
        let e = embed_dim;
        let packed = kdim == e && vdim == e;
        let (in_proj_weight, q, k, v) = if packed {
            (
                Some(init::xavier_uniform([3 * e, e], e, 3 * e, opts)),
                None,
                None,
                None,
            )
        } else {
            (
                None,
                Some(init::xavier_uniform([e, e], e, e, opts)),
                Some(init::xavier_uniform([e, kdim], kdim, e, opts)),
                Some(init::xavier_uniform([e, vdim], vdim, e, opts)),
            )
        };
        let mut out_proj = Linear::with_bias(e, e, config.bias, opts);
        if config.bias {
            out_proj.bias = Some(init::zeros([e], opts));
        }
        Ok(MultiheadAttention {
            in_proj_weight,
            q_proj_weight: q,
            k_proj_weight: k,
            v_proj_weight: v,
            in_proj_bias: config.bias.then(|| init::zeros([3 * e], opts)),
            out_proj,
            embed_dim,
            num_heads,
            kdim,
            vdim,
            dropout: config.dropout,
            batch_first: config.batch_first,
            training: true,
        })
    }

    /// The model width `E`.
    pub fn embed_dim(&self) -> usize {
        self.embed_dim
    }

    /// The number of heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// The features of one head, `E / num_heads`.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// The feature size of the keys.
    pub fn kdim(&self) -> usize {
        self.kdim
    }

    /// The feature size of the values.
    pub fn vdim(&self) -> usize {
        self.vdim
    }

    /// Attends from `query` (`[T, B, E]`, or `[B, T, E]` when batch-first, or `[T, E]`)
    /// to `key` and `value` (`S` positions, `kdim` and `vdim` features); returns the
    /// output, shaped like `query`, and (when `masks.need_weights`) the attention weights
    /// `[B, L, S]` averaged over heads, or `[B, H, L, S]` per head (without the batch dim
    /// when unbatched). The weights are those before dropout. Panics where
    /// [`MultiheadAttention::try_forward`] fails.
    #[track_caller]
    pub fn forward(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        masks: &AttnMasks<'_>,
    ) -> (Tensor, Option<Tensor>) {
        or_panic(self.try_forward(query, key, value, masks))
    }

    /// Fallible [`MultiheadAttention::forward`]: an [`Error::Shape`] naming the tensor
    /// whose shape does not fit (query, key, value, attn_mask, key_padding_mask), an
    /// [`Error::DType`] for a mask that is neither bool nor floating-point.
    pub fn try_forward(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        masks: &AttnMasks<'_>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (e, h) = (self.embed_dim, self.num_heads);
        let (bdim, tdim) = if self.batch_first { (0, 1) } else { (1, 0) };
        let layout = |feat: usize, t: &str| {
            if self.batch_first {
                format!("[B, {t}, {feat}] or [{t}, {feat}]")
            } else {
                format!("[{t}, B, {feat}] or [{t}, {feat}]")
            }
        };
        let unbatched = query.ndim() == 2;
        if !(query.ndim() == 2 || query.ndim() == 3) || query.size(-1) != e {
            return Err(Error::shape(
                OP,
                format!(
                    "expected query of shape {}, got {}",
                    layout(e, "T"),
                    fmt_shape(query.shape())
                ),
            ));
        }
        for (name, t, feat) in [("key", key, self.kdim), ("value", value, self.vdim)] {
            if t.ndim() != query.ndim() || t.size(-1) != feat {
                let want = if unbatched {
                    format!("[S, {feat}]")
                } else if self.batch_first {
                    format!("[B, S, {feat}]")
                } else {
                    format!("[S, B, {feat}]")
                };
                return Err(Error::shape(
                    OP,
                    format!(
                        "expected {name} of shape {want} for a query of shape {}, got {}",
                        fmt_shape(query.shape()),
                        fmt_shape(t.shape())
                    ),
                ));
            }
        }
        // everything below works on batch-first [B, T, F]
        let to_bf = |t: &Tensor| -> Result<Tensor> {
            if unbatched {
                t.try_unsqueeze(0)
            } else if self.batch_first {
                Ok(t.clone())
            } else {
                t.try_transpose(0, 1)
            }
        };
        let (xq, xk, xv) = (to_bf(query)?, to_bf(key)?, to_bf(value)?);
        let (b, l, s) = (xq.size(0), xq.size(1), xk.size(1));
        if xk.size(0) != b || xv.size(0) != b || xv.size(1) != s {
            let (bd, td) = if unbatched {
                (None, 0)
            } else {
                (Some(bdim), tdim)
            };
            return Err(Error::shape(
                OP,
                format!(
                    "query {}, key {} and value {} must have the same batch size{}, and key and value the same length (dim {td})",
                    fmt_shape(query.shape()),
                    fmt_shape(key.shape()),
                    fmt_shape(value.shape()),
                    bd.map_or(String::new(), |d| format!(" (dim {d})"))
                ),
            ));
        }

        let (q, k, v) = self.project(query, key, value, &xq, &xk, &xv)?;
        let d = e / h;
        let heads = |t: &Tensor, len: usize| -> Result<Tensor> {
            t.try_reshape([b, len, h, d])?.try_transpose(1, 2)
        };
        let (q, k, v) = (heads(&q, l)?, heads(&k, s)?, heads(&v, s)?);

        let mask = self.additive_mask(masks, q.dtype(), b, l, s, unbatched)?;
        let p_drop = if self.training { self.dropout } else { 0.0 };
        // the fused kernel unless the weights are wanted (it never stores them)
        let (o, p) = if masks.need_weights {
            let (o, p) = scaled_dot_product_attention_with_weights(
                &q,
                &k,
                &v,
                mask.as_ref(),
                masks.is_causal,
                p_drop,
                self.training,
                None,
            )?;
            (o, Some(p))
        } else {
            let o = scaled_dot_product_attention(
                &q,
                &k,
                &v,
                mask.as_ref(),
                masks.is_causal,
                p_drop,
                self.training,
                None,
            )?;
            (o, None)
        };
        let o = o.try_transpose(1, 2)?.try_reshape([b, l, e])?;
        let o = functional::linear(&o, &self.out_proj.weight, self.out_proj.bias.as_ref())?;
        let out = if unbatched {
            o.squeeze_dim(0)
        } else if self.batch_first {
            o
        } else {
            o.try_transpose(0, 1)?
        };
        let weights = match p {
            Some(p) => {
                let w = if masks.average_attn_weights {
                    p.try_mean([1isize], false)?
                } else {
                    p
                };
                Some(if unbatched { w.squeeze_dim(0) } else { w })
            }
            None => None,
        };
        Ok((out, weights))
    }

    /// The query, key and value projections of the batch-first inputs `xq, xk, xv`
    /// (`query`, `key`, `value` are the caller's tensors, compared for the fast paths).
    fn project(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        xq: &Tensor,
        xk: &Tensor,
        xv: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let e = self.embed_dim;
        let bias = |i: usize, n: usize| -> Result<Option<Tensor>> {
            self.in_proj_bias
                .as_ref()
                .map(|b| b.try_narrow(0, i * e, n * e))
                .transpose()
        };
        if let Some(w) = &self.in_proj_weight {
            if query.same_tensor(key) && key.same_tensor(value) {
                // self-attention: one product with the stacked weight
                let qkv = functional::linear(xq, w, self.in_proj_bias.as_ref())?;
                let mut c = qkv.try_chunk(3, -1)?.into_iter();
                let (q, k, v) = (c.next(), c.next(), c.next());
                if let (Some(q), Some(k), Some(v)) = (q, k, v) {
                    return Ok((q, k, v));
                }
            } else if key.same_tensor(value) {
                let q = functional::linear(xq, &w.try_narrow(0, 0, e)?, bias(0, 1)?.as_ref())?;
                let kv = functional::linear(xk, &w.try_narrow(0, e, 2 * e)?, bias(1, 2)?.as_ref())?;
                let mut c = kv.try_chunk(2, -1)?.into_iter();
                if let (Some(k), Some(v)) = (c.next(), c.next()) {
                    return Ok((q, k, v));
                }
            }
            let q = functional::linear(xq, &w.try_narrow(0, 0, e)?, bias(0, 1)?.as_ref())?;
            let k = functional::linear(xk, &w.try_narrow(0, e, e)?, bias(1, 1)?.as_ref())?;
            let v = functional::linear(xv, &w.try_narrow(0, 2 * e, e)?, bias(2, 1)?.as_ref())?;
            return Ok((q, k, v));
        }
        let missing = || Error::config(OP, "neither in_proj_weight nor q/k/v_proj_weight is set");
        let wq = self.q_proj_weight.as_ref().ok_or_else(missing)?;
        let wk = self.k_proj_weight.as_ref().ok_or_else(missing)?;
        let wv = self.v_proj_weight.as_ref().ok_or_else(missing)?;
        Ok((
            functional::linear(xq, wq, bias(0, 1)?.as_ref())?,
            functional::linear(xk, wk, bias(1, 1)?.as_ref())?,
            functional::linear(xv, wv, bias(2, 1)?.as_ref())?,
        ))
    }

    /// `attn_mask` and `key_padding_mask` merged into one float mask to add to the
    /// `[B, H, L, S]` scores (bool `true` → −∞), in `dtype`; `None` without masks.
    fn additive_mask(
        &self,
        masks: &AttnMasks<'_>,
        dtype: DType,
        b: usize,
        l: usize,
        s: usize,
        unbatched: bool,
    ) -> Result<Option<Tensor>> {
        let h = self.num_heads;
        let mut out: Option<Tensor> = None;
        if let Some(m) = masks.attn_mask {
            let m4 = match m.shape() {
                [ml, ms] if (*ml, *ms) == (l, s) => m.clone(),
                [n, ml, ms] if (*n, *ml, *ms) == (b * h, l, s) => m.try_reshape([b, h, l, s])?,
                _ => {
                    let batched = if unbatched {
                        format!("[{h}, {l}, {s}] (num_heads, L, S)")
                    } else {
                        format!("[{}, {l}, {s}] (B·num_heads, L, S)", b * h)
                    };
                    return Err(Error::shape(
                        OP,
                        format!(
                            "expected attn_mask of shape [{l}, {s}] (L, S) or {batched}, got {}",
                            fmt_shape(m.shape())
                        ),
                    ));
                }
            };
            out = Some(to_additive("attn_mask", &m4, dtype)?);
        }
        if let Some(m) = masks.key_padding_mask {
            let ok = if unbatched {
                m.shape() == [s]
            } else {
                m.shape() == [b, s]
            };
            if !ok {
                let want = if unbatched {
                    format!("[{s}] (S)")
                } else {
                    format!("[{b}, {s}] (B, S)")
                };
                return Err(Error::shape(
                    OP,
                    format!(
                        "expected key_padding_mask of shape {want}, got {}",
                        fmt_shape(m.shape())
                    ),
                ));
            }
            let kp = to_additive("key_padding_mask", &m.try_reshape([b, 1, 1, s])?, dtype)?;
            out = Some(match out {
                Some(a) => a.try_add(&kp)?,
                None => kp,
            });
        }
        Ok(out)
    }
}

/// A bool mask (`true` = hidden) as `0 / −∞`, a float mask as is, in `dtype`.
fn to_additive(name: &str, m: &Tensor, dtype: DType) -> Result<Tensor> {
    if m.dtype() == DType::Bool {
        Tensor::zeros(m.shape(), (dtype, m.device())).try_masked_fill(m, f64::NEG_INFINITY)
    } else if m.dtype().is_float() {
        Ok(m.to_dtype(dtype))
    } else {
        Err(Error::dtype(
            OP,
            format!(
                "{name} must be a bool or floating-point tensor, got {}",
                m.dtype()
            ),
        ))
    }
}

impl Module for MultiheadAttention {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.param_opt("in_proj_weight", self.in_proj_weight.as_ref());
        v.param_opt("q_proj_weight", self.q_proj_weight.as_ref());
        v.param_opt("k_proj_weight", self.k_proj_weight.as_ref());
        v.param_opt("v_proj_weight", self.v_proj_weight.as_ref());
        v.param_opt("in_proj_bias", self.in_proj_bias.as_ref());
        v.child("out_proj", &self.out_proj);
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.param_opt("in_proj_weight", self.in_proj_weight.as_mut());
        v.param_opt("q_proj_weight", self.q_proj_weight.as_mut());
        v.param_opt("k_proj_weight", self.k_proj_weight.as_mut());
        v.param_opt("v_proj_weight", self.v_proj_weight.as_mut());
        v.param_opt("in_proj_bias", self.in_proj_bias.as_mut());
        v.child("out_proj", &mut self.out_proj);
    }
    fn set_own_training(&mut self, training: bool) {
        self.training = training;
    }
    fn own_training(&self) -> Option<bool> {
        Some(self.training)
    }
}

crate::impl_module_display!(MultiheadAttention);

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers shared by the attention and transformer tests: the deterministic weights
    //! and inputs of the PyTorch reference script below, and a closeness check.
    //!
    //! The reference numbers in these tests were printed by this script (torch 2.15,
    //! float64, eval mode, MHA fast path off):
    //!
    //! ```text
    //! import torch, torch.nn as nn
    //! torch.backends.mha.set_fastpath_enabled(False)
    //! torch.set_default_dtype(torch.float64)
    //! def fill(m):
    //!     for name, p in m.named_parameters():
    //!         c = sum(name.encode()) % 97
    //!         i = torch.arange(p.numel(), dtype=torch.float64)
    //!         with torch.no_grad():
    //!             p.copy_((0.4 * torch.sin(0.7 * i + 0.1 * c + 0.3)).view_as(p))
    //!     return m.eval()
    //! def inp(shape, phase):
    //!     n = 1
    //!     for s in shape: n *= s
    //!     i = torch.arange(n, dtype=torch.float64)
    //!     return (torch.sin(0.5 * i + phase) + 0.2 * torch.cos(1.3 * i)).view(shape)
    //! def show(name, t):
    //!     vals = ", ".join(repr(v) for v in t.flatten().tolist())
    //!     print(f"/// {list(t.shape)}\nconst {name.upper()}: [f64; {t.numel()}] = [{vals}];")
    //! def show_old(name, t):
    //!     print(f"{name} {list(t.shape)}: [" + ", ".join(f"{v:.17e}" for v in t.flatten().tolist()) + "]")
    //! kpm3 = torch.tensor([[False, False, False], [False, False, True]])           # lengths [3, 2]
    //! kpm4 = torch.tensor([[False] * 4, [False, False, False, True]])             # lengths [4, 3]
    //! causal = torch.ones(3, 3, dtype=torch.bool).triu(1)
    //! # 1: self-attention, batch_first, causal + key padding, averaged weights
    //! m = fill(nn.MultiheadAttention(4, 2, batch_first=True))
    //! x = inp((2, 3, 4), 0.0)
    //! y, w = m(x, x, x, attn_mask=causal, key_padding_mask=kpm3)
    //! show("mha_self_y", y); show("mha_self_w", w)
    //! # 2: cross-attention, kdim 3, vdim 5, seq-first, float attn_mask, per-head weights
    //! m = fill(nn.MultiheadAttention(4, 2, kdim=3, vdim=5))
    //! q, k, v = inp((3, 2, 4), 0.1), inp((4, 2, 3), 0.2), inp((4, 2, 5), 0.3)
    //! fm = 0.5 * torch.sin(torch.arange(12.0)).view(3, 4)
    //! y, w = m(q, k, v, attn_mask=fm, key_padding_mask=kpm4, average_attn_weights=False)
    //! show("mha_cross_y", y); show("mha_cross_w", w)
    //! # 3: encoder layer, post-norm, batch_first, relu, causal + padding
    //! l = fill(nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, batch_first=True))
    //! show("enc_post", l(x, src_mask=causal, src_key_padding_mask=kpm3))
    //! # 4: encoder layer, pre-norm, seq-first, gelu, no bias, eps 1e-6, padding only
    //! l = fill(nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, activation="gelu", norm_first=True,
    //!                                     bias=False, layer_norm_eps=1e-6))
    //! xs = inp((3, 2, 4), 0.4)
    //! show("enc_pre", l(xs, src_key_padding_mask=kpm3))
    //! # 5: decoder layer, post-norm, batch_first: causal tgt + tgt/memory padding
    //! mem = inp((2, 4, 4), 0.5)
    //! l = fill(nn.TransformerDecoderLayer(4, 2, dim_feedforward=8, batch_first=True))
    //! show("dec_post", l(x, mem, tgt_mask=causal, tgt_key_padding_mask=kpm3, memory_key_padding_mask=kpm4))
    //! # 6: decoder layer, pre-norm, batch_first, gelu: causal tgt + float memory mask
    //! l = fill(nn.TransformerDecoderLayer(4, 2, dim_feedforward=8, batch_first=True, norm_first=True,
    //!                                     activation="gelu"))
    //! show("dec_pre", l(x, mem, tgt_mask=causal, memory_mask=fm))
    //! # 7: a 2-layer encoder with a final norm (layers named layers.0, layers.1, norm)
    //! enc = fill(nn.TransformerEncoder(nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, batch_first=True),
    //!                                  2, norm=nn.LayerNorm(4), enable_nested_tensor=False))
    //! show("enc_stack", enc(x, mask=causal, src_key_padding_mask=kpm3))
    //! print("enc_stack keys", list(enc.state_dict().keys()))
    //! dec = nn.TransformerDecoderLayer(4, 2, dim_feedforward=8)
    //! print("dec keys", list(dec.state_dict().keys()))
    //! print(nn.TransformerDecoderLayer(4, 2, dim_feedforward=8))
    //! # 8: 2-layer decoder, final norm
    //! dec = fill(nn.TransformerDecoder(nn.TransformerDecoderLayer(4, 2, dim_feedforward=8, batch_first=True), 2, norm=nn.LayerNorm(4)))
    //! show("dec_stack", dec(x, mem, tgt_mask=causal, memory_key_padding_mask=kpm4))
    //! ```
    use crate::autograd::NoGradGuard;
    use crate::nn::ModuleExt;
    use crate::tensor::Tensor;

    /// Sets every parameter as the script's `fill` does: `0.4 sin(0.7 i + 0.1 c + 0.3)`
    /// with `c` the byte sum of the parameter's dotted name mod 97 (so the names must
    /// be PyTorch's for the numbers to match).
    pub fn fill<M: ModuleExt + ?Sized>(m: &M) {
        let _g = NoGradGuard::new();
        for (name, p) in m.named_parameters() {
            let c = (name.bytes().map(u64::from).sum::<u64>() % 97) as f64;
            let v: Vec<f64> = (0..p.numel())
                .map(|i| 0.4 * (0.7 * i as f64 + 0.1 * c + 0.3).sin())
                .collect();
            p.copy_(&Tensor::from_vec(v, p.shape()).to_dtype(p.dtype()));
        }
    }

    /// The script's `inp`: `sin(0.5 i + phase) + 0.2 cos(1.3 i)`, f64.
    pub fn inp(shape: &[usize], phase: f64) -> Tensor {
        let n = shape.iter().product::<usize>();
        let v: Vec<f64> = (0..n)
            .map(|i| (0.5 * i as f64 + phase).sin() + 0.2 * (1.3 * i as f64).cos())
            .collect();
        Tensor::from_vec(v, shape)
    }

    /// The script's float mask `0.5 sin(arange(12)).view(3, 4)`.
    pub fn float_mask() -> Tensor {
        let v: Vec<f64> = (0..12).map(|i| 0.5 * (i as f64).sin()).collect();
        Tensor::from_vec(v, [3, 4])
    }

    /// `got` (any float dtype) equals `want` of `shape` within `rtol`·|want| + `atol`.
    #[track_caller]
    pub fn assert_close(
        what: &str,
        got: &Tensor,
        shape: &[usize],
        want: &[f64],
        rtol: f64,
        atol: f64,
    ) {
        assert_eq!(got.shape(), shape, "{what}: shape");
        let g = got.to_dtype(crate::DType::F64).to_vec::<f64>();
        assert_eq!(g.len(), want.len(), "{what}: length");
        for (i, (a, b)) in g.iter().zip(want).enumerate() {
            assert!(
                a == b || (a - b).abs() <= rtol * b.abs() + atol,
                "{what}[{i}]: got {a}, want {b} (diff {:e})",
                (a - b).abs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{assert_close, fill, float_mask, inp};
    use super::*;
    use crate::autograd::{gradcheck, gradgradcheck, GradcheckOptions};
    use crate::nn::{causal_mask, padding_mask, ModuleExt};
    use serde_json::Value;

    /// [2, 3, 4]
    const MHA_SELF_Y: [f64; 24] = [
        0.14310385725454483,
        0.20009152282524612,
        -0.21577529042402227,
        -0.41830956004503705,
        0.14823639771870226,
        0.18262419900931812,
        -0.1879916254260578,
        -0.45319901596258116,
        -0.012859645428523248,
        0.33089994643312504,
        -0.3063130258829402,
        -0.37850462960703274,
        0.04770492558089978,
        0.3180654447654816,
        -0.3426916884871574,
        -0.2971165506807073,
        0.09507684541709738,
        0.25441782630365634,
        -0.2701231922331819,
        -0.3702202490173336,
        0.1268932199387476,
        0.20165291564464705,
        -0.2025070115022236,
        -0.4448742905091217,
    ];
    /// [2, 3, 3]
    const MHA_SELF_W: [f64; 18] = [
        1.0,
        0.0,
        0.0,
        0.6452626735650044,
        0.35473732643499556,
        0.0,
        0.1549529248042975,
        0.4325752841547156,
        0.41247179104098686,
        1.0,
        0.0,
        0.0,
        0.6526983004947644,
        0.34730169950523554,
        0.0,
        0.2702009809690125,
        0.7297990190309875,
        0.0,
    ];
    /// [3, 2, 4]
    const MHA_CROSS_Y: [f64; 24] = [
        0.07261891107866833,
        0.24928653043711468,
        -0.2379956146906803,
        -0.4256315957750112,
        -0.05088002963949545,
        0.41637035699589514,
        -0.42935690226869644,
        -0.2321056617435377,
        0.01840118778823946,
        0.3204410665860896,
        -0.3178646785992108,
        -0.34627729923816525,
        -0.04565974352981561,
        0.42531749911656797,
        -0.45143758276084717,
        -0.19944298295046825,
        0.08392578584721705,
        0.2511994945974508,
        -0.2529073645967633,
        -0.39944419213539706,
        -0.16678255785256946,
        0.539859436369727,
        -0.5461627128848814,
        -0.13548065255240568,
    ];
    /// [2, 2, 3, 4]
    const MHA_CROSS_W: [f64; 48] = [
        0.2172261987977275,
        0.2073430096571638,
        0.41500593870705543,
        0.16042485283805313,
        0.11746535381976062,
        0.27400530594362743,
        0.14286694554734602,
        0.465662394689266,
        0.427890266675676,
        0.2242624850659869,
        0.2287245795467735,
        0.1191226687115636,
        0.11126573501313423,
        0.456710345996715,
        0.2025313614216797,
        0.22949255756847112,
        0.3140226745296251,
        0.08843960750587625,
        0.29139566544465617,
        0.3061420525198425,
        0.35808199131695095,
        0.3247367795455593,
        0.16581700176785438,
        0.15136422736963548,
        0.2540415225592011,
        0.3720700857470096,
        0.37388839169378923,
        0.0,
        0.3147243670854331,
        0.3219407255586451,
        0.3633349073559218,
        0.0,
        0.3268359312244768,
        0.5035869674601561,
        0.16957710131536718,
        0.0,
        0.272623930591306,
        0.2908214276857672,
        0.4365546417229268,
        0.0,
        0.18558260119774256,
        0.5740036482756367,
        0.24041375052662067,
        0.0,
        0.630606814319339,
        0.06350035491656862,
        0.3058928307640924,
        0.0,
    ];

    fn golden(name: &str) -> Value {
        let path = format!("{}/../tests/golden/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("golden file");
        serde_json::from_str(&text).expect("golden JSON")
    }

    /// A tensor of a golden file (f64 / i64 / bool), as `tests/common/mod.rs` reads them.
    fn golden_tensor(j: &Value, section: &str, key: &str) -> Tensor {
        let v = &j[section][key];
        let shape: Vec<usize> = v["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect();
        let data = v["data"].as_array().expect("data");
        match v["dtype"].as_str().expect("dtype") {
            "f64" => Tensor::from_vec(
                data.iter()
                    .map(|x| x.as_f64().expect("f64"))
                    .collect::<Vec<f64>>(),
                shape,
            ),
            "i64" => Tensor::from_vec(
                data.iter()
                    .map(|x| x.as_i64().expect("i64"))
                    .collect::<Vec<i64>>(),
                shape,
            ),
            "bool" => Tensor::from_vec(
                data.iter()
                    .map(|x| x.as_bool().expect("bool"))
                    .collect::<Vec<bool>>(),
                shape,
            ),
            other => panic!("unknown dtype {other}"),
        }
    }

    fn close_to(what: &str, got: &Tensor, want: &Tensor, rtol: f64) {
        assert_close(what, got, want.shape(), &want.to_vec::<f64>(), rtol, 1e-12);
    }

    /// `tests/golden/attention_*.json`: y, probs and the gradients of q, k, v, with the
    /// bool SDPA mask of the file, and again with the causal flag and an additive
    /// key-padding mask built the way `MultiheadAttention` builds it.
    #[test]
    fn sdpa_matches_golden_cases() {
        for tag in ["causal", "padding", "causal_padding"] {
            let j = golden(&format!("attention_{tag}"));
            let leaf = |k: &str| golden_tensor(&j, "inputs", k).requires_grad_(true);
            let (q, k, v) = (leaf("q"), leaf("k"), leaf("v"));
            let mask = golden_tensor(&j, "inputs", "attn_mask");
            let gy = golden_tensor(&j, "inputs", "grad_output");
            let scale = j["params"]["scale"].as_f64().expect("scale");
            let out = |name: &str| golden_tensor(&j, "outputs", name);
            let (y, p) = scaled_dot_product_attention_with_weights(
                &q,
                &k,
                &v,
                Some(&mask),
                false,
                0.0,
                false,
                Some(scale),
            )
            .unwrap();
            close_to(&format!("{tag} y"), &y, &out("y"), 1e-10);
            close_to(&format!("{tag} probs"), &p, &out("probs"), 1e-10);
            y.backward_with(&gy);
            for (name, t) in [("grad_q", &q), ("grad_k", &k), ("grad_v", &v)] {
                close_to(
                    &format!("{tag} {name}"),
                    &t.grad().expect("grad"),
                    &out(name),
                    1e-9,
                );
            }

            // the same through the causal flag and MultiheadAttention's additive mask
            let lengths: Vec<usize> = golden_tensor(&j, "inputs", "key_lengths")
                .to_vec::<i64>()
                .iter()
                .map(|&l| l as usize)
                .collect();
            let causal = j["params"]["causal"].as_bool().expect("causal");
            let pad = j["params"]["padding"].as_bool().expect("padding");
            let t = q.size(2);
            let add = pad.then(|| {
                to_additive(
                    "key_padding_mask",
                    &padding_mask(&lengths, t).reshape([2, 1, 1, t]),
                    DType::F64,
                )
                .unwrap()
            });
            let (q, k, v) = (
                q.detach().requires_grad_(true),
                k.detach().requires_grad_(true),
                v.detach().requires_grad_(true),
            );
            let (y, p) = scaled_dot_product_attention_with_weights(
                &q,
                &k,
                &v,
                add.as_ref(),
                causal,
                0.0,
                false,
                None,
            )
            .unwrap();
            close_to(&format!("{tag} y (flag)"), &y, &out("y"), 1e-10);
            close_to(&format!("{tag} probs (flag)"), &p, &out("probs"), 1e-10);
            y.backward_with(&gy);
            for (name, t) in [("grad_q", &q), ("grad_k", &k), ("grad_v", &v)] {
                close_to(
                    &format!("{tag} {name} (flag)"),
                    &t.grad().expect("grad"),
                    &out(name),
                    1e-9,
                );
            }

            // the fused kernel, with the golden bool mask and with the flags
            for (m, c, sc, what) in [
                (Some(&mask), false, Some(scale), "fused"),
                (add.as_ref(), causal, None, "fused (flag)"),
            ] {
                let (q, k, v) = (
                    q.detach().requires_grad_(true),
                    k.detach().requires_grad_(true),
                    v.detach().requires_grad_(true),
                );
                let y = scaled_dot_product_attention(&q, &k, &v, m, c, 0.0, false, sc).unwrap();
                assert_eq!(
                    y.grad_fn().expect("a node").name(),
                    "scaled_dot_product_attention"
                );
                close_to(&format!("{tag} y ({what})"), &y, &out("y"), 1e-10);
                y.backward_with(&gy);
                for (name, t) in [("grad_q", &q), ("grad_k", &k), ("grad_v", &v)] {
                    close_to(
                        &format!("{tag} {name} ({what})"),
                        &t.grad().expect("grad"),
                        &out(name),
                        1e-9,
                    );
                }
            }
        }
    }

    /// PyTorch's `is_causal` is aligned at the top left: with 2 queries and 4 keys,
    /// query 0 sees key 0 and query 1 keys 0 and 1.
    #[test]
    fn sdpa_causal_is_top_left_aligned() {
        let q = Tensor::zeros([2, 3], DType::F64);
        let k = Tensor::zeros([4, 3], DType::F64);
        let v = Tensor::from_vec(vec![1.0f64, 2.0, 4.0, 8.0], [4, 1]);
        let (y, p) =
            scaled_dot_product_attention_with_weights(&q, &k, &v, None, true, 0.0, false, None)
                .unwrap();
        assert_eq!(
            p.to_vec::<f64>(),
            vec![1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0]
        );
        assert_eq!(y.to_vec::<f64>(), vec![1.0, 1.5]);
        let y = scaled_dot_product_attention(&q, &k, &v, None, true, 0.0, false, None).unwrap();
        assert_eq!(y.to_vec::<f64>(), vec![1.0, 1.5]);
    }

    fn mha(e: usize, h: usize, cfg: MultiheadAttentionConfig) -> MultiheadAttention {
        let m = MultiheadAttention::with_config(e, h, cfg, DType::F64);
        fill(&m);
        m
    }

    fn batch_first() -> MultiheadAttentionConfig {
        MultiheadAttentionConfig {
            batch_first: true,
            ..Default::default()
        }
    }

    #[test]
    fn self_attention_matches_pytorch() {
        let m = mha(4, 2, batch_first());
        let x = inp(&[2, 3, 4], 0.0);
        let causal = causal_mask(3);
        let pad = padding_mask(&[3, 2], 3);
        let masks = AttnMasks {
            attn_mask: Some(&causal),
            key_padding_mask: Some(&pad),
            ..Default::default()
        };
        let (y, w) = m.forward(&x, &x, &x, &masks);
        assert_close("y", &y, &[2, 3, 4], &MHA_SELF_Y, 1e-10, 1e-13);
        assert_close("w", &w.unwrap(), &[2, 3, 3], &MHA_SELF_W, 1e-10, 1e-13);
        // the generated causal mask instead of the explicit one; both together
        for attn_mask in [None, Some(&causal)] {
            let masks = AttnMasks {
                attn_mask,
                key_padding_mask: Some(&pad),
                is_causal: true,
                ..Default::default()
            };
            let (y, w) = m.forward(&x, &x, &x, &masks);
            assert_close("y (is_causal)", &y, &[2, 3, 4], &MHA_SELF_Y, 1e-10, 1e-13);
            assert_close(
                "w (is_causal)",
                &w.unwrap(),
                &[2, 3, 3],
                &MHA_SELF_W,
                1e-10,
                1e-13,
            );
        }
        // in f32, with a float padding mask
        let mut m32 = m.clone();
        m32.to_dtype(DType::F32).unwrap();
        let x32 = x.to_dtype(DType::F32);
        let fpad = Tensor::zeros([2, 3], DType::F32).masked_fill(&pad, f64::NEG_INFINITY);
        let masks = AttnMasks {
            key_padding_mask: Some(&fpad),
            is_causal: true,
            ..Default::default()
        };
        let (y, w) = m32.forward(&x32, &x32, &x32, &masks);
        assert_eq!(y.dtype(), DType::F32);
        assert_close("y f32", &y, &[2, 3, 4], &MHA_SELF_Y, 1e-5, 1e-6);
        assert_close("w f32", &w.unwrap(), &[2, 3, 3], &MHA_SELF_W, 1e-5, 1e-6);
    }

    #[test]
    fn cross_attention_with_kdim_vdim_matches_pytorch() {
        let cfg = MultiheadAttentionConfig {
            kdim: Some(3),
            vdim: Some(5),
            ..Default::default()
        };
        let m = mha(4, 2, cfg);
        let names: Vec<String> = m.state_dict().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            [
                "q_proj_weight",
                "k_proj_weight",
                "v_proj_weight",
                "in_proj_bias",
                "out_proj.weight",
                "out_proj.bias"
            ]
        );
        let (q, k, v) = (
            inp(&[3, 2, 4], 0.1),
            inp(&[4, 2, 3], 0.2),
            inp(&[4, 2, 5], 0.3),
        );
        let fm = float_mask();
        let pad = padding_mask(&[4, 3], 4);
        let masks = AttnMasks {
            attn_mask: Some(&fm),
            key_padding_mask: Some(&pad),
            average_attn_weights: false,
            ..Default::default()
        };
        let (y, w) = m.forward(&q, &k, &v, &masks);
        assert_close("y", &y, &[3, 2, 4], &MHA_CROSS_Y, 1e-10, 1e-13);
        assert_close("w", &w.unwrap(), &[2, 2, 3, 4], &MHA_CROSS_W, 1e-10, 1e-13);
        // no weights asked for
        let masks = AttnMasks {
            need_weights: false,
            ..masks
        };
        assert!(m.forward(&q, &k, &v, &masks).1.is_none());
    }

    #[test]
    fn fast_paths_agree_with_separate_projections() {
        let m = mha(4, 2, batch_first());
        let x = inp(&[2, 3, 4], 0.7);
        let mem = inp(&[2, 5, 4], 0.2);
        let masks = AttnMasks::default();
        let (same, _) = m.forward(&x, &x, &x, &masks);
        let (sep, _) = m.forward(&x, &x.deep_clone(), &x.deep_clone(), &masks);
        assert_close(
            "self",
            &same,
            &[2, 3, 4],
            &sep.to_vec::<f64>(),
            1e-12,
            1e-14,
        );
        let (kv, _) = m.forward(&x, &mem, &mem, &masks);
        let (sep, _) = m.forward(&x, &mem, &mem.deep_clone(), &masks);
        assert_close("kv", &kv, &[2, 3, 4], &sep.to_vec::<f64>(), 1e-12, 1e-14);
    }

    #[test]
    fn unbatched_inputs_match_a_batch_of_one() {
        let m = mha(4, 2, batch_first());
        let x = inp(&[3, 4], 0.3);
        let pad = padding_mask(&[2], 3);
        let masks = AttnMasks {
            key_padding_mask: Some(&pad.reshape([3])),
            is_causal: true,
            ..Default::default()
        };
        let (y, w) = m.forward(&x, &x, &x, &masks);
        let xb = x.unsqueeze(0);
        let masks_b = AttnMasks {
            key_padding_mask: Some(&pad),
            is_causal: true,
            ..Default::default()
        };
        let (yb, wb) = m.forward(&xb, &xb, &xb, &masks_b);
        assert_close("y", &y, &[3, 4], &yb.to_vec::<f64>(), 1e-12, 1e-14);
        assert_close(
            "w",
            &w.unwrap(),
            &[3, 3],
            &wb.unwrap().to_vec::<f64>(),
            1e-12,
            1e-14,
        );
    }

    /// A `[B·H, L, S]` bool mask applies per head: head 0 causal, head 1 unmasked.
    #[test]
    fn per_head_attn_mask() {
        let m = mha(4, 2, batch_first());
        let x = inp(&[2, 3, 4], 0.0);
        let c = causal_mask(3);
        let none = Tensor::zeros([3, 3], DType::Bool);
        let per_head = Tensor::stack(&[&c, &none, &c, &none], 0); // b0h0, b0h1, b1h0, b1h1
        let masks = AttnMasks {
            attn_mask: Some(&per_head),
            average_attn_weights: false,
            ..Default::default()
        };
        let w = m.forward(&x, &x, &x, &masks).1.unwrap();
        assert_eq!(w.shape(), &[2, 2, 3, 3]);
        let w = w.to_vec::<f64>();
        for b in 0..2 {
            for i in 0..3 {
                for j in 0..3 {
                    let h0 = w[((b * 2) * 3 + i) * 3 + j];
                    let h1 = w[((b * 2 + 1) * 3 + i) * 3 + j];
                    assert_eq!(h0 == 0.0, j > i, "head 0 is causal");
                    assert!(h1 > 0.0, "head 1 sees every key");
                }
            }
        }
        // the 2-D causal mask repeated for every head equals the 2-D mask
        let rep = c.unsqueeze(0).expand([4, 3, 3]).contiguous();
        let masks3 = AttnMasks {
            attn_mask: Some(&rep),
            ..Default::default()
        };
        let masks2 = AttnMasks {
            attn_mask: Some(&c),
            ..Default::default()
        };
        let (y3, _) = m.forward(&x, &x, &x, &masks3);
        let (y2, _) = m.forward(&x, &x, &x, &masks2);
        assert_eq!(y3.to_vec::<f64>(), y2.to_vec::<f64>());
    }

    #[test]
    fn gradcheck_self_attention_with_masks() {
        let m = MultiheadAttention::with_config(4, 2, batch_first(), DType::F64);
        let pad = padding_mask(&[3, 2], 3);
        let x = inp(&[2, 3, 4], 0.4);
        let w = m.in_proj_weight.clone().unwrap().detach();
        let f = |t: &[Tensor]| {
            let mut m = m.clone();
            m.in_proj_weight = Some(t[1].clone());
            let masks = AttnMasks {
                key_padding_mask: Some(&pad),
                is_causal: true,
                ..Default::default()
            };
            let (y, w) = m.forward(&t[0], &t[0], &t[0], &masks);
            // output and averaged weights together
            Tensor::cat(&[y.flatten(0, -1), w.unwrap().flatten(0, -1)], 0)
        };
        gradcheck(f, &[x.clone(), w.clone()], GradcheckOptions::default()).unwrap();
        gradgradcheck(f, &[x, w], GradcheckOptions::default()).unwrap();
    }

    #[test]
    fn gradcheck_cross_attention_with_float_mask() {
        let cfg = MultiheadAttentionConfig {
            kdim: Some(3),
            vdim: Some(5),
            ..Default::default()
        };
        let m = MultiheadAttention::with_config(4, 2, cfg, DType::F64);
        let pad = padding_mask(&[4, 3], 4);
        let wq = m.q_proj_weight.clone().unwrap().detach();
        let f = |t: &[Tensor]| {
            let mut m = m.clone();
            m.q_proj_weight = Some(t[3].clone());
            let masks = AttnMasks {
                attn_mask: Some(&t[4]),
                key_padding_mask: Some(&pad),
                ..Default::default()
            };
            m.forward(&t[0], &t[1], &t[2], &masks).0
        };
        let inputs = [
            inp(&[3, 2, 4], 0.1),
            inp(&[4, 2, 3], 0.2),
            inp(&[4, 2, 5], 0.3),
            wq,
            float_mask(),
        ];
        gradcheck(f, &inputs, GradcheckOptions::default()).unwrap();
        // packed weights, key = value (the key/value fast path), per-head bool mask
        let m = MultiheadAttention::new(4, 2, DType::F64);
        let c = causal_mask(3).unsqueeze(0).expand([4, 3, 3]).contiguous();
        let f = |t: &[Tensor]| {
            let masks = AttnMasks {
                attn_mask: Some(&c),
                ..Default::default()
            };
            m.forward(&t[0], &t[1], &t[1], &masks).0
        };
        gradcheck(
            f,
            &[inp(&[3, 2, 4], 0.5), inp(&[3, 2, 4], 0.9)],
            GradcheckOptions::default(),
        )
        .unwrap();
    }

    #[test]
    fn parameters_and_init_follow_pytorch() {
        let m = MultiheadAttention::new(8, 2, ());
        let sd = m.state_dict();
        let shapes: Vec<(&str, &[usize])> =
            sd.iter().map(|(k, t)| (k.as_str(), t.shape())).collect();
        assert_eq!(
            shapes,
            [
                ("in_proj_weight", &[24usize, 8][..]),
                ("in_proj_bias", &[24][..]),
                ("out_proj.weight", &[8, 8][..]),
                ("out_proj.bias", &[8][..]),
            ]
        );
        // Xavier bound sqrt(6 / (8 + 24)); zero biases
        let bound = (6.0f32 / 32.0).sqrt();
        let w = m.in_proj_weight.as_ref().unwrap().to_vec::<f32>();
        assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|v| v.abs() > bound / 2.0));
        assert!(m
            .in_proj_bias
            .as_ref()
            .unwrap()
            .to_vec::<f32>()
            .iter()
            .all(|&v| v == 0.0));
        assert!(m
            .out_proj
            .bias
            .as_ref()
            .unwrap()
            .to_vec::<f32>()
            .iter()
            .all(|&v| v == 0.0));
        assert!(sd.iter().all(|(_, t)| t.requires_grad()));
        let nb = MultiheadAttention::with_config(
            8,
            2,
            MultiheadAttentionConfig {
                bias: false,
                ..Default::default()
            },
            (),
        );
        let keys: Vec<String> = nb.state_dict().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["in_proj_weight", "out_proj.weight"]);
        assert_eq!(
            (
                m.embed_dim(),
                m.num_heads(),
                m.head_dim(),
                m.kdim(),
                m.vdim()
            ),
            (8, 2, 4, 8, 8)
        );
        assert_eq!(m.summary(), "MultiheadAttention(\n  (out_proj): Linear(in_features=8, out_features=8, bias=true)\n)");
    }

    #[test]
    fn config_errors() {
        let err = |e, h, cfg| {
            MultiheadAttention::try_with_config(e, h, cfg, ())
                .unwrap_err()
                .to_string()
        };
        let d = MultiheadAttentionConfig::default();
        assert_eq!(
            err(10, 4, d),
            "MultiheadAttention: embed_dim (10) must be divisible by num_heads (4)"
        );
        assert_eq!(err(8, 0, d), "MultiheadAttention: embed_dim, num_heads, kdim and vdim must be positive, got 8, 0, 8, 8");
        assert_eq!(
            err(8, 2, MultiheadAttentionConfig { dropout: 1.5, ..d }),
            "MultiheadAttention: dropout probability must be in [0, 1], got 1.5"
        );
        assert!(matches!(
            MultiheadAttention::try_with_config(10, 4, d, ()),
            Err(Error::Config { .. })
        ));
    }

    #[test]
    fn shape_and_dtype_errors() {
        let m = MultiheadAttention::new(16, 4, ()); // [T, B, E]
        let x = Tensor::zeros([5, 2, 16], ());
        let none = AttnMasks::default();
        let msg = |r: Result<(Tensor, Option<Tensor>)>| r.unwrap_err().to_string();
        assert_eq!(
            msg(m.try_forward(&Tensor::zeros([5, 2, 8], ()), &x, &x, &none)),
            "MultiheadAttention: expected query of shape [T, B, 16] or [T, 16], got [5, 2, 8]"
        );
        assert_eq!(
            msg(m.try_forward(&Tensor::zeros([2, 5, 2, 16], ()), &x, &x, &none)),
            "MultiheadAttention: expected query of shape [T, B, 16] or [T, 16], got [2, 5, 2, 16]"
        );
        assert_eq!(
            msg(m.try_forward(&x, &Tensor::zeros([7, 2, 12], ()), &x, &none)),
            "MultiheadAttention: expected key of shape [S, B, 16] for a query of shape [5, 2, 16], got [7, 2, 12]"
        );
        assert_eq!(
            msg(m.try_forward(&x, &Tensor::zeros([7, 3, 16], ()), &Tensor::zeros([7, 3, 16], ()), &none)),
            "MultiheadAttention: query [5, 2, 16], key [7, 3, 16] and value [7, 3, 16] must have the same batch size (dim 1), and key and value the same length (dim 0)"
        );
        let bad = Tensor::zeros([5, 4], DType::Bool);
        let masks = AttnMasks {
            attn_mask: Some(&bad),
            ..Default::default()
        };
        assert_eq!(
            msg(m.try_forward(&x, &x, &x, &masks)),
            "MultiheadAttention: expected attn_mask of shape [5, 5] (L, S) or [8, 5, 5] (B·num_heads, L, S), got [5, 4]"
        );
        let bad = Tensor::zeros([5, 2], DType::Bool);
        let masks = AttnMasks {
            key_padding_mask: Some(&bad),
            ..Default::default()
        };
        assert_eq!(
            msg(m.try_forward(&x, &x, &x, &masks)),
            "MultiheadAttention: expected key_padding_mask of shape [2, 5] (B, S), got [5, 2]"
        );
        let int = Tensor::zeros([5, 5], DType::I64);
        let masks = AttnMasks {
            attn_mask: Some(&int),
            ..Default::default()
        };
        assert_eq!(
            msg(m.try_forward(&x, &x, &x, &masks)),
            "MultiheadAttention: attn_mask must be a bool or floating-point tensor, got i64"
        );
    }

    #[test]
    fn dropout_on_weights_follows_train_and_eval() {
        let cfg = MultiheadAttentionConfig {
            dropout: 0.5,
            batch_first: true,
            ..Default::default()
        };
        let mut m = MultiheadAttention::with_config(8, 2, cfg, DType::F64);
        let x = inp(&[2, 6, 8], 0.0);
        let none = AttnMasks::default();
        assert!(m.is_training());
        let (a, _) = m.forward(&x, &x, &x, &none);
        let (b, _) = m.forward(&x, &x, &x, &none);
        assert_ne!(
            a.to_vec::<f64>(),
            b.to_vec::<f64>(),
            "dropout draws a new mask each call"
        );
        m.eval();
        assert!(!m.is_training());
        let (a, _) = m.forward(&x, &x, &x, &none);
        let mut nodrop = m.clone();
        nodrop.dropout = 0.0;
        let (b, _) = nodrop.forward(&x, &x, &x, &none);
        assert_eq!(a.to_vec::<f64>(), b.to_vec::<f64>());
    }

    /// A query whose keys are all padding gets NaN, as in PyTorch.
    #[test]
    fn fully_masked_rows_are_nan() {
        let m = MultiheadAttention::with_config(4, 2, batch_first(), DType::F64);
        let x = inp(&[2, 3, 4], 0.0);
        let pad = padding_mask(&[3, 0], 3);
        let masks = AttnMasks {
            key_padding_mask: Some(&pad),
            ..Default::default()
        };
        let (y, _) = m.forward(&x, &x, &x, &masks);
        let y = y.to_vec::<f64>();
        assert!(y[..12].iter().all(|v| v.is_finite()) && y[12..].iter().all(|v| v.is_nan()));
    }
}
