//! The HTTP side: the accept loop, one thread per connection, routing, and ComfyUI's
//! endpoints.
//!
//! Every answer carries `Connection: close` and each connection serves one request (or becomes
//! a websocket): with no keep-alive connections, nothing can answer from the memory of a
//! simulated process that has since crashed.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::graph::Graph;
use super::nodes;
use super::state::{FileData, FileKey};
use super::validate::{self, Verdict};
use super::wire::{self, ReadError};
use super::{RecordedRequest, Shared, SimEvent, control, ws};

/// Uploads larger than this are refused rather than buffered.
const MAX_BODY: u64 = 64 * 1024 * 1024;

/// How long a client may take to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(30);

/// A serving listener: the thread accepting connections.
pub(crate) struct Listener {
    stop: Arc<AtomicBool>,
    acceptor: JoinHandle<()>,
    addr: SocketAddr,
}

impl Listener {
    /// Serves `listener`; requests are answered from state of `generation` only.
    pub(crate) fn start(
        shared: &Arc<Shared>,
        listener: TcpListener,
        generation: u64,
    ) -> io::Result<Listener> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = thread::Builder::new()
            .name("comfyui-sim-accept".into())
            .spawn({
                let (shared, stop) = (Arc::clone(shared), Arc::clone(&stop));
                move || accept_loop(&shared, &listener, &stop, generation)
            })?;
        Ok(Listener {
            stop,
            acceptor,
            addr,
        })
    }

    /// Stops serving and returns once the port refuses connections.
    pub(crate) fn stop(self) {
        let Listener {
            stop,
            acceptor,
            addr,
        } = self;
        stop.store(true, Ordering::SeqCst);
        // The accept loop notices the flag with the next connection: make one.
        let target = loopback(addr);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !acceptor.is_finished() && Instant::now() < deadline {
            if TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_err() {
                thread::sleep(Duration::from_millis(5));
            }
            thread::sleep(Duration::from_millis(1));
        }
        if !acceptor.is_finished() {
            log::warn!("comfyui-sim: the accept loop on {addr} did not stop");
            return;
        }
        if acceptor.join().is_err() {
            log::error!("comfyui-sim accept loop panicked");
        }
        wait_until_refused(addr);
    }
}

/// `addr`, with an unspecified IP replaced by loopback, to connect to.
fn loopback(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// Polls until connecting to `addr` fails, so callers can rely on "refused" right away.
fn wait_until_refused(addr: SocketAddr) {
    let target = loopback(addr);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&target, Duration::from_millis(200)) {
            Ok(probe) => {
                let _ = probe.shutdown(std::net::Shutdown::Both);
                thread::sleep(Duration::from_millis(2));
            }
            Err(_) => return,
        }
    }
    log::warn!("comfyui-sim: {addr} still accepts connections after stopping");
}

/// Accepts connections until told to stop, each served on its own thread; the listening
/// socket closes when this returns.
fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener, stop: &AtomicBool, generation: u64) {
    for incoming in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match incoming {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted:
                // keep serving once it passes.
                log::warn!("comfyui-sim: accepting a connection failed: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name("comfyui-sim-conn".into())
            .spawn(move || handle(&shared, stream, generation));
        if let Err(e) = spawned {
            log::error!("comfyui-sim: cannot start a connection thread: {e}");
        }
    }
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// A stored file to stream instead of `body`.
    pub file: Option<Arc<FileData>>,
}

impl Reply {
    fn new(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            content_type: content_type.into(),
            headers: Vec::new(),
            body,
            file: None,
        }
    }

    /// A JSON answer, written as ComfyUI writes it.
    pub(crate) fn json(status: u16, value: &Value) -> Reply {
        Reply::json_text(status, super::pyjson::dumps(value))
    }

    fn json_text(status: u16, text: String) -> Reply {
        Reply::new(status, "application/json; charset=utf-8", text.into_bytes())
    }

    /// A plain-text answer.
    pub(crate) fn text(status: u16, text: &str) -> Reply {
        Reply::new(
            status,
            "text/plain; charset=utf-8",
            text.as_bytes().to_vec(),
        )
    }

    /// ComfyUI's bare `200` with no body.
    fn empty() -> Reply {
        Reply::new(200, "application/octet-stream", Vec::new())
    }

    /// A status with no body at all, as ComfyUI's `/view` answers a missing file (404) or a
    /// name that leaves its folder (400).
    fn empty_status(status: u16) -> Reply {
        Reply::new(status, "application/octet-stream", Vec::new())
    }

    fn not_found() -> Reply {
        Reply::text(404, "404: Not Found")
    }

    fn method_not_allowed() -> Reply {
        Reply::text(405, "405: Method Not Allowed")
    }

    /// For requests that reach a listener of a crashed (simulated) process.
    fn unavailable() -> Reply {
        Reply::text(
            503,
            "comfyui-sim: the simulated ComfyUI process is not running",
        )
    }
}

/// Writes `reply` with `Connection: close`; a client that went away is only logged.
fn write_reply(stream: &mut TcpStream, head_only: bool, reply: &Reply) {
    let result = wire::write_answer(
        stream,
        reply.status,
        &reply.content_type,
        &reply.headers,
        &reply.body,
        reply.file.as_deref(),
        head_only,
    );
    match result {
        Ok(()) => {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        Err(e) => log::debug!("comfyui-sim: writing a {} answer failed: {e}", reply.status),
    }
}

/// The parts of a request the routes look at.
struct Incoming<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: &'a [(String, String)],
    body: &'a [u8],
}

fn handle(shared: &Arc<Shared>, stream: TcpStream, generation: u64) {
    if let Err(e) = stream.set_read_timeout(Some(REQUEST_WAIT)) {
        log::debug!("comfyui-sim: cannot set a read timeout: {e}");
        return;
    }
    let request = match wire::read_request(stream, MAX_BODY) {
        Ok(request) => request,
        Err(ReadError::Gone(e)) => {
            log::debug!("comfyui-sim: reading a request failed: {e}");
            return;
        }
        Err(ReadError::Refused(status, mut stream)) => {
            write_reply(&mut stream, false, &Reply::text(status, "Bad request"));
            return;
        }
    };
    let method = request.method.to_ascii_uppercase();
    let url = request.target.clone();
    let (raw_path, query) = url.split_once('?').unwrap_or((&url, ""));
    // Newer ComfyUI serves every route under `/api` too.
    let path = match raw_path.strip_prefix("/api") {
        Some(rest) if rest.starts_with('/') => rest,
        _ => raw_path,
    };
    let upgrade = path == "/ws" && request.is_upgrade();
    shared.record(RecordedRequest {
        method: method.clone(),
        path: url.clone(),
        headers: request.headers.clone(),
        body: request.body.clone(),
    });
    let head_only = method == "HEAD";
    if shared.state().generation != generation || (upgrade && shared.state().refuse_websockets) {
        let mut stream = request.stream;
        write_reply(&mut stream, head_only, &Reply::unavailable());
        return;
    }
    if upgrade {
        ws::accept(shared, request, query_param(query, "clientId"), generation);
        return;
    }
    let incoming = Incoming {
        method: &method,
        path,
        query,
        headers: &request.headers,
        body: &request.body,
    };
    let (reply, events) = route(shared, &incoming);
    // Work that raced with a crash must not answer from the dead process's memory.
    let reply = if shared.state().generation == generation {
        reply
    } else {
        Reply::unavailable()
    };
    let mut stream = request.stream;
    write_reply(&mut stream, head_only, &reply);
    for event in events {
        shared.emit(event);
    }
}

type Routed = (Reply, Vec<SimEvent>);

fn route(shared: &Shared, req: &Incoming<'_>) -> Routed {
    let get = matches!(req.method, "GET" | "HEAD");
    let post = req.method == "POST";
    let plain = |reply: Reply| (reply, Vec::new());
    match req.path {
        "/" if get => plain(Reply::new(
            200,
            "text/html; charset=utf-8",
            b"<!doctype html><title>comfyui-sim</title><p>ComfyUI stand-in</p>".to_vec(),
        )),
        "/prompt" if get => {
            let remaining = shared.state().queue_remaining();
            plain(Reply::json(
                200,
                &json!({"exec_info": {"queue_remaining": remaining}}),
            ))
        }
        p if post && p.starts_with("/sim/") => {
            plain(control::route(shared, p, req.body).unwrap_or_else(Reply::not_found))
        }
        "/prompt" if post => plain(post_prompt(shared, req.body)),
        "/queue" if get => plain(Reply::json(200, &shared.state().queue_json())),
        "/queue" if post => post_queue(shared, req.body),
        "/interrupt" if post => post_interrupt(shared, req.body),
        "/history" if get => {
            let max_items = query_param(req.query, "max_items").and_then(|n| n.parse().ok());
            plain(Reply::json_text(
                200,
                shared.state().history_json(max_items),
            ))
        }
        "/history" if post => plain(post_history(shared, req.body)),
        "/view" if get => plain(view(shared, req.query)),
        "/upload/image" if post => plain(upload_image(shared, req.headers, req.body)),
        "/system_stats" if get => plain(Reply::json(200, &system_stats())),
        "/features" if get => plain(Reply::json(200, &ws::server_features())),
        "/object_info" if get => {
            let files = shared.state().input_names();
            plain(Reply::json(200, &nodes::all_object_info(&files)))
        }
        "/ws" if get => plain(Reply::text(400, "Expected a websocket upgrade")),
        p if get && p.starts_with("/history/") => {
            let id = super::ids::percent_decode(&p["/history/".len()..], false);
            let st = shared.state();
            let text = match st.history_entry(&id) {
                Some(entry) => format!(
                    "{{{}: {}}}",
                    super::pyjson::dumps(&Value::from(id.as_str())),
                    super::pyjson::dumps(entry)
                ),
                None => "{}".into(),
            };
            plain(Reply::json_text(200, text))
        }
        p if get && p.starts_with("/object_info/") => {
            let name = super::ids::percent_decode(&p["/object_info/".len()..], false);
            let files = shared.state().input_names();
            let body = match nodes::find(&name) {
                Some(class) => json!({ name: class.object_info(&files) }),
                None => json!({}),
            };
            plain(Reply::json(200, &body))
        }
        p if is_known_path(p) => plain(Reply::method_not_allowed()),
        _ => plain(Reply::not_found()),
    }
}

fn is_known_path(path: &str) -> bool {
    matches!(
        path,
        "/" | "/prompt"
            | "/queue"
            | "/interrupt"
            | "/history"
            | "/view"
            | "/upload/image"
            | "/system_stats"
            | "/features"
            | "/object_info"
            | "/ws"
    ) || path.starts_with("/history/")
        || path.starts_with("/object_info/")
}

fn bad_request(body: &Value) -> Reply {
    Reply::json(400, body)
}

/// `POST /prompt`: validate, queue, answer `{prompt_id, number, node_errors}`.
fn post_prompt(shared: &Shared, body: &[u8]) -> Reply {
    if let Some(fault) = take_prompt_fault(shared) {
        return Reply::text(fault.status, &fault.body);
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        // aiohttp's answer to the handler's uncaught JSONDecodeError.
        Err(_) => {
            return Reply::text(
                500,
                "500 Internal Server Error\n\nServer got itself in trouble",
            );
        }
    };
    let Some(graph_json) = request.get("prompt") else {
        return bad_request(&validate::error_body(
            "no_prompt",
            "No prompt provided",
            "No prompt provided",
            json!({}),
        ));
    };
    let graph = match Graph::parse(graph_json) {
        Ok(g) => g,
        Err(e) => return bad_request(&validate::structure_error_body(&e)),
    };
    let files = shared.state().input_names();
    let (outputs, node_errors) = match validate::validate_prompt(&graph, &files) {
        Verdict::Accepted {
            outputs,
            node_errors,
        } => (outputs, node_errors),
        Verdict::Rejected(body) => return bad_request(&body),
    };
    // ComfyUI runs the outputs in the order of a Python set, not by node id: in the captures
    // of 0.3.64 the last output ran first. Clients must not rely on either.
    let outputs: Vec<String> = outputs.into_iter().rev().collect();
    let prompt_id = match request.get("prompt_id") {
        None | Some(Value::Null) => super::ids::new_uuid(),
        Some(Value::String(id)) if super::ids::is_lowercase_uuid(id) => id.clone(),
        Some(other) => {
            let message = format!("Invalid prompt_id {other}: it must be a lowercase UUID");
            return bad_request(&validate::error_body(
                "invalid_prompt",
                &message,
                "",
                json!({}),
            ));
        }
    };
    let mut extra_data = match request.get("extra_data") {
        Some(Value::Object(map)) => Value::Object(map.clone()),
        _ => json!({}),
    };
    if let Some(client_id) = request.get("client_id") {
        extra_data["client_id"] = client_id.clone();
    }
    let front = request
        .get("front")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let number = {
        let mut st = shared.state();
        if st.reject_next {
            st.reject_next = false;
            return bad_request(&validate::simulated_rejection(&graph, &outputs));
        }
        let number = st.enqueue(
            prompt_id.clone(),
            graph_json.clone(),
            extra_data,
            outputs,
            front,
        );
        // Emitted under the lock so it precedes the worker's ExecutionStarted.
        shared.emit(SimEvent::PromptQueued {
            prompt_id: prompt_id.clone(),
            number: number.unsigned_abs(),
        });
        number
    };
    shared.wake.notify_all();
    shared.broadcast_status();
    Reply::json(
        200,
        &json!({"prompt_id": prompt_id, "number": number, "node_errors": node_errors}),
    )
}

/// Uses up one `/prompt` answer of an armed [`crate::PromptFault`].
fn take_prompt_fault(shared: &Shared) -> Option<crate::PromptFault> {
    let mut st = shared.state();
    let fault = st.prompt_fault.as_mut()?;
    let answer = fault.clone();
    if fault.times != u32::MAX {
        fault.times -= 1;
        if fault.times == 0 {
            st.prompt_fault = None;
        }
    }
    Some(answer)
}

/// A JSON body, or `{}` when it is empty or not JSON (ComfyUI is lenient here too).
fn json_body(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| json!({}))
}

fn string_list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// `POST /queue`: delete or clear pending prompts; a running one is left alone.
fn post_queue(shared: &Shared, body: &[u8]) -> Routed {
    let body = json_body(body);
    // As ComfyUI's PromptQueue: clearing always broadcasts `status`; each deleted id once, and
    // twice when it was the last one pending (it wipes the queue, which broadcasts too).
    let (removed, statuses) = {
        let mut st = shared.state();
        let mut removed = Vec::new();
        let mut statuses = 0;
        if body.get("clear").and_then(Value::as_bool) == Some(true) {
            removed.extend(st.clear_pending());
            statuses += 1;
        }
        if let Some(ids) = body.get("delete") {
            for id in string_list(ids) {
                let last = st.pending_count() == 1;
                let gone = st.delete_pending(std::slice::from_ref(&id));
                if !gone.is_empty() {
                    statuses += if last { 2 } else { 1 };
                }
                removed.extend(gone);
            }
        }
        (removed, statuses)
    };
    for _ in 0..statuses {
        shared.broadcast_status();
    }
    (
        Reply::empty(),
        vec![SimEvent::QueueDeleted {
            prompt_ids: removed,
        }],
    )
}

/// `POST /interrupt`: stops the running prompt, or only the named one when a `prompt_id` is given.
fn post_interrupt(shared: &Shared, body: &[u8]) -> Routed {
    let body = json_body(body);
    let wanted = body.get("prompt_id").and_then(Value::as_str);
    let interrupted = {
        let mut st = shared.state();
        let running = st.running.as_ref().map(|r| r.item.prompt_id.clone());
        match running {
            Some(id) if wanted.is_none_or(|w| w == id) => {
                st.interrupt = true;
                Some(id)
            }
            _ => None,
        }
    };
    shared.wake.notify_all();
    (
        Reply::empty(),
        vec![SimEvent::Interrupted {
            prompt_id: interrupted,
        }],
    )
}

/// `POST /history`: `{"clear": true}` and/or `{"delete": [...]}`.
fn post_history(shared: &Shared, body: &[u8]) -> Reply {
    let body = json_body(body);
    let mut st = shared.state();
    if body.get("clear").and_then(Value::as_bool) == Some(true) {
        st.clear_history();
    }
    if let Some(ids) = body.get("delete") {
        st.delete_history(&string_list(ids));
    }
    Reply::empty()
}

/// A file or folder name a client may use: no parent steps, not absolute.
fn is_safe_name(name: &str) -> bool {
    !name.contains("..") && !name.starts_with('/') && !name.starts_with('\\')
}

/// `GET /view?filename=&subfolder=&type=`.
fn view(shared: &Shared, query: &str) -> Reply {
    let Some(filename) = query_param(query, "filename").filter(|f| !f.is_empty()) else {
        return Reply::empty_status(404);
    };
    let subfolder = query_param(query, "subfolder").unwrap_or_default();
    let kind = query_param(query, "type").unwrap_or_else(|| "output".into());
    if !is_safe_name(&filename) || !is_safe_name(&subfolder) {
        return Reply::empty_status(400);
    }
    if !matches!(kind.as_str(), "output" | "input" | "temp") {
        return Reply::empty_status(400);
    }
    let key = FileKey::new(&kind, subfolder.trim_matches('/'), &filename);
    let Some(file) = shared.state().files.get(&key).cloned() else {
        return Reply::empty_status(404);
    };
    let mut reply = Reply::new(200, content_type_for(&filename), Vec::new());
    reply.file = Some(file);
    reply.headers.push((
        "Content-Disposition".into(),
        format!("filename=\"{}\"", filename.replace('"', "")),
    ));
    reply
}

fn content_type_for(filename: &str) -> &'static str {
    let lower = filename.to_ascii_lowercase();
    match lower.rsplit_once('.').map(|(_, ext)| ext) {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("mp4") => "video/mp4",
        Some("webm") => "video/webm",
        Some("mov") => "video/quicktime",
        Some("flac") => "audio/flac",
        Some("mp3") => "audio/mpeg",
        Some("wav") => "audio/x-wav",
        Some("opus") => "audio/opus",
        Some("ogg") => "audio/ogg",
        Some("glb") => "model/gltf-binary",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// `POST /upload/image` (multipart): stores the `image` part, renaming to `name (1).ext` when a
/// different file already has the name and `overwrite` is not set.
fn upload_image(shared: &Shared, headers: &[(String, String)], body: &[u8]) -> Reply {
    let content_type = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let Some(boundary) = multipart_boundary(content_type) else {
        return Reply::text(400, "400: Bad Request");
    };
    let Some(parts) = parse_multipart(body, &boundary) else {
        return Reply::text(400, "400: Bad Request");
    };
    let field = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name && p.filename.is_none())
            .map(|p| String::from_utf8_lossy(&p.data).into_owned())
    };
    let Some(image) = parts.iter().find(|p| p.name == "image") else {
        return Reply::text(400, "400: Bad Request");
    };
    let Some(filename) = image.filename.clone().filter(|f| !f.is_empty()) else {
        return Reply::text(400, "400: Bad Request");
    };
    let kind = match field("type").as_deref() {
        Some("temp") => "temp",
        Some("output") => "output",
        _ => "input",
    };
    let subfolder = field("subfolder").unwrap_or_default();
    let subfolder = subfolder.trim_matches('/');
    if !is_safe_name(&filename) || filename.contains('/') || !is_safe_name(subfolder) {
        return Reply::text(400, "400: Bad Request");
    }
    let overwrite = matches!(field("overwrite").as_deref(), Some("true" | "1"));
    let name = {
        let mut st = shared.state();
        let name = if overwrite {
            filename.clone()
        } else {
            free_name(&filename, |candidate| {
                st.files
                    .get(&FileKey::new(kind, subfolder, candidate))
                    .map(|existing| existing.head() == image.data.as_slice())
            })
        };
        st.store_file(
            FileKey::new(kind, subfolder, &name),
            FileData::Bytes(image.data.clone()),
        );
        name
    };
    Reply::json(
        200,
        &json!({"name": name, "subfolder": subfolder, "type": kind}),
    )
}

/// The name an upload gets without `overwrite`: `filename` itself when free or holding the same
/// bytes, else the first free (or identical) `stem (i).ext`. `same(name)` tells whether `name`
/// exists (`Some`) and holds the same bytes (`Some(true)`).
fn free_name(filename: &str, same: impl Fn(&str) -> Option<bool>) -> String {
    let (stem, ext) = match filename.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, format!(".{ext}")),
        _ => (filename, String::new()),
    };
    let mut candidate = filename.to_string();
    let mut i = 1;
    while same(&candidate) == Some(false) {
        candidate = format!("{stem} ({i}){ext}");
        i += 1;
    }
    candidate
}

/// The `boundary` parameter of a `multipart/form-data` content type.
fn multipart_boundary(content_type: &str) -> Option<String> {
    let (mime, params) = content_type.split_once(';')?;
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    header_params(params)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v)
        .filter(|b| !b.is_empty())
}

/// `a=1; b="x;y"` into pairs, honouring quotes and backslash escapes inside them.
fn header_params(params: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pieces = Vec::new();
    let (mut current, mut quoted, mut escaped) = (String::new(), false, false);
    for c in params.chars() {
        match c {
            _ if escaped => {
                current.push(c);
                escaped = false;
            }
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => pieces.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    pieces.push(current);
    for piece in pieces {
        if let Some((k, v)) = piece.split_once('=') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// One part of a multipart body.
#[derive(Debug, Clone, PartialEq)]
struct Part {
    name: String,
    filename: Option<String>,
    data: Vec<u8>,
}

/// Splits a `multipart/form-data` body; `None` when it is malformed.
fn parse_multipart(body: &[u8], boundary: &str) -> Option<Vec<Part>> {
    let delimiter = format!("--{boundary}");
    let next_delimiter = format!("\r\n--{boundary}");
    let mut pos = find(body, delimiter.as_bytes(), 0)? + delimiter.len();
    let mut parts = Vec::new();
    loop {
        if body.get(pos..pos + 2) == Some(b"--") {
            return Some(parts);
        }
        pos = find(body, b"\r\n", pos)? + 2;
        let headers_end = find(body, b"\r\n\r\n", pos)?;
        let head = String::from_utf8_lossy(&body[pos..headers_end]).into_owned();
        let data_start = headers_end + 4;
        let data_end = find(body, next_delimiter.as_bytes(), data_start)?;
        if let Some(part) = part_from(&head, &body[data_start..data_end]) {
            parts.push(part);
        }
        pos = data_end + next_delimiter.len();
    }
}

fn part_from(head: &str, data: &[u8]) -> Option<Part> {
    let disposition = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-disposition")
            .then_some(value)
    })?;
    let (_, params) = disposition.split_once(';')?;
    let params = header_params(params);
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    Some(Part {
        name: get("name")?,
        filename: get("filename"),
        data: data.to_vec(),
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// `GET /system_stats`: plausible numbers for a CPU-only machine.
fn system_stats() -> Value {
    let gib = 1u64 << 30;
    json!({
        "system": {
            "os": "posix",
            "ram_total": 16 * gib,
            "ram_free": 8 * gib,
            "comfyui_version": "0.3.43",
            "required_frontend_version": "1.23.4",
            "python_version": "3.12.3 (main, comfyui-sim)",
            "pytorch_version": "2.7.1+cpu",
            "embedded_python": false,
            "argv": ["comfyui-sim"],
        },
        "devices": [{
            "name": "cpu",
            "type": "cpu",
            "index": null,
            "vram_total": 16 * gib,
            "vram_free": 8 * gib,
            "torch_vram_total": 16 * gib,
            "torch_vram_free": 8 * gib,
        }],
    })
}

/// The decoded value of query parameter `name`.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (super::ids::percent_decode(k, true) == name).then(|| super::ids::percent_decode(v, true))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_parts_keep_binary_data_and_quoted_names() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a;b.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n\x00\xff\r\n--XyZ\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n--XyZ--\r\n";
        let parts = parse_multipart(body, "XyZ").expect("well-formed");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].filename.as_deref(), Some("a;b.png"));
        assert_eq!(parts[0].data, b"\x89PNG\r\n\x00\xff");
        assert_eq!(
            (parts[1].name.as_str(), parts[1].data.as_slice()),
            ("overwrite", &b"true"[..])
        );
    }

    #[test]
    fn boundary_is_read_quoted_or_bare() {
        assert_eq!(
            multipart_boundary("multipart/form-data; boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(
            multipart_boundary("multipart/form-data;boundary=xyz").as_deref(),
            Some("xyz")
        );
        assert_eq!(multipart_boundary("application/json"), None);
    }

    #[test]
    fn free_names_skip_different_files_and_reuse_identical_ones() {
        let existing = |name: &str| match name {
            "cat.png" => Some(false),
            "cat (1).png" => Some(true),
            _ => None,
        };
        assert_eq!(free_name("cat.png", existing), "cat (1).png");
        assert_eq!(free_name("dog.png", existing), "dog.png");
        assert_eq!(
            free_name("cat.png", |n| (n == "cat.png").then_some(false)),
            "cat (1).png"
        );
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query_param("filename=a%20b+c.png&type=output", "filename").as_deref(),
            Some("a b c.png")
        );
        assert_eq!(query_param("x=1", "filename"), None);
    }
}
