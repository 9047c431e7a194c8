//! Answers: JSON bodies, errors in the contract's shape, files, and request bodies read safely.

use serde_json::Value;
use std::io::{Read, Write};
use tiny_http::{Header, Method, Request, Response, StatusCode};

use super::socket;
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

/// Sends `error` with `Connection: close` and ends the connection, without reading what is left
/// of the request's body or waiting for it: for requests whose framing or size is refused, and
/// when `MAX_CONNECTIONS` is reached.
///
/// tiny_http offers no way to close a connection (it drops a `Connection` header from answers,
/// and discards the rest of a body when a request ends), so the connection's reading side is
/// shut down first (`socket::stop_reading`) and the answer is written by hand.
pub fn refuse_and_close(request: Request, error: &ApiError, port: u16, extra: &[(&str, &str)]) {
    if let Some(&peer) = request.remote_addr() {
        socket::stop_reading(peer, port);
    }
    let head_only = *request.method() == Method::Head;
    let answer = refusal(error, head_only, extra);
    let mut writer = request.into_writer();
    let written = writer.write_all(&answer).and_then(|()| writer.flush());
    if let Err(e) = written {
        log::debug!(
            "client left before its refusal ({}) was sent: {e}",
            error.code
        );
    }
}

/// A declared body length (256 MiB) from which a refused request is never handed back to
/// tiny_http: when it ends a request, tiny_http 0.12 discards what is left of the body through
/// a buffer as large as the declared length, and a length larger than the machine's memory
/// aborts the process.
pub const ABSURD_BODY_LENGTH: u64 = 1 << 28;

/// Answers `error` (with `Connection: close`) on the raw socket and shuts the connection down,
/// then leaks the request instead of letting tiny_http end it: for a declared body length of
/// [`ABSURD_BODY_LENGTH`] or more. What leaks (the request, its connection's descriptors and
/// tiny_http's thread for it) is counted by the caller, which restarts the gateway before it
/// adds up. The reverse proxies in `deploy/` refuse such requests before they get here.
pub fn abandon(request: Request, error: &ApiError, port: u16, extra: &[(&str, &str)]) {
    let answer = refusal(error, *request.method() == Method::Head, extra);
    let answered = request
        .remote_addr()
        .is_some_and(|&peer| socket::answer_and_shut_down(peer, port, &answer));
    if !answered {
        log::debug!("the connection of an abandoned request was not found; it gets no answer");
    }
    std::mem::forget(request);
}

/// The bytes of an error answer that closes the connection.
fn refusal(error: &ApiError, head_only: bool, extra: &[(&str, &str)]) -> Vec<u8> {
    let status = error.http_status();
    let body = error.to_body().to_string();
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut answer = head.into_bytes();
    if !head_only {
        answer.extend_from_slice(body.as_bytes());
    }
    answer
}

/// The reason phrase of the statuses `refuse_and_close` sends.
fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        413 => "Payload Too Large",
        417 => "Expectation Failed",
        503 => "Service Unavailable",
        _ => "Error",
    }
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
    // A declared length over the limit was refused before routing (`framing::check`); a chunked
    // body is read up to one byte past the limit, and the caller refuses it and closes.
    let mut body = Vec::new();
    request
        .as_reader()
        .take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("reading the body: {e}")))?;
    if body.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(body)
}
