//! The directory against a real `redis-server` on a free loopback port: three in-process
//! nodes share it; devices, sessions and room homes cross between them; Redis going away and
//! coming back (empty) is survived (nobody is judged dead meanwhile) and reconciled; garbage in Redis is ignored.

use std::sync::Arc;
use std::time::Duration;

use meridian_geo::testing::RedisServer;
use meridian_geo::{backend_for, DeviceEntry, Directory, Home, NodeInfo, Settings};

fn settings() -> Settings {
    Settings {
        heartbeat: Duration::from_millis(100),
        death_timeout: Duration::from_millis(400),
    }
}

fn info(id: &str, region: &str) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        region: region.into(),
        signaling: format!("http://{id}.test:7880"),
        stun: vec![format!("{id}.test:3478")],
        sessions: 0,
        devices: 0,
        max_sessions: 0,
        draining: false,
        heartbeat_ms: 0,
        version: "test".into(),
        trunk: None,
    }
}

fn device(room: &str, identity: &str) -> DeviceEntry {
    DeviceEntry {
        room: room.into(),
        identity: identity.into(),
        live: true,
        viewers: 0,
        bitrate_bps: 1_000_000,
        tracks: vec!["t1".into()],
        remote_nodes: vec![],
    }
}

async fn node(redis: &RedisServer, id: &str, region: &str) -> Arc<Directory> {
    let backend = backend_for(&redis.url(), "t", Duration::from_millis(500)).expect("backend");
    Directory::start(info(id, region), backend, settings()).await
}

/// Waits (at most 10 s) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn devices_seen(d: &Directory) -> Vec<(String, String)> {
    d.with_view(|v| {
        v.devices()
            .iter()
            .map(|(n, d)| (d.identity.clone(), n.region.clone()))
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_devices_sessions_and_room_homes() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", "eu").await;
    let b = node(&redis, "b", "asia").await;
    let c = node(&redis, "c", "us").await;
    for d in [&a, &b, &c] {
        until("every node sees three", || {
            d.with_view(|v| v.nodes().count() == 3)
        })
        .await;
    }
    // A device on b, homed there.
    assert_eq!(b.claim("arena").await, Home::Here);
    let _cam = b.session("s-cam".into(), "arena", "cam-1", "device");
    b.set_devices(vec![device("arena", "cam-1")]);
    until("a lists b's device with its region", || {
        devices_seen(&a) == [("cam-1".to_string(), "asia".to_string())]
    })
    .await;
    until("c knows the home", || {
        c.with_view(|v| v.room_home("arena").map(|n| n.id.clone())) == Some("b".into())
    })
    .await;
    // c must not take b's room, even racing its own view: the claim names b.
    match c.claim("arena").await {
        Home::Elsewhere(n) => assert_eq!((n.id.as_str(), n.region.as_str()), ("b", "asia")),
        Home::Here => panic!("c took b's room"),
    }
    let p = a.place("arena", &[], true);
    assert_eq!((p.node.id.as_str(), p.here), ("b", false));
    // Sessions are visible where they are.
    until("a sees b's session", || {
        a.with_view(|v| v.sessions("b").is_some_and(|s| s.contains_key("s-cam")))
    })
    .await;
    // Cheap: nothing but heartbeats in steady state.
    let before = b.backend().commands();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let per_sec = (b.backend().commands() - before) as f64;
    assert!(
        per_sec <= 50.0,
        "{per_sec} commands/s from one node in steady state"
    );

    // A clean leave drops c everywhere at once, long before its death timeout.
    c.leave().await;
    until("c is gone from a", || {
        a.with_view(|v| v.node("c").is_none())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_survived_and_reconciled() {
    let mut redis = RedisServer::start();
    let a = node(&redis, "a", "eu").await;
    let b = node(&redis, "b", "asia").await;
    assert_eq!(b.claim("r1").await, Home::Here);
    let _s = b.session("s1".into(), "r1", "cam", "device");
    b.set_devices(vec![device("r1", "cam")]);
    until("a sees b's device", || devices_seen(&a).len() == 1).await;

    redis.stop();
    until("a reports the directory down", || !a.status().reachable).await;
    assert!(a.status().error.is_some());
    // Without the directory each node still serves its own rooms: a claim succeeds locally.
    assert_eq!(a.claim("local-room").await, Home::Here);
    // Nobody is heard while the directory is away, which is no sign of b's death: for
    // three death timeouts b stays in a's view, and its room's home with it.
    for _ in 0..120 {
        assert!(
            a.with_view(|v| v.room_home("r1").is_some_and(|n| n.id == "b")),
            "a forgot b (or its room) while the directory was away"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        a.with_view(|v| v.node("a").is_some()),
        "a never drops itself"
    );

    // Redis returns empty (no persistence): both nodes write themselves back whole.
    assert!(redis.restart(), "redis-server restarted");
    until("a reports the directory up", || a.status().reachable).await;
    until("a sees b's device again", || {
        devices_seen(&a) == [("cam".to_string(), "asia".to_string())]
    })
    .await;
    until("b sees a's room again", || {
        b.with_view(|v| v.room_home("local-room").map(|n| n.id.clone())) == Some("a".into())
    })
    .await;
    until("b's session is stored again", || {
        redis.cli(&["HEXISTS", "t:node:b", "s:s1"]).trim() == "1"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_redis_is_ignored() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", "eu").await;
    // A malformed event and a node whose stored state is unreadable.
    redis.cli(&["PUBLISH", "t:events", "{not json"]);
    redis.cli(&["PUBLISH", "t:events", "{\"epoch\":1}"]);
    redis.cli(&["HSET", "t:node:z", "hdr", "garbage"]);
    redis.cli(&["SADD", "t:nodes", "z"]);
    let b = node(&redis, "b", "asia").await;
    until("a sees b", || a.with_view(|v| v.node("b").is_some())).await;
    until("b sees a", || b.with_view(|v| v.node("a").is_some())).await;
    assert!(b.with_view(|v| v.node("z").is_none()));
    // A claim whose owner's header is garbage is an error, and the room is served here.
    redis.cli(&["SET", "t:home:odd", "z"]);
    assert_eq!(b.claim("odd").await, Home::Here);
}
