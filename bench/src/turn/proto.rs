//! Client-side TURN signalling shared by the UDP and stream clients: credentials, request
//! building and response handling (401 / 438 retries), on top of `meridian_relay::stun`.

use std::net::SocketAddr;
use std::time::Instant;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use meridian_relay::stun::{
    attr, long_term_key, Class, LongTermKey, Message, MessageBuilder, MessageType, Method,
    PasswordAlgorithm, TransactionId,
};

/// The channel number every bench client binds (one channel per allocation).
pub const CHANNEL: u16 = 0x4000;
/// IANA protocol number for UDP, for REQUESTED-TRANSPORT.
const PROTO_UDP: u8 = 17;

/// How clients authenticate.
#[derive(Clone, Debug)]
pub enum Creds {
    /// No credentials (servers that allocate without authentication).
    None,
    /// A static long-term user, shared by every client.
    LongTerm { user: String, pass: String },
    /// TURN REST API ephemeral credentials: username "expiry:benchN", password
    /// base64(HMAC-SHA1(secret, username)).
    Rest { secret: String, ttl_secs: u64 },
}

/// REST API credential for `name` valid until `expiry` (Unix seconds).
pub fn rest_credential(secret: &str, name: &str, expiry: u64) -> (String, String) {
    let user = format!("{expiry}:{name}");
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(user.as_bytes());
    let pass = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (user, pass)
}

impl Creds {
    /// (username, password) for client `idx`, or None without credentials.
    pub fn for_client(&self, idx: u32) -> Option<(String, String)> {
        match self {
            Creds::None => None,
            Creds::LongTerm { user, pass } => Some((user.clone(), pass.clone())),
            Creds::Rest { secret, ttl_secs } => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                Some(rest_credential(
                    secret,
                    &format!("bench{idx}"),
                    now + ttl_secs,
                ))
            }
        }
    }
}

/// Which request a client has in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Alloc,
    Bind,
    Refresh,
    Dealloc,
    /// The floor forwarder's stand-in for allocation (an empty frame).
    Hello,
}

/// Long-term credential state learned from the server's 401.
#[derive(Clone, Debug)]
pub struct Auth {
    pub user: String,
    pub pass: String,
    pub realm: String,
    pub nonce: String,
    pub key: Option<LongTermKey>,
}

/// One outstanding transaction.
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    pub kind: Kind,
    pub tid: TransactionId,
    pub sent_at: Instant,
    pub tries: u8,
}

/// Signalling state of one client (transport-agnostic).
#[derive(Clone, Debug, Default)]
pub struct Signal {
    pub auth: Option<Auth>,
    pub pending: Option<Pending>,
    pub relayed: Option<SocketAddr>,
    pub lifetime: u32,
    pub auth_retries: u8,
    pub nonce_retries: u8,
}

/// What a response means for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request in flight succeeded.
    Done(Kind),
    /// Credentials or nonce were updated: send the same kind of request again (new tid).
    Retry(Kind),
    /// The request failed for good.
    Failed(Kind, String),
}

impl Signal {
    pub fn new(creds: Option<(String, String)>) -> Self {
        Signal {
            auth: creds.map(|(user, pass)| Auth {
                user,
                pass,
                realm: String::new(),
                nonce: String::new(),
                key: None,
            }),
            ..Default::default()
        }
    }

    /// Builds a request of `kind` with a fresh transaction id and records it as pending.
    pub fn request(&mut self, kind: Kind, peer: SocketAddr, now: Instant) -> Vec<u8> {
        let tid = TransactionId::random();
        self.pending = Some(Pending {
            kind,
            tid,
            sent_at: now,
            tries: 1,
        });
        self.encode(kind, tid, peer)
    }

    /// Re-encodes the pending request (same transaction id) for a retransmission.
    pub fn retransmit(&mut self, peer: SocketAddr, now: Instant) -> Option<Vec<u8>> {
        let p = self.pending.as_mut()?;
        p.tries += 1;
        p.sent_at = now;
        let (kind, tid) = (p.kind, p.tid);
        Some(self.encode(kind, tid, peer))
    }

    fn encode(&self, kind: Kind, tid: TransactionId, peer: SocketAddr) -> Vec<u8> {
        let method = match kind {
            Kind::Alloc => Method::ALLOCATE,
            Kind::Bind => Method::CHANNEL_BIND,
            Kind::Refresh | Kind::Dealloc => Method::REFRESH,
            Kind::Hello => return vec![0x40, 0, 0, 0],
        };
        let mut b = MessageBuilder::new(MessageType::new(method, Class::Request), tid);
        match kind {
            Kind::Alloc => {
                b.u32(attr::REQUESTED_TRANSPORT, (PROTO_UDP as u32) << 24);
            }
            Kind::Bind => {
                b.channel_number(CHANNEL);
                b.xor_address(attr::XOR_PEER_ADDRESS, peer);
            }
            Kind::Refresh => {
                if self.lifetime > 0 {
                    b.u32(attr::LIFETIME, self.lifetime);
                }
            }
            Kind::Dealloc => {
                b.u32(attr::LIFETIME, 0);
            }
            Kind::Hello => unreachable!(),
        }
        if let Some(a) = &self.auth {
            if let Some(key) = &a.key {
                b.text(attr::USERNAME, &a.user);
                b.text(attr::REALM, &a.realm);
                b.text(attr::NONCE, &a.nonce);
                b.integrity_sha1(key.as_bytes());
            }
        }
        b.finish_with_fingerprint()
    }

    /// Handles a STUN response. Returns None when it does not answer the pending request.
    pub fn on_response(&mut self, m: &Message<'_>) -> Option<Outcome> {
        let p = self.pending?;
        if m.transaction_id() != p.tid {
            return None;
        }
        self.pending = None;
        let kind = p.kind;
        let t = m.message_type();
        match t.class {
            Class::Success => {
                if kind == Kind::Alloc {
                    self.relayed = m
                        .xor_address(attr::XOR_RELAYED_ADDRESS)
                        .and_then(|r| r.ok());
                    self.lifetime = m
                        .get(attr::LIFETIME)
                        .and_then(|v| attr::decode_u32(attr::LIFETIME, v).ok())
                        .unwrap_or(600);
                }
                self.nonce_retries = 0;
                Some(Outcome::Done(kind))
            }
            Class::Error => {
                let (code, reason) = m
                    .get(attr::ERROR_CODE)
                    .and_then(|v| attr::decode_error_code(v).ok())
                    .map(|(c, r)| (c, r.to_string()))
                    .unwrap_or((0, "no ERROR-CODE".into()));
                let realm = m.text(attr::REALM).and_then(|r| r.ok()).map(str::to_owned);
                let nonce = m.text(attr::NONCE).and_then(|r| r.ok()).map(str::to_owned);
                let fail = |why: String| Some(Outcome::Failed(kind, why));
                match code {
                    401 => {
                        let Some(a) = self.auth.as_mut() else {
                            return fail("401 Unauthorized and no credentials given".into());
                        };
                        let (Some(realm), Some(nonce)) = (realm, nonce) else {
                            return fail("401 without REALM/NONCE".into());
                        };
                        self.auth_retries += 1;
                        if self.auth_retries > 2 {
                            return fail(format!(
                                "401 Unauthorized with credentials for user {:?} (wrong password or secret?)",
                                a.user
                            ));
                        }
                        a.key = Some(long_term_key(
                            PasswordAlgorithm::Md5,
                            &a.user,
                            &realm,
                            &a.pass,
                        ));
                        a.realm = realm;
                        a.nonce = nonce;
                        Some(Outcome::Retry(kind))
                    }
                    438 => {
                        let (Some(a), Some(nonce)) = (self.auth.as_mut(), nonce) else {
                            return fail("438 Stale Nonce without NONCE".into());
                        };
                        self.nonce_retries += 1;
                        if self.nonce_retries > 3 {
                            return fail("438 Stale Nonce repeatedly".into());
                        }
                        a.nonce = nonce;
                        if let Some(r) = realm {
                            if r != a.realm {
                                a.key = Some(long_term_key(
                                    PasswordAlgorithm::Md5,
                                    &a.user,
                                    &r,
                                    &a.pass,
                                ));
                                a.realm = r;
                            }
                        }
                        Some(Outcome::Retry(kind))
                    }
                    // Deallocating an allocation the server already dropped is fine.
                    437 if kind == Kind::Dealloc => Some(Outcome::Done(kind)),
                    _ => fail(format!("{:?} error {code} {reason}", method_name(kind))),
                }
            }
            _ => {
                self.pending = Some(p);
                None
            }
        }
    }
}

fn method_name(k: Kind) -> &'static str {
    match k {
        Kind::Alloc => "Allocate",
        Kind::Bind => "ChannelBind",
        Kind::Refresh => "Refresh",
        Kind::Dealloc => "Refresh(0)",
        Kind::Hello => "Hello",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_response(tid: TransactionId, code: u16, nonce: &str) -> Vec<u8> {
        let mut b = MessageBuilder::new(MessageType::new(Method::ALLOCATE, Class::Error), tid);
        b.error_code(code, "x");
        b.text(attr::REALM, "r");
        b.text(attr::NONCE, nonce);
        b.finish()
    }

    #[test]
    fn rest_credential_matches_known_value() {
        // HMAC-SHA1("secret", "1700000000:bench7"), base64; computed independently with
        // `printf %s 1700000000:bench7 | openssl dgst -sha1 -hmac secret -binary | base64`.
        let (u, p) = rest_credential("secret", "bench7", 1_700_000_000);
        assert_eq!(u, "1700000000:bench7");
        assert_eq!(p, "17WrTxZ+ZP2evAmv/uZFrBAh5+o=");
        let (_, p3) = rest_credential("other", "bench7", 1_700_000_000);
        assert_ne!(p, p3);
    }

    #[test]
    fn allocate_401_then_438_then_success() {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut s = Signal::new(Some(("u".into(), "p".into())));
        let now = Instant::now();
        let req = s.request(Kind::Alloc, peer, now);
        let m = Message::parse(&req).unwrap();
        assert!(!m.has_integrity());
        let tid = s.pending.unwrap().tid;
        // A response to another transaction is ignored.
        let other = error_response(TransactionId([0; 12]), 401, "n0");
        assert_eq!(s.on_response(&Message::parse(&other).unwrap()), None);
        let r = error_response(tid, 401, "n1");
        assert_eq!(
            s.on_response(&Message::parse(&r).unwrap()),
            Some(Outcome::Retry(Kind::Alloc))
        );
        let req = s.request(Kind::Alloc, peer, now);
        let m = Message::parse(&req).unwrap();
        let key = long_term_key(PasswordAlgorithm::Md5, "u", "r", "p");
        assert!(m.verify_integrity(key.as_bytes()));
        assert_eq!(m.text(attr::NONCE).unwrap().unwrap(), "n1");
        let tid = s.pending.unwrap().tid;
        let r = error_response(tid, 438, "n2");
        assert_eq!(
            s.on_response(&Message::parse(&r).unwrap()),
            Some(Outcome::Retry(Kind::Alloc))
        );
        let req = s.request(Kind::Alloc, peer, now);
        assert_eq!(
            Message::parse(&req)
                .unwrap()
                .text(attr::NONCE)
                .unwrap()
                .unwrap(),
            "n2"
        );
        let tid = s.pending.unwrap().tid;
        let mut b = MessageBuilder::new(MessageType::new(Method::ALLOCATE, Class::Success), tid);
        b.xor_address(
            attr::XOR_RELAYED_ADDRESS,
            "127.0.0.1:50000".parse().unwrap(),
        );
        b.u32(attr::LIFETIME, 300);
        let ok = b.finish();
        assert_eq!(
            s.on_response(&Message::parse(&ok).unwrap()),
            Some(Outcome::Done(Kind::Alloc))
        );
        assert_eq!(s.lifetime, 300);
        assert_eq!(s.relayed, Some("127.0.0.1:50000".parse().unwrap()));
        // ChannelBind carries the channel and the peer.
        let req = s.request(Kind::Bind, peer, now);
        let m = Message::parse(&req).unwrap();
        assert_eq!(
            attr::decode_channel_number(m.get(attr::CHANNEL_NUMBER).unwrap()),
            Ok(CHANNEL)
        );
        assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS).unwrap(), Ok(peer));
    }

    #[test]
    fn repeated_401_fails_with_a_clear_reason() {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut s = Signal::new(Some(("u".into(), "p".into())));
        let mut last = None;
        for _ in 0..3 {
            s.request(Kind::Alloc, peer, Instant::now());
            let r = error_response(s.pending.unwrap().tid, 401, "n");
            last = s.on_response(&Message::parse(&r).unwrap());
        }
        match last {
            Some(Outcome::Failed(Kind::Alloc, why)) => assert!(why.contains("401"), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut anon = Signal::new(None);
        anon.request(Kind::Alloc, peer, Instant::now());
        let r = error_response(anon.pending.unwrap().tid, 401, "n");
        assert!(matches!(
            anon.on_response(&Message::parse(&r).unwrap()),
            Some(Outcome::Failed(..))
        ));
    }
}
