//! Real trunk endpoints on loopback: mutual TLS under one CA, control messages in order,
//! media datagrams, refusals (another CA, not allowed), idle close and re-dial, simultaneous
//! dials.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_trunk::tls::{make_ca, make_node_cert, Pem, TlsMaterial};
use meridian_trunk::{Audience, Event, Msg, Trunk, TrunkSettings};
use tokio::sync::mpsc;

type Book = Arc<Mutex<HashMap<String, SocketAddr>>>;

struct Node {
    trunk: Trunk,
    events: mpsc::Receiver<Event>,
}

fn material(ca: &Pem, node: &str) -> TlsMaterial {
    let n = make_node_cert(&ca.key, node, 1).unwrap();
    TlsMaterial::from_pem(ca.cert.as_bytes(), n.cert.as_bytes(), n.key.as_bytes()).unwrap()
}

fn start(book: &Book, id: &str, tls: TlsMaterial, allow: &[&str], idle: Duration) -> Node {
    let b = Arc::clone(book);
    let (trunk, events) = Trunk::start(TrunkSettings {
        node: id.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls,
        allow: allow.iter().map(|s| s.to_string()).collect(),
        idle_timeout: idle,
        keepalive: Duration::from_millis(100),
        resolve: Arc::new(move |n: &str| b.lock().unwrap().get(n).map(|a| a.to_string())),
    })
    .unwrap();
    book.lock()
        .unwrap()
        .insert(id.into(), trunk.local_addr().unwrap());
    Node { trunk, events }
}

/// The next event, within 5 s.
async fn next(n: &mut Node) -> Event {
    tokio::time::timeout(Duration::from_secs(5), n.events.recv())
        .await
        .expect("no event within 5 s")
        .expect("events closed")
}

fn room_msg(i: u64) -> Msg {
    Msg::RoomSend {
        room: "arena".into(),
        from: "p1".into(),
        origin: 1,
        id: Some(i),
        to: Audience::Devices,
        data: format!("{{\"n\":{i}}}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_in_order_and_datagrams_carry_media() {
    let ca = make_ca().unwrap();
    let book = Book::default();
    let mut a = start(
        &book,
        "fra",
        material(&ca, "fra"),
        &[],
        Duration::from_secs(30),
    );
    let mut b = start(
        &book,
        "sgp",
        material(&ca, "sgp"),
        &[],
        Duration::from_secs(30),
    );
    // b dials a on its first message; messages sent while dialing keep their order.
    for i in 0..1000 {
        b.trunk.send("fra", room_msg(i)).unwrap();
    }
    assert!(matches!(next(&mut b).await, Event::Up { peer } if peer == "fra"));
    assert!(matches!(next(&mut a).await, Event::Up { peer } if peer == "sgp"));
    for i in 0..1000 {
        match next(&mut a).await {
            Event::Msg { peer, msg } => {
                assert_eq!(peer, "sgp");
                assert_eq!(msg, room_msg(i));
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    // a answers over the same connection (no second dial).
    a.trunk
        .send(
            "sgp",
            Msg::Ended {
                room: "arena".into(),
                track: "cam".into(),
            },
        )
        .unwrap();
    assert!(matches!(
        next(&mut b).await,
        Event::Msg {
            msg: Msg::Ended { .. },
            ..
        }
    ));
    // A full-size RTP packet fits in a datagram.
    let mut rtp = vec![0x80u8, 96];
    rtp.resize(1200, 0xab);
    let mut got = 0;
    for seq in 0..200u16 {
        rtp[2..4].copy_from_slice(&seq.to_be_bytes());
        a.trunk.send_datagram("sgp", 77, &rtp).unwrap();
    }
    while got < 190 {
        match next(&mut b).await {
            Event::Datagram { peer, flow, packet } => {
                assert_eq!((peer.as_str(), flow, packet.len()), ("fra", 77, 1200));
                assert_eq!(packet[4..], rtp[4..]);
                got += 1;
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    let s = a.trunk.stats();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].peer, "sgp");
    assert!(!s[0].dialed_by_us);
    assert!(s[0].tx_datagrams >= 200);
    assert!(a.trunk.rtt("sgp").is_some());
    assert!(a.trunk.refusals().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_cas_certificate_is_refused_and_counted() {
    let ca = make_ca().unwrap();
    let rogue_ca = make_ca().unwrap();
    let book = Book::default();
    let mut a = start(
        &book,
        "fra",
        material(&ca, "fra"),
        &[],
        Duration::from_secs(30),
    );
    // The same node id, certified by another CA.
    let mut evil = start(
        &book,
        "sgp",
        material(&rogue_ca, "sgp"),
        &[],
        Duration::from_secs(30),
    );
    evil.trunk.send("fra", room_msg(1)).unwrap();
    match next(&mut evil).await {
        Event::Down { peer, reason } => {
            assert_eq!(peer, "fra");
            assert!(reason.contains("dial failed"), "{reason}");
        }
        e => panic!("unexpected {e:?}"),
    }
    // a dialing the rogue node refuses its certificate too.
    a.trunk.send("sgp", room_msg(2)).unwrap();
    assert!(matches!(next(&mut a).await, Event::Down { .. }));
    for _ in 0..500 {
        if a.trunk.refusals().get("certificate") == Some(&1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.trunk.refusals().get("certificate"), Some(&1));
    assert!(a.trunk.stats().is_empty() && evil.trunk.stats().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_off_the_allow_list_is_refused() {
    let ca = make_ca().unwrap();
    let book = Book::default();
    let mut a = start(
        &book,
        "fra",
        material(&ca, "fra"),
        &["sgp"],
        Duration::from_secs(30),
    );
    let mut c = start(
        &book,
        "gru",
        material(&ca, "gru"),
        &[],
        Duration::from_secs(30),
    );
    c.trunk.send("fra", room_msg(1)).unwrap();
    // The handshake succeeds, then a closes it before any message is taken.
    let mut saw_down = false;
    for _ in 0..3 {
        if let Event::Down { peer, .. } = next(&mut c).await {
            assert_eq!(peer, "fra");
            saw_down = true;
            break;
        }
    }
    assert!(saw_down);
    assert_eq!(a.trunk.refusals().get("not_allowed"), Some(&1));
    assert!(a.trunk.stats().is_empty());
    assert!(a.events.try_recv().is_err(), "a must emit nothing for gru");
    // And a does not dial nodes off its list.
    assert!(a.trunk.send("gru", room_msg(1)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_trunk_closes_and_reopens_on_demand() {
    let ca = make_ca().unwrap();
    let book = Book::default();
    let idle = Duration::from_millis(400);
    let mut a = start(&book, "fra", material(&ca, "fra"), &[], idle);
    let mut b = start(&book, "sgp", material(&ca, "sgp"), &[], idle);
    b.trunk.send("fra", room_msg(1)).unwrap();
    assert!(matches!(next(&mut b).await, Event::Up { .. }));
    assert!(matches!(next(&mut a).await, Event::Up { .. }));
    assert!(matches!(next(&mut a).await, Event::Msg { .. }));
    // Nothing more is sent: both ends see it close.
    match next(&mut b).await {
        Event::Down { reason, .. } => assert!(reason.contains("idle"), "{reason}"),
        e => panic!("unexpected {e:?}"),
    }
    assert!(matches!(next(&mut a).await, Event::Down { .. }));
    assert!(!b.trunk.is_up("fra"));
    b.trunk.send("fra", room_msg(2)).unwrap();
    assert!(matches!(next(&mut b).await, Event::Up { .. }));
    assert!(matches!(next(&mut a).await, Event::Up { .. }));
    assert!(matches!(next(&mut a).await, Event::Msg { msg, .. } if msg == room_msg(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_settle_on_one_connection() {
    let ca = make_ca().unwrap();
    let book = Book::default();
    let mut a = start(
        &book,
        "fra",
        material(&ca, "fra"),
        &[],
        Duration::from_secs(30),
    );
    let mut b = start(
        &book,
        "sgp",
        material(&ca, "sgp"),
        &[],
        Duration::from_secs(30),
    );
    a.trunk.send("sgp", room_msg(1)).unwrap();
    b.trunk.send("fra", room_msg(2)).unwrap();
    // Each side gets the other's message (it may come on either connection).
    let mut a_got = false;
    let mut b_got = false;
    for _ in 0..20 {
        if a_got && b_got {
            break;
        }
        tokio::select! {
            Some(e) = a.events.recv() => if let Event::Msg { msg, .. } = e { a_got |= msg == room_msg(2) },
            Some(e) = b.events.recv() => if let Event::Msg { msg, .. } = e { b_got |= msg == room_msg(1) },
            _ = tokio::time::sleep(Duration::from_secs(5)) => break,
        }
    }
    assert!(a_got && b_got, "a got {a_got}, b got {b_got}");
    // Both keep the same single connection: the one fra (the lower id) dialed.
    for _ in 0..500 {
        let (sa, sb) = (a.trunk.stats(), b.trunk.stats());
        if sa.len() == 1 && sb.len() == 1 && sa[0].dialed_by_us && !sb[0].dialed_by_us {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "did not settle: {:?} / {:?}",
        a.trunk.stats(),
        b.trunk.stats()
    );
}
