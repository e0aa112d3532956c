// Relations between const generics become const assertions; `assert_shapes!` forces
// them under `cargo check` for concrete sizes.
use flint::{assert_shapes, model};

model! {
    pub struct Block<const D: usize, const H: usize, const FF: usize>
        where FF == 4 * D
    {
        attn: MultiheadAttention(D, heads = H),
        ff: FeedForward(D -> FF -> D),
    }
    fn forward(x: [b, t, D]) -> [b, t, D] {
        let x = x + attn(x, causal);
        x + ff(x)
    }
}

assert_shapes!(Block<512, 8, 2048>);
assert_shapes!(Block<512, 7, 2048>);
assert_shapes!(Block<512, 8, 1024>);

fn main() {}
