//! [`random_split`]: disjoint random subsets of a dataset, reproducible from a seed.

use super::{Dataset, IntoArcDataset, Subset};
use crate::error::{Error, Result};
use crate::random::Generator;

/// Splits `dataset` (a dataset or an `Arc` of one) into disjoint random subsets of the
/// given `lengths`, like `torch.utils.data.random_split`: the items are permuted with
/// `Generator::new(seed).randperm(len)` and cut in order, so the same seed gives the same
/// split on every machine. The lengths must add up to the dataset's length.
///
/// ```
/// use flint_runtime::data::{random_split, Dataset, TensorDataset};
/// use flint_runtime::Tensor;
/// let ds = TensorDataset::new(vec![Tensor::arange(0.0, 10.0, 1.0, ())]).unwrap();
/// let parts = random_split(ds, &[7, 3], 42).unwrap();
/// assert_eq!((parts[0].len(), parts[1].len()), (7, 3));
/// let mut all: Vec<usize> = parts.iter().flat_map(|p| p.indices().to_vec()).collect();
/// all.sort();
/// assert_eq!(all, (0..10).collect::<Vec<_>>());
/// ```
pub fn random_split<S: IntoArcDataset>(
    dataset: S,
    lengths: &[usize],
    seed: u64,
) -> Result<Vec<Subset<S::Dataset>>> {
    let dataset = dataset.into_arc();
    let n = dataset.len();
    let total = lengths
        .iter()
        .try_fold(0usize, |a, &l| a.checked_add(l))
        .unwrap_or(usize::MAX);
    if total != n {
        return Err(Error::config(
            "random_split",
            format!("lengths {lengths:?} add up to {total} but the dataset has {n} items"),
        ));
    }
    let perm: Vec<usize> = Generator::new(seed)
        .randperm(n)
        .try_to_vec::<i64>()?
        .into_iter()
        .map(|i| i as usize)
        .collect();
    let mut start = 0;
    lengths
        .iter()
        .map(|&l| {
            let part = perm[start..start + l].to_vec();
            start += l;
            Subset::new(std::sync::Arc::clone(&dataset), part)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::TensorDataset;
    use crate::tensor::Tensor;
    use std::sync::Arc;

    fn ds(n: usize) -> Arc<TensorDataset> {
        let v: Vec<i64> = (0..n as i64).collect();
        Arc::new(TensorDataset::new(vec![Tensor::from_vec(v, [n])]).unwrap())
    }

    #[test]
    fn sizes_disjoint_complete_deterministic() {
        let d = ds(100);
        let parts = random_split(Arc::clone(&d), &[60, 25, 15], 7).unwrap();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            vec![60, 25, 15]
        );
        let mut seen = [false; 100];
        for p in &parts {
            assert!(Arc::ptr_eq(p.dataset(), &d));
            for &i in p.indices() {
                assert!(!seen[i], "index {i} in two parts");
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        // the items are the dataset's items at those indices
        let it = parts[1].get(3).unwrap();
        assert_eq!(it[0].item::<i64>(), parts[1].indices()[3] as i64);

        let again = random_split(Arc::clone(&d), &[60, 25, 15], 7).unwrap();
        for (a, b) in parts.iter().zip(&again) {
            assert_eq!(a.indices(), b.indices());
        }
        let other = random_split(Arc::clone(&d), &[60, 25, 15], 8).unwrap();
        assert_ne!(parts[0].indices(), other[0].indices());
        // the permutation is the generator's: the first part is randperm's head
        let perm = Generator::new(7).randperm(100).to_vec::<i64>();
        let head: Vec<usize> = perm[..60].iter().map(|&i| i as usize).collect();
        assert_eq!(parts[0].indices(), head.as_slice());
        // not the identity
        assert_ne!(parts[0].indices(), (0..60).collect::<Vec<_>>().as_slice());
    }

    #[test]
    fn lengths_must_add_up() {
        let e = random_split(ds(10), &[7, 2], 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "random_split: lengths [7, 2] add up to 9 but the dataset has 10 items"
        );
        assert!(random_split(ds(10), &[usize::MAX, 2], 0).is_err());
        let parts = random_split(ds(3), &[0, 3], 0).unwrap();
        assert!(parts[0].is_empty());
        assert_eq!(parts[1].len(), 3);
    }
}
