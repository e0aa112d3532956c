//! The handwritten digits data (`data/digits/digits.csv.gz` in the repository): 1,797
//! 8×8 images of the digits 0–9, as shipped by scikit-learn.

use super::TensorDataset;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::io::Read;
use std::path::Path;

/// The digits data set (UCI "Optical Recognition of Handwritten Digits", the 1,797
/// samples scikit-learn ships as `load_digits`): 8×8 grey images of the digits 0–9.
///
/// The file is CSV (optionally gzip-compressed; `data/digits/digits.csv.gz` in the
/// repository): one sample per line, 64 integer pixels 0–16 (row-major), then the label
/// 0–9. [`Digits::load`] reads it into two tensors; [`Digits::holdout_split`] makes the
/// train and test datasets.
///
/// ```
/// use flint_runtime::data::{Dataset, Digits};
/// // two samples in memory; Digits::load("data/digits/digits.csv.gz") reads the real file
/// let row = |pixel: u32, label: u32| {
///     let mut v = vec![pixel.to_string(); 64];
///     v.push(label.to_string());
///     v.join(",")
/// };
/// let csv = format!("{}\n{}\n", row(16, 3), row(4, 7));
/// let digits = Digits::from_bytes(csv.as_bytes(), "two.csv").unwrap();
/// assert_eq!(digits.images.shape(), &[2, 64]);
/// assert_eq!(digits.images.to_vec::<f32>()[64], 0.25); // pixel / 16
/// assert_eq!(digits.labels.to_vec::<i64>(), vec![3, 7]);
/// let (train, test) = digits.holdout_split(2).unwrap(); // row 0 to test, row 1 to train
/// assert_eq!((train.len(), test.len()), (1, 1));
/// ```
#[derive(Clone, Debug)]
pub struct Digits {
    /// The images, `[N, 64]` f32: each pixel divided by 16, so in `[0, 1]`.
    pub images: Tensor,
    /// The labels, `[N]` i64 in `0..10`.
    pub labels: Tensor,
}

impl Digits {
    /// Pixels per image (8×8): a model's input size.
    ///
    /// ```
    /// use flint_runtime::data::Digits;
    /// assert_eq!(Digits::FEATURES, 8 * 8);
    /// ```
    pub const FEATURES: usize = 64;
    /// The number of classes (the digits 0–9): a model's output size.
    ///
    /// ```
    /// use flint_runtime::data::Digits;
    /// assert_eq!(Digits::CLASSES, 10);
    /// ```
    pub const CLASSES: usize = 10;
    /// The largest pixel value in the file (images hold `pixel / MAX_PIXEL`).
    ///
    /// ```
    /// use flint_runtime::data::Digits;
    /// assert_eq!(Digits::MAX_PIXEL, 16);
    /// ```
    pub const MAX_PIXEL: i64 = 16;

    /// Reads the digits from the CSV file at `path`, gzip-compressed (recognised by its
    /// magic bytes, whatever the file is called) or plain.
    ///
    /// Errors, never panics: an [`Error::Io`] naming the path when the file cannot be
    /// read; an [`Error::Data`] naming the path and the 1-based line for a line that is
    /// not 65 comma-separated integers, a pixel outside 0–16 or a label outside 0–9, and
    /// naming the path for a corrupt gzip stream or a file without rows. Blank lines are
    /// skipped.
    ///
    /// ```
    /// use flint_runtime::data::Digits;
    /// use flint_runtime::Error;
    /// let e = Digits::load("no/such/digits.csv.gz").unwrap_err();
    /// assert!(matches!(e, Error::Io { .. }));
    /// assert!(e.to_string().starts_with("no/such/digits.csv.gz: "));
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Digits> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Digits::from_bytes(&bytes, path)
    }

    /// Parses the digits from the bytes of a file (gzip or plain CSV); `name` stands for
    /// the file in error messages. See [`Digits::load`].
    ///
    /// ```
    /// use flint_runtime::data::Digits;
    /// let mut line = vec!["0"; 64];
    /// line.push("10");
    /// let e = Digits::from_bytes(line.join(",").as_bytes(), "mine.csv").unwrap_err();
    /// assert_eq!(e.to_string(), "mine.csv:1: column 65: label 10 is outside 0..=9");
    /// ```
    pub fn from_bytes(bytes: &[u8], name: impl AsRef<Path>) -> Result<Digits> {
        let name = name.as_ref();
        let unzipped;
        let text = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(bytes)
                .read_to_end(&mut out)
                .map_err(|e| Error::data(name, None, format!("not a valid gzip file: {e}")))?;
            unzipped = out;
            &unzipped[..]
        } else {
            bytes
        };
        let cols = Self::FEATURES + 1;
        let mut pixels: Vec<f32> = Vec::with_capacity(1797 * Self::FEATURES);
        let mut labels: Vec<i64> = Vec::with_capacity(1797);
        let mut values: Vec<i64> = Vec::with_capacity(cols);
        for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
            let line_no = i + 1;
            let err = |msg: String| Error::data(name, Some(line_no), msg);
            let line = std::str::from_utf8(raw).map_err(|e| {
                err(format!(
                    "not valid UTF-8 (byte {} of the line)",
                    e.valid_up_to() + 1
                ))
            })?;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            values.clear();
            let n_fields = line.split(',').count();
            if n_fields != cols {
                return Err(err(format!(
                    "expected {cols} comma-separated integers ({} pixels, then the label), got {n_fields}",
                    Self::FEATURES
                )));
            }
            for (c, field) in line.split(',').enumerate() {
                let field = field.trim();
                let v: i64 = field.parse().map_err(|_| {
                    err(format!(
                        "column {}: expected an integer, got {field:?}",
                        c + 1
                    ))
                })?;
                values.push(v);
            }
            for (c, &v) in values[..Self::FEATURES].iter().enumerate() {
                if !(0..=Self::MAX_PIXEL).contains(&v) {
                    return Err(err(format!(
                        "column {}: pixel value {v} is outside 0..={}",
                        c + 1,
                        Self::MAX_PIXEL
                    )));
                }
            }
            let label = values[Self::FEATURES];
            if !(0..Self::CLASSES as i64).contains(&label) {
                return Err(err(format!(
                    "column {cols}: label {label} is outside 0..={}",
                    Self::CLASSES - 1
                )));
            }
            pixels.extend(
                values[..Self::FEATURES]
                    .iter()
                    .map(|&v| v as f32 / Self::MAX_PIXEL as f32),
            );
            labels.push(label);
        }
        let n = labels.len();
        if n == 0 {
            return Err(Error::data(name, None, "no data rows"));
        }
        Ok(Digits {
            images: Tensor::try_from_vec(pixels, [n, Self::FEATURES])?,
            labels: Tensor::try_from_vec(labels, [n])?,
        })
    }

    /// The number of samples.
    ///
    /// ```
    /// use flint_runtime::data::Digits;
    /// use flint_runtime::Tensor;
    /// let d = Digits { images: Tensor::zeros([3, 64], ()), labels: Tensor::zeros([3], flint_runtime::DType::I64) };
    /// assert_eq!(d.len(), 3);
    /// ```
    pub fn len(&self) -> usize {
        self.labels.size(0)
    }

    /// Whether there are no samples.
    ///
    /// ```
    /// use flint_runtime::data::Digits;
    /// use flint_runtime::{DType, Tensor};
    /// let d = Digits { images: Tensor::zeros([0, 64], ()), labels: Tensor::zeros([0], DType::I64) };
    /// assert!(d.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All samples as a dataset of `[image [64] f32, label [] i64]` items.
    ///
    /// ```
    /// use flint_runtime::data::{Dataset, Digits};
    /// use flint_runtime::{DType, Tensor};
    /// let d = Digits { images: Tensor::zeros([3, 64], ()), labels: Tensor::zeros([3], DType::I64) };
    /// let ds = d.to_dataset().unwrap();
    /// assert_eq!(ds.get(2).unwrap()[0].shape(), &[64]);
    /// ```
    pub fn to_dataset(&self) -> Result<TensorDataset> {
        TensorDataset::new(vec![self.images.clone(), self.labels.clone()])
    }

    /// The usual held-out split: rows whose index `% k == 0` form the test set, the others
    /// the train set (for `k = 5` and the 1,797 digits: 1,437 train, 360 test). Returns
    /// `(train, test)`, each a [`TensorDataset`] of `[image [64] f32, label [] i64]` items
    /// in file order. An error for `k < 2`.
    ///
    /// ```
    /// use flint_runtime::data::{Dataset, Digits};
    /// use flint_runtime::{DType, Tensor};
    /// let d = Digits {
    ///     images: Tensor::zeros([10, 64], ()),
    ///     labels: Tensor::from_vec((0..10i64).collect::<Vec<_>>(), [10]),
    /// };
    /// let (train, test) = d.holdout_split(5).unwrap();
    /// assert_eq!((train.len(), test.len()), (8, 2));
    /// assert_eq!(test.tensors()[1].to_vec::<i64>(), vec![0, 5]);
    /// assert!(d.holdout_split(1).is_err());
    /// ```
    pub fn holdout_split(&self, k: usize) -> Result<(TensorDataset, TensorDataset)> {
        if k < 2 {
            return Err(Error::config(
                "Digits::holdout_split",
                format!("k must be at least 2 (every k-th row is held out), got {k}"),
            ));
        }
        let n = self.len() as i64;
        let k = k as i64;
        let test: Vec<i64> = (0..n).filter(|i| i % k == 0).collect();
        let train: Vec<i64> = (0..n).filter(|i| i % k != 0).collect();
        let rows = |idx: Vec<i64>| -> Result<TensorDataset> {
            let m = idx.len();
            let idx = Tensor::try_from_vec(idx, [m])?;
            TensorDataset::new(vec![
                self.images.try_index_select(0, &idx)?,
                self.labels.try_index_select(0, &idx)?,
            ])
        };
        Ok((rows(train)?, rows(test)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DataLoader, Dataset};
    use std::io::Write;
    use std::path::PathBuf;

    /// `data/digits/digits.csv.gz` from the crate dir (tests run in `runtime/`).
    fn digits_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits/digits.csv.gz")
    }

    /// A unique file in the temp dir with `bytes`, removed on drop.
    struct TempFile(PathBuf);
    impl TempFile {
        fn new(tag: &str, bytes: &[u8]) -> TempFile {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "flint-digits-{}-{}-{tag}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&p, bytes).unwrap();
            TempFile(p)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn line(pixel: i64, label: i64) -> String {
        let mut v: Vec<String> = vec![pixel.to_string(); 64];
        v.push(label.to_string());
        v.join(",")
    }

    #[test]
    fn the_bundled_digits() {
        let d = Digits::load(digits_path()).unwrap();
        assert_eq!(d.len(), 1797);
        assert_eq!(d.images.shape(), &[1797, 64]);
        assert_eq!(d.images.dtype(), crate::DType::F32);
        assert_eq!(d.labels.shape(), &[1797]);
        assert_eq!(d.labels.dtype(), crate::DType::I64);
        let px = d.images.to_vec::<f32>();
        let labels = d.labels.to_vec::<i64>();
        // facts from python: `rows = [list(map(int, l.split(','))) for l in
        // gzip.open('data/digits/digits.csv.gz', 'rt').read().splitlines()]`
        assert_eq!(
            &px[..8],
            &[
                0.0,
                0.0,
                5.0 / 16.0,
                13.0 / 16.0,
                9.0 / 16.0,
                1.0 / 16.0,
                0.0,
                0.0
            ]
        );
        let row_sum = |r: usize| {
            px[r * 64..(r + 1) * 64]
                .iter()
                .map(|v| v * 16.0)
                .sum::<f32>()
        };
        assert_eq!(row_sum(0), 294.0); // sum(rows[0][:64])
        assert_eq!(row_sum(1796), 392.0); // sum(rows[-1][:64])
        let total: f64 = px.iter().map(|&v| v as f64 * 16.0).sum();
        assert_eq!(total, 561718.0);
        assert!(px.iter().all(|&v| (0.0..=1.0).contains(&v)));
        assert_eq!(px.iter().cloned().fold(0.0f32, f32::max), 1.0);
        assert_eq!((labels[0], labels[1], labels[1796]), (0, 1, 8));
        let mut counts = [0usize; 10];
        for &l in &labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);

        let (train, test) = d.holdout_split(5).unwrap();
        assert_eq!((train.len(), test.len()), (1437, 360));
        let sum = |ds: &TensorDataset| ds.tensors()[1].to_vec::<i64>().iter().sum::<i64>();
        assert_eq!((sum(&train), sum(&test)), (6426, 1644));
        // test row 1 is file row 5: label 5, pixel sum 342
        let item = test.get(1).unwrap();
        assert_eq!(item[1].item::<i64>(), 5);
        assert_eq!(item[0].sum(-1, false).item::<f32>() * 16.0, 342.0);
        // train row 0 is file row 1
        assert_eq!(train.get(0).unwrap()[1].item::<i64>(), 1);
        assert_eq!(d.to_dataset().unwrap().len(), 1797);
    }

    #[test]
    fn plain_csv_and_gzip_read_alike() {
        let csv = format!("{}\n\n{}\r\n", line(16, 3), line(8, 9));
        let plain = TempFile::new("plain.csv", csv.as_bytes());
        let gz = TempFile::new("data.gz", &gzip(csv.as_bytes()));
        for f in [&plain, &gz] {
            let d = Digits::load(&f.0).unwrap();
            assert_eq!(d.images.shape(), &[2, 64]);
            assert!(d.images.to_vec::<f32>()[..64].iter().all(|&v| v == 1.0));
            assert!(d.images.to_vec::<f32>()[64..].iter().all(|&v| v == 0.5));
            assert_eq!(d.labels.to_vec::<i64>(), vec![3, 9]);
        }
    }

    fn load_err(tag: &str, bytes: &[u8]) -> (String, Error) {
        let f = TempFile::new(tag, bytes);
        let e = Digits::load(&f.0).unwrap_err();
        (f.0.display().to_string(), e)
    }

    #[test]
    fn bad_files_are_errors_with_file_and_line() {
        // a missing file: Io, with the path
        let missing = std::env::temp_dir().join("flint-no-such-digits.csv.gz");
        let e = Digits::load(&missing).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("{}: ", missing.display())),
            "{e}"
        );

        let good = line(1, 1);
        let mut short: Vec<String> = vec!["0".into(); 63];
        short.push("1".into());
        let cases: Vec<(&str, String, String)> = vec![
            (
                "short",
                format!("{good}\n{good}\n{}\n", short.join(",")),
                "3: expected 65 comma-separated integers (64 pixels, then the label), got 64"
                    .into(),
            ),
            (
                "word",
                format!("{good}\n{}\n", good.replacen("1", "x1", 1)),
                "2: column 1: expected an integer, got \"x1\"".into(),
            ),
            (
                "float",
                format!("{}\n", good.replacen("1,1,1", "1,1.5,1", 1)),
                "1: column 2: expected an integer, got \"1.5\"".into(),
            ),
            (
                "pixel",
                format!("{good}\n{}\n", line(17, 2)),
                "2: column 1: pixel value 17 is outside 0..=16".into(),
            ),
            (
                "negative",
                format!("{}\n", line(-1, 2)),
                "1: column 1: pixel value -1 is outside 0..=16".into(),
            ),
            (
                "label",
                format!("{good}\n{good}\n{}\n", line(3, 10)),
                "3: column 65: label 10 is outside 0..=9".into(),
            ),
            ("empty", "\n\n".into(), ": no data rows".into()),
        ];
        for (tag, text, want) in cases {
            let (path, e) = load_err(tag, text.as_bytes());
            assert!(matches!(e, Error::Data { .. }), "{tag}: {e:?}");
            assert_eq!(
                e.to_string(),
                format!("{path}:{want}").replace(":: ", ": "),
                "{tag}"
            );
            // the same inside a gzip file
            let (path, e) = load_err(tag, &gzip(text.as_bytes()));
            assert_eq!(
                e.to_string(),
                format!("{path}:{want}").replace(":: ", ": "),
                "{tag} (gz)"
            );
        }
        // the line number in the error field too
        let (_, e) = load_err("field", format!("{good}\n{}\n", line(3, 11)).as_bytes());
        match e {
            Error::Data { line, .. } => assert_eq!(line, Some(2)),
            other => panic!("{other:?}"),
        }

        // not UTF-8
        let mut bytes = format!("{good}\n").into_bytes();
        bytes.extend_from_slice(&[b'1', 0xff, b'\n']);
        let (path, e) = load_err("utf8", &bytes);
        assert_eq!(
            e.to_string(),
            format!("{path}:2: not valid UTF-8 (byte 2 of the line)")
        );

        // a corrupt gzip file: truncated, and with damaged bytes
        let gz = gzip(format!("{good}\n{good}\n").as_bytes());
        let (path, e) = load_err("truncated", &gz[..gz.len() / 2]);
        assert!(matches!(e, Error::Data { line: None, .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("{path}: not a valid gzip file: ")),
            "{e}"
        );
        let mut bad = gz.clone();
        let mid = bad.len() / 2;
        for b in &mut bad[mid..mid + 4] {
            *b ^= 0x5a;
        }
        let (path, e) = load_err("damaged", &bad);
        assert!(
            e.to_string()
                .starts_with(&format!("{path}: not a valid gzip file: ")),
            "{e}"
        );
        let (_, e) = load_err("header-only", &[0x1f, 0x8b, 8]);
        assert!(e.to_string().contains("not a valid gzip file"), "{e}");
    }

    #[test]
    fn holdout_split_rejects_small_k() {
        let d = Digits::from_bytes(line(0, 0).as_bytes(), "x").unwrap();
        assert_eq!(
            d.holdout_split(0).unwrap_err().to_string(),
            "Digits::holdout_split: k must be at least 2 (every k-th row is held out), got 0"
        );
        assert!(d.holdout_split(1).is_err());
    }

    /// Times one epoch of the digits train set in batches of 32 (the `digits` example's
    /// loop without the model): the TensorDataset fast path against stacking rows one by
    /// one. Printed, not asserted; run with `--nocapture`.
    #[test]
    fn epoch_timing() {
        let d = Digits::load(digits_path()).unwrap();
        let (train, _) = d.holdout_split(5).unwrap();
        let train = std::sync::Arc::new(train);
        let time = |label: &str, f: &dyn Fn() -> usize| {
            let _ = f(); // warm up
            let t = std::time::Instant::now();
            let reps = 10;
            let mut rows = 0;
            for _ in 0..reps {
                rows += f();
            }
            let per = t.elapsed().as_secs_f64() / reps as f64;
            assert_eq!(rows, 1437 * reps);
            println!(
                "digits epoch (1437 rows, batch 32) {label}: {:.3} ms",
                per * 1e3
            );
        };
        let loader = DataLoader::new(std::sync::Arc::clone(&train), 32).shuffle(0);
        time("TensorDataset fast path", &|| {
            loader.epoch(1).map(|b| b.unwrap()[0].size(0)).sum()
        });
        let workers = loader.clone().num_workers(2);
        time("fast path, 2 workers", &|| {
            workers.epoch(1).map(|b| b.unwrap()[0].size(0)).sum()
        });
        // the slow path: row views, then a stack per batch
        let slow = DataLoader::with_collate(
            std::sync::Arc::clone(&train),
            32,
            |items: Vec<Vec<Tensor>>| crate::data::Collate::collate(&crate::data::Stack, items),
        )
        .shuffle(0);
        time("per-row views + stack", &|| {
            slow.epoch(1).map(|b| b.unwrap()[0].size(0)).sum()
        });
        let (a, b) = (
            loader.epoch(3).next().unwrap().unwrap(),
            slow.epoch(3).next().unwrap().unwrap(),
        );
        assert_eq!(a[0].to_vec::<f32>(), b[0].to_vec::<f32>());
        assert_eq!(a[1].to_vec::<i64>(), b[1].to_vec::<i64>());
    }
}
