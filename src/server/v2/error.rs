//! The v2 error envelope: `{"error": {"code", "message", "details"}}` with Comfy API v2's codes.
//!
//! The v2 surface has its own vocabulary of codes (`invalid_workflow`, `queue_full`,
//! `idempotency_key_reuse`...), so it does not reuse the gateway's [`ErrorCode`]; a gateway
//! error met on the way (a body too large, a full queue) is translated once, by
//! [`V2Error::from_gateway`].

use serde_json::{Value, json};

use crate::api::{ApiError, ErrorCode};

/// One v2 error answer: status, code, sentence, details, and `Retry-After` when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct V2Error {
    /// The HTTP status.
    pub status: u16,
    /// The contract's machine-readable code.
    pub code: &'static str,
    /// A sentence for a person.
    pub message: String,
    /// Machine-readable context, or `null`.
    pub details: Value,
    /// Seconds to wait before retrying (`Retry-After`), for 409 and 429 answers.
    pub retry_after: Option<u64>,
}

impl V2Error {
    /// An error with no details.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> V2Error {
        V2Error {
            status,
            code,
            message: message.into(),
            details: Value::Null,
            retry_after: None,
        }
    }

    /// The same error with `details`.
    pub fn with_details(mut self, details: Value) -> V2Error {
        self.details = details;
        self
    }

    /// The same error with a `Retry-After` of `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> V2Error {
        self.retry_after = Some(seconds);
        self
    }

    /// `400 invalid_request`: the request itself is malformed (not JSON, a bad field).
    pub fn invalid_request(message: impl Into<String>) -> V2Error {
        V2Error::new(400, "invalid_request", message)
    }

    /// `404 not_found`.
    pub fn not_found(what: impl std::fmt::Display) -> V2Error {
        V2Error::new(404, "not_found", format!("{what} was not found"))
    }

    /// `500 internal`.
    pub fn internal(message: impl Into<String>) -> V2Error {
        V2Error::new(500, "internal", message)
    }

    /// 500 `internal`: the answer recorded for an `Idempotency-Key` cannot be read back (the
    /// request is not run again; the log says why).
    pub fn unreadable_key() -> V2Error {
        V2Error::internal(
            "the answer recorded for this Idempotency-Key cannot be read; the request is not run \
             again",
        )
    }

    /// The body: the contract's envelope.
    pub fn to_body(&self) -> Value {
        json!({ "error": { "code": self.code, "message": self.message, "details": self.details } })
    }

    /// A gateway error met while answering a v2 request, in v2's vocabulary.
    pub fn from_gateway(error: &ApiError) -> V2Error {
        let details = match &error.details {
            Value::Object(map) if map.is_empty() => Value::Null,
            other => other.clone(),
        };
        let (status, code) = match error.code {
            ErrorCode::InvalidJson | ErrorCode::InvalidParams | ErrorCode::MalformedRequest => {
                (400, "invalid_request")
            }
            ErrorCode::Unauthorized => (401, "unauthorized"),
            ErrorCode::NotFound | ErrorCode::UnknownWorkflow => (404, "not_found"),
            ErrorCode::MethodNotAllowed => (405, "method_not_allowed"),
            ErrorCode::PayloadTooLarge => (413, "payload_too_large"),
            ErrorCode::UnsupportedMediaType => (415, "unsupported_media_type"),
            ErrorCode::ComfyuiRejected => (422, "invalid_workflow"),
            ErrorCode::Overloaded => (429, "queue_full"),
            ErrorCode::ComfyuiUnavailable | ErrorCode::TooManyConnections => {
                (503, "upstream_unreachable")
            }
            _ => (500, "internal"),
        };
        let mut v2 = V2Error::new(status, code, error.message.clone()).with_details(details);
        if status == 429 {
            v2.retry_after = Some(5);
        }
        v2
    }
}

impl std::fmt::Display for V2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for V2Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_has_code_message_and_null_details() {
        let body = V2Error::not_found("job x").to_body();
        assert_eq!(body["error"]["code"], "not_found");
        assert_eq!(body["error"]["message"], "job x was not found");
        assert!(body["error"]["details"].is_null());
    }

    #[test]
    fn a_full_queue_is_queue_full_with_retry_after() {
        let error = V2Error::from_gateway(&ApiError::new(ErrorCode::Overloaded, "full"));
        assert_eq!((error.status, error.code), (429, "queue_full"));
        assert_eq!(error.retry_after, Some(5));
    }
}
