//! `GET /api/v2/jobs/{id}/events`: the job's live state as Server-Sent Events.
//!
//! A translation of the job's own event log (the one `/jobs/{id}/events` replays), written on the
//! request thread like every gateway stream, with one flush per event. On connect: a `status`
//! snapshot, the latest `progress` and the latest `preview`; then live `status` (each change,
//! and the place in the queue while waiting), `progress` (about two a second whatever
//! `PROGRESS_INTERVAL_MS`, each a complete snapshot read from the job's tracker), `preview`
//! (base64), `log` (dispatch, failures), `output` (each output as it is committed) and the
//! terminal `status`, after which the stream ends. No `id:` lines: the v2 stream is live only,
//! the job object is the record. A comment every 15 s keeps idle connections open. There is no
//! cap on streams besides `MAX_CONNECTIONS`.

use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiny_http::Request;

use super::{Call, V2Error, respond_error, view};
use crate::app::App;
use crate::ids::JobId;
use crate::job::{Event, EventKind, Job, JobState};
use crate::sse::SseWriter;

/// The shortest time between two `progress` events of a stream (about two a second).
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// How long a stream stays silent before a keep-alive comment.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// One SSE frame without an `id:` line.
pub fn frame(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// Streams the job's events until its terminal status.
/// The connection is closed once the stream ends (its answer says `Connection: close`), and
/// each event must be written within `IDLE_TIMEOUT_SECS` (`FrontDoor::deadline_writer`).
pub fn stream(app: &Arc<App>, request: Request, call: &Call<'_>) {
    let Some(job) = JobId::parse(call.param(0)).and_then(|id| app.jobs.get(&id)) else {
        let error = V2Error::not_found(format!("job {}", call.param(0)));
        return respond_error(request, &error);
    };
    let peer = request.remote_addr().copied();
    write_stream(app, request, call, &job);
    call.door.close(peer);
}

fn write_stream(app: &Arc<App>, request: Request, call: &Call<'_>, job: &Arc<Job>) {
    let _open = app.metrics.sse_stream();
    let watch = job.watch_outputs();
    let subscription = job.subscribe(0);
    let peer = request.remote_addr().copied();
    let writer = call.door.deadline_writer(request.into_writer(), peer);
    let Ok(sse) = SseWriter::start(writer, &[]) else {
        return log::debug!("job {}: a v2 client left before its stream began", job.id());
    };
    let mut stream = Stream {
        app,
        job,
        sse,
        status: String::new(),
        queue_position: Value::Null,
        last_progress: None,
        pending_progress: None,
        last_sent: None,
        outputs_sent: HashSet::new(),
    };
    let latest_preview = subscription
        .replay
        .iter()
        .rev()
        .find(|event| event.kind == EventKind::Preview)
        .cloned();
    if stream.connect(latest_preview.as_deref()).is_err() {
        return;
    }
    // Ended before the snapshot was taken: its terminal status is sent, nothing follows it.
    if view::is_terminal(&stream.status) {
        let _ = stream.end();
        return;
    }
    let Some(live) = subscription.live else {
        let _ = stream.end();
        return;
    };
    // Outputs arrive on their own channel the moment each is committed; it closes when the
    // job ends (its outputs are then all in the job object).
    let mut outputs = watch.live.unwrap_or_else(crossbeam_channel::never);
    // Progress at about two a second whatever PROGRESS_INTERVAL_MS is, read from the tracker.
    let every_half_second = crossbeam_channel::tick(PROGRESS_EVERY);
    loop {
        crossbeam_channel::select! {
            recv(live) -> event => {
                // The log closes its channels right after the terminal event.
                let Ok(event) = event else {
                    let _ = stream.end();
                    return;
                };
                let terminal = event.kind.is_terminal();
                if stream.translate(&event).is_err() {
                    return log::info!("job {}: a v2 client stopped watching", job.id());
                }
                if terminal {
                    let _ = stream.end();
                    return;
                }
            }
            recv(outputs) -> asset => match asset {
                Ok(asset) => {
                    let output = asset.to_output_json(&app.config.public_base_url);
                    if stream.outputs(&Value::Array(vec![output])).is_err() {
                        return;
                    }
                }
                Err(_) => outputs = crossbeam_channel::never(),
            },
            recv(every_half_second) -> _ => {
                if stream.fresh_progress().is_err() {
                    return;
                }
            }
            default(KEEPALIVE) => {
                if stream.send_raw(": keepalive\n\n").is_err() {
                    return;
                }
            }
        }
    }
}

struct Stream<'a, W: Write> {
    app: &'a App,
    job: &'a Job,
    sse: SseWriter<W>,
    status: String,
    queue_position: Value,
    last_progress: Option<Instant>,
    pending_progress: Option<Value>,
    /// The last `progress` sent.
    last_sent: Option<Value>,
    /// Ids of the outputs already sent.
    outputs_sent: HashSet<String>,
}

impl<W: Write> Stream<'_, W> {
    fn send_raw(&mut self, text: &str) -> std::io::Result<()> {
        self.sse.send(text)
    }

    fn send(&mut self, event: &str, data: &Value) -> std::io::Result<()> {
        self.sse.send(&frame(event, data))
    }

    /// The snapshot on connect. A job already finished gets its outputs, then its terminal
    /// status, which ends the stream (clients stop reading at the terminal status).
    fn connect(&mut self, preview: Option<&Event>) -> std::io::Result<()> {
        let snapshot = view::job(self.app, self.job);
        let status = snapshot["status"].as_str().unwrap_or("queued").to_string();
        if view::is_terminal(&status) {
            self.outputs(&snapshot["outputs"])?;
            return self.status_event(&status, Value::Null, true);
        }
        self.status_event(&status, snapshot["queue_position"].clone(), true)?;
        if !snapshot["progress"].is_null() {
            self.send_progress(snapshot["progress"].clone())?;
        }
        if let Some(preview) = preview {
            self.preview(preview)?;
        }
        self.outputs(&snapshot["outputs"])
    }

    /// An `output` event for each output not sent yet.
    fn outputs(&mut self, outputs: &Value) -> std::io::Result<()> {
        for output in outputs.as_array().into_iter().flatten() {
            let id = output["id"].as_str().unwrap_or_default().to_string();
            if self.outputs_sent.insert(id) {
                self.send("output", output)?;
            }
        }
        Ok(())
    }

    /// A `status` event when the status or the queue position changed (or `always`).
    fn status_event(&mut self, status: &str, position: Value, always: bool) -> std::io::Result<()> {
        if !always && status == self.status && position == self.queue_position {
            return Ok(());
        }
        self.status = status.to_string();
        self.queue_position = position.clone();
        self.send(
            "status",
            &json!({ "status": status, "queue_position": position }),
        )
    }

    /// The job's current status, sent if it changed. A terminal status is left to the log's
    /// terminal event, which sends the job's last progress, outputs and status, then ends the
    /// stream: read from the job a moment before that event arrives, it would be sent twice,
    /// with events after it.
    fn current_status(&mut self, position: Value) -> std::io::Result<()> {
        let status = view::status_of(self.job, &self.job.state());
        if view::is_terminal(status) {
            return Ok(());
        }
        let position = if status == "queued" {
            position
        } else {
            Value::Null
        };
        self.status_event(status, position, false)
    }

    fn preview(&mut self, event: &Event) -> std::io::Result<()> {
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        let Some(url) = data["image"].as_str() else {
            return Ok(());
        };
        let Some((_, base64)) = url.split_once(";base64,") else {
            return Ok(());
        };
        let preview = json!({
            "node_id": data["node"].as_str().unwrap_or(""),
            "content_type": data["content_type"].as_str().unwrap_or("image/jpeg"),
            "data_base64": base64,
        });
        self.send("preview", &preview)
    }

    /// A `progress` event from the job's tracker when one is due and something changed since
    /// the last (the ticks of the job's log may be slower than two a second); the status too,
    /// when it changed (a cancel asked: `canceling`).
    fn fresh_progress(&mut self) -> std::io::Result<()> {
        self.current_status(self.queue_position.clone())?;
        if self
            .last_progress
            .is_some_and(|at| at.elapsed() < PROGRESS_EVERY)
        {
            return Ok(());
        }
        let Some(snapshot) = view::live_snapshot(self.job) else {
            return Ok(());
        };
        let progress = view::progress(&snapshot, &JobState::Running);
        if progress.is_null() || self.last_sent.as_ref() == Some(&progress) {
            return Ok(());
        }
        self.send_progress(progress)
    }

    fn send_progress(&mut self, progress: Value) -> std::io::Result<()> {
        self.pending_progress = None;
        self.last_progress = Some(Instant::now());
        self.send("progress", &progress)?;
        self.last_sent = Some(progress);
        Ok(())
    }

    /// Translates one event of the job's log.
    fn translate(&mut self, event: &Event) -> std::io::Result<()> {
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        match event.kind {
            EventKind::Queued => self.current_status(data["queue_position"].clone()),
            EventKind::Dispatched => {
                let message = format!(
                    "sent to ComfyUI at {} as prompt {}",
                    data["backend"].as_str().unwrap_or("?"),
                    data["prompt_id"].as_str().unwrap_or("?")
                );
                self.send("log", &json!({"level": "info", "message": message}))?;
                for warning in data["warnings"].as_array().into_iter().flatten() {
                    let message = warning["message"]
                        .as_str()
                        .map_or_else(|| warning.to_string(), str::to_string);
                    self.send("log", &json!({"level": "warning", "message": message}))?;
                }
                Ok(())
            }
            EventKind::Progress => {
                let waiting = data["backend"].is_null() && data["state"] == "queued";
                let position = data["queue_position"].clone();
                self.current_status(position)?;
                if waiting {
                    return Ok(());
                }
                let progress = view::progress(&data, &JobState::Running);
                if progress.is_null() {
                    return Ok(());
                }
                let due = self
                    .last_progress
                    .is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
                if due {
                    self.send_progress(progress)
                } else {
                    self.pending_progress = Some(progress);
                    Ok(())
                }
            }
            EventKind::Preview => self.preview(event),
            EventKind::Complete | EventKind::Error | EventKind::Cancelled => {
                // The last progress: the whole graph for a success, else the last one seen.
                let snapshot = view::job(self.app, self.job);
                let last = match event.kind {
                    EventKind::Complete => Some(snapshot["progress"].clone()),
                    _ => self.pending_progress.take(),
                };
                if let Some(progress) = last.filter(|p| !p.is_null()) {
                    if self.last_sent.as_ref() != Some(&progress) {
                        self.send_progress(progress)?;
                    }
                }
                if event.kind == EventKind::Error {
                    let message = data["message"]
                        .as_str()
                        .unwrap_or("the job failed")
                        .to_string();
                    self.send("log", &json!({"level": "error", "message": message}))?;
                }
                self.outputs(&snapshot["outputs"])?;
                let status = snapshot["status"].as_str().unwrap_or("failed").to_string();
                self.status_event(&status, Value::Null, true)
            }
        }
    }

    fn end(self) -> std::io::Result<()> {
        self.sse.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_no_id_line() {
        let text = frame("status", &json!({"status": "queued"}));
        assert_eq!(text, "event: status\ndata: {\"status\":\"queued\"}\n\n");
    }
}
