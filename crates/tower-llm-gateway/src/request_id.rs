//! The request id every answer carries in `x-request-id` (and every error body repeats), so a
//! client's report can be matched with the gateway's logs.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// `x-request-id`.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// One request's id: `req_` and 32 hex digits, unique in the process and across restarts.
#[derive(Clone, Debug)]
pub(crate) struct RequestId(Arc<str>);

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
        RequestId(format!("req_{prefix:016x}{serial:016x}").into())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Sets `x-request-id` unless the answer already has one (a provider's).
    pub(crate) fn set_on(&self, headers: &mut HeaderMap) {
        if headers.contains_key(&X_REQUEST_ID) {
            return;
        }
        if let Ok(value) = HeaderValue::from_str(&self.0) {
            headers.insert(X_REQUEST_ID.clone(), value);
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
