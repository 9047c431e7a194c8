//! The `/ws` endpoint: upgrading tiny_http requests to websockets and routing messages to them.
//!
//! Each socket has one writer thread fed by a channel, so the worker and HTTP threads never
//! block on a slow client while holding a lock, and messages to one socket keep their order.
//! Senders that need to know when bytes went out (for [`SimEvent`]s) wait for
//! an acknowledgement carrying the instant the frame was flushed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::{Value, json};
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

use super::state::SimState;
use super::{Shared, SimEvent, lock};

/// How long a sender waits for a socket thread to write a frame (or to close) before giving up
/// on that client: sockets from tiny_http cannot carry a write timeout themselves.
const WRITE_WAIT: Duration = Duration::from_secs(2);

type Stream = Box<dyn tiny_http::ReadWrite + Send>;

enum Command {
    /// Write this frame; report the instant it was flushed, or `None` if writing failed.
    Send(Message, Option<Sender<Option<Instant>>>),
    /// Drop the connection without a close frame, like a dying process; then acknowledge.
    Close(Sender<()>),
}

struct Socket {
    id: u64,
    tx: Sender<Command>,
}

struct Sockets {
    /// Sockets of an older generation (before a crash) are refused on registration.
    generation: u64,
    /// Test control: messages are dropped instead of written, while sockets stay open.
    muted: bool,
    by_client: HashMap<String, Socket>,
    next_id: u64,
}

/// The connected websockets, by client id.
pub(crate) struct Hub {
    inner: Mutex<Sockets>,
}

/// A message frame's text: `{"type": kind, "data": data}`.
pub(crate) fn message(kind: &str, data: Value) -> String {
    json!({"type": kind, "data": data}).to_string()
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
                by_client: HashMap::new(),
                next_id: 0,
            }),
        }
    }

    /// Sends a text frame to `client_id`'s socket and waits until it was flushed; returns that
    /// instant, or `None` when the client has no socket or writing failed.
    pub(crate) fn send_text(&self, client_id: &str, text: String) -> Option<Instant> {
        self.send(client_id, Message::text(text))
    }

    /// Like [`send_text`](Self::send_text) for a binary frame.
    pub(crate) fn send_binary(&self, client_id: &str, bytes: Vec<u8>) -> Option<Instant> {
        self.send(client_id, Message::binary(bytes))
    }

    /// Drops (`true`) or delivers again (`false`) every later message, keeping sockets open.
    pub(crate) fn set_muted(&self, muted: bool) {
        lock(&self.inner).muted = muted;
    }

    fn send(&self, client_id: &str, msg: Message) -> Option<Instant> {
        let (id, tx) = {
            let inner = lock(&self.inner);
            let socket = inner.by_client.get(client_id)?;
            if inner.muted {
                return Some(Instant::now()); // "sent", into the void
            }
            (socket.id, socket.tx.clone())
        };
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        let written = tx
            .send(Command::Send(msg, Some(ack_tx)))
            .ok()
            .and_then(|()| ack_rx.recv_timeout(WRITE_WAIT).ok().flatten());
        if written.is_none() {
            self.forget(client_id, id);
        }
        written
    }

    /// Queues a text frame for every socket without waiting.
    pub(crate) fn broadcast(&self, text: String) {
        let mut inner = lock(&self.inner);
        if inner.muted {
            return;
        }
        inner.by_client.retain(|_, socket| {
            socket
                .tx
                .send(Command::Send(Message::text(text.clone()), None))
                .is_ok()
        });
    }

    /// Ends every socket without a close frame and waits (briefly) until each is gone. Sockets
    /// registering later must belong to `generation`.
    pub(crate) fn close_all(&self, generation: u64) {
        let sockets: Vec<Socket> = {
            let mut inner = lock(&self.inner);
            inner.generation = generation;
            inner.by_client.drain().map(|(_, s)| s).collect()
        };
        let waits: Vec<Receiver<()>> = sockets
            .iter()
            .filter_map(|socket| {
                let (done_tx, done_rx) = crossbeam_channel::bounded(1);
                socket
                    .tx
                    .send(Command::Close(done_tx))
                    .ok()
                    .map(|()| done_rx)
            })
            .collect();
        for done in waits {
            // An error means the thread already ended, which also closed the socket.
            let _ = done.recv_timeout(WRITE_WAIT);
        }
    }

    /// Makes `socket` the one for `client_id`, dropping (and so closing) any previous one.
    /// Refused (returns false) when the simulator crashed since the connection was accepted.
    fn register(&self, generation: u64, client_id: &str, tx: Sender<Command>) -> bool {
        let mut inner = lock(&self.inner);
        if inner.generation != generation {
            return false;
        }
        inner.next_id += 1;
        let socket = Socket {
            id: inner.next_id,
            tx,
        };
        inner.by_client.insert(client_id.to_string(), socket);
        true
    }

    /// Removes `client_id`'s socket if it is still the one numbered `id`.
    fn forget(&self, client_id: &str, id: u64) {
        let mut inner = lock(&self.inner);
        if inner.by_client.get(client_id).is_some_and(|s| s.id == id) {
            inner.by_client.remove(client_id);
        }
    }
}

/// Answers `GET /ws?clientId=...`: upgrades, greets with `status` (and `executing` when this
/// client's prompt is running), then hands the socket to its writer thread.
pub(crate) fn accept(
    shared: &Arc<Shared>,
    request: tiny_http::Request,
    client_id: Option<String>,
    generation: u64,
) {
    let key = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Sec-WebSocket-Key"))
        .map(|h| h.value.as_str().to_string());
    let Some(key) = key else {
        super::http::write_reply(
            request,
            &super::http::Reply::text(400, "Missing Sec-WebSocket-Key header"),
        );
        return;
    };
    // ComfyUI names anonymous sockets with a hex UUID.
    let sid = client_id
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| crate::ids::new_uuid().replace('-', ""));
    let accept_key = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let header = tiny_http::Header::from_bytes("Sec-WebSocket-Accept", accept_key)
        .expect("a base64 accept key is a valid header value");
    let response = tiny_http::Response::empty(101).with_header(header);
    let stream = request.upgrade("websocket", response);
    let socket = WebSocket::from_raw_socket(stream, Role::Server, None);

    let (tx, rx) = crossbeam_channel::unbounded();
    let spawned = thread::Builder::new()
        .name("comfyui-sim-ws".into())
        .spawn(move || write_loop(socket, rx));
    if let Err(e) = spawned {
        log::error!("comfyui-sim: cannot start a websocket thread: {e}");
        return;
    }
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
        shared.hub.register(generation, &sid, tx)
    };
    if registered && ack_rx.recv_timeout(WRITE_WAIT).ok().flatten().is_some() {
        shared.emit(SimEvent::WsConnected { client_id: sid });
    }
}

/// On reconnect ComfyUI tells the client which node of its running prompt is executing.
fn current_node_message(st: &SimState, sid: &str) -> Option<String> {
    let running = st.running.as_ref()?;
    if running.item.client_id().as_deref() != Some(sid) {
        return None;
    }
    let node = running.node.as_deref()?;
    let data = json!({"node": node, "display_node": node, "prompt_id": running.item.prompt_id});
    Some(message("executing", data))
}

/// Writes what the channel brings until told to close, a write fails, or the hub drops the
/// sender (a reconnect replaced this socket). Dropping the socket ends the TCP connection
/// without a close frame.
fn write_loop(mut socket: WebSocket<Stream>, rx: Receiver<Command>) {
    for command in rx.iter() {
        match command {
            Command::Send(msg, ack) => {
                let written = socket.send(msg).ok().map(|()| Instant::now());
                if let Some(ack) = ack {
                    let _ = ack.send(written);
                }
                if written.is_none() {
                    return;
                }
            }
            Command::Close(done) => {
                drop(socket);
                let _ = done.send(());
                return;
            }
        }
    }
}
