//! TURN interop: webrtc-rs's `turn` client, an implementation independent of meridian's,
//! allocates on a node, relays to a loopback UDP echo peer and back, over UDP and over TCP
//! (RFC 8656 §12.5 framing), with static and with REST credentials; and gets the right
//! errors for bad credentials and refused peers.
//!
//! Against coturn instead of meridian: `MERIDIAN_TEST_BACKEND=coturn cargo test --test
//! turn_interop` (see tests/common/mod.rs).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{Backend, CoturnAuth, Node, NodeOptions, PASSWORD, REST_SECRET, USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

/// Bound on any single TURN transaction (allocate, permission) in these tests.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for one echoed datagram before sending it again.
const ECHO_WAIT: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// What crossed the client's socket, by kind.
#[derive(Default, Debug)]
struct Stats {
    sent_send_indications: AtomicU64,
    sent_channel_data: AtomicU64,
    recv_data_indications: AtomicU64,
    recv_channel_data: AtomicU64,
}

impl Stats {
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn classify(buf: &[u8], sent: bool, stats: &Stats) {
        if buf.len() < 4 {
            return;
        }
        let counter = match (buf[0], u16::from_be_bytes([buf[0], buf[1]])) {
            (0x40..=0x7f, _) if sent => &stats.sent_channel_data,
            (0x40..=0x7f, _) => &stats.recv_channel_data,
            (_, 0x0016) if sent => &stats.sent_send_indications,
            (_, 0x0017) if !sent => &stats.recv_data_indications,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Wraps the client's transport and counts Send/Data indications and ChannelData frames, so
/// the tests can prove that both relay paths were used.
struct Counting<C> {
    inner: C,
    stats: Arc<Stats>,
}

#[async_trait]
impl<C: Conn + Send + Sync + 'static> Conn for Counting<C> {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let n = self.inner.recv(buf).await?;
        Stats::classify(&buf[..n], false, &self.stats);
        Ok(n)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let (n, from) = self.inner.recv_from(buf).await?;
        Stats::classify(&buf[..n], false, &self.stats);
        Ok((n, from))
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Stats::classify(buf, true, &self.stats);
        self.inner.send(buf).await
    }
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        Stats::classify(buf, true, &self.stats);
        self.inner.send_to(buf, target).await
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        self.inner.close().await
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A TURN-over-TCP transport: a stream of STUN messages (framed by their length field) and
/// ChannelData messages (framed by their length field, padded to a multiple of 4 bytes), RFC
/// 8656 §12.5. `recv_from` yields one message at a time, as if it were a datagram.
struct TcpTurnConn {
    reader: tokio::sync::Mutex<OwnedReadHalf>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    local: SocketAddr,
    peer: SocketAddr,
}

impl TcpTurnConn {
    async fn connect(server: SocketAddr) -> std::io::Result<TcpTurnConn> {
        let stream = timeout(OP_TIMEOUT, TcpStream::connect(server))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TCP connect timed out")
            })??;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let (r, w) = stream.into_split();
        Ok(TcpTurnConn {
            reader: tokio::sync::Mutex::new(r),
            writer: tokio::sync::Mutex::new(w),
            local,
            peer: server,
        })
    }

    fn io_err(msg: String) -> webrtc_util::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, msg).into()
    }
}

#[async_trait]
impl Conn for TcpTurnConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut r = self.reader.lock().await;
        let mut head = [0u8; 4];
        r.read_exact(&mut head).await?;
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let (msg_len, wire_len) = match head[0] >> 6 {
            // STUN: 20-byte header, attribute length is already a multiple of 4.
            0 => (20 + len, 20 + len),
            // ChannelData: 4-byte header, padded to 4 over stream transports.
            1 => (4 + len, 4 + len.div_ceil(4) * 4),
            _ => {
                return Err(Self::io_err(format!(
                    "TURN/TCP framing lost: first bytes {head:02x?}"
                )))
            }
        };
        let mut frame = vec![0u8; wire_len];
        frame[..4].copy_from_slice(&head);
        r.read_exact(&mut frame[4..]).await?;
        if buf.len() < msg_len {
            return Err(Self::io_err(format!(
                "buffer of {} for a {msg_len}-byte message",
                buf.len()
            )));
        }
        buf[..msg_len].copy_from_slice(&frame[..msg_len]);
        Ok((msg_len, self.peer))
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.peer).await
    }
    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        let mut w = self.writer.lock().await;
        w.write_all(buf).await?;
        // ChannelData must be padded to a multiple of 4 on a stream.
        if buf.len() >= 4 && (0x40..=0x7f).contains(&buf[0]) {
            let want = 4 + (u16::from_be_bytes([buf[2], buf[3]]) as usize).div_ceil(4) * 4;
            if buf.len() < want {
                w.write_all(&vec![0u8; want - buf.len()]).await?;
            }
        }
        Ok(buf.len())
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        let _ = self.writer.lock().await.shutdown().await;
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A loopback UDP peer that echoes every datagram and remembers who sent it. Stops on drop.
struct EchoPeer {
    addr: SocketAddr,
    sources: Arc<Mutex<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoPeer {
    async fn start() -> EchoPeer {
        Self::start_on("127.0.0.1:0").await
    }

    async fn start_on(bind: &str) -> EchoPeer {
        let sock = UdpSocket::bind(bind).await.expect("bind echo peer");
        let addr = sock.local_addr().unwrap();
        let sources = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&sources);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            // Bounded: the task is aborted when the peer is dropped.
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                seen.lock().unwrap().push(from);
                let _ = sock.send_to(&buf[..n], from).await;
            }
        });
        EchoPeer {
            addr,
            sources,
            task,
        }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct TurnSession {
    client: Client,
    stats: Arc<Stats>,
}

impl TurnSession {
    async fn connect(
        server: SocketAddr,
        transport: Transport,
        user: &str,
        pass: &str,
    ) -> TurnSession {
        let stats = Arc::new(Stats::default());
        let conn: Arc<dyn Conn + Send + Sync> = match transport {
            Transport::Udp => {
                let sock = UdpSocket::bind("127.0.0.1:0")
                    .await
                    .expect("bind client socket");
                Arc::new(Counting {
                    inner: sock,
                    stats: Arc::clone(&stats),
                })
            }
            Transport::Tcp => {
                let tcp = TcpTurnConn::connect(server)
                    .await
                    .expect("connect TURN/TCP");
                Arc::new(Counting {
                    inner: tcp,
                    stats: Arc::clone(&stats),
                })
            }
        };
        let client = Client::new(ClientConfig {
            stun_serv_addr: server.to_string(),
            turn_serv_addr: server.to_string(),
            username: user.into(),
            password: pass.into(),
            realm: String::new(), // learnt from the 401 challenge
            software: "meridian-interop-test".into(),
            rto_in_ms: 0,
            conn,
            vnet: None,
        })
        .await
        .expect("turn client");
        client.listen().await.expect("client listen");
        TurnSession { client, stats }
    }

    async fn allocate(&self) -> Result<impl Conn, String> {
        match timeout(OP_TIMEOUT, self.client.allocate()).await {
            Err(_) => Err(format!("allocate timed out after {OP_TIMEOUT:?}")),
            Ok(Err(e)) => Err(format!("allocate failed: {e}")),
            Ok(Ok(relay)) => Ok(relay),
        }
    }

    async fn close(self) {
        let _ = timeout(OP_TIMEOUT, self.client.close()).await;
    }
}

/// Receives from the relay until `want` arrives from `from` (other data is skipped).
async fn recv_expect(relay: &impl Conn, want: &[u8], from: SocketAddr, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    for _ in 0..1000 {
        match tokio::time::timeout_at(deadline, relay.recv_from(&mut buf)).await {
            Err(_) => return false,
            Ok(Err(e)) => panic!("relay recv failed: {e}"),
            Ok(Ok((n, src))) if src == from && &buf[..n] == want => return true,
            Ok(Ok(_)) => continue,
        }
    }
    false
}

/// Allocates, relays datagrams to an echo peer until both the Send-indication and the
/// ChannelData paths were used in both directions, then checks that a datagram from a
/// permitted peer without a channel comes back as a Data indication.
async fn relay_round_trip(
    server: SocketAddr,
    transport: Transport,
    user: &str,
    pass: &str,
) -> Arc<Stats> {
    let session = TurnSession::connect(server, transport, user, pass).await;
    let relay = session
        .allocate()
        .await
        .unwrap_or_else(|e| panic!("{transport:?}: {e}"));
    let relayed = relay.local_addr().expect("relayed address");
    assert_eq!(
        relayed.ip(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "XOR-RELAYED-ADDRESS"
    );
    assert_ne!(relayed.port(), 0, "XOR-RELAYED-ADDRESS port");

    let echo = EchoPeer::start().await;
    let stats = Arc::clone(&session.stats);
    let mut echoed = 0;
    // The first datagram goes as a Send indication while the client binds a channel in the
    // background; later ones go as ChannelData. Bounded: at most 40 datagrams.
    for i in 0..40 {
        let payload = format!("{transport:?} datagram {i} via {relayed}");
        let mut ok = false;
        for _attempt in 0..3 {
            timeout(OP_TIMEOUT, relay.send_to(payload.as_bytes(), echo.addr))
                .await
                .expect("send_to timed out")
                .unwrap_or_else(|e| panic!("send_to echo peer: {e}"));
            if recv_expect(&relay, payload.as_bytes(), echo.addr, ECHO_WAIT).await {
                ok = true;
                break;
            }
        }
        assert!(
            ok,
            "datagram {i} was not echoed through the relay (stats: {stats:?})"
        );
        echoed += 1;
        if i >= 4
            && Stats::get(&stats.sent_channel_data) >= 2
            && Stats::get(&stats.recv_channel_data) >= 2
        {
            break;
        }
    }
    assert!(
        Stats::get(&stats.sent_send_indications) >= 1,
        "no Send indication was used: {stats:?}"
    );
    assert!(
        Stats::get(&stats.sent_channel_data) >= 2,
        "no ChannelData was sent: {stats:?}"
    );
    assert!(
        Stats::get(&stats.recv_channel_data) >= 2,
        "no ChannelData was received: {stats:?}"
    );

    // The peer must have seen every datagram come from the relayed address.
    {
        let sources = echo.sources.lock().unwrap();
        assert!(
            sources.len() >= echoed,
            "echo peer saw {} datagrams, {echoed} echoed",
            sources.len()
        );
        assert!(
            sources.iter().all(|s| *s == relayed),
            "peer saw sources {sources:?}, relayed address is {relayed}"
        );
    }

    // A second peer on the permitted IP but without a channel: its datagrams arrive as Data
    // indications.
    let other = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind second peer");
    let other_addr = other.local_addr().unwrap();
    let mut delivered = false;
    for _attempt in 0..3 {
        other
            .send_to(b"unsolicited from a permitted peer", relayed)
            .await
            .expect("peer send");
        if recv_expect(
            &relay,
            b"unsolicited from a permitted peer",
            other_addr,
            ECHO_WAIT,
        )
        .await
        {
            delivered = true;
            break;
        }
    }
    assert!(
        delivered,
        "datagram from a permitted peer without a channel was not delivered"
    );
    assert!(
        Stats::get(&stats.recv_data_indications) >= 1,
        "no Data indication was received: {stats:?}"
    );

    let _ = timeout(OP_TIMEOUT, relay.close()).await;
    session.close().await;
    stats
}

fn rest_opts() -> NodeOptions {
    NodeOptions {
        coturn_auth: CoturnAuth::RestSecret,
        ..NodeOptions::default()
    }
}

fn rest_credential_valid_for(secs: i64) -> (String, String) {
    let expiry = (common::unix_now() as i64 + secs).max(1) as u64;
    common::rest_credential(REST_SECRET, "bob", expiry)
}

/// Sum of the samples of `name` whose labels contain `label` (e.g. `direction="to_peer"`).
fn metric_sum(body: &str, name: &str, label: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            (metric == name && labels.contains(label))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Polls meridian's /metrics (bounded) until `pred` holds; returns the last body. The node
/// flushes its counters about once a second. No-op (returns None) for other backends.
fn wait_metrics(node: &Node, what: &str, pred: impl Fn(&str) -> bool) -> Option<String> {
    if node.backend != Backend::Meridian {
        return None;
    }
    let mut last = String::new();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let (status, body) = common::http_get(node.admin(), "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "/metrics status; body: {body}");
        if pred(&body) {
            return Some(body);
        }
        last = body;
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("/metrics never showed {what} within 10 s; last body:\n{last}");
}

/// The node saw ChannelData both ways (server-side view of what the client counted).
fn check_channel_data_metrics(node: &Node) {
    wait_metrics(node, "ChannelData relayed both ways", |b| {
        metric_sum(
            b,
            "meridian_turn_channel_data_total",
            "direction=\"to_peer\"",
        ) >= 2.0
            && metric_sum(
                b,
                "meridian_turn_channel_data_total",
                "direction=\"to_client\"",
            ) >= 2.0
            && metric_sum(b, "meridian_turn_packets_total", "direction=\"to_client\"") >= 3.0
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_static_credentials_relay_echo() {
    let node = Node::start(&NodeOptions::default());
    let stats = relay_round_trip(node.turn_udp(), Transport::Udp, USER, PASSWORD).await;
    eprintln!("udp static: {stats:?}");
    check_channel_data_metrics(&node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_rest_credentials_relay_echo() {
    let node = Node::start(&rest_opts());
    let (user, pass) = rest_credential_valid_for(3600);
    let stats = relay_round_trip(node.turn_udp(), Transport::Udp, &user, &pass).await;
    eprintln!("udp rest: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_static_credentials_relay_echo() {
    let node = Node::start(&NodeOptions::default());
    let stats = relay_round_trip(node.turn_tcp(), Transport::Tcp, USER, PASSWORD).await;
    eprintln!("tcp static: {stats:?}");
    check_channel_data_metrics(&node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_rest_credentials_relay_echo() {
    let node = Node::start(&rest_opts());
    let (user, pass) = rest_credential_valid_for(3600);
    let stats = relay_round_trip(node.turn_tcp(), Transport::Tcp, &user, &pass).await;
    eprintln!("tcp rest: {stats:?}");
}

async fn expect_allocate_error(
    server: SocketAddr,
    transport: Transport,
    user: &str,
    pass: &str,
    code: &str,
) {
    let session = TurnSession::connect(server, transport, user, pass).await;
    match session.allocate().await {
        Ok(relay) => panic!(
            "{transport:?} allocate as {user:?} succeeded (relay {:?}); expected error {code}",
            relay.local_addr()
        ),
        Err(e) => assert!(
            e.contains(code),
            "{transport:?} allocate as {user:?}: expected error {code}, got: {e}"
        ),
    }
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_401() {
    let node = Node::start(&NodeOptions::default());
    expect_allocate_error(
        node.turn_udp(),
        Transport::Udp,
        USER,
        "not-the-password",
        "401",
    )
    .await;
    expect_allocate_error(
        node.turn_tcp(),
        Transport::Tcp,
        USER,
        "not-the-password",
        "401",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_is_401() {
    let node = Node::start(&NodeOptions::default());
    expect_allocate_error(node.turn_udp(), Transport::Udp, "mallory", PASSWORD, "401").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_credentials_expired_or_forged_are_401() {
    let node = Node::start(&rest_opts());
    let (user, pass) = rest_credential_valid_for(-60);
    expect_allocate_error(node.turn_udp(), Transport::Udp, &user, &pass, "401").await;
    // Right shape, signed with another secret.
    let expiry = common::unix_now() + 3600;
    let (user, pass) = common::rest_credential("some-other-secret", "bob", expiry);
    expect_allocate_error(node.turn_udp(), Transport::Udp, &user, &pass, "401").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_not_allow_listed_is_403() {
    // Loopback peers are refused unless allow-listed; this node does not allow-list them.
    // (A loopback peer keeps this test's traffic on this machine even if the node wrongly
    // permitted it.) The peer is on 127.0.0.2: 127.0.0.1 is where this node's SFU listens,
    // and the SFU's IP is a permitted peer (tests/turn_sfu_handoff.rs checks that its other
    // ports still receive nothing).
    let node = Node::start(&NodeOptions {
        allow_loopback_peers: false,
        ..NodeOptions::default()
    });
    let session = TurnSession::connect(node.turn_udp(), Transport::Udp, USER, PASSWORD).await;
    let relay = session.allocate().await.expect("allocate");
    let echo = EchoPeer::start_on("127.0.0.2:0").await;
    let res = timeout(OP_TIMEOUT, relay.send_to(b"must not be relayed", echo.addr))
        .await
        .expect("send_to timed out");
    match res {
        Ok(n) => panic!(
            "CreatePermission to refused peer {} succeeded (sent {n} bytes)",
            echo.addr
        ),
        Err(e) => assert!(
            e.to_string().contains("403"),
            "expected 403 Forbidden, got: {e}"
        ),
    }
    // Nothing may have reached the peer.
    assert!(
        echo.sources.lock().unwrap().is_empty(),
        "refused peer received data"
    );
    wait_metrics(&node, "a refused peer and a 403 to CreatePermission", |b| {
        // The reason may be "loopback" or "own_address" (the relay address is 127.0.0.1 too).
        metric_sum(b, "meridian_turn_refused_peers_total", "") >= 1.0
            && metric_sum(
                b,
                "meridian_turn_requests_total",
                "method=\"create_permission\",code=\"403\"",
            ) >= 1.0
    });
    let _ = timeout(OP_TIMEOUT, relay.close()).await;
    session.close().await;
}

/// One echo through an existing allocation.
async fn echo_once(relay: &impl Conn, peer: SocketAddr, payload: &[u8]) -> bool {
    for _attempt in 0..3 {
        timeout(OP_TIMEOUT, relay.send_to(payload, peer))
            .await
            .expect("send_to timed out")
            .expect("send_to");
        if recv_expect(relay, payload, peer, ECHO_WAIT).await {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_existing_allocations_then_exits_zero() {
    if Backend::from_env() != Backend::Meridian {
        eprintln!("skipped: meridian-only (drain contract)");
        return;
    }
    let mut node = Node::start(&NodeOptions {
        drain_secs: 2,
        ..NodeOptions::default()
    });
    let session = TurnSession::connect(node.turn_udp(), Transport::Udp, USER, PASSWORD).await;
    let relay = session.allocate().await.expect("allocate");
    let echo = EchoPeer::start().await;
    assert!(
        echo_once(&relay, echo.addr, b"before SIGTERM").await,
        "no echo before SIGTERM"
    );

    let admin = node.admin();
    node.signal(libc::SIGTERM);
    common::wait_for(Duration::from_secs(5), "/readyz 503 while draining", || {
        matches!(common::http_get(admin, "/readyz"), Ok((503, _))).then_some(())
    });
    // The existing allocation keeps relaying while the node drains...
    assert!(
        echo_once(&relay, echo.addr, b"while draining").await,
        "existing allocation stopped relaying during drain"
    );
    // ...and new allocations are refused.
    let late = TurnSession::connect(node.turn_udp(), Transport::Udp, USER, PASSWORD).await;
    if let Ok(r) = late.allocate().await {
        panic!("allocation during drain succeeded: {:?}", r.local_addr());
    }
    late.close().await;

    let status = node
        .wait_timeout(Duration::from_secs(15))
        .expect("node still running 15 s after SIGTERM (drain deadline 2 s)");
    assert_eq!(status.code(), Some(0), "exit status after drain: {status}");
    session.close().await;
}
