// Passes: every kind of field, generics, enums with forward, and it runs.
use flint::nn::{Forward, Gelu, Linear, ModuleExt, ReLU};
use flint::{DType, Module, Tensor};

#[derive(Module)]
#[module(forward)]
enum Act {
    Relu(ReLU),
    Gelu(Gelu),
}

#[derive(Module)]
struct Block<A: Module> {
    fc: Linear,
    act: A,
}

#[derive(Module)]
#[module(name = "Network")]
struct Net {
    blocks: Vec<Block<Act>>,
    pair: [Linear; 2],
    head: Option<Linear>,
    #[module(param)]
    scale: Tensor,
    #[module(buffer)]
    steps: Option<Tensor>,
    #[module(skip)]
    cache: Tensor,
    #[module(rename = "type")]
    kind: Linear,
    width: usize,
    dtype: DType,
}

fn main() {
    let net = Net {
        blocks: vec![
            Block { fc: Linear::new(2, 2, ()), act: Act::Relu(ReLU) },
            Block { fc: Linear::new(2, 2, ()), act: Act::Gelu(Gelu::default()) },
        ],
        pair: [Linear::new(2, 2, ()), Linear::new(2, 2, ())],
        head: None,
        scale: flint::nn::init::ones([1], ()),
        steps: Some(Tensor::zeros([1], ())),
        cache: Tensor::zeros([1], ()),
        kind: Linear::new(2, 2, ()),
        width: 2,
        dtype: DType::F32,
    };
    let names: Vec<String> = net.state_dict().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names[0], "blocks.0.fc.weight");
    assert!(names.contains(&"pair.1.bias".to_string()));
    assert!(names.contains(&"type.weight".to_string()));
    assert!(names.contains(&"steps".to_string()));
    assert!(!names.iter().any(|n| n.starts_with("head") || n == "cache"));
    assert!(net.to_string().starts_with("Network("));
    let y = net.blocks[1].act.forward(&Tensor::ones([1, 2], ()));
    assert_eq!(y.shape(), &[1, 2]);
    let _ = (net.width, net.dtype, &net.cache);
}
