use flint::model;

model! {
    pub struct Block {
        attn: MultiheadAttention(512, heads = 3),
    }
    fn forward(x: [b, t, 512]) -> [b, t, 512] {
        attn(x)
    }
}

fn main() {}
