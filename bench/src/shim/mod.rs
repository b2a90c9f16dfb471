//! `meridian bench shim`: emulated network delay, jitter and loss in user space (this kernel
//! has no `netem`), in front of a node as a 1:1 NAT would be. Each `--udp LISTEN=TARGET`
//! forwards datagrams from every client through its own upstream socket (so the node sees one
//! address per client and its replies find their way back; in front of a loopback node each
//! client also gets its own source IP, from 127.100.0.0/16, as clients on the internet have); each `--tcp LISTEN=TARGET` relays
//! connections. Every packet or chunk waits in a [`delay::DelayLine`] per direction. The node
//! advertises the shim's addresses (`cluster.public_signaling_url`, `cluster.public_stun`,
//! `sfu.public_ip`), so clients reach it only through the emulated path. `--from IP=MS` gives
//! clients from one source address their own delay, so one shim per region can place groups
//! of clients (each bound to its own loopback address) at different distances from it.

pub mod delay;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use delay::{DelayLine, Path};

/// Most client mappings per UDP listener; the oldest idle one makes room.
const MAX_UDP_CLIENTS: usize = 4096;
/// A UDP client mapping silent for this long is dropped.
const UDP_IDLE: Duration = Duration::from_secs(120);
/// Most queued packets or chunks per direction; beyond it the newest is dropped (a full
/// router queue).
const QUEUE: usize = 8192;
/// How often a held TCP direction looks whether its cut healed.
const CUT_POLL: Duration = Duration::from_millis(10);

#[derive(clap::Args, Debug, Clone)]
pub struct ShimArgs {
    /// UDP forward LISTEN=TARGET (repeatable), e.g. 127.0.3.2:3478=127.0.3.1:3478.
    #[arg(long = "udp", value_parser = parse_map)]
    pub udp: Vec<(SocketAddr, SocketAddr)>,
    /// TCP forward LISTEN=TARGET (repeatable).
    #[arg(long = "tcp", value_parser = parse_map)]
    pub tcp: Vec<(SocketAddr, SocketAddr)>,
    /// One-way delay in each direction, milliseconds (the RTT grows by twice this).
    #[arg(long, default_value_t = 0.0)]
    pub delay_ms: f64,
    /// One-way delay client → node, overriding --delay-ms.
    #[arg(long)]
    pub up_delay_ms: Option<f64>,
    /// One-way delay node → client, overriding --delay-ms.
    #[arg(long)]
    pub down_delay_ms: Option<f64>,
    /// Extra delay per packet, uniform in [0, J] ms (never reorders).
    #[arg(long, default_value_t = 0.0)]
    pub jitter_ms: f64,
    /// Datagram loss probability per direction, 0..=1 (UDP only).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// One-way delay (each direction) for clients whose source address is IP, overriding the
    /// delays above for them (repeatable): IP=MS, e.g. 127.0.11.1=10.
    #[arg(long = "from", value_parser = parse_from)]
    pub from: Vec<(IpAddr, f64)>,
    /// Write {"pid":N,"udp":[..],"tcp":[..]} here once every listener is bound.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

fn parse_map(s: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (l, t) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected LISTEN=TARGET (ip:port=ip:port)"))?;
    let l = l.parse().map_err(|e| format!("{l:?}: {e}"))?;
    let t = t.parse().map_err(|e| format!("{t:?}: {e}"))?;
    Ok((l, t))
}

fn parse_from(s: &str) -> Result<(IpAddr, f64), String> {
    let (ip, ms) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected IP=MS (e.g. 127.0.11.1=10)"))?;
    let ip = ip.parse().map_err(|e| format!("{ip:?}: {e}"))?;
    let ms = ms.parse().map_err(|e| format!("{ms:?}: {e}"))?;
    Ok((ip, ms))
}

/// The emulated paths of a shim: the default (up, down) pair and per-source overrides, and
/// the switch that partitions it.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    pub up: Path,
    pub down: Path,
    pub from: Vec<(IpAddr, Path, Path)>,
    pub cut: Cut,
}

/// A partition switch, shared by the shims it is given to. While it cuts a client (every
/// client, or those from some source addresses), what goes through a shim from or back to it
/// is dropped (UDP) or held (TCP: the path stops forwarding, the connection stalls and its
/// ends time out, as behind a broken link); healed, TCP resumes where it stopped.
#[derive(Debug, Clone, Default)]
pub struct Cut(Arc<CutState>);

#[derive(Debug, Default)]
struct CutState {
    /// Fast path: false while nothing is cut.
    on: AtomicBool,
    all: AtomicBool,
    sources: Mutex<Vec<IpAddr>>,
}

impl Cut {
    /// Cuts every client.
    pub fn cut_all(&self) {
        self.0.all.store(true, Ordering::Relaxed);
        self.0.on.store(true, Ordering::Release);
    }

    /// Cuts the clients from `src` (besides any already cut).
    pub fn cut_from(&self, src: IpAddr) {
        self.0
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(src);
        self.0.on.store(true, Ordering::Release);
    }

    /// Nothing is cut any more.
    pub fn heal(&self) {
        self.0.on.store(false, Ordering::Release);
        self.0.all.store(false, Ordering::Relaxed);
        self.0
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Whether the client at `src` is cut off.
    pub fn is_cut(&self, src: IpAddr) -> bool {
        if !self.0.on.load(Ordering::Acquire) {
            return false;
        }
        self.0.all.load(Ordering::Relaxed)
            || self
                .0
                .sources
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&src)
    }
}

impl Paths {
    /// The same path both ways for everyone.
    pub fn symmetric(p: Path) -> Paths {
        Paths {
            up: p,
            down: p,
            from: vec![],
            cut: Cut::default(),
        }
    }

    /// The (up, down) paths of a client at `src`.
    pub fn for_source(&self, src: IpAddr) -> (Path, Path) {
        self.from
            .iter()
            .find(|(ip, _, _)| *ip == src)
            .map_or((self.up, self.down), |(_, u, d)| (*u, *d))
    }
}

fn ms(v: f64, what: &str) -> anyhow::Result<Duration> {
    if !v.is_finite() || !(0.0..=60_000.0).contains(&v) {
        bail!("{what} must be 0..=60000 ms, got {v}");
    }
    Ok(Duration::from_secs_f64(v / 1000.0))
}

impl ShimArgs {
    /// The paths: the default pair and one pair per `--from`.
    pub fn paths(&self) -> anyhow::Result<Paths> {
        if !(0.0..=1.0).contains(&self.loss) {
            bail!("--loss must be 0..=1, got {}", self.loss);
        }
        let jitter = ms(self.jitter_ms, "--jitter-ms")?;
        let up = ms(self.up_delay_ms.unwrap_or(self.delay_ms), "the up delay")?;
        let down = ms(
            self.down_delay_ms.unwrap_or(self.delay_ms),
            "the down delay",
        )?;
        let p = |delay| Path {
            delay,
            jitter,
            loss: self.loss,
        };
        let mut from = Vec::new();
        for (ip, v) in &self.from {
            let d = ms(*v, &format!("--from {ip}"))?;
            from.push((*ip, p(d), p(d)));
        }
        Ok(Paths {
            up: p(up),
            down: p(down),
            from,
            cut: Cut::default(),
        })
    }
}

pub fn run(args: ShimArgs) -> anyhow::Result<()> {
    if args.udp.is_empty() && args.tcp.is_empty() {
        bail!("nothing to forward: give --udp LISTEN=TARGET and/or --tcp LISTEN=TARGET");
    }
    let paths = args.paths()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let running = start(&args.udp, &args.tcp, paths.clone()).await?;
        if let Some(path) = &args.ready_file {
            let list = |v: &[SocketAddr]| {
                v.iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let text = format!(
                "{{\"pid\":{},\"udp\":[{}],\"tcp\":[{}]}}\n",
                std::process::id(),
                list(&running.udp),
                list(&running.tcp)
            );
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
            std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
        }
        eprintln!(
            "meridian shim: {} UDP and {} TCP forward(s), delay up {:?} down {:?}, jitter {:?}, loss {}, {} per-source delay(s)",
            running.udp.len(),
            running.tcp.len(),
            paths.up.delay,
            paths.down.delay,
            paths.up.jitter,
            paths.up.loss,
            paths.from.len()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}

/// The bound listeners of a running shim.
pub struct Running {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
}

/// Binds every listener and starts forwarding on the current runtime.
pub async fn start(
    udp: &[(SocketAddr, SocketAddr)],
    tcp: &[(SocketAddr, SocketAddr)],
    paths: Paths,
) -> anyhow::Result<Running> {
    let paths = Arc::new(paths);
    let mut out = Running {
        udp: vec![],
        tcp: vec![],
    };
    for (listen, target) in udp {
        let sock = UdpSocket::bind(listen)
            .await
            .with_context(|| format!("cannot bind UDP {listen}"))?;
        out.udp.push(sock.local_addr()?);
        tokio::spawn(udp_forward(Arc::new(sock), *target, Arc::clone(&paths)));
    }
    for (listen, target) in tcp {
        let l = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot bind TCP {listen}"))?;
        out.tcp.push(l.local_addr()?);
        tokio::spawn(tcp_forward(l, *target, Arc::clone(&paths)));
    }
    Ok(out)
}

/// A queue that sends each item at its departure time, in order.
fn delayed<T: Send + 'static>(
    path: Path,
    lossy: bool,
    mut send: impl FnMut(T) -> futures_like::BoxFut + Send + 'static,
) -> impl FnMut(T) + Send {
    let (tx, mut rx) = mpsc::channel::<(tokio::time::Instant, T)>(QUEUE);
    tokio::spawn(async move {
        while let Some((at, item)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if !send(item).await {
                return;
            }
        }
    });
    let mut line = DelayLine::new(path);
    move |item| {
        let now = Instant::now();
        let Some(at) = line.depart(now, rand::random(), rand::random(), lossy) else {
            return;
        };
        // Full: dropped, as a router with a full queue drops.
        let _ = tx.try_send((tokio::time::Instant::from_std(at), item));
    }
}

mod futures_like {
    /// A boxed send future resolving to whether the path is still open.
    pub type BoxFut = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;
}

struct UdpClient {
    up: Box<dyn FnMut(Vec<u8>) + Send>,
    seen: Instant,
}

/// The first of the loopback addresses a shim gives its UDP clients (127.100.0.0/16).
const SOURCE_POOL: [u8; 2] = [127, 100];

/// The address the `n`-th UDP client's upstream socket binds. In front of a loopback node
/// every client gets its own source address from 127.100.0.0/16, as clients on the internet
/// have (or a 1:1 NAT gives): the node then sees one source IP per client, not every client
/// behind the shim's one address, so per-source limits (the TURN port's limit on
/// unauthenticated requests, which covers the routing probes) apply per client as in a real
/// deployment. In front of any other node: the wildcard address.
fn upstream_source(target: SocketAddr, n: u32) -> SocketAddr {
    match target {
        SocketAddr::V4(t) if t.ip().is_loopback() => {
            let i = n % (254 * 254);
            let ip = std::net::Ipv4Addr::new(
                SOURCE_POOL[0],
                SOURCE_POOL[1],
                (i / 254 + 1) as u8,
                (i % 254 + 1) as u8,
            );
            (ip, 0).into()
        }
        _ => unspecified(target),
    }
}

fn unspecified(target: SocketAddr) -> SocketAddr {
    match target {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

async fn udp_forward(listen: Arc<UdpSocket>, target: SocketAddr, paths: Arc<Paths>) {
    let clients: Arc<Mutex<HashMap<SocketAddr, UdpClient>>> = Arc::default();
    let next_source = AtomicU32::new(0);
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = listen.recv_from(&mut buf).await else {
            continue;
        };
        let data = buf[..n].to_vec();
        let mut map = clients.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&from) {
            let now = Instant::now();
            map.retain(|_, c| now.duration_since(c.seen) < UDP_IDLE);
            if map.len() >= MAX_UDP_CLIENTS {
                if let Some(oldest) = map.iter().min_by_key(|(_, c)| c.seen).map(|(a, _)| *a) {
                    map.remove(&oldest);
                }
            }
            let bind = upstream_source(target, next_source.fetch_add(1, Ordering::Relaxed));
            let Ok(std_sock) = std::net::UdpSocket::bind(bind)
                .or_else(|_| std::net::UdpSocket::bind(unspecified(target)))
            else {
                continue;
            };
            if std_sock.connect(target).is_err() || std_sock.set_nonblocking(true).is_err() {
                continue;
            }
            let Ok(upstream) = UdpSocket::from_std(std_sock) else {
                continue;
            };
            let upstream = Arc::new(upstream);
            let (up, down) = paths.for_source(from.ip());
            let to_node = Arc::clone(&upstream);
            let up_send = delayed(up, true, move |d: Vec<u8>| {
                let s = Arc::clone(&to_node);
                Box::pin(async move {
                    let _ = s.send(&d).await;
                    true
                })
            });
            // Replies from the node go back to this client from the listening socket.
            let back = Arc::clone(&listen);
            let mut down_send = delayed(down, true, move |d: Vec<u8>| {
                let s = Arc::clone(&back);
                Box::pin(async move {
                    let _ = s.send_to(&d, from).await;
                    true
                })
            });
            let reg = Arc::clone(&clients);
            let cut = paths.cut.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    match tokio::time::timeout(UDP_IDLE, upstream.recv(&mut buf)).await {
                        Ok(Ok(_)) if cut.is_cut(from.ip()) => {}
                        Ok(Ok(n)) => down_send(buf[..n].to_vec()),
                        Ok(Err(_)) => continue, // ICMP unreachable from a closed port
                        Err(_) => {
                            let mut map = reg.lock().unwrap_or_else(|e| e.into_inner());
                            if map.get(&from).is_none_or(|c| c.seen.elapsed() >= UDP_IDLE) {
                                map.remove(&from);
                                return;
                            }
                        }
                    }
                }
            });
            map.insert(
                from,
                UdpClient {
                    up: Box::new(up_send),
                    seen: Instant::now(),
                },
            );
        }
        if let Some(c) = map.get_mut(&from) {
            c.seen = Instant::now();
            if !paths.cut.is_cut(from.ip()) {
                (c.up)(data);
            }
        }
    }
}

async fn tcp_forward(listen: TcpListener, target: SocketAddr, paths: Arc<Paths>) {
    loop {
        let Ok((client, peer)) = listen.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let (up, down) = paths.for_source(peer.ip());
        let cut = (paths.cut.clone(), peer.ip());
        tokio::spawn(async move {
            let Ok(node) = TcpStream::connect(target).await else {
                return; // the client sees the connection close
            };
            let _ = client.set_nodelay(true);
            let _ = node.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (nr, nw) = node.into_split();
            tokio::spawn(pump(cr, nw, up, cut.clone()));
            tokio::spawn(pump(nr, cw, down, cut));
        });
    }
}

/// Copies one direction of a TCP connection through a delay line; EOF is delayed too. While
/// the client (`cut.1`) is cut off, nothing more is forwarded (nor read).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    path: Path,
    cut: (Cut, IpAddr),
) {
    let to = Arc::new(tokio::sync::Mutex::new(to));
    let writer = Arc::clone(&to);
    // An empty chunk stands for EOF.
    let mut send = delayed(path, false, move |chunk: Vec<u8>| {
        let w = Arc::clone(&writer);
        Box::pin(async move {
            let mut w = w.lock().await;
            if chunk.is_empty() {
                let _ = w.shutdown().await;
                return false;
            }
            w.write_all(&chunk).await.is_ok()
        })
    });
    let mut buf = vec![0u8; 16384];
    loop {
        let read = from.read(&mut buf).await;
        // What was read while cut (or before, but not yet forwarded) waits for the heal.
        while cut.0.is_cut(cut.1) {
            tokio::time::sleep(CUT_POLL).await;
        }
        match read {
            Ok(0) | Err(_) => {
                send(Vec::new());
                return;
            }
            Ok(n) => send(buf[..n].to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(ms: u64) -> Path {
        Path {
            delay: Duration::from_millis(ms),
            jitter: Duration::ZERO,
            loss: 0.0,
        }
    }

    #[tokio::test]
    async fn udp_and_tcp_go_through_with_the_configured_delay() {
        // A UDP echo and a TCP echo as "the node".
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            for _ in 0..6 {
                let (n, from) = echo.recv_from(&mut buf).await.unwrap();
                let _ = seen_tx.send(from);
                echo.send_to(&buf[..n], from).await.unwrap();
            }
        });
        let tcp_echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_addr = tcp_echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = tcp_echo.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => s.write_all(&buf[..n]).await.unwrap(),
                }
            }
        });
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let paths = Paths {
            up: path(15),
            down: path(10),
            from: vec![],
            cut: Cut::default(),
        };
        let running = start(&[(any, echo_addr)], &[(any, tcp_addr)], paths)
            .await
            .unwrap();

        // Two clients, so two upstream mappings: each gets its own replies back.
        for _ in 0..2 {
            let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            c.connect(running.udp[0]).await.unwrap();
            for i in 0..3u8 {
                let t0 = Instant::now();
                c.send(&[i; 100]).await.unwrap();
                let mut buf = [0u8; 1500];
                let n = tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf))
                    .await
                    .expect("the echo came back through the shim")
                    .unwrap();
                assert_eq!(&buf[..n], &[i; 100]);
                assert!(
                    t0.elapsed() >= Duration::from_millis(25),
                    "{:?}",
                    t0.elapsed()
                );
            }
        }

        // The node saw each client from its own source address (as on the internet), all
        // three datagrams of a client from the same one.
        let mut sources = Vec::new();
        while let Ok(a) = seen.try_recv() {
            sources.push(a);
        }
        assert_eq!(sources.len(), 6);
        assert!(sources[..3].iter().all(|a| *a == sources[0]));
        assert!(sources[3..].iter().all(|a| *a == sources[3]));
        assert_ne!(sources[0].ip(), sources[3].ip(), "{sources:?}");
        for a in [sources[0], sources[3]] {
            let IpAddr::V4(ip) = a.ip() else {
                panic!("{a}")
            };
            assert_eq!(ip.octets()[..2], SOURCE_POOL, "{a}");
        }

        let mut s = TcpStream::connect(running.tcp[0]).await.unwrap();
        let t0 = Instant::now();
        s.write_all(b"hello through the shim").await.unwrap();
        let mut got = vec![0u8; 22];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut got))
            .await
            .expect("TCP echo")
            .unwrap();
        assert_eq!(&got, b"hello through the shim");
        assert!(
            t0.elapsed() >= Duration::from_millis(25),
            "{:?}",
            t0.elapsed()
        );
        // Closing our side reaches the node, whose close comes back as EOF.
        s.shutdown().await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut got))
            .await
            .expect("EOF through the shim")
            .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn clients_from_a_listed_source_get_their_own_delay() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            for _ in 0..4 {
                let (n, from) = echo.recv_from(&mut buf).await.unwrap();
                echo.send_to(&buf[..n], from).await.unwrap();
            }
        });
        let far: IpAddr = "127.0.11.1".parse().unwrap();
        let paths = Paths {
            up: path(1),
            down: path(1),
            from: vec![(far, path(60), path(60))],
            cut: Cut::default(),
        };
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let running = start(&[(any, echo_addr)], &[], paths).await.unwrap();
        let mut rtts = Vec::new();
        for src in ["127.0.0.1", "127.0.11.1"] {
            let c = UdpSocket::bind((src.parse::<IpAddr>().unwrap(), 0))
                .await
                .unwrap();
            c.connect(running.udp[0]).await.unwrap();
            let t0 = Instant::now();
            c.send(b"ping").await.unwrap();
            let mut buf = [0u8; 64];
            tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf))
                .await
                .expect("the echo came back")
                .unwrap();
            rtts.push(t0.elapsed());
        }
        assert!(rtts[0] < Duration::from_millis(100), "{rtts:?}");
        assert!(rtts[1] >= Duration::from_millis(120), "{rtts:?}");
    }

    #[tokio::test]
    async fn a_cut_drops_udp_and_holds_tcp_until_it_heals() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..n], from).await;
            }
        });
        let tcp_echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_addr = tcp_echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp_echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let paths = Paths::symmetric(path(0));
        let cut = paths.cut.clone();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let running = start(&[(any, echo_addr)], &[(any, tcp_addr)], paths)
            .await
            .unwrap();
        let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        u.connect(running.udp[0]).await.unwrap();
        let mut t = TcpStream::connect(running.tcp[0]).await.unwrap();
        let mut buf = [0u8; 64];
        let echoed = async |u: &UdpSocket, buf: &mut [u8]| {
            u.send(b"ping").await.unwrap();
            tokio::time::timeout(Duration::from_millis(300), u.recv(buf))
                .await
                .is_ok()
        };
        assert!(echoed(&u, &mut buf).await, "through before the cut");
        // Cut off another source only: this client still goes through.
        cut.cut_from("127.0.0.9".parse().unwrap());
        assert!(echoed(&u, &mut buf).await, "another source's cut");
        cut.cut_all();
        assert!(!echoed(&u, &mut buf).await, "UDP dropped while cut");
        t.write_all(b"held").await.unwrap();
        let held = tokio::time::timeout(Duration::from_millis(300), t.read(&mut buf)).await;
        assert!(held.is_err(), "TCP held while cut: {held:?}");
        cut.heal();
        assert!(echoed(&u, &mut buf).await, "UDP through once healed");
        let n = tokio::time::timeout(Duration::from_secs(2), t.read(&mut buf))
            .await
            .expect("TCP resumes once healed")
            .unwrap();
        assert_eq!(&buf[..n], b"held");
    }

    #[test]
    fn bad_arguments_are_refused_clearly() {
        assert!(parse_map("127.0.0.1:1")
            .unwrap_err()
            .contains("LISTEN=TARGET"));
        assert!(parse_map("x=127.0.0.1:1").is_err());
        let mut a = ShimArgs {
            udp: vec![],
            tcp: vec![],
            delay_ms: 10.0,
            up_delay_ms: None,
            down_delay_ms: Some(3.0),
            jitter_ms: 0.0,
            loss: 0.0,
            from: vec![("127.0.11.1".parse().unwrap(), 40.0)],
            ready_file: None,
        };
        let p = a.paths().unwrap();
        assert_eq!(
            (p.up.delay, p.down.delay),
            (Duration::from_millis(10), Duration::from_millis(3))
        );
        let (u, d) = p.for_source("127.0.11.1".parse().unwrap());
        assert_eq!(
            (u.delay, d.delay),
            (Duration::from_millis(40), Duration::from_millis(40))
        );
        assert_eq!(p.for_source("127.0.0.1".parse().unwrap()).0, p.up);
        assert!(parse_from("127.0.0.1").unwrap_err().contains("IP=MS"));
        assert!(parse_from("nope=1").is_err());
        a.from = vec![("127.0.11.1".parse().unwrap(), -5.0)];
        assert!(a
            .paths()
            .unwrap_err()
            .to_string()
            .contains("--from 127.0.11.1"));
        a.from.clear();
        a.loss = 1.5;
        assert!(a.paths().unwrap_err().to_string().contains("--loss"));
        a.loss = 0.0;
        a.delay_ms = -1.0;
        assert!(a.paths().is_err());
        assert!(run(ShimArgs { delay_ms: 0.0, ..a })
            .unwrap_err()
            .to_string()
            .contains("nothing to forward"));
    }
}
