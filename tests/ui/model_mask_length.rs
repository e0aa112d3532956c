use flint::model;

model! {
    pub struct Cross<const D: usize> {
        attn: MultiheadAttention(D, heads = 2),
    }
    fn forward(q: [b, t, D], kv: [b, s, D], mask: Mask[t, t]) -> [b, t, D] {
        attn(q, kv, mask)
    }
}

fn main() {}
