//! A published track: its layers and their bitrates, who subscribes to it, and the keyframe
//! gate that turns many subscribers' PLI/FIR into at most one request per interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{MediaKind, Mid, Rid};

use super::direct::PacketCache;
use super::layer::LayerView;
use super::ParticipantId;

/// Layer bitrates are measured over windows of this length.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);
/// A layer without media for this long is not offered to subscribers.
const LAYER_IDLE: Duration = Duration::from_millis(1500);

#[derive(Debug)]
pub struct Layer {
    pub rid: Option<Rid>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    window_bytes: u64,
    pub bitrate_bps: u64,
    pub last_packet: Option<Instant>,
}

impl Layer {
    pub fn new(rid: Option<Rid>) -> Self {
        Self {
            rid,
            width: None,
            height: None,
            window_bytes: 0,
            bitrate_bps: 0,
            last_packet: None,
        }
    }
}

#[derive(Debug)]
pub struct Track {
    pub id: Arc<str>,
    pub owner: ParticipantId,
    pub mid: Mid,
    pub kind: MediaKind,
    pub name: String,
    pub codec: Option<Codec>,
    pub layers: Vec<Layer>,
    /// (subscriber, the subscriber's outgoing mid).
    pub subscribers: Vec<(ParticipantId, Mid)>,
    pub keyframes: KeyframeGate,
    pub muted: bool,
    pub stalled: bool,
    pub last_media: Option<Instant>,
    /// When the track was negotiated (a track that never carries media stalls from here).
    pub created: Instant,
    pub packets: u64,
    pub bytes: u64,
    /// Recent packets for subscribers' NACKs, once a direct-path subscriber takes the track.
    pub cache: Option<PacketCache>,
    /// For a track homed on another node: where it comes from and how it is encoded.
    pub remote: Option<super::remote::RemoteTrack>,
    /// Other nodes subscribed to this track over the trunk: its packets go out as
    /// [`super::TrunkOutput::Packet`] too.
    pub exported: bool,
    /// The nodes subscribed to it over the trunk (for the room list).
    pub exported_to: Vec<String>,
    /// The highest (extended) sequence number forwarded.
    pub last_seq: u64,
}

impl Track {
    pub fn new(
        id: Arc<str>,
        owner: ParticipantId,
        mid: Mid,
        kind: MediaKind,
        rids: &[Rid],
        now: Instant,
    ) -> Self {
        let layers = if rids.is_empty() {
            vec![Layer::new(None)]
        } else {
            rids.iter().map(|r| Layer::new(Some(*r))).collect()
        };
        Self {
            id,
            owner,
            mid,
            kind,
            name: kind.to_string(),
            codec: None,
            layers,
            subscribers: Vec::new(),
            keyframes: KeyframeGate::default(),
            muted: false,
            stalled: false,
            last_media: None,
            created: now,
            packets: 0,
            bytes: 0,
            cache: None,
            remote: None,
            exported: false,
            exported_to: Vec::new(),
            last_seq: 0,
        }
    }

    /// Accounts one incoming packet on `rid`, adding the layer if the publisher sends one it
    /// did not announce.
    pub fn on_packet(&mut self, rid: Option<Rid>, bytes: usize, now: Instant) {
        self.packets += 1;
        self.bytes += bytes as u64;
        self.last_media = Some(now);
        let layer = match self.layers.iter_mut().position(|l| l.rid == rid) {
            Some(i) => &mut self.layers[i],
            None => {
                self.layers.push(Layer::new(rid));
                self.layers.last_mut().expect("just pushed")
            }
        };
        layer.window_bytes += bytes as u64;
        layer.last_packet = Some(now);
    }

    /// Closes a rate window of `elapsed`.
    pub fn roll_window(&mut self, elapsed: Duration) {
        let ms = elapsed.as_millis().max(1) as u64;
        for l in &mut self.layers {
            l.bitrate_bps = l.window_bytes * 8 * 1000 / ms;
            l.window_bytes = 0;
        }
    }

    pub fn bitrate_bps(&self) -> u64 {
        self.layers.iter().map(|l| l.bitrate_bps).sum()
    }

    /// The layers as the chooser sees them, ordered low to high.
    pub fn layer_views(&self, now: Instant) -> Vec<LayerView> {
        let mut v: Vec<LayerView> = self
            .layers
            .iter()
            .map(|l| LayerView {
                rid: l.rid.map(|r| r.to_string()),
                bitrate_bps: l.bitrate_bps,
                active: l
                    .last_packet
                    .is_some_and(|t| now.saturating_duration_since(t) < LAYER_IDLE),
                width: l.width,
                height: l.height,
            })
            .collect();
        super::layer::order(&mut v);
        v
    }

    pub fn rid_named(&self, name: Option<&str>) -> Option<Option<Rid>> {
        self.layers
            .iter()
            .find(|l| l.rid.map(|r| r.to_string()).as_deref() == name)
            .map(|l| l.rid)
    }
}

/// At most one keyframe request per `interval` per track. Requests that arrive sooner are
/// remembered (per layer) and sent when the interval has passed.
#[derive(Debug, Default)]
pub struct KeyframeGate {
    last_sent: Option<Instant>,
    pending: Vec<Option<Rid>>,
    /// Requests made because a subscriber joined: outside the per-interval budget (a joiner
    /// should not wait up to a second for its first frame), coalesced over [`JOIN_COALESCE`].
    last_join: Option<Instant>,
    pending_join: Vec<Option<Rid>>,
}

/// Joins within this window share one keyframe request.
pub const JOIN_COALESCE: Duration = Duration::from_millis(150);

impl KeyframeGate {
    /// Records a request for `layer`; returns the layers to request now (empty when the gate
    /// holds the request back).
    pub fn request(
        &mut self,
        layer: Option<Rid>,
        now: Instant,
        interval: Duration,
    ) -> Vec<Option<Rid>> {
        if !self.pending.contains(&layer) {
            self.pending.push(layer);
        }
        self.release(now, interval)
    }

    /// A request because a subscriber joined: sent at once unless another join asked less
    /// than [`JOIN_COALESCE`] ago (then it goes with the next release).
    pub fn request_for_join(&mut self, layer: Option<Rid>, now: Instant) -> Vec<Option<Rid>> {
        if !self.pending_join.contains(&layer) {
            self.pending_join.push(layer);
        }
        self.release_joins(now)
    }

    /// Join requests whose coalescing window has passed.
    pub fn release_joins(&mut self, now: Instant) -> Vec<Option<Rid>> {
        if self.pending_join.is_empty() {
            return Vec::new();
        }
        if self
            .last_join
            .is_some_and(|t| now.saturating_duration_since(t) < JOIN_COALESCE)
        {
            return Vec::new();
        }
        self.last_join = Some(now);
        std::mem::take(&mut self.pending_join)
    }

    /// Records a request without sending anything now; [`KeyframeGate::release`] sends it
    /// once the interval allows.
    pub fn hold(&mut self, layer: Option<Rid>) {
        if !self.pending.contains(&layer) {
            self.pending.push(layer);
        }
    }

    /// The held-back requests, once the interval has passed.
    pub fn release(&mut self, now: Instant, interval: Duration) -> Vec<Option<Rid>> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        if self
            .last_sent
            .is_some_and(|t| now.saturating_duration_since(t) < interval)
        {
            return Vec::new();
        }
        self.last_sent = Some(now);
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_gate_sends_one_per_interval() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut g = KeyframeGate::default();
        assert_eq!(g.request(None, start, second), vec![None]);
        // 20 subscribers ask within the same second: held back, once.
        for i in 1..=20 {
            let t = start + Duration::from_millis(i * 40);
            assert!(g.request(None, t, second).is_empty());
        }
        assert!(g
            .release(start + Duration::from_millis(999), second)
            .is_empty());
        assert_eq!(g.release(start + second, second), vec![None]);
        // Nothing pending any more.
        assert!(g.release(start + 3 * second, second).is_empty());
    }

    #[test]
    fn joins_get_keyframes_outside_the_interval_but_coalesced() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut g = KeyframeGate::default();
        // A PLI just used the per-second budget...
        assert_eq!(g.request(None, start, second), vec![None]);
        // ...a joiner still gets its keyframe at once.
        let t = start + Duration::from_millis(10);
        assert_eq!(g.request_for_join(None, t), vec![None]);
        // 100 more joiners within 150 ms share one more request.
        for i in 1..=100 {
            let at = t + Duration::from_millis(i);
            assert!(g.request_for_join(None, at).is_empty());
        }
        assert_eq!(g.release_joins(t + JOIN_COALESCE), vec![None]);
        assert!(g.release_joins(t + 4 * JOIN_COALESCE).is_empty());
    }

    #[test]
    fn keyframe_gate_collects_layers() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut g = KeyframeGate::default();
        let h = Some(Rid::from("h"));
        let q = Some(Rid::from("q"));
        assert_eq!(g.request(h, start, second), vec![h]);
        assert!(g.request(q, start, second).is_empty());
        assert!(g.request(h, start, second).is_empty());
        let due = g.release(start + second, second);
        assert_eq!(due.len(), 2);
        assert!(due.contains(&h) && due.contains(&q));
    }

    #[test]
    fn bitrate_window_and_activity() {
        let t0 = Instant::now();
        let mut t = Track::new(
            "p1-0".into(),
            ParticipantId(1),
            Mid::from("0"),
            MediaKind::Video,
            &[],
            t0,
        );
        for i in 0..100 {
            t.on_packet(None, 1250, t0 + Duration::from_millis(i * 10));
        }
        t.roll_window(Duration::from_secs(1));
        assert_eq!(t.bitrate_bps(), 1_000_000);
        let views = t.layer_views(t0 + Duration::from_secs(1));
        assert!(views[0].active);
        let later = t.layer_views(t0 + Duration::from_secs(5));
        assert!(!later[0].active);
        // A layer the publisher never announced is added when it shows up.
        t.on_packet(Some(Rid::from("h")), 100, t0);
        assert_eq!(t.layers.len(), 2);
    }
}
