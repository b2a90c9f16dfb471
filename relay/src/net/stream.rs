//! TURN over TCP and TLS (RFC 8656 §12.5 framing): STUN messages delimited by their length
//! header, ChannelData padded to a multiple of four.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::tls::ReloadableTls;
use super::worker::Worker;
use crate::stun::{self, channel_data, FrameKind};
use crate::turn::{ClientAddr, Transport};

/// Bytes queued towards one client before further data is dropped (slow reader).
const MAX_QUEUED: usize = 4 << 20;
/// Largest frame: a STUN header plus a 16-bit length.
const MAX_FRAME: usize = stun::HEADER_LEN + 0xFFFF;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The sending half of a stream connection: a byte queue drained by a writer task.
pub(super) struct StreamOut {
    queue: RefCell<Vec<u8>>,
    notify: Notify,
    closed: Cell<bool>,
}

impl StreamOut {
    /// Queues bytes; false if the connection is closed or too far behind.
    pub(super) fn push(&self, bytes: &[u8]) -> bool {
        if self.closed.get() {
            return false;
        }
        let mut q = self.queue.borrow_mut();
        if q.len() + bytes.len() > MAX_QUEUED {
            return false;
        }
        q.extend_from_slice(bytes);
        drop(q);
        self.notify.notify_one();
        true
    }
}

pub(super) fn spawn_accept_loop(
    w: Rc<Worker>,
    listener: std::net::TcpListener,
    transport: Transport,
    tls: Option<ReloadableTls>,
) {
    tokio::task::spawn_local(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot register {} listener: {e}", transport.as_str());
                return;
            }
        };
        let Ok(local) = listener.local_addr() else {
            return;
        };
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%local, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let client = ClientAddr {
                transport,
                local,
                remote,
            };
            let w = w.clone();
            match &tls {
                None => {
                    tokio::task::spawn_local(serve(w, client, tcp));
                }
                Some(tls) => {
                    let acceptor = tls.acceptor();
                    tokio::task::spawn_local(async move {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => serve(w, client, s).await,
                            Ok(Err(e)) => {
                                w.metrics.borrow_mut().tls_handshake_failed();
                                tracing::debug!(%remote, "TLS handshake failed: {e}");
                            }
                            Err(_) => {
                                w.metrics.borrow_mut().tls_handshake_failed();
                                tracing::debug!(%remote, "TLS handshake timed out");
                            }
                        }
                    });
                }
            }
        }
    });
}

/// Serves one connection until either side closes it.
async fn serve<S: AsyncRead + AsyncWrite + 'static>(w: Rc<Worker>, client: ClientAddr, stream: S) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let out = Rc::new(StreamOut {
        queue: RefCell::new(Vec::new()),
        notify: Notify::new(),
        closed: Cell::new(false),
    });
    w.streams.borrow_mut().insert(client, out.clone());

    let writer = {
        let out = out.clone();
        async move {
            let mut spare = Vec::new();
            loop {
                if out.queue.borrow().is_empty() {
                    out.notify.notified().await;
                    continue;
                }
                std::mem::swap(&mut *out.queue.borrow_mut(), &mut spare);
                if wr.write_all(&spare).await.is_err() {
                    return;
                }
                spare.clear();
            }
        }
    };
    let reader = {
        let w = w.clone();
        async move {
            let mut buf: Vec<u8> = Vec::with_capacity(4096);
            let mut chunk = vec![0u8; 16 * 1024];
            // Since when the connection has held no allocation (None while it holds one).
            let mut unallocated_since = Some(tokio::time::Instant::now());
            loop {
                // Take every complete frame in the buffer.
                let mut consumed = 0;
                let now = Instant::now();
                loop {
                    let rest = &buf[consumed..];
                    let Some(first) = rest.first() else { break };
                    let len = match stun::frame_kind(*first) {
                        FrameKind::Stun => stun::framed_len(rest),
                        FrameKind::ChannelData => channel_data::framed_len(rest),
                        FrameKind::Other => {
                            tracing::debug!(remote = %client.remote, "not STUN or ChannelData: closing the connection");
                            w.core
                                .borrow_mut()
                                .stats
                                .drop(crate::turn::stats::Drop::Malformed);
                            return;
                        }
                    };
                    let Some(len) = len else { break };
                    if len > MAX_FRAME {
                        return;
                    }
                    if rest.len() < len {
                        break;
                    }
                    let frame = &rest[..len];
                    let fwd = w.core.borrow_mut().handle_client_packet(client, frame, now);
                    if let Some(to) = fwd {
                        w.send_to_peer(to);
                    }
                    consumed += len;
                }
                if consumed > 0 {
                    buf.drain(..consumed);
                    w.run_commands(now);
                    w.flush_udp();
                }
                if w.core.borrow().has_allocation(&client) {
                    unallocated_since = None;
                } else if unallocated_since.is_none() {
                    unallocated_since = Some(tokio::time::Instant::now());
                }
                // Reads are bounded so that a silent connection is re-checked: one whose
                // allocation ended meanwhile starts its unallocated clock then. (`read` is
                // cancel-safe: a timed-out read loses no bytes.)
                let limit = unallocated_since.unwrap_or_else(tokio::time::Instant::now)
                    + w.unallocated_timeout;
                let res = match tokio::time::timeout_at(limit, rd.read(&mut chunk)).await {
                    Ok(r) => r,
                    Err(_)
                        if unallocated_since.is_some()
                            && !w.core.borrow().has_allocation(&client) =>
                    {
                        tracing::debug!(remote = %client.remote, "closing a connection that holds no allocation");
                        w.metrics.borrow_mut().idle_connection_closed();
                        return;
                    }
                    Err(_) => continue,
                };
                match res {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
    out.closed.set(true);
    w.streams.borrow_mut().remove(&client);
    w.core.borrow_mut().client_closed(client);
    w.run_commands(Instant::now());
    w.flush_udp();
}
