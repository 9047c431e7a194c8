//! Jobs: one generation each, from ComfyUI's acceptance of the prompt to its terminal event.
//!
//! A [`Job`] is shared between the job thread that drives it (`runner`), the request threads that
//! stream its events, and the [`JobRegistry`] that keeps it findable after its client left. Its
//! state and its [`EventLog`] sit behind one mutex that is held only to read or append, never
//! across I/O.

mod log;
mod output;
mod progress;
mod registry;
mod runner;

pub use log::{Event, EventKind, EventLog, Subscription};
pub use progress::{Outcome, ProgressTracker};
pub use registry::JobRegistry;
pub use runner::{RunSettings, submit};

use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use crate::api::{ApiError, ErrorCode};
use crate::ids::JobId;
use crate::storage::ImageRecord;
use crate::timestamp;
use crate::webhook::JobEvents;

/// Where a job is in its life. Finished states carry what a client needs to know about them.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    /// Accepted by ComfyUI, waiting in its queue.
    Queued,
    /// ComfyUI is executing the graph.
    Running,
    /// The images are being fetched and stored.
    Uploading,
    /// Done; the `complete` event's data.
    Completed(Arc<Value>),
    /// Ended with an error.
    Failed(ApiError),
    /// Cancelled by a client.
    Cancelled,
}

impl JobState {
    /// The state's name in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Uploading => "uploading",
            JobState::Completed(_) => "completed",
            JobState::Failed(_) => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            JobState::Completed(_) | JobState::Failed(_) | JobState::Cancelled
        )
    }
}

struct JobInner {
    state: JobState,
    log: EventLog,
    progress: Value,
    finished_at: Option<Instant>,
}

/// One generation.
pub struct Job {
    id: JobId,
    workflow: String,
    created_at: String,
    created: Instant,
    cancel_requested: AtomicBool,
    inner: Mutex<JobInner>,
    /// Told of every event (the job's webhooks); set at submission.
    sink: OnceLock<Arc<dyn JobEvents>>,
}

impl Job {
    /// A new job in state `queued` with no events yet.
    pub fn new(workflow: &str) -> Job {
        Job {
            id: JobId::new(),
            workflow: workflow.to_string(),
            created_at: timestamp::now_rfc3339(),
            created: Instant::now(),
            cancel_requested: AtomicBool::new(false),
            inner: Mutex::new(JobInner {
                state: JobState::Queued,
                log: EventLog::default(),
                progress: Value::Null,
                finished_at: None,
            }),
            sink: OnceLock::new(),
        }
    }

    /// The job's id.
    pub fn id(&self) -> &JobId {
        &self.id
    }

    /// The workflow name (`"graph"` for raw graphs).
    pub fn workflow(&self) -> &str {
        &self.workflow
    }

    /// When the job was created (monotonic clock).
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Milliseconds since the job was created.
    pub fn elapsed_ms(&self) -> u64 {
        self.created.elapsed().as_millis() as u64
    }

    fn lock(&self) -> MutexGuard<'_, JobInner> {
        // A panic while holding this lock cannot leave the log half-written (pushes are single
        // Vec operations), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current state.
    pub fn state(&self) -> JobState {
        self.lock().state.clone()
    }

    /// Whether the job has ended.
    pub fn is_finished(&self) -> bool {
        self.lock().state.is_finished()
    }

    /// When the job ended, if it has.
    pub fn finished_at(&self) -> Option<Instant> {
        self.lock().finished_at
    }

    /// Moves an unfinished job to `state` (`running`, `uploading`); finished jobs stay as they are.
    pub fn set_state(&self, state: JobState) {
        let mut inner = self.lock();
        if !inner.state.is_finished() {
            inner.state = state;
        }
    }

    /// Sends every later event to `sink` too (once; a second sink is ignored).
    pub fn set_event_sink(&self, sink: Arc<dyn JobEvents>) {
        let _ = self.sink.set(sink);
    }

    /// Hands an event to the sink, under the job's lock so the sink sees events in order.
    fn tell_sink(&self, event: &Event) {
        if let Some(sink) = self.sink.get() {
            sink.job_event(event.kind.as_str(), &event.data);
        }
    }

    /// Emits a non-terminal event (`queued`, `progress`). `data` gets `job_id` added.
    pub fn publish(&self, kind: EventKind, data: Value) {
        debug_assert!(!kind.is_terminal(), "use finish() for terminal events");
        let mut inner = self.lock();
        if inner.state.is_finished() {
            return;
        }
        if kind == EventKind::Progress {
            inner.progress = data.clone();
        }
        let text = self.with_job_id(data);
        let event = inner.log.push(kind, text);
        self.tell_sink(&event);
    }

    /// Ends the job: records the final state and emits its terminal event, once.
    ///
    /// Returns false (and does nothing) if the job had already ended.
    pub fn finish(&self, state: JobState) -> bool {
        let (kind, data) = match &state {
            JobState::Completed(result) => (EventKind::Complete, (**result).clone()),
            JobState::Failed(error) => (EventKind::Error, json!(error)),
            JobState::Cancelled => (EventKind::Cancelled, json!({})),
            _ => {
                debug_assert!(false, "finish() needs a terminal state");
                return false;
            }
        };
        let mut inner = self.lock();
        if inner.state.is_finished() {
            return false;
        }
        inner.state = state;
        inner.finished_at = Some(Instant::now());
        let text = self.with_job_id(data);
        let event = inner.log.push(kind, text);
        self.tell_sink(&event);
        true
    }

    fn with_job_id(&self, data: Value) -> String {
        let mut object = match data {
            Value::Object(map) => map,
            other => {
                let mut map = serde_json::Map::new();
                map.insert("value".into(), other);
                map
            }
        };
        object.insert("job_id".into(), Value::String(self.id.to_string()));
        Value::Object(object).to_string()
    }

    /// Records that images of a job that failed with `storage_failed` reached storage later
    /// (from the spool): the job becomes `completed`, its result listing the stored images. The
    /// event stream, already ended, is not reopened; the job's webhooks get a `complete`.
    pub fn storage_recovered(&self, rows: &[ImageRecord]) {
        let mut inner = self.lock();
        let JobState::Failed(error) = &inner.state else {
            return;
        };
        if error.code != ErrorCode::StorageFailed {
            return;
        }
        let images: Vec<Value> = rows
            .iter()
            .map(|row| {
                json!({
                    "url": row.url,
                    "key": row.storage_key,
                    "width": row.width,
                    "height": row.height,
                    "bytes": row.bytes,
                    "content_type": crate::image::content_type_for(&row.storage_key),
                })
            })
            .collect();
        let prompt_id = rows.first().and_then(|row| row.prompt_id.clone());
        let params = rows.first().map_or(json!({}), |row| row.params.clone());
        let result = json!({
            "job_id": self.id,
            "prompt_id": prompt_id,
            "workflow": self.workflow,
            "images": images,
            "params": params,
            "recovered_from": error,
        });
        // The stream has ended, but webhooks get the `complete` they were owed.
        if let Some(sink) = self.sink.get() {
            sink.job_event(EventKind::Complete.as_str(), &result.to_string());
        }
        inner.state = JobState::Completed(Arc::new(result));
    }

    /// Subscribes to the job's events after `last_seen` (0: from the start).
    pub fn subscribe(&self, last_seen: u64) -> Subscription {
        self.lock().log.subscribe(last_seen)
    }

    /// Blocks until the job has ended, or until `deadline` passes; returns whether it ended.
    ///
    /// Waits on the job's event channel, so it wakes the moment the terminal event is published.
    pub fn wait_until_finished(&self, deadline: Option<Instant>) -> bool {
        let Some(live) = self.subscribe(u64::MAX).live else {
            return true; // already ended
        };
        loop {
            let next = match deadline {
                Some(deadline) => live.recv_deadline(deadline).ok(),
                None => live.recv().ok(),
            };
            match next {
                Some(event) if event.kind.is_terminal() => return true,
                Some(_) => {}
                // The channel closes right after the terminal event: the job has ended then,
                // unless it was the deadline that passed.
                None => return self.is_finished(),
            }
        }
    }

    /// Asks the job thread to cancel. Returns false if the job had already ended.
    pub fn request_cancel(&self) -> bool {
        if self.is_finished() {
            return false;
        }
        self.cancel_requested.store(true, Ordering::SeqCst);
        true
    }

    /// Whether a client asked to cancel.
    pub fn cancel_requested(&self) -> bool {
        self.cancel_requested.load(Ordering::SeqCst)
    }

    /// The job as `GET /jobs/{id}` shows it.
    pub fn to_json(&self) -> Value {
        let inner = self.lock();
        let (result, error) = match &inner.state {
            JobState::Completed(result) => ((**result).clone(), Value::Null),
            JobState::Failed(error) => (Value::Null, json!(error)),
            _ => (Value::Null, Value::Null),
        };
        // The last tick may predate the end: show the final state, and 100% once completed.
        let mut progress = inner.progress.clone();
        if let Some(fields) = progress.as_object_mut() {
            fields.insert("state".into(), json!(inner.state.as_str()));
            if matches!(inner.state, JobState::Completed(_)) {
                fields.insert("percent".into(), json!(100.0));
            }
        }
        json!({
            "job_id": self.id,
            "state": inner.state.as_str(),
            "workflow": self.workflow,
            "created_at": self.created_at,
            "progress": progress,
            "events": inner.log.len(),
            "result": result,
            "error": error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_job_id_and_finish_happens_once() {
        let job = Job::new("txt2img");
        job.publish(EventKind::Queued, json!({"prompt_id": "p"}));
        assert!(job.finish(JobState::Cancelled));
        assert!(!job.finish(JobState::Failed(ApiError::internal("late"))));
        job.publish(EventKind::Progress, json!({})); // ignored after the end
        let sub = job.subscribe(0);
        let kinds: Vec<_> = sub.replay.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Queued, EventKind::Cancelled]);
        let data: Value = serde_json::from_str(&sub.replay[0].data).expect("valid JSON");
        assert_eq!(data["job_id"], job.id().as_str());
        assert_eq!(job.state(), JobState::Cancelled);
    }

    #[test]
    fn waiting_ends_with_the_job_or_at_the_deadline() {
        let job = Arc::new(Job::new("txt2img"));
        let soon = Instant::now() + std::time::Duration::from_millis(20);
        assert!(
            !job.wait_until_finished(Some(soon)),
            "still running at the deadline"
        );
        let ender = Arc::clone(&job);
        let (started_tx, started_rx) = crossbeam_channel::bounded(0);
        let waiter = std::thread::spawn(move || {
            let _ = started_tx.send(());
            ender.wait_until_finished(None)
        });
        let _ = started_rx.recv();
        job.finish(JobState::Cancelled);
        assert!(waiter.join().expect("waiter ran"));
        assert!(
            job.wait_until_finished(None),
            "an ended job returns at once"
        );
    }

    #[test]
    fn snapshot_shows_error() {
        let job = Job::new("txt2img");
        job.finish(JobState::Failed(ApiError::new(
            ErrorCode::Timeout,
            "too slow",
        )));
        let snap = job.to_json();
        assert_eq!(snap["state"], "failed");
        assert_eq!(snap["error"]["code"], "timeout");
        assert_eq!(snap["result"], Value::Null);
        assert!(!job.request_cancel());
    }
}
