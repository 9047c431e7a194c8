//! Routing and the endpoint handlers of `DESIGN.md`'s HTTP API.

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiny_http::{Method, Request, Response, StatusCode};

use super::{auth, reply};
use crate::api::{ApiError, ErrorCode, JobRequest};
use crate::app::App;
use crate::ids::JobId;
use crate::job::{self, Job, JobState};
use crate::metrics::Gauges;
use crate::sse::SseWriter;

/// The longest `DELETE /jobs/{id}` waits for the job to end before answering its current state.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// The web page served at `GET /`, built into the binary so it needs no files beside it.
const PAGE: &str = include_str!("page.html");

/// What a request's path names.
#[derive(Debug, PartialEq)]
enum Route {
    Page,
    Health,
    Ready,
    Workflows,
    Workflow(String),
    Generate,
    Jobs,
    Job(String),
    JobEvents(String),
    Image(String),
    Metrics,
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        Some(match segments.as_slice() {
            [] => Route::Page,
            ["health"] => Route::Health,
            ["ready"] => Route::Ready,
            ["metrics"] => Route::Metrics,
            ["workflows"] => Route::Workflows,
            ["workflows", name] => Route::Workflow(name.to_string()),
            ["generate"] => Route::Generate,
            ["jobs"] => Route::Jobs,
            ["jobs", id] => Route::Job(id.to_string()),
            ["jobs", id, "events"] => Route::JobEvents(id.to_string()),
            ["images", job, file] => Route::Image(format!("{job}/{file}")),
            _ => return None,
        })
    }

    /// The methods this route answers.
    fn methods(&self) -> &'static [Method] {
        match self {
            Route::Generate | Route::Jobs => &[Method::Post],
            Route::Job(_) => &[Method::Get, Method::Delete],
            _ => &[Method::Get],
        }
    }
}

/// Answers one request, on its own thread.
pub fn handle(app: &Arc<App>, request: Request) {
    let method = request.method().clone();
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    log::debug!("{method} {path}");
    let Some(route) = Route::parse(path) else {
        return reply::error(request, &ApiError::not_found(path));
    };
    let allowed = route.methods();
    if !allowed.contains(&method) {
        let allow: Vec<String> = allowed.iter().map(|m| m.to_string()).collect();
        let error = ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("{path} answers {}, not {method}", allow.join(", ")),
        );
        let headers = vec![reply::header("Allow", &allow.join(", "))];
        return reply::json_with(request, 405, &error.to_body(), headers);
    }
    // The page holds no data and asks for the key itself, so it must load without one.
    if route != Route::Health && route != Route::Page {
        if let Err(error) = auth::check(&request, &app.config.api_keys) {
            return reply::error(request, &error);
        }
    }
    match route {
        Route::Page => page(request),
        Route::Health => reply::json(request, 200, &json!({ "status": "ok" })),
        Route::Ready => ready(app, request),
        Route::Workflows => workflows(app, request),
        Route::Workflow(name) => workflow(app, request, &name),
        Route::Generate => generate(app, request),
        Route::Jobs => create_job(app, request),
        Route::Job(id) if method == Method::Delete => cancel_job(app, request, &id),
        Route::Job(id) => get_job(app, request, &id),
        Route::JobEvents(id) => job_events(app, request, &id, query),
        Route::Image(key) => image(app, request, &key),
        Route::Metrics => metrics(app, request),
    }
}

/// The page: one self-contained HTML file; every call it makes carries the key typed into it.
fn page(request: Request) {
    let response = Response::from_string(PAGE)
        .with_header(reply::header("Content-Type", "text/html; charset=utf-8"))
        .with_header(reply::header("Cache-Control", "no-cache"))
        .with_header(reply::header("X-Content-Type-Options", "nosniff"))
        .with_header(reply::header("Referrer-Policy", "no-referrer"))
        // The page loads nothing from elsewhere and talks only to this gateway; images may come
        // from Supabase (any https origin) or be fetched into blob: URLs when a key is needed.
        .with_header(reply::header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data: blob: https: http:; \
             form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        ));
    if let Err(e) = request.respond(response) {
        log::debug!("client left before the page was sent: {e}");
    }
}

/// 200 when at least one ComfyUI answers and storage is usable; else 503 with every reason.
fn ready(app: &App, request: Request) {
    let mut reasons = Vec::new();
    let mut comfyui_ok = false;
    for client in &app.backends {
        match client.system_stats() {
            Ok(_) => comfyui_ok = true,
            Err(e) => reasons.push(format!("ComfyUI at {}: {e}", client.base_url())),
        }
    }
    let storage_ok = match app.storage.check() {
        Ok(()) => true,
        Err(e) => {
            reasons.push(format!("{} storage: {e}", app.storage.kind()));
            false
        }
    };
    let status = if comfyui_ok && storage_ok { 200 } else { 503 };
    let state = if status == 200 { "ready" } else { "not_ready" };
    reply::json(
        request,
        status,
        &json!({ "status": state, "reasons": reasons }),
    );
}

fn metrics(app: &App, request: Request) {
    let unfinished = app.jobs.unfinished();
    let gauges = Gauges {
        active_jobs: unfinished.len(),
        queued_jobs: unfinished
            .iter()
            .filter(|job| job.state() == JobState::Queued)
            .count(),
        spooled_images: app.spool.image_count(),
    };
    let response = Response::from_string(app.metrics.render(&gauges))
        .with_header(reply::header("Content-Type", "text/plain; version=0.0.4"));
    if let Err(e) = request.respond(response) {
        log::debug!("client left before the metrics were sent: {e}");
    }
}

fn workflows(app: &App, request: Request) {
    let list: Vec<Value> = app
        .templates
        .names()
        .filter_map(|name| app.templates.get(name))
        .map(|template| template.schema())
        .collect();
    let body = json!({ "default": app.config.default_workflow, "workflows": list });
    reply::json(request, 200, &body);
}

fn workflow(app: &App, request: Request, name: &str) {
    match app.templates.get(name) {
        Some(template) => reply::json(request, 200, &template.schema()),
        None => reply::error(
            request,
            &ApiError::new(
                ErrorCode::UnknownWorkflow,
                format!("no workflow template is named {name:?}"),
            ),
        ),
    }
}

/// Reads, parses and submits a generation request; the job exists once this returns `Ok`.
fn start(app: &Arc<App>, request: &mut Request) -> Result<Arc<Job>, ApiError> {
    let body = reply::read_json_body(request, app.config.max_body_bytes)?;
    let request = JobRequest::parse(&body, &app.config.default_workflow)?;
    // TODO(lead, issue 10): `request.options` (priority, previews, output_format, quality) go
    // with the job once the job code carries them; see `job::output` for the conversion.
    job::submit(app, request.generate)
}

fn wants_json(request: &Request) -> bool {
    reply::header_value(request, "Accept").is_some_and(|accept| {
        accept.contains("application/json") && !accept.contains("text/event-stream")
    })
}

fn generate(app: &Arc<App>, mut request: Request) {
    let job = match start(app, &mut request) {
        Ok(job) => job,
        Err(error) => return reply::error(request, &error),
    };
    if wants_json(&request) {
        answer_when_finished(request, &job);
    } else {
        stream(app, request, &job, 0);
    }
}

/// Waits for the job to end and answers its outcome as JSON (`Accept: application/json`).
fn answer_when_finished(request: Request, job: &Job) {
    job.wait_until_finished(None);
    let error = match job.state() {
        JobState::Completed(result) => return reply::json(request, 200, &result),
        JobState::Failed(error) => error,
        JobState::Cancelled => ApiError::new(ErrorCode::Cancelled, "the job was cancelled"),
        unfinished => ApiError::internal(format!(
            "the job stopped being watched while {}",
            unfinished.as_str()
        )),
    };
    reply::error(request, &with_job_id(error, job));
}

/// The error with the job's id added to its details, so a JSON client can still look the job up.
fn with_job_id(mut error: ApiError, job: &Job) -> ApiError {
    if let Some(details) = error.details.as_object_mut() {
        details.insert("job_id".into(), json!(job.id()));
    }
    error
}

/// Writes the job's events after `last_seen` as SSE, live, until its terminal event.
///
/// A client that disconnects only ends this stream: the job goes on and can be re-attached.
fn stream(app: &App, request: Request, job: &Job, last_seen: u64) {
    let _open = app.metrics.sse_stream();
    let subscription = job.subscribe(last_seen);
    let writer = request.into_writer();
    let mut sse = match SseWriter::start(writer, &[("X-Job-Id", job.id().as_str())]) {
        Ok(sse) => sse,
        Err(e) => return log::debug!("job {}: client left before the stream began: {e}", job.id()),
    };
    let live = subscription.live.into_iter().flat_map(|rx| rx.into_iter());
    for event in subscription.replay.into_iter().chain(live) {
        if let Err(e) = sse.send(&event.to_sse()) {
            log::info!(
                "job {}: a client stopped watching ({e}); the job goes on",
                job.id()
            );
            return;
        }
        if event.kind.is_terminal() {
            break;
        }
    }
    let _ = sse.finish();
}

fn create_job(app: &Arc<App>, mut request: Request) {
    let job = match start(app, &mut request) {
        Ok(job) => job,
        Err(error) => return reply::error(request, &error),
    };
    let base = app.config.public_base_url.trim_end_matches('/');
    let status_url = format!("{base}/jobs/{}", job.id());
    let body = json!({
        "job_id": job.id(),
        "status_url": status_url,
        "events_url": format!("{status_url}/events"),
    });
    let headers = vec![reply::header("Location", &status_url)];
    reply::json_with(request, 202, &body, headers);
}

fn find_job(app: &App, id: &str) -> Result<Arc<Job>, ApiError> {
    JobId::parse(id)
        .and_then(|id| app.jobs.get(&id))
        .ok_or_else(|| ApiError::not_found(format!("job {id}")))
}

fn get_job(app: &App, request: Request, id: &str) {
    match find_job(app, id) {
        Ok(job) => reply::json(request, 200, &job.to_json()),
        Err(error) => reply::error(request, &error),
    }
}

fn cancel_job(app: &App, request: Request, id: &str) {
    let job = match find_job(app, id) {
        Ok(job) => job,
        Err(error) => return reply::error(request, &error),
    };
    if job.request_cancel() {
        // The job thread notices within its poll interval; wait (bounded: it may be busy
        // storing) for its end so the answer says how the job really ended.
        job.wait_until_finished(Some(Instant::now() + CANCEL_WAIT));
    }
    reply::json(request, 200, &job.to_json());
}

fn job_events(app: &App, request: Request, id: &str, query: &str) {
    let job = match find_job(app, id) {
        Ok(job) => job,
        Err(error) => return reply::error(request, &error),
    };
    let from_query = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("last_event_id="));
    let last_seen = reply::header_value(&request, "Last-Event-ID")
        .or(from_query)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    stream(app, request, &job, last_seen);
}

fn image(app: &App, request: Request, key: &str) {
    let Some(path) = app.local.as_ref().and_then(|local| local.image_path(key)) else {
        return reply::error(request, &ApiError::not_found(format!("image {key}")));
    };
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(_) => return reply::error(request, &ApiError::not_found(format!("image {key}"))),
    };
    let content_type = crate::image::content_type_for(key);
    let response = Response::from_file(file)
        .with_status_code(StatusCode(200))
        .with_header(reply::header("Content-Type", content_type))
        // Keys are unique per job and images never change once stored.
        .with_header(reply::header(
            "Cache-Control",
            "public, max-age=31536000, immutable",
        ));
    if let Err(e) = request.respond(response) {
        log::debug!("client left during an image download: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        assert_eq!(Route::parse("/"), Some(Route::Page));
        assert_eq!(Route::parse("/health"), Some(Route::Health));
        assert_eq!(
            Route::parse("/jobs/abc/events"),
            Some(Route::JobEvents("abc".into()))
        );
        assert_eq!(
            Route::parse("/images/j/0.png"),
            Some(Route::Image("j/0.png".into()))
        );
        assert_eq!(Route::parse("/nope"), None);
        assert_eq!(Route::parse("/jobs/a/b"), None);
    }

    #[test]
    fn page_is_self_contained() {
        // It must work offline and leak nothing to third parties: no external scripts, styles,
        // fonts or images, and no storage where the API key could outlive the page.
        for needle in [
            "src=\"http",
            "href=\"http",
            "url(",
            "@import",
            "localStorage",
            "sessionStorage",
            "document.cookie",
        ] {
            assert!(!PAGE.contains(needle), "page.html contains {needle:?}");
        }
        // Every call goes through withKey(), and EventSource (which cannot send it) is not used.
        assert!(PAGE.contains("'Bearer ' + apiKey"));
        assert!(!PAGE.contains("new EventSource"));
    }
}
