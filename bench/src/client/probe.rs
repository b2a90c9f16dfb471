//! Measuring the RTT to each region over the media path: STUN Binding requests over UDP to
//! the endpoints `GET /v1/regions` lists (a node's TURN port answers Binding requests).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::UdpSocket;

/// Binding requests per region; the lowest round trip counts.
pub const TRIES: usize = 3;
/// How long one Binding request waits for its response.
pub const TIMEOUT: Duration = Duration::from_millis(1000);

/// One region's measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub region: String,
    pub endpoint: String,
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
    let addr: SocketAddr = tokio::net::lookup_host(endpoint).await.ok()?.next()?;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let sock = UdpSocket::bind(bind).await.ok()?;
    sock.connect(addr).await.ok()?;
    let mut best: Option<Duration> = None;
    let mut buf = [0u8; 1500];
    for _ in 0..TRIES {
        let txid: [u8; 12] = rand::random();
        let sent = Instant::now();
        if sock.send(&binding_request(&txid)).await.is_err() {
            continue;
        }
        let deadline = sent + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, sock.recv(&mut buf)).await {
                Ok(Ok(n)) if is_response(&buf[..n], &txid) => {
                    let rtt = sent.elapsed();
                    best = Some(best.map_or(rtt, |b| b.min(rtt)));
                    break;
                }
                Ok(Ok(_)) | Ok(Err(_)) if !left.is_zero() => continue,
                _ => break,
            }
        }
    }
    best
}

/// Measures every region `regions` (a `GET /v1/regions` body) lists, in parallel, probing
/// each region's first node's first STUN endpoint. Regions that did not answer are left out.
pub async fn measure(regions: &Value) -> Vec<Measured> {
    let mut tasks = Vec::new();
    for r in regions["regions"].as_array().into_iter().flatten() {
        let region = r["region"].as_str().unwrap_or_default().to_string();
        let Some(endpoint) = r["nodes"][0]["stun"][0].as_str().map(str::to_string) else {
            continue;
        };
        tasks.push(tokio::spawn(async move {
            stun_rtt(&endpoint).await.map(|rtt| Measured {
                region,
                endpoint,
                rtt_ms: (rtt.as_secs_f64() * 10_000.0).round() / 10.0,
            })
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(Some(m)) = t.await {
            out.push(m);
        }
    }
    out
}

/// A join placed by measurement: the connection, the node it ended on, what was measured and
/// how long measuring took.
pub struct Routed {
    pub signal: super::signal::Signal,
    pub base: String,
    pub measured: Vec<Measured>,
    pub measure_time: Duration,
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
    let t0 = Instant::now();
    let mut measured = Vec::new();
    if measure {
        if let Ok(regions) = super::signal::http_get_json(base, "/v1/regions").await {
            if regions["regions"].as_array().is_some_and(|r| r.len() >= 2) {
                measured = self::measure(&regions).await;
                measured.sort_by(|a, b| a.rtt_ms.total_cmp(&b.rtt_ms));
            }
        }
    }
    let measure_time = t0.elapsed();
    let mut join = json!({"type": "join", "v": 1, "token": token});
    if let Some(r) = resume_from {
        join["resume_from"] = json!(r);
    }
    if !measured.is_empty() {
        join["regions"] = ranking_json(&measured);
    }
    let (signal, base) = super::signal::Signal::join_routed(base, join).await?;
    Ok(Routed {
        signal,
        base,
        measured,
        measure_time,
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
        assert_eq!(m[0].region, "near");
        assert!(m[0].rtt_ms < TIMEOUT.as_secs_f64() * 1000.0);
    }
}
