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
    let signal = routed.signal;
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
    // Where it can go when its node fails: the regions it measured, nearest first, then the
    // node it was given.
    let mut known: Vec<(String, String)> = routed
        .measured
        .iter()
        .filter_map(|m| Some((m.region.clone(), m.signaling.clone()?)))
        .collect();
    known.push((String::new(), args.url.trim_end_matches('/').to_string()));
    // Every other node of the cluster, for when the measured ones fail too.
    if let Ok(list) = http_get_json(&args.url, "/v1/regions").await {
        for r in list["regions"].as_array().into_iter().flatten() {
            for n in r["nodes"].as_array().into_iter().flatten() {
                if let Some(url) = n["signaling"].as_str().map(|u| u.trim_end_matches('/')) {
                    if !known.iter().any(|k| k.1 == url) {
                        let region = r["region"].as_str().unwrap_or_default().to_string();
                        known.push((region, url.to_string()));
                    }
                }
            }
        }
    }
    let ranking = super::probe::ranking_json(&routed.measured);
    let mut active = Conn::open(signal, routed.base).await?;

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
    let mut st = Stats::default();
    // Make-before-break: the node it moves to (joining, then connected beside the active one).
    let mut joining: Option<tokio::task::JoinHandle<anyhow::Result<Box<Conn>>>> = None;
    let mut next: Option<Conn> = None;
    // After a move, the old connection is kept while players still watch on it.
    let mut old: Option<(Conn, Instant)> = None;
    loop {
        if end.is_some_and(|e| tokio::time::Instant::now() >= e) {
            break;
        }
        // Drain str0m (its single-mutation rule) and learn the next deadlines.
        let mut wake = next_frame;
        match active.drain(started, &mut encoder, &mut st).await {
            Ok(t) => wake = wake.min(tokio::time::Instant::from_std(t)),
            Err(e) => {
                // The relay failed: the connection already beside it takes over, else the
                // next node of the ranking.
                eprintln!("meridian device: {} failed: {e:#}", active.node);
                active = match next.take() {
                    Some(n) => n,
                    None => rehome(&token, &known, &ranking, &active.node, end).await?,
                };
                encoder.force_intra_frame();
                continue;
            }
        }
        for c in [next.as_mut(), old.as_mut().map(|o| &mut o.0)]
            .into_iter()
            .flatten()
        {
            match c.drain(started, &mut encoder, &mut st).await {
                Ok(t) => wake = wake.min(tokio::time::Instant::from_std(t)),
                Err(e) => {
                    eprintln!("meridian device: {} failed: {e:#}", c.node);
                    c.dead = true;
                }
            }
        }
        if next.as_ref().is_some_and(|c| c.dead) {
            next = None;
        }
        if old
            .as_ref()
            .is_some_and(|(c, by)| c.dead || c.watchers == 0 || Instant::now() >= *by)
        {
            if let Some((c, _)) = old.take() {
                eprintln!("meridian device: left {} after moving", c.node);
            }
        }
        // The moved-to node is connected: it is the active one now. Its first frame is a
        // keyframe, so its players see the device at once; the old one stays while it still
        // has players (they are being moved too), until the drain deadline.
        if next.as_ref().is_some_and(|c| c.connected) {
            let n = next.take().expect("checked");
            eprintln!("meridian device: moved to {}", n.node);
            let by = Instant::now() + active.move_deadline.unwrap_or(Duration::from_secs(10));
            old = Some((std::mem::replace(&mut active, n), by));
            encoder.force_intra_frame();
            continue;
        }
        let got = tokio::select! {
            r = active.next_in() => Got::Conn(Which::Active, r),
            r = async { next.as_mut().expect("guarded").next_in().await }, if next.is_some() => Got::Conn(Which::Next, r),
            r = async { old.as_mut().expect("guarded").0.next_in().await }, if old.is_some() => Got::Conn(Which::Old, r),
            _ = tokio::time::sleep_until(wake) => Got::Tick,
            j = async { joining.as_mut().expect("guarded").await }, if joining.is_some() => Got::Joined(j),
            _ = tokio::signal::ctrl_c() => break,
        };
        let now = Instant::now();
        match got {
            Got::Tick if tokio::time::Instant::now() >= next_frame => {
                next_frame += frame_interval;
                if active.connected {
                    let yuv = YUVBuffer::from_vec(
                        super::pattern::frame(width, height, st.frames, args.fps),
                        width,
                        height,
                    );
                    let bitstream = encoder.encode(&yuv).context("encode")?;
                    let data = bitstream.to_vec();
                    if !data.is_empty() {
                        let rtp_time = MediaTime::new(
                            st.frames * 90_000 / args.fps as u64,
                            Frequency::NINETY_KHZ,
                        );
                        st.bytes += data.len() as u64;
                        if active.write(rtp_time, &data).is_err() {
                            active.dead = true;
                        }
                        if let Some((o, _)) = old.as_mut().filter(|o| o.0.connected && !o.0.dead) {
                            if o.write(rtp_time, &data).is_err() {
                                o.dead = true;
                            }
                        }
                    }
                    st.frames += 1;
                }
            }
            Got::Tick => {
                for c in [
                    Some(&mut active),
                    next.as_mut(),
                    old.as_mut().map(|o| &mut o.0),
                ]
                .into_iter()
                .flatten()
                {
                    if c.rtc.handle_input(Input::Timeout(now)).is_err() {
                        c.dead = true;
                    }
                }
            }
            Got::Joined(j) => {
                joining = None;
                match j {
                    Ok(Ok(c)) => next = Some(*c),
                    Ok(Err(e)) => eprintln!(
                        "meridian device: the move failed, staying until the node closes: {e:#}"
                    ),
                    Err(e) => eprintln!("meridian device: the move failed: {e}"),
                }
            }
            Got::Conn(which, input) => {
                let may_move = joining.is_none() && next.is_none();
                let c = match which {
                    Which::Active => Some(&mut active),
                    Which::Next => next.as_mut(),
                    Which::Old => old.as_mut().map(|o| &mut o.0),
                };
                let Some(c) = c else { continue };
                match input {
                    ConnIn::Datagram(Ok(n)) => {
                        let input = Input::Receive(
                            now,
                            Receive {
                                proto: Protocol::Udp,
                                source: c.server,
                                destination: c.local,
                                contents: c.buf[..n].try_into()?,
                            },
                        );
                        if c.rtc.handle_input(input).is_err() {
                            c.dead = true;
                        }
                    }
                    // An ICMP port unreachable: the node is gone.
                    ConnIn::Datagram(Err(_)) => c.dead = true,
                    ConnIn::Event(None) => c.dead = true,
                    ConnIn::Event(Some(v)) => {
                        if v["type"] == "move" && matches!(which, Which::Active) {
                            if may_move {
                                if let Some(to) = v["url"]
                                    .as_str()
                                    .and_then(|u| super::signal::http_base(u).ok())
                                {
                                    eprintln!(
                                        "meridian device: node {} drains; moving to {} ({})",
                                        c.node,
                                        v["node"].as_str().unwrap_or("?"),
                                        v["reason"].as_str().unwrap_or("?")
                                    );
                                    c.move_deadline =
                                        v["deadline_ms"].as_u64().map(Duration::from_millis);
                                    let (token, ranking) = (token.clone(), ranking.clone());
                                    joining = Some(tokio::spawn(async move {
                                        join_retrying(&to, &token, &ranking).await.map(Box::new)
                                    }));
                                }
                            }
                        } else {
                            c.on_event(&v);
                        }
                    }
                }
            }
        }
        if active.dead {
            eprintln!("meridian device: {} is gone", active.node);
            active = match next.take() {
                Some(n) => n,
                None => rehome(&token, &known, &ranking, &active.node, end).await?,
            };
            encoder.force_intra_frame();
        }
    }
    eprintln!(
        "meridian device: sent {} frames, {} kB of H.264 ({} keyframes on request), {} datagrams",
        st.frames,
        st.bytes / 1000,
        st.keyframes_forced,
        st.transmits
    );
    Ok(())
}

#[derive(Default)]
struct Stats {
    frames: u64,
    bytes: u64,
    keyframes_forced: u64,
    transmits: u64,
}

#[derive(Clone, Copy)]
enum Which {
    Active,
    Next,
    Old,
}

/// What the main loop woke for.
enum Got {
    Conn(Which, ConnIn),
    Tick,
    Joined(Result<anyhow::Result<Box<Conn>>, tokio::task::JoinError>),
}

/// What came in on one connection.
enum ConnIn {
    Datagram(std::io::Result<usize>),
    Event(Option<serde_json::Value>),
}

/// Joins the next node after `failed` died: the nodes it knows in ranking order (the dead
/// one's region left out of the ranking it sends), again and again until one takes it or the
/// run ends. The room's home moves with it once the cluster has seen the death.
async fn rehome(
    token: &str,
    known: &[(String, String)],
    ranking: &serde_json::Value,
    failed: &str,
    end: Option<tokio::time::Instant>,
) -> anyhow::Result<Conn> {
    let t0 = Instant::now();
    let mut attempts = 0u32;
    loop {
        for (_, base) in known {
            if end.is_some_and(|e| tokio::time::Instant::now() >= e) {
                bail!("the run ended while re-homing");
            }
            attempts += 1;
            match tokio::time::timeout(Duration::from_secs(5), Conn::join(base, token, ranking))
                .await
            {
                Ok(Ok(c)) if c.node != failed => {
                    eprintln!(
                        "meridian device: re-homed on {} after {} ms ({attempts} attempts)",
                        c.node,
                        t0.elapsed().as_millis()
                    );
                    return Ok(c);
                }
                // The node that failed, still listed somewhere: try the next.
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("meridian device: re-home via {base}: {e:#}"),
                Err(_) => eprintln!("meridian device: re-home via {base}: no answer within 5 s"),
            }
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("no node took the device within 120 s of losing {failed}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A move's join, tried again a few times: the target may not yet have seen that the old node
/// drains (it then sends the device back there, which refuses it).
async fn join_retrying(
    base: &str,
    token: &str,
    ranking: &serde_json::Value,
) -> anyhow::Result<Conn> {
    let mut last = None;
    for _ in 0..10 {
        match Conn::join(base, token, ranking).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last.unwrap_or_else(|| anyhow!("no attempt")))
}

/// One publishing connection: signaling, the media session and its socket.
struct Conn {
    node: String,
    events: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    rtc: Rtc,
    mid: Mid,
    sock: UdpSocket,
    server: SocketAddr,
    local: SocketAddr,
    controls: Option<ChannelId>,
    connected: bool,
    dead: bool,
    /// Players and viewers in the room on this connection's node.
    watchers: usize,
    /// Set when the node asked the device to move: how long it keeps this connection.
    move_deadline: Option<Duration>,
    buf: Vec<u8>,
}

impl Conn {
    /// Joins `base` (following redirects) and opens the media session.
    async fn join(base: &str, token: &str, ranking: &serde_json::Value) -> anyhow::Result<Conn> {
        let mut join = json!({"type": "join", "v": 1, "token": token});
        if ranking.as_array().is_some_and(|r| !r.is_empty()) {
            join["regions"] = ranking.clone();
        }
        let (signal, base) = super::signal::Signal::join_routed(base, join).await?;
        Conn::open(signal, base).await
    }

    async fn open(mut signal: super::signal::Signal, _base: String) -> anyhow::Result<Conn> {
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
        let node = signal.joined["node"].as_str().unwrap_or("?").to_string();
        let watchers = signal.joined["participants"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|p| p["role"] != "device").count());
        Ok(Conn {
            node,
            events: signal.into_events(),
            rtc,
            mid,
            sock,
            server,
            local,
            controls: None,
            connected: false,
            dead: false,
            watchers,
            move_deadline: None,
            buf: vec![0u8; 2048],
        })
    }

    /// Handles str0m's output until its next deadline.
    async fn drain(
        &mut self,
        started: Instant,
        encoder: &mut Encoder,
        st: &mut Stats,
    ) -> anyhow::Result<Instant> {
        if self.dead {
            bail!("connection lost");
        }
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => return Ok(t),
                Output::Transmit(t) => {
                    st.transmits += 1;
                    let _ = self.sock.send(&t.contents).await;
                }
                Output::Event(e) => match e {
                    Event::Connected => {
                        self.connected = true;
                        eprintln!(
                            "meridian device: media connected to {} on {} ({} ms after starting)",
                            self.server,
                            self.node,
                            started.elapsed().as_millis()
                        );
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        bail!("media connection lost");
                    }
                    Event::KeyframeRequest(_) => {
                        encoder.force_intra_frame();
                        st.keyframes_forced += 1;
                    }
                    Event::ChannelOpen(id, label) if label == "controls" => {
                        self.controls = Some(id);
                    }
                    Event::ChannelData(d) => {
                        let text = String::from_utf8_lossy(&d.data);
                        let channel = if Some(d.id) == self.controls {
                            "controls"
                        } else {
                            "input"
                        };
                        println!("{{\"channel\":\"{channel}\",\"message\":{text}}}");
                    }
                    _ => {}
                },
            }
        }
    }

    /// The next datagram or signaling event.
    async fn next_in(&mut self) -> ConnIn {
        tokio::select! {
            r = self.sock.recv(&mut self.buf) => ConnIn::Datagram(r),
            e = self.events.recv() => ConnIn::Event(e),
        }
    }

    fn write(&mut self, rtp_time: MediaTime, data: &[u8]) -> anyhow::Result<()> {
        let Some(writer) = self.rtc.writer(self.mid) else {
            bail!("no writer for {}", self.mid)
        };
        let pt = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::H264)
            .map(|p| p.pt())
            .ok_or_else(|| anyhow!("H.264 was not negotiated"))?;
        writer.write(pt, Instant::now(), rtp_time, data.to_vec())?;
        Ok(())
    }

    fn on_event(&mut self, v: &serde_json::Value) {
        match v["type"].as_str() {
            Some("closed") => {
                eprintln!(
                    "meridian device: signaling with {} closed: {}",
                    self.node, v["reason"]
                );
                self.dead = true;
            }
            Some("published") => eprintln!(
                "meridian device: publishing track {} on {}",
                v["track"], self.node
            ),
            Some("error") => eprintln!("meridian device: error {}: {}", v["code"], v["message"]),
            Some("participant_joined") if v["participant"]["role"] != "device" => {
                self.watchers += 1
            }
            Some("participant_left") => self.watchers = self.watchers.saturating_sub(1),
            _ => {}
        }
    }
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
