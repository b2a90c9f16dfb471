//! The kernel floor for fan-out: one thread that receives each datagram on one UDP socket and
//! sends it with sendmmsg to every subscriber socket — the least any SFU must do per forwarded
//! packet (it adds SRTP, RTP rewriting, congestion control and feedback on top).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::turn::mmsg::{poll_one, udp_socket, Batch};
use crate::turn::procfs::gettid;

pub struct FanoutFloor {
    pub addr: SocketAddrV4,
    pub tid: i32,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FanoutFloor {
    pub fn start(subscribers: Vec<SocketAddrV4>) -> io::Result<FanoutFloor> {
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
        let tid = Arc::new(AtomicI32::new(0));
        let (s2, t2) = (stop.clone(), tid.clone());
        let thread = std::thread::Builder::new()
            .name("bench-fanout-floor".into())
            .spawn(move || {
                t2.store(gettid(), Ordering::SeqCst);
                let fd = sock.as_raw_fd();
                let mut rx = Batch::new(32, 2048);
                let mut tx = Batch::new(subscribers.len().clamp(1, 1024), 2048);
                while !s2.load(Ordering::Relaxed) {
                    if !poll_one(fd, libc::POLLIN, 50) {
                        continue;
                    }
                    let Ok(n) = rx.recv(fd, 0, 32, 0) else {
                        continue;
                    };
                    for i in 0..n {
                        let data = rx.data(i).to_vec();
                        // Fan out in chunks of the send batch.
                        for chunk in subscribers.chunks(tx.cap()) {
                            for (k, peer) in chunk.iter().enumerate() {
                                tx.slot_mut(k)[..data.len()].copy_from_slice(&data);
                                tx.set(k, 0, data.len(), *peer, None);
                            }
                            let _ = tx.send(fd, 0, chunk.len());
                        }
                    }
                }
            })?;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tid.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        Ok(FanoutFloor {
            addr,
            tid: tid.load(Ordering::SeqCst),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for FanoutFloor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
