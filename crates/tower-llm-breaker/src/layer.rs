//! The layer of a single breaker.

use std::sync::Arc;

use tower_layer::Layer;
use tower_llm_core::DefaultClassifier;

use crate::breaker::Breaker;
use crate::config::{CircuitBreakerBuilder, default_config};
use crate::handle::CircuitBreakerHandle;
use crate::service::CircuitBreaker;

/// Wraps a service in a [`CircuitBreaker`].
///
/// The layer owns one breaker: every service it wraps, and every clone of those, share it.
/// Build one layer per upstream, or use a
/// [`KeyedCircuitBreakerLayer`](crate::KeyedCircuitBreakerLayer) for one breaker per
/// provider, model or host.
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    breaker: Arc<Breaker>,
    classifier: C,
}

impl CircuitBreakerLayer<DefaultClassifier> {
    /// A breaker with the [default policy](CircuitBreakerBuilder): open when half of the
    /// last 100 calls failed, once 40 calls are in the window, for 10 s, then one probe.
    pub fn new() -> Self {
        Self::from_breaker(Arc::new(Breaker::new(Arc::new(default_config()), None)))
    }

    /// A builder for every other policy.
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::new()
    }

    pub(crate) fn from_breaker(breaker: Arc<Breaker>) -> Self {
        CircuitBreakerLayer {
            breaker,
            classifier: DefaultClassifier,
        }
    }
}

impl Default for CircuitBreakerLayer<DefaultClassifier> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Classifies the inner service's results with `classifier` instead of
    /// [`DefaultClassifier`]: the breaker counts only what it calls upstream-unhealthy.
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }

    /// Reads and steers the breaker (every service of this layer value shares it), before
    /// or after the stack is built and boxed.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            breaker: Arc::clone(&self.breaker),
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_parts(inner, Arc::clone(&self.breaker), self.classifier.clone())
    }
}
