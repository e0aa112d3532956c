// Literal dims: the macro reports the mismatch at the layer that receives it, and
// the model is still emitted as a stub, so using it below raises no further errors.
use flint::{model, Tensor};

model! {
    pub struct Mlp {
        fc1: Linear(784 -> 512),
        fc2: Linear(256 -> 10),
    }
    fn forward(x: [b, 784]) -> [b, 10] {
        fc2(fc1(x).relu())
    }
}

fn main() {
    let mlp = Mlp::new(());
    let _y: Tensor = mlp.forward(&Tensor::zeros([2, 784], ()));
}
