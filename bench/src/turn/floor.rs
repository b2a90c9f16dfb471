//! The kernel-floor forwarder: the least work any UDP relay must do, measured the same way
//! as the real servers.
//!
//! Clients send it datagrams framed like ChannelData (a 4-byte header: channel 0x4000 and
//! the data length). For each client address it opens one relay socket on 127.0.0.1 (as a
//! TURN server opens one per allocation), forwards the data from that socket to the peer,
//! and sends whatever the peer sends back to the client with the 4-byte header in front.
//! An empty frame is a "hello": the floor opens the relay socket and answers with an empty
//! frame, which stands in for allocation. One thread, epoll, recvmmsg and sendmmsg.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::mmsg::{udp_socket, Batch};

/// Channel number the floor writes in the headers it sends.
pub const FLOOR_CHANNEL: u16 = 0x4000;
const SERVER_TOKEN: u64 = u64::MAX;
const BATCH: usize = 64;

/// A running floor forwarder; stopped on drop.
pub struct Floor {
    addr: SocketAddrV4,
    tid: i32,
    stop: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Floor {
    /// Starts the forwarder towards `peer` (the echo peer) on its own thread.
    pub fn start(peer: SocketAddrV4) -> io::Result<Self> {
        let sock = udp_socket(
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            false,
            true,
            8 << 20,
        )?;
        let addr = match sock.local_addr()? {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!("bound to IPv4"),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let tid = Arc::new(AtomicI32::new(0));
        let (s2, f2, t2) = (stop.clone(), forwarded.clone(), tid.clone());
        let thread = std::thread::Builder::new()
            .name("bench-floor".into())
            .spawn(move || {
                t2.store(super::procfs::gettid(), Ordering::SeqCst);
                if let Err(e) = floor_loop(sock, peer, &s2, &f2) {
                    eprintln!("floor forwarder stopped: {e}");
                }
            })?;
        // Bounded wait for the thread to publish its id.
        for _ in 0..1000 {
            if tid.load(Ordering::SeqCst) != 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(Floor {
            addr,
            tid: tid.load(Ordering::SeqCst),
            stop,
            forwarded,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Kernel thread id of the forwarder (for /proc/self/task/TID/stat).
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// Datagrams forwarded, both directions.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Epoll(RawFd);

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll(fd))
    }

    fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: ev is valid for the call.
        if unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

struct Relay {
    sock: std::net::UdpSocket,
    client: SocketAddrV4,
}

fn floor_loop(
    server: std::net::UdpSocket,
    peer: SocketAddrV4,
    stop: &AtomicBool,
    forwarded: &AtomicU64,
) -> io::Result<()> {
    let ep = Epoll::new()?;
    let sfd = server.as_raw_fd();
    ep.add(sfd, SERVER_TOKEN)?;
    let mut by_client: HashMap<SocketAddrV4, u32> = HashMap::new();
    let mut relays: Vec<Relay> = Vec::new();
    let mut inb = Batch::new(BATCH, 16 * 1024);
    let mut out = Batch::new(BATCH, 16 * 1024);
    let mut out_n = 0usize;
    let mut slot_relay = vec![0u32; BATCH];
    // SAFETY: zeroed epoll_event is valid.
    let mut events = vec![unsafe { std::mem::zeroed::<libc::epoll_event>() }; 256];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: events has room for its length.
        let n = unsafe { libc::epoll_wait(ep.0, events.as_mut_ptr(), events.len() as i32, 50) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            let token = ev.u64;
            if token == SERVER_TOKEN {
                // Client -> peer, a few batches per wakeup so relay replies get a turn.
                for _ in 0..8 {
                    let got = inb.recv(sfd, 0, BATCH, 0)?;
                    if got == 0 {
                        break;
                    }
                    let mut keep = 0usize;
                    for i in 0..got {
                        let d = inb.data(i);
                        if d.len() < 4 {
                            continue;
                        }
                        let len = u16::from_be_bytes([d[2], d[3]]) as usize;
                        if len > d.len() - 4 {
                            continue;
                        }
                        let client = inb.peer(i);
                        let idx = match by_client.get(&client) {
                            Some(&x) => x,
                            None => {
                                let sock = udp_socket(
                                    SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
                                    false,
                                    true,
                                    0,
                                )?;
                                let x = relays.len() as u32;
                                ep.add(sock.as_raw_fd(), x as u64)?;
                                relays.push(Relay { sock, client });
                                by_client.insert(client, x);
                                x
                            }
                        };
                        if len == 0 {
                            // Hello: answer with an empty frame.
                            if out_n == BATCH {
                                out.send(sfd, 0, out_n)?;
                                out_n = 0;
                            }
                            let s = out.slot_mut(out_n);
                            s[..4].copy_from_slice(&[0x40, 0x00, 0, 0]);
                            out.set(out_n, 0, 4, client, None);
                            out_n += 1;
                            continue;
                        }
                        // Strip the header in place and aim the slot at the peer. Keep the
                        // slot order (compacted) so runs per relay socket can be batched.
                        let off = inb.off(i) + 4;
                        if keep != i {
                            let (o, l) = (off, len);
                            let bytes = inb.data(i)[4..4 + len].to_vec();
                            inb.slot_mut(keep)[o..o + l].copy_from_slice(&bytes);
                        }
                        inb.set(keep, off, len, peer, None);
                        slot_relay[keep] = idx;
                        keep += 1;
                    }
                    // Send runs of consecutive slots that share a relay socket.
                    let mut a = 0;
                    while a < keep {
                        let mut b = a + 1;
                        while b < keep && slot_relay[b] == slot_relay[a] {
                            b += 1;
                        }
                        let fd = relays[slot_relay[a] as usize].sock.as_raw_fd();
                        let s = inb.send(fd, a, b).unwrap_or(0);
                        forwarded.fetch_add(s as u64, Ordering::Relaxed);
                        a = b;
                    }
                    if got < BATCH {
                        break;
                    }
                }
            } else {
                // Peer -> client through relay socket `token`.
                let r = &relays[token as usize];
                let rfd = r.sock.as_raw_fd();
                for _ in 0..8 {
                    let got = out.recv(rfd, out_n, BATCH - out_n, 4)?;
                    for i in out_n..out_n + got {
                        let len = out.data(i).len();
                        out.reframe(i, 0, len + 4);
                        out.data_mut(i)[..4].copy_from_slice(&[
                            (FLOOR_CHANNEL >> 8) as u8,
                            FLOOR_CHANNEL as u8,
                            (len >> 8) as u8,
                            len as u8,
                        ]);
                        out.set_peer(i, r.client);
                        out.set_local(i, None);
                    }
                    out_n += got;
                    if out_n == BATCH {
                        let s = out.send(sfd, 0, out_n)?;
                        forwarded.fetch_add(s as u64, Ordering::Relaxed);
                        out_n = 0;
                    } else {
                        break;
                    }
                }
            }
        }
        if out_n > 0 {
            let s = out.send(sfd, 0, out_n)?;
            forwarded.fetch_add(s as u64, Ordering::Relaxed);
            out_n = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::echo::EchoPeer;
    use super::*;
    use std::time::Duration;

    #[test]
    fn floor_relays_both_ways_per_client() {
        let echo = EchoPeer::start(1).unwrap();
        let floor = Floor::start(echo.addrs()[0]).unwrap();
        assert!(floor.tid() > 0);
        let clients: Vec<_> = (0..3)
            .map(|_| {
                let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                c
            })
            .collect();
        for (k, c) in clients.iter().enumerate() {
            // Hello, then the empty answer.
            c.send_to(&[0x40, 0, 0, 0], floor.addr()).unwrap();
            let mut buf = [0u8; 64];
            let (n, _) = c.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[0x40, 0, 0, 0]);
            for round in 0..5u8 {
                let msg = [0x40, 0x00, 0, 5, k as u8, round, 3, 4, 5, 0, 0, 0];
                c.send_to(&msg, floor.addr()).unwrap();
                let (n, from) = c.recv_from(&mut buf).unwrap();
                assert_eq!(from, std::net::SocketAddr::V4(floor.addr()));
                assert_eq!(&buf[..n], &msg[..9], "header + data, padding dropped");
            }
        }
        assert_eq!(echo.echoed(), 15);
        // The counter is bumped after the send that the client already saw: wait (bounded).
        for _ in 0..100 {
            if floor.forwarded() == 30 + 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(floor.forwarded(), 30 + 3);
        assert!(super::super::procfs::ProcTarget::OwnThread(floor.tid())
            .cpu_ns()
            .is_ok());
    }
}
