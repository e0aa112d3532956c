use flint::{Module, Tensor};

#[derive(Module)]
struct Net {
    scale: Tensor,
}

fn main() {}
