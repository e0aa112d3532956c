//! TensorBoard event files, written without TensorFlow.
//!
//! An event file is a sequence of TFRecords, each holding one serialized `tensorflow.Event`
//! protocol buffer. A record is framed as
//!
//! | bytes | content |
//! | --- | --- |
//! | 8 | the data's length, `u64` little-endian |
//! | 4 | masked CRC-32C of those 8 bytes, `u32` little-endian |
//! | n | the data |
//! | 4 | masked CRC-32C of the data |
//!
//! with `mask(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`. The first event carries
//! `file_version = "brain.Event:2"`; each scalar is an `Event { wall_time (1, double),
//! step (2, int64), summary (5) { value (1) { tag (1, string), simple_value (2, float) } } }`.
//! The protobuf is encoded by hand (varints and length-delimited fields) in this module.
//!
//! [`RunLogger`](crate::RunLogger) writes one of these per run; [`EventWriter`] is the
//! lower-level piece for writing one directly.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

/// The CRC-32C (Castagnoli) lookup table, reflected polynomial `0x82F63B78`.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32C (Castagnoli) of `data`, the checksum TFRecord uses.
///
/// ```
/// assert_eq!(flint_train::tensorboard::crc32c(b"123456789"), 0xE306_9283);
/// ```
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The masked CRC-32C that TFRecord stores: `((crc >> 15) | (crc << 17)) + 0xa282ead8`
/// (wrapping), so that a CRC of data containing CRCs stays well distributed.
///
/// ```
/// use flint_train::tensorboard::{crc32c, masked_crc32c};
/// let crc = crc32c(b"123456789");
/// assert_eq!(masked_crc32c(b"123456789"), crc.rotate_right(15).wrapping_add(0xa282_ead8));
/// ```
pub fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends one TFRecord holding `data` to `out`.
///
/// ```
/// let mut out = Vec::new();
/// flint_train::tensorboard::frame_record(b"abc", &mut out);
/// assert_eq!(out.len(), 8 + 4 + 3 + 4);
/// assert_eq!(&out[..8], &3u64.to_le_bytes());
/// assert_eq!(&out[12..15], b"abc");
/// ```
pub fn frame_record(data: &[u8], out: &mut Vec<u8>) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
}

// ---- protobuf encoding (only the pieces an Event needs) ----

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(field: u64, wire: u64, out: &mut Vec<u8>) {
    put_varint((field << 3) | wire, out);
}

fn put_bytes(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    put_key(field, WIRE_LEN, out);
    put_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn put_double(field: u64, v: f64, out: &mut Vec<u8>) {
    put_key(field, WIRE_FIXED64, out);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_float(field: u64, v: f32, out: &mut Vec<u8>) {
    put_key(field, WIRE_FIXED32, out);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_int64(field: u64, v: i64, out: &mut Vec<u8>) {
    put_key(field, WIRE_VARINT, out);
    // int64 is encoded as the two's-complement u64 (10 bytes for negatives)
    put_varint(v as u64, out);
}

/// The serialized `Event { wall_time, file_version }` that opens every event file.
///
/// ```
/// let bytes = flint_train::tensorboard::encode_file_version_event(0.0);
/// // field 1 (double) = 0.0, then field 3 (string) = "brain.Event:2"
/// assert_eq!(bytes[0], 0x09);
/// assert_eq!(&bytes[9..11], &[0x1a, 13]);
/// assert_eq!(&bytes[11..], b"brain.Event:2");
/// ```
pub fn encode_file_version_event(wall_time: f64) -> Vec<u8> {
    let mut ev = Vec::with_capacity(32);
    put_double(1, wall_time, &mut ev);
    put_bytes(3, b"brain.Event:2", &mut ev);
    ev
}

/// The serialized `Event { wall_time, step, summary { value { tag, simple_value } } }` of
/// one scalar. TensorBoard stores scalars as `float`, so `value` is rounded to `f32`.
///
/// ```
/// let bytes = flint_train::tensorboard::encode_scalar_event("loss", 3, 0.5, 0.0);
/// // wall_time (9 bytes), step 3 (2 bytes), then the summary
/// assert_eq!(&bytes[9..11], &[0x10, 3]);
/// assert_eq!(bytes[11], 0x2a);
/// ```
pub fn encode_scalar_event(tag: &str, step: i64, value: f32, wall_time: f64) -> Vec<u8> {
    let mut val = Vec::with_capacity(tag.len() + 8);
    put_bytes(1, tag.as_bytes(), &mut val);
    put_float(2, value, &mut val);
    let mut summary = Vec::with_capacity(val.len() + 4);
    put_bytes(1, &val, &mut summary);
    let mut ev = Vec::with_capacity(summary.len() + 24);
    put_double(1, wall_time, &mut ev);
    put_int64(2, step, &mut ev);
    put_bytes(5, &summary, &mut ev);
    ev
}

/// The serialized `Event { wall_time, step, session_log (7) { status (1) = START } }`:
/// tells TensorBoard that a run restarted at `step`, so it drops the points it had read
/// at `step` and later (they were logged before a crash and are logged again).
///
/// ```
/// let bytes = flint_train::tensorboard::encode_session_start_event(3, 0.0);
/// assert_eq!(&bytes[9..], &[0x10, 3, 0x3a, 2, 0x08, 1]);
/// ```
pub fn encode_session_start_event(step: i64, wall_time: f64) -> Vec<u8> {
    let mut log = Vec::with_capacity(2);
    put_key(1, WIRE_VARINT, &mut log);
    put_varint(1, &mut log);
    let mut ev = Vec::with_capacity(24);
    put_double(1, wall_time, &mut ev);
    put_int64(2, step, &mut ev);
    put_bytes(7, &log, &mut ev);
    ev
}

/// Writes a TensorBoard event file: the `file_version` record on creation, then one
/// record per scalar. Buffered; flushed by [`flush`](Self::flush) and on drop.
///
/// Most programs use [`RunLogger`](crate::RunLogger), which names the file the way
/// TensorBoard expects and also writes a CSV.
///
/// ```
/// use flint_train::tensorboard::EventWriter;
/// let dir = std::env::temp_dir().join(format!("flint-train-doc-events-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("events.out.tfevents.0.host.1.flint");
/// let mut w = EventWriter::create(&path, 1.7e9)?;
/// w.add_scalar("train/loss", 1, 0.25, 1.7e9 + 1.0)?;
/// w.flush()?;
/// // 2 records: the file version (8+4+24+4) and the scalar
/// assert!(std::fs::metadata(&path).unwrap().len() > 40);
/// # drop(w);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), flint_train::TrainError>(())
/// ```
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
    record: Vec<u8>,
}

impl EventWriter {
    /// Creates (or truncates) the file at `path` and writes (and flushes) the
    /// `file_version` event stamped `wall_time` (seconds since the Unix epoch).
    ///
    /// ```
    /// use flint_train::tensorboard::EventWriter;
    /// // the folder does not exist: an error naming the file
    /// let err = EventWriter::create("/nonexistent-flint-dir/events.out.tfevents.x", 0.0).unwrap_err();
    /// assert!(err.to_string().starts_with("/nonexistent-flint-dir/events.out.tfevents.x: "), "{err}");
    /// ```
    pub fn create(path: impl AsRef<Path>, wall_time: f64) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::create(&path).map_err(|e| TrainError::io(&path, e))?;
        let mut w = EventWriter {
            path,
            out: BufWriter::new(file),
            record: Vec::with_capacity(128),
        };
        w.write_event(&encode_file_version_event(wall_time))?;
        // on disk at once: a run that stops before its first flush is still readable
        w.flush()?;
        Ok(w)
    }

    /// The file being written.
    ///
    /// ```
    /// # use flint_train::tensorboard::EventWriter;
    /// # let path = std::env::temp_dir().join(format!("flint-train-doc-path-{}.tfevents", std::process::id()));
    /// let w = EventWriter::create(&path, 0.0)?;
    /// assert_eq!(w.path(), path.as_path());
    /// # drop(w);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), flint_train::TrainError>(())
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one scalar event. `step` must fit in TensorBoard's `int64`; `value` is
    /// stored as `f32` (non-finite values are kept as they are).
    ///
    /// ```
    /// # use flint_train::tensorboard::EventWriter;
    /// # let path = std::env::temp_dir().join(format!("flint-train-doc-add-{}.tfevents", std::process::id()));
    /// let mut w = EventWriter::create(&path, 0.0)?;
    /// w.add_scalar("test/accuracy", 10, 0.97, 12.5)?;
    /// assert!(w.add_scalar("x", u64::MAX, 1.0, 0.0).is_err());
    /// # drop(w);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), flint_train::TrainError>(())
    /// ```
    pub fn add_scalar(&mut self, tag: &str, step: u64, value: f64, wall_time: f64) -> Result<()> {
        let step = i64::try_from(step).map_err(|_| {
            TrainError::invalid(
                "EventWriter::add_scalar",
                format!("step {step} does not fit TensorBoard's int64"),
            )
        })?;
        self.write_event(&encode_scalar_event(tag, step, value as f32, wall_time))
    }

    /// Appends a `SessionLog START` event at `step`: TensorBoard then discards the points
    /// it read earlier (in this file or an older one in the folder) at `step` or later.
    /// [`RunLogger::resume`](crate::RunLogger::resume) writes one.
    ///
    /// ```
    /// # use flint_train::tensorboard::EventWriter;
    /// # let path = std::env::temp_dir().join(format!("flint-train-doc-start-{}.tfevents", std::process::id()));
    /// let mut w = EventWriter::create(&path, 0.0)?;
    /// w.add_session_start(101, 5.0)?;
    /// # drop(w);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), flint_train::TrainError>(())
    /// ```
    pub fn add_session_start(&mut self, step: u64, wall_time: f64) -> Result<()> {
        let step = i64::try_from(step).map_err(|_| {
            TrainError::invalid(
                "EventWriter::add_session_start",
                format!("step {step} does not fit TensorBoard's int64"),
            )
        })?;
        self.write_event(&encode_session_start_event(step, wall_time))
    }

    /// Writes buffered records to the file.
    ///
    /// ```
    /// # use flint_train::tensorboard::EventWriter;
    /// # let path = std::env::temp_dir().join(format!("flint-train-doc-flush-{}.tfevents", std::process::id()));
    /// let mut w = EventWriter::create(&path, 0.0)?;
    /// w.flush()?;
    /// assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 + 4 + 24 + 4);
    /// # drop(w);
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), flint_train::TrainError>(())
    /// ```
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| TrainError::io(&self.path, e))
    }

    fn write_event(&mut self, event: &[u8]) -> Result<()> {
        self.record.clear();
        frame_record(event, &mut self.record);
        self.out
            .write_all(&self.record)
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        // errors here have nowhere to go; `flush` reports them
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_standard_check_value() {
        // the CRC catalogue's check value for CRC-32/ISCSI
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // RFC 3720 (iSCSI) B.4 test vectors: 32 bytes of zeros, of 0xff, ascending
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
    }

    #[test]
    fn masked_crc_formula() {
        // mask(0xE3069283) = ((c >> 15) | (c << 17)) + 0xa282ead8, worked out by hand:
        // c >> 15 = 0x1C60D, c << 17 = 0x25060000 (low 32 bits), or = 0x2507C60D,
        // + 0xA282EAD8 = 0xC78AB0E5
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
    }

    #[test]
    fn varints() {
        let enc = |v: u64| {
            let mut out = Vec::new();
            put_varint(v, &mut out);
            out
        };
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(127), [0x7f]);
        // the protobuf docs' example: 150 = 0x96 0x01
        assert_eq!(enc(150), [0x96, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(u64::MAX).len(), 10);
        // int64 -1 is ten bytes, the last 0x01
        let mut out = Vec::new();
        put_int64(2, -1, &mut out);
        assert_eq!(out[0], 0x10);
        assert_eq!(out.len(), 11);
        assert_eq!(out[10], 0x01);
    }

    #[test]
    fn scalar_event_bytes() {
        // the same bytes as TensorBoard's own protobuf classes give:
        //   Event(wall_time=2.0, step=150, summary=Summary(value=[
        //       Summary.Value(tag='a', simple_value=1.0)])).SerializeToString().hex()
        //   == "0900000000000000401096012a0a0a080a0161150000803f"
        let ev = encode_scalar_event("a", 150, 1.0, 2.0);
        let mut want = vec![0x09];
        want.extend_from_slice(&2.0f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 0x96, 0x01]);
        // summary: field 5, length 10: value (field 1, length 8): tag "a", simple_value 1.0f
        want.extend_from_slice(&[0x2a, 10, 0x0a, 8, 0x0a, 1, b'a', 0x15]);
        want.extend_from_slice(&1.0f32.to_le_bytes());
        assert_eq!(ev, want);
    }

    #[test]
    fn session_start_event_bytes() {
        // Event(wall_time=2.0, step=150, session_log=SessionLog(status=START))
        //     .SerializeToString().hex() == "0900000000000000401096013a020801"
        let mut want = vec![0x09];
        want.extend_from_slice(&2.0f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 0x96, 0x01, 0x3a, 0x02, 0x08, 0x01]);
        assert_eq!(encode_session_start_event(150, 2.0), want);
    }

    #[test]
    fn record_framing() {
        let mut out = Vec::new();
        frame_record(b"hello", &mut out);
        assert_eq!(out.len(), 8 + 4 + 5 + 4);
        assert_eq!(&out[..8], &5u64.to_le_bytes());
        assert_eq!(
            &out[8..12],
            &masked_crc32c(&5u64.to_le_bytes()).to_le_bytes()
        );
        assert_eq!(&out[12..17], b"hello");
        assert_eq!(&out[17..], &masked_crc32c(b"hello").to_le_bytes());
    }
}
