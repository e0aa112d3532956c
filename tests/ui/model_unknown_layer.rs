use flint::model;

model! {
    pub struct Net {
        fc: Dense(4 -> 8),
    }
    fn forward(x: [b, 4]) -> [b, 8] {
        fc(x)
    }
}

fn main() {}
