//! Answers: JSON bodies, errors in the contract's shape, files, and request bodies read safely.

use serde_json::Value;
use std::io::{self, Read};
use tiny_http::{Header, Request, Response, StatusCode};

use crate::api::{ApiError, ErrorCode};

/// A header from a static name and a value that is known to be valid ASCII.
pub fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|()| Header::from_bytes("X-Invalid-Header", "1").expect("static header"))
}

/// Sends `body` as JSON with `status`. A client that already left is not an error worth more
/// than a debug line.
pub fn json(request: Request, status: u16, body: &Value) {
    json_with(request, status, body, Vec::new());
}

/// Like [`json`], with extra headers.
pub fn json_with(request: Request, status: u16, body: &Value, headers: Vec<Header>) {
    let mut response = Response::from_string(body.to_string())
        .with_status_code(StatusCode(status))
        .with_header(header("Content-Type", "application/json"));
    for h in headers {
        response.add_header(h);
    }
    if let Err(e) = request.respond(response) {
        log::debug!("client left before the answer was sent: {e}");
    }
}

/// Sends an error in the contract's shape with its status.
pub fn error(request: Request, error: &ApiError) {
    let mut headers = Vec::new();
    if error.code == ErrorCode::Overloaded {
        headers.push(header("Retry-After", "5"));
    }
    if error.code == ErrorCode::Unauthorized {
        headers.push(header("WWW-Authenticate", "Bearer"));
    }
    json_with(request, error.http_status(), &error.to_body(), headers);
}

/// The value of a request header, if present.
pub fn header_value<'a>(request: &'a Request, name: &'static str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// Reads a JSON request body of at most `limit` bytes.
///
/// Refuses a declared non-JSON content type (415) and a body over the limit (413); a missing
/// content type is accepted, since `curl -d` without `-H` is a common way to call us.
pub fn read_json_body(request: &mut Request, limit: u64) -> Result<Vec<u8>, ApiError> {
    if let Some(content_type) = header_value(request, "Content-Type") {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!(
                    "the body must be JSON sent as application/json, not {essence} \
                     (with curl: -H 'Content-Type: application/json')"
                ),
            ));
        }
    }
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than MAX_BODY_BYTES ({limit} bytes)"),
        )
        .with_details(serde_json::json!({ "limit": limit }))
    };
    if request.body_length().is_some_and(|len| len as u64 > limit) {
        drain(request);
        return Err(too_large());
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("reading the body: {e}")))?;
    if body.len() as u64 > limit {
        drain(request);
        return Err(too_large());
    }
    Ok(body)
}

/// Reads and discards what is left of a refused body (up to a bound), so the client, still
/// sending, gets to read our answer instead of a connection reset.
fn drain(request: &mut Request) {
    const DRAIN_LIMIT: u64 = 256 * 1024 * 1024;
    let _ = io::copy(&mut request.as_reader().take(DRAIN_LIMIT), &mut io::sink());
}
