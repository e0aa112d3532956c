//! Flint's procedural macros: `#[derive(Module)]` (and `model!`, coming with the rest of
//! the DSL).
//!
//! The macros expand into calls against `::flint`, the facade crate.

use proc_macro::TokenStream;

mod derive;
mod model;

/// The messages of the `compile_error!`s in a macro's output, for the unit tests.
#[cfg(test)]
pub(crate) fn compile_errors(out: &proc_macro2::TokenStream) -> Vec<String> {
    out.to_string()
        .split("compile_error !")
        .skip(1)
        .map(|s| {
            let start = s.find('"').map_or(0, |i| i + 1);
            let end = s[start..].find("\" }").map_or(s.len(), |e| start + e);
            s[start..end].replace("\\\"", "\"")
        })
        .collect()
}

/// Implements `flint::nn::Module` (and `Display`, the PyTorch-style summary) for a struct
/// of layers, or an enum whose variants each hold one layer.
///
/// Fields:
/// - a field whose type is a module (or `Vec`/array of modules, or `Option` of one) is a
///   child, named after the field: `fc1.weight`, `layers.0.fc.bias`;
/// - `#[module(param)]` on a `Tensor` / `Option<Tensor>`: a trainable parameter;
/// - `#[module(buffer)]`: a non-trained tensor in the state dict (running statistics);
/// - `#[module(skip)]`: not part of the module; plain data (numbers, `String`, `bool`,
///   `DType`, `Device`, references, tuples) is skipped without the attribute;
/// - `#[module(rename = "name")]`: the name used in dotted paths;
/// - `#[module(child)]`: force a field to be a child.
///
/// Item options: `#[module(name = "…")]` (the name the summary prints),
/// `#[module(no_display)]`, on enums `#[module(forward)]` (delegate `Forward`), and on
/// structs `#[module(sequential)]`: `Forward` chains the child fields in declaration order
/// (lists element by element, `Option`s when present). Give a field its shape rule with
/// `#[shape([.., 784] -> [.., 256])]` and the chain is checked at compile time: each
/// declared output against the next declared input (layers that keep the shape, such as
/// activations and dropout, are looked through; a field with no rule cuts the chain).
///
/// ```
/// use flint::nn::{Forward, Linear, ReLU};
/// use flint::{Module, Tensor};
///
/// #[derive(Module)]
/// #[module(sequential)]
/// struct Mlp {
///     #[shape([.., 4] -> [.., 8])]
///     fc1: Linear,
///     act: ReLU,
///     #[shape([.., 8] -> [.., 2])]
///     fc2: Linear,
/// }
///
/// let mlp = Mlp { fc1: Linear::new(4, 8, ()), act: ReLU, fc2: Linear::new(8, 2, ()) };
/// assert_eq!(mlp.forward(&Tensor::zeros([3, 4], ())).shape(), &[3, 2]);
/// ```
///
/// ```
/// use flint::nn::{Linear, ModuleExt};
/// use flint::{Module, Tensor};
///
/// #[derive(Module)]
/// struct Mlp {
///     fc1: Linear,
///     fc2: Linear,
///     #[module(param)]
///     temperature: Tensor,
///     hidden: usize,
/// }
///
/// let mlp = Mlp {
///     fc1: Linear::new(4, 8, ()),
///     fc2: Linear::new(8, 2, ()),
///     temperature: flint::nn::init::ones([1], ()),
///     hidden: 8,
/// };
/// let names: Vec<String> = mlp.named_parameters().into_iter().map(|(n, _)| n).collect();
/// assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "temperature"]);
/// assert!(mlp.to_string().starts_with("Mlp(\n  (fc1): Linear(in_features=4"));
/// ```
#[proc_macro_derive(Module, attributes(module, shape))]
pub fn derive_module(input: TokenStream) -> TokenStream {
    derive::derive_module(input.into()).into()
}

/// Declares whole models — layers with their sizes and a forward body over symbolic
/// shapes — and checks the shapes at compile time. See the crate README's `model!`
/// section for the full syntax.
///
/// ```
/// use flint::{model, Tensor};
///
/// model! {
///     /// A two-layer perceptron.
///     pub struct Mlp<const IN: usize, const HID: usize>(classes: usize) {
///         fc1: Linear(IN -> HID),
///         fc2: Linear(HID -> classes),
///     }
///     fn forward(x: [b, IN]) -> [b, classes] {
///         fc2(fc1(x).relu())
///     }
/// }
///
/// let mlp = Mlp::<4, 8>::new(3, ());
/// assert_eq!(mlp.forward(&Tensor::zeros([2, 4], ())).shape(), &[2, 3]);
/// let err = mlp.try_forward(&Tensor::zeros([2, 5], ())).unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "Mlp::forward: argument `x` should be [b, IN], got [2, 5]: IN = 4, got 5 at dim 1"
/// );
/// ```
#[proc_macro]
pub fn model(input: TokenStream) -> TokenStream {
    model::expand(input.into()).into()
}
