//! The I/O drivers around the sans-IO TURN core: sockets, timers, threads, admin HTTP.
//!
//! A node runs one worker thread per core. Each worker owns a TURN [`Server`] core, its own
//! `SO_REUSEPORT` UDP and TCP listener sockets (the kernel spreads clients across workers by
//! their 4-tuple), the relay sockets of its allocations, and its TCP/TLS connections: nothing
//! on the per-packet path is shared between workers.
//!
//! [`Server`]: crate::turn::Server

mod admin;
mod handoff;
mod metrics;
mod mmsg;
mod node;
mod poller;
mod sfu;
mod sockets;
mod stream;
mod tls;
pub mod trunk;
mod worker;

pub use admin::StatusBoard;
pub use node::{
    run, Alternate, Attach, AttachContext, DrainHook, RunOptions, SessionCount, TlsReload,
};
pub use sfu::{Gone, Session, SfuHandle, SfuNode};
pub use tls::ReloadableTls;
