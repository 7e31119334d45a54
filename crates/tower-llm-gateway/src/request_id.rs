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
        let id = bytes::Bytes::from(format!("req_{prefix:016x}{serial:016x}"));
        // Lowercase hex after `req_`: always a valid header value.
        RequestId(
            HeaderValue::from_maybe_shared(id)
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
}
