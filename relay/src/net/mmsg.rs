//! Batched datagram I/O for the per-packet path: `recvmmsg` into buffers that keep
//! [`HEADROOM`] free in front of each datagram (so the TURN core frames it in place), and a
//! send queue flushed with one `sendmmsg` to many destinations.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use crate::turn::{HEADROOM, TAILROOM};

/// Datagrams per `recvmmsg` on a relay socket.
pub const RECV_BATCH: usize = 16;
/// Largest peer datagram taken whole; longer ones arrive truncated and are dropped.
pub const MAX_PEER_PAYLOAD: usize = 4096;
const SLOT: usize = HEADROOM + MAX_PEER_PAYLOAD + TAILROOM;
/// Datagrams per `sendmmsg`.
pub const SEND_BATCH: usize = 64;

/// Writes `addr` as a sockaddr (an IPv4 one fits in the sockaddr_in6-sized slot).
fn to_sockaddr(addr: &SocketAddr, out: &mut MaybeUninit<libc::sockaddr_in6>) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: an all-zero sockaddr_in is valid; the slot is large and aligned enough.
            let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            unsafe { out.as_mut_ptr().cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: an all-zero sockaddr_in6 is valid.
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            out.write(sin6);
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn from_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the family field says which layout the kernel wrote.
    unsafe {
        match s.ss_family as libc::c_int {
            libc::AF_INET => {
                let sin = &*(s as *const _ as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let sin6 = &*(s as *const _ as *const libc::sockaddr_in6);
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// Receive buffers for one worker's relay sockets (used by one socket at a time).
pub struct RecvBatch {
    buf: Vec<u8>,
    lens: [usize; RECV_BATCH],
    truncated: [bool; RECV_BATCH],
    addrs: [MaybeUninit<libc::sockaddr_storage>; RECV_BATCH],
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            buf: vec![0u8; SLOT * RECV_BATCH],
            lens: [0; RECV_BATCH],
            truncated: [false; RECV_BATCH],
            addrs: [MaybeUninit::zeroed(); RECV_BATCH],
        }
    }
}

impl RecvBatch {
    /// One `recvmmsg(MSG_DONTWAIT)`: returns how many datagrams arrived.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovs: [libc::iovec; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        for (i, (iov, hdr)) in iovs.iter_mut().zip(hdrs.iter_mut()).enumerate() {
            let slot = &mut self.buf[i * SLOT + HEADROOM..i * SLOT + HEADROOM + MAX_PEER_PAYLOAD];
            iov.iov_base = slot.as_mut_ptr().cast();
            iov.iov_len = slot.len();
            hdr.msg_hdr.msg_name = self.addrs[i].as_mut_ptr().cast();
            hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at live buffers sized as declared.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in hdrs[..n].iter().enumerate() {
            self.lens[i] = h.msg_len as usize;
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(n)
    }

    /// The sender of datagram `i`, or `None` if truncated or of an unknown family.
    pub fn peer(&self, i: usize) -> Option<SocketAddr> {
        if self.truncated[i] {
            return None;
        }
        // SAFETY: recvmmsg wrote the address of each received datagram.
        from_sockaddr(unsafe { self.addrs[i].assume_init_ref() })
    }

    /// Slot `i` as (buffer with headroom and tailroom, payload range).
    pub fn slot(&mut self, i: usize) -> (&mut [u8], std::ops::Range<usize>) {
        let len = self.lens[i];
        (
            &mut self.buf[i * SLOT..(i + 1) * SLOT],
            HEADROOM..HEADROOM + len,
        )
    }
}

/// Datagrams waiting to go out of one socket, copied into one arena.
#[derive(Default)]
pub struct SendQueue {
    arena: Vec<u8>,
    items: Vec<(SocketAddr, usize, usize)>,
}

impl SendQueue {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn push(&mut self, to: SocketAddr, bytes: &[u8]) {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        self.items.push((to, start, bytes.len()));
    }

    /// Sends everything queued with as few `sendmmsg` calls as possible. Returns how many
    /// datagrams the kernel refused (socket buffer full or an error); they are dropped.
    pub fn flush(&mut self, fd: RawFd) -> usize {
        let mut dropped = 0;
        let mut done = 0;
        while done < self.items.len() {
            let chunk = &self.items[done..(done + SEND_BATCH).min(self.items.len())];
            // Only the entries used are written (no zeroing of the whole arrays per flush).
            let mut iovs: [MaybeUninit<libc::iovec>; SEND_BATCH] =
                [MaybeUninit::uninit(); SEND_BATCH];
            let mut hdrs: [MaybeUninit<libc::mmsghdr>; SEND_BATCH] =
                [MaybeUninit::uninit(); SEND_BATCH];
            let mut names: [MaybeUninit<libc::sockaddr_in6>; SEND_BATCH] =
                [MaybeUninit::uninit(); SEND_BATCH];
            for (i, (to, start, len)) in chunk.iter().enumerate() {
                let namelen = to_sockaddr(to, &mut names[i]);
                iovs[i].write(libc::iovec {
                    iov_base: self.arena[*start..].as_ptr() as *mut libc::c_void,
                    iov_len: *len,
                });
                // SAFETY: an all-zero msghdr is valid (no control data, no flags).
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = names[i].as_mut_ptr().cast();
                h.msg_hdr.msg_namelen = namelen;
                h.msg_hdr.msg_iov = iovs[i].as_mut_ptr();
                h.msg_hdr.msg_iovlen = 1;
                hdrs[i].write(h);
            }
            // SAFETY: headers point at live buffers and addresses for `chunk.len()` entries.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs.as_mut_ptr().cast(),
                    chunk.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                // Buffer full (EAGAIN) or an error on the first datagram: drop it and go on,
                // as a router would; the rest may still fit.
                dropped += 1;
                done += 1;
            } else {
                done += n as usize;
            }
        }
        self.items.clear();
        self.arena.clear();
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn sendmmsg_queue_and_recvmmsg_batch_round_trip() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut q = SendQueue::default();
        q.push(b.local_addr().unwrap(), b"one");
        q.push(c.local_addr().unwrap(), b"two");
        q.push(b.local_addr().unwrap(), b"three");
        assert_eq!(q.flush(a.as_raw_fd()), 0);
        assert!(q.is_empty());
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut one = [0u8; 8];
        assert_eq!(b.recv(&mut one).unwrap(), 3);
        // Take the datagram left ("three") with recvmmsg.
        let mut rb = RecvBatch::default();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.is_empty() && std::time::Instant::now() < deadline {
            match rb.recv(b.as_raw_fd()) {
                Ok(n) => {
                    for i in 0..n {
                        let from = rb.peer(i).unwrap();
                        let (buf, range) = rb.slot(i);
                        got.push((from, buf[range].to_vec()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, vec![(a.local_addr().unwrap(), b"three".to_vec())]);
        let mut two = [0u8; 8];
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let n = c.recv(&mut two).unwrap();
        assert_eq!(&two[..n], b"two");
    }

    #[test]
    fn oversized_datagrams_are_flagged() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.send_to(&vec![1u8; MAX_PEER_PAYLOAD + 10], b.local_addr().unwrap())
            .unwrap();
        let mut rb = RecvBatch::default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match rb.recv(b.as_raw_fd()) {
                Ok(1) => break,
                Ok(_) | Err(_) if std::time::Instant::now() < deadline => std::thread::yield_now(),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(rb.peer(0), None);
    }
}
