//! Failover with `meridian serve` processes on loopback, a real `redis-server` and the trunk:
//! the device simulator publishes on node A; a re-homing str0m player (meridian-bench's)
//! watches it from node B, its nearest, while sending controls. SIGKILL of B: the player
//! notices, joins C (its next region), resumes and receives A's video again over C's trunk,
//! and every control it had sent — acknowledged or not — reaches the device exactly once,
//! in order. Then Redis stops for longer than the death timeout: media and controls keep
//! flowing. A draining node answers new TURN clients with 300 Try Alternate naming the other
//! node's TURN server and new joins with a redirect to the other node, and exits 0 as soon as
//! its last session is gone.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{
    device_controls, pki, spawn_device, start_trunk_node, start_trunk_node_draining, token,
};
use common::TempDir;
use meridian_bench::client::player::{self, PlayerOptions, PlayerReport};
use meridian_geo::rehome::Known;
use meridian_geo::testing::RedisServer;
use meridian_signaling::token::Role;

/// The controls the player may send: more than the test takes (it stops the player).
const CONTROLS: u64 = 20_000;

/// Waits (at most 30 s) until the device has `n` controls from `who`; returns how many, or
/// `None` when it did not happen.
async fn device_has(out: &std::path::Path, who: &str, n: usize) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = device_controls(out).get(who).map_or(0, Vec::len);
        if got >= n {
            return Some(got);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn describe(r: &PlayerReport) -> String {
    format!(
        "legs {:?}, gaps {:?}, sent {}, acked {}, failed joins {} {:?}",
        r.legs
            .iter()
            .map(|l| (
                &l.node,
                l.frames,
                l.datagrams,
                l.keyframe_requests,
                &l.ended
            ))
            .collect::<Vec<_>>(),
        r.gaps,
        r.sent,
        r.acks.len(),
        r.failed_joins,
        r.join_errors
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_whose_node_is_killed_resumes_on_its_next_region() {
    let mut redis = RedisServer::start();
    let dir = TempDir::new("failover");
    let ca = pki(&dir.path().join("pki"), &["node-a", "node-b", "node-c"]);
    let ca = ca.parent().unwrap();
    let a = start_trunk_node(&redis, ca, "node-a", "eu", "");
    let mut b = start_trunk_node(&redis, ca, "node-b", "us", "");
    let c = start_trunk_node(&redis, ca, "node-c", "asia", "");
    let (ha, hb, hc) = (
        a.ready.http.unwrap(),
        b.ready.http.unwrap(),
        c.ready.http.unwrap(),
    );
    let out = dir.path().join("device.out");
    let _device = spawn_device(ha, "den", "rig", 120, &out);
    // Every node lists the device before the player comes.
    for h in [hb, hc] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, body) = common::http_get_async(h, "/v1/rooms").await.unwrap();
            if body.contains("\"rig\"") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{h} never listed the device: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The player measured us 10 ms, asia 20 ms, eu 30 ms.
    let known = |node: &str, region: &str, http, rtt| Known {
        node: node.into(),
        region: region.into(),
        signaling: format!("http://{http}"),
        rtt_ms: Some(rtt),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let opts = PlayerOptions {
        entry: format!("http://{hb}"),
        token: token("pat", "den", Role::Player),
        watch: "rig".into(),
        known: vec![
            known("node-a", "eu", ha, 30.0),
            known("node-b", "us", hb, 10.0),
            known("node-c", "asia", hc, 20.0),
        ],
        controls: CONTROLS,
        control_every: Duration::from_millis(10),
        silence: Duration::from_secs(2),
        run_for: Duration::from_secs(90),
        stop: Some(stopped),
        done_after_frames: 0,
        local: None,
        progress: None,
    };
    let play = tokio::spawn(player::run(opts));

    // Once the device has 100 of the player's controls, B dies.
    // A wait that fails stops the player and shows what it saw.
    macro_rules! reached {
        ($n:expr, $what:expr) => {{
            let n = $n;
            match device_has(&out, "pat", n).await {
                Some(g) => g,
                None => {
                    let _ = stop.send(true);
                    let r = play.await.expect("player task");
                    panic!(
                        "{}: the device never got {n} controls from pat; {}",
                        $what,
                        describe(&r)
                    );
                }
            }
        }};
    }
    reached!(100, "before the kill");
    b.signal(libc::SIGKILL);
    assert!(
        b.wait_timeout(Duration::from_secs(5)).is_some(),
        "node-b did not die"
    );
    // The player re-homes and its controls flow again.
    let n = device_controls(&out).get("pat").map_or(0, Vec::len);
    reached!(n + 100, "after the re-home");

    // The directory goes away for longer than the death timeout (800 ms): the controls keep
    // coming over C's trunk, and the media with them (a silence over 2 s would make the
    // player re-home again).
    redis.stop();
    let redis_stopped = Instant::now();
    let n = device_controls(&out).get("pat").map_or(0, Vec::len);
    reached!(n + 200, "with Redis down");
    assert!(
        redis_stopped.elapsed() > Duration::from_millis(1500),
        "200 controls at 10 ms each"
    );
    let _ = stop.send(true);

    let report = play.await.expect("player task");
    let nodes: Vec<&str> = report.legs.iter().map(|l| l.node.as_str()).collect();
    eprintln!("{}", describe(&report));
    assert_eq!(
        nodes,
        ["node-b", "node-c"],
        "started on its nearest node, re-homed once on its next region"
    );
    assert_eq!(
        report.gaps.len(),
        1,
        "one re-home with media before and after"
    );
    assert_eq!(report.unrecovered, 0);
    let last = report.legs.last().unwrap();
    assert!(
        last.last_frame
            .is_some_and(|t| t > redis_stopped + Duration::from_secs(1)),
        "media on node-c after Redis stopped"
    );
    assert_eq!(report.conflicting_acks, 0, "no control applied twice");
    // Acknowledged: a prefix of what was sent (the last few may be in flight at the stop),
    // with sequence numbers increasing with the ids.
    let acked: Vec<u64> = report.acks.keys().copied().collect();
    assert!(report.sent >= 400, "{} controls sent", report.sent);
    assert_eq!(
        acked,
        (1..=acked.len() as u64).collect::<Vec<_>>(),
        "acknowledged ids"
    );
    assert!(
        acked.len() as u64 + 20 >= report.sent,
        "{} of {} acknowledged",
        acked.len(),
        report.sent
    );
    let seqs: Vec<u64> = report.acks.values().copied().collect();
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "sequence numbers increase with the ids"
    );
    // The device got each control once, in order, across the re-home: every acknowledged one
    // and nothing that was not sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = device_controls(&out).remove("pat").unwrap_or_default();
        if got.len() >= acked.len() || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        got,
        (1..=got.len() as u64).collect::<Vec<_>>(),
        "the device's controls from pat: each once, in order"
    );
    assert!(got.len() >= acked.len() && got.len() as u64 <= report.sent);
    drop(a);
    drop(c);
}

/// A bare TURN Allocate (no credentials: a draining node answers before authenticating);
/// returns the error code and the ALTERNATE-SERVER of the answer.
fn allocate(turn: std::net::SocketAddr) -> (u16, Option<std::net::SocketAddr>) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut req = vec![0x00, 0x03, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&[7u8; 12]);
    req.extend_from_slice(&[0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0]);
    sock.send_to(&req, turn).unwrap();
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf).expect("an answer to Allocate");
    let (mut code, mut alt) = (0u16, None);
    let mut i = 20;
    while i + 4 <= n {
        let t = u16::from_be_bytes([buf[i], buf[i + 1]]);
        let len = u16::from_be_bytes([buf[i + 2], buf[i + 3]]) as usize;
        let v = &buf[i + 4..(i + 4 + len).min(n)];
        match t {
            0x0009 if v.len() >= 4 => code = v[2] as u16 * 100 + v[3] as u16,
            0x8023 if v.len() >= 8 && v[1] == 1 => {
                let port = u16::from_be_bytes([v[2], v[3]]);
                alt = Some(std::net::SocketAddr::from(([v[4], v[5], v[6], v[7]], port)));
            }
            _ => {}
        }
        i += 4 + len.div_ceil(4) * 4;
    }
    (code, alt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_sends_turn_clients_on_and_exits_when_its_sessions_are_gone() {
    let redis = RedisServer::start();
    let start = |id: &str, region: &str| {
        common::Node::start_meridian(&common::NodeOptions {
            extra_toml: format!(
                "[cluster]\nnode_id = \"{id}\"\nregion = \"{region}\"\ndirectory = \"{}\"\nkey_prefix = \"dr\"\n",
                redis.url()
            ),
            drain_secs: 20,
            ..common::NodeOptions::default()
        })
    };
    let mut a = start("node-a", "eu");
    let b = start("node-b", "us");
    let ha = a.ready.http.unwrap();
    // A sees B (its alternate) before the drain.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = common::http_get_async(ha, "/v1/regions").await.unwrap();
        if body.contains("\"us\"") {
            break;
        }
        assert!(Instant::now() < deadline, "A never listed B: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        allocate(a.turn_udp()).0,
        401,
        "before the drain: asks for credentials"
    );
    // A player session on A holds the drain open.
    let (ws, joined) = common::WsClient::join(ha, &token("pat", "den", Role::Player)).await;
    assert_eq!(joined["node"], "node-a");
    a.signal(libc::SIGTERM);
    // New TURN clients are sent to B's TURN server.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (code, alt) = loop {
        let r = allocate(a.turn_udp());
        if r.0 != 401 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, 300, "draining: Try Alternate");
    assert_eq!(alt, Some(b.turn_udp()), "the alternate is B's TURN server");
    // New joins: a room not homed here is redirected to where the drain sends its sessions;
    // the room homed here (no trunk to serve it elsewhere) is refused with 1001.
    let mut c = common::WsClient::signaling(ha);
    c.send_json(&serde_json::json!({"type": "join", "token": token("sam", "elsewhere", Role::Player), "v": 1, "req": 1}));
    let r = c.next_json(Duration::from_secs(5)).await;
    assert_eq!(
        (r["type"].as_str(), r["reason"].as_str(), r["node"].as_str()),
        (Some("redirect"), Some("draining"), Some("node-b")),
        "{r}"
    );
    let mut c = common::WsClient::signaling(ha);
    c.send_json(&serde_json::json!({"type": "join", "token": token("sam", "den", Role::Player), "v": 1, "req": 1}));
    assert_eq!(
        c.expect_close(Duration::from_secs(5)).await.map(|c| c.0),
        Some(1001)
    );
    // A waits for its session (its drain deadline is 20 s) …
    let held = Instant::now();
    assert!(
        a.wait_timeout(Duration::from_millis(1500)).is_none(),
        "A exited with a session left"
    );
    // … and exits 0 once it is gone, long before the deadline.
    drop(ws);
    let status = a
        .wait_timeout(Duration::from_secs(8))
        .expect("A exits once its session left");
    assert!(
        status.success(),
        "A's exit status after the drain: {status}"
    );
    assert!(
        held.elapsed() < Duration::from_secs(15),
        "A waited for the deadline"
    );
    drop(b);
}

/// Waits (at most 20 s) until `http` lists `device` in `GET /v1/rooms` with a region other
/// than `not_region`; returns the listing.
async fn listed(http: std::net::SocketAddr, device: &str, not_region: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = common::http_get_async(http, "/v1/rooms").await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let found = v["devices"].as_array().into_iter().flatten().any(|d| {
            d["device"] == device && d["region"].as_str().is_some_and(|r| r != not_region)
        });
        if found {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{http} never listed {device} outside {not_region:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM of the node that both the device and a player are on: the node tells the device
/// to move first (it publishes on its next node, which takes the room's home along), then the
/// player, which joins its next node beside its current connection and switches once media
/// flows there (make-before-break). Controls keep reaching the device, and the node exits 0
/// as soon as both have left, long before its 20 s deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_moves_its_device_and_players_make_before_break() {
    let redis = RedisServer::start();
    let dir = TempDir::new("drain-move");
    let ca = pki(&dir.path().join("pki"), &["node-a", "node-b", "node-c"]);
    let ca = ca.parent().unwrap();
    let mut a = start_trunk_node_draining(&redis, ca, "node-a", "eu", "", 20);
    let b = start_trunk_node(&redis, ca, "node-b", "us", "");
    let c = start_trunk_node(&redis, ca, "node-c", "asia", "");
    let (ha, hb, hc) = (
        a.ready.http.unwrap(),
        b.ready.http.unwrap(),
        c.ready.http.unwrap(),
    );
    let out = dir.path().join("device.out");
    let _device = spawn_device(ha, "den", "rig", 120, &out);
    for h in [hb, hc] {
        listed(h, "rig", "").await;
    }
    let known = |node: &str, region: &str, http, rtt| Known {
        node: node.into(),
        region: region.into(),
        signaling: format!("http://{http}"),
        rtt_ms: Some(rtt),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let opts = PlayerOptions {
        entry: format!("http://{ha}"),
        token: token("pat", "den", Role::Player),
        watch: "rig".into(),
        known: vec![
            known("node-a", "eu", ha, 10.0),
            known("node-b", "us", hb, 20.0),
            known("node-c", "asia", hc, 30.0),
        ],
        controls: CONTROLS,
        control_every: Duration::from_millis(10),
        silence: Duration::from_secs(2),
        run_for: Duration::from_secs(90),
        stop: Some(stopped),
        done_after_frames: 0,
        local: None,
        progress: None,
    };
    let play = tokio::spawn(player::run(opts));
    macro_rules! reached {
        ($n:expr, $what:expr) => {{
            let n = $n;
            match device_has(&out, "pat", n).await {
                Some(g) => g,
                None => {
                    let _ = stop.send(true);
                    let r = play.await.expect("player task");
                    panic!(
                        "{}: the device never got {n} controls from pat; {}",
                        $what,
                        describe(&r)
                    );
                }
            }
        }};
    }
    reached!(50, "before the drain");
    a.signal(libc::SIGTERM);
    let drained = Instant::now();
    let status = a
        .wait_timeout(Duration::from_secs(15))
        .expect("A exits once its sessions moved");
    assert!(
        status.success(),
        "A's exit status after the drain: {status}"
    );
    assert!(
        drained.elapsed() < Duration::from_secs(12),
        "A waited {:?}: its sessions did not move",
        drained.elapsed()
    );
    // The device publishes elsewhere, and the room with it.
    let rooms = listed(hb, "rig", "eu").await;
    eprintln!("after the drain: {rooms}");
    // Controls keep reaching the device through its new node.
    let n = device_controls(&out).get("pat").map_or(0, Vec::len);
    reached!(n + 100, "after the drain");
    let _ = stop.send(true);
    let report = play.await.expect("player task");
    eprintln!(
        "{}; moves {} {:?}",
        describe(&report),
        report.moves,
        report.move_gaps
    );
    let nodes: Vec<&str> = report.legs.iter().map(|l| l.node.as_str()).collect();
    assert_eq!(nodes.len(), 2, "one move: {nodes:?}");
    assert_eq!(nodes[0], "node-a");
    assert_ne!(nodes[1], "node-a");
    assert_eq!(
        report.moves, 1,
        "moved make-before-break, not after a failure"
    );
    assert!(
        report.gaps.is_empty(),
        "no failure re-home: {:?}",
        report.gaps
    );
    assert_eq!(report.unrecovered, 0);
    assert!(
        report.legs[1].frames > 30,
        "media on the new node: {}",
        describe(&report)
    );
    // Every acknowledged control reached the device.
    let deadline = Instant::now() + Duration::from_secs(10);
    let got: std::collections::BTreeSet<u64> = loop {
        let got: std::collections::BTreeSet<u64> = device_controls(&out)
            .remove("pat")
            .unwrap_or_default()
            .into_iter()
            .collect();
        if report.acks.keys().all(|id| got.contains(id)) || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let missing: Vec<u64> = report
        .acks
        .keys()
        .filter(|id| !got.contains(id))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged, never delivered: {missing:?}"
    );
    drop(b);
    drop(c);
}

/// SIGKILL of the device's node: the device simulator republishes on the next node it knows,
/// that node becomes the room's home once the death is seen, and the player, which watched
/// over the trunk from its own node, receives the device again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_node_is_killed_republishes_and_is_watched_again() {
    let redis = RedisServer::start();
    let dir = TempDir::new("device-kill");
    let ca = pki(&dir.path().join("pki"), &["node-a", "node-b", "node-c"]);
    let ca = ca.parent().unwrap();
    let mut a = start_trunk_node(&redis, ca, "node-a", "eu", "");
    let b = start_trunk_node(&redis, ca, "node-b", "us", "");
    let c = start_trunk_node(&redis, ca, "node-c", "asia", "");
    let (ha, hb, hc) = (
        a.ready.http.unwrap(),
        b.ready.http.unwrap(),
        c.ready.http.unwrap(),
    );
    // Every node is listed before the device starts: it learns them all from A.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = common::http_get_async(ha, "/v1/regions").await.unwrap();
        if ["\"eu\"", "\"us\"", "\"asia\""]
            .iter()
            .all(|r| body.contains(r))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A never listed 3 regions: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = dir.path().join("device.out");
    let _device = spawn_device(ha, "den", "rig", 120, &out);
    for h in [hb, hc] {
        listed(h, "rig", "").await;
    }
    let known = |node: &str, region: &str, http, rtt| Known {
        node: node.into(),
        region: region.into(),
        signaling: format!("http://{http}"),
        rtt_ms: Some(rtt),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let opts = PlayerOptions {
        entry: format!("http://{hb}"),
        token: token("pat", "den", Role::Player),
        watch: "rig".into(),
        known: vec![
            known("node-a", "eu", ha, 30.0),
            known("node-b", "us", hb, 10.0),
            known("node-c", "asia", hc, 20.0),
        ],
        controls: CONTROLS,
        control_every: Duration::from_millis(10),
        silence: Duration::from_secs(2),
        run_for: Duration::from_secs(90),
        stop: Some(stopped),
        done_after_frames: 0,
        local: None,
        progress: None,
    };
    let progress = std::sync::Arc::new(player::Progress::default());
    let play = tokio::spawn(player::run(PlayerOptions {
        progress: Some(progress.clone()),
        ..opts
    }));
    let frames = |p: &player::Progress| p.frames.load(std::sync::atomic::Ordering::Relaxed);
    let wait_frames = async |n: u64, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while frames(&progress) < n {
            assert!(
                Instant::now() < deadline,
                "{what}: {} frames, not {n}",
                frames(&progress)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_frames(60, "before the kill").await;
    a.signal(libc::SIGKILL);
    assert!(
        a.wait_timeout(Duration::from_secs(5)).is_some(),
        "node-a did not die"
    );
    let killed = Instant::now();
    // The device is published from another region, and the player gets its frames again.
    let rooms = listed(hb, "rig", "eu").await;
    eprintln!("after the kill ({:?}): {rooms}", killed.elapsed());
    let n = frames(&progress);
    wait_frames(n + 60, "after the device re-homed").await;
    let _ = stop.send(true);
    let report = play.await.expect("player task");
    eprintln!("{}", describe(&report));
    let last = report.legs.last().unwrap();
    assert!(
        last.last_frame.is_some_and(|t| t > killed),
        "media after the kill: {}",
        describe(&report)
    );
    assert_eq!(report.unrecovered, 0, "{}", describe(&report));
    drop(b);
    drop(c);
}

/// Where `http`'s `GET /v1/rooms` lists each device: identity → the nodes it is listed on.
async fn device_nodes(
    http: std::net::SocketAddr,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let (_, body) = common::http_get_async(http, "/v1/rooms").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for d in v["devices"].as_array().into_iter().flatten() {
        if let (Some(who), Some(node)) = (d["device"].as_str(), d["node"].as_str()) {
            out.entry(who.into()).or_default().push(node.into());
        }
    }
    out
}

/// A directory outage splits a room: while Redis is down a device of room `den` joins node-b
/// and another joins node-a, and neither node can tell the other, so each becomes the room's
/// home and serves its own device. Once Redis is back both claims are in every view, which
/// resolves the room to node-a (the lowest id); node-b counts the split once and tells its
/// device to move there, and the room has one home again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_homed_on_two_nodes_during_a_directory_outage_ends_on_one() {
    let mut redis = RedisServer::start();
    let dir = TempDir::new("split-home");
    let ca = pki(&dir.path().join("pki"), &["node-a", "node-b"]);
    let ca = ca.parent().unwrap();
    let a = start_trunk_node(&redis, ca, "node-a", "eu", "");
    let b = start_trunk_node(&redis, ca, "node-b", "us", "");
    let (ha, hb) = (a.ready.http.unwrap(), b.ready.http.unwrap());
    // Each knows the other before the outage.
    for h in [ha, hb] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, body) = common::http_get_async(h, "/v1/regions").await.unwrap();
            if body.contains("\"eu\"") && body.contains("\"us\"") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{h} never listed both regions: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    redis.stop();
    for node in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = common::http_get_async(node.admin(), "/readyz")
                .await
                .unwrap();
            if body.contains("UNREACHABLE") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the node never reported the directory unreachable: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (out_a, out_b) = (dir.path().join("rig-a.out"), dir.path().join("rig-b.out"));
    let _rig_b = spawn_device(hb, "den", "rig-b", 120, &out_b);
    let _rig_a = spawn_device(ha, "den", "rig-a", 120, &out_a);
    // Split: each node serves its own device of the room.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (on_a, on_b) = (device_nodes(ha).await, device_nodes(hb).await);
        if on_a.get("rig-a") == Some(&vec!["node-a".to_string()])
            && on_b.get("rig-b") == Some(&vec!["node-b".to_string()])
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "each node should serve its own device during the outage: a {on_a:?}, b {on_b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(redis.restart(), "redis-server restarts");
    // One home again: both devices on node-a, as both nodes list them.
    let deadline = Instant::now() + Duration::from_secs(20);
    let want: std::collections::BTreeMap<String, Vec<String>> = [
        ("rig-a".to_string(), vec!["node-a".to_string()]),
        ("rig-b".to_string(), vec!["node-a".to_string()]),
    ]
    .into();
    loop {
        let (on_a, on_b) = (device_nodes(ha).await, device_nodes(hb).await);
        if on_a == want && on_b == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the split room never came back to node-a alone: a {on_a:?}, b {on_b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ma, mb) = (
        common::cluster::metrics(&a).await,
        common::cluster::metrics(&b).await,
    );
    use common::cluster::metric;
    assert_eq!(metric(&mb, "meridian_room_splits_total", &[]), 1.0, "{mb}");
    assert_eq!(metric(&mb, "meridian_room_split_moves_total", &[]), 1.0);
    assert_eq!(metric(&ma, "meridian_room_splits_total", &[]), 0.0);
}
