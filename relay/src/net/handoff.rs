//! The in-process hand-off between TURN workers and SFU shards: what a worker is told, and
//! where a shard sends a datagram back to a client that reaches it through TURN. Both
//! drivers use these types; neither imports the other for them.

use std::net::SocketAddr;

use tokio::sync::mpsc;

use crate::turn::RelayId;

/// Control messages to a TURN worker.
pub enum Control {
    /// Stop taking allocations; send new clients to this TURN server (300 Try Alternate)
    /// when there is one.
    Drain(Option<SocketAddr>),
    Stop,
    /// A datagram the in-process SFU sends to one of this worker's relay addresses, as if it
    /// had arrived on the relay socket from `from`.
    FromSfu {
        relay: RelayId,
        from: SocketAddr,
        data: Vec<u8>,
    },
}

/// Where the SFU sends datagrams for a session that reaches it through this node's TURN: the
/// TURN worker holding the relay, and which relay.
#[derive(Clone, Debug)]
pub struct TurnBack {
    pub tx: mpsc::UnboundedSender<Control>,
    pub relay: RelayId,
}
