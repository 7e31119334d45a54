//! The request id every answer carries in `x-request-id` (and every error body repeats), so a
//! client's report can be matched with the gateway's logs.
//!
//! The gateway gives every request its own id. When the upstream's answer (or its error)
//! names the upstream's request id (OpenAI `x-request-id`, Anthropic `request-id`), the client
//! is answered with that one instead, so that one id works with the gateway's logs (the
//! access line has both, `request_id` and `upstream_request_id`) and with the provider's
//! support. An upstream id is used only when it is header-safe and short
//! ([`RequestId::upstream`]); otherwise the gateway's own stays.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// `x-request-id`.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest upstream request id passed on to a client.
pub(crate) const MAX_UPSTREAM_ID: usize = 128;

/// One request's id: `req_` and 32 hex digits, unique in the process and across restarts.
///
/// Kept as the header value it is sent as (its bytes shared, so that putting it on the answer
/// copies nothing); it is always visible ASCII.
#[derive(Clone, Debug)]
pub(crate) struct RequestId(HeaderValue);

impl RequestId {
    /// A fresh id: a random per-process prefix and a counter.
    pub(crate) fn generate() -> Self {
        static PREFIX: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = *PREFIX.get_or_init(|| {
            let mut bytes = [0u8; 8];
            if getrandom::fill(&mut bytes).is_err() {
                use std::hash::{BuildHasher, Hasher};
                let seed = std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish();
                bytes = seed.to_le_bytes();
            }
            u64::from_le_bytes(bytes)
        });
        let serial = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Written by hand: `format!` costs several times more, on every request.
        let mut text = *b"req_00000000000000000000000000000000";
        hex(prefix, &mut text[4..20]);
        hex(serial, &mut text[20..]);
        // Lowercase hex after `req_`: always a valid header value.
        RequestId(
            HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(&text))
                .unwrap_or_else(|_| HeaderValue::from_static("req_unknown")),
        )
    }

    /// The upstream's id, if it is one a client can be given: 1 to
    /// [`MAX_UPSTREAM_ID`] characters of letters, digits and `-_.:/+=@~`.
    pub(crate) fn upstream(id: &str) -> Option<Self> {
        let safe = |b: &u8| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=' | b'@' | b'~'
                )
        };
        let valid = !id.is_empty() && id.len() <= MAX_UPSTREAM_ID && id.bytes().all(|b| safe(&b));
        if !valid {
            return None;
        }
        HeaderValue::from_str(id).ok().map(RequestId)
    }

    /// The id the client is answered with: the upstream's when it gave a usable one (then
    /// recorded beside ours on the request's span), else this one.
    pub(crate) fn answered_by(&self, upstream: Option<&str>) -> RequestId {
        match upstream.and_then(RequestId::upstream) {
            Some(theirs) => {
                tracing::Span::current().record("upstream_request_id", theirs.as_str());
                theirs
            }
            None => self.clone(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ever made of visible ASCII (above), which `to_str` accepts.
        self.0.to_str().unwrap_or_default()
    }

    /// Sets `x-request-id` unless the answer already has one (the upstream's).
    pub(crate) fn set_on(&self, headers: &mut HeaderMap) {
        if !headers.contains_key(&X_REQUEST_ID) {
            headers.insert(X_REQUEST_ID.clone(), self.0.clone());
        }
    }
}

/// Writes `value` as lowercase hex digits, zero-padded to fill `out` (16 bytes for a `u64`).
fn hex(value: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut value = value;
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// Gives the request its id (an extension handlers read) and puts it on the answer.
pub(crate) async fn assign(mut request: Request, next: Next) -> Response {
    let id = RequestId::generate();
    request.extensions_mut().insert(id.clone());
    let mut response = next.run(request).await;
    id.set_on(response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_ids_are_used_only_when_header_safe_and_short() {
        let ours = RequestId::generate();
        assert_eq!(
            ours.answered_by(Some("req_abc-123")).as_str(),
            "req_abc-123"
        );
        for bad in ["", "has space", "quote\"", "line\nbreak", "caf\u{e9}"] {
            assert_eq!(
                ours.answered_by(Some(bad)).as_str(),
                ours.as_str(),
                "{bad:?}"
            );
        }
        let long = "x".repeat(MAX_UPSTREAM_ID + 1);
        assert_eq!(ours.answered_by(Some(&long)).as_str(), ours.as_str());
        assert_eq!(ours.answered_by(None).as_str(), ours.as_str());
    }

    #[test]
    fn ids_are_req_and_32_hex_digits_counting_up() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        for id in [&a, &b] {
            let digits = id.as_str().strip_prefix("req_").unwrap_or_default();
            assert_eq!(digits.len(), 32, "{}", id.as_str());
            assert!(
                digits
                    .bytes()
                    .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
            );
        }
        assert_eq!(a.as_str()[..20], b.as_str()[..20], "one prefix per process");
        let serial = |id: &RequestId| u64::from_str_radix(&id.as_str()[20..], 16).ok();
        assert!(serial(&b) > serial(&a));
    }

    #[test]
    fn hex_matches_format() {
        for value in [0, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
            let mut out = [0u8; 16];
            hex(value, &mut out);
            assert_eq!(out, *format!("{value:016x}").as_bytes());
        }
    }
}
