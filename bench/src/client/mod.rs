//! WebRTC clients for demos and load: the signaling client, the test pattern, and the
//! `meridian device` simulator.

pub mod device;
pub mod pattern;
pub mod probe;
pub mod signal;
