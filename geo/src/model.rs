//! What the directory holds, as it travels between nodes (JSON in Redis and on the event
//! channel).

use serde::{Deserialize, Serialize};

/// One node as the directory knows it: who it is, where clients reach it, how loaded it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub region: String,
    /// Signaling base URL (`http(s)://host[:port]`), where redirects point.
    pub signaling: String,
    /// STUN/TURN UDP endpoints (`host:port`) clients probe to measure their RTT.
    pub stun: Vec<String>,
    /// Sessions (WebSocket and WHIP/WHEP) on the node.
    pub sessions: usize,
    /// Live devices on the node.
    pub devices: usize,
    /// Sessions at which the node is overloaded; 0 = no limit.
    pub max_sessions: usize,
    pub draining: bool,
    /// Unix milliseconds of the heartbeat that carried this.
    pub heartbeat_ms: u64,
    pub version: String,
    /// The trunk's "host:port" (other nodes dial it), when the node runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk: Option<String>,
}

impl NodeInfo {
    pub fn overloaded(&self) -> bool {
        self.max_sessions > 0 && self.sessions >= self.max_sessions
    }

    /// The WebSocket signaling URL (`ws(s)://…/v1/ws`).
    pub fn ws_url(&self) -> String {
        let base = self.signaling.trim_end_matches('/');
        if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}/v1/ws")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}/v1/ws")
        } else {
            format!("{base}/v1/ws")
        }
    }

    /// `path` (starting with '/') on the node's signaling URL.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.signaling.trim_end_matches('/'))
    }
}

/// A device publishing in a room, as its node reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEntry {
    pub room: String,
    pub identity: String,
    pub live: bool,
    pub viewers: usize,
    pub bitrate_bps: u64,
    /// Track ids.
    pub tracks: Vec<String>,
    /// Other nodes receiving its tracks over the trunk (cross-region viewers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_nodes: Vec<String>,
}

/// A client session on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEntry {
    pub room: String,
    pub identity: String,
    pub role: String,
    /// Unix milliseconds when it started.
    pub since_ms: u64,
}

/// A node's change to its own entries, heartbeat included: what a node publishes every
/// heartbeat interval and what other nodes apply to their view.
///
/// `(epoch, seq)` orders updates: `epoch` is the node's start time (a restarted node starts a
/// new epoch), `seq` counts its updates. A `full` update replaces everything known about the
/// node; any other must follow the previous one (`seq + 1`), or the receiver has missed one
/// and reloads the node's stored state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub epoch: u64,
    pub seq: u64,
    pub info: NodeInfo,
    #[serde(default)]
    pub full: bool,
    /// The node left cleanly (drained or stopped): drop it now.
    #[serde(default)]
    pub gone: bool,
    /// The node's whole device list, when it changed (always in a `full` update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<DeviceEntry>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions_set: Vec<(String, SessionEntry)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions_del: Vec<String>,
    /// Rooms whose home this node became.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms_set: Vec<String>,
    /// Rooms this node is no longer the home of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms_del: Vec<String>,
}

impl Update {
    pub fn node(&self) -> &str {
        &self.info.id
    }
}

/// A client's measured RTT to one region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionRtt {
    pub region: String,
    pub rtt_ms: f64,
}
