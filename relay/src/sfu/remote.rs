//! Tracks across nodes (the SFU's side of the trunk; still sans-IO).
//!
//! **Edge** (a room's players here, its device on another node): the device is a stand-in
//! participant ([`Sfu::remote_publisher`]) without a WebRTC connection of its own, and its
//! tracks ([`Sfu::remote_track`]) are fed by [`Sfu::remote_rtp`]. From there a remote track is
//! forwarded like a local one: this node's SRTP, sequence rewriting, NACKs from this node's
//! cache, keyframe requests aggregated by the track's gate. What this node needs of the home
//! comes out of [`Sfu::poll_trunk`]: how many local subscribers want which layers
//! ([`TrunkOutput::Demand`]) and keyframe requests ([`TrunkOutput::Keyframe`]).
//!
//! **Home** (the publisher here, subscribers elsewhere too): a track [`Sfu::set_export`]ed
//! also yields each packet once as [`TrunkOutput::Packet`], for the driver to send once per
//! subscribed node, and keeps it in the track's cache for the trunk's NACKs
//! ([`Sfu::trunk_resend`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use str0m::format::{Codec, CodecSpec, FormatParams, PayloadParams};
use str0m::media::{Frequency, MediaKind, Mid, Pt, Rid};
use str0m::Rtc;

use super::direct::extend_seq;
use super::messages::Audience;
use super::participant::ChannelRole;
use super::participant::Participant;
use super::track::Track;
use super::{track_info, Media, Notice, ParticipantId, ParticipantInfo, Role, Sfu, SfuError};

/// What the trunk driver must do for this shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrunkOutput {
    /// A packet of an exported track (send once to each node subscribed to the layer).
    Packet {
        track: Arc<str>,
        layer: Option<String>,
        /// A plain RTP packet (12-byte header, the publisher's sequence number and payload
        /// type, SSRC 0).
        rtp: Vec<u8>,
    },
    /// How many local subscriptions want which layers of a remote track now (an empty list:
    /// none; unsubscribe).
    Demand {
        home: Arc<str>,
        room: Arc<str>,
        /// The track's id at its home.
        track: String,
        layers: Vec<(Option<String>, usize)>,
    },
    /// A watched room's devices or tracks changed: send its state to the nodes watching.
    RoomChanged { room: Arc<str> },
    /// Edge: a room message of a local session for the room's home. Sequenced (`origin` set:
    /// the sending session, acknowledged through [`Sfu::trunk_ack`]) or input (`origin` unset).
    RoomMessage {
        home: Arc<str>,
        room: Arc<str>,
        from: String,
        origin: Option<u64>,
        id: Option<u64>,
        to: Audience,
        data: String,
    },
    /// Home: a room message (sequenced as `seq`, or input) for the nodes watching the room.
    RoomDelivered {
        room: Arc<str>,
        seq: Option<u64>,
        from: String,
        to: Audience,
        data: String,
    },
    /// A keyframe of a remote track's layer is needed (aggregated here to the track's
    /// keyframe interval).
    Keyframe {
        home: Arc<str>,
        room: Arc<str>,
        track: String,
        layer: Option<String>,
    },
}

/// The stand-in of a device homed on another node.
#[derive(Debug, Clone)]
pub struct RemoteDevice {
    pub id: ParticipantId,
    pub identity: String,
    /// (the track's id at its home, its id here).
    pub tracks: Vec<(String, String)>,
}

/// A local track as the trunk describes it to other nodes.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    pub room: Arc<str>,
    pub kind: MediaKind,
    pub name: String,
    pub params: PayloadParams,
    /// Layer names (`[None]` without simulcast).
    pub layers: Vec<Option<String>>,
}

/// A track homed elsewhere, as the edge forwards it.
pub struct RemoteTrackSpec {
    /// The track's id at its home.
    pub track: String,
    pub kind: MediaKind,
    pub name: String,
    /// Layer names (`[None]` without simulcast).
    pub layers: Vec<Option<String>>,
    pub codec: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
    pub pt: u8,
    pub fmtp: String,
}

#[derive(Debug)]
pub struct RemoteTrack {
    pub home: Arc<str>,
    pub room: Arc<str>,
    pub orig: String,
    pub params: PayloadParams,
    /// Extended sequence number last seen per layer.
    pub last_seq: HashMap<Option<Rid>, u64>,
    /// The demand last reported.
    pub demand: Vec<(Option<String>, usize)>,
}

/// The RTP packet the trunk carries.
pub fn rtp_packet(pt: u8, marker: bool, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(12 + payload.len());
    b.push(0x80);
    b.push((pt & 0x7f) | if marker { 0x80 } else { 0 });
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&ts.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// An RTP packet's (payload type, marker, sequence number, timestamp, payload), skipping
/// CSRCs, the header extension and padding. `None` if it is not RTP version 2 or truncated.
pub fn parse_rtp(b: &[u8]) -> Option<(u8, bool, u16, u32, &[u8])> {
    if b.len() < 12 || b[0] >> 6 != 2 {
        return None;
    }
    let cc = usize::from(b[0] & 0x0f);
    let mut off = 12 + 4 * cc;
    if b[0] & 0x10 != 0 {
        let words = usize::from(u16::from_be_bytes([*b.get(off + 2)?, *b.get(off + 3)?]));
        off += 4 + 4 * words;
    }
    let mut end = b.len();
    if b[0] & 0x20 != 0 {
        let pad = usize::from(*b.last()?);
        end = end.checked_sub(pad)?;
    }
    if off > end {
        return None;
    }
    Some((
        b[1] & 0x7f,
        b[1] & 0x80 != 0,
        u16::from_be_bytes([b[2], b[3]]),
        u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        &b[off..end],
    ))
}

fn layer_name(r: Option<Rid>) -> Option<String> {
    r.map(|r| r.to_string())
}

impl Sfu {
    /// Adds the stand-in of a device homed on `home` to `room` (the room's members hear of it
    /// as of any participant). It carries no WebRTC connection; its tracks come from
    /// [`Sfu::remote_track`].
    pub fn remote_publisher(
        &mut self,
        room: &str,
        identity: &str,
        home: &str,
        now: Instant,
    ) -> ParticipantId {
        self.next_id += 1;
        let id = ParticipantId(self.next_id);
        let room: Arc<str> = Arc::from(room);
        let identity: Arc<str> = Arc::from(identity);
        let rtc = Rtc::builder()
            .set_rtp_mode(true)
            .set_crypto_provider(super::dtls::crypto_provider())
            .set_dtls_cert(self.dtls_cert.clone())
            .build(now);
        let p = Participant {
            id,
            room: room.clone(),
            identity: identity.clone(),
            role: Role::Device,
            rtc,
            ufrag: String::new(),
            timeout: now,
            scheduled: None,
            joined_at: now,
            connected: true,
            addrs: Vec::new(),
            published: HashMap::new(),
            publish_meta: HashMap::new(),
            subs: HashMap::new(),
            wanted: HashMap::new(),
            channels: HashMap::new(),
            resume_from: None,
            estimate_bps: None,
            first_media_sent: false,
            direct_mode: false,
            direct: None,
            path: None,
            retired: HashMap::new(),
            remote: Some(Arc::from(home)),
        };
        let info = ParticipantInfo {
            id: id.to_string(),
            identity: identity.to_string(),
            role: Role::Device,
        };
        self.add_member(room, p, info);
        id
    }

    /// The id a remote track has on this node.
    pub fn remote_track_id(home: &str, track: &str) -> String {
        format!("{home}/{track}")
    }

    /// Adds a track of remote publisher `id`; returns its id on this node.
    pub fn remote_track(
        &mut self,
        id: ParticipantId,
        spec: RemoteTrackSpec,
        now: Instant,
    ) -> Result<Arc<str>, SfuError> {
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant)?;
        let Some(home) = p.remote.clone() else {
            return Err(SfuError::BadRequest("not a remote publisher".into()));
        };
        let local: Arc<str> = Arc::from(Self::remote_track_id(&home, &spec.track));
        if self.tracks.contains_key(&local) {
            return Ok(local);
        }
        let codec = Codec::from(spec.codec.as_str());
        let clock = Frequency::new(spec.clock_rate)
            .ok_or_else(|| SfuError::BadRequest("clock rate 0".into()))?;
        if codec == Codec::Unknown || spec.pt > 127 {
            return Err(SfuError::BadRequest(format!(
                "codec {:?} / payload type {} cannot be forwarded",
                spec.codec, spec.pt
            )));
        }
        let params = PayloadParams::new(
            Pt::from(spec.pt),
            None,
            CodecSpec {
                codec,
                clock_rate: clock,
                channels: spec.channels,
                format: FormatParams::parse_line(&spec.fmtp),
            },
        );
        let mid = Mid::from(format!("r{}", p.published.len()).as_str());
        let rids: Vec<Rid> = spec
            .layers
            .iter()
            .flatten()
            .map(|l| Rid::from(l.as_str()))
            .collect();
        let mut t = Track::new(local.clone(), id, mid, spec.kind, &rids, now);
        t.name = spec.name;
        t.codec = Some(codec);
        t.remote = Some(RemoteTrack {
            home,
            room: p.room.clone(),
            orig: spec.track,
            params,
            last_seq: HashMap::new(),
            demand: Vec::new(),
        });
        p.published.insert(mid, local.clone());
        let info = track_info(&t, &p.identity);
        let room = p.room.clone();
        self.tracks.insert(local.clone(), t);
        self.notify_room(&room, Some(id), Notice::TrackPublished(Box::new(info)));
        Ok(local)
    }

    /// A remote track ended at its home.
    pub fn remote_track_ended(&mut self, track: &str) {
        let Some(owner) = self
            .tracks
            .get(track)
            .filter(|t| t.remote.is_some())
            .map(|t| t.owner)
        else {
            return;
        };
        if let Some(p) = self.participants.get_mut(&owner) {
            p.published.retain(|_, t| &**t != track);
        }
        self.remove_track(track);
        self.demand_dirty = true;
    }

    /// One packet of remote track `track` on `layer`, from the trunk. False if the track is
    /// unknown or the packet is not RTP.
    pub fn remote_rtp(
        &mut self,
        track: &str,
        layer: Option<&str>,
        rtp: &[u8],
        now: Instant,
    ) -> bool {
        let Some((pt, marker, seq, ts, payload)) = parse_rtp(rtp) else {
            self.stats.trunk_bad_packets += 1;
            return false;
        };
        let Some(t) = self.tracks.get_mut(track) else {
            return false;
        };
        let Some(r) = t.remote.as_mut() else {
            return false;
        };
        if pt != *r.params.pt() {
            self.stats.trunk_bad_packets += 1;
            return false;
        }
        let rid = layer.map(Rid::from);
        let last = r.last_seq.entry(rid).or_insert(u64::from(seq) + (1 << 16));
        let ext = extend_seq(seq, *last);
        *last = (*last).max(ext);
        let params = r.params;
        self.stats.trunk_packets_in += 1;
        t.on_packet(rid, payload.len(), now);
        let id = t.id.clone();
        if t.stalled {
            t.stalled = false;
            let owner = t.owner;
            if let Some(room) = self.participants.get(&owner).map(|p| p.room.clone()) {
                self.notify_room(
                    &room,
                    None,
                    Notice::TrackStalled {
                        track: id.to_string(),
                        stalled: false,
                    },
                );
            }
        }
        let media = Media {
            seq: ext,
            ts,
            marker,
            payload: Arc::from(payload),
            arrival: now,
            ext: Default::default(),
        };
        self.fan_out(id, rid, Some(params), media, now);
        true
    }

    /// Starts or stops sending `track`'s packets to the trunk (other nodes subscribed to it).
    pub fn set_export(&mut self, track: &str, on: bool) -> bool {
        match self.tracks.get_mut(track) {
            Some(t) if t.remote.is_none() => {
                t.exported = on;
                true
            }
            _ => false,
        }
    }

    /// The nodes subscribed to local track `track` over the trunk (listed with its device).
    pub fn set_export_nodes(&mut self, track: &str, nodes: Vec<String>) {
        if let Some(t) = self.tracks.get_mut(track).filter(|t| t.remote.is_none()) {
            t.exported_to = nodes;
        }
    }

    /// What the trunk needs to forward local track `track`: (room, kind, codec parameters,
    /// layers). `None` for an unknown or remote track.
    pub fn export_info(&self, track: &str) -> Option<ExportInfo> {
        let t = self.tracks.get(track).filter(|t| t.remote.is_none())?;
        let p = self.participants.get(&t.owner)?;
        // The codec of its media, or before the first packet the first negotiated of its kind.
        let params = p
            .rtc
            .codec_config()
            .params()
            .iter()
            .find(|c| match t.codec {
                Some(codec) => c.spec().codec == codec,
                None => c.spec().codec.kind() == t.kind && !c.spec().codec.is_tele(),
            })
            .copied()?;
        let layers = t.layers.iter().map(|l| layer_name(l.rid)).collect();
        Some(ExportInfo {
            room: p.room.clone(),
            kind: t.kind,
            name: t.name.clone(),
            params,
            layers,
        })
    }

    /// Packets of `track` the trunk lost, from the track's cache (plain RTP as in
    /// [`TrunkOutput::Packet`]); what the cache no longer has is counted.
    pub fn trunk_resend(&mut self, track: &str, seqs: &[u16]) -> Vec<Vec<u8>> {
        let Some(t) = self.tracks.get(track) else {
            return Vec::new();
        };
        let Some(cache) = t.cache.as_ref() else {
            self.stats.trunk_resend_misses += seqs.len() as u64;
            return Vec::new();
        };
        let mut out = Vec::new();
        for s in seqs {
            match cache.get(extend_seq(*s, t.last_seq)) {
                Some(c) => out.push(rtp_packet(
                    c.pt,
                    c.marker,
                    c.seq as u16,
                    c.timestamp,
                    &c.payload,
                )),
                None => self.stats.trunk_resend_misses += 1,
            }
        }
        self.stats.trunk_resent += out.len() as u64;
        out
    }

    /// Asks a local publisher for a keyframe of `track`'s `layer` for the trunk (already
    /// aggregated across nodes by the trunk; the track's own gate applies too).
    pub fn trunk_keyframe(&mut self, track: &str, layer: Option<&str>, now: Instant) {
        let rid = layer.map(Rid::from);
        if self.tracks.get(track).is_some_and(|t| t.remote.is_none()) {
            self.request_keyframe(track, rid, now);
        }
    }

    /// Other nodes serve members of `room` (or no longer): its changes are reported.
    pub fn set_watched(&mut self, room: &str, on: bool) {
        if on {
            self.watched.insert(Arc::from(room));
        } else {
            self.watched.remove(room);
        }
    }

    pub(super) fn room_changed(&mut self, room: &str) {
        let dup = matches!(self.out.trunk.back(), Some(TrunkOutput::RoomChanged { room: r }) if &**r == room);
        if !dup {
            self.out.trunk.push_back(TrunkOutput::RoomChanged {
                room: Arc::from(room),
            });
        }
    }

    /// The devices of `room` homed here and their tracks (stand-ins of remote ones are not).
    pub fn room_devices(&self, room: &str) -> Vec<(String, Vec<(String, ExportInfo)>)> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        r.members
            .iter()
            .filter_map(|m| self.participants.get(m))
            .filter(|p| p.role == Role::Device && p.remote.is_none())
            .map(|p| {
                let mut tracks: Vec<(String, ExportInfo)> = p
                    .published
                    .values()
                    .filter_map(|t| Some((t.to_string(), self.export_info(t)?)))
                    .collect();
                tracks.sort_by(|a, b| a.0.cmp(&b.0));
                (p.identity.to_string(), tracks)
            })
            .collect()
    }

    /// The stand-ins of remote devices in `room`.
    pub fn remote_devices(&self, room: &str) -> Vec<RemoteDevice> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        r.members
            .iter()
            .filter_map(|m| self.participants.get(m))
            .filter(|p| p.remote.is_some())
            .map(|p| {
                let tracks = p
                    .published
                    .values()
                    .filter_map(|t| {
                        let r = self.tracks.get(t)?.remote.as_ref()?;
                        Some((r.orig.clone(), t.to_string()))
                    })
                    .collect();
                RemoteDevice {
                    id: p.id,
                    identity: p.identity.to_string(),
                    tracks,
                }
            })
            .collect()
    }

    /// Members of `room` on this node (its sessions, not stand-ins).
    pub fn local_members(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |r| {
            r.members
                .iter()
                .filter(|m| self.participants.get(m).is_some_and(|p| p.remote.is_none()))
                .count()
        })
    }

    /// Marks `room` as served here for its home `home` (its messages are sequenced there), or
    /// as homed here again (`None`).
    pub fn set_edge(&mut self, room: &str, home: Option<&str>) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.home = home.map(Arc::from);
        }
    }

    /// Home: a room message from a session on another node. A sequenced one (`sequenced`) is
    /// appended to the room's log (a duplicate of the same sender and id keeps its first
    /// sequence number) and delivered here and to the watching nodes; its sequence number is
    /// returned for the acknowledgement. Input is delivered here only. `None` for a room
    /// that is not here or malformed data (counted).
    #[allow(clippy::too_many_arguments)]
    pub fn trunk_room_send(
        &mut self,
        room: &str,
        from: &str,
        id: Option<u64>,
        to: Audience,
        data: &str,
        sequenced: bool,
        now: Instant,
    ) -> Option<u64> {
        let valid = serde_json::from_str::<&serde_json::value::RawValue>(data).is_ok()
            && data.len() <= self.cfg.max_message_bytes;
        let Some((room, _)) = self
            .rooms
            .get_key_value(room)
            .filter(|(_, r)| r.home.is_none() && valid)
        else {
            self.stats.trunk_bad_messages += 1;
            return None;
        };
        let room = room.clone();
        let from: Arc<str> = Arc::from(from);
        let data: Arc<str> = Arc::from(data);
        if !sequenced {
            self.stats.input_messages += 1;
            let line = format!(
                "{{\"from\":{},\"data\":{}}}",
                super::json_string(&from),
                data
            );
            self.deliver(&room, to, ChannelRole::Input, line.as_bytes(), now);
            return None;
        }
        self.sequence(&room, &from, id, to, &data, now)
    }

    /// Edge: the home sequenced session `origin`'s message `id` as `seq`: the session gets its
    /// acknowledgement now.
    pub fn trunk_ack(&mut self, origin: ParticipantId, id: Option<u64>, seq: u64, now: Instant) {
        let Some(ch) = self
            .participants
            .get(&origin)
            .and_then(|p| p.channel_for(ChannelRole::Controls))
        else {
            return;
        };
        let ack = match id {
            Some(i) => format!("{{\"ack\":{i},\"seq\":{seq}}}"),
            None => format!("{{\"ack\":null,\"seq\":{seq}}}"),
        };
        self.write_channel(origin, ch, ack.as_bytes(), now);
    }

    /// Edge: a message of edge room `room` from its home: kept in the room's mirrored log
    /// (when sequenced) and delivered to this node's members it is for. False for an unknown
    /// room, a sequence number already here, or malformed data.
    pub fn trunk_deliver(
        &mut self,
        room: &str,
        seq: Option<u64>,
        from: &str,
        to: Audience,
        data: &str,
        now: Instant,
    ) -> bool {
        if serde_json::from_str::<&serde_json::value::RawValue>(data).is_err() {
            self.stats.trunk_bad_messages += 1;
            return false;
        }
        let Some(r) = self.rooms.get_mut(room).filter(|r| r.home.is_some()) else {
            return false;
        };
        let (from, data): (Arc<str>, Arc<str>) = (Arc::from(from), Arc::from(data));
        let room: Arc<str> = Arc::from(room);
        let line = match seq {
            Some(seq) => {
                if !r.log.mirror(seq, from.clone(), to, data.clone()) {
                    return false;
                }
                format!(
                    "{{\"seq\":{seq},\"from\":{},\"data\":{}}}",
                    super::json_string(&from),
                    data
                )
            }
            None => format!(
                "{{\"from\":{},\"data\":{}}}",
                super::json_string(&from),
                data
            ),
        };
        let prefer = if seq.is_some() {
            ChannelRole::Controls
        } else {
            ChannelRole::Input
        };
        self.deliver(&room, to, prefer, line.as_bytes(), now);
        true
    }

    /// Home: the messages `room`'s log keeps, for a node that starts watching it.
    pub fn room_log(&self, room: &str) -> Vec<(u64, String, Audience, String)> {
        self.rooms.get(room).map_or_else(Vec::new, |r| {
            r.log
                .entries()
                .map(|e| (e.seq, e.from.to_string(), e.to, e.data.to_string()))
                .collect()
        })
    }

    /// The next thing for the trunk driver.
    pub fn poll_trunk(&mut self) -> Option<TrunkOutput> {
        if self.demand_dirty {
            self.demand_dirty = false;
            self.update_demand();
        }
        self.out.trunk.pop_front()
    }

    fn update_demand(&mut self) {
        let mut changes = Vec::new();
        for t in self.tracks.values() {
            let Some(r) = &t.remote else {
                continue;
            };
            let mut layers: BTreeMap<Option<String>, usize> = BTreeMap::new();
            for (sid, smid) in &t.subscribers {
                if let Some(s) = self.participants.get(sid).and_then(|p| p.subs.get(smid)) {
                    *layers.entry(layer_name(s.target)).or_insert(0) += 1;
                }
            }
            let layers: Vec<(Option<String>, usize)> = layers.into_iter().collect();
            if layers != r.demand {
                changes.push((t.id.clone(), layers));
            }
        }
        for (id, layers) in changes {
            let Some(r) = self.tracks.get_mut(&id).and_then(|t| t.remote.as_mut()) else {
                continue;
            };
            r.demand = layers.clone();
            self.out.trunk.push_back(TrunkOutput::Demand {
                home: r.home.clone(),
                room: r.room.clone(),
                track: r.orig.clone(),
                layers,
            });
        }
    }

    /// Keyframe requests for a remote publisher's track go to the trunk.
    pub(super) fn remote_keyframes(
        &mut self,
        owner: ParticipantId,
        mid: Mid,
        layers: &[Option<Rid>],
    ) {
        let Some(track) = self
            .participants
            .get(&owner)
            .and_then(|p| p.published.get(&mid))
            .cloned()
        else {
            return;
        };
        let Some(r) = self.tracks.get(&track).and_then(|t| t.remote.as_ref()) else {
            return;
        };
        for l in layers {
            self.stats.keyframe_requests_out += 1;
            self.out.trunk.push_back(TrunkOutput::Keyframe {
                home: r.home.clone(),
                room: r.room.clone(),
                track: r.orig.clone(),
                layer: layer_name(*l),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_round_trips_and_garbage_is_refused() {
        let b = rtp_packet(96, true, 65535, 90_000, b"frame");
        assert_eq!(
            parse_rtp(&b),
            Some((96, true, 65535, 90_000, &b"frame"[..]))
        );
        assert_eq!(parse_rtp(&b[..11]), None);
        let mut v1 = b.clone();
        v1[0] = 0x40;
        assert_eq!(parse_rtp(&v1), None);
        // A header extension and padding are skipped.
        let mut x = vec![0x90 | 0x20, 96, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0];
        x.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xff, 0, 0]);
        x.extend_from_slice(b"data");
        x.extend_from_slice(&[0, 0, 3]);
        assert_eq!(parse_rtp(&x), Some((96, false, 1, 2, &b"data"[..])));
        // An extension or padding longer than the packet.
        let mut bad = vec![0x90, 96, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0xbe, 0xde, 0, 9];
        assert_eq!(parse_rtp(&bad), None);
        bad = vec![0xa0, 96, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 200];
        assert_eq!(parse_rtp(&bad), None);
    }
}
