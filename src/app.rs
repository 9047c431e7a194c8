//! The application: the configuration and the long-lived parts built from it once at start-up,
//! shared (behind an `Arc`) by the accept loop, the request threads and the job engine.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::assets::{AssetStore, NewOutput};
use crate::blobs::BlobStore;
use crate::comfyui::{ClientOptions, ComfyClient};
use crate::config::Config;
use crate::idempotency::Idempotency;
use crate::ids::JobId;
use crate::job::{
    Engine, Job, JobContext, JobRegistry, JobStore, Restored, RunSettings, restore_jobs,
};
use crate::media;
use crate::metrics::Metrics;
use crate::storage::local::LocalStorage;
use crate::storage::spool::Spool;
use crate::storage::supabase::{SupabaseOptions, SupabaseStorage};
use crate::storage::{RetryPolicy, Storage};
use crate::warmup::Warmup;
use crate::webhook::Webhooks;
use crate::workflow::{Installed, Templates};

/// Everything a request or a job needs.
pub struct App {
    /// The configuration it was built from.
    pub config: Config,
    /// The workflow templates, checked at start-up.
    pub templates: Arc<Templates>,
    /// One client per `COMFYUI_URL`.
    pub backends: Vec<ComfyClient>,
    /// Where outputs and metadata go.
    pub storage: Arc<dyn Storage>,
    /// The local store when outputs are kept on disk (it serves `GET /images/...`).
    pub local: Option<Arc<LocalStorage>>,
    /// Outputs whose upload failed, waiting for a retry.
    pub spool: Arc<Spool>,
    /// The content-addressed store in `DATA_DIR/blobs` (job inputs are kept there).
    pub blobs: BlobStore,
    /// Every job, waiting, running or remembered.
    pub jobs: Arc<JobRegistry>,
    /// Jobs on disk, so that the queue survives a restart.
    pub store: Arc<JobStore>,
    /// Tunables of a job's life (read when the engine starts).
    pub run: RunSettings,
    /// Counters for `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// Signed webhooks: each job's sink, and the delivery threads (started by `serve`).
    pub webhooks: Webhooks,
    /// The warm-up run on each backend (`WARMUP_WORKFLOW`), if configured.
    pub warmup: Option<Arc<Warmup>>,
    /// Jobs read back from `DATA_DIR` that the engine resumes when it starts.
    restored: Mutex<Option<Restored>>,
    engine: OnceLock<Arc<Engine>>,
    /// The values ComfyUI's combo inputs accept on each backend (installed models...), read on
    /// demand, and read again when a backend comes back after a restart.
    pub installed: Arc<Installed>,
    /// The asset library: records in `DATA_DIR/assets/` over the blobs in `DATA_DIR/blobs/`;
    /// outputs are registered in it as they are stored (`JobContext::assets`).
    pub assets: Arc<AssetStore>,
    /// Comfy API v2's `Idempotency-Key`s, kept 24 h in `DATA_DIR/v2/idempotency/`.
    pub idempotency: Idempotency,
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
    /// Builds the application: loads and checks the templates, prepares storage and the spool,
    /// and reads back the jobs a previous run left in `DATA_DIR/jobs/`.
    pub fn new(config: Config) -> Result<App, StartupError> {
        let mut templates = Templates::load_dir(&config.workflows_dir)
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
        let data_dir_error = |what: &str, e: std::io::Error| {
            StartupError(format!(
                "DATA_DIR={}: cannot create the {what} folder: {e}",
                config.data_dir.display()
            ))
        };
        let spool =
            Spool::new(config.data_dir.join("spool")).map_err(|e| data_dir_error("spool", e))?;
        let store =
            JobStore::open(config.data_dir.join("jobs")).map_err(|e| data_dir_error("jobs", e))?;
        let blobs = BlobStore::open(config.data_dir.join("blobs"))
            .map_err(|e| data_dir_error("blobs", e))?;
        // Downloads a stopped gateway left half-done; ComfyUI still has those files.
        if let Err(e) = spool.clear_staging() {
            log::warn!(
                "removing leftover downloads in {}: {e}",
                spool.dir().display()
            );
        }
        let run = RunSettings {
            progress_interval: config.progress_interval,
            job_timeout: config.job_timeout,
            queue_timeout: config.queue_timeout,
            queue_ahead: config.queue_ahead,
            max_queued: config.max_queued_jobs,
            png_metadata: config.png_metadata,
            lost_retries: config.lost_retries,
            backend_grace: config.backend_grace,
            ..RunSettings::default()
        };
        let metrics = Metrics::default();
        let webhooks_dir = config.data_dir.join("webhooks");
        let webhooks = Webhooks::new(
            config.webhook.clone(),
            webhooks_dir.clone(),
            Arc::clone(&metrics.webhooks),
        )
        .map_err(|e| {
            StartupError(format!(
                "DATA_DIR: cannot create {}: {e}",
                webhooks_dir.display()
            ))
        })?;
        let installed = Arc::new(Installed::new(&backends, &templates));
        // Workflows as ComfyUI saves them are converted with the backends' node definitions,
        // read and cached like the installed models.
        templates.use_node_defs(Arc::clone(&installed) as Arc<dyn crate::workflow::NodeDefsSource>);
        let warmup = match &config.warmup {
            Some(spec) => Some(Arc::new(
                Warmup::new(spec.clone(), &templates, config.job_timeout)
                    .map_err(|e| StartupError(format!("WARMUP_WORKFLOW={spec}: {e}")))?,
            )),
            None => None,
        };
        let assets = AssetStore::open(config.data_dir.join("assets"), blobs.clone())
            .map_err(|e| data_dir_error("assets", e))?;
        let idempotency = Idempotency::open(config.data_dir.join("v2").join("idempotency"))
            .map_err(|e| data_dir_error("v2/idempotency", e))?;
        let jobs = Arc::new(JobRegistry::new(config.job_retention));
        let restored = restore_jobs(
            &store,
            &jobs,
            &run,
            config.job_retention,
            &templates,
            &blobs,
        );
        // Restored jobs keep sending their webhooks (a finished one may still complete from
        // the spool).
        for job in jobs.all() {
            if let Ok(Some(sink)) = webhooks.sink_for(job.options().webhook.clone()) {
                job.set_event_sink(sink);
            }
        }
        Ok(App {
            installed,
            assets: Arc::new(assets),
            idempotency,
            warmup,
            jobs,
            webhooks,
            templates: Arc::new(templates),
            backends,
            storage,
            local,
            spool: Arc::new(spool),
            blobs,
            store: Arc::new(store),
            run,
            metrics: Arc::new(metrics),
            restored: Mutex::new(Some(restored)),
            engine: OnceLock::new(),
            config,
        })
    }

    /// Starts the job engine (once; later calls return the running one): its backend
    /// monitors, dispatcher, ticker and output workers, with the jobs read back at start-up.
    pub fn start(&self) -> std::io::Result<&Arc<Engine>> {
        if let Some(engine) = self.engine.get() {
            return Ok(engine);
        }
        let restored = self
            .restored
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default();
        let ctx = JobContext {
            templates: Arc::clone(&self.templates),
            storage: Arc::clone(&self.storage),
            local: self.local.clone(),
            spool: Arc::clone(&self.spool),
            blobs: self.blobs.clone(),
            assets: Arc::clone(&self.assets),
            metrics: Arc::clone(&self.metrics),
            run: self.run.clone(),
            on_comeback: Some(self.comeback_hook()),
        };
        let engine = Arc::new(Engine::new(
            ctx,
            Arc::clone(&self.jobs),
            Arc::clone(&self.store),
            self.backends.clone(),
            restored.next_seq,
        ));
        engine.start(restored.waiting, restored.on_backends)?;
        Ok(self.engine.get_or_init(|| engine))
    }

    /// What happens when a backend is first reached or comes back after a restart: its
    /// installed models are read again, and the warm-up runs there.
    fn comeback_hook(&self) -> crate::job::ComebackHook {
        let installed = Arc::clone(&self.installed);
        let warmup = self.warmup.clone();
        Box::new(move |client: &ComfyClient| {
            if let Some(warmup) = &warmup {
                warmup.start(client.clone());
            }
            let installed = Arc::clone(&installed);
            let url = client.base_url().to_string();
            // Reading /object_info may take a while on a big install: off the monitor thread.
            let spawned = std::thread::Builder::new()
                .name("object-info".into())
                .spawn(move || {
                    if let Err(e) = installed.refresh(&url) {
                        log::warn!("cannot read the models installed on {url}: {e}");
                    }
                });
            if let Err(e) = spawned {
                log::warn!("cannot start a thread to read installed models: {e}");
            }
        })
    }

    /// The job engine, once started.
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        self.engine.get()
    }

    /// Retries every spooled upload once, except those storage refused for good (see
    /// [`App::flush_spool_at_start`]). A job still remembered whose outputs now reached storage
    /// turns from `failed` (`storage_failed`) into `completed`, with their links.
    ///
    /// Returns how many spooled jobs were stored.
    pub fn flush_spool(&self) -> usize {
        self.flush_spool_with(false)
    }

    /// Retries every spooled upload once, those storage refused for good included (their cause
    /// may have been fixed since: a bucket's size limit raised, a table migrated): what the
    /// gateway does at start-up. Returns how many spooled jobs were stored.
    pub fn flush_spool_at_start(&self) -> usize {
        self.flush_spool_with(true)
    }

    fn flush_spool_with(&self, refused_too: bool) -> usize {
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
                continue; // its own output worker is uploading it right now
            }
            if !refused_too && self.spool.refusal(&job_id).is_some() {
                continue; // refused for good: only a restart tries it again
            }
            let mut register = |key: &str, file: &Path| self.register_spooled(&job_id, key, file);
            match self
                .spool
                .flush_one_with(&job_id, self.storage.as_ref(), &mut register)
            {
                Ok(rows) => {
                    stored += 1;
                    log::info!("spooled job {job_id}: {} outputs stored", rows.len());
                    if let Some(job) = job {
                        if job.storage_recovered(&rows) {
                            self.save(&job);
                        }
                    }
                }
                Err(e) if e.is_refusal() => {
                    self.metrics.supabase_error();
                    log::warn!(
                        "spooled job {job_id}: storage refuses it ({e}); its files stay in {} \
                         and are not retried until the gateway restarts",
                        self.spool.dir().join(&job_id).display()
                    );
                    if let Err(mark) = self.spool.mark_refused(&job_id, &e.to_string()) {
                        log::warn!("spooled job {job_id}: cannot mark it refused: {mark}");
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

    /// Makes a spooled output that storage has just accepted an asset, as the output worker
    /// does for outputs stored at once (Comfy API v2 lists a job's outputs from its assets).
    /// Its index is the storage key's (`{job_id}/{index}.{ext}`); which node wrote it is not
    /// kept in the spool. A failure costs only the asset, and is logged.
    fn register_spooled(&self, job_id: &str, key: &str, file: &Path) {
        let name = key.rsplit('/').next().unwrap_or(key);
        let index = name
            .split('.')
            .next()
            .and_then(|stem| stem.parse().ok())
            .unwrap_or(0);
        let registered = (|| {
            let (hash, size_bytes) = crate::blobs::hash_file(file)?;
            let mut head = Vec::new();
            std::fs::File::open(file)?
                .take(media::HEAD_LEN as u64)
                .read_to_end(&mut head)?;
            self.assets.register_output(NewOutput {
                job_id,
                node_id: "",
                name,
                index,
                media: media::identify(&head, name),
                hash,
                size_bytes,
                storage_key: key,
            })
        })();
        if let Err(e) = registered {
            log::warn!("job {job_id}: spooled output {key} is stored but gets no asset: {e}");
        }
    }

    fn save(&self, job: &Job) {
        if let Err(e) = job.save(&self.store) {
            log::error!("job {}: cannot save its state: {e}", job.id());
        }
    }

    /// Forgets finished jobs past `JOB_RETENTION_SECS`, their files included.
    pub fn prune_jobs(&self) {
        for id in self.jobs.prune() {
            if let Err(e) = self.store.remove(&id) {
                log::warn!("job {id}: cannot remove its saved state: {e}");
            }
        }
    }

    /// Starts the housekeeping thread: flushes the spool now (refused jobs too) and every
    /// `every` (refused jobs skipped), and forgets expired jobs. The thread ends once the app is
    /// dropped.
    pub fn spawn_housekeeping(app: &Arc<App>, every: Duration) -> std::io::Result<()> {
        let weak = Arc::downgrade(app);
        std::thread::Builder::new()
            .name("housekeeping".into())
            .spawn(move || {
                let mut first = true;
                while let Some(app) = weak.upgrade() {
                    if std::mem::take(&mut first) {
                        app.flush_spool_at_start();
                    } else {
                        app.flush_spool();
                    }
                    app.prune_jobs();
                    drop(app);
                    std::thread::sleep(every);
                }
            })
            .map(|_| ())
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.get() {
            engine.stop();
        }
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
