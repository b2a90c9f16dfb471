//! TCP connections that hold no allocation are closed after
//! `limits.unallocated_connection_timeout_secs`; connections with an allocation are not, until
//! the allocation ends.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Node, NodeOptions, PASSWORD, REALM, USER};
use meridian_relay::stun::{
    attr, long_term_key, Class, Message, MessageBuilder, MessageType, Method, PasswordAlgorithm,
    TransactionId,
};

fn node() -> Node {
    Node::start_meridian(&NodeOptions {
        extra_toml: "[limits]\nunallocated_connection_timeout_secs = 1\n".into(),
        ..NodeOptions::default()
    })
}

/// Reads one STUN message from the stream (bounded by the stream's read timeout).
fn read_message(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 20];
    s.read_exact(&mut head).expect("a STUN header");
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut msg = head.to_vec();
    msg.resize(20 + len, 0);
    s.read_exact(&mut msg[20..]).expect("the STUN body");
    msg
}

fn code(msg: &[u8]) -> u16 {
    let m = Message::parse(msg).unwrap();
    m.get(attr::ERROR_CODE)
        .map_or(200, |v| attr::decode_error_code(v).unwrap().0)
}

fn request(
    s: &mut TcpStream,
    method: Method,
    nonce: Option<&str>,
    add: impl Fn(&mut MessageBuilder),
) -> Vec<u8> {
    let mut b = MessageBuilder::new(
        MessageType::new(method, Class::Request),
        TransactionId::random(),
    );
    add(&mut b);
    if let Some(n) = nonce {
        b.text(attr::USERNAME, USER)
            .text(attr::REALM, REALM)
            .text(attr::NONCE, n);
        b.integrity_sha1(long_term_key(PasswordAlgorithm::Md5, USER, REALM, PASSWORD).as_bytes());
    }
    s.write_all(&b.finish()).unwrap();
    read_message(s)
}

/// Waits (bounded) for the server to close the connection; returns how long it took.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => start.elapsed(),
        other => panic!(
            "expected the server to close the connection, got {other:?} after {:?}",
            start.elapsed()
        ),
    }
}

#[test]
fn connections_without_an_allocation_are_closed_and_counted() {
    let node = node();
    let mut idle = TcpStream::connect(node.turn_tcp()).unwrap();
    let took = closed_within(&mut idle, Duration::from_secs(10));
    assert!(
        took >= Duration::from_millis(800),
        "closed too early: {took:?}"
    );
    let body = common::wait_for(Duration::from_secs(10), "the idle-close metric", || {
        let (_, body) = common::http_get(node.admin(), "/metrics").ok()?;
        body.lines()
            .any(|l| {
                l.starts_with("meridian_turn_idle_connections_closed_total") && !l.ends_with(" 0")
            })
            .then_some(body)
    });
    assert!(body.contains("meridian_turn_idle_connections_closed_total"));
}

#[test]
fn an_allocation_keeps_the_connection_until_it_ends() {
    let node = node();
    let mut s = TcpStream::connect(node.turn_tcp()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let transport = |b: &mut MessageBuilder| {
        b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    };
    let challenge = request(&mut s, Method::ALLOCATE, None, transport);
    assert_eq!(code(&challenge), 401);
    let nonce = Message::parse(&challenge)
        .unwrap()
        .text(attr::NONCE)
        .unwrap()
        .unwrap()
        .to_string();
    assert_eq!(
        code(&request(&mut s, Method::ALLOCATE, Some(&nonce), transport)),
        200
    );
    // A probe opened after the allocation is closed by the timeout; the allocated connection,
    // opened earlier, would have been closed before it, yet it still answers.
    let mut probe = TcpStream::connect(node.turn_tcp()).unwrap();
    closed_within(&mut probe, Duration::from_secs(10));
    assert_eq!(code(&request(&mut s, Method::BINDING, None, |_| {})), 200);
    // Ending the allocation starts the clock: the server closes the connection.
    let gone = request(&mut s, Method::REFRESH, Some(&nonce), |b| {
        b.u32(attr::LIFETIME, 0);
    });
    assert_eq!(code(&gone), 200);
    let took = closed_within(&mut s, Duration::from_secs(10));
    assert!(
        took >= Duration::from_millis(800),
        "closed too early: {took:?}"
    );
}
