// Attention written by hand: the inner dims of a matmul must agree.
use flint::model;

model! {
    pub struct Scores<const D: usize> {
        q: Linear(D -> D),
        k: Linear(D -> 2 * D),
    }
    fn forward(x: [b, t, D]) -> [b, t, t] {
        let s = q(x).matmul(k(x).transpose(-2, -1));
        s.softmax(-1)
    }
}

fn main() {}
