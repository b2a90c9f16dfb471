//! meridian signaling: the node's HTTP + WebSocket API.
//!
//! - [`token`]: access tokens (JWT, HS256) that say who a client is, which room it may join
//!   and in which role. Minted by `meridian token` or by an application backend holding the
//!   API secret; checked by the node when a client connects.
//! - [`protocol`]: the versioned JSON protocol on `/v1/ws` (docs/signaling.md).
//! - `api` / `ws`: the HTTP routes and the per-connection session.
//! - `ice`: `iceServers` for the node's own TURN, with per-session credentials.
//! - `whip`: WHIP (RFC 9725) publishing and WHEP playback over plain HTTP.

mod api;
mod cluster;
mod drain;
mod ice;
mod pages;
pub mod protocol;
mod reconcile;
mod state;
pub mod token;
mod whip;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

pub use api::router;
pub use state::Signaling;

/// Binds the signaling listener, joins the cluster directory, and serves the API in the
/// background (on the current tokio runtime). Returns the bound address.
pub async fn start(
    config: &meridian_config::Config,
    ctx: meridian_relay::net::AttachContext,
) -> Result<SocketAddr, String> {
    let meridian_relay::net::AttachContext {
        sfu,
        turn_udp,
        turn_tcp,
        turn_tls,
        ready,
        tls_reload,
        status,
        alternate,
        sessions,
        on_drain,
    } = ctx;
    let turn = (turn_udp, turn_tcp, turn_tls);
    let (tls_reload, status) = (&tls_reload, &status);
    let listen = config.signaling.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on signaling {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut info = cluster::node_info(config, addr, &turn.0);
    let trunk = match config.trunk.listen {
        Some(_) => Some(cluster::bind_trunk(config)?),
        None => None,
    };
    if let Some(t) = &trunk {
        info.trunk = Some(t.public.clone());
    }
    let dir = cluster::start(config, info, sfu.clone(), ready.clone(), status, alternate).await?;
    // A drain waits for every WebSocket, WHIP and WHEP session here.
    let count = Arc::clone(&dir);
    let _ = sessions.set(Box::new(move || count.session_count()));
    let mut state = Signaling::new(config, sfu.clone(), ready, Arc::clone(&dir))?;
    if let Some(t) = trunk {
        let _ = t.directory.set(Arc::clone(&dir));
        let handle = meridian_relay::net::trunk::start(t.trunk, t.events, sfu)
            .await
            .map_err(|e| e.to_string())?;
        state.trunk = Some(handle);
    }
    state.ice.set_bound(turn.0, turn.1, turn.2);
    // A room homed here and elsewhere after a directory outage moves to the winner.
    reconcile::start(Arc::clone(&state.movers), Arc::clone(&dir));
    // A drain tells each WebSocket session where to go.
    let (movers, runtime) = (Arc::clone(&state.movers), tokio::runtime::Handle::current());
    let _ = on_drain.set(Box::new(move |deadline| {
        let _guard = runtime.enter();
        drain::start(Arc::clone(&movers), Arc::clone(&dir), deadline);
    }));
    let app = router(Arc::new(state)).into_make_service_with_connect_info::<state::Peer>();
    let tls = match (&config.signaling.tls_cert, &config.signaling.tls_key) {
        (Some(c), Some(k)) => Some(meridian_relay::net::ReloadableTls::load(c, k)?),
        _ => None,
    };
    if let Some(t) = &tls {
        // SIGHUP reloads it with the node's other certificates.
        tls_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(("signaling", t.clone()));
    }
    match tls {
        None => {
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!("signaling listener failed: {e}");
                }
            });
        }
        Some(tls) => {
            let listener = tls_listener::TlsListener::new(listener, tls);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!("signaling listener failed: {e}");
                }
            });
        }
    }
    Ok(addr)
}

mod tls_listener {
    //! HTTPS/WSS: TLS handshakes run in their own tasks so a slow client never holds up the
    //! accept loop; finished connections are handed to axum.

    use std::net::SocketAddr;
    use std::time::Duration;

    use meridian_relay::net::ReloadableTls;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tokio_rustls::server::TlsStream;

    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

    pub struct TlsListener {
        rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
        local: SocketAddr,
    }

    impl TlsListener {
        pub fn new(listener: TcpListener, tls: ReloadableTls) -> Self {
            let local = listener.local_addr().expect("bound listener");
            let (tx, rx) = mpsc::channel(256);
            tokio::spawn(async move {
                loop {
                    let (tcp, peer) = match listener.accept().await {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::debug!("signaling accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let acceptor = tls.acceptor();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => {
                                let _ = tx.send((s, peer)).await;
                            }
                            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
            });
            TlsListener { rx, local }
        }
    }

    impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
        for crate::state::Peer
    {
        fn connect_info(s: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
            crate::state::Peer(*s.remote_addr())
        }
    }

    impl axum::serve::Listener for TlsListener {
        type Io = TlsStream<TcpStream>;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            match self.rx.recv().await {
                Some(x) => x,
                // The accept task never ends while the listener lives.
                None => std::future::pending().await,
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            Ok(self.local)
        }
    }
}
