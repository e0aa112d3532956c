//! Launching the kernels of the `flint-kernels` crate: finding an entry's module
//! ([`flint_kernels::module_of`]) and compiling it on first use (the cache of
//! [`super::kernels::module`]), turning tensor layouts into the kernels' by-value
//! `Layout` struct, launch configurations, and scalar kernel arguments.
//!
//! Kernel arguments are raw device addresses and plain values ([`Arg`]): every buffer of
//! a device is used on that device's one stream, so cudarc's per-buffer events are not
//! needed (they are disabled on Flint's contexts), and a buffer only has to live until
//! its kernels are queued (a freed block is reused by later work of the same stream).

use super::buffer::CudaBuffer;
use super::context::{driver_error, Gpu};
use super::kernels::module;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::{fmt_shape, Layout};
use crate::storage::{CpuBuffer, StorageData};
use crate::tensor::Tensor;
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use flint_kernels::KernelLayout;
use smallvec::SmallVec;
use std::sync::Arc;

/// Threads per block of every launch (a multiple of 32, as the block-wise kernels need).
pub(crate) const BLOCK: u32 = 256;
/// The most blocks of a launch; the kernels loop (grid-stride) over the rest.
const MAX_GRID: usize = 1 << 16;

/// [`KernelLayout`] as a kernel argument (the C `Layout`, passed by value).
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct LayoutArg(pub(crate) KernelLayout);

// SAFETY: `KernelLayout` is `#[repr(C)]` plain data matching the C struct `Layout` of
// `common.cuh` (144 bytes, checked on both sides).
unsafe impl DeviceRepr for LayoutArg {}

/// [`flint_kernels::WindowParams`] as a kernel argument (the C `WindowParams`, by value).
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct WindowArg(pub(crate) flint_kernels::WindowParams);

// SAFETY: `WindowParams` is `#[repr(C)]` plain data matching the C struct `WindowParams`
// of `window.cu` (144 bytes, checked on both sides).
unsafe impl DeviceRepr for WindowArg {}

/// [`flint_kernels::AttentionParams`] as a kernel argument (the C `AttentionParams`, by
/// value).
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttentionArg(pub(crate) flint_kernels::AttentionParams);

// SAFETY: `AttentionParams` is `#[repr(C)]` plain data matching the C struct
// `AttentionParams` of `attention.cu` (224 bytes, checked on both sides).
unsafe impl DeviceRepr for AttentionArg {}

/// One kernel argument, in the C type of the kernel's parameter.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    /// A device address (`T*`); 0 for a null pointer.
    Ptr(u64),
    /// `i64` (`long long`).
    I64(i64),
    /// `u64` (`unsigned long long`).
    U64(u64),
    /// `i32` (`int`).
    I32(i32),
    /// `double`.
    F64(f64),
    /// `float`.
    F32(f32),
    /// A 1-byte value (`u8`, a bool element).
    U8(u8),
    /// A 2-byte value (the bits of an f16 or bf16 element).
    U16(u16),
    /// A strided view.
    Layout(LayoutArg),
    /// The geometry of sliding windows.
    Window(WindowArg),
    /// The shapes, strides and options of an attention kernel.
    Attention(AttentionArg),
}

impl Arg {
    /// A size or count as `i64`.
    pub(crate) fn n(v: usize) -> Arg {
        Arg::I64(v as i64)
    }

    /// `value` converted to `dtype` exactly as [`Tensor::full`] converts it, as the
    /// by-value `T value` argument of `fill`/`masked_fill` (T's storage bits).
    pub(crate) fn element(dtype: DType, value: f64) -> Arg {
        match CpuBuffer::from_f64_iter(dtype, std::iter::once(value)) {
            CpuBuffer::Bool(v) => Arg::U8(v[0] as u8),
            CpuBuffer::I64(v) => Arg::I64(v[0]),
            CpuBuffer::F16(v) => Arg::U16(v[0].to_bits()),
            CpuBuffer::BF16(v) => Arg::U16(v[0].to_bits()),
            CpuBuffer::F32(v) => Arg::F32(v[0]),
            CpuBuffer::F64(v) => Arg::F64(v[0]),
        }
    }
}

/// The `<dtype>` suffix of entry names (`add_f32`, `cast_f16_bf16`, …).
pub(crate) fn suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::Bool => "bool",
        DType::I64 => "i64",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F32 => "f32",
        DType::F64 => "f64",
    }
}

/// The entry `<base>_<dtype>`, or [`Error::NoCudaKernel`] naming `op` when the kernels
/// have no such entry (an op or a dtype the CUDA backend does not cover).
pub(crate) fn entry(op: &'static str, device: Device, base: &str, dtype: DType) -> Result<String> {
    let name = format!("{base}_{}", suffix(dtype));
    match flint_kernels::module_of(&name) {
        Some(_) => Ok(name),
        None => Err(Error::NoCudaKernel { op, device }),
    }
}

/// Elements a thread of an elementwise kernel takes at a time: up to 4 of its warp's
/// chunk in the layout loops (`for_runs` of `kernels/src/common.cuh`), a Philox block
/// of 4 in dropout.
const RUN: usize = 4;

/// A grid-stride launch over `n` elements: a thread per run of [`RUN`] elements (kernels
/// that take one element at a time loop over the rest).
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(BLOCK as usize * RUN).min(MAX_GRID) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Rows of up to this many elements have warp-per-row kernels (`softmax_w<K>_<dt>` of
/// `kernels/src/softmax.cu`, `layer_norm_w<K>_<dt>` of `norm.cu`; up to 32 per lane).
pub(crate) const WARP_ROW: usize = 1024;

/// Elements per lane of the warp-per-row softmax kernels (`softmax_w<K>_<dt>`, …).
pub(crate) const SOFTMAX_KS: &[usize] = &[4, 8, 16, 32];
/// Elements per lane of the warp-per-row layer-norm kernels (`layer_norm_w<K>_<dt>`, …).
pub(crate) const LAYER_NORM_KS: &[usize] = &[8, 16, 32];

/// The warp-per-row entry for rows of `cols` elements: `<base>_w<K>` with the smallest K
/// of `ks` (elements per lane) that holds the row, or `base` itself (a block per row)
/// for rows longer than 32 times the largest.
pub(crate) fn warp_row_entry(base: &str, cols: usize, ks: &[usize]) -> String {
    match ks.iter().find(|&&k| cols <= 32 * k) {
        Some(k) => format!("{base}_w{k}"),
        None => base.to_string(),
    }
}

/// A launch of `rows` rows of `cols` elements for [`warp_row_entry`]'s kernel: a block
/// per `BLOCK / 32` rows (a warp each), else [`rows`].
pub(crate) fn warp_rows(rows: usize, cols: usize) -> LaunchConfig {
    if cols > WARP_ROW {
        return self::rows(rows);
    }
    LaunchConfig {
        grid_dim: (
            rows.div_ceil(BLOCK as usize / 32).min(MAX_GRID) as u32,
            1,
            1,
        ),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A block-wise launch: one block per row (grid-stride over `rows`).
pub(crate) fn rows(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.min(MAX_GRID) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Queues `entry` on `g`'s stream with `args` (nothing for an empty grid). `op` names
/// the op in errors: no kernel, a compile or load failure, a failed launch.
pub(crate) fn launch(
    op: &'static str,
    g: &Gpu,
    entry: &str,
    cfg: LaunchConfig,
    args: &[Arg],
) -> Result<()> {
    if cfg.grid_dim.0 == 0 {
        return Ok(());
    }
    let device = Device::Cuda(g.ordinal);
    let km = flint_kernels::module_of(entry).ok_or(Error::NoCudaKernel { op, device })?;
    let m = module(g.ordinal, km.name, km.source)?;
    let f = m
        .load_function(entry)
        .map_err(|e| driver_error(op, g.ordinal, e))?;
    let mut b = g.stream.launch_builder(&f);
    for a in args {
        match a {
            Arg::Ptr(v) | Arg::U64(v) => b.arg(v),
            Arg::I64(v) => b.arg(v),
            Arg::I32(v) => b.arg(v),
            Arg::F64(v) => b.arg(v),
            Arg::F32(v) => b.arg(v),
            Arg::U8(v) => b.arg(v),
            Arg::U16(v) => b.arg(v),
            Arg::Layout(v) => b.arg(v),
            Arg::Window(v) => b.arg(v),
            Arg::Attention(v) => b.arg(v),
        };
    }
    // SAFETY: each caller passes the arguments of `entry`'s documented signature
    // (kernels/README.md), device addresses of live buffers of this device large enough
    // for the layouts and sizes passed with them.
    super::profile::timed(
        g,
        || format!("{op}: {entry}"),
        || unsafe { b.launch(cfg) }.map_err(|e| driver_error(op, g.ordinal, e)),
    )?;
    Ok(())
}

/// The device, the address of the first element of the buffer, and the buffer's length
/// of a CUDA tensor (an error naming `op` for a CPU tensor). The address stays valid
/// while `t` lives.
pub(crate) fn ptr(op: &'static str, t: &Tensor) -> Result<(Arc<Gpu>, u64, usize)> {
    let guard = t.storage().read();
    match &*guard {
        StorageData::Cuda(b) => {
            let (g, p) = b.raw();
            Ok((g, p, b.len()))
        }
        StorageData::Cpu(_) => Err(Error::devices(op, t.device(), Device::Cuda(0))),
    }
}

/// The address of a CUDA tensor's buffer, checking that `layout` stays inside it.
pub(crate) fn ptr_for(op: &'static str, t: &Tensor, layout: &Layout) -> Result<u64> {
    let (_, p, len) = ptr(op, t)?;
    if layout.numel() > 0 && layout.storage_extent() > len {
        return Err(Error::shape(
            op,
            "internal: a layout reaches past its CUDA buffer",
        ));
    }
    Ok(p)
}

/// The views of one elementwise launch as kernel arguments: `ls` all have the shape of
/// the launch's index space, which the kernel walks in row-major order with one index.
/// Their dims are coalesced jointly first: dims of size 1 are dropped, and a dim is merged
/// into the next wherever every view steps through the pair as through one dim
/// (`stride[d] == stride[d + 1] * shape[d + 1]`). So contiguous operands reach the kernel
/// as one dim (no index division at all), and a view of more than
/// [`flint_kernels::MAX_DIMS`] dims works when its dims merge down to that many.
pub(crate) fn layouts<const N: usize>(op: &'static str, ls: [&Layout; N]) -> Result<[Arg; N]> {
    let Some(first) = ls.first() else {
        return Ok([(); N].map(|_| Arg::I64(0)));
    };
    let shape = first.shape();
    if ls.iter().any(|l| l.shape() != shape) {
        return Err(Error::shape(
            op,
            "internal: the views of one launch differ in shape",
        ));
    }
    let merged = coalesce(shape, &ls.map(|l| l.strides()));
    let too_many = |l: &Layout| {
        Error::shape(
            op,
            format!(
                "CUDA kernels take at most {} dims, got shape {} (strides {:?}), which \
                 merges into {} dims",
                flint_kernels::MAX_DIMS,
                fmt_shape(shape),
                l.strides(),
                merged.len()
            ),
        )
    };
    let int = |v: usize| i64::try_from(v).map_err(|_| Error::shape(op, "a size beyond i64"));
    let mut out = [(); N].map(|_| Arg::I64(0));
    for (k, (o, l)) in out.iter_mut().zip(ls).enumerate() {
        if merged.len() > flint_kernels::MAX_DIMS {
            return Err(too_many(l));
        }
        let mut kl = KernelLayout {
            rank: merged.len() as i64,
            shape: [1; flint_kernels::MAX_DIMS],
            strides: [0; flint_kernels::MAX_DIMS],
            offset: int(l.offset())?,
        };
        for (d, (size, st)) in merged.iter().enumerate() {
            kl.shape[d] = int(*size)?;
            kl.strides[d] = int(st[k])?;
        }
        *o = Arg::Layout(LayoutArg(kl));
    }
    Ok(out)
}

/// The dims of `shape` jointly coalesced for views with `strides` (see [`layouts`]):
/// `(size, stride of each view)` per remaining dim, outermost first.
fn coalesce<const N: usize>(
    shape: &[usize],
    strides: &[&[usize]; N],
) -> SmallVec<[(usize, [usize; N]); 8]> {
    // on the stack for up to 8 dims: this runs on every elementwise launch
    let mut out: SmallVec<[(usize, [usize; N]); 8]> = SmallVec::new();
    for (d, &n) in shape.iter().enumerate() {
        if n == 1 {
            continue;
        }
        let st = strides.map(|s| s[d]);
        if let Some((size, outer)) = out
            .last_mut()
            .filter(|(_, outer)| outer.iter().zip(&st).all(|(&o, &i)| o == i * n))
        {
            *size *= n;
            *outer = st;
            continue;
        }
        out.push((n, st));
    }
    out
}

/// A new uninitialised contiguous output of `shape` on `g` and its address.
pub(crate) fn output(g: &Arc<Gpu>, dtype: DType, n: usize) -> Result<(CudaBuffer, u64)> {
    let buf = CudaBuffer::uninit(g, dtype, n)?;
    let (_, p) = buf.raw();
    Ok((buf, p))
}

/// A device `int` set to 0, for the `int* status` argument of the index kernels: a
/// kernel sets it to 1 when it meets an index out of range.
pub(crate) struct Status {
    flag: super::alloc::DeviceVec<i32>,
}

impl Status {
    pub(crate) fn new(g: &Arc<Gpu>) -> Result<Status> {
        let mut flag = g.alloc::<i32>(1)?;
        g.stream
            .memset_zeros(&mut *flag)
            .map_err(|e| driver_error("index", g.ordinal, e))?;
        Ok(Status { flag })
    }

    pub(crate) fn arg(&self) -> Arg {
        let g = self.flag.gpu().clone();
        let (p, _guard) = cudarc::driver::DevicePtr::device_ptr(&*self.flag, &g.stream);
        Arg::Ptr(p)
    }

    /// Whether a kernel flagged a bad index (waits for the kernels queued so far).
    pub(crate) fn flagged(&self) -> Result<bool> {
        let g = self.flag.gpu();
        let mut host = [0i32];
        g.stream
            .memcpy_dtoh(&*self.flag, &mut host)
            .map_err(|e| driver_error("index", g.ordinal, e))?;
        g.synchronize()?;
        Ok(host[0] != 0)
    }
}

/// Launches an index kernel over `n` elements with `args` followed by a fresh [`Status`]
/// flag, and tells whether every index was in range (`false`: the kernel flagged one).
/// Waits for the kernel when `n > 0`.
pub(crate) fn launch_checked(
    op: &'static str,
    g: &Arc<Gpu>,
    entry: &str,
    n: usize,
    args: &[Arg],
) -> Result<bool> {
    let status = Status::new(g)?;
    let mut all = args.to_vec();
    all.push(status.arg());
    launch(op, g, entry, elementwise(n), &all)?;
    Ok(n == 0 || !status.flagged()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_and_missing_entries() {
        let d = Device::Cuda(0);
        assert_eq!(entry("add", d, "add", DType::F32).unwrap(), "add_f32");
        assert_eq!(
            entry("cast", d, "cast_f16", DType::BF16).unwrap(),
            "cast_f16_bf16"
        );
        // integer division has no kernel: the op's error, not a panic
        let e = entry("div", d, "div", DType::I64).unwrap_err();
        assert!(matches!(e, Error::NoCudaKernel { op: "div", .. }), "{e:?}");
    }

    #[test]
    fn launch_configs_cover_every_element() {
        // a thread per RUN elements
        let c = elementwise(1000);
        assert_eq!((c.grid_dim.0, c.block_dim.0), (1, 256));
        assert_eq!(elementwise(1025).grid_dim.0, 2);
        assert_eq!(elementwise(0).grid_dim.0, 0);
        // huge sizes are capped: the kernels loop over the rest
        assert_eq!(elementwise(1 << 40).grid_dim.0 as usize, MAX_GRID);
        assert_eq!(rows(3).grid_dim.0, 3);
        // a warp per row up to WARP_ROW elements, else a block per row
        assert_eq!(warp_rows(17, 512).grid_dim.0, 3);
        assert_eq!(warp_rows(17, WARP_ROW + 1).grid_dim.0, 17);
        assert_eq!(warp_rows(1 << 40, 512).grid_dim.0 as usize, MAX_GRID);
        let sm = SOFTMAX_KS;
        assert_eq!(warp_row_entry("softmax", 1, sm), "softmax_w4");
        assert_eq!(warp_row_entry("softmax", 512, sm), "softmax_w16");
        assert_eq!(
            warp_row_entry("log_softmax_backward", 513, sm),
            "log_softmax_backward_w32"
        );
        assert_eq!(warp_row_entry("softmax", 1025, sm), "softmax");
        assert_eq!(
            warp_row_entry("layer_norm", 64, LAYER_NORM_KS),
            "layer_norm_w8"
        );
        let families = [
            ("softmax", sm),
            ("log_softmax", sm),
            ("softmax_backward", sm),
            ("log_softmax_backward", sm),
            ("layer_norm", LAYER_NORM_KS),
            ("layer_norm_backward", LAYER_NORM_KS),
        ];
        for (base, ks) in families {
            for cols in [1, 128, 129, 256, 512, 1024, 1025] {
                let e = format!("{}_f32", warp_row_entry(base, cols, ks));
                assert!(flint_kernels::module_of(&e).is_some(), "{e}");
            }
        }
    }

    #[test]
    fn scalar_elements_are_rounded_like_full() {
        assert!(matches!(Arg::element(DType::F32, 0.1), Arg::F32(v) if v == 0.1f32));
        assert!(matches!(Arg::element(DType::F16, 1.0), Arg::U16(0x3c00)));
        assert!(matches!(Arg::element(DType::BF16, -2.0), Arg::U16(0xc000)));
        assert!(matches!(Arg::element(DType::Bool, 3.0), Arg::U8(1)));
        assert!(matches!(Arg::element(DType::I64, -7.9), Arg::I64(-7)));
    }

    fn kernel_layout(a: &Arg) -> KernelLayout {
        match a {
            Arg::Layout(LayoutArg(k)) => *k,
            other => panic!("not a layout: {other:?}"),
        }
    }

    /// The kernels' `layout_offset` (common.cuh), in Rust.
    fn offset_of(k: &KernelLayout, mut i: i64) -> i64 {
        let mut off = k.offset;
        for d in (1..k.rank as usize).rev() {
            off += (i % k.shape[d]) * k.strides[d];
            i /= k.shape[d];
        }
        if k.rank > 0 {
            off += i * k.strides[0];
        }
        off
    }

    /// Every element's offset through the original layout (row-major walk).
    fn offsets(l: &Layout) -> Vec<i64> {
        let n = l.numel();
        (0..n)
            .map(|mut i| {
                let mut off = l.offset();
                for d in (0..l.ndim()).rev() {
                    off += (i % l.shape()[d]) * l.strides()[d];
                    i /= l.shape()[d];
                }
                off as i64
            })
            .collect()
    }

    #[test]
    fn layouts_become_kernel_layouts() {
        let l = Layout::contiguous(&[2, 3]).permute(&[1, 0]).unwrap();
        let [a] = layouts("t", [&l]).unwrap();
        let k = kernel_layout(&a);
        assert_eq!(
            (k.rank, &k.shape[..2], &k.strides[..2]),
            (2, &[3, 2][..], &[1, 3][..])
        );
        // nine dims that merge into one: fine
        let [a] = layouts("t", [&Layout::contiguous(&[2; 9])]).unwrap();
        assert_eq!(
            (kernel_layout(&a).rank, kernel_layout(&a).shape[0]),
            (1, 512)
        );
        // nine dims that do not merge: the error
        let l = Layout::contiguous(&[2; 9])
            .permute(&[8, 7, 6, 5, 4, 3, 2, 1, 0])
            .unwrap();
        let e = layouts("t", [&l]).unwrap_err();
        assert!(e.to_string().contains("at most 8 dims"), "{e}");
    }

    #[test]
    fn joint_coalescing_keeps_every_offset() {
        let base = Layout::contiguous(&[4, 3, 5, 2]);
        let views = [
            base.clone(),
            base.permute(&[1, 0, 2, 3]).unwrap(),
            base.slice(2, 1, 3, 1),
            base.slice(0, 1, 2, 2),
            Layout::contiguous(&[3, 1, 2])
                .broadcast_to("t", &[4, 3, 5, 2])
                .unwrap(),
            Layout::contiguous(&[1, 1, 1, 1])
                .broadcast_to("t", &[4, 3, 5, 2])
                .unwrap(),
        ];
        for a in &views {
            for b in &views {
                if a.shape() != b.shape() {
                    continue;
                }
                let [ka, kb] = layouts("t", [a, b]).unwrap().map(|x| kernel_layout(&x));
                assert_eq!(ka.rank, kb.rank);
                assert_eq!(ka.shape, kb.shape);
                for (want, l) in [(offsets(a), ka), (offsets(b), kb)] {
                    let got: Vec<i64> = (0..want.len() as i64).map(|i| offset_of(&l, i)).collect();
                    assert_eq!(got, want, "{a:?} with {b:?}");
                }
            }
        }
        // two contiguous operands and a contiguous output: one dim
        let c = Layout::contiguous(&[4, 3, 5, 2]);
        let [x, _, _] = layouts("t", [&c, &c, &c]).unwrap();
        assert_eq!(kernel_layout(&x).rank, 1);
        // a row broadcast over a matrix: the matrix stays two dims
        let row = Layout::contiguous(&[5]).broadcast_to("t", &[3, 5]).unwrap();
        let [m, r] = layouts("t", [&Layout::contiguous(&[3, 5]), &row]).unwrap();
        assert_eq!(
            (
                kernel_layout(&m).rank,
                kernel_layout(&r).strides[..2].to_vec()
            ),
            (2, vec![0, 1])
        );
    }
}
