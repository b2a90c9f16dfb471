//! SFU interop: webrtc-rs, a WebRTC implementation independent of the node's (str0m), as
//! both ends of a room. A "device" publishes a VP8 track and opens a `controls` data channel;
//! a "player" subscribes on a recvonly transceiver and opens its own `controls` channel; both
//! are driven over the node's signaling WebSocket exactly as docs/signaling.md describes.
//!
//! The device writes RTP itself (TrackLocalStaticRTP) with VP8 payloads that carry a room tag
//! and a counter, answers PLI with a keyframe, and records everything it sent. The player
//! checks that what arrives is byte-for-byte what was sent, starting at a keyframe, with
//! continuous sequence numbers and timestamps. Everything runs on loopback only (no mDNS, no
//! STUN, UDP4 from 127.0.0.1) and every wait is bounded.

mod common;

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{mint_token, new_peer_connection, Node, NodeOptions, WsClient};
use meridian_signaling::token::Role;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};
use webrtc::api::media_engine::MIME_TYPE_VP8;
use webrtc::data_channel::RTCDataChannel;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecCapability, RTPCodecType};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::TrackLocalWriter;

/// Bound on any single step (a reply, an event, a connection, a data-channel message).
const WAIT: Duration = Duration::from_secs(15);
/// Media packets the player must receive intact.
const MIN_PACKETS: usize = 50;
/// The device's first RTP sequence number: it wraps after this many packets, usually while
/// the player is receiving, so the SFU's extended sequence handling is exercised.
const SEQ_WRAP_AFTER: u32 = 150;
const FIRST_SEQ: u16 = (65_536 - SEQ_WRAP_AFTER) as u16;
/// 90 kHz video clock, one packet per 30 fps frame.
const TS_STEP: u32 = 3000;
/// The device sends one packet every this long (pacing, not synchronisation).
const PACKET_INTERVAL: Duration = Duration::from_millis(10);

fn http(node: &Node) -> SocketAddr {
    node.ready.http.expect("node has a signaling listener")
}

// ---- payloads ----

/// A VP8 RTP payload: descriptor `0x10` (S=1, PID=0), then the frame tag byte whose bit 0 is
/// 0 for a keyframe, then the room tag, the counter (big-endian) and a counter-derived filler.
fn vp8_payload(room_tag: u8, counter: u32, keyframe: bool) -> Vec<u8> {
    let mut p = vec![0x10, if keyframe { 0x00 } else { 0x01 }, room_tag];
    p.extend_from_slice(&counter.to_be_bytes());
    p.extend((0..33u32).map(|i| (counter.wrapping_mul(7).wrapping_add(i * 13)) as u8));
    p
}

fn is_keyframe(p: &[u8]) -> bool {
    p.len() > 2 && p[0] == 0x10 && p[1] & 0x01 == 0
}

fn counter_of(p: &[u8]) -> u32 {
    assert!(p.len() >= 7, "payload too short to carry a counter: {p:?}");
    u32::from_be_bytes([p[3], p[4], p[5], p[6]])
}

// ---- webrtc-rs helpers ----

/// A data channel the client opens, with its open signal and an inbox of its text messages.
struct Channel {
    dc: Arc<RTCDataChannel>,
    opened: mpsc::UnboundedReceiver<()>,
    inbox: mpsc::UnboundedReceiver<String>,
    /// Messages read past while waiting for another, oldest first.
    stash: VecDeque<Value>,
    name: String,
}

impl Channel {
    async fn create(pc: &RTCPeerConnection, label: &str, name: &str) -> Channel {
        let dc = pc
            .create_data_channel(label, None)
            .await
            .expect("create data channel");
        let (open_tx, opened) = mpsc::unbounded_channel();
        dc.on_open(Box::new(move || {
            let _ = open_tx.send(());
            Box::pin(async {})
        }));
        let (msg_tx, inbox) = mpsc::unbounded_channel();
        dc.on_message(Box::new(move |m| {
            let _ = msg_tx.send(String::from_utf8_lossy(&m.data).into_owned());
            Box::pin(async {})
        }));
        Channel {
            dc,
            opened,
            inbox,
            stash: VecDeque::new(),
            name: name.to_string(),
        }
    }

    async fn wait_open(&mut self) {
        timeout(WAIT, self.opened.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: data channel not open within {WAIT:?}", self.name))
            .expect("open signal");
    }

    async fn send(&self, v: &Value) {
        self.dc
            .send_text(v.to_string())
            .await
            .unwrap_or_else(|e| panic!("{}: send {v}: {e}", self.name));
    }

    /// The first message `pred` accepts (others are stashed), bounded by [`WAIT`].
    async fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        if let Some(i) = self.stash.iter().position(&mut pred) {
            return self.stash.remove(i).expect("index in range");
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let text = match timeout(left, self.inbox.recv()).await {
                Ok(Some(t)) => t,
                Ok(None) => panic!("{}: channel gone while waiting for {what}", self.name),
                Err(_) => panic!(
                    "{}: no {what} within {WAIT:?}; received meanwhile: {:?}",
                    self.name, self.stash
                ),
            };
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: node sent invalid JSON ({e}): {text}", self.name));
            if pred(&v) {
                return v;
            }
            self.stash.push_back(v);
        }
    }
}

/// A watch on the peer connection's state.
fn watch_state(pc: &RTCPeerConnection) -> watch::Receiver<RTCPeerConnectionState> {
    let (tx, rx) = watch::channel(RTCPeerConnectionState::New);
    pc.on_peer_connection_state_change(Box::new(move |s| {
        let _ = tx.send(s);
        Box::pin(async {})
    }));
    rx
}

async fn wait_pc_connected(state: &mut watch::Receiver<RTCPeerConnectionState>, who: &str) {
    let r = timeout(
        WAIT,
        state.wait_for(|s| {
            matches!(
                s,
                RTCPeerConnectionState::Connected
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed
            )
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("{who}: peer connection not connected within {WAIT:?}"))
    .map(|s| *s);
    assert_eq!(
        r.ok(),
        Some(RTCPeerConnectionState::Connected),
        "{who}: peer connection"
    );
}

// ---- the device ----

/// What the device's media task sent and saw.
#[derive(Default)]
struct MediaLog {
    /// Every payload written, indexed by its counter.
    sent: Mutex<Vec<Vec<u8>>>,
    /// Counters of the keyframes written.
    keyframes: Mutex<Vec<u32>>,
    /// PLI/FIR received from the node.
    keyframe_requests: AtomicU64,
    want_keyframe: AtomicBool,
    write_errors: AtomicU64,
    stop: AtomicBool,
}

struct Device {
    identity: String,
    sig: WsClient,
    pc: Arc<RTCPeerConnection>,
    controls: Channel,
    track_id: String,
    log: Arc<MediaLog>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Device {
    /// Joins `room` as a device, publishes a VP8 track (named with `publish` before the
    /// offer), waits until the media session is up and starts sending.
    async fn start(http: SocketAddr, room: &str, identity: &str, room_tag: u8) -> Device {
        let token = mint_token(identity, room, Role::Device, 600);
        let (mut sig, joined) = WsClient::join(http, &token).await;
        assert_eq!(joined["role"], "device", "{joined}");
        let pc = new_peer_connection().await;
        let mut state = watch_state(&pc);
        let track = Arc::new(TrackLocalStaticRTP::new(
            RTCRtpCodecCapability {
                mime_type: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90_000,
                ..Default::default()
            },
            "camera".to_owned(),
            format!("{identity}-stream"),
        ));
        let transceiver = pc
            .add_transceiver_from_track(
                Arc::clone(&track) as _,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    send_encodings: vec![],
                }),
            )
            .await
            .expect("add sendonly video transceiver");
        let sender = transceiver.sender().await;
        let controls = Channel::create(&pc, "controls", &format!("{identity} controls")).await;
        let offer = common::local_offer(&pc).await;
        let mid = transceiver.mid().expect("mid after the offer").to_string();
        let ok = sig
            .request(json!({"type": "publish", "mid": mid, "name": "camera"}))
            .await;
        assert_eq!(ok["type"], "ok", "publish: {ok}");
        assert_eq!(ok["for"], "publish", "{ok}");
        common::apply_answer(&mut sig, &pc, offer).await;
        sig.wait_for_type("connected", WAIT).await;
        let published = sig.wait_for_type("published", WAIT).await;
        assert_eq!(published["mid"], mid.as_str(), "{published}");
        let track_id = published["track"]
            .as_str()
            .expect("published track id")
            .to_string();
        wait_pc_connected(&mut state, identity).await;

        let log = Arc::new(MediaLog::default());
        let tasks = vec![
            tokio::spawn(read_rtcp(sender, Arc::clone(&log))),
            tokio::spawn(send_media(track, Arc::clone(&log), room_tag)),
        ];
        let mut d = Device {
            identity: identity.to_string(),
            sig,
            pc,
            controls,
            track_id,
            log,
            tasks,
        };
        d.controls.wait_open().await;
        d
    }

    async fn stop(self) {
        self.log.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
        let _ = timeout(WAIT, self.pc.close()).await;
        drop(self.sig);
    }
}

/// Counts keyframe requests and asks the media task for a keyframe on each.
async fn read_rtcp(sender: Arc<RTCRtpSender>, log: Arc<MediaLog>) {
    while let Ok((packets, _)) = sender.read_rtcp().await {
        for p in packets {
            let any = p.as_any();
            if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                log.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                log.want_keyframe.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Writes one RTP packet (one VP8 frame) per [`PACKET_INTERVAL`]: a keyframe first and
/// whenever one was requested, delta frames otherwise.
async fn send_media(track: Arc<TrackLocalStaticRTP>, log: Arc<MediaLog>, room_tag: u8) {
    let mut counter: u32 = 0;
    let mut tick = tokio::time::interval(PACKET_INTERVAL);
    while !log.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let keyframe = counter == 0 || log.want_keyframe.swap(false, Ordering::Relaxed);
        let payload = vp8_payload(room_tag, counter, keyframe);
        let packet = webrtc::rtp::packet::Packet {
            header: webrtc::rtp::header::Header {
                version: 2,
                marker: true,
                payload_type: 96,
                sequence_number: FIRST_SEQ.wrapping_add(counter as u16),
                timestamp: 1000u32.wrapping_add(counter.wrapping_mul(TS_STEP)),
                ..Default::default()
            },
            payload: payload.clone().into(),
        };
        // Recorded before the write so the player can never see a payload not yet logged.
        log.sent.lock().unwrap().push(payload);
        if keyframe {
            log.keyframes.lock().unwrap().push(counter);
        }
        if track.write_rtp(&packet).await.is_err() {
            log.write_errors.fetch_add(1, Ordering::Relaxed);
        }
        counter += 1;
    }
}

// ---- the player ----

/// One RTP packet as the player's TrackRemote delivered it.
#[derive(Debug, Clone)]
struct Received {
    seq: u16,
    ts: u32,
    payload: Vec<u8>,
}

struct Player {
    identity: String,
    sig: WsClient,
    pc: Arc<RTCPeerConnection>,
    controls: Channel,
    rtp: mpsc::UnboundedReceiver<Received>,
    mid: String,
}

impl Player {
    /// Joins `room` as a player, finds the device's track in `joined.tracks`, negotiates a
    /// recvonly video transceiver and subscribes to the track on its mid, `subscribe` sent
    /// before or after the offer.
    async fn start(
        http: SocketAddr,
        room: &str,
        identity: &str,
        device: &Device,
        subscribe_before_offer: bool,
    ) -> Player {
        let token = mint_token(identity, room, Role::Player, 600);
        let (mut sig, joined) = WsClient::join(http, &token).await;
        let tracks = joined["tracks"].as_array().expect("joined.tracks");
        let track = tracks
            .iter()
            .find(|t| t["id"] == device.track_id.as_str())
            .unwrap_or_else(|| panic!("device track missing from joined: {joined}"));
        assert_eq!(track["publisher"], device.identity.as_str(), "{track}");
        assert_eq!(track["kind"], "video", "{track}");
        assert_eq!(track["name"], "camera", "{track}");
        assert_eq!(track["muted"], false, "{track}");
        assert!(
            joined["participants"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["identity"] == device.identity.as_str() && p["role"] == "device"),
            "device missing from joined.participants: {joined}"
        );

        let pc = new_peer_connection().await;
        let mut state = watch_state(&pc);
        let transceiver = pc
            .add_transceiver_from_kind(
                RTPCodecType::Video,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    send_encodings: vec![],
                }),
            )
            .await
            .expect("add recvonly video transceiver");
        let controls = Channel::create(&pc, "controls", &format!("{identity} controls")).await;
        let (rtp_tx, rtp) = mpsc::unbounded_channel();
        pc.on_track(Box::new(move |remote, _receiver, _transceiver| {
            let rtp_tx = rtp_tx.clone();
            Box::pin(async move {
                tokio::spawn(async move {
                    while let Ok((p, _)) = remote.read_rtp().await {
                        let r = Received {
                            seq: p.header.sequence_number,
                            ts: p.header.timestamp,
                            payload: p.payload.to_vec(),
                        };
                        if rtp_tx.send(r).is_err() {
                            break;
                        }
                    }
                });
            })
        }));
        let offer = common::local_offer(&pc).await;
        let mid = transceiver.mid().expect("mid after the offer").to_string();
        let subscribe = json!({"type": "subscribe", "track": device.track_id, "mid": mid});
        if subscribe_before_offer {
            let ok = sig.request(subscribe.clone()).await;
            assert_eq!(ok["type"], "ok", "subscribe: {ok}");
        }
        common::apply_answer(&mut sig, &pc, offer).await;
        if !subscribe_before_offer {
            let ok = sig.request(subscribe).await;
            assert_eq!(ok["type"], "ok", "subscribe: {ok}");
        }
        sig.wait_for_type("connected", WAIT).await;
        let subscribed = sig.wait_for_type("subscribed", WAIT).await;
        assert_eq!(
            subscribed["track"],
            device.track_id.as_str(),
            "{subscribed}"
        );
        assert_eq!(subscribed["mid"], mid.as_str(), "{subscribed}");
        wait_pc_connected(&mut state, identity).await;
        let mut p = Player {
            identity: identity.to_string(),
            sig,
            pc,
            controls,
            rtp,
            mid,
        };
        p.controls.wait_open().await;
        p
    }

    async fn stop(self) {
        let _ = timeout(WAIT, self.pc.close()).await;
        drop(self.sig);
    }
}

// ---- checks ----

/// Receives until at least [`MIN_PACKETS`] media packets arrived and the device's sequence
/// numbers have wrapped, then checks them against what the device sent: the first is a
/// keyframe sent on request, and from there every packet the device wrote arrives, in order,
/// byte-for-byte, with sequence numbers +1 and timestamps +[`TS_STEP`] each.
async fn check_media(player: &mut Player, device: &Device, room_tag: u8) -> usize {
    let mut got: Vec<Received> = Vec::new();
    let mut padding = 0usize;
    let deadline = Instant::now() + WAIT;
    loop {
        let enough = got.len() >= MIN_PACKETS
            && got
                .last()
                .is_some_and(|r| counter_of(&r.payload) >= SEQ_WRAP_AFTER + 20);
        if enough {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, player.rtp.recv()).await {
            Ok(Some(r)) if r.payload.is_empty() => padding += 1,
            Ok(Some(r)) => got.push(r),
            Ok(None) => panic!("{}: the remote track ended", player.identity),
            Err(_) => {
                let sent = device.log.sent.lock().unwrap().len();
                panic!(
                    "{}: only {} media packets (and {padding} padding-only) within {WAIT:?}; \
                     device: {sent} sent, {} keyframe requests, {} write errors",
                    player.identity,
                    got.len(),
                    device.log.keyframe_requests.load(Ordering::Relaxed),
                    device.log.write_errors.load(Ordering::Relaxed),
                )
            }
        }
    }
    let sent = device.log.sent.lock().unwrap().clone();
    let keyframes = device.log.keyframes.lock().unwrap().clone();
    let who = &player.identity;

    let first = &got[0];
    let first_counter = counter_of(&first.payload);
    assert!(
        is_keyframe(&first.payload),
        "{who}: forwarding began with a delta frame (counter {first_counter})"
    );
    assert_eq!(
        first.seq, 1,
        "{who}: the first forwarded packet is not the stream's first"
    );
    assert!(
        first_counter > 0 && keyframes.contains(&first_counter),
        "{who}: the first packet (counter {first_counter}) is not a keyframe the device sent \
         on request (keyframes: {keyframes:?})"
    );
    assert!(
        device.log.keyframe_requests.load(Ordering::Relaxed) >= 1,
        "the node never asked the device for a keyframe"
    );
    assert_eq!(device.log.write_errors.load(Ordering::Relaxed), 0);
    for (i, r) in got.iter().enumerate() {
        let c = counter_of(&r.payload);
        assert_eq!(
            r.payload[2], room_tag,
            "{who}: packet {i} carries another room's media"
        );
        let expected = sent
            .get(c as usize)
            .unwrap_or_else(|| panic!("{who}: counter {c} was never sent"));
        assert_eq!(
            &r.payload, expected,
            "{who}: payload of packet {i} (counter {c}) differs from what was sent"
        );
        if i > 0 {
            let prev = &got[i - 1];
            let pc = counter_of(&prev.payload);
            assert_eq!(
                c,
                pc + 1,
                "{who}: after counter {pc} came {c} (packet {i}): lost or reordered"
            );
            assert_eq!(
                r.seq,
                prev.seq.wrapping_add(1),
                "{who}: sequence numbers not continuous at packet {i}"
            );
            assert_eq!(
                r.ts,
                prev.ts.wrapping_add(TS_STEP),
                "{who}: timestamps not continuous at packet {i}"
            );
        }
    }
    let last = counter_of(&got.last().unwrap().payload);
    eprintln!(
        "{who}: {} packets intact, counters {first_counter}..={last} (device seq wrapped at \
         {SEQ_WRAP_AFTER}: {}), {padding} padding-only, {} keyframe requests",
        got.len(),
        if first_counter < SEQ_WRAP_AFTER {
            "inside the window"
        } else {
            "before the window"
        },
        device.log.keyframe_requests.load(Ordering::Relaxed),
    );
    got.len()
}

/// A controls round trip each way, an acknowledged resend that is not delivered twice, and
/// a malformed message refused on the channel.
async fn check_controls(player: &mut Player, device: &mut Device) {
    let pid = player.identity.clone();
    let did = device.identity.clone();
    player
        .controls
        .send(&json!({"id": 1, "data": {"key": "up"}}))
        .await;
    let at_device = device
        .controls
        .wait_for("the player's message", |v| v.get("seq").is_some())
        .await;
    let seq1 = at_device["seq"].as_u64().expect("seq");
    assert_eq!(
        at_device,
        json!({"seq": seq1, "from": pid, "data": {"key": "up"}}),
        "at the device"
    );
    let ack = player
        .controls
        .wait_for("ack 1", |v| v.get("ack").is_some())
        .await;
    assert_eq!(ack, json!({"ack": 1, "seq": seq1}));

    // The device answers; the player receives it and the device is acknowledged.
    device
        .controls
        .send(&json!({"id": 7, "data": {"echo": "up", "ok": true}}))
        .await;
    let at_player = player
        .controls
        .wait_for("the device's message", |v| v.get("seq").is_some())
        .await;
    let seq2 = at_player["seq"].as_u64().expect("seq");
    assert!(seq2 > seq1, "room sequence went from {seq1} to {seq2}");
    assert_eq!(
        at_player,
        json!({"seq": seq2, "from": did, "data": {"echo": "up", "ok": true}}),
        "at the player"
    );
    let ack = device
        .controls
        .wait_for("ack 7", |v| v.get("ack").is_some())
        .await;
    assert_eq!(ack, json!({"ack": 7, "seq": seq2}));

    // A resend of id 1: acknowledged with the same seq, not delivered again.
    player
        .controls
        .send(&json!({"id": 1, "data": {"key": "up"}}))
        .await;
    let ack = player
        .controls
        .wait_for("ack 1 again", |v| v.get("ack").is_some())
        .await;
    assert_eq!(ack, json!({"ack": 1, "seq": seq1}), "resend");
    player
        .controls
        .send(&json!({"id": 2, "data": {"key": "down"}}))
        .await;
    let next = device
        .controls
        .wait_for("the player's second message", |v| v.get("seq").is_some())
        .await;
    assert_eq!(
        next["data"],
        json!({"key": "down"}),
        "the resend was delivered again: {next}"
    );
    assert!(next["seq"].as_u64().unwrap() > seq2, "{next}");
    let ack = player
        .controls
        .wait_for("ack 2", |v| v.get("ack").is_some())
        .await;
    assert_eq!(ack["ack"], 2);

    // Not an envelope: refused on the same channel, the channel stays usable.
    player
        .controls
        .send(&json!(["not", "an", "envelope"]))
        .await;
    let err = player
        .controls
        .wait_for("an error", |v| v.get("error").is_some())
        .await;
    assert_eq!(err["error"]["code"], "bad_message", "{err}");
    player.controls.send(&json!({"id": 3, "data": null})).await;
    let ack = player
        .controls
        .wait_for("ack 3", |v| v.get("ack").is_some())
        .await;
    assert_eq!(ack["ack"], 3);
    assert!(
        device.controls.stash.is_empty() && player.controls.stash.is_empty(),
        "unexpected channel messages: device {:?}, player {:?}",
        device.controls.stash,
        player.controls.stash
    );
}

/// Polls `GET /v1/rooms` until the device is listed live with at least `viewers` viewers.
async fn check_rooms(http: SocketAddr, room: &str, device: &Device, viewers: u64) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = common::http_get_async(http, "/v1/rooms")
            .await
            .expect("GET /v1/rooms");
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        let entry = v["devices"]
            .as_array()
            .expect("devices array")
            .iter()
            .find(|d| d["room"] == room && d["device"] == device.identity.as_str())
            .cloned();
        if let Some(e) = &entry {
            if e["live"] == true && e["viewers"].as_u64().unwrap_or(0) >= viewers {
                assert_eq!(e["tracks"], json!([device.track_id]), "{e}");
                assert!(e["bitrate_bps"].as_u64().is_some(), "{e}");
                return e.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "/v1/rooms never listed {} live with {viewers}+ viewers: {v}",
            device.identity
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One sample of a Prometheus metric (exact name and label set, e.g.
/// `meridian_sfu_sessions{shard="0"}`), if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse::<f64>().ok())?
    })
}

/// Polls the admin `/metrics` until `ok` accepts it; returns the text.
async fn wait_metrics(node: &Node, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = common::http_get_async(node.admin(), "/metrics")
            .await
            .expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        if ok(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {what} within {WAIT:?}:\n{}",
            body.lines()
                .filter(|l| l.starts_with("meridian_sfu"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Mute and unmute: while muted nothing is forwarded and `/v1/rooms` shows the device not
/// live; after unmuting, forwarding resumes at a (requested) keyframe, with the outgoing
/// sequence numbers continuing where they stopped and the timestamps moved forward.
async fn check_mute_resume(http: SocketAddr, room: &str, player: &mut Player, device: &mut Device) {
    let who = player.identity.clone();
    let requests_before = device.log.keyframe_requests.load(Ordering::Relaxed);
    let ok = device
        .sig
        .request(json!({"type": "mute", "track": device.track_id, "muted": true}))
        .await;
    assert_eq!(ok["type"], "ok", "mute: {ok}");
    for sig in [&mut device.sig, &mut player.sig] {
        let ev = sig.wait_for_type("track_muted", WAIT).await;
        assert_eq!(
            ev,
            json!({"type": "track_muted", "track": device.track_id, "muted": true})
        );
    }
    let muted_at = device.log.sent.lock().unwrap().len();
    // Not live while muted.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = common::http_get_async(http, "/v1/rooms").await.unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        let live = v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["room"] == room)
            .map(|d| d["live"].clone());
        if live == Some(json!(false)) {
            break;
        }
        assert!(Instant::now() < deadline, "muted device still live: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the device send a good number of packets into the muted track.
    let deadline = Instant::now() + WAIT;
    while device.log.sent.lock().unwrap().len() < muted_at + 20 {
        assert!(Instant::now() < deadline, "the device stopped sending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ok = device
        .sig
        .request(json!({"type": "mute", "track": device.track_id, "muted": false}))
        .await;
    assert_eq!(ok["type"], "ok", "unmute: {ok}");
    let unmuted_at = device.log.sent.lock().unwrap().len() as u32;
    let ev = player.sig.wait_for_type("track_muted", WAIT).await;
    assert_eq!(ev["muted"], false, "{ev}");

    // Everything received since the mute: a continuous run, then (after the gap) a keyframe
    // and a continuous run again.
    let mut got: Vec<Received> = Vec::new();
    let deadline = Instant::now() + WAIT;
    let resume = loop {
        let resumed = got
            .iter()
            .position(|r| counter_of(&r.payload) >= unmuted_at.saturating_sub(5));
        if let Some(i) = resumed.filter(|i| got.len() >= i + 20) {
            break i;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, player.rtp.recv()).await {
            Ok(Some(r)) if r.payload.is_empty() => {}
            Ok(Some(r)) => got.push(r),
            Ok(None) => panic!("{who}: the remote track ended"),
            Err(_) => panic!(
                "{who}: media did not resume within {WAIT:?} of unmuting ({} packets since \
                 the mute)",
                got.len()
            ),
        }
    };
    let sent = device.log.sent.lock().unwrap().clone();
    for r in &got {
        let c = counter_of(&r.payload);
        assert_eq!(&r.payload, &sent[c as usize], "{who}: payload {c} altered");
    }
    let gaps: Vec<usize> = (1..got.len())
        .filter(|&i| counter_of(&got[i].payload) != counter_of(&got[i - 1].payload) + 1)
        .collect();
    assert!(
        resume > 0,
        "{who}: nothing received between mute and unmute checks"
    );
    assert_eq!(
        gaps,
        vec![resume],
        "{who}: expected exactly one gap in the counters, where forwarding resumed"
    );
    let (before, after) = (&got[resume - 1], &got[resume]);
    let skipped = counter_of(&after.payload) - counter_of(&before.payload) - 1;
    assert!(
        skipped >= 20,
        "{who}: only {skipped} packets were dropped while muted"
    );
    assert!(
        is_keyframe(&after.payload),
        "{who}: forwarding resumed with a delta frame"
    );
    assert_eq!(
        after.seq,
        before.seq.wrapping_add(1),
        "{who}: sequence numbers jump where forwarding resumed"
    );
    let advanced = after.ts.wrapping_sub(before.ts);
    assert!(
        advanced > 0 && advanced < 90_000 * 30,
        "{who}: timestamp moved by {advanced} ticks where forwarding resumed"
    );
    for i in 1..got.len() {
        if i != resume {
            assert_eq!(
                got[i].seq,
                got[i - 1].seq.wrapping_add(1),
                "{who}: seq at {i}"
            );
            assert_eq!(
                got[i].ts,
                got[i - 1].ts.wrapping_add(TS_STEP),
                "{who}: ts at {i}"
            );
        }
    }
    assert!(
        device.log.keyframe_requests.load(Ordering::Relaxed) > requests_before,
        "no keyframe request for the unmute"
    );
    eprintln!(
        "{who}: mute dropped {skipped} packets; resumed at keyframe {} (ts +{advanced})",
        counter_of(&after.payload)
    );
}

/// A device and a player in `room`, media and controls checked.
async fn run_room(node: &Node, room: &str, tag: u8) -> (Device, Player) {
    let mut device = Device::start(http(node), room, &format!("device-{tag}"), tag).await;
    let mut player = Player::start(http(node), room, &format!("player-{tag}"), &device, true).await;
    // The device hears about its player.
    let joined = device.sig.wait_for_type("participant_joined", WAIT).await;
    assert_eq!(
        joined["participant"]["identity"],
        player.identity.as_str(),
        "{joined}"
    );
    check_media(&mut player, &device, tag).await;
    check_controls(&mut player, &mut device).await;
    (device, player)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_device_to_player_media_and_controls() {
    let started = std::time::Instant::now();
    let node = Node::start_meridian(&NodeOptions::default());
    let (device, player) = run_room(&node, "arcade-1", 1).await;
    let entry = check_rooms(http(&node), "arcade-1", &device, 1).await;
    assert_eq!(entry["viewers"], 1, "{entry}");
    let (mut device, mut player) = (device, player);
    check_mute_resume(http(&node), "arcade-1", &mut player, &mut device).await;
    check_rooms(http(&node), "arcade-1", &device, 1).await;
    assert!(
        player.sig.stash.iter().all(|v| v["type"] != "error"),
        "player got errors: {:?}",
        player.sig.stash
    );
    assert!(
        device.sig.stash.iter().all(|v| v["type"] != "error"),
        "device got errors: {:?}",
        device.sig.stash
    );
    assert_eq!(player.mid, "0");

    // The player leaves: the device hears it and the room shows no viewer.
    let player_id = player.identity.clone();
    player.stop().await;
    let left = device.sig.wait_for_type("participant_left", WAIT).await;
    assert_eq!(left["identity"], player_id.as_str(), "{left}");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = common::http_get_async(http(&node), "/v1/rooms")
            .await
            .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["devices"][0]["viewers"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "viewer still counted: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    device.stop().await;
    eprintln!("media and controls round trip: {:?}", started.elapsed());
}

/// Which SFU shard a room lands on: mirrors `SfuHandle::shard_for` in
/// relay/src/net/sfu.rs (std's `DefaultHasher` over the room name, modulo the shard count).
/// Only used to pick room names that cover every shard; the per-shard session gauges check
/// the outcome independently.
fn shard_of(room: &str, shards: u64) -> u64 {
    let mut h = DefaultHasher::new();
    room.hash(&mut h);
    h.finish() % shards
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_different_sfu_shards_each_get_their_own_media() {
    let started = std::time::Instant::now();
    let node = Node::start_meridian(&NodeOptions {
        sfu_toml: "workers = 2\n".into(),
        ..NodeOptions::default()
    });
    // Two rooms per shard.
    let mut rooms: Vec<String> = Vec::new();
    for shard in 0..2 {
        rooms.extend(
            (0..)
                .map(|i| format!("shard-room-{i}"))
                .filter(|r| shard_of(r, 2) == shard)
                .take(2),
        );
    }
    let http = http(&node);
    let mut tasks = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        let room = room.clone();
        let tag = 10 + i as u8;
        tasks.push(tokio::spawn(async move {
            let device = Device::start(http, &room, &format!("device-{tag}"), tag).await;
            // Here `subscribe` follows the offer that negotiates its mid.
            let mut player =
                Player::start(http, &room, &format!("player-{tag}"), &device, false).await;
            check_media(&mut player, &device, tag).await;
            (room, device, player)
        }));
    }
    let mut live = Vec::new();
    for t in tasks {
        live.push(t.await.expect("room task"));
    }
    // While all rooms are up, both shards hold sessions (2 rooms x 2 sessions each).
    wait_metrics(&node, "sessions on both shards", |m| {
        (0..2).all(|s| {
            metric(m, &format!("meridian_sfu_sessions{{shard=\"{s}\"}}")).unwrap_or(0.0) >= 4.0
        })
    })
    .await;
    for (room, device, _) in &live {
        check_rooms(http, room, device, 1).await;
    }
    // Tracks of other rooms (on this shard or the other) cannot be subscribed to.
    for i in 0..live.len() {
        let other = live[(i + 1) % live.len()].1.track_id.clone();
        let e = live[i]
            .2
            .sig
            .request(json!({"type": "subscribe", "track": other, "mid": "0"}))
            .await;
        assert_eq!(e["code"], "unknown_track", "cross-room subscribe: {e}");
    }
    // Control messages stay in their room too.
    for (_, device, player) in live.iter_mut() {
        check_controls(player, device).await;
    }
    for (_, device, player) in live {
        player.stop().await;
        device.stop().await;
    }
    eprintln!(
        "{} rooms over 2 shards: {:?}",
        rooms.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_shows_in_the_metrics() {
    let node = Node::start_meridian(&NodeOptions::default());
    let (device, player) = run_room(&node, "metrics-room", 3).await;
    let text = wait_metrics(&node, "forwarded RTP and room messages", |m| {
        metric(m, "meridian_sfu_forwarded_rtp_total").unwrap_or(0.0) >= MIN_PACKETS as f64
            && metric(m, "meridian_sfu_messages_total{channel=\"controls\"}").unwrap_or(0.0) >= 4.0
    })
    .await;
    let forwarded = metric(&text, "meridian_sfu_forwarded_rtp_total").unwrap();
    let sent = device.log.sent.lock().unwrap().len() as f64;
    assert!(
        forwarded <= sent,
        "forwarded {forwarded} packets but the device sent only {sent}"
    );
    let kf = metric(
        &text,
        "meridian_sfu_keyframe_requests_total{direction=\"to_publishers\"}",
    )
    .unwrap_or(0.0);
    assert!(kf >= 1.0, "no keyframe request counted");
    let errors = metric(&text, "meridian_sfu_message_errors_total").unwrap_or(0.0);
    assert!(errors >= 1.0, "the bad_message was not counted");
    player.stop().await;
    device.stop().await;
}
