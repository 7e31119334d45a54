//! What a request says about caching, and what a response says about rate limits, in a form
//! any request or response type can implement.
//!
//! Both live in core, not in the layers that read them, so that provider crates can implement
//! them for their own typed requests and responses (the orphan rule forbids implementing a
//! layer crate's trait from a crate that does not depend on it).

use http::HeaderMap;

/// The header that opts one http request out of caching and coalescing: with the value
/// [`BYPASS_VALUE`] the request goes straight to the inner service.
pub const BYPASS_HEADER: &str = "x-tower-llm-cache";

/// The value of [`BYPASS_HEADER`] that bypasses caching and coalescing.
pub const BYPASS_VALUE: &str = "bypass";

/// A request extension that opts one request out of caching and coalescing: it goes straight
/// to the inner service, neither coalesced nor looked up nor stored.
///
/// ```
/// use tower_llm_core::{Bypass, CacheControl};
///
/// let mut request = http::Request::new(bytes::Bytes::from_static(b"{}"));
/// assert!(!request.bypasses_dedup());
/// request.extensions_mut().insert(Bypass);
/// assert!(request.bypasses_dedup());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bypass;

/// A request type that can ask to skip caching and coalescing.
///
/// Implemented for `http::Request<B>` (the [`Bypass`] extension or the [`BYPASS_HEADER`]
/// header) and for plain prompt types, which never bypass. Implement it for your own request
/// type; the default method never bypasses.
pub trait CacheControl {
    /// Whether this request must skip dedup entirely.
    fn bypasses_dedup(&self) -> bool {
        false
    }
}

/// [`BYPASS_HEADER`] as a header name, built once: looking a header up by `&str` parses the
/// name on every call.
static BYPASS_HEADER_NAME: http::HeaderName = http::HeaderName::from_static(BYPASS_HEADER);

impl<B> CacheControl for http::Request<B> {
    fn bypasses_dedup(&self) -> bool {
        self.extensions().get::<Bypass>().is_some()
            || self
                .headers()
                .get_all(&BYPASS_HEADER_NAME)
                .iter()
                .any(|value| {
                    value
                        .as_bytes()
                        .eq_ignore_ascii_case(BYPASS_VALUE.as_bytes())
                })
    }
}

impl CacheControl for String {}
impl CacheControl for str {}
impl CacheControl for bytes::Bytes {}
impl CacheControl for Vec<u8> {}

impl<T: CacheControl + ?Sized> CacheControl for &T {
    fn bypasses_dedup(&self) -> bool {
        (**self).bypasses_dedup()
    }
}

impl<T: CacheControl + ?Sized> CacheControl for std::sync::Arc<T> {
    fn bypasses_dedup(&self) -> bool {
        (**self).bypasses_dedup()
    }
}

impl<T: CacheControl + ?Sized> CacheControl for Box<T> {
    fn bypasses_dedup(&self) -> bool {
        (**self).bypasses_dedup()
    }
}

/// A response that may carry the provider's rate-limit headers.
///
/// Implemented for `http::Response<B>`; a typed provider response that keeps its headers can
/// implement it too. The default says "no headers", which turns header-driven adaptation off
/// for that type.
pub trait RateLimitHeaders {
    /// The response's headers, if it has any.
    fn rate_limit_headers(&self) -> Option<&HeaderMap> {
        None
    }
}

impl<B> RateLimitHeaders for http::Response<B> {
    fn rate_limit_headers(&self) -> Option<&HeaderMap> {
        Some(self.headers())
    }
}

impl<T: RateLimitHeaders + ?Sized> RateLimitHeaders for &T {
    fn rate_limit_headers(&self) -> Option<&HeaderMap> {
        (**self).rate_limit_headers()
    }
}

impl<T: RateLimitHeaders + ?Sized> RateLimitHeaders for Box<T> {
    fn rate_limit_headers(&self) -> Option<&HeaderMap> {
        (**self).rate_limit_headers()
    }
}

impl<T: RateLimitHeaders + ?Sized> RateLimitHeaders for std::sync::Arc<T> {
    fn rate_limit_headers(&self) -> Option<&HeaderMap> {
        (**self).rate_limit_headers()
    }
}
