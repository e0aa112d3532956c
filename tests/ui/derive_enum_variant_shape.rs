use flint::nn::{Linear, ReLU};
use flint::Module;

#[derive(Module)]
enum Act {
    Relu(ReLU),
    Both(ReLU, Linear),
    Named { fc: Linear },
}

fn main() {}
