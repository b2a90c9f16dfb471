//! The trunk: one QUIC connection per pair of nodes that need each other, carrying the
//! cross-region rooms.
//!
//! - [`wire`]: datagram and control-frame formats (sans-IO).
//! - [`imports`] / [`exports`]: remote-subscription bookkeeping on the edge and on the home
//!   node (sans-IO, driven by the caller's clock).
//! - [`tls`]: mutual TLS under the cluster CA; the peer's node id from its certificate;
//!   `meridian trunk-cert` (the CA and node certificates).
//! - [`endpoint`]: the quinn driver: listener, on-demand dialing, authentication and the
//!   allow-list, idle close, metrics.

pub mod endpoint;
pub mod exports;
pub mod imports;
pub mod tls;
pub mod wire;

pub use endpoint::{Event, Trunk, TrunkError, TrunkSettings};
pub use exports::{ExportConfig, ExportEvent, Exportable, Exports};
pub use imports::{Arrival, ImportConfig, ImportEvent, Imports, TrackKey};
pub use wire::{Audience, DeviceDesc, FlowDesc, Msg, TrackDesc, TrackFormat};
