use flint::model;

model! {
    pub struct Net {
        fc: Linear(4 -> 8),
    }
    fn forward(x: [b, 4]) -> [b, 10] {
        fc(x)
    }
}

fn main() {}
