//! The meridian media plane.
//!
//! - [`stun`]: the STUN/TURN message codec (sans-IO, zero-copy decoding).

pub mod stun;
