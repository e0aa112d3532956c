//! Activations as modules, for [`Sequential`](super::Sequential) and the DSL.

use super::module::{Forward, Module, Visitor, VisitorMut};
use crate::error::Result;
use crate::ops::GeluApprox;
use crate::tensor::Tensor;

macro_rules! activation {
    ($(#[$doc:meta])* $name:ident, $repr:expr, |$s:ident, $x:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;
        activation!(@impl $name, $repr, |$s, $x| $body);
    };
    ($(#[$doc:meta])* $name:ident { $($field:ident : $fty:ty),* }, $repr:expr, |$s:ident, $x:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name { $(#[doc = "Option of the activation."] pub $field: $fty),* }
        activation!(@impl $name, $repr, |$s, $x| $body);
    };
    (@impl $name:ident, $repr:expr, |$s:ident, $x:ident| $body:expr) => {

        impl Module for $name {
            fn visit(&self, _: &mut Visitor<'_>) {}
            fn visit_mut(&mut self, _: &mut VisitorMut<'_>) {}
            fn extra_repr(&self) -> String {
                let $s = self;
                let _ = $s;
                $repr
            }
        }

        impl Forward for $name {
            fn try_forward(&self, $x: &Tensor) -> Result<Tensor> {
                let $s = self;
                let _ = $s;
                Ok($body)
            }
        }

        crate::impl_module_display!($name);
    };
}

activation!(
    /// `max(x, 0)`.
    ///
    /// ```
    /// use flint_runtime::nn::{Forward, ReLU};
    /// use flint_runtime::Tensor;
    /// let y = ReLU.forward(&Tensor::from_vec(vec![-1.0f32, 2.0], [2]));
    /// assert_eq!(y.to_vec::<f32>(), vec![0.0, 2.0]);
    /// ```
    ReLU, String::new(), |s, x| x.relu()
);
activation!(
    /// The Gaussian error linear unit, exact (`erf`) or with the tanh approximation.
    Gelu { approximate: bool },
    if s.approximate { "approximate='tanh'".into() } else { String::new() },
    |s, x| x.gelu(if s.approximate { GeluApprox::Tanh } else { GeluApprox::None })
);
activation!(
    /// `tanh(x)`.
    Tanh, String::new(), |s, x| x.tanh()
);
activation!(
    /// `1 / (1 + e^{−x})`.
    Sigmoid, String::new(), |s, x| x.sigmoid()
);
activation!(
    /// `x · sigmoid(x)` (swish).
    SiLU, String::new(), |s, x| x.silu()
);
activation!(
    /// `x` for `x > 0`, else `negative_slope · x` (PyTorch's default slope is 0.01; use
    /// [`LeakyReLU::default_slope`]).
    LeakyReLU { negative_slope: f64 },
    format!("negative_slope={}", s.negative_slope),
    |s, x| x.relu() - (-x).relu() * s.negative_slope
);
activation!(
    /// Softmax over `dim`.
    Softmax { dim: isize }, format!("dim={}", s.dim), |s, x| x.softmax(s.dim)
);
activation!(
    /// Log-softmax over `dim`.
    LogSoftmax { dim: isize }, format!("dim={}", s.dim), |s, x| x.log_softmax(s.dim)
);

impl LeakyReLU {
    /// PyTorch's default, slope 0.01.
    pub fn default_slope() -> Self {
        LeakyReLU {
            negative_slope: 0.01,
        }
    }
}

/// The activation functions by name, for configurable layers (feed-forward blocks,
/// transformer layers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// [`ReLU`].
    #[default]
    Relu,
    /// Exact [`Gelu`].
    Gelu,
    /// Tanh-approximated [`Gelu`].
    GeluTanh,
    /// [`Tanh`].
    Tanh,
    /// [`Sigmoid`].
    Sigmoid,
    /// [`SiLU`].
    Silu,
}

impl Activation {
    /// Applies the activation.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Relu => x.relu(),
            Activation::Gelu => x.gelu(GeluApprox::None),
            Activation::GeluTanh => x.gelu(GeluApprox::Tanh),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Silu => x.silu(),
        }
    }

    /// The name PyTorch's `activation=` argument uses.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Silu => "silu",
        }
    }
}
