//! meridian signaling.
//!
//! - [`token`]: access tokens (JWT, HS256) that say who a client is, which room it may join
//!   and in which role. Minted by `meridian token` or by an application backend holding the
//!   API secret; checked by the node when a client connects.

pub mod token;
