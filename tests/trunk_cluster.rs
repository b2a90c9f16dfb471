//! Cross-region rooms over the trunk, with `meridian serve` processes on loopback and one real
//! `redis-server`: the device simulator publishes H.264 on node A (eu); two str0m players join
//! the room on node B (asia), are served there (not redirected), and receive whole H.264
//! frames that crossed the trunk once per packet however many players B has; a node whose
//! trunk certificate comes from another CA is refused and counted.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{
    device_controls, metric, metrics, pki, spawn_device, start_trunk_node, token,
};
use common::{Node, TempDir};
use meridian_bench::client::signal::Signal;
use meridian_geo::testing::RedisServer;
use meridian_signaling::token::Role;
use serde_json::json;
use str0m::change::SdpAnswer;
use str0m::channel::{ChannelConfig, Reliability};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

fn start_node(redis: &RedisServer, pki: &Path, id: &str, region: &str) -> Node {
    start_trunk_node(redis, pki, id, region, "")
}

/// What a player saw.
struct Played {
    node: String,
    frames: usize,
    keyframe: bool,
    /// Acknowledgements of its controls, (id, seq) in arrival order.
    acks: Vec<(u64, u64)>,
}

/// A str0m player joins `room` on `http`, subscribes to its first published track, receives
/// H.264 frames until it has `want`, then sends `controls` controls (ids 1..) and waits for
/// their acknowledgements (all within 30 s).
async fn play(
    http: SocketAddr,
    sfu: SocketAddr,
    room: &str,
    who: &str,
    want: usize,
    controls: u64,
) -> Played {
    let base = format!("http://{http}");
    let mut signal = Signal::join(&base, &token(who, room, Role::Player), None)
        .await
        .expect("player joins");
    let node = signal.joined["node"].as_str().unwrap_or("").to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut track = signal.joined["tracks"][0]["id"]
        .as_str()
        .map(str::to_string);
    while track.is_none() {
        assert!(
            Instant::now() < deadline,
            "{who}: no track of the remote device appeared"
        );
        let ev = tokio::time::timeout(Duration::from_secs(20), signal.next_json())
            .await
            .expect("an event")
            .expect("signaling open");
        if ev["type"] == "track_published" {
            track = ev["track"]["id"].as_str().map(str::to_string);
        }
    }
    let track = track.unwrap();
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_h264(true)
        .build(Instant::now());
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.add_channel_with_config(ChannelConfig {
        label: "controls".into(),
        ordered: true,
        reliability: Reliability::Reliable,
        ..Default::default()
    });
    let (offer, pending) = api.apply().unwrap();
    signal
        .request(json!({"type": "subscribe", "track": track, "mid": mid.to_string()}))
        .await
        .expect("subscribe");
    let answer = signal
        .request(json!({"type": "offer", "sdp": offer.to_sdp_string()}))
        .await
        .expect("answer");
    rtc.sdp_api()
        .accept_answer(
            pending,
            SdpAnswer::from_sdp_string(answer["sdp"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(sfu).await.unwrap();
    let local = sock.local_addr().unwrap();
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    let (mut frames, mut keyframe) = (0usize, false);
    let (mut channel, mut sent, mut acks) = (None, 0u64, Vec::new());
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && (frames < want || (acks.len() as u64) < controls) {
        if let (Some(ch), true) = (channel, frames >= want && sent < controls) {
            if let Some(mut c) = rtc.channel(ch) {
                while sent < controls {
                    let m = format!(
                        r#"{{"id":{},"data":{{"from":"{who}","n":{}}}}}"#,
                        sent + 1,
                        sent + 1
                    );
                    match c.write(false, m.as_bytes()) {
                        Ok(true) => sent += 1,
                        _ => break,
                    }
                    if sent % 50 == 0 {
                        break;
                    }
                }
            }
        }
        let next = loop {
            match rtc.poll_output().unwrap() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = sock.send(&t.contents).await;
                }
                Output::Event(Event::MediaData(m)) => {
                    assert_eq!(m.params.spec().codec, Codec::H264);
                    if m.data
                        .windows(4)
                        .any(|w| w[..3] == [0, 0, 1] && matches!(w[3] & 0x1f, 5 | 7))
                    {
                        keyframe = true;
                    }
                    frames += 1;
                }
                Output::Event(Event::ChannelOpen(id, label)) if label == "controls" => {
                    channel = Some(id)
                }
                Output::Event(Event::ChannelData(d)) => {
                    let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
                    if let (Some(id), Some(seq)) = (v["ack"].as_u64(), v["seq"].as_u64()) {
                        acks.push((id, seq));
                    }
                }
                Output::Event(_) => {}
            }
        };
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        let input = match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source: sfu,
                    destination: local,
                    contents: buf[..n].try_into().unwrap(),
                },
            ),
            _ => Input::Timeout(Instant::now()),
        };
        rtc.handle_input(input).unwrap();
    }
    drop(signal);
    Played {
        node,
        frames,
        keyframe,
        acks,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_on_another_node_watch_a_device_over_the_trunk() {
    let redis = RedisServer::start();
    let dir = TempDir::new("trunk-cluster");
    let good = pki(&dir.path().join("pki"), &["node-a", "node-b"]);
    let good = good.parent().unwrap();
    // node-c's certificate is real, but from another CA.
    let rogue = pki(&dir.path().join("rogue"), &["node-c"]);
    let rogue = rogue.parent().unwrap();
    let a = start_node(&redis, good, "node-a", "eu");
    let b = start_node(&redis, good, "node-b", "asia");
    let (ha, hb) = (a.ready.http.unwrap(), b.ready.http.unwrap());

    let out_path = dir.path().join("device.out");
    let mut device = spawn_device(ha, "den", "rig", 90, &out_path);

    // B knows the room is homed on A before its players come.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = common::http_get_async(hb, "/v1/rooms").await.unwrap();
        if body.contains("\"rig\"") && body.contains("\"eu\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never listed A's device: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first session of the room on B (nothing mirrored there yet) joins once the home's
    // room state came: its `joined` lists the device's video track, so a subscription sent
    // right behind the join finds it.
    let first = Signal::join(
        &format!("http://{hb}"),
        &token("kim", "den", Role::Player),
        None,
    )
    .await
    .expect("kim joins on B");
    assert!(
        first.joined["tracks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["kind"] == "video")),
        "the first edge session's joined lists no remote track: {}",
        first.joined
    );
    drop(first);
    let sfu_b = b.ready.sfu_udp.unwrap();
    const CONTROLS: u64 = 200;
    // While they watch, the room list shows the device's cross-region viewers' node.
    let listed = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let (_, body) = common::http_get_async(ha, "/v1/rooms").await.unwrap();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let remote = v["devices"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|d| d["device"] == "rig")
                .map(|d| d["remote_nodes"].clone());
            if remote == Some(json!(["node-b"])) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    let (p1, p2, listed) = tokio::join!(
        play(hb, sfu_b, "den", "pat", 40, CONTROLS),
        play(hb, sfu_b, "den", "sam", 40, CONTROLS),
        listed
    );
    assert!(
        listed,
        "A's room list never showed node-b among the device's remote nodes"
    );
    for (who, p) in [("pat", &p1), ("sam", &p2)] {
        assert_eq!(
            p.node, "node-b",
            "{who} was served on B, not redirected to the room's home"
        );
        assert!(p.keyframe, "{who} received a keyframe");
        assert!(
            p.frames >= 40,
            "{who} received {} frames over the trunk",
            p.frames
        );
        // Every control acknowledged once, in order, with increasing home sequence numbers.
        let ids: Vec<u64> = p.acks.iter().map(|a| a.0).collect();
        assert_eq!(
            ids,
            (1..=CONTROLS).collect::<Vec<_>>(),
            "{who}'s acknowledgements"
        );
        assert!(
            p.acks.windows(2).all(|w| w[1].1 > w[0].1),
            "{who}: sequence numbers increase"
        );
    }
    // The device on A printed each player's controls once, in the order sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = device_controls(&out_path);
        let want: Vec<u64> = (1..=CONTROLS).collect();
        if seen.get("pat") == Some(&want) && seen.get("sam") == Some(&want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the device's controls: pat {:?}, sam {:?}",
            seen.get("pat").map(Vec::len),
            seen.get("sam").map(Vec::len)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // One copy per packet crossed the trunk for two players on B: B forwarded about twice
    // what it took from the trunk, and A sent B about what B took.
    // The players left, so the export stopped; the counters are exported every second: read
    // them once two reads a second apart agree.
    let mut last = (-1.0, -1.0, -1.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (sent, taken, forwarded) = loop {
        let (ma, mb) = (metrics(&a).await, metrics(&b).await);
        let now = (
            metric(
                &ma,
                "meridian_trunk_datagrams_total",
                &["direction=\"tx\"", "peer=\"node-b\""],
            ),
            metric(&mb, "meridian_sfu_trunk_packets_in_total", &[]),
            metric(&mb, "meridian_sfu_forwarded_rtp_total", &[]),
        );
        if now == last || Instant::now() > deadline {
            break now;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    };
    eprintln!("trunk: A sent {sent} datagrams to B; B took {taken} from the trunk and forwarded {forwarded}");
    let ma = metrics(&a).await;
    assert!(taken > 100.0, "B took {taken} packets from the trunk");
    assert!(
        forwarded >= 1.8 * taken * 0.9,
        "B forwarded {forwarded} for {taken} trunk packets and two players"
    );
    assert!(
        sent >= taken * 0.9 && sent <= taken * 1.2 + 100.0,
        "A sent {sent} datagrams to B, B took {taken}: more than one copy per packet"
    );
    assert!(metric(&ma, "meridian_trunk_rtt_seconds", &["peer=\"node-b\""]) > 0.0);
    assert!(
        metric(
            &ma,
            "meridian_trunk_bytes_total",
            &["peer=\"node-b\"", "direction=\"tx\""]
        ) > 0.0
    );

    // A node certified by another CA: its player's node cannot reach A's trunk; A refuses
    // the handshake and counts it.
    let c = start_node(&redis, rogue, "node-c", "us");
    let hc = c.ready.http.unwrap();
    let mut signal = Signal::join(
        &format!("http://{hc}"),
        &token("eve", "den", Role::Player),
        None,
    )
    .await
    .expect("eve joins on C");
    assert_eq!(signal.joined["node"], "node-c");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = metrics(&a).await;
        if metric(
            &m,
            "meridian_trunk_refused_total",
            &["reason=\"certificate\""],
        ) >= 1.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A never refused node-c's certificate"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), signal.next_json()).await;
    }
    device.stop(Duration::from_secs(5));
}
