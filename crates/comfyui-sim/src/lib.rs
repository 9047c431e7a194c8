//! A faithful, in-process stand-in for ComfyUI's server, for tests, benchmarks and demos (the
//! `comfyui-sim` binary runs it as a process).
//!
//! [`ComfySim`] listens on one port for ComfyUI's HTTP API (`/prompt`, `/history`, `/view`,
//! `/queue`, `/interrupt`, `/upload/image`, `/system_stats`, `/object_info`) and its websocket
//! (`/ws?clientId=...`). A single worker thread executes queued prompts one at a time, FIFO,
//! sending the same messages in the same order as ComfyUI, caching node results like ComfyUI,
//! and writing real PNG files that `/view` serves, plus animations (SaveAnimatedPNG,
//! SaveAnimatedWEBP), videos (SaveVideo, SaveWEBM, VideoHelperSuite's VHS_VideoCombine) and audio
//! (SaveAudio, SaveAudioMP3, SaveAudioOpus, SaveAudioWAV) with real container headers, reported
//! under the output keys ComfyUI uses (`images` with `animated`, `gifs`, `audio`). Each file
//! carries the prompt (and each `extra_pnginfo` entry, the workflow among them, when the client
//! sent one) where ComfyUI's saver puts it: PNG `tEXt`, APNG `comf`, WebP `EXIF`, FLAC and Opus
//! comments, MP3 `TXXX`, MP4 `mdta` metadata, WebM `Tags`.
//!
//! Tests steer it and watch it without sleeping: [`ComfySim::events`] reports what happened after
//! the bytes were written, [`ComfySim::fail_next`] injects failures, [`ComfySim::pause`] holds the
//! queue, [`ComfySim::crash`] and [`ComfySim::restart`] imitate the process dying and coming back.
//!
//! ```no_run
//! use comfyui_sim::{ComfySim, SimEvent, SimOptions};
//!
//! let sim = ComfySim::start(SimOptions::default()).expect("port 0 is always free");
//! let events = sim.events();
//! // ... point a client at sim.url(), queue a prompt ...
//! while let Ok(event) = events.recv() {
//!     if let SimEvent::Finished { outcome, .. } = event {
//!         assert_eq!(outcome, "success");
//!         break;
//!     }
//! }
//! ```
//!
//! Caching follows ComfyUI's classic cache: a node whose class, inputs and upstream nodes match
//! one from the previous prompt is reused (reported in `execution_cached`); entries the new
//! prompt cannot use are dropped, so only the last prompt's results are remembered.
//!
//! Threads: an accept loop and one thread per connection (which, for a websocket, goes on
//! reading the client's frames), one writer thread per websocket, one worker. Every HTTP answer
//! carries `Connection: close`, so no keep-alive connection can outlive a crash and answer from
//! a dead process's memory.
//!
//! Websockets follow ComfyUI's `server.py`: one registered socket per client id (a reconnect
//! takes the id over; when a socket ends, whatever socket then holds its id is unregistered),
//! `status` broadcast to every registered socket on each queue change, execution messages only
//! to the socket of the prompt's client id, and a client's first `feature_flags` message read.
//! [`ComfySim::ws_stats`] counts what that costs.

mod compute;
mod control;
mod exec;
mod graph;
mod http;
mod ids;
mod media;
mod nodes;
mod pyjson;
mod render;
mod state;
mod validate;
mod wire;
mod ws;

#[cfg(test)]
mod tests;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::Value;

use state::SimState;

/// How to run the simulator.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Address to listen on; `"127.0.0.1:0"` picks a free port.
    pub listen: String,
    /// How long each sampler step takes.
    pub step_delay: Duration,
    /// Whether samplers send a binary preview frame after each step's `progress`: type 4
    /// (with metadata) to a client that announced `supports_preview_metadata` in a
    /// `feature_flags` message, else type 1. See [`ComfySim::set_previews`].
    pub send_previews: bool,
    /// The image format of previews.
    pub preview_format: PreviewFormat,
    /// How long after a prompt's final messages its history entry is written (ComfyUI writes
    /// it after sending them; zero still leaves a short window).
    pub history_delay: Duration,
    /// Whether every HTTP request is kept for [`ComfySim::requests`] (bodies included). Turn it
    /// off for long runs whose memory is measured in the same process.
    pub record_requests: bool,
}

/// The image format of sampler previews, as ComfyUI's `--preview-method` would produce them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreviewFormat {
    /// A small PNG of the image developing from grey (format code 2 in type 1 frames).
    #[default]
    Png,
    /// A flat grey baseline JPEG of the image's mean brightness (format code 1), ComfyUI's
    /// usual preview format.
    Jpeg,
}

impl Default for SimOptions {
    /// `127.0.0.1:0`, 20 ms per step, no previews.
    fn default() -> Self {
        SimOptions {
            listen: "127.0.0.1:0".into(),
            step_delay: Duration::from_millis(20),
            send_previews: false,
            preview_format: PreviewFormat::Png,
            history_delay: Duration::ZERO,
            record_requests: true,
        }
    }
}

/// A failure to inject with [`ComfySim::fail_next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The next prompt fails with `execution_error` when it reaches `node_id` (`None`: the first
    /// executed node with a `steps` input, else the first executed node). A named node that does
    /// not execute (cached, or not in the graph) lets the prompt succeed.
    ExecutionError {
        node_id: Option<String>,
        exception_type: String,
        message: String,
    },
    /// A node of the next prompt blocks its branch, as a node returning ComfyUI's
    /// `ExecutionBlocker(message)` does: `node_id` (`None`: the first output node that is not
    /// cached) sends `executing`, then an `execution_error` with `exception_type`
    /// `"ExecutionBlocked"` and `exception_message` `"Execution Blocked: {message}"`; it and the
    /// nodes that need it produce nothing, the other branches run, and the prompt still ends
    /// with `execution_success`. The error is not written to history.
    ExecutionBlocked {
        node_id: Option<String>,
        message: String,
    },
    /// The simulator [crashes](ComfySim::crash) right after the sampler of the next prompt sent
    /// the progress of this step. Like `CloseSocketAt`, it is used up by the next prompt even if
    /// that prompt has no sampler or fewer steps.
    CrashAt { step: u32 },
    /// Every websocket ends without a close frame right after the sampler sent the progress of
    /// this step; the prompt still runs to success (visible in `/history`).
    CloseSocketAt { step: u32 },
    /// The next `POST /prompt` is refused with 400 `prompt_outputs_failed_validation`.
    ValidationError,
}

/// An odd answer to `POST /prompt`, as a ComfyUI with a broken custom node or a proxy in front
/// of it gives: armed with [`ComfySim::fail_prompts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptFault {
    /// The HTTP status to answer with, e.g. 500 (or 200, with a body lacking `prompt_id`).
    pub status: u16,
    /// The body to answer with (sent as `text/plain`).
    pub body: String,
    /// How many `/prompt` requests get it; `u32::MAX`: every one from now on.
    pub times: u32,
}

/// Something the simulator did, reported after the bytes that show it were written.
#[derive(Debug, Clone, PartialEq)]
pub enum SimEvent {
    /// A websocket was accepted, registered under its client id (taking the registration from
    /// any older socket with that id) and its first `status` message written.
    WsConnected { client_id: String },
    /// A websocket ended from the client's side (close frame, EOF or error) and, as ComfyUI's
    /// server does, the registration of `client_id` was removed, whichever socket held it:
    /// `removed_newer` is true when that was a newer socket that had reconnected with the
    /// same id, which from now on gets no messages at all. Not sent for sockets the simulator
    /// ends itself (crash, [`ComfySim::cut_websockets`], [`Failure::CloseSocketAt`]).
    WsClosed {
        client_id: String,
        removed_newer: bool,
    },
    /// A client's first text message was `feature_flags`: its flags are recorded for its
    /// client id and the server's own `feature_flags` answer was written.
    FeatureFlags { client_id: String, flags: Value },
    /// `POST /prompt` queued a prompt (reported before the worker can start it). `number` is
    /// the one in the answer, except that ComfyUI makes it negative for `"front": true`.
    PromptQueued { prompt_id: String, number: u64 },
    /// The worker started a prompt and wrote `execution_start`.
    ExecutionStarted { prompt_id: String },
    /// A sampler step's `progress` message was written (`at`: just after the flush, or when it
    /// would have been had the client been connected).
    Step {
        prompt_id: String,
        node: String,
        value: u32,
        max: u32,
        at: Instant,
    },
    /// A prompt ended: its final messages were written, then its history entry, and `status`
    /// was broadcast; `outcome` is `"success"`, `"error"` or `"interrupted"`. Not sent for
    /// prompts lost in a crash.
    Finished { prompt_id: String, outcome: String },
    /// A sampler step's binary preview frame was written: type 4 (`with_metadata`) or type 1.
    PreviewSent {
        prompt_id: String,
        node: String,
        step: u32,
        with_metadata: bool,
        /// The frame's size, event type included.
        bytes: usize,
    },
    /// `POST /interrupt` was answered; `prompt_id` is the prompt it stopped, if any.
    Interrupted { prompt_id: Option<String> },
    /// `POST /queue` was answered; these pending prompts were removed.
    QueueDeleted { prompt_ids: Vec<String> },
    /// [`ComfySim::crash`] finished: sockets are closed and connections are refused.
    Crashed,
    /// [`ComfySim::restart`] finished: the port accepts connections again.
    Restarted,
}

/// What the websockets cost the simulator so far (counts survive crashes and restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WsStats {
    /// Websocket upgrades accepted and registered since start.
    pub accepted: u64,
    /// Sockets open now, registered under a client id or not (a socket whose registration a
    /// reconnect took over stays open until its client closes it).
    pub open: usize,
    /// The most sockets open at once.
    pub peak_open: usize,
    /// Client ids with a registered socket now: what `status` broadcasts go to.
    pub registered: usize,
    /// `status` messages handed to sockets: greetings plus one per registered socket for every
    /// queue change (as in ComfyUI, N sockets and N queued prompts cost on the order of N²).
    pub status_sent: u64,
    /// Messages of every kind handed to sockets (text and binary; muted ones not counted).
    pub messages_sent: u64,
    /// Binary preview frames written.
    pub previews_sent: u64,
}

/// One HTTP request as the simulator received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target: path and query, e.g. `/view?filename=a.png&type=output`.
    pub path: String,
    /// Header names as sent, with their values, in order.
    pub headers: Vec<(String, String)>,
    /// The body bytes (empty for websocket upgrades).
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running ComfyUI stand-in. Dropping it shuts it down: its threads end and its port is freed.
pub struct ComfySim {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl ComfySim {
    /// Binds `opts.listen` and starts serving.
    pub fn start(opts: SimOptions) -> io::Result<ComfySim> {
        let listener = TcpListener::bind(&opts.listen)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            addr,
            previews: Mutex::new(opts.send_previews.then_some(opts.preview_format)),
            history_delay: opts.history_delay,
            record_requests: opts.record_requests,
            step_delay: Mutex::new(opts.step_delay),
            state: Mutex::new(SimState::new()),
            wake: Condvar::new(),
            subscribers: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            hub: ws::Hub::new(),
            listener: Mutex::new(None),
        });
        let worker = thread::Builder::new()
            .name("comfyui-sim-worker".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || exec::run_worker(shared)
            })?;
        let sim = ComfySim {
            shared,
            worker: Some(worker),
        };
        // On failure, dropping `sim` stops the worker again.
        let serving = http::Listener::start(&sim.shared, listener, 0)?;
        *lock(&sim.shared.listener) = Some(serving);
        log::info!("comfyui-sim listening on http://{addr}");
        Ok(sim)
    }

    /// The base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The address it listens on (the same after a restart).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// A receiver of every event from now on; each call gets its own complete stream.
    pub fn events(&self) -> Receiver<SimEvent> {
        let (tx, rx) = crossbeam_channel::unbounded();
        lock(&self.shared.subscribers).push(tx);
        rx
    }

    /// What the websockets cost so far: sockets accepted and open, `status` and other messages
    /// sent.
    pub fn ws_stats(&self) -> WsStats {
        self.shared.hub.stats()
    }

    /// Every HTTP request received so far (across crashes), oldest first; empty when
    /// [`SimOptions::record_requests`] is off.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Arms a failure: [`Failure::ValidationError`] for the next `POST /prompt`, the others for
    /// the next prompt that starts executing. A later call replaces an armed one of the same kind.
    pub fn fail_next(&self, failure: Failure) {
        let mut st = self.shared.state();
        match failure {
            Failure::ValidationError => st.reject_next = true,
            other => st.exec_failure = Some(other),
        }
    }

    /// Answers the next `fault.times` `POST /prompt` requests with `fault.status` and
    /// `fault.body` instead of queueing them (replacing any fault armed before); `None` disarms.
    pub fn fail_prompts(&self, fault: Option<PromptFault>) {
        self.shared.state().prompt_fault = fault.filter(|f| f.times > 0);
    }

    /// Changes how long each sampler step takes, from the next step on.
    pub fn set_step_delay(&self, d: Duration) {
        *lock(&self.shared.step_delay) = d;
    }

    /// Turns sampler previews on (in this format) or off (`None`), from the next step on.
    pub fn set_previews(&self, format: Option<PreviewFormat>) {
        *lock(&self.shared.previews) = format;
    }

    /// Holds the queue: prompts are accepted but none starts until [`resume`](Self::resume).
    /// A prompt already running continues.
    pub fn pause(&self) {
        self.shared.state().paused = true;
    }

    /// Holds back (`true`) or lets through (`false`) the history entries of prompts that have
    /// sent their final messages: meanwhile `/history/{id}` answers `{}`, `/queue` still shows
    /// the prompt running and the next one waits, and [`SimEvent::Finished`] is not sent yet.
    pub fn hold_history(&self, held: bool) {
        self.shared.state().history_held = held;
        self.shared.wake.notify_all();
    }

    /// Lets queued prompts run again.
    pub fn resume(&self) {
        self.shared.state().paused = false;
        self.shared.wake.notify_all();
    }

    /// Imitates a network blip between client and ComfyUI's websocket: every socket ends without
    /// a close frame and new upgrades are refused (503) until
    /// [`restore_websockets`](Self::restore_websockets), while HTTP answers and prompts keep
    /// running, so history fills up as usual.
    pub fn cut_websockets(&self) {
        let generation = {
            let mut st = self.shared.state();
            st.refuse_websockets = true;
            st.generation
        };
        self.shared.hub.close_all(generation);
    }

    /// Keeps every websocket open but silently drops every message to it (`true`), or delivers
    /// them again (`false`): the worst case of a message lost on the way, for clients that must
    /// not wait forever on a socket that says nothing.
    pub fn mute_websockets(&self, muted: bool) {
        self.shared.hub.set_muted(muted);
    }

    /// Accepts websocket upgrades again after [`cut_websockets`](Self::cut_websockets).
    pub fn restore_websockets(&self) {
        self.shared.state().refuse_websockets = false;
    }

    /// Imitates the process dying: websockets end without a close frame, the port refuses
    /// connections, and queue, history, files and cache are forgotten. Returns once all that is
    /// true, after sending [`SimEvent::Crashed`].
    pub fn crash(&self) {
        self.shared.crash();
    }

    /// Listens again on the same port with empty state, like a restarted ComfyUI (crashing
    /// first if it is running). Sends [`SimEvent::Restarted`].
    pub fn restart(&self) -> io::Result<()> {
        if self.shared.state().alive {
            self.shared.crash();
        }
        let listener = bind_again(self.shared.addr)?;
        let generation = {
            let mut st = self.shared.state();
            st.alive = true;
            st.generation
        };
        match http::Listener::start(&self.shared, listener, generation) {
            Ok(serving) => *lock(&self.shared.listener) = Some(serving),
            Err(e) => {
                self.shared.state().alive = false;
                return Err(e);
            }
        }
        self.shared.wake.notify_all();
        self.shared.emit(SimEvent::Restarted);
        Ok(())
    }

    /// Stops everything and frees the port (the same as dropping it).
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for ComfySim {
    fn drop(&mut self) {
        let generation = {
            let mut st = self.shared.state();
            st.shutting_down = true;
            st.forget_everything();
            st.generation
        };
        self.shared.wake.notify_all();
        self.shared.hub.close_all(generation);
        let serving = lock(&self.shared.listener).take();
        if let Some(serving) = serving {
            serving.stop();
        }
        if let Some(worker) = self.worker.take()
            && worker.join().is_err()
        {
            log::error!("comfyui-sim worker thread panicked");
        }
    }
}

/// Binds `addr` again after a crash; the old listener may take a moment to release it.
fn bind_again(addr: SocketAddr) -> io::Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Locks a mutex, carrying on with the data if a panicking thread poisoned it: every critical
/// section here leaves the data consistent, and the simulator must keep answering.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the simulator's threads share.
pub(crate) struct Shared {
    addr: SocketAddr,
    /// The preview format while previews are on.
    previews: Mutex<Option<PreviewFormat>>,
    history_delay: Duration,
    record_requests: bool,
    step_delay: Mutex<Duration>,
    state: Mutex<SimState>,
    /// Signalled on every change the worker may wait for: queue, pause, interrupt, crash.
    wake: Condvar,
    subscribers: Mutex<Vec<Sender<SimEvent>>>,
    requests: Mutex<Vec<RecordedRequest>>,
    hub: ws::Hub,
    listener: Mutex<Option<http::Listener>>,
}

impl Shared {
    /// The process state, locked.
    fn state(&self) -> MutexGuard<'_, SimState> {
        lock(&self.state)
    }

    /// Sends `event` to every live subscriber.
    fn emit(&self, event: SimEvent) {
        lock(&self.subscribers).retain(|tx| tx.send(event.clone()).is_ok());
    }

    fn record(&self, request: RecordedRequest) {
        if self.record_requests {
            lock(&self.requests).push(request);
        }
    }

    fn history_delay(&self) -> Duration {
        self.history_delay
    }

    fn previews(&self) -> Option<PreviewFormat> {
        *lock(&self.previews)
    }

    fn step_delay(&self) -> Duration {
        *lock(&self.step_delay)
    }

    /// Sends `status` with the current queue size to every socket.
    fn broadcast_status(&self) {
        let remaining = self.state().queue_remaining();
        self.hub
            .broadcast_status(&ws::status_message(remaining, None));
    }

    /// See [`ComfySim::crash`]; also called by the worker for [`Failure::CrashAt`].
    fn crash(&self) {
        let generation = {
            let mut st = self.state();
            st.forget_everything();
            st.generation
        };
        self.wake.notify_all();
        // The listener goes first: a client that notices its websocket dropped and asks
        // /history at once must find the port refusing, as with a dead process, not a request
        // accepted in the moment before the listener closes and then never answered.
        let serving = lock(&self.listener).take();
        if let Some(serving) = serving {
            serving.stop();
        }
        self.hub.close_all(generation);
        log::info!("comfyui-sim crashed (simulated)");
        self.emit(SimEvent::Crashed);
    }
}
