//! The builder: every knob, checked once in [`build`](RateLimitBuilder::build).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use tower_llm_core::{ConfigError, DefaultClassifier, NoKey};

use crate::config::{Config, Reconcile};
use crate::layer::RateLimitLayer;
use crate::quota::Quota;
use crate::reads::{CountTokens, FollowHeaders, IgnoreHeaders, IgnoreTokens};

/// Builds a [`RateLimitLayer`]; [`build`](Self::build) checks every knob.
///
/// Integer knobs follow one rule: amounts of requests or tokens (in [`Quota`]) are `u64`,
/// numbers bounded by memory ([`concurrency`](Self::concurrency),
/// [`max_queue`](Self::max_queue), [`max_keys`](Self::max_keys)) are `usize`.
///
/// Only [`tokens`](Self::tokens) and [`adapt_to_headers`](Self::adapt_to_headers) put bounds
/// on the request and response types (see [`reads`](crate::reads)): a limiter without them
/// fits any service.
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
///     .adapt_to_headers()
///     .key_fn(|req: &http::Request<String>| {
///         req.headers().get("x-tenant").map(|v| v.as_bytes().to_vec())
///     })
///     .build()
///     .expect("valid configuration");
///
/// let err = RateLimitLayer::builder().concurrency(0).build().unwrap_err();
/// assert_eq!(err.knob(), "concurrency");
/// ```
pub struct RateLimitBuilder<K = NoKey, C = DefaultClassifier, T = IgnoreTokens, H = IgnoreHeaders> {
    config: Config,
    key_fn: K,
    classifier: C,
    reads: PhantomData<fn() -> (T, H)>,
}

impl<K: Clone, C: Clone, T, H> Clone for RateLimitBuilder<K, C, T, H> {
    fn clone(&self) -> Self {
        RateLimitBuilder {
            config: self.config.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
            reads: PhantomData,
        }
    }
}

// Key functions are usually closures, which have no `Debug`: show their type instead.
impl<K, C, T, H> fmt::Debug for RateLimitBuilder<K, C, T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("config", &self.config)
            .field("key_fn", &std::any::type_name::<K>())
            .field("classifier", &std::any::type_name::<C>())
            .finish()
    }
}

impl Default for RateLimitBuilder {
    fn default() -> Self {
        RateLimitBuilder::new()
    }
}

impl RateLimitBuilder {
    /// A builder with no limit set; the same as [`RateLimitLayer::builder`].
    pub fn new() -> Self {
        RateLimitBuilder {
            config: Config::default(),
            key_fn: NoKey,
            classifier: DefaultClassifier,
            reads: PhantomData,
        }
    }
}

impl<K, C, T, H> RateLimitBuilder<K, C, T, H> {
    /// The same knobs, reading other things.
    fn reading<T2, H2>(self) -> RateLimitBuilder<K, C, T2, H2> {
        RateLimitBuilder {
            config: self.config,
            key_fn: self.key_fn,
            classifier: self.classifier,
            reads: PhantomData,
        }
    }

    /// The limiter's name (default `"ratelimit"`): the `name` label of its metrics and the
    /// `name` field of its events, to tell two limiters in one process apart.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.config.name = name.into();
        self
    }

    /// At most `max` calls in flight per key.
    pub fn concurrency(mut self, max: usize) -> Self {
        self.config.concurrency = Some(max);
        self
    }

    /// An adaptive concurrency limit per key instead of a fixed one: lowered when the
    /// upstream says it is overloaded (429 without a retry hint, 529/503, timeouts), raised
    /// while calls succeed, capped by the provider's headers when
    /// [`adapt_to_headers`](Self::adapt_to_headers) reads them; see
    /// [`AdaptiveConcurrency`](crate::AdaptiveConcurrency). Calls over the limit wait in
    /// the key's queue like calls over a fixed [`concurrency`](Self::concurrency), which
    /// cannot be set with it.
    ///
    /// A 429 that carries a retry hint still pauses the key for it (see
    /// [`pause_on_rate_limit`](Self::pause_on_rate_limit)); one without a hint lowers the
    /// limit instead of pausing for [`default_pause`](Self::default_pause).
    pub fn adaptive_concurrency(mut self, settings: crate::AdaptiveConcurrency) -> Self {
        self.config.adaptive = Some(settings);
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

    /// A tokens quota per key (`None`: none, though the type still reads tokens, which keeps
    /// one builder type when the quota is optional): each request reserves its estimate
    /// ([`RequestCost`](tower_llm_core::RequestCost)) and is reconciled with the response's
    /// [`ResponseUsage`](tower_llm_core::ResponseUsage) as [`reconcile`](Self::reconcile)
    /// says.
    ///
    /// The request and response types must implement those traits from here on; a limiter
    /// without a tokens quota does not ask for them.
    pub fn tokens(
        mut self,
        quota: impl Into<Option<Quota>>,
    ) -> RateLimitBuilder<K, C, CountTokens, H> {
        self.config.tokens = quota.into();
        self.reading()
    }

    /// How reservations are reconciled with actual usage. The default,
    /// [`Reconcile::FollowProvider`], does what the response says its provider does (keep
    /// the reservation for OpenAI, refund to usage for Anthropic and Gemini) and keeps the
    /// reservation when it does not say; see [`Reconcile`].
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

    /// Follows the provider's rate-limit headers: when the server says fewer requests or
    /// tokens are left than the local budget believes, calls wait for the server's reset.
    ///
    /// The response type must implement
    /// [`RateLimitHeaders`](tower_llm_core::RateLimitHeaders) from here on; a limiter that
    /// does not call this reads no headers and does not ask for it. To decide at run time
    /// while keeping one type, see [`adapt_to_headers_if`](Self::adapt_to_headers_if).
    pub fn adapt_to_headers(self) -> RateLimitBuilder<K, C, T, FollowHeaders> {
        self.adapt_to_headers_if(true)
    }

    /// Follows the provider's rate-limit headers when `adapt` is true, as
    /// [`adapt_to_headers`](Self::adapt_to_headers) does; for a setting read from
    /// configuration. The type is the same either way, so the response type must implement
    /// [`RateLimitHeaders`](tower_llm_core::RateLimitHeaders) even when `adapt` is false
    /// (nothing is read then); a limiter that never adapts should not call this.
    pub fn adapt_to_headers_if(mut self, adapt: bool) -> RateLimitBuilder<K, C, T, FollowHeaders> {
        self.config.adapt = adapt;
        self.reading()
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
    /// the backend's [`BackendFailure`](crate::BackendFailure) says when Redis cannot be
    /// reached; and, with [`AdaptiveConcurrency::shared`](crate::AdaptiveConcurrency::shared),
    /// the overloads that lower an adaptive limit. A limiter without a requests or tokens
    /// quota does not ask Redis before its calls (there is nothing to admit there).
    #[cfg(feature = "redis")]
    pub fn redis(mut self, backend: crate::redis::RedisBackend) -> Self {
        self.config.redis = Some(backend);
        self
    }

    /// Limits each key separately, with the key `key_fn` gives a request (core's
    /// [`KeyFn`](tower_llm_core::KeyFn)).
    pub fn key_fn<K2>(self, key_fn: K2) -> RateLimitBuilder<K2, C, T, H> {
        let classifier = self.classifier;
        RateLimitBuilder {
            config: self.config,
            key_fn,
            classifier,
            reads: PhantomData,
        }
    }

    /// Classifies the inner service's results with `classifier` instead of
    /// [`DefaultClassifier`].
    pub fn classifier<C2>(self, classifier: C2) -> RateLimitBuilder<K, C2, T, H> {
        let key_fn = self.key_fn;
        RateLimitBuilder {
            config: self.config,
            key_fn,
            classifier,
            reads: PhantomData,
        }
    }

    /// Checks every knob and builds the layer, with its state.
    pub fn build(self) -> Result<RateLimitLayer<K, C, T, H>, ConfigError> {
        let c = &self.config;
        let refuse = |knob: &'static str, reason: &'static str| {
            Err(ConfigError::new("rate limit", knob, reason))
        };
        if c.concurrency == Some(0) {
            return refuse("concurrency", "must be at least 1");
        }
        if let Some(adaptive) = &c.adaptive {
            if c.concurrency.is_some() {
                return refuse(
                    "adaptive_concurrency",
                    "cannot be set with concurrency (its max is the ceiling)",
                );
            }
            adaptive.validate()?;
            #[cfg(feature = "redis")]
            if adaptive.shared && c.redis.is_none() {
                return refuse(
                    "adaptive_concurrency.shared",
                    "needs a Redis backend (RateLimitBuilder::redis) to share overloads through",
                );
            }
        }
        if c.spacing
            .is_some_and(|s| s > Duration::from_secs(24 * 3600))
        {
            return refuse("min_spacing", "must be at most a day");
        }
        if let Some(q) = &c.requests {
            q.validate("requests")?;
        }
        if let Some(q) = &c.tokens {
            q.validate("tokens")?;
        }
        if c.max_keys == 0 {
            return refuse("max_keys", "must be at least 1");
        }
        if c.max_wait > Duration::from_secs(366 * 24 * 3600) {
            return refuse("max_wait", "must be at most a year");
        }
        if c.default_pause > Duration::from_secs(24 * 3600) {
            return refuse("default_pause", "must be at most a day");
        }
        #[cfg(feature = "redis")]
        if c.redis.as_ref().is_some_and(|r| r.has_zero_timeout()) {
            return refuse(
                "redis.timeout",
                "must be longer than zero (every call would find Redis unreachable)",
            );
        }
        Ok(RateLimitLayer::from_parts(
            self.config,
            self.key_fn,
            self.classifier,
        ))
    }
}
