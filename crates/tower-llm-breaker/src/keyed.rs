//! One breaker per key (provider, model, host), in a bounded map.
//!
//! The map is a `Mutex<HashMap>` looked up once per call: a few tens of nanoseconds, held
//! only for the lookup (the call itself runs on the key's lock-free breaker). When the map
//! is full, a new key evicts the least recently used *closed* breaker, so a key that is open
//! or probing keeps its state as long as some closed key can make room; only when every
//! breaker is open or half-open does the least recently used of them go.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_layer::Layer;
use tower_llm_core::{BoxError, Classify, DefaultClassifier, KeyFn};
use tower_service::Service;

use crate::breaker::Breaker;
use crate::config::Config;
use crate::future::ResponseFuture;
use crate::handle::CircuitBreakerHandle;
use crate::state::BreakerStats;

pub(crate) struct KeyedBreakers<K> {
    config: Arc<Config>,
    max_keys: usize,
    map: Mutex<Map<K>>,
}

struct Map<K> {
    entries: HashMap<K, Entry>,
    /// A use counter, the recency order of the entries.
    clock: u64,
    /// Breakers dropped to make room for a new key.
    evicted: u64,
}

struct Entry {
    breaker: Arc<Breaker>,
    last_used: u64,
}

impl<K> fmt::Debug for KeyedBreakers<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakers")
            .field("name", &self.config.name)
            .field("max_keys", &self.max_keys)
            .field("keys", &self.lock().entries.len())
            .finish()
    }
}

impl<K> KeyedBreakers<K> {
    pub(crate) fn new(config: Arc<Config>, max_keys: usize) -> Self {
        KeyedBreakers {
            config,
            max_keys,
            map: Mutex::new(Map {
                entries: HashMap::new(),
                clock: 0,
                evicted: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Map<K>> {
        // Nothing in the map is left half-updated by a panic.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Hash + Eq + Clone + fmt::Display> KeyedBreakers<K> {
    fn breaker(&self, key: &K) -> Arc<Breaker> {
        let mut map = self.lock();
        map.clock += 1;
        let now = map.clock;
        if let Some(entry) = map.entries.get_mut(key) {
            entry.last_used = now;
            return Arc::clone(&entry.breaker);
        }
        if map.entries.len() >= self.max_keys {
            let victim = map
                .entries
                .iter()
                .min_by_key(|(_, e)| (!e.breaker.is_closed(), e.last_used))
                .map(|(k, _)| k.clone());
            if let Some(victim) = victim {
                map.entries.remove(&victim);
                map.evicted += 1;
            }
        }
        let breaker = Arc::new(Breaker::new(
            Arc::clone(&self.config),
            Some(Arc::from(key.to_string())),
        ));
        map.entries.insert(
            key.clone(),
            Entry {
                breaker: Arc::clone(&breaker),
                last_used: now,
            },
        );
        breaker
    }
}

/// Wraps a service in a [`KeyedCircuitBreaker`]: one breaker per key.
///
/// Built by [`CircuitBreakerBuilder::build_keyed`](crate::CircuitBreakerBuilder::build_keyed)
/// from a [`KeyFn`] (any `Fn(&Request) -> K`, `K: Display` for metric labels) and a bound
/// on the number of keys. Every breaker follows the builder's policy; every service made by
/// this layer value, and their clones, share the map.
///
/// ```
/// use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
/// use tower_llm_breaker::{CircuitBreakerLayer, State};
/// use tower_llm_core::{BoxError, CircuitOpen};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// // One breaker per model; "big" is down, "small" is fine. (Two failures in a row are
/// // enough here to show it; the default failure rate needs 40 calls.)
/// let breakers = CircuitBreakerLayer::builder()
///     .consecutive_failures(2)
///     .build_keyed(|model: &&'static str| model.to_string(), 100)?;
/// let handle = breakers.handle();
/// let mut svc = ServiceBuilder::new().layer(breakers).service(service_fn(|model: &'static str| {
///     let status = if model == "big" { 503 } else { 200 };
///     async move { Ok::<_, BoxError>(http::Response::builder().status(status).body(())?) }
/// }));
///
/// for _ in 0..2 {
///     svc.ready().await?.call("big").await?;
/// }
/// let refused = svc.ready().await?.call("big").await.unwrap_err();
/// assert!(refused.is::<CircuitOpen>());
/// assert_eq!(svc.ready().await?.call("small").await?.status(), 200);
/// assert_eq!(handle.get("big").unwrap().state(), State::Open);
/// # Ok(())
/// # }
/// ```
pub struct KeyedCircuitBreakerLayer<K, F, C = DefaultClassifier> {
    breakers: Arc<KeyedBreakers<K>>,
    key: F,
    classifier: C,
}

impl<K, F: Clone, C: Clone> Clone for KeyedCircuitBreakerLayer<K, F, C> {
    fn clone(&self) -> Self {
        KeyedCircuitBreakerLayer {
            breakers: Arc::clone(&self.breakers),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<K, F, C: fmt::Debug> fmt::Debug for KeyedCircuitBreakerLayer<K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("breakers", &self.breakers)
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl<K, F> KeyedCircuitBreakerLayer<K, F, DefaultClassifier> {
    pub(crate) fn from_parts(breakers: Arc<KeyedBreakers<K>>, key: F) -> Self {
        KeyedCircuitBreakerLayer {
            breakers,
            key,
            classifier: DefaultClassifier,
        }
    }
}

impl<K, F, C> KeyedCircuitBreakerLayer<K, F, C> {
    /// Classifies the inner service's results with `classifier` instead of
    /// [`DefaultClassifier`].
    pub fn with_classifier<C2>(self, classifier: C2) -> KeyedCircuitBreakerLayer<K, F, C2> {
        KeyedCircuitBreakerLayer {
            breakers: self.breakers,
            key: self.key,
            classifier,
        }
    }

    /// Reads the breakers, per key.
    pub fn handle(&self) -> KeyedCircuitBreakerHandle<K> {
        KeyedCircuitBreakerHandle {
            breakers: Arc::clone(&self.breakers),
        }
    }
}

impl<S, K, F: Clone, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<K, F, C> {
    type Service = KeyedCircuitBreaker<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            breakers: Arc::clone(&self.breakers),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service behind one circuit breaker per key; see the [crate docs](crate).
///
/// A call whose key's breaker is open is refused at once, while calls for other keys go
/// through. Clones share the breakers.
pub struct KeyedCircuitBreaker<S, K, F, C = DefaultClassifier> {
    inner: S,
    breakers: Arc<KeyedBreakers<K>>,
    key: F,
    classifier: C,
}

impl<S: Clone, K, F: Clone, C: Clone> Clone for KeyedCircuitBreaker<S, K, F, C> {
    fn clone(&self) -> Self {
        KeyedCircuitBreaker {
            inner: self.inner.clone(),
            breakers: Arc::clone(&self.breakers),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, K, F, C: fmt::Debug> fmt::Debug for KeyedCircuitBreaker<S, K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("breakers", &self.breakers)
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, C> KeyedCircuitBreaker<S, K, F, C> {
    /// Reads the breakers, per key.
    pub fn handle(&self) -> KeyedCircuitBreakerHandle<K> {
        KeyedCircuitBreakerHandle {
            breakers: Arc::clone(&self.breakers),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, K, F, C, Req> Service<Req> for KeyedCircuitBreaker<S, K, F, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone + fmt::Display,
    F: KeyFn<Req, Key = K>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let breaker = self.breakers.breaker(&self.key.key(&req));
        match breaker.acquire(Instant::now) {
            Ok(permit) => {
                ResponseFuture::called(self.inner.call(req), permit, self.classifier.clone())
            }
            Err(open) => ResponseFuture::rejected(open),
        }
    }
}

/// A snapshot of a [`KeyedCircuitBreakerLayer`]'s breakers, from
/// [`KeyedCircuitBreakerHandle::stats`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct KeyedStats<K> {
    /// Each breaker the map holds, with its key, in no particular order.
    pub breakers: Vec<(K, BreakerStats)>,
    /// Breakers dropped from the full map to make room for a new key, since the layer was
    /// built (their counts went with them).
    pub evicted: u64,
}

/// Reads and steers the breakers of a [`KeyedCircuitBreakerLayer`], per key. Cheap to
/// clone; it shares the map with every service of the layer value.
///
/// One key's breaker is steered through its [`CircuitBreakerHandle`] ([`get`](Self::get),
/// then [`force_open`](CircuitBreakerHandle::force_open) or
/// [`reset`](CircuitBreakerHandle::reset)); [`reset_all`](Self::reset_all) resets every
/// one.
pub struct KeyedCircuitBreakerHandle<K> {
    breakers: Arc<KeyedBreakers<K>>,
}

impl<K> Clone for KeyedCircuitBreakerHandle<K> {
    fn clone(&self) -> Self {
        KeyedCircuitBreakerHandle {
            breakers: Arc::clone(&self.breakers),
        }
    }
}

impl<K> fmt::Debug for KeyedCircuitBreakerHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerHandle")
            .field("breakers", &self.breakers)
            .finish()
    }
}

impl<K: Hash + Eq + Clone> KeyedCircuitBreakerHandle<K> {
    /// The breaker of `key`, if the map holds one (a key is added by its first call).
    pub fn get<Q>(&self, key: &Q) -> Option<CircuitBreakerHandle>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.breakers.lock();
        map.entries.get(key).map(|entry| CircuitBreakerHandle {
            breaker: Arc::clone(&entry.breaker),
        })
    }

    /// The keys the map holds, in no particular order.
    pub fn keys(&self) -> Vec<K> {
        self.breakers.lock().entries.keys().cloned().collect()
    }

    /// A snapshot of every breaker the map holds, with its key, and of the map itself.
    ///
    /// ```
    /// use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
    /// use tower_llm_breaker::{CircuitBreakerLayer, State};
    /// use tower_llm_core::{BoxError, FailureKind, UpstreamError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// // One breaker per model over a plain `String` answer; "big" is down.
    /// let breakers = CircuitBreakerLayer::builder()
    ///     .consecutive_failures(1)
    ///     .build_keyed(|model: &&'static str| model.to_string(), 100)?;
    /// let handle = breakers.handle();
    /// let mut svc = ServiceBuilder::new()
    ///     .layer(breakers)
    ///     .service(service_fn(|model: &'static str| async move {
    ///         if model == "big" {
    ///             return Err(UpstreamError::new(FailureKind::ServerError, "down").into());
    ///         }
    ///         Ok::<_, BoxError>(format!("{model}: hello"))
    ///     }))
    ///     .boxed_clone();
    ///
    /// let _ = svc.ready().await?.call("big").await;
    /// assert_eq!(svc.ready().await?.call("small").await?, "small: hello");
    /// let mut stats = handle.stats();
    /// stats.breakers.sort_by(|a, b| a.0.cmp(&b.0));
    /// assert_eq!(stats.breakers[0].0, "big");
    /// assert_eq!(stats.breakers[0].1.state, State::Open);
    /// assert_eq!(stats.breakers[1].1.successes, 1);
    /// assert_eq!(stats.evicted, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(&self) -> KeyedStats<K> {
        // Read each breaker outside the map's lock, as `reset_all` does.
        let (entries, evicted) = {
            let map = self.breakers.lock();
            let entries: Vec<(K, Arc<Breaker>)> = map
                .entries
                .iter()
                .map(|(key, entry)| (key.clone(), Arc::clone(&entry.breaker)))
                .collect();
            (entries, map.evicted)
        };
        KeyedStats {
            breakers: entries
                .into_iter()
                .map(|(key, breaker)| (key, CircuitBreakerHandle { breaker }.stats()))
                .collect(),
            evicted,
        }
    }

    /// How many breakers the map holds.
    pub fn len(&self) -> usize {
        self.breakers.lock().entries.len()
    }

    /// Whether the map holds no breaker yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [Resets](CircuitBreakerHandle::reset) every breaker the map holds: each is closed with
    /// empty counts, and the state-change hook sees each one that was not closed. Keys stay
    /// in the map.
    pub fn reset_all(&self) {
        // Reset outside the map's lock: the hook runs on each reset and may read the map.
        let breakers: Vec<Arc<Breaker>> = self
            .breakers
            .lock()
            .entries
            .values()
            .map(|entry| Arc::clone(&entry.breaker))
            .collect();
        for breaker in breakers {
            breaker.reset();
        }
    }
}
