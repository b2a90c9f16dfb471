//! One session: its str0m `Rtc`, the tracks it publishes, the tracks it receives and how each
//! outgoing stream's sequence numbers and timestamps are rewritten across layer switches.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use str0m::channel::ChannelId;
use str0m::media::{Mid, Pt, Rid};
use str0m::net::Protocol;
use str0m::Rtc;

use super::direct::{DirectSession, SrState};

use super::layer::LayerPrefs;
use super::{ParticipantId, Role};

/// What a data channel is for, from its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelRole {
    /// Reliable, ordered: sequenced room messages.
    Controls,
    /// Unordered, no retransmissions: latest-wins input, not sequenced.
    Input,
    Other,
}

impl ChannelRole {
    pub fn from_label(label: &str) -> Self {
        match label {
            "controls" => Self::Controls,
            "input" => Self::Input,
            _ => Self::Other,
        }
    }
}

pub struct Participant {
    pub id: ParticipantId,
    pub room: Arc<str>,
    pub identity: Arc<str>,
    pub role: Role,
    pub rtc: Rtc,
    pub ufrag: String,
    pub timeout: Instant,
    /// The earliest timer entry queued for this session.
    pub scheduled: Option<Instant>,
    pub joined_at: Instant,
    pub connected: bool,
    /// Source addresses seen for this session (for the demux table).
    pub addrs: Vec<SocketAddr>,
    /// Published tracks by our receiving mid.
    pub published: HashMap<Mid, Arc<str>>,
    /// Publisher-declared metadata for mids not yet negotiated.
    pub publish_meta: HashMap<Mid, PublishMeta>,
    /// Tracks this session receives, by our sending mid.
    pub subs: HashMap<Mid, Subscription>,
    /// `subscribe` requests whose mid is not negotiated yet.
    pub wanted: HashMap<Mid, (Arc<str>, LayerPrefs)>,
    pub channels: HashMap<ChannelId, ChannelRole>,
    /// Last room message sequence the client saw (from `join`), replayed from on open.
    pub resume_from: Option<u64>,
    pub estimate_bps: Option<u64>,
    /// Whether the first media packet has been sent to this session (join-to-first-frame).
    pub first_media_sent: bool,
    /// A subscribe-only session: its non-simulcast media and all its sender reports go through
    /// the SFU's own send path (`direct.rs`) once `direct` has its keys.
    pub direct_mode: bool,
    pub direct: Option<DirectSession>,
    /// (protocol, our address, the peer's) of the pair str0m last sent DTLS/SCTP/RTCP on, or
    /// the peer last sent authenticated RTCP from: the selected ICE pair.
    pub path: Option<(Protocol, SocketAddr, SocketAddr)>,
    /// Where the sequence numbers of a mid's ended subscription stopped (media, RTX): a
    /// later subscription on the same mid (same SSRCs) continues from there, since reusing
    /// an SRTP index would be taken for a replay, and would reuse a keystream.
    pub retired: HashMap<Mid, (u64, u64)>,
    /// For the stand-in of a publisher homed on another node (its tracks arrive over the
    /// trunk): that node's id. Such a participant has no WebRTC connection of its own.
    pub remote: Option<Arc<str>>,
}

#[derive(Debug, Clone, Default)]
pub struct PublishMeta {
    pub name: Option<String>,
    pub layers: Vec<(String, Option<u32>, Option<u32>)>,
}

impl Participant {
    /// Ends the subscription on `mid`, remembering where its sequence numbers stopped.
    pub fn retire_sub(&mut self, mid: Mid) -> Option<Subscription> {
        let s = self.subs.remove(&mid)?;
        let next = s.rewrite.last_out_seq().map_or(FIRST_OUT_SEQ, |l| l + 1);
        let rtx = s.out.as_ref().map_or(1, |o| o.rtx_seq);
        self.retired.insert(mid, (next, rtx));
        Some(s)
    }

    /// Whether str0m sends (or may soon send) this session's media: then its bandwidth
    /// estimation and pacing matter. Not for a direct-mode session whose subscriptions all
    /// take the SFU's own path.
    pub fn str0m_sends_media(&self) -> bool {
        !self.direct_mode || self.direct.is_none() || self.subs.values().any(|s| s.via_str0m)
    }

    pub fn channel_for(&self, role: ChannelRole) -> Option<ChannelId> {
        self.channels
            .iter()
            .find(|(_, r)| **r == role)
            .map(|(id, _)| *id)
    }
}

pub struct Subscription {
    pub track: Arc<str>,
    pub prefs: LayerPrefs,
    /// The layer being forwarded (`None` until the first keyframe on `target`).
    pub current: Option<Option<Rid>>,
    /// The layer wanted; the switch happens at its next keyframe.
    pub target: Option<Rid>,
    pub rewrite: Rewriter,
    /// Publisher payload type → ours, learned on the first packet of each.
    pub pt_map: Vec<(Pt, Option<Pt>)>,
    /// The outgoing stream, for direct sending and sender reports (direct-mode sessions).
    pub out: Option<OutStream>,
    /// Media for this subscription has been written to str0m (not the SFU's own path).
    pub via_str0m: bool,
    /// The first RTX sequence number of its outgoing stream.
    pub rtx_start: u64,
}

/// A subscription's outgoing stream as the SFU's own send path sees it.
#[derive(Debug, Clone)]
pub struct OutStream {
    pub ssrc: u32,
    /// RTX SSRC, when the subscriber negotiated retransmissions.
    pub rtx_ssrc: Option<u32>,
    /// The next RTX sequence number (extended).
    pub rtx_seq: u64,
    pub clock_rate: u32,
    pub sr: SrState,
}

impl Subscription {
    /// `resume`: where an earlier subscription on the same mid left the sequence numbers.
    pub fn new(track: Arc<str>, prefs: LayerPrefs, resume: Option<(u64, u64)>) -> Self {
        let rewrite = match resume {
            Some((next, _)) => Rewriter::continuing_at(next),
            None => Rewriter::default(),
        };
        Self {
            track,
            prefs,
            current: None,
            target: None,
            rewrite,
            pt_map: Vec::new(),
            out: None,
            via_str0m: false,
            rtx_start: resume.map_or(1, |r| r.1),
        }
    }
}

/// Keeps one outgoing RTP stream continuous while its source changes (simulcast layers each
/// have their own sequence numbers and timestamp bases).
#[derive(Debug, Default, Clone)]
pub struct Rewriter {
    seq_offset: u64,
    ts_offset: u32,
    /// First incoming sequence number of the current source: older packets of it predate the
    /// switch and are dropped.
    switch_seq: u64,
    last_out_seq: Option<u64>,
    last_out_ts: u32,
    last_at: Option<Instant>,
}

/// Outgoing streams start below 2^16 so the receiver needs no out-of-band rollover counter.
const FIRST_OUT_SEQ: u64 = 1;

impl Rewriter {
    /// Starts forwarding from a new source at a keyframe packet (`seq`, `ts`).
    pub fn switch(&mut self, seq: u64, ts: u32, clock_rate: u32, now: Instant) {
        let next = self.last_out_seq.map_or(FIRST_OUT_SEQ, |s| s + 1);
        self.seq_offset = next.wrapping_sub(seq);
        self.switch_seq = seq;
        let out_ts = match self.last_at {
            // Keep the previous source's timestamps, advanced by the wall time since its last
            // packet (at least one tick) so the receiver sees time move forward.
            Some(at) => {
                let ticks = now.saturating_duration_since(at).as_micros() as u64
                    * clock_rate as u64
                    / 1_000_000;
                self.last_out_ts.wrapping_add(ticks.max(1) as u32)
            }
            None => ts,
        };
        self.ts_offset = out_ts.wrapping_sub(ts);
    }

    /// The outgoing (sequence number, timestamp) for a packet of the current source, or
    /// `None` for a packet from before the switch.
    /// For a NACKed output sequence number (extended): the source sequence number and the
    /// timestamp offset it was sent with; none for packets from before the last switch or
    /// never sent.
    pub fn unmap(&self, out_seq: u64) -> Option<(u64, u32)> {
        let seq = out_seq.wrapping_sub(self.seq_offset);
        let sent = self.last_out_seq.is_some_and(|l| out_seq <= l);
        (sent && seq >= self.switch_seq).then_some((seq, self.ts_offset))
    }

    /// A rewriter whose first output sequence number is `next`.
    pub fn continuing_at(next: u64) -> Self {
        Self {
            last_out_seq: next.checked_sub(1),
            ..Self::default()
        }
    }

    pub fn last_out_seq(&self) -> Option<u64> {
        self.last_out_seq
    }

    pub fn map(&mut self, seq: u64, ts: u32, now: Instant) -> Option<(u64, u32)> {
        if seq < self.switch_seq {
            return None;
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);
        if self.last_out_seq.is_none_or(|s| out_seq > s) {
            self.last_out_seq = Some(out_seq);
            self.last_out_ts = out_ts;
            self.last_at = Some(now);
        }
        Some((out_seq, out_ts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn first_source_starts_low_and_keeps_timestamps() {
        let t0 = Instant::now();
        let mut r = Rewriter::default();
        r.switch(70_000, 5000, 90_000, t0);
        assert_eq!(r.map(70_000, 5000, t0), Some((1, 5000)));
        assert_eq!(r.map(70_001, 5000, t0), Some((2, 5000)));
        assert_eq!(r.map(70_003, 8000, t0), Some((4, 8000)));
        // Reordered within the source: still mapped.
        assert_eq!(r.map(70_002, 5000, t0), Some((3, 5000)));
        // From before the switch: dropped.
        assert_eq!(r.map(69_999, 1000, t0), None);
    }

    #[test]
    fn switch_continues_sequence_and_advances_time() {
        let t0 = Instant::now();
        let mut r = Rewriter::default();
        r.switch(100, 1_000, 90_000, t0);
        r.map(100, 1_000, t0);
        r.map(101, 4_000, t0);
        // 100 ms later another layer with unrelated numbering takes over.
        let t1 = t0 + Duration::from_millis(100);
        r.switch(9_000, 777_777, 90_000, t1);
        assert_eq!(r.map(9_000, 777_777, t1), Some((3, 4_000 + 9_000)));
        assert_eq!(r.map(9_001, 777_777 + 3_000, t1), Some((4, 4_000 + 12_000)));
        // A switch with no time passing still moves the clock by one tick.
        r.switch(50, 10, 90_000, t1);
        assert_eq!(r.map(50, 10, t1), Some((5, 4_000 + 12_000 + 1)));
    }

    #[test]
    fn timestamps_wrap() {
        let t0 = Instant::now();
        let mut r = Rewriter::default();
        r.switch(1, u32::MAX - 10, 90_000, t0);
        r.map(1, u32::MAX - 10, t0);
        assert_eq!(r.map(2, 20, t0), Some((2, 20)));
    }
}
