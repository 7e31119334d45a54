//! API keys that never show up in `Debug`, `Display`, errors or logs.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

/// A provider API key.
///
/// It prints as `ApiKey(****)` in `Debug` and `Display`, and the header value built from it is
/// marked sensitive, so HTTP tracing layers (tower-http's `Trace`, hyper's own logs) redact it
/// too. Errors never carry request headers, and every text an upstream sends back (an error
/// body, an error event) is [scrubbed](ApiKey::scrub) of the key, whole or masked, before it
/// enters an error, so the key cannot leak through them either.
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
pub struct ApiKey(Arc<str>);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(Arc::from(key.into()))
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

    /// `text` with this key taken out: the whole key, and the masked forms providers echo
    /// in their error messages (`sk-proj-****abcd`, `sk-abc***...wxyz`: a few characters of
    /// the key's start or end around a run of `*`, `…` or dots), each replaced by
    /// `[redacted key]`.
    ///
    /// ```
    /// use tower_llm_providers::ApiKey;
    ///
    /// let key = ApiKey::new("sk-proj-0123456789abcdefwxyz");
    /// let echoed = "Incorrect API key provided: sk-proj-****************wxyz. See the docs.";
    /// assert_eq!(
    ///     key.scrub(echoed),
    ///     "Incorrect API key provided: [redacted key]. See the docs."
    /// );
    /// assert_eq!(key.scrub("bad key sk-proj-0123456789abcdefwxyz"), "bad key [redacted key]");
    /// ```
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        scrub(text, &self.0)
    }

    /// [`scrub`](Self::scrub) for a body of bytes; a body that is not UTF-8 is read lossily
    /// when it needs changing.
    pub fn scrub_bytes(&self, body: Bytes) -> Bytes {
        let text = String::from_utf8_lossy(&body);
        match scrub(&text, &self.0) {
            Cow::Borrowed(_) => body,
            Cow::Owned(clean) => Bytes::from(clean),
        }
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

const REDACTED: &str = "[redacted key]";

/// A key shorter than this is not searched for in its masked forms: a few characters would
/// match ordinary words.
const MIN_MASKABLE: usize = 8;

fn is_mask(c: char) -> bool {
    matches!(c, '*' | '.' | '…' | '•')
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// `text` with each occurrence of `key` that is not part of a longer run of key characters
/// replaced, or `None` when there is none.
fn replace_whole_words(text: &str, key: &str) -> Option<String> {
    let mut out = String::new();
    let mut last = 0;
    for (at, _) in text.match_indices(key) {
        let end = at + key.len();
        let before = text[..at].chars().next_back();
        let after = text[end..].chars().next();
        if at >= last && !before.is_some_and(is_key_char) && !after.is_some_and(is_key_char) {
            out.push_str(&text[last..at]);
            out.push_str(REDACTED);
            last = end;
        }
    }
    if last == 0 {
        return None;
    }
    out.push_str(&text[last..]);
    Some(out)
}

/// The one scrubbing function: every text from an upstream goes through it before it enters
/// an error.
fn scrub<'a>(text: &'a str, key: &str) -> Cow<'a, str> {
    if key.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut text = Cow::Borrowed(text);
    if key.len() >= MIN_MASKABLE {
        if text.contains(key) {
            text = Cow::Owned(text.replace(key, REDACTED));
        }
    } else if let Some(clean) = replace_whole_words(&text, key) {
        // A short key (a test's `"k"`) would match inside ordinary words.
        text = Cow::Owned(clean);
    }
    if key.len() < MIN_MASKABLE || !text.contains(is_mask) {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut rest: &str = &text;
    // Each masked form is a run of mask characters with visible parts of the key around
    // it: the longest run of key characters before it must be a start of the key and the
    // one after it an end of the key.
    while let Some(start) = rest.find(is_mask) {
        let end = rest[start..]
            .find(|c: char| !is_mask(c))
            .map_or(rest.len(), |n| start + n);
        let mask = &rest[start..end];
        let before_start = rest[..start]
            .rfind(|c: char| !is_key_char(c))
            .map_or(0, |i| {
                i + rest[i..].chars().next().map_or(1, char::len_utf8)
            });
        let after_end = rest[end..]
            .find(|c: char| !is_key_char(c))
            .map_or(rest.len(), |n| end + n);
        let before = &rest[before_start..start];
        let after = &rest[end..after_end];
        let masked = mask.contains(['*', '…', '•']) || mask.len() >= 3;
        let visible = before.len() + after.len();
        let matches = masked
            && visible >= 4
            && visible < key.len()
            && key.starts_with(before)
            && key.ends_with(after)
            // Both sides must be the key's: a start alone is enough only when long enough
            // not to be a common prefix like `sk-`.
            && (!after.is_empty() || before.len() >= 6);
        if matches {
            out.push_str(&rest[..before_start]);
            out.push_str(REDACTED);
            changed = true;
            rest = &rest[after_end..];
        } else {
            out.push_str(&rest[..end]);
            rest = &rest[end..];
        }
    }
    if !changed {
        return text;
    }
    out.push_str(rest);
    Cow::Owned(out)
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
    fn whole_and_masked_keys_are_scrubbed() {
        let key = ApiKey::new("sk-proj-AbCdEfGh0123456789wxyz");
        for (echoed, clean) in [
            (
                "key sk-proj-AbCdEfGh0123456789wxyz here",
                "key [redacted key] here",
            ),
            (
                "provided: sk-proj-****************wxyz.",
                "provided: [redacted key].",
            ),
            (
                "provided: sk-proj-AbC***...wxyz",
                "provided: [redacted key]",
            ),
            (
                "provided: sk-pro...wxyz, again",
                "provided: [redacted key], again",
            ),
            ("provided: sk-proj-AbCdEf…", "provided: [redacted key]"),
            ("'****wxyz'", "'[redacted key]'"),
            (
                "sk-p**wxyz and sk-proj-AbCdEfGh0123456789wxyz",
                "[redacted key] and [redacted key]",
            ),
        ] {
            assert_eq!(key.scrub(echoed), clean, "{echoed}");
        }
    }

    #[test]
    fn a_short_key_is_scrubbed_only_as_a_whole_word() {
        let key = ApiKey::new("k");
        assert!(matches!(
            key.scrub("stream first-token timeout"),
            Cow::Borrowed(_)
        ));
        assert_eq!(key.scrub("bad key: k."), "bad key: [redacted key].");
    }

    #[test]
    fn text_without_the_key_is_left_alone() {
        let key = ApiKey::new("sk-proj-AbCdEfGh0123456789wxyz");
        for text in [
            "Rate limit reached... try again in 20s.",
            "another key sk-other****1234 was used",
            "***",
            "wait...",
            "sk-...",
            "",
        ] {
            assert!(matches!(key.scrub(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn bodies_are_scrubbed_too() {
        let key = ApiKey::new("sk-proj-AbCdEfGh0123456789wxyz");
        let body = Bytes::from_static(b"{\"error\":{\"message\":\"bad sk-proj-AbC****wxyz\"}}");
        let clean = key.scrub_bytes(body);
        assert_eq!(
            &clean[..],
            b"{\"error\":{\"message\":\"bad [redacted key]\"}}"
        );
        let untouched = Bytes::from_static(b"\xff\xfe no key");
        assert_eq!(key.scrub_bytes(untouched.clone()), untouched);
    }

    #[test]
    fn a_key_with_a_newline_is_refused() {
        assert!(ApiKey::new("bad\nkey").header_value("").is_none());
    }
}
