//! Where finished outputs (images, videos, audio, models...) and their metadata go: one small
//! [`Storage`] interface, two backends.
//!
//! - [`local::LocalStorage`] (the default) writes images under `DATA_DIR/images/` and appends one
//!   JSON line per image to `DATA_DIR/generations.jsonl`; the gateway serves the files itself.
//! - [`supabase::SupabaseStorage`] uploads to Supabase Storage and inserts one row per image
//!   through PostgREST, retrying transient failures per a [`RetryPolicy`].
//! - [`spool::Spool`] keeps a job's images on local disk when an upload fails for good, and
//!   finishes the upload later, so a Supabase outage never loses an image.
//!
//! This module knows nothing of ComfyUI or HTTP handlers: a job hands it bytes, keys and rows.
//! Every failure is a [`StorageError`], whose [`StorageError::is_transient`] says whether trying
//! again later can help.

pub mod local;
pub mod spool;
pub mod supabase;

use std::error::Error;
use std::fmt;
use std::io;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A place to keep generated images and one metadata record per image.
///
/// Implementations are shared between the output workers, hence `Send + Sync`; each call blocks
/// until it has succeeded or failed for good (retries happen inside).
pub trait Storage: Send + Sync {
    /// A short name for logs and `/ready`: `"local"` or `"supabase"`.
    fn kind(&self) -> &'static str;

    /// Stores one image at `key` (e.g. `"{job_id}/{index}.png"`) and returns the URL clients
    /// download it from. Storing the same key twice replaces the image, so retries are harmless.
    fn put_image(
        &self,
        key: &str,
        bytes: &[u8],
        content_type: &str,
    ) -> Result<String, StorageError>;

    /// Stores the file at `path` at `key` like [`put_image`](Self::put_image), reading it as a
    /// stream so that a large video never sits whole in memory. The file itself is left where it
    /// is (the caller removes it); storing the same key twice replaces the object.
    fn put_file(&self, key: &str, path: &Path, content_type: &str) -> Result<String, StorageError>;

    /// Records metadata rows: all rows of one job in one call. Retrying a call that failed (or
    /// seemed to) does not create duplicate records in Supabase; see each backend for details.
    fn record(&self, rows: &[ImageRecord]) -> Result<(), StorageError>;

    /// A cheap check that storage is usable right now (for `GET /ready`); never retries.
    fn check(&self) -> Result<(), StorageError>;

    /// A fresh URL a client downloads the object at `key` from, when the backend hands out its
    /// own (Supabase: the public URL, or a newly signed one when URLs are signed); `None` when
    /// the gateway serves the files itself (local storage, the default).
    fn fresh_url(&self, key: &str) -> Option<Result<String, StorageError>> {
        let _ = key;
        None
    }
}

/// The metadata of one stored output file (an image, a video, a sound...): one row of the
/// `generations` table, or one line of `generations.jsonl`.
///
/// `seed` is a full `u64` and serializes as a JSON integer (serde_json writes integers exactly;
/// nothing here goes through `f64`), so `18446744073709551615` survives the round trip.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ImageRecord {
    /// The row's own id, a UUID.
    pub id: String,
    /// The gateway job (a UUID) this image belongs to.
    pub job_id: String,
    /// ComfyUI's prompt id, when the job got that far.
    pub prompt_id: Option<String>,
    /// The workflow template's name (or `"graph"` for a raw graph).
    pub workflow: String,
    /// Position of the image among the job's outputs, from 0.
    pub image_index: u32,
    /// Where the image is stored, e.g. `"{job_id}/0.png"`.
    pub storage_key: String,
    /// Where clients download the image.
    pub url: String,
    /// Width in pixels, where the format says it cheaply (images, MP4/MOV); `null` otherwise.
    pub width: Option<u32>,
    /// Height in pixels, like `width`.
    pub height: Option<u32>,
    /// Size of the stored file in bytes.
    pub bytes: u64,
    /// What the file is: `image`, `video`, `audio`, `model` or `other` (see
    /// [`crate::media::Kind`]). Rows written before outputs had kinds read as `image`.
    #[serde(default = "image_kind")]
    pub kind: String,
    /// The file's MIME type, e.g. `video/mp4`. Empty in rows written before it was recorded
    /// (see [`ImageRecord::fill_in_content_type`]).
    #[serde(default)]
    pub content_type: String,
    /// The seed used, if the workflow has one.
    pub seed: Option<u64>,
    /// The parameters as resolved for this job.
    pub params: serde_json::Value,
    /// When the image was stored, RFC 3339 in UTC.
    pub created_at: String,
}

fn image_kind() -> String {
    crate::media::Kind::Image.as_str().to_string()
}

impl ImageRecord {
    /// Gives a row read from an older spool manifest, which had no `content_type`, the type its
    /// storage key's extension names.
    pub fn fill_in_content_type(&mut self) {
        if self.content_type.is_empty() {
            self.content_type = crate::media::content_type_for_key(&self.storage_key).to_string();
        }
    }
}

/// How often and how patiently to retry a transient failure.
///
/// The wait before retry `n` (counting from 1) is `initial_backoff * 2^(n-1)`, capped at
/// `max_backoff`. With the default (4 attempts, 500 ms, 8 s cap) a call gives up after about
/// 3.5 s of waiting plus the attempts themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries, the first one included; 0 is treated as 1.
    pub attempts: u32,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Longest wait between two tries.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first retry).
    pub fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }

    /// Runs `op` until it succeeds, fails permanently, or the attempts are used up; sleeping
    /// between tries. `op` receives the attempt number (1, 2, ...), so it can tell a first try
    /// from a retry. Returns the last error when giving up.
    pub fn run<T>(
        &self,
        mut op: impl FnMut(u32) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let attempts = self.attempts.max(1);
        let mut attempt = 1;
        loop {
            match op(attempt) {
                Ok(value) => return Ok(value),
                Err(error) if error.is_transient() && attempt < attempts => {
                    let wait = self.backoff(attempt);
                    log::warn!(
                        "{error}; retrying in {} ms (attempt {} of {attempts})",
                        wait.as_millis(),
                        attempt + 1
                    );
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// What kind of failure a [`StorageError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The service answered with an error (see [`StorageError::status`] and
    /// [`StorageError::code`]).
    Rejected,
    /// The service could not be reached or did not answer in time (connection refused or reset,
    /// timeout, DNS failure): always transient.
    Unreachable,
    /// Reading or writing local files failed.
    Io,
    /// The request could not be made or the answer made no sense (bad URL, bad key, unexpected
    /// response body): retrying will not help.
    Invalid,
}

/// A storage operation that failed, with enough context to show a person and to decide whether
/// to retry.
///
/// Displays as one sentence, e.g. `uploading 3f2a…/0.png to Supabase: 503 Service Unavailable:
/// upstream connect error`. For Supabase Storage, which answers every error with HTTP 400 and
/// the real status as a string in the body's `statusCode`, [`StorageError::status`] is that real
/// status and [`StorageError::http_status`] the one on the wire. Never contains the API key.
#[derive(Debug)]
pub struct StorageError {
    operation: String,
    kind: ErrorKind,
    message: String,
    http_status: Option<u16>,
    status_code: Option<String>,
    code: Option<String>,
    source: Option<Box<dyn Error + Send + Sync + 'static>>,
}

impl StorageError {
    /// The service answered `http_status` with an error body; `status_code` is Supabase
    /// Storage's `statusCode` field, `code` the machine-readable code (`NoSuchBucket`,
    /// `23505`, ...), `message` the service's own message.
    pub fn rejected(
        operation: impl Into<String>,
        http_status: u16,
        status_code: Option<String>,
        code: Option<String>,
        message: impl Into<String>,
    ) -> StorageError {
        StorageError {
            operation: operation.into(),
            kind: ErrorKind::Rejected,
            message: message.into(),
            http_status: Some(http_status),
            status_code,
            code,
            source: None,
        }
    }

    /// The service could not be reached; transient.
    pub fn unreachable(
        operation: impl Into<String>,
        source: impl Into<Box<dyn Error + Send + Sync + 'static>>,
    ) -> StorageError {
        let source = source.into();
        StorageError {
            operation: operation.into(),
            kind: ErrorKind::Unreachable,
            message: source.to_string(),
            http_status: None,
            status_code: None,
            code: None,
            source: Some(source),
        }
    }

    /// A local file operation failed.
    pub fn io(operation: impl Into<String>, source: io::Error) -> StorageError {
        StorageError {
            operation: operation.into(),
            kind: ErrorKind::Io,
            message: source.to_string(),
            http_status: None,
            status_code: None,
            code: None,
            source: Some(Box::new(source)),
        }
    }

    /// The request could not be made or its answer not understood; permanent.
    pub fn invalid(operation: impl Into<String>, message: impl Into<String>) -> StorageError {
        StorageError {
            operation: operation.into(),
            kind: ErrorKind::Invalid,
            message: message.into(),
            http_status: None,
            status_code: None,
            code: None,
            source: None,
        }
    }

    /// What was being done, e.g. `uploading 3f2a…/0.png to Supabase`.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The HTTP status on the wire, when the service answered.
    pub fn http_status(&self) -> Option<u16> {
        self.http_status
    }

    /// Supabase Storage's `statusCode` body field (the real status as a string), if present.
    pub fn status_code(&self) -> Option<&str> {
        self.status_code.as_deref()
    }

    /// The status that describes the failure: `statusCode` when it is a number, else the HTTP
    /// status.
    pub fn status(&self) -> Option<u16> {
        self.status_code
            .as_deref()
            .and_then(|s| s.trim().parse().ok())
            .or(self.http_status)
    }

    /// The machine-readable error code (`NoSuchBucket`, `KeyAlreadyExists`, `PGRST205`,
    /// `23505`, ...), if the service sent one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The service's own message, or a description of the local or connection failure.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether trying again at once may succeed: connection failures, timeouts, 408, 429 and
    /// 5xx. Other 4xx answers and local failures will not get better by retrying now.
    pub fn is_transient(&self) -> bool {
        match self.kind {
            ErrorKind::Unreachable => true,
            ErrorKind::Rejected => {
                matches!(self.status(), Some(408) | Some(429) | Some(500..=599))
            }
            ErrorKind::Io | ErrorKind::Invalid => false,
        }
    }

    /// Whether the service refused the request in a way no later attempt can change until
    /// someone fixes the cause: a 4xx answer other than 408 and 429 (an object over the
    /// bucket's size limit, a key refused, a missing bucket or table, a key without rights).
    /// The spool keeps such files but stops retrying them (see `spool::Spool::mark_refused`).
    pub fn is_refusal(&self) -> bool {
        self.kind == ErrorKind::Rejected
            && matches!(self.status(), Some(400..=499))
            && !self.is_transient()
    }

    /// What a person can do about a refusal, when the answer says: e.g. raise the bucket's
    /// file size limit for `413 EntityTooLarge`.
    pub fn hint(&self) -> Option<&'static str> {
        if !self.is_refusal() {
            return None;
        }
        Some(match (self.status(), self.code()) {
            (Some(413), _) | (_, Some("EntityTooLarge")) => {
                "the file is larger than the storage bucket's file size limit: raise the limit \
                 (in Supabase: the bucket's settings, and the project's upload limit)"
            }
            (_, Some("InvalidKey")) => "storage does not accept this object name",
            (_, Some("NoSuchBucket")) => "create the bucket SUPABASE_BUCKET names",
            (Some(401) | Some(403), _) => {
                "SUPABASE_KEY is not allowed to do this: use the service-role key"
            }
            _ => "storage refuses this request as it is",
        })
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.operation)?;
        match self.kind {
            ErrorKind::Rejected => {
                if let Some(status) = self.status() {
                    write!(f, "{status}")?;
                    if let Some(reason) = reason_phrase(status) {
                        write!(f, " {reason}")?;
                    }
                    write!(f, ": ")?;
                }
                write!(f, "{}", self.message)?;
                if let Some(code) = &self.code {
                    write!(f, " ({code})")?;
                }
                Ok(())
            }
            ErrorKind::Unreachable => write!(f, "no answer from the server: {}", self.message),
            ErrorKind::Io | ErrorKind::Invalid => write!(f, "{}", self.message),
        }
    }
}

impl Error for StorageError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn Error + 'static))
    }
}

/// `"1 row"`, `"3 rows"`: counts in messages that read as sentences.
pub(crate) fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The standard reason phrase for the statuses Supabase is known to send.
pub fn reason_phrase(status: u16) -> Option<&'static str> {
    Some(match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(1), Duration::from_millis(500));
        assert_eq!(policy.backoff(2), Duration::from_secs(1));
        assert_eq!(policy.backoff(5), Duration::from_secs(8));
        assert_eq!(policy.backoff(40), Duration::from_secs(8));
    }

    #[test]
    fn run_retries_transient_failures_only() {
        let policy = RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        };
        let mut seen = Vec::new();
        let result: Result<(), _> = policy.run(|attempt| {
            seen.push(attempt);
            Err(StorageError::rejected("op", 503, None, None, "busy"))
        });
        assert!(result.is_err());
        assert_eq!(seen, [1, 2, 3]);

        let mut tries = 0;
        let result: Result<(), _> = policy.run(|_| {
            tries += 1;
            Err(StorageError::rejected(
                "op",
                400,
                Some("404".into()),
                None,
                "gone",
            ))
        });
        assert_eq!(result.map_err(|e| e.status()), Err(Some(404)));
        assert_eq!(tries, 1);
    }

    #[test]
    fn refusals_are_told_from_failures_that_can_pass() {
        let too_large = StorageError::rejected(
            "uploading j/0.mp4 to Supabase",
            400,
            Some("413".into()),
            Some("EntityTooLarge".into()),
            "The object exceeded the maximum allowed size",
        );
        assert!(too_large.is_refusal() && !too_large.is_transient());
        assert!(too_large.hint().is_some_and(|h| h.contains("size limit")));
        let invalid_key = StorageError::rejected(
            "op",
            400,
            Some("400".into()),
            Some("InvalidKey".into()),
            "Invalid key: j/{x}.png",
        );
        assert!(invalid_key.is_refusal());
        for status in [408, 429, 500, 503] {
            let passing = StorageError::rejected("op", status, None, None, "later");
            assert!(!passing.is_refusal() && passing.is_transient(), "{status}");
            assert_eq!(passing.hint(), None);
        }
        let down = StorageError::unreachable("op", "connection refused");
        assert!(!down.is_refusal());
        let disk = StorageError::io("op", io::Error::other("disk full"));
        assert!(!disk.is_refusal());
    }

    #[test]
    fn storage_status_code_decides_over_http_status() {
        let error = StorageError::rejected(
            "uploading j/0.png to Supabase",
            400,
            Some("503".into()),
            None,
            "busy",
        );
        assert!(error.is_transient());
        assert_eq!(error.http_status(), Some(400));
        assert_eq!(
            error.to_string(),
            "uploading j/0.png to Supabase: 503 Service Unavailable: busy"
        );

        let error = StorageError::rejected(
            "uploading j/0.png to Supabase",
            400,
            Some("404".into()),
            Some("NoSuchBucket".into()),
            "Bucket not found",
        );
        assert!(!error.is_transient());
        assert_eq!(
            error.to_string(),
            "uploading j/0.png to Supabase: 404 Not Found: Bucket not found (NoSuchBucket)"
        );
    }

    #[test]
    fn seeds_serialize_as_exact_integers() {
        let record = ImageRecord {
            id: "i".into(),
            job_id: "j".into(),
            prompt_id: None,
            workflow: "txt2img".into(),
            image_index: 0,
            storage_key: "j/0.png".into(),
            url: "u".into(),
            width: Some(1),
            height: Some(1),
            bytes: 1,
            kind: "image".into(),
            content_type: "image/png".into(),
            seed: Some(u64::MAX),
            params: serde_json::json!({}),
            created_at: "2026-01-01T00:00:00Z".into(),
        };
        let json = serde_json::to_string(&record).expect("a record always serializes");
        assert!(json.contains("\"seed\":18446744073709551615"), "{json}");
        let back: ImageRecord = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, record);
    }

    #[test]
    fn rows_written_before_kinds_existed_still_read() {
        let old = r#"{"id":"i","job_id":"j","prompt_id":null,"workflow":"w","image_index":0,
            "storage_key":"j/0.jpg","url":"u","width":64,"height":48,"bytes":9,"seed":null,
            "params":{},"created_at":"2026-01-01T00:00:00Z"}"#;
        let mut row: ImageRecord = serde_json::from_str(old).expect("an old row");
        assert_eq!((row.kind.as_str(), row.width), ("image", Some(64)));
        row.fill_in_content_type();
        assert_eq!(row.content_type, "image/jpeg");
        // A sound has no size: null, not 0x0.
        row.width = None;
        let json = serde_json::to_value(&row).expect("serializes");
        assert_eq!(json["width"], serde_json::Value::Null);
    }
}
