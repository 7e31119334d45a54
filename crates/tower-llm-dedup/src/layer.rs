//! [`DedupLayer`] and its builder.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;
use tower_llm_core::{DefaultClassifier, FingerprintKey, RequestKey};

use crate::cache::MemoryCache;
use crate::config::{Knobs, Parts, knob_methods};
use crate::error::ConfigError;
use crate::flight::InFlight;
use crate::handle::DedupHandle;
use crate::observe::Observe;
use crate::policy::{CacheAll, DeterministicOnly, FingerprintKeys, OnError, RequestKeys};
use crate::remote::Remote;
use crate::service::Dedup;

/// State shared by every service a [`DedupLayer`] value builds, and by their clones.
pub(crate) struct Shared<Res, K, R, C> {
    pub(crate) keys: K,
    pub(crate) rule: R,
    pub(crate) classifier: C,
    pub(crate) cache: Option<Arc<MemoryCache<Res>>>,
    pub(crate) in_flight: Arc<InFlight<Res>>,
    pub(crate) observe: Observe,
    pub(crate) handle: DedupHandle,
    pub(crate) on_error: OnError,
    pub(crate) remote: Option<Arc<dyn Remote<Res>>>,
}

/// Coalesces identical concurrent requests into one inner call and caches successful answers.
///
/// Every service built from one layer value (and from its clones), in whatever stack it
/// lands, shares one cache, one set of calls in flight and one set of counters, read and
/// cleared through [`handle`](Self::handle). Independent state means another layer value.
/// `Res` is the inner service's response type, which the cache stores; it is usually
/// inferred.
///
/// See the [crate docs](crate) for the behaviour and an example.
pub struct DedupLayer<Res, K = FingerprintKeys, R = DeterministicOnly, C = DefaultClassifier> {
    shared: Arc<Shared<Res, K, R, C>>,
}

impl<Res, K, R, C> Clone for DedupLayer<Res, K, R, C> {
    fn clone(&self) -> Self {
        DedupLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<Res, K, R, C> fmt::Debug for DedupLayer<Res, K, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupLayer")
            .field("name", &self.shared.observe.name())
            .field("cache", &self.shared.cache.is_some())
            .field("on_error", &self.shared.on_error)
            .field("redis", &self.shared.remote.is_some())
            .finish_non_exhaustive()
    }
}

impl<Res: Clone + Send + Sync + 'static> DedupLayer<Res> {
    /// Coalescing plus a cache of up to [`DEFAULT_MAX_ENTRIES`](crate::DEFAULT_MAX_ENTRIES)
    /// answers kept for `ttl` (a zero `ttl` keeps nothing: coalescing only), keyed by core's
    /// fingerprint, storing only answers to deterministic requests.
    pub fn new(ttl: Duration) -> Self {
        DedupBuilder::with_knobs(Knobs::with_ttl(ttl)).assemble()
    }

    /// A builder with every knob.
    pub fn builder() -> DedupBuilder<Res> {
        DedupBuilder::with_knobs(Knobs::default())
    }
}

impl<Res, K, R, C> DedupLayer<Res, K, R, C> {
    /// The handle on this layer value's counters and cache: see [`DedupHandle`]. Take it
    /// before building the stack; it keeps working after the stack is boxed.
    pub fn handle(&self) -> DedupHandle {
        self.shared.handle.clone()
    }

    /// The key this layer files `request` under (`None`: it would bypass dedup), for
    /// [`DedupHandle::invalidate`].
    pub fn request_key<Req>(&self, request: &Req) -> Option<RequestKey>
    where
        K: RequestKeys<Req>,
    {
        self.shared.keys.key(request)
    }
}

impl<S, Res, K, R, C> Layer<S> for DedupLayer<Res, K, R, C> {
    type Service = Dedup<S, Res, K, R, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Dedup::from_shared(inner, self.shared.clone())
    }
}

/// Builds a [`DedupLayer`]; [`build`](DedupBuilder::build) checks the knobs.
pub struct DedupBuilder<Res, K = FingerprintKeys, R = DeterministicOnly, C = DefaultClassifier> {
    keys: K,
    rule: R,
    classifier: C,
    knobs: Knobs<Res>,
    remote: Option<Arc<dyn Remote<Res>>>,
    _res: PhantomData<fn() -> Res>,
}

impl<Res, K: fmt::Debug, R: fmt::Debug, C: fmt::Debug> fmt::Debug for DedupBuilder<Res, K, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupBuilder")
            .field("keys", &self.keys)
            .field("rule", &self.rule)
            .field("classifier", &self.classifier)
            .field("cache_enabled", &self.knobs.cache_enabled)
            .field("ttl", &self.knobs.ttl)
            .field("time_to_idle", &self.knobs.time_to_idle)
            .field("on_error", &self.knobs.on_error)
            .field("redis", &self.remote.is_some())
            .finish_non_exhaustive()
    }
}

impl<Res> DedupBuilder<Res> {
    fn with_knobs(knobs: Knobs<Res>) -> Self {
        DedupBuilder {
            keys: FingerprintKeys::default(),
            rule: DeterministicOnly,
            classifier: DefaultClassifier,
            knobs,
            remote: None,
            _res: PhantomData,
        }
    }
}

impl<Res, R, C> DedupBuilder<Res, FingerprintKeys, R, C> {
    /// The secret key of the fingerprint hash (default: random per process). Instances sharing
    /// a Redis cache must use the same one, made with [`FingerprintKey::from_secret`].
    pub fn fingerprint_key(mut self, key: FingerprintKey) -> Self {
        self.keys = FingerprintKeys::new(key);
        self
    }
}

impl<Res, K, R, C> DedupBuilder<Res, K, R, C> {
    /// Keys requests with your function instead of core's fingerprint. Returning `None` sends
    /// that request straight through (bypass). The key must cover everything that changes the
    /// answer, including the caller's identity: requests with equal keys share answers.
    pub fn key_fn<Req, F>(self, key_fn: F) -> DedupBuilder<Res, F, R, C>
    where
        F: Fn(&Req) -> Option<RequestKey>,
    {
        DedupBuilder {
            keys: key_fn,
            rule: self.rule,
            classifier: self.classifier,
            knobs: self.knobs,
            remote: self.remote,
            _res: PhantomData,
        }
    }

    /// Decides with `rule` which answers may be stored (default [`DeterministicOnly`]); a
    /// closure `Fn(&Req) -> bool` works. Requests that are not cacheable are still coalesced.
    pub fn cache_rule<R2>(self, rule: R2) -> DedupBuilder<Res, K, R2, C> {
        DedupBuilder {
            keys: self.keys,
            rule,
            classifier: self.classifier,
            knobs: self.knobs,
            remote: self.remote,
            _res: PhantomData,
        }
    }

    /// Stores every successful answer, sampled or not.
    pub fn cache_all(self) -> DedupBuilder<Res, K, CacheAll, C> {
        self.cache_rule(CacheAll)
    }

    /// Decides with `classifier` which inner responses are successes worth storing (default
    /// core's [`DefaultClassifier`]: for `http::Response`, a 2xx/3xx status).
    pub fn classifier<C2>(self, classifier: C2) -> DedupBuilder<Res, K, R, C2> {
        DedupBuilder {
            keys: self.keys,
            rule: self.rule,
            classifier,
            knobs: self.knobs,
            remote: self.remote,
            _res: PhantomData,
        }
    }

    knob_methods!(Res);

    /// Shares answers with other instances through Redis, behind the in-memory cache.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, backend: crate::redis::RedisBackend<Res>) -> Self
    where
        Res: Send + Sync + 'static,
    {
        self.remote = Some(Arc::new(backend));
        self
    }

    /// Checks the knobs and builds the layer.
    pub fn build(self) -> Result<DedupLayer<Res, K, R, C>, ConfigError>
    where
        Res: Clone + Send + Sync + 'static,
    {
        self.knobs.check()?;
        if let Some(remote) = &self.remote {
            if !self.knobs.cache_enabled {
                return Err(ConfigError::new(
                    "dedup",
                    "redis",
                    "needs the cache (`no_cache` was set): Redis sits behind it",
                ));
            }
            remote.check()?;
        }
        Ok(self.assemble())
    }

    fn assemble(self) -> DedupLayer<Res, K, R, C>
    where
        Res: Clone + Send + Sync + 'static,
    {
        let warn_every = self
            .remote
            .as_ref()
            .map_or(Duration::ZERO, |remote| remote.cool_down());
        let Parts {
            observe,
            cache,
            handle,
            on_error,
        } = self.knobs.assemble(warn_every);
        DedupLayer {
            shared: Arc::new(Shared {
                keys: self.keys,
                rule: self.rule,
                classifier: self.classifier,
                cache,
                in_flight: Arc::new(InFlight::default()),
                observe,
                handle,
                on_error,
                remote: self.remote,
            }),
        }
    }
}
