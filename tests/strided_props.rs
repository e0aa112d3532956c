//! Property tests: every op gives the same result on a strided view (permuted, sliced,
//! expanded) as on a contiguous copy of the same values.

use flint::{DType, Tensor};
use proptest::prelude::*;

/// A random tensor and a random non-contiguous view of it with the same logical values
/// as `view.contiguous()`.
/// Shape, row-major data, a permutation of the dims, and a `(start, len)` cut per dim.
type StridedCase = (Vec<usize>, Vec<f64>, Vec<usize>, Vec<(usize, usize)>);

fn strided_case() -> impl Strategy<Value = StridedCase> {
    prop::collection::vec(1usize..5, 1..5).prop_flat_map(|shape| {
        let n: usize = shape.iter().product();
        let nd = shape.len();
        let data = prop::collection::vec(-10.0f64..10.0, n);
        let perm = Just((0..nd).collect::<Vec<_>>()).prop_shuffle();
        let cuts = shape
            .iter()
            .map(|&d| (0..d).prop_flat_map(move |s| (Just(s), 1..=d - s)))
            .collect::<Vec<_>>();
        (Just(shape), data, perm, cuts)
    })
}

fn make_view(shape: &[usize], data: &[f64], perm: &[usize], cuts: &[(usize, usize)]) -> Tensor {
    let mut t = Tensor::from_vec(data.to_vec(), shape);
    for (d, &(s, l)) in cuts.iter().enumerate() {
        t = t.narrow(d as isize, s, l);
    }
    let p: Vec<isize> = perm.iter().map(|&p| p as isize).collect();
    t.permute(p)
}

fn same(a: &Tensor, b: &Tensor) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.shape(), b.shape());
    prop_assert_eq!(a.dtype(), b.dtype());
    let (x, y) = (a.to_f64_vec(), b.to_f64_vec());
    for (p, q) in x.iter().zip(&y) {
        prop_assert!(
            p == q || (p.is_nan() && q.is_nan()) || (p - q).abs() <= 1e-12 * q.abs().max(1.0),
            "{} vs {}",
            p,
            q
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn elementwise_ops_agree((shape, data, perm, cuts) in strided_case()) {
        let v = make_view(&shape, &data, &perm, &cuts);
        let c = v.contiguous();
        same(&v.exp(), &c.exp())?;
        same(&v.tanh(), &c.tanh())?;
        same(&v.relu(), &c.relu())?;
        same(&(&v * &v + 1.0), &(&c * &c + 1.0))?;
        // broadcasting against the last dim, and a row of the tensor against itself
        let last = v.size(-1);
        let row = Tensor::arange(0.0, last as f64, 1.0, DType::F64);
        same(&(&v - &row), &(&c - &row))?;
        same(&v.maximum(&row), &c.maximum(&row))?;
        same(&v.gt(0.5), &c.gt(0.5))?;
        same(&v.masked_fill(&v.lt(0.0), 0.0), &c.masked_fill(&c.lt(0.0), 0.0))?;
        same(&v.to_dtype(DType::F32), &c.to_dtype(DType::F32))?;
        same(&v.to_dtype(DType::I64), &c.to_dtype(DType::I64))?;
    }

    #[test]
    fn reductions_agree((shape, data, perm, cuts) in strided_case(), dim in 0usize..4, keep in any::<bool>()) {
        let v = make_view(&shape, &data, &perm, &cuts);
        let c = v.contiguous();
        let d = (dim % v.ndim()) as isize;
        same(&v.sum(d, keep), &c.sum(d, keep))?;
        same(&v.mean(d, keep), &c.mean(d, keep))?;
        same(&v.max(d, keep), &c.max(d, keep))?;
        same(&v.argmin(d, keep), &c.argmin(d, keep))?;
        same(&v.softmax(d), &c.softmax(d))?;
        same(&v.logsumexp(d, keep), &c.logsumexp(d, keep))?;
        same(&v.var(d, 0, keep), &c.var(d, 0, keep))?;
        same(&v.sum(flint::All, false), &c.sum(flint::All, false))?;
    }

    #[test]
    fn views_and_copies_agree((shape, data, perm, cuts) in strided_case()) {
        let v = make_view(&shape, &data, &perm, &cuts);
        let c = v.contiguous();
        same(&v.reshape([-1]), &c.view([-1]))?;
        same(&v.transpose(0, -1).contiguous(), &c.transpose(0, -1).contiguous())?;
        same(&v.unsqueeze(0).squeeze(), &c.squeeze())?;
        same(&v.flatten(0, -1), &c.flatten(0, -1))?;
        // write through the view, then read both
        let rev: Vec<isize> = (0..v.ndim() as isize).rev().collect();
        let rshape: Vec<usize> = v.shape().iter().rev().copied().collect();
        let dstv = Tensor::zeros(&rshape, DType::F64).permute(&rev); // a layout of its own
        dstv.copy_(&v);
        same(&dstv, &c)?;
        let x = Tensor::from_vec(data.clone(), &shape);
        let xv = make_view(&shape, &data, &perm, &cuts);
        let xv2 = {
            let mut t = x.clone();
            for (d, &(s, l)) in cuts.iter().enumerate() { t = t.narrow(d as isize, s, l); }
            t.permute(perm.iter().map(|&p| p as isize).collect::<Vec<_>>())
        };
        xv2.mul_(2.0);
        same(&xv2, &(&xv * 2.0))?;
    }

    #[test]
    fn matmul_and_index_ops_agree((shape, data, perm, cuts) in strided_case(), pick in 0usize..16) {
        let v = make_view(&shape, &data, &perm, &cuts);
        let c = v.contiguous();
        // a matrix view of the same values, multiplied by its own transpose
        let m = v.reshape([v.size(0) as isize, -1]);
        let mc = c.reshape([c.size(0) as isize, -1]);
        same(&m.matmul(&m.t()), &mc.matmul(&mc.t()))?;
        same(&m.t().matmul(&m), &mc.t().matmul(&mc))?;
        let last = v.size(-1);
        let idx = Tensor::from_vec(vec![(pick % last) as i64, 0], [2]);
        same(&v.index_select(-1, &idx), &c.index_select(-1, &idx))?;
        same(&Tensor::cat(&[&v, &c], 0), &Tensor::cat(&[&c, &c], 0))?;
        same(&Tensor::stack(&[&v, &v], -1), &Tensor::stack(&[&c, &c], -1))?;
        same(&v.masked_select(&v.gt(0.0)), &c.masked_select(&c.gt(0.0)))?;
        let gi = Tensor::zeros(v.shape(), DType::I64);
        same(&v.gather(0, &gi), &c.gather(0, &gi))?;
        same(&v.i(..), &c.i(..))?;
    }
}
