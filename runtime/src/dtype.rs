//! Element types: [`DType`] and the [`Element`] trait that ties Rust types to it.

use half::{bf16, f16};
use std::fmt;

/// The element type of a tensor.
///
/// ```
/// use flint_runtime::DType;
/// assert_eq!(DType::promote(DType::F32, DType::I64), DType::F32);
/// assert!(DType::BF16.is_float());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// `bool`.
    Bool,
    /// `i64`.
    I64,
    /// IEEE half precision ([`half::f16`]); arithmetic goes through `f32`.
    F16,
    /// bfloat16 ([`half::bf16`]); arithmetic goes through `f32`.
    BF16,
    /// `f32`, the default.
    F32,
    /// `f64`.
    F64,
}

impl DType {
    /// True for the four floating-point types.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::Bool => 1,
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    /// The short name used in printing (`f32`, `i64`, …).
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::I64 => "i64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }

    /// The dtype two tensors are combined in, following PyTorch's promotion between
    /// categories (bool < integer < float) and within floats (wider wins; f16 with bf16
    /// gives f32).
    pub fn promote(a: DType, b: DType) -> DType {
        use DType::*;
        match (a, b) {
            _ if a == b => a,
            (F16, BF16) | (BF16, F16) => F32,
            _ => a.max(b),
        }
    }

    /// The dtype of the result of a floating-point op (`exp`, `/`, `mean`) on this dtype:
    /// itself for floats, [`DType::F32`] for integers and bool.
    pub fn to_float(self) -> DType {
        if self.is_float() {
            self
        } else {
            DType::F32
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that can be a tensor element.
pub trait Element:
    Copy + Send + Sync + Default + PartialOrd + PartialEq + fmt::Debug + 'static
{
    /// The [`DType`] of this Rust type.
    const DTYPE: DType;
    /// Converts to `f64` (exact for every type but `i64` beyond 2⁵³).
    fn to_f64(self) -> f64;
    /// Converts from `f64`, rounding to nearest (truncating for `i64`, `!= 0` for bool).
    fn from_f64(v: f64) -> Self;
    /// Converts to `i64` (truncating floats).
    fn to_i64(self) -> i64;
    /// Converts from `i64`.
    fn from_i64(v: i64) -> Self;
    /// True for a floating-point NaN (always false for integers and bool).
    #[inline]
    fn is_nan(self) -> bool {
        false
    }
}

macro_rules! float_element {
    ($t:ty, $d:ident, $to:expr, $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            #[inline]
            fn to_f64(self) -> f64 {
                #[allow(clippy::redundant_closure_call)]
                ($to)(self)
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                #[allow(clippy::redundant_closure_call)]
                ($from)(v)
            }
            #[inline]
            fn to_i64(self) -> i64 {
                self.to_f64() as i64
            }
            #[inline]
            fn from_i64(v: i64) -> Self {
                Self::from_f64(v as f64)
            }
            #[inline]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}
float_element!(f32, F32, |x: f32| x as f64, |v: f64| v as f32);
float_element!(f64, F64, |x: f64| x, |v: f64| v);
float_element!(f16, F16, |x: f16| x.to_f64(), f16::from_f64);
float_element!(bf16, BF16, |x: bf16| x.to_f64(), bf16::from_f64);

impl Element for i64 {
    const DTYPE: DType = DType::I64;
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        v as i64
    }
    #[inline]
    fn to_i64(self) -> i64 {
        self
    }
    #[inline]
    fn from_i64(v: i64) -> Self {
        v
    }
}

impl Element for bool {
    const DTYPE: DType = DType::Bool;
    #[inline]
    fn to_f64(self) -> f64 {
        if self {
            1.0
        } else {
            0.0
        }
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
    #[inline]
    fn to_i64(self) -> i64 {
        self as i64
    }
    #[inline]
    fn from_i64(v: i64) -> Self {
        v != 0
    }
}

/// Element types with arithmetic (`+ - * /`, ordering): every dtype but bool.
pub trait NumElement:
    Element
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
{
    /// Zero.
    fn zero() -> Self;
    /// One.
    fn one() -> Self;
}

macro_rules! num_element {
    ($($t:ty),*) => {$(
        impl NumElement for $t {
            #[inline]
            fn zero() -> Self { <$t as num_traits::Zero>::zero() }
            #[inline]
            fn one() -> Self { <$t as num_traits::One>::one() }
        }
    )*};
}
num_element!(f32, f64, f16, bf16, i64);

/// Floating-point element types. `f16` and `bf16` compute through `f32`.
pub trait FloatElement: NumElement + num_traits::Float {}
impl FloatElement for f32 {}
impl FloatElement for f64 {}
impl FloatElement for f16 {}
impl FloatElement for bf16 {}
