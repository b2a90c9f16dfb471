//! TURN over TLS from a rustls client, and SIGHUP reloading the certificate: new connections
//! get the new certificate, connections already open keep working, and a broken file leaves
//! the previous certificate in place. The signaling API's HTTPS certificate reloads the same
//! way.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Node, NodeOptions, TempDir};
use meridian_relay::stun::{
    attr, Class, Message, MessageBuilder, MessageType, Method, TransactionId,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate for 127.0.0.1 made with openssl (installed by scripts/test.sh).
fn make_cert(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn der(cert: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(cert).expect("a PEM certificate")
}

fn connector(trusted: &[&Path]) -> tokio_rustls::TlsConnector {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for c in trusted {
        roots.add(der(c)).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let cfg = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

async fn connect(node: &Node, tls: &tokio_rustls::TlsConnector) -> TlsStream<TcpStream> {
    connect_to(node.ready.turn_tls[0], tls).await
}

fn presented(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .clone()
        .into_owned()
}

/// A STUN Binding over the stream; returns the XOR-MAPPED-ADDRESS.
async fn binding(s: &mut TlsStream<TcpStream>) -> std::net::SocketAddr {
    let tid = TransactionId::random();
    let req = MessageBuilder::new(MessageType::new(Method::BINDING, Class::Request), tid).finish();
    s.write_all(&req).await.unwrap();
    let mut head = [0u8; 20];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .expect("answer in time")
        .unwrap();
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut msg = head.to_vec();
    msg.resize(20 + len, 0);
    s.read_exact(&mut msg[20..]).await.unwrap();
    let m = Message::parse(&msg).unwrap();
    assert_eq!(m.transaction_id(), tid);
    assert_eq!(
        m.message_type(),
        MessageType::new(Method::BINDING, Class::Success)
    );
    m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap()
}

/// Two certificates, A and B, and the "live" files the node reads (A at first).
struct Certs {
    _dir: TempDir,
    a_cert: std::path::PathBuf,
    b_cert: std::path::PathBuf,
    b_key: std::path::PathBuf,
    live_cert: std::path::PathBuf,
    live_key: std::path::PathBuf,
}

impl Certs {
    fn new(prefix: &str) -> Certs {
        let dir = TempDir::new(prefix);
        let (a_cert, a_key) = make_cert(dir.path(), &format!("{prefix}-a"));
        let (b_cert, b_key) = make_cert(dir.path(), &format!("{prefix}-b"));
        let live_cert = dir.path().join("live.crt");
        let live_key = dir.path().join("live.key");
        std::fs::copy(&a_cert, &live_cert).unwrap();
        std::fs::copy(&a_key, &live_key).unwrap();
        Certs {
            _dir: dir,
            a_cert,
            b_cert,
            b_key,
            live_cert,
            live_key,
        }
    }

    /// Puts certificate B in the live files and signals the node to reload.
    fn switch_to_b(&self, node: &Node) {
        std::fs::copy(&self.b_cert, &self.live_cert).unwrap();
        std::fs::copy(&self.b_key, &self.live_key).unwrap();
        node.signal(libc::SIGHUP);
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        connector(&[&self.a_cert, &self.b_cert])
    }
}

/// Connects to `addr` until the node presents certificate B (bounded).
async fn connect_until_b(
    node: &Node,
    addr: std::net::SocketAddr,
    certs: &Certs,
) -> TlsStream<TcpStream> {
    let tls = certs.connector();
    for _ in 0..100 {
        let s = connect_to(addr, &tls).await;
        if presented(&s) == der(&certs.b_cert) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "new connections still get the old certificate\n{}",
        node.log()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let certs = Certs::new("tls-certs");
    let (a_cert, b_cert) = (&certs.a_cert, &certs.b_cert);
    let (live_cert, live_key) = (&certs.live_cert, &certs.live_key);
    let node = Node::start_meridian(&NodeOptions {
        tls: Some((live_cert.clone(), live_key.clone())),
        ..NodeOptions::default()
    });
    let tls = certs.connector();

    let mut first = connect(&node, &tls).await;
    assert_eq!(presented(&first), der(a_cert));
    let mapped = binding(&mut first).await;
    assert_eq!(mapped, first.get_ref().0.local_addr().unwrap());

    certs.switch_to_b(&node);
    let mut second = connect_until_b(&node, node.ready.turn_tls[0], &certs).await;
    binding(&mut second).await;
    // The connection made before the reload still works.
    binding(&mut first).await;

    // A broken certificate file: the reload fails and cert B stays in use.
    std::fs::write(live_cert, "not a certificate").unwrap();
    node.signal(libc::SIGHUP);
    common::wait_for(
        Duration::from_secs(5),
        "the failed reload to be logged",
        || node.log().contains("TLS reload failed").then_some(()),
    );
    let third = connect(&node, &tls).await;
    assert_eq!(presented(&third), der(b_cert));
}

async fn connect_to(
    addr: std::net::SocketAddr,
    tls: &tokio_rustls::TlsConnector,
) -> TlsStream<TcpStream> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    tokio::time::timeout(Duration::from_secs(5), tls.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("TLS handshake")
}

/// `GET /v1/rooms` over the stream; returns the status line.
async fn get_rooms(s: &mut TlsStream<TcpStream>) -> String {
    s.write_all(b"GET /v1/rooms HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut body)).await;
    String::from_utf8_lossy(&body)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_signaling_https_certificate() {
    let certs = Certs::new("tls-certs-signaling");
    let node = Node::start_meridian(&NodeOptions {
        signaling_toml: format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            certs.live_cert.display().to_string(),
            certs.live_key.display().to_string()
        ),
        ..NodeOptions::default()
    });
    let http = node.ready.http.expect("signaling listener");
    let mut first = connect_to(http, &certs.connector()).await;
    assert_eq!(presented(&first), der(&certs.a_cert));
    assert_eq!(get_rooms(&mut first).await, "HTTP/1.1 200 OK");

    certs.switch_to_b(&node);
    let mut second = connect_until_b(&node, http, &certs).await;
    assert_eq!(get_rooms(&mut second).await, "HTTP/1.1 200 OK");
    assert!(
        node.log().contains("signaling TLS certificate reloaded"),
        "{}",
        node.log()
    );
}
