//! The CUDA side of the tensor ops: one function per op family, each called from the
//! op's CPU implementation when its inputs are on a CUDA device, each launching the
//! `flint-kernels` entry `<op>_<dtype>` of that family (see `kernels/README.md` for
//! the signatures). Ops and dtypes without an entry return
//! [`Error::NoCudaKernel`](crate::Error::NoCudaKernel); nothing here copies device
//! memory to the host, except the few bytes of an index kernel's status flag.
//!
//! Inputs may be any strided view where the kernel takes a `Layout` (elementwise ops,
//! copies, casts); the other kernels (reductions, index ops, triangles) take
//! contiguous inputs, made with the strided copy kernel when needed. Outputs are new
//! contiguous tensors.

use super::buffer::CudaBuffer;
use super::launch::{self, Arg};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::{Dims, Layout};
use crate::tensor::Tensor;
use cudarc::driver::LaunchConfig;

/// Unary ops with an entry `<op>_<dtype>(const T* x, Layout lx, T* out, i64 n)`.
const UNARY: &[&str] = &[
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "tanh",
    "sigmoid",
    "silu",
    "sin",
    "cos",
    "reciprocal",
    "floor",
    "ceil",
    "round",
    "erf",
    "gelu",
    "gelu_tanh",
    "neg",
    "abs",
    "square",
    "sign",
    "relu",
    "logical_not",
];

/// Binary ops with an entry `<op>_<dtype>(a, Layout la, b, Layout lb, out, i64 n)`
/// (arithmetic keeps the dtype, comparisons and logical ops give bool).
const BINARY: &[&str] = &[
    "add",
    "sub",
    "mul",
    "div",
    "pow",
    "maximum",
    "minimum",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "logical_and",
    "logical_or",
    "logical_xor",
    "gelu_backward",
    "gelu_tanh_backward",
    "relu_backward",
];

/// Tensor-scalar ops with an entry `<op>_scalar_<dtype>(x, Layout lx, out, i64 n,
/// double s)` (floats only).
const SCALAR: &[&str] = &[
    "add", "sub", "rsub", "mul", "div", "rdiv", "pow", "rpow", "maximum", "minimum",
];

fn no_kernel(op: &'static str, device: Device) -> Error {
    Error::NoCudaKernel { op, device }
}

/// The device, and the address of the element at `t`'s offset (for kernels that take
/// a pointer to a contiguous tensor's first element).
pub(crate) fn first_element(
    op: &'static str,
    t: &Tensor,
) -> Result<(std::sync::Arc<super::context::Gpu>, u64)> {
    let (g, p, len) = launch::ptr(op, t)?;
    let l = t.layout();
    if l.numel() > 0 && l.storage_extent() > len {
        return Err(Error::shape(
            op,
            "internal: a layout reaches past its CUDA buffer",
        ));
    }
    Ok((g, p + (l.offset() * t.dtype().size_in_bytes()) as u64))
}

/// `t` itself when contiguous, else a contiguous copy (strided copy kernel).
pub(crate) fn contiguous(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() {
        return Ok(t.clone());
    }
    copy_to_new(t)
}

/// A new contiguous copy of any view of a CUDA tensor (`contiguous_<dt>`).
pub(crate) fn copy_to_new(t: &Tensor) -> Result<Tensor> {
    const OP: &str = "contiguous";
    let p = launch::ptr_for(OP, t, t.layout())?;
    let (g, _, _) = launch::ptr(OP, t)?;
    let n = t.numel();
    let name = launch::entry(OP, t.device(), "contiguous", t.dtype())?;
    let (buf, po) = launch::output(&g, t.dtype(), n)?;
    let [ls] = launch::layouts(OP, [t.layout()])?;
    launch::launch(
        OP,
        &g,
        &name,
        launch::elementwise(n),
        &[Arg::Ptr(p), ls, Arg::Ptr(po), Arg::n(n)],
    )?;
    Ok(Tensor::from_cuda(buf, t.shape()))
}

/// Writes the view `lsrc` of `src` (same shape as `dst`, same dtype) into the elements
/// of `dst` through its layout, bumping `dst`'s version (`copy_<dt>`). `src` must not
/// share storage with `dst`.
pub(crate) fn write(op: &'static str, dst: &Tensor, src: &Tensor, lsrc: &Layout) -> Result<()> {
    let ps = launch::ptr_for(op, src, lsrc)?;
    let pd = launch::ptr_for(op, dst, dst.layout())?;
    let (g, _, _) = launch::ptr(op, dst)?;
    let n = dst.numel();
    let name = launch::entry(op, dst.device(), "copy", dst.dtype())?;
    let [ls, ld] = launch::layouts(op, [lsrc, dst.layout()])?;
    let args = [Arg::Ptr(ps), ls, Arg::Ptr(pd), ld, Arg::n(n)];
    // the write guard bumps the version counter and keeps readers out while queued
    let _w = dst.storage().write();
    launch::launch(op, &g, &name, launch::elementwise(n), &args)
}

/// `a <op>= b` in place through `a`'s layout, `lb` a view of `b` broadcast to `a`'s shape
/// (`<op>_assign_<dt>` for add, sub, mul, div): `a`'s elements must not overlap and `b`
/// must not share its storage; bumps `a`'s version.
pub(crate) fn assign(op: &'static str, a: &Tensor, b: &Tensor, lb: &Layout) -> Result<()> {
    let base = format!("{op}_assign");
    let name = launch::entry(op, a.device(), &base, a.dtype())?;
    let pa = launch::ptr_for(op, a, a.layout())?;
    let pb = launch::ptr_for(op, b, lb)?;
    let (g, _, _) = launch::ptr(op, a)?;
    let n = a.numel();
    let [la, lb] = launch::layouts(op, [a.layout(), lb])?;
    let args = [Arg::Ptr(pa), la, Arg::Ptr(pb), lb, Arg::n(n)];
    // the write guard bumps the version counter and keeps readers out while queued
    let _w = a.storage().write();
    launch::launch(op, &g, &name, launch::elementwise(n), &args)
}

/// `x` converted to `dtype` (`cast_<from>_<to>`, the CPU's conversions).
pub(crate) fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    const OP: &str = "to_dtype";
    if x.dtype() == dtype {
        return Ok(x.clone());
    }
    let base = format!("cast_{}", launch::suffix(x.dtype()));
    let name = launch::entry(OP, x.device(), &base, dtype)?;
    let p = launch::ptr_for(OP, x, x.layout())?;
    let (g, _, _) = launch::ptr(OP, x)?;
    let n = x.numel();
    let (buf, po) = launch::output(&g, dtype, n)?;
    let [lx] = launch::layouts(OP, [x.layout()])?;
    launch::launch(
        OP,
        &g,
        &name,
        launch::elementwise(n),
        &[Arg::Ptr(p), lx, Arg::Ptr(po), Arg::n(n)],
    )?;
    Ok(Tensor::from_cuda(buf, x.shape()))
}

/// A unary op of the [`UNARY`] table on a view of a CUDA tensor; the output has
/// `out_dtype` (the input's, or bool for `logical_not`).
pub(crate) fn unary(op: &'static str, x: &Tensor, out_dtype: DType) -> Result<Tensor> {
    if !UNARY.contains(&op) {
        return Err(no_kernel(op, x.device()));
    }
    let name = launch::entry(op, x.device(), op, x.dtype())?;
    let p = launch::ptr_for(op, x, x.layout())?;
    let (g, _, _) = launch::ptr(op, x)?;
    let n = x.numel();
    let (buf, po) = launch::output(&g, out_dtype, n)?;
    let [lx] = launch::layouts(op, [x.layout()])?;
    launch::launch(
        op,
        &g,
        &name,
        launch::elementwise(n),
        &[Arg::Ptr(p), lx, Arg::Ptr(po), Arg::n(n)],
    )?;
    Ok(Tensor::from_cuda(buf, x.shape()))
}

/// A binary op of the [`BINARY`] table over the views `la` of `a` and `lb` of `b`
/// (one dtype, already broadcast to one shape); the output has `out_dtype`.
pub(crate) fn binary(
    op: &'static str,
    a: &Tensor,
    la: &Layout,
    b: &Tensor,
    lb: &Layout,
    out_dtype: DType,
) -> Result<Tensor> {
    if !BINARY.contains(&op) {
        return Err(no_kernel(op, a.device()));
    }
    let name = launch::entry(op, a.device(), op, a.dtype())?;
    let pa = launch::ptr_for(op, a, la)?;
    let pb = launch::ptr_for(op, b, lb)?;
    let (g, _, _) = launch::ptr(op, a)?;
    let n = la.numel();
    let (buf, po) = launch::output(&g, out_dtype, n)?;
    let [la_arg, lb_arg] = launch::layouts(op, [la, lb])?;
    launch::launch(
        op,
        &g,
        &name,
        launch::elementwise(n),
        &[
            Arg::Ptr(pa),
            la_arg,
            Arg::Ptr(pb),
            lb_arg,
            Arg::Ptr(po),
            Arg::n(n),
        ],
    )?;
    Ok(Tensor::from_cuda(buf, la.shape()))
}

/// `x <op> s` for a float tensor and a scalar passed as a kernel argument
/// (`<op>_scalar_<dt>`, the scalar rounded to x's dtype as the CPU does); `None` when
/// the table or the dtype has no such kernel (then the caller takes the tensor path).
pub(crate) fn scalar(op: &'static str, x: &Tensor, s: f64) -> Result<Option<Tensor>> {
    if !SCALAR.contains(&op) || !x.dtype().is_float() {
        return Ok(None);
    }
    let base = format!("{op}_scalar");
    let name = launch::entry(op, x.device(), &base, x.dtype())?;
    let p = launch::ptr_for(op, x, x.layout())?;
    let (g, _, _) = launch::ptr(op, x)?;
    let n = x.numel();
    let (buf, po) = launch::output(&g, x.dtype(), n)?;
    let [lx] = launch::layouts(op, [x.layout()])?;
    launch::launch(
        op,
        &g,
        &name,
        launch::elementwise(n),
        &[Arg::Ptr(p), lx, Arg::Ptr(po), Arg::n(n), Arg::F64(s)],
    )?;
    Ok(Some(Tensor::from_cuda(buf, x.shape())))
}

/// `cond ? a : b` over three views broadcast to one shape (`where_<dt>`).
pub(crate) fn where_(
    c: (&Tensor, &Layout),
    a: (&Tensor, &Layout),
    b: (&Tensor, &Layout),
) -> Result<Tensor> {
    const OP: &str = "where";
    let name = launch::entry(OP, a.0.device(), "where", a.0.dtype())?;
    let pc = launch::ptr_for(OP, c.0, c.1)?;
    let pa = launch::ptr_for(OP, a.0, a.1)?;
    let pb = launch::ptr_for(OP, b.0, b.1)?;
    let (g, _, _) = launch::ptr(OP, a.0)?;
    let n = a.1.numel();
    let (buf, po) = launch::output(&g, a.0.dtype(), n)?;
    let [lc, la, lb] = launch::layouts(OP, [c.1, a.1, b.1])?;
    launch::launch(
        OP,
        &g,
        &name,
        launch::elementwise(n),
        &[
            Arg::Ptr(pc),
            lc,
            Arg::Ptr(pa),
            la,
            Arg::Ptr(pb),
            lb,
            Arg::Ptr(po),
            Arg::n(n),
        ],
    )?;
    Ok(Tensor::from_cuda(buf, a.1.shape()))
}

/// `mask ? value : x` with the mask view `lm` broadcast to x's shape; `value` is a
/// kernel argument (`masked_fill_<dt>`).
pub(crate) fn masked_fill(x: &Tensor, mask: &Tensor, lm: &Layout, value: f64) -> Result<Tensor> {
    const OP: &str = "masked_fill";
    let dt = x.dtype();
    let name = launch::entry(OP, x.device(), "masked_fill", dt)?;
    let px = launch::ptr_for(OP, x, x.layout())?;
    let pm = launch::ptr_for(OP, mask, lm)?;
    let (g, _, _) = launch::ptr(OP, x)?;
    let n = x.numel();
    let (buf, po) = launch::output(&g, dt, n)?;
    let [lx, lm] = launch::layouts(OP, [x.layout(), lm])?;
    launch::launch(
        OP,
        &g,
        &name,
        launch::elementwise(n),
        &[
            Arg::Ptr(px),
            lx,
            Arg::Ptr(pm),
            lm,
            Arg::element(dt, value),
            Arg::Ptr(po),
            Arg::n(n),
        ],
    )?;
    Ok(Tensor::from_cuda(buf, x.shape()))
}

/// `base` with the rows of `src` added at `index` along dim `d` (`index_add_<dt>`, atomics):
/// `out[.., index[j], ..] += src[.., j, ..]`; `src` has `base`'s shape except
/// `index.numel()` in dim `d`. `None` when an index is out of range.
pub(crate) fn index_add(
    base: &Tensor,
    d: usize,
    index: &Tensor,
    src: &Tensor,
) -> Result<Option<Tensor>> {
    const OP: &str = "index_add";
    let out = copy_to_new(base)?;
    let (_, po) = first_element(OP, &out)?;
    let in_range = index_rows(OP, src, index, po, base.shape(), d)?;
    Ok(in_range.then_some(out))
}

/// Launches `<op>_<dt>` of the index kernels whose arguments are `(src, idx, out,
/// outer, dim, inner, n_idx, status)` around dim `d` of `shape` (index_select: `shape`
/// is src's, out is `[outer, n_idx, inner]`; index_add: `shape` is out's, src is): the
/// operands made contiguous, `out` the address of a contiguous output. False when an
/// index is out of range.
fn index_rows(
    op: &'static str,
    src: &Tensor,
    index: &Tensor,
    out: u64,
    shape: &[usize],
    d: usize,
) -> Result<bool> {
    let name = launch::entry(op, src.device(), op, src.dtype())?;
    let (src, idx) = (contiguous(src)?, contiguous(index)?);
    let (g, ps) = first_element(op, &src)?;
    let (_, pi) = first_element(op, &idx)?;
    let (outer, inner): (usize, usize) =
        (shape[..d].iter().product(), shape[d + 1..].iter().product());
    let n_idx = idx.numel();
    launch::launch_checked(
        op,
        &g,
        &name,
        outer * n_idx * inner,
        &[
            Arg::Ptr(ps),
            Arg::Ptr(pi),
            Arg::Ptr(out),
            Arg::n(outer),
            Arg::n(shape[d]),
            Arg::n(inner),
            Arg::n(n_idx),
        ],
    )
}

/// `t` (contiguous) viewed as `[outer, dim, inner]` around the sorted `dims`, or a
/// contiguous copy with the kept dims first and the reduced dims last when `dims` are
/// not one run of adjacent dims. Returns the tensor and `(outer, dim, inner)`.
fn reduction_view(t: &Tensor, dims: &[usize]) -> Result<(Tensor, usize, usize, usize)> {
    let shape = t.shape();
    let prod = |r: &[usize]| r.iter().product::<usize>();
    let (Some(&first), Some(&last)) = (dims.first(), dims.last()) else {
        // nothing reduced: every element is its own output
        return Ok((contiguous(t)?, t.numel(), 1, 1));
    };
    if last - first + 1 == dims.len() {
        let src = contiguous(t)?;
        return Ok((
            src,
            prod(&shape[..first]),
            prod(&shape[first..=last]),
            prod(&shape[last + 1..]),
        ));
    }
    let kept: Vec<usize> = (0..t.ndim()).filter(|d| !dims.contains(d)).collect();
    let perm: Vec<usize> = kept.iter().chain(dims).copied().collect();
    let moved = t.with_layout(t.layout().permute(&perm)?);
    let n_out = kept.iter().map(|&d| shape[d]).product();
    let n_red = dims.iter().map(|&d| shape[d]).product();
    Ok((copy_to_new(&moved)?, n_out, n_red, 1))
}

/// `sum`, `prod`, `max` or `min` of a CUDA tensor over the sorted, distinct `dims`
/// (`<kind>_dim_<dt>`), with the output shape `shape`. Bool max/min go through i64.
pub(crate) fn reduce(
    kind: &'static str,
    t: &Tensor,
    dims: &[usize],
    shape: &[usize],
) -> Result<Tensor> {
    if !matches!(kind, "sum" | "prod" | "max" | "min") {
        return Err(no_kernel(kind, t.device()));
    }
    if t.dtype() == DType::Bool {
        let r = reduce(kind, &cast(t, DType::I64)?, dims, shape)?;
        return cast(&r, DType::Bool);
    }
    let (src, outer, dim, inner) = reduction_view(t, dims)?;
    if inner >= COLS_MIN_INNER && dim > 1 {
        return reduce_cols(kind, &src, (outer, dim, inner), shape);
    }
    let base = format!("{kind}_dim");
    let name = launch::entry(kind, t.device(), &base, t.dtype())?;
    let (g, p) = first_element(kind, &src)?;
    let n_out = outer * inner;
    let (buf, po) = launch::output(&g, t.dtype(), n_out)?;
    launch::launch(
        kind,
        &g,
        &name,
        launch::rows(n_out),
        &[
            Arg::Ptr(p),
            Arg::Ptr(po),
            Arg::n(outer),
            Arg::n(dim),
            Arg::n(inner),
        ],
    )?;
    Ok(Tensor::from_cuda(buf, shape))
}

/// From this many columns (`inner`) on, a reduction runs on the `*_cols` kernels, whose
/// warps read along the columns (coalesced), instead of one block per output.
const COLS_MIN_INNER: usize = 16;
/// Blocks a column reduction aims for (a few waves on any GPU): fewer column tiles than
/// this split the rows into chunks, reduced again by a second launch.
const COLS_TARGET_BLOCKS: usize = 512;
/// The fewest rows a chunk of a column reduction takes (each of the 8 warps of a block
/// then sums at least 8).
const COLS_MIN_CHUNK: usize = 64;

/// How many row chunks a column reduction of `dim` rows over `blocks` column tiles uses.
fn cols_chunks(blocks: usize, dim: usize) -> usize {
    if blocks >= COLS_TARGET_BLOCKS / 2 {
        return 1;
    }
    COLS_TARGET_BLOCKS
        .div_ceil(blocks.max(1))
        .min(dim.div_ceil(COLS_MIN_CHUNK))
        .clamp(1, u16::MAX as usize)
}

/// `sum`/`prod`/`max`/`min` of the contiguous `[outer, dim, inner]` tensor `src` over `dim` on
/// the `<kind>_cols*` kernels: one launch, or (few column tiles, many rows) partials per
/// row chunk in the acc type and a second launch over them.
fn reduce_cols(
    kind: &'static str,
    src: &Tensor,
    (outer, dim, inner): (usize, usize, usize),
    shape: &[usize],
) -> Result<Tensor> {
    let dt = src.dtype();
    let (g, p) = first_element(kind, src)?;
    let blocks = outer * inner.div_ceil(32);
    let chunks = cols_chunks(blocks, dim);
    let chunk = dim.div_ceil(chunks);
    let chunks = dim.div_ceil(chunk);
    let cfg = |y: usize| LaunchConfig {
        grid_dim: (blocks.min(1 << 16) as u32, y as u32, 1),
        block_dim: (launch::BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let (buf, po) = launch::output(&g, dt, outer * inner)?;
    let sizes = |d: usize, c: usize| {
        [
            Arg::n(outer),
            Arg::n(d),
            Arg::n(inner),
            Arg::n(c),
            Arg::F64(1.0),
        ]
    };
    if chunks == 1 {
        let name = launch::entry(kind, src.device(), &format!("{kind}_cols"), dt)?;
        let args: Vec<Arg> = [Arg::Ptr(p), Arg::Ptr(po)]
            .into_iter()
            .chain(sizes(dim, dim))
            .collect();
        launch::launch(kind, &g, &name, cfg(1), &args)?;
    } else {
        let (part, pp) = launch::output(&g, acc_dtype(dt), outer * chunks * inner)?;
        let name = launch::entry(kind, src.device(), &format!("{kind}_cols_part"), dt)?;
        let args: Vec<Arg> = [Arg::Ptr(p), Arg::Ptr(pp)]
            .into_iter()
            .chain(sizes(dim, chunk))
            .collect();
        launch::launch(kind, &g, &name, cfg(chunks), &args)?;
        let name = launch::entry(kind, src.device(), &format!("{kind}_cols_fin"), dt)?;
        let args: Vec<Arg> = [Arg::Ptr(pp), Arg::Ptr(po)]
            .into_iter()
            .chain(sizes(chunks, chunks))
            .collect();
        launch::launch(kind, &g, &name, cfg(1), &args)?;
        // the partials are freed once queued: their block is reused only by later work
        // of the same stream
        drop(part);
    }
    Ok(Tensor::from_cuda(buf, shape))
}

/// The acc type of the row and column kernels for `dt` (their saved statistics and
/// partial sums): f64 for f64, i64 for i64, f32 otherwise.
pub(crate) fn acc_dtype(dt: DType) -> DType {
    match dt {
        DType::F64 => DType::F64,
        DType::I64 => DType::I64,
        _ => DType::F32,
    }
}

/// `(rows, cols)` of a tensor seen as rows of its last `cols` elements.
fn rows_cols(t: &Tensor, cols: usize) -> (usize, usize) {
    (t.numel().checked_div(cols).unwrap_or(0), cols)
}

/// Softmax (or log-softmax) along the last dim of a float CUDA tensor with the fused row
/// kernel (`softmax_<dt>` / `log_softmax_<dt>`): a new contiguous tensor of `x`'s shape.
pub(crate) fn softmax_last(x: &Tensor, log: bool) -> Result<Tensor> {
    let op = if log { "log_softmax" } else { "softmax" };
    let (rows, cols) = rows_cols(x, x.shape().last().copied().unwrap_or(1));
    let name = launch::entry(
        op,
        x.device(),
        &launch::warp_row_entry(op, cols, launch::SOFTMAX_KS),
        x.dtype(),
    )?;
    let src = contiguous(x)?;
    let (g, p) = first_element(op, &src)?;
    let (buf, po) = launch::output(&g, x.dtype(), x.numel())?;
    let args = [Arg::Ptr(p), Arg::Ptr(po), Arg::n(rows), Arg::n(cols)];
    launch::launch(op, &g, &name, launch::warp_rows(rows, cols), &args)?;
    Ok(Tensor::from_cuda(buf, x.shape()))
}

/// The gradient of [`softmax_last`] from its output `y` and the output gradient `dy`
/// (same shape and dtype) with the fused row kernel (`softmax_backward_<dt>` /
/// `log_softmax_backward_<dt>`).
pub(crate) fn softmax_last_backward(y: &Tensor, dy: &Tensor, log: bool) -> Result<Tensor> {
    let op = if log { "log_softmax" } else { "softmax" };
    let base = if log {
        "log_softmax_backward"
    } else {
        "softmax_backward"
    };
    let (rows, cols) = rows_cols(y, y.shape().last().copied().unwrap_or(1));
    let name = launch::entry(
        op,
        y.device(),
        &launch::warp_row_entry(base, cols, launch::SOFTMAX_KS),
        y.dtype(),
    )?;
    let (ys, gs) = (contiguous(y)?, contiguous(dy)?);
    let (g, py) = first_element(op, &ys)?;
    let (_, pg) = first_element(op, &gs)?;
    let (buf, po) = launch::output(&g, y.dtype(), y.numel())?;
    let args = [
        Arg::Ptr(py),
        Arg::Ptr(pg),
        Arg::Ptr(po),
        Arg::n(rows),
        Arg::n(cols),
    ];
    launch::launch(op, &g, &name, launch::warp_rows(rows, cols), &args)?;
    Ok(Tensor::from_cuda(buf, y.shape()))
}

/// The address of an optional contiguous operand (0 for none).
fn opt_ptr(op: &'static str, t: Option<&Tensor>) -> Result<(Option<Tensor>, u64)> {
    match t {
        None => Ok((None, 0)),
        Some(t) => {
            let c = contiguous(t)?;
            let (_, p) = first_element(op, &c)?;
            Ok((Some(c), p))
        }
    }
}

/// Layer norm of a float CUDA tensor over its last `n` elements (`layer_norm_<dt>`, or
/// `layer_norm_w<K>_<dt>`, a warp per row, for rows of up to 1024 elements), with
/// optional weight and bias of `n` elements: the output and the per-row mean and rstd
/// (`[rows]`, in the acc type: x's dtype for f32/f64).
pub(crate) fn layer_norm_rows(
    x: &Tensor,
    n: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "LayerNorm";
    let dt = x.dtype();
    let (rows, cols) = rows_cols(x, n);
    let base = launch::warp_row_entry("layer_norm", cols, launch::LAYER_NORM_KS);
    let name = launch::entry(OP, x.device(), &base, dt)?;
    let src = contiguous(x)?;
    let (g, p) = first_element(OP, &src)?;
    let (_w, pw) = opt_ptr(OP, weight)?;
    let (_b, pb) = opt_ptr(OP, bias)?;
    let (y, py) = launch::output(&g, dt, x.numel())?;
    let (mean, pm) = launch::output(&g, acc_dtype(dt), rows)?;
    let (rstd, pr) = launch::output(&g, acc_dtype(dt), rows)?;
    let args = [
        Arg::Ptr(p),
        Arg::Ptr(pw),
        Arg::Ptr(pb),
        Arg::Ptr(py),
        Arg::Ptr(pm),
        Arg::Ptr(pr),
        Arg::n(rows),
        Arg::n(cols),
        Arg::F64(eps),
    ];
    launch::launch(OP, &g, &name, launch::warp_rows(rows, cols), &args)?;
    Ok((
        Tensor::from_cuda(y, x.shape()),
        Tensor::from_cuda(mean, &[rows]),
        Tensor::from_cuda(rstd, &[rows]),
    ))
}

/// The gradients of [`layer_norm_rows`] on CUDA: `dx` (`layer_norm_backward_<dt>`, one
/// block per row, or its warp-per-row form) and the weight and bias gradients (`[n]`; per-chunk column partials of
/// `layer_norm_backward_params_<dt>`, finished by `sum_cols_fin_<dt>`), each only when
/// asked for.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn layer_norm_rows_backward(
    x: &Tensor,
    dy: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    n: usize,
    weight: Option<&Tensor>,
    (need_x, need_w, need_b): (bool, bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    const OP: &str = "LayerNorm";
    let dt = x.dtype();
    let (rows, cols) = rows_cols(x, n);
    let (xs, gs) = (contiguous(x)?, contiguous(dy)?);
    let (g, px) = first_element(OP, &xs)?;
    let (_, pg) = first_element(OP, &gs)?;
    let (_m, pm) = opt_ptr(OP, Some(mean))?;
    let (_r, pr) = opt_ptr(OP, Some(rstd))?;
    let dx = if need_x {
        let base = launch::warp_row_entry("layer_norm_backward", cols, launch::LAYER_NORM_KS);
        let name = launch::entry(OP, x.device(), &base, dt)?;
        let (_w, pw) = opt_ptr(OP, weight)?;
        let (dx, pdx) = launch::output(&g, dt, x.numel())?;
        let args = [
            Arg::Ptr(pg),
            Arg::Ptr(px),
            Arg::Ptr(pw),
            Arg::Ptr(pm),
            Arg::Ptr(pr),
            Arg::Ptr(pdx),
            Arg::n(rows),
            Arg::n(cols),
        ];
        launch::launch(OP, &g, &name, launch::warp_rows(rows, cols), &args)?;
        Some(Tensor::from_cuda(dx, x.shape()))
    } else {
        None
    };
    if !(need_w || need_b) || cols == 0 {
        let zeros = |need: bool| -> Result<Option<Tensor>> {
            need.then(|| Tensor::try_zeros([cols], (dt, x.device())))
                .transpose()
        };
        return Ok((dx, zeros(need_w)?, zeros(need_b)?));
    }
    let blocks = cols.div_ceil(32);
    let chunks = cols_chunks(blocks, rows);
    let chunk = rows.div_ceil(chunks).max(1);
    let chunks = rows.div_ceil(chunk).max(1);
    let acc = acc_dtype(dt);
    let part = |need: bool| -> Result<Option<(CudaBuffer, u64)>> {
        need.then(|| launch::output(&g, acc, chunks * cols))
            .transpose()
    };
    let (part_w, part_b) = (part(need_w)?, part(need_b)?);
    let addr = |p: &Option<(CudaBuffer, u64)>| p.as_ref().map_or(0, |(_, a)| *a);
    let cfg = |y: usize| LaunchConfig {
        grid_dim: (blocks.min(1 << 16) as u32, y as u32, 1),
        block_dim: (launch::BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let name = launch::entry(OP, x.device(), "layer_norm_backward_params", dt)?;
    let args = [
        Arg::Ptr(pg),
        Arg::Ptr(px),
        Arg::Ptr(pm),
        Arg::Ptr(pr),
        Arg::Ptr(addr(&part_w)),
        Arg::Ptr(addr(&part_b)),
        Arg::n(rows),
        Arg::n(cols),
        Arg::n(chunk),
    ];
    launch::launch(OP, &g, &name, cfg(chunks), &args)?;
    let fin = launch::entry(OP, x.device(), "sum_cols_fin", dt)?;
    let finish = |p: Option<(CudaBuffer, u64)>| -> Result<Option<Tensor>> {
        let Some((_part, pp)) = p else {
            return Ok(None);
        };
        let (out, po) = launch::output(&g, dt, cols)?;
        let args = [
            Arg::Ptr(pp),
            Arg::Ptr(po),
            Arg::n(1),
            Arg::n(chunks),
            Arg::n(cols),
            Arg::n(chunks),
            Arg::F64(1.0),
        ];
        launch::launch(OP, &g, &fin, cfg(1), &args)?;
        Ok(Some(Tensor::from_cuda(out, &[cols])))
    };
    Ok((dx, finish(part_w)?, finish(part_b)?))
}

/// A sliding-window kernel of the `window` module (`im2col`, `col2im`, `window_argmax`)
/// on a CUDA tensor: `src` (made contiguous) is `planes` planes, and the output, of
/// `out_numel` elements of `out_dtype`, gets `shape`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn window(
    op: &'static str,
    entry: &str,
    src: &Tensor,
    planes: usize,
    w: &crate::ops::window::Window,
    out_dtype: DType,
    shape: &[usize],
) -> Result<Tensor> {
    let params = flint_kernels::WindowParams::new(
        &w.input,
        &w.kernel,
        &w.stride,
        &w.padding,
        &w.dilation,
        &w.output,
    )
    .ok_or_else(|| Error::config(op, format!("invalid window for the CUDA kernels: {w:?}")))?;
    let name = launch::entry(op, src.device(), entry, src.dtype())?;
    let s = contiguous(src)?;
    let (g, p) = first_element(op, &s)?;
    let n: usize = shape.iter().product();
    let (buf, po) = launch::output(&g, out_dtype, n)?;
    let args = [
        Arg::Ptr(p),
        Arg::Ptr(po),
        Arg::n(planes),
        Arg::Window(launch::WindowArg(params)),
    ];
    launch::launch(op, &g, &name, launch::elementwise(n), &args)?;
    Ok(Tensor::from_cuda(buf, shape))
}

/// `(n, c, s)` of a `[N, C, *S]` tensor (s = the product of the spatial dims).
fn ncs(x: &Tensor) -> (usize, usize, usize) {
    let (n, c) = (x.size(0), x.size(1));
    (n, c, x.numel().checked_div(n * c).unwrap_or(0))
}

/// Batch norm of a float CUDA tensor `[N, C, *S]` on the fused kernels: the batch's
/// per-channel mean and biased variance (`batch_norm_stats_<dt>`) unless `stats` gives
/// them (evaluation), then `(x − mean)/√(var + eps)·weight + bias`
/// (`batch_norm_apply_<dt>`). Returns `(y, mean, var, invstd)`, the statistics `[C]`
/// in x's dtype (f32/f64).
pub(crate) fn batch_norm_forward(
    x: &Tensor,
    stats: Option<(&Tensor, &Tensor)>,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    const OP: &str = "BatchNorm";
    let dt = x.dtype();
    let (n, c, sp) = ncs(x);
    let src = contiguous(x)?;
    let (g, px) = first_element(OP, &src)?;
    let (mean, var) = match stats {
        Some((m, v)) => (contiguous(m)?, contiguous(v)?),
        None => {
            let name = launch::entry(OP, x.device(), "batch_norm_stats", dt)?;
            let (m, pm) = launch::output(&g, acc_dtype(dt), c)?;
            let (v, pv) = launch::output(&g, acc_dtype(dt), c)?;
            let args = [
                Arg::Ptr(px),
                Arg::Ptr(pm),
                Arg::Ptr(pv),
                Arg::n(n),
                Arg::n(c),
                Arg::n(sp),
            ];
            launch::launch(OP, &g, &name, launch::rows(c), &args)?;
            (Tensor::from_cuda(m, &[c]), Tensor::from_cuda(v, &[c]))
        }
    };
    let (_, pm) = first_element(OP, &mean)?;
    let (_, pv) = first_element(OP, &var)?;
    let (_w, pw) = opt_ptr(OP, weight)?;
    let (_b, pb) = opt_ptr(OP, bias)?;
    let name = launch::entry(OP, x.device(), "batch_norm_apply", dt)?;
    let (y, py) = launch::output(&g, dt, x.numel())?;
    let args = [
        Arg::Ptr(px),
        Arg::Ptr(pm),
        Arg::Ptr(pv),
        Arg::Ptr(pw),
        Arg::Ptr(pb),
        Arg::Ptr(py),
        Arg::n(n),
        Arg::n(c),
        Arg::n(sp),
        Arg::F64(eps),
    ];
    launch::launch(OP, &g, &name, launch::elementwise(x.numel()), &args)?;
    let invstd = var.try_add(eps)?.rsqrt();
    Ok((Tensor::from_cuda(y, x.shape()), mean, var, invstd))
}

/// The gradients of [`batch_norm_forward`] on CUDA, each only when asked for: the
/// per-channel sums `Σ dy` and `Σ dy·x̂` (`batch_norm_backward_reduce_<dt>`, which also
/// writes `dweight` and `dbias`), then, with batch statistics, the training-mode `dx`
/// (`batch_norm_backward_apply_<dt>`), or with fixed ones `dx = dy·weight·invstd`.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn batch_norm_backward(
    x: &Tensor,
    dy: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    invstd: &Tensor,
    weight: Option<&Tensor>,
    batch_stats: bool,
    eps: f64,
    (need_x, need_w, need_b): (bool, bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    const OP: &str = "BatchNorm";
    let dt = x.dtype();
    let (n, c, sp) = ncs(x);
    let (xs, gs) = (contiguous(x)?, contiguous(dy)?);
    let (g, px) = first_element(OP, &xs)?;
    let (_, pg) = first_element(OP, &gs)?;
    let (mean, var) = (contiguous(mean)?, contiguous(var)?);
    let (_, pm) = first_element(OP, &mean)?;
    let (_, pv) = first_element(OP, &var)?;
    let sums = need_w || need_b || (need_x && batch_stats);
    let mut out_w = None;
    let mut out_b = None;
    let mut sum_bufs = None;
    if sums {
        let name = launch::entry(OP, x.device(), "batch_norm_backward_reduce", dt)?;
        let (s1, p1) = launch::output(&g, acc_dtype(dt), c)?;
        let (s2, p2) = launch::output(&g, acc_dtype(dt), c)?;
        let dw = need_w.then(|| launch::output(&g, dt, c)).transpose()?;
        let db = need_b.then(|| launch::output(&g, dt, c)).transpose()?;
        let addr = |o: &Option<(CudaBuffer, u64)>| o.as_ref().map_or(0, |(_, p)| *p);
        let args = [
            Arg::Ptr(pg),
            Arg::Ptr(px),
            Arg::Ptr(pm),
            Arg::Ptr(pv),
            Arg::Ptr(p1),
            Arg::Ptr(p2),
            Arg::Ptr(addr(&dw)),
            Arg::Ptr(addr(&db)),
            Arg::n(n),
            Arg::n(c),
            Arg::n(sp),
            Arg::F64(eps),
        ];
        launch::launch(OP, &g, &name, launch::rows(c), &args)?;
        out_w = dw.map(|(b, _)| Tensor::from_cuda(b, &[c]));
        out_b = db.map(|(b, _)| Tensor::from_cuda(b, &[c]));
        sum_bufs = Some((s1, p1, s2, p2));
    }
    let dx = match (need_x, batch_stats, &sum_bufs) {
        (false, _, _) => None,
        (true, true, Some((_, p1, _, p2))) => {
            let (_w, pw) = opt_ptr(OP, weight)?;
            let name = launch::entry(OP, x.device(), "batch_norm_backward_apply", dt)?;
            let (dx, pdx) = launch::output(&g, dt, x.numel())?;
            let args = [
                Arg::Ptr(pg),
                Arg::Ptr(px),
                Arg::Ptr(pm),
                Arg::Ptr(pv),
                Arg::Ptr(pw),
                Arg::Ptr(*p1),
                Arg::Ptr(*p2),
                Arg::Ptr(pdx),
                Arg::n(n),
                Arg::n(c),
                Arg::n(sp),
                Arg::F64(eps),
            ];
            launch::launch(OP, &g, &name, launch::elementwise(x.numel()), &args)?;
            Some(Tensor::from_cuda(dx, x.shape()))
        }
        (true, _, _) => {
            // fixed statistics: dx = dy · weight · invstd per channel
            let k = match weight {
                Some(w) => w.try_mul(invstd)?,
                None => invstd.clone(),
            };
            let mut kshape = vec![1usize; x.ndim()];
            kshape[1] = c;
            Some(gs.try_mul(k.try_reshape(kshape.as_slice())?)?)
        }
    };
    drop(sum_bufs);
    Ok((dx, out_w, out_b))
}

/// The index (i64) of the maximum (`max`) or minimum along `dim` (`argmax_dim_<dt>` /
/// `argmin_dim_<dt>`), with the output shape `shape`. Bool goes through i64.
pub(crate) fn arg_reduce(
    t: &Tensor,
    dim: Option<usize>,
    max: bool,
    shape: &[usize],
) -> Result<Tensor> {
    let op = if max { "argmax" } else { "argmin" };
    if t.dtype() == DType::Bool {
        return arg_reduce(&cast(t, DType::I64)?, dim, max, shape);
    }
    let dims: Vec<usize> = dim.into_iter().collect();
    let (src, outer, d, inner) = reduction_view(t, &dims)?;
    let base = format!("{op}_dim");
    let name = launch::entry(op, t.device(), &base, t.dtype())?;
    let (g, p) = first_element(op, &src)?;
    let n_out = outer * inner;
    let (buf, po) = launch::output(&g, DType::I64, n_out)?;
    launch::launch(
        op,
        &g,
        &name,
        launch::rows(n_out),
        &[
            Arg::Ptr(p),
            Arg::Ptr(0),
            Arg::Ptr(po),
            Arg::n(outer),
            Arg::n(d),
            Arg::n(inner),
        ],
    )?;
    Ok(Tensor::from_cuda(buf, shape))
}

/// `src.index_select(d, index)` for a 0-d or 1-d i64 `index` on the same device
/// (`index_select_<dt>`); `Ok(None)` when an index is out of range (the caller finds
/// it and raises the CPU's error).
pub(crate) fn index_select(src: &Tensor, d: usize, index: &Tensor) -> Result<Option<Tensor>> {
    const OP: &str = "index_select";
    let shape = src.shape();
    let mut out_shape: Dims = shape.into();
    out_shape[d] = index.numel();
    let (g, _, _) = launch::ptr(OP, src)?;
    let (buf, po) = launch::output(&g, src.dtype(), out_shape.iter().product())?;
    let in_range = index_rows(OP, src, index, po, shape, d)?;
    Ok(in_range.then(|| Tensor::from_cuda(buf, &out_shape)))
}

/// `x.masked_select(mask)` on CUDA for the views `lx` of `x` and `lm` of the bool `mask`,
/// broadcast to one shape: the flat positions where the mask is true are read on the
/// host (the output's size depends on them; PyTorch's `masked_select` waits for the
/// device here too), and the values gathered on the device (`index_select`).
pub(crate) fn masked_select(x: &Tensor, lx: &Layout, mask: &Tensor, lm: &Layout) -> Result<Tensor> {
    const OP: &str = "masked_select";
    let keep = mask
        .with_layout(lm.clone())
        .try_to(Device::Cpu)?
        .to_vec::<bool>();
    let pos: Vec<i64> = keep
        .iter()
        .enumerate()
        .filter(|(_, k)| **k)
        .map(|(i, _)| i as i64)
        .collect();
    let n = pos.len();
    let idx = Tensor::from_vec(pos, [n]).try_to(x.device())?;
    let flat = copy_to_new(&x.with_layout(lx.clone()))?;
    let flat = flat.with_layout(Layout::contiguous(&[flat.numel()]));
    index_select(&flat, 0, &idx)?
        .ok_or_else(|| Error::index(OP, "internal: a position past the end of the tensor"))
}

/// The view of `t` cut to `shape[k]` in every dim `k` (from 0): the region of a
/// gather/scatter that `index` covers.
fn region(t: &Tensor, shape: &[usize], skip: Option<usize>) -> Tensor {
    let mut l = t.layout().clone();
    for (k, &n) in shape.iter().enumerate() {
        if Some(k) != skip && n != l.shape()[k] {
            l = l.slice(k, 0, n, 1);
        }
    }
    t.with_layout(l)
}

/// `src.gather(d, index)` for `src` and `index` of the same rank (≥ 1), `index` no
/// larger than `src` outside dim `d` (`gather_<dt>`); `Ok(None)` for an index out of
/// range.
pub(crate) fn gather(src: &Tensor, d: usize, index: &Tensor) -> Result<Option<Tensor>> {
    const OP: &str = "gather";
    let name = launch::entry(OP, src.device(), "gather", src.dtype())?;
    let ishape = index.shape().to_vec();
    let src_dim = src.shape()[d];
    let src = contiguous(&region(src, &ishape, Some(d)))?;
    let idx = contiguous(index)?;
    let (g, ps) = first_element(OP, &src)?;
    let (_, pi) = first_element(OP, &idx)?;
    let outer: usize = ishape[..d].iter().product();
    let inner: usize = ishape[d + 1..].iter().product();
    let n = idx.numel();
    let (buf, po) = launch::output(&g, src.dtype(), n)?;
    let in_range = launch::launch_checked(
        OP,
        &g,
        &name,
        n,
        &[
            Arg::Ptr(ps),
            Arg::Ptr(pi),
            Arg::Ptr(po),
            Arg::n(outer),
            Arg::n(src_dim),
            Arg::n(ishape[d]),
            Arg::n(inner),
        ],
    )?;
    if !in_range {
        return Ok(None);
    }
    Ok(Some(Tensor::from_cuda(buf, &ishape)))
}

/// A copy of `base` with `src` added at `index` along `d` (`scatter_add_<dt>`, float
/// sums in a nondeterministic order); all three of one rank (≥ 1), `index` no larger
/// than `src`, and than `base` outside `d`. `Ok(None)` for an index out of range.
pub(crate) fn scatter_add(
    base: &Tensor,
    d: usize,
    index: &Tensor,
    src: &Tensor,
) -> Result<Option<Tensor>> {
    const OP: &str = "scatter_add";
    let name = launch::entry(OP, base.device(), "scatter_add", base.dtype())?;
    let ishape = index.shape().to_vec();
    let out = copy_to_new(base)?;
    // the part of the output the index covers, as a contiguous buffer of its own when
    // it is not the whole output
    let covers_all = ishape
        .iter()
        .zip(base.shape())
        .enumerate()
        .all(|(k, (&i, &b))| k == d || i == b);
    let target = if covers_all {
        out.clone()
    } else {
        copy_to_new(&region(&out, &ishape, Some(d)))?
    };
    let src = contiguous(&region(src, &ishape, None))?;
    let idx = contiguous(index)?;
    let (g, ps) = first_element(OP, &src)?;
    let (_, pi) = first_element(OP, &idx)?;
    let (_, pt) = first_element(OP, &target)?;
    let outer: usize = ishape[..d].iter().product();
    let inner: usize = ishape[d + 1..].iter().product();
    let n = idx.numel();
    let in_range = launch::launch_checked(
        OP,
        &g,
        &name,
        n,
        &[
            Arg::Ptr(ps),
            Arg::Ptr(pi),
            Arg::Ptr(pt),
            Arg::n(outer),
            Arg::n(base.shape()[d]),
            Arg::n(ishape[d]),
            Arg::n(inner),
        ],
    )?;
    if !in_range {
        return Ok(None);
    }
    if !covers_all {
        let view = region(&out, &ishape, Some(d));
        write(OP, &view, &target, target.layout())?;
    }
    Ok(Some(out))
}

/// The tensors `parts` (already of dtype `dt`) joined along `d` into a new tensor of
/// `shape` (one strided copy per part into its slot).
pub(crate) fn cat(parts: &[Tensor], d: usize, shape: &[usize], dt: DType) -> Result<Tensor> {
    const OP: &str = "cat";
    let device = parts.first().map_or(Device::Cpu, |t| t.device());
    let (g, _, _) = match parts.first() {
        Some(t) => launch::ptr(OP, t)?,
        None => return Err(no_kernel(OP, device)),
    };
    let n: usize = shape.iter().product();
    let (buf, _) = launch::output(&g, dt, n)?;
    let out = Tensor::from_cuda(buf, shape);
    let mut start = 0;
    for t in parts {
        let len = t.shape()[d];
        let slot = out.with_layout(out.layout().slice(d, start, len, 1));
        write(OP, &slot, t, t.layout())?;
        start += len;
    }
    Ok(out)
}

/// The upper (`upper`) or lower triangle of the last two dims of `x`, the rest zeroed
/// (`triu_<dt>` / `tril_<dt>`).
pub(crate) fn tri(x: &Tensor, diagonal: i64, upper: bool) -> Result<Tensor> {
    let op = if upper { "triu" } else { "tril" };
    let name = launch::entry(op, x.device(), op, x.dtype())?;
    let src = contiguous(x)?;
    let (g, p) = first_element(op, &src)?;
    let nd = x.ndim();
    let (r, c) = (x.shape()[nd - 2], x.shape()[nd - 1]);
    let batch: usize = x.shape()[..nd - 2].iter().product();
    let n = x.numel();
    let (buf, po) = launch::output(&g, x.dtype(), n)?;
    launch::launch(
        op,
        &g,
        &name,
        launch::elementwise(n),
        &[
            Arg::Ptr(p),
            Arg::Ptr(po),
            Arg::n(batch),
            Arg::n(r),
            Arg::n(c),
            Arg::I64(diagonal),
        ],
    )?;
    Ok(Tensor::from_cuda(buf, x.shape()))
}

/// `start + i·step` for `i` in `0..n` on device `ordinal` (`arange_<dt>`, computed in
/// f64 as the CPU does); `None` for bool (no kernel: the caller uploads).
pub(crate) fn arange(
    n: usize,
    start: f64,
    step: f64,
    dtype: DType,
    ordinal: usize,
) -> Result<Option<Tensor>> {
    const OP: &str = "arange";
    if dtype == DType::Bool {
        return Ok(None);
    }
    let g = super::gpu(ordinal)?;
    let name = launch::entry(OP, Device::Cuda(ordinal), "arange", dtype)?;
    let (buf, po) = launch::output(&g, dtype, n)?;
    launch::launch(
        OP,
        &g,
        &name,
        launch::elementwise(n),
        &[Arg::Ptr(po), Arg::n(n), Arg::F64(start), Arg::F64(step)],
    )?;
    Ok(Some(Tensor::from_cuda(buf, &[n])))
}

/// The global generator's `(seed, offset)` for `n` draws, its offset moved past them (a
/// kernel then draws element `i` from counter `offset + i`, as the CPU does).
fn reserve_draws(n: usize) -> (u64, u64) {
    crate::random::with_global_generator(|rng| {
        let (s, o) = (rng.seed(), rng.offset());
        rng.set_state(s, o.wrapping_add(n as u64));
        (s, o)
    })
}

/// Inverted dropout of a float CUDA tensor in one kernel (`dropout_<dt>`): the output
/// `x · keep / (1 − p)` and the bool keep-mask (x's shape), drawn from the global
/// generator's Philox stream as `Generator::bernoulli` draws it (so the CPU's numbers). `p < 1`.
pub(crate) fn dropout(x: &Tensor, p: f64) -> Result<(Tensor, Tensor)> {
    const OP: &str = "dropout";
    let name = launch::entry(OP, x.device(), "dropout", x.dtype())?;
    let src = contiguous(x)?;
    let (g, px) = first_element(OP, &src)?;
    let n = x.numel();
    let (seed, offset) = reserve_draws(n);
    let (out, po) = launch::output(&g, x.dtype(), n)?;
    let (keep, pk) = launch::output(&g, DType::Bool, n)?;
    let args = [
        Arg::Ptr(px),
        Arg::Ptr(po),
        Arg::Ptr(pk),
        Arg::n(n),
        Arg::U64(seed),
        Arg::U64(offset),
        Arg::F64(p),
    ];
    launch::launch(OP, &g, &name, launch::elementwise(n), &args)?;
    Ok((
        Tensor::from_cuda(out, x.shape()),
        Tensor::from_cuda(keep, x.shape()),
    ))
}

/// The gradient of [`dropout`]: `dy · keep / (1 − p)` (`dropout_backward_<dt>`).
pub(crate) fn dropout_backward(dy: &Tensor, keep: &Tensor, p: f64) -> Result<Tensor> {
    const OP: &str = "dropout";
    let name = launch::entry(OP, dy.device(), "dropout_backward", dy.dtype())?;
    let (gs, ks) = (contiguous(dy)?, contiguous(keep)?);
    let (g, pg) = first_element(OP, &gs)?;
    let (_, pk) = first_element(OP, &ks)?;
    let n = dy.numel();
    let (out, po) = launch::output(&g, dy.dtype(), n)?;
    let args = [
        Arg::Ptr(pg),
        Arg::Ptr(pk),
        Arg::Ptr(po),
        Arg::n(n),
        Arg::F64(1.0 / (1.0 - p)),
    ];
    launch::launch(OP, &g, &name, launch::elementwise(n), &args)?;
    Ok(Tensor::from_cuda(out, dy.shape()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_reductions_split_rows_only_when_there_are_few_tiles() {
        // a bias gradient: 32768 rows, 1024 columns = 32 tiles -> 16 chunks of 2048 rows
        assert_eq!(cols_chunks(32, 32768), 16);
        // many tiles: one launch
        assert_eq!(cols_chunks(256, 32768), 1);
        assert_eq!(cols_chunks(10_000, 5), 1);
        // few rows: chunks of at least 64 rows
        assert_eq!(cols_chunks(1, 100), 2);
        assert_eq!(cols_chunks(4, 64), 1);
        assert_eq!(cols_chunks(0, 0), 1);
    }

    /// Every table entry has a kernel for the dtypes the ops use it with: a renamed
    /// kernel would otherwise become a run-time `NoCudaKernel` on the GPU.
    #[test]
    fn every_table_entry_has_kernels() {
        let has = |name: String| flint_kernels::module_of(&name).is_some();
        for op in UNARY {
            let dt = if *op == "logical_not" { "bool" } else { "f32" };
            assert!(has(format!("{op}_{dt}")), "{op}");
        }
        for op in BINARY {
            let dt = if op.starts_with("logical") {
                "bool"
            } else {
                "f64"
            };
            assert!(has(format!("{op}_{dt}")), "{op}");
        }
        for op in SCALAR {
            assert!(has(format!("{op}_scalar_bf16")), "{op}");
        }
        for k in ["sum", "max", "min", "argmax", "argmin"] {
            assert!(has(format!("{k}_dim_i64")), "{k}");
        }
        for k in ["sum", "prod", "max", "min"] {
            assert!(has(format!("{k}_dim_bf16")), "{k}");
            for suffix in ["cols", "cols_part", "cols_fin"] {
                for dt in ["f32", "f64", "f16", "bf16", "i64"] {
                    assert!(has(format!("{k}_{suffix}_{dt}")), "{k}_{suffix}_{dt}");
                }
            }
        }
        for k in [
            "index_select",
            "gather",
            "scatter_add",
            "copy",
            "where",
            "masked_fill",
            "triu",
            "tril",
        ] {
            assert!(has(format!("{k}_f16")), "{k}");
        }
        assert!(has("dropout_bf16".into()) && has("dropout_backward_f32".into()));
        assert!(has("arange_i64".into()));
        // integer ops on i64 that the kernels have, and those they do not
        assert!(has("relu_i64".into()) && has("neg_i64".into()) && !has("exp_i64".into()));
    }
}
