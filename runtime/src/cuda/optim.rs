//! Fused optimizer updates on CUDA: one `adam_<dt>` / `sgd_<dt>` launch per parameter
//! instead of the optimizer's chain of about ten tensor ops, with the semantics of the
//! CPU's fused updates (`optim/fused.rs`): the parameter is written in place (its
//! version bumped); a state tensor is updated in place when nothing else can see it
//! ([`Tensor::is_exclusive`]), otherwise its new values go into a copy. `Ok(None)` — with
//! nothing written — when the tensors do not qualify (dtypes, shapes, devices, strided
//! parameter or state, storage shared with the parameter); the optimizer then takes its
//! chain.

use super::launch::{self, Arg};
use super::ops::{contiguous, copy_to_new};
use crate::error::Result;
use crate::optim::fused::{AdamStep, SgdStep};
use crate::tensor::Tensor;

/// Whether `t` can be a state of `p`'s fused update: its dtype, shape and device,
/// contiguous, and not sharing `p`'s storage.
fn state_fits(t: &Tensor, p: &Tensor) -> bool {
    t.device() == p.device()
        && t.dtype() == p.dtype()
        && t.shape() == p.shape()
        && t.is_contiguous()
        && !t.shares_storage(p)
}

/// The checks of every fused update: `p` a contiguous float CUDA tensor, `g` of its
/// dtype, shape and device, not sharing its storage; every state fits.
fn qualifies(p: &Tensor, g: &Tensor, states: &[&Tensor]) -> bool {
    p.is_cuda()
        && p.dtype().is_float()
        && p.is_contiguous()
        && g.device() == p.device()
        && g.dtype() == p.dtype()
        && g.shape() == p.shape()
        && !g.shares_storage(p)
        && states.iter().all(|t| state_fits(t, p))
}

/// The tensor a state is updated in: itself when exclusive, else a copy.
fn own(t: &Tensor) -> Result<Tensor> {
    if t.is_exclusive() {
        Ok(t.clone())
    } else {
        copy_to_new(t)
    }
}

/// Launches `entry` over `p`'s elements with the addresses of `p`, `g` and `states`
/// (0 for `None`) followed by `tail`, holding the write locks of `p` and the states while
/// it is queued (bumping their versions, as every in-place write does).
fn launch_update(
    op: &'static str,
    entry: &str,
    p: &Tensor,
    g: &Tensor,
    states: &[Option<&Tensor>],
    tail: &[Arg],
) -> Result<()> {
    let name = launch::entry(op, p.device(), entry, p.dtype())?;
    // addresses first: taking them reads each storage, which must not be write-locked yet
    let addr = |t: &Tensor| -> Result<u64> {
        let (_, base, _) = launch::ptr(op, t)?;
        Ok(base + (t.layout().offset() * t.dtype().size_in_bytes()) as u64)
    };
    let g = contiguous(g)?; // lives until the launch is queued
    let (pp, pg) = (addr(p)?, addr(&g)?);
    let ps: Vec<u64> = states
        .iter()
        .map(|s| s.map_or(Ok(0), addr))
        .collect::<Result<_>>()?;
    let (gpu, _, _) = launch::ptr(op, p)?;
    let n = p.numel();
    let mut args = vec![Arg::Ptr(pp), Arg::Ptr(pg)];
    args.extend(ps.into_iter().map(Arg::Ptr));
    args.push(Arg::n(n));
    args.extend_from_slice(tail);
    let _p = p.storage().write();
    let _s: Vec<_> = states
        .iter()
        .flatten()
        .map(|t| t.storage().write())
        .collect();
    launch::launch(op, &gpu, &name, launch::elementwise(n), &args)
}

/// One fused Adam/AdamW step of a CUDA parameter (`adam_<dt>`): the new `(m, v, v_max)`
/// (`v_max` for AMSGrad, started at zeros, which equals the CPU's start at `v`).
pub(crate) fn adam(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    v_max: Option<&Tensor>,
    s: &AdamStep,
) -> Result<Option<(Tensor, Tensor, Option<Tensor>)>> {
    let states: Vec<&Tensor> = [Some(m), Some(v), v_max].into_iter().flatten().collect();
    if !qualifies(p, g, &states) {
        return Ok(None);
    }
    let (m, v) = (own(m)?, own(v)?);
    let v_max = match (s.amsgrad, v_max) {
        (false, _) => None,
        (true, Some(t)) => Some(own(t)?),
        (true, None) => Some(Tensor::try_zeros(p.shape(), (p.dtype(), p.device()))?),
    };
    let tail = [
        Arg::F64(s.lr),
        Arg::F64(s.betas.0),
        Arg::F64(s.betas.1),
        Arg::F64(s.eps),
        Arg::F64(s.weight_decay),
        Arg::I32(i32::from(s.decoupled)),
        Arg::F64(s.bias1),
        Arg::F64(s.bias2_sqrt),
    ];
    launch_update(
        "Adam",
        "adam",
        p,
        g,
        &[Some(&m), Some(&v), v_max.as_ref()],
        &tail,
    )?;
    Ok(Some((m, v, v_max)))
}

/// One fused SGD step of a CUDA parameter (`sgd_<dt>`): `Some(new buffer)` with momentum
/// (the first step creates it), `None` without.
pub(crate) fn sgd(
    p: &Tensor,
    g: &Tensor,
    buf: Option<&Tensor>,
    s: &SgdStep,
) -> Result<Option<Option<Tensor>>> {
    let states: Vec<&Tensor> = buf.into_iter().collect();
    if !qualifies(p, g, &states) {
        return Ok(None);
    }
    let first = buf.is_none();
    let buf = match (s.momentum != 0.0, buf) {
        (false, _) => None,
        (true, Some(b)) => Some(own(b)?),
        // written before it is read on the first step
        (true, None) => Some(Tensor::try_zeros(p.shape(), (p.dtype(), p.device()))?),
    };
    let tail = [
        Arg::F64(s.lr),
        Arg::F64(s.momentum),
        Arg::F64(s.dampening),
        Arg::F64(s.weight_decay),
        Arg::I32(i32::from(s.nesterov)),
        Arg::I32(i32::from(first)),
    ];
    launch_update("SGD", "sgd", p, g, &[buf.as_ref()], &tail)?;
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    #[test]
    fn cpu_tensors_never_qualify() {
        let p = Tensor::zeros([3], DType::F32);
        let g = Tensor::ones([3], DType::F32);
        assert!(!qualifies(&p, &g, &[]));
    }
}
