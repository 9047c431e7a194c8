//! The HTTP contract's vocabulary: error codes, the error body, and generation requests.
//!
//! Every error a client sees, as an HTTP body or as the terminal `error` event of a stream, is an
//! [`ApiError`]: one of the codes of the README, a sentence for a person, and machine-readable
//! details. The mapping from a code to its HTTP status lives here and nowhere else.

use serde::Serialize;
use serde_json::{Map, Value, json};
use std::fmt;

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

/// An error as a client sees it: `{"code", "message", "details"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    fn bad_bodies_get_their_codes() {
        let code = |body: &[u8]| GenerateRequest::parse(body, "x").map_err(|e| e.code);
        assert_eq!(code(b"{not json"), Err(ErrorCode::InvalidJson));
        assert_eq!(code(b"[1, 2]"), Err(ErrorCode::InvalidParams));
        assert_eq!(code(br#"{"workflow": 7}"#), Err(ErrorCode::InvalidParams));
    }
}
