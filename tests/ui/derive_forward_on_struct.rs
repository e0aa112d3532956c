use flint::nn::Linear;
use flint::Module;

#[derive(Module)]
#[module(forward)]
struct Net {
    fc: Linear,
}

fn main() {}
