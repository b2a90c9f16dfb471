//! TURN ↔ SFU in process: a WebRTC client that can only use a relay candidate on the node's
//! own TURN server (webrtc-rs TURN client allocating, str0m doing ICE/DTLS over the relay)
//! reaches the node's SFU. The SFU listens on loopback, which this node refuses as a peer,
//! so the session can only work through the in-process hand-off; the metric shows it was used,
//! and other loopback ports stay refused.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Node, NodeOptions, API_KEY, API_SECRET, REST_SECRET};
use meridian_bench::client::signal::Signal;
use meridian_signaling::token::{Role, TokenIssuer};
use serde_json::json;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

fn metric(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_client_reaches_the_sfu_in_process() {
    let node = Node::start_meridian(&NodeOptions {
        allow_loopback_peers: false,
        ..Default::default()
    });
    let http = node.ready.http.expect("signaling listener");
    let sfu = node.ready.sfu_udp.expect("SFU address");
    let turn_addr = node.ready.turn_udp[0];

    // TURN allocation with a REST credential.
    let (user, pass) = common::rest_credential(REST_SECRET, "handoff", common::unix_now() + 600);
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = Client::new(ClientConfig {
        stun_serv_addr: turn_addr.to_string(),
        turn_serv_addr: turn_addr.to_string(),
        username: user,
        password: pass,
        realm: String::new(),
        software: "meridian-handoff-test".into(),
        rto_in_ms: 0,
        conn: Arc::new(sock),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    let relay = tokio::time::timeout(Duration::from_secs(10), client.allocate())
        .await
        .expect("allocate in time")
        .expect("allocate");
    let relay_addr: SocketAddr = relay.local_addr().unwrap();

    // Signaling: a device session whose only candidate is the relay.
    let issuer = TokenIssuer::new(API_KEY, API_SECRET.as_bytes()).unwrap();
    let token = issuer
        .mint(
            "relayed-rig",
            "handoff",
            Role::Device,
            common::unix_now(),
            600,
        )
        .unwrap();
    let mut signal = Signal::join(&format!("http://{http}"), &token, None)
        .await
        .unwrap();
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_h264(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::relayed(relay_addr, relay_addr, "udp").unwrap());
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let answer = signal
        .request(json!({"type": "offer", "sdp": offer.to_sdp_string()}))
        .await
        .unwrap();
    rtc.sdp_api()
        .accept_answer(
            pending,
            SdpAnswer::from_sdp_string(answer["sdp"].as_str().unwrap()).unwrap(),
        )
        .unwrap();

    let au: Vec<u8> = [
        &[0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01][..],
        &[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80][..],
        &[0, 0, 0, 1, 0x65][..],
        &[0x88; 600][..],
    ]
    .concat();
    let mut connected = false;
    let mut frames = 0u64;
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && frames < 60 {
        let next = loop {
            match rtc.poll_output().unwrap() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    assert_eq!(
                        t.source, relay_addr,
                        "every packet leaves through the relay"
                    );
                    let _ = relay.send_to(&t.contents, t.destination).await;
                }
                Output::Event(Event::Connected) => connected = true,
                Output::Event(_) => {}
            }
        };
        if connected {
            let w = rtc.writer(mid).unwrap();
            let pt = w.payload_params().next().unwrap().pt();
            let t = MediaTime::new(frames * 3000, Frequency::NINETY_KHZ);
            w.write(pt, Instant::now(), t, au.clone()).unwrap();
            frames += 1;
            continue;
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(30));
        let input = match tokio::time::timeout(wait, relay.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source: from,
                    destination: relay_addr,
                    contents: buf[..n].try_into().unwrap(),
                },
            ),
            _ => Input::Timeout(Instant::now()),
        };
        rtc.handle_input(input).unwrap();
    }
    assert!(connected, "ICE and DTLS completed through the relay");
    // Keep the session fed while the node's metrics export (once a second).
    let admin = node.admin();
    let mut text = String::new();
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        text = common::http_get(admin, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default();
        if metric(
            &text,
            "meridian_sfu_turn_handoff_total{direction=\"to_sfu\"}",
        ) > 0
            && metric(
                &text,
                "meridian_sfu_turn_handoff_total{direction=\"to_client\"}",
            ) > 0
            && metric(&text, "meridian_sfu_packets_total{direction=\"in\"}") >= 60
        {
            break;
        }
        while let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_millis(20), relay.recv_from(&mut buf)).await
        {
            let _ = rtc.handle_input(Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source: from,
                    destination: relay_addr,
                    contents: buf[..n].try_into().unwrap(),
                },
            ));
            while let Ok(o) = rtc.poll_output() {
                match o {
                    Output::Timeout(_) => break,
                    Output::Transmit(t) => {
                        let _ = relay.send_to(&t.contents, t.destination).await;
                    }
                    Output::Event(_) => {}
                }
            }
        }
    }
    let to_sfu = metric(
        &text,
        "meridian_sfu_turn_handoff_total{direction=\"to_sfu\"}",
    );
    let to_client = metric(
        &text,
        "meridian_sfu_turn_handoff_total{direction=\"to_client\"}",
    );
    assert!(to_sfu >= 60, "hand-off to the SFU used: {to_sfu}\n{text}");
    assert!(
        to_client > 0,
        "hand-off back to the client used: {to_client}"
    );
    let rooms =
        meridian_bench::client::signal::http_get_json(&format!("http://{http}"), "/v1/rooms")
            .await
            .unwrap();
    assert_eq!(rooms["devices"][0]["device"], "relayed-rig", "{rooms}");

    // The SFU's IP is permitted for its port only: another loopback port is still refused.
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    assert_ne!(echo_addr.port(), sfu.port());
    let _ = relay.send_to(b"should not arrive", echo_addr).await;
    let got = tokio::time::timeout(Duration::from_millis(500), echo.recv_from(&mut buf)).await;
    assert!(
        got.is_err(),
        "a datagram reached a loopback port that is not the SFU's"
    );
    let _ = client.close().await;
}
