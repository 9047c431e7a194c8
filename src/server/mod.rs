//! The HTTP server: a blocking tiny_http accept loop that hands each request to its own thread.
//!
//! `routes` decides what a request is for; `reply` writes JSON and file answers; `auth` checks
//! API keys. A streaming answer (`POST /generate`, `GET /jobs/{id}/events`) keeps its request
//! thread until the job's terminal event has been written.

mod auth;
mod reply;
mod routes;

pub use routes::{Body, ENDPOINTS, Endpoint, ROUTER_ERRORS};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::app::App;

/// A running gateway: its address and its accept-loop thread.
pub struct Server {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    accept_loop: Option<JoinHandle<()>>,
}

/// A bound listener not yet serving: lets the caller learn the port (e.g. port 0 in tests)
/// before building the app whose image URLs name it.
pub struct Bound {
    http: tiny_http::Server,
    addr: SocketAddr,
}

impl Bound {
    /// The address the listener is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts the accept loop on its own thread.
    pub fn serve(self, app: Arc<App>) -> io::Result<Server> {
        let http = Arc::new(self.http);
        let accepting = Arc::clone(&http);
        // The accept loop owns the only sender: when it ends, the nudging thread ends too.
        let (activity, seen) = crossbeam_channel::bounded(1);
        let addr = self.addr;
        thread::Builder::new()
            .name("pool-nudge".into())
            .spawn(move || nudge_pool(addr, &seen))?;
        let accept_loop = thread::Builder::new()
            .name("accept".into())
            .spawn(move || accept(&app, &accepting, &activity))?;
        Ok(Server {
            http,
            addr: self.addr,
            accept_loop: Some(accept_loop),
        })
    }
}

impl Server {
    /// Binds `listen` (e.g. `127.0.0.1:8000`, or port 0 for any free port).
    pub fn bind(listen: &str) -> io::Result<Bound> {
        let http = tiny_http::Server::http(listen).map_err(io::Error::other)?;
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("the server is not listening on TCP"))?;
        Ok(Bound { http, addr })
    }

    /// Binds `listen` and starts serving `app`.
    pub fn start(app: Arc<App>, listen: &str) -> io::Result<Server> {
        Server::bind(listen)?.serve(app)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
        self.http.unblock();
        if let Some(handle) = self.accept_loop.take() {
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
fn accept(app: &Arc<App>, http: &tiny_http::Server, activity: &Sender<()>) {
    for request in http.incoming_requests() {
        // Full means the nudging thread already knows that requests are arriving.
        let _ = activity.try_send(());
        let app = Arc::clone(app);
        let spawned = thread::Builder::new()
            .name("request".into())
            .spawn(move || routes::handle(&app, request));
        if let Err(e) = spawned {
            // The request moved into the closure and is dropped with it; tiny_http answers 500.
            log::error!("could not start a request thread: {e}");
        }
    }
}

/// How many times, and how often, tiny_http's connection pool is nudged after a request.
const NUDGES: u32 = 10;
const NUDGE_INTERVAL: Duration = Duration::from_millis(100);

/// Works around a race in tiny_http 0.12's connection pool (`util::TaskPool::spawn`).
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
/// sleeps.
fn nudge_pool(addr: SocketAddr, activity: &Receiver<()>) {
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    let mut left = 0;
    // A deadline, not a timeout, so that a steady stream of requests cannot postpone the nudges.
    let mut next = Instant::now();
    loop {
        let event = if left == 0 {
            activity.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            activity.recv_deadline(next)
        };
        match event {
            Ok(()) => {
                if left == 0 {
                    next = Instant::now() + NUDGE_INTERVAL;
                }
                left = NUDGES;
            }
            Err(RecvTimeoutError::Timeout) => {
                left -= 1;
                next += NUDGE_INTERVAL;
                // Dropped at once: the pool thread that takes it reads end-of-file and moves on.
                if let Err(e) = TcpStream::connect_timeout(&target, NUDGE_INTERVAL) {
                    log::debug!("could not nudge the connection pool at {target}: {e}");
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
