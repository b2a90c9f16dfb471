//! Environment variable overrides, so that secrets need not be written in the file.

use crate::{Config, ConfigError, StaticUser};

/// Comma-separated REST secrets; replaces `auth.rest_secrets` when set and non-empty.
pub const ENV_REST_SECRETS: &str = "MERIDIAN_TURN_REST_SECRETS";
/// Comma-separated `user:password` pairs; appended to `auth.users`.
pub const ENV_USERS: &str = "MERIDIAN_TURN_USERS";
/// Comma-separated `key:secret` pairs; replaces `signaling.api_keys` when set and non-empty.
pub const ENV_API_KEYS: &str = "MERIDIAN_API_KEYS";

pub(crate) fn apply_env(
    config: &mut Config,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(value) = lookup(ENV_REST_SECRETS) {
        let secrets: Vec<String> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if !secrets.is_empty() {
            config.auth.rest_secrets = secrets;
        }
    }
    if let Some(value) = lookup(ENV_USERS) {
        let mut users = Vec::new();
        for (i, entry) in value.split(',').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            // Never echo the entry: it holds a password (or is one, when the user is missing).
            let malformed = |what: &str| ConfigError::Env {
                variable: ENV_USERS.to_owned(),
                message: format!(
                    "entry {} (1-based): expected user:password, got {what}",
                    i + 1
                ),
            };
            let (username, password) = entry.split_once(':').ok_or_else(|| malformed("no ':'"))?;
            if username.is_empty() {
                return Err(malformed("an empty user"));
            }
            if password.is_empty() {
                return Err(malformed("an empty password"));
            }
            users.push(StaticUser {
                username: username.to_owned(),
                password: password.to_owned(),
            });
        }
        config.auth.users.extend(users);
    }
    if let Some(value) = lookup(ENV_API_KEYS) {
        let mut keys = Vec::new();
        for (i, entry) in value.split(',').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            // Never echo the entry: it holds a secret.
            let malformed = |what: &str| ConfigError::Env {
                variable: ENV_API_KEYS.to_owned(),
                message: format!("entry {} (1-based): expected key:secret, got {what}", i + 1),
            };
            let (key, secret) = entry.split_once(':').ok_or_else(|| malformed("no ':'"))?;
            if key.is_empty() {
                return Err(malformed("an empty key"));
            }
            if secret.is_empty() {
                return Err(malformed("an empty secret"));
            }
            keys.push(crate::ApiKey {
                key: key.to_owned(),
                secret: secret.to_owned(),
            });
        }
        if !keys.is_empty() {
            config.signaling.api_keys = keys;
        }
    }
    Ok(())
}
