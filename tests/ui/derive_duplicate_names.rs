use flint::nn::Linear;
use flint::Module;

#[derive(Module)]
struct Net {
    head: Linear,
    #[module(rename = "head")]
    out: Linear,
}

fn main() {}
