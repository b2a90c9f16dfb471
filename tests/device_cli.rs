//! `meridian device` end to end: the simulator publishes real H.264 into a room; a player (a
//! str0m client in this test) subscribes through the signaling API, receives whole H.264
//! frames (depacketized by its own stack), and sends controls that the simulator prints.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{ChildGuard, Node, NodeOptions, TempDir, API_KEY, API_SECRET};
use meridian_bench::client::signal::Signal;
use meridian_signaling::token::{Role, TokenIssuer};
use serde_json::json;
use str0m::change::SdpAnswer;
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

fn token(identity: &str, room: &str, role: Role) -> String {
    let issuer = TokenIssuer::new(API_KEY, API_SECRET.as_bytes()).unwrap();
    issuer
        .mint(identity, room, role, common::unix_now(), 600)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_publishes_h264_and_prints_controls() {
    let node = Node::start_meridian(&NodeOptions {
        sfu_toml: "workers = 2\n".into(),
        ..Default::default()
    });
    let http = node.ready.http.expect("signaling listener");
    let base = format!("http://{http}");
    let dir = TempDir::new("device-cli");
    let out_path = dir.path().join("device.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut cmd = common::meridian_command();
    cmd.args([
        "device",
        "--url",
        &base,
        "--room",
        "den",
        "--name",
        "rig",
        "--bitrate-kbps",
        "800",
    ])
    .args(["--size", "320x180", "--seconds", "60"])
    .arg("--token")
    .arg(token("rig", "den", Role::Device))
    .stdout(Stdio::from(out))
    .stderr(Stdio::inherit());
    let mut device = ChildGuard::spawn(cmd, "meridian device");

    // The player waits for the device's track, then subscribes on a recvonly mid.
    let mut signal = Signal::join(&base, &token("pat", "den", Role::Player), None)
        .await
        .expect("player joins");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut track = signal.joined["tracks"][0]["id"]
        .as_str()
        .map(str::to_string);
    while track.is_none() {
        assert!(
            Instant::now() < deadline,
            "the device's track was never published"
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
    let sdp = answer["sdp"].as_str().unwrap();
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(sdp).unwrap())
        .unwrap();
    let server = node.ready.sfu_udp.expect("SFU address");
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server).await.unwrap();
    let local: SocketAddr = sock.local_addr().unwrap();
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());

    let mut frames = 0usize;
    let mut keyframe_seen = false;
    let mut controls: Option<ChannelId> = None;
    let mut sent_control = false;
    let mut acked = false;
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !(acked && printed(&out_path)) {
        let next = loop {
            match rtc.poll_output().unwrap() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = sock.send(&t.contents).await;
                }
                Output::Event(Event::MediaData(m)) => {
                    assert_eq!(m.params.spec().codec, Codec::H264);
                    // Annex B from the depacketizer: an IDR (type 5) or SPS (7) marks a keyframe.
                    if m.data
                        .windows(4)
                        .any(|w| w[..3] == [0, 0, 1] && matches!(w[3] & 0x1f, 5 | 7))
                    {
                        keyframe_seen = true;
                    }
                    frames += 1;
                }
                Output::Event(Event::ChannelOpen(id, label)) if label == "controls" => {
                    controls = Some(id)
                }
                Output::Event(Event::ChannelData(d)) => {
                    let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
                    if v["ack"] == 1 {
                        assert!(v["seq"].as_u64().is_some(), "{v}");
                        acked = true;
                    }
                }
                Output::Event(_) => {}
            }
        };
        if frames >= 30 && !sent_control {
            if let Some(ch) = controls {
                rtc.channel(ch)
                    .unwrap()
                    .write(false, br#"{"id":1,"data":{"key":"fire"}}"#)
                    .unwrap();
                sent_control = true;
                continue;
            }
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        let input = match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source: server,
                    destination: local,
                    contents: buf[..n].try_into().unwrap(),
                },
            ),
            _ => Input::Timeout(Instant::now()),
        };
        rtc.handle_input(input).unwrap();
    }
    assert!(keyframe_seen, "the player received a keyframe");
    assert!(frames >= 30, "the player received {frames} H.264 frames");
    assert!(acked, "the node acknowledged the control");
    let text = std::fs::read_to_string(&out_path).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("fire"))
        .unwrap_or_else(|| panic!("the device printed no control; its output: {text:?}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
    assert_eq!(v["channel"], "controls");
    assert_eq!(v["message"]["from"], "pat");
    assert_eq!(v["message"]["data"], json!({"key": "fire"}));
    device.stop(Duration::from_secs(5));
}

fn printed(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains("fire"))
}

#[test]
fn device_rejects_bad_arguments_clearly() {
    for (args, want) in [
        (vec!["--size", "big"], "--size"),
        (vec!["--size", "641x360"], "even"),
        (vec!["--fps", "0"], "--fps"),
        (vec!["--bitrate-kbps", "1"], "--bitrate-kbps"),
        (vec!["--url", "ftp://x"], "http"),
    ] {
        let out = common::meridian_command()
            .args(["device", "--room", "r", "--token", "t"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
