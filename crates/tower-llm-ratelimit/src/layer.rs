//! The layer: one value, one state.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use tower_layer::Layer;
use tower_llm_core::{DefaultClassifier, NoKey};

use crate::builder::RateLimitBuilder;
use crate::config::Config;
use crate::handle::RateLimitHandle;
use crate::limiter::Shared;
use crate::quota::Quota;
use crate::reads::{CountTokens, IgnoreHeaders, IgnoreTokens};
use crate::service::RateLimit;

/// Applies [`RateLimit`] to services.
///
/// **One layer value, one state.** The limits, queues, key table, pauses and counters are
/// made once, when the layer is built, and every service the layer makes shares them,
/// whatever stack it lands in: a layer applied to a whole-answer route and to a streaming
/// route enforces one budget across both. Cloning the layer shares the state too. For
/// independent limits, build another layer value.
///
/// [`handle`](Self::handle) reads the stats and pauses or resumes the limiter, before or
/// after the stacks are built and boxed.
///
/// The type parameters say what the limiter reads: `K` the key function, `C` the
/// classifier, `T` the tokens ([`IgnoreTokens`] or [`CountTokens`]) and `H` the provider's
/// headers ([`IgnoreHeaders`] or [`FollowHeaders`](crate::FollowHeaders)); see
/// [`reads`](crate::reads). See the [crate docs](crate) for the behaviour.
pub struct RateLimitLayer<K = NoKey, C = DefaultClassifier, T = IgnoreTokens, H = IgnoreHeaders> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key_fn: K,
    pub(crate) classifier: C,
    pub(crate) reads: PhantomData<fn() -> (T, H)>,
}

impl<K: Clone, C: Clone, T, H> Clone for RateLimitLayer<K, C, T, H> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            shared: self.shared.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
            reads: PhantomData,
        }
    }
}

// Key functions are usually closures, which have no `Debug`: show their type instead.
impl<K, C, T, H> fmt::Debug for RateLimitLayer<K, C, T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("config", &self.shared.limiter.config)
            .field("key_fn", &std::any::type_name::<K>())
            .field("classifier", &std::any::type_name::<C>())
            .field("stats", &self.shared.stats())
            .finish()
    }
}

impl RateLimitLayer {
    /// A layer with a requests quota and a tokens quota, the usual pair a provider publishes
    /// (requests need [`RequestCost`](tower_llm_core::RequestCost), responses
    /// [`ResponseUsage`](tower_llm_core::ResponseUsage)). A quota that
    /// [`builder`](Self::builder) would refuse (a zero limit, window or burst) is clamped to
    /// the nearest valid one.
    ///
    /// ```
    /// use tower_llm_ratelimit::{Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::new(Quota::per_minute(500), Quota::per_minute(200_000));
    /// ```
    pub fn new(
        requests: Quota,
        tokens: Quota,
    ) -> RateLimitLayer<NoKey, DefaultClassifier, CountTokens> {
        let config = Config {
            requests: Some(requests.clamped()),
            tokens: Some(tokens.clamped()),
            ..Config::default()
        };
        RateLimitLayer::from_parts(config, NoKey, DefaultClassifier)
    }

    /// A builder with every knob.
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder::new()
    }
}

impl<K, C, T, H> RateLimitLayer<K, C, T, H> {
    pub(crate) fn from_parts(config: Config, key_fn: K, classifier: C) -> Self {
        RateLimitLayer {
            shared: Arc::new(Shared::new(config)),
            key_fn,
            classifier,
            reads: PhantomData,
        }
    }

    /// A handle on this layer's state: stats, pause and resume. It works before and after
    /// the layer is applied, and after the stacks are boxed.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle::new(self.shared.clone())
    }
}

impl<S, K: Clone, C: Clone, T, H> Layer<S> for RateLimitLayer<K, C, T, H> {
    type Service = RateLimit<S, K, C, T, H>;

    fn layer(&self, inner: S) -> Self::Service {
        self.shared.limiter.observe.register();
        RateLimit::from_parts(
            inner,
            self.shared.clone(),
            self.key_fn.clone(),
            self.classifier.clone(),
        )
    }
}
