//! API keys: `Authorization: Bearer KEY`, compared in constant time.

use tiny_http::Request;

use crate::api::{ApiError, ErrorCode};

/// Checks the request's bearer token against `keys`. With no keys configured, everything passes.
pub fn check(request: &Request, keys: &[String]) -> Result<(), ApiError> {
    if keys.is_empty() {
        return Ok(());
    }
    let token = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| h.value.as_str().strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "this gateway needs an API key: send \"Authorization: Bearer KEY\"",
        ));
    };
    // Compare against every key, without stopping early, so timing reveals nothing.
    let matched = keys.iter().fold(false, |found, key| {
        found | constant_time_eq(token.as_bytes(), key.as_bytes())
    });
    if matched {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the API key is not valid",
        ))
    }
}

/// Whether `a == b`, taking the same time for every `a` of a given length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(constant_time_eq(b"", b""));
    }
}
