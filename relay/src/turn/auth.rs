//! Long-term credentials: static users and TURN REST API ephemeral credentials, plus
//! stateless nonces (RFC 8489 §9.2).

use std::collections::HashMap;
use std::net::IpAddr;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// The "nonce cookie" that tells RFC 8489 clients the server supports the security features
/// encoded after it (RFC 8489 §9.2.1).
pub const NONCE_COOKIE: &str = "obMatJos2";
/// Security feature set: bit 0 ("password algorithms") set, encoded as 4 base64 characters
/// of the 24-bit field (RFC 8489 §18.8: the bit numbering starts at the most significant bit).
const FEATURES: &str = "gAAA";

/// Who may allocate: static long-term users and REST API shared secrets.
#[derive(Default)]
pub struct Credentials {
    users: HashMap<String, String>,
    /// REST secrets; the first signs new credentials, all are accepted.
    rest_secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("users", &self.users.len())
            .field("rest_secrets", &self.rest_secrets.len())
            .finish()
    }
}

/// Why a username has no usable password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    /// Not a static user, and not a REST username (or no REST secrets are configured).
    UnknownUser,
    /// A REST username whose expiry timestamp has passed.
    Expired,
}

impl Credentials {
    pub fn new(
        users: impl IntoIterator<Item = (String, String)>,
        rest_secrets: impl IntoIterator<Item = String>,
    ) -> Self {
        Credentials {
            users: users.into_iter().collect(),
            rest_secrets: rest_secrets.into_iter().map(String::into_bytes).collect(),
        }
    }

    /// The passwords `username` may be using at unix time `now_unix`: the static password,
    /// or one REST password per secret. Up to a handful of candidates.
    pub fn passwords(&self, username: &str, now_unix: u64) -> Result<Vec<String>, CredentialError> {
        if let Some(p) = self.users.get(username) {
            return Ok(vec![p.clone()]);
        }
        if self.rest_secrets.is_empty() {
            return Err(CredentialError::UnknownUser);
        }
        let expiry = rest_expiry(username).ok_or(CredentialError::UnknownUser)?;
        if expiry <= now_unix {
            return Err(CredentialError::Expired);
        }
        Ok(self
            .rest_secrets
            .iter()
            .map(|s| rest_password(s, username))
            .collect())
    }

    /// Mints a REST credential valid for `ttl_secs` from `now_unix` with the first secret.
    pub fn mint(&self, user: &str, now_unix: u64, ttl_secs: u64) -> Option<(String, String)> {
        let secret = self.rest_secrets.first()?;
        let username = format!("{}:{}", now_unix + ttl_secs, user);
        let password = rest_password(secret, &username);
        Some((username, password))
    }
}

/// The expiry of a REST username: "<unix expiry>" or "<unix expiry>:<user>".
fn rest_expiry(username: &str) -> Option<u64> {
    let ts = username.split(':').next()?;
    if ts.is_empty() || ts.len() > 20 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ts.parse().ok()
}

/// base64(HMAC-SHA1(secret, username)), the TURN REST API password.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Issues and checks stateless nonces: `obMatJos2` + features + timestamp + a MAC binding the
/// timestamp to the client's IP address. Any node holding the same secret can check them.
pub struct NonceIssuer {
    secret: [u8; 32],
    lifetime_secs: u64,
}

impl std::fmt::Debug for NonceIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceIssuer { secret: <redacted> }")
    }
}

/// What a presented nonce turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Well-formed and ours, but older than the lifetime.
    Stale,
    /// Not a nonce we issued (or issued to another address).
    Invalid,
}

impl NonceIssuer {
    pub fn new(secret: [u8; 32], lifetime_secs: u64) -> Self {
        NonceIssuer {
            secret,
            lifetime_secs,
        }
    }

    fn mac(&self, ts: u64, ip: IpAddr) -> [u8; 12] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(&ts.to_be_bytes());
        match ip {
            IpAddr::V4(a) => mac.update(&a.octets()),
            IpAddr::V6(a) => mac.update(&a.octets()),
        }
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 12];
        out.copy_from_slice(&full[..12]);
        out
    }

    pub fn issue(&self, ip: IpAddr, now_unix: u64) -> String {
        let mut body = [0u8; 20];
        body[..8].copy_from_slice(&now_unix.to_be_bytes());
        body[8..].copy_from_slice(&self.mac(now_unix, ip));
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body);
        format!("{NONCE_COOKIE}{FEATURES}{enc}")
    }

    pub fn check(&self, nonce: &str, ip: IpAddr, now_unix: u64) -> NonceCheck {
        let Some(rest) = nonce
            .strip_prefix(NONCE_COOKIE)
            .and_then(|r| r.strip_prefix(FEATURES))
        else {
            return NonceCheck::Invalid;
        };
        let Ok(body) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(rest) else {
            return NonceCheck::Invalid;
        };
        if body.len() != 20 {
            return NonceCheck::Invalid;
        }
        let ts = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
        let expected = self.mac(ts, ip);
        // Constant-time enough for a 12-byte MAC: compare all bytes without early exit.
        let diff = expected
            .iter()
            .zip(&body[8..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return NonceCheck::Invalid;
        }
        if now_unix.saturating_sub(ts) > self.lifetime_secs || ts > now_unix + 5 {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid
    }

    /// Whether a nonce advertises the password-algorithms feature (all of ours do).
    pub fn advertises_algorithms(nonce: &str) -> bool {
        nonce.starts_with(NONCE_COOKIE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_rest_passwords() {
        let c = Credentials::new(
            [("alice".to_string(), "pw".to_string())],
            ["s1".to_string(), "s2".to_string()],
        );
        assert_eq!(c.passwords("alice", 0).unwrap(), vec!["pw".to_string()]);
        let got = c.passwords("2000:bob", 1000).unwrap();
        assert_eq!(
            got,
            vec![
                rest_password(b"s1", "2000:bob"),
                rest_password(b"s2", "2000:bob")
            ]
        );
        assert_eq!(c.passwords("999:bob", 1000), Err(CredentialError::Expired));
        assert_eq!(c.passwords("bob", 1000), Err(CredentialError::UnknownUser));
        assert_eq!(
            c.passwords("12x:bob", 1000),
            Err(CredentialError::UnknownUser)
        );
        let (u, p) = c.mint("carol", 1000, 60).unwrap();
        assert_eq!(u, "1060:carol");
        assert_eq!(c.passwords(&u, 1000).unwrap()[0], p);
    }

    #[test]
    fn rest_password_matches_known_value() {
        // base64(HMAC-SHA1("secret", "1234:user")), computed independently with
        // `printf %s 1234:user | openssl dgst -sha1 -hmac secret -binary | base64`.
        assert_eq!(
            rest_password(b"secret", "1234:user"),
            "TOULffkZMvfceQnPB56NGjcf9ls="
        );
    }

    #[test]
    fn nonces_are_bound_to_ip_and_time() {
        let n = NonceIssuer::new([5; 32], 600);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let nonce = n.issue(ip, 10_000);
        assert!(NonceIssuer::advertises_algorithms(&nonce));
        assert_eq!(n.check(&nonce, ip, 10_100), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, ip, 10_601), NonceCheck::Stale);
        assert_eq!(
            n.check(&nonce, "192.0.2.2".parse().unwrap(), 10_100),
            NonceCheck::Invalid
        );
        assert_eq!(
            n.check("obMatJos2gAAAgarbage", ip, 10_100),
            NonceCheck::Invalid
        );
        assert_eq!(n.check("", ip, 10_100), NonceCheck::Invalid);
        let other = NonceIssuer::new([6; 32], 600);
        assert_eq!(other.check(&nonce, ip, 10_100), NonceCheck::Invalid);
    }
}
