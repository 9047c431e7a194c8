//! Per-connection order and closing: what keeps a request behind a refused one (or behind any
//! answer that said `Connection: close`) from ever being handled or answered.
//!
//! tiny_http reads a connection's next request as soon as the previous one's body has been
//! read, and hands it over at once: two pipelined requests can be handled on two threads at the
//! same time, the second before the first has been refused. So the accept loop gives every
//! request a [`Turn`] in its connection's order, and a request thread waits for the requests
//! before it on the same connection to be done before it looks at its own. A connection that
//! was answered with `Connection: close` is [`Connections::close`]d: its socket is shut down
//! both ways (later writes fail, tiny_http reads end-of-file), and any request still coming
//! from it is dropped unanswered.
//!
//! tiny_http names a request's connection only by the client's address, which a later
//! connection may reuse; a closed connection is therefore remembered with its socket's
//! identity (`socket::connection_id`), and only requests arriving on that same socket are
//! dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::socket;

/// How long a closed connection is remembered: far longer than tiny_http takes to hand over
/// what it had already read from it.
const REMEMBER_CLOSED_FOR: Duration = Duration::from_secs(10);

/// How many closed connections are remembered before expired ones are forgotten.
const PRUNE_CLOSED_AT: usize = 1024;

/// The connections with requests being answered, and those closed.
pub struct Connections {
    /// The gateway's listening port (connections are found by client address and this port).
    port: u16,
    state: Mutex<State>,
    /// Signalled whenever a request is done, for the requests waiting their turn.
    done: Condvar,
}

#[derive(Default)]
struct State {
    /// Per client address: turns given and turns done, in order.
    order: HashMap<SocketAddr, Order>,
    /// Closed connections: client address → (socket identity, when to forget it).
    closed: HashMap<SocketAddr, (u64, Instant)>,
}

#[derive(Default, Clone, Copy)]
struct Order {
    given: u64,
    done: u64,
}

/// A request's place among its connection's requests; done when dropped.
pub struct Turn {
    connections: Arc<Connections>,
    peer: Option<SocketAddr>,
    number: u64,
}

impl Connections {
    /// No connection yet, on the gateway's listening `port`.
    pub fn new(port: u16) -> Connections {
        Connections {
            port,
            state: Mutex::new(State::default()),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next turn on `peer`'s connection (`None`: an address tiny_http could not tell, a
    /// turn of its own). Called by the accept loop, in the order requests arrive.
    pub fn turn(self: &Arc<Self>, peer: Option<SocketAddr>) -> Turn {
        let number = match peer {
            Some(peer) => {
                let mut state = self.lock();
                let order = state.order.entry(peer).or_default();
                order.given += 1;
                order.given - 1
            }
            None => 0,
        };
        Turn {
            connections: Arc::clone(self),
            peer,
            number,
        }
    }

    /// Closes `peer`'s connection after what was written to it (see the module documentation).
    pub fn close(&self, peer: SocketAddr) {
        // Not found: the client has already gone (a reset connection no longer has a peer),
        // so nothing can be answered on it; remembering its address would only refuse the
        // next connection that reuses it.
        let Some(id) = socket::close_connection(peer, self.port) else {
            return;
        };
        let mut state = self.lock();
        let now = Instant::now();
        if state.closed.len() >= PRUNE_CLOSED_AT {
            state.closed.retain(|_, (_, until)| *until > now);
        }
        state.closed.insert(peer, (id, now + REMEMBER_CLOSED_FOR));
    }

    /// Whether a request from `peer` arrived on a connection that was closed.
    fn is_closed(&self, peer: SocketAddr) -> bool {
        let closed = {
            let state = self.lock();
            match state.closed.get(&peer) {
                Some(&(id, until)) if until > Instant::now() => id,
                _ => return false,
            }
        };
        // The request holds its connection's socket open, so if it came from the closed one,
        // that socket is still found. Another socket from the same address is a new connection.
        let now = socket::connection_id(peer, self.port);
        let same = now.is_none_or(|now| now == closed);
        if !same {
            self.lock().closed.remove(&peer);
        }
        same
    }
}

impl Turn {
    /// Waits until every earlier request on this connection is done; then says whether this
    /// request may be handled (`false`: its connection was closed, so it must be dropped
    /// unanswered).
    pub fn wait(&self) -> bool {
        let Some(peer) = self.peer else {
            return true;
        };
        let connections = &self.connections;
        let mut state = connections.lock();
        while state
            .order
            .get(&peer)
            .is_some_and(|order| order.done < self.number)
        {
            state = connections
                .done
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        drop(state);
        let closed = connections.is_closed(peer);
        !closed
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(peer) = self.peer else {
            return;
        };
        let connections = &self.connections;
        let mut state = connections.lock();
        let mut waiting = false;
        if let Some(order) = state.order.get_mut(&peer) {
            order.done = order.done.max(self.number + 1);
            waiting = order.done < order.given;
            if !waiting {
                state.order.remove(&peer);
            }
        }
        drop(state);
        if waiting {
            connections.done.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn requests_on_one_connection_take_turns_in_order() {
        let connections = Arc::new(Connections::new(1));
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
        let other: SocketAddr = "127.0.0.1:40001".parse().expect("an address");
        let first = connections.turn(Some(peer));
        let second = connections.turn(Some(peer));
        let elsewhere = connections.turn(Some(other));
        assert!(elsewhere.wait(), "another connection does not wait");
        assert!(first.wait());
        let handled = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|scope| {
            let counter = Arc::clone(&handled);
            let waiter = scope.spawn(move || {
                let may = second.wait();
                counter.fetch_add(1, Ordering::SeqCst);
                may
            });
            // The second request cannot proceed while the first is being answered.
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(handled.load(Ordering::SeqCst), 0);
            drop(first);
            assert!(waiter.join().expect("no panic"));
        });
        assert_eq!(handled.load(Ordering::SeqCst), 1);
        assert!(!connections.lock().order.contains_key(&peer), "forgotten");
    }
}
