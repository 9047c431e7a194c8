//! Webhooks signed per the Standard Webhooks specification (standardwebhooks.com).
//!
//! A job tells its [`JobEvents`] sink about every event it emits; the sink of a job with a
//! webhook (the request's `"webhook"` field, or `WEBHOOK_URL`) turns the events its target wants
//! into deliveries: the SSE event's data plus `type`, signed (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`) and posted by the delivery threads, at least once. Handing an event over
//! never blocks the job: it joins its receiver's queue in memory (`queue`), where a `progress`
//! replaces the job's older one; every other event is written to disk by the `webhook-store`
//! thread before its first attempt.
//!
//! - `signing`: the `whsec_` secret and the `v1,` signature;
//! - `target`: URLs, event names, `WEBHOOK_ALLOWED_HOSTS`, the request field;
//! - `store`: pending deliveries in `DATA_DIR/webhooks/`, resumed at start-up;
//! - `queue`: the deliveries in memory, one queue per receiver, progress collapsed per job;
//! - `delivery`: the threads that post, retry with backoff and jitter, and give up.

mod delivery;
mod queue;
mod signing;
mod store;
mod target;

pub use delivery::{AttemptOutcome, AttemptReport, DeliveryOptions};
pub use signing::{SECRET_FORMAT, SECRET_PREFIX, SigningKey};
pub use store::Delivery;
pub use target::{AllowedHosts, WebhookEvent, WebhookRequest, WebhookTarget, WebhookUrl};

use crossbeam_channel::{Receiver, Sender};
use serde_json::{Map, Value};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::api::{ApiError, invalid_field};
use crate::config::WebhookConfig;
use crate::metrics::WebhookCounters;
use delivery::Shared;
use queue::{Queue, Submitted};
use store::Store;

/// How many delivery threads post webhooks.
const DELIVERY_THREADS: usize = 4;

/// Told of every event a job emits. Called while the job holds its own lock, so it must not
/// block: implementations hand the event over and return.
pub trait JobEvents: Send + Sync {
    /// `event` is the SSE event name (`queued`, `progress`, `complete`, `error`, `cancelled`);
    /// `data` is the event's JSON data exactly as SSE watchers get it (it carries `job_id`).
    fn job_event(&self, event: &str, data: &str);
}

/// The webhook service: checks targets, makes each job's sink, and runs the delivery threads.
pub struct Webhooks {
    config: WebhookConfig,
    store: Store,
    /// Delivery tunables; may be changed until [`Webhooks::start`].
    pub options: DeliveryOptions,
    counters: Arc<WebhookCounters>,
    queue: Arc<Queue>,
    started: AtomicBool,
    observer: Arc<Mutex<Option<Sender<AttemptReport>>>>,
}

impl Drop for Webhooks {
    /// Ends the webhook threads; what is not delivered yet stays on disk.
    fn drop(&mut self) {
        self.queue.stop();
    }
}

/// The store thread: writes each delivery that must survive a restart to disk, in order, and
/// then lets it be attempted. It does no network I/O, so [`Webhooks::flush`] can rely on it
/// keeping up.
fn run_store(store: &Store, queue: &Queue) {
    while let Some((slot, delivery)) = queue.next_to_save() {
        if let Err(e) = store.save(&delivery) {
            log::warn!(
                "webhook {} is not kept on disk ({}: {e}); it is tried anyway",
                delivery.id,
                store.dir().display()
            );
        }
        queue.saved(slot);
    }
}

impl Webhooks {
    /// Prepares the service: `dir` (normally `DATA_DIR/webhooks`) is created. Nothing is sent
    /// before [`Webhooks::start`].
    pub fn new(
        config: WebhookConfig,
        dir: PathBuf,
        counters: Arc<WebhookCounters>,
    ) -> io::Result<Webhooks> {
        let store = Store::open(dir)?;
        let options = DeliveryOptions {
            retry_window: config.retry_window,
            ..DeliveryOptions::default()
        };
        Ok(Webhooks {
            config,
            store,
            options,
            counters,
            queue: Arc::new(Queue::new()),
            started: AtomicBool::new(false),
            observer: Arc::new(Mutex::new(None)),
        })
    }

    /// Starts the delivery threads and resumes the deliveries left on disk by an earlier run.
    /// Only the first call does anything. Without `WEBHOOK_SECRET` nothing can be signed: left
    /// deliveries stay on disk (a warning says so).
    pub fn start(&self) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let pending = self.store.load();
        let Some(key) = self.config.signing_key.clone() else {
            if !pending.is_empty() {
                log::warn!(
                    "{} webhooks wait in {} but WEBHOOK_SECRET is not set, so they cannot be signed",
                    pending.len(),
                    self.store.dir().display()
                );
            }
            return;
        };
        let shared = Arc::new(Shared {
            key,
            store: self.store.clone(),
            agent: Shared::agent_for(&self.options),
            options: self.options.clone(),
            allowed: self.config.allowed_hosts.clone(),
            counters: Arc::clone(&self.counters),
            observer: Arc::clone(&self.observer),
        });
        for n in 0..DELIVERY_THREADS {
            let shared = Arc::clone(&shared);
            let queue = Arc::clone(&self.queue);
            let spawned = thread::Builder::new()
                .name(format!("webhook-{n}"))
                .spawn(move || delivery::run_worker(&shared, &queue));
            if let Err(e) = spawned {
                log::error!("cannot start webhook delivery thread {n}: {e}");
            }
        }
        let (store, queue) = (self.store.clone(), Arc::clone(&self.queue));
        let spawned = thread::Builder::new()
            .name("webhook-store".into())
            .spawn(move || run_store(&store, &queue));
        if let Err(e) = spawned {
            log::error!("cannot start the webhook store thread: {e}");
        }
        if !pending.is_empty() {
            log::info!(
                "resuming {} pending webhooks from {}",
                pending.len(),
                self.store.dir().display()
            );
        }
        for delivery in pending {
            // Already on disk.
            if self.queue.submit(delivery, false) == Submitted::Added {
                self.counters.pending.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// How many deliveries wait in memory (being posted included): at most one `progress` per
    /// job and receiver, and a job's few other events.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Waits (at most `grace`, on a condition) until every webhook handed over so far is on
    /// disk, so that a shutdown loses none: what is not delivered yet is resumed at the next
    /// start. `progress` webhooks are never written (a restart makes them stale). Returns
    /// whether all were written in time.
    pub fn flush(&self, grace: Duration) -> bool {
        self.queue.wait_saved(Instant::now() + grace)
    }

    /// A channel that hears how every later attempt ended (for tests and diagnostics). A new
    /// call replaces the previous observer.
    pub fn observe(&self) -> Receiver<AttemptReport> {
        let (tx, rx) = crossbeam_channel::unbounded();
        *self.observer.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
        rx
    }

    /// The sink for a new job: the request's webhook, else `WEBHOOK_URL`, else none.
    ///
    /// Refuses (`400 invalid_params`) a request's webhook whose host `WEBHOOK_ALLOWED_HOSTS`
    /// does not list, or any request webhook when no `WEBHOOK_SECRET` is configured (it could
    /// not be signed).
    pub fn sink_for(
        &self,
        request: Option<WebhookRequest>,
    ) -> Result<Option<Arc<dyn JobEvents>>, ApiError> {
        let target = match request {
            Some(request) => Some(self.check(request)?),
            None => self
                .config
                .url
                .clone()
                .map(WebhookTarget::with_default_events),
        };
        Ok(target.map(|target| {
            Arc::new(JobWebhook {
                target,
                queue: Arc::clone(&self.queue),
                counters: Arc::clone(&self.counters),
            }) as Arc<dyn JobEvents>
        }))
    }

    fn check(&self, request: WebhookRequest) -> Result<WebhookTarget, ApiError> {
        if self.config.signing_key.is_none() {
            return Err(invalid_field(
                "webhook",
                "this gateway has no WEBHOOK_SECRET, so it cannot sign webhooks; \
                 its operator must set one",
            ));
        }
        if !self.config.allowed_hosts.allows(&request.url) {
            return Err(invalid_field(
                "webhook.url",
                &format!(
                    "this host is not allowed; WEBHOOK_ALLOWED_HOSTS lists {}",
                    self.config.allowed_hosts.describe()
                ),
            ));
        }
        Ok(WebhookTarget {
            url: request.url,
            events: request
                .events
                .unwrap_or_else(|| WebhookEvent::DEFAULT.into_iter().collect()),
        })
    }
}

/// A job's sink: turns the events its target wants into deliveries.
struct JobWebhook {
    target: WebhookTarget,
    queue: Arc<Queue>,
    counters: Arc<WebhookCounters>,
}

impl JobEvents for JobWebhook {
    fn job_event(&self, event: &str, data: &str) {
        let Some(kind) = WebhookEvent::from_name(event) else {
            return;
        };
        if !self.target.events.contains(&kind) {
            return;
        }
        let Ok(mut body) = serde_json::from_str::<Map<String, Value>>(data) else {
            log::error!("a {event} event's data is not a JSON object; no webhook sent");
            return;
        };
        body.insert("type".into(), Value::String(kind.as_str().into()));
        let job_id = body
            .get("job_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let delivery = Delivery {
            id: Delivery::new_id(),
            url: self.target.url.as_str().to_string(),
            event: kind.as_str().to_string(),
            job_id,
            body: Value::Object(body).to_string(),
            created_unix: delivery::unix_now(),
        };
        // Progress is never kept on disk: it is stale after a restart, and the newest replaces
        // it in the queue.
        let persist = kind != WebhookEvent::Progress;
        if self.queue.submit(delivery, persist) == Submitted::Added {
            self.counters.pending.fetch_add(1, Ordering::Relaxed);
        }
    }
}
