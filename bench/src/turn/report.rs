//! Figures of a run and how they are printed: a Markdown table for people, JSON for
//! machines, and ratio lines in comparison mode.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::payload::Tally;

/// One data phase at one rate.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    /// Requested packets/s over all clients (0 = flat out).
    pub rate_requested: u64,
    /// Packets/s actually sent.
    pub rate_sent: f64,
    pub sent: u64,
    pub received: u64,
    pub invalid: u64,
    pub loss_pct: f64,
    /// Measured window: first send to the last echo (or the drain deadline), seconds.
    pub window_secs: f64,
    /// Relay traversals per second: each echoed packet crossed the relay twice (client to
    /// peer, peer to client), so this is 2 x received / window.
    pub relayed_pps: f64,
    pub rtt_p50_us: f64,
    pub rtt_p99_us: f64,
    pub rtt_p999_us: f64,
    pub rtt_max_us: f64,
    /// Server CPU (user + system) consumed during the window, seconds.
    pub server_cpu_secs: Option<f64>,
    /// Server CPU per relay traversal, nanoseconds: CPU / (2 x received).
    pub server_cpu_ns_per_packet: Option<f64>,
    /// Signalling errors during the phase (refreshes), by reason.
    pub errors: BTreeMap<String, u64>,
}

impl Phase {
    pub fn new(rate: u64, t: &Tally, window_secs: f64, cpu_ns: Option<u64>) -> Self {
        let w = window_secs.max(1e-9);
        let traversals = 2 * t.received;
        Phase {
            rate_requested: rate,
            rate_sent: t.sent as f64 / w,
            sent: t.sent,
            received: t.received,
            invalid: t.invalid,
            loss_pct: t.loss_pct(),
            window_secs,
            relayed_pps: traversals as f64 / w,
            rtt_p50_us: t.rtt_us(0.5),
            rtt_p99_us: t.rtt_us(0.99),
            rtt_p999_us: t.rtt_us(0.999),
            rtt_max_us: if t.rtt_ns.is_empty() {
                0.0
            } else {
                t.rtt_ns.max() as f64 / 1000.0
            },
            server_cpu_secs: cpu_ns.map(|c| c as f64 / 1e9),
            server_cpu_ns_per_packet: cpu_ns
                .filter(|_| traversals > 0)
                .map(|c| c as f64 / traversals as f64),
            errors: BTreeMap::new(),
        }
    }
}

/// Everything measured against one target.
#[derive(Clone, Debug, Serialize, Default)]
pub struct TargetReport {
    pub target: String,
    pub transport: String,
    pub server: Option<String>,
    pub clients: u32,
    pub size: usize,
    pub allocations_ok: u64,
    pub allocations_failed: u64,
    pub setup_secs: f64,
    /// Successful allocations (Allocate + ChannelBind, with the 401 round trip) per second of
    /// the setup phase.
    pub allocations_per_sec: f64,
    /// Server CPU per allocation during setup, microseconds.
    pub server_cpu_us_per_allocation: Option<f64>,
    pub setup_errors: BTreeMap<String, u64>,
    /// The phase the headline figures come from (with --find-max-rate: the highest rate
    /// with < 0.1 % loss, or the first step if none passed).
    pub result: Option<Phase>,
    /// Every step of --find-max-rate, in order.
    pub steps: Vec<Phase>,
    /// --find-max-rate: highest rate with < 0.1 % loss.
    pub max_rate_pps: Option<u64>,
    /// --find-max-rate stopped because the bench could not send at the requested rate.
    pub bench_limited: bool,
    /// Server RSS with every allocation live (end of the data phase), MiB.
    pub server_rss_mib: Option<f64>,
    /// Server peak RSS (VmHWM) over its lifetime, MiB.
    pub server_peak_rss_mib: Option<f64>,
    pub released_ok: u64,
    pub released_failed: u64,
    pub teardown_errors: BTreeMap<String, u64>,
    /// Set when the target could not be measured.
    pub error: Option<String>,
}

/// A comparison of one target against a baseline.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub target: String,
    pub baseline: String,
    /// target CPU/packet divided by baseline CPU/packet.
    pub cpu_per_packet: Option<f64>,
    /// target RTT p99 divided by baseline RTT p99.
    pub rtt_p99: Option<f64>,
    pub loss_pct_target: Option<f64>,
    pub loss_pct_baseline: Option<f64>,
    /// target peak RSS / baseline peak RSS (servers only).
    pub peak_rss: Option<f64>,
    /// target allocations/s / baseline allocations/s.
    pub allocations_per_sec: Option<f64>,
    /// target max zero-loss rate / baseline's (with --find-max-rate).
    pub max_rate: Option<f64>,
}

fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Ratios of `t` against `base`.
pub fn ratio(t: &TargetReport, base: &TargetReport) -> Ratio {
    let tr = t.result.as_ref();
    let br = base.result.as_ref();
    Ratio {
        target: t.target.clone(),
        baseline: base.target.clone(),
        cpu_per_packet: div(
            tr.and_then(|p| p.server_cpu_ns_per_packet),
            br.and_then(|p| p.server_cpu_ns_per_packet),
        ),
        rtt_p99: div(tr.map(|p| p.rtt_p99_us), br.map(|p| p.rtt_p99_us)),
        loss_pct_target: tr.map(|p| p.loss_pct),
        loss_pct_baseline: br.map(|p| p.loss_pct),
        peak_rss: div(t.server_peak_rss_mib, base.server_peak_rss_mib),
        allocations_per_sec: div(
            Some(t.allocations_per_sec).filter(|_| t.allocations_ok > 0),
            Some(base.allocations_per_sec).filter(|_| base.allocations_ok > 0),
        ),
        max_rate: div(
            t.max_rate_pps.map(|r| r as f64),
            base.max_rate_pps.map(|r| r as f64),
        ),
    }
}

/// Ratios printed in comparison mode: every server against the floor, meridian against
/// coturn.
pub fn compare(reports: &[TargetReport]) -> Vec<Ratio> {
    let find = |n: &str| reports.iter().find(|r| r.target == n && r.error.is_none());
    let mut out = Vec::new();
    if let Some(floor) = find("floor") {
        for r in reports {
            if r.target != "floor" && r.error.is_none() {
                out.push(ratio(r, floor));
            }
        }
    }
    if let (Some(m), Some(c)) = (find("meridian"), find("coturn")) {
        out.push(ratio(m, c));
    }
    out
}

fn opt(v: Option<f64>, prec: usize) -> String {
    match v {
        Some(v) => format!("{v:.prec$}"),
        None => "-".into(),
    }
}

/// The Markdown table (one row per target) followed by failures and ratio lines.
pub fn markdown(reports: &[TargetReport], ratios: &[Ratio]) -> String {
    let mut s = String::new();
    s.push_str("| target | transport | clients | size B | rate pkt/s | sent | received | loss % | relayed pkt/s | RTT p50 µs | RTT p99 µs | RTT p999 µs | server CPU ns/pkt | peak RSS MiB | alloc/s |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in reports {
        if let Some(e) = &r.error {
            let _ = e;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | error (below) | - | - | - | - | - | - | - | - | - | - |",
                r.target, r.transport, r.clients, r.size
            );
            continue;
        }
        let Some(p) = &r.result else { continue };
        let rate = if p.rate_requested == 0 {
            "flat out".to_string()
        } else {
            p.rate_requested.to_string()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {:.0} |",
            r.target,
            r.transport,
            r.allocations_ok,
            r.size,
            rate,
            p.sent,
            p.received,
            p.loss_pct,
            p.relayed_pps,
            p.rtt_p50_us,
            p.rtt_p99_us,
            p.rtt_p999_us,
            opt(p.server_cpu_ns_per_packet, 0),
            opt(r.server_peak_rss_mib, 1),
            r.allocations_per_sec,
        );
    }
    for r in reports {
        if let Some(e) = &r.error {
            let _ = writeln!(s, "\n**{}** could not be measured: {e}", r.target);
        }
        if let Some(m) = r.max_rate_pps {
            let _ = writeln!(
                s,
                "\n{}: highest rate with < 0.1 % loss: {m} pkt/s{}",
                r.target,
                if r.bench_limited {
                    " (the bench could not send faster: a lower bound)"
                } else {
                    ""
                }
            );
        }
        if r.allocations_failed > 0 || !r.setup_errors.is_empty() {
            let _ = writeln!(
                s,
                "\n{}: {} allocations failed: {:?}",
                r.target, r.allocations_failed, r.setup_errors
            );
        }
        if let Some(p) = &r.result {
            if !p.errors.is_empty() {
                let _ = writeln!(s, "\n{}: errors during the run: {:?}", r.target, p.errors);
            }
        }
        if r.released_failed > 0 {
            let _ = writeln!(
                s,
                "\n{}: {} deallocations failed: {:?}",
                r.target, r.released_failed, r.teardown_errors
            );
        }
    }
    if !ratios.is_empty() {
        s.push('\n');
        for q in ratios {
            let _ = writeln!(
                s,
                "- {} vs {}: CPU/packet {}x, RTT p99 {}x, loss {}% vs {}%, peak RSS {}x, alloc/s {}x{}",
                q.target,
                q.baseline,
                opt(q.cpu_per_packet, 2),
                opt(q.rtt_p99, 2),
                opt(q.loss_pct_target, 3),
                opt(q.loss_pct_baseline, 3),
                opt(q.peak_rss, 2),
                opt(q.allocations_per_sec, 2),
                q.max_rate
                    .map(|m| format!(", max zero-loss rate {m:.2}x"))
                    .unwrap_or_default(),
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, cpu_ns: u64, p99_ms: u64) -> TargetReport {
        let mut t = Tally {
            sent: 1000,
            ..Default::default()
        };
        for i in 0..1000u64 {
            let rtt = if i >= 990 {
                p99_ms * 2_000_000
            } else {
                p99_ms * 1_000_000
            };
            t.echo(
                &super::super::payload::Stamp {
                    client: 0,
                    seq: i as u32,
                    sent_ns: 0,
                },
                rtt,
            );
        }
        TargetReport {
            target: name.into(),
            transport: "udp".into(),
            clients: 10,
            size: 100,
            allocations_ok: 10,
            allocations_per_sec: 100.0,
            result: Some(Phase::new(500, &t, 2.0, Some(cpu_ns))),
            server_peak_rss_mib: Some(10.0),
            ..Default::default()
        }
    }

    #[test]
    fn phase_counts_two_traversals_per_echo() {
        let r = report("x", 2_000_000, 1);
        let p = r.result.unwrap();
        assert_eq!(p.relayed_pps, 1000.0);
        assert_eq!(p.server_cpu_ns_per_packet, Some(1000.0));
        assert_eq!(p.loss_pct, 0.0);
    }

    #[test]
    fn ratios_against_floor_and_coturn() {
        let reports = vec![
            report("floor", 1_000_000, 1),
            report("coturn", 4_000_000, 3),
            report("meridian", 2_000_000, 2),
            TargetReport {
                target: "broken".into(),
                error: Some("nope".into()),
                ..Default::default()
            },
        ];
        let r = compare(&reports);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].target, "coturn");
        assert!((r[0].cpu_per_packet.unwrap() - 4.0).abs() < 1e-9);
        assert!((r[0].rtt_p99.unwrap() - 3.0).abs() < 0.01);
        assert_eq!(r[2].target, "meridian");
        assert_eq!(r[2].baseline, "coturn");
        assert!((r[2].cpu_per_packet.unwrap() - 0.5).abs() < 1e-9);
        let md = markdown(&reports, &r);
        assert!(
            md.contains("| floor | udp | 10 | 100 | 500 | 1000 | 1000 | 0.000 | 1000 |"),
            "{md}"
        );
        assert!(
            md.contains("- meridian vs coturn: CPU/packet 0.50x"),
            "{md}"
        );
        assert!(md.contains("**broken** could not be measured: nope"));
        let json = serde_json::to_value(&reports[0]).unwrap();
        assert_eq!(json["result"]["server_cpu_ns_per_packet"], 500.0);
    }
}
