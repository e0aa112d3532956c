use flint::nn::Linear;
use flint::Module;

#[derive(Module)]
#[module(sequentially)]
struct Net {
    fc: Linear,
}

fn main() {}
