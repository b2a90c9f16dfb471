//! The load generator's WebRTC clients (str0m, RTP mode): publishers that send synthetic VP8
//! at a given bitrate, and subscribers that measure what arrives.
//!
//! Every packet's payload is: a VP8 payload descriptor (so the SFU sees keyframes and frame
//! starts), the frame tag byte, the send time (ns since the bench's epoch, same clock as the
//! receivers) and padding to the packet size.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use hdrhistogram::Histogram;
use serde_json::json;
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;

use crate::client::signal::Signal;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the bench started (one clock for senders and receivers).
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Bytes of payload header: descriptor, frame tag, send time.
pub const HEADER: usize = 10;

/// Fills `buf` as one synthetic VP8 packet.
pub fn fill(buf: &mut [u8], frame_start: bool, keyframe: bool, sent_ns: u64) {
    buf[0] = if frame_start { 0x10 } else { 0x00 };
    buf[1] = if keyframe { 0x00 } else { 0x01 };
    buf[2..10].copy_from_slice(&sent_ns.to_be_bytes());
}

/// The send time in a synthetic packet.
pub fn sent_ns(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(2..10)?.try_into().ok()?))
}

/// What the whole run shares.
pub struct Shared {
    /// Counting (the measured window) is on.
    pub measuring: AtomicBool,
    /// Everything stops.
    pub stop: AtomicBool,
    /// Packets publishers sent while measuring.
    pub sent: AtomicU64,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
        })
    }
}

/// What a subscriber measured.
pub struct SubResult {
    pub received: u64,
    pub latency_ns: Histogram<u64>,
    pub first_frame: Option<Duration>,
    /// From `started` to the SDP answer (subscribe + offer answered over signaling).
    pub answered: Option<Duration>,
    /// From `started` to ICE + DTLS connected.
    pub connected: Option<Duration>,
}

/// Drives one client: the UDP socket, its `Rtc`, and an optional media tick.
struct Driver {
    rtc: Rtc,
    sock: UdpSocket,
    server: SocketAddr,
    local: SocketAddr,
    connected: bool,
}

impl Driver {
    async fn new(server: SocketAddr, rtc: Rtc, local: Option<IpAddr>) -> anyhow::Result<Driver> {
        let ip = local.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        sock.connect(server).await?;
        let local = sock.local_addr()?;
        let mut rtc = rtc;
        rtc.add_local_candidate(Candidate::host(local, "udp")?);
        Ok(Driver {
            rtc,
            sock,
            server,
            local,
            connected: false,
        })
    }

    /// Polls until the `Rtc` waits; events go to `on_event`. Returns the next deadline.
    async fn drain(&mut self, mut on_event: impl FnMut(Event)) -> anyhow::Result<Instant> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => return Ok(t),
                Output::Transmit(t) => {
                    let _ = self.sock.send(&t.contents).await;
                }
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                )) => {
                    anyhow::bail!("ICE disconnected")
                }
                Output::Event(e) => on_event(e),
            }
        }
    }

    fn receive(&mut self, buf: &[u8]) -> anyhow::Result<()> {
        self.rtc.handle_input(Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source: self.server,
                destination: self.local,
                contents: buf.try_into()?,
            },
        ))?;
        Ok(())
    }
}

fn vp8_rtc() -> Rtc {
    Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_vp8(true)
        .build(Instant::now())
}

/// Joins and publishes; returns the track id and a task that sends media until `stop`.
pub async fn publisher(
    base: String,
    token: String,
    server: SocketAddr,
    bitrate_bps: u64,
    packet_size: usize,
    shared: Arc<Shared>,
) -> anyhow::Result<(String, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let signal = Signal::join(&base, &token, None).await?;
    publisher_on(signal, server, None, bitrate_bps, packet_size, shared).await
}

/// [`publisher`] on a joined connection, its media socket bound to `local` (loopback when
/// `None`) and sending to the node's SFU at `server`.
pub async fn publisher_on(
    mut signal: Signal,
    server: SocketAddr,
    local: Option<IpAddr>,
    bitrate_bps: u64,
    packet_size: usize,
    shared: Arc<Shared>,
) -> anyhow::Result<(String, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let mut rtc = vp8_rtc();
    let mut api = rtc.sdp_api();
    let mid: Mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().ok_or_else(|| anyhow!("no offer"))?;
    let answer = signal
        .request(json!({"type": "offer", "sdp": offer.to_sdp_string()}))
        .await?;
    rtc.sdp_api().accept_answer(
        pending,
        SdpAnswer::from_sdp_string(answer["sdp"].as_str().unwrap_or(""))?,
    )?;
    // The track id arrives as `published`, once media is connected.
    let mut driver = Driver::new(server, rtc, local).await?;
    let mut events = signal.into_events();
    let (track_tx, track_rx) = tokio::sync::oneshot::channel::<String>();
    let mut track_tx = Some(track_tx);
    let task = tokio::spawn(async move {
        let fps = 30u64;
        let bytes_per_frame = (bitrate_bps / 8 / fps).max(packet_size as u64);
        let packets_per_frame = bytes_per_frame.div_ceil(packet_size as u64).max(1);
        let frame_interval = Duration::from_nanos(1_000_000_000 / fps);
        let mut next_frame = tokio::time::Instant::now();
        let mut seq: u64 = 1;
        let mut frame: u64 = 0;
        let mut want_key = true;
        let mut last_key = Instant::now();
        let mut buf = vec![0u8; 2048];
        let mut payload = vec![0u8; packet_size];
        let pt = driver
            .rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
            .ok_or_else(|| anyhow!("VP8 not negotiated"))?;
        while !shared.stop.load(Ordering::Relaxed) {
            let deadline = driver
                .drain(|e| {
                    if let Event::KeyframeRequest(_) = e {
                        want_key = true;
                    }
                })
                .await?;
            let wake = tokio::time::Instant::from_std(deadline).min(next_frame);
            tokio::select! {
                ev = events.recv(), if track_tx.is_some() => {
                    match ev {
                        Some(v) if v["type"] == "published" => {
                            if let (Some(tx), Some(t)) = (track_tx.take(), v["track"].as_str()) {
                                let _ = tx.send(t.to_string());
                            }
                        }
                        Some(_) => {}
                        None => anyhow::bail!("signaling closed"),
                    }
                }
                r = driver.sock.recv(&mut buf) => {
                    let n = r?;
                    driver.receive(&buf[..n])?;
                }
                _ = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() < next_frame || !driver.connected {
                        if tokio::time::Instant::now() >= next_frame {
                            next_frame += frame_interval;
                        }
                        driver.rtc.handle_input(Input::Timeout(Instant::now()))?;
                        continue;
                    }
                    next_frame += frame_interval;
                    let key = want_key || last_key.elapsed() > Duration::from_secs(2);
                    if key {
                        want_key = false;
                        last_key = Instant::now();
                    }
                    for i in 0..packets_per_frame {
                        fill(&mut payload, i == 0, key, now_ns());
                        let mut api = driver.rtc.direct_api();
                        let Some(tx) = api.stream_tx_by_mid(mid, None) else { break };
                        tx.write_rtp(
                            RtpWrite::new(pt, SeqNo::from(seq), (frame * 3000) as u32, Instant::now(), payload.clone())
                                .marker(i + 1 == packets_per_frame)
                                .nackable(true),
                        );
                        seq += 1;
                        if shared.measuring.load(Ordering::Relaxed) {
                            shared.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        driver.drain(|e| {
                            if let Event::KeyframeRequest(_) = e {
                                want_key = true;
                            }
                        }).await?;
                    }
                    frame += 1;
                }
            }
        }
        drop(events);
        Ok(())
    });
    let track = tokio::time::timeout(Duration::from_secs(10), track_rx)
        .await
        .map_err(|_| anyhow!("no `published` event within 10 s"))?
        .map_err(|_| anyhow!("the publisher stopped before publishing"))?;
    Ok((track, task))
}

/// Joins, subscribes to `track` and counts what arrives until `stop`.
pub async fn subscriber(
    base: String,
    token: String,
    server: SocketAddr,
    track: String,
    shared: Arc<Shared>,
) -> anyhow::Result<SubResult> {
    let started = Instant::now();
    let signal = Signal::join(&base, &token, None).await?;
    subscriber_on(signal, server, None, track, shared, started, false).await
}

/// [`subscriber`] on a joined connection, its media socket bound to `local` (loopback when
/// `None`); `first_frame` counts from `started`. With `first_frame_only` it returns as soon
/// as the first media packet arrived.
pub async fn subscriber_on(
    mut signal: Signal,
    server: SocketAddr,
    local: Option<IpAddr>,
    track: String,
    shared: Arc<Shared>,
    started: Instant,
    first_frame_only: bool,
) -> anyhow::Result<SubResult> {
    let mut rtc = vp8_rtc();
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().ok_or_else(|| anyhow!("no offer"))?;
    signal
        .request(json!({"type": "subscribe", "track": track, "mid": mid.to_string()}))
        .await
        .context("subscribe")?;
    let answer = signal
        .request(json!({"type": "offer", "sdp": offer.to_sdp_string()}))
        .await?;
    rtc.sdp_api().accept_answer(
        pending,
        SdpAnswer::from_sdp_string(answer["sdp"].as_str().unwrap_or(""))?,
    )?;
    let answered = Some(started.elapsed());
    let _events = signal.into_events();
    let mut driver = Driver::new(server, rtc, local).await?;
    let mut res = SubResult {
        received: 0,
        latency_ns: Histogram::new_with_bounds(1_000, 10_000_000_000, 3)?,
        first_frame: None,
        answered,
        connected: None,
    };
    let mut buf = vec![0u8; 2048];
    let done = |res: &SubResult| first_frame_only && res.first_frame.is_some();
    while !(shared.stop.load(Ordering::Relaxed) || done(&res)) {
        let deadline = driver
            .drain(|e| {
                if let Event::RtpPacket(p) = e {
                    if res.first_frame.is_none() {
                        res.first_frame = Some(started.elapsed());
                    }
                    if shared.measuring.load(Ordering::Relaxed) {
                        res.received += 1;
                        if let Some(sent) = sent_ns(&p.payload) {
                            let _ = res
                                .latency_ns
                                .record(now_ns().saturating_sub(sent).max(1_000));
                        }
                    }
                }
            })
            .await?;
        if driver.connected && res.connected.is_none() {
            res.connected = Some(started.elapsed());
        }
        let wake = tokio::time::Instant::from_std(deadline)
            .min(tokio::time::Instant::now() + Duration::from_millis(50));
        tokio::select! {
            r = driver.sock.recv(&mut buf) => {
                let n = r?;
                driver.receive(&buf[..n])?;
            }
            _ = tokio::time::sleep_until(wake) => {
                driver.rtc.handle_input(Input::Timeout(Instant::now()))?;
            }
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_roundtrip() {
        let mut p = vec![0u8; 100];
        fill(&mut p, true, true, 123_456_789);
        assert_eq!(sent_ns(&p), Some(123_456_789));
        assert!(meridian_relay::sfu::keyframe::starts_keyframe(
            Codec::Vp8,
            &p
        ));
        fill(&mut p, true, false, 1);
        assert!(!meridian_relay::sfu::keyframe::starts_keyframe(
            Codec::Vp8,
            &p
        ));
        assert_eq!(sent_ns(&p[..5]), None);
    }
}
