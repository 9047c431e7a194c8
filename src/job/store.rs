//! Jobs on disk: one JSON file per job in `DATA_DIR/jobs/`, so that a restarted gateway resumes
//! the queue, reconciles running prompts and still answers for finished jobs.
//!
//! A file is written whenever the job changes in a way that matters after a restart (accepted,
//! sent to ComfyUI, started, requeued, finished) through [`crate::durable`]: a temporary file,
//! synced, renamed over the old one, and the folder synced, so a crash or a power cut leaves
//! either the old or the new version, never half of one, and a job reported `queued` is on disk.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::log::Event;
use super::plan::PlanRecord;
use crate::api::{ApiError, RequestOptions};
use crate::durable;
use crate::ids::{JobId, PromptId};

/// A job as saved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id.
    pub id: String,
    /// Its arrival number (orders it within its priority).
    pub seq: u64,
    /// The workflow name.
    pub workflow: String,
    /// When it was accepted, RFC 3339.
    pub created_at: String,
    /// The same, in Unix milliseconds.
    pub created_unix_ms: u64,
    /// Priority and the other request options.
    pub options: RequestOptions,
    /// What to run.
    pub plan: PlanRecord,
    /// The state's API name.
    pub state: String,
    /// The prompt on its backend, while it has one.
    pub run: Option<RunRecord>,
    /// Where the job ran, after its run.
    #[serde(default)]
    pub last_backend: Option<String>,
    /// Its prompt, after its run.
    #[serde(default)]
    pub last_prompt: Option<PromptId>,
    /// Output branches ComfyUI dropped.
    #[serde(default)]
    pub warnings: Vec<Value>,
    /// Every event but progress ticks and previews.
    pub events: Vec<Event>,
    /// The id the next event would have had when this was written.
    pub next_event_id: u64,
    /// Times a ComfyUI lost the job's started prompt (`LOST_RETRIES` bounds the resends).
    #[serde(default)]
    pub losses: u32,
    /// When this was written, Unix milliseconds.
    pub saved_unix_ms: u64,
    /// When the job ended, Unix milliseconds.
    pub finished_unix_ms: Option<u64>,
    /// The `complete` data, once completed.
    pub result: Option<Value>,
    /// The error, once failed.
    pub error: Option<ApiError>,
}

/// A job's prompt on a backend, as saved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunRecord {
    /// The backend's base URL.
    pub backend_url: String,
    /// ComfyUI's prompt id.
    pub prompt_id: PromptId,
    /// Whether ComfyUI had started executing it.
    pub started: bool,
}

/// The folder of saved jobs.
pub struct JobStore {
    dir: PathBuf,
}

impl JobStore {
    /// The store in `dir`, created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<JobStore> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(JobStore { dir })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes a job's record durably, replacing the previous one atomically
    /// ([`crate::durable::write_bytes`]): once this returns, the record survives a power cut.
    pub fn save(&self, record: &JobRecord) -> io::Result<()> {
        let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        durable::write_bytes(&self.path(&record.id), &bytes)
    }

    /// Removes a job's record (the job expired).
    pub fn remove(&self, id: &JobId) -> io::Result<()> {
        match fs::remove_file(self.path(id.as_str())) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every readable record, oldest first. Unreadable files are reported and skipped (a
    /// corrupt file must not stop the gateway), and leftover temporary files are removed.
    pub fn load(&self) -> io::Result<Vec<JobRecord>> {
        let mut records = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if durable::is_temporary(name) {
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<JobRecord>(&bytes).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(record) => records.push(record),
                Err(e) => log::error!("skipping unreadable job file {}: {e}", path.display()),
            }
        }
        records.sort_by_key(|r| (r.created_unix_ms, r.seq));
        Ok(records)
    }
}

/// The jobs read back at start-up, to be resumed when the engine starts.
#[derive(Default)]
pub struct Restored {
    /// Jobs that were waiting in the gateway's queue, oldest first.
    pub waiting: Vec<std::sync::Arc<super::Job>>,
    /// Jobs whose prompt was on a backend.
    pub on_backends: Vec<super::engine::RestoredRun>,
    /// The arrival number for the next new job.
    pub next_seq: u64,
}

/// Reads every saved job back into `registry`: finished ones (until their retention ends, when
/// their file is removed) to stay readable, unfinished ones to be resumed. `templates` and
/// `blobs` read the input images of records older gateways wrote.
pub fn restore_jobs(
    store: &JobStore,
    registry: &super::JobRegistry,
    run: &super::RunSettings,
    retention: std::time::Duration,
    templates: &crate::workflow::Templates,
    blobs: &crate::blobs::BlobStore,
) -> Restored {
    use std::sync::Arc;
    let records = match store.load() {
        Ok(records) => records,
        Err(e) => {
            log::error!("cannot read saved jobs in {}: {e}", store.dir().display());
            return Restored::default();
        }
    };
    let mut restored = Restored {
        next_seq: 1,
        ..Restored::default()
    };
    let now_ms = crate::timestamp::unix_millis();
    for record in records {
        restored.next_seq = restored.next_seq.max(record.seq + 1);
        let expired = record.finished_unix_ms.is_some_and(|end| {
            now_ms.saturating_sub(end) >= u64::try_from(retention.as_millis()).unwrap_or(u64::MAX)
        });
        let id = record.id.clone();
        if expired {
            if let Some(id) = JobId::parse(&id) {
                let _ = store.remove(&id);
            }
            continue;
        }
        let (job, saved_run) =
            match super::Job::from_record(record, run.progress_interval, templates, blobs) {
                Ok(restored) => restored,
                Err(e) => {
                    log::error!("cannot restore saved job {id}: {e}");
                    continue;
                }
            };
        let job = Arc::new(job);
        registry.insert(Arc::clone(&job));
        if job.is_finished() {
            continue;
        }
        match saved_run {
            Some(run) => restored
                .on_backends
                .push(super::engine::RestoredRun { job, run }),
            None => restored.waiting.push(job),
        }
    }
    if !restored.waiting.is_empty() || !restored.on_backends.is_empty() {
        log::info!(
            "resuming {} waiting jobs and {} jobs that were on a ComfyUI",
            restored.waiting.len(),
            restored.on_backends.len()
        );
    }
    restored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_written_durably_and_interrupted_writes_are_cleared() {
        let dir = std::env::temp_dir().join(format!("job-store-{}", crate::ids::new_uuid()));
        let store = JobStore::open(&dir).expect("opens");
        // What a power cut during `save` leaves: `durable`'s temporary beside the record.
        let leftover = durable::temporary_beside(&store.path("0f0f")).expect("a name");
        fs::write(&leftover, b"{\"id\":\"0f0").expect("writable");
        assert!(store.load().expect("loads").is_empty());
        assert!(!leftover.exists(), "the half-written record is removed");
        fs::remove_dir_all(dir).ok();
    }
}
