//! `iceServers` for a session: the node's own TURN listeners with an ephemeral REST credential
//! bound to the session's identity and no longer-lived than its token.

use std::net::{IpAddr, SocketAddr};

use meridian_config::Config;
use meridian_relay::turn::auth::Credentials;
use serde_json::{json, Value};

pub struct IceServers {
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    tls: Vec<SocketAddr>,
    external_ipv4: Option<IpAddr>,
    credentials: Credentials,
    max_ttl: u64,
}

impl IceServers {
    pub fn from_config(cfg: &Config) -> Self {
        IceServers {
            udp: cfg.turn.udp.clone(),
            tcp: cfg.turn.tcp.clone(),
            tls: cfg.turn.tls.clone(),
            external_ipv4: cfg.turn.external_ipv4.map(IpAddr::V4),
            credentials: Credentials::new([], cfg.auth.rest_secrets.iter().cloned()),
            max_ttl: cfg.auth.credential_ttl_secs,
        }
    }

    /// Uses the bound TURN addresses (port 0 in config becomes the real port).
    pub fn set_bound(&mut self, udp: Vec<SocketAddr>, tcp: Vec<SocketAddr>, tls: Vec<SocketAddr>) {
        self.udp = udp;
        self.tcp = tcp;
        self.tls = tls;
    }

    /// The `iceServers` list for `identity`, valid until `token_exp` at most. `host` is the
    /// HTTP Host the client used, for listeners bound to an unspecified address. Empty when no
    /// REST secret is configured.
    pub fn for_session(
        &self,
        identity: &str,
        now: u64,
        token_exp: u64,
        host: Option<&str>,
    ) -> Value {
        let ttl = token_exp
            .saturating_sub(now)
            .clamp(60, self.max_ttl.max(60));
        let user: String = identity.replace(':', "_");
        let Some((username, credential)) = self.credentials.mint(&user, now, ttl) else {
            return json!([]);
        };
        let host_name = host.map(|h| match h.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_string(),
            _ => h.to_string(),
        });
        // The host clients should use for a listener; None when there is no usable one (a
        // wildcard listener with neither an external address nor a Host header).
        let name = |a: &SocketAddr| -> Option<String> {
            match (a.ip(), self.external_ipv4, &host_name) {
                (IpAddr::V4(ip), Some(ext), _) if ip.is_unspecified() => Some(ext.to_string()),
                (ip, _, Some(h)) if ip.is_unspecified() => Some(h.clone()),
                (ip, _, _) if ip.is_unspecified() => None,
                (IpAddr::V6(v6), _, _) => Some(format!("[{v6}]")),
                (ip, _, _) => Some(ip.to_string()),
            }
        };
        let mut urls: Vec<String> = Vec::new();
        let mut add = |list: &[SocketAddr], scheme: &str, transport: &str| {
            for a in list {
                if let Some(h) = name(a) {
                    urls.push(format!("{scheme}:{h}:{}?transport={transport}", a.port()));
                }
            }
        };
        add(&self.udp, "turn", "udp");
        add(&self.tcp, "turn", "tcp");
        add(&self.tls, "turns", "tcp");
        if urls.is_empty() {
            return json!([]);
        }
        json!([{ "urls": urls, "username": username, "credential": credential }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_is_bound_to_identity_and_token_lifetime() {
        let mut cfg = Config::default();
        cfg.auth.rest_secrets = vec!["s3cret".into()];
        cfg.turn.udp = vec!["127.0.0.1:3478".parse().unwrap()];
        cfg.turn.tcp = vec!["0.0.0.0:3478".parse().unwrap()];
        cfg.turn.tls = vec![];
        let ice = IceServers::from_config(&cfg);
        let v = ice.for_session("ali:ce", 1000, 1600, Some("relay.example:7880"));
        let s = &v[0];
        assert_eq!(s["username"], "1600:ali_ce");
        let expected = meridian_relay::turn::auth::rest_password(b"s3cret", "1600:ali_ce");
        assert_eq!(s["credential"], expected.as_str());
        let urls: Vec<&str> = s["urls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap())
            .collect();
        assert_eq!(
            urls,
            vec![
                "turn:127.0.0.1:3478?transport=udp",
                "turn:relay.example:3478?transport=tcp"
            ]
        );
        // A long-lived token still gets at most the configured credential lifetime.
        let long = ice.for_session("bob", 1000, 10_000_000, None);
        let exp: u64 = long[0]["username"]
            .as_str()
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(exp, 1000 + cfg.auth.credential_ttl_secs);
    }

    #[test]
    fn wildcard_listeners_need_a_name() {
        let mut cfg = Config::default();
        cfg.auth.rest_secrets = vec!["s".into()];
        cfg.turn.udp = vec!["0.0.0.0:3478".parse().unwrap()];
        cfg.turn.tcp = vec!["[::]:3478".parse().unwrap()];
        cfg.turn.tls = vec![];
        let ice = IceServers::from_config(&cfg);
        // No Host header and no external address: nothing usable to advertise.
        assert_eq!(ice.for_session("a", 0, 100, None), json!([]));
        cfg.turn.external_ipv4 = Some("203.0.113.5".parse().unwrap());
        let ice = IceServers::from_config(&cfg);
        let v = ice.for_session("a", 0, 100, None);
        // The IPv4 external address is not advertised for the IPv6 wildcard listener.
        assert_eq!(v[0]["urls"], json!(["turn:203.0.113.5:3478?transport=udp"]));
    }

    #[test]
    fn no_secret_no_servers() {
        let cfg = Config::default();
        let ice = IceServers::from_config(&cfg);
        assert_eq!(ice.for_session("a", 0, 100, None), json!([]));
    }
}
