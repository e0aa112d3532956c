use flint::nn::Linear;
use flint::Module;

#[derive(Module)]
struct Net {
    #[module(rename = "a.b")]
    fc: Linear,
}

fn main() {}
