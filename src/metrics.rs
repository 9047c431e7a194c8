//! Counters and histograms for `GET /metrics`, in Prometheus' text exposition format.
//!
//! Plain atomics: recording is a few relaxed additions on the job and request threads, and a
//! scrape reads them without stopping anything. Gauges that are really counts of live things
//! (active jobs, spooled images) are read from their owners at scrape time instead of being
//! tracked twice.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A histogram with fixed upper bounds, in seconds.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// A histogram with these bucket upper bounds (ascending, seconds).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|bound| seconds <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

const DURATION_BOUNDS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];
const FIRST_PROGRESS_BOUNDS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The final states a job can reach, as labels.
pub const FINAL_STATES: [&str; 3] = ["completed", "failed", "cancelled"];

/// Everything the gateway counts.
pub struct Metrics {
    jobs_finished: [AtomicU64; 3],
    /// Wall time from a job's creation to its terminal event.
    pub job_duration: Histogram,
    /// Wall time from a job's creation until ComfyUI started executing it.
    pub time_to_first_progress: Histogram,
    comfyui_errors: AtomicU64,
    supabase_errors: AtomicU64,
    sse_streams: AtomicU64,
    /// Webhook deliveries, counted by the delivery threads.
    pub webhooks: Arc<WebhookCounters>,
}

/// Webhook counters, shared with the delivery threads.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    /// Deliveries a receiver acknowledged with a 2xx.
    pub delivered: AtomicU64,
    /// Failed attempts that were scheduled again.
    pub retries: AtomicU64,
    /// Deliveries abandoned: retry window over, or `410 Gone`.
    pub gave_up: AtomicU64,
    /// Deliveries not yet delivered nor given up.
    pub pending: AtomicU64,
}

/// Values owned elsewhere, read when a scrape happens.
pub struct Gauges {
    /// Unfinished jobs.
    pub active_jobs: usize,
    /// Jobs waiting in the gateway's queue.
    pub queued_jobs: usize,
    /// Images kept in the spool awaiting upload.
    pub spooled_images: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            jobs_finished: Default::default(),
            job_duration: Histogram::new(DURATION_BOUNDS),
            time_to_first_progress: Histogram::new(FIRST_PROGRESS_BOUNDS),
            comfyui_errors: AtomicU64::new(0),
            supabase_errors: AtomicU64::new(0),
            sse_streams: AtomicU64::new(0),
            webhooks: Arc::default(),
        }
    }
}

impl Metrics {
    /// Records a job's end in state `state` (one of [`FINAL_STATES`]) after `duration`.
    pub fn job_finished(&self, state: &str, duration: Duration) {
        if let Some(i) = FINAL_STATES.iter().position(|s| *s == state) {
            self.jobs_finished[i].fetch_add(1, Ordering::Relaxed);
        }
        self.job_duration.observe(duration);
    }

    /// How many jobs ended in `state`.
    pub fn jobs_finished(&self, state: &str) -> u64 {
        FINAL_STATES
            .iter()
            .position(|s| *s == state)
            .map_or(0, |i| self.jobs_finished[i].load(Ordering::Relaxed))
    }

    /// Counts a failed request to ComfyUI.
    pub fn comfyui_error(&self) {
        self.comfyui_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed storage operation against Supabase.
    pub fn supabase_error(&self) {
        self.supabase_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks an SSE stream open until the returned guard is dropped.
    pub fn sse_stream(&self) -> StreamGuard<'_> {
        self.sse_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(&self.sse_streams)
    }

    /// SSE streams open now.
    pub fn open_streams(&self) -> u64 {
        self.sse_streams.load(Ordering::Relaxed)
    }

    /// The exposition text.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        out.push_str("# HELP comfyui_gateway_jobs_total Jobs that ended, by final state.\n");
        out.push_str("# TYPE comfyui_gateway_jobs_total counter\n");
        for (state, count) in FINAL_STATES.iter().zip(&self.jobs_finished) {
            let count = count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "comfyui_gateway_jobs_total{{state=\"{state}\"}} {count}"
            );
        }
        self.job_duration.render(
            &mut out,
            "comfyui_gateway_job_duration_seconds",
            "Time from a job's creation to its terminal event.",
        );
        self.time_to_first_progress.render(
            &mut out,
            "comfyui_gateway_time_to_first_progress_seconds",
            "Time from a job's creation until ComfyUI started executing it.",
        );
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        gauge(
            &mut out,
            "comfyui_gateway_active_jobs",
            "Unfinished jobs.",
            "gauge",
            gauges.active_jobs as u64,
        );
        gauge(
            &mut out,
            "comfyui_gateway_queue_depth",
            "Jobs waiting in ComfyUI's queue.",
            "gauge",
            gauges.queued_jobs as u64,
        );
        gauge(
            &mut out,
            "comfyui_gateway_comfyui_errors_total",
            "Failed requests to ComfyUI.",
            "counter",
            self.comfyui_errors.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "comfyui_gateway_supabase_errors_total",
            "Failed storage operations against Supabase.",
            "counter",
            self.supabase_errors.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "comfyui_gateway_spooled_images",
            "Images kept on disk awaiting upload.",
            "gauge",
            gauges.spooled_images as u64,
        );
        gauge(
            &mut out,
            "comfyui_gateway_sse_streams",
            "Open SSE streams.",
            "gauge",
            self.open_streams(),
        );
        let webhooks = &self.webhooks;
        for (name, help, kind, value) in [
            (
                "comfyui_gateway_webhook_deliveries_total",
                "Webhooks delivered (answered with a 2xx).",
                "counter",
                &webhooks.delivered,
            ),
            (
                "comfyui_gateway_webhook_retries_total",
                "Failed webhook attempts that were scheduled again.",
                "counter",
                &webhooks.retries,
            ),
            (
                "comfyui_gateway_webhook_give_ups_total",
                "Webhooks abandoned after WEBHOOK_RETRY_HOURS (or a 410 Gone).",
                "counter",
                &webhooks.gave_up,
            ),
            (
                "comfyui_gateway_webhook_pending",
                "Webhooks waiting to be delivered.",
                "gauge",
                &webhooks.pending,
            ),
        ] {
            gauge(&mut out, name, help, kind, value.load(Ordering::Relaxed));
        }
        out
    }
}

/// Keeps the open-stream gauge up while alive.
pub struct StreamGuard<'a>(&'a AtomicU64);

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 5.0]);
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(3));
        h.observe(Duration::from_secs(9));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_sum 12.5\nx_count 3\n"), "{out}");
    }

    #[test]
    fn render_counts_jobs_streams_and_gauges() {
        let m = Metrics::default();
        m.job_finished("completed", Duration::from_secs(2));
        m.job_finished("failed", Duration::from_secs(1));
        let guard = m.sse_stream();
        let text = m.render(&Gauges {
            active_jobs: 2,
            queued_jobs: 1,
            spooled_images: 3,
        });
        assert!(text.contains("comfyui_gateway_jobs_total{state=\"completed\"} 1\n"));
        assert!(text.contains("comfyui_gateway_active_jobs 2\n"));
        assert!(text.contains("comfyui_gateway_spooled_images 3\n"));
        assert!(text.contains("comfyui_gateway_sse_streams 1\n"));
        assert!(text.contains("comfyui_gateway_webhook_give_ups_total 0\n"));
        drop(guard);
        assert_eq!(m.open_streams(), 0);
    }
}
