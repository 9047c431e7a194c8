//! Identifiers and randomness: job ids, prompt ids, UUIDs and seeds.
//!
//! The gateway needs unpredictable values in three places: job ids (which also name stored
//! images), metadata row ids, and seeds drawn for `"default": "random"` parameters. They come from
//! the operating system's random source (`getrandom`, already in the tree through tungstenite),
//! so no random-number generator of our own is needed.

use std::fmt;
use std::hash::{BuildHasher, Hasher};

/// Fills `buf` with random bytes from the operating system (`getrandom(2)` on Linux).
///
/// Should the OS refuse (an unusual sandbox), falls back to SipHash keyed by the standard
/// library's per-process random keys, mixed with a counter and the clock: unpredictable enough
/// for ids and seeds, which are not secrets.
pub fn fill_random(buf: &mut [u8]) {
    if getrandom::fill(buf).is_ok() {
        return;
    }
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_usize(i);
        if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            hasher.write_u128(now.as_nanos());
        }
        let bytes = hasher.finish().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// A uniformly random `u64`, e.g. a fresh ComfyUI seed.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    fill_random(&mut buf);
    u64::from_le_bytes(buf)
}

/// A random version-4 UUID in its canonical hyphenated lowercase form.
pub fn new_uuid() -> String {
    let mut b = [0u8; 16];
    fill_random(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Whether `s` has the canonical shape of a UUID (8-4-4-4-12 lowercase or uppercase hex digits).
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The gateway's id for one generation; a UUID, also the folder its images are stored under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// A fresh random job id.
    pub fn new() -> JobId {
        JobId(new_uuid())
    }

    /// Parses a job id from a URL segment; `None` unless it is a UUID.
    pub fn parse(s: &str) -> Option<JobId> {
        is_uuid(s).then(|| JobId(s.to_ascii_lowercase()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// ComfyUI's id for a queued prompt, as `/prompt` returned it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PromptId(pub String);

impl PromptId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PromptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_v4_and_distinct() {
        let a = new_uuid();
        let b = new_uuid();
        assert!(is_uuid(&a), "{a}");
        assert_ne!(a, b);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn job_ids_parse_only_uuids() {
        let id = JobId::new();
        assert_eq!(JobId::parse(id.as_str()), Some(id));
        assert_eq!(JobId::parse("../etc/passwd"), None);
        assert_eq!(JobId::parse(""), None);
    }
}
