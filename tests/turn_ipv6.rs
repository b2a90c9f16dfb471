//! IPv6 end to end (RFC 6156): a client on ::1 allocates an IPv6 relay and relays ChannelData
//! to an IPv6 echo peer; an IPv4 client gets a dual allocation (ADDITIONAL-ADDRESS-FAMILY) and
//! reaches an IPv6 peer through Send/Data indications. The client is this repo's STUN codec.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{ChildGuard, Ready, TempDir};
use meridian_relay::stun::{
    attr, channel_data, long_term_key, Class, Message, MessageBuilder, MessageType, Method,
    PasswordAlgorithm, TransactionId,
};

const USER: &str = "v6user";
const PASS: &str = "v6pass";
const REALM: &str = "v6realm";

struct V6Node {
    ready: Ready,
    _proc: ChildGuard,
    _dir: TempDir,
}

fn start_node() -> V6Node {
    let dir = TempDir::new("meridian-v6");
    let config = dir.path().join("meridian.toml");
    let ready_path = dir.path().join("ready.json");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[turn]\nrealm = \"{REALM}\"\nudp = [\"127.0.0.1:0\", \"[::1]:0\"]\ntcp = []\n\
             relay_ipv4 = \"127.0.0.1\"\nrelay_ipv6 = \"::1\"\n\n[auth]\nusers = [{{ username = \"{USER}\", password = \"{PASS}\" }}]\n\n\
             [security]\nallow_peers = [\"127.0.0.0/8\", \"::1/128\"]\n\n[drain]\ndeadline_secs = 1\n\n\
             [signaling]\nlisten = \"127.0.0.1:0\"\n\n[sfu]\nudp = \"127.0.0.1:0\"\ntcp = []\n"
        ),
    )
    .unwrap();
    let mut cmd = common::meridian_command();
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready_path);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut proc = ChildGuard::spawn(cmd, "meridian");
    let deadline = Instant::now() + common::READY_TIMEOUT;
    let ready = loop {
        if let Ok(text) = std::fs::read_to_string(&ready_path) {
            break Ready::parse(&text).unwrap();
        }
        assert!(
            proc.try_wait().is_none(),
            "meridian exited before it was ready"
        );
        assert!(
            Instant::now() < deadline,
            "meridian not ready within {:?}",
            common::READY_TIMEOUT
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    V6Node {
        ready,
        _proc: proc,
        _dir: dir,
    }
}

/// A blocking TURN client over UDP with long-term credentials.
struct Client {
    sock: UdpSocket,
    server: SocketAddr,
    nonce: String,
}

impl Client {
    fn new(bind: &str, server: SocketAddr) -> Client {
        let sock = UdpSocket::bind(bind).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        Client {
            sock,
            server,
            nonce: String::new(),
        }
    }

    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        let n = self.sock.recv(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// Sends `req` until the answer with transaction `tid` arrives (5 tries, 0.5 s each).
    fn exchange(&self, req: &[u8], tid: TransactionId) -> Vec<u8> {
        for _ in 0..5 {
            self.sock.send_to(req, self.server).unwrap();
            // Skip stray datagrams, but only a bounded number of them.
            for _ in 0..8 {
                let Some(resp) = self.recv() else { break };
                if Message::parse(&resp).is_ok_and(|m| m.transaction_id() == tid) {
                    return resp;
                }
            }
        }
        panic!("no answer from {}", self.server);
    }

    /// An authenticated request: a first round may be answered 401/438, which supplies the
    /// nonce for the second.
    fn request(&mut self, method: Method, add: impl Fn(&mut MessageBuilder)) -> Vec<u8> {
        for _round in 0..3 {
            let tid = TransactionId::random();
            let mut b = MessageBuilder::new(MessageType::new(method, Class::Request), tid);
            add(&mut b);
            if !self.nonce.is_empty() {
                b.text(attr::USERNAME, USER)
                    .text(attr::REALM, REALM)
                    .text(attr::NONCE, &self.nonce);
                b.integrity_sha1(
                    long_term_key(PasswordAlgorithm::Md5, USER, REALM, PASS).as_bytes(),
                );
            }
            let resp = self.exchange(&b.finish_with_fingerprint(), tid);
            if matches!(code(&resp), 401 | 438) {
                let m = Message::parse(&resp).unwrap();
                self.nonce = m.text(attr::NONCE).unwrap().unwrap().to_string();
                continue;
            }
            return resp;
        }
        panic!("{method:?} still unauthenticated after three rounds");
    }
}

fn code(resp: &[u8]) -> u16 {
    let m = Message::parse(resp).unwrap();
    match m.get(attr::ERROR_CODE) {
        Some(v) => attr::decode_error_code(v).unwrap().0,
        None => 200,
    }
}

fn echo_peer(bind: &str) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let sock = UdpSocket::bind(bind).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        // Bounded: a few datagrams, or stop when nothing arrives for 10 s.
        for _ in 0..16 {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                return;
            };
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    (addr, h)
}

#[test]
fn ipv6_client_relays_channel_data_to_an_ipv6_peer() {
    let node = start_node();
    let server = *node
        .ready
        .turn_udp
        .iter()
        .find(|a| a.is_ipv6())
        .expect("an IPv6 UDP listener");
    let (peer, _echo) = echo_peer("[::1]:0");
    let mut c = Client::new("[::1]:0", server);
    let resp = c.request(Method::ALLOCATE, |b| {
        b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attribute(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(code(&resp), 200);
    let m = Message::parse(&resp).unwrap();
    let relayed = m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap();
    assert!(relayed.is_ipv6(), "relayed address {relayed} is IPv6");
    assert_eq!(
        m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap(),
        c.sock.local_addr().unwrap()
    );
    let resp = c.request(Method::CHANNEL_BIND, |b| {
        b.channel_number(0x4001)
            .xor_address(attr::XOR_PEER_ADDRESS, peer);
    });
    assert_eq!(code(&resp), 200);
    let mut frame = vec![0u8; 4];
    channel_data::write_header(&mut frame, 0x4001, 11);
    frame.extend_from_slice(b"hello over6");
    let mut echoed = None;
    for _ in 0..5 {
        c.sock.send_to(&frame, server).unwrap();
        if let Some(back) = c.recv() {
            echoed = Some(back);
            break;
        }
    }
    let back = echoed.expect("the echo came back through the relay");
    assert_eq!(
        channel_data::parse(&back).unwrap(),
        (0x4001, &b"hello over6"[..])
    );
}

#[test]
fn dual_allocation_reaches_an_ipv6_peer_from_an_ipv4_client() {
    let node = start_node();
    let server = *node
        .ready
        .turn_udp
        .iter()
        .find(|a| a.is_ipv4())
        .expect("an IPv4 UDP listener");
    let (peer6, _echo) = echo_peer("[::1]:0");
    let mut c = Client::new("127.0.0.1:0", server);
    let resp = c.request(Method::ALLOCATE, |b| {
        b.attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attribute(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(code(&resp), 200);
    let m = Message::parse(&resp).unwrap();
    let relayed: Vec<SocketAddr> = m
        .get_all(attr::XOR_RELAYED_ADDRESS)
        .map(|v| {
            attr::decode_xor_address(attr::XOR_RELAYED_ADDRESS, v, &m.transaction_id()).unwrap()
        })
        .collect();
    assert_eq!(relayed.len(), 2, "{relayed:?}");
    assert!(relayed[0].is_ipv4() && relayed[1].is_ipv6(), "{relayed:?}");
    let resp = c.request(Method::CREATE_PERMISSION, |b| {
        b.xor_address(attr::XOR_PEER_ADDRESS, peer6);
    });
    assert_eq!(code(&resp), 200);
    let mut b = MessageBuilder::new(
        MessageType::new(Method::SEND, Class::Indication),
        TransactionId::random(),
    );
    b.xor_address(attr::XOR_PEER_ADDRESS, peer6)
        .attribute(attr::DATA, b"dual stack");
    let send = b.finish();
    let mut data = None;
    for _ in 0..5 {
        c.sock.send_to(&send, server).unwrap();
        if let Some(back) = c.recv() {
            data = Some(back);
            break;
        }
    }
    let back = data.expect("a Data indication came back");
    let d = Message::parse(&back).unwrap();
    assert_eq!(
        d.message_type(),
        MessageType::new(Method::DATA, Class::Indication)
    );
    assert_eq!(
        d.xor_address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(),
        peer6
    );
    assert_eq!(d.get(attr::DATA).unwrap(), b"dual stack");
    // The IPv6 relay really is the IPv6 relayed address the server announced.
    assert_eq!(relayed[1].ip(), "::1".parse::<std::net::IpAddr>().unwrap());
}
