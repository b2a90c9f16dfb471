//! The HTTP API on the node's signaling port: the room list, the WebSocket endpoint, dev
//! tokens; served over plain HTTP or, with a certificate, HTTPS/WSS.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::state::{unix_now, Peer, Signaling};
use crate::token::Role;

/// The API routes.
pub fn router(state: Arc<Signaling>) -> Router {
    Router::new()
        .route("/v1/rooms", get(rooms))
        .route("/v1/regions", get(regions))
        .route("/v1/ping", get(ping))
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

/// Every live device of the cluster with its region: this node's from its SFU, the others'
/// from the local view of the directory (no directory round trip per request).
async fn rooms(State(st): State<Arc<Signaling>>) -> Response {
    let Ok(list) = st.sfu.devices().await else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the node is stopping",
        );
    };
    let me = st.dir.me().to_string();
    let region = st
        .dir
        .with_view(|v| v.node(&me).map(|n| n.region.clone()))
        .unwrap_or_default();
    let mut devices: Vec<_> = list
        .iter()
        .map(|d| {
            json!({
                "room": d.room, "device": d.identity, "live": d.live,
                "viewers": d.viewers, "bitrate_bps": d.bitrate_bps, "tracks": d.tracks,
                "region": region, "node": me, "remote_nodes": d.remote_nodes,
            })
        })
        .collect();
    st.dir.with_view(|v| {
        for (node, d) in v.devices() {
            if node.id != me {
                devices.push(json!({
                    "room": d.room, "device": d.identity, "live": d.live,
                    "viewers": d.viewers, "bitrate_bps": d.bitrate_bps, "tracks": d.tracks,
                    "region": node.region, "node": node.id, "remote_nodes": d.remote_nodes,
                }));
            }
        }
    });
    with_cors(Json(json!({ "devices": devices })).into_response())
}

/// The healthy regions and the endpoints a client probes to rank them.
async fn regions(State(st): State<Arc<Signaling>>) -> Response {
    let me = st.dir.me().to_string();
    let body = st.dir.with_view(|v| {
        let regions: Vec<_> = v
            .regions()
            .into_iter()
            .filter_map(|(region, nodes)| {
                let nodes: Vec<_> = nodes
                    .into_iter()
                    .filter(|n| !n.draining)
                    .map(|n| {
                        json!({
                            "id": n.id, "signaling": n.signaling, "ws": n.ws_url(),
                            "stun": n.stun, "sessions": n.sessions, "devices": n.devices,
                            "overloaded": n.overloaded(),
                        })
                    })
                    .collect();
                (!nodes.is_empty()).then(|| json!({"region": region, "nodes": nodes}))
            })
            .collect();
        json!({
            "node": me,
            "region": v.node(&me).map(|n| n.region.clone()),
            "regions": regions,
        })
    });
    with_cors(Json(body).into_response())
}

/// An empty answer, for clients that time a round trip to a region over HTTP (the fallback
/// when no STUN probe is possible).
async fn ping() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    with_cors(r)
}

/// Readable from pages of any origin (the SDK on one region's page asks the others).
fn with_cors(mut r: Response) -> Response {
    r.headers_mut().insert(
        axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        axum::http::HeaderValue::from_static("*"),
    );
    r
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
