use flint::model;

model! {
    pub struct Cnn {
        conv: Conv2d(3 -> 8, kernel = 7),
    }
    fn forward(x: [b, 3, 4, 4]) -> [b, 8, 1, 1] {
        conv(x)
    }
}

fn main() {}
