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
use super::messages::{HistoryEntry, trim_end_owned, trim_texts};
use super::url::BaseUrl;
use super::{ComfyError, ImageRef};
use crate::ids::PromptId;

/// Largest image [`ComfyClient::get_image`] accepts. ureq's default (10 MB) is smaller than a
/// 2048×2048 PNG; this is far above any image ComfyUI makes and still bounds memory.
pub const MAX_IMAGE_BYTES: u64 = 512 * 1024 * 1024;

/// Largest output file [`ComfyClient::open_file`] streams: far above any video ComfyUI makes,
/// and still a bound on the disk a runaway answer can fill.
pub const MAX_OUTPUT_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// Largest JSON answer accepted. `/queue` and `/history` embed whole graphs, so allow more than
/// ureq's 10 MB default.
const MAX_JSON_BYTES: u64 = 64 * 1024 * 1024;

/// Timeouts for one [`ComfyClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// Longest wait for the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest a whole API call may take (`/prompt`, `/history`, `/queue`, ...): connecting,
    /// sending, and reading the full answer. Short, so that a hung ComfyUI is noticed quickly.
    pub request_timeout: Duration,
    /// Longest an image transfer (`/view`, `/upload/image`) may take, body included.
    pub transfer_timeout: Duration,
}

impl Default for ClientOptions {
    /// 5 s to connect, 15 s per API call, 5 min per image transfer.
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            transfer_timeout: Duration::from_secs(300),
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
    /// Validation errors of outputs ComfyUI dropped while still running the others (a partial
    /// graph); usually `{}`. [`dropped_outputs`](super::dropped_outputs) turns them into
    /// warnings naming each output node that will not run.
    pub node_errors: Value,
}

/// A file streaming from ComfyUI's `/view` (see [`ComfyClient::open_file`]): read it like any
/// reader; errors are the connection's (timeout, cut short, larger than [`MAX_OUTPUT_BYTES`]).
pub struct FileDownload {
    reader: ureq::BodyReader<'static>,
    /// The size ComfyUI announced, if it did.
    pub content_length: Option<u64>,
}

impl std::fmt::Debug for FileDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDownload")
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

impl Read for FileDownload {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reader.read(buf)
    }
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

    /// How long connecting to this ComfyUI may take (also used for its websocket).
    pub fn connect_timeout(&self) -> Duration {
        self.opts.connect_timeout
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
        self.queue_prompt_with(graph, client_id, None)
    }

    /// Like [`ComfyClient::queue_prompt`], with `/prompt`'s `extra_data` (a partner node's API
    /// key, from a v2 submission). The caller keeps it out of logs and records; so does this.
    pub fn queue_prompt_with(
        &self,
        graph: &Value,
        client_id: &str,
        extra_data: Option<&Value>,
    ) -> Result<QueuedPrompt, ComfyError> {
        #[derive(serde::Serialize)]
        struct PromptRequest<'a> {
            prompt: &'a Value,
            client_id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            extra_data: Option<&'a Value>,
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
            extra_data,
        })
        .map_err(|e| ComfyError::InvalidInput {
            reason: format!("the graph cannot be written as JSON: {e}"),
        })?;
        let mut response = self.send(&url, self.agent.post(&url).content_type(JSON), body)?;
        if response.status().as_u16() == 400 {
            let body = read_error_body(&mut response);
            return Err(rejection(&body).unwrap_or_else(|| status_error(&url, 400, body)));
        }
        // A 2xx must carry the prompt's id; anything else (a proxy's page, a broken custom
        // node's answer) is reported with its status and the start of its body.
        let mut response = self.expect_success(&url, response)?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_JSON_BYTES)
            .read_to_vec()
            .map_err(|e| self.transport_error(&url, e))?;
        let accepted: Accepted = serde_json::from_slice(&bytes).map_err(|e| {
            let body = truncate(String::from_utf8_lossy(&bytes).into_owned(), 200);
            bad_response(
                &url,
                &format!("HTTP {status} without a prompt_id ({e}): {}", body.trim()),
            )
        })?;
        Ok(QueuedPrompt {
            prompt_id: accepted.prompt_id,
            number: accepted.number,
            node_errors: trim_texts(accepted.node_errors),
        })
    }

    /// The history entry of `prompt_id`: `None` while ComfyUI does not know it or it has not
    /// finished, `Some` once it has.
    pub fn get_history(&self, prompt_id: &PromptId) -> Result<Option<HistoryEntry>, ComfyError> {
        let url = self.url(&format!(
            "/history/{}",
            crate::percent::encode(&prompt_id.0)
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
            .query("type", &image.kind)
            .config()
            .timeout_per_call(Some(self.opts.transfer_timeout))
            .build();
        let response = self.call(&url, request)?;
        let mut response = self.expect_success(&url, response)?;
        response
            .body_mut()
            .with_config()
            .limit(MAX_IMAGE_BYTES)
            .read_to_vec()
            .map_err(|e| self.transport_error(&url, e))
    }

    /// Opens one file ComfyUI wrote (`GET /view`) for streaming: the answer's status is checked,
    /// its body is read as it arrives, never held whole, up to [`MAX_OUTPUT_BYTES`]. Reading
    /// stops with an error when the transfer timeout expires or the body is cut short.
    pub fn open_file(&self, file: &ImageRef) -> Result<FileDownload, ComfyError> {
        let url = self.url("/view");
        let request = self
            .agent
            .get(&url)
            .query("filename", &file.filename)
            .query("subfolder", &file.subfolder)
            .query("type", &file.kind)
            .config()
            .timeout_per_call(Some(self.opts.transfer_timeout))
            .build();
        let response = self.call(&url, request)?;
        let response = self.expect_success(&url, response)?;
        let content_length = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let reader = response
            .into_body()
            .into_with_config()
            .limit(MAX_OUTPUT_BYTES)
            .reader();
        Ok(FileDownload {
            reader,
            content_length,
        })
    }

    /// Uploads an image into ComfyUI's `input` folder for a `LoadImage` node, and returns the
    /// name to put in that node's `image` input (`subfolder/name` when ComfyUI used a subfolder).
    ///
    /// Sends `overwrite=true`: the caller picks names that stand for the content (the gateway
    /// uses the blake3 hash of the file), so overwriting only ever replaces a file with the same
    /// bytes, and a retry cannot pile up `name (1).png` copies. `filename` must not contain
    /// quotes, slashes or control characters.
    pub fn upload_image(
        &self,
        bytes: &[u8],
        filename: &str,
        content_type: &str,
    ) -> Result<String, ComfyError> {
        self.upload_input(bytes, "", filename, content_type)
    }

    /// Like [`upload_image`](Self::upload_image), into `subfolder` of ComfyUI's `input` folder
    /// (`""`: the folder itself); the name returned is `subfolder/filename` as `LoadImage`
    /// expects it. `subfolder` must not contain quotes, backslashes, `..` or control characters.
    pub fn upload_input(
        &self,
        bytes: &[u8],
        subfolder: &str,
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
        let form = Multipart::image_upload(bytes, subfolder, filename, content_type)?;
        let request = self
            .agent
            .post(&url)
            .content_type(form.content_type())
            .config()
            .timeout_per_call(Some(self.opts.transfer_timeout))
            .build();
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

    /// `GET /object_info`: every node class ComfyUI knows, keyed by class name, with its inputs
    /// (`input.required` / `input.optional`: name → `[type or list of choices, options]`).
    /// Large on a real install (megabytes with custom nodes); prefer
    /// [`node_info`](Self::node_info) for a few classes.
    pub fn object_info(&self) -> Result<Value, ComfyError> {
        let url = self.url("/object_info");
        let response = self.call(&url, self.agent.get(&url))?;
        self.json_body(&url, response)
    }

    /// `GET /object_info/{class}`: one node class's definition, or `None` when this ComfyUI has
    /// no such class (a custom node that is not installed).
    pub fn node_info(&self, class: &str) -> Result<Option<Value>, ComfyError> {
        let url = self.url(&format!("/object_info/{}", crate::percent::encode(class)));
        let response = self.call(&url, self.agent.get(&url))?;
        match self.json_body(&url, response)? {
            Value::Object(mut classes) => Ok(classes.remove(class)),
            _ => Err(bad_response(
                &url,
                "the node definition is not a JSON object",
            )),
        }
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
    let mut reader = response.body_mut().as_reader().take(1024 * 1024);
    if reader.read_to_end(&mut bytes).is_err() {
        bytes.clear();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn status_error(url: &str, status: u16, body: String) -> ComfyError {
    ComfyError::Status {
        url: url.to_string(),
        status,
        body: truncate(trim_end_owned(body), MAX_ERROR_BODY),
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
    let text = |v: &Value| v.as_str().unwrap_or_default().trim_end().to_string();
    let error = value.get("error")?;
    // Very old versions sent `error` as a bare string.
    let (error_type, message, details, extra_info) = match error {
        Value::String(message) => (
            String::new(),
            message.trim_end().to_string(),
            String::new(),
            json!({}),
        ),
        Value::Object(fields) => (
            text(&error["type"]),
            text(&error["message"]),
            text(&error["details"]),
            fields.get("extra_info").cloned().unwrap_or(json!({})),
        ),
        _ => return None,
    };
    Some(ComfyError::Rejected {
        error_type,
        message,
        details,
        node_errors: trim_texts(value.get("node_errors").cloned().unwrap_or(json!({}))),
        extra_info: Box::new(trim_texts(extra_info)),
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
        subfolder: &str,
        filename: &str,
        content_type: &str,
    ) -> Result<Multipart, ComfyError> {
        let unsafe_folder = subfolder.contains(['"', '\\'])
            || subfolder.split('/').any(|part| part == "..")
            || subfolder.chars().any(char::is_control);
        if unsafe_folder {
            return Err(ComfyError::InvalidInput {
                reason: format!(
                    "cannot upload into {subfolder:?} of ComfyUI's input folder: a subfolder must \
                     be free of quotes, backslashes, '..' and control characters"
                ),
            });
        }
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
        let fields = [
            ("overwrite", "true"),
            ("type", "input"),
            ("subfolder", subfolder),
        ];
        for (name, value) in fields.into_iter().filter(|(_, value)| !value.is_empty()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::mpsc::{self, Receiver};
    use std::thread::JoinHandle;

    /// One request as the fake ComfyUI saw it.
    struct Recorded {
        method: String,
        url: String,
        content_type: String,
        body: Vec<u8>,
    }

    /// What the fake ComfyUI answers.
    struct Reply {
        status: u16,
        body: Vec<u8>,
    }

    fn reply(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            body: body.into(),
        }
    }

    /// A tiny HTTP server on 127.0.0.1 that records each request and answers with `handler`.
    struct FakeComfy {
        server: Arc<tiny_http::Server>,
        base: String,
        requests: Receiver<Recorded>,
        thread: Option<JoinHandle<()>>,
    }

    impl FakeComfy {
        fn start(handler: impl Fn(&Recorded) -> Reply + Send + 'static) -> FakeComfy {
            let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
            let port = server.server_addr().to_ip().expect("tcp").port();
            let (tx, requests) = mpsc::channel();
            let serving = Arc::clone(&server);
            let thread = std::thread::spawn(move || {
                while let Ok(mut request) = serving.recv() {
                    let mut body = Vec::new();
                    request.as_reader().read_to_end(&mut body).expect("body");
                    let content_type = request
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("Content-Type"))
                        .map(|h| h.value.to_string())
                        .unwrap_or_default();
                    let recorded = Recorded {
                        method: request.method().to_string(),
                        url: request.url().to_string(),
                        content_type,
                        body,
                    };
                    let answer = handler(&recorded);
                    let response =
                        tiny_http::Response::from_data(answer.body).with_status_code(answer.status);
                    // The client may have given up (timeout tests); that is its business.
                    let _ = request.respond(response);
                    if tx.send(recorded).is_err() {
                        break;
                    }
                }
            });
            FakeComfy {
                server,
                base: format!("http://127.0.0.1:{port}"),
                requests,
                thread: Some(thread),
            }
        }

        fn client(&self) -> ComfyClient {
            ComfyClient::new(&self.base, ClientOptions::default()).expect("valid URL")
        }

        /// The next request the server saw (it has been answered by the time a call returns).
        fn next_request(&self) -> Recorded {
            self.requests
                .recv_timeout(Duration::from_secs(5))
                .expect("a request was recorded")
        }
    }

    impl Drop for FakeComfy {
        fn drop(&mut self) {
            self.server.unblock();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    #[test]
    fn queue_prompt_sends_graph_and_client_id_and_reads_the_answer() {
        let fake = FakeComfy::start(|_| {
            reply(
                200,
                r#"{"prompt_id": "p-1", "number": 7, "node_errors": {}}"#,
            )
        });
        let graph = json!({"3": {"class_type": "KSampler",
            "inputs": {"seed": u64::MAX, "steps": 20}}});
        let queued = fake
            .client()
            .queue_prompt(&graph, "client-1")
            .expect("accepted");
        assert_eq!(queued.prompt_id, PromptId("p-1".into()));
        assert_eq!(queued.number, 7);

        let request = fake.next_request();
        assert_eq!(
            (request.method.as_str(), request.url.as_str()),
            ("POST", "/prompt")
        );
        assert_eq!(request.content_type, "application/json");
        let sent: Value = serde_json::from_slice(&request.body).expect("JSON body");
        assert_eq!(sent, json!({"prompt": graph, "client_id": "client-1"}));
        // Seeds are u64: the largest must arrive digit for digit, not rounded through f64.
        let text = String::from_utf8(request.body).expect("utf-8");
        assert!(text.contains("18446744073709551615"), "{text}");
    }

    #[test]
    fn a_prompt_that_fails_validation_is_rejected_with_node_errors() {
        let node_errors = json!({"3": {"errors": [{"type": "value_not_in_list",
            "message": "Value not in list", "details": "ckpt_name: 'x.safetensors' not in []",
            "extra_info": {"input_name": "ckpt_name"}}],
            "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"}});
        let body = json!({"error": {"type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
            "node_errors": node_errors});
        let fake = FakeComfy::start(move |_| reply(400, body.to_string()));
        let err = fake
            .client()
            .queue_prompt(&json!({}), "c")
            .expect_err("rejected");
        let ComfyError::Rejected {
            error_type,
            message,
            node_errors: got,
            ..
        } = &err
        else {
            panic!("expected Rejected, got {err:?}");
        };
        assert_eq!(error_type, "prompt_outputs_failed_validation");
        assert_eq!(message, "Prompt outputs failed validation");
        assert_eq!(got, &node_errors);
        assert!(
            err.to_string().contains("node 3 (CheckpointLoaderSimple)"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_node_class_is_rejected_without_node_errors() {
        let body = json!({"error": {"type": "missing_node_type",
            "message": "Cannot execute because node Foo does not exist.",
            "details": "Node ID '#3'", "extra_info": {}}, "node_errors": {}});
        let fake = FakeComfy::start(move |_| reply(400, body.to_string()));
        let err = fake
            .client()
            .queue_prompt(&json!({}), "c")
            .expect_err("rejected");
        assert_eq!(
            err.to_string(),
            "ComfyUI rejected the prompt (missing_node_type): Cannot execute because node Foo \
             does not exist. [Node ID '#3']"
        );
    }

    #[test]
    fn other_error_statuses_keep_a_truncated_body() {
        let fake = FakeComfy::start(|r| match r.url.as_str() {
            "/prompt" => reply(400, "<html>proxy says no</html>"),
            _ => reply(500, "x".repeat(10_000)),
        });
        let client = fake.client();
        let err = client.queue_prompt(&json!({}), "c").expect_err("400");
        assert!(
            matches!(&err, ComfyError::Status { status: 400, body, .. } if body.contains("proxy")),
            "{err:?}"
        );
        let err = client.system_stats().expect_err("500");
        let ComfyError::Status { status, body, url } = &err else {
            panic!("expected Status, got {err:?}");
        };
        assert_eq!(*status, 500);
        assert!(url.ends_with("/system_stats"));
        assert!(
            body.len() <= MAX_ERROR_BODY + '…'.len_utf8(),
            "{}",
            body.len()
        );
    }

    #[test]
    fn a_closed_port_is_unreachable() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let client = ComfyClient::new(
            &format!("http://127.0.0.1:{port}"),
            ClientOptions::default(),
        )
        .expect("valid URL");
        let err = client.system_stats().expect_err("nothing listens");
        assert!(err.is_unreachable(), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("could not reach ComfyUI at http://127.0.0.1:")
        );
    }

    #[test]
    fn a_server_that_never_answers_times_out_as_unreachable() {
        // Connections complete in the listen backlog, but nobody ever reads or answers.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let opts = ClientOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_millis(300),
            transfer_timeout: Duration::from_millis(300),
        };
        let client = ComfyClient::new(&format!("http://127.0.0.1:{port}"), opts).expect("valid");
        let started = std::time::Instant::now();
        let err = client
            .get_history(&PromptId("p".into()))
            .expect_err("no answer");
        assert!(err.is_unreachable(), "{err:?}");
        assert!(err.to_string().contains("within 300ms"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(listener);
    }

    #[test]
    fn images_larger_than_ureqs_default_limit_arrive_whole() {
        let image: Vec<u8> = (0..11 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let served = image.clone();
        let fake = FakeComfy::start(move |_| reply(200, served.clone()));
        let got = fake
            .client()
            .get_image(&ImageRef {
                filename: "my image&1.png".into(),
                subfolder: "a/b".into(),
                kind: "output".into(),
            })
            .expect("downloaded");
        assert_eq!(got.len(), image.len());
        assert!(got == image, "bytes differ");
        let request = fake.next_request();
        assert_eq!(
            request.url,
            "/view?filename=my%20image%261.png&subfolder=a%2Fb&type=output"
        );
    }

    #[test]
    fn a_200_with_node_errors_is_a_partial_graph_that_keeps_them() {
        let node_errors = json!({"12": {"errors": [{"type": "required_input_missing",
            "message": "Required input is missing", "details": "audio"}],
            "dependent_outputs": ["12"], "class_type": "SaveAudio"}});
        let answer = json!({"prompt_id": "p-2", "number": 3, "node_errors": node_errors});
        let fake = FakeComfy::start(move |_| reply(200, answer.to_string()));
        let graph = json!({"12": {"class_type": "SaveAudio", "inputs": {}}});
        let queued = fake
            .client()
            .queue_prompt(&graph, "client-1")
            .expect("accepted: the other branches run");
        assert_eq!(queued.node_errors, node_errors);
        let warnings = crate::comfyui::dropped_outputs(&queued.node_errors, &graph);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0]["node"], "12");
    }

    #[test]
    fn files_stream_from_view_in_pieces() {
        let video: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
        let served = video.clone();
        let fake = FakeComfy::start(move |_| reply(200, served.clone()));
        let mut download = fake
            .client()
            .open_file(&ImageRef {
                filename: "ComfyUI_00001_.mp4".into(),
                subfolder: "video".into(),
                kind: "output".into(),
            })
            .expect("opened");
        let mut got = Vec::new();
        let mut buffer = [0u8; 64 * 1024];
        let mut reads = 0;
        loop {
            let n = download.read(&mut buffer).expect("readable");
            if n == 0 {
                break;
            }
            reads += 1;
            got.extend_from_slice(&buffer[..n]);
        }
        assert!(got == video, "bytes differ");
        assert!(reads >= video.len() / buffer.len(), "{reads} reads");
        assert_eq!(
            fake.next_request().url,
            "/view?filename=ComfyUI_00001_.mp4&subfolder=video&type=output"
        );

        let fake = FakeComfy::start(|_| reply(404, "gone"));
        let err = fake
            .client()
            .open_file(&ImageRef {
                filename: "gone.mp4".into(),
                subfolder: String::new(),
                kind: "output".into(),
            })
            .expect_err("missing");
        assert!(
            matches!(err, ComfyError::Status { status: 404, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_view_answer_cut_short_is_a_read_error_not_a_shorter_file() {
        // A ComfyUI that announces 100000 bytes, sends 1000 and closes the connection.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("bound"));
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().expect("the client connects");
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                match socket.read(&mut byte) {
                    Ok(1) => request.push(byte[0]),
                    _ => return,
                }
            }
            let head =
                "HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: 100000\r\n\r\n";
            let _ = std::io::Write::write_all(&mut socket, head.as_bytes());
            let _ = std::io::Write::write_all(&mut socket, &[7u8; 1000]);
        });
        let client = ComfyClient::new(&base, ClientOptions::default()).expect("valid URL");
        let mut download = client
            .open_file(&ImageRef {
                filename: "ComfyUI_00001_.mp4".into(),
                subfolder: String::new(),
                kind: "output".into(),
            })
            .expect("the answer starts well");
        assert_eq!(download.content_length, Some(100_000));
        let mut got = Vec::new();
        let error = download
            .read_to_end(&mut got)
            .expect_err("the body ended early");
        assert!(got.len() <= 1000, "{} bytes", got.len());
        assert_ne!(error.kind(), std::io::ErrorKind::Interrupted, "{error}");
        server.join().expect("the fake server ends");
    }

    #[test]
    fn a_missing_image_is_a_404_status() {
        let fake = FakeComfy::start(|_| reply(404, ""));
        let err = fake
            .client()
            .get_image(&ImageRef {
                filename: "gone.png".into(),
                subfolder: String::new(),
                kind: "output".into(),
            })
            .expect_err("missing");
        assert!(
            matches!(err, ComfyError::Status { status: 404, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn history_is_none_until_the_prompt_is_there() {
        let entry = json!({"outputs": {"9": {"images": [
            {"filename": "a.png", "subfolder": "", "type": "output"}]}},
            "status": {"status_str": "success", "completed": true, "messages": []}});
        let fake = FakeComfy::start(move |r| match r.url.as_str() {
            "/history/done" => reply(200, json!({"done": entry}).to_string()),
            "/history/odd" => reply(200, "[1, 2]"),
            "/history/broken" => reply(200, "{not json"),
            _ => reply(200, "{}"),
        });
        let client = fake.client();
        let history = |id: &str| client.get_history(&PromptId(id.into()));
        assert_eq!(history("running").expect("answer"), None);
        let done = history("done").expect("answer").expect("present");
        let first = done.outputs[0].images().next().expect("an image");
        assert_eq!(first.filename, "a.png");
        assert!(matches!(
            history("odd"),
            Err(ComfyError::BadResponse { .. })
        ));
        let err = history("broken").expect_err("not JSON");
        assert!(err.to_string().contains("not JSON"), "{err}");
    }

    /// Splits a multipart body into (headers, content) parts.
    fn multipart_parts(body: &[u8], boundary: &str) -> Vec<(String, Vec<u8>)> {
        let delimiter = format!("\r\n--{boundary}");
        let mut framed = b"\r\n".to_vec();
        framed.extend_from_slice(body);
        let delimiters: Vec<usize> = (0..framed.len())
            .filter(|&i| framed[i..].starts_with(delimiter.as_bytes()))
            .collect();
        let mut parts = Vec::new();
        for pair in delimiters.windows(2) {
            let part = &framed[pair[0] + delimiter.len() + 2..pair[1]];
            let split = part
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("headers end");
            let headers = String::from_utf8(part[..split].to_vec()).expect("utf-8 headers");
            parts.push((headers, part[split + 4..].to_vec()));
        }
        let last = *delimiters.last().expect("closing delimiter");
        assert_eq!(&framed[last + delimiter.len()..], b"--\r\n");
        parts
    }

    #[test]
    fn uploads_are_multipart_with_the_image_and_overwrite() {
        let fake = FakeComfy::start(|_| {
            reply(
                200,
                r#"{"name": "job-1.png", "subfolder": "gateway", "type": "input"}"#,
            )
        });
        // Bytes that look like multipart syntax must pass through untouched.
        let image = b"\x89PNG\r\n\x1a\n--not-a-boundary\r\n\r\n\0\xff".to_vec();
        let name = fake
            .client()
            .upload_image(&image, "job-1.png", "image/png")
            .expect("uploaded");
        assert_eq!(name, "gateway/job-1.png");

        let request = fake.next_request();
        assert_eq!(
            (request.method.as_str(), request.url.as_str()),
            ("POST", "/upload/image")
        );
        let boundary = request
            .content_type
            .strip_prefix("multipart/form-data; boundary=")
            .expect("multipart content type");
        let parts = multipart_parts(&request.body, boundary);
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts[0].0,
            "Content-Disposition: form-data; name=\"image\"; filename=\"job-1.png\"\r\n\
             Content-Type: image/png"
        );
        assert_eq!(parts[0].1, image);
        assert_eq!(
            parts[1],
            (
                "Content-Disposition: form-data; name=\"overwrite\"".into(),
                b"true".to_vec()
            )
        );
        assert_eq!(
            parts[2],
            (
                "Content-Disposition: form-data; name=\"type\"".into(),
                b"input".to_vec()
            )
        );
    }

    #[test]
    fn uploads_without_a_subfolder_return_the_bare_name() {
        let fake = FakeComfy::start(|_| reply(200, r#"{"name": "a (1).png", "subfolder": ""}"#));
        let name = fake
            .client()
            .upload_image(b"x", "a.png", "image/png")
            .expect("ok");
        assert_eq!(name, "a (1).png");
    }

    #[test]
    fn unsafe_upload_names_are_refused_before_sending() {
        let fake = FakeComfy::start(|_| reply(200, "{}"));
        let client = fake.client();
        for bad in ["", "a\"b.png", "../x.png", "a\r\nb.png"] {
            let err = client.upload_image(b"x", bad, "image/png").expect_err(bad);
            assert!(
                matches!(err, ComfyError::InvalidInput { .. }),
                "{bad}: {err:?}"
            );
        }
        client.system_stats().expect("stats");
        assert_eq!(
            fake.next_request().url,
            "/system_stats",
            "no upload reached ComfyUI"
        );
    }

    #[test]
    fn interrupt_and_delete_send_what_comfyui_expects() {
        let fake = FakeComfy::start(|_| reply(200, ""));
        let client = fake.client();
        let id = PromptId("p-9".into());
        client.interrupt(Some(&id)).expect("interrupted");
        client.interrupt(None).expect("interrupted");
        client.delete_from_queue(&[]).expect("nothing to do");
        client
            .delete_from_queue(std::slice::from_ref(&id))
            .expect("deleted");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let r = fake.next_request();
            let body: Value = serde_json::from_slice(&r.body).expect("JSON");
            seen.push((r.method, r.url, body));
        }
        assert_eq!(
            seen,
            vec![
                (
                    "POST".into(),
                    "/interrupt".into(),
                    json!({"prompt_id": "p-9"})
                ),
                ("POST".into(), "/interrupt".into(), json!({})),
                ("POST".into(), "/queue".into(), json!({"delete": ["p-9"]})),
            ]
        );
    }

    #[test]
    fn queue_positions_count_the_prompts_ahead() {
        let fake = FakeComfy::start(|_| {
            reply(
                200,
                json!({
                    "queue_running": [[5, "run", {}, {}, ["9"]]],
                    "queue_pending": [[8, "c", {}, {}, []], [6, "a", {}, {}, []],
                                      ["bad"], [7, "b", {}, {}, []]]
                })
                .to_string(),
            )
        });
        let queue = fake.client().get_queue().expect("queue");
        let position = |id: &str| queue.position_of(&PromptId(id.into()));
        assert_eq!(position("run"), Some(0));
        assert_eq!(position("a"), Some(1));
        assert_eq!(position("b"), Some(2));
        assert_eq!(position("c"), Some(3));
        assert_eq!(position("gone"), None);
        assert_eq!(fake.next_request().url, "/queue");

        let idle = QueueSnapshot {
            running: vec![],
            pending: vec![(1, PromptId("next".into()))],
        };
        assert_eq!(idle.position_of(&PromptId("next".into())), Some(0));
    }

    #[test]
    fn a_path_prefix_applies_to_every_endpoint() {
        let fake =
            FakeComfy::start(|_| reply(200, r#"{"system": {"os": "posix"}, "devices": []}"#));
        let client = ComfyClient::new(&format!("{}/comfy/", fake.base), ClientOptions::default())
            .expect("valid");
        assert_eq!(client.base_url(), format!("{}/comfy", fake.base));
        let stats = client.system_stats().expect("stats");
        assert_eq!(stats["system"]["os"], "posix");
        assert_eq!(fake.next_request().url, "/comfy/system_stats");
    }

    #[test]
    fn the_client_is_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<ComfyClient>();
    }

    #[test]
    fn node_info_reads_one_class_and_none_for_an_unknown_one() {
        let fake = FakeComfy::start(|r| match r.url.as_str() {
            "/object_info/CheckpointLoaderSimple" => reply(
                200,
                r#"{"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a.safetensors"]]}}}}"#,
            ),
            "/object_info" => reply(200, r#"{"KSampler": {}, "SaveImage": {}}"#),
            _ => reply(200, "{}"),
        });
        let client = fake.client();
        let info = client
            .node_info("CheckpointLoaderSimple")
            .expect("answered")
            .expect("known class");
        assert_eq!(
            info["input"]["required"]["ckpt_name"][0][0],
            "a.safetensors"
        );
        assert_eq!(fake.next_request().method, "GET");
        assert_eq!(client.node_info("My Node").expect("answered"), None);
        assert_eq!(fake.next_request().url, "/object_info/My%20Node");
        let all = client.object_info().expect("answered");
        assert!(all["KSampler"].is_object() && all["SaveImage"].is_object());
    }
}
