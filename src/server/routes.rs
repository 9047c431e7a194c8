//! Routing and the endpoint handlers of the HTTP API the README documents.

use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiny_http::{Request, Response, StatusCode};

use super::{FrontDoor, auth, framing, reply, socket};
use crate::api::{ApiError, ErrorCode, GenerateRequest, JobRequest};
use crate::app::App;
use crate::ids::JobId;
use crate::job::{Engine, Job, JobState};
use crate::metrics::Gauges;
use crate::sse::SseWriter;

/// The longest `DELETE /jobs/{id}` waits for the job to end before answering its current state.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// The web page served at `GET /`, built into the binary so it needs no files beside it.
const PAGE: &str = include_str!("page.html");

/// What an endpoint answers with, for the OpenAPI document: each names one documented body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// The web page (`text/html`).
    Page,
    /// This API's OpenAPI document.
    OpenApi,
    /// `{"status": "ok"}`.
    Health,
    /// `{"status": "ready" | "not_ready", "reasons": [...]}`.
    Ready,
    /// Prometheus text.
    Metrics,
    /// `{"default", "workflows": [template schema...]}`.
    WorkflowList,
    /// One template's schema.
    Workflow,
    /// `{"backends": {url: null | reason}}` after re-reading `/object_info`.
    Refreshed,
    /// A generation request: template parameters and common fields, or a raw graph.
    GenerateRequest,
    /// The job's events as Server-Sent Events (or the `complete` data as JSON).
    Events,
    /// `{"job_id", "status_url", "events_url"}`.
    JobCreated,
    /// `GET /jobs/{id}`'s snapshot.
    Job,
    /// A stored image file.
    Image,
}

/// One method on one path: what dispatch calls, and what the OpenAPI document describes.
///
/// Adding an endpoint is adding one row to [`ENDPOINTS`]; the OpenAPI document and its drift
/// test pick it up from there.
pub struct Endpoint {
    /// `GET`, `POST`, `DELETE`...
    pub method: &'static str,
    /// The path, with `{name}` for each variable segment.
    pub path: &'static str,
    /// A stable name for generated clients (`getJob`).
    pub operation_id: &'static str,
    /// One line for people.
    pub summary: &'static str,
    /// Whether it answers without an API key (when `API_KEYS` is set).
    pub public: bool,
    /// The request body it reads, if any.
    pub request: Option<Body>,
    /// The non-error answers: status and body.
    pub answers: &'static [(u16, Body)],
    /// The error codes it can answer with (401 `unauthorized` is implied unless `public`).
    pub errors: &'static [ErrorCode],
    handler: fn(&Arc<App>, Request, &Call<'_>),
}

impl Endpoint {
    /// Every error code it can answer with, `unauthorized` included unless it is public.
    pub fn error_codes(&self) -> Vec<ErrorCode> {
        let mut codes = self.errors.to_vec();
        if !self.public && !codes.contains(&ErrorCode::Unauthorized) {
            codes.push(ErrorCode::Unauthorized);
        }
        codes
    }

    /// Every status it can answer with, sorted: its answers' and its error codes'.
    pub fn statuses(&self) -> Vec<u16> {
        let mut statuses: Vec<u16> = self.answers.iter().map(|(status, _)| *status).collect();
        statuses.extend(self.error_codes().iter().map(|code| code.http_status()));
        statuses.sort_unstable();
        statuses.dedup();
        statuses
    }

    /// Whether it answers `method`: its own, or a HEAD mirroring its GET (tiny_http leaves the
    /// body out). Event streams are written by hand, body and all, so they answer GET only.
    fn serves(&self, method: &str) -> bool {
        self.method == method
            || (method == "HEAD"
                && self.method == "GET"
                && !self.answers.iter().any(|(_, body)| *body == Body::Events))
    }

    /// The values of the path's `{variables}` if `path` matches, in order.
    fn matches(&self, path: &str) -> Option<Vec<String>> {
        let want = self.path.split('/').filter(|s| !s.is_empty());
        let got: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if want.clone().count() != got.len() {
            return None;
        }
        let mut values = Vec::new();
        for (pattern, segment) in want.zip(&got) {
            if pattern.starts_with('{') {
                values.push(segment.to_string());
            } else if pattern != *segment {
                return None;
            }
        }
        Some(values)
    }
}

/// What a handler learns of its request besides the request itself.
struct Call<'a> {
    /// The path's `{variables}`, in order.
    params: Vec<String>,
    /// The query string, without `?`.
    query: String,
    /// The front door, for refusals that must also close the connection.
    door: &'a FrontDoor,
}

impl Call<'_> {
    fn param(&self, index: usize) -> &str {
        self.params.get(index).map_or("", String::as_str)
    }
}

/// Errors of every request that starts a job.
const START_ERRORS: [ErrorCode; 9] = [
    ErrorCode::InvalidJson,
    ErrorCode::InvalidParams,
    ErrorCode::InvalidWorkflow,
    ErrorCode::UnknownWorkflow,
    ErrorCode::PayloadTooLarge,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::Overloaded,
    ErrorCode::ComfyuiUnavailable,
    ErrorCode::ComfyuiRejected,
];

/// Codes the router answers for any path: an unknown path, a known path with another method;
/// and what the front door answers before routing: ambiguous framing, a declared body over the
/// limit (413, or 417 to `Expect: 100-continue`), and too many connections at once.
pub const ROUTER_ERRORS: [ErrorCode; 6] = [
    ErrorCode::NotFound,
    ErrorCode::MethodNotAllowed,
    ErrorCode::MalformedRequest,
    ErrorCode::PayloadTooLarge,
    ErrorCode::ExpectationFailed,
    ErrorCode::TooManyConnections,
];

/// Every endpoint of the gateway: dispatch walks this table, and so does the OpenAPI document.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "GET",
        path: "/",
        operation_id: "getPage",
        summary: "The web page: pick a workflow, fill its form, watch the job",
        public: true,
        request: None,
        answers: &[(200, Body::Page)],
        errors: &[],
        handler: |_, request, _| page(request),
    },
    Endpoint {
        method: "GET",
        path: "/openapi.json",
        operation_id: "getOpenApi",
        summary: "This document: every endpoint, event and error, and each template's parameters",
        public: false,
        request: None,
        answers: &[(200, Body::OpenApi)],
        errors: &[],
        handler: |app, request, _| reply::json(request, 200, &crate::openapi::document(app)),
    },
    Endpoint {
        method: "GET",
        path: "/health",
        operation_id: "getHealth",
        summary: "Whether the process serves (never needs a key)",
        public: true,
        request: None,
        answers: &[(200, Body::Health)],
        errors: &[],
        handler: |_, request, _| reply::json(request, 200, &json!({ "status": "ok" })),
    },
    Endpoint {
        method: "GET",
        path: "/ready",
        operation_id: "getReady",
        summary: "Whether a ComfyUI answers and storage is usable",
        public: false,
        request: None,
        answers: &[(200, Body::Ready), (503, Body::Ready)],
        errors: &[],
        handler: |app, request, _| ready(app, request),
    },
    Endpoint {
        method: "GET",
        path: "/metrics",
        operation_id: "getMetrics",
        summary: "Prometheus metrics",
        public: false,
        request: None,
        answers: &[(200, Body::Metrics)],
        errors: &[],
        handler: |app, request, _| metrics(app, request),
    },
    Endpoint {
        method: "GET",
        path: "/workflows",
        operation_id: "listWorkflows",
        summary: "The workflow templates with their parameter schemas",
        public: false,
        request: None,
        answers: &[(200, Body::WorkflowList)],
        errors: &[],
        handler: |app, request, _| workflows(app, request),
    },
    Endpoint {
        method: "POST",
        path: "/workflows/refresh",
        operation_id: "refreshWorkflowChoices",
        summary: "Read the installed models (ComfyUI's /object_info) of every backend again",
        public: false,
        request: None,
        answers: &[(200, Body::Refreshed)],
        errors: &[],
        handler: |app, request, _| refresh(app, request),
    },
    Endpoint {
        method: "GET",
        path: "/workflows/{name}",
        operation_id: "getWorkflow",
        summary: "One template's parameter schema, with the installed choices",
        public: false,
        request: None,
        answers: &[(200, Body::Workflow)],
        errors: &[ErrorCode::UnknownWorkflow],
        handler: |app, request, call| workflow(app, request, call.param(0)),
    },
    Endpoint {
        method: "POST",
        path: "/generate",
        operation_id: "generate",
        summary: "Run a job and stream its events (or, with Accept: application/json, wait for its result)",
        public: false,
        request: Some(Body::GenerateRequest),
        answers: &[(200, Body::Events)],
        errors: &[
            START_ERRORS[0],
            START_ERRORS[1],
            START_ERRORS[2],
            START_ERRORS[3],
            START_ERRORS[4],
            START_ERRORS[5],
            START_ERRORS[6],
            START_ERRORS[7],
            START_ERRORS[8],
            // After the job started, JSON answers carry the job's error with its status.
            ErrorCode::ExecutionFailed,
            ErrorCode::ComfyuiLost,
            ErrorCode::ComfyuiError,
            ErrorCode::Timeout,
            ErrorCode::StorageFailed,
            ErrorCode::Cancelled,
            ErrorCode::Internal,
        ],
        handler: |app, request, call| generate(app, call.door, request),
    },
    Endpoint {
        method: "POST",
        path: "/jobs",
        operation_id: "createJob",
        summary: "Start a job that runs without a client attached",
        public: false,
        request: Some(Body::GenerateRequest),
        answers: &[(202, Body::JobCreated)],
        errors: &START_ERRORS,
        handler: |app, request, call| create_job(app, call.door, request),
    },
    Endpoint {
        method: "GET",
        path: "/jobs/{id}",
        operation_id: "getJob",
        summary: "A job's state, progress, result or error",
        public: false,
        request: None,
        answers: &[(200, Body::Job)],
        errors: &[ErrorCode::NotFound],
        handler: |app, request, call| get_job(app, request, call.param(0)),
    },
    Endpoint {
        method: "DELETE",
        path: "/jobs/{id}",
        operation_id: "cancelJob",
        summary: "Cancel a job; answers the job once it ended (waits up to 30 s)",
        public: false,
        request: None,
        answers: &[(200, Body::Job)],
        errors: &[ErrorCode::NotFound],
        handler: |app, request, call| cancel_job(app, request, call.param(0)),
    },
    Endpoint {
        method: "GET",
        path: "/jobs/{id}/events",
        operation_id: "getJobEvents",
        summary: "Replay a job's events after Last-Event-ID, then follow it live",
        public: false,
        request: None,
        answers: &[(200, Body::Events)],
        errors: &[ErrorCode::NotFound],
        handler: |app, request, call| {
            job_events(app, call.door, request, call.param(0), &call.query)
        },
    },
    Endpoint {
        method: "GET",
        path: "/images/{job_id}/{file}",
        operation_id: "getImage",
        summary: "A stored image (local storage only; immutable)",
        public: false,
        request: None,
        answers: &[(200, Body::Image)],
        errors: &[ErrorCode::NotFound],
        handler: |app, request, call| {
            image(
                app,
                request,
                &format!("{}/{}", call.param(0), call.param(1)),
            );
        },
    },
];

/// The endpoints whose path matches, with the path's variables.
fn route(path: &str) -> Vec<(&'static Endpoint, Vec<String>)> {
    ENDPOINTS
        .iter()
        .filter_map(|endpoint| Some((endpoint, endpoint.matches(path)?)))
        .collect()
}

/// Answers one request, on its own thread.
///
/// In this order (once the requests before it on its connection are done, and only if that
/// connection is still open: see `server::connections`): ambiguous framing and declared bodies
/// over the limit are refused and the connection closed; then the API key (everything
/// but `GET /` and `GET /health` needs it, so that 404 and 405 tell nothing to a client without
/// one); then the route and the method.
pub fn handle(app: &Arc<App>, door: &FrontDoor, request: Request) {
    let method = request.method().clone();
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    log::info!("{} {method} {path}", door.client_address(&request));
    let limit = crate::server::v2::body_limit(&app.config, method.as_str(), path);
    if let Err(error) = framing::check(&request, limit) {
        return door.refuse(request, &error, &[]);
    }
    // Comfy API v2 has its own router, key check and error vocabulary.
    if crate::server::v2::owns(path) {
        return crate::server::v2::handle(app, door, request, path, query);
    }
    let matching = route(path);
    // The page and /health hold no data (the page asks for the key itself), so they answer
    // without one.
    let open = matching
        .iter()
        .any(|(endpoint, _)| endpoint.public && endpoint.serves(method.as_str()));
    if !open {
        if let Err(error) = auth::check(&request, &app.config.api_keys) {
            return reply::error(request, &error);
        }
    }
    if matching.is_empty() {
        return reply::error(request, &ApiError::not_found(path));
    }
    let Some((endpoint, params)) = matching
        .iter()
        .find(|(endpoint, _)| endpoint.serves(method.as_str()))
    else {
        let mut allow: Vec<&str> = matching.iter().map(|(e, _)| e.method).collect();
        allow.dedup();
        let error = ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("{path} answers {}, not {method}", allow.join(", ")),
        );
        let headers = vec![reply::header("Allow", &allow.join(", "))];
        return reply::json_with(request, 405, &error.to_body(), headers);
    };
    let call = Call {
        params: params.clone(),
        query: query.to_string(),
        door,
    };
    (endpoint.handler)(app, request, &call);
}

/// Answers an error that happened before a job existed; a body found too large while reading
/// it also ends the connection, since the rest of it is not read.
fn refuse(door: &FrontDoor, request: Request, error: &ApiError) {
    if error.code == ErrorCode::PayloadTooLarge {
        door.refuse(request, error, &[]);
    } else {
        reply::error(request, error);
    }
}

/// The page: one self-contained HTML file; every call it makes carries the key typed into it.
fn page(request: Request) {
    let response = Response::from_string(PAGE)
        .with_header(reply::header("Content-Type", "text/html; charset=utf-8"))
        .with_header(reply::header("Cache-Control", "no-cache"))
        .with_header(reply::header("X-Content-Type-Options", "nosniff"))
        .with_header(reply::header("Referrer-Policy", "no-referrer"))
        // The page loads nothing from elsewhere and talks only to this gateway; images, videos
        // and sounds may come from Supabase (any https origin) or be fetched into blob: URLs
        // when a key is needed; live previews arrive as data: URLs.
        .with_header(reply::header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data: blob: https: http:; \
             media-src 'self' blob: https: http:; \
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
    let warm_problems = app
        .warmup
        .as_ref()
        .map(|w| w.problems())
        .unwrap_or_default();
    let warmed_up = warm_problems.is_empty();
    reasons.extend(warm_problems);
    let status = if comfyui_ok && storage_ok && warmed_up {
        200
    } else {
        503
    };
    let state = if status == 200 { "ready" } else { "not_ready" };
    reply::json(
        request,
        status,
        &json!({ "status": state, "reasons": reasons }),
    );
}

fn metrics(app: &App, request: Request) {
    let gauges = Gauges {
        active_jobs: app.jobs.active(),
        queued_jobs: app.engine().map_or(0, |engine| engine.waiting()),
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
        .map(|template| app.installed.schema(template))
        .collect();
    let body = json!({ "default": app.config.default_workflow, "workflows": list });
    reply::json(request, 200, &body);
}

fn workflow(app: &App, request: Request, name: &str) {
    match app.templates.get(name) {
        Some(template) => reply::json(request, 200, &app.installed.schema(template)),
        None => reply::error(
            request,
            &ApiError::new(
                ErrorCode::UnknownWorkflow,
                format!("no workflow template is named {name:?}"),
            ),
        ),
    }
}

/// `POST /workflows/refresh`: reads every backend's `/object_info` again.
fn refresh(app: &App, request: Request) {
    let backends = app.installed.refresh_all();
    reply::json(request, 200, &json!({ "backends": backends }));
}

/// Refuses a template request naming a combo value (a model...) that is not installed, listing
/// the installed ones, together with every other bad parameter.
fn check_installed(app: &App, request: &JobRequest) -> Result<(), ApiError> {
    let GenerateRequest::Template { workflow, params } = &request.generate else {
        return Ok(());
    };
    let Some(template) = app.templates.get(workflow) else {
        return Ok(()); // unknown_workflow, from the job code
    };
    let Err((mut errors, installed)) = app.installed.check(template, params) else {
        return Ok(());
    };
    if let Err(others) = template.resolve(params) {
        for (field, message) in others.0 {
            errors.insert(field, message);
        }
    }
    let mut details = errors.to_details();
    details["installed"] = json!(installed);
    Err(
        ApiError::new(ErrorCode::InvalidParams, format!("{workflow}: {errors}"))
            .with_details(details),
    )
}

/// Reads, parses and submits a generation request; the job exists once this returns `Ok`.
fn start(app: &Arc<App>, request: &mut Request) -> Result<Arc<Job>, ApiError> {
    let body = reply::read_json_body(request, app.config.max_body_bytes)?;
    let claims = |workflow: &str, field: &str| {
        app.templates
            .get(workflow)
            .is_some_and(|t| t.parameters.contains_key(field))
    };
    let parsed = JobRequest::parse_for(&body, &app.config.default_workflow, &claims)?;
    check_installed(app, &parsed)?;
    let events = app.webhooks.sink_for(parsed.options.webhook.clone())?;
    engine(app)?.submit(parsed, events)
}

/// The job engine; it runs from the moment the server serves.
fn engine(app: &App) -> Result<&Arc<Engine>, ApiError> {
    app.engine()
        .ok_or_else(|| ApiError::internal("the job engine has not started"))
}

/// The job as `GET /jobs/{id}` shows it, with its place in the gateway's queue.
fn job_json(app: &App, job: &Job) -> Value {
    let position = app
        .engine()
        .and_then(|engine| engine.queue_position(job.id()));
    job.to_json(position)
}

fn wants_json(request: &Request) -> bool {
    reply::header_value(request, "Accept").is_some_and(|accept| {
        accept.contains("application/json") && !accept.contains("text/event-stream")
    })
}

fn generate(app: &Arc<App>, door: &FrontDoor, mut request: Request) {
    let job = match start(app, &mut request) {
        Ok(job) => job,
        Err(error) => return refuse(door, request, &error),
    };
    if wants_json(&request) {
        answer_when_finished(door, request, &job);
    } else {
        stream(app, door, request, &job, 0);
    }
}

/// How often a JSON waiter looks whether its client is still there.
const CLIENT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Waits for the job to end and answers its outcome as JSON (`Accept: application/json`).
///
/// A client that goes away meanwhile is noticed within [`CLIENT_CHECK_EVERY`]: the thread
/// lets go of the request (the job goes on, and can be looked up by its id).
fn answer_when_finished(door: &FrontDoor, request: Request, job: &Job) {
    let peer = request.remote_addr().copied();
    while !job.wait_until_finished(Some(Instant::now() + CLIENT_CHECK_EVERY)) {
        let gone = peer.and_then(|peer| socket::client_has_gone(peer, door.port));
        if gone == Some(true) {
            log::info!(
                "job {}: the client waiting for its result left; the job goes on",
                job.id()
            );
            return door.close(peer);
        }
    }
    let _deadline = door.write_deadline(peer);
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

/// Writes the job's events after `last_seen` as SSE, live, until its terminal event, then
/// closes the connection (the answer says `Connection: close`).
///
/// A client that disconnects only ends this stream: the job goes on and can be re-attached.
/// Each write must be done within `IDLE_TIMEOUT_SECS` (`FrontDoor::write_deadline`), so a
/// client that stops reading cannot hold the thread, whatever the size of the event.
fn stream(app: &App, door: &FrontDoor, request: Request, job: &Job, last_seen: u64) {
    let peer = request.remote_addr().copied();
    write_stream(app, door, request, job, last_seen);
    door.close(peer);
}

fn write_stream(app: &App, door: &FrontDoor, request: Request, job: &Job, last_seen: u64) {
    let _open = app.metrics.sse_stream();
    let peer = request.remote_addr().copied();
    let subscription = job.subscribe(last_seen);
    let writer = door.deadline_writer(request.into_writer(), peer);
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

fn create_job(app: &Arc<App>, door: &FrontDoor, mut request: Request) {
    let job = match start(app, &mut request) {
        Ok(job) => job,
        Err(error) => return refuse(door, request, &error),
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
        Ok(job) => reply::json(request, 200, &job_json(app, &job)),
        Err(error) => reply::error(request, &error),
    }
}

fn cancel_job(app: &App, request: Request, id: &str) {
    let job = match find_job(app, id) {
        Ok(job) => job,
        Err(error) => return reply::error(request, &error),
    };
    let cancelling = match engine(app) {
        Ok(engine) => engine.cancel(&job),
        Err(error) => return reply::error(request, &error),
    };
    if cancelling {
        // A waiting job ends at once; one on a backend ends when its monitor has stopped the
        // prompt (within its poll interval). Wait, bounded (it may be busy storing), so the
        // answer says how the job really ended.
        job.wait_until_finished(Some(Instant::now() + CANCEL_WAIT));
    }
    reply::json(request, 200, &job_json(app, &job));
}

fn job_events(app: &App, door: &FrontDoor, request: Request, id: &str, query: &str) {
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
    stream(app, door, request, &job, last_seen);
}

fn image(app: &App, request: Request, key: &str) {
    let Some(path) = app.local.as_ref().and_then(|local| local.image_path(key)) else {
        return reply::error(request, &ApiError::not_found(format!("image {key}")));
    };
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(_) => return reply::error(request, &ApiError::not_found(format!("image {key}"))),
    };
    // Any stored kind (PNG, MP4, WAV, GLB...), typed by its key's extension; never as a page.
    let content_type = crate::image::content_type_for(key);
    let response = Response::from_file(file)
        .with_status_code(StatusCode(200))
        .with_header(reply::header("Content-Type", content_type))
        .with_header(reply::header("X-Content-Type-Options", "nosniff"))
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

    fn only(path: &str) -> Vec<(&'static str, Vec<String>)> {
        route(path)
            .into_iter()
            .map(|(endpoint, params)| (endpoint.method, params))
            .collect()
    }

    #[test]
    fn routes_parse() {
        assert_eq!(only("/"), [("GET", vec![])]);
        assert_eq!(only("/health"), [("GET", vec![])]);
        assert_eq!(only("/jobs/abc/events"), [("GET", vec!["abc".to_string()])]);
        assert_eq!(
            only("/images/j/0.png"),
            [("GET", vec!["j".to_string(), "0.png".to_string()])]
        );
        let job: Vec<&str> = only("/jobs/x").iter().map(|(m, _)| *m).collect();
        assert_eq!(job, ["GET", "DELETE"]);
        assert!(route("/nope").is_empty());
        assert!(route("/jobs/a/b").is_empty());
        // A template may be called "refresh": GET reads it, POST refreshes the choices.
        let refresh: Vec<&str> = only("/workflows/refresh").iter().map(|(m, _)| *m).collect();
        assert_eq!(refresh, ["POST", "GET"]);
    }

    #[test]
    fn the_table_has_one_row_per_method_and_path() {
        let mut seen = std::collections::HashSet::new();
        for endpoint in ENDPOINTS {
            assert!(
                seen.insert((endpoint.method, endpoint.path)),
                "{} {} twice",
                endpoint.method,
                endpoint.path
            );
            assert!(!endpoint.statuses().is_empty());
        }
        let ids: std::collections::HashSet<_> = ENDPOINTS.iter().map(|e| e.operation_id).collect();
        assert_eq!(ids.len(), ENDPOINTS.len(), "operation ids are unique");
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
