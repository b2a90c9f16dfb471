//! meridian load generators, comparisons and reports.
//!
//! - [`turn`]: `meridian bench turn`, a TURN load generator with a comparison mode against
//!   coturn and an in-bench kernel-floor forwarder.
//! - [`sfu`]: `meridian bench sfu`, rooms of real WebRTC publishers and subscribers against
//!   a node, beside a kernel-floor fan-out.
//! - [`client`]: WebRTC clients (signaling, a test-pattern H.264 source) and the
//!   `meridian device` simulator.
//! - [`failover`]: `meridian bench failover`, kill and directory-outage drills on a 3-region
//!   cluster with re-homing players, measuring media gaps and lost or duplicated controls.
//! - [`shim`]: `meridian bench shim`, emulated delay, jitter and loss in front of a node.
//! - [`route`]: `meridian bench route` (placement of measured clients on a 3-region cluster
//!   behind shims) and `meridian bench directory` (Redis load, dead-node detection).

pub mod cascade;
pub mod client;
pub mod failover;
pub mod route;
pub mod sfu;
pub mod shim;
pub mod turn;
