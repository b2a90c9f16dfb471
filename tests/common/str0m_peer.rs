//! A str0m WebRTC peer on a loopback UDP socket, and the bounded HTTP/1.1 request the
//! WHIP/WHEP tests drive it with.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::media::{Frequency, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Event, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use super::HttpResponse;

/// One HTTP/1.1 request (Connection: close), bounded in time.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = super::http_request_bytes(addr, method, path, headers, body);
        s.write_all(&req).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        HttpResponse::parse(&raw)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("HTTP response in time")
}

/// A str0m peer on a UDP socket connected to the SFU.
pub struct Peer {
    pub rtc: Rtc,
    sock: UdpSocket,
    server: SocketAddr,
    pub local: SocketAddr,
    pub connected: bool,
    pub frames: usize,
}

impl Peer {
    pub async fn new(server: SocketAddr, rtc: Rtc) -> Peer {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.connect(server).await.unwrap();
        let local = sock.local_addr().unwrap();
        Peer {
            rtc,
            sock,
            server,
            local,
            connected: false,
            frames: 0,
        }
    }

    /// Drains, then waits up to `max` for one datagram or the next timeout.
    pub async fn step(&mut self, max: Duration) {
        let next = loop {
            match self.rtc.poll_output().unwrap() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = self.sock.send(&t.contents).await;
                }
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(Event::MediaData(_)) => self.frames += 1,
                Output::Event(_) => {}
            }
        };
        let wait = next.saturating_duration_since(Instant::now()).min(max);
        let mut buf = [0u8; 2048];
        let input = match tokio::time::timeout(wait, self.sock.recv(&mut buf)).await {
            Ok(Ok(n)) => Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source: self.server,
                    destination: self.local,
                    contents: buf[..n].try_into().unwrap(),
                },
            ),
            _ => Input::Timeout(Instant::now()),
        };
        self.rtc.handle_input(input).unwrap();
    }
}

/// An H.264 access unit (SPS, PPS, an IDR slice of filler): enough for the SFU to forward
/// and a player to count frames.
pub fn h264_access_unit() -> Vec<u8> {
    [
        &[0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01][..],
        &[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80][..],
        &[0, 0, 0, 1, 0x65][..],
        &[0x88; 800][..],
    ]
    .concat()
}

/// Writes frame `n` (30 fps timestamps) on the publisher's `mid` once it is connected.
pub fn write_frame(publisher: &mut Peer, mid: Mid, n: u64, au: &[u8]) {
    if !publisher.connected {
        return;
    }
    let w = publisher.rtc.writer(mid).unwrap();
    let pt = w.payload_params().next().unwrap().pt();
    w.write(
        pt,
        Instant::now(),
        MediaTime::new(n * 3000, Frequency::NINETY_KHZ),
        au.to_vec(),
    )
    .unwrap();
}
