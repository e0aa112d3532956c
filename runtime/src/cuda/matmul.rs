//! Matrix products on CUDA with cuBLAS: one `gemm`, one strided-batched `gemm` when the
//! batch offsets of both operands are evenly spaced (contiguous batches, broadcast
//! operands with stride 0), else one `gemm` per batch entry.
//!
//! cuBLAS is column-major. A row-major `C = A·B` (`[m, k]·[k, n]`) is computed as the
//! column-major `Cᵀ = Bᵀ·Aᵀ`, for which the row-major buffers of `B` and `A` already are
//! `Bᵀ` and `Aᵀ` (or their transposes, when a view has its unit stride in the other
//! dim: then cuBLAS is told to transpose, so `.t()` views need no copy).

use super::alloc::DeviceVec;
use super::buffer::CudaBuffer;
use super::context::Gpu;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::storage::StorageData;
use crate::tensor::Tensor;
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const OP: &str = "matmul";

/// An element type cuBLAS multiplies (f16 and bf16 accumulate in f32).
trait GemmElement: DeviceRepr + ValidAsZeroBits + Copy
where
    CudaBlas: Gemm<Self>,
{
    const ONE: Self;
    const ZERO: Self;
    /// The dtype's name (in profiles).
    const NAME: &'static str;
    /// f32, the one type whose products [`set_allow_tf32`] can move onto TF32 tensor cores.
    const F32: bool = false;
}
impl GemmElement for f32 {
    const NAME: &'static str = "f32";
    const ONE: Self = 1.0;
    const ZERO: Self = 0.0;
    const F32: bool = true;
}
impl GemmElement for f64 {
    const NAME: &'static str = "f64";
    const ONE: Self = 1.0;
    const ZERO: Self = 0.0;
}
impl GemmElement for f16 {
    const NAME: &'static str = "f16";
    const ONE: Self = f16::ONE;
    const ZERO: Self = f16::ZERO;
}
impl GemmElement for bf16 {
    const NAME: &'static str = "bf16";
    const ONE: Self = bf16::ONE;
    const ZERO: Self = bf16::ZERO;
}

static ALLOW_TF32: AtomicBool = AtomicBool::new(false);

/// Lets f32 matrix products on CUDA use TF32 tensor cores (PyTorch's
/// `torch.backends.cuda.matmul.allow_tf32`): inputs rounded to a 10-bit mantissa, sums
/// in f32. Off by default, as in PyTorch, so f32 products are full f32. Applies to every
/// device from the next product on; the CPU is not affected.
///
/// ```
/// flint_runtime::cuda::set_allow_tf32(true);
/// assert!(flint_runtime::cuda::allow_tf32());
/// flint_runtime::cuda::set_allow_tf32(false);
/// ```
pub fn set_allow_tf32(allow: bool) {
    ALLOW_TF32.store(allow, Ordering::Relaxed);
}

/// Whether f32 products on CUDA may use TF32 tensor cores (see [`set_allow_tf32`]).
pub fn allow_tf32() -> bool {
    ALLOW_TF32.load(Ordering::Relaxed)
}

/// How cuBLAS reads a row-major `[r, c]` matrix with strides `(s0, s1)` as the
/// column-major `c × r` matrix it is: `(N, ld)` when the columns of the row-major matrix
/// are unit-stride, `(T, ld)` when its rows are; `None` when neither is (or the leading
/// dimension cuBLAS needs does not hold, as for an expanded, stride-0 matrix).
fn operand(r: usize, c: usize, s0: usize, s1: usize) -> Option<(cublasOperation_t, usize)> {
    if s1 == 1 || c <= 1 {
        let ld = if r <= 1 { c.max(1) } else { s0 };
        if ld >= c.max(1) {
            return Some((cublasOperation_t::CUBLAS_OP_N, ld));
        }
    }
    if s0 == 1 || r <= 1 {
        let ld = if c <= 1 { r.max(1) } else { s1 };
        if ld >= r.max(1) {
            return Some((cublasOperation_t::CUBLAS_OP_T, ld));
        }
    }
    None
}

/// Whether cuBLAS reads the matrices (last two dims) of `l` in place; when not (no unit
/// stride, or an expanded matrix with no leading dimension), the operand is copied to
/// contiguous first.
pub(crate) fn gemm_operand(l: &Layout) -> bool {
    let nd = l.ndim();
    nd < 2
        || operand(
            l.shape()[nd - 2],
            l.shape()[nd - 1],
            l.strides()[nd - 2],
            l.strides()[nd - 1],
        )
        .is_some()
}

/// The element offset of every matrix of a `[batch.., rows, cols]` layout, batch entries
/// in row-major order.
fn batch_offsets(l: &Layout) -> Vec<usize> {
    let nb = l.ndim() - 2;
    let mut offs = vec![l.offset()];
    for d in 0..nb {
        let (size, stride) = (l.shape()[d], l.strides()[d]);
        offs = offs
            .iter()
            .flat_map(|&o| (0..size).map(move |i| o + i * stride))
            .collect();
    }
    offs
}

/// The step between the consecutive matrices of `l`'s batch when they are evenly spaced
/// (`Some(0)` for one matrix or a broadcast batch), without listing them: the batch dims
/// of size > 1 must step through memory as one dim. The same answer as the
/// offsets from [`batch_offsets`] being an arithmetic progression (tested), for the common case of every product.
fn batch_step(l: &Layout) -> Option<usize> {
    let nb = l.ndim().saturating_sub(2);
    let mut step: Option<usize> = None; // the stride of the innermost dim seen so far
    let mut span = 1; // elements of the batch seen so far, times that stride = the next
    for d in (0..nb).rev() {
        let (size, stride) = (l.shape()[d], l.strides()[d]);
        if size == 1 {
            continue;
        }
        match step {
            None => step = Some(stride),
            Some(s) if stride == s * span => {}
            Some(_) => return None,
        }
        span *= size;
    }
    Some(step.unwrap_or(0))
}

fn int(v: usize, what: &str) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| {
        Error::shape(
            OP,
            format!(
                "{what} = {v} is too large for cuBLAS (at most {})",
                c_int::MAX
            ),
        )
    })
}

fn cublas_error(ordinal: usize, e: cudarc::cublas::result::CublasError) -> Error {
    Error::device(OP, format!("cuBLAS error on cuda:{ordinal}: {e}"))
}

/// `a @ b` for layouts `la = batch ++ [m, k]` and `lb = batch ++ [k, n]` over device
/// buffers of one dtype, into a new contiguous `batch ++ [m, n]` buffer.
fn gemm<T: GemmElement>(
    g: &Arc<Gpu>,
    a: &DeviceVec<T>,
    la: &Layout,
    b: &DeviceVec<T>,
    lb: &Layout,
) -> Result<DeviceVec<T>>
where
    CudaBlas: Gemm<T>,
{
    let nd = la.ndim();
    let (m, k, n) = (la.shape()[nd - 2], la.shape()[nd - 1], lb.shape()[nd - 1]);
    let batch: usize = la.shape()[..nd - 2].iter().product();
    let total = batch * m * n;
    let mut out = g.alloc::<T>(total)?;
    if total == 0 {
        return Ok(out);
    }
    if k == 0 {
        // an empty sum: zeros, like PyTorch
        g.stream
            .memset_zeros(&mut *out)
            .map_err(|e| super::context::driver_error(OP, g.ordinal, e))?;
        return Ok(out);
    }
    let device = Device::Cuda(g.ordinal);
    let no_kernel = || Error::NoCudaKernel {
        op: "contiguous",
        device,
    };
    // first cuBLAS operand: Bᵀ (n × k), second: Aᵀ (k × m), result Cᵀ (n × m), ldc = n
    let (op_b, ldb) =
        operand(k, n, lb.strides()[nd - 2], lb.strides()[nd - 1]).ok_or_else(no_kernel)?;
    let (op_a, lda) =
        operand(m, k, la.strides()[nd - 2], la.strides()[nd - 1]).ok_or_else(no_kernel)?;
    let cfg = GemmConfig {
        transa: op_b,
        transb: op_a,
        m: int(n, "n")?,
        n: int(m, "m")?,
        k: int(k, "k")?,
        alpha: T::ONE,
        lda: int(ldb, "the leading dimension of b")?,
        ldb: int(lda, "the leading dimension of a")?,
        beta: T::ZERO,
        ldc: int(n, "n")?,
    };
    let blas = g.blas()?;
    // cuBLAS works in the context current on the calling thread
    g.bind()?;
    if T::F32 {
        use cudarc::cublas::sys::{cublasMath_t, cublasSetMathMode, cublasStatus_t};
        let mode = if allow_tf32() {
            cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            cublasMath_t::CUBLAS_DEFAULT_MATH
        };
        // SAFETY: the handle is this device's, alive as long as `g`; setting its math mode
        // only changes how later f32 products on it are computed.
        let status = unsafe { cublasSetMathMode(*blas.handle(), mode) };
        if status != cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(Error::device(
                OP,
                format!(
                    "cuBLAS error on cuda:{}: cublasSetMathMode: {status:?}",
                    g.ordinal
                ),
            ));
        }
    }
    let name = || format!("{OP}: gemm_{} {batch}x{m}x{k}x{n}", T::NAME);
    super::profile::timed(g, name, || match (batch_step(la), batch_step(lb)) {
        (Some(step_a), Some(step_b)) => {
            let (va, vb) = (a.slice(la.offset()..), b.slice(lb.offset()..));
            // SAFETY: the configuration describes matrices inside the two buffers (their
            // layouts were checked by the caller against the buffers' lengths) and an
            // output of `batch * m * n` elements.
            let r = unsafe {
                if batch == 1 {
                    blas.gemm(cfg, &vb, &va, &mut *out)
                } else {
                    let stride = |s: usize, what| {
                        i64::try_from(s).map_err(|_| {
                            Error::shape(OP, format!("{what} stride {s} too large for cuBLAS"))
                        })
                    };
                    let cfg = StridedBatchedConfig {
                        gemm: cfg,
                        batch_size: int(batch, "the batch size")?,
                        stride_a: stride(step_b, "b's batch")?,
                        stride_b: stride(step_a, "a's batch")?,
                        stride_c: stride(m * n, "the output's batch")?,
                    };
                    blas.gemm_strided_batched(cfg, &vb, &va, &mut *out)
                }
            };
            r.map_err(|e| cublas_error(g.ordinal, e))
        }
        _ => {
            let (offs_a, offs_b) = (batch_offsets(la), batch_offsets(lb));
            for (i, (&oa, &ob)) in offs_a.iter().zip(&offs_b).enumerate() {
                let (va, vb) = (a.slice(oa..), b.slice(ob..));
                let mut vc = out.slice_mut(i * m * n..(i + 1) * m * n);
                // SAFETY: as above, for one matrix of each operand and of the output.
                unsafe { blas.gemm(cfg, &vb, &va, &mut vc) }
                    .map_err(|e| cublas_error(g.ordinal, e))?;
            }
            Ok(())
        }
    })?;
    Ok(out)
}

/// Batches longer than this whose matrices are not evenly spaced (a per-head view of a
/// fused projection, `[B, H, T, d]` with strides that do not merge; a partly broadcast
/// batch) are copied to contiguous first, so the product is one strided-batched call
/// rather than one cuBLAS call per matrix (as PyTorch's `bmm` reshapes such views).
const COPY_UNEVEN_BATCH: usize = 4;

/// `t` seen through `l`, copied when its batch of matrices is longer than
/// [`COPY_UNEVEN_BATCH`] and not evenly spaced in memory; else as it is. The copy keeps
/// the matrices' own order: a column-major matrix (a transposed view, `kᵀ` of a per-head
/// `k`) is copied as its transpose and viewed transposed again, so the copy reads and
/// writes along the same dim and cuBLAS reads the result as a transposed operand.
fn evenly_batched(t: &Tensor, l: &Layout) -> Result<(Tensor, Layout)> {
    let nd = l.ndim();
    let batch: usize = l.shape()[..nd.saturating_sub(2)].iter().product();
    if nd > 2 && batch > COPY_UNEVEN_BATCH && batch_step(l).is_none() {
        let (r, c) = (l.strides()[nd - 2], l.strides()[nd - 1]);
        let col_major = r == 1 && c != 1;
        let mut swap: Vec<usize> = (0..nd).collect();
        if col_major {
            swap.swap(nd - 2, nd - 1);
        }
        let copy = super::ops::copy_to_new(&t.with_layout(l.permute(&swap)?))?;
        let lc = copy.layout().permute(&swap)?;
        return Ok((copy.with_layout(lc.clone()), lc));
    }
    Ok((t.clone(), l.clone()))
}

/// A CUDA operand of a matrix product as [`matmul`] will read it: `t` itself, or the copy
/// [`evenly_batched`] makes of an unevenly batched view (a per-head view of a fused
/// projection). The matmul op multiplies and saves this, so its backward reuses the copy
/// instead of copying the view again for each gradient product (as PyTorch's `matmul`
/// saves the reshaped operands of its `bmm`). Not tracked: the caller keeps `t`'s graph.
pub(crate) fn batched_operand(t: &Tensor) -> Result<Tensor> {
    if !t.is_cuda() {
        return Ok(t.clone());
    }
    let (c, l) = evenly_batched(t, t.layout())?;
    Ok(if c.shares_storage(t) {
        t.clone()
    } else {
        c.with_layout(l)
    })
}

/// `a @ b` on CUDA for the broadcast layouts `la = batch ++ [m, k]`, `lb = batch ++ [k, n]`
/// of two tensors of one float dtype on one device; a new contiguous
/// `batch ++ [m, n]` buffer.
pub(crate) fn matmul(a: &Tensor, la: &Layout, b: &Tensor, lb: &Layout) -> Result<CudaBuffer> {
    if a.device() != b.device() {
        return Err(Error::devices(OP, a.device(), b.device()));
    }
    let (a, la) = evenly_batched(a, la)?;
    let (b, lb) = evenly_batched(b, lb)?;
    let (a, la, b, lb) = (&a, &la, &b, &lb);
    let device = a.device();
    let ga = a.storage().read();
    // one guard when both views share a storage (`x @ x`)
    let gb = if a.shares_storage(b) {
        None
    } else {
        Some(b.storage().read())
    };
    let (ba, bb) = match (&*ga, gb.as_deref().unwrap_or(&*ga)) {
        (StorageData::Cuda(x), StorageData::Cuda(y)) => (x, y),
        _ => return Err(Error::devices(OP, a.device(), b.device())),
    };
    if la.storage_extent() > ba.len() || lb.storage_extent() > bb.len() {
        return Err(Error::shape(
            OP,
            "internal: a layout reaches past its CUDA buffer",
        ));
    }
    let g = match ba {
        CudaBuffer::F32(v) => v.gpu().clone(),
        CudaBuffer::F64(v) => v.gpu().clone(),
        CudaBuffer::F16(v) => v.gpu().clone(),
        CudaBuffer::BF16(v) => v.gpu().clone(),
        CudaBuffer::I64(_) | CudaBuffer::Bool(_) => {
            return Err(Error::NoCudaKernel { op: OP, device });
        }
    };
    Ok(match (ba, bb) {
        (CudaBuffer::F32(x), CudaBuffer::F32(y)) => CudaBuffer::F32(gemm(&g, x, la, y, lb)?),
        (CudaBuffer::F64(x), CudaBuffer::F64(y)) => CudaBuffer::F64(gemm(&g, x, la, y, lb)?),
        (CudaBuffer::F16(x), CudaBuffer::F16(y)) => CudaBuffer::F16(gemm(&g, x, la, y, lb)?),
        (CudaBuffer::BF16(x), CudaBuffer::BF16(y)) => CudaBuffer::BF16(gemm(&g, x, la, y, lb)?),
        _ => {
            return Err(Error::NoCudaKernel {
                op: "to_dtype",
                device,
            })
        }
    })
}

/// A cuBLASLt handle and its workspace, for the products cuBLAS cannot fuse (a linear
/// layer's bias, added by the product's epilogue).
pub(crate) struct Lt {
    handle: cudarc::cublaslt::sys::cublasLtHandle_t,
    workspace: cudarc::driver::CudaSlice<u8>,
}

// SAFETY: the handle is only used on the device's one stream, from the thread that holds
// the tensors' storage guards; cuBLASLt handles may be used from any thread.
unsafe impl Send for Lt {}
// SAFETY: as above; `Lt` has no interior mutability.
unsafe impl Sync for Lt {}

impl Drop for Lt {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `create_handle` and is destroyed once.
        let _ = unsafe { cudarc::cublaslt::result::destroy_handle(self.handle) };
    }
}

/// Bytes of cuBLASLt workspace (NVIDIA's recommendation for Hopper).
const LT_WORKSPACE: usize = 32 << 20;

impl Lt {
    /// A handle on `g`'s device with a workspace on its stream.
    pub(crate) fn new(g: &Gpu) -> std::result::Result<Lt, String> {
        // SAFETY: only tries to open the library with `dlopen`.
        if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
            return Err("no cuBLASLt library (libcublasLt.so) could be loaded".to_string());
        }
        g.bind().map_err(|e| e.to_string())?;
        let handle = cudarc::cublaslt::result::create_handle()
            .map_err(|e| format!("cannot create a cuBLASLt handle: {e}"))?;
        // SAFETY: the workspace is only handed to cuBLASLt, which writes before it reads.
        let workspace = unsafe { g.stream.alloc::<u8>(LT_WORKSPACE) }.map_err(|e| {
            // SAFETY: created just above, not used since
            let _ = unsafe { cudarc::cublaslt::result::destroy_handle(handle) };
            format!("cannot allocate the cuBLASLt workspace: {e}")
        })?;
        Ok(Lt { handle, workspace })
    }
}

/// Destroys cuBLASLt descriptors when the call ends, however it ends.
struct LtDescs {
    desc: Option<cudarc::cublaslt::sys::cublasLtMatmulDesc_t>,
    layouts: Vec<cudarc::cublaslt::sys::cublasLtMatrixLayout_t>,
    pref: Option<cudarc::cublaslt::sys::cublasLtMatmulPreference_t>,
}

impl Drop for LtDescs {
    fn drop(&mut self) {
        use cudarc::cublaslt::result as lt;
        // SAFETY: each descriptor was created once by this call and is destroyed once.
        unsafe {
            if let Some(d) = self.desc {
                let _ = lt::destroy_matmul_desc(d);
            }
            for &l in &self.layouts {
                let _ = lt::destroy_matrix_layout(l);
            }
            if let Some(p) = self.pref {
                let _ = lt::destroy_matmul_pref(p);
            }
        }
    }
}

/// `x @ wᵀ + bias` on cuBLASLt for f32 `x` `[rows, k]`, `w` `[n, k]` and contiguous
/// `bias` `[n]` on one device, the bias added by the product's `BIAS` epilogue (as
/// PyTorch's `addmm` does) instead of a second pass over the output: a new contiguous
/// `[rows, n]` tensor. f32 products stay full f32 unless [`set_allow_tf32`] allows TF32,
/// as in [`matmul`]. Errors when cuBLASLt is missing or declines the problem; the caller
/// then multiplies and adds.
pub(crate) fn linear_bias(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    use cudarc::cublaslt::result as lt;
    use cudarc::cublaslt::sys as lts;
    const LOP: &str = "linear";
    let (rows, k) = (x.size(0), x.size(1));
    let n = w.size(0);
    let device = x.device();
    let no = || Error::NoCudaKernel { op: LOP, device };
    if [x, w, bias].iter().any(|t| t.dtype() != crate::DType::F32)
        || x.ndim() != 2
        || w.ndim() != 2
        || w.size(1) != k
        || bias.shape() != [n]
        || !bias.is_contiguous()
        || rows == 0
        || n == 0
        || k == 0
    {
        return Err(no());
    }
    // as in `gemm`: first operand wᵀ ([k, n] row-major view of w), second x, result
    // outᵀ (n × rows, column-major, ld n)
    let (lx, lwt) = (x.layout(), w.layout().permute(&[1, 0])?);
    let (op_w, ldw) = operand(k, n, lwt.strides()[0], lwt.strides()[1]).ok_or_else(no)?;
    let (op_x, ldx) = operand(rows, k, lx.strides()[0], lx.strides()[1]).ok_or_else(no)?;
    let first = |t: &Tensor| super::ops::first_element(LOP, t);
    let ((g, px), (_, pw), (_, pb)) = (first(x)?, first(w)?, first(bias)?);
    let (buf, po) = super::launch::output(&g, crate::DType::F32, rows * n)?;
    let lt_h = g.lt()?;
    let cublas = |what: &str, e: cudarc::cublaslt::result::CublasError| {
        Error::device(
            LOP,
            format!("cuBLASLt error on cuda:{}: {what}: {e:?}", g.ordinal),
        )
    };
    let u = |v: usize| v as u64;
    let i = |v: usize| v as i64;
    let trans = |op: cublasOperation_t| op == cublasOperation_t::CUBLAS_OP_T;
    let compute = if allow_tf32() {
        lts::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
    } else {
        lts::cublasComputeType_t::CUBLAS_COMPUTE_32F
    };
    let f32t = lts::cudaDataType_t::CUDA_R_32F;
    let mut d = LtDescs {
        desc: None,
        layouts: Vec::with_capacity(3),
        pref: None,
    };
    d.desc = Some(lt::create_matmul_desc(compute, f32t).map_err(|e| cublas("desc", e))?);
    let desc = d.desc.expect("just set");
    let set = |attr: lts::cublasLtMatmulDescAttributes_t, p: *const std::ffi::c_void, len| {
        // SAFETY: `p` points at a live value of `len` bytes of the type `attr` takes.
        unsafe { lt::set_matmul_desc_attribute(desc, attr, p, len) }
            .map_err(|e| cublas("desc attribute", e))
    };
    let (ta, tb) = (trans(op_w) as i32, trans(op_x) as i32);
    let epilogue = lts::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
    set(
        lts::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
        &ta as *const i32 as *const _,
        4,
    )?;
    set(
        lts::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
        &tb as *const i32 as *const _,
        4,
    )?;
    set(
        lts::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
        &epilogue as *const lts::cublasLtEpilogue_t as *const _,
        std::mem::size_of::<lts::cublasLtEpilogue_t>(),
    )?;
    set(
        lts::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
        &pb as *const u64 as *const _,
        8,
    )?;
    // stored shapes (column-major rows, cols) of the two operands and the output
    let a_dims = if trans(op_w) { (k, n) } else { (n, k) };
    let b_dims = if trans(op_x) { (rows, k) } else { (k, rows) };
    for (r, c, ld) in [
        (a_dims.0, a_dims.1, ldw),
        (b_dims.0, b_dims.1, ldx),
        (n, rows, n),
    ] {
        d.layouts.push(
            lt::create_matrix_layout(f32t, u(r), u(c), i(ld)).map_err(|e| cublas("layout", e))?,
        );
    }
    d.pref = Some(lt::create_matmul_pref().map_err(|e| cublas("preference", e))?);
    let pref = d.pref.expect("just set");
    let ws = LT_WORKSPACE;
    // SAFETY: the attribute takes a u64 (size_t) byte count.
    unsafe {
        lt::set_matmul_pref_attribute(
            pref,
            lts::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &ws as *const usize as *const _,
            std::mem::size_of::<usize>(),
        )
    }
    .map_err(|e| cublas("preference attribute", e))?;
    let (la, lb, lc) = (d.layouts[0], d.layouts[1], d.layouts[2]);
    // SAFETY: descriptors created above, alive until `d` drops.
    let heur = unsafe { lt::get_matmul_algo_heuristic(lt_h.handle, desc, la, lb, lc, lc, pref) }
        .map_err(|e| cublas("no algorithm", e))?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (wsp, _ws_sync) = {
        use cudarc::driver::DevicePtr;
        lt_h.workspace.device_ptr(&g.stream)
    };
    g.bind()?;
    let name = || format!("{LOP}: gemm_bias_f32 {rows}x{k}x{n}");
    super::profile::timed(&g, name, || {
        // SAFETY: the layouts describe matrices inside the three buffers (their views were
        // checked against the buffers' lengths by `first_element`) and an output of rows * n
        // elements; alpha and beta are f32 as the scale type says; the workspace holds
        // LT_WORKSPACE bytes; all on the device's stream.
        unsafe {
            lt::matmul(
                lt_h.handle,
                desc,
                &alpha as *const f32 as *const _,
                &beta as *const f32 as *const _,
                pw as *const _,
                la,
                px as *const _,
                lb,
                po as *const _,
                lc,
                po as *mut _,
                lc,
                &heur.algo as *const _,
                wsp as *mut _,
                LT_WORKSPACE,
                g.stream.cu_stream() as *mut _,
            )
        }
        .map_err(|e| cublas("matmul", e))
    })?;
    Ok(Tensor::from_cuda(buf, &[rows, n]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cublasOperation_t::{CUBLAS_OP_N as N, CUBLAS_OP_T as T};

    /// The common step of evenly spaced offsets (`Some(0)` for one entry): the
    /// reference [`batch_step`] is checked against.
    fn even_step(offs: &[usize]) -> Option<usize> {
        match offs {
            [] | [_] => Some(0),
            [a, b, ..] => {
                let step = b.checked_sub(*a)?;
                offs.windows(2)
                    .all(|w| w[1].checked_sub(w[0]) == Some(step))
                    .then_some(step)
            }
        }
    }

    #[test]
    fn operands_read_row_major_and_transposed_views_in_place() {
        // contiguous [3, 4]: columns unit-stride, ld = 4
        assert_eq!(operand(3, 4, 4, 1), Some((N, 4)));
        // its transpose [4, 3] with strides (1, 4): rows unit-stride, ld = 4
        assert_eq!(operand(4, 3, 1, 4), Some((T, 4)));
        // a column slice [3, 2] of a [3, 4] matrix keeps ld = 4
        assert_eq!(operand(3, 2, 4, 1), Some((N, 4)));
        // a 1-D row [1, k] (stride 0 inserted) and column [k, 1]
        assert_eq!(operand(1, 5, 0, 1), Some((N, 5)));
        assert_eq!(operand(5, 1, 1, 0), Some((N, 1)));
        // a strided vector [1, 5] with stride 2: read transposed with ld = 2
        assert_eq!(operand(1, 5, 0, 2), Some((T, 2)));
        // an expanded matrix (stride 0 rows) has no valid leading dimension
        assert_eq!(operand(3, 4, 0, 1), None);
        // no unit stride at all
        assert_eq!(operand(3, 4, 8, 2), None);
    }

    #[test]
    fn per_head_views_of_a_fused_projection_are_not_evenly_batched() {
        // q of a [B, T, 3D] projection split into heads: [B, H, T, d] with strides
        // (T*3D, d, 3D, 1): b and h do not merge, so the offsets are not one progression
        let (b, h, t, d) = (2, 3, 4, 5);
        let l = Layout::contiguous(&[b, t, 3, h, d])
            .slice(2, 0, 1, 1)
            .permute(&[0, 2, 3, 1, 4])
            .unwrap();
        assert_eq!(l.shape(), &[b, 1, h, t, d]);
        assert_eq!(l.strides()[..3], [t * 3 * h * d, h * d, d]);
        assert_eq!(even_step(&batch_offsets(&l)), None);
        // contiguous heads are evenly spaced
        let c = Layout::contiguous(&[b, h, t, d]);
        assert_eq!(even_step(&batch_offsets(&c)), Some(t * d));
    }

    #[test]
    fn batch_offsets_are_evenly_spaced_for_contiguous_and_broadcast_batches() {
        let contiguous = Layout::contiguous(&[2, 3, 4, 5]);
        let offs = batch_offsets(&contiguous);
        assert_eq!(offs, vec![0, 20, 40, 60, 80, 100]);
        assert_eq!(even_step(&offs), Some(20));
        // a [4, 5] matrix broadcast over a batch of 3: stride 0
        let broadcast = Layout::contiguous(&[4, 5])
            .broadcast_to("test", &[3, 4, 5])
            .unwrap();
        assert_eq!(even_step(&batch_offsets(&broadcast)), Some(0));
        // [2, 1, 4, 5] broadcast to [2, 3, 4, 5]: 0, 0, 0, 20, 20, 20 is not even
        let partial = Layout::contiguous(&[2, 1, 4, 5])
            .broadcast_to("test", &[2, 3, 4, 5])
            .unwrap();
        let offs = batch_offsets(&partial);
        assert_eq!(offs, vec![0, 0, 0, 20, 20, 20]);
        assert_eq!(even_step(&offs), None);
        // batch_step answers without listing the offsets
        let permuted = Layout::contiguous(&[2, 3, 4, 5])
            .permute(&[1, 0, 2, 3])
            .unwrap();
        let sliced = Layout::contiguous(&[4, 3, 4, 5]).slice(0, 1, 2, 2);
        let unit = Layout::contiguous(&[2, 1, 3, 4, 5]);
        let swapped = Layout::contiguous(&[2, 2, 3, 4])
            .permute(&[1, 0, 2, 3])
            .unwrap();
        let heads = Layout::contiguous(&[2, 4, 3, 3, 5])
            .slice(2, 0, 1, 1)
            .permute(&[0, 2, 3, 1, 4])
            .unwrap();
        for l in [
            contiguous, broadcast, partial, permuted, sliced, unit, swapped, heads,
        ] {
            assert_eq!(batch_step(&l), even_step(&batch_offsets(&l)), "{l:?}");
        }
        assert_eq!(batch_step(&Layout::contiguous(&[4, 5])), Some(0));
    }
}
