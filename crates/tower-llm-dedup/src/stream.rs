//! Dedup for streaming responses: one upstream stream, replayed to every caller.
//!
//! A streaming response is recognised by its type: the inner service's response is a
//! [`Stream`] of `Result<T, E>` chunks (an SSE event, a token delta: any `T: Clone`). The layer
//! answers with a [`ReplayStream<T>`]:
//!
//! - The response future resolves when the inner call has produced its stream (its head), so
//!   an error before the first chunk (a 429, a refused connection) is the future's error, as a
//!   retry layer further out expects.
//! - Every chunk is kept in the flight's replay buffer: a caller that joins late receives the
//!   chunks already produced, then the rest, in order.
//! - When the stream completes without error and the request is cacheable, its chunks are
//!   cached; a cache hit replays them chunk by chunk (not as one blob).
//! - An error mid-stream reaches every subscriber (after the chunks before it) and nothing is
//!   cached.
//! - With [`OnError::OwnCall`], callers that joined a call which failed before its first chunk
//!   make their own call; after the first chunk, the error is shared (a stream cannot be
//!   restarted halfway).
//!
//! The Redis backend is not available for streams, and there is no classifier: a stream that
//! ends without error is a success.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use futures_util::{StreamExt, stream};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_llm_core::BoxError;
//! use tower_llm_dedup::StreamDedupLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let layer = StreamDedupLayer::new(Duration::from_secs(60));
//! let mut service = ServiceBuilder::new().layer(layer).service(service_fn(|prompt: String| async move {
//!     let chunks = vec![Ok::<_, BoxError>(format!("{prompt}: ")), Ok("four".to_string())];
//!     Ok::<_, BoxError>(stream::iter(chunks))
//! }));
//! let replay = service.ready().await?.call("2 + 2?".to_string()).await?;
//! let chunks: Vec<String> = replay.map(|chunk| chunk.expect("no error")).collect().await;
//! assert_eq!(chunks, ["2 + 2?: ", "four"]);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;
use tower_layer::Layer;
use tower_llm_core::{BoxError, FingerprintKey, RequestKey};
use tower_service::Service;

use crate::cache::MemoryCache;
use crate::config::{Knobs, Parts, knob_methods};
use crate::error::ConfigError;
use crate::flight::{InFlight, Joined, Next, Producer, Step, Subscription};
use crate::handle::DedupHandle;
use crate::observe::Observe;
use crate::policy::{
    CacheAll, CacheRule, DeterministicOnly, FingerprintKeys, OnError, RequestKeys,
};

type BoxChunks<T> = Pin<Box<dyn Stream<Item = Result<T, BoxError>> + Send>>;

struct StreamShared<T, K, R> {
    keys: K,
    rule: R,
    cache: Option<Arc<MemoryCache<Arc<[T]>>>>,
    in_flight: Arc<InFlight<T>>,
    observe: Observe,
    handle: DedupHandle,
    on_error: OnError,
}

/// [`DedupLayer`](crate::DedupLayer) for streaming responses: see the [module docs](self).
///
/// Built with [`StreamDedupLayer::new`] or [`StreamDedupLayer::builder`]. Like the
/// [`DedupLayer`](crate::DedupLayer), every service one layer value makes shares its cache,
/// its calls in flight and its counters ([`handle`](Self::handle)).
pub struct StreamDedupLayer<T, K = FingerprintKeys, R = DeterministicOnly> {
    shared: Arc<StreamShared<T, K, R>>,
}

impl<T, K, R> Clone for StreamDedupLayer<T, K, R> {
    fn clone(&self) -> Self {
        StreamDedupLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<T, K, R> fmt::Debug for StreamDedupLayer<T, K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamDedupLayer")
            .field("name", &self.shared.observe.name())
            .field("cache", &self.shared.cache.is_some())
            .field("on_error", &self.shared.on_error)
            .finish_non_exhaustive()
    }
}

impl<T: Clone + Send + Sync + 'static> StreamDedupLayer<T> {
    /// Coalescing plus a cache of up to [`DEFAULT_MAX_ENTRIES`](crate::DEFAULT_MAX_ENTRIES)
    /// streams kept for `ttl` (a zero `ttl` keeps nothing: coalescing only), keyed by core's
    /// fingerprint, storing only streams answering deterministic requests.
    pub fn new(ttl: Duration) -> Self {
        StreamDedupBuilder::with_knobs(Knobs::with_ttl(ttl)).assemble()
    }

    /// A builder with every knob.
    pub fn builder() -> StreamDedupBuilder<T> {
        StreamDedupBuilder::with_knobs(Knobs::default())
    }
}

impl<T, K, R> StreamDedupLayer<T, K, R> {
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

/// Builds a [`StreamDedupLayer`]; [`build`](StreamDedupBuilder::build) checks the knobs.
///
/// The knobs are the [`DedupBuilder`](crate::DedupBuilder)'s, less the two that do
/// not apply to streams: the classifier (a stream that ends without error is a success) and
/// Redis. The weigher and the per-entry TTL see a whole stream's chunks, `Arc<[T]>`.
pub struct StreamDedupBuilder<T, K = FingerprintKeys, R = DeterministicOnly> {
    keys: K,
    rule: R,
    knobs: Knobs<Arc<[T]>>,
}

impl<T, K: fmt::Debug, R: fmt::Debug> fmt::Debug for StreamDedupBuilder<T, K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamDedupBuilder")
            .field("keys", &self.keys)
            .field("rule", &self.rule)
            .field("cache_enabled", &self.knobs.cache_enabled)
            .field("ttl", &self.knobs.ttl)
            .field("time_to_idle", &self.knobs.time_to_idle)
            .field("on_error", &self.knobs.on_error)
            .finish_non_exhaustive()
    }
}

impl<T> StreamDedupBuilder<T> {
    fn with_knobs(knobs: Knobs<Arc<[T]>>) -> Self {
        StreamDedupBuilder {
            keys: FingerprintKeys::default(),
            rule: DeterministicOnly,
            knobs,
        }
    }
}

impl<T, R> StreamDedupBuilder<T, FingerprintKeys, R> {
    /// The secret key of the fingerprint hash (default: random per process).
    pub fn fingerprint_key(mut self, key: FingerprintKey) -> Self {
        self.keys = FingerprintKeys::new(key);
        self
    }
}

impl<T, K, R> StreamDedupBuilder<T, K, R> {
    /// Keys requests with your function instead of core's fingerprint. Returning `None` sends
    /// that request straight through (bypass). The key must cover everything that changes the
    /// answer, including the caller's identity: requests with equal keys share answers.
    pub fn key_fn<Req, F>(self, key_fn: F) -> StreamDedupBuilder<T, F, R>
    where
        F: Fn(&Req) -> Option<RequestKey>,
    {
        StreamDedupBuilder {
            keys: key_fn,
            rule: self.rule,
            knobs: self.knobs,
        }
    }

    /// Decides with `rule` which streams may be stored (default [`DeterministicOnly`]); a
    /// closure `Fn(&Req) -> bool` works. Requests that are not cacheable are still coalesced.
    pub fn cache_rule<R2>(self, rule: R2) -> StreamDedupBuilder<T, K, R2> {
        StreamDedupBuilder {
            keys: self.keys,
            rule,
            knobs: self.knobs,
        }
    }

    /// Stores every stream that ends without error, sampled or not.
    pub fn cache_all(self) -> StreamDedupBuilder<T, K, CacheAll> {
        self.cache_rule(CacheAll)
    }

    knob_methods!(Arc<[T]>);

    /// Checks the knobs and builds the layer.
    pub fn build(self) -> Result<StreamDedupLayer<T, K, R>, ConfigError>
    where
        T: Clone + Send + Sync + 'static,
    {
        self.knobs.check()?;
        Ok(self.assemble())
    }

    fn assemble(self) -> StreamDedupLayer<T, K, R>
    where
        T: Clone + Send + Sync + 'static,
    {
        let Parts {
            observe,
            cache,
            handle,
            on_error,
        } = self.knobs.assemble(Duration::ZERO);
        StreamDedupLayer {
            shared: Arc::new(StreamShared {
                keys: self.keys,
                rule: self.rule,
                cache,
                in_flight: Arc::new(InFlight::default()),
                observe,
                handle,
                on_error,
            }),
        }
    }
}

impl<S, T, K, R> Layer<S> for StreamDedupLayer<T, K, R> {
    type Service = StreamDedup<S, T, K, R>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamDedup {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service built by [`StreamDedupLayer`]; clones share its cache and calls in flight.
pub struct StreamDedup<S, T, K, R> {
    inner: S,
    shared: Arc<StreamShared<T, K, R>>,
}

impl<S, T, K, R> StreamDedup<S, T, K, R> {
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

impl<S: Clone, T, K, R> Clone for StreamDedup<S, T, K, R> {
    fn clone(&self) -> Self {
        StreamDedup {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, T, K, R> fmt::Debug for StreamDedup<S, T, K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamDedup")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Req, St, T, E, K, R> Service<Req> for StreamDedup<S, T, K, R>
where
    S: Service<Req, Response = St> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    St: Stream<Item = Result<T, E>> + Send + 'static,
    E: Into<BoxError>,
    T: Clone + Send + Sync + 'static,
    K: RequestKeys<Req>,
    R: CacheRule<Req>,
{
    type Response = ReplayStream<T>;
    type Error = BoxError;
    type Future = StreamResponseFuture<S::Future, S, Req, T>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let shared = &self.shared;
        shared.observe.request();
        let Some(key) = shared.keys.key(&request) else {
            shared.observe.bypassed();
            shared.observe.inner_call();
            return StreamResponseFuture::direct(self.inner.call(request));
        };
        let cache = shared.cache.as_ref();
        // Read before the lookup: if it is unchanged when the in-flight map is locked, nothing
        // was stored meanwhile and the cache need not be asked twice.
        let stored = cache.map(|c| c.stored()).unwrap_or(0);
        if let Some(chunks) = cache.and_then(|c| c.get(&key)) {
            shared.observe.hit();
            return StreamResponseFuture::ready(Ok(ReplayStream::cached(chunks)));
        }
        let reads_error = shared.on_error == OnError::Share;
        let mut leader = match shared.in_flight.join(key, reads_error, || {
            cache.and_then(|c| c.get_if_stored_since(&key, stored))
        }) {
            Joined::Cached(chunks) => {
                shared.observe.hit();
                return StreamResponseFuture::ready(Ok(ReplayStream::cached(chunks)));
            }
            Joined::Waiter(subscription) => {
                shared.observe.coalesced();
                let own_call = match shared.on_error {
                    OnError::Share => None,
                    OnError::OwnCall => Some((self.inner.clone(), request)),
                };
                return StreamResponseFuture::waiting(
                    subscription,
                    own_call,
                    shared.observe.clone(),
                );
            }
            Joined::Leader(subscription) => subscription,
        };
        shared.observe.miss();
        shared.observe.inner_call();
        let cacheable = cache.is_some() && shared.rule.is_cacheable(&request);
        let producer: Producer<T> = Box::pin(StreamCall::Calling {
            future: self.inner.call(request),
        });
        let cache = shared.cache.clone();
        leader.start(
            producer,
            Box::new(move |chunks: &[T]| {
                if let Some(cache) = cache.filter(|_| cacheable) {
                    let chunks: Arc<[T]> = chunks.iter().cloned().collect();
                    let ttl = cache.ttl_of(&chunks);
                    cache.insert(key, chunks, ttl);
                }
            }),
        );
        StreamResponseFuture::waiting(leader, None, shared.observe.clone())
    }
}

pin_project_lite::pin_project! {
    /// The inner call, then its stream, as the steps a flight replays.
    #[project = StreamCallProj]
    enum StreamCall<F, St> {
        Calling { #[pin] future: F },
        Streaming { #[pin] stream: St },
        Ended,
    }
}

impl<F, St, T, E, E2> Stream for StreamCall<F, St>
where
    F: Future<Output = Result<St, E>>,
    E: Into<BoxError>,
    St: Stream<Item = Result<T, E2>>,
    E2: Into<BoxError>,
{
    type Item = Result<Step<T>, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.as_mut().project() {
            StreamCallProj::Calling { future } => match ready!(future.poll(cx)) {
                Ok(stream) => {
                    self.set(StreamCall::Streaming { stream });
                    Poll::Ready(Some(Ok(Step::Started)))
                }
                Err(error) => {
                    self.set(StreamCall::Ended);
                    Poll::Ready(Some(Err(error.into())))
                }
            },
            StreamCallProj::Streaming { stream } => match ready!(stream.poll_next(cx)) {
                Some(Ok(chunk)) => Poll::Ready(Some(Ok(Step::Item(chunk)))),
                Some(Err(error)) => {
                    self.set(StreamCall::Ended);
                    Poll::Ready(Some(Err(error.into())))
                }
                None => {
                    self.set(StreamCall::Ended);
                    Poll::Ready(None)
                }
            },
            StreamCallProj::Ended => Poll::Ready(None),
        }
    }
}

/// A response stream shared with other callers, replayed from the cache, or passed through.
/// Yields the chunks in order, then ends, or yields one error and ends.
pub struct ReplayStream<T> {
    source: Replay<T>,
}

enum Replay<T> {
    Cached { chunks: Arc<[T]>, next: usize },
    Live { subscription: Subscription<T> },
    Direct { stream: BoxChunks<T> },
    Ended,
}

impl<T> ReplayStream<T> {
    fn cached(chunks: Arc<[T]>) -> Self {
        ReplayStream {
            source: Replay::Cached { chunks, next: 0 },
        }
    }

    /// Whether this stream replays a cached answer.
    pub fn is_cached(&self) -> bool {
        matches!(self.source, Replay::Cached { .. })
    }
}

impl<T> fmt::Debug for ReplayStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Replay::Cached { .. } => "cached",
            Replay::Live { .. } => "live",
            Replay::Direct { .. } => "direct",
            Replay::Ended => "ended",
        };
        f.debug_struct("ReplayStream")
            .field("source", &source)
            .finish()
    }
}

impl<T: Clone> Stream for ReplayStream<T> {
    type Item = Result<T, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = match &mut this.source {
            Replay::Cached { chunks, next } => {
                let chunk = chunks.get(*next).cloned();
                *next += 1;
                chunk.map(Ok)
            }
            Replay::Live { subscription } => loop {
                match ready!(subscription.poll_next(cx)) {
                    Next::Started => {}
                    Next::Item(chunk) => break Some(Ok(chunk)),
                    Next::Done => break None,
                    Next::Failed(error) => break Some(Err(error)),
                }
            },
            Replay::Direct { stream } => ready!(stream.as_mut().poll_next(cx)),
            Replay::Ended => None,
        };
        if matches!(item, None | Some(Err(_))) {
            this.source = Replay::Ended;
        }
        Poll::Ready(item)
    }
}

pin_project_lite::pin_project! {
    /// Resolves to a [`ReplayStream`] once the shared call has its stream, or to the error
    /// that came before it.
    pub struct StreamResponseFuture<F, S, Req, T> {
        #[pin]
        state: State<F, S, Req, T>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, S, Req, T> {
        Ready { result: Option<Result<ReplayStream<T>, BoxError>> },
        Direct { #[pin] future: F },
        Waiting {
            subscription: Option<Subscription<T>>,
            own_call: Option<(S, Req)>,
            observe: Observe,
        },
        OwnCall { service: S, request: Option<Req> },
    }
}

impl<F, S, Req, T> StreamResponseFuture<F, S, Req, T> {
    fn ready(result: Result<ReplayStream<T>, BoxError>) -> Self {
        StreamResponseFuture {
            state: State::Ready {
                result: Some(result),
            },
        }
    }

    fn direct(future: F) -> Self {
        StreamResponseFuture {
            state: State::Direct { future },
        }
    }

    fn waiting(
        subscription: Subscription<T>,
        own_call: Option<(S, Req)>,
        observe: Observe,
    ) -> Self {
        StreamResponseFuture {
            state: State::Waiting {
                subscription: Some(subscription),
                own_call,
                observe,
            },
        }
    }
}

impl<F, S, Req, T> fmt::Debug for StreamResponseFuture<F, S, Req, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamResponseFuture")
            .finish_non_exhaustive()
    }
}

impl<F, S, Req, St, T, E, E2> Future for StreamResponseFuture<F, S, Req, T>
where
    F: Future<Output = Result<St, E>>,
    E: Into<BoxError>,
    S: Service<Req, Response = St, Error = E, Future = F>,
    St: Stream<Item = Result<T, E2>> + Send + 'static,
    E2: Into<BoxError>,
    T: Clone,
{
    type Output = Result<ReplayStream<T>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Ready { result } => {
                    return Poll::Ready(
                        result
                            .take()
                            .expect("StreamResponseFuture polled after completion"),
                    );
                }
                StateProj::Direct { future } => {
                    let stream = ready!(future.poll(cx)).map_err(Into::into)?;
                    let stream: BoxChunks<T> = Box::pin(futures_util::StreamExt::map(
                        stream,
                        |chunk: Result<T, E2>| chunk.map_err(Into::into),
                    ));
                    this.state.set(State::Ready { result: None });
                    return Poll::Ready(Ok(ReplayStream {
                        source: Replay::Direct { stream },
                    }));
                }
                StateProj::Waiting {
                    subscription,
                    own_call,
                    observe,
                } => {
                    let Some(live) = subscription.as_mut() else {
                        return Poll::Ready(Err(
                            "StreamResponseFuture polled after completion".into()
                        ));
                    };
                    match ready!(live.poll_next(cx)) {
                        // The head is here: the rest is the stream's to read, from chunk one.
                        Next::Started | Next::Item(_) | Next::Done => {
                            let Some(subscription) = subscription.take() else {
                                continue;
                            };
                            return Poll::Ready(Ok(ReplayStream {
                                source: Replay::Live { subscription },
                            }));
                        }
                        Next::Failed(error) => match own_call.take() {
                            Some((service, request)) => {
                                observe.inner_call();
                                this.state.set(State::OwnCall {
                                    service,
                                    request: Some(request),
                                });
                            }
                            None => {
                                this.state.set(State::Ready { result: None });
                                return Poll::Ready(Err(error));
                            }
                        },
                    }
                }
                StateProj::OwnCall { service, request } => {
                    ready!(service.poll_ready(cx)).map_err(Into::into)?;
                    let Some(request) = request.take() else {
                        return Poll::Ready(Err("own call already made".into()));
                    };
                    let future = service.call(request);
                    this.state.set(State::Direct { future });
                }
            }
        }
    }
}
