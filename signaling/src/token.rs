//! Access tokens: JWT signed with HS256 by an API key's secret.
//!
//! The header's `kid` and the `iss` claim name the API key, so a node can accept several keys
//! at once (rotation). Claims: `sub` (identity), `room`, `role` (`device` publishes and
//! receives controls; `player` subscribes and sends controls; `viewer` only subscribes),
//! `iat`, `nbf`, `exp`. Verification takes the current unix time as an argument: no clock is
//! read here, so every rule is unit-tested with fixed times.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest identity, room name and API key accepted.
pub const MAX_NAME: usize = 128;
/// Longest token lifetime that can be minted: 30 days.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

/// What a client may do in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A game machine, camera or streamer: publishes media, receives controls.
    Device,
    /// Watches a device and sends it controls.
    Player,
    /// Watches only.
    Viewer,
}

impl Role {
    pub fn can_publish(self) -> bool {
        self == Role::Device
    }

    pub fn can_subscribe(self) -> bool {
        matches!(self, Role::Player | Role::Viewer)
    }

    pub fn can_send_controls(self) -> bool {
        self == Role::Player
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Player => "player",
            Role::Viewer => "viewer",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "device" => Ok(Role::Device),
            "player" => Ok(Role::Player),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!(
                "unknown role {other:?}: expected device, player or viewer"
            )),
        }
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The API key that signed it.
    pub iss: String,
    /// The client's identity.
    pub sub: String,
    pub room: String,
    pub role: Role,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
}

/// Why a token was not minted or not accepted. The messages are safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not accepted (expected HS256)")]
    Algorithm(String),
    #[error("token names no API key (kid)")]
    NoKey,
    #[error("token is signed by unknown API key {0:?}")]
    UnknownKey(String),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token claims are invalid: {0}")]
    Claims(String),
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("token is not valid before {nbf} (now {now})")]
    NotYetValid { nbf: u64, now: u64 },
    #[error("token is for room {token:?}, not {requested:?}")]
    WrongRoom { token: String, requested: String },
    #[error("{field} {value:?} is invalid: {why}")]
    BadInput {
        field: &'static str,
        value: String,
        why: &'static str,
    },
}

fn check_name(field: &'static str, value: &str) -> Result<(), TokenError> {
    let bad = |why| {
        Err(TokenError::BadInput {
            field,
            value: value.chars().take(MAX_NAME).collect(),
            why,
        })
    };
    if value.is_empty() {
        return bad("must not be empty");
    }
    if value.len() > MAX_NAME {
        return bad("is longer than 128 bytes");
    }
    if value.chars().any(|c| c.is_control()) {
        return bad("contains control characters");
    }
    Ok(())
}

/// Room names: 1..=128 of `A-Z a-z 0-9 _ - .` (they appear in URLs and metric-free logs).
pub fn check_room(room: &str) -> Result<(), TokenError> {
    check_name("room", room)?;
    if !room
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(TokenError::BadInput {
            field: "room",
            value: room.into(),
            why: "may contain only A-Z, a-z, 0-9, '_', '-' and '.'",
        });
    }
    Ok(())
}

/// Mints tokens with one API key.
pub struct TokenIssuer {
    key: String,
    encoding: EncodingKey,
}

impl TokenIssuer {
    pub fn new(key: &str, secret: &[u8]) -> Result<TokenIssuer, TokenError> {
        check_name("API key", key)?;
        if secret.is_empty() {
            return Err(TokenError::BadInput {
                field: "API secret",
                value: String::new(),
                why: "must not be empty",
            });
        }
        Ok(TokenIssuer {
            key: key.to_string(),
            encoding: EncodingKey::from_secret(secret),
        })
    }

    /// A token for `identity` in `room` as `role`, valid from `now_unix` for `ttl_secs`.
    pub fn mint(
        &self,
        identity: &str,
        room: &str,
        role: Role,
        now_unix: u64,
        ttl_secs: u64,
    ) -> Result<String, TokenError> {
        check_name("identity", identity)?;
        check_room(room)?;
        if ttl_secs == 0 || ttl_secs > MAX_TTL_SECS {
            return Err(TokenError::BadInput {
                field: "ttl",
                value: ttl_secs.to_string(),
                why: "must be 1..=2592000 seconds (30 days)",
            });
        }
        let claims = Claims {
            iss: self.key.clone(),
            sub: identity.to_string(),
            room: room.to_string(),
            role,
            iat: now_unix,
            nbf: now_unix,
            exp: now_unix + ttl_secs,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.key.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| TokenError::Malformed(e.to_string()))
    }
}

/// Checks tokens against every configured API key.
#[derive(Default)]
pub struct TokenVerifier {
    keys: HashMap<String, DecodingKey>,
}

impl TokenVerifier {
    pub fn new<'a>(keys: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> TokenVerifier {
        TokenVerifier {
            keys: keys
                .into_iter()
                .map(|(k, s)| (k.to_string(), DecodingKey::from_secret(s)))
                .collect(),
        }
    }

    /// The claims of a valid token at `now_unix`; with `room`, the token must be for it.
    pub fn verify(
        &self,
        token: &str,
        now_unix: u64,
        room: Option<&str>,
    ) -> Result<Claims, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.ok_or(TokenError::NoKey)?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.chars().take(MAX_NAME).collect()))?;
        // Time is checked below against the caller's clock, not the system's.
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
            jsonwebtoken::errors::ErrorKind::Json(_)
            | jsonwebtoken::errors::ErrorKind::InvalidClaimFormat(_)
            | jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_) => {
                TokenError::Claims(e.to_string())
            }
            _ => TokenError::Malformed(e.to_string()),
        })?;
        let c = data.claims;
        if c.iss != kid {
            return Err(TokenError::Claims(format!(
                "iss {:?} does not match the signing key {kid:?}",
                c.iss
            )));
        }
        check_name("identity", &c.sub).map_err(|e| TokenError::Claims(e.to_string()))?;
        check_room(&c.room).map_err(|e| TokenError::Claims(e.to_string()))?;
        if now_unix >= c.exp {
            return Err(TokenError::Expired {
                exp: c.exp,
                now: now_unix,
            });
        }
        if now_unix < c.nbf {
            return Err(TokenError::NotYetValid {
                nbf: c.nbf,
                now: now_unix,
            });
        }
        if let Some(r) = room {
            if r != c.room {
                return Err(TokenError::WrongRoom {
                    token: c.room,
                    requested: r.to_string(),
                });
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    /// Base64url without padding, for building hostile tokens by hand.
    fn encode_url(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn issuer() -> TokenIssuer {
        TokenIssuer::new("key-a", b"secret-a").unwrap()
    }

    fn verifier() -> TokenVerifier {
        TokenVerifier::new([("key-a", &b"secret-a"[..]), ("key-b", &b"secret-b"[..])])
    }

    #[test]
    fn minted_tokens_verify_with_their_claims() {
        let t = issuer()
            .mint("alice", "arcade-1", Role::Player, NOW, 600)
            .unwrap();
        let c = verifier().verify(&t, NOW + 1, Some("arcade-1")).unwrap();
        assert_eq!(
            c,
            Claims {
                iss: "key-a".into(),
                sub: "alice".into(),
                room: "arcade-1".into(),
                role: Role::Player,
                iat: NOW,
                nbf: NOW,
                exp: NOW + 600
            }
        );
        assert!(c.role.can_send_controls() && c.role.can_subscribe() && !c.role.can_publish());
        // Without a room requirement, any room is fine.
        assert!(verifier().verify(&t, NOW, None).is_ok());
    }

    #[test]
    fn a_second_key_verifies_during_rotation() {
        let t = TokenIssuer::new("key-b", b"secret-b")
            .unwrap()
            .mint("dev", "r", Role::Device, NOW, 60)
            .unwrap();
        assert_eq!(verifier().verify(&t, NOW, None).unwrap().iss, "key-b");
    }

    #[test]
    fn expired_early_forged_wrong_room_and_unknown_key_are_refused() {
        let t = issuer()
            .mint("alice", "arcade-1", Role::Viewer, NOW, 600)
            .unwrap();
        assert_eq!(
            verifier().verify(&t, NOW + 600, None),
            Err(TokenError::Expired {
                exp: NOW + 600,
                now: NOW + 600
            })
        );
        assert_eq!(
            verifier().verify(&t, NOW - 1, None),
            Err(TokenError::NotYetValid {
                nbf: NOW,
                now: NOW - 1
            })
        );
        assert_eq!(
            verifier().verify(&t, NOW, Some("arcade-2")),
            Err(TokenError::WrongRoom {
                token: "arcade-1".into(),
                requested: "arcade-2".into()
            })
        );
        let forged = TokenIssuer::new("key-a", b"not-the-secret")
            .unwrap()
            .mint("alice", "arcade-1", Role::Device, NOW, 600)
            .unwrap();
        assert_eq!(
            verifier().verify(&forged, NOW, None),
            Err(TokenError::BadSignature)
        );
        let stranger = TokenIssuer::new("key-z", b"x")
            .unwrap()
            .mint("alice", "arcade-1", Role::Device, NOW, 600)
            .unwrap();
        assert_eq!(
            verifier().verify(&stranger, NOW, None),
            Err(TokenError::UnknownKey("key-z".into()))
        );
    }

    #[test]
    fn tampered_claims_break_the_signature() {
        let t = issuer()
            .mint("alice", "arcade-1", Role::Viewer, NOW, 600)
            .unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        // Re-encode the payload with role "device": the signature no longer matches.
        let payload = format!(
            r#"{{"iss":"key-a","sub":"alice","room":"arcade-1","role":"device","iat":{NOW},"nbf":{NOW},"exp":{}}}"#,
            NOW + 600
        );
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            encode_url(payload.as_bytes()),
            parts[2]
        );
        assert_eq!(
            verifier().verify(&tampered, NOW, None),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn garbage_and_other_algorithms_get_clear_errors() {
        for bad in ["", "abc", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30.x"] {
            let e = verifier().verify(bad, NOW, None).unwrap_err();
            assert!(
                matches!(e, TokenError::Malformed(_) | TokenError::NoKey),
                "{bad:?}: {e:?}"
            );
        }
        // alg "none" with a kid: refused before any key is used.
        let none = format!(
            "{}.{}.",
            encode_url(br#"{"alg":"none","kid":"key-a"}"#),
            encode_url(b"{}")
        );
        assert!(matches!(
            verifier().verify(&none, NOW, None),
            Err(TokenError::Malformed(_)) | Err(TokenError::Algorithm(_))
        ));
    }

    #[test]
    fn bad_mint_input_is_refused() {
        let i = issuer();
        assert!(matches!(
            i.mint("", "r", Role::Player, NOW, 60),
            Err(TokenError::BadInput {
                field: "identity",
                ..
            })
        ));
        assert!(matches!(
            i.mint("a", "has space", Role::Player, NOW, 60),
            Err(TokenError::BadInput { field: "room", .. })
        ));
        assert!(matches!(
            i.mint("a", &"r".repeat(129), Role::Player, NOW, 60),
            Err(TokenError::BadInput { field: "room", .. })
        ));
        assert!(matches!(
            i.mint("a", "r", Role::Player, NOW, 0),
            Err(TokenError::BadInput { field: "ttl", .. })
        ));
        assert!(matches!(
            i.mint("a", "r", Role::Player, NOW, MAX_TTL_SECS + 1),
            Err(TokenError::BadInput { field: "ttl", .. })
        ));
        assert!(TokenIssuer::new("k", b"").is_err());
        assert_eq!("viewer".parse::<Role>(), Ok(Role::Viewer));
        assert!("admin".parse::<Role>().is_err());
    }
}
