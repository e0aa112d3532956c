//! Neural-network layers (`torch.nn`): the [`Module`] trait, the built-in layers with
//! PyTorch's parameter names and default initialisation, and their stateless forms in
//! [`functional`].

pub mod activation;
pub mod attention;
pub mod container;
pub mod dropout;
pub mod embedding;
pub mod functional;
pub mod init;
pub mod linear;
pub mod module;
pub mod norm;
pub mod rnn;
pub mod transformer;

pub use crate::ops::causal_mask;
pub use activation::{Activation, Gelu, LeakyReLU, LogSoftmax, ReLU, SiLU, Sigmoid, Softmax, Tanh};
pub use attention::{AttnMasks, MultiheadAttention, MultiheadAttentionConfig};
pub use container::{Residual, Sequential};
pub use dropout::{Dropout, Dropout2d, Dropout3d, VariationalDropout};
pub use embedding::Embedding;
pub use functional::padding_mask;
pub use linear::{Flatten, Identity, Linear};
pub use module::{
    check_input, walk, walk_mut, Entry, EntryMut, Forward, Layer, Module, ModuleExt, Summary,
    Visitor, VisitorMut,
};
pub use norm::{BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormConfig, LayerNorm};
pub use rnn::{
    GRUCell, LSTMCell, Nonlinearity, RNNCell, RecurrentConfig, RecurrentWeights, GRU, LSTM, RNN,
};
pub use transformer::{
    DecoderMasks, EncoderMasks, FeedForward, FeedForwardConfig, TransformerDecoder,
    TransformerDecoderLayer, TransformerEncoder, TransformerEncoderLayer, TransformerLayerConfig,
};
