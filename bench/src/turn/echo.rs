//! The echo peer: UDP sockets on 127.0.0.1 that send every datagram back to its source,
//! with recvmmsg/sendmmsg, one thread per socket.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::mmsg::{poll_one, udp_socket, Batch};

/// Running echo sockets; stopped (and joined) on drop.
pub struct EchoPeer {
    addrs: Vec<SocketAddrV4>,
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoPeer {
    /// Starts `n` echo sockets (at least one).
    pub fn start(n: usize) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let mut addrs = Vec::new();
        let mut threads = Vec::new();
        for k in 0..n.max(1) {
            let sock = udp_socket(
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
                false,
                false,
                8 << 20,
            )?;
            match sock.local_addr()? {
                std::net::SocketAddr::V4(a) => addrs.push(a),
                _ => unreachable!("bound to IPv4"),
            }
            let stop = stop.clone();
            let echoed = echoed.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("bench-echo-{k}"))
                    .spawn(move || echo_loop(sock, &stop, &echoed))?,
            );
        }
        Ok(EchoPeer {
            addrs,
            stop,
            echoed,
            threads,
        })
    }

    pub fn addrs(&self) -> &[SocketAddrV4] {
        &self.addrs
    }

    /// Datagrams echoed so far.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }
}

fn echo_loop(sock: std::net::UdpSocket, stop: &AtomicBool, echoed: &AtomicU64) {
    let fd = sock.as_raw_fd();
    let mut b = Batch::new(64, 16 * 1024);
    while !stop.load(Ordering::Relaxed) {
        match b.recv(fd, 0, 64, 0) {
            Ok(0) => {
                poll_one(fd, libc::POLLIN, 50);
            }
            Ok(n) => {
                // Slots now hold each datagram with its source as peer: send them back.
                echoed.fetch_add(n as u64, Ordering::Relaxed);
                let _ = b.send(fd, 0, n);
            }
            Err(_) => {
                poll_one(fd, libc::POLLIN, 50);
            }
        }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_back_to_source() {
        let echo = EchoPeer::start(2).unwrap();
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        for (i, a) in echo.addrs().iter().enumerate() {
            c.send_to(&[i as u8; 40], a).unwrap();
            let mut buf = [0u8; 100];
            let (n, from) = c.recv_from(&mut buf).unwrap();
            assert_eq!(n, 40);
            assert_eq!(from, std::net::SocketAddr::V4(*a));
            assert_eq!(buf[0], i as u8);
        }
        assert_eq!(echo.echoed(), 2);
    }
}
