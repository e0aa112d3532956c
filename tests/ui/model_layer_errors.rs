// Errors in layer declarations, one model each.
use flint::model;

model! {
    pub struct A { attn: MultiheadAttention(16) }
    fn forward(x: [b, t, 16]) -> [b, t, 16] { attn(x) }
}

model! {
    pub struct B { conv: Conv2d(1 -> 8) }
    fn forward(x: [b, 1, 8, 8]) -> [b, 8, 6, 6] { conv(x) }
}

model! {
    pub struct C { conv: Conv2d(3 -> 8, kernel = 3, groups = 2) }
    fn forward(x: [b, 3, 8, 8]) -> [b, 8, 6, 6] { conv(x) }
}

model! {
    pub struct D { drop: Dropout(1.5) }
    fn forward(x: [b, 4]) -> [b, 4] { drop(x) }
}

model! {
    pub struct E { fc: Linear(4) }
    fn forward(x: [b, 4]) -> [b, 4] { fc(x) }
}

model! {
    pub struct F { ff: FeedForward(8 -> 32 -> 8, activation = Swish) }
    fn forward(x: [b, 8]) -> [b, 8] { ff(x) }
}

model! {
    pub struct G(opts: usize) { fc: Linear(4 -> 4) }
    fn forward(x: [b, 4]) -> [b, 4] { fc(x) }
}

model! {
    pub struct H<const D: usize> where D + 1 { fc: Linear(D -> D) }
    fn forward(x: [b, D]) -> [b, D] { fc(x) }
}

model! {
    pub struct I(p: f64) { fc: Linear(4 -> p) }
    fn forward(x: [b, 4]) -> [b, 4] { fc(x) }
}

model! {
    pub struct J { relu: ReLU(4) }
    fn forward(x: [b, 4]) -> [b, 4] { relu(x) }
}

model! {
    pub struct Inner<const D: usize> { fc: Linear(D -> D) }
    fn forward(x: [b, D]) -> [b, D] { fc(x) }

    pub struct K { inner: Inner<4, 5> }
    fn forward(x: [b, 4]) -> [b, 4] { inner(x) }
}



model! {
    pub struct L(n: usize, n: usize) { fc: Linear(n -> n) }
    fn forward(x: [b, n]) -> [b, n] { fc(x) }
}
fn main() {}
