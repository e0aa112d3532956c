use flint::model;

model! {
    pub struct Block<const D: usize> {
        ln: LayerNorm(D),
        up: Linear(D -> 4 * D),
    }
    fn forward(x: [b, t, D]) -> [b, t, D] {
        x + up(ln(x))
    }
}

fn main() {}
