//! Jobs: one generation each, from its acceptance into the gateway's queue to its terminal event.
//!
//! A [`Job`] is data: what to run (its [`Plan`]), where it is in its life, and its [`EventLog`].
//! A waiting job holds no thread and no socket. The [`Engine`] moves jobs along: the dispatcher
//! hands them to backends, each backend's monitor feeds them ComfyUI's messages, one ticker
//! publishes everyone's progress, and a small pool stores their outputs. The job's state and log
//! sit behind one mutex that is held only to read or append, never across I/O.

mod backend;
mod context;
mod dispatch;
mod engine;
mod log;
mod output;
mod plan;
mod progress;
mod queue;
mod registry;
mod store;
mod ticker;

pub use backend::{Backend, BackendStatus};
pub use context::{ComebackHook, JobContext, RunSettings};
pub use dispatch::{INPUT_SUBFOLDER, ensure_input};
pub use engine::{Engine, RestoredRun};
pub use log::{Event, EventKind, EventLog, Subscription, WaitingTick};
pub use plan::{BlobInput, GraphSource, InputTarget, Plan};
pub use progress::{Outcome, ProgressTracker};
pub use queue::{JobQueue, MemoryQueue, Ticket};
pub use registry::JobRegistry;
pub use store::{JobRecord, JobStore, Restored, RunRecord, restore_jobs};

use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::api::{ApiError, ErrorCode, RequestOptions};
use crate::assets::Asset;
use crate::comfyui::{PreviewFormat, WsEvent};
use crate::ids::{JobId, PromptId};
use crate::storage::ImageRecord;
use crate::timestamp;
use crate::webhook::JobEvents;

/// Where a job is in its life. Finished states carry what a client needs to know about them.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    /// Waiting: in the gateway's queue, or sent to ComfyUI and waiting in its queue.
    Queued,
    /// ComfyUI is executing the graph.
    Running,
    /// The outputs are being fetched and stored.
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

/// A job's stay on one backend: from ComfyUI's acceptance of its prompt to the prompt's end.
pub struct Run {
    /// The backend's base URL, as named in events and saved with the job.
    pub backend_url: String,
    /// ComfyUI's id for the prompt.
    pub prompt_id: PromptId,
    /// What ComfyUI's messages said so far.
    pub tracker: ProgressTracker,
    /// When ComfyUI started executing it.
    pub started: Option<Instant>,
    /// When execution ended.
    pub executed: Option<Instant>,
    /// The websocket that would carry this prompt's messages is gone (the prompt was queued
    /// under an earlier client id, or by a gateway that restarted): follow it through
    /// `/history` instead.
    pub orphaned: bool,
    /// The stop (delete or interrupt) was already sent for a cancel or a timeout.
    pub stop_sent: bool,
    /// When ComfyUI last said anything about this prompt (or `/history` was last asked).
    pub last_heard: Instant,
    /// When the prompt was sent (or taken back after a restart): orders the prompts a backend
    /// holds, as ComfyUI's queue does.
    pub sent: Instant,
}

/// A live preview image waiting for the next tick.
struct PendingPreview {
    format: PreviewFormat,
    node: Option<String>,
    bytes: Vec<u8>,
}

struct JobInner {
    state: JobState,
    log: EventLog,
    progress: Value,
    finished_at: Option<Instant>,
    finished_unix_ms: Option<u64>,
    /// When ComfyUI started executing the job (not saved: unknown after a restart).
    started_unix_ms: Option<u64>,
    run: Option<Run>,
    /// Where the job last ran, kept after its run ended.
    last_backend: Option<String>,
    last_prompt: Option<PromptId>,
    preview: Option<PendingPreview>,
    /// Output branches ComfyUI dropped at validation while running the rest.
    warnings: Vec<Value>,
    /// The outputs committed so far by this process, as assets, in commit order.
    outputs: Vec<Arc<Asset>>,
    /// Told of each output as it is committed; dropped when the job ends.
    output_watchers: Vec<Sender<Arc<Asset>>>,
}

/// What [`Job::watch_outputs`] gives: the outputs committed so far, then a channel of the next.
pub struct OutputWatch {
    /// The outputs already committed, in order.
    pub committed: Vec<Arc<Asset>>,
    /// Each later output the moment it is committed; the channel closes when the job ends
    /// (every output is committed before its terminal event). `None` if the job has ended.
    pub live: Option<Receiver<Arc<Asset>>>,
}

/// What a ComfyUI message meant for a job.
#[derive(Debug, Default, PartialEq)]
pub struct Observed {
    /// This message started execution.
    pub started: bool,
    /// This message ended execution.
    pub outcome: Option<Outcome>,
}

/// One generation.
pub struct Job {
    id: JobId,
    workflow: String,
    created_at: String,
    created_unix_ms: u64,
    created: Instant,
    ticket: Ticket,
    plan: Plan,
    options: RequestOptions,
    cancel_requested: AtomicBool,
    /// `/prompt` answers for this job that were server errors (or lacked a `prompt_id`).
    bad_answers: AtomicU32,
    /// Times a ComfyUI lost this job's started prompt (it was sent again after each but the
    /// last); saved with the job.
    losses: AtomicU32,
    inner: Mutex<JobInner>,
    /// Held while the job's record is written, so that saves from different threads land in
    /// the order their records were taken: the newest state always wins on disk.
    saving: Mutex<()>,
    /// Told of every event (the job's webhooks); set at submission.
    sink: OnceLock<Arc<dyn JobEvents>>,
    /// `/prompt`'s `extra_data` (a v2 partner-node key): in memory only, never saved or logged.
    extra_data: OnceLock<Value>,
}

impl Job {
    /// A new job in state `queued` with no events yet; `seq` orders it among its priority.
    pub fn new(plan: Plan, options: RequestOptions, seq: u64) -> Job {
        let id = JobId::new();
        let log = EventLog::new(id.as_str());
        let now_ms = timestamp::unix_millis();
        Job {
            workflow: plan.workflow.clone(),
            created_at: timestamp::rfc3339_from_unix_millis(now_ms),
            created_unix_ms: now_ms,
            created: Instant::now(),
            ticket: Ticket::new(options.priority, seq),
            plan,
            options,
            cancel_requested: AtomicBool::new(false),
            bad_answers: AtomicU32::new(0),
            losses: AtomicU32::new(0),
            saving: Mutex::new(()),
            inner: Mutex::new(JobInner {
                state: JobState::Queued,
                log,
                progress: Value::Null,
                finished_at: None,
                finished_unix_ms: None,
                started_unix_ms: None,
                run: None,
                last_backend: None,
                last_prompt: None,
                preview: None,
                warnings: Vec::new(),
                outputs: Vec::new(),
                output_watchers: Vec::new(),
            }),
            id,
            sink: OnceLock::new(),
            extra_data: OnceLock::new(),
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

    /// What the job runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// How the job runs.
    pub fn options(&self) -> &RequestOptions {
        &self.options
    }

    /// Its place in line.
    pub fn ticket(&self) -> Ticket {
        self.ticket
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

    /// Sets `/prompt`'s `extra_data` for this job (once). Kept in memory only: a job still
    /// waiting when the gateway restarts runs without it.
    pub fn set_extra_data(&self, extra_data: Value) {
        let _ = self.extra_data.set(extra_data);
    }

    /// `/prompt`'s `extra_data`, if the submission had one.
    pub fn extra_data(&self) -> Option<&Value> {
        self.extra_data.get()
    }

    /// When the job was created, when ComfyUI started it (if known) and when it ended, as Unix
    /// milliseconds.
    pub fn times_unix_ms(&self) -> (u64, Option<u64>, Option<u64>) {
        let inner = self.lock();
        (
            self.created_unix_ms,
            inner.started_unix_ms,
            inner.finished_unix_ms,
        )
    }

    /// Sends every later event to `sink` too (once; a second sink is ignored).
    pub fn set_event_sink(&self, sink: Arc<dyn JobEvents>) {
        let _ = self.sink.set(sink);
    }

    /// Like [`Job::set_event_sink`], and hands the sink the events published so far first (a
    /// new job's `queued`, published before the job was saved and accepted).
    pub(super) fn set_event_sink_from_start(&self, sink: Arc<dyn JobEvents>) {
        let inner = self.lock();
        if self.sink.set(sink).is_ok() {
            for event in inner.log.events() {
                self.tell_sink(&event);
            }
        }
    }

    /// Hands an event to the sink, under the job's lock so the sink sees events in order.
    fn tell_sink(&self, event: &Event) {
        if let Some(sink) = self.sink.get() {
            sink.job_event(event.kind.as_str(), &event.data);
        }
    }

    /// Emits a non-terminal event (`queued`, `dispatched`, `progress`, `preview`). `data` gets
    /// `job_id` added.
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
        inner.finished_unix_ms = Some(timestamp::unix_millis());
        if let Some(run) = inner.run.take() {
            inner.last_backend = Some(run.backend_url);
            inner.last_prompt = Some(run.prompt_id);
        }
        inner.preview = None;
        inner.output_watchers.clear();
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

    /// Records that ComfyUI at `backend_url` accepted the prompt and announces it with a
    /// `dispatched` event. `warnings` name output branches ComfyUI dropped at validation;
    /// `ahead` counts the prompts that backend held before this one (its queue position).
    pub fn dispatched(
        &self,
        backend_url: &str,
        prompt_id: PromptId,
        graph: &Value,
        warnings: Vec<Value>,
        ahead: usize,
    ) {
        let mut inner = self.lock();
        if inner.state.is_finished() {
            return;
        }
        let data = json!({
            "prompt_id": prompt_id,
            "backend": backend_url,
            "workflow": self.workflow,
            "warnings": warnings,
        });
        let mut tracker = ProgressTracker::new(prompt_id.clone(), graph);
        tracker.drop_outputs(warnings.iter().filter_map(|w| w["node"].as_str()));
        tracker.set_queue_position(Some(ahead));
        inner.warnings = warnings;
        inner.run = Some(Run {
            backend_url: backend_url.to_string(),
            tracker,
            prompt_id,
            started: None,
            executed: None,
            orphaned: false,
            stop_sent: false,
            last_heard: Instant::now(),
            sent: Instant::now(),
        });
        let text = self.with_job_id(data);
        let event = inner.log.push(EventKind::Dispatched, text);
        self.tell_sink(&event);
    }

    /// Puts a job whose backend failed before starting it back to waiting.
    pub fn requeue(&self) {
        let mut inner = self.lock();
        if inner.state.is_finished() {
            return;
        }
        inner.run = None;
        inner.preview = None;
        inner.state = JobState::Queued;
    }

    /// Works on the job's run, if it has one (it is on a backend and unfinished).
    pub fn with_run<T>(&self, f: impl FnOnce(&mut Run) -> T) -> Option<T> {
        let mut inner = self.lock();
        if inner.state.is_finished() {
            return None;
        }
        inner.run.as_mut().map(f)
    }

    /// Whether the job has a prompt on a backend (sent, running or its outputs being stored).
    pub fn is_on_backend(&self) -> bool {
        self.with_run(|_| ()).is_some()
    }

    /// Feeds one of ComfyUI's messages about this job's prompt.
    pub fn observe(&self, event: &WsEvent) -> Observed {
        let mut inner = self.lock();
        if inner.state.is_finished() {
            return Observed::default();
        }
        let Some(run) = inner.run.as_mut() else {
            return Observed::default();
        };
        run.last_heard = Instant::now();
        let was_started = run.tracker.started();
        let outcome = run.tracker.observe(event).cloned();
        let started = !was_started && run.tracker.started();
        if started {
            run.started = Some(Instant::now());
        }
        if outcome.is_some() {
            run.executed = Some(Instant::now());
        }
        if started {
            if inner.state == JobState::Queued {
                inner.state = JobState::Running;
            }
            inner.started_unix_ms = Some(timestamp::unix_millis());
        }
        Observed { started, outcome }
    }

    /// Marks the run started without a message saying so (learnt from `/queue` or `/history`).
    pub fn mark_started(&self) -> bool {
        let mut inner = self.lock();
        let Some(run) = inner.run.as_mut() else {
            return false;
        };
        if run.started.is_some() {
            return false;
        }
        run.started = Some(Instant::now());
        inner.started_unix_ms = Some(timestamp::unix_millis());
        if inner.state == JobState::Queued {
            inner.state = JobState::Running;
        }
        true
    }

    /// Keeps the newest preview image until the next tick publishes it.
    pub fn offer_preview(&self, format: PreviewFormat, node: Option<String>, bytes: Vec<u8>) {
        if !self.options.previews {
            return;
        }
        let mut inner = self.lock();
        if !inner.state.is_finished() {
            inner.preview = Some(PendingPreview {
                format,
                node,
                bytes,
            });
        }
    }

    /// Publishes this tick's `progress` event (and the newest preview, at most one per tick);
    /// returns false, publishing nothing, once the job has ended. `queue_position` is asked
    /// while the job waits, in the gateway's queue or in ComfyUI's (see
    /// `Engine::queue_position`); it is called under the job's lock, so it must not lock a job.
    pub fn tick(&self, queue_position: impl FnOnce(&JobId) -> Option<usize>) -> bool {
        let mut inner = self.lock();
        if inner.state.is_finished() {
            return false;
        }
        let elapsed_ms = self.elapsed_ms();
        let state = inner.state.as_str();
        let snapshot = match inner.run.as_mut() {
            None => {
                let tick = WaitingTick {
                    queue_position: queue_position(&self.id)
                        .map(|p| p.min(u32::MAX as usize) as u32),
                    elapsed_ms,
                };
                inner.log.push_waiting(tick);
                if let Some(sink) = self.sink.get() {
                    sink.job_event(
                        EventKind::Progress.as_str(),
                        &tick.to_json(self.id.as_str()),
                    );
                }
                return true;
            }
            Some(run) => {
                if run.started.is_none() && !run.tracker.started() {
                    if let Some(position) = queue_position(&self.id) {
                        run.tracker.set_queue_position(Some(position));
                    }
                }
                let mut snapshot = run.tracker.snapshot(state, elapsed_ms);
                snapshot["backend"] = json!(run.backend_url);
                snapshot
            }
        };
        inner.progress = snapshot.clone();
        let text = self.with_job_id(snapshot);
        let event = inner.log.push(EventKind::Progress, text);
        self.tell_sink(&event);
        if let Some(preview) = inner.preview.take() {
            let data = json!({
                "node": preview.node,
                "content_type": preview.format.mime_type(),
                "image": data_url(preview.format.mime_type(), &preview.bytes),
            });
            let text = self.with_job_id(data);
            inner.log.push(EventKind::Preview, text);
        }
        true
    }

    /// Output branches ComfyUI dropped at validation.
    pub fn warnings(&self) -> Vec<Value> {
        self.lock().warnings.clone()
    }

    /// Records that the output `asset` was committed (stored), and tells the watchers.
    /// The same asset twice (a retried store) is recorded once.
    pub(crate) fn output_committed(&self, asset: Arc<Asset>) {
        let mut inner = self.lock();
        if inner.outputs.iter().any(|known| known.id == asset.id) {
            return;
        }
        inner
            .output_watchers
            .retain(|watcher| watcher.send(Arc::clone(&asset)).is_ok());
        inner.outputs.push(asset);
    }

    /// The outputs this process saw the job commit, in order. After a restart the durable
    /// list is [`crate::assets::AssetStore::for_job`].
    pub fn outputs(&self) -> Vec<Arc<Asset>> {
        self.lock().outputs.clone()
    }

    /// The outputs committed so far and a channel of those to come (Comfy API v2's `output`
    /// events), taken atomically: no output is missed or seen twice.
    pub fn watch_outputs(&self) -> OutputWatch {
        let mut inner = self.lock();
        let committed = inner.outputs.clone();
        if inner.state.is_finished() {
            return OutputWatch {
                committed,
                live: None,
            };
        }
        let (sender, receiver) = crossbeam_channel::unbounded();
        inner.output_watchers.push(sender);
        OutputWatch {
            committed,
            live: Some(receiver),
        }
    }

    /// Records that the outputs of a job that failed with `storage_failed` reached storage
    /// later (from the spool): the job becomes `completed`, its result listing the stored
    /// outputs. The event stream, already ended, is not reopened. Returns whether it changed.
    pub fn storage_recovered(&self, rows: &[ImageRecord]) -> bool {
        let mut inner = self.lock();
        let JobState::Failed(error) = &inner.state else {
            return false;
        };
        if error.code != ErrorCode::StorageFailed {
            return false;
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
                    "kind": row.kind,
                    "content_type": row.content_type,
                })
            })
            .collect();
        let prompt_id = rows.first().and_then(|row| row.prompt_id.clone());
        let params = rows.first().map_or(json!({}), |row| row.params.clone());
        let result = json!({
            "job_id": self.id,
            "prompt_id": prompt_id,
            "workflow": self.workflow,
            "backend": inner.last_backend,
            "images": images,
            "params": params,
            "recovered_from": error,
        });
        // The stream has ended, but webhooks get the `complete` they were owed.
        if let Some(sink) = self.sink.get() {
            sink.job_event(EventKind::Complete.as_str(), &result.to_string());
        }
        inner.state = JobState::Completed(Arc::new(result));
        true
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

    /// Records a client's wish to cancel. Returns false if the job had already ended.
    pub fn request_cancel(&self) -> bool {
        if self.is_finished() {
            return false;
        }
        self.cancel_requested.store(true, Ordering::SeqCst);
        true
    }

    /// Counts one more loss of this job's started prompt; returns how many it had before.
    pub(super) fn count_loss(&self) -> u32 {
        self.losses.fetch_add(1, Ordering::SeqCst)
    }

    /// Counts one more bad `/prompt` answer for this job; returns how many it had.
    pub(super) fn answered_badly(&self) -> u32 {
        self.bad_answers.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Whether a client asked to cancel.
    pub fn cancel_requested(&self) -> bool {
        self.cancel_requested.load(Ordering::SeqCst)
    }

    /// The job as `GET /jobs/{id}` shows it, with its `queue_position` (see
    /// `Engine::queue_position`).
    pub fn to_json(&self, queue_position: Option<usize>) -> Value {
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
        let (backend, prompt_id) = match &inner.run {
            Some(run) => (Some(run.backend_url.clone()), Some(run.prompt_id.clone())),
            None => (inner.last_backend.clone(), inner.last_prompt.clone()),
        };
        json!({
            "job_id": self.id,
            "state": inner.state.as_str(),
            "workflow": self.workflow,
            "created_at": self.created_at,
            "priority": self.options.priority,
            "queue_position": queue_position,
            "backend": backend,
            "prompt_id": prompt_id,
            "progress": progress,
            "events": inner.log.emitted(),
            "result": result,
            "error": error,
        })
    }

    /// Writes the job's current record to `store`.
    pub fn save(&self, store: &JobStore) -> std::io::Result<()> {
        let _in_order = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        store.save(&self.to_record())
    }

    /// The job as saved in `DATA_DIR/jobs/`.
    pub fn to_record(&self) -> JobRecord {
        let inner = self.lock();
        let (result, error) = match &inner.state {
            JobState::Completed(result) => (Some((**result).clone()), None),
            JobState::Failed(error) => (None, Some(error.clone())),
            _ => (None, None),
        };
        let run = inner.run.as_ref().map(|run| store::RunRecord {
            backend_url: run.backend_url.clone(),
            prompt_id: run.prompt_id.clone(),
            started: run.started.is_some(),
        });
        JobRecord {
            id: self.id.to_string(),
            seq: self.ticket_seq(),
            workflow: self.workflow.clone(),
            created_at: self.created_at.clone(),
            created_unix_ms: self.created_unix_ms,
            options: self.options.clone(),
            plan: self.plan.to_record(),
            state: inner.state.as_str().to_string(),
            run,
            last_backend: inner.last_backend.clone(),
            last_prompt: inner.last_prompt.clone(),
            warnings: inner.warnings.clone(),
            events: inner.log.durable_events(),
            next_event_id: inner.log.next_id(),
            losses: self.losses.load(Ordering::SeqCst),
            saved_unix_ms: timestamp::unix_millis(),
            finished_unix_ms: inner.finished_unix_ms,
            result,
            error,
        }
    }

    fn ticket_seq(&self) -> u64 {
        self.ticket.seq()
    }

    /// A job as a saved record describes it, after a restart. Event ids continue past any the
    /// old process could have sent: ticks after the last save were never written down, so the
    /// next id skips as many as could have happened since.
    /// `templates` and `blobs` read the input images of records older gateways wrote.
    pub fn from_record(
        record: JobRecord,
        progress_interval: Duration,
        templates: &crate::workflow::Templates,
        blobs: &crate::blobs::BlobStore,
    ) -> Result<(Job, Option<store::RunRecord>), String> {
        let id = JobId::parse(&record.id).ok_or_else(|| format!("bad job id {:?}", record.id))?;
        let plan = Plan::from_record(record.plan, templates, blobs)?;
        let now_ms = timestamp::unix_millis();
        let age = Duration::from_millis(now_ms.saturating_sub(record.created_unix_ms));
        let created = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        let unsaved = now_ms.saturating_sub(record.saved_unix_ms);
        let interval_ms = progress_interval.as_millis().max(1) as u64;
        // Each tick may have sent a progress and a preview event.
        let skipped = 2 * (unsaved / interval_ms + 2);
        let log = EventLog::restore(id.as_str(), record.events, record.next_event_id + skipped);
        let finished_ago = record
            .finished_unix_ms
            .map(|ms| Duration::from_millis(now_ms.saturating_sub(ms)));
        let state = match record.state.as_str() {
            "completed" => JobState::Completed(Arc::new(record.result.unwrap_or(Value::Null))),
            "failed" => JobState::Failed(
                record
                    .error
                    .unwrap_or_else(|| ApiError::internal("the job failed before a restart")),
            ),
            "cancelled" => JobState::Cancelled,
            _ => JobState::Queued,
        };
        let finished = state.is_finished();
        let job = Job {
            id,
            workflow: record.workflow,
            created_at: record.created_at,
            created_unix_ms: record.created_unix_ms,
            created,
            ticket: Ticket::new(record.options.priority, record.seq),
            plan,
            options: record.options,
            cancel_requested: AtomicBool::new(false),
            losses: AtomicU32::new(record.losses),
            bad_answers: AtomicU32::new(0),
            saving: Mutex::new(()),
            sink: OnceLock::new(),
            extra_data: OnceLock::new(),
            inner: Mutex::new(JobInner {
                state,
                log,
                progress: Value::Null,
                finished_at: finished.then(|| {
                    finished_ago
                        .and_then(|ago| Instant::now().checked_sub(ago))
                        .unwrap_or_else(Instant::now)
                }),
                finished_unix_ms: record.finished_unix_ms,
                started_unix_ms: None,
                run: None,
                last_backend: record.last_backend,
                last_prompt: record.last_prompt,
                preview: None,
                warnings: record.warnings,
                outputs: Vec::new(),
                output_watchers: Vec::new(),
            }),
        };
        let run = if finished { None } else { record.run };
        Ok((job, run))
    }

    /// Puts a restored job back on the backend that had its prompt, to be reconciled there.
    pub fn resume_run(&self, saved: &store::RunRecord) {
        let mut inner = self.lock();
        if inner.state.is_finished() {
            return;
        }
        let now = Instant::now();
        inner.run = Some(Run {
            backend_url: saved.backend_url.clone(),
            prompt_id: saved.prompt_id.clone(),
            // The graph is not kept: progress after a restart counts steps, not nodes.
            tracker: ProgressTracker::new(saved.prompt_id.clone(), &Value::Null),
            started: saved.started.then_some(now),
            executed: None,
            orphaned: true,
            stop_sent: false,
            last_heard: now,
            sent: now,
        });
        if saved.started {
            inner.state = JobState::Running;
        }
    }
}

/// A `data:` URL for an image.
fn data_url(content_type: &str, bytes: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "data:{content_type};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GenerateRequest;

    fn job() -> Job {
        let plan = Plan {
            workflow: "graph".into(),
            source: GraphSource::Raw(json!({})),
            inputs: Vec::new(),
        };
        let _ = GenerateRequest::Graph { graph: json!({}) };
        Job::new(plan, RequestOptions::default(), 1)
    }

    #[test]
    fn events_carry_job_id_and_finish_happens_once() {
        let job = job();
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
        let job = Arc::new(job());
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(
            !job.wait_until_finished(Some(soon)),
            "still running at the deadline"
        );
        let ender = Arc::clone(&job);
        let (started_tx, started_rx) = crossbeam_channel::bounded(0);
        let waiter = std::thread::spawn(move || {
            let _ = started_tx.send(());
            ender.wait_until_finished(Some(Instant::now() + Duration::from_secs(10)))
        });
        let _ = started_rx.recv_timeout(Duration::from_secs(10));
        job.finish(JobState::Cancelled);
        assert!(waiter.join().expect("waiter ran"));
        assert!(
            job.wait_until_finished(None),
            "an ended job returns at once"
        );
    }

    #[test]
    fn snapshot_shows_error() {
        let job = job();
        job.finish(JobState::Failed(ApiError::new(
            ErrorCode::Timeout,
            "too slow",
        )));
        let snap = job.to_json(None);
        assert_eq!(snap["state"], "failed");
        assert_eq!(snap["error"]["code"], "timeout");
        assert_eq!(snap["result"], Value::Null);
        assert!(!job.request_cancel());
    }

    #[test]
    fn a_saved_job_comes_back_with_its_events_and_later_ids() {
        let job = job();
        job.publish(EventKind::Queued, json!({}));
        job.tick(|_| Some(3));
        job.dispatched("http://c", PromptId("p".into()), &json!({}), vec![], 0);
        let record = job.to_record();
        let text = serde_json::to_string(&record).expect("serialisable");
        let record: JobRecord = serde_json::from_str(&text).expect("readable");
        let blobs_dir = std::env::temp_dir().join(format!("blobs-{}", crate::ids::new_uuid()));
        let blobs = crate::blobs::BlobStore::open(&blobs_dir).expect("a blob store");
        let templates = crate::workflow::Templates::default();
        let (back, run) = Job::from_record(record, Duration::from_secs(1), &templates, &blobs)
            .expect("restorable");
        let _ = std::fs::remove_dir_all(&blobs_dir);
        assert_eq!(back.id(), job.id());
        assert_eq!(run.map(|r| r.prompt_id), Some(PromptId("p".into())));
        let replay = back.subscribe(0).replay;
        let kinds: Vec<_> = replay.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Queued, EventKind::Dispatched]);
        back.publish(EventKind::Progress, json!({}));
        let last = back.subscribe(3).replay;
        assert!(last[0].id > 3, "ids continue past the old process's");
    }
}
