//! One ComfyUI backend: its single long-lived websocket, the prompts it holds for the gateway,
//! and the monitor thread that routes ComfyUI's messages to their jobs by `prompt_id`.
//!
//! The websocket gets a fresh client id on every connection: when a socket closes, ComfyUI
//! unregisters whatever socket then holds that id, so reusing one could silence the new socket.
//! Prompts are queued under the current id; a prompt queued under an earlier one (before a
//! reconnect, or by a gateway that restarted) is *orphaned*: its messages go nowhere, so the
//! monitor follows it through `/history` and `/queue` instead.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use super::engine::{Ending, Engine};
use super::{Job, JobState};
use crate::api::{ApiError, ErrorCode};
use crate::blobs::BlobHash;
use crate::comfyui::{ComfyClient, ComfyError, HistoryEntry, Monitor, QueueSnapshot, WsEvent};
use crate::ids::{self, JobId, PromptId};

/// The message that asks ComfyUI for previews that name their prompt and node (type-4 frames).
const FEATURE_FLAGS: &str = r#"{"type":"feature_flags","data":{"supports_preview_metadata":true}}"#;

/// Messages for a prompt not registered yet (ComfyUI may start it before `/prompt` answers) are
/// kept this long, and at most this many per prompt and prompts in all.
const EARLY_KEEP: Duration = Duration::from_secs(30);
const EARLY_PER_PROMPT: usize = 256;
const EARLY_PROMPTS: usize = 64;
/// How many prompts that left the backend's care are remembered, so that their late messages
/// (ComfyUI sends `executing` with no node after `execution_success`) are dropped, not kept.
const FORGOTTEN_KEPT: usize = 256;

/// Whether a backend can take prompts now, as `/ready` and submission see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendStatus {
    /// The websocket is open.
    Up,
    /// Not connected yet, or the last attempt failed, and why.
    Down(String),
}

struct State {
    status: BackendStatus,
    /// The client id of the open websocket; prompts are queued under it.
    client_id: Option<String>,
    /// Prompts this backend holds for the gateway, running or waiting in ComfyUI's queue.
    jobs: HashMap<PromptId, Arc<Job>>,
    /// Slots taken by dispatches under way.
    reserved: usize,
    /// The prompt ComfyUI is executing, as its messages tell (plain previews belong to it).
    executing: Option<PromptId>,
    early: HashMap<PromptId, (Instant, Vec<WsEvent>)>,
    /// The prompts that most recently left the backend's care, oldest first.
    forgotten: VecDeque<PromptId>,
    forgotten_set: HashSet<PromptId>,
    /// Prompts taken back while the backend was unreachable: removed from its queue once it
    /// answers again, so they do not run twice.
    abandoned: Vec<PromptId>,
    /// Since when the backend has been unreachable.
    down_since: Option<Instant>,
    /// When its websocket last delivered anything (or opened).
    last_heard: Option<Instant>,
    /// `/prompt` answers in a row that were server errors (or lacked a `prompt_id`).
    bad_answers: u32,
    /// Input files uploaded to this ComfyUI since its websocket last (re)connected: uploaded
    /// once each, under a name derived from their content.
    uploaded: HashSet<BlobHash>,
    /// No prompt is sent before this, after a bad answer (backoff).
    resting_until: Option<Instant>,
}

/// How long a backend gets no prompt after a bad `/prompt` answer.
pub(super) const BAD_ANSWER_REST: Duration = Duration::from_secs(1);

/// One ComfyUI the gateway sends prompts to.
pub struct Backend {
    index: usize,
    client: ComfyClient,
    state: Mutex<State>,
}

impl Backend {
    /// A backend reached through `client`, not connected yet.
    pub fn new(index: usize, client: ComfyClient) -> Backend {
        Backend {
            index,
            client,
            state: Mutex::new(State {
                status: BackendStatus::Down("not connected yet".into()),
                client_id: None,
                jobs: HashMap::new(),
                reserved: 0,
                executing: None,
                early: HashMap::new(),
                forgotten: VecDeque::new(),
                forgotten_set: HashSet::new(),
                abandoned: Vec::new(),
                down_since: None,
                last_heard: None,
                bad_answers: 0,
                resting_until: None,
                uploaded: HashSet::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Its HTTP client.
    pub fn client(&self) -> &ComfyClient {
        &self.client
    }

    /// Its base URL.
    pub fn url(&self) -> &str {
        self.client.base_url()
    }

    /// Whether it is connected.
    pub fn status(&self) -> BackendStatus {
        self.lock().status.clone()
    }

    /// Whether it is connected and its websocket delivered something within `recently`: a
    /// ComfyUI that has just died may not have been noticed yet by a quiet socket.
    pub fn heard_within(&self, recently: Duration) -> bool {
        let state = self.lock();
        state.status == BackendStatus::Up
            && state.last_heard.is_some_and(|at| at.elapsed() < recently)
    }

    /// When it last answered: its websocket opened or delivered something, or a call to it
    /// succeeded (`None`: never since the gateway started).
    pub fn last_answered(&self) -> Option<Instant> {
        self.lock().last_heard
    }

    /// Records that it answered a call now (its websocket may still be connecting).
    pub(super) fn answered(&self) {
        self.lock().last_heard = Some(Instant::now());
    }

    /// Prompts it holds for the gateway.
    pub fn in_flight(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Prompts it holds for the gateway plus the dispatches to it under way.
    pub(super) fn taken_slots(&self) -> usize {
        let state = self.lock();
        state.jobs.len() + state.reserved
    }

    /// The jobs whose prompts this backend holds, each with the number of prompts ahead of it:
    /// 0 for one ComfyUI runs; for one waiting in ComfyUI's queue, the one running plus those
    /// sent before it. Locks each job briefly: never call it under a job's lock.
    pub(super) fn positions(&self) -> Vec<(JobId, usize)> {
        let mut held: Vec<(bool, Instant, JobId)> = self
            .held()
            .into_iter()
            .filter_map(|(_, job)| {
                let (started, sent) =
                    job.with_run(|run| (run.started.is_some() || run.tracker.started(), run.sent))?;
                Some((!started, sent, job.id().clone()))
            })
            .collect();
        // Running ones first, then in the order they were sent.
        held.sort_by_key(|(waiting, sent, _)| (*waiting, *sent));
        held.into_iter()
            .enumerate()
            .map(|(place, (waiting, _, id))| (id, if waiting { place } else { 0 }))
            .collect()
    }

    /// Takes a slot for a dispatch when the backend is up and holds fewer than `capacity`
    /// prompts; returns the client id to queue the prompt under and the free slots left.
    pub(super) fn try_reserve(&self, capacity: usize) -> Option<(String, usize)> {
        let mut state = self.lock();
        if state.status != BackendStatus::Up || state.is_resting() {
            return None;
        }
        let used = state.jobs.len() + state.reserved;
        let client_id = state.client_id.clone()?;
        if used >= capacity {
            return None;
        }
        state.reserved += 1;
        Some((client_id, capacity - used - 1))
    }

    /// Free slots, for choosing among backends.
    pub(super) fn free_slots(&self, capacity: usize) -> usize {
        let state = self.lock();
        if state.status != BackendStatus::Up || state.is_resting() {
            return 0;
        }
        capacity.saturating_sub(state.jobs.len() + state.reserved)
    }

    /// Records a `/prompt` answer that was a server error (or lacked a `prompt_id`): the
    /// backend gets no prompt for [`BAD_ANSWER_REST`], so a broken ComfyUI is asked at most
    /// about once a second while the other backends go on. Returns how many such answers it
    /// gave in a row.
    pub(super) fn answered_badly(&self) -> u32 {
        let mut state = self.lock();
        state.bad_answers = state.bad_answers.saturating_add(1);
        state.resting_until = Some(Instant::now() + BAD_ANSWER_REST);
        state.bad_answers
    }

    /// Records a `/prompt` that ComfyUI accepted.
    pub(super) fn answered_well(&self) {
        let mut state = self.lock();
        state.bad_answers = 0;
        state.resting_until = None;
    }

    /// Whether the input file `hash` was uploaded to this ComfyUI since it last connected.
    pub(super) fn has_input(&self, hash: &BlobHash) -> bool {
        self.lock().uploaded.contains(hash)
    }

    /// Remembers that the input file `hash` is in this ComfyUI's input folder.
    pub(super) fn input_uploaded(&self, hash: BlobHash) {
        self.lock().uploaded.insert(hash);
    }

    /// Gives back a slot whose dispatch did not end with a prompt on this backend.
    pub(super) fn release(&self) {
        let mut state = self.lock();
        state.reserved = state.reserved.saturating_sub(1);
    }

    /// Takes a prompt ComfyUI accepted (queued under `client_id`) into this backend's care,
    /// turning its reserved slot into a held one, and feeds the job any messages that arrived
    /// before `/prompt` answered.
    pub(super) fn register(
        &self,
        engine: &Engine,
        prompt_id: PromptId,
        job: &Arc<Job>,
        client_id: &str,
    ) {
        let mut effects = Vec::new();
        {
            let mut state = self.lock();
            state.reserved = state.reserved.saturating_sub(1);
            if state.client_id.as_deref() != Some(client_id) {
                // The socket it was queued for is gone: follow it through /history.
                job.with_run(|run| run.orphaned = true);
            }
            state.jobs.insert(prompt_id.clone(), Arc::clone(job));
            if let Some((_, early)) = state.early.remove(&prompt_id) {
                for event in early {
                    if let Some(effect) = feed(&mut state, job, &prompt_id, &event) {
                        effects.push(effect);
                    }
                }
            }
        }
        for effect in effects {
            engine.apply(self.index, effect);
        }
    }

    /// Takes back a restored job whose prompt this backend had before the gateway restarted.
    pub(super) fn adopt(&self, prompt_id: PromptId, job: Arc<Job>) {
        self.lock().jobs.insert(prompt_id, job);
    }

    /// Forgets a prompt (its job ended or moved elsewhere).
    fn forget(&self, prompt_id: &PromptId) -> Option<Arc<Job>> {
        self.lock().release(prompt_id)
    }

    fn held(&self) -> Vec<(PromptId, Arc<Job>)> {
        self.lock()
            .jobs
            .iter()
            .map(|(id, job)| (id.clone(), Arc::clone(job)))
            .collect()
    }

    /// Routes one websocket message to the job of its prompt.
    fn route(&self, engine: &Engine, event: WsEvent) {
        self.lock().last_heard = Some(Instant::now());
        if let WsEvent::Preview {
            format,
            bytes,
            prompt_id,
            node,
        } = event
        {
            let job = {
                let state = self.lock();
                prompt_id
                    .or_else(|| state.executing.clone())
                    .and_then(|id| state.jobs.get(&id).cloned())
            };
            if let Some(job) = job {
                job.offer_preview(format, node, bytes);
            }
            return;
        }
        let effect = {
            let mut state = self.lock();
            let prompt_id = match event.prompt_id() {
                Some(id) => id.clone(),
                // `executing` without a prompt id (older versions, or a socket that connected
                // mid-prompt) is about the prompt running now.
                None if matches!(event, WsEvent::Executing { .. } | WsEvent::Progress { .. }) => {
                    match state.executing.clone() {
                        Some(id) => id,
                        None => return,
                    }
                }
                None => return,
            };
            match &event {
                WsEvent::ExecutionStart { .. } | WsEvent::ExecutionCached { .. } => {
                    state.executing = Some(prompt_id.clone());
                }
                WsEvent::ExecutionError { failure, .. } if failure.is_blocked_branch() => {}
                WsEvent::ExecutionSuccess { .. }
                | WsEvent::ExecutionError { .. }
                | WsEvent::ExecutionInterrupted { .. }
                | WsEvent::Executing { node: None, .. }
                    if state.executing.as_ref() == Some(&prompt_id) =>
                {
                    state.executing = None;
                }
                _ => {}
            }
            let Some(job) = state.jobs.get(&prompt_id).cloned() else {
                keep_early(&mut state, prompt_id, event);
                return;
            };
            feed(&mut state, &job, &prompt_id, &event)
        };
        if let Some(effect) = effect {
            engine.apply(self.index, effect);
        }
    }

    /// A new websocket is open under `client_id`: every prompt held so far was queued under
    /// an older id, so each becomes orphaned and is reconciled through `/history` and `/queue`.
    fn connected(&self, engine: &Engine, client_id: String) {
        let abandoned = {
            let mut state = self.lock();
            state.status = BackendStatus::Up;
            state.last_heard = Some(Instant::now());
            state.client_id = Some(client_id);
            state.down_since = None;
            state.executing = None;
            // A ComfyUI that restarted may have lost its input folder (a fresh container):
            // upload again rather than trust a name it may no longer know.
            state.uploaded.clear();
            for job in state.jobs.values() {
                job.with_run(|run| run.orphaned = true);
            }
            std::mem::take(&mut state.abandoned)
        };
        log::info!("ComfyUI at {} is connected", self.url());
        for prompt_id in abandoned {
            // It went to another backend meanwhile: make sure it does not also run here.
            match stop_prompt(&self.client, &prompt_id) {
                Stopped::Deleted | Stopped::Interrupted => log::info!(
                    "removed prompt {prompt_id} from {}: its job was sent elsewhere while this \
                     backend was unreachable",
                    self.url()
                ),
                Stopped::NotThere | Stopped::Failed(_) => {}
            }
        }
        self.reconcile(engine);
        engine.backend_up(self);
    }

    /// The websocket could not be opened (or reopened): the backend is skipped. Prompts it had
    /// not started go back to the front of the gateway's queue at once; prompts it was running
    /// get `comfyui_grace` to come back before their jobs fail with `comfyui_lost`.
    fn unreachable(&self, engine: &Engine, reason: &str) {
        let (newly_down, requeue) = {
            let mut state = self.lock();
            let newly_down = state.status == BackendStatus::Up || state.down_since.is_none();
            state.status = BackendStatus::Down(reason.to_string());
            state.client_id = None;
            state.executing = None;
            let since = *state.down_since.get_or_insert_with(Instant::now);
            let grace = engine.ctx().run.comfyui_grace;
            let mut requeue = Vec::new();
            let mut lost = Vec::new();
            for (prompt_id, job) in &state.jobs {
                let started = job.with_run(|run| run.started.is_some()).unwrap_or(true);
                if !started {
                    requeue.push((prompt_id.clone(), Arc::clone(job)));
                } else if since.elapsed() >= grace {
                    lost.push((prompt_id.clone(), Arc::clone(job)));
                }
            }
            for (prompt_id, _) in requeue.iter().chain(&lost) {
                state.release(prompt_id);
            }
            // Should it come back, none of them may run there as well as where they go now.
            for (prompt_id, _) in requeue.iter().chain(&lost) {
                state.abandoned.push(prompt_id.clone());
            }
            drop(state);
            for (prompt_id, job) in lost {
                let error = ApiError::new(
                    ErrorCode::ComfyuiLost,
                    format!(
                        "ComfyUI at {} stopped answering mid-job and was still unreachable \
                         after {grace:?}",
                        self.url()
                    ),
                )
                .with_details(json!({ "prompt_id": prompt_id, "comfyui": self.url() }));
                engine.lost(&job, error);
            }
            (newly_down, requeue)
        };
        if newly_down {
            engine.ctx().metrics.comfyui_error();
            log::warn!("ComfyUI at {} is unreachable: {reason}", self.url());
        }
        for (prompt_id, job) in requeue {
            log::info!(
                "job {}: prompt {prompt_id} had not started on {}, which is unreachable; back \
                 to the front of the queue",
                job.id(),
                self.url()
            );
            engine.requeue(&job);
        }
    }

    /// Asks ComfyUI about every held prompt and acts on what it says.
    fn reconcile(&self, engine: &Engine) {
        self.probe_and_act(engine, self.held(), false);
    }

    /// Looks up prompts ComfyUI has said nothing about for `silence`: a message lost on the way
    /// must not leave a job waiting for its timeout.
    fn check_silent(&self, engine: &Engine, silence: Duration) {
        let silent: Vec<_> = self
            .held()
            .into_iter()
            .filter(|(_, job)| {
                job.with_run(|run| {
                    let silent = !run.orphaned && run.last_heard.elapsed() >= silence;
                    if silent {
                        run.last_heard = Instant::now();
                    }
                    silent
                })
                .unwrap_or(false)
            })
            .collect();
        self.probe_and_act(engine, silent, true);
    }

    /// Looks up the orphaned prompts (those whose messages cannot reach the gateway).
    fn poll_orphans(&self, engine: &Engine) {
        let orphans: Vec<_> = self
            .held()
            .into_iter()
            .filter(|(_, job)| job.with_run(|run| run.orphaned).unwrap_or(false))
            .collect();
        self.probe_and_act(engine, orphans, false);
    }

    /// Reads `/queue` once and the fate of each prompt, and acts on it; `unheard` logs the
    /// prompts found finished, whose end the websocket should have told.
    fn probe_and_act(&self, engine: &Engine, prompts: Vec<(PromptId, Arc<Job>)>, unheard: bool) {
        if prompts.is_empty() {
            return;
        }
        let queue = self.client.get_queue();
        for (prompt_id, job) in prompts {
            let fate = match &queue {
                Ok(queue) => probe(&self.client, &prompt_id, queue),
                Err(e) => Fate::Unreachable(e.to_string()),
            };
            if unheard && matches!(fate, Fate::Finished(_)) {
                log::warn!(
                    "job {}: prompt {prompt_id} ended without a websocket message; read from \
                     /history",
                    job.id()
                );
            }
            self.act_on(engine, &prompt_id, &job, fate);
        }
    }

    fn act_on(&self, engine: &Engine, prompt_id: &PromptId, job: &Arc<Job>, fate: Fate) {
        match fate {
            Fate::Finished(entry) => {
                if self.forget(prompt_id).is_some() {
                    engine.apply(
                        self.index,
                        Effect::Ended(Arc::clone(job), Ending::FromHistory(entry)),
                    );
                }
            }
            Fate::Running => {
                if job.mark_started() {
                    engine.started(job);
                }
            }
            Fate::Pending => {}
            Fate::Unreachable(reason) => log::debug!(
                "job {}: cannot ask ComfyUI at {} about prompt {prompt_id}: {reason}",
                job.id(),
                self.url()
            ),
            Fate::Gone => {
                if self.forget(prompt_id).is_none() {
                    return;
                }
                let started = job.with_run(|run| run.started.is_some()).unwrap_or(false);
                if started {
                    let error = ApiError::new(
                        ErrorCode::ComfyuiLost,
                        format!(
                            "ComfyUI at {} no longer knows prompt {prompt_id}: it restarted \
                             mid-job and the prompt's work was lost",
                            self.url()
                        ),
                    )
                    .with_details(json!({ "prompt_id": prompt_id, "comfyui": self.url() }));
                    engine.lost(job, error);
                } else {
                    log::info!(
                        "job {}: ComfyUI at {} no longer knows prompt {prompt_id}, which had \
                         not started; sending it again",
                        job.id(),
                        self.url()
                    );
                    engine.requeue(job);
                }
            }
        }
    }

    /// Cancels, timeouts and forgotten early messages: what the monitor checks between reads.
    fn enforce_limits(&self, engine: &Engine) {
        let run = &engine.ctx().run;
        let now = Instant::now();
        for (prompt_id, job) in self.held() {
            let Some((started, stop_sent)) = job.with_run(|r| (r.started, r.stop_sent)) else {
                continue;
            };
            if stop_sent {
                continue;
            }
            if job.cancel_requested() {
                job.with_run(|r| r.stop_sent = true);
                match stop_prompt(&self.client, &prompt_id) {
                    Stopped::Deleted => {
                        self.forget(&prompt_id);
                        engine.finish(&job, JobState::Cancelled);
                    }
                    // ComfyUI reports the interrupt (or the prompt's end) on its own.
                    Stopped::Interrupted | Stopped::NotThere => {}
                    Stopped::Failed(reason) => {
                        log::warn!("job {}: could not cancel in ComfyUI: {reason}", job.id());
                        self.forget(&prompt_id);
                        engine.finish(&job, JobState::Cancelled);
                    }
                }
                continue;
            }
            let timed_out = match started {
                Some(at) => (now.saturating_duration_since(at) >= run.job_timeout).then(|| {
                    format!(
                        "the job was still unfinished {} s after ComfyUI started it \
                         (JOB_TIMEOUT_SECS) and was interrupted",
                        run.job_timeout.as_secs()
                    )
                }),
                None => run.queue_timeout.and_then(|limit| {
                    (now.saturating_duration_since(job.created()) >= limit).then(|| {
                        format!(
                            "the job waited {} s without starting (QUEUE_TIMEOUT_SECS) and was \
                             taken out of ComfyUI's queue",
                            limit.as_secs()
                        )
                    })
                }),
            };
            if let Some(message) = timed_out {
                job.with_run(|r| r.stop_sent = true);
                if let Stopped::Failed(reason) = stop_prompt(&self.client, &prompt_id) {
                    log::warn!("job {}: could not stop its prompt: {reason}", job.id());
                }
                self.forget(&prompt_id);
                engine.finish(
                    &job,
                    JobState::Failed(ApiError::new(ErrorCode::Timeout, message)),
                );
            }
        }
        let mut state = self.lock();
        state
            .early
            .retain(|_, (since, _)| since.elapsed() < EARLY_KEEP);
    }
}

/// What a message did to a job, acted on once the backend's lock is released.
pub(super) enum Effect {
    /// ComfyUI started executing the job's prompt.
    Started(Arc<Job>),
    /// The prompt ended.
    Ended(Arc<Job>, Ending),
}

/// Feeds `event` to `job`; an ended prompt leaves the backend's care.
fn feed(
    state: &mut State,
    job: &Arc<Job>,
    prompt_id: &PromptId,
    event: &WsEvent,
) -> Option<Effect> {
    let observed = job.observe(event);
    if let Some(outcome) = observed.outcome {
        state.release(prompt_id);
        return Some(Effect::Ended(Arc::clone(job), Ending::Ran(outcome)));
    }
    observed.started.then(|| Effect::Started(Arc::clone(job)))
}

impl State {
    /// Whether the backend rests after bad `/prompt` answers.
    fn is_resting(&self) -> bool {
        self.resting_until
            .is_some_and(|until| Instant::now() < until)
    }

    /// Takes a prompt out of the backend's care, remembering it so its late messages are
    /// recognised.
    fn release(&mut self, prompt_id: &PromptId) -> Option<Arc<Job>> {
        let job = self.jobs.remove(prompt_id)?;
        if self.forgotten_set.insert(prompt_id.clone()) {
            self.forgotten.push_back(prompt_id.clone());
        }
        while self.forgotten.len() > FORGOTTEN_KEPT {
            if let Some(oldest) = self.forgotten.pop_front() {
                self.forgotten_set.remove(&oldest);
            }
        }
        Some(job)
    }
}

/// Keeps a message for a prompt the backend does not hold (yet): only while a dispatch is under
/// way, since only a prompt being sent can be unknown and still about to arrive.
fn keep_early(state: &mut State, prompt_id: PromptId, event: WsEvent) {
    if state.reserved == 0 || state.forgotten_set.contains(&prompt_id) {
        return;
    }
    if state.early.len() >= EARLY_PROMPTS && !state.early.contains_key(&prompt_id) {
        // Make room: the oldest entry belongs to a prompt that never registered.
        let oldest = state
            .early
            .iter()
            .min_by_key(|(_, (since, _))| *since)
            .map(|(id, _)| id.clone());
        if let Some(oldest) = oldest {
            state.early.remove(&oldest);
        }
    }
    let (_, events) = state
        .early
        .entry(prompt_id)
        .or_insert_with(|| (Instant::now(), Vec::new()));
    if events.len() < EARLY_PER_PROMPT {
        events.push(event);
    }
}

/// What ComfyUI says about a prompt.
pub(super) enum Fate {
    /// In its history: it ended (well or not).
    Finished(Box<HistoryEntry>),
    /// Executing now.
    Running,
    /// Waiting in ComfyUI's queue.
    Pending,
    /// In neither: ComfyUI restarted (a restarted ComfyUI has an empty queue and history) or
    /// the prompt was deleted.
    Gone,
    /// ComfyUI did not answer.
    Unreachable(String),
}

/// Reads a prompt's fate. ComfyUI moves a finished prompt from the queue to the history under
/// one lock, so history is asked again after the queue: a prompt in neither place is gone.
fn probe(client: &ComfyClient, prompt_id: &PromptId, queue: &QueueSnapshot) -> Fate {
    if queue.running.contains(prompt_id) {
        return Fate::Running;
    }
    if queue.pending.iter().any(|(_, id)| id == prompt_id) {
        return Fate::Pending;
    }
    match client.get_history(prompt_id) {
        Ok(Some(entry)) => Fate::Finished(Box::new(entry)),
        Ok(None) => Fate::Gone,
        Err(e) => Fate::Unreachable(e.to_string()),
    }
}

/// How stopping a prompt went.
enum Stopped {
    /// It was waiting and is deleted from ComfyUI's queue.
    Deleted,
    /// It was running and is interrupted.
    Interrupted,
    /// It is neither waiting nor running: already finished.
    NotThere,
    /// ComfyUI could not be asked.
    Failed(String),
}

/// Takes the prompt out of ComfyUI: deleted while pending, interrupted while it is the one
/// running. Checking the queue first means another client's running prompt is never
/// interrupted, even by an older ComfyUI that ignores the `prompt_id` of `/interrupt`.
fn stop_prompt(client: &ComfyClient, prompt_id: &PromptId) -> Stopped {
    let queue = match client.get_queue() {
        Ok(queue) => queue,
        Err(e) => return Stopped::Failed(e.to_string()),
    };
    let result = if queue.running.contains(prompt_id) {
        client
            .interrupt(Some(prompt_id))
            .map(|()| Stopped::Interrupted)
    } else if queue.pending.iter().any(|(_, id)| id == prompt_id) {
        client
            .delete_from_queue(std::slice::from_ref(prompt_id))
            .map(|()| Stopped::Deleted)
    } else {
        Ok(Stopped::NotThere)
    };
    result.unwrap_or_else(|e: ComfyError| Stopped::Failed(e.to_string()))
}

/// The monitor thread of backend `index`: keeps its websocket open, routes messages, and
/// enforces cancels and timeouts. Ends when the engine is gone or stopping.
pub(super) fn monitor(engine: Weak<Engine>, index: usize) {
    let mut session: Option<Session> = None;
    let mut backoff = Duration::from_millis(100);
    let mut next_attempt = Instant::now();
    let mut last_orphan_poll = Instant::now();
    loop {
        let Some(engine) = engine.upgrade() else {
            break;
        };
        if engine.is_stopped() {
            break;
        }
        let Some(backend) = engine.backend(index) else {
            break;
        };
        let run = engine.ctx().run.clone();
        match session.as_mut() {
            None if Instant::now() >= next_attempt => match Session::open(backend) {
                Ok(opened) => {
                    let client_id = opened.client_id.clone();
                    session = Some(opened);
                    backoff = Duration::from_millis(100);
                    backend.connected(&engine, client_id);
                }
                Err(reason) => {
                    backend.unreachable(&engine, &reason);
                    next_attempt = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            },
            None => {
                let wait = next_attempt.saturating_duration_since(Instant::now());
                drop(engine);
                thread::sleep(wait.min(run.poll_interval));
                continue;
            }
            Some(open) => match open.monitor.next_event(run.poll_interval) {
                Ok(Some(event)) => backend.route(&engine, event),
                Ok(None) => {}
                Err(e) => {
                    log::warn!("ComfyUI at {}: the websocket ended: {e}", backend.url());
                    session = None;
                    next_attempt = Instant::now();
                }
            },
        }
        if session.is_some() && last_orphan_poll.elapsed() >= run.orphan_poll {
            last_orphan_poll = Instant::now();
            backend.poll_orphans(&engine);
            backend.check_silent(&engine, run.silence_check);
        }
        backend.enforce_limits(&engine);
    }
    if let Some(open) = session {
        open.monitor.close();
    }
}

/// An open websocket and what the monitor knows about it.
struct Session {
    monitor: Monitor,
    client_id: String,
}

impl Session {
    fn open(backend: &Backend) -> Result<Session, String> {
        let client_id = format!("gateway-{}", ids::new_uuid());
        let client = backend.client();
        let mut monitor = Monitor::connect(client.base_url(), &client_id, client.connect_timeout())
            .map_err(|e| e.to_string())?;
        if let Err(e) = monitor.send_text(FEATURE_FLAGS) {
            return Err(format!("the websocket ended right after connecting: {e}"));
        }
        Ok(Session { monitor, client_id })
    }
}
