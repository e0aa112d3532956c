//! Dropout layers: elementwise, channel-wise, and variational (one mask per sequence).

use super::functional;
use super::module::{Forward, Module, Visitor, VisitorMut};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::fmt_shape;
use crate::tensor::Tensor;

macro_rules! dropout_layer {
    ($(#[$doc:meta])* $name:ident, |$x:ident, $p:ident, $t:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name {
            /// Probability of zeroing.
            pub p: f64,
            training: bool,
        }

        impl $name {
            /// A layer that zeroes with probability `p` (in `[0, 1]`), in training mode.
            #[track_caller]
            pub fn new(p: f64) -> Self {
                assert!(
                    (0.0..=1.0).contains(&p),
                    "{}: dropout probability must be in [0, 1], got {p}",
                    stringify!($name)
                );
                $name { p, training: true }
            }
        }

        impl Module for $name {
            fn visit(&self, _: &mut Visitor<'_>) {}
            fn visit_mut(&mut self, _: &mut VisitorMut<'_>) {}
            fn extra_repr(&self) -> String {
                format!("p={}, inplace=false", self.p)
            }
            fn set_own_training(&mut self, training: bool) {
                self.training = training;
            }
            fn own_training(&self) -> Option<bool> {
                Some(self.training)
            }
        }

        impl Forward for $name {
            fn try_forward(&self, $x: &Tensor) -> Result<Tensor> {
                let ($p, $t) = (self.p, self.training);
                $body
            }
        }

        crate::impl_module_display!($name);
    };
}

dropout_layer!(
    /// Inverted dropout: in training zeroes each element with probability `p` and scales
    /// the others by `1/(1−p)`; in evaluation the identity.
    ///
    /// ```
    /// use flint_runtime::nn::{Dropout, Forward, ModuleExt};
    /// use flint_runtime::Tensor;
    /// let mut d = Dropout::new(0.5);
    /// let y = d.forward(&Tensor::ones([1000], ()));
    /// assert!(y.to_vec::<f32>().iter().all(|&v| v == 0.0 || v == 2.0));
    /// d.eval();
    /// assert_eq!(d.forward(&Tensor::ones([3], ())).to_vec::<f32>(), vec![1.0; 3]);
    /// ```
    Dropout,
    |x, p, training| functional::dropout(x, p, training)
);

dropout_layer!(
    /// Zeroes whole channels of `[N, C, H, W]` (or `[C, H, W]`) inputs.
    Dropout2d,
    |x, p, training| functional::feature_dropout(x, p, training, 2)
);

dropout_layer!(
    /// Zeroes whole channels of `[N, C, D, H, W]` (or `[C, D, H, W]`) inputs.
    Dropout3d,
    |x, p, training| functional::feature_dropout(x, p, training, 3)
);

/// Variational ("locked") dropout for recurrent nets (Gal & Ghahramani): one mask per
/// sequence, drawn once and reused at every time step.
///
/// [`VariationalDropout::forward`] applies it to a whole sequence `[B, T, F]`
/// (batch-first) or `[T, B, F]`; recurrent layers call [`VariationalDropout::mask`]
/// once per sequence and multiply their hidden state by it at every step.
///
/// ```
/// use flint_runtime::nn::{ModuleExt, VariationalDropout};
/// use flint_runtime::Tensor;
/// let d = VariationalDropout::new(0.5, true);
/// let y = d.forward(&Tensor::ones([2, 6, 8], ()));
/// // every time step of a sequence sees the same mask
/// for t in 1..6 {
///     assert_eq!(y.i((.., t)).to_vec::<f32>(), y.i((.., 0)).to_vec::<f32>());
/// }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct VariationalDropout {
    /// Probability of zeroing a feature for a whole sequence.
    pub p: f64,
    /// Inputs are `[B, T, F]` (else `[T, B, F]`).
    pub batch_first: bool,
    training: bool,
}

impl VariationalDropout {
    /// A layer with drop probability `p` (in `[0, 1)`).
    #[track_caller]
    pub fn new(p: f64, batch_first: bool) -> Self {
        assert!(
            (0.0..1.0).contains(&p),
            "VariationalDropout: probability must be in [0, 1), got {p}"
        );
        VariationalDropout {
            p,
            batch_first,
            training: true,
        }
    }

    /// A `[batch, features]` mask scaled by `1/(1−p)`, or `None` when the layer is off
    /// (evaluation, or `p == 0`): multiply a `[batch, features]` state by it at every
    /// step of one sequence.
    pub fn mask(&self, batch: usize, features: usize, dtype: DType) -> Option<Tensor> {
        (self.training && self.p > 0.0)
            .then(|| functional::dropout_mask(&[batch, features], self.p, dtype))
    }

    /// Applies one mask per sequence to `[B, T, F]` (or `[T, B, F]`).
    #[track_caller]
    pub fn forward(&self, x: &Tensor) -> Tensor {
        crate::error::or_panic(self.try_forward(x))
    }

    /// Fallible [`VariationalDropout::forward`].
    pub fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.ndim() != 3 {
            let want = if self.batch_first {
                "[B, T, F]"
            } else {
                "[T, B, F]"
            };
            return Err(Error::shape(
                "VariationalDropout",
                format!(
                    "expected input of shape {want}, got {}",
                    fmt_shape(x.shape())
                ),
            ));
        }
        let (b, f) = if self.batch_first {
            (x.size(0), x.size(2))
        } else {
            (x.size(1), x.size(2))
        };
        match self.mask(b, f, x.dtype()) {
            None => Ok(x.clone()),
            Some(m) => {
                // drawn on the CPU (the generator's stream), used on x's device
                let m = m.try_to(x.device())?;
                let m = if self.batch_first {
                    m.unsqueeze(1)
                } else {
                    m.unsqueeze(0)
                };
                x.try_mul(&m)
            }
        }
    }
}

impl Module for VariationalDropout {
    fn visit(&self, _: &mut Visitor<'_>) {}
    fn visit_mut(&mut self, _: &mut VisitorMut<'_>) {}
    fn extra_repr(&self) -> String {
        format!("p={}, batch_first={}", self.p, self.batch_first)
    }
    fn set_own_training(&mut self, training: bool) {
        self.training = training;
    }
    fn own_training(&self) -> Option<bool> {
        Some(self.training)
    }
}

crate::impl_module_display!(VariationalDropout);
