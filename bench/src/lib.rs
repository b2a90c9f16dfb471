//! meridian load generators, comparisons and reports.
//!
//! - [`turn`]: `meridian bench turn`, a TURN load generator with a comparison mode against
//!   coturn and an in-bench kernel-floor forwarder.
//! - [`client`]: WebRTC clients (signaling, a test-pattern H.264 source) and the
//!   `meridian device` simulator.

pub mod client;
pub mod turn;
