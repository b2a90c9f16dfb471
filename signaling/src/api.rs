//! The HTTP API on the node's signaling port: the room list, the WebSocket endpoint, dev
//! tokens; served over plain HTTP or, with a certificate, HTTPS/WSS.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use meridian_config::Config;
use meridian_relay::net::SfuHandle;
use serde::Deserialize;
use serde_json::json;

use crate::ice::IceServers;
use crate::token::{Role, TokenIssuer, TokenVerifier};

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
}

impl Signaling {
    pub fn new(config: &Config, sfu: SfuHandle, ready: Arc<AtomicBool>) -> Result<Self, String> {
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

/// The API routes.
pub fn router(state: Arc<Signaling>) -> Router {
    Router::new()
        .route("/v1/rooms", get(rooms))
        .route("/v1/ws", get(ws))
        .route("/v1/dev-token", get(dev_token))
        .merge(crate::whip::routes())
        .merge(crate::pages::routes())
        .with_state(state)
}

fn problem(status: StatusCode, code: &str, message: &str) -> Response {
    metrics::counter!("meridian_signaling_errors_total", "code" => code.to_string()).increment(1);
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn rooms(State(st): State<Arc<Signaling>>) -> Response {
    match st.sfu.devices().await {
        Ok(list) => {
            let devices: Vec<_> = list
                .iter()
                .map(|d| {
                    json!({
                        "room": d.room, "device": d.identity, "live": d.live,
                        "viewers": d.viewers, "bitrate_bps": d.bitrate_bps, "tracks": d.tracks,
                    })
                })
                .collect();
            Json(json!({ "devices": devices })).into_response()
        }
        Err(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the node is stopping",
        ),
    }
}

/// Initial read buffer of a signaling WebSocket.
const WS_READ_BUFFER: usize = 4096;

async fn ws(
    State(st): State<Arc<Signaling>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    // The hard cap; messages between the configured limit and this get a `too_large` error
    // and the connection stays open.
    let cap = st.cfg.max_message_bytes.saturating_mul(4);
    // Signaling messages are small: tungstenite's default 128 KiB read buffer per connection
    // was the largest single cost of an idle session; frames larger than this are still read
    // (the buffer grows up to `cap`), and writes go out frame by frame.
    upgrade
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(cap)
        .max_frame_size(cap)
        .on_upgrade(move |socket| crate::ws::session(socket, st, peer, host))
}

#[derive(Deserialize)]
struct DevTokenQuery {
    room: Option<String>,
    identity: Option<String>,
    role: Option<String>,
}

async fn dev_token(State(st): State<Arc<Signaling>>, Query(q): Query<DevTokenQuery>) -> Response {
    if !st.cfg.dev_tokens {
        return problem(
            StatusCode::FORBIDDEN,
            "dev_tokens_disabled",
            "dev tokens are off on this node (signaling.dev_tokens); ask the application for a token",
        );
    }
    let Some(issuer) = &st.issuer else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_api_key",
            "signaling.api_keys is empty",
        );
    };
    let role: Role = match q.role.as_deref().unwrap_or("player").parse() {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "bad_request", &e),
    };
    let room = q.room.unwrap_or_else(|| "demo".into());
    let identity = q
        .identity
        .unwrap_or_else(|| format!("{}-{:04x}", role.as_str(), rand::random::<u16>()));
    let now = unix_now();
    match issuer.mint(&identity, &room, role, now, st.cfg.token_ttl_secs) {
        Ok(token) => Json(json!({
            "token": token, "room": room, "identity": identity, "role": role.as_str(),
            "expires": now + st.cfg.token_ttl_secs,
        }))
        .into_response(),
        Err(e) => problem(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    }
}
