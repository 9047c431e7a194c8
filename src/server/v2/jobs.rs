//! The job routes: submit, list, get, workflow, cancel, and the v2 health answer.
//!
//! A v2 submission becomes a gateway job with a raw graph ([`Engine::submit_with`]): the same
//! durable queue, priorities, backends, timeouts and storage as `POST /jobs`. What v2 adds is
//! checked here, before the job exists: the workflow's format and nodes, asset references,
//! `metadata` labels, `priority`, `extra_data`, and the `Idempotency-Key`.

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tiny_http::Request;

use super::{Call, V2Error, checks, respond, respond_error, view};
use crate::api::{ErrorCode, GenerateRequest, JobRequest, RequestOptions};
use crate::app::App;
use crate::idempotency::{self, Begin};
use crate::ids::JobId;
use crate::job::{Engine, GraphSource, Job};
use crate::server::reply;

/// At most this many `metadata` labels per job.
pub const MAX_LABELS: usize = 16;
/// A label's key: 1 to 64 characters of `A-Z a-z 0-9 _ . - :`.
pub const MAX_LABEL_KEY: usize = 64;
/// A label's value: at most 256 bytes.
pub const MAX_LABEL_VALUE: usize = 256;
/// `GET /api/v2/jobs` answers at most this many jobs a page (and 50 when not told).
pub const MAX_PAGE: usize = 100;
const DEFAULT_PAGE: usize = 50;

/// `GET /api/v2/health`: the process serves (never needs a key, like `GET /health`).
pub fn health(app: &Arc<App>, request: Request) {
    let body = json!({
        "status": "healthy",
        "backends": app.backends.len(),
        "queued": app.engine().map_or(0, |engine| engine.waiting()),
    });
    respond(request, 200, &body, Vec::new());
}

fn engine(app: &App) -> Result<&Arc<Engine>, V2Error> {
    app.engine()
        .ok_or_else(|| V2Error::internal("the job engine has not started"))
}

fn find(app: &App, id: &str) -> Result<Arc<Job>, V2Error> {
    JobId::parse(id)
        .and_then(|id| app.jobs.get(&id))
        .ok_or_else(|| V2Error::not_found(format!("job {id}")))
}

/// What a submission asked for, checked.
struct Submission {
    workflow: Map<String, Value>,
    labels: BTreeMap<String, String>,
    priority: i32,
    extra_data: Option<Value>,
}

/// `POST /api/v2/jobs`.
pub fn submit(app: &Arc<App>, mut request: Request, call: &Call<'_>) {
    let body = match reply::read_json_body(&mut request, app.config.max_body_bytes) {
        Ok(body) => body,
        Err(error) if error.code == ErrorCode::PayloadTooLarge => {
            return call.door.refuse(request, &error, &[]);
        }
        Err(error) => return respond_error(request, &V2Error::from_gateway(&error)),
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            let error = V2Error::invalid_request(format!("the body is not valid JSON: {e}"));
            return respond_error(request, &error);
        }
    };
    let key = reply::header_value(&request, "Idempotency-Key").map(str::to_string);
    let claim = match &key {
        None => None,
        Some(key) if !idempotency::valid_key(key) => {
            let error = V2Error::invalid_request(format!(
                "Idempotency-Key must be 1 to {} printable ASCII characters",
                idempotency::MAX_KEY_LEN
            ));
            return respond_error(request, &error);
        }
        Some(key) => match app.idempotency.begin(call.token.as_deref(), key, &body) {
            Begin::Fresh(claim) => Some(claim),
            Begin::Replay(recorded) => {
                let headers = vec![reply::header("Idempotency-Replayed", "true")];
                return respond(request, recorded.status, &recorded.body, headers);
            }
            Begin::Reused => {
                let error = V2Error::new(
                    422,
                    "idempotency_key_reuse",
                    "this Idempotency-Key was used with a different request body",
                );
                return respond_error(request, &error);
            }
            Begin::InFlight => {
                let error = V2Error::new(
                    409,
                    "idempotency_conflict",
                    "a request with this Idempotency-Key is still being answered; retry shortly",
                )
                .retry_after(1);
                return respond_error(request, &error);
            }
            Begin::Unreadable(_) => return respond_error(request, &V2Error::unreadable_key()),
        },
    };
    let job = match accept(app, body) {
        Ok(job) => job,
        Err(error) => return respond_error(request, &error), // the claim is dropped: key free
    };
    let answer = view::job(app, &job);
    if let Some(claim) = claim {
        if let Err(e) = claim.record(201, &answer) {
            log::error!(
                "job {}: its Idempotency-Key could not be saved in {}: {e}",
                job.id(),
                app.idempotency.dir().display()
            );
        }
    }
    let headers = vec![reply::header(
        "Location",
        &format!("{}/jobs/{}", super::PREFIX, job.id()),
    )];
    respond(request, 201, &answer, headers);
}

/// Checks a submission and hands it to the engine; the job is saved and queued once this
/// returns it.
fn accept(app: &Arc<App>, body: Value) -> Result<Arc<Job>, V2Error> {
    let mut submission = parse(body)?;
    checks::check_shape(&submission.workflow)?;
    let assets = &app.assets;
    let inputs = checks::resolve_assets(&mut submission.workflow, |id| {
        let asset = assets.get(id)?;
        if !assets.blobs().contains(&asset.hash) {
            return None;
        }
        let ext = checks::extension_for(asset.file_path.as_deref(), &asset.content_type);
        Some((asset.hash, ext))
    })?;
    checks::check_classes(&submission.workflow, app.installed.as_ref())?;
    let options = RequestOptions {
        priority: submission.priority,
        previews: true,
        labels: submission.labels,
        ..RequestOptions::default()
    };
    let request = JobRequest {
        generate: GenerateRequest::Graph {
            graph: Value::Object(submission.workflow),
        },
        options,
    };
    // `WEBHOOK_URL`, when set, hears of v2 jobs as of every other job.
    let events = app
        .webhooks
        .sink_for(None)
        .map_err(|error| V2Error::from_gateway(&error))?;
    engine(app)?
        .submit_with(request, events, submission.extra_data, inputs)
        .map_err(|error| V2Error::from_gateway(&error))
}

/// The body's fields, checked: `workflow`, `metadata`, `priority`, `extra_data`.
fn parse(body: Value) -> Result<Submission, V2Error> {
    let Value::Object(mut fields) = body else {
        return Err(V2Error::invalid_request("the body must be a JSON object"));
    };
    for reserved in ["webhook_url", "inputs"] {
        if fields.get(reserved).is_some_and(|v| !v.is_null()) {
            return Err(V2Error::invalid_request(format!(
                "'{reserved}' is reserved by the contract and not accepted yet"
            )));
        }
    }
    let workflow = match fields.remove("workflow") {
        Some(ui) if crate::workflow::ui::is_ui_format(&ui) => {
            return Err(V2Error::new(
                422,
                "workflow_format_ui",
                "this is ComfyUI's UI export (nodes/links); export the workflow in API format \
                 (Save (API Format)) instead",
            ));
        }
        Some(Value::Object(workflow)) => workflow,
        Some(_) => {
            return Err(V2Error::new(
                422,
                "invalid_workflow",
                "'workflow' must be the API-format graph: an object of nodes keyed by id",
            ));
        }
        None => {
            return Err(V2Error::new(
                422,
                "invalid_workflow",
                "the body needs 'workflow', the API-format graph",
            ));
        }
    };
    let labels = match fields.remove("metadata") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(value) => labels(&value)?,
    };
    let priority = match fields.remove("priority") {
        None | Some(Value::Null) => 0,
        Some(value) => value
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| {
                V2Error::invalid_request(format!(
                    "'priority' must be an integer from {} to {} (higher runs first)",
                    i32::MIN,
                    i32::MAX
                ))
            })?,
    };
    let extra_data = match fields.remove("extra_data") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) if !map.is_empty() => Some(Value::Object(map)),
        Some(_) => {
            return Err(V2Error::invalid_request(
                "'extra_data' must be a non-empty object (e.g. {\"api_key_comfy_org\": \"...\"})",
            ));
        }
    };
    Ok(Submission {
        workflow,
        labels,
        priority,
        extra_data,
    })
}

/// `metadata`: at most 16 string labels, keys of `A-Z a-z 0-9 _ . - :`.
fn labels(value: &Value) -> Result<BTreeMap<String, String>, V2Error> {
    let invalid = |message: String| V2Error::new(422, "metadata_invalid", message);
    let Some(map) = value.as_object() else {
        return Err(invalid(
            "'metadata' must be an object of string labels".into(),
        ));
    };
    if map.len() > MAX_LABELS {
        return Err(invalid(format!(
            "'metadata' has {} labels; at most {MAX_LABELS} are kept",
            map.len()
        )));
    }
    let mut labels = BTreeMap::new();
    for (key, value) in map {
        if !valid_label_key(key) {
            return Err(invalid(format!(
                "metadata key {key:?} must be 1 to {MAX_LABEL_KEY} characters of A-Z a-z 0-9 _ . - :"
            )));
        }
        let Some(text) = value.as_str() else {
            return Err(invalid(format!("metadata[{key}] must be a string")));
        };
        if text.len() > MAX_LABEL_VALUE {
            return Err(invalid(format!(
                "metadata[{key}] is longer than {MAX_LABEL_VALUE} bytes"
            )));
        }
        labels.insert(key.clone(), text.to_string());
    }
    Ok(labels)
}

fn valid_label_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_LABEL_KEY
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'))
}

/// `GET /api/v2/jobs`.
pub fn list(app: &Arc<App>, request: Request, call: &Call<'_>) {
    match page(app, call.query) {
        Ok(body) => respond(request, 200, &body, Vec::new()),
        Err(error) => respond_error(request, &error),
    }
}

/// A list query, checked.
struct ListQuery {
    statuses: Option<Vec<String>>,
    labels: Vec<(String, String)>,
    limit: usize,
    after: Option<(u64, String)>,
}

fn parse_query(query: &str) -> Result<ListQuery, V2Error> {
    let mut parsed = ListQuery {
        statuses: None,
        labels: Vec::new(),
        limit: DEFAULT_PAGE,
        after: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = crate::percent::decode(name, true);
        let value = crate::percent::decode(value, true);
        if name == "status" {
            let statuses: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if let Some(bad) = statuses
                .iter()
                .find(|s| !view::STATUSES.contains(&s.as_str()))
            {
                return Err(V2Error::invalid_request(format!(
                    "status {bad:?} is not one of {}",
                    view::STATUSES.join(", ")
                )));
            }
            parsed
                .statuses
                .get_or_insert_with(Vec::new)
                .extend(statuses);
        } else if name == "limit" {
            parsed.limit = match value.parse::<usize>() {
                Ok(n @ 1..=MAX_PAGE) => n,
                _ => {
                    return Err(V2Error::invalid_request(format!(
                        "'limit' must be an integer from 1 to {MAX_PAGE}"
                    )));
                }
            };
        } else if name == "cursor" {
            parsed.after = Some(parse_cursor(&value).ok_or_else(|| {
                V2Error::new(
                    400,
                    "invalid_cursor",
                    "the cursor was not issued by this gateway",
                )
            })?);
        } else if let Some(key) = name
            .strip_prefix("metadata[")
            .and_then(|k| k.strip_suffix(']'))
        {
            if !valid_label_key(key) {
                return Err(V2Error::new(
                    400,
                    "invalid_metadata_filter",
                    format!("metadata filter key {key:?} is not a valid label key"),
                ));
            }
            parsed.labels.push((key.to_string(), value));
        } else if name.starts_with("metadata") {
            return Err(V2Error::new(
                400,
                "invalid_metadata_filter",
                "filter by labels as metadata[<key>]=<value>",
            ));
        }
    }
    if parsed.labels.len() > MAX_LABELS {
        return Err(V2Error::new(
            400,
            "invalid_metadata_filter",
            format!("at most {MAX_LABELS} metadata filters"),
        ));
    }
    Ok(parsed)
}

fn cursor_of(job: &Job) -> String {
    format!("c{}_{}", job.times_unix_ms().0, job.id())
}

fn parse_cursor(text: &str) -> Option<(u64, String)> {
    let (ms, id) = text.strip_prefix('c')?.split_once('_')?;
    Some((ms.parse().ok()?, JobId::parse(id)?.as_str().to_string()))
}

/// One page of jobs, newest first.
fn page(app: &App, query: &str) -> Result<Value, V2Error> {
    let query = parse_query(query)?;
    let mut jobs = app.jobs.all();
    jobs.sort_by_cached_key(|job| {
        std::cmp::Reverse((job.times_unix_ms().0, job.id().as_str().to_string()))
    });
    let mut items = Vec::new();
    let mut last: Option<Arc<Job>> = None;
    let mut next = None;
    for job in jobs {
        if let Some((ms, id)) = &query.after {
            let here = (job.times_unix_ms().0, job.id().as_str().to_string());
            if here >= (*ms, id.clone()) {
                continue;
            }
        }
        let labels = &job.options().labels;
        if !query
            .labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
        {
            continue;
        }
        if let Some(statuses) = &query.statuses {
            let status = view::status_of(&job, &job.state());
            if !statuses.iter().any(|s| s == status) {
                continue;
            }
        }
        if items.len() == query.limit {
            next = last.as_deref().map(cursor_of);
            break;
        }
        // Only the page's jobs are rendered whole.
        let mut item = view::job(app, &job);
        let (created, started, finished) = job.times_unix_ms();
        let updated = finished.or(started).unwrap_or(created);
        item["create_time"] = item["created_at"].clone();
        item["update_time"] = json!(crate::timestamp::rfc3339_from_unix_millis(updated));
        items.push(item);
        last = Some(job);
    }
    let mut body = json!({ "jobs": items });
    if let Some(cursor) = next {
        body["next_cursor"] = json!(cursor);
    }
    Ok(body)
}

/// `GET /api/v2/jobs/{id}`.
pub fn get(app: &Arc<App>, request: Request, call: &Call<'_>) {
    match find(app, call.param(0)) {
        Ok(job) => respond(request, 200, &view::job(app, &job), Vec::new()),
        Err(error) => respond_error(request, &error),
    }
}

/// `GET /api/v2/jobs/{id}/workflow`: the API-format graph the job ran (`format: "api"`).
pub fn workflow(app: &Arc<App>, request: Request, call: &Call<'_>) {
    let job = match find(app, call.param(0)) {
        Ok(job) => job,
        Err(error) => return respond_error(request, &error),
    };
    let graph = match &job.plan().source {
        GraphSource::Raw(graph) => Some(graph.clone()),
        GraphSource::Template { .. } => job.plan().build_graph(&app.templates, &[]).ok(),
    };
    match graph {
        Some(graph) => respond(
            request,
            200,
            &json!({ "workflow": graph, "format": "api" }),
            Vec::new(),
        ),
        None => respond_error(
            request,
            &V2Error::not_found(format!("the workflow of job {}", job.id())),
        ),
    }
}

/// `POST /api/v2/jobs/{id}/cancel`: a waiting job is canceled at once; a running one is
/// `canceling` until its ComfyUI stops it; a finished one is answered as it is.
pub fn cancel(app: &Arc<App>, request: Request, call: &Call<'_>) {
    let job = match find(app, call.param(0)) {
        Ok(job) => job,
        Err(error) => return respond_error(request, &error),
    };
    match engine(app) {
        Ok(engine) => {
            engine.cancel(&job);
        }
        Err(error) => return respond_error(request, &error),
    }
    respond(request, 200, &view::job(app, &job), Vec::new());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_query_reads_what_the_sdk_sends() {
        let q = parse_query(
            "metadata%5Bclient%5D=acme&metadata%5Brun%5D=7&limit=2&status=queued,running",
        )
        .expect("valid");
        assert_eq!(
            q.labels,
            vec![
                ("client".to_string(), "acme".to_string()),
                ("run".to_string(), "7".to_string())
            ]
        );
        assert_eq!(q.limit, 2);
        assert_eq!(
            q.statuses,
            Some(vec!["queued".to_string(), "running".to_string()])
        );
        assert_eq!(
            parse_query("limit=0").err().map(|e| e.code),
            Some("invalid_request")
        );
        assert_eq!(
            parse_query("cursor=zz").err().map(|e| e.code),
            Some("invalid_cursor")
        );
        assert_eq!(
            parse_query("status=done").err().map(|e| e.code),
            Some("invalid_request")
        );
        assert_eq!(
            parse_query("metadata%5B%5D=x").err().map(|e| e.code),
            Some("invalid_metadata_filter")
        );
    }

    #[test]
    fn labels_are_bounded_string_maps() {
        assert!(labels(&json!({"client": "acme", "run.id": "7"})).is_ok());
        for bad in [
            json!("x"),
            json!({"k": 1}),
            json!({"": "v"}),
            json!({"a b": "v"}),
        ] {
            assert_eq!(labels(&bad).err().map(|e| e.code), Some("metadata_invalid"));
        }
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert_eq!(
            labels(&Value::Object(many)).err().map(|e| e.code),
            Some("metadata_invalid")
        );
    }

    #[test]
    fn the_body_is_checked_field_by_field() {
        let ui = json!({"workflow": {"nodes": [], "links": []}});
        assert_eq!(parse(ui).err().map(|e| e.code), Some("workflow_format_ui"));
        assert_eq!(
            parse(json!({})).err().map(|e| e.code),
            Some("invalid_workflow")
        );
        let wf = json!({"1": {"class_type": "A", "inputs": {}}});
        assert_eq!(
            parse(json!({"workflow": wf, "priority": "high"}))
                .err()
                .map(|e| e.code),
            Some("invalid_request")
        );
        assert_eq!(
            parse(json!({"workflow": wf, "extra_data": {}}))
                .err()
                .map(|e| e.code),
            Some("invalid_request")
        );
        let ok =
            parse(json!({"workflow": wf, "priority": 5, "extra_data": {"api_key_comfy_org": "k"}}))
                .expect("valid");
        assert_eq!(ok.priority, 5);
        assert!(ok.extra_data.is_some());
    }
}
