//! Pooling: [`MaxPool1d`]/[`MaxPool2d`]/[`MaxPool3d`], [`AvgPool1d`]/[`AvgPool2d`]/
//! [`AvgPool3d`] and [`AdaptiveAvgPool1d`]/[`AdaptiveAvgPool2d`]/[`AdaptiveAvgPool3d`],
//! with their functional forms, all with PyTorch's semantics.
//!
//! Max pooling finds the argmax of each window with a dedicated kernel and gathers it,
//! so the gradient goes to that element only (the first maximum on ties). Average
//! pooling sums the `im2col` columns of each window, so the gradient is spread evenly.
//! Adaptive average pooling is separable: one averaging matrix per spatial dim, applied
//! with a matrix product.
//!
//! ```
//! use flint_runtime::nn::{AdaptiveAvgPool2d, Forward, MaxPool2d};
//! use flint_runtime::Tensor;
//! let x = Tensor::randn([8, 16, 28, 28], ());
//! let y = MaxPool2d::new(2).forward(&x);
//! assert_eq!(y.shape(), &[8, 16, 14, 14]);
//! assert_eq!(AdaptiveAvgPool2d::new(1).forward(&y).shape(), &[8, 16, 1, 1]);
//! ```

use super::conv::{batched, check_spatial_input, window, IntoSpatial};
use super::module::{Forward, Module, Visitor, VisitorMut};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn pool_name(kind: &str, d: usize) -> &'static str {
    match (kind, d) {
        ("max", 1) => "MaxPool1d",
        ("max", 2) => "MaxPool2d",
        ("max", _) => "MaxPool3d",
        ("avg", 1) => "AvgPool1d",
        ("avg", 2) => "AvgPool2d",
        ("avg", _) => "AvgPool3d",
        (_, 1) => "AdaptiveAvgPool1d",
        (_, 2) => "AdaptiveAvgPool2d",
        _ => "AdaptiveAvgPool3d",
    }
}

fn check_float(op: &'static str, x: &Tensor) -> Result<()> {
    if x.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::dtype(
            op,
            format!(
                "expected a floating-point input, got {}; convert with to_dtype first",
                x.dtype()
            ),
        ))
    }
}

/// PyTorch's limit on pooling padding: at most half the (dilated) kernel.
fn check_padding(
    op: &'static str,
    kernel: &[usize],
    padding: &[usize],
    dilation: &[usize],
) -> Result<()> {
    let bad = (0..kernel.len()).any(|i| {
        let eff = dilation[i] * kernel[i].saturating_sub(1) + 1;
        padding[i] > eff / 2
    });
    if bad {
        return Err(Error::config(
            op,
            format!(
                "padding should be at most half of the (dilated) kernel size, got padding={padding:?} with kernel_size={kernel:?} and dilation={dilation:?}"
            ),
        ));
    }
    Ok(())
}

/// Max pooling over `D` spatial dims: the values and the flat in-plane indices of the
/// maxima (`[N, C, *out]` each, or without `N` for an unbatched input).
fn max_pool_nd<const D: usize>(
    x: &Tensor,
    kernel: [usize; D],
    stride: [usize; D],
    padding: [usize; D],
    dilation: [usize; D],
    ceil_mode: bool,
) -> Result<(Tensor, Tensor)> {
    let op = pool_name("max", D);
    check_spatial_input(op, x, D, None)?;
    if x.dtype() == DType::Bool {
        return Err(Error::dtype(op, "not defined on bool tensors"));
    }
    let w = window(
        op,
        &x.shape()[x.ndim() - D..],
        &kernel,
        &stride,
        &padding,
        &dilation,
        ceil_mode,
    )?;
    check_padding(op, &kernel, &padding, &dilation)?;
    let unbatched = x.ndim() == D + 1;
    let xb = if unbatched { x.unsqueeze(0) } else { x.clone() };
    let (n, c) = (xb.size(0), xb.size(1));
    let idx = xb.window_argmax(&w)?;
    let mut shape = vec![n, c];
    shape.extend_from_slice(&w.output);
    // a window of padding only (possible with a large dilation) has index -1: its value
    // is -inf and it passes no gradient, as a max over nothing
    let empty = idx.try_lt(0i64)?;
    let has_empty = empty.any();
    let gidx = if has_empty {
        idx.try_where(&empty.logical_not(), 0i64)?
    } else {
        idx.clone()
    };
    let flat = xb.try_reshape([n, c, w.plane()])?;
    let mut out = flat
        .try_gather(2, &gidx.try_reshape([n, c, w.windows()])?)?
        .try_reshape(shape)?;
    if has_empty {
        out = out.try_masked_fill(&empty, f64::NEG_INFINITY)?;
    }
    Ok(if unbatched {
        (out.squeeze_dim(0), idx.squeeze_dim(0))
    } else {
        (out, idx)
    })
}

/// 1-D max pooling (`torch.nn.functional.max_pool1d`) over `[N, C, L]` or `[C, L]`;
/// padding counts as `-inf`. PyTorch's default `stride` is `kernel_size`.
///
/// ```
/// use flint_runtime::{nn::max_pool1d, Tensor};
/// let x = Tensor::from_vec(vec![1.0f32, 5.0, 2.0, 4.0, 3.0], [1, 5]);
/// assert_eq!(max_pool1d(&x, 2, 2, 0, 1, false).unwrap().to_vec::<f32>(), vec![5.0, 4.0]);
/// assert_eq!(max_pool1d(&x, 2, 2, 0, 1, true).unwrap().to_vec::<f32>(), vec![5.0, 4.0, 3.0]);
/// ```
pub fn max_pool1d(
    x: &Tensor,
    kernel_size: impl IntoSpatial<1>,
    stride: impl IntoSpatial<1>,
    padding: impl IntoSpatial<1>,
    dilation: impl IntoSpatial<1>,
    ceil_mode: bool,
) -> Result<Tensor> {
    let (k, s, p, d) = (
        kernel_size.spatial(),
        stride.spatial(),
        padding.spatial(),
        dilation.spatial(),
    );
    Ok(max_pool_nd::<1>(x, k, s, p, d, ceil_mode)?.0)
}

/// 2-D max pooling (`torch.nn.functional.max_pool2d`) over `[N, C, H, W]` or
/// `[C, H, W]`; padding counts as `-inf`, and the output size is
/// `floor((in + 2·padding − dilation·(k − 1) − 1) / stride) + 1` (`ceil` with
/// `ceil_mode`). PyTorch's default `stride` is `kernel_size`. The gradient goes to the
/// maximum of each window (the first one on ties).
///
/// ```
/// use flint_runtime::{nn::max_pool2d, Tensor};
/// let x = Tensor::arange(0.0, 16.0, 1.0, ()).reshape([1, 1, 4, 4]);
/// let y = max_pool2d(&x, 2, 2, 0, 1, false).unwrap();
/// assert_eq!(y.to_vec::<f32>(), vec![5.0, 7.0, 13.0, 15.0]);
/// ```
pub fn max_pool2d(
    x: &Tensor,
    kernel_size: impl IntoSpatial<2>,
    stride: impl IntoSpatial<2>,
    padding: impl IntoSpatial<2>,
    dilation: impl IntoSpatial<2>,
    ceil_mode: bool,
) -> Result<Tensor> {
    Ok(max_pool2d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode)?.0)
}

/// [`max_pool2d`] that also returns the indices of the maxima (`return_indices=True`):
/// an `i64` tensor of the output's shape holding each maximum's flat index `h·W + w` in
/// its input plane (`-1` for a window made only of padding, where PyTorch's value is
/// unspecified).
///
/// ```
/// use flint_runtime::{nn::max_pool2d_with_indices, Tensor};
/// let x = Tensor::from_vec(vec![1.0f32, 9.0, 3.0, 4.0], [1, 1, 2, 2]);
/// let (y, i) = max_pool2d_with_indices(&x, 2, 2, 0, 1, false).unwrap();
/// assert_eq!((y.to_vec::<f32>(), i.to_vec::<i64>()), (vec![9.0], vec![1]));
/// ```
pub fn max_pool2d_with_indices(
    x: &Tensor,
    kernel_size: impl IntoSpatial<2>,
    stride: impl IntoSpatial<2>,
    padding: impl IntoSpatial<2>,
    dilation: impl IntoSpatial<2>,
    ceil_mode: bool,
) -> Result<(Tensor, Tensor)> {
    let (k, s, p, d) = (
        kernel_size.spatial(),
        stride.spatial(),
        padding.spatial(),
        dilation.spatial(),
    );
    max_pool_nd::<2>(x, k, s, p, d, ceil_mode)
}

/// 3-D max pooling (`torch.nn.functional.max_pool3d`) over `[N, C, D, H, W]` or
/// `[C, D, H, W]`.
///
/// ```
/// use flint_runtime::{nn::max_pool3d, Tensor};
/// let x = Tensor::arange(0.0, 8.0, 1.0, ()).reshape([1, 1, 2, 2, 2]);
/// assert_eq!(max_pool3d(&x, 2, 2, 0, 1, false).unwrap().to_vec::<f32>(), vec![7.0]);
/// ```
pub fn max_pool3d(
    x: &Tensor,
    kernel_size: impl IntoSpatial<3>,
    stride: impl IntoSpatial<3>,
    padding: impl IntoSpatial<3>,
    dilation: impl IntoSpatial<3>,
    ceil_mode: bool,
) -> Result<Tensor> {
    let (k, s, p, d) = (
        kernel_size.spatial(),
        stride.spatial(),
        padding.spatial(),
        dilation.spatial(),
    );
    Ok(max_pool_nd::<3>(x, k, s, p, d, ceil_mode)?.0)
}

/// The options of an average pooling beyond the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AvgOpts {
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: Option<usize>,
}

/// Per-dim divisors of average pooling along one dim, as PyTorch computes them: the
/// window clipped to the padded input (`count_include_pad`) or to the input itself.
fn divisors_1d(
    input: usize,
    k: usize,
    s: usize,
    p: usize,
    out: usize,
    include_pad: bool,
) -> Vec<usize> {
    (0..out)
        .map(|o| {
            let start = (o * s) as isize - p as isize;
            let end = (start + k as isize).min((input + p) as isize);
            if include_pad {
                (end - start) as usize
            } else {
                (end.min(input as isize) - start.max(0)).max(0) as usize
            }
        })
        .collect()
}

fn avg_pool_nd<const D: usize>(
    x: &Tensor,
    kernel: [usize; D],
    stride: [usize; D],
    padding: [usize; D],
    o: AvgOpts,
) -> Result<Tensor> {
    let op = pool_name("avg", D);
    check_spatial_input(op, x, D, None)?;
    check_float(op, x)?;
    if o.divisor_override == Some(0) {
        return Err(Error::config(op, "divisor_override must be positive"));
    }
    let spatial = &x.shape()[x.ndim() - D..];
    let w = window(
        op,
        spatial,
        &kernel,
        &stride,
        &padding,
        &[1; D],
        o.ceil_mode,
    )?;
    check_padding(op, &kernel, &padding, &[1; D])?;
    // divisors: one per window, the product of the per-dim counts
    let per_dim: Vec<Vec<usize>> = (0..D)
        .map(|i| {
            divisors_1d(
                spatial[i],
                kernel[i],
                stride[i],
                padding[i],
                w.output[i],
                o.count_include_pad,
            )
        })
        .collect();
    let mut div = vec![1usize];
    for counts in &per_dim {
        div = div
            .iter()
            .flat_map(|&a| counts.iter().map(move |&b| a * b))
            .collect();
    }
    if let Some(d) = o.divisor_override {
        div.iter_mut().for_each(|v| *v = d);
    }
    batched(x, D, |xb| {
        let (n, c) = (xb.size(0), xb.size(1));
        let mut planes = vec![n * c, 1];
        planes.extend_from_slice(spatial);
        let sums = xb.try_reshape(planes)?.im2col(&w)?.try_sum(1, false)?; // [n * c, windows]
        let y = if div.iter().all(|&d| d == div[0]) {
            sums.try_div(div[0] as f64)?
        } else {
            // a window of padding only sums to 0: divide it by 1 to give 0, as PyTorch does
            let d: Vec<f64> = div.iter().map(|&d| d.max(1) as f64).collect();
            let d = Tensor::from_vec(d, [w.windows()])
                .to_dtype(xb.dtype())
                .try_to(xb.device())?;
            sums.try_div(&d)?
        };
        let mut shape = vec![n, c];
        shape.extend_from_slice(&w.output);
        y.try_reshape(shape)
    })
}

/// 1-D average pooling (`torch.nn.functional.avg_pool1d`) over `[N, C, L]` or `[C, L]`.
/// See [`avg_pool2d`] for the options.
///
/// ```
/// use flint_runtime::{nn::avg_pool1d, Tensor};
/// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 4]);
/// let y = avg_pool1d(&x, 2, 2, 1, false, true).unwrap(); // windows (pad, 1), (2, 3), (4, pad)
/// assert_eq!(y.to_vec::<f32>(), vec![0.5, 2.5, 2.0]);
/// ```
pub fn avg_pool1d(
    x: &Tensor,
    kernel_size: impl IntoSpatial<1>,
    stride: impl IntoSpatial<1>,
    padding: impl IntoSpatial<1>,
    ceil_mode: bool,
    count_include_pad: bool,
) -> Result<Tensor> {
    let o = AvgOpts {
        ceil_mode,
        count_include_pad,
        divisor_override: None,
    };
    avg_pool_nd::<1>(
        x,
        kernel_size.spatial(),
        stride.spatial(),
        padding.spatial(),
        o,
    )
}

/// 2-D average pooling (`torch.nn.functional.avg_pool2d`) over `[N, C, H, W]` or
/// `[C, H, W]`, with zero padding. Each window's sum is divided by
/// `divisor_override` when given, else by the window's size clipped to the padded input
/// (`count_include_pad`, PyTorch's default) or to the input itself. PyTorch's default
/// `stride` is `kernel_size`. The gradient is spread evenly over each window.
///
/// ```
/// use flint_runtime::{nn::avg_pool2d, Tensor};
/// let x = Tensor::arange(0.0, 16.0, 1.0, ()).reshape([1, 1, 4, 4]);
/// let y = avg_pool2d(&x, 2, 2, 0, false, true, None).unwrap();
/// assert_eq!(y.to_vec::<f32>(), vec![2.5, 4.5, 10.5, 12.5]);
/// // padding 1 without counting it: the first row of windows covers row 0 only,
/// // giving x[0, 0], the mean of x[0, 1..3] and x[0, 3]
/// let y = avg_pool2d(&x, 2, 2, 1, false, false, None).unwrap();
/// assert_eq!(y.to_vec::<f32>()[..3], [0.0, 1.5, 3.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn avg_pool2d(
    x: &Tensor,
    kernel_size: impl IntoSpatial<2>,
    stride: impl IntoSpatial<2>,
    padding: impl IntoSpatial<2>,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: Option<usize>,
) -> Result<Tensor> {
    let o = AvgOpts {
        ceil_mode,
        count_include_pad,
        divisor_override,
    };
    avg_pool_nd::<2>(
        x,
        kernel_size.spatial(),
        stride.spatial(),
        padding.spatial(),
        o,
    )
}

/// 3-D average pooling (`torch.nn.functional.avg_pool3d`) over `[N, C, D, H, W]` or
/// `[C, D, H, W]`. See [`avg_pool2d`] for the options.
///
/// ```
/// use flint_runtime::{nn::avg_pool3d, Tensor};
/// let x = Tensor::arange(0.0, 8.0, 1.0, ()).reshape([1, 2, 2, 2]);
/// assert_eq!(avg_pool3d(&x, 2, 2, 0, false, true, None).unwrap().to_vec::<f32>(), vec![3.5]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn avg_pool3d(
    x: &Tensor,
    kernel_size: impl IntoSpatial<3>,
    stride: impl IntoSpatial<3>,
    padding: impl IntoSpatial<3>,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: Option<usize>,
) -> Result<Tensor> {
    let o = AvgOpts {
        ceil_mode,
        count_include_pad,
        divisor_override,
    };
    avg_pool_nd::<3>(
        x,
        kernel_size.spatial(),
        stride.spatial(),
        padding.spatial(),
        o,
    )
}

/// The `[input, output]` matrix whose column `i` averages PyTorch's adaptive window
/// `floor(i·in/out) .. ceil((i+1)·in/out)`.
fn adaptive_matrix(input: usize, output: usize, dtype: DType) -> Tensor {
    let mut m = vec![0.0f64; input * output];
    for i in 0..output {
        let start = i * input / output;
        let end = ((i + 1) * input).div_ceil(output);
        let v = 1.0 / (end - start) as f64;
        for j in start..end {
            m[j * output + i] = v;
        }
    }
    Tensor::from_vec(m, [input, output]).to_dtype(dtype)
}

fn adaptive_avg_pool_nd<const D: usize>(x: &Tensor, output: [usize; D]) -> Result<Tensor> {
    let op = pool_name("adaptive", D);
    check_spatial_input(op, x, D, None)?;
    check_float(op, x)?;
    if output.contains(&0) {
        return Err(Error::config(
            op,
            format!("output_size must be positive, got {output:?}"),
        ));
    }
    let nd = x.ndim();
    // Pool the last spatial dim with a matrix product, then rotate the spatial dims
    // (last to first); after D rounds every dim is pooled and the order is back. The
    // copy after each rotation lets the next product run as one matrix product.
    let mut perm: Vec<isize> = (0..nd as isize).collect();
    perm[nd - D..].rotate_right(1);
    let mut y = x.clone();
    for i in (0..D).rev() {
        let input = y.size(-1);
        if input != output[i] {
            let m = adaptive_matrix(input, output[i], x.dtype()).try_to(x.device())?;
            y = y.try_matmul(&m)?;
        }
        if D > 1 {
            y = y.try_permute(&perm)?.try_contiguous()?;
        }
    }
    Ok(y)
}

/// 1-D adaptive average pooling (`torch.nn.functional.adaptive_avg_pool1d`): `[N, C, L]`
/// or `[C, L]` → length `output_size`, output `i` averaging the inputs
/// `floor(i·L/out) .. ceil((i+1)·L/out)` (windows overlap when `out` does not divide `L`).
///
/// ```
/// use flint_runtime::{nn::adaptive_avg_pool1d, Tensor};
/// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0], [1, 5]);
/// // windows 0..3 and 2..5
/// assert_eq!(adaptive_avg_pool1d(&x, 2).unwrap().to_vec::<f32>(), vec![2.0, 4.0]);
/// ```
pub fn adaptive_avg_pool1d(x: &Tensor, output_size: impl IntoSpatial<1>) -> Result<Tensor> {
    adaptive_avg_pool_nd::<1>(x, output_size.spatial())
}

/// 2-D adaptive average pooling (`torch.nn.functional.adaptive_avg_pool2d`):
/// `[N, C, H, W]` or `[C, H, W]` → spatial size `output_size`, with PyTorch's windows
/// `floor(i·H/out) .. ceil((i+1)·H/out)` per dim. `output_size = 1` is a global average.
///
/// ```
/// use flint_runtime::{nn::adaptive_avg_pool2d, Tensor};
/// let x = Tensor::arange(0.0, 16.0, 1.0, ()).reshape([1, 1, 4, 4]);
/// assert_eq!(adaptive_avg_pool2d(&x, 1).unwrap().to_vec::<f32>(), vec![7.5]);
/// assert_eq!(adaptive_avg_pool2d(&x, [2, 1]).unwrap().to_vec::<f32>(), vec![3.5, 11.5]);
/// ```
pub fn adaptive_avg_pool2d(x: &Tensor, output_size: impl IntoSpatial<2>) -> Result<Tensor> {
    adaptive_avg_pool_nd::<2>(x, output_size.spatial())
}

/// 3-D adaptive average pooling (`torch.nn.functional.adaptive_avg_pool3d`).
///
/// ```
/// use flint_runtime::{nn::adaptive_avg_pool3d, Tensor};
/// let x = Tensor::arange(0.0, 8.0, 1.0, ()).reshape([1, 1, 2, 2, 2]);
/// assert_eq!(adaptive_avg_pool3d(&x, [1, 1, 2]).unwrap().to_vec::<f32>(), vec![3.0, 4.0]);
/// ```
pub fn adaptive_avg_pool3d(x: &Tensor, output_size: impl IntoSpatial<3>) -> Result<Tensor> {
    adaptive_avg_pool_nd::<3>(x, output_size.spatial())
}

/// `3` when every entry is 3, else `(3, 5)`, as PyTorch prints what it was given.
fn fmt_size(v: &[usize]) -> String {
    if v.iter().all(|&x| x == v[0]) {
        v[0].to_string()
    } else {
        super::conv::py_tuple(v)
    }
}

/// Max pooling over `D` spatial dims: [`MaxPool1d`], [`MaxPool2d`], [`MaxPool3d`]
/// (see [`max_pool2d`]). Build with `new(kernel_size)` (stride = kernel size, as in
/// PyTorch) and the chained setters.
///
/// ```
/// use flint_runtime::nn::{Forward, MaxPool2d};
/// use flint_runtime::Tensor;
/// let pool = MaxPool2d::new(3).stride(2).padding(1);
/// assert_eq!(pool.forward(&Tensor::zeros([2, 4, 9, 9], ())).shape(), &[2, 4, 5, 5]);
/// assert_eq!(pool.to_string(), "MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=false)");
/// let e = pool.try_forward(&Tensor::zeros([9, 9], ())).unwrap_err();
/// assert_eq!(e.to_string(), "MaxPool2d: expected input of shape [N, C, H, W] or [C, H, W], got [9, 9]");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool<const D: usize> {
    /// Window size.
    pub kernel_size: [usize; D],
    /// Step between windows.
    pub stride: [usize; D],
    /// `-inf` padding on both sides (at most half the dilated kernel).
    pub padding: [usize; D],
    /// Step between taps.
    pub dilation: [usize; D],
    /// Round the output size up instead of down.
    pub ceil_mode: bool,
}

/// 1-D max pooling over `[N, C, L]`.
pub type MaxPool1d = MaxPool<1>;
/// 2-D max pooling over `[N, C, H, W]`.
pub type MaxPool2d = MaxPool<2>;
/// 3-D max pooling over `[N, C, D, H, W]`.
pub type MaxPool3d = MaxPool<3>;

impl<const D: usize> MaxPool<D> {
    /// Windows of `kernel_size` with stride `kernel_size`, no padding or dilation.
    pub fn new(kernel_size: impl IntoSpatial<D>) -> Self {
        let k = kernel_size.spatial();
        MaxPool {
            kernel_size: k,
            stride: k,
            padding: [0; D],
            dilation: [1; D],
            ceil_mode: false,
        }
    }
    /// With this stride.
    pub fn stride(mut self, stride: impl IntoSpatial<D>) -> Self {
        self.stride = stride.spatial();
        self
    }
    /// With this padding.
    pub fn padding(mut self, padding: impl IntoSpatial<D>) -> Self {
        self.padding = padding.spatial();
        self
    }
    /// With this dilation.
    pub fn dilation(mut self, dilation: impl IntoSpatial<D>) -> Self {
        self.dilation = dilation.spatial();
        self
    }
    /// With `ceil_mode` on or off.
    pub fn ceil_mode(mut self, ceil_mode: bool) -> Self {
        self.ceil_mode = ceil_mode;
        self
    }
    /// The output and the flat in-plane indices of the maxima (`return_indices=True`).
    ///
    /// ```
    /// use flint_runtime::nn::MaxPool1d;
    /// use flint_runtime::Tensor;
    /// let x = Tensor::from_vec(vec![3.0f32, 1.0, 2.0, 8.0], [1, 1, 4]);
    /// let (_, idx) = MaxPool1d::new(2).forward_with_indices(&x).unwrap();
    /// assert_eq!(idx.to_vec::<i64>(), vec![0, 3]);
    /// ```
    pub fn forward_with_indices(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        max_pool_nd::<D>(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
        )
    }
}

impl<const D: usize> Module for MaxPool<D> {
    fn visit(&self, _: &mut Visitor<'_>) {}
    fn visit_mut(&mut self, _: &mut VisitorMut<'_>) {}
    fn type_name(&self) -> String {
        pool_name("max", D).into()
    }
    fn extra_repr(&self) -> String {
        format!(
            "kernel_size={}, stride={}, padding={}, dilation={}, ceil_mode={}",
            fmt_size(&self.kernel_size),
            fmt_size(&self.stride),
            fmt_size(&self.padding),
            fmt_size(&self.dilation),
            self.ceil_mode
        )
    }
}

impl<const D: usize> Forward for MaxPool<D> {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_indices(x)?.0)
    }
}

/// Average pooling over `D` spatial dims: [`AvgPool1d`], [`AvgPool2d`], [`AvgPool3d`]
/// (see [`avg_pool2d`]). Build with `new(kernel_size)` (stride = kernel size,
/// `count_include_pad = true`, as in PyTorch) and the chained setters.
///
/// ```
/// use flint_runtime::nn::{AvgPool2d, Forward};
/// use flint_runtime::Tensor;
/// let pool = AvgPool2d::new(2);
/// let y = pool.forward(&Tensor::ones([1, 3, 4, 6], ()));
/// assert_eq!(y.shape(), &[1, 3, 2, 3]);
/// assert_eq!(pool.to_string(), "AvgPool2d(kernel_size=2, stride=2, padding=0)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool<const D: usize> {
    /// Window size.
    pub kernel_size: [usize; D],
    /// Step between windows.
    pub stride: [usize; D],
    /// Zero padding on both sides (at most half the kernel).
    pub padding: [usize; D],
    /// Round the output size up instead of down.
    pub ceil_mode: bool,
    /// Count the padding in each window's divisor (`true`).
    pub count_include_pad: bool,
    /// Divide every window's sum by this instead.
    pub divisor_override: Option<usize>,
}

/// 1-D average pooling over `[N, C, L]`.
pub type AvgPool1d = AvgPool<1>;
/// 2-D average pooling over `[N, C, H, W]`.
pub type AvgPool2d = AvgPool<2>;
/// 3-D average pooling over `[N, C, D, H, W]`.
pub type AvgPool3d = AvgPool<3>;

impl<const D: usize> AvgPool<D> {
    /// Windows of `kernel_size` with stride `kernel_size`, no padding.
    pub fn new(kernel_size: impl IntoSpatial<D>) -> Self {
        let k = kernel_size.spatial();
        AvgPool {
            kernel_size: k,
            stride: k,
            padding: [0; D],
            ceil_mode: false,
            count_include_pad: true,
            divisor_override: None,
        }
    }
    /// With this stride.
    pub fn stride(mut self, stride: impl IntoSpatial<D>) -> Self {
        self.stride = stride.spatial();
        self
    }
    /// With this padding.
    pub fn padding(mut self, padding: impl IntoSpatial<D>) -> Self {
        self.padding = padding.spatial();
        self
    }
    /// With `ceil_mode` on or off.
    pub fn ceil_mode(mut self, ceil_mode: bool) -> Self {
        self.ceil_mode = ceil_mode;
        self
    }
    /// Counting the padding in the divisor or not.
    pub fn count_include_pad(mut self, on: bool) -> Self {
        self.count_include_pad = on;
        self
    }
    /// With a fixed divisor.
    pub fn divisor_override(mut self, divisor: Option<usize>) -> Self {
        self.divisor_override = divisor;
        self
    }
}

impl<const D: usize> Module for AvgPool<D> {
    fn visit(&self, _: &mut Visitor<'_>) {}
    fn visit_mut(&mut self, _: &mut VisitorMut<'_>) {}
    fn type_name(&self) -> String {
        pool_name("avg", D).into()
    }
    fn extra_repr(&self) -> String {
        let mut s = format!(
            "kernel_size={}, stride={}, padding={}",
            fmt_size(&self.kernel_size),
            fmt_size(&self.stride),
            fmt_size(&self.padding)
        );
        if self.ceil_mode {
            s += ", ceil_mode=true";
        }
        if !self.count_include_pad {
            s += ", count_include_pad=false";
        }
        if let Some(d) = self.divisor_override {
            s += &format!(", divisor_override={d}");
        }
        s
    }
}

impl<const D: usize> Forward for AvgPool<D> {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        avg_pool_nd::<D>(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            AvgOpts {
                ceil_mode: self.ceil_mode,
                count_include_pad: self.count_include_pad,
                divisor_override: self.divisor_override,
            },
        )
    }
}

/// Adaptive average pooling to a fixed output size over `D` spatial dims:
/// [`AdaptiveAvgPool1d`], [`AdaptiveAvgPool2d`], [`AdaptiveAvgPool3d`] (see
/// [`adaptive_avg_pool2d`]).
///
/// ```
/// use flint_runtime::nn::{AdaptiveAvgPool2d, Forward};
/// use flint_runtime::Tensor;
/// let pool = AdaptiveAvgPool2d::new([5, 7]);
/// assert_eq!(pool.forward(&Tensor::zeros([2, 8, 13, 9], ())).shape(), &[2, 8, 5, 7]);
/// assert_eq!(pool.to_string(), "AdaptiveAvgPool2d(output_size=(5, 7))");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveAvgPool<const D: usize> {
    /// The spatial size of the output.
    pub output_size: [usize; D],
}

/// 1-D adaptive average pooling over `[N, C, L]`.
pub type AdaptiveAvgPool1d = AdaptiveAvgPool<1>;
/// 2-D adaptive average pooling over `[N, C, H, W]`.
pub type AdaptiveAvgPool2d = AdaptiveAvgPool<2>;
/// 3-D adaptive average pooling over `[N, C, D, H, W]`.
pub type AdaptiveAvgPool3d = AdaptiveAvgPool<3>;

impl<const D: usize> AdaptiveAvgPool<D> {
    /// Pooling to `output_size`.
    pub fn new(output_size: impl IntoSpatial<D>) -> Self {
        AdaptiveAvgPool {
            output_size: output_size.spatial(),
        }
    }
}

impl<const D: usize> Module for AdaptiveAvgPool<D> {
    fn visit(&self, _: &mut Visitor<'_>) {}
    fn visit_mut(&mut self, _: &mut VisitorMut<'_>) {}
    fn type_name(&self) -> String {
        pool_name("adaptive", D).into()
    }
    fn extra_repr(&self) -> String {
        format!("output_size={}", fmt_size(&self.output_size))
    }
}

impl<const D: usize> Forward for AdaptiveAvgPool<D> {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        adaptive_avg_pool_nd::<D>(x, self.output_size)
    }
}

macro_rules! pool_display {
    ($($t:ident),*) => {$(
        impl<const D: usize> std::fmt::Display for $t<D> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(&super::Summary(self), f)
            }
        }
    )*};
}
pool_display!(MaxPool, AvgPool, AdaptiveAvgPool);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::{gradcheck, gradgradcheck, GradcheckOptions};
    use crate::nn::conv::tests::{assert_close, seq};
    use crate::nn::ModuleExt;
    use crate::Generator;

    #[test]
    fn max_pool_matches_torch() {
        // x = seq([1,2,5,6], 0.37)   (seq(shape, a, b) = sin(a·arange + b), see conv.rs)
        // y, i = F.max_pool2d(x, 3, 2, 1, return_indices=True)
        let x = seq(&[1, 2, 5, 6], 0.37, 0.0);
        let (y, i) = max_pool2d_with_indices(&x, 3, 2, 1, 1, false).unwrap();
        assert_eq!(y.shape(), &[1, 2, 3, 3]);
        #[rustfmt::skip]
        assert_close(&y, &[0.7965654722, 0.8956986857, 0.9958808445, 0.7965654722, 0.9964756147, 0.9964756147, 0.6793046521, 0.9964756147, 0.9964756147, 0.9016757701, 0.9970241088, 0.9574299116, 0.9016757701, 0.9970241088, 0.9574299116, 0.9975263011, 0.9975263011, 0.7840403585], 1e-9);
        assert_eq!(
            i.to_vec::<i64>(),
            vec![6, 3, 4, 6, 21, 21, 19, 21, 21, 7, 8, 9, 7, 8, 9, 25, 25, 27]
        );
        // x = seq([1,1,5,5], 0.37)
        // F.max_pool2d(x, 2, 2, 0, dilation=1, ceil_mode=True, return_indices=True)
        let x = seq(&[1, 1, 5, 5], 0.37, 0.0);
        let (y, i) = max_pool2d_with_indices(&x, 2, 2, 0, 1, true).unwrap();
        assert_eq!(y.shape(), &[1, 1, 3, 3]);
        #[rustfmt::skip]
        assert_close(&y, &[0.9612752030, 0.8956986857, 0.9958808445, -0.3552535600, 0.3679605106, 0.6793046521, 0.9964756147, 0.9593748339, 0.5182282059], 1e-9);
        assert_eq!(i.to_vec::<i64>(), vec![5, 3, 4, 16, 18, 19, 21, 22, 24]);
        // x = seq([1,1,6,7], 0.37)
        // F.max_pool2d(x, (2,3), (1,2), (1,1), dilation=(2,2), return_indices=True)
        let x = seq(&[1, 1, 6, 7], 0.37, 0.0);
        let (y, i) = max_pool2d_with_indices(&x, [2, 3], [1, 2], 1, 2, false).unwrap();
        assert_eq!(y.shape(), &[1, 1, 6, 3]);
        #[rustfmt::skip]
        assert_close(&y, &[0.1805962679, 0.1805962679, -0.5298361409, 0.8956986857, 0.9612752030, 0.9612752030, 0.9593748339, 0.9593748339, 0.5182282059, 0.0068146401, 0.6793046521, 0.6793046521, 0.9970241088, 0.9970241088, 0.9970241088, -0.8895552187, -0.3488751901, -0.3488751901], 1e-9);
        assert_eq!(
            i.to_vec::<i64>(),
            vec![8, 8, 10, 3, 5, 5, 22, 22, 24, 17, 19, 19, 38, 38, 38, 31, 33, 33]
        );
        // the module and the f32 path agree
        let m = MaxPool2d::new([2, 3]).stride([1, 2]).padding(1).dilation(2);
        assert_close(
            &m.forward(&x.to_dtype(DType::F32)),
            &y.to_vec::<f64>(),
            1e-7,
        );
    }

    #[test]
    fn max_pool_gradient_goes_to_the_first_maximum() {
        // all equal: each 2x2 window sends its gradient to its top-left element
        let x = Tensor::ones([1, 1, 2, 4], DType::F64).requires_grad_(true);
        let y = max_pool2d(&x, 2, 2, 0, 1, false).unwrap();
        (&y * &Tensor::from_vec(vec![3.0f64, 5.0], [1, 1, 1, 2]))
            .sum_all()
            .backward();
        assert_eq!(
            x.grad().unwrap().to_vec::<f64>(),
            vec![3., 0., 5., 0., 0., 0., 0., 0.]
        );
        // overlapping windows add up: [1, 9, 2] with k2 s1 picks 9 twice
        let x = Tensor::from_vec(vec![1.0f64, 9.0, 2.0], [1, 3]).requires_grad_(true);
        max_pool1d(&x, 2, 1, 0, 1, false)
            .unwrap()
            .sum_all()
            .backward();
        assert_eq!(x.grad().unwrap().to_vec::<f64>(), vec![0., 2., 0.]);
    }

    #[test]
    fn a_window_of_padding_only_is_minus_infinity() {
        // kernel 2 dilated by 4 with padding 2 over a length-2 input: both windows
        // (taps -2, 2 and -1, 3) miss the input
        let x = Tensor::from_vec(vec![1.0f64, 2.0], [1, 1, 2]).requires_grad_(true);
        let m = MaxPool1d::new(2).stride(1).padding(2).dilation(4);
        let (y, i) = m.forward_with_indices(&x).unwrap();
        assert_eq!(y.to_vec::<f64>(), vec![f64::NEG_INFINITY; 2]);
        assert_eq!(i.to_vec::<i64>(), vec![-1, -1]);
        y.sum_all().backward();
        assert_eq!(x.grad().unwrap().to_vec::<f64>(), vec![0.0, 0.0]);
    }

    #[test]
    fn avg_pool_matches_torch() {
        // x = seq([1,2,6,6], 0.37)
        let x = seq(&[1, 2, 6, 6], 0.37, 0.0);
        // F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=True)
        let y = avg_pool2d(&x, 3, 2, 1, true, true, None).unwrap();
        assert_eq!(y.shape(), &[1, 2, 4, 4]);
        #[rustfmt::skip]
        assert_close(&y, &[0.1869139162, 0.2721053306, 0.1483396830, 0.0267680701, 0.0455004689, 0.0594118829, 0.0236445839, -0.0002374954, -0.0160805503, 0.0129110022, 0.0535604132, 0.0336289568, -0.3140179678, -0.3170985221, 0.0065070458, 0.0935721253, 0.1724972437, 0.1450401578, -0.0568016627, -0.0802385267, 0.0359072506, 0.0227944562, -0.0253315057, -0.0240206494, 0.0175275901, 0.0540939303, 0.0660936594, 0.0307818095, -0.1649967175, 0.0130128828, 0.3314236789, 0.2268713404], 1e-9);
        // F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
        let m = AvgPool2d::new(3)
            .stride(2)
            .padding(1)
            .ceil_mode(true)
            .count_include_pad(false);
        #[rustfmt::skip]
        assert_close(&m.forward(&x), &[0.4205563115, 0.4081579959, 0.2225095244, 0.0803042104, 0.0682507034, 0.0594118829, 0.0236445839, -0.0004749907, -0.0241208255, 0.0129110022, 0.0535604132, 0.0672579135, -0.9420539035, -0.6341970441, 0.0130140916, 0.3742885011, 0.3881187983, 0.2175602367, -0.0852024941, -0.2407155800, 0.0538608759, 0.0227944562, -0.0253315057, -0.0480412988, 0.0262913852, 0.0540939303, 0.0660936594, 0.0615636190, -0.4949901524, 0.0260257657, 0.6628473578, 0.9074853616], 1e-9);
        // F.avg_pool2d(x, (2,3), (2,1), (1,0), divisor_override=5)
        let y = avg_pool2d(&x, [2, 3], [2, 1], [1, 0], false, true, Some(5)).unwrap();
        #[rustfmt::skip]
        assert_close(&y, &[0.2071806687, 0.3863204059, 0.5131734884, 0.5705709466, -0.2699624708, -0.4079562833, -0.4907351266, -0.5070952728, 0.4888213177, 0.4037580304, 0.2640479879, 0.0886002888, -0.5096537061, -0.3805182265, -0.1998813900, 0.0078084549, 0.5165979449, 0.5712259581, 0.5485412175, 0.4516139965, -0.4925577780, -0.5063714161, -0.4516500585, -0.3357999844, 0.2580844561, 0.0817536152, -0.1056421940, -0.2787398278, -0.1925449818, 0.0156154594, 0.2216624215, 0.3977084147], 1e-9);
    }

    #[test]
    fn avg_pool_gradient_is_spread_evenly() {
        // 2x2 windows over a 2x4 input: every element gets a quarter of its window's grad
        let x = Tensor::ones([1, 2, 4], DType::F64).requires_grad_(true);
        let y = avg_pool2d(&x, 2, 2, 0, false, true, None).unwrap();
        (&y * &Tensor::from_vec(vec![4.0f64, 8.0], [1, 1, 2]))
            .sum_all()
            .backward();
        assert_eq!(
            x.grad().unwrap().to_vec::<f64>(),
            vec![1., 1., 2., 2., 1., 1., 2., 2.]
        );
    }

    #[test]
    fn adaptive_avg_pool_matches_torch() {
        // x = seq([1,2,7,5], 0.37); F.adaptive_avg_pool2d(x, (3,4))
        let x = seq(&[1, 2, 7, 5], 0.37, 0.0);
        let y = adaptive_avg_pool2d(&x, [3, 4]).unwrap();
        assert_eq!(y.shape(), &[1, 2, 3, 4]);
        #[rustfmt::skip]
        assert_close(&y, &[0.1314921973, 0.0987859075, 0.0527094084, -0.0005010618, -0.0766354383, -0.0260643640, 0.0280343997, 0.0783388389, -0.0015031620, -0.0545755316, -0.1002613589, -0.1323772817, 0.0972921058, 0.0508334941, -0.0025051925, -0.0555048131, -0.0240894867, 0.0299992278, 0.0800276875, 0.1192247751, -0.0564315169, -0.1017181862, -0.1332377761, -0.1467242580], 1e-9);
        // x = seq([1,2,3], 0.37); F.adaptive_avg_pool1d(x, 5)   (output larger than input)
        let y = AdaptiveAvgPool1d::new(5).forward(&seq(&[1, 2, 3], 0.37, 0.0));
        #[rustfmt::skip]
        assert_close(&y, &[0.0, 0.1808077160, 0.3616154320, 0.5179516718, 0.6742879116, 0.8956986857, 0.9457897651, 0.9958808445, 0.9785780238, 0.9612752030], 1e-9);
        // x = seq([1,1,5,4,3], 0.37); F.adaptive_avg_pool3d(x, (2,3,2))
        let y = adaptive_avg_pool3d(&seq(&[1, 1, 5, 4, 3], 0.37, 0.0), [2, 3, 2]).unwrap();
        assert_eq!(y.shape(), &[1, 1, 2, 3, 2]);
        #[rustfmt::skip]
        assert_close(&y, &[-0.1148238137, -0.0860862291, 0.0008765866, 0.0473318086, 0.1156033823, 0.1281794967, 0.1282500511, 0.1231569367, 0.0659099284, 0.0215041485, -0.0696348336, -0.1040328021], 1e-9);
        // unbatched, and a global average
        let g = adaptive_avg_pool2d(&x.squeeze_dim(0), 1).unwrap();
        assert_eq!(g.shape(), &[2, 1, 1]);
        assert_close(&g, &x.mean([2, 3], false).to_vec::<f64>(), 1e-12);
    }

    #[test]
    fn pools_gradcheck() {
        let mut g = Generator::new(21);
        let opts = GradcheckOptions::default();
        // random values have no ties, so max pooling is differentiable where checked
        let x = g.randn([2, 2, 5, 6], DType::F64);
        gradcheck(
            |v| max_pool2d(&v[0], 3, 2, 1, 1, false).unwrap(),
            std::slice::from_ref(&x),
            opts,
        )
        .unwrap();
        gradcheck(
            |v| max_pool2d(&v[0], [2, 3], [1, 2], 1, 2, true).unwrap(),
            std::slice::from_ref(&x),
            opts,
        )
        .unwrap();
        gradgradcheck(
            |v| max_pool2d(&v[0], 2, 2, 0, 1, false).unwrap(),
            std::slice::from_ref(&x),
            opts,
        )
        .unwrap();
        let x1 = g.randn([2, 3, 7], DType::F64);
        gradcheck(
            |v| max_pool1d(&v[0], 3, 2, 1, 2, true).unwrap(),
            std::slice::from_ref(&x1),
            opts,
        )
        .unwrap();
        let x3 = g.randn([1, 2, 3, 4, 4], DType::F64);
        gradcheck(
            |v| max_pool3d(&v[0], 2, [1, 2, 2], [1, 0, 1], 1, false).unwrap(),
            std::slice::from_ref(&x3),
            opts,
        )
        .unwrap();
        // average pooling, every divisor rule
        gradcheck(
            |v| avg_pool2d(&v[0], 3, 2, 1, true, true, None).unwrap(),
            std::slice::from_ref(&x),
            opts,
        )
        .unwrap();
        gradcheck(
            |v| avg_pool2d(&v[0], 3, 2, 1, true, false, None).unwrap(),
            std::slice::from_ref(&x),
            opts,
        )
        .unwrap();
        gradgradcheck(
            |v| avg_pool2d(&v[0], [2, 3], [2, 1], [1, 0], false, true, Some(5)).unwrap(),
            std::slice::from_ref(&x),
            opts,
        )
        .unwrap();
        gradcheck(
            |v| avg_pool1d(&v[0], 2, 1, 1, false, false).unwrap(),
            std::slice::from_ref(&x1),
            opts,
        )
        .unwrap();
        gradcheck(
            |v| avg_pool3d(&v[0], 2, 2, 1, true, false, None).unwrap(),
            std::slice::from_ref(&x3),
            opts,
        )
        .unwrap();
        // adaptive: shrinking with overlapping windows, growing, 3-D
        gradcheck(
            |v| adaptive_avg_pool2d(&v[0], [3, 4]).unwrap(),
            std::slice::from_ref(&x),
            opts,
        )
        .unwrap();
        gradgradcheck(|v| adaptive_avg_pool2d(&v[0], [2, 4]).unwrap(), &[x], opts).unwrap();
        gradcheck(|v| adaptive_avg_pool1d(&v[0], 9).unwrap(), &[x1], opts).unwrap();
        gradcheck(
            |v| adaptive_avg_pool3d(&v[0], [2, 3, 3]).unwrap(),
            &[x3],
            opts,
        )
        .unwrap();
    }

    #[test]
    fn wrong_shapes_and_options_are_clear_errors() {
        let e = |r: Result<Tensor>| r.unwrap_err().to_string();
        let x = Tensor::zeros([2, 3, 4, 4], ());
        assert_eq!(
            e(MaxPool2d::new(2).try_forward(&Tensor::zeros([4, 4], ()))),
            "MaxPool2d: expected input of shape [N, C, H, W] or [C, H, W], got [4, 4]"
        );
        assert_eq!(
            e(AvgPool1d::new(2).try_forward(&x)),
            "AvgPool1d: expected input of shape [N, C, L] or [C, L], got [2, 3, 4, 4]"
        );
        assert_eq!(
            e(AdaptiveAvgPool3d::new(2).try_forward(&Tensor::zeros([3, 4, 4], ()))),
            "AdaptiveAvgPool3d: expected input of shape [N, C, D, H, W] or [C, D, H, W], got [3, 4, 4]"
        );
        assert_eq!(
            e(max_pool2d(&x, 5, 1, 0, 1, false)),
            "MaxPool2d: input of spatial size [4, 4] (padded to [4, 4]) is smaller than the kernel [5, 5]"
        );
        assert_eq!(
            e(max_pool2d(&x, 2, 2, 2, 1, false)),
            "MaxPool2d: padding should be at most half of the (dilated) kernel size, got padding=[2, 2] with kernel_size=[2, 2] and dilation=[1, 1]"
        );
        assert_eq!(
            e(avg_pool2d(&x, 2, 0, 0, false, true, None)),
            "AvgPool2d: kernel_size, stride and dilation must be positive, got kernel_size=[2, 2], stride=[0, 0], dilation=[1, 1]"
        );
        assert_eq!(
            e(avg_pool2d(
                &Tensor::zeros([1, 1, 4, 4], DType::I64),
                2,
                2,
                0,
                false,
                true,
                None
            )),
            "AvgPool2d: expected a floating-point input, got i64; convert with to_dtype first"
        );
        assert_eq!(
            e(adaptive_avg_pool2d(&x, [0, 2])),
            "AdaptiveAvgPool2d: output_size must be positive, got [0, 2]"
        );
    }

    #[test]
    fn modules_have_no_parameters_and_print_like_torch() {
        let m = MaxPool1d::new(3).stride(1).ceil_mode(true);
        assert_eq!(m.num_parameters(), 0);
        assert_eq!(
            m.to_string(),
            "MaxPool1d(kernel_size=3, stride=1, padding=0, dilation=1, ceil_mode=true)"
        );
        let a = AvgPool2d::new([2, 3])
            .padding([1, 0])
            .count_include_pad(false)
            .divisor_override(Some(4));
        assert_eq!(
            a.to_string(),
            "AvgPool2d(kernel_size=(2, 3), stride=(2, 3), padding=(1, 0), count_include_pad=false, divisor_override=4)"
        );
        assert_eq!(
            AdaptiveAvgPool3d::new(1).to_string(),
            "AdaptiveAvgPool3d(output_size=1)"
        );
    }
}
