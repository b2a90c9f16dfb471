//! Batched UDP I/O (recvmmsg/sendmmsg) over IPv4 sockets, with optional IP_PKTINFO so one
//! socket can speak for many loopback source addresses.
//!
//! A [`Batch`] owns `cap` fixed-size slots. Each slot holds one datagram: its bytes at
//! `buf[off..off + len]`, the peer address (source after a receive, destination for a
//! send) and a local IPv4 address (the destination seen on receive with IP_PKTINFO, or the
//! source to send from).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

const CTRL_WORDS: usize = 8; // 64 bytes: room for one in_pktinfo cmsg

/// Fixed slots for batched datagram I/O.
pub struct Batch {
    slot: usize,
    cap: usize,
    bufs: Vec<u8>,
    off: Vec<usize>,
    len: Vec<usize>,
    addr: Vec<libc::sockaddr_in>,
    local: Vec<u32>,
    ctrl: Vec<[u64; CTRL_WORDS]>,
    iov: Vec<libc::iovec>,
    hdr: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iov` and `hdr` only ever point into this Batch's own vectors
// and are rebuilt before every system call; nothing is shared between threads.
unsafe impl Send for Batch {}

fn to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr(a: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
        u16::from_be(a.sin_port),
    )
}

impl Batch {
    pub fn new(cap: usize, slot: usize) -> Self {
        // SAFETY: these are plain C structs for which all-zero is a valid value.
        let zero_addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        Batch {
            slot,
            cap,
            bufs: vec![0; cap * slot],
            off: vec![0; cap],
            len: vec![0; cap],
            addr: vec![zero_addr; cap],
            local: vec![0; cap],
            ctrl: vec![[0; CTRL_WORDS]; cap],
            iov: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                cap
            ],
            hdr: vec![zero_hdr; cap],
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn slot_size(&self) -> usize {
        self.slot
    }

    /// The whole slot `i` for writing; call [`Batch::set`] afterwards.
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i * self.slot..(i + 1) * self.slot]
    }

    /// The datagram in slot `i`.
    pub fn data(&self, i: usize) -> &[u8] {
        let b = i * self.slot + self.off[i];
        &self.bufs[b..b + self.len[i]]
    }

    /// Mutable access to the datagram in slot `i`.
    pub fn data_mut(&mut self, i: usize) -> &mut [u8] {
        let b = i * self.slot + self.off[i];
        &mut self.bufs[b..b + self.len[i]]
    }

    /// Sets the datagram bounds, peer and local address of slot `i`.
    pub fn set(
        &mut self,
        i: usize,
        off: usize,
        len: usize,
        peer: SocketAddrV4,
        local: Option<Ipv4Addr>,
    ) {
        debug_assert!(off + len <= self.slot);
        self.off[i] = off;
        self.len[i] = len;
        self.addr[i] = to_sockaddr(peer);
        self.local[i] = local.map(u32::from).unwrap_or(0);
    }

    /// Moves the bounds of slot `i` (e.g. to strip or add a header in the slot's headroom).
    pub fn reframe(&mut self, i: usize, off: usize, len: usize) {
        debug_assert!(off + len <= self.slot);
        self.off[i] = off;
        self.len[i] = len;
    }

    pub fn set_peer(&mut self, i: usize, peer: SocketAddrV4) {
        self.addr[i] = to_sockaddr(peer);
    }

    pub fn set_local(&mut self, i: usize, local: Option<Ipv4Addr>) {
        self.local[i] = local.map(u32::from).unwrap_or(0);
    }

    pub fn off(&self, i: usize) -> usize {
        self.off[i]
    }

    /// Source (after a receive) or destination (for a send) of slot `i`.
    pub fn peer(&self, i: usize) -> SocketAddrV4 {
        from_sockaddr(&self.addr[i])
    }

    /// Destination address seen on receive (needs IP_PKTINFO on the socket).
    pub fn local(&self, i: usize) -> Option<Ipv4Addr> {
        (self.local[i] != 0).then(|| Ipv4Addr::from(self.local[i]))
    }

    /// Receives up to `max` datagrams into slots `start..`, each at offset `headroom` in its
    /// slot. Non-blocking: returns Ok(0) when nothing is queued.
    pub fn recv(
        &mut self,
        fd: RawFd,
        start: usize,
        max: usize,
        headroom: usize,
    ) -> io::Result<usize> {
        let n = max.min(self.cap - start);
        if n == 0 {
            return Ok(0);
        }
        let base = self.bufs.as_mut_ptr();
        for k in 0..n {
            let i = start + k;
            // SAFETY: i < cap, so the slot lies within `bufs`.
            self.iov[k] = libc::iovec {
                iov_base: unsafe { base.add(i * self.slot + headroom) } as *mut libc::c_void,
                iov_len: self.slot - headroom,
            };
            // SAFETY: zeroed msghdr is valid; fields are then set to point into our vectors.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_name = &mut self.addr[i] as *mut libc::sockaddr_in as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iov[k];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrl[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = std::mem::size_of::<[u64; CTRL_WORDS]>() as _;
            self.hdr[k] = libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            };
        }
        // SAFETY: hdr[..n] point at live buffers owned by self for the duration of the call.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdr.as_mut_ptr(),
                n as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let r = r as usize;
        for k in 0..r {
            let i = start + k;
            self.off[i] = headroom;
            self.len[i] = self.hdr[k].msg_len as usize;
            self.local[i] = pktinfo_dst(&self.hdr[k].msg_hdr).unwrap_or(0);
        }
        Ok(r)
    }

    /// Sends slots `start..end`. Returns how many went out; a datagram the kernel refuses
    /// (e.g. EPERM) is skipped and not counted. Blocks while the send buffer is full if the
    /// socket is blocking.
    pub fn send(&mut self, fd: RawFd, start: usize, end: usize) -> io::Result<usize> {
        let mut sent = 0;
        let mut at = start;
        let mut spins = 0;
        while at < end && spins < 1000 {
            spins += 1;
            let n = self.prepare_send(at, end);
            // SAFETY: hdr[..n] point at live buffers owned by self for the duration of the call.
            let r = unsafe { libc::sendmmsg(fd, self.hdr.as_mut_ptr(), n as _, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        poll_one(fd, libc::POLLOUT, 5);
                        continue;
                    }
                    _ => {
                        if at == start && end - start == 1 {
                            return Err(e);
                        }
                        at += 1; // skip the datagram that failed
                        continue;
                    }
                }
            }
            sent += r as usize;
            at += r as usize;
        }
        Ok(sent)
    }

    fn prepare_send(&mut self, start: usize, end: usize) -> usize {
        let n = end - start;
        let base = self.bufs.as_mut_ptr();
        for k in 0..n {
            let i = start + k;
            // SAFETY: i < cap and off + len <= slot, so the range lies within `bufs`.
            self.iov[k] = libc::iovec {
                iov_base: unsafe { base.add(i * self.slot + self.off[i]) } as *mut libc::c_void,
                iov_len: self.len[i],
            };
            // SAFETY: zeroed msghdr is valid; fields are then set to point into our vectors.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_name = &mut self.addr[i] as *mut libc::sockaddr_in as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iov[k];
            h.msg_iovlen = 1;
            if self.local[i] != 0 {
                h.msg_control = self.ctrl[i].as_mut_ptr() as *mut libc::c_void;
                // SAFETY: CMSG_SPACE is a pure computation.
                h.msg_controllen =
                    unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) }
                        as _;
                // SAFETY: the control buffer is 64 bytes, enough for one in_pktinfo cmsg,
                // and 8-byte aligned.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&h);
                    (*c).cmsg_level = libc::IPPROTO_IP;
                    (*c).cmsg_type = libc::IP_PKTINFO;
                    (*c).cmsg_len =
                        libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as _;
                    let info = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: self.local[i].to_be(),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::in_pktinfo, info);
                }
            }
            self.hdr[k] = libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            };
        }
        n
    }
}

/// The destination address of a received datagram from its IP_PKTINFO cmsg, host order.
fn pktinfo_dst(h: &libc::msghdr) -> Option<u32> {
    if h.msg_controllen == 0 || h.msg_control.is_null() {
        return None;
    }
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of cmsgs.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in_pktinfo);
                return Some(u32::from_be(info.ipi_addr.s_addr));
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// poll(2) on one descriptor; returns whether it became ready.
pub fn poll_one(fd: RawFd, events: i16, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: p is a valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    r > 0 && p.revents != 0
}

/// A UDP socket bound to `bind` with large buffers; `pktinfo` enables IP_PKTINFO,
/// `nonblocking` sets O_NONBLOCK.
pub fn udp_socket(
    bind: SocketAddrV4,
    pktinfo: bool,
    nonblocking: bool,
    buf_bytes: usize,
) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    set_buffers(&s, buf_bytes);
    if pktinfo {
        let one: libc::c_int = 1;
        // SAFETY: valid option value pointer and length.
        let r = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    s.set_nonblocking(nonblocking)?;
    s.bind(&std::net::SocketAddr::V4(bind).into())?;
    Ok(s.into())
}

/// Sets SO_RCVBUF/SO_SNDBUF, forcing past the sysctl limits when privileged.
pub fn set_buffers(s: &socket2::Socket, bytes: usize) {
    if bytes == 0 {
        return;
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(s);
    let v = bytes as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // SAFETY: valid option value pointer and length.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                force,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            // SAFETY: as above.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    plain,
                    &v as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn pktinfo_lets_one_socket_send_from_and_receive_for_many_addresses() {
        let srv = udp_socket(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), false, false, 0).unwrap();
        let srv_addr = match srv.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let cli = udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), true, true, 0).unwrap();
        let mut out = Batch::new(8, 256);
        for i in 0..4u8 {
            out.slot_mut(i as usize)[..3].copy_from_slice(&[1, 2, i]);
            out.set(
                i as usize,
                0,
                3,
                srv_addr,
                Some(Ipv4Addr::new(127, 9, 0, 1 + i)),
            );
        }
        assert_eq!(out.send(cli.as_raw_fd(), 0, 4).unwrap(), 4);
        // Echo everything back with a blocking-then-batched receive on the server.
        let mut inb = Batch::new(8, 256);
        let mut got = 0;
        for _ in 0..100 {
            poll_one(srv.as_raw_fd(), libc::POLLIN, 100);
            got += inb.recv(srv.as_raw_fd(), got, 8, 4).unwrap();
            if got == 4 {
                break;
            }
        }
        assert_eq!(got, 4);
        let mut sources: Vec<_> = (0..4).map(|i| *inb.peer(i).ip()).collect();
        sources.sort();
        assert_eq!(sources[0], Ipv4Addr::new(127, 9, 0, 1));
        assert_eq!(sources[3], Ipv4Addr::new(127, 9, 0, 4));
        for i in 0..4 {
            assert_eq!(inb.off(i), 4);
            assert_eq!(inb.data(i)[..2], [1, 2]);
        }
        assert_eq!(inb.send(srv.as_raw_fd(), 0, 4).unwrap(), 4);
        let mut back = Batch::new(8, 256);
        let mut got = 0;
        for _ in 0..100 {
            poll_one(cli.as_raw_fd(), libc::POLLIN, 100);
            got += back.recv(cli.as_raw_fd(), got, 8, 0).unwrap();
            if got == 4 {
                break;
            }
        }
        assert_eq!(got, 4);
        for i in 0..4 {
            let local = back.local(i).unwrap();
            assert_eq!(local.octets()[3], 1 + back.data(i)[2]);
            assert_eq!(back.peer(i), srv_addr);
        }
    }
}
