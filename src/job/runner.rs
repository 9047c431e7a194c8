//! Starting a job (on the request thread) and driving it to its end (on its own job thread).
//!
//! `submit` does everything that can still be refused as a plain HTTP error: validation, the
//! active-job limit, connecting the websocket, uploading input images and queueing the prompt.
//! Once ComfyUI has accepted the prompt the job exists: its `queued` event is published and a job
//! thread takes over the websocket. That thread ticks `progress`, follows ComfyUI's messages,
//! survives a dropped socket by asking `/history`, honours cancel and timeout, then stores the
//! images and emits exactly one terminal event.

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::{Value, json};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::output::{self, StoreRequest};
use super::progress::{Outcome, ProgressTracker};
use super::{EventKind, Job, JobState};
use crate::api::{ApiError, ErrorCode, GenerateRequest};
use crate::app::App;
use crate::comfyui::{ComfyClient, ComfyError, ExecutionFailure, HistoryEntry, Monitor, WsEvent};
use crate::ids::PromptId;
use crate::image::PngMetadata;
use crate::workflow::{self, Resolved};

/// The tunables of a job's life, from the configuration.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Cadence of `progress` events (`PROGRESS_INTERVAL_MS`).
    pub progress_interval: Duration,
    /// A job unfinished after this is interrupted and fails with `timeout` (`JOB_TIMEOUT_SECS`).
    pub job_timeout: Duration,
    /// Whether ComfyUI's text chunks are stripped from stored PNGs (`PNG_METADATA`).
    pub png_metadata: PngMetadata,
    /// How long ComfyUI may stay unreachable mid-job before the job fails with `comfyui_lost`.
    pub comfyui_grace: Duration,
    /// How long to wait for `/history` to show a prompt the websocket said had finished.
    pub history_wait: Duration,
    /// Longest the job thread blocks on the websocket before looking at cancel requests.
    pub poll_interval: Duration,
    /// After this long without any websocket message, `/history` is asked whether the prompt
    /// ended anyway (a message lost on the way must not leave a job waiting for its timeout).
    pub silence_check: Duration,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            progress_interval: Duration::from_millis(1000),
            job_timeout: Duration::from_secs(600),
            png_metadata: PngMetadata::Strip,
            comfyui_grace: Duration::from_secs(60),
            history_wait: Duration::from_secs(10),
            poll_interval: Duration::from_millis(100),
            silence_check: Duration::from_secs(10),
        }
    }
}

/// Where the graph comes from.
enum GraphSource {
    Template { name: String, resolved: Resolved },
    Raw(Value),
}

/// A validated request, ready to be sent.
struct Plan {
    workflow: String,
    source: GraphSource,
}

impl Plan {
    /// Validates `request` against the templates; nothing is sent anywhere yet.
    fn new(app: &App, request: GenerateRequest) -> Result<Plan, ApiError> {
        match request {
            GenerateRequest::Graph { graph } => {
                workflow::check_raw_graph(&graph).map_err(|errors| {
                    ApiError::new(ErrorCode::InvalidParams, format!("graph: {errors}"))
                        .with_details(errors.to_details())
                })?;
                Ok(Plan {
                    workflow: "graph".into(),
                    source: GraphSource::Raw(graph),
                })
            }
            GenerateRequest::Template { workflow, params } => {
                let template = app.templates.get(&workflow).ok_or_else(|| {
                    let known: Vec<&str> = app.templates.names().collect();
                    ApiError::new(
                        ErrorCode::UnknownWorkflow,
                        format!("no workflow template is named {workflow:?}"),
                    )
                    .with_details(json!({ "workflow": workflow, "available": known }))
                })?;
                let resolved = template.resolve(&params).map_err(|errors| {
                    ApiError::new(ErrorCode::InvalidParams, format!("{workflow}: {errors}"))
                        .with_details(errors.to_details())
                })?;
                Ok(Plan {
                    workflow: workflow.clone(),
                    source: GraphSource::Template {
                        name: workflow,
                        resolved,
                    },
                })
            }
        }
    }

    /// The parameters as resolved (seed drawn), for events and metadata.
    fn params(&self) -> Value {
        match &self.source {
            GraphSource::Template { resolved, .. } => json!(resolved.values),
            GraphSource::Raw(_) => json!({}),
        }
    }

    fn seed(&self) -> Option<u64> {
        match &self.source {
            GraphSource::Template { resolved, .. } => resolved.seed,
            GraphSource::Raw(_) => None,
        }
    }
}

/// What the request thread hands over to the job thread once ComfyUI accepted the prompt.
struct Started {
    client: ComfyClient,
    monitor: Monitor,
    prompt_id: PromptId,
    graph: Value,
}

/// Validates and starts a generation; returns the job once ComfyUI has accepted its prompt.
///
/// Errors are the contract's plain HTTP errors: `invalid_params`, `unknown_workflow`,
/// `overloaded`, `comfyui_unavailable`, `comfyui_rejected`. On success the job's `queued` event
/// has been published and its job thread is running.
pub fn submit(app: &Arc<App>, request: GenerateRequest) -> Result<Arc<Job>, ApiError> {
    let plan = Plan::new(app, request)?;
    let job = app.jobs.admit(&plan.workflow)?;
    let started = match start_on_any_backend(app, &job, &plan) {
        Ok(started) => started,
        Err(error) => {
            app.jobs.forget(job.id());
            return Err(error);
        }
    };
    let position = started
        .client
        .get_queue()
        .ok()
        .and_then(|queue| queue.position_of(&started.prompt_id));
    job.publish(
        EventKind::Queued,
        json!({
            "prompt_id": started.prompt_id,
            "workflow": plan.workflow,
            "queue_position": position,
        }),
    );
    log::info!(
        "job {} queued as prompt {} on {}",
        job.id(),
        started.prompt_id,
        started.client.base_url()
    );
    let thread_app = Arc::clone(app);
    let thread_job = Arc::clone(&job);
    let spawned = thread::Builder::new()
        .name(format!("job-{}", &job.id().as_str()[..8]))
        .spawn(move || run(&thread_app, &thread_job, started, plan, position));
    if let Err(e) = spawned {
        // The prompt is queued but nobody would follow it: fail the job visibly.
        job.finish(JobState::Failed(ApiError::internal(format!(
            "could not start a job thread: {e}"
        ))));
    }
    Ok(job)
}

/// Tries each configured ComfyUI in turn until one accepts the prompt.
fn start_on_any_backend(app: &App, job: &Job, plan: &Plan) -> Result<Started, ApiError> {
    let mut unreachable = Vec::new();
    for client in &app.backends {
        match start_on(app, client, job, plan) {
            Ok(started) => return Ok(started),
            Err(error) if matches!(error, ComfyError::Rejected { .. }) => {
                return Err(rejected(&error));
            }
            Err(error) => {
                app.metrics.comfyui_error();
                log::warn!(
                    "ComfyUI at {} could not start the job: {error}",
                    client.base_url()
                );
                unreachable.push(json!({ "url": client.base_url(), "reason": error.to_string() }));
            }
        }
    }
    Err(ApiError::new(
        ErrorCode::ComfyuiUnavailable,
        "no ComfyUI backend could be reached; is ComfyUI running at COMFYUI_URL?",
    )
    .with_details(json!({ "backends": unreachable })))
}

/// `422 comfyui_rejected` from ComfyUI's validation answer.
fn rejected(error: &ComfyError) -> ApiError {
    let details = match error {
        ComfyError::Rejected {
            error_type,
            details,
            node_errors,
            ..
        } => json!({ "type": error_type, "details": details, "node_errors": node_errors }),
        _ => json!({}),
    };
    // The Display names every failing node and input, which is what the client must fix.
    ApiError::new(ErrorCode::ComfyuiRejected, error.to_string()).with_details(details)
}

/// Connects the websocket first (so no message is missed), uploads images, queues the prompt.
fn start_on(
    app: &App,
    client: &ComfyClient,
    job: &Job,
    plan: &Plan,
) -> Result<Started, ComfyError> {
    let client_id = job.id().to_string();
    let monitor = Monitor::connect(client.base_url(), &client_id, client.connect_timeout())?;
    let graph = match &plan.source {
        GraphSource::Raw(graph) => graph.clone(),
        GraphSource::Template { name, resolved } => {
            let mut uploaded = std::collections::BTreeMap::new();
            for image in &resolved.images {
                let filename = format!("gateway-{}-{}.{}", job.id(), image.param, image.extension);
                let name = client.upload_image(&image.bytes, &filename, image.content_type)?;
                uploaded.insert(image.param.clone(), name);
            }
            let template = app
                .templates
                .get(name)
                .ok_or_else(|| ComfyError::BadResponse {
                    url: client.base_url().to_string(),
                    reason: format!("template {name} disappeared while the job started"),
                })?;
            // The template was checked at start-up and the request validated, so filling it
            // cannot fail; if it somehow does, say so instead of panicking.
            template
                .build_graph(resolved, &uploaded)
                .map_err(|e| ComfyError::BadResponse {
                    url: client.base_url().to_string(),
                    reason: format!("filling template {name}: {e}"),
                })?
        }
    };
    let queued = client.queue_prompt(&graph, &client_id)?;
    Ok(Started {
        client: client.clone(),
        monitor,
        prompt_id: queued.prompt_id,
        graph,
    })
}

/// The job thread's body: drive the job while a ticker thread publishes progress, and turn even
/// a panic into a terminal event.
fn run(app: &App, job: &Job, started: Started, plan: Plan, position: Option<usize>) {
    let mut tracker = ProgressTracker::new(started.prompt_id.clone(), &started.graph);
    tracker.set_queue_position(position);
    let tracker = Mutex::new(tracker);
    let state = thread::scope(|scope| {
        let (stop_ticks, stopped) = crossbeam_channel::bounded::<()>(0);
        let ticker = thread::Builder::new()
            .name(format!("tick-{}", &job.id().as_str()[..8]))
            .spawn_scoped(scope, || tick(app, job, &tracker, stopped));
        if let Err(e) = ticker {
            log::error!(
                "job {}: no progress ticks, cannot start a thread: {e}",
                job.id()
            );
        }
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            drive(app, job, started, &plan, &tracker)
        }));
        drop(stop_ticks); // ends the ticker, which the scope then joins
        outcome.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown cause");
            log::error!("job {} thread panicked: {what}", job.id());
            JobState::Failed(ApiError::internal(format!(
                "the gateway hit a bug while running this job ({what})"
            )))
        })
    });
    let state_name = state.as_str();
    if job.finish(state) {
        app.metrics
            .job_finished(state_name, job.created().elapsed());
        log::info!(
            "job {} {state_name} after {} ms",
            job.id(),
            job.elapsed_ms()
        );
    }
}

/// Publishes a `progress` event every interval until `stop` is dropped. It runs on its own thread
/// so that ticks keep their cadence whatever the job thread is blocked on (a slow ComfyUI call,
/// an upload).
fn tick(app: &App, job: &Job, tracker: &Mutex<ProgressTracker>, stop: Receiver<()>) {
    let interval = app.run.progress_interval;
    let mut next = Instant::now() + interval;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_deadline(next) {
        let state = job.state();
        let snapshot = lock(tracker).snapshot(state.as_str(), job.elapsed_ms());
        job.publish(EventKind::Progress, snapshot);
        next += interval;
        let now = Instant::now();
        if next <= now {
            next = now + interval; // fell behind (a busy machine): keep the cadence, no burst
        }
    }
}

/// The tracker, even if a panic poisoned its lock (its state is only ever replaced whole).
fn lock(tracker: &Mutex<ProgressTracker>) -> MutexGuard<'_, ProgressTracker> {
    tracker.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How watching the prompt ended.
enum Ending {
    /// The websocket reported the end of execution.
    Ran(Outcome),
    /// The socket was lost, but `/history` knew the prompt's end.
    FromHistory(Box<HistoryEntry>),
    Cancelled,
    TimedOut,
    /// ComfyUI went away and the prompt's fate is unknown.
    Lost(String),
}

/// Milestones for `timings_ms`.
pub(super) struct Timings {
    pub created: Instant,
    pub started: Option<Instant>,
    pub executed: Option<Instant>,
}

/// Watches the prompt, then turns its ending into the job's final state.
fn drive(
    app: &App,
    job: &Job,
    started: Started,
    plan: &Plan,
    tracker: &Mutex<ProgressTracker>,
) -> JobState {
    let Started {
        client,
        monitor,
        prompt_id,
        graph: _,
    } = started;
    let mut watch = Watch {
        app,
        job,
        client: &client,
        monitor: Some(monitor),
        tracker,
        prompt_id: &prompt_id,
        deadline: job.created() + app.run.job_timeout,
        last_message: Instant::now(),
        queue_checked: None,
        timings: Timings {
            created: job.created(),
            started: None,
            executed: None,
        },
    };
    let ending = watch.follow();
    if let Some(monitor) = watch.monitor.take() {
        monitor.close();
    }
    let mut timings = watch.timings;
    let history = match ending {
        Ending::Ran(Outcome::Succeeded) => None,
        Ending::FromHistory(entry) => match history_failure(&entry, job) {
            Some(state) => return state,
            None => Some(*entry),
        },
        Ending::Ran(Outcome::Failed(failure)) => return execution_failed(&failure),
        Ending::Ran(Outcome::Interrupted { node_id, node_type }) => {
            return interrupted(job, node_id, node_type);
        }
        Ending::Cancelled => {
            stop_prompt(&client, &prompt_id);
            return JobState::Cancelled;
        }
        Ending::TimedOut => {
            stop_prompt(&client, &prompt_id);
            return JobState::Failed(ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "the job was still unfinished after {} s (JOB_TIMEOUT_SECS) and was interrupted",
                    app.run.job_timeout.as_secs()
                ),
            ));
        }
        Ending::Lost(reason) => {
            return JobState::Failed(
                ApiError::new(ErrorCode::ComfyuiLost, reason.clone())
                    .with_details(json!({ "prompt_id": prompt_id, "comfyui": client.base_url() })),
            );
        }
    };
    timings.executed.get_or_insert_with(Instant::now);
    job.set_state(JobState::Uploading);
    let request = StoreRequest {
        app,
        job,
        client: &client,
        prompt_id: &prompt_id,
        workflow: &plan.workflow,
        params: plan.params(),
        seed: plan.seed(),
        history,
        timings,
        outputs: match &plan.source {
            GraphSource::Template { name, .. } => app
                .templates
                .get(name)
                .map(|t| t.outputs)
                .unwrap_or_default(),
            GraphSource::Raw(_) => Default::default(),
        },
        warnings: Vec::new(),
    };
    match output::collect_and_store(request) {
        Ok(result) => JobState::Completed(Arc::new(result)),
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

/// Takes the prompt out of ComfyUI: deleted while pending, interrupted while it is the one
/// running. Checking the queue first means another client's running prompt is never interrupted,
/// even by an older ComfyUI that ignores the `prompt_id` of `/interrupt`.
fn stop_prompt(client: &ComfyClient, prompt_id: &PromptId) {
    let queue = match client.get_queue() {
        Ok(queue) => queue,
        Err(e) => {
            log::warn!("could not read ComfyUI's queue to stop prompt {prompt_id}: {e}");
            return;
        }
    };
    let result = if queue.running.contains(prompt_id) {
        client.interrupt(Some(prompt_id))
    } else if queue.pending.iter().any(|(_, id)| id == prompt_id) {
        client.delete_from_queue(std::slice::from_ref(prompt_id))
    } else {
        Ok(()) // already finished: nothing to stop
    };
    if let Err(e) = result {
        log::warn!("could not stop prompt {prompt_id} in ComfyUI: {e}");
    }
}

/// The websocket-following part of a job thread.
struct Watch<'a> {
    app: &'a App,
    job: &'a Job,
    client: &'a ComfyClient,
    monitor: Option<Monitor>,
    tracker: &'a Mutex<ProgressTracker>,
    prompt_id: &'a PromptId,
    deadline: Instant,
    /// When the websocket last said anything.
    last_message: Instant,
    /// When the queue position was last read from `/queue`.
    queue_checked: Option<Instant>,
    timings: Timings,
}

impl Watch<'_> {
    /// Follows the prompt until it ends.
    fn follow(&mut self) -> Ending {
        loop {
            if self.job.cancel_requested() {
                return Ending::Cancelled;
            }
            let now = Instant::now();
            if now >= self.deadline {
                return Ending::TimedOut;
            }
            // Short waits, so a cancel request is noticed within the poll interval.
            let wait = self
                .deadline
                .saturating_duration_since(now)
                .min(self.app.run.poll_interval);
            let Some(monitor) = self.monitor.as_mut() else {
                match self.recover() {
                    Ok(()) => continue,
                    Err(ending) => return ending,
                }
            };
            match monitor.next_event(wait) {
                Ok(Some(event)) => {
                    self.last_message = Instant::now();
                    if let Some(outcome) = self.observe(&event) {
                        return Ending::Ran(outcome);
                    }
                }
                Ok(None) if self.last_message.elapsed() >= self.app.run.silence_check => {
                    self.last_message = Instant::now();
                    if let Some(ending) = self.check_silence() {
                        return ending;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    log::warn!("job {}: ComfyUI's websocket ended: {e}", self.job.id());
                    self.monitor = None;
                }
            }
        }
    }

    /// The websocket has been quiet for a while: make sure the prompt has not ended unheard.
    fn check_silence(&self) -> Option<Ending> {
        match self.probe() {
            Probe::Finished(entry) => {
                log::warn!(
                    "job {}: prompt {} ended without a websocket message; read from /history",
                    self.job.id(),
                    self.prompt_id
                );
                Some(Ending::FromHistory(Box::new(entry)))
            }
            Probe::Gone => Some(Ending::Lost(format!(
                "ComfyUI at {} no longer knows prompt {}",
                self.client.base_url(),
                self.prompt_id
            ))),
            Probe::Alive | Probe::Unreachable(_) => None,
        }
    }

    fn observe(&mut self, event: &WsEvent) -> Option<Outcome> {
        if matches!(event, WsEvent::Status { .. }) && !lock(self.tracker).started() {
            self.refresh_queue_position();
        }
        let (was_started, outcome, started) = {
            let mut tracker = lock(self.tracker);
            let was_started = tracker.started();
            let outcome = tracker.observe(event).cloned();
            (was_started, outcome, tracker.started())
        };
        if !was_started && started {
            self.app
                .metrics
                .time_to_first_progress
                .observe(self.job.created().elapsed());
            self.timings.started = Some(Instant::now());
            self.job.set_state(JobState::Running);
        }
        if outcome.is_some() {
            self.timings.executed = Some(Instant::now());
        }
        outcome
    }

    /// Reads the prompt's place in ComfyUI's queue, at most once per progress interval: every
    /// queue change broadcasts `status` to every client, and `/queue` carries every pending
    /// graph, so asking on each message would cost O(queue²) requests.
    fn refresh_queue_position(&mut self) {
        let interval = self.app.run.progress_interval;
        if self.queue_checked.is_some_and(|at| at.elapsed() < interval) {
            return;
        }
        self.queue_checked = Some(Instant::now());
        // Outside the tracker's lock: an HTTP call must never hold up a tick.
        let position = self
            .client
            .get_queue()
            .ok()
            .and_then(|queue| queue.position_of(self.prompt_id));
        lock(self.tracker).set_queue_position(position);
    }

    /// After the websocket dropped: learn the prompt's fate from `/history` and `/queue`, and
    /// reconnect while it is still pending or running. Gives up with `Lost` when ComfyUI stays
    /// unreachable past the grace period, or answers but no longer knows the prompt (it
    /// restarted, and a restarted ComfyUI has an empty queue and history).
    fn recover(&mut self) -> Result<(), Ending> {
        let give_up = Instant::now() + self.app.run.comfyui_grace;
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.job.cancel_requested() {
                return Err(Ending::Cancelled);
            }
            if Instant::now() >= self.deadline {
                return Err(Ending::TimedOut);
            }
            match self.probe() {
                Probe::Finished(entry) => return Err(Ending::FromHistory(Box::new(entry))),
                Probe::Gone => {
                    return Err(Ending::Lost(format!(
                        "ComfyUI at {} no longer knows prompt {}: it restarted mid-job and the \
                         prompt's work was lost",
                        self.client.base_url(),
                        self.prompt_id
                    )));
                }
                Probe::Alive => {
                    let client_id = self.job.id().to_string();
                    match Monitor::connect(
                        self.client.base_url(),
                        &client_id,
                        self.client.connect_timeout(),
                    ) {
                        Ok(monitor) => {
                            log::info!("job {}: reconnected to ComfyUI", self.job.id());
                            self.monitor = Some(monitor);
                            // The prompt may have finished between the probe and the new socket
                            // (its last messages went nowhere); history has it then.
                            if let Ok(Some(entry)) = self.client.get_history(self.prompt_id) {
                                return Err(Ending::FromHistory(Box::new(entry)));
                            }
                            return Ok(());
                        }
                        Err(e) => log::debug!("job {}: reconnect failed: {e}", self.job.id()),
                    }
                }
                Probe::Unreachable(reason) => {
                    self.app.metrics.comfyui_error();
                    log::debug!("job {}: ComfyUI unreachable: {reason}", self.job.id());
                }
            }
            let now = Instant::now();
            if now >= give_up {
                return Err(Ending::Lost(format!(
                    "ComfyUI at {} stopped answering mid-job and was still unreachable after {:?}",
                    self.client.base_url(),
                    self.app.run.comfyui_grace
                )));
            }
            thread::sleep(backoff.min(give_up.saturating_duration_since(now)));
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    fn probe(&self) -> Probe {
        match self.client.get_history(self.prompt_id) {
            Ok(Some(entry)) => return Probe::Finished(entry),
            Ok(None) => {}
            Err(e) => return Probe::Unreachable(e.to_string()),
        }
        // ComfyUI moves a finished prompt from the queue to the history under one lock, so a
        // prompt in neither place is gone for good.
        match self.client.get_queue() {
            Ok(queue) if queue.position_of(self.prompt_id).is_some() => Probe::Alive,
            Ok(_) => match self.client.get_history(self.prompt_id) {
                Ok(Some(entry)) => Probe::Finished(entry),
                Ok(None) => Probe::Gone,
                Err(e) => Probe::Unreachable(e.to_string()),
            },
            Err(e) => Probe::Unreachable(e.to_string()),
        }
    }
}

/// What ComfyUI says about a prompt after the websocket dropped.
enum Probe {
    Finished(HistoryEntry),
    Alive,
    Gone,
    Unreachable(String),
}
