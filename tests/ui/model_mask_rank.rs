use flint::model;

model! {
    pub struct Block<const D: usize, const H: usize> {
        attn: MultiheadAttention(D, heads = H),
    }
    fn forward(x: [b, t, D], mask: Mask[t]) -> [b, t, D] {
        x + attn(x, mask)
    }
}

fn main() {}
