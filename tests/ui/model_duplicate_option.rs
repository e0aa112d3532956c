use flint::model;

model! {
    pub struct Net {
        fc: Linear(4 -> 8, bias = false, bias = true),
    }
    fn forward(x: [b, 4]) -> [b, 8] {
        fc(x)
    }
}

fn main() {}
