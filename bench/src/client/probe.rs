//! Measuring the RTT to each region over the media path: STUN Binding requests over UDP to
//! the endpoints `GET /v1/regions` lists (a node's TURN port answers Binding requests).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::UdpSocket;

/// Binding requests per region; the lowest round trip counts.
pub const TRIES: usize = 3;
/// How long the measurement of a region waits for answers after its last request.
pub const TIMEOUT: Duration = Duration::from_millis(1000);

/// One region's measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub region: String,
    pub endpoint: String,
    /// The signaling URL of the region's node to join (from the listing).
    pub signaling: Option<String>,
    pub rtt_ms: f64,
}

fn binding_request(txid: &[u8; 12]) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    b[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    b[8..20].copy_from_slice(txid);
    b
}

/// Whether `buf` is a Binding success response to `txid`.
fn is_response(buf: &[u8], txid: &[u8; 12]) -> bool {
    buf.len() >= 20
        && buf[0..2] == [0x01, 0x01]
        && buf[4..8] == 0x2112_A442u32.to_be_bytes()
        && &buf[8..20] == txid
}

/// The lowest of `TRIES` Binding round trips to `endpoint` (`host:port`), or `None` when
/// none was answered.
pub async fn stun_rtt(endpoint: &str) -> Option<Duration> {
    stun_rtt_from(endpoint, None).await
}

/// Time between the Binding requests of one measurement: close enough that the whole
/// measurement costs about one round trip, apart enough not to share one queueing burst.
pub const SPACING: Duration = Duration::from_millis(2);

/// [`stun_rtt`] from the local address `local` (any when `None`): `TRIES` requests
/// [`SPACING`] apart, each timed from its own send; the lowest answered counts. Returns once
/// every request was answered or `TIMEOUT` after the last one went out.
pub async fn stun_rtt_from(endpoint: &str, local: Option<IpAddr>) -> Option<Duration> {
    let mut best: Option<Duration> = None;
    stun_samples(endpoint, local, |rtt| {
        best = Some(best.map_or(rtt, |b| b.min(rtt)))
    })
    .await;
    best
}

/// The Binding exchange of [`stun_rtt_from`], handing each round trip to `sample` as it is
/// answered.
async fn stun_samples(endpoint: &str, local: Option<IpAddr>, mut sample: impl FnMut(Duration)) {
    let Some(addr) = tokio::net::lookup_host(endpoint)
        .await
        .ok()
        .and_then(|mut a| a.next())
    else {
        return;
    };
    let addr: SocketAddr = addr;
    let ip = local.unwrap_or(if addr.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    });
    let Ok(sock) = UdpSocket::bind(SocketAddr::new(ip, 0)).await else {
        return;
    };
    if sock.connect(addr).await.is_err() {
        return;
    }
    let mut sent: Vec<([u8; 12], Instant, bool)> = Vec::with_capacity(TRIES);
    let mut buf = [0u8; 1500];
    let mut next_send = Instant::now();
    loop {
        if sent.len() < TRIES && Instant::now() >= next_send {
            let txid: [u8; 12] = rand::random();
            if sock.send(&binding_request(&txid)).await.is_ok() {
                sent.push((txid, Instant::now(), false));
            } else {
                sent.push((txid, Instant::now(), true)); // counted as done
            }
            next_send += SPACING;
            continue;
        }
        if sent.len() == TRIES && sent.iter().all(|(_, _, done)| *done) {
            break;
        }
        let wake = if sent.len() < TRIES {
            next_send
        } else {
            sent.last()
                .map_or_else(Instant::now, |(_, at, _)| *at + TIMEOUT)
        };
        let left = wake.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                if let Some(e) = sent
                    .iter_mut()
                    .find(|(t, _, done)| !*done && is_response(&buf[..n], t))
                {
                    e.2 = true;
                    sample(e.1.elapsed());
                }
            }
            Ok(Err(_)) => {} // ICMP unreachable from a closed port: wait on
            Err(_) if sent.len() == TRIES => break,
            Err(_) => {}
        }
    }
}

/// When a measurement stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Every region answered `TRIES` times or timed out: the full ranking.
    All,
    /// The nearest region is known: probes go to every region at once, so answers arrive in
    /// RTT order, and once one region answered, one that has not within [`grace`] more is
    /// farther. Costs about the RTT to the nearest region instead of the farthest's.
    Nearest,
}

/// How long after the first region answered (at `first`) a `Until::Nearest` measurement
/// waits for others: a quarter of that, at least 5 ms — room for jitter, which grows with
/// distance; a region that answers later is farther, or within that much of the nearest.
pub fn grace(first: Duration) -> Duration {
    (first / 4).max(Duration::from_millis(5))
}

/// Measures every region `regions` (a `GET /v1/regions` body) lists, in parallel, probing
/// each region's first node's first STUN endpoint. Regions that did not answer are left out.
pub async fn measure(regions: &Value) -> Vec<Measured> {
    measure_from(regions, None, Until::All).await
}

/// [`measure`] from `local`, stopping as `until` says; sorted nearest first.
pub async fn measure_from(regions: &Value, local: Option<IpAddr>, until: Until) -> Vec<Measured> {
    // (region index, a round trip) per answer; the channel closes when every probe is done.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Duration)>();
    let mut tasks = Vec::new();
    let mut slots: Vec<(Measured, Option<Duration>)> = Vec::new();
    for r in regions["regions"].as_array().into_iter().flatten() {
        let region = r["region"].as_str().unwrap_or_default().to_string();
        let Some(endpoint) = r["nodes"][0]["stun"][0].as_str().map(str::to_string) else {
            continue;
        };
        let i = slots.len();
        slots.push((
            Measured {
                region,
                endpoint: endpoint.clone(),
                signaling: best_node(r).map(str::to_string),
                rtt_ms: f64::NAN,
            },
            None,
        ));
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            stun_samples(&endpoint, local, |rtt| {
                let _ = tx.send((i, rtt));
            })
            .await;
        }));
    }
    drop(tx);
    let t0 = Instant::now();
    let mut stop_at: Option<tokio::time::Instant> = None;
    loop {
        let next = match stop_at {
            Some(at) => match tokio::time::timeout_at(at, rx.recv()).await {
                Ok(v) => v,
                Err(_) => break,
            },
            None => rx.recv().await,
        };
        let Some((i, rtt)) = next else { break };
        if until == Until::Nearest && stop_at.is_none() {
            stop_at = Some(tokio::time::Instant::now() + grace(t0.elapsed()));
        }
        let best = &mut slots[i].1;
        *best = Some(best.map_or(rtt, |b| b.min(rtt)));
    }
    for t in tasks {
        t.abort();
    }
    let mut out: Vec<Measured> = slots
        .into_iter()
        .filter_map(|(mut m, rtt)| {
            m.rtt_ms = (rtt?.as_secs_f64() * 10_000.0).round() / 10.0;
            Some(m)
        })
        .collect();
    out.sort_by(|a, b| a.rtt_ms.total_cmp(&b.rtt_ms));
    out
}

/// The signaling URL of a region's node a client should join: the least loaded one that is
/// not overloaded (the node decides in the end).
fn best_node(region: &Value) -> Option<&str> {
    region["nodes"]
        .as_array()?
        .iter()
        .filter(|n| n["overloaded"] != true)
        .min_by_key(|n| n["sessions"].as_u64().unwrap_or(0))?["signaling"]
        .as_str()
}

/// A join placed by measurement: the connection, the node it ended on, what was measured,
/// how long each step took and the redirects followed.
pub struct Routed {
    pub signal: super::signal::Signal,
    pub base: String,
    pub measured: Vec<Measured>,
    /// Fetching `/v1/regions` from the node first asked (zero when the list was known).
    pub regions_time: Duration,
    pub measure_time: Duration,
    pub redirects: u32,
}

/// How a client joins.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    pub resume_from: Option<u64>,
    /// Measure the regions and send the ranking (when the cluster has two or more).
    pub measure: bool,
    /// Stop measuring once the nearest region is known (see [`Until::Nearest`]).
    pub nearest_only: bool,
    /// The local address every socket binds (any when `None`).
    pub local: Option<IpAddr>,
    /// A `GET /v1/regions` body the client already has (cached or shipped with it); the
    /// listing is then not fetched.
    pub regions: Option<Value>,
}

/// Joins through `base` with `token`: when `measure` is set and the node lists two or more
/// regions, measures each and sends the ranking with the join; follows redirects either way.
/// A node that cannot list regions (an older node) is joined without a ranking.
pub async fn join_nearest(
    base: &str,
    token: &str,
    resume_from: Option<u64>,
    measure: bool,
) -> anyhow::Result<Routed> {
    let opts = JoinOptions {
        resume_from,
        measure,
        nearest_only: true,
        ..JoinOptions::default()
    };
    join_measured(base, token, &opts).await
}

/// Joins as `opts` says, starting at `entry` (the node the client knows). The listing comes
/// over a kept-alive connection that the WebSocket then upgrades when the nearest region is
/// the entry's; otherwise the client joins the nearest region's node directly with its
/// ranking (saving the entry a redirect), and follows whatever redirect the node answers.
pub async fn join_measured(entry: &str, token: &str, opts: &JoinOptions) -> anyhow::Result<Routed> {
    use super::signal;
    let entry = entry.trim_end_matches('/');
    let t0 = Instant::now();
    let mut conn = None;
    let mut regions = opts.regions.clone();
    if opts.measure && regions.is_none() && entry.starts_with("http://") {
        if let Ok(mut s) = signal::connect_tcp(&signal::hostport(entry)?, opts.local).await {
            if let Ok(v) = signal::http_get_on(&mut s, entry, "/v1/regions").await {
                regions = Some(v);
                conn = Some(s);
            }
        }
    }
    let regions_time = t0.elapsed();
    let mut measured = Vec::new();
    if let Some(r) = regions.as_ref().filter(|_| opts.measure) {
        if r["regions"].as_array().is_some_and(|r| r.len() >= 2) {
            let until = if opts.nearest_only {
                Until::Nearest
            } else {
                Until::All
            };
            measured = measure_from(r, opts.local, until).await;
        }
    }
    let measure_time = t0.elapsed() - regions_time;
    let mut join = json!({"type": "join", "v": 1, "token": token});
    if let Some(r) = opts.resume_from {
        join["resume_from"] = json!(r);
    }
    if !measured.is_empty() {
        join["regions"] = ranking_json(&measured);
    }
    let target = measured
        .first()
        .and_then(|m| m.signaling.as_deref())
        .map(|u| u.trim_end_matches('/'))
        .unwrap_or(entry)
        .to_string();
    if target != entry {
        conn = None;
    }
    let (signal, base, redirects) =
        signal::Signal::join_routed_on(&target, join, conn, opts.local).await?;
    Ok(Routed {
        signal,
        base,
        measured,
        regions_time,
        measure_time,
        redirects,
    })
}

/// The `regions` field of a `join`.
pub fn ranking_json(m: &[Measured]) -> Value {
    Value::Array(
        m.iter()
            .map(|m| json!({"region": m.region, "rtt_ms": m.rtt_ms}))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_must_match_the_transaction() {
        let t = [7u8; 12];
        let req = binding_request(&t);
        assert!(!is_response(&req, &t), "a request is not a response");
        let mut resp = req;
        resp[0..2].copy_from_slice(&0x0101u16.to_be_bytes());
        assert!(is_response(&resp, &t));
        assert!(!is_response(&resp, &[8u8; 12]));
        assert!(!is_response(&resp[..10], &t));
    }

    #[tokio::test]
    async fn measures_a_stun_responder_and_skips_a_silent_one() {
        // A tiny Binding responder on loopback.
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            for _ in 0..TRIES {
                let (n, from) = server.recv_from(&mut buf).await.unwrap();
                let mut resp = buf[..n].to_vec();
                resp[0..2].copy_from_slice(&0x0101u16.to_be_bytes());
                server.send_to(&resp, from).await.unwrap();
            }
        });
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let regions = json!({"regions": [
            {"region": "near", "nodes": [{"stun": [addr.to_string()]}]},
            {"region": "dead", "nodes": [{"stun": [silent.local_addr().unwrap().to_string()]}]},
            {"region": "none", "nodes": [{"stun": []}]},
        ]});
        let m = measure(&regions).await;
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].signaling, None);
        assert_eq!(m[0].region, "near");
        assert!(m[0].rtt_ms < TIMEOUT.as_secs_f64() * 1000.0);
    }

    /// A Binding responder that answers (at most 4 × `TRIES` requests) after `delay` each.
    async fn slow_responder(delay: Duration) -> SocketAddr {
        let server = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            for _ in 0..4 * TRIES {
                let Ok((n, from)) = server.recv_from(&mut buf).await else {
                    return;
                };
                let mut resp = buf[..n].to_vec();
                resp[0..2].copy_from_slice(&0x0101u16.to_be_bytes());
                let server = std::sync::Arc::clone(&server);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = server.send_to(&resp, from).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_nearest_only_measurement_stops_once_the_nearest_answered() {
        let near = slow_responder(Duration::from_millis(5)).await;
        let far = slow_responder(Duration::from_millis(400)).await;
        let regions = json!({"regions": [
            {"region": "far", "nodes": [{"stun": [far.to_string()], "signaling": "http://far:1"}]},
            {"region": "near", "nodes": [
                {"stun": [near.to_string()], "signaling": "http://busy:1", "sessions": 9},
                {"stun": [near.to_string()], "signaling": "http://idle:1", "sessions": 1},
                {"stun": [near.to_string()], "signaling": "http://full:1", "sessions": 0, "overloaded": true},
            ]},
        ]});
        let t0 = Instant::now();
        let m = measure_from(&regions, Some("127.0.0.1".parse().unwrap()), Until::Nearest).await;
        let took = t0.elapsed();
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].region, "near");
        assert_eq!(
            m[0].signaling.as_deref(),
            Some("http://idle:1"),
            "least loaded, not overloaded"
        );
        assert!(took < Duration::from_millis(300), "stopped early: {took:?}");
        // The full measurement waits for the far one and ranks both.
        let m = measure_from(&regions, None, Until::All).await;
        let order: Vec<&str> = m.iter().map(|m| m.region.as_str()).collect();
        assert_eq!(order, ["near", "far"]);
        assert!(m[1].rtt_ms >= 400.0, "{m:?}");
    }

    #[test]
    fn grace_is_a_quarter_of_the_first_answer_and_at_least_5_ms() {
        assert_eq!(grace(Duration::from_millis(8)), Duration::from_millis(5));
        assert_eq!(grace(Duration::from_millis(200)), Duration::from_millis(50));
    }
}
