//! Matrix products with `torch.matmul`'s rules: dot products, matrix-vector,
//! matrix-matrix and batched products with broadcast batch dims.

use crate::autograd::record;
use crate::cpu::matmul as kernel;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{or_panic, Error, Result};
use crate::layout::{broadcast_shapes, fmt_shape, Dims, Layout};
use crate::ops::elementwise::sum_to;
use crate::tensor::Tensor;

const OP: &str = "matmul";

/// The layout of `t` as a stack of matrices: a 1-D `[k]` becomes a row `[1, k]` (`row`)
/// or a column `[k, 1]`; a matrix with no unit stride is copied to contiguous first.
fn as_matrices(t: &Tensor, row: bool) -> Result<(Tensor, Layout)> {
    #[cfg(feature = "cuda")]
    let cuda_copy = t.is_cuda() && t.ndim() >= 2 && !crate::cuda::gemm_operand(t.layout());
    #[cfg(not(feature = "cuda"))]
    let cuda_copy = false;
    let t = if cuda_copy || (t.ndim() >= 2 && !kernel::has_unit_stride(t.layout())) {
        t.copy_raw()?
    } else {
        t.clone()
    };
    let mut l = t.layout().clone();
    if l.ndim() == 1 {
        let at = if row { 0 } else { 1 };
        l.shape.insert(at, 1);
        l.strides.insert(at, 0);
    }
    Ok((t, l))
}

fn matmul_raw(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (sa, sb) = (a.shape(), b.shape());
    if a.ndim() == 0 || b.ndim() == 0 {
        return Err(Error::shape(
            OP,
            format!(
                "shapes {} and {} cannot be multiplied: both arguments need at least 1 dimension",
                fmt_shape(sa),
                fmt_shape(sb)
            ),
        ));
    }
    if a.device() != b.device() {
        return Err(Error::devices(OP, a.device(), b.device()));
    }
    let dtype = DType::promote(a.dtype(), b.dtype());
    if dtype == DType::Bool {
        return Err(Error::dtype(
            OP,
            format!(
                "not defined on bool tensors (shapes {} and {}); convert with to_dtype first",
                fmt_shape(sa),
                fmt_shape(sb)
            ),
        ));
    }
    let (ka, kb) = (sa[sa.len() - 1], sb[sb.len().saturating_sub(2)]);
    if ka != kb {
        return Err(Error::shape(
            OP,
            format!(
                "shapes {} and {} cannot be multiplied ({ka} != {kb})",
                fmt_shape(sa),
                fmt_shape(sb)
            ),
        ));
    }
    let batch_a = &sa[..sa.len().saturating_sub(2)];
    let batch_b = &sb[..sb.len().saturating_sub(2)];
    let batch = broadcast_shapes(OP, batch_a, batch_b).map_err(|_| {
        Error::shape(
            OP,
            format!(
                "shapes {} and {} cannot be multiplied: batch dims {} and {} do not broadcast",
                fmt_shape(sa),
                fmt_shape(sb),
                fmt_shape(batch_a),
                fmt_shape(batch_b)
            ),
        )
    })?;

    // bf16 computes in f32 and rounds once at the end, like PyTorch's CPU kernel (on
    // CUDA, cuBLAS accumulates f16 and bf16 in f32 itself)
    let compute = if dtype == DType::BF16 && a.device() == Device::Cpu {
        DType::F32
    } else {
        dtype
    };
    let (a, la) = as_matrices(&a.to_dtype_raw(compute)?, true)?;
    let (b, lb) = as_matrices(&b.to_dtype_raw(compute)?, false)?;
    let (m, n) = (la.shape()[la.ndim() - 2], lb.shape()[lb.ndim() - 1]);
    let full = |rows: usize, cols: usize| -> Dims {
        let mut s = batch.clone();
        s.extend([rows, cols]);
        s
    };
    let la = la.broadcast_to(OP, &full(m, ka))?;
    let lb = lb.broadcast_to(OP, &full(kb, n))?;
    let mut shape = batch;
    if sa.len() >= 2 {
        shape.push(m);
    }
    if sb.len() >= 2 {
        shape.push(n);
    }
    #[cfg(feature = "cuda")]
    if let Device::Cuda(_) = a.device() {
        let buf = crate::cuda::matmul(&a, &la, &b, &lb)?;
        return Ok(Tensor::from_cuda(buf, &shape));
    }
    let buf = a.with_cpu(OP, |ba, _| {
        b.with_cpu(OP, |bb, _| kernel::matmul(ba, &la, bb, &lb))
    })??;
    Tensor::from_buffer(buf, &shape).to_dtype_raw(dtype)
}

/// `a @ b` with its backward: `∂a = g·bᵀ`, `∂b = aᵀ·g`, vectors treated as a row (`a`) or
/// a column (`b`), and broadcast batch dims summed back.
///
/// On CUDA an unevenly batched operand (a per-head view) is copied once
/// ([`batched_operand`](crate::cuda::batched_operand)) and the copy is both multiplied and
/// saved; the copy is a node of the graph (`clone`), so the gradient reaches the view
/// through it, also under `create_graph`, and the view (which holds the whole projection
/// the heads come from) is not kept for the backward, as PyTorch's matmul keeps its
/// reshaped copies only. An unevenly batched output gradient is likewise copied once for
/// both gradient products.
#[track_caller]
fn try_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    let (pa, pb) = (
        tracked_copy(a, crate::cuda::batched_operand(a)?),
        tracked_copy(b, crate::cuda::batched_operand(b)?),
    );
    #[cfg(not(feature = "cuda"))]
    let (pa, pb) = (a.clone(), b.clone());
    let out = matmul_raw(&pa, &pb)?;
    let (nx, ny) = (a.requires_grad(), b.requires_grad());
    let (x, y) = (pa.clone(), pb.clone());
    Ok(record(out, OP, &[&pa, &pb], &[&pa, &pb], move |g| {
        let (x, y) = (&x, &y);
        #[cfg(feature = "cuda")]
        // (on a failed copy, the products below report the error with the view itself)
        let g = &crate::cuda::batched_operand(g).unwrap_or_else(|_| g.clone());
        let am = if x.ndim() == 1 {
            x.unsqueeze(0)
        } else {
            x.clone()
        };
        let bm = if y.ndim() == 1 {
            y.unsqueeze(-1)
        } else {
            y.clone()
        };
        let mut gm = g.clone();
        if x.ndim() == 1 {
            gm = gm.unsqueeze(if y.ndim() == 1 { 0 } else { -2 });
        }
        if y.ndim() == 1 {
            gm = gm.unsqueeze(-1);
        }
        let ga = nx.then(|| {
            let r = gm.matmul(&bm.transpose(-1, -2));
            sum_to(&r, am.shape())
                .reshape(x.shape())
                .to_dtype(x.dtype())
        });
        let gb = ny.then(|| {
            if y.ndim() == 2 && am.size(-1) > 0 {
                // rows times one matrix (a linear layer on `[.., k]` inputs): the
                // gradient of the shared matrix is one product over all the rows,
                // `a_flatᵀ · g_flat`, rather than a batch of products summed back
                let k = am.size(-1);
                let a2 = am.reshape([-1, k as isize]);
                let g2 = gm.reshape([-1, gm.size(-1) as isize]);
                // a transposed matrix (`w.t()` in a linear layer) gets its gradient in the
                // same column-major layout, so `w`'s own gradient comes out contiguous
                let col_major = y.layout().strides() == [1, y.size(0)] && y.size(1) > 1;
                let r = if col_major {
                    g2.t().matmul(&a2).t()
                } else {
                    a2.t().matmul(&g2)
                };
                return r.to_dtype(y.dtype());
            }
            let r = am.transpose(-1, -2).matmul(&gm);
            sum_to(&r, bm.shape())
                .reshape(y.shape())
                .to_dtype(y.dtype())
        });
        vec![ga, gb]
    }))
}

/// `copy`, made of `t` for a product, as a node of the graph (`clone`) when it is a new
/// buffer (see [`try_matmul`]); `t` itself when it is not.
#[cfg(feature = "cuda")]
#[track_caller]
fn tracked_copy(t: &Tensor, copy: Tensor) -> Tensor {
    if copy.shares_storage(t) {
        return t.clone();
    }
    record(copy, "clone", &[t], &[], |g| vec![Some(g.clone())])
}

/// `x @ wᵀ + bias` (a linear layer: `x` `[.., k]`, `w` `[n, k]`, `bias` `[n]`) as one
/// recorded node, `"linear"`, whose product adds the bias as it stores its results
/// ([`kernel::matmul_bias`] on the CPU, cuBLASLt's bias epilogue for f32 on CUDA)
/// instead of a second pass over the output. `None` where it does not apply (other
/// dtypes, mixed dtypes or devices, shapes that are not a linear layer's): the caller
/// composes `matmul` and `add` then. The backward is made of tensor
/// ops (`∂x = g·w`, `∂w = gᵀ·x`, `∂bias = Σ_rows g`), so higher orders work.
#[track_caller]
pub(crate) fn linear_bias(x: &Tensor, w: &Tensor, bias: &Tensor) -> Option<Result<Tensor>> {
    let dtype = x.dtype();
    let device = x.device();
    // the CPU's own kernel (f32, f64), cuBLASLt's bias epilogue (f32)
    let supported = match device {
        Device::Cpu => matches!(dtype, DType::F32 | DType::F64),
        Device::Cuda(_) => cfg!(feature = "cuda") && dtype == DType::F32,
    };
    let applies = supported
        && [w, bias].iter().all(|t| t.dtype() == dtype)
        && [w, bias].iter().all(|t| t.device() == device)
        && x.ndim() >= 1
        && w.ndim() == 2
        && bias.ndim() == 1
        && x.size(-1) == w.size(1)
        && bias.size(0) == w.size(0);
    applies.then(|| linear_bias_fused(x, w, bias))
}

#[track_caller]
fn linear_bias_fused(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear";
    let (n, k) = (w.size(0), w.size(1));
    let rows: usize = x.shape()[..x.ndim() - 1].iter().product();
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("x has a dim") = n;
    let x2 = x.detach().try_reshape([rows, k])?;
    let b = bias.detach();
    // `n` elements in a row (a slice of a larger parameter keeps its offset)
    let b = if b.is_contiguous() { b } else { b.copy_raw()? };
    let out = if x.is_cuda() {
        linear_bias_cuda(&x2, &w.detach(), &b)?
    } else {
        let (xa, la) = as_matrices(&x2, true)?;
        let (wa, lb) = as_matrices(&w.detach().t(), false)?;
        let off = b.layout().offset();
        let buf = xa.with_cpu(OP, |bx, _| {
            wa.with_cpu(OP, |bw, _| {
                b.with_cpu(OP, |bb, _| kernel::matmul_bias(bx, &la, bw, &lb, bb, off))
            })
        })???;
        Tensor::from_buffer(buf, &[rows, n])
    }
    .try_reshape(shape)?;
    let (xs, ws) = (x.clone(), w.clone());
    let needs = [x, w, bias].map(|t| t.requires_grad());
    Ok(record(out, OP, &[x, w, bias], &[x, w], move |g| {
        let g2 = g.reshape([rows, n]);
        vec![
            needs[0].then(|| g2.matmul(&ws).reshape(xs.shape())),
            needs[1].then(|| g2.t().matmul(&xs.reshape([rows, k]))),
            needs[2].then(|| g2.sum(0, false)),
        ]
    }))
}

/// The product of [`linear_bias_fused`] on CUDA (`x2` `[rows, k]`, untracked operands):
/// cuBLASLt with the bias in its epilogue, or, where cuBLASLt is missing or declines,
/// the product and then the add.
fn linear_bias_cuda(x2: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Ok(out) = crate::cuda::linear_bias(x2, w, b) {
        return Ok(out);
    }
    matmul_raw(x2, &w.t())?.try_add(b)
}

impl Tensor {
    /// The matrix product `self @ other`, with the rules of `torch.matmul`:
    ///
    /// - 1-D · 1-D: the dot product, a 0-d tensor;
    /// - 2-D · 2-D: the matrix product;
    /// - 1-D · N-D: the vector is a row `[1, k]` whose dim is removed from the result;
    /// - N-D · 1-D: the vector is a column `[k, 1]` whose dim is removed from the result;
    /// - N-D · N-D: a batch of products over the leading dims, which broadcast.
    ///
    /// Mixed dtypes are promoted as in arithmetic ([`DType::promote`]). f32 runs mostly
    /// on Flint's own AVX2/FMA kernel (`cpu::sgemm`; small or narrow products, and CPUs
    /// without AVX2, on the `gemm` crate), f64 and f16 on the `gemm` crate (bf16 through
    /// f32); all read transposed and permuted inputs in place. i64 uses a plain loop.
    /// Panics when the inner dims differ, an input is 0-d, the batch dims do not
    /// broadcast or the dtype is bool.
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]);
    /// let b = Tensor::from_vec(vec![1.0f32, 0.0, 1.0], [3]);
    /// assert_eq!(a.matmul(&b).to_vec::<f32>(), vec![4.0, 10.0]); // [2, 3] @ [3] -> [2]
    /// assert_eq!(a.matmul(&a.t()).shape(), &[2, 2]);
    /// let batch = Tensor::ones([5, 1, 4, 2], ());
    /// assert_eq!(batch.matmul(&Tensor::ones([3, 2, 6], ())).shape(), &[5, 3, 4, 6]);
    /// ```
    #[track_caller]
    pub fn matmul(&self, other: &Tensor) -> Tensor {
        or_panic(self.try_matmul(other))
    }

    /// Fallible [`Tensor::matmul`].
    ///
    /// ```
    /// use flint_runtime::Tensor;
    /// let err = Tensor::ones([2, 3], ()).try_matmul(&Tensor::ones([4, 5], ())).unwrap_err();
    /// assert_eq!(err.to_string(), "matmul: shapes [2, 3] and [4, 5] cannot be multiplied (3 != 4)");
    /// ```
    #[track_caller]
    pub fn try_matmul(&self, other: &Tensor) -> Result<Tensor> {
        try_matmul(self, other)
    }
}

#[cfg(test)]
mod tests {
    use crate::{set_num_threads, DType, Generator, Tensor};

    /// The copy a CUDA product makes of a per-head view is a node of the graph: the
    /// gradient reaches the view through it, and the buffer the view is part of is not
    /// kept by it (on a CPU tensor, what `batched_operand` would give on CUDA).
    #[cfg(feature = "cuda")]
    #[test]
    fn a_tracked_copy_passes_the_gradient_and_keeps_no_view() {
        let leaf = Tensor::randn([2, 6, 4], DType::F64).requires_grad_(true);
        let whole = &leaf * 3.0;
        let view = whole.narrow(1, 2, 3).transpose(1, 2);
        let copy = super::tracked_copy(&view, view.copy_raw().unwrap());
        assert_eq!(copy.grad_fn().map(|n| n.name()), Some("clone"));
        assert!(!copy.shares_storage(&view));
        let buffer = std::sync::Arc::downgrade(whole.storage());
        drop((whole, view));
        assert!(
            buffer.upgrade().is_none(),
            "the copy keeps the viewed buffer"
        );
        let w = Tensor::randn([2, 3, 5], DType::F64);
        copy.matmul(&w).sum_all().backward();
        // d/dleaf of sum((3·leaf)[:, 2:5, :]ᵀ @ w) = 3 Σ_j w[b, k, j] at rows 2..5
        let g = leaf.grad().unwrap();
        let rowsum = w.sum(2, false); // [2, 3]
        for b in 0..2 {
            for r in 0..6 {
                for c in 0..4 {
                    let want = if (2..5).contains(&r) {
                        3.0 * rowsum.to_vec::<f64>()[b * 3 + r - 2]
                    } else {
                        0.0
                    };
                    let got = g.to_vec::<f64>()[(b * 6 + r) * 4 + c];
                    assert!(
                        (got - want).abs() < 1e-12,
                        "[{b}, {r}, {c}]: {got} vs {want}"
                    );
                }
            }
        }
        // a copy that shares the storage is the tensor itself
        let t = Tensor::randn([3], DType::F64);
        assert!(super::tracked_copy(&t, t.clone()).same_tensor(&t));
    }

    /// `a @ b` by the definition, in f64, from the values of `a` and `b` as given
    /// (already rounded to their dtype): the result shape, the values, and per value the
    /// sum of `|a_ik * b_kj|` to scale tolerances by.
    fn naive(a: &Tensor, b: &Tensor) -> (Vec<usize>, Vec<f64>, Vec<f64>) {
        let (a1, b1) = (a.ndim() == 1, b.ndim() == 1);
        let a = if a1 { a.unsqueeze(0) } else { a.clone() };
        let b = if b1 { b.unsqueeze(1) } else { b.clone() };
        let (na, nb) = (a.ndim(), b.ndim());
        let (m, k, n) = (a.shape()[na - 2], a.shape()[na - 1], b.shape()[nb - 1]);
        let nd = na.max(nb);
        let mut batch = vec![1; nd - 2];
        for (i, d) in batch.iter_mut().enumerate() {
            let pick = |s: &[usize]| {
                let off = nd - s.len();
                if i >= off {
                    s[i - off]
                } else {
                    1
                }
            };
            let (x, y) = (pick(a.shape()), pick(b.shape()));
            assert!(x == y || x == 1 || y == 1);
            *d = x.max(y);
        }
        let full = |r: usize, c: usize| [batch.clone(), vec![r, c]].concat();
        let av = a.expand(full(m, k)).contiguous().to_f64_vec();
        let bv = b.expand(full(k, n)).contiguous().to_f64_vec();
        let count: usize = batch.iter().product();
        let (mut out, mut scale) = (vec![0.0; count * m * n], vec![0.0; count * m * n]);
        for z in 0..count {
            for i in 0..m {
                for j in 0..n {
                    for l in 0..k {
                        let p = av[(z * m + i) * k + l] * bv[(z * k + l) * n + j];
                        out[(z * m + i) * n + j] += p;
                        scale[(z * m + i) * n + j] += p.abs();
                    }
                }
            }
        }
        let mut shape = batch;
        if !a1 {
            shape.push(m);
        }
        if !b1 {
            shape.push(n);
        }
        (shape, out, scale)
    }

    /// Checks `a @ b` against [`naive`] within `tol` relative to the products' magnitude.
    fn check(a: &Tensor, b: &Tensor, tol: f64) {
        let got = a.matmul(b);
        let (shape, want, scale) = naive(a, b);
        assert_eq!(got.shape(), &shape[..], "{:?} @ {:?}", a.shape(), b.shape());
        assert_eq!(got.dtype(), DType::promote(a.dtype(), b.dtype()));
        for (i, ((g, w), s)) in got.to_f64_vec().iter().zip(&want).zip(&scale).enumerate() {
            assert!(
                (g - w).abs() <= tol * (s + 1e-30),
                "{:?} @ {:?} ({}): element {i}: {g} vs {w}",
                a.shape(),
                b.shape(),
                got.dtype()
            );
        }
    }

    /// `try_slice` that panics, for short test lines.
    trait Sl {
        fn sl(&self, dim: isize, start: usize, end: usize, step: usize) -> Tensor;
    }
    impl Sl for Tensor {
        fn sl(&self, dim: isize, start: usize, end: usize, step: usize) -> Tensor {
            self.try_slice(dim, start, end, step).unwrap()
        }
    }

    fn randn(g: &mut Generator, shape: &[usize], dtype: DType) -> Tensor {
        g.randn(shape, dtype)
    }

    const SHAPES: &[(&[usize], &[usize])] = &[
        (&[5], &[5]),
        (&[5], &[5, 3]),
        (&[4, 5], &[5]),
        (&[4, 5], &[5, 3]),
        (&[1, 1], &[1, 1]),
        (&[3, 4, 5], &[3, 5, 2]),
        (&[3, 4, 5], &[5, 2]),
        (&[4, 5], &[3, 5, 2]),
        (&[2, 1, 4, 5], &[3, 5, 6]),
        (&[5], &[2, 3, 5, 4]),
        (&[2, 3, 4, 5], &[5]),
        (&[2, 3, 70, 33], &[33, 40]),
        (&[4, 33, 70], &[4, 70, 65]),
    ];

    #[test]
    fn every_rank_combination_in_f64() {
        let mut g = Generator::new(1);
        for &(sa, sb) in SHAPES {
            check(
                &randn(&mut g, sa, DType::F64),
                &randn(&mut g, sb, DType::F64),
                1e-13,
            );
        }
    }

    #[test]
    fn dot_is_zero_dimensional() {
        let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3]);
        let d = a.matmul(&a);
        assert_eq!(d.shape(), &[] as &[usize]);
        assert_eq!(d.item::<f32>(), 14.0);
    }

    #[test]
    fn every_float_dtype_and_mixed_dtypes() {
        let mut g = Generator::new(2);
        for (dt, tol) in [
            (DType::F32, 1e-6),
            (DType::F64, 1e-13),
            (DType::F16, 1e-2),
            (DType::BF16, 2e-2),
        ] {
            for &(sa, sb) in SHAPES {
                check(&randn(&mut g, sa, dt), &randn(&mut g, sb, dt), tol);
            }
        }
        // promotion: f32 @ f64 -> f64, f16 @ bf16 -> f32, i64 @ f16 -> f16
        let a = randn(&mut g, &[3, 4], DType::F32);
        check(&a, &randn(&mut g, &[4, 2], DType::F64), 1e-6);
        check(
            &a.to_dtype(DType::F16),
            &randn(&mut g, &[4, 2], DType::BF16),
            1e-6,
        );
        let i = Tensor::from_vec((0..8i64).collect(), [4, 2]);
        check(&a.to_dtype(DType::F16), &i, 1e-2);
    }

    #[test]
    fn integer_matmul_is_exact() {
        let mut g = Generator::new(3);
        for &(sa, sb) in SHAPES {
            let a = g.randint(-50, 50, sa);
            let b = g.randint(-50, 50, sb);
            let got = a.matmul(&b);
            assert_eq!(got.dtype(), DType::I64);
            let (shape, want, _) = naive(&a, &b);
            assert_eq!(got.shape(), &shape[..]);
            assert_eq!(got.to_f64_vec(), want);
        }
        // wraps on overflow like PyTorch instead of panicking
        let big = Tensor::from_vec(vec![i64::MAX, 2], [1, 2]);
        let two = Tensor::from_vec(vec![2i64, 1], [2, 1]);
        assert_eq!(
            big.matmul(&two).to_vec::<i64>(),
            vec![i64::MAX.wrapping_mul(2) + 2]
        );
    }

    #[test]
    fn strided_inputs_are_read_in_place_or_copied() {
        let mut g = Generator::new(4);
        for dt in [DType::F64, DType::F32, DType::I64] {
            let tol = if dt == DType::F32 { 1e-6 } else { 1e-13 };
            let x = randn(&mut g, &[6, 8, 10], DType::F64)
                .mul(10.0)
                .to_dtype(dt);
            let y = randn(&mut g, &[6, 10, 8], DType::F64)
                .mul(10.0)
                .to_dtype(dt);
            // transposes (unit row stride)
            check(&x.transpose(1, 2), &x, tol);
            check(
                &y.transpose(-1, -2),
                &y.transpose(-1, -2).transpose(1, 2),
                tol,
            );
            // permuted batch dims
            check(
                &x.permute([1, 0, 2]),
                &randn(&mut g, &[8, 10, 3], DType::F64).to_dtype(dt),
                tol,
            );
            // column slices with a step: no unit stride, copied
            check(&x.sl(2, 1, 9, 2), &y.sl(1, 0, 8, 2), tol);
            check(
                &x.sl(1, 0, 8, 3).sl(2, 0, 10, 2),
                &y.sl(1, 1, 10, 2).sl(2, 0, 8, 2),
                tol,
            );
            // narrowed (offset) operands, 1-D strided vectors
            check(&x.narrow(0, 2, 3).narrow(1, 1, 5), &y.narrow(0, 1, 3), tol);
            check(
                &x.select(0, 1).select(1, 3),
                &x.select(0, 2).select(1, 5),
                tol,
            );
            check(&y.select(0, 2), &x.select(0, 1).select(1, 2), tol);
            // broadcast (stride-0) matrix dims and batch dims
            let row = x.select(0, 0).select(0, 0); // [10]
            check(&row.expand([4, 10]), &y.select(0, 0), tol);
            check(
                &y.select(0, 0).t().expand([3, 8, 10]),
                &row.unsqueeze(1).expand([10, 5]),
                tol,
            );
            // batch dims of `a` that fold into rows, and ones that cannot
            check(&x, &y.select(0, 0), tol);
            check(&x.narrow(1, 0, 4), &y.select(0, 0), tol);
            check(&x.permute([1, 0, 2]), &y.select(0, 1), tol);
        }
    }

    #[test]
    fn gradient_of_a_matrix_shared_by_a_batch() {
        // x = 0..24 as [2, 3, 4], w [4, 5]: d(sum(x @ w))/dw[k, j] = Σ_rows x[.., k]
        // = (0 + 4 + … + 20) + 6k = 60 + 6k
        let x = Tensor::arange(0.0, 24.0, 1.0, DType::F64).view([2, 3, 4]);
        let w = Tensor::ones([4, 5], DType::F64).requires_grad_(true);
        x.matmul(&w).sum_all().backward();
        let want: Vec<f64> = (0..4).flat_map(|k| [60.0 + 6.0 * k as f64; 5]).collect();
        assert_eq!(w.grad().unwrap().to_vec::<f64>(), want);
        // a weighted upstream gradient and a transposed weight view, against the
        // batched products summed over the batch
        let mut g = Generator::new(5);
        let x = g.normal([3, 4, 6], 0.0, 1.0, DType::F64);
        let up = g.normal([3, 4, 2], 0.0, 1.0, DType::F64);
        let w = g.normal([2, 6], 0.0, 1.0, DType::F64).requires_grad_(true);
        x.matmul(&w.t()).backward_with(&up);
        let want = x.transpose(1, 2).matmul(&up).sum(0, false).t().contiguous();
        let got = w.grad().unwrap();
        // computed in `w.t()`'s column-major layout, so `w`'s gradient is contiguous
        assert!(got.is_contiguous());
        // and a plain 2-D `x @ w.t()` (the MLP's linear layers): AdamW then reads `w.grad`
        // without copying it
        let x2 = g.normal([5, 6], 0.0, 1.0, DType::F64);
        let up2 = g.normal([5, 2], 0.0, 1.0, DType::F64);
        let w2 = g.normal([2, 6], 0.0, 1.0, DType::F64).requires_grad_(true);
        x2.matmul(&w2.t()).backward_with(&up2);
        let got2 = w2.grad().unwrap();
        assert!(got2.is_contiguous());
        let want2 = up2.t().matmul(&x2);
        for (a, b) in got2.to_vec::<f64>().iter().zip(want2.to_vec::<f64>()) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        for (a, b) in got.to_vec::<f64>().iter().zip(want.to_vec::<f64>()) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }

    #[test]
    fn empty_operands() {
        let z = Tensor::zeros([3, 0], ()).matmul(&Tensor::zeros([0, 4], ()));
        assert_eq!(
            (z.shape(), z.to_vec::<f32>()),
            (&[3usize, 4][..], vec![0.0; 12])
        );
        assert_eq!(
            Tensor::zeros([0, 2], ())
                .matmul(&Tensor::ones([2, 4], ()))
                .shape(),
            &[0, 4]
        );
        assert_eq!(
            Tensor::zeros([2, 0, 2, 3], ())
                .matmul(&Tensor::ones([3, 4], ()))
                .shape(),
            &[2, 0, 2, 4]
        );
        assert_eq!(
            Tensor::zeros([0], DType::I64)
                .matmul(&Tensor::zeros([0], DType::I64))
                .item::<i64>(),
            0
        );
    }

    #[test]
    fn error_messages_name_the_op_and_both_shapes() {
        let err = |a: &[usize], b: &[usize]| {
            Tensor::ones(a, ())
                .try_matmul(&Tensor::ones(b, ()))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&[2, 3], &[4, 5]),
            "matmul: shapes [2, 3] and [4, 5] cannot be multiplied (3 != 4)"
        );
        assert_eq!(
            err(&[3], &[4]),
            "matmul: shapes [3] and [4] cannot be multiplied (3 != 4)"
        );
        assert_eq!(
            err(&[2, 3], &[2]),
            "matmul: shapes [2, 3] and [2] cannot be multiplied (3 != 2)"
        );
        assert_eq!(
            err(&[], &[3]),
            "matmul: shapes [] and [3] cannot be multiplied: both arguments need at least 1 dimension"
        );
        assert_eq!(
            err(&[2, 4, 3], &[5, 3, 4]),
            "matmul: shapes [2, 4, 3] and [5, 3, 4] cannot be multiplied: batch dims [2] and [5] do not broadcast"
        );
        let b = Tensor::ones([2, 2], DType::Bool);
        assert!(b
            .try_matmul(&b)
            .unwrap_err()
            .to_string()
            .starts_with("matmul: not defined on bool"));
        let panic =
            std::panic::catch_unwind(|| Tensor::ones([2, 3], ()).matmul(&Tensor::ones([2, 3], ())));
        let msg = *panic.unwrap_err().downcast::<String>().unwrap();
        assert!(
            msg.starts_with(
                "matmul: shapes [2, 3] and [2, 3] cannot be multiplied (3 != 2) (called at"
            ),
            "{msg}"
        );
        assert!(msg.contains("matmul.rs"), "{msg}");
    }

    #[test]
    fn linear_with_bias_is_one_node_matching_the_composition() {
        use crate::nn::functional::linear;
        let mut g = Generator::new(7);
        // [rows, k] x [n, k]: sgemm (f32, 32 x 64 x 48), the gemm crate (f64; small f32),
        // a 3-D non-contiguous input, a transposed weight, a ragged n
        // few rows by many columns (the `gemm` crate split by column blocks across two
        // threads, each block with its part of the bias)
        crate::set_num_threads(2);
        for (dtype, xs, n, tw) in [
            (DType::F32, vec![32, 64], 48, false),
            (DType::F32, vec![4, 9, 64], 37, true),
            (DType::F64, vec![4, 9, 64], 37, true),
            (DType::F32, vec![3, 5], 2, false),
            (DType::F64, vec![8, 256], 1024, false),
            (DType::F32, vec![8, 256], 1000, true),
        ] {
            let k = xs[xs.len() - 1];
            let x = g.randn(&xs[..], dtype);
            let x = if xs.len() == 3 {
                x.transpose(0, 1).contiguous().transpose(0, 1)
            } else {
                x
            };
            let w = if tw {
                g.randn([k, n], dtype).t()
            } else {
                g.randn([n, k], dtype)
            };
            // a slice of a larger vector at an offset, as a split in-projection's bias is
            let b = g.randn([3 * n], dtype).narrow(0, if tw { n } else { 0 }, n);
            let run = |fused: bool| {
                let ins = [&x, &w, &b].map(|t| t.detach().requires_grad_(true));
                let y = if fused {
                    linear(&ins[0], &ins[1], Some(&ins[2])).unwrap()
                } else {
                    ins[0].matmul(&ins[1].t()) + &ins[2]
                };
                let name = y.grad_fn().map(|n| n.name());
                let wy =
                    (Tensor::arange(0.0, y.numel() as f64, 1.0, dtype) * 0.01).reshape(y.shape());
                let gr = crate::autograd::grad(&[(&y * &wy).sum_all()], &ins, None, false, false)
                    .unwrap();
                let mut all = vec![y.detach()];
                all.extend(gr.into_iter().map(|t| t.unwrap()));
                (name, all)
            };
            let ((fname, fused), (_, composed)) = (run(true), run(false));
            assert_eq!(fname, Some("linear"));
            for (i, (a, c)) in fused.iter().zip(&composed).enumerate() {
                assert_eq!(a.shape(), c.shape(), "{dtype:?} {xs:?} output {i}");
                let (a, c) = (a.to_f64_vec(), c.to_f64_vec());
                let scale = c.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 } * scale;
                for (u, v) in a.iter().zip(&c) {
                    assert!(
                        (u - v).abs() <= tol,
                        "{dtype:?} {xs:?} output {i}: {u} vs {v}"
                    );
                }
            }
            // on sgemm the bias goes onto the finished sums: the product then the add
            if dtype == DType::F32 && xs == [32, 64] && crate::cpu::sgemm::available() {
                assert!(fused[0].to_vec::<f32>() == composed[0].to_vec::<f32>());
            }
        }
        crate::set_num_threads(0);
        // where it does not apply (mixed dtypes), the composition runs
        let x = Tensor::ones([2, 3], DType::F64);
        let (w, b) = (
            Tensor::ones([4, 3], DType::F32),
            Tensor::ones([4], DType::F32),
        );
        assert!(super::linear_bias(&x, &w, &b).is_none());
        assert_eq!(linear(&x, &w, Some(&b)).unwrap().to_f64_vec(), vec![4.0; 8]);
    }

    #[test]
    fn one_and_two_threads_agree() {
        let mut g = Generator::new(5);
        // large enough for multi-threaded gemm, and a batch of small products
        let cases = [
            (
                randn(&mut g, &[160, 200], DType::F32),
                randn(&mut g, &[200, 150], DType::F32),
            ),
            (
                randn(&mut g, &[16, 24, 20], DType::F32),
                randn(&mut g, &[16, 20, 12], DType::F32),
            ),
            (
                randn(&mut g, &[96, 128], DType::F64).t(),
                randn(&mut g, &[96, 64], DType::F64),
            ),
        ];
        for (a, b) in &cases {
            set_num_threads(1);
            let one = a.matmul(b).to_f64_vec();
            set_num_threads(2);
            let two = a.matmul(b).to_f64_vec();
            set_num_threads(0);
            let (_, want, scale) = naive(a, b);
            for i in 0..want.len() {
                assert!(
                    (one[i] - two[i]).abs() <= 1e-5 * scale[i],
                    "{} vs {}",
                    one[i],
                    two[i]
                );
                assert!((two[i] - want[i]).abs() <= 1e-5 * scale[i]);
            }
        }
        let a = g.randint(-9, 9, [64, 90, 40]);
        let b = g.randint(-9, 9, [40, 30]);
        set_num_threads(1);
        let one = a.matmul(&b).to_vec::<i64>();
        set_num_threads(2);
        let two = a.matmul(&b).to_vec::<i64>();
        set_num_threads(0);
        assert_eq!(one, two);
    }
}
