//! The HTTP server: a blocking tiny_http accept loop that hands each request to its own thread.
//!
//! `routes` decides what a request is for; `reply` writes JSON and file answers; `auth` checks
//! API keys; `framing` refuses requests whose length is ambiguous or too large; `connections`
//! keeps each connection's requests in order and drops those behind a closed one; `deadlines`
//! shuts down a connection whose answer is not written within `IDLE_TIMEOUT_SECS`; `socket`
//! does what tiny_http cannot (socket timeouts, the open-files limit, ending one connection);
//! `v2` answers Comfy API v2 under `/api/v2` with the same front door. A streaming answer
//! (`POST /generate`, `GET /jobs/{id}/events`) keeps its request thread until the job's terminal
//! event has been written.

pub(crate) mod auth;
mod connections;
pub(crate) mod deadlines;
pub(crate) mod framing;
pub(crate) mod reply;
mod routes;
pub mod socket;
pub mod v2;

pub use routes::{Body, ENDPOINTS, Endpoint, ROUTER_ERRORS};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::api::{ApiError, ErrorCode};
use crate::app::App;
use connections::Connections;
use deadlines::WriteDeadlines;

/// A running gateway: its address, its accept loop, and the watch on its listener.
pub struct Server {
    http: Arc<tiny_http::Server>,
    door: Arc<FrontDoor>,
    addr: SocketAddr,
    accept_loop: Option<JoinHandle<()>>,
    watchdog: Option<(Sender<()>, JoinHandle<()>)>,
    deadlines: Option<(Arc<WriteDeadlines>, JoinHandle<()>)>,
    stopping: Arc<AtomicBool>,
    failures: Receiver<String>,
}

/// A bound listener not yet serving: lets the caller learn the port (e.g. port 0 in tests)
/// before building the app whose image URLs name it.
pub struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
}

/// What every request thread shares about the front door: the listening port, the proxies it
/// trusts, connections it refused, and how many requests are being answered.
pub struct FrontDoor {
    /// The port the gateway listens on (it tells the gateway's own sockets from others).
    pub port: u16,
    /// `TRUSTED_PROXY`.
    trusted_proxies: Vec<IpAddr>,
    /// Each connection's requests in order, and the connections closed (see `connections`).
    connections: Arc<Connections>,
    /// The deadlines of answers being written (see `deadlines`).
    deadlines: Arc<WriteDeadlines>,
    /// `IDLE_TIMEOUT_SECS`: how long one answer (an SSE event, a JSON result) may take to write.
    write_within: Duration,
    /// Requests being answered, each on its own thread.
    in_flight: AtomicUsize,
    /// `MAX_CONNECTIONS`, lowered if the open-files limit cannot hold that many.
    max_in_flight: usize,
    /// Requests leaked rather than handed back to tiny_http (see `reply::abandon`).
    abandoned: AtomicUsize,
    /// Where the server reports that it must be restarted.
    failed: Sender<String>,
}

/// How many abandoned requests (each holding two descriptors and a thread) the gateway keeps
/// before it asks to be restarted.
const MAX_ABANDONED: usize = 256;

/// File descriptors kept for everything but client connections (logs, storage, ComfyUI), on top
/// of a sixteenth of the open-files limit (see `fitting_connections`).
const RESERVED_FDS: u64 = 64;
/// The most requests answered at once when `MAX_CONNECTIONS` is unset, however high the
/// open-files limit: each holds two threads (tiny_http's and its request thread).
const MAX_DEFAULT_CONNECTIONS: usize = 4096;
/// File descriptors one answered request can hold: its connection's two (tiny_http clones the
/// socket) and a file being stored or served.
const FDS_PER_CONNECTION: u64 = 3;
/// How often the watchdog looks at the listener's accept queue, and how long connections may
/// wait there unaccepted before the gateway decides its accept loop has died.
const WATCH_EVERY: Duration = Duration::from_secs(1);
const STALLED_AFTER: u32 = 10;
/// `Retry-After` (seconds) when `MAX_CONNECTIONS` is reached.
const RETRY_CONNECTIONS_AFTER: u32 = 1;

impl FrontDoor {
    /// Where a request really comes from: the peer, or for a trusted proxy the client it names
    /// in `X-Forwarded-For` (the rightmost entry, the one the proxy wrote) or `X-Real-IP`.
    pub fn client_address(&self, request: &tiny_http::Request) -> String {
        let Some(peer) = request.remote_addr() else {
            return "unknown".into();
        };
        if !self.trusted_proxies.contains(&peer.ip()) {
            return peer.to_string();
        }
        let forwarded = reply::header_value(request, "X-Forwarded-For")
            .and_then(|list| list.rsplit(',').next())
            .or_else(|| reply::header_value(request, "X-Real-IP"))
            .map(str::trim)
            .filter(|client| client.parse::<IpAddr>().is_ok());
        match forwarded {
            Some(client) => format!("{client} (via {peer})"),
            None => peer.to_string(),
        }
    }

    /// Answers `error` and closes the connection, without reading or waiting for the rest of
    /// the request: for refused framing or size, and beyond `MAX_CONNECTIONS`.
    pub fn refuse(&self, request: tiny_http::Request, error: &ApiError, extra: &[(&str, &str)]) {
        let peer = request.remote_addr().copied();
        let absurd = request
            .body_length()
            .is_some_and(|length| length as u64 >= reply::ABSURD_BODY_LENGTH);
        if !absurd {
            reply::refuse_and_close(request, error, self.port, extra);
            return self.close(peer);
        }
        reply::abandon(request, error, self.port, extra);
        self.close(peer);
        let abandoned = self.abandoned.fetch_add(1, Ordering::AcqRel) + 1;
        log::warn!(
            "refused a request declaring a body of {} bytes or more ({abandoned} so far; a \
             reverse proxy refuses these before they arrive)",
            reply::ABSURD_BODY_LENGTH
        );
        if abandoned >= MAX_ABANDONED {
            let _ = self.failed.try_send(format!(
                "{abandoned} requests declared absurd body lengths: their connections are held \
                 until a restart"
            ));
        }
    }

    /// Arms the write deadline of one answer to `peer` (see `deadlines`): if it is not written
    /// within `IDLE_TIMEOUT_SECS`, its connection is shut down and the write fails.
    pub(crate) fn write_deadline(&self, peer: Option<SocketAddr>) -> deadlines::Armed<'_> {
        self.deadlines.arm(peer, self.write_within)
    }

    /// `writer` (a stream's raw connection to `peer`) with a deadline for each answer written
    /// between two flushes: one SSE event, however large, must be written within
    /// `IDLE_TIMEOUT_SECS`, or the connection is shut down and the write fails.
    pub(crate) fn deadline_writer<W: std::io::Write>(
        &self,
        writer: W,
        peer: Option<SocketAddr>,
    ) -> deadlines::DeadlineWriter<'_, W> {
        deadlines::DeadlineWriter::new(writer, &self.deadlines, peer, self.write_within)
    }

    /// Closes the connection of `request`'s client after what was written to it, for an answer
    /// that said `Connection: close`: nothing more is read from it or answered on it.
    pub fn close(&self, peer: Option<SocketAddr>) {
        if let Some(peer) = peer {
            self.connections.close(peer);
        }
    }
}

/// Counts a request as being answered for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Bound {
    /// The address the listener is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts the job engine (if it is not running yet), the webhook deliveries, and the
    /// accept loop on its own thread, with the socket timeouts and the connection limit of
    /// `app.config`.
    pub fn serve(self, app: Arc<App>) -> io::Result<Server> {
        app.webhooks.start();
        app.start()?;
        socket::set_timeouts(&self.listener, app.config.idle_timeout)?;
        let watched = self.listener.try_clone()?;
        // Holds one reason at most: the first failure is what main acts on.
        let (failed, failures) = crossbeam_channel::bounded(1);
        let http =
            tiny_http::Server::from_listener(self.listener, None).map_err(io::Error::other)?;
        let http = Arc::new(http);
        let deadlines = Arc::new(WriteDeadlines::new(self.addr.port()));
        let door = Arc::new(FrontDoor {
            port: self.addr.port(),
            trusted_proxies: app.config.trusted_proxies.clone(),
            connections: Arc::new(Connections::new(self.addr.port())),
            deadlines: Arc::clone(&deadlines),
            write_within: app.config.idle_timeout,
            in_flight: AtomicUsize::new(0),
            max_in_flight: connection_limit(app.config.max_connections),
            abandoned: AtomicUsize::new(0),
            failed: failed.clone(),
        });
        let watched_deadlines = Arc::clone(&deadlines);
        let deadline_watch = thread::Builder::new()
            .name("write-deadlines".into())
            .spawn(move || watched_deadlines.watch())?;
        let stopping = Arc::new(AtomicBool::new(false));
        let (stop_watch, watch_stopped) = crossbeam_channel::bounded(1);
        let watch_failed = failed.clone();
        let watchdog = thread::Builder::new()
            .name("accept-watch".into())
            .spawn(move || watch_accept_queue(&watched, &watch_stopped, &watch_failed))?;
        let accepting = Arc::clone(&http);
        // The accept loop owns the only sender: when it ends, the nudging thread ends too.
        let (activity, seen) = crossbeam_channel::bounded(1);
        let addr = self.addr;
        let heartbeat = heartbeat_every(app.config.idle_timeout);
        thread::Builder::new()
            .name("pool-nudge".into())
            .spawn(move || nudge_pool(addr, &seen, heartbeat))?;
        let accept_stopping = Arc::clone(&stopping);
        let kept_door = Arc::clone(&door);
        let accept_loop = thread::Builder::new()
            .name("accept".into())
            .spawn(move || {
                let reason = accept(&app, &door, &accepting, &activity, &accept_stopping);
                if let Some(reason) = reason {
                    let _ = failed.try_send(reason);
                }
            })?;
        Ok(Server {
            http,
            door: kept_door,
            addr: self.addr,
            accept_loop: Some(accept_loop),
            watchdog: Some((stop_watch, watchdog)),
            deadlines: Some((deadlines, deadline_watch)),
            stopping,
            failures,
        })
    }
}

/// `MAX_CONNECTIONS` if set, lowered (with a warning) to what the open-files limit can hold;
/// unset, what that limit holds ([`default_connection_limit`]).
fn connection_limit(configured: Option<usize>) -> usize {
    let fds = socket::open_files_limit();
    let Some(configured) = configured else {
        let limit = default_connection_limit(fds);
        log::info!(
            "answering at most {limit} requests at once (MAX_CONNECTIONS unset; open-files \
             limit {})",
            fds.map_or_else(|| "unknown".to_string(), |fds| fds.to_string())
        );
        return limit;
    };
    let Some(fds) = fds else {
        return configured;
    };
    let fitting = fitting_connections(fds);
    if fitting < configured {
        log::warn!(
            "MAX_CONNECTIONS={configured} does not fit the open-files limit ({fds}): \
             answering at most {fitting} requests at once"
        );
        return fitting;
    }
    configured
}

/// The connection limit when `MAX_CONNECTIONS` is unset: what an open-files limit of `fds`
/// holds ([`fitting_connections`]), at most [`MAX_DEFAULT_CONNECTIONS`]; 512 where the system
/// does not tell its limit.
fn default_connection_limit(fds: Option<u64>) -> usize {
    fds.map_or(512, fitting_connections)
        .min(MAX_DEFAULT_CONNECTIONS)
}

/// How many answered requests an open-files limit of `fds` holds: [`FDS_PER_CONNECTION`] each,
/// after keeping [`RESERVED_FDS`] plus a sixteenth of the limit for everything else (stored and
/// spooled files, ComfyUI and Supabase connections, webhooks, logs). At least 1.
fn fitting_connections(fds: u64) -> usize {
    let reserved = RESERVED_FDS + fds / 16;
    usize::try_from(fds.saturating_sub(reserved) / FDS_PER_CONNECTION)
        .unwrap_or(usize::MAX)
        .max(1)
}

impl Server {
    /// Binds `listen` (e.g. `127.0.0.1:8000`, or port 0 for any free port).
    pub fn bind(listen: &str) -> io::Result<Bound> {
        let listener = socket::bind(listen)?;
        let addr = listener.local_addr()?;
        Ok(Bound { listener, addr })
    }

    /// Binds `listen` and starts serving `app`.
    pub fn start(app: Arc<App>, listen: &str) -> io::Result<Server> {
        Server::bind(listen)?.serve(app)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests are being answered right now, each on its own thread (what
    /// `MAX_CONNECTIONS` caps): streams and JSON waiters included.
    pub fn requests_in_flight(&self) -> usize {
        self.door.in_flight.load(Ordering::Acquire)
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Yields why the server stopped accepting connections, should that ever happen while it
    /// is not shutting down (tiny_http's accept thread ended, e.g. out of file descriptors). The
    /// server is then dead: the process should exit non-zero so that a supervisor restarts it.
    pub fn failures(&self) -> &Receiver<String> {
        &self.failures
    }

    /// Blocks until the accept loop ends (after `shutdown` from another thread, or never).
    pub fn wait(mut self) {
        if let Some(handle) = self.accept_loop.take() {
            let _ = handle.join();
        }
    }

    /// Stops accepting requests; requests already being answered finish on their threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        self.http.unblock();
        if let Some(handle) = self.accept_loop.take() {
            let _ = handle.join();
        }
        if let Some((stop, handle)) = self.watchdog.take() {
            let _ = stop.try_send(());
            let _ = handle.join();
        }
        // Answers still being written keep their deadlines' promise no more: the socket write
        // timeout still bounds them.
        if let Some((deadlines, handle)) = self.deadlines.take() {
            deadlines.stop();
            let _ = handle.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The accept loop: one thread per request, so a slow client never holds up another.
///
/// Returns why it ended, unless it ended because the server is shutting down.
fn accept(
    app: &Arc<App>,
    door: &Arc<FrontDoor>,
    http: &tiny_http::Server,
    activity: &Sender<()>,
    stopping: &AtomicBool,
) -> Option<String> {
    loop {
        let request = match http.recv() {
            Ok(request) => request,
            // Shutting down: `unblock` ended the wait.
            Err(_) if stopping.load(Ordering::Acquire) => return None,
            // tiny_http's accept thread hands over its error (e.g. EMFILE) and ends: no
            // connection will be accepted any more.
            Err(e) => return Some(format!("the listener stopped accepting connections: {e}")),
        };
        // Full means the nudging thread already knows that requests are arriving.
        let _ = activity.try_send(());
        let in_flight = door.in_flight.fetch_add(1, Ordering::AcqRel);
        if in_flight >= door.max_in_flight {
            door.in_flight.fetch_sub(1, Ordering::AcqRel);
            // Answered here, without a thread: the answer is small, the connection's reading side
            // is shut down first so nothing is waited for, and the socket has a write timeout.
            let error = ApiError::new(
                ErrorCode::TooManyConnections,
                format!(
                    "{} requests are being answered (MAX_CONNECTIONS); retry shortly",
                    door.max_in_flight
                ),
            );
            let retry = RETRY_CONNECTIONS_AFTER.to_string();
            door.refuse(request, &error, &[("Retry-After", &retry)]);
            continue;
        }
        // Taken here, in the order tiny_http hands requests over, so that pipelined requests
        // are handled one after the other.
        let turn = door.connections.turn(request.remote_addr().copied());
        let app = Arc::clone(app);
        let thread_door = Arc::clone(door);
        let spawned = thread::Builder::new()
            .name("request".into())
            .spawn(move || {
                let _counted = InFlight(&thread_door.in_flight);
                if turn.wait() {
                    routes::handle(&app, &thread_door, request);
                } else {
                    // Its connection was closed (shut down both ways): dropped, nothing is
                    // read or written for it.
                    log::debug!("dropped a request that followed `Connection: close`");
                    drop(request);
                }
                drop(turn);
            });
        if let Err(e) = spawned {
            // The request moved into the closure and is dropped with it; tiny_http answers 500.
            door.in_flight.fetch_sub(1, Ordering::AcqRel);
            log::error!("could not start a request thread: {e}");
        }
    }
}

/// Watches the listener's accept queue: connections that wait there, unaccepted, for
/// `STALLED_AFTER` checks in a row mean that tiny_http's accept thread has died without a word
/// (it panics when it cannot clone a socket, e.g. out of file descriptors).
fn watch_accept_queue(listener: &TcpListener, stop: &Receiver<()>, failed: &Sender<String>) {
    let mut stalled = 0;
    loop {
        match stop.recv_timeout(WATCH_EVERY) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        match socket::accept_queue_len(listener) {
            Some(0) => stalled = 0,
            Some(waiting) => {
                stalled += 1;
                if stalled >= STALLED_AFTER {
                    let waited = WATCH_EVERY * STALLED_AFTER;
                    let _ = failed.try_send(format!(
                        "the listener stopped accepting connections: {waiting} have waited \
                         {waited:?} unaccepted (tiny_http's accept thread has ended)"
                    ));
                    return;
                }
            }
            None => return, // this system cannot tell
        }
    }
}

/// How many times, and how often, tiny_http's connection pool is nudged after a request.
const NUDGES: u32 = 10;
const NUDGE_INTERVAL: Duration = Duration::from_millis(100);

/// Works around a race in tiny_http 0.12's connection pool (`util::TaskPool::spawn`), and keeps
/// the listener's accept from timing out (see [`heartbeat_every`]).
///
/// The pool queues a new connection when it counts an idle thread, but a thread it has just
/// woken for another connection still counts as idle until it runs. When connections arrive
/// together (several clients starting at once, a browser opening parallel connections), one can
/// be queued with no thread left to take it; and a pool thread stays with its connection for
/// that connection's whole life, keep-alive and a long `POST /generate` included. The queued
/// connection's request then sits unread until some other connection closes: seconds, or minutes
/// (found by `make bench`: 1 request in about 400 took 2 to 4 s; 8 simultaneous keep-alive
/// connections left one unanswered for over 5 s in 4 rounds of 10).
///
/// Connecting to ourselves and hanging up makes the pool run its queue: either a new thread takes
/// the empty connection, ends it at once and then picks up the queued one, or an idle thread is
/// woken and takes the head of the queue. Stranded connections appear only when connections
/// arrive, and those bring requests, so this nudges a few times after each request and otherwise
/// only keeps the heartbeat.
fn nudge_pool(addr: SocketAddr, activity: &Receiver<()>, heartbeat: Duration) {
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    let connect = || {
        // Dropped at once: the pool thread that takes it reads end-of-file and moves on.
        if let Err(e) = TcpStream::connect_timeout(&target, NUDGE_INTERVAL) {
            log::debug!("could not connect to the gateway itself at {target}: {e}");
        }
    };
    let mut left = 0;
    // Deadlines, not timeouts, so that a steady stream of requests cannot postpone them.
    let mut next = Instant::now();
    let mut next_heartbeat = Instant::now() + heartbeat;
    loop {
        let wake = if left == 0 {
            next_heartbeat
        } else {
            next.min(next_heartbeat)
        };
        match activity.recv_deadline(wake) {
            Ok(()) => {
                if left == 0 {
                    next = Instant::now() + NUDGE_INTERVAL;
                }
                left = NUDGES;
            }
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                if now >= next_heartbeat {
                    next_heartbeat = now + heartbeat;
                    connect();
                }
                if left > 0 && now >= next {
                    left -= 1;
                    next += NUDGE_INTERVAL;
                    connect();
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// How often the gateway connects to itself so that the listener's accept never waits a whole
/// `IDLE_TIMEOUT_SECS`: the read timeout set on the listening socket (for the sockets it
/// accepts to inherit) also bounds `accept`, and tiny_http ends its accept thread on the
/// resulting error. A quarter of the timeout, at most 5 s.
fn heartbeat_every(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limit_carries_1000_streams_on_a_stock_linux_box() {
        // Stock hard limits: 4,096 (older distributions) and 524,288 (systemd 240 and later);
        // the gateway raises its soft limit to the hard one at start.
        for hard in [4096, 524_288] {
            let limit = default_connection_limit(Some(hard));
            assert!(limit >= 1000, "hard limit {hard}: {limit}");
            let descriptors = limit as u64 * FDS_PER_CONNECTION;
            assert!(
                descriptors + hard / 16 <= hard,
                "hard limit {hard}: {limit}"
            );
        }
        assert_eq!(
            default_connection_limit(Some(10_000_000)),
            MAX_DEFAULT_CONNECTIONS
        );
        assert_eq!(default_connection_limit(None), 512);
        assert!(default_connection_limit(Some(1024)) < 341);
        assert_eq!(default_connection_limit(Some(10)), 1);
    }

    #[test]
    fn a_set_limit_is_kept_unless_the_open_files_limit_cannot_hold_it() {
        assert_eq!(connection_limit(Some(3)), 3);
        let fds = socket::open_files_limit().expect("Linux tells");
        assert_eq!(connection_limit(Some(usize::MAX)), fitting_connections(fds));
        assert_eq!(connection_limit(None), default_connection_limit(Some(fds)));
    }
}
