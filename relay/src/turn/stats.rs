//! Counters kept by the TURN core as plain integers; the driver exports them.

use super::policy::Refusal;

/// Request outcomes by method and response code; a small, bounded table.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// (method name, response code or 0 for an indication) -> count.
    pub requests: Vec<((&'static str, u16), u64)>,
    /// Peer refusals by reason (index = position in `Refusal::ALL`).
    pub refused_peers: [u64; Refusal::ALL.len()],
    /// Authentication failures by reason.
    pub auth_failures: [u64; AuthFailure::ALL.len()],
    /// Quota hits by quota.
    pub quota_hits: [u64; QuotaHit::ALL.len()],
    /// Messages dropped without an answer, by reason.
    pub dropped: [u64; Drop::ALL.len()],
    pub packets_to_peer: u64,
    pub bytes_to_peer: u64,
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
    pub channel_data_to_peer: u64,
    pub channel_data_to_client: u64,
}

macro_rules! labelled {
    ($name:ident { $($variant:ident => $label:literal),* $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),* }
        impl $name {
            pub const ALL: [$name; [$($label),*].len()] = [$($name::$variant),*];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $label),* }
            }
        }
    };
}

labelled!(AuthFailure {
    Missing => "missing_credentials",
    UnknownUser => "unknown_user",
    Expired => "expired_credential",
    BadIntegrity => "bad_integrity",
    StaleNonce => "stale_nonce",
    WrongUser => "wrong_user",
    BadAlgorithm => "bad_password_algorithm",
});

labelled!(QuotaHit {
    AllocationsTotal => "allocations_total",
    AllocationsPerUser => "allocations_per_user",
    Permissions => "permissions",
    Channels => "channels",
    Bandwidth => "bandwidth",
    RelayPorts => "relay_ports",
});

labelled!(Drop {
    Malformed => "malformed",
    RateLimited => "rate_limited",
    NoAllocation => "no_allocation",
    NoPermission => "no_permission",
    NoChannel => "no_channel",
    UnexpectedClass => "unexpected_class",
    BadIndication => "bad_indication",
});

impl Stats {
    pub fn request(&mut self, method: &'static str, code: u16) {
        if let Some((_, n)) = self.requests.iter_mut().find(|(k, _)| *k == (method, code)) {
            *n += 1;
        } else {
            self.requests.push(((method, code), 1));
        }
    }

    pub fn refused(&mut self, r: Refusal) {
        self.refused_peers[Refusal::ALL.iter().position(|x| *x == r).unwrap_or(0)] += 1;
    }

    pub fn auth_failed(&mut self, f: AuthFailure) {
        self.auth_failures[f as usize] += 1;
    }

    pub fn quota(&mut self, q: QuotaHit) {
        self.quota_hits[q as usize] += 1;
    }

    pub fn drop(&mut self, d: Drop) {
        self.dropped[d as usize] += 1;
    }

    pub fn dropped(&self, d: Drop) -> u64 {
        self.dropped[d as usize]
    }

    pub fn requests_with(&self, method: &str, code: u16) -> u64 {
        self.requests
            .iter()
            .find(|((m, c), _)| *m == method && *c == code)
            .map_or(0, |(_, n)| *n)
    }
}
