//! Drain with re-home: when the node starts draining, each WebSocket session is told where to
//! go with a `move` message, and the client moves make-before-break (it joins the target,
//! and leaves here once media flows there). The plan is [`meridian_geo::rehome::plan_drain`]:
//! devices first, so that a room homed here moves with its device; the watchers of such a
//! room are told once its home has moved (the device joined elsewhere and took the room
//! along), or after [`HANDOVER_WAIT`], so that no watcher is sent to a node that would send
//! it back here.
//!
//! WHIP and WHEP sessions have no channel to be told on: they stay until they end or the
//! drain deadline passes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_geo::rehome::{plan_drain, Kind, Leaving, MoveReason};
use meridian_geo::{Directory, NodeInfo, RegionRtt};
use tokio::sync::mpsc;

/// The longest a watcher of a room homed here waits for the room's device to move first.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(3);

/// How often the plan is looked at again for sessions not told yet.
const TICK: Duration = Duration::from_millis(50);

/// Where one session goes.
#[derive(Debug, Clone)]
pub struct MoveOrder {
    pub to: NodeInfo,
    pub reason: MoveReason,
    /// Time left until the drain deadline, when the node closes what is left.
    pub deadline: Duration,
}

struct Entry {
    room: String,
    kind: Kind,
    ranking: Vec<RegionRtt>,
    tx: mpsc::Sender<MoveOrder>,
    /// Told where to go already (by a drain or a split home's hand-over).
    told: bool,
}

/// The WebSocket sessions a drain can move.
#[derive(Default)]
pub struct Movers {
    next: AtomicU64,
    sessions: Mutex<HashMap<u64, Entry>>,
}

/// Keeps a session movable until it drops.
pub struct Movable {
    key: u64,
    movers: Arc<Movers>,
}

impl Drop for Movable {
    fn drop(&mut self) {
        self.movers.lock().remove(&self.key);
    }
}

impl Movers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session; its move (at most one) arrives on the receiver.
    pub fn register(
        self: &Arc<Self>,
        room: &str,
        kind: Kind,
        ranking: &[RegionRtt],
    ) -> (Movable, mpsc::Receiver<MoveOrder>) {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(1);
        self.lock().insert(
            key,
            Entry {
                room: room.to_string(),
                kind,
                ranking: ranking.to_vec(),
                tx,
                told: false,
            },
        );
        (
            Movable {
                key,
                movers: Arc::clone(self),
            },
            rx,
        )
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn pending(&self, told: &HashSet<u64>) -> Vec<Leaving> {
        self.lock()
            .iter()
            .filter(|(k, _)| !told.contains(k))
            .map(|(k, e)| Leaving {
                id: k.to_string(),
                room: e.room.clone(),
                kind: e.kind,
                ranking: e.ranking.clone(),
            })
            .collect()
    }

    fn tell(&self, key: u64, order: MoveOrder) {
        if let Some(e) = self.lock().get_mut(&key) {
            e.told = true;
            let _ = e.tx.try_send(order);
        }
    }

    /// Tells each session of `room` not told yet to go where `order` says; how many were.
    pub fn tell_room(&self, room: &str, order: &MoveOrder) -> usize {
        let mut n = 0;
        for e in self.lock().values_mut() {
            if e.room == room && !e.told {
                e.told = true;
                let _ = e.tx.try_send(order.clone());
                n += 1;
            }
        }
        n
    }
}

/// Starts telling every session where to go; runs until each was told or the deadline passed.
pub fn start(movers: Arc<Movers>, dir: Arc<Directory>, deadline: Duration) {
    tokio::spawn(run(movers, dir, deadline));
}

async fn run(movers: Arc<Movers>, dir: Arc<Directory>, deadline: Duration) {
    let started = Instant::now();
    let by = started + deadline;
    // Watchers wait for their device at most a third of the deadline.
    let wait_home = HANDOVER_WAIT.min(deadline / 3);
    let me = dir.me().to_string();
    dir.start_draining().await;
    // The flag reaches the other nodes over the directory's pub/sub: give it a moment before
    // the first session arrives there (clients also retry a move that was sent back).
    tokio::time::sleep(TICK).await;
    let mut told: HashSet<u64> = HashSet::new();
    let total = movers.len();
    tracing::info!(
        sessions = total,
        "draining: telling each session where to go"
    );
    loop {
        let now = Instant::now();
        if now >= by {
            break;
        }
        let pending = movers.pending(&told);
        if pending.is_empty() {
            break;
        }
        let waited = now.duration_since(started) >= wait_home;
        // Devices go at once; a watcher once its room is not (or no longer) homed here.
        let ready: Vec<Leaving> = pending
            .into_iter()
            .filter(|l| {
                l.kind == Kind::Device
                    || waited
                    || dir.with_view(|v| v.room_home(&l.room).is_none_or(|h| h.id != me))
            })
            .collect();
        if !ready.is_empty() {
            let plan = dir.with_view(|v| plan_drain(v, &me, &ready));
            for m in plan.moves {
                let Ok(key) = m.session.parse::<u64>() else {
                    continue;
                };
                told.insert(key);
                let Some(to) = m.to else {
                    metrics::counter!("meridian_drain_stranded_total").increment(1);
                    tracing::warn!(room = %m.room, "draining: no other node can take a session of this room; it stays until the deadline");
                    continue;
                };
                metrics::counter!("meridian_drain_moves_total", "reason" => m.reason.as_str())
                    .increment(1);
                tracing::debug!(room = %m.room, to = %to.id, reason = m.reason.as_str(), "draining: session told to move");
                movers.tell(
                    key,
                    MoveOrder {
                        to,
                        reason: m.reason,
                        deadline: by.saturating_duration_since(Instant::now()),
                    },
                );
            }
        }
        tokio::time::sleep(TICK).await;
    }
    tracing::info!(
        told = told.len(),
        of = total,
        "draining: sessions told where to go"
    );
}
