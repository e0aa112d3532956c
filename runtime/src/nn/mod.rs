//! Neural-network layers (`torch.nn`): the [`Module`] trait, the built-in layers with
//! PyTorch's parameter names and default initialisation, and their stateless forms in
//! [`functional`].

pub mod activation;
pub mod attention;
pub mod container;
pub mod conv;
pub mod dropout;
pub mod embedding;
pub mod functional;
pub mod init;
pub mod linear;
pub mod module;
pub mod norm;
pub mod pool;
pub mod rnn;
pub mod shape;
pub mod transformer;

pub use crate::ops::causal_mask;
pub use activation::{Activation, Gelu, LeakyReLU, LogSoftmax, ReLU, SiLU, Sigmoid, Softmax, Tanh};
pub use attention::{AttnMasks, MultiheadAttention, MultiheadAttentionConfig};
pub use container::{Residual, Sequential};
pub use conv::{
    conv1d, conv2d, conv3d, fold, unfold, Conv, Conv1d, Conv1dConfig, Conv2d, Conv2dConfig, Conv3d,
    Conv3dConfig, ConvConfig, IntoSpatial,
};
pub use dropout::{Dropout, Dropout2d, Dropout3d, VariationalDropout};
pub use embedding::Embedding;
pub use functional::padding_mask;
pub use linear::{Flatten, Identity, Linear};
pub use module::{
    check_input, walk, walk_mut, Entry, EntryMut, Forward, Layer, Module, ModuleExt, Summary,
    Visitor, VisitorMut,
};
pub use norm::{BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormConfig, LayerNorm};
pub use pool::{
    adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d, avg_pool1d, avg_pool2d,
    avg_pool3d, max_pool1d, max_pool2d, max_pool2d_with_indices, max_pool3d, AdaptiveAvgPool,
    AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool3d, AvgPool, AvgPool1d, AvgPool2d,
    AvgPool3d, MaxPool, MaxPool1d, MaxPool2d, MaxPool3d,
};
pub use rnn::{
    GRUCell, LSTMCell, Nonlinearity, RNNCell, RecurrentConfig, RecurrentWeights, GRU, LSTM, RNN,
};
pub use transformer::{
    DecoderMasks, EncoderMasks, FeedForward, FeedForwardConfig, TransformerDecoder,
    TransformerDecoderLayer, TransformerEncoder, TransformerEncoderLayer, TransformerLayerConfig,
};
