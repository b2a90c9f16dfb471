//! The TCP and TLS client (RFC 8656 TURN over TCP / TLS-over-TCP), one connection per
//! client, driven by a small tokio runtime: a task per client per phase, few threads.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_relay::stun::{channel_data, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch, Semaphore};

use super::bucket::TokenBucket;
use super::payload::{self, Stamp, Tally};
use super::proto::{Creds, Kind, Outcome, Signal, CHANNEL};
use super::udp::{client_ip, PhaseResult, Progress};

/// A byte stream to the server: plain TCP or TLS.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}
type Io = Pin<Box<dyn Conn>>;

/// How to reach the server over a stream.
#[derive(Clone)]
pub struct StreamCfg {
    pub target: SocketAddr,
    pub tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    pub peers: Vec<std::net::SocketAddrV4>,
    pub size: usize,
    pub epoch: Instant,
    pub creds: Creds,
}

/// Splits a stream into TURN frames (STUN messages and padded ChannelData).
struct Framer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Framer {
    fn new() -> Self {
        Framer {
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        }
    }

    fn frame_len(&self) -> io::Result<Option<usize>> {
        let b = &self.buf[self.start..self.end];
        if b.len() < 4 {
            return Ok(None);
        }
        match b[0] {
            0x40..=0x4F => Ok(channel_data::framed_len(b)),
            0..=3 => Ok(Some(20 + u16::from_be_bytes([b[2], b[3]]) as usize)),
            x => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("stream out of sync (first byte 0x{x:02x})"),
            )),
        }
    }

    /// Reads until a whole frame is buffered and returns its length; the frame is
    /// `self.frame(n)` until `consume(n)`. Cancel-safe: bytes read are kept.
    async fn next<R: AsyncRead + Unpin + ?Sized>(&mut self, rd: &mut R) -> io::Result<usize> {
        loop {
            if let Some(n) = self.frame_len()? {
                if self.end - self.start >= n {
                    return Ok(n);
                }
                if n > self.buf.len() {
                    self.buf.resize(n.next_power_of_two(), 0);
                }
            }
            if self.start > 0 && (self.end == self.buf.len() || self.start > self.buf.len() / 2) {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let got = rd.read(&mut self.buf[self.end..]).await?;
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.end += got;
        }
    }

    fn frame(&self, n: usize) -> &[u8] {
        &self.buf[self.start..self.start + n]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

/// One connected, allocated client.
pub struct StreamClient {
    idx: u32,
    rd: ReadHalf<Io>,
    wr: WriteHalf<Io>,
    framer: Framer,
    sig: Signal,
}

async fn connect(cfg: &StreamCfg, idx: u32) -> io::Result<Io> {
    let sock = match cfg.target {
        SocketAddr::V4(_) => {
            let s = tokio::net::TcpSocket::new_v4()?;
            if cfg.target.ip().is_loopback() {
                s.bind(SocketAddr::new(client_ip(idx).into(), 0))?;
            }
            s
        }
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    let tcp = tokio::time::timeout(Duration::from_secs(10), sock.connect(cfg.target))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
    tcp.set_nodelay(true)?;
    match &cfg.tls {
        None => Ok(Box::pin(tcp)),
        Some((conn, name)) => {
            let tls =
                tokio::time::timeout(Duration::from_secs(10), conn.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??;
            Ok(Box::pin(tls))
        }
    }
}

/// Sends `kind` and follows the 401/438 retries until it succeeds or fails.
async fn transaction(
    c: &mut StreamClient,
    kind: Kind,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    let mut kind = kind;
    for _ in 0..8 {
        let req = c.sig.request(kind, peer, Instant::now());
        c.wr.write_all(&req)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let outcome = loop {
            let n = tokio::time::timeout_at(deadline, c.framer.next(&mut c.rd))
                .await
                .map_err(|_| format!("{kind:?} timed out"))?
                .map_err(|e| format!("read: {e}"))?;
            let f = c.framer.frame(n);
            let o = if f[0] < 4 {
                Message::parse(f).ok().and_then(|m| c.sig.on_response(&m))
            } else {
                None // a late ChannelData echo
            };
            c.framer.consume(n);
            if let Some(o) = o {
                break o;
            }
        };
        match outcome {
            Outcome::Done(Kind::Alloc) => kind = Kind::Bind,
            Outcome::Done(Kind::Refresh) => kind = Kind::Bind,
            Outcome::Done(_) => return Ok(()),
            Outcome::Retry(k) => kind = k,
            Outcome::Failed(_, why) => return Err(why),
        }
    }
    Err(format!("{kind:?}: too many retries"))
}

fn peer_for(cfg: &StreamCfg, idx: u32) -> SocketAddr {
    SocketAddr::V4(cfg.peers[idx as usize % cfg.peers.len()])
}

/// Connects and allocates clients `0..n`, at most `window` at a time.
pub async fn setup(
    cfg: Arc<StreamCfg>,
    n: u32,
    window: usize,
    progress: Arc<Progress>,
) -> (Vec<StreamClient>, PhaseResult) {
    let sem = Arc::new(Semaphore::new(window.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for idx in 0..n {
        let (cfg, sem, progress) = (cfg.clone(), sem.clone(), progress.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            let r = async {
                let io = connect(&cfg, idx)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let (rd, wr) = tokio::io::split(io);
                let mut c = StreamClient {
                    idx,
                    rd,
                    wr,
                    framer: Framer::new(),
                    sig: Signal::new(cfg.creds.for_client(idx)),
                };
                transaction(
                    &mut c,
                    Kind::Alloc,
                    peer_for(&cfg, idx),
                    Duration::from_secs(10),
                )
                .await?;
                Ok::<_, String>(c)
            }
            .await;
            match &r {
                Ok(_) => progress.ready.fetch_add(1, Ordering::Relaxed),
                Err(_) => progress.failed.fetch_add(1, Ordering::Relaxed),
            };
            r
        });
    }
    let mut clients = Vec::new();
    let mut res = PhaseResult::default();
    while let Some(j) = tasks.join_next().await {
        match j {
            Ok(Ok(c)) => {
                res.ok += 1;
                clients.push(c);
            }
            Ok(Err(why)) => {
                res.failed += 1;
                *res.errors.entry(why).or_default() += 1;
            }
            Err(e) => {
                res.failed += 1;
                *res.errors.entry(format!("task: {e}")).or_default() += 1;
            }
        }
    }
    clients.sort_by_key(|c| c.idx);
    (clients, res)
}

/// Parameters of one data phase.
#[derive(Clone, Copy, Debug)]
pub struct DataPlan {
    /// Packets per second over all clients; 0 = flat out.
    pub rate: f64,
    pub duration: Duration,
    pub drain: Duration,
    pub maint_every: Duration,
}

const SHARDS: usize = 16;

/// Runs the data phase on every client; returns them for teardown.
pub async fn data(
    cfg: Arc<StreamCfg>,
    clients: Vec<StreamClient>,
    plan: DataPlan,
    progress: Arc<Progress>,
) -> (Vec<StreamClient>, Tally, PhaseResult) {
    let n = clients.len().max(1);
    let per_client = plan.rate / n as f64;
    let tallies: Arc<Vec<Mutex<Tally>>> =
        Arc::new((0..SHARDS).map(|_| Mutex::new(Tally::default())).collect());
    let errors: Arc<Mutex<PhaseResult>> = Arc::default();
    let start = tokio::time::Instant::now();
    let end = start + plan.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for c in clients {
        let (cfg, tallies, errors, progress) = (
            cfg.clone(),
            tallies.clone(),
            errors.clone(),
            progress.clone(),
        );
        tasks.spawn(async move {
            let StreamClient {
                idx,
                rd,
                mut wr,
                mut framer,
                sig,
            } = c;
            let sig = Arc::new(Mutex::new(sig));
            let sent = Arc::new(AtomicU64::new(0));
            let (done_tx, mut done_rx) = watch::channel(false);
            let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Vec<u8>>();
            let peer = peer_for(&cfg, idx);
            // Reader: echoes and signalling responses.
            let reader = {
                let (sig, sent, tallies, errors, progress) = (
                    sig.clone(),
                    sent.clone(),
                    tallies.clone(),
                    errors.clone(),
                    progress.clone(),
                );
                let epoch = cfg.epoch;
                tokio::spawn(async move {
                    let mut rd = rd;
                    let mut received = 0u64;
                    let mut invalid = 0u64;
                    let drain_deadline = end + plan.drain;
                    loop {
                        if *done_rx.borrow() && received >= sent.load(Ordering::Relaxed) {
                            break;
                        }
                        tokio::select! {
                            r = tokio::time::timeout_at(drain_deadline, framer.next(&mut rd)) => {
                                let Ok(Ok(len)) = r else { break };
                                let f = framer.frame(len);
                                if f[0] >= 0x40 {
                                    match channel_data::parse(f).ok().and_then(|(_, d)| payload::decode(d)) {
                                        Some(s) if s.client == idx => {
                                            let now_ns = epoch.elapsed().as_nanos() as u64;
                                            tallies[idx as usize % SHARDS].lock().unwrap().echo(&s, now_ns);
                                            received += 1;
                                            progress.received.fetch_add(1, Ordering::Relaxed);
                                        }
                                        _ => invalid += 1,
                                    }
                                } else if let Ok(m) = Message::parse(f) {
                                    let o = sig.lock().unwrap().on_response(&m);
                                    let follow = match o {
                                        Some(Outcome::Done(Kind::Refresh)) => Some(Kind::Bind),
                                        Some(Outcome::Retry(k)) => Some(k),
                                        Some(Outcome::Failed(_, why)) => {
                                            *errors.lock().unwrap().errors.entry(why).or_default() += 1;
                                            None
                                        }
                                        _ => None,
                                    };
                                    if let Some(k) = follow {
                                        let b = sig.lock().unwrap().request(k, peer, Instant::now());
                                        let _ = ctl_tx.send(b);
                                    }
                                }
                                framer.consume(len);
                            }
                            _ = done_rx.changed() => {}
                        }
                    }
                    tallies[idx as usize % SHARDS].lock().unwrap().invalid += invalid;
                    (rd, framer)
                })
            };
            // Writer: paced ChannelData plus signalling the reader asks for.
            let padded = (plan_size(&cfg) + 3) & !3;
            let mut frame = vec![0u8; 4 + padded];
            channel_data::write_header(&mut frame[..4], CHANNEL, cfg.size);
            let mut bucket = TokenBucket::new(per_client, per_client * 0.01 + 1.0, Instant::now());
            let tick = if per_client > 0.0 {
                Duration::from_secs_f64((1.0 / per_client).max(0.001))
            } else {
                Duration::from_millis(1)
            };
            let mut interval = tokio::time::interval_at(
                start + Duration::from_secs_f64(rand::random::<f64>() * tick.as_secs_f64()),
                tick,
            );
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut next_maint = start + plan.maint_every;
            let mut seq = 0u32;
            let mut out = Vec::with_capacity(16 * frame.len());
            let mut write_err = None;
            while tokio::time::Instant::now() < end {
                let n = if per_client > 0.0 {
                    tokio::select! {
                        _ = interval.tick() => bucket.take(64, Instant::now()),
                        Some(b) = ctl_rx.recv() => {
                            if let Err(e) = wr.write_all(&b).await { write_err = Some(e); break; }
                            0
                        }
                        _ = tokio::time::sleep_until(end) => 0,
                    }
                } else {
                    while let Ok(b) = ctl_rx.try_recv() {
                        if let Err(e) = wr.write_all(&b).await {
                            write_err = Some(e);
                        }
                    }
                    16
                };
                if n > 0 {
                    out.clear();
                    let ts = cfg.epoch.elapsed().as_nanos() as u64;
                    for _ in 0..n {
                        payload::encode(&mut frame[4..], Stamp { client: idx, seq, sent_ns: ts });
                        seq = seq.wrapping_add(1);
                        out.extend_from_slice(&frame);
                    }
                    if let Err(e) = wr.write_all(&out).await {
                        write_err = Some(e);
                        break;
                    }
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                    progress.sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                if tokio::time::Instant::now() >= next_maint {
                    next_maint += plan.maint_every;
                    let b = sig.lock().unwrap().request(Kind::Refresh, peer, Instant::now());
                    if let Err(e) = wr.write_all(&b).await {
                        write_err = Some(e);
                        break;
                    }
                }
            }
            let _ = done_tx.send(true);
            if let Some(e) = write_err {
                *errors.lock().unwrap().errors.entry(format!("write: {e}")).or_default() += 1;
            }
            let sent_total = sent.load(Ordering::Relaxed);
            tallies[idx as usize % SHARDS].lock().unwrap().sent += sent_total;
            let (rd, framer) = reader.await.expect("reader task");
            let sig = sig.lock().unwrap().clone();
            StreamClient { idx, rd, wr, framer, sig }
        });
    }
    let mut back = Vec::new();
    while let Some(j) = tasks.join_next().await {
        if let Ok(c) = j {
            back.push(c);
        }
    }
    back.sort_by_key(|c| c.idx);
    let mut t = Tally::default();
    for s in tallies.iter() {
        t.merge(&s.lock().unwrap());
    }
    let mut r = std::mem::take(&mut *errors.lock().unwrap());
    r.failed = r.errors.values().sum();
    (back, t, r)
}

fn plan_size(cfg: &StreamCfg) -> usize {
    cfg.size
}

/// Releases every allocation (Refresh LIFETIME=0) and closes the connections.
pub async fn teardown(
    cfg: Arc<StreamCfg>,
    clients: Vec<StreamClient>,
    window: usize,
) -> PhaseResult {
    let sem = Arc::new(Semaphore::new(window.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        let (cfg, sem) = (cfg.clone(), sem.clone());
        tasks.spawn(async move {
            let _p = sem.acquire_owned().await.expect("semaphore open");
            let peer = peer_for(&cfg, c.idx);
            let r = transaction(&mut c, Kind::Dealloc, peer, Duration::from_secs(5)).await;
            let _ = c.wr.shutdown().await;
            r
        });
    }
    let mut res = PhaseResult::default();
    while let Some(j) = tasks.join_next().await {
        match j {
            Ok(Ok(())) => res.ok += 1,
            Ok(Err(why)) => {
                res.failed += 1;
                *res.errors.entry(why).or_default() += 1;
            }
            Err(_) => res.failed += 1,
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn framer_splits_stun_and_padded_channel_data() {
        let mut bytes = Vec::new();
        // ChannelData with 5 data bytes, padded to 8 over a stream.
        bytes.extend_from_slice(&[0x40, 0x00, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0]);
        // A bare STUN header (Binding success, no attributes).
        bytes.extend_from_slice(&[0x01, 0x01, 0, 0, 0x21, 0x12, 0xA4, 0x42]);
        bytes.extend_from_slice(&[7; 12]);
        let mut rd: &[u8] = &bytes;
        let mut f = Framer::new();
        let n = f.next(&mut rd).await.unwrap();
        assert_eq!(n, 12);
        assert_eq!(channel_data::parse(f.frame(n)).unwrap().1, &[1, 2, 3, 4, 5]);
        f.consume(n);
        let n = f.next(&mut rd).await.unwrap();
        assert_eq!(n, 20);
        assert!(Message::parse(f.frame(n)).is_ok());
        f.consume(n);
        assert!(f.next(&mut rd).await.is_err(), "EOF");
        let mut junk: &[u8] = &[0x99, 0, 0, 0];
        assert!(Framer::new().next(&mut junk).await.is_err());
    }
}
