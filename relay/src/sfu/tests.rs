//! The SFU core against real WebRTC peers (str0m client `Rtc`s) over an in-memory network
//! with a simulated clock: no sockets, no sleeping, deterministic.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc};

use super::layer::LayerPrefs;
use super::*;

#[path = "tests_remote.rs"]
mod remote;

const SERVER: &str = "10.0.0.1:7882";

struct Client {
    rtc: Rtc,
    addr: SocketAddr,
    id: ParticipantId,
    events: Vec<Event>,
    notices: Vec<Notice>,
    controls: Option<ChannelId>,
}

struct Net {
    now: Instant,
    sfu: Sfu,
    clients: Vec<Client>,
    /// Drops the SFU's RTP datagrams to this address whose RTP sequence number is listed
    /// (once each).
    lose: Option<(SocketAddr, Vec<u16>)>,
}

/// A client `Rtc` whose only candidate is an active ICE-TCP one at `addr` (it can only make
/// outgoing TCP connections).
fn tcp_only_client(addr: SocketAddr, now: Instant) -> Rtc {
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(now);
    rtc.add_local_candidate(
        Candidate::builder()
            .tcp()
            .host(addr)
            .tcptype(str0m::net::TcpType::Active)
            .build()
            .unwrap(),
    );
    rtc
}

impl Net {
    /// Client `c` subscribes to `track` on its transceiver `mid` (default layer preferences).
    fn subscribe(&mut self, c: usize, track: &str, mid: Mid) {
        let id = self.clients[c].id;
        self.sfu
            .subscribe(id, track, &mid.to_string(), LayerPrefs::default(), self.now)
            .expect("subscribe");
    }

    /// An SFU offering a passive ICE-TCP candidate at `server_tcp` besides its UDP one.
    fn with_ice_tcp(server_tcp: SocketAddr) -> Self {
        let now = Instant::now();
        let cfg = SfuConfig {
            udp_candidates: vec![SERVER.parse().unwrap()],
            tcp_candidates: vec![server_tcp],
            ..Default::default()
        };
        Self {
            now,
            sfu: Sfu::new(cfg, 0, now).unwrap(),
            clients: Vec::new(),
            lose: None,
        }
    }

    fn new() -> Self {
        let now = Instant::now();
        let cfg = SfuConfig {
            udp_candidates: vec![SERVER.parse().unwrap()],
            ..Default::default()
        };
        Self {
            now,
            sfu: Sfu::new(cfg, 0, now).unwrap(),
            clients: Vec::new(),
            lose: None,
        }
    }

    /// A client joins `room`; `setup` adds its media/channels before the first offer.
    fn join(
        &mut self,
        role: Role,
        identity: &str,
        setup: impl FnOnce(&mut str0m::change::SdpApi) -> Vec<Mid>,
    ) -> (usize, Vec<Mid>) {
        self.join_with(Rtc::builder(), role, identity, setup)
    }

    /// As `join`, with the client's `Rtc` built from `config`.
    fn join_with(
        &mut self,
        config: str0m::RtcConfig,
        role: Role,
        identity: &str,
        setup: impl FnOnce(&mut str0m::change::SdpApi) -> Vec<Mid>,
    ) -> (usize, Vec<Mid>) {
        let addr: SocketAddr = format!("10.0.1.{}:5000", self.clients.len() + 1)
            .parse()
            .unwrap();
        let mut rtc = config.set_rtp_mode(true).build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        self.attach(rtc, addr, role, identity, None, setup)
    }

    /// Joins `rtc` (its candidates already added) at `addr`: first offer, answer, registered.
    fn attach(
        &mut self,
        rtc: Rtc,
        addr: SocketAddr,
        role: Role,
        identity: &str,
        resume_from: Option<u64>,
        setup: impl FnOnce(&mut str0m::change::SdpApi) -> Vec<Mid>,
    ) -> (usize, Vec<Mid>) {
        self.attach_editing_offer(rtc, addr, role, identity, resume_from, setup, |o| o)
    }

    /// As `attach`, with the offer's SDP passed through `edit` on its way to the SFU.
    #[allow(clippy::too_many_arguments)]
    fn attach_editing_offer(
        &mut self,
        mut rtc: Rtc,
        addr: SocketAddr,
        role: Role,
        identity: &str,
        resume_from: Option<u64>,
        setup: impl FnOnce(&mut str0m::change::SdpApi) -> Vec<Mid>,
        edit: impl FnOnce(String) -> String,
    ) -> (usize, Vec<Mid>) {
        let n = self.clients.len();
        let id = self.sfu.join(
            JoinRequest {
                room: "arena",
                identity,
                role,
                resume_from,
            },
            self.now,
        );
        let mut api = rtc.sdp_api();
        let mids = setup(&mut api);
        let (offer, pending) = api.apply().expect("an offer");
        let answer = self
            .sfu
            .offer(id, &edit(offer.to_sdp_string()), self.now)
            .expect("answer");
        rtc.sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        self.clients.push(Client {
            rtc,
            addr,
            id,
            events: Vec::new(),
            notices: Vec::new(),
            controls: None,
        });
        (n, mids)
    }

    /// Renegotiates client `c` (client offers, SFU answers).
    fn renegotiate(
        &mut self,
        c: usize,
        change: impl FnOnce(&mut str0m::change::SdpApi) -> Vec<Mid>,
    ) -> Vec<Mid> {
        let id = self.clients[c].id;
        let mut api = self.clients[c].rtc.sdp_api();
        let mids = change(&mut api);
        let (offer, pending) = api.apply().expect("an offer");
        let answer = self
            .sfu
            .offer(id, &offer.to_sdp_string(), self.now)
            .expect("answer");
        self.clients[c]
            .rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        mids
    }

    /// Moves all pending packets, then advances the clock by `step`. Every input to a client
    /// is followed by draining it (str0m's single-mutation rule).
    fn tick(&mut self, step: Duration) {
        for _ in 0..50 {
            let mut to_sfu = Vec::new();
            for c in &mut self.clients {
                drain_client(c, &mut to_sfu);
            }
            let mut moved = !to_sfu.is_empty();
            for t in to_sfu {
                self.sfu
                    .handle_receive(self.now, t.proto, t.source, t.destination, &t.contents);
            }
            while let Some(t) = self.sfu.poll_transmit() {
                moved = true;
                if let Some((to, seqs)) = &mut self.lose {
                    let c = &t.contents;
                    let rtp = c.len() > 12 && c[0] >> 6 == 2 && !(192..=223).contains(&c[1]);
                    if *to == t.destination && rtp {
                        let seq = u16::from_be_bytes([c[2], c[3]]);
                        if let Some(i) = seqs.iter().position(|s| *s == seq) {
                            seqs.remove(i);
                            continue;
                        }
                    }
                }
                if let Some(c) = self.clients.iter_mut().find(|c| c.addr == t.destination) {
                    let input = Input::Receive(
                        self.now,
                        str0m::net::Receive {
                            proto: t.proto,
                            source: t.source,
                            destination: t.destination,
                            contents: (&*t.contents).try_into().unwrap(),
                        },
                    );
                    c.rtc.handle_input(input).unwrap();
                    let mut replies = Vec::new();
                    drain_client(c, &mut replies);
                    for r in replies {
                        self.sfu.handle_receive(
                            self.now,
                            r.proto,
                            r.source,
                            r.destination,
                            &r.contents,
                        );
                    }
                }
                // As the driver does: the buffer goes back to the SFU for reuse.
                self.sfu.recycle(t);
            }
            while let Some((id, n)) = self.sfu.poll_notice() {
                if let Some(c) = self.clients.iter_mut().find(|c| c.id == id) {
                    c.notices.push(n);
                }
            }
            if !moved {
                break;
            }
        }
        self.now += step;
        self.sfu.handle_timeout(self.now);
        for c in &mut self.clients {
            c.rtc.handle_input(Input::Timeout(self.now)).unwrap();
        }
    }

    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Net) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.tick(Duration::from_millis(5));
        }
        done(self)
    }

    fn connected(&self, c: usize) -> bool {
        self.clients[c]
            .events
            .iter()
            .any(|e| matches!(e, Event::Connected))
    }

    fn track_of(&self, c: usize) -> Option<String> {
        self.clients[c].notices.iter().find_map(|n| match n {
            Notice::Published { track, .. } => Some(track.clone()),
            _ => None,
        })
    }

    /// Publisher writes one VP8 packet (keyframe start when `key`) with sequence `seq`.
    fn send_vp8(&mut self, c: usize, mid: Mid, seq: u64, key: bool) -> Vec<u8> {
        // Descriptor S=1 PID=0, then the frame tag (P bit clear for a keyframe).
        let mut payload = vec![0x10, if key { 0x00 } else { 0x01 }];
        payload.extend((0..100u8).map(|i| i.wrapping_mul(seq as u8)));
        self.send_rtp(c, mid, str0m::format::Codec::Vp8, seq, payload)
    }

    /// Publisher writes one RTP packet of `codec` with sequence `seq`; returns the payload.
    fn send_rtp(
        &mut self,
        c: usize,
        mid: Mid,
        codec: str0m::format::Codec,
        seq: u64,
        payload: Vec<u8>,
    ) -> Vec<u8> {
        let now = self.now;
        let rtc = &mut self.clients[c].rtc;
        let pt = rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == codec)
            .unwrap_or_else(|| panic!("{codec:?} negotiated"))
            .pt();
        let mut api = rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).expect("publisher stream");
        tx.write_rtp(
            RtpWrite::new(
                pt,
                SeqNo::from(seq),
                (seq * 3000) as u32,
                now,
                payload.clone(),
            )
            .marker(true),
        );
        payload
    }

    /// Device `d` sends VP8 packets `seqs` on `mid`, a keyframe first, one per `step`; returns
    /// the payloads.
    fn send_vp8_run(
        &mut self,
        d: usize,
        mid: Mid,
        seqs: std::ops::Range<u64>,
        step: Duration,
    ) -> Vec<Vec<u8>> {
        let first = seqs.start;
        let mut sent = Vec::new();
        for seq in seqs {
            sent.push(self.send_vp8(d, mid, seq, seq == first));
            self.tick(step);
        }
        sent
    }

    /// Waits (up to `limit`) for client `p` to receive `sent`; the indices of those it lacks.
    fn missing(&mut self, p: usize, sent: &[Vec<u8>], limit: Duration) -> Vec<usize> {
        self.run_until(limit, |n| n.received_payloads(p).len() >= sent.len());
        let got = self.received_payloads(p);
        (0..sent.len())
            .filter(|i| !got.contains(&sent[*i]))
            .collect()
    }

    fn received_payloads(&self, c: usize) -> Vec<Vec<u8>> {
        self.clients[c]
            .events
            .iter()
            .filter_map(|e| match e {
                Event::RtpPacket(p) => Some(p.payload.to_vec()),
                _ => None,
            })
            .collect()
    }

    fn keyframe_requests_seen(&self, c: usize) -> usize {
        self.clients[c]
            .events
            .iter()
            .filter(|e| matches!(e, Event::KeyframeRequest(_)))
            .count()
    }
}

/// Client `c` writes `text` on its controls channel.
fn write(net: &mut Net, c: usize, text: &str) {
    let ch = net.clients[c].controls.unwrap();
    net.clients[c]
        .rtc
        .channel(ch)
        .unwrap()
        .write(false, text.as_bytes())
        .unwrap();
}

/// What client `c` received on its data channels, as text.
fn texts(net: &Net, c: usize) -> Vec<String> {
    net.clients[c]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::ChannelData(d) => Some(String::from_utf8_lossy(&d.data).into_owned()),
            _ => None,
        })
        .collect()
}

fn drain_client(c: &mut Client, out: &mut Vec<str0m::net::Transmit>) {
    loop {
        match c.rtc.poll_output().unwrap() {
            Output::Timeout(_) => return,
            Output::Transmit(t) => out.push(t),
            Output::Event(e) => {
                if let Event::ChannelOpen(id, label) = &e {
                    if label == "controls" {
                        c.controls = Some(*id);
                    }
                }
                c.events.push(e)
            }
        }
    }
}

fn publish_video(api: &mut str0m::change::SdpApi) -> Vec<Mid> {
    vec![api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None)]
}

fn controls(api: &mut str0m::change::SdpApi) {
    api.add_channel_with_config(ChannelConfig {
        label: "controls".into(),
        ordered: true,
        reliability: Reliability::Reliable,
        ..Default::default()
    });
}

/// Device publishing video, connected; returns (client index, mid, track id).
fn device(net: &mut Net) -> (usize, Mid, String) {
    let (d, mids) = net.join(Role::Device, "rig-1", |api| {
        controls(api);
        publish_video(api)
    });
    assert!(
        net.run_until(Duration::from_secs(5), |n| n.connected(d)),
        "device connects"
    );
    let track = net.track_of(d).expect("published notice");
    (d, mids[0], track)
}

fn player(net: &mut Net, identity: &str, track: &str) -> (usize, Mid) {
    player_with(net, Rtc::builder(), identity, track)
}

fn player_with(
    net: &mut Net,
    config: str0m::RtcConfig,
    identity: &str,
    track: &str,
) -> (usize, Mid) {
    let (c, mids) = net.join_with(config, Role::Player, identity, |api| {
        controls(api);
        vec![api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None)]
    });
    net.subscribe(c, track, mids[0]);
    assert!(
        net.run_until(Duration::from_secs(5), |n| n.connected(c)),
        "player connects"
    );
    (c, mids[0])
}

#[test]
fn forwards_rtp_payloads_intact_from_a_keyframe_on() {
    let mut net = Net::new();
    let (d, mid, track) = device(&mut net);
    let (p, _) = player(&mut net, "alice", &track);
    assert!(net.clients[p]
        .notices
        .iter()
        .any(|n| matches!(n, Notice::Subscribed { track: t, .. } if *t == track)));
    // The subscriber joined: the device is asked for a keyframe.
    assert!(net.run_until(Duration::from_secs(1), |n| n.keyframe_requests_seen(d) >= 1));

    // Delta frames before any keyframe are not forwarded (the decoder could not use them).
    net.send_vp8(d, mid, 1, false);
    net.tick(Duration::from_millis(5));
    assert!(net.received_payloads(p).is_empty());

    let sent = net.send_vp8_run(d, mid, 2..40, Duration::from_millis(5));
    let missing = net.missing(p, &sent, Duration::from_secs(1));
    assert!(missing.is_empty(), "missing {missing:?} of {}", sent.len());
    let got = net.received_payloads(p);
    assert!(got == sent, "payloads arrived out of order or altered");
    // Sequence numbers are continuous from the first forwarded packet.
    let seqs: Vec<u64> = net.clients[p]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::RtpPacket(p) => Some(*p.seq_no),
            _ => None,
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(net.sfu.stats().forwarded >= sent.len() as u64);
    // A player's non-simulcast media goes through the SFU's own send path.
    assert_eq!(net.sfu.stats().forwarded_direct, net.sfu.stats().forwarded);
    let devices = net.sfu.devices(net.now);
    assert_eq!(devices.len(), 1);
    assert!(devices[0].live);
    assert_eq!(devices[0].viewers, 1);
}

#[test]
fn keyframe_requests_from_many_subscribers_reach_the_publisher_once_per_second() {
    let mut net = Net::new();
    let (d, mid, track) = device(&mut net);
    let mut players = Vec::new();
    for i in 0..5 {
        players.push(player(&mut net, &format!("p{i}"), &track));
    }
    // Let the join-time requests settle, then count from a clean slate.
    net.send_vp8(d, mid, 1, true);
    net.run_until(Duration::from_secs(2), |_| false);
    net.clients[d].events.clear();
    let requests_in = net.sfu.stats().keyframe_requests_in;
    // Every subscriber sends a PLI every 50 ms for 3 seconds: 300 requests.
    for seq in 2..62 {
        for &(c, m) in &players {
            if let Some(rx) = net.clients[c].rtc.direct_api().stream_rx_by_mid(m, None) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
            }
        }
        net.send_vp8(d, mid, seq, false);
        net.tick(Duration::from_millis(50));
    }
    net.run_until(Duration::from_millis(200), |_| false);
    let arrived = net.sfu.stats().keyframe_requests_in - requests_in;
    assert!(
        arrived >= 100,
        "subscribers' PLIs reached the SFU: {arrived}"
    );
    let forwarded = net.keyframe_requests_seen(d);
    assert!(
        (2..=4).contains(&forwarded),
        "publisher saw {forwarded} keyframe requests in ~3.2 s"
    );
}

#[test]
fn controls_are_sequenced_acknowledged_and_deduplicated() {
    let mut net = Net::new();
    let (d, _mid, track) = device(&mut net);
    let (p, _) = player(&mut net, "alice", &track);
    assert!(
        net.run_until(Duration::from_secs(2), |n| n.clients[d].controls.is_some()
            && n.clients[p].controls.is_some())
    );

    write(&mut net, p, r#"{"id":1,"data":{"key":"up"}}"#);
    write(&mut net, p, r#"{"id":2,"data":{"key":"left"}}"#);
    // A resend of id 1 (as after a reconnect): acknowledged again, not delivered again.
    write(&mut net, p, r#"{"id":1,"data":{"key":"up"}}"#);
    assert!(net.run_until(Duration::from_secs(1), |n| texts(n, p).len() >= 3));
    assert_eq!(
        texts(&net, d),
        vec![
            r#"{"seq":1,"from":"alice","data":{"key":"up"}}"#,
            r#"{"seq":2,"from":"alice","data":{"key":"left"}}"#,
        ]
    );
    assert_eq!(
        texts(&net, p),
        vec![
            r#"{"ack":1,"seq":1}"#,
            r#"{"ack":2,"seq":2}"#,
            r#"{"ack":1,"seq":1}"#
        ]
    );
    // The device answers: broadcast to players, acknowledged to the device.
    write(&mut net, d, r#"{"id":7,"data":"ok"}"#);
    assert!(net.run_until(Duration::from_secs(1), |n| texts(n, p).len() >= 4));
    assert_eq!(texts(&net, p)[3], r#"{"seq":3,"from":"rig-1","data":"ok"}"#);
    // Malformed and oversized messages get an error on the same channel; the session stays.
    write(&mut net, p, "not json");
    write(
        &mut net,
        p,
        &format!(r#"{{"id":9,"data":"{}"}}"#, "x".repeat(20_000)),
    );
    assert!(net.run_until(Duration::from_secs(1), |n| texts(n, p).len() >= 6));
    let t = texts(&net, p);
    assert!(t[4].contains(r#""code":"bad_message""#), "{}", t[4]);
    assert!(t[5].contains(r#""code":"too_large""#), "{}", t[5]);
    assert_eq!(net.sfu.stats().message_errors, 2);
    write(&mut net, p, r#"{"id":3,"data":1}"#);
    assert!(net.run_until(Duration::from_secs(1), |n| texts(n, d).len() >= 3));
}

#[test]
fn players_may_not_publish_and_unknown_tracks_are_refused() {
    let mut net = Net::new();
    let (_d, _mid, track) = device(&mut net);
    let (p, _) = net.join(Role::Player, "mallory", publish_video);
    net.run_until(Duration::from_secs(2), |n| n.connected(p));
    assert!(net.clients[p].notices.iter().any(|n| matches!(
        n,
        Notice::Error {
            code: "forbidden",
            ..
        }
    )));
    assert_eq!(net.sfu.track_count(), 1);
    let id = net.clients[p].id;
    let err = net
        .sfu
        .subscribe(id, "p99-0", "1", LayerPrefs::default(), net.now);
    assert_eq!(err.unwrap_err().code(), "unknown_track");
    assert_eq!(
        net.sfu.publish(id, "0", None, vec![]).unwrap_err().code(),
        "forbidden"
    );
    assert_eq!(
        net.sfu.offer(id, "v=garbage", net.now).unwrap_err().code(),
        "bad_sdp"
    );
    assert_eq!(
        net.sfu
            .remote_candidate(id, "candidate:nonsense", net.now)
            .unwrap_err()
            .code(),
        "bad_candidate"
    );
    // The device's track is untouched by all of that.
    assert!(net
        .sfu
        .subscribe(id, &track, "9", LayerPrefs::default(), net.now)
        .is_ok());
}

#[test]
fn leaving_unpublishes_and_notifies_the_room() {
    let mut net = Net::new();
    let (d, mid, track) = device(&mut net);
    let (p, _) = player(&mut net, "alice", &track);
    net.send_vp8(d, mid, 1, true);
    net.run_until(Duration::from_millis(200), |_| false);
    let did = net.clients[d].id;
    net.sfu.leave(did);
    net.tick(Duration::from_millis(5));
    let n = &net.clients[p].notices;
    assert!(n
        .iter()
        .any(|x| matches!(x, Notice::TrackUnpublished { track: t } if *t == track)));
    assert!(n
        .iter()
        .any(|x| matches!(x, Notice::ParticipantLeft { identity, .. } if identity == "rig-1")));
    assert_eq!(net.sfu.track_count(), 0);
    assert!(net.sfu.devices(net.now).is_empty());
    // Datagrams from the departed session's address are no longer claimed.
    let from = net.clients[d].addr;
    assert!(!net.sfu.handle_receive(
        net.now,
        Protocol::Udp,
        from,
        SERVER.parse().unwrap(),
        &[0x80, 0, 0, 1]
    ));
}

#[test]
fn subscription_negotiated_before_subscribe_and_renegotiation() {
    let mut net = Net::new();
    let (d, mid, track) = device(&mut net);
    // Player connects with data only, then adds a recvonly video in a second offer.
    let (p, _) = net.join(Role::Player, "bob", |api| {
        controls(api);
        vec![]
    });
    assert!(net.run_until(Duration::from_secs(3), |n| n.connected(p)));
    let mids = net.renegotiate(p, |api| {
        vec![api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None)]
    });
    let id = net.clients[p].id;
    net.sfu
        .subscribe(
            id,
            &track,
            &mids[0].to_string(),
            LayerPrefs::default(),
            net.now,
        )
        .unwrap();
    net.run_until(Duration::from_millis(100), |_| false);
    let sent = net.send_vp8(d, mid, 10, true);
    assert!(net.run_until(Duration::from_secs(1), |n| !n
        .received_payloads(p)
        .is_empty()));
    assert_eq!(net.received_payloads(p)[0], sent);
}

#[test]
fn stalled_publisher_is_reported_then_clears() {
    let mut net = Net::new();
    let (d, mid, track) = device(&mut net);
    let (p, _) = player(&mut net, "alice", &track);
    net.send_vp8(d, mid, 1, true);
    net.run_until(Duration::from_secs(7), |_| false);
    let stalled = |n: &Net, want: bool| {
        n.clients[p]
            .notices
            .iter()
            .any(|x| matches!(x, Notice::TrackStalled { stalled, .. } if *stalled == want))
    };
    assert!(stalled(&net, true));
    assert!(!net.sfu.devices(net.now)[0].live);
    assert_eq!(net.sfu.stats().stalls, 1);
    net.send_vp8(d, mid, 2, true);
    assert!(net.run_until(Duration::from_secs(1), |n| stalled(n, false)));
}

#[test]
fn ice_tcp_candidates_connect_when_udp_is_blocked() {
    let mut net = Net::with_ice_tcp("10.0.0.1:7881".parse().unwrap());
    // A client that can only make outgoing TCP connections (an active TCP candidate).
    let addr: SocketAddr = "10.0.1.9:40000".parse().unwrap();
    let mut rtc = tcp_only_client(addr, net.now);
    let id = net.sfu.join(
        JoinRequest {
            room: "arena",
            identity: "tcp-device",
            role: Role::Device,
            resume_from: None,
        },
        net.now,
    );
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let answer = net.sfu.offer(id, &offer.to_sdp_string(), net.now).unwrap();
    assert!(
        answer.contains("tcptype passive"),
        "answer offers ICE-TCP: {answer}"
    );
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    net.clients.push(Client {
        rtc,
        addr,
        id,
        events: Vec::new(),
        notices: Vec::new(),
        controls: None,
    });
    assert!(
        net.run_until(Duration::from_secs(5), |n| n.connected(0)),
        "connects over TCP"
    );
    net.send_vp8(0, mid, 1, true);
    net.tick(Duration::from_millis(5));
    assert!(net.sfu.stats().packets_in > 0);
}

#[test]
fn frame_mode_h264_publisher_is_live_at_once() {
    let mut net = Net::new();
    let addr: SocketAddr = "10.0.1.77:5000".parse().unwrap();
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_h264(true)
        .build(net.now);
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    let (_, mids) = net.attach(rtc, addr, Role::Device, "h264", None, |api| {
        vec![api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None)]
    });
    let mid = mids[0];
    assert!(net.run_until(Duration::from_secs(3), |n| n.connected(0)));
    // An IDR access unit: SPS, PPS, IDR slice (Annex B).
    let au: Vec<u8> = [
        &[0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01][..],
        &[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80][..],
        &[0, 0, 0, 1, 0x65][..],
        &[0x88; 300][..],
    ]
    .concat();
    for i in 0..20u64 {
        let now = net.now;
        let w = net.clients[0].rtc.writer(mid).unwrap();
        let pt = w.payload_params().next().unwrap().pt();
        w.write(
            pt,
            now,
            str0m::media::MediaTime::new(i * 3000, str0m::media::Frequency::NINETY_KHZ),
            au.clone(),
        )
        .unwrap();
        net.tick(Duration::from_millis(33));
    }
    let d = net.sfu.devices(net.now);
    assert!(d[0].live, "{d:?} stats {:?}", net.sfu.stats());
}

#[test]
fn room_log_outlives_its_members_for_resuming_clients() {
    let mut net = Net::new();
    let (d, _mid, track) = device(&mut net);
    let (p, _) = player(&mut net, "alice", &track);
    assert!(
        net.run_until(Duration::from_secs(2), |n| n.clients[d].controls.is_some()
            && n.clients[p].controls.is_some())
    );
    let ch = net.clients[p].controls.unwrap();
    for i in 1..=3 {
        let text = format!(r#"{{"id":{i},"data":{i}}}"#);
        net.clients[p]
            .rtc
            .channel(ch)
            .unwrap()
            .write(false, text.as_bytes())
            .unwrap();
        net.tick(Duration::from_millis(5));
    }
    assert!(net.run_until(Duration::from_secs(1), |n| n.clients[d]
        .events
        .iter()
        .filter(|e| matches!(e, Event::ChannelData(_)))
        .count()
        >= 3));
    // Everyone leaves; the device comes back having seen only seq 1.
    let (did, pid) = (net.clients[d].id, net.clients[p].id);
    net.sfu.leave(did);
    net.sfu.leave(pid);
    net.run_until(Duration::from_secs(2), |_| false);
    let n = net.clients.len();
    let addr: SocketAddr = "10.0.1.99:5000".parse().unwrap();
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(net.now);
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    net.attach(rtc, addr, Role::Device, "rig-1", Some(1), |api| {
        controls(api);
        vec![]
    });
    let replayed = |net: &Net| -> Vec<String> {
        net.clients[n]
            .events
            .iter()
            .filter_map(|e| match e {
                Event::ChannelData(d) => Some(String::from_utf8_lossy(&d.data).into_owned()),
                _ => None,
            })
            .collect()
    };
    assert!(net.run_until(Duration::from_secs(3), |n| replayed(n).len() >= 2));
    assert_eq!(
        replayed(&net),
        vec![
            r#"{"seq":2,"from":"alice","data":2}"#,
            r#"{"seq":3,"from":"alice","data":3}"#
        ]
    );
}

#[test]
fn subscribe_rules() {
    let mut net = Net::new();
    let (d, _mid, track) = device(&mut net);
    let did = net.clients[d].id;
    // Devices publish; they do not subscribe.
    let e = net
        .sfu
        .subscribe(did, &track, "5", LayerPrefs::default(), net.now);
    assert_eq!(e.unwrap_err().code(), "forbidden");
    let (p, mids) = net.join(Role::Player, "bob", |api| {
        vec![
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None),
            api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None),
        ]
    });
    let pid = net.clients[p].id;
    // Wrong kind, and a mid that does not receive, are refused at once.
    let e = net.sfu.subscribe(
        pid,
        &track,
        &mids[0].to_string(),
        LayerPrefs::default(),
        net.now,
    );
    assert!(
        matches!(e, Err(SfuError::BadRequest(ref m)) if m.contains("audio")),
        "{e:?}"
    );
    let e = net.sfu.subscribe(
        pid,
        &track,
        &mids[1].to_string(),
        LayerPrefs::default(),
        net.now,
    );
    assert!(
        matches!(e, Err(SfuError::BadRequest(ref m)) if m.contains("recvonly")),
        "{e:?}"
    );
    // A pending subscription (mid not negotiated yet) can be cancelled.
    net.sfu
        .subscribe(pid, &track, "77", LayerPrefs::default(), net.now)
        .unwrap();
    assert!(net.sfu.unsubscribe(pid, &track).is_ok());
    assert_eq!(
        net.sfu.unsubscribe(pid, &track).unwrap_err().code(),
        "unknown_track"
    );
}

#[test]
fn a_track_is_found_by_its_publishers_identity() {
    let mut net = Net::new();
    let (d, _mid, track) = device(&mut net);
    let who = "rig-1";
    let (p, _) = net.join(Role::Player, "bob", |api| {
        vec![api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None)]
    });
    let pid = net.clients[p].id;
    assert_eq!(net.sfu.track_of(pid, who, "video").unwrap(), track);
    // No audio track, nobody of that name, and not one's own.
    assert_eq!(
        net.sfu.track_of(pid, who, "audio").unwrap_err().code(),
        "unknown_track"
    );
    assert_eq!(
        net.sfu.track_of(pid, "nobody", "video").unwrap_err().code(),
        "unknown_track"
    );
    let did = net.clients[d].id;
    assert_eq!(
        net.sfu.track_of(did, who, "video").unwrap_err().code(),
        "unknown_track"
    );
}

#[test]
fn a_new_track_is_not_stalled_before_stall_after() {
    let mut net = Net::new();
    let (_d, _mid, _track) = device(&mut net);
    let stalls = |n: &Net| n.sfu.stats().stalls;
    net.run_until(Duration::from_secs(4), |_| false);
    assert_eq!(stalls(&net), 0, "no media for 4 s < stall_after (5 s)");
    assert!(net.run_until(Duration::from_secs(3), |n| stalls(n) == 1));
}

#[test]
fn a_waiting_subscriber_keeps_asking_for_a_keyframe() {
    let mut net = Net::new();
    let (d, mid, track) = device(&mut net);
    let (p, _) = player(&mut net, "alice", &track);
    // The device ignores every request and sends only delta frames for 3.5 s.
    for seq in 1..=70 {
        net.send_vp8(d, mid, seq, false);
        net.tick(Duration::from_millis(50));
    }
    assert!(net.received_payloads(p).is_empty());
    let asked = net.keyframe_requests_seen(d);
    assert!(
        (3..=5).contains(&asked),
        "asked {asked} times in ~3.5 s (once per second)"
    );
    // Once a keyframe comes, media flows and the asking stops.
    net.send_vp8(d, mid, 71, true);
    assert!(net.run_until(Duration::from_secs(1), |n| !n
        .received_payloads(p)
        .is_empty()));
    // A request already held or in flight at that moment may still arrive; after it, none.
    for seq in 72..=80 {
        net.send_vp8(d, mid, seq, false);
        net.tick(Duration::from_millis(150));
    }
    net.clients[d].events.clear();
    for seq in 81..=130 {
        net.send_vp8(d, mid, seq, false);
        net.tick(Duration::from_millis(50));
    }
    assert_eq!(net.keyframe_requests_seen(d), 0);
}

#[test]
fn simulcast_layer_follows_preference_switching_at_a_keyframe() {
    use str0m::media::{Rid, Simulcast, SimulcastLayer};
    let mut net = Net::new();
    let (d, mids) = net.join(Role::Device, "rig-sc", |api| {
        let mut sc = Simulcast::new();
        sc.add_send_layer(SimulcastLayer::new("h"));
        sc.add_send_layer(SimulcastLayer::new("l"));
        vec![api.add_media(MediaKind::Video, Direction::SendOnly, None, None, Some(sc))]
    });
    let mid = mids[0];
    assert!(net.run_until(Duration::from_secs(5), |n| n.connected(d)));
    let track = net.track_of(d).expect("published");
    let (p, _) = player(&mut net, "alice", &track);
    let pid = net.clients[p].id;

    // Each layer's payload says which layer it is: 'H' (900 B) or 'L' (90 B).
    let mut seqs = [1u64, 1u64];
    let mut send = |net: &mut Net, key: bool| {
        for (i, (rid, size, tag)) in [("h", 900usize, b'H'), ("l", 90, b'L')]
            .into_iter()
            .enumerate()
        {
            let now = net.now;
            let rtc = &mut net.clients[d].rtc;
            let pt = rtc
                .codec_config()
                .params()
                .iter()
                .find(|p| p.spec().codec == str0m::format::Codec::Vp8)
                .unwrap()
                .pt();
            let mut payload = vec![tag; size];
            payload[0] = 0x10;
            payload[1] = if key { 0x00 } else { 0x01 };
            let mut api = rtc.direct_api();
            let tx = api
                .stream_tx_by_mid(mid, Some(Rid::from(rid)))
                .expect("layer stream");
            let s = seqs[i];
            tx.write_rtp(
                RtpWrite::new(pt, SeqNo::from(s), (s * 3000) as u32, now, payload).marker(true),
            );
            seqs[i] += 1;
        }
    };
    let tags = |net: &Net| -> Vec<u8> {
        net.clients[p]
            .events
            .iter()
            .filter_map(|e| match e {
                Event::RtpPacket(x) => x.payload.get(2).copied(),
                _ => None,
            })
            .collect()
    };
    // 2 s of both layers, a keyframe on each every 500 ms: the subscriber (1.5 Mbit/s initial
    // estimate) gets the high layer.
    for i in 0..100 {
        send(&mut net, i % 25 == 0);
        net.tick(Duration::from_millis(20));
    }
    let got = tags(&net);
    assert!(!got.is_empty(), "media forwarded");
    assert_eq!(
        *got.last().unwrap(),
        b'H',
        "the high layer while the estimate allows it"
    );

    // The player asks for the low layer: the switch happens at the low layer's next keyframe.
    net.sfu
        .subscribe(
            pid,
            &track,
            "ignored",
            LayerPrefs {
                layer: Some("low".into()),
                ..Default::default()
            },
            net.now,
        )
        .unwrap();
    let before = got.len();
    for i in 0..60 {
        send(&mut net, i == 30);
        net.tick(Duration::from_millis(20));
    }
    let got = tags(&net);
    let after: Vec<u8> = got[before..].to_vec();
    let first_l = after
        .iter()
        .position(|t| *t == b'L')
        .expect("switched to the low layer");
    assert!(
        after[..first_l].iter().all(|t| *t == b'H'),
        "high until the switch"
    );
    assert!(
        after[first_l..].iter().all(|t| *t == b'L'),
        "only low after the switch"
    );
    // Delta frames between the request and the low keyframe were not used to switch.
    assert!(
        first_l >= 25,
        "switched at the keyframe (packet {first_l}), not before"
    );
    assert!(net.clients[p]
        .notices
        .iter()
        .any(|n| matches!(n, Notice::LayerChanged { layer: Some(l), .. } if l == "l")));
    // One continuous outgoing stream across the switch.
    let seqs_out: Vec<u64> = net.clients[p]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::RtpPacket(x) => Some(*x.seq_no),
            _ => None,
        })
        .collect();
    assert!(
        seqs_out.windows(2).all(|w| w[1] == w[0] + 1),
        "{seqs_out:?}"
    );
    assert!(net.sfu.stats().layer_switches >= 1);
}

/// The SFU's own send path against str0m receivers for each SRTP profile: payloads intact,
/// lost packets resent from the track's cache as RTX after the receiver's NACK, and sender
/// reports carrying the stream's RTP clock.
#[test]
fn direct_path_serves_nacks_from_the_track_cache_and_sends_sender_reports() {
    let profiles: [(&'static std::ffi::CStr, Option<srtp::Profile>); 4] = [
        (
            c"SRTP_AES128_CM_SHA1_80",
            Some(srtp::Profile::Aes128CmSha1_80),
        ),
        (c"SRTP_AEAD_AES_128_GCM", Some(srtp::Profile::AeadAes128Gcm)),
        (c"SRTP_AEAD_AES_256_GCM", Some(srtp::Profile::AeadAes256Gcm)),
        // str0m's own DTLS on the client, as in the other tests.
        (c"", None),
    ];
    for (list, profile) in profiles {
        let mut net = Net::new();
        let (d, mid, track) = device(&mut net);
        let config = match profile {
            Some(_) => {
                Rtc::builder().set_crypto_provider(dtls::crypto_provider_with_srtp_profiles(list))
            }
            None => Rtc::builder(),
        };
        let (p, _) = player_with(&mut net, config, "alice", &track);
        let pid = net.clients[p].id;
        let chosen = net.sfu.participants[&pid]
            .direct
            .as_ref()
            .map(|d| d.tx.profile());
        if profile.is_some() {
            assert_eq!(chosen, profile, "{list:?}");
        } else {
            assert!(chosen.is_some(), "str0m's DTLS: keys installed");
        }
        // Output sequence numbers start at 1 with the keyframe: lose the 3rd, 7th and 8th.
        net.lose = Some((net.clients[p].addr, vec![3, 7, 8]));
        let sent = net.send_vp8_run(d, mid, 1..60, Duration::from_millis(20));
        let missing = net.missing(p, &sent, Duration::from_secs(2));
        assert!(missing.is_empty(), "{list:?}: missing {missing:?}");
        assert_eq!(
            net.lose.as_ref().map(|l| l.1.len()),
            Some(0),
            "all three were lost"
        );
        let stats = net.sfu.stats();
        assert!(stats.nacked >= 3, "{list:?}: {stats:?}");
        assert!(stats.retransmitted >= 3, "{list:?}: {stats:?}");
        assert_eq!(stats.srtp_errors, 0);
        // Resent as RTX: the subscriber negotiated it, and RTX sequence numbers were used.
        let out = net.sfu.participants[&pid]
            .subs
            .values()
            .next()
            .unwrap()
            .out
            .clone();
        assert!(
            out.as_ref()
                .is_some_and(|o| o.rtx_ssrc.is_some() && o.rtx_seq > 3),
            "{out:?}"
        );
        // Sender reports: the receiver's latest packets carry our SR, whose RTP time is on
        // the stream's clock (3000 ticks per 20 ms packet here, 90 kHz).
        let info = net.clients[p].events.iter().rev().find_map(|e| match e {
            Event::RtpPacket(p) => p.last_sender_info,
            _ => None,
        });
        let info = info.unwrap_or_else(|| panic!("{list:?}: no sender report reached the player"));
        assert!(info.sender_packet_count >= 50, "{info:?}");
        assert!(info.sender_octet_count >= 50 * 100, "{info:?}");
        let last_ts = net.clients[p]
            .events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::RtpPacket(p) => Some(p.header.timestamp),
                _ => None,
            })
            .unwrap();
        let sr_ts = info.rtp_time.numer() as u32;
        assert!(
            last_ts.wrapping_sub(sr_ts) < 200_000 || sr_ts.wrapping_sub(last_ts) < 200_000,
            "{sr_ts} vs {last_ts}"
        );
    }
}

/// A player whose media all takes the SFU's own path does not run str0m's bandwidth
/// estimation every few tens of milliseconds (it would cost a wake-up per player that often).
#[test]
fn direct_path_players_do_not_wake_for_idle_bandwidth_estimation() {
    let wakes_with = |players: usize| {
        let mut net = Net::new();
        let (d, mid, track) = device(&mut net);
        for i in 0..players {
            player(&mut net, &format!("p{i}"), &track);
        }
        net.send_vp8(d, mid, 1, true);
        net.run_until(Duration::from_secs(1), |_| false);
        let before = net.sfu.stats().session_wakes;
        for seq in 2..302 {
            net.send_vp8(d, mid, seq, false);
            net.tick(Duration::from_millis(10));
        }
        assert!(net.sfu.stats().forwarded_direct >= 300 * players as u64);
        net.sfu.stats().session_wakes - before
    };
    let one = wakes_with(1);
    let six = wakes_with(6);
    // Three seconds, five more players: at most a couple of wake-ups a second each.
    let per_player_second = (six.saturating_sub(one)) as f64 / 5.0 / 3.0;
    assert!(
        per_player_second <= 3.0,
        "{one} vs {six}: {per_player_second}/s per player"
    );
}

/// A subscriber that subscribed before it could receive gets its join keyframe requested when
/// it connects: the one asked for at subscribe time went by before its DTLS was up, and the
/// per-interval requests of subscribers already waiting could make it wait a second more.
#[test]
fn join_keyframe_is_requested_when_the_subscriber_connects() {
    let mut net = Net::new();
    let (d, _mid, track) = device(&mut net);
    // An early player waits for a keyframe the device never sends: its requests go out once
    // per keyframe interval.
    player(&mut net, "early", &track);
    let seen = net.keyframe_requests_seen(d);
    assert!(
        net.run_until(Duration::from_secs(3), |n| n.keyframe_requests_seen(d)
            > seen)
    );
    // Right after one of them, a late player subscribes and connects.
    let (c, mids) = net.join(Role::Player, "late", |api| {
        controls(api);
        vec![api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None)]
    });
    net.subscribe(c, &track, mids[0]);
    assert!(net.run_until(Duration::from_millis(400), |n| n.connected(c)));
    let at_connect = net.keyframe_requests_seen(d);
    // Well before the early player's next one (a keyframe interval after the last).
    assert!(
        net.run_until(Duration::from_millis(300), |n| n.keyframe_requests_seen(d)
            > at_connect),
        "no keyframe request after the late subscriber connected"
    )
}

/// A peer whose certificate does not match its SDP fingerprint fails; the SFU counts it and
/// hands the reason to the driver's log.
#[test]
fn dtls_failure_reasons_are_reported() {
    let mut net = Net::new();
    let addr: SocketAddr = "10.0.1.77:5000".parse().unwrap();
    let mut rtc = Rtc::builder().set_rtp_mode(true).build(net.now);
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    let forge = |mut sdp: String| {
        let at = sdp.find("a=fingerprint:sha-256 ").unwrap() + "a=fingerprint:sha-256 ".len();
        let forged = if &sdp[at..at + 2] == "00" { "11" } else { "00" };
        sdp.replace_range(at..at + 2, forged);
        sdp
    };
    let (c, _) = net.attach_editing_offer(
        rtc,
        addr,
        Role::Player,
        "forger",
        None,
        |api| {
            controls(api);
            Vec::new()
        },
        forge,
    );
    let id = net.clients[c].id;
    let mut reasons = Vec::new();
    net.run_until(Duration::from_secs(5), |n| {
        n.sfu.stats().webrtc_failures > 0
    });
    while let Some((who, why)) = net.sfu.poll_failure() {
        assert_eq!(who, id);
        reasons.push(why);
    }
    assert!(
        net.sfu.stats().webrtc_failures >= 1,
        "{:?}",
        net.sfu.stats()
    );
    assert!(
        reasons.iter().any(|r| r.contains("fingerprint")),
        "{reasons:?}"
    );
}

/// VP9, AV1 and H.264 are forwarded as they come (no transcoding, no repacketizing), starting
/// at the codec's keyframe, when publisher and player negotiated only that codec.
#[test]
fn forwards_vp9_av1_and_h264_payloads_intact() {
    use str0m::format::Codec;
    // (codec, first packet of a keyframe, a delta packet)
    let cases: [(Codec, Vec<u8>, Vec<u8>); 3] = [
        // VP9: B set, P clear; then P set.
        (Codec::Vp9, vec![0x08, 0xaa, 0xbb], vec![0x48, 0xcc, 0xdd]),
        // AV1: N set (new coded video sequence); then a plain OBU element.
        (Codec::Av1, vec![0x18, 0x0a, 0x0b], vec![0x10, 0x32, 0x01]),
        // H.264: IDR slice; then a non-IDR slice.
        (Codec::H264, vec![0x65, 0x88, 0x84], vec![0x41, 0x9a, 0x02]),
    ];
    for (codec, key, delta) in cases {
        let config = || {
            let c = Rtc::builder().clear_codecs();
            match codec {
                Codec::Vp9 => c.enable_vp9(true),
                Codec::Av1 => c.enable_av1(true),
                _ => c.enable_h264(true),
            }
        };
        let mut net = Net::new();
        let (d, mids) = net.join_with(config(), Role::Device, "rig", |api| {
            controls(api);
            publish_video(api)
        });
        assert!(net.run_until(Duration::from_secs(5), |n| n.connected(d)));
        let track = net.track_of(d).expect("published");
        let (p, _) = player_with(&mut net, config(), "alice", &track);
        let mut sent = Vec::new();
        for seq in 1..30u64 {
            let mut payload = if seq == 1 { key.clone() } else { delta.clone() };
            payload.extend((0..60u8).map(|i| i ^ seq as u8));
            sent.push(net.send_rtp(d, mids[0], codec, seq, payload));
            net.tick(Duration::from_millis(10));
        }
        net.run_until(Duration::from_secs(1), |n| {
            n.received_payloads(p).len() >= sent.len()
        });
        assert_eq!(net.received_payloads(p), sent, "{codec:?}");
        let got_pt = net.clients[p].events.iter().find_map(|e| match e {
            Event::RtpPacket(r) => Some(r.header.payload_type),
            _ => None,
        });
        let codec_of_pt = got_pt.and_then(|pt| {
            net.clients[p]
                .rtc
                .codec_config()
                .params()
                .iter()
                .find(|c| c.pt() == pt)
                .map(|c| c.spec().codec)
        });
        assert_eq!(
            codec_of_pt,
            Some(codec),
            "the player's payload type for {codec:?}"
        );
    }
}

/// A player reachable only over ICE-TCP gets its media on the SFU's own send path as TCP
/// (framed by the driver), to the connection its ICE pair uses.
#[test]
fn direct_path_follows_an_ice_tcp_pair() {
    let mut net = Net::with_ice_tcp("10.0.0.1:7883".parse().unwrap());
    let (d, mid, track) = device(&mut net);
    let addr: SocketAddr = "10.0.1.99:40000".parse().unwrap();
    let rtc = tcp_only_client(addr, net.now);
    let (c, mids) = net.attach(rtc, addr, Role::Player, "tcp-player", None, |api| {
        vec![api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None)]
    });
    let id = net.clients[c].id;
    net.subscribe(c, &track, mids[0]);
    assert!(
        net.run_until(Duration::from_secs(5), |n| n.connected(c)),
        "connects over TCP"
    );
    let sent = net.send_vp8_run(d, mid, 1..20, Duration::from_millis(10));
    assert!(net.missing(c, &sent, Duration::from_secs(1)).is_empty());
    assert_eq!(net.received_payloads(c), sent);
    assert!(net.sfu.stats().forwarded_direct >= sent.len() as u64);
    let path = net.sfu.participants[&id].path;
    assert_eq!(path.map(|p| p.0), Some(Protocol::Tcp), "{path:?}");
}

/// Subscribing again on a mid (same outgoing SSRC) continues its sequence numbers: an SRTP
/// index used before would be dropped as a replay (and would reuse a keystream).
#[test]
fn resubscribing_on_a_mid_continues_its_sequence_numbers() {
    let mut net = Net::new();
    let (d, mid, track) = device(&mut net);
    let (p, pmid) = player(&mut net, "alice", &track);
    let id = net.clients[p].id;
    let mut sent = net.send_vp8_run(d, mid, 1..10, Duration::from_millis(10));
    let missing = net.missing(p, &sent, Duration::from_secs(1));
    assert!(
        missing.is_empty(),
        "before unsubscribing: missing {missing:?}"
    );
    net.sfu.unsubscribe(id, &track).expect("unsubscribe");
    net.subscribe(p, &track, pmid);
    sent.extend(net.send_vp8_run(d, mid, 10..20, Duration::from_millis(10)));
    net.missing(p, &sent, Duration::from_secs(1));
    let got = net.received_payloads(p);
    assert!(
        got == sent,
        "received {} of {} payloads",
        got.len(),
        sent.len()
    );
    let seqs: Vec<u64> = net.clients[p]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::RtpPacket(r) => Some(*r.seq_no),
            _ => None,
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
}
