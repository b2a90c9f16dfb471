//! The SFU driver's ICE-TCP path over real loopback sockets: a str0m client that can only use
//! an outgoing TCP connection (RFC 4571 framing, RFC 6544 active candidate) joins through the
//! SFU handle and gets connected; its packets reach the shard that owns its session even with
//! several shards.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meridian_relay::net::SfuNode;
use meridian_relay::sfu::{Notice, Role, SfuConfig};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_tcp_client_connects_through_the_driver() {
    let node = SfuNode::start(
        "127.0.0.1:0".parse().unwrap(),
        &["127.0.0.1:0".parse().unwrap()],
        None,
        2,
        SfuConfig::default(),
    )
    .expect("SFU starts");
    let handle = node.handle();
    let server_tcp = handle.tcp[0];

    for room in ["tcp-a", "tcp-b", "tcp-c"] {
        let mut session = handle.join(room, "dev", Role::Device, None).await.unwrap();
        let mut tcp = tokio::net::TcpStream::connect(server_tcp).await.unwrap();
        let local: SocketAddr = tcp.local_addr().unwrap();
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(
            Candidate::builder()
                .tcp()
                .host(local)
                .tcptype(TcpType::Active)
                .build()
                .unwrap(),
        );
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        let answer = session.offer(offer.to_sdp_string()).await.expect("answer");
        rtc.sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();

        let deadline = Instant::now() + Duration::from_secs(10);
        let mut connected = false;
        let mut server_says_connected = false;
        let mut buf = vec![0u8; 4096];
        let mut pending_in: Vec<u8> = Vec::new();
        while Instant::now() < deadline && !(connected && server_says_connected) {
            let (frames, timeout) = drain(&mut rtc, &mut connected);
            tcp.write_all(&frames).await.unwrap();
            while let Ok(n) = session.notices.try_recv() {
                if n == Notice::Connected {
                    server_says_connected = true;
                }
            }
            let wait = timeout
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(20));
            match tokio::time::timeout(wait, tcp.read(&mut buf)).await {
                Ok(Ok(0)) => panic!("server closed the ICE-TCP connection"),
                Ok(Ok(n)) => pending_in.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("read: {e}"),
                Err(_) => rtc.handle_input(Input::Timeout(Instant::now())).unwrap(),
            }
            // Feed every complete frame, draining the client after each (str0m's rule).
            while pending_in.len() >= 2 {
                let n = u16::from_be_bytes([pending_in[0], pending_in[1]]) as usize;
                if pending_in.len() < 2 + n {
                    break;
                }
                let frame: Vec<u8> = pending_in.drain(..2 + n).skip(2).collect();
                rtc.handle_input(Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Tcp,
                        source: server_tcp,
                        destination: local,
                        contents: frame.as_slice().try_into().unwrap(),
                    },
                ))
                .unwrap();
                let (frames, _) = drain(&mut rtc, &mut connected);
                tcp.write_all(&frames).await.unwrap();
            }
        }
        assert!(connected, "room {room}: client ICE+DTLS over TCP");
        assert!(
            server_says_connected,
            "room {room}: SFU reports the session connected"
        );
    }
    drop(handle);
    node.stop();
}

/// Polls the client until it waits: its transmits as RFC 4571 frames, and its next timeout.
fn drain(rtc: &mut Rtc, connected: &mut bool) -> (Vec<u8>, Instant) {
    let mut out = Vec::new();
    loop {
        match rtc.poll_output().unwrap() {
            Output::Timeout(t) => return (out, t),
            Output::Transmit(t) => {
                assert_eq!(t.proto, Protocol::Tcp);
                out.extend_from_slice(&(t.contents.len() as u16).to_be_bytes());
                out.extend_from_slice(&t.contents);
            }
            Output::Event(Event::Connected) => *connected = true,
            Output::Event(_) => {}
        }
    }
}
