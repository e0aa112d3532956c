use flint::{Module, Tensor};

#[derive(Module)]
struct Net {
    #[module(param, buffer)]
    w: Tensor,
}

fn main() {}
