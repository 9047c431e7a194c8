//! What the job code needs from the rest of the gateway: a narrow context instead of the whole
//! application, so that `job` depends on storage, templates and metrics, never on HTTP.

use std::sync::Arc;
use std::time::Duration;

use crate::assets::AssetStore;
use crate::blobs::BlobStore;
use crate::image::PngMetadata;
use crate::metrics::Metrics;
use crate::storage::Storage;
use crate::storage::local::LocalStorage;
use crate::storage::spool::Spool;
use crate::workflow::Templates;

/// The tunables of a job's life, from the configuration.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Cadence of `progress` events (`PROGRESS_INTERVAL_MS`).
    pub progress_interval: Duration,
    /// A job still executing this long after ComfyUI started it is interrupted and fails with
    /// `timeout` (`JOB_TIMEOUT_SECS`).
    pub job_timeout: Duration,
    /// A job not started this long after it was accepted fails with `timeout`
    /// (`QUEUE_TIMEOUT_SECS`; `None`: wait as long as it takes).
    pub queue_timeout: Option<Duration>,
    /// Prompts each backend may hold beyond the one it runs (`QUEUE_AHEAD`).
    pub queue_ahead: usize,
    /// Jobs the gateway's queue holds at most (`MAX_QUEUED_JOBS`); beyond it, 429.
    pub max_queued: usize,
    /// Whether ComfyUI's text chunks are stripped from stored PNGs (`PNG_METADATA`).
    pub png_metadata: PngMetadata,
    /// How long a backend may stay unreachable while it runs a job's prompt before that job
    /// fails with `comfyui_lost`.
    pub comfyui_grace: Duration,
    /// How long to wait for `/history` to show a prompt the websocket said had finished.
    pub history_wait: Duration,
    /// Longest a backend's monitor blocks on its websocket before looking at cancels and
    /// deadlines.
    pub poll_interval: Duration,
    /// After this long without any websocket message while a prompt runs, `/history` is asked
    /// whether it ended anyway (a message lost on the way must not leave a job waiting).
    pub silence_check: Duration,
    /// How often prompts followed without a websocket are looked up in `/history`.
    pub orphan_poll: Duration,
    /// Threads that fetch and store outputs.
    pub output_workers: usize,
    /// How many times a job whose started prompt a ComfyUI lost is sent again (`LOST_RETRIES`).
    pub lost_retries: u32,
    /// Submissions are queued while no backend answers if one answered within this long
    /// (`BACKEND_GRACE_SECS`).
    pub backend_grace: Duration,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            progress_interval: Duration::from_millis(1000),
            job_timeout: Duration::from_secs(600),
            queue_timeout: None,
            queue_ahead: 1,
            max_queued: 10_000,
            png_metadata: PngMetadata::Strip,
            comfyui_grace: Duration::from_secs(60),
            history_wait: Duration::from_secs(10),
            poll_interval: Duration::from_millis(100),
            silence_check: Duration::from_secs(10),
            orphan_poll: Duration::from_millis(500),
            output_workers: 2,
            lost_retries: 1,
            backend_grace: Duration::from_secs(300),
        }
    }
}

/// Called with a backend's client when the gateway first reaches it, and each time its
/// websocket reconnects (ComfyUI may have restarted: its installed models may have changed, and
/// its models must be loaded again). Runs on the backend's monitor thread: it must not block.
pub type ComebackHook = Box<dyn Fn(&crate::comfyui::ComfyClient) + Send + Sync>;

/// Everything the job code uses, shared by its threads.
pub struct JobContext {
    /// The workflow templates.
    pub templates: Arc<Templates>,
    /// Where outputs and metadata go.
    pub storage: Arc<dyn Storage>,
    /// The local store, when outputs are kept on disk.
    pub local: Option<Arc<LocalStorage>>,
    /// Outputs whose upload failed, waiting for a retry.
    pub spool: Arc<Spool>,
    /// The content-addressed store (`DATA_DIR/blobs`) holding the jobs' input files.
    pub blobs: BlobStore,
    /// The asset library: every output a job commits is registered there (Comfy API v2's
    /// "outputs are assets"), its hash computed once from the staged file.
    pub assets: Arc<AssetStore>,
    /// Counters for `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// Tunables.
    pub run: RunSettings,
    /// What to do when a backend comes back (see [`ComebackHook`]).
    pub on_comeback: Option<ComebackHook>,
}
