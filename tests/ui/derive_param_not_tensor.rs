use flint::nn::Linear;
use flint::Module;

#[derive(Module)]
struct Net {
    #[module(param)]
    fc: Linear,
}

fn main() {}
