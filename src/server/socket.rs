//! What tiny_http cannot do for us at the socket level: socket timeouts, the open-files limit,
//! the listener's accept queue, and closing one client's connection.
//!
//! tiny_http 0.12 sets no timeouts on the connections it accepts and offers no way to close one
//! from a request handler. Linux copies `SO_RCVTIMEO`/`SO_SNDTIMEO` from a listening socket to
//! every socket it accepts, so timeouts are set once on the listener. A connection is found by
//! its peer address among the process's sockets when the gateway must end it (a request whose
//! framing it refuses), and its reading side is shut down: tiny_http then reads end-of-file and
//! closes it after the answer.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

/// How many connections the listener's queues hold before the kernel turns new ones away.
/// The standard library asks for 128, which a burst of clients overflows (a script opening
/// 1,000 streams at once): the kernel then answers with SYN cookies and resets a share of those
/// connections. The kernel caps the value at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: libc::c_int = 4096;

/// Binds `listen` (`HOST:PORT`) as a standard listener with a backlog of [`LISTEN_BACKLOG`].
pub fn bind(listen: &str) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(listen)?;
    // Calling listen again on a listening socket only changes its backlog.
    // SAFETY: listen takes a descriptor number and an int, and changes no memory.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

/// Sets the read and write timeouts of `listener`, which accepted sockets inherit on Linux: a
/// connection silent for `timeout` (idle keep-alive, a slow request) ends, and a write to a client
/// that stopped reading fails after `timeout` instead of blocking its thread forever.
pub fn set_timeouts(listener: &TcpListener, timeout: Duration) -> io::Result<()> {
    // The standard library sets these options only on streams; a duplicate of the listener's
    // descriptor, seen as a stream, reaches the same socket.
    let same_socket = TcpStream::from(OwnedFd::from(listener.try_clone()?));
    same_socket.set_read_timeout(Some(timeout))?;
    same_socket.set_write_timeout(Some(timeout))
}

/// The open-files limit before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFilesLimit {
    /// The soft limit found at start-up.
    pub before: u64,
    /// The soft limit now (the hard limit, unless raising failed).
    pub after: u64,
}

/// Raises the soft open-files limit (`RLIMIT_NOFILE`) to the hard limit: every connection costs
/// two descriptors, and running out of them is what stops a listener.
pub fn raise_open_files_limit() -> io::Result<OpenFilesLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(OpenFilesLimit {
        before,
        after: limit.rlim_cur,
    })
}

/// The current soft open-files limit, if the system tells.
pub fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}

/// How many connections wait in `listener`'s accept queue, completed by the kernel but not yet
/// accepted by the server. `None` where the system cannot tell (only Linux can).
pub fn accept_queue_len(listener: &TcpListener) -> Option<u32> {
    accept_queue_len_of(listener.as_raw_fd())
}

#[cfg(target_os = "linux")]
fn accept_queue_len_of(fd: RawFd) -> Option<u32> {
    let info = tcp_info(fd)?;
    // For a listening socket (state 10, TCP_LISTEN) Linux reports the accept queue's length as
    // `tcpi_unacked`.
    const TCP_LISTEN: u8 = 10;
    (info.tcpi_state == TCP_LISTEN).then_some(info.tcpi_unacked)
}

/// A TCP socket's state (`TCP_ESTABLISHED`...), as Linux numbers them.
#[cfg(target_os = "linux")]
fn tcp_state(fd: RawFd) -> Option<u8> {
    Some(tcp_info(fd)?.tcpi_state)
}

#[cfg(not(target_os = "linux"))]
fn tcp_state(_fd: RawFd) -> Option<u8> {
    None
}

#[cfg(target_os = "linux")]
fn tcp_info(fd: RawFd) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain data; zeroes are a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large.
    let status = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (status == 0).then_some(info)
}

#[cfg(not(target_os = "linux"))]
fn accept_queue_len_of(_fd: RawFd) -> Option<u32> {
    None
}

/// Stops reading this process's connection from `peer` to `local_port`: its reading side is
/// shut down and what the client sent but nobody read yet is discarded, so the server reads
/// end-of-file next, answers what it was answering and then closes the connection, without
/// reading (or waiting for) anything more from the client.
///
/// Bytes the client sends after this call are still delivered by the kernel; the caller refuses
/// any further request from `peer` (`server::Connections`). Returns whether such a connection
/// was found (only on Linux, where `/proc/self/fd` lists the process's descriptors).
pub fn stop_reading(peer: SocketAddr, local_port: u16) -> bool {
    let Some(own) = socket_of(peer, local_port) else {
        return false;
    };
    let fd = own.as_raw_fd();
    // SAFETY: shutdown takes a descriptor number (our own duplicate) and changes no memory.
    if unsafe { libc::shutdown(fd, libc::SHUT_RD) } != 0 {
        return false;
    }
    discard_input(fd);
    true
}

/// Ends this process's connection from `peer` to `local_port` both ways, after what was
/// written to it (an answer that said `Connection: close`): the client gets the answer and
/// then end-of-file, the server reads end-of-file, and every later write to it fails. What
/// the client sent and nobody read is discarded. Returns the identity of the connection
/// ended ([`connection_id`]), or `None` when none was found.
pub fn close_connection(peer: SocketAddr, local_port: u16) -> Option<u64> {
    let own = socket_of(peer, local_port)?;
    let fd = own.as_raw_fd();
    let id = inode_of(fd);
    // SAFETY: shutdown takes a descriptor number (our own duplicate) and changes no memory.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    discard_input(fd);
    id
}

/// Reads and drops what waits in `fd`'s receive queue, without blocking, so that closing the
/// socket later does not reset the connection (and with it an answer still on its way).
fn discard_input(fd: RawFd) {
    /// Discarding is bounded: a client sending faster than this is read can only keep its own
    /// connection (and its refusals) going.
    const DISCARD_LIMIT: usize = 16 * 1024 * 1024;
    let mut sink = [0u8; 16 * 1024];
    let mut discarded = 0;
    while discarded < DISCARD_LIMIT {
        // SAFETY: recv writes at most `sink.len()` bytes into `sink`.
        let n = unsafe { libc::recv(fd, sink.as_mut_ptr().cast(), sink.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            break;
        }
        discarded += n as usize;
    }
}

/// Whether the client of this process's connection from `peer` to `local_port` has gone: it
/// closed the connection (or at least its sending side: a client that half-closes counts as
/// gone), or the connection failed. `None` when the connection is not found or the system
/// cannot tell (only Linux can). Never blocks and reads nothing.
///
/// The TCP state tells, not `POLLRDHUP`: tiny_http shuts the reading side of a connection down
/// itself once no next request came within `IDLE_TIMEOUT_SECS`, which `POLLRDHUP` reports too.
pub fn client_has_gone(peer: SocketAddr, local_port: u16) -> Option<bool> {
    let own = socket_of(peer, local_port)?;
    let fd = own.as_raw_fd();
    let mut poll = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd we own; a timeout of 0 never blocks.
    if unsafe { libc::poll(&mut poll, 1, 0) } < 0 {
        return None;
    }
    if poll.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
        return Some(true);
    }
    let state = tcp_state(fd)?;
    // The client's FIN arrived (CLOSE_WAIT, then LAST_ACK once we close), or a reset (CLOSE).
    const TCP_CLOSE: u8 = 7;
    const TCP_CLOSE_WAIT: u8 = 8;
    const TCP_LAST_ACK: u8 = 9;
    Some(matches!(state, TCP_CLOSE | TCP_CLOSE_WAIT | TCP_LAST_ACK))
}

/// The identity of this process's connection from `peer` to `local_port` (its socket's inode):
/// tells a connection from a later one that reuses the same client address and port.
pub fn connection_id(peer: SocketAddr, local_port: u16) -> Option<u64> {
    let own = socket_of(peer, local_port)?;
    inode_of(own.as_raw_fd())
}

/// The inode number of the file `fd` names (for a socket, unique while it is open).
fn inode_of(fd: RawFd) -> Option<u64> {
    // SAFETY: stat is plain data; zeroes are a valid value.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes at most one stat into the struct we own.
    (unsafe { libc::fstat(fd, &mut stat) } == 0).then_some(stat.st_ino)
}

/// Writes `bytes` straight to this process's connection from `peer` to `local_port`, then
/// shuts the connection down both ways. For a request that must never be handed back to
/// tiny_http (see `reply::abandon`); the socket's write timeout bounds the write.
///
/// Returns whether such a connection was found (only on Linux).
pub fn answer_and_shut_down(peer: SocketAddr, local_port: u16, bytes: &[u8]) -> bool {
    let Some(own) = socket_of(peer, local_port) else {
        return false;
    };
    let fd = own.as_raw_fd();
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        // SAFETY: send reads at most `rest.len()` bytes from `rest`; MSG_NOSIGNAL turns a
        // closed peer into an error instead of SIGPIPE.
        let n = unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if n <= 0 {
            break;
        }
        sent += n as usize;
    }
    // SAFETY: as in stop_reading.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    true
}

/// Where each connection's descriptor was last found: `(peer, local port)` → descriptor.
/// Rebuilt from `/proc/self/fd` when a connection is missing from it, so a thousand streams
/// ending together cost one scan, not a thousand.
static KNOWN_SOCKETS: Mutex<Option<HashMap<(SocketAddr, u16), RawFd>>> = Mutex::new(None);

/// A descriptor of its own for this process's TCP socket connected from `peer` to
/// `local_port`: a duplicate, checked after it was made, so that the socket cannot change under
/// the caller. The descriptor found belongs to tiny_http, which may close it at any moment and
/// see its number reused by the next connection it accepts; the duplicate keeps the right
/// socket until it is dropped.
fn socket_of(peer: SocketAddr, local_port: u16) -> Option<OwnedFd> {
    let mut known = KNOWN_SOCKETS.lock().unwrap_or_else(|p| p.into_inner());
    let cached = known
        .as_ref()
        .and_then(|map| map.get(&(peer, local_port)).copied());
    if let Some(own) = cached.and_then(|fd| own_copy(fd, peer, local_port)) {
        return Some(own);
    }
    let map = scan_sockets();
    let found = map.get(&(peer, local_port)).copied();
    *known = Some(map);
    own_copy(found?, peer, local_port)
}

/// A duplicate of `fd` if, once made, it is a socket connected from `peer` to `local_port`.
fn own_copy(fd: RawFd, peer: SocketAddr, local_port: u16) -> Option<OwnedFd> {
    // SAFETY: fcntl with F_DUPFD_CLOEXEC takes a descriptor number and returns a new one (or -1);
    // at worst `fd` was closed since and the call fails, or it now names another file, which
    // the check below tells.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if copy < 0 {
        return None;
    }
    // SAFETY: `copy` is a descriptor this function just made and nothing else owns.
    let own = unsafe { OwnedFd::from_raw_fd(copy) };
    is_connection(own.as_raw_fd(), peer, local_port).then_some(own)
}

/// Whether `fd` is a socket connected from `peer` to `local_port`.
fn is_connection(fd: RawFd, peer: SocketAddr, local_port: u16) -> bool {
    address_of(fd, libc::getpeername) == Some(peer)
        && address_of(fd, libc::getsockname).is_some_and(|a| a.port() == local_port)
}

/// Every connected IP socket of this process, by `(peer, local port)`.
fn scan_sockets() -> HashMap<(SocketAddr, u16), RawFd> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return HashMap::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter_map(|fd| {
            let peer = address_of(fd, libc::getpeername)?;
            let local = address_of(fd, libc::getsockname)?;
            Some(((peer, local.port()), fd))
        })
        .collect()
}

type AddressCall =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

/// The socket address `call` (getpeername or getsockname) gives for `fd`, if it is an IP socket.
fn address_of(fd: RawFd, call: AddressCall) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data and large enough for any address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the call writes at most `len` bytes into `storage`.
    if unsafe {
        call(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } != 0
    {
        return None;
    }
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let v4: libc::sockaddr_in =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(v4.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let v6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
            let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::new(ip.into(), u16::from_be(v6.sin6_port)))
        }
        _ => None,
    }
}

/// How many descriptors this process has open (from `/proc/self/fd`; `None` elsewhere).
pub fn open_descriptors() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn accepted_sockets_inherit_the_listeners_timeouts() {
        let listener = bind("127.0.0.1:0").expect("binds");
        set_timeouts(&listener, Duration::from_millis(1500)).expect("options set");
        let addr = listener.local_addr().expect("bound");
        let _client = TcpStream::connect(addr).expect("connects");
        let (accepted, _) = listener.accept().expect("accepts");
        assert_eq!(
            accepted.read_timeout().expect("readable option"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            accepted.write_timeout().expect("readable option"),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn a_burst_of_clients_waits_in_the_accept_queue() {
        // Where the kernel caps the backlog low (somaxconn 128 before Linux 5.4), only that many.
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok())
            .unwrap_or(128);
        let burst = somaxconn.min(300);
        let listener = bind("127.0.0.1:0").expect("binds");
        let addr = listener.local_addr().expect("bound");
        let clients: Vec<TcpStream> = (0..burst)
            .map(|n| {
                TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("client {n} of {burst} could not connect: {e}"))
            })
            .collect();
        if cfg!(target_os = "linux") {
            assert_eq!(accept_queue_len(&listener), Some(clients.len() as u32));
        }
    }

    #[test]
    fn the_accept_queue_counts_connections_nobody_accepted() {
        let listener = bind("127.0.0.1:0").expect("binds");
        assert_eq!(accept_queue_len(&listener), Some(0));
        let addr = listener.local_addr().expect("bound");
        let _a = TcpStream::connect(addr).expect("connects");
        let _b = TcpStream::connect(addr).expect("connects");
        assert_eq!(accept_queue_len(&listener), Some(2));
        let _accepted = listener.accept().expect("accepts");
        assert_eq!(accept_queue_len(&listener), Some(1));
    }

    #[test]
    fn stop_reading_ends_only_that_connection() {
        let listener = bind("127.0.0.1:0").expect("binds");
        let port = listener.local_addr().expect("bound").port();
        let mut first = TcpStream::connect(("127.0.0.1", port)).expect("connects");
        let mut second = TcpStream::connect(("127.0.0.1", port)).expect("connects");
        let (mut first_server, _) = listener.accept().expect("accepts");
        let (mut second_server, _) = listener.accept().expect("accepts");
        let peer = first.local_addr().expect("bound");
        first.write_all(b"unread").expect("sends");
        // Sent bytes travel through loopback at once, but give them a moment to be queued.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut pending = [0u8; 16];
        first_server.set_nonblocking(true).expect("nonblocking");
        while first_server.peek(&mut pending).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the bytes never arrived"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        first_server.set_nonblocking(false).expect("blocking");
        assert!(stop_reading(peer, port));
        let mut buf = [0u8; 16];
        assert_eq!(first_server.read(&mut buf).expect("end of file"), 0);
        second.write_all(b"hello").expect("sends");
        assert_eq!(second_server.read(&mut buf).expect("reads"), 5);
        first_server
            .write_all(b"answer")
            .expect("writing still works");
        let mut answer = [0u8; 6];
        first.read_exact(&mut answer).expect("the answer arrives");
        assert_eq!(&answer, b"answer");
    }

    #[test]
    fn the_open_files_limit_can_be_raised_to_its_hard_limit() {
        let limit = raise_open_files_limit().expect("allowed for any process");
        assert!(limit.after >= limit.before);
        assert!(open_descriptors().is_some_and(|n| n > 0));
    }
}
