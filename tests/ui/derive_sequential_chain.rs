use flint::nn::{Linear, ReLU};
use flint::Module;

#[derive(Module)]
#[module(sequential)]
struct Mlp {
    #[shape([.., 784] -> [.., 512])]
    fc1: Linear,
    act: ReLU,
    #[shape([.., 256] -> [.., 10])]
    fc2: Linear,
}

fn main() {}
