//! What ComfyUI says, as types: websocket events and `/history` entries.
//!
//! ComfyUI grows its messages between versions, so parsing is lenient by design: only the fields
//! a message is useless without are required (mostly `prompt_id`), everything else may be
//! missing, node ids may come as strings or numbers, counts as integers or floats. A message that
//! still does not fit becomes [`WsEvent::Other`]; parsing never fails and never panics.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::ids::PromptId;

/// A file ComfyUI wrote, as `executed` messages and `/history` name it; fetch it with
/// [`ComfyClient::get_image`](super::ComfyClient::get_image).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
pub struct ImageRef {
    /// The file name, e.g. `ComfyUI_00012_.png`.
    pub filename: String,
    /// The folder below the kind's directory; empty for the directory itself.
    #[serde(default)]
    pub subfolder: String,
    /// Which directory: `output` (SaveImage), `temp` (PreviewImage) or `input` (uploads).
    #[serde(rename = "type", default = "default_kind")]
    pub kind: String,
}

fn default_kind() -> String {
    "output".to_string()
}

impl ImageRef {
    /// Whether this is a temporary preview (PreviewImage) rather than a saved output.
    pub fn is_temp(&self) -> bool {
        self.kind == "temp"
    }
}

/// Why a prompt's execution failed, from `execution_error` (live or in `/history`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct ExecutionFailure {
    /// The node that raised, e.g. `"3"`.
    #[serde(default, deserialize_with = "lenient_id")]
    pub node_id: Option<String>,
    /// That node's class, e.g. `KSampler`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub node_type: Option<String>,
    /// The Python exception class, e.g. `torch.OutOfMemoryError`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub exception_type: Option<String>,
    /// The exception's message, without the trailing newline ComfyUI leaves on it; empty if
    /// ComfyUI sent none.
    #[serde(default, deserialize_with = "trimmed_text")]
    pub exception_message: String,
    /// The Python traceback, one formatted frame per entry (each without its trailing newline).
    #[serde(default, deserialize_with = "lenient_lines")]
    pub traceback: Vec<String>,
}

impl ExecutionFailure {
    /// Whether this is a branch blocked by a node (`ExecutionBlocked`, e.g. a content filter):
    /// ComfyUI reports it as an `execution_error` but goes on running the rest of the prompt.
    pub fn is_blocked_branch(&self) -> bool {
        self.exception_type.as_deref() == Some("ExecutionBlocked")
    }
}

impl fmt::Display for ExecutionFailure {
    /// Reads like `node 3 (KSampler) raised RuntimeError: CUDA out of memory`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.node_id, &self.node_type) {
            (Some(id), Some(class)) => write!(f, "node {id} ({class}) raised")?,
            (Some(id), None) => write!(f, "node {id} raised")?,
            (None, Some(class)) => write!(f, "a {class} node raised")?,
            (None, None) => write!(f, "execution raised")?,
        }
        match &self.exception_type {
            Some(kind) => write!(f, " {kind}")?,
            None => write!(f, " an exception")?,
        }
        if !self.exception_message.trim().is_empty() {
            write!(f, ": {}", self.exception_message.trim())?;
        }
        Ok(())
    }
}

/// The image format of a live preview.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviewFormat {
    /// `image/jpeg` (ComfyUI's default for previews).
    Jpeg,
    /// `image/png`.
    Png,
}

impl PreviewFormat {
    /// The MIME type, for forwarding the preview.
    pub fn mime_type(self) -> &'static str {
        match self {
            PreviewFormat::Jpeg => "image/jpeg",
            PreviewFormat::Png => "image/png",
        }
    }
}

/// Where a node stands, from a newer ComfyUI's `progress_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Queued within the prompt, not started.
    Pending,
    /// Working now.
    Running,
    /// Done.
    Finished,
    /// A state this client does not know (a newer ComfyUI).
    Unknown,
}

/// One node's progress in a `progress_state` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProgress {
    /// The node id, e.g. `"3"`.
    pub node_id: String,
    /// The node id shown in the UI (differs inside subgraphs), if sent.
    pub display_node_id: Option<String>,
    /// Steps done (floats from ComfyUI are truncated).
    pub value: u64,
    /// Steps in all; 0 if unknown.
    pub max: u64,
    /// The node's state.
    pub state: NodeState,
}

/// One websocket message from ComfyUI, typed.
///
/// Text frames are `{"type": T, "data": {..}}`; binary frames carry previews. Unknown or
/// malformed messages become [`WsEvent::Other`] (or [`WsEvent::Binary`]), never an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// The queue changed (sent to every client): prompts left, if said.
    Status {
        /// Prompts queued or running, over all clients.
        queue_remaining: Option<u64>,
    },
    /// The prompt started running.
    ExecutionStart {
        /// The prompt.
        prompt_id: PromptId,
    },
    /// These nodes' outputs come from the cache and will not run.
    ExecutionCached {
        /// The prompt.
        prompt_id: PromptId,
        /// Cached node ids, possibly empty.
        nodes: Vec<String>,
    },
    /// A node started; `node: None` is the classic "prompt finished" marker.
    Executing {
        /// The prompt (absent in very old versions).
        prompt_id: Option<PromptId>,
        /// The node now running, or `None` when the prompt is done.
        node: Option<String>,
    },
    /// A step within a node, e.g. a sampler step.
    Progress {
        /// The prompt (absent in older versions).
        prompt_id: Option<PromptId>,
        /// The node (absent in older versions).
        node: Option<String>,
        /// Steps done.
        value: u64,
        /// Steps in all.
        max: u64,
    },
    /// Newer ComfyUI: the state of every node of the prompt, in node id order.
    ProgressState {
        /// The prompt.
        prompt_id: PromptId,
        /// Each node's progress.
        nodes: Vec<NodeProgress>,
    },
    /// An output node finished and wrote these images (possibly none).
    Executed {
        /// The prompt.
        prompt_id: PromptId,
        /// The output node.
        node: String,
        /// The files it wrote that can be fetched with `/view`.
        images: Vec<ImageRef>,
    },
    /// The prompt finished successfully (newer versions; older ones only send `Executing` with
    /// `node: None`).
    ExecutionSuccess {
        /// The prompt.
        prompt_id: PromptId,
    },
    /// A node raised; the prompt stopped.
    ExecutionError {
        /// The prompt.
        prompt_id: PromptId,
        /// What failed, where.
        failure: ExecutionFailure,
    },
    /// The prompt was interrupted (`POST /interrupt`).
    ExecutionInterrupted {
        /// The prompt.
        prompt_id: PromptId,
        /// The node that was running, if any.
        node_id: Option<String>,
        /// That node's class.
        node_type: Option<String>,
    },
    /// A live preview image (binary frame type 1, or 4 with metadata).
    Preview {
        /// The image format.
        format: PreviewFormat,
        /// The encoded image.
        bytes: Vec<u8>,
        /// The prompt it belongs to, when the frame carried metadata (type 4); a plain frame
        /// belongs to whatever prompt ComfyUI is executing.
        prompt_id: Option<PromptId>,
        /// The node that made it, when the frame said.
        node: Option<String>,
    },
    /// A binary frame of another type (2 unencoded preview, 3 text, newer ones), or a preview
    /// whose format this client cannot tell.
    Binary {
        /// The frame's 4-byte event type (0 when the frame was too short to have one).
        kind: u32,
    },
    /// A text message of a type this client does not use, or one it could not parse.
    Other {
        /// The message's `type`; empty when the frame had no readable type.
        kind: String,
    },
}

impl WsEvent {
    /// The prompt this event concerns, if it names one.
    ///
    /// A caller filters on this: execution messages go only to the client that queued them, but
    /// one client may have queued more than one prompt.
    pub fn prompt_id(&self) -> Option<&PromptId> {
        match self {
            WsEvent::ExecutionStart { prompt_id }
            | WsEvent::ExecutionCached { prompt_id, .. }
            | WsEvent::ProgressState { prompt_id, .. }
            | WsEvent::Executed { prompt_id, .. }
            | WsEvent::ExecutionSuccess { prompt_id }
            | WsEvent::ExecutionError { prompt_id, .. }
            | WsEvent::ExecutionInterrupted { prompt_id, .. } => Some(prompt_id),
            WsEvent::Executing { prompt_id, .. } | WsEvent::Progress { prompt_id, .. } => {
                prompt_id.as_ref()
            }
            WsEvent::Status { .. }
            | WsEvent::Preview { .. }
            | WsEvent::Binary { .. }
            | WsEvent::Other { .. } => None,
        }
    }

    /// Parses one text frame.
    pub fn from_text(text: &str) -> WsEvent {
        #[derive(Deserialize)]
        struct Envelope {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            data: Value,
        }
        match serde_json::from_str::<Envelope>(text) {
            Ok(envelope) => WsEvent::from_message(&envelope.kind, envelope.data),
            Err(_) => WsEvent::Other {
                kind: String::new(),
            },
        }
    }

    /// Builds the event for message `kind` with payload `data`, as found in text frames and in
    /// `/history`'s `status.messages`.
    pub fn from_message(kind: &str, data: Value) -> WsEvent {
        parse_known(kind, data).unwrap_or_else(|| WsEvent::Other {
            kind: kind.to_string(),
        })
    }

    /// Parses one binary frame: a 4-byte big-endian event type, then its payload.
    pub fn from_binary(frame: &[u8]) -> WsEvent {
        let Some((kind, payload)) = split_u32(frame) else {
            return WsEvent::Binary { kind: 0 };
        };
        let preview = match kind {
            1 => split_u32(payload).and_then(|(format, image)| {
                let format = match format {
                    1 => PreviewFormat::Jpeg,
                    2 => PreviewFormat::Png,
                    _ => return None,
                };
                Some((format, image, PreviewMeta::default()))
            }),
            4 => split_u32(payload).and_then(|(meta_len, rest)| {
                let meta_len = usize::try_from(meta_len).ok()?;
                let meta: PreviewMeta = rest
                    .get(..meta_len)
                    .and_then(|text| serde_json::from_slice(text).ok())
                    .unwrap_or_default();
                let image = rest.get(meta_len..)?;
                Some((sniff_format(image)?, image, meta))
            }),
            _ => None,
        };
        match preview {
            Some((format, image, meta)) => WsEvent::Preview {
                format,
                bytes: image.to_vec(),
                prompt_id: meta.prompt_id.map(PromptId),
                node: meta.display_node_id.or(meta.node_id),
            },
            None => WsEvent::Binary { kind },
        }
    }
}

/// The metadata of a type-4 preview frame (ComfyUI sends it to clients that announced
/// `supports_preview_metadata`).
#[derive(Default, Deserialize)]
struct PreviewMeta {
    #[serde(default)]
    prompt_id: Option<String>,
    #[serde(default)]
    node_id: Option<String>,
    #[serde(default)]
    display_node_id: Option<String>,
}

/// The typed event for a known message type; `None` for unknown types and payloads that do not
/// fit.
fn parse_known(kind: &str, data: Value) -> Option<WsEvent> {
    let event = match kind {
        "status" => {
            let raw: RawStatus = from_data(data)?;
            WsEvent::Status {
                queue_remaining: raw.status.and_then(|s| s.exec_info?.queue_remaining),
            }
        }
        "execution_start" => WsEvent::ExecutionStart {
            prompt_id: from_data::<RawPrompt>(data)?.prompt_id,
        },
        "execution_success" => WsEvent::ExecutionSuccess {
            prompt_id: from_data::<RawPrompt>(data)?.prompt_id,
        },
        "execution_cached" => {
            let raw: RawCached = from_data(data)?;
            WsEvent::ExecutionCached {
                prompt_id: raw.prompt_id,
                nodes: raw.nodes,
            }
        }
        "executing" => {
            let raw: RawExecuting = from_data(data)?;
            WsEvent::Executing {
                prompt_id: raw.prompt_id,
                node: raw.node,
            }
        }
        "progress" => {
            let raw: RawProgress = from_data(data)?;
            WsEvent::Progress {
                prompt_id: raw.prompt_id,
                node: raw.node,
                value: raw.value,
                max: raw.max,
            }
        }
        "progress_state" => {
            let raw: RawProgressState = from_data(data)?;
            WsEvent::ProgressState {
                prompt_id: raw.prompt_id,
                nodes: node_progress_list(raw.nodes),
            }
        }
        "executed" => {
            let raw: RawExecuted = from_data(data)?;
            WsEvent::Executed {
                prompt_id: raw.prompt_id,
                node: raw.node,
                images: raw.output.map(|o| images_of(&o)).unwrap_or_default(),
            }
        }
        "execution_error" => {
            let raw: RawPrompt = serde_json::from_value(data.clone()).ok()?;
            WsEvent::ExecutionError {
                prompt_id: raw.prompt_id,
                failure: from_data(data)?,
            }
        }
        "execution_interrupted" => {
            let raw: RawInterrupted = from_data(data)?;
            WsEvent::ExecutionInterrupted {
                prompt_id: raw.prompt_id,
                node_id: raw.node_id,
                node_type: raw.node_type,
            }
        }
        _ => return None,
    };
    Some(event)
}

fn from_data<T: serde::de::DeserializeOwned>(data: Value) -> Option<T> {
    serde_json::from_value(data).ok()
}

#[derive(Deserialize)]
struct RawStatus {
    #[serde(default)]
    status: Option<RawStatusInner>,
}

#[derive(Deserialize)]
struct RawStatusInner {
    #[serde(default)]
    exec_info: Option<RawExecInfo>,
}

#[derive(Deserialize)]
struct RawExecInfo {
    #[serde(default, deserialize_with = "lenient_count")]
    queue_remaining: Option<u64>,
}

#[derive(Deserialize)]
struct RawPrompt {
    prompt_id: PromptId,
}

#[derive(Deserialize)]
struct RawCached {
    prompt_id: PromptId,
    #[serde(default, deserialize_with = "lenient_ids")]
    nodes: Vec<String>,
}

#[derive(Deserialize)]
struct RawExecuting {
    #[serde(default)]
    prompt_id: Option<PromptId>,
    #[serde(default, deserialize_with = "lenient_id")]
    node: Option<String>,
}

#[derive(Deserialize)]
struct RawProgress {
    #[serde(default)]
    prompt_id: Option<PromptId>,
    #[serde(default, deserialize_with = "lenient_id")]
    node: Option<String>,
    #[serde(deserialize_with = "required_count")]
    value: u64,
    #[serde(deserialize_with = "required_count")]
    max: u64,
}

#[derive(Deserialize)]
struct RawProgressState {
    prompt_id: PromptId,
    #[serde(default)]
    nodes: Map<String, Value>,
}

#[derive(Deserialize)]
struct RawExecuted {
    prompt_id: PromptId,
    #[serde(deserialize_with = "required_id")]
    node: String,
    #[serde(default)]
    output: Option<Value>,
}

#[derive(Deserialize)]
struct RawInterrupted {
    prompt_id: PromptId,
    #[serde(default, deserialize_with = "lenient_id")]
    node_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    node_type: Option<String>,
}

/// The nodes of a `progress_state`, in node id order; entries that are not objects are skipped.
fn node_progress_list(nodes: Map<String, Value>) -> Vec<NodeProgress> {
    let mut list: Vec<NodeProgress> = nodes
        .into_iter()
        .filter(|(_, v)| v.is_object())
        .map(|(key, v)| NodeProgress {
            node_id: id_of(&v["node_id"]).unwrap_or(key),
            display_node_id: id_of(&v["display_node_id"]),
            value: count_of(&v["value"]).unwrap_or(0),
            max: count_of(&v["max"]).unwrap_or(0),
            state: match v["state"].as_str() {
                Some("pending") => NodeState::Pending,
                Some("running") => NodeState::Running,
                Some("finished") => NodeState::Finished,
                _ => NodeState::Unknown,
            },
        })
        .collect();
    list.sort_by(|a, b| compare_node_ids(&a.node_id, &b.node_id));
    list
}

/// Every file of one node's output: each entry with a string `filename` in any list under any
/// key. Keys come in name order; a file listed twice is kept once.
fn files_of(node_id: &str, output: &Value) -> Vec<OutputFile> {
    let Value::Object(keys) = output else {
        return Vec::new();
    };
    let mut files: Vec<OutputFile> = Vec::new();
    for (output_key, entries) in keys {
        let Value::Array(entries) = entries else {
            continue;
        };
        for (index, entry) in entries.iter().enumerate() {
            if !entry.get("filename").is_some_and(Value::is_string) {
                continue;
            }
            let Ok(file) = ImageRef::deserialize(entry) else {
                continue;
            };
            if files.iter().any(|known| known.file == file) {
                continue;
            }
            let mut extra = entry.as_object().cloned().unwrap_or_default();
            for known in ["filename", "subfolder", "type"] {
                extra.remove(known);
            }
            let animated = output_key == "images"
                && (output["animated"][index].as_bool() == Some(true)
                    || output["animated"] == Value::Bool(true));
            files.push(OutputFile {
                node_id: node_id.to_string(),
                output_key: output_key.clone(),
                file,
                animated,
                extra,
            });
        }
    }
    files
}

/// The fetchable images of one node's output (`{"images": [..], ..}`); entries without a file
/// name (e.g. images sent over the websocket) are skipped.
fn images_of(output: &Value) -> Vec<ImageRef> {
    output["images"]
        .as_array()
        .map(|images| {
            images
                .iter()
                .filter_map(|image| ImageRef::deserialize(image).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Splits a big-endian `u32` off the front of `bytes`.
fn split_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*head), rest))
}

/// Tells JPEG from PNG by their signatures; type-4 previews name the format only in metadata
/// whose shape has changed between versions, the bytes do not lie.
fn sniff_format(image: &[u8]) -> Option<PreviewFormat> {
    if image.starts_with(&[0x89, b'P', b'N', b'G']) {
        Some(PreviewFormat::Png)
    } else if image.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(PreviewFormat::Jpeg)
    } else {
        None
    }
}

/// Orders node ids as people do: `"3" < "10" < "10:2" < "10:11" < "abc"`.
///
/// Runs of digits compare by value, everything else by text, so ids of nodes inside subgraphs
/// (`"12:5"`) sort next to their parent.
pub fn compare_node_ids(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.is_empty(), b.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            (false, false) => {}
        }
        let (run_a, rest_a) = leading_run(a);
        let (run_b, rest_b) = leading_run(b);
        let order = match (is_digits(run_a), is_digits(run_b)) {
            (true, true) => compare_digit_runs(run_a, run_b),
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => run_a.cmp(run_b),
        };
        if order != Ordering::Equal {
            return order;
        }
        (a, b) = (rest_a, rest_b);
    }
}

/// Splits off the longest prefix that is all ASCII digits or all non-digits.
fn leading_run(s: &str) -> (&str, &str) {
    let digits = s.starts_with(|c: char| c.is_ascii_digit());
    let end = s
        .find(|c: char| c.is_ascii_digit() != digits)
        .unwrap_or(s.len());
    s.split_at(end)
}

fn is_digits(run: &str) -> bool {
    run.starts_with(|c: char| c.is_ascii_digit())
}

/// Compares digit runs by value without parsing, so arbitrarily long ids cannot overflow.
fn compare_digit_runs(a: &str, b: &str) -> Ordering {
    let (a_trim, b_trim) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a_trim
        .len()
        .cmp(&b_trim.len())
        .then_with(|| a_trim.cmp(b_trim))
        .then_with(|| a.len().cmp(&b.len()))
}

/// One output node of a finished prompt and the files it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOutput {
    /// The node id, e.g. `"9"`.
    pub node_id: String,
    /// Every file it wrote, under any key (`images`, `gifs`, `audio`, `video`, `3d`, ...).
    pub files: Vec<OutputFile>,
}

impl NodeOutput {
    /// The files under its `images` key, in the order ComfyUI listed them. Since `SaveVideo`
    /// lists its `.mp4` here too, these are not necessarily pictures.
    pub fn images(&self) -> impl Iterator<Item = &ImageRef> {
        self.files
            .iter()
            .filter(|f| f.output_key == "images")
            .map(|f| &f.file)
    }
}

/// One file an output node wrote: any entry with a `filename` under any key of the node's
/// output in `/history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// The node that wrote it, e.g. `"9"`.
    pub node_id: String,
    /// The key it was listed under: `images` (also `SaveVideo`'s `.mp4`), `gifs`
    /// (VideoHelperSuite), `audio`, `3d`, or a key no one knows yet.
    pub output_key: String,
    /// Where to fetch it.
    pub file: ImageRef,
    /// Whether the node marked it animated (`"animated": [true]` beside `images`, as
    /// `SaveVideo`, `SaveWEBM` and `SaveAnimatedWEBP` do).
    pub animated: bool,
    /// The entry's other fields, as ComfyUI or the custom node wrote them (VideoHelperSuite's
    /// `format` and `frame_rate`, ...).
    pub extra: Map<String, Value>,
}

/// How a finished prompt ended, from its `/history` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryStatus {
    /// `"success"` or `"error"` (as ComfyUI wrote it; empty if absent).
    pub status_str: String,
    /// Whether ComfyUI considers the prompt completed.
    pub completed: bool,
    /// The failure, if `messages` holds an `execution_error`.
    pub error: Option<ExecutionFailure>,
    /// Whether `messages` holds an `execution_interrupted`.
    pub interrupted: bool,
}

impl HistoryStatus {
    /// Whether the prompt ran to the end without error or interruption.
    pub fn succeeded(&self) -> bool {
        self.status_str == "success" && self.error.is_none() && !self.interrupted
    }
}

/// A finished prompt as `/history/{prompt_id}` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Output nodes that wrote files (nodes without any are left out), in node id order
    /// (numeric-aware: `"9"` before `"10"`). Outputs of cached nodes are included.
    pub outputs: Vec<NodeOutput>,
    /// How it ended; `None` from older ComfyUI versions that did not record it.
    pub status: Option<HistoryStatus>,
}

impl HistoryEntry {
    /// Every file under the `images` key of every output node, in [`outputs`](Self::outputs)
    /// order, temporary previews included (filter with [`ImageRef::is_temp`]). See
    /// [`files`](Self::files) for the files under every key.
    pub fn images(&self) -> impl Iterator<Item = (&str, &ImageRef)> {
        self.outputs
            .iter()
            .flat_map(|o| o.images().map(|i| (o.node_id.as_str(), i)))
    }

    /// Every file of every output node under any key (`images`, `gifs`, `audio`, `video`,
    /// `3d`, unknown ones), in [`outputs`](Self::outputs) order, temporary previews included.
    pub fn files(&self) -> impl Iterator<Item = &OutputFile> {
        self.outputs.iter().flat_map(|o| o.files.iter())
    }

    /// Parses one history ENTRY (the value under the prompt id).
    pub fn from_value(entry: &Value) -> Result<HistoryEntry, String> {
        #[derive(Deserialize)]
        struct RawEntry {
            #[serde(default)]
            outputs: Option<Map<String, Value>>,
            #[serde(default)]
            status: Option<RawHistoryStatus>,
        }
        let raw = RawEntry::deserialize(entry).map_err(|e| format!("history entry: {e}"))?;
        let mut outputs: Vec<NodeOutput> = raw
            .outputs
            .unwrap_or_default()
            .iter()
            .map(|(node_id, output)| NodeOutput {
                node_id: node_id.clone(),
                files: files_of(node_id, output),
            })
            .filter(|o| !o.files.is_empty())
            .collect();
        outputs.sort_by(|a, b| compare_node_ids(&a.node_id, &b.node_id));
        Ok(HistoryEntry {
            outputs,
            status: raw.status.map(RawHistoryStatus::into_status),
        })
    }
}

#[derive(Deserialize)]
struct RawHistoryStatus {
    #[serde(default, deserialize_with = "lenient_text")]
    status_str: String,
    #[serde(default)]
    completed: bool,
    #[serde(default)]
    messages: Vec<Value>,
}

impl RawHistoryStatus {
    fn into_status(self) -> HistoryStatus {
        let mut status = HistoryStatus {
            status_str: self.status_str,
            completed: self.completed,
            error: None,
            interrupted: false,
        };
        // Each message is `[type, data]`; a malformed one tells us nothing and is skipped.
        for message in self.messages {
            let Value::Array(pair) = message else {
                continue;
            };
            let mut pair = pair.into_iter();
            let (Some(Value::String(kind)), Some(data)) = (pair.next(), pair.next()) else {
                continue;
            };
            match kind.as_str() {
                "execution_error" => status.error = Some(from_data(data).unwrap_or_default()),
                "execution_interrupted" => status.interrupted = true,
                _ => {}
            }
        }
        status
    }
}

// Lenient field parsers: ComfyUI's types drift between versions and custom nodes.

/// A node id: a string, or an integer written as one.
fn id_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

/// A non-negative count: an integer, or a float truncated toward zero.
fn count_of(value: &Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    let f = value.as_f64().filter(|f| f.is_finite() && *f >= 0.0)?;
    // Progress counts are small; `as` saturates anything absurd instead of failing.
    Some(f as u64)
}

fn lenient_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(id_of(&Value::deserialize(d)?))
}

fn required_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    id_of(&Value::deserialize(d)?).ok_or_else(|| serde::de::Error::custom("node id"))
}

fn lenient_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let value = Value::deserialize(d)?;
    let ids = value.as_array().map(Vec::as_slice).unwrap_or(&[]);
    Ok(ids.iter().filter_map(id_of).collect())
}

fn lenient_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(count_of(&Value::deserialize(d)?))
}

fn required_count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    count_of(&Value::deserialize(d)?).ok_or_else(|| serde::de::Error::custom("count"))
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

fn lenient_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(lenient_string(d)?.unwrap_or_default())
}

/// Text ComfyUI wrote for people, e.g. an exception's message: Python leaves a trailing newline
/// on many (`"SlowSteps failed at step 2 as asked\n"`), which the gateway never passes on.
fn trimmed_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(trim_end_owned(lenient_text(d)?))
}

/// `text` without trailing whitespace, reusing its buffer.
pub(crate) fn trim_end_owned(mut text: String) -> String {
    text.truncate(text.trim_end().len());
    text
}

/// `value` with the trailing whitespace trimmed from the text ComfyUI writes for people, at any
/// depth: every `message`, `details` and `exception_message` string, and each line of every
/// `traceback` (as in `node_errors` and `extra_info`). Values echoed from the request are left
/// as they were.
pub(crate) fn trim_texts(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    let value = match (key.as_str(), value) {
                        ("message" | "details" | "exception_message", Value::String(text)) => {
                            Value::String(trim_end_owned(text))
                        }
                        ("traceback", Value::Array(lines)) => Value::Array(
                            lines
                                .into_iter()
                                .map(|line| match line {
                                    Value::String(text) => Value::String(trim_end_owned(text)),
                                    other => other,
                                })
                                .collect(),
                        ),
                        (_, value) => trim_texts(value),
                    };
                    (key, value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(trim_texts).collect()),
        other => other,
    }
}

fn lenient_lines<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(lines) => lines
            .into_iter()
            .filter_map(|l| l.as_str().map(|l| l.trim_end().to_string()))
            .collect(),
        Value::String(text) => vec![text.trim_end().to_string()],
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pid(id: &str) -> PromptId {
        PromptId(id.to_string())
    }

    fn text(value: Value) -> WsEvent {
        WsEvent::from_text(&value.to_string())
    }

    #[test]
    fn comfyuis_text_loses_its_trailing_newlines_at_the_edge() {
        // As real ComfyUI 0.3.64 sends it (traceback shortened).
        let error = json!({"type": "execution_error", "data": {"prompt_id": "p", "node_id": "2",
            "node_type": "SlowSteps", "executed": ["1"],
            "exception_message": "SlowSteps failed at step 2 as asked\n",
            "exception_type": "RuntimeError",
            "traceback": ["  File \"execution.py\", line 496, in execute\n    output = f()\n"],
            "current_inputs": {}, "current_outputs": [], "timestamp": 1}});
        let WsEvent::ExecutionError { failure, .. } = text(error) else {
            panic!("an execution_error");
        };
        assert_eq!(
            failure.exception_message,
            "SlowSteps failed at step 2 as asked"
        );
        assert_eq!(
            failure.traceback,
            vec!["  File \"execution.py\", line 496, in execute\n    output = f()"]
        );
        assert_eq!(
            failure.to_string(),
            "node 2 (SlowSteps) raised RuntimeError: SlowSteps failed at step 2 as asked"
        );
        let node_errors = trim_texts(json!({"3": {"errors": [{"type": "custom_validation_failed",
            "message": "Custom validation failed for node\n",
            "details": "image - Invalid image file: x.png \n",
            "extra_info": {"input_name": "image", "received_value": "keep me \n",
                "traceback": ["line\n"]}}], "class_type": "LoadImage"}}));
        let error = &node_errors["3"]["errors"][0];
        assert_eq!(error["message"], "Custom validation failed for node");
        assert_eq!(error["details"], "image - Invalid image file: x.png");
        assert_eq!(error["extra_info"]["traceback"][0], "line");
        assert_eq!(error["extra_info"]["received_value"], "keep me \n");
    }

    #[test]
    fn status_with_and_without_queue_info() {
        let on_connect = json!({"type": "status", "data": {
            "status": {"exec_info": {"queue_remaining": 2}}, "sid": "abc"}});
        assert_eq!(
            text(on_connect),
            WsEvent::Status {
                queue_remaining: Some(2)
            }
        );
        assert_eq!(
            text(json!({"type": "status", "data": {}})),
            WsEvent::Status {
                queue_remaining: None
            }
        );
    }

    #[test]
    fn execution_start_cached_success() {
        let start = json!({"type": "execution_start",
            "data": {"prompt_id": "p1", "timestamp": 1732400000000_u64}});
        assert_eq!(
            text(start),
            WsEvent::ExecutionStart {
                prompt_id: pid("p1")
            }
        );
        let cached = json!({"type": "execution_cached",
            "data": {"nodes": ["4", 5], "prompt_id": "p1", "timestamp": 1}});
        assert_eq!(
            text(cached),
            WsEvent::ExecutionCached {
                prompt_id: pid("p1"),
                nodes: vec!["4".into(), "5".into()]
            }
        );
        let success = json!({"type": "execution_success", "data": {"prompt_id": "p1"}});
        assert_eq!(
            text(success),
            WsEvent::ExecutionSuccess {
                prompt_id: pid("p1")
            }
        );
    }

    #[test]
    fn executing_a_node_and_the_classic_end_marker() {
        let node = json!({"type": "executing",
            "data": {"node": "3", "display_node": "3", "prompt_id": "p1"}});
        assert_eq!(
            text(node),
            WsEvent::Executing {
                prompt_id: Some(pid("p1")),
                node: Some("3".into())
            }
        );
        let done = json!({"type": "executing", "data": {"node": null, "prompt_id": "p1"}});
        assert_eq!(
            text(done),
            WsEvent::Executing {
                prompt_id: Some(pid("p1")),
                node: None
            }
        );
        // Very old versions sent neither a prompt id nor, at the end, a node.
        let old = json!({"type": "executing", "data": {"node": null}});
        assert_eq!(
            text(old),
            WsEvent::Executing {
                prompt_id: None,
                node: None
            }
        );
    }

    #[test]
    fn progress_new_and_old_and_with_floats() {
        let new = json!({"type": "progress",
            "data": {"value": 7, "max": 20, "prompt_id": "p1", "node": "3"}});
        assert_eq!(
            text(new),
            WsEvent::Progress {
                prompt_id: Some(pid("p1")),
                node: Some("3".into()),
                value: 7,
                max: 20
            }
        );
        let old = json!({"type": "progress", "data": {"value": 1.0, "max": 20.0}});
        assert_eq!(
            text(old),
            WsEvent::Progress {
                prompt_id: None,
                node: None,
                value: 1,
                max: 20
            }
        );
        let useless = json!({"type": "progress", "data": {"prompt_id": "p1"}});
        assert_eq!(
            text(useless),
            WsEvent::Other {
                kind: "progress".into()
            }
        );
    }

    #[test]
    fn progress_state_lists_nodes_in_numeric_order() {
        let msg = json!({"type": "progress_state", "data": {"prompt_id": "p1", "nodes": {
            "10": {"value": 0, "max": 1, "state": "pending", "node_id": "10",
                   "display_node_id": "10", "parent_node_id": null},
            "3": {"value": 4.0, "max": 20.0, "state": "running", "node_id": "3"},
            "9": {"value": 1, "max": 1, "state": "finished"},
            "bad": 7
        }}});
        let WsEvent::ProgressState { prompt_id, nodes } = text(msg) else {
            panic!("not progress_state");
        };
        assert_eq!(prompt_id, pid("p1"));
        let summary: Vec<_> = nodes
            .iter()
            .map(|n| (n.node_id.as_str(), n.value, n.max, n.state))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("3", 4, 20, NodeState::Running),
                ("9", 1, 1, NodeState::Finished),
                ("10", 0, 1, NodeState::Pending),
            ]
        );
        assert_eq!(nodes[2].display_node_id.as_deref(), Some("10"));
    }

    #[test]
    fn executed_keeps_fetchable_images_only() {
        let msg = json!({"type": "executed", "data": {"node": "9", "display_node": "9",
        "prompt_id": "p1", "output": {"images": [
            {"filename": "ComfyUI_00012_.png", "subfolder": "", "type": "output"},
            {"filename": "ComfyUI_temp_x.png", "subfolder": "a", "type": "temp"},
            {"source": "websocket", "content-type": "image/png", "type": "output"}
        ]}}});
        assert_eq!(
            text(msg),
            WsEvent::Executed {
                prompt_id: pid("p1"),
                node: "9".into(),
                images: vec![
                    ImageRef {
                        filename: "ComfyUI_00012_.png".into(),
                        subfolder: String::new(),
                        kind: "output".into()
                    },
                    ImageRef {
                        filename: "ComfyUI_temp_x.png".into(),
                        subfolder: "a".into(),
                        kind: "temp".into()
                    },
                ]
            }
        );
        let text_output = json!({"type": "executed",
            "data": {"node": 12, "prompt_id": "p1", "output": {"text": ["hi"]}}});
        assert_eq!(
            text(text_output),
            WsEvent::Executed {
                prompt_id: pid("p1"),
                node: "12".into(),
                images: vec![]
            }
        );
    }

    #[test]
    fn execution_error_carries_the_failure() {
        let msg = json!({"type": "execution_error", "data": {"prompt_id": "p1",
            "node_id": "3", "node_type": "KSampler", "executed": ["4"],
            "exception_message": "CUDA out of memory\n", "exception_type": "torch.OutOfMemoryError",
            "traceback": ["  File \"x.py\", line 1\n", "    boom\n"],
            "current_inputs": {}, "current_outputs": {}, "timestamp": 1}});
        let WsEvent::ExecutionError { prompt_id, failure } = text(msg) else {
            panic!("not an execution_error");
        };
        assert_eq!(prompt_id, pid("p1"));
        assert_eq!(failure.traceback.len(), 2);
        assert_eq!(
            failure.to_string(),
            "node 3 (KSampler) raised torch.OutOfMemoryError: CUDA out of memory"
        );
        let bare = json!({"type": "execution_error", "data": {"prompt_id": "p1"}});
        let WsEvent::ExecutionError { failure, .. } = text(bare) else {
            panic!("a bare execution_error is still one");
        };
        assert_eq!(failure.to_string(), "execution raised an exception");
    }

    #[test]
    fn execution_interrupted() {
        let msg = json!({"type": "execution_interrupted", "data": {"prompt_id": "p1",
            "node_id": "3", "node_type": "KSampler", "executed": [], "timestamp": 1}});
        assert_eq!(
            text(msg),
            WsEvent::ExecutionInterrupted {
                prompt_id: pid("p1"),
                node_id: Some("3".into()),
                node_type: Some("KSampler".into())
            }
        );
    }

    #[test]
    fn unknown_and_malformed_text_becomes_other() {
        let cases = [
            (
                json!({"type": "crystools.monitor", "data": {"cpu": 3}}).to_string(),
                "crystools.monitor",
            ),
            (
                json!({"type": "execution_start", "data": {}}).to_string(),
                "execution_start",
            ),
            (
                json!({"type": "executed", "data": {"prompt_id": "p"}}).to_string(),
                "executed",
            ),
            (
                json!({"type": "status", "data": "nope"}).to_string(),
                "status",
            ),
            (json!({"type": 5}).to_string(), ""),
            (json!({"data": {}}).to_string(), ""),
            ("not json at all".to_string(), ""),
            (String::new(), ""),
        ];
        for (frame, kind) in cases {
            assert_eq!(
                WsEvent::from_text(&frame),
                WsEvent::Other { kind: kind.into() },
                "{frame}"
            );
        }
    }

    #[test]
    fn prompt_id_is_found_wherever_a_message_has_one() {
        let start = WsEvent::ExecutionStart {
            prompt_id: pid("p"),
        };
        assert_eq!(start.prompt_id(), Some(&pid("p")));
        let old = WsEvent::Executing {
            prompt_id: None,
            node: None,
        };
        assert_eq!(old.prompt_id(), None);
        assert_eq!(WsEvent::Binary { kind: 2 }.prompt_id(), None);
    }

    fn frame(kind: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = kind.to_be_bytes().to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn binary_previews_in_both_layouts() {
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3];
        let mut type1 = 1u32.to_be_bytes().to_vec();
        type1.extend_from_slice(&jpeg);
        assert_eq!(
            WsEvent::from_binary(&frame(1, &type1)),
            WsEvent::Preview {
                format: PreviewFormat::Jpeg,
                bytes: jpeg.to_vec(),
                prompt_id: None,
                node: None,
            }
        );
        let png = b"\x89PNG\r\n\x1a\nrest";
        let meta = br#"{"node_id": "3", "prompt_id": "p1", "image_type": "image/png"}"#;
        let mut type4 = u32::try_from(meta.len())
            .expect("small")
            .to_be_bytes()
            .to_vec();
        type4.extend_from_slice(meta);
        type4.extend_from_slice(png);
        assert_eq!(
            WsEvent::from_binary(&frame(4, &type4)),
            WsEvent::Preview {
                format: PreviewFormat::Png,
                bytes: png.to_vec(),
                prompt_id: Some(PromptId("p1".into())),
                node: Some("3".into()),
            }
        );
    }

    #[test]
    fn other_and_broken_binary_frames_are_never_errors() {
        assert_eq!(
            WsEvent::from_binary(&frame(2, b"raw")),
            WsEvent::Binary { kind: 2 }
        );
        assert_eq!(
            WsEvent::from_binary(&frame(3, b"\0\0\0\x013hi")),
            WsEvent::Binary { kind: 3 }
        );
        assert_eq!(
            WsEvent::from_binary(&frame(1, b"\0\0")),
            WsEvent::Binary { kind: 1 }
        );
        assert_eq!(
            WsEvent::from_binary(&frame(1, b"\0\0\0\x09x")),
            WsEvent::Binary { kind: 1 }
        );
        // A metadata length pointing past the end of the frame.
        assert_eq!(
            WsEvent::from_binary(&frame(4, b"\xff\xff\xff\xff{}")),
            WsEvent::Binary { kind: 4 }
        );
        assert_eq!(WsEvent::from_binary(b"\x01"), WsEvent::Binary { kind: 0 });
        assert_eq!(WsEvent::from_binary(b""), WsEvent::Binary { kind: 0 });
    }

    #[test]
    fn node_ids_sort_like_people_expect() {
        let mut ids = vec!["10", "9", "abc", "10:11", "10:2", "3", "010", "a2", "a10"];
        ids.sort_by(|a, b| compare_node_ids(a, b));
        assert_eq!(
            ids,
            vec!["3", "9", "10", "10:2", "10:11", "010", "a2", "a10", "abc"]
        );
        let huge = "99999999999999999999999999";
        assert_eq!(compare_node_ids(huge, "1"), Ordering::Greater);
    }

    fn history_entry(entry: Value) -> HistoryEntry {
        HistoryEntry::from_value(&entry).expect("valid entry")
    }

    #[test]
    fn history_of_a_success_lists_outputs_in_node_order() {
        let entry = history_entry(json!({
            "prompt": [7, "p1", {}, {"client_id": "c"}, ["9", "12"]],
            "outputs": {
                "12": {"images": [{"filename": "b.png", "subfolder": "", "type": "output"}]},
                "9": {"images": [{"filename": "a.png", "subfolder": "x", "type": "output"},
                                  {"filename": "a2.png", "subfolder": "x", "type": "output"}]},
                "15": {"text": ["no images here"]}
            },
            "status": {"status_str": "success", "completed": true, "messages": [
                ["execution_start", {"prompt_id": "p1", "timestamp": 1}],
                ["execution_cached", {"nodes": [], "prompt_id": "p1", "timestamp": 2}],
                ["execution_success", {"prompt_id": "p1", "timestamp": 3}]]},
            "meta": {"9": {"node_id": "9"}}
        }));
        let names: Vec<_> = entry
            .images()
            .map(|(node, image)| format!("{node}/{}/{}", image.subfolder, image.filename))
            .collect();
        assert_eq!(names, vec!["9/x/a.png", "9/x/a2.png", "12//b.png"]);
        let status = entry.status.expect("has status");
        assert!(status.succeeded());
        assert!(status.completed);
    }

    #[test]
    fn history_of_a_failure_carries_the_execution_error() {
        let entry = history_entry(json!({
            "outputs": {},
            "status": {"status_str": "error", "completed": false, "messages": [
                ["execution_start", {"prompt_id": "p1"}],
                "garbage",
                ["execution_error", {"prompt_id": "p1", "node_id": "3", "node_type": "KSampler",
                    "exception_type": "RuntimeError", "exception_message": "boom",
                    "traceback": ["tb"]}]]}
        }));
        assert!(entry.outputs.is_empty());
        let status = entry.status.expect("has status");
        assert!(!status.succeeded());
        assert!(!status.interrupted);
        let failure = status.error.expect("error recorded");
        assert_eq!(
            failure.to_string(),
            "node 3 (KSampler) raised RuntimeError: boom"
        );
    }

    #[test]
    fn history_of_an_interrupted_prompt() {
        let entry = history_entry(json!({
            "outputs": {},
            "status": {"status_str": "error", "completed": false, "messages": [
                ["execution_interrupted", {"prompt_id": "p1", "node_id": "3",
                    "node_type": "KSampler", "executed": []}]]}
        }));
        let status = entry.status.expect("has status");
        assert!(status.interrupted);
        assert!(status.error.is_none());
        assert!(!status.succeeded());
    }

    #[test]
    fn history_from_an_old_version_without_status() {
        let entry = history_entry(json!({
            "prompt": [1, "p1", {}, {}, ["9"]],
            "outputs": {"9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}}
        }));
        assert_eq!(entry.status, None);
        assert_eq!(entry.outputs.len(), 1);
    }

    #[test]
    fn history_keeps_temp_outputs_marked_as_temp() {
        let entry = history_entry(json!({
            "outputs": {
                "9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]},
                "20": {"images": [{"filename": "ComfyUI_temp_q_00001_.png", "subfolder": "",
                                    "type": "temp"}]}
            },
            "status": {"status_str": "success", "completed": true, "messages": []}
        }));
        let kinds: Vec<_> = entry.images().map(|(n, i)| (n, i.is_temp())).collect();
        assert_eq!(kinds, vec![("9", false), ("20", true)]);
    }

    #[test]
    fn history_files_under_every_key_are_collected() {
        // As today's ComfyUI and custom nodes write them.
        let entry = history_entry(json!({
            "outputs": {
                "9": {"images": [{"filename": "ComfyUI_00001_.mp4", "subfolder": "video",
                                  "type": "output"}], "animated": [true]},
                "12": {"gifs": [{"filename": "AnimateDiff_00001.mp4", "subfolder": "",
                                 "type": "output", "format": "video/h264-mp4", "frame_rate": 8.0,
                                 "workflow": "AnimateDiff_00001.png"}]},
                "14": {"audio": [{"filename": "ComfyUI_00001_.flac", "subfolder": "audio",
                                  "type": "output"}]},
                "15": {"3d": [{"filename": "mesh.glb", "type": "output"}],
                       "text": ["not a file"], "images": [{"no": "filename"}]},
                "16": {"sparkles": [{"filename": "new.bin", "subfolder": "", "type": "temp"},
                                    {"filename": "new.bin", "subfolder": "", "type": "temp"}]},
                "17": {"text": ["only text"]}
            },
            "status": {"status_str": "success", "completed": true, "messages": []}
        }));
        let files: Vec<_> = entry
            .files()
            .map(|f| {
                (
                    f.node_id.as_str(),
                    f.output_key.as_str(),
                    f.file.filename.as_str(),
                )
            })
            .collect();
        assert_eq!(
            files,
            [
                ("9", "images", "ComfyUI_00001_.mp4"),
                ("12", "gifs", "AnimateDiff_00001.mp4"),
                ("14", "audio", "ComfyUI_00001_.flac"),
                ("15", "3d", "mesh.glb"),
                ("16", "sparkles", "new.bin"),
            ]
        );
        let all: Vec<_> = entry.files().collect();
        assert!(all[0].animated && !all[1].animated);
        assert_eq!(all[1].extra["format"], "video/h264-mp4");
        assert!(!all[1].extra.contains_key("filename"));
        assert_eq!(all[3].file.kind, "output", "type defaults to output");
        assert!(all[4].file.is_temp());
        // `images()` still lists the `images` key only.
        assert_eq!(entry.images().count(), 1);
    }

    #[test]
    fn history_entries_of_the_wrong_shape_are_errors() {
        assert!(HistoryEntry::from_value(&json!("nope")).is_err());
        assert!(HistoryEntry::from_value(&json!({"outputs": []})).is_err());
    }
}
