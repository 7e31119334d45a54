//! The breaker as a tower service over an in-process upstream, in paused time.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Upstream, call, circuit_open, spawn_call};
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_llm_breaker::{CircuitBreakerLayer, State, StateChange, Window};
use tower_llm_core::{Classify, DefaultClassifier, FailureKind};

const COOLDOWN: Duration = Duration::from_secs(10);

fn layer(consecutive: usize) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .consecutive_failures(consecutive)
        .cooldown(COOLDOWN)
        .build()
        .expect("valid")
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_it_and_open_fails_fast_without_calling() {
    let upstream = Upstream::new(500);
    let layer = layer(3);
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(upstream.service());

    for _ in 0..2 {
        let reply = call(&mut svc, 0).await.expect("a 500 is a response");
        assert_eq!(reply.status(), 500);
    }
    assert_eq!(handle.state(), State::Closed);
    call(&mut svc, 0).await.expect("third 500");
    assert_eq!(handle.state(), State::Open);
    assert_eq!(upstream.calls(), 3);

    advance(Duration::from_secs(4)).await;
    let started = Instant::now();
    let result = call(&mut svc, 0).await;
    assert_eq!(started.elapsed(), Duration::ZERO, "no waiting at all");
    let open = circuit_open(&result).expect("refused");
    assert_eq!(open.retry_in(), Duration::from_secs(6));
    assert_eq!(upstream.calls(), 3, "the upstream was not touched");

    // Core classifies the rejection for any layer further out.
    let err = result.expect_err("refused");
    let failure = DefaultClassifier
        .classify(Err::<&(), _>(&err))
        .as_failure()
        .expect("a failure");
    assert_eq!(failure.kind, FailureKind::CircuitOpen);
    assert_eq!(failure.retry_after, Some(Duration::from_secs(6)));

    let stats = handle.stats();
    assert_eq!(stats.state, State::Open);
    assert_eq!(stats.time_in_state, Duration::from_secs(4));
    assert_eq!(stats.next_probe_in, Some(Duration::from_secs(6)));
    assert_eq!((stats.failures, stats.rejected, stats.opened), (3, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_consecutive_count() {
    let upstream = Upstream::new(503);
    let mut svc = layer(3).layer(upstream.service());
    for _ in 0..10 {
        upstream.set(503);
        call(&mut svc, 0).await.expect("503");
        call(&mut svc, 0).await.expect("503");
        upstream.set(200);
        call(&mut svc, 0).await.expect("200");
    }
    assert_eq!(svc.handle().state(), State::Closed);
    assert_eq!(upstream.calls(), 30);
}

#[tokio::test(start_paused = true)]
async fn client_errors_never_trip_it() {
    for status in [400, 401, 403, 404, 413, 422] {
        let upstream = Upstream::new(status);
        let mut svc = layer(1).layer(upstream.service());
        for _ in 0..100 {
            let reply = call(&mut svc, 0).await.expect("answered");
            assert_eq!(reply.status(), status);
        }
        let stats = svc.handle().stats();
        assert_eq!(stats.state, State::Closed, "status {status}");
        assert_eq!((stats.ignored, stats.failures), (100, 0));
        assert_eq!(upstream.calls(), 100);
    }
}

#[tokio::test(start_paused = true)]
async fn every_unhealthy_kind_trips_it() {
    // 0 stands for a connection reset.
    for status in [0, 500, 502, 503, 504, 529] {
        let upstream = Upstream::new(status);
        let mut svc = layer(2).layer(upstream.service());
        let _ = call(&mut svc, 0).await;
        let _ = call(&mut svc, 0).await;
        assert_eq!(svc.handle().state(), State::Open, "status {status}");
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limiting_counts_only_when_asked() {
    let upstream = Upstream::new(429);
    let mut svc = layer(2).layer(upstream.service());
    for _ in 0..10 {
        call(&mut svc, 0).await.expect("429");
    }
    assert_eq!(svc.handle().state(), State::Closed);

    let counting = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .count_rate_limited(true)
        .build()
        .expect("valid");
    let mut svc = counting.layer(upstream.service());
    call(&mut svc, 0).await.expect("429");
    call(&mut svc, 0).await.expect("429");
    assert_eq!(svc.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn after_the_cooldown_a_probe_success_closes_it() {
    let upstream = Upstream::new(500);
    let mut svc = layer(1).layer(upstream.service());
    call(&mut svc, 0).await.expect("500");
    assert_eq!(svc.handle().state(), State::Open);

    advance(COOLDOWN - Duration::from_millis(1)).await;
    assert!(circuit_open(&call(&mut svc, 0).await).is_some());
    advance(Duration::from_millis(1)).await;
    assert_eq!(svc.handle().state(), State::HalfOpen);

    upstream.set(200);
    let reply = call(&mut svc, 0).await.expect("the probe went through");
    assert_eq!(reply.status(), 200);
    assert_eq!(svc.handle().state(), State::Closed);
    assert_eq!(upstream.calls(), 2);
    for _ in 0..5 {
        call(&mut svc, 0).await.expect("closed again");
    }
}

#[tokio::test(start_paused = true)]
async fn a_probe_failure_reopens_it_with_a_growing_cooldown() {
    let upstream = Upstream::new(500);
    let mut svc = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .cooldown(Duration::from_secs(1))
        .cooldown_backoff(2.0, Duration::from_secs(5))
        .build()
        .expect("valid")
        .layer(upstream.service());
    call(&mut svc, 0).await.expect("500");

    let mut cooldowns = Vec::new();
    for _ in 0..5 {
        let open = circuit_open(&call(&mut svc, 0).await).expect("open");
        cooldowns.push(open.retry_in().as_secs());
        advance(open.retry_in()).await;
        call(&mut svc, 0).await.expect("the probe, failing");
    }
    assert_eq!(cooldowns, [1, 2, 4, 5, 5]);

    // A close resets the growth.
    advance(Duration::from_secs(5)).await;
    upstream.set(200);
    call(&mut svc, 0).await.expect("probe succeeds");
    upstream.set(500);
    call(&mut svc, 0).await.expect("trips again");
    let open = circuit_open(&call(&mut svc, 0).await).expect("open");
    assert_eq!(open.retry_in(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_a_bounded_number_of_probes() {
    let upstream = Upstream::new(500);
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .cooldown(COOLDOWN)
        .probes(2)
        .build()
        .expect("valid");
    let handle = breaker.handle();
    let svc = breaker.layer(upstream.service());
    call(&mut svc.clone(), 0).await.expect("trips");
    advance(COOLDOWN).await;

    upstream.set(200);
    upstream.set_latency(Duration::from_secs(1));
    let first = spawn_call(svc.clone());
    tokio::task::yield_now().await;
    upstream.set_latency(Duration::from_secs(2));
    let second = spawn_call(svc.clone());
    tokio::task::yield_now().await;
    let third = call(&mut svc.clone(), 0).await;
    let open = circuit_open(&third).expect("only two probes");
    assert_eq!(open.retry_in(), COOLDOWN);
    assert_eq!(handle.stats().probes_in_flight, 2);
    assert_eq!(upstream.calls(), 3);

    assert_eq!(first.await.expect("joined").expect("ok").status(), 200);
    assert_eq!(handle.state(), State::HalfOpen, "one of two successes");
    second.await.expect("joined").expect("ok");
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_its_place() {
    let upstream = Upstream::new(500);
    let mut svc = layer(1).layer(upstream.service());
    call(&mut svc, 0).await.expect("trips");
    advance(COOLDOWN).await;

    upstream.set_latency(Duration::from_secs(60));
    let probe = svc.ready().await.expect("ready").call(0);
    assert!(
        circuit_open(&call(&mut svc, 0).await).is_some(),
        "the probe holds the only place"
    );
    drop(probe);
    assert_eq!(svc.handle().stats().probes_in_flight, 0);

    upstream.set_latency(Duration::ZERO);
    upstream.set(200);
    call(&mut svc, 0).await.expect("the next call is the probe");
    assert_eq!(svc.handle().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_cancelled_by_a_timeout_frees_its_place() {
    let upstream = Upstream::new(500);
    let breaker = layer(1);
    let handle = breaker.handle();
    let mut svc = ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .layer(breaker)
        .service(upstream.service());
    call(&mut svc, 0).await.expect("trips");
    advance(COOLDOWN).await;
    upstream.set_latency(Duration::from_secs(60));
    let timed_out = call(&mut svc, 0).await.expect_err("times out");
    assert!(timed_out.is::<tower::timeout::error::Elapsed>());
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.stats().probes_in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_probe_frees_its_place() {
    let panics = Arc::new(Mutex::new(true));
    let flag = Arc::clone(&panics);
    let inner = tower::service_fn(move |_: u8| {
        let panic = *flag.lock().expect("lock");
        async move {
            assert!(!panic, "the upstream client blew up");
            Ok::<_, tower_llm_core::BoxError>(http::Response::new(()))
        }
    });
    let breaker = layer(1);
    let handle = breaker.handle();
    // Two services from one layer share its breaker: trip it through the first.
    let upstream = Upstream::new(500);
    call(&mut breaker.layer(upstream.service()), 0)
        .await
        .expect("trips");
    assert_eq!(handle.state(), State::Open);
    advance(COOLDOWN).await;

    let mut svc = breaker.layer(inner);
    let mut probe = svc.clone();
    let joined = tokio::spawn(async move { probe.ready().await?.call(0).await }).await;
    assert!(joined.expect_err("panicked").is_panic());
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.stats().probes_in_flight, 0);

    *panics.lock().expect("lock") = false;
    svc.ready()
        .await
        .expect("ready")
        .call(0)
        .await
        .expect("the next probe is admitted");
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_count_window() {
    let upstream = Upstream::new(200);
    let mut svc = CircuitBreakerLayer::builder()
        .without_consecutive_failures()
        .failure_rate(0.5)
        .window(Window::count(10))
        .minimum_calls(10)
        .build()
        .expect("valid")
        .layer(upstream.service());
    // Alternating: 4 failures in 9 calls, below the minimum anyway.
    for i in 0..9 {
        upstream.set(if i % 2 == 1 { 500 } else { 200 });
        call(&mut svc, 0).await.expect("answered");
    }
    assert_eq!(svc.handle().stats().window_failures, 4);
    assert_eq!(svc.handle().state(), State::Closed);
    upstream.set(500);
    call(&mut svc, 0).await.expect("5 of 10 failed");
    assert_eq!(svc.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_time_window_forgets_old_calls() {
    let upstream = Upstream::new(500);
    let mut svc = CircuitBreakerLayer::builder()
        .without_consecutive_failures()
        .failure_rate(0.5)
        .window(Window::time(Duration::from_secs(10)))
        .minimum_calls(4)
        .build()
        .expect("valid")
        .layer(upstream.service());
    for _ in 0..3 {
        call(&mut svc, 0).await.expect("500");
    }
    // Below the minimum; then the failures age out of the window.
    advance(Duration::from_secs(11)).await;
    upstream.set(200);
    for _ in 0..3 {
        call(&mut svc, 0).await.expect("200");
    }
    upstream.set(500);
    call(&mut svc, 0).await.expect("500");
    let stats = svc.handle().stats();
    assert_eq!((stats.window_calls, stats.window_failures), (4, 1));
    assert_eq!(stats.state, State::Closed);
    call(&mut svc, 0).await.expect("500");
    assert_eq!(svc.handle().state(), State::Closed, "2 failed of 5");
    call(&mut svc, 0).await.expect("500");
    assert_eq!(svc.handle().state(), State::Open, "3 failed of 6");
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_it() {
    let upstream = Upstream::new(200);
    upstream.set_latency(Duration::from_secs(3));
    let mut svc = CircuitBreakerLayer::builder()
        .without_consecutive_failures()
        .slow_calls(Duration::from_secs(2), 0.5)
        .window(Window::count(4))
        .minimum_calls(4)
        .build()
        .expect("valid")
        .layer(upstream.service());
    for _ in 0..3 {
        call(&mut svc, 0).await.expect("slow but fine");
    }
    assert_eq!(svc.handle().state(), State::Closed);
    call(&mut svc, 0).await.expect("slow but fine");
    let stats = svc.handle().stats();
    assert_eq!(stats.state, State::Open);
    assert_eq!((stats.slow, stats.successes, stats.failures), (4, 4, 0));
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_breaker() {
    let upstream = Upstream::new(500);
    let layer = layer(4);
    let mut a = layer.layer(upstream.service());
    let mut b = a.clone();
    let mut c = layer.layer(upstream.service());
    call(&mut a, 0).await.expect("500");
    call(&mut b, 0).await.expect("500");
    call(&mut c, 0).await.expect("500");
    call(&mut a.clone(), 0).await.expect("500");
    assert!(circuit_open(&call(&mut c, 0).await).is_some());
    assert!(circuit_open(&call(&mut b, 0).await).is_some());
    assert!(a.handle().same_breaker(&layer.handle()));
}

#[tokio::test(start_paused = true)]
async fn the_hook_sees_every_transition() {
    let seen: Arc<Mutex<Vec<StateChange>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let upstream = Upstream::new(500);
    let mut svc = CircuitBreakerLayer::builder()
        .name("anthropic")
        .consecutive_failures(1)
        .cooldown(COOLDOWN)
        .on_state_change(move |change| sink.lock().expect("lock").push(change.clone()))
        .build()
        .expect("valid")
        .layer(upstream.service());
    let t0 = Instant::now();
    call(&mut svc, 0).await.expect("trips");
    advance(COOLDOWN).await;
    call(&mut svc, 0).await.expect("probe fails");
    advance(COOLDOWN).await;
    upstream.set(200);
    call(&mut svc, 0).await.expect("probe succeeds");

    let seen = seen.lock().expect("lock");
    let path: Vec<_> = seen.iter().map(|c| (c.from, c.to, c.at - t0)).collect();
    assert_eq!(
        path,
        [
            (State::Closed, State::Open, Duration::ZERO),
            (State::Open, State::HalfOpen, COOLDOWN),
            (State::HalfOpen, State::Open, COOLDOWN),
            (State::Open, State::HalfOpen, COOLDOWN * 2),
            (State::HalfOpen, State::Closed, COOLDOWN * 2),
        ]
    );
    assert!(
        seen.iter()
            .all(|c| &*c.breaker == "anthropic" && c.key.is_none())
    );
    assert_eq!(seen[0].cooldown, Some(COOLDOWN));
}

#[tokio::test(start_paused = true)]
async fn a_call_started_before_the_trip_does_not_count_after_it() {
    let upstream = Upstream::new(500);
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .cooldown(COOLDOWN)
        .build()
        .expect("valid");
    let handle = breaker.handle();
    let svc = breaker.layer(upstream.service());
    upstream.set_latency(Duration::from_secs(30));
    let slow = spawn_call(svc.clone());
    tokio::task::yield_now().await;
    upstream.set_latency(Duration::ZERO);
    call(&mut svc.clone(), 0).await.expect("trips");
    advance(COOLDOWN).await;
    upstream.set(200);
    call(&mut svc.clone(), 0).await.expect("probe closes");
    assert_eq!(handle.state(), State::Closed);
    // The slow call, started while closed before the trip, now fails: too late to matter.
    slow.await.expect("joined").expect("a 500");
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.stats().consecutive_failures, 0);
}
