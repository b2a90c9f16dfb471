//! This node's own entries, sans-IO: sessions, room homes and devices change as clients come
//! and go; every heartbeat `flush` turns what changed since the last one into one [`Update`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::model::{DeviceEntry, NodeInfo, SessionEntry, Update};

/// Bitrate and viewer counts of devices are republished at most this often (a device
/// appearing, leaving, going live or stalling is published at the next heartbeat).
pub const DEVICE_REFRESH: Duration = Duration::from_secs(1);

pub struct LocalState {
    info: NodeInfo,
    epoch: u64,
    seq: u64,
    sessions: HashMap<String, SessionEntry>,
    sessions_set: BTreeMap<String, SessionEntry>,
    sessions_del: BTreeSet<String>,
    /// Local sessions per room.
    rooms: HashMap<String, usize>,
    /// Rooms homed here.
    homes: BTreeSet<String>,
    homes_set: BTreeSet<String>,
    homes_del: BTreeSet<String>,
    devices: Vec<DeviceEntry>,
    /// The list as last published, and when.
    sent_devices: Vec<DeviceEntry>,
    devices_sent: Option<Instant>,
    full: bool,
}

impl LocalState {
    /// `info` is the node's static part (id, region, URLs, limit); `epoch` its start time in
    /// unix milliseconds.
    pub fn new(info: NodeInfo, epoch: u64) -> Self {
        LocalState {
            info,
            epoch,
            seq: 0,
            sessions: HashMap::new(),
            sessions_set: BTreeMap::new(),
            sessions_del: BTreeSet::new(),
            rooms: HashMap::new(),
            homes: BTreeSet::new(),
            homes_set: BTreeSet::new(),
            homes_del: BTreeSet::new(),
            devices: Vec::new(),
            sent_devices: Vec::new(),
            devices_sent: None,
            full: true,
        }
    }

    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// A session started. Returns true when it is the room's first session on this node.
    pub fn session_start(&mut self, id: &str, entry: SessionEntry) -> bool {
        let n = self.rooms.entry(entry.room.clone()).or_default();
        *n += 1;
        let first = *n == 1;
        self.sessions_del.remove(id);
        self.sessions_set.insert(id.to_string(), entry.clone());
        self.sessions.insert(id.to_string(), entry);
        first
    }

    /// A session ended. Returns the room when it was the room's last session on this node.
    pub fn session_end(&mut self, id: &str) -> Option<String> {
        let entry = self.sessions.remove(id)?;
        if self.sessions_set.remove(id).is_none() {
            self.sessions_del.insert(id.to_string());
        }
        let n = self.rooms.get_mut(&entry.room)?;
        *n -= 1;
        if *n == 0 {
            self.rooms.remove(&entry.room);
            return Some(entry.room);
        }
        None
    }

    /// Local sessions in `room`.
    pub fn room_sessions(&self, room: &str) -> usize {
        self.rooms.get(room).copied().unwrap_or(0)
    }

    pub fn is_home(&self, room: &str) -> bool {
        self.homes.contains(room)
    }

    /// This node became `room`'s home.
    pub fn set_home(&mut self, room: &str) {
        if self.homes.insert(room.to_string()) && !self.homes_del.remove(room) {
            self.homes_set.insert(room.to_string());
        }
    }

    /// This node is no longer `room`'s home.
    pub fn clear_home(&mut self, room: &str) {
        if self.homes.remove(room) && !self.homes_set.remove(room) {
            self.homes_del.insert(room.to_string());
        }
    }

    pub fn homes(&self) -> &BTreeSet<String> {
        &self.homes
    }

    /// The node's current device list (from the SFU).
    pub fn set_devices(&mut self, mut list: Vec<DeviceEntry>) {
        list.sort_by(|a, b| (&a.room, &a.identity).cmp(&(&b.room, &b.identity)));
        self.devices = list;
    }

    /// Whether the device list must go out now: a device appeared, left, went live or
    /// stalled, or only its counters changed and `DEVICE_REFRESH` has passed.
    fn devices_due(&self, now: Instant) -> bool {
        if self.devices == self.sent_devices {
            return false;
        }
        fn shape(l: &[DeviceEntry]) -> Vec<(&str, &str, bool, &[String])> {
            l.iter()
                .map(|d| {
                    (
                        d.room.as_str(),
                        d.identity.as_str(),
                        d.live,
                        d.tracks.as_slice(),
                    )
                })
                .collect()
        }
        shape(&self.devices) != shape(&self.sent_devices)
            || self
                .devices_sent
                .is_none_or(|t| now.saturating_duration_since(t) >= DEVICE_REFRESH)
    }

    pub fn set_draining(&mut self, draining: bool) {
        self.info.draining = draining;
    }

    /// The next update is a full snapshot (after the directory lost this node's state, or
    /// when it comes back after an outage).
    pub fn request_full(&mut self) {
        self.full = true;
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The heartbeat: this node's info with its load, and whatever changed since the last
    /// flush (or everything, when a full update is due).
    pub fn flush(&mut self, now: Instant, unix_ms: u64) -> Update {
        self.seq += 1;
        self.info.sessions = self.sessions.len();
        self.info.devices = self.devices.iter().filter(|d| d.live).count();
        self.info.heartbeat_ms = unix_ms;
        let mut u = Update {
            epoch: self.epoch,
            seq: self.seq,
            info: self.info.clone(),
            full: self.full,
            gone: false,
            devices: None,
            sessions_set: Vec::new(),
            sessions_del: Vec::new(),
            rooms_set: Vec::new(),
            rooms_del: Vec::new(),
        };
        if self.full {
            u.devices = Some(self.devices.clone());
            u.sessions_set = self
                .sessions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            u.sessions_set.sort_by(|a, b| a.0.cmp(&b.0));
            u.rooms_set = self.homes.iter().cloned().collect();
            self.sessions_set.clear();
            self.sessions_del.clear();
            self.homes_set.clear();
            self.homes_del.clear();
            self.sent_devices = self.devices.clone();
            self.devices_sent = Some(now);
            self.full = false;
            return u;
        }
        if self.devices_due(now) {
            u.devices = Some(self.devices.clone());
            self.devices_sent = Some(now);
            self.sent_devices = self.devices.clone();
        }
        u.sessions_set = std::mem::take(&mut self.sessions_set).into_iter().collect();
        u.sessions_del = std::mem::take(&mut self.sessions_del).into_iter().collect();
        u.rooms_set = std::mem::take(&mut self.homes_set).into_iter().collect();
        u.rooms_del = std::mem::take(&mut self.homes_del).into_iter().collect();
        u
    }

    /// The update announcing a clean leave.
    pub fn leave(&mut self, unix_ms: u64) -> Update {
        self.seq += 1;
        let mut info = self.info.clone();
        info.heartbeat_ms = unix_ms;
        Update {
            epoch: self.epoch,
            seq: self.seq,
            info,
            full: false,
            gone: true,
            devices: None,
            sessions_set: Vec::new(),
            sessions_del: Vec::new(),
            rooms_set: Vec::new(),
            rooms_del: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::info;

    fn session(room: &str, who: &str) -> SessionEntry {
        SessionEntry {
            room: room.into(),
            identity: who.into(),
            role: "player".into(),
            since_ms: 0,
        }
    }

    fn device(room: &str, bitrate_bps: u64, live: bool) -> DeviceEntry {
        DeviceEntry {
            room: room.into(),
            identity: format!("cam-{room}"),
            live,
            viewers: 0,
            bitrate_bps,
            tracks: vec!["t1".into()],
            remote_nodes: vec![],
        }
    }

    #[test]
    fn the_first_flush_is_full_then_only_changes_travel() {
        let t0 = Instant::now();
        let mut l = LocalState::new(info("a", "eu"), 7);
        assert!(l.session_start("s1", session("r", "p1")));
        l.set_home("r");
        let u = l.flush(t0, 1000);
        assert!(u.full);
        assert_eq!(
            (u.epoch, u.seq, u.info.sessions, u.info.heartbeat_ms),
            (7, 1, 1, 1000)
        );
        assert_eq!(u.rooms_set, ["r"]);
        assert_eq!(u.sessions_set.len(), 1);
        // Nothing changed: a bare heartbeat.
        let u = l.flush(t0, 1200);
        assert!(!u.full && u.sessions_set.is_empty() && u.rooms_set.is_empty());
        assert!(u.devices.is_none());
        assert_eq!(u.seq, 2);
        // A second session in the room is not the first; ending both releases the room.
        assert!(!l.session_start("s2", session("r", "p2")));
        assert_eq!(l.session_end("s1"), None);
        let u = l.flush(t0, 1400);
        assert_eq!(
            u.sessions_set
                .iter()
                .map(|s| s.0.as_str())
                .collect::<Vec<_>>(),
            ["s2"]
        );
        assert_eq!(u.sessions_del, ["s1"]);
        assert_eq!(l.session_end("s2"), Some("r".to_string()));
        assert_eq!(l.session_end("s2"), None, "ending twice is harmless");
        l.clear_home("r");
        let u = l.flush(t0, 1600);
        assert_eq!((u.sessions_del.len(), u.rooms_del.len()), (1, 1));
        assert_eq!(u.info.sessions, 0);
    }

    #[test]
    fn a_session_that_comes_and_goes_between_flushes_costs_nothing() {
        let t0 = Instant::now();
        let mut l = LocalState::new(info("a", "eu"), 1);
        l.flush(t0, 0);
        l.session_start("s1", session("r", "p1"));
        l.set_home("r");
        l.session_end("s1");
        l.clear_home("r");
        let u = l.flush(t0, 0);
        assert!(u.sessions_set.is_empty() && u.sessions_del.is_empty());
        assert!(u.rooms_set.is_empty() && u.rooms_del.is_empty());
    }

    #[test]
    fn device_counters_are_rate_limited_but_presence_is_not() {
        let t0 = Instant::now();
        let mut l = LocalState::new(info("a", "eu"), 1);
        l.flush(t0, 0);
        l.set_devices(vec![device("r", 1000, true)]);
        let u = l.flush(t0, 0);
        assert_eq!(
            u.devices.as_ref().map(Vec::len),
            Some(1),
            "a new device goes out at once"
        );
        assert_eq!(u.info.devices, 1);
        l.set_devices(vec![device("r", 2000, true)]);
        let t1 = t0 + Duration::from_millis(200);
        assert!(l.flush(t1, 0).devices.is_none(), "a bitrate change waits");
        let t2 = t0 + DEVICE_REFRESH;
        assert_eq!(l.flush(t2, 0).devices.unwrap()[0].bitrate_bps, 2000);
        l.set_devices(vec![device("r", 2000, false)]);
        let u = l.flush(t2 + Duration::from_millis(10), 0);
        assert!(!u.devices.unwrap()[0].live, "a stall goes out at once");
        assert_eq!(u.info.devices, 0);
    }

    #[test]
    fn a_requested_full_update_carries_everything() {
        let t0 = Instant::now();
        let mut l = LocalState::new(info("a", "eu"), 1);
        l.session_start("s1", session("r", "p1"));
        l.set_home("r");
        l.set_devices(vec![device("r", 1, true)]);
        l.flush(t0, 0);
        l.request_full();
        let u = l.flush(t0, 0);
        assert!(u.full);
        assert_eq!((u.sessions_set.len(), u.rooms_set.len()), (1, 1));
        assert_eq!(u.devices.map(|d| d.len()), Some(1));
        let gone = l.leave(5);
        assert!(gone.gone);
        assert_eq!(gone.seq, 3);
    }
}
