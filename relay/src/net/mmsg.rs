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

/// `UDP_SEGMENT` (linux/udp.h): a send carrying this control message is split by the kernel
/// into datagrams of the given size (GSO).
const UDP_SEGMENT: libc::c_int = 103;
/// Segments one GSO send may carry (the kernel's UDP_MAX_SEGMENTS is 64 or more).
const MAX_GSO_SEGMENTS: usize = 64;
/// Bytes one GSO send may carry (an IP datagram's payload limit, with room for headers).
const MAX_GSO_BYTES: usize = 65_000;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; 32]);

/// Datagrams waiting to go out of one socket, copied into one arena. Consecutive datagrams
/// to the same destination with the same size go out as one GSO send.
pub struct SendQueue {
    arena: Vec<u8>,
    items: Vec<(SocketAddr, usize, usize)>,
    /// Cleared for good if the kernel refuses GSO on this socket.
    gso: bool,
}

impl Default for SendQueue {
    fn default() -> Self {
        SendQueue {
            arena: Vec::new(),
            items: Vec::new(),
            gso: true,
        }
    }
}

/// One sendmmsg entry: items `first..first + count`, split in segments of `segment` bytes.
#[derive(Clone, Copy)]
struct Message {
    first: usize,
    count: usize,
    bytes: usize,
    segment: Option<u16>,
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

    /// Groups items from `first` into messages: a run of datagrams to one destination whose
    /// sizes all equal the first (the last may be shorter) becomes one GSO message.
    fn group(&self, first: usize, out: &mut [Message; SEND_BATCH]) -> usize {
        let mut n = 0;
        let mut i = first;
        while i < self.items.len() && n < SEND_BATCH {
            let (to, _, seg) = self.items[i];
            let mut count = 1;
            let mut bytes = seg;
            if self.gso && seg > 0 {
                while i + count < self.items.len() && count < MAX_GSO_SEGMENTS {
                    let (t, _, len) = self.items[i + count];
                    // Items are contiguous in the arena; the previous one must be full-size.
                    if t != to
                        || len > seg
                        || len == 0
                        || self.items[i + count - 1].2 != seg
                        || bytes + len > MAX_GSO_BYTES
                    {
                        break;
                    }
                    bytes += len;
                    count += 1;
                }
            }
            let segment = (count > 1).then_some(seg as u16);
            out[n] = Message {
                first: i,
                count,
                bytes,
                segment,
            };
            n += 1;
            i += count;
        }
        n
    }

    /// Sends everything queued with as few syscalls as possible. Returns how many datagrams
    /// the kernel refused (socket buffer full or an error); they are dropped.
    pub fn flush(&mut self, fd: RawFd) -> usize {
        let mut dropped = 0;
        let mut done = 0;
        let mut msgs = [Message {
            first: 0,
            count: 0,
            bytes: 0,
            segment: None,
        }; SEND_BATCH];
        while done < self.items.len() {
            let n = self.group(done, &mut msgs);
            // Only the entries used are written (no zeroing of the whole arrays per flush).
            let mut iovs: [MaybeUninit<libc::iovec>; SEND_BATCH] =
                [MaybeUninit::uninit(); SEND_BATCH];
            let mut hdrs: [MaybeUninit<libc::mmsghdr>; SEND_BATCH] =
                [MaybeUninit::uninit(); SEND_BATCH];
            let mut names: [MaybeUninit<libc::sockaddr_in6>; SEND_BATCH] =
                [MaybeUninit::uninit(); SEND_BATCH];
            let mut cmsgs = [CmsgBuf([0; 32]); SEND_BATCH];
            for (k, m) in msgs[..n].iter().enumerate() {
                let (to, start, _) = self.items[m.first];
                let namelen = to_sockaddr(&to, &mut names[k]);
                iovs[k].write(libc::iovec {
                    iov_base: self.arena[start..].as_ptr() as *mut libc::c_void,
                    iov_len: m.bytes,
                });
                // SAFETY: an all-zero msghdr is valid (no control data, no flags).
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = names[k].as_mut_ptr().cast();
                h.msg_hdr.msg_namelen = namelen;
                h.msg_hdr.msg_iov = iovs[k].as_mut_ptr();
                h.msg_hdr.msg_iovlen = 1;
                if let Some(seg) = m.segment {
                    // SAFETY: the control buffer is aligned and large enough for one cmsghdr
                    // carrying a u16; CMSG_* compute offsets inside it.
                    unsafe {
                        let space = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
                        h.msg_hdr.msg_control = cmsgs[k].0.as_mut_ptr().cast();
                        h.msg_hdr.msg_controllen = space as _;
                        let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                        (*c).cmsg_level = libc::SOL_UDP;
                        (*c).cmsg_type = UDP_SEGMENT;
                        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
                    }
                }
                hdrs[k].write(h);
            }
            // SAFETY: headers point at live buffers, addresses and control data for `n` entries.
            let sent = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs.as_mut_ptr().cast(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if sent > 0 {
                let sent = sent as usize;
                done = msgs[sent - 1].first + msgs[sent - 1].count;
                continue;
            }
            let err = io::Error::last_os_error().raw_os_error();
            if msgs[0].segment.is_some()
                && matches!(
                    err,
                    Some(libc::EIO)
                        | Some(libc::EINVAL)
                        | Some(libc::ENOPROTOOPT)
                        | Some(libc::EOPNOTSUPP)
                )
            {
                // This socket or device cannot do GSO: send plain datagrams from now on.
                self.gso = false;
                continue;
            }
            // Buffer full (EAGAIN) or an error on the first message: drop it and go on, as a
            // router would; the rest may still fit.
            dropped += msgs[0].count;
            done = msgs[0].first + msgs[0].count;
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
    fn runs_to_one_destination_go_out_as_gso_and_arrive_as_separate_datagrams() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut q = SendQueue::default();
        let sizes = [300usize, 300, 300, 120, 300, 300];
        for (i, n) in sizes.iter().enumerate() {
            q.push(b.local_addr().unwrap(), &vec![i as u8; *n]);
        }
        q.push(c.local_addr().unwrap(), b"other");
        // Grouping: [300,300,300,120] as one GSO message, [300,300] as another, then c.
        let mut msgs = [Message {
            first: 0,
            count: 0,
            bytes: 0,
            segment: None,
        }; SEND_BATCH];
        assert_eq!(q.group(0, &mut msgs), 3);
        assert_eq!(
            (msgs[0].count, msgs[0].bytes, msgs[0].segment),
            (4, 1020, Some(300))
        );
        assert_eq!((msgs[1].count, msgs[1].segment), (2, Some(300)));
        assert_eq!((msgs[2].count, msgs[2].segment), (1, None));
        assert_eq!(q.flush(a.as_raw_fd()), 0);
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 2048];
        for (i, n) in sizes.iter().enumerate() {
            let got = b.recv(&mut buf).unwrap();
            assert_eq!(got, *n, "datagram {i} keeps its own size");
            assert!(
                buf[..got].iter().all(|x| *x == i as u8),
                "datagram {i} keeps its bytes"
            );
        }
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let got = c.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got], b"other");
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
