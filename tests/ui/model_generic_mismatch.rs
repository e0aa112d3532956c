// Dims named by different const generics: the generated code makes the mismatch a
// type error at the layer that receives it.
use flint::model;

model! {
    pub struct Net<const D: usize, const F: usize, const H: usize> {
        a: Linear(D -> F),
        b: Linear(H -> D),
    }
    fn forward(x: [n, D]) -> [n, D] {
        b(a(x))
    }
}

fn main() {}
