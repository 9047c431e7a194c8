//! Standard Webhooks signatures: `v1,` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")).
//!
//! The secret is given as `whsec_` followed by base64 (the form the specification and its
//! verification libraries use). It is kept only as bytes, and `Debug` never shows it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;

/// The prefix that marks a Standard Webhooks symmetric secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Shortest secret accepted, in bytes: the specification asks for at least 24 random bytes.
const MIN_SECRET_BYTES: usize = 24;
/// Longest secret accepted, in bytes (the specification's 512 bits).
const MAX_SECRET_BYTES: usize = 64;

/// What a valid `WEBHOOK_SECRET` looks like, as a phrase that follows "expected".
pub const SECRET_FORMAT: &str = "whsec_ followed by the base64 of 24 to 64 random bytes, \
     e.g. whsec_$(head -c 32 /dev/urandom | base64)";

/// The key every webhook is signed with (`WEBHOOK_SECRET`).
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Reads `whsec_` + standard base64 with its `=` padding, the form every official
    /// verification library decodes (the JavaScript and Go ones insist on the padding). Refuses
    /// anything else, without echoing it.
    pub fn parse(raw: &str) -> Result<SigningKey, String> {
        let encoded = raw
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| format!("a secret starting with {SECRET_PREFIX}"))?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| format!("standard base64, = padding included, after {SECRET_PREFIX}"))?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(format!(
                "{MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes once decoded, not {}",
                key.len()
            ));
        }
        Ok(SigningKey(key))
    }

    /// The `webhook-signature` header value for one attempt: `v1,` + base64 of the HMAC-SHA256
    /// of `{msg_id}.{timestamp}.{body}`, where `timestamp` is the `webhook-timestamp` sent.
    pub fn sign(&self, msg_id: &str, timestamp: u64, body: &[u8]) -> String {
        // Any key length is valid for HMAC, so this cannot fail; the fallback keeps it panic-free.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the Standard Webhooks reference libraries (e.g. the Python library's
    /// `test_sign_function`): interoperability, not just self-consistency.
    #[test]
    fn signature_matches_the_specification_test_vector() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid");
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn the_signature_covers_id_timestamp_and_body() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid");
        let base = key.sign("msg_a", 1, b"{}");
        assert_ne!(base, key.sign("msg_b", 1, b"{}"));
        assert_ne!(base, key.sign("msg_a", 2, b"{}"));
        assert_ne!(base, key.sign("msg_a", 1, b"{ }"));
    }

    #[test]
    fn secrets_are_checked_and_never_shown() {
        assert!(SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(SigningKey::parse("whsec_not base64!").is_err());
        assert!(
            SigningKey::parse("whsec_c2hvcnQ=").is_err(),
            "5 bytes is too short"
        );
        // Padding is required: some official libraries refuse a secret without it.
        let padded = STANDARD.encode([7u8; 32]);
        let key = SigningKey::parse(&format!("whsec_{padded}")).expect("padded");
        assert_eq!(format!("{key:?}"), "SigningKey(<redacted>)");
        let unpadded = padded.trim_end_matches('=');
        assert!(SigningKey::parse(&format!("whsec_{unpadded}")).is_err());
        let error = SigningKey::parse("whsec_c2hvcnQ=").expect_err("too short");
        assert!(!error.contains("c2hvcnQ"), "{error}");
    }
}
