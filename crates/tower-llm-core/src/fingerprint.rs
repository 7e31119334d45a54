//! Stable, keyed request fingerprints: the key under which dedup coalesces and caches.
//!
//! A [`RequestKey`] is a 128-bit keyed hash ([HighwayHash]) of everything that makes two
//! requests "the same question from the same caller". The hash key is secret: random per
//! process by default ([`FingerprintKey::process`]), or derived from a configured secret
//! ([`FingerprintKey::from_secret`]) when several instances share a cache. Without the key
//! nobody can craft two different requests that collide.
//!
//! For an `http::Request<B>` the fingerprint covers the method, the URI, the body, the
//! credential headers (`Authorization`, `x-api-key`, `api-key`, `x-goog-api-key`, ...), so two
//! tenants never share a key, and the headers that change the answer or its bytes
//! (`anthropic-version`, `accept`, `accept-encoding`, ...: [`FINGERPRINT_HEADERS`]). A JSON
//! body is hashed in a canonical form: object key order, whitespace and number spelling (`1`
//! vs `1.0`) do not change the key; a number's exact value does, however many digits it has.
//!
//! Types implement [`Fingerprint`] by feeding their parts to a [`FingerprintHasher`]; every
//! write is length- or tag-prefixed, so `("ab", "c")` and `("a", "bc")` differ.
//!
//! [HighwayHash]: https://github.com/google/highwayhash

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, OnceLock};

use highway::{HighwayHash, HighwayHasher, Key};

/// The secret key of the fingerprint hash.
///
/// Its `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct FingerprintKey([u64; 4]);

impl FingerprintKey {
    /// A fresh random key from the operating system's generator.
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        if getrandom::fill(&mut bytes).is_err() {
            // The OS generator failed (it practically never does): fall back on std's
            // per-process random hasher keys rather than failing the caller.
            let state = std::collections::hash_map::RandomState::new();
            for (i, chunk) in bytes.chunks_mut(8).enumerate() {
                let mut hasher = state.build_hasher();
                hasher.write_usize(i);
                chunk.copy_from_slice(&hasher.finish().to_le_bytes());
            }
        }
        FingerprintKey(words(&bytes))
    }

    /// The process-wide random key, created on first use. Keys made with it are stable for the
    /// life of the process and meaningless to any other process.
    pub fn process() -> Self {
        static KEY: OnceLock<FingerprintKey> = OnceLock::new();
        KEY.get_or_init(FingerprintKey::random).clone()
    }

    /// A key derived from a shared secret, so that several processes (sharing a cache through
    /// Redis, say) compute the same fingerprints. Use at least 32 random bytes.
    pub fn from_secret(secret: &[u8]) -> Self {
        // A fixed public key turns the secret, whatever its length, into 256 key bits.
        const DERIVE: Key = Key([
            0x7477_6572_2d6c_6c6d,
            0x6669_6e67_6572_7072,
            0x696e_742d_6b65_792d,
            0x6465_7269_7665_2d31,
        ]);
        let mut hasher = HighwayHasher::new(DERIVE);
        hasher.append(secret);
        FingerprintKey(hasher.finalize256())
    }

    /// A hasher to feed by hand.
    #[inline]
    pub fn hasher(&self) -> FingerprintHasher {
        FingerprintHasher {
            inner: HighwayHasher::new(Key(self.0)),
            written: 0,
        }
    }

    /// The fingerprint of `value`.
    pub fn fingerprint<T: Fingerprint + ?Sized>(&self, value: &T) -> RequestKey {
        let mut hasher = self.hasher();
        value.fingerprint(&mut hasher);
        hasher.finish()
    }
}

impl Default for FingerprintKey {
    /// The process-wide random key.
    fn default() -> Self {
        FingerprintKey::process()
    }
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintKey(<redacted>)")
    }
}

fn words(bytes: &[u8; 32]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (word, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(chunk);
        *word = u64::from_le_bytes(buf);
    }
    out
}

/// A request's 128-bit fingerprint.
///
/// `Display` prints 32 lowercase hex digits, suitable for a cache key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey(u128);

impl RequestKey {
    /// The key from its raw value.
    pub const fn from_u128(value: u128) -> Self {
        RequestKey(value)
    }

    /// The raw value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Debug for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestKey({:032x})", self.0)
    }
}

impl fmt::Display for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A keyed hasher that builds a [`RequestKey`].
pub struct FingerprintHasher {
    inner: HighwayHasher,
    /// Bytes appended so far, to place long byte strings on a packet boundary.
    written: u64,
}

impl fmt::Debug for FingerprintHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintHasher { .. }")
    }
}

const TAG_BYTES: u8 = 8;
const TAG_ABSENT: u8 = 9;
const TAG_PRESENT: u8 = 10;
const TAG_JSON: u8 = 12;

/// HighwayHash consumes input in packets of this many bytes.
const PACKET: u64 = 32;

/// Byte strings at least this long are aligned on a packet boundary (shorter ones gain less
/// than the padding costs).
const ALIGN_FROM: usize = 64;

impl FingerprintHasher {
    #[inline]
    fn append(&mut self, bytes: &[u8]) {
        self.inner.append(bytes);
        self.written = self.written.wrapping_add(bytes.len() as u64);
    }

    /// Writes a byte string, length-prefixed.
    ///
    /// A long string's prefix is padded with zeros up to the next packet boundary: HighwayHash
    /// hashes whole packets straight from the input when nothing is buffered, but copies every
    /// packet through its buffer when the input starts mid-packet (about 15% slower on 1 KiB).
    /// The padding depends only on the position, so the encoding stays unambiguous.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        let length = (bytes.len() as u64).to_le_bytes();
        if bytes.len() < ALIGN_FROM {
            self.append(&length);
            self.append(bytes);
            return;
        }
        let offset = self.written % PACKET;
        // At least the 8 length bytes, then zeros to the boundary.
        let mut header_len = (PACKET - offset) % PACKET;
        if header_len < 8 {
            header_len += PACKET;
        }
        let mut header = [0u8; 2 * PACKET as usize];
        header[..8].copy_from_slice(&length);
        // `header_len` is at most 39, so the slice is in bounds.
        self.append(&header[..header_len as usize]);
        self.append(bytes);
    }

    /// Writes a string, length-prefixed.
    #[inline]
    pub fn write_str(&mut self, s: &str) {
        self.write_bytes(s.as_bytes());
    }

    /// Writes an integer.
    #[inline]
    pub fn write_u64(&mut self, value: u64) {
        self.append(&value.to_le_bytes());
    }

    /// Writes one tag byte, to tell apart values of different shapes.
    #[inline]
    pub fn write_tag(&mut self, tag: u8) {
        self.append(&[tag]);
    }

    /// Writes an optional value: a presence tag, then the value.
    pub fn write_option<T: Fingerprint + ?Sized>(&mut self, value: Option<&T>) {
        match value {
            None => self.write_tag(TAG_ABSENT),
            Some(value) => {
                self.write_tag(TAG_PRESENT);
                value.fingerprint(self);
            }
        }
    }

    /// Writes a JSON value in canonical form: object keys sorted, numbers by their exact
    /// value (`1` and `1.0` alike, `-0.0` as `0`). The same bytes as [`write_body`](Self::write_body)
    /// writes for the value's JSON text.
    pub fn write_json(&mut self, value: &serde_json::Value) {
        let mut canonical = Vec::new();
        crate::canonical::encode_value(value, &mut canonical);
        self.write_tag(TAG_JSON);
        self.write_bytes(&canonical);
    }

    /// Writes a body: canonical JSON when it parses as a JSON object or array, the raw bytes
    /// otherwise. The JSON is encoded while it is parsed, with no tree built.
    pub fn write_body(&mut self, body: &[u8]) {
        let looks_like_json = body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| matches!(b, b'{' | b'['));
        if looks_like_json
            && crate::canonical::with_canonical_json(body, |canonical| {
                self.write_tag(TAG_JSON);
                self.write_bytes(canonical);
            })
            .is_some()
        {
            return;
        }
        self.write_tag(TAG_BYTES);
        self.write_bytes(body);
    }

    /// The fingerprint of everything written.
    #[inline]
    pub fn finish(self) -> RequestKey {
        let [lo, hi] = self.inner.finalize128();
        RequestKey((u128::from(hi) << 64) | u128::from(lo))
    }
}

/// A request that can be fingerprinted: it writes everything that makes it distinct.
///
/// Implement it for your own request types by writing each field that changes the answer
/// (and the caller's identity, if answers must not be shared across callers):
///
/// ```
/// use tower_llm_core::{Fingerprint, FingerprintHasher, FingerprintKey};
///
/// struct Ask { tenant: String, prompt: String, temperature_milli: u64 }
///
/// impl Fingerprint for Ask {
///     fn fingerprint(&self, h: &mut FingerprintHasher) {
///         h.write_str(&self.tenant);
///         h.write_str(&self.prompt);
///         h.write_u64(self.temperature_milli);
///     }
/// }
///
/// let key = FingerprintKey::random();
/// let a = Ask { tenant: "acme".into(), prompt: "hi".into(), temperature_milli: 0 };
/// let b = Ask { tenant: "globex".into(), prompt: "hi".into(), temperature_milli: 0 };
/// assert_ne!(key.fingerprint(&a), key.fingerprint(&b));
/// ```
pub trait Fingerprint {
    /// Feeds this value's distinguishing parts to `hasher`.
    fn fingerprint(&self, hasher: &mut FingerprintHasher);
}

impl Fingerprint for str {
    fn fingerprint(&self, hasher: &mut FingerprintHasher) {
        hasher.write_str(self);
    }
}

impl Fingerprint for String {
    fn fingerprint(&self, hasher: &mut FingerprintHasher) {
        hasher.write_str(self);
    }
}

impl Fingerprint for [u8] {
    fn fingerprint(&self, hasher: &mut FingerprintHasher) {
        hasher.write_bytes(self);
    }
}

impl Fingerprint for Vec<u8> {
    fn fingerprint(&self, hasher: &mut FingerprintHasher) {
        hasher.write_bytes(self);
    }
}

impl Fingerprint for bytes::Bytes {
    fn fingerprint(&self, hasher: &mut FingerprintHasher) {
        hasher.write_bytes(self);
    }
}

impl Fingerprint for u64 {
    fn fingerprint(&self, hasher: &mut FingerprintHasher) {
        hasher.write_u64(*self);
    }
}

impl Fingerprint for serde_json::Value {
    fn fingerprint(&self, hasher: &mut FingerprintHasher) {
        hasher.write_json(self);
    }
}

impl<T: Fingerprint + ?Sized> Fingerprint for &T {
    fn fingerprint(&self, hasher: &mut FingerprintHasher) {
        (**self).fingerprint(hasher);
    }
}

impl<T: Fingerprint + ?Sized> Fingerprint for Box<T> {
    fn fingerprint(&self, hasher: &mut FingerprintHasher) {
        (**self).fingerprint(hasher);
    }
}

impl<T: Fingerprint + ?Sized> Fingerprint for Arc<T> {
    fn fingerprint(&self, hasher: &mut FingerprintHasher) {
        (**self).fingerprint(hasher);
    }
}

impl<A: Fingerprint, B: Fingerprint> Fingerprint for (A, B) {
    fn fingerprint(&self, hasher: &mut FingerprintHasher) {
        self.0.fingerprint(hasher);
        self.1.fingerprint(hasher);
    }
}

/// The request headers that are part of an `http::Request`'s fingerprint: those that identify
/// the caller (credentials, organisation, project), those that change the answer (API
/// version and beta flags) and those that change the answer's bytes (`accept`: JSON or an
/// event stream; `accept-encoding`: gzip, brotli or plain), so a cached answer is only ever
/// served to a request that would have received those very bytes.
pub const FINGERPRINT_HEADERS: [&str; 11] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "openai-organization",
    "openai-project",
    "anthropic-version",
    "anthropic-beta",
    "accept",
    "accept-encoding",
];

/// [`FINGERPRINT_HEADERS`] as header names, built once: looking a header up by `&str` parses
/// the name on every call.
static FINGERPRINT_HEADER_NAMES: [http::HeaderName; 11] = [
    http::HeaderName::from_static("authorization"),
    http::HeaderName::from_static("proxy-authorization"),
    http::HeaderName::from_static("x-api-key"),
    http::HeaderName::from_static("api-key"),
    http::HeaderName::from_static("x-goog-api-key"),
    http::HeaderName::from_static("openai-organization"),
    http::HeaderName::from_static("openai-project"),
    http::HeaderName::from_static("anthropic-version"),
    http::HeaderName::from_static("anthropic-beta"),
    http::header::ACCEPT,
    http::header::ACCEPT_ENCODING,
];

impl<B: AsRef<[u8]>> Fingerprint for http::Request<B> {
    fn fingerprint(&self, hasher: &mut FingerprintHasher) {
        hasher.write_str("http-request/3");
        hasher.write_str(self.method().as_str());
        // The URI's parts, each present or not, without formatting it into a string.
        let uri = self.uri();
        hasher.write_option(uri.scheme_str());
        hasher.write_option(uri.authority().map(http::uri::Authority::as_str));
        hasher.write_option(uri.path_and_query().map(http::uri::PathAndQuery::as_str));
        // One pass over the request's header names finds which of the fingerprint headers it
        // has (usually a credential and an accept header or two); only those are looked up.
        // The bytes hashed are the same as looking up all of them.
        let mut present = [false; FINGERPRINT_HEADERS.len()];
        for name in self.headers().keys() {
            if let Some(i) = FINGERPRINT_HEADER_NAMES.iter().position(|n| n == name) {
                present[i] = true;
            }
        }
        for (name, present) in FINGERPRINT_HEADER_NAMES.iter().zip(present) {
            if !present {
                hasher.write_u64(0);
                continue;
            }
            let values = self.headers().get_all(name);
            hasher.write_u64(values.iter().count() as u64);
            for value in values {
                hasher.write_bytes(value.as_bytes());
            }
        }
        hasher.write_body(self.body().as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str, auth: Option<&str>) -> http::Request<String> {
        let mut builder = http::Request::post("https://api.openai.com/v1/chat/completions")
            .header("content-type", "application/json");
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        builder.body(body.to_owned()).expect("valid request")
    }

    #[test]
    fn json_key_order_and_whitespace_do_not_matter() {
        let key = FingerprintKey::random();
        let a = request(
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
            Some("Bearer a"),
        );
        let b = request(
            "{ \"temperature\": 0.0,\n  \"messages\": [ {\"content\": \"hi\", \"role\": \"user\"} ],\n  \"model\": \"gpt-4o\" }",
            Some("Bearer a"),
        );
        assert_eq!(key.fingerprint(&a), key.fingerprint(&b));
    }

    #[test]
    fn different_content_differs() {
        let key = FingerprintKey::random();
        let a = request(r#"{"messages":["hi"]}"#, None);
        let b = request(r#"{"messages":["ho"]}"#, None);
        let c = request(r#"{"messages":[["hi"]]}"#, None);
        let d = request(r#"{"messages":"hi"}"#, None);
        let keys = [a, b, c, d].map(|r| key.fingerprint(&r));
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                assert_ne!(keys[i], keys[j], "{i} vs {j}");
            }
        }
    }

    #[test]
    fn tenants_never_share_a_key() {
        let key = FingerprintKey::random();
        let body = r#"{"model":"m","messages":[]}"#;
        let a = request(body, Some("Bearer tenant-a"));
        let b = request(body, Some("Bearer tenant-b"));
        let none = request(body, None);
        assert_ne!(key.fingerprint(&a), key.fingerprint(&b));
        assert_ne!(key.fingerprint(&a), key.fingerprint(&none));

        let with_x_api_key = |k: &str| {
            http::Request::post("https://api.anthropic.com/v1/messages")
                .header("x-api-key", k)
                .body(body.to_owned())
                .expect("valid request")
        };
        assert_ne!(
            key.fingerprint(&with_x_api_key("one")),
            key.fingerprint(&with_x_api_key("two"))
        );
    }

    #[test]
    fn method_and_uri_are_covered() {
        let key = FingerprintKey::random();
        let post = http::Request::post("http://x/a").body("").expect("valid");
        let put = http::Request::put("http://x/a").body("").expect("valid");
        let other = http::Request::post("http://x/b").body("").expect("valid");
        assert_ne!(key.fingerprint(&post), key.fingerprint(&put));
        assert_ne!(key.fingerprint(&post), key.fingerprint(&other));
    }

    #[test]
    fn non_json_bodies_hash_raw() {
        let key = FingerprintKey::random();
        let a = http::Request::post("http://x/")
            .body("{not json")
            .expect("valid");
        let b = http::Request::post("http://x/")
            .body("{not  json")
            .expect("valid");
        assert_ne!(key.fingerprint(&a), key.fingerprint(&b));
    }

    #[test]
    fn keys_are_secret_and_shared_secrets_agree() {
        let a = FingerprintKey::random();
        let b = FingerprintKey::random();
        assert_ne!(a.fingerprint("same"), b.fingerprint("same"));
        let s1 = FingerprintKey::from_secret(b"a shared secret of enough length!");
        let s2 = FingerprintKey::from_secret(b"a shared secret of enough length!");
        assert_eq!(s1.fingerprint("same"), s2.fingerprint("same"));
        assert_eq!(format!("{s1:?}"), "FingerprintKey(<redacted>)");
        assert_eq!(FingerprintKey::process(), FingerprintKey::process());
    }

    #[test]
    fn length_prefixes_prevent_concatenation_collisions() {
        let key = FingerprintKey::random();
        let ab_c = ("ab".to_string(), "c".to_string());
        let a_bc = ("a".to_string(), "bc".to_string());
        assert_ne!(key.fingerprint(&ab_c), key.fingerprint(&a_bc));
    }

    #[test]
    fn fingerprint_header_names_match_the_public_list() {
        let names: Vec<_> = FINGERPRINT_HEADER_NAMES
            .iter()
            .map(|n| n.as_str())
            .collect();
        assert_eq!(names, FINGERPRINT_HEADERS);
    }

    /// `accept` and `accept-encoding` change the bytes of the answer (an event stream or
    /// JSON; gzip or plain): requests that differ only there never share a key, and requests
    /// with the same ones do.
    #[test]
    fn headers_that_change_the_answers_bytes_are_covered() {
        let key = FingerprintKey::random();
        let with = |headers: &[(&str, &str)]| {
            let mut builder = http::Request::post("https://api.example/v1/chat")
                .header("authorization", "Bearer a");
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            let body = String::from(r#"{"model":"m","messages":[]}"#);
            key.fingerprint(&builder.body(body).expect("valid request"))
        };
        let variants = [
            with(&[]),
            with(&[("accept-encoding", "gzip")]),
            with(&[("accept-encoding", "br")]),
            with(&[("accept-encoding", "identity")]),
            with(&[("accept", "application/json")]),
            with(&[("accept", "text/event-stream")]),
            with(&[("accept", "application/json"), ("accept-encoding", "gzip")]),
        ];
        for i in 0..variants.len() {
            for j in i + 1..variants.len() {
                assert_ne!(variants[i], variants[j], "{i} vs {j}");
            }
        }
        assert_eq!(with(&[("accept-encoding", "gzip")]), variants[1]);
        assert_eq!(
            with(&[("accept-encoding", "gzip"), ("accept", "application/json")]),
            variants[6]
        );
    }

    /// Integers past 64 bits and numbers past f64's range keep their value in the key.
    #[test]
    fn big_numbers_in_a_body_stay_distinct() {
        let key = FingerprintKey::random();
        let body = |n: &str| {
            let body = format!(r#"{{"model":"m","seed":{n},"messages":[]}}"#);
            key.fingerprint(&http::Request::post("http://x/").body(body).expect("valid"))
        };
        let texts = [
            "18446744073709551615",
            "18446744073709551616",
            "18446744073709551617",
            "1e400",
            "2e400",
        ];
        let keys: Vec<_> = texts.iter().map(|t| body(t)).collect();
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                assert_ne!(keys[i], keys[j], "{} vs {}", texts[i], texts[j]);
            }
        }
        assert_eq!(body("1e400"), body("10e399"));
        assert_eq!(body("18446744073709551617"), body("18446744073709551617.0"));
    }

    /// The fingerprint headers are found in one pass over the request's names: the key must
    /// not depend on the order headers were added in, must see every fingerprint header and
    /// every value of one (in order), and must ignore the others.
    #[test]
    fn identity_headers_count_whatever_order_they_arrive_in() {
        let key = FingerprintKey::random();
        let with = |headers: &[(&str, &str)]| {
            let mut builder = http::Request::post("https://api.example/v1/chat");
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            key.fingerprint(&builder.body(String::from("{}")).expect("valid request"))
        };
        let base = with(&[("authorization", "Bearer a"), ("anthropic-beta", "b1")]);
        assert_eq!(
            base,
            with(&[("anthropic-beta", "b1"), ("authorization", "Bearer a")])
        );
        assert_eq!(
            base,
            with(&[
                ("x-trace", "1"),
                ("authorization", "Bearer a"),
                ("content-type", "application/json"),
                ("anthropic-beta", "b1"),
            ])
        );
        assert_ne!(base, with(&[("authorization", "Bearer a")]));
        assert_ne!(
            base,
            with(&[
                ("authorization", "Bearer a"),
                ("anthropic-beta", "b1"),
                ("anthropic-beta", "b2"),
            ])
        );
        assert_ne!(
            with(&[("anthropic-beta", "b1"), ("anthropic-beta", "b2")]),
            with(&[("anthropic-beta", "b2"), ("anthropic-beta", "b1")])
        );
        for name in FINGERPRINT_HEADERS {
            assert_ne!(
                base,
                with(&[
                    ("authorization", "Bearer a"),
                    ("anthropic-beta", "b1"),
                    (name, "x")
                ]),
                "{name}"
            );
        }
    }
    #[test]
    fn uri_parts_are_all_covered() {
        let key = FingerprintKey::random();
        let uris = [
            "https://a.example/v1/chat?x=1",
            "http://a.example/v1/chat?x=1",
            "https://b.example/v1/chat?x=1",
            "https://a.example/v1/chat?x=2",
            "https://a.example/v1/chat",
            "/v1/chat?x=1",
        ];
        let keys: Vec<_> = uris
            .iter()
            .map(|u| key.fingerprint(&http::Request::post(*u).body("").expect("valid")))
            .collect();
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                assert_ne!(keys[i], keys[j], "{} vs {}", uris[i], uris[j]);
            }
        }
    }

    #[test]
    fn display_is_32_hex_digits() {
        let shown = RequestKey::from_u128(0xab).to_string();
        assert_eq!(shown.len(), 32);
        assert!(shown.ends_with("ab"));
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z ]{0,8}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Writes `value` as JSON with object keys in reverse order and extra whitespace.
    fn respell(value: &serde_json::Value, out: &mut String) {
        use serde_json::Value;
        match value {
            Value::Array(items) => {
                out.push_str("[ ");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" ,\n");
                    }
                    respell(item, out);
                }
                out.push_str(" ]");
            }
            Value::Object(map) => {
                out.push_str("{\n");
                let mut entries: Vec<_> = map.iter().collect();
                entries.reverse();
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(",  ");
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push_str(" :\t");
                    respell(v, out);
                }
                out.push_str("\n}");
            }
            other => out.push_str(&other.to_string()),
        }
    }

    proptest::proptest! {
        #[test]
        fn respelled_json_keeps_its_key(value in json_value()) {
            let key = FingerprintKey::random();
            let compact = serde_json::to_string(&value).expect("serialises");
            let mut loose = String::new();
            respell(&value, &mut loose);
            let a = http::Request::post("http://x/").body(compact).expect("valid");
            let b = http::Request::post("http://x/").body(loose).expect("valid");
            proptest::prop_assert_eq!(key.fingerprint(&a), key.fingerprint(&b));
        }
    }
}
