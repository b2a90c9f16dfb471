//! The directory: a [`Backend`] that stores every node's entries and pushes changes (embedded
//! in memory, or Redis), and the [`Directory`] runtime that heartbeats this node into it and
//! keeps the local [`ClusterView`] that requests are answered from.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc};

use crate::local::LocalState;
use crate::model::{DeviceEntry, NodeInfo, RegionRtt, SessionEntry, Update};
use crate::route::{self, Placement};
use crate::view::{Applied, ClusterView};

/// Why the directory could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirError {
    #[error("directory unreachable: {0}")]
    Unreachable(String),
    #[error("directory timed out after {0:?}")]
    Timeout(Duration),
    #[error("bad data in the directory: {0}")]
    Corrupt(String),
}

/// What a backend tells the runtime.
#[derive(Debug, Clone)]
pub enum Event {
    /// Another node's update.
    Update(Box<Update>),
    /// The backend (re)connected: updates may have been missed, reload everything.
    Resync,
}

/// The result of claiming a room's home.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This node is the home now.
    Mine,
    /// Another live node is; its info as stored.
    Theirs(Box<NodeInfo>),
}

/// After publishing an update.
#[derive(Debug, Clone, Copy, Default)]
pub struct Published {
    /// The directory had lost this node's entries (they expired): send a full update next.
    pub lost: bool,
}

/// Where the directory's data lives.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// "embedded" or "redis", for logs and metrics.
    fn kind(&self) -> &'static str;
    /// Starts delivering other nodes' updates (and resync requests) to `events`.
    async fn start(&self, me: &str, events: mpsc::Sender<Event>) -> Result<(), DirError>;
    /// Stores this node's update (keeping its entries alive for `ttl`) and announces it.
    async fn publish(&self, update: &Update, ttl: Duration) -> Result<Published, DirError>;
    /// Every stored node, as full updates.
    async fn load_all(&self) -> Result<Vec<Update>, DirError>;
    /// One stored node, as a full update.
    async fn load(&self, node: &str) -> Result<Option<Update>, DirError>;
    /// Makes `me` the home of `room` unless another live node is.
    /// With `takeover`, a claim held by a draining node passes to `me` (a device moving
    /// off a draining node brings its room along).
    async fn claim_room(&self, room: &str, me: &str, takeover: bool) -> Result<Claim, DirError>;
    /// Gives up `room` if `me` is its home.
    async fn release_room(&self, room: &str, me: &str) -> Result<(), DirError>;
    /// Keeps the claims of rooms homed here from expiring.
    async fn refresh_rooms(&self, rooms: &[String], me: &str) -> Result<(), DirError>;
    /// Removes this node's entries and tells the others (a clean stop).
    async fn leave(&self, update: &Update) -> Result<(), DirError>;
    /// Commands sent to the store so far (0 for the embedded directory).
    fn commands(&self) -> u64 {
        0
    }
}

/// The in-memory directory: the single-node default. Several [`Directory`] runtimes in one
/// process may share one (as a cluster of in-process nodes).
pub struct Embedded {
    state: Mutex<EmbeddedState>,
    events: broadcast::Sender<Update>,
}

#[derive(Default)]
struct EmbeddedState {
    nodes: HashMap<String, (Update, Instant, Duration)>,
    homes: HashMap<String, String>,
}

impl Default for Embedded {
    fn default() -> Self {
        Embedded {
            state: Mutex::default(),
            events: broadcast::channel(1024).0,
        }
    }
}

impl Embedded {
    fn lock(&self) -> std::sync::MutexGuard<'_, EmbeddedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Merges an update into a node's stored full state.
fn merge_stored(stored: &mut Update, u: &Update) {
    if u.full {
        *stored = u.clone();
        return;
    }
    stored.epoch = u.epoch;
    stored.seq = u.seq;
    stored.info = u.info.clone();
    if let Some(d) = &u.devices {
        stored.devices = Some(d.clone());
    }
    stored
        .sessions_set
        .retain(|(k, _)| !u.sessions_del.contains(k) && !u.sessions_set.iter().any(|s| &s.0 == k));
    stored.sessions_set.extend(u.sessions_set.iter().cloned());
    stored
        .rooms_set
        .retain(|r| !u.rooms_del.contains(r) && !u.rooms_set.contains(r));
    stored.rooms_set.extend(u.rooms_set.iter().cloned());
}

#[async_trait]
impl Backend for Embedded {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn start(&self, me: &str, events: mpsc::Sender<Event>) -> Result<(), DirError> {
        let mut rx = self.events.subscribe();
        let me = me.to_string();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(u) if u.info.id == me => {}
                    Ok(u) => {
                        if events.send(Event::Update(Box::new(u))).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if events.send(Event::Resync).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(())
    }

    async fn publish(&self, u: &Update, ttl: Duration) -> Result<Published, DirError> {
        let now = Instant::now();
        let lost = {
            let mut st = self.lock();
            let live = st
                .nodes
                .get(&u.info.id)
                .is_some_and(|(_, at, ttl)| now.duration_since(*at) <= *ttl);
            match st.nodes.get_mut(&u.info.id) {
                Some((stored, at, t)) if live => {
                    merge_stored(stored, u);
                    (*at, *t) = (now, ttl);
                }
                _ => {
                    let mut full = u.clone();
                    full.full = true;
                    st.nodes.insert(u.info.id.clone(), (full, now, ttl));
                }
            }
            !live && !u.full
        };
        let _ = self.events.send(u.clone());
        Ok(Published { lost })
    }

    async fn load_all(&self) -> Result<Vec<Update>, DirError> {
        let now = Instant::now();
        let mut st = self.lock();
        st.nodes
            .retain(|_, (_, at, ttl)| now.duration_since(*at) <= *ttl);
        Ok(st.nodes.values().map(|(u, _, _)| u.clone()).collect())
    }

    async fn load(&self, node: &str) -> Result<Option<Update>, DirError> {
        let now = Instant::now();
        let st = self.lock();
        Ok(st
            .nodes
            .get(node)
            .filter(|(_, at, ttl)| now.duration_since(*at) <= *ttl)
            .map(|(u, _, _)| u.clone()))
    }

    async fn claim_room(&self, room: &str, me: &str, takeover: bool) -> Result<Claim, DirError> {
        let now = Instant::now();
        let mut st = self.lock();
        if let Some(owner) = st.homes.get(room).filter(|o| o.as_str() != me).cloned() {
            if let Some((u, at, ttl)) = st.nodes.get(&owner) {
                if now.duration_since(*at) <= *ttl && !(takeover && u.info.draining) {
                    return Ok(Claim::Theirs(Box::new(u.info.clone())));
                }
            }
        }
        st.homes.insert(room.to_string(), me.to_string());
        Ok(Claim::Mine)
    }

    async fn release_room(&self, room: &str, me: &str) -> Result<(), DirError> {
        let mut st = self.lock();
        if st.homes.get(room).is_some_and(|o| o == me) {
            st.homes.remove(room);
        }
        Ok(())
    }

    async fn refresh_rooms(&self, _rooms: &[String], _me: &str) -> Result<(), DirError> {
        Ok(())
    }

    async fn leave(&self, u: &Update) -> Result<(), DirError> {
        {
            let mut st = self.lock();
            st.nodes.remove(&u.info.id);
            let id = u.info.id.clone();
            st.homes.retain(|_, o| *o != id);
        }
        let _ = self.events.send(u.clone());
        Ok(())
    }
}

/// Timing of the runtime.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub heartbeat: Duration,
    pub death_timeout: Duration,
}

/// How many room claims are refreshed per heartbeat, at most: each is refreshed about every
/// `ROOM_REFRESH_PERIOD`, well inside the claim's TTL (see the Redis backend).
pub const ROOM_REFRESH_PERIOD: Duration = Duration::from_secs(100);

/// Whether the directory is reachable, as `/readyz` and the metrics report it.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub kind: &'static str,
    pub reachable: bool,
    /// Since when it has been in this state.
    pub since: Instant,
    /// The last error, while unreachable.
    pub error: Option<String>,
}

/// The outcome of a room claim, as signaling uses it.
#[derive(Debug, Clone, PartialEq)]
pub enum Home {
    /// Serve the room here.
    Here,
    /// The room is homed on another node: redirect there.
    Elsewhere(Box<NodeInfo>),
}

/// A node's directory client: heartbeats, the local view, claims.
pub struct Directory {
    me: String,
    backend: Arc<dyn Backend>,
    settings: Settings,
    view: RwLock<ClusterView>,
    local: Mutex<LocalState>,
    status: Mutex<Status>,
    started: Instant,
    /// Held across a heartbeat and across `leave`, so no heartbeat in flight can put this
    /// node back after it left; `true` once it left (heartbeats stop for good).
    beat_gate: tokio::sync::Mutex<bool>,
    /// When the directory last answered a heartbeat: others' silence counts only up to then.
    confirmed: Mutex<Instant>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A backend call bounded in time: the directory being slow never holds up a session for
/// long.
async fn bounded<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, DirError>>,
) -> Result<T, DirError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(DirError::Timeout(limit)),
    }
}

impl Directory {
    /// Starts the runtime on the current tokio runtime: subscribes, loads the cluster, and
    /// heartbeats every `settings.heartbeat`. Never fails because the backend is away: the
    /// node then runs alone and catches up when it returns.
    pub async fn start(info: NodeInfo, backend: Arc<dyn Backend>, settings: Settings) -> Arc<Self> {
        let me = info.id.clone();
        let kind = backend.kind();
        let dir = Arc::new(Directory {
            view: RwLock::new(ClusterView::new(&me, settings.death_timeout)),
            local: Mutex::new(LocalState::new(info, unix_ms())),
            status: Mutex::new(Status {
                kind,
                reachable: true,
                since: Instant::now(),
                error: None,
            }),
            started: Instant::now(),
            beat_gate: tokio::sync::Mutex::new(false),
            confirmed: Mutex::new(Instant::now()),
            me,
            backend,
            settings,
        });
        let (tx, rx) = mpsc::channel(4096);
        if let Err(e) = dir.backend.start(&dir.me, tx.clone()).await {
            dir.set_status(Err(&e));
        }
        // The first heartbeat puts this node in its own view before any request is served.
        dir.heartbeat().await;
        dir.resync_all().await;
        tokio::spawn(Arc::clone(&dir).events(rx));
        tokio::spawn(Arc::clone(&dir).beat_loop());
        dir
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// Reads the local view.
    pub fn with_view<R>(&self, f: impl FnOnce(&ClusterView) -> R) -> R {
        f(&self.view.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn view_mut(&self) -> std::sync::RwLockWriteGuard<'_, ClusterView> {
        self.view.write().unwrap_or_else(|e| e.into_inner())
    }

    fn local(&self) -> std::sync::MutexGuard<'_, LocalState> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_status(&self, r: Result<(), &DirError>) {
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(()) if !st.reachable => {
                tracing::info!(directory = st.kind, "directory reachable again");
                *st = Status {
                    kind: st.kind,
                    reachable: true,
                    since: Instant::now(),
                    error: None,
                };
            }
            Ok(()) => {}
            Err(e) => {
                metrics::counter!("meridian_directory_errors_total").increment(1);
                if st.reachable {
                    tracing::warn!(
                        directory = st.kind,
                        "directory unreachable, serving this node's own sessions: {e}"
                    );
                    st.reachable = false;
                    st.since = Instant::now();
                }
                st.error = Some(e.to_string());
            }
        }
        metrics::gauge!("meridian_directory_up").set(if st.reachable { 1.0 } else { 0.0 });
    }

    /// Where a new session of `room` goes (see [`route::place`]).
    pub fn place(&self, room: &str, ranking: &[RegionRtt], may_redirect: bool) -> Placement {
        self.place_session(room, ranking, may_redirect, false, false)
    }

    /// As [`Directory::place`]; `edge` as in [`route::place_with`].
    pub fn place_session(
        &self,
        room: &str,
        ranking: &[RegionRtt],
        may_redirect: bool,
        edge: bool,
        takeover: bool,
    ) -> Placement {
        let placed =
            self.with_view(|v| route::place_for(v, room, ranking, may_redirect, edge, takeover));
        placed.unwrap_or_else(|| Placement {
            node: self.local().info().clone(),
            here: true,
            reason: route::Reason::Local,
            rtt_ms: None,
        })
    }

    /// Makes this node `room`'s home before a session of it starts here, unless another live
    /// node already is. The directory being away never refuses a session: the room is then
    /// served here (and its home reconciled when the directory returns).
    pub async fn claim(&self, room: &str) -> Home {
        self.claim_with(room, false).await
    }

    /// As [`Directory::claim`]; with `takeover` (a device: its room goes where it goes) the
    /// home of a draining node passes to this one. The draining node keeps serving the
    /// room's sessions it has until they move; every view then ranks this node first (see
    /// [`ClusterView::room_home`]).
    pub async fn claim_with(&self, room: &str, takeover: bool) -> Home {
        if self.local().is_home(room) {
            return Home::Here;
        }
        let limit = self.settings.heartbeat.max(Duration::from_millis(250)) * 2;
        let r = bounded(limit, self.backend.claim_room(room, &self.me, takeover)).await;
        match r {
            Ok(Claim::Mine) => {}
            Ok(Claim::Theirs(other)) => {
                self.set_status(Ok(()));
                let (alive, draining) = self.with_view(|v| {
                    let n = v.node(&other.id);
                    (n.is_some(), n.is_some_and(|n| n.draining) || other.draining)
                });
                if takeover && draining {
                    tracing::info!(room, from = %other.id, "room's home is draining; it moves here with its device");
                } else if alive
                    || other.heartbeat_ms + self.settings.death_timeout.as_millis() as u64
                        >= unix_ms()
                {
                    return Home::Elsewhere(other);
                } else {
                    // Stored but silent for longer than the death timeout: take it over.
                    tracing::info!(room, owner = %other.id, "room's home is silent; taking it over");
                }
            }
            Err(e) => {
                self.set_status(Err(&e));
                tracing::debug!(room, "room claim failed, serving it here: {e}");
            }
        }
        self.local().set_home(room);
        Home::Here
    }

    /// Records a session on this node until the guard drops.
    pub fn session(
        self: &Arc<Self>,
        id: String,
        room: &str,
        identity: &str,
        role: &str,
    ) -> SessionGuard {
        self.record_session(id, room, identity, role, true)
    }

    /// A session of a room homed on another node, served here over the trunk: recorded, but
    /// the room stays homed where it is.
    pub fn edge_session(
        self: &Arc<Self>,
        id: String,
        room: &str,
        identity: &str,
        role: &str,
    ) -> SessionGuard {
        self.record_session(id, room, identity, role, false)
    }

    fn record_session(
        self: &Arc<Self>,
        id: String,
        room: &str,
        identity: &str,
        role: &str,
        homes: bool,
    ) -> SessionGuard {
        let entry = SessionEntry {
            room: room.into(),
            identity: identity.into(),
            role: role.into(),
            since_ms: unix_ms(),
        };
        let mut local = self.local();
        local.session_start(&id, entry);
        // A session of a room homed here keeps the home; one served here without a claim
        // (embedded, or the claim failed) makes it so.
        if homes {
            local.set_home(room);
        }
        SessionGuard {
            dir: Arc::clone(self),
            id,
        }
    }

    /// This node's device list, from the SFU.
    pub fn set_devices(&self, devices: Vec<DeviceEntry>) {
        self.local().set_devices(devices);
    }

    pub fn set_draining(&self, draining: bool) {
        self.local().set_draining(draining);
    }

    /// Marks this node draining and tells the directory now, not at the next heartbeat: the
    /// nodes its sessions are sent to must know, or they would send them back.
    pub async fn start_draining(&self) {
        self.set_draining(true);
        self.heartbeat().await;
    }

    /// Whether this node is `room`'s home (as it knows itself, before any heartbeat says so).
    pub fn is_home(&self, room: &str) -> bool {
        self.local().is_home(room)
    }

    /// The rooms this node is the home of, as it knows itself.
    pub fn homes(&self) -> BTreeSet<String> {
        self.local().homes().clone()
    }

    /// Sessions on this node.
    pub fn session_count(&self) -> usize {
        self.local().session_count()
    }

    /// One heartbeat: flush this node's changes to the backend (and into its own view).
    /// Returns false once the node left the directory.
    async fn heartbeat(&self) -> bool {
        let gate = self.beat_gate.lock().await;
        if *gate {
            return false;
        }
        let update = {
            let mut local = self.local();
            local.flush(Instant::now(), unix_ms())
        };
        self.view_mut().apply(update.clone(), Instant::now());
        let ttl = self.settings.death_timeout;
        let r = bounded(
            self.settings.death_timeout,
            self.backend.publish(&update, ttl),
        )
        .await;
        let was_down = !self.status().reachable;
        match r {
            Ok(p) => {
                self.set_status(Ok(()));
                *self.confirmed.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                if was_down {
                    // Nobody was heard while the directory was away: each node gets a whole
                    // death timeout from now to be heard again.
                    self.view_mut().touch_all(Instant::now());
                }
                if p.lost || was_down {
                    // The directory forgot this node (expired while unreachable or slow), or
                    // other nodes' updates were missed meanwhile.
                    self.local().request_full();
                }
            }
            Err(e) => {
                self.set_status(Err(&e));
                // What did not reach the directory goes again, whole, once it is back.
                self.local().request_full();
            }
        }
        if was_down && self.status().reachable {
            self.resync_all().await;
        }
        drop(gate);
        true
    }

    async fn beat_loop(self: Arc<Self>) {
        let mut beat = tokio::time::interval(self.settings.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Expiry is checked more often than heartbeats so a death is seen soon after the
        // timeout, not up to a heartbeat later.
        let mut sweep =
            tokio::time::interval((self.settings.heartbeat / 4).max(Duration::from_millis(10)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let per_beat = (ROOM_REFRESH_PERIOD.as_millis()
            / self.settings.heartbeat.as_millis().max(1))
        .max(1) as usize;
        let mut cursor = 0usize;
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    if !self.heartbeat().await {
                        return;
                    }
                    // Refresh a slice of this node's room claims each beat.
                    let rooms: Vec<String> = {
                        let local = self.local();
                        let homes = local.homes();
                        let n = homes.len();
                        if n == 0 { Vec::new() } else {
                            let k = n.div_ceil(per_beat);
                            let start = cursor % n;
                            cursor = start + k;
                            homes.iter().cycle().skip(start).take(k.min(n)).cloned().collect()
                        }
                    };
                    if !rooms.is_empty() && self.status().reachable {
                        let r = bounded(self.settings.death_timeout, self.backend.refresh_rooms(&rooms, &self.me)).await;
                        if let Err(e) = r {
                            self.set_status(Err(&e));
                        }
                    }
                    self.publish_gauges();
                }
                _ = sweep.tick() => {
                    let confirmed = *self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
                    let dead = self.view_mut().expire_confirmed(Instant::now(), confirmed, self.settings.heartbeat);
                    for id in dead {
                        metrics::counter!("meridian_cluster_node_deaths_total").increment(1);
                        tracing::warn!(node = %id, "node not heard from within {:?}: dead", self.settings.death_timeout);
                    }
                }
            }
        }
    }

    fn publish_gauges(&self) {
        let (nodes, regions) = self.with_view(|v| (v.nodes().count(), v.regions().len()));
        metrics::gauge!("meridian_cluster_nodes").set(nodes as f64);
        metrics::gauge!("meridian_cluster_regions").set(regions as f64);
        metrics::gauge!("meridian_directory_commands").set(self.backend.commands() as f64);
    }

    async fn events(self: Arc<Self>, mut rx: mpsc::Receiver<Event>) {
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Update(u) if u.info.id == self.me => {}
                Event::Update(u) => {
                    let id = u.info.id.clone();
                    let r = self.view_mut().apply(*u, Instant::now());
                    match r {
                        Applied::Gap => {
                            let dir = Arc::clone(&self);
                            tokio::spawn(async move { dir.resync(&id).await });
                        }
                        Applied::Joined => tracing::info!(node = %id, "node joined the cluster"),
                        Applied::Left => tracing::info!(node = %id, "node left the cluster"),
                        Applied::Updated | Applied::Stale => {}
                    }
                }
                Event::Resync => {
                    // After a reconnect this node's own entries may be gone too.
                    self.local().request_full();
                    self.resync_all().await;
                }
            }
        }
    }

    /// The time a stored heartbeat was written, on the local monotonic clock.
    fn heard_at(&self, hb_ms: u64) -> Instant {
        let age = Duration::from_millis(unix_ms().saturating_sub(hb_ms));
        let now = Instant::now();
        now.checked_sub(age.min(self.settings.death_timeout * 2))
            .unwrap_or(self.started)
    }

    async fn resync(&self, node: &str) {
        match bounded(self.settings.death_timeout, self.backend.load(node)).await {
            Ok(Some(u)) => {
                let heard = self.heard_at(u.info.heartbeat_ms);
                let mut view = self.view_mut();
                // Replace whatever was known: a stored state is the node's whole state.
                view.remove(node);
                view.apply(u, heard);
            }
            // Nothing stored: either the node died (its entries expired, so its silence is
            // already close to the death timeout) or the directory restarted empty. Either
            // way the sweep judges it by its silence, and counts it if it is a death.
            Ok(None) => {}
            Err(e) => self.set_status(Err(&e)),
        }
    }

    async fn resync_all(&self) {
        match bounded(self.settings.death_timeout * 2, self.backend.load_all()).await {
            Ok(list) => {
                // Known nodes missing from the store are left to the sweep (see `resync`):
                // removing them here would hide a death from the count, or drop a live node
                // from the view while an emptied directory is being refilled.
                let mut view = self.view_mut();
                for u in list {
                    if u.info.id == self.me {
                        continue;
                    }
                    let heard = self.heard_at(u.info.heartbeat_ms);
                    view.remove(&u.info.id);
                    view.apply(u, heard);
                }
            }
            Err(e) => self.set_status(Err(&e)),
        }
    }

    /// A clean stop: this node's entries leave the directory at once.
    pub async fn leave(&self) {
        let mut gate = self.beat_gate.lock().await;
        if *gate {
            return;
        }
        *gate = true;
        let u = self.local().leave(unix_ms());
        if let Err(e) = bounded(self.settings.death_timeout, self.backend.leave(&u)).await {
            tracing::warn!("could not leave the directory cleanly (it expires this node's entries by itself): {e}");
        }
    }

    fn end_session(&self, id: &str) {
        let released = self.local().session_end(id);
        if let Some(room) = released {
            self.local().clear_home(&room);
            let backend = Arc::clone(&self.backend);
            let me = self.me.clone();
            let limit = self.settings.death_timeout;
            tokio::spawn(async move {
                if let Err(e) = bounded(limit, backend.release_room(&room, &me)).await {
                    tracing::debug!(
                        room,
                        "room release failed (its claim expires by itself): {e}"
                    );
                }
            });
        }
    }
}

/// A session recorded in the directory; dropping it ends the record.
pub struct SessionGuard {
    dir: Arc<Directory>,
    id: String,
}

impl SessionGuard {
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.dir.end_session(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::info;

    fn settings() -> Settings {
        Settings {
            heartbeat: Duration::from_millis(50),
            death_timeout: Duration::from_millis(200),
        }
    }

    /// Waits (bounded) until `f` holds.
    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn in_process_nodes_share_an_embedded_directory() {
        let shared: Arc<dyn Backend> = Arc::new(Embedded::default());
        let a = Directory::start(info("a", "eu"), shared.clone(), settings()).await;
        let b = Directory::start(info("b", "asia"), shared.clone(), settings()).await;
        until("a sees b", || a.with_view(|v| v.node("b").is_some())).await;
        // b homes a room; a claim from a is refused and names b.
        assert_eq!(b.claim("game").await, Home::Here);
        let guard = b.session("s1".into(), "game", "cam", "device");
        b.set_devices(vec![DeviceEntry {
            room: "game".into(),
            identity: "cam".into(),
            live: true,
            viewers: 0,
            bitrate_bps: 1,
            tracks: vec!["t1".into()],
            remote_nodes: vec![],
        }]);
        match a.claim("game").await {
            Home::Elsewhere(n) => assert_eq!(n.id, "b"),
            Home::Here => panic!("a took b's room"),
        }
        until("a lists b's device", || {
            a.with_view(|v| {
                v.devices()
                    .iter()
                    .any(|(n, d)| n.region == "asia" && d.identity == "cam")
            })
        })
        .await;
        until("a knows the home", || {
            a.with_view(|v| v.room_home("game").map(|n| n.id.clone())) == Some("b".into())
        })
        .await;
        let p = a.place("game", &[], true);
        assert_eq!((p.node.id.as_str(), p.here), ("b", false));
        // The room's last session ends: the home is released.
        drop(guard);
        until("the home is gone", || {
            a.with_view(|v| v.room_home("game").is_none())
        })
        .await;
        until("a can claim it", || {
            futures_now(a.claim("game")) == Some(Home::Here)
        })
        .await;
        // b leaves cleanly: a drops it at once.
        b.leave().await;
        until("b is gone", || a.with_view(|v| v.node("b").is_none())).await;
    }

    /// A node that left stays gone: its heartbeats stop, none in flight puts it back (this
    /// raced before, and a left node reappeared at its next heartbeat). Virtual time, so the
    /// other node's death timeout (on the real clock) cannot hide a reappearance.
    #[tokio::test(start_paused = true)]
    async fn a_node_that_left_stays_gone() {
        let shared: Arc<dyn Backend> = Arc::new(Embedded::default());
        let a = Directory::start(info("a", "eu"), shared.clone(), settings()).await;
        let b = Directory::start(info("b", "asia"), shared.clone(), settings()).await;
        until("a sees b", || a.with_view(|v| v.node("b").is_some())).await;
        b.leave().await;
        until("b is gone", || a.with_view(|v| v.node("b").is_none())).await;
        // Twenty of b's heartbeat periods (a's own heartbeats go on).
        for _ in 0..20 {
            tokio::time::sleep(settings().heartbeat).await;
            assert!(a.with_view(|v| v.node("b").is_none()), "b came back");
        }
        // Leaving twice is harmless.
        b.leave().await;
    }

    /// Polls a future once (the embedded backend never waits).
    fn futures_now<F: std::future::Future>(f: F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
