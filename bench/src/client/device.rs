//! `meridian device`: a simulated game machine. It publishes real H.264 video (a moving test
//! pattern encoded with OpenH264 at the requested bitrate) to a room over WebRTC (str0m), and
//! prints every control and input message players send it, one JSON line each on stdout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use openh264::encoder::{BitRate, Encoder, EncoderConfig, FrameRate, IntraFramePeriod};
use openh264::formats::YUVBuffer;
use openh264::OpenH264API;
use serde_json::json;
use str0m::change::SdpAnswer;
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;

use super::signal::http_get_json;

#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// The node's signaling API.
    #[arg(long, default_value = "http://127.0.0.1:7880")]
    pub url: String,
    /// Room to publish into.
    #[arg(long)]
    pub room: String,
    /// Device identity (shown to players).
    #[arg(long, default_value = "device-1")]
    pub name: String,
    /// Access token with role device. Without it: minted from --config's first API key, or
    /// fetched from the node's /v1/dev-token (loopback dev nodes).
    #[arg(long, env = "MERIDIAN_TOKEN")]
    pub token: Option<PathBuf>,
    /// Node config whose [signaling] api_keys sign the token.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Video bitrate, kbit/s.
    #[arg(long, default_value_t = 1000)]
    pub bitrate_kbps: u32,
    /// Frames per second.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Frame size, WIDTHxHEIGHT (even numbers).
    #[arg(long, default_value = "640x360")]
    pub size: String,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Join the node --url names without measuring the RTT to each region first (by default
    /// a device in a cluster measures and is placed on its nearest region).
    #[arg(long)]
    pub no_measure: bool,
}

fn parse_size(s: &str) -> anyhow::Result<(usize, usize)> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| anyhow!("--size {s:?}: expected WIDTHxHEIGHT, e.g. 640x360"))?;
    let (w, h): (usize, usize) = (
        w.parse().with_context(|| format!("--size width {w:?}"))?,
        h.parse().with_context(|| format!("--size height {h:?}"))?,
    );
    if !(16..=3840).contains(&w) || !(16..=2160).contains(&h) || w % 2 != 0 || h % 2 != 0 {
        bail!("--size {s}: width 16..=3840 and height 16..=2160, both even");
    }
    Ok((w, h))
}

async fn token(args: &DeviceArgs) -> anyhow::Result<String> {
    if let Some(t) = &args.token {
        // A token, or a file holding one.
        let s = t.to_string_lossy().to_string();
        if t.exists() {
            return Ok(std::fs::read_to_string(t)?.trim().to_string());
        }
        return Ok(s);
    }
    if let Some(path) = &args.config {
        let cfg = meridian_config::Config::load(path)?;
        let key = cfg
            .signaling
            .api_keys
            .first()
            .ok_or_else(|| anyhow!("{}: signaling.api_keys is empty", path.display()))?;
        let issuer = meridian_signaling::token::TokenIssuer::new(&key.key, key.secret.as_bytes())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        return Ok(issuer.mint(
            &args.name,
            &args.room,
            meridian_signaling::token::Role::Device,
            now,
            cfg.signaling.token_ttl_secs,
        )?);
    }
    let path = format!(
        "/v1/dev-token?role=device&room={}&identity={}",
        urlencode(&args.room),
        urlencode(&args.name)
    );
    let v = http_get_json(&args.url, &path)
        .await
        .context("no --token or --config, and the node gives no dev token")?;
    v["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("dev-token response has no token"))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

use super::player::server_udp;

pub fn run(args: DeviceArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: DeviceArgs) -> anyhow::Result<()> {
    let (width, height) = parse_size(&args.size)?;
    if !(1..=120).contains(&args.fps) {
        bail!("--fps {}: expected 1..=120", args.fps);
    }
    if !(50..=50_000).contains(&args.bitrate_kbps) {
        bail!("--bitrate-kbps {}: expected 50..=50000", args.bitrate_kbps);
    }
    let token = token(&args).await?;
    let started = Instant::now();
    let routed = super::probe::join_nearest(&args.url, &token, None, !args.no_measure).await?;
    let mut signal = routed.signal;
    let ranking: Vec<String> = routed
        .measured
        .iter()
        .map(|m| format!("{} {} ms", m.region, m.rtt_ms))
        .collect();
    eprintln!(
        "meridian device: joined room {} as {} ({}) on node {} in region {} ({}; measured: {})",
        signal.joined["room"],
        signal.joined["identity"],
        signal.joined["participant"],
        signal.joined["node"].as_str().unwrap_or("?"),
        signal.joined["region"].as_str().unwrap_or("?"),
        signal.joined["route"]["reason"].as_str().unwrap_or("local"),
        if ranking.is_empty() {
            "nothing".to_string()
        } else {
            ranking.join(", ")
        }
    );

    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_h264(true)
        .build(Instant::now());
    let mut api = rtc.sdp_api();
    let mid: Mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    api.add_channel_with_config(ChannelConfig {
        label: "controls".into(),
        ordered: true,
        reliability: Reliability::Reliable,
        ..Default::default()
    });
    api.add_channel_with_config(ChannelConfig {
        label: "input".into(),
        ordered: false,
        reliability: Reliability::MaxRetransmits { retransmits: 0 },
        ..Default::default()
    });
    let (offer, pending) = api.apply().ok_or_else(|| anyhow!("no offer"))?;
    signal
        .request(json!({"type": "publish", "mid": mid.to_string(), "name": "test-pattern"}))
        .await?;
    let answer = signal
        .request(json!({"type": "offer", "sdp": offer.to_sdp_string()}))
        .await?;
    let answer_sdp = answer["sdp"]
        .as_str()
        .ok_or_else(|| anyhow!("answer without sdp"))?;
    let server =
        server_udp(answer_sdp).ok_or_else(|| anyhow!("the answer has no UDP candidate"))?;
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(answer_sdp)?)?;
    let bind: SocketAddr = if server.ip().is_loopback() {
        "127.0.0.1:0".parse()?
    } else if server.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    let local = sock.local_addr()?;
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    let mut events = signal.into_events();

    let api = OpenH264API::from_source();
    let config = EncoderConfig::new()
        .bitrate(BitRate::from_bps(args.bitrate_kbps * 1000))
        .max_frame_rate(FrameRate::from_hz(args.fps as f32))
        .intra_frame_period(IntraFramePeriod::from_num_frames(args.fps * 4));
    let mut encoder = Encoder::with_api_config(api, config).context("H.264 encoder")?;

    let frame_interval = Duration::from_secs_f64(1.0 / args.fps as f64);
    let mut next_frame = tokio::time::Instant::now();
    let end = args
        .seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut buf = vec![0u8; 2048];
    let mut frames = 0u64;
    let mut bytes = 0u64;
    let mut keyframes_forced = 0u64;
    let mut connected = false;
    let mut transmits = 0u64;
    let mut controls: Option<ChannelId> = None;
    loop {
        // Drain str0m (its single-mutation rule) and learn its next deadline.
        let deadline = loop {
            match rtc.poll_output()? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    transmits += 1;
                    let _ = sock.send(&t.contents).await;
                }
                Output::Event(e) => {
                    match e {
                        Event::Connected => {
                            connected = true;
                            eprintln!("meridian device: media connected to {server} ({} ms after joining)", started.elapsed().as_millis());
                        }
                        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                            bail!("media connection lost");
                        }
                        Event::KeyframeRequest(_) => {
                            encoder.force_intra_frame();
                            keyframes_forced += 1;
                        }
                        Event::ChannelOpen(id, label) if label == "controls" => {
                            controls = Some(id);
                        }
                        Event::ChannelData(d) => {
                            let text = String::from_utf8_lossy(&d.data);
                            let channel = if Some(d.id) == controls {
                                "controls"
                            } else {
                                "input"
                            };
                            println!("{{\"channel\":\"{channel}\",\"message\":{text}}}");
                        }
                        _ => {}
                    }
                }
            }
        };
        let wake = tokio::time::Instant::from_std(deadline).min(next_frame);
        if end.is_some_and(|e| tokio::time::Instant::now() >= e) {
            break;
        }
        let input = tokio::select! {
            r = sock.recv(&mut buf) => {
                let n = r?;
                Some(Input::Receive(Instant::now(), Receive {
                    proto: Protocol::Udp,
                    source: server,
                    destination: local,
                    contents: buf[..n].try_into()?,
                }))
            }
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= next_frame {
                    next_frame += frame_interval;
                    if connected {
                        let yuv = YUVBuffer::from_vec(super::pattern::frame(width, height, frames, args.fps), width, height);
                        let bitstream = encoder.encode(&yuv).context("encode")?;
                        let data = bitstream.to_vec();
                        if !data.is_empty() {
                            let Some(writer) = rtc.writer(mid) else { bail!("no writer for {mid}") };
                            let pt = writer
                                .payload_params()
                                .find(|p| p.spec().codec == Codec::H264)
                                .map(|p| p.pt())
                                .ok_or_else(|| anyhow!("H.264 was not negotiated"))?;
                            let rtp_time = MediaTime::new(frames * 90_000 / args.fps as u64, Frequency::NINETY_KHZ);
                            bytes += data.len() as u64;
                            writer.write(pt, Instant::now(), rtp_time, data)?;
                        }
                        frames += 1;
                    }
                    None
                } else {
                    Some(Input::Timeout(Instant::now()))
                }
            }
            ev = events.recv() => {
                match ev {
                    Some(v) if v["type"] == "closed" => bail!("signaling closed: {}", v["reason"]),
                    Some(v) if v["type"] == "published" => eprintln!("meridian device: publishing track {}", v["track"]),
                    Some(v) if v["type"] == "error" => eprintln!("meridian device: error {}: {}", v["code"], v["message"]),
                    Some(_) => {}
                    None => bail!("signaling closed"),
                }
                None
            }
            _ = tokio::signal::ctrl_c() => break,
        };
        if let Some(i) = input {
            rtc.handle_input(i)?;
        }
    }
    eprintln!(
        "meridian device: sent {frames} frames, {} kB of H.264 ({} keyframes on request), {transmits} datagrams",
        bytes / 1000,
        keyframes_forced
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_candidates() {
        assert_eq!(parse_size("640x360").unwrap(), (640, 360));
        assert!(parse_size("641x360").is_err());
        assert!(parse_size("big").is_err());
        let sdp = "v=0\r\na=candidate:1 1 TCP 2105524479 127.0.0.1 7881 typ host tcptype passive\r\na=candidate:2 1 UDP 2130706431 127.0.0.1 7882 typ host\r\n";
        assert_eq!(server_udp(sdp), Some("127.0.0.1:7882".parse().unwrap()));
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
    }
}
