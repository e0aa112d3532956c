//! Recurrent layers with PyTorch's semantics: [`RNN`] (tanh or ReLU), [`LSTM`] and
//! [`GRU`] over whole sequences, and the single-step [`RNNCell`], [`LSTMCell`] and
//! [`GRUCell`].
//!
//! The layers run one step at a time with ordinary differentiable tensor ops, so
//! backpropagation through time is plain autograd. The input projection `x W_ihᵀ` of a
//! layer is computed for every time step at once, in one matrix product over `[T·B, in]`;
//! only the recurrent product `h W_hhᵀ` runs per step.
//!
//! Parameter names, shapes, gate order and initialisation are PyTorch's, so a
//! `state_dict` moves between the two:
//! `weight_ih_l{k}` `[G·H, in]`, `weight_hh_l{k}` `[G·H, H]`, `bias_ih_l{k}` and
//! `bias_hh_l{k}` `[G·H]`, with `G` = 1 (RNN), 4 (LSTM: gates `i, f, g, o`) or 3 (GRU:
//! gates `r, z, n`), all uniform in `±1/√H`.
//!
//! Besides PyTorch's `dropout` between layers, [`RecurrentConfig`] offers *variational*
//! dropout (Gal & Ghahramani): a mask on the inputs of every layer and a mask on the
//! hidden state fed to the recurrent product, each drawn once per sequence (once per
//! forward call and layer, of shape `[B, features]`) and reused at every time step.
//!
//! Bidirectional layers and LSTM's `proj_size` are not implemented.
//!
//! ```
//! use flint_runtime::nn::{RecurrentConfig, LSTM};
//! use flint_runtime::Tensor;
//! let config = RecurrentConfig { num_layers: 2, batch_first: true, ..Default::default() };
//! let lstm = LSTM::with_config(8, 16, config, ());
//! let x = Tensor::zeros([4, 10, 8], ()); // [B, T, in]
//! let (y, (h_n, c_n)) = lstm.forward(&x, None);
//! assert_eq!(y.shape(), &[4, 10, 16]);
//! assert_eq!(h_n.shape(), &[2, 4, 16]);
//! assert_eq!(c_n.shape(), &[2, 4, 16]);
//! ```

use super::functional;
use super::init;
use super::module::{Forward, Module, Visitor, VisitorMut};
use crate::autograd::{is_grad_enabled, record};
use crate::cpu::lstm;
use crate::error::{or_panic, Error, Result};
use crate::layout::fmt_shape;
use crate::tensor::{Tensor, TensorOptions};

/// The nonlinearity of an [`RNN`] or [`RNNCell`]: `h' = act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh)`.
///
/// ```
/// use flint_runtime::nn::{Nonlinearity, RecurrentConfig, RNN};
/// let rnn = RNN::with_config(4, 8, Nonlinearity::Relu, RecurrentConfig::default(), ());
/// assert_eq!(rnn.nonlinearity, Nonlinearity::Relu);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Nonlinearity {
    /// `tanh` (PyTorch's default).
    #[default]
    Tanh,
    /// `relu`.
    Relu,
}

impl Nonlinearity {
    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Nonlinearity::Tanh => x.tanh(),
            Nonlinearity::Relu => x.relu(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Nonlinearity::Tanh => "tanh",
            Nonlinearity::Relu => "relu",
        }
    }
}

/// The options of [`RNN`], [`LSTM`] and [`GRU`]; `Default` gives PyTorch's defaults
/// (one layer, with biases, time-major, no dropout).
///
/// ```
/// use flint_runtime::nn::{RecurrentConfig, GRU};
/// let config = RecurrentConfig {
///     num_layers: 3,
///     batch_first: true,
///     dropout: 0.2,        // PyTorch's, between layers
///     input_dropout: 0.1,  // variational, on every layer's inputs
///     hidden_dropout: 0.3, // variational, on the recurrent state
///     ..Default::default()
/// };
/// let gru = GRU::with_config(8, 16, config, ());
/// assert_eq!(gru.num_layers(), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecurrentConfig {
    /// Number of stacked layers (≥ 1); layer `k > 0` reads the outputs of layer `k − 1`.
    pub num_layers: usize,
    /// Whether the layers have `bias_ih_l{k}` and `bias_hh_l{k}`.
    pub bias: bool,
    /// Inputs and outputs are `[B, T, F]` instead of `[T, B, F]` (states stay
    /// `[num_layers, B, H]`, as in PyTorch).
    pub batch_first: bool,
    /// PyTorch's dropout: on the outputs of every layer except the last, elementwise,
    /// in training only. In `[0, 1]`.
    pub dropout: f64,
    /// Variational dropout on the inputs of every layer: one `[B, in_k]` mask per
    /// forward call and layer, reused at every time step; training only. In `[0, 1)`;
    /// `0` turns it off.
    pub input_dropout: f64,
    /// Variational dropout on the hidden state fed to the recurrent product
    /// `h W_hhᵀ`: one `[B, H]` mask per forward call and layer, reused at every time
    /// step; training only. The state itself (outputs, `h_n`, the GRU's `z·h` term, the
    /// LSTM's cell) is not masked. In `[0, 1)`; `0` turns it off.
    pub hidden_dropout: f64,
}

impl Default for RecurrentConfig {
    fn default() -> Self {
        RecurrentConfig {
            num_layers: 1,
            bias: true,
            batch_first: false,
            dropout: 0.0,
            input_dropout: 0.0,
            hidden_dropout: 0.0,
        }
    }
}

/// The four parameters of one recurrent layer (or cell): `weight_ih` `[G·H, in]`,
/// `weight_hh` `[G·H, H]`, and the optional `bias_ih`, `bias_hh` `[G·H]`, gates stacked
/// in PyTorch's order.
///
/// ```
/// use flint_runtime::nn::LSTM;
/// let lstm = LSTM::new(3, 5, ());
/// assert_eq!(lstm.layers[0].weight_ih.shape(), &[20, 3]);
/// assert_eq!(lstm.layers[0].weight_hh.shape(), &[20, 5]);
/// ```
#[derive(Debug, Clone)]
pub struct RecurrentWeights {
    /// Input-to-hidden weights, `[G·H, in]`.
    pub weight_ih: Tensor,
    /// Hidden-to-hidden weights, `[G·H, H]`.
    pub weight_hh: Tensor,
    /// Input-to-hidden bias, `[G·H]`.
    pub bias_ih: Option<Tensor>,
    /// Hidden-to-hidden bias, `[G·H]`.
    pub bias_hh: Option<Tensor>,
}

impl RecurrentWeights {
    /// PyTorch's initialisation: everything uniform in `±1/√hidden`, drawn in the order
    /// `weight_ih, weight_hh, bias_ih, bias_hh`.
    fn new(gates: usize, input: usize, hidden: usize, bias: bool, opts: TensorOptions) -> Self {
        let bound = 1.0 / (hidden.max(1) as f64).sqrt();
        let g = gates * hidden;
        RecurrentWeights {
            weight_ih: init::uniform([g, input], bound, opts),
            weight_hh: init::uniform([g, hidden], bound, opts),
            bias_ih: bias.then(|| init::uniform([g], bound, opts)),
            bias_hh: bias.then(|| init::uniform([g], bound, opts)),
        }
    }

    fn visit(&self, v: &mut Visitor<'_>, suffix: &str) {
        v.param(&format!("weight_ih{suffix}"), &self.weight_ih);
        v.param(&format!("weight_hh{suffix}"), &self.weight_hh);
        v.param_opt(&format!("bias_ih{suffix}"), self.bias_ih.as_ref());
        v.param_opt(&format!("bias_hh{suffix}"), self.bias_hh.as_ref());
    }

    fn visit_mut(&mut self, v: &mut VisitorMut<'_>, suffix: &str) {
        v.param(&format!("weight_ih{suffix}"), &mut self.weight_ih);
        v.param(&format!("weight_hh{suffix}"), &mut self.weight_hh);
        v.param_opt(&format!("bias_ih{suffix}"), self.bias_ih.as_mut());
        v.param_opt(&format!("bias_hh{suffix}"), self.bias_hh.as_mut());
    }
}

/// Which recurrence a layer runs.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Rnn(Nonlinearity),
    Lstm,
    Gru,
}

impl Kind {
    fn gates(self) -> usize {
        match self {
            Kind::Rnn(_) => 1,
            Kind::Lstm => 4,
            Kind::Gru => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Rnn(_) => "RNN",
            Kind::Lstm => "LSTM",
            Kind::Gru => "GRU",
        }
    }

    fn cell_name(self) -> &'static str {
        match self {
            Kind::Rnn(_) => "RNNCell",
            Kind::Lstm => "LSTMCell",
            Kind::Gru => "GRUCell",
        }
    }

    /// Whether `b_hh` can be folded into the input projection (not for the GRU, whose
    /// `b_hn` sits inside `r ⊙ (W_hn h + b_hn)`).
    fn folds_hidden_bias(self) -> bool {
        !matches!(self, Kind::Gru)
    }
}

/// One time step. `gi` is the input projection `[B, G·H]` (biases the caller folded in
/// included); `h_in` is the state fed to the recurrent product (`h` under the
/// variational mask), `h` and `c` the state itself. Returns the new `(h, c)`.
fn step(
    kind: Kind,
    gi: &Tensor,
    h: &Tensor,
    h_in: &Tensor,
    c: Option<&Tensor>,
    w_hh_t: &Tensor,
    b_hh: Option<&Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    let mut gh = h_in.try_matmul(w_hh_t)?;
    if let Some(b) = b_hh {
        gh = gh.try_add(b)?;
    }
    match kind {
        Kind::Rnn(act) => Ok((act.apply(&gi.try_add(&gh)?), None)),
        Kind::Lstm => {
            let c = c.expect("an LSTM step always has a cell state");
            let (h2, c2) = lstm_cell(&gi.try_add(&gh)?, c)?;
            Ok((h2, Some(c2)))
        }
        Kind::Gru => {
            let a = gi.try_chunk(3, -1)?;
            let b = gh.try_chunk(3, -1)?;
            let r = a[0].try_add(&b[0])?.sigmoid();
            let z = a[1].try_add(&b[1])?.sigmoid();
            let n = a[2].try_add(&r.try_mul(&b[2])?)?.tanh();
            // (1 − z) ⊙ n + z ⊙ h
            let h2 = n.try_add(&z.try_mul(&h.try_sub(&n)?)?)?;
            Ok((h2, None))
        }
    }
}

/// The LSTM cell from the gate pre-activations `z` `[B, 4H]` (gates `i, f, g, o`) and the
/// cell state `c` `[B, H]`: `c' = σ(z_f) ⊙ c + σ(z_i) ⊙ tanh(z_g)`,
/// `h' = σ(z_o) ⊙ tanh(c')`. Returns `(h', c')`.
///
/// f32/f64 CPU tensors take the fused kernel ([`lstm::lstm_cell`]): one recorded node
/// (`lstm_cell`, inputs `z` and `c`, output `[h'; c']`) whose backward runs the fused
/// backward kernel, or under `create_graph` [`lstm_cell_grad_ops`]. Other dtypes and
/// devices take [`lstm_cell_composed`].
fn lstm_cell(z: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
    if !lstm::cell_supports(z, c) {
        return lstm_cell_composed(z, c);
    }
    const OP: &str = "LSTMCell";
    let (hc, act) = lstm::lstm_cell(OP, z, c)?;
    let hc = if is_grad_enabled() && (z.requires_grad() || c.requires_grad()) {
        let (zs, cs) = (z.clone(), c.clone());
        record(hc, "lstm_cell", &[z, c], &[z, c], move |g| {
            let (dz, dc) = if is_grad_enabled() {
                lstm_cell_grad_ops(&zs, &cs, g)
            } else {
                or_panic(lstm::lstm_cell_backward(OP, &act, &cs, g))
            };
            vec![Some(dz), Some(dc)]
        })
    } else {
        hc
    };
    Ok((hc.try_select(0, 0)?, hc.try_select(0, 1)?))
}

/// A whole LSTM layer over the time-major input projections `gi` (`[T, B, 4H]`, both
/// biases included) from the state `h0`, `c0` (`[B, H]`), with the recurrent weight
/// `w_hh` (`[4H, H]`) and an optional variational mask on the recurrent input. Returns
/// `(out [T, B, H], h_T, c_T)`. Inputs must pass [`lstm::layer_supports`].
///
/// One recorded node (`lstm_layer`, inputs `gi`, `w_hh`, `h0`, `c0`, output
/// `[h_1 … h_T; c_T]`) in place of a product, a sum and a cell node per step: its backward
/// runs backpropagation through time in [`lstm::lstm_layer_backward`], with the weight
/// gradient as one product over all steps, or under `create_graph`
/// [`lstm_layer_grad_ops`].
fn lstm_layer(
    gi: &Tensor,
    w_hh: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
    mask: Option<&Tensor>,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "LSTM";
    let (y, saved) = lstm::lstm_layer(OP, gi, w_hh, h0, c0, mask)?;
    let inputs = [gi, w_hh, h0, c0];
    let y = if is_grad_enabled() && inputs.iter().any(|t| t.requires_grad()) {
        let [gi_s, w_s, h0_s, c0_s] = inputs.map(Tensor::clone);
        let mask_s = mask.cloned();
        record(y, "lstm_layer", &inputs, &inputs, move |g| {
            let grads = if is_grad_enabled() {
                lstm_layer_grad_ops(&gi_s, &w_s, &h0_s, &c0_s, mask_s.as_ref(), g)
            } else {
                or_panic(lstm::lstm_layer_backward(
                    OP,
                    &saved,
                    &w_s,
                    &c0_s,
                    mask_s.as_ref(),
                    g,
                ))
            };
            grads.into_iter().map(Some).collect()
        })
    } else {
        y
    };
    let steps = gi.size(0) as isize;
    Ok((
        y.try_narrow(0, 0, steps as usize)?,
        y.try_select(0, steps - 1)?,
        y.try_select(0, steps)?,
    ))
}

/// The gradients `[dgi, dw_hh, dh0, dc0]` of [`lstm_layer`] from the gradient `g` of its
/// output (`[T + 1, B, H]`), as differentiable tensor ops (for `create_graph`): the forward
/// is re-run step by step with [`lstm_cell`], then backpropagation through time uses
/// [`lstm_cell_grad_ops`] and products with `w_hh`.
fn lstm_layer_grad_ops(
    gi: &Tensor,
    w_hh: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
    mask: Option<&Tensor>,
    g: &Tensor,
) -> [Tensor; 4] {
    let steps = gi.size(0);
    let masked = |h: &Tensor| match mask {
        Some(m) => h * m,
        None => h.clone(),
    };
    // forward: the recurrent inputs, pre-activations and cell states of every step
    let (mut hin, mut zs, mut cs) = (Vec::new(), Vec::new(), vec![c0.clone()]);
    let mut h = h0.clone();
    for t in 0..steps {
        hin.push(masked(&h));
        zs.push(gi.select(0, t as isize) + hin[t].matmul(&w_hh.t()));
        let (h2, c2) = or_panic(lstm_cell(&zs[t], &cs[t]));
        h = h2;
        cs.push(c2);
    }
    // backward through time
    let mut dz = vec![None; steps];
    let mut dh_carry: Option<Tensor> = None;
    let mut dc = g.select(0, steps as isize);
    for t in (0..steps).rev() {
        let dh = match &dh_carry {
            Some(d) => g.select(0, t as isize) + d,
            None => g.select(0, t as isize),
        };
        let (dz_t, dc_prev) = lstm_cell_grad_ops(&zs[t], &cs[t], &Tensor::stack(&[dh, dc], 0));
        dh_carry = Some(masked(&dz_t.matmul(w_hh)));
        dc = dc_prev;
        dz[t] = Some(dz_t);
    }
    let dz: Vec<Tensor> = dz.into_iter().flatten().collect();
    let dgi = Tensor::stack(&dz, 0);
    let dw = Tensor::cat(&dz, 0).t().matmul(&Tensor::cat(&hin, 0));
    let dh0 = dh_carry.unwrap_or_else(|| h0.zeros_like());
    [dgi, dw, dh0, dc]
}

/// [`lstm_cell`] as tensor ops (half types, CUDA tensors).
fn lstm_cell_composed(z: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
    let g = z.try_chunk(4, -1)?;
    let (i, f, gg, o) = (g[0].sigmoid(), g[1].sigmoid(), g[2].tanh(), g[3].sigmoid());
    let c2 = f.try_mul(c)?.try_add(&i.try_mul(&gg)?)?;
    let h2 = o.try_mul(c2.tanh())?;
    Ok((h2, c2))
}

/// The gradients `(dz, dc)` of [`lstm_cell`] from the output gradient `g = [dh'; dc']`
/// `[2, B, H]`, as differentiable tensor ops (for `create_graph`), with the activations
/// recomputed from `z`: with `dĉ = dc' + dh' ⊙ o ⊙ (1 − tanh² c')`,
/// `dz = [dĉ ⊙ g ⊙ i(1 − i), dĉ ⊙ c ⊙ f(1 − f), dĉ ⊙ i ⊙ (1 − g²), dh' ⊙ tanh c' ⊙ o(1 − o)]`
/// and `dc = dĉ ⊙ f`.
fn lstm_cell_grad_ops(z: &Tensor, c: &Tensor, g: &Tensor) -> (Tensor, Tensor) {
    let gates = z.chunk(4, -1);
    let (i, f, gg, o) = (
        gates[0].sigmoid(),
        gates[1].sigmoid(),
        gates[2].tanh(),
        gates[3].sigmoid(),
    );
    let t = (&f * c + &i * &gg).tanh();
    let (dh, dc) = (g.select(0, 0), g.select(0, 1));
    let dct = dc + &dh * &o * (1.0 - &t * &t);
    let dz = Tensor::cat(
        &[
            &dct * &gg * &i * (1.0 - &i),
            &dct * c * &f * (1.0 - &f),
            &dct * &i * (1.0 - &gg * &gg),
            &dh * &t * &o * (1.0 - &o),
        ],
        -1,
    );
    (dz, dct * &f)
}

/// A `[batch, features]` variational mask, or `None` when off.
fn variational_mask(
    training: bool,
    p: f64,
    batch: usize,
    features: usize,
    x: &Tensor,
) -> Result<Option<Tensor>> {
    if !training || p == 0.0 {
        return Ok(None);
    }
    functional::dropout_mask(&[batch, features], p, x.dtype())
        .try_to(x.device())
        .map(Some)
}

/// Everything a multi-layer forward needs.
struct Seq<'a> {
    kind: Kind,
    layers: &'a [RecurrentWeights],
    input_size: usize,
    hidden_size: usize,
    config: &'a RecurrentConfig,
    training: bool,
    /// Per-layer `(input mask, hidden mask)` used instead of drawing them (tests hold
    /// them fixed); `None` draws them as configured.
    masks: Option<&'a [LayerMasks]>,
}

/// The variational masks of one layer: on its inputs `[B, in_k]` and on its hidden
/// state `[B, H]`.
type LayerMasks = (Option<Tensor>, Option<Tensor>);

/// Output, `h_n`, and `c_n` (LSTM only).
type SeqOut = (Tensor, Tensor, Option<Tensor>);

impl Seq<'_> {
    fn run(&self, x: &Tensor, h0: Option<&Tensor>, c0: Option<&Tensor>) -> Result<SeqOut> {
        let name = self.kind.name();
        let (input_size, hidden) = (self.input_size, self.hidden_size);
        let cfg = self.config;
        let num_layers = self.layers.len();
        let batched = x.ndim() == 3;
        if !(x.ndim() == 2 || batched) || x.size(-1) != input_size {
            let want = if cfg.batch_first {
                format!("[B, T, {input_size}]")
            } else {
                format!("[T, B, {input_size}]")
            };
            return Err(Error::shape(
                name,
                format!(
                    "expected input of shape {want} or [T, {input_size}], got {}",
                    fmt_shape(x.shape())
                ),
            ));
        }
        // A batched view with time along `tdim`; unbatched `[T, in]` becomes `[T, 1, in]`.
        let (xb, tdim) = if batched {
            (x.clone(), usize::from(cfg.batch_first))
        } else {
            (x.try_unsqueeze(1)?, 0)
        };
        let steps = xb.size(tdim as isize);
        let batch = xb.size(1 - tdim as isize);
        if steps == 0 {
            return Err(Error::shape(
                name,
                format!(
                    "expected a sequence of at least one step, got input of shape {}",
                    fmt_shape(x.shape())
                ),
            ));
        }
        let state_shape: Vec<usize> = if batched {
            vec![num_layers, batch, hidden]
        } else {
            vec![num_layers, hidden]
        };
        let check_state = |t: Option<&Tensor>, what: &str| -> Result<Option<Tensor>> {
            match t {
                None => Ok(None),
                Some(t) if t.shape() == state_shape.as_slice() => Ok(Some(if batched {
                    t.clone()
                } else {
                    t.try_unsqueeze(1)?
                })),
                Some(t) => Err(Error::shape(
                    name,
                    format!(
                        "expected {what} of shape {}, got {}",
                        fmt_shape(&state_shape),
                        fmt_shape(t.shape())
                    ),
                )),
            }
        };
        let h0 = check_state(h0, "h0")?;
        let c0 = check_state(c0, "c0")?;
        let zeros = || Tensor::zeros([batch, hidden], (xb.dtype(), xb.device()));
        let gates = self.kind.gates() * hidden;
        let fold = self.kind.folds_hidden_bias();
        let is_lstm = matches!(self.kind, Kind::Lstm);

        let mut inp = xb.clone();
        let (mut hs, mut cs) = (Vec::with_capacity(num_layers), Vec::new());
        for (k, w) in self.layers.iter().enumerate() {
            let features = inp.size(2);
            // One mask per sequence and layer, drawn before the first step.
            let (imask, hmask) = match self.masks {
                Some(given) => given[k].clone(),
                None => (
                    variational_mask(self.training, cfg.input_dropout, batch, features, &inp)?,
                    variational_mask(self.training, cfg.hidden_dropout, batch, hidden, &inp)?,
                ),
            };
            if let Some(m) = imask {
                inp = inp.try_mul(&m.try_unsqueeze(tdim as isize)?)?;
            }
            // The input projection of every time step in one product over [T·B, in].
            let (d0, d1) = (inp.size(0), inp.size(1));
            // both biases summed first ([G] elements), then added by the product
            let bias = match (&w.bias_ih, w.bias_hh.as_ref().filter(|_| fold)) {
                (Some(a), Some(b)) => Some(a.try_add(b)?),
                (a, b) => a.as_ref().or(b).cloned(),
            };
            let gi = functional::linear(
                &inp.try_reshape([d0 * d1, features])?,
                &w.weight_ih,
                bias.as_ref(),
            )?
            .try_reshape([d0, d1, gates])?;
            let b_hh = if fold { None } else { w.bias_hh.as_ref() };
            let w_hh_t = w.weight_hh.t();
            let mut h = match &h0 {
                Some(h0) => h0.try_select(0, k as isize)?,
                None => zeros(),
            };
            let mut c = match (&c0, is_lstm) {
                (Some(c0), true) => Some(c0.try_select(0, k as isize)?),
                (None, true) => Some(zeros()),
                (_, false) => None,
            };
            // the whole layer in one fused node (LSTM on f32/f64 host tensors)
            let gi_tm = if tdim == 0 {
                gi.clone()
            } else {
                gi.try_transpose(0, 1)?
            };
            let fused = match &c {
                Some(c0) if b_hh.is_none() => {
                    lstm::layer_supports(&gi_tm, &w.weight_hh, &h, c0, hmask.as_ref())
                }
                _ => false,
            };
            let mut out = if let (true, Some(c0)) = (fused, &c) {
                let (out, h_n, c_n) = lstm_layer(&gi_tm, &w.weight_hh, &h, c0, hmask.as_ref())?;
                h = h_n;
                c = Some(c_n);
                if tdim == 0 {
                    out
                } else {
                    out.try_transpose(0, 1)?
                }
            } else {
                let mut outs = Vec::with_capacity(steps);
                for t in 0..steps {
                    let g = gi.try_select(tdim as isize, t as isize)?;
                    let h_in = match &hmask {
                        Some(m) => h.try_mul(m)?,
                        None => h.clone(),
                    };
                    let (h2, c2) = step(self.kind, &g, &h, &h_in, c.as_ref(), &w_hh_t, b_hh)?;
                    h = h2;
                    c = c2;
                    outs.push(h.clone());
                }
                Tensor::try_stack(&outs, tdim as isize)?
            };
            if k + 1 < num_layers {
                out = functional::dropout(&out, cfg.dropout, self.training)?;
            }
            hs.push(h);
            cs.extend(c);
            inp = out;
        }
        let mut h_n = Tensor::try_stack(&hs, 0)?;
        let mut c_n = if is_lstm {
            Some(Tensor::try_stack(&cs, 0)?)
        } else {
            None
        };
        let mut out = inp;
        if !batched {
            out = out.squeeze_dim(1);
            h_n = h_n.squeeze_dim(1);
            c_n = c_n.map(|c| c.squeeze_dim(1));
        }
        Ok((out, h_n, c_n))
    }
}

/// Builds the layers, checking the configuration (panics name `name`).
#[track_caller]
fn build_layers(
    name: &str,
    kind: Kind,
    input_size: usize,
    hidden_size: usize,
    config: &RecurrentConfig,
    opts: TensorOptions,
) -> Vec<RecurrentWeights> {
    assert!(
        config.num_layers >= 1,
        "{name}: num_layers must be at least 1, got 0"
    );
    assert!(
        hidden_size >= 1,
        "{name}: hidden_size must be at least 1, got 0"
    );
    assert!(
        (0.0..=1.0).contains(&config.dropout),
        "{name}: dropout must be in [0, 1], got {}",
        config.dropout
    );
    for (what, p) in [
        ("input_dropout", config.input_dropout),
        ("hidden_dropout", config.hidden_dropout),
    ] {
        assert!(
            (0.0..1.0).contains(&p),
            "{name}: {what} must be in [0, 1), got {p}"
        );
    }
    (0..config.num_layers)
        .map(|k| {
            let inp = if k == 0 { input_size } else { hidden_size };
            RecurrentWeights::new(kind.gates(), inp, hidden_size, config.bias, opts)
        })
        .collect()
}

fn layers_repr(
    input_size: usize,
    hidden_size: usize,
    config: &RecurrentConfig,
    nonlinearity: Option<Nonlinearity>,
) -> String {
    let mut s = format!("{input_size}, {hidden_size}");
    if config.num_layers != 1 {
        s += &format!(", num_layers={}", config.num_layers);
    }
    if let Some(nl) = nonlinearity.filter(|&n| n != Nonlinearity::Tanh) {
        s += &format!(", nonlinearity={}", nl.name());
    }
    if !config.bias {
        s += ", bias=false";
    }
    if config.batch_first {
        s += ", batch_first=true";
    }
    if config.dropout != 0.0 {
        s += &format!(", dropout={}", config.dropout);
    }
    if config.input_dropout != 0.0 {
        s += &format!(", input_dropout={}", config.input_dropout);
    }
    if config.hidden_dropout != 0.0 {
        s += &format!(", hidden_dropout={}", config.hidden_dropout);
    }
    s
}

/// Accessors, `Module` and `Display` shared by the three sequence layers.
macro_rules! recurrent_layer_common {
    ($t:ident) => {
        impl $t {
            /// Features of the input sequence.
            pub fn input_size(&self) -> usize {
                self.input_size
            }

            /// Features of the hidden state and of the output.
            pub fn hidden_size(&self) -> usize {
                self.hidden_size
            }

            /// Number of stacked layers.
            pub fn num_layers(&self) -> usize {
                self.layers.len()
            }

            /// The configuration the layer was built with.
            pub fn config(&self) -> &RecurrentConfig {
                &self.config
            }

            fn seq(&self) -> Seq<'_> {
                Seq {
                    kind: self.kind(),
                    layers: &self.layers,
                    input_size: self.input_size,
                    hidden_size: self.hidden_size,
                    config: &self.config,
                    training: self.training,
                    masks: None,
                }
            }
        }

        impl Module for $t {
            fn visit(&self, v: &mut Visitor<'_>) {
                for (k, w) in self.layers.iter().enumerate() {
                    w.visit(v, &format!("_l{k}"));
                }
            }
            fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
                for (k, w) in self.layers.iter_mut().enumerate() {
                    w.visit_mut(v, &format!("_l{k}"));
                }
            }
            fn extra_repr(&self) -> String {
                let nl = match self.kind() {
                    Kind::Rnn(nl) => Some(nl),
                    _ => None,
                };
                layers_repr(self.input_size, self.hidden_size, &self.config, nl)
            }
            fn set_own_training(&mut self, training: bool) {
                self.training = training;
            }
            fn own_training(&self) -> Option<bool> {
                Some(self.training)
            }
        }

        crate::impl_module_display!($t);
    };
}

/// An Elman RNN, `h_t = act(x_t W_ihᵀ + b_ih + h_{t−1} W_hhᵀ + b_hh)`, stacked
/// `num_layers` deep (PyTorch's `nn.RNN`).
///
/// Input `[T, B, in]` (`[B, T, in]` with `batch_first`, or unbatched `[T, in]`);
/// optional `h0` `[num_layers, B, H]` (zeros when absent). Returns the last layer's
/// outputs `[T, B, H]` (batch-first like the input) and `h_n` `[num_layers, B, H]`.
///
/// ```
/// use flint_runtime::nn::RNN;
/// use flint_runtime::Tensor;
/// let rnn = RNN::new(8, 16, ());
/// let (y, h_n) = rnn.forward(&Tensor::zeros([5, 3, 8], ()), None);
/// assert_eq!((y.shape(), h_n.shape()), (&[5usize, 3, 16][..], &[1usize, 3, 16][..]));
/// let err = rnn.try_forward(&Tensor::zeros([5, 3, 7], ()), None).unwrap_err();
/// assert_eq!(err.to_string(), "RNN: expected input of shape [T, B, 8] or [T, 8], got [5, 3, 7]");
/// ```
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone)]
pub struct RNN {
    /// The weights of each layer (`weight_ih_l{k}`, …), `G = 1`.
    pub layers: Vec<RecurrentWeights>,
    /// `tanh` or `relu`.
    pub nonlinearity: Nonlinearity,
    input_size: usize,
    hidden_size: usize,
    config: RecurrentConfig,
    training: bool,
}

impl RNN {
    /// A one-layer tanh RNN with biases, in the dtype and on the device of `opts`.
    pub fn new(input_size: usize, hidden_size: usize, opts: impl Into<TensorOptions>) -> RNN {
        RNN::with_config(
            input_size,
            hidden_size,
            Nonlinearity::Tanh,
            RecurrentConfig::default(),
            opts,
        )
    }

    /// An RNN with a chosen nonlinearity and configuration. Panics on an invalid
    /// configuration (no layers, probabilities out of range).
    #[track_caller]
    pub fn with_config(
        input_size: usize,
        hidden_size: usize,
        nonlinearity: Nonlinearity,
        config: RecurrentConfig,
        opts: impl Into<TensorOptions>,
    ) -> RNN {
        let kind = Kind::Rnn(nonlinearity);
        RNN {
            layers: build_layers("RNN", kind, input_size, hidden_size, &config, opts.into()),
            nonlinearity,
            input_size,
            hidden_size,
            config,
            training: true,
        }
    }

    fn kind(&self) -> Kind {
        Kind::Rnn(self.nonlinearity)
    }

    /// Runs the sequence: `(output, h_n)`. Panics when a shape does not fit.
    #[track_caller]
    pub fn forward(&self, x: &Tensor, h0: Option<&Tensor>) -> (Tensor, Tensor) {
        or_panic(self.try_forward(x, h0))
    }

    /// Fallible [`RNN::forward`].
    pub fn try_forward(&self, x: &Tensor, h0: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let (y, h, _) = self.seq().run(x, h0, None)?;
        Ok((y, h))
    }
}

recurrent_layer_common!(RNN);

/// The output sequence only, from a zero state: for [`Sequential`](super::Sequential).
impl Forward for RNN {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(RNN::try_forward(self, x, None)?.0)
    }
}

/// A long short-term memory network (PyTorch's `nn.LSTM`):
///
/// ```text
/// i, f, g, o = σ(·), σ(·), tanh(·), σ(·) of  x_t W_ihᵀ + b_ih + h_{t−1} W_hhᵀ + b_hh
/// c_t = f ⊙ c_{t−1} + i ⊙ g        h_t = o ⊙ tanh(c_t)
/// ```
///
/// Input `[T, B, in]` (`[B, T, in]` with `batch_first`, or unbatched `[T, in]`);
/// optional `(h0, c0)`, each `[num_layers, B, H]`. Returns the last layer's outputs and
/// `(h_n, c_n)`.
///
/// ```
/// use flint_runtime::nn::LSTM;
/// use flint_runtime::Tensor;
/// let lstm = LSTM::new(8, 16, ());
/// let x = Tensor::zeros([5, 3, 8], ());
/// let h0 = Tensor::zeros([1, 3, 16], ());
/// let c0 = Tensor::zeros([1, 3, 16], ());
/// let (y, (h_n, c_n)) = lstm.forward(&x, Some((&h0, &c0)));
/// assert_eq!(y.shape(), &[5, 3, 16]);
/// let err = lstm.try_forward(&x, Some((&h0, &Tensor::zeros([1, 16], ())))).unwrap_err();
/// assert_eq!(err.to_string(), "LSTM: expected c0 of shape [1, 3, 16], got [1, 16]");
/// ```
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone)]
pub struct LSTM {
    /// The weights of each layer (`weight_ih_l{k}`, …), gates `i, f, g, o`.
    pub layers: Vec<RecurrentWeights>,
    input_size: usize,
    hidden_size: usize,
    config: RecurrentConfig,
    training: bool,
}

impl LSTM {
    /// A one-layer LSTM with biases, in the dtype and on the device of `opts`.
    pub fn new(input_size: usize, hidden_size: usize, opts: impl Into<TensorOptions>) -> LSTM {
        LSTM::with_config(input_size, hidden_size, RecurrentConfig::default(), opts)
    }

    /// An LSTM with a configuration. Panics on an invalid configuration.
    #[track_caller]
    pub fn with_config(
        input_size: usize,
        hidden_size: usize,
        config: RecurrentConfig,
        opts: impl Into<TensorOptions>,
    ) -> LSTM {
        LSTM {
            layers: build_layers(
                "LSTM",
                Kind::Lstm,
                input_size,
                hidden_size,
                &config,
                opts.into(),
            ),
            input_size,
            hidden_size,
            config,
            training: true,
        }
    }

    fn kind(&self) -> Kind {
        Kind::Lstm
    }

    /// Runs the sequence: `(output, (h_n, c_n))`. Panics when a shape does not fit.
    #[track_caller]
    pub fn forward(
        &self,
        x: &Tensor,
        state: Option<(&Tensor, &Tensor)>,
    ) -> (Tensor, (Tensor, Tensor)) {
        or_panic(self.try_forward(x, state))
    }

    /// Fallible [`LSTM::forward`].
    pub fn try_forward(
        &self,
        x: &Tensor,
        state: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let (h0, c0) = state.unzip();
        let (y, h, c) = self.seq().run(x, h0, c0)?;
        let c = c.expect("an LSTM returns a cell state");
        Ok((y, (h, c)))
    }
}

recurrent_layer_common!(LSTM);

/// The output sequence only, from a zero state: for [`Sequential`](super::Sequential).
impl Forward for LSTM {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(LSTM::try_forward(self, x, None)?.0)
    }
}

/// A gated recurrent unit network (PyTorch's `nn.GRU`):
///
/// ```text
/// r = σ(x W_irᵀ + b_ir + h W_hrᵀ + b_hr)      z = σ(x W_izᵀ + b_iz + h W_hzᵀ + b_hz)
/// n = tanh(x W_inᵀ + b_in + r ⊙ (h W_hnᵀ + b_hn))      h' = (1 − z) ⊙ n + z ⊙ h
/// ```
///
/// Shapes as for [`RNN`].
///
/// ```
/// use flint_runtime::nn::{RecurrentConfig, GRU};
/// use flint_runtime::Tensor;
/// let gru = GRU::with_config(8, 16, RecurrentConfig { batch_first: true, ..Default::default() }, ());
/// let (y, h_n) = gru.forward(&Tensor::zeros([3, 5, 8], ()), None);
/// assert_eq!((y.shape(), h_n.shape()), (&[3usize, 5, 16][..], &[1usize, 3, 16][..]));
/// let err = gru.try_forward(&Tensor::zeros([3, 5], ()), None).unwrap_err();
/// assert_eq!(err.to_string(), "GRU: expected input of shape [B, T, 8] or [T, 8], got [3, 5]");
/// ```
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone)]
pub struct GRU {
    /// The weights of each layer (`weight_ih_l{k}`, …), gates `r, z, n`.
    pub layers: Vec<RecurrentWeights>,
    input_size: usize,
    hidden_size: usize,
    config: RecurrentConfig,
    training: bool,
}

impl GRU {
    /// A one-layer GRU with biases, in the dtype and on the device of `opts`.
    pub fn new(input_size: usize, hidden_size: usize, opts: impl Into<TensorOptions>) -> GRU {
        GRU::with_config(input_size, hidden_size, RecurrentConfig::default(), opts)
    }

    /// A GRU with a configuration. Panics on an invalid configuration.
    #[track_caller]
    pub fn with_config(
        input_size: usize,
        hidden_size: usize,
        config: RecurrentConfig,
        opts: impl Into<TensorOptions>,
    ) -> GRU {
        GRU {
            layers: build_layers(
                "GRU",
                Kind::Gru,
                input_size,
                hidden_size,
                &config,
                opts.into(),
            ),
            input_size,
            hidden_size,
            config,
            training: true,
        }
    }

    fn kind(&self) -> Kind {
        Kind::Gru
    }

    /// Runs the sequence: `(output, h_n)`. Panics when a shape does not fit.
    #[track_caller]
    pub fn forward(&self, x: &Tensor, h0: Option<&Tensor>) -> (Tensor, Tensor) {
        or_panic(self.try_forward(x, h0))
    }

    /// Fallible [`GRU::forward`].
    pub fn try_forward(&self, x: &Tensor, h0: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let (y, h, _) = self.seq().run(x, h0, None)?;
        Ok((y, h))
    }
}

recurrent_layer_common!(GRU);

/// The output sequence only, from a zero state: for [`Sequential`](super::Sequential).
impl Forward for GRU {
    fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(GRU::try_forward(self, x, None)?.0)
    }
}

// ------------------------------------------------------------------------------ cells

/// One step of a cell: checks `x` `[B, in]`/`[in]` and the states `[B, H]`/`[H]`.
fn cell_forward(
    kind: Kind,
    w: &RecurrentWeights,
    x: &Tensor,
    h: Option<&Tensor>,
    c: Option<&Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    let name = kind.cell_name();
    let (input_size, hidden) = (w.weight_ih.size(1), w.weight_hh.size(1));
    let batched = x.ndim() == 2;
    if !(x.ndim() == 1 || batched) || x.size(-1) != input_size {
        return Err(Error::shape(
            name,
            format!(
                "expected input of shape [B, {input_size}] or [{input_size}], got {}",
                fmt_shape(x.shape())
            ),
        ));
    }
    let xb = if batched {
        x.clone()
    } else {
        x.try_unsqueeze(0)?
    };
    let batch = xb.size(0);
    let state_shape: Vec<usize> = if batched {
        vec![batch, hidden]
    } else {
        vec![hidden]
    };
    let state = |t: Option<&Tensor>, what: &str| -> Result<Tensor> {
        match t {
            None => Ok(Tensor::zeros([batch, hidden], (xb.dtype(), xb.device()))),
            Some(t) if t.shape() == state_shape.as_slice() => {
                if batched {
                    Ok(t.clone())
                } else {
                    t.try_unsqueeze(0)
                }
            }
            Some(t) => Err(Error::shape(
                name,
                format!(
                    "expected {what} of shape {}, got {}",
                    fmt_shape(&state_shape),
                    fmt_shape(t.shape())
                ),
            )),
        }
    };
    let h = state(h, "h")?;
    let c = match kind {
        Kind::Lstm => Some(state(c, "c")?),
        _ => None,
    };
    let mut gi = xb.try_matmul(&w.weight_ih.t())?;
    if let Some(b) = &w.bias_ih {
        gi = gi.try_add(b)?;
    }
    let (h2, c2) = step(
        kind,
        &gi,
        &h,
        &h,
        c.as_ref(),
        &w.weight_hh.t(),
        w.bias_hh.as_ref(),
    )?;
    if batched {
        Ok((h2, c2))
    } else {
        Ok((h2.squeeze_dim(0), c2.map(|c| c.squeeze_dim(0))))
    }
}

/// Accessors, `Module` and `Display` shared by the three cells.
macro_rules! cell_common {
    ($t:ident) => {
        impl $t {
            /// Features of the input.
            pub fn input_size(&self) -> usize {
                self.weights.weight_ih.size(1)
            }

            /// Features of the hidden state.
            pub fn hidden_size(&self) -> usize {
                self.weights.weight_hh.size(1)
            }
        }

        impl Module for $t {
            fn visit(&self, v: &mut Visitor<'_>) {
                self.weights.visit(v, "");
            }
            fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
                self.weights.visit_mut(v, "");
            }
            fn extra_repr(&self) -> String {
                let kind = self.kind();
                let mut s = format!("{}, {}", self.input_size(), self.hidden_size());
                if self.weights.bias_ih.is_none() {
                    s += ", bias=false";
                }
                if let Kind::Rnn(Nonlinearity::Relu) = kind {
                    s += ", nonlinearity=relu";
                }
                s
            }
        }

        crate::impl_module_display!($t);
    };
}

/// One step of an Elman RNN (PyTorch's `nn.RNNCell`), with parameters `weight_ih`
/// `[H, in]`, `weight_hh` `[H, H]`, `bias_ih`, `bias_hh` `[H]`.
///
/// ```
/// use flint_runtime::nn::RNNCell;
/// use flint_runtime::Tensor;
/// let cell = RNNCell::new(4, 8, ());
/// let mut h = Tensor::zeros([2, 8], ());
/// for t in 0..3 {
///     h = cell.forward(&Tensor::ones([2, 4], ()), Some(&h));
/// }
/// assert_eq!(h.shape(), &[2, 8]);
/// ```
#[derive(Debug, Clone)]
pub struct RNNCell {
    /// `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`.
    pub weights: RecurrentWeights,
    /// `tanh` or `relu`.
    pub nonlinearity: Nonlinearity,
}

impl RNNCell {
    /// A tanh cell with biases.
    pub fn new(input_size: usize, hidden_size: usize, opts: impl Into<TensorOptions>) -> RNNCell {
        RNNCell::with_config(input_size, hidden_size, true, Nonlinearity::Tanh, opts)
    }

    /// A cell with or without biases and with a chosen nonlinearity.
    pub fn with_config(
        input_size: usize,
        hidden_size: usize,
        bias: bool,
        nonlinearity: Nonlinearity,
        opts: impl Into<TensorOptions>,
    ) -> RNNCell {
        RNNCell {
            weights: RecurrentWeights::new(1, input_size, hidden_size, bias, opts.into()),
            nonlinearity,
        }
    }

    /// `h' = act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh)` for `x` `[B, in]` (or `[in]`) and `h`
    /// `[B, H]` (or `[H]`; zeros when absent). Panics when a shape does not fit.
    #[track_caller]
    pub fn forward(&self, x: &Tensor, h: Option<&Tensor>) -> Tensor {
        or_panic(self.try_forward(x, h))
    }

    /// Fallible [`RNNCell::forward`].
    pub fn try_forward(&self, x: &Tensor, h: Option<&Tensor>) -> Result<Tensor> {
        Ok(cell_forward(self.kind(), &self.weights, x, h, None)?.0)
    }

    fn kind(&self) -> Kind {
        Kind::Rnn(self.nonlinearity)
    }
}

cell_common!(RNNCell);

/// One LSTM step (PyTorch's `nn.LSTMCell`), with parameters `weight_ih` `[4H, in]`,
/// `weight_hh` `[4H, H]`, `bias_ih`, `bias_hh` `[4H]` (gates `i, f, g, o`).
///
/// ```
/// use flint_runtime::nn::LSTMCell;
/// use flint_runtime::Tensor;
/// let cell = LSTMCell::new(4, 8, ());
/// let (h, c) = cell.forward(&Tensor::ones([2, 4], ()), None);
/// let (h, c) = cell.forward(&Tensor::ones([2, 4], ()), Some((&h, &c)));
/// assert_eq!((h.shape(), c.shape()), (&[2usize, 8][..], &[2usize, 8][..]));
/// ```
#[derive(Debug, Clone)]
pub struct LSTMCell {
    /// `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`.
    pub weights: RecurrentWeights,
}

impl LSTMCell {
    /// A cell with biases.
    pub fn new(input_size: usize, hidden_size: usize, opts: impl Into<TensorOptions>) -> LSTMCell {
        LSTMCell::with_bias(input_size, hidden_size, true, opts)
    }

    /// A cell with or without biases.
    pub fn with_bias(
        input_size: usize,
        hidden_size: usize,
        bias: bool,
        opts: impl Into<TensorOptions>,
    ) -> LSTMCell {
        LSTMCell {
            weights: RecurrentWeights::new(4, input_size, hidden_size, bias, opts.into()),
        }
    }

    /// One step: `(h', c')` for `x` `[B, in]` (or `[in]`) and the state `(h, c)`, each
    /// `[B, H]` (or `[H]`; zeros when absent). Panics when a shape does not fit.
    #[track_caller]
    pub fn forward(&self, x: &Tensor, state: Option<(&Tensor, &Tensor)>) -> (Tensor, Tensor) {
        or_panic(self.try_forward(x, state))
    }

    /// Fallible [`LSTMCell::forward`].
    pub fn try_forward(
        &self,
        x: &Tensor,
        state: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, Tensor)> {
        let (h, c) = state.unzip();
        let (h, c) = cell_forward(self.kind(), &self.weights, x, h, c)?;
        Ok((h, c.expect("an LSTM cell returns a cell state")))
    }

    fn kind(&self) -> Kind {
        Kind::Lstm
    }
}

cell_common!(LSTMCell);

/// One GRU step (PyTorch's `nn.GRUCell`), with parameters `weight_ih` `[3H, in]`,
/// `weight_hh` `[3H, H]`, `bias_ih`, `bias_hh` `[3H]` (gates `r, z, n`).
///
/// ```
/// use flint_runtime::nn::GRUCell;
/// use flint_runtime::Tensor;
/// let cell = GRUCell::new(4, 8, ());
/// let h = cell.forward(&Tensor::ones([4], ()), None); // unbatched
/// assert_eq!(h.shape(), &[8]);
/// ```
#[derive(Debug, Clone)]
pub struct GRUCell {
    /// `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`.
    pub weights: RecurrentWeights,
}

impl GRUCell {
    /// A cell with biases.
    pub fn new(input_size: usize, hidden_size: usize, opts: impl Into<TensorOptions>) -> GRUCell {
        GRUCell::with_bias(input_size, hidden_size, true, opts)
    }

    /// A cell with or without biases.
    pub fn with_bias(
        input_size: usize,
        hidden_size: usize,
        bias: bool,
        opts: impl Into<TensorOptions>,
    ) -> GRUCell {
        GRUCell {
            weights: RecurrentWeights::new(3, input_size, hidden_size, bias, opts.into()),
        }
    }

    /// One step `h'` for `x` `[B, in]` (or `[in]`) and `h` `[B, H]` (or `[H]`; zeros when
    /// absent). Panics when a shape does not fit.
    #[track_caller]
    pub fn forward(&self, x: &Tensor, h: Option<&Tensor>) -> Tensor {
        or_panic(self.try_forward(x, h))
    }

    /// Fallible [`GRUCell::forward`].
    pub fn try_forward(&self, x: &Tensor, h: Option<&Tensor>) -> Result<Tensor> {
        Ok(cell_forward(self.kind(), &self.weights, x, h, None)?.0)
    }

    fn kind(&self) -> Kind {
        Kind::Gru
    }
}

cell_common!(GRUCell);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::{gradcheck, GradcheckOptions, NoGradGuard};
    use crate::dtype::DType;
    use crate::loss::{mse_loss, Reduction};
    use crate::nn::{Linear, ModuleExt, Sequential};
    use crate::optim::{Adam, Optimizer};

    // ------------------------------------------------------------ PyTorch references
    //
    // All reference numbers come from this script (torch 2.15, float64):
    //
    //   torch.set_default_dtype(torch.float64)
    //   I, H, L, B, T = 3, 4, 2, 2, 3
    //   def fill(m):  # parameter j (named_parameters order): 0.5*sin(0.37*i + 0.9*j + 0.1)
    //       with torch.no_grad():
    //           for j, (n, p) in enumerate(m.named_parameters()):
    //               i = torch.arange(p.numel(), dtype=torch.float64)
    //               p.copy_((0.5 * torch.sin(0.37 * i + 0.9 * j + 0.1)).reshape(p.shape))
    //   x = torch.cos(0.29 * torch.arange(B * T * I)).reshape(B, T, I)
    //   h0 = 0.3 * torch.sin(0.5 * torch.arange(L * B * H) + 1.0).reshape(L, B, H)
    //   c0 = 0.2 * torch.cos(0.4 * torch.arange(L * B * H)).reshape(L, B, H)
    //   m = torch.nn.LSTM(I, H, num_layers=L, batch_first=True); fill(m)
    //   y, (hn, cn) = m(x, (h0, c0))            # likewise GRU, RNN tanh/relu with h0
    //   cell = torch.nn.LSTMCell(I, H); fill(cell)
    //   h1, c1 = cell(x[:, 0, :], (h0[0], c0[0]))  # likewise GRUCell, RNNCell

    const LSTM_OUT: [f64; 24] = [
        0.07132431764925054,
        0.10447471497620636,
        -0.07270939649516316,
        -0.08522593910228309,
        0.1138470263951976,
        0.16443728382542377,
        -0.08330536416428705,
        -0.14524411869083578,
        0.11107604463396538,
        0.10182979219826856,
        -0.07448940550209206,
        -0.20852393194850058,
        -0.005662071377205825,
        -0.002477320185047001,
        0.12135111330306494,
        0.019563401536560703,
        0.030429456937485687,
        0.012768663731077542,
        0.06354873387239397,
        -0.0792626006431876,
        0.06953206957657536,
        0.06507962058776662,
        0.025577130665081438,
        -0.1345314810299586,
    ];
    const LSTM_HN: [f64; 16] = [
        -0.2094646226884141,
        -0.14697040260761296,
        0.07440305831713048,
        0.2391156973119327,
        -0.3625788910858051,
        -0.11911979152877994,
        0.0020173929894065036,
        0.06372666266965345,
        0.11107604463396538,
        0.10182979219826856,
        -0.07448940550209206,
        -0.20852393194850058,
        0.06953206957657536,
        0.06507962058776662,
        0.025577130665081438,
        -0.1345314810299586,
    ];
    const LSTM_CN: [f64; 16] = [
        -0.5264575889914831,
        -0.32827370893083074,
        0.0986682576095563,
        0.27913653991856585,
        -0.6842010370096423,
        -0.18922457878407495,
        0.0030021631212454464,
        0.08845423240605244,
        0.38790036526007476,
        0.38190119379225057,
        -0.24524151846992734,
        -0.7390187161258684,
        0.23792837727302102,
        0.20270827085682705,
        0.07978107859421478,
        -0.507951133990546,
    ];
    const GRU_OUT: [f64; 24] = [
        -0.1095266113638027,
        -0.04514629713027507,
        -0.09986060959062515,
        -0.32609964620459553,
        0.025932159864401894,
        0.09376564342387161,
        -0.0959475231290513,
        -0.5825334330334669,
        0.12009811196587061,
        0.17536575163978274,
        -0.06418508711800298,
        -0.555340894917908,
        0.1593546458474997,
        0.13141626070668183,
        0.2998518878032401,
        0.20482227415181908,
        0.162535973939569,
        0.05833712522655672,
        0.2861270519098731,
        0.15134736169985785,
        0.209621475191482,
        0.1370958617114849,
        0.2490735516619832,
        -0.09044528193139156,
    ];
    const GRU_HN: [f64; 16] = [
        -0.5833853734625791,
        -0.29004201896004717,
        0.14371077392950532,
        0.26683532433937096,
        -0.4482492294211913,
        -0.06442759197273434,
        -0.02565639621209978,
        -0.06793505321127777,
        0.12009811196587061,
        0.17536575163978274,
        -0.06418508711800298,
        -0.555340894917908,
        0.209621475191482,
        0.1370958617114849,
        0.2490735516619832,
        -0.09044528193139156,
    ];
    const RNN_TANH_OUT: [f64; 24] = [
        -0.32390982750363884,
        -0.6184938921426986,
        0.25501180438422866,
        0.8786020626541972,
        -0.2931261812960583,
        -0.2516804267745678,
        0.30146379294147335,
        0.7227513114494466,
        -0.21346488814677858,
        0.10019683855113404,
        0.28288816532203814,
        0.5019863430271694,
        -0.4549601050667415,
        0.5425064265159498,
        0.5763156524892614,
        0.11072739658136496,
        -0.41911273008756506,
        0.5980017580073155,
        0.5563534069293075,
        0.023518662264460893,
        -0.6543918929511592,
        0.08968806065757443,
        0.6936925051470019,
        0.5816018847277347,
    ];
    const RNN_TANH_HN: [f64; 16] = [
        0.5917604790620314,
        0.3289018877934467,
        -0.4093184258421955,
        -0.44146297419732783,
        0.3786662978176476,
        -0.023584441880400545,
        0.14444445029192282,
        0.03128936118664931,
        -0.21346488814677858,
        0.10019683855113404,
        0.28288816532203814,
        0.5019863430271694,
        -0.6543918929511592,
        0.08968806065757443,
        0.6936925051470019,
        0.5816018847277347,
    ];
    const RNN_RELU_OUT: [f64; 24] = [
        0.0,
        0.0,
        1.1017220987029657,
        2.1324550807562854,
        0.0,
        0.0,
        2.6152585265074326,
        1.59479740776006,
        0.0,
        0.11531369205462294,
        2.735976788626317,
        0.9805915190289589,
        0.0,
        0.20870155579073973,
        1.0792322224574178,
        0.5867642130189379,
        0.0,
        0.3719859270355057,
        1.4403788173144987,
        0.48897133862506265,
        0.0,
        0.055918788375982964,
        1.6544046499989518,
        0.8438506171382376,
    ];
    const RNN_RELU_HN: [f64; 16] = [
        2.152518373928835,
        0.7585284943375838,
        0.0,
        0.0,
        1.0484649470087888,
        0.3018361645512688,
        0.0,
        0.0,
        0.0,
        0.11531369205462294,
        2.735976788626317,
        0.9805915190289589,
        0.0,
        0.055918788375982964,
        1.6544046499989518,
        0.8438506171382376,
    ];
    const LSTM_CELL_H: [f64; 8] = [
        -0.16958473719132336,
        -0.5289109618121777,
        -0.24951262809070723,
        0.0003916409282006688,
        -0.08671509769906988,
        0.040988102556539265,
        0.26351178243305345,
        0.0505468536266419,
    ];
    const LSTM_CELL_C: [f64; 8] = [
        -0.19823111226288825,
        -0.6815266663557205,
        -0.4488479523856709,
        0.0013306534696220715,
        -0.3489500803132441,
        0.10787588990026382,
        0.3375272087209599,
        0.05481299803280558,
    ];
    const GRU_CELL_H: [f64; 8] = [
        -0.18874495989214815,
        -0.5382770996688473,
        -0.4055796127861365,
        0.06348780626802257,
        -0.22958186636662936,
        0.3275612655845607,
        0.5867811361105717,
        -0.07344186644938476,
    ];
    const RNN_CELL_H: [f64; 8] = [
        0.9332873684615467,
        0.9441400848980128,
        0.20148970141672526,
        -0.8420816567496331,
        -0.2595343069541793,
        -0.7229657538302285,
        -0.23312738249847656,
        0.49803101856652426,
    ];

    /// `f(i)` for `i` in `0..n`, as an f64 tensor of `shape`.
    fn seq_tensor(shape: &[usize], f: impl Fn(f64) -> f64) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_vec((0..n).map(|i| f(i as f64)).collect::<Vec<f64>>(), shape)
    }

    /// The deterministic weights of the torch script, by `named_parameters` order.
    fn fill<M: Module>(m: &M) {
        let _g = NoGradGuard::new();
        for (j, (_, p)) in m.named_parameters().into_iter().enumerate() {
            let v = seq_tensor(p.shape(), |i| 0.5 * (0.37 * i + 0.9 * j as f64 + 0.1).sin());
            p.copy_(&v);
        }
    }

    fn ref_inputs() -> (Tensor, Tensor, Tensor) {
        let x = seq_tensor(&[2, 3, 3], |i| (0.29 * i).cos());
        let h0 = seq_tensor(&[2, 2, 4], |i| 0.3 * (0.5 * i + 1.0).sin());
        let c0 = seq_tensor(&[2, 2, 4], |i| 0.2 * (0.4 * i).cos());
        (x, h0, c0)
    }

    #[track_caller]
    fn assert_close(got: &Tensor, want: &[f64], tol: f64) {
        let g = got.to_dtype(DType::F64).to_vec::<f64>();
        assert_eq!(g.len(), want.len(), "length");
        for (k, (a, b)) in g.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= tol, "element {k}: got {a}, want {b}");
        }
    }

    fn ref_config() -> RecurrentConfig {
        RecurrentConfig {
            num_layers: 2,
            batch_first: true,
            ..Default::default()
        }
    }

    #[test]
    fn lstm_matches_pytorch() {
        let lstm = LSTM::with_config(3, 4, ref_config(), DType::F64);
        fill(&lstm);
        let (x, h0, c0) = ref_inputs();
        let (y, (h, c)) = lstm.forward(&x, Some((&h0, &c0)));
        assert_eq!(y.shape(), &[2, 3, 4]);
        assert_close(&y, &LSTM_OUT, 1e-12);
        assert_close(&h, &LSTM_HN, 1e-12);
        assert_close(&c, &LSTM_CN, 1e-12);
    }

    #[test]
    fn gru_matches_pytorch() {
        let gru = GRU::with_config(3, 4, ref_config(), DType::F64);
        fill(&gru);
        let (x, h0, _) = ref_inputs();
        let (y, h) = gru.forward(&x, Some(&h0));
        assert_close(&y, &GRU_OUT, 1e-12);
        assert_close(&h, &GRU_HN, 1e-12);
    }

    #[test]
    fn rnn_matches_pytorch() {
        let (x, h0, _) = ref_inputs();
        for (nl, out, hn) in [
            (Nonlinearity::Tanh, &RNN_TANH_OUT, &RNN_TANH_HN),
            (Nonlinearity::Relu, &RNN_RELU_OUT, &RNN_RELU_HN),
        ] {
            let rnn = RNN::with_config(3, 4, nl, ref_config(), DType::F64);
            fill(&rnn);
            let (y, h) = rnn.forward(&x, Some(&h0));
            assert_close(&y, out, 1e-12);
            assert_close(&h, hn, 1e-12);
        }
    }

    #[test]
    fn cells_match_pytorch() {
        let (x, h0, c0) = ref_inputs();
        let (x, h, c) = (x.select(1, 0), h0.select(0, 0), c0.select(0, 0));
        let lstm = LSTMCell::new(3, 4, DType::F64);
        fill(&lstm);
        let (h1, c1) = lstm.forward(&x, Some((&h, &c)));
        assert_close(&h1, &LSTM_CELL_H, 1e-12);
        assert_close(&c1, &LSTM_CELL_C, 1e-12);
        let gru = GRUCell::new(3, 4, DType::F64);
        fill(&gru);
        assert_close(&gru.forward(&x, Some(&h)), &GRU_CELL_H, 1e-12);
        let rnn = RNNCell::new(3, 4, DType::F64);
        fill(&rnn);
        assert_close(&rnn.forward(&x, Some(&h)), &RNN_CELL_H, 1e-12);
        // unbatched: one row of the batched step
        let h_row = rnn.forward(&x.select(0, 1), Some(&h.select(0, 1)));
        assert_eq!(h_row.shape(), &[4]);
        assert_close(&h_row, &RNN_CELL_H[4..], 1e-12);
    }

    #[test]
    fn cells_agree_with_one_layer_one_step() {
        let lstm = LSTM::new(3, 4, DType::F64);
        let cell = LSTMCell {
            weights: lstm.layers[0].clone(),
        };
        let x = seq_tensor(&[1, 2, 3], |i| (0.7 * i).sin());
        let (y, (h, c)) = lstm.forward(&x, None);
        let (hc, cc) = cell.forward(&x.select(0, 0), None);
        assert_close(&hc, &y.select(0, 0).to_vec::<f64>(), 1e-14);
        assert_close(&hc, &h.select(0, 0).to_vec::<f64>(), 1e-14);
        assert_close(&cc, &c.select(0, 0).to_vec::<f64>(), 1e-14);
    }

    #[test]
    fn layouts_agree_time_major_batch_first_unbatched() {
        let (x, h0, c0) = ref_inputs();
        let mut lstm = LSTM::with_config(
            3,
            4,
            RecurrentConfig {
                num_layers: 2,
                ..Default::default()
            },
            DType::F64,
        );
        fill(&lstm);
        // time-major on the transposed input gives the transposed batch-first output
        let (y, (h, c)) = lstm.forward(&x.transpose(0, 1), Some((&h0, &c0)));
        assert_eq!(y.shape(), &[3, 2, 4]);
        assert_close(&y.transpose(0, 1).contiguous(), &LSTM_OUT, 1e-12);
        assert_close(&h, &LSTM_HN, 1e-12);
        assert_close(&c, &LSTM_CN, 1e-12);
        // unbatched [T, in] with [L, H] states = batch row 1
        lstm.config.batch_first = true;
        let (y1, (h1, c1)) =
            lstm.forward(&x.select(0, 1), Some((&h0.select(1, 1), &c0.select(1, 1))));
        assert_eq!(
            (y1.shape(), h1.shape()),
            (&[3usize, 4][..], &[2usize, 4][..])
        );
        assert_close(&y1, &LSTM_OUT[12..], 1e-12);
        let hn_row1: Vec<f64> = [&LSTM_HN[4..8], &LSTM_HN[12..16]].concat();
        let cn_row1: Vec<f64> = [&LSTM_CN[4..8], &LSTM_CN[12..16]].concat();
        assert_close(&h1, &hn_row1, 1e-12);
        assert_close(&c1, &cn_row1, 1e-12);
    }

    // ----------------------------------------------------------------- gradients (BPTT)

    /// Installs `vals` as the parameters of `layers`, in `named_parameters` order.
    fn set_params(layers: &mut [RecurrentWeights], vals: &[Tensor]) {
        let mut it = vals.iter().cloned();
        for w in layers {
            w.weight_ih = it.next().expect("weight_ih");
            w.weight_hh = it.next().expect("weight_hh");
            if w.bias_ih.is_some() {
                w.bias_ih = it.next();
                w.bias_hh = it.next();
            }
        }
    }

    fn flat(ts: &[&Tensor]) -> Tensor {
        let parts: Vec<Tensor> = ts.iter().map(|t| t.reshape([t.numel()])).collect();
        Tensor::cat(&parts, 0)
    }

    fn gc_config() -> RecurrentConfig {
        RecurrentConfig {
            num_layers: 2,
            batch_first: true,
            ..Default::default()
        }
    }

    #[test]
    fn gradcheck_rnn() {
        for nl in [Nonlinearity::Tanh, Nonlinearity::Relu] {
            let rnn = RNN::with_config(3, 2, nl, gc_config(), DType::F64);
            let x = Tensor::randn([2, 3, 3], DType::F64);
            let h0 = Tensor::randn([2, 2, 2], DType::F64);
            let mut inputs = vec![x, h0];
            inputs.extend(rnn.parameters());
            gradcheck(
                |v| {
                    let mut m = rnn.clone();
                    set_params(&mut m.layers, &v[2..]);
                    let (y, h) = m.forward(&v[0], Some(&v[1]));
                    flat(&[&y, &h])
                },
                &inputs,
                GradcheckOptions::default(),
            )
            .unwrap();
        }
    }

    #[test]
    fn gradcheck_lstm() {
        let lstm = LSTM::with_config(3, 2, gc_config(), DType::F64);
        let x = Tensor::randn([2, 3, 3], DType::F64);
        let h0 = Tensor::randn([2, 2, 2], DType::F64);
        let c0 = Tensor::randn([2, 2, 2], DType::F64);
        let mut inputs = vec![x, h0, c0];
        inputs.extend(lstm.parameters());
        gradcheck(
            |v| {
                let mut m = lstm.clone();
                set_params(&mut m.layers, &v[3..]);
                let (y, (h, c)) = m.forward(&v[0], Some((&v[1], &v[2])));
                flat(&[&y, &h, &c])
            },
            &inputs,
            GradcheckOptions::default(),
        )
        .unwrap();
    }

    #[test]
    fn gradcheck_gru() {
        let gru = GRU::with_config(3, 2, gc_config(), DType::F64);
        let x = Tensor::randn([2, 3, 3], DType::F64);
        let h0 = Tensor::randn([2, 2, 2], DType::F64);
        let mut inputs = vec![x, h0];
        inputs.extend(gru.parameters());
        gradcheck(
            |v| {
                let mut m = gru.clone();
                set_params(&mut m.layers, &v[2..]);
                let (y, h) = m.forward(&v[0], Some(&v[1]));
                flat(&[&y, &h])
            },
            &inputs,
            GradcheckOptions::default(),
        )
        .unwrap();
    }

    #[test]
    fn gradcheck_through_variational_masks_and_cells() {
        // The masks are random, and the global generator is shared with tests running in
        // parallel, so the function is evaluated with fixed masks given to the sequence
        // runner (the path `forward` takes, minus the drawing).
        let cfg = RecurrentConfig {
            num_layers: 2,
            ..Default::default()
        };
        let lstm = LSTM::with_config(2, 3, cfg, DType::F64);
        let (t, b) = (3, 2);
        let mask = |f: usize| Some(functional::dropout_mask(&[b, f], 0.4, DType::F64));
        let masks: Vec<LayerMasks> = vec![(mask(2), mask(3)), (mask(3), mask(3))];
        let x = Tensor::randn([t, b, 2], DType::F64);
        let h0 = Tensor::randn([2, b, 3], DType::F64);
        let c0 = Tensor::randn([2, b, 3], DType::F64);
        let mut inputs = vec![x, h0, c0];
        inputs.extend(lstm.parameters());
        gradcheck(
            |v| {
                let mut m = lstm.clone();
                set_params(&mut m.layers, &v[3..]);
                let seq = Seq {
                    masks: Some(&masks),
                    ..m.seq()
                };
                let (y, h, c) = seq.run(&v[0], Some(&v[1]), Some(&v[2])).unwrap();
                flat(&[&y, &h, &c.unwrap()])
            },
            &inputs,
            GradcheckOptions::default(),
        )
        .unwrap();

        let cell = LSTMCell::with_bias(2, 3, false, DType::F64);
        let x = Tensor::randn([2, 2], DType::F64);
        let h = Tensor::randn([2, 3], DType::F64);
        let c = Tensor::randn([2, 3], DType::F64);
        let mut inputs = vec![x, h, c];
        inputs.extend(cell.parameters());
        gradcheck(
            |v| {
                let mut m = cell.clone();
                m.weights.weight_ih = v[3].clone();
                m.weights.weight_hh = v[4].clone();
                let (h, c) = m.forward(&v[0], Some((&v[1], &v[2])));
                flat(&[&h, &c])
            },
            &inputs,
            GradcheckOptions::default(),
        )
        .unwrap();
    }

    #[test]
    fn lstm_learns_a_delayed_echo_by_bptt() {
        // Target y_t = x_{t−2}: the net must carry each input two steps through time.
        // Weights and data come from a local generator (the global one is shared with
        // tests running in parallel), so the run is the same every time.
        let (b, t, lag) = (16usize, 8usize, 2usize);
        let cfg = RecurrentConfig {
            batch_first: true,
            ..Default::default()
        };
        let lstm = LSTM::with_config(1, 12, cfg, ());
        let head = Linear::new(12, 1, ());
        let mut params = lstm.parameters();
        params.extend(head.parameters());
        let mut rng = crate::random::Generator::new(3);
        {
            let _g = NoGradGuard::new();
            let bound = 1.0 / 12f64.sqrt();
            for p in &params {
                p.copy_(&rng.uniform(p.shape(), -bound, bound, ()));
            }
        }
        let mut opt = Adam::new(params, 0.03);
        let xs: Vec<f32> = rng
            .bernoulli([b, t], 0.5)
            .to_vec::<bool>()
            .iter()
            .map(|&v| if v { 1.0 } else { -1.0 })
            .collect();
        let ys: Vec<f32> = (0..b * t)
            .map(|k| if k % t >= lag { xs[k - lag] } else { 0.0 })
            .collect();
        let x = Tensor::from_vec(xs, [b, t, 1]);
        let y = Tensor::from_vec(ys, [b, t, 1]);
        let mut losses = Vec::new();
        for _ in 0..150 {
            opt.zero_grad();
            let (h, _) = lstm.forward(&x, None);
            let loss = mse_loss(&head.forward(&h), &y, Reduction::Mean);
            losses.push(loss.item::<f32>());
            loss.backward();
            opt.step();
        }
        let (first, last) = (losses[0], *losses.last().unwrap());
        // predicting 0 everywhere costs 6/8 = 0.75
        assert!(first > 0.5, "initial loss {first}");
        assert!(last < 0.05, "loss went from {first} to {last}");
    }

    // ------------------------------------------------------------- variational dropout

    fn eye(n: usize) -> Tensor {
        init::param(Tensor::eye(n, ()))
    }

    /// A bias-free ReLU RNN with `W_ih = I` and `W_hh = I` (or 0).
    fn identity_rnn(h: usize, layers: usize, recurrent: bool, cfg: RecurrentConfig) -> RNN {
        let cfg = RecurrentConfig {
            num_layers: layers,
            bias: false,
            ..cfg
        };
        let mut rnn = RNN::with_config(h, h, Nonlinearity::Relu, cfg, ());
        for w in &mut rnn.layers {
            w.weight_ih = eye(h);
            w.weight_hh = if recurrent {
                eye(h)
            } else {
                init::param(Tensor::zeros([h, h], ()))
            };
        }
        rnn
    }

    /// `[T, B, H]` as `v[t][b][j]`.
    fn steps(y: &Tensor) -> Vec<Vec<Vec<f32>>> {
        (0..y.size(0))
            .map(|t| {
                (0..y.size(1))
                    .map(|b| {
                        y.select(0, t as isize)
                            .select(0, b as isize)
                            .to_vec::<f32>()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn input_mask_is_fixed_over_time_and_differs_across_rows_and_calls() {
        let (h, b, t) = (32, 4, 5);
        let cfg = RecurrentConfig {
            input_dropout: 0.5,
            ..Default::default()
        };
        let mut rnn = identity_rnn(h, 1, false, cfg);
        let x = Tensor::ones([t, b, h], ());
        // h_t = relu(x_t ⊙ m) = m: the output shows the input mask at every step
        let (y, _) = rnn.forward(&x, None);
        let s = steps(&y);
        for step in &s {
            assert_eq!(step, &s[0], "the mask changed within the sequence");
        }
        let m = &s[0];
        assert!(m.iter().flatten().all(|&v| v == 0.0 || v == 2.0));
        let dropped = m.iter().flatten().filter(|&&v| v == 0.0).count();
        assert!((32..=96).contains(&dropped), "dropped {dropped} of 128");
        for i in 0..b {
            for j in i + 1..b {
                assert_ne!(m[i], m[j], "rows {i} and {j} share a mask");
            }
        }
        let (y2, _) = rnn.forward(&x, None);
        assert_ne!(steps(&y2)[0], s[0], "two forward calls drew the same mask");
        rnn.eval();
        let (ye, _) = rnn.forward(&x, None);
        assert!(ye.to_vec::<f32>().iter().all(|&v| v == 1.0));
    }

    #[test]
    fn hidden_mask_is_fixed_over_time_and_differs_across_rows_and_calls() {
        let (h, b, t) = (32, 4, 5);
        let cfg = RecurrentConfig {
            hidden_dropout: 0.5,
            ..Default::default()
        };
        let mut rnn = identity_rnn(h, 1, true, cfg);
        let x = Tensor::ones([t, b, h], ());
        // h_t = 1 + m ⊙ h_{t−1}: a kept unit (m = 2) runs 1, 3, 7, 15, 31; a dropped one
        // stays at 1. A mask that changed over time would mix the two.
        let kept: Vec<f32> = vec![1.0, 3.0, 7.0, 15.0, 31.0];
        let dropped = vec![1.0f32; t];
        let pattern = |y: &Tensor| -> Vec<Vec<bool>> {
            let s = steps(y);
            (0..b)
                .map(|r| {
                    (0..h)
                        .map(|j| {
                            let traj: Vec<f32> = (0..t).map(|k| s[k][r][j]).collect();
                            assert!(
                                traj == kept || traj == dropped,
                                "row {r} unit {j}: trajectory {traj:?}"
                            );
                            traj == kept
                        })
                        .collect()
                })
                .collect()
        };
        let (y, h_n) = rnn.forward(&x, None);
        let p = pattern(&y);
        let n_kept = p.iter().flatten().filter(|&&k| k).count();
        assert!((32..=96).contains(&n_kept), "kept {n_kept} of 128");
        for i in 0..b {
            for j in i + 1..b {
                assert_ne!(p[i], p[j], "rows {i} and {j} share a mask");
            }
        }
        // h_n is the unmasked last state
        assert_eq!(
            h_n.select(0, 0).to_vec::<f32>(),
            y.select(0, 4).to_vec::<f32>()
        );
        let (y2, _) = rnn.forward(&x, None);
        assert_ne!(pattern(&y2), p, "two forward calls drew the same mask");
        rnn.eval();
        let (ye, _) = rnn.forward(&x, None);
        for (k, step) in steps(&ye).iter().enumerate() {
            assert!(step.iter().flatten().all(|&v| v == (k + 1) as f32));
        }
    }

    #[test]
    fn each_layer_draws_its_own_input_mask() {
        let (h, b, t) = (32, 3, 4);
        let cfg = RecurrentConfig {
            input_dropout: 0.5,
            batch_first: true,
            ..Default::default()
        };
        let rnn = identity_rnn(h, 2, false, cfg);
        let (y, h_n) = rnn.forward(&Tensor::ones([b, t, h], ()), None);
        // layer 0 outputs its mask m0 ∈ {0, 2}; layer 1 outputs m0 ⊙ m1 ∈ {0, 4}
        let l0 = h_n.select(0, 0).to_vec::<f32>();
        let l1 = h_n.select(0, 1).to_vec::<f32>();
        assert!(l0.iter().all(|&v| v == 0.0 || v == 2.0));
        assert!(l1.iter().all(|&v| v == 0.0 || v == 4.0));
        assert!(l1.contains(&4.0));
        // where layer 0 kept a unit, layer 1's own mask still drops some
        assert!(l0.iter().zip(&l1).any(|(&a, &c)| a == 2.0 && c == 0.0));
        // batch-first output: the same at every step
        for s in 1..t {
            assert_eq!(y.select(1, s as isize).to_vec::<f32>(), l1);
        }
    }

    #[test]
    fn pytorch_dropout_acts_between_layers_only() {
        let (h, b, t) = (32, 3, 6);
        let cfg = RecurrentConfig {
            dropout: 0.5,
            ..Default::default()
        };
        let x = Tensor::ones([t, b, h], ());
        // one layer: nothing to drop between layers
        let rnn1 = identity_rnn(h, 1, false, cfg);
        assert!(rnn1
            .forward(&x, None)
            .0
            .to_vec::<f32>()
            .iter()
            .all(|&v| v == 1.0));
        // two layers: layer 0's outputs (ones) are dropped elementwise, a fresh draw per
        // element and step, so layer 1 sees {0, 2} varying over time
        let mut rnn2 = identity_rnn(h, 2, false, cfg);
        let (y, h_n) = rnn2.forward(&x, None);
        assert!(h_n.select(0, 0).to_vec::<f32>().iter().all(|&v| v == 1.0));
        assert!(y.to_vec::<f32>().iter().all(|&v| v == 0.0 || v == 2.0));
        let s = steps(&y);
        assert!(
            s.iter().any(|step| step != &s[0]),
            "dropout was locked over time"
        );
        rnn2.eval();
        assert!(rnn2
            .forward(&x, None)
            .0
            .to_vec::<f32>()
            .iter()
            .all(|&v| v == 1.0));
    }

    #[test]
    fn lstm_dropout_is_random_in_training_and_identity_in_eval() {
        let cfg = RecurrentConfig {
            num_layers: 2,
            dropout: 0.2,
            input_dropout: 0.3,
            hidden_dropout: 0.4,
            ..Default::default()
        };
        let mut lstm = LSTM::with_config(5, 6, cfg, ());
        let mut plain = LSTM::with_config(
            5,
            6,
            RecurrentConfig {
                num_layers: 2,
                ..Default::default()
            },
            (),
        );
        plain.load_state_dict(&lstm.state_dict(), true).unwrap();
        let x = Tensor::randn([7, 3, 5], ());
        let (a, _) = lstm.forward(&x, None);
        let (b, _) = lstm.forward(&x, None);
        let (clean, (hc, cc)) = plain.forward(&x, None);
        assert_ne!(a.to_vec::<f32>(), b.to_vec::<f32>());
        assert_ne!(a.to_vec::<f32>(), clean.to_vec::<f32>());
        assert!(lstm.is_training());
        lstm.eval();
        assert!(!lstm.is_training());
        let (e, (he, ce)) = lstm.forward(&x, None);
        assert_eq!(e.to_vec::<f32>(), clean.to_vec::<f32>());
        assert_eq!(he.to_vec::<f32>(), hc.to_vec::<f32>());
        assert_eq!(ce.to_vec::<f32>(), cc.to_vec::<f32>());
        lstm.train();
        let (r, _) = lstm.forward(&x, None);
        assert_ne!(r.to_vec::<f32>(), clean.to_vec::<f32>());
        // plain eval == plain train: no dropout configured
        plain.eval();
        assert_eq!(
            plain.forward(&x, None).0.to_vec::<f32>(),
            clean.to_vec::<f32>()
        );
    }

    // ------------------------------------------------------- parameters, shapes, repr

    #[test]
    fn named_parameters_follow_pytorch() {
        let lstm = LSTM::with_config(3, 5, ref_config(), ());
        let got: Vec<(String, Vec<usize>)> = lstm
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.shape().to_vec()))
            .collect();
        let want: Vec<(String, Vec<usize>)> = [
            ("weight_ih_l0", vec![20, 3]),
            ("weight_hh_l0", vec![20, 5]),
            ("bias_ih_l0", vec![20]),
            ("bias_hh_l0", vec![20]),
            ("weight_ih_l1", vec![20, 5]),
            ("weight_hh_l1", vec![20, 5]),
            ("bias_ih_l1", vec![20]),
            ("bias_hh_l1", vec![20]),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect();
        assert_eq!(got, want);
        assert!(lstm.parameters().iter().all(|p| p.requires_grad()));
        // init: uniform in ±1/√H
        let bound = 1.0 / 5f32.sqrt();
        for p in lstm.parameters() {
            assert!(p.to_vec::<f32>().iter().all(|v| v.abs() <= bound));
        }

        let names = |m: &dyn Module| -> Vec<String> {
            m.named_parameters().into_iter().map(|(n, _)| n).collect()
        };
        let nobias = RecurrentConfig {
            num_layers: 2,
            bias: false,
            ..Default::default()
        };
        let gru = GRU::with_config(2, 4, nobias, ());
        assert_eq!(
            names(&gru),
            [
                "weight_ih_l0",
                "weight_hh_l0",
                "weight_ih_l1",
                "weight_hh_l1"
            ]
        );
        assert_eq!(gru.layers[1].weight_ih.shape(), &[12, 4]);
        let rnn = RNN::new(2, 4, ());
        assert_eq!(rnn.layers[0].weight_hh.shape(), &[4, 4]);
        for cell in [
            &GRUCell::new(2, 4, ()) as &dyn Module,
            &LSTMCell::new(2, 4, ()),
            &RNNCell::new(2, 4, ()),
        ] {
            assert_eq!(
                names(cell),
                ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
            );
        }
        assert_eq!(
            names(&LSTMCell::with_bias(2, 4, false, ())),
            ["weight_ih", "weight_hh"]
        );
        assert_eq!(LSTMCell::new(2, 4, ()).weights.weight_ih.shape(), &[16, 2]);
        // the bias-free GRU still runs
        let (y, h) = gru.forward(&Tensor::ones([3, 1, 2], ()), None);
        assert_eq!(
            (y.shape(), h.shape()),
            (&[3usize, 1, 4][..], &[2usize, 1, 4][..])
        );
    }

    #[test]
    fn summaries_look_like_pytorch() {
        let cfg = RecurrentConfig {
            num_layers: 2,
            batch_first: true,
            dropout: 0.5,
            ..Default::default()
        };
        assert_eq!(
            LSTM::with_config(10, 20, cfg, ()).summary(),
            "LSTM(10, 20, num_layers=2, batch_first=true, dropout=0.5)"
        );
        assert_eq!(GRU::new(3, 4, ()).to_string(), "GRU(3, 4)");
        let cfg = RecurrentConfig {
            bias: false,
            hidden_dropout: 0.25,
            input_dropout: 0.1,
            ..Default::default()
        };
        assert_eq!(
            RNN::with_config(3, 4, Nonlinearity::Relu, cfg, ()).summary(),
            "RNN(3, 4, nonlinearity=relu, bias=false, input_dropout=0.1, hidden_dropout=0.25)"
        );
        assert_eq!(LSTMCell::new(3, 4, ()).summary(), "LSTMCell(3, 4)");
        assert_eq!(
            RNNCell::with_config(3, 4, false, Nonlinearity::Relu, ()).summary(),
            "RNNCell(3, 4, bias=false, nonlinearity=relu)"
        );
    }

    #[test]
    fn wrong_shapes_are_explained() {
        let lstm = LSTM::with_config(8, 4, ref_config(), ());
        let x = Tensor::zeros([3, 5, 8], ());
        let err = |r: Result<(Tensor, (Tensor, Tensor))>| r.unwrap_err().to_string();
        assert_eq!(
            err(lstm.try_forward(&Tensor::zeros([3, 5, 7], ()), None)),
            "LSTM: expected input of shape [B, T, 8] or [T, 8], got [3, 5, 7]"
        );
        assert_eq!(
            err(lstm.try_forward(&Tensor::zeros([2, 3, 5, 8], ()), None)),
            "LSTM: expected input of shape [B, T, 8] or [T, 8], got [2, 3, 5, 8]"
        );
        assert_eq!(
            err(lstm.try_forward(&Tensor::zeros([3, 0, 8], ()), None)),
            "LSTM: expected a sequence of at least one step, got input of shape [3, 0, 8]"
        );
        let good = Tensor::zeros([2, 3, 4], ());
        let bad = Tensor::zeros([1, 3, 4], ());
        assert_eq!(
            err(lstm.try_forward(&x, Some((&bad, &good)))),
            "LSTM: expected h0 of shape [2, 3, 4], got [1, 3, 4]"
        );
        assert_eq!(
            err(lstm.try_forward(&x, Some((&good, &bad)))),
            "LSTM: expected c0 of shape [2, 3, 4], got [1, 3, 4]"
        );
        // unbatched input wants unbatched states
        assert_eq!(
            err(lstm.try_forward(&Tensor::zeros([5, 8], ()), Some((&good, &good)))),
            "LSTM: expected h0 of shape [2, 4], got [2, 3, 4]"
        );
        let rnn = RNN::new(8, 4, ());
        assert_eq!(
            rnn.try_forward(&Tensor::zeros([5, 3, 6], ()), None)
                .unwrap_err()
                .to_string(),
            "RNN: expected input of shape [T, B, 8] or [T, 8], got [5, 3, 6]"
        );
        let cell = GRUCell::new(8, 4, ());
        assert_eq!(
            cell.try_forward(&Tensor::zeros([2, 7], ()), None)
                .unwrap_err()
                .to_string(),
            "GRUCell: expected input of shape [B, 8] or [8], got [2, 7]"
        );
        assert_eq!(
            cell.try_forward(&Tensor::zeros([2, 8], ()), Some(&Tensor::zeros([3, 4], ())))
                .unwrap_err()
                .to_string(),
            "GRUCell: expected h of shape [2, 4], got [3, 4]"
        );
        assert_eq!(
            LSTMCell::new(8, 4, ())
                .try_forward(
                    &Tensor::zeros([8], ()),
                    Some((&Tensor::zeros([4], ()), &Tensor::zeros([2, 4], ())))
                )
                .unwrap_err()
                .to_string(),
            "LSTMCell: expected c of shape [4], got [2, 4]"
        );
    }

    #[test]
    #[should_panic(expected = "GRU: expected input of shape [T, B, 8] or [T, 8], got [5, 3, 6]")]
    fn forward_panics_name_the_layer() {
        GRU::new(8, 4, ()).forward(&Tensor::zeros([5, 3, 6], ()), None);
    }

    #[test]
    #[should_panic(expected = "LSTM: hidden_dropout must be in [0, 1), got 1")]
    fn invalid_config_panics() {
        let cfg = RecurrentConfig {
            hidden_dropout: 1.0,
            ..Default::default()
        };
        LSTM::with_config(2, 2, cfg, ());
    }

    #[test]
    fn works_inside_sequential() {
        let cfg = RecurrentConfig {
            batch_first: true,
            ..Default::default()
        };
        let lstm = LSTM::with_config(4, 6, cfg, ());
        let (want, _) = lstm.forward(&Tensor::ones([2, 3, 4], ()), None);
        let net = Sequential::new().add(lstm).add(Linear::new(6, 1, ()));
        let y = Forward::forward(&net, &Tensor::ones([2, 3, 4], ()));
        assert_eq!(y.shape(), &[2, 3, 1]);
        assert_eq!(
            net.named_parameters()[0].0,
            "0.weight_ih_l0",
            "state_dict keys nest like PyTorch's"
        );
        assert_eq!(want.shape(), &[2, 3, 6]);
    }

    /// Values and first-order gradients of the fused cell against the composition.
    fn fused_vs_composed(dtype: DType, tol: f64) {
        let (b, h) = (5, 7);
        // pre-activations up to ±4, a non-contiguous cell state
        let z = seq_tensor(&[b, 4 * h], |i| 4.0 * (0.73 * i + 0.2).sin()).to_dtype(dtype);
        let c = seq_tensor(&[h, b], |i| 1.5 * (0.41 * i).cos())
            .to_dtype(dtype)
            .t();
        let wh = seq_tensor(&[b, h], |i| (0.9 * i).sin()).to_dtype(dtype);
        let wc = seq_tensor(&[b, h], |i| (0.3 * i + 1.0).cos()).to_dtype(dtype);
        let run = |fused: bool| {
            let (z, c) = (
                z.detach().requires_grad_(true),
                c.detach().requires_grad_(true),
            );
            let (h2, c2) = if fused {
                lstm_cell(&z, &c).unwrap()
            } else {
                lstm_cell_composed(&z, &c).unwrap()
            };
            let loss = (&h2 * &wh).sum_all() + (&c2 * &wc).sum_all();
            let g = crate::autograd::grad(&[loss], &[z, c], None, false, false).unwrap();
            let g: Vec<Tensor> = g.into_iter().map(|g| g.unwrap()).collect();
            [h2.detach(), c2.detach(), g[0].clone(), g[1].clone()]
        };
        let (fused, composed) = (run(true), run(false));
        for (k, (a, b)) in fused.iter().zip(&composed).enumerate() {
            assert_eq!(a.shape(), b.shape(), "output {k}");
            assert_close(a, &b.to_dtype(DType::F64).to_vec::<f64>(), tol);
        }
    }

    #[test]
    fn fused_lstm_cell_matches_the_composition() {
        fused_vs_composed(DType::F64, 1e-14);
        fused_vs_composed(DType::F32, 1e-6);
    }

    #[test]
    fn fused_lstm_cell_records_one_node_and_falls_back_elsewhere() {
        let z = Tensor::randn([2, 8], DType::F64).requires_grad_(true);
        let c = Tensor::randn([2, 2], DType::F64);
        let (h2, _) = lstm_cell(&z, &c).unwrap();
        // h' is a select view of the fused node's [2, B, H] output
        let node = h2.grad_fn().unwrap();
        assert_eq!(node.name(), "select");
        match &node.inputs[0] {
            Some(crate::autograd::Edge::Node(n)) => assert_eq!(n.name(), "lstm_cell"),
            _ => panic!("select of a non-node"),
        }
        // f16 takes the composition and agrees with f64 to f16 precision
        let (h16, c16) = lstm_cell(&z.to_dtype(DType::F16), &c.to_dtype(DType::F16)).unwrap();
        let (h64, c64) = lstm_cell(&z, &c).unwrap();
        assert_close(&h16, &h64.to_vec::<f64>(), 2e-3);
        assert_close(&c16, &c64.to_vec::<f64>(), 4e-3);
    }

    #[test]
    fn fused_lstm_cell_second_order_matches_the_composition() {
        let z = seq_tensor(&[3, 8], |i| 2.0 * (0.61 * i).sin()).requires_grad_(true);
        let c = seq_tensor(&[3, 2], |i| (0.5 * i).cos()).requires_grad_(true);
        let run = |fused: bool| {
            let (h2, c2) = if fused {
                lstm_cell(&z, &c).unwrap()
            } else {
                lstm_cell_composed(&z, &c).unwrap()
            };
            let loss = (&h2 * &h2).sum_all() + (&c2 * &h2).sum_all();
            let g =
                crate::autograd::grad(&[loss], &[z.clone(), c.clone()], None, true, true).unwrap();
            let (gz, gc) = (g[0].clone().unwrap(), g[1].clone().unwrap());
            let s = (&gz * &gz).sum_all() + (&gc * &gz.narrow(1, 0, 2)).sum_all();
            let gg =
                crate::autograd::grad(&[s], &[z.clone(), c.clone()], None, false, false).unwrap();
            [
                gz.detach(),
                gc.detach(),
                gg[0].clone().unwrap(),
                gg[1].clone().unwrap(),
            ]
        };
        let (fused, composed) = (run(true), run(false));
        for (a, b) in fused.iter().zip(&composed) {
            assert_close(a, &b.to_vec::<f64>(), 1e-12);
        }
    }

    /// [`lstm_layer`]'s outputs `(out, h_T, c_T)` computed by the per-step loop instead
    /// (one [`step`] a time step, as `Seq::run` does for the other kinds).
    fn layer_by_steps(
        gi: &Tensor,
        w_hh: &Tensor,
        h0: &Tensor,
        c0: &Tensor,
        mask: Option<&Tensor>,
    ) -> (Tensor, Tensor, Tensor) {
        let (mut h, mut c) = (h0.clone(), Some(c0.clone()));
        let mut outs = vec![];
        for t in 0..gi.size(0) {
            let h_in = mask.map_or_else(|| h.clone(), |m| &h * m);
            let g = gi.select(0, t as isize);
            let (h2, c2) = step(Kind::Lstm, &g, &h, &h_in, c.as_ref(), &w_hh.t(), None).unwrap();
            (h, c) = (h2, c2);
            outs.push(h.clone());
        }
        (Tensor::stack(&outs, 0), h, c.unwrap())
    }

    /// Values and first-order gradients of the fused layer against the step loop, for
    /// `T` steps, batch `b`, hidden `hd`, with and without a recurrent mask.
    fn fused_layer_vs_steps(dtype: DType, t: usize, b: usize, hd: usize, tol: f64) {
        let gi = seq_tensor(&[t, b, 4 * hd], |i| 2.0 * (0.37 * i + 0.1).sin()).to_dtype(dtype);
        // a non-contiguous weight, as the module's parameter is not
        let w = seq_tensor(&[hd, 4 * hd], |i| 0.3 * (0.23 * i).cos())
            .to_dtype(dtype)
            .t();
        let h0 = seq_tensor(&[b, hd], |i| 0.5 * (0.7 * i).sin()).to_dtype(dtype);
        let c0 = seq_tensor(&[b, hd], |i| (0.3 * i + 2.0).cos()).to_dtype(dtype);
        let mask = seq_tensor(&[b, hd], |i| {
            if (i as usize).is_multiple_of(3) {
                0.0
            } else {
                1.5
            }
        })
        .to_dtype(dtype);
        let wy = seq_tensor(&[t, b, hd], |i| (0.11 * i).cos()).to_dtype(dtype);
        for mask in [None, Some(&mask)] {
            let run = |fused: bool| {
                let inputs: Vec<Tensor> = [&gi, &w, &h0, &c0]
                    .iter()
                    .map(|x| x.detach().requires_grad_(true))
                    .collect();
                let (out, h, c) = if fused {
                    assert!(lstm::layer_supports(
                        &inputs[0], &inputs[1], &inputs[2], &inputs[3], mask
                    ));
                    lstm_layer(&inputs[0], &inputs[1], &inputs[2], &inputs[3], mask).unwrap()
                } else {
                    layer_by_steps(&inputs[0], &inputs[1], &inputs[2], &inputs[3], mask)
                };
                let loss = (&out * &wy).sum_all() + (&h * &c).sum_all() + c.sum_all();
                let g = crate::autograd::grad(&[loss], &inputs, None, false, false).unwrap();
                let mut all = vec![out.detach(), h.detach(), c.detach()];
                all.extend(g.into_iter().map(|g| g.unwrap()));
                all
            };
            let (fused, steps) = (run(true), run(false));
            for (k, (a, b)) in fused.iter().zip(&steps).enumerate() {
                assert_eq!(a.shape(), b.shape(), "output {k}");
                let (a, b) = (
                    a.to_dtype(DType::F64),
                    b.to_dtype(DType::F64).to_vec::<f64>(),
                );
                let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                assert_close(&a, &b, tol * scale);
            }
        }
    }

    #[test]
    fn fused_lstm_layer_matches_the_step_loop() {
        fused_layer_vs_steps(DType::F64, 1, 2, 3, 1e-13);
        fused_layer_vs_steps(DType::F64, 6, 3, 5, 1e-12);
        fused_layer_vs_steps(DType::F32, 6, 3, 5, 2e-5);
        // large enough for the column-split products and the parallel cell rows
        fused_layer_vs_steps(DType::F32, 4, 32, 64, 5e-5);
    }

    #[test]
    fn fused_lstm_layer_is_one_node_and_thread_invariant() {
        // the batch rows are split into parts a thread (`cpu::lstm::row_parts`): even and
        // uneven parts, the `sgemm` (f32) and `gemm` (f64) products, with and without a
        // recurrent mask, at 1, 2 and 3 threads
        let (t, hd) = (5, 64);
        for (dtype, b, masked) in [
            (DType::F32, 32, false),
            (DType::F32, 27, true),
            (DType::F64, 27, true),
        ] {
            let gi = seq_tensor(&[t, b, 4 * hd], |i| 2.0 * (0.37 * i).sin())
                .to_dtype(dtype)
                .requires_grad_(true);
            let w = seq_tensor(&[4 * hd, hd], |i| 0.2 * (0.23 * i).cos())
                .to_dtype(dtype)
                .requires_grad_(true);
            let h0 = seq_tensor(&[b, hd], |i| 0.5 * (0.7 * i).sin())
                .to_dtype(dtype)
                .requires_grad_(true);
            let c0 = seq_tensor(&[b, hd], |i| (0.3 * i + 2.0).cos())
                .to_dtype(dtype)
                .requires_grad_(true);
            let mask = masked.then(|| {
                seq_tensor(&[b, hd], |i| {
                    if (i as usize).is_multiple_of(3) {
                        0.0
                    } else {
                        1.5
                    }
                })
                .to_dtype(dtype)
            });
            let run = || {
                let (out, h, c) = lstm_layer(&gi, &w, &h0, &c0, mask.as_ref()).unwrap();
                // out and the states are views of one `lstm_layer` node's output
                for v in [&out, &h, &c] {
                    match &v.grad_fn().unwrap().inputs[0] {
                        Some(crate::autograd::Edge::Node(n)) => {
                            assert_eq!(n.name(), "lstm_layer")
                        }
                        _ => panic!("a view of a non-node"),
                    }
                }
                let loss = (&out * &out).sum_all() + (&h * &c).sum_all() + c.sum_all();
                let inputs = [gi.clone(), w.clone(), h0.clone(), c0.clone()];
                let g = crate::autograd::grad(&[loss], &inputs, None, false, false).unwrap();
                let mut all = vec![out.to_dtype(DType::F64).to_vec::<f64>()];
                all.extend(
                    g.into_iter()
                        .map(|g| g.unwrap().to_dtype(DType::F64).to_vec::<f64>()),
                );
                all
            };
            crate::set_num_threads(1);
            let one = run();
            for threads in [2, 3] {
                crate::set_num_threads(threads);
                let other = run();
                crate::set_num_threads(0);
                for (k, (a, b)) in one.iter().zip(&other).enumerate() {
                    let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(
                        same,
                        "{dtype:?} b={b} output {k}: 1 and {threads} threads differ",
                        b = b.len()
                    );
                }
            }
        }
    }

    #[test]
    fn fused_lstm_layer_second_order() {
        let (t, b, hd) = (3, 2, 2);
        let mask = seq_tensor(&[b, hd], |i| if i as usize == 1 { 0.0 } else { 1.25 });
        let inputs = vec![
            seq_tensor(&[t, b, 4 * hd], |i| (0.37 * i + 0.1).sin()),
            seq_tensor(&[4 * hd, hd], |i| 0.5 * (0.23 * i).cos()),
            seq_tensor(&[b, hd], |i| 0.5 * (0.7 * i).sin()),
            seq_tensor(&[b, hd], |i| (0.3 * i + 2.0).cos()),
        ];
        for mask in [None, Some(&mask)] {
            let f = |v: &[Tensor]| {
                let (out, h, c) = lstm_layer(&v[0], &v[1], &v[2], &v[3], mask).unwrap();
                flat(&[&out, &h, &c])
            };
            gradcheck(f, &inputs, GradcheckOptions::default()).unwrap();
            crate::autograd::gradgradcheck(f, &inputs, GradcheckOptions::default()).unwrap();
        }
    }
}
