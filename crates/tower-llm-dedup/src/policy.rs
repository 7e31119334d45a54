//! What a request is keyed under, whether its answer may be stored, and how a caller opts out.

use tower_llm_core::{Deterministic, Fingerprint, FingerprintKey, RequestKey};

pub use tower_llm_core::{BYPASS_HEADER, BYPASS_VALUE, Bypass, CacheControl};

/// Turns a request into the key it is coalesced and cached under, or `None` to send it
/// straight through.
///
/// Implemented by [`FingerprintKeys`] (the default) and by any
/// `Fn(&Req) -> Option<RequestKey>` closure.
pub trait RequestKeys<Req> {
    /// The request's key, or `None` when it bypasses dedup.
    fn key(&self, request: &Req) -> Option<RequestKey>;
}

impl<Req, F> RequestKeys<Req> for F
where
    F: Fn(&Req) -> Option<RequestKey>,
{
    fn key(&self, request: &Req) -> Option<RequestKey> {
        self(request)
    }
}

/// The default key source: core's keyed [`Fingerprint`] of the request, unless the request
/// asks to bypass ([`CacheControl`]).
///
/// The hash key is random per process unless set with
/// [`DedupBuilder::fingerprint_key`](crate::DedupBuilder::fingerprint_key); instances
/// that share a Redis cache must share a key made with [`FingerprintKey::from_secret`].
#[derive(Clone, Debug, Default)]
pub struct FingerprintKeys {
    key: FingerprintKey,
}

impl FingerprintKeys {
    /// Fingerprints under `key`.
    pub fn new(key: FingerprintKey) -> Self {
        FingerprintKeys { key }
    }
}

impl<Req: Fingerprint + CacheControl> RequestKeys<Req> for FingerprintKeys {
    fn key(&self, request: &Req) -> Option<RequestKey> {
        if request.bypasses_dedup() {
            None
        } else {
            Some(self.key.fingerprint(request))
        }
    }
}

/// Decides whether a request's successful answer may be stored in the cache. Requests that
/// are not cacheable are still coalesced while in flight.
///
/// Implemented by [`DeterministicOnly`] (the default), [`CacheAll`] and any `Fn(&Req) -> bool`
/// closure.
pub trait CacheRule<Req> {
    /// Whether a successful answer to `request` may be stored.
    fn is_cacheable(&self, request: &Req) -> bool;
}

impl<Req, F> CacheRule<Req> for F
where
    F: Fn(&Req) -> bool,
{
    fn is_cacheable(&self, request: &Req) -> bool {
        self(request)
    }
}

/// The default rule: store only answers to requests that ask for a reproducible answer
/// (core's [`Deterministic`]). For a JSON chat request that means `temperature: 0` or a
/// `seed`; a request that samples is coalesced in flight but its answer is not kept.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeterministicOnly;

impl<Req: Deterministic> CacheRule<Req> for DeterministicOnly {
    fn is_cacheable(&self, request: &Req) -> bool {
        request.is_deterministic()
    }
}

/// Store every successful answer, sampled or not.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheAll;

impl<Req> CacheRule<Req> for CacheAll {
    fn is_cacheable(&self, _request: &Req) -> bool {
        true
    }
}

/// What the callers that joined an in-flight call get when that call fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// Every caller gets the same error, as a [`SharedError`](crate::SharedError) whose
    /// source is the original. One failed upstream call, one failure for everyone.
    #[default]
    Share,
    /// The caller whose request was sent gets the error; each caller that joined it makes its
    /// own call to the inner service with its own request (not coalesced, not cached).
    OwnCall,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bypass_by_extension_or_header() {
        let plain = http::Request::new(());
        assert!(!plain.bypasses_dedup());
        let mut flagged = http::Request::new(());
        flagged.extensions_mut().insert(Bypass);
        assert!(flagged.bypasses_dedup());
        let header = http::Request::builder()
            .header(BYPASS_HEADER, "BYPASS")
            .body(())
            .expect("valid request");
        assert!(header.bypasses_dedup());
        let other = http::Request::builder()
            .header(BYPASS_HEADER, "something-else")
            .body(())
            .expect("valid request");
        assert!(!other.bypasses_dedup());
    }

    #[test]
    fn fingerprint_keys_skip_bypassed_requests() {
        let keys = FingerprintKeys::default();
        let mut request = http::Request::new(bytes::Bytes::from_static(b"{}"));
        assert!(keys.key(&request).is_some());
        request.extensions_mut().insert(Bypass);
        assert!(keys.key(&request).is_none());
    }
}
