use flint::model;

model! {
    pub struct Widen {
        fc: Linear(16 -> 32),
    }
    fn forward(x: [b, 16]) -> [b, 32] {
        fc(x)
    }

    pub struct Stack(layers: usize) {
        blocks: [Widen; layers],
    }
    fn forward(x: [b, 16]) -> [b, 32] {
        blocks(x)
    }
}

fn main() {}
