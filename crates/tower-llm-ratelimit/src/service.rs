use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_llm_core::{BoxError, Classify, DefaultClassifier, RequestCost, ResponseUsage};
use tower_service::Service;

use crate::error::{Rejection, too_large};
use crate::future::ResponseFuture;
use crate::headers::RateLimitHeaders;
use crate::layer::{Config, KeyFn, NoKey};
use crate::state::{KeyState, KeyTable, Limiter, Permit, RateLimitStats, Start, Ticket};

/// Limits calls to the inner service: see the [crate docs](crate).
///
/// Clones share every limit, queue and counter.
pub struct RateLimit<S, K = NoKey, C = DefaultClassifier> {
    inner: S,
    limiter: Arc<Limiter>,
    keys: Arc<KeyTable>,
    single: Arc<KeyState>,
    key_fn: K,
    classifier: C,
}

impl<S: Clone, K: Clone, C: Clone> Clone for RateLimit<S, K, C> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            keys: self.keys.clone(),
            single: self.single.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, K, C> fmt::Debug for RateLimit<S, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("config", &self.limiter.config)
            .field("keys", &self.keys.len())
            .field("key_fn", &std::any::type_name::<K>())
            .field("classifier", &std::any::type_name::<C>())
            .field("stats", &self.stats())
            .finish()
    }
}

impl<S, K, C> RateLimit<S, K, C> {
    pub(crate) fn from_parts(inner: S, config: Config, key_fn: K, classifier: C) -> Self {
        let limiter = Arc::new(Limiter::new(config));
        let single_name = limiter.remote().then(|| "_".to_owned());
        let single = Arc::new(KeyState::new(&limiter, single_name, true));
        RateLimit {
            inner,
            limiter,
            keys: Arc::new(KeyTable::new()),
            single,
            key_fn,
            classifier,
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

    /// Consumes the limiter, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The counters shared by every clone.
    pub fn stats(&self) -> RateLimitStats {
        let mut stats = self.limiter.stats.snapshot();
        let (admitted, tokens_reserved) = self.single.tally();
        stats.admitted += admitted;
        stats.tokens_reserved += tokens_reserved;
        stats
    }

    /// How many keys are tracked right now.
    pub fn tracked_keys(&self) -> usize {
        self.keys.len()
    }

    #[cold]
    #[inline(never)]
    fn reject<Req, F>(&self, rejection: Rejection, error: BoxError) -> ResponseFuture<S, Req, C>
    where
        S: Service<Req, Future = F>,
    {
        self.limiter.stats.rejected(rejection.as_str());
        ResponseFuture::rejected(error)
    }
}

impl<S, K, C, Req> Service<Req> for RateLimit<S, K, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    S::Response: ResponseUsage + RateLimitHeaders,
    Req: RequestCost,
    K: KeyFn<Req>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Limits depend on the request (key, cost), so waiting happens in the response future.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let limiter = &self.limiter;
        let cost = match limiter.config.tokens {
            Some(quota) => {
                let cost = request.estimated_tokens();
                if cost > quota.limit() {
                    return self.reject(
                        Rejection::TooLarge,
                        too_large(cost, quota.limit(), quota.window()),
                    );
                }
                cost
            }
            None => 0,
        };
        let now = limiter.now();
        let key = if self.key_fn.single() {
            self.single.clone()
        } else {
            match self.keys.get(self.key_fn.key(&request), limiter, now) {
                Some(key) => key,
                None => {
                    let pause = limiter.config.default_pause;
                    return self.reject(Rejection::KeysFull, Rejection::KeysFull.error(pause));
                }
            }
        };
        match key.start(limiter, now, cost) {
            Start::Now(admission) => {
                let permit = Permit::new(key, cost, admission);
                let future = self.inner.call(request);
                ResponseFuture::calling(future, permit, self.classifier.clone())
            }
            Start::Queued(id, waiting) => self.wait(key, id, waiting, now, cost, request),
            Start::Rejected(rejection, wait) => self.reject(rejection, rejection.error(wait)),
        }
    }
}

impl<S, K, C> RateLimit<S, K, C> {
    /// The slow path of `call`, out of line so the fast one stays small.
    #[cold]
    #[inline(never)]
    fn wait<Req>(
        &mut self,
        key: Arc<KeyState>,
        id: u64,
        waiting: bool,
        now: u64,
        cost: u64,
        request: Req,
    ) -> ResponseFuture<S, Req, C>
    where
        S: Service<Req> + Clone,
        C: Clone,
    {
        let limiter = &self.limiter;
        let ticket = Ticket::new(key, limiter.clone(), id, cost, waiting);
        let deadline = now.saturating_add(
            u64::try_from(limiter.config.max_wait.as_nanos()).unwrap_or(u64::MAX / 4),
        );
        // The readied service goes with the waiting call, the tower way.
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        ResponseFuture::waiting(ticket, deadline, ready, request, self.classifier.clone())
    }
}
