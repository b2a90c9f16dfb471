//! A signaling client (WebSocket, protocol v1) for the device simulator and the SFU bench:
//! join with a token, then requests with `req` ids matched to their replies, and events.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A joined signaling connection.
pub struct Signal {
    ws: Ws,
    next_req: u64,
    /// Events that arrived while waiting for a reply.
    pub backlog: Vec<Value>,
    /// The `joined` message.
    pub joined: Value,
}

/// Redirects a join follows.
const MAX_REDIRECTS: u32 = 3;

/// How long a request may wait for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

impl Signal {
    /// Connects to `base` (http(s)://host:port) and joins with `token`.
    pub async fn join(base: &str, token: &str, resume_from: Option<u64>) -> anyhow::Result<Signal> {
        let mut join = json!({"type": "join", "v": 1, "token": token});
        if let Some(r) = resume_from {
            join["resume_from"] = json!(r);
        }
        let (s, _) = Signal::join_routed(base, join).await?;
        Ok(s)
    }

    /// Joins with `join` (a `join` message, with `regions` when the client measured), and
    /// follows `redirect` replies (at most 3) to the node that serves the session. Returns the
    /// joined connection and the base URL of the node it is on.
    pub async fn join_routed(base: &str, mut join: Value) -> anyhow::Result<(Signal, String)> {
        let mut base = base.trim_end_matches('/').to_string();
        for hop in 0..=MAX_REDIRECTS {
            let url = ws_url(&base)?;
            let (ws, _) =
                tokio::time::timeout(REPLY_TIMEOUT, tokio_tungstenite::connect_async(&url))
                    .await
                    .map_err(|_| anyhow!("{url}: no WebSocket handshake within {REPLY_TIMEOUT:?}"))?
                    .with_context(|| format!("cannot connect to {url}"))?;
            let mut s = Signal {
                ws,
                next_req: 1,
                backlog: Vec::new(),
                joined: Value::Null,
            };
            join["redirects"] = json!(hop);
            let reply = s.request(join.clone()).await.context("join")?;
            if reply["type"] == "redirect" {
                let to = reply["url"].as_str().unwrap_or_default();
                base = http_base(to)?;
                continue;
            }
            s.joined = reply;
            return Ok((s, base));
        }
        bail!("join redirected more than {MAX_REDIRECTS} times")
    }

    /// Sends a request and waits for its reply (`error` replies become errors).
    pub async fn request(&mut self, mut msg: Value) -> anyhow::Result<Value> {
        let req = self.next_req;
        self.next_req += 1;
        msg["req"] = json!(req);
        futures_util::SinkExt::send(&mut self.ws, Message::text(msg.to_string()))
            .await
            .map_err(|e| anyhow!("signaling send: {e}"))?;
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            let v = tokio::time::timeout_at(deadline, self.next_json())
                .await
                .map_err(|_| anyhow!("no reply to {} within {REPLY_TIMEOUT:?}", msg["type"]))??;
            if v["req"].as_u64() == Some(req) {
                if v["type"] == "error" {
                    bail!(
                        "{}: {}",
                        v["code"].as_str().unwrap_or("?"),
                        v["message"].as_str().unwrap_or("")
                    );
                }
                return Ok(v);
            }
            self.backlog.push(v);
        }
    }

    /// The next message from the server; an error when the connection closes.
    pub async fn next_json(&mut self) -> anyhow::Result<Value> {
        use futures_util::StreamExt;
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(f))) => {
                    let (code, reason) = f
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    bail!("signaling closed: {code} {reason}")
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("signaling: {e}"),
                None => bail!("signaling closed"),
            }
        }
    }

    /// Hands the rest of the connection to a task that forwards events into a channel (the
    /// connection then only receives). Dropping the receiver closes it.
    pub fn into_events(mut self) -> mpsc::UnboundedReceiver<Value> {
        let (tx, rx) = mpsc::unbounded_channel();
        for v in self.backlog.drain(..) {
            let _ = tx.send(v);
        }
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = self.next_json() => match m {
                        Ok(v) => if tx.send(v).is_err() { break },
                        Err(e) => { let _ = tx.send(json!({"type": "closed", "reason": e.to_string()})); break; }
                    },
                    _ = tx.closed() => break,
                }
            }
            let _ = futures_util::SinkExt::close(&mut self.ws).await;
        });
        rx
    }
}

/// http://h:p → ws://h:p/v1/ws (https → wss).
pub fn ws_url(base: &str) -> anyhow::Result<String> {
    let base = base.trim_end_matches('/');
    let rest = if let Some(r) = base.strip_prefix("https://") {
        format!("wss://{r}")
    } else if let Some(r) = base.strip_prefix("http://") {
        format!("ws://{r}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_string()
    } else {
        bail!("--url {base:?}: expected http://host:port or https://host:port");
    };
    Ok(if rest.ends_with("/v1/ws") {
        rest
    } else {
        format!("{rest}/v1/ws")
    })
}

/// ws://h:p/v1/ws → http://h:p (wss → https).
pub fn http_base(ws: &str) -> anyhow::Result<String> {
    let rest = ws.trim_end_matches('/').trim_end_matches("/v1/ws");
    if let Some(r) = rest.strip_prefix("wss://") {
        Ok(format!("https://{r}"))
    } else if let Some(r) = rest.strip_prefix("ws://") {
        Ok(format!("http://{r}"))
    } else {
        bail!("redirect to {ws:?}: not a ws:// or wss:// URL")
    }
}

/// GET `path` from the signaling API (plain HTTP only), as JSON.
pub async fn http_get_json(base: &str, path: &str) -> anyhow::Result<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hostport = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{base}: only http:// is supported here"))?
        .trim_end_matches('/');
    let mut s = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(hostport))
        .await
        .map_err(|_| anyhow!("{hostport}: connect timed out"))??;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut body = Vec::new();
    tokio::time::timeout(REPLY_TIMEOUT, s.read_to_end(&mut body))
        .await
        .map_err(|_| anyhow!("{hostport}{path}: no response"))??;
    let text = String::from_utf8_lossy(&body);
    let (head, json) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("{path}: malformed HTTP response"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    let v: Value =
        serde_json::from_str(json.trim()).with_context(|| format!("{path}: body is not JSON"))?;
    if status != "200" {
        bail!(
            "{path}: HTTP {status}: {}",
            v["error"]["message"].as_str().unwrap_or("")
        );
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            ws_url("http://127.0.0.1:7880").unwrap(),
            "ws://127.0.0.1:7880/v1/ws"
        );
        assert_eq!(
            ws_url("https://x.example/").unwrap(),
            "wss://x.example/v1/ws"
        );
        assert_eq!(ws_url("ws://h:1/v1/ws").unwrap(), "ws://h:1/v1/ws");
        assert!(ws_url("ftp://h").is_err());
    }
}
