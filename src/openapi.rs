//! The OpenAPI 3.1 document served at `GET /openapi.json`.
//!
//! Nothing here is written twice: the paths, methods, summaries and statuses come from the
//! router's table ([`ENDPOINTS`]), the error codes and their statuses from [`ErrorCode::ALL`],
//! the request's common fields from [`COMMON_FIELDS`], and each template's parameters from the
//! same schema `GET /workflows/{name}` answers ([`Installed::schema`](crate::workflow::Installed::schema)),
//! installed choices included. The document is built per request, so it shows the templates and
//! models of the moment. What this module adds is prose, shapes of bodies, and examples.

use serde_json::{Map, Value, json};

use crate::api::{COMMON_FIELDS, ErrorCode, OPTIONS_FIELD};
use crate::app::App;
use crate::job::EventKind;
use crate::server::{Body, ENDPOINTS, Endpoint, ROUTER_ERRORS};

/// The SSE events, in the order a stream produces them.
pub const EVENTS: [EventKind; 7] = [
    EventKind::Queued,
    EventKind::Dispatched,
    EventKind::Progress,
    EventKind::Preview,
    EventKind::Complete,
    EventKind::Error,
    EventKind::Cancelled,
];

/// The whole document for this gateway as it is configured now.
pub fn document(app: &App) -> Value {
    let mut paths = Map::new();
    for endpoint in ENDPOINTS {
        let operation = operation(app, endpoint);
        let path = paths
            .entry(endpoint.path.to_string())
            .or_insert_with(|| json!({}));
        path[endpoint.method.to_ascii_lowercase()] = operation;
    }
    // Comfy API v2, from its own router table.
    paths.extend(crate::server::v2::doc::paths());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "comfyui-gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "summary": "ComfyUI behind a small HTTP API with SSE progress",
            "description": DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": app.config.public_base_url.trim_end_matches('/')}],
        "paths": paths,
        "webhooks": webhooks(),
        "components": components(app),
        "x-router-errors": ROUTER_ERRORS.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
    })
}

/// The webhooks a job can send (its request's `webhook`, or `WEBHOOK_URL`): one POST per event,
/// signed per the Standard Webhooks specification.
fn webhooks() -> Value {
    let header = |name: &str, description: &str| {
        json!({"name": name, "in": "header", "required": true,
               "schema": {"type": "string"}, "description": description})
    };
    let bodies: Vec<Value> = EVENTS
        .iter()
        .filter(|kind| !matches!(kind, EventKind::Dispatched | EventKind::Preview))
        .map(|kind| {
            json!({"allOf": [
                {"$ref": format!("#/components/schemas/{}", event_component(*kind))},
                {"type": "object", "required": ["type"],
                 "properties": {"type": {"const": kind.as_str()}}}]})
        })
        .collect();
    json!({
        "jobEvent": {"post": {
            "summary": "One of a job's events (queued, complete, error, cancelled; progress on request)",
            "description": "The body is the matching SSE event's data plus `job_id` and `type`. \
                Delivered at least once: a non-2xx answer or none is retried with exponential \
                backoff and jitter for WEBHOOK_RETRY_HOURS, with the same webhook-id. Verify \
                the signature with any Standard Webhooks library and WEBHOOK_SECRET.",
            "parameters": [
                header("webhook-id", "Stable across the retries of one delivery (msg_...)."),
                header("webhook-timestamp", "Unix seconds of this attempt."),
                header("webhook-signature", "v1, + base64 HMAC-SHA256 of id.timestamp.body."),
            ],
            "requestBody": {"required": true, "content": {"application/json": {
                "schema": {"oneOf": bodies}}}},
            "responses": {"2XX": {"description": "Delivered; anything else is retried."}},
        }},
    })
}

const DESCRIPTION: &str = "Generation requests name a workflow template and its parameters (or \
carry a raw ComfyUI graph); progress arrives as Server-Sent Events. Every error is \
`{\"error\": {\"code\", \"message\", \"details\"}}`; the codes and their statuses are the \
`ErrorCode` schema. Any path answers 404 `not_found` when it does not exist and 405 \
`method_not_allowed` (with an `Allow` header) for a method it does not take. With `API_KEYS` \
set, every endpoint but `/health`, `/api/v2/health` and `/` needs `Authorization: Bearer KEY`. The paths under `/api/v2` are Comfy API v2 (tag `comfy-api-v2`), with that contract's own error envelope and codes (`V2Error`).";

fn operation(app: &App, endpoint: &Endpoint) -> Value {
    let mut op = json!({
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "tags": [tag(endpoint.path)],
        "responses": responses(app, endpoint),
    });
    let parameters = parameters(endpoint);
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    if let Some(body) = endpoint.request {
        op["requestBody"] = request_body(app, body);
    }
    if endpoint.public {
        op["security"] = json!([]);
    } else if !app.config.api_keys.is_empty() {
        op["security"] = json!([{ "bearer": [] }]);
    }
    op
}

fn tag(path: &str) -> &'static str {
    match path.split('/').nth(1).unwrap_or("") {
        "jobs" | "generate" => "jobs",
        "workflows" => "workflows",
        "images" => "images",
        _ => "service",
    }
}

fn parameters(endpoint: &Endpoint) -> Vec<Value> {
    let mut out: Vec<Value> = endpoint
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let description = match name {
                "id" => "The job's id, as `POST /jobs` or the `X-Job-Id` header gave it.",
                "name" => "The template's name.",
                "job_id" => "The job's id.",
                "file" => "The image's file name: its index and extension (`0.png`).",
                _ => "",
            };
            json!({"name": name, "in": "path", "required": true, "description": description,
                   "schema": {"type": "string"}})
        })
        .collect();
    if endpoint.operation_id == "getJobEvents" {
        out.push(json!({"name": "Last-Event-ID", "in": "header", "required": false,
            "description": "Replay only the events after this id (what a reconnecting EventSource sends).",
            "schema": {"type": "integer", "minimum": 0}, "example": 3}));
        out.push(json!({"name": "last_event_id", "in": "query", "required": false,
            "description": "The same as the Last-Event-ID header, for clients that cannot set headers.",
            "schema": {"type": "integer", "minimum": 0}}));
    }
    if endpoint
        .answers
        .iter()
        .any(|(_, body)| *body == Body::Events)
        && endpoint.method == "POST"
    {
        out.push(json!({"name": "Accept", "in": "header", "required": false,
            "description": "`application/json` waits for the job and answers its `complete` data \
                            (or its error) as JSON; anything else streams the events.",
            "schema": {"type": "string"}, "example": "application/json"}));
    }
    out
}

fn request_body(app: &App, body: Body) -> Value {
    match body {
        Body::GenerateRequest => {
            let mut examples = Map::new();
            for template in app.templates.iter() {
                examples.insert(
                    template.name.clone(),
                    json!({"summary": format!("template {}", template.name),
                           "value": template_example(&app.installed.schema(template))}),
                );
            }
            examples.insert(
                "graph".into(),
                json!({"summary": "a raw API-format graph", "value": graph_example()}),
            );
            json!({"required": true, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/GenerateRequest"},
                "examples": examples}}})
        }
        other => json!({"content": {"application/json": {"schema": schema_ref(other)}}}),
    }
}

fn responses(app: &App, endpoint: &Endpoint) -> Value {
    let mut out = Map::new();
    for (status, body) in endpoint.answers {
        out.insert(status.to_string(), answer(app, endpoint, *status, *body));
    }
    let codes = endpoint.error_codes();
    let mut statuses: Vec<u16> = codes.iter().map(|c| c.http_status()).collect();
    statuses.sort_unstable();
    statuses.dedup();
    for status in statuses {
        let here: Vec<ErrorCode> = codes
            .iter()
            .copied()
            .filter(|c| c.http_status() == status)
            .collect();
        out.insert(status.to_string(), error_response(&here));
    }
    Value::Object(out)
}

/// One error status of one operation: the error body with `code` narrowed to these codes.
fn error_response(codes: &[ErrorCode]) -> Value {
    let names: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
    let description: Vec<String> = codes
        .iter()
        .map(|c| format!("`{}`: {}", c.as_str(), c.meaning()))
        .collect();
    let mut examples = Map::new();
    for code in codes {
        examples.insert(
            code.as_str().into(),
            json!({"value": {"error": {"code": code.as_str(), "message": error_message(*code),
                                       "details": error_details(*code)}}}),
        );
    }
    let mut response = json!({
        "description": description.join("; "),
        "content": {"application/json": {
            "schema": {"allOf": [
                {"$ref": "#/components/schemas/Error"},
                {"properties": {"error": {"properties": {"code": {"enum": names}}}}}]},
            "examples": examples}},
    });
    if codes.contains(&ErrorCode::Overloaded) {
        response["headers"] = json!({"Retry-After": {"description": "Seconds to wait.",
                                                      "schema": {"type": "integer"}}});
    }
    if codes.contains(&ErrorCode::Unauthorized) {
        response["headers"] = json!({"WWW-Authenticate": {"schema": {"type": "string"},
                                                           "example": "Bearer"}});
    }
    response
}

fn error_message(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidParams => {
            "txt2img: invalid parameters: steps: must be at most 150 (got 500)"
        }
        ErrorCode::UnknownWorkflow => "no workflow template is named \"txt3img\"",
        ErrorCode::NotFound => "job 0d7c... was not found",
        ErrorCode::Unauthorized => {
            "this gateway needs an API key: send \"Authorization: Bearer KEY\""
        }
        ErrorCode::Overloaded => "64 jobs are already running or queued; retry shortly",
        ErrorCode::ComfyuiUnavailable => {
            "no ComfyUI backend could be reached; is ComfyUI running at COMFYUI_URL?"
        }
        _ => code.meaning(),
    }
}

fn error_details(code: ErrorCode) -> Value {
    match code {
        ErrorCode::InvalidParams => json!({"fields": {"steps": "must be at most 150 (got 500)"}}),
        ErrorCode::ComfyuiUnavailable => json!({"backends": [
            {"url": "http://127.0.0.1:8188", "reason": "connection refused"}]}),
        ErrorCode::StorageFailed => json!({"spool_dir": "./data/spool/0d7c..."}),
        _ => json!({}),
    }
}

fn answer(app: &App, endpoint: &Endpoint, status: u16, body: Body) -> Value {
    let description = match (body, status) {
        (Body::Ready, 503) => {
            "Not ready: no ComfyUI answers or storage is unusable; `reasons` says which"
        }
        (Body::Events, _) if endpoint.method == "POST" => {
            "The job's events as they happen (or, with Accept: application/json, its `complete` data)"
        }
        _ => endpoint.summary,
    };
    let mut out = json!({"description": description, "content": content(app, body, status)});
    if body == Body::JobCreated {
        out["headers"] = json!({"Location": {"description": "The job's status URL.",
                                             "schema": {"type": "string", "format": "uri"}}});
    }
    out
}

fn content(app: &App, body: Body, status: u16) -> Value {
    let json_of = |schema: Value, example: Value| json!({"application/json": {"schema": schema, "example": example}});
    match body {
        Body::Page => json!({"text/html": {"schema": {"type": "string"}}}),
        Body::Metrics => json!({"text/plain": {"schema": {"type": "string"},
            "example": "# TYPE gateway_jobs_total counter\ngateway_jobs_total{state=\"completed\"} 12\n"}}),
        Body::Image => json!({
            "image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}},
            "image/jpeg": {"schema": {"type": "string", "contentMediaType": "image/jpeg"}},
            "image/webp": {"schema": {"type": "string", "contentMediaType": "image/webp"}}}),
        Body::Events => json!({
            "text/event-stream": {
                "schema": {"$ref": "#/components/schemas/SseEvent"},
                "example": SSE_EXAMPLE},
            "application/json": {
                "schema": {"$ref": "#/components/schemas/CompleteEvent"},
                "example": complete_example()}}),
        Body::Ready if status == 503 => json_of(
            schema_ref(body),
            json!({"status": "not_ready", "reasons": ["ComfyUI at http://127.0.0.1:8188: connection refused"]}),
        ),
        Body::Workflow => {
            let example = app
                .templates
                .iter()
                .next()
                .map_or(json!({}), |t| app.installed.schema(t));
            json_of(schema_ref(body), example)
        }
        other => json_of(schema_ref(other), example_of(other)),
    }
}

fn schema_ref(body: Body) -> Value {
    let name = match body {
        Body::Page | Body::Metrics | Body::Image => return json!({"type": "string"}),
        Body::OpenApi => return json!({"type": "object", "description": "This document."}),
        Body::Health => "Health",
        Body::Ready => "Ready",
        Body::WorkflowList => "WorkflowList",
        Body::Workflow => "Workflow",
        Body::Refreshed => "Refreshed",
        Body::GenerateRequest => "GenerateRequest",
        Body::Events => "SseEvent",
        Body::JobCreated => "JobCreated",
        Body::Job => "Job",
    };
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn example_of(body: Body) -> Value {
    let job_id = "8bde9053-c14c-440b-b0d4-1f132f6e48e4";
    match body {
        Body::Health => json!({"status": "ok"}),
        Body::Ready => json!({"status": "ready", "reasons": []}),
        Body::Refreshed => json!({"backends": {"http://127.0.0.1:8188": null,
                                               "http://gpu2:8188": "connection refused"}}),
        Body::JobCreated => json!({"job_id": job_id,
            "status_url": format!("http://127.0.0.1:8000/jobs/{job_id}"),
            "events_url": format!("http://127.0.0.1:8000/jobs/{job_id}/events")}),
        Body::Job => json!({"job_id": job_id, "state": "running", "workflow": "txt2img",
            "created_at": "2026-11-30T05:20:41Z",
            "progress": {"state": "running", "percent": 38.5, "step": 6, "steps": 20,
                         "node": "3", "node_type": "KSampler", "queue_position": 0,
                         "elapsed_ms": 1005},
            "events": 2, "result": null, "error": null}),
        Body::WorkflowList => json!({"default": "txt2img", "workflows": []}),
        _ => Value::Null,
    }
}

const SSE_EXAMPLE: &str = "retry: 2000\n\nid: 1\nevent: queued\ndata: {\"job_id\":\"8bde9053-c14c-440b-b0d4-1f132f6e48e4\",\"prompt_id\":\"8d635014-f2fd-41f3-8f0c-dda82f5ac236\",\"queue_position\":0,\"workflow\":\"txt2img\"}\n\nid: 2\nevent: progress\ndata: {\"elapsed_ms\":1005,\"job_id\":\"8bde9053-c14c-440b-b0d4-1f132f6e48e4\",\"node\":\"3\",\"node_type\":\"KSampler\",\"percent\":38.5,\"queue_position\":0,\"state\":\"running\",\"step\":6,\"steps\":20}\n\n";

fn complete_example() -> Value {
    json!({"job_id": "8bde9053-c14c-440b-b0d4-1f132f6e48e4",
           "prompt_id": "8d635014-f2fd-41f3-8f0c-dda82f5ac236", "workflow": "txt2img",
           "images": [{"bytes": 48913, "content_type": "image/png", "height": 512, "width": 512,
                       "key": "8bde9053-c14c-440b-b0d4-1f132f6e48e4/0.png", "node": "9",
                       "url": "http://127.0.0.1:8000/images/8bde9053-c14c-440b-b0d4-1f132f6e48e4/0.png"}],
           "params": {"prompt": "a red fox", "seed": 42, "steps": 20},
           "timings_ms": {"queued": 3, "running": 3016, "storing": 2, "total": 3022}})
}

fn graph_example() -> Value {
    json!({"graph": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}},
        "output_format": "webp"})
}

/// A request for a template: its required parameters with sample values and `workflow`.
fn template_example(schema: &Value) -> Value {
    let mut out = Map::new();
    out.insert("workflow".into(), schema["name"].clone());
    if let Some(parameters) = schema["parameters"].as_object() {
        for (name, spec) in parameters {
            if spec["required"] != true {
                continue;
            }
            let value = match spec["type"].as_str() {
                Some("image") => json!("data:image/png;base64,iVBORw0KGgo..."),
                Some("integer") => spec.get("min").cloned().unwrap_or(json!(1)),
                Some("number") => spec.get("min").cloned().unwrap_or(json!(1.0)),
                Some("boolean") => json!(true),
                _ => spec["choices"]
                    .get(0)
                    .cloned()
                    .unwrap_or(json!("a red fox in the snow")),
            };
            out.insert(name.clone(), value);
        }
        if parameters.contains_key("seed") {
            out.insert("seed".into(), json!(42));
        }
    }
    Value::Object(out)
}

/// One template parameter, from its `GET /workflows/{name}` entry to JSON Schema.
pub fn parameter_schema(spec: &Value) -> Value {
    let mut out = Map::new();
    let kind = spec["type"].as_str().unwrap_or("string");
    let mut description = spec["description"].as_str().unwrap_or_default().to_string();
    match kind {
        "image" => {
            out.insert("type".into(), "string".into());
            out.insert("contentEncoding".into(), "base64".into());
            description.push_str(" A base64 PNG, JPEG or WebP, optionally as a data: URL.");
        }
        other => _ = out.insert("type".into(), other.into()),
    }
    for (from, to) in [
        ("min", "minimum"),
        ("max", "maximum"),
        ("multiple_of", "multipleOf"),
    ] {
        if let Some(n) = spec.get(from) {
            out.insert(to.into(), n.clone());
        }
    }
    match spec.get("default") {
        Some(Value::String(random)) if random == "random" && kind == "integer" => {
            description.push_str(" Drawn at random when left out (reported in the result).");
        }
        Some(default) => _ = out.insert("default".into(), default.clone()),
        None => {}
    }
    match spec.get("choices").and_then(Value::as_array) {
        // The installed values replace the template's own list (they are already narrowed by it).
        Some(choices) if !choices.is_empty() => {
            out.insert("enum".into(), Value::Array(choices.clone()));
            description.push_str(" Installed on every ComfyUI backend.");
        }
        _ => {
            if let Some(values) = spec.get("enum") {
                out.insert("enum".into(), values.clone());
            }
        }
    }
    for key in ["partial_choices", "choices_unavailable"] {
        if let Some(value) = spec.get(key) {
            out.insert(format!("x-{}", key.replace('_', "-")), value.clone());
        }
    }
    if let Some(note) = spec["choices_note"].as_str() {
        description.push(' ');
        description.push_str(note);
    }
    out.insert("description".into(), description.trim().into());
    Value::Object(out)
}

/// The `options` object: every common field, in a spelling no template parameter can take.
fn options_schema() -> Value {
    let fields: Map<String, Value> = COMMON_FIELDS
        .iter()
        .map(|field| (field.name.to_string(), (field.schema)()))
        .collect();
    json!({"type": "object", "additionalProperties": false, "properties": fields,
           "description": "The gateway's own fields (also accepted at top level, unless the \
                           template has a parameter of the same name, such as `quality` for \
                           a SaveAudioMP3 node: then only here). A field may be given here or \
                           at top level, not both.",
           "examples": [{"output_format": "jpeg", "quality": 85}]})
}

/// A template's request body: `workflow` set to its name, its parameters, the common fields.
pub fn template_request_schema(schema: &Value) -> Value {
    let name = schema["name"].as_str().unwrap_or_default();
    let mut properties = Map::new();
    properties.insert(
        "workflow".into(),
        json!({"type": "string", "const": name,
               "description": "The template (when left out: DEFAULT_WORKFLOW)."}),
    );
    let mut required = vec![Value::from("workflow")];
    if let Some(parameters) = schema["parameters"].as_object() {
        for (param, spec) in parameters {
            properties.insert(param.clone(), parameter_schema(spec));
            if spec["required"] == true {
                required.push(param.clone().into());
            }
        }
    }
    for field in COMMON_FIELDS {
        // A parameter of the template's own with that name keeps it: the gateway's field is
        // then given in `options` only.
        if !properties.contains_key(field.name) {
            properties.insert(field.name.into(), (field.schema)());
        }
    }
    properties.insert(OPTIONS_FIELD.into(), options_schema());
    let mut out = json!({
        "title": name,
        "type": "object",
        "description": schema["description"],
        "properties": properties,
        "required": required,
        "additionalProperties": false,
        "example": template_example(schema),
    });
    for key in ["choices_unavailable", "choices_note"] {
        if let Some(value) = schema.get(key) {
            out[format!("x-{}", key.replace('_', "-"))] = value.clone();
        }
    }
    out
}

/// The schema component name of a template's request.
pub fn template_component(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("Workflow_{safe}")
}

fn components(app: &App) -> Value {
    let mut schemas = Map::new();
    let mut mapping = Map::new();
    let mut variants = Vec::new();
    for template in app.templates.iter() {
        let component = template_component(&template.name);
        let reference = format!("#/components/schemas/{component}");
        schemas.insert(
            component,
            template_request_schema(&app.installed.schema(template)),
        );
        mapping.insert(template.name.clone(), reference.clone().into());
        variants.push(json!({ "$ref": reference }));
    }
    let mut common = Map::new();
    for field in COMMON_FIELDS {
        common.insert(field.name.into(), (field.schema)());
    }
    let mut graph_properties = common.clone();
    graph_properties.insert(OPTIONS_FIELD.into(), options_schema());
    graph_properties.insert(
        "graph".into(),
        json!({"oneOf": [
            {"type": "object", "description": "A ComfyUI API-format graph: node id → node.",
             "additionalProperties": {"type": "object", "required": ["class_type", "inputs"],
                 "properties": {"class_type": {"type": "string"}, "inputs": {"type": "object"}}}},
            {"type": "object", "required": ["nodes"],
             "description": "A workflow as ComfyUI saves it (the UI format), converted to the API \
                 format with the backends' node definitions before it is queued.",
             "properties": {"nodes": {"type": "array"}, "links": {"type": "array"}}}]}),
    );
    schemas.insert(
        "GraphRequest".into(),
        json!({
        "type": "object", "required": ["graph"], "additionalProperties": false,
        "description": "A raw graph, run as it is (a workflow as ComfyUI saves it is converted first); it takes no template parameters.",
        "properties": graph_properties, "example": graph_example()}),
    );
    schemas.insert(
        "TemplateRequest".into(),
        json!({
        "description": "A template and its parameters; `workflow` tells which.",
        "oneOf": variants,
        "discriminator": {"propertyName": "workflow", "mapping": mapping}}),
    );
    schemas.insert(
        "GenerateRequest".into(),
        json!({
        "description": "A template request or a raw graph. Unknown keys, wrong types and \
                        out-of-range values are refused (400 invalid_params, naming every bad \
                        field) before anything reaches ComfyUI.",
        "oneOf": [{"$ref": "#/components/schemas/TemplateRequest"},
                  {"$ref": "#/components/schemas/GraphRequest"}]}),
    );
    schemas.insert("CommonFields".into(), json!({
        "type": "object", "properties": common,
        "description": "Fields every generation request may carry besides its template parameters."}));
    schemas.insert("ErrorCode".into(), error_code_schema());
    schemas.insert(
        "Error".into(),
        json!({
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message", "details"],
            "properties": {
                "code": {"$ref": "#/components/schemas/ErrorCode"},
                "message": {"type": "string", "description": "A sentence for a person."},
                "details": {"type": "object", "description": "Machine-readable context."}}}}}),
    );
    for (name, schema) in event_schemas() {
        schemas.insert(name.into(), schema);
    }
    for (name, schema) in answer_schemas() {
        schemas.insert(name.into(), schema);
    }
    for (name, schema) in crate::server::v2::doc::schemas() {
        schemas.insert(name.into(), schema);
    }
    json!({
        "schemas": schemas,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
            "description": "One of API_KEYS (only when API_KEYS is set)."}},
        "responses": {
            "NotFound": error_response(&[ErrorCode::NotFound]),
            "MethodNotAllowed": {
                "description": "`method_not_allowed`: the path exists, not with this method",
                "headers": {"Allow": {"schema": {"type": "string"}, "example": "GET, DELETE"}},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        },
    })
}

fn error_code_schema() -> Value {
    let names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let statuses: Map<String, Value> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_str().to_string(), c.http_status().into()))
        .collect();
    let lines: Vec<String> = ErrorCode::ALL
        .iter()
        .map(|c| format!("- `{}` ({}): {}", c.as_str(), c.http_status(), c.meaning()))
        .collect();
    json!({"type": "string", "enum": names, "x-http-status": statuses,
           "description": format!("Every error code, with the HTTP status that carries it. \
               After a job started, a stream ends with an `error` event carrying one of them.\n{}",
               lines.join("\n"))})
}

fn event_schemas() -> Vec<(&'static str, Value)> {
    let job_id = json!({"type": "string", "format": "uuid"});
    let frames: Vec<Value> = EVENTS
        .iter()
        .map(|kind| {
            json!({"type": "object", "required": ["id", "event", "data"],
                   "properties": {
                       "id": {"type": "integer", "minimum": 1},
                       "event": {"const": kind.as_str()},
                       "data": {"$ref": format!("#/components/schemas/{}", event_component(*kind))}}})
        })
        .collect();
    vec![
        (
            "SseEvent",
            json!({
            "description": "One frame of the stream: `id:`, `event:` and one line of JSON \
                `data:` carrying `job_id`. The stream starts with `retry: 2000` and ends after \
                the terminal event (`complete`, `error` or `cancelled`).",
            "oneOf": frames}),
        ),
        (
            "QueuedEvent",
            json!({"type": "object", "required": ["job_id", "workflow", "queue_position"],
            "description": "The gateway accepted the job and saved it; it waits in the gateway's queue.",
            "properties": {"job_id": job_id, "workflow": {"type": "string"},
                "queue_position": {"type": ["integer", "null"], "description": "Jobs ahead of this one: its place in the gateway's queue plus the prompts the ComfyUIs hold (running or queued); 0: none ahead."},
                "priority": {"type": "integer"},
                "prompt_id": {"type": "null", "description": "Always null here: see the dispatched event."},
                "backend": {"type": "null", "description": "Always null here: see the dispatched event."}},
            "example": {"job_id": "8bde9053-c14c-440b-b0d4-1f132f6e48e4", "workflow": "txt2img",
                        "queue_position": 0, "priority": 0, "prompt_id": null, "backend": null}}),
        ),
        (
            "DispatchedEvent",
            json!({"type": "object", "required": ["job_id", "prompt_id", "backend", "workflow"],
            "description": "A ComfyUI backend accepted the job's prompt.",
            "properties": {"job_id": job_id, "prompt_id": {"type": "string"},
                "backend": {"type": "string", "format": "uri", "description": "The ComfyUI that runs the job."},
                "workflow": {"type": "string"},
                "warnings": {"type": "array", "items": {"type": "object"},
                    "description": "Output nodes ComfyUI dropped at validation (it runs the rest)."}},
            "example": {"job_id": "8bde9053-c14c-440b-b0d4-1f132f6e48e4",
                        "prompt_id": "8d635014-f2fd-41f3-8f0c-dda82f5ac236",
                        "backend": "http://127.0.0.1:8188", "workflow": "txt2img"}}),
        ),
        (
            "PreviewEvent",
            json!({"type": "object", "required": ["job_id", "content_type", "image"],
            "description": "With \"previews\": true, the newest sampler preview, at most once per progress tick.",
            "properties": {"job_id": job_id, "node": {"type": ["string", "null"]},
                "content_type": {"enum": ["image/jpeg", "image/png"]},
                "image": {"type": "string", "description": "A data: URL."}},
            "example": {"job_id": "8bde9053-c14c-440b-b0d4-1f132f6e48e4", "node": "3",
                        "content_type": "image/jpeg", "image": "data:image/jpeg;base64,/9j/4AAQ..."}}),
        ),
        (
            "ProgressEvent",
            json!({"type": "object", "required": ["job_id", "state", "elapsed_ms"],
            "description": "Every PROGRESS_INTERVAL_MS until the job ends.",
            "properties": {"job_id": job_id,
                "state": {"enum": ["queued", "running", "uploading"]},
                "queue_position": {"type": ["integer", "null"], "description": "Jobs ahead of this one: in the gateway's queue, its place there plus the prompts the ComfyUIs hold; in a ComfyUI's queue, the prompt it runs plus those sent to it before; 0 once running."},
                "backend": {"type": ["string", "null"], "description": "The ComfyUI that runs the job, once dispatched."},
                "node": {"type": ["string", "null"]}, "node_type": {"type": ["string", "null"]},
                "step": {"type": ["integer", "null"]}, "steps": {"type": ["integer", "null"]},
                "percent": {"type": "number", "minimum": 0, "maximum": 100},
                "elapsed_ms": {"type": "integer"}},
            "example": {"elapsed_ms": 1005, "job_id": "8bde9053-c14c-440b-b0d4-1f132f6e48e4",
                        "node": "3", "node_type": "KSampler", "percent": 38.5,
                        "queue_position": 0, "state": "running", "step": 6, "steps": 20}}),
        ),
        (
            "CompleteEvent",
            json!({"type": "object",
            "required": ["job_id", "workflow", "images", "params"],
            "properties": {"job_id": job_id, "prompt_id": {"type": "string"},
                "workflow": {"type": "string"},
                "images": {"type": "array", "items": {"$ref": "#/components/schemas/Image"}},
                "params": {"type": "object", "description": "The parameters as used, with the seed drawn."},
                "timings_ms": {"type": "object", "properties": {
                    "queued": {"type": "integer"}, "running": {"type": "integer"},
                    "storing": {"type": "integer"}, "total": {"type": "integer"}}}},
            "example": complete_example()}),
        ),
        (
            "ErrorEvent",
            json!({"type": "object", "required": ["job_id", "code", "message", "details"],
            "properties": {"job_id": job_id, "code": {"$ref": "#/components/schemas/ErrorCode"},
                "message": {"type": "string"}, "details": {"type": "object"}},
            "example": {"job_id": "8bde9053-c14c-440b-b0d4-1f132f6e48e4", "code": "execution_failed",
                        "message": "node 3 (KSampler) failed: CUDA out of memory", "details": {}}}),
        ),
        (
            "CancelledEvent",
            json!({"type": "object", "required": ["job_id"],
            "properties": {"job_id": job_id}}),
        ),
        (
            "Image",
            json!({"type": "object",
            "description": "One stored output file (images, videos, sounds, models, other files).",
            "required": ["url", "key", "kind", "width", "height", "bytes", "content_type"],
            "properties": {"url": {"type": "string", "format": "uri"}, "key": {"type": "string"},
                "kind": {"enum": ["image", "video", "audio", "model", "other"]},
                "width": {"type": ["integer", "null"]}, "height": {"type": ["integer", "null"]},
                "bytes": {"type": "integer"},
                "content_type": {"type": "string", "examples": ["image/png", "video/mp4", "audio/flac"]},
                "node": {"type": "string"}}}),
        ),
    ]
}

/// The schema name of an event's `data`.
pub fn event_component(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Queued => "QueuedEvent",
        EventKind::Dispatched => "DispatchedEvent",
        EventKind::Progress => "ProgressEvent",
        EventKind::Preview => "PreviewEvent",
        EventKind::Complete => "CompleteEvent",
        EventKind::Error => "ErrorEvent",
        EventKind::Cancelled => "CancelledEvent",
    }
}

fn answer_schemas() -> Vec<(&'static str, Value)> {
    let parameter = json!({"type": "object", "required": ["type", "required"],
        "properties": {
            "type": {"enum": ["string", "integer", "number", "boolean", "image"]},
            "required": {"type": "boolean"}, "default": {},
            "min": {"type": "number"}, "max": {"type": "number"}, "multiple_of": {"type": "number"},
            "enum": {"type": "array"}, "description": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "string"},
                "description": "Values every ComfyUI backend has installed (read from /object_info)."},
            "partial_choices": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}},
                "description": "Values only some backends have → those backends."},
            "choices_unavailable": {"type": "object", "additionalProperties": {"type": "string"}},
            "choices_note": {"type": "string"}}});
    vec![
        (
            "Health",
            json!({"type": "object", "properties": {"status": {"const": "ok"}}}),
        ),
        (
            "Ready",
            json!({"type": "object", "required": ["status", "reasons"],
            "properties": {"status": {"enum": ["ready", "not_ready"]},
                "reasons": {"type": "array", "items": {"type": "string"}}}}),
        ),
        (
            "Workflow",
            json!({"type": "object", "required": ["name", "description", "parameters"],
            "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                "parameters": {"type": "object", "additionalProperties": parameter},
                "choices_unavailable": {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "Backends whose /object_info could not be read → why."},
                "choices_note": {"type": "string"},
                "format": {"const": "ui",
                    "description": "Present when the template is a workflow as ComfyUI saves it."},
                "available": {"type": "boolean",
                    "description": "For a workflow as ComfyUI saves it: whether it converts with the backends' node definitions now."},
                "unavailable": {"type": "string", "description": "Why it does not."},
                "problems": {"type": "array", "items": {"type": "object",
                    "required": ["id", "type", "title", "reason"],
                    "properties": {"id": {"type": "string"}, "type": {"type": "string"},
                        "title": {"type": "string"}, "reason": {"type": "string"}}}}}}),
        ),
        (
            "WorkflowList",
            json!({"type": "object", "required": ["default", "workflows"],
            "properties": {"default": {"type": "string"},
                "workflows": {"type": "array", "items": {"$ref": "#/components/schemas/Workflow"}}}}),
        ),
        (
            "Refreshed",
            json!({"type": "object", "required": ["backends"],
            "properties": {"backends": {"type": "object",
                "additionalProperties": {"type": ["string", "null"]},
                "description": "Each backend's URL → null when read, or why it could not be."}}}),
        ),
        (
            "JobCreated",
            json!({"type": "object", "required": ["job_id", "status_url", "events_url"],
            "properties": {"job_id": {"type": "string", "format": "uuid"},
                "status_url": {"type": "string", "format": "uri"},
                "events_url": {"type": "string", "format": "uri"}}}),
        ),
        (
            "Job",
            json!({"type": "object",
            "required": ["job_id", "state", "workflow", "created_at", "events"],
            "properties": {"job_id": {"type": "string", "format": "uuid"},
                "state": {"enum": ["queued", "running", "uploading", "completed", "failed", "cancelled"]},
                "workflow": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
                "priority": {"type": "integer"},
                "queue_position": {"type": ["integer", "null"], "description": "Jobs ahead of this one while it waits (in the gateway's queue or a ComfyUI's); 0 while it runs; null once ComfyUI is done with it."},
                "backend": {"type": ["string", "null"], "description": "The ComfyUI that runs (or ran) the job."},
                "prompt_id": {"type": ["string", "null"]},
                "progress": {"oneOf": [{"$ref": "#/components/schemas/ProgressEvent"}, {"type": "null"}]},
                "events": {"type": "integer"},
                "result": {"oneOf": [{"$ref": "#/components/schemas/CompleteEvent"}, {"type": "null"}]},
                "error": {"oneOf": [{"$ref": "#/components/schemas/ErrorEvent"}, {"type": "null"}]}}}),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_kind_is_documented() {
        // Exhaustive: a new kind fails to compile here until it is added to EVENTS.
        let listed = |kind: EventKind| match kind {
            EventKind::Queued
            | EventKind::Dispatched
            | EventKind::Progress
            | EventKind::Preview
            | EventKind::Complete
            | EventKind::Error
            | EventKind::Cancelled => EVENTS.contains(&kind),
        };
        assert!(EVENTS.iter().all(|k| listed(*k)));
        assert_eq!(EVENTS.len(), 7);
    }

    #[test]
    fn parameters_become_json_schema() {
        let seed = json!({"type": "integer", "required": false, "default": "random", "min": 0});
        let schema = parameter_schema(&seed);
        assert_eq!(schema["type"], "integer");
        assert_eq!(schema["minimum"], 0);
        assert!(
            schema.get("default").is_none(),
            "random is no integer default"
        );
        let checkpoint = json!({"type": "string", "required": false, "default": "a",
                                "choices": ["a", "b"], "partial_choices": {"c": ["http://x"]}});
        let schema = parameter_schema(&checkpoint);
        assert_eq!(schema["enum"], json!(["a", "b"]));
        assert_eq!(schema["x-partial-choices"]["c"], json!(["http://x"]));
        let image = parameter_schema(&json!({"type": "image", "required": true}));
        assert_eq!(image["contentEncoding"], "base64");
    }
}
