use flint::nn::Linear;
use flint::Module;
use std::collections::HashMap;

#[derive(Module)]
struct Net {
    fc: Linear,
    table: HashMap<String, f32>,
}

fn main() {}
