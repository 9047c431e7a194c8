//! [`ComfyClient`]: ComfyUI's HTTP endpoints over ureq, with timeouts and error bodies kept.
//!
//! Two ureq defaults do not suit ComfyUI and are changed here: 4xx/5xx are not turned into bodiless
//! errors (a `/prompt` 400 carries `node_errors`, the one thing that explains a rejection), and
//! nothing waits forever (connect and per-call timeouts from [`ClientOptions`]).

use std::io::Read;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use ureq::http::Response;
use ureq::typestate::{WithBody, WithoutBody};
use ureq::{Body, RequestBuilder};

use super::error::{MAX_ERROR_BODY, truncate};
use super::messages::HistoryEntry;
use super::url::BaseUrl;
use super::{ComfyError, ImageRef};
use crate::ids::PromptId;

/// Largest image [`ComfyClient::get_image`] accepts. ureq's default (10 MB) is smaller than a
/// 2048×2048 PNG; this is far above any image ComfyUI makes and still bounds memory.
pub const MAX_IMAGE_BYTES: u64 = 512 * 1024 * 1024;

/// Largest JSON answer accepted. `/queue` and `/history` embed whole graphs, so allow more than
/// ureq's 10 MB default.
const MAX_JSON_BYTES: u64 = 64 * 1024 * 1024;

/// Timeouts for one [`ComfyClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// Longest wait for the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest a whole call may take: connecting, sending, and reading the full answer
    /// (an image download included).
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    /// 5 s to connect, 60 s per call.
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// ComfyUI's answer to an accepted `POST /prompt`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedPrompt {
    /// The id ComfyUI gave the prompt; websocket events and `/history` use it.
    pub prompt_id: PromptId,
    /// Its number in ComfyUI's queue order (negative for prompts queued with `"front": true`).
    pub number: i64,
    /// Validation errors of outputs ComfyUI dropped while still running the others; usually
    /// `{}`.
    pub node_errors: Value,
}

/// ComfyUI's queue at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueSnapshot {
    /// Prompts running now (at most one in stock ComfyUI).
    pub running: Vec<PromptId>,
    /// Prompts waiting, as `(number, prompt_id)`, in the order ComfyUI will run them.
    pub pending: Vec<(i64, PromptId)>,
}

impl QueueSnapshot {
    /// How many prompts are ahead of `prompt_id`: 0 when it runs or runs next, `None` when it is
    /// in neither list (finished, deleted, or never queued).
    pub fn position_of(&self, prompt_id: &PromptId) -> Option<usize> {
        if self.running.contains(prompt_id) {
            return Some(0);
        }
        let index = self.pending.iter().position(|(_, id)| id == prompt_id)?;
        Some(self.running.len() + index)
    }
}

/// A client for one ComfyUI instance's HTTP API.
///
/// Cheap to clone (clones share a connection pool), and `Send + Sync`. Every call is bounded by
/// the [`ClientOptions`] timeouts.
#[derive(Clone)]
pub struct ComfyClient {
    base: String,
    agent: ureq::Agent,
    opts: ClientOptions,
}

impl std::fmt::Debug for ComfyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComfyClient")
            .field("base", &self.base)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl ComfyClient {
    /// A client for the ComfyUI at `base_url` (`http://host:port`, optionally with a path prefix
    /// and a trailing slash; `https` works for HTTP, see [`Monitor`](super::Monitor) for the
    /// websocket). Fails only when the URL is unusable; nothing is contacted yet.
    pub fn new(base_url: &str, opts: ClientOptions) -> Result<ComfyClient, ComfyError> {
        let base = BaseUrl::parse(base_url)?.http_base();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_per_call(Some(opts.request_timeout))
            .user_agent(concat!("comfyui-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(ComfyClient { base, agent, opts })
    }

    /// The normalised base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Queues `graph` (an API-format graph) for `client_id`, whose websocket receives its
    /// execution events.
    ///
    /// A graph ComfyUI's validation refuses gives [`ComfyError::Rejected`] with its
    /// `node_errors`.
    pub fn queue_prompt(&self, graph: &Value, client_id: &str) -> Result<QueuedPrompt, ComfyError> {
        #[derive(serde::Serialize)]
        struct PromptRequest<'a> {
            prompt: &'a Value,
            client_id: &'a str,
        }
        #[derive(Deserialize)]
        struct Accepted {
            prompt_id: PromptId,
            number: i64,
            #[serde(default)]
            node_errors: Value,
        }
        let url = self.url("/prompt");
        let body = serde_json::to_vec(&PromptRequest {
            prompt: graph,
            client_id,
        })
        .map_err(|e| ComfyError::InvalidInput {
            reason: format!("the graph cannot be written as JSON: {e}"),
        })?;
        let mut response = self.send(&url, self.agent.post(&url).content_type(JSON), body)?;
        if response.status().as_u16() == 400 {
            let body = read_error_body(&mut response);
            return Err(rejection(&body).unwrap_or_else(|| status_error(&url, 400, body)));
        }
        let accepted: Accepted = parse_json(&url, self.json_body(&url, response)?)?;
        Ok(QueuedPrompt {
            prompt_id: accepted.prompt_id,
            number: accepted.number,
            node_errors: accepted.node_errors,
        })
    }

    /// The history entry of `prompt_id`: `None` while ComfyUI does not know it or it has not
    /// finished, `Some` once it has.
    pub fn get_history(&self, prompt_id: &PromptId) -> Result<Option<HistoryEntry>, ComfyError> {
        let url = self.url(&format!(
            "/history/{}",
            super::url::percent_encode(&prompt_id.0)
        ));
        let response = self.call(&url, self.agent.get(&url))?;
        let body = self.json_body(&url, response)?;
        let Value::Object(entries) = body else {
            return Err(bad_response(&url, "the history is not a JSON object"));
        };
        match entries.get(prompt_id.as_str()) {
            None => Ok(None),
            Some(entry) => HistoryEntry::from_value(entry)
                .map(Some)
                .map_err(|reason| bad_response(&url, &reason)),
        }
    }

    /// Downloads one image ComfyUI wrote (`GET /view`), whole, up to [`MAX_IMAGE_BYTES`].
    pub fn get_image(&self, image: &ImageRef) -> Result<Vec<u8>, ComfyError> {
        let url = self.url("/view");
        let request = self
            .agent
            .get(&url)
            .query("filename", &image.filename)
            .query("subfolder", &image.subfolder)
            .query("type", &image.kind);
        let response = self.call(&url, request)?;
        let mut response = self.expect_success(&url, response)?;
        response
            .body_mut()
            .with_config()
            .limit(MAX_IMAGE_BYTES)
            .read_to_vec()
            .map_err(|e| self.transport_error(&url, e))
    }

    /// Uploads an image into ComfyUI's `input` folder for a `LoadImage` node, and returns the
    /// name to put in that node's `image` input (`subfolder/name` when ComfyUI used a subfolder).
    ///
    /// Sends `overwrite=true`: the caller picks unique names (the gateway uses the job id), so
    /// overwriting only ever replaces an earlier attempt of the same upload, and a retry cannot
    /// pile up `name (1).png` copies. `filename` must not contain quotes, slashes or control
    /// characters.
    pub fn upload_image(
        &self,
        bytes: &[u8],
        filename: &str,
        content_type: &str,
    ) -> Result<String, ComfyError> {
        #[derive(Deserialize)]
        struct Uploaded {
            name: String,
            #[serde(default)]
            subfolder: String,
        }
        let url = self.url("/upload/image");
        let form = Multipart::image_upload(bytes, filename, content_type)?;
        let request = self.agent.post(&url).content_type(form.content_type());
        let response = self.send(&url, request, form.body)?;
        let uploaded: Uploaded = parse_json(&url, self.json_body(&url, response)?)?;
        Ok(match uploaded.subfolder.trim_matches('/') {
            "" => uploaded.name,
            subfolder => format!("{subfolder}/{}", uploaded.name),
        })
    }

    /// Stops what ComfyUI runs now; with `prompt_id`, newer versions stop only that prompt (older
    /// ones ignore the body and stop whatever runs).
    pub fn interrupt(&self, prompt_id: Option<&PromptId>) -> Result<(), ComfyError> {
        let body = match prompt_id {
            Some(id) => json!({ "prompt_id": id }),
            None => json!({}),
        };
        self.post_json_expect_success("/interrupt", &body)
    }

    /// Removes prompts that are still waiting from the queue; running ones are not affected (use
    /// [`interrupt`](Self::interrupt)). Does nothing for an empty list.
    pub fn delete_from_queue(&self, prompt_ids: &[PromptId]) -> Result<(), ComfyError> {
        if prompt_ids.is_empty() {
            return Ok(());
        }
        self.post_json_expect_success("/queue", &json!({ "delete": prompt_ids }))
    }

    /// What runs and what waits in ComfyUI now.
    pub fn get_queue(&self) -> Result<QueueSnapshot, ComfyError> {
        let url = self.url("/queue");
        let response = self.call(&url, self.agent.get(&url))?;
        let body = self.json_body(&url, response)?;
        Ok(queue_snapshot(&body))
    }

    /// `GET /system_stats`: versions, RAM and devices. Cheap, so it doubles as a liveness probe.
    pub fn system_stats(&self) -> Result<Value, ComfyError> {
        let url = self.url("/system_stats");
        let response = self.call(&url, self.agent.get(&url))?;
        self.json_body(&url, response)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a bodiless request, mapping transport failures.
    fn call(
        &self,
        url: &str,
        request: RequestBuilder<WithoutBody>,
    ) -> Result<Response<Body>, ComfyError> {
        request.call().map_err(|e| self.transport_error(url, e))
    }

    /// Sends a request with `body`, mapping transport failures.
    fn send(
        &self,
        url: &str,
        request: RequestBuilder<WithBody>,
        body: impl ureq::AsSendBody,
    ) -> Result<Response<Body>, ComfyError> {
        request.send(body).map_err(|e| self.transport_error(url, e))
    }

    fn post_json_expect_success(&self, path: &str, body: &Value) -> Result<(), ComfyError> {
        let url = self.url(path);
        let request = self.agent.post(&url).content_type(JSON);
        let response = self.send(&url, request, body.to_string())?;
        self.expect_success(&url, response).map(drop)
    }

    /// Passes 2xx answers through; turns others into [`ComfyError::Status`] with their body.
    fn expect_success(
        &self,
        url: &str,
        mut response: Response<Body>,
    ) -> Result<Response<Body>, ComfyError> {
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        Err(status_error(url, status, read_error_body(&mut response)))
    }

    /// The JSON body of a 2xx answer.
    fn json_body(&self, url: &str, response: Response<Body>) -> Result<Value, ComfyError> {
        let mut response = self.expect_success(url, response)?;
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_JSON_BYTES)
            .read_to_vec()
            .map_err(|e| self.transport_error(url, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| bad_response(url, &format!("the body is not JSON ({e})")))
    }

    fn transport_error(&self, url: &str, error: ureq::Error) -> ComfyError {
        let unreachable = |reason: String| ComfyError::Unreachable {
            url: url.to_string(),
            reason,
        };
        match error {
            ureq::Error::Timeout(ureq::Timeout::Connect) => unreachable(format!(
                "no connection within {:?}",
                self.opts.connect_timeout
            )),
            ureq::Error::Timeout(which) => unreachable(format!(
                "no complete answer within {:?} ({which} timeout)",
                self.opts.request_timeout
            )),
            ureq::Error::Io(e) => unreachable(e.to_string()),
            ureq::Error::HostNotFound => unreachable("host not found".to_string()),
            ureq::Error::ConnectionFailed => unreachable("connection failed".to_string()),
            ureq::Error::BodyExceedsLimit(limit) => {
                bad_response(url, &format!("the body is larger than {limit} bytes"))
            }
            other => bad_response(url, &other.to_string()),
        }
    }
}

const JSON: &str = "application/json";

/// The start of an error body, lossily decoded; an unreadable body reads as empty (the status
/// already says what matters).
fn read_error_body(response: &mut Response<Body>) -> String {
    let mut bytes = Vec::new();
    let mut reader = response.body_mut().as_reader().take(64 * 1024);
    if reader.read_to_end(&mut bytes).is_err() {
        bytes.clear();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn status_error(url: &str, status: u16, body: String) -> ComfyError {
    ComfyError::Status {
        url: url.to_string(),
        status,
        body: truncate(body, MAX_ERROR_BODY),
    }
}

fn bad_response(url: &str, reason: &str) -> ComfyError {
    ComfyError::BadResponse {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(url: &str, body: Value) -> Result<T, ComfyError> {
    serde_json::from_value(body).map_err(|e| bad_response(url, &e.to_string()))
}

/// The [`ComfyError::Rejected`] in a `/prompt` 400 body; `None` if the body is not ComfyUI's
/// error shape (then the caller reports the raw status and body).
fn rejection(body: &str) -> Option<ComfyError> {
    let value: Value = serde_json::from_str(body).ok()?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let error = value.get("error")?;
    // Very old versions sent `error` as a bare string.
    let (error_type, message, details) = match error {
        Value::String(message) => (String::new(), message.clone(), String::new()),
        Value::Object(_) => (
            text(&error["type"]),
            text(&error["message"]),
            text(&error["details"]),
        ),
        _ => return None,
    };
    Some(ComfyError::Rejected {
        error_type,
        message,
        details,
        node_errors: value.get("node_errors").cloned().unwrap_or(json!({})),
    })
}

/// Reads `/queue`; items whose number or id cannot be read are skipped.
fn queue_snapshot(body: &Value) -> QueueSnapshot {
    // ITEM = [number, prompt_id, graph, extra_data, outputs_to_execute]
    let items = |key: &str| -> Vec<(i64, PromptId)> {
        body[key]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter_map(|item| {
                let number = item[0].as_i64()?;
                let id = item[1].as_str()?;
                Some((number, PromptId(id.to_string())))
            })
            .collect()
    };
    let mut pending = items("queue_pending");
    // ComfyUI keeps pending prompts in a heap and runs the lowest number first.
    pending.sort_by_key(|(number, _)| *number);
    QueueSnapshot {
        running: items("queue_running")
            .into_iter()
            .map(|(_, id)| id)
            .collect(),
        pending,
    }
}

/// A `multipart/form-data` body, built by hand (ureq's multipart feature is not enabled).
struct Multipart {
    boundary: String,
    body: Vec<u8>,
}

impl Multipart {
    /// The body ComfyUI's `/upload/image` expects: the file as `image`, plus `overwrite=true`
    /// and `type=input`.
    fn image_upload(
        bytes: &[u8],
        filename: &str,
        content_type: &str,
    ) -> Result<Multipart, ComfyError> {
        let unsafe_name = filename.is_empty()
            || filename.contains(['"', '/', '\\'])
            || filename.chars().any(char::is_control);
        if unsafe_name {
            return Err(ComfyError::InvalidInput {
                reason: format!(
                    "cannot upload {filename:?} to ComfyUI: a file name must be non-empty and \
                     free of quotes, slashes and control characters"
                ),
            });
        }
        if content_type.chars().any(char::is_control) {
            return Err(ComfyError::InvalidInput {
                reason: format!("cannot upload with content type {content_type:?}"),
            });
        }
        // A random boundary; regenerate in the (astronomically unlikely) case the image holds it.
        let boundary = loop {
            let candidate = format!("comfyui-gateway-{}", crate::ids::new_uuid());
            if !contains(bytes, candidate.as_bytes()) {
                break candidate;
            }
        };
        let mut body = Vec::with_capacity(bytes.len() + 512);
        let part = |body: &mut Vec<u8>, headers: String| {
            body.extend_from_slice(format!("--{boundary}\r\n{headers}\r\n\r\n").as_bytes());
        };
        part(
            &mut body,
            format!(
                "Content-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n\
                 Content-Type: {content_type}"
            ),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
        for (name, value) in [("overwrite", "true"), ("type", "input")] {
            part(
                &mut body,
                format!("Content-Disposition: form-data; name=\"{name}\""),
            );
            body.extend_from_slice(value.as_bytes());
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        Ok(Multipart { boundary, body })
    }

    fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
