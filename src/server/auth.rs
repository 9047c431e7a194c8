//! API keys: `Authorization: Bearer KEY`, compared in constant time.

use tiny_http::Request;

use crate::api::{ApiError, ErrorCode};

/// Checks the request's bearer token against `keys`. With no keys configured, everything passes.
///
/// The scheme is case-insensitive (`Bearer`, `bearer`, `BEARER`), as HTTP schemes are.
pub fn check(request: &Request, keys: &[String]) -> Result<(), ApiError> {
    if keys.is_empty() {
        return Ok(());
    }
    let token = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| bearer_token(h.value.as_str()));
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

/// The token of an `Authorization: Bearer TOKEN` value, whatever the scheme's case.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(char::is_whitespace)?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether `presented == key`, in a time that depends on `presented`'s length only: every byte
/// of `presented` is compared with a byte of `key` (cycling through it), whatever the lengths,
/// so neither the key's bytes nor its length show in the timing.
pub fn constant_time_eq(presented: &[u8], key: &[u8]) -> bool {
    if key.is_empty() {
        return presented.is_empty();
    }
    let mut diff = u8::from(presented.len() != key.len());
    let mut k = 0;
    for &byte in presented {
        diff |= byte ^ key[k];
        // Wraps without a division, whose time could vary with the operands.
        k += 1;
        k *= usize::from(k != key.len());
    }
    diff == 0
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
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(
            !constant_time_eq(b"secretsecret", b"secret"),
            "a repeated key is not the key"
        );
        assert!(!constant_time_eq(b"sec", b"secret"));
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}
