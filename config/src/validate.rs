//! Semantic validation: rules that types alone cannot express.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::IpAddr;
use std::path::Path;

use crate::error::io_reason;
use crate::{Config, ConfigError};

/// Longest allocation lifetime that may be configured (RFC 8656 suggests 3600 s as a maximum;
/// a day is a generous upper bound).
pub(crate) const MAX_LIFETIME_LIMIT: u32 = 86_400;
/// Credential TTL bounds: a minute to a year.
pub(crate) const CREDENTIAL_TTL_MIN: u64 = 60;
pub(crate) const CREDENTIAL_TTL_MAX: u64 = 31_536_000;
/// Nonce lifetime bounds.
pub(crate) const NONCE_LIFETIME_MIN: u32 = 30;
pub(crate) const NONCE_LIFETIME_MAX: u32 = 86_400;
/// Most worker threads.
pub(crate) const MAX_WORKERS: usize = 256;
/// Longest drain deadline.
pub(crate) const MAX_DRAIN_SECS: u64 = 3600;
/// REALM must be fewer than 128 characters (RFC 8489 section 14.9).
pub(crate) const MAX_REALM_CHARS: usize = 127;
/// USERNAME must be fewer than 513 bytes (RFC 8489 section 14.3).
pub(crate) const MAX_USERNAME_BYTES: usize = 512;

fn check_range<T: PartialOrd + Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::invalid(key, format!("{min}..={max}"), value));
    }
    Ok(())
}

fn check_positive<T: PartialOrd + Display + Default>(
    key: &str,
    value: T,
) -> Result<(), ConfigError> {
    if value <= T::default() {
        return Err(ConfigError::invalid(key, "an integer >= 1", value));
    }
    Ok(())
}

pub(crate) fn validate(config: &Config) -> Result<(), ConfigError> {
    validate_log(config)?;
    validate_turn(config)?;
    validate_limits(config)?;
    validate_auth(config)?;
    validate_signaling(config)?;
    validate_sfu(config)?;
    validate_cluster(config)?;
    validate_trunk(config)?;
    check_range(
        "drain.deadline_secs",
        config.drain.deadline_secs,
        0,
        MAX_DRAIN_SECS,
    )?;
    Ok(())
}

fn validate_log(config: &Config) -> Result<(), ConfigError> {
    if config.log.level.trim().is_empty() {
        return Err(ConfigError::invalid(
            "log.level",
            "a tracing filter such as \"info\" or \"meridian_relay=debug\"",
            format!("{:?}", config.log.level),
        ));
    }
    Ok(())
}

fn validate_turn(config: &Config) -> Result<(), ConfigError> {
    let turn = &config.turn;

    // Realm.
    if turn.realm.is_empty() {
        return Err(ConfigError::invalid(
            "turn.realm",
            "a non-empty string of printable ASCII",
            "\"\"",
        ));
    }
    if let Some((at, c)) = turn
        .realm
        .char_indices()
        .find(|(_, c)| !(' '..='~').contains(c))
    {
        return Err(ConfigError::invalid(
            "turn.realm",
            "a non-empty string of printable ASCII",
            format!(
                "{:?} (character {c:?} at byte {at} is not printable ASCII)",
                turn.realm
            ),
        ));
    }
    if turn.realm.len() > MAX_REALM_CHARS {
        return Err(ConfigError::invalid(
            "turn.realm",
            format!("at most {MAX_REALM_CHARS} characters"),
            format!("{} characters", turn.realm.len()),
        ));
    }

    // Listeners.
    if turn.udp.is_empty() && turn.tcp.is_empty() && turn.tls.is_empty() {
        return Err(ConfigError::rule(
            "turn",
            "no listeners; set at least one of turn.udp, turn.tcp or turn.tls",
        ));
    }
    if !turn.tls.is_empty() {
        if turn.tls_cert.is_none() || turn.tls_key.is_none() {
            return Err(ConfigError::rule(
                "turn.tls",
                "TLS listeners need turn.tls_cert and turn.tls_key",
            ));
        }
        for (key, path) in [
            ("turn.tls_cert", &turn.tls_cert),
            ("turn.tls_key", &turn.tls_key),
        ] {
            if let Some(path) = path {
                check_file(key, path)?;
            }
        }
    }

    if turn.workers > MAX_WORKERS {
        return Err(ConfigError::invalid(
            "turn.workers",
            format!("0..={MAX_WORKERS} (0 = one per core)"),
            turn.workers,
        ));
    }

    // Relay addresses.
    if turn.relay_ipv4.is_none() && turn.relay_ipv6.is_none() {
        return Err(ConfigError::rule(
            "turn.relay_ipv4",
            "no relay address; set turn.relay_ipv4 and/or turn.relay_ipv6",
        ));
    }
    if let Some(relay) = turn.relay_ipv4 {
        if relay.is_multicast() || relay.is_broadcast() {
            return Err(ConfigError::invalid(
                "turn.relay_ipv4",
                "a unicast IPv4 address",
                relay,
            ));
        }
        if relay.is_unspecified() && turn.external_ipv4.is_none() {
            return Err(ConfigError::rule(
                "turn.relay_ipv4",
                "0.0.0.0 binds relays on every interface, so there is no address to advertise; \
                 set turn.external_ipv4 to the public address",
            ));
        }
    }
    if let Some(relay) = turn.relay_ipv6 {
        if relay.is_multicast() {
            return Err(ConfigError::invalid(
                "turn.relay_ipv6",
                "a unicast IPv6 address",
                relay,
            ));
        }
        if relay.is_unspecified() && turn.external_ipv6.is_none() {
            return Err(ConfigError::rule(
                "turn.relay_ipv6",
                ":: binds relays on every interface, so there is no address to advertise; \
                 set turn.external_ipv6 to the public address",
            ));
        }
    }
    if let Some(external) = turn.external_ipv4 {
        if turn.relay_ipv4.is_none() {
            return Err(ConfigError::rule(
                "turn.external_ipv4",
                "set without turn.relay_ipv4; IPv4 relaying needs turn.relay_ipv4",
            ));
        }
        if external.is_unspecified() || external.is_multicast() || external.is_broadcast() {
            return Err(ConfigError::invalid(
                "turn.external_ipv4",
                "a unicast IPv4 address",
                external,
            ));
        }
    }
    if let Some(external) = turn.external_ipv6 {
        if turn.relay_ipv6.is_none() {
            return Err(ConfigError::rule(
                "turn.external_ipv6",
                "set without turn.relay_ipv6; IPv6 relaying needs turn.relay_ipv6",
            ));
        }
        if external.is_unspecified() || external.is_multicast() {
            return Err(ConfigError::invalid(
                "turn.external_ipv6",
                "a unicast IPv6 address",
                external,
            ));
        }
    }

    // Relay ports.
    check_range("turn.relay_port_min", turn.relay_port_min, 1, u16::MAX)?;
    if turn.relay_port_max < turn.relay_port_min {
        return Err(ConfigError::invalid(
            "turn.relay_port_max",
            format!(
                "{}..=65535 (at least turn.relay_port_min)",
                turn.relay_port_min
            ),
            turn.relay_port_max,
        ));
    }

    // Lifetimes.
    check_range(
        "turn.max_lifetime_secs",
        turn.max_lifetime_secs,
        1,
        MAX_LIFETIME_LIMIT,
    )?;
    if turn.default_lifetime_secs < 1 || turn.default_lifetime_secs > turn.max_lifetime_secs {
        return Err(ConfigError::invalid(
            "turn.default_lifetime_secs",
            format!(
                "1..={} (at most turn.max_lifetime_secs)",
                turn.max_lifetime_secs
            ),
            turn.default_lifetime_secs,
        ));
    }
    check_range(
        "turn.nonce_lifetime_secs",
        turn.nonce_lifetime_secs,
        NONCE_LIFETIME_MIN,
        NONCE_LIFETIME_MAX,
    )?;

    if let Some(alternate) = turn.alternate_server {
        if alternate.ip().is_unspecified() || alternate.port() == 0 {
            return Err(ConfigError::invalid(
                "turn.alternate_server",
                "a concrete address and port clients can connect to",
                alternate,
            ));
        }
    }
    Ok(())
}

fn check_file(key: &str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(ConfigError::rule(
            key,
            format!("{} is a directory, expected a PEM file", path.display()),
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ConfigError::rule(
            key,
            format!("file {} does not exist", path.display()),
        )),
        Err(e) => Err(ConfigError::rule(
            key,
            format!("cannot access {}: {}", path.display(), io_reason(&e)),
        )),
    }
}

fn validate_limits(config: &Config) -> Result<(), ConfigError> {
    let limits = &config.limits;
    check_positive("limits.max_allocations", limits.max_allocations)?;
    check_positive(
        "limits.max_allocations_per_user",
        limits.max_allocations_per_user,
    )?;
    check_positive(
        "limits.max_permissions_per_allocation",
        limits.max_permissions_per_allocation,
    )?;
    check_positive(
        "limits.max_channels_per_allocation",
        limits.max_channels_per_allocation,
    )?;
    check_positive("limits.unauthenticated_rate", limits.unauthenticated_rate)?;
    check_positive("limits.unauthenticated_burst", limits.unauthenticated_burst)?;
    if !(1..=3600).contains(&limits.unallocated_connection_timeout_secs) {
        return Err(ConfigError::invalid(
            "limits.unallocated_connection_timeout_secs",
            "1..=3600",
            limits.unallocated_connection_timeout_secs,
        ));
    }
    if limits.max_allocations_per_user > limits.max_allocations {
        return Err(ConfigError::invalid(
            "limits.max_allocations_per_user",
            format!(
                "1..={} (at most limits.max_allocations)",
                limits.max_allocations
            ),
            limits.max_allocations_per_user,
        ));
    }
    if limits.unauthenticated_burst < limits.unauthenticated_rate {
        return Err(ConfigError::invalid(
            "limits.unauthenticated_burst",
            format!(
                "at least limits.unauthenticated_rate ({})",
                limits.unauthenticated_rate
            ),
            limits.unauthenticated_burst,
        ));
    }
    Ok(())
}

fn validate_auth(config: &Config) -> Result<(), ConfigError> {
    let auth = &config.auth;
    if auth.users.is_empty() && auth.rest_secrets.is_empty() {
        return Err(ConfigError::rule(
            "auth",
            "no static users and no REST secrets; every allocation would be refused \
             (set auth.users or auth.rest_secrets, or MERIDIAN_TURN_REST_SECRETS)",
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, user) in auth.users.iter().enumerate() {
        let key = format!("auth.users[{i}].username");
        if user.username.is_empty() {
            return Err(ConfigError::invalid(key, "a non-empty string", "\"\""));
        }
        if user.username.len() > MAX_USERNAME_BYTES {
            return Err(ConfigError::invalid(
                key,
                format!("at most {MAX_USERNAME_BYTES} bytes"),
                format!("{} bytes", user.username.len()),
            ));
        }
        if let Some(first) = seen.insert(&user.username, i) {
            return Err(ConfigError::rule(
                key,
                format!(
                    "duplicate username {:?} (also auth.users[{first}])",
                    user.username
                ),
            ));
        }
        if user.password.is_empty() {
            return Err(ConfigError::rule(
                format!("auth.users[{i}].password"),
                format!("empty password for user {:?}", user.username),
            ));
        }
    }
    for (i, secret) in auth.rest_secrets.iter().enumerate() {
        if secret.is_empty() {
            return Err(ConfigError::rule(
                format!("auth.rest_secrets[{i}]"),
                "empty secret",
            ));
        }
    }
    check_range(
        "auth.credential_ttl_secs",
        auth.credential_ttl_secs,
        CREDENTIAL_TTL_MIN,
        CREDENTIAL_TTL_MAX,
    )?;
    Ok(())
}

/// Shortest API secret accepted: HS256 keys shorter than this are guessable.
const MIN_API_SECRET: usize = 16;

/// Largest WebSocket message bounds.
pub(crate) const MAX_MESSAGE_BYTES_MIN: usize = 1024;
pub(crate) const MAX_MESSAGE_BYTES_MAX: usize = 1_048_576;
/// Longest time a WebSocket may take to send `join`.
pub(crate) const MAX_JOIN_TIMEOUT_SECS: u64 = 300;

fn validate_signaling(config: &Config) -> Result<(), ConfigError> {
    let s = &config.signaling;
    match (&s.tls_cert, &s.tls_key) {
        (Some(_), None) => {
            return Err(ConfigError::rule(
                "signaling.tls_cert",
                "set without signaling.tls_key; HTTPS needs both (or neither, for plain HTTP)",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::rule(
                "signaling.tls_key",
                "set without signaling.tls_cert; HTTPS needs both (or neither, for plain HTTP)",
            ))
        }
        (Some(cert), Some(key)) => {
            check_file("signaling.tls_cert", cert)?;
            check_file("signaling.tls_key", key)?;
        }
        (None, None) => {}
    }
    if s.dev_tokens && !s.listen.ip().is_loopback() && !s.dev_tokens_public {
        return Err(ConfigError::rule(
            "signaling.dev_tokens",
            format!(
                "hands out tokens to anyone who can reach signaling.listen ({}), which is not a \
                 loopback address; listen on loopback, or set signaling.dev_tokens_public = true \
                 to allow it",
                s.listen
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, k) in s.api_keys.iter().enumerate() {
        let key = format!("signaling.api_keys[{i}].key");
        if k.key.is_empty() || k.key.len() > 128 || k.key.chars().any(char::is_control) {
            return Err(ConfigError::invalid(
                key,
                "1..=128 bytes without control characters",
                format!("{:?}", k.key),
            ));
        }
        if !seen.insert(k.key.as_str()) {
            return Err(ConfigError::invalid(
                key,
                "a key name not used twice",
                format!("{:?} again", k.key),
            ));
        }
        if k.secret.len() < MIN_API_SECRET {
            return Err(ConfigError::invalid(
                format!("signaling.api_keys[{i}].secret"),
                format!("at least {MIN_API_SECRET} bytes"),
                format!("{} bytes (value not shown)", k.secret.len()),
            ));
        }
    }
    check_range("signaling.token_ttl_secs", s.token_ttl_secs, 1, 2_592_000)?;
    check_range(
        "signaling.max_message_bytes",
        s.max_message_bytes,
        MAX_MESSAGE_BYTES_MIN,
        MAX_MESSAGE_BYTES_MAX,
    )?;
    check_positive("signaling.messages_per_sec", s.messages_per_sec)?;
    check_positive("signaling.message_burst", s.message_burst)?;
    check_range(
        "signaling.join_timeout_secs",
        s.join_timeout_secs,
        1,
        MAX_JOIN_TIMEOUT_SECS,
    )
}

/// Keyframe request interval bounds, in milliseconds.
pub(crate) const KEYFRAME_INTERVAL_MIN_MS: u64 = 100;
pub(crate) const KEYFRAME_INTERVAL_MAX_MS: u64 = 10_000;
/// Longest stall threshold.
pub(crate) const MAX_STALL_AFTER_SECS: u64 = 300;
/// Most room messages kept per room.
pub(crate) const MAX_MESSAGE_LOG: usize = 1_000_000;
/// Largest data-channel message that may be configured.
pub(crate) const MAX_DATA_MESSAGE_BYTES: usize = 262_144;
/// Most packets kept per outgoing video stream for retransmission.
pub(crate) const MAX_RTX_CACHE_PACKETS: usize = 8192;
/// Initial bandwidth estimate bounds, in kbit/s.
pub(crate) const INITIAL_BITRATE_MIN_KBPS: u64 = 50;
pub(crate) const INITIAL_BITRATE_MAX_KBPS: u64 = 100_000;

fn validate_sfu(config: &Config) -> Result<(), ConfigError> {
    let sfu = &config.sfu;
    match sfu.public_ip {
        Some(ip) => {
            let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
            if ip.is_unspecified() || ip.is_multicast() || broadcast {
                return Err(ConfigError::invalid(
                    "sfu.public_ip",
                    "a unicast IP address",
                    ip,
                ));
            }
        }
        None => {
            // ICE candidates carry the listener address, and a wildcard is not one clients
            // can send to.
            let wildcard = |key: String, ip: IpAddr| {
                ConfigError::rule(
                    key,
                    format!(
                        "{ip} binds every interface, so ICE candidates have no concrete address \
                         to advertise; set sfu.public_ip to the address clients reach this node on"
                    ),
                )
            };
            if sfu.udp.ip().is_unspecified() {
                return Err(wildcard("sfu.udp".into(), sfu.udp.ip()));
            }
            if let Some((i, tcp)) = sfu
                .tcp
                .iter()
                .enumerate()
                .find(|(_, a)| a.ip().is_unspecified())
            {
                return Err(wildcard(format!("sfu.tcp[{i}]"), tcp.ip()));
            }
        }
    }
    if sfu.workers > MAX_WORKERS {
        return Err(ConfigError::invalid(
            "sfu.workers",
            format!("0..={MAX_WORKERS} (0 = one per core)"),
            sfu.workers,
        ));
    }
    check_range(
        "sfu.keyframe_interval_ms",
        sfu.keyframe_interval_ms,
        KEYFRAME_INTERVAL_MIN_MS,
        KEYFRAME_INTERVAL_MAX_MS,
    )?;
    check_range(
        "sfu.stall_after_secs",
        sfu.stall_after_secs,
        1,
        MAX_STALL_AFTER_SECS,
    )?;
    check_range("sfu.message_log", sfu.message_log, 1, MAX_MESSAGE_LOG)?;
    check_range(
        "sfu.max_data_message_bytes",
        sfu.max_data_message_bytes,
        1,
        MAX_DATA_MESSAGE_BYTES,
    )?;
    check_range(
        "sfu.rtx_cache_packets",
        sfu.rtx_cache_packets,
        0,
        MAX_RTX_CACHE_PACKETS,
    )?;
    check_range(
        "sfu.initial_bitrate_kbps",
        sfu.initial_bitrate_kbps,
        INITIAL_BITRATE_MIN_KBPS,
        INITIAL_BITRATE_MAX_KBPS,
    )
}

/// Heartbeat interval bounds, in milliseconds.
pub(crate) const HEARTBEAT_MIN_MS: u64 = 20;
pub(crate) const HEARTBEAT_MAX_MS: u64 = 10_000;
/// Longest death timeout, in milliseconds.
pub(crate) const DEATH_TIMEOUT_MAX_MS: u64 = 60_000;

/// A node id or region name: 1..=64 of A-Z, a-z, 0-9, '_', '-', '.'.
fn check_name(key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            "1..=64 characters of A-Z, a-z, 0-9, '_', '-', '.'",
            format!("{value:?}"),
        ))
    }
}

/// The scheme of a directory URL, after checking its shape (host present; Sentinel names
/// its service). `None` for "embedded".
pub(crate) fn directory_scheme(url: &str) -> Result<Option<&str>, String> {
    if url == "embedded" {
        return Ok(None);
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(
            "\"embedded\" or a redis://, rediss://, redis-sentinel:// or rediss-sentinel:// URL"
                .into(),
        );
    };
    if !matches!(
        scheme,
        "redis" | "rediss" | "redis-sentinel" | "rediss-sentinel"
    ) {
        return Err(format!(
            "scheme {scheme:?} is not redis, rediss, redis-sentinel or rediss-sentinel"
        ));
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err("the URL names no host".into());
    }
    if scheme.ends_with("-sentinel") && !rest.contains("sentinelServiceName=") {
        return Err("a Sentinel URL needs ?sentinelServiceName=NAME (the monitored master)".into());
    }
    Ok(Some(scheme))
}

fn validate_cluster(config: &Config) -> Result<(), ConfigError> {
    let c = &config.cluster;
    let id_key = if c.node_id.is_some() {
        "cluster.node_id"
    } else {
        "node.name"
    };
    check_name(id_key, config.node_id())?;
    let region_key = if c.region.is_some() {
        "cluster.region"
    } else {
        "node.region"
    };
    check_name(region_key, config.region())?;
    let redis = match directory_scheme(&c.directory) {
        Ok(s) => s.is_some(),
        Err(why) => {
            // Never echo the URL: it may carry a password.
            return Err(ConfigError::rule("cluster.directory", why));
        }
    };
    check_name("cluster.key_prefix", &c.key_prefix)?;
    check_range(
        "cluster.heartbeat_interval_ms",
        c.heartbeat_interval_ms,
        HEARTBEAT_MIN_MS,
        HEARTBEAT_MAX_MS,
    )?;
    if c.death_timeout_ms < 2 * c.heartbeat_interval_ms || c.death_timeout_ms > DEATH_TIMEOUT_MAX_MS
    {
        return Err(ConfigError::invalid(
            "cluster.death_timeout_ms",
            format!(
                "{}..={DEATH_TIMEOUT_MAX_MS} (at least twice cluster.heartbeat_interval_ms)",
                2 * c.heartbeat_interval_ms
            ),
            c.death_timeout_ms,
        ));
    }
    if let Some(url) = &c.public_signaling_url {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
        let bad = match (rest, host) {
            (Some(r), Some(h)) => {
                h.is_empty()
                    || r.len() > h.len() + 1
                    || (r.len() == h.len() + 1 && !r.ends_with('/'))
            }
            _ => true,
        };
        if bad || url.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return Err(ConfigError::invalid(
                "cluster.public_signaling_url",
                "an http:// or https:// base URL with a host and no path, e.g. \"https://fra.example.com\"",
                format!("{url:?}"),
            ));
        }
    } else if redis && config.signaling.listen.ip().is_unspecified() {
        return Err(ConfigError::rule(
            "cluster.public_signaling_url",
            format!(
                "required with a Redis directory when signaling.listen binds to {} (other regions redirect clients to it)",
                config.signaling.listen.ip()
            ),
        ));
    }
    for (i, s) in c.public_stun.iter().enumerate() {
        let ok = s
            .rsplit_once(':')
            .map(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
            .unwrap_or(false);
        if !ok || s.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return Err(ConfigError::invalid(
                format!("cluster.public_stun[{i}]"),
                "host:port (e.g. \"203.0.113.10:3478\" or \"[2001:db8::1]:3478\")",
                format!("{s:?}"),
            ));
        }
    }
    if c.public_stun.is_empty()
        && redis
        && config.turn.external_ipv4.is_none()
        && config.turn.udp.iter().any(|a| a.ip().is_unspecified())
    {
        return Err(ConfigError::rule(
            "cluster.public_stun",
            "required with a Redis directory when turn.udp binds to an unspecified address and turn.external_ipv4 is unset (clients probe it to rank regions)",
        ));
    }
    Ok(())
}

/// Keepalive bounds of the trunk, in milliseconds.
pub(crate) const TRUNK_KEEPALIVE_MIN_MS: u64 = 50;
pub(crate) const TRUNK_KEEPALIVE_MAX_MS: u64 = 60_000;
/// Longest idle timeout of a trunk, in seconds.
pub(crate) const TRUNK_IDLE_MAX_SECS: u64 = 86_400;

fn validate_trunk(config: &Config) -> Result<(), ConfigError> {
    let t = &config.trunk;
    let Some(listen) = t.listen else {
        for (key, set) in [
            ("trunk.public_addr", t.public_addr.is_some()),
            ("trunk.ca", t.ca.is_some()),
            ("trunk.cert", t.cert.is_some()),
            ("trunk.key", t.key.is_some()),
            ("trunk.allow_peers", !t.allow_peers.is_empty()),
        ] {
            if set {
                return Err(ConfigError::rule(
                    key,
                    "set without trunk.listen; the trunk is off until trunk.listen is set",
                ));
            }
        }
        return Ok(());
    };
    for (key, path) in [
        ("trunk.ca", &t.ca),
        ("trunk.cert", &t.cert),
        ("trunk.key", &t.key),
    ] {
        match path {
            Some(p) => check_file(key, p)?,
            None => {
                return Err(ConfigError::rule(
                    key,
                    "required with trunk.listen: nodes authenticate each other with mutual TLS under the cluster CA",
                ))
            }
        }
    }
    match &t.public_addr {
        Some(a) => {
            let ok = a
                .rsplit_once(':')
                .map(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
                .unwrap_or(false);
            if !ok || a.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                return Err(ConfigError::invalid(
                    "trunk.public_addr",
                    "host:port (e.g. \"203.0.113.10:7890\")",
                    format!("{a:?}"),
                ));
            }
        }
        None if listen.ip().is_unspecified() => {
            return Err(ConfigError::rule(
                "trunk.public_addr",
                format!("required when trunk.listen is {listen} (other nodes dial it)"),
            ));
        }
        None => {}
    }
    for (i, p) in t.allow_peers.iter().enumerate() {
        check_name(&format!("trunk.allow_peers[{i}]"), p)?;
    }
    check_range(
        "trunk.keepalive_ms",
        t.keepalive_ms,
        TRUNK_KEEPALIVE_MIN_MS,
        TRUNK_KEEPALIVE_MAX_MS,
    )?;
    check_range(
        "trunk.idle_timeout_secs",
        t.idle_timeout_secs,
        1,
        TRUNK_IDLE_MAX_SECS,
    )?;
    Ok(())
}
