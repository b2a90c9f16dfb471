//! A node's local view of the cluster, sans-IO: updates and the time in, the live nodes, room
//! homes and the merged device list out. Requests are answered from here, never from Redis.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::model::{DeviceEntry, NodeInfo, SessionEntry, Update};

/// What applying an update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied; the node was already known.
    Updated,
    /// Applied; the node is new to this view (or restarted).
    Joined,
    /// Older than what the view has (a replay or an echo): ignored.
    Stale,
    /// Updates were missed (or the node is unknown and this is not a full update): the node's
    /// liveness and info were refreshed, but its entries must be reloaded.
    Gap,
    /// The node left cleanly and was removed.
    Left,
}

struct NodeEntry {
    info: NodeInfo,
    epoch: u64,
    seq: u64,
    heard: Instant,
    devices: Vec<DeviceEntry>,
    sessions: HashMap<String, SessionEntry>,
    rooms: BTreeSet<String>,
}

/// The cluster as this node sees it.
pub struct ClusterView {
    me: String,
    death_timeout: Duration,
    nodes: BTreeMap<String, NodeEntry>,
}

impl ClusterView {
    pub fn new(me: impl Into<String>, death_timeout: Duration) -> Self {
        ClusterView {
            me: me.into(),
            death_timeout,
            nodes: BTreeMap::new(),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Applies an update heard at `heard` (the time it arrived, or for stored state, the time
    /// its heartbeat was written).
    pub fn apply(&mut self, u: Update, heard: Instant) -> Applied {
        let id = u.info.id.clone();
        if u.gone {
            return match self.nodes.get(&id) {
                Some(e) if (u.epoch, u.seq) < (e.epoch, e.seq) => Applied::Stale,
                Some(_) => {
                    self.nodes.remove(&id);
                    Applied::Left
                }
                None => Applied::Stale,
            };
        }
        let Some(e) = self.nodes.get_mut(&id) else {
            let full = u.full;
            self.nodes.insert(id, entry_from(u, heard));
            return if full { Applied::Joined } else { Applied::Gap };
        };
        if (u.epoch, u.seq) <= (e.epoch, e.seq) {
            return Applied::Stale;
        }
        if u.full || u.epoch != e.epoch {
            let restarted = u.epoch != e.epoch;
            let full = u.full;
            *e = entry_from(u, heard);
            return match (full, restarted) {
                (true, true) => Applied::Joined,
                (true, false) => Applied::Updated,
                (false, _) => Applied::Gap,
            };
        }
        let gap = u.seq != e.seq + 1;
        e.seq = u.seq;
        e.heard = e.heard.max(heard);
        e.info = u.info;
        // Apply what the update carries even after a gap: it is newer than what the view has,
        // and the reload that follows replaces it all.
        if let Some(d) = u.devices {
            e.devices = d;
        }
        for (k, s) in u.sessions_set {
            e.sessions.insert(k, s);
        }
        for k in u.sessions_del {
            e.sessions.remove(&k);
        }
        e.rooms.extend(u.rooms_set);
        for r in u.rooms_del {
            e.rooms.remove(&r);
        }
        if gap {
            Applied::Gap
        } else {
            Applied::Updated
        }
    }

    /// Removes the nodes not heard from within the death timeout (never this node itself);
    /// returns their ids.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let timeout = self.death_timeout;
        let dead: Vec<String> = self
            .nodes
            .iter()
            .filter(|(id, e)| *id != &self.me && now.saturating_duration_since(e.heard) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dead {
            self.nodes.remove(id);
        }
        dead
    }

    /// As [`ClusterView::expire`], judging silence only for as long as the directory was
    /// known to work: `confirmed` is the last time it answered this node, and `slack` how
    /// long after that it may stay quiet before this node would have noticed (a heartbeat).
    /// While the directory is away, other nodes not being heard is no sign of their death,
    /// so nobody expires; once it answers again, the normal rule applies.
    pub fn expire_confirmed(
        &mut self,
        now: Instant,
        confirmed: Instant,
        slack: Duration,
    ) -> Vec<String> {
        self.expire(now.min(confirmed + slack))
    }

    /// Counts every node as heard at `now`: after the directory was away, each gets a whole
    /// death timeout to be heard again before it is judged.
    pub fn touch_all(&mut self, now: Instant) {
        for e in self.nodes.values_mut() {
            e.heard = e.heard.max(now);
        }
    }

    /// Forgets a node (e.g. its stored state is gone).
    pub fn remove(&mut self, id: &str) {
        self.nodes.remove(id);
    }

    /// The live nodes, by id.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values().map(|e| &e.info)
    }

    pub fn node(&self, id: &str) -> Option<&NodeInfo> {
        self.nodes.get(id).map(|e| &e.info)
    }

    /// How long ago the node was last heard from.
    pub fn silence(&self, id: &str, now: Instant) -> Option<Duration> {
        self.nodes
            .get(id)
            .map(|e| now.saturating_duration_since(e.heard))
    }

    /// The node that is `room`'s home. Two nodes claiming one room resolve the same way on
    /// every node: the lowest id among those not draining (a draining node's device moved the
    /// room to another node), else the lowest id. Two claims happen while the directory was
    /// unreachable, and during a drain's hand-over.
    pub fn room_home(&self, room: &str) -> Option<&NodeInfo> {
        // A node that drains hands its rooms over: a claimant that does not comes first.
        let mut claimants = self.nodes.values().filter(|e| e.rooms.contains(room));
        let first = claimants.next()?;
        if !first.info.draining {
            return Some(&first.info);
        }
        Some(
            claimants
                .find(|e| !e.info.draining)
                .map_or(&first.info, |e| &e.info),
        )
    }

    /// Every device of every live node, with the node it is on, ordered by room and identity.
    pub fn devices(&self) -> Vec<(&NodeInfo, &DeviceEntry)> {
        let mut out: Vec<_> = self
            .nodes
            .values()
            .flat_map(|e| e.devices.iter().map(move |d| (&e.info, d)))
            .collect();
        out.sort_by(|a, b| (&a.1.room, &a.1.identity).cmp(&(&b.1.room, &b.1.identity)));
        out
    }

    /// Sessions per live node.
    pub fn sessions(&self, id: &str) -> Option<&HashMap<String, SessionEntry>> {
        self.nodes.get(id).map(|e| &e.sessions)
    }

    /// Rooms homed on a node.
    pub fn rooms(&self, id: &str) -> Option<&BTreeSet<String>> {
        self.nodes.get(id).map(|e| &e.rooms)
    }

    /// The regions with at least one live node, sorted.
    pub fn regions(&self) -> BTreeMap<&str, Vec<&NodeInfo>> {
        let mut out: BTreeMap<&str, Vec<&NodeInfo>> = BTreeMap::new();
        for e in self.nodes.values() {
            out.entry(e.info.region.as_str()).or_default().push(&e.info);
        }
        out
    }
}

fn entry_from(u: Update, heard: Instant) -> NodeEntry {
    NodeEntry {
        epoch: u.epoch,
        seq: u.seq,
        heard,
        devices: u.devices.unwrap_or_default(),
        sessions: u.sessions_set.into_iter().collect(),
        rooms: u.rooms_set.into_iter().collect(),
        info: u.info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{info, update};

    const TIMEOUT: Duration = Duration::from_millis(800);

    #[test]
    fn heartbeats_keep_a_node_alive_and_silence_expires_it() {
        let t0 = Instant::now();
        let mut v = ClusterView::new("a", TIMEOUT);
        assert_eq!(v.apply(update("b", 1, 1, true), t0), Applied::Joined);
        let mut seq = 1;
        // Heartbeats every 200 ms for 5 s: never expired.
        for i in 1..=25u64 {
            let now = t0 + Duration::from_millis(200 * i);
            seq += 1;
            assert_eq!(v.apply(update("b", 1, seq, false), now), Applied::Updated);
            assert!(v.expire(now).is_empty());
        }
        let last = t0 + Duration::from_millis(5000);
        assert!(
            v.expire(last + TIMEOUT).is_empty(),
            "exactly the timeout is still alive"
        );
        assert_eq!(
            v.expire(last + TIMEOUT + Duration::from_millis(1)),
            vec!["b"]
        );
        assert!(v.node("b").is_none());
    }

    #[test]
    fn silence_while_the_directory_is_away_is_no_death() {
        let hb = Duration::from_millis(200);
        let t0 = Instant::now();
        let mut v = ClusterView::new("a", TIMEOUT);
        v.apply(update("b", 1, 1, true), t0);
        // The directory answered last at t0 + 100 ms, then went away for 30 s: b, unheard
        // since t0, is not judged meanwhile.
        let confirmed = t0 + Duration::from_millis(100);
        for s in 1..=30 {
            let now = t0 + Duration::from_secs(s);
            assert!(
                v.expire_confirmed(now, confirmed, hb).is_empty(),
                "{s} s into the outage"
            );
        }
        // It answers again: everyone gets a whole timeout from then to be heard.
        let back = t0 + Duration::from_secs(31);
        v.touch_all(back);
        assert!(v
            .expire_confirmed(back + TIMEOUT, back + TIMEOUT, hb)
            .is_empty());
        let late = back + TIMEOUT + Duration::from_millis(1);
        assert_eq!(
            v.expire_confirmed(late, late, hb),
            vec!["b"],
            "b stayed silent"
        );
        // With the directory answering all along, silence beyond the timeout is a death.
        v.apply(update("c", 1, 1, true), t0);
        let now = t0 + TIMEOUT + Duration::from_millis(1);
        assert_eq!(
            v.expire_confirmed(now, now - Duration::from_millis(50), hb),
            vec!["c"]
        );
    }

    #[test]
    fn the_own_node_never_expires() {
        let t0 = Instant::now();
        let mut v = ClusterView::new("a", TIMEOUT);
        v.apply(update("a", 1, 1, true), t0);
        assert!(v.expire(t0 + Duration::from_secs(60)).is_empty());
        assert!(v.node("a").is_some());
    }

    #[test]
    fn stale_updates_are_ignored_and_gaps_reported() {
        let t0 = Instant::now();
        let mut v = ClusterView::new("a", TIMEOUT);
        v.apply(update("b", 1, 5, true), t0);
        assert_eq!(v.apply(update("b", 1, 5, false), t0), Applied::Stale);
        assert_eq!(v.apply(update("b", 1, 4, false), t0), Applied::Stale);
        assert_eq!(v.apply(update("b", 1, 8, false), t0), Applied::Gap);
        assert_eq!(v.apply(update("b", 1, 9, false), t0), Applied::Updated);
        // Unknown node without a full update: alive, but its entries are unknown.
        assert_eq!(v.apply(update("c", 1, 3, false), t0), Applied::Gap);
        assert!(v.node("c").is_some());
        // A restart (new epoch) with a full snapshot replaces the node.
        let mut u = update("b", 2, 1, true);
        u.rooms_set = vec!["r1".into()];
        assert_eq!(v.apply(u, t0), Applied::Joined);
        assert_eq!(v.room_home("r1").map(|n| n.id.as_str()), Some("b"));
        // A clean leave removes it at once; an older leave does not.
        let mut gone = update("b", 1, 99, false);
        gone.gone = true;
        assert_eq!(v.apply(gone, t0), Applied::Stale);
        let mut gone = update("b", 2, 2, false);
        gone.gone = true;
        assert_eq!(v.apply(gone, t0), Applied::Left);
        assert!(v.room_home("r1").is_none());
    }

    #[test]
    fn room_homes_follow_updates_and_die_with_their_node() {
        let t0 = Instant::now();
        let mut v = ClusterView::new("a", TIMEOUT);
        let mut u = update("b", 1, 1, true);
        u.rooms_set = vec!["lobby".into(), "arena".into()];
        v.apply(u, t0);
        let mut u = update("b", 1, 2, false);
        u.rooms_del = vec!["arena".into()];
        v.apply(u, t0);
        assert_eq!(v.room_home("lobby").map(|n| n.id.as_str()), Some("b"));
        assert!(v.room_home("arena").is_none());
        // Both a and c claim "split" (a directory outage): every view picks the lowest id.
        let mut u = update("c", 1, 1, true);
        u.rooms_set = vec!["split".into()];
        v.apply(u, t0);
        let mut u = update("a", 1, 1, true);
        u.rooms_set = vec!["split".into()];
        v.apply(u, t0);
        assert_eq!(v.room_home("split").map(|n| n.id.as_str()), Some("a"));
        // a drains: the room is handed to the claimant that does not.
        let mut u = update("a", 1, 2, false);
        u.info.draining = true;
        v.apply(u, t0);
        assert_eq!(v.room_home("split").map(|n| n.id.as_str()), Some("c"));
        let mut u = update("c", 1, 2, false);
        u.info.draining = true;
        v.apply(u, t0);
        assert_eq!(
            v.room_home("split").map(|n| n.id.as_str()),
            Some("a"),
            "all draining: the lowest id again"
        );
        v.expire(t0 + Duration::from_secs(2));
        assert!(
            v.room_home("lobby").is_none(),
            "b died, and its rooms with it"
        );
        assert_eq!(v.room_home("split").map(|n| n.id.as_str()), Some("a"));
    }

    #[test]
    fn device_lists_merge_across_nodes_with_their_region() {
        let t0 = Instant::now();
        let mut v = ClusterView::new("a", TIMEOUT);
        let dev = |room: &str, id: &str| DeviceEntry {
            room: room.into(),
            identity: id.into(),
            live: true,
            viewers: 0,
            bitrate_bps: 1_000_000,
            tracks: vec!["t1".into()],
            remote_nodes: vec![],
        };
        let mut u = update("a", 1, 1, true);
        u.devices = Some(vec![dev("r2", "cam-a")]);
        v.apply(u, t0);
        let mut u = update("b", 1, 1, true);
        u.info = info("b", "asia");
        u.devices = Some(vec![dev("r1", "cam-b"), dev("r3", "cam-c")]);
        v.apply(u, t0);
        let list: Vec<_> = v
            .devices()
            .iter()
            .map(|(n, d)| (d.identity.clone(), n.region.clone()))
            .collect();
        assert_eq!(
            list,
            [
                ("cam-b".to_string(), "asia".to_string()),
                ("cam-a".into(), "eu".into()),
                ("cam-c".into(), "asia".into())
            ]
        );
        // A device-less update keeps the list; a new list replaces it.
        let mut u = update("b", 1, 2, false);
        u.info = info("b", "asia");
        v.apply(u, t0);
        assert_eq!(v.devices().len(), 3);
        let mut u = update("b", 1, 3, false);
        u.info = info("b", "asia");
        u.devices = Some(vec![]);
        v.apply(u, t0);
        assert_eq!(v.devices().len(), 1);
        assert_eq!(
            v.regions().keys().copied().collect::<Vec<_>>(),
            ["asia", "eu"]
        );
    }

    #[test]
    fn sessions_are_tracked_per_node() {
        let t0 = Instant::now();
        let mut v = ClusterView::new("a", TIMEOUT);
        let s = SessionEntry {
            room: "r".into(),
            identity: "p1".into(),
            role: "player".into(),
            since_ms: 1,
        };
        let mut u = update("b", 1, 1, true);
        u.sessions_set = vec![("s1".into(), s.clone()), ("s2".into(), s.clone())];
        v.apply(u, t0);
        let mut u = update("b", 1, 2, false);
        u.sessions_del = vec!["s1".into()];
        v.apply(u, t0);
        let sessions = v.sessions("b").unwrap();
        assert_eq!(sessions.len(), 1);
        assert!(sessions.contains_key("s2"));
    }
}
