//! Flint's procedural macros: `#[derive(Module)]` and `model!` (to come; see the DSL
//! issue). The crate exists now so that the facade's layout is final.
