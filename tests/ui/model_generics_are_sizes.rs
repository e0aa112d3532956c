use flint::model;

model! {
    pub struct Net<T> {
        fc: Linear(4 -> 4),
    }
    fn forward(x: [b, 4]) -> [b, 4] {
        fc(x)
    }
}

fn main() {}
