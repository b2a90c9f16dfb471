//! What every request handler shares: the SFU, token checks, ICE servers, the WHIP/WHEP
//! sessions and the node's place in its cluster. The handlers (`api`, `ws`, `whip`) depend on
//! this module, never on each other.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use meridian_config::Config;
use meridian_geo::Directory;
use meridian_relay::net::SfuHandle;

use crate::ice::IceServers;
use crate::token::{TokenIssuer, TokenVerifier};

/// The client's address, for logs.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer(*s.remote_addr())
    }
}

/// What every request handler shares.
pub struct Signaling {
    pub(crate) sfu: SfuHandle,
    pub(crate) verifier: TokenVerifier,
    pub(crate) issuer: Option<TokenIssuer>,
    pub(crate) cfg: meridian_config::SignalingConfig,
    pub(crate) ice: IceServers,
    /// False while the node drains: new joins are refused.
    pub(crate) ready: Arc<AtomicBool>,
    /// WHIP/WHEP sessions.
    pub(crate) resources: crate::whip::Resources,
    /// The cluster directory (embedded for a single node).
    pub(crate) dir: Arc<Directory>,
    /// The trunk to other nodes, when `[trunk]` is configured: players of rooms homed
    /// elsewhere are then served here.
    pub(crate) trunk: Option<meridian_relay::net::trunk::TrunkHandle>,
    /// The WebSocket sessions a drain tells where to go.
    pub(crate) movers: Arc<crate::drain::Movers>,
}

impl Signaling {
    pub fn new(
        config: &Config,
        sfu: SfuHandle,
        ready: Arc<AtomicBool>,
        dir: Arc<Directory>,
    ) -> Result<Self, String> {
        let keys = &config.signaling.api_keys;
        let verifier =
            TokenVerifier::new(keys.iter().map(|k| (k.key.as_str(), k.secret.as_bytes())));
        let issuer = match keys.first() {
            Some(k) => {
                Some(TokenIssuer::new(&k.key, k.secret.as_bytes()).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        if keys.is_empty() {
            tracing::warn!("signaling.api_keys is empty: no access token can be verified, every join will be refused");
        }
        Ok(Signaling {
            sfu,
            verifier,
            issuer,
            cfg: config.signaling.clone(),
            ice: IceServers::from_config(config),
            ready,
            resources: Default::default(),
            dir,
            trunk: None,
            movers: Default::default(),
        })
    }

    pub(crate) fn accepting(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
