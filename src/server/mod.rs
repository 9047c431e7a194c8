//! The HTTP server: a blocking tiny_http accept loop that hands each request to its own thread.
//!
//! `routes` decides what a request is for; `reply` writes JSON and file answers; `auth` checks
//! API keys. A streaming answer (`POST /generate`, `GET /jobs/{id}/events`) keeps its request
//! thread until the job's terminal event has been written.

mod auth;
mod reply;
mod routes;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

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
        let accept_loop = thread::Builder::new()
            .name("accept".into())
            .spawn(move || accept(&app, &accepting))?;
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
fn accept(app: &Arc<App>, http: &tiny_http::Server) {
    for request in http.incoming_requests() {
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
