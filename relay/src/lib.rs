//! The meridian media plane.
//!
//! - [`stun`]: the STUN/TURN message codec (sans-IO, zero-copy decoding).
//! - [`turn`]: the sans-IO TURN server core.

#[cfg(feature = "net")]
pub mod net;
pub mod stun;
pub mod turn;
