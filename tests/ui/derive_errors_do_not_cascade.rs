// One bad field: the error is reported once, at the attribute, and the rest of the
// program still sees `Net` as a Module (no follow-on errors at the uses below).
use flint::nn::{Linear, ModuleExt};
use flint::Module;

#[derive(Module)]
struct Net {
    #[module(paramm)]
    fc: Linear,
}

fn main() {
    let net = Net { fc: Linear::new(2, 2, ()) };
    let _ = net.num_parameters();
    println!("{net}");
}
