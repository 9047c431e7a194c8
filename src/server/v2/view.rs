//! A gateway job as the contract's `Job` object: status, progress, outputs, error, links.
//!
//! The gateway's states map onto v2's: `queued` → `queued`; `running` and `uploading` →
//! `running` (`canceling` once a cancel was asked); `completed` → `succeeded`; `cancelled` →
//! `canceled`; `failed` → `failed`, or `expired` for a job that timed out waiting in the
//! gateway's queue (`QUEUE_TIMEOUT_SECS`) without reaching a ComfyUI.

use serde_json::{Map, Value, json};

use crate::api::{ApiError, ErrorCode};
use crate::app::App;
use crate::job::{Job, JobState};
use crate::timestamp;

/// The contract's job statuses.
pub const STATUSES: [&str; 7] = [
    "queued",
    "running",
    "succeeded",
    "canceling",
    "canceled",
    "failed",
    "expired",
];

/// Whether `status` is terminal.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "succeeded" | "canceled" | "failed" | "expired")
}

/// The v2 status of a job in `state`.
pub fn status_of(job: &Job, state: &JobState) -> &'static str {
    match state {
        JobState::Queued | JobState::Running | JobState::Uploading if job.cancel_requested() => {
            "canceling"
        }
        JobState::Queued => "queued",
        JobState::Running | JobState::Uploading => "running",
        JobState::Completed(_) => "succeeded",
        JobState::Cancelled => "canceled",
        JobState::Failed(error) if expired_in_queue(error) => "expired",
        JobState::Failed(_) => "failed",
    }
}

/// A job that timed out in the gateway's queue, never reaching a ComfyUI.
fn expired_in_queue(error: &ApiError) -> bool {
    error.code == ErrorCode::Timeout && error.message.contains("QUEUE_TIMEOUT_SECS")
}

/// A job's links, host-relative (the SDK resolves them against the origin it called).
pub fn urls(id: &str) -> Value {
    let this = format!("{}/jobs/{id}", super::PREFIX);
    json!({
        "self": this,
        "events": format!("{this}/events"),
        "cancel": format!("{this}/cancel"),
    })
}

/// The contract's `Progress` from the gateway's progress snapshot (`null` before ComfyUI runs
/// the job). A finished job shows its final count.
pub fn progress(snapshot: &Value, state: &JobState) -> Value {
    let Some(fields) = snapshot.as_object() else {
        return match state {
            JobState::Completed(_) => json!({"value": 1.0, "nodes_done": 0, "nodes_total": 0}),
            _ => Value::Null,
        };
    };
    if fields.get("percent").is_none() {
        return Value::Null; // a waiting tick, not a run's snapshot
    }
    let completed = matches!(state, JobState::Completed(_));
    let percent = fields["percent"].as_f64().unwrap_or(0.0);
    let value = if completed {
        1.0
    } else {
        (percent / 100.0).clamp(0.0, 1.0)
    };
    let nodes_total = fields["nodes_total"].as_u64().unwrap_or(0);
    let nodes_done = if completed {
        nodes_total
    } else {
        fields["nodes_done"].as_u64().unwrap_or(0).min(nodes_total)
    };
    let node = fields.get("node").cloned().unwrap_or(Value::Null);
    let class = fields.get("node_type").cloned().unwrap_or(Value::Null);
    let step = fields.get("step").cloned().unwrap_or(Value::Null);
    let steps = fields.get("steps").cloned().unwrap_or(Value::Null);
    let message = match (class.as_str(), step.as_u64(), steps.as_u64()) {
        (Some(class), Some(step), Some(steps)) => json!(format!("{class} {step}/{steps}")),
        (Some(class), _, _) => json!(class),
        _ => Value::Null,
    };
    json!({
        "value": value,
        "nodes_done": nodes_done,
        "nodes_total": nodes_total,
        "current_node": if completed { Value::Null } else { node },
        "current_node_class": if completed { Value::Null } else { class },
        "step": step,
        "steps": steps,
        "message": message,
    })
}

/// The progress snapshot of a job on a ComfyUI, read from its tracker now (fresher than the
/// last tick's); `None` when it has no run.
pub fn live_snapshot(job: &Job) -> Option<Value> {
    let elapsed = job.elapsed_ms();
    job.with_run(|run| run.tracker.snapshot("running", elapsed))
}

/// The contract's `JobError` for a failed job.
pub fn job_error(error: &ApiError) -> Value {
    let details = &error.details;
    let text = |key: &str| details.get(key).and_then(Value::as_str).map(str::to_string);
    let (code, node_id, class_type) = match error.code {
        ErrorCode::ExecutionFailed => ("node_execution_error", text("node_id"), text("node_type")),
        ErrorCode::ComfyuiRejected => {
            let node = details["node_errors"]
                .as_object()
                .and_then(|nodes| nodes.iter().next());
            (
                "invalid_workflow",
                node.map(|(id, _)| id.clone()),
                node.and_then(|(_, e)| e["class_type"].as_str().map(str::to_string)),
            )
        }
        ErrorCode::Timeout if expired_in_queue(error) => ("expired", None, None),
        other => (other.as_str(), None, None),
    };
    json!({
        "code": code,
        "message": error.message,
        "node_id": node_id,
        "class_type": class_type,
        "traceback": traceback(details),
    })
}

fn traceback(details: &Value) -> Value {
    match &details["traceback"] {
        Value::String(text) => json!(text),
        Value::Array(lines) => json!(
            lines
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("")
        ),
        _ => Value::Null,
    }
}

/// The normalised output kind of a stored file's `kind`.
fn output_type(kind: &str) -> &'static str {
    match kind {
        "image" => "image",
        "video" => "video",
        "audio" => "audio",
        "text" => "text",
        "latent" => "latent",
        _ => "file",
    }
}

/// The contract's `Output`s of a job: the outputs registered as assets so far (they fill in
/// while the job runs), else, for a job finished before the asset library knew it, the files
/// its result lists.
pub fn outputs(app: &App, job: &Job, state: &JobState) -> Vec<Value> {
    let committed = app.assets.for_job(job.id().as_str());
    if !committed.is_empty() {
        let base = &app.config.public_base_url;
        return committed
            .iter()
            .map(|asset| asset.to_output_json(base))
            .collect();
    }
    let JobState::Completed(result) = state else {
        return Vec::new();
    };
    let expires = url_expiry(app, job);
    result["images"]
        .as_array()
        .map(|images| {
            images
                .iter()
                .map(|image| output(job, image, &expires))
                .collect()
        })
        .unwrap_or_default()
}

/// One stored file as an `Output`.
fn output(job: &Job, image: &Value, expires: &str) -> Value {
    let key = image["key"].as_str().unwrap_or_default();
    let name = key.rsplit('/').next().unwrap_or(key);
    let id = image["asset_id"]
        .as_str()
        .map_or_else(|| format!("{}-{}", job.id(), name), str::to_string);
    json!({
        "node_id": image["node"].as_str().unwrap_or(""),
        "name": name,
        "type": output_type(image["kind"].as_str().unwrap_or("")),
        "content_type": image["content_type"].as_str().unwrap_or("application/octet-stream"),
        "size_bytes": image["bytes"].as_u64().unwrap_or(0),
        "id": id,
        "hash": image.get("hash").cloned().unwrap_or(Value::Null),
        "url": image["url"].as_str().unwrap_or(""),
        "url_expires_at": expires,
        "job_id": job.id(),
    })
}

/// When a job's output links stop working: when the job is forgotten (local storage keeps its
/// files longer; a signed Supabase link lives at least that long).
fn url_expiry(app: &App, job: &Job) -> String {
    let (created, _, finished) = job.times_unix_ms();
    let from = finished.unwrap_or(created.max(timestamp::unix_millis()));
    timestamp::rfc3339_from_unix_millis(from + app.config.job_retention.as_millis() as u64)
}

/// The job as `GET /api/v2/jobs/{id}` shows it.
pub fn job(app: &App, job: &Job) -> Value {
    let state = job.state();
    let status = status_of(job, &state);
    let gateway = job.to_json(None);
    let (created, started, finished) = job.times_unix_ms();
    let time = |ms: Option<u64>| {
        ms.map_or(Value::Null, |ms| {
            json!(timestamp::rfc3339_from_unix_millis(ms))
        })
    };
    let queue_position = match status {
        "queued" | "canceling" => app
            .engine()
            .and_then(|engine| engine.queue_position(job.id()))
            .map_or_else(
                || gateway["progress"]["queue_position"].clone(),
                |p| json!(p),
            ),
        _ => Value::Null,
    };
    let queue_position = if queue_position.is_u64() {
        queue_position
    } else {
        Value::Null
    };
    let error = match &state {
        JobState::Failed(error) => job_error(error),
        _ => Value::Null,
    };
    let retention = app.config.job_retention.as_millis() as u64;
    let expires_at = finished.unwrap_or(created.max(timestamp::unix_millis())) + retention;
    let mut metrics = Map::new();
    metrics.insert(
        "queue_ms".into(),
        started.map_or(Value::Null, |s| json!(s.saturating_sub(created))),
    );
    metrics.insert(
        "execution_ms".into(),
        match (started, finished) {
            (Some(s), Some(f)) => json!(f.saturating_sub(s)),
            _ => Value::Null,
        },
    );
    json!({
        "id": job.id(),
        "status": status,
        "created_at": timestamp::rfc3339_from_unix_millis(created),
        "started_at": time(started),
        "completed_at": if is_terminal(status) { time(finished) } else { Value::Null },
        "expires_at": timestamp::rfc3339_from_unix_millis(expires_at),
        "queue_position": queue_position,
        "progress": progress(&live_snapshot(job).unwrap_or_else(|| gateway["progress"].clone()), &state),
        "outputs": outputs(app, job, &state),
        "error": error,
        "metrics": metrics,
        "metadata": job.options().labels,
        "priority": job.options().priority,
        "urls": urls(job.id().as_str()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_maps_the_snapshot_and_says_what_runs() {
        let snapshot = json!({"percent": 42.0, "node": "3", "node_type": "KSampler",
                              "step": 9, "steps": 18, "nodes_done": 1, "nodes_total": 4});
        let p = progress(&snapshot, &JobState::Running);
        assert_eq!(p["value"], 0.42);
        assert_eq!(
            (p["nodes_done"].clone(), p["nodes_total"].clone()),
            (json!(1), json!(4))
        );
        assert_eq!(p["current_node_class"], "KSampler");
        assert_eq!(p["message"], "KSampler 9/18");
        assert!(progress(&Value::Null, &JobState::Queued).is_null());
        let done = progress(
            &snapshot,
            &JobState::Completed(std::sync::Arc::new(json!({}))),
        );
        assert_eq!(
            (done["value"].clone(), done["nodes_done"].clone()),
            (json!(1.0), json!(4))
        );
    }

    #[test]
    fn errors_become_job_errors() {
        let failed = ApiError::new(ErrorCode::ExecutionFailed, "boom").with_details(
            json!({"node_id": "3", "node_type": "KSampler", "traceback": ["a\n", "b"]}),
        );
        let e = job_error(&failed);
        assert_eq!(e["code"], "node_execution_error");
        assert_eq!(
            (e["node_id"].clone(), e["class_type"].clone()),
            (json!("3"), json!("KSampler"))
        );
        assert_eq!(e["traceback"], "a\nb");
        let rejected = ApiError::new(ErrorCode::ComfyuiRejected, "no")
            .with_details(json!({"node_errors": {"7": {"class_type": "Foo", "errors": []}}}));
        assert_eq!(job_error(&rejected)["code"], "invalid_workflow");
        assert_eq!(job_error(&rejected)["node_id"], "7");
    }
}
