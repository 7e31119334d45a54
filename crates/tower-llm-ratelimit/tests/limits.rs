//! Behaviour of each limit over `service_fn`, in paused time.

mod common;

use std::future::Future;
use std::time::{Duration, SystemTime};

use common::{Log, Req, Res, inner};
use futures_util::FutureExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tower_layer::Layer;
use tower_llm_core::{BoxError, FailureKind, RateLimited, UpstreamError, classify_dyn_error};
use tower_llm_ratelimit::{CountTokens, Quota, RateLimitLayer, Reconcile, RequestTooLarge};

const S: Duration = Duration::from_secs(1);

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 100.0).round() / 100.0
}

fn times(log: &Log) -> Vec<f64> {
    log.times().into_iter().map(secs).collect()
}

async fn spawn<Svc>(svc: &mut Svc, req: Req) -> JoinHandle<Result<Res, BoxError>>
where
    Svc: Service<Req, Response = Res, Error = BoxError>,
    Svc::Future: Send + 'static,
{
    let fut = svc.ready().await.expect("ready").call(req);
    let handle = tokio::spawn(fut);
    // Let the spawned call take its place in the queue before the next one.
    tokio::task::yield_now().await;
    handle
}

/// Waits for the service to be ready, then sends `req`.
async fn send<Svc>(svc: &mut Svc, req: Req) -> Result<Res, BoxError>
where
    Svc: Service<Req, Response = Res, Error = BoxError>,
{
    svc.ready().await.expect("ready").call(req).await
}

/// The error of a future that must be ready at once.
fn ready_error<F: Future<Output = Result<Res, BoxError>>>(fut: F) -> BoxError {
    match fut.now_or_never() {
        Some(Err(e)) => e,
        Some(Ok(_)) => panic!("expected an immediate error, got a response"),
        None => panic!("expected an immediate error, the call is waiting"),
    }
}

fn rate_limited(err: &BoxError) -> &RateLimited {
    err.downcast_ref::<RateLimited>()
        .unwrap_or_else(|| panic!("expected RateLimited, got {err}"))
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn requests_are_smooth_after_the_burst() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .requests(Quota::per_minute(60).with_burst(2))
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    let mut handles = Vec::new();
    for id in 0..5 {
        handles.push(spawn(&mut svc, Req::new(id)).await);
    }
    for h in handles {
        h.await.expect("join").expect("call");
    }
    assert_eq!(times(&log), [0.0, 0.0, 1.0, 2.0, 3.0]);
    assert_eq!(log.ids(), [0, 1, 2, 3, 4]);
    let stats = svc.stats();
    assert_eq!(stats.admitted, 5);
    assert_eq!(stats.waited, 3);
    assert_eq!(stats.waiting, 0);
    assert!(stats.wait_time >= Duration::from_secs(6));
}

#[tokio::test(start_paused = true)]
async fn no_window_holds_more_than_the_limit_whatever_the_burst() {
    let (start, log) = (Instant::now(), Log::default());
    // A bucket with a burst of the whole limit would let 20 through in the first minute.
    let layer = RateLimitLayer::builder()
        .requests(Quota::per_minute(10).with_burst(10))
        .max_wait(Duration::from_secs(3600))
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    let mut handles = Vec::new();
    for id in 0..35 {
        handles.push(spawn(&mut svc, Req::new(id)).await);
    }
    for h in handles {
        h.await.expect("join").expect("call");
    }
    let t = log.times();
    for (i, first) in t.iter().enumerate() {
        let inside = t[i..]
            .iter()
            .filter(|x| **x < *first + Duration::from_secs(60));
        assert!(
            inside.count() <= 10,
            "more than 10 in the minute after {first:?}"
        );
    }
    // And the quota is used: 35 calls take a little over three minutes, not more.
    let last = *t.last().expect("calls");
    assert!(last < Duration::from_secs(4 * 60), "took {last:?}");
    assert!(last >= Duration::from_secs(3 * 60), "took {last:?}");
}

#[tokio::test(start_paused = true)]
async fn concurrency_and_spacing() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .concurrency(2)
        .min_spacing(Duration::from_millis(500))
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    let mut handles = Vec::new();
    for id in 0..4 {
        handles.push(spawn(&mut svc, Req::new(id).latency(10 * S)).await);
    }
    for h in handles {
        h.await.expect("join").expect("call");
    }
    // Two at once but half a second apart; the next two when the first two finish.
    assert_eq!(times(&log), [0.0, 0.5, 10.0, 10.5]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_running_call_frees_its_slot() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .concurrency(1)
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    let first = spawn(&mut svc, Req::new(0).latency(100 * S)).await;
    let second = spawn(&mut svc, Req::new(1)).await;
    tokio::time::sleep(5 * S).await;
    first.abort();
    second.await.expect("join").expect("call");
    assert_eq!(times(&log), [0.0, 5.0]);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_order() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .tokens(Quota::per_minute(600).with_burst(100))
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    let mut handles = Vec::new();
    // The small ones could fit earlier, but they came later: they wait their turn.
    for (id, cost) in [(0, 100), (1, 100), (2, 5), (3, 50), (4, 1)] {
        handles.push(spawn(&mut svc, Req::new(id).cost(cost)).await);
    }
    for h in handles {
        h.await.expect("join").expect("call");
    }
    assert_eq!(log.ids(), [0, 1, 2, 3, 4]);
    let t = log.times();
    assert!(t.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(secs(t[1]), 10.0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_frees_its_place_and_tokens_at_once() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .tokens(Quota::per_minute(600).with_burst(600))
        .max_wait(Duration::from_secs(300))
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    spawn(&mut svc, Req::new(0).cost(300)).await;
    // 600 more do not fit until the first 300 leave the window, a minute from now.
    let big = spawn(&mut svc, Req::new(1).cost(600)).await;
    let small = spawn(&mut svc, Req::new(2).cost(100)).await;
    settle().await;
    assert_eq!(svc.stats().waiting, 2);
    tokio::time::sleep(2 * S).await;
    assert_eq!(log.ids(), [0]);
    big.abort();
    small.await.expect("join").expect("call");
    assert_eq!(log.ids(), [0, 2]);
    // Behind the big one it would have waited past 60 s; alone it goes at once.
    assert_eq!(times(&log), [0.0, 2.0]);
    assert_eq!(svc.stats().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once_with_a_hint() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .requests(Quota::per_minute(6).with_burst(1))
        .max_queue(2)
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    spawn(&mut svc, Req::new(0)).await;
    spawn(&mut svc, Req::new(1)).await;
    spawn(&mut svc, Req::new(2)).await;
    let fut = svc.ready().await.expect("ready").call(Req::new(3));
    let err = ready_error(fut);
    let limited = rate_limited(&err);
    // Two are queued ahead, 10 s apart.
    assert_eq!(limited.retry_after().map(secs), Some(30.0));
    assert_eq!(classify_dyn_error(&*err).kind, FailureKind::RateLimited);
    assert_eq!(svc.stats().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn no_queue_means_refuse_instead_of_wait() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .requests(Quota::per_minute(1))
        .max_queue(0)
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    spawn(&mut svc, Req::new(0)).await;
    let err = ready_error(svc.ready().await.expect("ready").call(Req::new(1)));
    assert_eq!(rate_limited(&err).retry_after().map(secs), Some(60.0));
}

#[tokio::test(start_paused = true)]
async fn a_wait_beyond_the_maximum_is_refused_at_once_or_when_it_runs_out() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .requests(Quota::per_minute(1))
        .max_wait(Duration::from_secs(10))
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    spawn(&mut svc, Req::new(0)).await;
    let err = ready_error(svc.ready().await.expect("ready").call(Req::new(1)));
    assert_eq!(rate_limited(&err).retry_after().map(secs), Some(60.0));

    // A wait nobody can predict (a running call) runs out while queued.
    let layer = RateLimitLayer::builder()
        .concurrency(1)
        .max_wait(Duration::from_secs(10))
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    spawn(&mut svc, Req::new(2).latency(100 * S)).await;
    let waited = Instant::now();
    let err = send(&mut svc, Req::new(3))
        .await
        .expect_err("waited too long");
    assert_eq!(secs(waited.elapsed()), 10.0);
    assert!(rate_limited(&err).retry_after().is_some());
    assert_eq!(svc.stats().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_budget_is_a_client_error() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .tokens(Quota::per_minute(1_000))
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    let err = ready_error(
        svc.ready()
            .await
            .expect("ready")
            .call(Req::new(0).cost(1_001)),
    );
    let failure = classify_dyn_error(&*err);
    assert_eq!(failure.kind, FailureKind::BadRequest);
    assert!(!failure.kind.is_retryable());
    let upstream = err.downcast_ref::<UpstreamError>().expect("upstream error");
    let detail = std::error::Error::source(upstream)
        .and_then(|e| e.downcast_ref::<RequestTooLarge>())
        .expect("too large");
    assert_eq!((detail.tokens(), detail.limit()), (1_001, 1_000));
    assert!(err.to_string().contains("1001 tokens"), "{err}");
    // Exactly the budget is fine.
    send(&mut svc, Req::new(1).cost(1_000)).await.expect("fits");
    assert_eq!(log.ids(), [1]);
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_the_key_for_its_retry_hint() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .key_fn(|r: &Req| r.key)
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    let res = send(&mut svc, Req::new(0).limited(Some(20 * S)))
        .await
        .expect("a 429 answer");
    assert!(res.limited.is_some());
    let queued = spawn(&mut svc, Req::new(1)).await;
    tokio::time::sleep(5 * S).await;
    let new = spawn(&mut svc, Req::new(2)).await;
    let other_key = spawn(&mut svc, Req::new(3).key("b")).await;
    other_key.await.expect("join").expect("call");
    queued.await.expect("join").expect("call");
    new.await.expect("join").expect("call");
    // Nothing of key "a" was sent during the 20 s pause; key "b" was not paused.
    assert_eq!(log.ids(), [0, 3, 1, 2]);
    assert_eq!(times(&log), [0.0, 5.0, 20.0, 20.0]);
    assert_eq!(svc.stats().pauses, 1);
}

#[tokio::test(start_paused = true)]
async fn an_absurd_server_hint_pauses_for_a_day_at_most() {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .adapt_to_headers()
        .max_wait(2 * DAY)
        .key_fn(|r: &Req| r.key)
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    // A retry-after of ~31 years, then headers saying nothing is left for ~11 years.
    let call = svc
        .ready()
        .await
        .expect("ready")
        .call(Req::new(0).limited(Some(1_000_000_000 * S)));
    call.await.expect("answer");
    let call = svc.ready().await.expect("ready").call(
        Req::new(1)
            .key("b")
            .header("x-ratelimit-remaining-requests", "0")
            .header("x-ratelimit-reset-requests", "99999h"),
    );
    call.await.expect("answer");
    let paused = spawn(&mut svc, Req::new(2)).await;
    let exhausted = spawn(&mut svc, Req::new(3).key("b")).await;
    paused.await.expect("join").expect("call");
    exhausted.await.expect("join").expect("call");
    assert_eq!(times(&log), [0.0, 0.0, 86_400.0, 86_400.0]);
}

#[tokio::test(start_paused = true)]
async fn a_429_without_a_hint_pauses_for_the_default() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .default_pause(3 * S)
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    let call = svc
        .ready()
        .await
        .expect("ready")
        .call(Req::new(0).limited(None));
    call.await.expect("answer");
    spawn(&mut svc, Req::new(1))
        .await
        .await
        .expect("join")
        .expect("call");
    assert_eq!(times(&log), [0.0, 3.0]);
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_inside_pauses_too() {
    let start = Instant::now();
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = calls.clone();
    let breaker = tower::service_fn(move |req: Req| {
        let seen = seen.clone();
        async move {
            seen.lock().expect("log").push(start.elapsed());
            if req.id == 0 {
                let open: BoxError = Box::new(tower_llm_core::CircuitOpen::new(7 * S));
                return Err(open);
            }
            Ok(Res {
                id: req.id,
                usage: None,
                limited: None,
                headers: http::HeaderMap::new(),
            })
        }
    });
    let mut svc = RateLimitLayer::builder()
        .build()
        .expect("config")
        .layer(breaker);
    let err = send(&mut svc, Req::new(0)).await.expect_err("open");
    assert_eq!(classify_dyn_error(&*err).kind, FailureKind::CircuitOpen);
    send(&mut svc, Req::new(1)).await.expect("call");
    let t: Vec<f64> = calls
        .lock()
        .expect("log")
        .iter()
        .copied()
        .map(secs)
        .collect();
    assert_eq!(t, [0.0, 7.0]);
}

/// Polls a call once, as a caller that has not been woken yet would not.
fn poll_once<F: Future + Unpin>(fut: &mut F) -> std::task::Poll<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(fut).poll(&mut cx)
}

// A requests quota alone is the configuration whose calls start under one lock and finish
// without one: the next two tests pin down that this path still queues behind a waiter and
// still obeys a pause.
#[tokio::test(start_paused = true)]
async fn a_new_call_never_overtakes_a_queued_one_even_when_the_quota_allows_it() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .requests(Quota::per_minute(60).with_burst(1))
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    send(&mut svc, Req::new(0)).await.expect("first call");
    let mut second = Box::pin(svc.ready().await.expect("ready").call(Req::new(1)));
    assert!(poll_once(&mut second).is_pending(), "one a second");
    // Its second has come, but it has not been polled since: the budget is free right now,
    // and a new call still must not take it.
    tokio::time::advance(S).await;
    let mut third = Box::pin(svc.ready().await.expect("ready").call(Req::new(2)));
    assert!(poll_once(&mut third).is_pending(), "overtook a queued call");
    assert_eq!(log.ids(), [0]);
    second.await.expect("second call");
    third.await.expect("third call");
    assert_eq!(log.ids(), [0, 1, 2]);
    assert_eq!(times(&log), [0.0, 1.0, 2.0]);
    let stats = svc.stats();
    assert_eq!((stats.admitted, stats.waited, stats.waiting), (3, 2, 0));
    // The single key's own tally is shared by clones too.
    assert_eq!(svc.clone().stats(), stats);
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_a_key_whose_calls_finish_without_a_lock() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .requests(Quota::per_second(1_000))
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    let res = send(&mut svc, Req::new(0).limited(Some(5 * S)))
        .await
        .expect("a 429 answer");
    assert!(res.limited.is_some());
    let mut during = Box::pin(svc.ready().await.expect("ready").call(Req::new(1)));
    assert!(poll_once(&mut during).is_pending(), "sent during the pause");
    tokio::time::advance(2 * S).await;
    let mut later = Box::pin(svc.ready().await.expect("ready").call(Req::new(2)));
    assert!(poll_once(&mut later).is_pending(), "sent during the pause");
    assert_eq!(log.ids(), [0]);
    during.await.expect("call after the pause");
    later.await.expect("call after the pause");
    assert_eq!(log.ids(), [0, 1, 2]);
    assert_eq!(times(&log), [0.0, 5.0, 5.0]);
    let stats = svc.stats();
    assert_eq!((stats.admitted, stats.pauses), (3, 1));
    // Then it is the fast path again: no wait at all.
    let before = Instant::now();
    send(&mut svc, Req::new(3)).await.expect("call");
    assert_eq!(before.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn keys_are_isolated_and_clones_share() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .requests(Quota::per_minute(2).with_burst(1))
        .key_fn(|r: &Req| r.key)
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    let mut clone = svc.clone();
    let a1 = spawn(&mut svc, Req::new(0).key("a")).await;
    let a2 = spawn(&mut clone, Req::new(1).key("a")).await;
    let b1 = spawn(&mut clone, Req::new(2).key("b")).await;
    for h in [a1, a2, b1] {
        h.await.expect("join").expect("call");
    }
    let entries = log.entries();
    let at = |id: u32| secs(entries.iter().find(|e| e.0 == id).expect("sent").2);
    assert_eq!((at(0), at(1), at(2)), (0.0, 30.0, 0.0));
    assert_eq!(svc.stats().tracked_keys, 2);
    // Keyed calls are counted in the shared counters, whichever clone made them.
    assert_eq!((svc.stats().admitted, clone.stats().admitted), (3, 3));
    // Another layer value is a separate budget.
    let other_layer = RateLimitLayer::builder()
        .requests(Quota::per_minute(2).with_burst(1))
        .key_fn(|r: &Req| r.key)
        .build()
        .expect("config");
    let mut other = other_layer.layer(inner(start, log.clone()));
    let now = secs(start.elapsed());
    send(&mut other, Req::new(3).key("a")).await.expect("call");
    let entries = log.entries();
    let at = |id: u32| secs(entries.iter().find(|e| e.0 == id).expect("sent").2);
    assert_eq!(at(3), now);
}

/// One layer value in two stacks (say a whole-answer route and a streaming route) is one
/// budget: the second stack's call waits for the first's, and the handle counts both.
#[tokio::test(start_paused = true)]
async fn two_stacks_from_one_layer_value_share_the_quota_and_the_concurrency() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .requests(Quota::per_minute(2).with_burst(1))
        .build()
        .expect("config");
    let handle = layer.handle();
    let mut whole = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(inner(start, log.clone()));
    let mut streaming = tower::ServiceBuilder::new()
        .layer(layer)
        .service(inner(start, log.clone()));
    send(&mut whole, Req::new(0)).await.expect("call");
    send(&mut streaming, Req::new(1)).await.expect("call");
    assert_eq!(times(&log), [0.0, 30.0]);
    assert_eq!(handle.stats().admitted, 2);

    let log = Log::default();
    let layer = RateLimitLayer::builder()
        .concurrency(1)
        .build()
        .expect("config");
    let mut a = layer.layer(inner(start, log.clone()));
    let mut b = layer.layer(inner(start, log.clone()));
    let began = Instant::now();
    let first = spawn(&mut a, Req::new(0).latency(10 * S)).await;
    let second = spawn(&mut b, Req::new(1)).await;
    settle().await;
    assert_eq!(layer.handle().stats().waiting, 1);
    first.await.expect("join").expect("call");
    second.await.expect("join").expect("call");
    let entries = log.entries();
    let at = |id: u32| entries.iter().find(|e| e.0 == id).expect("sent").2;
    assert_eq!(at(1) - at(0), 10 * S);
    assert!(began.elapsed() >= 10 * S);
}

/// The handle's pause holds every key back until it ends or is lifted; stats and controls
/// work on a boxed stack.
#[tokio::test(start_paused = true)]
async fn the_handle_pauses_and_resumes_a_boxed_stack() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .key_fn(|r: &Req| r.key)
        .build()
        .expect("config");
    let handle = layer.handle();
    let mut boxed = tower::util::BoxCloneService::new(layer.layer(inner(start, log.clone())));
    handle.pause(Duration::from_secs(50));
    let a = spawn(&mut boxed, Req::new(0).key("a")).await;
    let b = spawn(&mut boxed, Req::new(1).key("b")).await;
    tokio::time::sleep(10 * S).await;
    assert!(log.entries().is_empty(), "sent during the pause");
    assert_eq!(handle.stats().waiting, 2);
    assert_eq!(handle.stats().paused_for, Some(40 * S));
    handle.resume();
    a.await.expect("join").expect("call");
    b.await.expect("join").expect("call");
    assert_eq!(times(&log), [10.0, 10.0]);
    assert_eq!(handle.stats().admitted, 2);
    assert_eq!(handle.stats().tracked_keys, 2);

    // A pause that runs out lets calls go by itself.
    handle.pause(Duration::from_secs(5));
    let began = Instant::now();
    send(&mut boxed, Req::new(2).key("a")).await.expect("call");
    assert_eq!(began.elapsed(), 5 * S);
}

#[tokio::test(start_paused = true)]
async fn reconciling_refunds_or_charges_the_difference() {
    let (start, log) = (Instant::now(), Log::default());
    let quota = Quota::per_minute(600).with_burst(600);
    let refunding = || {
        RateLimitLayer::builder()
            .tokens(quota)
            .reconcile(Reconcile::RefundAndCharge)
            .build()
            .expect("config")
    };
    let mut svc = refunding().layer(inner(start, log.clone()));
    // Reserved 600, used 100: 500 come back, so 400 more can go at once.
    send(&mut svc, Req::new(0).cost(600).actual(100))
        .await
        .expect("call");
    send(&mut svc, Req::new(1).cost(400)).await.expect("call");
    assert_eq!(times(&log), [0.0, 0.0]);
    let stats = svc.stats();
    assert_eq!((stats.tokens_reserved, stats.tokens_refunded), (1_000, 500));

    // Reserved 100, used 550: the extra is charged, so the next 100 wait.
    let log = Log::default();
    let mut svc = refunding().layer(inner(start, log.clone()));
    let began = Instant::now();
    send(&mut svc, Req::new(0).cost(100).actual(550))
        .await
        .expect("call");
    send(&mut svc, Req::new(1).cost(100)).await.expect("call");
    assert!(began.elapsed() >= 5 * S, "waited {:?}", began.elapsed());
    assert_eq!(svc.stats().tokens_charged, 450);

    // Charge-only (the default) keeps the estimate when less was used.
    let layer = RateLimitLayer::builder()
        .tokens(quota)
        .max_wait(Duration::from_secs(120))
        .build()
        .expect("config");
    let log = Log::default();
    let mut svc = layer.layer(inner(start, log.clone()));
    let began = Instant::now();
    send(&mut svc, Req::new(0).cost(600).actual(100))
        .await
        .expect("call");
    send(&mut svc, Req::new(1).cost(400)).await.expect("call");
    assert!(began.elapsed() >= 40 * S, "waited {:?}", began.elapsed());
    assert_eq!(svc.stats().tokens_refunded, 0);
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[tokio::test(start_paused = true)]
async fn the_servers_headers_are_followed_when_asked() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .requests(Quota::per_minute(1_000))
        .adapt_to_headers()
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    let openai = Req::new(0)
        .header("x-ratelimit-remaining-requests", "0")
        .header("x-ratelimit-reset-requests", "6s");
    send(&mut svc, openai).await.expect("call");
    send(&mut svc, Req::new(1)).await.expect("call");
    assert_eq!(times(&log), [0.0, 6.0]);

    // Anthropic's reset is a time: 20 s from now, give or take the second it is cut to.
    let reset = rfc3339(SystemTime::now() + Duration::from_secs(21));
    let anthropic = Req::new(2)
        .header("anthropic-ratelimit-requests-remaining", "1")
        .header("anthropic-ratelimit-requests-reset", reset);
    send(&mut svc, anthropic).await.expect("call");
    let began = Instant::now();
    send(&mut svc, Req::new(3)).await.expect("one left");
    send(&mut svc, Req::new(4)).await.expect("call");
    let waited = began.elapsed();
    assert!(waited >= 19 * S && waited <= 22 * S, "waited {waited:?}");

    // Garbage is ignored.
    let garbage = Req::new(5)
        .header("x-ratelimit-remaining-requests", "none")
        .header("x-ratelimit-reset-requests", "later");
    send(&mut svc, garbage).await.expect("call");
    let began = Instant::now();
    send(&mut svc, Req::new(6)).await.expect("call");
    assert!(began.elapsed() < S);

    // Off by default.
    let mut svc = RateLimitLayer::builder()
        .build()
        .expect("config")
        .layer(inner(start, log.clone()));
    let openai = Req::new(7)
        .header("x-ratelimit-remaining-requests", "0")
        .header("x-ratelimit-reset-requests", "6s");
    send(&mut svc, openai).await.expect("call");
    let began = Instant::now();
    send(&mut svc, Req::new(8)).await.expect("call");
    assert_eq!(began.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn the_key_table_is_bounded() {
    let (start, log) = (Instant::now(), Log::default());
    let layer = RateLimitLayer::builder()
        .requests(Quota::per_minute(60))
        .key_fn(|r: &Req| r.key)
        .max_keys(1)
        .build()
        .expect("config");
    let mut svc = layer.layer(inner(start, log.clone()));
    let busy = spawn(&mut svc, Req::new(0).key("a").latency(5 * S)).await;
    let err = ready_error(svc.ready().await.expect("ready").call(Req::new(1).key("b")));
    assert!(rate_limited(&err).retry_after().is_some());
    busy.await.expect("join").expect("call");
    // Once "a" is back to a fresh state it is forgotten and "b" gets its place.
    tokio::time::sleep(61 * S).await;
    send(&mut svc, Req::new(2).key("b")).await.expect("call");
    assert_eq!(svc.stats().tracked_keys, 1);
    assert_eq!(log.ids(), [0, 2]);
}

#[test]
fn bad_knobs_are_named() {
    let cases: Vec<(
        &str,
        tower_llm_ratelimit::RateLimitBuilder<_, _, CountTokens>,
    )> = vec![
        (
            "concurrency",
            RateLimitLayer::builder().concurrency(0).tokens(None),
        ),
        (
            "requests",
            RateLimitLayer::builder()
                .requests(Quota::per_minute(0))
                .tokens(None),
        ),
        (
            "tokens",
            RateLimitLayer::builder().tokens(Quota::per_minute(10).with_burst(11)),
        ),
        (
            "max_keys",
            RateLimitLayer::builder().max_keys(0).tokens(None),
        ),
        (
            "min_spacing",
            RateLimitLayer::builder()
                .min_spacing(Duration::from_secs(90_000))
                .tokens(None),
        ),
    ];
    for (knob, builder) in cases {
        let err = builder.build().expect_err(knob);
        assert_eq!(err.knob(), knob);
        assert!(err.to_string().contains(knob));
    }
}

#[test]
fn layers_and_services_with_closures_are_debug() {
    let layer = RateLimitLayer::builder()
        .key_fn(|r: &Req| r.key)
        .build()
        .expect("config");
    let text = format!("{layer:?}");
    assert!(
        text.contains("RateLimitLayer") && text.contains("max_queue"),
        "{text}"
    );
}
