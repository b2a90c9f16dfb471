//! WebRTC clients for demos and load: the signaling client, the test pattern, the
//! `meridian device` simulator, and a re-homing player.

pub mod device;
pub mod pattern;
pub mod player;
pub mod probe;
pub mod signal;
