//! The trunk driver: between the SFU shards and the node's trunk endpoint
//! ([`meridian_trunk::Trunk`]), with the remote-subscription bookkeeping of both sides
//! ([`Imports`] for rooms this node serves as an edge, [`Exports`] for its own tracks other
//! nodes subscribed to).
//!
//! One task holds the bookkeeping. The per-packet paths bypass it where they can: a shard
//! sends an exported track's packets straight to the trunk using the sink table ([`Link`]);
//! a remote track's packets go from the trunk through this task (which tracks trunk loss) to
//! the room's shard.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use meridian_trunk::wire::{DeviceDesc, TrackDesc};
use meridian_trunk::{
    Arrival, Event, ExportConfig, ExportEvent, Exportable, Exports, ImportConfig, ImportEvent,
    Imports, Msg, TrackFormat, TrackKey, Trunk,
};
use tokio::sync::mpsc;

use super::sfu::SfuHandle;
use crate::sfu::messages::Audience;
use crate::sfu::{ExportInfo, ParticipantId, RemoteTrackSpec, TrunkOutput};

/// Unacknowledged room messages an edge keeps for re-sending after a trunk reconnect.
const MAX_PENDING: usize = 8192;

fn to_wire(a: Audience) -> meridian_trunk::Audience {
    match a {
        Audience::Devices => meridian_trunk::Audience::Devices,
        Audience::Players => meridian_trunk::Audience::Players,
    }
}

fn from_wire(a: meridian_trunk::Audience) -> Audience {
    match a {
        meridian_trunk::Audience::Devices => Audience::Devices,
        meridian_trunk::Audience::Players => Audience::Players,
    }
}

/// Local track → its layers → (node, flow): looked up by `&str` on every exported packet.
type SinkTable = HashMap<String, LayerSinks>;
/// Per layer, the (node, flow) pairs it goes to.
type LayerSinks = Vec<(Option<String>, Vec<(String, u32)>)>;

/// What a shard holds of the trunk.
pub struct Link {
    trunk: Trunk,
    /// (local track, layer) → (node, flow), from the export bookkeeping.
    sinks: RwLock<SinkTable>,
    driver: mpsc::UnboundedSender<Cmd>,
}

impl Link {
    pub(super) fn send_packet(&self, track: &str, layer: Option<String>, rtp: &[u8]) {
        let sinks = self.sinks.read().unwrap_or_else(|e| e.into_inner());
        let Some(layers) = sinks.get(track) else {
            return;
        };
        if let Some((_, v)) = layers.iter().find(|(l, _)| *l == layer) {
            for (node, flow) in v {
                let _ = self.trunk.send_datagram(node, *flow, rtp);
            }
        }
    }

    pub(super) fn to_driver(&self, o: TrunkOutput) {
        let _ = self.driver.send(Cmd::Shard(o));
    }
}

enum Cmd {
    Shard(TrunkOutput),
    Watch {
        room: String,
        home: String,
        /// Told once the room's state from its home is mirrored here.
        mirrored: tokio::sync::oneshot::Sender<()>,
    },
    Unwatch {
        room: String,
    },
}

/// Signaling's handle on the trunk: edge rooms are watched through it.
#[derive(Clone)]
pub struct TrunkHandle {
    trunk: Trunk,
    driver: mpsc::UnboundedSender<Cmd>,
}

/// While held, this node serves members of a room homed on another node: the room's devices
/// and tracks are mirrored here. Dropped with the session.
pub struct EdgeGuard {
    room: String,
    driver: mpsc::UnboundedSender<Cmd>,
    mirrored: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl EdgeGuard {
    /// Waits (at most `limit`) until the room's devices and tracks from its home are mirrored
    /// here, so that a session joining an edge sees them (and can subscribe) at once; true
    /// once they are. Immediate when another session of the room already brought them.
    pub async fn mirrored(&mut self, limit: Duration) -> bool {
        let Some(rx) = self.mirrored.take() else {
            return true;
        };
        matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(())))
    }
}

impl Drop for EdgeGuard {
    fn drop(&mut self) {
        let _ = self.driver.send(Cmd::Unwatch {
            room: std::mem::take(&mut self.room),
        });
    }
}

impl TrunkHandle {
    /// A session of `room` (homed on `home`) is served here.
    pub fn watch(&self, room: &str, home: &str) -> EdgeGuard {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.driver.send(Cmd::Watch {
            room: room.to_string(),
            home: home.to_string(),
            mirrored: tx,
        });
        EdgeGuard {
            room: room.to_string(),
            driver: self.driver.clone(),
            mirrored: Some(rx),
        }
    }

    pub fn trunk(&self) -> &Trunk {
        &self.trunk
    }
}

/// An edge room: members here, its devices homed on `home`.
struct Edge {
    home: String,
    watchers: usize,
    /// The home's room state has been mirrored here (at least once).
    mirrored: bool,
    /// Sessions waiting for that.
    waiting: Vec<tokio::sync::oneshot::Sender<()>>,
}

struct Driver {
    trunk: Trunk,
    sfu: SfuHandle,
    link: Arc<Link>,
    imports: Imports,
    exports: Exports,
    /// Edge rooms by name.
    edges: HashMap<String, Edge>,
    /// (room, home track) → local track id, for the remote tracks of edge rooms.
    local: HashMap<TrackKey, Arc<str>>,
    /// Home side: nodes watching each of this node's rooms.
    watchers: HashMap<String, BTreeSet<String>>,
    /// Home side: the layers of each exported track.
    export_layers: HashMap<TrackKey, Vec<Option<String>>>,
    /// Edge side: room messages sent to their home and not acknowledged yet, by (home, room,
    /// session, message id), re-sent when the trunk to the home is back (the home drops
    /// duplicates).
    pending: HashMap<(String, String, u64, u64), Msg>,
    pending_order: std::collections::VecDeque<(String, String, u64, u64)>,
    /// Exports whose subscribed nodes changed, for the room list.
    dirty_exports: std::cell::RefCell<BTreeSet<TrackKey>>,
}

/// Connects the SFU to `trunk` and runs the driver on the current runtime.
pub async fn start(
    trunk: Trunk,
    events: mpsc::Receiver<Event>,
    sfu: SfuHandle,
) -> Result<TrunkHandle, super::Gone> {
    let (tx, rx) = mpsc::unbounded_channel();
    let link = Arc::new(Link {
        trunk: trunk.clone(),
        sinks: RwLock::new(HashMap::new()),
        driver: tx.clone(),
    });
    sfu.attach_trunk(Arc::clone(&link)).await?;
    let d = Driver {
        trunk: trunk.clone(),
        sfu,
        link,
        imports: Imports::new(ImportConfig::default()),
        exports: Exports::new(ExportConfig::default()),
        edges: HashMap::new(),
        local: HashMap::new(),
        watchers: HashMap::new(),
        export_layers: HashMap::new(),
        pending: HashMap::new(),
        pending_order: Default::default(),
        dirty_exports: Default::default(),
    };
    tokio::spawn(d.run(rx, events));
    Ok(TrunkHandle { trunk, driver: tx })
}

fn format_of(info: &ExportInfo) -> TrackFormat {
    let spec = info.params.spec();
    TrackFormat {
        kind: info.kind.to_string(),
        codec: spec.codec.to_string(),
        clock_rate: spec.clock_rate.get(),
        channels: spec.channels,
        pt: *info.params.pt(),
        fmtp: spec.format.to_string(),
    }
}

fn spec_of(t: &TrackDesc) -> Option<RemoteTrackSpec> {
    let kind = match t.format.kind.as_str() {
        "audio" => str0m::media::MediaKind::Audio,
        "video" => str0m::media::MediaKind::Video,
        _ => return None,
    };
    Some(RemoteTrackSpec {
        track: t.track.clone(),
        kind,
        name: t.name.clone(),
        layers: t.layers.clone(),
        codec: t.format.codec.clone(),
        clock_rate: t.format.clock_rate,
        channels: t.format.channels,
        pt: t.format.pt,
        fmtp: t.format.fmtp.clone(),
    })
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        mut events: mpsc::Receiver<Event>,
    ) {
        let mut next_gauges = Instant::now();
        loop {
            if Instant::now() >= next_gauges {
                next_gauges = Instant::now() + Duration::from_secs(1);
                self.publish_gauges();
            }
            let deadline = [self.imports.poll_timeout(), self.exports.poll_timeout()]
                .into_iter()
                .flatten()
                .chain([next_gauges])
                .min()
                .unwrap_or(next_gauges);
            tokio::select! {
                c = cmds.recv() => match c {
                    Some(c) => self.command(c).await,
                    None => return,
                },
                e = events.recv() => match e {
                    Some(e) => self.event(e).await,
                    None => return,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = Instant::now();
                    self.imports.handle_timeout(now);
                    for ev in self.exports.handle_timeout(now) {
                        self.export_event(ev).await;
                    }
                }
            }
            self.flush();
            self.update_export_nodes().await;
        }
    }

    /// Tells the shards which nodes receive each changed export.
    async fn update_export_nodes(&mut self) {
        let keys = std::mem::take(&mut *self.dirty_exports.borrow_mut());
        for key in keys {
            let mut nodes: Vec<String> = self
                .export_layers
                .get(&key)
                .into_iter()
                .flatten()
                .flat_map(|l| {
                    self.exports
                        .sinks(&key, l.as_deref())
                        .map(|(n, _)| n.to_string())
                })
                .collect();
            nodes.sort();
            nodes.dedup();
            let t = key.track.clone();
            let _ = self
                .sfu
                .on_room(&key.room, move |sfu, _| sfu.set_export_nodes(&t, nodes))
                .await;
        }
    }

    /// Open subscriptions per trunk: tracks this node imports from each peer, and tracks each
    /// peer imports from this node; edge rooms and pending messages.
    fn publish_gauges(&self) {
        for p in self.trunk.stats() {
            metrics::gauge!("meridian_trunk_subscriptions", "peer" => p.peer.clone(), "side" => "import")
                .set(self.imports.from_home(&p.peer) as f64);
            metrics::gauge!("meridian_trunk_subscriptions", "peer" => p.peer.clone(), "side" => "export")
                .set(self.exports.of_node(&p.peer) as f64);
        }
        metrics::gauge!("meridian_trunk_edge_rooms").set(self.edges.len() as f64);
        metrics::gauge!("meridian_trunk_pending_messages").set(self.pending.len() as f64);
    }

    fn flush(&mut self) {
        while let Some((node, msg)) = self.imports.poll_msg() {
            self.send(&node, msg);
        }
        while let Some((node, msg)) = self.exports.poll_msg() {
            self.send(&node, msg);
        }
    }

    fn send(&self, node: &str, msg: Msg) {
        if let Err(e) = self.trunk.send(node, msg) {
            metrics::counter!("meridian_trunk_send_failures_total").increment(1);
            tracing::debug!(node, "trunk message not sent: {e}");
        }
    }

    async fn command(&mut self, c: Cmd) {
        let now = Instant::now();
        match c {
            Cmd::Shard(TrunkOutput::Demand {
                home,
                room,
                track,
                layers,
            }) => {
                let key = TrackKey::new(&room, &track);
                self.imports.set_demand(&key, &home, &layers, now);
            }
            Cmd::Shard(TrunkOutput::Keyframe {
                room, track, layer, ..
            }) => {
                self.imports
                    .keyframe(&TrackKey::new(&room, &track), layer, now);
            }
            Cmd::Shard(TrunkOutput::RoomChanged { room }) => {
                self.send_room_state(&room, None).await
            }
            Cmd::Shard(TrunkOutput::Packet { .. }) => {}
            Cmd::Shard(TrunkOutput::RoomMessage {
                home,
                room,
                from,
                origin,
                id,
                to,
                data,
            }) => {
                let to = to_wire(to);
                let msg = match origin {
                    Some(origin) => Msg::RoomSend {
                        room: room.to_string(),
                        from,
                        origin,
                        id,
                        to,
                        data,
                    },
                    None => Msg::RoomDeliver {
                        room: room.to_string(),
                        seq: None,
                        from,
                        to,
                        data,
                    },
                };
                if let (Some(origin), Some(id)) = (origin, id) {
                    let k = (home.to_string(), room.to_string(), origin, id);
                    if self.pending.insert(k.clone(), msg.clone()).is_none() {
                        self.pending_order.push_back(k);
                    }
                    while self.pending.len() > MAX_PENDING {
                        let Some(old) = self.pending_order.pop_front() else {
                            break;
                        };
                        if self.pending.remove(&old).is_some() {
                            metrics::counter!("meridian_trunk_messages_dropped_total", "reason" => "pending_full").increment(1);
                        }
                    }
                }
                self.send(&home, msg);
            }
            Cmd::Shard(TrunkOutput::RoomDelivered {
                room,
                seq,
                from,
                to,
                data,
            }) => {
                let msg = Msg::RoomDeliver {
                    room: room.to_string(),
                    seq,
                    from,
                    to: to_wire(to),
                    data,
                };
                let targets: Vec<String> = self
                    .watchers
                    .get(&*room)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                for t in targets {
                    self.send(&t, msg.clone());
                }
            }
            Cmd::Watch {
                room,
                home,
                mirrored,
            } => {
                let e = self.edges.entry(room.clone()).or_insert(Edge {
                    home: home.clone(),
                    watchers: 0,
                    mirrored: false,
                    waiting: Vec::new(),
                });
                e.watchers += 1;
                if e.mirrored {
                    let _ = mirrored.send(());
                } else {
                    e.waiting.push(mirrored);
                }
                if e.watchers == 1 {
                    e.home = home.clone();
                    self.send(&home, Msg::Watch { room });
                }
            }
            Cmd::Unwatch { room } => {
                let Some(e) = self.edges.get_mut(&room) else {
                    return;
                };
                e.watchers = e.watchers.saturating_sub(1);
                if e.watchers > 0 {
                    return;
                }
                let home = e.home.clone();
                self.edges.remove(&room);
                self.send(&home, Msg::Unwatch { room: room.clone() });
                self.local.retain(|k, _| k.room != room);
                // The mirrored devices leave with the last member.
                let r = room.clone();
                let _ = self
                    .sfu
                    .on_room(&room, move |sfu, _| {
                        if sfu.local_members(&r) == 0 {
                            for d in sfu.remote_devices(&r) {
                                sfu.leave(d.id);
                            }
                        }
                    })
                    .await;
            }
        }
    }

    /// Sends `room`'s state to `to`, or to every node watching it.
    async fn send_room_state(&mut self, room: &str, to: Option<&str>) {
        let targets: Vec<String> = match to {
            Some(n) => vec![n.to_string()],
            None => self
                .watchers
                .get(room)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
        };
        if targets.is_empty() {
            return;
        }
        let r = room.to_string();
        let Ok(devices) = self
            .sfu
            .on_room(room, move |sfu, _| sfu.room_devices(&r))
            .await
        else {
            return;
        };
        let devices: Vec<DeviceDesc> = devices
            .into_iter()
            .map(|(identity, tracks)| DeviceDesc {
                identity,
                tracks: tracks
                    .into_iter()
                    .map(|(track, info)| TrackDesc {
                        track,
                        name: info.name.clone(),
                        layers: info.layers.clone(),
                        format: format_of(&info),
                    })
                    .collect(),
            })
            .collect();
        for t in targets {
            self.send(
                &t,
                Msg::RoomState {
                    room: room.to_string(),
                    devices: devices.clone(),
                },
            );
        }
    }

    async fn event(&mut self, e: Event) {
        let now = Instant::now();
        match e {
            Event::Datagram { peer, flow, packet } => {
                if packet.len() < 4 {
                    return;
                }
                let seq = u16::from_be_bytes([packet[2], packet[3]]);
                let Some((key, layer, arrival)) = self.imports.on_packet(&peer, flow, seq, now)
                else {
                    return;
                };
                if arrival == Arrival::Duplicate {
                    return;
                }
                let Some(local) = self.local.get(key) else {
                    return;
                };
                let room = key.room.clone();
                let layer = layer.map(str::to_string);
                self.sfu.trunk_rtp(&room, Arc::clone(local), layer, packet);
            }
            Event::Msg { peer, msg } => self.message(peer, msg, now).await,
            Event::Up { .. } => {}
            Event::Down { peer, reason } => {
                tracing::debug!(peer, reason, "trunk down: re-subscribing when it is back");
                self.imports.home_lost(&peer, now);
                for ev in self.exports.node_lost(&peer) {
                    self.export_event(ev).await;
                }
                self.refresh_all_sinks();
                let rooms: Vec<String> = self
                    .watchers
                    .iter_mut()
                    .filter_map(|(r, s)| s.remove(&peer).then(|| r.clone()))
                    .collect();
                for r in rooms {
                    if self.watchers.get(&r).is_some_and(|s| s.is_empty()) {
                        self.watchers.remove(&r);
                        let room = r.clone();
                        let _ = self
                            .sfu
                            .on_room(&r, move |sfu, _| sfu.set_watched(&room, false))
                            .await;
                    }
                }
                // Edge rooms of that home are watched again (the trunk is dialed anew).
                let again: Vec<String> = self
                    .edges
                    .iter()
                    .filter(|(_, e)| e.home == peer)
                    .map(|(r, _)| r.clone())
                    .collect();
                for room in again {
                    self.send(&peer, Msg::Watch { room });
                }
                // What the home had not acknowledged goes again (it drops duplicates).
                let again: Vec<Msg> = self
                    .pending_order
                    .iter()
                    .filter(|k| k.0 == peer)
                    .filter_map(|k| self.pending.get(k).cloned())
                    .collect();
                for m in again {
                    self.send(&peer, m);
                }
            }
        }
    }

    async fn message(&mut self, peer: String, msg: Msg, now: Instant) {
        match &msg {
            Msg::Watch { room } => {
                self.watchers
                    .entry(room.clone())
                    .or_default()
                    .insert(peer.clone());
                let r = room.clone();
                let _ = self
                    .sfu
                    .on_room(room, move |sfu, _| sfu.set_watched(&r, true))
                    .await;
                self.send_room_state(room, Some(&peer)).await;
                // The room's log, so the edge's members resume as they would here.
                let r = room.clone();
                let log = self.sfu.on_room(room, move |sfu, _| sfu.room_log(&r)).await;
                for (seq, from, to, data) in log.unwrap_or_default() {
                    self.send(
                        &peer,
                        Msg::RoomDeliver {
                            room: room.clone(),
                            seq: Some(seq),
                            from,
                            to: to_wire(to),
                            data,
                        },
                    );
                }
            }
            Msg::Unwatch { room } => {
                let empty = self.watchers.get_mut(room).is_some_and(|s| {
                    s.remove(&peer);
                    s.is_empty()
                });
                if empty {
                    self.watchers.remove(room);
                    let r = room.clone();
                    let _ = self
                        .sfu
                        .on_room(room, move |sfu, _| sfu.set_watched(&r, false))
                        .await;
                }
            }
            Msg::RoomState { room, devices } => self.mirror(&peer, room, devices).await,
            Msg::Flows { .. } | Msg::Refused { .. } | Msg::Ended { .. } => {
                match self.imports.on_msg(&peer, &msg) {
                    Some(ImportEvent::Refused { key, reason }) => {
                        tracing::info!(
                            peer,
                            room = key.room,
                            track = key.track,
                            reason,
                            "remote subscription refused"
                        );
                    }
                    Some(ImportEvent::Ended { key }) => {
                        if let Some(local) = self.local.remove(&key) {
                            let _ = self
                                .sfu
                                .on_room(&key.room, move |sfu, _| sfu.remote_track_ended(&local))
                                .await;
                        }
                    }
                    Some(ImportEvent::Ready { .. }) | None => {}
                }
            }
            Msg::Subscribe { room, track, .. } => {
                let t = track.clone();
                let info = self
                    .sfu
                    .on_room(room, move |sfu, _| sfu.export_info(&t))
                    .await
                    .ok()
                    .flatten()
                    .filter(|i| &*i.room == room.as_str());
                let key = TrackKey::new(room, track);
                if let Some(i) = &info {
                    self.export_layers.insert(key.clone(), i.layers.clone());
                }
                let ev = self.exports.on_msg(&peer, &msg, now, |_| {
                    info.map(|i| Exportable {
                        format: format_of(&i),
                        layers: i.layers,
                    })
                });
                if let Some(ev) = ev {
                    self.export_event(ev).await;
                }
                self.refresh_sinks(&key);
            }
            Msg::Unsubscribe { room, track } | Msg::Keyframe { room, track, .. } => {
                let key = TrackKey::new(room, track);
                if let Some(ev) = self.exports.on_msg(&peer, &msg, now, |_| None) {
                    self.export_event(ev).await;
                }
                self.refresh_sinks(&key);
            }
            Msg::Nack { .. } => {
                if let Some(ev) = self.exports.on_msg(&peer, &msg, now, |_| None) {
                    self.export_event(ev).await;
                }
            }
            Msg::Hello { .. } => {}
            Msg::RoomSend {
                room,
                from,
                origin,
                id,
                to,
                data,
            } => {
                let (r, f, d, to, id_) = (
                    room.clone(),
                    from.clone(),
                    data.clone(),
                    from_wire(*to),
                    *id,
                );
                let seq = self
                    .sfu
                    .on_room(room, move |sfu, now| {
                        sfu.trunk_room_send(&r, &f, id_, to, &d, true, now)
                    })
                    .await
                    .ok()
                    .flatten();
                match seq {
                    Some(seq) => self.send(
                        &peer,
                        Msg::RoomAck {
                            room: room.clone(),
                            origin: *origin,
                            id: *id,
                            seq,
                        },
                    ),
                    None => self.send(
                        &peer,
                        Msg::Error {
                            reason: format!("room {room:?} is not homed on this node, or the message is malformed"),
                        },
                    ),
                }
            }
            Msg::RoomAck {
                room,
                origin,
                id,
                seq,
            } => {
                if let Some(i) = id {
                    self.pending
                        .remove(&(peer.clone(), room.clone(), *origin, *i));
                    while self
                        .pending_order
                        .front()
                        .is_some_and(|k| !self.pending.contains_key(k))
                    {
                        self.pending_order.pop_front();
                    }
                }
                let (origin, id, seq) = (ParticipantId(*origin), *id, *seq);
                let _ = self
                    .sfu
                    .on_room(room, move |sfu, now| sfu.trunk_ack(origin, id, seq, now))
                    .await;
            }
            Msg::RoomDeliver {
                room,
                seq,
                from,
                to,
                data,
            } => {
                let edge = self.edges.get(room).is_some_and(|e| e.home == peer);
                let (r, f, d, to, seq) = (
                    room.clone(),
                    from.clone(),
                    data.clone(),
                    from_wire(*to),
                    *seq,
                );
                if edge {
                    let _ = self
                        .sfu
                        .on_room(room, move |sfu, now| {
                            sfu.trunk_deliver(&r, seq, &f, to, &d, now)
                        })
                        .await;
                } else if seq.is_none() {
                    // Input from a session on an edge, for this home's members.
                    let _ = self
                        .sfu
                        .on_room(room, move |sfu, now| {
                            sfu.trunk_room_send(&r, &f, None, to, &d, false, now)
                        })
                        .await;
                }
            }
            Msg::Error { reason } => {
                metrics::counter!("meridian_trunk_peer_errors_total").increment(1);
                tracing::info!(peer, reason, "trunk peer reported an error");
            }
        }
    }

    async fn export_event(&mut self, ev: ExportEvent) {
        match ev {
            ExportEvent::Started { key } => {
                let t = key.track.clone();
                let _ = self
                    .sfu
                    .on_room(&key.room, move |sfu, _| sfu.set_export(&t, true))
                    .await;
            }
            ExportEvent::Stopped { key } => {
                let t = key.track.clone();
                let _ = self
                    .sfu
                    .on_room(&key.room, move |sfu, _| sfu.set_export(&t, false))
                    .await;
                self.export_layers.remove(&key);
                self.refresh_sinks(&key);
            }
            ExportEvent::Keyframe { key, layer } => {
                let t = key.track.clone();
                let _ = self
                    .sfu
                    .on_room(&key.room, move |sfu, now| {
                        sfu.trunk_keyframe(&t, layer.as_deref(), now)
                    })
                    .await;
            }
            ExportEvent::Retransmit {
                node,
                flow,
                key,
                seqs,
                ..
            } => {
                let t = key.track.clone();
                let Ok(packets) = self
                    .sfu
                    .on_room(&key.room, move |sfu, _| sfu.trunk_resend(&t, &seqs))
                    .await
                else {
                    return;
                };
                for p in packets {
                    let _ = self.trunk.send_datagram(&node, flow, &p);
                }
            }
        }
    }

    /// Republishes the sink table entries of `key` from the export bookkeeping.
    fn refresh_sinks(&self, key: &TrackKey) {
        self.dirty_exports.borrow_mut().insert(key.clone());
        let layers = self
            .export_layers
            .get(key)
            .cloned()
            .unwrap_or_else(|| vec![None]);
        let entry: LayerSinks = layers
            .into_iter()
            .map(|l| {
                let v = self
                    .exports
                    .sinks(key, l.as_deref())
                    .map(|(n, f)| (n.to_string(), f))
                    .collect::<Vec<_>>();
                (l, v)
            })
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let mut t = self.link.sinks.write().unwrap_or_else(|e| e.into_inner());
        if entry.is_empty() {
            t.remove(&key.track);
        } else {
            t.insert(key.track.clone(), entry);
        }
    }

    fn refresh_all_sinks(&self) {
        self.link
            .sinks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for k in self.export_layers.keys() {
            self.refresh_sinks(k);
        }
    }

    /// Mirrors the devices of edge room `room` as `home` describes them.
    async fn mirror(&mut self, home: &str, room: &str, devices: &[DeviceDesc]) {
        if self.edges.get(room).is_none_or(|e| e.home != home) {
            return;
        }
        let want: Vec<(String, Vec<RemoteTrackSpec>)> = devices
            .iter()
            .map(|d| {
                (
                    d.identity.clone(),
                    d.tracks.iter().filter_map(spec_of).collect(),
                )
            })
            .collect();
        let (r, h) = (room.to_string(), home.to_string());
        let Ok(mapped) = self
            .sfu
            .on_room(room, move |sfu, now| {
                let have = sfu.remote_devices(&r);
                let mut ids: HashMap<String, ParticipantId> =
                    have.iter().map(|d| (d.identity.clone(), d.id)).collect();
                // Devices gone at the home leave; tracks gone end.
                for d in &have {
                    match want.iter().find(|(i, _)| *i == d.identity) {
                        None => {
                            sfu.leave(d.id);
                            ids.remove(&d.identity);
                        }
                        Some((_, specs)) => {
                            for (orig, local) in &d.tracks {
                                if !specs.iter().any(|s| &s.track == orig) {
                                    sfu.remote_track_ended(local);
                                }
                            }
                        }
                    }
                }
                let mut mapped = Vec::new();
                for (identity, specs) in want {
                    let pid = *ids
                        .entry(identity.clone())
                        .or_insert_with(|| sfu.remote_publisher(&r, &identity, &h, now));
                    for spec in specs {
                        let orig = spec.track.clone();
                        match sfu.remote_track(pid, spec, now) {
                            Ok(local) => mapped.push((orig, local)),
                            Err(e) => tracing::info!(
                                room = r,
                                track = orig,
                                "remote track not mirrored: {e}"
                            ),
                        }
                    }
                }
                mapped
            })
            .await
        else {
            return;
        };
        if let Some(e) = self.edges.get_mut(room) {
            e.mirrored = true;
            for w in e.waiting.drain(..) {
                let _ = w.send(());
            }
        }
        self.local.retain(|k, _| k.room != room);
        for (orig, local) in mapped {
            self.local.insert(TrackKey::new(room, &orig), local);
        }
    }
}
