//! The edge side of remote subscriptions (sans-IO, driven by the caller's clock).
//!
//! An edge node imports a track homed on another node once, however many of its own sessions
//! watch it: the first local subscriber makes it send [`Msg::Subscribe`] to the home, the last
//! one leaving sends [`Msg::Unsubscribe`]. The layers asked for are the union of what the local
//! subscribers target, so the home sends each remote node only the simulcast layers it uses.
//! Keyframe requests of all local subscribers are merged into at most one per
//! `keyframe_interval` per track and layer. Packets lost on the trunk (gaps in a flow's RTP
//! sequence numbers) are NACKed to the home, a few times, and counted lost if they never
//! arrive; what the edge's own subscribers lose is served from the edge's cache, not here.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::wire::{FlowDesc, Msg, TrackFormat};

/// A track of a room, as named at its home.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackKey {
    pub room: String,
    pub track: String,
}

impl TrackKey {
    pub fn new(room: &str, track: &str) -> Self {
        TrackKey {
            room: room.into(),
            track: track.into(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ImportConfig {
    /// At most one keyframe request per track and layer to the home per this long.
    pub keyframe_interval: Duration,
    /// A subscription is repeated this often (soft state: a home that restarted, or an edge
    /// that vanished without a goodbye, is reconciled by it).
    pub refresh: Duration,
    /// A gap waits this long for reordered packets before it is NACKed.
    pub nack_delay: Duration,
    /// NACKs for one packet, spaced by 1.5 × the trunk RTT (at least `nack_delay`), before it
    /// is counted lost.
    pub nack_tries: u8,
    /// Packets tracked as missing per flow; a longer gap is a restart, not loss.
    pub max_gap: u64,
}

impl Default for ImportConfig {
    fn default() -> Self {
        ImportConfig {
            keyframe_interval: Duration::from_secs(1),
            refresh: Duration::from_secs(5),
            nack_delay: Duration::from_millis(5),
            nack_tries: 3,
            max_gap: 256,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportStats {
    pub packets: u64,
    /// Packets of flows this node does not know (late after an unsubscribe, or bogus).
    pub unknown_flow: u64,
    pub duplicates: u64,
    pub nacked: u64,
    pub recovered: u64,
    pub lost: u64,
    pub keyframes_sent: u64,
    /// Keyframe requests merged into one already sent.
    pub keyframes_merged: u64,
}

/// What changed for the caller after a home's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportEvent {
    /// The home serves the subscription: packets arrive on these flows.
    Ready {
        key: TrackKey,
        format: TrackFormat,
        flows: Vec<FlowDesc>,
    },
    /// The home refused it; local subscribers should be told.
    Refused { key: TrackKey, reason: String },
    /// The track ended at its home.
    Ended { key: TrackKey },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    New,
    /// A packet that was missing (retransmitted or reordered).
    Recovered,
    Duplicate,
}

struct Import {
    home: String,
    /// Local subscribers per target layer.
    layers: BTreeMap<Option<String>, usize>,
    /// The layers last asked of the home.
    asked: Vec<Option<String>>,
    flows: Vec<u32>,
    last_sent: Instant,
    keyframe_at: HashMap<Option<String>, Instant>,
}

struct Miss {
    due: Instant,
    tries: u8,
}

struct Flow {
    key: TrackKey,
    layer: Option<String>,
    highest: Option<u64>,
    missing: BTreeMap<u64, Miss>,
}

pub struct Imports {
    cfg: ImportConfig,
    tracks: HashMap<TrackKey, Import>,
    flows: HashMap<(String, u32), Flow>,
    rtt: HashMap<String, Duration>,
    out: VecDeque<(String, Msg)>,
    stats: ImportStats,
}

/// Extends a 16-bit sequence number to the value nearest `highest`.
fn extend(seq: u16, highest: u64) -> u64 {
    let base = highest & !0xffff;
    let candidates = [base.wrapping_sub(0x1_0000), base, base + 0x1_0000];
    candidates
        .into_iter()
        .map(|b| b.wrapping_add(u64::from(seq)))
        .filter(|c| *c < (1 << 62))
        .min_by_key(|c| c.abs_diff(highest))
        .unwrap_or(u64::from(seq))
}

impl Imports {
    pub fn new(cfg: ImportConfig) -> Self {
        Imports {
            cfg,
            tracks: HashMap::new(),
            flows: HashMap::new(),
            rtt: HashMap::new(),
            out: VecDeque::new(),
            stats: ImportStats::default(),
        }
    }

    pub fn stats(&self) -> ImportStats {
        self.stats
    }

    /// Remote tracks imported, and local subscriptions to them.
    pub fn counts(&self) -> (usize, usize) {
        let subs = self
            .tracks
            .values()
            .map(|i| i.layers.values().sum::<usize>())
            .sum();
        (self.tracks.len(), subs)
    }

    /// Tracks imported from `home`.
    pub fn from_home(&self, home: &str) -> usize {
        self.tracks.values().filter(|i| i.home == home).count()
    }

    /// The home node of an imported track.
    pub fn home_of(&self, key: &TrackKey) -> Option<&str> {
        self.tracks.get(key).map(|i| i.home.as_str())
    }

    /// The trunk RTT to `home`, for NACK spacing.
    pub fn set_rtt(&mut self, home: &str, rtt: Duration) {
        self.rtt.insert(home.to_string(), rtt);
    }

    /// A local session subscribes to `key` (homed on `home`) at `layer`.
    pub fn subscribe(&mut self, key: &TrackKey, home: &str, layer: Option<String>, now: Instant) {
        let imp = self.tracks.entry(key.clone()).or_insert_with(|| Import {
            home: home.to_string(),
            layers: BTreeMap::new(),
            asked: Vec::new(),
            flows: Vec::new(),
            last_sent: now,
            keyframe_at: HashMap::new(),
        });
        *imp.layers.entry(layer).or_insert(0) += 1;
        Self::ask(&mut self.out, key, imp, now, false);
    }

    /// Sets the local demand for `key` at once: how many local subscriptions want each layer
    /// (empty: none, the import ends).
    pub fn set_demand(
        &mut self,
        key: &TrackKey,
        home: &str,
        layers: &[(Option<String>, usize)],
        now: Instant,
    ) {
        let want: BTreeMap<Option<String>, usize> =
            layers.iter().filter(|(_, n)| *n > 0).cloned().collect();
        if want.is_empty() {
            if let Some(imp) = self.tracks.get(key) {
                let layers: Vec<Option<String>> = imp.layers.keys().cloned().collect();
                for l in layers {
                    let n = self.tracks.get(key).and_then(|i| i.layers.get(&l)).copied();
                    for _ in 0..n.unwrap_or(0) {
                        self.unsubscribe(key, l.clone(), now);
                    }
                }
            }
            return;
        }
        let imp = self.tracks.entry(key.clone()).or_insert_with(|| Import {
            home: home.to_string(),
            layers: BTreeMap::new(),
            asked: Vec::new(),
            flows: Vec::new(),
            last_sent: now,
            keyframe_at: HashMap::new(),
        });
        imp.layers = want;
        Self::ask(&mut self.out, key, imp, now, false);
    }

    /// A local subscriber switches its target layer.
    pub fn change_layer(
        &mut self,
        key: &TrackKey,
        from: Option<String>,
        to: Option<String>,
        now: Instant,
    ) {
        let Some(imp) = self.tracks.get_mut(key) else {
            return;
        };
        if let Some(n) = imp.layers.get_mut(&from) {
            *n -= 1;
            if *n == 0 {
                imp.layers.remove(&from);
            }
        }
        *imp.layers.entry(to).or_insert(0) += 1;
        Self::ask(&mut self.out, key, imp, now, false);
    }

    /// A local subscriber of `layer` leaves; the last one ends the import.
    pub fn unsubscribe(&mut self, key: &TrackKey, layer: Option<String>, now: Instant) {
        let Some(imp) = self.tracks.get_mut(key) else {
            return;
        };
        if let Some(n) = imp.layers.get_mut(&layer) {
            *n -= 1;
            if *n == 0 {
                imp.layers.remove(&layer);
            }
        }
        if imp.layers.is_empty() {
            let imp = self.tracks.remove(key).expect("present");
            for f in &imp.flows {
                self.flows.remove(&(imp.home.clone(), *f));
            }
            self.out.push_back((
                imp.home,
                Msg::Unsubscribe {
                    room: key.room.clone(),
                    track: key.track.clone(),
                },
            ));
        } else {
            Self::ask(&mut self.out, key, imp, now, false);
        }
    }

    /// Sends `Subscribe` when the wanted layers changed (or `force`).
    fn ask(
        out: &mut VecDeque<(String, Msg)>,
        key: &TrackKey,
        imp: &mut Import,
        now: Instant,
        force: bool,
    ) {
        let want: Vec<Option<String>> = imp.layers.keys().cloned().collect();
        if !force && want == imp.asked {
            return;
        }
        imp.asked = want.clone();
        imp.last_sent = now;
        out.push_back((
            imp.home.clone(),
            Msg::Subscribe {
                room: key.room.clone(),
                track: key.track.clone(),
                layers: want,
            },
        ));
    }

    /// A message from `from`; the ones about imports are handled here.
    pub fn on_msg(&mut self, from: &str, msg: &Msg) -> Option<ImportEvent> {
        match msg {
            Msg::Flows {
                room,
                track,
                flows,
                format,
            } => {
                let key = TrackKey::new(room, track);
                let imp = self.tracks.get_mut(&key).filter(|i| i.home == from)?;
                for f in imp.flows.drain(..) {
                    self.flows.remove(&(from.to_string(), f));
                }
                let mut displaced = Vec::new();
                for d in flows {
                    imp.flows.push(d.flow);
                    let prev = self.flows.insert(
                        (from.to_string(), d.flow),
                        Flow {
                            key: key.clone(),
                            layer: d.layer.clone(),
                            highest: None,
                            missing: BTreeMap::new(),
                        },
                    );
                    // A flow id reused for another track: the old one is gone at the home.
                    if let Some(p) = prev.filter(|p| p.key != key) {
                        displaced.push((p.key, d.flow));
                    }
                }
                for (k, flow) in displaced {
                    if let Some(other) = self.tracks.get_mut(&k) {
                        other.flows.retain(|f| *f != flow);
                    }
                }
                Some(ImportEvent::Ready {
                    key,
                    format: format.clone(),
                    flows: flows.clone(),
                })
            }
            Msg::Refused {
                room,
                track,
                reason,
            } => {
                let key = TrackKey::new(room, track);
                self.drop_import(&key, from)?;
                Some(ImportEvent::Refused {
                    key,
                    reason: reason.clone(),
                })
            }
            Msg::Ended { room, track } => {
                let key = TrackKey::new(room, track);
                self.drop_import(&key, from)?;
                Some(ImportEvent::Ended { key })
            }
            _ => None,
        }
    }

    fn drop_import(&mut self, key: &TrackKey, home: &str) -> Option<()> {
        if self.tracks.get(key)?.home != home {
            return None;
        }
        let imp = self.tracks.remove(key)?;
        for f in imp.flows {
            self.flows.remove(&(home.to_string(), f));
        }
        Some(())
    }

    /// The trunk to `home` closed: its flows are void until the subscriptions are answered
    /// again. They are repeated at once (the trunk reopens on demand) and on every refresh.
    pub fn home_lost(&mut self, home: &str, now: Instant) {
        self.flows.retain(|(h, _), _| h != home);
        for (key, imp) in self.tracks.iter_mut().filter(|(_, i)| i.home == home) {
            imp.flows.clear();
            Self::ask(&mut self.out, key, imp, now, true);
        }
    }

    /// A media packet from `home` on `flow` with RTP sequence number `seq`: which track and
    /// layer it belongs to, and whether it fills a gap. `None` for an unknown flow.
    pub fn on_packet(
        &mut self,
        home: &str,
        flow: u32,
        seq: u16,
        now: Instant,
    ) -> Option<(&TrackKey, Option<&str>, Arrival)> {
        let Some(f) = self.flows.get_mut(&(home.to_string(), flow)) else {
            self.stats.unknown_flow += 1;
            return None;
        };
        self.stats.packets += 1;
        let arrival = match f.highest {
            None => {
                f.highest = Some(u64::from(seq) + 0x1_0000);
                Arrival::New
            }
            Some(h) => {
                let ext = extend(seq, h);
                if ext > h {
                    let gap = ext - h - 1;
                    if gap > self.cfg.max_gap {
                        // A restarted or switched stream, not loss.
                        f.missing.clear();
                    } else {
                        for s in h + 1..ext {
                            f.missing.insert(
                                s,
                                Miss {
                                    due: now + self.cfg.nack_delay,
                                    tries: 0,
                                },
                            );
                        }
                    }
                    f.highest = Some(ext);
                    // Forget what is too old to matter.
                    let floor = ext.saturating_sub(self.cfg.max_gap * 4);
                    while f.missing.first_key_value().is_some_and(|(s, _)| *s < floor) {
                        f.missing.pop_first();
                        self.stats.lost += 1;
                    }
                    Arrival::New
                } else if f.missing.remove(&ext).is_some() {
                    self.stats.recovered += 1;
                    Arrival::Recovered
                } else {
                    self.stats.duplicates += 1;
                    Arrival::Duplicate
                }
            }
        };
        Some((&f.key, f.layer.as_deref(), arrival))
    }

    /// A local subscriber needs a keyframe of `key` at `layer`: forwarded to the home unless
    /// one was asked within `keyframe_interval`. True if a request went out.
    pub fn keyframe(&mut self, key: &TrackKey, layer: Option<String>, now: Instant) -> bool {
        let Some(imp) = self.tracks.get_mut(key) else {
            return false;
        };
        if let Some(at) = imp.keyframe_at.get(&layer) {
            if now.saturating_duration_since(*at) < self.cfg.keyframe_interval {
                self.stats.keyframes_merged += 1;
                return false;
            }
        }
        imp.keyframe_at.insert(layer.clone(), now);
        self.stats.keyframes_sent += 1;
        self.out.push_back((
            imp.home.clone(),
            Msg::Keyframe {
                room: key.room.clone(),
                track: key.track.clone(),
                layer,
            },
        ));
        true
    }

    /// NACKs that are due, subscriptions to refresh, and what is given up as lost.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (key, imp) in self.tracks.iter_mut() {
            if now.saturating_duration_since(imp.last_sent) >= self.cfg.refresh {
                Self::ask(&mut self.out, key, imp, now, true);
            }
        }
        let mut nacks: BTreeMap<(String, u32), Vec<u16>> = BTreeMap::new();
        for ((home, flow), f) in self.flows.iter_mut() {
            let retry = self
                .rtt
                .get(home)
                .map(|r| r.mul_f32(1.5))
                .unwrap_or_default()
                .max(self.cfg.nack_delay);
            let mut gone = Vec::new();
            for (seq, m) in f.missing.iter_mut() {
                if m.due > now {
                    continue;
                }
                if m.tries >= self.cfg.nack_tries {
                    gone.push(*seq);
                    continue;
                }
                m.tries += 1;
                m.due = now + retry;
                nacks
                    .entry((home.clone(), *flow))
                    .or_default()
                    .push(*seq as u16);
            }
            for s in gone {
                f.missing.remove(&s);
                self.stats.lost += 1;
            }
        }
        for ((home, flow), seqs) in nacks {
            self.stats.nacked += seqs.len() as u64;
            self.out.push_back((home, Msg::Nack { flow, seqs }));
        }
    }

    /// When [`Imports::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let refresh = self
            .tracks
            .values()
            .map(|i| i.last_sent + self.cfg.refresh)
            .min();
        let nack = self
            .flows
            .values()
            .flat_map(|f| f.missing.values().map(|m| m.due))
            .min();
        [refresh, nack].into_iter().flatten().min()
    }

    /// The next message to send, and to which node.
    pub fn poll_msg(&mut self) -> Option<(String, Msg)> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TrackKey {
        TrackKey::new("arena", "cam")
    }

    fn format() -> TrackFormat {
        TrackFormat {
            kind: "video".into(),
            codec: "VP8".into(),
            clock_rate: 90_000,
            channels: None,
            pt: 96,
            fmtp: String::new(),
        }
    }

    fn flows(room: &str, track: &str, ids: &[(u32, Option<&str>)]) -> Msg {
        Msg::Flows {
            room: room.into(),
            track: track.into(),
            flows: ids
                .iter()
                .map(|(f, l)| FlowDesc {
                    flow: *f,
                    layer: l.map(String::from),
                })
                .collect(),
            format: format(),
        }
    }

    fn drain(i: &mut Imports) -> Vec<(String, Msg)> {
        std::iter::from_fn(|| i.poll_msg()).collect()
    }

    fn subscribe_msg(layers: &[Option<&str>]) -> (String, Msg) {
        (
            "fra".into(),
            Msg::Subscribe {
                room: "arena".into(),
                track: "cam".into(),
                layers: layers.iter().map(|l| l.map(String::from)).collect(),
            },
        )
    }

    #[test]
    fn one_subscription_per_track_however_many_local_subscribers() {
        let t0 = Instant::now();
        let mut i = Imports::new(ImportConfig::default());
        for _ in 0..50 {
            i.subscribe(&key(), "fra", None, t0);
        }
        assert_eq!(drain(&mut i), [subscribe_msg(&[None])]);
        assert_eq!(i.counts(), (1, 50));
        for _ in 0..49 {
            i.unsubscribe(&key(), None, t0);
        }
        assert!(drain(&mut i).is_empty(), "unsubscribed while one remains");
        i.unsubscribe(&key(), None, t0);
        assert_eq!(
            drain(&mut i),
            [(
                "fra".to_string(),
                Msg::Unsubscribe {
                    room: "arena".into(),
                    track: "cam".into()
                }
            )]
        );
        assert_eq!(i.counts(), (0, 0));
        // A stray unsubscribe is harmless.
        i.unsubscribe(&key(), None, t0);
        assert!(drain(&mut i).is_empty());
    }

    #[test]
    fn demand_set_at_once_subscribes_changes_and_ends() {
        let t0 = Instant::now();
        let mut i = Imports::new(ImportConfig::default());
        i.set_demand(
            &key(),
            "fra",
            &[(Some("h".into()), 2), (Some("l".into()), 0)],
            t0,
        );
        assert_eq!(drain(&mut i), [subscribe_msg(&[Some("h")])]);
        assert_eq!(i.counts(), (1, 2));
        i.set_demand(&key(), "fra", &[(Some("h".into()), 5)], t0);
        assert!(drain(&mut i).is_empty(), "same layers: nothing to say");
        i.set_demand(&key(), "fra", &[(Some("l".into()), 1)], t0);
        assert_eq!(drain(&mut i), [subscribe_msg(&[Some("l")])]);
        i.set_demand(&key(), "fra", &[], t0);
        assert_eq!(
            drain(&mut i),
            [(
                "fra".to_string(),
                Msg::Unsubscribe {
                    room: "arena".into(),
                    track: "cam".into()
                }
            )]
        );
        assert_eq!(i.counts(), (0, 0));
    }

    #[test]
    fn layers_asked_are_the_union_of_local_targets() {
        let t0 = Instant::now();
        let mut i = Imports::new(ImportConfig::default());
        i.subscribe(&key(), "fra", Some("l".into()), t0);
        i.subscribe(&key(), "fra", Some("l".into()), t0);
        i.subscribe(&key(), "fra", Some("h".into()), t0);
        assert_eq!(
            drain(&mut i),
            [
                subscribe_msg(&[Some("l")]),
                subscribe_msg(&[Some("h"), Some("l")])
            ]
        );
        // The only "h" subscriber drops to "l": the home stops sending "h".
        i.change_layer(&key(), Some("h".into()), Some("l".into()), t0);
        assert_eq!(drain(&mut i), [subscribe_msg(&[Some("l")])]);
        i.change_layer(&key(), Some("l".into()), Some("l".into()), t0);
        assert!(drain(&mut i).is_empty());
    }

    #[test]
    fn packets_map_to_their_track_and_unknown_flows_are_counted() {
        let t0 = Instant::now();
        let mut i = Imports::new(ImportConfig::default());
        i.subscribe(&key(), "fra", None, t0);
        assert!(i.on_packet("fra", 3, 1, t0).is_none());
        let ev = i.on_msg("fra", &flows("arena", "cam", &[(3, None)]));
        assert!(matches!(ev, Some(ImportEvent::Ready { .. })));
        // Flows from a node that is not the home are ignored.
        assert_eq!(i.on_msg("sgp", &flows("arena", "cam", &[(9, None)])), None);
        let (k, layer, a) = i.on_packet("fra", 3, 10, t0).unwrap();
        assert_eq!((k, layer, a), (&key(), None, Arrival::New));
        assert!(i.on_packet("sgp", 3, 11, t0).is_none());
        assert_eq!(i.stats().unknown_flow, 2);
        // After the last unsubscribe the flow is void.
        i.unsubscribe(&key(), None, t0);
        assert!(i.on_packet("fra", 3, 11, t0).is_none());
    }

    #[test]
    fn trunk_loss_is_nacked_then_recovered_or_counted_lost() {
        let t0 = Instant::now();
        let cfg = ImportConfig::default();
        let mut i = Imports::new(cfg);
        i.subscribe(&key(), "fra", None, t0);
        i.on_msg("fra", &flows("arena", "cam", &[(1, None)]));
        i.set_rtt("fra", Duration::from_millis(20));
        drain(&mut i);
        // 65534, 65535, then 3: 0, 1, 2 lost across the wrap.
        i.on_packet("fra", 1, 65534, t0);
        i.on_packet("fra", 1, 65535, t0);
        i.on_packet("fra", 1, 3, t0);
        // Not before the reorder delay.
        i.handle_timeout(t0 + Duration::from_millis(1));
        assert!(drain(&mut i).is_empty());
        let t1 = t0 + cfg.nack_delay;
        assert_eq!(i.poll_timeout(), Some(t1));
        i.handle_timeout(t1);
        assert_eq!(
            drain(&mut i),
            [(
                "fra".to_string(),
                Msg::Nack {
                    flow: 1,
                    seqs: vec![0, 1, 2]
                }
            )]
        );
        // 1 is retransmitted; 0 and 2 are asked again after 1.5 RTT, then given up.
        assert_eq!(i.on_packet("fra", 1, 1, t1).unwrap().2, Arrival::Recovered);
        assert_eq!(i.on_packet("fra", 1, 1, t1).unwrap().2, Arrival::Duplicate);
        let t2 = t1 + Duration::from_millis(30);
        i.handle_timeout(t2 - Duration::from_millis(1));
        assert!(drain(&mut i).is_empty());
        i.handle_timeout(t2);
        assert_eq!(
            drain(&mut i),
            [(
                "fra".to_string(),
                Msg::Nack {
                    flow: 1,
                    seqs: vec![0, 2]
                }
            )]
        );
        let t3 = t2 + Duration::from_millis(30);
        i.handle_timeout(t3);
        drain(&mut i);
        i.handle_timeout(t3 + Duration::from_millis(30));
        assert!(drain(&mut i).is_empty());
        let s = i.stats();
        assert_eq!((s.nacked, s.recovered, s.lost), (3 + 2 + 2, 1, 2));
        assert_eq!(i.poll_timeout(), Some(t0 + cfg.refresh));
    }

    #[test]
    fn a_jump_is_a_restart_not_loss() {
        let t0 = Instant::now();
        let mut i = Imports::new(ImportConfig::default());
        i.subscribe(&key(), "fra", None, t0);
        i.on_msg("fra", &flows("arena", "cam", &[(1, None)]));
        i.on_packet("fra", 1, 100, t0);
        i.on_packet("fra", 1, 30_000, t0);
        i.handle_timeout(t0 + Duration::from_secs(1));
        assert!(drain(&mut i)
            .iter()
            .all(|(_, m)| !matches!(m, Msg::Nack { .. })));
        assert_eq!(i.stats().lost, 0);
    }

    #[test]
    fn keyframe_requests_are_merged_per_track_and_layer() {
        let t0 = Instant::now();
        let mut i = Imports::new(ImportConfig::default());
        i.subscribe(&key(), "fra", None, t0);
        drain(&mut i);
        assert!(i.keyframe(&key(), None, t0));
        for ms in [1, 200, 999] {
            assert!(!i.keyframe(&key(), None, t0 + Duration::from_millis(ms)));
        }
        // Another layer is its own request.
        assert!(i.keyframe(&key(), Some("h".into()), t0));
        assert!(i.keyframe(&key(), None, t0 + Duration::from_millis(1000)));
        assert_eq!(
            (i.stats().keyframes_sent, i.stats().keyframes_merged),
            (3, 3)
        );
        assert_eq!(drain(&mut i).len(), 3);
        // No import, no request.
        assert!(!i.keyframe(&TrackKey::new("arena", "other"), None, t0));
    }

    #[test]
    fn subscriptions_are_refreshed_and_repeated_when_the_home_comes_back() {
        let t0 = Instant::now();
        let cfg = ImportConfig::default();
        let mut i = Imports::new(cfg);
        i.subscribe(&key(), "fra", None, t0);
        i.on_msg("fra", &flows("arena", "cam", &[(1, None)]));
        drain(&mut i);
        i.handle_timeout(t0 + cfg.refresh);
        assert_eq!(drain(&mut i), [subscribe_msg(&[None])]);
        i.home_lost("fra", t0 + cfg.refresh);
        assert_eq!(drain(&mut i), [subscribe_msg(&[None])]);
        assert!(i.on_packet("fra", 1, 5, t0).is_none(), "flows void");
        assert_eq!(i.counts(), (1, 1));
    }

    #[test]
    fn refused_and_ended_drop_the_import() {
        let t0 = Instant::now();
        let mut i = Imports::new(ImportConfig::default());
        i.subscribe(&key(), "fra", None, t0);
        let refused = Msg::Refused {
            room: "arena".into(),
            track: "cam".into(),
            reason: "no such track".into(),
        };
        assert_eq!(i.on_msg("sgp", &refused), None);
        assert!(matches!(
            i.on_msg("fra", &refused),
            Some(ImportEvent::Refused { .. })
        ));
        assert_eq!(i.counts(), (0, 0));
        i.subscribe(&key(), "fra", None, t0);
        let ended = Msg::Ended {
            room: "arena".into(),
            track: "cam".into(),
        };
        assert_eq!(
            i.on_msg("fra", &ended),
            Some(ImportEvent::Ended { key: key() })
        );
        assert_eq!(i.counts(), (0, 0));
    }

    #[test]
    fn sequence_extension_is_nearest() {
        assert_eq!(extend(5, 0x1_fff0), 0x2_0005);
        assert_eq!(extend(0xfff0, 0x2_0005), 0x1_fff0);
        assert_eq!(extend(100, 0x1_0064), 0x1_0064);
    }
}
