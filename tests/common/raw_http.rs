//! Raw HTTP/1.1 exchanges on a socket, for tests of what a client sees on the wire (framing,
//! refusals, closed connections) that an HTTP client library would hide.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Sends `bytes` (a peer that answers and closes before reading them all is fine) and reads
/// until the peer closes the connection, for at most `within`. Returns what was read, lossily
/// as text, and whether the peer closed (`false`: it kept the connection open past `within`).
pub fn send_and_read_until_closed(
    socket: &mut TcpStream,
    bytes: &[u8],
    within: Duration,
) -> (String, bool) {
    let _ = socket.write_all(bytes);
    let deadline = Instant::now() + within;
    let mut received = Vec::new();
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        let _ = socket.set_read_timeout(Some(left));
        let mut buf = [0u8; 8192];
        match socket.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

/// The status code of the first answer in `text` (0 if there is none).
pub fn status_of(text: &str) -> u16 {
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
