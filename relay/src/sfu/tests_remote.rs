//! Two SFU cores joined by an in-memory trunk: a device on node A, players on node B who
//! receive it through B's stand-in of the device. Same simulated network and clock as the
//! single-node tests.

use std::collections::HashMap;

use super::messages::Audience;
use super::*;

/// Carries trunk outputs both ways (A → B packets, B → A demand and keyframe requests), the
/// way the trunk driver does. Counts A's packets per track.
struct Trunk {
    /// B's local id of each of A's tracks.
    local: HashMap<String, String>,
    /// Packets A put on the trunk.
    packets: usize,
    /// Demand A has seen per track.
    demand: HashMap<String, Vec<(Option<String>, usize)>>,
    keyframes: usize,
    /// Room messages to the home are held back (the trunk is "down") while set.
    hold_messages: bool,
    held: Vec<TrunkOutput>,
}

impl Trunk {
    fn new() -> Self {
        Trunk {
            local: HashMap::new(),
            packets: 0,
            demand: HashMap::new(),
            keyframes: 0,
            hold_messages: false,
            held: Vec::new(),
        }
    }

    fn carry(&mut self, a: &mut Net, b: &mut Net) {
        while let Some(o) = b.sfu.poll_trunk() {
            match o {
                TrunkOutput::Demand {
                    home,
                    track,
                    layers,
                    ..
                } => {
                    assert_eq!(&*home, "fra");
                    a.sfu.set_export(&track, !layers.is_empty());
                    self.demand.insert(track, layers);
                }
                TrunkOutput::Keyframe { track, layer, .. } => {
                    self.keyframes += 1;
                    a.sfu.trunk_keyframe(&track, layer.as_deref(), a.now);
                }
                TrunkOutput::RoomMessage {
                    home,
                    room,
                    from,
                    origin,
                    id,
                    to,
                    data,
                } => {
                    assert_eq!(&*home, "fra");
                    if self.hold_messages {
                        self.held.push(TrunkOutput::RoomMessage {
                            home,
                            room,
                            from,
                            origin,
                            id,
                            to,
                            data,
                        });
                        continue;
                    }
                    let seq =
                        a.sfu
                            .trunk_room_send(&room, &from, id, to, &data, origin.is_some(), a.now);
                    if let (Some(origin), Some(seq)) = (origin, seq) {
                        b.sfu.trunk_ack(ParticipantId(origin), id, seq, b.now);
                    }
                }
                TrunkOutput::Packet { .. }
                | TrunkOutput::RoomChanged { .. }
                | TrunkOutput::RoomDelivered { .. } => {
                    panic!("B exports nothing, and nobody watches its rooms")
                }
            }
        }
        while let Some(o) = a.sfu.poll_trunk() {
            match o {
                TrunkOutput::Packet { track, layer, rtp } => {
                    self.packets += 1;
                    let local = &self.local[&*track];
                    assert!(b.sfu.remote_rtp(local, layer.as_deref(), &rtp, b.now));
                }
                TrunkOutput::RoomDelivered {
                    room,
                    seq,
                    from,
                    to,
                    data,
                } => {
                    b.sfu.trunk_deliver(&room, seq, &from, to, &data, b.now);
                }
                TrunkOutput::RoomChanged { .. } => {}
                other => panic!("A asks nothing of the trunk: {other:?}"),
            }
        }
    }

    fn tick(&mut self, a: &mut Net, b: &mut Net, step: Duration) {
        a.tick(step);
        self.carry(a, b);
        b.tick(step);
        self.carry(a, b);
    }
}

fn spec_of(a: &Net, track: &str) -> RemoteTrackSpec {
    let info = a.sfu.export_info(track).expect("exportable");
    assert_eq!(&*info.room, "arena");
    let (params, spec) = (info.params, info.params.spec());
    RemoteTrackSpec {
        track: track.to_string(),
        kind: info.kind,
        name: info.name,
        layers: info.layers,
        codec: spec.codec.to_string(),
        clock_rate: spec.clock_rate.get(),
        channels: spec.channels,
        pt: *params.pt(),
        fmtp: spec.format.to_string(),
    }
}

#[test]
fn players_on_another_node_get_the_device_through_one_trunk_copy() {
    let mut a = Net::new();
    let mut b = Net::new();
    let mut trunk = Trunk::new();
    let (d, mid, track) = device(&mut a);
    // The codec is known from the first packet on.
    a.send_vp8(d, mid, 1, true);
    a.tick(Duration::from_millis(5));
    assert!(
        a.sfu.poll_trunk().is_none(),
        "not exported before anyone asks"
    );

    // B stands in for the device and its track.
    let rig = b.sfu.remote_publisher("arena", "rig-1", "fra", b.now);
    let local = b.sfu.remote_track(rig, spec_of(&a, &track), b.now).unwrap();
    assert_eq!(&*local, "fra/".to_string() + &track);
    trunk.local.insert(track.clone(), local.to_string());
    // The stand-in is not a session of B, and B does not list A's device as its own.
    assert_eq!(b.sfu.session_count(), 0);
    assert!(b.sfu.devices(b.now).is_empty());

    let players: Vec<usize> = (0..3)
        .map(|i| {
            let (p, _) = player(&mut b, &format!("p{i}"), &local);
            trunk.carry(&mut a, &mut b);
            p
        })
        .collect();
    // A joining player sees the stand-in and its track like a local device's.
    let (people, tracks) = b.sfu.snapshot(b.clients[players[0]].id);
    assert!(people.iter().any(|p| p.identity == "rig-1"));
    assert!(tracks
        .iter()
        .any(|t| t.id == *local && t.publisher == "rig-1"));
    // One demand for three subscribers; the players' keyframe requests reach the device.
    assert_eq!(trunk.demand[&track], [(None, 3)]);
    for _ in 0..20 {
        trunk.tick(&mut a, &mut b, Duration::from_millis(5));
    }
    assert!(trunk.keyframes >= 1);
    assert!(
        a.keyframe_requests_seen(d) >= 1,
        "the device was asked for a keyframe"
    );

    let mut sent = Vec::new();
    for seq in 2..40u64 {
        sent.push(a.send_vp8(d, mid, seq, seq == 2));
        trunk.tick(&mut a, &mut b, Duration::from_millis(5));
    }
    for _ in 0..20 {
        trunk.tick(&mut a, &mut b, Duration::from_millis(5));
    }
    // (The first keyframe, sent before anyone subscribed, may still have been in the device's
    // pacer when the export began.)
    let got = b.received_payloads(players[0]);
    assert!(
        got.ends_with(&sent) && got.len() <= sent.len() + 1,
        "player 0 got {} payloads, not the {} sent intact and in order",
        got.len(),
        sent.len()
    );
    for p in &players[1..] {
        assert!(b.received_payloads(*p) == got, "player {p} got the same");
    }
    // Each packet crossed the trunk once, for three players.
    assert_eq!(trunk.packets, got.len());
    assert_eq!(b.sfu.stats().trunk_packets_in, got.len() as u64);

    // The players leave: B's demand drops to nothing and A stops exporting.
    for p in &players {
        let id = b.clients[*p].id;
        b.sfu.leave(id);
    }
    trunk.carry(&mut a, &mut b);
    assert_eq!(trunk.demand[&track], []);
    a.send_vp8(d, mid, 40, false);
    trunk.tick(&mut a, &mut b, Duration::from_millis(5));
    assert_eq!(
        trunk.packets,
        got.len(),
        "nothing exported after the last subscriber left"
    );

    // The track ends at its home: B's players would hear it unpublished.
    b.sfu.remote_track_ended(&local);
    assert_eq!(b.sfu.track_count(), 0);
}

#[test]
fn trunk_losses_are_resent_from_the_home_cache() {
    let mut a = Net::new();
    let (d, mid, track) = device(&mut a);
    a.sfu.set_export(&track, true);
    for seq in 1..20u64 {
        a.send_vp8(d, mid, seq, seq == 1);
        a.tick(Duration::from_millis(5));
    }
    for _ in 0..20 {
        a.tick(Duration::from_millis(5));
    }
    let mut seen = Vec::new();
    while let Some(o) = a.sfu.poll_trunk() {
        if let TrunkOutput::Packet { rtp, .. } = o {
            seen.push(rtp);
        }
    }
    assert_eq!(seen.len(), 19);
    let again = a.sfu.trunk_resend(&track, &[5, 6, 999]);
    assert_eq!(again, [seen[4].clone(), seen[5].clone()]);
    assert_eq!(a.sfu.stats().trunk_resend_misses, 1);
    // A remote track's packets with a wrong payload type, or not RTP, are refused and counted.
    let mut b = Net::new();
    let rig = b.sfu.remote_publisher("arena", "rig-1", "fra", b.now);
    let local = b.sfu.remote_track(rig, spec_of(&a, &track), b.now).unwrap();
    assert!(!b.sfu.remote_rtp(&local, None, b"junk", b.now));
    let mut wrong_pt = seen[0].clone();
    wrong_pt[1] = 0x7f;
    assert!(!b.sfu.remote_rtp(&local, None, &wrong_pt, b.now));
    assert!(b.sfu.remote_rtp(&local, None, &seen[0], b.now));
    assert_eq!(b.sfu.stats().trunk_bad_packets, 2);
    // Nor can a local track be fed from the trunk.
    assert!(!a.sfu.remote_rtp(&track, None, &seen[0], a.now));
}

#[test]
fn controls_are_sequenced_at_the_home_and_acknowledged_only_then() {
    let mut a = Net::new();
    let mut b = Net::new();
    let mut trunk = Trunk::new();
    let (d, _mid, track) = device(&mut a);
    a.sfu.set_watched("arena", true);
    let rig = b.sfu.remote_publisher("arena", "rig-1", "fra", b.now);
    let local = b.sfu.remote_track(rig, spec_of(&a, &track), b.now).unwrap();
    trunk.local.insert(track.clone(), local.to_string());
    let (p, _) = player(&mut b, "alice", &local);
    b.sfu.set_edge("arena", Some("fra"));
    for _ in 0..200 {
        if a.clients[d].controls.is_some() && b.clients[p].controls.is_some() {
            break;
        }
        trunk.tick(&mut a, &mut b, Duration::from_millis(5));
    }
    assert!(b.clients[p].controls.is_some() && a.clients[d].controls.is_some());

    // The trunk holds the messages: no acknowledgement before the home sequenced them.
    trunk.hold_messages = true;
    write(&mut b, p, r#"{"id":1,"data":{"key":"up"}}"#);
    write(&mut b, p, r#"{"id":2,"data":{"key":"left"}}"#);
    for _ in 0..20 {
        trunk.tick(&mut a, &mut b, Duration::from_millis(5));
    }
    assert_eq!(trunk.held.len(), 2);
    assert!(
        texts(&b, p).is_empty(),
        "acknowledged before the home sequenced: {:?}",
        texts(&b, p)
    );
    assert_eq!(
        b.sfu.room_last_seq(b.clients[p].id),
        0,
        "the edge sequences nothing itself"
    );
    // The trunk is back: what was held goes (and a re-send of id 1, as after a reconnect).
    trunk.hold_messages = false;
    for m in std::mem::take(&mut trunk.held) {
        if let TrunkOutput::RoomMessage {
            room,
            from,
            origin,
            id,
            to,
            data,
            ..
        } = m
        {
            for _ in 0..(if id == Some(1) { 2 } else { 1 }) {
                let seq = a
                    .sfu
                    .trunk_room_send(&room, &from, id, to, &data, true, a.now)
                    .unwrap();
                b.sfu
                    .trunk_ack(ParticipantId(origin.unwrap()), id, seq, b.now);
            }
        }
    }
    for _ in 0..40 {
        trunk.tick(&mut a, &mut b, Duration::from_millis(5));
    }
    // The device got each once, in order; the player got the acks (the duplicate's too).
    assert_eq!(
        texts(&a, d),
        [
            r#"{"seq":1,"from":"alice","data":{"key":"up"}}"#,
            r#"{"seq":2,"from":"alice","data":{"key":"left"}}"#
        ]
    );
    assert_eq!(
        texts(&b, p),
        [
            r#"{"ack":1,"seq":1}"#,
            r#"{"ack":1,"seq":1}"#,
            r#"{"ack":2,"seq":2}"#
        ]
    );
    // The device answers: the player on B gets it with the home's sequence number, and B's
    // mirrored log has it for a player resuming there.
    write(&mut a, d, r#"{"id":7,"data":"ok"}"#);
    for _ in 0..40 {
        trunk.tick(&mut a, &mut b, Duration::from_millis(5));
    }
    assert_eq!(texts(&b, p)[3], r#"{"seq":3,"from":"rig-1","data":"ok"}"#);
    assert_eq!(b.sfu.room_last_seq(b.clients[p].id), 3);
    // Bad messages from a peer are refused and counted, not delivered.
    assert_eq!(
        a.sfu.trunk_room_send(
            "arena",
            "x",
            None,
            Audience::Devices,
            "{not json",
            true,
            a.now
        ),
        None
    );
    assert_eq!(
        a.sfu
            .trunk_room_send("nowhere", "x", None, Audience::Devices, "1", true, a.now),
        None
    );
    assert!(!b
        .sfu
        .trunk_deliver("arena", Some(9), "x", Audience::Players, "{", b.now));
    assert_eq!(a.sfu.stats().trunk_bad_messages, 2);
    // A sequence number the edge already has is not delivered again.
    assert!(!b.sfu.trunk_deliver(
        "arena",
        Some(3),
        "rig-1",
        Audience::Players,
        "\"ok\"",
        b.now
    ));
}
