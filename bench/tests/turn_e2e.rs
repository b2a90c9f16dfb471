//! End-to-end runs of `bench turn` on loopback: the client against the in-bench floor
//! forwarder always, and against coturn when MERIDIAN_TEST_COTURN=1 (the test script sets
//! it after `apt-get install -y coturn`; with it set, a missing `turnserver` fails the test).

use meridian_bench::turn::{run_collect, TargetKind, Transport, TurnArgs};

fn small(target: TargetKind) -> TurnArgs {
    let mut a = TurnArgs::defaults();
    a.targets = vec![target];
    a.clients = 40;
    a.rate = 4_000;
    a.size = 100;
    a.duration = 1.0;
    a.drain = 2.0;
    a
}

#[test]
fn udp_clients_against_the_floor_forwarder() {
    let mut a = small(TargetKind::Floor);
    a.threads = 2;
    let out = run_collect(&a).unwrap();
    let r = &out.results[0];
    assert_eq!(r.error, None);
    assert_eq!(r.allocations_ok, 40);
    let p = r.result.as_ref().unwrap();
    // Paced at 4000/s for 1 s (token bucket, no initial burst).
    assert!(p.sent > 3_000 && p.sent <= 4_100, "sent {}", p.sent);
    assert_eq!(
        p.received, p.sent,
        "loopback floor should lose nothing at this rate"
    );
    assert_eq!(p.invalid, 0);
    assert!(p.rtt_p50_us > 0.0 && p.rtt_p50_us <= p.rtt_p99_us);
    assert!(p.server_cpu_ns_per_packet.is_some());
    assert!((p.relayed_pps - 2.0 * p.received as f64 / p.window_secs).abs() < 1e-6);
    assert!(r.max_rate_pps.is_none());
}

#[test]
fn find_max_rate_steps_up_until_it_fails_or_stops() {
    let mut a = small(TargetKind::Floor);
    a.find_max_rate = true;
    a.duration = 0.3;
    a.rate = 2_000;
    let out = run_collect(&a).unwrap();
    let r = &out.results[0];
    assert!(!r.steps.is_empty());
    assert_eq!(r.steps[0].rate_requested, 2_000);
    if r.steps.len() > 1 {
        assert_eq!(r.steps[1].rate_requested, 3_000);
    }
    assert!(r.max_rate_pps.is_some());
}

#[test]
fn misconfigured_runs_are_refused() {
    let mut a = small(TargetKind::Floor);
    a.size = 8;
    assert!(run_collect(&a).is_err());
    let mut a = small(TargetKind::Floor);
    a.transport = Transport::Tcp;
    let out = run_collect(&a).unwrap();
    assert!(out.results[0]
        .error
        .as_deref()
        .unwrap()
        .contains("UDP only"));
    let a = TurnArgs::defaults();
    assert!(run_collect(&a).is_err(), "no target given");
}

fn coturn_enabled() -> bool {
    if std::env::var("MERIDIAN_TEST_COTURN").as_deref() != Ok("1") {
        eprintln!(
            "coturn tests not run: set MERIDIAN_TEST_COTURN=1 after `apt-get install -y coturn`"
        );
        return false;
    }
    assert!(
        meridian_bench::turn::servers::coturn_available(),
        "MERIDIAN_TEST_COTURN=1 but `turnserver` is missing: install coturn (apt-get install -y coturn)"
    );
    true
}

#[test]
fn against_coturn_udp_tcp_long_term_and_rest() {
    if !coturn_enabled() {
        return;
    }
    for (transport, secret) in [
        (Transport::Udp, None),
        (Transport::Tcp, None),
        (Transport::Udp, Some("bench-secret".to_string())),
    ] {
        let mut a = small(TargetKind::Coturn);
        a.transport = transport;
        a.secret = secret.clone();
        let out = run_collect(&a).unwrap();
        let r = &out.results[0];
        assert_eq!(r.error, None, "{transport:?} secret={secret:?}");
        assert_eq!(r.allocations_ok, 40, "{:?}", r.setup_errors);
        let p = r.result.as_ref().unwrap();
        assert!(p.sent > 3_000, "{transport:?}: sent {}", p.sent);
        assert!(p.loss_pct < 1.0, "{transport:?}: loss {}", p.loss_pct);
        assert!(p.server_cpu_ns_per_packet.is_some());
        assert!(r.server_peak_rss_mib.unwrap() > 1.0);
        assert_eq!(r.released_ok, 40, "deallocated: {:?}", r.teardown_errors);
    }
}

#[test]
fn wrong_password_is_reported_not_hung() {
    if !coturn_enabled() {
        return;
    }
    // Start coturn with one password, then point the clients at it with another.
    let auth = meridian_bench::turn::servers::ServerAuth::LongTerm {
        user: "bench".into(),
        pass: "right".into(),
    };
    let g = meridian_bench::turn::servers::start_coturn(&auth, (41000, 41999), 1).unwrap();
    let mut a = small(TargetKind::External);
    a.targets = vec![];
    a.server = Some(g.udp.to_string());
    a.server_pid = Some(g.pid);
    a.user = Some("bench".into());
    a.password = Some("wrong".into());
    a.clients = 5;
    let t0 = std::time::Instant::now();
    let out = run_collect(&a).unwrap();
    let e = out.results[0].error.as_deref().unwrap();
    assert!(e.contains("401"), "{e}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(30));
}
