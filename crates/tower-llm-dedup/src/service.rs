//! The [`Dedup`] service.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_core::Stream;
use tower_llm_core::{BoxError, Classify};
use tower_service::Service;

use crate::flight::{Joined, Step};
use crate::future::ResponseFuture;
use crate::handle::DedupHandle;
use crate::layer::Shared;
use crate::observe::RemoteOp;
use crate::policy::{CacheRule, OnError, RequestKeys};
use crate::remote::Lookup;

/// Coalesces identical concurrent requests and serves cached answers; built by
/// [`DedupLayer`](crate::DedupLayer). Clones share the cache and the calls in flight.
pub struct Dedup<S, Res, K, R, C> {
    inner: S,
    shared: Arc<Shared<Res, K, R, C>>,
}

impl<S, Res, K, R, C> Dedup<S, Res, K, R, C> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<Res, K, R, C>>) -> Self {
        Dedup { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The handle of the layer value that made this service (see [`DedupHandle`]).
    pub fn handle(&self) -> DedupHandle {
        self.shared.handle.clone()
    }
}

impl<S: Clone, Res, K, R, C> Clone for Dedup<S, Res, K, R, C> {
    fn clone(&self) -> Self {
        Dedup {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, Res, K, R, C> fmt::Debug for Dedup<S, Res, K, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dedup")
            .field("inner", &self.inner)
            .field("stats", &self.shared.observe.snapshot())
            .finish_non_exhaustive()
    }
}

impl<S, Req, Res, K, R, C> Service<Req> for Dedup<S, Res, K, R, C>
where
    S: Service<Req, Response = Res> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
    Res: Clone + Send + Sync + 'static,
    K: RequestKeys<Req> + Send + Sync + 'static,
    R: CacheRule<Req> + Send + Sync + 'static,
    C: Classify<Res, BoxError> + Send + Sync + 'static,
{
    type Response = Res;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, Req, Res>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let shared = &self.shared;
        shared.observe.request();
        let Some(key) = shared.keys.key(&request) else {
            shared.observe.bypassed();
            shared.observe.inner_call();
            return ResponseFuture::direct(self.inner.call(request));
        };
        let cache = shared.cache.as_ref();
        // Read before the lookup: if it is unchanged when the in-flight map is locked, nothing
        // was stored meanwhile and the cache need not be asked twice.
        let stored = cache.map(|c| c.stored()).unwrap_or(0);
        if let Some(value) = cache.and_then(|c| c.get(&key)) {
            shared.observe.hit();
            return ResponseFuture::ready(Ok(value));
        }
        let reads_error = shared.on_error == OnError::Share;
        let joined = shared.in_flight.join(key, reads_error, || {
            cache.and_then(|c| c.get_if_stored_since(&key, stored))
        });
        let mut leader = match joined {
            Joined::Cached(value) => {
                shared.observe.hit();
                return ResponseFuture::ready(Ok(value));
            }
            Joined::Waiter(subscription) => {
                shared.observe.coalesced();
                let own_call = match shared.on_error {
                    OnError::Share => None,
                    OnError::OwnCall => Some((self.inner.clone(), request)),
                };
                return ResponseFuture::waiting(subscription, own_call, shared.observe.clone());
            }
            Joined::Leader(subscription) => subscription,
        };
        shared.observe.miss();
        let cacheable = cache.is_some() && shared.rule.is_cacheable(&request);
        let from_remote = Arc::new(AtomicBool::new(false));
        let producer: crate::flight::Producer<Res> = match shared.remote.clone() {
            None => {
                shared.observe.inner_call();
                Box::pin(OneCall {
                    future: Some(self.inner.call(request)),
                })
            }
            Some(remote) => {
                // The ready service goes into the call; a clone takes its place here, to be
                // made ready again before the next call.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                let observe = shared.observe.clone();
                let from_remote = from_remote.clone();
                Box::pin(futures_util::stream::once(async move {
                    match remote.get(key).await {
                        Lookup::Hit(value) => {
                            observe.remote_hit();
                            from_remote.store(true, Ordering::Relaxed);
                            return Ok(Step::Item(value));
                        }
                        Lookup::Miss => {}
                        Lookup::Failed(failure) => observe.remote_error(RemoteOp::Get, failure),
                    }
                    observe.inner_call();
                    ready
                        .call(request)
                        .await
                        .map(Step::Item)
                        .map_err(Into::into)
                }))
            }
        };
        let completion_shared = self.shared.clone();
        leader.start(
            producer,
            Box::new(move |items: &[Res]| {
                let Some(value) = items.first() else { return };
                if !cacheable
                    || !completion_shared
                        .classifier
                        .classify(Ok::<&Res, &BoxError>(value))
                        .is_success()
                {
                    return;
                }
                let Some(cache) = &completion_shared.cache else {
                    return;
                };
                let ttl = cache.ttl_of(value);
                if ttl.is_zero() {
                    return;
                }
                if let Some(remote) = &completion_shared.remote
                    && !from_remote.load(Ordering::Relaxed)
                {
                    remote.put(key, value, ttl, completion_shared.observe.clone());
                }
                cache.insert(key, value.clone(), ttl);
            }),
        );
        ResponseFuture::waiting(leader, None, shared.observe.clone())
    }
}

pin_project_lite::pin_project! {
    /// The inner call as a one-item stream, for a flight to drive.
    struct OneCall<F> {
        #[pin]
        future: Option<F>,
    }
}

impl<F, T, E> Stream for OneCall<F>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Item = Result<Step<T>, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        let Some(future) = this.future.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        let output = std::task::ready!(future.poll(cx));
        this.future.set(None);
        Poll::Ready(Some(output.map(Step::Item).map_err(Into::into)))
    }
}
