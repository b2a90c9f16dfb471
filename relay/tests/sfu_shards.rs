//! The SFU driver's UDP path over real loopback sockets with several shards: publishers in
//! several rooms (so on different shards, while the kernel hashes their datagrams onto any
//! shard's socket) are live at once and their bitrate is measured.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meridian_relay::net::SfuNode;
use meridian_relay::sfu::{Role, SfuConfig};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;

/// An H.264 IDR access unit (SPS, PPS, slice) of about 1 kB.
fn access_unit() -> Vec<u8> {
    [
        &[0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01][..],
        &[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80][..],
        &[0, 0, 0, 1, 0x65][..],
        &[0x88; 1000][..],
    ]
    .concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_on_every_shard_are_live_within_a_second() {
    let node = SfuNode::start(
        "127.0.0.1:0".parse().unwrap(),
        &[],
        None,
        2,
        SfuConfig::default(),
    )
    .expect("SFU starts");
    let handle = node.handle();
    let server = handle.udp;
    let rooms = ["r-a", "r-b", "r-c", "r-d"];
    let mut clients = Vec::new();
    for room in rooms {
        let session = handle.join(room, "dev", Role::Device, None).await.unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.connect(server).await.unwrap();
        let local: SocketAddr = sock.local_addr().unwrap();
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_h264(true)
            .build(Instant::now());
        let mut api = rtc.sdp_api();
        let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        let answer = session.offer(offer.to_sdp_string()).await.expect("answer");
        rtc.sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        clients.push((session, sock, rtc, mid, false));
    }
    let au = access_unit();
    let start = Instant::now();
    let mut frame = 0u64;
    let mut buf = vec![0u8; 2048];
    let mut all_live_at = None;
    while start.elapsed() < Duration::from_secs(10) {
        for (_, sock, rtc, mid, connected) in clients.iter_mut() {
            // Feed whatever arrived, draining after each input.
            loop {
                while let Ok(o) = rtc.poll_output() {
                    match o {
                        Output::Timeout(_) => break,
                        Output::Transmit(t) => {
                            let _ = sock.send(&t.contents).await;
                        }
                        Output::Event(Event::Connected) => *connected = true,
                        Output::Event(_) => {}
                    }
                }
                match sock.try_recv(&mut buf) {
                    Ok(n) => rtc
                        .handle_input(Input::Receive(
                            Instant::now(),
                            Receive {
                                proto: Protocol::Udp,
                                source: server,
                                destination: sock.local_addr().unwrap(),
                                contents: buf[..n].try_into().unwrap(),
                            },
                        ))
                        .unwrap(),
                    Err(_) => {
                        rtc.handle_input(Input::Timeout(Instant::now())).unwrap();
                        break;
                    }
                }
            }
            if *connected {
                let w = rtc.writer(*mid).unwrap();
                let pt = w.payload_params().next().unwrap().pt();
                let t = MediaTime::new(frame * 3000, Frequency::NINETY_KHZ);
                w.write(pt, Instant::now(), t, au.clone()).unwrap();
            }
        }
        frame += 1;
        tokio::time::sleep(Duration::from_millis(33)).await;
        if all_live_at.is_none() {
            let devices = handle.devices().await.unwrap();
            if devices.len() == rooms.len() && devices.iter().all(|d| d.live) {
                all_live_at = Some(start.elapsed());
            }
        }
        if start.elapsed() > Duration::from_secs(3) && all_live_at.is_some() {
            break;
        }
    }
    let live_after = all_live_at.expect("every publisher becomes live");
    assert!(
        live_after < Duration::from_secs(2),
        "live after {live_after:?}"
    );
    let devices = handle.devices().await.unwrap();
    for d in &devices {
        // ~1 kB at 30 fps: about 250 kbit/s.
        assert!(d.bitrate_bps > 100_000, "{d:?}");
    }
    drop(clients);
    drop(handle);
    node.stop();
}
