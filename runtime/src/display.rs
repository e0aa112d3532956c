//! Printing tensors the way PyTorch does (`torch/_tensor_str.py` with default print
//! options: precision 4, threshold 1000, edge items 3, line width 80).
//!
//! ```
//! use flint_runtime::{DType, Tensor};
//! let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]);
//! assert_eq!(t.to_string(), "tensor([[1., 2.],\n        [3., 4.]])");
//! assert_eq!(Tensor::from_vec(vec![0.5f64, -2.0], [2]).to_string(), "tensor([ 0.5000, -2.0000], dtype=f64)");
//! assert_eq!(format!("{:?}", Tensor::scalar(true)), "tensor(True)");
//! ```
//!
//! Floats whose non-zero finite values are all integers print as `1.`; others print
//! with 4 decimals; scientific notation (`1.0000e+05`) is used when the largest and
//! smallest non-zero magnitudes differ by more than 1000×, the largest exceeds 1e8, or
//! (for non-integers) the smallest is below 1e-4. Tensors of more than 1000 elements
//! are summarised with `...`, keeping the first and last 3 entries of each long dim.
//! Dtypes other than f32, i64 and bool are named in a `dtype=` suffix.

use crate::dispatch;
use crate::dtype::{DType, Element};
use crate::layout::fmt_shape;
use crate::storage::BufferElement;
use crate::tensor::Tensor;
use crate::Device;
use std::fmt;

const PRECISION: usize = 4;
const THRESHOLD: usize = 1000;
const EDGE_ITEMS: usize = 3;
const LINE_WIDTH: usize = 80;

/// One element, read for printing.
#[derive(Clone, Copy)]
enum Val {
    F(f64),
    I(i64),
    B(bool),
}

fn to_val<T: Element>(x: T) -> Val {
    match T::DTYPE {
        DType::Bool => Val::B(x.to_i64() != 0),
        DType::I64 => Val::I(x.to_i64()),
        _ => Val::F(x.to_f64()),
    }
}

/// Python's `"{:.{p}f}".format(v)`.
fn fmt_fixed(v: f64, p: usize) -> String {
    match fmt_nonfinite(v) {
        Some(s) => s,
        None => format!("{v:.p$}"),
    }
}

/// Python's `"{:.{p}e}".format(v)`: a signed exponent of at least two digits.
fn fmt_sci(v: f64, p: usize) -> String {
    if let Some(s) = fmt_nonfinite(v) {
        return s;
    }
    let s = format!("{v:.p$e}");
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let e: i32 = exp.parse().unwrap_or(0);
            let sign = if e < 0 { '-' } else { '+' };
            format!("{mantissa}e{sign}{:02}", e.unsigned_abs())
        }
        None => s,
    }
}

fn fmt_nonfinite(v: f64) -> Option<String> {
    if v.is_nan() {
        Some("nan".into())
    } else if v.is_infinite() {
        Some(if v > 0.0 { "inf" } else { "-inf" }.into())
    } else {
        None
    }
}

/// PyTorch's `_Formatter`: decides the notation from the values shown, and the common
/// width every element is padded to.
struct Formatter {
    int_mode: bool,
    sci_mode: bool,
    max_width: usize,
}

impl Formatter {
    fn new(vals: &[Val], floating: bool) -> Formatter {
        let mut f = Formatter {
            int_mode: true,
            sci_mode: false,
            max_width: 1,
        };
        if !floating {
            f.max_width = vals
                .iter()
                .map(|&v| f.format_raw(v).len())
                .max()
                .unwrap_or(1)
                .max(1);
            return f;
        }
        let nz: Vec<f64> = vals
            .iter()
            .filter_map(|v| match *v {
                Val::F(x) if x.is_finite() && x != 0.0 => Some(x),
                _ => None,
            })
            .collect();
        if nz.is_empty() {
            return f;
        }
        let min = nz.iter().map(|x| x.abs()).fold(f64::INFINITY, f64::min);
        let max = nz.iter().map(|x| x.abs()).fold(0.0, f64::max);
        f.int_mode = nz.iter().all(|&x| x == x.ceil());
        let widths: Box<dyn Fn(f64) -> usize> = if f.int_mode {
            if max / min > 1000.0 || max > 1.0e8 {
                f.sci_mode = true;
                Box::new(|x| fmt_sci(x, PRECISION).len())
            } else {
                Box::new(|x| format!("{x:.0}").len() + 1)
            }
        } else if max / min > 1000.0 || max > 1.0e8 || min < 1.0e-4 {
            f.sci_mode = true;
            Box::new(|x| fmt_sci(x, PRECISION).len())
        } else {
            Box::new(|x| fmt_fixed(x, PRECISION).len())
        };
        f.max_width = nz.iter().map(|&x| widths(x)).max().unwrap_or(1).max(1);
        f
    }

    /// The element without padding.
    fn format_raw(&self, v: Val) -> String {
        match v {
            Val::B(b) => if b { "True" } else { "False" }.into(),
            Val::I(i) => i.to_string(),
            Val::F(x) if self.sci_mode => fmt_sci(x, PRECISION),
            Val::F(x) if self.int_mode => fmt_nonfinite(x).unwrap_or_else(|| format!("{x:.0}.")),
            Val::F(x) => fmt_fixed(x, PRECISION),
        }
    }

    /// The element right-aligned to the common width.
    fn format(&self, v: Val) -> String {
        let s = self.format_raw(v);
        format!("{s:>w$}", w = self.max_width)
    }
}

/// The indices of one dim that are shown: all, or the first and last `EDGE_ITEMS`.
fn shown(size: usize, summarize: bool) -> (Vec<usize>, bool) {
    if summarize && size > 2 * EDGE_ITEMS {
        let idx = (0..EDGE_ITEMS).chain(size - EDGE_ITEMS..size).collect();
        (idx, true)
    } else {
        ((0..size).collect(), false)
    }
}

/// PyTorch's `_tensor_str_with_formatter`: `strs` holds the shown elements in row-major
/// order; `dims` holds, per dim, how many are shown and whether `...` goes in the middle.
fn tensor_str(strs: &[String], dims: &[(usize, bool)], indent: usize, width: usize) -> String {
    let (n, summarized) = dims[0];
    if dims.len() == 1 {
        let mut data: Vec<&str> = strs[..n].iter().map(String::as_str).collect();
        if summarized {
            data.insert(EDGE_ITEMS, " ...");
        }
        let per_line = (LINE_WIDTH.saturating_sub(indent) / (width + 2)).max(1);
        let lines: Vec<String> = data.chunks(per_line).map(|c| c.join(", ")).collect();
        return format!(
            "[{}]",
            lines.join(&format!(",\n{}", " ".repeat(indent + 1)))
        );
    }
    let sub: usize = dims[1..].iter().map(|d| d.0).product();
    let mut slices: Vec<String> = (0..n)
        .map(|k| tensor_str(&strs[k * sub..(k + 1) * sub], &dims[1..], indent + 1, width))
        .collect();
    if summarized {
        slices.insert(EDGE_ITEMS, "...".into());
    }
    let sep = format!(",{}{}", "\n".repeat(dims.len() - 1), " ".repeat(indent + 1));
    format!("[{}]", slices.join(&sep))
}

/// The bracketed body of a non-empty tensor (PyTorch's `_tensor_str`).
fn body(t: &Tensor, indent: usize) -> String {
    let summarize = t.numel() > THRESHOLD;
    let l = t.layout();
    let mut offs = vec![l.offset()];
    let mut dims = Vec::with_capacity(l.ndim());
    for (&size, &stride) in l.shape().iter().zip(l.strides()) {
        let (idx, summarized) = shown(size, summarize);
        dims.push((idx.len(), summarized));
        offs = offs
            .iter()
            .flat_map(|&o| idx.iter().map(move |&k| o + k * stride))
            .collect();
    }
    let dt = t.dtype();
    let vals: Vec<Val> = dispatch!(all dt, T => read::<T>(t, &offs));
    let f = Formatter::new(&vals, dt.is_float());
    let strs: Vec<String> = vals.iter().map(|&v| f.format(v)).collect();
    if dims.is_empty() {
        return strs[0].clone();
    }
    tensor_str(&strs, &dims, indent, f.max_width)
}

fn read<T: BufferElement>(t: &Tensor, offs: &[usize]) -> Vec<Val> {
    // `t` is on the host (Display copies a device tensor first)
    t.with_slice::<T, _>("display", |s, _| {
        offs.iter().map(|&o| to_val(s[o])).collect()
    })
    .unwrap_or_default()
}

/// PyTorch's `_add_suffixes`: `, suffix` on the last line while it fits, else on a new
/// line.
fn add_suffixes(mut out: String, suffixes: &[String], indent: usize) -> String {
    // PyTorch's arithmetic, kept exactly (it counts two more than the last line's length)
    let mut last_line_len = match out.rfind('\n') {
        Some(p) => out.len() - p + 1,
        None => out.len() + 2,
    };
    for s in suffixes {
        if last_line_len + s.len() + 2 > LINE_WIDTH {
            out.push_str(",\n");
            out.push_str(&" ".repeat(indent));
            out.push_str(s);
            last_line_len = indent + s.len();
        } else {
            out.push_str(", ");
            out.push_str(s);
            last_line_len += s.len() + 2;
        }
    }
    out.push(')');
    out
}

impl fmt::Display for Tensor {
    /// PyTorch-style printing: `tensor([[1., 2.],\n        [3., 4.]])`. `{:?}` prints
    /// the same.
    ///
    /// ```
    /// use flint_runtime::{DType, Tensor};
    /// assert_eq!(Tensor::from_vec(vec![1i64, -20, 3], [3]).to_string(), "tensor([  1, -20,   3])");
    /// assert_eq!(Tensor::zeros([0], DType::F32).to_string(), "tensor([])");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const PREFIX: &str = "tensor(";
        let indent = PREFIX.len();
        let mut suffixes = Vec::new();
        if self.device() != Device::Cpu {
            suffixes.push(format!("device={}", self.device()));
        }
        let dt = self.dtype();
        let dtype_suffix = format!("dtype={dt}");
        let s = if self.numel() == 0 {
            if self.ndim() != 1 {
                suffixes.push(format!("size={}", fmt_shape(self.shape())));
            }
            if dt != DType::F32 {
                suffixes.push(dtype_suffix);
            }
            "[]".to_string()
        } else {
            if !matches!(dt, DType::F32 | DType::I64 | DType::Bool) {
                suffixes.push(dtype_suffix);
            }
            match self.host() {
                Ok(host) => body(&host, indent),
                Err(e) => format!("<not readable: {e}>"),
            }
        };
        f.write_str(&add_suffixes(format!("{PREFIX}{s}"), &suffixes, indent))
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Tensor};

    fn f32s(v: &[f32]) -> Tensor {
        Tensor::from_vec(v.to_vec(), [v.len()])
    }

    #[test]
    fn matrices_and_scalars() {
        let t = f32s(&[1., 2., 3., 4.]).view([2, 2]);
        assert_eq!(t.to_string(), "tensor([[1., 2.],\n        [3., 4.]])");
        assert_eq!(format!("{t:?}"), t.to_string());
        assert_eq!(t.t().to_string(), "tensor([[1., 3.],\n        [2., 4.]])");
        assert_eq!(Tensor::scalar(3.5f32).to_string(), "tensor(3.5000)");
        assert_eq!(Tensor::scalar(0.0f32).to_string(), "tensor(0.)");
        assert_eq!(Tensor::scalar(7i64).to_string(), "tensor(7)");
        assert_eq!(Tensor::scalar(false).to_string(), "tensor(False)");
        assert_eq!(Tensor::scalar(2.0f64).to_string(), "tensor(2., dtype=f64)");
        let cube = Tensor::arange(0.0, 8.0, 1.0, DType::I64).view([2, 2, 2]);
        assert_eq!(
            cube.to_string(),
            "tensor([[[0, 1],\n         [2, 3]],\n\n        [[4, 5],\n         [6, 7]]])"
        );
    }

    #[test]
    fn float_notations() {
        assert_eq!(
            f32s(&[1.5, -2.25]).to_string(),
            "tensor([ 1.5000, -2.2500])"
        );
        assert_eq!(f32s(&[0.1, 0.25]).to_string(), "tensor([0.1000, 0.2500])");
        assert_eq!(
            f32s(&[1e5, 1.5]).to_string(),
            "tensor([1.0000e+05, 1.5000e+00])"
        );
        assert_eq!(
            f32s(&[1e5, 1.0]).to_string(),
            "tensor([1.0000e+05, 1.0000e+00])"
        );
        assert_eq!(
            f32s(&[1e-5, 1.0]).to_string(),
            "tensor([1.0000e-05, 1.0000e+00])"
        );
        assert_eq!(
            f32s(&[-1e-5, 2.0]).to_string(),
            "tensor([-1.0000e-05,  2.0000e+00])"
        );
        assert_eq!(
            f32s(&[1e9, 1.0]).to_string(),
            "tensor([1.0000e+09, 1.0000e+00])"
        );
        assert_eq!(f32s(&[100.0, -3.0]).to_string(), "tensor([100.,  -3.])");
        assert_eq!(f32s(&[0.0, 0.0]).to_string(), "tensor([0., 0.])");
        assert_eq!(
            f32s(&[f32::NAN, 1.0, f32::INFINITY]).to_string(),
            "tensor([nan, 1., inf])"
        );
        assert_eq!(
            f32s(&[f32::NEG_INFINITY, 0.5]).to_string(),
            "tensor([  -inf, 0.5000])"
        );
    }

    #[test]
    fn dtypes() {
        assert_eq!(
            Tensor::from_vec(vec![1.0f64, 2.0], [2]).to_string(),
            "tensor([1., 2.], dtype=f64)"
        );
        let h = Tensor::from_vec(vec![0.1f64, 0.2], [2]).to_dtype(DType::F16);
        assert_eq!(h.to_string(), "tensor([0.1000, 0.2000], dtype=f16)");
        let b = Tensor::ones([2], DType::BF16);
        assert_eq!(b.to_string(), "tensor([1., 1.], dtype=bf16)");
        assert_eq!(
            Tensor::from_vec(vec![1i64, -20, 3], [3]).to_string(),
            "tensor([  1, -20,   3])"
        );
        assert_eq!(
            Tensor::from_vec(vec![i64::MAX], [1]).to_string(),
            "tensor([9223372036854775807])"
        );
        assert_eq!(
            Tensor::from_vec(vec![true, false], [2]).to_string(),
            "tensor([ True, False])"
        );
        let m = Tensor::from_vec(vec![true, false, false, true], [2, 2]).t();
        assert_eq!(
            m.to_string(),
            "tensor([[ True, False],\n        [False,  True]])"
        );
    }

    #[test]
    fn empty_tensors() {
        assert_eq!(Tensor::zeros([0], ()).to_string(), "tensor([])");
        assert_eq!(
            Tensor::zeros([0, 3], ()).to_string(),
            "tensor([], size=[0, 3])"
        );
        assert_eq!(
            Tensor::zeros([0], DType::I64).to_string(),
            "tensor([], dtype=i64)"
        );
        assert_eq!(
            Tensor::zeros([2, 0], DType::F16).to_string(),
            "tensor([], size=[2, 0], dtype=f16)"
        );
    }

    #[test]
    fn long_rows_wrap_at_80_columns() {
        let t = Tensor::arange(0.0, 30.0, 1.0, ());
        assert_eq!(
            t.to_string(),
            "tensor([ 0.,  1.,  2.,  3.,  4.,  5.,  6.,  7.,  8.,  9., 10., 11., 12., 13.,\n        14., 15., 16., 17., 18., 19., 20., 21., 22., 23., 24., 25., 26., 27.,\n        28., 29.])"
        );
        // a suffix that does not fit goes to its own line
        let t = Tensor::arange(0.0, 14.0, 1.0, DType::F64);
        assert_eq!(
            t.to_string(),
            "tensor([ 0.,  1.,  2.,  3.,  4.,  5.,  6.,  7.,  8.,  9., 10., 11., 12., 13.],\n       dtype=f64)"
        );
    }

    #[test]
    fn large_tensors_are_summarised() {
        let t = Tensor::arange(0.0, 2000.0, 1.0, ());
        assert_eq!(
            t.to_string(),
            "tensor([0.0000e+00, 1.0000e+00, 2.0000e+00,  ..., 1.9970e+03, 1.9980e+03,\n        1.9990e+03])"
        );
        let t = Tensor::arange(0.0, 2000.0, 1.0, DType::I64);
        assert_eq!(
            t.to_string(),
            "tensor([   0,    1,    2,  ..., 1997, 1998, 1999])"
        );
        let row = "[0., 0., 0.,  ..., 0., 0., 0.]";
        let want = format!("tensor([{row},\n        {row},\n        {row},\n        ...,\n        {row},\n        {row},\n        {row}])");
        assert_eq!(Tensor::zeros([100, 100], ()).to_string(), want);
        // 1000 elements is not summarised; only long dims are cut
        assert!(!Tensor::zeros([1000], ()).to_string().contains("..."));
        let s = Tensor::zeros([2, 600], DType::I64).to_string();
        assert_eq!(
            s,
            "tensor([[0, 0, 0,  ..., 0, 0, 0],\n        [0, 0, 0,  ..., 0, 0, 0]])"
        );
    }

    #[test]
    fn views_print_their_own_elements() {
        let g = Tensor::arange(0.0, 24.0, 1.0, DType::I64).view([2, 3, 4]);
        let v = g.permute([2, 0, 1]).narrow(0, 1, 2).select(2, 1); // [2, 2]: g[:, 1, 1..3].T
        assert_eq!(v.to_string(), "tensor([[ 5, 17],\n        [ 6, 18]])");
        let e = Tensor::from_vec(vec![1.5f32, 2.0], [2, 1]).expand([2, 3]);
        assert_eq!(
            e.to_string(),
            "tensor([[1.5000, 1.5000, 1.5000],\n        [2.0000, 2.0000, 2.0000]])"
        );
        // a large permuted view summarises from the right elements
        let big = Tensor::arange(0.0, 5000.0, 1.0, DType::I64)
            .view([50, 100])
            .t();
        let s = big.to_string();
        assert!(
            s.starts_with(
                "tensor([[   0,  100,  200,  ..., 4700, 4800, 4900],\n        [   1,  101,"
            ),
            "{s}"
        );
        assert!(
            s.ends_with("[  99,  199,  299,  ..., 4799, 4899, 4999]])"),
            "{s}"
        );
    }
}
