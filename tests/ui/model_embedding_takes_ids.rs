use flint::model;

model! {
    pub struct Lm(vocab: usize) {
        tok: Embedding(vocab -> 16),
        head: Linear(16 -> vocab),
    }
    fn forward(x: [b, t, 16]) -> [b, t, vocab] {
        head(tok(x))
    }
}

fn main() {}
