//! A str0m player that re-homes: it watches one device's video, sends sequenced controls on
//! the "controls" data channel, and when its relay fails (the signaling connection drops, ICE
//! disconnects, or the media goes silent) it joins the next node of its ranking — skipping the
//! nodes that failed it — resumes after the last room sequence it saw, subscribes again and
//! sends again, with their original ids, the controls that were not acknowledged.
//!
//! What it records is what the failover drills and tests judge: every leg (node, when media
//! started and stopped), the media gap of each re-home as the receiving client saw it (last
//! frame before, first frame after), and each control's acknowledgement (an id acknowledged
//! with two different sequence numbers was applied twice).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use meridian_geo::rehome::{next_targets, Known};
use meridian_geo::RegionRtt;
use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;

use super::signal::Signal;

/// How a player runs.
#[derive(Debug, Clone)]
pub struct PlayerOptions {
    /// The node it joins first (signaling base URL) when `known` names none.
    pub entry: String,
    pub token: String,
    /// The identity of the device to watch (its first video track).
    pub watch: String,
    /// The nodes it knows, with the RTT it measured to each region; tried best first.
    pub known: Vec<Known>,
    /// Controls to send (ids 1..=controls), one every `control_every` once media flows.
    pub controls: u64,
    pub control_every: Duration,
    /// Media silent for this long (after it flowed) counts as a failed relay.
    pub silence: Duration,
    /// The run ends after this long, or when `stop` turns true.
    pub run_for: Duration,
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Ends the run once every control was acknowledged and this many frames arrived after
    /// the last re-home (0: run until `run_for`/`stop`).
    pub done_after_frames: u64,
    /// The local address its sockets bind (any when `None`).
    pub local: Option<IpAddr>,
    /// Counters a driver can watch while the player runs.
    pub progress: Option<Arc<Progress>>,
}

/// What a running player has done so far.
#[derive(Debug, Default)]
pub struct Progress {
    /// Legs started (1 + re-homes).
    pub legs: AtomicU64,
    /// Legs that ended (failed, moved or done).
    pub ended: AtomicU64,
    /// Frames in the current leg.
    pub leg_frames: AtomicU64,
    pub frames: AtomicU64,
    pub acks: AtomicU64,
    /// The latest join error or leg end, for a bench to say why a player is stuck.
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl Progress {
    fn note(&self, why: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
    }
}

/// One connection to one node.
#[derive(Debug, Clone)]
pub struct Leg {
    pub node: String,
    pub base: String,
    pub joined: Instant,
    pub first_frame: Option<Instant>,
    pub last_frame: Option<Instant>,
    pub frames: u64,
    /// The longest time between two frames of this leg.
    pub longest_interval: Duration,
    /// Times between two frames over 100 ms: (when the later frame came, how long), the
    /// first 10,000.
    pub stalls: Vec<(Instant, Duration)>,
    /// Keyframes it asked for (PLI) after frames stalled.
    pub keyframe_requests: u64,
    /// UDP datagrams from the relay (media, RTCP, ICE, DTLS, SCTP).
    pub datagrams: u64,
    /// Why it ended ("done" for the run's end).
    pub ended: String,
}

/// What a player saw.
#[derive(Debug, Clone, Default)]
pub struct PlayerReport {
    pub legs: Vec<Leg>,
    /// Per re-home that got media back: last frame before → first frame after.
    pub gaps: Vec<Duration>,
    /// 1 when media never came back after the last failure.
    pub unrecovered: u64,
    pub sent: u64,
    /// Control id → the room sequence number its acknowledgement named.
    pub acks: BTreeMap<u64, u64>,
    /// Acknowledgements naming another sequence number than an earlier one for the same id
    /// (the message was applied twice).
    pub conflicting_acks: u64,
    /// Moves a draining node asked for that were made (make-before-break: the next node's
    /// media flowed before this one's was left).
    pub moves: u64,
    /// Per move: the last frame from the old node → the first frame from the new one after
    /// the switch (zero when they overlapped).
    pub move_gaps: Vec<Duration>,
    /// Joins that failed (a node refused or did not answer).
    pub failed_joins: u64,
    /// Why they failed (the first few).
    pub join_errors: Vec<String>,
}

impl PlayerReport {
    pub fn frames(&self) -> u64 {
        self.legs.iter().map(|l| l.frames).sum()
    }
}

/// No frame for this long (while the relay still sends) asks for a keyframe …
const STALL: Duration = Duration::from_millis(300);
/// … at most this often.
const PLI_EVERY: Duration = Duration::from_millis(500);

/// Between join attempts when every known node failed.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The SFU's UDP host candidate from an SDP answer.
pub fn server_udp(sdp: &str) -> Option<SocketAddr> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6 && f[2].eq_ignore_ascii_case("udp")).then(|| format!("{}:{}", f[4], f[5]))
        })
        .find_map(|a| a.parse().ok())
}

/// State that lives across legs.
struct Carry {
    last_seq: Option<u64>,
    first_ack_seq: Option<u64>,
    next_id: u64,
    /// Sent, not yet acknowledged: id → message text.
    unacked: BTreeMap<u64, String>,
    next_control: Option<Instant>,
}

/// Runs the player until `run_for`, `stop`, or (with `done_after_frames`) its work is done.
pub async fn run(opts: PlayerOptions) -> PlayerReport {
    let start = Instant::now();
    let end = start + opts.run_for;
    let mut report = PlayerReport::default();
    let mut carry = Carry {
        last_seq: None,
        first_ack_seq: None,
        next_id: 1,
        unacked: BTreeMap::new(),
        next_control: None,
    };
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut handover: Option<Wired> = None;
    let mut last_frame_before: Option<Instant> = None;
    // A leg that had media failed and no leg since got media.
    let mut pending_gap = false;
    let stopped = |opts: &PlayerOptions| opts.stop.as_ref().is_some_and(|s| *s.borrow());
    while Instant::now() < end && !stopped(&opts) {
        // The next node: the best known one that has not failed this player (all of them
        // again once every one has), else the entry node.
        let mut targets: Vec<Known> = next_targets(&opts.known, &failed)
            .into_iter()
            .cloned()
            .collect();
        if targets.is_empty() && !failed.is_empty() && !opts.known.is_empty() {
            failed.clear();
            tokio::time::sleep(RETRY_PAUSE).await;
            targets = next_targets(&opts.known, &failed)
                .into_iter()
                .cloned()
                .collect();
        }
        let mut wired = match handover.take() {
            // A drain's move: the next node's media already flows.
            Some(w) => w,
            None => {
                let base = targets
                    .first()
                    .map(|k| k.signaling.clone())
                    .unwrap_or_else(|| opts.entry.clone());
                let join = join_message(&opts, &carry, &failed);
                match negotiate(&opts, &base, join).await {
                    Ok(n) => match wire(n, &opts) {
                        Ok(w) => w,
                        Err(e) => {
                            note(&opts, &format!("{base}: {e:#}"));
                            report.join_errors.push(format!("{base}: {e:#}"));
                            report.failed_joins += 1;
                            report.join_errors.truncate(15);
                            mark_failed(&mut failed, &opts.known, &base);
                            continue;
                        }
                    },
                    Err(JoinFailure::NoTrack(why)) => {
                        // Joined, but the device's track is not there (yet): not the node's
                        // fault.
                        note(&opts, &why);
                        report.join_errors.push(why);
                        report.join_errors.truncate(15);
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                    Err(JoinFailure::Node(e)) => {
                        note(&opts, &format!("{base}: {e:#}"));
                        report.join_errors.push(format!("{base}: {e:#}"));
                        report.failed_joins += 1;
                        report.join_errors.truncate(15);
                        mark_failed(&mut failed, &opts.known, &base);
                        if opts.known.is_empty() {
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                        continue;
                    }
                }
            }
        };
        let node = wired.leg.node.clone();
        let on_base = wired.leg.base.clone();
        if let Some(p) = &opts.progress {
            p.legs.fetch_add(1, Ordering::Relaxed);
            p.leg_frames.store(wired.leg.frames, Ordering::Relaxed);
        }
        let r = run_leg(&mut wired, &opts, &mut carry, &mut report, end, &failed).await;
        if let Some(p) = &opts.progress {
            p.ended.fetch_add(1, Ordering::Relaxed);
        }
        let mut leg = wired.leg;
        leg.ended = match &r {
            Ok(LegEnd::Done) => "done".into(),
            Ok(LegEnd::Moved(w)) => format!("moved to {}", w.leg.node),
            Err(e) => format!("{e:#}"),
        };
        note(&opts, &format!("{node}: leg ended: {}", leg.ended));
        let r = match r {
            Ok(LegEnd::Moved(w)) => {
                // Make-before-break: the old leg ran until the new one had media.
                report.moves += 1;
                if let (Some(before), Some(after)) = (leg.last_frame, w.leg.first_frame) {
                    report
                        .move_gaps
                        .push(after.saturating_duration_since(before));
                }
                last_frame_before = leg.last_frame;
                report.legs.push(leg);
                handover = Some(*w);
                continue;
            }
            Ok(LegEnd::Done) => Ok(()),
            Err(e) => Err(e),
        };
        // A re-home's gap: from the last frame an earlier leg got to this leg's first.
        if let (true, Some(before), Some(after)) = (pending_gap, last_frame_before, leg.first_frame)
        {
            report.gaps.push(after.saturating_duration_since(before));
            pending_gap = false;
        }
        if leg.last_frame.is_some() {
            last_frame_before = leg.last_frame;
        }
        let done = r.is_ok();
        if !done {
            pending_gap |= last_frame_before.is_some();
            failed.insert(node.clone());
            mark_failed(&mut failed, &opts.known, &on_base);
        }
        report.legs.push(leg);
        if done {
            break;
        }
    }
    // A failure after which media never came back.
    report.unrecovered = u64::from(pending_gap);
    report
}

fn note(opts: &PlayerOptions, why: &str) {
    if let Some(p) = &opts.progress {
        p.note(why);
    }
}

fn mark_failed(failed: &mut BTreeSet<String>, known: &[Known], base: &str) {
    let base = base.trim_end_matches('/');
    failed.insert(base.to_string());
    for k in known {
        if k.signaling.trim_end_matches('/') == base {
            failed.insert(k.node.clone());
        }
    }
}

/// The join a leg sends: the ranking without the regions that failed (a node that has not yet
/// seen the death must not send the player back), resuming after the last room sequence seen.
fn join_message(opts: &PlayerOptions, carry: &Carry, failed: &BTreeSet<String>) -> Value {
    let failed_regions: BTreeSet<String> = opts
        .known
        .iter()
        .filter(|k| failed.contains(&k.node))
        .map(|k| k.region.clone())
        .collect();
    let ranking: Vec<RegionRtt> = opts
        .known
        .iter()
        .filter(|k| !failed_regions.contains(&k.region))
        .filter_map(|k| {
            k.rtt_ms.map(|rtt_ms| RegionRtt {
                region: k.region.clone(),
                rtt_ms,
            })
        })
        .collect();
    let mut join = json!({"type": "join", "v": 1, "token": opts.token});
    if !ranking.is_empty() {
        join["regions"] = json!(ranking
            .iter()
            .map(|r| json!({"region": r.region, "rtt_ms": r.rtt_ms}))
            .collect::<Vec<_>>());
    }
    if let Some(s) = carry.last_seq {
        join["resume_from"] = json!(s);
    } else if let Some(s) = carry.first_ack_seq {
        join["resume_from"] = json!(s.saturating_sub(1));
    }
    join
}

enum JoinFailure {
    /// Joined, but the subscription was refused (the device's track is not there yet).
    NoTrack(String),
    /// The node refused or did not answer.
    Node(anyhow::Error),
}

/// Joins at `base` with the media session offered before the join and sent right behind it
/// with the subscription (by the device's identity): joined, subscribed and answered in one
/// round trip.
async fn negotiate(
    opts: &PlayerOptions,
    base: &str,
    join: Value,
) -> Result<Negotiated, JoinFailure> {
    let (rtc, mid, pending, offer) = new_rtc().map_err(JoinFailure::Node)?;
    let then = [
        json!({"type": "subscribe", "identity": opts.watch, "kind": "video", "mid": mid.to_string()}),
        json!({"type": "offer", "sdp": offer}),
    ];
    let joined = tokio::time::timeout(
        Duration::from_secs(5),
        Signal::join_pipelined(base, join, &then, None, opts.local),
    )
    .await
    .map_err(|_| anyhow!("no joined within 5 s"))
    .and_then(|r| r);
    match joined {
        Ok((signal, on_base, _, replies)) if replies.iter().all(|r| r["type"] != "error") => {
            Ok(Negotiated {
                answer: replies[1]["sdp"].as_str().unwrap_or_default().to_string(),
                signal,
                base: on_base,
                rtc,
                mid,
                pending,
            })
        }
        Ok((_, b, _, replies)) => {
            let e = replies
                .iter()
                .find(|r| r["type"] == "error")
                .cloned()
                .unwrap_or_default();
            Err(JoinFailure::NoTrack(format!(
                "{b}: {}: {}",
                e["code"], e["message"]
            )))
        }
        Err(e) => Err(JoinFailure::Node(e)),
    }
}

/// A media session offered before the join, and the node's answer.
struct Negotiated {
    signal: Signal,
    base: String,
    rtc: Rtc,
    mid: Mid,
    pending: SdpPendingOffer,
    answer: String,
}

/// A leg's connection: signaling, the media session and its socket.
struct Wired {
    signal: Signal,
    rtc: Rtc,
    mid: Mid,
    sock: UdpSocket,
    server: SocketAddr,
    local: SocketAddr,
    channel: Option<ChannelId>,
    /// Room messages that came while the leg warmed up beside the one it replaces.
    early: Vec<Value>,
    leg: Leg,
}

/// Accepts the answer and binds the leg's socket.
fn wire(n: Negotiated, opts: &PlayerOptions) -> anyhow::Result<Wired> {
    let Negotiated {
        signal,
        base,
        mut rtc,
        mid,
        pending,
        answer,
    } = n;
    let sdp = answer.as_str();
    let server = server_udp(sdp).ok_or_else(|| anyhow!("the answer has no UDP candidate"))?;
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(sdp)?)?;
    let bind = SocketAddr::new(
        opts.local.unwrap_or(if server.is_ipv6() {
            IpAddr::from([0u16; 8])
        } else {
            IpAddr::from([0u8; 4])
        }),
        0,
    );
    let std_sock = std::net::UdpSocket::bind(bind)?;
    std_sock.set_nonblocking(true)?;
    // Connected: a dead node's ICMP port unreachable ends the leg at once.
    std_sock.connect(server)?;
    let sock = UdpSocket::from_std(std_sock)?;
    let local = sock.local_addr()?;
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    let leg = Leg {
        node: signal.joined["node"].as_str().unwrap_or("").to_string(),
        base,
        joined: Instant::now(),
        first_frame: None,
        last_frame: None,
        frames: 0,
        longest_interval: Duration::ZERO,
        stalls: Vec::new(),
        datagrams: 0,
        keyframe_requests: 0,
        ended: String::new(),
    };
    Ok(Wired {
        signal,
        rtc,
        mid,
        sock,
        server,
        local,
        channel: None,
        early: Vec::new(),
        leg,
    })
}

/// A receive-only H.264 session with the "controls" channel, and its offer.
fn new_rtc() -> anyhow::Result<(Rtc, Mid, SdpPendingOffer, String)> {
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_h264(true)
        .build(Instant::now());
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.add_channel_with_config(ChannelConfig {
        label: "controls".into(),
        ordered: true,
        reliability: Reliability::Reliable,
        ..Default::default()
    });
    let (offer, pending) = api.apply().ok_or_else(|| anyhow!("no offer"))?;
    Ok((rtc, mid, pending, offer.to_sdp_string()))
}

/// How a leg that did not fail ended.
enum LegEnd {
    /// The run is over.
    Done,
    /// A draining node asked the player to move, and the next leg's media flows.
    Moved(Box<Wired>),
}

/// What one turn of a leg's loop saw.
enum Seen {
    /// A frame arrived.
    Frame,
    /// A message on the controls channel.
    Message(Value),
    /// A signaling event.
    Signal(Value),
}

/// Drains the leg's media session, then waits for one input (or `wake`). Frames are counted
/// in `w.leg`; everything else it saw is returned for the caller to handle.
async fn turn(w: &mut Wired, wake: Instant, buf: &mut [u8]) -> anyhow::Result<Vec<Seen>> {
    let mut seen = Vec::new();
    let deadline = loop {
        match w.rtc.poll_output()? {
            Output::Timeout(t) => break t,
            Output::Transmit(t) => {
                let _ = w.sock.send(&t.contents).await;
            }
            Output::Event(Event::MediaData(_)) => {
                let t = Instant::now();
                let leg = &mut w.leg;
                leg.first_frame.get_or_insert(t);
                if let Some(prev) = leg.last_frame {
                    let d = t.saturating_duration_since(prev);
                    leg.longest_interval = leg.longest_interval.max(d);
                    if d > Duration::from_millis(100) && leg.stalls.len() < 10_000 {
                        leg.stalls.push((t, d));
                    }
                }
                leg.last_frame = Some(t);
                leg.frames += 1;
                seen.push(Seen::Frame);
            }
            Output::Event(Event::IceConnectionStateChange(IceConnectionState::Disconnected)) => {
                bail!("ICE disconnected")
            }
            Output::Event(Event::ChannelOpen(id, label)) if label == "controls" => {
                w.channel = Some(id)
            }
            Output::Event(Event::ChannelData(d)) => {
                if let Ok(v) = serde_json::from_slice::<Value>(&d.data) {
                    seen.push(Seen::Message(v));
                }
            }
            Output::Event(_) => {}
        }
    };
    let wake = wake.min(deadline);
    let input = tokio::select! {
        r = w.sock.recv(buf) => match r {
            Ok(n) => {
                w.leg.datagrams += 1;
                Some(Input::Receive(Instant::now(), Receive {
                    proto: Protocol::Udp,
                    source: w.server,
                    destination: w.local,
                    contents: buf[..n].try_into()?,
                }))
            }
            // An ICMP port unreachable from a dead node.
            Err(e) => bail!("media socket: {e}"),
        },
        _ = tokio::time::sleep_until(wake.into()) => Some(Input::Timeout(Instant::now())),
        ev = w.signal.next_json() => {
            let ev = ev?;
            if ev["type"] == "disconnected" {
                bail!("the node ended the media session: {}", ev["reason"]);
            }
            seen.push(Seen::Signal(ev));
            None
        }
    };
    if let Some(i) = input {
        w.rtc.handle_input(i)?;
    }
    Ok(seen)
}

/// Asks for a keyframe when frames stalled (as a browser does on a decode error), or when the
/// leg's first frame is late.
fn keyframe_if_stalled(w: &mut Wired, now: Instant, last_pli: &mut Option<Instant>) {
    let stalled = match w.leg.last_frame {
        Some(t) => now.saturating_duration_since(t) > STALL,
        None => now.saturating_duration_since(w.leg.joined) > STALL,
    };
    if stalled && last_pli.is_none_or(|t| now.saturating_duration_since(t) > PLI_EVERY) {
        if let Some(mut wr) = w.rtc.writer(w.mid) {
            if wr.request_keyframe(None, KeyframeRequestKind::Pli).is_ok() {
                *last_pli = Some(now);
                w.leg.keyframe_requests += 1;
            }
        }
    }
}

/// The next leg of a move, joined and connected beside the current one until its first
/// frame. Room messages it gets meanwhile are kept for when it takes over.
async fn warm_up(opts: PlayerOptions, base: String, join: Value) -> anyhow::Result<Wired> {
    // Tried again a few times: the target may not yet have seen the drain (it then sends the
    // player back), or the room's device not yet arrived there.
    let mut attempt = 0;
    let n = loop {
        attempt += 1;
        match negotiate(&opts, &base, join.clone()).await {
            Ok(n) => break n,
            Err(_) if attempt < 10 => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(JoinFailure::NoTrack(why)) => bail!("{why}"),
            Err(JoinFailure::Node(e)) => return Err(e),
        }
    };
    let mut w = wire(n, &opts)?;
    let by = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 2048];
    let mut last_pli = None;
    while w.leg.first_frame.is_none() {
        let now = Instant::now();
        if now > by {
            bail!("no media from {base} within 10 s of joining");
        }
        keyframe_if_stalled(&mut w, now, &mut last_pli);
        for s in turn(&mut w, now + Duration::from_millis(20), &mut buf).await? {
            if let Seen::Message(v) = s {
                w.early.push(v);
            }
        }
    }
    Ok(w)
}

/// A room message or acknowledgement on the controls channel.
fn on_message(v: &Value, opts: &PlayerOptions, carry: &mut Carry, report: &mut PlayerReport) {
    if let (Some(id), Some(seq)) = (v["ack"].as_u64(), v["seq"].as_u64()) {
        carry.unacked.remove(&id);
        carry.first_ack_seq.get_or_insert(seq);
        match report.acks.get(&id) {
            Some(&s) if s != seq => report.conflicting_acks += 1,
            Some(_) => {}
            None => {
                report.acks.insert(id, seq);
                if let Some(p) = &opts.progress {
                    p.acks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    } else if let Some(seq) = v["seq"].as_u64() {
        carry.last_seq = Some(carry.last_seq.map_or(seq, |s| s.max(seq)));
    }
}

/// One leg: watch and send until the run ends, a move's next leg has media (its make-before-
/// break hand-over), or the relay fails (Err, with why). What the leg saw is in `w.leg`.
async fn run_leg(
    w: &mut Wired,
    opts: &PlayerOptions,
    carry: &mut Carry,
    report: &mut PlayerReport,
    end: Instant,
    failed: &BTreeSet<String>,
) -> anyhow::Result<LegEnd> {
    for v in std::mem::take(&mut w.early) {
        on_message(&v, opts, carry, report);
    }
    // Controls that were sent but not acknowledged go again first, with their ids.
    let mut resend: Vec<u64> = carry.unacked.keys().copied().collect();
    let mut buf = vec![0u8; 2048];
    let mut stop = opts.stop.clone();
    let connect_by = Instant::now() + Duration::from_secs(10);
    let mut last_pli: Option<Instant> = None;
    let mut next: Option<tokio::task::JoinHandle<anyhow::Result<Wired>>> = None;
    let mut moved_to: BTreeSet<String> = BTreeSet::new();
    let result = loop {
        let now = Instant::now();
        if now >= end {
            break Ok(LegEnd::Done);
        }
        if opts.done_after_frames > 0
            && w.leg.frames >= opts.done_after_frames
            && carry.next_id > opts.controls
            && carry.unacked.is_empty()
        {
            break Ok(LegEnd::Done);
        }
        match w.leg.last_frame {
            Some(t) if now.saturating_duration_since(t) > opts.silence => {
                break Err(anyhow!("media silent for {} ms", opts.silence.as_millis()))
            }
            None if now > connect_by => break Err(anyhow!("no media within 10 s of joining")),
            _ => {}
        }
        keyframe_if_stalled(w, now, &mut last_pli);
        // Controls: the resends, then new ones on schedule, once media flows.
        if let (Some(ch), Some(_)) = (w.channel, w.leg.first_frame) {
            if let Some(mut c) = w.rtc.channel(ch) {
                while let Some(id) = resend.first().copied() {
                    let Some(text) = carry.unacked.get(&id) else {
                        resend.remove(0);
                        continue;
                    };
                    match c.write(false, text.as_bytes()) {
                        Ok(true) => {
                            resend.remove(0);
                        }
                        _ => break,
                    }
                }
                let due = carry.next_control.is_none_or(|t| now >= t);
                if resend.is_empty() && due && carry.next_id <= opts.controls {
                    let id = carry.next_id;
                    let text = format!(r#"{{"id":{id},"data":{{"n":{id}}}}}"#);
                    if let Ok(true) = c.write(false, text.as_bytes()) {
                        carry.unacked.insert(id, text);
                        carry.next_id += 1;
                        report.sent += 1;
                        carry.next_control = Some(now + opts.control_every);
                    }
                }
            }
        }
        let mut wake = now + Duration::from_millis(20);
        if let Some(t) = carry.next_control {
            wake = wake.min(t.max(now));
        }
        let seen = tokio::select! {
            r = turn(w, wake, &mut buf) => r,
            done = async { next.as_mut().expect("guarded").await }, if next.is_some() => {
                next = None;
                match done {
                    Ok(Ok(n)) => break Ok(LegEnd::Moved(Box::new(n))),
                    // The target could not take the player: stay until this node closes.
                    Ok(Err(e)) => {
                        report.join_errors.push(format!("move: {e:#}"));
                        report.join_errors.truncate(15);
                    }
                    Err(e) => report.join_errors.push(format!("move: {e}")),
                }
                continue;
            }
            _ = async {
                match stop.as_mut() {
                    Some(s) => { let _ = s.wait_for(|v| *v).await; }
                    None => std::future::pending().await,
                }
            } => break Ok(LegEnd::Done),
        };
        let seen = match seen {
            Ok(s) => s,
            Err(e) => break Err(e),
        };
        for s in seen {
            match s {
                Seen::Frame => {
                    if let Some(p) = &opts.progress {
                        p.frames.fetch_add(1, Ordering::Relaxed);
                        p.leg_frames.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Seen::Message(v) => on_message(&v, opts, carry, report),
                Seen::Signal(ev) if ev["type"] == "move" && next.is_none() => {
                    // The node drains: join the target beside this leg, switch once its
                    // media flows.
                    let Some(base) = ev["url"]
                        .as_str()
                        .and_then(|u| super::signal::http_base(u).ok())
                    else {
                        continue;
                    };
                    if !moved_to.insert(base.clone()) {
                        continue;
                    }
                    let mut f = failed.clone();
                    f.insert(w.leg.node.clone());
                    let join = join_message(opts, carry, &f);
                    next = Some(tokio::spawn(warm_up(opts.clone(), base, join)));
                }
                Seen::Signal(_) => {}
            }
        }
    };
    if let Some(n) = next {
        n.abort();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_names_the_sfu_udp_address() {
        let sdp = "v=0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 4000 typ host\r\n";
        assert_eq!(server_udp(sdp), Some("127.0.0.1:4000".parse().unwrap()));
        assert_eq!(server_udp("v=0\r\n"), None);
    }
}
