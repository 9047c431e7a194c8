//! Clients that stop reading or go away cannot hold a request thread: a stream whose client
//! stopped reading lets go within `IDLE_TIMEOUT_SECS` and a few seconds, whatever the size of
//! the event it was writing; a JSON waiter whose client left lets go within seconds while the
//! job goes on.

mod common;

use common::harness::{Harness, Options, small_txt2img};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long after a client stalls its thread may still be held: `IDLE_TIMEOUT_SECS` (2 here)
/// plus a few seconds.
const RELEASED_WITHIN: Duration = Duration::from_secs(8);

/// Waits (bounded) until `check` holds, polling what the gateway reports.
fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// Sends `body` as `POST /generate` on a raw socket whose receive buffer is small.
fn send_generate(h: &Harness, body: &serde_json::Value, accept: &str) -> TcpStream {
    let mut socket = TcpStream::connect(h.gateway.addr()).expect("connects");
    small_receive_buffer(&socket);
    let text = body.to_string();
    let request = format!(
        "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Accept: {accept}\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    );
    socket.write_all(request.as_bytes()).expect("sends");
    socket
}

/// Shrinks the client's receive buffer, so that what it does not read stays in the gateway's
/// socket and the gateway's writes block.
fn small_receive_buffer(socket: &TcpStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt reads one c_int from `size`, which lives across the call.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_RCVBUF set");
}

fn read_head(socket: &mut TcpStream) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout set");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match socket.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!("the answer's head was cut short: {other:?}"),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn streams_whose_clients_stopped_reading_release_their_threads() {
    let h = Harness::with(Options {
        vars: vec![("IDLE_TIMEOUT_SECS", "2".into())],
        ..Options::default()
    });
    // The final event repeats the prompt: 4 MiB cannot fit in the socket buffers of a client
    // that stopped reading (4 KiB on its side; at most 4 MiB, Linux's `tcp_wmem`, on ours).
    let mut clients = Vec::new();
    for n in 0..2 {
        let mut body = small_txt2img(&format!("{n} {}", "x".repeat(5 << 20)));
        body["steps"] = serde_json::json!(1);
        let mut socket = send_generate(&h, &body, "text/event-stream");
        let head = read_head(&mut socket);
        assert!(head.contains(" 200 "), "{head}");
        clients.push(socket); // kept open, never read again
    }
    wait_until("the jobs end", Duration::from_secs(120), || {
        h.app.jobs.active() == 0
    });
    let released = wait_until("every stalled stream lets go", RELEASED_WITHIN, || {
        h.gateway.requests_in_flight() == 0
    });
    eprintln!("threads released {released:?} after the jobs ended");
    assert_eq!(h.app.metrics.open_streams(), 0);
    drop(clients);
}

#[test]
fn a_client_that_reads_a_trickle_cannot_hold_its_thread() {
    let h = Harness::with(Options {
        vars: vec![("IDLE_TIMEOUT_SECS", "2".into())],
        ..Options::default()
    });
    // Every write makes a little progress, so the socket's write timeout never fires; only a
    // deadline for the whole event does.
    let mut body = small_txt2img(&format!("trickle {}", "x".repeat(6 << 20)));
    body["steps"] = serde_json::json!(1);
    let mut socket = send_generate(&h, &body, "text/event-stream");
    let head = read_head(&mut socket);
    assert!(head.contains(" 200 "), "{head}");
    wait_until("the job ends", Duration::from_secs(60), || {
        h.app.jobs.active() == 0
    });
    let ended = Instant::now();
    socket
        .set_read_timeout(Some(Duration::from_millis(10)))
        .expect("timeout set");
    // About 80 kB/s: the event would take half a minute to read. Only the gateway's thread
    // counts: what it already handed to the kernel may still be on its way.
    let mut chunk = [0u8; 8192];
    let mut read = 0;
    while h.gateway.requests_in_flight() > 0 {
        assert!(
            ended.elapsed() < RELEASED_WITHIN + Duration::from_secs(2),
            "the gateway kept its thread for a trickling client ({read} bytes read)"
        );
        if let Ok(n) = socket.read(&mut chunk) {
            read += n;
        }
        // The client's pace, not a wait for the gateway.
        std::thread::sleep(Duration::from_millis(100));
    }
    let released = ended.elapsed();
    eprintln!("released {released:?} after the job ended, {read} bytes read");
    assert!(released < RELEASED_WITHIN, "{released:?}");
}

#[test]
fn a_json_waiter_whose_client_left_lets_go_and_the_job_goes_on() {
    let h = Harness::with(Options {
        vars: vec![("IDLE_TIMEOUT_SECS", "1".into())],
        ..Options::default()
    });
    for round in 0..2 {
        h.sim.pause();
        let body = small_txt2img(&format!("left while waiting {round}"));
        let socket = send_generate(&h, &body, "application/json");
        wait_until("the job is accepted", Duration::from_secs(30), || {
            h.app.jobs.active() == 1
        });
        assert_eq!(
            h.gateway.requests_in_flight(),
            1,
            "the waiter holds a thread"
        );
        // Past the idle timeout first: tiny_http shuts its reading side then, which must not
        // be taken for the client leaving.
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            h.gateway.requests_in_flight(),
            1,
            "still waiting for its client"
        );
        drop(socket);
        let released = wait_until("the waiter lets go", Duration::from_secs(5), || {
            h.gateway.requests_in_flight() == 0
        });
        eprintln!("round {round}: released {released:?} after the client left");
        assert_eq!(h.app.jobs.active(), 1, "the job goes on");
        h.sim.resume();
        wait_until("the job completes", Duration::from_secs(30), || {
            h.app.jobs.active() == 0
        });
    }
}
