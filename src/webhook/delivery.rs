//! The delivery threads: post each webhook, retry failures with exponential backoff and jitter,
//! give up after the retry window.
//!
//! Each thread takes the next due delivery of a receiver nobody else posts to (`queue`), so one
//! job's webhooks leave in the order the job emitted them (a retried one can still arrive after
//! later ones: receivers should use `webhook-id` to deduplicate, and the body's `type` rather
//! than arrival order), and a slow receiver holds up only its own deliveries.

use crossbeam_channel::Sender;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::queue::{Attempted, Pending, Queue};
use super::signing::SigningKey;
use super::store::{Delivery, Store};
use super::target::{AllowedHosts, WebhookUrl, without_query};
use crate::metrics::WebhookCounters;

/// The tunables of delivery. Tests shorten the delays.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// Delay before the first retry; each later one doubles it (before jitter).
    pub first_retry: Duration,
    /// The longest delay between two attempts.
    pub max_delay: Duration,
    /// How long after its creation a delivery is still retried (`WEBHOOK_RETRY_HOURS`).
    pub retry_window: Duration,
    /// Time allowed to connect to the receiver.
    pub connect_timeout: Duration,
    /// Time allowed for one whole attempt (the specification suggests 15 to 30 s).
    pub request_timeout: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            first_retry: Duration::from_secs(5),
            max_delay: Duration::from_secs(3600),
            retry_window: Duration::from_secs(24 * 3600),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(20),
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx answer: done.
    Delivered,
    /// Failed; another attempt is scheduled.
    WillRetry,
    /// Failed, and no more attempts will be made (retry window over, or `410 Gone`).
    GaveUp,
}

/// What an observer hears after each attempt (see [`super::Webhooks::observe`]).
#[derive(Debug, Clone)]
pub struct AttemptReport {
    /// The delivery's `webhook-id`.
    pub webhook_id: String,
    /// The event name.
    pub event: String,
    /// The job.
    pub job_id: String,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// What happens next.
    pub outcome: AttemptOutcome,
}

/// What every delivery thread shares.
pub(super) struct Shared {
    pub key: SigningKey,
    pub store: Store,
    pub options: DeliveryOptions,
    pub allowed: AllowedHosts,
    pub counters: Arc<WebhookCounters>,
    pub observer: Arc<Mutex<Option<Sender<AttemptReport>>>>,
    pub agent: ureq::Agent,
}

impl Shared {
    pub fn agent_for(options: &DeliveryOptions) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            // The specification counts a redirect as a failure: the URL should be fixed instead.
            .max_redirects(0)
            .timeout_connect(Some(options.connect_timeout))
            .timeout_global(Some(options.request_timeout))
            .user_agent(concat!("comfyui-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent()
    }

    fn report(&self, pending: &Pending, status: Option<u16>, outcome: AttemptOutcome) {
        let observer = self.observer.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(observer) = observer.as_ref() {
            let _ = observer.send(AttemptReport {
                webhook_id: pending.delivery.id.clone(),
                event: pending.delivery.event.clone(),
                job_id: pending.delivery.job_id.clone(),
                status,
                outcome,
            });
        }
    }
}

/// One delivery thread: takes due deliveries from `queue` and attempts each, until the queue
/// stops (the service was dropped; what is pending stays on disk).
pub(super) fn run_worker(shared: &Shared, queue: &Queue) {
    while let Some(taken) = queue.take() {
        let attempted = attempt(shared, taken.pending);
        queue.done(taken.slot, attempted);
    }
}

/// One attempt, then: done, to be tried again (when), or given up.
fn attempt(shared: &Shared, mut pending: Pending) -> Attempted {
    let delivery = &pending.delivery;
    let result = post(shared, delivery);
    pending.attempts += 1;
    let failure = match result {
        Ok(status) => {
            retire(shared, delivery, &shared.counters.delivered);
            log::debug!(
                "webhook {} ({} of job {}) delivered on attempt {}",
                delivery.id,
                delivery.event,
                delivery.job_id,
                pending.attempts
            );
            shared.report(&pending, Some(status), AttemptOutcome::Delivered);
            return Attempted::Finished;
        }
        Err(failure) => failure,
    };
    let delay = backoff(&shared.options, pending.attempts, failure.retry_after);
    let created = UNIX_EPOCH + Duration::from_secs(delivery.created_unix);
    let window_over = SystemTime::now() + delay > created + shared.options.retry_window;
    if failure.gone || window_over {
        retire(shared, delivery, &shared.counters.gave_up);
        log::warn!(
            "webhook {} ({} of job {}) to {} given up after {} attempts: {}",
            delivery.id,
            delivery.event,
            delivery.job_id,
            without_query(&delivery.url),
            pending.attempts,
            failure.reason
        );
        shared.report(&pending, failure.status, AttemptOutcome::GaveUp);
        return Attempted::Finished;
    }
    shared.counters.retries.fetch_add(1, Ordering::Relaxed);
    log::info!(
        "webhook {} ({} of job {}) to {} failed ({}); attempt {} in {} s",
        delivery.id,
        delivery.event,
        delivery.job_id,
        without_query(&delivery.url),
        failure.reason,
        pending.attempts + 1,
        delay.as_secs()
    );
    shared.report(&pending, failure.status, AttemptOutcome::WillRetry);
    Attempted::RetryAt(Instant::now() + delay, pending)
}

/// Forgets a delivery that gets no more attempts (on disk and in the pending count), counting it
/// in `ended`: delivered or given up.
fn retire(shared: &Shared, delivery: &Delivery, ended: &AtomicU64) {
    shared.store.remove(&delivery.id);
    ended.fetch_add(1, Ordering::Relaxed);
    shared.counters.pending.fetch_sub(1, Ordering::Relaxed);
}

/// Why an attempt failed.
struct Failure {
    reason: String,
    status: Option<u16>,
    retry_after: Option<Duration>,
    /// `410 Gone`: the receiver asked for no more.
    gone: bool,
}

/// Signs and posts one attempt, with this attempt's timestamp. Returns the receiver's 2xx status.
fn post(shared: &Shared, delivery: &Delivery) -> Result<u16, Failure> {
    let failure = |reason: String, status| Failure {
        reason,
        status,
        retry_after: None,
        gone: false,
    };
    // A URL that does not parse or is no longer allowed (a pending delivery from an earlier
    // run, under other settings) would fail every attempt: given up at once.
    let never = |reason: String| Failure {
        gone: true,
        ..failure(reason, None)
    };
    let url = WebhookUrl::parse(&delivery.url)
        .map_err(|expected| never(format!("its URL is not {expected}")))?;
    if !shared.allowed.allows(&url) {
        return Err(never("its host is not in WEBHOOK_ALLOWED_HOSTS".into()));
    }
    let timestamp = unix_now();
    let signature = shared
        .key
        .sign(&delivery.id, timestamp, delivery.body.as_bytes());
    let response = shared
        .agent
        .post(&delivery.url)
        .header("content-type", "application/json")
        .header("webhook-id", &delivery.id)
        .header("webhook-timestamp", &timestamp.to_string())
        .header("webhook-signature", &signature)
        .send(delivery.body.as_bytes());
    let response = response.map_err(|e| failure(e.to_string(), None))?;
    let status = response.status().as_u16();
    if response.status().is_success() {
        return Ok(status);
    }
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Err(Failure {
        reason: format!("HTTP {status}"),
        status: Some(status),
        retry_after,
        gone: status == 410,
    })
}

/// The delay before attempt `attempts + 1`: `first_retry` doubled per failed attempt, capped at
/// `max_delay`, of which the second half is random ("equal jitter"); never less than the
/// receiver's `Retry-After` (capped too).
pub(super) fn backoff(
    options: &DeliveryOptions,
    attempts: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let doublings = attempts.saturating_sub(1).min(31);
    let full = options
        .first_retry
        .saturating_mul(1u32 << doublings)
        .min(options.max_delay);
    let half = full / 2;
    let fraction = (crate::ids::random_u64() % 1_000_001) as f64 / 1_000_000.0;
    let delay = half + half.mul_f64(fraction);
    delay.max(retry_after.unwrap_or_default().min(options.max_delay))
}

/// Seconds since the Unix epoch.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let options = DeliveryOptions {
            first_retry: Duration::from_secs(10),
            max_delay: Duration::from_secs(60),
            ..DeliveryOptions::default()
        };
        for _ in 0..50 {
            let first = backoff(&options, 1, None);
            assert!((5..=10).contains(&first.as_secs()), "{first:?}");
            let third = backoff(&options, 3, None);
            assert!((20..=40).contains(&third.as_secs()), "{third:?}");
            let late = backoff(&options, 40, None);
            assert!((30..=60).contains(&late.as_secs()), "{late:?}");
        }
        let told = backoff(&options, 1, Some(Duration::from_secs(45)));
        assert_eq!(told, Duration::from_secs(45), "Retry-After is honoured");
        let greedy = backoff(&options, 1, Some(Duration::from_secs(99_999)));
        assert_eq!(greedy, Duration::from_secs(60), "but capped");
    }
}
