//! Webhooks signed per the Standard Webhooks specification (standardwebhooks.com).
//!
//! A job tells its [`JobEvents`] sink about every event it emits; the sink of a job with a
//! webhook (the request's `"webhook"` field, or `WEBHOOK_URL`) turns the events its target wants
//! into deliveries: the SSE event's data plus `type`, signed (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`) and posted by the delivery threads, at least once. Handing an event over
//! never blocks the job: it is a send on an unbounded channel to the `webhook-store` thread, which
//! writes the delivery to disk before passing it to the delivery thread of its job.
//!
//! - `signing`: the `whsec_` secret and the `v1,` signature;
//! - `target`: URLs, event names, `WEBHOOK_ALLOWED_HOSTS`, the request field;
//! - `store`: pending deliveries in `DATA_DIR/webhooks/`, resumed at start-up;
//! - `delivery`: the threads that post, retry with backoff and jitter, and give up.

mod delivery;
mod signing;
mod store;
mod target;

pub use delivery::{AttemptOutcome, AttemptReport, DeliveryOptions};
pub use signing::{SECRET_FORMAT, SECRET_PREFIX, SigningKey};
pub use store::Delivery;
pub use target::{AllowedHosts, WebhookEvent, WebhookRequest, WebhookTarget, WebhookUrl};

use crossbeam_channel::{Receiver, Sender};
use serde_json::{Map, Value};
use std::hash::{Hash, Hasher};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::api::{ApiError, invalid_field};
use crate::config::WebhookConfig;
use crate::metrics::WebhookCounters;
use delivery::Shared;
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
    shards: Arc<Shards>,
    /// The threads' ends of their channels, until `start` takes them.
    receivers: Mutex<Option<Inboxes>>,
    observer: Arc<Mutex<Option<Sender<AttemptReport>>>>,
    /// Dropped with the service: the delivery threads then end.
    _stop: Sender<()>,
    stopped: Receiver<()>,
}

/// The store thread's inbox, and each delivery thread's.
struct Inboxes {
    store: Receiver<Delivery>,
    delivery: Vec<Receiver<Delivery>>,
}

/// Where jobs' sinks put new deliveries: the store thread's inbox.
struct Queue {
    to_store: Sender<Delivery>,
    /// Deliveries handed over but not yet written to disk.
    unsaved: AtomicU64,
}

/// The delivery threads' inboxes, one per thread.
struct Shards {
    inboxes: Vec<Sender<Delivery>>,
}

impl Shards {
    /// Hands a delivery to the thread that serves its job (so one job's webhooks keep their order).
    fn send(&self, delivery: Delivery) {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        delivery.job_id.hash(&mut hasher);
        let index = (hasher.finish() % self.inboxes.len() as u64) as usize;
        // A closed inbox means the service is shutting down: the delivery stays on disk.
        let _ = self.inboxes[index].send(delivery);
    }
}

/// The store thread: writes each new delivery to disk, then passes it to its delivery thread.
/// It does no network I/O, so [`Webhooks::flush`] can rely on it keeping up.
fn run_store(
    store: &Store,
    queue: &Queue,
    shards: &Shards,
    inbox: &Receiver<Delivery>,
    stop: &Receiver<()>,
) {
    loop {
        let delivery = crossbeam_channel::select! {
            recv(inbox) -> message => match message {
                Ok(delivery) => delivery,
                Err(_) => return,
            },
            recv(stop) -> _ => return,
        };
        if let Err(e) = store.save(&delivery) {
            log::warn!(
                "webhook {} is not kept on disk ({}: {e}); it is tried anyway",
                delivery.id,
                store.dir().display()
            );
        }
        queue.unsaved.fetch_sub(1, Ordering::SeqCst);
        shards.send(delivery);
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
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..DELIVERY_THREADS)
            .map(|_| crossbeam_channel::unbounded())
            .unzip();
        let (to_store, store_inbox) = crossbeam_channel::unbounded();
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let options = DeliveryOptions {
            retry_window: config.retry_window,
            ..DeliveryOptions::default()
        };
        Ok(Webhooks {
            config,
            store,
            options,
            counters,
            queue: Arc::new(Queue {
                to_store,
                unsaved: AtomicU64::new(0),
            }),
            shards: Arc::new(Shards { inboxes: senders }),
            receivers: Mutex::new(Some(Inboxes {
                store: store_inbox,
                delivery: receivers,
            })),
            observer: Arc::new(Mutex::new(None)),
            _stop: stop,
            stopped,
        })
    }

    /// Starts the delivery threads and resumes the deliveries left on disk by an earlier run.
    /// Only the first call does anything. Without `WEBHOOK_SECRET` nothing can be signed: left
    /// deliveries stay on disk (a warning says so).
    pub fn start(&self) {
        let Some(Inboxes {
            store: store_inbox,
            delivery: inboxes,
        }) = self
            .receivers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
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
        for (n, inbox) in inboxes.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            let stop = self.stopped.clone();
            let spawned = thread::Builder::new()
                .name(format!("webhook-{n}"))
                .spawn(move || delivery::run_worker(&shared, &inbox, &stop));
            if let Err(e) = spawned {
                log::error!("cannot start webhook delivery thread {n}: {e}");
            }
        }
        let (store, queue, shards) = (
            self.store.clone(),
            Arc::clone(&self.queue),
            Arc::clone(&self.shards),
        );
        let stop = self.stopped.clone();
        let spawned = thread::Builder::new()
            .name("webhook-store".into())
            .spawn(move || run_store(&store, &queue, &shards, &store_inbox, &stop));
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
            self.counters.pending.fetch_add(1, Ordering::Relaxed);
            self.shards.send(delivery);
        }
    }

    /// Waits (at most `grace`) until every webhook handed over so far is on disk, so that a
    /// shutdown loses none: what is not delivered yet is resumed at the next start. Returns
    /// whether all were written in time.
    pub fn flush(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        while self.queue.unsaved.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        true
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
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        self.queue.unsaved.fetch_add(1, Ordering::SeqCst);
        if self.queue.to_store.send(delivery).is_err() {
            // The service is gone (the process is ending): nothing will send it.
            self.queue.unsaved.fetch_sub(1, Ordering::SeqCst);
            self.counters.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
