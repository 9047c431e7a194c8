//! `Idempotency-Key` for `POST /api/v2/jobs`, by Stripe's rules, kept 24 hours on disk.
//!
//! - a key seen with the same body gets the recorded answer again (the caller adds
//!   `Idempotency-Replayed: true`) and nothing runs twice;
//! - the same key with another body is refused (`422 idempotency_key_reuse`);
//! - a retry while the first request is still being answered is refused (`409
//!   idempotency_conflict`, `Retry-After`);
//! - only a success is recorded: a request refused before its job existed (bad workflow, full
//!   queue) leaves the key free, as Stripe does for requests that failed validation.
//!
//! Keys are scoped by the caller's bearer token, so two API keys never share answers. Each
//! record is a file `DATA_DIR/v2/idempotency/<sha256 of token and key>.json` written through
//! [`crate::durable`] before the answer is sent, so a restarted gateway replays it too.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::{durable, timestamp};

/// How long a key is remembered.
pub const KEY_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest key accepted (the SDK's limit too).
pub const MAX_KEY_LEN: usize = 255;

/// A recorded answer, as kept on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    /// The SHA-256 of the request body, canonical JSON.
    pub fingerprint: String,
    /// The answer's status.
    pub status: u16,
    /// The answer's body.
    pub body: Value,
    /// When the key was first used (Unix ms).
    pub created_unix_ms: u64,
}

enum Entry {
    /// The first request with this key is being answered.
    InFlight { fingerprint: String },
    /// Its answer: in memory only when it could not be written to disk, else read back from
    /// its file when replayed (a day of keys costs a few dozen bytes each in memory).
    Done(Recorded),
}

/// A recorded answer as kept in memory: its body only if the disk refused it.
fn in_memory(record: Recorded, written: bool) -> Recorded {
    if written {
        Recorded {
            body: Value::Null,
            ..record
        }
    } else {
        record
    }
}

/// What a request with a key should do.
pub enum Begin<'a> {
    /// The key is new: answer, then [`Claim::record`] the answer (dropping the claim frees it).
    Fresh(Claim<'a>),
    /// Same key, same body: send this answer again.
    Replay(Recorded),
    /// Same key, another body.
    Reused,
    /// Same key while the first request is still being answered.
    InFlight,
    /// Same key and body, but the answer recorded on disk cannot be read (why); the request
    /// must not run again.
    Unreadable(String),
}

/// The keys seen in the last 24 hours and the answers recorded for them.
pub struct Idempotency {
    dir: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Idempotency {
    /// Opens (creating) `dir`, reads back the records younger than 24 hours and deletes the
    /// older ones (and unreadable ones: a record is written whole or not at all).
    pub fn open(dir: PathBuf) -> std::io::Result<Idempotency> {
        std::fs::create_dir_all(&dir)?;
        let now = timestamp::unix_millis();
        let mut entries = HashMap::new();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if durable::is_temporary(&name) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(scope) = name.strip_suffix(".json") else {
                continue;
            };
            let record = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Recorded>(&bytes).ok());
            match record {
                Some(record) if !expired(&record, now) => {
                    entries.insert(scope.to_string(), Entry::Done(in_memory(record, true)));
                }
                _ => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(Idempotency {
            dir,
            entries: Mutex::new(entries),
        })
    }

    /// Where the records live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks `key` up for a request by `token` with `body` (its canonical JSON).
    pub fn begin(&self, token: Option<&str>, key: &str, body: &Value) -> Begin<'_> {
        let scope = scope_of(token, key);
        let fingerprint = hex(&Sha256::digest(body.to_string().as_bytes()));
        let now = timestamp::unix_millis();
        let mut entries = self.lock();
        match entries.get(&scope) {
            Some(Entry::InFlight { fingerprint: first }) => {
                if *first == fingerprint {
                    return Begin::InFlight;
                }
                return Begin::Reused;
            }
            Some(Entry::Done(record)) if !expired(record, now) => {
                if record.fingerprint == fingerprint {
                    return match self.read_back(&scope, record) {
                        Ok(recorded) => Begin::Replay(recorded),
                        Err(why) => Begin::Unreadable(why),
                    };
                }
                return Begin::Reused;
            }
            Some(Entry::Done(_)) => {
                let _ = std::fs::remove_file(self.path_of(&scope));
            }
            None => {}
        }
        entries.insert(
            scope.clone(),
            Entry::InFlight {
                fingerprint: fingerprint.clone(),
            },
        );
        self.prune(&mut entries, now);
        Begin::Fresh(Claim {
            store: self,
            scope,
            fingerprint,
            recorded: false,
        })
    }

    /// Forgets expired records (memory and files), at most once per call of `begin`.
    fn prune(&self, entries: &mut HashMap<String, Entry>, now: u64) {
        let old: Vec<String> = entries
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Done(r) if expired(r, now)))
            .map(|(scope, _)| scope.clone())
            .collect();
        for scope in old {
            entries.remove(&scope);
            let _ = std::fs::remove_file(self.path_of(&scope));
        }
    }

    /// The whole recorded answer: from memory when it is there, else from its file. A file
    /// that cannot be read any more is answered as `500 internal` rather than run twice.
    fn read_back(&self, scope: &str, record: &Recorded) -> Result<Recorded, String> {
        if !record.body.is_null() {
            return Ok(record.clone());
        }
        let path = self.path_of(scope);
        match std::fs::read(&path).map(|bytes| serde_json::from_slice::<Recorded>(&bytes)) {
            Ok(Ok(full)) => Ok(full),
            failed => {
                let why = match failed {
                    Err(e) => e.to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(_)) => String::new(),
                };
                log::error!(
                    "the idempotency record {} cannot be read: {why}",
                    path.display()
                );
                Err(format!("{}: {why}", path.display()))
            }
        }
    }

    fn path_of(&self, scope: &str) -> PathBuf {
        self.dir.join(format!("{scope}.json"))
    }
}

/// A key being answered for the first time. Dropped without [`Claim::record`], the key is
/// free again.
pub struct Claim<'a> {
    store: &'a Idempotency,
    scope: String,
    fingerprint: String,
    recorded: bool,
}

impl Claim<'_> {
    /// Records the answer durably, then makes it the key's answer.
    pub fn record(mut self, status: u16, body: &Value) -> std::io::Result<()> {
        let record = Recorded {
            fingerprint: self.fingerprint.clone(),
            status,
            body: body.clone(),
            created_unix_ms: timestamp::unix_millis(),
        };
        let bytes = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        let written = durable::write_bytes(&self.store.path_of(&self.scope), &bytes);
        // Even if the disk refused, the answer holds for this process's lifetime: a retry must
        // not start a second job.
        self.store.lock().insert(
            self.scope.clone(),
            Entry::Done(in_memory(record, written.is_ok())),
        );
        self.recorded = true;
        written
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.store.lock().remove(&self.scope);
        }
    }
}

fn expired(record: &Recorded, now: u64) -> bool {
    now.saturating_sub(record.created_unix_ms) >= KEY_LIFETIME.as_millis() as u64
}

/// The file-safe name of a key within a token's scope.
fn scope_of(token: Option<&str>, key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(token.unwrap_or("").as_bytes());
    hasher.update([0u8]);
    hasher.update(key.as_bytes());
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `key` is a usable `Idempotency-Key`: 1 to 255 printable ASCII characters.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| (0x20..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> (Idempotency, PathBuf) {
        let dir = std::env::temp_dir().join(format!("v2-idem-{}", crate::ids::new_uuid()));
        (Idempotency::open(dir.clone()).expect("opens"), dir)
    }

    #[test]
    fn same_body_replays_other_body_is_reuse_and_inflight_is_a_conflict() {
        let (store, dir) = store();
        let body = json!({"workflow": {"1": {}}});
        let Begin::Fresh(claim) = store.begin(Some("t"), "k", &body) else {
            panic!("a new key is fresh");
        };
        assert!(matches!(
            store.begin(Some("t"), "k", &body),
            Begin::InFlight
        ));
        assert!(matches!(
            store.begin(Some("t"), "k", &json!({"workflow": {}})),
            Begin::Reused
        ));
        // Another token's key of the same name is its own.
        assert!(matches!(
            store.begin(Some("u"), "k", &body),
            Begin::Fresh(_)
        ));
        claim.record(201, &json!({"id": "j"})).expect("recorded");
        let Begin::Replay(recorded) = store.begin(Some("t"), "k", &body) else {
            panic!("same key and body replay");
        };
        assert_eq!(
            (recorded.status, recorded.body["id"].clone()),
            (201, json!("j"))
        );
        assert!(matches!(
            store.begin(Some("t"), "k", &json!({"other": 1})),
            Begin::Reused
        ));
        // A restarted gateway replays it too.
        let again = Idempotency::open(dir.clone()).expect("reopens");
        assert!(matches!(
            again.begin(Some("t"), "k", &body),
            Begin::Replay(_)
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_claim_dropped_without_an_answer_frees_the_key() {
        let (store, dir) = store();
        let body = json!({});
        drop(store.begin(None, "k", &body));
        assert!(matches!(store.begin(None, "k", &body), Begin::Fresh(_)));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn records_older_than_a_day_are_forgotten_at_start() {
        let (store, dir) = store();
        let old = Recorded {
            fingerprint: "f".into(),
            status: 201,
            body: json!({}),
            created_unix_ms: timestamp::unix_millis() - KEY_LIFETIME.as_millis() as u64 - 1,
        };
        let path = store.path_of(&scope_of(None, "old"));
        durable::write_bytes(&path, &serde_json::to_vec(&old).expect("json")).expect("written");
        let again = Idempotency::open(dir.clone()).expect("reopens");
        assert!(!path.exists(), "the expired record is deleted");
        assert!(matches!(
            again.begin(None, "old", &json!({})),
            Begin::Fresh(_)
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn keys_must_be_short_printable_ascii() {
        assert!(valid_key("6f1c-uuid"));
        assert!(!valid_key(""));
        assert!(!valid_key(&"x".repeat(256)));
        assert!(!valid_key("a\nb"));
    }
}
