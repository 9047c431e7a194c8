//! Write deadlines: a whole answer (an SSE event, a JSON result) must reach the client within
//! `IDLE_TIMEOUT_SECS`, however large it is, or its connection is shut down.
//!
//! The socket's write timeout alone cannot promise that: it bounds each `send` call, and a
//! client that reads a trickle (or a kernel that frees a little buffer space now and then) lets
//! every call make some progress, so writing a 200 kB event to a client that stopped reading
//! can hold its thread for minutes. So a thread about to write [`WriteDeadlines::arm`]s a
//! deadline, and the `write-deadlines` thread shuts the connection down when one passes; the
//! blocked write then fails at once and the thread lets go.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::socket;

/// The deadlines of the writes in progress, watched by one thread ([`WriteDeadlines::watch`]).
pub struct WriteDeadlines {
    /// The gateway's listening port (connections are found by client address and this port).
    port: u16,
    state: Mutex<State>,
    /// Signalled when an earlier deadline is armed, or when the watch must stop.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    next_id: u64,
    due: BTreeMap<(Instant, u64), SocketAddr>,
    stopping: bool,
}

/// A deadline armed for one write; disarmed when dropped.
pub struct Armed<'a> {
    deadlines: &'a WriteDeadlines,
    key: Option<(Instant, u64)>,
}

impl WriteDeadlines {
    /// No deadline yet, for connections to the gateway's listening `port`.
    pub fn new(port: u16) -> WriteDeadlines {
        WriteDeadlines {
            port,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms a deadline `within` from now for a write to `peer`'s connection (`None`: an
    /// address tiny_http could not tell, nothing to watch).
    pub fn arm(&self, peer: Option<SocketAddr>, within: Duration) -> Armed<'_> {
        let Some(peer) = peer else {
            return Armed {
                deadlines: self,
                key: None,
            };
        };
        let due = Instant::now() + within;
        let mut state = self.lock();
        let key = (due, state.next_id);
        state.next_id += 1;
        let earliest = state.due.keys().next().is_none_or(|first| key < *first);
        state.due.insert(key, peer);
        drop(state);
        if earliest {
            self.changed.notify_one();
        }
        Armed {
            deadlines: self,
            key: Some(key),
        }
    }

    /// How many deadlines are armed (writes in progress).
    #[cfg(test)]
    fn armed(&self) -> usize {
        self.lock().due.len()
    }

    /// Shuts down the connection of every write whose deadline passed, until [`stop`] is
    /// called: the body of the `write-deadlines` thread. Waits on a condition until the next
    /// deadline, never polls.
    ///
    /// [`stop`]: WriteDeadlines::stop
    pub fn watch(&self) {
        let mut state = self.lock();
        loop {
            if state.stopping {
                return;
            }
            let now = Instant::now();
            let Some((&key, &peer)) = state.due.iter().next() else {
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            if key.0 > now {
                state = self
                    .changed
                    .wait_timeout(state, key.0 - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            state.due.remove(&key);
            drop(state);
            log::info!(
                "{peer}: an answer could not be written within IDLE_TIMEOUT_SECS (the client \
                 stopped reading); its connection is closed"
            );
            socket::close_connection(peer, self.port);
            state = self.lock();
        }
    }

    /// Ends [`watch`](WriteDeadlines::watch).
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.changed.notify_all();
    }
}

/// A writer whose every answer (what is written between two flushes: one SSE event, say) must
/// be written within the deadline it arms at its first byte; the flush that ends it disarms it.
pub struct DeadlineWriter<'a, W: Write> {
    inner: W,
    deadlines: &'a WriteDeadlines,
    peer: Option<SocketAddr>,
    within: Duration,
    armed: Option<Armed<'a>>,
}

impl<'a, W: Write> DeadlineWriter<'a, W> {
    /// Wraps `inner`, the connection of `peer`, with a deadline `within` for each answer.
    pub fn new(
        inner: W,
        deadlines: &'a WriteDeadlines,
        peer: Option<SocketAddr>,
        within: Duration,
    ) -> DeadlineWriter<'a, W> {
        DeadlineWriter {
            inner,
            deadlines,
            peer,
            within,
            armed: None,
        }
    }
}

impl<W: Write> Write for DeadlineWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.armed.is_none() {
            self.armed = Some(self.deadlines.arm(self.peer, self.within));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.armed.is_none() {
            self.armed = Some(self.deadlines.arm(self.peer, self.within));
        }
        let flushed = self.inner.flush();
        self.armed = None;
        flushed
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.deadlines.lock().due.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    /// Stops the watch when dropped, so a failed assertion cannot leave its thread running.
    struct Watching<'a>(&'a WriteDeadlines);

    impl Drop for Watching<'_> {
        fn drop(&mut self) {
            self.0.stop();
        }
    }

    #[test]
    fn a_write_past_its_deadline_fails_and_the_connection_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let port = listener.local_addr().expect("bound").port();
        let client = TcpStream::connect(("127.0.0.1", port)).expect("connects");
        let (mut server, peer) = listener.accept().expect("accepts");
        let deadlines = WriteDeadlines::new(port);
        std::thread::scope(|scope| {
            scope.spawn(|| deadlines.watch());
            let _watching = Watching(&deadlines);
            let started = Instant::now();
            let armed = deadlines.arm(Some(peer), Duration::from_millis(300));
            // The client never reads: the write blocks until the deadline shuts the socket.
            let chunk = vec![b'x'; 1 << 20];
            let failed = loop {
                if let Err(e) = server.write_all(&chunk) {
                    break e;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the write was never stopped"
                );
            };
            drop(armed);
            assert!(started.elapsed() >= Duration::from_millis(300), "{failed}");
            assert_eq!(deadlines.armed(), 0);
        });
        drop(client);
        let mut rest = [0u8; 1];
        assert!(matches!(server.read(&mut rest), Ok(0) | Err(_)));
    }

    #[test]
    fn a_disarmed_deadline_leaves_the_connection_alone() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let port = listener.local_addr().expect("bound").port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connects");
        let (mut server, peer) = listener.accept().expect("accepts");
        let deadlines = WriteDeadlines::new(port);
        std::thread::scope(|scope| {
            scope.spawn(|| deadlines.watch());
            let _watching = Watching(&deadlines);
            {
                let _armed = deadlines.arm(Some(peer), Duration::from_millis(50));
                server.write_all(b"in time").expect("written");
            }
            // A later deadline, armed and passed, proves the watch ran past the first one.
            let other = TcpStream::connect(("127.0.0.1", port)).expect("connects");
            let (_other_server, other_peer) = listener.accept().expect("accepts");
            let _armed = deadlines.arm(Some(other_peer), Duration::from_millis(100));
            let mut buf = [0u8; 1];
            other
                .set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            assert!(matches!((&other).read(&mut buf), Ok(0)), "shut down");
        });
        server.write_all(b"!").expect("still open");
        let mut answer = [0u8; 8];
        client.read_exact(&mut answer).expect("both writes arrive");
        assert_eq!(&answer, b"in time!");
    }
}
