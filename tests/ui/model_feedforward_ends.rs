use flint::model;

model! {
    pub struct Net {
        ff: FeedForward(8 -> 32 -> 16),
    }
    fn forward(x: [b, 8]) -> [b, 8] {
        ff(x)
    }
}

fn main() {}
