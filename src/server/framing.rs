//! Request framing the gateway refuses before anything else: an ambiguous body length (the way
//! requests are smuggled past a proxy that frames them differently) or a body over the limit.
//!
//! tiny_http has parsed the head when the gateway sees a request, and it picks a body length on
//! its own (`Transfer-Encoding` wins, the first `Content-Length` otherwise). What it hands over,
//! every header line as sent, is enough to refuse what it would have guessed at.

use tiny_http::Request;

use crate::api::{ApiError, ErrorCode};

/// The largest body a request may have, and the variable that sets it (for the refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit {
    /// The limit in bytes.
    pub bytes: u64,
    /// The variable that sets it, e.g. `MAX_BODY_BYTES`.
    pub variable: &'static str,
}

/// Checks the request's framing headers and its declared length against `limit`.
///
/// Refuses (400 `malformed_request`) `Content-Length` together with `Transfer-Encoding`, a
/// repeated or malformed `Content-Length` (anything but digits), and any transfer coding other
/// than a single `chunked`; refuses a declared length over the limit with 413
/// `payload_too_large`, or 417 `expectation_failed` when the client waits for `100 Continue`.
pub fn check(request: &Request, limit: BodyLimit) -> Result<(), ApiError> {
    let BodyLimit {
        bytes: max_body,
        variable,
    } = limit;
    let lengths: Vec<&str> = values(request, "Content-Length").collect();
    let codings: Vec<&str> = values(request, "Transfer-Encoding").collect();
    if !lengths.is_empty() && !codings.is_empty() {
        return Err(malformed(
            "the request has both Content-Length and Transfer-Encoding",
        ));
    }
    if codings.len() > 1
        || codings
            .iter()
            .any(|c| !c.trim().eq_ignore_ascii_case("chunked"))
    {
        return Err(malformed(
            "the only transfer coding accepted is a single \"chunked\"",
        ));
    }
    let length = match lengths.as_slice() {
        [] => None,
        [one] => Some(parse_length(one).ok_or_else(|| {
            malformed("Content-Length must be a non-negative whole number of bytes")
        })?),
        _ => return Err(malformed("the request repeats Content-Length")),
    };
    if length.is_some_and(|length| length > max_body) {
        let expects_continue =
            values(request, "Expect").any(|v| v.trim().eq_ignore_ascii_case("100-continue"));
        let (code, message) = if expects_continue {
            (
                ErrorCode::ExpectationFailed,
                format!(
                    "the body would be larger than {variable} ({max_body} bytes): do not send it"
                ),
            )
        } else {
            (
                ErrorCode::PayloadTooLarge,
                format!("the body is larger than {variable} ({max_body} bytes)"),
            )
        };
        return Err(
            ApiError::new(code, message).with_details(serde_json::json!({ "limit": max_body }))
        );
    }
    Ok(())
}

/// The values of every header line named `name`, in order.
fn values<'a>(request: &'a Request, name: &'static str) -> impl Iterator<Item = &'a str> {
    request
        .headers()
        .iter()
        .filter(move |h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// Digits only (no sign, no spaces, no list), at most 19 of them so the value fits a `u64`.
fn parse_length(raw: &str) -> Option<u64> {
    let digits = raw.trim();
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn malformed(message: &str) -> ApiError {
    ApiError::new(
        ErrorCode::MalformedRequest,
        format!("{message}; the connection is closed"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length("0"), Some(0));
        assert_eq!(parse_length(" 42 "), Some(42));
        assert_eq!(
            parse_length("9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            "",
            "+5",
            "-1",
            "5, 5",
            "0x10",
            "1 2",
            "99999999999999999999",
            "1e3",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }
}
