//! The run-time half of the DSL's shape checks, used by the code `model!` generates.
//!
//! `model!` checks every dim it can at compile time. What only the data knows — the batch
//! size, the sequence length, a vocabulary size given to the constructor — is checked
//! once, when `forward` is entered, by a [`ShapeCheck`]: each argument is matched against
//! its declared symbolic shape (`[b, t, D]`), binding `b` and `t` on first sight and
//! comparing them afterwards, and the error names the model, the argument, the declared
//! shape and the actual one.
//!
//! [`Dim`] and [`ShapeAsserts`] carry the compile-time half: `Dim<N>` turns a dim into a
//! type, so that two dims that must agree are a type error where they do not, and
//! `ShapeAsserts::CHECK` holds a model's const assertions (`D % H == 0`), which
//! [`assert_shapes!`](crate::assert_shapes) forces under `cargo check`.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A dim as a type: `model!` writes `let _: Dim<{ FF }> = Dim::<{ H }>;` where the output
/// of one layer (`FF`) feeds a layer expecting `H`, so that a mismatch is a type error at
/// the layer.
///
/// ```
/// use flint_runtime::nn::shape::Dim;
/// const D: usize = 8;
/// let _: Dim<{ 2 * 4 }> = Dim::<D>;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dim<const N: usize>;

/// The const assertions of a model (`where D % H == 0`), evaluated when `CHECK` is used:
/// by the model's constructor (so `cargo build` of code that builds the model fails), and
/// by [`assert_shapes!`](crate::assert_shapes) (so `cargo check` fails).
///
/// ```
/// use flint_runtime::nn::shape::ShapeAsserts;
/// struct Heads<const D: usize, const H: usize>;
/// impl<const D: usize, const H: usize> ShapeAsserts for Heads<D, H> {
///     const CHECK: () = assert!(D % H == 0, "D % H == 0");
/// }
/// flint_runtime::assert_shapes!(Heads<512, 8>);
/// ```
pub trait ShapeAsserts {
    /// Evaluating this runs the assertions.
    const CHECK: ();
}

/// Forces the const assertions of one or more models, with concrete sizes, under
/// `cargo check`: `assert_shapes!(EncoderBlock<512, 8, 2048>);`.
///
/// ```
/// use flint_runtime::nn::shape::ShapeAsserts;
/// struct Block<const D: usize, const FF: usize>;
/// impl<const D: usize, const FF: usize> ShapeAsserts for Block<D, FF> {
///     const CHECK: () = assert!(FF == 4 * D, "FF == 4 * D");
/// }
/// flint_runtime::assert_shapes!(Block<8, 32>, Block<16, 64>);
/// ```
#[macro_export]
macro_rules! assert_shapes {
    ($($model:ty),+ $(,)?) => {
        $( const _: () = <$model as $crate::nn::shape::ShapeAsserts>::CHECK; )+
    };
}

/// One dim of a declared shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DimSpec {
    /// A symbol bound by the data (`b`, `t`): bound on first sight, compared afterwards.
    Sym(&'static str),
    /// A dim known when `forward` runs: its value and how it was written (`"D"`).
    Fixed(usize, &'static str),
    /// `..`: any number of leading dims.
    Rest,
}

/// What an argument holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// A floating-point tensor.
    Float,
    /// A bool mask.
    Mask,
    /// Integer ids (token indices, class labels).
    Ids,
}

/// The entry check of a generated `forward`.
///
/// ```
/// use flint_runtime::nn::shape::{ArgKind, DimSpec::*, ShapeCheck};
/// use flint_runtime::Tensor;
/// let mut check = ShapeCheck::new("Block::forward");
/// let x = Tensor::zeros([2, 5, 8], ());
/// check.arg("x", &x, &[Sym("b"), Sym("t"), Fixed(8, "D")], ArgKind::Float).unwrap();
/// assert_eq!(check.get("t"), 5);
/// let mask = Tensor::zeros([4, 4], flint_runtime::DType::Bool);
/// let err = check.arg("mask", &mask, &[Sym("t"), Sym("t")], ArgKind::Mask).unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "Block::forward: argument `mask` should be [t, t], got [4, 4]: t = 5 (from `x`), got 4 at dim 0"
/// );
/// ```
#[derive(Debug)]
pub struct ShapeCheck {
    op: &'static str,
    bound: Vec<(&'static str, usize, &'static str)>,
}

fn spec_string(spec: &[DimSpec]) -> String {
    let parts: Vec<String> = spec
        .iter()
        .map(|d| match d {
            DimSpec::Sym(s) => (*s).to_string(),
            DimSpec::Fixed(_, s) => (*s).to_string(),
            DimSpec::Rest => "..".to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

impl ShapeCheck {
    /// A check whose errors start with `op` (`"Block::forward"`).
    pub fn new(op: &'static str) -> ShapeCheck {
        ShapeCheck {
            op,
            bound: Vec::new(),
        }
    }

    /// The value a symbol was bound to (0 if it never was: the macro only asks for
    /// symbols the signature binds).
    pub fn get(&self, sym: &str) -> usize {
        self.bound
            .iter()
            .find(|(s, _, _)| *s == sym)
            .map_or(0, |(_, v, _)| *v)
    }

    fn fail(&self, arg: &str, spec: &[DimSpec], x: &Tensor, why: String) -> Error {
        Error::shape(
            self.op,
            format!(
                "argument `{arg}` should be {}, got {:?}: {why}",
                spec_string(spec),
                x.shape()
            ),
        )
    }

    /// Matches `x` against its declared shape and kind, binding new symbols.
    pub fn arg(
        &mut self,
        arg: &'static str,
        x: &Tensor,
        spec: &[DimSpec],
        kind: ArgKind,
    ) -> Result<()> {
        let dtype_ok = match kind {
            ArgKind::Float => x.dtype().is_float(),
            ArgKind::Mask => x.dtype() == DType::Bool,
            ArgKind::Ids => x.dtype() == DType::I64,
        };
        if !dtype_ok {
            let want = match kind {
                ArgKind::Float => "a floating-point tensor",
                ArgKind::Mask => "a bool mask",
                ArgKind::Ids => "integer (i64) ids",
            };
            return Err(Error::dtype(
                self.op,
                format!("argument `{arg}` should be {want}, got {}", x.dtype()),
            ));
        }
        let shape = x.shape();
        let rest = spec.iter().filter(|d| **d == DimSpec::Rest).count();
        let fixed = spec.len() - rest;
        if (rest == 0 && shape.len() != fixed) || shape.len() < fixed {
            let want = if rest == 0 {
                format!("rank {fixed}")
            } else {
                format!("rank at least {fixed}")
            };
            return Err(self.fail(arg, spec, x, format!("{want}, got rank {}", shape.len())));
        }
        // `..` may only lead: the macro never emits it elsewhere.
        let offset = shape.len() - fixed;
        for (i, d) in spec.iter().filter(|d| **d != DimSpec::Rest).enumerate() {
            let got = shape[offset + i];
            match *d {
                DimSpec::Fixed(v, text) if v != got => {
                    let why = if text.parse::<usize>().is_ok() {
                        format!("expected {v} at dim {}, got {got}", offset + i)
                    } else {
                        format!("{text} = {v}, got {got} at dim {}", offset + i)
                    };
                    return Err(self.fail(arg, spec, x, why));
                }
                DimSpec::Sym(s) => match self.bound.iter().find(|(n, _, _)| *n == s) {
                    Some(&(_, v, from)) if v != got => {
                        let src = if from == arg {
                            "earlier in the same argument".to_string()
                        } else {
                            format!("from `{from}`")
                        };
                        return Err(self.fail(
                            arg,
                            spec,
                            x,
                            format!("{s} = {v} ({src}), got {got} at dim {}", offset + i),
                        ));
                    }
                    Some(_) => {}
                    None => self.bound.push((s, got, arg)),
                },
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks a run-time relation of the signature (`where t <= ctx`).
    pub fn relation(&self, holds: bool, text: &'static str, values: String) -> Result<()> {
        if holds {
            Ok(())
        } else {
            Err(Error::shape(
                self.op,
                format!("`{text}` does not hold ({values})"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DimSpec::*;

    #[test]
    fn binds_and_compares() {
        let mut c = ShapeCheck::new("M::forward");
        let x = Tensor::zeros([3, 4, 8], ());
        c.arg("x", &x, &[Rest, Fixed(8, "D")], ArgKind::Float)
            .unwrap();
        c.arg(
            "x",
            &x,
            &[Sym("b"), Sym("t"), Fixed(8, "8")],
            ArgKind::Float,
        )
        .unwrap();
        assert_eq!((c.get("b"), c.get("t")), (3, 4));
        let y = Tensor::zeros([3, 5, 8], ());
        let e = c
            .arg(
                "y",
                &y,
                &[Sym("b"), Sym("t"), Fixed(8, "D")],
                ArgKind::Float,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "M::forward: argument `y` should be [b, t, D], got [3, 5, 8]: t = 4 (from `x`), got 5 at dim 1"
        );
        let e = c
            .arg(
                "y",
                &y,
                &[Sym("b"), Sym("s"), Fixed(16, "D")],
                ArgKind::Float,
            )
            .unwrap_err();
        assert!(e.to_string().ends_with("D = 16, got 8 at dim 2"), "{e}");
        let e = c
            .arg("y", &y, &[Sym("b"), Sym("t")], ArgKind::Float)
            .unwrap_err();
        assert!(e.to_string().ends_with("rank 2, got rank 3"), "{e}");
        let e = c.arg("y", &y, &[Fixed(3, "3")], ArgKind::Ids).unwrap_err();
        assert_eq!(
            e.to_string(),
            "M::forward: argument `y` should be integer (i64) ids, got f32"
        );
        let e = c
            .arg("y", &y, &[Rest, Fixed(9, "9")], ArgKind::Float)
            .unwrap_err();
        assert!(e.to_string().ends_with("expected 9 at dim 2, got 8"), "{e}");
    }

    #[test]
    fn repeated_symbol_in_one_argument() {
        let mut c = ShapeCheck::new("M::forward");
        let m = Tensor::zeros([3, 4], DType::Bool);
        let e = c
            .arg("mask", &m, &[Sym("t"), Sym("t")], ArgKind::Mask)
            .unwrap_err();
        assert!(
            e.to_string()
                .ends_with("t = 3 (earlier in the same argument), got 4 at dim 1"),
            "{e}"
        );
        assert!(c.relation(true, "t <= ctx", String::new()).is_ok());
        let e = c
            .relation(false, "t <= ctx", "t = 9, ctx = 8".into())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "M::forward: `t <= ctx` does not hold (t = 9, ctx = 8)"
        );
    }
}
