//! Three `meridian serve` processes (regions eu, asia, us) on loopback against one real
//! `redis-server`: a device published over WHIP on B is listed by A's `/v1/rooms` with its
//! region; a WHEP request to A for B's room is redirected (307) and then played from B; a join
//! with an RTT ranking is redirected to the nearest region, a join for B's room to B; Redis
//! stopped and restarted while B's player keeps receiving media; a SIGKILLed node leaves
//! every other node's view within the death timeout.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::str0m_peer::{h264_access_unit, request, write_frame, Peer};
use common::{mint_token, Node, NodeOptions, WsClient};
use meridian_geo::testing::RedisServer;
use meridian_signaling::token::Role;
use serde_json::{json, Value};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::{Candidate, Rtc};

fn start_node(redis: &RedisServer, id: &str, region: &str) -> Node {
    Node::start_meridian(&NodeOptions {
        extra_toml: format!(
            "[cluster]\nnode_id = \"{id}\"\nregion = \"{region}\"\ndirectory = \"{}\"\nkey_prefix = \"ct\"\n",
            redis.url()
        ),
        ..NodeOptions::default()
    })
}

async fn get_json(http: SocketAddr, path: &str) -> Value {
    meridian_bench::client::signal::http_get_json(&format!("http://{http}"), path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Polls `f` every 20 ms for at most `within`.
async fn until<T>(within: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn region_names(regions: &Value) -> Vec<String> {
    regions["regions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["region"].as_str().map(str::to_string))
        .collect()
}

/// Publishes an H.264 track over WHIP to `http` as `identity` in `room`.
async fn whip_publish(
    http: SocketAddr,
    sfu: SocketAddr,
    room: &str,
    identity: &str,
) -> (Peer, Mid) {
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_h264(true)
        .build(Instant::now());
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let auth = format!("Bearer {}", mint_token(identity, room, Role::Device, 600));
    let r = request(
        http,
        "POST",
        "/whip",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/sdp"),
        ],
        &offer.to_sdp_string(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&r.body).unwrap())
        .unwrap();
    let mut peer = Peer::new(sfu, rtc).await;
    let c = Candidate::host(peer.local, "udp").unwrap();
    peer.rtc.add_local_candidate(c);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !peer.connected && Instant::now() < deadline {
        peer.step(Duration::from_millis(20)).await;
    }
    assert!(peer.connected, "WHIP publisher connected");
    (peer, mid)
}

/// Sends frames from `publisher` until `player` has `frames` more, within `within`.
async fn pump(
    publisher: &mut Peer,
    mid: Mid,
    player: &mut Peer,
    n: &mut u64,
    more: usize,
    within: Duration,
) {
    let au = h264_access_unit();
    let target = player.frames + more;
    let deadline = Instant::now() + within;
    while player.frames < target && Instant::now() < deadline {
        write_frame(publisher, mid, *n, &au);
        *n += 1;
        publisher.step(Duration::from_millis(5)).await;
        player.step(Duration::from_millis(5)).await;
    }
    assert!(
        player.frames >= target,
        "player received {} frames, wanted {target}",
        player.frames
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_route_redirect_and_survive_redis_and_a_kill() {
    let mut redis = RedisServer::start();
    let a = start_node(&redis, "node-a", "eu");
    let b = start_node(&redis, "node-b", "asia");
    let mut c = start_node(&redis, "node-c", "us");
    let (ha, hb, hc) = (
        a.ready.http.unwrap(),
        b.ready.http.unwrap(),
        c.ready.http.unwrap(),
    );
    let regions = until(
        Duration::from_secs(10),
        "A lists three regions",
        async || {
            let r = get_json(ha, "/v1/regions").await;
            (region_names(&r) == ["asia", "eu", "us"]).then_some(r)
        },
    )
    .await;
    assert_eq!(regions["node"], "node-a");
    let us = &regions["regions"][2]["nodes"][0];
    assert_eq!(us["id"], "node-c");
    assert_eq!(us["signaling"], format!("http://{hc}"));
    assert_eq!(
        us["stun"][0],
        c.ready.turn_udp[0].to_string(),
        "the STUN endpoint clients probe"
    );

    // A device on B is listed by A with its region.
    let (mut cam, mid) = whip_publish(hb, b.ready.sfu_udp.unwrap(), "arena", "cam-b").await;
    let listed = until(Duration::from_secs(10), "A lists B's device", async || {
        let r = get_json(ha, "/v1/rooms").await;
        r["devices"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["device"] == "cam-b").cloned())
    })
    .await;
    assert_eq!(
        (&listed["region"], &listed["node"], &listed["room"]),
        (&json!("asia"), &json!("node-b"), &json!("arena"))
    );

    // WHEP to A for B's room: 307 to B, then played from B.
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_h264(true)
        .build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let auth = format!(
        "Bearer {}",
        mint_token("viewer-1", "arena", Role::Viewer, 600)
    );
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/sdp"),
    ];
    let sdp = offer.to_sdp_string();
    let r = request(ha, "POST", "/whep?device=cam-b", &headers, &sdp).await;
    assert_eq!(r.status, 307, "{}", r.body);
    let location = r.header("location").expect("Location").to_string();
    assert_eq!(location, format!("http://{hb}/whep?device=cam-b"));
    let r = request(hb, "POST", "/whep?device=cam-b", &headers, &sdp).await;
    assert_eq!(r.status, 201, "{}", r.body);
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&r.body).unwrap())
        .unwrap();
    let mut player = Peer::new(b.ready.sfu_udp.unwrap(), rtc).await;
    let cand = Candidate::host(player.local, "udp").unwrap();
    player.rtc.add_local_candidate(cand);
    let mut n = 0;
    pump(
        &mut cam,
        mid,
        &mut player,
        &mut n,
        20,
        Duration::from_secs(15),
    )
    .await;

    // A join ranking us nearest is redirected to C; a join for B's room goes to B.
    let ranking = json!([{"region": "eu", "rtt_ms": 90.0}, {"region": "us", "rtt_ms": 20.0}, {"region": "asia", "rtt_ms": 180.0}]);
    let token = mint_token("player-1", "solo", Role::Player, 600);
    let mut ws = WsClient::signaling(ha);
    ws.send_json(&json!({"type": "join", "token": token, "req": 1, "regions": ranking}));
    let m = ws.next_json(Duration::from_secs(10)).await;
    assert_eq!(
        (&m["type"], &m["region"], &m["reason"]),
        (&json!("redirect"), &json!("us"), &json!("nearest")),
        "{m}"
    );
    assert_eq!(m["url"], format!("ws://{hc}/v1/ws"));
    assert_eq!(m["rtt_ms"], 20.0);
    assert_eq!(
        ws.expect_close(Duration::from_secs(5)).await.map(|c| c.0),
        Some(4302)
    );
    let mut ws = WsClient::signaling(hc);
    ws.send_json(
        &json!({"type": "join", "token": token, "req": 1, "regions": ranking, "redirects": 1}),
    );
    let joined = ws.next_json(Duration::from_secs(10)).await;
    assert_eq!(
        (&joined["type"], &joined["region"], &joined["node"]),
        (&json!("joined"), &json!("us"), &json!("node-c")),
        "{joined}"
    );
    assert_eq!(joined["route"]["redirects"], 1);
    drop(ws);
    let token = mint_token("player-2", "arena", Role::Player, 600);
    let mut ws = WsClient::signaling(hc);
    ws.send_json(&json!({"type": "join", "token": token, "req": 1, "regions": ranking}));
    let m = ws.next_json(Duration::from_secs(10)).await;
    assert_eq!(
        (&m["type"], &m["node"], &m["reason"]),
        (&json!("redirect"), &json!("node-b"), &json!("room_home")),
        "{m}"
    );
    drop(ws);

    // Redis goes away: B's player keeps receiving, B says so in /readyz, and all is back
    // when Redis returns (empty: it keeps nothing on disk).
    redis.stop();
    let admin_b = b.ready.admin.unwrap();
    until(
        Duration::from_secs(10),
        "B reports the directory unreachable",
        async || {
            let (code, body) = common::http_get(admin_b, "/readyz").ok()?;
            (code == 200 && body.contains("UNREACHABLE")).then_some(())
        },
    )
    .await;
    pump(
        &mut cam,
        mid,
        &mut player,
        &mut n,
        30,
        Duration::from_secs(15),
    )
    .await;
    assert!(redis.restart(), "redis-server restarted");
    until(
        Duration::from_secs(10),
        "B reports the directory reachable",
        async || {
            let (_, body) = common::http_get(admin_b, "/readyz").ok()?;
            body.contains("directory: redis reachable; 3 node(s)")
                .then_some(())
        },
    )
    .await;
    until(
        Duration::from_secs(10),
        "A lists B's device again",
        async || {
            let r = get_json(ha, "/v1/rooms").await;
            r["devices"]
                .as_array()?
                .iter()
                .any(|d| d["device"] == "cam-b")
                .then_some(())
        },
    )
    .await;
    pump(
        &mut cam,
        mid,
        &mut player,
        &mut n,
        10,
        Duration::from_secs(15),
    )
    .await;

    // SIGKILL C: it leaves A's view within the death timeout (800 ms) plus a sweep.
    c.signal(libc::SIGKILL);
    let killed = Instant::now();
    c.wait_timeout(Duration::from_secs(5)).expect("C exited");
    until(Duration::from_secs(5), "C leaves A's regions", async || {
        let r = get_json(ha, "/v1/regions").await;
        (region_names(&r) == ["asia", "eu"]).then_some(())
    })
    .await;
    let detected = killed.elapsed();
    assert!(
        detected < Duration::from_secs(3),
        "C detected dead after {detected:?}"
    );
    let metrics = common::http_get(a.ready.admin.unwrap(), "/metrics")
        .unwrap()
        .1;
    assert!(
        metrics.contains("meridian_cluster_node_deaths_total 1"),
        "{metrics}"
    );
    // Bad input: a join with a garbage ranking is refused with a clear error, nothing else.
    let mut ws = WsClient::signaling(ha);
    ws.send_json(
        &json!({"type": "join", "token": token, "regions": [{"region": "eu", "rtt_ms": -3}]}),
    );
    let close = ws
        .expect_close(Duration::from_secs(5))
        .await
        .expect("closed");
    assert_eq!(close.0, 4002, "{close:?}");
    assert!(close.1.contains("rtt_ms"), "{close:?}");
}
