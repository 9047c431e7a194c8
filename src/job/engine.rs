//! The engine: the gateway's queue and the threads that move jobs through it.
//!
//! Threads, whatever the number of jobs: one monitor per backend (its websocket), one
//! dispatcher (gateway queue → free backend slots), one ticker (everyone's progress) and a small
//! pool that fetches and stores outputs. A waiting job is only data in the queue and the
//! registry. Every thread holds the engine weakly and ends once it is dropped or stopped.

use crossbeam_channel::{Receiver, Sender};
use serde_json::json;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use super::backend::{self, Backend, BackendStatus, Effect};
use super::dispatch;
use super::output::{self, StoreRequest, Timings};
use super::progress::Outcome;
use super::store::RunRecord;
use super::{
    EventKind, GraphSource, Job, JobContext, JobQueue, JobRegistry, JobState, JobStore,
    MemoryQueue, Plan, ticker,
};
use crate::api::{ApiError, ErrorCode, JobRequest};
use crate::comfyui::{ComfyClient, ExecutionFailure, HistoryEntry};
use crate::ids::JobId;
use crate::webhook::JobEvents;

/// How a prompt's execution ended, as the gateway learnt it.
pub enum Ending {
    /// The websocket reported it.
    Ran(Outcome),
    /// `/history` had it (the websocket could not tell).
    FromHistory(Box<HistoryEntry>),
}

/// A finished prompt whose outputs the pool must collect.
struct Collect {
    job: Arc<Job>,
    backend: usize,
    history: Option<HistoryEntry>,
}

/// A job restored from disk that still had a prompt on a backend.
pub struct RestoredRun {
    /// The job.
    pub job: Arc<Job>,
    /// Its prompt, as saved.
    pub run: RunRecord,
}

/// The gateway's queue and its threads.
pub struct Engine {
    pub(super) ctx: JobContext,
    pub(super) registry: Arc<JobRegistry>,
    pub(super) queue: Box<dyn JobQueue>,
    store: Arc<JobStore>,
    pub(super) backends: Vec<Backend>,
    next_seq: AtomicU64,
    wake_dispatcher: Sender<()>,
    pub(super) dispatcher_woken: Receiver<()>,
    outputs: Sender<Collect>,
    outputs_rx: Receiver<Collect>,
    new_jobs: Sender<Arc<Job>>,
    new_jobs_rx: Receiver<Arc<Job>>,
    /// No more dispatching (shutdown): jobs still waiting stay saved for the next start.
    pub(super) draining: AtomicBool,
    stopped: AtomicBool,
}

impl Engine {
    /// An engine over `clients` (one backend each, in `COMFYUI_URL` order); nothing runs until
    /// [`Engine::start`]. `next_seq` continues the arrival numbers of restored jobs.
    pub fn new(
        ctx: JobContext,
        registry: Arc<JobRegistry>,
        store: Arc<JobStore>,
        clients: Vec<ComfyClient>,
        next_seq: u64,
    ) -> Engine {
        let (wake_dispatcher, dispatcher_woken) = crossbeam_channel::bounded(1);
        let (outputs, outputs_rx) = crossbeam_channel::unbounded();
        let (new_jobs, new_jobs_rx) = crossbeam_channel::unbounded();
        Engine {
            ctx,
            registry,
            queue: Box::new(MemoryQueue::default()),
            store,
            backends: clients
                .into_iter()
                .enumerate()
                .map(|(index, client)| Backend::new(index, client))
                .collect(),
            next_seq: AtomicU64::new(next_seq),
            wake_dispatcher,
            dispatcher_woken,
            outputs,
            outputs_rx,
            new_jobs,
            new_jobs_rx,
            draining: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        }
    }

    /// Starts the threads, after putting restored jobs back: waiting ones into the queue in
    /// their order, ones that had a prompt onto its backend to be reconciled there.
    pub fn start(
        self: &Arc<Self>,
        waiting: Vec<Arc<Job>>,
        on_backends: Vec<RestoredRun>,
    ) -> std::io::Result<()> {
        for job in waiting {
            self.queue.push(job.id().clone(), job.ticket());
            let _ = self.new_jobs.send(job);
        }
        for RestoredRun { job, run } in on_backends {
            let _ = self.new_jobs.send(Arc::clone(&job));
            match self
                .backends
                .iter()
                .position(|b| b.url() == run.backend_url)
            {
                Some(index) => {
                    job.resume_run(&run);
                    self.backends[index].adopt(run.prompt_id.clone(), job);
                }
                None if run.started => {
                    self.lost(
                        &job,
                        ApiError::new(
                            ErrorCode::ComfyuiLost,
                            format!(
                                "the gateway restarted while ComfyUI at {} ran this job, and that \
                             ComfyUI is no longer configured",
                                run.backend_url
                            ),
                        ),
                    );
                }
                None => self.requeue(&job),
            }
        }
        // The threads are detached: each holds the engine weakly and ends within its poll
        // interval once the engine is dropped or stopped.
        let weak = Arc::downgrade(self);
        for index in 0..self.backends.len() {
            let weak = Weak::clone(&weak);
            spawn(&format!("backend-{index}"), move || {
                backend::monitor(weak, index)
            })?;
        }
        let dispatcher = Weak::clone(&weak);
        spawn("dispatcher", move || dispatch::run(&dispatcher))?;
        let (ticks, new_jobs) = (Weak::clone(&weak), self.new_jobs_rx.clone());
        spawn("ticker", move || ticker::run(&ticks, &new_jobs))?;
        for worker in 0..self.ctx.run.output_workers.max(1) {
            let (weak, work) = (Weak::clone(&weak), self.outputs_rx.clone());
            spawn(&format!("output-{worker}"), move || {
                output_worker(&weak, &work)
            })?;
        }
        Ok(())
    }

    /// What the job code uses.
    pub fn ctx(&self) -> &JobContext {
        &self.ctx
    }

    /// The backend at `index`.
    pub fn backend(&self, index: usize) -> Option<&Backend> {
        self.backends.get(index)
    }

    /// Jobs waiting in the gateway's queue.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// How many jobs are ahead of this one: those ComfyUI runs or will start before it.
    ///
    /// For a job in the gateway's queue, its place there plus every prompt the backends hold
    /// (running or waiting in ComfyUI's queue); for a job waiting in a ComfyUI's queue, the
    /// prompt that ComfyUI runs plus the ones sent to it before; 0 for the job ComfyUI runs;
    /// `None` once ComfyUI is done with it. Only this gateway's jobs are counted.
    pub fn queue_position(&self, id: &JobId) -> Option<usize> {
        if let Some(place) = self.queue.position(id) {
            return Some(place + self.held_prompts());
        }
        self.backends.iter().find_map(|backend| {
            backend
                .positions()
                .into_iter()
                .find_map(|(held, ahead)| (held == *id).then_some(ahead))
        })
    }

    /// Prompts the backends hold for the gateway, running or waiting in ComfyUI's queue, and
    /// the ones being sent.
    fn held_prompts(&self) -> usize {
        self.backends.iter().map(Backend::taken_slots).sum()
    }

    /// Every waiting or running job's [`queue_position`](Self::queue_position).
    pub(super) fn positions(&self) -> std::collections::HashMap<JobId, usize> {
        let held = self.held_prompts();
        let mut positions: std::collections::HashMap<JobId, usize> = self
            .queue
            .positions()
            .into_iter()
            .map(|(id, place)| (id, place + held))
            .collect();
        for backend in &self.backends {
            positions.extend(backend.positions());
        }
        positions
    }

    /// Whether the threads should end.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Validates and accepts a generation; returns the job once it is saved and queued.
    ///
    /// Errors are the contract's plain HTTP errors: `invalid_params`, `unknown_workflow`,
    /// `overloaded` (`MAX_QUEUED_JOBS` waiting already), `comfyui_unavailable` (no backend
    /// answers). Accepted jobs wait for a backend, even one that goes away meanwhile.
    /// `events` receives every event of the job (its webhooks), from `queued` on.
    pub fn submit(
        &self,
        request: JobRequest,
        events: Option<Arc<dyn JobEvents>>,
    ) -> Result<Arc<Job>, ApiError> {
        self.submit_with(request, events, None, Vec::new())
    }

    /// Like [`Engine::submit`], with `/prompt`'s `extra_data` (a v2 submission's partner-node
    /// key), which the job keeps in memory only and the dispatcher forwards to ComfyUI, and
    /// input files already in the blob store (a v2 workflow's asset references), uploaded to
    /// the chosen backend like a template's input images.
    pub fn submit_with(
        &self,
        request: JobRequest,
        events: Option<Arc<dyn JobEvents>>,
        extra_data: Option<serde_json::Value>,
        inputs: Vec<super::BlobInput>,
    ) -> Result<Arc<Job>, ApiError> {
        let mut plan = Plan::new(&self.ctx.templates, request.generate, &self.ctx.blobs)?;
        plan.inputs.extend(inputs);
        let waiting = self.queue.len();
        if waiting >= self.ctx.run.max_queued {
            return Err(ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "{waiting} jobs are waiting, the most this gateway queues \
                     (MAX_QUEUED_JOBS); try again shortly"
                ),
            ));
        }
        self.check_a_backend_answers()?;
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let job = Arc::new(Job::new(plan, request.options, seq));
        if let Some(extra_data) = extra_data {
            job.set_extra_data(extra_data);
        }
        // Saved (its `queued` event included) before it can be dispatched or seen queued.
        let position = self.queue.ahead_of(job.ticket()) + self.held_prompts();
        job.publish(
            EventKind::Queued,
            json!({
                "workflow": job.workflow(),
                "queue_position": position,
                "priority": job.options().priority,
                "prompt_id": null,
                "backend": null,
            }),
        );
        job.save(&self.store).map_err(|e| {
            ApiError::internal(format!(
                "the job could not be saved in {}: {e}",
                self.store.dir().display()
            ))
        })?;
        if let Some(events) = events {
            job.set_event_sink_from_start(events);
        }
        self.registry.insert(Arc::clone(&job));
        self.queue.push(job.id().clone(), job.ticket());
        let _ = self.new_jobs.send(Arc::clone(&job));
        self.wake();
        log::info!("job {} queued ({} ahead of it)", job.id(), position);
        Ok(job)
    }

    /// Refuses a submission when no backend answers. A backend whose websocket spoke within
    /// the last moments is taken at its word (a busy batch costs no extra call); any other is
    /// asked `/system_stats`, so that a ComfyUI that just died, or one whose socket is still
    /// connecting, is judged by what it answers now. When none answers but one did within
    /// `BACKEND_GRACE_SECS` (a restart, a crash being recovered), the job is accepted all the
    /// same and waits for it.
    fn check_a_backend_answers(&self) -> Result<(), ApiError> {
        const RECENTLY: Duration = Duration::from_millis(250);
        if self.backends.iter().any(|b| b.heard_within(RECENTLY)) {
            return Ok(());
        }
        let mut reasons = Vec::new();
        for backend in &self.backends {
            match backend.client().system_stats() {
                Ok(_) => {
                    backend.answered();
                    return Ok(());
                }
                Err(e) => {
                    if let BackendStatus::Down(why) = backend.status() {
                        log::debug!("ComfyUI at {} is down ({why}): {e}", backend.url());
                    }
                    reasons.push(json!({ "url": backend.url(), "reason": e.to_string() }));
                }
            }
        }
        self.ctx.metrics.comfyui_error();
        let grace = self.ctx.run.backend_grace;
        let last = self
            .backends
            .iter()
            .filter_map(Backend::last_answered)
            .map(|at| at.elapsed())
            .min();
        if let Some(ago) = last.filter(|ago| *ago < grace) {
            log::debug!(
                "no ComfyUI answers now, but one did {} s ago (BACKEND_GRACE_SECS={}): the job \
                 is queued and waits for it",
                ago.as_secs(),
                grace.as_secs()
            );
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::ComfyuiUnavailable,
            "no ComfyUI backend could be reached; is ComfyUI running at COMFYUI_URL?",
        )
        .with_details(json!({ "backends": reasons })))
    }

    /// Cancels a job: at once while it waits in the gateway's queue; through its backend's
    /// monitor (delete or interrupt in ComfyUI) once it has a prompt. False if it had ended.
    pub fn cancel(&self, job: &Arc<Job>) -> bool {
        if !job.request_cancel() {
            return false;
        }
        if self.queue.remove(job.id()) {
            self.finish(job, JobState::Cancelled);
        }
        true
    }

    /// Stops dispatching and waits, until `deadline`, for the jobs that have a prompt on a
    /// backend. Waiting jobs stay saved and resume at the next start.
    pub fn drain(&self, deadline: Instant) -> usize {
        self.draining.store(true, Ordering::SeqCst);
        for job in self.registry.unfinished() {
            if job.is_on_backend() {
                job.wait_until_finished(Some(deadline));
            }
        }
        self.queue.len()
    }

    /// Ends the threads (they notice within their poll interval; they are not joined, since
    /// one of them may hold the last reference to the engine).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake();
    }

    pub(super) fn wake(&self) {
        let _ = self.wake_dispatcher.try_send(());
    }

    /// Saves a job's record; a failure is logged (the job goes on in memory).
    pub(super) fn save(&self, job: &Job) {
        if let Err(e) = job.save(&self.store) {
            log::error!(
                "job {}: cannot save its state in {}: {e}",
                job.id(),
                self.store.dir().display()
            );
        }
    }

    /// Ends a job, counting and saving it; false if it had already ended.
    pub(super) fn finish(&self, job: &Job, state: JobState) -> bool {
        let name = state.as_str();
        if !job.finish(state) {
            return false;
        }
        self.ctx.metrics.job_finished(name, job.created().elapsed());
        log::info!("job {} {name} after {} ms", job.id(), job.elapsed_ms());
        self.save(job);
        self.wake();
        true
    }

    /// Puts a job whose backend failed before starting it back at the front of the queue.
    pub(super) fn requeue(&self, job: &Arc<Job>) {
        if job.is_finished() {
            return;
        }
        job.requeue();
        if job.cancel_requested() {
            self.finish(job, JobState::Cancelled);
            return;
        }
        self.queue.push(job.id().clone(), job.ticket().requeued());
        self.save(job);
        self.wake();
    }

    /// A ComfyUI lost a job's started prompt (it crashed, restarted, or stayed unreachable
    /// past its grace): the job is sent again, from the front of the queue, to any backend, up
    /// to `LOST_RETRIES` times; the next loss ends it with `error`. The job must have left its
    /// backend's care already. Its stream shows a new `queued` event (with `lost`: why), then a
    /// new `dispatched`.
    pub(super) fn lost(&self, job: &Arc<Job>, error: ApiError) {
        if job.is_finished() {
            return;
        }
        if job.cancel_requested() {
            self.finish(job, JobState::Cancelled);
            return;
        }
        let earlier = job.count_loss();
        if earlier >= self.ctx.run.lost_retries {
            self.finish(job, JobState::Failed(error));
            return;
        }
        log::warn!(
            "job {}: {} (LOST_RETRIES: sending it again, {} of {})",
            job.id(),
            error.message,
            earlier + 1,
            self.ctx.run.lost_retries
        );
        job.requeue();
        let ticket = job.ticket().requeued();
        job.publish(
            EventKind::Queued,
            json!({
                "workflow": job.workflow(),
                "queue_position": self.queue.ahead_of(ticket) + self.held_prompts(),
                "priority": job.options().priority,
                "prompt_id": null,
                "backend": null,
                "lost": error,
            }),
        );
        self.queue.push(job.id().clone(), ticket);
        self.save(job);
        self.wake();
    }

    /// ComfyUI started a job's prompt. Saved, so that a gateway restarted while a restarted
    /// ComfyUI forgot the prompt knows it ran (`comfyui_lost`) rather than sending it again.
    pub(super) fn started(&self, job: &Job) {
        self.ctx
            .metrics
            .time_to_first_progress
            .observe(job.created().elapsed());
        self.save(job);
    }

    /// A backend (re)connected. Whether ComfyUI restarted meanwhile cannot be told from a
    /// websocket that merely dropped (a restarted ComfyUI may answer the very first reconnect),
    /// so the comeback hook runs on every connection: its work (a warm-up, re-reading models)
    /// is cheap.
    pub(super) fn backend_up(&self, backend: &Backend) {
        if let Some(hook) = &self.ctx.on_comeback {
            hook(backend.client());
        }
        self.wake();
    }

    /// Acts on what a ComfyUI message (or a `/history` read) did to a job.
    pub(super) fn apply(&self, backend: usize, effect: Effect) {
        match effect {
            Effect::Started(job) => self.started(&job),
            Effect::Ended(job, ending) => {
                self.wake(); // its slot is free
                self.ended(backend, job, ending);
            }
        }
    }

    fn ended(&self, backend: usize, job: Arc<Job>, ending: Ending) {
        let history = match ending {
            Ending::Ran(Outcome::Succeeded) => None,
            Ending::Ran(Outcome::Failed(failure)) => {
                self.finish(&job, execution_failed(&failure));
                return;
            }
            Ending::Ran(Outcome::Interrupted { node_id, node_type }) => {
                self.finish(&job, interrupted(&job, node_id, node_type));
                return;
            }
            Ending::FromHistory(entry) => match history_failure(&entry, &job) {
                Some(state) => {
                    self.finish(&job, state);
                    return;
                }
                None => Some(*entry),
            },
        };
        job.set_state(JobState::Uploading);
        let collect = Collect {
            job,
            backend,
            history,
        };
        if let Err(unsent) = self.outputs.send(collect) {
            self.finish(
                &unsent.0.job,
                JobState::Failed(ApiError::internal("the output workers are gone")),
            );
        }
    }
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(body)
        .map(drop)
}

/// An output worker: collects and stores the outputs of finished prompts, one job at a time.
fn output_worker(engine: &Weak<Engine>, work: &Receiver<Collect>) {
    loop {
        let collect = match work.recv_timeout(Duration::from_millis(250)) {
            Ok(collect) => collect,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => match engine.upgrade() {
                Some(engine) if !engine.is_stopped() => continue,
                _ => return,
            },
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let job = Arc::clone(&collect.job);
        let state = panic::catch_unwind(AssertUnwindSafe(|| store_outputs(&engine, collect)))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown cause");
                log::error!("job {}: storing its outputs panicked: {what}", job.id());
                JobState::Failed(ApiError::internal(format!(
                    "the gateway hit a bug while storing this job's outputs ({what})"
                )))
            });
        match state {
            // ComfyUI finished but could no longer give its outputs (it crashed or restarted
            // meanwhile): nothing was stored, so the render is lost like one that died mid-way.
            JobState::Failed(error) if error.code == ErrorCode::ComfyuiLost => {
                engine.lost(&job, error);
            }
            state => {
                engine.finish(&job, state);
            }
        }
    }
}

fn store_outputs(engine: &Engine, collect: Collect) -> JobState {
    let Collect {
        job,
        backend,
        history,
    } = collect;
    let Some(backend) = engine.backend(backend) else {
        return JobState::Failed(ApiError::internal("the job's backend disappeared"));
    };
    let Some((prompt_id, timings)) = job.with_run(|run| {
        (
            run.prompt_id.clone(),
            Timings {
                created: job.created(),
                started: run.started,
                executed: run.executed,
            },
        )
    }) else {
        return JobState::Failed(ApiError::internal("the job's prompt was forgotten"));
    };
    let outputs = match &job.plan().source {
        GraphSource::Template { name, .. } => engine
            .ctx
            .templates
            .get(name)
            .map(|template| template.outputs)
            .unwrap_or_default(),
        GraphSource::Raw(_) => Default::default(),
    };
    let request = StoreRequest {
        app: &engine.ctx,
        outputs,
        warnings: job.warnings(),
        job: &job,
        client: backend.client(),
        prompt_id: &prompt_id,
        workflow: job.workflow(),
        params: job.plan().params(),
        seed: job.plan().seed(),
        history,
        timings,
    };
    match output::collect_and_store(request) {
        Ok(mut result) => {
            result["backend"] = json!(backend.url());
            JobState::Completed(Arc::new(result))
        }
        Err(error) => JobState::Failed(error),
    }
}

/// The state of a job whose end was read from `/history`, unless it succeeded.
fn history_failure(entry: &HistoryEntry, job: &Job) -> Option<JobState> {
    let status = entry.status.as_ref()?;
    if let Some(failure) = &status.error {
        return Some(execution_failed(failure));
    }
    if status.interrupted {
        return Some(interrupted(job, None, None));
    }
    None
}

fn execution_failed(failure: &ExecutionFailure) -> JobState {
    let node = match (&failure.node_id, &failure.node_type) {
        (Some(id), Some(kind)) => format!("node {id} ({kind})"),
        (Some(id), None) => format!("node {id}"),
        (None, Some(kind)) => format!("a {kind} node"),
        (None, None) => "a node".to_string(),
    };
    JobState::Failed(
        ApiError::new(
            ErrorCode::ExecutionFailed,
            format!("{node} failed in ComfyUI: {}", failure.exception_message),
        )
        .with_details(json!({
            "node_id": failure.node_id,
            "node_type": failure.node_type,
            "exception_type": failure.exception_type,
            "exception_message": failure.exception_message,
            "traceback": failure.traceback,
        })),
    )
}

fn interrupted(job: &Job, node_id: Option<String>, node_type: Option<String>) -> JobState {
    if job.cancel_requested() {
        return JobState::Cancelled;
    }
    JobState::Failed(
        ApiError::new(
            ErrorCode::ExecutionFailed,
            "ComfyUI interrupted the prompt; it was cancelled from outside this gateway \
             (ComfyUI's own UI or another client)",
        )
        .with_details(json!({ "node_id": node_id, "node_type": node_type, "interrupted": true })),
    )
}
