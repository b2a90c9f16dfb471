//! The error type of this crate.

use std::fmt;
use std::path::PathBuf;

/// Why a configuration could not be loaded.
///
/// Every message names where the problem is (the origin, usually the file name, and the
/// 1-based line when the configuration came from a file), the key path (`turn.relay_port_min`,
/// `auth.users[1].username`), what was expected and what was found. Passwords and secrets are
/// never echoed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },

    /// The text is not valid TOML.
    #[error("{}invalid TOML: {message}", Location(origin, line))]
    Syntax {
        origin: Option<String>,
        line: Option<usize>,
        message: String,
    },

    /// A key that does not exist in the section.
    #[error("{}unknown key {key} (expected one of: {})", Location(origin, line), expected.join(", "))]
    UnknownKey {
        origin: Option<String>,
        line: Option<usize>,
        key: String,
        expected: Vec<String>,
    },

    /// A key without default (only `username` / `password` of `[[auth.users]]`) is missing.
    #[error("{}{key}: required key missing", Location(origin, line))]
    MissingKey {
        origin: Option<String>,
        line: Option<usize>,
        key: String,
    },

    /// A value of the wrong type or out of range.
    #[error("{}{key}: expected {expected}, got {found}", Location(origin, line))]
    Invalid {
        origin: Option<String>,
        line: Option<usize>,
        key: String,
        expected: String,
        found: String,
    },

    /// A semantic rule is violated (e.g. TLS listeners without a certificate).
    #[error("{}{key}: {message}", Location(origin, line))]
    Rule {
        origin: Option<String>,
        line: Option<usize>,
        key: String,
        message: String,
    },

    /// A malformed environment variable override.
    #[error("{variable}: {message}")]
    Env { variable: String, message: String },
}

impl ConfigError {
    /// The key path the error is about (`turn.realm`, `auth.users[0].password`), if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::MissingKey { key, .. }
            | ConfigError::Invalid { key, .. }
            | ConfigError::Rule { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } | ConfigError::Env { .. } => None,
        }
    }

    /// The 1-based line in the file, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Syntax { line, .. }
            | ConfigError::UnknownKey { line, .. }
            | ConfigError::MissingKey { line, .. }
            | ConfigError::Invalid { line, .. }
            | ConfigError::Rule { line, .. } => *line,
            ConfigError::Read { .. } | ConfigError::Env { .. } => None,
        }
    }

    /// Attaches the origin, and the line of the key looked up with `line_of`, to an error
    /// that has none yet (errors from [`crate::Config::validate`]).
    pub(crate) fn locate(mut self, name: &str, line_of: impl Fn(&str) -> Option<usize>) -> Self {
        let found_line = self.key().and_then(&line_of);
        match &mut self {
            ConfigError::Syntax { origin, .. } => {
                origin.get_or_insert_with(|| name.to_owned());
            }
            ConfigError::UnknownKey { origin, line, .. }
            | ConfigError::MissingKey { origin, line, .. }
            | ConfigError::Invalid { origin, line, .. }
            | ConfigError::Rule { origin, line, .. } => {
                origin.get_or_insert_with(|| name.to_owned());
                if line.is_none() {
                    *line = found_line;
                }
            }
            ConfigError::Read { .. } | ConfigError::Env { .. } => {}
        }
        self
    }

    pub(crate) fn rule(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Rule {
            origin: None,
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    pub(crate) fn invalid(
        key: impl Into<String>,
        expected: impl Into<String>,
        found: impl fmt::Display,
    ) -> Self {
        ConfigError::Invalid {
            origin: None,
            line: None,
            key: key.into(),
            expected: expected.into(),
            found: found.to_string(),
        }
    }
}

/// Renders `origin line N: `, `origin: ` or nothing.
struct Location<'a>(&'a Option<String>, &'a Option<usize>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(origin), Some(line)) => write!(f, "{origin} line {line}: "),
            (Some(origin), None) => write!(f, "{origin}: "),
            (None, Some(line)) => write!(f, "line {line}: "),
            (None, None) => Ok(()),
        }
    }
}

/// `io::Error` text without the trailing " (os error N)".
pub(crate) fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}
