//! Flint's procedural macros: `#[derive(Module)]` (and `model!`, coming with the rest of
//! the DSL).
//!
//! The macros expand into calls against `::flint`, the facade crate.

use proc_macro::TokenStream;

mod derive;

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
/// `#[module(no_display)]`, and on enums `#[module(forward)]` (delegate `Forward`).
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
#[proc_macro_derive(Module, attributes(module))]
pub fn derive_module(input: TokenStream) -> TokenStream {
    derive::derive_module(input.into()).into()
}
