//! Route selection: which node a new session goes to, from the view, the room and the RTTs the
//! client measured. Pure functions of their inputs.

use crate::model::{NodeInfo, RegionRtt};
use crate::view::ClusterView;

/// Regions whose measured RTTs differ by less than this are a tie, broken by load.
pub const TIE_MS: f64 = 2.0;

/// Why a session goes where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The room already has a home: every session of the room goes there.
    RoomHome,
    /// The healthy region with the lowest RTT the client measured.
    Nearest,
    /// The client sent no ranking (or may not be redirected again): the node it reached.
    Local,
    /// None of the regions the client ranked has a usable node: the node it reached.
    Fallback,
    /// The node it reached is draining: the node a drain would move it to.
    Draining,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RoomHome => "room_home",
            Reason::Nearest => "nearest",
            Reason::Local => "local",
            Reason::Fallback => "fallback",
            Reason::Draining => "draining",
        }
    }
}

/// Where a session goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The chosen node (this node itself when `here`).
    pub node: NodeInfo,
    pub here: bool,
    pub reason: Reason,
    /// The RTT the client measured to the chosen node's region, when it measured one.
    pub rtt_ms: Option<f64>,
}

/// Places a session of `room`. `ranking` is what the client measured (any order; invalid
/// entries — negative, not finite, unknown regions — are ignored). `may_redirect` is false
/// when the client was already redirected by RTT once: it is not bounced again on a view that
/// differs between nodes. Returns `None` only when this node is not in its own view (before
/// its first heartbeat).
pub fn place(
    view: &ClusterView,
    room: &str,
    ranking: &[RegionRtt],
    may_redirect: bool,
) -> Option<Placement> {
    place_with(view, room, ranking, may_redirect, false)
}

/// As [`place`]; with `edge` (a session that only watches and sends controls, on a node with
/// a trunk) a room homed on a node with a trunk does not pull the session to its home: it
/// goes to the nearest node that has a trunk too, which serves it over the trunk.
pub fn place_with(
    view: &ClusterView,
    room: &str,
    ranking: &[RegionRtt],
    may_redirect: bool,
    edge: bool,
) -> Option<Placement> {
    place_for(view, room, ranking, may_redirect, edge, false)
}

/// As [`place_with`]; with `takeover` (a device: its room goes where it goes) a room whose
/// only home is draining does not pull the session there: the device is placed by its
/// ranking and takes the room's home with it (see [`crate::Directory::claim`]).
pub fn place_for(
    view: &ClusterView,
    room: &str,
    ranking: &[RegionRtt],
    may_redirect: bool,
    edge: bool,
    takeover: bool,
) -> Option<Placement> {
    let me = view.node(view.me())?.clone();
    let rtt_of = |region: &str| {
        ranking
            .iter()
            .filter(|r| r.region == region && r.rtt_ms.is_finite() && r.rtt_ms >= 0.0)
            .map(|r| r.rtt_ms)
            .reduce(f64::min)
    };
    let here = |node: &NodeInfo| node.id == me.id;
    let mut trunked = false;
    let home = view
        .room_home(room)
        .filter(|h| !(takeover && h.draining && h.id != me.id));
    if let Some(home) = home {
        if !(edge && home.trunk.is_some() && me.trunk.is_some()) {
            return Some(Placement {
                here: here(home),
                rtt_ms: rtt_of(&home.region),
                node: home.clone(),
                reason: Reason::RoomHome,
            });
        }
        trunked = true;
    }
    let local = |reason| Placement {
        rtt_ms: rtt_of(&me.region),
        node: me.clone(),
        here: true,
        reason,
    };
    if ranking.is_empty() {
        let home_here = trunked && view.room_home(room).is_some_and(|h| h.id == me.id);
        return Some(local(if home_here {
            Reason::RoomHome
        } else {
            Reason::Local
        }));
    }
    let mut candidates: Vec<(f64, &NodeInfo)> = view
        .nodes()
        .filter(|n| !n.draining && !n.overloaded())
        // Over the trunk, only nodes that have one can serve the room.
        .filter(|n| !trunked || n.trunk.is_some())
        .filter_map(|n| rtt_of(&n.region).map(|rtt| (rtt, n)))
        .collect();
    let Some(best) = candidates.iter().map(|c| c.0).reduce(f64::min) else {
        return Some(local(Reason::Fallback));
    };
    candidates.retain(|c| c.0 < best + TIE_MS);
    // Least loaded first; this node before an equally loaded other (no needless redirect),
    // then the lower RTT, then the id (the same choice on every node).
    candidates.sort_by(|a, b| {
        load(a.1)
            .total_cmp(&load(b.1))
            .then_with(|| here(b.1).cmp(&here(a.1)))
            .then_with(|| a.0.total_cmp(&b.0))
            .then_with(|| a.1.id.cmp(&b.1.id))
    });
    let (rtt, node) = candidates[0];
    if !here(node) && !may_redirect {
        // Already redirected by RTT: stay, even if this node's view disagrees.
        return Some(local(Reason::Local));
    }
    // Over the trunk, the nearest node may be the room's home itself.
    let reason = match view.room_home(room) {
        Some(h) if trunked && h.id == node.id => Reason::RoomHome,
        _ => Reason::Nearest,
    };
    Some(Placement {
        here: here(node),
        node: node.clone(),
        reason,
        rtt_ms: Some(rtt),
    })
}

/// A node's load: the fraction of its capacity in use, or its session count when it has no
/// limit (scaled so that any limited node at capacity compares as 1).
fn load(n: &NodeInfo) -> f64 {
    if n.max_sessions > 0 {
        n.sessions as f64 / n.max_sessions as f64
    } else {
        n.sessions as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::testutil::{info, update};

    fn view(nodes: &[(&str, &str, usize)]) -> ClusterView {
        let t0 = Instant::now();
        let mut v = ClusterView::new("a", Duration::from_millis(800));
        for (id, region, sessions) in nodes {
            let mut u = update(id, 1, 1, true);
            u.info = info(id, region);
            u.info.sessions = *sessions;
            v.apply(u, t0);
        }
        v
    }

    fn rtts(list: &[(&str, f64)]) -> Vec<RegionRtt> {
        list.iter()
            .map(|(r, ms)| RegionRtt {
                region: r.to_string(),
                rtt_ms: *ms,
            })
            .collect()
    }

    fn chosen(p: Option<Placement>) -> (String, Reason) {
        let p = p.expect("placed");
        (p.node.id, p.reason)
    }

    #[test]
    fn lowest_rtt_region_wins() {
        let v = view(&[("a", "eu", 0), ("b", "asia", 0), ("c", "us", 0)]);
        let r = rtts(&[("eu", 90.0), ("asia", 180.0), ("us", 20.0)]);
        let p = place(&v, "room", &r, true).unwrap();
        assert_eq!(
            (p.node.id.as_str(), p.here, p.rtt_ms),
            ("c", false, Some(20.0))
        );
        assert_eq!(p.reason, Reason::Nearest);
        // The client's own region is nearest: no redirect.
        let r = rtts(&[("eu", 20.0), ("us", 90.0)]);
        let p = place(&v, "room", &r, true).unwrap();
        assert!(p.here);
    }

    #[test]
    fn no_ranking_or_no_redirect_stays_local() {
        let v = view(&[("a", "eu", 0), ("c", "us", 0)]);
        assert_eq!(
            chosen(place(&v, "r", &[], true)),
            ("a".into(), Reason::Local)
        );
        let r = rtts(&[("us", 5.0), ("eu", 100.0)]);
        assert_eq!(
            chosen(place(&v, "r", &r, false)),
            ("a".into(), Reason::Local)
        ); // Redirected here already, and this node is the nearest: it says so.
        let r = rtts(&[("us", 100.0), ("eu", 5.0)]);
        assert_eq!(
            chosen(place(&v, "r", &r, false)),
            ("a".into(), Reason::Nearest)
        );
    }

    #[test]
    fn draining_overloaded_and_unknown_regions_are_skipped() {
        let t0 = Instant::now();
        let mut v = view(&[("a", "eu", 0), ("b", "asia", 0), ("c", "us", 0)]);
        let mut u = update("c", 1, 2, false);
        u.info = info("c", "us");
        u.info.draining = true;
        v.apply(u, t0);
        let mut u = update("b", 1, 2, false);
        u.info = info("b", "asia");
        u.info.max_sessions = 10;
        u.info.sessions = 10;
        v.apply(u, t0);
        let r = rtts(&[("us", 10.0), ("asia", 30.0), ("eu", 90.0), ("mars", 1.0)]);
        assert_eq!(
            chosen(place(&v, "r", &r, true)),
            ("a".into(), Reason::Nearest)
        );
        // Only unusable regions ranked: the node reached.
        let r = rtts(&[("us", 10.0), ("mars", 1.0), ("asia", f64::NAN)]);
        assert_eq!(
            chosen(place(&v, "r", &r, true)),
            ("a".into(), Reason::Fallback)
        );
        // Garbage RTTs are ignored, not trusted.
        let r = rtts(&[("eu", -5.0), ("asia", f64::INFINITY)]);
        assert_eq!(
            chosen(place(&v, "r", &r, true)),
            ("a".into(), Reason::Fallback)
        );
    }

    #[test]
    fn ties_go_to_the_least_loaded_node() {
        let v = view(&[("a", "eu", 50), ("b", "eu", 10), ("c", "us", 0)]);
        let r = rtts(&[("eu", 20.0), ("us", 21.5)]);
        // eu and us are within TIE_MS: the idle us node wins.
        assert_eq!(
            chosen(place(&v, "r", &r, true)),
            ("c".into(), Reason::Nearest)
        );
        // Clearly nearer eu: its less loaded node.
        let r = rtts(&[("eu", 20.0), ("us", 60.0)]);
        assert_eq!(
            chosen(place(&v, "r", &r, true)),
            ("b".into(), Reason::Nearest)
        );
    }

    #[test]
    fn a_homed_room_goes_home_whatever_the_rtt() {
        let t0 = Instant::now();
        let mut v = view(&[("a", "eu", 0), ("b", "asia", 0)]);
        let mut u = update("b", 1, 2, false);
        u.info = info("b", "asia");
        u.rooms_set = vec!["game".into()];
        v.apply(u, t0);
        let r = rtts(&[("eu", 5.0), ("asia", 200.0)]);
        let p = place(&v, "game", &r, false).unwrap();
        assert_eq!(
            (p.node.id.as_str(), p.reason, p.rtt_ms),
            ("b", Reason::RoomHome, Some(200.0))
        );
        assert!(!p.here);
    }

    #[test]
    fn over_the_trunk_a_watcher_stays_near_and_a_device_goes_home() {
        let t0 = Instant::now();
        let mut v = ClusterView::new("a", Duration::from_millis(800));
        for (id, region, trunk) in [("a", "eu", true), ("b", "asia", true), ("c", "us", false)] {
            let mut u = update(id, 1, 1, true);
            u.info = info(id, region);
            u.info.trunk = trunk.then(|| format!("{id}.test:7890"));
            if id == "b" {
                u.rooms_set = vec!["game".into()];
            }
            v.apply(u, t0);
        }
        // A player near eu stays on a (eu) although the room is homed on b.
        let r = rtts(&[("eu", 5.0), ("asia", 200.0), ("us", 90.0)]);
        let p = place_with(&v, "game", &r, true, true).unwrap();
        assert_eq!(
            (p.node.id.as_str(), p.here, p.reason),
            ("a", true, Reason::Nearest)
        );
        // Nearest to us, whose node has no trunk: the nearest node with one.
        let r = rtts(&[("eu", 90.0), ("asia", 200.0), ("us", 5.0)]);
        assert_eq!(
            chosen(place_with(&v, "game", &r, true, true)),
            ("a".into(), Reason::Nearest)
        );
        // A device (not edge) goes to the room's home.
        assert_eq!(
            chosen(place_with(&v, "game", &r, true, false)),
            ("b".into(), Reason::RoomHome)
        );
    }

    #[test]
    fn not_in_its_own_view_places_nothing() {
        let v = ClusterView::new("a", Duration::from_millis(800));
        assert!(place(&v, "r", &[], true).is_none());
    }
}
