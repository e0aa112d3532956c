use flint::model;

model! {
    pub struct Net {
        fc: Linear(4 -> hidden),
    }
    fn forward(x: [b, 4]) -> [b, hidden] {
        fc(x)
    }
}

fn main() {}
