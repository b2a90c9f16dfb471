//! Typed configuration for a meridian node.
//!
//! A node is configured from one TOML file (`meridian serve --config FILE`), or runs the
//! embedded single-node default ([`Config::embedded`]) when no file is given. Every key has a
//! default, unknown keys are rejected, and errors name the line, the key, what was expected
//! and what was found.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

mod env;
mod error;
mod source;
#[cfg(test)]
mod tests;
mod validate;

pub use env::{ENV_API_KEYS, ENV_REST_SECRETS, ENV_USERS};
pub use error::ConfigError;

/// The embedded single-node default as commented TOML (every section present, documented).
///
/// It listens on loopback only and has no credentials: [`Config::embedded`] adds a generated
/// REST secret.
pub const EMBEDDED_DEFAULT: &str = include_str!("embedded.toml");

/// Origin used in messages about the embedded default.
const EMBEDDED_ORIGIN: &str = "embedded default";

impl Config {
    /// Parses [`EMBEDDED_DEFAULT`], sets `auth.rest_secrets = vec![generated_secret]`,
    /// validates and returns it.
    ///
    /// The embedded default listens on loopback only (UDP and TCP 127.0.0.1:3478, admin
    /// 127.0.0.1:9478, signaling API 127.0.0.1:7880, SFU UDP 127.0.0.1:7882 and ICE-TCP
    /// 127.0.0.1:7881), relays on 127.0.0.1, and, since only local clients can reach it,
    /// differs from [`Config::default`] in two keys: it allows relaying to loopback peers
    /// (`security.allow_peers = ["127.0.0.0/8", "::1/128"]`) and hands out development
    /// tokens to the demo pages (`signaling.dev_tokens = true`).
    ///
    /// # Panics
    ///
    /// If `generated_secret` is empty (the embedded text itself is checked by tests).
    pub fn embedded(generated_secret: String) -> Config {
        let mut config = source::parse(EMBEDDED_DEFAULT, EMBEDDED_ORIGIN)
            .unwrap_or_else(|e| panic!("the embedded default config does not parse: {e}"))
            .config;
        config.auth.rest_secrets = vec![generated_secret];
        if let Err(e) = config.validate() {
            panic!(
                "the embedded default config is invalid: {}",
                e.locate(EMBEDDED_ORIGIN, |_| None)
            );
        }
        config
    }

    /// Parses TOML text, then validates it. No environment overrides. `origin` (usually the
    /// file name) prefixes error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let parsed = source::parse(text, origin)?;
        parsed
            .config
            .validate()
            .map_err(|e| e.locate(origin, |key| parsed.index.line_of(key)))?;
        Ok(parsed.config)
    }

    /// Reads the file, parses it, applies the environment overrides (see
    /// [`Config::apply_env`]) from the process environment, and validates.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: error::io_reason(&e),
        })?;
        let origin = path.display().to_string();
        let mut parsed = source::parse(&text, &origin)?;
        parsed.config.apply_env(|name| std::env::var(name).ok())?;
        parsed
            .config
            .validate()
            .map_err(|e| e.locate(&origin, |key| parsed.index.line_of(key)))?;
        Ok(parsed.config)
    }

    /// Applies environment overrides, read through `lookup`:
    ///
    /// - `MERIDIAN_TURN_REST_SECRETS`: comma-separated secrets; replaces `auth.rest_secrets`
    ///   when set and non-empty. Whitespace around each secret and empty items are ignored.
    /// - `MERIDIAN_TURN_USERS`: `user:pass,user2:pass2`, appended to `auth.users`. The
    ///   password is everything after the first `:`. Whitespace around each entry and empty
    ///   entries are ignored. A malformed entry is an error naming the variable and the entry
    ///   number, never its content.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        env::apply_env(self, lookup)
    }

    /// Semantic validation: ranges, listeners, TLS files, relay addresses, limits,
    /// credentials. Returns the first problem found. Errors name the key path but no origin or
    /// line (those are added by [`Config::from_toml`] and [`Config::load`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::validate(self)
    }

    /// Effective worker count: `turn.workers`, or the available parallelism when 0.
    pub fn worker_count(&self) -> usize {
        match self.turn.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }

    /// Effective SFU thread count: `sfu.workers`, or the available parallelism when 0.
    pub fn sfu_worker_count(&self) -> usize {
        match self.sfu.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }
}

/// The whole node configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub turn: TurnConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub security: SecurityConfig,
    pub drain: DrainConfig,
    pub signaling: SignalingConfig,
    pub sfu: SfuConfig,
    pub cluster: ClusterConfig,
    pub trunk: TrunkConfig,
}

/// `[node]`: identity of this node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Node name, shown in logs and metrics. Default: "meridian".
    pub name: String,
    /// Region this node serves. Default: "local".
    pub region: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "meridian".into(),
            region: "local".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Human,
    /// One JSON object per line (for Loki and friends).
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// "human" or "json". Default: "human".
    pub format: LogFormat,
    /// A tracing filter directive, e.g. "info" or "meridian_relay=debug". Default: "info".
    /// `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// `[admin]`: the admin HTTP listener (Prometheus `/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Default: "127.0.0.1:9478". Port 0 picks a free port.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9478".parse().unwrap(),
        }
    }
}

/// `[turn]`: the STUN/TURN server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// Realm sent to clients. Default: "meridian".
    pub realm: String,
    /// UDP listeners. Default: ["127.0.0.1:3478"]. Port 0 picks a free port.
    pub udp: Vec<SocketAddr>,
    /// TCP listeners. Default: ["127.0.0.1:3478"].
    pub tcp: Vec<SocketAddr>,
    /// TLS listeners (TURN over TLS, `turns:`). Default: [] (5349 is the usual port; 443
    /// gets through the strictest firewalls). Requires `tls_cert` and `tls_key`.
    pub tls: Vec<SocketAddr>,
    /// PEM certificate chain for the TLS listeners. Reloaded on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listeners. Reloaded on SIGHUP.
    pub tls_key: Option<PathBuf>,
    /// Worker threads, each with its own SO_REUSEPORT sockets. 0 = one per core. Default: 0.
    pub workers: usize,
    /// Address relay sockets for IPv4 allocations bind to. Default: "127.0.0.1".
    pub relay_ipv4: Option<Ipv4Addr>,
    /// Address relay sockets for IPv6 allocations bind to. Default: none (IPv6 relaying off).
    pub relay_ipv6: Option<Ipv6Addr>,
    /// Public IPv4 address advertised in XOR-RELAYED-ADDRESS when the node sits behind 1:1
    /// NAT. Default: `relay_ipv4`.
    pub external_ipv4: Option<Ipv4Addr>,
    /// Public IPv6 address advertised for IPv6 relays. Default: `relay_ipv6`.
    pub external_ipv6: Option<Ipv6Addr>,
    /// Lowest relay port. Default: 49152.
    pub relay_port_min: u16,
    /// Highest relay port. Default: 65535.
    pub relay_port_max: u16,
    /// Allocation lifetime when the client asks for none, in seconds. Default: 600.
    pub default_lifetime_secs: u32,
    /// Longest allocation lifetime granted, in seconds. Default: 3600.
    pub max_lifetime_secs: u32,
    /// How long a nonce stays valid before clients get 438 Stale Nonce, in seconds.
    /// Default: 600.
    pub nonce_lifetime_secs: u32,
    /// Send a SOFTWARE attribute (`meridian/<version>`) in responses. Default: true.
    pub software: bool,
    /// Where to send clients (300 Try Alternate) while this node drains. Default: none.
    pub alternate_server: Option<SocketAddr>,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            realm: "meridian".into(),
            udp: vec!["127.0.0.1:3478".parse().unwrap()],
            tcp: vec!["127.0.0.1:3478".parse().unwrap()],
            tls: vec![],
            tls_cert: None,
            tls_key: None,
            workers: 0,
            relay_ipv4: Some(Ipv4Addr::LOCALHOST),
            relay_ipv6: None,
            external_ipv4: None,
            external_ipv6: None,
            relay_port_min: 49152,
            relay_port_max: 65535,
            default_lifetime_secs: 600,
            max_lifetime_secs: 3600,
            nonce_lifetime_secs: 600,
            software: true,
            alternate_server: None,
        }
    }
}

/// A static long-term credential.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticUser {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for StaticUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticUser")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `[auth]`: who may allocate.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Static long-term users. Also from `MERIDIAN_TURN_USERS` ("user:pass,user2:pass2").
    pub users: Vec<StaticUser>,
    /// Shared secrets for TURN REST API ephemeral credentials (`expiry:user`, password =
    /// base64(HMAC-SHA1(secret, username))). Several are accepted at once so secrets rotate
    /// without downtime; the first one signs new credentials. Also from
    /// `MERIDIAN_TURN_REST_SECRETS` (comma-separated).
    pub rest_secrets: Vec<String>,
    /// Lifetime of credentials minted by `meridian credential`, in seconds. Default: 86400.
    pub credential_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users: vec![],
            rest_secrets: vec![],
            credential_ttl_secs: 86400,
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("users", &self.users)
            .field(
                "rest_secrets",
                &format_args!("<{} redacted>", self.rest_secrets.len()),
            )
            .field("credential_ttl_secs", &self.credential_ttl_secs)
            .finish()
    }
}

/// `[limits]`: quotas.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Allocations on this node. Default: 100000.
    pub max_allocations: usize,
    /// Allocations per username. Default: 100.
    pub max_allocations_per_user: usize,
    /// Permissions per allocation. Default: 64.
    pub max_permissions_per_allocation: usize,
    /// Channels per allocation. Default: 64.
    pub max_channels_per_allocation: usize,
    /// Relayed bandwidth per allocation, both directions together, in kilobits per second.
    /// 0 = unlimited. Default: 0.
    pub allocation_bandwidth_kbps: u64,
    /// Sustained unauthenticated (or failing-authentication) requests per second accepted
    /// from one source IP; beyond it requests are dropped and counted. Default: 20.
    pub unauthenticated_rate: u32,
    /// Burst allowance for the above. Default: 40.
    pub unauthenticated_burst: u32,
    /// TCP/TLS client connections that hold no allocation are closed after this many
    /// seconds (a connection that never allocates cannot pin a socket forever). Default: 30.
    pub unallocated_connection_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_allocations: 100_000,
            max_allocations_per_user: 100,
            max_permissions_per_allocation: 64,
            max_channels_per_allocation: 64,
            allocation_bandwidth_kbps: 0,
            unauthenticated_rate: 20,
            unauthenticated_burst: 40,
            unallocated_connection_timeout_secs: 30,
        }
    }
}

/// `[security]`: which peers may be relayed to.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Networks relaying to is allowed even though they are refused by default (loopback,
    /// private, link-local, CGNAT, ULA, the node's own addresses, ...). Default: [].
    pub allow_peers: Vec<IpNet>,
    /// Further networks to refuse. Default: [].
    pub deny_peers: Vec<IpNet>,
}

/// `[drain]`: behaviour on SIGTERM.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// How long existing allocations keep relaying after SIGTERM before the node exits, in
    /// seconds. Default: 60.
    pub deadline_secs: u64,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig { deadline_secs: 60 }
    }
}

/// An API key that signs access tokens (JWT, HS256).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub key: String,
    pub secret: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// `[signaling]`: the HTTP/WebSocket API (signaling, WHIP/WHEP, SDK and pages) and its access
/// tokens.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SignalingConfig {
    /// HTTP/WebSocket API listener (signaling, WHIP/WHEP, SDK and pages).
    /// Default: "127.0.0.1:7880". Port 0 picks a free port.
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the API is served over HTTPS/WSS. Default: none.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key; with `tls_cert`, the API is served over HTTPS/WSS. Default: none.
    pub tls_key: Option<PathBuf>,
    /// API keys whose secrets sign access tokens; all are accepted, the first signs tokens
    /// minted by `meridian token`. Also from `MERIDIAN_API_KEYS` ("key:secret,key2:secret2").
    /// Default: [].
    pub api_keys: Vec<ApiKey>,
    /// Lifetime of tokens minted by `meridian token`, in seconds. Default: 3600.
    pub token_ttl_secs: u64,
    /// `GET /v1/dev-token` hands out tokens to anyone (for the demo pages). Default: false
    /// (the embedded default sets it: it listens on loopback only). On a listener that is not
    /// loopback it also needs `dev_tokens_public`.
    pub dev_tokens: bool,
    /// Explicit opt-in to `dev_tokens` on a listener that is not loopback. Default: false.
    pub dev_tokens_public: bool,
    /// Largest WebSocket message accepted, in bytes. Default: 65536.
    pub max_message_bytes: usize,
    /// Sustained WebSocket messages per second accepted from one connection (token bucket).
    /// Default: 50.
    pub messages_per_sec: u32,
    /// Burst allowance for the above (the bucket size). Default: 100.
    pub message_burst: u32,
    /// A WebSocket must send `join` within this many seconds. Default: 10.
    pub join_timeout_secs: u64,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            listen: "127.0.0.1:7880".parse().unwrap(),
            tls_cert: None,
            tls_key: None,
            api_keys: vec![],
            token_ttl_secs: 3600,
            dev_tokens: false,
            dev_tokens_public: false,
            max_message_bytes: 65536,
            messages_per_sec: 50,
            message_burst: 100,
            join_timeout_secs: 10,
        }
    }
}

/// `[sfu]`: the selective forwarding unit (media sessions of rooms).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SfuConfig {
    /// The one UDP socket all SFU sessions share. Default: "127.0.0.1:7882". Port 0 picks a
    /// free port.
    pub udp: SocketAddr,
    /// ICE-TCP (passive) listeners, for networks that block UDP. Default: ["127.0.0.1:7881"];
    /// [] disables ICE-TCP.
    pub tcp: Vec<SocketAddr>,
    /// Address advertised in ICE candidates when the node sits behind 1:1 NAT. Default: none
    /// (the listener address). Required when a listener binds to 0.0.0.0 or ::.
    pub public_ip: Option<IpAddr>,
    /// SFU threads. 0 = one per core. Default: 0.
    pub workers: usize,
    /// At most one keyframe request per publisher track per this many milliseconds.
    /// Default: 1000.
    pub keyframe_interval_ms: u64,
    /// A published track with no media for this many seconds is reported stalled. Default: 5.
    pub stall_after_secs: u64,
    /// Room messages kept per room for clients that reconnect. Default: 1024.
    pub message_log: usize,
    /// Largest data-channel message accepted, in bytes. Default: 16384.
    pub max_data_message_bytes: usize,
    /// Packets kept for NACK retransmission. Default: 256 (about 2 s of a 1 Mbit/s stream,
    /// 0.5 s at 4 Mbit/s). Players' and viewers' non-simulcast subscriptions share one cache
    /// per published track; simulcast subscriptions keep one per outgoing stream (about 400
    /// bytes per packet each, the media shared).
    pub rtx_cache_packets: usize,
    /// Bandwidth estimate a subscriber starts from, in kilobits per second. Default: 1500.
    pub initial_bitrate_kbps: u64,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            udp: "127.0.0.1:7882".parse().unwrap(),
            tcp: vec!["127.0.0.1:7881".parse().unwrap()],
            public_ip: None,
            workers: 0,
            keyframe_interval_ms: 1000,
            stall_after_secs: 5,
            message_log: 1024,
            max_data_message_bytes: 16384,
            rtx_cache_packets: 256,
            initial_bitrate_kbps: 1500,
        }
    }
}

/// `[cluster]`: how this node finds the other regions' nodes (the geo directory), and how
/// clients reach it from outside. A node without this section runs alone (embedded directory).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's id in the directory, unique in the cluster (A-Z, a-z, 0-9, '_', '-', '.').
    /// Default: `node.name`.
    pub node_id: Option<String>,
    /// The region this node serves (same characters). Default: `node.region`.
    pub region: Option<String>,
    /// Where the directory lives: "embedded" (in memory; a single node), or Redis:
    /// "redis://[user:password@]host:port[/db]", "rediss://…" (TLS),
    /// "redis-sentinel://host:26379/0?sentinelServiceName=NAME&node=host2:26379" (Sentinel;
    /// "rediss-sentinel://" with TLS). Default: "embedded".
    pub directory: String,
    /// Prefix of every Redis key and channel, so several clusters can share one Redis.
    /// Default: "meridian".
    pub key_prefix: String,
    /// The signaling base URL clients reach this node at, e.g. "https://fra.example.com".
    /// Redirects to this node point there. Default: http(s)://<the bound signaling listener>
    /// (required when it binds to 0.0.0.0 or ::).
    pub public_signaling_url: Option<String>,
    /// The STUN/TURN UDP endpoints ("host:port") clients probe to measure their RTT to this
    /// region, and the TURN servers handed to them. Default: the bound `turn.udp` listeners
    /// (with `turn.external_ipv4` for 0.0.0.0).
    pub public_stun: Vec<String>,
    /// How often this node heartbeats into the directory, in milliseconds. Default: 200.
    pub heartbeat_interval_ms: u64,
    /// A node not heard from for this long is dead (its sessions and rooms leave the
    /// directory), in milliseconds; at least twice the heartbeat interval. Default: 800.
    pub death_timeout_ms: u64,
    /// Sessions at which this node counts as overloaded and new sessions are placed
    /// elsewhere. 0 = no limit. Default: 0.
    pub max_sessions: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: None,
            region: None,
            directory: "embedded".into(),
            key_prefix: "meridian".into(),
            public_signaling_url: None,
            public_stun: vec![],
            heartbeat_interval_ms: 200,
            death_timeout_ms: 800,
            max_sessions: 0,
        }
    }
}

/// `[trunk]`: the QUIC trunk between nodes, which carries cross-region rooms (media as
/// datagrams, room messages and subscriptions on streams). Nodes authenticate each other with
/// mutual TLS under one cluster CA. Off unless `listen` is set.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrunkConfig {
    /// The UDP address the trunk listens on (and dials from), e.g. "0.0.0.0:7890". Default:
    /// none (no trunk; a room homed elsewhere is served by redirecting its clients there).
    pub listen: Option<SocketAddr>,
    /// "host:port" other nodes dial to reach this one. Default: `listen` (required when it
    /// binds to 0.0.0.0 or ::).
    pub public_addr: Option<String>,
    /// PEM file of the cluster CA that signs every node's trunk certificate.
    pub ca: Option<PathBuf>,
    /// PEM certificate chain of this node, signed by `ca`, whose subject alternative name is
    /// "<node_id>.trunk.meridian" (`meridian trunk-cert` makes one).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Node ids allowed to connect. Default: [] = every node with a certificate from `ca`.
    pub allow_peers: Vec<String>,
    /// A trunk that carries no subscription and no room traffic for this long is closed, in
    /// seconds. Default: 30.
    pub idle_timeout_secs: u64,
    /// QUIC keepalive interval, in milliseconds (also how often the RTT is sampled). A peer
    /// silent for 4 intervals (at least 2 s) is gone. Default: 500.
    pub keepalive_ms: u64,
}

impl Default for TrunkConfig {
    fn default() -> Self {
        TrunkConfig {
            listen: None,
            public_addr: None,
            ca: None,
            cert: None,
            key: None,
            allow_peers: vec![],
            idle_timeout_secs: 30,
            keepalive_ms: 500,
        }
    }
}

impl Config {
    /// The node's id in the cluster: `cluster.node_id`, else `node.name`.
    pub fn node_id(&self) -> &str {
        self.cluster.node_id.as_deref().unwrap_or(&self.node.name)
    }

    /// The node's region: `cluster.region`, else `node.region`.
    pub fn region(&self) -> &str {
        self.cluster.region.as_deref().unwrap_or(&self.node.region)
    }
}
