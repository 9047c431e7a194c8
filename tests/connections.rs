//! Connections that arrive together are all answered promptly, keep-alive or not.
//!
//! Regression test for a race in tiny_http 0.12's connection pool that could leave one of several
//! simultaneous connections unread until another connection closed (see `server::nudge_pool`).

mod common;

use common::harness::Harness;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Barrier;
use std::time::{Duration, Instant};

#[test]
fn simultaneous_keep_alive_connections_are_all_answered() {
    let h = Harness::start();
    let addr = h.gateway.addr();
    for round in 0..10 {
        let barrier = Barrier::new(8);
        let answered = std::thread::scope(|scope| {
            let clients: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        let mut socket = TcpStream::connect(addr).expect("connect");
                        socket
                            .set_read_timeout(Some(Duration::from_secs(10)))
                            .expect("timeout");
                        barrier.wait();
                        let sent = Instant::now();
                        let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n");
                        socket.write_all(request.as_bytes()).expect("send");
                        let mut status = String::new();
                        BufReader::new(&socket)
                            .read_line(&mut status)
                            .expect("an answer within 10 s");
                        assert!(status.contains(" 200 "), "{status}");
                        // The socket is handed back, so the connection stays open (keep-alive)
                        // until every client of the round has its answer or has failed.
                        (sent.elapsed(), socket)
                    })
                })
                .collect();
            clients
                .into_iter()
                .map(|c| c.join().expect("every connection is answered"))
                .collect::<Vec<_>>()
        });
        let slowest = answered
            .iter()
            .map(|(took, _)| *took)
            .max()
            .unwrap_or_default();
        // Unanswered connections waited 5 s and more before the fix; answers take milliseconds
        // (measured by `make bench`), so 4 s is safe on a busy machine and still catches it.
        assert!(
            slowest < Duration::from_secs(4),
            "round {round}: a connection waited {slowest:?} for its answer"
        );
    }
}
