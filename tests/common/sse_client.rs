//! A minimal SSE client over a raw socket: it decodes the chunked body itself, so the tests see
//! exactly when each event reached the client, and can hang up mid-stream like a real one.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One event as a client received it.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
    /// When its last byte arrived.
    pub at: Instant,
}

impl SseEvent {
    /// Whether this event ends a job's stream.
    pub fn is_terminal(&self) -> bool {
        matches!(self.event.as_str(), "complete" | "error" | "cancelled")
    }
}

/// An open HTTP response being read as SSE (or a plain response, for error statuses).
pub struct SseStream {
    reader: BufReader<TcpStream>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    chunked: bool,
    pending: String,
    ended: bool,
    /// The `retry:` value, once seen.
    pub retry: Option<u64>,
}

impl SseStream {
    /// Sends the request and reads the response head.
    pub fn open(
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> SseStream {
        let mut socket = TcpStream::connect(addr).expect("the gateway accepts");
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\
             Content-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        socket.write_all(head.as_bytes()).expect("request sent");
        socket.write_all(body.as_bytes()).expect("body sent");
        let mut reader = BufReader::new(socket);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("status line");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        SseStream {
            reader,
            status,
            headers,
            chunked,
            pending: String::new(),
            ended: false,
            retry: None,
        }
    }

    /// A response header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body of a non-streaming (error) answer, as JSON.
    pub fn json_body(mut self) -> Value {
        let length: usize = self
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).expect("body");
        serde_json::from_slice(&body).expect("JSON error body")
    }

    /// Reads one chunk of the body; false at the end of the body.
    fn read_chunk(&mut self) -> bool {
        assert!(self.chunked, "SSE answers are chunked");
        let mut size_line = String::new();
        if self.reader.read_line(&mut size_line).unwrap_or(0) == 0 {
            return false;
        }
        let size = usize::from_str_radix(size_line.trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_line:?}"));
        let mut chunk = vec![0; size + 2];
        if self.reader.read_exact(&mut chunk).is_err() {
            return false;
        }
        if size == 0 {
            return false;
        }
        self.pending
            .push_str(std::str::from_utf8(&chunk[..size]).expect("UTF-8 events"));
        true
    }

    /// The next event, or `None` when the stream ended.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                if let Some(event) = self.parse_block(&block) {
                    return Some(event);
                }
                continue;
            }
            if self.ended || !self.read_chunk() {
                self.ended = true;
                return None;
            }
        }
    }

    fn parse_block(&mut self, block: &str) -> Option<SseEvent> {
        let mut id = None;
        let mut event = String::from("message");
        let mut data = String::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("retry: ") {
                self.retry = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
        if data.is_empty() {
            return None;
        }
        let data = serde_json::from_str(&data).unwrap_or_else(|e| panic!("data JSON {e}: {data}"));
        Some(SseEvent {
            id,
            event,
            data,
            at: Instant::now(),
        })
    }

    /// Every event up to and including the terminal one (or the end of the stream).
    pub fn until_terminal(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next_event() {
            let terminal = event.is_terminal();
            events.push(event);
            if terminal {
                break;
            }
        }
        events
    }

    /// Whether the server ended the body after what was read.
    pub fn ended(&mut self) -> bool {
        self.next_event().is_none()
    }
}
