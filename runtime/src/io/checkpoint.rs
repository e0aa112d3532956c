//! safetensors files: named tensors with their dtypes and shapes, written atomically,
//! read with every failure an [`Error`] naming the file.

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::fmt_shape;
use crate::tensor::Tensor;
use half::{bf16, f16};
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensorError, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The key safetensors reserves in the header for free-form string metadata.
const METADATA_KEY: &str = "__metadata__";

/// The free-form string metadata of a safetensors file (its `__metadata__` entry).
pub type Metadata = BTreeMap<String, String>;

/// A safetensors file starts with the header's length as a little-endian `u64`.
const LEN_BYTES: usize = 8;

/// Writes named tensors to a safetensors file at `path`.
///
/// Every dtype of Flint is written as its safetensors counterpart (`F64`, `F32`, `F16`,
/// `BF16`, `I64`, `BOOL`); shapes are kept, including 0-d scalars and empty tensors;
/// strided views are written in row-major order, and tensors on another device are copied
/// to the CPU first. Whether a tensor requires gradients is not stored.
///
/// The write is atomic: the bytes go to a hidden temporary file in the same directory
/// (`.NAME.tmp-PID-N`), which is flushed to disk and then renamed over `path`. If anything
/// fails, the temporary file is removed and a file already at `path` is left as it was.
///
/// Errors: [`Error::Checkpoint`] for two tensors with one name or a tensor named
/// `__metadata__` (reserved by the format); [`Error::Io`] naming `path` when the file
/// cannot be written (a missing directory, no permission, a full disk).
///
/// ```
/// use flint_runtime::io::{load_tensors, save_tensors};
/// use flint_runtime::{DType, Tensor};
/// let path = std::env::temp_dir().join(format!("flint-save-doc-{}.safetensors", std::process::id()));
/// let mask = Tensor::from_vec(vec![true, false, true], [3]);
/// let half = Tensor::ones([2, 2], DType::BF16);
/// save_tensors(&path, &[("mask".into(), mask), ("half".into(), half)]).unwrap();
/// let back = load_tensors(&path).unwrap();
/// assert_eq!(back[0].0, "half");
/// assert_eq!(back[0].1.dtype(), DType::BF16);
/// assert_eq!(back[1].1.to_vec::<bool>(), vec![true, false, true]);
///
/// let err = save_tensors("/no/such/dir/x.safetensors", &back).unwrap_err();
/// assert!(err.to_string().starts_with("/no/such/dir/x.safetensors: "));
/// std::fs::remove_file(&path).unwrap();
/// ```
pub fn save_tensors(path: impl AsRef<Path>, tensors: &[(String, Tensor)]) -> Result<()> {
    save_tensors_with_metadata(path, tensors, &BTreeMap::new())
}

/// [`save_tensors`] with a map of strings stored in the header (the format's
/// `__metadata__`, e.g. `{"format": "pt"}` as PyTorch writes it, or a training step);
/// [`load_tensors_with_metadata`] reads it back.
///
/// ```
/// use flint_runtime::io::{load_tensors_with_metadata, save_tensors_with_metadata};
/// use flint_runtime::Tensor;
/// use std::collections::BTreeMap;
/// let path = std::env::temp_dir().join(format!("flint-meta-doc-{}.safetensors", std::process::id()));
/// let meta = BTreeMap::from([("step".to_string(), "1200".to_string())]);
/// save_tensors_with_metadata(&path, &[("w".into(), Tensor::zeros([2], ()))], &meta).unwrap();
/// let (tensors, back) = load_tensors_with_metadata(&path).unwrap();
/// assert_eq!(back["step"], "1200");
/// assert_eq!(tensors[0].1.shape(), &[2]);
/// std::fs::remove_file(&path).unwrap();
/// ```
pub fn save_tensors_with_metadata(
    path: impl AsRef<Path>,
    tensors: &[(String, Tensor)],
    metadata: &Metadata,
) -> Result<()> {
    let path = path.as_ref();
    let bytes = encode(path, tensors, metadata)?;
    write_atomic(path, &bytes)
}

/// Reads every tensor of a safetensors file, sorted by name.
///
/// The dtypes Flint has load as themselves; the integer types it lacks and that widen
/// without loss (`I32`, `I16`, `I8`, `U32`, `U16`, `U8`) load as `I64`. The tensors are
/// new CPU tensors that do not require gradients.
///
/// Never panics on a bad file. Errors: [`Error::Io`] naming `path` when it cannot be
/// read (missing, a directory, no permission); [`Error::Checkpoint`] naming `path` when
/// it is not a well-formed safetensors file — truncated, trailing bytes, a corrupt or
/// non-JSON header, a tensor whose byte length does not match its dtype and shape
/// (naming the tensor), or a dtype Flint cannot hold (`U64`, `C64`, the 8-bit and
/// smaller floats).
///
/// ```
/// use flint_runtime::io::load_tensors;
/// use flint_runtime::Error;
/// let path = std::env::temp_dir().join(format!("flint-load-doc-{}.safetensors", std::process::id()));
/// std::fs::write(&path, b"not a checkpoint").unwrap();
/// let err = load_tensors(&path).unwrap_err();
/// assert!(matches!(err, Error::Checkpoint { .. }));
/// assert!(err.to_string().contains("not a safetensors file"));
/// std::fs::remove_file(&path).unwrap();
/// assert!(matches!(load_tensors(&path).unwrap_err(), Error::Io { .. }));
/// ```
pub fn load_tensors(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    Ok(load_tensors_with_metadata(path)?.0)
}

/// [`load_tensors`] and the header's string metadata (empty when the file has none).
///
/// ```
/// use flint_runtime::io::{load_tensors_with_metadata, save_tensors};
/// use flint_runtime::Tensor;
/// let path = std::env::temp_dir().join(format!("flint-nometa-doc-{}.safetensors", std::process::id()));
/// save_tensors(&path, &[("x".into(), Tensor::scalar(1.5f64))]).unwrap();
/// let (tensors, meta) = load_tensors_with_metadata(&path).unwrap();
/// assert!(meta.is_empty());
/// assert_eq!(tensors[0].1.item::<f64>(), 1.5);
/// std::fs::remove_file(&path).unwrap();
/// ```
pub fn load_tensors_with_metadata(
    path: impl AsRef<Path>,
) -> Result<(Vec<(String, Tensor)>, Metadata)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes).map_err(|msg| Error::checkpoint(path, msg))
}

// ---------------------------------------------------------------------------------------
// Writing

/// One tensor's bytes, ready for the serializer.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn le_bytes<T, const N: usize>(values: Vec<T>, f: fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * N);
    for v in values {
        out.extend_from_slice(&f(v));
    }
    out
}

/// The tensor's elements in row-major order as little-endian bytes (safetensors' layout).
fn to_raw(t: &Tensor) -> Result<Raw> {
    let t = t.try_to(Device::Cpu)?;
    let (dtype, data) = match t.dtype() {
        DType::Bool => (
            Dtype::BOOL,
            t.try_to_vec::<bool>()?.into_iter().map(u8::from).collect(),
        ),
        DType::I64 => (
            Dtype::I64,
            le_bytes(t.try_to_vec::<i64>()?, i64::to_le_bytes),
        ),
        DType::F16 => (
            Dtype::F16,
            le_bytes(t.try_to_vec::<f16>()?, f16::to_le_bytes),
        ),
        DType::BF16 => (
            Dtype::BF16,
            le_bytes(t.try_to_vec::<bf16>()?, bf16::to_le_bytes),
        ),
        DType::F32 => (
            Dtype::F32,
            le_bytes(t.try_to_vec::<f32>()?, f32::to_le_bytes),
        ),
        DType::F64 => (
            Dtype::F64,
            le_bytes(t.try_to_vec::<f64>()?, f64::to_le_bytes),
        ),
    };
    Ok(Raw {
        dtype,
        shape: t.shape().to_vec(),
        data,
    })
}

fn encode(path: &Path, tensors: &[(String, Tensor)], metadata: &Metadata) -> Result<Vec<u8>> {
    let mut seen = BTreeSet::new();
    let mut raws = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if name == METADATA_KEY {
            return Err(Error::checkpoint(
                path,
                format!("`{METADATA_KEY}` is reserved by the safetensors format and cannot name a tensor"),
            ));
        }
        if !seen.insert(name.as_str()) {
            return Err(Error::checkpoint(
                path,
                format!("two tensors are named `{name}`"),
            ));
        }
        raws.push((name.as_str(), to_raw(t)?));
    }
    let info = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>()
    });
    safetensors::serialize(raws.iter().map(|(n, r)| (*n, r)), info)
        .map_err(|e| Error::checkpoint(path, format!("cannot encode the tensors: {e}")))
}

/// Distinguishes the temporary files of concurrent saves within one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The hidden temporary file a save of `path` writes first, in `path`'s directory (so
/// the final rename stays within one file system).
fn temp_path(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::checkpoint(path, "the path does not name a file"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok((dir, tmp))
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename; on failure the
/// temporary file is removed and `path` is untouched.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let (dir, tmp) = temp_path(path)?;
    let written = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // Best effort: the file may not exist (the open failed).
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    // Make the rename itself durable. Not every platform can open a directory, and the
    // data is already safe in the file, so this is best effort.
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reading

/// Parses a whole file; the error is a message without the path.
fn decode(bytes: &[u8]) -> Result<(Vec<(String, Tensor)>, Metadata), String> {
    let (header_len, meta) = SafeTensors::read_metadata(bytes).map_err(|e| explain(bytes, &e))?;
    let data = header_len
        .checked_add(LEN_BYTES)
        .and_then(|start| bytes.get(start..))
        .ok_or_else(|| "the header runs past the end of the file".to_string())?;
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        let (start, end) = info.data_offsets;
        let raw = data.get(start..end).ok_or_else(|| {
            format!("tensor `{name}`: data offsets [{start}, {end}) lie outside the file")
        })?;
        let t = from_bytes(&name, info.dtype, &info.shape, raw)?;
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok((out, metadata))
}

fn from_le<T, const N: usize>(raw: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}

fn widen<T: Into<i64>, const N: usize>(raw: &[u8], f: fn([u8; N]) -> T) -> Vec<i64> {
    raw.chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a).into()
        })
        .collect()
}

/// The bytes a tensor of `dtype` and `shape` takes, if it is a whole number that fits.
fn byte_len(dtype: Dtype, shape: &[usize]) -> Option<usize> {
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    let bits = numel.checked_mul(dtype.bitsize())?;
    (bits % 8 == 0).then_some(bits / 8)
}

fn from_bytes(
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    raw: &[u8],
) -> std::result::Result<Tensor, String> {
    let want = byte_len(dtype, shape);
    if want != Some(raw.len()) {
        return Err(size_mismatch(name, dtype, shape, raw.len(), want));
    }
    let t = match dtype {
        Dtype::F64 => Tensor::try_from_vec(from_le(raw, f64::from_le_bytes), shape),
        Dtype::F32 => Tensor::try_from_vec(from_le(raw, f32::from_le_bytes), shape),
        Dtype::F16 => Tensor::try_from_vec(from_le(raw, f16::from_le_bytes), shape),
        Dtype::BF16 => Tensor::try_from_vec(from_le(raw, bf16::from_le_bytes), shape),
        Dtype::I64 => Tensor::try_from_vec(from_le(raw, i64::from_le_bytes), shape),
        Dtype::I32 => Tensor::try_from_vec(widen(raw, i32::from_le_bytes), shape),
        Dtype::I16 => Tensor::try_from_vec(widen(raw, i16::from_le_bytes), shape),
        Dtype::I8 => Tensor::try_from_vec(widen(raw, i8::from_le_bytes), shape),
        Dtype::U32 => Tensor::try_from_vec(widen(raw, u32::from_le_bytes), shape),
        Dtype::U16 => Tensor::try_from_vec(widen(raw, u16::from_le_bytes), shape),
        Dtype::U8 => Tensor::try_from_vec(widen(raw, u8::from_le_bytes), shape),
        Dtype::BOOL => {
            if let Some(i) = raw.iter().position(|&b| b > 1) {
                return Err(format!(
                    "tensor `{name}`: BOOL element {i} is the byte {}, not 0 or 1",
                    raw[i]
                ));
            }
            Tensor::try_from_vec(raw.iter().map(|&b| b == 1).collect::<Vec<bool>>(), shape)
        }
        other => {
            return Err(format!(
                "tensor `{name}` has dtype {other}, which Flint cannot hold (it reads F64, F32, F16, BF16, I64 and BOOL, and widens I32, I16, I8, U32, U16 and U8 to I64)"
            ))
        }
    };
    t.map_err(|e| format!("tensor `{name}`: {e}"))
}

fn size_mismatch(
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    have: usize,
    want: Option<usize>,
) -> String {
    match want {
        Some(w) => format!(
            "tensor `{name}` ({dtype}, shape {}) has {have} bytes of data but its dtype and shape need {w}",
            fmt_shape(shape)
        ),
        None => format!(
            "tensor `{name}` ({dtype}, shape {}) has a size that is not a whole number of bytes or does not fit in memory",
            fmt_shape(shape)
        ),
    }
}

/// The tensor table of a header that the safetensors crate rejected, read leniently to
/// say which entry is wrong (`None` when even that fails).
fn header_table(bytes: &[u8]) -> Option<Vec<(String, TensorInfo)>> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..LEN_BYTES)?.try_into().ok()?)).ok()?;
    let header = std::str::from_utf8(bytes.get(LEN_BYTES..LEN_BYTES.checked_add(n)?)?).ok()?;
    let table: serde_json::Map<String, serde_json::Value> = serde_json::from_str(header).ok()?;
    let mut out: Vec<(String, TensorInfo)> = table
        .into_iter()
        .filter(|(k, _)| k != METADATA_KEY)
        .filter_map(|(k, v)| Some((k, serde_json::from_value(v).ok()?)))
        .collect();
    out.sort_by_key(|(_, info)| info.data_offsets);
    Some(out)
}

/// A message for an error of the safetensors crate, with the numbers from the file.
fn explain(bytes: &[u8], e: &SafeTensorError) -> String {
    let declared = bytes
        .get(..LEN_BYTES)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes);
    let after = bytes.len().saturating_sub(LEN_BYTES);
    match e {
        SafeTensorError::HeaderTooSmall => format!(
            "{} bytes is too short for a safetensors file (it starts with an 8-byte header length): truncated or not a safetensors file",
            bytes.len()
        ),
        SafeTensorError::HeaderTooLarge => format!(
            "the header length field says {} bytes, more than the format's limit of 100 MB: corrupt or not a safetensors file",
            declared.unwrap_or(0)
        ),
        SafeTensorError::InvalidHeaderLength => format!(
            "the header length field says {} bytes but only {after} follow it: truncated or not a safetensors file",
            declared.unwrap_or(0)
        ),
        SafeTensorError::InvalidHeader(u) => {
            format!("the header is not UTF-8 ({u}): corrupt or not a safetensors file")
        }
        SafeTensorError::InvalidHeaderDeserialization(j) => format!(
            "the header is not a valid safetensors table ({j}): corrupt or not a safetensors file"
        ),
        SafeTensorError::InvalidOffset(name) => format!(
            "tensor `{name}`: its data offsets do not start where the previous tensor's end (corrupt header)"
        ),
        SafeTensorError::TensorInvalidInfo | SafeTensorError::ValidationOverflow => header_table(bytes)
            .and_then(|table| {
                table.into_iter().find_map(|(name, info)| {
                    let have = info.data_offsets.1.saturating_sub(info.data_offsets.0);
                    let want = byte_len(info.dtype, &info.shape);
                    (want != Some(have))
                        .then(|| size_mismatch(&name, info.dtype, &info.shape, have, want))
                })
            })
            .unwrap_or_else(|| {
                "a tensor's byte length does not match its dtype and shape (corrupt header)".into()
            }),
        SafeTensorError::MetadataIncompleteBuffer => {
            let header = declared
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0);
            let have = after.saturating_sub(header);
            let want = header_table(bytes)
                .and_then(|t| t.last().map(|(_, info)| info.data_offsets.1))
                .unwrap_or(0);
            let why = if have < want {
                "truncated"
            } else {
                "trailing bytes after the last tensor"
            };
            format!("the header describes {want} bytes of tensor data but {have} follow it: {why}")
        }
        SafeTensorError::MisalignedSlice => {
            "a tensor of a sub-byte dtype does not fill whole bytes (corrupt header)".into()
        }
        other => format!("not a valid safetensors file: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tmp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "flint-io-{tag}-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The bytes of a safetensors file with this header JSON and data, built by hand.
    fn file_bytes(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn load_bytes(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
        decode(bytes)
            .map(|(t, _)| t)
            .map_err(|msg| Error::checkpoint("mem.safetensors", msg))
    }

    fn err_msg(bytes: &[u8]) -> String {
        match load_bytes(bytes) {
            Err(Error::Checkpoint { msg, .. }) => msg,
            Err(e) => panic!("expected a checkpoint error, got {e}"),
            Ok(_) => panic!("expected an error"),
        }
    }

    fn sample() -> Vec<(String, Tensor)> {
        vec![
            (
                "f32".into(),
                Tensor::from_vec(vec![1.5f32, -2.0, f32::MAX, f32::MIN_POSITIVE], [2, 2]),
            ),
            (
                "f64".into(),
                Tensor::from_vec(vec![std::f64::consts::PI, -0.0, 1e-300], [3]),
            ),
            (
                "f16".into(),
                Tensor::from_vec(vec![f16::from_f32(0.5), f16::MAX, f16::MIN], [3, 1]),
            ),
            (
                "bf16".into(),
                Tensor::from_vec(vec![bf16::from_f32(-3.25), bf16::EPSILON], [1, 2]),
            ),
            (
                "i64".into(),
                Tensor::from_vec(vec![i64::MIN, -1, 0, i64::MAX], [2, 1, 2]),
            ),
            (
                "bool".into(),
                Tensor::from_vec(vec![true, false, false, true, true, false], [2, 3]),
            ),
            ("scalar".into(), Tensor::scalar(42i64)),
            ("empty".into(), Tensor::zeros([0, 3], ())),
        ]
    }

    fn assert_same(a: &Tensor, b: &Tensor) {
        assert_eq!(a.dtype(), b.dtype());
        assert_eq!(a.shape(), b.shape());
        // Bit-identical through the byte encoding.
        let a_raw = to_raw(a).unwrap();
        let b_raw = to_raw(b).unwrap();
        assert_eq!(a_raw.data, b_raw.data);
    }

    #[test]
    fn round_trip_every_dtype_bit_identical() {
        let dir = tmp_dir("rt");
        let path = dir.join("all.safetensors");
        let tensors = sample();
        save_tensors(&path, &tensors).unwrap();
        let back = load_tensors(&path).unwrap();
        let mut want = tensors.clone();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(back.len(), want.len());
        for ((na, a), (nb, b)) in want.iter().zip(&back) {
            assert_eq!(na, nb);
            assert_same(a, b);
            assert!(!b.requires_grad());
        }
        // Spot values by hand.
        let f = &back.iter().find(|(n, _)| n == "f32").unwrap().1;
        assert_eq!(
            f.to_vec::<f32>(),
            vec![1.5, -2.0, f32::MAX, f32::MIN_POSITIVE]
        );
        let i = &back.iter().find(|(n, _)| n == "i64").unwrap().1;
        assert_eq!(i.to_vec::<i64>(), vec![i64::MIN, -1, 0, i64::MAX]);
        let s = &back.iter().find(|(n, _)| n == "scalar").unwrap().1;
        assert_eq!(s.shape(), &[] as &[usize]);
        assert_eq!(s.item::<i64>(), 42);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_file_is_the_documented_format() {
        // One f32 [2] tensor: 8-byte length, JSON header padded with spaces to a
        // multiple of 8, then the little-endian data.
        let dir = tmp_dir("fmt");
        let path = dir.join("one.safetensors");
        let t = Tensor::from_vec(vec![1.0f32, -2.0], [2]);
        save_tensors(&path, &[("a".into(), t)]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap().trim_end();
        assert_eq!(
            header,
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        );
        let data = &bytes[8 + n..];
        assert_eq!(data, [0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0]); // 1.0f32, -2.0f32 LE
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn strided_views_are_written_row_major() {
        let dir = tmp_dir("view");
        let path = dir.join("v.safetensors");
        let base = Tensor::from_vec((0..12).map(|x| x as f64).collect::<Vec<_>>(), [3, 4]);
        let view = base.t().try_slice(0, 1, 4, 2).unwrap(); // rows 1 and 3 of the transpose
        assert!(!view.is_contiguous());
        save_tensors(&path, &[("v".into(), view.clone())]).unwrap();
        let back = load_tensors(&path).unwrap();
        assert_eq!(back[0].1.shape(), &[2, 3]);
        assert_eq!(
            back[0].1.to_vec::<f64>(),
            vec![1.0, 5.0, 9.0, 3.0, 7.0, 11.0]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn narrow_integer_types_widen_to_i64_and_bool_reads() {
        // Written by hand: I32 [-1, 7], U8 [255], I8 [-128], U16 [65535], BOOL [1, 0].
        let header = r#"{"a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[1],"data_offsets":[8,9]},"c":{"dtype":"I8","shape":[1],"data_offsets":[9,10]},"d":{"dtype":"U16","shape":[1],"data_offsets":[10,12]},"e":{"dtype":"BOOL","shape":[2],"data_offsets":[12,14]}}"#;
        let mut data = Vec::new();
        data.extend_from_slice(&(-1i32).to_le_bytes());
        data.extend_from_slice(&7i32.to_le_bytes());
        data.push(255);
        data.push(0x80);
        data.extend_from_slice(&u16::MAX.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        let got = load_bytes(&file_bytes(header, &data)).unwrap();
        let v: Vec<(String, DType, Vec<f64>)> = got
            .iter()
            .map(|(n, t)| (n.clone(), t.dtype(), t.to_f64_vec()))
            .collect();
        assert_eq!(
            v,
            vec![
                ("a".into(), DType::I64, vec![-1.0, 7.0]),
                ("b".into(), DType::I64, vec![255.0]),
                ("c".into(), DType::I64, vec![-128.0]),
                ("d".into(), DType::I64, vec![65535.0]),
                ("e".into(), DType::Bool, vec![1.0, 0.0]),
            ]
        );
    }

    #[test]
    fn metadata_round_trips() {
        let dir = tmp_dir("meta");
        let path = dir.join("m.safetensors");
        let meta = BTreeMap::from([
            ("format".to_string(), "pt".to_string()),
            ("step".to_string(), "17".to_string()),
        ]);
        save_tensors_with_metadata(&path, &[("x".into(), Tensor::ones([1], ()))], &meta).unwrap();
        let (t, m) = load_tensors_with_metadata(&path).unwrap();
        assert_eq!(m, meta);
        assert_eq!(t[0].1.to_vec::<f32>(), vec![1.0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let e = load_tensors("/definitely/not/here.safetensors").unwrap_err();
        match &e {
            Error::Io { path, source } => {
                assert_eq!(path, "/definitely/not/here.safetensors");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected Io, got {other:?}"),
        }
        assert!(e
            .to_string()
            .starts_with("/definitely/not/here.safetensors: "));
    }

    #[test]
    fn truncation_at_every_cut_point_is_an_error_naming_the_file() {
        let dir = tmp_dir("cut");
        let path = dir.join("full.safetensors");
        save_tensors(&path, &sample()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let cut_path = dir.join("cut.safetensors");
        for cut in 0..bytes.len() {
            std::fs::write(&cut_path, &bytes[..cut]).unwrap();
            let e = load_tensors(&cut_path).unwrap_err();
            let s = e.to_string();
            assert!(matches!(e, Error::Checkpoint { .. }), "cut {cut}: {s}");
            assert!(
                s.starts_with(&format!("checkpoint {}: ", cut_path.display())),
                "{s}"
            );
            let expected = if cut < 8 {
                "too short for a safetensors file"
            } else if cut < 8 + n {
                "only"
            } else {
                "truncated"
            };
            assert!(s.contains(expected), "cut {cut}: {s}");
        }
        // One byte too many is caught too.
        let mut long = bytes.clone();
        long.push(0);
        let msg = err_msg(&long);
        assert!(msg.contains("trailing bytes"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cut_messages_give_the_numbers() {
        let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let full = file_bytes(header, &[0; 8]);
        assert_eq!(
            err_msg(&full[..5]),
            "5 bytes is too short for a safetensors file (it starts with an 8-byte header length): truncated or not a safetensors file"
        );
        assert_eq!(
            err_msg(&full[..20]),
            format!("the header length field says {} bytes but only 12 follow it: truncated or not a safetensors file", header.len())
        );
        assert_eq!(
            err_msg(&full[..full.len() - 3]),
            "the header describes 8 bytes of tensor data but 5 follow it: truncated"
        );
    }

    #[test]
    fn byte_length_not_matching_the_shape_names_the_tensor() {
        // "b" claims shape [3] (12 bytes) but its offsets give 8.
        let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[3],"data_offsets":[4,12]}}"#;
        assert_eq!(
            err_msg(&file_bytes(header, &[0; 12])),
            "tensor `b` (F32, shape [3]) has 8 bytes of data but its dtype and shape need 12"
        );
        // Overlapping offsets.
        let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#;
        let msg = err_msg(&file_bytes(header, &[0; 6]));
        assert!(msg.starts_with("tensor `b`: its data offsets"), "{msg}");
        // A shape whose size overflows.
        let header =
            r#"{"a":{"dtype":"F64","shape":[4611686018427387904,8],"data_offsets":[0,8]}}"#;
        let msg = err_msg(&file_bytes(header, &[0; 8]));
        assert!(
            msg.starts_with("tensor `a` (F64, shape [4611686018427387904, 8]) has a size"),
            "{msg}"
        );
    }

    #[test]
    fn corrupt_headers_are_errors() {
        let cases: [(&str, &str); 5] = [
            ("{not json", "not a valid safetensors table"),
            (
                r#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#,
                "not a valid safetensors table",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":"x","data_offsets":[0,4]}}"#,
                "not a valid safetensors table",
            ),
            (r#"[1, 2, 3]"#, "not a valid safetensors table"),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                "trailing bytes",
            ),
        ];
        for (header, want) in cases {
            let msg = err_msg(&file_bytes(header, &[0; 8]));
            assert!(msg.contains(want), "{header}: {msg}");
        }
        let mut bad_utf8 = 4u64.to_le_bytes().to_vec();
        bad_utf8.extend_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
        assert!(err_msg(&bad_utf8).contains("not UTF-8"));
        let huge = u64::MAX.to_le_bytes();
        assert!(err_msg(&huge).contains("more than the format's limit"));
    }

    #[test]
    fn unsupported_dtypes_and_bad_bools_are_errors() {
        let header = r#"{"big":{"dtype":"U64","shape":[1],"data_offsets":[0,8]}}"#;
        let msg = err_msg(&file_bytes(header, &[0; 8]));
        assert!(
            msg.starts_with("tensor `big` has dtype U64, which Flint cannot hold"),
            "{msg}"
        );
        let header = r#"{"c":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}"#;
        assert!(err_msg(&file_bytes(header, &[0; 8])).contains("dtype C64"));
        let header = r#"{"f8":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}"#;
        assert!(err_msg(&file_bytes(header, &[0; 2])).contains("dtype F8_E4M3"));
        let header = r#"{"m":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}}"#;
        assert_eq!(
            err_msg(&file_bytes(header, &[0, 1, 7])),
            "tensor `m`: BOOL element 2 is the byte 7, not 0 or 1"
        );
    }

    #[test]
    fn bad_names_are_refused_before_writing() {
        let dir = tmp_dir("names");
        let path = dir.join("keep.safetensors");
        save_tensors(&path, &[("w".into(), Tensor::ones([2], ()))]).unwrap();
        let before = std::fs::read(&path).unwrap();
        let dup = vec![
            ("w".to_string(), Tensor::zeros([2], ())),
            ("w".to_string(), Tensor::zeros([3], ())),
        ];
        let e = save_tensors(&path, &dup).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("checkpoint {}: two tensors are named `w`", path.display())
        );
        let reserved = vec![("__metadata__".to_string(), Tensor::zeros([2], ()))];
        assert!(save_tensors(&path, &reserved)
            .unwrap_err()
            .to_string()
            .contains("reserved"));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["keep.safetensors"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_rename_leaves_no_temp_file_and_the_target_untouched() {
        // The target is a non-empty directory: writing the temp file works, the rename
        // over it fails.
        let dir = tmp_dir("rename");
        let target = dir.join("model.safetensors");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("inside"), b"keep").unwrap();
        let e = save_tensors(&target, &sample()).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert!(e
            .to_string()
            .starts_with(&format!("{}: ", target.display())));
        assert_eq!(std::fs::read(target.join("inside")).unwrap(), b"keep");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["model.safetensors"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overwriting_replaces_the_whole_file() {
        let dir = tmp_dir("over");
        let path = dir.join("m.safetensors");
        save_tensors(&path, &sample()).unwrap();
        save_tensors(&path, &[("only".into(), Tensor::scalar(1.0f32))]).unwrap();
        let back = load_tensors(&path).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, "only");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["m.safetensors"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let e = save_tensors("/", &[]).unwrap_err();
        assert_eq!(e.to_string(), "checkpoint /: the path does not name a file");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random bytes never panic the reader.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = load_bytes(&bytes);
        }

        /// Random bytes behind a plausible header length never panic the reader.
        #[test]
        fn garbage_header_never_panics(body in proptest::collection::vec(any::<u8>(), 0..128), n in 0u64..160) {
            let mut bytes = n.to_le_bytes().to_vec();
            bytes.extend_from_slice(&body);
            let _ = load_bytes(&bytes);
        }

        /// Flipping any byte of a real file gives an error or a file that still loads;
        /// never a panic. A flip in the header is always caught.
        #[test]
        fn flipped_bytes_never_panic(pos in 0usize..4096, xor in 1u8..=255) {
            let mut bytes = safetensors::serialize(
                [("w", &to_raw(&Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3])).unwrap()),
                 ("m", &to_raw(&Tensor::from_vec(vec![true, false], [2])).unwrap())],
                None,
            ).unwrap();
            let pos = pos % bytes.len();
            bytes[pos] ^= xor;
            let r = load_bytes(&bytes);
            if pos < 8 {
                prop_assert!(r.is_err());
            }
        }
    }
}
