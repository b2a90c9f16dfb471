//! Split homes after a directory outage. While the directory was unreachable each node
//! served its own sessions, so two nodes may have become the home of one room (a device of
//! it joined each). Once the directory is back, both claims are in every view, which
//! resolves the room to one node the same way everywhere ([`ClusterView::room_home`]: the
//! lowest id among the claimants that do not drain). The other claimant — this task, on it
//! — logs the split once and tells each of its WebSocket sessions of the room to move to the
//! winner (the `move` event a drain sends, so clients move make-before-break). When its last
//! session of the room has left it is no longer a home, and the room has one again.
//!
//! WHIP and WHEP sessions cannot be told: a room with one on the losing node stays split
//! until it ends (the view still sends every new session to the winner).
//!
//! [`ClusterView::room_home`]: meridian_geo::ClusterView::room_home

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_geo::rehome::{split_homes, MoveReason};
use meridian_geo::Directory;

use crate::drain::{MoveOrder, Movers};

/// How often the view is looked at for split homes.
const TICK: Duration = Duration::from_millis(250);

/// The `deadline_ms` a hand-over's `move` carries: how long a device keeps its old
/// connection beside the new one while players remain on it.
const HANDOVER_DEADLINE: Duration = Duration::from_secs(10);

/// Starts the task; it ends with the runtime.
pub fn start(movers: Arc<Movers>, dir: Arc<Directory>) {
    tokio::spawn(run(movers, dir));
}

async fn run(movers: Arc<Movers>, dir: Arc<Directory>) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Splits logged, room → winner: each is logged (and counted) once.
    let mut logged: HashMap<String, String> = HashMap::new();
    loop {
        every.tick().await;
        if !dir.status().reachable {
            continue;
        }
        let homes = dir.homes();
        logged.retain(|room, _| {
            let kept = homes.contains(room);
            if !kept {
                tracing::info!(room, "split home resolved: this node is no longer its home");
            }
            kept
        });
        let splits = dir.with_view(|v| split_homes(v, &homes));
        for s in splits {
            if logged.get(&s.room) != Some(&s.winner.id) {
                metrics::counter!("meridian_room_splits_total").increment(1);
                tracing::warn!(
                    room = %s.room,
                    winner = %s.winner.id,
                    "room was homed here and on another node (claimed by both while the directory was unreachable); resolved to the lowest node id: moving this node's sessions of it there"
                );
                logged.insert(s.room.clone(), s.winner.id.clone());
            }
            let order = MoveOrder {
                to: s.winner,
                reason: MoveReason::RoomHome,
                deadline: HANDOVER_DEADLINE,
            };
            let n = movers.tell_room(&s.room, &order);
            if n > 0 {
                metrics::counter!("meridian_room_split_moves_total").increment(n as u64);
                tracing::debug!(room = %s.room, to = %order.to.id, sessions = n, "split home: sessions told to move");
            }
        }
    }
}
