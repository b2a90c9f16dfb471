//! The home side of remote subscriptions (sans-IO, driven by the caller's clock).
//!
//! A home node sends each packet of a track once per remote node that subscribed to it, on
//! the flow it assigned to that node's subscription of that layer, whatever number of sessions
//! the remote node serves. It answers keyframe requests (merged across remote nodes to one per
//! `keyframe_interval` per track and layer) and NACKs (from its own cache). A subscription not
//! refreshed for three refresh periods expires (an edge that vanished without a goodbye).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::imports::TrackKey;
use crate::wire::{FlowDesc, Msg, TrackFormat, MAX_FLOW};

#[derive(Debug, Clone, Copy)]
pub struct ExportConfig {
    pub keyframe_interval: Duration,
    /// The edges' refresh period; a subscription silent for three of them expires.
    pub refresh: Duration,
    /// Subscriptions one remote node may hold.
    pub max_per_node: usize,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            keyframe_interval: Duration::from_secs(1),
            refresh: Duration::from_secs(5),
            max_per_node: 4096,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportStats {
    pub subscribed: u64,
    pub refused: u64,
    pub expired: u64,
    pub keyframes_forwarded: u64,
    pub keyframes_merged: u64,
    pub nacks: u64,
    /// NACKs or keyframe requests for flows or tracks the node does not export to the sender.
    pub unknown: u64,
}

/// What the caller must do after a remote node's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportEvent {
    /// Ask the publisher for a keyframe of this layer.
    Keyframe {
        key: TrackKey,
        layer: Option<String>,
    },
    /// Retransmit these packets of `key`'s `layer` to `node` on `flow` (from the home's cache).
    Retransmit {
        node: String,
        flow: u32,
        key: TrackKey,
        layer: Option<String>,
        seqs: Vec<u16>,
    },
    /// The first remote node subscribed to `key` (the publisher's media must reach the trunk).
    Started { key: TrackKey },
    /// The last remote node left `key`.
    Stopped { key: TrackKey },
}

struct Sink {
    node: String,
    flows: Vec<(Option<String>, u32)>,
    refreshed: Instant,
}

/// A track's description, from the caller's SFU.
pub struct Exportable {
    pub format: TrackFormat,
    /// The track's layers (`[None]` for a track without simulcast).
    pub layers: Vec<Option<String>>,
}

pub struct Exports {
    cfg: ExportConfig,
    sinks: HashMap<TrackKey, Vec<Sink>>,
    by_flow: HashMap<(String, u32), (TrackKey, Option<String>)>,
    next_flow: HashMap<String, u32>,
    keyframe_at: HashMap<(TrackKey, Option<String>), Instant>,
    out: VecDeque<(String, Msg)>,
    stats: ExportStats,
}

impl Exports {
    pub fn new(cfg: ExportConfig) -> Self {
        Exports {
            cfg,
            sinks: HashMap::new(),
            by_flow: HashMap::new(),
            next_flow: HashMap::new(),
            keyframe_at: HashMap::new(),
            out: VecDeque::new(),
            stats: ExportStats::default(),
        }
    }

    pub fn stats(&self) -> ExportStats {
        self.stats
    }

    /// (tracks exported, subscriptions of remote nodes)
    pub fn counts(&self) -> (usize, usize) {
        (self.sinks.len(), self.sinks.values().map(Vec::len).sum())
    }

    /// Subscriptions `node` holds.
    pub fn of_node(&self, node: &str) -> usize {
        self.sinks
            .values()
            .filter(|s| s.iter().any(|k| k.node == node))
            .count()
    }

    /// Where a packet of `key` at `layer` goes: (node, flow) once per subscribed node.
    pub fn sinks<'a>(
        &'a self,
        key: &TrackKey,
        layer: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a str, u32)> + 'a {
        self.sinks.get(key).into_iter().flat_map(move |v| {
            v.iter().filter_map(move |s| {
                s.flows
                    .iter()
                    .find(|(l, _)| l.as_deref() == layer)
                    .map(|(_, f)| (s.node.as_str(), *f))
            })
        })
    }

    /// Whether any remote node subscribed to `key`.
    pub fn exported(&self, key: &TrackKey) -> bool {
        self.sinks.contains_key(key)
    }

    fn flow_for(&mut self, node: &str) -> u32 {
        let n = self.next_flow.entry(node.to_string()).or_insert(0);
        // Flow ids are per connection; after 2^30 they wrap past ones still in use.
        loop {
            *n = if *n >= MAX_FLOW { 1 } else { *n + 1 };
            if !self.by_flow.contains_key(&(node.to_string(), *n)) {
                return *n;
            }
        }
    }

    /// A message from remote node `from`. `lookup` describes a local track (None: no such
    /// track here).
    pub fn on_msg(
        &mut self,
        from: &str,
        msg: &Msg,
        now: Instant,
        lookup: impl FnOnce(&TrackKey) -> Option<Exportable>,
    ) -> Option<ExportEvent> {
        match msg {
            Msg::Subscribe {
                room,
                track,
                layers,
            } => {
                let key = TrackKey::new(room, track);
                let Some(ex) = lookup(&key) else {
                    self.refuse(from, &key, "no such track on its home node");
                    return None;
                };
                let mut want: Vec<Option<String>> = layers
                    .iter()
                    .filter(|l| ex.layers.contains(l))
                    .cloned()
                    .collect();
                want.sort();
                want.dedup();
                if want.is_empty() {
                    self.refuse(from, &key, "none of the layers asked for exist");
                    return None;
                }
                let existing = self
                    .sinks
                    .get(&key)
                    .and_then(|v| v.iter().position(|s| s.node == from));
                if existing.is_none() && self.of_node(from) >= self.cfg.max_per_node {
                    self.refuse(from, &key, "too many subscriptions from this node");
                    return None;
                }
                let first = !self.sinks.contains_key(&key);
                let mut flows = Vec::with_capacity(want.len());
                let old: Vec<(Option<String>, u32)> = match existing {
                    Some(i) => self
                        .sinks
                        .get(&key)
                        .map(|v| v[i].flows.clone())
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                for l in &want {
                    let f = match old.iter().find(|(ol, _)| ol == l) {
                        Some((_, f)) => *f,
                        None => {
                            let f = self.flow_for(from);
                            self.by_flow
                                .insert((from.to_string(), f), (key.clone(), l.clone()));
                            f
                        }
                    };
                    flows.push((l.clone(), f));
                }
                for (l, f) in &old {
                    if !want.contains(l) {
                        self.by_flow.remove(&(from.to_string(), *f));
                    }
                }
                let v = self.sinks.entry(key.clone()).or_default();
                match existing {
                    Some(i) => {
                        v[i].flows = flows.clone();
                        v[i].refreshed = now;
                    }
                    None => {
                        self.stats.subscribed += 1;
                        v.push(Sink {
                            node: from.to_string(),
                            flows: flows.clone(),
                            refreshed: now,
                        })
                    }
                }
                // Every subscription is answered, refreshes too: an edge that reconnected
                // repeats its subscriptions and needs its flows again.
                self.out.push_back((
                    from.to_string(),
                    Msg::Flows {
                        room: key.room.clone(),
                        track: key.track.clone(),
                        flows: flows
                            .into_iter()
                            .map(|(layer, flow)| FlowDesc { flow, layer })
                            .collect(),
                        format: ex.format,
                    },
                ));
                first.then_some(ExportEvent::Started { key })
            }
            Msg::Unsubscribe { room, track } => {
                let key = TrackKey::new(room, track);
                self.remove_sink(&key, from)
            }
            Msg::Keyframe { room, track, layer } => {
                let key = TrackKey::new(room, track);
                if !self
                    .sinks
                    .get(&key)
                    .is_some_and(|v| v.iter().any(|s| s.node == from))
                {
                    self.stats.unknown += 1;
                    return None;
                }
                let slot = (key.clone(), layer.clone());
                if let Some(at) = self.keyframe_at.get(&slot) {
                    if now.saturating_duration_since(*at) < self.cfg.keyframe_interval {
                        self.stats.keyframes_merged += 1;
                        return None;
                    }
                }
                self.keyframe_at.insert(slot, now);
                self.stats.keyframes_forwarded += 1;
                Some(ExportEvent::Keyframe {
                    key,
                    layer: layer.clone(),
                })
            }
            Msg::Nack { flow, seqs } => {
                let Some((key, layer)) = self.by_flow.get(&(from.to_string(), *flow)) else {
                    self.stats.unknown += 1;
                    return None;
                };
                self.stats.nacks += seqs.len() as u64;
                Some(ExportEvent::Retransmit {
                    node: from.to_string(),
                    flow: *flow,
                    key: key.clone(),
                    layer: layer.clone(),
                    seqs: seqs.clone(),
                })
            }
            _ => None,
        }
    }

    fn refuse(&mut self, to: &str, key: &TrackKey, reason: &str) {
        self.stats.refused += 1;
        self.out.push_back((
            to.to_string(),
            Msg::Refused {
                room: key.room.clone(),
                track: key.track.clone(),
                reason: reason.into(),
            },
        ));
    }

    fn remove_sink(&mut self, key: &TrackKey, node: &str) -> Option<ExportEvent> {
        let v = self.sinks.get_mut(key)?;
        let i = v.iter().position(|s| s.node == node)?;
        let s = v.remove(i);
        for (_, f) in s.flows {
            self.by_flow.remove(&(node.to_string(), f));
        }
        if v.is_empty() {
            self.sinks.remove(key);
            self.keyframe_at.retain(|(k, _), _| k != key);
            return Some(ExportEvent::Stopped { key: key.clone() });
        }
        None
    }

    /// The track ended here: every remote subscriber is told, the export is gone.
    pub fn track_ended(&mut self, key: &TrackKey) {
        let Some(v) = self.sinks.remove(key) else {
            return;
        };
        for s in v {
            for (_, f) in s.flows {
                self.by_flow.remove(&(s.node.clone(), f));
            }
            self.out.push_back((
                s.node,
                Msg::Ended {
                    room: key.room.clone(),
                    track: key.track.clone(),
                },
            ));
        }
        self.keyframe_at.retain(|(k, _), _| k != key);
    }

    /// The trunk to `node` closed: its subscriptions end (it repeats them when it is back).
    pub fn node_lost(&mut self, node: &str) -> Vec<ExportEvent> {
        let keys: Vec<TrackKey> = self
            .sinks
            .iter()
            .filter(|(_, v)| v.iter().any(|s| s.node == node))
            .map(|(k, _)| k.clone())
            .collect();
        self.next_flow.remove(node);
        keys.iter()
            .filter_map(|k| self.remove_sink(k, node))
            .collect()
    }

    /// Expires subscriptions not refreshed for three refresh periods.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<ExportEvent> {
        let limit = self.cfg.refresh * 3;
        let stale: Vec<(TrackKey, String)> = self
            .sinks
            .iter()
            .flat_map(|(k, v)| {
                v.iter()
                    .filter(|s| now.saturating_duration_since(s.refreshed) > limit)
                    .map(|s| (k.clone(), s.node.clone()))
            })
            .collect();
        self.stats.expired += stale.len() as u64;
        stale
            .iter()
            .filter_map(|(k, n)| self.remove_sink(k, n))
            .collect()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sinks
            .values()
            .flat_map(|v| v.iter().map(|s| s.refreshed + self.cfg.refresh * 3))
            .min()
    }

    pub fn poll_msg(&mut self) -> Option<(String, Msg)> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imports::{ImportConfig, ImportEvent, Imports};

    fn key() -> TrackKey {
        TrackKey::new("arena", "cam")
    }

    fn cam(k: &TrackKey) -> Option<Exportable> {
        (k == &key()).then(|| Exportable {
            format: TrackFormat {
                kind: "video".into(),
                codec: "VP8".into(),
                clock_rate: 90_000,
                channels: None,
                pt: 96,
                fmtp: String::new(),
            },
            layers: vec![Some("h".into()), Some("l".into())],
        })
    }

    /// Carries messages between a home and several edges until all are quiet.
    fn pump(
        home: &mut Exports,
        edges: &mut [(&str, &mut Imports)],
        now: Instant,
    ) -> Vec<ExportEvent> {
        let mut events = Vec::new();
        for _ in 0..100 {
            let mut moved = false;
            for (name, e) in edges.iter_mut() {
                while let Some((to, m)) = e.poll_msg() {
                    assert_eq!(to, "fra");
                    moved = true;
                    if let Some(ev) = home.on_msg(name, &m, now, cam) {
                        events.push(ev);
                    }
                }
            }
            while let Some((to, m)) = home.poll_msg() {
                moved = true;
                let (_, e) = edges.iter_mut().find(|(n, _)| *n == to).unwrap();
                e.on_msg("fra", &m);
            }
            if !moved {
                return events;
            }
        }
        panic!("messages never settled");
    }

    #[test]
    fn each_remote_node_gets_one_copy_of_the_layers_it_uses() {
        let t0 = Instant::now();
        let mut home = Exports::new(ExportConfig::default());
        let mut sgp = Imports::new(ImportConfig::default());
        let mut gru = Imports::new(ImportConfig::default());
        for _ in 0..100 {
            sgp.subscribe(&key(), "fra", Some("h".into()), t0);
        }
        gru.subscribe(&key(), "fra", Some("l".into()), t0);
        let ev = pump(&mut home, &mut [("sgp", &mut sgp), ("gru", &mut gru)], t0);
        assert_eq!(ev, [ExportEvent::Started { key: key() }]);
        let h: Vec<_> = home.sinks(&key(), Some("h")).collect();
        let l: Vec<_> = home.sinks(&key(), Some("l")).collect();
        assert_eq!(h.len(), 1, "one copy of h for 100 subscribers on sgp");
        assert_eq!((h[0].0, l[0].0, l.len()), ("sgp", "gru", 1));
        // The edges map what arrives to the track.
        assert!(sgp.on_packet("fra", h[0].1, 1, t0).is_some());
        assert!(gru.on_packet("fra", l[0].1, 1, t0).is_some());
        assert_eq!(home.counts(), (1, 2));
        // All of sgp's subscribers leave: sgp unsubscribes, gru keeps its copy.
        for _ in 0..100 {
            sgp.unsubscribe(&key(), Some("h".into()), t0);
        }
        assert!(pump(&mut home, &mut [("sgp", &mut sgp), ("gru", &mut gru)], t0).is_empty());
        assert_eq!(home.sinks(&key(), Some("h")).count(), 0);
        gru.unsubscribe(&key(), Some("l".into()), t0);
        let ev = pump(&mut home, &mut [("sgp", &mut sgp), ("gru", &mut gru)], t0);
        assert_eq!(ev, [ExportEvent::Stopped { key: key() }]);
        assert_eq!(home.counts(), (0, 0));
    }

    #[test]
    fn unknown_tracks_and_layers_are_refused() {
        let t0 = Instant::now();
        let mut home = Exports::new(ExportConfig::default());
        let mut sgp = Imports::new(ImportConfig::default());
        sgp.subscribe(&TrackKey::new("arena", "nope"), "fra", None, t0);
        sgp.subscribe(&key(), "fra", Some("x".into()), t0);
        let (_, m) = sgp.poll_msg().unwrap();
        assert_eq!(home.on_msg("sgp", &m, t0, cam), None);
        let (_, m) = sgp.poll_msg().unwrap();
        assert_eq!(home.on_msg("sgp", &m, t0, cam), None);
        let mut refusals = Vec::new();
        while let Some((to, m)) = home.poll_msg() {
            assert_eq!(to, "sgp");
            refusals.push(sgp.on_msg("fra", &m));
        }
        assert!(matches!(
            &refusals[..],
            [Some(ImportEvent::Refused { .. }), Some(ImportEvent::Refused { reason, .. })]
                if reason.contains("layers")
        ));
        assert_eq!(home.stats().refused, 2);
        assert_eq!(sgp.counts(), (0, 0));
    }

    #[test]
    fn keyframes_merge_across_nodes_and_nacks_name_the_flow() {
        let t0 = Instant::now();
        let mut home = Exports::new(ExportConfig::default());
        let mut sgp = Imports::new(ImportConfig::default());
        let mut gru = Imports::new(ImportConfig::default());
        sgp.subscribe(&key(), "fra", Some("h".into()), t0);
        gru.subscribe(&key(), "fra", Some("h".into()), t0);
        pump(&mut home, &mut [("sgp", &mut sgp), ("gru", &mut gru)], t0);
        sgp.keyframe(&key(), Some("h".into()), t0);
        gru.keyframe(&key(), Some("h".into()), t0);
        let ev = pump(&mut home, &mut [("sgp", &mut sgp), ("gru", &mut gru)], t0);
        assert_eq!(
            ev,
            [ExportEvent::Keyframe {
                key: key(),
                layer: Some("h".into())
            }]
        );
        assert_eq!(home.stats().keyframes_merged, 1);
        let (_, flow) = home
            .sinks(&key(), Some("h"))
            .find(|s| s.0 == "sgp")
            .unwrap();
        let nack = Msg::Nack {
            flow,
            seqs: vec![7, 8],
        };
        assert_eq!(
            home.on_msg("sgp", &nack, t0, cam),
            Some(ExportEvent::Retransmit {
                node: "sgp".into(),
                flow,
                key: key(),
                layer: Some("h".into()),
                seqs: vec![7, 8]
            })
        );
        // A NACK for a flow of another node, or a keyframe for a track not subscribed.
        assert_eq!(home.on_msg("xyz", &nack, t0, cam), None);
        let kf = Msg::Keyframe {
            room: "arena".into(),
            track: "cam".into(),
            layer: None,
        };
        assert_eq!(home.on_msg("xyz", &kf, t0, cam), None);
        assert_eq!(home.stats().unknown, 2);
    }

    #[test]
    fn silent_edges_expire_and_lost_nodes_are_dropped() {
        let t0 = Instant::now();
        let cfg = ExportConfig::default();
        let mut home = Exports::new(cfg);
        let mut sgp = Imports::new(ImportConfig::default());
        let mut gru = Imports::new(ImportConfig::default());
        sgp.subscribe(&key(), "fra", Some("h".into()), t0);
        gru.subscribe(&key(), "fra", Some("h".into()), t0);
        pump(&mut home, &mut [("sgp", &mut sgp), ("gru", &mut gru)], t0);
        // gru keeps refreshing, sgp went silent.
        let mut t = t0;
        while t < t0 + cfg.refresh * 4 {
            t += Duration::from_secs(1);
            gru.handle_timeout(t);
            pump(&mut home, &mut [("gru", &mut gru)], t);
            assert!(home.handle_timeout(t).is_empty());
        }
        assert_eq!(home.stats().expired, 1);
        assert_eq!(home.counts(), (1, 1));
        assert_eq!(home.node_lost("gru"), [ExportEvent::Stopped { key: key() }]);
        assert_eq!(home.counts(), (0, 0));
        assert_eq!(home.poll_timeout(), None);
    }

    #[test]
    fn an_ended_track_tells_every_edge() {
        let t0 = Instant::now();
        let mut home = Exports::new(ExportConfig::default());
        let mut sgp = Imports::new(ImportConfig::default());
        sgp.subscribe(&key(), "fra", Some("l".into()), t0);
        pump(&mut home, &mut [("sgp", &mut sgp)], t0);
        home.track_ended(&key());
        let (to, m) = home.poll_msg().unwrap();
        assert_eq!(to, "sgp");
        assert_eq!(
            sgp.on_msg("fra", &m),
            Some(ImportEvent::Ended { key: key() })
        );
        assert_eq!(home.counts(), (0, 0));
    }
}
