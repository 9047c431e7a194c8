//! Supabase storage: images in a Storage bucket, one row per image in a table through PostgREST.
//!
//! The exchanges follow the Supabase Storage API server and PostgREST as captured from the real
//! services:
//!
//! - upload: `POST /storage/v1/object/{bucket}/{key}` with the bytes, their `Content-Type`
//!   (`image/png`, `video/mp4`, `audio/flac`, ...) and `x-upsert: true`; large files stream from
//!   disk with a `Content-Length`. Keys are unique per job (`{job_id}/{index}.{ext}`), so the only way a key already exists is that an
//!   earlier try of the same upload got through before its answer was lost; overwriting it with
//!   the same bytes is harmless, and that is what makes a retry safe.
//! - URL: public (`/storage/v1/object/public/{bucket}/{key}`) when the TTL is 0, else a signed
//!   URL from `POST /storage/v1/object/sign/{bucket}/{key}`.
//! - rows: one `POST /rest/v1/{table}?on_conflict=job_id,image_index` upsert for all rows of a
//!   job; a retried insert merges into the rows the first try wrote instead of duplicating them.
//!
//! Errors: Storage answers every error with HTTP 400 and the real status as a string in the
//! body's `statusCode`; PostgREST uses real statuses with `{code, details, hint, message}`; the
//! API gateway in front answers a bad key with 401 `{"message": ...}`. All are turned into a
//! [`StorageError`] that keeps Supabase's `statusCode`, `code` and `message`, and is transient for
//! connection failures, timeouts, 429 and 5xx (retried per the [`RetryPolicy`]).
//!
//! The service key is sent on every request (`apikey` and `Authorization: Bearer`) and appears
//! nowhere else: not in `Debug` output, logs or errors.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use ureq::http::Response;

use super::{ImageRecord, RetryPolicy, Storage, StorageError, count};

/// Everything [`SupabaseStorage`] needs; `Debug` shows the key as `<redacted>`.
#[derive(Clone)]
pub struct SupabaseOptions {
    /// The project URL, e.g. `https://abcd.supabase.co` (a trailing `/` is ignored).
    pub url: String,
    /// The service-role key.
    pub key: String,
    /// The Storage bucket images go to.
    pub bucket: String,
    /// The table rows go to.
    pub table: String,
    /// 0: hand out public URLs; N > 0: signed URLs valid for N seconds.
    pub signed_url_ttl_secs: u64,
    /// How transient failures are retried.
    pub retry: RetryPolicy,
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest time for one whole request, from connecting to reading the answer.
    pub request_timeout: Duration,
}

impl SupabaseOptions {
    /// Options for `url` and `key` with the gateway's defaults: bucket `images`, table
    /// `generations`, public URLs, the default retry policy, 5 s to connect, 60 s per request.
    pub fn new(url: impl Into<String>, key: impl Into<String>) -> SupabaseOptions {
        SupabaseOptions {
            url: url.into(),
            key: key.into(),
            bucket: "images".into(),
            table: "generations".into(),
            signed_url_ttl_secs: 0,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl fmt::Debug for SupabaseOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupabaseOptions")
            .field("url", &self.url)
            .field("key", &"<redacted>")
            .field("bucket", &self.bucket)
            .field("table", &self.table)
            .field("signed_url_ttl_secs", &self.signed_url_ttl_secs)
            .field("retry", &self.retry)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Stores images in Supabase Storage and rows in a Supabase table. Cheap to share between
/// threads: the HTTP agent inside keeps a pool of connections.
pub struct SupabaseStorage {
    agent: ureq::Agent,
    /// `options.url` without a trailing `/`.
    base: String,
    options: SupabaseOptions,
}

impl fmt::Debug for SupabaseStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupabaseStorage")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The body of a 2xx answer.
struct Answer {
    body: String,
}

impl SupabaseStorage {
    /// A client for the project in `options`. Makes no request: a wrong URL or key shows up at
    /// the first call (or at [`Storage::check`]).
    pub fn new(options: SupabaseOptions) -> SupabaseStorage {
        let config = ureq::Agent::config_builder()
            // Supabase's error bodies carry the real status and message; ureq would drop them.
            .http_status_as_error(false)
            .timeout_connect(Some(options.connect_timeout))
            .timeout_per_call(Some(options.request_timeout))
            .build();
        SupabaseStorage {
            agent: config.into(),
            base: options.url.trim_end_matches('/').to_string(),
            options,
        }
    }

    /// The public URL of `key`: `{url}/storage/v1/object/public/{bucket}/{key}`. It downloads
    /// only if the bucket is public.
    pub fn public_url(&self, key: &str) -> String {
        format!(
            "{}/storage/v1/object/public/{}/{}",
            self.base,
            crate::percent::encode(&self.options.bucket),
            encode_path(key)
        )
    }

    /// Uploads `bytes` to `key`, replacing any object already there; retries transient failures.
    pub fn upload(&self, key: &str, bytes: &[u8], content_type: &str) -> Result<(), StorageError> {
        self.upload_with(key, content_type, |request| request.send(bytes))
    }

    /// Uploads the file at `path` to `key` like [`upload`](Self::upload), streaming it from
    /// disk with its `Content-Length` (a 300 MB video never sits in memory); each retry reopens
    /// the file. The request may take `request_timeout` plus one second per MiB, so a large
    /// video is not cut off by a timeout meant for API calls.
    pub fn upload_file(
        &self,
        key: &str,
        path: &std::path::Path,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let operation = format!("uploading {key} to Supabase");
        // Checked once up front: a missing file is not worth retrying.
        let len = std::fs::metadata(path)
            .map_err(|e| StorageError::io(format!("{operation}: reading {}", path.display()), e))?
            .len();
        let timeout = self.options.request_timeout + Duration::from_secs(len / (1024 * 1024));
        self.upload_with(key, content_type, |request| {
            let file = std::fs::File::open(path).map_err(ureq::Error::Io)?;
            request
                .config()
                .timeout_per_call(Some(timeout))
                .build()
                .send(file)
        })
    }

    /// One upload to `key`, retried; `send` sends the prepared request with the body.
    fn upload_with(
        &self,
        key: &str,
        content_type: &str,
        send: impl Fn(
            ureq::RequestBuilder<ureq::typestate::WithBody>,
        ) -> Result<Response<ureq::Body>, ureq::Error>,
    ) -> Result<(), StorageError> {
        let operation = format!("uploading {key} to Supabase");
        let url = format!(
            "{}/storage/v1/object/{}/{}",
            self.base,
            crate::percent::encode(&self.options.bucket),
            encode_path(key)
        );
        self.options.retry.run(|attempt| {
            let request = self
                .authorized(self.agent.post(&url))
                .header("Content-Type", content_type)
                .header("x-upsert", "true")
                .header("cache-control", "max-age=3600");
            match self.answer(&operation, send(request)) {
                Ok(_) => Ok(()),
                // Only reachable if the server ignored x-upsert: then a retry finding the key
                // means the earlier try stored it.
                Err(e) if attempt > 1 && e.code() == Some("KeyAlreadyExists") => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    /// A URL for `key` valid for `ttl_secs` seconds, from `POST /storage/v1/object/sign`.
    pub fn signed_url(&self, key: &str, ttl_secs: u64) -> Result<String, StorageError> {
        let operation = format!("signing a URL for {key} in Supabase");
        let url = format!(
            "{}/storage/v1/object/sign/{}/{}",
            self.base,
            crate::percent::encode(&self.options.bucket),
            encode_path(key)
        );
        let body = serde_json::json!({ "expiresIn": ttl_secs }).to_string();
        let answer = self.options.retry.run(|_| {
            let request = self
                .authorized(self.agent.post(&url))
                .header("Content-Type", "application/json");
            self.answer(&operation, request.send(body.as_str()))
        })?;
        #[derive(Deserialize)]
        struct Signed {
            #[serde(rename = "signedURL", alias = "signedUrl")]
            signed_url: String,
        }
        let signed: Signed = serde_json::from_str(&answer.body).map_err(|e| {
            StorageError::invalid(
                &operation,
                format!("unexpected answer {:?}: {e}", answer.body),
            )
        })?;
        Ok(self.absolute_signed_url(&signed.signed_url))
    }

    /// The server answers a path relative to `/storage/v1`; some versions already include that
    /// prefix or answer a full URL. All three become one absolute URL.
    fn absolute_signed_url(&self, signed: &str) -> String {
        if signed.starts_with("http://") || signed.starts_with("https://") {
            signed.to_string()
        } else if signed.starts_with("/storage/v1/") {
            format!("{}{signed}", self.base)
        } else {
            format!(
                "{}/storage/v1/{}",
                self.base,
                signed.trim_start_matches('/')
            )
        }
    }

    /// The public URL of a stored object, or a signed one when `signed_url_ttl_secs` is above 0.
    fn url_for(&self, key: &str) -> Result<String, StorageError> {
        match self.options.signed_url_ttl_secs {
            0 => Ok(self.public_url(key)),
            ttl => self.signed_url(key, ttl),
        }
    }

    /// Adds the key headers every Supabase request needs.
    fn authorized<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        request
            .header("apikey", &self.options.key)
            .header("Authorization", format!("Bearer {}", self.options.key))
    }

    /// Reads the answer to one request: 2xx gives its body; anything else a [`StorageError`].
    fn answer(
        &self,
        operation: &str,
        result: Result<Response<ureq::Body>, ureq::Error>,
    ) -> Result<Answer, StorageError> {
        let mut response = result.map_err(|e| transport_error(operation, e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(1024 * 1024)
            .read_to_vec()
            .map_err(|e| transport_error(operation, e))?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if (200..300).contains(&status) {
            Ok(Answer { body })
        } else {
            Err(rejection(operation, status, &body))
        }
    }
}

impl Storage for SupabaseStorage {
    fn kind(&self) -> &'static str {
        "supabase"
    }

    /// The public URL, or a URL signed now when `signed_url_ttl_secs` is above 0.
    fn fresh_url(&self, key: &str) -> Option<Result<String, StorageError>> {
        Some(self.url_for(key))
    }

    /// Uploads (retrying transient failures), then returns the public URL, or a signed one when
    /// `signed_url_ttl_secs` is above 0.
    fn put_image(
        &self,
        key: &str,
        bytes: &[u8],
        content_type: &str,
    ) -> Result<String, StorageError> {
        self.upload(key, bytes, content_type)?;
        self.url_for(key)
    }

    /// Uploads the file streaming from disk (retrying transient failures), then returns its URL
    /// as [`put_image`](Storage::put_image) does.
    fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        content_type: &str,
    ) -> Result<String, StorageError> {
        self.upload_file(key, path, content_type)?;
        self.url_for(key)
    }

    /// Upserts all rows in one request on `(job_id, image_index)`, so a retry (ours, or a later
    /// flush of the spool) merges instead of duplicating; a 409 `23505` (a table without that
    /// unique constraint, or an older PostgREST) also counts as already recorded.
    fn record(&self, rows: &[ImageRecord]) -> Result<(), StorageError> {
        if rows.is_empty() {
            return Ok(());
        }
        let table = &self.options.table;
        let operation = format!(
            "recording {} in Supabase table {table}",
            count(rows.len(), "row")
        );
        let body = serde_json::to_vec(rows)
            .map_err(|e| StorageError::invalid(&operation, e.to_string()))?;
        let url = format!(
            "{}/rest/v1/{}?on_conflict=job_id,image_index",
            self.base,
            crate::percent::encode(table)
        );
        self.options.retry.run(|_| {
            let request = self
                .authorized(self.agent.post(&url))
                .header("Content-Type", "application/json")
                .header("Prefer", "resolution=merge-duplicates,return=minimal");
            match self.answer(&operation, request.send(&body)) {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some("23505") => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    /// `GET /storage/v1/bucket/{bucket}` once: proves the URL, the key and the bucket.
    fn check(&self) -> Result<(), StorageError> {
        let bucket = &self.options.bucket;
        let operation = format!("checking Supabase bucket {bucket}");
        let url = format!(
            "{}/storage/v1/bucket/{}",
            self.base,
            crate::percent::encode(bucket)
        );
        let request = self.authorized(self.agent.get(&url));
        self.answer(&operation, request.call()).map(|_| ())
    }
}

/// An error body from any Supabase service; every field is optional because Storage, PostgREST
/// and the API gateway each send a different subset (and versions differ).
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(rename = "statusCode")]
    status_code: Option<serde_json::Value>,
    code: Option<serde_json::Value>,
    message: Option<String>,
    error: Option<String>,
}

/// Builds the error for a non-2xx answer, keeping Supabase's own status, code and message.
fn rejection(operation: &str, http_status: u16, body: &str) -> StorageError {
    let parsed: ErrorBody = serde_json::from_str(body).unwrap_or_default();
    let message = parsed
        .message
        .or(parsed.error)
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| match body.trim() {
            "" => "(empty answer)".to_string(),
            text => text.chars().take(200).collect(),
        });
    StorageError::rejected(
        operation,
        http_status,
        parsed.status_code.and_then(value_text),
        parsed.code.and_then(value_text),
        message,
    )
}

/// A string or number field as text (`statusCode` is a string from Storage, a number elsewhere).
fn value_text(value: serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Connection-level failures are transient; a malformed request or URL never gets better.
fn transport_error(operation: &str, error: ureq::Error) -> StorageError {
    match error {
        ureq::Error::Io(_)
        | ureq::Error::Timeout(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Protocol(_) => StorageError::unreachable(operation, error),
        other => StorageError::invalid(operation, other.to_string()),
    }
}

/// Percent-encodes each `/`-separated segment of an object key.
fn encode_path(key: &str) -> String {
    key.split('/')
        .map(crate::percent::encode)
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_keep_the_real_status_code_and_message() {
        let body = r#"{"statusCode":"404","error":"Bucket not found","message":"Bucket not found","code":"NoSuchBucket"}"#;
        let error = rejection("uploading j/0.png to Supabase", 400, body);
        assert_eq!(error.http_status(), Some(400));
        assert_eq!(error.status(), Some(404));
        assert_eq!(error.status_code(), Some("404"));
        assert_eq!(error.code(), Some("NoSuchBucket"));
        assert_eq!(error.message(), "Bucket not found");
        assert!(!error.is_transient());
    }

    #[test]
    fn postgrest_and_gateway_errors_use_the_http_status() {
        let error = rejection(
            "recording",
            503,
            r#"{"code":"PGRST002","details":null,"hint":null,"message":"Could not query the database for the schema cache. Retrying."}"#,
        );
        assert!(error.is_transient());
        assert_eq!(error.code(), Some("PGRST002"));

        let error = rejection(
            "recording",
            401,
            r#"{"message":"Invalid API key","hint":"x"}"#,
        );
        assert!(!error.is_transient());
        assert_eq!(error.message(), "Invalid API key");
        assert_eq!(
            error.to_string(),
            "recording: 401 Unauthorized: Invalid API key"
        );
    }

    #[test]
    fn older_storage_errors_and_non_json_bodies_still_read_well() {
        let error = rejection("op", 400, r#"{"statusCode":"409","error":"Duplicate"}"#);
        assert_eq!(error.message(), "Duplicate");
        assert_eq!(error.status(), Some(409));
        let error = rejection("op", 502, "<html>bad gateway</html>");
        assert!(error.is_transient());
        assert_eq!(error.message(), "<html>bad gateway</html>");
        let error = rejection("op", 500, "");
        assert_eq!(
            error.to_string(),
            "op: 500 Internal Server Error: (empty answer)"
        );
    }

    #[test]
    fn debug_output_hides_the_key() {
        let storage = SupabaseStorage::new(SupabaseOptions::new(
            "http://127.0.0.1:1/",
            "eyJ.secret-service-role-key.sig",
        ));
        let debug = format!("{storage:?}");
        assert!(!debug.contains("secret-service-role-key"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn signed_urls_of_every_shape_become_absolute() {
        let storage = SupabaseStorage::new(SupabaseOptions::new("https://p.supabase.co/", "k"));
        let want = "https://p.supabase.co/storage/v1/object/sign/images/j/0.png?token=T";
        assert_eq!(
            storage.absolute_signed_url("/object/sign/images/j/0.png?token=T"),
            want
        );
        assert_eq!(
            storage.absolute_signed_url("/storage/v1/object/sign/images/j/0.png?token=T"),
            want
        );
        assert_eq!(storage.absolute_signed_url(want), want);
    }

    #[test]
    fn keys_are_encoded_per_segment() {
        assert_eq!(encode_path("3f2a-9c/0.png"), "3f2a-9c/0.png");
        assert_eq!(encode_path("a b/{x}.png"), "a%20b/%7Bx%7D.png");
    }
}
