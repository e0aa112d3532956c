// Conv2d output size arithmetic: kernel 3 without padding shrinks 8x8 to 6x6.
use flint::model;

model! {
    pub struct Cnn {
        conv: Conv2d(1 -> 8, kernel = 3),
        flat: Flatten,
        fc: Linear(8 * 8 * 8 -> 10),
    }
    fn forward(x: [b, 1, 8, 8]) -> [b, 10] {
        fc(flat(conv(x).relu()))
    }
}

fn main() {}
