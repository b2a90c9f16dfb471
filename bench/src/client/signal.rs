//! A signaling client (WebSocket, protocol v1) for the device simulator and the SFU bench:
//! join with a token, then requests with `req` ids matched to their replies, and events.

use std::net::{IpAddr, SocketAddr};
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
    pub async fn join_routed(base: &str, join: Value) -> anyhow::Result<(Signal, String)> {
        let (s, base, _) = Signal::join_routed_on(base, join, None, None).await?;
        Ok((s, base))
    }

    /// [`Signal::join_routed`] from the local address `local` (any when `None`), upgrading
    /// `conn` (an open HTTP/1.1 connection to `base`, e.g. the one `/v1/regions` came over)
    /// instead of connecting anew when it is given. Returns the connection, the base URL of
    /// the node it is on and the redirects it followed.
    pub async fn join_routed_on(
        base: &str,
        join: Value,
        conn: Option<TcpStream>,
        local: Option<IpAddr>,
    ) -> anyhow::Result<(Signal, String, u32)> {
        let (s, base, hops, _) = Signal::join_pipelined(base, join, &[], conn, local).await?;
        Ok((s, base, hops))
    }

    /// [`Signal::join_routed_on`], sending `then` (requests without `req`) right behind the
    /// join, without waiting for its reply: one round trip for all of them. Returns their
    /// replies in order (`error` replies included, as they came). On a redirect they are sent
    /// again, behind the join, to the node it names.
    pub async fn join_pipelined(
        base: &str,
        mut join: Value,
        then: &[Value],
        mut conn: Option<TcpStream>,
        local: Option<IpAddr>,
    ) -> anyhow::Result<(Signal, String, u32, Vec<Value>)> {
        let mut base = base.trim_end_matches('/').to_string();
        for hop in 0..=MAX_REDIRECTS {
            let url = ws_url(&base)?;
            if url.starts_with("wss://") {
                bail!("{url}: wss:// is not supported by this client (no TLS)");
            }
            let stream = match conn.take() {
                Some(c) => c,
                None => connect_tcp(&hostport(&base)?, local).await?,
            };
            let (ws, _) = tokio::time::timeout(
                REPLY_TIMEOUT,
                tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(stream)),
            )
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
            let join_req = s.send_request(join.clone()).await?;
            let mut reqs = Vec::new();
            for m in then {
                reqs.push(s.send_request(m.clone()).await?);
            }
            let reply = s.reply(join_req, "join").await.context("join")?;
            if reply["type"] == "redirect" {
                let to = reply["url"].as_str().unwrap_or_default();
                base = http_base(to)?;
                continue;
            }
            if reply["type"] == "error" {
                bail!(
                    "join: {}: {}",
                    reply["code"].as_str().unwrap_or("?"),
                    reply["message"].as_str().unwrap_or("")
                );
            }
            s.joined = reply;
            let mut replies = Vec::new();
            for (r, m) in reqs.into_iter().zip(then) {
                replies.push(s.reply(r, m["type"].as_str().unwrap_or("request")).await?);
            }
            return Ok((s, base, hop, replies));
        }
        bail!("join redirected more than {MAX_REDIRECTS} times")
    }

    /// Sends a request and waits for its reply (`error` replies become errors).
    pub async fn request(&mut self, msg: Value) -> anyhow::Result<Value> {
        let what = msg["type"].as_str().unwrap_or("request").to_string();
        let req = self.send_request(msg).await?;
        let v = self.reply(req, &what).await?;
        if v["type"] == "error" {
            bail!(
                "{}: {}",
                v["code"].as_str().unwrap_or("?"),
                v["message"].as_str().unwrap_or("")
            );
        }
        Ok(v)
    }

    /// Sends a request with the next `req` id; returns the id.
    async fn send_request(&mut self, mut msg: Value) -> anyhow::Result<u64> {
        let req = self.next_req;
        self.next_req += 1;
        msg["req"] = json!(req);
        futures_util::SinkExt::send(&mut self.ws, Message::text(msg.to_string()))
            .await
            .map_err(|e| anyhow!("signaling send: {e}"))?;
        Ok(req)
    }

    /// Waits for the reply to request `req` (an `error` reply included); events that come
    /// first go to the backlog.
    async fn reply(&mut self, req: u64, what: &str) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            let v = tokio::time::timeout_at(deadline, self.next_json())
                .await
                .map_err(|_| anyhow!("no reply to {what} within {REPLY_TIMEOUT:?}"))??;
            if v["req"].as_u64() == Some(req) {
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

/// `host:port` of an `http(s)://host:port` (or `ws(s)://`) base URL.
pub fn hostport(base: &str) -> anyhow::Result<String> {
    let rest = ["http://", "https://", "ws://", "wss://"]
        .iter()
        .find_map(|p| base.strip_prefix(p))
        .ok_or_else(|| anyhow!("{base:?}: expected http://host:port or https://host:port"))?;
    Ok(rest.split('/').next().unwrap_or_default().to_string())
}

/// A TCP connection to `hostport`, from `local` when given (a client placed on an emulated
/// network by its source address), with Nagle off.
pub async fn connect_tcp(hostport: &str, local: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let connect = async {
        let mut last = None;
        for addr in tokio::net::lookup_host(hostport).await? {
            let sock = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            if let Some(ip) = local {
                sock.bind(SocketAddr::new(ip, 0))?;
            }
            match sock.connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
    };
    tokio::time::timeout(REPLY_TIMEOUT, connect)
        .await
        .map_err(|_| anyhow!("{hostport}: connect timed out"))?
        .with_context(|| format!("cannot connect to {hostport}"))
}

/// GET `path` from the signaling API (plain HTTP only), as JSON.
pub async fn http_get_json(base: &str, path: &str) -> anyhow::Result<Value> {
    if !base.starts_with("http://") {
        bail!("{base}: only http:// is supported here");
    }
    let mut s = connect_tcp(&hostport(base)?, None).await?;
    http_get_on(&mut s, base, path).await
}

/// GET `path` over an open connection to `base`, keeping it open (HTTP/1.1 keep-alive), as
/// JSON; a non-200 answer is an error with the server's message.
pub async fn http_get_on(s: &mut TcpStream, base: &str, path: &str) -> anyhow::Result<Value> {
    use tokio::io::AsyncWriteExt;
    let host = hostport(base)?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let (status, body) = tokio::time::timeout(REPLY_TIMEOUT, read_response(s))
        .await
        .map_err(|_| anyhow!("{host}{path}: no response"))??;
    let v: Value = serde_json::from_slice(&body)
        .with_context(|| format!("{path}: body is not JSON (HTTP {status})"))?;
    if status != 200 {
        bail!(
            "{path}: HTTP {status}: {}",
            v["error"]["message"].as_str().unwrap_or("")
        );
    }
    Ok(v)
}

/// Most bytes of a response head or body read here.
const MAX_RESPONSE: usize = 4 << 20;

/// Reads one HTTP/1.1 response (status, body): a `Content-Length` or chunked body, leaving
/// the connection at the next response.
async fn read_response(s: &mut TcpStream) -> anyhow::Result<(u16, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_RESPONSE {
            bail!("response head too large");
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before a response");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("malformed HTTP status line"))?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let mut rest = buf[head_end..].to_vec();
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if len > MAX_RESPONSE {
            bail!("response body too large ({len} bytes)");
        }
        while rest.len() < len {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed inside the body");
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        return Ok((status, rest));
    }
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            // A chunk: size line, data, CRLF.
            let line_end = loop {
                if let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    bail!("connection closed inside a chunk size");
                }
                rest.extend_from_slice(&chunk[..n]);
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| anyhow!("bad chunk size {size_text:?}"))?;
            if body.len() + size > MAX_RESPONSE {
                bail!("response body too large");
            }
            let need = line_end + 2 + size + 2;
            while rest.len() < need {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    bail!("connection closed inside a chunk");
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest.drain(..need);
            if size == 0 {
                return Ok((status, body));
            }
        }
    }
    // Neither: the body runs to the end of the connection.
    s.read_to_end(&mut rest).await?;
    Ok((status, rest))
}

/// The API key every node the bench starts is configured with.
pub const API_KEY: &str = "bench";
/// Its secret.
pub const API_SECRET: &str = "bench-secret-0123456789abcdef";

/// An access token for a node the bench started, signed with [`API_KEY`], valid for an hour.
pub fn mint(
    identity: &str,
    room: &str,
    role: meridian_signaling::token::Role,
) -> anyhow::Result<String> {
    let issuer = meridian_signaling::token::TokenIssuer::new(API_KEY, API_SECRET.as_bytes())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    Ok(issuer.mint(identity, room, role, now, 3600)?)
}

/// A node's admin `/metrics` text (one bounded HTTP/1.1 GET, at most 5 s and 16 MiB).
pub async fn admin_metrics(admin: SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = Vec::new();
        s.take(16 << 20).read_to_end(&mut body).await.ok()?;
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .ok()??;
    Some(text)
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
