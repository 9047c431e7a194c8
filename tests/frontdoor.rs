//! The front door, seen from a client's socket: refusals that come at once and close the
//! connection, ambiguous framing refused, the key checked before anything is told, idle
//! connections closed, and a cap on the requests answered at once.

mod common;

use common::harness::{Harness, Options, agent, small_txt2img};
use common::raw_http::{send_and_read_until_closed, status_of};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What a raw exchange read back: every byte until the server closed (or `within` passed).
struct Exchange {
    text: String,
    closed: bool,
    took: Duration,
}

impl Exchange {
    fn status(&self) -> u16 {
        status_of(&self.text)
    }

    fn has_header(&self, line: &str) -> bool {
        let head = self.text.split("\r\n\r\n").next().unwrap_or("");
        head.lines()
            .any(|l| l.trim().eq_ignore_ascii_case(line.trim()))
    }

    /// The JSON body of the first response.
    fn json(&self) -> Value {
        let body = self.text.split("\r\n\r\n").nth(1).unwrap_or("");
        let end = body.find("HTTP/1.1 ").unwrap_or(body.len());
        serde_json::from_str(&body[..end])
            .unwrap_or_else(|e| panic!("a JSON body ({e}): {}", self.text))
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// Sends `bytes` on a fresh connection and reads until the server closes it, for at most
/// `within` (a server that keeps the connection open shows as `closed: false`).
fn exchange(addr: SocketAddr, bytes: &[u8], within: Duration) -> Exchange {
    let started = Instant::now();
    let mut socket = TcpStream::connect(addr).expect("the gateway accepts");
    let (text, closed) = send_and_read_until_closed(&mut socket, bytes, within);
    Exchange {
        text,
        closed,
        took: started.elapsed(),
    }
}

fn limited_harness() -> Harness {
    Harness::with(Options {
        vars: vec![("MAX_BODY_BYTES", "4096".into())],
        ..Options::default()
    })
}

/// Within this, a refusal that is "at once" has come: generous for a busy machine, and far
/// below the minute a server waiting for the body would take.
const PROMPT: Duration = Duration::from_secs(10);

#[test]
fn a_declared_body_over_the_limit_is_refused_at_once_and_the_connection_closed() {
    let h = limited_harness();
    // A gigabyte announced, nothing sent: the answer cannot wait for the body.
    let request = "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                   Content-Length: 1073741824\r\n\r\n";
    let got = exchange(h.gateway.addr(), request.as_bytes(), PROMPT);
    assert_eq!(got.status(), 413, "{}", got.text);
    assert_eq!(got.code(), "payload_too_large");
    assert_eq!(got.json()["error"]["details"]["limit"], 4096);
    assert!(got.has_header("Connection: close"), "{}", got.text);
    assert!(got.closed, "the connection is closed after the answer");
    assert!(
        h.sim.requests().iter().all(|r| r.path != "/prompt"),
        "nothing reached ComfyUI"
    );
}

#[test]
fn expect_continue_over_the_limit_gets_417_and_no_100_continue() {
    let h = limited_harness();
    let request = "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                   Expect: 100-continue\r\nContent-Length: 5000\r\n\r\n";
    let got = exchange(h.gateway.addr(), request.as_bytes(), PROMPT);
    assert!(
        got.text.starts_with("HTTP/1.1 417 "),
        "no 100 Continue first: {}",
        got.text
    );
    assert_eq!(got.code(), "expectation_failed");
    assert!(got.has_header("Connection: close"));
    assert!(got.closed);

    // Within the limit, the client is told to go on and the request is served.
    let body = small_txt2img("continued").to_string();
    let request = format!(
        "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let got = exchange(h.gateway.addr(), request.as_bytes(), PROMPT);
    assert!(
        got.text.starts_with("HTTP/1.1 100 Continue"),
        "{}",
        got.text
    );
    assert!(got.text.contains("HTTP/1.1 202 "), "{}", got.text);
}

#[test]
fn a_chunked_body_over_the_limit_is_refused_after_the_limit_not_after_the_body() {
    let h = limited_harness();
    let mut socket = TcpStream::connect(h.gateway.addr()).expect("connects");
    socket
        .write_all(
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )
        .expect("head sent");
    // 8 KiB of a body that never ends: the answer must come without the rest.
    let chunk = format!("{:x}\r\n{}\r\n", 8192, "x".repeat(8192));
    socket.write_all(chunk.as_bytes()).expect("first chunk");
    socket.set_read_timeout(Some(PROMPT)).expect("timeout");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n{") {
        let n = socket
            .read(&mut buf)
            .expect("an answer before the body ends");
        assert!(n > 0, "closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(text.contains("Connection: close"), "{text}");
}

#[test]
fn ambiguous_framing_is_refused_with_400_and_the_connection_closed() {
    let h = Harness::start();
    let cases = [
        (
            "Content-Length with Transfer-Encoding",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "a coding other than chunked",
            "Transfer-Encoding: gzip, chunked\r\n",
        ),
        ("identity", "Transfer-Encoding: identity\r\n"),
        ("an empty coding", "Transfer-Encoding:\r\n"),
        (
            "two Transfer-Encoding lines",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "a repeated Content-Length",
            "Content-Length: 2\r\nContent-Length: 2\r\n",
        ),
        ("a signed Content-Length", "Content-Length: +2\r\n"),
        ("a negative Content-Length", "Content-Length: -1\r\n"),
        ("a listed Content-Length", "Content-Length: 2, 2\r\n"),
    ];
    for (what, framing) in cases {
        let request = format!(
            "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n{{}}"
        );
        let got = exchange(h.gateway.addr(), request.as_bytes(), PROMPT);
        assert_eq!(got.status(), 400, "{what}: {}", got.text);
        assert_eq!(got.code(), "malformed_request", "{what}");
        assert!(got.has_header("Connection: close"), "{what}: {}", got.text);
        assert!(got.closed, "{what}: the connection is closed");
    }
    assert!(
        h.sim.requests().iter().all(|r| r.path != "/prompt"),
        "no job was started"
    );
}

#[test]
fn a_request_hidden_in_a_body_is_never_answered() {
    let h = Harness::start();
    // Framed by Content-Length, the GET is body; framed by Transfer-Encoding, it is a second
    // request. A gateway must not answer it.
    let hidden = "GET /workflows HTTP/1.1\r\nHost: x\r\n\r\n";
    let request = format!(
        "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}",
        5 + hidden.len()
    );
    let got = exchange(h.gateway.addr(), request.as_bytes(), PROMPT);
    assert_eq!(got.status(), 400, "{}", got.text);
    assert!(got.closed, "{}", got.text);
    assert!(
        !got.text.contains("HTTP/1.1 200"),
        "the hidden request was answered: {}",
        got.text
    );
    assert!(!got.text.contains("\"workflows\""), "{}", got.text);
}

#[test]
fn the_key_is_checked_before_404_and_405_and_the_scheme_is_case_insensitive() {
    let h = Harness::with(Options {
        vars: vec![("API_KEYS", "the-key".into())],
        ..Options::default()
    });
    let status = |method: &str, path: &str, auth: Option<&str>| {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(auth) = auth {
            request.push_str(&format!("Authorization: {auth}\r\n"));
        }
        request.push_str("Content-Length: 0\r\n\r\n");
        exchange(h.gateway.addr(), request.as_bytes(), PROMPT).status()
    };
    // Without the key, nothing tells which paths or methods exist.
    assert_eq!(status("GET", "/no/such/path", None), 401);
    assert_eq!(status("GET", "/generate", None), 401);
    assert_eq!(status("DELETE", "/workflows", None), 401);
    assert_eq!(status("POST", "/health", None), 401);
    assert_eq!(status("GET", "/images/x/0.png", Some("Bearer wrong")), 401);
    // With it, they do.
    assert_eq!(status("GET", "/no/such/path", Some("Bearer the-key")), 404);
    assert_eq!(status("GET", "/generate", Some("Bearer the-key")), 405);
    // The scheme's case does not matter; the key's does.
    assert_eq!(status("GET", "/workflows", Some("bearer the-key")), 200);
    assert_eq!(status("GET", "/workflows", Some("BEARER the-key")), 200);
    assert_eq!(status("GET", "/workflows", Some("Bearer THE-KEY")), 401);
    // Only the page and /health stay open.
    assert_eq!(status("GET", "/health", None), 200);
    assert_eq!(status("GET", "/", None), 200);
}

#[test]
fn idle_connections_are_closed_after_idle_timeout_secs() {
    let h = Harness::with(Options {
        vars: vec![("IDLE_TIMEOUT_SECS", "1".into())],
        ..Options::default()
    });
    // A keep-alive connection, answered, then left idle.
    let got = exchange(
        h.gateway.addr(),
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(15),
    );
    assert_eq!(got.status(), 200, "{}", got.text);
    assert!(got.closed, "an idle keep-alive connection is closed");
    assert!(
        got.took >= Duration::from_millis(900),
        "not before the timeout: {:?}",
        got.took
    );
    // A connection that never finishes its request head.
    let got = exchange(
        h.gateway.addr(),
        b"GET /health HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(15),
    );
    assert!(got.closed, "a slow request head is cut off");
    assert!(!got.text.contains(" 200 "), "{}", got.text);
}

#[test]
fn beyond_max_connections_requests_get_503_with_retry_after() {
    let h = Harness::with(Options {
        vars: vec![("MAX_CONNECTIONS", "2".into())],
        ..Options::default()
    });
    // Two streams held open on a job that cannot run yet: two requests being answered.
    h.sim.pause();
    let (status, created) = h.post_json("/jobs", &small_txt2img("held"));
    assert_eq!(status, 202, "{created}");
    let job_id = created["job_id"].as_str().expect("job id").to_string();
    let events = format!("/jobs/{job_id}/events");
    // A request's slot is given back a moment after its answer reached the client: wait for
    // it, so each stream below finds a free slot.
    let settled = |count: usize| {
        let deadline = Instant::now() + common::EVENT_DEADLINE;
        while h.gateway.requests_in_flight() > count {
            assert!(
                Instant::now() < deadline,
                "a finished request kept its slot"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    settled(0);
    let first = h.get_stream(&events, &[]);
    settled(1);
    let second = h.get_stream(&events, &[]);
    assert_eq!((first.status, second.status), (200, 200));

    let got = exchange(
        h.gateway.addr(),
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        PROMPT,
    );
    assert_eq!(got.status(), 503, "{}", got.text);
    assert_eq!(got.code(), "too_many_connections");
    assert!(got.has_header("Retry-After: 1"), "{}", got.text);
    assert!(got.has_header("Connection: close"), "{}", got.text);
    assert!(got.closed);

    // Once the job ends, its streams end, and the gateway serves again.
    h.sim.resume();
    for mut stream in [first, second] {
        let last = stream.until_terminal().pop().expect("a terminal event");
        assert_eq!(last.event, "complete");
    }
    let deadline = Instant::now() + common::EVENT_DEADLINE;
    loop {
        let status = agent()
            .get(&h.url("/health"))
            .call()
            .expect("answers")
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "the slots were never given back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_absurd_declared_length_is_refused_and_the_gateway_lives_on() {
    let h = limited_harness();
    // tiny_http would set aside this much memory to discard the body of a refused request.
    for (method, path) in [("POST", "/generate"), ("GET", "/health")] {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 900000000000000\r\n\r\n"
        );
        let got = exchange(h.gateway.addr(), request.as_bytes(), PROMPT);
        assert_eq!(got.status(), 413, "{path}: {}", got.text);
        assert_eq!(got.code(), "payload_too_large");
        assert!(got.has_header("Connection: close"));
        assert!(got.closed, "{path}: the connection is closed");
    }
    let (status, _) = h.get_json("/health");
    assert_eq!(status, 200, "the gateway still serves");
}

#[test]
fn streams_and_waits_longer_than_the_idle_timeout_are_not_cut() {
    let h = Harness::with(Options {
        vars: vec![("IDLE_TIMEOUT_SECS", "1".into())],
        ..Options::step_ms(300)
    });
    let mut body = small_txt2img("outlives the idle timeout");
    body["steps"] = serde_json::json!(10);
    // About 3 s of events, one every 100 ms: the connection is never silent for a second.
    let events = h.generate_stream(&body).until_terminal();
    let last = events.last().expect("a terminal event");
    assert_eq!(last.event, "complete", "{:?}", last.data);
    // A JSON answer that waits 3 s for its job: the client is silent, the gateway too.
    body["prompt"] = serde_json::json!("waited for");
    let (status, answer) = h.post_json("/generate", &body);
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn a_head_is_answered_like_the_get_it_mirrors_without_a_body() {
    let h = Harness::with(Options {
        vars: vec![("API_KEYS", "the-key".into())],
        ..Options::default()
    });
    let head = |path: &str, auth: Option<&str>| {
        let mut request = format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(auth) = auth {
            request.push_str(&format!("Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        exchange(h.gateway.addr(), request.as_bytes(), PROMPT)
    };
    // Open like their GETs, and answered with the head only.
    for path in ["/health", "/"] {
        let got = head(path, None);
        assert_eq!(got.status(), 200, "{path}: {}", got.text);
        assert!(got.closed, "{path}: {}", got.text);
        assert!(
            got.text.ends_with("\r\n\r\n"),
            "{path}: no body: {}",
            got.text
        );
    }
    // The key is still needed where the GET needs it.
    assert_eq!(head("/workflows", None).status(), 401);
    let got = head("/workflows", Some("Bearer the-key"));
    assert_eq!(got.status(), 200, "{}", got.text);
    assert!(got.text.ends_with("\r\n\r\n"), "no body: {}", got.text);
    // An event stream is written by hand, so it answers GET only.
    let got = head("/jobs/no-such-job/events", Some("Bearer the-key"));
    assert_eq!(got.status(), 405, "{}", got.text);
}

/// How many `HTTP/1.x` answers `text` holds.
fn answers_in(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count() + text.matches("HTTP/1.0 ").count()
}

#[test]
fn nothing_behind_a_refused_request_is_ever_answered() {
    let h = Harness::start();
    // The fault showed in one run of three: repeat it enough to catch a race.
    for round in 0..40 {
        let pipelined = [
            // Both in one write: the second may already sit in the server's read buffer.
            "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            // An empty body, so the next request is parsed at once.
            "GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n\
             GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            // A body over the limit is refused without being read: what follows is never seen.
            "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 999999999\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        ];
        for request in pipelined {
            let got = exchange(h.gateway.addr(), request.as_bytes(), PROMPT);
            assert!(
                got.closed,
                "round {round}: the connection is closed: {}",
                got.text
            );
            assert_eq!(
                answers_in(&got.text),
                1,
                "round {round}: only the refusal is answered: {}",
                got.text
            );
            assert!(!got.text.contains("jobs_total"), "{}", got.text);
        }
    }
}

#[test]
fn a_request_sent_after_a_refusal_is_never_read() {
    let h = Harness::start();
    for round in 0..20 {
        let mut socket = TcpStream::connect(h.gateway.addr()).expect("connects");
        socket
            .write_all(
                b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            )
            .expect("sends");
        // Read the whole refusal, then send another request on the same connection.
        socket.set_read_timeout(Some(PROMPT)).expect("timeout set");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match socket.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                other => panic!("round {round}: the refusal was cut short: {other:?}"),
            }
        }
        assert!(
            String::from_utf8_lossy(&head).contains(" 400 "),
            "round {round}"
        );
        let (rest, closed) = send_and_read_until_closed(
            &mut socket,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            PROMPT,
        );
        assert!(closed, "round {round}: closed");
        assert_eq!(
            answers_in(&rest),
            0,
            "round {round}: answered after close: {rest}"
        );
    }
}
