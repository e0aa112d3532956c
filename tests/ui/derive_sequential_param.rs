use flint::nn::Linear;
use flint::{Module, Tensor};

#[derive(Module)]
#[module(sequential)]
struct Net {
    fc: Linear,
    #[module(param)]
    scale: Tensor,
}

fn main() {}
