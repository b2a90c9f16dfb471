//! The SFU core: rooms, publishers, subscribers and what gets forwarded where, around one
//! str0m [`Rtc`] per session.
//!
//! Like the TURN core this owns no socket and reads no clock: the driver feeds datagrams
//! ([`Sfu::handle_receive`]), signaling requests ([`Sfu::join`], [`Sfu::offer`], …) and time
//! ([`Sfu::handle_timeout`]); it drains [`Sfu::poll_transmit`] (datagrams to send) and
//! [`Sfu::poll_notice`] (events for a session's signaling connection).
//!
//! One `Sfu` holds whole rooms: a room never spans two of them, so a driver shards rooms over
//! threads and nothing on the per-packet path is shared.
//!
//! Forwarding is at the RTP level (str0m's RTP mode). Per subscriber the SFU picks a simulcast
//! layer ([`layer`]), switches only at a keyframe ([`keyframe`]) and keeps the outgoing
//! sequence numbers and timestamps continuous ([`participant::Rewriter`]).
//!
//! Two send paths: players' and viewers' non-simulcast media is SRTP-protected by the SFU
//! itself straight into the datagram, with NACKs served from one packet cache per track and
//! the SFU's own sender reports ([`direct`]); everything else (devices' subscriptions,
//! simulcast, whose layer choice needs str0m's bandwidth estimate) is written to the session's
//! str0m stream. Either way an incoming payload is one reference-counted buffer, so fan-out
//! copies no media before encryption.

mod direct;
mod dtls;
pub mod keyframe;
pub mod layer;
pub mod messages;
mod participant;
mod remote;
mod srtp;
mod track;

#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::format::{Codec, PayloadParams};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::rtp::{RtpPacket, RtpWrite, SeqNo};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Reason, Rtc, RtcError};

pub use str0m::net::{Protocol, Transmit};

pub use self::remote::{parse_rtp, ExportInfo, RemoteDevice, RemoteTrackSpec, TrunkOutput};

use self::direct::{Cached, DirectSession, PacketCache, WallClock};
use self::layer::LayerPrefs;
use self::messages::{Appended, Audience, MessageLog};
use self::participant::{ChannelRole, OutStream, Participant, PublishMeta, Subscription};
use self::track::{Track, RATE_WINDOW};
use crate::stun;

/// Identifies a session on this node. The driver gives each shard its own range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u64);

impl std::fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p{:x}", self.0)
    }
}

/// What a session may do (from its access token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publishes media, receives controls, sends room messages to players.
    Device,
    /// Subscribes, sends controls and input to the device.
    Player,
    /// Subscribes only.
    Viewer,
}

impl Role {
    pub fn can_publish(self) -> bool {
        self == Role::Device
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Player => "player",
            Role::Viewer => "viewer",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Host candidates offered to every session (the SFU's UDP addresses as clients reach them).
    pub udp_candidates: Vec<SocketAddr>,
    /// Passive ICE-TCP candidates.
    pub tcp_candidates: Vec<SocketAddr>,
    /// At most one keyframe request per publisher track per this interval.
    pub keyframe_interval: Duration,
    /// A published track without media for this long is reported stalled.
    pub stall_after: Duration,
    /// Room messages kept for clients that reconnect.
    pub message_log: usize,
    /// Largest data-channel message accepted.
    pub max_message_bytes: usize,
    /// Packets kept for retransmission on NACK: per published track (own send path), and per
    /// outgoing video stream that str0m sends.
    pub rtx_cache_packets: usize,
    /// Bandwidth estimate a subscriber starts from, before TWCC feedback arrives.
    pub initial_estimate_bps: u64,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            udp_candidates: Vec::new(),
            tcp_candidates: Vec::new(),
            keyframe_interval: Duration::from_secs(1),
            stall_after: Duration::from_secs(5),
            message_log: 1024,
            max_message_bytes: 16 * 1024,
            rtx_cache_packets: 256,
            initial_estimate_bps: 1_500_000,
        }
    }
}

/// A request the SFU refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SfuError {
    #[error("no such session")]
    UnknownParticipant,
    #[error("no track {0:?} in this room")]
    UnknownTrack(String),
    #[error("a {0} may not {1}")]
    Forbidden(&'static str, &'static str),
    #[error("invalid SDP: {0}")]
    BadSdp(String),
    #[error("invalid ICE candidate: {0}")]
    BadCandidate(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("media negotiation failed: {0}")]
    Negotiation(String),
}

impl SfuError {
    /// The stable, documented code (docs/signaling.md).
    pub fn code(&self) -> &'static str {
        match self {
            SfuError::UnknownParticipant => "not_joined",
            SfuError::UnknownTrack(_) => "unknown_track",
            SfuError::Forbidden(..) => "forbidden",
            SfuError::BadSdp(_) => "bad_sdp",
            SfuError::BadCandidate(_) => "bad_candidate",
            SfuError::BadRequest(_) => "bad_request",
            SfuError::Negotiation(_) => "negotiation_failed",
        }
    }
}

/// A published track as signaling describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    pub id: String,
    pub publisher: String,
    pub kind: &'static str,
    pub name: String,
    pub layers: Vec<String>,
    pub codec: Option<String>,
    pub muted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantInfo {
    pub id: String,
    pub identity: String,
    pub role: Role,
}

/// Something a session's signaling connection should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// ICE and DTLS are up.
    Connected,
    /// The SFU ended the session (ICE timed out, or its WebRTC state failed).
    Disconnected {
        reason: String,
    },
    ParticipantJoined(ParticipantInfo),
    ParticipantLeft {
        id: String,
        identity: String,
    },
    TrackPublished(Box<TrackInfo>),
    TrackUnpublished {
        track: String,
    },
    TrackMuted {
        track: String,
        muted: bool,
    },
    /// This session's own `publish` took effect.
    Published {
        track: String,
        mid: String,
    },
    /// This session's `subscribe` is active: media for `track` flows on `mid`.
    Subscribed {
        track: String,
        mid: String,
    },
    Unsubscribed {
        track: String,
    },
    /// The simulcast layer forwarded to this session changed.
    LayerChanged {
        track: String,
        layer: Option<String>,
    },
    /// A published track stopped (or resumed) carrying media.
    TrackStalled {
        track: String,
        stalled: bool,
    },
    /// An asynchronous refusal (a request's own errors are returned to it directly).
    Error {
        code: &'static str,
        message: String,
    },
}

/// A device as `GET /v1/rooms` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSummary {
    pub room: String,
    pub identity: String,
    pub live: bool,
    pub viewers: usize,
    pub bitrate_bps: u64,
    pub tracks: Vec<String>,
    /// Other nodes receiving its tracks over the trunk.
    pub remote_nodes: Vec<String>,
}

/// Counters the driver exports; all only increase.
#[derive(Debug, Default, Clone)]
pub struct SfuStats {
    pub joins: u64,
    pub leaves: u64,
    pub disconnects: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// RTP forwarded to subscribers.
    pub forwarded: u64,
    /// PLI/FIR received from subscribers.
    pub keyframe_requests_in: u64,
    /// PLI sent to publishers (after aggregation, plus those for joins and layer switches).
    pub keyframe_requests_out: u64,
    pub layer_switches: u64,
    pub room_messages: u64,
    pub input_messages: u64,
    pub message_errors: u64,
    /// Datagrams a session's WebRTC stack rejected.
    pub rtc_input_errors: u64,
    /// Media a session sent without being allowed to publish.
    pub forbidden_media: u64,
    /// Packets a subscriber could not take (no common codec).
    pub codec_mismatch: u64,
    pub stalls: u64,
    /// RTP forwarded on the SFU's own send path (part of `forwarded`).
    pub forwarded_direct: u64,
    /// Lost packets subscribers reported in NACKs (own send path).
    pub nacked: u64,
    /// Packets resent from a track's packet cache for NACKs.
    pub retransmitted: u64,
    /// NACKed packets no longer (or never) in the cache.
    pub nack_misses: u64,
    /// SRTCP from subscribers that failed authentication, and SRTP set-up or sealing failures.
    pub srtp_errors: u64,
    /// Sessions woken by their own timers.
    pub session_wakes: u64,
    /// Sessions ended by a WebRTC error (DTLS, a certificate not matching the SDP, …) and DTLS
    /// errors on input; their reasons through [`Sfu::poll_failure`].
    pub webrtc_failures: u64,
    /// Media packets of remote tracks taken from the trunk.
    pub trunk_packets_in: u64,
    /// Trunk packets that were not RTP of the track's payload type.
    pub trunk_bad_packets: u64,
    /// Room messages sent to other nodes (to a room's home, from an edge).
    pub trunk_messages_out: u64,
    /// Room messages from other nodes that were malformed or for an unknown room.
    pub trunk_bad_messages: u64,
    /// Packets resent to the trunk for its NACKs, and those no longer cached.
    pub trunk_resent: u64,
    pub trunk_resend_misses: u64,
}

struct Outputs {
    transmits: VecDeque<Transmit>,
    events: VecDeque<(ParticipantId, Event)>,
    timers: BinaryHeap<Reverse<(Instant, ParticipantId)>>,
    notices: VecDeque<(ParticipantId, Notice)>,
    /// WebRTC failures for the driver's log (bounded; all are counted).
    failures: VecDeque<(ParticipantId, String)>,
    /// For the trunk driver ([`Sfu::poll_trunk`]).
    trunk: VecDeque<TrunkOutput>,
}

/// Failures waiting for the driver's log; more are counted, not kept.
const MAX_PENDING_FAILURES: usize = 64;

impl Outputs {
    /// Keeps a failure's reason for the log: every error that ends a session (`fatal`), and
    /// DTLS errors on input that str0m survives. True if it was kept or counted.
    fn note_failure(&mut self, id: ParticipantId, e: &RtcError, fatal: bool) -> bool {
        if !fatal && !matches!(e, RtcError::Dtls(_)) {
            return false;
        }
        if self.failures.len() < MAX_PENDING_FAILURES {
            self.failures.push_back((id, e.to_string()));
        }
        true
    }
}

pub struct JoinRequest<'a> {
    pub room: &'a str,
    pub identity: &'a str,
    pub role: Role,
    /// The last room message sequence the client saw, to resume from.
    pub resume_from: Option<u64>,
}

struct Room {
    members: Vec<ParticipantId>,
    log: MessageLog,
    /// For a room homed on another node and served here over the trunk: that node. Its
    /// messages are sequenced there; `log` mirrors the home's.
    home: Option<Arc<str>>,
    /// When the last member left. The room (and its message log, for clients resuming after
    /// a reconnect) is kept for [`ROOM_LINGER`].
    empty_since: Option<Instant>,
}

/// How long an empty room keeps its message log.
const ROOM_LINGER: Duration = Duration::from_secs(300);

const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// Bound on event processing per input, so no loop runs unbounded.
const MAX_EVENTS_PER_INPUT: usize = 100_000;
/// Source addresses remembered per session.
const MAX_ADDRS: usize = 8;
/// Datagram buffers kept for reuse (a fan-out's worth, about 1.5 KiB each).
const MAX_SPARE_BUFFERS: usize = 512;
/// str0m's default sender/receiver report interval, for sessions str0m reports for.
const STR0M_REPORTS: Duration = Duration::from_secs(1);
/// "Never", for sessions whose reports the SFU sends itself. str0m's first report is due this
/// long after its clock's origin (an hour before the process started): a bogus report (RTP
/// time 0, nothing sent) would then go out for every session of a node up for ten years.
const NO_STR0M_REPORTS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub struct Sfu {
    cfg: SfuConfig,
    next_id: u64,
    dtls_cert: DtlsCert,
    participants: HashMap<ParticipantId, Participant>,
    tracks: HashMap<Arc<str>, Track>,
    rooms: HashMap<Arc<str>, Room>,
    by_addr: HashMap<SocketAddr, ParticipantId>,
    by_ufrag: HashMap<String, ParticipantId>,
    out: Outputs,
    stats: SfuStats,
    next_housekeeping: Instant,
    next_window: Instant,
    /// Join-to-first-media-sent times, drained by the driver into a histogram.
    first_media: Vec<Duration>,
    /// Source addresses of sessions that left, drained by the driver (its routing table).
    departed_addrs: Vec<SocketAddr>,
    /// NTP time for sender reports.
    clock: WallClock,
    /// Scratch for the NACKs of one RTCP packet.
    lost: Vec<(u32, u16)>,
    /// Datagram buffers the driver handed back ([`Sfu::recycle`]), for the own send path.
    spare: Vec<Vec<u8>>,
    /// Subscriptions to remote tracks changed: their demand is recomputed on the next
    /// [`Sfu::poll_trunk`].
    demand_dirty: bool,
    /// Rooms other nodes watch (they serve members of them): changes to their devices and
    /// tracks go out as [`TrunkOutput::RoomChanged`].
    watched: std::collections::HashSet<Arc<str>>,
}

impl Sfu {
    /// An SFU shard whose session ids start at `id_base`.
    ///
    /// One DTLS certificate serves every session of the shard, so a join costs no key
    /// generation. Fails only when the crypto provider cannot make a certificate.
    pub fn new(cfg: SfuConfig, id_base: u64, now: Instant) -> Result<Self, SfuError> {
        let provider = dtls::crypto_provider();
        let dtls_cert: DtlsCert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| SfuError::Negotiation("cannot generate a DTLS certificate".into()))?;
        Ok(Self {
            cfg,
            next_id: id_base,
            dtls_cert,
            participants: HashMap::new(),
            tracks: HashMap::new(),
            rooms: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            out: Outputs {
                transmits: VecDeque::new(),
                events: VecDeque::new(),
                timers: BinaryHeap::new(),
                notices: VecDeque::new(),
                failures: VecDeque::new(),
                trunk: VecDeque::new(),
            },
            stats: SfuStats::default(),
            next_housekeeping: now + HOUSEKEEPING,
            next_window: now + RATE_WINDOW,
            first_media: Vec::new(),
            departed_addrs: Vec::new(),
            clock: WallClock::new(now),
            lost: Vec::new(),
            spare: Vec::new(),
            demand_dirty: false,
            watched: Default::default(),
        })
    }

    pub fn stats(&self) -> &SfuStats {
        &self.stats
    }

    /// Sessions on this node (stand-ins of remote publishers are not sessions).
    pub fn session_count(&self) -> usize {
        self.participants
            .values()
            .filter(|p| p.remote.is_none())
            .count()
    }

    pub fn track_count(&self) -> usize {
        self.tracks.len()
    }

    /// (publishers, subscriptions) right now.
    pub fn publisher_subscriber_counts(&self) -> (usize, usize) {
        let publishers = self
            .participants
            .values()
            .filter(|p| !p.published.is_empty() && p.remote.is_none())
            .count();
        let subs = self.participants.values().map(|p| p.subs.len()).sum();
        (publishers, subs)
    }

    pub fn take_departed_addrs(&mut self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.departed_addrs)
    }

    pub fn take_first_media_latencies(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.first_media)
    }

    /// The local ICE username fragment of a session.
    pub fn local_ufrag(&self, id: ParticipantId) -> Option<&str> {
        self.participants.get(&id).map(|p| p.ufrag.as_str())
    }

    /// Which session owns a local ICE username fragment.
    pub fn owner_of_ufrag(&self, ufrag: &str) -> Option<ParticipantId> {
        self.by_ufrag.get(ufrag).copied()
    }

    /// Adds a session to `room`. Its WebRTC connection starts with its first offer.
    pub fn join(&mut self, req: JoinRequest<'_>, now: Instant) -> ParticipantId {
        self.next_id += 1;
        let id = ParticipantId(self.next_id);
        let creds = IceCreds::new();
        // Subscribe-only sessions take the SFU's own send path, which also sends their
        // sender reports: str0m's would say nothing was sent.
        let direct_mode = req.role != Role::Device;
        let report_interval = if direct_mode {
            NO_STR0M_REPORTS
        } else {
            STR0M_REPORTS
        };
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_local_ice_credentials(creds.clone())
            .set_crypto_provider(dtls::crypto_provider())
            .set_dtls_cert(self.dtls_cert.clone())
            .enable_bwe(Some(Bitrate::bps(self.cfg.initial_estimate_bps)))
            .set_send_buffer_video(self.cfg.rtx_cache_packets)
            .set_stats_interval(None)
            .set_rtcp_report_interval_audio(report_interval)
            .set_rtcp_report_interval_video(report_interval)
            .build(now);
        for addr in &self.cfg.udp_candidates {
            if let Ok(c) = Candidate::host(*addr, "udp") {
                rtc.add_local_candidate(c);
            }
        }
        for addr in &self.cfg.tcp_candidates {
            if let Ok(c) = Candidate::builder()
                .tcp()
                .host(*addr)
                .tcptype(str0m::net::TcpType::Passive)
                .build()
            {
                rtc.add_local_candidate(c);
            }
        }
        let room: Arc<str> = Arc::from(req.room);
        let identity: Arc<str> = Arc::from(req.identity);
        let p = Participant {
            id,
            room: room.clone(),
            identity: identity.clone(),
            role: req.role,
            rtc,
            ufrag: creds.ufrag.clone(),
            timeout: now,
            scheduled: None,
            joined_at: now,
            connected: false,
            addrs: Vec::new(),
            published: HashMap::new(),
            publish_meta: HashMap::new(),
            subs: HashMap::new(),
            wanted: HashMap::new(),
            channels: HashMap::new(),
            resume_from: req.resume_from,
            estimate_bps: None,
            first_media_sent: false,
            direct_mode,
            direct: None,
            path: None,
            retired: HashMap::new(),
            remote: None,
        };
        self.by_ufrag.insert(creds.ufrag, id);
        let info = ParticipantInfo {
            id: id.to_string(),
            identity: identity.to_string(),
            role: req.role,
        };
        self.add_member(room, p, info);
        self.stats.joins += 1;
        self.drive(id, now);
        id
    }

    /// Puts `p` in `room` (made if needed), telling the room's other members.
    fn add_member(&mut self, room: Arc<str>, p: Participant, info: ParticipantInfo) {
        let log = self.cfg.message_log;
        let r = self.rooms.entry(room).or_insert_with(|| Room {
            members: Vec::new(),
            log: MessageLog::new(log),
            home: None,
            empty_since: None,
        });
        r.empty_since = None;
        for other in &r.members {
            self.out
                .notices
                .push_back((*other, Notice::ParticipantJoined(info.clone())));
        }
        r.members.push(p.id);
        self.participants.insert(p.id, p);
    }

    /// The room's other sessions and its published tracks, as a joining client first sees them.
    pub fn snapshot(&self, id: ParticipantId) -> (Vec<ParticipantInfo>, Vec<TrackInfo>) {
        let Some(p) = self.participants.get(&id) else {
            return (Vec::new(), Vec::new());
        };
        let Some(room) = self.rooms.get(&p.room) else {
            return (Vec::new(), Vec::new());
        };
        let people = room
            .members
            .iter()
            .filter(|m| **m != id)
            .filter_map(|m| self.participants.get(m))
            .map(|o| ParticipantInfo {
                id: o.id.to_string(),
                identity: o.identity.to_string(),
                role: o.role,
            })
            .collect();
        let tracks = room
            .members
            .iter()
            .filter(|m| **m != id)
            .filter_map(|m| self.participants.get(m))
            .flat_map(|o| o.published.values())
            .filter_map(|t| self.tracks.get(t))
            .map(|t| self.track_info(t))
            .collect();
        (people, tracks)
    }

    /// The last message sequence number of the session's room (0 before any message).
    pub fn room_last_seq(&self, id: ParticipantId) -> u64 {
        self.participants
            .get(&id)
            .and_then(|p| self.rooms.get(&p.room))
            .map_or(0, |r| r.log.last_seq())
    }

    /// Applies the client's SDP offer and returns our answer.
    pub fn offer(
        &mut self,
        id: ParticipantId,
        sdp: &str,
        now: Instant,
    ) -> Result<String, SfuError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant)?;
        let answer = p
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SfuError::Negotiation(e.to_string()))?;
        self.drive(id, now);
        Ok(answer.to_sdp_string())
    }

    /// A trickled remote candidate (`candidate:…`, with or without the `a=` prefix).
    pub fn remote_candidate(
        &mut self,
        id: ParticipantId,
        cand: &str,
        now: Instant,
    ) -> Result<(), SfuError> {
        let text = cand.trim().trim_start_matches("a=");
        let c =
            Candidate::from_sdp_string(text).map_err(|e| SfuError::BadCandidate(e.to_string()))?;
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant)?;
        p.rtc.add_remote_candidate(c);
        self.drive(id, now);
        Ok(())
    }

    /// Names a mid the client publishes (before or after the offer that carries it) and, for
    /// simulcast, the size of each layer.
    pub fn publish(
        &mut self,
        id: ParticipantId,
        mid: &str,
        name: Option<String>,
        layers: Vec<(String, Option<u32>, Option<u32>)>,
    ) -> Result<(), SfuError> {
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant)?;
        if !p.role.can_publish() {
            return Err(SfuError::Forbidden(p.role.as_str(), "publish"));
        }
        let mid = Mid::from(mid);
        if let Some(track_id) = p.published.get(&mid).cloned() {
            let room = p.room.clone();
            let identity = p.identity.clone();
            if let Some(t) = self.tracks.get_mut(&track_id) {
                apply_meta(t, name, &layers);
                let info = track_info(t, &identity);
                self.notify_room(&room, Some(id), Notice::TrackPublished(Box::new(info)));
            }
        } else {
            p.publish_meta.insert(mid, PublishMeta { name, layers });
        }
        Ok(())
    }

    /// Stops publishing one of this session's tracks.
    pub fn unpublish(&mut self, id: ParticipantId, track: &str) -> Result<(), SfuError> {
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant)?;
        let Some(mid) = p
            .published
            .iter()
            .find(|(_, t)| &***t == track)
            .map(|(m, _)| *m)
        else {
            return Err(SfuError::UnknownTrack(track.to_string()));
        };
        p.published.remove(&mid);
        self.remove_track(track);
        Ok(())
    }

    /// Receives `track` on the client's recvonly `mid` (which may be negotiated before or
    /// after this call). Calling again for the same track changes only the preferences.
    /// The id of the first track (the oldest) of `kind` ("video" or "audio") that the
    /// participant `identity` publishes in `id`'s room.
    pub fn track_of(
        &self,
        id: ParticipantId,
        identity: &str,
        kind: &str,
    ) -> Result<String, SfuError> {
        let p = self
            .participants
            .get(&id)
            .ok_or(SfuError::UnknownParticipant)?;
        let want = match kind {
            "audio" => MediaKind::Audio,
            _ => MediaKind::Video,
        };
        self.tracks
            .values()
            .filter(|t| t.kind == want && t.owner != id)
            .filter(|t| {
                self.participants
                    .get(&t.owner)
                    .is_some_and(|o| o.room == p.room && &*o.identity == identity)
            })
            .min_by_key(|t| (t.created, t.id.clone()))
            .map(|t| t.id.to_string())
            .ok_or_else(|| SfuError::UnknownTrack(format!("{kind} of {identity}")))
    }

    pub fn subscribe(
        &mut self,
        id: ParticipantId,
        track: &str,
        mid: &str,
        prefs: LayerPrefs,
        now: Instant,
    ) -> Result<(), SfuError> {
        let p = self
            .participants
            .get(&id)
            .ok_or(SfuError::UnknownParticipant)?;
        if p.role == Role::Device {
            return Err(SfuError::Forbidden("device", "subscribe"));
        }
        let Some(t) = self.tracks.get(track) else {
            return Err(SfuError::UnknownTrack(track.to_string()));
        };
        let same_room = self
            .participants
            .get(&t.owner)
            .is_some_and(|o| o.room == p.room);
        if !same_room || t.owner == id {
            return Err(SfuError::UnknownTrack(track.to_string()));
        }
        let track_id = t.id.clone();
        if let Some((mid, _)) = p.subs.iter().find(|(_, s)| s.track == track_id) {
            let mid = *mid;
            let p = self.participants.get_mut(&id).expect("checked above");
            if let Some(s) = p.subs.get_mut(&mid) {
                s.prefs = prefs;
            }
            self.select_layer(id, mid, now);
            return Ok(());
        }
        let mid = Mid::from(mid);
        let negotiated = match p.rtc.media(mid) {
            None => false,
            Some(m) if m.kind() != t.kind => {
                return Err(SfuError::BadRequest(format!(
                    "mid {mid} is {}, track {track} is {}",
                    m.kind(),
                    t.kind
                )))
            }
            Some(m) if !m.direction().is_sending() => {
                return Err(SfuError::BadRequest(format!(
                    "mid {mid} does not receive media (direction {}); offer it recvonly",
                    m.direction()
                )))
            }
            Some(_) => true,
        };
        let p = self.participants.get_mut(&id).expect("checked above");
        let taken =
            p.subs.contains_key(&mid) || p.wanted.get(&mid).is_some_and(|(t, _)| *t != track_id);
        if taken {
            return Err(SfuError::BadRequest(format!(
                "mid {mid} already carries another track; unsubscribe it first"
            )));
        }
        if negotiated {
            self.activate_subscription(id, mid, track_id, prefs, now);
        } else {
            p.wanted.insert(mid, (track_id, prefs));
        }
        Ok(())
    }

    pub fn unsubscribe(&mut self, id: ParticipantId, track: &str) -> Result<(), SfuError> {
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant)?;
        let pending = p.wanted.len();
        p.wanted.retain(|_, (t, _)| &**t != track);
        let was_pending = p.wanted.len() != pending;
        let Some(mid) = p
            .subs
            .iter()
            .find(|(_, s)| &*s.track == track)
            .map(|(m, _)| *m)
        else {
            if was_pending {
                self.out.notices.push_back((
                    id,
                    Notice::Unsubscribed {
                        track: track.to_string(),
                    },
                ));
                return Ok(());
            }
            return Err(SfuError::UnknownTrack(track.to_string()));
        };
        p.retire_sub(mid);
        if let Some(t) = self.tracks.get_mut(track) {
            t.subscribers.retain(|(s, m)| !(*s == id && *m == mid));
        }
        self.demand_dirty = true;
        self.out.notices.push_back((
            id,
            Notice::Unsubscribed {
                track: track.to_string(),
            },
        ));
        Ok(())
    }

    /// Mutes (stops forwarding) or unmutes one of this session's published tracks.
    pub fn mute(
        &mut self,
        id: ParticipantId,
        track: &str,
        muted: bool,
        now: Instant,
    ) -> Result<(), SfuError> {
        let p = self
            .participants
            .get(&id)
            .ok_or(SfuError::UnknownParticipant)?;
        let room = p.room.clone();
        let t = self
            .tracks
            .get_mut(track)
            .filter(|t| t.owner == id)
            .ok_or_else(|| SfuError::UnknownTrack(track.to_string()))?;
        if t.muted == muted {
            return Ok(());
        }
        t.muted = muted;
        let subscribers = t.subscribers.clone();
        if !muted {
            // Subscribers resume at a keyframe.
            for (s, m) in &subscribers {
                if let Some(sub) = self.participants.get_mut(s).and_then(|p| p.subs.get_mut(m)) {
                    sub.current = None;
                }
            }
            let layer = self
                .tracks
                .get(track)
                .and_then(|t| t.layers.first())
                .and_then(|l| l.rid);
            self.request_keyframe(track, layer, now);
        }
        self.notify_room(
            &room,
            None,
            Notice::TrackMuted {
                track: track.to_string(),
                muted,
            },
        );
        Ok(())
    }

    /// Ends a session: its tracks are unpublished, its subscriptions dropped.
    pub fn leave(&mut self, id: ParticipantId) {
        let Some(mut p) = self.participants.remove(&id) else {
            return;
        };
        p.rtc.disconnect();
        if p.remote.is_none() {
            self.stats.leaves += 1;
        }
        self.demand_dirty = true;
        self.by_ufrag.remove(&p.ufrag);
        self.departed_addrs.extend(p.addrs.iter().copied());
        for a in &p.addrs {
            if self.by_addr.get(a) == Some(&id) {
                self.by_addr.remove(a);
            }
        }
        for (mid, s) in &p.subs {
            if let Some(t) = self.tracks.get_mut(&s.track) {
                t.subscribers.retain(|(sp, m)| !(*sp == id && m == mid));
            }
        }
        for track in p.published.values() {
            self.remove_track(track);
        }
        if let Some(r) = self.rooms.get_mut(&p.room) {
            r.members.retain(|m| *m != id);
            if !r.members.is_empty() {
                self.notify_room(
                    &p.room,
                    None,
                    Notice::ParticipantLeft {
                        id: id.to_string(),
                        identity: p.identity.to_string(),
                    },
                );
            }
        }
    }

    /// Feeds one datagram (or one framed TCP packet). Returns false when no session claims the
    /// source: the caller may try another shard.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) -> bool {
        let id = match self.by_addr.get(&source) {
            Some(id) => *id,
            None => match stun_local_ufrag(contents).and_then(|u| self.by_ufrag.get(u)) {
                Some(id) => {
                    let id = *id;
                    if let Some(p) = self.participants.get_mut(&id) {
                        if p.addrs.len() < MAX_ADDRS {
                            p.addrs.push(source);
                            self.by_addr.insert(source, id);
                        }
                    }
                    id
                }
                None => return false,
            },
        };
        let Some(p) = self.participants.get_mut(&id) else {
            return false;
        };
        self.stats.packets_in += 1;
        self.stats.bytes_in += contents.len() as u64;
        let Ok(datagram) = contents.try_into() else {
            self.stats.rtc_input_errors += 1;
            return true;
        };
        let input = Input::Receive(
            now,
            str0m::net::Receive {
                proto,
                source,
                destination,
                contents: datagram,
            },
        );
        dtls::clear_exported();
        if let Err(e) = p.rtc.handle_input(input) {
            // A bad datagram is dropped; it never ends the session (it could be spoofed).
            self.stats.rtc_input_errors += 1;
            self.stats.webrtc_failures += u64::from(self.out.note_failure(id, &e, false));
        }
        self.install_keys(id, now);
        if direct::is_rtcp(contents) {
            self.serve_nacks(id, (proto, destination, source), contents);
        }
        self.drive(id, now);
        true
    }

    /// Advances time: session timers, keyframe aggregation, bitrates, stall detection.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Collect first: a session's new deadline may again be `now`, and it is served on the
        // next call rather than in an unbounded loop here.
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = self.out.timers.peek().copied() {
            if at > now {
                break;
            }
            self.out.timers.pop();
            due.push((at, id));
        }
        for (at, id) in due {
            let Some(p) = self.participants.get_mut(&id) else {
                continue;
            };
            if p.scheduled != Some(at) {
                continue;
            }
            p.scheduled = None;
            if p.timeout <= now {
                self.stats.session_wakes += 1;
                dtls::clear_exported();
                if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                    self.stats.rtc_input_errors += 1;
                    self.stats.webrtc_failures += u64::from(self.out.note_failure(id, &e, false));
                }
                self.install_keys(id, now);
                self.drive(id, now);
            } else {
                let t = p.timeout;
                p.scheduled = Some(t);
                self.out.timers.push(Reverse((t, id)));
            }
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING;
            self.housekeeping(now);
        }
        self.process_events(now);
    }

    /// When [`Sfu::handle_timeout`] should next be called.
    pub fn poll_timeout(&mut self) -> Instant {
        while let Some(Reverse((at, id))) = self.out.timers.peek().copied() {
            let live = self
                .participants
                .get(&id)
                .is_some_and(|p| p.scheduled == Some(at));
            if live {
                return at.min(self.next_housekeeping);
            }
            self.out.timers.pop();
        }
        self.next_housekeeping
    }

    /// Takes back a sent datagram's buffer: the own send path reuses it rather than
    /// allocating one per forwarded packet.
    pub fn recycle(&mut self, t: Transmit) {
        let mut buf: Vec<u8> = t.contents.into();
        if self.spare.len() < MAX_SPARE_BUFFERS && (1024..=8192).contains(&buf.capacity()) {
            buf.clear();
            self.spare.push(buf);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.out.transmits.pop_front()?;
        self.stats.packets_out += 1;
        self.stats.bytes_out += t.contents.len() as u64;
        Some(t)
    }

    /// A session's WebRTC failure with its reason (DTLS handshake alerts, a certificate that
    /// does not match the SDP fingerprint, …), for the driver to log.
    pub fn poll_failure(&mut self) -> Option<(ParticipantId, String)> {
        self.out.failures.pop_front()
    }

    pub fn poll_notice(&mut self) -> Option<(ParticipantId, Notice)> {
        self.out.notices.pop_front()
    }

    /// Devices in every room of this shard.
    pub fn devices(&self, now: Instant) -> Vec<DeviceSummary> {
        let mut out = Vec::new();
        for (name, room) in &self.rooms {
            for m in &room.members {
                let Some(p) = self.participants.get(m) else {
                    continue;
                };
                // Remote devices are listed by their home node.
                if p.role != Role::Device || p.remote.is_some() {
                    continue;
                }
                let tracks: Vec<&Track> = p
                    .published
                    .values()
                    .filter_map(|t| self.tracks.get(t))
                    .collect();
                let live = tracks.iter().any(|t| {
                    t.kind == MediaKind::Video
                        && !t.muted
                        && t.last_media.is_some_and(|at| {
                            now.saturating_duration_since(at) < self.cfg.stall_after
                        })
                });
                let mut viewers: Vec<ParticipantId> = tracks
                    .iter()
                    .flat_map(|t| t.subscribers.iter().map(|(s, _)| *s))
                    .collect();
                viewers.sort();
                viewers.dedup();
                out.push(DeviceSummary {
                    room: name.to_string(),
                    identity: p.identity.to_string(),
                    live,
                    viewers: viewers.len(),
                    bitrate_bps: tracks.iter().map(|t| t.bitrate_bps()).sum(),
                    tracks: tracks.iter().map(|t| t.id.to_string()).collect(),
                    remote_nodes: {
                        let mut n: Vec<String> = tracks
                            .iter()
                            .flat_map(|t| t.exported_to.iter().cloned())
                            .collect();
                        n.sort();
                        n.dedup();
                        n
                    },
                });
            }
        }
        out
    }

    /// Per published track: (room, track id, kind, bitrate, stalled), for metrics.
    pub fn track_rates(&self) -> Vec<(String, String, &'static str, u64, bool)> {
        self.tracks
            .values()
            .filter_map(|t| {
                let p = self.participants.get(&t.owner)?;
                Some((
                    p.room.to_string(),
                    t.id.to_string(),
                    kind_str(t.kind),
                    t.bitrate_bps(),
                    t.stalled,
                ))
            })
            .collect()
    }

    // ---- internals ----

    /// Drains one session's output (the single-mutation rule: after every mutation).
    fn drive(&mut self, id: ParticipantId, now: Instant) {
        let failed = match self.participants.get_mut(&id) {
            // A remote publisher's stand-in has no WebRTC connection to drive.
            Some(p) if p.remote.is_some() => return,
            Some(p) => match drain(p, &mut self.out, now) {
                Ok(()) => !p.rtc.is_alive(),
                Err(e) => {
                    self.stats.webrtc_failures += u64::from(self.out.note_failure(id, &e, true));
                    true
                }
            },
            None => return,
        };
        if failed {
            self.disconnect(id, "webrtc_failed");
        }
        self.process_events(now);
    }

    /// Takes the SRTP keys of a DTLS handshake that just completed in session `id` (see
    /// [`dtls::take_exported`]) and sets up its own send path, if it is a direct-mode session.
    fn install_keys(&mut self, id: ParticipantId, now: Instant) {
        let Some(x) = dtls::take_exported() else {
            return;
        };
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        if !p.direct_mode {
            return;
        }
        let session = srtp::Profile::from_str0m(x.profile)
            .ok_or(srtp::SrtpError::Key)
            .and_then(|profile| srtp::split_material(&x.material, profile, x.we_are_client))
            .and_then(|(ours, theirs)| {
                Ok(DirectSession {
                    tx: srtp::SrtpTx::new(&ours, direct::FIRST_SRTCP_INDEX)?,
                    rx: srtp::SrtcpRx::new(&theirs)?,
                    next_sr: now + direct::SR_INTERVAL,
                })
            });
        match session {
            Ok(d) => p.direct = Some(d),
            Err(_) => self.stats.srtp_errors += 1,
        }
    }

    /// Answers a direct-mode subscriber's NACKs from the tracks' packet caches (as RTX when
    /// negotiated). `path` is where the datagram came from, as (protocol, our address, peer).
    fn serve_nacks(
        &mut self,
        id: ParticipantId,
        path: (Protocol, SocketAddr, SocketAddr),
        srtcp: &[u8],
    ) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let Some(d) = p.direct.as_ref() else {
            return;
        };
        let Ok(rtcp) = d.rx.unprotect_rtcp(srtcp) else {
            self.stats.srtp_errors += 1;
            return;
        };
        // Authentic: the peer sends from the selected pair.
        p.path = Some(path);
        let (proto, source, destination) = path;
        self.lost.clear();
        direct::nacks(&rtcp, &mut self.lost);
        for &(ssrc, seq) in &self.lost {
            self.stats.nacked += 1;
            let Some(sub) = p
                .subs
                .values_mut()
                .find(|s| !s.via_str0m && s.out.as_ref().is_some_and(|o| o.ssrc == ssrc))
            else {
                continue;
            };
            let Some(out_seq) = sub.rewrite.last_out_seq() else {
                continue;
            };
            let out_seq = direct::extend_seq(seq, out_seq);
            let cached = sub.rewrite.unmap(out_seq).and_then(|(src, ts_offset)| {
                let c = self.tracks.get(&sub.track)?.cache.as_ref()?.get(src)?;
                Some((c, ts_offset))
            });
            let (Some((c, ts_offset)), Some(o)) = (cached, sub.out.as_mut()) else {
                self.stats.nack_misses += 1;
                continue;
            };
            let pt = sub
                .pt_map
                .iter()
                .find(|(from, _)| **from == c.pt)
                .and_then(|(_, to)| *to);
            let Some(pt) = pt else {
                self.stats.nack_misses += 1;
                continue;
            };
            let rtx_pt = p
                .rtc
                .codec_config()
                .params()
                .iter()
                .find(|c| c.pt() == pt)
                .and_then(|c| c.resend());
            let ts = c.timestamp.wrapping_add(ts_offset);
            let mut buf = self.spare.pop().unwrap_or_default();
            let sealed = match (o.rtx_ssrc, rtx_pt) {
                (Some(rtx_ssrc), Some(rtx_pt)) => {
                    let index = o.rtx_seq;
                    o.rtx_seq += 1;
                    // RFC 4588: the original sequence number, then the original payload.
                    let osn = (out_seq as u16).to_be_bytes();
                    d.tx.protect_rtp(
                        &mut buf, *rtx_pt, c.marker, index, ts, rtx_ssrc, &osn, &c.payload,
                    )
                }
                _ => d.tx.protect_rtp(
                    &mut buf,
                    *pt,
                    c.marker,
                    out_seq,
                    ts,
                    o.ssrc,
                    &[],
                    &c.payload,
                ),
            };
            if sealed.is_err() {
                self.stats.srtp_errors += 1;
                continue;
            }
            self.stats.retransmitted += 1;
            self.out.transmits.push_back(Transmit {
                proto,
                source,
                destination,
                contents: buf.into(),
            });
        }
    }

    /// Sender reports for direct-mode sessions, every [`direct::SR_INTERVAL`].
    fn send_reports(&mut self, now: Instant) {
        let ntp = self.clock.ntp(now);
        for p in self.participants.values_mut() {
            let (Some(d), Some((proto, source, destination))) = (p.direct.as_mut(), p.path) else {
                continue;
            };
            if now < d.next_sr {
                continue;
            }
            d.next_sr = now + direct::SR_INTERVAL;
            let mut rtcp = Vec::new();
            for sub in p.subs.values() {
                if let Some(o) = sub.out.as_ref().filter(|o| o.sr.last.is_some()) {
                    direct::push_sr(&mut rtcp, o.ssrc, &o.sr, o.clock_rate, ntp, now);
                }
            }
            if rtcp.is_empty() {
                continue;
            }
            match d.tx.protect_rtcp(&rtcp) {
                Ok(b) => self.out.transmits.push_back(Transmit {
                    proto,
                    source,
                    destination,
                    contents: b.into(),
                }),
                Err(_) => self.stats.srtp_errors += 1,
            }
        }
    }

    fn disconnect(&mut self, id: ParticipantId, reason: &str) {
        if !self.participants.contains_key(&id) {
            return;
        }
        self.stats.disconnects += 1;
        self.out.notices.push_back((
            id,
            Notice::Disconnected {
                reason: reason.to_string(),
            },
        ));
        self.leave(id);
    }

    fn process_events(&mut self, now: Instant) {
        let mut budget = MAX_EVENTS_PER_INPUT;
        while let Some((id, ev)) = self.out.events.pop_front() {
            budget -= 1;
            if budget == 0 {
                self.out.events.clear();
                break;
            }
            self.handle_event(id, ev, now);
        }
    }

    fn handle_event(&mut self, id: ParticipantId, ev: Event, now: Instant) {
        match ev {
            Event::Connected => {
                if let Some(p) = self.participants.get_mut(&id) {
                    p.connected = true;
                }
                self.out.notices.push_back((id, Notice::Connected));
                // Subscriptions made before the session could receive: their join keyframe
                // (if one was asked for) went by unseen; ask again now that it can be sent.
                self.request_join_keyframes(id, now);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.disconnect(id, "ice_timeout");
            }
            Event::MediaAdded(m) => {
                let rids: Vec<Rid> = m
                    .simulcast
                    .map(|s| s.recv.iter().map(|l| l.rid).collect())
                    .unwrap_or_default();
                self.media_negotiated(id, m.mid, m.kind, m.direction, &rids, now);
            }
            Event::MediaChanged(c) => {
                let kind = self
                    .participants
                    .get(&id)
                    .and_then(|p| p.rtc.media(c.mid))
                    .map(|m| m.kind());
                if let Some(kind) = kind {
                    self.media_negotiated(id, c.mid, kind, c.direction, &[], now);
                }
            }
            Event::RtpPacket(pkt) => self.forward(id, pkt, now),
            Event::KeyframeRequest(req) => {
                self.stats.keyframe_requests_in += 1;
                let target = self
                    .participants
                    .get(&id)
                    .and_then(|p| p.subs.get(&req.mid))
                    .map(|s| (s.track.clone(), s.current.unwrap_or(s.target)));
                if let Some((track, layer)) = target {
                    self.request_keyframe(&track, layer, now);
                }
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate: b, .. }) => {
                let mids: Vec<Mid> = match self.participants.get_mut(&id) {
                    Some(p) => {
                        p.estimate_bps = Some(b.as_u64());
                        p.subs.keys().copied().collect()
                    }
                    None => return,
                };
                for mid in mids {
                    self.select_layer(id, mid, now);
                }
            }
            Event::ChannelOpen(cid, label) => {
                let replay = match self.participants.get_mut(&id) {
                    Some(p) => {
                        let role = ChannelRole::from_label(&label);
                        p.channels.insert(cid, role);
                        role == ChannelRole::Controls
                    }
                    None => return,
                };
                if replay {
                    self.replay_messages(id, now);
                }
            }
            Event::ChannelData(d) => self.channel_message(id, d.id, &d.data, now),
            Event::ChannelClose(cid) => {
                if let Some(p) = self.participants.get_mut(&id) {
                    p.channels.remove(&cid);
                }
            }
            _ => {}
        }
    }

    /// A mid was negotiated (or renegotiated) with `direction` as seen from the SFU.
    fn media_negotiated(
        &mut self,
        id: ParticipantId,
        mid: Mid,
        kind: MediaKind,
        direction: Direction,
        rids: &[Rid],
        now: Instant,
    ) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        // The client sends on this mid: a published track.
        let published = p.published.get(&mid).cloned();
        if direction.is_receiving() && published.is_none() && (kind.is_audio() || kind.is_video()) {
            if !p.role.can_publish() {
                let role = p.role.as_str();
                self.out.notices.push_back((
                    id,
                    Notice::Error {
                        code: "forbidden",
                        message: format!("a {role} may not publish; media on mid {mid} is ignored"),
                    },
                ));
            } else {
                let track_id: Arc<str> = Arc::from(format!("{id}-{mid}"));
                let mut t = Track::new(track_id.clone(), id, mid, kind, rids, now);
                if let Some(meta) = p.publish_meta.remove(&mid) {
                    apply_meta(&mut t, meta.name, &meta.layers);
                }
                p.published.insert(mid, track_id.clone());
                let info = track_info(&t, &p.identity);
                let room = p.room.clone();
                self.tracks.insert(track_id.clone(), t);
                self.out.notices.push_back((
                    id,
                    Notice::Published {
                        track: track_id.to_string(),
                        mid: mid.to_string(),
                    },
                ));
                self.notify_room(&room, Some(id), Notice::TrackPublished(Box::new(info)));
            }
        } else if !direction.is_receiving() {
            if let Some(track) = published {
                p.published.remove(&mid);
                self.remove_track(&track);
            }
        }
        // The client receives on this mid: a subscription slot.
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        if direction.is_sending() {
            if let Some((track, prefs)) = p.wanted.remove(&mid) {
                let kind_ok = self.tracks.get(&track).is_some_and(|t| t.kind == kind);
                if kind_ok {
                    self.activate_subscription(id, mid, track, prefs, now);
                } else {
                    self.out.notices.push_back((
                        id,
                        Notice::Error {
                            code: "bad_request",
                            message: format!(
                                "mid {mid} is {kind}, which does not match track {track}"
                            ),
                        },
                    ));
                }
            }
        } else if let Some(s) = p.retire_sub(mid) {
            if let Some(t) = self.tracks.get_mut(&s.track) {
                t.subscribers.retain(|(sp, m)| !(*sp == id && *m == mid));
            }
            self.demand_dirty = true;
        }
    }

    fn activate_subscription(
        &mut self,
        id: ParticipantId,
        mid: Mid,
        track: Arc<str>,
        prefs: LayerPrefs,
        now: Instant,
    ) {
        let Some(t) = self.tracks.get_mut(&track) else {
            self.out.notices.push_back((
                id,
                Notice::Error {
                    code: "unknown_track",
                    message: format!("track {track} is gone"),
                },
            ));
            return;
        };
        t.subscribers.push((id, mid));
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let sub = Subscription::new(track.clone(), prefs, p.retired.remove(&mid));
        p.subs.insert(mid, sub);
        self.demand_dirty = true;
        self.out.notices.push_back((
            id,
            Notice::Subscribed {
                track: track.to_string(),
                mid: mid.to_string(),
            },
        ));
        self.select_layer(id, mid, now);
        // A new subscriber needs a keyframe to start decoding; one that cannot receive yet
        // asks when it connects.
        if self.participants.get(&id).is_some_and(|p| p.connected) {
            self.request_join_keyframes(id, now);
        }
    }

    /// A keyframe request (coalesced with other joins) for each of session `id`'s
    /// subscriptions still waiting for its first keyframe.
    fn request_join_keyframes(&mut self, id: ParticipantId, now: Instant) {
        let Some(p) = self.participants.get(&id) else {
            return;
        };
        let waiting: Vec<(Arc<str>, Option<Rid>)> = p
            .subs
            .values()
            .filter(|s| s.current != Some(s.target))
            .map(|s| (s.track.clone(), s.target))
            .collect();
        for (track, layer) in waiting {
            if let Some(t) = self.tracks.get_mut(&track) {
                let due = t.keyframes.request_for_join(layer, now);
                let (owner, tmid) = (t.owner, t.mid);
                self.send_keyframe_requests(owner, tmid, due, now);
            }
        }
    }

    /// Re-evaluates which layer subscription `mid` of `id` should receive.
    fn select_layer(&mut self, id: ParticipantId, mid: Mid, now: Instant) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let estimate = p.estimate_bps;
        let Some(s) = p.subs.get_mut(&mid) else {
            return;
        };
        let Some(t) = self.tracks.get(&s.track) else {
            return;
        };
        let views = t.layer_views(now);
        let chosen = if views.len() <= 1 {
            Some(t.layers.first().and_then(|l| l.rid))
        } else {
            layer::choose(&views, &s.prefs, estimate)
                .and_then(|i| t.rid_named(views[i].rid.as_deref()))
        };
        let Some(target) = chosen else {
            return;
        };
        if s.target != target || s.current.is_none() {
            let changed = s.target != target;
            s.target = target;
            self.demand_dirty |= changed;
            let track = s.track.clone();
            if changed && s.current.is_some() {
                self.request_keyframe(&track, target, now);
            }
        }
    }

    fn request_keyframe(&mut self, track: &str, layer: Option<Rid>, now: Instant) {
        let Some(t) = self.tracks.get_mut(track) else {
            return;
        };
        let due = t.keyframes.request(layer, now, self.cfg.keyframe_interval);
        let (owner, mid) = (t.owner, t.mid);
        self.send_keyframe_requests(owner, mid, due, now);
    }

    fn send_keyframe_requests(
        &mut self,
        owner: ParticipantId,
        mid: Mid,
        layers: Vec<Option<Rid>>,
        now: Instant,
    ) {
        if layers.is_empty() {
            return;
        }
        let Some(p) = self.participants.get_mut(&owner) else {
            return;
        };
        if p.remote.is_some() {
            self.remote_keyframes(owner, mid, &layers);
            return;
        }
        for rid in layers {
            if let Some(rx) = p.rtc.direct_api().stream_rx_by_mid(mid, rid) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                self.stats.keyframe_requests_out += 1;
            }
            if drain(p, &mut self.out, now).is_err() {
                break;
            }
        }
        self.drive(owner, now);
    }

    fn forward(&mut self, from: ParticipantId, pkt: RtpPacket, now: Instant) {
        let Some(p) = self.participants.get_mut(&from) else {
            return;
        };
        let ssrc = pkt.header.ssrc;
        let Some((mid, rid)) = p
            .rtc
            .direct_api()
            .stream_rx(&ssrc)
            .map(|s| (s.mid(), s.rid()))
        else {
            return;
        };
        let Some(track_id) = p.published.get(&mid) else {
            self.stats.forbidden_media += 1;
            return;
        };
        let Some(t) = self.tracks.get_mut(track_id) else {
            return;
        };
        if t.codec.is_none() {
            t.codec = codec_of(p.rtc.codec_config().params(), pkt.header.payload_type)
                .map(|c| c.spec().codec);
        }
        let pub_params = p
            .rtc
            .codec_config()
            .params()
            .iter()
            .find(|c| c.pt() == pkt.header.payload_type)
            .cloned();
        t.on_packet(rid, pkt.payload.len(), now);
        let track_id = track_id.clone();
        if t.stalled {
            t.stalled = false;
            let (room, track) = (p.room.clone(), t.id.to_string());
            self.notify_room(
                &room,
                None,
                Notice::TrackStalled {
                    track,
                    stalled: false,
                },
            );
        }
        let media = Media {
            seq: *pkt.seq_no,
            ts: pkt.header.timestamp,
            marker: pkt.header.marker,
            payload: pkt.payload,
            arrival: pkt.timestamp,
            ext: str0m::rtp::ExtensionValues {
                audio_level: pkt.header.ext_vals.audio_level,
                voice_activity: pkt.header.ext_vals.voice_activity,
                video_orientation: pkt.header.ext_vals.video_orientation,
                ..Default::default()
            },
        };
        self.fan_out(track_id, rid, pub_params, media, now);
    }

    /// Forwards one packet of `track_id` (layer `rid`, encoded as `pub_params`) to every
    /// subscriber of this node, and to the trunk when other nodes subscribed to it.
    fn fan_out(
        &mut self,
        track_id: Arc<str>,
        rid: Option<Rid>,
        pub_params: Option<PayloadParams>,
        pkt: Media,
        now: Instant,
    ) {
        let Some(t) = self.tracks.get_mut(&track_id) else {
            return;
        };
        t.last_seq = t.last_seq.max(pkt.seq);
        if t.exported && !t.muted && t.layers.len() <= 1 {
            if let Some(pp) = &pub_params {
                let pt = *pp.pt();
                self.out.trunk.push_back(TrunkOutput::Packet {
                    track: track_id.clone(),
                    layer: rid.map(|r| r.to_string()),
                    rtp: remote::rtp_packet(pt, pkt.marker, pkt.seq as u16, pkt.ts, &pkt.payload),
                });
                let capacity = self.cfg.rtx_cache_packets;
                t.cache
                    .get_or_insert_with(|| PacketCache::new(capacity))
                    .insert(Cached {
                        seq: pkt.seq,
                        timestamp: pkt.ts,
                        pt,
                        marker: pkt.marker,
                        payload: pkt.payload.clone(),
                    });
            }
        }
        if t.muted || t.subscribers.is_empty() {
            return;
        }
        let (Some(codec), Some(pub_params)) = (t.codec, pub_params) else {
            return;
        };
        let clock_rate = pub_params.spec().clock_rate.get();
        let is_simulcast = t.layers.len() > 1;
        let subscribers = std::mem::take(&mut t.subscribers);
        let track_name = t.id.clone();
        let mut keyframe: Option<bool> = None;
        let mut stale: Vec<(ParticipantId, Mid)> = Vec::new();
        let mut any_direct = false;
        for &(sid, smid) in &subscribers {
            let Some(sp) = self.participants.get_mut(&sid) else {
                stale.push((sid, smid));
                continue;
            };
            let Some(sub) = sp.subs.get_mut(&smid) else {
                stale.push((sid, smid));
                continue;
            };
            let direct = sp.direct_mode && !is_simulcast;
            if direct && (sp.direct.is_none() || sp.path.is_none()) {
                // DTLS not done yet: nothing can be sent, and a keyframe must not be spent.
                continue;
            }
            if sub.current != Some(rid) {
                if sub.target != rid {
                    continue;
                }
                let kf =
                    *keyframe.get_or_insert_with(|| keyframe::starts_keyframe(codec, &pkt.payload));
                if !kf {
                    continue;
                }
                let was = sub.current;
                sub.current = Some(rid);
                sub.rewrite.switch(pkt.seq, pkt.ts, clock_rate, now);
                if was.is_some() {
                    self.stats.layer_switches += 1;
                }
                if is_simulcast {
                    self.out.notices.push_back((
                        sid,
                        Notice::LayerChanged {
                            track: track_name.to_string(),
                            layer: rid.map(|r| r.to_string()),
                        },
                    ));
                }
            }
            let Some((seq, ts)) = sub.rewrite.map(pkt.seq, pkt.ts, now) else {
                continue;
            };
            let pt = match sub.pt_map.iter().find(|(from, _)| *from == pub_params.pt()) {
                Some((_, to)) => *to,
                None => {
                    let to = matching_pt(sp.rtc.codec_config().params(), &pub_params);
                    sub.pt_map.push((pub_params.pt(), to));
                    to
                }
            };
            let Some(pt) = pt else {
                self.stats.codec_mismatch += 1;
                continue;
            };
            if sp.direct_mode && sub.out.is_none() {
                let mut api = sp.rtc.direct_api();
                if let Some(tx) = api.stream_tx_by_mid(smid, None) {
                    sub.out = Some(OutStream {
                        ssrc: *tx.ssrc(),
                        rtx_ssrc: tx.rtx().map(|r| *r),
                        rtx_seq: sub.rtx_start,
                        clock_rate,
                        sr: Default::default(),
                    });
                }
            }
            if let Some(o) = sub.out.as_mut() {
                o.sr.on_sent(ts, pkt.payload.len(), now);
            }
            if direct {
                let (Some(d), Some((proto, source, destination)), Some(o)) =
                    (sp.direct.as_ref(), sp.path, sub.out.as_ref())
                else {
                    continue;
                };
                let mut buf = self.spare.pop().unwrap_or_default();
                let sealed = d.tx.protect_rtp(
                    &mut buf,
                    *pt,
                    pkt.marker,
                    seq,
                    ts,
                    o.ssrc,
                    &[],
                    &pkt.payload,
                );
                if sealed.is_err() {
                    self.stats.srtp_errors += 1;
                    continue;
                }
                any_direct = true;
                self.out.transmits.push_back(Transmit {
                    proto,
                    source,
                    destination,
                    contents: buf.into(),
                });
                self.stats.forwarded += 1;
                self.stats.forwarded_direct += 1;
                if !sp.first_media_sent && codec.is_video() {
                    sp.first_media_sent = true;
                    self.first_media
                        .push(now.saturating_duration_since(sp.joined_at));
                }
                continue;
            }
            sub.via_str0m = true;
            let ext = pkt.ext.clone();
            let mut api = sp.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(smid, None) else {
                continue;
            };
            tx.write_rtp(
                RtpWrite::new(pt, SeqNo::from(seq), ts, pkt.arrival, pkt.payload.clone())
                    .marker(pkt.marker)
                    .ext_vals(ext)
                    .nackable(true),
            );
            self.stats.forwarded += 1;
            if !sp.first_media_sent && codec.is_video() {
                sp.first_media_sent = true;
                self.first_media
                    .push(now.saturating_duration_since(sp.joined_at));
            }
            if drain(sp, &mut self.out, now).is_err() {
                stale.push((sid, smid));
            }
        }
        if let Some(t) = self.tracks.get_mut(&track_name) {
            if any_direct {
                let capacity = self.cfg.rtx_cache_packets;
                t.cache
                    .get_or_insert_with(|| PacketCache::new(capacity))
                    .insert(Cached {
                        seq: pkt.seq,
                        timestamp: pkt.ts,
                        pt: *pub_params.pt(),
                        marker: pkt.marker,
                        payload: pkt.payload,
                    });
            }
            let mut subs = subscribers;
            subs.retain(|s| !stale.contains(s));
            // Subscriptions added while forwarding (none today) are kept.
            subs.append(&mut t.subscribers);
            t.subscribers = subs;
        }
    }

    fn channel_message(
        &mut self,
        id: ParticipantId,
        cid: str0m::channel::ChannelId,
        data: &[u8],
        now: Instant,
    ) {
        let Some(p) = self.participants.get(&id) else {
            return;
        };
        let Some(&role) = p.channels.get(&cid) else {
            return;
        };
        let sender_role = p.role;
        let from = p.identity.clone();
        let room = p.room.clone();
        if role == ChannelRole::Other {
            return;
        }
        if data.len() > self.cfg.max_message_bytes {
            let msg = format!(
                "message of {} bytes is over the {} byte limit",
                data.len(),
                self.cfg.max_message_bytes
            );
            self.reply_error(id, cid, None, "too_large", &msg, now);
            return;
        }
        let env: Envelope = match serde_json::from_slice(data) {
            Ok(e) => e,
            Err(e) => {
                self.reply_error(
                    id,
                    cid,
                    None,
                    "bad_message",
                    &format!("expected {{\"id\":N,\"data\":…}}: {e}"),
                    now,
                );
                return;
            }
        };
        let to = match sender_role {
            Role::Player => Audience::Devices,
            Role::Device => Audience::Players,
            Role::Viewer => {
                self.reply_error(
                    id,
                    cid,
                    env.id,
                    "forbidden",
                    "a viewer may not send messages",
                    now,
                );
                return;
            }
        };
        let data_json: Arc<str> = Arc::from(env.data.get());
        let home = self.rooms.get(&room).and_then(|r| r.home.clone());
        if role == ChannelRole::Input {
            // Unsequenced, unacknowledged: latest-wins input goes straight through.
            self.stats.input_messages += 1;
            let line = format!("{{\"from\":{},\"data\":{}}}", json_string(&from), data_json);
            self.deliver(&room, to, ChannelRole::Input, line.as_bytes(), now);
            self.share_with_nodes(&room, home, None, None, &from, None, to, &data_json);
            return;
        }
        if let Some(home) = home {
            // Sequenced at the room's home; acknowledged when it answers (`trunk_ack`).
            self.stats.trunk_messages_out += 1;
            self.out.trunk.push_back(TrunkOutput::RoomMessage {
                home,
                room: room.clone(),
                from: from.to_string(),
                origin: Some(id.0),
                id: env.id,
                to,
                data: data_json.to_string(),
            });
            return;
        }
        let Some(seq) = self.sequence(&room, &from, env.id, to, &data_json, now) else {
            return;
        };
        let ack = match env.id {
            Some(cid_) => format!("{{\"ack\":{cid_},\"seq\":{seq}}}"),
            None => format!("{{\"ack\":null,\"seq\":{seq}}}"),
        };
        self.write_channel(id, cid, ack.as_bytes(), now);
    }

    /// Appends a controls message to `room`'s log (its home is here) and delivers it to this
    /// node's members and the nodes watching the room. The sequence number, also for a
    /// duplicate (which is not delivered again).
    fn sequence(
        &mut self,
        room: &Arc<str>,
        from: &Arc<str>,
        client_id: Option<u64>,
        to: Audience,
        data: &Arc<str>,
        now: Instant,
    ) -> Option<u64> {
        let r = self.rooms.get_mut(room)?;
        match r.log.append(from, client_id, to, data.clone()) {
            Appended::New(seq) => {
                self.stats.room_messages += 1;
                let line = format!(
                    "{{\"seq\":{seq},\"from\":{},\"data\":{}}}",
                    json_string(from),
                    data
                );
                self.deliver(room, to, ChannelRole::Controls, line.as_bytes(), now);
                self.share_with_nodes(room, None, Some(seq), None, from, client_id, to, data);
                Some(seq)
            }
            Appended::Duplicate(seq) => Some(seq),
        }
    }

    /// A message that other nodes' members of `room` must see: to the home for an edge room
    /// (`home`), else to the nodes watching it.
    #[allow(clippy::too_many_arguments)]
    fn share_with_nodes(
        &mut self,
        room: &Arc<str>,
        home: Option<Arc<str>>,
        seq: Option<u64>,
        origin: Option<u64>,
        from: &Arc<str>,
        id: Option<u64>,
        to: Audience,
        data: &Arc<str>,
    ) {
        if let Some(home) = home {
            self.stats.trunk_messages_out += 1;
            self.out.trunk.push_back(TrunkOutput::RoomMessage {
                home,
                room: room.clone(),
                from: from.to_string(),
                origin,
                id,
                to,
                data: data.to_string(),
            });
        } else if self.watched.contains(room) {
            self.out.trunk.push_back(TrunkOutput::RoomDelivered {
                room: room.clone(),
                seq,
                from: from.to_string(),
                to,
                data: data.to_string(),
            });
        }
    }

    /// Writes `line` to every member of `room` in `audience`, on its channel of `prefer` (falling
    /// back to its controls channel).
    fn deliver(
        &mut self,
        room: &str,
        audience: Audience,
        prefer: ChannelRole,
        line: &[u8],
        now: Instant,
    ) {
        let members = match self.rooms.get(room) {
            Some(r) => r.members.clone(),
            None => return,
        };
        for m in members {
            let Some(p) = self.participants.get(&m) else {
                continue;
            };
            let wanted = match audience {
                Audience::Devices => p.role == Role::Device,
                Audience::Players => p.role == Role::Player,
            };
            if !wanted {
                continue;
            }
            let ch = p
                .channel_for(prefer)
                .or_else(|| p.channel_for(ChannelRole::Controls));
            if let Some(ch) = ch {
                self.write_channel(m, ch, line, now);
            }
        }
    }

    fn write_channel(
        &mut self,
        id: ParticipantId,
        cid: str0m::channel::ChannelId,
        line: &[u8],
        now: Instant,
    ) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        if let Some(mut ch) = p.rtc.channel(cid) {
            let _ = ch.write(false, line);
        }
        self.drive(id, now);
    }

    fn reply_error(
        &mut self,
        id: ParticipantId,
        cid: str0m::channel::ChannelId,
        msg_id: Option<u64>,
        code: &str,
        message: &str,
        now: Instant,
    ) {
        self.stats.message_errors += 1;
        let id_json = msg_id.map_or("null".to_string(), |i| i.to_string());
        let line = format!(
            "{{\"error\":{{\"id\":{id_json},\"code\":{},\"message\":{}}}}}",
            json_string(code),
            json_string(message)
        );
        self.write_channel(id, cid, line.as_bytes(), now);
    }

    /// On a (re)opened controls channel: the room messages the client missed.
    fn replay_messages(&mut self, id: ParticipantId, now: Instant) {
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let Some(after) = p.resume_from.take() else {
            return;
        };
        let audience = match p.role {
            Role::Device => Audience::Devices,
            Role::Player => Audience::Players,
            Role::Viewer => return,
        };
        let Some(cid) = p.channel_for(ChannelRole::Controls) else {
            return;
        };
        let Some(r) = self.rooms.get(&p.room) else {
            return;
        };
        let (entries, gap) = r.log.since(after, audience);
        if let Some((a, b)) = gap {
            let line = format!("{{\"gap\":{{\"from\":{a},\"to\":{b}}}}}");
            self.write_channel(id, cid, line.as_bytes(), now);
        }
        for e in entries {
            let line = format!(
                "{{\"seq\":{},\"from\":{},\"data\":{}}}",
                e.seq,
                json_string(&e.from),
                e.data
            );
            self.write_channel(id, cid, line.as_bytes(), now);
        }
    }

    fn remove_track(&mut self, track: &str) {
        let Some(t) = self.tracks.remove(track) else {
            return;
        };
        for (sid, smid) in &t.subscribers {
            if let Some(sp) = self.participants.get_mut(sid) {
                sp.retire_sub(*smid);
            }
        }
        if let Some(owner) = self.participants.get(&t.owner) {
            let room = owner.room.clone();
            self.notify_room(
                &room,
                Some(t.owner),
                Notice::TrackUnpublished {
                    track: track.to_string(),
                },
            );
        } else {
            for (sid, _) in &t.subscribers {
                self.out.notices.push_back((
                    *sid,
                    Notice::TrackUnpublished {
                        track: track.to_string(),
                    },
                ));
            }
        }
    }

    fn notify_room(&mut self, room: &str, except: Option<ParticipantId>, notice: Notice) {
        if self.watched.contains(room)
            && matches!(
                notice,
                Notice::TrackPublished(_)
                    | Notice::TrackUnpublished { .. }
                    | Notice::ParticipantJoined(_)
                    | Notice::ParticipantLeft { .. }
            )
        {
            self.room_changed(room);
        }
        if let Some(r) = self.rooms.get(room) {
            for m in &r.members {
                if Some(*m) != except {
                    self.out.notices.push_back((*m, notice.clone()));
                }
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        // A subscriber still waiting for a keyframe (joined, unmuted, switching layers) asks
        // again: a lost PLI or keyframe must not leave it black. The gate below keeps this to
        // one request per track per interval.
        let waiting: Vec<(Arc<str>, Option<Rid>)> = self
            .participants
            .values()
            .flat_map(|p| p.subs.values())
            .filter(|s| s.current != Some(s.target))
            .map(|s| (s.track.clone(), s.target))
            .collect();
        for (track, layer) in waiting {
            let muted = self.tracks.get(&track).is_none_or(|t| t.muted);
            if !muted {
                if let Some(t) = self.tracks.get_mut(&track) {
                    t.keyframes.hold(layer);
                }
            }
        }
        // Held-back keyframe requests that are now due.
        let due: Vec<(ParticipantId, Mid, Vec<Option<Rid>>)> = self
            .tracks
            .values_mut()
            .filter_map(|t| {
                let mut layers = t.keyframes.release(now, self.cfg.keyframe_interval);
                for l in t.keyframes.release_joins(now) {
                    if !layers.contains(&l) {
                        layers.push(l);
                    }
                }
                (!layers.is_empty()).then_some((t.owner, t.mid, layers))
            })
            .collect();
        for (owner, mid, layers) in due {
            self.send_keyframe_requests(owner, mid, layers, now);
        }
        self.send_reports(now);
        if now < self.next_window {
            return;
        }
        for r in self.rooms.values_mut() {
            if r.members.is_empty() {
                r.empty_since.get_or_insert(now);
            }
        }
        self.rooms.retain(|_, r| {
            r.empty_since
                .is_none_or(|t| now.saturating_duration_since(t) < ROOM_LINGER)
        });
        let elapsed = RATE_WINDOW + now.saturating_duration_since(self.next_window);
        self.next_window = now + RATE_WINDOW;
        let mut stalled = Vec::new();
        for t in self.tracks.values_mut() {
            t.roll_window(elapsed);
            let since = now.saturating_duration_since(t.last_media.unwrap_or(t.created));
            if !t.stalled && !t.muted && since >= self.cfg.stall_after {
                t.stalled = true;
                self.stats.stalls += 1;
                stalled.push((t.owner, t.id.to_string()));
            }
        }
        for (owner, track) in stalled {
            if let Some(room) = self.participants.get(&owner).map(|p| p.room.clone()) {
                self.notify_room(
                    &room,
                    None,
                    Notice::TrackStalled {
                        track,
                        stalled: true,
                    },
                );
            }
        }
        let subs: Vec<(ParticipantId, Mid)> = self
            .participants
            .values()
            .flat_map(|p| p.subs.keys().map(move |m| (p.id, *m)))
            .collect();
        for (id, mid) in subs {
            self.select_layer(id, mid, now);
        }
    }

    fn track_info(&self, t: &Track) -> TrackInfo {
        let publisher = self
            .participants
            .get(&t.owner)
            .map(|p| p.identity.clone())
            .unwrap_or_else(|| Arc::from(""));
        track_info(t, &publisher)
    }
}

/// Polls one session until it has nothing more to say. A session asking to be woken at once
/// (str0m's pacer does after every packet it releases) is served here, once, rather than
/// through the timer heap and another pass of the shard loop.
fn drain(p: &mut Participant, out: &mut Outputs, now: Instant) -> Result<(), RtcError> {
    let mut inline_timeout = true;
    loop {
        match p.rtc.poll_output()? {
            Output::Timeout(t) if t <= now && inline_timeout => {
                inline_timeout = false;
                p.rtc.handle_input(Input::Timeout(now))?;
            }
            Output::Timeout(t) => {
                // Bandwidth estimation and pacing have nothing to do in a session whose media
                // str0m does not send, yet ask to run every few tens of milliseconds: a
                // hundred players would cost thousands of wake-ups a second.
                let t = if is_bwe_or_pacing(p.rtc.last_timeout_reason()) && !p.str0m_sends_media() {
                    t.max(now + QUIET_BWE_TICK)
                } else {
                    t
                };
                p.timeout = t;
                if p.scheduled.is_none_or(|s| t < s) {
                    p.scheduled = Some(t);
                    out.timers.push(Reverse((t, p.id)));
                }
                return Ok(());
            }
            Output::Transmit(t) => {
                // Not STUN (which str0m answers on every candidate pair): the selected pair.
                if t.contents.first().is_some_and(|b| *b > 3) {
                    p.path = Some((t.proto, t.source, t.destination));
                }
                out.transmits.push_back(t)
            }
            Output::Event(e) => out.events.push_back((p.id, e)),
        }
    }
}

/// How often a session whose media str0m does not send runs str0m's bandwidth estimation and
/// pacer timers.
const QUIET_BWE_TICK: Duration = Duration::from_millis(500);

fn is_bwe_or_pacing(r: Reason) -> bool {
    matches!(
        r,
        Reason::BweDelayControl
            | Reason::BweProbeControl
            | Reason::BweProbeEstimator
            | Reason::Pacer(_)
    )
}

/// One media packet on its way to subscribers, from a local publisher or the trunk.
struct Media {
    /// Extended sequence number, as the publisher numbered it.
    seq: u64,
    ts: u32,
    marker: bool,
    payload: Arc<[u8]>,
    arrival: Instant,
    ext: str0m::rtp::ExtensionValues,
}

#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(default)]
    id: Option<u64>,
    data: Box<serde_json::value::RawValue>,
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn kind_str(k: MediaKind) -> &'static str {
    if k.is_audio() {
        "audio"
    } else {
        "video"
    }
}

fn track_info(t: &Track, publisher: &str) -> TrackInfo {
    TrackInfo {
        id: t.id.to_string(),
        publisher: publisher.to_string(),
        kind: kind_str(t.kind),
        name: t.name.clone(),
        layers: t
            .layers
            .iter()
            .filter_map(|l| l.rid.map(|r| r.to_string()))
            .collect(),
        codec: t.codec.map(|c| c.to_string()),
        muted: t.muted,
    }
}

fn apply_meta(t: &mut Track, name: Option<String>, layers: &[(String, Option<u32>, Option<u32>)]) {
    if let Some(n) = name {
        t.name = n;
    }
    for (rid, w, h) in layers {
        if let Some(l) = t
            .layers
            .iter_mut()
            .find(|l| l.rid.map(|r| r.to_string()).as_deref() == Some(rid.as_str()))
        {
            l.width = *w;
            l.height = *h;
        }
    }
}

fn codec_of(params: &[PayloadParams], pt: Pt) -> Option<&PayloadParams> {
    params.iter().find(|c| c.pt() == pt)
}

/// The subscriber's payload type for the publisher's codec: same codec and, for H.264, the
/// same packetization mode and profile.
fn matching_pt(sub: &[PayloadParams], publ: &PayloadParams) -> Option<Pt> {
    let want = publ.spec();
    let same_codec = |p: &&PayloadParams| p.spec().codec == want.codec;
    if want.codec == Codec::H264 {
        let exact = sub.iter().filter(same_codec).find(|p| {
            let f = p.spec().format;
            f.packetization_mode == want.format.packetization_mode
                && f.profile_level_id.map(|x| x >> 8)
                    == want.format.profile_level_id.map(|x| x >> 8)
        });
        if let Some(p) = exact {
            return Some(p.pt());
        }
    }
    sub.iter().find(same_codec).map(|p| p.pt())
}

/// The local ICE ufrag of a STUN binding request (`USERNAME` is `local:remote`).
pub fn stun_local_ufrag(buf: &[u8]) -> Option<&str> {
    // STUN starts with two zero bits and carries the magic cookie.
    if buf.len() < 20 || buf[0] & 0xc0 != 0 {
        return None;
    }
    let msg = stun::Message::parse(buf).ok()?;
    let user = msg.text(stun::attr::USERNAME)?.ok()?;
    user.split(':').next()
}
