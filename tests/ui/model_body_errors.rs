// Errors in forward bodies, one model each; every model is still emitted as a stub.
use flint::model;

model! {
    pub struct A { fc: Linear(4 -> 4) }
    fn forward(x: [b, 4]) -> [b, 4] { fc(y) }
}

model! {
    pub struct B { fc: Linear(4 -> 4) }
    fn forward(x: [b, 4]) -> [b, 4] { dense(x) }
}

model! {
    pub struct C { fc: Linear(4 -> 4) }
    fn forward(x: [b, 4]) -> [b, 4] { fc(x, x) }
}

model! {
    pub struct D { fc: Linear(4 -> 4) }
    fn forward(x: [b, 4]) -> [b, 4] { fc(x, causal) }
}

model! {
    pub struct E { fc: Linear(4 -> 4) }
    fn forward(x: [b, 4]) -> [b, 4] { let (p, q) = fc(x); p }
}

model! {
    pub struct F { fc: Linear(6 -> 6) }
    fn forward(x: [b, 2, 3]) -> [b, 6] { fc(x.reshape([b, 5])) }
}

model! {
    pub struct G { fc: Linear(4 -> 4) }
    fn forward(x: [b, 4]) -> [b, 4] { fc(x.transpose(0, 5)) }
}

model! {
    pub struct H { fc: Linear(4 -> 4) }
    fn forward(x: [b, 4], m: [b, 4]) -> [b, 4] { fc(x.masked_fill(m, 0.0)) }
}

model! {
    pub struct I { fc: Linear(4 -> 4) }
    fn forward(x: [b, 4], y: [b, 3]) -> [b, 7] { cat([fc(x), y.relu()], 0) }
}

model! {
    pub struct J { fc: Linear(4 -> 4) }
    fn forward(x: [b, 4]) -> [b, 4] { if true { fc(x) } else { x } }
}

model! {
    pub struct K { fc: Linear(4 -> 4) }
    fn forward(x: [b, 4], x: [b, 4]) -> [b, 4] { fc(x) }
}

model! {
    pub struct L { fc: Linear(4 -> 4) }
    fn forward(x: [b, 4], m: Mask[b, 4]) -> [b, 4] { fc(m) }
}

model! {
    pub struct M<const D: usize> { attn: MultiheadAttention(D, heads = 2) }
    fn forward(x: [b, t, D], pad: Mask[b, t + 1]) -> [b, t, D] { attn(x, padding = pad) }
}

model! {
    pub struct N { fc: Linear(4 -> 4) }
    fn forward(x: [b, 4]) -> [b, 4] { 2.0 * 3.0 }
}

fn main() {}
