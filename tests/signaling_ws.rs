//! The signaling WebSocket (`/v1/ws`) and HTTP API seen from a plain client: token refusals
//! and their close codes, the join rules, per-message errors that leave the connection
//! usable, size and rate limits, room presence events, and `/v1/dev-token` when dev tokens
//! are off. Each test starts its own node (tests/common/mod.rs); the WebSocket client is a
//! tungstenite socket on a helper thread ([`common::WsClient`]).

mod common;

use std::time::{Duration, Instant};

use common::{mint_token, Node, NodeOptions, WsClient, WsEvent, API_KEY, API_SECRET};
use meridian_signaling::token::{Role, TokenIssuer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Bound on any single reply or event.
const WAIT: Duration = Duration::from_secs(10);

fn start(signaling_toml: &str) -> Node {
    Node::start_meridian(&NodeOptions {
        signaling_toml: signaling_toml.to_string(),
        ..NodeOptions::default()
    })
}

fn http(node: &Node) -> std::net::SocketAddr {
    node.ready.http.expect("node has a signaling listener")
}

/// Connects, sends `first` as the first message and returns the close frame that follows.
async fn refused(node: &Node, first: &str) -> (u16, String) {
    let mut c = WsClient::signaling(http(node));
    c.send_text(first);
    let close = c.expect_close(WAIT).await;
    assert!(
        c.stash.is_empty(),
        "no message expected before the close: {:?}",
        c.stash
    );
    close.expect("close frame with a code")
}

fn join_msg(token: &str) -> String {
    json!({"type": "join", "token": token, "v": 1, "req": 1}).to_string()
}

/// Asserts `v` is an error with `code` (and `req` when given).
#[track_caller]
fn assert_error(v: &Value, code: &str, req: Option<u64>) {
    assert_eq!(v["type"], "error", "expected an error {code}: {v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["req"], json!(req), "req not echoed: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {v}"
    );
}

/// A ping still gets its pong: the connection is usable.
async fn assert_alive(c: &mut WsClient) {
    let pong = c.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_4001_and_a_reason() {
    let node = start("");
    let now = common::unix_now();
    let issuer = TokenIssuer::new(API_KEY, API_SECRET.as_bytes()).unwrap();
    let expired = issuer
        .mint("alice", "lobby", Role::Player, now - 3600, 60)
        .unwrap();
    let not_yet = issuer
        .mint("alice", "lobby", Role::Player, now + 3600, 60)
        .unwrap();
    // Signed under the right key name with the wrong secret: the signature does not verify.
    let forged = TokenIssuer::new(API_KEY, b"not-the-secret")
        .unwrap()
        .mint("alice", "lobby", Role::Device, now, 600)
        .unwrap();
    // A valid token whose payload was swapped for another (role upgraded to device).
    let good = issuer
        .mint("alice", "lobby", Role::Player, now, 600)
        .unwrap();
    let device = issuer
        .mint("alice", "lobby", Role::Device, now, 600)
        .unwrap();
    let g: Vec<&str> = good.split('.').collect();
    let d: Vec<&str> = device.split('.').collect();
    let tampered = format!("{}.{}.{}", g[0], d[1], g[2]);
    let unknown_key = TokenIssuer::new("some-other-key", API_SECRET.as_bytes())
        .unwrap()
        .mint("alice", "lobby", Role::Player, now, 600)
        .unwrap();
    let cases: [(&str, String, &str); 6] = [
        ("expired", expired, "expired"),
        ("not yet valid", not_yet, "not valid before"),
        ("forged signature", forged, "signature"),
        ("tampered payload", tampered, "signature"),
        ("unknown key", unknown_key, "unknown API key"),
        ("garbage", "not-a-token".into(), "well-formed"),
    ];
    for (what, token, reason_part) in cases {
        let (code, reason) = refused(&node, &join_msg(&token)).await;
        assert_eq!(code, 4001, "{what}: close code (reason {reason:?})");
        assert!(
            reason.contains(reason_part),
            "{what}: close reason {reason:?} does not contain {reason_part:?}"
        );
    }
    // The good token does join (so the refusals above were about the tokens).
    let (_c, joined) = WsClient::join(http(&node), &good).await;
    assert_eq!(joined["identity"], "alice");
    assert_eq!(joined["role"], "player");
    assert_eq!(joined["room"], "lobby");
    assert_eq!(joined["v"], 1);
    assert!(joined["participant"].as_str().is_some(), "{joined}");
    assert!(joined["expires"].as_u64().unwrap() >= now + 600, "{joined}");
    assert!(joined["ice_servers"].is_array(), "{joined}");
    assert_eq!(joined["participants"], json!([]), "{joined}");
    assert_eq!(joined["tracks"], json!([]), "{joined}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_rules_close_with_4002_and_4005() {
    let node = start("join_timeout_secs = 1\n");
    let token = mint_token("bob", "lobby", Role::Viewer, 600);

    let (code, reason) = refused(&node, r#"{"type":"ping","req":1}"#).await;
    assert_eq!(code, 4002, "first message ping: {reason}");
    assert!(reason.contains("join"), "{reason}");

    let (code, reason) = refused(&node, "{not json").await;
    assert_eq!(code, 4002, "first message not JSON: {reason}");

    let (code, reason) = refused(&node, r#"{"type":"join","req":1}"#).await;
    assert_eq!(code, 4002, "join without a token: {reason}");

    let v2 = json!({"type": "join", "token": token, "v": 2, "req": 1}).to_string();
    let (code, reason) = refused(&node, &v2).await;
    assert_eq!(code, 4005, "v=2: {reason}");
    assert!(reason.contains('2') && reason.contains('1'), "{reason}");

    // Silence: closed after join_timeout_secs (1 s), not much earlier.
    let started = Instant::now();
    let mut c = WsClient::signaling(http(&node));
    let (code, reason) = c.expect_close(WAIT).await.expect("close code");
    let waited = started.elapsed();
    assert_eq!(code, 4002, "no join: {reason}");
    assert!(reason.contains("1 s"), "{reason}");
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the 1 s join timeout"
    );

    // Without `v`, version 1 is assumed.
    let mut c = WsClient::signaling(http(&node));
    c.send_json(&json!({"type": "join", "token": token}));
    let joined = c.next_json(WAIT).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["req"], Value::Null, "{joined}");
    assert_eq!(joined["v"], 1, "{joined}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_errors_and_the_connection_stays_open() {
    let node = start("");
    let token = mint_token("carol", "arcade", Role::Player, 600);
    let (mut c, _joined) = WsClient::join(http(&node), &token).await;

    // Not JSON.
    c.send_text("{nope");
    assert_error(&c.next_json(WAIT).await, "bad_json", None);
    assert_alive(&mut c).await;
    // JSON, not an object.
    c.send_text("[1,2,3]");
    assert_error(&c.next_json(WAIT).await, "bad_json", None);
    // A binary frame.
    c.send(Message::binary(vec![1u8, 2, 3]));
    assert_error(&c.next_json(WAIT).await, "bad_json", None);
    assert_alive(&mut c).await;

    // Unknown type: the req is echoed.
    let e = c.request(json!({"type": "dance"})).await;
    assert_eq!(e["code"], "unknown_type", "{e}");
    assert!(e["req"].as_u64().is_some(), "{e}");
    // No type at all.
    c.send_text(r#"{"req":41}"#);
    assert_error(&c.next_json(WAIT).await, "bad_request", Some(41));
    // Missing field (subscribe without mid), extra field, wrong type.
    c.send_text(r#"{"type":"subscribe","track":"t","req":42}"#);
    let e = c.next_json(WAIT).await;
    assert_error(&e, "bad_request", Some(42));
    assert!(e["message"].as_str().unwrap().contains("mid"), "{e}");
    c.send_text(r#"{"type":"ping","extra":true,"req":43}"#);
    let e = c.next_json(WAIT).await;
    assert_error(&e, "bad_request", Some(43));
    assert!(e["message"].as_str().unwrap().contains("extra"), "{e}");
    c.send_text(r#"{"type":"mute","track":"t","muted":"yes","req":44}"#);
    assert_error(&c.next_json(WAIT).await, "bad_request", Some(44));
    c.send_text(r#"{"type":"ping","req":-1}"#);
    assert_error(&c.next_json(WAIT).await, "bad_request", None);
    assert_alive(&mut c).await;

    // SFU refusals.
    c.send_text(r#"{"type":"subscribe","track":"no-such-track","mid":"0","req":50}"#);
    let e = c.next_json(WAIT).await;
    assert_error(&e, "unknown_track", Some(50));
    assert!(
        e["message"].as_str().unwrap().contains("no-such-track"),
        "{e}"
    );
    c.send_text(r#"{"type":"unsubscribe","track":"no-such-track","req":51}"#);
    assert_error(&c.next_json(WAIT).await, "unknown_track", Some(51));
    c.send_text(r#"{"type":"publish","mid":"0","name":"cam","req":52}"#);
    assert_error(&c.next_json(WAIT).await, "forbidden", Some(52));
    c.send_text(r#"{"type":"mute","track":"x","muted":true,"req":53}"#);
    assert_error(&c.next_json(WAIT).await, "forbidden", Some(53));
    c.send_text(r#"{"type":"offer","sdp":"this is not SDP","req":54}"#);
    assert_error(&c.next_json(WAIT).await, "bad_sdp", Some(54));
    c.send_text(r#"{"type":"candidate","candidate":"candidate:garbage","req":55}"#);
    assert_error(&c.next_json(WAIT).await, "bad_candidate", Some(55));
    // End-of-candidates (empty) is fine.
    c.send_text(r#"{"type":"candidate","candidate":"","sdpMid":"0","req":56}"#);
    let ok = c.next_json(WAIT).await;
    assert_eq!(ok, json!({"type": "ok", "req": 56, "for": "candidate"}));

    // A device may not subscribe.
    let (mut d, _) = WsClient::join(
        http(&node),
        &mint_token("rig", "elsewhere", Role::Device, 600),
    )
    .await;
    let e = d
        .request(json!({"type": "subscribe", "track": "no-such-track", "mid": "0"}))
        .await;
    assert_eq!(e["code"], "forbidden", "{e}");

    // A second join on the same connection.
    c.send_json(&json!({"type": "join", "token": token, "req": 60}));
    assert_error(&c.next_json(WAIT).await, "already_joined", Some(60));
    assert_alive(&mut c).await;

    // Leave: a normal close.
    c.send_text(r#"{"type":"leave","req":70}"#);
    let (code, reason) = c.expect_close(WAIT).await.expect("close code");
    assert_eq!(code, 1000, "{reason}");
    assert!(
        c.stash.is_empty(),
        "nothing expected before the close: {:?}",
        c.stash
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_offering_media_gets_an_answer_and_a_forbidden_error() {
    use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
    use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
    use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
    use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

    let node = start("");
    let token = mint_token("dave", "arcade", Role::Player, 600);
    let (mut c, _joined) = WsClient::join(http(&node), &token).await;
    let pc = common::new_peer_connection().await;
    let track = std::sync::Arc::new(TrackLocalStaticRTP::new(
        RTCRtpCodecCapability {
            mime_type: webrtc::api::media_engine::MIME_TYPE_VP8.to_owned(),
            clock_rate: 90_000,
            ..Default::default()
        },
        "video".into(),
        "dave".into(),
    ));
    pc.add_transceiver_from_track(
        track,
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            send_encodings: vec![],
        }),
    )
    .await
    .expect("add sendonly transceiver");
    let offer = common::local_offer(&pc).await;
    assert!(offer.contains("a=sendonly"), "{offer}");
    // The offer is answered (the media line is accepted, its media ignored) ...
    let answer = common::apply_answer(&mut c, &pc, offer).await;
    assert!(answer.contains("m=video"), "{answer}");
    // ... and the refusal comes as an asynchronous error event.
    let e = c
        .wait_for_json(WAIT, "a forbidden error", |v| v["type"] == "error")
        .await;
    assert_error(&e, "forbidden", None);
    let m = e["message"].as_str().unwrap();
    assert!(m.contains("player") && m.contains("publish"), "{e}");
    // No track is announced and the connection remains usable.
    assert_alive(&mut c).await;
    assert!(
        !c.stash
            .iter()
            .any(|v| v["type"] == "published" || v["type"] == "track_published"),
        "a player's media was published: {:?}",
        c.stash
    );
    let _ = tokio::time::timeout(WAIT, pc.close()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_the_size_limit_get_too_large() {
    let node = start("max_message_bytes = 1024\n");
    let token = mint_token("erin", "arcade", Role::Viewer, 600);
    let (mut c, _joined) = WsClient::join(http(&node), &token).await;
    let big = json!({"type": "ping", "req": 5, "pad": "x".repeat(2000)}).to_string();
    assert!(big.len() > 1024 && big.len() < 4096);
    c.send_text(&big);
    let e = c.next_json(WAIT).await;
    assert_error(&e, "too_large", None);
    assert!(e["message"].as_str().unwrap().contains("1024"), "{e}");
    // Just under the limit is parsed (and refused for its extra field, not its size).
    let mut fits = json!({"type": "ping", "req": 6, "pad": ""}).to_string();
    let pad = 1024 - fits.len();
    fits = json!({"type": "ping", "req": 6, "pad": "y".repeat(pad)}).to_string();
    assert_eq!(fits.len(), 1024);
    c.send_text(&fits);
    assert_error(&c.next_json(WAIT).await, "bad_request", Some(6));
    assert_alive(&mut c).await;

    // Over the hard cap (4x the limit) the WebSocket layer cannot read the message: the node
    // closes with 1009 (signaling/src/ws.rs; docs/signaling.md still says 1006, no frame).
    c.send_text(&"z".repeat(5000));
    match c.next_event(WAIT).await {
        WsEvent::Close(Some((code, reason))) => assert_eq!(code, 1009, "{reason}"),
        other => panic!("a message over the hard cap got {other:?}"),
    }

    // A join over the limit is refused like any bad first message.
    let token = format!("{token}{}", "x".repeat(1100));
    let (code, reason) = refused(&node, &join_msg(&token)).await;
    assert_eq!(code, 4002, "{reason}");
    assert!(reason.contains("1024"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_with_4001_when_its_token_expires() {
    let node = start("");
    let token = mint_token("gina", "arcade", Role::Player, 2);
    let (mut c, joined) = WsClient::join(http(&node), &token).await;
    let expires = joined["expires"].as_u64().unwrap();
    assert!(expires <= common::unix_now() + 2, "{joined}");
    assert_alive(&mut c).await;
    let (code, reason) = c.expect_close(WAIT).await.expect("close code");
    assert_eq!(code, 4001, "{reason}");
    assert_eq!(reason, "token expired");
    assert!(
        common::unix_now() + 1 >= expires,
        "closed more than a second before the token's exp {expires}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_gets_rate_limited_and_the_connection_stays_usable() {
    let node = start("messages_per_sec = 5\nmessage_burst = 5\n");
    let token = mint_token("frank", "arcade", Role::Player, 600);
    let (mut c, _joined) = WsClient::join(http(&node), &token).await;
    for i in 1..=20u64 {
        c.send_json(&json!({"type": "ping", "req": i}));
    }
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..20 {
        let v = c.next_json(WAIT).await;
        match v["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_error(&v, "rate_limited", None);
                limited += 1;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert!((5..=7).contains(&pongs), "{pongs} pongs of 20 at burst 5");
    assert_eq!(pongs + limited, 20);
    // Tokens come back at 5/s: poll (bounded) until a ping is answered again.
    let deadline = Instant::now() + WAIT;
    let mut req = 1000;
    loop {
        req += 1;
        c.send_json(&json!({"type": "ping", "req": req}));
        let v = c.next_json(WAIT).await;
        if v["type"] == "pong" {
            assert_eq!(v["req"], req, "{v}");
            break;
        }
        assert_error(&v, "rate_limited", None);
        assert!(
            Instant::now() < deadline,
            "still rate limited after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The flood was dropped, not queued: nothing else is pending.
    c.send_json(&json!({"type": "ping", "req": 7}));
    let v = c.next_json(WAIT).await;
    assert!(v["req"] == 7 || v["code"] == "rate_limited", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_flooding_closes_with_4008() {
    // One token a second: 200 violations in a row fit in that second even on a slow machine.
    let node = start("messages_per_sec = 1\nmessage_burst = 1\n");
    let token = mint_token("frank", "arcade", Role::Player, 600);
    let (mut c, _joined) = WsClient::join(http(&node), &token).await;
    // Bursts of exactly as many pings as the node still needs to reach 200 violations in a
    // row (it closes on the 200th), so nothing of ours is in flight when it closes. On a slow
    // machine a token may come back mid-burst (a pong resets the count): then another burst.
    let deadline = Instant::now() + WAIT;
    let (mut pongs, mut limited, mut streak, mut sent) = (0u32, 0u32, 0u32, 0u64);
    let close = 'outer: loop {
        assert!(
            Instant::now() < deadline,
            "not closed after {pongs} pongs and {limited} rate_limited errors"
        );
        let burst = 200 - streak;
        for _ in 0..burst {
            sent += 1;
            c.send_json(&json!({"type": "ping", "req": sent}));
        }
        for _ in 0..burst {
            match c.next_event(WAIT).await {
                WsEvent::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "pong" {
                        pongs += 1;
                        streak = 0;
                    } else {
                        assert_error(&v, "rate_limited", None);
                        limited += 1;
                        streak += 1;
                    }
                }
                WsEvent::Close(f) => break 'outer f,
                other => panic!("after {pongs} pongs and {limited} errors: {other:?}"),
            }
        }
    };
    let (code, reason) = close.expect("close code");
    assert_eq!(code, 4008, "{reason}");
    assert_eq!(reason, "too many messages");
    // The 200th violation in a row closes instead of answering: 199 errors since the last pong.
    assert!(
        limited >= 199,
        "closed after only {limited} rate_limited errors"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_members_see_each_other_join_and_leave() {
    let node = start("");
    let (mut a, a_joined) = WsClient::join(
        http(&node),
        &mint_token("device-1", "room-x", Role::Device, 600),
    )
    .await;
    let (mut b, b_joined) = WsClient::join(
        http(&node),
        &mint_token("viewer-1", "room-x", Role::Viewer, 600),
    )
    .await;
    // Another room: its members are never announced in room-x.
    let (_other, other_joined) = WsClient::join(
        http(&node),
        &mint_token("stranger", "room-y", Role::Player, 600),
    )
    .await;
    assert_eq!(other_joined["participants"], json!([]), "{other_joined}");

    let a_id = a_joined["participant"].as_str().unwrap();
    let b_id = b_joined["participant"].as_str().unwrap();
    assert_ne!(a_id, b_id);
    assert_eq!(
        b_joined["participants"],
        json!([{"id": a_id, "identity": "device-1", "role": "device"}]),
        "{b_joined}"
    );
    let ev = a.wait_for_type("participant_joined", WAIT).await;
    assert_eq!(
        ev["participant"],
        json!({"id": b_id, "identity": "viewer-1", "role": "viewer"}),
        "{ev}"
    );

    // b leaves cleanly; a hears it.
    b.send_text(r#"{"type":"leave"}"#);
    assert_eq!(b.expect_close(WAIT).await.map(|c| c.0), Some(1000));
    let ev = a.wait_for_type("participant_left", WAIT).await;
    assert_eq!(ev["id"], b_id, "{ev}");
    assert_eq!(ev["identity"], "viewer-1", "{ev}");

    // A client that just disconnects (no leave) is announced too.
    let (c, c_joined) = WsClient::join(
        http(&node),
        &mint_token("player-1", "room-x", Role::Player, 600),
    )
    .await;
    let c_id = c_joined["participant"].as_str().unwrap().to_string();
    let ev = a.wait_for_type("participant_joined", WAIT).await;
    assert_eq!(ev["participant"]["id"], c_id.as_str(), "{ev}");
    drop(c);
    let ev = a.wait_for_type("participant_left", WAIT).await;
    assert_eq!(ev["id"], c_id.as_str(), "{ev}");
    assert!(
        !a.stash.iter().any(|v| v.to_string().contains("stranger")),
        "a member of another room was announced: {:?}",
        a.stash
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_without_dev_tokens() {
    let node = start("");
    let (status, body) = common::http_get_async(http(&node), "/v1/dev-token?room=demo")
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["error"]["code"], "dev_tokens_disabled", "{v}");
    let (status, body) = common::http_get_async(http(&node), "/v1/rooms")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v, json!({"devices": []}));
}
