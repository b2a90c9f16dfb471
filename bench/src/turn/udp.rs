//! The UDP client: many TURN clients per socket and thread.
//!
//! Each client has its own loopback source address (127.1.x.y, client index + 1), so one
//! socket bound to 0.0.0.0 speaks for thousands of clients: sends pick the source with
//! IP_PKTINFO, and the destination address of each received datagram names the client.
//! That keeps the data path to one recvmmsg/sendmmsg per batch of 64 datagrams, whatever
//! the number of clients, so the bench stays cheaper than the server it loads.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meridian_relay::stun::{channel_data, Message};

use super::bucket::TokenBucket;
use super::mmsg::{udp_socket, Batch};
use super::payload::{self, Stamp, Tally};
use super::proto::{Creds, Kind, Outcome, Signal, CHANNEL};

/// Datagrams per recvmmsg/sendmmsg.
pub const BATCH: usize = 64;
const BASE_IP: u32 = 0x7F01_0000; // 127.1.0.0
const MAX_TRIES: u8 = 6;
const RTO: Duration = Duration::from_millis(500);

/// The loopback source address of client `idx`.
pub fn client_ip(idx: u32) -> Ipv4Addr {
    Ipv4Addr::from(BASE_IP + 1 + idx)
}

/// The client index a loopback address stands for.
pub fn client_index(ip: Ipv4Addr) -> Option<u32> {
    u32::from(ip).checked_sub(BASE_IP + 1)
}

/// Live counters for the progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub ready: AtomicU64,
    pub failed: AtomicU64,
}

/// What the clients talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A TURN server: Allocate, ChannelBind, ChannelData.
    Turn,
    /// The floor forwarder: hello, then 4-byte-header frames.
    Floor,
}

/// Settings shared by the shards of one run.
#[derive(Clone, Debug)]
pub struct ShardCfg {
    pub target: SocketAddrV4,
    pub mode: Mode,
    pub peers: Vec<SocketAddrV4>,
    pub size: usize,
    pub epoch: Instant,
}

#[derive(Debug)]
struct Client {
    sig: Signal,
    ready: bool,
    failed: bool,
    released: bool,
    seq: u32,
    last_maint: Instant,
}

/// Result of a signalling phase (setup or teardown) on one shard.
#[derive(Clone, Debug, Default)]
pub struct PhaseResult {
    pub ok: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
}

impl PhaseResult {
    pub fn merge(&mut self, o: &PhaseResult) {
        self.ok += o.ok;
        self.failed += o.failed;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }
}

/// One thread's share of the clients.
pub struct UdpShard {
    sock: std::net::UdpSocket,
    fd: RawFd,
    first: u32,
    clients: Vec<Client>,
    cfg: ShardCfg,
    out: Batch,
    out_n: usize,
    out_client: Vec<u32>,
    inb: Batch,
    pending: Vec<u32>,
    tally: Tally,
    errors: BTreeMap<String, u64>,
}

impl UdpShard {
    /// Clients `first..first + n`.
    pub fn new(cfg: ShardCfg, creds: &Creds, first: u32, n: u32) -> io::Result<Self> {
        let sock = udp_socket(
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            true,
            false,
            32 << 20,
        )?;
        let now = Instant::now();
        let clients = (first..first + n)
            .map(|g| Client {
                sig: Signal::new(match cfg.mode {
                    Mode::Turn => creds.for_client(g),
                    Mode::Floor => None,
                }),
                ready: false,
                failed: false,
                released: false,
                seq: 0,
                last_maint: now,
            })
            .collect();
        let slot = (cfg.size + 4 + 64).max(1024).next_multiple_of(64);
        Ok(UdpShard {
            fd: sock.as_raw_fd(),
            sock,
            first,
            clients,
            out: Batch::new(BATCH, slot),
            out_n: 0,
            out_client: vec![0; BATCH],
            inb: Batch::new(BATCH, slot.max(2048)),
            pending: Vec::new(),
            tally: Tally::default(),
            errors: BTreeMap::new(),
            cfg,
        })
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    pub fn ready(&self) -> usize {
        self.clients.iter().filter(|c| c.ready).count()
    }

    /// Relayed addresses of the ready clients (for diagnostics).
    pub fn relayed(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.clients.iter().filter_map(|c| c.sig.relayed)
    }

    fn peer_for(&self, li: u32) -> SocketAddr {
        let g = (self.first + li) as usize;
        SocketAddr::V4(self.cfg.peers[g % self.cfg.peers.len()])
    }

    fn flush(&mut self) {
        if self.out_n > 0 {
            let _ = self.out.send(self.fd, 0, self.out_n);
            self.out_n = 0;
        }
    }

    fn queue(&mut self, li: u32, bytes: &[u8]) {
        if self.out_n == self.out.cap() {
            self.flush();
        }
        let i = self.out_n;
        self.out.slot_mut(i)[..bytes.len()].copy_from_slice(bytes);
        self.out.set(
            i,
            0,
            bytes.len(),
            self.cfg.target,
            Some(client_ip(self.first + li)),
        );
        self.out_n += 1;
    }

    fn start(&mut self, li: u32, kind: Kind, now: Instant) {
        let peer = self.peer_for(li);
        let bytes = self.clients[li as usize].sig.request(kind, peer, now);
        self.queue(li, &bytes);
        self.pending.push(li);
    }

    fn error(&mut self, why: String) {
        *self.errors.entry(why).or_default() += 1;
    }

    fn outcome(&mut self, li: u32, o: Outcome, now: Instant, progress: &Progress) {
        let c = &mut self.clients[li as usize];
        match o {
            Outcome::Done(Kind::Alloc) => self.start(li, Kind::Bind, now),
            Outcome::Done(Kind::Bind) | Outcome::Done(Kind::Hello) => {
                if !c.ready {
                    c.ready = true;
                    progress.ready.fetch_add(1, Ordering::Relaxed);
                }
                c.last_maint = now;
            }
            Outcome::Done(Kind::Refresh) => self.start(li, Kind::Bind, now),
            Outcome::Done(Kind::Dealloc) => {
                c.released = true;
            }
            Outcome::Retry(k) => self.start(li, k, now),
            Outcome::Failed(k, why) => {
                if !c.ready && matches!(k, Kind::Alloc | Kind::Bind | Kind::Hello) {
                    c.failed = true;
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                }
                self.error(why);
            }
        }
    }

    /// Receives and handles up to `batches` batches; returns datagrams handled.
    fn receive(&mut self, batches: usize, progress: &Progress) -> usize {
        let mut total = 0;
        for _ in 0..batches {
            let n = self.inb.recv(self.fd, 0, BATCH, 0).unwrap_or_default();
            if n == 0 {
                break;
            }
            total += n;
            let now = Instant::now();
            let now_ns = now.duration_since(self.cfg.epoch).as_nanos() as u64;
            let mut echoes = 0u64;
            for i in 0..n {
                let li = match self.inb.local(i).and_then(client_index) {
                    Some(g) if g >= self.first && g < self.first + self.clients.len() as u32 => {
                        g - self.first
                    }
                    _ => {
                        self.tally.invalid += 1;
                        continue;
                    }
                };
                let d = self.inb.data(i);
                match d.first() {
                    Some(0x40..=0x4F) => {
                        let Ok((_, data)) = channel_data::parse(d) else {
                            self.tally.invalid += 1;
                            continue;
                        };
                        if data.is_empty() {
                            // The floor's answer to a hello.
                            let c = &mut self.clients[li as usize];
                            if matches!(c.sig.pending, Some(p) if p.kind == Kind::Hello) {
                                c.sig.pending = None;
                                self.outcome(li, Outcome::Done(Kind::Hello), now, progress);
                            }
                            continue;
                        }
                        match payload::decode(data) {
                            Some(s) if s.client == self.first + li => {
                                self.tally.echo(&s, now_ns);
                                echoes += 1;
                            }
                            _ => self.tally.invalid += 1,
                        }
                    }
                    Some(0..=3) => {
                        let o = match Message::parse(d) {
                            Ok(m) => self.clients[li as usize].sig.on_response(&m),
                            Err(_) => None,
                        };
                        if let Some(o) = o {
                            self.outcome(li, o, now, progress);
                        }
                    }
                    _ => self.tally.invalid += 1,
                }
            }
            progress.received.fetch_add(echoes, Ordering::Relaxed);
            if n < BATCH {
                break;
            }
        }
        total
    }

    /// Retransmits or fails timed-out transactions and forgets finished ones.
    fn check_timeouts(&mut self, now: Instant, progress: &Progress) {
        let mut k = 0;
        while k < self.pending.len() {
            let li = self.pending[k];
            let Some(p) = self.clients[li as usize].sig.pending else {
                self.pending.swap_remove(k);
                continue;
            };
            let rto = RTO * (1u32 << (p.tries.min(4) - 1));
            if now.duration_since(p.sent_at) >= rto {
                if p.tries >= MAX_TRIES {
                    self.clients[li as usize].sig.pending = None;
                    self.pending.swap_remove(k);
                    self.outcome(
                        li,
                        Outcome::Failed(p.kind, format!("{:?} timed out", p.kind)),
                        now,
                        progress,
                    );
                    continue;
                }
                let peer = self.peer_for(li);
                if let Some(b) = self.clients[li as usize].sig.retransmit(peer, now) {
                    self.queue(li, &b);
                }
            }
            k += 1;
        }
        // `outcome` may have started follow-up requests; dedup so a client counts once.
        self.pending.sort_unstable();
        self.pending.dedup();
    }

    fn wait_readable(&self, timeout: Duration) {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        let mut p = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: valid pollfd and timespec for the call.
        unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) };
    }

    /// Runs one request kind (and its follow-ups) for every client `select` picks, at most
    /// `window` clients in flight, until all are done or `deadline`.
    pub fn transact(
        &mut self,
        kind: Kind,
        select: fn(&ClientView) -> bool,
        window: usize,
        deadline: Instant,
        progress: &Progress,
    ) -> PhaseResult {
        let todo: Vec<u32> = (0..self.clients.len() as u32)
            .filter(|&li| {
                let c = &self.clients[li as usize];
                select(&ClientView {
                    ready: c.ready,
                    failed: c.failed,
                })
            })
            .collect();
        let errors_before = std::mem::take(&mut self.errors);
        let mut next = 0usize;
        let mut last_check = Instant::now();
        loop {
            let now = Instant::now();
            self.pending
                .retain(|&li| self.clients[li as usize].sig.pending.is_some());
            while self.pending.len() < window && next < todo.len() {
                self.start(todo[next], kind, now);
                next += 1;
            }
            self.flush();
            let got = self.receive(16, progress);
            if now.duration_since(last_check) >= Duration::from_millis(20) {
                self.check_timeouts(now, progress);
                last_check = now;
            }
            self.flush();
            self.pending
                .retain(|&li| self.clients[li as usize].sig.pending.is_some());
            if next == todo.len() && self.pending.is_empty() {
                break;
            }
            if now >= deadline {
                for li in std::mem::take(&mut self.pending) {
                    if let Some(p) = self.clients[li as usize].sig.pending.take() {
                        self.outcome(
                            li,
                            Outcome::Failed(p.kind, format!("{:?} unfinished at deadline", p.kind)),
                            now,
                            progress,
                        );
                    }
                }
                break;
            }
            if got == 0 {
                self.wait_readable(Duration::from_millis(1));
            }
        }
        let mut r = PhaseResult::default();
        for &li in &todo {
            let c = &self.clients[li as usize];
            let ok = match kind {
                Kind::Dealloc => c.released,
                _ => c.ready,
            };
            if ok {
                r.ok += 1;
            } else {
                r.failed += 1;
            }
        }
        r.errors = std::mem::replace(&mut self.errors, errors_before);
        r
    }

    /// Sets the clients up: Allocate + ChannelBind (TURN) or hello (floor).
    pub fn setup(&mut self, window: usize, deadline: Instant, progress: &Progress) -> PhaseResult {
        let kind = match self.cfg.mode {
            Mode::Turn => Kind::Alloc,
            Mode::Floor => Kind::Hello,
        };
        self.transact(kind, |c| !c.ready && !c.failed, window, deadline, progress)
    }

    /// Releases the allocations (Refresh LIFETIME=0). No-op for the floor.
    pub fn teardown(
        &mut self,
        window: usize,
        deadline: Instant,
        progress: &Progress,
    ) -> PhaseResult {
        if self.cfg.mode == Mode::Floor {
            return PhaseResult::default();
        }
        let r = self.transact(Kind::Dealloc, |c| c.ready, window, deadline, progress);
        for c in &mut self.clients {
            if c.released {
                c.ready = false;
            }
        }
        r
    }

    /// Sends ChannelData from every ready client, round robin, at `rate` packets/s in total
    /// for this shard (0 = flat out) for `duration`, then waits up to `drain` for the last
    /// echoes. Allocations and channels are refreshed every `maint_every` meanwhile.
    pub fn data(
        &mut self,
        rate: f64,
        duration: Duration,
        drain: Duration,
        maint_every: Duration,
        progress: &Progress,
    ) -> (Tally, PhaseResult) {
        self.tally = Tally::default();
        let errors_before = std::mem::take(&mut self.errors);
        let ready: Vec<u32> = (0..self.clients.len() as u32)
            .filter(|&li| self.clients[li as usize].ready)
            .collect();
        if ready.is_empty() {
            return (Tally::default(), PhaseResult::default());
        }
        let size = self.cfg.size;
        let start = Instant::now();
        for &li in &ready {
            self.clients[li as usize].last_maint = start;
        }
        let end = start + duration;
        let burst = (rate * 0.004).max(BATCH as f64);
        let mut bucket = TokenBucket::new(rate, burst, start);
        let mut cursor = 0usize;
        let mut maint_cursor = 0usize;
        let mut last_check = start;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let mut sent_now = 0;
            for _ in 0..8 {
                let n = bucket.take(BATCH, now);
                if n == 0 {
                    break;
                }
                self.flush();
                let ts = now.duration_since(self.cfg.epoch).as_nanos() as u64;
                for k in 0..n {
                    let li = ready[cursor];
                    cursor += 1;
                    if cursor == ready.len() {
                        cursor = 0;
                    }
                    let g = self.first + li;
                    let c = &mut self.clients[li as usize];
                    let seq = c.seq;
                    c.seq = c.seq.wrapping_add(1);
                    let s = self.out.slot_mut(k);
                    channel_data::write_header(&mut s[..4], CHANNEL, size);
                    payload::encode(
                        &mut s[4..4 + size],
                        Stamp {
                            client: g,
                            seq,
                            sent_ns: ts,
                        },
                    );
                    self.out
                        .set(k, 0, 4 + size, self.cfg.target, Some(client_ip(g)));
                    self.out_client[k] = li;
                }
                let sent = self.out.send(self.fd, 0, n).unwrap_or(0);
                self.tally.sent += sent as u64;
                sent_now += sent;
                progress.sent.fetch_add(sent as u64, Ordering::Relaxed);
                if n < BATCH {
                    break;
                }
                // Do not let sending starve receiving.
                self.receive(2, progress);
            }
            let got = self.receive(16, progress);
            if now.duration_since(last_check) >= Duration::from_millis(20) {
                last_check = now;
                // Refresh a bounded number of clients per check.
                for _ in 0..ready.len().min(256) {
                    let li = ready[maint_cursor];
                    maint_cursor = (maint_cursor + 1) % ready.len();
                    let c = &self.clients[li as usize];
                    if c.sig.pending.is_none() && now.duration_since(c.last_maint) >= maint_every {
                        self.clients[li as usize].last_maint = now;
                        self.start(li, Kind::Refresh, now);
                    }
                }
                self.check_timeouts(now, progress);
                self.flush();
            }
            if sent_now == 0 && got == 0 {
                let w = bucket
                    .wait(Instant::now())
                    .clamp(Duration::from_micros(20), Duration::from_millis(2));
                self.wait_readable(w.min(end.saturating_duration_since(Instant::now())));
            }
        }
        self.flush();
        let drain_end = Instant::now() + drain;
        while self.tally.received < self.tally.sent {
            let now = Instant::now();
            if now >= drain_end {
                break;
            }
            if self.receive(16, progress) == 0 {
                self.wait_readable(Duration::from_millis(1));
            }
        }
        let mut r = PhaseResult::default();
        r.errors = std::mem::replace(&mut self.errors, errors_before);
        r.failed = r.errors.values().sum();
        (std::mem::take(&mut self.tally), r)
    }

    /// Local address of the shared socket.
    pub fn local_port(&self) -> u16 {
        self.sock.local_addr().map(|a| a.port()).unwrap_or(0)
    }
}

/// What `transact`'s selector sees of a client.
pub struct ClientView {
    pub ready: bool,
    pub failed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_round_trip() {
        assert_eq!(client_ip(0), Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(client_ip(65_535), Ipv4Addr::new(127, 2, 0, 0));
        for g in [0u32, 1, 255, 256, 9_999, 1_000_000] {
            assert_eq!(client_index(client_ip(g)), Some(g));
        }
        assert_eq!(client_index(Ipv4Addr::new(127, 0, 0, 1)), None);
    }
}
