//! Two limiter instances on one Redis budget, against a real `redis-server`.
//!
//! These tests run on the real clock: Redis keeps time with its own clock, and tokio's paused
//! clock would fire the Redis timeout while the round trip is in flight. They assert counts
//! in windows, never how long anything took.
#![cfg(feature = "redis")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Req, Res};
use tokio::time::Instant;
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;
use tower_llm_core::{BoxError, RateLimited};
use tower_llm_ratelimit::{BackendFailure, Quota, RateLimitLayer, Reconcile, RedisBackend};
use tower_llm_testkit::RedisServer;

/// Arrivals at the (shared) upstream: when, which instance, how many tokens.
type Arrivals = Arc<Mutex<Vec<(Instant, usize, u64)>>>;

fn upstream(
    arrivals: Arrivals,
    instance: usize,
) -> impl tower::Service<Req, Response = Res, Error = BoxError, Future = impl Send> + Clone + Send {
    service_fn(move |req: Req| {
        let arrivals = arrivals.clone();
        async move {
            arrivals
                .lock()
                .expect("arrivals")
                .push((Instant::now(), instance, req.cost));
            Ok::<_, BoxError>(Res {
                id: req.id,
                usage: req.actual,
                limited: None,
                headers: http::HeaderMap::new(),
            })
        }
    })
}

fn prefix(test: &str) -> String {
    format!("test:{test}:{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_stay_within_one_budget() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    const WINDOW: Duration = Duration::from_secs(2);
    const REQUESTS: u64 = 20;
    const TOKENS: u64 = 300;
    let arrivals: Arrivals = Arc::default();
    let mut instances = Vec::new();
    for instance in 0..2 {
        // Each instance has its own connection, as two processes would.
        let backend = RedisBackend::connect(&server.url())
            .await
            .expect("redis")
            .namespace(prefix("shared"))
            .timeout(Duration::from_secs(2))
            .on_failure(BackendFailure::Closed);
        let layer = RateLimitLayer::builder()
            .requests(Quota::new(REQUESTS, WINDOW).with_burst(4))
            .tokens(Quota::new(TOKENS, WINDOW).with_burst(60))
            .max_wait(Duration::from_secs(2))
            .redis(backend)
            .build()
            .expect("config");
        instances.push(layer.layer(upstream(arrivals.clone(), instance)));
    }
    // Each instance alone is offered three times the whole budget for three windows.
    let offered_per_instance = 3 * REQUESTS * 3;
    let gap = WINDOW * 3 / offered_per_instance as u32;
    let mut handles = Vec::new();
    for i in 0..offered_per_instance {
        for (n, svc) in instances.iter().enumerate() {
            let cost = 5 + (i * 7 + n as u64 * 3) % 20;
            let req = Req::new(i as u32).cost(cost);
            handles.push(tokio::spawn(svc.clone().oneshot(req)));
        }
        tokio::time::sleep(gap).await;
    }
    let mut shed = 0;
    for h in handles {
        match h.await.expect("join") {
            Ok(_) => {}
            Err(e) if e.is::<RateLimited>() => shed += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    let arrivals = arrivals.lock().expect("arrivals").clone();
    // Redis admits on its clock, the upstream logs on ours a moment later: allow that moment
    // at the window's edges.
    let window = WINDOW - Duration::from_millis(100);
    for &(t, _, _) in &arrivals {
        let inside: Vec<_> = arrivals
            .iter()
            .filter(|(a, _, _)| *a >= t && *a < t + window)
            .collect();
        assert!(
            inside.len() as u64 <= REQUESTS,
            "{} requests within one window",
            inside.len()
        );
        let tokens: u64 = inside.iter().map(|x| x.2).sum();
        assert!(tokens <= TOKENS, "{tokens} tokens within one window");
    }
    let per_instance = |n| arrivals.iter().filter(|a| a.1 == n).count();
    // Both drew from the budget, and together they used a fair share of it (at least what
    // three windows' smooth rate gives, less a window of slack).
    assert!(per_instance(0) > 0 && per_instance(1) > 0);
    let tokens: u64 = arrivals.iter().map(|a| a.2).sum();
    assert!(
        tokens >= TOKENS * 2,
        "only {tokens} tokens in about three windows"
    );
    assert!(shed > 0, "the excess was refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_open_or_closed_as_configured() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let arrivals: Arrivals = Arc::default();
    let make = |failure| {
        let url = server.url();
        let arrivals = arrivals.clone();
        async move {
            let backend = RedisBackend::connect(&url)
                .await
                .expect("redis")
                .namespace(prefix("down"))
                .timeout(Duration::from_millis(300))
                .on_failure(failure);
            RateLimitLayer::builder()
                .requests(Quota::per_second(100))
                .redis(backend)
                .build()
                .expect("config")
                .layer(upstream(arrivals, 0))
        }
    };
    let open = make(BackendFailure::Open).await;
    let closed = make(BackendFailure::Closed).await;
    open.clone().oneshot(Req::new(0)).await.expect("redis up");
    closed.clone().oneshot(Req::new(1)).await.expect("redis up");
    server.kill();
    open.clone().oneshot(Req::new(2)).await.expect("fails open");
    let err = closed
        .clone()
        .oneshot(Req::new(3))
        .await
        .expect_err("fails closed");
    let limited = err.downcast_ref::<RateLimited>().expect("rate limited");
    assert!(limited.retry_after().is_some());
    assert!(limited.reason().contains("unavailable"), "{limited}");
    let sent: Vec<u32> = arrivals
        .lock()
        .expect("arrivals")
        .iter()
        .map(|_| 0)
        .collect();
    assert_eq!(sent.len(), 3);
    assert_eq!(closed.stats().rejected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_reach_the_shared_budget() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let arrivals: Arrivals = Arc::default();
    let backend = RedisBackend::connect(&server.url())
        .await
        .expect("redis")
        .namespace(prefix("refund"))
        .timeout(Duration::from_secs(2));
    // One token budget for a whole minute: nothing refills during the test.
    // Two layer values, as two instances would have, over one Redis budget.
    let instance = |backend| {
        RateLimitLayer::builder()
            .tokens(Quota::per_minute(1_000).with_burst(1_000))
            .reconcile(Reconcile::RefundAndCharge)
            .max_queue(0)
            .redis(backend)
            .build()
            .expect("config")
    };
    let one = instance(backend.clone()).layer(upstream(arrivals.clone(), 0));
    let two = instance(backend).layer(upstream(arrivals.clone(), 1));
    // Reserve 900, use 100: 800 come back.
    one.clone()
        .oneshot(Req::new(0).cost(900).actual(100))
        .await
        .expect("fits");
    // Asking Redis is not waiting.
    assert_eq!((one.stats().waited, one.stats().waiting), (0, 0));
    // The refund is written in the background; give it a moment to land.
    let mut fitted = false;
    for _ in 0..50 {
        if two.clone().oneshot(Req::new(1).cost(800)).await.is_ok() {
            fitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fitted, "the refund never reached the other instance");
    // And now the budget is really spent, for both.
    let err = one
        .clone()
        .oneshot(Req::new(2).cost(200))
        .await
        .expect_err("spent");
    assert!(err.is::<RateLimited>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_timeout_is_refused_when_built() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let backend = RedisBackend::connect(&server.url())
        .await
        .expect("redis")
        .timeout(Duration::ZERO);
    let err = RateLimitLayer::builder()
        .requests(Quota::per_minute(10))
        .redis(backend)
        .build()
        .expect_err("a zero timeout finds Redis unreachable on every call");
    assert_eq!(err.knob(), "redis.timeout");
}
