//! Server-Sent Events: framing, and a writer that puts each event on the wire at once.
//!
//! tiny_http sends a `Response` built from a reader through an 8 KiB buffer, so events would sit
//! there for seconds. Instead the request thread takes the raw connection
//! (`Request::into_writer`), writes the response head itself, and sends every event as one HTTP
//! chunk followed by a flush: a client sees an event the moment it is written.
//!
//! A client that stops reading cannot hold its thread forever: the connection's socket carries
//! the listener's write timeout (`IDLE_TIMEOUT_SECS`), so once the kernel's buffers are full a
//! write fails after that long, [`SseWriter::send`] returns the error, and the request thread
//! lets go of the stream. The job does not depend on its watchers and goes on.

use std::io::{self, Write};

/// How long (ms) a browser's EventSource waits before reconnecting; sent first on every stream.
pub const RETRY_MS: u64 = 2000;

/// Formats one event: `id:`, `event:` and `data:` lines, then a blank line.
///
/// `data` is normally one line of JSON; should it ever contain newlines, each line gets its own
/// `data:` field so the client reassembles it unchanged.
pub fn format_event(id: u64, event: &str, data: &str) -> String {
    let mut out = format!("id: {id}\nevent: {event}\n");
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// The field that opens every stream: the client's reconnection delay.
pub fn retry_field() -> String {
    format!("retry: {RETRY_MS}\n\n")
}

/// An HTTP/1.1 `200 text/event-stream` response written by hand over a raw connection.
pub struct SseWriter<W: Write> {
    inner: W,
}

impl<W: Write> SseWriter<W> {
    /// Writes the response head (status line and headers) and the `retry:` field, and flushes.
    ///
    /// `extra_headers` are `(name, value)` pairs added after the standard ones.
    pub fn start(mut inner: W, extra_headers: &[(&str, &str)]) -> io::Result<SseWriter<W>> {
        let mut head = String::from(
            "HTTP/1.1 200 OK\r\n\
             Content-Type: text/event-stream\r\n\
             Cache-Control: no-cache\r\n\
             X-Accel-Buffering: no\r\n\
             Transfer-Encoding: chunked\r\n\
             Connection: close\r\n",
        );
        for (name, value) in extra_headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        inner.write_all(head.as_bytes())?;
        let mut writer = SseWriter { inner };
        writer.send(&retry_field())?;
        Ok(writer)
    }

    /// Sends `text` (one or more whole events) as one chunk and flushes it to the client.
    ///
    /// An error means the client has gone; the caller stops writing.
    pub fn send(&mut self, text: &str) -> io::Result<()> {
        if text.is_empty() {
            return Ok(()); // an empty chunk would end the body
        }
        write!(self.inner, "{:x}\r\n", text.len())?;
        self.inner.write_all(text.as_bytes())?;
        self.inner.write_all(b"\r\n")?;
        self.inner.flush()
    }

    /// Ends the chunked body and flushes.
    pub fn finish(mut self) -> io::Result<()> {
        self.inner.write_all(b"0\r\n\r\n")?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that records what was flushed, flush by flush.
    #[derive(Default)]
    struct Recorder {
        pending: Vec<u8>,
        flushed: Vec<String>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.pending.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            let text = String::from_utf8_lossy(&self.pending).into_owned();
            self.flushed.push(text);
            self.pending.clear();
            Ok(())
        }
    }

    #[test]
    fn a_client_that_stops_reading_makes_sends_fail_after_the_write_timeout() {
        use std::net::{TcpListener, TcpStream};
        use std::time::{Duration, Instant};
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let client = TcpStream::connect(listener.local_addr().expect("bound")).expect("connects");
        let (server, _) = listener.accept().expect("accepts");
        server
            .set_write_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut sse = SseWriter::start(server, &[]).expect("the head fits in the buffers");
        let event = format_event(1, "progress", &"x".repeat(64 * 1024));
        let deadline = Instant::now() + Duration::from_secs(60);
        let error = loop {
            if let Err(e) = sse.send(&event) {
                break e;
            }
            assert!(Instant::now() < deadline, "writes never failed");
        };
        assert!(
            matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{error}"
        );
        drop(client);
    }

    #[test]
    fn event_framing() {
        assert_eq!(
            format_event(3, "progress", r#"{"step":2}"#),
            "id: 3\nevent: progress\ndata: {\"step\":2}\n\n"
        );
        assert_eq!(
            format_event(1, "x", "a\nb"),
            "id: 1\nevent: x\ndata: a\ndata: b\n\n"
        );
    }

    #[test]
    fn every_event_is_its_own_flushed_chunk() {
        let mut rec = Recorder::default();
        {
            let mut w = SseWriter::start(&mut rec, &[("X-Job-Id", "j1")]).expect("in memory");
            w.send(&format_event(1, "queued", "{}")).expect("in memory");
            w.finish().expect("in memory");
        }
        assert_eq!(
            rec.flushed.len(),
            3,
            "head+retry, event, end: {:?}",
            rec.flushed
        );
        let head = &rec.flushed[0];
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("Content-Type: text/event-stream\r\n"));
        assert!(head.contains("Transfer-Encoding: chunked\r\n"));
        assert!(head.contains("X-Job-Id: j1\r\n"));
        assert!(
            head.ends_with("\r\n\r\nd\r\nretry: 2000\n\n\r\n"),
            "{head:?}"
        );
        let event = "id: 1\nevent: queued\ndata: {}\n\n";
        assert_eq!(rec.flushed[1], format!("{:x}\r\n{event}\r\n", event.len()));
        assert_eq!(rec.flushed[2], "0\r\n\r\n");
    }
}
