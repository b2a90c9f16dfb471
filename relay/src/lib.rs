//! The meridian media plane.
//!
//! - [`stun`]: the STUN/TURN message codec (sans-IO, zero-copy decoding).
//! - [`turn`]: the sans-IO TURN server core.
//! - [`sfu`]: the SFU core (rooms, forwarding, layers, room messages) around str0m.

#[cfg(feature = "net")]
pub mod net;
#[cfg(feature = "sfu")]
pub mod sfu;
pub mod stun;
pub mod turn;
