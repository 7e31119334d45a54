//! [`DedupLayer`] and its builder.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;
use tower_llm_core::{DefaultClassifier, FingerprintKey};

use crate::cache::{CacheConfig, Capacity, MemoryCache};
use crate::error::ConfigError;
use crate::flight::InFlight;
use crate::policy::{CacheAll, DeterministicOnly, FingerprintKeys, OnError};
use crate::remote::Remote;
use crate::service::Dedup;
use crate::stats::DedupStats;

/// The cache's default capacity, in entries.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;

/// The default time an answer stays in the cache.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// State shared by every service a [`DedupLayer`] builds, and by their clones.
pub(crate) struct Shared<Res, K, R, C> {
    pub(crate) keys: K,
    pub(crate) rule: R,
    pub(crate) classifier: C,
    pub(crate) cache: Option<Arc<MemoryCache<Res>>>,
    pub(crate) in_flight: Arc<InFlight<Res>>,
    pub(crate) stats: DedupStats,
    pub(crate) on_error: OnError,
    pub(crate) remote: Option<Arc<dyn Remote<Res>>>,
}

/// Coalesces identical concurrent requests into one inner call and caches successful answers.
///
/// Every service built from one layer (and every clone of those) shares one cache, one set of
/// calls in flight and one [`DedupStats`]. `Res` is the inner service's response type, which
/// the cache stores; it is usually inferred.
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
            .field("cache", &self.shared.cache.is_some())
            .field("on_error", &self.shared.on_error)
            .field("redis", &self.shared.remote.is_some())
            .finish_non_exhaustive()
    }
}

impl<Res: Clone + Send + Sync + 'static> DedupLayer<Res> {
    /// Coalescing plus a cache of up to [`DEFAULT_MAX_ENTRIES`] answers kept for `ttl`
    /// (a zero `ttl` keeps nothing: coalescing only), keyed by core's fingerprint, storing only
    /// answers to deterministic requests.
    pub fn new(ttl: Duration) -> Self {
        let mut builder = DedupLayer::builder();
        builder.ttl = ttl;
        builder.cache_enabled = !ttl.is_zero();
        builder.assemble()
    }

    /// A builder with every knob.
    pub fn builder() -> DedupLayerBuilder<Res> {
        DedupLayerBuilder {
            keys: FingerprintKeys::default(),
            rule: DeterministicOnly,
            classifier: DefaultClassifier,
            cache_enabled: true,
            ttl: DEFAULT_TTL,
            time_to_idle: None,
            capacity: Capacity::Entries(DEFAULT_MAX_ENTRIES),
            ttl_for: None,
            on_error: OnError::Share,
            remote: None,
            _res: PhantomData,
        }
    }
}

impl<Res, K, R, C> DedupLayer<Res, K, R, C> {
    /// The counters of every service this layer builds.
    pub fn stats(&self) -> DedupStats {
        self.shared.stats.clone()
    }
}

impl<S, Res, K, R, C> Layer<S> for DedupLayer<Res, K, R, C> {
    type Service = Dedup<S, Res, K, R, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Dedup::from_shared(inner, self.shared.clone())
    }
}

/// Builds a [`DedupLayer`]; [`build`](DedupLayerBuilder::build) checks the knobs.
pub struct DedupLayerBuilder<Res, K = FingerprintKeys, R = DeterministicOnly, C = DefaultClassifier>
{
    pub(crate) keys: K,
    pub(crate) rule: R,
    pub(crate) classifier: C,
    pub(crate) cache_enabled: bool,
    pub(crate) ttl: Duration,
    pub(crate) time_to_idle: Option<Duration>,
    pub(crate) capacity: Capacity<Res>,
    pub(crate) ttl_for: Option<crate::cache::TtlFor<Res>>,
    pub(crate) on_error: OnError,
    pub(crate) remote: Option<Arc<dyn Remote<Res>>>,
    pub(crate) _res: PhantomData<fn() -> Res>,
}

impl<Res, K: fmt::Debug, R: fmt::Debug, C: fmt::Debug> fmt::Debug
    for DedupLayerBuilder<Res, K, R, C>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupLayerBuilder")
            .field("keys", &self.keys)
            .field("rule", &self.rule)
            .field("classifier", &self.classifier)
            .field("cache_enabled", &self.cache_enabled)
            .field("ttl", &self.ttl)
            .field("time_to_idle", &self.time_to_idle)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

impl<Res, R, C> DedupLayerBuilder<Res, FingerprintKeys, R, C> {
    /// The secret key of the fingerprint hash (default: random per process). Instances sharing
    /// a Redis cache must use the same one, made with [`FingerprintKey::from_secret`].
    pub fn fingerprint_key(mut self, key: FingerprintKey) -> Self {
        self.keys = FingerprintKeys::new(key);
        self
    }
}

impl<Res, K, R, C> DedupLayerBuilder<Res, K, R, C> {
    /// Keys requests with your function instead of core's fingerprint. Returning `None` sends
    /// that request straight through (bypass). The key must cover everything that changes the
    /// answer, including the caller's identity: requests with equal keys share answers.
    pub fn key_fn<Req, F>(self, key_fn: F) -> DedupLayerBuilder<Res, F, R, C>
    where
        F: Fn(&Req) -> Option<tower_llm_core::RequestKey>,
    {
        DedupLayerBuilder {
            keys: key_fn,
            rule: self.rule,
            classifier: self.classifier,
            cache_enabled: self.cache_enabled,
            ttl: self.ttl,
            time_to_idle: self.time_to_idle,
            capacity: self.capacity,
            ttl_for: self.ttl_for,
            on_error: self.on_error,
            remote: self.remote,
            _res: PhantomData,
        }
    }

    /// Decides with `rule` which answers may be stored (default [`DeterministicOnly`]); a
    /// closure `Fn(&Req) -> bool` works. Requests that are not cacheable are still coalesced.
    pub fn cache_rule<R2>(self, rule: R2) -> DedupLayerBuilder<Res, K, R2, C> {
        DedupLayerBuilder {
            keys: self.keys,
            rule,
            classifier: self.classifier,
            cache_enabled: self.cache_enabled,
            ttl: self.ttl,
            time_to_idle: self.time_to_idle,
            capacity: self.capacity,
            ttl_for: self.ttl_for,
            on_error: self.on_error,
            remote: self.remote,
            _res: PhantomData,
        }
    }

    /// Stores every successful answer, sampled or not.
    pub fn cache_all(self) -> DedupLayerBuilder<Res, K, CacheAll, C> {
        self.cache_rule(CacheAll)
    }

    /// Decides with `classifier` which inner responses are successes worth storing (default
    /// core's [`DefaultClassifier`]: for `http::Response`, a 2xx/3xx status).
    pub fn classifier<C2>(self, classifier: C2) -> DedupLayerBuilder<Res, K, R, C2> {
        DedupLayerBuilder {
            keys: self.keys,
            rule: self.rule,
            classifier,
            cache_enabled: self.cache_enabled,
            ttl: self.ttl,
            time_to_idle: self.time_to_idle,
            capacity: self.capacity,
            ttl_for: self.ttl_for,
            on_error: self.on_error,
            remote: self.remote,
            _res: PhantomData,
        }
    }

    /// How long an answer stays in the cache (default five minutes). Must not be zero.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Drops an answer that has not been read for this long, even before its TTL.
    pub fn time_to_idle(mut self, idle: Duration) -> Self {
        self.time_to_idle = Some(idle);
        self
    }

    /// A TTL per answer: `f` returns `Some(ttl)` to override the default for that answer
    /// (`Some(Duration::ZERO)` keeps it out of the cache), `None` for the default.
    pub fn ttl_for(mut self, f: impl Fn(&Res) -> Option<Duration> + Send + Sync + 'static) -> Self {
        self.ttl_for = Some(Arc::new(f));
        self
    }

    /// Bounds the cache by number of answers (default [`DEFAULT_MAX_ENTRIES`]).
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.capacity = Capacity::Entries(entries);
        self
    }

    /// Bounds the cache by weight instead: `weigh` says what one answer costs (in bytes, say),
    /// and the entries together stay under `max`.
    pub fn max_weight(
        mut self,
        max: u64,
        weigh: impl Fn(&Res) -> u32 + Send + Sync + 'static,
    ) -> Self {
        self.capacity = Capacity::Bytes(max, Arc::new(weigh));
        self
    }

    /// Keeps no answers: coalescing only.
    pub fn no_cache(mut self) -> Self {
        self.cache_enabled = false;
        self
    }

    /// What callers that joined a failed call get (default [`OnError::Share`]).
    pub fn on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }

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
        self.check()?;
        Ok(self.assemble())
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.cache_enabled {
            if self.ttl.is_zero() {
                return Err(ConfigError::new(
                    "dedup",
                    "ttl",
                    "must be above zero (use `no_cache` to keep nothing)",
                ));
            }
            if self.time_to_idle.is_some_and(|d| d.is_zero()) {
                return Err(ConfigError::new(
                    "dedup",
                    "time_to_idle",
                    "must be above zero",
                ));
            }
            match &self.capacity {
                Capacity::Entries(0) => {
                    return Err(ConfigError::new(
                        "dedup",
                        "max_entries",
                        "must be above zero",
                    ));
                }
                Capacity::Bytes(0, _) => {
                    return Err(ConfigError::new(
                        "dedup",
                        "max_weight",
                        "must be above zero",
                    ));
                }
                _ => {}
            }
        }
        if self.remote.is_some() && !self.cache_enabled {
            return Err(ConfigError::new(
                "dedup",
                "redis",
                "needs the cache (`no_cache` was set): Redis sits behind it",
            ));
        }
        Ok(())
    }

    fn assemble(self) -> DedupLayer<Res, K, R, C>
    where
        Res: Clone + Send + Sync + 'static,
    {
        let stats = DedupStats::new();
        let cache = self.cache_enabled.then(|| {
            let config = CacheConfig {
                capacity: self.capacity,
                ttl: self.ttl,
                time_to_idle: self.time_to_idle,
                ttl_for: self.ttl_for,
            };
            Arc::new(MemoryCache::new(&config, stats.clone()))
        });
        DedupLayer {
            shared: Arc::new(Shared {
                keys: self.keys,
                rule: self.rule,
                classifier: self.classifier,
                cache,
                in_flight: Arc::new(InFlight::default()),
                stats,
                on_error: self.on_error,
                remote: self.remote,
            }),
        }
    }
}
