//! `meridian bench cascade`, small, end to end: it starts its own redis-server, two nodes with
//! the trunk between them behind a delay shim, and its JSON report must show the trunked
//! subscribers receiving media with the emulated delay, one trunk copy per packet whatever the
//! number of subscribers, a CPU figure for both phases, and a player's controls on B reaching
//! the device on A each once, in order.

use std::process::Command;

use serde_json::Value;

#[test]
fn cascade_reports_one_trunk_copy_per_packet_and_the_delay() {
    let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args([
            "bench",
            "cascade",
            "--subscribers",
            "2,6",
            "--duration",
            "2",
        ])
        .args([
            "--delay-ms",
            "15",
            "--bitrate-kbps",
            "500",
            "--controls",
            "300",
            "--json",
        ])
        .output()
        .expect("run meridian bench cascade");
    assert!(
        out.status.success(),
        "bench cascade failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let runs = r["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    for run in runs {
        let s = run["subscribers"].as_u64().unwrap();
        for mode in ["local", "trunked"] {
            let p = &run[mode];
            assert_eq!(p["failed_clients"], 0, "{mode} ×{s}: {p}");
            assert!(
                p["delivered_packets"].as_u64().unwrap() > 0,
                "{mode} ×{s}: {p}"
            );
            assert!(p["loss_pct"].as_f64().unwrap() < 10.0, "{mode} ×{s}: {p}");
            assert!(
                p["b_cpu_ns_per_packet"].as_f64().is_some(),
                "{mode} ×{s}: {p}"
            );
        }
        let copies = run["trunked"]["trunk_copies_per_packet"].as_f64().unwrap();
        assert!(
            (0.85..=1.15).contains(&copies),
            "×{s}: {copies} trunk datagrams per published packet"
        );
        // The trunked media crossed the 15 ms shim; the local one did not.
        let (l, t) = (
            run["local"]["latency_ms_p50"].as_f64().unwrap(),
            run["trunked"]["latency_ms_p50"].as_f64().unwrap(),
        );
        assert!(t >= l + 14.0, "×{s}: trunked p50 {t} ms vs local {l} ms");
    }
    // Controls from B's player to A's device: all acknowledged, none lost or repeated.
    let c = &r["controls"];
    assert_eq!(
        (c["sent"].as_u64(), c["acked"].as_u64()),
        (Some(300), Some(300)),
        "{c}"
    );
    assert_eq!(
        (c["acked_lost"].as_u64(), c["duplicated"].as_u64()),
        (Some(0), Some(0)),
        "{c}"
    );
    assert_eq!(c["in_order"], true, "{c}");
}
