//! The HTTP contract's vocabulary: error codes, the error body, and generation requests.
//!
//! Every error a client sees, as an HTTP body or as the terminal `error` event of a stream, is an
//! [`ApiError`]: one of the codes of the README, a sentence for a person, and machine-readable
//! details. The mapping from a code to its HTTP status lives here and nowhere else.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::fmt;

use crate::webhook::WebhookRequest;

/// The error codes of the contract, each with its one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The body is not JSON.
    InvalidJson,
    /// The body is JSON but its parameters are wrong; details name each bad field.
    InvalidParams,
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
    /// `MAX_ACTIVE_JOBS` unfinished jobs already.
    Overloaded,
    /// No ComfyUI backend answered.
    ComfyuiUnavailable,
    /// ComfyUI's validation refused the graph.
    ComfyuiRejected,
    /// A node failed while ComfyUI ran the graph.
    ExecutionFailed,
    /// ComfyUI went away mid-job and the job's fate could not be recovered.
    ComfyuiLost,
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
    /// Every code, in the contract's order.
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidParams,
        ErrorCode::UnknownWorkflow,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::Unauthorized,
        ErrorCode::Overloaded,
        ErrorCode::ComfyuiUnavailable,
        ErrorCode::ComfyuiRejected,
        ErrorCode::ExecutionFailed,
        ErrorCode::ComfyuiLost,
        ErrorCode::Timeout,
        ErrorCode::StorageFailed,
        ErrorCode::Cancelled,
        ErrorCode::Internal,
    ];

    /// The code named `name` on the wire.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == name)
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidParams => "invalid_params",
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
            ErrorCode::InvalidJson | ErrorCode::InvalidParams | ErrorCode::MalformedRequest => 400,
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
            ErrorCode::ExecutionFailed | ErrorCode::ComfyuiLost | ErrorCode::StorageFailed => 502,
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
        /// Every key of the body but `workflow`.
        params: Map<String, Value>,
    },
    /// Run a raw API-format graph as it is.
    Graph {
        /// Node id -> `{"class_type", "inputs"}`.
        graph: Value,
    },
}

/// How a job is run, whatever it generates: the request fields that are not template
/// parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JobOptions {
    /// `priority`: higher runs first; FIFO within a priority. Default 0.
    #[serde(default)]
    pub priority: i64,
    /// `previews`: stream the sampler's live preview images as `preview` events.
    #[serde(default)]
    pub previews: bool,
    /// `webhook`: where to send the job's events, checked for shape (the allowed hosts and the
    /// secret are checked by `webhook::Webhooks`).
    #[serde(default)]
    pub webhook: Option<WebhookRequest>,
}

impl JobOptions {
    /// The request fields this struct reads; they are taken out before template parameters.
    pub const FIELDS: [&'static str; 3] = ["priority", "previews", "webhook"];

    /// Takes the job options out of a request body's fields.
    pub fn take_from(fields: &mut Map<String, Value>) -> Result<JobOptions, ApiError> {
        let mut options = JobOptions::default();
        match fields.remove("priority") {
            None | Some(Value::Null) => {}
            Some(value) => {
                options.priority = value.as_i64().ok_or_else(|| {
                    invalid_field("priority", "must be a whole number (higher runs first)")
                })?;
            }
        }
        match fields.remove("previews") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(previews)) => options.previews = previews,
            Some(_) => return Err(invalid_field("previews", "must be true or false")),
        }
        options.webhook = match fields.remove("webhook") {
            None | Some(Value::Null) => None,
            Some(value) => Some(WebhookRequest::from_json(&value)?),
        };
        Ok(options)
    }
}

/// A generation request and how to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    /// What to generate.
    pub generate: GenerateRequest,
    /// How to run it.
    pub options: JobOptions,
}

impl JobRequest {
    /// Parses a request body. `default_workflow` is used when the body names none.
    pub fn parse(body: &[u8], default_workflow: &str) -> Result<JobRequest, ApiError> {
        let mut fields = parse_object(body)?;
        let options = JobOptions::take_from(&mut fields)?;
        let generate = GenerateRequest::from_fields(fields, default_workflow)?;
        Ok(JobRequest { generate, options })
    }
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("the request body is not valid JSON: {e}"),
        )
    })?;
    match value {
        Value::Object(fields) => Ok(fields),
        _ => Err(ApiError::new(
            ErrorCode::InvalidParams,
            "the request body must be a JSON object",
        )),
    }
}

impl GenerateRequest {
    /// The workflow name reported in events and metadata (`"graph"` for a raw graph).
    pub fn workflow_name(&self) -> &str {
        match self {
            GenerateRequest::Template { workflow, .. } => workflow,
            GenerateRequest::Graph { .. } => "graph",
        }
    }

    /// Parses a request body. `default_workflow` is used when the body names none.
    ///
    /// Only the shape is checked here; the template checks the parameters themselves.
    pub fn parse(body: &[u8], default_workflow: &str) -> Result<GenerateRequest, ApiError> {
        GenerateRequest::from_fields(parse_object(body)?, default_workflow)
    }

    /// The request a body's fields describe, once the job options are taken out.
    pub fn from_fields(
        mut fields: Map<String, Value>,
        default_workflow: &str,
    ) -> Result<GenerateRequest, ApiError> {
        if let Some(graph) = fields.remove("graph") {
            if let Some(other) = fields.keys().next() {
                return Err(invalid_field(
                    other,
                    "cannot be combined with \"graph\": a raw graph takes no template parameters",
                ));
            }
            return Ok(GenerateRequest::Graph { graph });
        }
        let workflow = match fields.remove("workflow") {
            None | Some(Value::Null) => default_workflow.to_string(),
            Some(Value::String(name)) => name,
            Some(_) => return Err(invalid_field("workflow", "must be a string")),
        };
        Ok(GenerateRequest::Template {
            workflow,
            params: fields,
        })
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
            (ErrorCode::MalformedRequest, 400),
            (ErrorCode::ExpectationFailed, 417),
            (ErrorCode::TooManyConnections, 503),
        ];
        for (code, status) in expected {
            assert_eq!(code.http_status(), status, "{code}");
        }
    }

    #[test]
    fn template_request_uses_default_workflow() {
        let req = GenerateRequest::parse(br#"{"prompt": "a fox", "seed": 1}"#, "txt2img");
        let Ok(GenerateRequest::Template { workflow, params }) = req else {
            panic!("expected a template request, got {req:?}");
        };
        assert_eq!(workflow, "txt2img");
        assert_eq!(params.len(), 2);
    }

    #[test]
    fn graph_request_takes_no_other_keys() {
        let ok = GenerateRequest::parse(br#"{"graph": {"1": {}}}"#, "txt2img");
        assert!(matches!(ok, Ok(GenerateRequest::Graph { .. })));
        let err = GenerateRequest::parse(br#"{"graph": {}, "seed": 3}"#, "txt2img");
        assert_eq!(err.map_err(|e| e.code), Err(ErrorCode::InvalidParams));
    }

    #[test]
    fn job_options_come_out_before_template_parameters() {
        let req = JobRequest::parse(br#"{"prompt": "x", "priority": -3, "previews": true}"#, "t")
            .expect("valid");
        assert_eq!(req.options.priority, -3);
        assert!(req.options.previews);
        let GenerateRequest::Template { params, .. } = req.generate else {
            panic!("a template request");
        };
        assert_eq!(params.len(), 1);
        let graph = JobRequest::parse(br#"{"graph": {"1": {}}, "priority": 2}"#, "t");
        assert_eq!(graph.map(|r| r.options.priority), Ok(2));
        let bad = JobRequest::parse(br#"{"priority": 1.5}"#, "t").map_err(|e| e.code);
        assert_eq!(bad, Err(ErrorCode::InvalidParams));
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
        assert_eq!(
            error.details["fields"]["webhook.url"]
                .as_str()
                .map(|s| s.is_empty()),
            Some(false)
        );
    }

    #[test]
    fn error_codes_round_trip_by_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(code.as_str()), Some(code));
        }
    }

    #[test]
    fn bad_bodies_get_their_codes() {
        let code = |body: &[u8]| GenerateRequest::parse(body, "x").map_err(|e| e.code);
        assert_eq!(code(b"{not json"), Err(ErrorCode::InvalidJson));
        assert_eq!(code(b"[1, 2]"), Err(ErrorCode::InvalidParams));
        assert_eq!(code(br#"{"workflow": 7}"#), Err(ErrorCode::InvalidParams));
    }
}
