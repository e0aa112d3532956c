// Built and run (not only checked): the constructor forces the const assertions of the
// sizes used, and the forward pass runs, including the run-time entry check.
use flint::nn::{Forward, ModuleExt};
use flint::{assert_shapes, model, DType, Tensor};

const WIDTH: usize = 16;

/// A layer of the user's own, used in `model!` with a declared shape rule.
#[derive(flint::Module)]
pub struct Scale {
    #[module(param)]
    w: Tensor,
}

impl Scale {
    fn new(d: usize, opts: flint::TensorOptions) -> Self {
        Scale { w: flint::nn::init::ones([d], opts) }
    }
}

impl Forward for Scale {
    fn try_forward(&self, x: &Tensor) -> flint::Result<Tensor> {
        x.try_mul(&self.w)
    }
}

model! {
    /// A pre-LN encoder block.
    pub struct EncoderBlock<const D: usize, const H: usize, const FF: usize>
        where D % H == 0, FF == 4 * D
    {
        ln1: LayerNorm(D),
        attn: MultiheadAttention(D, heads = H, dropout = 0.1),
        ln2: LayerNorm(D),
        ff: FeedForward(D -> FF -> D, activation = Gelu, dropout = 0.1),
    }
    fn forward(x: [b, t, D], mask: Mask[t, t]) -> [b, t, D] {
        let x = x + attn(ln1(x), mask);
        x + ff(ln2(x))
    }

    /// Heads split by hand, a CNN, and a const item.
    pub struct Parts<const D: usize> {
        #[shape([.., D] -> [.., D])]
        scale: Scale = Scale::new(D, opts),
        qkv: Linear(D -> 3 * D),
        conv: Conv2d(1 -> 4, kernel = 3, padding = 1),
        pool: MaxPool2d(2),
        flat: Flatten,
        fc: Linear(4 * 4 * 4 -> WIDTH),
    }
    fn forward(x: [b, t, D], img: [b, 1, 8, 8]) -> [b, WIDTH] {
        let q = qkv(scale(x)).reshape([b, t, 3, D]).mean(2);
        let h = q.split_heads(2).merge_heads();
        let s = matmul(h, h.transpose(-2, -1)).softmax(-1);
        let feat = fc(flat(pool(conv(img).relu())));
        feat + s.mean(-1).mean(-1, true)
    }
}

assert_shapes!(EncoderBlock<8, 2, 32>);

fn main() {
    let block = EncoderBlock::<8, 2, 32>::new(());
    assert_eq!(block.named_parameters()[0].0, "ln1.weight");
    let x = Tensor::ones([2, 5, 8], ());
    let mask = flint::causal_mask(5);
    assert_eq!(block.forward(&x, &mask).shape(), &[2, 5, 8]);
    let bad = Tensor::zeros([2, 4, 4], DType::Bool);
    let err = block.try_forward(&x, &bad).unwrap_err().to_string();
    assert_eq!(
        err,
        "EncoderBlock::forward: argument `mask` should be [t, t], got [2, 4, 4]: rank 2, got rank 3"
    );
    let parts = Parts::<8>::new(());
    let y = parts.forward(&x, &Tensor::ones([2, 1, 8, 8], ()));
    assert_eq!(y.shape(), &[2, WIDTH]);
    let _ = Forward::try_forward(&block.ln1, &x).unwrap();
}
