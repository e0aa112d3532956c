//! Convolutions: [`Conv1d`], [`Conv2d`], [`Conv3d`] and their functional forms
//! [`conv1d`], [`conv2d`], [`conv3d`], plus [`unfold`] and [`fold`] (PyTorch's
//! `F.unfold`/`F.fold`).
//!
//! A convolution is `im2col` + matrix product: the input `[N, C, *S]` is unfolded into
//! `[N, C·k, L]` (one column per output position, `k` taps per channel), and the weight
//! `[out, C/groups, *kernel]`, seen as `[groups, out/groups, C/groups·k]`, multiplies it
//! group by group. f32/f64 CPU tensors run it one sample at a time in `cpu/conv.rs`
//! (the unfolded sample stays in cache; one recorded `conv` node, whose backward under
//! `create_graph` is made of differentiable ops, so gradients of any order flow). Other
//! dtypes and devices compose the differentiable `im2col` op (whose backward is the
//! fold, and the other way round) with a batched `matmul`.
//!
//! ```
//! use flint_runtime::nn::{Conv2d, Conv2dConfig, Forward, ModuleExt};
//! use flint_runtime::Tensor;
//! let conv = Conv2d::with_config(3, 16, 3, Conv2dConfig::default().padding(1).stride(2), ());
//! let y = conv.forward(&Tensor::randn([8, 3, 32, 32], ()));
//! assert_eq!(y.shape(), &[8, 16, 16, 16]);
//! assert_eq!(conv.num_parameters(), 16 * 3 * 3 * 3 + 16);
//! ```

use super::init;
use super::module::{Forward, Module, Visitor, VisitorMut};
use crate::autograd::{is_grad_enabled, record};
use crate::cpu::conv::{self as cpu_conv, ConvNeeds};
use crate::error::{or_panic, Error, Result};
use crate::layout::fmt_shape;
use crate::ops::window::Window;
use crate::tensor::{Tensor, TensorOptions};

/// A per-dim size argument (kernel size, stride, padding, dilation) for `D` spatial
/// dims: one `usize` for all of them, or an array with one per dim, as PyTorch accepts
/// `3` or `(3, 5)`.
///
/// ```
/// use flint_runtime::nn::IntoSpatial;
/// assert_eq!(IntoSpatial::<2>::spatial(3), [3, 3]);
/// assert_eq!(IntoSpatial::<2>::spatial([3, 5]), [3, 5]);
/// ```
pub trait IntoSpatial<const D: usize> {
    /// One value per spatial dim.
    fn spatial(self) -> [usize; D];
}

impl<const D: usize> IntoSpatial<D> for usize {
    fn spatial(self) -> [usize; D] {
        [self; D]
    }
}

impl<const D: usize> IntoSpatial<D> for [usize; D] {
    fn spatial(self) -> [usize; D] {
        self
    }
}

/// The letters of the spatial dims in shape messages: `L`; `H, W`; `D, H, W`.
pub(crate) fn spatial_letters(d: usize) -> &'static str {
    match d {
        1 => "L",
        2 => "H, W",
        _ => "D, H, W",
    }
}

/// Checks that `x` is `[N, C, *S]` or unbatched `[C, *S]` with `D` spatial dims (and `C =
/// channels` when given); the error names `layer` and says what was expected.
pub(crate) fn check_spatial_input(
    layer: &'static str,
    x: &Tensor,
    d: usize,
    channels: Option<usize>,
) -> Result<()> {
    let ok = match x.ndim() {
        n if n == d + 2 => channels.is_none_or(|c| x.size(1) == c),
        n if n == d + 1 => channels.is_none_or(|c| x.size(0) == c),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let c = channels.map_or("C".to_string(), |c| c.to_string());
    let s = spatial_letters(d);
    Err(Error::shape(
        layer,
        format!(
            "expected input of shape [N, {c}, {s}] or [{c}, {s}], got {}",
            fmt_shape(x.shape())
        ),
    ))
}

/// Runs `f` on `x` as a batch (`[C, *S]` gets a leading batch dim of 1, removed again
/// from the result).
pub(crate) fn batched(
    x: &Tensor,
    d: usize,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    if x.ndim() == d + 1 {
        Ok(f(&x.unsqueeze(0))?.squeeze_dim(0))
    } else {
        f(x)
    }
}

fn fmt_list(v: &[usize]) -> String {
    format!("{v:?}")
}

/// The window geometry of a sliding kernel over the spatial sizes `input`, with PyTorch's
/// output size `floor((in + 2p − d(k−1) − 1)/s) + 1` (or `ceil` with `ceil_mode`, where a
/// last window that would start in the right padding is dropped, as PyTorch does).
///
/// Errors: a zero kernel size, stride or dilation (`Error::Config`), and an input smaller
/// than the dilated kernel even with its padding (`Error::Shape`), both naming `op`.
pub(crate) fn window(
    op: &'static str,
    input: &[usize],
    kernel: &[usize],
    stride: &[usize],
    padding: &[usize],
    dilation: &[usize],
    ceil_mode: bool,
) -> Result<Window> {
    if [kernel, stride, dilation].iter().any(|v| v.contains(&0)) {
        return Err(Error::config(
            op,
            format!(
                "kernel_size, stride and dilation must be positive, got kernel_size={}, stride={}, dilation={}",
                fmt_list(kernel),
                fmt_list(stride),
                fmt_list(dilation)
            ),
        ));
    }
    let nd = input.len();
    let eff: Vec<usize> = (0..nd).map(|i| dilation[i] * (kernel[i] - 1) + 1).collect();
    let padded: Vec<usize> = (0..nd).map(|i| input[i] + 2 * padding[i]).collect();
    if (0..nd).any(|i| padded[i] < eff[i]) {
        let dilated = if dilation.iter().all(|&d| d == 1) {
            String::new()
        } else {
            format!(" (dilated to {})", fmt_list(&eff))
        };
        return Err(Error::shape(
            op,
            format!(
                "input of spatial size {} (padded to {}) is smaller than the kernel {}{dilated}",
                fmt_list(input),
                fmt_list(&padded),
                fmt_list(kernel),
            ),
        ));
    }
    let output = (0..nd)
        .map(|i| {
            let span = padded[i] - eff[i];
            if ceil_mode {
                let mut o = span.div_ceil(stride[i]) + 1;
                if (o - 1) * stride[i] >= input[i] + padding[i] {
                    o -= 1;
                }
                o
            } else {
                span / stride[i] + 1
            }
        })
        .collect();
    Ok(Window {
        input: input.to_vec(),
        kernel: kernel.to_vec(),
        stride: stride.to_vec(),
        padding: padding.to_vec(),
        dilation: dilation.to_vec(),
        output,
    })
}

fn conv_name(d: usize) -> &'static str {
    match d {
        1 => "Conv1d",
        2 => "Conv2d",
        _ => "Conv3d",
    }
}

/// The convolution over `D` spatial dims; errors name `Conv1d`/`Conv2d`/`Conv3d`.
///
/// f32/f64 CPU operands take the fused per-sample kernel of `cpu/conv.rs` ([`conv_fused`],
/// one recorded `conv` node); other dtypes and CUDA tensors the composed
/// `im2col` + `matmul` ([`conv_composed`]).
#[allow(clippy::too_many_arguments)]
fn conv_nd<const D: usize>(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: [usize; D],
    padding: [usize; D],
    dilation: [usize; D],
    groups: usize,
) -> Result<Tensor> {
    conv_nd_with(input, weight, bias, stride, padding, dilation, groups, true)
}

/// [`conv_nd`], with the fused kernel only when `fused` (the tests compare both paths).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_nd_with<const D: usize>(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: [usize; D],
    padding: [usize; D],
    dilation: [usize; D],
    groups: usize,
    fused: bool,
) -> Result<Tensor> {
    let op = conv_name(D);
    if weight.ndim() != D + 2 {
        return Err(Error::shape(
            op,
            format!(
                "expected weight of shape [out_channels, in_channels / groups, {}], got {}",
                spatial_letters(D)
                    .split(", ")
                    .map(|s| format!("k{}", s.to_lowercase()))
                    .collect::<Vec<_>>()
                    .join(", "),
                fmt_shape(weight.shape())
            ),
        ));
    }
    let (oc, icg) = (weight.size(0), weight.size(1));
    if groups == 0 || oc % groups != 0 {
        return Err(Error::config(
            op,
            format!(
                "groups must be positive and divide out_channels, got groups={groups} with weight {}",
                fmt_shape(weight.shape())
            ),
        ));
    }
    let c = icg * groups;
    check_spatial_input(op, input, D, Some(c))?;
    if input.dtype() != weight.dtype() {
        return Err(Error::dtype(
            op,
            format!(
                "input ({}) and weight ({}) must have the same dtype",
                input.dtype(),
                weight.dtype()
            ),
        ));
    }
    if let Some(b) = bias
        && b.shape() != [oc]
    {
        return Err(Error::shape(
            op,
            format!(
                "expected bias of shape [{oc}], got {}",
                fmt_shape(b.shape())
            ),
        ));
    }
    let kernel = &weight.shape()[2..];
    batched(input, D, |x| {
        let w = window(
            op,
            &x.shape()[2..],
            kernel,
            &stride,
            &padding,
            &dilation,
            false,
        )?;
        let mut out_shape = vec![x.size(0), weight.size(0)];
        out_shape.extend_from_slice(&w.output);
        if fused && cpu_conv::supports(x, weight, bias) && out_shape.iter().all(|&s| s > 0) {
            conv_fused(x, weight, bias, &w, groups)
        } else {
            conv_composed(x, weight, bias, &w, groups)
        }
    })
}

/// The convolution of a batch `x` `[N, C, *S]` over the windows `w` as `im2col` +
/// batched `matmul` + bias, each a recorded op (any dtype and device).
pub(crate) fn conv_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    w: &Window,
    groups: usize,
) -> Result<Tensor> {
    let (n, c, oc, icg) = (x.size(0), x.size(1), weight.size(0), weight.size(1));
    let (k, l) = (w.taps(), w.windows());
    let cols = if cpu_conv::is_pointwise(w) {
        x.try_reshape([n, c, l])?
    } else {
        x.im2col(w)?
    };
    let y = if groups == 1 {
        weight.try_reshape([oc, c * k])?.try_matmul(&cols)?
    } else {
        let wg = weight.try_reshape([groups, oc / groups, icg * k])?;
        wg.try_matmul(&cols.try_reshape([n, groups, icg * k, l])?)?
            .try_reshape([n, oc, l])?
    };
    let y = match bias {
        Some(b) => y.try_add(&b.try_reshape([oc, 1])?)?,
        None => y,
    };
    let mut shape = vec![n, oc];
    shape.extend_from_slice(&w.output);
    y.try_reshape(shape)
}

/// The convolution of a batch with the fused CPU kernels (operands passing
/// `cpu::conv::supports`): one recorded node (`conv`, inputs `x`, `weight`, `bias`,
/// saving `x` and `weight`, never the `im2col` matrix) whose backward runs
/// `cpu::conv::backward` (per sample, only the gradients whose inputs require grad), or,
/// under `create_graph`, [`conv_grad_ops`].
fn conv_fused(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    w: &Window,
    groups: usize,
) -> Result<Tensor> {
    let y = cpu_conv::forward(x, weight, bias, w, groups)?;
    let inputs: Vec<&Tensor> = [Some(x), Some(weight), bias]
        .into_iter()
        .flatten()
        .collect();
    if !(is_grad_enabled() && inputs.iter().any(|t| t.requires_grad())) {
        return Ok(y);
    }
    let needs = ConvNeeds {
        x: x.requires_grad(),
        w: weight.requires_grad(),
        bias: bias.is_some_and(|b| b.requires_grad()),
    };
    let (xs, ws, win, has_bias) = (x.clone(), weight.clone(), w.clone(), bias.is_some());
    Ok(record(y, "conv", &inputs, &[x, weight], move |g| {
        let (dx, dw, db) = if is_grad_enabled() {
            conv_grad_ops(&xs, &ws, g, &win, groups, needs)
        } else {
            or_panic(cpu_conv::backward(&xs, &ws, g, &win, groups, needs))
        };
        let mut grads = vec![dx, dw];
        if has_bias {
            grads.push(db);
        }
        grads
    }))
}

/// The gradients `(dx, dweight, dbias)` of a convolution from its output gradient `g`
/// (`[N, OC, *out]`) as differentiable tensor ops (for `create_graph`), those not in
/// `needs` left `None`: with `cols = im2col(x)` seen per group,
/// `dx = col2im(W_gᵀ · g_g)`, `dW_g = Σ_n g_g · cols_gᵀ`, `dbias = Σ g` over all dims but 1.
fn conv_grad_ops(
    x: &Tensor,
    weight: &Tensor,
    g: &Tensor,
    w: &Window,
    groups: usize,
    needs: ConvNeeds,
) -> (Option<Tensor>, Option<Tensor>, Option<Tensor>) {
    let (n, c, oc) = (x.size(0), x.size(1), weight.size(0));
    let (k, l) = (w.taps(), w.windows());
    let (ocg, kc) = (oc / groups, c / groups * k);
    let pointwise = cpu_conv::is_pointwise(w);
    let gg = g.reshape([n, groups, ocg, l]);
    let dx = needs.x.then(|| {
        let wg = weight.reshape([groups, ocg, kc]);
        let dcols = wg.transpose(1, 2).matmul(&gg).reshape([n, c * k, l]);
        if pointwise {
            dcols.reshape(x.shape())
        } else {
            or_panic(dcols.col2im(w))
        }
    });
    let dw = needs.w.then(|| {
        let cols = if pointwise {
            x.reshape([n, c, l])
        } else {
            or_panic(x.im2col(w))
        };
        gg.matmul(&cols.reshape([n, groups, kc, l]).transpose(2, 3))
            .sum(0, false)
            .reshape(weight.shape())
    });
    let db = needs.bias.then(|| g.reshape([n, oc, l]).sum([0, 2], false));
    (dx, dw, db)
}

/// 1-D convolution (`torch.nn.functional.conv1d`): `input` `[N, C, L]` or `[C, L]`,
/// `weight` `[out, C / groups, k]`, `bias` `[out]`; zero padding. The output length is
/// `floor((L + 2·padding − dilation·(k − 1) − 1) / stride) + 1`.
///
/// ```
/// use flint_runtime::{nn::conv1d, Tensor};
/// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 4]);
/// let w = Tensor::from_vec(vec![1.0f32, 0.0, -1.0], [1, 1, 3]);
/// // y[i] = x[i - 1] - x[i + 1], with one zero of padding on each side
/// let y = conv1d(&x, &w, None, 1, 1, 1, 1).unwrap();
/// assert_eq!(y.to_vec::<f32>(), vec![-2.0, -2.0, -2.0, 3.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn conv1d(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: impl IntoSpatial<1>,
    padding: impl IntoSpatial<1>,
    dilation: impl IntoSpatial<1>,
    groups: usize,
) -> Result<Tensor> {
    conv_nd::<1>(
        input,
        weight,
        bias,
        stride.spatial(),
        padding.spatial(),
        dilation.spatial(),
        groups,
    )
}

/// 2-D convolution (`torch.nn.functional.conv2d`): `input` `[N, C, H, W]` or
/// `[C, H, W]`, `weight` `[out, C / groups, kh, kw]`, `bias` `[out]`; zero padding.
/// Each output size is `floor((in + 2·padding − dilation·(k − 1) − 1) / stride) + 1`.
///
/// ```
/// use flint_runtime::{nn::conv2d, Tensor};
/// let x = Tensor::arange(0.0, 9.0, 1.0, ()).reshape([1, 1, 3, 3]);
/// let w = Tensor::ones([1, 1, 2, 2], ());
/// // sums of the four 2x2 blocks of [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
/// let y = conv2d(&x, &w, None, 1, 0, 1, 1).unwrap();
/// assert_eq!(y.to_vec::<f32>(), vec![8.0, 12.0, 20.0, 24.0]);
/// let e = conv2d(&Tensor::zeros([1, 2, 3, 3], ()), &w, None, 1, 0, 1, 1).unwrap_err();
/// assert_eq!(e.to_string(), "Conv2d: expected input of shape [N, 1, H, W] or [1, H, W], got [1, 2, 3, 3]");
/// ```
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: impl IntoSpatial<2>,
    padding: impl IntoSpatial<2>,
    dilation: impl IntoSpatial<2>,
    groups: usize,
) -> Result<Tensor> {
    conv_nd::<2>(
        input,
        weight,
        bias,
        stride.spatial(),
        padding.spatial(),
        dilation.spatial(),
        groups,
    )
}

/// 3-D convolution (`torch.nn.functional.conv3d`): `input` `[N, C, D, H, W]` or
/// `[C, D, H, W]`, `weight` `[out, C / groups, kd, kh, kw]`, `bias` `[out]`.
///
/// ```
/// use flint_runtime::{nn::conv3d, Tensor};
/// let x = Tensor::ones([1, 2, 3, 3, 3], ());
/// let y = conv3d(&x, &Tensor::ones([4, 2, 2, 2, 2], ()), None, 1, 0, 1, 1).unwrap();
/// assert_eq!(y.shape(), &[1, 4, 2, 2, 2]);
/// assert_eq!(y.to_vec::<f32>()[0], 16.0);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn conv3d(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: impl IntoSpatial<3>,
    padding: impl IntoSpatial<3>,
    dilation: impl IntoSpatial<3>,
    groups: usize,
) -> Result<Tensor> {
    conv_nd::<3>(
        input,
        weight,
        bias,
        stride.spatial(),
        padding.spatial(),
        dilation.spatial(),
        groups,
    )
}

/// Extracts sliding blocks (`torch.nn.functional.unfold`): `[N, C, H, W]` (or
/// `[C, H, W]`) → `[N, C·kh·kw, L]` (or `[C·kh·kw, L]`), where column `l` holds the
/// block of output position `l` (row-major over the output grid) with channel slowest
/// and zeros where the block covers padding. Differentiable; see [`fold`].
///
/// ```
/// use flint_runtime::{nn::unfold, Tensor};
/// let x = Tensor::arange(0.0, 6.0, 1.0, ()).reshape([1, 1, 2, 3]);
/// let cols = unfold(&x, 2, 1, 0, 1).unwrap(); // two 2x2 blocks
/// assert_eq!(cols.shape(), &[1, 4, 2]);
/// assert_eq!(cols.to_vec::<f32>(), vec![0., 1., 1., 2., 3., 4., 4., 5.]);
/// ```
pub fn unfold(
    input: &Tensor,
    kernel_size: impl IntoSpatial<2>,
    dilation: impl IntoSpatial<2>,
    padding: impl IntoSpatial<2>,
    stride: impl IntoSpatial<2>,
) -> Result<Tensor> {
    const OP: &str = "Unfold";
    check_spatial_input(OP, input, 2, None)?;
    let (k, d, p, s) = (
        kernel_size.spatial(),
        dilation.spatial(),
        padding.spatial(),
        stride.spatial(),
    );
    batched(input, 2, |x| {
        let w = window(OP, &x.shape()[2..], &k, &s, &p, &d, false)?;
        x.im2col(&w)
    })
}

/// Combines sliding blocks into a tensor, summing overlaps
/// (`torch.nn.functional.fold`, the adjoint of [`unfold`]): `[N, C·kh·kw, L]` (or
/// `[C·kh·kw, L]`) → `[N, C, H, W]` (or `[C, H, W]`) with `[H, W] = output_size`. `L`
/// must be the number of blocks that `unfold` makes of that size. Differentiable.
///
/// ```
/// use flint_runtime::{nn::{fold, unfold}, Tensor};
/// let x = Tensor::ones([1, 1, 3, 3], ());
/// let y = fold(&unfold(&x, 2, 1, 0, 1).unwrap(), [3, 3], 2, 1, 0, 1).unwrap();
/// // each position counts the 2x2 blocks that cover it
/// assert_eq!(y.to_vec::<f32>(), vec![1., 2., 1., 2., 4., 2., 1., 2., 1.]);
/// ```
pub fn fold(
    input: &Tensor,
    output_size: impl IntoSpatial<2>,
    kernel_size: impl IntoSpatial<2>,
    dilation: impl IntoSpatial<2>,
    padding: impl IntoSpatial<2>,
    stride: impl IntoSpatial<2>,
) -> Result<Tensor> {
    const OP: &str = "Fold";
    let (out, k, d, p, s) = (
        output_size.spatial(),
        kernel_size.spatial(),
        dilation.spatial(),
        padding.spatial(),
        stride.spatial(),
    );
    let w = window(OP, &out, &k, &s, &p, &d, false)?;
    let (taps, l) = (w.taps(), w.windows());
    let ok =
        matches!(input.ndim(), 2 | 3) && input.size(-2).is_multiple_of(taps) && input.size(-1) == l;
    if !ok {
        return Err(Error::shape(
            OP,
            format!(
                "expected input of shape [N, C * {taps}, {l}] or [C * {taps}, {l}] ({} blocks of {} over output_size {}), got {}",
                fmt_list(&w.output),
                fmt_list(&k),
                fmt_list(&out),
                fmt_shape(input.shape())
            ),
        ));
    }
    if input.ndim() == 2 {
        Ok(input.unsqueeze(0).col2im(&w)?.squeeze_dim(0))
    } else {
        input.col2im(&w)
    }
}

/// Options of a convolution; the defaults are PyTorch's (stride 1, no padding, no
/// dilation, one group, a bias). Build with the chained setters:
///
/// ```
/// use flint_runtime::nn::Conv2dConfig;
/// let c = Conv2dConfig::default().stride(2).padding([1, 0]).bias(false);
/// assert_eq!((c.stride, c.padding, c.dilation, c.groups, c.bias), ([2, 2], [1, 0], [1, 1], 1, false));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvConfig<const D: usize> {
    /// Step between windows, per spatial dim.
    pub stride: [usize; D],
    /// Zeros added on both sides, per spatial dim.
    pub padding: [usize; D],
    /// Step between kernel taps, per spatial dim.
    pub dilation: [usize; D],
    /// Channel groups: input and output channels are split into `groups` blocks
    /// convolved separately (`in_channels` for a depthwise convolution).
    pub groups: usize,
    /// Whether the layer has a learnable bias.
    pub bias: bool,
}

/// Options of a [`Conv1d`].
pub type Conv1dConfig = ConvConfig<1>;
/// Options of a [`Conv2d`].
pub type Conv2dConfig = ConvConfig<2>;
/// Options of a [`Conv3d`].
pub type Conv3dConfig = ConvConfig<3>;

impl<const D: usize> Default for ConvConfig<D> {
    fn default() -> Self {
        ConvConfig {
            stride: [1; D],
            padding: [0; D],
            dilation: [1; D],
            groups: 1,
            bias: true,
        }
    }
}

impl<const D: usize> ConvConfig<D> {
    /// With this stride.
    pub fn stride(mut self, stride: impl IntoSpatial<D>) -> Self {
        self.stride = stride.spatial();
        self
    }
    /// With this zero padding.
    pub fn padding(mut self, padding: impl IntoSpatial<D>) -> Self {
        self.padding = padding.spatial();
        self
    }
    /// With this dilation.
    pub fn dilation(mut self, dilation: impl IntoSpatial<D>) -> Self {
        self.dilation = dilation.spatial();
        self
    }
    /// With this many groups.
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
    /// With or without a bias.
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
}

/// A convolution over `D` spatial dims: [`Conv1d`], [`Conv2d`] or [`Conv3d`].
///
/// Parameters `weight` `[out_channels, in_channels / groups, *kernel_size]` and `bias`
/// `[out_channels]`, both initialised as PyTorch does: uniform in `±1/√fan_in` with
/// `fan_in = in_channels / groups · ∏ kernel_size`. Inputs are `[N, C, *spatial]` or
/// unbatched `[C, *spatial]`.
///
/// ```
/// use flint_runtime::nn::{Conv1d, Conv1dConfig, Forward};
/// use flint_runtime::Tensor;
/// let conv = Conv1d::with_config(4, 8, 3, Conv1dConfig::default().dilation(2).groups(2), ());
/// assert_eq!(conv.weight.shape(), &[8, 2, 3]);
/// assert_eq!(conv.forward(&Tensor::zeros([2, 4, 10], ())).shape(), &[2, 8, 6]);
/// assert_eq!(conv.forward(&Tensor::zeros([4, 10], ())).shape(), &[8, 6]);
/// let e = conv.try_forward(&Tensor::zeros([2, 3, 10], ())).unwrap_err();
/// assert_eq!(e.to_string(), "Conv1d: expected input of shape [N, 4, L] or [4, L], got [2, 3, 10]");
/// assert_eq!(conv.to_string(), "Conv1d(4, 8, kernel_size=(3,), stride=(1,), dilation=(2,), groups=2)");
/// ```
#[derive(Debug, Clone)]
pub struct Conv<const D: usize> {
    /// `[out_channels, in_channels / groups, *kernel_size]`.
    pub weight: Tensor,
    /// `[out_channels]`, if the layer has a bias.
    pub bias: Option<Tensor>,
    /// Stride, padding, dilation and groups (its `bias` flag is only read at
    /// construction; the `bias` field is what counts).
    pub config: ConvConfig<D>,
}

/// 1-D convolution over `[N, C, L]` (PyTorch's `nn.Conv1d`).
pub type Conv1d = Conv<1>;
/// 2-D convolution over `[N, C, H, W]` (PyTorch's `nn.Conv2d`).
pub type Conv2d = Conv<2>;
/// 3-D convolution over `[N, C, D, H, W]` (PyTorch's `nn.Conv3d`).
pub type Conv3d = Conv<3>;

impl<const D: usize> Conv<D> {
    /// With PyTorch's defaults (stride 1, no padding, a bias), in the dtype and on the
    /// device of `opts` (`()` = f32, CPU).
    #[track_caller]
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel_size: impl IntoSpatial<D>,
        opts: impl Into<TensorOptions>,
    ) -> Self {
        Self::with_config(
            in_channels,
            out_channels,
            kernel_size,
            ConvConfig::default(),
            opts,
        )
    }

    /// With chosen options. Panics when `groups` does not divide both channel counts or
    /// a size is zero; see [`Conv::try_with_config`].
    #[track_caller]
    pub fn with_config(
        in_channels: usize,
        out_channels: usize,
        kernel_size: impl IntoSpatial<D>,
        config: ConvConfig<D>,
        opts: impl Into<TensorOptions>,
    ) -> Self {
        or_panic(Self::try_with_config(
            in_channels,
            out_channels,
            kernel_size,
            config,
            opts,
        ))
    }

    /// Fallible [`Conv::with_config`].
    ///
    /// ```
    /// use flint_runtime::nn::{Conv2d, Conv2dConfig};
    /// let e = Conv2d::try_with_config(3, 6, 3, Conv2dConfig::default().groups(2), ()).unwrap_err();
    /// assert_eq!(e.to_string(), "Conv2d: in_channels (3) and out_channels (6) must be divisible by groups (2)");
    /// ```
    pub fn try_with_config(
        in_channels: usize,
        out_channels: usize,
        kernel_size: impl IntoSpatial<D>,
        config: ConvConfig<D>,
        opts: impl Into<TensorOptions>,
    ) -> Result<Self> {
        let op = conv_name(D);
        let g = config.groups;
        if g == 0 || !in_channels.is_multiple_of(g) || !out_channels.is_multiple_of(g) {
            return Err(Error::config(
                op,
                format!("in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({g})"),
            ));
        }
        let kernel = kernel_size.spatial();
        if [kernel, config.stride, config.dilation]
            .iter()
            .any(|v| v.contains(&0))
        {
            return Err(Error::config(
                op,
                format!(
                    "kernel_size, stride and dilation must be positive, got kernel_size={kernel:?}, stride={:?}, dilation={:?}",
                    config.stride, config.dilation
                ),
            ));
        }
        let opts = opts.into();
        let fan_in = in_channels / g * kernel.iter().product::<usize>();
        let mut shape = vec![out_channels, in_channels / g];
        shape.extend_from_slice(&kernel);
        Ok(Conv {
            weight: init::kaiming_uniform(&shape, fan_in, opts),
            bias: config
                .bias
                .then(|| init::kaiming_uniform([out_channels], fan_in, opts)),
            config,
        })
    }

    /// `in_channels`.
    pub fn in_channels(&self) -> usize {
        self.weight.size(1) * self.config.groups
    }

    /// `out_channels`.
    pub fn out_channels(&self) -> usize {
        self.weight.size(0)
    }

    /// `kernel_size`.
    pub fn kernel_size(&self) -> [usize; D] {
        std::array::from_fn(|i| self.weight.shape()[2 + i])
    }
}

/// A Python tuple: `(3,)`, `(3, 3)`.
pub(crate) fn py_tuple(v: &[usize]) -> String {
    if v.len() == 1 {
        format!("({},)", v[0])
    } else {
        format!(
            "({})",
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

impl<const D: usize> Module for Conv<D> {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.param("weight", &self.weight);
        v.param_opt("bias", self.bias.as_ref());
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.param("weight", &mut self.weight);
        v.param_opt("bias", self.bias.as_mut());
    }
    fn type_name(&self) -> String {
        conv_name(D).into()
    }
    /// PyTorch's repr: `3, 16, kernel_size=(3, 3), stride=(1, 1)`, then `padding`,
    /// `dilation`, `groups` and `bias=false` when not the default.
    fn extra_repr(&self) -> String {
        let c = &self.config;
        let mut s = format!(
            "{}, {}, kernel_size={}, stride={}",
            self.in_channels(),
            self.out_channels(),
            py_tuple(&self.kernel_size()),
            py_tuple(&c.stride)
        );
        if c.padding.iter().any(|&p| p != 0) {
            s += &format!(", padding={}", py_tuple(&c.padding));
        }
        if c.dilation.iter().any(|&d| d != 1) {
            s += &format!(", dilation={}", py_tuple(&c.dilation));
        }
        if c.groups != 1 {
            s += &format!(", groups={}", c.groups);
        }
        if self.bias.is_none() {
            s += ", bias=false";
        }
        s
    }
}

impl<const D: usize> Forward for Conv<D> {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        conv_nd::<D>(
            x,
            &self.weight,
            self.bias.as_ref(),
            self.config.stride,
            self.config.padding,
            self.config.dilation,
            self.config.groups,
        )
    }
}

impl<const D: usize> std::fmt::Display for Conv<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&super::Summary(self), f)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::autograd::{gradcheck, gradgradcheck, GradcheckOptions};
    use crate::nn::ModuleExt;
    use crate::{DType, Generator};

    /// `sin(a·i + b)` for `i` in row-major order: the inputs of the PyTorch reference
    /// snippets (`torch.sin(torch.arange(n, dtype=torch.float64) * a + b).reshape(shape)`).
    pub(crate) fn seq(shape: &[usize], a: f64, b: f64) -> Tensor {
        let n: usize = shape.iter().product();
        (Tensor::arange(0.0, n as f64, 1.0, DType::F64) * a + b)
            .sin()
            .reshape(shape)
    }

    pub(crate) fn assert_close(got: &Tensor, want: &[f64], tol: f64) {
        let got = got.to_dtype(DType::F64).to_vec::<f64>();
        assert_eq!(got.len(), want.len(), "lengths differ");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "element {i}: got {g}, want {w}");
        }
    }

    #[test]
    fn conv2d_hand_worked_stride_and_padding() {
        // x = [[0, 1, 2], [3, 4, 5], [6, 7, 8]], 2x2 ones kernel, stride 2, padding 1:
        // windows {x00}, {x01, x02}, {x10, x20}, {x11, x12, x21, x22}, plus bias 0.5
        let x = Tensor::arange(0.0, 9.0, 1.0, ()).reshape([1, 1, 3, 3]);
        let w = Tensor::ones([1, 1, 2, 2], ());
        let b = Tensor::from_vec(vec![0.5f32], [1]);
        let y = conv2d(&x, &w, Some(&b), 2, 1, 1, 1).unwrap();
        assert_eq!(y.shape(), &[1, 1, 2, 2]);
        assert_eq!(y.to_vec::<f32>(), vec![0.5, 3.5, 9.5, 24.5]);
        // dilation 2 with a 2x2 kernel reads the four corners
        let y = conv2d(&x, &w, None, 1, 0, 2, 1).unwrap();
        assert_eq!(y.to_vec::<f32>(), vec![16.0]);
        // two groups: each output channel sees only its own input channel
        let x2 = Tensor::cat(&[&x, &(&x * 10.0)], 1);
        let y = conv2d(&x2, &Tensor::ones([2, 1, 3, 3], ()), None, 1, 0, 1, 2).unwrap();
        assert_eq!(y.to_vec::<f32>(), vec![36.0, 360.0]);
    }

    #[test]
    fn conv2d_matches_torch_with_groups_stride_padding_dilation() {
        // x = seq([1,4,5,5], 0.37); w = seq([4,2,2,3], 0.91, 0.5); b = seq([4], 1.3)
        // F.conv2d(x, w, b, stride=(2,1), padding=(1,1), dilation=(2,1), groups=2)
        let x = seq(&[1, 4, 5, 5], 0.37, 0.0);
        let w = seq(&[4, 2, 2, 3], 0.91, 0.5);
        let b = seq(&[4], 1.3, 0.0);
        let y = conv2d(&x, &w, Some(&b), [2, 1], 1, [2, 1], 2).unwrap();
        assert_eq!(y.shape(), &[1, 4, 3, 5]);
        #[rustfmt::skip]
        let want = [-0.5995491937, -1.1732435190, -0.8532975915, -0.4178618379, -0.0947732353, 0.4015234152, 1.4344058689, 0.7685466487, -0.0013317549, -0.6236280700, 0.0267160218, -0.4664390342, -0.1644368677, 0.1598210573, 0.6109310199, -0.1256035650, 0.3457093387, 0.5699260673, 0.8474190565, 0.8041967948, 2.9804124994, 2.2759849478, 1.6448845491, 0.9215698234, 1.2534290257, 0.1348511231, 0.4626724075, 0.9271515260, 1.3965581150, 1.1262180012, 1.3808552521, 1.9593561189, 1.7666225995, 1.4045556913, 1.0985105236, -0.5050108225, -1.6346025190, -1.0799622685, -0.3093834990, 0.2015624752, 0.7391210590, 1.3425008786, 1.0384993693, 0.6637125347, 0.2982170720, 0.3203046756, -0.1525573753, -0.2692832954, -0.4426489080, -0.6039806998, -2.8856038131, -2.1097379892, -1.7283399225, -1.2061050785, -1.1690595896, 0.4247980890, 0.0657462926, -0.2903017117, -0.7001446643, -0.5965018088];
        assert_close(&y, &want, 1e-9);
        // the same in f32, and unbatched
        let y32 = conv2d(
            &x.to_dtype(DType::F32).squeeze_dim(0),
            &w.to_dtype(DType::F32),
            Some(&b.to_dtype(DType::F32)),
            [2, 1],
            1,
            [2, 1],
            2,
        )
        .unwrap();
        assert_eq!(y32.shape(), &[4, 3, 5]);
        assert_close(&y32, &want, 1e-5);
    }

    #[test]
    fn conv1d_matches_torch() {
        // x = seq([2,3,9], 0.37); w = seq([4,3,3], 0.91, 0.5); b = seq([4], 1.3)
        // F.conv1d(x, w, b, stride=2, padding=2, dilation=3)
        let x = seq(&[2, 3, 9], 0.37, 0.0);
        let w = seq(&[4, 3, 3], 0.91, 0.5);
        let b = seq(&[4], 1.3, 0.0);
        let y = conv1d(&x, &w, Some(&b), 2, 2, 3, 1).unwrap();
        assert_eq!(y.shape(), &[2, 4, 4]);
        #[rustfmt::skip]
        let want = [3.8034976523, 3.8767390141, 2.1789175115, 1.1728344711, -0.3155482856, 0.9167756175, 3.4584004919, 3.5942425945, -2.4444747966, -3.3303863395, -3.3086686124, -2.3921682099, 2.5433306631, 1.8952313231, -0.6607155565, -1.4009543976, -4.1399468768, -2.7305244620, -0.0387587055, 0.1061111072, 1.7584113669, -1.0060913354, -2.6438546260, -0.7357999456, 4.1312731700, 4.5449338795, 2.9332099742, 1.5300515424, -3.8670816676, -1.3753722811, 1.3252608884, 0.3425351852];
        assert_close(&y, &want, 1e-9);
        // depthwise: x = seq([1,3,6], 0.37); w = seq([3,1,2], 0.91, 0.5)
        // F.conv1d(x, w, None, groups=3)
        let x = seq(&[1, 3, 6], 0.37, 0.0);
        let w = seq(&[3, 1, 2], 0.91, 0.5);
        let y = conv1d(&x, &w, None, 1, 0, 1, 3).unwrap();
        #[rustfmt::skip]
        let want = [0.3569506294, 0.8389573389, 1.2074151083, 1.4124549071, 1.4263255602, 0.5370012434, 0.3677764982, 0.1487749292, -0.0903626285, -0.3172700283, 1.7486741297, 1.6788644858, 1.3818284097, 0.8977683408, 0.2921995386];
        assert_close(&y, &want, 1e-9);
    }

    #[test]
    fn conv3d_matches_torch() {
        // x = seq([1,2,3,4,4], 0.37); w = seq([2,2,2,2,3], 0.91, 0.5); b = seq([2], 1.3)
        // F.conv3d(x, w, b, stride=(1,2,1), padding=(0,1,1))
        let x = seq(&[1, 2, 3, 4, 4], 0.37, 0.0);
        let w = seq(&[2, 2, 2, 2, 3], 0.91, 0.5);
        let b = seq(&[2], 1.3, 0.0);
        let y = conv3d(&x, &w, Some(&b), [1, 2, 1], [0, 1, 1], 1, 1).unwrap();
        assert_eq!(y.shape(), &[1, 2, 2, 3, 4]);
        #[rustfmt::skip]
        let want = [-2.1077252896, -4.6116891411, -4.4135161498, -1.7994192709, 5.0924499866, 7.3017676854, 5.9101554064, 0.8662662193, -3.4822441577, -3.4309630143, -2.0939843421, 0.9238168786, -1.1473398010, -4.1989603431, -4.6137287336, -2.7684014711, 4.0144723312, 7.7071661468, 7.2846850921, 2.7622431115, -3.2300709728, -4.2925209178, -3.4100634697, -0.2128463503, 3.4472232136, 5.6585273161, 5.1548386441, 2.3583523852, -4.3035372403, -5.8394659488, -4.0379624543, 0.9929657918, 4.2580336576, 3.7530884054, 2.2602183595, -0.5573615573, 2.6388157576, 5.5349703016, 5.6549137403, 3.4881089671, -3.5453809481, -6.7132350115, -5.8140344965, -1.0401067168, 4.2151293255, 4.8522795702, 3.7284479698, 0.5764113339];
        assert_close(&y, &want, 1e-9);
    }

    #[test]
    fn pointwise_conv_is_a_channel_matmul() {
        // a 1x1 kernel skips im2col: compare with the product over channels
        let mut g = Generator::new(2);
        let x = g.randn([2, 3, 4, 5], DType::F64);
        let w = g.randn([6, 3, 1, 1], DType::F64);
        let y = conv2d(&x, &w, None, 1, 0, 1, 1).unwrap();
        let want = w
            .reshape([6, 3])
            .matmul(&x.reshape([2, 3, 20]))
            .reshape([2, 6, 4, 5]);
        assert_close(&y, &want.to_vec::<f64>(), 1e-12);
        // with a stride it goes through im2col and picks every other position
        let y2 = conv2d(&x, &w, None, 2, 0, 1, 1).unwrap();
        let want2 = want
            .try_slice(2, 0, 4, 2)
            .unwrap()
            .try_slice(3, 0, 5, 2)
            .unwrap();
        assert_close(&y2, &want2.to_vec::<f64>(), 1e-12);
    }

    #[test]
    fn unfold_and_fold_match_torch() {
        // x = seq([1,2,4,5], 0.37)
        // u = F.unfold(x, (2,3), dilation=(1,2), padding=1, stride=(2,1))
        //   -> shape [1, 12, 9], u.sum() = 5.6061180326,
        //      (u * seq([1,12,9], 0.13)).sum() = 1.5304315512
        // F.fold(u, (4,5), (2,3), dilation=(1,2), padding=1, stride=(2,1))
        let x = seq(&[1, 2, 4, 5], 0.37, 0.0);
        let u = unfold(&x, [2, 3], [1, 2], 1, [2, 1]).unwrap();
        assert_eq!(u.shape(), &[1, 12, 9]);
        assert!((u.sum_all().item::<f64>() - 5.6061180326).abs() < 1e-9);
        let weighted = (&u * &seq(&[1, 12, 9], 0.13, 0.0)).sum_all().item::<f64>();
        assert!((weighted - 1.5304315512).abs() < 1e-9);
        let f = fold(&u, [4, 5], [2, 3], [1, 2], 1, [2, 1]).unwrap();
        assert_eq!(f.shape(), &[1, 2, 4, 5]);
        #[rustfmt::skip]
        let want = [0.0000000000, 0.7232308639, 0.6742879116, 1.7913973714, 0.9958808445, 0.9612752030, 1.5931309445, 0.5240443417, 0.3611925358, -0.1872946635, -0.5298361409, -1.6013335644, -0.9631309306, -1.9904796515, -0.8926476794, -0.6692398573, -0.7105071200, 0.0068146401, 0.7359210211, 0.6793046521, 0.8987080958, 1.9929512295, 0.9593748339, 1.5848543398, 0.5182282059, 0.1738894854, -0.3879687225, -0.5356033346, -1.6094618185, -0.9649419305, -0.9945525882, -1.7791104375, -0.6641607235, -0.6977503802, 0.0136289637, 0.3742885011, 1.3685796917, 0.9016757701, 1.9940482175, 0.9574299116];
        assert_close(&f, &want, 1e-9);
        // unbatched forms
        let u1 = unfold(&x.squeeze_dim(0), [2, 3], [1, 2], 1, [2, 1]).unwrap();
        assert_eq!(u1.shape(), &[12, 9]);
        let f1 = fold(&u1, [4, 5], [2, 3], [1, 2], 1, [2, 1]).unwrap();
        assert_close(&f1, &want, 1e-9);
        let e = fold(&u, [4, 6], [2, 3], [1, 2], 1, [2, 1]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Fold: expected input of shape [N, C * 6, 12] or [C * 6, 12] ([3, 4] blocks of [2, 3] over output_size [4, 6]), got [1, 12, 9]"
        );
    }

    #[test]
    fn conv_gradcheck() {
        let mut g = Generator::new(11);
        let opts = GradcheckOptions::default();
        // conv1d: stride, padding, dilation, bias
        let (x, w, b) = (
            g.randn([2, 2, 7], DType::F64),
            g.randn([3, 2, 3], DType::F64),
            g.randn([3], DType::F64),
        );
        gradcheck(
            |v| conv1d(&v[0], &v[1], Some(&v[2]), 2, 1, 2, 1).unwrap(),
            &[x, w, b],
            opts,
        )
        .unwrap();
        // conv2d: groups, stride, padding, dilation, bias, non-contiguous input
        let (x, w, b) = (
            g.randn([2, 4, 6, 5], DType::F64).transpose(2, 3),
            g.randn([6, 2, 2, 3], DType::F64),
            g.randn([6], DType::F64),
        );
        let f =
            |v: &[Tensor]| conv2d(&v[0], &v[1], Some(&v[2]), [2, 1], [1, 2], [1, 2], 2).unwrap();
        gradcheck(f, &[x.clone(), w.clone(), b.clone()], opts).unwrap();
        gradgradcheck(f, &[x, w, b], opts).unwrap();
        // conv2d without bias, unbatched
        let (x, w) = (
            g.randn([2, 4, 4], DType::F64),
            g.randn([3, 2, 2, 2], DType::F64),
        );
        gradcheck(
            |v| conv2d(&v[0], &v[1], None, 1, 1, 1, 1).unwrap(),
            &[x, w],
            opts,
        )
        .unwrap();
        // conv3d
        let (x, w, b) = (
            g.randn([1, 2, 3, 3, 4], DType::F64),
            g.randn([2, 1, 2, 2, 2], DType::F64),
            g.randn([2], DType::F64),
        );
        gradcheck(
            |v| conv3d(&v[0], &v[1], Some(&v[2]), [1, 1, 2], 1, 1, 2).unwrap(),
            &[x, w, b],
            opts,
        )
        .unwrap();
    }

    #[test]
    fn wrong_shapes_are_clear_errors() {
        let conv = Conv2d::new(3, 8, 3, ());
        let msg = |x: Tensor| conv.try_forward(&x).unwrap_err().to_string();
        assert_eq!(
            msg(Tensor::zeros([2, 4, 8, 8], ())),
            "Conv2d: expected input of shape [N, 3, H, W] or [3, H, W], got [2, 4, 8, 8]"
        );
        assert_eq!(
            msg(Tensor::zeros([8, 8], ())),
            "Conv2d: expected input of shape [N, 3, H, W] or [3, H, W], got [8, 8]"
        );
        assert_eq!(
            msg(Tensor::zeros([1, 3, 2, 5], ())),
            "Conv2d: input of spatial size [2, 5] (padded to [2, 5]) is smaller than the kernel [3, 3]"
        );
        let dil = Conv2d::with_config(3, 8, 3, Conv2dConfig::default().dilation(2).padding(1), ());
        assert_eq!(
            dil.try_forward(&Tensor::zeros([1, 3, 2, 5], ())).unwrap_err().to_string(),
            "Conv2d: input of spatial size [2, 5] (padded to [4, 7]) is smaller than the kernel [3, 3] (dilated to [5, 5])"
        );
        // the panicking form names the layer too
        let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            conv.forward(&Tensor::zeros([3, 8], ()))
        }));
        let p = p.unwrap_err();
        let text = p.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            text.contains("Conv2d: expected input of shape [N, 3, H, W] or [3, H, W], got [3, 8]"),
            "{text}"
        );
        let c1 = Conv1d::new(2, 2, 2, ());
        assert_eq!(
            c1.try_forward(&Tensor::zeros([1, 2, 3, 3], ()))
                .unwrap_err()
                .to_string(),
            "Conv1d: expected input of shape [N, 2, L] or [2, L], got [1, 2, 3, 3]"
        );
        let c3 = Conv3d::new(2, 2, 2, ());
        assert_eq!(
            c3.try_forward(&Tensor::zeros([1, 1, 3, 3, 3], ()))
                .unwrap_err()
                .to_string(),
            "Conv3d: expected input of shape [N, 2, D, H, W] or [2, D, H, W], got [1, 1, 3, 3, 3]"
        );
        // functional: bad weight, bias, groups, dtype
        let x = Tensor::zeros([1, 4, 5, 5], ());
        let e = |r: Result<Tensor>| r.unwrap_err().to_string();
        assert_eq!(
            e(conv2d(&x, &Tensor::zeros([4, 4, 3], ()), None, 1, 0, 1, 1)),
            "Conv2d: expected weight of shape [out_channels, in_channels / groups, kh, kw], got [4, 4, 3]"
        );
        assert_eq!(
            e(conv2d(
                &x,
                &Tensor::zeros([4, 4, 3, 3], ()),
                Some(&Tensor::zeros([3], ())),
                1,
                0,
                1,
                1
            )),
            "Conv2d: expected bias of shape [4], got [3]"
        );
        assert_eq!(
            e(conv2d(&x, &Tensor::zeros([3, 2, 3, 3], ()), None, 1, 0, 1, 2)),
            "Conv2d: groups must be positive and divide out_channels, got groups=2 with weight [3, 2, 3, 3]"
        );
        assert_eq!(
            e(conv2d(
                &x,
                &Tensor::zeros([4, 4, 3, 3], DType::F64),
                None,
                1,
                0,
                1,
                1
            )),
            "Conv2d: input (f32) and weight (f64) must have the same dtype"
        );
        assert_eq!(
            e(conv2d(&x, &Tensor::zeros([4, 4, 3, 3], ()), None, 0, 0, 1, 1)),
            "Conv2d: kernel_size, stride and dilation must be positive, got kernel_size=[3, 3], stride=[0, 0], dilation=[1, 1]"
        );
    }

    #[test]
    fn conv_module_parameters_and_init() {
        crate::manual_seed(0);
        let conv = Conv2d::with_config(4, 8, [3, 2], Conv2dConfig::default().groups(2), ());
        let names: Vec<(String, Vec<usize>)> = conv
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.shape().to_vec()))
            .collect();
        assert_eq!(
            names,
            [
                ("weight".to_string(), vec![8, 2, 3, 2]),
                ("bias".to_string(), vec![8])
            ]
        );
        // kaiming_uniform(a = √5): uniform in ±1/√fan_in, fan_in = 4/2 · 3 · 2 = 12
        let bound = 1.0 / 12f32.sqrt();
        let w = conv.weight.to_vec::<f32>();
        let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max <= bound && max > 0.8 * bound, "{max} vs {bound}");
        assert!(conv
            .bias
            .as_ref()
            .unwrap()
            .to_vec::<f32>()
            .iter()
            .all(|v| v.abs() <= bound));
        assert!(conv.weight.requires_grad());
        assert_eq!(
            (conv.in_channels(), conv.out_channels(), conv.kernel_size()),
            (4, 8, [3, 2])
        );
        assert_eq!(
            conv.to_string(),
            "Conv2d(4, 8, kernel_size=(3, 2), stride=(1, 1), groups=2)"
        );
        let nb = Conv2d::with_config(
            1,
            2,
            3,
            Conv2dConfig::default().bias(false).padding(1),
            DType::F64,
        );
        assert!(nb.bias.is_none());
        assert_eq!(nb.weight.dtype(), DType::F64);
        assert_eq!(
            nb.to_string(),
            "Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=false)"
        );
        // the module computes the functional form with its parameters
        let x = Generator::new(4).randn([2, 4, 5, 6], DType::F32);
        let y = conv.forward(&x);
        let want = conv2d(&x, &conv.weight, conv.bias.as_ref(), 1, 0, 1, 2).unwrap();
        assert_eq!(y.to_vec::<f32>(), want.to_vec::<f32>());
        // unbatched input gives the batched result without the batch dim
        let y0 = conv.forward(&x.select(0, 0));
        assert_eq!(y0.to_vec::<f32>(), y.select(0, 0).to_vec::<f32>());
        // gradients reach both parameters
        y.sum_all().backward();
        assert_eq!(conv.weight.grad().unwrap().shape(), &[8, 2, 3, 2]);
        // d(sum y)/d bias = number of output positions per channel = 2 · 3 · 5
        assert!(conv
            .bias
            .as_ref()
            .unwrap()
            .grad()
            .unwrap()
            .to_vec::<f32>()
            .iter()
            .all(|&g| g == 30.0));
    }

    #[test]
    fn constructor_errors() {
        assert_eq!(
            Conv1d::try_with_config(2, 3, 3, Conv1dConfig::default().groups(0), ())
                .unwrap_err()
                .to_string(),
            "Conv1d: in_channels (2) and out_channels (3) must be divisible by groups (0)"
        );
        assert_eq!(
            Conv2d::try_with_config(2, 3, [3, 0], Conv2dConfig::default(), ())
                .unwrap_err()
                .to_string(),
            "Conv2d: kernel_size, stride and dilation must be positive, got kernel_size=[3, 0], stride=[1, 1], dilation=[1, 1]"
        );
    }

    #[test]
    fn output_size_arithmetic_is_torchs() {
        // floor((L + 2p − d(k−1) − 1)/s) + 1 for a range of settings
        for l in 1..12usize {
            for k in 1..5 {
                for s in 1..4 {
                    for p in 0..3 {
                        for d in 1..3 {
                            let r = window("t", &[l], &[k], &[s], &[p], &[d], false);
                            let span = (l + 2 * p) as isize - (d * (k - 1)) as isize - 1;
                            if span < 0 {
                                assert!(r.is_err());
                            } else {
                                assert_eq!(r.unwrap().output, vec![span as usize / s + 1]);
                            }
                        }
                    }
                }
            }
        }
    }

    /// One convolution through the fused (`fused`) or the composed path, with fresh leaf
    /// copies of the operands (`x` keeps its layout, so a view stays a view): the output
    /// and the gradients of `x` (when `x_grad`), `w` and `b` from the output gradient
    /// `sin(0.7 i + 0.1)`.
    #[allow(clippy::too_many_arguments)]
    fn run_path<const D: usize>(
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        (s, p, d, groups): ([usize; D], [usize; D], [usize; D], usize),
        x_grad: bool,
        fused: bool,
    ) -> Vec<Tensor> {
        let x = x.detach().requires_grad_(x_grad);
        let w = w.detach().requires_grad_(true);
        let b = b.map(|b| b.detach().requires_grad_(true));
        let y = conv_nd_with(&x, &w, b.as_ref(), s, p, d, groups, fused).unwrap();
        let name = y.grad_fn().map(|n| n.name());
        assert_eq!(name == Some("conv"), fused, "{name:?}");
        let gy = seq(y.shape(), 0.7, 0.1).to_dtype(y.dtype());
        (&y * &gy).sum_all().backward();
        let mut out = vec![y.detach()];
        if x_grad {
            out.push(x.grad().expect("dx"));
        } else {
            assert!(x.grad().is_none());
        }
        out.push(w.grad().expect("dw"));
        out.extend(b.map(|b| b.grad().expect("db")));
        out
    }

    /// The fused and the composed path agree on the output and every gradient, in f64
    /// (to `1e-12` relative to the largest value) and in f32 (`2e-5`).
    #[allow(clippy::too_many_arguments)]
    fn check_paths<const D: usize>(
        what: &str,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        cfg: ([usize; D], [usize; D], [usize; D], usize),
    ) {
        for dt in [DType::F64, DType::F32] {
            let tol = if dt == DType::F64 { 1e-12 } else { 2e-5 };
            let (x, w, b) = (x.to_dtype(dt), w.to_dtype(dt), b.map(|b| b.to_dtype(dt)));
            for x_grad in [true, false] {
                let f = run_path(&x, &w, b.as_ref(), cfg, x_grad, true);
                let c = run_path(&x, &w, b.as_ref(), cfg, x_grad, false);
                assert_eq!(f.len(), c.len());
                for (i, (f, c)) in f.iter().zip(&c).enumerate() {
                    assert_eq!(f.shape(), c.shape(), "{what} {dt} #{i}");
                    let (f, c) = (f.to_dtype(DType::F64), c.to_dtype(DType::F64));
                    let scale = c.abs().max(crate::All, false).item::<f64>().max(1.0);
                    let err = (&f - &c).abs().max(crate::All, false).item::<f64>();
                    assert!(
                        err <= tol * scale,
                        "{what} {dt} x_grad={x_grad} #{i}: max error {err} (scale {scale})"
                    );
                }
            }
        }
    }

    #[test]
    fn fused_conv_matches_the_composed_path() {
        let mut g = Generator::new(21);
        let mut r = |shape: &[usize]| g.randn(shape, DType::F64);
        // 1-D: stride 2, padding 1, dilation 2, bias
        check_paths::<1>(
            "1d",
            &r(&[3, 4, 11]),
            &r(&[6, 4, 3]),
            Some(&r(&[6])),
            ([2], [1], [2], 1),
        );
        // 2-D: groups 2, stride, padding, dilation, bias, a permuted input
        check_paths::<2>(
            "2d groups",
            &r(&[5, 7, 4, 6]).permute([0, 2, 1, 3]),
            &r(&[6, 2, 3, 2]),
            Some(&r(&[6])),
            ([2, 1], [1, 2], [2, 1], 2),
        );
        // depthwise (groups = C, two outputs per channel), no bias
        check_paths::<2>(
            "depthwise",
            &r(&[2, 3, 6, 6]),
            &r(&[6, 1, 3, 3]),
            None,
            ([1, 1], [1, 1], [1, 1], 3),
        );
        // 3-D: stride, padding, bias
        check_paths::<3>(
            "3d",
            &r(&[2, 2, 4, 5, 4]),
            &r(&[4, 2, 2, 3, 2]),
            Some(&r(&[4])),
            ([1, 2, 1], [1, 1, 1], [1, 1, 1], 1),
        );
        // one sample, large enough for threaded products; and more samples than
        // threads, large enough to split by sample
        check_paths::<2>(
            "n=1",
            &r(&[1, 8, 24, 24]),
            &r(&[16, 8, 3, 3]),
            Some(&r(&[16])),
            ([1, 1], [1, 1], [1, 1], 1),
        );
        check_paths::<2>(
            "n=7",
            &r(&[7, 8, 12, 12]),
            &r(&[16, 8, 3, 3]),
            None,
            ([1, 1], [1, 1], [1, 1], 1),
        );
        // pointwise (the sample is its own im2col), on a sliced view, with and without
        // groups
        check_paths::<2>(
            "pointwise",
            &r(&[3, 6, 5, 8]).try_slice(3, 1, 8, 2).unwrap(),
            &r(&[4, 6, 1, 1]),
            Some(&r(&[4])),
            ([1, 1], [0, 0], [1, 1], 1),
        );
        check_paths::<2>(
            "pointwise groups",
            &r(&[3, 6, 5, 4]),
            &r(&[4, 3, 1, 1]),
            None,
            ([1, 1], [0, 0], [1, 1], 2),
        );
        // 1x1 kernel with a stride: not pointwise, through im2col
        check_paths::<2>(
            "1x1 stride 2",
            &r(&[2, 3, 5, 5]),
            &r(&[4, 3, 1, 1]),
            Some(&r(&[4])),
            ([2, 2], [0, 0], [1, 1], 1),
        );
    }

    #[test]
    fn fused_conv_is_one_node_saving_only_input_and_weight() {
        let mut g = Generator::new(5);
        let x = g.randn([4, 3, 8, 8], DType::F32).requires_grad_(true);
        let w = g.randn([5, 3, 3, 3], DType::F32).requires_grad_(true);
        let b = g.randn([5], DType::F32).requires_grad_(true);
        let y = conv2d(&x, &w, Some(&b), 1, 1, 1, 1).unwrap();
        let node = y.grad_fn().expect("recorded");
        assert_eq!(node.name(), "conv");
        // its inputs are the leaves themselves: no im2col, matmul or add node between
        assert_eq!(node.inputs.len(), 3);
        assert!(node
            .inputs
            .iter()
            .all(|e| matches!(e, Some(crate::autograd::Edge::Leaf(_)))));
        let saved: Vec<&[usize]> = node.saved.iter().map(|s| s.shape.as_slice()).collect();
        assert_eq!(saved, vec![x.shape(), w.shape()]);
        // an input that does not require grad gets no edge
        let y = conv2d(&x.detach(), &w, None, 1, 1, 1, 1).unwrap();
        let node = y.grad_fn().expect("recorded");
        assert!(node.inputs[0].is_none() && node.inputs[1].is_some());
        // unbatched input: the node, then the squeeze
        let y = conv2d(&x.select(0, 0), &w, None, 1, 1, 1, 1).unwrap();
        let inner = match &y.grad_fn().expect("recorded").inputs[0] {
            Some(crate::autograd::Edge::Node(n)) => n.name(),
            _ => "none",
        };
        assert_eq!(inner, "conv");
        // f16 keeps the composed path
        let y = conv2d(
            &x.to_dtype(DType::F16),
            &w.to_dtype(DType::F16),
            None,
            1,
            1,
            1,
            1,
        )
        .unwrap();
        assert_ne!(y.grad_fn().expect("recorded").name(), "conv");
        // no grad: nothing recorded
        let y = crate::autograd::no_grad(|| conv2d(&x, &w, None, 1, 1, 1, 1).unwrap());
        assert!(y.grad_fn().is_none());
    }

    #[test]
    fn fused_conv_gradcheck_to_second_order() {
        let mut g = Generator::new(13);
        let opts = GradcheckOptions::default();
        // conv1d: stride, padding, dilation, bias
        let v = vec![
            g.randn([2, 2, 7], DType::F64),
            g.randn([3, 2, 3], DType::F64),
            g.randn([3], DType::F64),
        ];
        let f = |v: &[Tensor]| conv1d(&v[0], &v[1], Some(&v[2]), 2, 1, 2, 1).unwrap();
        gradcheck(f, &v, opts).unwrap();
        gradgradcheck(f, &v, opts).unwrap();
        // conv3d with groups
        let v = vec![
            g.randn([1, 2, 3, 3, 4], DType::F64),
            g.randn([2, 1, 2, 2, 2], DType::F64),
            g.randn([2], DType::F64),
        ];
        let f = |v: &[Tensor]| conv3d(&v[0], &v[1], Some(&v[2]), [1, 1, 2], 1, 1, 2).unwrap();
        gradcheck(f, &v, opts).unwrap();
        gradgradcheck(f, &v, opts).unwrap();
        // pointwise, groups 2, a transposed input
        let v = vec![
            g.randn([2, 4, 3, 4], DType::F64).transpose(2, 3),
            g.randn([6, 2, 1, 1], DType::F64),
        ];
        let f = |v: &[Tensor]| conv2d(&v[0], &v[1], None, 1, 0, 1, 2).unwrap();
        gradcheck(f, &v, opts).unwrap();
        gradgradcheck(f, &v, opts).unwrap();
        // the weight alone (the input a constant: no dx computed), and the input alone
        let x = g.randn([3, 2, 5, 4], DType::F64);
        let w = g.randn([3, 2, 2, 3], DType::F64);
        let fw = |v: &[Tensor]| conv2d(&x, &v[0], None, [2, 1], 1, 1, 1).unwrap();
        gradcheck(fw, std::slice::from_ref(&w), opts).unwrap();
        gradgradcheck(fw, std::slice::from_ref(&w), opts).unwrap();
        let fx = |v: &[Tensor]| conv2d(&v[0], &w, None, [2, 1], 1, 1, 1).unwrap();
        gradcheck(fx, std::slice::from_ref(&x), opts).unwrap();
        gradgradcheck(fx, std::slice::from_ref(&x), opts).unwrap();
    }
}
