//! Pending deliveries on disk (`DATA_DIR/webhooks/{id}.json`), so that they survive a restart.
//!
//! A delivery is written durably (`crate::durable`: a temporary file, synced, renamed, the folder
//! synced) before its first attempt and removed once it was delivered or given up. At start-up
//! every file left is loaded and tried again.

use serde::{Deserialize, Serialize};
use std::fs;

use crate::durable;
use std::io;
use std::path::{Path, PathBuf};

/// One webhook to deliver, as it is kept on disk. The body is stored, not the signature: each
/// attempt is signed afresh with its own timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The `webhook-id` header: `msg_` + 32 hex digits, the same on every attempt.
    pub id: String,
    /// Where it goes.
    pub url: String,
    /// The event name (the body's `type`).
    pub event: String,
    /// The job it is about.
    pub job_id: String,
    /// The exact bytes sent and signed.
    pub body: String,
    /// When it was created (Unix seconds): retries stop `WEBHOOK_RETRY_HOURS` after this.
    pub created_unix: u64,
}

impl Delivery {
    /// A fresh `webhook-id`.
    pub fn new_id() -> String {
        format!("msg_{}", crate::ids::new_uuid().replace('-', ""))
    }
}

/// Whether `id` is one this gateway makes (so it is safe as a file name).
fn is_valid_id(id: &str) -> bool {
    id.strip_prefix("msg_")
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// The folder of pending deliveries.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating it if needed) the folder.
    pub fn open(dir: PathBuf) -> io::Result<Store> {
        fs::create_dir_all(&dir)?;
        Ok(Store { dir })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes the delivery atomically: a crash leaves either no file or a complete one.
    pub fn save(&self, delivery: &Delivery) -> io::Result<()> {
        if !is_valid_id(&delivery.id) {
            return Err(io::Error::other(format!(
                "bad webhook id {:?}",
                delivery.id
            )));
        }
        let json = serde_json::to_vec(delivery).map_err(io::Error::other)?;
        durable::write_bytes(&self.path_of(&delivery.id), &json)
    }

    /// Forgets a delivery (delivered or given up). A missing file is fine.
    pub fn remove(&self, id: &str) {
        if !is_valid_id(id) {
            return;
        }
        match fs::remove_file(self.path_of(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!(
                "cannot remove the delivered webhook {id} from {}: {e}",
                self.dir.display()
            ),
        }
    }

    /// Every pending delivery, oldest first. Unreadable files are renamed `*.bad` and logged;
    /// leftover temporary files are removed.
    pub fn load(&self) -> Vec<Delivery> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                log::warn!(
                    "cannot list pending webhooks in {}: {e}",
                    self.dir.display()
                );
                return Vec::new();
            }
        };
        let mut found = Vec::new();
        for path in entries.filter_map(|entry| entry.ok().map(|e| e.path())) {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            // `.ID.json.tmp`: what gateways before `crate::durable` left behind.
            if durable::is_temporary(name) || name.ends_with(".json.tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<Delivery>(&bytes).map_err(|e| e.to_string())
                })
                .and_then(
                    |d| match is_valid_id(&d.id) && name == format!("{}.json", d.id) {
                        true => Ok(d),
                        false => Err("its id does not match its file name".to_string()),
                    },
                );
            match parsed {
                Ok(delivery) => found.push(delivery),
                Err(e) => {
                    log::warn!("ignoring the pending webhook {}: {e}", path.display());
                    let _ = fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
        found.sort_by(|a, b| (a.created_unix, &a.id).cmp(&(b.created_unix, &b.id)));
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: &str, created_unix: u64) -> Delivery {
        Delivery {
            id: id.into(),
            url: "http://127.0.0.1:9/".into(),
            event: "complete".into(),
            job_id: "j".into(),
            body: r#"{"job_id":"j","type":"complete"}"#.into(),
            created_unix,
        }
    }

    #[test]
    fn deliveries_survive_a_reopen_and_bad_files_are_set_aside() {
        let dir = std::env::temp_dir().join(format!("webhook-store-{}", crate::ids::new_uuid()));
        let store = Store::open(dir.clone()).expect("opens");
        store.save(&delivery("msg_b2", 20)).expect("saved");
        store.save(&delivery("msg_a1", 10)).expect("saved");
        fs::write(dir.join("msg_zz.json"), b"{not json").expect("written");
        fs::write(dir.join(".msg_cc.json.tmp"), b"{half").expect("written");
        let again = Store::open(dir.clone()).expect("reopens");
        let loaded = again.load();
        assert_eq!(loaded, vec![delivery("msg_a1", 10), delivery("msg_b2", 20)]);
        assert!(dir.join("msg_zz.bad").exists());
        assert!(!dir.join(".msg_cc.json.tmp").exists());
        again.remove("msg_a1");
        again.remove("msg_a1"); // twice is fine
        assert_eq!(again.load(), vec![delivery("msg_b2", 20)]);
        assert!(store.save(&delivery("../escape", 1)).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn ids_are_safe_file_names() {
        let id = Delivery::new_id();
        assert!(is_valid_id(&id), "{id}");
        assert_eq!(id.len(), 4 + 32);
        assert!(!id.contains('.'), "the signed content is dot-delimited");
    }
}
