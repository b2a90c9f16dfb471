//! Parsing TOML text into a [`Config`], keeping where every key was written so that errors,
//! including the semantic ones found later by [`Config::validate`], can name their line.

use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::{Config, ConfigError};

/// A configuration parsed from text, with the positions of its keys.
pub(crate) struct Parsed {
    pub(crate) config: Config,
    pub(crate) index: KeyIndex,
}

/// Parses `text` (no validation, no environment). `origin` names the text in messages.
pub(crate) fn parse(text: &str, origin: &str) -> Result<Parsed, ConfigError> {
    let lines = LineStarts::new(text);
    let root = DeTable::parse(text).map_err(|e| ConfigError::Syntax {
        origin: Some(origin.to_owned()),
        line: e.span().map(|s| lines.line(s.start)),
        message: one_line(e.message()),
    })?;
    let mut index = KeyIndex {
        entries: Vec::new(),
        lines,
    };
    index.walk_table(text, "", root.get_ref());
    match Config::deserialize(toml::de::Deserializer::from(root)) {
        Ok(config) => Ok(Parsed { config, index }),
        Err(e) => Err(index.convert(origin, &e)),
    }
}

/// Byte offsets where lines start, to turn spans into 1-based line numbers.
struct LineStarts(Vec<usize>);

impl LineStarts {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(at, _)| at + 1));
        LineStarts(starts)
    }

    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset)
    }
}

/// One key (or array element) written in the file.
struct Entry {
    /// `turn.udp[1]`, `auth.users[0].password`.
    path: String,
    /// Span of the key itself; none for array elements.
    key: Option<Range<usize>>,
    /// Span of the value.
    value: Range<usize>,
    /// How to show the value in an error ("70000", "\"abc\"", "a table"); secrets redacted.
    found: String,
}

/// Positions of every key of a parsed document.
pub(crate) struct KeyIndex {
    entries: Vec<Entry>,
    lines: LineStarts,
}

impl KeyIndex {
    /// The 1-based line where `path` was written, if it was.
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|e| e.path == path)
            .map(|e| self.lines.line(e.key.as_ref().unwrap_or(&e.value).start))
    }

    fn walk_table(&mut self, text: &str, prefix: &str, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            self.walk_value(text, path, Some(key.span()), value);
        }
    }

    fn walk_value(
        &mut self,
        text: &str,
        path: String,
        key: Option<Range<usize>>,
        value: &Spanned<DeValue<'_>>,
    ) {
        let found = describe(text, &path, value);
        self.entries.push(Entry {
            path: path.clone(),
            key,
            value: value.span(),
            found,
        });
        match value.get_ref() {
            DeValue::Table(table) => self.walk_table(text, &path, table),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.walk_value(text, format!("{path}[{i}]"), None, item);
                }
            }
            _ => {}
        }
    }

    /// The entry whose key is exactly at `span` (unknown-key errors point at the key).
    fn entry_with_key(&self, span: &Range<usize>) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key.as_ref() == Some(span))
    }

    /// The innermost value containing `span`; on ties (an array of tables and its first
    /// element share a span) the deepest one, which was recorded last.
    fn entry_with_value(&self, span: &Range<usize>) -> Option<&Entry> {
        let mut best: Option<&Entry> = None;
        for e in &self.entries {
            let contains = e.value.start <= span.start && span.end <= e.value.end;
            if contains && best.is_none_or(|b| e.value.len() <= b.value.len()) {
                best = Some(e);
            }
        }
        best.or_else(|| self.entry_with_key(span))
    }

    /// Turns a deserialization error into a [`ConfigError`] naming the line and the key.
    fn convert(&self, origin: &str, error: &toml::de::Error) -> ConfigError {
        let origin = Some(origin.to_owned());
        let message = one_line(error.message());
        let span = error.span();
        let line = span.as_ref().map(|s| self.lines.line(s.start));
        let entry = span.as_ref().and_then(|s| self.entry_with_value(s));

        if let Some(rest) = message.strip_prefix("unknown field `") {
            let name = rest.split('`').next().unwrap_or_default();
            let entry = span.as_ref().and_then(|s| self.entry_with_key(s));
            // The span is the unknown key itself, so the entry's path is the full key path.
            let key = match entry {
                Some(e) if e.path.rsplit('.').next() == Some(name) => e.path.clone(),
                _ => name.to_owned(),
            };
            return ConfigError::UnknownKey {
                origin,
                line,
                key,
                expected: expected_names(&message),
            };
        }
        if let Some(rest) = message.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or_default();
            let key = match entry {
                Some(e) => format!("{}.{name}", e.path),
                None => name.to_owned(),
            };
            return ConfigError::MissingKey { origin, line, key };
        }
        match entry {
            Some(e) => ConfigError::Invalid {
                origin,
                line,
                key: e.path.clone(),
                expected: expected_for(&e.path).map(str::to_owned).unwrap_or(message),
                found: e.found.clone(),
            },
            None => ConfigError::Syntax {
                origin,
                line,
                message,
            },
        }
    }
}

/// Names quoted in backticks after "expected" in a serde message.
fn expected_names(message: &str) -> Vec<String> {
    let Some(at) = message.find("expected") else {
        return Vec::new();
    };
    message[at..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Keys whose values are never shown in messages.
pub(crate) fn is_secret(path: &str) -> bool {
    path.ends_with(".password")
        || path.ends_with(".secret")
        || path.starts_with("auth.rest_secrets")
}

fn describe(text: &str, path: &str, value: &Spanned<DeValue<'_>>) -> String {
    let kind = match value.get_ref() {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => return "an array".to_owned(),
        DeValue::Table(_) => return "a table".to_owned(),
    };
    if is_secret(path) {
        return format!("{kind} (value not shown)");
    }
    let raw = text.get(value.span()).unwrap_or_default();
    let raw = one_line(raw);
    if raw.chars().count() > 60 {
        format!("{}...", raw.chars().take(57).collect::<String>())
    } else {
        raw
    }
}

/// Every key of the file format with a description of the values it takes, used in type
/// errors. Array elements are written `key[]`.
pub(crate) const KEYS: &[(&str, &str)] = &[
    ("node", "a table"),
    ("node.name", "a string"),
    ("node.region", "a string"),
    ("log", "a table"),
    ("log.format", "\"human\" or \"json\""),
    ("log.level", "a tracing filter string such as \"info\""),
    ("admin", "a table"),
    ("admin.listen", "an \"ip:port\" socket address"),
    ("turn", "a table"),
    ("turn.realm", "a string of printable ASCII"),
    ("turn.udp", "an array of \"ip:port\" socket addresses"),
    ("turn.udp[]", "an \"ip:port\" socket address"),
    ("turn.tcp", "an array of \"ip:port\" socket addresses"),
    ("turn.tcp[]", "an \"ip:port\" socket address"),
    ("turn.tls", "an array of \"ip:port\" socket addresses"),
    ("turn.tls[]", "an \"ip:port\" socket address"),
    ("turn.tls_cert", "a file path"),
    ("turn.tls_key", "a file path"),
    ("turn.workers", "0..=256"),
    ("turn.relay_ipv4", "an IPv4 address"),
    ("turn.relay_ipv6", "an IPv6 address"),
    ("turn.external_ipv4", "an IPv4 address"),
    ("turn.external_ipv6", "an IPv6 address"),
    ("turn.relay_port_min", "1..=65535"),
    ("turn.relay_port_max", "1..=65535"),
    ("turn.default_lifetime_secs", "1..=86400"),
    ("turn.max_lifetime_secs", "1..=86400"),
    ("turn.nonce_lifetime_secs", "30..=86400"),
    ("turn.software", "true or false"),
    ("turn.alternate_server", "an \"ip:port\" socket address"),
    ("auth", "a table"),
    (
        "auth.users",
        "an array of tables with username and password ([[auth.users]])",
    ),
    ("auth.users[]", "a table with username and password"),
    ("auth.users[].username", "a string"),
    ("auth.users[].password", "a string"),
    ("auth.rest_secrets", "an array of strings"),
    ("auth.rest_secrets[]", "a string"),
    ("auth.credential_ttl_secs", "60..=31536000"),
    ("limits", "a table"),
    ("limits.max_allocations", "an integer >= 1"),
    ("limits.max_allocations_per_user", "an integer >= 1"),
    ("limits.max_permissions_per_allocation", "an integer >= 1"),
    ("limits.max_channels_per_allocation", "an integer >= 1"),
    (
        "limits.allocation_bandwidth_kbps",
        "an integer >= 0 (0 = unlimited)",
    ),
    ("limits.unauthenticated_rate", "1..=4294967295"),
    ("limits.unauthenticated_burst", "1..=4294967295"),
    ("limits.unallocated_connection_timeout_secs", "1..=3600"),
    ("security", "a table"),
    (
        "security.allow_peers",
        "an array of networks in CIDR notation such as \"10.0.0.0/8\"",
    ),
    (
        "security.allow_peers[]",
        "a network in CIDR notation such as \"10.0.0.0/8\"",
    ),
    (
        "security.deny_peers",
        "an array of networks in CIDR notation such as \"10.0.0.0/8\"",
    ),
    (
        "security.deny_peers[]",
        "a network in CIDR notation such as \"10.0.0.0/8\"",
    ),
    ("drain", "a table"),
    ("drain.deadline_secs", "0..=3600"),
    ("signaling", "a table"),
    ("signaling.listen", "an \"ip:port\" socket address"),
    ("signaling.tls_cert", "a file path"),
    ("signaling.tls_key", "a file path"),
    (
        "signaling.api_keys",
        "an array of tables with key and secret ([[signaling.api_keys]])",
    ),
    ("signaling.api_keys[]", "a table with key and secret"),
    ("signaling.api_keys[].key", "a string"),
    ("signaling.api_keys[].secret", "a string"),
    ("signaling.token_ttl_secs", "1..=2592000"),
    ("signaling.dev_tokens", "true or false"),
    ("signaling.dev_tokens_public", "true or false"),
    ("signaling.max_message_bytes", "1024..=1048576"),
    ("signaling.messages_per_sec", "1..=4294967295"),
    ("signaling.message_burst", "1..=4294967295"),
    ("signaling.join_timeout_secs", "1..=300"),
    ("sfu", "a table"),
    ("sfu.udp", "an \"ip:port\" socket address"),
    ("sfu.tcp", "an array of \"ip:port\" socket addresses"),
    ("sfu.tcp[]", "an \"ip:port\" socket address"),
    ("sfu.public_ip", "an IP address"),
    ("sfu.workers", "0..=256"),
    ("sfu.keyframe_interval_ms", "100..=10000"),
    ("sfu.stall_after_secs", "1..=300"),
    ("sfu.message_log", "1..=1000000"),
    ("sfu.max_data_message_bytes", "1..=262144"),
    ("sfu.rtx_cache_packets", "0..=8192"),
    ("sfu.initial_bitrate_kbps", "50..=100000"),
    ("cluster", "a table"),
    (
        "cluster.node_id",
        "a string of A-Z, a-z, 0-9, '_', '-', '.'",
    ),
    ("cluster.region", "a string of A-Z, a-z, 0-9, '_', '-', '.'"),
    ("cluster.directory", "\"embedded\" or a redis:// URL"),
    (
        "cluster.key_prefix",
        "a string of A-Z, a-z, 0-9, '_', '-', '.'",
    ),
    ("cluster.public_signaling_url", "an http:// or https:// URL"),
    ("cluster.public_stun", "an array of \"host:port\" strings"),
    ("cluster.public_stun[]", "a \"host:port\" string"),
    ("cluster.heartbeat_interval_ms", "20..=10000"),
    (
        "cluster.death_timeout_ms",
        "an integer (at least twice the heartbeat interval)",
    ),
    ("cluster.max_sessions", "an integer >= 0"),
    ("trunk", "a table"),
    ("trunk.listen", "a socket address \"ip:port\""),
    ("trunk.public_addr", "a \"host:port\" string"),
    ("trunk.ca", "a path to a PEM file"),
    ("trunk.cert", "a path to a PEM file"),
    ("trunk.key", "a path to a PEM file"),
    ("trunk.allow_peers", "an array of node ids"),
    (
        "trunk.allow_peers[]",
        "a node id of A-Z, a-z, 0-9, '_', '-', '.'",
    ),
    ("trunk.idle_timeout_secs", "1..=86400"),
    ("trunk.keepalive_ms", "50..=60000"),
];

/// The description of the values `path` takes (`turn.udp[3]` looks up `turn.udp[]`).
fn expected_for(path: &str) -> Option<&'static str> {
    let mut generic = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                generic.push('[');
            }
            ']' => {
                in_index = false;
                generic.push(']');
            }
            _ if in_index => {}
            _ => generic.push(c),
        }
    }
    KEYS.iter().find(|(k, _)| *k == generic).map(|(_, d)| *d)
}
