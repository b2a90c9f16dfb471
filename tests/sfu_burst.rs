//! The SFU's socket loop under a burst: datagrams that arrive back to back (a video frame's
//! packets, many peers' checks at once) are each handled, none dropped between passes.
//!
//! A session is set up over signaling with a webrtc-rs offer; then a plain UDP socket on
//! loopback sends a burst of authenticated ICE binding requests for it, far more than one pass
//! of the shard reads, and every one must be answered.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{mint_token, new_peer_connection, Node, NodeOptions, WsClient};
use meridian_relay::stun::{
    attr, Class, Message, MessageBuilder, MessageType, Method, TransactionId,
};
use meridian_signaling::token::Role;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;

/// Requests sent back to back: several passes' worth (a pass reads up to 17).
const BURST: usize = 200;
/// STUN attributes of ICE (RFC 8445 §16.1).
const PRIORITY: u16 = 0x0024;
const ICE_CONTROLLING: u16 = 0x802a;

fn sdp_attr<'a>(sdp: &'a str, name: &str) -> &'a str {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in\n{sdp}"))
        .trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_datagrams_is_answered_in_full() {
    let node = Node::start_meridian(&NodeOptions::default());
    let http = node.ready.http.expect("signaling listener");
    let sfu = node.ready.sfu_udp.expect("SFU UDP address");
    let token = mint_token("burst", "burst-room", Role::Player, 600);
    let (mut sig, _joined) = WsClient::join(http, &token).await;
    let pc = new_peer_connection().await;
    pc.add_transceiver_from_kind(RTPCodecType::Video, None)
        .await
        .expect("transceiver");
    let offer = common::local_offer(&pc).await;
    let answer = common::apply_answer(&mut sig, &pc, offer.clone()).await;
    // Our socket is not the peer connection's: the SFU (ICE-lite) answers checks from any
    // address that knows the credentials.
    let remote_ufrag = sdp_attr(&offer, "a=ice-ufrag:");
    let ufrag = sdp_attr(&answer, "a=ice-ufrag:");
    let pwd = sdp_attr(&answer, "a=ice-pwd:");
    let username = format!("{ufrag}:{remote_ufrag}");

    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut sent = HashSet::new();
    for i in 0..BURST {
        let tid = TransactionId::random();
        let mut b = MessageBuilder::new(MessageType::new(Method::BINDING, Class::Request), tid);
        b.text(attr::USERNAME, &username)
            .u32(PRIORITY, 0x6e00_01ff)
            .attribute(ICE_CONTROLLING, &(i as u64).to_be_bytes())
            .integrity_sha1(pwd.as_bytes());
        sock.send_to(&b.finish_with_fingerprint(), sfu)
            .await
            .unwrap();
        sent.insert(tid);
    }
    let mut answered = HashSet::new();
    let mut buf = vec![0u8; 2048];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while answered.len() < BURST {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Ok((n, _))) = tokio::time::timeout(left, sock.recv_from(&mut buf)).await else {
            break;
        };
        let Ok(m) = Message::parse(&buf[..n]) else {
            continue;
        };
        if m.message_type() == MessageType::new(Method::BINDING, Class::Success)
            && sent.contains(&m.transaction_id())
        {
            assert!(
                m.verify_integrity(pwd.as_bytes()),
                "a response without our integrity"
            );
            answered.insert(m.transaction_id());
        }
    }
    assert_eq!(
        answered.len(),
        BURST,
        "{} of {BURST} binding requests answered\n{}",
        answered.len(),
        node.log()
    );
    pc.close().await.ok();
}
