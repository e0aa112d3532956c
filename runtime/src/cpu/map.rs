//! Elementwise kernels over tensors: unary maps, broadcasting binary maps, ternary
//! selects. Outputs are new contiguous tensors.
//!
//! With the `cuda` feature, each of the three is also the dispatch point of its op
//! family for CUDA tensors: the kernel is found by the op's name
//! ([`crate::cuda::ops`] lists the names it has kernels for).

use crate::cpu::strided::{gather_map, zip3_map, zip_map};
use crate::error::Result;
use crate::layout::Layout;
use crate::storage::BufferElement;
use crate::tensor::Tensor;

/// `f` applied to every element of `x` (whose dtype must be `T`); `op` names the op in
/// the error for a CUDA tensor.
pub(crate) fn unary<T: BufferElement, U: BufferElement>(
    op: &'static str,
    x: &Tensor,
    f: impl Fn(T) -> U + Send + Sync,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return crate::cuda::ops::unary(op, x, U::DTYPE);
    }
    let out = x.with_slice::<T, _>(op, |s, l| gather_map(s, l, f))?;
    Ok(Tensor::from_buffer(U::into_buffer(out), x.shape()))
}

/// `f(a, b)` over the broadcast of `a` and `b` (layouts `la`, `lb` already broadcast to
/// the output shape; both of dtype `T`).
pub(crate) fn binary<T: BufferElement, U: BufferElement>(
    op: &'static str,
    a: &Tensor,
    la: &Layout,
    b: &Tensor,
    lb: &Layout,
    f: impl Fn(T, T) -> U + Send + Sync,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if a.is_cuda() {
        return crate::cuda::ops::binary(op, a, la, b, lb, U::DTYPE);
    }
    let out = a.with_slice::<T, _>(op, |sa, _| {
        b.with_slice::<T, _>(op, |sb, _| zip_map(sa, la, sb, lb, f))
    })??;
    Ok(Tensor::from_buffer(U::into_buffer(out), la.shape()))
}

/// `f(c, a, b)` over three layouts broadcast to one shape (`c` of dtype `C`, `a` and `b`
/// of dtype `T`).
pub(crate) fn ternary<C: BufferElement, T: BufferElement, U: BufferElement>(
    op: &'static str,
    c: (&Tensor, &Layout),
    a: (&Tensor, &Layout),
    b: (&Tensor, &Layout),
    f: impl Fn(C, T, T) -> U + Send + Sync,
) -> Result<Tensor> {
    // `where` and `masked_fill`: `c ? a : b`
    #[cfg(feature = "cuda")]
    if a.0.is_cuda() {
        return crate::cuda::ops::where_(c, a, b);
    }
    let out = c.0.with_slice::<C, _>(op, |sc, _| {
        a.0.with_slice::<T, _>(op, |sa, _| {
            b.0.with_slice::<T, _>(op, |sb, _| zip3_map((sc, c.1), (sa, a.1), (sb, b.1), f))
        })
    })???;
    Ok(Tensor::from_buffer(U::into_buffer(out), a.1.shape()))
}
