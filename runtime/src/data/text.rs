//! Character-level text: a [`CharVocab`] (characters ↔ ids) and a [`CharDataset`] of
//! fixed-length windows for next-character prediction (the bundled corpus is
//! `data/text/python_reference_topics.txt`).

use super::{check_index, Dataset};
use crate::error::{or_panic, Error, Result};
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// The characters of a text, sorted, each with an `i64` id (its position), for
/// character-level models.
///
/// ```
/// use flint_runtime::data::CharVocab;
/// let v = CharVocab::from_text("hello");
/// assert_eq!(v.chars(), &['e', 'h', 'l', 'o']);
/// let ids = v.encode("hole").unwrap();
/// assert_eq!(ids, vec![1, 3, 2, 0]);
/// assert_eq!(v.decode(&ids), "hole");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct CharVocab {
    chars: Vec<char>,
    ids: HashMap<char, i64>,
}

impl fmt::Debug for CharVocab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s: String = self.chars.iter().collect();
        f.debug_struct("CharVocab")
            .field("len", &self.chars.len())
            .field("chars", &s)
            .finish()
    }
}

impl CharVocab {
    /// The distinct characters (Unicode scalar values) of `text`, sorted by code point:
    /// id `i` is the `i`-th smallest.
    ///
    /// ```
    /// use flint_runtime::data::CharVocab;
    /// let v = CharVocab::from_text("b a\nb");
    /// assert_eq!(v.chars(), &['\n', ' ', 'a', 'b']);
    /// ```
    pub fn from_text(text: &str) -> CharVocab {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        CharVocab::from_sorted(chars)
    }

    fn from_sorted(chars: Vec<char>) -> CharVocab {
        let ids = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i as i64))
            .collect();
        CharVocab { chars, ids }
    }

    /// The number of characters (the size a model's embedding and output need).
    ///
    /// ```
    /// use flint_runtime::data::CharVocab;
    /// assert_eq!(CharVocab::from_text("abracadabra").len(), 5);
    /// ```
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Whether the vocabulary has no characters (made from an empty text).
    ///
    /// ```
    /// use flint_runtime::data::CharVocab;
    /// assert!(CharVocab::from_text("").is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The characters, in id order.
    ///
    /// ```
    /// use flint_runtime::data::CharVocab;
    /// assert_eq!(CharVocab::from_text("cab").chars(), &['a', 'b', 'c']);
    /// ```
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The id of `c`, if it is in the vocabulary.
    ///
    /// ```
    /// use flint_runtime::data::CharVocab;
    /// let v = CharVocab::from_text("cab");
    /// assert_eq!(v.id('c'), Some(2));
    /// assert_eq!(v.id('z'), None);
    /// ```
    pub fn id(&self, c: char) -> Option<i64> {
        self.ids.get(&c).copied()
    }

    /// The character with id `id`, if there is one.
    ///
    /// ```
    /// use flint_runtime::data::CharVocab;
    /// let v = CharVocab::from_text("cab");
    /// assert_eq!(v.char(0), Some('a'));
    /// assert_eq!(v.char(3), None);
    /// assert_eq!(v.char(-1), None);
    /// ```
    pub fn char(&self, id: i64) -> Option<char> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.chars.get(i).copied())
    }

    /// The ids of the characters of `text`; an [`Error::Index`] naming the first
    /// character that is not in the vocabulary and its position.
    ///
    /// ```
    /// use flint_runtime::data::CharVocab;
    /// let v = CharVocab::from_text("abc");
    /// assert_eq!(v.encode("cab").unwrap(), vec![2, 0, 1]);
    /// let e = v.encode("abx").unwrap_err();
    /// assert_eq!(
    ///     e.to_string(),
    ///     "CharVocab::encode: character 'x' (U+0078) at character 2 is not in the vocabulary of 3 characters"
    /// );
    /// ```
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        text.chars()
            .enumerate()
            .map(|(pos, c)| {
                self.id(c).ok_or_else(|| {
                    Error::index(
                        "CharVocab::encode",
                        format!(
                            "character {c:?} (U+{:04X}) at character {pos} is not in the vocabulary of {} characters",
                            c as u32,
                            self.len()
                        ),
                    )
                })
            })
            .collect()
    }

    /// The text of `ids`. An id outside `0..len()` (a model's output should never have
    /// one) becomes U+FFFD `'�'`, the Unicode replacement character, so that sampling
    /// code never fails on output; [`CharVocab::try_decode`] makes it an error instead.
    ///
    /// ```
    /// use flint_runtime::data::CharVocab;
    /// let v = CharVocab::from_text("ab");
    /// assert_eq!(v.decode(&[1, 0, 1]), "bab");
    /// assert_eq!(v.decode(&[0, 7, -1]), "a\u{FFFD}\u{FFFD}");
    /// ```
    pub fn decode(&self, ids: &[i64]) -> String {
        ids.iter()
            .map(|&id| self.char(id).unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    }

    /// The text of `ids`; an [`Error::Index`] naming the first id outside `0..len()`.
    ///
    /// ```
    /// use flint_runtime::data::CharVocab;
    /// let v = CharVocab::from_text("ab");
    /// assert_eq!(v.try_decode(&[1, 0]).unwrap(), "ba");
    /// let e = v.try_decode(&[0, 2]).unwrap_err();
    /// assert_eq!(e.to_string(), "CharVocab::decode: id 2 at position 1 is outside 0..2");
    /// ```
    pub fn try_decode(&self, ids: &[i64]) -> Result<String> {
        ids.iter()
            .enumerate()
            .map(|(pos, &id)| {
                self.char(id).ok_or_else(|| {
                    Error::index(
                        "CharVocab::decode",
                        format!("id {id} at position {pos} is outside 0..{}", self.len()),
                    )
                })
            })
            .collect()
    }
}

/// Next-character prediction on a text: item `i` is the window of `block` character ids
/// starting at character `i` (the input) and the same window shifted by one (the
/// target), both `[block]` `i64` tensors, as a `Vec<Tensor>` `[input, target]`; there
/// are `n_chars - block` items.
///
/// Batches through [`Stack`](super::Stack) are `[input [B, block], target [B, block]]`,
/// built directly from the ids ([`Dataset::get_stacked`]).
///
/// ```
/// use flint_runtime::data::{CharDataset, Dataset};
/// let ds = CharDataset::new("hello", 3).unwrap();
/// assert_eq!(ds.vocab().chars(), &['e', 'h', 'l', 'o']);
/// assert_eq!(ds.len(), 2); // "hel"->"ell", "ell"->"llo"
/// let item = ds.get(1).unwrap();
/// assert_eq!(ds.vocab().decode(&item[0].to_vec::<i64>()), "ell");
/// assert_eq!(ds.vocab().decode(&item[1].to_vec::<i64>()), "llo");
/// ```
#[derive(Clone, Debug)]
pub struct CharDataset {
    vocab: Arc<CharVocab>,
    ids: Arc<[i64]>,
    block: usize,
}

impl CharDataset {
    /// Windows of `block` characters over `text`, with the vocabulary of `text`. An error
    /// when `block` is 0 or `text` has fewer than `block + 1` characters.
    ///
    /// ```
    /// use flint_runtime::data::CharDataset;
    /// let e = CharDataset::new("abc", 3).unwrap_err();
    /// assert_eq!(e.to_string(), "CharDataset: the text has 3 characters; a block of 3 needs at least 4");
    /// ```
    pub fn new(text: &str, block: usize) -> Result<CharDataset> {
        Self::with_vocab(text, CharVocab::from_text(text), block)
    }

    /// Windows of `block` characters over `text`, encoded with `vocab` (e.g. the training
    /// text's, for a validation text): an error for a character `vocab` lacks, and as in
    /// [`CharDataset::new`].
    ///
    /// ```
    /// use flint_runtime::data::{CharDataset, CharVocab, Dataset};
    /// let vocab = CharVocab::from_text("abcd");
    /// let ds = CharDataset::with_vocab("abba", vocab.clone(), 2).unwrap();
    /// assert_eq!(ds.vocab(), &vocab);
    /// assert_eq!(ds.len(), 2);
    /// assert!(CharDataset::with_vocab("abe", vocab, 2).is_err());
    /// ```
    pub fn with_vocab(text: &str, vocab: CharVocab, block: usize) -> Result<CharDataset> {
        let ids = vocab.encode(text)?;
        check_length(ids.len(), block).map_err(|msg| Error::config("CharDataset", msg))?;
        Ok(CharDataset {
            vocab: Arc::new(vocab),
            ids: ids.into(),
            block,
        })
    }

    /// Windows of `block` characters over the UTF-8 text file at `path`, with its
    /// vocabulary. Errors: an [`Error::Io`] naming the path when it cannot be read; an
    /// [`Error::Data`] naming the path and the 1-based line of the first bytes that are
    /// not UTF-8, or naming the path when the text is shorter than `block + 1`
    /// characters; a [`Error::Config`] for a block of 0.
    ///
    /// ```
    /// use flint_runtime::data::CharDataset;
    /// use flint_runtime::Error;
    /// let e = CharDataset::from_file("no/such/corpus.txt", 64).unwrap_err();
    /// assert!(matches!(e, Error::Io { .. }));
    /// assert!(e.to_string().starts_with("no/such/corpus.txt: "));
    /// ```
    pub fn from_file(path: impl AsRef<Path>, block: usize) -> Result<CharDataset> {
        let path = path.as_ref();
        if block == 0 {
            return Err(Error::config(
                "CharDataset",
                "block must be at least 1, got 0",
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let bytes = e.as_bytes();
                let at = e.utf8_error().valid_up_to();
                let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
                let col = at
                    - bytes[..at]
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |p| p + 1);
                return Err(Error::data(
                    path,
                    Some(line),
                    format!("not valid UTF-8 (byte {} of the line)", col + 1),
                ));
            }
        };
        let vocab = CharVocab::from_text(&text);
        let ids = vocab.encode(&text)?;
        check_length(ids.len(), block).map_err(|msg| Error::data(path, None, msg))?;
        Ok(CharDataset {
            vocab: Arc::new(vocab),
            ids: ids.into(),
            block,
        })
    }

    /// The vocabulary.
    ///
    /// ```
    /// use flint_runtime::data::CharDataset;
    /// assert_eq!(CharDataset::new("abab", 2).unwrap().vocab().len(), 2);
    /// ```
    pub fn vocab(&self) -> &CharVocab {
        &self.vocab
    }

    /// The ids of the whole text.
    ///
    /// ```
    /// use flint_runtime::data::CharDataset;
    /// assert_eq!(CharDataset::new("abba", 2).unwrap().ids(), &[0, 1, 1, 0]);
    /// ```
    pub fn ids(&self) -> &[i64] {
        &self.ids
    }

    /// The window length.
    ///
    /// ```
    /// use flint_runtime::data::CharDataset;
    /// assert_eq!(CharDataset::new("abba", 2).unwrap().block(), 2);
    /// ```
    pub fn block(&self) -> usize {
        self.block
    }

    /// The first `fraction` of the text and the rest (cut at `round(n_chars * fraction)`),
    /// as two datasets with this vocabulary and block: training and held-out validation
    /// text. A part shorter than `block + 1` characters has no items. Panics unless
    /// `fraction` is in `[0, 1]`; see [`CharDataset::try_split`].
    ///
    /// ```
    /// use flint_runtime::data::{CharDataset, Dataset};
    /// let ds = CharDataset::new("abcdefghij", 2).unwrap();
    /// let (train, val) = ds.split(0.7);
    /// assert_eq!(train.ids().len(), 7);
    /// assert_eq!(val.ids().len(), 3);
    /// assert_eq!((train.len(), val.len()), (5, 1));
    /// assert_eq!(val.vocab(), ds.vocab());
    /// ```
    #[track_caller]
    pub fn split(&self, fraction: f64) -> (CharDataset, CharDataset) {
        or_panic(self.try_split(fraction))
    }

    /// Fallible [`CharDataset::split`]: an error unless `fraction` is in `[0, 1]`.
    ///
    /// ```
    /// use flint_runtime::data::CharDataset;
    /// let ds = CharDataset::new("abcdefghij", 2).unwrap();
    /// let e = ds.try_split(1.5).unwrap_err();
    /// assert_eq!(e.to_string(), "CharDataset::split: fraction must be in [0, 1], got 1.5");
    /// ```
    pub fn try_split(&self, fraction: f64) -> Result<(CharDataset, CharDataset)> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(Error::config(
                "CharDataset::split",
                format!("fraction must be in [0, 1], got {fraction}"),
            ));
        }
        let n = self.ids.len();
        let cut = ((n as f64 * fraction).round() as usize).min(n);
        let part = |ids: &[i64]| CharDataset {
            vocab: Arc::clone(&self.vocab),
            ids: ids.into(),
            block: self.block,
        };
        Ok((part(&self.ids[..cut]), part(&self.ids[cut..])))
    }

    /// `[input, target]` windows at the given starts, `[B, block]` each.
    fn windows(&self, starts: &[usize]) -> Result<Vec<Tensor>> {
        let (len, t) = (self.len(), self.block);
        let mut x = Vec::with_capacity(starts.len() * t);
        let mut y = Vec::with_capacity(starts.len() * t);
        for &s in starts {
            check_index("CharDataset", s, len)?;
            x.extend_from_slice(&self.ids[s..s + t]);
            y.extend_from_slice(&self.ids[s + 1..s + t + 1]);
        }
        let b = starts.len();
        Ok(vec![
            Tensor::try_from_vec(x, [b, t])?,
            Tensor::try_from_vec(y, [b, t])?,
        ])
    }
}

/// `Err(msg)` unless a text of `n` characters holds at least one window of `block`.
fn check_length(n: usize, block: usize) -> std::result::Result<(), String> {
    if block == 0 {
        return Err("block must be at least 1, got 0".to_string());
    }
    if n <= block {
        return Err(format!(
            "the text has {n} characters; a block of {block} needs at least {}",
            block + 1
        ));
    }
    Ok(())
}

impl Dataset for CharDataset {
    type Item = Vec<Tensor>;

    fn len(&self) -> usize {
        self.ids.len().saturating_sub(self.block)
    }

    fn get(&self, index: usize) -> Result<Vec<Tensor>> {
        check_index("CharDataset", index, self.len())?;
        let t = self.block;
        Ok(vec![
            Tensor::try_from_vec(self.ids[index..index + t].to_vec(), [t])?,
            Tensor::try_from_vec(self.ids[index + 1..index + t + 1].to_vec(), [t])?,
        ])
    }

    fn get_stacked(&self, indices: &[usize]) -> Option<Result<Vec<Tensor>>> {
        Some(self.windows(indices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Collate, DataLoader, Stack};
    use std::path::PathBuf;

    #[test]
    fn vocab_round_trip_and_errors() {
        let text = "def f(x):\n    return x ** 2  # ünïcödé ✓\n";
        let v = CharVocab::from_text(text);
        let mut want: Vec<char> = text.chars().collect();
        want.sort();
        want.dedup();
        assert_eq!(v.chars(), want.as_slice());
        assert_eq!(v.len(), want.len());
        let ids = v.encode(text).unwrap();
        assert_eq!(ids.len(), text.chars().count());
        assert_eq!(v.decode(&ids), text);
        assert_eq!(v.try_decode(&ids).unwrap(), text);
        // ids are positions in the sorted list: '\n' < ' ' < '#' < ...
        assert_eq!(v.id('\n'), Some(0));
        assert_eq!(v.id(' '), Some(1));
        assert_eq!(v.id('#'), Some(2));
        assert_eq!(v.id('✓'), Some(v.len() as i64 - 1));
        let e = v.encode("xyz").unwrap_err();
        assert!(matches!(e, Error::Index { .. }));
        assert!(
            e.to_string()
                .contains("character 'y' (U+0079) at character 1"),
            "{e}"
        );
        assert_eq!(v.decode(&[v.len() as i64, -3]), "\u{FFFD}\u{FFFD}");
        assert!(v
            .try_decode(&[-3])
            .unwrap_err()
            .to_string()
            .contains("id -3 at position 0"));
    }

    #[test]
    fn windows_shift_by_one() {
        let ds = CharDataset::new("abcdefg", 3).unwrap();
        assert_eq!(ds.len(), 4);
        assert_eq!(ds.ids(), &[0, 1, 2, 3, 4, 5, 6]);
        for i in 0..4 {
            let it = ds.get(i).unwrap();
            assert_eq!(it.len(), 2);
            assert_eq!(it[0].shape(), &[3]);
            assert_eq!(it[0].dtype(), crate::DType::I64);
            let want: Vec<i64> = (i as i64..i as i64 + 3).collect();
            assert_eq!(it[0].to_vec::<i64>(), want);
            let shifted: Vec<i64> = want.iter().map(|v| v + 1).collect();
            assert_eq!(it[1].to_vec::<i64>(), shifted);
        }
        assert_eq!(
            ds.get(4).unwrap_err().to_string(),
            "CharDataset: index 4 is out of range for a dataset of length 4"
        );
        // the fast path equals stacking the items
        let fast = ds.get_stacked(&[3, 0]).unwrap().unwrap();
        let slow = Stack.collate(ds.get_batch(&[3, 0]).unwrap()).unwrap();
        assert_eq!(fast[0].shape(), &[2, 3]);
        assert_eq!(fast[0].to_vec::<i64>(), slow[0].to_vec::<i64>());
        assert_eq!(fast[1].to_vec::<i64>(), slow[1].to_vec::<i64>());
        assert_eq!(fast[1].to_vec::<i64>(), vec![4, 5, 6, 1, 2, 3]);
        assert!(ds.get_stacked(&[4]).unwrap().is_err());
        // through a loader
        let loader = DataLoader::new(ds, 3);
        let batches: Vec<Vec<Tensor>> = loader.epoch(0).map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0][0].shape(), &[3, 3]);
        assert_eq!(batches[1][1].to_vec::<i64>(), vec![4, 5, 6]);
    }

    #[test]
    fn construction_errors() {
        assert_eq!(
            CharDataset::new("abc", 0).unwrap_err().to_string(),
            "CharDataset: block must be at least 1, got 0"
        );
        assert!(CharDataset::new("", 1).is_err());
        assert_eq!(CharDataset::new("ab", 1).unwrap().len(), 1);
    }

    #[test]
    fn split_keeps_vocab_and_text_order() {
        let ds = CharDataset::new("aaaaaaaabc", 2).unwrap();
        let (a, b) = ds.split(0.8);
        assert_eq!(a.ids(), &[0; 8]);
        assert_eq!(b.ids(), &[1, 2]);
        assert_eq!(b.vocab().len(), 3);
        assert_eq!((a.len(), b.len()), (6, 0));
        assert!(b.get(0).is_err());
        let (all, none) = ds.split(1.0);
        assert_eq!((all.ids().len(), none.ids().len()), (10, 0));
        let (none, all) = ds.split(0.0);
        assert_eq!((none.len(), all.len()), (0, 8));
        assert!(ds.try_split(-0.1).is_err());
        assert!(ds.try_split(f64::NAN).is_err());
        assert_eq!(a.block(), 2);
    }

    struct TempFile(PathBuf);
    impl TempFile {
        fn new(tag: &str, bytes: &[u8]) -> TempFile {
            let p = std::env::temp_dir().join(format!("flint-text-{}-{tag}", std::process::id()));
            std::fs::write(&p, bytes).unwrap();
            TempFile(p)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn files_and_their_errors() {
        let f = TempFile::new("ok.txt", "ab\ncd\n".as_bytes());
        let ds = CharDataset::from_file(&f.0, 4).unwrap();
        assert_eq!(ds.vocab().chars(), &['\n', 'a', 'b', 'c', 'd']);
        assert_eq!(ds.len(), 2);

        let missing = std::env::temp_dir().join("flint-no-such-corpus.txt");
        let e = CharDataset::from_file(&missing, 4).unwrap_err();
        assert!(matches!(e, Error::Io { .. }));
        assert!(e
            .to_string()
            .starts_with(&format!("{}: ", missing.display())));

        let bad = TempFile::new("bad.txt", b"first\nsecond\nth\xffird\n");
        let e = CharDataset::from_file(&bad.0, 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:3: not valid UTF-8 (byte 3 of the line)",
                bad.0.display()
            )
        );
        let short = TempFile::new("short.txt", b"abc");
        let e = CharDataset::from_file(&short.0, 3).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: the text has 3 characters; a block of 3 needs at least 4",
                short.0.display()
            )
        );
        assert!(CharDataset::from_file(&short.0, 0).is_err());
    }

    #[test]
    fn the_bundled_corpus() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/text/python_reference_topics.txt");
        let ds = CharDataset::from_file(path, 128).unwrap();
        // facts from the data README (python: len(t), len(set(t)))
        assert_eq!(ds.ids().len(), 465_126);
        assert_eq!(ds.vocab().len(), 103);
        assert_eq!(ds.len(), 465_126 - 128);
        assert_eq!(ds.vocab().chars()[..2], ['\n', ' ']);
        assert_eq!(ds.vocab().chars()[102], '…');
        let first = ds.get(0).unwrap();
        assert_eq!(
            ds.vocab().decode(&first[0].to_vec::<i64>()[..22]),
            "The \"assert\" statement"
        );
        let (train, val) = ds.split(0.9);
        assert_eq!(train.ids().len() + val.ids().len(), 465_126);
        assert_eq!(train.ids().len(), 418_613); // round(465126 * 0.9)
    }
}
