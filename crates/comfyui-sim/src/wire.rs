//! HTTP/1.1 on a plain `TcpStream`: reading one request (head, then a `Content-Length` or
//! chunked body) and writing one answer with `Connection: close`.
//!
//! The simulator answers one request per connection, so this is all the HTTP it needs, and it
//! keeps the `TcpStream` itself: a websocket upgrade gets a socket it can clone, read with a
//! timeout and shut down, which a server library's upgraded stream does not allow.

use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::net::TcpStream;

use super::state::FileData;

/// Request heads larger than this are refused.
const MAX_HEAD: usize = 64 * 1024;

/// One request as read from a connection.
pub(crate) struct Request {
    /// As sent, e.g. `GET`.
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// Header names as sent, with their values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (empty for a websocket upgrade, whose bytes stay on the connection).
    pub body: Vec<u8>,
    /// Bytes read past the head of an upgrade request (the client's first frames, if it did
    /// not wait for the answer).
    pub leftover: Vec<u8>,
    pub stream: TcpStream,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether this asks to become a websocket.
    pub(crate) fn is_upgrade(&self) -> bool {
        self.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The connection ended or failed before a whole request arrived; nothing to answer.
    Gone(io::Error),
    /// The request cannot be read (answered 400), or its body is over the limit (413).
    Refused(u16, TcpStream),
}

/// Reads one request; bodies over `max_body` bytes are refused with 413 unread.
pub(crate) fn read_request(mut stream: TcpStream, max_body: u64) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Refused(431, stream));
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(ReadError::Gone(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Gone(e)),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target)) = (request_line.next(), request_line.next()) else {
        return Err(ReadError::Refused(400, stream));
    };
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Refused(400, stream));
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut request = Request {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        body: Vec::new(),
        leftover: Vec::new(),
        stream,
    };
    if request.is_upgrade() {
        request.leftover = rest;
        return Ok(request);
    }
    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = request.header("content-length").map(str::parse::<u64>);
    match length {
        Some(Err(_)) if !chunked => return Err(ReadError::Refused(400, request.stream)),
        Some(Ok(n)) if !chunked && n > max_body => {
            return Err(ReadError::Refused(413, request.stream));
        }
        _ => {}
    }
    let expects_continue = request
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue && rest.is_empty() {
        // curl waits a second for this before sending a large body.
        if let Err(e) = request.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n") {
            return Err(ReadError::Gone(e));
        }
    }
    let body = if chunked {
        read_chunked(&rest, &request.stream, max_body)
    } else {
        match length {
            None | Some(Err(_)) => Ok(Vec::new()),
            Some(Ok(n)) => {
                let mut body = Vec::with_capacity(n as usize);
                Cursor::new(rest)
                    .chain(&request.stream)
                    .take(n)
                    .read_to_end(&mut body)
                    .and_then(|read| {
                        if read as u64 == n {
                            Ok(body)
                        } else {
                            Err(io::ErrorKind::UnexpectedEof.into())
                        }
                    })
            }
        }
    };
    match body {
        Ok(body) => {
            request.body = body;
            Ok(request)
        }
        Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
            Err(ReadError::Refused(413, request.stream))
        }
        Err(e) => Err(ReadError::Gone(e)),
    }
}

/// Decodes a chunked body that starts with `rest` and continues on `stream`.
fn read_chunked(rest: &[u8], stream: &TcpStream, max_body: u64) -> io::Result<Vec<u8>> {
    let mut reader = BufReader::new(Cursor::new(rest.to_vec()).chain(stream));
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size_text = line.trim().split(';').next().unwrap_or_default();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers, then the blank line that ends the body.
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() as u64 + size > max_body {
            return Err(io::ErrorKind::FileTooLarge.into());
        }
        let start = body.len();
        body.resize(start + size as usize, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}

/// The reason phrase for the statuses the simulator uses.
fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes a whole answer: status line, `Connection: close`, `headers`, then the body (bytes,
/// or a stored file streamed from memory in pieces), skipped for `HEAD`.
pub(crate) fn write_answer(
    out: &mut TcpStream,
    status: u16,
    content_type: &str,
    headers: &[(String, String)],
    body: &[u8],
    file: Option<&FileData>,
    head_only: bool,
) -> io::Result<()> {
    let length = file.map_or(body.len() as u64, FileData::len);
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nServer: comfyui-sim\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n",
        reason(status),
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if !head_only {
        match file {
            Some(file) => file.write_to(out)?,
            None => out.write_all(body)?,
        }
    }
    out.flush()
}

/// Writes the `101 Switching Protocols` answer of a websocket handshake.
pub(crate) fn write_switching(out: &mut TcpStream, accept_key: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 101 {}\r\nServer: comfyui-sim\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n\r\n",
        reason(101)
    );
    out.write_all(head.as_bytes())?;
    out.flush()
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Sends `raw` to a fresh connection and reads it back as a request.
    fn parse(raw: &[u8]) -> Result<Request, ReadError> {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        client.write_all(raw).expect("write");
        client
            .shutdown(std::net::Shutdown::Write)
            .expect("half-close");
        let (server, _) = listener.accept().expect("accept");
        read_request(server, 1024)
    }

    #[test]
    fn reads_content_length_and_chunked_bodies() {
        let req = parse(b"POST /prompt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .expect("a request");
        assert_eq!(
            (req.method.as_str(), req.target.as_str()),
            ("POST", "/prompt")
        );
        assert_eq!(req.body, b"hello");
        let req = parse(
            b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .expect("a request");
        assert_eq!(req.body, b"abcde");
    }

    #[test]
    fn refuses_oversized_and_malformed_requests() {
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n"),
            Err(ReadError::Refused(413, _))
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Err(ReadError::Refused(400, _))
        ));
        assert!(matches!(parse(b"GET / HTT"), Err(ReadError::Gone(_))));
    }

    #[test]
    fn answers_expect_100_continue_before_the_body() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        client
            .write_all(b"POST /p HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
            .expect("head");
        let (server, _) = listener.accept().expect("accept");
        let reading = std::thread::spawn(move || read_request(server, 1024).map(|r| r.body));
        let mut interim = [0u8; 25];
        client.read_exact(&mut interim).expect("100 Continue");
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"ok").expect("body");
        let body = reading
            .join()
            .expect("no panic")
            .map_err(|e| format!("{e:?}"));
        assert_eq!(body, Ok(b"ok".to_vec()));
    }
}
