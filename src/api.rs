//! The HTTP contract's vocabulary: error codes, the error body, and generation requests.
//!
//! Every error a client sees, as an HTTP body or as the terminal `error` event of a stream, is an
//! [`ApiError`]: one of the contract's codes (the README lists them), a sentence for a person,
//! and machine-readable details. The mapping from a code to its HTTP status lives here and
//! nowhere else.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::fmt;

use crate::convert::OutputFormat;
use crate::webhook::WebhookRequest;

/// The error codes of the contract, each with its one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The body is not JSON.
    InvalidJson,
    /// The body is JSON but its parameters are wrong; details name each bad field.
    InvalidParams,
    /// A workflow as ComfyUI saves it (a raw graph, or a template) cannot be converted to the
    /// API format; details name each node and what to install or fix.
    InvalidWorkflow,
    /// The request names a workflow template that does not exist.
    UnknownWorkflow,
    /// No such path, job or image.
    NotFound,
    /// The path exists but not with this method.
    MethodNotAllowed,
    /// The body is larger than `MAX_BODY_BYTES`.
    PayloadTooLarge,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// `API_KEYS` is set and the request carries no valid key.
    Unauthorized,
    /// `MAX_QUEUED_JOBS` jobs waiting already.
    Overloaded,
    /// No ComfyUI backend answered.
    ComfyuiUnavailable,
    /// ComfyUI's validation refused the graph.
    ComfyuiRejected,
    /// A node failed while ComfyUI ran the graph.
    ExecutionFailed,
    /// ComfyUI went away mid-job and the job's fate could not be recovered.
    ComfyuiLost,
    /// ComfyUI kept answering `/prompt` with a server error (5xx), or with a 2xx lacking a
    /// `prompt_id`, through every retry.
    ComfyuiError,
    /// The job ran longer than `JOB_TIMEOUT_SECS`.
    Timeout,
    /// The images could not be stored; details say where they were kept.
    StorageFailed,
    /// The job was cancelled (only as a JSON answer; streams end with a `cancelled` event).
    Cancelled,
    /// A bug or an unexpected condition inside the gateway.
    Internal,
    /// The request's framing is ambiguous (`Content-Length` with `Transfer-Encoding`, a
    /// repeated or malformed `Content-Length`, a transfer coding other than `chunked`); the
    /// connection is closed after the answer.
    MalformedRequest,
    /// `Expect: 100-continue` for a body over `MAX_BODY_BYTES`: the client need not send it.
    ExpectationFailed,
    /// `MAX_CONNECTIONS` requests are being answered already; `Retry-After` says when to retry.
    TooManyConnections,
}

impl ErrorCode {
    /// Every code, in the order the README's tables list them (the OpenAPI document and its
    /// drift test walk this list).
    pub const ALL: [ErrorCode; 22] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidParams,
        ErrorCode::InvalidWorkflow,
        ErrorCode::Unauthorized,
        ErrorCode::UnknownWorkflow,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Cancelled,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::ComfyuiRejected,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
        ErrorCode::ExecutionFailed,
        ErrorCode::ComfyuiLost,
        ErrorCode::ComfyuiError,
        ErrorCode::StorageFailed,
        ErrorCode::ComfyuiUnavailable,
        ErrorCode::Timeout,
        ErrorCode::MalformedRequest,
        ErrorCode::ExpectationFailed,
        ErrorCode::TooManyConnections,
    ];

    /// The code named `name` on the wire.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == name)
    }

    /// A sentence saying when a client sees this code (for the OpenAPI document).
    pub fn meaning(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "the body is not JSON",
            ErrorCode::InvalidParams => {
                "a parameter is wrong; details.fields names each bad field and why"
            }
            ErrorCode::InvalidWorkflow => {
                "a workflow as ComfyUI saves it cannot be converted; details.nodes names each \
                 node (id, type, title) and what to install or fix"
            }
            ErrorCode::UnknownWorkflow => "no workflow template has that name",
            ErrorCode::NotFound => "no such path, job or image",
            ErrorCode::MethodNotAllowed => "the path exists, not with this method (see Allow)",
            ErrorCode::PayloadTooLarge => "the body is larger than MAX_BODY_BYTES",
            ErrorCode::UnsupportedMediaType => "the body is not sent as application/json",
            ErrorCode::Unauthorized => "API_KEYS is set and the key is missing or wrong",
            ErrorCode::Overloaded => {
                "MAX_QUEUED_JOBS jobs are waiting already; Retry-After says when to retry"
            }
            ErrorCode::ComfyuiUnavailable => {
                "no ComfyUI answered; details.backends says why for each"
            }
            ErrorCode::ComfyuiRejected => {
                "ComfyUI's validation refused the graph; details.node_errors is ComfyUI's own"
            }
            ErrorCode::ExecutionFailed => "a node raised while ComfyUI ran the graph",
            ErrorCode::ComfyuiLost => "ComfyUI went away and the job's fate could not be told",
            ErrorCode::ComfyuiError => {
                "ComfyUI kept answering /prompt with a server error (or without a prompt_id); \
                 the message names the backend, its status and the start of its body"
            }
            ErrorCode::Timeout => "the job ran longer than JOB_TIMEOUT_SECS",
            ErrorCode::StorageFailed => {
                "the images could not be stored; details.spool_dir says where they are kept"
            }
            ErrorCode::Cancelled => "the job was cancelled (JSON answers only)",
            ErrorCode::Internal => "a bug or an unexpected condition inside the gateway",
            ErrorCode::MalformedRequest => {
                "the request's framing is ambiguous (Content-Length with Transfer-Encoding, a \
                 repeated or malformed Content-Length, a coding other than chunked); the \
                 connection is closed"
            }
            ErrorCode::ExpectationFailed => {
                "Expect: 100-continue for a body over MAX_BODY_BYTES; do not send it"
            }
            ErrorCode::TooManyConnections => {
                "MAX_CONNECTIONS requests are being answered; Retry-After says when to retry"
            }
        }
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidParams => "invalid_params",
            ErrorCode::InvalidWorkflow => "invalid_workflow",
            ErrorCode::UnknownWorkflow => "unknown_workflow",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::ComfyuiUnavailable => "comfyui_unavailable",
            ErrorCode::ComfyuiRejected => "comfyui_rejected",
            ErrorCode::ExecutionFailed => "execution_failed",
            ErrorCode::ComfyuiLost => "comfyui_lost",
            ErrorCode::ComfyuiError => "comfyui_error",
            ErrorCode::Timeout => "timeout",
            ErrorCode::StorageFailed => "storage_failed",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Internal => "internal",
            ErrorCode::MalformedRequest => "malformed_request",
            ErrorCode::ExpectationFailed => "expectation_failed",
            ErrorCode::TooManyConnections => "too_many_connections",
        }
    }

    /// The HTTP status that carries this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson
            | ErrorCode::InvalidParams
            | ErrorCode::InvalidWorkflow
            | ErrorCode::MalformedRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::UnknownWorkflow | ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Cancelled => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::ExpectationFailed => 417,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::ComfyuiRejected => 422,
            ErrorCode::Overloaded => 429,
            ErrorCode::Internal => 500,
            ErrorCode::ExecutionFailed
            | ErrorCode::ComfyuiLost
            | ErrorCode::ComfyuiError
            | ErrorCode::StorageFailed => 502,
            ErrorCode::ComfyuiUnavailable | ErrorCode::TooManyConnections => 503,
            ErrorCode::Timeout => 504,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        ErrorCode::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {name:?}")))
    }
}

/// An error as a client sees it: `{"code", "message", "details"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// The contract's code.
    pub code: ErrorCode,
    /// A sentence for a person.
    pub message: String,
    /// Machine-readable context (`{}` when there is none).
    pub details: Value,
}

impl ApiError {
    /// An error with empty details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            details: Value::Object(Map::new()),
        }
    }

    /// The same error with `details` replaced.
    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = details;
        self
    }

    /// The HTTP status for this error.
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }

    /// The HTTP body: `{"error": {"code", "message", "details"}}`.
    pub fn to_body(&self) -> Value {
        json!({ "error": self })
    }

    /// `404 not_found` for a path or resource.
    pub fn not_found(what: impl fmt::Display) -> ApiError {
        ApiError::new(ErrorCode::NotFound, format!("{what} was not found"))
    }

    /// `500 internal` with a message for the log and the client.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Internal, message)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// What a client asked to generate.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerateRequest {
    /// Fill the named template with these parameters (not yet validated).
    Template {
        /// Template name.
        workflow: String,
        /// Every key of the body but `workflow` and the [`COMMON_FIELDS`].
        params: Map<String, Value>,
    },
    /// Run a raw API-format graph as it is.
    Graph {
        /// Node id -> `{"class_type", "inputs"}`.
        graph: Value,
    },
}

impl GenerateRequest {
    /// The workflow name reported in events and metadata (`"graph"` for a raw graph).
    pub fn workflow_name(&self) -> &str {
        match self {
            GenerateRequest::Template { workflow, .. } => workflow,
            GenerateRequest::Graph { .. } => "graph",
        }
    }
}

/// A whole generation request: what to generate, and how the job should treat it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    /// The template and its parameters, or a raw graph.
    pub generate: GenerateRequest,
    /// The [`COMMON_FIELDS`], checked and typed.
    pub options: RequestOptions,
}

impl JobRequest {
    /// Parses a request body. `default_workflow` is used when the body names none.
    ///
    /// The common fields are checked here (every bad one reported); the template checks its
    /// own parameters later.
    pub fn parse(body: &[u8], default_workflow: &str) -> Result<JobRequest, ApiError> {
        JobRequest::parse_for(body, default_workflow, &|_, _| false)
    }

    /// Like [`parse`](Self::parse), for a gateway whose templates may name a parameter like one
    /// of the [`COMMON_FIELDS`]: `claims(workflow, field)` says whether template `workflow`
    /// declares a parameter named `field`.
    ///
    /// The gateway's own fields can always be given in the [`OPTIONS_FIELD`] object
    /// (`{"options": {"quality": 80}}`). At top level, a name the requested template declares
    /// is that template's parameter (so `GET /workflows/{name}` tells the truth about it);
    /// any other common field at top level is the gateway's, as it always was.
    pub fn parse_for(
        body: &[u8],
        default_workflow: &str,
        claims: &dyn Fn(&str, &str) -> bool,
    ) -> Result<JobRequest, ApiError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("the request body is not valid JSON: {e}"),
            )
        })?;
        let Value::Object(mut fields) = value else {
            return Err(ApiError::new(
                ErrorCode::InvalidParams,
                "the request body must be a JSON object",
            ));
        };
        let workflow = match fields.get("graph") {
            Some(_) => None,
            None => Some(match fields.get("workflow") {
                Some(Value::String(name)) => name.clone(),
                _ => default_workflow.to_string(),
            }),
        };
        let claimed = |field: &str| workflow.as_deref().is_some_and(|w| claims(w, field));
        let options = take_options(&mut fields, &claimed)?;
        if let Some(graph) = fields.remove("graph") {
            if let Some(other) = fields.keys().next() {
                return Err(invalid_field(
                    other,
                    "cannot be combined with \"graph\": a raw graph takes no template parameters",
                ));
            }
            let generate = GenerateRequest::Graph { graph };
            return Ok(JobRequest { generate, options });
        }
        let workflow = match fields.remove("workflow") {
            None | Some(Value::Null) => default_workflow.to_string(),
            Some(Value::String(name)) => name,
            Some(_) => return Err(invalid_field("workflow", "must be a string")),
        };
        let generate = GenerateRequest::Template {
            workflow,
            params: fields,
        };
        Ok(JobRequest { generate, options })
    }
}

/// The request key holding the gateway's own fields (the [`COMMON_FIELDS`]) in a spelling no
/// template parameter can take: `{"options": {"output_format": "jpeg", "quality": 80}}`.
pub const OPTIONS_FIELD: &str = "options";

/// Takes the [`COMMON_FIELDS`] out of a request body: from its [`OPTIONS_FIELD`] object, and
/// at top level those the template does not `claim` as parameters of its own. A field given
/// both ways is refused, and so is an unknown key in `options`; problems with a field given in
/// `options` are reported under `options.NAME`.
fn take_options(
    fields: &mut Map<String, Value>,
    claimed: &dyn Fn(&str) -> bool,
) -> Result<RequestOptions, ApiError> {
    let nested = match fields.remove(OPTIONS_FIELD) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(nested)) => nested,
        Some(_) => {
            return Err(invalid_field(
                OPTIONS_FIELD,
                "must be an object of the gateway's own fields (priority, webhook, previews, \
                 output_format, quality)",
            ));
        }
    };
    let mut merged = Map::new();
    for field in COMMON_FIELDS {
        if claimed(field.name) {
            continue; // the template's parameter of that name
        }
        if let Some(value) = fields.remove(field.name) {
            merged.insert(field.name.to_string(), value);
        }
    }
    let mut problems = Map::new();
    let mut from_options: Vec<String> = Vec::new();
    for (name, value) in nested {
        let key = format!("{OPTIONS_FIELD}.{name}");
        if !COMMON_FIELDS.iter().any(|f| f.name == name) {
            let known: Vec<&str> = COMMON_FIELDS.iter().map(|f| f.name).collect();
            let problem = format!("is not one of the gateway's fields: {}", known.join(", "));
            problems.insert(key, Value::String(problem));
        } else if merged.contains_key(&name) {
            let problem = format!("is also given at top level as \"{name}\"; give it once");
            problems.insert(key, Value::String(problem));
        } else {
            merged.insert(name.clone(), value);
            // Remembered, to name the field as the client spelled it in any problem.
            from_options.push(name);
        }
    }
    let result = RequestOptions::take_from(&mut merged);
    let mut details = match result {
        Ok(options) if problems.is_empty() => return Ok(options),
        Ok(_) => Map::new(),
        Err(error) => error.details["fields"]
            .as_object()
            .cloned()
            .unwrap_or_default(),
    };
    for (name, problem) in std::mem::take(&mut details) {
        let base = name.split('.').next().unwrap_or(&name);
        let spelled = if from_options.iter().any(|f| f == base) {
            format!("{OPTIONS_FIELD}.{name}")
        } else {
            name
        };
        details.insert(spelled, problem);
    }
    details.extend(problems);
    let summary: Vec<String> = details
        .iter()
        .map(|(name, problem)| format!("{name}: {}", problem.as_str().unwrap_or_default()))
        .collect();
    Err(ApiError::new(ErrorCode::InvalidParams, summary.join("; "))
        .with_details(json!({ "fields": details })))
}

/// How a job treats its request, whatever the template: the [`COMMON_FIELDS`], typed.
///
/// Saved with the job, so that a job resumed after a restart is treated the same.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RequestOptions {
    /// Queue order among waiting jobs: higher first, default 0.
    #[serde(default)]
    pub priority: i32,
    /// Whether the job's stream carries the sampler's preview frames.
    #[serde(default)]
    pub previews: bool,
    /// The format still pictures are converted to (`png`: none, every output as ComfyUI made it).
    #[serde(default)]
    pub output_format: OutputFormat,
    /// JPEG quality, 1 to 100 (only with `output_format: "jpeg"`; `None`: the default, 90).
    #[serde(default)]
    pub quality: Option<u8>,
    /// Where to send the job's events, checked for shape (the allowed hosts and the secret are
    /// checked by `webhook::Webhooks`).
    #[serde(default)]
    pub webhook: Option<WebhookRequest>,
    /// Comfy API v2 `metadata`: string labels a client filters its jobs by. Set only by
    /// `POST /api/v2/jobs` (not one of the [`COMMON_FIELDS`]); saved with the job.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A request field that every generation request may carry, next to its template parameters.
#[derive(Debug, Clone, Copy)]
pub struct CommonField {
    /// The key in the request body.
    pub name: &'static str,
    /// The field's JSON Schema, with its description, default and an example.
    pub schema: fn() -> Value,
}

/// The request fields that are not template parameters. [`RequestOptions::take_from`] parses
/// exactly these (a test keeps the two in step) and the OpenAPI document shows them in every
/// request schema.
pub const COMMON_FIELDS: &[CommonField] = &[
    CommonField {
        name: "priority",
        schema: || {
            json!({"type": "integer", "default": 0, "minimum": i32::MIN, "maximum": i32::MAX,
                   "description": "Queue order among waiting jobs: higher runs first.",
                   "examples": [10]})
        },
    },
    CommonField {
        name: "webhook",
        schema: || {
            json!({"type": "object", "required": ["url"], "additionalProperties": false,
                   "description": "Where to POST this job's events (signed per Standard Webhooks).",
                   "properties": {
                       "url": {"type": "string", "format": "uri"},
                       "events": {"type": "array", "uniqueItems": true,
                                  "items": {"enum": ["queued", "progress", "complete", "error", "cancelled"]},
                                  "default": ["queued", "complete", "error", "cancelled"]}},
                   "examples": [{"url": "https://example.com/hook", "events": ["complete", "error"]}]})
        },
    },
    CommonField {
        name: "previews",
        schema: || {
            json!({"type": "boolean", "default": false,
                   "description": "Send the sampler's preview images while the job runs.",
                   "examples": [true]})
        },
    },
    CommonField {
        name: "output_format",
        schema: || {
            let names: Vec<&str> = OutputFormat::ALL.iter().map(|f| f.as_str()).collect();
            json!({"type": "string", "enum": names, "default": "png",
                   "description": "png: store every output as ComfyUI made it, in its own \
                                   format (never converted); jpeg or webp: convert still PNG \
                                   and WebP pictures in another format. Converted files carry \
                                   no metadata; non-image outputs are never converted.",
                   "examples": ["webp"]})
        },
    },
    CommonField {
        name: "quality",
        schema: || {
            json!({"type": "integer", "minimum": 1, "maximum": 100,
                   "default": OutputFormat::DEFAULT_JPEG_QUALITY,
                   "description": "JPEG quality; only with output_format \"jpeg\".",
                   "examples": [85]})
        },
    },
];

impl RequestOptions {
    /// Removes the [`COMMON_FIELDS`] from a request body and checks them, reporting every bad
    /// one in `details.fields`.
    pub fn take_from(fields: &mut Map<String, Value>) -> Result<RequestOptions, ApiError> {
        let mut options = RequestOptions::default();
        let mut problems = Map::new();
        let mut bad = |name: &str, problem: String| {
            problems.insert(name.to_string(), Value::String(problem));
        };
        for field in COMMON_FIELDS {
            let Some(value) = fields.remove(field.name) else {
                continue;
            };
            if value.is_null() {
                continue; // null means "the default", as if left out
            }
            match field.name {
                "priority" => match value.as_i64().and_then(|n| i32::try_from(n).ok()) {
                    Some(n) => options.priority = n,
                    None => bad(
                        field.name,
                        format!("must be an integer from {} to {}", i32::MIN, i32::MAX),
                    ),
                },
                "previews" => match value.as_bool() {
                    Some(b) => options.previews = b,
                    None => bad(field.name, "must be true or false".into()),
                },
                "output_format" => match value.as_str().and_then(OutputFormat::parse) {
                    Some(format) => options.output_format = format,
                    None => bad(field.name, "must be one of: png, jpeg, webp".into()),
                },
                "quality" => match value.as_u64().and_then(|q| u8::try_from(q).ok()) {
                    Some(q @ 1..=100) => options.quality = Some(q),
                    _ => bad(field.name, "must be an integer from 1 to 100".into()),
                },
                "webhook" => match WebhookRequest::from_json(&value) {
                    Ok(webhook) => options.webhook = Some(webhook),
                    Err(error) => match error.details["fields"].as_object() {
                        Some(fields) => {
                            for (name, problem) in fields {
                                bad(name, problem.as_str().unwrap_or("invalid").to_string());
                            }
                        }
                        None => bad(field.name, error.message),
                    },
                },
                _ => {}
            }
        }
        if options.quality.is_some() && options.output_format != OutputFormat::Jpeg {
            bad(
                "quality",
                format!(
                    "applies only to output_format \"jpeg\" ({} is {})",
                    options.output_format,
                    if options.output_format == OutputFormat::Webp {
                        "lossless"
                    } else {
                        "as ComfyUI made it"
                    }
                ),
            );
        }
        if problems.is_empty() {
            return Ok(options);
        }
        let summary: Vec<String> = problems
            .iter()
            .map(|(name, problem)| format!("{name}: {}", problem.as_str().unwrap_or_default()))
            .collect();
        Err(ApiError::new(ErrorCode::InvalidParams, summary.join("; "))
            .with_details(json!({ "fields": problems })))
    }
}

/// `400 invalid_params` naming one field, in the same `details.fields` shape the templates use.
pub fn invalid_field(field: &str, problem: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidParams, format!("{field}: {problem}"))
        .with_details(json!({ "fields": { field: problem } }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_the_contract_shape() {
        let err = ApiError::new(ErrorCode::ComfyuiRejected, "no")
            .with_details(json!({"node_errors": {"3": {}}}));
        assert_eq!(err.http_status(), 422);
        assert_eq!(
            err.to_body(),
            json!({"error": {"code": "comfyui_rejected", "message": "no",
                              "details": {"node_errors": {"3": {}}}}})
        );
    }

    #[test]
    fn statuses_follow_the_design() {
        let expected = [
            (ErrorCode::InvalidJson, 400),
            (ErrorCode::PayloadTooLarge, 413),
            (ErrorCode::Overloaded, 429),
            (ErrorCode::ExecutionFailed, 502),
            (ErrorCode::StorageFailed, 502),
            (ErrorCode::Timeout, 504),
            (ErrorCode::Cancelled, 409),
            (ErrorCode::ComfyuiUnavailable, 503),
        ];
        for (code, status) in expected {
            assert_eq!(code.http_status(), status, "{code}");
        }
    }

    fn parse(body: &[u8]) -> Result<JobRequest, ApiError> {
        JobRequest::parse(body, "txt2img")
    }

    #[test]
    fn template_request_uses_default_workflow() {
        let req = parse(br#"{"prompt": "a fox", "seed": 1}"#).map(|r| r.generate);
        let Ok(GenerateRequest::Template { workflow, params }) = req else {
            panic!("expected a template request, got {req:?}");
        };
        assert_eq!(workflow, "txt2img");
        assert_eq!(params.len(), 2);
    }

    #[test]
    fn graph_request_takes_no_other_keys() {
        let ok = parse(br#"{"graph": {"1": {}}, "output_format": "webp"}"#);
        let ok = ok.expect("a graph with a common field");
        assert!(matches!(ok.generate, GenerateRequest::Graph { .. }));
        assert_eq!(ok.options.output_format, OutputFormat::Webp);
        let err = parse(br#"{"graph": {}, "seed": 3}"#);
        assert_eq!(err.map_err(|e| e.code), Err(ErrorCode::InvalidParams));
    }

    #[test]
    fn bad_bodies_get_their_codes() {
        let code = |body: &[u8]| JobRequest::parse(body, "x").map_err(|e| e.code);
        assert_eq!(code(b"{not json"), Err(ErrorCode::InvalidJson));
        assert_eq!(code(b"[1, 2]"), Err(ErrorCode::InvalidParams));
        assert_eq!(code(br#"{"workflow": 7}"#), Err(ErrorCode::InvalidParams));
    }

    #[test]
    fn common_fields_are_typed_and_leave_the_template_parameters() {
        let body = br#"{"prompt": "a fox", "priority": 5, "previews": true,
                        "output_format": "jpeg", "quality": 70}"#;
        let req = parse(body).expect("valid");
        let options = RequestOptions {
            priority: 5,
            previews: true,
            output_format: OutputFormat::Jpeg,
            quality: Some(70),
            webhook: None,
            labels: Default::default(),
        };
        assert_eq!(req.options, options);
        let GenerateRequest::Template { params, .. } = req.generate else {
            panic!("a template request");
        };
        assert_eq!(params.keys().collect::<Vec<_>>(), ["prompt"]);
        let defaults = parse(br#"{"prompt": "x"}"#).expect("valid").options;
        assert_eq!(defaults, RequestOptions::default());
        assert_eq!(defaults.output_format, OutputFormat::Png);
    }

    #[test]
    fn bad_common_fields_are_all_named() {
        let err = parse(
            br#"{"priority": 1.5, "previews": "yes", "output_format": "gif",
                             "quality": 0}"#,
        )
        .expect_err("all four are wrong");
        assert_eq!(err.code, ErrorCode::InvalidParams);
        let fields = err.details["fields"].as_object().expect("fields");
        for name in ["priority", "previews", "output_format", "quality"] {
            assert!(fields.contains_key(name), "{name} in {fields:?}");
        }
    }

    #[test]
    fn quality_is_for_jpeg_only() {
        for body in [
            br#"{"output_format": "webp", "quality": 80}"#.as_slice(),
            br#"{"output_format": "png", "quality": 80}"#,
            br#"{"quality": 80}"#,
        ] {
            let err = parse(body).expect_err("quality without jpeg");
            assert!(
                err.details["fields"]["quality"]
                    .as_str()
                    .is_some_and(|m| m.contains("only to output_format \"jpeg\"")),
                "{err:?}"
            );
        }
        assert!(parse(br#"{"output_format": "jpeg", "quality": 100}"#).is_ok());
        assert!(parse(br#"{"output_format": "jpeg", "quality": 101}"#).is_err());
    }

    #[test]
    fn the_common_field_list_and_the_parser_agree() {
        // Every listed field is taken out of the body (none left for the template), and its
        // schema's example parses.
        let mut fields = Map::new();
        for field in COMMON_FIELDS {
            let schema = (field.schema)();
            assert!(
                schema["description"].is_string(),
                "{} has a description",
                field.name
            );
            let example = schema["examples"][0].clone();
            assert!(!example.is_null(), "{} has an example", field.name);
            fields.insert(field.name.to_string(), example);
        }
        fields.insert("output_format".into(), json!("jpeg"));
        let result = RequestOptions::take_from(&mut fields);
        assert!(fields.is_empty(), "left for the template: {fields:?}");
        let options = result.expect("every example parses");
        assert!(options.webhook.is_some());
    }

    #[test]
    fn a_template_parameter_keeps_its_name_and_options_carry_the_gateways_field() {
        let mp3_claims = |workflow: &str, field: &str| workflow == "mp3" && field == "quality";
        let body = br#"{"workflow": "mp3", "quality": "320k",
                        "options": {"output_format": "jpeg", "quality": 80}}"#;
        let parsed = JobRequest::parse_for(body, "t", &mp3_claims).expect("valid");
        let GenerateRequest::Template { params, .. } = &parsed.generate else {
            panic!("a template request");
        };
        assert_eq!(params["quality"], "320k");
        assert_eq!(parsed.options.quality, Some(80));
        // Another template does not claim it: the top-level field is the gateway's, as before.
        let body = br#"{"workflow": "other", "output_format": "jpeg", "quality": 80}"#;
        let parsed = JobRequest::parse_for(body, "t", &mp3_claims).expect("valid");
        assert_eq!(parsed.options.quality, Some(80));
        // The default workflow claims too; a raw graph never does.
        let parsed = JobRequest::parse_for(br#"{"quality": "V0"}"#, "mp3", &mp3_claims);
        assert!(parsed.is_ok(), "{parsed:?}");
        let graph = br#"{"graph": {}, "quality": 5}"#;
        assert!(JobRequest::parse_for(graph, "mp3", &mp3_claims).is_err());
    }

    #[test]
    fn options_problems_name_the_field_as_spelled() {
        let fields = |body: &[u8]| {
            let error = parse(body).expect_err("refused");
            let fields = error.details["fields"]
                .as_object()
                .cloned()
                .expect("fields");
            fields.keys().cloned().collect::<Vec<_>>()
        };
        assert_eq!(
            fields(br#"{"options": {"quality": 0}}"#),
            ["options.quality"]
        );
        assert_eq!(fields(br#"{"options": {"nope": 1}}"#), ["options.nope"]);
        assert_eq!(
            fields(br#"{"previews": true, "options": {"previews": true}}"#),
            ["options.previews"]
        );
        assert_eq!(fields(br#"{"options": [1]}"#), ["options"]);
        assert_eq!(
            fields(br#"{"options": {"webhook": {"url": "ftp://h/"}}}"#),
            ["options.webhook.url"]
        );
        let ok = parse(br#"{"options": {"priority": 4, "previews": true}, "prompt": "x"}"#);
        let options = ok.expect("valid").options;
        assert_eq!((options.priority, options.previews), (4, true));
    }

    #[test]
    fn a_webhook_is_taken_out_of_the_parameters() {
        let body = br#"{"prompt": "x", "webhook": {"url": "https://h.example/in"}}"#;
        let request = JobRequest::parse(body, "txt2img").expect("valid");
        let GenerateRequest::Template { params, .. } = &request.generate else {
            panic!("expected a template request");
        };
        assert!(!params.contains_key("webhook"));
        let webhook = request.options.webhook.expect("a webhook");
        assert_eq!(webhook.url.as_str(), "https://h.example/in");
        let body = br#"{"graph": {"1": {}}, "webhook": {"url": "http://h/"}}"#;
        let parsed = JobRequest::parse(body, "txt2img").expect("valid");
        assert!(matches!(parsed.generate, GenerateRequest::Graph { .. }));
        assert!(parsed.options.webhook.is_some());
        let bad = JobRequest::parse(br#"{"webhook": {"url": "ftp://h/"}}"#, "txt2img");
        let error = bad.expect_err("refused");
        assert!(
            error.details["fields"]["webhook.url"].is_string(),
            "{error:?}"
        );
    }

    #[test]
    fn error_codes_and_options_round_trip_through_json() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(code.as_str()), Some(code));
        }
        let body = br#"{"priority": 3, "previews": true, "output_format": "jpeg", "quality": 70,
                        "webhook": {"url": "https://h.example/in", "events": ["complete"]}}"#;
        let options = JobRequest::parse(body, "t").expect("valid").options;
        let saved = serde_json::to_string(&options).expect("serialisable");
        let back: RequestOptions = serde_json::from_str(&saved).expect("readable");
        assert_eq!(back, options);
    }

    #[test]
    fn every_code_is_listed_once() {
        // A new variant must get a number here (the match is exhaustive), and then this test
        // fails until ALL lists it.
        fn ordinal(code: ErrorCode) -> usize {
            use ErrorCode::*;
            match code {
                InvalidJson => 0,
                InvalidParams => 1,
                UnknownWorkflow => 2,
                NotFound => 3,
                MethodNotAllowed => 4,
                PayloadTooLarge => 5,
                UnsupportedMediaType => 6,
                Unauthorized => 7,
                Overloaded => 8,
                ComfyuiUnavailable => 9,
                ComfyuiRejected => 10,
                ExecutionFailed => 11,
                ComfyuiLost => 12,
                Timeout => 13,
                StorageFailed => 14,
                Cancelled => 15,
                Internal => 16,
                MalformedRequest => 17,
                ExpectationFailed => 18,
                TooManyConnections => 19,
                ComfyuiError => 20,
                InvalidWorkflow => 21,
            }
        }
        let mut seen: Vec<usize> = ErrorCode::ALL.iter().map(|c| ordinal(*c)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..ErrorCode::ALL.len()).collect::<Vec<_>>());
        assert!(ErrorCode::ALL.iter().all(|c| !c.meaning().is_empty()));
    }
}
