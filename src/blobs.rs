//! The blob store: file contents kept once each under `DATA_DIR/blobs/`, named by their blake3
//! hash.
//!
//! Layout (two hex digits of fan-out keep any one folder small):
//!
//! ```text
//! blobs/ab/ab12…ef          the blob whose hash is blake3:ab12…ef (64 hex digits)
//! blobs/.incoming.tmp-UUID  a write in progress (removed at open if a crash left it)
//! ```
//!
//! A blob is immutable: it is written to a temporary file while its hash is computed, synced,
//! and only then renamed to its name, so a blob present under a name always holds the bytes
//! that name promises. Storing bytes that are already present keeps the existing blob and says
//! so ([`PutOutcome::created_new`] is `false`). Bodies are streamed through one bounded buffer:
//! a 2 GB upload never sits in memory.
//!
//! The store knows nothing of HTTP, assets or jobs; asset records (and job inputs) refer to
//! blobs by [`BlobHash`].

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::durable;

/// The prefix of a hash's text form, as the Comfy API v2 writes hashes.
const PREFIX: &str = "blake3:";

/// Bytes moved per read while storing: the only buffer a put needs, whatever the body's size.
const BUFFER: usize = 64 * 1024;

/// A blob's name: the 32-byte blake3 hash of its contents.
///
/// Its text form (`Display`, `FromStr`, serde) is `blake3:` followed by 64 lowercase hex
/// digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash([u8; 32]);

impl BlobHash {
    /// The hash of `bytes` (for small in-memory contents and tests; files go through
    /// [`BlobStore::put`]).
    pub fn of(bytes: &[u8]) -> BlobHash {
        BlobHash(*blake3::hash(bytes).as_bytes())
    }

    /// The hash from its 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> BlobHash {
        BlobHash(bytes)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, without the `blake3:` prefix.
    pub fn hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for byte in self.0 {
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0xf)] as char);
        }
        out
    }

    /// Parses 64 lowercase hex digits (no prefix).
    pub fn from_hex(hex: &str) -> Result<BlobHash, ParseHashError> {
        let digits = hex.as_bytes();
        if digits.len() != 64 {
            return Err(ParseHashError);
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Ok(BlobHash(bytes))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_value(digit: u8) -> Result<u8, ParseHashError> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        _ => Err(ParseHashError),
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.hex())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not `blake3:` followed by 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseHashError;

impl fmt::Display for ParseHashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a hash is written blake3: followed by 64 lowercase hex digits")
    }
}

impl std::error::Error for ParseHashError {}

impl FromStr for BlobHash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<BlobHash, ParseHashError> {
        s.strip_prefix(PREFIX)
            .ok_or(ParseHashError)
            .and_then(BlobHash::from_hex)
    }
}

impl serde::Serialize for BlobHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BlobHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<BlobHash, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What [`BlobStore::put`] or [`BlobStore::put_file`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    /// The contents' hash: the blob's name.
    pub hash: BlobHash,
    /// The contents' size in bytes.
    pub size: u64,
    /// `true` if this put created the blob; `false` if the store already held these bytes.
    pub created_new: bool,
}

/// Why a put stored nothing.
#[derive(Debug)]
pub enum BlobError {
    /// The body went past the limit the caller set (nothing kept).
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The body's hash is not the one the caller expected (nothing kept).
    HashMismatch {
        /// The hash the caller said the body has.
        expected: BlobHash,
        /// The hash the body has.
        actual: BlobHash,
    },
    /// Reading the body failed (for an upload: the client went away, or sent something that
    /// is not what it said). Whatever the reader's error says is kept as the source.
    Read(io::Error),
    /// Writing the blob failed (disk full, permissions...).
    Write(io::Error),
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobError::TooLarge { limit } => write!(f, "the body is larger than {limit} bytes"),
            BlobError::HashMismatch { expected, actual } => {
                write!(
                    f,
                    "the body's hash is {actual}, not the expected {expected}"
                )
            }
            BlobError::Read(e) => write!(f, "reading the body: {e}"),
            BlobError::Write(e) => write!(f, "writing the blob: {e}"),
        }
    }
}

impl std::error::Error for BlobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BlobError::Read(e) | BlobError::Write(e) => Some(e),
            BlobError::TooLarge { .. } | BlobError::HashMismatch { .. } => None,
        }
    }
}

/// The content-addressed store (see the module documentation). Cheap to clone; safe to use
/// from many threads at once.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the store in `dir`, removing temporary files a crash left
    /// behind.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<BlobStore> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if durable::is_temporary(&name.to_string_lossy()) {
                if let Err(e) = fs::remove_file(entry.path()) {
                    log::warn!("removing {}: {e}", entry.path().display());
                }
            }
        }
        Ok(BlobStore { dir })
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Streams `reader` into the store while hashing it, through one bounded buffer.
    ///
    /// More than `limit` bytes is [`BlobError::TooLarge`]; a hash other than `expected` (when
    /// given) is [`BlobError::HashMismatch`]. On any error nothing is kept. Bytes already in the
    /// store are not written twice: the outcome says `created_new: false`.
    pub fn put(
        &self,
        reader: &mut dyn Read,
        limit: u64,
        expected: Option<&BlobHash>,
    ) -> Result<PutOutcome, BlobError> {
        let temp = self.incoming()?;
        let received = receive(reader, &temp, limit);
        let (hash, size) = match received {
            Ok(done) => done,
            Err(e) => {
                remove_quietly(&temp);
                return Err(e);
            }
        };
        if let Some(expected) = expected {
            if *expected != hash {
                remove_quietly(&temp);
                return Err(BlobError::HashMismatch {
                    expected: *expected,
                    actual: hash,
                });
            }
        }
        self.commit(&temp, hash, size)
    }

    /// Stores the existing file at `path` (left where it is): hashes it, then hard-links it
    /// into the store, or copies it when a link is impossible (another file system). The file
    /// must not change while this runs or afterwards (a hard link shares its bytes).
    pub fn put_file(&self, path: &Path) -> Result<PutOutcome, BlobError> {
        let (hash, size) = hash_file(path).map_err(BlobError::Read)?;
        if self.contains(&hash) {
            return Ok(PutOutcome {
                hash,
                size,
                created_new: false,
            });
        }
        let temp = self.incoming()?;
        if let Err(e) = durable::link_or_copy(path, &temp) {
            remove_quietly(&temp);
            return Err(BlobError::Write(e));
        }
        self.commit(&temp, hash, size)
    }

    /// Whether the store holds the blob `hash`.
    pub fn contains(&self, hash: &BlobHash) -> bool {
        self.path(hash).is_file()
    }

    /// The size of the blob `hash`, if the store holds it.
    pub fn size(&self, hash: &BlobHash) -> Option<u64> {
        fs::metadata(self.path(hash))
            .ok()
            .filter(|meta| meta.is_file())
            .map(|meta| meta.len())
    }

    /// Where the blob `hash` is (or would be) kept. Read it, never write it.
    pub fn path(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Opens the blob `hash` for reading (`NotFound` if the store does not hold it).
    ///
    /// (Named `open_blob` because `open` is the constructor.)
    pub fn open_blob(&self, hash: &BlobHash) -> io::Result<File> {
        File::open(self.path(hash))
    }

    /// Removes the blob `hash` (nothing happens if it is absent). The caller makes sure nothing
    /// refers to it any more.
    pub fn remove(&self, hash: &BlobHash) -> io::Result<()> {
        match fs::remove_file(self.path(hash)) {
            Ok(()) => durable::sync_parent(&self.path(hash)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A fresh temporary path in the store's folder for a write in progress.
    fn incoming(&self) -> Result<PathBuf, BlobError> {
        durable::temporary_beside(&self.dir.join("incoming")).map_err(BlobError::Write)
    }

    /// Moves the synced temporary file `temp` to the blob's name, unless the store already has
    /// it (then `temp` is dropped and the existing blob kept).
    fn commit(&self, temp: &Path, hash: BlobHash, size: u64) -> Result<PutOutcome, BlobError> {
        let target = self.path(&hash);
        if target.is_file() {
            remove_quietly(temp);
            return Ok(PutOutcome {
                hash,
                size,
                created_new: false,
            });
        }
        let moved = self
            .make_fanout(&target)
            .and_then(|()| durable::rename(temp, &target));
        if let Err(e) = moved {
            remove_quietly(temp);
            return Err(BlobError::Write(e));
        }
        Ok(PutOutcome {
            hash,
            size,
            created_new: true,
        })
    }

    /// Creates the fan-out folder of `target` durably if it does not exist yet.
    fn make_fanout(&self, target: &Path) -> io::Result<()> {
        let Some(folder) = target.parent() else {
            return Ok(());
        };
        if folder.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(folder)?;
        durable::sync_parent(folder)
    }
}

/// Copies `reader` into a new file at `temp` while hashing, stopping past `limit`; the file is
/// synced before this returns.
fn receive(reader: &mut dyn Read, temp: &Path, limit: u64) -> Result<(BlobHash, u64), BlobError> {
    let mut file = File::create(temp).map_err(BlobError::Write)?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; BUFFER];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BlobError::Read(e)),
        };
        size += n as u64;
        if size > limit {
            return Err(BlobError::TooLarge { limit });
        }
        hasher.update(&buffer[..n]);
        file.write_all(&buffer[..n]).map_err(BlobError::Write)?;
    }
    file.sync_all().map_err(BlobError::Write)?;
    Ok((BlobHash(*hasher.finalize().as_bytes()), size))
}

/// The hash and size of the file at `path`, read through one bounded buffer (nothing stored).
pub fn hash_file(path: &Path) -> io::Result<(BlobHash, u64)> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(File::open(path)?)?;
    Ok((BlobHash(*hasher.finalize().as_bytes()), hasher.count()))
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!("removing {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids;

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("blobs-test-{}", ids::new_uuid()))
    }

    /// Every file under `dir`, relative, sorted (temporaries included).
    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).expect("read dir") {
            let entry = entry.expect("entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() {
                for inner in files(&entry.path()) {
                    out.push(format!("{name}/{inner}"));
                }
            } else {
                out.push(name);
            }
        }
        out.sort();
        out
    }

    /// A reader that hands out at most `chunk` bytes per read and counts the largest read
    /// buffer it was given, to show the store never asks for the whole body at once.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
        largest_request: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.largest_request = self.largest_request.max(buf.len());
            let n = buf.len().min(self.chunk).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn hash_text_form_round_trips_and_rejects_anything_else() {
        let hash = BlobHash::of(b"hello");
        let text = hash.to_string();
        assert_eq!(
            text,
            "blake3:ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
        );
        assert_eq!(text.parse::<BlobHash>(), Ok(hash));
        assert_eq!(hash.hex(), &text[7..]);
        assert_eq!(BlobHash::from_hex(&hash.hex()), Ok(hash));
        for bad in [
            "",
            "blake3:",
            &hash.hex(),
            &format!("sha256:{}", hash.hex()),
            &format!("blake3:{}", hash.hex().to_uppercase()),
            &format!("blake3:{}0", hash.hex()),
            &format!("blake3:{}", &hash.hex()[1..]),
            "blake3:zz8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f",
        ] {
            assert_eq!(bad.parse::<BlobHash>(), Err(ParseHashError), "{bad}");
        }
        let json = serde_json::to_string(&hash).expect("serialise");
        assert_eq!(json, format!("\"{text}\""));
        let back: BlobHash = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, hash);
        assert!(serde_json::from_str::<BlobHash>("\"blake3:12\"").is_err());
    }

    #[test]
    fn put_streams_a_body_hashes_it_and_keeps_it_once() {
        let dir = scratch();
        let store = BlobStore::open(&dir).expect("open");
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut reader = Trickle {
            data: &body,
            chunk: 10_000,
            largest_request: 0,
        };
        let first = store.put(&mut reader, 1 << 20, None).expect("put");
        assert!(
            reader.largest_request <= BUFFER,
            "asked for {}",
            reader.largest_request
        );
        assert_eq!(first.hash, BlobHash::of(&body));
        assert_eq!(first.size, body.len() as u64);
        assert!(first.created_new);
        assert!(store.contains(&first.hash));
        assert_eq!(store.size(&first.hash), Some(body.len() as u64));
        let mut stored = Vec::new();
        store
            .open_blob(&first.hash)
            .expect("open blob")
            .read_to_end(&mut stored)
            .expect("read blob");
        assert_eq!(stored, body);

        let again = store
            .put(&mut body.as_slice(), 1 << 20, Some(&first.hash))
            .expect("put again");
        assert_eq!(again.hash, first.hash);
        assert!(!again.created_new);
        let hex = first.hash.hex();
        assert_eq!(files(&dir), [format!("{}/{hex}", &hex[..2])]);
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn an_empty_body_is_a_blob_too() {
        let dir = scratch();
        let store = BlobStore::open(&dir).expect("open");
        let outcome = store.put(&mut io::empty(), 0, None).expect("put");
        assert_eq!(outcome.hash, BlobHash::of(b""));
        assert_eq!(outcome.size, 0);
        assert_eq!(store.size(&outcome.hash), Some(0));
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_body_over_the_limit_is_refused_and_nothing_is_kept() {
        let dir = scratch();
        let store = BlobStore::open(&dir).expect("open");
        let exactly = store
            .put(&mut &[7u8; 100][..], 100, None)
            .expect("at limit");
        assert_eq!(exactly.size, 100);
        match store.put(&mut &[8u8; 101][..], 100, None) {
            Err(BlobError::TooLarge { limit: 100 }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(!store.contains(&BlobHash::of(&[8u8; 101])));
        assert_eq!(files(&dir).len(), 1, "{:?}", files(&dir));
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_hash_mismatch_is_refused_and_nothing_is_kept() {
        let dir = scratch();
        let store = BlobStore::open(&dir).expect("open");
        let expected = BlobHash::of(b"what the client meant");
        match store.put(&mut &b"what arrived"[..], 1000, Some(&expected)) {
            Err(BlobError::HashMismatch {
                expected: said,
                actual,
            }) => {
                assert_eq!(said, expected);
                assert_eq!(actual, BlobHash::of(b"what arrived"));
            }
            other => panic!("expected HashMismatch, got {other:?}"),
        }
        assert!(files(&dir).is_empty(), "{:?}", files(&dir));
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_failing_reader_is_a_read_error_and_nothing_is_kept() {
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone"));
                }
                self.0 -= 1;
                buf[0] = 1;
                Ok(1)
            }
        }
        let dir = scratch();
        let store = BlobStore::open(&dir).expect("open");
        match store.put(&mut Broken(3), 1000, None) {
            Err(BlobError::Read(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            other => panic!("expected Read, got {other:?}"),
        }
        assert!(files(&dir).is_empty(), "{:?}", files(&dir));
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn put_file_takes_an_existing_file_and_leaves_it_in_place() {
        let dir = scratch();
        let store = BlobStore::open(dir.join("blobs")).expect("open");
        let source = dir.join("output.png");
        fs::write(&source, b"pretend png").expect("write source");
        let outcome = store.put_file(&source).expect("put_file");
        assert_eq!(outcome.hash, BlobHash::of(b"pretend png"));
        assert_eq!(outcome.size, 11);
        assert!(outcome.created_new);
        assert_eq!(fs::read(&source).expect("source"), b"pretend png");
        assert_eq!(
            fs::read(store.path(&outcome.hash)).expect("blob"),
            b"pretend png"
        );
        let again = store.put_file(&source).expect("again");
        assert!(!again.created_new);
        let via_put = store
            .put(&mut &b"pretend png"[..], 100, None)
            .expect("same bytes by put");
        assert!(!via_put.created_new);
        match store.put_file(&dir.join("missing")) {
            Err(BlobError::Read(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("expected Read, got {other:?}"),
        }
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn open_removes_crash_leftovers_and_keeps_blobs() {
        let dir = scratch();
        let store = BlobStore::open(&dir).expect("open");
        let kept = store.put(&mut &b"kept"[..], 100, None).expect("put");
        let leftover = durable::temporary_beside(&dir.join("incoming")).expect("temp");
        fs::write(&leftover, b"half a body").expect("leftover");
        let reopened = BlobStore::open(&dir).expect("reopen");
        assert!(!leftover.exists());
        assert!(reopened.contains(&kept.hash));
        reopened.remove(&kept.hash).expect("remove");
        assert!(!reopened.contains(&kept.hash));
        assert_eq!(reopened.size(&kept.hash), None);
        reopened.remove(&kept.hash).expect("removing twice is fine");
        assert_eq!(
            reopened
                .open_blob(&kept.hash)
                .map(drop)
                .map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
        fs::remove_dir_all(dir).ok();
    }
}
