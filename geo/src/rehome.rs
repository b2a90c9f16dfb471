//! Re-homing: where sessions go when the node they are on dies or drains. Sans-IO: the
//! cluster view (and, for a death, the time it is judged at) in, decisions out.
//!
//! Two callers:
//! - a **client** whose relay failed (its WebSocket dropped, its media went silent) picks the
//!   next node to try with [`next_targets`]: its own ranking, best first, without the nodes
//!   that failed it;
//! - a **node** that drains plans where each of its sessions goes with [`plan_drain`]
//!   (devices first: a room homed here moves to wherever its device goes, and the room's
//!   players follow it), and a node that sees another die learns what that death orphaned
//!   with [`orphaned_by`] (rooms whose home it was, and the sessions that will re-home), and
//!   a node that homed a room another node homed too while the directory was away learns
//!   that it gives the room up with [`split_homes`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use crate::model::{NodeInfo, RegionRtt};
use crate::route::TIE_MS;
use crate::view::ClusterView;

/// A node a client knows (from `GET /v1/regions`) and the RTT it measured to its region.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    pub node: String,
    pub region: String,
    /// Its signaling base URL.
    pub signaling: String,
    /// The RTT the client measured to the region; `None` when it did not measure it.
    pub rtt_ms: Option<f64>,
}

/// Client side: the nodes to try after `failed` (node ids or signaling URLs that failed this
/// client), best first: measured regions by RTT, then unmeasured ones in the order given.
/// Every node the client knows comes out once, however often it is listed.
pub fn next_targets<'a>(known: &'a [Known], failed: &BTreeSet<String>) -> Vec<&'a Known> {
    let mut seen = BTreeSet::new();
    let mut out: Vec<(usize, &Known)> = known
        .iter()
        .enumerate()
        .filter(|(_, k)| !failed.contains(&k.node) && !failed.contains(&k.signaling))
        .filter(|(_, k)| seen.insert(k.node.clone()))
        .collect();
    out.sort_by(|(ia, a), (ib, b)| match (a.rtt_ms, b.rtt_ms) {
        (Some(x), Some(y)) => x.total_cmp(&y).then(ia.cmp(ib)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => ia.cmp(ib),
    });
    out.into_iter().map(|(_, k)| k).collect()
}

/// Client side: the ranking a re-homing client sends with its join, without the regions of
/// nodes that failed it (a node that has not yet noticed the death must not redirect the
/// client back to the dead one).
pub fn ranking_without(ranking: &[RegionRtt], failed_regions: &BTreeSet<String>) -> Vec<RegionRtt> {
    ranking
        .iter()
        .filter(|r| !failed_regions.contains(&r.region))
        .cloned()
        .collect()
}

/// A session's role, as far as re-homing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Publishes; a room homed on its node moves with it.
    Device,
    /// Watches and sends controls (players, viewers).
    Watcher,
}

/// A session of the draining node.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaving {
    pub id: String,
    pub room: String,
    pub kind: Kind,
    /// What the client measured when it joined (empty: nothing).
    pub ranking: Vec<RegionRtt>,
}

/// Why a session goes where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveReason {
    /// The healthy node of the lowest-RTT region the client measured.
    Nearest,
    /// The room's new home (the node its device moved to), where the room's sessions must be
    /// without a trunk.
    RoomHome,
    /// The client measured nothing usable: the least-loaded node, this node's region first.
    Fallback,
}

impl MoveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveReason::Nearest => "nearest",
            MoveReason::RoomHome => "room_home",
            MoveReason::Fallback => "fallback",
        }
    }
}

/// One session's move.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    pub session: String,
    pub room: String,
    pub kind: Kind,
    /// Where it goes; `None` when no other node can take it (it stays until the deadline).
    pub to: Option<NodeInfo>,
    pub reason: MoveReason,
}

/// Where a draining node's rooms and sessions go.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DrainPlan {
    /// In the order to tell them: every device before any watcher, so that a room's new home
    /// exists before its players arrive.
    pub moves: Vec<Move>,
    /// Rooms homed on the draining node → their new home.
    pub rooms: BTreeMap<String, String>,
}

impl DrainPlan {
    /// Sessions no node can take.
    pub fn stranded(&self) -> usize {
        self.moves.iter().filter(|m| m.to.is_none()).count()
    }
}

fn usable(n: &NodeInfo, from: &str) -> bool {
    n.id != from && !n.draining && !n.overloaded()
}

/// Where one session goes, given the load already assigned by this plan.
fn choose<'v>(
    view: &'v ClusterView,
    from: &NodeInfo,
    ranking: &[RegionRtt],
    need_trunk: bool,
    added: &HashMap<String, usize>,
) -> Option<(&'v NodeInfo, MoveReason)> {
    let load = |n: &NodeInfo| {
        let s = n.sessions + added.get(&n.id).copied().unwrap_or(0);
        if n.max_sessions > 0 {
            s as f64 / n.max_sessions as f64
        } else {
            s as f64 / 1e6
        }
    };
    let nodes: Vec<&NodeInfo> = view
        .nodes()
        .filter(|n| usable(n, &from.id))
        .filter(|n| !need_trunk || n.trunk.is_some())
        .collect();
    let rtt_of = |region: &str| {
        ranking
            .iter()
            .filter(|r| r.region == region && r.rtt_ms.is_finite() && r.rtt_ms >= 0.0)
            .map(|r| r.rtt_ms)
            .reduce(f64::min)
    };
    let measured: Vec<(f64, &NodeInfo)> = nodes
        .iter()
        .filter_map(|n| rtt_of(&n.region).map(|r| (r, *n)))
        .collect();
    if let Some(best) = measured.iter().map(|m| m.0).reduce(f64::min) {
        return measured
            .into_iter()
            .filter(|m| m.0 < best + TIE_MS)
            .min_by(|a, b| {
                load(a.1)
                    .total_cmp(&load(b.1))
                    .then(a.0.total_cmp(&b.0))
                    .then_with(|| a.1.id.cmp(&b.1.id))
            })
            .map(|m| (m.1, MoveReason::Nearest));
    }
    nodes
        .into_iter()
        .min_by(|a, b| {
            (a.region != from.region)
                .cmp(&(b.region != from.region))
                .then(load(a).total_cmp(&load(b)))
                .then_with(|| a.id.cmp(&b.id))
        })
        .map(|n| (n, MoveReason::Fallback))
}

/// Plans the drain of node `from`: every session gets the node it should move to.
///
/// - Devices first, each to the best node of its own ranking. A room homed on `from` moves to
///   where its first device goes.
/// - Watchers of such a room go to its new home; with trunks on both `from` and the target
///   (the room can then be served anywhere) they go to their own nearest node instead.
/// - Watchers of rooms homed elsewhere go to their nearest node (with a trunk when the room's
///   home is not that node, since it then serves the room as an edge).
/// - Load is spread: each move counts against its target for the moves after it.
pub fn plan_drain(view: &ClusterView, from: &str, sessions: &[Leaving]) -> DrainPlan {
    let mut plan = DrainPlan::default();
    let Some(me) = view.node(from).cloned() else {
        plan.moves = sessions
            .iter()
            .map(|s| Move {
                session: s.id.clone(),
                room: s.room.clone(),
                kind: s.kind,
                to: None,
                reason: MoveReason::Fallback,
            })
            .collect();
        return plan;
    };
    // The rooms still homed here: one whose device already moved (another node claims it and
    // every view ranks that node first) is homed where it moved to.
    let homed_here: BTreeSet<&str> = view
        .rooms(from)
        .map(|r| {
            r.iter()
                .map(String::as_str)
                .filter(|r| view.room_home(r).is_some_and(|h| h.id == from))
                .collect()
        })
        .unwrap_or_default();
    let mut added: HashMap<String, usize> = HashMap::new();
    let mut order: Vec<&Leaving> = sessions.iter().collect();
    // Devices first; then by room and id, so the plan is the same on every run.
    order.sort_by(|a, b| (a.kind, &a.room, &a.id).cmp(&(b.kind, &b.room, &b.id)));
    for s in order {
        let (to, reason) = match s.kind {
            Kind::Device => {
                let c = choose(view, &me, &s.ranking, false, &added);
                if let (Some((n, _)), true) = (c, homed_here.contains(s.room.as_str())) {
                    plan.rooms.entry(s.room.clone()).or_insert(n.id.clone());
                }
                match c {
                    Some((n, r)) => (Some(n.clone()), r),
                    None => (None, MoveReason::Fallback),
                }
            }
            Kind::Watcher => {
                // The room's home after this drain: moved with its device, or where it is.
                let home: Option<&NodeInfo> = match plan.rooms.get(&s.room) {
                    Some(id) => view.node(id),
                    None if homed_here.contains(s.room.as_str()) => None,
                    None => view.room_home(&s.room),
                };
                let trunked = home.is_some_and(|h| h.trunk.is_some()) && me.trunk.is_some();
                match home {
                    Some(h) if !trunked => (Some(h.clone()), MoveReason::RoomHome),
                    _ => {
                        // Anywhere with a trunk serves the room; its home itself needs none.
                        let need_trunk = trunked;
                        match choose(view, &me, &s.ranking, need_trunk, &added) {
                            Some((n, r)) => {
                                let r = if home.is_some_and(|h| h.id == n.id) {
                                    MoveReason::RoomHome
                                } else {
                                    r
                                };
                                (Some(n.clone()), r)
                            }
                            None => (None, MoveReason::Fallback),
                        }
                    }
                }
            }
        };
        if let Some(n) = &to {
            *added.entry(n.id.clone()).or_default() += 1;
        }
        plan.moves.push(Move {
            session: s.id.clone(),
            room: s.room.clone(),
            kind: s.kind,
            to,
            reason,
        });
    }
    plan
}

/// The node whose TURN server takes this node's new clients while it drains (300 Try
/// Alternate): a live one that is not draining or overloaded and has a STUN/TURN endpoint,
/// this node's region first, then the least loaded, then by id.
pub fn turn_alternate(view: &ClusterView) -> Option<&NodeInfo> {
    let me = view.node(view.me())?;
    view.nodes()
        .filter(|n| usable(n, &me.id) && !n.stun.is_empty())
        .min_by(|a, b| {
            (a.region != me.region)
                .cmp(&(b.region != me.region))
                .then(a.sessions.cmp(&b.sessions))
                .then_with(|| a.id.cmp(&b.id))
        })
}

/// What the death of a node leaves behind, from the view as it was just before the node was
/// expired.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Orphans {
    pub node: String,
    /// Rooms homed on the dead node: their devices re-home and the first node one of them
    /// joins becomes the new home.
    pub rooms: Vec<String>,
    /// Sessions that were on it (they reconnect elsewhere by themselves).
    pub sessions: usize,
    /// Devices that were live on it, as (room, identity).
    pub devices: Vec<(String, String)>,
}

/// Judges, at `now`, which nodes of `view` are dead (silent for longer than the death
/// timeout) and what each leaves behind, without changing the view; the caller then expires
/// them. This node itself never is.
pub fn orphaned_by(
    view: &ClusterView,
    now: Instant,
    death_timeout: std::time::Duration,
) -> Vec<Orphans> {
    view.nodes()
        .filter(|n| n.id != view.me())
        .filter(|n| view.silence(&n.id, now).is_some_and(|s| s > death_timeout))
        .map(|n| Orphans {
            node: n.id.clone(),
            rooms: view
                .rooms(&n.id)
                .map(|r| r.iter().cloned().collect())
                .unwrap_or_default(),
            sessions: view.sessions(&n.id).map_or(0, |s| s.len()),
            devices: view
                .devices()
                .into_iter()
                .filter(|(node, _)| node.id == n.id)
                .map(|(_, d)| (d.room.clone(), d.identity.clone()))
                .collect(),
        })
        .collect()
}

/// A room homed on two nodes at once, as the one that must give it up sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub room: String,
    /// Where every view resolves the room ([`ClusterView::room_home`]): this node's
    /// sessions of it go there.
    pub winner: NodeInfo,
}

/// The rooms this node (`view.me()`) homes, as it knows itself (`homes`), and has published,
/// that every view resolves to another node: claimed by two nodes while the directory was
/// unreachable (each served its own sessions), and seen once it is back. The resolution is
/// the view's, the same on every node (the lowest id among claimants not draining), so only
/// the losers act. A draining node hands its rooms over by its drain instead, and a room is
/// judged only once this node's own claim is in the view (so both sides see both claims).
pub fn split_homes(view: &ClusterView, homes: &BTreeSet<String>) -> Vec<Split> {
    let me = view.me();
    let Some(info) = view.node(me) else {
        return Vec::new();
    };
    if info.draining {
        return Vec::new();
    }
    let published = view.rooms(me);
    homes
        .iter()
        .filter(|r| published.is_some_and(|p| p.contains(*r)))
        .filter_map(|r| {
            let home = view.room_home(r)?;
            (home.id != me && !home.draining).then(|| Split {
                room: r.clone(),
                winner: home.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::model::{DeviceEntry, SessionEntry, Update};
    use crate::testutil::{info, update};

    const DEATH: Duration = Duration::from_millis(1000);

    struct Cluster {
        view: ClusterView,
        seq: HashMap<String, u64>,
    }

    impl Cluster {
        fn new(me: &str) -> Self {
            Cluster {
                view: ClusterView::new(me, DEATH),
                seq: HashMap::new(),
            }
        }

        /// A full update of node `id` heard at `t`.
        fn beat(&mut self, t: Instant, id: &str, region: &str, f: impl FnOnce(&mut Update)) {
            let seq = self.seq.entry(id.into()).or_default();
            *seq += 1;
            let mut u = update(id, 1, *seq, true);
            u.info = info(id, region);
            u.info.trunk = Some(format!("{id}.example:7890"));
            u.devices = Some(Vec::new());
            f(&mut u);
            self.view.apply(u, t);
        }
    }

    fn rtts(list: &[(&str, f64)]) -> Vec<RegionRtt> {
        list.iter()
            .map(|(r, ms)| RegionRtt {
                region: r.to_string(),
                rtt_ms: *ms,
            })
            .collect()
    }

    fn device(room: &str, who: &str) -> DeviceEntry {
        DeviceEntry {
            room: room.into(),
            identity: who.into(),
            live: true,
            viewers: 0,
            bitrate_bps: 1,
            tracks: vec!["t".into()],
            remote_nodes: Vec::new(),
        }
    }

    fn session(room: &str, who: &str, role: &str) -> SessionEntry {
        SessionEntry {
            room: room.into(),
            identity: who.into(),
            role: role.into(),
            since_ms: 0,
        }
    }

    fn leaving(id: &str, room: &str, kind: Kind, ranking: &[(&str, f64)]) -> Leaving {
        Leaving {
            id: id.into(),
            room: room.into(),
            kind,
            ranking: rtts(ranking),
        }
    }

    fn known(node: &str, region: &str, rtt: Option<f64>) -> Known {
        Known {
            node: node.into(),
            region: region.into(),
            signaling: format!("http://{node}.example"),
            rtt_ms: rtt,
        }
    }

    #[test]
    fn a_client_tries_its_ranking_in_order_without_what_failed_it() {
        let k = vec![
            known("b", "asia", Some(20.0)),
            known("z", "mars", None),
            known("a", "eu", Some(90.0)),
            known("c", "us", Some(40.0)),
            known("b", "asia", Some(20.0)),
        ];
        let ids = |f: &[&str]| {
            let failed = f.iter().map(|s| s.to_string()).collect();
            next_targets(&k, &failed)
                .into_iter()
                .map(|k| k.node.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&[]), ["b", "c", "a", "z"]);
        assert_eq!(ids(&["b"]), ["c", "a", "z"]);
        // A URL that failed counts as its node.
        assert_eq!(ids(&["http://c.example", "b"]), ["a", "z"]);
        assert!(ids(&["a", "b", "c", "z"]).is_empty());
        let failed: BTreeSet<String> = ["asia".to_string()].into();
        let r = ranking_without(&rtts(&[("asia", 20.0), ("us", 40.0)]), &failed);
        assert_eq!(r, rtts(&[("us", 40.0)]));
    }

    #[test]
    fn a_drain_moves_devices_first_and_their_rooms_with_them() {
        let t0 = Instant::now();
        let mut c = Cluster::new("a");
        // a (eu) is draining: it homes room r1, whose device and two players are on it, and
        // one player of room r2, homed on c.
        c.beat(t0, "a", "eu", |u| {
            u.info.draining = true;
            u.rooms_set = vec!["r1".into()];
            u.devices = Some(vec![device("r1", "dev")]);
        });
        c.beat(t0, "b", "us", |_| {});
        c.beat(t0, "c", "asia", |u| u.rooms_set = vec!["r2".into()]);
        let s = [
            leaving(
                "p1",
                "r1",
                Kind::Watcher,
                &[("eu", 5.0), ("asia", 30.0), ("us", 80.0)],
            ),
            leaving(
                "p2",
                "r2",
                Kind::Watcher,
                &[("eu", 5.0), ("us", 30.0), ("asia", 90.0)],
            ),
            leaving(
                "d1",
                "r1",
                Kind::Device,
                &[("eu", 5.0), ("us", 50.0), ("asia", 60.0)],
            ),
        ];
        let plan = plan_drain(&c.view, "a", &s);
        let got: Vec<(&str, Option<&str>, MoveReason)> = plan
            .moves
            .iter()
            .map(|m| {
                (
                    m.session.as_str(),
                    m.to.as_ref().map(|n| n.id.as_str()),
                    m.reason,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                // The device goes to its nearest healthy region (not the draining a) and r1
                // moves there.
                ("d1", Some("b"), MoveReason::Nearest),
                // With trunks everywhere, r1's player stays nearest to itself (c serves r1
                // as an edge of b).
                ("p1", Some("c"), MoveReason::Nearest),
                // r2's player goes to its nearest, b, an edge of c.
                ("p2", Some("b"), MoveReason::Nearest),
            ]
        );
        assert_eq!(plan.rooms, BTreeMap::from([("r1".into(), "b".into())]));
        assert_eq!(plan.stranded(), 0);
    }

    #[test]
    fn without_trunks_a_rooms_players_follow_its_device() {
        let t0 = Instant::now();
        let mut c = Cluster::new("a");
        let no_trunk = |u: &mut Update| u.info.trunk = None;
        c.beat(t0, "a", "eu", |u| {
            no_trunk(u);
            u.rooms_set = vec!["r1".into()];
        });
        c.beat(t0, "b", "us", no_trunk);
        c.beat(t0, "c", "asia", no_trunk);
        let s = [
            leaving("d1", "r1", Kind::Device, &[("us", 50.0), ("asia", 60.0)]),
            leaving("p1", "r1", Kind::Watcher, &[("asia", 10.0), ("us", 80.0)]),
            // A player whose device is not moving (the room has no device here) and who
            // measured nothing: the room is homed on a, so it has no home after the drain;
            // it falls back to the least-loaded node.
            leaving("p9", "r9", Kind::Watcher, &[]),
        ];
        let plan = plan_drain(&c.view, "a", &s);
        let to = |id: &str| {
            let m = plan.moves.iter().find(|m| m.session == id).unwrap();
            (m.to.as_ref().map(|n| n.id.clone()), m.reason)
        };
        assert_eq!(to("d1"), (Some("b".into()), MoveReason::Nearest));
        assert_eq!(to("p1"), (Some("b".into()), MoveReason::RoomHome));
        // b now carries two moved sessions, c none: p9 goes to c.
        assert_eq!(to("p9"), (Some("c".into()), MoveReason::Fallback));
    }

    #[test]
    fn once_a_device_moved_its_rooms_players_go_to_the_new_home() {
        let t0 = Instant::now();
        let mut c = Cluster::new("a");
        let no_trunk = |u: &mut Update| u.info.trunk = None;
        // a drains; its device went to c, which claimed r1 (a still claims it too, until its
        // last session of r1 leaves).
        c.beat(t0, "a", "eu", |u| {
            no_trunk(u);
            u.info.draining = true;
            u.rooms_set = vec!["r1".into()];
        });
        c.beat(t0, "b", "us", no_trunk);
        c.beat(t0, "c", "asia", |u| {
            no_trunk(u);
            u.rooms_set = vec!["r1".into()];
        });
        let s = [leaving(
            "p1",
            "r1",
            Kind::Watcher,
            &[("us", 10.0), ("asia", 80.0)],
        )];
        let plan = plan_drain(&c.view, "a", &s);
        assert_eq!(
            plan.moves[0].to.as_ref().map(|n| n.id.as_str()),
            Some("c"),
            "the room's new home, not the player's nearest (no trunk)"
        );
        assert_eq!(plan.moves[0].reason, MoveReason::RoomHome);
        assert!(plan.rooms.is_empty(), "nothing left homed on a: {plan:?}");
    }

    #[test]
    fn a_split_home_is_given_up_by_every_claimant_but_the_lowest_id() {
        let t0 = Instant::now();
        let homes: BTreeSet<String> = ["den".to_string(), "mine".to_string()].into();
        // Seen from b: a and b both claim den (the directory was away); mine is b's alone.
        let mut on_b = Cluster::new("b");
        on_b.beat(t0, "a", "eu", |u| u.rooms_set = vec!["den".into()]);
        on_b.beat(t0, "b", "us", |u| {
            u.rooms_set = vec!["den".into(), "mine".into()]
        });
        let s = split_homes(&on_b.view, &homes);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].room.as_str(), s[0].winner.id.as_str()), ("den", "a"));
        // Seen from a, the same view: a keeps it.
        let mut on_a = Cluster::new("a");
        on_a.beat(t0, "a", "eu", |u| u.rooms_set = vec!["den".into()]);
        on_a.beat(t0, "b", "us", |u| {
            u.rooms_set = vec!["den".into(), "mine".into()]
        });
        let a_homes: BTreeSet<String> = ["den".to_string()].into();
        assert!(split_homes(&on_a.view, &a_homes).is_empty());
        // A draining winner is no winner: the room stays on b, which does not drain.
        on_b.beat(t0, "a", "eu", |u| {
            u.info.draining = true;
            u.rooms_set = vec!["den".into()];
        });
        assert!(split_homes(&on_b.view, &homes).is_empty());
        // b draining: its drain hands den over, not this.
        on_b.beat(t0, "a", "eu", |u| u.rooms_set = vec!["den".into()]);
        assert_eq!(split_homes(&on_b.view, &homes).len(), 1);
        on_b.beat(t0, "b", "us", |u| {
            u.info.draining = true;
            u.rooms_set = vec!["den".into(), "mine".into()];
        });
        assert!(split_homes(&on_b.view, &homes).is_empty());
    }

    #[test]
    fn a_room_not_yet_published_by_this_node_is_not_judged() {
        let t0 = Instant::now();
        // b claimed den a moment ago (its heartbeat has not carried it yet) while a's claim
        // is in the view: nothing to give up until both claims are seen.
        let mut on_b = Cluster::new("b");
        on_b.beat(t0, "a", "eu", |u| u.rooms_set = vec!["den".into()]);
        on_b.beat(t0, "b", "us", |_| {});
        let homes: BTreeSet<String> = ["den".to_string()].into();
        assert!(split_homes(&on_b.view, &homes).is_empty());
        // Nor when b is not in its own view at all.
        let mut alone = Cluster::new("b");
        alone.beat(t0, "a", "eu", |u| u.rooms_set = vec!["den".into()]);
        assert!(split_homes(&alone.view, &homes).is_empty());
    }

    #[test]
    fn load_is_spread_and_draining_or_full_nodes_are_skipped() {
        let t0 = Instant::now();
        let mut c = Cluster::new("a");
        c.beat(t0, "a", "eu", |_| {});
        c.beat(t0, "b1", "us", |u| u.info.max_sessions = 10);
        c.beat(t0, "b2", "us", |u| u.info.max_sessions = 10);
        c.beat(t0, "b3", "us", |u| u.info.draining = true);
        c.beat(t0, "c", "asia", |u| {
            u.info.max_sessions = 1;
            u.info.sessions = 1;
        });
        let s: Vec<Leaving> = (0..4)
            .map(|i| {
                leaving(
                    &format!("p{i}"),
                    "r",
                    Kind::Watcher,
                    &[("us", 10.0), ("asia", 5.0)],
                )
            })
            .collect();
        let plan = plan_drain(&c.view, "a", &s);
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for m in &plan.moves {
            *per.entry(m.to.as_ref().unwrap().id.clone()).or_default() += 1;
        }
        // c (nearest) is full and b3 is draining: the us nodes share the four.
        assert_eq!(per, BTreeMap::from([("b1".into(), 2), ("b2".into(), 2)]));
    }

    #[test]
    fn the_turn_alternate_is_a_healthy_node_of_the_own_region_first() {
        let t0 = Instant::now();
        let mut c = Cluster::new("a");
        c.beat(t0, "a", "eu", |_| {});
        assert!(turn_alternate(&c.view).is_none(), "alone: none");
        c.beat(t0, "b", "us", |_| {});
        c.beat(t0, "c", "us", |u| u.info.sessions = 5);
        assert_eq!(
            turn_alternate(&c.view).unwrap().id,
            "b",
            "least loaded elsewhere"
        );
        c.beat(t0, "e1", "eu", |u| u.info.draining = true);
        c.beat(t0, "e2", "eu", |u| u.info.stun.clear());
        assert_eq!(
            turn_alternate(&c.view).unwrap().id,
            "b",
            "draining or no TURN: skipped"
        );
        c.beat(t0, "e3", "eu", |u| u.info.sessions = 50);
        assert_eq!(
            turn_alternate(&c.view).unwrap().id,
            "e3",
            "the own region first"
        );
    }

    #[test]
    fn a_lone_node_strands_its_sessions() {
        let t0 = Instant::now();
        let mut c = Cluster::new("a");
        c.beat(t0, "a", "eu", |_| {});
        let plan = plan_drain(
            &c.view,
            "a",
            &[leaving("p", "r", Kind::Watcher, &[("eu", 1.0)])],
        );
        assert_eq!(plan.stranded(), 1);
        assert!(plan.moves[0].to.is_none());
    }

    #[test]
    fn a_dead_node_orphans_its_rooms_after_the_death_timeout() {
        let t0 = Instant::now();
        let mut c = Cluster::new("b");
        c.beat(t0, "a", "eu", |u| {
            u.rooms_set = vec!["r1".into(), "r2".into()];
            u.devices = Some(vec![device("r1", "dev")]);
            u.sessions_set = vec![
                ("s1".into(), session("r1", "dev", "device")),
                ("s2".into(), session("r1", "p", "player")),
            ];
        });
        c.beat(t0, "b", "us", |_| {});
        // b keeps beating; a falls silent after t0.
        let t1 = t0 + Duration::from_millis(900);
        c.beat(t1, "b", "us", |_| {});
        assert!(
            orphaned_by(&c.view, t1, DEATH).is_empty(),
            "silent 0.9 s: alive"
        );
        let t2 = t0 + Duration::from_millis(1001);
        c.beat(t2, "b", "us", |_| {});
        let o = orphaned_by(&c.view, t2, DEATH);
        assert_eq!(
            o,
            [Orphans {
                node: "a".into(),
                rooms: vec!["r1".into(), "r2".into()],
                sessions: 2,
                devices: vec![("r1".into(), "dev".into())],
            }]
        );
        // Expiring it then frees the rooms for their devices' next node to claim.
        assert_eq!(c.view.expire(t2), ["a"]);
        assert!(c.view.room_home("r1").is_none());
        // This node itself is never judged dead by its own view.
        let later = t2 + Duration::from_secs(10);
        assert!(orphaned_by(&c.view, later, DEATH).is_empty());
    }
}
