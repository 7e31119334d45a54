//! API keys that never show up in `Debug`, `Display`, errors or logs.

use std::fmt;

use http::HeaderValue;

/// A provider API key.
///
/// It prints as `ApiKey(****)` in `Debug` and `Display`, and the header value built from it is
/// marked sensitive, so HTTP tracing layers (tower-http's `Trace`, hyper's own logs) redact it
/// too. Errors never carry request headers, so the key cannot leak through them either.
///
/// ```
/// use tower_llm_providers::ApiKey;
///
/// let key = ApiKey::new("sk-secret-123");
/// assert_eq!(format!("{key:?}"), "ApiKey(****)");
/// assert_eq!(key.to_string(), "ApiKey(****)");
/// assert_eq!(key.expose(), "sk-secret-123");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Box<str>);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into().into_boxed_str())
    }

    /// Reads the first of `vars` that is set and not empty.
    pub fn from_env_vars(vars: &[&str]) -> Option<Self> {
        vars.iter().find_map(|var| {
            std::env::var(var)
                .ok()
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
                .map(ApiKey::new)
        })
    }

    /// The key itself, for building a request by hand. Keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A sensitive header value holding `prefix` followed by the key (`"Bearer "` for OpenAI).
    pub(crate) fn header_value(&self, prefix: &str) -> Option<HeaderValue> {
        let mut value = HeaderValue::try_from(format!("{prefix}{}", self.0)).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(****)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(****)")
    }
}

impl From<String> for ApiKey {
    fn from(key: String) -> Self {
        ApiKey::new(key)
    }
}

impl From<&str> for ApiKey {
    fn from(key: &str) -> Self {
        ApiKey::new(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_sensitive_and_debug_redacts() {
        let key = ApiKey::new("sk-live-abcdef");
        let header = key.header_value("Bearer ").expect("ascii key");
        assert!(header.is_sensitive());
        assert_eq!(format!("{header:?}"), "Sensitive");
        assert!(!format!("{key:?} {key} {key:#?}").contains("abcdef"));
    }

    #[test]
    fn a_key_with_a_newline_is_refused() {
        assert!(ApiKey::new("bad\nkey").header_value("").is_none());
    }
}
