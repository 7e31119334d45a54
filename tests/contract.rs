//! The layer contract of `docs/architecture.md`, checked the same way over every layer:
//!
//! 1. two stacks made from one layer value share its state;
//! 2. `handle().stats()` reads that state after the stacks are boxed;
//! 3. a dropped future releases what it held;
//! 4. refusals come from `call` (an immediately-ready error), never from `poll_ready`;
//! 5. invalid configuration is a `ConfigError` that names its knob.
//!
//! Every stack sits over a `service_fn` on `String`s: the contract holds with no trait on the
//! request or the response.
//!
//! The layers: rate limit, breaker (one and per key), retry, core's deadline, batch, dedup
//! (whole answers and streams), and race's hedge, race, fallback, gather, vote and route. A
//! layer that refuses nothing of its own (retry, dedup) is checked for rule 4 by its
//! `poll_ready` staying ready after its calls failed or were shared; a layer whose every
//! setting is valid (deadline: any timeout; race, fallback, gather: plain methods, no
//! `build()`) has no rule 5 to check.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Semaphore;
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_llm_core::{ConfigError, FailureKind, RateLimited, UpstreamError};

/// The upstream every stack wraps: counts its calls and those still in flight (a call leaves
/// when it answers or is dropped), and answers each once `gate` lets it (a closed gate holds
/// calls in flight for as long as a test needs).
#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    fail: bool,
}

/// Counts one call in flight for as long as it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Upstream {
    fn open() -> Self {
        Upstream {
            calls: Arc::default(),
            in_flight: Arc::default(),
            gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            fail: false,
        }
    }

    fn closed() -> Self {
        Upstream {
            gate: Arc::new(Semaphore::new(0)),
            ..Upstream::open()
        }
    }

    fn failing() -> Self {
        Upstream {
            fail: true,
            ..Upstream::open()
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn release(&self, calls: usize) {
        self.gate.add_permits(calls);
    }

    fn service(
        &self,
    ) -> impl Service<String, Response = String, Error = BoxError, Future: Send> + Clone + Send + 'static
    {
        let upstream = self.clone();
        service_fn(move |request: String| {
            let upstream = upstream.clone();
            upstream.calls.fetch_add(1, Ordering::SeqCst);
            let in_flight = InFlight::enter(&upstream.in_flight);
            async move {
                let _in_flight = in_flight;
                upstream.gate.acquire().await?.forget();
                if upstream.fail {
                    let error = UpstreamError::new(FailureKind::ServerError, "upstream failed");
                    Err::<String, BoxError>(error.into())
                } else {
                    Ok(format!("answer to {request}"))
                }
            }
        })
    }
}

type Boxed = BoxCloneService<String, String, BoxError>;

fn boxed<S>(service: S) -> Boxed
where
    S: Service<String, Response = String, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    BoxCloneService::new(service)
}

/// `count` services over one upstream, for the layers over a list of services.
fn legs(
    upstream: &Upstream,
    count: usize,
) -> Vec<
    impl Service<String, Response = String, Error = BoxError, Future: Send> + Clone + Send + 'static,
> {
    (0..count).map(|_| upstream.service()).collect()
}

/// Rule 4: whatever the layer will refuse, `poll_ready` says ready.
fn assert_ready(service: &mut Boxed) {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))),
        "poll_ready must not refuse"
    );
}

/// Polls a future once: `Some` if it finished.
fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match future.poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// Rule 4: `call` on a ready service refuses with an error that is ready at its first poll.
fn assert_refused_at_once(service: &mut Boxed, request: &str) -> BoxError {
    assert_ready(service);
    let future = pin!(service.call(request.to_owned()));
    match poll_once(future) {
        Some(Err(error)) => error,
        Some(Ok(answer)) => panic!("answered {answer:?} where a refusal was due"),
        None => panic!("the refusal must be ready at once"),
    }
}

/// Lets spawned tasks and timers run (the clock is paused in every test).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Rule 5.
fn assert_names_knob(result: Result<impl Sized, ConfigError>, knob: &str) {
    let Err(error) = result else {
        panic!("an invalid {knob} was accepted")
    };
    assert_eq!(error.knob(), knob, "{error}");
    assert!(error.to_string().contains(knob), "{error}");
}

mod ratelimit {
    use super::*;
    use tower_llm_ratelimit::RateLimitLayer;

    #[tokio::test(start_paused = true)]
    async fn one_layer_value_is_one_limit_across_stacks() {
        let upstream = Upstream::closed();
        let layer = RateLimitLayer::builder()
            .concurrency(1)
            .max_queue(0)
            .build()
            .unwrap();
        let mut whole = boxed(layer.layer(upstream.service()));
        let mut streaming = boxed(layer.layer(upstream.service()));
        let handle = layer.handle();

        // A call through the first stack holds the one slot...
        let held = tokio::spawn(whole.clone().oneshot("a".into()));
        settle().await;
        assert_eq!(upstream.calls(), 1);
        // ...so the second stack refuses at once, from `call`.
        let error = assert_refused_at_once(&mut streaming, "b");
        assert!(error.is::<RateLimited>(), "{error}");
        let stats = handle.stats();
        assert_eq!((stats.admitted, stats.rejected), (1, 1));

        // Dropping the call frees its slot for either stack.
        held.abort();
        settle().await;
        assert_eq!(upstream.in_flight(), 0);
        upstream.release(1);
        assert_eq!(
            whole.ready().await.unwrap().call("c".into()).await.unwrap(),
            "answer to c"
        );
        assert_eq!(handle.stats().admitted, 2);
    }

    #[test]
    fn invalid_configuration_names_its_knob() {
        assert_names_knob(
            RateLimitLayer::builder().concurrency(0).build(),
            "concurrency",
        );
    }
}

mod breaker {
    use super::*;
    use tower_llm_breaker::{CircuitBreakerLayer, State};

    #[tokio::test(start_paused = true)]
    async fn one_layer_value_is_one_breaker_across_stacks() {
        let upstream = Upstream::failing();
        let layer = CircuitBreakerLayer::builder()
            .consecutive_failures(2)
            .cooldown(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut first = boxed(layer.layer(upstream.service()));
        let mut second = boxed(layer.layer(upstream.service()));
        let handle = layer.handle();

        for request in ["a", "b"] {
            first
                .ready()
                .await
                .unwrap()
                .call(request.into())
                .await
                .unwrap_err();
        }
        assert_eq!(handle.state(), State::Open);
        // The second stack meets the breaker the first one opened, and refuses from `call`.
        assert_refused_at_once(&mut second, "c");
        assert_eq!(upstream.calls(), 2);
        let stats = handle.stats();
        assert_eq!((stats.failures, stats.rejected), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_frees_the_probe_slot() {
        let upstream = Upstream::closed();
        let layer = CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .cooldown(Duration::from_secs(10))
            .probes(1)
            .build()
            .unwrap();
        let failing = Upstream::failing();
        let mut opener = boxed(layer.layer(failing.service()));
        opener
            .ready()
            .await
            .unwrap()
            .call("a".into())
            .await
            .unwrap_err();
        assert_eq!(layer.handle().state(), State::Open);
        tokio::time::advance(Duration::from_secs(11)).await;

        let mut probing = boxed(layer.layer(upstream.service()));
        let probe = tokio::spawn(probing.clone().oneshot("probe".into()));
        settle().await;
        assert_eq!(upstream.calls(), 1, "the probe went out");
        // While the probe is out, no second call goes.
        assert_refused_at_once(&mut probing, "second");
        probe.abort();
        settle().await;
        // Its slot is free again: the next call is the probe, and closes the breaker.
        upstream.release(1);
        probing
            .ready()
            .await
            .unwrap()
            .call("again".into())
            .await
            .unwrap();
        assert_eq!(upstream.calls(), 2);
        assert_eq!(layer.handle().state(), State::Closed);
    }

    #[test]
    fn invalid_configuration_names_its_knob() {
        assert_names_knob(
            CircuitBreakerLayer::builder().failure_rate(1.5).build(),
            "failure_rate",
        );
    }
}

mod retry {
    use super::*;
    use tower_llm_retry::RetryLayer;

    #[tokio::test(start_paused = true)]
    async fn one_layer_value_is_one_set_of_counts_across_stacks() {
        let upstream = Upstream::failing();
        let layer = RetryLayer::builder().max_attempts(3).build().unwrap();
        let first = boxed(layer.layer(upstream.service()));
        let second = boxed(layer.layer(upstream.service()));
        let handle = layer.handle();
        let mut probe = first.clone();
        first.oneshot("a".into()).await.unwrap_err();
        second.oneshot("b".into()).await.unwrap_err();
        // Retry refuses nothing of its own; after giving up it is still ready.
        assert_ready(&mut probe);
        let stats = handle.stats();
        assert_eq!(stats.requests, 2);
        assert_eq!(upstream.calls(), 6, "three attempts each");
        assert_eq!(stats.attempts(), 6);
        assert_eq!(stats.give_ups.attempts_exhausted, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_call_makes_no_more_attempts() {
        let upstream = Upstream::failing();
        let layer = RetryLayer::builder().max_attempts(5).build().unwrap();
        let service = boxed(layer.layer(upstream.service()));
        let call = tokio::spawn(service.oneshot("a".into()));
        settle().await;
        let sent = upstream.calls();
        assert!(sent >= 1);
        call.abort();
        tokio::time::advance(Duration::from_secs(600)).await;
        settle().await;
        assert_eq!(upstream.calls(), sent, "no attempt after the caller left");
    }

    #[test]
    fn invalid_configuration_names_its_knob() {
        assert_names_knob(
            RetryLayer::builder().max_attempts(0).build(),
            "max_attempts",
        );
    }
}

mod deadline {
    use super::*;
    use tokio::time::Instant;
    use tower_llm_core::{Deadline, DeadlineLayer};

    #[tokio::test(start_paused = true)]
    async fn one_layer_value_is_one_set_of_counts_across_stacks() {
        let upstream = Upstream::closed();
        let layer = DeadlineLayer::new(Duration::from_secs(5));
        let first = boxed(layer.layer(upstream.service()));
        let mut second = boxed(layer.layer(upstream.service()));
        let handle = layer.handle();

        // The first stack's call is cut at its deadline, and what the upstream held for it
        // is released.
        let started = Instant::now();
        let cut = tokio::spawn(first.oneshot("a".into()));
        settle().await;
        assert_eq!(upstream.in_flight(), 1);
        tokio::time::advance(Duration::from_millis(4_999)).await;
        settle().await;
        assert!(!cut.is_finished(), "not cut before its deadline");
        tokio::time::advance(Duration::from_millis(1)).await;
        let error = cut.await.unwrap().unwrap_err();
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(5),
            "cut at its deadline"
        );
        assert_eq!(classify(&error), FailureKind::Timeout, "{error}");
        assert_eq!(upstream.in_flight(), 0);
        // The second stack refuses a call whose deadline has passed, from `call`, without
        // sending it.
        let error = Deadline::at(Instant::now()).enter(|| assert_refused_at_once(&mut second, "b"));
        assert_eq!(classify(&error), FailureKind::Timeout, "{error}");
        assert_eq!(upstream.calls(), 1);
        let stats = handle.stats();
        assert_eq!((stats.cut, stats.refused), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_call_releases_the_upstream_and_counts_as_nothing() {
        let upstream = Upstream::closed();
        let layer = DeadlineLayer::new(Duration::from_secs(5));
        let service = boxed(layer.layer(upstream.service()));
        let call = tokio::spawn(service.oneshot("a".into()));
        settle().await;
        assert_eq!(upstream.in_flight(), 1);
        call.abort();
        settle().await;
        assert_eq!(upstream.in_flight(), 0);
        tokio::time::advance(Duration::from_secs(10)).await;
        let stats = layer.handle().stats();
        assert_eq!((stats.cut, stats.refused), (0, 0));
    }

    fn classify(error: &BoxError) -> FailureKind {
        tower_llm_core::classify_dyn_error(&**error).kind
    }
}

mod batch {
    use super::*;
    use tower_llm_batch::BatchLayer;

    /// A batching upstream: answers a batch of strings with one answer per string.
    fn batching(
        upstream: &Upstream,
    ) -> impl Service<Vec<String>, Response = Vec<String>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + 'static {
        let single = upstream.service();
        service_fn(move |batch: Vec<String>| {
            let single = single.clone();
            async move {
                let joined = single.oneshot(batch.join("+")).await?;
                Ok::<_, BoxError>(batch.iter().map(|_| joined.clone()).collect())
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn one_layer_value_is_one_worker_across_stacks() {
        let upstream = Upstream::open();
        let layer = BatchLayer::<String>::builder()
            .max_items(2)
            .max_wait(Duration::from_millis(50))
            .build()
            .unwrap();
        let first = boxed(layer.layer(batching(&upstream)));
        let second = boxed(layer.layer(batching(&upstream)));
        let (a, b) = tokio::join!(first.oneshot("a".into()), second.oneshot("b".into()));
        assert_eq!(a.unwrap(), b.unwrap(), "one batch answered both");
        assert_eq!(upstream.calls(), 1);
        let stats = layer.handle().stats();
        assert_eq!((stats.batches, stats.items_sent), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_leaves_before_the_flush_is_not_sent() {
        let upstream = Upstream::open();
        let layer = BatchLayer::<String>::builder()
            .max_items(10)
            .max_wait(Duration::from_millis(50))
            .build()
            .unwrap();
        let service = boxed(layer.layer(batching(&upstream)));
        let left = tokio::spawn(service.clone().oneshot("left".into()));
        settle().await;
        left.abort();
        settle().await;
        assert_eq!(
            service.oneshot("stayed".into()).await.unwrap(),
            "answer to stayed"
        );
        let stats = layer.handle().stats();
        assert_eq!((stats.items_sent, stats.cancelled), (1, 1));
    }

    /// `poll_ready` waits for room (backpressure) and never fails; a caller that calls
    /// anyway is refused from `call`, at once.
    #[tokio::test(start_paused = true)]
    async fn a_full_batcher_refuses_from_call() {
        let upstream = Upstream::closed();
        let layer = BatchLayer::<String>::builder()
            .max_items(1)
            .capacity(1)
            .build()
            .unwrap();
        let mut service = boxed(layer.layer(batching(&upstream)));
        let held = tokio::spawn(service.clone().oneshot("held".into()));
        settle().await;
        assert_eq!(upstream.calls(), 1);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(
            service.poll_ready(&mut cx).is_pending(),
            "no room: poll_ready waits, it does not fail"
        );
        let future = pin!(service.call("over".into()));
        let error = poll_once(future)
            .expect("refused at once")
            .expect_err("no room");
        assert!(error.is::<RateLimited>(), "{error}");
        upstream.release(1);
        assert_eq!(held.await.unwrap().unwrap(), "answer to held");
        assert_eq!(layer.handle().stats().items_sent, 1);
    }

    #[test]
    fn invalid_configuration_names_its_knob() {
        assert_names_knob(
            BatchLayer::<String>::builder().max_items(0).build(),
            "max_items",
        );
    }
}

mod hedge {
    use super::*;
    use tower_llm_race::HedgeLayer;

    #[tokio::test(start_paused = true)]
    async fn one_layer_value_is_one_record_across_stacks() {
        let upstream = Upstream::open();
        let layer = HedgeLayer::new(Duration::from_millis(100));
        let handle = layer.handle();
        let first = boxed(layer.layer(legs(&upstream, 2)));
        let second = boxed(layer.layer(legs(&upstream, 2)));
        first.oneshot("a".into()).await.unwrap();
        second.oneshot("b".into()).await.unwrap();
        let stats = handle.stats();
        assert_eq!((stats.requests, stats.answered_by_first), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_call_cancels_its_legs() {
        let upstream = Upstream::closed();
        let layer = HedgeLayer::new(Duration::from_millis(100));
        let service = boxed(layer.layer(vec![upstream.service(), upstream.service()]));
        let call = tokio::spawn(service.oneshot("a".into()));
        settle().await;
        tokio::time::advance(Duration::from_millis(150)).await;
        settle().await;
        assert_eq!(upstream.in_flight(), 2, "the hedge fired");
        call.abort();
        settle().await;
        assert_eq!(upstream.in_flight(), 0, "both legs end with the call");
    }

    /// A hedge over no service at all has nothing to send: refused from `call`, at once.
    #[tokio::test(start_paused = true)]
    async fn a_hedge_over_no_service_refuses_from_call() {
        let upstream = Upstream::open();
        let layer = HedgeLayer::new(Duration::from_millis(100));
        assert_refused_at_once(&mut boxed(layer.layer(legs(&upstream, 0))), "a");
        assert_eq!(layer.handle().stats().requests, 1);
    }

    #[test]
    fn invalid_configuration_names_its_knob() {
        assert_names_knob(
            HedgeLayer::builder().max_extra_attempts(0).build(),
            "max_extra_attempts",
        );
    }
}

mod dedup {
    use super::*;
    use tower_llm_dedup::DedupLayer;

    #[tokio::test(start_paused = true)]
    async fn one_layer_value_is_one_flight_map_and_cache_across_stacks() {
        let upstream = Upstream::closed();
        let layer = DedupLayer::<String>::builder()
            .cache_all()
            .ttl(Duration::from_secs(60))
            .build()
            .unwrap();
        let first = boxed(layer.layer(upstream.service()));
        let second = boxed(layer.layer(upstream.service()));
        let leader = tokio::spawn(first.clone().oneshot("same".into()));
        settle().await;
        let follower = tokio::spawn(second.clone().oneshot("same".into()));
        settle().await;
        // Dedup refuses nothing: with a call in flight for the key, it is still ready.
        assert_ready(&mut second.clone());
        upstream.release(1);
        assert_eq!(leader.await.unwrap().unwrap(), "answer to same");
        assert_eq!(follower.await.unwrap().unwrap(), "answer to same");
        assert_eq!(
            second.oneshot("same".into()).await.unwrap(),
            "answer to same"
        );
        assert_eq!(upstream.calls(), 1, "one upstream call for three callers");
        let stats = layer.handle().stats();
        assert!(stats.coalesced >= 1 && stats.hits >= 1, "{stats:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_leader_hands_the_call_to_a_follower() {
        let upstream = Upstream::closed();
        let layer = DedupLayer::<String>::builder().no_cache().build().unwrap();
        let service = boxed(layer.layer(upstream.service()));
        let leader = tokio::spawn(service.clone().oneshot("same".into()));
        settle().await;
        let follower = tokio::spawn(service.clone().oneshot("same".into()));
        settle().await;
        leader.abort();
        settle().await;
        upstream.release(2);
        assert_eq!(follower.await.unwrap().unwrap(), "answer to same");
    }

    #[test]
    fn invalid_configuration_names_its_knob() {
        assert_names_knob(
            DedupLayer::<String>::builder().max_entries(0).build(),
            "max_entries",
        );
    }
}

mod keyed_breaker {
    use super::*;
    use tower_llm_breaker::{CircuitBreakerLayer, State};
    use tower_llm_core::CircuitOpen;

    /// The key of a request: its first word (`"big: ..."`, `"small: ..."`). A key function
    /// sees the request as it is, a `&String`.
    #[allow(clippy::ptr_arg)]
    fn model(request: &String) -> String {
        request.split(':').next().unwrap_or_default().to_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn one_layer_value_is_one_map_of_breakers_across_stacks() {
        let failing = Upstream::failing();
        let working = Upstream::open();
        let layer = CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .cooldown(Duration::from_secs(10))
            .build_keyed(model, 8)
            .unwrap();
        let mut first = boxed(layer.layer(failing.service()));
        let mut second = boxed(layer.layer(working.service()));
        let handle = layer.handle();

        first
            .ready()
            .await
            .unwrap()
            .call("big: a".into())
            .await
            .unwrap_err();
        // The second stack meets the breaker of "big" the first one opened, from `call`...
        let error = assert_refused_at_once(&mut second, "big: b");
        assert!(error.is::<CircuitOpen>(), "{error}");
        assert_eq!(working.calls(), 0);
        // ...while another key goes through.
        assert_eq!(
            second
                .ready()
                .await
                .unwrap()
                .call("small: c".into())
                .await
                .unwrap(),
            "answer to small: c"
        );
        let mut stats = handle.stats();
        stats.breakers.sort_by(|a, b| a.0.cmp(&b.0));
        let big = &stats.breakers[0];
        assert_eq!((big.0.as_str(), big.1.state), ("big", State::Open));
        assert_eq!((big.1.failures, big.1.rejected), (1, 1));
        assert_eq!(stats.breakers[1].1.successes, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_frees_its_keys_probe_slot() {
        let upstream = Upstream::closed();
        let layer = CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .cooldown(Duration::from_secs(10))
            .probes(1)
            .build_keyed(model, 8)
            .unwrap();
        boxed(layer.layer(Upstream::failing().service()))
            .oneshot("big: a".into())
            .await
            .unwrap_err();
        tokio::time::advance(Duration::from_secs(11)).await;

        let mut probing = boxed(layer.layer(upstream.service()));
        let probe = tokio::spawn(probing.clone().oneshot("big: probe".into()));
        settle().await;
        assert_eq!(upstream.calls(), 1, "the probe went out");
        assert_refused_at_once(&mut probing, "big: second");
        probe.abort();
        settle().await;
        upstream.release(1);
        probing.oneshot("big: again".into()).await.unwrap();
        assert_eq!(layer.handle().get("big").unwrap().state(), State::Closed);
    }

    #[test]
    fn invalid_configuration_names_its_knob() {
        assert_names_knob(
            CircuitBreakerLayer::builder().build_keyed(model, 0),
            "max_keys",
        );
    }
}

mod stream_dedup {
    use super::*;
    use futures_util::{StreamExt, stream};
    use tower_llm_dedup::StreamDedupLayer;

    type Chunks =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<String, BoxError>> + Send>>;

    /// The upstream, streaming its answer as two chunks.
    fn streaming(
        upstream: &Upstream,
    ) -> impl Service<String, Response = Chunks, Error = BoxError, Future: Send> + Clone + Send + 'static
    {
        let single = upstream.service();
        service_fn(move |prompt: String| {
            let single = single.clone();
            async move {
                let answer = single.oneshot(prompt).await?;
                let chunks: Chunks = Box::pin(stream::iter([Ok(answer), Ok("!".to_owned())]));
                Ok::<_, BoxError>(chunks)
            }
        })
    }

    type BoxedStream = BoxCloneService<String, tower_llm_dedup::ReplayStream<String>, BoxError>;

    fn boxed_stream<S>(service: S) -> BoxedStream
    where
        S: Service<String, Response = tower_llm_dedup::ReplayStream<String>, Error = BoxError>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        BoxCloneService::new(service)
    }

    async fn text(service: BoxedStream, prompt: &str) -> String {
        let replay = service.oneshot(prompt.to_owned()).await.unwrap();
        replay
            .map(|chunk| chunk.unwrap())
            .collect::<Vec<_>>()
            .await
            .concat()
    }

    #[tokio::test(start_paused = true)]
    async fn one_layer_value_is_one_flight_map_and_cache_across_stacks() {
        let upstream = Upstream::closed();
        let layer = StreamDedupLayer::<String>::builder()
            .ttl(Duration::from_secs(60))
            .build()
            .unwrap();
        let first = boxed_stream(layer.layer(streaming(&upstream)));
        let mut second = boxed_stream(layer.layer(streaming(&upstream)));
        let leader = tokio::spawn(text(first.clone(), "same"));
        settle().await;
        let follower = tokio::spawn(text(second.clone(), "same"));
        settle().await;
        // Stream dedup refuses nothing: with a call in flight for the key, it is still ready.
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(second.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        upstream.release(1);
        assert_eq!(leader.await.unwrap(), "answer to same!");
        assert_eq!(follower.await.unwrap(), "answer to same!");
        assert_eq!(text(second, "same").await, "answer to same!");
        assert_eq!(upstream.calls(), 1, "one upstream call for three callers");
        let stats = layer.handle().stats();
        assert_eq!((stats.misses, stats.coalesced, stats.hits), (1, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_leader_hands_the_stream_to_a_follower() {
        let upstream = Upstream::closed();
        let layer = StreamDedupLayer::<String>::builder()
            .no_cache()
            .build()
            .unwrap();
        let service = boxed_stream(layer.layer(streaming(&upstream)));
        let leader = tokio::spawn(text(service.clone(), "same"));
        settle().await;
        let follower = tokio::spawn(text(service.clone(), "same"));
        settle().await;
        leader.abort();
        settle().await;
        upstream.release(2);
        assert_eq!(follower.await.unwrap(), "answer to same!");
    }

    #[test]
    fn invalid_configuration_names_its_knob() {
        assert_names_knob(
            StreamDedupLayer::<String>::builder().max_entries(0).build(),
            "max_entries",
        );
    }
}

/// Race's other strategies: each layer value's counters are shared by every stack it made
/// (their only state), a dropped call cancels its legs, and a request no service can take is
/// refused from `call`.
mod strategies {
    use super::*;
    use tower_llm_race::{
        FallbackLayer, GatherLayer, NoQuorum, NoSuchService, RaceLayer, RouteLayer, VoteLayer,
    };

    #[tokio::test(start_paused = true)]
    async fn race_shares_its_counters_cancels_its_legs_and_refuses_from_call() {
        let upstream = Upstream::closed();
        let layer = RaceLayer::new();
        let first = boxed(layer.layer(legs(&upstream, 2)));
        let mut none = boxed(layer.layer(legs(&upstream, 0)));
        let call = tokio::spawn(first.clone().oneshot("a".into()));
        settle().await;
        assert_eq!(upstream.in_flight(), 2, "both legs started");
        call.abort();
        settle().await;
        assert_eq!(upstream.in_flight(), 0, "both legs end with the call");
        assert_refused_at_once(&mut none, "b");
        let stats = layer.handle().stats();
        assert_eq!((stats.requests, stats.legs_started), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn fallback_shares_its_counters_cancels_its_leg_and_refuses_from_call() {
        let failing = Upstream::failing();
        let held = Upstream::closed();
        let layer = FallbackLayer::new();
        let chain = boxed(layer.layer(vec![failing.service(), held.service()]));
        let mut none = boxed(layer.layer(legs(&held, 0)));
        let call = tokio::spawn(chain.clone().oneshot("a".into()));
        settle().await;
        assert_eq!((failing.calls(), held.in_flight()), (1, 1), "moved on");
        call.abort();
        settle().await;
        assert_eq!(held.in_flight(), 0, "the running leg ends with the call");
        assert_refused_at_once(&mut none, "b");
        let stats = layer.handle().stats();
        assert_eq!((stats.requests, stats.moved_on), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn gather_shares_its_counters_cancels_its_legs_and_refuses_from_call() {
        let upstream = Upstream::closed();
        let layer = GatherLayer::new();
        let all = BoxCloneService::new(layer.layer(legs(&upstream, 2)));
        let mut none = BoxCloneService::new(layer.layer(legs(&upstream, 0)));
        let call = tokio::spawn(all.clone().oneshot("a".to_owned()));
        settle().await;
        assert_eq!(upstream.in_flight(), 2);
        call.abort();
        settle().await;
        assert_eq!(upstream.in_flight(), 0);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(none.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        let future = pin!(none.call("b".to_owned()));
        assert!(poll_once(future).expect("refused at once").is_err());
        let stats = layer.handle().stats();
        assert_eq!((stats.requests, stats.legs_started), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn vote_shares_its_counters_cancels_its_legs_and_refuses_from_call() {
        let upstream = Upstream::closed();
        let layer = VoteLayer::majority(|answer: &String| answer.clone())
            .quorum(2)
            .build()
            .unwrap();
        let three = boxed(layer.layer(legs(&upstream, 3)));
        let mut one = boxed(layer.layer(legs(&upstream, 1)));
        let call = tokio::spawn(three.clone().oneshot("a".into()));
        settle().await;
        assert_eq!(upstream.in_flight(), 3);
        call.abort();
        settle().await;
        assert_eq!(upstream.in_flight(), 0);
        // A quorum of two out of one service can never be met: no call is spent on it.
        let error = assert_refused_at_once(&mut one, "b");
        assert!(error.is::<NoQuorum>(), "{error}");
        assert_eq!(upstream.calls(), 3);
        assert_eq!(layer.handle().stats().requests, 2);
    }

    #[test]
    fn vote_configuration_names_its_knob() {
        assert_names_knob(
            VoteLayer::majority(|answer: &String| answer.clone())
                .quorum(0)
                .build(),
            "quorum",
        );
    }

    #[tokio::test(start_paused = true)]
    async fn route_shares_its_counters_cancels_its_call_and_refuses_from_call() {
        let upstream = Upstream::closed();
        let layer = RouteLayer::by_request(|request: &String| request.len());
        let mut two = boxed(layer.layer(legs(&upstream, 2)));
        let call = tokio::spawn(two.clone().oneshot("a".into()));
        settle().await;
        assert_eq!(upstream.in_flight(), 1);
        call.abort();
        settle().await;
        assert_eq!(upstream.in_flight(), 0);
        // Service 5 of two: refused from `call`, at once.
        let error = assert_refused_at_once(&mut two, "fiver");
        assert!(error.is::<NoSuchService>(), "{error}");
        assert_eq!(layer.handle().stats().requests, 2);
    }

    #[test]
    fn route_configuration_names_its_knob() {
        assert_names_knob(RouteLayer::weighted(&[0, 0]), "weights");
    }
}
