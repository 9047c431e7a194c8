//! What tiny_http cannot do for us at the socket level: socket timeouts, the open-files limit,
//! the listener's accept queue, and closing one client's connection.
//!
//! tiny_http 0.12 sets no timeouts on the connections it accepts and offers no way to close one
//! from a request handler. Linux copies `SO_RCVTIMEO`/`SO_SNDTIMEO` from a listening socket to
//! every socket it accepts, so timeouts are set once on the listener. A connection is found by
//! its peer address among the process's sockets when the gateway must end it (a request whose
//! framing it refuses), and its reading side is shut down: tiny_http then reads end-of-file and
//! closes it after the answer.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
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
    // For a listening socket (state 10, TCP_LISTEN) Linux reports the accept queue's length as
    // `tcpi_unacked`.
    const TCP_LISTEN: u8 = 10;
    (status == 0 && info.tcpi_state == TCP_LISTEN).then_some(info.tcpi_unacked)
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
/// any further request from `peer` (the condemned connections of `server::FrontDoor`). Returns
/// whether such a connection was found (only on Linux, where `/proc/self/fd` lists the
/// process's descriptors).
pub fn stop_reading(peer: SocketAddr, local_port: u16) -> bool {
    /// Discarding is bounded: a client sending faster than this is read can only keep its own
    /// connection (and its refusals) going.
    const DISCARD_LIMIT: usize = 16 * 1024 * 1024;
    let Some(&fd) = sockets_from(peer, local_port).first() else {
        return false;
    };
    // SAFETY: shutdown takes a descriptor number and changes no memory; at worst the number was
    // closed since and the call fails.
    if unsafe { libc::shutdown(fd, libc::SHUT_RD) } != 0 {
        return false;
    }
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
    true
}

/// Writes `bytes` straight to this process's connection from `peer` to `local_port`, then
/// shuts the connection down both ways. For a request that must never be handed back to
/// tiny_http (see `reply::abandon`); the socket's write timeout bounds the write.
///
/// Returns whether such a connection was found (only on Linux).
pub fn answer_and_shut_down(peer: SocketAddr, local_port: u16, bytes: &[u8]) -> bool {
    let Some(&fd) = sockets_from(peer, local_port).first() else {
        return false;
    };
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

/// The descriptors of this process's TCP sockets connected from `peer` to `local_port`.
fn sockets_from(peer: SocketAddr, local_port: u16) -> Vec<RawFd> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| {
            address_of(fd, libc::getpeername) == Some(peer)
                && address_of(fd, libc::getsockname).is_some_and(|a| a.port() == local_port)
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
