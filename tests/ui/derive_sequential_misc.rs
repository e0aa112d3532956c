use flint::nn::{Linear, ReLU};
use flint::Module;

#[derive(Module)]
#[module(sequential)]
enum Act {
    Relu(ReLU),
}

#[derive(Module)]
#[module(sequential)]
struct Empty {
    width: usize,
}

#[derive(Module)]
#[module(sequential)]
struct TwoInputs {
    #[shape(x: [b, 4], y: [b, 4] -> [b, 4])]
    fc: Linear,
}

#[derive(Module)]
#[module(sequential)]
struct TwoRules {
    #[shape([.., 4] -> [.., 4])]
    #[shape([.., 4] -> [.., 4])]
    fc: Linear,
}

fn main() {}
