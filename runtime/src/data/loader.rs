//! [`DataLoader`]: batches of a dataset in a seeded order, built in the caller's thread or
//! prefetched by background workers.

use super::{Collate, Dataset, IntoArcDataset, Stack};
use crate::error::{or_panic, Error, Result};
use crate::random::Generator;
use std::any::Any;
use std::fmt;
use std::iter::FusedIterator;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Builds the batch of the given item indices.
type FetchFn<B> = Arc<dyn Fn(&[usize]) -> Result<B> + Send + Sync>;

/// Batches of a [`Dataset`], like `torch.utils.data.DataLoader`: a batch size, seeded
/// shuffling, `drop_last`, a [`Collate`] step ([`Stack`] by default) and optional worker
/// threads that prefetch batches in the background.
///
/// - [`shuffle(seed)`](DataLoader::shuffle): epoch `e` visits the items in a random order
///   that depends only on `(seed, e)`, so a run is reproducible and a resumed run sees
///   the same batches as one that never stopped. Off by default (items in index order).
/// - [`drop_last(true)`](DataLoader::drop_last): leave out a last batch smaller than the
///   batch size.
/// - [`num_workers(n)`](DataLoader::num_workers): `0` (the default) builds each batch in
///   the caller's thread when the iterator asks for it; `n > 0` starts `n` threads per
///   epoch that build batches ahead, [`prefetch(k)`](DataLoader::prefetch) (default 2)
///   finished batches each. Batches arrive in the same order either way.
///
/// [`epoch(e)`](DataLoader::epoch) iterates over one epoch's batches as
/// `Result<Batch>`; an error (a failing [`Dataset::get`], a panic in a worker) is
/// yielded in its batch's place and ends the epoch.
///
/// ```
/// use flint_runtime::data::{DataLoader, TensorDataset};
/// use flint_runtime::Tensor;
/// let x = Tensor::arange(0.0, 20.0, 1.0, ()).view([10, 2]);
/// let y = Tensor::from_vec((0..10i64).collect::<Vec<_>>(), [10]);
/// let loader = DataLoader::new(TensorDataset::new(vec![x, y]).unwrap(), 4).shuffle(0);
/// assert_eq!(loader.len(), 3); // 4 + 4 + 2
/// for epoch in 0..2 {
///     let mut seen = 0;
///     for batch in loader.epoch(epoch) {
///         let batch = batch.unwrap(); // [x [B, 2], y [B]]
///         assert_eq!(batch[0].size(1), 2);
///         seen += batch[1].size(0);
///     }
///     assert_eq!(seen, 10);
/// }
/// ```
pub struct DataLoader<D, C = Stack> {
    dataset: Arc<D>,
    collate: Arc<C>,
    batch_size: usize,
    shuffle: Option<u64>,
    drop_last: bool,
    num_workers: usize,
    prefetch: usize,
}

impl<D, C> Clone for DataLoader<D, C> {
    fn clone(&self) -> Self {
        DataLoader {
            dataset: Arc::clone(&self.dataset),
            collate: Arc::clone(&self.collate),
            ..*self
        }
    }
}

impl<D: Dataset, C> fmt::Debug for DataLoader<D, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataLoader")
            .field("items", &self.dataset.len())
            .field("batch_size", &self.batch_size)
            .field("shuffle", &self.shuffle)
            .field("drop_last", &self.drop_last)
            .field("num_workers", &self.num_workers)
            .field("prefetch", &self.prefetch)
            .finish()
    }
}

fn check_batch_size(batch_size: usize) -> Result<()> {
    if batch_size == 0 {
        return Err(Error::config(
            "DataLoader",
            "batch_size must be at least 1, got 0",
        ));
    }
    Ok(())
}

impl<D: Dataset> DataLoader<D, Stack>
where
    Stack: Collate<D::Item>,
{
    /// A loader over `dataset` (a dataset or an `Arc` of one) in batches of `batch_size`,
    /// collated with [`Stack`]; no shuffling, no workers. Panics when `batch_size` is 0;
    /// see [`DataLoader::try_new`].
    ///
    /// ```
    /// use flint_runtime::data::{DataLoader, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::zeros([5, 3], ())]).unwrap();
    /// let loader = DataLoader::new(ds, 2);
    /// let shapes: Vec<Vec<usize>> = loader.epoch(0).map(|b| b.unwrap()[0].shape().to_vec()).collect();
    /// assert_eq!(shapes, vec![vec![2, 3], vec![2, 3], vec![1, 3]]);
    /// ```
    #[track_caller]
    pub fn new(dataset: impl IntoArcDataset<Dataset = D>, batch_size: usize) -> Self {
        or_panic(Self::try_new(dataset, batch_size))
    }

    /// Fallible [`DataLoader::new`]: an error for a batch size of 0.
    ///
    /// ```
    /// use flint_runtime::data::{DataLoader, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::zeros([5], ())]).unwrap();
    /// let e = DataLoader::try_new(ds, 0).unwrap_err();
    /// assert_eq!(e.to_string(), "DataLoader: batch_size must be at least 1, got 0");
    /// ```
    pub fn try_new(dataset: impl IntoArcDataset<Dataset = D>, batch_size: usize) -> Result<Self> {
        Self::try_with_collate(dataset, batch_size, Stack)
    }
}

impl<D: Dataset, C: Collate<D::Item>> DataLoader<D, C> {
    /// A loader that turns each batch's items into a batch with `collate` (a [`Collate`],
    /// e.g. a closure `|items: Vec<Item>| -> Result<Batch>`). Panics when `batch_size` is
    /// 0; see [`DataLoader::try_with_collate`].
    ///
    /// ```
    /// use flint_runtime::data::{DataLoader, TensorDataset};
    /// use flint_runtime::{Result, Tensor};
    /// let ds = TensorDataset::new(vec![Tensor::from_vec(vec![1i64, 2, 3, 4, 5], [5])]).unwrap();
    /// // each batch becomes the sum of its values
    /// let sum = |items: Vec<Vec<Tensor>>| -> Result<i64> {
    ///     Ok(items.iter().map(|it| it[0].item::<i64>()).sum())
    /// };
    /// let loader = DataLoader::with_collate(ds, 2, sum);
    /// let sums: Vec<i64> = loader.epoch(0).map(|b| b.unwrap()).collect();
    /// assert_eq!(sums, vec![3, 7, 5]);
    /// ```
    #[track_caller]
    pub fn with_collate(
        dataset: impl IntoArcDataset<Dataset = D>,
        batch_size: usize,
        collate: C,
    ) -> Self {
        or_panic(Self::try_with_collate(dataset, batch_size, collate))
    }

    /// Fallible [`DataLoader::with_collate`]: an error for a batch size of 0.
    ///
    /// ```
    /// use flint_runtime::data::{DataLoader, Stack, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::zeros([5], ())]).unwrap();
    /// assert!(DataLoader::try_with_collate(ds, 0, Stack).is_err());
    /// ```
    pub fn try_with_collate(
        dataset: impl IntoArcDataset<Dataset = D>,
        batch_size: usize,
        collate: C,
    ) -> Result<Self> {
        check_batch_size(batch_size)?;
        Ok(DataLoader {
            dataset: dataset.into_arc(),
            collate: Arc::new(collate),
            batch_size,
            shuffle: None,
            drop_last: false,
            num_workers: 0,
            prefetch: 2,
        })
    }

    /// Shuffles the items: epoch `e` uses the permutation
    /// `Generator::new(seed)` draws at offset `e * len` (the `e`-th of the permutations
    /// one generator would draw in a row), a pure function of `(seed, e)`.
    ///
    /// ```
    /// use flint_runtime::data::{DataLoader, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::zeros([8], ())]).unwrap();
    /// let loader = DataLoader::new(ds, 4).shuffle(3);
    /// assert_eq!(loader.order(1), loader.clone().order(1)); // reproducible
    /// assert_ne!(loader.order(0), loader.order(1)); // a new order every epoch
    /// ```
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle = Some(seed);
        self
    }

    /// Whether to leave out a last batch smaller than the batch size (default `false`).
    ///
    /// ```
    /// use flint_runtime::data::{DataLoader, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::zeros([10], ())]).unwrap();
    /// assert_eq!(DataLoader::new(ds, 4).drop_last(true).len(), 2);
    /// ```
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// The number of background threads that build batches (default 0: batches are
    /// built in the caller's thread). Each epoch starts its own threads (at most one per
    /// batch), which give batch `b` to worker `b % n` and stop when the epoch's iterator
    /// is dropped. Starting threads costs tens of microseconds per epoch, so workers pay
    /// off when reading an item is expensive (decoding, augmenting), not for a
    /// [`TensorDataset`](super::TensorDataset) in memory.
    ///
    /// A panic inside a worker (in [`Dataset::get`] or the collate) becomes an
    /// [`Error::DataLoader`] in that batch's place; with no workers it unwinds in the
    /// caller's thread like any panic.
    ///
    /// ```
    /// use flint_runtime::data::{DataLoader, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::arange(0.0, 10.0, 1.0, ())]).unwrap();
    /// let loader = DataLoader::new(ds, 3).shuffle(1);
    /// let serial: Vec<Vec<f32>> = loader.epoch(0).map(|b| b.unwrap()[0].to_vec()).collect();
    /// let threaded = loader.num_workers(2);
    /// let parallel: Vec<Vec<f32>> = threaded.epoch(0).map(|b| b.unwrap()[0].to_vec()).collect();
    /// assert_eq!(serial, parallel);
    /// ```
    pub fn num_workers(mut self, n: usize) -> Self {
        self.num_workers = n;
        self
    }

    /// How many finished batches each worker may hold ready before the consumer takes
    /// them (default 2; 0 hands each batch over as soon as it is built, without a queue).
    /// Only matters with [`num_workers`](DataLoader::num_workers) > 0.
    ///
    /// ```
    /// use flint_runtime::data::{DataLoader, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::zeros([10], ())]).unwrap();
    /// let loader = DataLoader::new(ds, 2).num_workers(2).prefetch(4);
    /// assert_eq!(loader.epoch(0).count(), 5);
    /// ```
    pub fn prefetch(mut self, k: usize) -> Self {
        self.prefetch = k;
        self
    }

    /// The number of batches in an epoch: `ceil(len / batch_size)`, or
    /// `floor(len / batch_size)` with `drop_last`.
    ///
    /// ```
    /// use flint_runtime::data::{DataLoader, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::zeros([1437, 64], ())]).unwrap();
    /// assert_eq!(DataLoader::new(ds, 32).len(), 45);
    /// ```
    pub fn len(&self) -> usize {
        let n = self.dataset.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// Whether an epoch has no batches.
    ///
    /// ```
    /// use flint_runtime::data::{DataLoader, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::zeros([3], ())]).unwrap();
    /// assert!(DataLoader::new(ds, 4).drop_last(true).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch size.
    ///
    /// ```
    /// use flint_runtime::data::{DataLoader, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::zeros([3], ())]).unwrap();
    /// assert_eq!(DataLoader::new(ds, 4).batch_size(), 4);
    /// ```
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The dataset.
    ///
    /// ```
    /// use flint_runtime::data::{DataLoader, Dataset, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::zeros([3], ())]).unwrap();
    /// assert_eq!(DataLoader::new(ds, 4).dataset().len(), 3);
    /// ```
    pub fn dataset(&self) -> &Arc<D> {
        &self.dataset
    }

    /// The order in which epoch `epoch` visits the items (all of them, including those
    /// `drop_last` leaves out): `0..len` without shuffling.
    ///
    /// ```
    /// use flint_runtime::data::{DataLoader, TensorDataset};
    /// use flint_runtime::{Generator, Tensor};
    /// let ds = TensorDataset::new(vec![Tensor::zeros([5], ())]).unwrap();
    /// let loader = DataLoader::new(ds, 2);
    /// assert_eq!(loader.order(7), vec![0, 1, 2, 3, 4]);
    /// let shuffled = loader.shuffle(9);
    /// let mut g = Generator::new(9);
    /// let _epoch0 = g.randperm(5);
    /// let epoch1: Vec<usize> = g.randperm(5).to_vec::<i64>().iter().map(|&i| i as usize).collect();
    /// assert_eq!(shuffled.order(1), epoch1);
    /// ```
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let n = self.dataset.len();
        match self.shuffle {
            None => (0..n).collect(),
            Some(seed) => {
                let mut g = Generator::new(seed);
                g.set_state(seed, (epoch as u64).wrapping_mul(n as u64));
                g.randperm(n)
                    .to_vec::<i64>()
                    .into_iter()
                    .map(|i| i as usize)
                    .collect()
            }
        }
    }

    /// The batches of epoch `epoch`, in order. With workers, they start building batches
    /// at once; dropping the iterator early stops them (a worker finishes the batch it is
    /// building, then exits) and waits for them.
    ///
    /// ```
    /// use flint_runtime::data::{DataLoader, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::arange(0.0, 100.0, 1.0, ())]).unwrap();
    /// let loader = DataLoader::new(ds, 10).num_workers(3);
    /// let first: Vec<f32> = loader.epoch(0).next().unwrap().unwrap()[0].to_vec();
    /// assert_eq!(first, (0..10).map(|i| i as f32).collect::<Vec<_>>());
    /// ```
    pub fn epoch(&self, epoch: usize) -> Epoch<C::Batch> {
        let order: Arc<[usize]> = self.order(epoch).into();
        let (dataset, collate) = (Arc::clone(&self.dataset), Arc::clone(&self.collate));
        let fetch: FetchFn<C::Batch> = Arc::new(move |idx: &[usize]| collate.fetch(&*dataset, idx));
        let mut e = Epoch {
            fetch,
            order,
            batch_size: self.batch_size,
            n_batches: self.len(),
            next: 0,
            done: false,
            workers: None,
            pending: None,
        };
        let n = self.num_workers.min(e.n_batches);
        if n > 0 {
            match e.start_workers(n, self.prefetch) {
                Ok(w) => e.workers = Some(w),
                Err(err) => e.pending = Some(err),
            }
        }
        e
    }
}

impl<D: Dataset, C: Collate<D::Item>> IntoIterator for &DataLoader<D, C> {
    type Item = Result<C::Batch>;
    type IntoIter = Epoch<C::Batch>;
    /// The batches of epoch 0 ([`DataLoader::epoch`]).
    fn into_iter(self) -> Epoch<C::Batch> {
        self.epoch(0)
    }
}

/// The batches of one epoch of a [`DataLoader`], from [`DataLoader::epoch`].
///
/// Yields `Ok(batch)` for each batch in order; the first error (a failing
/// [`Dataset::get`], a panic in a worker as an [`Error::DataLoader`]) is yielded in its
/// batch's place and ends the epoch. Dropping it stops the epoch's workers.
///
/// ```
/// use flint_runtime::data::{DataLoader, TensorDataset};
/// use flint_runtime::Tensor;
/// let ds = TensorDataset::new(vec![Tensor::zeros([10], ())]).unwrap();
/// let loader = DataLoader::new(ds, 4).num_workers(2);
/// let mut it = loader.epoch(0);
/// assert_eq!(it.remaining(), 3);
/// assert!(it.next().unwrap().is_ok());
/// assert_eq!(it.remaining(), 2);
/// drop(it); // the workers stop
/// ```
pub struct Epoch<B> {
    fetch: FetchFn<B>,
    order: Arc<[usize]>,
    batch_size: usize,
    n_batches: usize,
    next: usize,
    done: bool,
    workers: Option<Workers<B>>,
    /// An error to yield first (workers that could not be started).
    pending: Option<Error>,
}

struct Workers<B> {
    queues: Vec<Receiver<Result<B>>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// The item positions of batch `b` within the epoch's order.
fn batch_range(b: usize, batch_size: usize, n_items: usize) -> Range<usize> {
    b * batch_size..((b + 1) * batch_size).min(n_items)
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not a string)".to_string()
    }
}

impl<B: Send + 'static> Epoch<B> {
    fn start_workers(&self, n: usize, prefetch: usize) -> Result<Workers<B>> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut w = Workers {
            queues: Vec::with_capacity(n),
            handles: Vec::with_capacity(n),
            stop: Arc::clone(&stop),
        };
        for id in 0..n {
            let (tx, rx) = sync_channel::<Result<B>>(prefetch);
            let (fetch, order, stop) = (
                Arc::clone(&self.fetch),
                Arc::clone(&self.order),
                Arc::clone(&stop),
            );
            let (bs, n_batches) = (self.batch_size, self.n_batches);
            let work = move || {
                for b in (id..n_batches).step_by(n) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let idx = &order[batch_range(b, bs, order.len())];
                    let r = catch_unwind(AssertUnwindSafe(|| fetch(idx))).unwrap_or_else(|p| {
                        Err(Error::DataLoader(format!(
                            "worker {id} panicked while building batch {b}: {}",
                            panic_message(&*p)
                        )))
                    });
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        break;
                    }
                }
            };
            let spawned = std::thread::Builder::new()
                .name(format!("flint-data-{id}"))
                .spawn(work);
            match spawned {
                Ok(h) => {
                    w.queues.push(rx);
                    w.handles.push(h);
                }
                Err(e) => {
                    // `w` is dropped here, which stops and joins the workers started so far
                    return Err(Error::DataLoader(format!(
                        "could not start worker thread {id}: {e}"
                    )));
                }
            }
        }
        Ok(w)
    }
}

impl<B> Epoch<B> {
    /// The number of batches not yet yielded (fewer come if an error ends the epoch).
    ///
    /// ```
    /// use flint_runtime::data::{DataLoader, TensorDataset};
    /// use flint_runtime::Tensor;
    /// let ds = TensorDataset::new(vec![Tensor::zeros([5], ())]).unwrap();
    /// let loader = DataLoader::new(ds, 2);
    /// let mut it = loader.epoch(0);
    /// it.next();
    /// assert_eq!(it.remaining(), 2);
    /// ```
    pub fn remaining(&self) -> usize {
        if self.done {
            0
        } else {
            self.n_batches - self.next
        }
    }

    /// Ends the epoch: stops the workers and waits for them.
    fn finish(&mut self) {
        self.done = true;
        if let Some(w) = self.workers.take() {
            drop(w);
        }
    }
}

impl<B> Drop for Workers<B> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // a worker blocked on a full queue wakes up with an error and exits
        self.queues.clear();
        for h in self.handles.drain(..) {
            // a worker catches panics from the dataset, so a join error is impossible
            // in practice; there is nothing left to report it to anyway
            let _ = h.join();
        }
    }
}

impl<B> Iterator for Epoch<B> {
    type Item = Result<B>;

    fn next(&mut self) -> Option<Result<B>> {
        if self.done || self.next >= self.n_batches {
            self.finish();
            return None;
        }
        if let Some(e) = self.pending.take() {
            self.finish();
            return Some(Err(e));
        }
        let b = self.next;
        let r = match &self.workers {
            None => {
                let idx = &self.order[batch_range(b, self.batch_size, self.order.len())];
                (self.fetch)(idx)
            }
            Some(w) => {
                let id = b % w.queues.len();
                w.queues[id].recv().unwrap_or_else(|_| {
                    Err(Error::DataLoader(format!(
                        "worker {id} stopped before sending batch {b}"
                    )))
                })
            }
        };
        self.next += 1;
        if r.is_err() {
            self.finish();
        }
        Some(r)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.remaining();
        (n.min(1), Some(n))
    }
}

impl<B> FusedIterator for Epoch<B> {}

impl<B> fmt::Debug for Epoch<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Epoch")
            .field("batches", &self.n_batches)
            .field("next", &self.next)
            .field("done", &self.done)
            .field(
                "workers",
                &self.workers.as_ref().map_or(0, |w| w.handles.len()),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{check_index, Subset, TensorDataset};
    use crate::tensor::Tensor;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Item `i` is the scalar `i` (i64); it can sleep a little (so that workers finish
    /// out of order), fail or panic at a given index, and counts its calls.
    #[derive(Default)]
    struct Probe {
        n: usize,
        sleep: bool,
        fail_at: Option<usize>,
        panic_at: Option<usize>,
        calls: Arc<AtomicUsize>,
    }

    impl Dataset for Probe {
        type Item = Tensor;
        fn len(&self) -> usize {
            self.n
        }
        fn get(&self, i: usize) -> Result<Tensor> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            check_index("Probe", i, self.n)?;
            if self.sleep {
                std::thread::sleep(Duration::from_micros(((i * 7919) % 5) as u64 * 200));
            }
            if self.fail_at == Some(i) {
                return Err(Error::data("probe.csv", Some(i + 1), "bad record"));
            }
            if self.panic_at == Some(i) {
                panic!("probe panic at item {i}");
            }
            Ok(Tensor::scalar(i as i64))
        }
    }

    fn probe(n: usize) -> Probe {
        Probe {
            n,
            ..Probe::default()
        }
    }

    /// Each batch's items.
    fn run<D: Dataset<Item = Tensor>>(loader: &DataLoader<D>, epoch: usize) -> Vec<Vec<i64>> {
        loader
            .epoch(epoch)
            .map(|b| b.unwrap().to_vec::<i64>())
            .collect()
    }

    #[test]
    fn batch_counts_and_sizes() {
        for (n, bs, keep, drop) in [
            (10, 4, 3, 2),
            (8, 4, 2, 2),
            (3, 4, 1, 0),
            (0, 4, 0, 0),
            (7, 1, 7, 7),
        ] {
            let l = DataLoader::new(probe(n), bs);
            assert_eq!(l.len(), keep, "n={n} bs={bs}");
            let sizes: Vec<usize> = run(&l, 0).iter().map(Vec::len).collect();
            assert_eq!(sizes.len(), keep);
            assert_eq!(sizes.iter().sum::<usize>(), n);
            let l = l.drop_last(true);
            assert_eq!(l.len(), drop, "n={n} bs={bs} drop_last");
            assert_eq!(l.is_empty(), drop == 0);
            let b = run(&l, 0);
            assert_eq!(b.len(), drop);
            assert!(b.iter().all(|b| b.len() == bs));
        }
        let l = DataLoader::new(probe(10), 4);
        assert_eq!(
            run(&l, 5),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
        );
        // `for batch in &loader` is epoch 0
        let mut seen = 0;
        for b in &l {
            seen += b.unwrap().numel();
        }
        assert_eq!(seen, 10);
        assert_eq!(
            DataLoader::try_new(probe(3), 0).unwrap_err().to_string(),
            "DataLoader: batch_size must be at least 1, got 0"
        );
    }

    #[test]
    #[should_panic(expected = "DataLoader: batch_size must be at least 1, got 0")]
    fn zero_batch_size_panics_in_new() {
        let _ = DataLoader::new(probe(3), 0);
    }

    #[test]
    fn shuffling_is_a_function_of_seed_and_epoch() {
        let l = DataLoader::new(probe(50), 8).shuffle(11);
        let e0 = run(&l, 0);
        let e1 = run(&l, 1);
        assert_eq!(e0, run(&l, 0));
        assert_eq!(e1, run(&DataLoader::new(probe(50), 8).shuffle(11), 1)); // a fresh loader: resumable
        assert_ne!(e0, e1);
        assert_ne!(e0, run(&DataLoader::new(probe(50), 8).shuffle(12), 0));
        for e in [&e0, &e1] {
            let mut all: Vec<i64> = e.concat();
            assert_ne!(all, (0..50).collect::<Vec<_>>()); // shuffled ...
            all.sort();
            assert_eq!(all, (0..50).collect::<Vec<_>>()); // ... a permutation
        }
        // epoch e's order is the e-th permutation one generator draws
        let mut g = Generator::new(11);
        for e in 0..3 {
            let p: Vec<usize> = g
                .randperm(50)
                .to_vec::<i64>()
                .iter()
                .map(|&i| i as usize)
                .collect();
            assert_eq!(l.order(e), p);
        }
        assert_eq!(
            e0.concat(),
            l.order(0).iter().map(|&i| i as i64).collect::<Vec<_>>()
        );
        // drop_last leaves out the tail of the permuted order
        let d = DataLoader::new(probe(50), 8).shuffle(11).drop_last(true);
        assert_eq!(run(&d, 1).concat(), e1.concat()[..48].to_vec());
    }

    #[test]
    fn workers_deliver_the_serial_order() {
        let ds = Arc::new(Probe {
            n: 103,
            sleep: true,
            ..Probe::default()
        });
        for (shuffle, drop_last) in [(None, false), (Some(5), false), (Some(5), true)] {
            let mut base = DataLoader::new(Arc::clone(&ds), 7).drop_last(drop_last);
            if let Some(s) = shuffle {
                base = base.shuffle(s);
            }
            for epoch in 0..2 {
                let want = run(&base, epoch);
                assert_eq!(want.len(), base.len());
                for workers in [1, 2, 3, 40] {
                    for prefetch in [0, 2] {
                        let l = base.clone().num_workers(workers).prefetch(prefetch);
                        assert_eq!(
                            run(&l, epoch),
                            want,
                            "shuffle {shuffle:?} drop_last {drop_last} epoch {epoch} workers {workers} prefetch {prefetch}"
                        );
                    }
                }
            }
        }
        // with a TensorDataset (the fast path) and a subset of it
        let x = Tensor::arange(0.0, 60.0, 1.0, ()).view([30, 2]);
        let sub = Subset::new(
            TensorDataset::new(vec![x]).unwrap(),
            (0..30).rev().collect(),
        )
        .unwrap();
        let l = DataLoader::new(sub, 4).shuffle(2);
        let serial: Vec<Vec<f32>> = l.epoch(3).map(|b| b.unwrap()[0].to_vec()).collect();
        let threaded: Vec<Vec<f32>> = l
            .clone()
            .num_workers(3)
            .epoch(3)
            .map(|b| b.unwrap()[0].to_vec())
            .collect();
        assert_eq!(serial, threaded);
        assert_eq!(serial.len(), 8);
    }

    #[test]
    fn an_error_arrives_in_place_and_ends_the_epoch() {
        // item 22 fails: batch 22 / 5 = 4 is the error, batches 0..4 come first
        let ds = Arc::new(Probe {
            n: 50,
            sleep: true,
            fail_at: Some(22),
            ..Probe::default()
        });
        for workers in [0, 1, 2, 3, 8] {
            let l = DataLoader::new(Arc::clone(&ds), 5).num_workers(workers);
            let mut it = l.epoch(0);
            for b in 0..4 {
                let batch = it.next().unwrap().unwrap();
                assert_eq!(batch.to_vec::<i64>()[0], 5 * b, "workers {workers}");
            }
            let e = it.next().unwrap().unwrap_err();
            assert!(matches!(e, Error::Data { .. }), "{e:?}");
            assert_eq!(e.to_string(), "probe.csv:23: bad record");
            assert!(it.next().is_none(), "workers {workers}");
            assert!(it.next().is_none());
            assert_eq!(it.remaining(), 0);
        }
    }

    #[test]
    fn a_panicking_worker_becomes_an_error() {
        let ds = Arc::new(Probe {
            n: 40,
            panic_at: Some(13),
            ..Probe::default()
        });
        for workers in [1, 2, 4] {
            let l = DataLoader::new(Arc::clone(&ds), 4).num_workers(workers);
            let items: Vec<Result<Tensor>> = l.epoch(0).collect();
            // batches 0, 1, 2 fine; batch 3 (items 12..16) panicked; nothing after
            assert_eq!(items.len(), 4, "workers {workers}");
            assert!(items[..3].iter().all(|r| r.is_ok()));
            let e = items[3].as_ref().unwrap_err();
            assert!(matches!(e, Error::DataLoader(_)), "{e:?}");
            let w = 3 % workers;
            assert_eq!(
                e.to_string(),
                format!("DataLoader: worker {w} panicked while building batch 3: probe panic at item 13")
            );
        }
    }

    #[test]
    fn dropping_an_epoch_early_stops_the_workers() {
        let calls = Arc::new(AtomicUsize::new(0));
        let ds = Arc::new(Probe {
            n: 10_000,
            sleep: true,
            calls: Arc::clone(&calls),
            ..Probe::default()
        });
        let l = DataLoader::new(ds, 2).num_workers(4).prefetch(1);
        let mut it = l.epoch(0);
        assert_eq!(it.next().unwrap().unwrap().to_vec::<i64>(), vec![0, 1]);
        assert_eq!(it.next().unwrap().unwrap().to_vec::<i64>(), vec![2, 3]);
        drop(it); // joins the workers: returns, no deadlock
        let after = calls.load(Ordering::SeqCst);
        // each worker holds at most 1 queued batch + 1 being sent + 1 being built
        assert!(after <= 2 * (2 + 4 * 3), "{after} items read");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(calls.load(Ordering::SeqCst), after, "a worker kept reading");
        // dropping before the first batch, and with rendezvous queues
        for prefetch in [0, 3] {
            let it = l.clone().prefetch(prefetch).epoch(1);
            std::thread::sleep(Duration::from_millis(5));
            drop(it);
        }
        // a fresh epoch after all that works normally
        let n: usize = DataLoader::new(probe(9), 2)
            .num_workers(3)
            .epoch(0)
            .map(|b| b.unwrap().numel())
            .sum();
        assert_eq!(n, 9);
    }

    #[test]
    fn custom_collate_with_workers() {
        let sum =
            |items: Vec<Tensor>| -> Result<i64> { Ok(items.iter().map(|t| t.item::<i64>()).sum()) };
        let l = DataLoader::with_collate(probe(10), 3, sum).num_workers(2);
        assert_eq!(
            l.epoch(0).map(|b| b.unwrap()).collect::<Vec<_>>(),
            vec![3, 12, 21, 9]
        );
        assert_eq!(l.batch_size(), 3);
        assert_eq!(l.dataset().len(), 10);
        let dbg = format!("{l:?}");
        assert!(
            dbg.contains("batch_size: 3") && dbg.contains("num_workers: 2"),
            "{dbg}"
        );
        let it = l.epoch(0);
        assert_eq!(it.size_hint(), (1, Some(4)));
    }
}
