use std::fmt;
use std::hash::Hash;
use std::time::Duration;

use tower_layer::Layer;
use tower_llm_core::DefaultClassifier;

use crate::error::ConfigError;
use crate::quota::Quota;
use crate::service::RateLimit;

/// What to do with a call's tokens once its actual usage is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reconcile {
    /// Refund what the call did not use and charge what it used beyond the estimate, so the
    /// budget follows real usage. Right for providers that adjust their own count at the end
    /// of a call (Anthropic's output tokens).
    #[default]
    RefundAndCharge,
    /// Only charge usage beyond the estimate, never refund. Right for providers whose limiter
    /// counts the estimate (prompt plus `max_tokens`) up front and keeps it (OpenAI): a refund
    /// there would let through calls the server refuses.
    ChargeOnly,
    /// Keep the estimate.
    Off,
}

/// Chooses the key a request is limited under (API key, tenant, model...). Each key has its
/// own limits, queue and pause.
///
/// Any `Fn(&Req) -> Key` is a key function; [`NoKey`] puts every request under one key.
pub trait KeyFn<Req> {
    /// The key type.
    type Key: Hash + Eq + Send + Sync + 'static;

    /// The key of `request`.
    fn key(&self, request: &Req) -> Self::Key;

    /// Whether every request maps to one key, so the key table can be skipped.
    #[doc(hidden)]
    fn single(&self) -> bool {
        false
    }
}

impl<Req, F, K> KeyFn<Req> for F
where
    F: Fn(&Req) -> K,
    K: Hash + Eq + Send + Sync + 'static,
{
    type Key = K;

    fn key(&self, request: &Req) -> K {
        self(request)
    }
}

/// Every request under one key: the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKey;

impl<Req> KeyFn<Req> for NoKey {
    type Key = ();

    fn key(&self, _request: &Req) {}

    fn single(&self) -> bool {
        true
    }
}

/// What to do when the shared Redis store cannot be reached (feature `redis`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendFailure {
    /// Send the call anyway, limited only by this instance's local limits (concurrency,
    /// spacing, pause). The provider's own 429 remains the last line; availability wins.
    #[default]
    Open,
    /// Refuse the call at once with a rate-limited error: the budget is never exceeded, but
    /// a Redis outage stops traffic.
    Closed,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) concurrency: Option<usize>,
    pub(crate) spacing: Option<Duration>,
    pub(crate) requests: Option<Quota>,
    pub(crate) tokens: Option<Quota>,
    pub(crate) max_wait: Duration,
    pub(crate) max_queue: usize,
    pub(crate) max_keys: usize,
    pub(crate) adapt: bool,
    pub(crate) pause_on_rate_limit: bool,
    pub(crate) default_pause: Duration,
    pub(crate) reconcile: Reconcile,
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<crate::redis::RedisBackend>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            concurrency: None,
            spacing: None,
            requests: None,
            tokens: None,
            max_wait: Duration::from_secs(60),
            max_queue: 1024,
            max_keys: 10_000,
            adapt: false,
            pause_on_rate_limit: true,
            default_pause: Duration::from_secs(1),
            reconcile: Reconcile::default(),
            #[cfg(feature = "redis")]
            redis: None,
        }
    }
}

/// Applies [`RateLimit`] to a service.
///
/// Each call to [`Layer::layer`] makes an independent limiter; clones of the resulting
/// service share it. See the [crate docs](crate) for the behaviour.
#[derive(Clone)]
pub struct RateLimitLayer<K = NoKey, C = DefaultClassifier> {
    pub(crate) config: Config,
    pub(crate) key_fn: K,
    pub(crate) classifier: C,
}

// Key functions are usually closures, which have no `Debug`: show their type instead.
impl<K, C> fmt::Debug for RateLimitLayer<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("config", &self.config)
            .field("key_fn", &std::any::type_name::<K>())
            .field("classifier", &std::any::type_name::<C>())
            .finish()
    }
}

impl RateLimitLayer {
    /// A layer with a requests quota and a tokens quota, the usual pair a provider publishes.
    ///
    /// ```
    /// use tower_llm_ratelimit::{Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::new(Quota::per_minute(500), Quota::per_minute(200_000));
    /// ```
    pub fn new(requests: Quota, tokens: Quota) -> Self {
        RateLimitLayer {
            config: Config {
                requests: Some(requests),
                tokens: Some(tokens),
                ..Config::default()
            },
            key_fn: NoKey,
            classifier: DefaultClassifier,
        }
    }

    /// A builder with every knob.
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder {
            config: Config::default(),
            key_fn: NoKey,
            classifier: DefaultClassifier,
        }
    }
}

impl<S, K: Clone, C: Clone> Layer<S> for RateLimitLayer<K, C> {
    type Service = RateLimit<S, K, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_parts(
            inner,
            self.config.clone(),
            self.key_fn.clone(),
            self.classifier.clone(),
        )
    }
}

/// Builds a [`RateLimitLayer`]; [`build`](Self::build) checks every knob.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_ratelimit::{Quota, RateLimitLayer, Reconcile};
///
/// let layer = RateLimitLayer::builder()
///     .concurrency(16)
///     .min_spacing(Duration::from_millis(10))
///     .requests(Quota::per_minute(500).with_burst(10))
///     .tokens(Quota::per_minute(200_000).with_burst(20_000))
///     .reconcile(Reconcile::ChargeOnly)
///     .max_wait(Duration::from_secs(30))
///     .max_queue(256)
///     .adapt_to_headers(true)
///     .key_fn(|req: &http::Request<String>| {
///         req.headers().get("x-tenant").map(|v| v.as_bytes().to_vec())
///     })
///     .build()
///     .expect("valid configuration");
///
/// let err = RateLimitLayer::builder().concurrency(0).build().unwrap_err();
/// assert_eq!(err.knob(), "concurrency");
/// ```
#[derive(Clone)]
pub struct RateLimitBuilder<K = NoKey, C = DefaultClassifier> {
    config: Config,
    key_fn: K,
    classifier: C,
}

// Key functions are usually closures, which have no `Debug`: show their type instead.
impl<K, C> fmt::Debug for RateLimitBuilder<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("config", &self.config)
            .field("key_fn", &std::any::type_name::<K>())
            .field("classifier", &std::any::type_name::<C>())
            .finish()
    }
}

impl<K, C> RateLimitBuilder<K, C> {
    /// At most `max` calls in flight per key.
    pub fn concurrency(mut self, max: usize) -> Self {
        self.config.concurrency = Some(max);
        self
    }

    /// At least `spacing` between the starts of two calls of a key.
    pub fn min_spacing(mut self, spacing: Duration) -> Self {
        self.config.spacing = Some(spacing);
        self
    }

    /// A requests quota per key.
    pub fn requests(mut self, quota: Quota) -> Self {
        self.config.requests = Some(quota);
        self
    }

    /// A tokens quota per key: each request reserves its estimate
    /// ([`RequestCost`](tower_llm_core::RequestCost)) and is reconciled with the response's
    /// [`ResponseUsage`](tower_llm_core::ResponseUsage).
    pub fn tokens(mut self, quota: Quota) -> Self {
        self.config.tokens = Some(quota);
        self
    }

    /// How reservations are reconciled with actual usage (default
    /// [`Reconcile::RefundAndCharge`]).
    pub fn reconcile(mut self, reconcile: Reconcile) -> Self {
        self.config.reconcile = reconcile;
        self
    }

    /// The longest a call may wait for its turn (default 60 s). A call whose expected wait is
    /// longer is refused at once; one still waiting when it runs out is refused then.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.max_wait = max_wait;
        self
    }

    /// How many calls may wait per key (default 1024); `0` refuses instead of waiting.
    pub fn max_queue(mut self, max_queue: usize) -> Self {
        self.config.max_queue = max_queue;
        self
    }

    /// How many keys are tracked at once (default 10,000). Keys whose state is back to
    /// fresh are forgotten first; when every tracked key is still busy, a new key's call is
    /// refused rather than a busy key's limits forgotten.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.config.max_keys = max_keys;
        self
    }

    /// Whether to follow the provider's rate-limit headers (default off): when the server
    /// says fewer requests or tokens are left than the local budget believes, calls wait for
    /// the server's reset.
    pub fn adapt_to_headers(mut self, adapt: bool) -> Self {
        self.config.adapt = adapt;
        self
    }

    /// Whether a rate-limited failure (429) or an open circuit pauses the key for its retry
    /// hint (default on). A hint longer than a day counts as a day.
    pub fn pause_on_rate_limit(mut self, pause: bool) -> Self {
        self.config.pause_on_rate_limit = pause;
        self
    }

    /// The pause after a 429 that carries no retry hint (default 1 s).
    pub fn default_pause(mut self, pause: Duration) -> Self {
        self.config.default_pause = pause;
        self
    }

    /// Shares the requests and tokens quotas of every instance through Redis, failing as
    /// `on_failure` says when Redis cannot be reached.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, backend: crate::redis::RedisBackend) -> Self {
        self.config.redis = Some(backend);
        self
    }

    /// Limits each key separately, with the key `key_fn` gives a request.
    pub fn key_fn<K2>(self, key_fn: K2) -> RateLimitBuilder<K2, C> {
        RateLimitBuilder {
            config: self.config,
            key_fn,
            classifier: self.classifier,
        }
    }

    /// Classifies the inner service's results with `classifier` instead of
    /// [`DefaultClassifier`].
    pub fn classifier<C2>(self, classifier: C2) -> RateLimitBuilder<K, C2> {
        RateLimitBuilder {
            config: self.config,
            key_fn: self.key_fn,
            classifier,
        }
    }

    /// Checks every knob and builds the layer.
    pub fn build(self) -> Result<RateLimitLayer<K, C>, ConfigError> {
        let c = &self.config;
        if c.concurrency == Some(0) {
            return Err(ConfigError::new(
                "rate limit",
                "concurrency",
                "must be at least 1",
            ));
        }
        if c.spacing
            .is_some_and(|s| s > Duration::from_secs(24 * 3600))
        {
            return Err(ConfigError::new(
                "rate limit",
                "min_spacing",
                "must be at most a day",
            ));
        }
        if let Some(q) = &c.requests {
            q.validate("requests")?;
        }
        if let Some(q) = &c.tokens {
            q.validate("tokens")?;
        }
        if c.max_keys == 0 {
            return Err(ConfigError::new(
                "rate limit",
                "max_keys",
                "must be at least 1",
            ));
        }
        if c.max_wait > Duration::from_secs(366 * 24 * 3600) {
            return Err(ConfigError::new(
                "rate limit",
                "max_wait",
                "must be at most a year",
            ));
        }
        if c.default_pause > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::new(
                "rate limit",
                "default_pause",
                "must be at most a day",
            ));
        }
        Ok(RateLimitLayer {
            config: self.config,
            key_fn: self.key_fn,
            classifier: self.classifier,
        })
    }
}
