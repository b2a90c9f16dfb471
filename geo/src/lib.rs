//! meridian geo: the cluster directory, node health and route selection.
//!
//! - [`model`]: what the directory holds (nodes, devices, sessions) and the [`Update`] a node
//!   publishes every heartbeat.
//! - [`view`]: the sans-IO [`ClusterView`] every request is answered from: updates and the
//!   time in; live nodes, room homes and the cluster-wide device list out.
//! - [`local`]: the sans-IO record of this node's own entries, flushed once per heartbeat.
//! - [`route`]: where a new session goes (room home, then lowest measured RTT, ties by load).
//! - [`rehome`]: where sessions go when their node dies or drains (clients' next node, a
//!   drain plan, what a death orphans).
//! - [`directory`]: the [`Backend`] trait, its [`Embedded`] implementation, and the
//!   [`Directory`] runtime (heartbeats, expiry, resync, claims).
//! - [`redis`]: the Redis backend (`fred`).

pub mod directory;
pub mod local;
pub mod model;
pub mod redis;
pub mod rehome;
pub mod route;
pub mod testing;
pub mod view;

pub use directory::{Backend, Directory, Embedded, Home, SessionGuard, Settings, Status};
pub use model::{DeviceEntry, NodeInfo, RegionRtt, SessionEntry, Update};
pub use route::{Placement, Reason};
pub use view::ClusterView;

use std::sync::Arc;
use std::time::Duration;

/// The backend `cluster.directory` names: the embedded one for "embedded", Redis otherwise.
pub fn backend_for(
    url: &str,
    prefix: &str,
    command_timeout: Duration,
) -> Result<Arc<dyn Backend>, String> {
    if url == "embedded" {
        Ok(Arc::new(Embedded::default()))
    } else {
        Ok(Arc::new(redis::Redis::new(url, prefix, command_timeout)?))
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use crate::model::{NodeInfo, Update};

    pub fn info(id: &str, region: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            region: region.into(),
            signaling: format!("http://{id}.example:7880"),
            stun: vec![format!("{id}.example:3478")],
            sessions: 0,
            devices: 0,
            max_sessions: 0,
            draining: false,
            heartbeat_ms: 0,
            version: "test".into(),
            trunk: None,
        }
    }

    pub fn update(id: &str, epoch: u64, seq: u64, full: bool) -> Update {
        Update {
            epoch,
            seq,
            info: info(id, "eu"),
            full,
            gone: false,
            devices: None,
            sessions_set: Vec::new(),
            sessions_del: Vec::new(),
            rooms_set: Vec::new(),
            rooms_del: Vec::new(),
        }
    }
}
