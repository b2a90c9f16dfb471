//! The Redis directory (through `fred`).
//!
//! Why `fred` rather than `redis`: it is async-first on tokio, reconnects by itself with a
//! backoff policy and re-subscribes pub/sub channels after a reconnect (which the directory's
//! push updates depend on), speaks Sentinel and Redis Cluster from the same client type, does
//! TLS through rustls with the aws-lc-rs provider already in the tree, and pipelines and runs
//! Lua scripts without a separate connection manager.
//!
//! Layout, under the configured prefix `P`:
//! - `P:node:{id}`: a hash per node, expiring `death_timeout` after its last heartbeat —
//!   `hdr` (the update header: epoch, seq, node info), `devices` (JSON list), `s:{session}`
//!   (one per session), `r:{room}` (one per room homed there). A dead node's hash expires by
//!   itself.
//! - `P:nodes`: the set of node ids (pruned when a member's hash is gone), so loading the
//!   cluster never scans the keyspace.
//! - `P:home:{room}`: the id of the room's home node, claimed by a script that takes it over
//!   only when its owner's hash is gone; expires after `HOME_TTL` unless refreshed.
//! - `P:events`: the pub/sub channel every update is published on.
//!
//! A heartbeat costs 3 commands (HSET of the header, PEXPIRE, PUBLISH) plus one HSET and one
//! HDEL when entries changed, all in one pipeline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::Value;
use tokio::sync::mpsc;

use crate::directory::{Backend, Claim, DirError, Event, Published};
use crate::model::{DeviceEntry, NodeInfo, SessionEntry, Update};

/// How long a room claim lives without a refresh (refreshed about every 100 s).
pub const HOME_TTL: Duration = Duration::from_secs(300);

/// Takes a room's home unless a live node holds it. Returns {owner, owner's header or false}.
const CLAIM: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then
  local hdr = redis.call('HGET', ARGV[2] .. cur, 'hdr')
  if hdr then
    local taken = false
    if ARGV[4] == '1' then
      local ok, h = pcall(cjson.decode, hdr)
      taken = ok and type(h) == 'table' and type(h.info) == 'table' and h.info.draining == true
    end
    if not taken then return {cur, hdr} end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return {ARGV[1], false}
"#;

/// Deletes a room's claim if it is still ours.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// The update header stored in `hdr`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    epoch: u64,
    seq: u64,
    info: NodeInfo,
}

pub struct Redis {
    client: Client,
    subscriber: fred::clients::SubscriberClient,
    prefix: String,
    commands: Arc<AtomicU64>,
}

fn unreachable(e: fred::error::Error) -> DirError {
    DirError::Unreachable(e.to_string())
}

impl Redis {
    /// Builds the clients for `url` (redis://, rediss://, redis-sentinel://,
    /// rediss-sentinel://) and starts connecting in the background; commands fail fast while
    /// Redis is unreachable and the clients keep reconnecting.
    pub fn new(url: &str, prefix: &str, command_timeout: Duration) -> Result<Self, String> {
        // Never echo the URL: it may carry a password.
        let config = Config {
            fail_fast: true,
            ..Config::from_url(url).map_err(|e| format!("cluster.directory: {}", e.details()))?
        };
        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|p| p.default_command_timeout = command_timeout)
            .with_connection_config(|c| {
                c.connection_timeout = command_timeout;
                c.internal_command_timeout = command_timeout;
                c.max_command_attempts = 1;
            })
            .set_policy(ReconnectPolicy::new_constant(0, 100));
        let client = builder.build().map_err(|e| e.details().to_string())?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| e.details().to_string())?;
        client.connect();
        subscriber.connect();
        Ok(Redis {
            client,
            subscriber,
            prefix: prefix.to_string(),
            commands: Arc::new(AtomicU64::new(0)),
        })
    }

    fn node_key(&self, id: &str) -> String {
        format!("{}:node:{id}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    fn home_key(&self, room: &str) -> String {
        format!("{}:home:{room}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    fn count(&self, n: u64) {
        self.commands.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("meridian_directory_commands_total").increment(n);
    }

    /// Turns a node's stored hash into a full update.
    fn decode(fields: Vec<(String, String)>) -> Result<Option<Update>, DirError> {
        let corrupt = |what: &str, e: serde_json::Error| DirError::Corrupt(format!("{what}: {e}"));
        let Some(hdr) = fields.iter().find(|(k, _)| k == "hdr") else {
            return Ok(None);
        };
        let h: Header = serde_json::from_str(&hdr.1).map_err(|e| corrupt("hdr", e))?;
        let mut u = Update {
            epoch: h.epoch,
            seq: h.seq,
            info: h.info,
            full: true,
            gone: false,
            devices: Some(Vec::new()),
            sessions_set: Vec::new(),
            sessions_del: Vec::new(),
            rooms_set: Vec::new(),
            rooms_del: Vec::new(),
        };
        for (k, v) in fields {
            if k == "devices" {
                let d: Vec<DeviceEntry> =
                    serde_json::from_str(&v).map_err(|e| corrupt("devices", e))?;
                u.devices = Some(d);
            } else if let Some(s) = k.strip_prefix("s:") {
                let e: SessionEntry =
                    serde_json::from_str(&v).map_err(|e| corrupt("session", e))?;
                u.sessions_set.push((s.to_string(), e));
            } else if let Some(r) = k.strip_prefix("r:") {
                u.rooms_set.push(r.to_string());
            }
        }
        u.sessions_set.sort_by(|a, b| a.0.cmp(&b.0));
        u.rooms_set.sort();
        Ok(Some(u))
    }

    async fn load_fields(&self, id: &str) -> Result<Vec<(String, String)>, DirError> {
        self.count(1);
        let map: std::collections::HashMap<String, String> = self
            .client
            .hgetall(self.node_key(id))
            .await
            .map_err(unreachable)?;
        Ok(map.into_iter().collect())
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[async_trait]
impl Backend for Redis {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn start(&self, me: &str, events: mpsc::Sender<Event>) -> Result<(), DirError> {
        let mut messages = self.subscriber.message_rx();
        let mut reconnects = self.subscriber.reconnect_rx();
        // Resubscribes after every reconnect.
        // The handle of a spawned task: dropping it leaves the task running.
        drop(self.subscriber.manage_subscriptions());
        let me = me.to_string();
        let tx = events.clone();
        tokio::spawn(async move {
            loop {
                let m = match messages.recv().await {
                    Ok(m) => m,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if tx.send(Event::Resync).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(_) => return,
                };
                let text = match &m.value {
                    Value::String(s) => s.to_string(),
                    Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                    _ => continue,
                };
                match serde_json::from_str::<Update>(&text) {
                    Ok(u) if u.info.id == me => {}
                    Ok(u) => {
                        if tx.send(Event::Update(Box::new(u))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        metrics::counter!("meridian_directory_bad_events_total").increment(1);
                        tracing::debug!("ignoring a malformed directory event: {e}");
                    }
                }
            }
        });
        tokio::spawn(async move {
            // A reconnect may have lost messages: reload.
            while reconnects.recv().await.is_ok() {
                if events.send(Event::Resync).await.is_err() {
                    return;
                }
            }
        });
        self.count(1);
        self.subscriber
            .subscribe(self.channel())
            .await
            .map_err(unreachable)
    }

    async fn publish(&self, u: &Update, ttl: Duration) -> Result<Published, DirError> {
        let key = self.node_key(&u.info.id);
        let hdr = json(&Header {
            epoch: u.epoch,
            seq: u.seq,
            info: u.info.clone(),
        });
        let mut set: Vec<(String, String)> = Vec::new();
        if let Some(d) = &u.devices {
            set.push(("devices".into(), json(d)));
        }
        for (k, s) in &u.sessions_set {
            set.push((format!("s:{k}"), json(s)));
        }
        for r in &u.rooms_set {
            set.push((format!("r:{r}"), "1".into()));
        }
        let del: Vec<String> = u
            .sessions_del
            .iter()
            .map(|k| format!("s:{k}"))
            .chain(u.rooms_del.iter().map(|r| format!("r:{r}")))
            .collect();
        let pipe = self.client.pipeline();
        let mut n = 0;
        if u.full {
            let _: () = pipe.del(&key).await.map_err(unreachable)?;
            let _: () = pipe
                .sadd(self.nodes_key(), u.info.id.clone())
                .await
                .map_err(unreachable)?;
            n += 2;
        }
        // First: whether the header was new tells if the hash had expired.
        let _: () = pipe.hset(&key, ("hdr", hdr)).await.map_err(unreachable)?;
        n += 1;
        if !set.is_empty() {
            let _: () = pipe.hset(&key, set).await.map_err(unreachable)?;
            n += 1;
        }
        if !del.is_empty() {
            let _: () = pipe.hdel(&key, del).await.map_err(unreachable)?;
            n += 1;
        }
        let _: () = pipe
            .pexpire(&key, ttl.as_millis() as i64, None)
            .await
            .map_err(unreachable)?;
        let _: () = pipe
            .publish(self.channel(), json(u))
            .await
            .map_err(unreachable)?;
        n += 2;
        self.count(n);
        let results: Vec<Value> = pipe.all().await.map_err(unreachable)?;
        let hdr_index = if u.full { 2 } else { 0 };
        let added = results.get(hdr_index).and_then(|v| v.as_i64()).unwrap_or(0);
        Ok(Published {
            lost: added == 1 && !u.full,
        })
    }

    async fn load_all(&self) -> Result<Vec<Update>, DirError> {
        self.count(1);
        let ids: Vec<String> = self
            .client
            .smembers(self.nodes_key())
            .await
            .map_err(unreachable)?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for id in ids {
            match Self::decode(self.load_fields(&id).await?) {
                Ok(Some(u)) => out.push(u),
                Ok(None) => gone.push(id),
                Err(e) => {
                    tracing::warn!(node = %id, "skipping a node whose stored state is unreadable: {e}")
                }
            }
        }
        if !gone.is_empty() {
            self.count(1);
            let _: Result<(), _> = self.client.srem(self.nodes_key(), gone).await;
        }
        Ok(out)
    }

    async fn load(&self, node: &str) -> Result<Option<Update>, DirError> {
        Self::decode(self.load_fields(node).await?)
    }

    async fn claim_room(&self, room: &str, me: &str, takeover: bool) -> Result<Claim, DirError> {
        self.count(1);
        let node_prefix = format!("{}:node:", self.prefix);
        let reply: Vec<Value> = self
            .client
            .eval(
                CLAIM,
                vec![self.home_key(room)],
                vec![
                    me.to_string(),
                    node_prefix,
                    HOME_TTL.as_millis().to_string(),
                    if takeover { "1" } else { "0" }.to_string(),
                ],
            )
            .await
            .map_err(unreachable)?;
        let owner = reply
            .first()
            .and_then(|v| v.as_string())
            .unwrap_or_default();
        if owner == me {
            return Ok(Claim::Mine);
        }
        let hdr = reply.get(1).and_then(|v| v.as_string()).unwrap_or_default();
        let h: Header = serde_json::from_str(&hdr)
            .map_err(|e| DirError::Corrupt(format!("home of {room}: {e}")))?;
        Ok(Claim::Theirs(Box::new(h.info)))
    }

    async fn release_room(&self, room: &str, me: &str) -> Result<(), DirError> {
        self.count(1);
        let _: i64 = self
            .client
            .eval(RELEASE, vec![self.home_key(room)], vec![me.to_string()])
            .await
            .map_err(unreachable)?;
        Ok(())
    }

    async fn refresh_rooms(&self, rooms: &[String], _me: &str) -> Result<(), DirError> {
        let pipe = self.client.pipeline();
        for r in rooms {
            let _: () = pipe
                .pexpire(self.home_key(r), HOME_TTL.as_millis() as i64, None)
                .await
                .map_err(unreachable)?;
        }
        self.count(rooms.len() as u64);
        let _: Vec<Value> = pipe.all().await.map_err(unreachable)?;
        Ok(())
    }

    async fn leave(&self, u: &Update) -> Result<(), DirError> {
        let pipe = self.client.pipeline();
        let _: () = pipe
            .del(self.node_key(&u.info.id))
            .await
            .map_err(unreachable)?;
        let _: () = pipe
            .srem(self.nodes_key(), u.info.id.clone())
            .await
            .map_err(unreachable)?;
        let _: () = pipe
            .publish(self.channel(), json(u))
            .await
            .map_err(unreachable)?;
        self.count(3);
        let _: Vec<Value> = pipe.all().await.map_err(unreachable)?;
        Ok(())
    }

    fn commands(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }
}
