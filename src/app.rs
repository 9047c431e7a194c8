//! The application: the configuration and the long-lived parts built from it once at start-up,
//! shared (behind an `Arc`) by the accept loop, the request threads and the job threads.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::comfyui::{ClientOptions, ComfyClient};
use crate::config::Config;
use crate::ids::JobId;
use crate::job::{JobRegistry, RunSettings};
use crate::metrics::Metrics;
use crate::storage::local::LocalStorage;
use crate::storage::spool::Spool;
use crate::storage::supabase::{SupabaseOptions, SupabaseStorage};
use crate::storage::{RetryPolicy, Storage};
use crate::workflow::{Installed, Templates};

/// Everything a request or a job needs.
pub struct App {
    /// The configuration it was built from.
    pub config: Config,
    /// The workflow templates, checked at start-up.
    pub templates: Templates,
    /// One client per `COMFYUI_URL`, tried in order.
    pub backends: Vec<ComfyClient>,
    /// Where images and metadata go.
    pub storage: Arc<dyn Storage>,
    /// The local store when images are kept on disk (it serves `GET /images/...`).
    pub local: Option<Arc<LocalStorage>>,
    /// Images whose upload failed, waiting for a retry.
    pub spool: Spool,
    /// Every job, running or remembered.
    pub jobs: JobRegistry,
    /// Tunables of a job's life.
    pub run: RunSettings,
    /// Counters for `GET /metrics`.
    pub metrics: Metrics,
    /// The values ComfyUI's combo inputs accept on each backend (installed models...), read on
    /// demand. The backend monitor calls `installed.refresh(url)` when a backend restarts.
    pub installed: Installed,
}

/// Why the gateway cannot start: one line naming what to fix.
#[derive(Debug)]
pub struct StartupError(pub String);

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartupError {}

impl App {
    /// Builds the application: loads and checks the templates, prepares storage and the spool.
    pub fn new(config: Config) -> Result<App, StartupError> {
        let templates = Templates::load_dir(&config.workflows_dir)
            .map_err(|e| StartupError(format!("WORKFLOWS_DIR: {e}")))?;
        if templates.get(&config.default_workflow).is_none() {
            return Err(StartupError(format!(
                "DEFAULT_WORKFLOW={:?}: no such template in {} (found: {})",
                config.default_workflow,
                config.workflows_dir.display(),
                templates.names().collect::<Vec<_>>().join(", ")
            )));
        }
        let backends = config
            .comfyui_urls
            .iter()
            .map(|url| ComfyClient::new(url, ClientOptions::default()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StartupError(format!("COMFYUI_URL: {e}")))?;
        let Stores { storage, local } = build_storage(&config)?;
        let spool = Spool::new(config.data_dir.join("spool")).map_err(|e| {
            StartupError(format!(
                "DATA_DIR={}: cannot create the spool folder: {e}",
                config.data_dir.display()
            ))
        })?;
        let run = RunSettings {
            progress_interval: config.progress_interval,
            job_timeout: config.job_timeout,
            png_metadata: config.png_metadata,
            ..RunSettings::default()
        };
        let installed = Installed::new(&backends, &templates);
        Ok(App {
            installed,
            jobs: JobRegistry::new(config.max_active_jobs, config.job_retention),
            templates,
            backends,
            storage,
            local,
            spool,
            run,
            metrics: Metrics::default(),
            config,
        })
    }

    /// Retries every spooled upload once. A job still remembered whose images now reached
    /// storage turns from `failed` (`storage_failed`) into `completed`, with their links.
    ///
    /// Returns how many spooled jobs were stored.
    pub fn flush_spool(&self) -> usize {
        let mut stored = 0;
        let pending = match self.spool.pending() {
            Ok(pending) => pending,
            Err(e) => {
                log::warn!("cannot list the spool {}: {e}", self.spool.dir().display());
                return 0;
            }
        };
        for job_id in pending {
            let job = JobId::parse(&job_id).and_then(|id| self.jobs.get(&id));
            if job.as_ref().is_some_and(|job| !job.is_finished()) {
                continue; // its own job thread is uploading it right now
            }
            match self.spool.flush_one(&job_id, self.storage.as_ref()) {
                Ok(rows) => {
                    stored += 1;
                    log::info!("spooled job {job_id}: {} images stored", rows.len());
                    if let Some(job) = job {
                        job.storage_recovered(&rows);
                    }
                }
                Err(e) => {
                    self.metrics.supabase_error();
                    log::warn!("spooled job {job_id} is still waiting: {e}");
                }
            }
        }
        stored
    }

    /// Starts the housekeeping thread: flushes the spool now and every `every`, and forgets
    /// expired jobs. The thread ends once the app is dropped.
    pub fn spawn_housekeeping(app: &Arc<App>, every: Duration) -> std::io::Result<()> {
        let weak = Arc::downgrade(app);
        std::thread::Builder::new()
            .name("housekeeping".into())
            .spawn(move || {
                while let Some(app) = weak.upgrade() {
                    app.flush_spool();
                    app.jobs.prune();
                    drop(app);
                    std::thread::sleep(every);
                }
            })
            .map(|_| ())
    }
}

/// The configured storage, plus the local store when that is what it is (it also serves images).
struct Stores {
    storage: Arc<dyn Storage>,
    local: Option<Arc<LocalStorage>>,
}

fn build_storage(config: &Config) -> Result<Stores, StartupError> {
    match &config.supabase {
        Some(supabase) => {
            let storage = SupabaseStorage::new(SupabaseOptions {
                url: supabase.url.clone(),
                key: supabase.key.clone(),
                bucket: supabase.bucket.clone(),
                table: supabase.table.clone(),
                signed_url_ttl_secs: supabase.signed_url_ttl_secs,
                retry: RetryPolicy::default(),
                connect_timeout: Duration::from_secs(10),
                request_timeout: Duration::from_secs(120),
            });
            Ok(Stores {
                storage: Arc::new(storage),
                local: None,
            })
        }
        None => {
            let local = Arc::new(LocalStorage::new(
                config.data_dir.clone(),
                config.public_base_url.clone(),
            ));
            ensure_dir(&config.data_dir.join("images"))?;
            Ok(Stores {
                storage: local.clone(),
                local: Some(local),
            })
        }
    }
}

fn ensure_dir(dir: &Path) -> Result<(), StartupError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StartupError(format!("DATA_DIR: cannot create {}: {e}", dir.display())))
}
