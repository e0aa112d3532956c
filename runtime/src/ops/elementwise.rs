//! Elementwise math with NumPy broadcasting and PyTorch's type promotion: arithmetic,
//! the `+ - * /` operators, unary math and activations.

use crate::autograd::{is_grad_enabled, no_grad, record, record_with_output};
use crate::cpu::strided::zip_assign;
use crate::cpu::{map, vmath};
use crate::dispatch;
use crate::dtype::{DType, Element, FloatElement, NumElement};
use crate::error::{or_panic, Error, Result};
use crate::layout::{broadcast_shapes, Layout};
use crate::tensor::Tensor;

/// The right-hand side of a binary op: a tensor or a scalar.
///
/// ```
/// use flint_runtime::Tensor;
/// let x = Tensor::from_vec(vec![1.0f32, 4.0], [2]);
/// assert_eq!(x.maximum(2.0).to_vec::<f32>(), vec![2.0, 4.0]);
/// assert_eq!(x.maximum(&x.neg()).to_vec::<f32>(), vec![1.0, 4.0]);
/// ```
#[derive(Clone)]
pub enum Operand {
    /// A tensor.
    Tensor(Tensor),
    /// A floating-point scalar (a float tensor keeps its dtype; an integer tensor becomes f32).
    Float(f64),
    /// An integer scalar (keeps the dtype of the tensor).
    Int(i64),
}

impl From<&Tensor> for Operand {
    fn from(t: &Tensor) -> Self {
        Operand::Tensor(t.clone())
    }
}
impl From<Tensor> for Operand {
    fn from(t: Tensor) -> Self {
        Operand::Tensor(t)
    }
}
impl From<f64> for Operand {
    fn from(v: f64) -> Self {
        Operand::Float(v)
    }
}
impl From<f32> for Operand {
    fn from(v: f32) -> Self {
        Operand::Float(v as f64)
    }
}
impl From<i64> for Operand {
    fn from(v: i64) -> Self {
        Operand::Int(v)
    }
}
impl From<i32> for Operand {
    fn from(v: i32) -> Self {
        Operand::Int(v as i64)
    }
}
impl From<bool> for Operand {
    fn from(v: bool) -> Self {
        Operand::Tensor(Tensor::scalar(v))
    }
}

impl Operand {
    /// This operand as a tensor combined with `lhs`: scalars become 0-d tensors on
    /// `lhs`'s device whose dtype follows PyTorch's rule for Python scalars.
    pub(crate) fn into_tensor(self, lhs: &Tensor) -> Result<Tensor> {
        match self {
            Operand::Tensor(t) => Ok(t),
            Operand::Float(v) => {
                let dt = lhs.dtype().to_float();
                Tensor::try_full(&[], v, (dt, lhs.device()).into())
            }
            Operand::Int(v) => {
                let dt = if lhs.dtype() == DType::Bool {
                    DType::I64
                } else {
                    lhs.dtype()
                };
                Tensor::try_full(&[], v as f64, (dt, lhs.device()).into())
            }
        }
    }
}

/// Converts both tensors to `dtype` and broadcasts their layouts to a common shape.
pub(crate) fn prepare(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    dtype: DType,
) -> Result<(Tensor, Layout, Tensor, Layout)> {
    if a.device() != b.device() {
        return Err(Error::devices(op, a.device(), b.device()));
    }
    let shape = broadcast_shapes(op, a.shape(), b.shape())?;
    let (a, b) = (a.to_dtype_raw(dtype)?, b.to_dtype_raw(dtype)?);
    let la = a.layout().broadcast_to(op, &shape)?;
    let lb = b.layout().broadcast_to(op, &shape)?;
    Ok((a, la, b, lb))
}

/// The broadcasting binary arithmetic ops.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
}

impl Arith {
    fn name(self) -> &'static str {
        match self {
            Arith::Add => "add",
            Arith::Sub => "sub",
            Arith::Mul => "mul",
            Arith::Div => "div",
            Arith::Max => "maximum",
            Arith::Min => "minimum",
            Arith::Pow => "pow",
        }
    }
}

#[inline]
fn max_nan<T: Element>(x: T, y: T) -> T {
    // NaN propagates, like torch.maximum
    if x.is_nan() || x > y {
        x
    } else {
        y
    }
}
#[inline]
fn min_nan<T: Element>(x: T, y: T) -> T {
    if x.is_nan() || x < y {
        x
    } else {
        y
    }
}

/// `a <kind> s` for a CUDA tensor and a scalar operand, with the scalar as a kernel
/// argument (no device tensor for it); `None` when there is no such kernel (integer
/// results, a tensor operand, the CPU).
#[cfg(feature = "cuda")]
fn cuda_scalar(a: &Tensor, b: &Operand, kind: Arith) -> Result<Option<Tensor>> {
    if !a.is_cuda() {
        return Ok(None);
    }
    // the dtype the 0-d scalar tensor of `Operand::into_tensor` would promote `a` to
    let (s, mut dt) = match *b {
        Operand::Float(v) => (v, a.dtype().to_float()),
        Operand::Int(v) if a.dtype() == DType::Bool => (v as f64, DType::I64),
        Operand::Int(v) => (v as f64, a.dtype()),
        Operand::Tensor(_) => return Ok(None),
    };
    if matches!(kind, Arith::Div | Arith::Pow) {
        dt = dt.to_float();
    }
    if !dt.is_float() {
        return Ok(None);
    }
    crate::cuda::ops::scalar(kind.name(), &a.to_dtype_raw(dt)?, s)
}

/// `a = a <kind> b` computed directly in `a`'s storage, on the CPU, when that is the
/// whole of what the in-place op must do: nothing to record for autograd, no dtype
/// change (the result type is `a`'s: same-dtype tensors, or a scalar), `a` does not
/// overlap itself and `b` does not share its storage. Returns `false` (nothing done)
/// otherwise; the caller then computes out of place and writes the result back, which
/// also produces any error.
pub(crate) fn assign_arith(a: &Tensor, b: &Operand, kind: Arith) -> bool {
    use crate::storage::BufferElement;
    let dt = a.dtype();
    let int = dt == DType::I64;
    let grad = is_grad_enabled();
    let l = a.layout();
    // what both devices need: an arithmetic op of a's dtype, an untracked a whose
    // elements do not overlap
    if !matches!(kind, Arith::Add | Arith::Sub | Arith::Mul | Arith::Div)
        || !(dt.is_float() || int && kind != Arith::Div)
        || (grad && a.requires_grad())
        || l.shape()
            .iter()
            .zip(l.strides())
            .any(|(&n, &s)| n > 1 && s == 0)
    {
        return false;
    }
    #[cfg(feature = "cuda")]
    if a.is_cuda() {
        return assign_arith_cuda(a, b, kind);
    }
    if a.device() != crate::Device::Cpu {
        return false;
    }
    // the source: a tensor with its layout broadcast to `a`'s shape, or a scalar
    let scalar_layout = || Layout {
        shape: l.shape.clone(),
        strides: smallvec::smallvec![0; l.ndim()],
        offset: 0,
    };
    let (src, ls, value): (Option<&Tensor>, Layout, f64) = match b {
        Operand::Float(v) if !int => (None, scalar_layout(), *v),
        Operand::Int(v) => (None, scalar_layout(), *v as f64),
        Operand::Tensor(t) => {
            if t.dtype() != dt
                || t.device() != crate::Device::Cpu
                || (grad && t.requires_grad())
                || t.shares_storage(a)
            {
                return false;
            }
            match t.layout().broadcast_to("assign", a.shape()) {
                Ok(ls) => (Some(t), ls, 0.0),
                Err(_) => return false,
            }
        }
        _ => return false,
    };
    let int_value = match b {
        Operand::Int(v) => *v,
        _ => 0,
    };
    let mut guard = a.storage().write();
    let Some(buf) = guard.as_cpu_mut() else {
        return false;
    };
    let done: Result<bool> = dispatch!(num "assign", dt, T => {
        let d = <T as BufferElement>::slice_mut(buf).expect("a buffer of the tensor's dtype");
        let mut run = |s: &[T]| match kind {
            Arith::Add => zip_assign(d, l, s, &ls, |x, y| x + y),
            Arith::Sub => zip_assign(d, l, s, &ls, |x, y| x - y),
            Arith::Mul => zip_assign(d, l, s, &ls, |x, y| x * y),
            _ => zip_assign(d, l, s, &ls, |x, y| x / y),
        };
        match src {
            Some(t) => t.with_slice::<T, _>("assign", |s, _| run(s)).is_ok(),
            None => {
                let v = if int { T::from_i64(int_value) } else { T::from_f64(value) };
                run(&[v]);
                true
            }
        }
    });
    done.unwrap_or(false)
}

/// [`assign_arith`] on a CUDA tensor `a` that passed its common checks: `a <op>= b` for
/// a tensor `b` of `a`'s dtype and device with the `<op>_assign_<dt>` kernel, which reads
/// and writes each element of `a` in place (gradient accumulation, `add_` in user code).
/// False where the out-of-place path must run: a scalar `b`, mixed dtypes, shared
/// storage, a tracked `b`.
#[cfg(feature = "cuda")]
fn assign_arith_cuda(a: &Tensor, b: &Operand, kind: Arith) -> bool {
    let Operand::Tensor(t) = b else {
        return false;
    };
    let ok = t.dtype() == a.dtype()
        && t.device() == a.device()
        && !(is_grad_enabled() && t.requires_grad())
        && !t.shares_storage(a);
    if !ok {
        return false;
    }
    let Ok(lb) = t.layout().broadcast_to("assign", a.shape()) else {
        return false;
    };
    crate::cuda::ops::assign(kind.name(), a, t, &lb).is_ok()
}

#[track_caller]
pub(crate) fn arith(a: &Tensor, b: Operand, kind: Arith) -> Result<Tensor> {
    let op = kind.name();
    #[cfg(feature = "cuda")]
    if let Some(out) = cuda_scalar(a, &b, kind)? {
        if !(is_grad_enabled() && a.requires_grad()) {
            return Ok(out);
        }
        // the backward needs the scalar as a tensor
        let b = b.into_tensor(a)?;
        return Ok(record_arith(out, kind, a, &b));
    }
    let b = b.into_tensor(a)?;
    let mut dt = DType::promote(a.dtype(), b.dtype());
    if dt == DType::Bool {
        dt = DType::I64;
    }
    if matches!(kind, Arith::Div | Arith::Pow) {
        dt = dt.to_float();
    }
    let (ca, la, cb, lb) = prepare(op, a, &b, dt)?;
    let out = dispatch!(num op, dt, T => {
        match kind {
            Arith::Add => map::binary::<T, T>(op, &ca, &la, &cb, &lb, |x, y| x + y),
            Arith::Sub => map::binary::<T, T>(op, &ca, &la, &cb, &lb, |x, y| x - y),
            Arith::Mul => map::binary::<T, T>(op, &ca, &la, &cb, &lb, |x, y| x * y),
            Arith::Div => map::binary::<T, T>(op, &ca, &la, &cb, &lb, |x, y| x / y),
            Arith::Max => map::binary::<T, T>(op, &ca, &la, &cb, &lb, max_nan),
            Arith::Min => map::binary::<T, T>(op, &ca, &la, &cb, &lb, min_nan),
            Arith::Pow => map::binary::<T, T>(op, &ca, &la, &cb, &lb, |x, y| T::from_f64(x.to_f64().powf(y.to_f64()))),
        }
    })??;
    Ok(record_arith(out, kind, a, &b))
}

/// The backward of a broadcasting binary op: each input's gradient is reduced back to its
/// shape and dtype.
#[track_caller]
fn record_arith(out: Tensor, kind: Arith, a: &Tensor, b: &Tensor) -> Tensor {
    let (na, nb) = (a.requires_grad(), b.requires_grad());
    // the common no-grad case pays for nothing but these two checks
    if !(is_grad_enabled() && (na || nb)) {
        return out;
    }
    // what the formula reads, and nothing more: a handle to an input keeps its storage
    // alive until the backward runs (for `scores * scale` in attention, the whole score
    // tensor), so only the inputs the gradients need are kept
    // an input's shape only where broadcasting changed it (no allocation otherwise)
    let reduced = |t: &Tensor| (t.shape() != out.shape()).then(|| t.shape().to_vec());
    let (shape_a, dtype_a) = (reduced(a), a.dtype());
    let (shape_b, dtype_b) = (reduced(b), b.dtype());
    let fit = move |g: Tensor, shape: &Option<Vec<usize>>, dtype: DType| match shape {
        Some(s) => sum_to(&g, s).to_dtype(dtype),
        None => g.to_dtype(dtype),
    };
    let (need_a, need_b) = match kind {
        Arith::Add | Arith::Sub => (false, false),
        // d(a·b) = b·da + a·db; d(a/b) = da/b − a·db/b²
        Arith::Mul => (nb, na),
        Arith::Div => (nb, true),
        Arith::Max | Arith::Min | Arith::Pow => (true, true),
    };
    let kept = |need: bool, t: &Tensor| need.then(|| t.clone());
    let (both, only_a, only_b) = ([a, b], [a], [b]);
    let saved: &[&Tensor] = match (need_a, need_b) {
        (true, true) => &both,
        (true, false) => &only_a,
        (false, true) => &only_b,
        (false, false) => &[],
    };
    let inputs = [a, b];
    let (a, b) = (kept(need_a, a), kept(need_b, b));
    record(out, kind.name(), &inputs, saved, move |g| {
        // present whenever the formula below reads them (need_a / need_b)
        let (a, b) = (a.as_ref(), b.as_ref());
        let (a, b) = (
            || a.expect("arith backward: input kept"),
            || b.expect("arith backward: input kept"),
        );
        let (ga, gb) = match kind {
            Arith::Add => (na.then(|| g.clone()), nb.then(|| g.clone())),
            Arith::Sub => (na.then(|| g.clone()), nb.then(|| g.neg())),
            Arith::Mul => (na.then(|| g * b()), nb.then(|| g * a())),
            Arith::Div => (na.then(|| g / b()), nb.then(|| -(g * a()) / (b() * b()))),
            Arith::Max | Arith::Min => {
                let (a, b) = (a(), b());
                // ties split the gradient evenly, like torch.maximum
                let wins = if kind == Arith::Max { a.gt(b) } else { a.lt(b) };
                let wa = or_panic(wins.to_dtype_raw(g.dtype()))
                    + or_panic(a.eq(b).to_dtype_raw(g.dtype())) * 0.5;
                (na.then(|| g * &wa), nb.then(|| g * (1.0 - &wa)))
            }
            Arith::Pow => {
                let (a, b) = (a(), b());
                let ga = na.then(|| g * b * a.pow(b - 1.0));
                // d/db a^b = a^b ln a, taken as 0 where a == 0
                let gb = nb.then(|| {
                    let ln = a.where_(&a.ne(0.0), 1.0).log();
                    g * a.pow(b) * ln
                });
                (ga, gb)
            }
        };
        vec![
            ga.map(|g| fit(g, &shape_a, dtype_a)),
            gb.map(|g| fit(g, &shape_b, dtype_b)),
        ]
    })
}

/// Sums `g` over the dims that broadcasting added or expanded, so it gets `shape`.
pub(crate) fn sum_to(g: &Tensor, shape: &[usize]) -> Tensor {
    if g.shape() == shape {
        return g.clone();
    }
    let lead = g.ndim() - shape.len();
    let mut dims: Vec<usize> = (0..lead).collect();
    for (i, &d) in shape.iter().enumerate() {
        if d == 1 && g.shape()[lead + i] != 1 {
            dims.push(lead + i);
        }
    }
    g.sum(dims, true).reshape(shape)
}

macro_rules! binary_methods {
    ($($(#[$doc:meta])* $name:ident, $try_name:ident, $kind:ident;)*) => {$(
        $(#[$doc])*
        #[track_caller]
        pub fn $name(&self, other: impl Into<Operand>) -> Tensor {
            or_panic(self.$try_name(other))
        }
        #[doc = concat!("Fallible [`Tensor::", stringify!($name), "`].")]
        #[track_caller]
        pub fn $try_name(&self, other: impl Into<Operand>) -> Result<Tensor> {
            arith(self, other.into(), Arith::$kind)
        }
    )*};
}

impl Tensor {
    binary_methods! {
        /// `self + other`, broadcasting.
        add, try_add, Add;
        /// `self - other`, broadcasting.
        sub, try_sub, Sub;
        /// `self * other`, broadcasting.
        mul, try_mul, Mul;
        /// `self / other` (true division: integers give f32), broadcasting.
        div, try_div, Div;
        /// Elementwise maximum (NaN propagates), broadcasting.
        maximum, try_maximum, Max;
        /// Elementwise minimum (NaN propagates), broadcasting.
        minimum, try_minimum, Min;
        /// `self` raised to `exponent` elementwise, broadcasting (floating-point result).
        ///
        /// ```
        /// use flint_runtime::Tensor;
        /// let x = Tensor::from_vec(vec![2.0f32, 3.0], [2]);
        /// assert_eq!(x.pow(2.0).to_vec::<f32>(), vec![4.0, 9.0]);
        /// ```
        pow, try_pow, Pow;
    }

    /// Clamps every element into `[min, max]` (the gradient passes where
    /// `min <= x <= max`, like PyTorch's).
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let x = Tensor::from_vec(vec![-2.0f32, 0.5, 3.0], [3]);
    /// assert_eq!(x.clamp(-1.0, 1.0).to_vec::<f32>(), vec![-1.0, 0.5, 1.0]);
    /// ```
    #[track_caller]
    pub fn clamp(&self, min: f64, max: f64) -> Tensor {
        self.clamp_impl(Some(min), Some(max))
    }
    /// `max(self, min)` elementwise.
    #[track_caller]
    pub fn clamp_min(&self, min: f64) -> Tensor {
        self.clamp_impl(Some(min), None)
    }
    /// `min(self, max)` elementwise.
    #[track_caller]
    pub fn clamp_max(&self, max: f64) -> Tensor {
        self.clamp_impl(None, Some(max))
    }

    #[track_caller]
    fn clamp_impl(&self, min: Option<f64>, max: Option<f64>) -> Tensor {
        let out = no_grad(|| {
            let mut t = self.clone();
            if let Some(m) = min {
                t = t.maximum(self.scalar_operand(m));
            }
            if let Some(m) = max {
                t = t.minimum(self.scalar_operand(m));
            }
            t
        });
        let x = self.clone();
        record(out, "clamp", &[self], &[self], move |g| {
            let mut outside = x.ne(&x); // all false
            if let Some(m) = min {
                outside = outside.logical_or(x.lt(m));
            }
            if let Some(m) = max {
                outside = outside.logical_or(x.gt(m));
            }
            vec![Some(g.masked_fill(&outside, 0.0))]
        })
    }

    /// A scalar operand that keeps this tensor's dtype (integer scalars for integer tensors).
    fn scalar_operand(&self, v: f64) -> Operand {
        if self.dtype().is_float() {
            Operand::Float(v)
        } else {
            Operand::Int(v as i64)
        }
    }
}

// ---------------------------------------------------------------- unary ops

/// Applies a float function elementwise (integers are converted to f32 first).
fn unary_float(x: &Tensor, op: &'static str, f: UnaryF) -> Result<Tensor> {
    let dt = x.dtype().to_float();
    let x = x.to_dtype_raw(dt)?;
    if dt == DType::F32 {
        // f32 kernels of their own (vectorisable forms of exp, tanh, the sigmoid and GELU),
        // each passed as a function item so the loop inlines and vectorises it
        macro_rules! f32_map {
            ($f:expr) => {
                return map::unary::<f32, f32>(op, &x, $f)
            };
        }
        match f {
            UnaryF::Native(NativeF::Exp) => f32_map!(vmath::exp_f32),
            UnaryF::Native(NativeF::Tanh) => f32_map!(vmath::tanh_f32),
            UnaryF::Native(NativeF::Sigmoid) => f32_map!(vmath::sigmoid_f32),
            UnaryF::Native(NativeF::Silu) => f32_map!(|v: f32| v / (1.0 + vmath::exp_f32(-v))),
            UnaryF::Split(_, F32Kernel::GeluExact) => f32_map!(gelu_exact_f32),
            UnaryF::Split(_, F32Kernel::GeluTanh) => f32_map!(gelu_tanh_f32),
            _ => {}
        }
    }
    dispatch!(float op, dt, T => match f {
        UnaryF::Generic(f) | UnaryF::Split(f, _) => map::unary::<T, T>(op, &x, |v| T::from_f64(f(v.to_f64()))),
        UnaryF::Native(g) => map::unary::<T, T>(op, &x, move |v| g.apply(v)),
    })?
}

/// Unary float functions computed natively in the element type (f16/bf16 via f32).
#[derive(Clone, Copy)]
enum NativeF {
    Exp,
    Ln,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Silu,
    Sin,
    Cos,
    Recip,
    Floor,
    Ceil,
    Round,
}

impl NativeF {
    #[inline]
    fn apply<T: FloatElement>(self, v: T) -> T {
        let one = <T as NumElement>::one();
        match self {
            NativeF::Exp => v.exp(),
            NativeF::Ln => v.ln(),
            NativeF::Sqrt => v.sqrt(),
            NativeF::Rsqrt => one / v.sqrt(),
            NativeF::Tanh => v.tanh(),
            NativeF::Sigmoid => one / (one + (-v).exp()),
            NativeF::Silu => v / (one + (-v).exp()),
            NativeF::Sin => v.sin(),
            NativeF::Cos => v.cos(),
            NativeF::Recip => one / v,
            NativeF::Floor => v.floor(),
            NativeF::Ceil => v.ceil(),
            NativeF::Round => {
                // round half to even, like torch.round
                let r = v.round();
                if (v - v.trunc()).abs() == T::from_f64(0.5) && (r.to_f64() % 2.0) != 0.0 {
                    r - v.signum()
                } else {
                    r
                }
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            NativeF::Exp => "exp",
            NativeF::Ln => "log",
            NativeF::Sqrt => "sqrt",
            NativeF::Rsqrt => "rsqrt",
            NativeF::Tanh => "tanh",
            NativeF::Sigmoid => "sigmoid",
            NativeF::Silu => "silu",
            NativeF::Sin => "sin",
            NativeF::Cos => "cos",
            NativeF::Recip => "reciprocal",
            NativeF::Floor => "floor",
            NativeF::Ceil => "ceil",
            NativeF::Round => "round",
        }
    }

    /// The gradient of the input given the output gradient `g` and what the formula
    /// reads ([`NativeF::reads`]): the input `x` or the output `y`.
    fn backward(self, g: &Tensor, read: &Tensor) -> Tensor {
        let (x, y) = (read, read);
        match self {
            NativeF::Exp => g * y,
            NativeF::Ln => g / x,
            NativeF::Sqrt => g * 0.5 / y,
            NativeF::Rsqrt => g * -0.5 * y * y * y,
            NativeF::Tanh => g * (1.0 - y * y),
            NativeF::Sigmoid => g * y * (1.0 - y),
            NativeF::Silu => {
                let s = x.sigmoid();
                g * &s * (1.0 + x * (1.0 - &s))
            }
            NativeF::Sin => g * x.cos(),
            NativeF::Cos => -(g * x.sin()),
            NativeF::Recip => -(g * y * y),
            NativeF::Floor | NativeF::Ceil | NativeF::Round => g.zeros_like(),
        }
    }

    /// What the backward formula reads: the output (so the input need not be kept),
    /// the input, or neither.
    fn reads(self) -> Reads {
        match self {
            NativeF::Exp
            | NativeF::Sqrt
            | NativeF::Rsqrt
            | NativeF::Tanh
            | NativeF::Sigmoid
            | NativeF::Recip => Reads::Output,
            NativeF::Ln | NativeF::Silu | NativeF::Sin | NativeF::Cos => Reads::Input,
            NativeF::Floor | NativeF::Ceil | NativeF::Round => Reads::Nothing,
        }
    }
}

/// What a unary op's backward formula reads besides the output gradient.
#[derive(Clone, Copy, PartialEq)]
enum Reads {
    Input,
    Output,
    Nothing,
}

#[derive(Clone, Copy)]
enum UnaryF {
    /// Computed in f64 for every float dtype.
    Generic(fn(f64) -> f64),
    Native(NativeF),
    /// An f64 function, and its f32 form used for f32 tensors.
    Split(fn(f64) -> f64, F32Kernel),
}

/// The f32 forms of [`UnaryF::Split`] functions.
#[derive(Clone, Copy)]
enum F32Kernel {
    GeluExact,
    GeluTanh,
}

/// Runs a native unary op and records its backward.
#[track_caller]
fn native(x: &Tensor, f: NativeF) -> Tensor {
    let out = or_panic(unary_float(x, f.name(), UnaryF::Native(f)));
    if !(is_grad_enabled() && x.requires_grad()) {
        return out;
    }
    let dtype = x.dtype();
    match f.reads() {
        // the output is in the graph under create_graph (record_with_output)
        Reads::Output => record_with_output(out, f.name(), &[x], &[], move |g, y| {
            vec![Some(f.backward(g, y).to_dtype(dtype))]
        }),
        Reads::Input => {
            let xs = x.clone();
            record(out, f.name(), &[x], &[x], move |g| {
                vec![Some(f.backward(g, &xs).to_dtype(dtype))]
            })
        }
        Reads::Nothing => record(out, f.name(), &[x], &[], move |g| {
            vec![Some(f.backward(g, g).to_dtype(dtype))]
        }),
    }
}

/// GELU and its derivative, exact (`x·Φ(x)`) and tanh-approximated, for f32 (computed
/// in f32, like PyTorch's CPU kernels, with the vectorisable `cpu::vmath` functions) and
/// f64. `Φ(x) = erfc(−x/√2)/2`, which keeps its accuracy in the left tail where
/// `1 + erf(x/√2)` cancels to 0 in f32.
macro_rules! gelu_fns {
    ($t:ident, $erfc:path, $exp:path, $exact:ident, $tanh:ident, $dexact:ident, $dtanh:ident) => {
        #[inline(always)]
        fn $exact(x: $t) -> $t {
            0.5 * x * $erfc(-x * std::$t::consts::FRAC_1_SQRT_2)
        }
        /// `x·(1 + tanh u)/2 = x·σ(2u)`, the form without cancellation for `u ≪ 0`.
        #[inline(always)]
        fn $tanh(x: $t) -> $t {
            let k = std::$t::consts::FRAC_2_SQRT_PI * std::$t::consts::FRAC_1_SQRT_2;
            x / (1.0 + $exp(-2.0 * k * (x + 0.044715 * x * x * x)))
        }
        /// `Φ(x) + x·φ(x)`.
        #[inline(always)]
        fn $dexact(x: $t) -> $t {
            let cdf = 0.5 * $erfc(-x * std::$t::consts::FRAC_1_SQRT_2);
            let pdf = $exp(-0.5 * x * x)
                * (0.5 * std::$t::consts::FRAC_2_SQRT_PI * std::$t::consts::FRAC_1_SQRT_2);
            cdf + x * pdf
        }
        /// With `s = σ(2u) = (1 + tanh u)/2`: `s + x·2s(1 − s)·u'`.
        #[inline(always)]
        fn $dtanh(x: $t) -> $t {
            let k = std::$t::consts::FRAC_2_SQRT_PI * std::$t::consts::FRAC_1_SQRT_2;
            let x2 = x * x;
            let s = 1.0 / (1.0 + $exp(-2.0 * k * (x + 0.044715 * x * x2)));
            s + 2.0 * x * s * (1.0 - s) * (k * (1.0 + 3.0 * 0.044715 * x2))
        }
    };
}
gelu_fns!(
    f64,
    libm::erfc,
    f64::exp,
    gelu_exact,
    gelu_tanh,
    dgelu_exact,
    dgelu_tanh
);
gelu_fns!(
    f32,
    vmath::erfc_f32,
    vmath::exp_f32,
    gelu_exact_f32,
    gelu_tanh_f32,
    dgelu_exact_f32,
    dgelu_tanh_f32
);

/// `g · gelu'(x)` in one pass: GELU's backward when it need not be differentiable (no
/// `create_graph`), for `g` and `x` of one dtype and shape: f32/f64 on the CPU, any
/// float on CUDA (`gelu_backward_<dt>`).
/// `None` otherwise (the caller builds it out of tensor ops).
fn gelu_backward_fused(g: &Tensor, x: &Tensor, approximate: GeluApprox) -> Option<Tensor> {
    if is_grad_enabled() || g.dtype() != x.dtype() || g.shape() != x.shape() {
        return None;
    }
    let (lg, lx) = (g.layout().clone(), x.layout().clone());
    #[cfg(feature = "cuda")]
    if g.is_cuda() {
        let op = match approximate {
            GeluApprox::None => "gelu_backward",
            GeluApprox::Tanh => "gelu_tanh_backward",
        };
        return g
            .dtype()
            .is_float()
            .then(|| crate::cuda::ops::binary(op, g, &lg, x, &lx, g.dtype()).ok())
            .flatten();
    }
    let op = "gelu_backward";
    let out = match (g.dtype(), approximate) {
        (DType::F32, GeluApprox::None) => {
            map::binary(op, g, &lg, x, &lx, |g: f32, x| g * dgelu_exact_f32(x))
        }
        (DType::F32, GeluApprox::Tanh) => {
            map::binary(op, g, &lg, x, &lx, |g: f32, x| g * dgelu_tanh_f32(x))
        }
        (DType::F64, GeluApprox::None) => {
            map::binary(op, g, &lg, x, &lx, |g: f64, x| g * dgelu_exact(x))
        }
        (DType::F64, GeluApprox::Tanh) => {
            map::binary(op, g, &lg, x, &lx, |g: f64, x| g * dgelu_tanh(x))
        }
        _ => return None,
    };
    out.ok()
}

/// `g` where `y > 0` (or NaN), 0 where `y ≤ 0`, in one pass: ReLU's backward from its
/// output `y`, when it need not be differentiable (no `create_graph`), on the CPU, with
/// `g` and `y` of one dtype and shape (what `g.masked_fill(&y.le(0.0), 0.0)` computes
/// in two passes and a boolean mask); on CUDA `relu_backward_<dt>`. `None` otherwise.
fn relu_backward_fused(g: &Tensor, y: &Tensor) -> Option<Tensor> {
    if is_grad_enabled() || g.dtype() != y.dtype() || g.shape() != y.shape() {
        return None;
    }
    let (lg, ly) = (g.layout().clone(), y.layout().clone());
    #[cfg(feature = "cuda")]
    if g.is_cuda() {
        let op = "relu_backward";
        return crate::cuda::ops::binary(op, g, &lg, y, &ly, g.dtype()).ok();
    }
    let out = dispatch!(num "relu_backward", g.dtype(), T => map::binary(
        "relu_backward", g, &lg, y, &ly,
        |g: T, y: T| if y <= T::zero() { T::zero() } else { g },
    ));
    out.ok().and_then(|r| r.ok())
}

macro_rules! native_unary {
    ($($(#[$doc:meta])* $name:ident => $f:ident;)*) => {$(
        $(#[$doc])*
        #[track_caller]
        pub fn $name(&self) -> Tensor {
            native(self, NativeF::$f)
        }
    )*};
}

/// Which formula [`Tensor::gelu`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GeluApprox {
    /// `x·Φ(x)` with the exact normal CDF (PyTorch's default, `approximate='none'`).
    #[default]
    None,
    /// The tanh approximation (`approximate='tanh'`).
    Tanh,
}

impl Tensor {
    native_unary! {
        /// `eˣ` elementwise.
        exp => Exp;
        /// Natural logarithm elementwise.
        log => Ln;
        /// Square root elementwise.
        sqrt => Sqrt;
        /// `1/√x` elementwise.
        rsqrt => Rsqrt;
        /// Hyperbolic tangent elementwise.
        tanh => Tanh;
        /// Logistic sigmoid `1/(1+e⁻ˣ)` elementwise.
        sigmoid => Sigmoid;
        /// SiLU (swish) `x·σ(x)` elementwise.
        silu => Silu;
        /// Sine elementwise.
        sin => Sin;
        /// Cosine elementwise.
        cos => Cos;
        /// `1/x` elementwise.
        reciprocal => Recip;
        /// Floor elementwise (zero gradient).
        floor => Floor;
        /// Ceiling elementwise (zero gradient).
        ceil => Ceil;
        /// Rounds to nearest, ties to even, elementwise (zero gradient).
        round => Round;
    }

    /// The error function elementwise.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let y = Tensor::from_vec(vec![0.0f64, 1.0], [2]).erf().to_vec::<f64>();
    /// assert!((y[1] - 0.8427007929497149).abs() < 1e-15);
    /// ```
    #[track_caller]
    pub fn erf(&self) -> Tensor {
        let out = or_panic(unary_float(self, "erf", UnaryF::Generic(libm::erf)));
        let x = self.clone();
        record(out, "erf", &[self], &[self], move |g| {
            // d/dx erf(x) = 2/√π · e^(−x²)
            vec![Some(
                g * (x.square().neg().exp() * std::f64::consts::FRAC_2_SQRT_PI),
            )]
        })
    }

    /// GELU with the given formula.
    ///
    /// ```
    /// use flint_runtime::{GeluApprox, Tensor};
    /// let x = Tensor::from_vec(vec![0.0f64, 1.0], [2]);
    /// let y = x.gelu(GeluApprox::None).to_vec::<f64>();
    /// assert!((y[1] - 0.8413447460685429).abs() < 1e-12);
    /// ```
    #[track_caller]
    pub fn gelu(&self, approximate: GeluApprox) -> Tensor {
        let f = match approximate {
            GeluApprox::None => UnaryF::Split(gelu_exact, F32Kernel::GeluExact),
            GeluApprox::Tanh => UnaryF::Split(gelu_tanh, F32Kernel::GeluTanh),
        };
        // the op name picks the CUDA kernel
        let name = match approximate {
            GeluApprox::None => "gelu",
            GeluApprox::Tanh => "gelu_tanh",
        };
        let out = or_panic(unary_float(self, name, f));
        let x = self.clone();
        record(out, "gelu", &[self], &[self], move |g| {
            if let Some(gx) = gelu_backward_fused(g, &x, approximate) {
                return vec![Some(gx)];
            }
            let d = match approximate {
                GeluApprox::None => {
                    // Φ(x) + x·φ(x)
                    let cdf = ((&x * std::f64::consts::FRAC_1_SQRT_2).erf() + 1.0) * 0.5;
                    let pdf = (x.square() * -0.5).exp()
                        * (0.5
                            * std::f64::consts::FRAC_2_SQRT_PI
                            * std::f64::consts::FRAC_1_SQRT_2);
                    cdf + &x * pdf
                }
                GeluApprox::Tanh => {
                    let k = (2.0 / std::f64::consts::PI).sqrt();
                    let x2 = x.square();
                    let t = ((&x + &x * &x2 * 0.044715) * k).tanh();
                    (&t + 1.0) * 0.5
                        + &x * 0.5 * (1.0 - t.square()) * ((x2 * (3.0 * 0.044715) + 1.0) * k)
                }
            };
            vec![Some(g * d)]
        })
    }

    /// `-x` elementwise (integers stay integers).
    #[track_caller]
    pub fn neg(&self) -> Tensor {
        let dt = self.dtype();
        let out = or_panic(
            dispatch!(num "neg", dt, T => map::unary::<T, T>("neg", self, |v| -v)).and_then(|r| r),
        );
        record(out, "neg", &[self], &[], |g| vec![Some(g.neg())])
    }

    /// `|x|` elementwise.
    #[track_caller]
    pub fn abs(&self) -> Tensor {
        let dt = self.dtype();
        let out = or_panic(
            dispatch!(num "abs", dt, T => map::unary::<T, T>("abs", self, |v| if v < T::zero() { -v } else { v }))
                .and_then(|r| r),
        );
        let x = self.clone();
        record(out, "abs", &[self], &[self], move |g| {
            vec![Some(g * x.sign())]
        })
    }

    /// `x²` elementwise.
    #[track_caller]
    pub fn square(&self) -> Tensor {
        self.mul(self)
    }

    /// The sign (-1, 0 or 1) elementwise (zero gradient).
    #[track_caller]
    pub fn sign(&self) -> Tensor {
        let dt = self.dtype();
        let out = or_panic(
            dispatch!(num "sign", dt, T => map::unary::<T, T>("sign", self, |v| {
                if v > T::zero() { T::one() } else if v < T::zero() { -T::one() } else { v }
            }))
            .and_then(|r| r),
        );
        record(out, "sign", &[self], &[], |g| vec![Some(g.zeros_like())])
    }

    /// `max(x, 0)` elementwise.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let x = Tensor::from_vec(vec![-1.0f32, 2.0], [2]);
    /// assert_eq!(x.relu().to_vec::<f32>(), vec![0.0, 2.0]);
    /// ```
    #[track_caller]
    pub fn relu(&self) -> Tensor {
        let dt = self.dtype();
        let out = or_panic(
            dispatch!(num "relu", dt, T => map::unary::<T, T>("relu", self, |v| if v > T::zero() { v } else { T::zero() }))
                .and_then(|r| r),
        );
        let y = out.detach();
        record(out, "relu", &[self], &[&y.clone()], move |g| {
            let fused = relu_backward_fused(g, &y);
            vec![Some(
                fused.unwrap_or_else(|| g.masked_fill(&y.le(0.0), 0.0)),
            )]
        })
    }
}

// ---------------------------------------------------------------- operators

macro_rules! bin_operator {
    ($trait:ident, $method:ident, $fn:ident) => {
        impl std::ops::$trait<&Tensor> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: &Tensor) -> Tensor {
                self.$fn(rhs)
            }
        }
        impl std::ops::$trait<Tensor> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: Tensor) -> Tensor {
                self.$fn(rhs)
            }
        }
        impl std::ops::$trait<&Tensor> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: &Tensor) -> Tensor {
                (&self).$fn(rhs)
            }
        }
        impl std::ops::$trait<Tensor> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: Tensor) -> Tensor {
                (&self).$fn(rhs)
            }
        }
        bin_operator!(@scalar $trait, $method, $fn, f64, i64);
    };
    (@scalar $trait:ident, $method:ident, $fn:ident, $($s:ty),*) => {$(
        impl std::ops::$trait<$s> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: $s) -> Tensor {
                self.$fn(rhs)
            }
        }
        impl std::ops::$trait<$s> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: $s) -> Tensor {
                (&self).$fn(rhs)
            }
        }
        impl std::ops::$trait<&Tensor> for $s {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: &Tensor) -> Tensor {
                or_panic(Operand::from(self).into_tensor(rhs)).$fn(rhs)
            }
        }
        impl std::ops::$trait<Tensor> for $s {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: Tensor) -> Tensor {
                or_panic(Operand::from(self).into_tensor(&rhs)).$fn(&rhs)
            }
        }
    )*};
}
bin_operator!(Add, add, add);
bin_operator!(Sub, sub, sub);
bin_operator!(Mul, mul, mul);
bin_operator!(Div, div, div);

impl std::ops::Neg for &Tensor {
    type Output = Tensor;
    #[track_caller]
    fn neg(self) -> Tensor {
        Tensor::neg(self)
    }
}
impl std::ops::Neg for Tensor {
    type Output = Tensor;
    #[track_caller]
    fn neg(self) -> Tensor {
        Tensor::neg(&self)
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, GeluApprox, Tensor};

    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn sum_to_column_sums_over_leading_dims() {
        // [2, 2, 3] = 0..12 summed to [3]: columns j, 3+j, 6+j, 9+j -> 18, 22, 26
        let g = Tensor::arange(0.0, 12.0, 1.0, ()).view([2, 2, 3]);
        let s = super::sum_to(&g, &[3]);
        assert_eq!(s.shape(), &[3]);
        assert_eq!(s.to_vec::<f32>(), vec![18.0, 22.0, 26.0]);
        let s = super::sum_to(&g.to_dtype(DType::F64), &[1, 3]);
        assert_eq!(s.shape(), &[1, 3]);
        assert_eq!(s.to_vec::<f64>(), vec![18.0, 22.0, 26.0]);
        // [2, 3] summed to [2, 3] trailing match over one leading dim: [2, 2, 3] -> [2, 3]
        let s = super::sum_to(&g, &[2, 3]);
        assert_eq!(s.to_vec::<f32>(), vec![6.0, 8.0, 10.0, 12.0, 14.0, 16.0]);
        // not a leading-dims sum (falls back to the general reduction): [2, 2, 3] -> [2, 1, 3]
        let s = super::sum_to(&g, &[2, 1, 3]);
        assert_eq!(s.to_vec::<f32>(), vec![3.0, 5.0, 7.0, 15.0, 17.0, 19.0]);
        // a bias gradient through broadcasting add, as a Linear layer's bias sees it
        let b = Tensor::zeros([3], ()).requires_grad_(true);
        (&g + &b).sum_all().backward();
        assert_eq!(b.grad().unwrap().to_vec::<f32>(), vec![4.0, 4.0, 4.0]);
    }

    #[test]
    fn broadcasting_arithmetic_and_operators() {
        let a = Tensor::arange(0.0, 6.0, 1.0, DType::F64).view([2, 3]);
        let b = Tensor::from_vec(vec![10.0f64, 20.0], [2, 1]);
        assert_eq!(
            (&a + &b).to_vec::<f64>(),
            vec![10., 11., 12., 23., 24., 25.]
        );
        assert_eq!((&a - 1.0).to_vec::<f64>(), vec![-1., 0., 1., 2., 3., 4.]);
        assert_eq!((2.0 * &a).to_vec::<f64>(), vec![0., 2., 4., 6., 8., 10.]);
        assert_eq!((1.0 / (&a + 1.0)).to_vec::<f64>()[1], 0.5);
        assert_eq!((-&a).to_vec::<f64>()[5], -5.0);
        let e = a
            .try_add(Tensor::zeros([4], DType::F64))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("add") && e.contains("[2, 3]") && e.contains("[4]"),
            "{e}"
        );
    }

    #[test]
    fn type_promotion() {
        let i = Tensor::from_vec(vec![1i64, 2, 3], [3]);
        let f = Tensor::from_vec(vec![0.5f32, 0.5, 0.5], [3]);
        assert_eq!((&i + &f).dtype(), DType::F32);
        assert_eq!((&i + 1).dtype(), DType::I64);
        assert_eq!((&i * 1.5).dtype(), DType::F32);
        assert_eq!((&i / 2).to_vec::<f32>(), vec![0.5, 1.0, 1.5]);
        let h = Tensor::ones([3], DType::F16);
        let bh = Tensor::ones([3], DType::BF16);
        assert_eq!((&h + &bh).dtype(), DType::F32);
        assert_eq!((&h + 1.0).dtype(), DType::F16);
        assert_eq!((&f + &Tensor::ones([3], DType::F64)).dtype(), DType::F64);
        let bo = Tensor::from_vec(vec![true, false, true], [3]);
        assert_eq!((&bo + &bo).to_vec::<i64>(), vec![2, 0, 2]);
    }

    #[test]
    fn unary_math_in_every_float_dtype() {
        let x = [-1.5f64, -0.25, 0.0, 0.75, 2.0];
        type Case = (&'static str, Box<dyn Fn(&Tensor) -> Tensor>, fn(f64) -> f64);
        let cases: Vec<Case> = vec![
            ("exp", Box::new(|t: &Tensor| t.exp()), f64::exp),
            ("tanh", Box::new(|t: &Tensor| t.tanh()), f64::tanh),
            ("sigmoid", Box::new(|t: &Tensor| t.sigmoid()), |v| {
                1.0 / (1.0 + (-v).exp())
            }),
            ("silu", Box::new(|t: &Tensor| t.silu()), |v| {
                v / (1.0 + (-v).exp())
            }),
            ("relu", Box::new(|t: &Tensor| t.relu()), |v| v.max(0.0)),
            ("abs", Box::new(|t: &Tensor| t.abs()), f64::abs),
            ("neg", Box::new(|t: &Tensor| t.neg()), |v| -v),
            ("sin", Box::new(|t: &Tensor| t.sin()), f64::sin),
            ("square", Box::new(|t: &Tensor| t.square()), |v| v * v),
            (
                "gelu",
                Box::new(|t: &Tensor| t.gelu(GeluApprox::None)),
                |v| 0.5 * v * (1.0 + libm::erf(v / 2f64.sqrt())),
            ),
            ("floor", Box::new(|t: &Tensor| t.floor()), f64::floor),
            ("clamp", Box::new(|t: &Tensor| t.clamp(-0.5, 1.0)), |v| {
                v.clamp(-0.5, 1.0)
            }),
        ];
        for (dt, tol) in [
            (DType::F64, 1e-12),
            (DType::F32, 1e-6),
            (DType::F16, 2e-3),
            (DType::BF16, 1e-2),
        ] {
            let t = Tensor::from_vec(x.to_vec(), [5]).to_dtype(dt);
            for (name, f, r) in &cases {
                let got = f(&t);
                assert_eq!(got.dtype(), dt, "{name}");
                let want: Vec<f64> = t.to_f64_vec().iter().map(|&v| r(v)).collect();
                close(&got.to_f64_vec(), &want, tol);
            }
        }
        let p = Tensor::from_vec(vec![1.0f64, 4.0, 9.0], [3]);
        close(&p.sqrt().to_f64_vec(), &[1., 2., 3.], 1e-12);
        close(&p.rsqrt().to_f64_vec(), &[1., 0.5, 1. / 3.], 1e-12);
        close(&p.log().to_f64_vec(), &[0., 4f64.ln(), 9f64.ln()], 1e-12);
        close(&p.pow(0.5).to_f64_vec(), &[1., 2., 3.], 1e-12);
        close(&p.reciprocal().to_f64_vec(), &[1., 0.25, 1. / 9.], 1e-12);
        assert_eq!(
            Tensor::from_vec(vec![0.5f32, 1.5, 2.5, -0.5], [4])
                .round()
                .to_vec::<f32>(),
            vec![0., 2., 2., -0.]
        );
        assert_eq!(
            Tensor::from_vec(vec![-3i64, 0, 2], [3])
                .sign()
                .to_vec::<i64>(),
            vec![-1, 0, 1]
        );
        assert_eq!(
            Tensor::from_vec(vec![-3i64, 2], [2]).exp().dtype(),
            DType::F32
        );
    }

    #[test]
    fn gelu_tanh_matches_formula() {
        let t = Tensor::from_vec(vec![-2.0f64, 0.5, 3.0], [3]);
        let y = t.gelu(GeluApprox::Tanh).to_vec::<f64>();
        let k = (2.0 / std::f64::consts::PI).sqrt();
        for (v, g) in [-2.0f64, 0.5, 3.0].iter().zip(y) {
            assert!((g - 0.5 * v * (1.0 + (k * (v + 0.044715 * v.powi(3))).tanh())).abs() < 1e-14);
        }
    }

    #[test]
    fn nan_propagates_through_maximum() {
        let a = Tensor::from_vec(vec![f32::NAN, 1.0], [2]);
        let m = a.maximum(0.0).to_vec::<f32>();
        assert!(m[0].is_nan() && m[1] == 1.0);
    }

    #[test]
    fn strided_inputs_match_contiguous() {
        let a = Tensor::randn([4, 5, 6], DType::F64);
        let b = Tensor::randn([6, 5], DType::F64);
        let ap = a.permute([2, 1, 0]); // [6,5,4], non-contiguous
        let bp = b.unsqueeze(-1); // [6,5,1] broadcast
        let got = (&ap * &bp).to_vec::<f64>();
        let want = (&ap.contiguous() * &bp.contiguous()).to_vec::<f64>();
        assert_eq!(got, want);
        // large enough to take the parallel path
        let big = Tensor::randn([64, 1024], DType::F32);
        let r = (&big.t() + 1.0).to_vec::<f32>();
        let r2 = (&big.t().contiguous() + 1.0).to_vec::<f32>();
        assert_eq!(r, r2);
    }
}
