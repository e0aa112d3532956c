use flint::model;

model! {
    pub struct Net {
        fc: Linear(4 -> 4),
    }
    fn forward(x: [b, 4]) -> [b, 4] {
        fc(x).frobnicate()
    }
}

fn main() {}
