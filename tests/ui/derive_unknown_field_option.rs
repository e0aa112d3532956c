use flint::nn::Linear;
use flint::Module;

#[derive(Module)]
struct Net {
    #[module(weight)]
    fc: Linear,
}

fn main() {}
