//! Fused scaled dot-product attention on CUDA: the host side of the `attention` kernels
//! of `flint-kernels` (`kernels/src/attention.cu`), with the signatures and results of
//! [`crate::cpu::attention::forward`] and [`crate::cpu::attention::backward`], which
//! call [`forward`] and [`backward`] here for CUDA tensors.
//!
//! The kernels see the batch as two levels `(b, h)` with a stride each (and q, k, v a row
//! stride, their last dim contiguous; masks an `(i, j)` stride pair). The broadcast batch
//! shape of a call, of any rank, is mapped onto those two levels by [`split_batch`]:
//! dims of size 1 are dropped and the rest cut in two groups that every operand steps
//! through as through one dim each (broadcast dims, stride 0, included). An operand that
//! cannot follow the cut chosen (its batch dims fall apart in more than two groups, or
//! in two at another place) is copied contiguous at the full broadcast shape first: the
//! cut is the one that copies the fewest elements.
//!
//! Outputs are laid out so that what follows moves nothing ([`dense_rows`], [`packed`]):
//! the output (and the gradient the kernels read back) dense in q's order, which for
//! heads split out of one `[B, T, H·D]` projection is `[B, T, H, D]`, so its transpose
//! and reshape back to `[B, T, H·D]` are views; the gradients dense in their operands'
//! order, or, when q, k and v are disjoint views of one storage (a packed `[B, T, 3·H·D]`
//! projection), in one buffer where q, k and v are in theirs, which the autograd engine
//! then takes as the projection's gradient without a copy (as PyTorch's
//! memory-efficient attention does with its `grad_qkv`).
//!
//! Kernels (W = [`WARPS`] warps per block, one query or key row per warp):
//! - f32, f16 and bf16 with head dims `D, Dv ≤` [`flint_kernels::ATTENTION_TC_MAX_HEAD_DIM`]
//!   on compute capability 8.0 or later: the tensor-core kernels `attention_tc_forward_<dt>`
//!   (128 threads, a block per [`flint_kernels::ATTENTION_TC_FORWARD_ROWS`] queries),
//!   `attention_tc_backward_dq_<dt>` and `attention_tc_backward_dkv_<dt>` (64 threads, a
//!   block per [`flint_kernels::ATTENTION_TC_BACKWARD_ROWS`] queries or keys);
//! - otherwise (f64, larger heads up to [`flint_kernels::ATTENTION_MAX_HEAD_DIM`], older
//!   GPUs) `attention_forward_<dt>`,
//!   `attention_backward_dq_<dt>` and `attention_backward_dkv_<dt>` (32·W threads, a block
//!   per W rows);
//! - `attention_backward_delta_<dt>` (`δ = rowsum(dO ∘ O)`, a warp per row) for both.
//!
//! Grids are `(row blocks, B·H)`, `B·H` capped at 65535 (the kernels loop over the rest).
//! Dropout takes the caller's reserved draw ([`DropoutKey`]), so the kernels drop the
//! very weights the CPU's fused path drops from the same generator state.

use super::context::Gpu;
use super::launch::{self, Arg, AttentionArg};
use super::ops::{acc_dtype, contiguous, copy_to_new, first_element, write};
use crate::cpu::attention::DropoutKey;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::tensor::Tensor;
use cudarc::driver::LaunchConfig;
use flint_kernels::{
    AttentionParams, ATTENTION_MAX_HEAD_DIM, ATTENTION_TC_BACKWARD_ROWS, ATTENTION_TC_FORWARD_ROWS,
    ATTENTION_TC_MAX_HEAD_DIM,
};
use std::sync::Arc;

const OP: &str = "scaled_dot_product_attention";

/// Warps (query or key rows) per block of the `attention_*` kernels.
const WARPS: usize = 8;

/// The largest `gridDim.y`.
const MAX_GRID_Y: usize = 65535;

/// Whether the CUDA kernels take `dtype` (a float type) with head dims `d` (q, k) and
/// `dv` (v): both in `1..=`[`ATTENTION_MAX_HEAD_DIM`].
pub(crate) fn takes(dtype: DType, d: usize, dv: usize) -> bool {
    dtype.is_float()
        && (1..=ATTENTION_MAX_HEAD_DIM).contains(&d)
        && (1..=ATTENTION_MAX_HEAD_DIM).contains(&dv)
}

/// Whether a call of `dtype` with head dims `d`, `dv` runs the tensor-core kernels, on a
/// GPU of compute capability `major` (their `mma.sync` TF32, f16 and bf16 instructions
/// need 8.0+).
fn tensor_cores(dtype: DType, d: usize, dv: usize, major: i32) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
        && d <= ATTENTION_TC_MAX_HEAD_DIM
        && dv <= ATTENTION_TC_MAX_HEAD_DIM
        && major >= 8
}

/// The batch of a call on the kernels' two levels: `b` × `h` problems, and for each
/// operand of [`split_batch`] its `[b, h]` element strides, or `None` when it must be
/// copied contiguous at the full broadcast shape (whose strides are then `[h·mat, mat]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BatchSplit {
    pub(crate) b: usize,
    pub(crate) h: usize,
    pub(crate) strides: Vec<Option<[usize; 2]>>,
}

/// Maps the broadcast batch shape `batch` onto two levels `(b, h)` for operands given as
/// `(strides, mat)`: the operand's strides over `batch` (after broadcasting: 0 along
/// broadcast dims) and its elements per matrix (what a contiguous copy costs per
/// problem). Dims of size 1 are dropped; the others are cut once, after the first
/// `p`, with `b` the product of the sizes before the cut and `h` of those after. An
/// operand keeps its strides when each group steps as one dim for it
/// (`stride[d] = stride[d + 1]·size[d + 1]` within the group); the cut chosen is the one
/// that copies the fewest elements (the first such), and an operand whose dims cannot
/// be grouped so is marked for a copy.
///
/// ```text
/// []            -> (1, 1)      [n] -> (1, n)      [B, H] contiguous -> (1, B·H)
/// [B, H] with k broadcast over H (strides [Tk·D, 0]) -> (B, H), k: [Tk·D, 0]
/// ```
pub(crate) fn split_batch(batch: &[usize], operands: &[(&[usize], usize)]) -> BatchSplit {
    let dims: Vec<usize> = (0..batch.len()).filter(|&d| batch[d] > 1).collect();
    let m = dims.len();
    let nb: usize = batch.iter().product();
    // where each operand's dims fall apart (cuts it needs)
    let breaks: Vec<Vec<usize>> = operands
        .iter()
        .map(|(s, _)| {
            (1..m)
                .filter(|&p| s[dims[p - 1]] != s[dims[p]] * batch[dims[p]])
                .collect()
        })
        .collect();
    let fits = |br: &Vec<usize>, p: usize| br.is_empty() || br.as_slice() == [p];
    // candidate cuts: those some operand needs, else none (p = 0: everything in h)
    let mut candidates: Vec<usize> = breaks
        .iter()
        .filter(|br| br.len() == 1)
        .map(|br| br[0])
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    if candidates.is_empty() {
        candidates.push(0);
    }
    let cost = |p: usize| -> usize {
        breaks
            .iter()
            .zip(operands)
            .filter(|(br, _)| !fits(br, p))
            .map(|(_, (_, mat))| nb * mat)
            .sum()
    };
    let p = candidates
        .iter()
        .copied()
        .min_by_key(|&p| cost(p))
        .unwrap_or(0);
    let b: usize = dims[..p].iter().map(|&d| batch[d]).product();
    let h: usize = dims[p..].iter().map(|&d| batch[d]).product();
    let strides = breaks
        .iter()
        .zip(operands)
        .map(|(br, (s, _))| {
            fits(br, p).then(|| {
                let sb = if p > 0 { s[dims[p - 1]] } else { 0 };
                let sh = if p < m { s[dims[m - 1]] } else { 0 };
                [sb, sh]
            })
        })
        .collect();
    BatchSplit { b, h, strides }
}

/// A dense layout for a kernel output of shape `batch ++ [rows, w]` whose batch the
/// kernels see as `(b, h)` (`h` the product of the trailing batch dims: [`split_batch`]'s
/// cut), with its `(b, h, t)` kernel strides: in `[b, h, rows, w]` order, or in
/// `[b, rows, h, w]` order when `rows_outer` (the order of heads split out of one
/// `[B, T, H·W]` projection: the output's `transpose(1, 2)` and reshape back to
/// `[B, T, H·W]` are then views, and so are the gradients' way back to the projection).
fn dense_rows(
    batch: &[usize],
    h: usize,
    rows: usize,
    w: usize,
    rows_outer: bool,
) -> (Layout, [usize; 3]) {
    let k = if rows_outer {
        [rows * h * w, w, h * w]
    } else {
        [h * rows * w, rows * w, w]
    };
    let n = batch.len();
    let mut shape: Vec<usize> = batch.to_vec();
    shape.extend([rows, w]);
    let mut strides = vec![0; n + 2];
    (strides[n], strides[n + 1]) = (k[2], 1);
    let (mut in_h, mut in_b) = (1, 1);
    for d in (0..n).rev() {
        if in_h < h {
            strides[d] = k[1] * in_h;
            in_h *= batch[d];
        } else {
            strides[d] = k[0] * in_b;
            in_b *= batch[d];
        }
    }
    let layout = Layout {
        shape: shape.into_iter().collect(),
        strides: strides.into_iter().collect(),
        offset: 0,
    };
    (layout, k)
}

/// A new uninitialised tensor laid out as the dense layout `l`, and its address.
fn new_in_layout(g: &Arc<Gpu>, dtype: DType, l: &Layout) -> Result<(Tensor, u64)> {
    let n = l.numel();
    let (buf, p) = launch::output(g, dtype, n)?;
    Ok((Tensor::from_cuda(buf, &[n]).with_layout(l.clone()), p))
}

/// `t` (of `l`'s shape) laid out as the dense layout `l`: itself when it already has
/// `l`'s strides, else a copy.
fn in_layout(g: &Arc<Gpu>, t: &Tensor, l: &Layout) -> Result<Tensor> {
    if t.layout().strides() == l.strides() {
        return Ok(t.clone());
    }
    let (c, _) = new_in_layout(g, t.dtype(), l)?;
    write(OP, &c, t, t.layout())?;
    Ok(c)
}

/// An operand on the device as the kernels read it: the tensor holding its elements
/// (kept alive until the launches are queued), the address of its first element, its
/// `[b, h]` strides and the strides of its matrices.
struct Operand {
    _keep: Tensor,
    ptr: u64,
    bh: [usize; 2],
    mat: [usize; 2],
}

/// The operands of one call mapped onto the kernels' `(b, h)` levels, and the parameters
/// of its launches.
struct Call {
    gpu: Arc<Gpu>,
    params: AttentionParams,
    q: Operand,
    k: Operand,
    v: Operand,
    /// `(mask or 0, bias or 0)`.
    mask: (u64, u64),
    _mask: Option<Operand>,
    /// Grid rows `b·h` (capped at [`MAX_GRID_Y`]).
    grid_y: u32,
    tc: bool,
    /// The layout of the output and its gradient ([`dense_rows`], in q's order).
    o_layout: Layout,
    /// The gradients' layouts: each dense in its operand's order, or, when q, k and v are
    /// disjoint views of one storage ([`packed`]), q's, k's and v's own layouts in one
    /// buffer of this many elements (offsets from the first of them).
    grad_layouts: [Layout; 3],
    grad_span: Option<usize>,
}

/// When `q`, `k` and `v` (as the kernels read them: `[b, h]` and row strides, their
/// layouts over `batch ++ [rows, w]`) are views of one storage with the same strides and
/// shapes that share no element (the heads of one packed `[B, T, 3·H·D]` projection),
/// the elements from the first of their offsets to the end of the last, and the three
/// layouts shifted to that start: their gradients can then be written in one buffer at
/// the same places, so that the projection's gradient is that buffer, with no copy.
/// Sufficient test for "share no element" (rows > 1): within a row (stride `st`) each
/// view covers `[offset, offset + (h − 1)·sh + w)`, those three spans are disjoint and fit
/// in one row, heads do not overlap (`sh ≥ w`) and batches do not (`sb ≥ rows·st`).
fn packed(
    views: [([usize; 2], [usize; 2], &Layout); 3],
    shared: bool,
    b: usize,
    h: usize,
    rows: usize,
) -> Option<(usize, [Layout; 3])> {
    let [(qbh, qmat, lq), k, v] = views;
    let same = |(bh, mat, l): ([usize; 2], [usize; 2], &Layout)| {
        bh == qbh && mat == qmat && l.shape() == lq.shape()
    };
    if !(shared && same(k) && same(v)) {
        return None;
    }
    let (lk, lv) = (k.2, v.2);
    let ([sb, sh], [st, unit]) = (qbh, qmat);
    let w = *lq.shape().last()?;
    let extent = (h - 1) * sh + w;
    let mut offs = [lq.offset(), lk.offset(), lv.offset()];
    offs.sort_unstable();
    let apart = offs.windows(2).all(|x| x[0] + extent <= x[1]);
    let in_row = offs[2] + extent <= offs[0] + st;
    let heads = h <= 1 || sh >= w;
    let batches = b <= 1 || sb >= rows * st;
    if !(rows > 1 && unit == 1 && w > 0 && apart && in_row && heads && batches) {
        return None;
    }
    let start = offs[0];
    let shifted = |l: &Layout| {
        let mut l = l.clone();
        l.offset -= start;
        l
    };
    let span = [lq, lk, lv].iter().map(|l| l.storage_extent()).max()? - start;
    Some((span, [shifted(lq), shifted(lk), shifted(lv)]))
}

fn int(v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::shape(OP, "a size beyond i64"))
}

impl Call {
    #[allow(clippy::too_many_arguments)]
    fn new(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        batch: &[usize],
        causal: bool,
        scale: f64,
        drop: Option<DropoutKey>,
    ) -> Result<Call> {
        let dt = q.dtype();
        let (tq, tk, d, dv) = (q.size(-2), k.size(-2), q.size(-1), v.size(-1));
        if !takes(dt, d, dv) {
            return Err(Error::NoCudaKernel {
                op: OP,
                device: q.device(),
            });
        }
        // q, k, v with a unit stride along their last dim (the kernels read rows as such)
        let unit_last = crate::cpu::attention::unit_last;
        let (qc, kc, vc) = (unit_last(q)?, unit_last(k)?, unit_last(v)?);
        if let Some(m) = mask
            && m.dtype() != DType::Bool
            && m.dtype() != dt
        {
            return Err(Error::shape(
                OP,
                "internal: a float mask of another dtype reached the CUDA kernels",
            ));
        }
        let nr = batch.len();
        let full = |rows: usize, cols: usize| {
            let mut s = batch.to_vec();
            s.extend([rows, cols]);
            s
        };
        let mut views = vec![(&qc, full(tq, d)), (&kc, full(tk, d)), (&vc, full(tk, dv))];
        if let Some(m) = mask {
            views.push((m, full(tq, tk)));
        }
        let layouts = views
            .iter()
            .map(|(t, shape)| t.layout().broadcast_to(OP, shape))
            .collect::<Result<Vec<_>>>()?;
        let specs: Vec<(&[usize], usize)> = layouts
            .iter()
            .map(|l| (&l.strides()[..nr], l.shape()[nr] * l.shape()[nr + 1]))
            .collect();
        let split = split_batch(batch, &specs);
        let mut ops = Vec::with_capacity(views.len());
        for (((t, _), l), st) in views.iter().zip(&layouts).zip(&split.strides) {
            let mat = l.shape()[nr] * l.shape()[nr + 1];
            let op = match st {
                Some(bh) => {
                    let (_, ptr) = first_element(OP, t)?;
                    Operand {
                        _keep: (*t).clone(),
                        ptr,
                        bh: *bh,
                        mat: [l.strides()[nr], l.strides()[nr + 1]],
                    }
                }
                None => {
                    let c = copy_to_new(&t.with_layout(l.clone()))?;
                    let (_, ptr) = first_element(OP, &c)?;
                    Operand {
                        _keep: c,
                        ptr,
                        bh: [split.h * mat, mat],
                        mat: [l.shape()[nr + 1], 1],
                    }
                }
            };
            ops.push(op);
        }
        let mut ops = ops.into_iter();
        let (Some(oq), Some(ok), Some(ov)) = (ops.next(), ops.next(), ops.next()) else {
            return Err(Error::shape(OP, "internal: attention operands missing"));
        };
        let om = ops.next();
        let packing = packed(
            [
                (oq.bh, oq.mat, &layouts[0]),
                (ok.bh, ok.mat, &layouts[1]),
                (ov.bh, ov.mat, &layouts[2]),
            ],
            oq._keep.shares_storage(&ok._keep) && oq._keep.shares_storage(&ov._keep),
            split.b,
            split.h,
            tq,
        )
        .filter(|_| tq == tk && d == dv);
        let (gpu, _) = first_element(OP, &qc)?;
        let (major, _) = gpu.capability;
        let (b, h) = (split.b, split.h);
        let row_strides = |o: &Operand| -> Result<[i64; 3]> {
            Ok([int(o.bh[0])?, int(o.bh[1])?, int(o.mat[0])?])
        };
        let mut params =
            AttentionParams::contiguous(int(b)?, int(h)?, int(tq)?, int(tk)?, int(d)?, int(dv)?)
                .with_scale(scale)
                .with_causal(causal);
        params.q_stride = row_strides(&oq)?;
        params.k_stride = row_strides(&ok)?;
        params.v_stride = row_strides(&ov)?;
        // outputs in their operand's order: rows outside heads when the operand has them so
        let outer = |o: &Operand| h > 1 && o.mat[0] > o.bh[1];
        let kernel =
            |k: [usize; 3]| -> Result<[i64; 3]> { Ok([int(k[0])?, int(k[1])?, int(k[2])?]) };
        let (o_layout, o_stride) = dense_rows(batch, h, tq, dv, outer(&oq));
        params.o_stride = kernel(o_stride)?;
        let (grad_span, grad_layouts) = match packing {
            Some((span, layouts)) => {
                params.dq_stride = params.q_stride;
                params.dk_stride = params.k_stride;
                params.dv_stride = params.v_stride;
                (Some(span), layouts)
            }
            None => {
                let (dq_layout, dq_stride) = dense_rows(batch, h, tq, d, outer(&oq));
                let (dk_layout, dk_stride) = dense_rows(batch, h, tk, d, outer(&ok));
                let (dv_layout, dv_stride) = dense_rows(batch, h, tk, dv, outer(&ov));
                params.dq_stride = kernel(dq_stride)?;
                params.dk_stride = kernel(dk_stride)?;
                params.dv_stride = kernel(dv_stride)?;
                (None, [dq_layout, dk_layout, dv_layout])
            }
        };
        if let Some(key) = drop {
            params = params.with_dropout(key.p, key.seed, key.first);
        }
        let mut mask_ptrs = (0, 0);
        if let (Some(m), Some(o)) = (mask, &om) {
            let s = [int(o.bh[0])?, int(o.bh[1])?, int(o.mat[0])?, int(o.mat[1])?];
            if m.dtype() == DType::Bool {
                params = params.with_mask_strides(s);
                mask_ptrs.0 = o.ptr;
            } else {
                params = params.with_bias_strides(s);
                mask_ptrs.1 = o.ptr;
            }
        }
        Ok(Call {
            gpu,
            params,
            q: oq,
            k: ok,
            v: ov,
            mask: mask_ptrs,
            _mask: om,
            grid_y: (b * h).clamp(1, MAX_GRID_Y) as u32,
            tc: tensor_cores(dt, d, dv, major),
            o_layout,
            grad_layouts,
            grad_span,
        })
    }

    /// A launch of blocks of `threads` threads, each taking `per_block` of `rows` rows.
    fn config(&self, rows: usize, per_block: usize, threads: u32) -> Result<LaunchConfig> {
        let x = u32::try_from(rows.div_ceil(per_block))
            .map_err(|_| Error::shape(OP, "too many rows for one CUDA launch"))?;
        Ok(LaunchConfig {
            grid_dim: (x, self.grid_y, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        })
    }

    /// The launch of a kernel over the query rows (forward, dq).
    fn query_config(&self) -> Result<LaunchConfig> {
        let tq = self.params.tq as usize;
        if self.tc {
            self.config(tq, ATTENTION_TC_FORWARD_ROWS, 128)
        } else {
            self.config(tq, WARPS, 32 * WARPS as u32)
        }
    }

    /// The launch of the tensor-core dq kernel, or of the other kernels over the query
    /// rows.
    fn dq_config(&self) -> Result<LaunchConfig> {
        if self.tc {
            self.config(self.params.tq as usize, ATTENTION_TC_BACKWARD_ROWS, 64)
        } else {
            self.query_config()
        }
    }

    /// The launch of a kernel over the key rows (dk, dv).
    fn key_config(&self) -> Result<LaunchConfig> {
        let tk = self.params.tk as usize;
        if self.tc {
            self.config(tk, ATTENTION_TC_BACKWARD_ROWS, 64)
        } else {
            self.config(tk, WARPS, 32 * WARPS as u32)
        }
    }

    /// The entry `attention_<base>_<dt>` or, on tensor cores, `attention_tc_<base>_<dt>`.
    fn entry(&self, base: &str, dtype: DType, device: crate::Device) -> Result<String> {
        let family = if self.tc {
            "attention_tc_"
        } else {
            "attention_"
        };
        launch::entry(OP, device, &format!("{family}{base}"), dtype)
    }

    /// The leading kernel arguments `q, k, v, mask, bias`.
    fn inputs(&self) -> [Arg; 5] {
        [
            Arg::Ptr(self.q.ptr),
            Arg::Ptr(self.k.ptr),
            Arg::Ptr(self.v.ptr),
            Arg::Ptr(self.mask.0),
            Arg::Ptr(self.mask.1),
        ]
    }
}

/// [`crate::cpu::attention::forward`] on CUDA tensors: `(output, lse)` of shapes
/// `batch ++ [Tq, Dv]` and `batch ++ [Tq]` (lse in the kernels' acc type: q's dtype for
/// f32/f64, f32 for f16/bf16; the output dense in q's order, see [`dense_rows`]).
/// Records nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    batch: &[usize],
    causal: bool,
    scale: f64,
    drop: Option<DropoutKey>,
) -> Result<(Tensor, Tensor)> {
    let dt = q.dtype();
    let c = Call::new(q, k, v, mask, batch, causal, scale, drop)?;
    let nb: usize = batch.iter().product();
    let tq = q.size(-2);
    let (out, po) = new_in_layout(&c.gpu, dt, &c.o_layout)?;
    let (lse, pl) = launch::output(&c.gpu, acc_dtype(dt), nb * tq)?;
    let name = c.entry("forward", dt, q.device())?;
    let mut args = c.inputs().to_vec();
    args.extend([
        Arg::Ptr(po),
        Arg::Ptr(pl),
        Arg::Attention(AttentionArg(c.params)),
    ]);
    launch::launch(OP, &c.gpu, &name, c.query_config()?, &args)?;
    let mut lshape = batch.to_vec();
    lshape.push(tq);
    Ok((out, Tensor::from_cuda(lse, &lshape)))
}

/// [`crate::cpu::attention::backward`] on CUDA tensors: `(dq, dk, dv)` of shapes
/// `batch ++ [Tq, D]`, `batch ++ [Tk, D]`, `batch ++ [Tk, Dv]` (dense in q's, k's and v's
/// order, see [`dense_rows`]) from the forward's `out` and `lse` and the output gradient
/// `g` (any strides and float dtype: copied into the output's layout in q's dtype unless
/// it has it). Records nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    batch: &[usize],
    causal: bool,
    scale: f64,
    drop: Option<DropoutKey>,
    out: &Tensor,
    lse: &Tensor,
    g: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dt = q.dtype();
    let device = q.device();
    let c = Call::new(q, k, v, mask, batch, causal, scale, drop)?;
    let nb: usize = batch.iter().product();
    let tq = q.size(-2);
    let gc = in_layout(&c.gpu, &g.to_dtype_raw(dt)?, &c.o_layout)?;
    let oc = in_layout(&c.gpu, out, &c.o_layout)?;
    let lc = contiguous(lse)?;
    let (_, pg) = first_element(OP, &gc)?;
    let (_, po) = first_element(OP, &oc)?;
    let (_, pl) = first_element(OP, &lc)?;
    // δ = rowsum(dO ∘ O), a warp per row
    let rows = nb * tq;
    // (kept until the kernels reading it are queued: the end of this function)
    let (_delta, pdelta) = launch::output(&c.gpu, acc_dtype(dt), rows)?;
    let name = launch::entry(OP, device, "attention_backward_delta", dt)?;
    let params = Arg::Attention(AttentionArg(c.params));
    let args = [Arg::Ptr(po), Arg::Ptr(pg), Arg::Ptr(pdelta), params];
    let dv = c.params.dv as usize;
    launch::launch(OP, &c.gpu, &name, launch::warp_rows(rows, dv), &args)?;
    let [(dq, pdq), (dk, pdk), (dvt, pdv)] = match c.grad_span {
        // one buffer, the gradients where their operands are in theirs
        Some(span) => {
            let (buf, p) = launch::output(&c.gpu, dt, span)?;
            let all = Tensor::from_cuda(buf, &[span]);
            c.grad_layouts.clone().map(|l| {
                let at = p + (l.offset * dt.size_in_bytes()) as u64;
                (all.with_layout(l), at)
            })
        }
        None => {
            let [lq, lk, lv] = &c.grad_layouts;
            [
                new_in_layout(&c.gpu, dt, lq)?,
                new_in_layout(&c.gpu, dt, lk)?,
                new_in_layout(&c.gpu, dt, lv)?,
            ]
        }
    };
    let saved = [Arg::Ptr(pg), Arg::Ptr(pl), Arg::Ptr(pdelta)];
    let mut args = c.inputs().to_vec();
    args.extend(saved);
    args.extend([Arg::Ptr(pdq), params]);
    let name = c.entry("backward_dq", dt, device)?;
    launch::launch(OP, &c.gpu, &name, c.dq_config()?, &args)?;
    let mut args = c.inputs().to_vec();
    args.extend(saved);
    args.extend([Arg::Ptr(pdk), Arg::Ptr(pdv), params]);
    let name = c.entry("backward_dkv", dt, device)?;
    launch::launch(OP, &c.gpu, &name, c.key_config()?, &args)?;
    Ok((dq, dk, dvt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(
        batch: &[usize],
        ops: &[(&[usize], usize)],
    ) -> (usize, usize, Vec<Option<[usize; 2]>>) {
        let s = split_batch(batch, ops);
        (s.b, s.h, s.strides)
    }

    /// Every element offset of `l` (row-major over its shape).
    fn offsets(l: &Layout) -> Vec<usize> {
        let mut out = vec![l.offset];
        for (&n, &st) in l.shape.iter().zip(&l.strides) {
            out = out
                .iter()
                .flat_map(|&o| (0..n).map(move |i| o + i * st))
                .collect();
        }
        out
    }

    /// The kernels' view of `t` (`[B, H, T, D]`): `([b, h] strides, row strides, layout)`.
    fn kernel_view(t: &Tensor) -> ([usize; 2], [usize; 2], Layout) {
        let s = t.layout().strides();
        ([s[0], s[1]], [s[2], s[3]], t.layout().clone())
    }

    #[test]
    fn gradients_of_a_packed_projection_share_one_buffer() {
        let (b, t, h, d) = (2, 5, 3, 4);
        let c = h * d;
        let qkv = Tensor::zeros([b, t, 3 * c], ());
        let heads = |z: &Tensor| z.view([b, t, h, d]).transpose(1, 2);
        let parts = qkv.split(c, -1);
        let [q, k, v] = [0, 1, 2].map(|i| kernel_view(&heads(&parts[i])));
        let check = |views: [&([usize; 2], [usize; 2], Layout); 3], shared: bool| {
            packed(views.map(|(bh, m, l)| (*bh, *m, l)), shared, b, h, t)
        };
        let (span, ls) = check([&q, &k, &v], true).expect("a packed projection");
        assert_eq!(span, b * t * 3 * c);
        assert_eq!(ls.each_ref().map(|l| l.offset()), [0, c, 2 * c]);
        assert_eq!(ls[1].strides(), k.2.strides());
        // any order of the three
        assert!(check([&v, &q, &k], true).is_some());
        // not one storage; one tensor three times (self-attention on x); overlapping views
        assert!(check([&q, &k, &v], false).is_none());
        assert!(check([&q, &q, &q], true).is_none());
        let half = kernel_view(&heads(&qkv.narrow(2, d / 2, c)));
        assert!(check([&q, &half, &v], true).is_none());
        // contiguous heads ([B, H, T, D] packed along H): not rows of one projection
        let x = Tensor::zeros([b, 3 * h, t, d], ());
        let [q, k, v] = [0, 1, 2].map(|i| kernel_view(&x.narrow(1, i * h, h)));
        assert!(check([&q, &k, &v], true).is_none());
    }

    #[test]
    fn outputs_are_dense_in_their_operands_order() {
        for (batch, h) in [
            (vec![2, 3], 3),
            (vec![2, 1, 3], 3),
            (vec![6], 6),
            (vec![4], 1),
            (vec![2, 3, 2], 6),
            (vec![], 1),
        ] {
            for outer in [false, true] {
                let (l, k) = dense_rows(&batch, h, 4, 5, outer);
                // dense: every offset below the element count once
                let mut o = offsets(&l);
                o.sort_unstable();
                assert_eq!(o, (0..l.numel()).collect::<Vec<_>>(), "{batch:?} {outer}");
                // the kernel's (b, h, t) strides address the same elements as the layout
                let nb: usize = batch.iter().product();
                let via_kernel: Vec<usize> = (0..nb)
                    .flat_map(|bh| (0..4).map(move |t| (bh / h, bh % h, t)))
                    .flat_map(|(b, hh, t)| (0..5).map(move |c| b * k[0] + hh * k[1] + t * k[2] + c))
                    .collect();
                // element by element: the layout's row-major order is (b, h, t, c)
                assert_eq!(via_kernel, offsets(&l), "{batch:?} {outer}");
            }
        }
        // not outer: contiguous; outer: [B, T, H, W], whose transpose(1, 2) is contiguous
        assert_eq!(
            dense_rows(&[2, 3], 3, 4, 5, false).0.strides(),
            &[60, 20, 5, 1]
        );
        assert_eq!(
            dense_rows(&[2, 3], 3, 4, 5, true).0.strides(),
            &[60, 5, 15, 1]
        );
    }

    #[test]
    fn low_ranks_map_directly() {
        // rank 0: one problem
        assert_eq!(split(&[], &[(&[], 12)]), (1, 1, vec![Some([0, 0])]));
        // rank 1: all in h
        assert_eq!(
            split(&[5], &[(&[12], 12), (&[0], 20)]),
            (1, 5, vec![Some([0, 12]), Some([0, 0])])
        );
        // rank 2, contiguous: merged into h
        assert_eq!(
            split(&[2, 3], &[(&[36, 12], 12)]),
            (1, 6, vec![Some([0, 12])])
        );
        // size-1 dims are dropped, whatever their stride
        assert_eq!(
            split(&[1, 4, 1], &[(&[999, 7, 3], 7)]),
            (1, 4, vec![Some([0, 7])])
        );
    }

    #[test]
    fn a_broadcast_operand_sets_the_cut() {
        // q [2, 3] contiguous, k broadcast over heads, a key-padding mask [B, 1, 1, Tk]
        let (q, k, m) = (&[3 * 40, 40][..], &[50, 0][..], &[10, 0][..]);
        assert_eq!(
            split(&[2, 3], &[(q, 40), (k, 50), (m, 80)]),
            (2, 3, vec![Some([120, 40]), Some([50, 0]), Some([10, 0])])
        );
        // a transposed q [B, T, H, D] -> [B, H, T, D]: batch strides [T·H·D, D]
        let qt = &[5 * 3 * 4, 4][..];
        assert_eq!(split(&[2, 3], &[(qt, 20)]), (2, 3, vec![Some([60, 4])]));
    }

    #[test]
    fn rank_three_merges_where_strides_allow() {
        // [2, 3, 4] contiguous q and k broadcast over the first dim: cut after dim 0
        let q = &[3 * 4 * 10, 4 * 10, 10][..];
        let k = &[0, 4 * 6, 6][..];
        assert_eq!(
            split(&[2, 3, 4], &[(q, 10), (k, 6)]),
            (2, 12, vec![Some([120, 10]), Some([0, 6])])
        );
        // a mask broadcast over the last batch dim: cut after dim 1
        let m = &[3, 1, 0][..];
        assert_eq!(
            split(&[2, 3, 4], &[(q, 10), (m, 1)]),
            (6, 4, vec![Some([40, 10]), Some([1, 0])])
        );
    }

    #[test]
    fn operands_that_do_not_fit_are_copied() {
        // k broadcast over the middle dim only: three groups, copied
        let q = &[3 * 4 * 10, 4 * 10, 10][..];
        let k = &[4 * 10, 0, 10][..];
        assert_eq!(
            split(&[2, 3, 4], &[(q, 10), (k, 10)]),
            (1, 24, vec![Some([0, 10]), None])
        );
        // two operands that need different cuts: the cheaper one is copied
        let a = &[0, 4, 1][..]; // cut after dim 0
        let b = &[12, 4, 0][..]; // cut after dim 1
        let (bb, hh, s) = split(&[2, 3, 4], &[(a, 100), (b, 10)]);
        assert_eq!((bb, hh, s), (2, 12, vec![Some([0, 1]), None]));
        let (bb, hh, s) = split(&[2, 3, 4], &[(a, 10), (b, 100)]);
        assert_eq!((bb, hh, s), (6, 4, vec![None, Some([4, 0])]));
    }

    /// Every problem's offset through the split equals its offset through the original
    /// strides (row-major over `batch`), for the operands that keep theirs.
    #[test]
    fn kept_strides_address_every_problem() {
        let batch = [2usize, 1, 3, 2];
        let ops: [&[usize]; 4] = [
            &[6 * 9, 77, 2 * 9, 9],
            &[0, 5, 2 * 7, 7],
            &[0, 0, 0, 11],
            &[13, 0, 0, 0],
        ];
        let specs: Vec<(&[usize], usize)> = ops.iter().map(|s| (*s, 1)).collect();
        let s = split_batch(&batch, &specs);
        assert_eq!(s.b * s.h, 12);
        for (st, kept) in ops.iter().zip(&s.strides) {
            let Some([sb, sh]) = kept else { continue };
            for flat in 0..12 {
                let (mut rest, mut want) = (flat, 0);
                for d in (0..batch.len()).rev() {
                    want += (rest % batch[d]) * st[d];
                    rest /= batch[d];
                }
                assert_eq!(
                    (flat / s.h) * sb + (flat % s.h) * sh,
                    want,
                    "{st:?} at {flat}"
                );
            }
        }
        assert!(
            s.strides.iter().filter(|x| x.is_some()).count() >= 3,
            "{s:?}"
        );
    }

    #[test]
    fn kernel_choice_and_head_dims() {
        assert!(takes(DType::F32, 64, 64) && takes(DType::BF16, 128, 1));
        assert!(!takes(DType::F16, 129, 64) && !takes(DType::F64, 64, 0));
        assert!(!takes(DType::I64, 8, 8) && !takes(DType::Bool, 8, 8));
        assert!(tensor_cores(DType::F32, 64, 64, 9));
        assert!(tensor_cores(DType::F16, 64, 64, 8) && tensor_cores(DType::BF16, 8, 64, 9));
        assert!(!tensor_cores(DType::BF16, 64, 80, 9) && !tensor_cores(DType::F16, 64, 64, 7));
        assert!(!tensor_cores(DType::F32, 80, 64, 9) && !tensor_cores(DType::F32, 64, 65, 9));
        assert!(!tensor_cores(DType::F64, 32, 32, 9));
        assert!(!tensor_cores(DType::F32, 64, 64, 7)); // no TF32 mma before sm_80
        for e in [
            "attention_tc_forward_f32",
            "attention_tc_backward_dq_f32",
            "attention_tc_backward_dkv_f32",
            "attention_tc_forward_bf16",
            "attention_tc_backward_dq_f16",
            "attention_tc_backward_dkv_bf16",
            "attention_forward_f64",
            "attention_backward_delta_f32",
            "attention_backward_dkv_f64",
        ] {
            assert!(flint_kernels::module_of(e).is_some(), "{e}");
        }
    }
}
