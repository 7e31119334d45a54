//! The service: admission in `call`, waiting in the response future.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_llm_core::{BoxError, Classify, Deadline, DefaultClassifier, KeyFn, NoKey};
use tower_service::Service;

use crate::error::{Rejection, too_large};
use crate::future::ResponseFuture;
use crate::handle::RateLimitHandle;
use crate::key_state::{KeyState, Start};
use crate::limiter::Shared;
use crate::permit::Permit;
use crate::reads::{HeaderReader, IgnoreHeaders, IgnoreTokens, TokenReader};
use crate::stats::RateLimitStats;
use crate::ticket::Ticket;

/// Limits calls to the inner service: see the [crate docs](crate).
///
/// Every service made by one [`RateLimitLayer`](crate::RateLimitLayer) value, and every
/// clone of them, shares its limits, queues and counters.
pub struct RateLimit<S, K = NoKey, C = DefaultClassifier, T = IgnoreTokens, H = IgnoreHeaders> {
    inner: S,
    shared: Arc<Shared>,
    key_fn: K,
    classifier: C,
    reads: PhantomData<fn() -> (T, H)>,
}

impl<S: Clone, K: Clone, C: Clone, T, H> Clone for RateLimit<S, K, C, T, H> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key_fn: self.key_fn.clone(),
            classifier: self.classifier.clone(),
            reads: PhantomData,
        }
    }
}

impl<S: fmt::Debug, K, C, T, H> fmt::Debug for RateLimit<S, K, C, T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("config", &self.shared.limiter.config)
            .field("key_fn", &std::any::type_name::<K>())
            .field("classifier", &std::any::type_name::<C>())
            .field("stats", &self.stats())
            .finish()
    }
}

impl<S, K, C, T, H> RateLimit<S, K, C, T, H> {
    pub(crate) fn from_parts(inner: S, shared: Arc<Shared>, key_fn: K, classifier: C) -> Self {
        RateLimit {
            inner,
            shared,
            key_fn,
            classifier,
            reads: PhantomData,
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

    /// A handle on the layer's state, the same as
    /// [`RateLimitLayer::handle`](crate::RateLimitLayer::handle).
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle::new(self.shared.clone())
    }

    /// The layer's counters: the same as `self.handle().stats()`.
    pub fn stats(&self) -> RateLimitStats {
        self.shared.stats()
    }

    #[cold]
    #[inline(never)]
    fn reject<Req, F>(
        &self,
        rejection: Rejection,
        retry_after: Option<Duration>,
        error: BoxError,
    ) -> ResponseFuture<S, Req, C, T, H>
    where
        S: Service<Req, Future = F>,
    {
        self.shared.limiter.observe.rejected(rejection, retry_after);
        ResponseFuture::rejected(error)
    }
}

impl<S, K, C, T, H, Req> Service<Req> for RateLimit<S, K, C, T, H>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    K: KeyFn<Req>,
    C: Classify<S::Response, S::Error> + Clone,
    T: TokenReader<Req, S::Response>,
    H: HeaderReader<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, C, T, H>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Limits depend on the request (key, cost), so waiting happens in the response future.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let shared = &*self.shared;
        let limiter = &shared.limiter;
        let cost = match limiter.config.tokens {
            Some(quota) => {
                let cost = T::estimate(&request);
                if cost > quota.limit() {
                    return self.reject(
                        Rejection::TooLarge,
                        None,
                        too_large(cost, quota.limit(), quota.window()),
                    );
                }
                cost
            }
            None => 0,
        };
        let now = limiter.now();
        let key = if self.key_fn.single() {
            shared.single.clone()
        } else {
            match shared.keys.get(self.key_fn.key(&request), limiter, now) {
                Some(key) => key,
                None => {
                    let pause = limiter.config.default_pause;
                    return self.reject(
                        Rejection::KeysFull,
                        Some(pause),
                        Rejection::KeysFull.error(pause),
                    );
                }
            }
        };
        // The call's own deadline, if an outer layer set one: no wait may pass it.
        let deadline_left = Deadline::current().map(Deadline::time_left);
        match key.start(limiter, now, cost, deadline_left) {
            Start::Now(admission) => {
                let permit = Permit::new(key, cost, admission);
                let future = self.inner.call(request);
                ResponseFuture::calling(future, permit, self.classifier.clone())
            }
            Start::Queued(id, waiting) => {
                // A queued call waits at most `max_wait`, and never past its deadline.
                let max_wait = limiter.config.max_wait;
                let (max_wait, expiry) = match deadline_left {
                    Some(left) if left < max_wait => (left, Rejection::Deadline),
                    _ => (max_wait, Rejection::MaxWait),
                };
                let expires =
                    now.saturating_add(u64::try_from(max_wait.as_nanos()).unwrap_or(u64::MAX / 4));
                self.wait(key, id, waiting, cost, (expires, expiry), request)
            }
            Start::Rejected(rejection, wait) => {
                self.reject(rejection, Some(wait), rejection.error(wait))
            }
        }
    }
}

impl<S, K, C, T, H> RateLimit<S, K, C, T, H> {
    /// The slow path of `call`, out of line so the fast one stays small.
    #[cold]
    #[inline(never)]
    fn wait<Req>(
        &mut self,
        key: Arc<KeyState>,
        id: u64,
        waiting: bool,
        cost: u64,
        expires: (u64, Rejection),
        request: Req,
    ) -> ResponseFuture<S, Req, C, T, H>
    where
        S: Service<Req> + Clone,
        C: Clone,
    {
        let limiter = &self.shared.limiter;
        let ticket = Ticket::new(key, limiter.clone(), id, cost, waiting);
        // The readied service goes with the waiting call, the tower way.
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        ResponseFuture::waiting(ticket, expires, ready, request, self.classifier.clone())
    }
}
