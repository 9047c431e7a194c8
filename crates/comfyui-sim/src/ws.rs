//! The `/ws` endpoint: websocket handshakes, the registry of sockets by client id, and the two
//! threads of each socket.
//!
//! Like ComfyUI's `server.py`, the registry maps a client id to ONE socket. A client that
//! connects again with the same id takes the registration over; the older socket stays open
//! but gets nothing more. When a socket ends from the client's side, the registration of its
//! client id is removed, whichever socket holds it by then: a client that reconnected with the
//! same id before its old socket's end was processed loses its new registration, and that
//! socket then gets no messages at all. `status` goes to every registered socket.
//!
//! Each socket has a writer thread fed by a channel (so the worker and HTTP threads never block
//! on a slow client while holding a lock, and messages to one socket keep their order) and a
//! reader thread (the connection's own thread) that reads what the client sends: the
//! `feature_flags` announcement, pings, the close. The reader parses frames with its own
//! tungstenite state over a clone of the stream and never writes: replies go through the writer.
//! Senders that need to know when bytes went out (for [`SimEvent`]s) wait for an
//! acknowledgement carrying the instant the frame was flushed.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::{Value, json};
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

use super::pyjson;
use super::state::SimState;
use super::wire::{self, Request};
use super::{Shared, SimEvent, WsStats, lock};

/// How long a sender waits for a socket thread to write a frame before giving up on that
/// client; also the socket's write timeout.
const WRITE_WAIT: Duration = Duration::from_secs(2);

/// The writer threads only move frames from a channel to a socket.
const WRITER_STACK: usize = 128 * 1024;

/// What ComfyUI answers a client's `feature_flags` with (and `GET /features`).
pub(crate) fn server_features() -> Value {
    json!({"supports_preview_metadata": true, "max_upload_size": 100 * 1024 * 1024})
}

enum Command {
    /// Write this frame; report the instant it was flushed, or `None` if writing failed.
    Send(Message, Option<Sender<Option<Instant>>>),
    /// The client sent a close frame: answer it and end.
    CloseReply,
}

/// One open socket, registered under a client id or not.
struct Conn {
    tx: Sender<Command>,
    /// A handle on the connection, to end it from any thread.
    stream: TcpStream,
    /// Set when the simulator ends the socket itself: its reader then unregisters nothing.
    ended_by_server: Arc<AtomicBool>,
}

/// A client id's registration: the socket holding it and what that client announced.
struct Registration {
    socket: u64,
    preview_metadata: bool,
}

struct Sockets {
    /// Sockets of an older generation (before a crash) are refused on registration.
    generation: u64,
    /// Test control: messages are dropped instead of written, while sockets stay open.
    muted: bool,
    /// Every open socket by number.
    open: HashMap<u64, Conn>,
    /// ComfyUI's `sockets` dict: client id to socket number.
    by_client: HashMap<String, Registration>,
    next_id: u64,
    peak_open: usize,
}

/// The connected websockets, and counts of what they cost.
pub(crate) struct Hub {
    inner: Mutex<Sockets>,
    accepted: AtomicU64,
    status_sent: AtomicU64,
    messages_sent: AtomicU64,
    previews_sent: AtomicU64,
}

/// A message frame's text: `{"type": kind, "data": data}`, written as ComfyUI writes it.
pub(crate) fn message(kind: &str, data: Value) -> String {
    format!(
        "{{\"type\": {}, \"data\": {}}}",
        pyjson::dumps(&Value::from(kind)),
        pyjson::dumps(&data)
    )
}

/// A `status` message; `sid` only in the first message a socket receives.
pub(crate) fn status_message(queue_remaining: usize, sid: Option<&str>) -> String {
    let mut data = json!({"status": {"exec_info": {"queue_remaining": queue_remaining}}});
    if let Some(sid) = sid {
        data["sid"] = json!(sid);
    }
    message("status", data)
}

impl Hub {
    /// An empty hub.
    pub(crate) fn new() -> Hub {
        Hub {
            inner: Mutex::new(Sockets {
                generation: 0,
                muted: false,
                open: HashMap::new(),
                by_client: HashMap::new(),
                next_id: 0,
                peak_open: 0,
            }),
            accepted: AtomicU64::new(0),
            status_sent: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            previews_sent: AtomicU64::new(0),
        }
    }

    /// The counts so far.
    pub(crate) fn stats(&self) -> WsStats {
        let inner = lock(&self.inner);
        WsStats {
            accepted: self.accepted.load(Ordering::SeqCst),
            open: inner.open.len(),
            peak_open: inner.peak_open,
            registered: inner.by_client.len(),
            status_sent: self.status_sent.load(Ordering::SeqCst),
            messages_sent: self.messages_sent.load(Ordering::SeqCst),
            previews_sent: self.previews_sent.load(Ordering::SeqCst),
        }
    }

    /// Sends a text frame to `client_id`'s socket and waits until it was flushed; returns that
    /// instant, or `None` when the client has no socket or writing failed.
    pub(crate) fn send_text(&self, client_id: &str, text: String) -> Option<Instant> {
        self.send(client_id, Message::text(text))
    }

    /// Like [`send_text`](Self::send_text) for a binary preview frame.
    pub(crate) fn send_preview(&self, client_id: &str, bytes: Vec<u8>) -> Option<Instant> {
        let sent = self.send(client_id, Message::binary(bytes));
        if sent.is_some() {
            self.previews_sent.fetch_add(1, Ordering::SeqCst);
        }
        sent
    }

    /// Whether `client_id`'s registration announced `supports_preview_metadata`.
    pub(crate) fn wants_preview_metadata(&self, client_id: &str) -> bool {
        lock(&self.inner)
            .by_client
            .get(client_id)
            .is_some_and(|r| r.preview_metadata)
    }

    /// Drops (`true`) or delivers again (`false`) every later message, keeping sockets open.
    pub(crate) fn set_muted(&self, muted: bool) {
        lock(&self.inner).muted = muted;
    }

    fn send(&self, client_id: &str, msg: Message) -> Option<Instant> {
        let tx = {
            let inner = lock(&self.inner);
            let registration = inner.by_client.get(client_id)?;
            if inner.muted {
                return Some(Instant::now()); // "sent", into the void
            }
            inner.open.get(&registration.socket)?.tx.clone()
        };
        self.messages_sent.fetch_add(1, Ordering::SeqCst);
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        tx.send(Command::Send(msg, Some(ack_tx)))
            .ok()
            .and_then(|()| ack_rx.recv_timeout(WRITE_WAIT).ok().flatten())
    }

    /// Queues `status` for every registered socket without waiting, as ComfyUI broadcasts it.
    pub(crate) fn broadcast_status(&self, text: &str) {
        let inner = lock(&self.inner);
        if inner.muted {
            return;
        }
        let mut sent = 0;
        for registration in inner.by_client.values() {
            if let Some(conn) = inner.open.get(&registration.socket) {
                let frame = Message::text(text.to_string());
                if conn.tx.send(Command::Send(frame, None)).is_ok() {
                    sent += 1;
                }
            }
        }
        self.status_sent.fetch_add(sent, Ordering::SeqCst);
        self.messages_sent.fetch_add(sent, Ordering::SeqCst);
    }

    /// Ends every socket, registered or not, without a close frame, as a dying process would;
    /// sockets registering later must belong to `generation`.
    pub(crate) fn close_all(&self, generation: u64) {
        let conns: Vec<Conn> = {
            let mut inner = lock(&self.inner);
            inner.generation = generation;
            inner.by_client.clear();
            inner.open.drain().map(|(_, conn)| conn).collect()
        };
        for conn in conns {
            conn.ended_by_server.store(true, Ordering::SeqCst);
            // Wakes the reader (and a writer stuck on a full buffer); the client sees the end.
            let _ = conn.stream.shutdown(Shutdown::Both);
        }
    }

    /// Registers a new open socket as `client_id`'s, taking the registration from any older
    /// socket (which stays open, unregistered). `None` when the simulator crashed since the
    /// connection was accepted.
    fn register(&self, generation: u64, client_id: &str, conn: Conn) -> Option<u64> {
        let mut inner = lock(&self.inner);
        if inner.generation != generation {
            return None;
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.open.insert(id, conn);
        inner.peak_open = inner.peak_open.max(inner.open.len());
        let registration = Registration {
            socket: id,
            preview_metadata: false,
        };
        inner.by_client.insert(client_id.to_string(), registration);
        self.accepted.fetch_add(1, Ordering::SeqCst);
        Some(id)
    }

    /// ComfyUI's `finally` after a socket ended: forgets socket `id` and removes the
    /// registration of `client_id`, whichever socket holds it. Returns whether that was a
    /// newer socket (the reused-id race).
    fn ended(&self, id: u64, client_id: &str) -> bool {
        let mut inner = lock(&self.inner);
        inner.open.remove(&id);
        inner
            .by_client
            .remove(client_id)
            .is_some_and(|r| r.socket != id)
    }

    /// Records a client's announced features on its client id's registration, as ComfyUI does
    /// (by id, so a newer socket with the same id gets them).
    fn set_features(&self, client_id: &str, flags: &Value) {
        let mut inner = lock(&self.inner);
        if let Some(registration) = inner.by_client.get_mut(client_id) {
            registration.preview_metadata = flags
                .get("supports_preview_metadata")
                .and_then(Value::as_bool)
                .unwrap_or(false);
        }
    }
}

/// Answers `GET /ws?clientId=...`: upgrades, greets with `status` (and `executing` when this
/// client's prompt is running), registers the socket, then reads the client's frames on this
/// thread until the socket ends.
pub(crate) fn accept(
    shared: &Arc<Shared>,
    request: Request,
    client_id: Option<String>,
    generation: u64,
) {
    let Request {
        headers,
        leftover,
        mut stream,
        ..
    } = request;
    let key = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Sec-WebSocket-Key"))
        .map(|(_, v)| v.clone());
    let Some(key) = key else {
        let body = b"Missing Sec-WebSocket-Key header";
        let content_type = "text/plain; charset=utf-8";
        let _ = wire::write_answer(&mut stream, 400, content_type, &[], body, None, false);
        return;
    };
    // ComfyUI names anonymous sockets with a hex UUID.
    let sid = client_id
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| super::ids::new_uuid().replace('-', ""));
    let accept_key = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let setup = wire::write_switching(&mut stream, &accept_key)
        .and_then(|()| stream.set_read_timeout(None))
        .and_then(|()| stream.set_write_timeout(Some(WRITE_WAIT)))
        .and_then(|()| stream.set_nodelay(true))
        .and_then(|()| Ok((stream.try_clone()?, stream.try_clone()?)));
    let (write_half, handle) = match setup {
        Ok(halves) => halves,
        Err(e) => {
            log::debug!("comfyui-sim: websocket handshake failed: {e}");
            return;
        }
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    let writer = WebSocket::from_raw_socket(write_half, Role::Server, None);
    let spawned = thread::Builder::new()
        .name("comfyui-sim-ws".into())
        .stack_size(WRITER_STACK)
        .spawn(move || write_loop(writer, rx));
    if let Err(e) = spawned {
        log::error!("comfyui-sim: cannot start a websocket thread: {e}");
        return;
    }
    let ended_by_server = Arc::new(AtomicBool::new(false));
    let conn = Conn {
        tx: tx.clone(),
        stream: handle,
        ended_by_server: Arc::clone(&ended_by_server),
    };
    let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
    let registered = {
        // Greeting, current node and registration happen under the state lock: the worker
        // changes nodes under it too, so the client misses no node and sees no stale one last.
        let st = shared.state();
        let greeting = status_message(st.queue_remaining(), Some(&sid));
        let _ = tx.send(Command::Send(Message::text(greeting), Some(ack_tx)));
        if let Some(executing) = current_node_message(&st, &sid) {
            let _ = tx.send(Command::Send(Message::text(executing), None));
        }
        shared.hub.register(generation, &sid, conn)
    };
    let Some(id) = registered else {
        let _ = stream.shutdown(Shutdown::Both);
        return;
    };
    shared.hub.status_sent.fetch_add(1, Ordering::SeqCst);
    if ack_rx.recv_timeout(WRITE_WAIT).ok().flatten().is_some() {
        shared.emit(SimEvent::WsConnected {
            client_id: sid.clone(),
        });
    }
    let reader = WebSocket::from_partially_read(ReadHalf(stream), leftover, Role::Server, None);
    read_loop(shared, reader, &tx, id, &sid, &ended_by_server);
}

/// On reconnect ComfyUI tells the client which node of its running prompt is executing, with
/// nothing but the node id.
fn current_node_message(st: &SimState, sid: &str) -> Option<String> {
    let running = st.running.as_ref()?;
    if running.item.client_id().as_deref() != Some(sid) {
        return None;
    }
    let node = running.node.as_deref()?;
    Some(message("executing", json!({ "node": node })))
}

/// The reading side of a socket: reads the stream, and swallows what tungstenite would write
/// back by itself (pong and close replies go through the writer thread instead).
struct ReadHalf(TcpStream);

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for ReadHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads the client's frames until the socket ends, then does what ComfyUI's handler does in
/// its `finally`, unless the simulator ended the socket itself.
fn read_loop(
    shared: &Shared,
    mut socket: WebSocket<ReadHalf>,
    tx: &Sender<Command>,
    id: u64,
    sid: &str,
    ended_by_server: &AtomicBool,
) {
    let mut first_text = true;
    let mut client_closed = false;
    loop {
        match socket.read() {
            Ok(Message::Text(text)) => {
                if first_text {
                    first_message(shared, sid, text.as_str());
                }
                first_text = false;
            }
            Ok(Message::Ping(payload)) => {
                let _ = tx.send(Command::Send(Message::Pong(payload), None));
            }
            Ok(Message::Close(_)) => {
                client_closed = true;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if ended_by_server.load(Ordering::SeqCst) {
        return;
    }
    let removed_newer = shared.hub.ended(id, sid);
    if client_closed {
        let _ = tx.send(Command::CloseReply);
    }
    shared.emit(SimEvent::WsClosed {
        client_id: sid.to_string(),
        removed_newer,
    });
}

/// ComfyUI reads only a client's first text message: `feature_flags`, answered with the
/// server's own.
fn first_message(shared: &Shared, sid: &str, text: &str) {
    let Ok(parsed) = serde_json::from_str::<Value>(text) else {
        return;
    };
    if parsed.get("type").and_then(Value::as_str) != Some("feature_flags") {
        return;
    }
    let flags = parsed.get("data").cloned().unwrap_or_else(|| json!({}));
    shared.hub.set_features(sid, &flags);
    shared
        .hub
        .send_text(sid, message("feature_flags", server_features()));
    shared.emit(SimEvent::FeatureFlags {
        client_id: sid.to_string(),
        flags,
    });
}

/// Writes what the channel brings until a write fails, the client's close is answered, or
/// every sender is gone (the socket ended); then ends the TCP connection.
fn write_loop(mut socket: WebSocket<TcpStream>, rx: Receiver<Command>) {
    for command in rx.iter() {
        match command {
            Command::Send(msg, ack) => {
                let written = socket.send(msg).ok().map(|()| Instant::now());
                if let Some(ack) = ack {
                    let _ = ack.send(written);
                }
                if written.is_none() {
                    break;
                }
            }
            Command::CloseReply => {
                let _ = socket.close(None);
                let _ = socket.flush();
                break;
            }
        }
    }
    let _ = socket.get_mut().shutdown(Shutdown::Both);
}
