//! [`Monitor`]: one blocking websocket session with ComfyUI, read with a deadline.
//!
//! The socket is a plain `TcpStream` (no TLS) driven by tungstenite. Each read is bounded by the
//! caller's deadline through the stream's read timeout; a timeout mid-frame is harmless because
//! tungstenite keeps the partial frame and resumes it on the next read.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tungstenite::error::ProtocolError;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use super::ComfyError;
use super::error::{MAX_ERROR_BODY, truncate};
use super::messages::WsEvent;
use super::url::BaseUrl;

/// Why a [`Monitor`] stopped delivering events. Once returned, the session is over: reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorError {
    /// ComfyUI (or a proxy in front of it) closed the websocket with a close frame.
    Closed {
        /// The close code, if one was sent (1000 normal, 1001 going away, ...).
        code: Option<u16>,
        /// The close reason; often empty.
        reason: String,
    },
    /// The connection ended without a close frame (EOF or reset): what happens when ComfyUI
    /// dies or restarts.
    Lost {
        /// What the socket reported.
        reason: String,
    },
    /// The peer broke the websocket protocol, or sent more than tungstenite accepts.
    Protocol {
        /// tungstenite's description.
        reason: String,
    },
}

impl fmt::Display for MonitorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MonitorError::Closed { code, reason } => {
                write!(f, "ComfyUI closed the websocket")?;
                if let Some(code) = code {
                    write!(f, " with code {code}")?;
                }
                match reason.as_str() {
                    "" => Ok(()),
                    reason => write!(f, ": {reason}"),
                }
            }
            MonitorError::Lost { reason } => {
                write!(
                    f,
                    "the websocket to ComfyUI ended without a close: {reason}"
                )
            }
            MonitorError::Protocol { reason } => {
                write!(f, "the websocket to ComfyUI broke the protocol: {reason}")
            }
        }
    }
}

impl std::error::Error for MonitorError {}

/// One websocket session with ComfyUI for one client id, owned by one thread.
///
/// Connect it before queueing the prompt with the same client id, or ComfyUI's first messages
/// for that prompt are lost.
pub struct Monitor {
    socket: WebSocket<TcpStream>,
    url: String,
    /// Events read while waiting for the greeting, handed out first by `next_event`.
    early: VecDeque<WsEvent>,
}

/// tungstenite's default read buffer is 128 KiB per socket; ComfyUI's text messages are small
/// and previews arrive in pieces anyway, so a job's socket needs far less.
const READ_BUFFER_BYTES: usize = 16 * 1024;

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// Opens `ws://host:port[/prefix]/ws?clientId=ID` for the ComfyUI at `base_url` (the same
    /// form [`ComfyClient::new`](super::ComfyClient::new) takes).
    ///
    /// `connect_timeout` bounds the TCP connection and, separately, the websocket handshake; it
    /// also bounds each later write (pong and close replies). Name resolution uses the system
    /// resolver, which has its own timeout. An `https` base URL fails with
    /// [`ComfyError::InvalidInput`]: that would need `wss://`, and this build has no TLS.
    pub fn connect(
        base_url: &str,
        client_id: &str,
        connect_timeout: Duration,
    ) -> Result<Monitor, ComfyError> {
        let base = BaseUrl::parse(base_url)?;
        let url = base.ws_url(client_id)?;
        let unreachable = |reason: String| ComfyError::Unreachable {
            url: url.clone(),
            reason,
        };
        let stream = connect_tcp(&base.host, base.port, connect_timeout).map_err(unreachable)?;
        let timeouts = stream
            .set_read_timeout(Some(connect_timeout))
            .and_then(|()| stream.set_write_timeout(Some(connect_timeout)))
            .and_then(|()| stream.set_nodelay(true));
        timeouts.map_err(|e| unreachable(e.to_string()))?;
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
        let socket =
            match tungstenite::client::client_with_config(url.as_str(), stream, Some(config)) {
                Ok((socket, _response)) => socket,
                // With a blocking stream, "interrupted" means a read or write hit its timeout.
                Err(HandshakeError::Interrupted(_)) => {
                    return Err(unreachable(format!(
                        "no websocket handshake within {connect_timeout:?}"
                    )));
                }
                Err(HandshakeError::Failure(error)) => return Err(handshake_error(&url, error)),
            };
        let mut monitor = Monitor {
            socket,
            url,
            early: VecDeque::new(),
        };
        monitor.await_greeting(connect_timeout)?;
        Ok(monitor)
    }

    /// Waits for ComfyUI's greeting, the `status` message it sends once the socket is
    /// registered under its client id. Until then, messages for a prompt queued by this client
    /// would go nowhere: returning only after the greeting closes that window. A server that
    /// never greets (not seen in any ComfyUI version) is given `timeout`, then trusted anyway.
    fn await_greeting(&mut self, timeout: Duration) -> Result<(), ComfyError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Ok(Some(WsEvent::Status { .. })) => return Ok(()),
                Ok(Some(other)) => self.early.push_back(other),
                Ok(None) => {}
                Err(error) => {
                    return Err(ComfyError::Unreachable {
                        url: self.url.clone(),
                        reason: format!("the websocket ended before ComfyUI's greeting: {error}"),
                    });
                }
            }
        }
        log::debug!("no status greeting from {} within {timeout:?}", self.url);
        Ok(())
    }

    /// The websocket URL this monitor is connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Waits up to `wait` for the next event.
    ///
    /// `Ok(None)` when nothing arrived in time (the session is still fine); pings are answered
    /// and pongs skipped without ending the wait early. `Err` when the session is over: read the
    /// [`MonitorError`] to tell a close frame from a lost connection.
    pub fn next_event(&mut self, wait: Duration) -> Result<Option<WsEvent>, MonitorError> {
        if let Some(event) = self.early.pop_front() {
            return Ok(Some(event));
        }
        let deadline = Instant::now() + wait;
        loop {
            // A zero read timeout is an error for std sockets, so always allow a moment.
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            self.socket
                .get_mut()
                .set_read_timeout(Some(left))
                .map_err(|e| MonitorError::Lost {
                    reason: e.to_string(),
                })?;
            match self.socket.read() {
                Ok(Message::Text(text)) => return Ok(Some(WsEvent::from_text(text.as_str()))),
                Ok(Message::Binary(bytes)) => return Ok(Some(WsEvent::from_binary(&bytes))),
                Ok(Message::Ping(_)) => self.flush_pong()?,
                Ok(Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Close(frame)) => {
                    // Complete the close handshake tungstenite queued; the session is over anyway.
                    let _ = self.socket.flush();
                    return Err(MonitorError::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    });
                }
                Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {}
                Err(error) => return Err(session_error(error)),
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Sends one text message, e.g. the `feature_flags` a client announces after connecting.
    pub fn send_text(&mut self, text: &str) -> Result<(), MonitorError> {
        self.socket.send(Message::text(text)).map_err(session_error)
    }

    /// Ends the session politely: sends a close frame (bounded by the write timeout) and drops
    /// the connection without waiting for ComfyUI's reply.
    pub fn close(mut self) {
        // The session is over either way; a failed close frame changes nothing for the caller.
        let _ = self.socket.close(None);
        let _ = self.socket.flush();
    }

    /// Sends the pong tungstenite queued for a ping now, rather than on the next read, so a peer
    /// checking liveness gets its answer at once.
    fn flush_pong(&mut self) -> Result<(), MonitorError> {
        match self.socket.flush() {
            Ok(()) => Ok(()),
            // Still queued; tungstenite retries on the next read.
            Err(tungstenite::Error::Io(e)) if is_timeout(&e) => Ok(()),
            Err(error) => Err(session_error(error)),
        }
    }
}

/// Connects to the first address of `host:port` that answers within `timeout` each.
fn connect_tcp(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addresses = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut last_error = format!("{host} resolved to no address");
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = format!("{address}: {e}"),
        }
    }
    Err(last_error)
}

/// Read timeouts show up as `WouldBlock` on Unix and `TimedOut` on Windows.
fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Maps a failed handshake: an HTTP answer other than 101 is a status error, socket trouble
/// means unreachable.
fn handshake_error(url: &str, error: tungstenite::Error) -> ComfyError {
    match error {
        tungstenite::Error::Http(response) => {
            let body = response.body().as_deref().unwrap_or_default();
            ComfyError::Status {
                url: url.to_string(),
                status: response.status().as_u16(),
                body: truncate(String::from_utf8_lossy(body).into_owned(), MAX_ERROR_BODY),
            }
        }
        tungstenite::Error::Io(e) => ComfyError::Unreachable {
            url: url.to_string(),
            reason: e.to_string(),
        },
        tungstenite::Error::Protocol(ProtocolError::HandshakeIncomplete) => {
            ComfyError::Unreachable {
                url: url.to_string(),
                reason: "the connection ended during the websocket handshake".to_string(),
            }
        }
        other => ComfyError::BadResponse {
            url: url.to_string(),
            reason: format!("websocket handshake failed: {other}"),
        },
    }
}

/// Maps a read or write failure of an established session.
fn session_error(error: tungstenite::Error) -> MonitorError {
    match error {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            MonitorError::Closed {
                code: None,
                reason: String::new(),
            }
        }
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            MonitorError::Lost {
                reason: "connection closed by ComfyUI".to_string(),
            }
        }
        tungstenite::Error::Io(e) => MonitorError::Lost {
            reason: e.to_string(),
        },
        other => MonitorError::Protocol {
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comfyui::PreviewFormat;
    use crate::ids::PromptId;
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::mpsc::{self, Receiver, Sender};
    use std::thread::JoinHandle;
    use tungstenite::handshake::server::{Request, Response};

    const PATIENCE: Duration = Duration::from_secs(5);

    /// A one-connection websocket server on 127.0.0.1 running `script` on the accepted socket;
    /// the request URI it saw arrives on the returned channel.
    fn serve_once(
        script: impl FnOnce(WebSocket<TcpStream>, TcpStream) + Send + 'static,
    ) -> (String, Receiver<String>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (uri_tx, uri_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let raw = stream.try_clone().expect("clone");
            // The callback's error type is tungstenite's choice, not ours.
            #[allow(clippy::result_large_err)]
            let record_uri = |request: &Request, response: Response| {
                let _ = uri_tx.send(request.uri().to_string());
                Ok(response)
            };
            let mut socket = tungstenite::accept_hdr(stream, record_uri).expect("handshake");
            // ComfyUI greets every new socket with `status` once it is registered.
            socket.send(Message::text(GREETING)).expect("greeting");
            script(socket, raw);
        });
        (base, uri_rx, thread)
    }

    const GREETING: &str = r#"{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "c"}}"#;

    #[test]
    fn connect_returns_after_the_greeting_and_keeps_what_came_first() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut socket = tungstenite::accept(stream).expect("handshake");
            let early = r#"{"type": "execution_start", "data": {"prompt_id": "p0"}}"#;
            socket.send(Message::text(early)).expect("send");
            socket.send(Message::text(GREETING)).expect("greeting");
            while socket.read().is_ok() {}
        });
        let mut monitor = Monitor::connect(&base, "c", PATIENCE).expect("connected");
        assert_eq!(
            monitor.next_event(Duration::from_millis(50)),
            Ok(Some(WsEvent::ExecutionStart {
                prompt_id: PromptId("p0".into())
            })),
            "a message that came before the greeting is not lost"
        );
        monitor.close();
        server.join().expect("server ran");
    }

    fn wait_for(signal: &Receiver<()>) {
        signal
            .recv_timeout(PATIENCE)
            .expect("signal from the other side");
    }

    fn preview_frame() -> Vec<u8> {
        let mut frame = 1u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&2u32.to_be_bytes());
        frame.extend_from_slice(b"\x89PNG\r\n\x1a\n");
        frame
    }

    #[test]
    fn events_arrive_pings_are_answered_idle_is_none_and_eof_ends_the_session() {
        let (pong_tx, pong_rx) = mpsc::channel();
        let (drop_tx, drop_rx): (Sender<()>, Receiver<()>) = mpsc::channel();
        let (base, uri, server) = serve_once(move |mut socket, _raw| {
            let status = r#"{"type": "status", "data": {"status": {"exec_info":
                {"queue_remaining": 1}}, "sid": "client-1"}}"#;
            socket.send(Message::text(status)).expect("send");
            let executing = r#"{"type": "executing", "data": {"node": "3", "prompt_id": "p1"}}"#;
            socket.send(Message::text(executing)).expect("send");
            socket.send(Message::binary(preview_frame())).expect("send");
            socket
                .send(Message::Ping(b"hb".to_vec().into()))
                .expect("send");
            match socket.read().expect("the client answers") {
                Message::Pong(payload) if &payload[..] == b"hb" => {
                    pong_tx.send(()).expect("test alive")
                }
                other => panic!("expected a pong, got {other:?}"),
            }
            wait_for(&drop_rx);
            // Dropping without a close frame is what a dying ComfyUI looks like.
        });

        let mut monitor = Monitor::connect(&base, "client-1", PATIENCE).expect("connected");
        assert_eq!(
            uri.recv_timeout(PATIENCE).expect("uri"),
            "/ws?clientId=client-1"
        );
        assert_eq!(
            monitor.next_event(PATIENCE),
            Ok(Some(WsEvent::Status {
                queue_remaining: Some(1)
            }))
        );
        let event = monitor.next_event(PATIENCE).expect("open").expect("event");
        assert_eq!(event.prompt_id(), Some(&PromptId("p1".into())));
        assert_eq!(
            monitor.next_event(PATIENCE),
            Ok(Some(WsEvent::Preview {
                format: PreviewFormat::Png,
                bytes: b"\x89PNG\r\n\x1a\n".to_vec(),
                prompt_id: None,
                node: None,
            }))
        );
        // The ping is answered but is no event: the short wait ends with nothing.
        assert_eq!(monitor.next_event(Duration::from_millis(200)), Ok(None));
        wait_for(&pong_rx);
        drop_tx.send(()).expect("server alive");
        let err = monitor.next_event(PATIENCE).expect_err("socket ended");
        assert!(matches!(err, MonitorError::Lost { .. }), "{err:?}");
        server.join().expect("server ran");
    }

    #[test]
    fn a_frame_split_across_waits_is_resumed_not_lost() {
        let (half_tx, half_rx) = mpsc::channel();
        let (rest_tx, rest_rx): (Sender<()>, Receiver<()>) = mpsc::channel();
        let (base, _uri, server) = serve_once(move |socket, mut raw| {
            let json = br#"{"type": "execution_success", "data": {"prompt_id": "p1"}}"#;
            // An unmasked server text frame, written by hand so it can be cut in two.
            let mut frame = vec![0x81, u8::try_from(json.len()).expect("short frame")];
            frame.extend_from_slice(json);
            raw.write_all(&frame[..10]).expect("first half");
            half_tx.send(()).expect("test alive");
            wait_for(&rest_rx);
            raw.write_all(&frame[10..]).expect("second half");
            wait_for(&rest_rx);
            drop(socket);
        });
        let mut monitor = Monitor::connect(&base, "c", PATIENCE).expect("connected");
        wait_for(&half_rx);
        assert_eq!(monitor.next_event(Duration::from_millis(100)), Ok(None));
        rest_tx.send(()).expect("server alive");
        assert_eq!(
            monitor.next_event(PATIENCE),
            Ok(Some(WsEvent::ExecutionSuccess {
                prompt_id: PromptId("p1".into())
            }))
        );
        rest_tx.send(()).expect("server alive");
        server.join().expect("server ran");
    }

    #[test]
    fn a_close_frame_ends_the_session_with_its_code() {
        let (base, _uri, server) = serve_once(|mut socket, _raw| {
            let frame = tungstenite::protocol::CloseFrame {
                code: tungstenite::protocol::frame::coding::CloseCode::Away,
                reason: "restarting".into(),
            };
            socket.close(Some(frame)).expect("close");
            // Read until the client's reply completes the close handshake.
            while socket.read().is_ok() {}
        });
        let mut monitor = Monitor::connect(&base, "c", PATIENCE).expect("connected");
        let err = monitor.next_event(PATIENCE).expect_err("closed");
        assert_eq!(
            err,
            MonitorError::Closed {
                code: Some(1001),
                reason: "restarting".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "ComfyUI closed the websocket with code 1001: restarting"
        );
        server.join().expect("server saw the close reply");
        monitor.close();
    }

    #[test]
    fn close_sends_a_close_frame() {
        let (closed_tx, closed_rx) = mpsc::channel();
        let (base, _uri, server) = serve_once(move |mut socket, _raw| {
            let message = socket.read().expect("a message");
            closed_tx
                .send(matches!(message, Message::Close(_)))
                .expect("test alive");
        });
        let monitor = Monitor::connect(&base, "c", PATIENCE).expect("connected");
        monitor.close();
        assert!(closed_rx.recv_timeout(PATIENCE).expect("server read"));
        server.join().expect("server ran");
    }

    #[test]
    fn connecting_to_nothing_is_unreachable() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let err = Monitor::connect(&format!("http://127.0.0.1:{port}"), "c", PATIENCE)
            .expect_err("nothing listens");
        assert!(err.is_unreachable(), "{err:?}");
        assert!(err.to_string().contains("/ws?clientId=c"), "{err}");
    }

    #[test]
    fn a_server_that_never_completes_the_handshake_times_out() {
        // Accepted by the kernel's backlog, never answered.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let err = Monitor::connect(&base, "c", Duration::from_millis(200)).expect_err("silent");
        assert!(err.is_unreachable(), "{err:?}");
        assert!(err.to_string().contains("handshake within 200ms"), "{err}");
        drop(listener);
    }

    #[test]
    fn a_plain_http_answer_is_a_status_error() {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
        let port = server.server_addr().to_ip().expect("tcp").port();
        let thread = std::thread::spawn(move || {
            let request = server.recv().expect("request");
            let response = tiny_http::Response::from_string("no websockets here");
            let _ = request.respond(response.with_status_code(404));
        });
        let err = Monitor::connect(&format!("http://127.0.0.1:{port}"), "c", PATIENCE)
            .expect_err("not a websocket");
        assert!(
            matches!(&err, ComfyError::Status { status: 404, .. }),
            "{err:?}"
        );
        thread.join().expect("server ran");
    }

    #[test]
    fn https_comfyui_needs_tls_this_build_lacks() {
        let err = Monitor::connect("https://comfy.example.com", "c", PATIENCE).expect_err("no wss");
        assert!(matches!(err, ComfyError::InvalidInput { .. }), "{err:?}");
        assert!(err.to_string().contains("wss://"), "{err}");
    }
}
